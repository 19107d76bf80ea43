//! Write capture: a protected disk served read-write over NBD, backed by its local image
//! (a raw file, or any format qemu writes through a private qemu-nbd: [`crate::image`]).
//!
//! Every write is first set in the disk's persistent dirty map, then goes to the image,
//! then into the group's journal, then is acknowledged. FLUSH and FUA reach the image with `fdatasync`, so a crash of the host
//! loses nothing acknowledged as flushed. Reads come from the image.

use std::path::Path;
use std::sync::{Arc, Mutex};

use lifeboat_nbd::protocol::{EIO, ENOSPC, EPERM};
use lifeboat_nbd::{Buffer, Export, ExportError};

use crate::dirty::DirtyMap;
use crate::error::Result;
use crate::fence::Fence;
use crate::image::DiskImage;
use crate::journal::{DiskId, Journal, Payload};

/// A disk of a protected VM.
pub struct CapturedDisk {
    id: DiskId,
    image: Arc<dyn DiskImage>,
    journal: Arc<Mutex<Journal>>,
    dirty: Arc<DirtyMap>,
    /// Once fenced (the VM failed over elsewhere), writes are refused.
    fence: Arc<Fence>,
}

impl std::fmt::Debug for CapturedDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CapturedDisk")
            .field("path", &self.image.path())
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
    /// Captures writes to `image` as disk `id` of the group, tracking them in `dirty`, until
    /// `fence` says the VM runs elsewhere.
    pub fn new(
        image: Arc<dyn DiskImage>,
        id: DiskId,
        journal: Arc<Mutex<Journal>>,
        dirty: Arc<DirtyMap>,
        fence: Arc<Fence>,
    ) -> CapturedDisk {
        CapturedDisk {
            id,
            image,
            journal,
            dirty,
            fence,
        }
    }

    fn refused(&self) -> ExportError {
        ExportError {
            errno: EPERM,
            message: self.fence.refusal(),
        }
    }

    /// Runs `write` (to the image) between setting its blocks in the dirty map and
    /// journaling it; the blocks stay in flight until it is journaled or failed.
    fn tracked(
        &self,
        offset: u64,
        length: u64,
        write: impl FnOnce() -> Result<Payload, ExportError>,
    ) -> Result<(), ExportError> {
        if self.fence.is_fenced() {
            return Err(self.refused());
        }
        self.dirty.begin(offset, length).map_err(|e| ExportError {
            errno: EIO,
            message: format!("write to {} at {offset}: {e}", self.image.path().display()),
        })?;
        let result = write().and_then(|payload| self.record(offset, length, payload));
        self.dirty.end(offset, length);
        result
    }

    fn sync(&self, offset: u64) -> Result<(), ExportError> {
        self.image
            .flush()
            .map_err(|e| export_error(self.image.path(), "flush", offset, e))
    }

    /// Journals a write, unless the VM was fenced meanwhile (checked under the journal's
    /// lock, which the fence is set under: nothing is journaled after the fence).
    fn record(&self, offset: u64, length: u64, payload: Payload) -> Result<(), ExportError> {
        let mut journal = self
            .journal
            .lock()
            .expect("the journal lock is never poisoned: recording cannot panic");
        if self.fence.is_fenced() {
            return Err(self.refused());
        }
        journal.record(self.id, offset, length, payload);
        Ok(())
    }
}

impl Export for CapturedDisk {
    fn size_bytes(&self) -> u64 {
        self.image.size_bytes()
    }

    fn read(&self, offset: u64, buffer: &mut [u8]) -> Result<(), ExportError> {
        self.image
            .read_at(offset, buffer)
            .map_err(|e| export_error(self.image.path(), "read", offset, e))
    }

    fn allocation(&self, _offset: u64, length: u64) -> Result<Vec<(u64, u32)>, ExportError> {
        Ok(vec![(length, 0)])
    }

    fn is_writable(&self) -> bool {
        true
    }

    fn write(&self, offset: u64, data: Buffer, fua: bool) -> Result<(), ExportError> {
        self.tracked(offset, data.len() as u64, || {
            self.image
                .write_at(offset, &data)
                .map_err(|e| export_error(self.image.path(), "write", offset, e))?;
            if fua {
                self.sync(offset)?;
            }
            Ok(Payload::Data(data))
        })
    }

    fn write_zeroes(&self, offset: u64, length: u64, fua: bool) -> Result<(), ExportError> {
        self.tracked(offset, length, || {
            self.image
                .write_zeroes(offset, length)
                .map_err(|e| export_error(self.image.path(), "write zeros to", offset, e))?;
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
