//! `lifeboat failover`, `cleanup` and `commit`: runs of a recovery plan (or of one VM, a
//! plan of its own called `vm:NAME`), journaled and audited by `lifeboat-orchestration`,
//! carried out by [`crate::orchestrator`].
//!
//! A failover starts the plan's VMs in another region from recovery points there, group by
//! group, with the plan's scripts and manual steps between; each VM is recorded as placed
//! there with a new epoch, which `lifeboat dns serve` and `dns push` follow. `--test`
//! starts isolated copies instead (test network, DNS test view), removed by `cleanup`;
//! `--planned` stops the source first and waits for its last writes. `commit` makes a
//! failover final.

use std::time::Instant;

use anyhow::{Context, bail};
use lifeboat_config::{Config, Plan};
use lifeboat_orchestration::{
    AuditEvent, AuditLog, Operation, Outcome, RunRecord, RunState, Runner, steps,
};
use serde_json::{Value, json};

use crate::cli::{FailoverArguments, GlobalOptions, Target, TargetArguments};
use crate::orchestrator::{PlanExecutor, RunOptions, declared_vm, vm_home};
use crate::output::print_json;
use crate::placement::Placements;
use crate::repository::required_config;

/// The plan a target names: a declared plan, or `vm:NAME` for one VM alone.
pub fn target_plan(config: &Config, name: &str) -> anyhow::Result<Plan> {
    if let Some(vm) = name.strip_prefix("vm:") {
        declared_vm(config, vm)?;
        return Ok(Plan {
            name: name.to_string(),
            groups: vec![vec![vm.to_string()]],
            max_point_age_seconds: None,
            actions: Vec::new(),
        });
    }
    config
        .plans
        .iter()
        .find(|plan| plan.name == name)
        .cloned()
        .with_context(|| format!("{} declares no plan '{name}'", config.path.display()))
}

fn plan_of(config: &Config, target: &Target) -> anyhow::Result<Plan> {
    match (&target.plan, &target.vm) {
        (Some(plan), _) => target_plan(config, plan),
        (None, Some(vm)) => target_plan(config, &format!("vm:{vm}")),
        (None, None) => bail!("name a plan (--plan) or a VM (--vm)"),
    }
}

/// A new run of `operation` on `plan` towards `region`, with `options` kept in its record.
fn new_run(plan: &Plan, operation: Operation, region: &str, options: &RunOptions) -> RunRecord {
    RunRecord::new(
        &plan.name,
        operation,
        region,
        serde_json::to_value(options).expect("options serialize"),
        steps(plan, operation),
    )
}

pub fn run(global: &GlobalOptions, arguments: &FailoverArguments) -> anyhow::Result<u8> {
    let config = required_config(global)?;
    let plan = plan_of(&config, &arguments.target)?;
    config.region(&arguments.to)?;
    let operation = if arguments.test {
        Operation::TestFailover
    } else if arguments.planned {
        Operation::PlannedFailover
    } else {
        Operation::Failover
    };
    let options = RunOptions {
        point: arguments.point.clone(),
        at: arguments.at,
        instant: arguments.instant,
        grace_seconds: arguments.grace,
    };
    if !matches!(options.point.as_str(), "latest" | "processed" | "app")
        && plan.groups.iter().flatten().count() > 1
    {
        bail!(
            "a point id names one VM's point: give --vm, or --point latest|processed|app|--at TIME for plan '{}'",
            plan.name
        );
    }
    let run = new_run(&plan, operation, &arguments.to, &options);
    if arguments.dry_run {
        return dry_run(global, &config, &plan, run, options);
    }
    execute(global, &config, &plan, run, true)
}

