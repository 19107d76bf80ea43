//! Persistent dirty bitmaps of qcow2 images: Lifeboat's change tracking for images at rest.
//!
//! After a point is committed, the image carries a bitmap named for that point; qemu (a
//! VM, `qemu-io`, `qemu-img`) records every write into it. The next backup reads only the
//! chunks the bitmap marks dirty. A bitmap flagged `in-use` (image not closed cleanly) or
//! disabled is not trusted and the disk is read in full.

use std::path::Path;
use std::process::Command;

use crate::error::{DiskError, Result};
use crate::inspect::classify_qemu_error;

fn run(path: &Path, arguments: &[&str], name: &str) -> Result<()> {
    let output = Command::new("qemu-img")
        .arg("bitmap")
        .args(arguments)
        .args(["-f", "qcow2"])
        .arg(path)
        .arg(name)
        .output()
        .map_err(|source| DiskError::ToolMissing {
            tool: "qemu-img",
            path: path.to_path_buf(),
            source,
        })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(classify_qemu_error(
            path,
            &String::from_utf8_lossy(&output.stderr),
        ))
    }
}

/// Adds an enabled persistent bitmap `name` with `granularity_bytes` per bit.
pub fn add(path: &Path, name: &str, granularity_bytes: u32) -> Result<()> {
    let granularity = granularity_bytes.to_string();
    run(path, &["--add", "-g", &granularity], name)
}

/// Removes bitmap `name`.
pub fn remove(path: &Path, name: &str) -> Result<()> {
    run(path, &["--remove"], name)
}
