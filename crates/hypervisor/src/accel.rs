//! Which accelerator VMs get.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How VMs run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accelerator {
    /// Hardware virtualization.
    Kvm,
    /// QEMU's software emulation: slower, works everywhere.
    Tcg,
}

impl Accelerator {
    /// qemu's `-accel` value.
    pub fn name(self) -> &'static str {
        match self {
            Accelerator::Kvm => "kvm",
            Accelerator::Tcg => "tcg",
        }
    }
}

/// Longest a KVM probe may take before KVM counts as unusable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// KVM when `/dev/kvm` opens and a KVM machine with the CPU model VMs get (qemu's
/// default: `-cpu host` aborts under some nested hypervisors) runs its vCPU for a moment
/// and quits within [`PROBE_TIMEOUT`] without qemu finding CPU features missing that every
/// real x86-64 host has; TCG otherwise (no device, no permission, nested virtualization
/// that hangs, aborts or lacks features — seen here: qemu warns that the host lacks SSE3
/// and a Linux guest then spins forever). `LIFEBOAT_ACCEL=tcg|kvm` overrides the probe.
pub fn probe() -> Accelerator {
    match std::env::var("LIFEBOAT_ACCEL").as_deref() {
        Ok("tcg") => return Accelerator::Tcg,
        Ok("kvm") => return Accelerator::Kvm,
        _ => {}
    }
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return Accelerator::Tcg;
    }
    let child = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "kvm",
            "-machine",
            "q35",
            "-nodefaults",
            "-display",
            "none",
        ])
        .args(["-monitor", "stdio"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        return Accelerator::Tcg;
    };
    let deadline = Instant::now() + PROBE_TIMEOUT;
    // Let the vCPU run: a broken KVM fails when it first enters the guest.
    std::thread::sleep(Duration::from_millis(300));
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(b"quit\n");
    }
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => {
                let mut stderr = String::new();
                if let Some(mut pipe) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
                }
                if stderr.contains("doesn't support requested feature") {
                    tracing::warn!(
                        "KVM here lacks CPU features every x86-64 host has (nested virtualization): using TCG"
                    );
                    return Accelerator::Tcg;
                }
                return Accelerator::Kvm;
            }
            Ok(Some(_)) | Err(_) => return Accelerator::Tcg,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                tracing::warn!(
                    "/dev/kvm exists but a KVM machine did not start in time: using TCG"
                );
                return Accelerator::Tcg;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}