/// Pre-flight checks and the steps, printed; nothing done.
fn dry_run(
    global: &GlobalOptions,
    config: &Config,
    plan: &Plan,
    run: RunRecord,
    options: RunOptions,
) -> anyhow::Result<u8> {
    let executor = PlanExecutor {
        global,
        config,
        plan,
        options,
    };
    let checks = executor.preflight(&run);
    let (ok, checks) = match checks {
        Ok(passed) => (true, passed),
        Err(error) => (false, vec![format!("{error:#}")]),
    };
    AuditLog::new(&config.state_directory).append(&AuditEvent {
        time: lifeboat_orchestration::audit::now(),
        actor: run.actor.clone(),
        run: run.id.clone(),
        plan: run.plan.clone(),
        operation: run.operation.as_str().to_string(),
        step: None,
        what: format!(
            "dry run of {} of plan {} to {}",
            run.operation.as_str(),
            run.plan,
            run.region
        ),
        event: "dry-run".to_string(),
        detail: Some(checks.join("; ")),
    })?;
    if global.json {
        print_json(&json!({
            "plan": run.plan,
            "operation": run.operation,
            "region": run.region,
            "dry_run": true,
            "ready": ok,
            "checks": checks,
            "steps": run.steps,
        }))?;
    } else {
        say!(
            "{} of plan '{}' to '{}' — dry run, nothing done",
            run.operation.as_str(),
            run.plan,
            run.region
        );
        for check in &checks {
            say!("  {} {check}", if ok { "ok" } else { "FAILED" });
        }
        say!("It would run:");
        for step in &run.steps {
            say!("  [{}] {}", step.batch, step.action);
        }
    }
    Ok(if ok { 0 } else { 1 })
}

/// Runs `run` (new, or `resume`d) to its end, a manual step or a failure, and reports.
fn execute(
    global: &GlobalOptions,
    config: &Config,
    plan: &Plan,
    run: RunRecord,
    new: bool,
) -> anyhow::Result<u8> {
    let started = Instant::now();
    let (operation, region) = (run.operation, run.region.clone());
    let (outcome, report) = execute_run(global, config, plan, run, new)?;
    if global.json {
        print_json(&report)?;
    }
    match outcome {
        Ok(Outcome::Succeeded) => {
            if !global.json {
                say!(
                    "{} of plan '{}' to '{region}' done in {:.1} s",
                    operation.as_str(),
                    plan.name,
                    started.elapsed().as_secs_f64()
                );
            }
            Ok(0)
        }
        Ok(Outcome::Waiting { message }) => {
            if !global.json {
                say!(
                    "Waiting for a manual step: {message}\nWhen it is done, run: lifeboat plan continue {}",
                    plan.name
                );
            }
            Ok(3)
        }
        Err(error) => Err(error.into()),
    }
}

/// Runs (or resumes, unless `new`) `run` under the plan's lock; how it ended and its
/// report.
fn execute_run(
    global: &GlobalOptions,
    config: &Config,
    plan: &Plan,
    mut run: RunRecord,
    new: bool,
) -> anyhow::Result<(lifeboat_orchestration::Result<Outcome>, Value)> {
    let started = Instant::now();
    let runner = Runner::lock(&config.state_directory, &plan.name)?.scripts_in(config.directory());
    if new {
        if let Some(unfinished) = RunRecord::unfinished(&config.state_directory, &plan.name)? {
            bail!(
                "run {} ({} of plan '{}' to '{}') is {:?} and not finished: go on with `lifeboat plan continue {}`, or give it up with `lifeboat plan abandon {}`",
                unfinished.id,
                unfinished.operation.as_str(),
                plan.name,
                unfinished.region,
                unfinished.state,
                plan.name,
                plan.name
            );
        }
        runner.begin(&mut run)?;
    }
    let options: RunOptions = serde_json::from_value(run.options.clone())
        .with_context(|| format!("run {} has options this lifeboat cannot read", run.id))?;
    let executor = PlanExecutor {
        global,
        config,
        plan,
        options,
    };
    if !global.json {
        tell!(
            "{} of plan '{}' to '{}' (run {})",
            run.operation.as_str(),
            plan.name,
            run.region,
            run.id
        );
    }
    let outcome = runner.run(&mut run, &executor);
    let report = report(config, plan, &run, started.elapsed().as_secs_f64())?;
    Ok((outcome, report))
}

