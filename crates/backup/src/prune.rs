//! `prune`: delete data no point needs, safely beside running backups.
//!
//! One run does, in order:
//!
//! 1. **Ripe deletions** — for each garbage record every older writer has finished with
//!    (`gc::is_ripe`): recompute what the points need *now*, and delete the recorded packs
//!    still not needed. The order makes every crash safe: a consolidated pack index without
//!    the deleted packs is written first, then the old index files are deleted, then the
//!    packs, and the garbage record last (while it exists, backups ignore its packs).
//! 2. **New candidates** — packs no point needs, and packs no index names (left by a writer
//!    that died), are recorded in a new garbage record. Packs mostly unneeded are repacked:
//!    their needed blobs are checked and copied into new packs (indexed before the old pack
//!    is recorded).
//! 3. Step 1 again, so an idle repository is cleaned in one run.
//!
//! Prune refuses to delete anything while any manifest or disk index is unreadable: what
//! those need cannot be known, and deleting it could destroy a point that is only
//! mis-read.

use std::collections::{HashMap, HashSet};
use std::time::{Instant, SystemTime};

use lifeboat_repository::blob::chunk_from_group;
use lifeboat_repository::lease::{host_name, list_records};
use lifeboat_repository::pack::{DEFAULT_PACK_TARGET_BYTES, PackBuilder};
use lifeboat_repository::pack::{GroupMember, read_header};
use lifeboat_repository::pack_index::PackRecord;
use lifeboat_repository::{BlobDecoder, ChunkSet, ObjectKind, Repository};
use serde::Serialize;

use crate::error::{EngineError, Result};
use crate::gc::{PackUsage, is_ripe, plan_collection};

/// The result of a prune.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PruneReport {
    pub points: usize,
    pub packs: usize,
    pub packs_deleted: usize,
    pub bytes_freed: u64,
    pub packs_repacked: usize,
    pub bytes_repacked: u64,
    /// Packs recorded for deletion and not yet deleted (waiting for running writers).
    pub packs_pending: usize,
    /// The writers a pending deletion waits for.
    pub waiting_for: Vec<String>,
    pub seconds: f64,
}

