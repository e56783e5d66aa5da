//! Child programs of the lab (etcd, kube-apiserver, kube-controller-manager, and later kubelets
//! and containerd) that die with the lab.
//!
//! A leaked etcd or kubelet on a shared CI machine is worse than a failed test, so every program
//! the lab starts goes through [`Process`]: its own process group (a Ctrl-C in a terminal reaches
//! only the lab, which then stops its programs in the right order), `PR_SET_PDEATHSIG` (a lab
//! killed with SIGKILL takes them along), kill-and-reap on drop, and a graceful
//! [`Process::terminate`]. Output goes to a log file whose tail is quoted in errors.

use std::{
    io,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use tokio::process::{Child, Command};

/// How long dropping waits for a killed process to be reaped.
const REAP_TIMEOUT: Duration = Duration::from_secs(5);
/// Lines of a program's log quoted in errors.
const LOG_TAIL_LINES: usize = 20;

/// A program could not be started.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Its log file could not be created.
    #[error("cannot create {}: {source}", .path.display())]
    Log {
        /// The log file.
        path: PathBuf,
        /// The operating system's reason.
        #[source]
        source: io::Error,
    },
    /// The program could not be started at all.
    #[error("cannot start {program} ({}): {source}", .path.display())]
    Spawn {
        /// What it is, e.g. "etcd".
        program: &'static str,
        /// The executable.
        path: PathBuf,
        /// The operating system's reason.
        #[source]
        source: io::Error,
    },
}

/// One child program, killed and reaped when dropped.
pub struct Process {
    program: &'static str,
    pid: u32,
    child: Child,
    log: PathBuf,
}

impl Process {
    /// Starts `path` with `args`, stdout and stderr to `log`.
    pub fn spawn(program: &'static str, path: &Path, args: &[String], log: &Path) -> Result<Process, Error> {
        let log_err = |source| Error::Log { path: log.to_path_buf(), source };
        let out = std::fs::File::create(log).map_err(log_err)?;
        let err = out.try_clone().map_err(log_err)?;
        let parent = std::process::id();
        let mut command = Command::new(path);
        command.args(args).stdin(Stdio::null()).stdout(out).stderr(err).process_group(0).kill_on_drop(true);
        // SAFETY: the closure runs in the forked child before exec and only makes
        // async-signal-safe system calls (prctl, getppid); it allocates only on the error path.
        unsafe {
            command.pre_exec(move || {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
                // The parent may have died between fork and prctl; then nobody would kill us.
                if nix::unistd::getppid().as_raw() as u32 != parent {
                    return Err(io::Error::other("parent exited during spawn"));
                }
                Ok(())
            });
        }
        let child = command.spawn().map_err(|source| Error::Spawn { program, path: path.to_path_buf(), source })?;
        let pid =
            child.id().ok_or_else(|| Error::Spawn { program, path: path.to_path_buf(), source: io::Error::other("exited before its pid could be read") })?;
        tracing::debug!(program, pid, log = %log.display(), "started");
        Ok(Process { program, pid, child, log: log.to_path_buf() })
    }

    /// What it is, e.g. "etcd".
    pub fn program(&self) -> &'static str {
        self.program
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// The last lines of its log.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log)
    }

    /// Its exit status if it has exited (reaping it), else `None`.
    pub fn exit_status(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(err) => Some(format!("unknown: {err}")),
        }
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL; returns once it is reaped.
    pub async fn terminate(mut self, grace: Duration) {
        if self.exit_status().is_some() {
            return;
        }
        let pid = Pid::from_raw(self.pid as i32);
        if kill(pid, Signal::SIGTERM).is_ok()
            && let Ok(Ok(status)) = tokio::time::timeout(grace, self.child.wait()).await
        {
            tracing::debug!(program = self.program, %status, "stopped");
            return;
        }
        tracing::debug!(program = self.program, "did not stop within {grace:?}, killing it");
        if let Err(err) = self.child.kill().await {
            tracing::warn!(program = self.program, "cannot kill: {err}");
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.exit_status().is_some() {
            return;
        }
        if let Err(err) = self.child.start_kill() {
            tracing::warn!(program = self.program, pid = self.pid, "cannot kill: {err}");
            return;
        }
        // Reap it here, so no zombie or half-dead process outlives the drop. A SIGKILLed
        // process exits within milliseconds; this blocks the thread that long.
        let deadline = Instant::now() + REAP_TIMEOUT;
        while self.exit_status().is_none() {
            if Instant::now() >= deadline {
                tracing::warn!(program = self.program, pid = self.pid, "still running {REAP_TIMEOUT:?} after SIGKILL");
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// The last [`LOG_TAIL_LINES`] lines of a log file (or why it cannot be read).
pub fn log_tail(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
        }
        Err(err) => format!("(cannot read {}: {err})", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_tail_keeps_the_last_lines() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("x.log");
        let text: String = (1..=30).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&log, text).unwrap();
        let tail = log_tail(&log);
        assert!(tail.starts_with("line 11\n"), "{tail}");
        assert!(tail.ends_with("line 30"), "{tail}");
        assert!(log_tail(&tmp.path().join("missing")).contains("cannot read"));
    }

    #[tokio::test]
    async fn a_dropped_process_is_killed_and_reaped() {
        let tmp = tempfile::tempdir().unwrap();
        let process = Process::spawn("sleep", Path::new("/bin/sleep"), &["60".into()], &tmp.path().join("sleep.log")).unwrap();
        let pid = Pid::from_raw(process.pid() as i32);
        drop(process);
        // Reaped: the pid no longer names a process (not even a zombie).
        assert!(kill(pid, None).is_err(), "the child outlived its drop");
    }
}
