//! On-disk format of replica digests: `replication/<group tag>.digest`, sealed (context
//! "lifeboat-replica-digest").
//!
//! Before a capture's first sync, a receiver whose replicas already hold an older state of
//! the disks — after a failover, the old primary's disks become the replicas of the
//! reverse replication — publishes a keyed hash of every 64 KiB block of them. The capture
//! then sends only the blocks whose hash differs from its own: what changed on either
//! side since the two last agreed, instead of the whole disk. Both sides read their disks
//! locally; only the hashes and the differing blocks cross between regions.
//!
//! Layout of the sealed plaintext: a little-endian `u32` length, that many bytes of JSON
//! (`{"format":1,"group":…,"disks":[{"vm":…,"disk":…,"size_bytes":…,"blocks":N},…]}`), then
//! for each disk in order its N block hashes of 32 bytes. A block that reads as zeros (or is
//! a hole) hashes as the zero block does.

use std::path::Path;

use serde::{Deserialize, Serialize};

use lifeboat_repository::crypto::Crypto;
use lifeboat_repository::{ObjectKind, Storage};

use crate::cut::group_tag;
use crate::error::{ReplicationError, Result, io};
use crate::image::DiskImage;

const CONTEXT: &[u8] = b"lifeboat-replica-digest";
pub const FORMAT: u32 = 1;
/// The unit compared.
pub const BLOCK_BYTES: u64 = 64 * 1024;
/// Digests of more than this are refused (a 64 TiB disk).
const MAXIMUM_BLOCKS: u64 = 1 << 30;

/// The hashes of one replica's blocks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskDigest {
    /// The VM's directory name among the replicas (`file_name_for(vm)`).
    pub vm: String,
    pub disk: String,
    pub size_bytes: u64,
    pub blocks: Vec<[u8; 32]>,
}

#[derive(Serialize, Deserialize)]
struct Header {
    format: u32,
    group: String,
    disks: Vec<HeaderDisk>,
}

#[derive(Serialize, Deserialize)]
struct HeaderDisk {
    vm: String,
    disk: String,
    size_bytes: u64,
    blocks: u64,
}

fn name(crypto: &Crypto, group: &str) -> String {
    format!("{}.digest", group_tag(crypto, group))
}

/// Hashes the blocks of `image` (holes, known from its data ranges, without reading).
pub fn hash_blocks(crypto: &Crypto, image: &dyn DiskImage) -> Result<Vec<[u8; 32]>> {
    let size = image.size_bytes();
    let count = size.div_ceil(BLOCK_BYTES);
    if count > MAXIMUM_BLOCKS {
        return Err(ReplicationError::Invalid(format!(
            "{} is too large to digest",
            image.path().display()
        )));
    }
    let zero = crypto.chunk_id(&vec![0u8; BLOCK_BYTES as usize]).0;
    let mut blocks = vec![zero; count as usize];
    let mut buffer = vec![0u8; BLOCK_BYTES as usize];
    let mut previous = None;
    for range in image.data_ranges()? {
        let first = range.offset / BLOCK_BYTES;
        let last = (range.offset + range.length).div_ceil(BLOCK_BYTES);
        for block in first..last {
            if previous.is_some_and(|p| block <= p) {
                continue;
            }
            previous = Some(block);
            let offset = block * BLOCK_BYTES;
            let length = BLOCK_BYTES.min(size - offset) as usize;
            buffer[length..].fill(0);
            image
                .read_at(offset, &mut buffer[..length])
                .map_err(|e| io(image.path(), "read", e))?;
            blocks[block as usize] = crypto.chunk_id(&buffer).0;
        }
    }
    Ok(blocks)
}

/// Replaces the digest of `group`'s replicas.
pub fn write(
    storage: &dyn Storage,
    crypto: &Crypto,
    group: &str,
    disks: &[DiskDigest],
) -> Result<()> {
    let header = Header {
        format: FORMAT,
        group: group.to_string(),
        disks: disks
            .iter()
            .map(|d| HeaderDisk {
                vm: d.vm.clone(),
                disk: d.disk.clone(),
                size_bytes: d.size_bytes,
                blocks: d.blocks.len() as u64,
            })
            .collect(),
    };
    let json = serde_json::to_vec(&header).expect("digest headers serialize");
    // Built after room for the seal's prefix and sealed where it lies.
    let mut plaintext = Vec::with_capacity(
        crypto.overhead_bytes()
            + 4
            + json.len()
            + disks.iter().map(|d| d.blocks.len() * 32).sum::<usize>(),
    );
    plaintext.resize(crypto.prefix_bytes(), 0);
    plaintext.extend_from_slice(&(json.len() as u32).to_le_bytes());
    plaintext.extend_from_slice(&json);
    for disk in disks {
        for block in &disk.blocks {
            plaintext.extend_from_slice(block);
        }
    }
    crypto.seal_in_place(CONTEXT, &mut plaintext);
    storage.replace(
        ObjectKind::ReplicationStatus,
        &name(crypto, group),
        &plaintext,
    )?;
    Ok(())
}

