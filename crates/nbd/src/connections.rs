//! What keeps hostile clients from holding the server: every open connection is tracked,
//! a handshake has a deadline, and places are bounded separately for connections still
//! negotiating and for connections serving an export.
//!
//! * A connection must finish negotiating within [`Limits::handshake_timeout`] of being
//!   accepted, however it spends the time (silent, half a handshake, a byte at a time, or
//!   an endless stream of options): every read and write of the handshake runs against
//!   that one deadline.
//! * When [`Limits::negotiating`] connections are negotiating, a new one closes the
//!   oldest: an attacker who opens connections cannot keep a client that negotiates
//!   promptly out.
//! * When [`Limits::serving`] connections are serving, a client that negotiates takes the
//!   place of the one idle longest, if it has been idle for [`Limits::idle_timeout`];
//!   otherwise it is told the server is full. A connection that is merely idle is never
//!   closed while there is room: a VM's disk may go unread for hours.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub use crate::socket::Socket;

/// Bounds on what clients may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// How long a connection may take from being accepted to the end of its negotiation.
    pub handshake_timeout: Duration,
    /// Connections negotiating at once; one more closes the oldest.
    pub negotiating: usize,
    /// Connections serving an export at once.
    pub serving: usize,
    /// How long a serving connection must have been idle to give its place to a new one.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            handshake_timeout: Duration::from_secs(10),
            negotiating: 512,
            serving: 128,
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// A reader or writer held to a deadline until [`Deadlined::lift`]: each operation waits
/// at most what is left of the time, and none starts once it is over.
pub struct Deadlined<S> {
    inner: S,
    socket: Socket,
    deadline: Option<Instant>,
}

impl<S> Deadlined<S> {
    pub fn new(inner: S, socket: Socket, deadline: Instant) -> Deadlined<S> {
        Deadlined {
            inner,
            socket,
            deadline: Some(deadline),
        }
    }

    /// Ends the deadline: from now on, operations wait as long as they need.
    pub fn lift(&mut self) -> std::io::Result<()> {
        self.deadline = None;
        self.socket.set_timeouts(None)
    }

    fn arm(&self) -> std::io::Result<()> {
        let Some(deadline) = self.deadline else {
            return Ok(());
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client did not finish negotiating in time",
            ));
        }
        self.socket.set_timeouts(Some(left))
    }
}

impl<S: Read> Read for Deadlined<S> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        self.arm()?;
        self.inner.read(buffer)
    }
}

impl<S: Write> Write for Deadlined<S> {
    fn write(&mut self, buffer: &[u8]) -> std::io::Result<usize> {
        self.arm()?;
        self.inner.write(buffer)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.arm()?;
        self.inner.flush()
    }
}

enum Phase {
    Negotiating,
    /// Serving, with the time of its last request (milliseconds since the table began).
    Serving(Arc<AtomicU64>),
    /// Shut down by the table; its thread has not ended yet.
    Closing,
}

struct Tracked {
    socket: Socket,
    accepted: Instant,
    phase: Phase,
}

/// Every open connection of a server.
pub struct Connections {
    limits: Limits,
    began: Instant,
    open: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    next: u64,
    entries: HashMap<u64, Tracked>,
}

/// A connection's entry in the table; dropping it removes the entry.
pub struct Place<'a> {
    connections: &'a Connections,
    id: u64,
}

/// Marks a serving connection active.
pub struct Activity {
    began: Instant,
    last: Arc<AtomicU64>,
}

impl Activity {
    pub fn touch(&self) {
        let now = self.began.elapsed().as_millis() as u64;
        self.last.store(now, Ordering::Relaxed);
    }
}

