//! Errors of the disk crate.
//!
//! # Error policy
//!
//! Every error names the image file. Errors that come from qemu's tools carry qemu's own
//! message, because it is usually the most precise description of what is wrong with an
//! image ("Image is not in qcow2 format", "Failed to get shared 'write' lock").

use std::path::PathBuf;

/// Result alias for the disk crate.
pub type Result<T, E = DiskError> = std::result::Result<T, E>;

/// Everything that can go wrong with a disk image.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("disk image {path} does not exist")]
    NotFound { path: PathBuf },

    #[error(
        "disk image {path} is in use by another process (a running VM?): {detail}. \
         Stop the VM first; running VMs are protected with replication, not backup"
    )]
    InUse { path: PathBuf, detail: String },

    #[error("disk image {path} cannot be read as a disk image: {detail}")]
    Unreadable { path: PathBuf, detail: String },

    #[error("{path} is not a disk to back up: {detail}")]
    NotADisk { path: PathBuf, detail: String },

    #[error(
        "{tool} is needed for disk image {path} but could not be run: {source}; install qemu-utils"
    )]
    ToolMissing {
        tool: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{operation} of disk image {path} failed at offset {offset}: {detail}")]
    Io {
        path: PathBuf,
        operation: &'static str,
        offset: u64,
        detail: String,
    },

    #[error(
        "{path}: the target disk is full while writing at offset {offset}; free space and try again"
    )]
    NoSpace { path: PathBuf, offset: u64 },

    #[error("{path} already exists; remove it or choose another target")]
    TargetExists { path: PathBuf },

    #[error("disk image {path}: {detail}")]
    Other { path: PathBuf, detail: String },
}
