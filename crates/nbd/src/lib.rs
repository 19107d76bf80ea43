//! The NBD protocol, as Lifeboat speaks it: a client for reading and writing disk images
//! through `qemu-nbd`, and a server for exporting recovery points (and, later, protected
//! disks) to qemu.
//!
//! # Layout
//!
//! * `protocol.rs` — wire constants.
//! * `client.rs` — [`Client`]: negotiation with `NBD_OPT_GO`, structured replies, meta
//!   contexts (`base:allocation`, `qemu:dirty-bitmap:*`), read, write, flush, block status.
//! * `server.rs` — [`Server`] and the [`Export`] trait it serves.
//! * `socket.rs` — [`socket::Socket`], a TCP or Unix stream for both sides.
//! * `connections.rs` — [`Limits`] and the table of open connections that enforces them
//!   (handshake deadline, places for negotiating and for serving, idle eviction).
//! * `buffer.rs` — [`Buffer`], a write's payload, and the [`BufferPool`] that recycles
//!   payload memory.
//!
//! # What this crate must not know
//!
//! Repositories, disk image formats, QEMU processes. It moves blocks and block status.

pub mod buffer;
pub mod client;
pub mod connections;
pub mod protocol;
pub mod server;
pub mod socket;

pub use buffer::{Buffer, BufferPool};
pub use client::{Client, Extent, NbdError};
pub use connections::Limits;
pub use server::{Export, ExportError, Server, ServerError};
