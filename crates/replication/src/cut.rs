//! On-disk format of a shipped cut, in the recovery region's repository (`cuts/`).
//!
//! A cut is written as parts, then a commit naming them; the receiver applies a cut only
//! once its commit exists, so a cut shipped halfway is never applied. Names sort by cut:
//!
//! ```text
//! cuts/<group tag>.<ordinal, 20 digits>.<attempt>.<part, 5 digits>   parts
//! cuts/<group tag>.<ordinal, 20 digits>.commit                       the commit
//! ```
//!
//! The ordinal orders cuts: the sender's clock in microseconds when the cut was taken,
//! forced above every ordinal already in the repository (a restarted sender, a clock set
//! back).
//! The group tag is a keyed hash of the group's name (names never appear in object names).
//! `attempt` is random per shipping attempt, so a retry never collides with the parts of a
//! failed attempt; those are deleted by the receiver once a later cut is applied.
//!
//! Both are sealed like every repository object (AES-256-GCM with the repository's key in
//! encrypted repositories):
//!
//! ```text
//! part      := seal("lifeboat-cut-part", u32 LE header length ‖ header JSON ‖ data)
//! header    := {"format":1,"ordinal":N,"writes":[{"vm":0,"disk":1,"offset":…,"length":…,"zeroes":false}, …]}
//! data      := the bytes of every non-zero write, in order
//! commit    := seal("lifeboat-cut-commit", JSON of `CutCommit`)
//! ```
//!
//! Writes of a cut are applied in order; applying a cut twice gives the same replicas.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use lifeboat_directio::AlignedBuffer;
use lifeboat_repository::Crypto;

use crate::error::{ReplicationError, Result};

const PART_CONTEXT: &[u8] = b"lifeboat-cut-part";
const COMMIT_CONTEXT: &[u8] = b"lifeboat-cut-commit";
/// Version of this format.
pub const FORMAT: u32 = 1;

/// A disk of a protected VM, as the receiver must lay out its replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskLayout {
    /// File name of the disk (the replica and the points keep it).
    pub name: String,
    pub size_bytes: u64,
    /// Format of the protected image (`raw`, `qcow2`, …); replicas are raw, points record
    /// this so restores give it back.
    #[serde(default = "raw")]
    pub format: String,
}

fn raw() -> String {
    "raw".to_string()
}

/// A protected VM of the group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmLayout {
    pub name: String,
    pub disks: Vec<DiskLayout>,
}

/// The commit of a cut: it exists once every part is written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CutCommit {
    pub format: u32,
    /// The consistency group.
    pub group: String,
    /// Orders the cuts of a group (see the module documentation).
    pub ordinal: u64,
    /// Every write the sender numbered up to this is in this cut or an earlier one.
    pub sequence: u64,
    /// When the cut was taken (RFC 3339, UTC): the time of the points made from it.
    pub time: String,
    /// The group's VMs and disks, in the order writes refer to them.
    pub vms: Vec<VmLayout>,
    /// The part objects, in order.
    pub parts: Vec<String>,
    /// True when the replicas are consistent once this cut is applied (no resync data in
    /// it or still to come): only such cuts make recovery points.
    pub consistent: bool,
    /// Set when the cut was taken while the guests were frozen (application-consistent).
    #[serde(default)]
    pub application_consistent: bool,
    /// Incarnation of the sender: a new one (a restart) starts with a full resync.
    pub sender: String,
}

/// One write in a part.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartWrite {
    pub vm: usize,
    pub disk: usize,
    pub offset: u64,
    pub length: u64,
    /// Zeros, with no bytes in the part's data.
    #[serde(default)]
    pub zeroes: bool,
}

#[derive(Serialize, Deserialize)]
struct PartHeader {
    format: u32,
    ordinal: u64,
    writes: Vec<PartWrite>,
}

/// A decoded part: writes and their data, back to back.
#[derive(Debug)]
pub struct Part {
    /// The cut it belongs to.
    pub ordinal: u64,
    pub writes: Vec<PartWrite>,
    /// The opened object, as read: the writes' bytes lie in it at `data`.
    opened: Vec<u8>,
    data: std::ops::Range<usize>,
}

impl Part {
    /// The writes with their bytes (`None` for zeros).
    pub fn iter(&self) -> impl Iterator<Item = (&PartWrite, Option<&[u8]>)> {
        let mut position = 0usize;
        self.writes.iter().map(move |write| {
            if write.zeroes {
                (write, None)
            } else {
                let start = self.data.start + position;
                let bytes = &self.opened[start..start + write.length as usize];
                position += write.length as usize;
                (write, Some(bytes))
            }
        })
    }
}

