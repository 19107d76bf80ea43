//! A private PostgreSQL cluster on 127.0.0.1 for a test: `initdb` into a temporary
//! directory owned by the `postgres` user (the server refuses to run as root), trust
//! authentication, a free port; stopped when dropped. [`PostgresServer::start_tls`] makes
//! one that accepts TLS connections only, with a certificate from a CA of its own.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub struct PostgresServer {
    directory: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    tls: bool,
}

fn as_postgres(bin: &Path, tool: &str) -> Command {
    let mut command = Command::new("runuser");
    command.args(["-u", "postgres", "--"]).arg(bin.join(tool));
    command
}

impl PostgresServer {
    /// Starts a fresh cluster with a database `lifeboat`.
    pub fn start() -> PostgresServer {
        PostgresServer::start_with(false)
    }

    /// The same, accepting only TLS connections on 127.0.0.1, with a certificate for
    /// `127.0.0.1` and `localhost` signed by [`PostgresServer::ca`].
    pub fn start_tls() -> PostgresServer {
        PostgresServer::start_with(true)
    }

    /// The PEM file of the CA that signed the server's certificate.
    pub fn ca(&self) -> PathBuf {
        self.directory.path().join("ca.pem")
    }

    /// The PEM file of a CA that signed nothing the server holds.
    pub fn other_ca(&self) -> PathBuf {
        self.directory.path().join("other-ca.pem")
    }

    fn start_with(tls: bool) -> PostgresServer {
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
        if tls {
            certify(directory.path());
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
            )
            .expect("pg_hba.conf is written");
        }
        let port = super::free_port();
        let server = PostgresServer {
            directory,
            bin,
            port,
            tls,
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
        let mut options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.directory.path().display()
        );
        if self.tls {
            let folder = self.directory.path().display();
            options.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={folder}/server.crt -c ssl_key_file={folder}/server.key"
            ));
        }
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

/// Makes a CA, a server certificate it signs (for 127.0.0.1 and localhost) and a second
/// CA in `folder`, with `openssl`, readable by the `postgres` user.
fn certify(folder: &Path) {
    let openssl = |arguments: &[&str]| {
        let output = Command::new("openssl")
            .args(arguments)
            .current_dir(folder)
            .output()
            .expect("openssl runs");
        assert!(
            output.status.success(),
            "openssl {arguments:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    for (name, subject) in [
        ("ca", "/CN=Lifeboat test CA"),
        ("other-ca", "/CN=Another CA"),
    ] {
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            subject,
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
        ]);
    }
    openssl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(
        folder.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .expect("the extensions file is written");
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        "-out",
        "server.crt",
    ]);
    let status = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(folder)
        .status()
        .expect("chown runs");
    assert!(status.success());
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        folder.join("server.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .expect("the key is made private");
}
