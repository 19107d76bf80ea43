//! Disk indexes (`disk-indexes/<id>`): one disk of one point as an ordered list of chunks.
//!
//! ```text
//! plaintext := magic "LBDISK01" ‖ virtual size (u64 LE) ‖ chunk size (u32 LE)
//!              ‖ chunk count (u64 LE) ‖ chunk id (32)*
//! object    := seal("lifeboat-disk-index", zstd(plaintext))
//! id        := hex(keyed BLAKE3("disk-index", plaintext))
//! ```
//!
//! Chunk `i` covers bytes `[i × chunk size, min((i + 1) × chunk size, virtual size))`;
//! the last chunk may be short. An all-zero id is a hole: the range reads as zeros and
//! nothing is stored. Zstd squeezes runs of holes. The id is a hash of the content, so an
//! unchanged disk backed up again reuses the same object.

use crate::crypto::{ChunkId, Crypto};

const MAGIC: &[u8; 8] = b"LBDISK01";
const CONTEXT: &[u8] = b"lifeboat-disk-index";
const HEADER_BYTES: usize = 8 + 8 + 4 + 8;
/// Upper bound on chunks per disk (16 TiB of 64 KiB chunks), so a damaged count cannot
/// make a reader allocate without limit.
pub const MAXIMUM_CHUNKS: u64 = 1 << 28;

const _: () = assert!(HEADER_BYTES == 28);

/// One disk of a point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskIndex {
    /// Size of the disk as the guest sees it.
    pub virtual_size_bytes: u64,
    /// Size of every chunk but possibly the last.
    pub chunk_size_bytes: u32,
    /// One id per chunk; [`ChunkId::ZERO`] for holes.
    pub chunks: Vec<ChunkId>,
}

impl DiskIndex {
    /// A disk of holes only.
    pub fn empty(virtual_size_bytes: u64, chunk_size_bytes: u32) -> DiskIndex {
        let count = chunk_count(virtual_size_bytes, chunk_size_bytes);
        DiskIndex {
            virtual_size_bytes,
            chunk_size_bytes,
            chunks: vec![ChunkId::ZERO; count as usize],
        }
    }

    /// Byte offset and length of chunk `index`.
    pub fn chunk_range(&self, index: usize) -> (u64, u32) {
        let offset = index as u64 * self.chunk_size_bytes as u64;
        let length = (self.virtual_size_bytes - offset).min(self.chunk_size_bytes as u64);
        (offset, length as u32)
    }

    /// Encodes the plaintext form (used for naming and sealing).
    pub fn to_plaintext(&self) -> Vec<u8> {
        let mut plaintext = Vec::with_capacity(HEADER_BYTES + self.chunks.len() * 32);
        plaintext.extend_from_slice(MAGIC);
        plaintext.extend_from_slice(&self.virtual_size_bytes.to_le_bytes());
        plaintext.extend_from_slice(&self.chunk_size_bytes.to_le_bytes());
        plaintext.extend_from_slice(&(self.chunks.len() as u64).to_le_bytes());
        for chunk in &self.chunks {
            plaintext.extend_from_slice(&chunk.0);
        }
        plaintext
    }

    /// Seals the index; returns (id, object bytes).
    pub fn encode(&self, crypto: &Crypto) -> (String, Vec<u8>) {
        let plaintext = self.to_plaintext();
        let id = hex::encode(crypto.name_hash("disk-index", &plaintext));
        let compressed = zstd::bulk::compress(&plaintext, 3).expect("zstd compresses in memory");
        (id, crypto.seal(CONTEXT, &compressed))
    }

