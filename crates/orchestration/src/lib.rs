//! Recovery plans run as journaled, resumable, audited sequences of steps.
//!
//! # Layout
//!
//! * `steps.rs` — the core, without I/O: [`steps`] turns a plan and an operation (failover,
//!   test failover, planned failover, cleanup, commit) into the ordered steps to run, in
//!   batches whose steps run in parallel (the VMs of one group).
//! * `run.rs` — [`RunRecord`], the journal of one run (`<state>/runs/<id>.json`, replaced
//!   atomically after every step), and [`Runner`], which executes the steps still to do,
//!   one batch at a time, through an [`Executor`] for the steps that touch VMs. A run
//!   killed at any step is resumed by running it again: finished steps are skipped, the
//!   interrupted one is run again (every executor step is idempotent). One orchestrator
//!   per plan at a time (an advisory lock on `<state>/runs/<plan>.lock`).
//! * `script.rs` — a plan's script actions: `sh -c`, a timeout, the output kept.
//! * `audit.rs` — the audit log (`<state>/audit.log`): one JSON line per event — who,
//!   when, what, the result — appended and flushed before the step goes on.
//!
//! # What this crate must not know
//!
//! Repositories, points, QEMU or DNS: starting and stopping VMs and checking points is the
//! executor's job; this crate decides the order, records it and runs scripts.

pub mod audit;
pub mod run;
pub mod script;
pub mod steps;

pub use audit::{AuditEvent, AuditLog};
pub use run::{Executor, Outcome, RunRecord, RunState, Runner, StepRecord, StepState};
pub use steps::{Action, Operation, Step, steps};

use std::path::PathBuf;

/// What went wrong while orchestrating, naming the file or the step.
#[derive(Debug, thiserror::Error)]
pub enum OrchestrationError {
    #[error("cannot {what} {path}: {source}")]
    State {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a run record of this version: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    #[error(
        "another lifeboat is running plan '{plan}' now (lock {path}); wait for it, or see lifeboat plan status {plan}"
    )]
    Busy { plan: String, path: PathBuf },
    #[error(
        "step {index} of run {run} ({step}) failed: {detail}. Fix the cause, then run: lifeboat plan continue {plan}"
    )]
    StepFailed {
        run: String,
        plan: String,
        index: usize,
        step: String,
        detail: String,
    },
}

pub type Result<T, E = OrchestrationError> = std::result::Result<T, E>;
