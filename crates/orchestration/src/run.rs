//! On-disk format of a run's journal, `<state>/runs/<id>.json`, and the runner that
//! executes it.
//!
//! The record is replaced whole (temporary file, fsync, rename, fsync of the directory)
//! before a step starts and after it ends, so after a crash it says exactly which steps
//! finished. Running it again skips those and runs the rest, the interrupted step
//! included: executors make every step idempotent (starting a VM that runs already
//! restarts it from the same point; stopping a stopped VM does nothing).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::audit::{AuditEvent, AuditLog, actor, now};
use crate::steps::{Action, Operation, Step};
use crate::{OrchestrationError, Result};

pub const FORMAT: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunState {
    /// Steps are running, or the orchestrator was killed while they did.
    Running,
    /// At a manual step, until `lifeboat plan continue`.
    Waiting,
    /// A step failed; `lifeboat plan continue` runs it again.
    Failed,
    Succeeded,
    /// Given up by `lifeboat plan abandon`: what it did stays, a new run may start.
    Abandoned,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepState {
    Pending,
    Running,
    Waiting,
    Done,
    Failed,
}

/// One step of a run and how it went.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    pub batch: usize,
    #[serde(flatten)]
    pub action: Action,
    pub state: StepState,
    pub started: Option<String>,
    pub finished: Option<String>,
    /// What the step reported, or why it failed.
    pub detail: Option<String>,
}

/// The journal of one run of an operation on a plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    pub format: u32,
    /// `<time>-<plan>-<operation>`, unique per state directory.
    pub id: String,
    pub plan: String,
    pub operation: Operation,
    /// The region the plan's VMs go to (for cleanup and commit: where they went).
    pub region: String,
    /// The executor's options (point choice, instant disks, …), kept so a resumed run
    /// does the same.
    pub options: serde_json::Value,
    /// Who started it.
    pub actor: String,
    pub started: String,
    pub updated: String,
    pub state: RunState,
    pub steps: Vec<StepRecord>,
}

impl RunRecord {
    pub fn new(
        plan: &str,
        operation: Operation,
        region: &str,
        options: serde_json::Value,
        steps: Vec<Step>,
    ) -> RunRecord {
        let time = chrono::Utc::now();
        RunRecord {
            format: FORMAT,
            id: format!(
                "{}-{plan}-{}",
                time.format("%Y%m%dT%H%M%S%.3fZ"),
                operation.as_str()
            ),
            plan: plan.to_string(),
            operation,
            region: region.to_string(),
            options,
            actor: actor(),
            started: now(),
            updated: now(),
            state: RunState::Running,
            steps: steps
                .into_iter()
                .map(|step| StepRecord {
                    batch: step.batch,
                    action: step.action,
                    state: StepState::Pending,
                    started: None,
                    finished: None,
                    detail: None,
                })
                .collect(),
        }
    }

    fn directory(state_directory: &Path) -> PathBuf {
        state_directory.join("runs")
    }

    /// Where this run's scripts leave their output.
    pub fn log_directory(&self, state_directory: &Path) -> PathBuf {
        Self::directory(state_directory).join(&self.id)
    }

    /// Replaces the record durably.
    pub fn save(&mut self, state_directory: &Path) -> Result<()> {
        self.updated = now();
        let directory = Self::directory(state_directory);
        let path = directory.join(format!("{}.json", self.id));
        let temporary = directory.join(format!(".{}.json.tmp", self.id));
        let failed = |source| OrchestrationError::State {
            what: "write",
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&directory).map_err(failed)?;
        let bytes = serde_json::to_vec_pretty(self).expect("run records serialize");
        std::fs::File::create(&temporary)
            .and_then(|mut file| file.write_all(&bytes).and_then(|()| file.sync_all()))
            .and_then(|()| std::fs::rename(&temporary, &path))
            .and_then(|()| std::fs::File::open(&directory)?.sync_all())
            .map_err(failed)
    }

