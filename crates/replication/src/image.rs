//! The local image behind a protected disk: a raw file written directly, or any other
//! format qemu writes (qcow2, VHDX, VHD) through a private read-write `qemu-nbd`, so qemu's
//! own block layer keeps the format (compressed clusters, backing files, bitmaps) right.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use lifeboat_disk::qemu_nbd::{QemuNbd, ServeOptions};
use lifeboat_disk::{Format, Range};
use lifeboat_nbd::Client;
use lifeboat_nbd::protocol::{STATE_HOLE, STATE_ZERO};

use crate::error::{ReplicationError, Result, io as io_error};

/// What capture and resync need of an image.
pub trait DiskImage: Send + Sync + std::fmt::Debug {
    fn path(&self) -> &Path;
    fn size_bytes(&self) -> u64;
    fn read_at(&self, offset: u64, buffer: &mut [u8]) -> io::Result<()>;
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()>;
    fn write_zeroes(&self, offset: u64, length: u64) -> io::Result<()>;
    /// Makes every completed write durable.
    fn flush(&self) -> io::Result<()>;
    /// Ranges that may hold data (what an initial sync sends).
    fn data_ranges(&self) -> Result<Vec<Range>>;
}

/// Opens the image at `path` of `format` for reading and writing.
pub fn open(path: &Path, format: &Format) -> Result<Box<dyn DiskImage>> {
    Ok(match format {
        Format::Raw => Box::new(RawImage::open(path)?),
        _ => Box::new(QemuImage::open(path, format)?),
    })
}

/// A raw image file.
#[derive(Debug)]
pub struct RawImage {
    path: PathBuf,
    file: File,
    size_bytes: u64,
}

impl RawImage {
    pub fn open(path: &Path) -> Result<RawImage> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| io_error(path, "open for writing", e))?;
        let size_bytes = file
            .metadata()
            .map_err(|e| io_error(path, "read the size of", e))?
            .len();
        Ok(RawImage {
            path: path.to_path_buf(),
            file,
            size_bytes,
        })
    }
}

impl DiskImage for RawImage {
    fn path(&self) -> &Path {
        &self.path
    }

    fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    fn read_at(&self, offset: u64, buffer: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buffer, offset)
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, offset)
    }

    fn write_zeroes(&self, offset: u64, length: u64) -> io::Result<()> {
        crate::write_zeroes(&self.file, offset, length)
    }

    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn data_ranges(&self) -> Result<Vec<Range>> {
        Ok(lifeboat_disk::source::raw_data_ranges(
            &self.file,
            self.size_bytes,
        ))
    }
}

/// Connections to the private qemu-nbd: requests on different connections run at once.
const CONNECTIONS: usize = 4;

/// An image in a format qemu writes, through a private `qemu-nbd`.
#[derive(Debug)]
pub struct QemuImage {
    path: PathBuf,
    size_bytes: u64,
    clients: Vec<Mutex<Client>>,
    next: AtomicUsize,
    // Last, so the connections close before the server stops.
    _server: QemuNbd,
}

fn nbd_error(error: lifeboat_nbd::NbdError) -> io::Error {
    io::Error::other(error.to_string())
}

impl QemuImage {
    pub fn open(path: &Path, format: &Format) -> Result<QemuImage> {
        let server = QemuNbd::start(
            path,
            format,
            &ServeOptions {
                writable: true,
                bitmap: None,
            },
        )?;
        let mut clients = Vec::new();
        for _ in 0..CONNECTIONS {
            clients.push(Mutex::new(server.connect(&["base:allocation"])?));
        }
        let size_bytes = clients[0].lock().expect("not shared yet").size_bytes();
        Ok(QemuImage {
            path: path.to_path_buf(),
            size_bytes,
            clients,
            next: AtomicUsize::new(0),
            _server: server,
        })
    }

    fn client(&self) -> std::sync::MutexGuard<'_, Client> {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.clients.len();
        self.clients[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl DiskImage for QemuImage {
    fn path(&self) -> &Path {
        &self.path
    }

    fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    fn read_at(&self, offset: u64, buffer: &mut [u8]) -> io::Result<()> {
        self.client().read(offset, buffer).map_err(nbd_error)
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.client().write(offset, data, false).map_err(nbd_error)
    }

    fn write_zeroes(&self, offset: u64, length: u64) -> io::Result<()> {
        self.client()
            .write_zeroes(offset, length, false)
            .map_err(nbd_error)
    }

    fn flush(&self) -> io::Result<()> {
        // A flush on one connection covers writes completed on every connection.
        self.client().flush().map_err(nbd_error)
    }

    fn data_ranges(&self) -> Result<Vec<Range>> {
        let mut client = self.client();
        let mut ranges: Vec<Range> = Vec::new();
        let mut offset = 0;
        while offset < self.size_bytes {
            let length = (self.size_bytes - offset).min(1 << 30) as u32;
            let extents = client
                .block_status("base:allocation", offset, length)
                .map_err(|e| {
                    ReplicationError::Invalid(format!(
                        "cannot read the allocation of {}: {e}",
                        self.path.display()
                    ))
                })?;
            for extent in extents {
                let end = (extent.offset + extent.length).min(self.size_bytes);
                if extent.flags & (STATE_HOLE | STATE_ZERO) == 0 && end > extent.offset {
                    match ranges.last_mut() {
                        Some(last) if last.offset + last.length == extent.offset => {
                            last.length = end - last.offset
                        }
                        _ => ranges.push(Range {
                            offset: extent.offset,
                            length: end - extent.offset,
                        }),
                    }
                }
                offset = end;
            }
        }
        Ok(ranges)
    }
}
