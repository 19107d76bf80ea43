//! Writing a restored disk: raw directly (sparse), other formats through a writable
//! `qemu-nbd` on a fresh image made by `qemu-img create`.
//!
//! A restore writes into a hidden temporary file next to the target (`.NAME.lifeboat-partial`)
//! and renames it into place only after every byte is written and flushed, so a failed or
//! interrupted restore never leaves a file under the final name that looks complete.

use std::fs::{File, OpenOptions};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use lifeboat_directio::DirectWriter;
use lifeboat_nbd::{Client, NbdError};

use crate::error::{DiskError, Result};
use crate::format::Format;
use crate::inspect::classify_qemu_error;
use crate::qemu_nbd::{QemuNbd, ServeOptions};

enum Writer {
    /// Positional writes from any number of threads at once, aligned ones bypassing the
    /// page cache; `unflushed` counts bytes written through the page cache since write-back
    /// was last started.
    Raw {
        file: DirectWriter,
        unflushed: AtomicU64,
    },
    /// One NBD connection, taken in turn.
    Nbd(Box<(Mutex<Client>, QemuNbd)>),
}

/// A disk being restored. Writes may come from several threads at once.
pub struct TargetDisk {
    final_path: PathBuf,
    temporary_path: PathBuf,
    writer: Option<Writer>,
    finished: bool,
}

impl std::fmt::Debug for TargetDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetDisk")
            .field("path", &self.final_path)
            .finish()
    }
}

fn temporary_for(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.lifeboat-partial"))
}

fn is_no_space(error: &std::io::Error) -> bool {
    error.raw_os_error() == Some(libc::ENOSPC) || error.raw_os_error() == Some(libc::EDQUOT)
}

/// Writes at least this large bypass the page cache (the extents of a restore window);
/// smaller ones (short extents between holes) are gathered by the page cache.
const DIRECT_WRITE_MINIMUM_BYTES: usize = 1024 * 1024;

/// After this many bytes are written, write-back of the file is started, so the final
/// flush has little left to wait for (the kernel would otherwise hold gigabytes dirty until
/// the fsync and then write them while Lifeboat waits).
const WRITE_BACK_EVERY_BYTES: u64 = 64 * 1024 * 1024;

