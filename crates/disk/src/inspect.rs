//! What an image is: `qemu-img info --output=json`, parsed.
//!
//! `qemu-img info` is run without `--force-share`, so it fails on an image a running VM
//! holds open for writing. That is the point: a backup of a disk being written is not a
//! consistent recovery point, and Lifeboat says so instead of copying torn data.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::error::{DiskError, Result};
use crate::format::Format;

/// One persistent dirty bitmap of a qcow2 image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BitmapInfo {
    /// The bitmap's name.
    pub name: String,
    /// Bytes per bit.
    pub granularity_bytes: u64,
    /// False when qemu flags the bitmap `in-use` in a closed image (the image was not
    /// closed cleanly) or when it is disabled: such a bitmap does not describe every write.
    pub is_trustworthy: bool,
}

/// What qemu reports about an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    /// Absolute path of the image.
    pub path: PathBuf,
    /// Its format.
    pub format: Format,
    /// Size of the disk as the guest sees it.
    pub virtual_size_bytes: u64,
    /// Its backing file, if any (qcow2 overlays).
    pub backing_file: Option<String>,
    /// Persistent dirty bitmaps (qcow2 only).
    pub bitmaps: Vec<BitmapInfo>,
    /// qemu flagged the image corrupt.
    pub is_marked_corrupt: bool,
}

/// Runs `qemu-img info` on `path`.
///
/// Refuses what is not a disk before qemu sees it (character devices such as `/dev/null`,
/// pipes, sockets, folders, empty files) and after (a virtual size of zero, a raw file that
/// is not a whole number of 512-byte sectors): backing such a thing up would record a
/// point that holds nothing.
pub fn inspect(path: &Path) -> Result<ImageInfo> {
    let path = absolute(path)?;
    let file_size = refuse_what_is_not_a_disk(&path)?;
    let output = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&path)
        .output()
        .map_err(|source| DiskError::ToolMissing {
            tool: "qemu-img",
            path: path.clone(),
            source,
        })?;
    if !output.status.success() {
        return Err(classify_qemu_error(
            &path,
            &String::from_utf8_lossy(&output.stderr),
        ));
    }
    let json: Value =
        serde_json::from_slice(&output.stdout).map_err(|e| DiskError::Unreadable {
            path: path.clone(),
            detail: format!("qemu-img printed unparsable information: {e}"),
        })?;
    let info = parse_info(&path, &json)?;
    let not_a_disk = |detail: String| DiskError::NotADisk {
        path: path.clone(),
        detail,
    };
    if info.virtual_size_bytes == 0 {
        return Err(not_a_disk(format!(
            "its virtual size is 0 bytes ({} image): there is nothing to back up",
            info.format.name()
        )));
    }
    if info.format == Format::Raw
        && let Some(size) = file_size
        && size % 512 != 0
    {
        return Err(not_a_disk(format!(
            "it is a {size}-byte file, not a whole number of 512-byte sectors, so not a raw \
             disk image (a truncated copy, or a file that is not a disk?)"
        )));
    }
    Ok(info)
}

/// Refuses a path that is not a regular file or block device, or an empty file; returns
/// the size of a regular file.
fn refuse_what_is_not_a_disk(path: &Path) -> Result<Option<u64>> {
    use std::os::unix::fs::FileTypeExt;
    let metadata = match std::fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(DiskError::NotFound {
                path: path.to_path_buf(),
            });
        }
        Err(e) => {
            return Err(DiskError::Unreadable {
                path: path.to_path_buf(),
                detail: e.to_string(),
            });
        }
    };
    let kind = metadata.file_type();
    let refused = |what: &str| DiskError::NotADisk {
        path: path.to_path_buf(),
        detail: format!("it is {what}; give a disk image file or a block device"),
    };
    if kind.is_block_device() {
        Ok(None)
    } else if kind.is_char_device() {
        Err(refused("a character device"))
    } else if kind.is_fifo() {
        Err(refused("a pipe"))
    } else if kind.is_socket() {
        Err(refused("a socket"))
    } else if kind.is_dir() {
        Err(refused("a folder"))
    } else if metadata.len() == 0 {
        Err(refused("an empty file (0 bytes)"))
    } else {
        Ok(Some(metadata.len()))
    }
}

/// Turns qemu's complaint about an image into the matching error.
pub fn classify_qemu_error(path: &Path, stderr: &str) -> DiskError {
    let detail = stderr
        .lines()
        .map(|line| {
            line.trim_start_matches("qemu-img: ")
                .trim_start_matches("qemu-nbd: ")
        })
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    if detail.contains("lock")
        && (detail.contains("another process") || detail.contains("Failed to get"))
    {
        DiskError::InUse {
            path: path.to_path_buf(),
            detail,
        }
    } else if detail.contains("No such file or directory") {
        DiskError::NotFound {
            path: path.to_path_buf(),
        }
    } else {
        DiskError::Unreadable {
            path: path.to_path_buf(),
            detail,
        }
    }
}

