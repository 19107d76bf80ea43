//! [`S3Server`] runs a real S3-compatible server (`s3s-fs`, installed by
//! `scripts/test.sh`) on a free port of 127.0.0.1, storing its objects in a directory so it
//! keeps them across a kill and restart. It checks request signatures, so wrong
//! credentials are refused as they would be by AWS.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{ObjectServer, free_port};

/// The bucket every server starts with.
pub const BUCKET: &str = "lifeboat";
/// Credentials the server accepts.
pub const ACCESS_KEY: &str = "lifeboat-test";
pub const SECRET_KEY: &str = "lifeboat-test-secret";

/// A running S3 server; killed on drop.
pub struct S3Server {
    child: Option<Child>,
    port: u16,
    root: PathBuf,
    _directory: tempfile::TempDir,
}

fn binary() -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".to_string());
    let installed = Path::new(&home).join(".cargo/bin/s3s-fs");
    if installed.exists() {
        return installed;
    }
    PathBuf::from("s3s-fs")
}

impl S3Server {
    /// Starts a server with an empty bucket [`BUCKET`].
    pub fn start() -> S3Server {
        let directory = tempfile::tempdir().expect("a temporary directory");
        let root = directory.path().join("objects");
        std::fs::create_dir_all(root.join(BUCKET)).expect("the bucket directory");
        let mut server = S3Server {
            child: None,
            port: free_port(),
            root,
            _directory: directory,
        };
        server.start_process();
        server
    }

    fn start_process(&mut self) {
        self.stop_process();
        let child = Command::new(binary())
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(&self.root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("s3s-fs runs (scripts/test.sh installs it with cargo install s3s-fs)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not start listening");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop_process(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The directory the server keeps objects in (tests damage objects through it).
    pub fn root(&self) -> &Path {
        &self.root
    }
}

impl ObjectServer for S3Server {
    /// `s3://lifeboat/PREFIX`.
    fn location(&self, prefix: &str) -> String {
        format!("s3://{BUCKET}/{prefix}")
    }

    fn environment(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ENDPOINT".to_string(), self.endpoint()),
            ("AWS_ACCESS_KEY_ID".to_string(), ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY".to_string(), SECRET_KEY.to_string()),
            ("AWS_REGION".to_string(), "us-east-1".to_string()),
            ("AWS_ALLOW_HTTP".to_string(), "true".to_string()),
        ]
    }

    fn settings(&self) -> Vec<(String, String)> {
        vec![
            ("aws_endpoint".to_string(), self.endpoint()),
            ("aws_access_key_id".to_string(), ACCESS_KEY.to_string()),
            ("aws_secret_access_key".to_string(), SECRET_KEY.to_string()),
            ("aws_region".to_string(), "us-east-1".to_string()),
            ("aws_allow_http".to_string(), "true".to_string()),
        ]
    }

    fn kill(&mut self) {
        self.stop_process();
    }

    fn restart(&mut self) {
        self.start_process();
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop_process();
    }
}