/// Runs prune.
pub fn prune(repository: &Repository) -> Result<PruneReport> {
    let started = Instant::now();
    let lease = repository.lock_prune()?;
    let mut report = PruneReport::default();
    carry_out_ripe(repository, lease.name(), &mut report)?;
    queue_candidates(repository, &mut report)?;
    carry_out_ripe(repository, lease.name(), &mut report)?;
    report.packs = repository.storage().list(ObjectKind::Pack)?.len();
    report.packs_pending = repository
        .list_garbage()?
        .iter()
        .map(|(_, record)| record.packs.len())
        .sum();
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Every chunk some point needs; refuses when any point's needs cannot be read.
fn needed_chunks(repository: &Repository, report: &mut PruneReport) -> Result<ChunkSet> {
    let list = repository.list_points()?;
    if let Some(damaged) = list.damaged.first() {
        return Err(EngineError::Refused(format!(
            "prune deletes nothing while point manifest '{}' is unreadable ({}); run 'lifeboat verify'",
            damaged.name, damaged.reason
        )));
    }
    report.points = list.points.len();
    let mut needed = ChunkSet::default();
    let mut seen = HashSet::new();
    for manifest in &list.points {
        for disk in &manifest.disks {
            if !seen.insert(disk.index.clone()) {
                continue;
            }
            let index = repository.read_disk_index(&disk.index).map_err(|error| {
                EngineError::Refused(format!(
                    "prune deletes nothing while disk index of point {} is unreadable: {error}",
                    manifest.point
                ))
            })?;
            needed.extend(index.chunks.into_iter().filter(|c| !c.is_zero()));
        }
    }
    Ok(needed)
}

/// The chunk map from every pack index; refuses when one is unreadable, since its packs
/// would then look unindexed.
fn complete_index(repository: &Repository) -> Result<lifeboat_repository::LoadedIndex> {
    let loaded = repository.load_index()?;
    if let Some(damaged) = loaded.damaged.first() {
        return Err(EngineError::Refused(format!(
            "prune deletes nothing while pack index '{}' is unreadable ({}); run 'lifeboat verify'",
            damaged.name, damaged.reason
        )));
    }
    Ok(loaded)
}

/// Phase two for every ripe garbage record.
fn carry_out_ripe(
    repository: &Repository,
    own_lease: &str,
    report: &mut PruneReport,
) -> Result<()> {
    let records = repository.list_garbage()?;
    if records.is_empty() {
        return Ok(());
    }
    let now = SystemTime::now();
    let host = host_name();
    let mut live = Vec::new();
    for (name, lease) in list_records(repository.storage().as_ref())? {
        if name == own_lease {
            continue;
        }
        if lease.is_stale(now) {
            tracing::info!(lease = %name, holder = %lease.describe(), "removing a stale lease");
            repository.storage().delete(ObjectKind::Lock, &name)?;
        } else {
            live.push(lease);
        }
    }
    let (ripe, waiting): (Vec<_>, Vec<_>) = records
        .into_iter()
        .partition(|(_, record)| is_ripe(record.created_unix_ms, &live, &host));
    if !waiting.is_empty() {
        report.waiting_for = live.iter().map(|l| l.describe()).collect();
    }
    if ripe.is_empty() {
        return Ok(());
    }
    // What is needed is computed after the lease check: every writer older than the records
    // has committed or died, so its points (if any) are visible now.
    let needed = needed_chunks(repository, report)?;
    let loaded = complete_index(repository)?;
    let quarantined: HashSet<String> = repository
        .list_quarantine()?
        .into_iter()
        .map(|r| r.pack)
        .collect();
    let mut records_by_pack: HashMap<String, PackRecord> = HashMap::new();
    for file in &loaded.files {
        for record in repository.read_pack_index(file)? {
            records_by_pack.insert(record.pack.clone(), record);
        }
    }
    let sizes: HashMap<String, u64> = repository
        .storage()
        .list(ObjectKind::Pack)?
        .into_iter()
        .map(|o| (o.name, o.size_bytes))
        .collect();
    // A recorded pack goes unless it holds the only stored copy of a chunk some point needs
    // (a backup that committed after the record rescued it). Copies in other recorded packs
    // do not count, so a chunk is never left with no copy at all.
    let candidates: HashSet<&String> = ripe
        .iter()
        .flat_map(|(_, record)| &record.packs)
        .filter(|pack| !quarantined.contains(*pack))
        .collect();
    let index = &loaded.chunks;
    let has_copy_elsewhere = |chunk: &lifeboat_repository::ChunkId| {
        index.locations(chunk).iter().any(|location| {
            let pack = index.pack_name(location.pack);
            !candidates.contains(&pack.to_string()) && sizes.contains_key(pack)
        })
    };
    let mut doomed = HashSet::new();
    for pack in &candidates {
        let still_needed = records_by_pack.get(*pack).is_some_and(|record| {
            record
                .entries
                .iter()
                .any(|entry| needed.contains(&entry.chunk) && !has_copy_elsewhere(&entry.chunk))
        });
        if !still_needed {
            doomed.insert((*pack).clone());
        }
    }
    if !doomed.is_empty() {
        // 1. A consolidated index without the doomed packs, durable before anything goes.
        let survivors: Vec<PackRecord> = records_by_pack
            .into_values()
            .filter(|r| !doomed.contains(&r.pack))
            .collect();
        if !survivors.is_empty() {
            repository.write_pack_index(&survivors)?;
        }
        // 2. The index files it replaces.
        for file in &loaded.files {
            repository.storage().delete(ObjectKind::PackIndex, file)?;
        }
        // 3. The packs.
        for pack in &doomed {
            repository.storage().delete(ObjectKind::Pack, pack)?;
            report.packs_deleted += 1;
            report.bytes_freed += sizes.get(pack).copied().unwrap_or(0);
        }
    }
    // 4. The records: their packs are deleted, or were needed after all and stay.
    for (name, _) in &ripe {
        repository.storage().delete(ObjectKind::Garbage, name)?;
    }
    Ok(())
}

/// Phase one: record what is no longer needed; repack what is mostly unneeded.
fn queue_candidates(repository: &Repository, report: &mut PruneReport) -> Result<()> {
    let needed = needed_chunks(repository, report)?;
    let loaded = complete_index(repository)?;
    let index = loaded.chunks;
    let quarantined: HashSet<String> = repository
        .list_quarantine()?
        .into_iter()
        .map(|r| r.pack)
        .collect();
    let already_queued: HashSet<String> = repository
        .list_garbage()?
        .into_iter()
        .flat_map(|(_, record)| record.packs)
        .collect();
    let stored: HashSet<String> = repository
        .storage()
        .list(ObjectKind::Pack)?
        .into_iter()
        .map(|o| o.name)
        .collect();
    // A blob is live when any chunk in it is needed; usage is counted in blob bytes.
    let mut blobs: HashMap<(u32, u32), (u32, bool)> = HashMap::new();
    for (chunk, location) in index.iter_all() {
        let blob = blobs
            .entry((location.pack, location.blob_offset))
            .or_insert((location.blob_bytes, false));
        blob.1 |= needed.contains(&chunk);
    }
    let mut usage: HashMap<u32, PackUsage> = HashMap::new();
    for ((pack, _), (bytes, live)) in blobs {
        let name = index.pack_name(pack);
        let entry = usage.entry(pack).or_insert_with(|| PackUsage {
            pack: name.to_string(),
            total_bytes: 0,
            live_bytes: 0,
            has_quarantined: quarantined.contains(name),
        });
        entry.total_bytes += bytes as u64;
        if live {
            entry.live_bytes += bytes as u64;
        }
    }
    // Packs named by an index but holding no blob at all count as unneeded too.
    for (number, name) in index.pack_names().iter().enumerate() {
        usage.entry(number as u32).or_insert_with(|| PackUsage {
            pack: name.clone(),
            total_bytes: 0,
            live_bytes: 0,
            has_quarantined: quarantined.contains(name),
        });
    }
    let indexed: HashSet<&str> = index.pack_names().iter().map(String::as_str).collect();
    let unindexed: Vec<String> = stored
        .iter()
        .filter(|p| !indexed.contains(p.as_str()))
        .cloned()
        .collect();
    let usage: Vec<PackUsage> = usage
        .into_values()
        .filter(|u| stored.contains(&u.pack))
        .collect();
    let plan = plan_collection(&usage, &unindexed, &already_queued);

    let mut queue = plan.unreferenced;
    if !plan.repack.is_empty() {
        let repacked = repack(repository, &needed, &plan.repack, report)?;
        queue.extend(repacked);
    }
    if !queue.is_empty() {
        repository.write_garbage(queue)?;
    }
    Ok(())
}

/// Copies the live blobs of `packs` (those holding a needed chunk) into new packs,
/// checking every chunk of each; returns the packs whose live blobs were all copied (those
/// can be queued). A pack with anything that fails its check is left alone for verify to
/// report.
fn repack(
    repository: &Repository,
    needed: &ChunkSet,
    packs: &[String],
    report: &mut PruneReport,
) -> Result<Vec<String>> {
    let crypto = repository.crypto();
    let mut decoder = BlobDecoder::new();
    let mut copied_from = Vec::new();
    let mut builder = PackBuilder::with_capacity(DEFAULT_PACK_TARGET_BYTES);
    let mut written: Vec<PackRecord> = Vec::new();
    for pack in packs {
        let bytes = repository.storage().read(ObjectKind::Pack, pack)?;
        let Ok(mut entries) = read_header(crypto, &bytes) else {
            tracing::warn!(%pack, "not repacking a pack whose header is damaged; run 'lifeboat verify --read-data'");
            continue;
        };
        entries.sort_by_key(|e| (e.blob_offset, e.offset_in_group));
        // The live blobs, each with all its members, checked before anything is copied.
        let mut live = Vec::new();
        let mut healthy = true;
        for blob in entries.chunk_by(|a, b| a.blob_offset == b.blob_offset) {
            if !blob.iter().any(|e| needed.contains(&e.chunk)) {
                continue;
            }
            let first = blob[0];
            let start = first.blob_offset as usize;
            let sealed = &bytes[start..start + first.blob_bytes as usize];
            let checked = decoder
                .decode(crypto, sealed.to_vec(), first.group_bytes)
                .is_ok_and(|group| {
                    blob.iter().all(|e| {
                        chunk_from_group(crypto, &e.chunk, &group, e.offset_in_group, e.raw_bytes)
                            .is_ok()
                    })
                });
            if !checked {
                healthy = false;
                break;
            }
            let members: Vec<GroupMember> = blob
                .iter()
                .map(|e| GroupMember {
                    chunk: e.chunk,
                    offset_in_group: e.offset_in_group,
                    raw_bytes: e.raw_bytes,
                })
                .collect();
            live.push((sealed, first.group_bytes, members));
        }
        if !healthy {
            tracing::warn!(%pack, "not repacking a pack with a damaged blob; run 'lifeboat verify --read-data'");
            continue;
        }
        for (sealed, group_bytes, members) in live {
            builder.add(sealed, group_bytes, &members);
            report.bytes_repacked += sealed.len() as u64;
            if builder.len_bytes() >= DEFAULT_PACK_TARGET_BYTES {
                let full = std::mem::replace(
                    &mut builder,
                    PackBuilder::with_capacity(DEFAULT_PACK_TARGET_BYTES),
                );
                written.push(repository.write_pack(&full.finish(crypto))?);
            }
        }
        copied_from.push(pack.clone());
        report.packs_repacked += 1;
    }
    if !builder.is_empty() {
        written.push(repository.write_pack(&builder.finish(crypto))?);
    }
    if !written.is_empty() {
        repository.write_pack_index(&written)?;
    }
    Ok(copied_from)
}
