//! Serving a [`ZoneSet`] over UDP and TCP (RFC 1035 §4.2, RFC 7766), on plain threads.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::zones::ZoneSet;

/// An idle TCP connection is closed after this long.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// A running server; its threads live as long as the process.
pub struct DnsServer {
    zones: Arc<RwLock<Arc<ZoneSet>>>,
    address: SocketAddr,
}

fn current(zones: &RwLock<Arc<ZoneSet>>) -> Arc<ZoneSet> {
    Arc::clone(
        &zones
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner()),
    )
}

impl DnsServer {
    /// Serves `zones` on `address` (UDP and TCP, the same port; port 0 picks one).
    pub fn start(address: SocketAddr, zones: ZoneSet) -> io::Result<DnsServer> {
        let udp = UdpSocket::bind(address)?;
        let address = udp.local_addr()?;
        let tcp = TcpListener::bind(address)?;
        let zones = Arc::new(RwLock::new(Arc::new(zones)));
        let shared = Arc::clone(&zones);
        std::thread::Builder::new()
            .name("dns-udp".to_string())
            .spawn(move || serve_udp(udp, shared))?;
        let shared = Arc::clone(&zones);
        std::thread::Builder::new()
            .name("dns-tcp".to_string())
            .spawn(move || serve_tcp(tcp, shared))?;
        Ok(DnsServer { zones, address })
    }

    /// Where it listens.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Replaces every zone at once: the next query is answered from `zones`.
    pub fn replace(&self, zones: ZoneSet) {
        *self
            .zones
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(zones);
    }
}

fn serve_udp(socket: UdpSocket, zones: Arc<RwLock<Arc<ZoneSet>>>) {
    let mut buffer = vec![0u8; 4096];
    loop {
        let (length, peer) = match socket.recv_from(&mut buffer) {
            Ok(received) => received,
            Err(error) => {
                tracing::warn!(%error, "DNS over UDP: receive failed");
                continue;
            }
        };
        if let Some(answer) = current(&zones).answer(&buffer[..length], true)
            && let Err(error) = socket.send_to(&answer, peer)
        {
            tracing::debug!(%peer, %error, "DNS over UDP: cannot answer");
        }
    }
}

fn serve_tcp(listener: TcpListener, zones: Arc<RwLock<Arc<ZoneSet>>>) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let zones = Arc::clone(&zones);
        let spawned = std::thread::Builder::new()
            .name("dns-tcp-connection".to_string())
            .spawn(move || {
                if let Err(error) = serve_connection(stream, &zones) {
                    tracing::debug!(%error, "DNS over TCP: connection ended");
                }
            });
        if let Err(error) = spawned {
            tracing::warn!(%error, "DNS over TCP: cannot start a connection thread");
        }
    }
}

/// Reads one message of a TCP stream, where each is preceded by its length in two bytes;
/// `None` at the end of the stream.
pub(crate) fn read_frame(stream: &mut impl Read) -> io::Result<Option<Vec<u8>>> {
    let mut length = [0u8; 2];
    match stream.read_exact(&mut length) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(error) => return Err(error),
    }
    let mut message = vec![0u8; usize::from(u16::from_be_bytes(length))];
    stream.read_exact(&mut message)?;
    Ok(Some(message))
}

/// Writes one message to a TCP stream, preceded by its length.
pub(crate) fn write_frame(stream: &mut impl Write, message: &[u8]) -> io::Result<()> {
    let mut framed = Vec::with_capacity(message.len() + 2);
    framed.extend_from_slice(&(message.len() as u16).to_be_bytes());
    framed.extend_from_slice(message);
    stream.write_all(&framed)
}

fn serve_connection(mut stream: TcpStream, zones: &RwLock<Arc<ZoneSet>>) -> io::Result<()> {
    stream.set_read_timeout(Some(TCP_IDLE))?;
    while let Some(query) = read_frame(&mut stream)? {
        let Some(answer) = current(zones).answer(&query, false) else {
            return Ok(());
        };
        write_frame(&mut stream, &answer)?;
    }
    Ok(())
}