    /// Every run recorded in `state_directory`, oldest first.
    pub fn list(state_directory: &Path) -> Result<Vec<RunRecord>> {
        let directory = Self::directory(state_directory);
        let entries = match std::fs::read_dir(&directory) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(OrchestrationError::State {
                    what: "list",
                    path: directory,
                    source,
                });
            }
        };
        let mut runs = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.ends_with(".json") || name.starts_with('.') {
                continue;
            }
            let bytes = std::fs::read(&path).map_err(|source| OrchestrationError::State {
                what: "read",
                path: path.clone(),
                source,
            })?;
            let run: RunRecord =
                serde_json::from_slice(&bytes).map_err(|e| OrchestrationError::Corrupt {
                    path: path.clone(),
                    detail: e.to_string(),
                })?;
            runs.push(run);
        }
        runs.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(runs)
    }

    /// The newest run of `plan`, if any.
    pub fn latest(state_directory: &Path, plan: &str) -> Result<Option<RunRecord>> {
        Ok(Self::list(state_directory)?
            .into_iter()
            .rev()
            .find(|run| run.plan == plan))
    }

    /// The newest run of `plan` that has not finished, if any: neither succeeded nor
    /// abandoned, nor failed before doing anything (at its pre-flight checks).
    pub fn unfinished(state_directory: &Path, plan: &str) -> Result<Option<RunRecord>> {
        Ok(Self::latest(state_directory, plan)?.filter(|run| {
            let did_nothing = run.state == RunState::Failed
                && run
                    .steps
                    .iter()
                    .all(|s| s.action == Action::Preflight || s.state == StepState::Pending);
            !did_nothing && !matches!(run.state, RunState::Succeeded | RunState::Abandoned)
        }))
    }
}

/// The outcome of running a run as far as it goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    /// Stopped at a manual step showing this message.
    Waiting {
        message: String,
    },
}

/// Carries out the steps that touch VMs, points and DNS.
pub trait Executor: Sync {
    /// Does `action` for `run`; Ok with what to record, Err with why it failed. Must be
    /// idempotent: it may be called again for a step that was interrupted.
    fn execute(&self, run: &RunRecord, action: &Action) -> Result<String, String>;

    /// Called as each step starts and ends, for progress output.
    fn report(&self, _run: &RunRecord, _index: usize) {}
}

/// Runs runs of one plan, holding its lock.
pub struct Runner {
    state_directory: PathBuf,
    /// Where scripts run (the configuration file's directory).
    script_directory: PathBuf,
    audit: AuditLog,
    /// The advisory lock on `<state>/runs/<plan>.lock`, released when dropped (or when the
    /// process dies).
    _lock: std::fs::File,
}

