//! Shared helpers for the integration tests: a scratch directory with a repository, the
//! `lifeboat` binary, the test images from `scripts/make-test-images.sh`, and qemu's tools.
#![allow(dead_code)]

pub mod browser;
pub mod daemon;
pub mod replication;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

/// The directory holding the test images, built once per machine by the script.
pub fn images() -> PathBuf {
    let directory = Path::new(env!("CARGO_TARGET_TMPDIR")).join("test-images");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/make-test-images.sh");
    let status = Command::new(&script)
        .arg(&directory)
        .status()
        .expect("run make-test-images.sh");
    assert!(status.success(), "make-test-images.sh failed");
    directory
}

/// A scratch directory with a repository path and a password.
pub struct Harness {
    pub directory: tempfile::TempDir,
    pub repository: PathBuf,
    pub password: String,
}

impl Harness {
    /// A harness with an encrypted repository already initialised.
    pub fn new() -> Harness {
        let harness = Harness::uninitialised();
        harness.ok(&["init"]);
        harness
    }

    /// A harness whose repository does not exist yet.
    pub fn uninitialised() -> Harness {
        let directory = tempfile::tempdir().expect("tempdir");
        let repository = directory.path().join("repository");
        Harness {
            directory,
            repository,
            password: "correct horse battery staple".to_string(),
        }
    }

    /// A path inside the scratch directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.directory.path().join(name)
    }

    /// `lifeboat` with the repository and password in the environment.
    pub fn command(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_lifeboat"));
        command
            .env("LIFEBOAT_REPO", &self.repository)
            .env("LIFEBOAT_PASSWORD", &self.password)
            .env_remove("LIFEBOAT_LOG");
        command
    }

    /// `lifeboat` with configuration file `config` (and no `LIFEBOAT_REPO`).
    pub fn configured(&self, config: &Path) -> Command {
        let mut command = self.command();
        command
            .env_remove("LIFEBOAT_REPO")
            .args(["--config", config.to_str().unwrap()]);
        command
    }

    /// The same, working on `region`.
    pub fn in_region(&self, config: &Path, region: &str) -> Command {
        let mut command = self.configured(config);
        command.args(["--region", region]);
        command
    }

    /// Runs lifeboat; returns (exit code, stdout, stderr).
    pub fn run(&self, arguments: &[&str]) -> (i32, String, String) {
        let output = self
            .command()
            .args(arguments)
            .output()
            .expect("run lifeboat");
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// Runs lifeboat and asserts success; returns stdout.
    pub fn ok(&self, arguments: &[&str]) -> String {
        let (code, stdout, stderr) = self.run(arguments);
        assert_eq!(
            code, 0,
            "lifeboat {arguments:?} failed:\n{stderr}\n{stdout}"
        );
        stdout
    }

    /// Runs lifeboat with --json and asserts success; returns the parsed document.
    pub fn json(&self, arguments: &[&str]) -> Value {
        let mut with_json = vec!["--json"];
        with_json.extend_from_slice(arguments);
        let stdout = self.ok(&with_json);
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
    }

    /// Runs lifeboat and asserts failure; returns stderr.
    pub fn fails(&self, arguments: &[&str]) -> String {
        let (code, stdout, stderr) = self.run(arguments);
        assert_ne!(code, 0, "lifeboat {arguments:?} should fail:\n{stdout}");
        assert!(!stderr.contains("panicked"), "lifeboat panicked: {stderr}");
        stderr
    }

    /// Copies a test image into the scratch directory (backups may add dirty bitmaps to
    /// qcow2 images, so tests never touch the shared originals).
    pub fn copy_image(&self, name: &str) -> PathBuf {
        let images = images();
        let target = self.path(name);
        copy_sparse(&images.join(name), &target);
        if name == "overlay.qcow2" {
            copy_sparse(&images.join("fs.qcow2"), &self.path("fs.qcow2"));
        }
        target
    }

    /// The points of the repository (`points --json`).
    pub fn points(&self) -> Vec<Value> {
        self.json(&["points"]).as_array().expect("array").clone()
    }

    /// Backs up `disks` as `vm`; returns the report.
    pub fn backup(&self, vm: &str, disks: &[&Path]) -> Value {
        let mut arguments = vec!["backup".to_string(), "--vm".to_string(), vm.to_string()];
        arguments.extend(disks.iter().map(|d| d.display().to_string()));
        let arguments: Vec<&str> = arguments.iter().map(String::as_str).collect();
        self.json(&arguments)
    }

    /// Restores `point` into `target`; returns the report.
    pub fn restore(&self, point: &str, target: &Path, extra: &[&str]) -> Value {
        let target = target.display().to_string();
        let mut arguments = vec!["restore", point, "--target", &target];
        arguments.extend_from_slice(extra);
        self.json(&arguments)
    }
}

/// Runs `command`, which must succeed; its standard output.
pub fn succeeds(command: &mut Command) -> Vec<u8> {
    let output = command.output().expect("run the command");
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// Copies a file keeping holes.
pub fn copy_sparse(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("--sparse=always")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp");
    assert!(status.success());
}

/// qemu's format name of a file, by extension.
pub fn qemu_format(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("qcow2") => "qcow2",
        Some("vhd") => "vpc",
        Some("vhdx") => "vhdx",
        _ => "raw",
    }
}

