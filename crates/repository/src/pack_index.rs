//! Pack index files (`pack-indexes/<id>`): which chunks are in which packs.
//!
//! ```text
//! plaintext := magic "LBPIDX01" ‖ pack_count (u32 LE) ‖ pack*
//! pack      := pack id (32 raw bytes) ‖ groups (as in the pack's header, see pack.rs)
//! object    := seal("lifeboat-pack-index", plaintext)
//! ```
//!
//! A pack index is written only after every pack it names is durable, and a disk index
//! only after the pack indexes covering its chunks. Loading all pack indexes gives the
//! repository's chunk map (see `index.rs`).

use crate::crypto::Crypto;
use crate::pack::{PackEntry, decode_entries, encode_entries};

const MAGIC: &[u8; 8] = b"LBPIDX01";
const CONTEXT: &[u8] = b"lifeboat-pack-index";
/// Upper bound on the packs one index file names, so a damaged count cannot make a reader
/// allocate without limit.
const MAXIMUM_PACKS: usize = 1 << 20;

/// The blobs of one pack, as recorded in a pack index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackRecord {
    /// The pack's id (hex of its BLAKE3 hash).
    pub pack: String,
    /// Its blobs.
    pub entries: Vec<PackEntry>,
}

/// Encodes and seals a pack index.
pub fn encode(crypto: &Crypto, packs: &[PackRecord]) -> Vec<u8> {
    // Built after room for the seal's prefix and sealed where it lies.
    let mut plaintext = vec![0u8; crypto.prefix_bytes()];
    plaintext.extend_from_slice(MAGIC);
    plaintext.extend_from_slice(&(packs.len() as u32).to_le_bytes());
    for record in packs {
        let mut id = [0u8; 32];
        hex::decode_to_slice(&record.pack, &mut id).expect("pack ids are 64 hex digits");
        plaintext.extend_from_slice(&id);
        encode_entries(&record.entries, &mut plaintext);
    }
    crypto.seal_in_place(CONTEXT, &mut plaintext);
    plaintext
}

/// Opens and decodes a pack index; `Err` says what is wrong with it.
pub fn decode(crypto: &Crypto, sealed: Vec<u8>) -> Result<Vec<PackRecord>, String> {
    let plaintext = crypto
        .open_in_place(CONTEXT, sealed)
        .map_err(|e| e.to_string())?;
    if plaintext.len() < 12 || &plaintext[..8] != MAGIC {
        return Err("not a pack index (bad magic)".to_string());
    }
    let count = u32::from_le_bytes(plaintext[8..12].try_into().expect("4 bytes")) as usize;
    if count > MAXIMUM_PACKS {
        return Err(format!("names {count} packs, more than allowed"));
    }
    let mut packs = Vec::with_capacity(count);
    let mut at = 12;
    for _ in 0..count {
        if plaintext.len() < at + 32 {
            return Err("truncated pack record".to_string());
        }
        let pack = hex::encode(&plaintext[at..at + 32]);
        let (entries, used) = decode_entries(&plaintext[at + 32..])
            .map_err(|reason| format!("pack {pack}: {reason}"))?;
        packs.push(PackRecord { pack, entries });
        at += 32 + used;
    }
    if at != plaintext.len() {
        return Err("trailing bytes after the last pack record".to_string());
    }
    Ok(packs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{ChunkId, MasterKeys};

    #[test]
    fn pack_indexes_round_trip_and_refuse_damage() {
        let crypto = Crypto::encrypted(&MasterKeys::generate());
        let records = vec![
            PackRecord {
                pack: "ab".repeat(32),
                entries: vec![
                    PackEntry {
                        chunk: ChunkId([3; 32]),
                        blob_offset: 0,
                        blob_bytes: 100,
                        group_bytes: 131072,
                        offset_in_group: 0,
                        raw_bytes: 65536,
                    },
                    PackEntry {
                        chunk: ChunkId([4; 32]),
                        blob_offset: 0,
                        blob_bytes: 100,
                        group_bytes: 131072,
                        offset_in_group: 65536,
                        raw_bytes: 65536,
                    },
                    PackEntry {
                        chunk: ChunkId([5; 32]),
                        blob_offset: 100,
                        blob_bytes: 40,
                        group_bytes: 512,
                        offset_in_group: 0,
                        raw_bytes: 512,
                    },
                ],
            },
            PackRecord {
                pack: "cd".repeat(32),
                entries: Vec::new(),
            },
        ];
        let sealed = encode(&crypto, &records);
        assert_eq!(decode(&crypto, sealed.clone()).unwrap(), records);
        let mut damaged = sealed;
        damaged[20] ^= 4;
        assert!(decode(&crypto, damaged).is_err());
    }
}
