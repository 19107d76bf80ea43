//! Point manifests (`points/<point id>`): one recovery point, all disks of one VM.
//!
//! ```text
//! object := seal("lifeboat-manifest", JSON(Manifest))
//! ```
//!
//! The manifest is the commit record of a point: it is written last, after every pack,
//! pack index and disk index it depends on is durable, with a create-if-absent write. A
//! point exists exactly when its manifest does; there is no other list of points to keep in
//! step. JSON keeps the format open to new fields (unknown fields are ignored by readers of
//! the same format version).

use serde::{Deserialize, Serialize};

use crate::crypto::{Crypto, fill_random};

const CONTEXT: &[u8] = b"lifeboat-manifest";
/// Largest manifest accepted when reading (a point with thousands of disks stays far below).
pub const MAXIMUM_MANIFEST_BYTES: usize = 16 * 1024 * 1024;

/// How consistent the disks of a point are with each other and with the applications.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Consistency {
    /// All disks cut at one instant, as if the power had gone off.
    Crash,
    /// As `Crash`, with applications quiesced by a freeze hook first.
    App,
}

impl Consistency {
    /// The name used in JSON and on the terminal.
    pub fn as_str(self) -> &'static str {
        match self {
            Consistency::Crash => "crash",
            Consistency::App => "app",
        }
    }
}

/// One disk of a point.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskEntry {
    /// File name of the source image; restores write a file of this name.
    pub name: String,
    /// The source image's format (raw, qcow2, vpc, vhdx, …).
    pub format: String,
    /// Size of the disk as the guest sees it.
    pub virtual_size_bytes: u64,
    /// Id of the disk index holding its chunks.
    pub index: String,
    /// Where the disk was read from, for the operator's information.
    pub source: String,
    /// Bytes of the disk that are not holes.
    pub allocated_bytes: u64,
    /// The persistent dirty bitmap created in the source image at this point (qcow2), which
    /// records every write since; the next backup reads only what it marks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_tracking_bitmap: Option<String>,
    /// Identity of the source file's content at this point (raw files: device, inode,
    /// size, change time); equal identity on the next backup means nothing changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_fingerprint: Option<String>,
}

/// What a backup cost, kept with the point.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupStatistics {
    /// Bytes read from the source disks.
    pub bytes_read: u64,
    /// Bytes of chunks that were new to the repository (before compression).
    pub bytes_new: u64,
    /// Bytes written to the repository for those chunks (after compression and sealing).
    pub bytes_stored: u64,
    /// Wall-clock milliseconds of the backup.
    pub milliseconds: u64,
}

/// The content of a manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The point's id; equals the object name.
    pub point: String,
    /// The VM (or consistency group) the point belongs to.
    pub vm: String,
    /// The consistent cut, RFC 3339 in UTC.
    pub time: String,
    /// Crash or app consistency.
    pub consistency: Consistency,
    /// The point this one was made incrementally from, if any.
    pub parent: Option<String>,
    /// The host that made it.
    pub host: String,
    /// Which Lifeboat made it.
    pub lifeboat_version: String,
    /// All disks, in the order they were given.
    pub disks: Vec<DiskEntry>,
    /// What the backup cost.
    pub statistics: BackupStatistics,
}

/// A fresh random point id (128 bits, 32 hex digits).
pub fn new_point_id() -> String {
    let mut bytes = [0u8; 16];
    fill_random(&mut bytes);
    hex::encode(bytes)
}

impl Manifest {
    /// Seals the manifest.
    pub fn encode(&self, crypto: &Crypto) -> Vec<u8> {
        let json = serde_json::to_vec(self).expect("manifests serialize");
        crypto.seal(CONTEXT, &json)
    }

    /// Opens a manifest and checks it belongs under `name`.
    pub fn decode(crypto: &Crypto, name: &str, sealed: Vec<u8>) -> Result<Manifest, String> {
        if sealed.len() > MAXIMUM_MANIFEST_BYTES {
            return Err(format!(
                "{} bytes is larger than any manifest",
                sealed.len()
            ));
        }
        let json = crypto
            .open_in_place(CONTEXT, sealed)
            .map_err(|e| e.to_string())?;
        let manifest: Manifest =
            serde_json::from_slice(&json).map_err(|e| format!("invalid manifest: {e}"))?;
        if manifest.point != name {
            return Err(format!("it describes point {}", manifest.point));
        }
        Ok(manifest)
    }

    /// The total virtual size of all disks.
    pub fn virtual_size_bytes(&self) -> u64 {
        self.disks.iter().map(|d| d.virtual_size_bytes).sum()
    }
}
