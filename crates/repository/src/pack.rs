//! Packs (`packs/<xx>/<pack id>`): many chunk blobs in one object.
//!
//! ```text
//! pack    := blob* ‖ header ‖ header_length (u32 LE) ‖ magic "LBPACK01"
//! header  := seal("lifeboat-pack-header", entry_count (u32 LE) ‖ entry*)
//! entry   := chunk id (32) ‖ blob offset (u32 LE) ‖ blob length (u32 LE)
//!            ‖ group length (u32 LE) ‖ offset in group (u32 LE) ‖ chunk length (u32 LE)
//! pack id := hex(BLAKE3(whole pack))
//! ```
//!
//! There is one entry per chunk; the chunks of one blob (see `blob.rs`) share its offset
//! and length.
//!
//! Packs keep object stores from drowning in small objects and make a directory listing of
//! a large repository cheap. The header at the end makes every pack self-describing, so
//! the pack indexes can be rebuilt from the packs alone. The pack id is the hash of its
//! bytes, so a copy can be checked without any key.

use crate::blob::MAXIMUM_GROUP_BYTES;
use crate::crypto::{ChunkId, Crypto};

/// Magic at the very end of every pack.
pub const PACK_MAGIC: &[u8; 8] = b"LBPACK01";
/// Bytes of one header entry.
pub const ENTRY_BYTES: usize = 32 + 5 * 4;
/// Bytes of the trailer (header length and magic).
pub const TRAILER_BYTES: usize = 4 + 8;
/// Packs are closed once they reach this size. Tens of MiB suit object storage; a local
/// directory does not care.
pub const DEFAULT_PACK_TARGET_BYTES: usize = 16 * 1024 * 1024;
/// No pack may be larger: offsets are 32-bit, and readers allocate at most this much.
pub const MAXIMUM_PACK_BYTES: usize = 1 << 30;
/// Associated data of pack headers.
const HEADER_CONTEXT: &[u8] = b"lifeboat-pack-header";

const _: () = assert!(ENTRY_BYTES == 52);

/// Where one chunk sits: in which blob of the pack, and where inside that blob's group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackEntry {
    /// The chunk.
    pub chunk: ChunkId,
    /// Byte offset of the sealed blob from the start of the pack.
    pub blob_offset: u32,
    /// Length of the sealed blob.
    pub blob_bytes: u32,
    /// Length of the blob's opened group.
    pub group_bytes: u32,
    /// Where the chunk starts inside the group.
    pub offset_in_group: u32,
    /// Length of the chunk.
    pub raw_bytes: u32,
}

impl PackEntry {
    /// Appends the 52-byte encoding.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.chunk.0);
        for word in [
            self.blob_offset,
            self.blob_bytes,
            self.group_bytes,
            self.offset_in_group,
            self.raw_bytes,
        ] {
            out.extend_from_slice(&word.to_le_bytes());
        }
    }

    /// Reads one entry from exactly 52 bytes.
    pub fn decode(bytes: &[u8]) -> PackEntry {
        assert_eq!(bytes.len(), ENTRY_BYTES);
        let mut chunk = [0u8; 32];
        chunk.copy_from_slice(&bytes[..32]);
        let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        PackEntry {
            chunk: ChunkId(chunk),
            blob_offset: word(32),
            blob_bytes: word(36),
            group_bytes: word(40),
            offset_in_group: word(44),
            raw_bytes: word(48),
        }
    }

    /// True when the entry is self-consistent: the chunk lies inside its group and the
    /// group is no larger than any blob may hold.
    pub fn is_well_formed(&self) -> bool {
        self.group_bytes as usize <= MAXIMUM_GROUP_BYTES
            && self.raw_bytes > 0
            && self.offset_in_group as u64 + self.raw_bytes as u64 <= self.group_bytes as u64
    }
}

