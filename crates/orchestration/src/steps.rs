//! What a run does, decided without I/O: the ordered steps of an operation on a plan.
//!
//! A failover brings the plan's groups up in order, each group's VMs together, with the
//! plan's scripts and manual steps before or after the group they name. A planned failover
//! first stops the VMs where they run (last group first) and waits for the final sync, so
//! nothing written is lost. A test failover starts copies on the isolated test network and
//! leaves replication and the production DNS alone; its cleanup stops them (last group
//! first) and removes every trace. A commit makes a failover final.

use std::fmt;

use lifeboat_config::{ActionKind, ActionPosition, Plan};
use serde::{Deserialize, Serialize};

/// What is done to a plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Operation {
    /// The source is lost: start the VMs from the chosen points.
    Failover,
    /// The source still runs: stop it, ship its last writes, then fail over without loss.
    PlannedFailover,
    /// Start copies on an isolated network and DNS view; production is untouched.
    TestFailover,
    /// Remove a test failover.
    Cleanup,
    /// Make a failover final: its VMs keep their disks and no longer need the points.
    Commit,
    /// Replicate failed-over VMs back to their home region: restart them on a capture
    /// that ships there. A failback is then a planned failover home.
    Reprotect,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Failover => "failover",
            Operation::PlannedFailover => "planned-failover",
            Operation::TestFailover => "test-failover",
            Operation::Cleanup => "cleanup",
            Operation::Commit => "commit",
            Operation::Reprotect => "reprotect",
        }
    }
}

/// One thing a run does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Action {
    /// Checks that everything the run needs is there (points, age, capacity, mappings).
    Preflight,
    /// A plan's script.
    Script {
        command: String,
        timeout_seconds: u64,
    },
    /// A plan's manual step: the run waits for `lifeboat plan continue`.
    Manual { message: String },
    /// Stops VM `vm` where it runs now (planned failover).
    StopVm { vm: String },
    /// Waits until the recovery region holds every write of these (stopped) VMs.
    FinalSync { vms: Vec<String> },
    /// Starts VM `vm` in the run's region from its chosen point (for a test failover: an
    /// isolated copy).
    StartVm { vm: String },
    /// Stops a test copy of `vm` and removes what it left.
    RemoveTestVm { vm: String },
    /// Makes the failover of `vm` final.
    CommitVm { vm: String },
    /// Stops `vm` where it runs, without moving it (to restart it on a capture).
    HaltVm { vm: String },
    /// Starts the capture that serves these VMs' disks and ships their writes to their
    /// home region.
    StartCapture { vms: Vec<String> },
    /// Stops the capture of these VMs where they ran before (a failback).
    StopCapture { vms: Vec<String> },
}

impl Action {
    /// The VM the step acts on, if one.
    pub fn vm(&self) -> Option<&str> {
        match self {
            Action::StopVm { vm }
            | Action::StartVm { vm }
            | Action::RemoveTestVm { vm }
            | Action::CommitVm { vm }
            | Action::HaltVm { vm } => Some(vm),
            _ => None,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Preflight => write!(f, "pre-flight checks"),
            Action::Script { command, .. } => write!(f, "script: {command}"),
            Action::Manual { message } => write!(f, "manual step: {message}"),
            Action::StopVm { vm } => write!(f, "stop {vm} at the source"),
            Action::FinalSync { vms } => write!(f, "final sync of {}", vms.join(", ")),
            Action::StartVm { vm } => write!(f, "start {vm}"),
            Action::RemoveTestVm { vm } => write!(f, "remove the test copy of {vm}"),
            Action::CommitVm { vm } => write!(f, "commit {vm}"),
            Action::HaltVm { vm } => write!(f, "stop {vm} for the capture"),
            Action::StartCapture { vms } => {
                write!(f, "capture {} and replicate home", vms.join(", "))
            }
            Action::StopCapture { vms } => write!(f, "stop the capture of {}", vms.join(", ")),
        }
    }
}

/// A step and the batch it belongs to: the steps of one batch run together, batches in
/// order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub batch: usize,
    pub action: Action,
}

