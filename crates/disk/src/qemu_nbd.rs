//! A `qemu-nbd` process serving one image on a private Unix socket.
//!
//! qemu's block layer reads every format Lifeboat supports (compressed qcow2 clusters,
//! backing chains, dynamic VHD, VHDX), takes qemu's image locks, and reports allocation and
//! dirty bitmaps over NBD. The process is tied to Lifeboat's: it gets `SIGTERM` when
//! Lifeboat dies (even by `kill -9`), so no orphan keeps an image locked.
//!
//! The socket is in Linux's abstract namespace, so it has no file: Lifeboat binds and
//! listens on it and hands the listening socket to qemu-nbd as fd 3 by socket activation
//! (`LISTEN_FDS=1`, `LISTEN_PID` set by `sh` to the pid it `exec`s qemu-nbd as). Nothing is
//! left in the file system however both processes end, `kill -9` of the whole process
//! group included. Socket directories that versions which put the socket in a file left
//! behind are still swept at the first start.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lifeboat_nbd::Client;

use crate::error::{DiskError, Result};
use crate::format::Format;
use crate::inspect::classify_qemu_error;

/// How long qemu-nbd may take to open an image and answer on its socket.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// The export name used on the private socket.
const EXPORT: &str = "disk";
/// Prefix of the temporary directories earlier versions held each private socket in.
const SOCKET_DIRECTORY_PREFIX: &str = "lifeboat-nbd-";
/// An empty socket directory older than this was left by a process that died: a live one
/// holds its socket within [`START_TIMEOUT`].
const STALE_AFTER: Duration = Duration::from_secs(120);

/// How qemu-nbd should open the image.
#[derive(Clone, Debug, Default)]
pub struct ServeOptions {
    /// Open for writing (restores), else read-only.
    pub writable: bool,
    /// Expose this persistent dirty bitmap as `qemu:dirty-bitmap:<name>`.
    pub bitmap: Option<String>,
}

/// A running qemu-nbd; killed on drop.
#[derive(Debug)]
pub struct QemuNbd {
    child: Child,
    /// The abstract socket address qemu-nbd accepts on.
    address: SocketAddr,
    /// The address as messages name it.
    name: String,
    image: PathBuf,
}