fn parse_info(path: &Path, json: &Value) -> Result<ImageInfo> {
    let unreadable = |detail: &str| DiskError::Unreadable {
        path: path.to_path_buf(),
        detail: detail.to_string(),
    };
    let format = json
        .get("format")
        .and_then(Value::as_str)
        .ok_or_else(|| unreadable("qemu-img reported no format"))?;
    let virtual_size_bytes = json
        .get("virtual-size")
        .and_then(Value::as_u64)
        .ok_or_else(|| unreadable("qemu-img reported no virtual size"))?;
    let specific = json.get("format-specific").and_then(|s| s.get("data"));
    let bitmaps = specific
        .and_then(|data| data.get("bitmaps"))
        .and_then(Value::as_array)
        .map(|bitmaps| {
            bitmaps
                .iter()
                .filter_map(|bitmap| {
                    let flags: Vec<&str> = bitmap
                        .get("flags")
                        .and_then(Value::as_array)
                        .map(|f| f.iter().filter_map(Value::as_str).collect())
                        .unwrap_or_default();
                    Some(BitmapInfo {
                        name: bitmap.get("name")?.as_str()?.to_string(),
                        granularity_bytes: bitmap.get("granularity")?.as_u64()?,
                        is_trustworthy: flags.contains(&"auto") && !flags.contains(&"in-use"),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let is_marked_corrupt = specific
        .and_then(|data| data.get("corrupt"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok(ImageInfo {
        path: path.to_path_buf(),
        format: Format::from_qemu(format),
        virtual_size_bytes,
        backing_file: json
            .get("full-backing-filename")
            .or_else(|| json.get("backing-filename"))
            .and_then(Value::as_str)
            .map(str::to_string),
        bitmaps,
        is_marked_corrupt,
    })
}

/// The absolute form of `path`, so qemu never mistakes a `name:with:colons` for a protocol.
pub fn absolute(path: &Path) -> Result<PathBuf> {
    if !path.exists() {
        return Err(DiskError::NotFound {
            path: path.to_path_buf(),
        });
    }
    std::path::absolute(path).map_err(|e| DiskError::Other {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })
}

/// Runs `qemu-img check` on formats that support it; `Err` when qemu finds corruption.
/// Leaked clusters are harmless and pass.
pub fn check(info: &ImageInfo) -> Result<()> {
    if !matches!(info.format, Format::Qcow2 | Format::Vhdx) {
        return Ok(());
    }
    let output = Command::new("qemu-img")
        .args(["check", "-q", "-f", info.format.qemu_name()])
        .arg(&info.path)
        .output()
        .map_err(|source| DiskError::ToolMissing {
            tool: "qemu-img",
            path: info.path.clone(),
            source,
        })?;
    match output.status.code() {
        Some(0) | Some(3) => Ok(()),
        _ => {
            let mut detail = String::from_utf8_lossy(&output.stderr).trim().to_string();
            if detail.is_empty() {
                detail = String::from_utf8_lossy(&output.stdout).trim().to_string();
            }
            Err(DiskError::Unreadable {
                path: info.path.clone(),
                detail: format!("qemu-img check found damage: {detail}"),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_failures_are_reported_as_in_use() {
        let error = classify_qemu_error(
            Path::new("/x.qcow2"),
            "qemu-img: Could not open '/x.qcow2': Failed to get shared \"write\" lock\nIs another process using the image [/x.qcow2]?\n",
        );
        assert!(matches!(error, DiskError::InUse { .. }), "{error}");
    }

    #[test]
    fn bitmaps_in_use_are_not_trusted() {
        let json: Value = serde_json::from_str(
            r#"{"format":"qcow2","virtual-size":1048576,"format-specific":{"type":"qcow2","data":{"corrupt":false,
            "bitmaps":[{"flags":["auto"],"name":"good","granularity":65536},
                       {"flags":["in-use","auto"],"name":"torn","granularity":65536},
                       {"flags":[],"name":"disabled","granularity":65536}]}}}"#,
        )
        .unwrap();
        let info = parse_info(Path::new("/d.qcow2"), &json).unwrap();
        let trusted: Vec<_> = info.bitmaps.iter().map(|b| b.is_trustworthy).collect();
        assert_eq!(trusted, [true, false, false]);
        assert_eq!(info.format, Format::Qcow2);
    }
}