/// A chunk placed in a group: its id, where it starts in the group, its length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupMember {
    pub chunk: ChunkId,
    pub offset_in_group: u32,
    pub raw_bytes: u32,
}

/// A pack being filled with blobs.
#[derive(Debug, Default)]
pub struct PackBuilder {
    bytes: Vec<u8>,
    entries: Vec<PackEntry>,
}

/// A finished pack: its id, its bytes and what it holds.
#[derive(Debug)]
pub struct FinishedPack {
    /// Hex BLAKE3 of `bytes`.
    pub id: String,
    /// The complete pack.
    pub bytes: Vec<u8>,
    /// The blobs inside, in order.
    pub entries: Vec<PackEntry>,
}

impl PackBuilder {
    /// An empty pack with room for `capacity_bytes`.
    pub fn with_capacity(capacity_bytes: usize) -> PackBuilder {
        PackBuilder {
            bytes: Vec::with_capacity(capacity_bytes),
            entries: Vec::new(),
        }
    }

    /// An empty pack filling a buffer already allocated (by an earlier pack), so a
    /// long backup does not fault in fresh memory for every pack.
    pub fn reusing(mut buffer: Vec<u8>) -> PackBuilder {
        buffer.clear();
        PackBuilder {
            bytes: buffer,
            entries: Vec::new(),
        }
    }

    /// Bytes of blobs so far.
    pub fn len_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// True when no blob was added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Appends a sealed blob holding a group of `group_bytes` made of `members`.
    pub fn add(&mut self, sealed: &[u8], group_bytes: u32, members: &[GroupMember]) {
        let blob_offset = u32::try_from(self.bytes.len()).expect("packs stay below 4 GiB");
        let blob_bytes = u32::try_from(sealed.len()).expect("blobs stay below 4 GiB");
        self.bytes.extend_from_slice(sealed);
        for member in members {
            self.entries.push(PackEntry {
                chunk: member.chunk,
                blob_offset,
                blob_bytes,
                group_bytes,
                offset_in_group: member.offset_in_group,
                raw_bytes: member.raw_bytes,
            });
        }
    }

    /// Closes the pack: appends the sealed header and the trailer and names it.
    pub fn finish(mut self, crypto: &Crypto) -> FinishedPack {
        let mut header = Vec::with_capacity(4 + self.entries.len() * ENTRY_BYTES);
        header.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for entry in &self.entries {
            entry.encode_into(&mut header);
        }
        let sealed = crypto.seal(HEADER_CONTEXT, &header);
        self.bytes.extend_from_slice(&sealed);
        self.bytes
            .extend_from_slice(&(sealed.len() as u32).to_le_bytes());
        self.bytes.extend_from_slice(PACK_MAGIC);
        let id = blake3::hash(&self.bytes).to_hex().to_string();
        FinishedPack {
            id,
            bytes: self.bytes,
            entries: self.entries,
        }
    }
}

/// Reads the header of a complete pack; `Err` names what is wrong.
pub fn read_header(crypto: &Crypto, pack: &[u8]) -> Result<Vec<PackEntry>, String> {
    if pack.len() < TRAILER_BYTES {
        return Err(format!("{} bytes is too short for a pack", pack.len()));
    }
    let trailer = &pack[pack.len() - TRAILER_BYTES..];
    if &trailer[4..] != PACK_MAGIC {
        return Err("the pack trailer magic is wrong".to_string());
    }
    let header_bytes = u32::from_le_bytes(trailer[..4].try_into().expect("4 bytes")) as usize;
    let blobs_end = pack
        .len()
        .checked_sub(TRAILER_BYTES + header_bytes)
        .ok_or("the pack header length points before the start of the pack")?;
    let header = crypto
        .open(HEADER_CONTEXT, &pack[blobs_end..pack.len() - TRAILER_BYTES])
        .map_err(|e| format!("pack header: {e}"))?;
    let entries = decode_entries(&header)?;
    for entry in &entries {
        let end = entry.blob_offset as usize + entry.blob_bytes as usize;
        if end > blobs_end {
            return Err(format!(
                "entry for chunk {} ends at {end}, past the blobs",
                entry.chunk
            ));
        }
    }
    Ok(entries)
}

