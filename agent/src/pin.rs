//! Runs the agent from an in-memory copy of itself, so that no page of its program is ever read
//! from the node's disk.
//!
//! The kernel maps an executable from its file and pages it in lazily, and under memory
//! pressure drops clean pages of it to read them again later. The agent's file sits in the
//! container image, on the very disk the agent watches: when that disk hangs, the first touch
//! of a code path not yet in memory (the error branch of a renewal, the shutdown path, a log
//! format never used before) would block the network loop in the page fault, in D state, and
//! the agent would go silent exactly when it has something to say. So at start the agent copies
//! its binary into a `memfd` (anonymous memory: shmem, never written back to a disk), seals it
//! against changes, and re-executes itself from it with `fexecve`. From then on
//! `/proc/self/exe` reads `/memfd:pulsecheck-agent (deleted)` and every page of the program
//! comes from memory. The binary is static (the image's musl build), so no shared library is
//! mapped from the disk either.
//!
//! This happens once: the copy runs with [`PINNED_ENV`] set and recognises itself by its
//! `/proc/self/exe`. It must happen before any thread is started (exec replaces the process;
//! other threads would simply vanish). When it cannot be done (no `/proc`, memfd refused by a
//! seccomp profile), the agent goes on from its file, with a warning: that is how every other
//! program on the node runs.
//!
//! The cost is the binary's size in memory (shmem, charged to the agent's cgroup).
//! No `unsafe`: nix wraps `memfd_create`, `fcntl(F_ADD_SEALS)` and `fexecve`.

use std::{
    ffi::{CString, OsString},
    fs::File,
    io,
    os::unix::ffi::{OsStrExt, OsStringExt},
    path::PathBuf,
};

use nix::{
    fcntl::{FcntlArg, SealFlag, fcntl},
    sys::memfd::{MFdFlags, memfd_create},
};

/// Set in the environment of the in-memory copy: it must not copy itself again.
pub const PINNED_ENV: &str = "PULSECHECK_AGENT_IN_MEMORY";

/// The memfd's name, as `/proc/<pid>/exe` shows it (`/memfd:<name> (deleted)`).
pub const MEMFD_NAME: &str = "pulsecheck-agent";

/// Errors running from memory.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The running program's file cannot be found or read.
    #[error("cannot read the agent's own program (/proc/self/exe): {0}")]
    ReadSelf(io::Error),
    /// The memory file cannot be made.
    #[error("cannot create an in-memory copy of the agent (memfd_create): {0}")]
    Memfd(nix::Error),
    /// The copy failed.
    #[error("cannot copy the agent into memory: {0}")]
    Copy(io::Error),
    /// The copy cannot be sealed.
    #[error("cannot seal the in-memory copy of the agent: {0}")]
    Seal(nix::Error),
    /// An argument or environment variable contains a NUL byte.
    #[error("an argument or environment variable contains a NUL byte")]
    Nul,
    /// The in-memory copy cannot be executed.
    #[error("cannot execute the in-memory copy of the agent (fexecve): {0}")]
    Exec(nix::Error),
    /// Re-executed, yet still running from a file: not trying again.
    #[error("{PINNED_ENV} is set but the agent runs from {0}, not from memory; not re-executing again")]
    StillOnDisk(PathBuf),
}

/// Where the agent runs from, when it goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pinned {
    /// From memory: `/proc/self/exe` is this memfd.
    InMemory(PathBuf),
}

/// Whether `exe` (the target of `/proc/self/exe`) is a memfd.
fn is_memfd(exe: &std::path::Path) -> bool {
    exe.as_os_str().as_bytes().starts_with(b"/memfd:")
}

/// Re-executes the agent from an in-memory copy, unless it already runs from one. Returns only
/// when it goes on in this process: already in memory, or because it could not (the error says
/// why; the caller warns and goes on from the file). Call it before starting any thread.
pub fn run_from_memory() -> Result<Pinned, Error> {
    let exe = std::fs::read_link("/proc/self/exe").map_err(Error::ReadSelf)?;
    if is_memfd(&exe) {
        return Ok(Pinned::InMemory(exe));
    }
    if std::env::var_os(PINNED_ENV).is_some() {
        return Err(Error::StillOnDisk(exe));
    }
    let mut program = File::open("/proc/self/exe").map_err(Error::ReadSelf)?;
    // Close-on-exec: the copy is the running program, not an open descriptor of it; sealable,
    // so nothing can change the code while it runs.
    let memfd = memfd_create(MEMFD_NAME, MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING).map_err(Error::Memfd)?;
    let mut copy = File::from(memfd);
    io::copy(&mut program, &mut copy).map_err(Error::Copy)?;
    drop(program);
    fcntl(&copy, FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_WRITE | SealFlag::F_SEAL_SEAL))
        .map_err(Error::Seal)?;
    let args = std::env::args_os().map(c_string).collect::<Result<Vec<_>, _>>()?;
    let mut env = std::env::vars_os()
        .filter(|(key, _)| key != PINNED_ENV)
        .map(|(key, value)| {
            let mut pair = key;
            pair.push("=");
            pair.push(value);
            c_string(pair)
        })
        .collect::<Result<Vec<_>, _>>()?;
    env.push(c_string(OsString::from(format!("{PINNED_ENV}=1")))?);
    // Returns only on failure.
    let Err(error) = nix::unistd::fexecve(&copy, &args, &env);
    Err(Error::Exec(error))
}

/// Files other than the in-memory copy that the process maps (shared libraries of a dynamically
/// linked build), from `/proc/self/maps`: each is paged in from its disk like any program.
pub fn mapped_files() -> io::Result<Vec<String>> {
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    Ok(files_in_maps(&maps))
}

fn files_in_maps(maps: &str) -> Vec<String> {
    let mut files: Vec<String> = maps
        .lines()
        // address perms offset dev inode path: the path is the sixth field, if any.
        .filter_map(|line| line.split_whitespace().nth(5))
        .filter(|path| path.starts_with('/') && !path.starts_with("/memfd:"))
        .map(str::to_string)
        .collect();
    files.sort();
    files.dedup();
    files
}

fn c_string(s: OsString) -> Result<CString, Error> {
    CString::new(s.into_vec()).map_err(|_| Error::Nul)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_mapped_from_a_disk_are_found_in_the_maps() {
        let maps = "\
55d0c0a00000-55d0c0b00000 r-xp 00000000 00:01 1234 /memfd:pulsecheck-agent (deleted)
7f00a0000000-7f00a0200000 r-xp 00000000 fd:01 42 /usr/lib/x86_64-linux-gnu/libc.so.6
7f00a0200000-7f00a0300000 r--p 00200000 fd:01 42 /usr/lib/x86_64-linux-gnu/libc.so.6
7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0 [stack]
7ffc00100000-7ffc00200000 rw-p 00000000 00:00 0
";
        assert_eq!(files_in_maps(maps), ["/usr/lib/x86_64-linux-gnu/libc.so.6"]);
    }

    #[test]
    fn a_memfd_is_recognised_by_its_proc_link() {
        assert!(is_memfd(std::path::Path::new("/memfd:pulsecheck-agent (deleted)")));
        assert!(!is_memfd(std::path::Path::new("/usr/local/bin/pulsecheck-agent")));
    }
}
