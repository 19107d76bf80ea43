//! Lifeboat's operations as typed values.
//!
//! Layout:
//! - `command_line.rs`: every operation as clap parses it (`Cli`, `Command` and their
//!   arguments). The `lifeboat` binary runs exactly this definition.
//! - `role.rs`: the role each operation needs, by an exhaustive match over `Command`, and
//!   which operations are never run on request.
//! - `request.rs`: a command asked for through the API, parsed as the job that runs it
//!   will parse it; the options a caller may not give are refused from what clap parsed.
//!
//! This crate does no I/O and knows nothing of HTTP, SQL, repositories or QEMU: the CLI
//! executes commands, the control plane authorizes and queues them.

pub mod command_line;
pub mod request;
pub mod role;

pub use request::{JobCommand, Refusal, child_arguments};
pub use role::{NotOnRequest, Role, required_role};