/// Builds a part: writes appended one by one.
#[derive(Debug)]
pub struct PartBuilder<'a> {
    ordinal: u64,
    writes: Vec<PartWrite>,
    /// The bytes of the non-zero writes, in order: borrowed from the cut (its journaled
    /// payloads), or read for a resync. Copied once, into the sealed part.
    pieces: Vec<Cow<'a, [u8]>>,
    data_bytes: usize,
}

impl<'a> PartBuilder<'a> {
    pub fn new(ordinal: u64) -> PartBuilder<'a> {
        PartBuilder {
            ordinal,
            writes: Vec::new(),
            pieces: Vec::new(),
            data_bytes: 0,
        }
    }

    /// Appends a write; `bytes` is `None` for zeros.
    pub fn push(
        &mut self,
        vm: usize,
        disk: usize,
        offset: u64,
        length: u64,
        bytes: Option<Cow<'a, [u8]>>,
    ) {
        let zeroes = bytes.is_none();
        if let Some(bytes) = bytes {
            debug_assert_eq!(bytes.len() as u64, length);
            self.data_bytes += bytes.len();
            self.pieces.push(bytes);
        }
        self.writes.push(PartWrite {
            vm,
            disk,
            offset,
            length,
            zeroes,
        });
    }

    pub fn data_bytes(&self) -> usize {
        self.data_bytes
    }

    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    /// Seals the part into `sealed` (grown when too small: one buffer serves every part of
    /// a cut); returns the sealed part's length. The buffer is aligned, so the part is
    /// written to a local repository straight from it.
    pub fn seal_into(self, crypto: &Crypto, sealed: &mut AlignedBuffer) -> usize {
        let header = serde_json::to_vec(&PartHeader {
            format: FORMAT,
            ordinal: self.ordinal,
            writes: self.writes,
        })
        .expect("cut headers serialize");
        let header_length = (header.len() as u32).to_le_bytes();
        let mut plaintext: Vec<&[u8]> = Vec::with_capacity(2 + self.pieces.len());
        plaintext.push(&header_length);
        plaintext.push(&header);
        plaintext.extend(self.pieces.iter().map(|piece| piece.as_ref()));
        let length = 4 + header.len() + self.data_bytes + crypto.overhead_bytes();
        if sealed.len() < length {
            *sealed = AlignedBuffer::new(length);
        }
        crypto.seal_parts_into(PART_CONTEXT, &plaintext, &mut sealed.bytes_mut()[..length]);
        length
    }
}

/// Opens and checks a sealed part named `name`.
pub fn open_part(crypto: &Crypto, name: &str, mut sealed: Vec<u8>) -> Result<Part> {
    let damaged = |detail: &str| ReplicationError::DamagedCut {
        name: name.to_string(),
        detail: detail.to_string(),
    };
    // Opened where it was read: the writes' bytes are not moved again.
    let plaintext_bytes = crypto
        .open_slice(PART_CONTEXT, &mut sealed)
        .map_err(|_| damaged("authentication failed (damaged, or written with another key)"))?
        .len();
    let start = crypto.prefix_bytes();
    let plaintext = &sealed[start..start + plaintext_bytes];
    if plaintext.len() < 4 {
        return Err(damaged("too short"));
    }
    let header_bytes = u32::from_le_bytes(plaintext[..4].try_into().expect("4 bytes")) as usize;
    let header: PartHeader = plaintext
        .get(4..4 + header_bytes)
        .ok_or_else(|| damaged("header past the end"))
        .and_then(|h| serde_json::from_slice(h).map_err(|e| damaged(&e.to_string())))?;
    if header.format != FORMAT {
        return Err(damaged(&format!("unknown format {}", header.format)));
    }
    let data = start + 4 + header_bytes..start + plaintext_bytes;
    let expected: u64 = header
        .writes
        .iter()
        .filter(|w| !w.zeroes)
        .map(|w| w.length)
        .sum();
    if expected != data.len() as u64 {
        return Err(damaged("data length differs from the writes it holds"));
    }
    Ok(Part {
        ordinal: header.ordinal,
        writes: header.writes,
        opened: sealed,
        data,
    })
}

/// Seals a commit.
pub fn seal_commit(crypto: &Crypto, commit: &CutCommit) -> Vec<u8> {
    crypto.seal(
        COMMIT_CONTEXT,
        &serde_json::to_vec(commit).expect("cut commits serialize"),
    )
}

