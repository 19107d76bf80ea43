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
use lifeboat_repository::{ChunkDecoder, ChunkId, ChunkIndex, DiskIndex, Manifest, Repository};

use crate::error::Result;

/// Recently read chunks kept decoded, per disk (sequential readers ask for the same chunk
/// many times in small pieces).
const CACHED_CHUNKS: usize = 64;

/// One disk of a point, servable over NBD.
pub struct PointDisk {
    repository: Arc<Repository>,
    index: Arc<ChunkIndex>,
    disk: DiskIndex,
    description: String,
    cache: Mutex<Vec<(ChunkId, Arc<Vec<u8>>)>>,
    decoders: Mutex<Vec<ChunkDecoder>>,
}

impl PointDisk {
    fn chunk(&self, position: usize) -> std::result::Result<Option<Arc<Vec<u8>>>, ExportError> {
        let id = self.disk.chunks[position];
        if id.is_zero() {
            return Ok(None);
        }
        if let Some((_, data)) = self
            .cache
            .lock()
            .expect("not poisoned")
            .iter()
            .find(|(c, _)| *c == id)
        {
            return Ok(Some(Arc::clone(data)));
        }
        let mut decoder = self
            .decoders
            .lock()
            .expect("not poisoned")
            .pop()
            .unwrap_or_default();
        let result = self.repository.read_chunk(&self.index, &id, &mut decoder);
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
        let mut cache = self.cache.lock().expect("not poisoned");
        if cache.len() >= CACHED_CHUNKS {
            cache.remove(0);
        }
        cache.push((id, Arc::clone(&data)));
        Ok(Some(data))
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
                cache: Mutex::new(Vec::new()),
                decoders: Mutex::new(Vec::new()),
            }),
        );
    }
    Ok(server)
}
