//! Write capture: a protected disk served read-write over NBD, backed by its local image.
//!
//! Every write goes to the image first, then into the group's journal, then is
//! acknowledged. FLUSH and FUA reach the image with `fdatasync`, so a crash of the host
//! loses nothing acknowledged as flushed. Reads come from the image.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use lifeboat_nbd::protocol::{EIO, ENOSPC};
use lifeboat_nbd::{Export, ExportError};

use crate::error::{Result, io};
use crate::journal::{DiskId, Journal, Payload};

/// A disk of a protected VM.
pub struct CapturedDisk {
    id: DiskId,
    path: PathBuf,
    file: File,
    size_bytes: u64,
    journal: Arc<Mutex<Journal>>,
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
    /// Opens the raw image at `path` for capture as disk `id` of the group.
    pub fn open(path: &Path, id: DiskId, journal: Arc<Mutex<Journal>>) -> Result<CapturedDisk> {
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
        })
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
        self.file
            .write_all_at(data, offset)
            .map_err(|e| export_error(&self.path, "write", offset, e))?;
        if fua {
            self.sync(offset)?;
        }
        self.record(offset, data.len() as u64, Payload::Data(data.into()));
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, length: u64, fua: bool) -> Result<(), ExportError> {
        crate::write_zeroes(&self.file, offset, length)
            .map_err(|e| export_error(&self.path, "write zeros to", offset, e))?;
        if fua {
            self.sync(offset)?;
        }
        self.record(offset, length, Payload::Zeroes);
        Ok(())
    }

    fn flush(&self) -> Result<(), ExportError> {
        self.sync(0)
    }
}
