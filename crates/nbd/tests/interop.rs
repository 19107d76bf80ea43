//! The client and server against each other and against qemu's own NBD implementations.

use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lifeboat_nbd::protocol::{CONTEXT_BASE_ALLOCATION, STATE_HOLE, STATE_ZERO};
use lifeboat_nbd::{Buffer, Client, Export, ExportError, Server};

/// An export held in memory; the second half is a hole.
struct MemoryExport {
    data: Mutex<Vec<u8>>,
    writable: bool,
}

impl MemoryExport {
    fn patterned(size: usize, writable: bool) -> MemoryExport {
        let mut data = vec![0u8; size];
        for (index, byte) in data[..size / 2].iter_mut().enumerate() {
            *byte = (index % 251) as u8 + 1;
        }
        MemoryExport {
            data: Mutex::new(data),
            writable,
        }
    }
}

impl Export for MemoryExport {
    fn size_bytes(&self) -> u64 {
        self.data.lock().unwrap().len() as u64
    }

    fn read(&self, offset: u64, buffer: &mut [u8]) -> Result<(), ExportError> {
        let data = self.data.lock().unwrap();
        buffer.copy_from_slice(&data[offset as usize..offset as usize + buffer.len()]);
        Ok(())
    }

    fn allocation(&self, offset: u64, length: u64) -> Result<Vec<(u64, u32)>, ExportError> {
        let half = self.size_bytes() / 2;
        let mut extents = Vec::new();
        let end = offset + length;
        if offset < half {
            extents.push((half.min(end) - offset, 0));
        }
        if end > half {
            extents.push((end - half.max(offset), STATE_HOLE | STATE_ZERO));
        }
        Ok(extents)
    }

    fn is_writable(&self) -> bool {
        self.writable
    }

    fn write(&self, offset: u64, data: Buffer, _fua: bool) -> Result<(), ExportError> {
        let mut stored = self.data.lock().unwrap();
        stored[offset as usize..offset as usize + data.len()].copy_from_slice(&data);
        Ok(())
    }
}

fn serve(export: Arc<MemoryExport>, directory: &Path) -> std::path::PathBuf {
    let socket = directory.join("nbd.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let mut server = Server::new();
    server.add_export("disk", export);
    let server = Arc::new(server);
    std::thread::spawn(move || server.serve_unix(listener));
    socket
}

const SIZE: usize = 4 << 20;

#[test]
fn our_client_reads_our_server_with_block_status() {
    let directory = tempfile::tempdir().unwrap();
    let export = Arc::new(MemoryExport::patterned(SIZE, false));
    let socket = serve(Arc::clone(&export), directory.path());
    let mut client = Client::connect_unix(&socket, "disk", &[CONTEXT_BASE_ALLOCATION]).unwrap();
    assert_eq!(client.size_bytes(), SIZE as u64);
    assert!(client.is_read_only());
    let mut buffer = vec![0u8; SIZE];
    client.read(0, &mut buffer).unwrap();
    assert_eq!(buffer, *export.data.lock().unwrap());
    let extents = client
        .block_status(CONTEXT_BASE_ALLOCATION, 0, SIZE as u32)
        .unwrap();
    assert_eq!(extents.len(), 2);
    assert_eq!(extents[1].offset, SIZE as u64 / 2);
    assert_eq!(extents[1].flags, STATE_HOLE | STATE_ZERO);
    let error = client.write(0, b"nope", false).unwrap_err();
    assert!(error.to_string().contains("errno 1"), "{error}");
    let unknown = Client::connect_unix(&socket, "other", &[]).unwrap_err();
    assert!(
        unknown.to_string().contains("no export named 'other'"),
        "{unknown}"
    );
}

#[test]
fn qemu_img_copies_an_export_of_our_server_bit_exact() {
    let directory = tempfile::tempdir().unwrap();
    let export = Arc::new(MemoryExport::patterned(SIZE, false));
    let socket = serve(Arc::clone(&export), directory.path());
    let copy = directory.path().join("copy.raw");
    let status = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "raw"])
        .arg(format!("nbd+unix:///disk?socket={}", socket.display()))
        .arg(&copy)
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(std::fs::read(&copy).unwrap(), *export.data.lock().unwrap());
}

#[test]
fn qemu_io_writes_through_our_server() {
    let directory = tempfile::tempdir().unwrap();
    let export = Arc::new(MemoryExport::patterned(SIZE, true));
    let socket = serve(Arc::clone(&export), directory.path());
    let output = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write -P 0x5a 1M 64k", "-c", "flush"])
        .arg(format!("nbd+unix:///disk?socket={}", socket.display()))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let data = export.data.lock().unwrap();
    assert!(data[1 << 20..(1 << 20) + 65536].iter().all(|&b| b == 0x5a));
}

/// Starts `qemu-nbd` on an image and waits for its socket.
fn qemu_nbd(image: &Path, format: &str, socket: &Path) -> Child {
    let child = Command::new("qemu-nbd")
        .args([
            "--read-only",
            "--persistent",
            "--shared=4",
            "--export-name=disk",
        ])
        .arg(format!("--format={format}"))
        .arg(format!("--socket={}", socket.display()))
        .arg(image)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "qemu-nbd did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

#[test]
fn our_client_reads_a_sparse_qcow2_through_qemu_nbd() {
    let directory = tempfile::tempdir().unwrap();
    let image = directory.path().join("disk.qcow2");
    let created = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&image)
        .arg("8M")
        .status()
        .unwrap();
    assert!(created.success());
    let written = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 0x11 2M 1M"])
        .arg(&image)
        .output()
        .unwrap();
    assert!(written.status.success());
    let socket = directory.path().join("q.sock");
    let mut child = qemu_nbd(&image, "qcow2", &socket);
    let mut client = Client::connect_unix(&socket, "disk", &[CONTEXT_BASE_ALLOCATION]).unwrap();
    assert_eq!(client.size_bytes(), 8 << 20);
    let extents = client
        .block_status(CONTEXT_BASE_ALLOCATION, 0, 8 << 20)
        .unwrap();
    let data: Vec<_> = extents
        .iter()
        .filter(|e| e.flags & STATE_ZERO == 0)
        .collect();
    assert_eq!(data.len(), 1);
    assert_eq!((data[0].offset, data[0].length), (2 << 20, 1 << 20));
    let mut buffer = vec![0xffu8; 4 << 20];
    client.read(0, &mut buffer).unwrap();
    assert!(buffer[..2 << 20].iter().all(|&b| b == 0));
    assert!(buffer[2 << 20..3 << 20].iter().all(|&b| b == 0x11));
    assert!(buffer[3 << 20..].iter().all(|&b| b == 0));
    client.disconnect();
    child.kill().unwrap();
    child.wait().unwrap();
}