/// `lifeboat drill`: a test failover of a plan, its copies kept running for `--keep`
/// seconds, then cleaned up; passed only when both succeeded. For schedules.
pub fn drill(global: &GlobalOptions, arguments: &crate::cli::DrillArguments) -> anyhow::Result<u8> {
    let config = required_config(global)?;
    let plan = plan_of(&config, &arguments.target)?;
    config.region(&arguments.to)?;
    let started = Instant::now();
    let options = RunOptions {
        point: arguments.point.clone(),
        instant: arguments.instant,
        ..RunOptions::default()
    };
    let run = new_run(&plan, Operation::TestFailover, &arguments.to, &options);
    let (outcome, failover) = execute_run(global, &config, &plan, run, true)?;
    let failover_error = match &outcome {
        Ok(Outcome::Succeeded) => None,
        Ok(Outcome::Waiting { message }) => Some(format!(
            "the drill stops at a manual step ({message}): drills run plans without manual steps"
        )),
        Err(error) => Some(error.to_string()),
    };
    if failover_error.is_some() {
        // The run would wait for good at a manual step, or be continued by hand after a
        // failure: a drill gives it up, then cleans up what it started.
        let runner = Runner::lock(&config.state_directory, &plan.name)?;
        if let Some(mut unfinished) = RunRecord::unfinished(&config.state_directory, &plan.name)? {
            runner.abandon(&mut unfinished)?;
        }
    } else {
        std::thread::sleep(std::time::Duration::from_secs(arguments.keep));
    }
    let (cleanup_error, cleanup) = if test_region(&config, &plan)?.is_some() {
        let run = new_run(
            &plan,
            Operation::Cleanup,
            &arguments.to,
            &RunOptions::default(),
        );
        let (outcome, report) = execute_run(global, &config, &plan, run, true)?;
        (outcome.err().map(|e| e.to_string()), report)
    } else {
        (None, Value::Null)
    };
    let passed = failover_error.is_none() && cleanup_error.is_none();
    let report = json!({
        "plan": plan.name,
        "region": arguments.to,
        "result": if passed { "passed" } else { "failed" },
        "failover_error": failover_error,
        "cleanup_error": cleanup_error,
        "seconds": started.elapsed().as_secs_f64(),
        "failover": failover,
        "cleanup": cleanup,
    });
    if global.json {
        print_json(&report)?;
    } else {
        say!(
            "drill of plan '{}' in '{}': {} in {:.1} s",
            plan.name,
            arguments.to,
            if passed { "passed" } else { "FAILED" },
            started.elapsed().as_secs_f64()
        );
        for error in [&report["failover_error"], &report["cleanup_error"]] {
            if let Some(error) = error.as_str() {
                say!("  {error}");
            }
        }
    }
    Ok(if passed { 0 } else { 1 })
}

/// What a run did: its steps and where the plan's VMs are now.
fn report(config: &Config, plan: &Plan, run: &RunRecord, seconds: f64) -> anyhow::Result<Value> {
    let placements = Placements::load(&config.state_directory)?;
    let test = matches!(run.operation, Operation::TestFailover | Operation::Cleanup);
    let vms: Vec<Value> = plan
        .groups
        .iter()
        .flatten()
        .filter_map(|vm| {
            let placement = if test {
                placements.tests.get(vm)
            } else {
                placements.vms.get(vm)
            }?;
            let home = vm_home(config, vm, &placement.region, test);
            Some(json!({
                "vm": vm,
                "region": placement.region,
                "epoch": placement.epoch,
                "point": placement.point,
                "since": placement.since,
                "instant": placement.instant,
                "committed": placement.committed,
                "test": test,
                "serial_log": home.join("run").join("serial.log"),
            }))
        })
        .collect();
    let waiting = run.steps.iter().find_map(|s| match (&s.action, s.state) {
        (
            lifeboat_orchestration::Action::Manual { message },
            lifeboat_orchestration::StepState::Waiting,
        ) => Some(message.clone()),
        _ => None,
    });
    Ok(json!({
        "run": run.id,
        "plan": run.plan,
        "operation": run.operation,
        "region": run.region,
        "state": run.state,
        "actor": run.actor,
        "waiting_for": waiting,
        "seconds": seconds,
        "steps": run.steps,
        "vms": vms,
    }))
}