impl TargetDisk {
    /// Creates an all-zero disk of `size_bytes` in `format`, to appear at `path` when finished.
    pub fn create(path: &Path, format: &Format, size_bytes: u64) -> Result<TargetDisk> {
        if path.exists() {
            return Err(DiskError::TargetExists {
                path: path.to_path_buf(),
            });
        }
        let temporary_path = temporary_for(path);
        let _ = std::fs::remove_file(&temporary_path);
        let writer = match format {
            Format::Raw => {
                let file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&temporary_path)
                    .and_then(|file| file.set_len(size_bytes).map(|()| file))
                    .map_err(|e| DiskError::Other {
                        path: path.to_path_buf(),
                        detail: format!("cannot create {}: {e}", temporary_path.display()),
                    })?;
                Writer::Raw {
                    file: DirectWriter::open(&temporary_path, file, DIRECT_WRITE_MINIMUM_BYTES),
                    unflushed: AtomicU64::new(0),
                }
            }
            _ => {
                let mut command = Command::new("qemu-img");
                command.args(["create", "-q", "-f", format.qemu_name()]);
                if let Some(options) = format.create_options() {
                    command.args(["-o", options]);
                }
                let output = command
                    .arg(&temporary_path)
                    .arg(size_bytes.to_string())
                    .output()
                    .map_err(|source| DiskError::ToolMissing {
                        tool: "qemu-img",
                        path: path.to_path_buf(),
                        source,
                    })?;
                if !output.status.success() {
                    let _ = std::fs::remove_file(&temporary_path);
                    return Err(classify_qemu_error(
                        path,
                        &String::from_utf8_lossy(&output.stderr),
                    ));
                }
                let options = ServeOptions {
                    writable: true,
                    bitmap: None,
                };
                let server = QemuNbd::start(&temporary_path, format, &options)?;
                let client = server.connect(&[])?;
                if client.size_bytes() != size_bytes {
                    return Err(DiskError::Other {
                        path: path.to_path_buf(),
                        detail: format!(
                            "qemu-img made a {}-byte {} image for a {size_bytes}-byte disk",
                            client.size_bytes(),
                            format.name()
                        ),
                    });
                }
                Writer::Nbd(Box::new((Mutex::new(client), server)))
            }
        };
        Ok(TargetDisk {
            final_path: path.to_path_buf(),
            temporary_path,
            writer: Some(writer),
            finished: false,
        })
    }

    /// Where the disk will appear.
    pub fn path(&self) -> &Path {
        &self.final_path
    }

    /// Writes `data` at `offset`. Zero ranges need no write: a fresh disk reads as zeros.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        let (no_space, detail) = match self.writer.as_ref().expect("writer present until finish") {
            Writer::Raw { file, unflushed } => match file.write_at(data, offset) {
                Ok(false) => return Ok(()),
                Ok(true) => {
                    let pending = unflushed.fetch_add(data.len() as u64, Ordering::Relaxed)
                        + data.len() as u64;
                    if pending >= WRITE_BACK_EVERY_BYTES {
                        unflushed.store(0, Ordering::Relaxed);
                        // SAFETY: a valid descriptor; the call only starts write-back. A
                        // failure here is reported again by the final fsync.
                        unsafe {
                            libc::sync_file_range(
                                file.buffered().as_raw_fd(),
                                0,
                                0,
                                libc::SYNC_FILE_RANGE_WRITE,
                            );
                        }
                    }
                    return Ok(());
                }
                Err(error) => (is_no_space(&error), error.to_string()),
            },
            Writer::Nbd(nbd) => match nbd
                .0
                .lock()
                .map_err(|_| DiskError::Other {
                    path: self.final_path.clone(),
                    detail: "a writer thread failed".to_string(),
                })?
                .write(offset, data, false)
            {
                Ok(()) => return Ok(()),
                Err(error) => (
                    matches!(
                        error,
                        NbdError::Command {
                            errno: lifeboat_nbd::protocol::ENOSPC,
                            ..
                        }
                    ),
                    error.to_string(),
                ),
            },
        };
        let path = self.final_path.clone();
        Err(if no_space {
            DiskError::NoSpace { path, offset }
        } else {
            DiskError::Io {
                path,
                operation: "write",
                offset,
                detail,
            }
        })
    }

    /// Flushes everything and moves the disk to its final name.
    pub fn finish(mut self) -> Result<PathBuf> {
        let path = self.final_path.clone();
        let io = |operation: &'static str, detail: String| DiskError::Io {
            path: path.clone(),
            operation,
            offset: 0,
            detail,
        };
        match self.writer.take().expect("writer present until finish") {
            Writer::Raw { file, .. } => file.sync_all().map_err(|e| {
                if is_no_space(&e) {
                    DiskError::NoSpace {
                        path: path.clone(),
                        offset: 0,
                    }
                } else {
                    io("flush", e.to_string())
                }
            })?,
            Writer::Nbd(nbd) => {
                let (client, server) = *nbd;
                let mut client = client
                    .into_inner()
                    .map_err(|_| io("flush", "a writer thread failed".to_string()))?;
                client.flush().map_err(|e| io("flush", e.to_string()))?;
                client.disconnect();
                server.stop()?;
            }
        }
        if self.final_path.exists() {
            return Err(DiskError::TargetExists {
                path: self.final_path.clone(),
            });
        }
        std::fs::rename(&self.temporary_path, &self.final_path)
            .map_err(|e| io("rename", e.to_string()))?;
        if let Some(directory) = self.final_path.parent() {
            let directory = if directory.as_os_str().is_empty() {
                Path::new(".")
            } else {
                directory
            };
            if let Ok(handle) = File::open(directory) {
                let _ = handle.sync_all();
            }
        }
        self.finished = true;
        Ok(self.final_path.clone())
    }
}

impl Drop for TargetDisk {
    fn drop(&mut self) {
        if !self.finished {
            drop(self.writer.take());
            let _ = std::fs::remove_file(&self.temporary_path);
        }
    }
}