/// Opens and checks a sealed commit named `name`.
pub fn open_commit(crypto: &Crypto, name: &str, sealed: &[u8]) -> Result<CutCommit> {
    let damaged = |detail: String| ReplicationError::DamagedCut {
        name: name.to_string(),
        detail,
    };
    let plaintext = crypto.open(COMMIT_CONTEXT, sealed).map_err(|_| {
        damaged("authentication failed (damaged, or written with another key)".to_string())
    })?;
    let commit: CutCommit =
        serde_json::from_slice(&plaintext).map_err(|e| damaged(e.to_string()))?;
    if commit.format != FORMAT {
        return Err(damaged(format!("unknown format {}", commit.format)));
    }
    Ok(commit)
}

/// The tag of a group in object names.
pub fn group_tag(crypto: &Crypto, group: &str) -> String {
    hex::encode(&crypto.name_hash("lifeboat-replication-group", group.as_bytes())[..8])
}

/// Name of a cut's commit.
pub fn commit_name(tag: &str, ordinal: u64) -> String {
    format!("{tag}.{ordinal:020}.commit")
}

/// Name of a part.
pub fn part_name(tag: &str, ordinal: u64, attempt: &str, part: usize) -> String {
    format!("{tag}.{ordinal:020}.{attempt}.{part:05}")
}

/// The ordinal of a cut object of group `tag`, and whether it is a commit.
pub fn parse_name(tag: &str, name: &str) -> Option<(u64, bool)> {
    let rest = name.strip_prefix(tag)?.strip_prefix('.')?;
    let (ordinal, rest) = rest.split_once('.')?;
    let ordinal = ordinal.parse().ok()?;
    Some((ordinal, rest == "commit"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lifeboat_repository::crypto::MasterKeys;

    #[test]
    fn parts_round_trip_and_refuse_damage() {
        let crypto = Crypto::encrypted(&MasterKeys::generate());
        let mut builder = PartBuilder::new(7);
        builder.push(0, 1, 4096, 3, Some(Cow::Borrowed(b"abc")));
        builder.push(1, 0, 0, 65536, None);
        builder.push(0, 0, 512, 2, Some(Cow::Owned(b"de".to_vec())));
        // An empty buffer grows to the part; a larger one holds it at its start.
        let mut buffer = AlignedBuffer::default();
        let length = builder.seal_into(&crypto, &mut buffer);
        assert_eq!(buffer.len(), length);
        let mut smaller = PartBuilder::new(8);
        smaller.push(0, 0, 0, 1, Some(Cow::Borrowed(b"x")));
        let smaller_length = smaller.seal_into(&crypto, &mut buffer);
        assert!(smaller_length < length);
        let smaller = open_part(&crypto, "q", buffer.bytes()[..smaller_length].to_vec()).unwrap();
        assert_eq!(smaller.ordinal, 8);
        let mut builder = PartBuilder::new(7);
        builder.push(0, 1, 4096, 3, Some(Cow::Borrowed(b"abc")));
        builder.push(1, 0, 0, 65536, None);
        builder.push(0, 0, 512, 2, Some(Cow::Owned(b"de".to_vec())));
        let length = builder.seal_into(&crypto, &mut buffer);
        let sealed = buffer.bytes()[..length].to_vec();
        let part = open_part(&crypto, "p", sealed.clone()).unwrap();
        assert_eq!(part.ordinal, 7);
        let writes: Vec<(u64, Option<Vec<u8>>)> = part
            .iter()
            .map(|(w, bytes)| (w.offset, bytes.map(<[u8]>::to_vec)))
            .collect();
        assert_eq!(
            writes,
            vec![
                (4096, Some(b"abc".to_vec())),
                (0, None),
                (512, Some(b"de".to_vec()))
            ]
        );
        let mut flipped = sealed;
        flipped[20] ^= 1;
        let error = open_part(&crypto, "p", flipped).unwrap_err();
        assert!(error.to_string().contains("cut object p"), "{error}");
    }

    #[test]
    fn names_sort_by_ordinal_and_parse_back() {
        let tag = "00112233aabbccdd";
        let commit = commit_name(tag, 42);
        let part = part_name(tag, 42, "a1b2", 3);
        assert_eq!(parse_name(tag, &commit), Some((42, true)));
        assert_eq!(parse_name(tag, &part), Some((42, false)));
        assert_eq!(parse_name("ffff", &commit), None);
        assert!(commit_name(tag, 9) < commit_name(tag, 10));
    }
}
