//! `geo-sync`: copy every point the copy lacks, whole and checked, in commit order.
//!
//! # One round
//!
//! 1. The copy is prepared: an empty location receives the source's key files, then its
//!    `config` (the copy is the same repository, opened with the same password); a
//!    location holding another repository is refused.
//! 2. The source's points are listed; those the copy lacks are the work, oldest first.
//!    For each, its disk indexes say which chunks it needs and the source's pack indexes
//!    which packs hold them. A point whose data is damaged or missing at the source is
//!    reported and left behind; the others go on.
//! 3. Packs the copy lacks are copied in parallel. Each is read whole and its BLAKE3 hash
//!    checked against its name before it is written: a corrupt pack is reported, never
//!    spread, and the points needing it wait.
//! 4. One pack index naming the newly copied packs is written, then each point's disk
//!    indexes (checked by decoding), then its manifest: from that moment the copy lists
//!    the point, and everything it needs is already durable there.
//! 5. The round's outcome is written to the copy (`copy_status.rs`).
//!
//! Killed or cut off at any step, the next round starts over and skips what is already
//! in the copy: objects are immutable and written create-if-absent, so a present pack is a
//! whole, verified pack.
//!
//! A round holds the copy's `geo-sync` lease: one round at a time, and a prune of the copy
//! waits for it as it waits for a backup (packs written, not yet indexed, are not garbage).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use lifeboat_repository::pack_index::PackRecord;
use lifeboat_repository::{
    DiskIndex, Manifest, ObjectKind, Repository, RepositoryConfig, RepositoryError, Storage,
};
use serde::Serialize;

use crate::copy_status::{self, CopyStatusRecord, PendingPoint};
use crate::error::{GeoError, Result};

/// How to copy.
#[derive(Clone, Debug)]
pub struct SyncOptions {
    /// Packs copied at once (object storage wants many in flight).
    pub threads: usize,
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions { threads: 4 }
    }
}

/// What a round did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SyncReport {
    pub source: String,
    pub destination: String,
    /// When the round listed the source.
    pub round_started: String,
    /// Points copied in this round, oldest first.
    pub points_copied: Vec<String>,
    /// Points the copy still lacks, with the reason.
    pub pending: Vec<PendingPoint>,
    /// Points forgotten at the source while the round ran: not copied.
    pub points_forgotten: Vec<String>,
    pub packs_copied: usize,
    pub bytes_copied: u64,
    /// The newest moment up to which the copy holds every point of the source, counting
    /// the backups that were running when the round started (their points are not in it).
    pub last_sync_time: String,
    /// When each backup running at the source at the round's start began, oldest first:
    /// its point, made after, is not in the copy.
    pub backups_running: Vec<String>,
    /// Problems met (damaged source data, failed copies), each naming what and where.
    pub problems: Vec<String>,
    pub seconds: f64,
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Makes `destination` a copy of `source`'s repository if it is empty, checks it is one
/// otherwise, and returns it opened with the source's keys.
pub fn prepare_copy(source: &Repository, destination: Arc<dyn Storage>) -> Result<Repository> {
    let source_storage = source.storage();
    match destination.read(ObjectKind::Config, "config") {
        Ok(bytes) => {
            let found: Option<RepositoryConfig> = serde_json::from_slice(&bytes).ok();
            let found_id = found
                .map(|c| c.repository_id)
                .unwrap_or_else(|| "unreadable".to_string());
            if found_id != source.config().repository_id {
                return Err(GeoError::Mismatch {
                    source_location: source.location(),
                    destination: destination.location(),
                    expected: source.config().repository_id.clone(),
                    found: found_id,
                });
            }
        }
        Err(error) if error.is_not_found() => {}
        Err(error) => return Err(error.into()),
    }
    // Key files first and config last, as `init` writes them: a copy interrupted here has no
    // config and is prepared again by the next round. New passwords added later follow too.
    let present: HashSet<String> = destination
        .list(ObjectKind::Key)?
        .into_iter()
        .map(|o| o.name)
        .collect();
    for key in source_storage.list(ObjectKind::Key)? {
        if !present.contains(&key.name) {
            create_once(
                destination.as_ref(),
                ObjectKind::Key,
                &key.name,
                &source_storage.read(ObjectKind::Key, &key.name)?,
            )?;
        }
    }
    let config = source_storage.read(ObjectKind::Config, "config")?;
    create_once(destination.as_ref(), ObjectKind::Config, "config", &config)?;
    Ok(source.on_storage(destination))
}