/// `qemu-img compare`: true when the two images have identical content.
pub fn identical(first: &Path, second: &Path) -> bool {
    identical_as(first, qemu_format(first), second, qemu_format(second))
}

/// The same, with the images' formats given (a file's name need not say it), sharing the
/// images with a process that holds them open.
pub fn identical_as(first: &Path, first_format: &str, second: &Path, second_format: &str) -> bool {
    let output = Command::new("qemu-img")
        .args(["compare", "-U", "-f", first_format, "-F", second_format])
        .arg(first)
        .arg(second)
        .output()
        .expect("qemu-img compare");
    if !output.status.success() {
        eprintln!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    output.status.success()
}

/// Makes `count` 4 KiB writes with `qemu-io` at pseudo-random 4 KiB-aligned offsets
/// (deterministic for a seed), each with its own pattern byte.
pub fn random_writes(image: &Path, count: usize, seed: u64) {
    let size = image_size(image);
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut commands = Vec::new();
    for _ in 0..count {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let offset = ((state >> 16) % (size / 4096)) * 4096;
        let pattern = (state >> 8) as u8 | 1;
        commands.push(format!("write -P {pattern} {offset} 4k"));
    }
    for batch in commands.chunks(200) {
        // A killed Lifeboat's private qemu-nbd stops on its own (parent-death signal), a
        // moment later: until then it holds the image's lock.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let output = loop {
            let mut command = Command::new("qemu-io");
            command.args(["-f", qemu_format(image)]);
            for line in batch {
                command.args(["-c", line]);
            }
            let output = command.arg(image).output().expect("qemu-io");
            let locked = String::from_utf8_lossy(&output.stderr).contains("Failed to get");
            if !locked || std::time::Instant::now() > deadline {
                break output;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        assert!(
            output.status.success(),
            "qemu-io failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// Virtual size reported by qemu-img.
pub fn image_size(image: &Path) -> u64 {
    let output = Command::new("qemu-img")
        .args(["info", "--output=json", "-f", qemu_format(image)])
        .arg(image)
        .output()
        .expect("qemu-img info");
    let info: Value = serde_json::from_slice(&output.stdout).expect("qemu-img info JSON");
    info["virtual-size"].as_u64().expect("virtual size")
}

/// The string value of a JSON field.
pub fn text(value: &Value, field: &str) -> String {
    value[field]
        .as_str()
        .unwrap_or_else(|| panic!("no string {field} in {value}"))
        .to_string()
}

/// The number value of a JSON field.
pub fn number(value: &Value, field: &str) -> u64 {
    value[field]
        .as_u64()
        .unwrap_or_else(|| panic!("no number {field} in {value}"))
}

/// A tmpfs of `size` mounted at `path`, unmounted on drop.
pub struct SmallFilesystem(PathBuf);

impl SmallFilesystem {
    pub fn mount(path: &Path, size: &str) -> SmallFilesystem {
        std::fs::create_dir_all(path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "mounting a tmpfs needs root; the test suite runs as root (see README)"
        );
        SmallFilesystem(path.to_path_buf())
    }

    pub fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for SmallFilesystem {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Starts `lifeboat ARGUMENTS` and stops it (SIGSTOP) once it reports its first progress:
/// it has loaded the chunk map it reads with and begun reading.
pub fn paused(
    mut command: Command,
    arguments: &[&str],
) -> (std::process::Child, BufReader<std::process::ChildStderr>) {
    let mut child = command
        .args(arguments)
        .env("LIFEBOAT_PROGRESS", "lines")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "{arguments:?} ended before its progress"
        );
        if line.starts_with("lifeboat-progress ") {
            break;
        }
    }
    signal(&child, "STOP");
    (child, stderr)
}

/// Kills the processes (stopped ones too) when a test ends, passed or failed.
pub struct KillOnDrop(pub Vec<u32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
}

/// The leases held in the repository at `repository` (a lease being taken is a temporary
/// file first, and is not counted).
pub fn leases(repository: &Path) -> usize {
    std::fs::read_dir(repository.join("locks"))
        .map(|entries| {
            entries
                .filter(|e| {
                    e.as_ref()
                        .is_ok_and(|e| !e.file_name().to_string_lossy().starts_with(".tmp-"))
                })
                .count()
        })
        .unwrap_or(0)
}

/// Sends `signal` (STOP, CONT, TERM, KILL, INT) to `child` at once.
pub fn signal(child: &std::process::Child, signal: &str) {
    let number = match signal {
        "STOP" => libc::SIGSTOP,
        "CONT" => libc::SIGCONT,
        "TERM" => libc::SIGTERM,
        "KILL" => libc::SIGKILL,
        "INT" => libc::SIGINT,
        other => panic!("no signal {other} in the tests"),
    };
    // SAFETY: kill(2) with a child's pid and a valid signal number.
    let sent = unsafe { libc::kill(child.id() as libc::pid_t, number) };
    assert_eq!(sent, 0, "kill -{signal} {}", child.id());
}
