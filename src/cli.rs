//! The command line of `pulsecheck`: it only assembles the subcommands, whose flags are the
//! groups that the modules using them define ([`crate::config::RunArgs`] gathers `run`'s from
//! connect, verdict, guard, actuate, probe, leader, admin and metrics; [`crate::check::CheckArgs`];
//! [`crate::cleanup::CleanupArgs`]). Every flag has a `PULSECHECK_*` environment variable.
//!
//! Exit codes, the same for every command: 0 success; 1 findings (`check` found nodes that need
//! attention); 2 errors — bad input (flags, files, configuration, named in the message) or a
//! command that could not do its job. `docs/configuration.md` is checked against `run --help`.

use clap::{Parser, Subcommand};

use crate::{check::CheckArgs, cleanup::CleanupArgs, config::RunArgs};

/// Finds Kubernetes nodes that claim Ready but are dead, and taints or cordons them safely.
#[derive(Debug, Parser)]
#[command(name = "pulsecheck", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// pulsecheck's subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controller: watch Nodes and Leases, judge every node, taint or cordon zombies.
    Run(Box<RunArgs>),
    /// Judge the nodes of the current cluster once and print a table (also `kubectl pulsecheck`).
    Check(Box<CheckArgs>),
    /// Remove every taint, annotation and condition pulsecheck ever put on any Node.
    Cleanup(Box<CleanupArgs>),
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn zero_duration_names_the_flag() {
        let err = Cli::try_parse_from(["pulsecheck", "run", "--lease-grace", "0s"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let msg = err.to_string();
        assert!(msg.contains("--lease-grace"), "{msg}");
        assert!(msg.contains("greater than zero"), "{msg}");
    }

    #[test]
    fn percentage_out_of_range_names_the_flag() {
        let err = Cli::try_parse_from(["pulsecheck", "run", "--max-unhealthy", "120"]).unwrap_err();
        assert!(err.to_string().contains("--max-unhealthy"));
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn unknown_effect_and_action_are_rejected() {
        for args in [["--taint-effect", "PreferNoSchedule"], ["--action", "drain"]] {
            let err = Cli::try_parse_from(["pulsecheck", "run", args[0], args[1]]).unwrap_err();
            assert_eq!(err.exit_code(), 2);
            assert!(err.to_string().contains(args[0]), "{err}");
        }
    }

    #[test]
    fn empty_taint_key_is_rejected() {
        let err = Cli::try_parse_from(["pulsecheck", "run", "--taint-key", ""]).unwrap_err();
        assert!(err.to_string().contains("--taint-key"), "{err}");
    }

    #[test]
    fn action_list_parses_both() {
        let cli = Cli::try_parse_from(["pulsecheck", "run", "--action", "taint,cordon", "--leader-elect=false"]).unwrap();
        let Command::Run(args) = cli.command else { panic!("not run") };
        assert_eq!(args.action.action, vec![crate::actuate::Action::Taint, crate::actuate::Action::Cordon]);
        assert!(!args.leader.leader_elect);
    }

    #[test]
    fn unknown_subcommand_exits_2() {
        let err = Cli::try_parse_from(["pulsecheck", "frobnicate"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }
}
