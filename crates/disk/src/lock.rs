//! qemu-compatible image locks for raw images that Lifeboat reads directly.
//!
//! qemu locks images with open-file-description byte-range locks: a process holding
//! permission *i* read-locks byte `100 + i`; a process refusing to share permission *i*
//! read-locks byte `200 + i`, and checks first that nobody holds the matching byte. Taking
//! the same locks means a running VM cannot start writing a raw disk while Lifeboat reads
//! it, and Lifeboat refuses a disk a running VM is writing — exactly as `qemu-img` does.

use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use crate::error::{DiskError, Result};

const PERMISSION_BASE: i64 = 100;
const SHARED_BASE: i64 = 200;
const CONSISTENT_READ: i64 = 0;
const WRITE: i64 = 1;
const RESIZE: i64 = 3;

/// Holds qemu's "consistent read, no writers, no resize" locks on an open file.
#[derive(Debug)]
pub struct ReadLock {
    file: File,
}

impl ReadLock {
    /// Takes the locks on `file` (opened from `path`), or says who holds the image.
    pub fn acquire(file: File, path: &Path) -> Result<ReadLock> {
        let descriptor = file.as_raw_fd();
        // Someone writing or resizing conflicts with our refusal to share those.
        for (byte, what) in [
            (PERMISSION_BASE + WRITE, "write"),
            (PERMISSION_BASE + RESIZE, "resize"),
            (SHARED_BASE + CONSISTENT_READ, "consistent read"),
        ] {
            if is_locked(descriptor, byte) {
                return Err(DiskError::InUse {
                    path: path.to_path_buf(),
                    detail: format!("another process holds the \"{what}\" lock"),
                });
            }
        }
        for byte in [
            PERMISSION_BASE + CONSISTENT_READ,
            SHARED_BASE + WRITE,
            SHARED_BASE + RESIZE,
        ] {
            set_read_lock(descriptor, byte).map_err(|e| DiskError::InUse {
                path: path.to_path_buf(),
                detail: format!("cannot lock byte {byte}: {e}"),
            })?;
        }
        Ok(ReadLock { file })
    }

    /// The locked file, for reading.
    pub fn file(&self) -> &File {
        &self.file
    }
}

fn flock_for(kind: libc::c_short, byte: i64) -> libc::flock {
    // SAFETY: flock is plain old data; all-zero is a valid value.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = kind;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    lock.l_start = byte;
    lock.l_len = 1;
    lock
}

fn is_locked(descriptor: libc::c_int, byte: i64) -> bool {
    let mut lock = flock_for(libc::F_WRLCK as libc::c_short, byte);
    // SAFETY: valid descriptor and a properly initialised flock.
    let result = unsafe { libc::fcntl(descriptor, libc::F_OFD_GETLK, &mut lock) };
    result == 0 && lock.l_type != libc::F_UNLCK as libc::c_short
}

fn set_read_lock(descriptor: libc::c_int, byte: i64) -> std::io::Result<()> {
    let lock = flock_for(libc::F_RDLCK as libc::c_short, byte);
    // SAFETY: valid descriptor and a properly initialised flock.
    let result = unsafe { libc::fcntl(descriptor, libc::F_OFD_SETLK, &lock) };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
