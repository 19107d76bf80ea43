//! Write capture: a protected disk served read-write over NBD, backed by its local image.
//!
//! Every write is first set in the disk's persistent dirty map, then goes to the image,
//! then into the group's journal, then is acknowledged. FLUSH and FUA reach the image with `fdatasync`, so a crash of the host
//! loses nothing acknowledged as flushed. Reads come from the image.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use lifeboat_nbd::protocol::{EIO, ENOSPC};
use lifeboat_nbd::{Export, ExportError};

use crate::dirty::DirtyMap;
use crate::error::{Result, io};
use crate::journal::{DiskId, Journal, Payload};

/// A disk of a protected VM.
pub struct CapturedDisk {
    id: DiskId,
    path: PathBuf,
    file: File,
    size_bytes: u64,
    journal: Arc<Mutex<Journal>>,
    dirty: Arc<DirtyMap>,
}

impl std::fmt::Debug for CapturedDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CapturedDisk")
            .field("path", &self.path)
            .finish()
    }
}

fn export_error(path: &Path, operation: &str, offset: u64, error: std::io::Error) -> ExportError {
    let errno = match error.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => ENOSPC,
        _ => EIO,
    };
    ExportError {
        errno,
        message: format!("{operation} {} at {offset}: {error}", path.display()),
    }
}

impl CapturedDisk {
    /// Opens the raw image at `path` for capture as disk `id` of the group, tracking its
    /// writes in `dirty`.
    pub fn open(
        path: &Path,
        id: DiskId,
        journal: Arc<Mutex<Journal>>,
        dirty: Arc<DirtyMap>,
    ) -> Result<CapturedDisk> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| io(path, "open for writing", e))?;
        let size_bytes = file
            .metadata()
            .map_err(|e| io(path, "read the size of", e))?
            .len();
        Ok(CapturedDisk {
            id,
            path: path.to_path_buf(),
            file,
            size_bytes,
            journal,
            dirty,
        })
    }

    /// Runs `write` (to the image) between setting its blocks in the dirty map and
    /// journaling it; the blocks stay in flight until it is journaled or failed.
    fn tracked(
        &self,
        offset: u64,
        length: u64,
        write: impl FnOnce() -> Result<Payload, ExportError>,
    ) -> Result<(), ExportError> {
        self.dirty.begin(offset, length).map_err(|e| ExportError {
            errno: EIO,
            message: format!("write to {} at {offset}: {e}", self.path.display()),
        })?;
        let result = write().map(|payload| self.record(offset, length, payload));
        self.dirty.end(offset, length);
        result
    }

    /// Ranges of the image that may hold data (what an initial sync sends).
    pub fn data_ranges(&self) -> Vec<lifeboat_disk::Range> {
        lifeboat_disk::source::raw_data_ranges(&self.file, self.size_bytes)
    }

    fn sync(&self, offset: u64) -> Result<(), ExportError> {
        self.file
            .sync_data()
            .map_err(|e| export_error(&self.path, "flush", offset, e))
    }

    fn record(&self, offset: u64, length: u64, payload: Payload) {
        self.journal
            .lock()
            .expect("the journal lock is never poisoned: recording cannot panic")
            .record(self.id, offset, length, payload);
    }
}

impl Export for CapturedDisk {
    fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    fn read(&self, offset: u64, buffer: &mut [u8]) -> Result<(), ExportError> {
        self.file
            .read_exact_at(buffer, offset)
            .map_err(|e| export_error(&self.path, "read", offset, e))
    }

    fn allocation(&self, _offset: u64, length: u64) -> Result<Vec<(u64, u32)>, ExportError> {
        Ok(vec![(length, 0)])
    }

    fn is_writable(&self) -> bool {
        true
    }

    fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), ExportError> {
        self.tracked(offset, data.len() as u64, || {
            self.file
                .write_all_at(data, offset)
                .map_err(|e| export_error(&self.path, "write", offset, e))?;
            if fua {
                self.sync(offset)?;
            }
            Ok(Payload::Data(data.into()))
        })
    }

    fn write_zeroes(&self, offset: u64, length: u64, fua: bool) -> Result<(), ExportError> {
        self.tracked(offset, length, || {
            crate::write_zeroes(&self.file, offset, length)
                .map_err(|e| export_error(&self.path, "write zeros to", offset, e))?;
            if fua {
                self.sync(offset)?;
            }
            Ok(Payload::Zeroes)
        })
    }

    fn flush(&self) -> Result<(), ExportError> {
        self.sync(0)
    }
}
