//! `forget`: remove a VM's points that its retention policy does not keep.
//!
//! Removing a point deletes its manifest, nothing else; its chunks stay until `prune` finds
//! them unreferenced. Forget therefore never makes another point unrestorable, and a
//! backup running at the same time (even one using a forgotten point as its base) is safe:
//! prune's two-phase delete waits for it.

use lifeboat_repository::Repository;
use serde::Serialize;

use crate::error::{EngineError, Result};
use crate::retention::{Dated, Decision, RetentionPolicy, apply};

/// The result of a forget.
#[derive(Clone, Debug, Serialize)]
pub struct ForgetReport {
    pub vm: String,
    pub policy: RetentionPolicy,
    pub dry_run: bool,
    pub kept: Vec<Decision>,
    pub removed: Vec<Decision>,
}

/// Applies `policy` to `vm`'s points and deletes the ones it does not keep.
pub fn forget(
    repository: &Repository,
    vm: &str,
    policy: &RetentionPolicy,
    dry_run: bool,
) -> Result<ForgetReport> {
    if policy.is_empty() {
        return Err(EngineError::Invalid(
            "forget needs at least one --keep-* option greater than zero; it never removes every point of a VM by default"
                .to_string(),
        ));
    }
    let list = repository.list_points()?;
    let dated: Vec<Dated> = list
        .points
        .iter()
        .filter(|p| p.vm == vm)
        .map(|p| Dated {
            point: p.point.clone(),
            time: p.time.clone(),
        })
        .collect();
    if dated.is_empty() {
        return Err(EngineError::Refused(format!(
            "VM '{vm}' has no points in repository {}",
            repository.location()
        )));
    }
    let (kept, removed): (Vec<Decision>, Vec<Decision>) = apply(policy, &dated)
        .into_iter()
        .partition(|d| !d.reasons.is_empty());
    if !dry_run {
        for decision in &removed {
            repository.delete_point(&decision.point)?;
        }
    }
    Ok(ForgetReport {
        vm: vm.to_string(),
        policy: *policy,
        dry_run,
        kept,
        removed,
    })
}