/// The region where test copies of `plan`'s VMs run, if any do.
fn test_region(config: &Config, plan: &Plan) -> anyhow::Result<Option<String>> {
    let placements = Placements::load(&config.state_directory)?;
    Ok(plan
        .groups
        .iter()
        .flatten()
        .find_map(|vm| placements.tests.get(vm))
        .map(|p| p.region.clone()))
}

/// `lifeboat cleanup`: removes the test copies of a plan.
pub fn cleanup(global: &GlobalOptions, arguments: &TargetArguments) -> anyhow::Result<u8> {
    let config = required_config(global)?;
    let plan = plan_of(&config, &arguments.target)?;
    let region = test_region(&config, &plan)?
        .with_context(|| format!("plan '{}' has no test copies to clean up", plan.name))?;
    let run = new_run(&plan, Operation::Cleanup, &region, &RunOptions::default());
    execute(global, &config, &plan, run, true)
}

/// `lifeboat commit`: makes a plan's failover final.
pub fn commit(global: &GlobalOptions, arguments: &TargetArguments) -> anyhow::Result<u8> {
    let config = required_config(global)?;
    let plan = plan_of(&config, &arguments.target)?;
    let region = placed_region(&config, &plan)?;
    let run = new_run(&plan, Operation::Commit, &region, &RunOptions::default());
    execute(global, &config, &plan, run, true)
}

/// Where the plan's VMs run now (after a failover), one region.
fn placed_region(config: &Config, plan: &Plan) -> anyhow::Result<String> {
    let placements = Placements::load(&config.state_directory)?;
    plan.groups
        .iter()
        .flatten()
        .find_map(|vm| placements.vms.get(vm))
        .map(|p| p.region.clone())
        .with_context(|| format!("plan '{}' has not been failed over", plan.name))
}

/// `lifeboat reprotect`: replicates a failed-over plan back home.
pub fn reprotect(
    global: &GlobalOptions,
    arguments: &crate::cli::ReprotectArguments,
) -> anyhow::Result<u8> {
    let config = required_config(global)?;
    let plan = plan_of(&config, &arguments.target)?;
    let region = placed_region(&config, &plan)?;
    let options = RunOptions {
        grace_seconds: arguments.grace,
        ..RunOptions::default()
    };
    let run = new_run(&plan, Operation::Reprotect, &region, &options);
    execute(global, &config, &plan, run, true)
}

/// `lifeboat failback`: a planned failover of a plan to its VMs' home region.
pub fn failback(
    global: &GlobalOptions,
    arguments: &crate::cli::FailbackArguments,
) -> anyhow::Result<u8> {
    let config = required_config(global)?;
    let plan = plan_of(&config, &arguments.target)?;
    placed_region(&config, &plan)?;
    let home = PlanExecutor {
        global,
        config: &config,
        plan: &plan,
        options: RunOptions::default(),
    }
    .home_region()?;
    let options = RunOptions {
        point: "latest".to_string(),
        at: None,
        instant: arguments.instant,
        grace_seconds: arguments.grace,
    };
    let run = new_run(&plan, Operation::PlannedFailover, &home, &options);
    execute(global, &config, &plan, run, true)
}

