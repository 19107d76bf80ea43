//! Lifeboat's built-in authoritative DNS server.
//!
//! * `zones.rs` — [`ZoneSet`]: the zones served and their address records, and the answer
//!   to a query (no I/O): authoritative answers, NODATA and NXDOMAIN with the zone's SOA,
//!   REFUSED outside the zones, truncation for UDP.
//! * `server.rs` — [`DnsServer`]: the same answers over UDP and TCP, with the zone set
//!   replaced whole when the records change (a failover), so a name moves at once.
//! * `health.rs` — [`health::Prober`]: TCP or HTTP checks of addresses in the background,
//!   and [`health::choose`], priority routing (no I/O): the first healthy address.
//! * `update.rs` — [`update::replace_addresses`]: RFC 2136 updates signed with TSIG, for
//!   names in zones another DNS server holds.
//!
//! # What this crate must not know
//!
//! Configuration files, regions, VMs or failovers: it is given names and addresses.

pub mod health;
pub mod server;
pub mod update;
pub mod zones;

pub use server::DnsServer;
pub use zones::{DnsError, ZoneSet};
