//! A qcow2 copy-on-write overlay on a disk served over NBD: the VM boots from the overlay
//! at once, reads what it has not written from the export, and [`crate::Vm::hydrate`]
//! copies the rest in the background, after which the overlay stands alone.

use std::path::Path;
use std::process::Command;

use serde_json::json;

use crate::{HypervisorError, Result};

/// Creates `overlay` (qcow2, `size_bytes`) backed by export `export` of the NBD server on
/// Unix socket `socket`. The export need not answer yet.
pub fn create_overlay(overlay: &Path, socket: &Path, export: &str, size_bytes: u64) -> Result<()> {
    let backing = json!({
        "driver": "raw",
        "file": {
            "driver": "nbd",
            "server": { "type": "unix", "path": socket },
            "export": export,
        },
    });
    let output = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-u", "-F", "raw", "-b"])
        .arg(format!("json:{backing}"))
        .arg(overlay)
        .arg(size_bytes.to_string())
        .output()
        .map_err(|e| HypervisorError::Tool {
            tool: "qemu-img",
            detail: e.to_string(),
        })?;
    if !output.status.success() {
        return Err(HypervisorError::Tool {
            tool: "qemu-img",
            detail: format!(
                "cannot create overlay {}: {}",
                overlay.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        });
    }
    Ok(())
}