/// `lifeboat plan continue|abandon|status`.
pub fn plan(global: &GlobalOptions, command: &crate::cli::PlanCommand) -> anyhow::Result<u8> {
    use crate::cli::PlanCommand;
    let config = required_config(global)?;
    match command {
        PlanCommand::Continue(arguments) => {
            let plan = target_plan(&config, &arguments.plan)?;
            let mut run = RunRecord::unfinished(&config.state_directory, &plan.name)?
                .with_context(|| format!("plan '{}' has no unfinished run", plan.name))?;
            {
                let runner = Runner::lock(&config.state_directory, &plan.name)?;
                runner.acknowledge(&mut run)?;
            }
            execute(global, &config, &plan, run, false)
        }
        PlanCommand::Abandon(arguments) => {
            let plan = target_plan(&config, &arguments.plan)?;
            let mut run = RunRecord::unfinished(&config.state_directory, &plan.name)?
                .with_context(|| format!("plan '{}' has no unfinished run", plan.name))?;
            Runner::lock(&config.state_directory, &plan.name)?.abandon(&mut run)?;
            if global.json {
                print_json(&json!({ "run": run.id, "state": run.state }))?;
            } else {
                say!("run {} abandoned", run.id);
            }
            Ok(0)
        }
        PlanCommand::Status(arguments) => {
            let plan = target_plan(&config, &arguments.plan)?;
            let run = RunRecord::latest(&config.state_directory, &plan.name)?
                .with_context(|| format!("plan '{}' has never run", plan.name))?;
            if global.json {
                print_json(&report(&config, &plan, &run, 0.0)?)?;
            } else {
                say!(
                    "run {}: {} of plan '{}' to '{}' by {}, {:?}",
                    run.id,
                    run.operation.as_str(),
                    plan.name,
                    run.region,
                    run.actor,
                    run.state
                );
                for step in &run.steps {
                    say!(
                        "  [{}] {:?} {}{}",
                        step.batch,
                        step.state,
                        step.action,
                        step.detail
                            .as_ref()
                            .map(|d| format!(": {d}"))
                            .unwrap_or_default()
                    );
                }
            }
            Ok(match run.state {
                RunState::Succeeded => 0,
                RunState::Waiting => 3,
                _ => 1,
            })
        }
    }
}

/// `lifeboat audit`.
pub fn audit(global: &GlobalOptions, arguments: &crate::cli::AuditArguments) -> anyhow::Result<u8> {
    let config = required_config(global)?;
    let events: Vec<AuditEvent> = AuditLog::new(&config.state_directory)
        .read()?
        .into_iter()
        .filter(|e| arguments.plan.as_ref().is_none_or(|p| &e.plan == p))
        .collect();
    if global.json {
        print_json(&events)?;
    } else {
        for event in &events {
            say!(
                "{} {} {} {}: {}{}",
                event.time,
                event.actor,
                event.run,
                event.event,
                event.what,
                event
                    .detail
                    .as_ref()
                    .map(|d| format!(" — {d}"))
                    .unwrap_or_default()
            );
        }
    }
    Ok(0)
}

/// `lifeboat vm stop --vm NAME`: stops the VM where its placement says it runs.
pub fn stop(global: &GlobalOptions, arguments: &crate::cli::VmStopArguments) -> anyhow::Result<u8> {
    let config = required_config(global)?;
    let vm = declared_vm(&config, &arguments.vm)?;
    let placements = Placements::load(&config.state_directory)?;
    let region = placements.region_of(&vm.name, &vm.region);
    let home = vm_home(&config, &vm.name, region, false);
    let clean = lifeboat_hypervisor::stop_detached(
        &home.join("run"),
        std::time::Duration::from_secs(arguments.grace),
    )?;
    crate::orchestrator::stop_home(&home)?;
    if global.json {
        print_json(&json!({ "vm": vm.name, "region": region, "clean": clean }))?;
    } else {
        say!(
            "VM '{}' in region '{region}' stopped{}",
            vm.name,
            if clean {
                ""
            } else {
                " (forced: the guest did not power off in time)"
            }
        );
    }
    Ok(0)
}
