//! A VM run by `qemu-system-x86_64`, driven through QMP.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::qmp::Qmp;
use crate::{HypervisorError, Result};

/// A disk of a VM: an image file, or an NBD export on a Unix socket (a disk served by
/// Lifeboat's write capture).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskSpec {
    /// The image, or the NBD server's socket.
    pub path: PathBuf,
    /// qemu's format name: `raw`, `qcow2`, … (for an export, the format seen through it:
    /// `raw`).
    pub format: String,
    /// The export's name, for a disk served over NBD.
    pub export: Option<String>,
}

impl DiskSpec {
    /// An image file.
    pub fn file(path: PathBuf, format: &str) -> DiskSpec {
        DiskSpec {
            path,
            format: format.to_string(),
            export: None,
        }
    }

    /// The blockdev qemu opens.
    fn blockdev(&self, node: &str) -> Value {
        let file = match &self.export {
            Some(export) => json!({
                "driver": "nbd",
                "server": { "type": "unix", "path": self.path },
                "export": export,
            }),
            None => json!({ "driver": "file", "filename": self.path }),
        };
        json!({
            "driver": self.format,
            "node-name": node,
            "file": file,
            "cache": { "direct": false },
        })
    }
}

/// Booting a kernel directly instead of through the firmware and the first disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectBoot {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// The kernel command line.
    pub append: String,
}

/// What to start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmSpec {
    pub name: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// Boot order: the first disk boots.
    pub disks: Vec<DiskSpec>,
    /// Where the VM's QMP socket and serial console log go.
    pub runtime_directory: PathBuf,
    pub accelerator: crate::Accelerator,
    /// A kernel to boot directly, if any.
    pub direct_boot: Option<DirectBoot>,
    /// The network: a qemu `-nic` value (`user`, `bridge,br=br0`, `none`, …); the NIC is a
    /// virtio-net device.
    pub network: String,
}

/// A running VM; killed on drop if still running, unless detached.
pub struct Vm {
    name: String,
    child: Child,
    qmp: Qmp,
    serial_log: PathBuf,
    runtime_directory: PathBuf,
    detached: bool,
}

/// The QMP node name of disk `index`.
fn node(index: usize) -> String {
    format!("disk{index}")
}

