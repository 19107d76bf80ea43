//! Writing a restored disk: raw directly (sparse), other formats through a writable
//! `qemu-nbd` on a fresh image made by `qemu-img create`.
//!
//! A restore writes into a hidden temporary file next to the target (`.NAME.lifeboat-partial`)
//! and renames it into place only after every byte is written and flushed, so a failed or
//! interrupted restore never leaves a file under the final name that looks complete.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use lifeboat_nbd::Client;

use crate::error::{DiskError, Result};
use crate::format::Format;
use crate::inspect::classify_qemu_error;
use crate::qemu_nbd::{QemuNbd, ServeOptions};

enum Writer {
    Raw(File),
    Nbd(Box<(Client, QemuNbd)>),
}

/// A disk being restored.
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
                Writer::Raw(file)
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
                Writer::Nbd(Box::new((client, server)))
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
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        let path = &self.final_path;
        match self.writer.as_mut().expect("writer present until finish") {
            Writer::Raw(file) => file.write_all_at(data, offset).map_err(|e| {
                if is_no_space(&e) {
                    DiskError::NoSpace {
                        path: path.clone(),
                        offset,
                    }
                } else {
                    DiskError::Io {
                        path: path.clone(),
                        operation: "write",
                        offset,
                        detail: e.to_string(),
                    }
                }
            }),
            Writer::Nbd(nbd) => nbd.0.write(offset, data, false).map_err(|e| {
                let detail = e.to_string();
                if detail.contains("errno 28") {
                    DiskError::NoSpace {
                        path: path.clone(),
                        offset,
                    }
                } else {
                    DiskError::Io {
                        path: path.clone(),
                        operation: "write",
                        offset,
                        detail,
                    }
                }
            }),
        }
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
            Writer::Raw(file) => file.sync_all().map_err(|e| {
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
                let (mut client, server) = *nbd;
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
