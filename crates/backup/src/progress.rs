//! Progress reporting, so the CLI can draw a bar and the daemon can record job progress
//! without the engine knowing either.

/// Receives progress of a long operation.
pub trait Progress: Sync {
    /// A new phase starts, of `total_bytes` (0 when unknown).
    fn start(&self, phase: &str, total_bytes: u64);
    /// `bytes` more are done in the current phase.
    fn advance(&self, bytes: u64);
    /// The current phase is over.
    fn finish(&self);
}

/// Progress that goes nowhere.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _phase: &str, _total_bytes: u64) {}
    fn advance(&self, _bytes: u64) {}
    fn finish(&self) {}
}