impl Runner {
    /// Takes the lock of `plan`, or says who holds it.
    pub fn lock(state_directory: &Path, plan: &str) -> Result<Runner> {
        let directory = RunRecord::directory(state_directory);
        let path = directory.join(format!("{plan}.lock"));
        let failed = |source| OrchestrationError::State {
            what: "lock",
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&directory).map_err(failed)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(failed)?;
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a file descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(OrchestrationError::Busy {
                plan: plan.to_string(),
                path,
            });
        }
        Ok(Runner {
            state_directory: state_directory.to_path_buf(),
            script_directory: state_directory.to_path_buf(),
            audit: AuditLog::new(state_directory),
            _lock: file,
        })
    }

    /// Scripts run in `directory` (by default the state directory).
    pub fn scripts_in(mut self, directory: &Path) -> Runner {
        self.script_directory = directory.to_path_buf();
        self
    }

    /// Records an event of `run` in the audit log.
    pub fn audit(
        &self,
        run: &RunRecord,
        step: Option<usize>,
        event: &str,
        detail: Option<String>,
    ) -> Result<()> {
        self.audit.append(&AuditEvent {
            time: now(),
            actor: actor(),
            run: run.id.clone(),
            plan: run.plan.clone(),
            operation: run.operation.as_str().to_string(),
            step,
            what: step.map_or_else(
                || {
                    format!(
                        "{} of plan {} to {}",
                        run.operation.as_str(),
                        run.plan,
                        run.region
                    )
                },
                |index| run.steps[index].action.to_string(),
            ),
            event: event.to_string(),
            detail,
        })
    }

    /// Starts a new run: saves it and records who started it.
    pub fn begin(&self, run: &mut RunRecord) -> Result<()> {
        run.save(&self.state_directory)?;
        self.audit(run, None, "run-started", None)
    }

    /// Gives `run` up.
    pub fn abandon(&self, run: &mut RunRecord) -> Result<()> {
        run.state = RunState::Abandoned;
        run.save(&self.state_directory)?;
        self.audit(run, None, "run-abandoned", None)
    }

    /// Marks the manual step `run` waits at as done by whoever runs this.
    pub fn acknowledge(&self, run: &mut RunRecord) -> Result<bool> {
        let Some(index) = run.steps.iter().position(|s| s.state == StepState::Waiting) else {
            return Ok(false);
        };
        let step = &mut run.steps[index];
        step.state = StepState::Done;
        step.finished = Some(now());
        step.detail = Some(format!("continued by {}", actor()));
        run.state = RunState::Running;
        run.save(&self.state_directory)?;
        self.audit(run, Some(index), "continued", None)?;
        Ok(true)
    }

    /// Runs every step not yet done, batch by batch, until the end, a manual step or a
    /// failure.
    pub fn run(&self, run: &mut RunRecord, executor: &dyn Executor) -> Result<Outcome> {
        if run.state != RunState::Running {
            run.state = RunState::Running;
            run.save(&self.state_directory)?;
        }
        let batches = run.steps.iter().map(|s| s.batch).max().map_or(0, |b| b + 1);
        for batch in 0..batches {
            let todo: Vec<usize> = (0..run.steps.len())
                .filter(|&i| run.steps[i].batch == batch && run.steps[i].state != StepState::Done)
                .collect();
            if todo.is_empty() {
                continue;
            }
            if let Some(&index) = todo
                .iter()
                .find(|&&i| matches!(run.steps[i].action, Action::Manual { .. }))
            {
                let Action::Manual { message } = run.steps[index].action.clone() else {
                    unreachable!("found as manual");
                };
                let step = &mut run.steps[index];
                if step.state != StepState::Waiting {
                    step.state = StepState::Waiting;
                    step.started = Some(now());
                }
                run.state = RunState::Waiting;
                run.save(&self.state_directory)?;
                self.audit(run, Some(index), "waiting", Some(message.clone()))?;
                executor.report(run, index);
                return Ok(Outcome::Waiting { message });
            }
            for &index in &todo {
                let step = &mut run.steps[index];
                step.state = StepState::Running;
                step.started = Some(now());
                step.finished = None;
                step.detail = None;
            }
            run.save(&self.state_directory)?;
            for &index in &todo {
                self.audit(run, Some(index), "started", None)?;
                executor.report(run, index);
            }
            let shared = Mutex::new(&mut *run);
            let snapshot = shared.lock().expect("run lock").clone();
            let results: Vec<(usize, Result<String, String>)> = std::thread::scope(|scope| {
                let handles: Vec<_> = todo
                    .iter()
                    .map(|&index| {
                        let snapshot = &snapshot;
                        scope.spawn(move || (index, self.execute_step(snapshot, index, executor)))
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|handle| handle.join().expect("a step panicked"))
                    .collect()
            });
            let run = shared.into_inner().expect("run lock");
            let mut failure = None;
            for (index, result) in results {
                let step = &mut run.steps[index];
                step.finished = Some(now());
                let (state, event, detail) = match result {
                    Ok(detail) => (StepState::Done, "done", detail),
                    Err(detail) => (StepState::Failed, "failed", detail),
                };
                step.state = state;
                step.detail = Some(detail.clone());
                if state == StepState::Failed && failure.is_none() {
                    failure = Some((index, detail.clone()));
                }
                run.save(&self.state_directory)?;
                self.audit(run, Some(index), event, Some(detail))?;
                executor.report(run, index);
            }
            if let Some((index, detail)) = failure {
                run.state = RunState::Failed;
                run.save(&self.state_directory)?;
                self.audit(run, None, "run-failed", Some(detail.clone()))?;
                return Err(OrchestrationError::StepFailed {
                    run: run.id.clone(),
                    plan: run.plan.clone(),
                    index,
                    step: run.steps[index].action.to_string(),
                    detail,
                });
            }
        }
        run.state = RunState::Succeeded;
        run.save(&self.state_directory)?;
        self.audit(run, None, "run-finished", None)?;
        Ok(Outcome::Succeeded)
    }

    fn execute_step(
        &self,
        run: &RunRecord,
        index: usize,
        executor: &dyn Executor,
    ) -> Result<String, String> {
        match &run.steps[index].action {
            Action::Script {
                command,
                timeout_seconds,
            } => crate::script::run_script(
                command,
                std::time::Duration::from_secs(*timeout_seconds),
                &self.script_directory,
                &[
                    ("LIFEBOAT_PLAN", run.plan.as_str()),
                    ("LIFEBOAT_OPERATION", run.operation.as_str()),
                    ("LIFEBOAT_REGION", run.region.as_str()),
                    ("LIFEBOAT_RUN", run.id.as_str()),
                ],
                &run.log_directory(&self.state_directory)
                    .join(format!("step-{index}.log")),
            ),
            action => executor.execute(run, action),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use lifeboat_config::{ActionKind, ActionPosition, Plan, PlanAction};

    use super::*;
    use crate::steps::steps;

    struct Recorder {
        calls: Mutex<Vec<String>>,
        fail_on: Option<&'static str>,
        running: AtomicUsize,
        most_running: AtomicUsize,
    }

    impl Recorder {
        fn new(fail_on: Option<&'static str>) -> Recorder {
            Recorder {
                calls: Mutex::new(Vec::new()),
                fail_on,
                running: AtomicUsize::new(0),
                most_running: AtomicUsize::new(0),
            }
        }
    }

    impl Executor for Recorder {
        fn execute(&self, _run: &RunRecord, action: &Action) -> Result<String, String> {
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_running.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(50));
            self.running.fetch_sub(1, Ordering::SeqCst);
            self.calls.lock().unwrap().push(action.to_string());
            if self.fail_on.is_some() && self.fail_on == action.vm() {
                return Err("no point".to_string());
            }
            Ok("ok".to_string())
        }
    }

    fn plan() -> Plan {
        Plan {
            name: "shop".to_string(),
            groups: vec![
                vec!["db1".to_string()],
                vec!["web1".to_string(), "web2".to_string()],
            ],
            max_point_age_seconds: None,
            actions: vec![PlanAction {
                position: ActionPosition::After(1),
                what: ActionKind::Manual {
                    message: "check db1".to_string(),
                },
            }],
        }
    }

    fn new_run(state: &Path) -> RunRecord {
        RunRecord::new(
            "shop",
            Operation::Failover,
            "east",
            serde_json::json!({}),
            steps(&plan(), Operation::Failover),
        )
        .tap_save(state)
    }

    trait TapSave {
        fn tap_save(self, state: &Path) -> Self;
    }

    impl TapSave for RunRecord {
        fn tap_save(mut self, state: &Path) -> Self {
            self.save(state).unwrap();
            self
        }
    }

    #[test]
    fn a_run_waits_at_a_manual_step_then_runs_a_group_in_parallel_and_is_audited() {
        let state = tempfile::tempdir().unwrap();
        let runner = Runner::lock(state.path(), "shop").unwrap();
        let mut run = new_run(state.path());
        runner.begin(&mut run).unwrap();
        let executor = Recorder::new(None);
        assert_eq!(
            runner.run(&mut run, &executor).unwrap(),
            Outcome::Waiting {
                message: "check db1".to_string()
            }
        );
        assert_eq!(
            *executor.calls.lock().unwrap(),
            ["pre-flight checks", "start db1"]
        );
        // What is on disk says the same, and a second runner is refused meanwhile.
        let saved = RunRecord::unfinished(state.path(), "shop")
            .unwrap()
            .unwrap();
        assert_eq!(saved.state, RunState::Waiting);
        assert!(matches!(
            Runner::lock(state.path(), "shop"),
            Err(OrchestrationError::Busy { .. })
        ));
        // Running again without acknowledging still waits.
        assert!(matches!(
            runner.run(&mut run, &executor).unwrap(),
            Outcome::Waiting { .. }
        ));
        assert!(runner.acknowledge(&mut run).unwrap());
        assert_eq!(runner.run(&mut run, &executor).unwrap(), Outcome::Succeeded);
        assert_eq!(executor.calls.lock().unwrap().len(), 4);
        assert_eq!(
            executor.most_running.load(Ordering::SeqCst),
            2,
            "web1 and web2 together"
        );
        let events: Vec<String> = AuditLog::new(state.path())
            .read()
            .unwrap()
            .iter()
            .map(|e| format!("{} {}", e.event, e.what))
            .collect();
        assert_eq!(
            events.first().unwrap(),
            "run-started failover of plan shop to east"
        );
        assert!(events.contains(&"continued manual step: check db1".to_string()));
        assert!(events.contains(&"done start web2".to_string()));
        assert_eq!(
            events.last().unwrap(),
            "run-finished failover of plan shop to east"
        );
        assert!(
            RunRecord::unfinished(state.path(), "shop")
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn an_interrupted_or_failed_run_resumes_at_the_step_that_did_not_finish() {
        let state = tempfile::tempdir().unwrap();
        let mut run = new_run(state.path());
        // As if killed while starting db1: pre-flight done, db1 running.
        run.steps[0].state = StepState::Done;
        run.steps[1].state = StepState::Running;
        run.save(state.path()).unwrap();
        let runner = Runner::lock(state.path(), "shop").unwrap();
        let mut resumed = RunRecord::unfinished(state.path(), "shop")
            .unwrap()
            .unwrap();
        let executor = Recorder::new(Some("web2"));
        runner.run(&mut resumed, &executor).unwrap();
        assert_eq!(
            *executor.calls.lock().unwrap(),
            ["start db1"],
            "pre-flight not run again"
        );
        runner.acknowledge(&mut resumed).unwrap();
        let error = runner.run(&mut resumed, &executor).unwrap_err().to_string();
        assert!(
            error.contains("start web2") && error.contains("no point"),
            "{error}"
        );
        assert!(error.contains("lifeboat plan continue shop"), "{error}");
        assert_eq!(resumed.state, RunState::Failed);
        let fixed = Recorder::new(None);
        assert_eq!(
            runner.run(&mut resumed, &fixed).unwrap(),
            Outcome::Succeeded
        );
        assert_eq!(
            *fixed.calls.lock().unwrap(),
            ["start web2"],
            "web1 was done"
        );
    }
}
