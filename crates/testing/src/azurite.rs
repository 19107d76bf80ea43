//! [`AzuriteServer`] runs Azurite's Blob service (`azurite-blob`, from npm, installed by
//! `scripts/test.sh`) on a free port of 127.0.0.1 with its well-known development account,
//! and creates the container [`CONTAINER`] in it with a signed request, as `az storage
//! container create` would.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::{ObjectServer, free_port};

/// The container every server starts with.
pub const CONTAINER: &str = "lifeboat";
/// Azurite's development account and its published key.
pub const ACCOUNT: &str = "devstoreaccount1";
pub const ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// A running Azurite Blob service; killed on drop.
pub struct AzuriteServer {
    child: Option<Child>,
    port: u16,
    directory: tempfile::TempDir,
}

fn binary() -> PathBuf {
    for candidate in ["/usr/local/bin/azurite-blob", "/usr/bin/azurite-blob"] {
        if std::path::Path::new(candidate).exists() {
            return PathBuf::from(candidate);
        }
    }
    PathBuf::from("azurite-blob")
}

impl AzuriteServer {
    /// Starts a server with an empty container [`CONTAINER`].
    pub fn start() -> AzuriteServer {
        let mut server = AzuriteServer {
            child: None,
            port: free_port(),
            directory: tempfile::tempdir().expect("a temporary directory"),
        };
        server.start_process();
        server.create_container(CONTAINER);
        server
    }

    fn start_process(&mut self) {
        self.stop_process();
        let child = Command::new(binary())
            .args([
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                &self.port.to_string(),
            ])
            .arg("--location")
            .arg(self.directory.path())
            .args(["--silent", "--skipApiVersionCheck", "--loose"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("azurite-blob runs (scripts/test.sh installs it with npm install -g azurite)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "azurite-blob did not start listening"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Azurite keeps its metadata in memory and saves it every few seconds, so a SIGKILL
    /// could lose the container itself, which the real service never does: it is stopped
    /// with SIGTERM (it saves, then exits), and killed only if it does not exit.
    fn stop_process(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `http://127.0.0.1:PORT/devstoreaccount1`, the account's Blob endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{ACCOUNT}", self.port)
    }

    /// Creates a container (Create Container, signed with the account key).
    pub fn create_container(&self, name: &str) {
        let date = chrono::Utc::now()
            .format("%a, %d %b %Y %H:%M:%S GMT")
            .to_string();
        let version = "2021-08-06";
        let to_sign = format!(
            "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n/{ACCOUNT}/{ACCOUNT}/{name}\nrestype:container"
        );
        let key = STANDARD
            .decode(ACCOUNT_KEY)
            .expect("the account key is base64");
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key);
        let signature = STANDARD.encode(ring::hmac::sign(&key, to_sign.as_bytes()).as_ref());
        let request = format!(
            "PUT /{ACCOUNT}/{name}?restype=container HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\
             x-ms-date: {date}\r\nx-ms-version: {version}\r\n\
             Authorization: SharedKey {ACCOUNT}:{signature}\r\nContent-Length: 0\r\n\
             Connection: close\r\n\r\n",
            self.port
        );
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("Azurite answers");
        stream
            .write_all(request.as_bytes())
            .expect("the request is sent");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("a response");
        assert!(
            response.starts_with("HTTP/1.1 201"),
            "Azurite refused to create container {name}: {response}"
        );
    }
}

impl ObjectServer for AzuriteServer {
    /// `az://lifeboat/PREFIX`.
    fn location(&self, prefix: &str) -> String {
        format!("az://{CONTAINER}/{prefix}")
    }

    fn environment(&self) -> Vec<(String, String)> {
        vec![
            (
                "AZURE_STORAGE_ACCOUNT_NAME".to_string(),
                ACCOUNT.to_string(),
            ),
            (
                "AZURE_STORAGE_ACCOUNT_KEY".to_string(),
                ACCOUNT_KEY.to_string(),
            ),
            ("AZURE_STORAGE_ENDPOINT".to_string(), self.endpoint()),
            ("AZURE_ALLOW_HTTP".to_string(), "true".to_string()),
        ]
    }

    fn settings(&self) -> Vec<(String, String)> {
        vec![
            (
                "azure_storage_account_name".to_string(),
                ACCOUNT.to_string(),
            ),
            (
                "azure_storage_account_key".to_string(),
                ACCOUNT_KEY.to_string(),
            ),
            ("azure_storage_endpoint".to_string(), self.endpoint()),
            ("azure_allow_http".to_string(), "true".to_string()),
        ]
    }

    /// Stops the server: requests fail as with a crash (see `stop_process`).
    fn kill(&mut self) {
        self.stop_process();
    }

    fn restart(&mut self) {
        self.start_process();
    }
}

impl Drop for AzuriteServer {
    fn drop(&mut self) {
        self.stop_process();
    }
}
