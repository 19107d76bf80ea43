//! Continuous replication of protected VMs to a recovery region.
//!
//! ```text
//!  VM ──NBD──▶ capture (CapturedDisk) ──▶ image          primary region
//!                  │ every write, numbered
//!                  ▼
//!              Journal ──cut every few seconds──▶ Sender
//!                                                   │ parts, then commit
//!                                                   ▼
//!                              cuts/ in the recovery region's repository
//!                                                   │
//!                                                   ▼
//!                     Receiver ──▶ replica disks ──▶ recovery points     recovery region
//! ```
//!
//! One journal per consistency group numbers every write of every disk of every VM in it;
//! a cut is a prefix of that order, so each recovery point made from a cut holds no write
//! without every write acknowledged before it (see [`journal`]).
//!
//! # Entry points
//!
//! [`capture::CapturedDisk`] (an NBD export), [`journal::Journal`], [`ship::Sender`],
//! [`receive::Receiver`], [`status::group_status`] (the RPO of a group from the records
//! its sender and receiver leave in the recovery repository).
//!
//! # What this crate must not know
//!
//! Command lines, terminals, config files. It uses the backup engine to make points and
//! the NBD server to serve disks; it does not know their insides.

pub mod capture;
pub mod cut;
pub mod digest;
pub mod dirty;
pub mod error;
pub mod fence;
pub mod image;
pub mod journal;
pub mod quiesce;
pub mod ranges;
pub mod receive;
pub mod replica_state;
pub mod ship;
pub mod status;

pub use error::{ReplicationError, Result};

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;

/// A file or directory name for a VM: its name where that is a plain file name, else a hex
/// form.
pub fn file_name_for(vm: &str) -> String {
    let plain = !vm.is_empty()
        && !vm.starts_with('.')
        && vm
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if plain {
        vm.to_string()
    } else {
        format!("vm-{}", hex::encode(vm.as_bytes()))
    }
}

/// Zeroes `[offset, offset + length)` of `file`: a hole where the filesystem can punch one,
/// written zeros elsewhere.
pub(crate) fn write_zeroes(file: &File, offset: u64, length: u64) -> std::io::Result<()> {
    // SAFETY: a valid descriptor; punching a hole inside the file keeps its size.
    let punched = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            length as libc::off_t,
        )
    } == 0;
    if punched {
        return Ok(());
    }
    let zeros = vec![0u8; length.min(1 << 20) as usize];
    let mut done = 0;
    while done < length {
        let step = (length - done).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..step], offset + done)?;
        done += step as u64;
    }
    Ok(())
}
