//! One file per command.

pub mod backup;
pub mod export;
pub mod forget;
pub mod geo_sync;
pub mod init;
pub mod points;
pub mod protect;
pub mod prune;
pub mod receive;
pub mod region;
pub mod restore;
pub mod status;
pub mod verify;

/// Worker threads for CPU-bound stages: one per core.
pub fn threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
}
