//! Which `lifeboat` commands the API runs, and the role each needs (decided without I/O).
//!
//! The API runs any command a user could type, as a job on a node (`POST /api/jobs`), so
//! the remote CLI and the dashboard can do what the local CLI does. Reading commands need
//! a reader; commands that change repositories, VMs or DNS, and the audit log (as
//! `/api/audit`), an operator; managing users an admin. Commands that serve for as long as they run (`serve`, `protect`, `receive`,
//! `export`, `dns serve`) are not run on request: they belong in a unit file or a
//! schedule.

use crate::users::Role;

/// The role `command` (arguments without the program) needs, or why it is not run.
pub fn required_role(command: &[String]) -> Result<Role, String> {
    if let Some(option) = command.iter().find(|a| names_local_file(a)) {
        return Err(format!(
            "{option} is not taken through the API: the daemon uses its own configuration and password"
        ));
    }
    let words = words(command);
    let Some(&first) = words.first() else {
        return Err("give a command, e.g. [\"points\", \"--vm\", \"db1\"]".to_string());
    };
    let second = words.get(1).copied().unwrap_or("");
    match (first, second) {
        ("points" | "status" | "verify", _) | ("plan", "status") | ("dns", "records") => {
            Ok(Role::Reader)
        }
        (
            "backup" | "restore" | "forget" | "prune" | "geo-sync" | "failover" | "cleanup"
            | "commit" | "reprotect" | "failback" | "init" | "drill" | "audit",
            _,
        )
        | ("region", _)
        | ("plan", "continue" | "abandon")
        | ("vm", "stop")
        | ("dns", "push") => Ok(Role::Operator),
        ("user", _) => Ok(Role::Admin),
        ("serve" | "protect" | "receive" | "export", _) | ("dns", "serve") => Err(format!(
            "'{first}' serves until stopped: run it as a service or a schedule, not on request"
        )),
        _ => Err(format!(
            "'{}' is not a lifeboat command the API runs",
            words.join(" ")
        )),
    }
}

/// The words of `command` that name the command (`plan continue …`): its arguments
/// without options and without the value of `--region`, the one global option with a
/// value the API takes.
pub fn words(command: &[String]) -> Vec<&str> {
    let mut words = Vec::new();
    let mut arguments = command.iter().map(String::as_str);
    while let Some(argument) = arguments.next() {
        if argument == "--region" {
            arguments.next();
        } else if !argument.starts_with('-') {
            words.push(argument);
        }
    }
    words
}

/// Options naming files or repositories of the caller's choosing, which a daemon must not
/// take: it acts on its own configuration with its own password.
fn names_local_file(argument: &str) -> bool {
    argument == "-r"
        || ["--config", "--password-file", "--repo"]
            .iter()
            .any(|option| argument == *option || argument.starts_with(&format!("{option}=")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(words: &[&str]) -> Result<Role, String> {
        required_role(&words.iter().map(|w| w.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn reads_need_a_reader_changes_an_operator_users_an_admin() {
        assert_eq!(role(&["points", "--vm", "db1"]), Ok(Role::Reader));
        assert_eq!(role(&["--region", "east", "points"]), Ok(Role::Reader));
        assert_eq!(
            role(&["plan", "--region", "east", "continue", "shop"]),
            Ok(Role::Operator)
        );
        assert_eq!(role(&["plan", "status", "shop"]), Ok(Role::Reader));
        assert_eq!(
            role(&["failover", "--plan", "shop", "--to", "east"]),
            Ok(Role::Operator)
        );
        assert_eq!(
            role(&["forget", "--vm", "db1", "--keep-last", "1"]),
            Ok(Role::Operator)
        );
        assert_eq!(role(&["plan", "continue", "shop"]), Ok(Role::Operator));
        assert_eq!(
            role(&["drill", "--plan", "shop", "--to", "east"]),
            Ok(Role::Operator)
        );
        assert_eq!(role(&["user", "add", "bob"]), Ok(Role::Admin));
        assert_eq!(role(&["audit"]), Ok(Role::Operator), "as /api/audit");
    }

    #[test]
    fn services_unknown_commands_and_local_files_are_refused() {
        assert!(
            role(&["serve"])
                .unwrap_err()
                .contains("serves until stopped")
        );
        assert!(role(&["dns", "serve"]).is_err());
        assert!(
            role(&["rm", "-rf"])
                .unwrap_err()
                .contains("not a lifeboat command")
        );
        assert!(role(&[]).is_err());
        assert!(
            role(&["--config", "/etc/other.toml", "points"])
                .unwrap_err()
                .contains("--config")
        );
        assert!(role(&["--repo=/tmp/x", "prune"]).is_err());
    }
}
