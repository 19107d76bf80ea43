//! Who may run what: the role every operation needs, decided by an exhaustive match over
//! the parsed command (no I/O).
//!
//! Reading commands need a reader; commands that change repositories, VMs or DNS, and the
//! audit log, an operator; managing users an admin. Commands that serve for as long as
//! they run (`serve`, `protect`, `receive`, `export`, `dns serve`, and `--follow` of
//! `geo-sync` and `dns push`) are not run on request: they belong in a unit file or a
//! schedule. A new command does not compile until it is given its role here.

use serde::{Deserialize, Serialize};

use crate::command_line::{Command, DnsCommand, PlanCommand, UserCommand, VmCommand};

/// A user's role; ordered: each role may do what the ones before it may.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads: status, points, verify, plan status, DNS records.
    Reader,
    /// Also acts: backs up, restores, forgets, prunes, fails over, cancels jobs.
    Operator,
    /// Also manages users.
    Admin,
}

impl Role {
    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "reader" => Some(Role::Reader),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// "a reader", "an operator", "an admin".
    pub fn with_article(self) -> &'static str {
        match self {
            Role::Reader => "a reader",
            Role::Operator => "an operator",
            Role::Admin => "an admin",
        }
    }
}

/// Why a command is not run on request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotOnRequest {
    #[error("'{0}' serves until stopped: run it as a service or a schedule, not on request")]
    Serves(&'static str),
    #[error("'{0}' is run by Lifeboat itself, not on request")]
    Internal(&'static str),
}

/// The role `command` needs when asked for through the API, or why it is not run there.
pub fn required_role(command: &Command) -> Result<Role, NotOnRequest> {
    use Role::{Admin, Operator, Reader};
    let name = name(command);
    Ok(match command {
        Command::Points(_) | Command::Status(_) | Command::Verify(_) => Reader,
        Command::Plan(PlanCommand::Status(_)) => Reader,
        Command::Dns(DnsCommand::Records(_)) => Reader,
        Command::Init(_)
        | Command::Backup(_)
        | Command::Restore(_)
        | Command::Forget(_)
        | Command::Prune(_)
        | Command::Region(_)
        | Command::Failover(_)
        | Command::Cleanup(_)
        | Command::Commit(_)
        | Command::Reprotect(_)
        | Command::Failback(_)
        | Command::Drill(_)
        | Command::Plan(PlanCommand::Continue(_) | PlanCommand::Abandon(_))
        | Command::Audit(_)
        | Command::Vm(VmCommand::Stop(_)) => Operator,
        Command::GeoSync(arguments) if !arguments.follow => Operator,
        Command::Dns(DnsCommand::Push(arguments)) if !arguments.follow => Operator,
        Command::User(UserCommand::Add(_)) => Admin,
        Command::GeoSync(_)
        | Command::Dns(DnsCommand::Push(_) | DnsCommand::Serve(_))
        | Command::Serve(_)
        | Command::Protect(_)
        | Command::Receive(_)
        | Command::Export(_) => return Err(NotOnRequest::Serves(name)),
        Command::Vm(VmCommand::Hydrate(_)) => return Err(NotOnRequest::Internal(name)),
    })
}

/// The command's name as typed: `points`, `plan continue`, `dns push`.
pub fn name(command: &Command) -> &'static str {
    match command {
        Command::Init(_) => "init",
        Command::Backup(_) => "backup",
        Command::Points(_) => "points",
        Command::Restore(_) => "restore",
        Command::Verify(_) => "verify",
        Command::Forget(_) => "forget",
        Command::Prune(_) => "prune",
        Command::Export(_) => "export",
        Command::GeoSync(_) => "geo-sync",
        Command::Status(_) => "status",
        Command::Region(crate::command_line::RegionCommand::Failover(_)) => "region failover",
        Command::Region(crate::command_line::RegionCommand::Reprotect(_)) => "region reprotect",
        Command::Protect(_) => "protect",
        Command::Receive(_) => "receive",
        Command::Dns(DnsCommand::Serve(_)) => "dns serve",
        Command::Dns(DnsCommand::Records(_)) => "dns records",
        Command::Dns(DnsCommand::Push(_)) => "dns push",
        Command::Failover(_) => "failover",
        Command::Cleanup(_) => "cleanup",
        Command::Commit(_) => "commit",
        Command::Reprotect(_) => "reprotect",
        Command::Failback(_) => "failback",
        Command::Drill(_) => "drill",
        Command::Plan(PlanCommand::Continue(_)) => "plan continue",
        Command::Plan(PlanCommand::Abandon(_)) => "plan abandon",
        Command::Plan(PlanCommand::Status(_)) => "plan status",
        Command::Audit(_) => "audit",
        Command::Vm(VmCommand::Stop(_)) => "vm stop",
        Command::Vm(VmCommand::Hydrate(_)) => "vm hydrate",
        Command::Serve(_) => "serve",
        Command::User(UserCommand::Add(_)) => "user add",
    }
}
