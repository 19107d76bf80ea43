//! Helpers shared by the tests of several crates: real object storage servers on 127.0.0.1.
//!
//! * `s3.rs` — [`S3Server`]: `s3s-fs`, an S3-compatible server.
//! * `azurite.rs` — [`AzuriteServer`]: Azurite, Microsoft's Azure Blob Storage emulator.
//! * `postgres.rs` — [`PostgresServer`]: a private PostgreSQL cluster.
//! * `proxy.rs` — [`LinkProxy`]: a TCP proxy whose link can be cut, restored and delayed.
//!
//! Both are installed by `scripts/test.sh`, keep their objects in a directory (so they
//! survive a kill and restart) and check request signatures, so wrong credentials are
//! refused as the real services would refuse them.

use std::net::TcpListener;

mod azurite;
mod postgres;
mod proxy;
mod s3;

pub use azurite::AzuriteServer;
pub use postgres::PostgresServer;
pub use proxy::LinkProxy;
pub use s3::{ACCESS_KEY, BUCKET, S3Server, SECRET_KEY};

/// The tiny Linux guest of `scripts/make-guest.sh` (Debian's cloud kernel and a busybox
/// initramfs whose init prints the first disk's `marker` file on the serial console as
/// `LIFEBOAT-MARKER: …`, then idles), built once into `directory`: its kernel and initramfs.
pub fn guest_kit(directory: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/make-guest.sh");
    let status = std::process::Command::new(script)
        .arg(directory)
        .status()
        .expect("scripts/make-guest.sh runs");
    assert!(status.success(), "scripts/make-guest.sh failed");
    (directory.join("vmlinuz"), directory.join("initrd.img"))
}

/// What a test needs of a running object storage server.
pub trait ObjectServer {
    /// A repository location in the server's bucket or container.
    fn location(&self, prefix: &str) -> String;
    /// Environment variables for a `lifeboat` process talking to this server.
    fn environment(&self) -> Vec<(String, String)>;
    /// The same, as `object_store` settings (a region's `storage` table).
    fn settings(&self) -> Vec<(String, String)>;
    /// Kills the server (SIGKILL), as a crash would.
    fn kill(&mut self);
    /// Starts it again on the same port and directory; objects written before are still there.
    fn restart(&mut self);
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}