/// The steps of `operation` on `plan`, in order.
pub fn steps(plan: &Plan, operation: Operation) -> Vec<Step> {
    let mut batches: Vec<Vec<Action>> = Vec::new();
    let groups = &plan.groups;
    let each = |group: &Vec<String>, make: &dyn Fn(String) -> Action| {
        group.iter().cloned().map(make).collect::<Vec<_>>()
    };
    match operation {
        Operation::Failover | Operation::PlannedFailover | Operation::TestFailover => {
            batches.push(vec![Action::Preflight]);
            if operation == Operation::PlannedFailover {
                for group in groups.iter().rev() {
                    batches.push(each(group, &|vm| Action::StopVm { vm }));
                }
                let vms: Vec<String> = groups.iter().flatten().cloned().collect();
                batches.push(vec![Action::FinalSync { vms: vms.clone() }]);
                batches.push(vec![Action::StopCapture { vms }]);
            }
            for (index, group) in groups.iter().enumerate() {
                let number = index + 1;
                push_actions(&mut batches, plan, ActionPosition::Before(number));
                batches.push(each(group, &|vm| Action::StartVm { vm }));
                push_actions(&mut batches, plan, ActionPosition::After(number));
            }
        }
        Operation::Cleanup => {
            for group in groups.iter().rev() {
                batches.push(each(group, &|vm| Action::RemoveTestVm { vm }));
            }
        }
        Operation::Reprotect => {
            batches.push(vec![Action::Preflight]);
            for group in groups.iter().rev() {
                batches.push(each(group, &|vm| Action::HaltVm { vm }));
            }
            batches.push(vec![Action::StartCapture {
                vms: groups.iter().flatten().cloned().collect(),
            }]);
            for group in groups {
                batches.push(each(group, &|vm| Action::StartVm { vm }));
            }
        }
        Operation::Commit => {
            batches.push(
                groups
                    .iter()
                    .flatten()
                    .cloned()
                    .map(|vm| Action::CommitVm { vm })
                    .collect(),
            );
        }
    }
    batches
        .into_iter()
        .enumerate()
        .flat_map(|(batch, actions)| {
            actions
                .into_iter()
                .map(move |action| Step { batch, action })
        })
        .collect()
}

/// The plan's scripts and manual steps at `position`, each a batch of its own.
fn push_actions(batches: &mut Vec<Vec<Action>>, plan: &Plan, position: ActionPosition) {
    for action in plan.actions.iter().filter(|a| a.position == position) {
        batches.push(vec![match &action.what {
            ActionKind::Script {
                command,
                timeout_seconds,
            } => Action::Script {
                command: command.clone(),
                timeout_seconds: *timeout_seconds,
            },
            ActionKind::Manual { message } => Action::Manual {
                message: message.clone(),
            },
        }]);
    }
}

#[cfg(test)]
mod tests {
    use lifeboat_config::PlanAction;

    use super::*;

    fn shop() -> Plan {
        Plan {
            name: "shop".to_string(),
            groups: vec![
                vec!["db1".to_string()],
                vec!["web1".to_string(), "web2".to_string()],
            ],
            max_point_age_seconds: None,
            actions: vec![
                PlanAction {
                    position: ActionPosition::After(1),
                    what: ActionKind::Script {
                        command: "check-db".to_string(),
                        timeout_seconds: 30,
                    },
                },
                PlanAction {
                    position: ActionPosition::After(1),
                    what: ActionKind::Manual {
                        message: "look at the database".to_string(),
                    },
                },
                PlanAction {
                    position: ActionPosition::Before(2),
                    what: ActionKind::Script {
                        command: "warm-cache".to_string(),
                        timeout_seconds: 5,
                    },
                },
            ],
        }
    }

    fn render(steps: &[Step]) -> Vec<String> {
        steps
            .iter()
            .map(|s| format!("{} {}", s.batch, s.action))
            .collect()
    }

    #[test]
    fn a_failover_brings_groups_up_in_order_with_their_actions() {
        assert_eq!(
            render(&steps(&shop(), Operation::Failover)),
            [
                "0 pre-flight checks",
                "1 start db1",
                "2 script: check-db",
                "3 manual step: look at the database",
                "4 script: warm-cache",
                "5 start web1",
                "5 start web2",
            ]
        );
        assert_eq!(
            steps(&shop(), Operation::TestFailover),
            steps(&shop(), Operation::Failover)
        );
    }

    #[test]
    fn a_planned_failover_stops_the_source_last_group_first_and_syncs_before_starting() {
        assert_eq!(
            render(&steps(&shop(), Operation::PlannedFailover))[..5],
            [
                "0 pre-flight checks",
                "1 stop web1 at the source",
                "1 stop web2 at the source",
                "2 stop db1 at the source",
                "3 final sync of db1, web1, web2",
            ]
        );
        assert_eq!(
            render(&steps(&shop(), Operation::PlannedFailover))
                .last()
                .unwrap(),
            "9 start web2"
        );
    }

    #[test]
    fn reprotect_restarts_every_vm_on_one_capture_last_group_stopped_first() {
        assert_eq!(
            render(&steps(&shop(), Operation::Reprotect)),
            [
                "0 pre-flight checks",
                "1 stop web1 for the capture",
                "1 stop web2 for the capture",
                "2 stop db1 for the capture",
                "3 capture db1, web1, web2 and replicate home",
                "4 start db1",
                "5 start web1",
                "5 start web2",
            ]
        );
    }

    #[test]
    fn cleanup_removes_test_copies_last_group_first_and_commit_takes_every_vm() {
        assert_eq!(
            render(&steps(&shop(), Operation::Cleanup)),
            [
                "0 remove the test copy of web1",
                "0 remove the test copy of web2",
                "1 remove the test copy of db1",
            ]
        );
        assert_eq!(
            render(&steps(&shop(), Operation::Commit)),
            ["0 commit db1", "0 commit web1", "0 commit web2"]
        );
    }
}
