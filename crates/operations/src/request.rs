//! A command asked for through the API (`POST /api/jobs`), parsed as the job will run it.
//!
//! The control plane runs such a command as a `lifeboat` child process, with the daemon's
//! own options in front of it (`child_arguments`). The command is parsed here by the same
//! clap definition the child parses it with, and the role it needs comes from the parsed
//! command (`role::required_role`), so an option that takes a value can never hide the
//! command that actually runs. Options that choose files, repositories or another daemon
//! are refused when the caller gave them (clap says where each value came from), never by
//! looking at the words.

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches};

use crate::command_line::Cli;
use crate::role::{NotOnRequest, Role, name, required_role};

/// Global options a caller of the API may not give, by their clap id, and as typed: the
/// daemon acts on its own configuration with its own password, and a token or another
/// daemon's address has no meaning there (and would be kept in the job's record).
const REFUSED_GLOBALS: [(&str, &str); 6] = [
    ("repository", "--repo"),
    ("config", "--config"),
    ("password_file", "--password-file"),
    ("remote", "--remote"),
    ("token", "--token"),
    ("ca_certificate", "--ca-certificate"),
];

/// Why the API does not run a command.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("give a command, e.g. [\"points\", \"--vm\", \"db1\"]")]
    Empty,
    #[error("not a lifeboat command line: {0}")]
    Usage(String),
    #[error("{0} is not taken through the API: the daemon uses its own configuration and password")]
    LocalOption(&'static str),
    #[error(transparent)]
    NotOnRequest(#[from] NotOnRequest),
}

/// A command the API runs: as parsed, its name and the role it needs.
#[derive(Debug)]
pub struct JobCommand {
    pub cli: Cli,
    pub name: &'static str,
    pub role: Role,
}

impl JobCommand {
    /// Parses `arguments` (a command line without the program name) as the job's child
    /// will, and decides the role it needs.
    pub fn parse(arguments: &[String]) -> Result<JobCommand, Refusal> {
        if arguments.is_empty() {
            return Err(Refusal::Empty);
        }
        let matches = Cli::command()
            .color(clap::ColorChoice::Never)
            .try_get_matches_from(
                std::iter::once("lifeboat".to_string()).chain(arguments.iter().cloned()),
            )
            .map_err(|error| Refusal::Usage(first_line(&error.render().to_string())))?;
        refuse_local_options(&matches)?;
        let cli = Cli::from_arg_matches(&matches)
            .map_err(|error| Refusal::Usage(first_line(&error.render().to_string())))?;
        let role = required_role(&cli.command)?;
        Ok(JobCommand {
            name: name(&cli.command),
            role,
            cli,
        })
    }
}

/// The arguments of the child that runs `command` for a daemon started with
/// `daemon_options` (its configuration and password file): the daemon's options, `--json`
/// (the report is read back), then the command as asked for.
pub fn child_arguments(daemon_options: &[String], command: &[String]) -> Vec<String> {
    let mut arguments = daemon_options.to_vec();
    arguments.push("--json".to_string());
    arguments.extend(command.iter().cloned());
    arguments
}

/// Refuses any of `REFUSED_GLOBALS` given on the command line, at any level of
/// subcommands (a global option may follow the command).
fn refuse_local_options(matches: &ArgMatches) -> Result<(), Refusal> {
    let mut level = Some(matches);
    while let Some(matches) = level {
        for (id, option) in REFUSED_GLOBALS {
            if matches.value_source(id) == Some(ValueSource::CommandLine) {
                return Err(Refusal::LocalOption(option));
            }
        }
        level = matches.subcommand().map(|(_, sub)| sub);
    }
    Ok(())
}

fn first_line(text: &str) -> String {
    text.lines()
        .find(|line| !line.trim().is_empty())
        .unwrap_or("")
        .trim_start_matches("error: ")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;

    fn strings(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    fn role(words: &[&str]) -> Result<Role, Refusal> {
        JobCommand::parse(&strings(words)).map(|command| command.role)
    }

    #[test]
    fn reads_need_a_reader_changes_an_operator_users_an_admin() {
        assert_eq!(role(&["points", "--vm", "db1"]), Ok(Role::Reader));
        assert_eq!(role(&["--region", "east", "points"]), Ok(Role::Reader));
        assert_eq!(
            role(&["points", "--region=east", "--json"]),
            Ok(Role::Reader)
        );
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
        assert_eq!(
            role(&["drill", "--plan", "shop", "--to", "east"]),
            Ok(Role::Operator)
        );
        assert_eq!(role(&["geo-sync"]), Ok(Role::Operator));
        assert_eq!(role(&["user", "add", "bob"]), Ok(Role::Admin));
        assert_eq!(role(&["audit"]), Ok(Role::Operator), "as /api/audit");
    }

    /// The escalations found in the API: an option that takes a value swallowed the word
    /// the old scanner took for the command.
    #[test]
    fn an_option_with_a_value_cannot_hide_the_command_that_runs() {
        assert_eq!(
            role(&[
                "--verbose",
                "points",
                "user",
                "add",
                "mallory",
                "--role",
                "admin"
            ])
            .ok(),
            None,
            "a usage error, not a reader's command"
        );
        assert_eq!(
            role(&[
                "--token", "points", "user", "add", "mallory", "--role", "admin"
            ]),
            Err(Refusal::LocalOption("--token"))
        );
        assert_eq!(
            role(&["--ca-certificate", "points", "--region", "west", "prune"]),
            Err(Refusal::LocalOption("--ca-certificate"))
        );
        assert_eq!(
            role(&["--region", "points", "user", "add", "mallory"]),
            Ok(Role::Admin)
        );
        assert_eq!(
            role(&["-r/some/path", "points"]),
            Err(Refusal::LocalOption("--repo"))
        );
        assert_eq!(
            role(&["points", "--repo=/tmp/x"]),
            Err(Refusal::LocalOption("--repo"))
        );
        assert_eq!(
            role(&["plan", "status", "x", "--config", "/etc/other.toml"]),
            Err(Refusal::LocalOption("--config"))
        );
    }

    #[test]
    fn services_internal_and_unknown_commands_are_refused() {
        assert!(matches!(
            role(&["serve"]),
            Err(Refusal::NotOnRequest(NotOnRequest::Serves("serve")))
        ));
        assert!(role(&["dns", "serve"]).is_err());
        assert!(role(&["geo-sync", "--follow"]).is_err());
        assert!(role(&["dns", "push", "--follow"]).is_err());
        assert!(role(&["vm", "hydrate", "--home", "/", "--disks", "1"]).is_err());
        assert!(matches!(role(&["rm", "-rf"]), Err(Refusal::Usage(_))));
        assert!(matches!(role(&["--help"]), Err(Refusal::Usage(_))));
        assert_eq!(role(&[]), Err(Refusal::Empty));
    }

    /// Options with a value that the API lets through or refuses; their values are drawn
    /// from command words, to try to make them look like the command.
    const VALUED: [&str; 8] = [
        "--region",
        "--token",
        "--ca-certificate",
        "--repo",
        "--config",
        "--password-file",
        "--remote",
        "--role",
    ];
    const WORDS: [&str; 12] = [
        "points", "user", "add", "mallory", "prune", "verify", "status", "plan", "continue",
        "serve", "--", "admin",
    ];
    const COMMANDS: [&[&str]; 12] = [
        &["points"],
        &["status"],
        &["verify", "--read-data"],
        &["prune"],
        &["forget", "--vm", "db1", "--keep-last", "1"],
        &["user", "add", "mallory", "--role", "admin"],
        &["plan", "status", "shop"],
        &["plan", "continue", "shop"],
        &["dns", "records"],
        &["serve"],
        &["geo-sync", "--follow"],
        &["backup", "--vm", "db1", "disk.raw"],
    ];

    /// One inserted piece: an option with its value in any of the forms clap takes, a
    /// flag, a stray word or `--`.
    fn piece() -> impl Strategy<Value = Vec<String>> {
        let valued = (0..VALUED.len(), 0..WORDS.len(), 0..3usize).prop_map(|(o, w, form)| {
            let (option, value) = (VALUED[o], WORDS[w]);
            match form {
                0 => vec![option.to_string(), value.to_string()],
                1 => vec![format!("{option}={value}")],
                _ if option == "--repo" => vec![format!("-r{value}")],
                _ => vec![option.to_string(), value.to_string()],
            }
        });
        prop_oneof![
            4 => valued,
            1 => prop_oneof![Just("--json"), Just("-v"), Just("-vv"), Just("--")]
                .prop_map(|flag| vec![flag.to_string()]),
            1 => (0..WORDS.len()).prop_map(|w| vec![WORDS[w].to_string()]),
            1 => Just(vec!["-rpoints".to_string()]),
        ]
    }

    fn command_line() -> impl Strategy<Value = Vec<String>> {
        (
            0..COMMANDS.len(),
            proptest::collection::vec((piece(), any::<proptest::sample::Index>()), 0..4),
        )
            .prop_map(|(command, pieces)| {
                let mut arguments = strings(COMMANDS[command]);
                for (piece, at) in pieces {
                    let at = at.index(arguments.len() + 1);
                    arguments.splice(at..at, piece);
                }
                arguments
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

        /// Whatever the API accepts, the child that runs it (the daemon's options in
        /// front) runs a command of exactly the role the API demanded, on the daemon's
        /// configuration and repository.
        #[test]
        fn the_role_demanded_is_the_role_of_the_command_that_runs(arguments in command_line()) {
            let Ok(accepted) = JobCommand::parse(&arguments) else {
                return Ok(());
            };
            let daemon = strings(&["--config", "/etc/lifeboat/lifeboat.toml", "--password-file", "/etc/lifeboat/password"]);
            let child = <Cli as clap::Parser>::try_parse_from(
                std::iter::once("lifeboat".to_string()).chain(child_arguments(&daemon, &arguments)),
            );
            let child = match child {
                Ok(child) => child,
                Err(error) => return Err(TestCaseError::fail(format!("{arguments:?} accepted, but the child cannot parse it: {error}"))),
            };
            prop_assert_eq!(required_role(&child.command), Ok(accepted.role), "{:?}", arguments);
            prop_assert_eq!(name(&child.command), accepted.name);
            prop_assert_eq!(child.global.config.as_deref(), Some(std::path::Path::new("/etc/lifeboat/lifeboat.toml")));
            prop_assert_eq!(child.global.password_file.as_deref(), Some(std::path::Path::new("/etc/lifeboat/password")));
            prop_assert!(child.global.token.is_none() && child.global.ca_certificate.is_none());
            prop_assert!(child.global.remote.is_none());
            // The environment may give the daemon a repository; the caller never does.
            prop_assert_eq!(child.global.repository, std::env::var("LIFEBOAT_REPO").ok());
        }
    }

    /// The generator does reach the cases the property is about.
    #[test]
    fn the_generator_reaches_hidden_commands() {
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let mut admins = 0;
        let mut refused_local = 0;
        for _ in 0..2000 {
            let arguments = command_line().new_tree(&mut runner).unwrap().current();
            match JobCommand::parse(&arguments) {
                Ok(command) if command.role == Role::Admin => admins += 1,
                Err(Refusal::LocalOption(_)) => refused_local += 1,
                _ => {}
            }
        }
        assert!(
            admins > 50 && refused_local > 200,
            "{admins} {refused_local}"
        );
    }
}
