//! Packs (`packs/<xx>/<pack id>`): many chunk blobs in one object.
//!
//! ```text
//! pack    := blob* ‖ header ‖ header_length (u32 LE) ‖ magic "LBPACK01"
//! header  := seal("lifeboat-pack-header", groups)
//! groups  := group count (u32 LE) ‖ group*
//! group   := blob offset (u32 LE) ‖ blob length (u32 LE) ‖ group length (u32 LE)
//!            ‖ member count (u32 LE) ‖ (chunk id (32) ‖ chunk length (u32 LE))*
//! pack id := hex(BLAKE3(whole pack))
//! ```
//!
//! One record per blob, listing the chunks of its group in order: a chunk starts where the
//! previous one ends, and the lengths add up to the group length. In memory each chunk is a
//! [`PackEntry`] with the blob's place repeated.
//!
//! Packs keep object stores from drowning in small objects and make a directory listing of
//! a large repository cheap. The header at the end makes every pack self-describing, so
//! the pack indexes can be rebuilt from the packs alone. The pack id is the hash of its
//! bytes, so a copy can be checked without any key.

use crate::blob::MAXIMUM_GROUP_BYTES;
use crate::crypto::{ChunkId, Crypto};

/// Magic at the very end of every pack.
pub const PACK_MAGIC: &[u8; 8] = b"LBPACK01";
/// Bytes of one group record before its members.
pub const GROUP_RECORD_BYTES: usize = 4 * 4;
/// Bytes of one member of a group record.
pub const MEMBER_BYTES: usize = 32 + 4;
/// Bytes of the trailer (header length and magic).
pub const TRAILER_BYTES: usize = 4 + 8;
/// Packs are closed once they reach this size. Tens of MiB suit object storage; a local
/// directory does not care.
pub const DEFAULT_PACK_TARGET_BYTES: usize = 16 * 1024 * 1024;
/// No pack may be larger: offsets are 32-bit, and readers allocate at most this much.
pub const MAXIMUM_PACK_BYTES: usize = 1 << 30;
/// Associated data of pack headers.
const HEADER_CONTEXT: &[u8] = b"lifeboat-pack-header";

const _: () = assert!(GROUP_RECORD_BYTES == 16 && MEMBER_BYTES == 36);

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
        let mut expected_offset = 0;
        for member in members {
            assert_eq!(
                member.offset_in_group, expected_offset,
                "group members are contiguous"
            );
            expected_offset += member.raw_bytes;
        }
        assert_eq!(
            expected_offset, group_bytes,
            "group members fill their group"
        );
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
        let mut header = Vec::new();
        encode_entries(&self.entries, &mut header);
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
    let (entries, used) = decode_entries(&header)?;
    if used != header.len() {
        return Err("trailing bytes after the pack header's groups".to_string());
    }
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

/// Where a pack's header or trailer is damaged, and how: `None` when `read_header` reads
/// it. The offset is the first byte of the part that fails (magic, header length, sealed
/// header).
pub fn header_damage(crypto: &Crypto, pack: &[u8]) -> Option<(u64, String)> {
    let reason = read_header(crypto, pack).err()?;
    let length = pack.len();
    let offset = if length < TRAILER_BYTES {
        0
    } else if &pack[length - 8..] != PACK_MAGIC {
        length - 8
    } else {
        let header_bytes = u32::from_le_bytes(
            pack[length - TRAILER_BYTES..length - 8]
                .try_into()
                .expect("4 bytes"),
        ) as usize;
        length
            .checked_sub(TRAILER_BYTES + header_bytes)
            .unwrap_or(length - TRAILER_BYTES)
    };
    Some((offset as u64, reason))
}

/// Appends `groups` (see the module documentation) for `entries`, which hold every member
/// of each blob, in order, blob after blob.
pub fn encode_entries(entries: &[PackEntry], out: &mut Vec<u8>) {
    let groups: Vec<&[PackEntry]> = entries
        .chunk_by(|a, b| a.blob_offset == b.blob_offset)
        .collect();
    out.reserve(4 + groups.len() * GROUP_RECORD_BYTES + entries.len() * MEMBER_BYTES);
    out.extend_from_slice(&(groups.len() as u32).to_le_bytes());
    for group in groups {
        let first = group[0];
        for word in [
            first.blob_offset,
            first.blob_bytes,
            first.group_bytes,
            group.len() as u32,
        ] {
            out.extend_from_slice(&word.to_le_bytes());
        }
        for member in group {
            out.extend_from_slice(&member.chunk.0);
            out.extend_from_slice(&member.raw_bytes.to_le_bytes());
        }
    }
}

/// Decodes `groups` from the start of `bytes`; returns the entries and the bytes used.
pub fn decode_entries(bytes: &[u8]) -> Result<(Vec<PackEntry>, usize), String> {
    let word = |at: usize| -> Result<u32, String> {
        bytes
            .get(at..at + 4)
            .map(|w| u32::from_le_bytes(w.try_into().expect("4 bytes")))
            .ok_or_else(|| "group list is truncated".to_string())
    };
    let group_count = word(0)? as usize;
    let mut at = 4;
    let mut entries = Vec::new();
    for _ in 0..group_count {
        let blob_offset = word(at)?;
        let blob_bytes = word(at + 4)?;
        let group_bytes = word(at + 8)?;
        let member_count = word(at + 12)? as usize;
        at += GROUP_RECORD_BYTES;
        let members_end = member_count
            .checked_mul(MEMBER_BYTES)
            .and_then(|length| length.checked_add(at))
            .filter(|end| *end <= bytes.len())
            .ok_or_else(|| "group list is truncated".to_string())?;
        let mut offset_in_group = 0u64;
        for member in bytes[at..members_end].chunks_exact(MEMBER_BYTES) {
            let raw_bytes = u32::from_le_bytes(member[32..].try_into().expect("4 bytes"));
            let entry = PackEntry {
                chunk: ChunkId(member[..32].try_into().expect("32 bytes")),
                blob_offset,
                blob_bytes,
                group_bytes,
                offset_in_group: offset_in_group as u32,
                raw_bytes,
            };
            if !entry.is_well_formed() {
                return Err(format!("entry for chunk {} is malformed", entry.chunk));
            }
            offset_in_group += raw_bytes as u64;
            entries.push(entry);
        }
        if member_count == 0 || offset_in_group != group_bytes as u64 {
            return Err(format!(
                "the group at blob offset {blob_offset} does not add up to its {group_bytes} bytes"
            ));
        }
        at = members_end;
    }
    Ok((entries, at))
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
