//! A private PostgreSQL cluster on 127.0.0.1 for a test: `initdb` into a temporary
//! directory owned by the `postgres` user (the server refuses to run as root), trust
//! authentication, a free port; stopped when dropped.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub struct PostgresServer {
    directory: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
}

fn as_postgres(bin: &Path, tool: &str) -> Command {
    let mut command = Command::new("runuser");
    command.args(["-u", "postgres", "--"]).arg(bin.join(tool));
    command
}

impl PostgresServer {
    /// Starts a fresh cluster with a database `lifeboat`.
    pub fn start() -> PostgresServer {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL's server is installed (scripts/test.sh installs postgresql)")
            .flatten()
            .map(|entry| entry.path().join("bin"))
            .find(|bin| bin.join("initdb").exists())
            .expect("an initdb under /usr/lib/postgresql");
        let directory = tempfile::Builder::new()
            .prefix("lifeboat-postgres")
            .tempdir()
            .expect("a temporary directory");
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(directory.path())
            .status()
            .expect("chown runs");
        assert!(status.success());
        let data = directory.path().join("data");
        let status = as_postgres(&bin, "initdb")
            .args(["-A", "trust", "-U", "postgres", "-D"])
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("initdb runs");
        assert!(status.success(), "initdb failed");
        let port = super::free_port();
        let server = PostgresServer {
            directory,
            bin,
            port,
        };
        server.pg_ctl("start");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let created = as_postgres(&server.bin, "createdb")
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                    "-U",
                    "postgres",
                    "lifeboat",
                ])
                .stderr(Stdio::null())
                .status()
                .expect("createdb runs");
            if created.success() {
                break;
            }
            assert!(Instant::now() < deadline, "PostgreSQL did not start");
            std::thread::sleep(Duration::from_millis(200));
        }
        server
    }

    fn pg_ctl(&self, action: &str) {
        let data = self.directory.path().join("data");
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.directory.path().display()
        );
        let _ = as_postgres(&self.bin, "pg_ctl")
            .args(["-D"])
            .arg(&data)
            .args(["-o", &options, "-l"])
            .arg(self.directory.path().join("log"))
            .args(["-w", "-m", "immediate", action])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// The URL of its `lifeboat` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/lifeboat", self.port)
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.pg_ctl("stop");
    }
}
