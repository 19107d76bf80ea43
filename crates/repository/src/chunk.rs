//! Chunk blobs: how one chunk of disk data is encoded inside a pack.
//!
//! ```text
//! plaintext := compression (1 byte: 0 = stored, 1 = zstd) ‖ payload
//! blob      := seal(associated data = chunk id, plaintext)
//! ```
//!
//! Compression is skipped when it would save less than 1/16 of the chunk: incompressible
//! data (media, encrypted filesystems) then costs one copy instead of a decompression on
//! every restore. Zero chunks never get here: they are holes in the disk index.
//!
//! Decoding checks, in order: the seal (authenticity), the compression byte, the
//! decompressed length against the index, and the chunk id against the plaintext. A chunk
//! that passes all four is the chunk that was written; anything else is an error that
//! names it.

use crate::crypto::{ChunkId, Crypto};

const STORED: u8 = 0;
const ZSTD: u8 = 1;

/// Default zstd level: level 1 is the fastest full-ratio level, and compression is most of
/// the write-path cost.
pub const DEFAULT_COMPRESSION_LEVEL: i32 = 1;

/// Why a blob did not decode to its chunk.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkDecodeError {
    #[error("authentication failed (damaged, or written with another key)")]
    Authentication,
    #[error("unknown compression byte {0}")]
    UnknownCompression(u8),
    #[error("decompression failed: {0}")]
    Decompression(String),
    #[error("decoded length {actual} differs from the {expected} bytes the index records")]
    Length { expected: u32, actual: usize },
    #[error("content hashes to {actual}, not to its id")]
    Hash { actual: ChunkId },
}

/// Reusable per-thread state for encoding chunks (a zstd context).
pub struct ChunkEncoder {
    compressor: zstd::bulk::Compressor<'static>,
}

impl ChunkEncoder {
    /// An encoder compressing at `level`.
    pub fn new(level: i32) -> ChunkEncoder {
        ChunkEncoder {
            compressor: zstd::bulk::Compressor::new(level)
                .expect("zstd accepts levels from -7 to 22"),
        }
    }

    /// Encodes `data` (whose id is `id`) into a sealed blob.
    pub fn encode(&mut self, crypto: &Crypto, id: &ChunkId, data: &[u8]) -> Vec<u8> {
        let prefix = crypto.prefix_bytes();
        let bound = zstd::zstd_safe::compress_bound(data.len());
        let mut buffer = Vec::with_capacity(prefix + 1 + bound.max(data.len()) + 16);
        buffer.resize(prefix + 1 + bound, 0);
        buffer[prefix] = ZSTD;
        let compressed = self
            .compressor
            .compress_to_buffer(data, &mut buffer[prefix + 1..])
            .ok();
        match compressed {
            Some(length) if length < data.len() - data.len() / 16 => {
                buffer.truncate(prefix + 1 + length);
            }
            _ => {
                buffer.truncate(prefix);
                buffer.push(STORED);
                buffer.extend_from_slice(data);
            }
        }
        crypto.seal_in_place(&id.0, &mut buffer);
        buffer
    }
}

/// Reusable per-thread state for decoding chunks (a zstd context).
pub struct ChunkDecoder {
    decompressor: zstd::bulk::Decompressor<'static>,
}

impl Default for ChunkDecoder {
    fn default() -> Self {
        ChunkDecoder::new()
    }
}

impl ChunkDecoder {
    /// A fresh decoder.
    pub fn new() -> ChunkDecoder {
        ChunkDecoder {
            decompressor: zstd::bulk::Decompressor::new().expect("zstd context allocation"),
        }
    }

    /// Decodes a sealed blob and checks it is the chunk `id` of `raw_bytes` bytes.
    pub fn decode(
        &mut self,
        crypto: &Crypto,
        id: &ChunkId,
        sealed: Vec<u8>,
        raw_bytes: u32,
    ) -> Result<Vec<u8>, ChunkDecodeError> {
        let plaintext = crypto
            .open_in_place(&id.0, sealed)
            .map_err(|_| ChunkDecodeError::Authentication)?;
        let Some((&compression, payload)) = plaintext.split_first() else {
            return Err(ChunkDecodeError::Length {
                expected: raw_bytes,
                actual: 0,
            });
        };
        let data = match compression {
            STORED => payload.to_vec(),
            ZSTD => {
                let mut data = vec![0u8; raw_bytes as usize];
                let length = self
                    .decompressor
                    .decompress_to_buffer(payload, &mut data)
                    .map_err(|e| ChunkDecodeError::Decompression(e.to_string()))?;
                data.truncate(length);
                data
            }
            other => return Err(ChunkDecodeError::UnknownCompression(other)),
        };
        if data.len() != raw_bytes as usize {
            return Err(ChunkDecodeError::Length {
                expected: raw_bytes,
                actual: data.len(),
            });
        }
        let actual = crypto.chunk_id(&data);
        if actual != *id {
            return Err(ChunkDecodeError::Hash { actual });
        }
        Ok(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::MasterKeys;

    fn round_trip(crypto: &Crypto, data: &[u8]) -> usize {
        let id = crypto.chunk_id(data);
        let sealed = ChunkEncoder::new(DEFAULT_COMPRESSION_LEVEL).encode(crypto, &id, data);
        let length = sealed.len();
        let decoded = ChunkDecoder::new()
            .decode(crypto, &id, sealed, data.len() as u32)
            .unwrap();
        assert_eq!(decoded, data);
        length
    }

    #[test]
    fn compressible_chunks_shrink_and_random_ones_are_stored() {
        for crypto in [
            Crypto::unencrypted(),
            Crypto::encrypted(&MasterKeys::generate()),
        ] {
            let text = b"lifeboat ".repeat(7282);
            assert!(round_trip(&crypto, &text) < text.len() / 10);
            let mut random = vec![0u8; 65536];
            crate::crypto::fill_random(&mut random);
            let stored = round_trip(&crypto, &random);
            assert_eq!(stored, random.len() + 1 + crypto.overhead_bytes());
        }
    }

    #[test]
    fn a_blob_decoded_under_another_id_is_refused() {
        let crypto = Crypto::unencrypted();
        let data = vec![7u8; 4096];
        let id = crypto.chunk_id(&data);
        let sealed = ChunkEncoder::new(1).encode(&crypto, &id, &data);
        let other = crypto.chunk_id(b"other");
        assert_eq!(
            ChunkDecoder::new().decode(&crypto, &other, sealed, 4096),
            Err(ChunkDecodeError::Authentication)
        );
    }

    #[test]
    fn a_wrong_recorded_length_is_refused() {
        let crypto = Crypto::unencrypted();
        let data = vec![9u8; 4096];
        let id = crypto.chunk_id(&data);
        let sealed = ChunkEncoder::new(1).encode(&crypto, &id, &data);
        assert!(matches!(
            ChunkDecoder::new().decode(&crypto, &id, sealed, 100),
            Err(ChunkDecodeError::Decompression(_) | ChunkDecodeError::Length { .. })
        ));
    }
}