impl QemuNbd {
    /// Starts qemu-nbd on `image` and waits until it accepts connections.
    pub fn start(image: &Path, format: &Format, options: &ServeOptions) -> Result<QemuNbd> {
        static SWEPT: std::sync::Once = std::sync::Once::new();
        SWEPT.call_once(|| remove_stale_socket_directories(&std::env::temp_dir()));
        let cannot_listen = |e: std::io::Error| DiskError::Other {
            path: image.to_path_buf(),
            detail: format!("cannot listen on a private socket for qemu-nbd: {e}"),
        };
        let (name, address, listener) = listen_privately().map_err(cannot_listen)?;
        let listening = listener.as_raw_fd();
        // `sh` learns its pid and keeps it across `exec`: qemu-nbd takes fd 3 as its
        // listening socket only when LISTEN_PID is its own.
        let mut command = Command::new("sh");
        command
            .args(["-c", r#"LISTEN_PID=$$ exec "$0" "$@""#, "qemu-nbd"])
            .env("LISTEN_FDS", "1")
            .env_remove("LISTEN_FDNAMES")
            .arg(format!("--format={}", format.qemu_name()))
            .arg(format!("--export-name={EXPORT}"))
            .args(["--persistent", "--shared=8", "--cache=writeback"]);
        if !options.writable {
            command.arg("--read-only");
        }
        if let Some(bitmap) = &options.bitmap {
            command.arg(format!("--bitmap={bitmap}"));
        }
        command
            .arg(image)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: prctl, getppid, dup2 and fcntl are async-signal-safe, and the errors
        // allocate nothing.
        unsafe {
            command.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                // A parent that died before that line sends no signal: stop now instead.
                if libc::getppid() != parent {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                // The listening socket becomes fd 3, open across exec (dup2 onto itself
                // leaves close-on-exec set, so that case clears it).
                if listening == 3 {
                    if libc::fcntl(3, libc::F_SETFD, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if libc::dup2(listening, 3) != 3 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let spawned = command.spawn();
        // Only qemu-nbd listens from now on: if it dies, connecting fails instead of hanging.
        drop(listener);
        let child = spawned.map_err(|source| DiskError::ToolMissing {
            tool: "qemu-nbd",
            path: image.to_path_buf(),
            source,
        })?;
        let mut server = QemuNbd {
            child,
            address,
            name: format!("@{name}"),
            image: image.to_path_buf(),
        };
        server.wait_until_ready()?;
        Ok(server)
    }

    fn wait_until_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                let mut stderr = String::new();
                if let Some(mut pipe) = self.child.stderr.take() {
                    let _ = pipe.read_to_string(&mut stderr);
                }
                return Err(start_failure(&self.image, status.code(), &stderr));
            }
            // The socket listens before qemu-nbd runs: only its greeting proves it is ready.
            if self.greets() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(DiskError::Other {
                    path: self.image.clone(),
                    detail: format!(
                        "qemu-nbd did not start within {} s",
                        START_TIMEOUT.as_secs()
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// True when qemu-nbd sends the start of its greeting within a moment.
    fn greets(&self) -> bool {
        let Ok(mut probe) = UnixStream::connect_addr(&self.address) else {
            return false;
        };
        let _ = probe.set_read_timeout(Some(Duration::from_millis(50)));
        let mut magic = [0u8; 8];
        probe.read_exact(&mut magic).is_ok() && &magic == b"NBDMAGIC"
    }

    /// Opens a connection asking for `meta_contexts`.
    pub fn connect(&self, meta_contexts: &[&str]) -> Result<Client> {
        let failed = |detail: String| DiskError::Other {
            path: self.image.clone(),
            detail,
        };
        let stream = UnixStream::connect_addr(&self.address)
            .map_err(|e| failed(format!("cannot connect to qemu-nbd at {}: {e}", self.name)))?;
        Client::over_unix(stream, &self.name, EXPORT, meta_contexts)
            .map_err(|e| failed(e.to_string()))
    }

    /// Stops qemu-nbd and waits for it, so its locks and writes are released.
    pub fn stop(mut self) -> Result<()> {
        self.terminate()
    }

    fn terminate(&mut self) -> Result<()> {
        if let Ok(Some(_)) = self.child.try_wait() {
            return Ok(());
        }
        // SIGTERM lets qemu-nbd flush and store persistent bitmaps before exiting.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => return Ok(()),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return Err(DiskError::Other {
                        path: self.image.clone(),
                        detail: "qemu-nbd did not stop in time and was killed".to_string(),
                    });
                }
            }
        }
    }
}

impl Drop for QemuNbd {
    fn drop(&mut self) {
        let _ = self.terminate();
    }
}

/// Why qemu-nbd, run through `sh`, ended before it answered: 127 is the shell's "command
/// not found"; anything else is qemu-nbd's own word on the image.
fn start_failure(image: &Path, code: Option<i32>, stderr: &str) -> DiskError {
    if code == Some(127) {
        return DiskError::ToolMissing {
            tool: "qemu-nbd",
            path: image.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, stderr.trim().to_string()),
        };
    }
    classify_qemu_error(image, stderr)
}

/// Binds and listens on a fresh name in the abstract namespace: this process's id, a
/// counter and the time (processes of other pid namespaces may share the network's).
fn listen_privately() -> std::io::Result<(String, SocketAddr, UnixListener)> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut attempt = 0;
    loop {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!(
            "{SOCKET_DIRECTORY_PREFIX}{}-{}-{nanos:08x}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let address = SocketAddr::from_abstract_name(name.as_bytes())?;
        match UnixListener::bind_addr(&address) {
            Ok(listener) => return Ok((name, address, listener)),
            Err(error) if error.kind() == std::io::ErrorKind::AddrInUse && attempt < 3 => {
                attempt += 1
            }
            Err(error) => return Err(error),
        }
    }
}

/// Removes the socket directories in `parent` left empty by processes that died (qemu-nbd
/// removes its socket when it stops; the directory is the dead process's to remove). Only
/// empty directories older than [`STALE_AFTER`] go, and removing a directory fails if it is
/// not empty, so a live one is never touched.
fn remove_stale_socket_directories(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with(SOCKET_DIRECTORY_PREFIX) {
            continue;
        }
        let stale = entry.metadata().is_ok_and(|metadata| {
            metadata.is_dir()
                && metadata
                    .modified()
                    .ok()
                    .and_then(|modified| modified.elapsed().ok())
                    .is_some_and(|age| age > STALE_AFTER)
        });
        if stale {
            let _ = std::fs::remove_dir(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn age(path: &Path, by: Duration) {
        let then = std::time::SystemTime::now() - by;
        std::fs::File::open(path)
            .unwrap()
            .set_modified(then)
            .unwrap();
    }

    #[test]
    fn a_missing_qemu_nbd_is_named_as_a_tool_to_install_not_as_a_bad_image() {
        let image = Path::new("/srv/vms/db1.qcow2");
        let missing = start_failure(image, Some(127), "sh: 1: exec: qemu-nbd: not found\n");
        assert!(matches!(
            missing,
            DiskError::ToolMissing {
                tool: "qemu-nbd",
                ..
            }
        ));
        assert!(
            missing.to_string().contains("install qemu-utils"),
            "{missing}"
        );
        let refused = start_failure(
            image,
            Some(1),
            "qemu-nbd: Failed to get \"write\" lock\nIs another process using the image [/srv/vms/db1.qcow2]?\n",
        );
        assert!(matches!(refused, DiskError::InUse { .. }), "{refused}");
    }

    #[test]
    fn only_old_empty_socket_directories_are_removed() {
        let parent = tempfile::tempdir().unwrap();
        let stale = parent.path().join("lifeboat-nbd-stale");
        let young = parent.path().join("lifeboat-nbd-young");
        let holding = parent.path().join("lifeboat-nbd-holding");
        let other = parent.path().join("someone-else");
        for directory in [&stale, &young, &holding, &other] {
            std::fs::create_dir(directory).unwrap();
        }
        std::fs::write(holding.join("nbd.sock"), b"").unwrap();
        for directory in [&stale, &holding, &other] {
            age(directory, STALE_AFTER * 2);
        }
        remove_stale_socket_directories(parent.path());
        assert!(!stale.exists(), "an old empty socket directory is removed");
        assert!(young.exists(), "a new one may be about to get its socket");
        assert!(holding.exists(), "one holding a socket is in use");
        assert!(other.exists(), "other programs' directories are not ours");
    }
}
