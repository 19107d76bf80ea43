//! Reading a disk image for backup: its bytes, which ranges hold data, which changed.
//!
//! Raw images and block devices are read directly (with qemu-compatible locks); every other
//! format is read through a private `qemu-nbd`, so qemu's own block layer decodes it.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;

use lifeboat_directio::DirectReader;
use lifeboat_nbd::Client;
use lifeboat_nbd::protocol::{CONTEXT_BASE_ALLOCATION, STATE_DIRTY, STATE_ZERO};
use serde::{Deserialize, Serialize};

use crate::error::{DiskError, Result};
use crate::format::Format;
use crate::inspect::ImageInfo;
use crate::lock::ReadLock;
use crate::qemu_nbd::{QemuNbd, ServeOptions};

/// A byte range of a disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    /// First byte.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
}

impl Range {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.offset + self.length
    }
}

/// Identity of a raw file's content at one moment. If device, inode, size and change time
/// are all unchanged, the content is unchanged: every write updates the change time, and
/// the change time cannot be set back from user space.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileState {
    pub device: u64,
    pub inode: u64,
    pub size_bytes: u64,
    pub change_time_ns: i128,
    pub modification_time_ns: i128,
}

impl FileState {
    fn of(file: &File) -> std::io::Result<FileState> {
        let metadata = file.metadata()?;
        Ok(FileState {
            device: metadata.dev(),
            inode: metadata.ino(),
            size_bytes: metadata.size(),
            change_time_ns: metadata.ctime() as i128 * 1_000_000_000
                + metadata.ctime_nsec() as i128,
            modification_time_ns: metadata.mtime() as i128 * 1_000_000_000
                + metadata.mtime_nsec() as i128,
        })
    }
}

enum Reader {
    /// A raw file, read through the page cache for what it holds and directly otherwise.
    Raw(ReadLock, DirectReader),
    Nbd(Box<NbdReader>),
}

struct NbdReader {
    client: Client,
    /// Kept alive while the client uses it.
    _server: QemuNbd,
    bitmap_context: Option<String>,
}

/// An image opened for reading, locked against writers until dropped.
pub struct SourceDisk {
    info: ImageInfo,
    reader: Reader,
}

impl std::fmt::Debug for SourceDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceDisk")
            .field("path", &self.info.path)
            .finish()
    }
}

/// Largest block-status query; servers may answer less.
const STATUS_QUERY_BYTES: u64 = 1 << 30;

impl SourceDisk {
    /// Opens `info.path` for reading. With `bitmap`, the named dirty bitmap (qcow2) is made
    /// available to [`SourceDisk::dirty_ranges`].
    pub fn open(info: ImageInfo, bitmap: Option<&str>) -> Result<SourceDisk> {
        let reader = match info.format {
            Format::Raw => {
                let file = File::open(&info.path).map_err(|e| DiskError::Unreadable {
                    path: info.path.clone(),
                    detail: e.to_string(),
                })?;
                let direct = DirectReader::open(&info.path, &file);
                Reader::Raw(ReadLock::acquire(file, &info.path)?, direct)
            }
            _ => {
                let options = ServeOptions {
                    writable: false,
                    bitmap: bitmap.map(str::to_string),
                };
                let server = QemuNbd::start(&info.path, &info.format, &options)?;
                let bitmap_context = bitmap.map(|name| format!("qemu:dirty-bitmap:{name}"));
                let mut contexts = vec![CONTEXT_BASE_ALLOCATION];
                if let Some(context) = &bitmap_context {
                    contexts.push(context);
                }
                let client = server.connect(&contexts)?;
                if client.size_bytes() != info.virtual_size_bytes {
                    return Err(DiskError::Other {
                        path: info.path.clone(),
                        detail: format!(
                            "qemu-nbd serves {} bytes but qemu-img reported {}",
                            client.size_bytes(),
                            info.virtual_size_bytes
                        ),
                    });
                }
                Reader::Nbd(Box::new(NbdReader {
                    client,
                    _server: server,
                    bitmap_context,
                }))
            }
        };
        Ok(SourceDisk { info, reader })
    }

    /// What qemu reported about the image.
    pub fn info(&self) -> &ImageInfo {
        &self.info
    }

    /// The raw file's identity now (raw images only).
    pub fn file_state(&self) -> Option<FileState> {
        match &self.reader {
            Reader::Raw(lock, _) => FileState::of(lock.file()).ok(),
            Reader::Nbd(_) => None,
        }
    }