impl Connections {
    pub fn new(limits: Limits) -> Connections {
        Connections {
            limits,
            began: Instant::now(),
            open: Mutex::new(Table::default()),
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Tracks a connection just accepted, closing the oldest negotiating one when all
    /// places for negotiating are taken.
    pub fn admit(&self, socket: Socket) -> Place<'_> {
        let mut table = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let negotiating = table
            .entries
            .values()
            .filter(|t| matches!(t.phase, Phase::Negotiating))
            .count();
        if negotiating >= self.limits.negotiating {
            let oldest = table
                .entries
                .iter_mut()
                .filter(|(_, t)| matches!(t.phase, Phase::Negotiating))
                .min_by_key(|(_, t)| t.accepted);
            if let Some((_, tracked)) = oldest {
                tracing::warn!("closing the oldest negotiating NBD connection for a new one");
                tracked.socket.shutdown();
                tracked.phase = Phase::Closing;
            }
        }
        let id = table.next;
        table.next += 1;
        table.entries.insert(
            id,
            Tracked {
                socket,
                accepted: Instant::now(),
                phase: Phase::Negotiating,
            },
        );
        Place {
            connections: self,
            id,
        }
    }

    /// Moves a negotiated connection to serving, taking the place of the connection idle
    /// longest when every place is taken; `None` when none has been idle long enough.
    pub fn serve(&self, place: &Place<'_>) -> Option<Activity> {
        let mut table = self.open.lock().unwrap_or_else(|e| e.into_inner());
        // A connection closed to make room for another takes no serving place.
        if !matches!(table.entries.get(&place.id)?.phase, Phase::Negotiating) {
            return None;
        }
        let now = self.began.elapsed().as_millis() as u64;
        let serving: Vec<(u64, u64)> = table
            .entries
            .iter()
            .filter_map(|(&id, t)| match &t.phase {
                Phase::Serving(last) => Some((id, last.load(Ordering::Relaxed))),
                _ => None,
            })
            .collect();
        if serving.len() >= self.limits.serving {
            let idle = self.limits.idle_timeout.as_millis() as u64;
            let longest = serving
                .iter()
                .filter(|(_, last)| now.saturating_sub(*last) >= idle)
                .min_by_key(|(_, last)| *last)
                .map(|(id, _)| *id)?;
            let tracked = table.entries.get_mut(&longest).expect("listed above");
            tracing::warn!("closing the NBD connection idle longest for a new one");
            tracked.socket.shutdown();
            tracked.phase = Phase::Closing;
        }
        let last = Arc::new(AtomicU64::new(now));
        let tracked = table.entries.get_mut(&place.id)?;
        tracked.phase = Phase::Serving(Arc::clone(&last));
        Some(Activity {
            began: self.began,
            last,
        })
    }

    /// How many connections are open (closing ones included, until their threads end).
    #[cfg(test)]
    fn open(&self) -> usize {
        let table = self.open.lock().unwrap_or_else(|e| e.into_inner());
        table.entries.len()
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        let mut table = self
            .connections
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        table.entries.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn pair() -> (Socket, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        (Socket::Unix(ours), theirs)
    }

    fn is_closed(mut peer: &UnixStream) -> bool {
        peer.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut byte = [0u8; 1];
        matches!(peer.read(&mut byte), Ok(0))
    }

    #[test]
    fn a_new_connection_closes_the_oldest_negotiating_one_when_all_places_are_taken() {
        let connections = Connections::new(Limits {
            negotiating: 2,
            ..Limits::default()
        });
        let (first, first_peer) = pair();
        let (second, second_peer) = pair();
        let (third, third_peer) = pair();
        let first = connections.admit(first);
        let _second = connections.admit(second);
        assert!(!is_closed(&first_peer));
        let third = connections.admit(third);
        assert!(is_closed(&first_peer), "the oldest gives its place");
        assert!(!is_closed(&second_peer));
        assert!(!is_closed(&third_peer));
        assert!(
            connections.serve(&first).is_none(),
            "a connection closed for another takes no serving place"
        );
        assert!(connections.serve(&third).is_some());
    }

    #[test]
    fn a_serving_place_is_taken_only_from_a_connection_idle_long_enough() {
        let connections = Connections::new(Limits {
            serving: 1,
            idle_timeout: Duration::from_millis(300),
            ..Limits::default()
        });
        let (first, first_peer) = pair();
        let (second, second_peer) = pair();
        let first = connections.admit(first);
        let activity = connections.serve(&first).expect("a place is free");
        let second = connections.admit(second);
        assert!(
            connections.serve(&second).is_none(),
            "the only place is taken by a connection active just now"
        );
        std::thread::sleep(Duration::from_millis(200));
        activity.touch();
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            connections.serve(&second).is_none(),
            "a request 200 ms ago keeps the place"
        );
        std::thread::sleep(Duration::from_millis(200));
        assert!(connections.serve(&second).is_some());
        assert!(is_closed(&first_peer), "the idle connection is closed");
        assert!(!is_closed(&second_peer));
        drop(first);
        drop(second);
        assert_eq!(connections.open(), 0, "ended connections leave the table");
    }

    #[test]
    fn a_deadline_ends_a_read_that_trickles_and_one_that_waits() {
        let (socket, mut peer) = pair();
        let reader = socket.try_clone().unwrap();
        let started = Instant::now();
        let mut deadlined =
            Deadlined::new(reader, socket, Instant::now() + Duration::from_millis(500));
        let dripper = std::thread::spawn(move || {
            for _ in 0..100 {
                if peer.write_all(b"x").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            peer
        });
        let mut buffer = [0u8; 64];
        let error = deadlined.read_exact(&mut buffer).unwrap_err();
        let took = started.elapsed();
        assert!(
            matches!(
                error.kind(),
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
            ),
            "{error:?}"
        );
        assert!(took < Duration::from_millis(900), "{took:?}");
        let _peer = dripper.join().unwrap();
        deadlined.lift().unwrap();
    }
}
