//! A `qemu-nbd` process serving one image on a private Unix socket.
//!
//! qemu's block layer reads every format Lifeboat supports (compressed qcow2 clusters,
//! backing chains, dynamic VHD, VHDX), takes qemu's image locks, and reports allocation and
//! dirty bitmaps over NBD. The process is tied to Lifeboat's: it gets `SIGTERM` when
//! Lifeboat dies (even by `kill -9`), so no orphan keeps an image locked; the empty socket
//! directory such a death leaves behind is removed by the next start.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lifeboat_nbd::Client;

use crate::error::{DiskError, Result};
use crate::format::Format;
use crate::inspect::classify_qemu_error;

/// How long qemu-nbd may take to open an image and create its socket.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// The export name used on the private socket.
const EXPORT: &str = "disk";
/// Prefix of the temporary directory holding each private socket.
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
    socket: PathBuf,
    image: PathBuf,
    _directory: tempfile::TempDir,
}

impl QemuNbd {
    /// Starts qemu-nbd on `image` and waits until it accepts connections.
    pub fn start(image: &Path, format: &Format, options: &ServeOptions) -> Result<QemuNbd> {
        static SWEPT: std::sync::Once = std::sync::Once::new();
        SWEPT.call_once(|| remove_stale_socket_directories(&std::env::temp_dir()));
        let directory = tempfile::Builder::new()
            .prefix(SOCKET_DIRECTORY_PREFIX)
            .tempdir()
            .map_err(|e| DiskError::Other {
                path: image.to_path_buf(),
                detail: format!("cannot create a socket directory: {e}"),
            })?;
        let socket = directory.path().join("nbd.sock");
        let mut command = Command::new("qemu-nbd");
        command
            .arg(format!("--format={}", format.qemu_name()))
            .arg(format!("--socket={}", socket.display()))
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
        // SAFETY: prctl and getppid are async-signal-safe, and the error allocates nothing.
        unsafe {
            command.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                // A parent that died before that line sends no signal: stop now instead.
                if libc::getppid() != parent {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
        let child = command.spawn().map_err(|source| DiskError::ToolMissing {
            tool: "qemu-nbd",
            path: image.to_path_buf(),
            source,
        })?;
        let mut server = QemuNbd {
            child,
            socket,
            image: image.to_path_buf(),
            _directory: directory,
        };
        server.wait_until_ready()?;
        Ok(server)
    }

    fn wait_until_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(_status)) = self.child.try_wait() {
                let mut stderr = String::new();
                if let Some(mut pipe) = self.child.stderr.take() {
                    let _ = pipe.read_to_string(&mut stderr);
                }
                return Err(classify_qemu_error(&self.image, &stderr));
            }
            // The socket file appears at bind(), before qemu-nbd listens: only a successful
            // connection proves it is ready.
            if self.socket.exists() && std::os::unix::net::UnixStream::connect(&self.socket).is_ok()
            {
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

    /// Opens a connection asking for `meta_contexts`.
    pub fn connect(&self, meta_contexts: &[&str]) -> Result<Client> {
        Client::connect_unix(&self.socket, EXPORT, meta_contexts).map_err(|e| DiskError::Other {
            path: self.image.clone(),
            detail: e.to_string(),
        })
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