/// The digest of `group`'s replicas, if one was published.
pub fn read(
    storage: &dyn Storage,
    crypto: &Crypto,
    group: &str,
) -> Result<Option<Vec<DiskDigest>>> {
    let object = name(crypto, group);
    let sealed = match storage.read(ObjectKind::ReplicationStatus, &object) {
        Ok(sealed) => sealed,
        Err(error) if error.is_not_found() => return Ok(None),
        Err(error) => return Err(error.into()),
    };
    let damaged = |detail: &str| {
        ReplicationError::Invalid(format!("the replica digest {object} is damaged: {detail}"))
    };
    let plaintext = crypto
        .open(CONTEXT, &sealed)
        .map_err(|e| damaged(&e.to_string()))?;
    let length = plaintext
        .get(..4)
        .map(|b| u32::from_le_bytes(b.try_into().expect("four bytes")) as usize)
        .ok_or_else(|| damaged("too short"))?;
    let header: Header = plaintext
        .get(4..4 + length)
        .and_then(|json| serde_json::from_slice(json).ok())
        .ok_or_else(|| damaged("no header"))?;
    if header.format != FORMAT || header.group != group {
        return Err(damaged("another format or group"));
    }
    let mut hashes = plaintext[4 + length..].chunks_exact(32);
    let mut disks = Vec::new();
    for disk in header.disks {
        if disk.blocks != disk.size_bytes.div_ceil(BLOCK_BYTES) || disk.blocks > MAXIMUM_BLOCKS {
            return Err(damaged("a disk's block count does not match its size"));
        }
        let blocks = (0..disk.blocks)
            .map(|_| {
                hashes
                    .next()
                    .map(|h| <[u8; 32]>::try_from(h).expect("32 bytes"))
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| damaged("fewer hashes than blocks"))?;
        disks.push(DiskDigest {
            vm: disk.vm,
            disk: disk.disk,
            size_bytes: disk.size_bytes,
            blocks,
        });
    }
    Ok(Some(disks))
}

/// The replicas under `directory` (`<vm>/<disk>` files), digested.
pub fn digest_directory(crypto: &Crypto, directory: &Path) -> Result<Vec<DiskDigest>> {
    let mut disks = Vec::new();
    let entries = std::fs::read_dir(directory).map_err(|e| io(directory, "list", e))?;
    let mut vms: Vec<_> = entries.flatten().filter(|e| e.path().is_dir()).collect();
    vms.sort_by_key(|e| e.file_name());
    for vm in vms {
        let mut files: Vec<_> = std::fs::read_dir(vm.path())
            .map_err(|e| io(&vm.path(), "list", e))?
            .flatten()
            .filter(|e| e.path().is_file())
            .collect();
        files.sort_by_key(|e| e.file_name());
        for file in files {
            let image = crate::image::RawImage::open(&file.path())?;
            disks.push(DiskDigest {
                vm: vm.file_name().to_string_lossy().into_owned(),
                disk: file.file_name().to_string_lossy().into_owned(),
                size_bytes: image.size_bytes(),
                blocks: hash_blocks(crypto, &image)?,
            });
        }
    }
    Ok(disks)
}

/// The byte ranges of `image` whose blocks differ from `replica`'s (all of it when the
/// sizes differ), merged.
pub fn differing_ranges(
    crypto: &Crypto,
    image: &dyn DiskImage,
    replica: &DiskDigest,
) -> Result<Vec<(u64, u64)>> {
    let size = image.size_bytes();
    if size != replica.size_bytes {
        return Ok(vec![(0, size)]);
    }
    let mine = hash_blocks(crypto, image)?;
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for (index, (a, b)) in mine.iter().zip(&replica.blocks).enumerate() {
        if a == b {
            continue;
        }
        let offset = index as u64 * BLOCK_BYTES;
        let length = BLOCK_BYTES.min(size - offset);
        match ranges.last_mut() {
            Some((start, len)) if *start + *len == offset => *len += length,
            _ => ranges.push((offset, length)),
        }
    }
    Ok(ranges)
}

/// Removes the digest of `group`: once the receiver applied a cut, the replicas moved on
/// and a capture starting afresh must not compare against it.
pub fn remove(storage: &dyn Storage, crypto: &Crypto, group: &str) -> Result<()> {
    match storage.delete(ObjectKind::ReplicationStatus, &name(crypto, group)) {
        Err(error) if !error.is_not_found() => Err(error.into()),
        _ => Ok(()),
    }
}
