//! `verify`: prove every point restorable, or name what is damaged and which points it
//! affects.
//!
//! Without `--read-data`: every manifest and disk index decodes, every chunk a point needs
//! has a copy in a pack index, and every such pack exists and is long enough.
//! With `--read-data`: additionally every pack is read in full and every blob is opened,
//! decompressed and hashed. A blob that fails is quarantined (recorded, never deleted), so
//! restores skip it and the next backup that sees the same data stores a healthy copy.
//!
//! A chunk with a healthy copy elsewhere is still reported when one of its copies is newly
//! found damaged; a copy quarantined by an earlier run is only counted.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Instant;

use crossbeam_channel::bounded;
use lifeboat_repository::blob::chunk_from_group;
use lifeboat_repository::pack::header_damage;
use lifeboat_repository::quarantine::QuarantineRecord;
use lifeboat_repository::{
    BlobDecoder, ChunkId, ChunkLocation, ChunkMap, ObjectKind, Repository, RepositoryError,
};
use serde::Serialize;

use crate::error::Result;
use crate::progress::Progress;

/// A point affected by damage.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct AffectedPoint {
    pub point: String,
    pub vm: String,
}

/// One finding.
#[derive(Clone, Debug, Serialize)]
pub struct Damage {
    /// `damaged-manifest`, `damaged-disk-index`, `damaged-pack-index`, `missing-chunk`,
    /// `damaged-chunk` (no healthy copy left), `damaged-copy` (another copy is healthy) or
    /// `damaged-pack` (damage outside its blobs: header, trailer, magic).
    pub kind: &'static str,
    /// The chunk id, or the damaged object's name.
    pub object: String,
    /// The pack holding the damaged copy, where there is one.
    pub pack: Option<String>,
    /// Offset of the damaged copy in its pack.
    pub offset: Option<u64>,
    pub detail: String,
    /// Every point that can no longer be fully restored because of it.
    pub points: Vec<AffectedPoint>,
}

/// The result of a verify.
#[derive(Clone, Debug, Serialize)]
pub struct VerifyReport {
    pub read_data: bool,
    pub points: usize,
    pub disks: usize,
    pub chunks: usize,
    pub packs: usize,
    pub bytes_read: u64,
    /// Copies quarantined by earlier runs that are not needed (another copy is healthy).
    pub quarantined_copies: usize,
    pub damage: Vec<Damage>,
    pub seconds: f64,
}

