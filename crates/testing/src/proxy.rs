//! [`LinkProxy`]: a TCP proxy on 127.0.0.1 in front of a server, to cut the link (every
//! connection reset, new ones refused at once) and restore it, or delay it, while the
//! processes on both sides run on.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A proxy from a local port to `target`.
pub struct LinkProxy {
    port: u16,
    shared: Arc<Shared>,
}

struct Shared {
    cut: AtomicBool,
    delay_ms: AtomicU64,
    stop: AtomicBool,
    connections: Mutex<Vec<TcpStream>>,
}

fn pump(mut from: TcpStream, mut to: TcpStream, shared: Arc<Shared>) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        if shared.cut.load(Ordering::SeqCst) {
            break;
        }
        let delay = shared.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            std::thread::sleep(Duration::from_millis(delay));
        }
        if to.write_all(&buffer[..read]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

impl LinkProxy {
    /// Starts forwarding a free port of 127.0.0.1 to `target` (`host:port`).
    pub fn start(target: &str) -> LinkProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
        let port = listener.local_addr().expect("bound").port();
        let shared = Arc::new(Shared {
            cut: AtomicBool::new(false),
            delay_ms: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            connections: Mutex::new(Vec::new()),
        });
        let target = target.to_string();
        let accepting = Arc::clone(&shared);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if accepting.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                if accepting.cut.load(Ordering::SeqCst) {
                    // The link is down: the connection is reset at once.
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&target) else {
                    continue;
                };
                let (Ok(client_copy), Ok(server_copy)) = (client.try_clone(), server.try_clone())
                else {
                    continue;
                };
                {
                    let mut connections = accepting.connections.lock().expect("never poisoned");
                    connections.push(client.try_clone().expect("a socket clones"));
                    connections.push(server.try_clone().expect("a socket clones"));
                }
                let up = Arc::clone(&accepting);
                let down = Arc::clone(&accepting);
                std::thread::spawn(move || pump(client, server, up));
                std::thread::spawn(move || pump(server_copy, client_copy, down));
            }
        });
        LinkProxy { port, shared }
    }

    /// `127.0.0.1:PORT`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Cuts the link: open connections are shut, new ones refused, until [`restore`].
    ///
    /// [`restore`]: LinkProxy::restore
    pub fn cut(&self) {
        self.shared.cut.store(true, Ordering::SeqCst);
        for connection in self
            .shared
            .connections
            .lock()
            .expect("never poisoned")
            .drain(..)
        {
            let _ = connection.shutdown(Shutdown::Both);
        }
    }

    /// Restores the link.
    pub fn restore(&self) {
        self.shared.cut.store(false, Ordering::SeqCst);
    }

    /// Delays every forwarded read by `delay`.
    pub fn delay(&self, delay: Duration) {
        self.shared
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.cut();
        // Wake the accepting thread so it sees `stop`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}