/// Writes an immutable object unless it is already there.
fn create_once(storage: &dyn Storage, kind: ObjectKind, name: &str, data: &[u8]) -> Result<()> {
    match storage.create(kind, name, data) {
        Err(error) if error.is_already_exists() => Ok(()),
        other => Ok(other?),
    }
}

/// Records that `manifest`'s point stays behind this round, and why.
fn leave(manifest: &Manifest, reason: String, pending: &mut BTreeMap<String, PendingPoint>) {
    pending.insert(
        manifest.point.clone(),
        PendingPoint {
            point: manifest.point.clone(),
            vm: manifest.vm.clone(),
            time: manifest.time.clone(),
            reason,
        },
    );
}

/// A point to copy, with what it needs.
struct Work {
    manifest: Manifest,
    packs: BTreeSet<String>,
}

/// Runs one round of copying from `source` to `copy` (prepared by [`prepare_copy`]).
pub fn geo_sync(
    source: &Repository,
    copy: &Repository,
    options: &SyncOptions,
) -> Result<SyncReport> {
    let started = Instant::now();
    // Like a backup, a round writes packs before the index and manifest that make them
    // needed: prune in the copy must wait for it.
    let _lease = copy.lock_geo_sync()?;
    let mut report = SyncReport {
        source: source.location(),
        destination: copy.location(),
        round_started: now(),
        ..SyncReport::default()
    };
    // Backups running now commit points older than any listing that follows: they are
    // read before the points, so none slips between the two.
    report.backups_running = running_backups(source)?;
    let source_points = source.list_points()?;
    for damaged in &source_points.damaged {
        report.problems.push(format!(
            "point manifest {} in {} is unreadable ({}); it is not copied",
            damaged.name, report.source, damaged.reason
        ));
    }
    let present_points: HashSet<String> = copy
        .storage()
        .list(ObjectKind::Point)?
        .into_iter()
        .map(|o| o.name)
        .collect();
    let missing: Vec<Manifest> = source_points
        .points
        .iter()
        .filter(|p| !present_points.contains(&p.point))
        .cloned()
        .collect();

    // Where each needed chunk is stored at the source; the source's prune deletes none of
    // those packs while this round reads them.
    let _reading = source.lock_read("geo-sync");
    let source_index = source.load_read_index()?.chunks;
    let mut pending: BTreeMap<String, PendingPoint> = BTreeMap::new();
    let mut work = Vec::new();
    let mut disk_indexes: HashMap<String, Vec<u8>> = HashMap::new();
    'points: for manifest in missing {
        let mut packs = BTreeSet::new();
        for disk in &manifest.disks {
            let sealed = match source.storage().read(ObjectKind::DiskIndex, &disk.index) {
                Ok(sealed) => sealed,
                Err(error) => {
                    report
                        .problems
                        .push(format!("point {}: {error}", manifest.point));
                    leave(
                        &manifest,
                        format!("disk index of '{}' unreadable at the source", disk.name),
                        &mut pending,
                    );
                    continue 'points;
                }
            };
            let index = match DiskIndex::decode(source.crypto(), &disk.index, sealed.clone()) {
                Ok(index) => index,
                Err(reason) => {
                    report.problems.push(format!(
                        "point {}: disk index {} in {} is damaged: {reason}",
                        manifest.point, disk.index, report.source
                    ));
                    leave(
                        &manifest,
                        format!("disk index of '{}' damaged at the source", disk.name),
                        &mut pending,
                    );
                    continue 'points;
                }
            };
            for chunk in index.chunks.iter().filter(|c| !c.is_zero()) {
                match source_index.locate(chunk) {
                    Some(location) => {
                        packs.insert(source_index.pack_name(location.pack).to_string());
                    }
                    None => {
                        report.problems.push(format!(
                            "point {}: chunk {chunk} is missing or damaged in {}; run 'lifeboat verify' there",
                            manifest.point, report.source
                        ));
                        leave(
                            &manifest,
                            "its data is damaged at the source".to_string(),
                            &mut pending,
                        );
                        continue 'points;
                    }
                }
            }
            disk_indexes.insert(disk.index.clone(), sealed);
        }
        work.push(Work { manifest, packs });
    }

    // Copy the packs the copy lacks, each checked against its name.
    let present_packs: HashSet<String> = copy
        .storage()
        .list(ObjectKind::Pack)?
        .into_iter()
        .map(|o| o.name)
        .collect();
    let wanted: BTreeSet<String> = work
        .iter()
        .flat_map(|w| w.packs.iter().cloned())
        .filter(|p| !present_packs.contains(p))
        .collect();
    let failed = copy_packs(
        source.storage().as_ref(),
        copy.storage().as_ref(),
        &wanted,
        options,
        &mut report,
    );

    // Index what arrived (and what earlier, interrupted rounds copied without indexing).
    let indexed_at_copy: HashSet<String> = copy
        .load_index()?
        .chunks
        .pack_names()
        .iter()
        .cloned()
        .collect();
    let mut copyable: Vec<&Work> = Vec::new();
    for item in &work {
        match item.packs.iter().find(|p| failed.contains_key(*p)) {
            Some(pack) => leave(
                &item.manifest,
                format!("pack {pack} could not be copied: {}", failed[pack]),
                &mut pending,
            ),
            None => copyable.push(item),
        }
    }
    let to_index: BTreeSet<&String> = copyable
        .iter()
        .flat_map(|w| w.packs.iter())
        .filter(|p| !indexed_at_copy.contains(*p))
        .collect();
    if !to_index.is_empty() {
        let records = source_pack_records(source, &to_index)?;
        copy.write_pack_index(&records)?;
    }

    // Then disk indexes and manifests, point by point, oldest first.
    let present_disk_indexes: HashSet<String> = copy
        .storage()
        .list(ObjectKind::DiskIndex)?
        .into_iter()
        .map(|o| o.name)
        .collect();
    for item in copyable {
        for disk in &item.manifest.disks {
            if !present_disk_indexes.contains(&disk.index) {
                create_once(
                    copy.storage().as_ref(),
                    ObjectKind::DiskIndex,
                    &disk.index,
                    &disk_indexes[&disk.index],
                )?;
            }
        }
        let manifest = match source
            .storage()
            .read(ObjectKind::Point, &item.manifest.point)
        {
            Ok(manifest) => manifest,
            // Forgotten at the source since the round listed it: not copied.
            Err(error) if error.is_not_found() => {
                report.points_forgotten.push(item.manifest.point.clone());
                continue;
            }
            Err(error) => return Err(error.into()),
        };
        Manifest::decode(copy.crypto(), &item.manifest.point, manifest.clone()).map_err(
            |reason| {
                RepositoryError::damaged(
                    source.location(),
                    ObjectKind::Point,
                    &item.manifest.point,
                    reason,
                )
            },
        )?;
        create_once(
            copy.storage().as_ref(),
            ObjectKind::Point,
            &item.manifest.point,
            &manifest,
        )?;
        report.points_copied.push(item.manifest.point.clone());
    }

    report.pending = pending.into_values().collect();
    report.pending.sort_by(|a, b| a.time.cmp(&b.time));
    report.last_sync_time = last_sync_time(
        &report.round_started,
        report.pending.iter().map(|p| p.time.as_str()),
        report.backups_running.iter().map(String::as_str),
    );
    copy_status::write(
        copy.storage().as_ref(),
        &CopyStatusRecord {
            source: report.source.clone(),
            round_started: report.round_started.clone(),
            round_finished: now(),
            last_sync_time: report.last_sync_time.clone(),
            pending: report.pending.clone(),
            backups_running: report.backups_running.clone(),
            source_points: source_points.points.len(),
        },
    )?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// The newest moment T such that every point made before T is in the copy: the round's