    /// Reads `buffer.len()` bytes at `offset`. Raw images are read without a page-cache
    /// copy when `buffer`, `offset` and the length are aligned to
    /// [`lifeboat_directio::ALIGNMENT`] and the page cache does not hold the bytes.
    pub fn read(&mut self, offset: u64, buffer: &mut [u8]) -> Result<()> {
        let path = &self.info.path;
        match &mut self.reader {
            Reader::Raw(lock, direct) => {
                direct
                    .read_exact_at(lock.file(), buffer, offset)
                    .map_err(|e| DiskError::Io {
                        path: path.clone(),
                        operation: "read",
                        offset,
                        detail: if e.kind() == std::io::ErrorKind::UnexpectedEof {
                            "the image is shorter than its size (was it truncated while reading?)"
                                .to_string()
                        } else {
                            e.to_string()
                        },
                    })
            }
            Reader::Nbd(reader) => reader
                .client
                .read(offset, buffer)
                .map_err(|e| DiskError::Io {
                    path: path.clone(),
                    operation: "read",
                    offset,
                    detail: e.to_string(),
                }),
        }
    }

    /// Ranges that may hold non-zero data, in order; everything else reads as zeros.
    pub fn data_ranges(&mut self) -> Result<Vec<Range>> {
        let size = self.info.virtual_size_bytes;
        let path = self.info.path.clone();
        match &mut self.reader {
            Reader::Raw(lock, _) => Ok(raw_data_ranges(lock.file(), size)),
            Reader::Nbd(reader) => {
                status_ranges(&mut reader.client, CONTEXT_BASE_ALLOCATION, size, |flags| {
                    flags & STATE_ZERO == 0
                })
                .map_err(|detail| DiskError::Io {
                    path,
                    operation: "map",
                    offset: 0,
                    detail,
                })
            }
        }
    }

    /// Ranges written since the bitmap given to [`SourceDisk::open`] was created; `None`
    /// when no bitmap was given.
    pub fn dirty_ranges(&mut self) -> Result<Option<Vec<Range>>> {
        let size = self.info.virtual_size_bytes;
        let path = self.info.path.clone();
        match &mut self.reader {
            Reader::Nbd(reader) if reader.bitmap_context.is_some() => {
                let context = reader.bitmap_context.clone().expect("checked above");
                status_ranges(&mut reader.client, &context, size, |flags| {
                    flags & STATE_DIRTY != 0
                })
                .map(Some)
                .map_err(|detail| DiskError::Io {
                    path,
                    operation: "read the dirty bitmap of",
                    offset: 0,
                    detail,
                })
            }
            _ => Ok(None),
        }
    }
}

/// Walks block status over the whole disk, keeping extents where `keep(flags)`.
fn status_ranges(
    client: &mut Client,
    context: &str,
    size: u64,
    keep: impl Fn(u32) -> bool,
) -> std::result::Result<Vec<Range>, String> {
    let mut ranges: Vec<Range> = Vec::new();
    let mut offset = 0;
    while offset < size {
        let length = (size - offset).min(STATUS_QUERY_BYTES) as u32;
        let extents = client
            .block_status(context, offset, length)
            .map_err(|e| e.to_string())?;
        for extent in extents {
            let end = (extent.offset + extent.length).min(size);
            if extent.offset >= end {
                continue;
            }
            if keep(extent.flags) {
                push_merged(
                    &mut ranges,
                    Range {
                        offset: extent.offset,
                        length: end - extent.offset,
                    },
                );
            }
            offset = end;
        }
    }
    Ok(ranges)
}

/// Appends `range`, merging it with the last one when they touch.
pub fn push_merged(ranges: &mut Vec<Range>, range: Range) {
    match ranges.last_mut() {
        Some(last) if last.end() == range.offset => last.length += range.length,
        _ => ranges.push(range),
    }
}

/// Data ranges of a raw file from `SEEK_DATA`/`SEEK_HOLE`; the whole file where the
/// filesystem or device does not support them.
pub fn raw_data_ranges(file: &File, size: u64) -> Vec<Range> {
    let descriptor = file.as_raw_fd();
    let mut ranges = Vec::new();
    let mut offset: i64 = 0;
    while (offset as u64) < size {
        // SAFETY: lseek on a valid descriptor has no memory effects.
        let data = unsafe { libc::lseek(descriptor, offset, libc::SEEK_DATA) };
        if data < 0 {
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() == Some(libc::ENXIO) {
                break; // No data after `offset`.
            }
            return vec![Range {
                offset: 0,
                length: size,
            }];
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(descriptor, data, libc::SEEK_HOLE) };
        let end = if hole < 0 {
            size
        } else {
            (hole as u64).min(size)
        };
        if (data as u64) >= end {
            break;
        }
        push_merged(
            &mut ranges,
            Range {
                offset: data as u64,
                length: end - data as u64,
            },
        );
        offset = end as i64;
    }
    ranges
}
