//! Lifeboat's hypervisor driver: QEMU/KVM through `qemu-system-x86_64` and its QMP socket.
//!
//! * `accel.rs` — [`probe`]: KVM when `/dev/kvm` really works (checked by starting a
//!   paused machine under a timeout, since the device can exist and hang), TCG otherwise.
//! * `qmp.rs` — [`Qmp`]: the QEMU Machine Protocol over a Unix socket: commands, replies
//!   and the events that arrive between them.
//! * `qemu.rs` — [`Vm`]: a VM started from a [`VmSpec`], inspected, stopped (ACPI power
//!   button, then quit), killed; background hydration of an instant disk (`block-stream`).
//! * `overlay.rs` — [`create_overlay`]: a qcow2 copy-on-write overlay whose backing is a
//!   disk served over NBD (a recovery point's export), so a VM boots from a point at once
//!   and its disk is copied in the background.
//!
//! # What this crate must not know
//!
//! Repositories, points, regions or plans: it is given disks, NBD sockets and sizes.

pub mod accel;
pub mod overlay;
pub mod qemu;
pub mod qmp;

pub use accel::{Accelerator, probe};
pub use overlay::create_overlay;
pub use qemu::{
    DirectBoot, DiskSpec, Vm, VmSpec, hydrate_detached, is_running_detached, stop_detached,
};
pub use qmp::Qmp;

use std::path::PathBuf;

/// What went wrong with a VM, naming it.
#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    #[error(
        "qemu-system-x86_64 cannot be run ({0}); install Debian's qemu-system-x86 (scripts/test.sh does)"
    )]
    Missing(std::io::Error),
    #[error("VM '{vm}': {detail}")]
    Vm { vm: String, detail: String },
    #[error("QMP of {socket}: {detail}")]
    Qmp { socket: PathBuf, detail: String },
    #[error("{tool} failed: {detail}")]
    Tool { tool: &'static str, detail: String },
}

pub type Result<T, E = HypervisorError> = std::result::Result<T, E>;