/// start, or earlier, the time of the oldest point it still lacks or the start of the
/// oldest backup that was running then (its point is made after it began). Times are
/// RFC 3339 in UTC with milliseconds, so they order as strings.
fn last_sync_time<'a>(
    round_started: &'a str,
    pending: impl Iterator<Item = &'a str>,
    backups_running: impl Iterator<Item = &'a str>,
) -> String {
    pending
        .chain(backups_running)
        .fold(round_started, std::cmp::min)
        .to_string()
}

/// When each backup holding a live lease at the source began, oldest first.
fn running_backups(source: &Repository) -> Result<Vec<String>> {
    let now = std::time::SystemTime::now();
    let mut started: Vec<String> =
        lifeboat_repository::lease::list_records(source.storage().as_ref())?
            .into_iter()
            .filter(|(_, record)| record.operation == "backup" && !record.is_stale(now))
            .filter_map(|(_, record)| {
                chrono::DateTime::from_timestamp_millis(record.started_unix_ms as i64)
            })
            .map(|time| time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .collect();
    started.sort();
    Ok(started)
}

/// The source's pack records for `packs`, from its pack index files.
fn source_pack_records(source: &Repository, packs: &BTreeSet<&String>) -> Result<Vec<PackRecord>> {
    let mut records: BTreeMap<String, PackRecord> = BTreeMap::new();
    for file in source.storage().list(ObjectKind::PackIndex)? {
        let read = match source.read_pack_index(&file.name) {
            Ok(read) => read,
            Err(RepositoryError::Storage(error)) if error.is_not_found() => continue,
            Err(error) => return Err(error.into()),
        };
        for record in read {
            if packs.contains(&record.pack) {
                records.insert(record.pack.clone(), record);
            }
        }
    }
    Ok(records.into_values().collect())
}

/// Copies `packs` with `options.threads` threads; returns the ones that failed, with why.
fn copy_packs(
    source: &dyn Storage,
    copy: &dyn Storage,
    packs: &BTreeSet<String>,
    options: &SyncOptions,
    report: &mut SyncReport,
) -> HashMap<String, String> {
    let (sender, receiver) = crossbeam_channel::unbounded::<String>();
    for pack in packs {
        sender.send(pack.clone()).expect("the receiver is alive");
    }
    drop(sender);
    let failed = Mutex::new(HashMap::new());
    let copied = Mutex::new((0usize, 0u64));
    std::thread::scope(|scope| {
        for _ in 0..options.threads.clamp(1, 64) {
            let receiver = receiver.clone();
            let failed = &failed;
            let copied = &copied;
            scope.spawn(move || {
                for pack in receiver {
                    match copy_pack(source, copy, &pack) {
                        Ok(bytes) => {
                            let mut copied = copied.lock().expect("not poisoned");
                            copied.0 += 1;
                            copied.1 += bytes;
                        }
                        Err(reason) => {
                            tracing::warn!(%pack, %reason, "pack not copied");
                            failed.lock().expect("not poisoned").insert(pack, reason);
                        }
                    }
                }
            });
        }
    });
    let (count, bytes) = copied.into_inner().expect("not poisoned");
    report.packs_copied += count;
    report.bytes_copied += bytes;
    let failed = failed.into_inner().expect("not poisoned");
    for (pack, reason) in &failed {
        report.problems.push(format!("pack {pack}: {reason}"));
    }
    failed
}

/// Copies one pack after checking it is the pack its name says.
fn copy_pack(
    source: &dyn Storage,
    copy: &dyn Storage,
    pack: &str,
) -> std::result::Result<u64, String> {
    let bytes = source
        .read(ObjectKind::Pack, pack)
        .map_err(|e| e.to_string())?;
    let actual = blake3::hash(&bytes).to_hex();
    if actual.as_str() != pack {
        return Err(format!(
            "the pack in {} is corrupt (its content hashes to {actual}); it was not copied. \
             Run 'lifeboat verify --read-data' on the source",
            source.location()
        ));
    }
    match copy.create(ObjectKind::Pack, pack, &bytes) {
        Ok(()) => Ok(bytes.len() as u64),
        Err(error) if error.is_already_exists() => Ok(0),
        Err(error) => Err(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_sync_time_is_never_later_than_a_point_the_copy_lacks() {
        let round = "2026-12-07T13:39:14.386Z";
        // Nothing lacking: the round's start.
        assert_eq!(last_sync_time(round, [].into_iter(), [].into_iter()), round);
        // A backup running since before the round: its start, whatever came later.
        assert_eq!(
            last_sync_time(
                round,
                ["2026-12-07T13:39:14.000Z"].into_iter(),
                ["2026-12-07T13:39:13.685Z"].into_iter()
            ),
            "2026-12-07T13:39:13.685Z"
        );
        // A point still pending, older than every running backup.
        assert_eq!(
            last_sync_time(
                round,
                ["2026-12-07T10:00:00.000Z"].into_iter(),
                ["2026-12-07T13:39:13.685Z"].into_iter()
            ),
            "2026-12-07T10:00:00.000Z"
        );
    }
}