impl Vm {
    /// Starts `spec` and connects to its QMP socket.
    pub fn start(spec: &VmSpec) -> Result<Vm> {
        let failed = |detail: String| HypervisorError::Vm {
            vm: spec.name.clone(),
            detail,
        };
        std::fs::create_dir_all(&spec.runtime_directory).map_err(|e| {
            failed(format!(
                "cannot create {}: {e}",
                spec.runtime_directory.display()
            ))
        })?;
        let socket = spec.runtime_directory.join("qmp.sock");
        let jobs = spec.runtime_directory.join(JOBS_SOCKET);
        let serial_log = spec.runtime_directory.join("serial.log");
        let _ = std::fs::remove_file(&socket);
        let _ = std::fs::remove_file(&jobs);
        let mut command = Command::new("qemu-system-x86_64");
        command
            .args(["-name", &spec.name])
            .args(["-accel", spec.accelerator.name()])
            .args(["-machine", "q35", "-nodefaults", "-display", "none"])
            .args(["-smp", &spec.vcpus.max(1).to_string()])
            .args(["-m", &spec.memory_mib.max(16).to_string()])
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", socket.display()))
            // A second monitor for background jobs (hydration), so that they never keep
            // the first one from a stop.
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", jobs.display()))
            .arg("-serial")
            .arg(format!("file:{}", serial_log.display()));
        let nic = spec.network.trim();
        if nic.is_empty() || nic == "none" {
            command.args(["-nic", "none"]);
        } else {
            command.args(["-nic", &format!("{nic},model=virtio-net-pci")]);
        }
        if let Some(boot) = &spec.direct_boot {
            command.arg("-kernel").arg(&boot.kernel);
            if let Some(initrd) = &boot.initrd {
                command.arg("-initrd").arg(initrd);
            }
            command.args(["-append", &boot.append]);
        }
        for (index, disk) in spec.disks.iter().enumerate() {
            command
                .arg("-blockdev")
                .arg(disk.blockdev(&node(index)).to_string());
            // A directly booted kernel takes boot index 0 itself.
            let boot = if spec.direct_boot.is_some() {
                String::new()
            } else {
                format!(",bootindex={index}")
            };
            command
                .arg("-device")
                .arg(format!("virtio-blk-pci,drive={}{boot}", node(index)));
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(HypervisorError::Missing)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let qmp = loop {
            if let Ok(Some(status)) = child.try_wait() {
                let mut stderr = String::new();
                if let Some(mut pipe) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
                }
                return Err(failed(format!(
                    "qemu-system-x86_64 exited ({status}): {}",
                    stderr.trim()
                )));
            }
            match Qmp::connect(&socket, Duration::from_millis(200)) {
                Ok(qmp) => break qmp,
                Err(error) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(failed(format!("did not start: {error}")));
                }
                Err(_) => {}
            }
        };
        let vm = Vm {
            name: spec.name.clone(),
            child,
            qmp,
            serial_log,
            runtime_directory: spec.runtime_directory.clone(),
            detached: false,
        };
        Ok(vm)
    }

    /// The VM's run state as QMP reports it (`running`, `paused`, `shutdown`, …).
    pub fn status(&mut self) -> Result<String> {
        let status = self.qmp.execute("query-status", json!({}))?;
        Ok(status["status"].as_str().unwrap_or("unknown").to_string())
    }

    /// The serial console so far.
    pub fn serial(&self) -> String {
        std::fs::read_to_string(&self.serial_log).unwrap_or_default()
    }

    /// Waits until the serial console shows `needle`; returns the console so far.
    pub fn wait_for_serial(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let console = self.serial();
            if console.contains(needle) {
                return Ok(console);
            }
            if Instant::now() >= deadline || !self.is_running() {
                return Err(HypervisorError::Vm {
                    vm: self.name.clone(),
                    detail: format!(
                        "'{needle}' did not appear on the serial console; it shows:\n{}",
                        console
                            .chars()
                            .rev()
                            .take(2000)
                            .collect::<String>()
                            .chars()
                            .rev()
                            .collect::<String>()
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs a QMP command.
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value> {
        self.qmp.execute(command, arguments)
    }

    /// Copies everything disk `index` reads from its backing (an instant disk's NBD
    /// export) into the disk itself, while the VM runs; returns once the copy is complete
    /// and the disk no longer needs its backing.
    pub fn hydrate(&mut self, index: usize, timeout: Duration) -> Result<()> {
        hydrate_with(&mut self.qmp, &self.name, index, timeout)
    }

    /// Stops the VM: the ACPI power button first, then, after `grace`, a hard quit.
    /// Returns whether the guest shut down by itself.
    pub fn stop(mut self, grace: Duration) -> Result<bool> {
        let _ = self.qmp.execute("system_powerdown", json!({}));
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return Ok(true);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.qmp.execute("quit", json!({}));
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        Ok(false)
    }

    /// Whether the qemu process still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Lets the VM run on after this process ends; returns qemu's process id (also kept in
    /// `qemu.pid` in its runtime directory). It is stopped later through its QMP socket
    /// ([`stop_detached`]).
    pub fn detach(mut self) -> u32 {
        self.detached = true;
        let pid = self.child.id();
        let _ = std::fs::write(self.runtime_directory.join(PID_FILE), pid.to_string());
        pid
    }
}

/// The second QMP monitor, for background jobs.
const JOBS_SOCKET: &str = "qmp-jobs.sock";

fn hydrate_with(qmp: &mut Qmp, vm: &str, index: usize, timeout: Duration) -> Result<()> {
    let job = format!("hydrate-{}", node(index));
    qmp.execute(
        "block-stream",
        json!({ "job-id": job, "device": node(index) }),
    )?;
    let event = qmp.wait_event(
        "BLOCK_JOB_COMPLETED",
        |event| event["data"]["device"] == job.as_str(),
        timeout,
    )?;
    if let Some(error) = event["data"]["error"].as_str() {
        return Err(HypervisorError::Vm {
            vm: vm.to_string(),
            detail: format!("hydrating disk {index} failed: {error}"),
        });
    }
    Ok(())
}

/// Hydrates disks `0..disks` of a detached VM (see [`Vm::hydrate`]) through its jobs
/// monitor in `runtime_directory`, one after another.
pub fn hydrate_detached(runtime_directory: &Path, disks: usize, timeout: Duration) -> Result<()> {
    let socket = runtime_directory.join(JOBS_SOCKET);
    let mut qmp = Qmp::connect(&socket, Duration::from_secs(5))?;
    let vm = runtime_directory.display().to_string();
    for index in 0..disks {
        hydrate_with(&mut qmp, &vm, index, timeout)?;
    }
    Ok(())
}

/// Whether a detached VM runs in `runtime_directory` (its QMP socket answers).
pub fn is_running_detached(runtime_directory: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(runtime_directory.join(JOBS_SOCKET)).is_ok()
}

/// Stops a detached VM through the QMP socket in `runtime_directory`: the power button,
/// then quit after `grace`. Returns whether the guest shut down by itself; an absent VM is
/// already stopped.
pub fn stop_detached(runtime_directory: &Path, grace: Duration) -> Result<bool> {
    let socket = runtime_directory.join("qmp.sock");
    let pid = running_qemu(runtime_directory);
    // A busy machine may be slow to accept: only a VM whose process is gone is stopped
    // already; one that never answers is killed.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut qmp = loop {
        match Qmp::connect(&socket, Duration::from_millis(500)) {
            Ok(qmp) => break qmp,
            Err(_) if pid.is_none_or(|pid| !is_qemu(pid)) => return Ok(true),
            Err(_) if Instant::now() >= deadline => {
                kill_qemu(runtime_directory, pid);
                return Ok(false);
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    let _ = qmp.execute("system_powerdown", json!({}));
    if qmp.wait_closed(grace) {
        let _ = std::fs::remove_file(runtime_directory.join(PID_FILE));
        return Ok(true);
    }
    let _ = qmp.execute("quit", json!({}));
    if !qmp.wait_closed(Duration::from_secs(10)) {
        kill_qemu(runtime_directory, pid);
    }
    let _ = std::fs::remove_file(runtime_directory.join(PID_FILE));
    Ok(false)
}

/// Where a detached VM's qemu process id is kept.
const PID_FILE: &str = "qemu.pid";

/// The process id recorded for the VM of `runtime_directory`.
fn running_qemu(runtime_directory: &Path) -> Option<u32> {
    std::fs::read_to_string(runtime_directory.join(PID_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether `pid` is still a qemu process (the id may have been reused).
fn is_qemu(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|command| command.starts_with(b"qemu-system"))
}

/// Kills a VM's qemu process hard and waits (briefly) for it to go.
fn kill_qemu(runtime_directory: &Path, pid: Option<u32>) {
    if let Some(pid) = pid.filter(|&pid| is_qemu(pid)) {
        // SAFETY: kill(2) of a process id just checked to be a qemu process.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while is_qemu(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let _ = std::fs::remove_file(runtime_directory.join(PID_FILE));
}

impl Drop for Vm {
    fn drop(&mut self) {
        if !self.detached && self.is_running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
