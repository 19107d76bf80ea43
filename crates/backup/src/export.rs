//! `export`: serve a point's disks read-only over NBD, one export per disk.
//!
//! qemu reads them directly — `qemu-img convert` for a copy, `qemu-nbd`/`guestmount` for
//! file-level recovery, `qemu-system-x86_64` to boot the point (instant restore starts
//! here). Every chunk is checked before its bytes are served; a damaged chunk is an I/O
//! error to the client, never wrong bytes. Holes are reported through `base:allocation`,
//! so clients skip them.

use std::sync::{Arc, Mutex};

use lifeboat_nbd::protocol::{STATE_HOLE, STATE_ZERO};
use lifeboat_nbd::{Export, ExportError, Server};
use lifeboat_repository::blob::chunk_from_group;
use lifeboat_repository::{
    BlobDecoder, ChunkId, ChunkIndex, DiskIndex, Manifest, ObjectKind, Repository, RepositoryError,
};

use crate::error::Result;

/// Recently read chunks kept decoded, per disk (sequential readers ask for the same chunk
/// many times in small pieces).
const CACHED_CHUNKS: usize = 64;
/// Recently opened groups, so reading the chunks of one group opens it once.
const CACHED_GROUPS: usize = 4;

/// A small most-recently-used cache.
struct Recent<K, V> {
    entries: Vec<(K, Arc<V>)>,
    capacity: usize,
}

impl<K: PartialEq, V> Recent<K, V> {
    fn new(capacity: usize) -> Recent<K, V> {
        Recent {
            entries: Vec::new(),
            capacity,
        }
    }

    fn get(&self, key: &K) -> Option<Arc<V>> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| Arc::clone(v))
    }

    fn put(&mut self, key: K, value: Arc<V>) {
        if self.entries.len() >= self.capacity {
            self.entries.remove(0);
        }
        self.entries.push((key, value));
    }
}

/// One disk of a point, servable over NBD.
pub struct PointDisk {
    repository: Arc<Repository>,
    index: Arc<ChunkIndex>,
    disk: DiskIndex,
    description: String,
    chunks: Mutex<Recent<ChunkId, Vec<u8>>>,
    groups: Mutex<Recent<(u32, u32), Vec<u8>>>,
    decoders: Mutex<Vec<BlobDecoder>>,
    /// The export's reader lease, shared by its disks: no pack `index` names is deleted
    /// while the export serves (the instant disks of a failover read it for hours).
    _reading: Arc<Option<lifeboat_repository::Lease>>,
}

impl PointDisk {
    fn chunk(&self, position: usize) -> std::result::Result<Option<Arc<Vec<u8>>>, ExportError> {
        let id = self.disk.chunks[position];
        if id.is_zero() {
            return Ok(None);
        }
        if let Some(data) = self.chunks.lock().expect("not poisoned").get(&id) {
            return Ok(Some(data));
        }
        let mut decoder = self
            .decoders
            .lock()
            .expect("not poisoned")
            .pop()
            .unwrap_or_default();
        let result = self.read(&id, &mut decoder);
        self.decoders.lock().expect("not poisoned").push(decoder);
        let data = Arc::new(result.map_err(|error| {
            let message = format!(
                "{}: offset {}: {error}",
                self.description,
                self.disk.chunk_range(position).0
            );
            tracing::error!("{message}");
            ExportError::io(message)
        })?);
        self.chunks
            .lock()
            .expect("not poisoned")
            .put(id, Arc::clone(&data));
        Ok(Some(data))
    }

    /// Reads a chunk through the group cache; on any failure, every stored copy in turn.
    fn read(&self, id: &ChunkId, decoder: &mut BlobDecoder) -> Result<Vec<u8>, RepositoryError> {
        let crypto = self.repository.crypto();
        if let Some(location) = self.index.locate(id) {
            let key = (location.pack, location.blob_offset);
            let cached = self.groups.lock().expect("not poisoned").get(&key);
            let group = cached.or_else(|| {
                let sealed = self
                    .repository
                    .storage()
                    .read_range(
                        ObjectKind::Pack,
                        self.index.pack_name(location.pack),
                        location.blob_offset as u64,
                        location.blob_bytes as u64,
                    )
                    .ok()?;
                let group = Arc::new(decoder.decode(crypto, sealed, location.group_bytes).ok()?);
                self.groups
                    .lock()
                    .expect("not poisoned")
                    .put(key, Arc::clone(&group));
                Some(group)
            });
            let data = group.as_ref().and_then(|group| {
                chunk_from_group(
                    crypto,
                    id,
                    group,
                    location.offset_in_group,
                    location.raw_bytes,
                )
                .ok()
                .map(<[u8]>::to_vec)
            });
            if let Some(data) = data {
                return Ok(data);
            }
        }
        self.repository.read_chunk(&self.index, id, decoder)
    }
}

impl Export for PointDisk {
    fn size_bytes(&self) -> u64 {
        self.disk.virtual_size_bytes
    }

    fn read(&self, offset: u64, buffer: &mut [u8]) -> std::result::Result<(), ExportError> {
        let chunk_size = self.disk.chunk_size_bytes as u64;
        let mut done = 0usize;
        while done < buffer.len() {
            let at = offset + done as u64;
            let position = (at / chunk_size) as usize;
            let within = (at % chunk_size) as usize;
            let (_, length) = self.disk.chunk_range(position);
            let take = (length as usize - within).min(buffer.len() - done);
            match self.chunk(position)? {
                None => buffer[done..done + take].fill(0),
                Some(data) => {
                    buffer[done..done + take].copy_from_slice(&data[within..within + take])
                }
            }
            done += take;
        }
        Ok(())
    }

    fn allocation(
        &self,
        offset: u64,
        length: u64,
    ) -> std::result::Result<Vec<(u64, u32)>, ExportError> {
        let chunk_size = self.disk.chunk_size_bytes as u64;
        let end = offset + length;
        let mut extents: Vec<(u64, u32)> = Vec::new();
        let mut at = offset;
        while at < end {
            let position = (at / chunk_size) as usize;
            let chunk_end = ((position as u64 + 1) * chunk_size).min(self.disk.virtual_size_bytes);
            let piece = chunk_end.min(end) - at;
            let flags = if self.disk.chunks[position].is_zero() {
                STATE_HOLE | STATE_ZERO
            } else {
                0
            };
            match extents.last_mut() {
                Some((last_length, last_flags)) if *last_flags == flags => *last_length += piece,
                _ => extents.push((piece, flags)),
            }
            at += piece;
        }
        Ok(extents)
    }
}

/// Builds an NBD server with one export per disk of `manifest`, named by disk name.
pub fn point_server(repository: Arc<Repository>, manifest: &Manifest) -> Result<Server> {
    let reading = Arc::new(repository.lock_read("export"));
    let index = Arc::new(repository.load_read_index()?.chunks);
    let mut server = Server::new();
    for entry in &manifest.disks {
        let disk = repository.read_disk_index(&entry.index)?;
        server.add_export(
            entry.name.clone(),
            Arc::new(PointDisk {
                repository: Arc::clone(&repository),
                index: Arc::clone(&index),
                disk,
                description: format!("point {} disk '{}'", manifest.point, entry.name),
                chunks: Mutex::new(Recent::new(CACHED_CHUNKS)),
                groups: Mutex::new(Recent::new(CACHED_GROUPS)),
                decoders: Mutex::new(Vec::new()),
                _reading: Arc::clone(&reading),
            }),
        );
    }
    Ok(server)
}
