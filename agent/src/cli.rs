//! The command line of `pulsecheck-agent`: it only assembles the groups of flags the modules
//! that use them define (who the agent is and its Lease in [`crate::lease`], the disk checks
//! in [`crate::disk`], logs in [`crate::log`]). Every flag has an environment variable; the
//! DaemonSet sets the Pod's identity through the downward API (`NODE_NAME`, `POD_NAMESPACE`,
//! `POD_NAME`, `POD_UID`).
//!
//! Exit codes: 0 after SIGTERM/SIGINT; 2 on bad input (clap's, or a check across flags, naming
//! them) and when the agent cannot start (no cluster configuration).

use clap::Parser;

use crate::{disk::DiskArgs, lease::LeaseArgs, log::LogArgs};

/// pulsecheck's node agent: checks the node's disk the way the kubelet uses it, and reports
/// in a Lease of its own, renewed over the network only.
#[derive(Debug, Parser)]
#[command(name = "pulsecheck-agent", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub lease: LeaseArgs,
    #[command(flatten)]
    pub disk: DiskArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    const IDENTITY: [&str; 9] = ["pulsecheck-agent", "--node-name", "n1", "--namespace", "pulsecheck", "--pod-name", "p", "--pod-uid", "u"];

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let cli = Cli::try_parse_from(IDENTITY).unwrap();
        assert_eq!(cli.disk.host_root, std::path::PathBuf::from("/host"));
        assert_eq!((cli.disk.os_release.as_str(), cli.disk.scratch_dir.as_str()), ("/etc/os-release", "/var/lib/kubelet/pulsecheck-agent"));
        let secs = |d: std::time::Duration| d.as_secs();
        assert_eq!(
            [cli.disk.disk_interval, cli.disk.disk_deadline, cli.lease.renew_interval, cli.lease.lease_duration, cli.lease.request_timeout].map(secs),
            [5, 10, 10, 40, 5]
        );
    }

    #[test]
    fn docs_list_every_flag_with_its_environment_variable_and_default() {
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/agent.md")).expect("docs/agent.md");
        let mut missing = Vec::new();
        for arg in Cli::command().get_arguments() {
            let Some(long) = arg.get_long().filter(|l| !matches!(*l, "help" | "version")) else { continue };
            let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
            assert!(env.is_some(), "--{long} has no environment variable");
            let defaults: Vec<String> = arg.get_default_values().iter().map(|d| d.to_string_lossy().into_owned()).collect();
            let default = if defaults.is_empty() { "—".to_string() } else { defaults.join(",") };
            let row = format!("| `--{long}` | `{}` | `{default}` |", env.unwrap_or_default());
            if !doc.contains(&row) {
                missing.push(row);
            }
        }
        assert!(missing.is_empty(), "docs/agent.md lacks or misstates these flags:\n{}", missing.join("\n"));
    }

    #[test]
    fn bad_values_name_their_flag() {
        for (flag, value, says) in [
            ("--disk-deadline", "0s", "greater than zero"),
            ("--renew-interval", "soon", "not a duration"),
            ("--os-release", "etc/os-release", "absolute"),
            ("--node-name", "", "value is required"),
        ] {
            // The identity flags, but for the one under test.
            let mut args = vec![IDENTITY[0]];
            args.extend(IDENTITY[1..].chunks(2).filter(|pair| pair[0] != flag).flatten());
            args.extend([flag, value]);
            let err = Cli::try_parse_from(&args).unwrap_err();
            assert_eq!(err.exit_code(), 2);
            let msg = err.to_string();
            assert!(msg.contains(flag) && msg.contains(says), "{flag} {value}: {msg}");
        }
    }
}
