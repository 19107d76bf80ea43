//! Drill reports: the test failovers recorded in this node's state directory (their run
//! journals), newest first, step by step.

use std::path::Path;

use lifeboat_orchestration::run::RunRecord;
use lifeboat_orchestration::steps::Operation;
use serde_json::{Value, json};

use crate::store::JobStep;

/// Every test failover run, newest first.
pub fn list(state_directory: &Path) -> Result<Vec<Value>, String> {
    let runs = RunRecord::list(state_directory).map_err(|e| e.to_string())?;
    Ok(runs
        .iter()
        .rev()
        .filter(|run| run.operation == Operation::TestFailover)
        .map(|run| {
            let finished = run
                .steps
                .iter()
                .filter_map(|s| s.finished.clone())
                .max()
                .filter(|_| run.steps.iter().all(|s| s.finished.is_some()));
            json!({
                "id": run.id,
                "plan": run.plan,
                "target": run.region,
                "operation": run.operation,
                "state": run.state,
                "actor": run.actor,
                "started": run.started,
                "finished": finished,
                "steps": run.steps.iter().map(JobStep::from).collect::<Vec<_>>(),
            })
        })
        .collect())
}