/// Checks the whole repository.
pub fn verify(
    repository: &Repository,
    read_data: bool,
    threads: usize,
    progress: &dyn Progress,
) -> Result<VerifyReport> {
    let started = Instant::now();
    // Held to the end: a prune deletes nothing this run reads, so a pack it repacked
    // meanwhile is not reported as missing.
    let _reading = repository.lock_read("verify");
    let mut damage = Vec::new();
    let list = repository.list_points()?;
    for damaged in &list.damaged {
        damage.push(Damage {
            kind: "damaged-manifest",
            object: damaged.name.clone(),
            pack: None,
            offset: None,
            detail: damaged.reason.clone(),
            points: vec![AffectedPoint {
                point: damaged.name.clone(),
                vm: "?".to_string(),
            }],
        });
    }

    // Which points need which chunk.
    let mut needed_by: ChunkMap<Vec<u32>> = ChunkMap::default();
    let points: Vec<AffectedPoint> = list
        .points
        .iter()
        .map(|p| AffectedPoint {
            point: p.point.clone(),
            vm: p.vm.clone(),
        })
        .collect();
    let mut disk_indexes: BTreeMap<String, std::result::Result<HashSet<ChunkId>, String>> =
        BTreeMap::new();
    let mut index_users: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    let mut disks = 0;
    for (number, manifest) in list.points.iter().enumerate() {
        for disk in &manifest.disks {
            disks += 1;
            index_users
                .entry(disk.index.clone())
                .or_default()
                .push(number as u32);
            let chunks = disk_indexes
                .entry(disk.index.clone())
                .or_insert_with(|| match repository.read_disk_index(&disk.index) {
                    Ok(index) => Ok(index.chunks.into_iter().filter(|c| !c.is_zero()).collect()),
                    Err(RepositoryError::Damaged { reason, .. }) => Err(reason),
                    Err(error) => Err(error.to_string()),
                });
            if let Ok(chunks) = chunks {
                for chunk in chunks.iter() {
                    let users = needed_by.entry(*chunk).or_default();
                    if users.last() != Some(&(number as u32)) {
                        users.push(number as u32);
                    }
                }
            }
        }
    }
    for (name, result) in &disk_indexes {
        if let Err(reason) = result {
            damage.push(Damage {
                kind: "damaged-disk-index",
                object: name.clone(),
                pack: None,
                offset: None,
                detail: reason.clone(),
                points: affected(&points, &index_users[name]),
            });
        }
    }

    let loaded = repository.load_index()?;
    for damaged in &loaded.damaged {
        damage.push(Damage {
            kind: "damaged-pack-index",
            object: damaged.name.clone(),
            pack: None,
            offset: None,
            detail: damaged.reason.clone(),
            points: Vec::new(),
        });
    }
    let index = loaded.chunks;
    let quarantined = repository.quarantined_copies()?;
    let pack_sizes: HashMap<String, u64> = repository
        .storage()
        .list(ObjectKind::Pack)?
        .into_iter()
        .map(|o| (o.name, o.size_bytes))
        .collect();

    // Copies that fail: (chunk, pack number) → reason.
    let mut failed: HashMap<(ChunkId, u32), (u64, String)> = HashMap::new();
    for (chunk, location) in index.iter_all() {
        if !needed_by.contains_key(&chunk) {
            continue;
        }
        let pack = index.pack_name(location.pack);
        let end = location.blob_offset as u64 + location.blob_bytes as u64;
        match pack_sizes.get(pack) {
            None => {
                failed.insert(
                    (chunk, location.pack),
                    (
                        location.blob_offset as u64,
                        format!("pack {pack} is missing"),
                    ),
                );
            }
            Some(&size) if size < end => {
                failed.insert(
                    (chunk, location.pack),
                    (
                        location.blob_offset as u64,
                        format!("pack {pack} is {size} bytes, too short for this copy"),
                    ),
                );
            }
            _ => {}
        }
    }

    let mut bytes_read = 0;
    let packs_checked;
    if read_data {
        let check = read_and_check_packs(
            repository,
            &index,
            &needed_by,
            &pack_sizes,
            &quarantined,
            threads,
            progress,
        )?;
        bytes_read = check.bytes_read;
        packs_checked = check.packs_checked;
        for (pack, offset, detail) in check.pack_damage {
            let name = index.pack_name(pack).to_string();
            damage.push(Damage {
                kind: "damaged-pack",
                object: name.clone(),
                pack: Some(name),
                offset,
                detail,
                // Its blobs are read on their own; what fails in them is reported per
                // chunk, with the points it affects.
                points: Vec::new(),
            });
        }
        let newly_failed = check.failures;
        for ((chunk, pack), (offset, reason)) in newly_failed {
            repository.quarantine(&QuarantineRecord {
                chunk: chunk.to_hex(),
                pack: index.pack_name(pack).to_string(),
                offset,
                reason: reason.clone(),
                found: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            })?;
            failed.entry((chunk, pack)).or_insert((offset, reason));
        }
    } else {
        packs_checked = index
            .pack_names()
            .iter()
            .filter(|p| pack_sizes.contains_key(*p))
            .count();
    }

    let mut quarantined_copies = 0;
    for (chunk, users) in &needed_by {
        let locations: Vec<ChunkLocation> = index.locations(chunk);
        let is_quarantined = |l: &ChunkLocation| {
            quarantined.contains(&(*chunk, index.pack_name(l.pack).to_string()))
        };
        let healthy = locations
            .iter()
            .filter(|l| !is_quarantined(l) && !failed.contains_key(&(*chunk, l.pack)))
            .count();
        quarantined_copies += locations.iter().filter(|l| is_quarantined(l)).count();
        if locations.is_empty() {
            damage.push(Damage {
                kind: "missing-chunk",
                object: chunk.to_hex(),
                pack: None,
                offset: None,
                detail: "no pack index lists this chunk".to_string(),
                points: affected(&points, users),
            });
            continue;
        }
        for location in &locations {
            if let Some((offset, reason)) = failed.get(&(*chunk, location.pack)) {
                damage.push(Damage {
                    kind: if healthy == 0 {
                        "damaged-chunk"
                    } else {
                        "damaged-copy"
                    },
                    object: chunk.to_hex(),
                    pack: Some(index.pack_name(location.pack).to_string()),
                    offset: Some(*offset),
                    detail: reason.clone(),
                    points: if healthy == 0 {
                        affected(&points, users)
                    } else {
                        Vec::new()
                    },
                });
            }
        }
        if healthy == 0
            && locations
                .iter()
                .all(|l| !failed.contains_key(&(*chunk, l.pack)))
        {
            // Every copy was quarantined by an earlier verify.
            damage.push(Damage {
                kind: "damaged-chunk",
                object: chunk.to_hex(),
                pack: Some(index.pack_name(locations[0].pack).to_string()),
                offset: Some(locations[0].blob_offset as u64),
                detail: "every stored copy is quarantined as damaged".to_string(),
                points: affected(&points, users),
            });
        }
    }
    damage.sort_by(|a, b| a.kind.cmp(b.kind).then_with(|| a.object.cmp(&b.object)));
    Ok(VerifyReport {
        read_data,
        points: list.points.len(),
        disks,
        chunks: needed_by.len(),
        packs: packs_checked,
        bytes_read,
        quarantined_copies,
        damage,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn affected(points: &[AffectedPoint], users: &[u32]) -> Vec<AffectedPoint> {
    let mut list: Vec<AffectedPoint> = users.iter().map(|&n| points[n as usize].clone()).collect();
    list.sort();
    list.dedup();
    list
}

type Failures = HashMap<(ChunkId, u32), (u64, String)>;

/// What reading every pack found.
struct PackCheck {
    bytes_read: u64,
    /// Copies that fail their check.
    failures: Failures,
    packs_checked: usize,
    /// Packs damaged outside their blobs: (pack number, offset, what).
    pack_damage: Vec<(u32, Option<u64>, String)>,
}

/// Reads every pack holding a needed copy and checks each such copy.
fn read_and_check_packs(
    repository: &Repository,
    index: &lifeboat_repository::ChunkIndex,
    needed_by: &ChunkMap<Vec<u32>>,
    pack_sizes: &HashMap<String, u64>,
    quarantined: &HashSet<(ChunkId, String)>,
    threads: usize,
    progress: &dyn Progress,
) -> Result<PackCheck> {
    // Group the copies to check by pack.
    let mut by_pack: BTreeMap<u32, Vec<(ChunkId, ChunkLocation)>> = BTreeMap::new();
    for (chunk, location) in index.iter_all() {
        let pack = index.pack_name(location.pack);
        if needed_by.contains_key(&chunk)
            && pack_sizes.contains_key(pack)
            && !quarantined.contains(&(chunk, pack.to_string()))
        {
            by_pack
                .entry(location.pack)
                .or_default()
                .push((chunk, location));
        }
    }
    for copies in by_pack.values_mut() {
        copies.sort_by_key(|(_, location)| (location.blob_offset, location.offset_in_group));
    }
    let total: u64 = by_pack
        .keys()
        .map(|p| pack_sizes[index.pack_name(*p)])
        .sum();
    progress.start("verify", total);
    let failures = Mutex::new(Failures::new());
    let pack_damage = Mutex::new(Vec::new());
    let quarantined_packs: HashSet<&str> =
        quarantined.iter().map(|(_, pack)| pack.as_str()).collect();
    let packs_checked = by_pack.len();
    let (sender, receiver) = bounded::<(
        u32,
        Vec<(ChunkId, ChunkLocation)>,
        std::result::Result<Vec<u8>, String>,
    )>(2);
    let crypto = repository.crypto();
    let bytes_read = std::thread::scope(|scope| {
        for _ in 0..threads.clamp(1, 16) {
            let receiver = receiver.clone();
            let failures = &failures;
            let pack_damage = &pack_damage;
            let quarantined_packs = &quarantined_packs;
            scope.spawn(move || {
                let mut decoder = BlobDecoder::new();
                for (pack, copies, bytes) in receiver {
                    let name = index.pack_name(pack);
                    let mut found = Vec::new();
                    let mut hash_matches = true;
                    let mut header_problem = None;
                    match bytes {
                        Err(reason) => {
                            for (chunk, location) in &copies {
                                found.push((
                                    (*chunk, pack),
                                    (location.blob_offset as u64, reason.clone()),
                                ));
                            }
                        }
                        Ok(bytes) => {
                            hash_matches = blake3::hash(&bytes).to_hex().as_str() == name;
                            header_problem = header_damage(crypto, &bytes);
                            // Each blob is opened once; every chunk taken from it is checked.
                            let mut opened: Option<(u32, std::result::Result<Vec<u8>, String>)> =
                                None;
                            for (chunk, location) in &copies {
                                if opened
                                    .as_ref()
                                    .is_none_or(|(offset, _)| *offset != location.blob_offset)
                                {
                                    let start = location.blob_offset as usize;
                                    let end = start + location.blob_bytes as usize;
                                    let group = match bytes.get(start..end) {
                                        None => {
                                            Err("the copy lies past the end of its pack"
                                                .to_string())
                                        }
                                        Some(sealed) => decoder
                                            .decode(crypto, sealed.to_vec(), location.group_bytes)
                                            .map_err(|e| e.to_string()),
                                    };
                                    opened = Some((location.blob_offset, group));
                                }
                                let group = &opened.as_ref().expect("opened above").1;
                                let result =
                                    group.as_ref().map_err(Clone::clone).and_then(|group| {
                                        chunk_from_group(
                                            crypto,
                                            chunk,
                                            group,
                                            location.offset_in_group,
                                            location.raw_bytes,
                                        )
                                        .map(|_| ())
                                        .map_err(|e| e.to_string())
                                    });
                                if let Err(reason) = result {
                                    let mut reason = reason;
                                    if !hash_matches {
                                        reason.push_str(
                                            "; the pack's content no longer matches its name",
                                        );
                                    }
                                    if let Some((_, problem)) = &header_problem {
                                        reason.push_str(&format!("; pack header: {problem}"));
                                    }
                                    found.push((
                                        (*chunk, pack),
                                        (location.blob_offset as u64, reason),
                                    ));
                                }
                            }
                        }
                    }
                    // Damage outside the blobs (header, trailer, magic, gaps): no chunk
                    // read fails, but geo-sync and prune refuse the pack. A mismatched
                    // hash is explained by a failing or quarantined blob, if there is one.
                    let unexplained_hash = !hash_matches
                        && found.is_empty()
                        && !quarantined_packs.contains(name);
                    if header_problem.is_some() || unexplained_hash {
                        let (offset, detail) = match &header_problem {
                            Some((offset, reason)) => (
                                Some(*offset),
                                format!("{reason}; geo-sync refuses this pack and prune cannot repack it"),
                            ),
                            None => (
                                None,
                                "the pack's content no longer matches its name (BLAKE3) although its header and blobs check good; geo-sync refuses it".to_string(),
                            ),
                        };
                        pack_damage.lock().expect("not poisoned").push((pack, offset, detail));
                    }
                    failures.lock().expect("not poisoned").extend(found);
                }
            });
        }
        drop(receiver);
        let mut bytes_read = 0u64;
        for (pack, copies) in by_pack {
            let name = index.pack_name(pack);
            let bytes = repository
                .storage()
                .read(ObjectKind::Pack, name)
                .map_err(|e| e.to_string());
            let length = bytes.as_ref().map(|b| b.len() as u64).unwrap_or(0);
            bytes_read += length;
            progress.advance(length);
            if sender.send((pack, copies, bytes)).is_err() {
                break;
            }
        }
        drop(sender);
        bytes_read
    });
    progress.finish();
    Ok(PackCheck {
        bytes_read,
        failures: failures.into_inner().expect("not poisoned"),
        packs_checked,
        pack_damage: pack_damage.into_inner().expect("not poisoned"),
    })
}