/// Decodes `count ‖ entry*`.
pub fn decode_entries(bytes: &[u8]) -> Result<Vec<PackEntry>, String> {
    if bytes.len() < 4 {
        return Err("entry list is truncated".to_string());
    }
    let count = u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes")) as usize;
    let body = &bytes[4..];
    if body.len() != count * ENTRY_BYTES {
        return Err(format!(
            "entry list says {count} entries but holds {} bytes",
            body.len()
        ));
    }
    Ok(body
        .chunks_exact(ENTRY_BYTES)
        .map(PackEntry::decode)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob::{BlobDecoder, BlobEncoder, chunk_from_group};
    use crate::crypto::MasterKeys;

    #[test]
    fn a_pack_describes_its_groups_and_chunks() {
        let crypto = Crypto::encrypted(&MasterKeys::generate());
        let mut encoder = BlobEncoder::new(1);
        let mut builder = PackBuilder::with_capacity(1024);
        let chunks: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i + 1; 1000 + i as usize]).collect();
        // Two groups: chunks 0..3 together, chunks 3..5 together.
        for range in [0..3, 3..5] {
            let group: Vec<u8> = chunks[range.clone()].concat();
            let mut members = Vec::new();
            let mut at = 0u32;
            for data in &chunks[range] {
                members.push(GroupMember {
                    chunk: crypto.chunk_id(data),
                    offset_in_group: at,
                    raw_bytes: data.len() as u32,
                });
                at += data.len() as u32;
            }
            let sealed = encoder.encode(&crypto, &group);
            builder.add(&sealed, group.len() as u32, &members);
        }
        let pack = builder.finish(&crypto);
        assert_eq!(pack.id, blake3::hash(&pack.bytes).to_hex().to_string());
        let entries = read_header(&crypto, &pack.bytes).unwrap();
        assert_eq!(entries, pack.entries);
        assert_eq!(entries.len(), 5);
        assert_eq!(entries[0].blob_offset, entries[2].blob_offset);
        assert_ne!(entries[2].blob_offset, entries[3].blob_offset);
        let mut decoder = BlobDecoder::new();
        for (entry, data) in entries.iter().zip(&chunks) {
            let start = entry.blob_offset as usize;
            let blob = pack.bytes[start..start + entry.blob_bytes as usize].to_vec();
            let group = decoder.decode(&crypto, blob, entry.group_bytes).unwrap();
            let chunk = chunk_from_group(
                &crypto,
                &entry.chunk,
                &group,
                entry.offset_in_group,
                entry.raw_bytes,
            )
            .unwrap();
            assert_eq!(chunk, &data[..]);
        }
    }

    #[test]
    fn damaged_trailers_and_headers_are_reported() {
        let crypto = Crypto::unencrypted();
        let mut builder = PackBuilder::with_capacity(16);
        let member = GroupMember {
            chunk: crypto.chunk_id(b"x"),
            offset_in_group: 0,
            raw_bytes: 1,
        };
        builder.add(b"blob", 1, &[member]);
        let pack = builder.finish(&crypto).bytes;
        let mut bad_magic = pack.clone();
        *bad_magic.last_mut().unwrap() ^= 1;
        assert!(read_header(&crypto, &bad_magic).is_err());
        let mut bad_header = pack.clone();
        bad_header[6] ^= 1;
        assert!(read_header(&crypto, &bad_header).is_err());
        assert!(read_header(&crypto, &pack[..5]).is_err());
        let mut bad_length = pack.clone();
        let at = bad_length.len() - TRAILER_BYTES;
        bad_length[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(read_header(&crypto, &bad_length).is_err());
    }
}