    /// Opens and checks a disk index; `Err` says what is wrong. Decompressed as a stream:
    /// memory follows the chunk count its header gives (checked against its virtual size),
    /// never the largest index the format allows.
    pub fn decode(
        crypto: &Crypto,
        expected_id: &str,
        sealed: Vec<u8>,
    ) -> Result<DiskIndex, String> {
        use std::io::Read;
        let compressed = crypto
            .open_in_place(CONTEXT, sealed)
            .map_err(|e| e.to_string())?;
        let failed = |e: std::io::Error| format!("decompression failed: {e}");
        let mut plaintext =
            zstd::stream::read::Decoder::with_buffer(compressed.as_slice()).map_err(failed)?;
        let mut header = [0u8; HEADER_BYTES];
        match plaintext.read_exact(&mut header) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err("not a disk index (bad magic)".to_string());
            }
            Err(e) => return Err(failed(e)),
        }
        if &header[..8] != MAGIC {
            return Err("not a disk index (bad magic)".to_string());
        }
        let virtual_size_bytes = u64::from_le_bytes(header[8..16].try_into().expect("8"));
        let chunk_size_bytes = u32::from_le_bytes(header[16..20].try_into().expect("4"));
        let count = u64::from_le_bytes(header[20..28].try_into().expect("8"));
        if chunk_size_bytes == 0 || !chunk_size_bytes.is_power_of_two() {
            return Err(format!(
                "chunk size {chunk_size_bytes} is not a power of two"
            ));
        }
        if count != chunk_count(virtual_size_bytes, chunk_size_bytes) {
            return Err(format!(
                "{count} chunks do not cover {virtual_size_bytes} bytes in chunks of {chunk_size_bytes}"
            ));
        }
        if count > MAXIMUM_CHUNKS {
            return Err(format!(
                "{count} chunks are more than a disk index may hold ({MAXIMUM_CHUNKS})"
            ));
        }
        let mut hasher = crypto.name_hasher("disk-index");
        hasher.update(&header);
        let mut chunks = Vec::with_capacity(count as usize);
        let mut block = vec![0u8; 2048 * 32];
        let short = || "chunk list length does not match its count".to_string();
        while (chunks.len() as u64) < count {
            let wanted = ((count - chunks.len() as u64) * 32).min(block.len() as u64) as usize;
            match plaintext.read_exact(&mut block[..wanted]) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(short()),
                Err(e) => return Err(failed(e)),
            }
            hasher.update(&block[..wanted]);
            chunks.extend(
                block[..wanted]
                    .chunks_exact(32)
                    .map(|bytes| ChunkId(bytes.try_into().expect("32 bytes"))),
            );
        }
        let mut more = [0u8; 1];
        match plaintext.read(&mut more) {
            Ok(0) => {}
            Ok(_) => return Err(short()),
            Err(e) => return Err(failed(e)),
        }
        if hex::encode(hasher.finalize().as_bytes()) != expected_id {
            return Err("content does not match its name".to_string());
        }
        Ok(DiskIndex {
            virtual_size_bytes,
            chunk_size_bytes,
            chunks,
        })
    }
}

/// Chunks needed to cover `virtual_size_bytes`.
pub fn chunk_count(virtual_size_bytes: u64, chunk_size_bytes: u32) -> u64 {
    virtual_size_bytes.div_ceil(chunk_size_bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::MasterKeys;

    #[test]
    fn disk_indexes_round_trip_with_a_short_last_chunk() {
        let crypto = Crypto::encrypted(&MasterKeys::generate());
        let mut index = DiskIndex::empty(10 * 65536 + 512, 65536);
        assert_eq!(index.chunks.len(), 11);
        assert_eq!(index.chunk_range(10), (10 * 65536, 512));
        index.chunks[3] = ChunkId([9; 32]);
        let (id, sealed) = index.encode(&crypto);
        assert_eq!(
            DiskIndex::decode(&crypto, &id, sealed.clone()).unwrap(),
            index
        );
        assert!(DiskIndex::decode(&crypto, &"0".repeat(64), sealed).is_err());
    }

    #[test]
    fn identical_disks_get_identical_ids() {
        let crypto = Crypto::unencrypted();
        let first = DiskIndex::empty(1 << 20, 65536).encode(&crypto).0;
        let second = DiskIndex::empty(1 << 20, 65536).encode(&crypto).0;
        assert_eq!(first, second);
    }
}
