//! Process identity, liveness, signalling and reading process details: the one
//! place the agent touches other processes.
//!
//! A pid alone names nothing for long: once a process exits its pid can be given
//! to the next process started, and a root daemon that signals a remembered pid
//! may kill an innocent one. So the agent knows a process by its [`ProcessId`],
//! the pid *and* the process's start time, read from the kernel when the process
//! is attached or detected and kept in the journal, and acts on it only through a
//! [`ProcessHandle`]: on Linux a pidfd, which keeps naming that one process after
//! it exits, so a signal through it can never reach a process that reused the pid.
//! A handle is opened for an expected identity ([`ProcessHandle::open_as`]), so
//! after an agent restart a journaled session whose pid now belongs to someone
//! else is recognised as ended.
//!
//! Per-OS code lives in one file each behind the same functions: `linux.rs`
//! (procfs and pidfd), `unix_other.rs` (sysinfo and kill with a start-time check)
//! and, on Windows, `windows.rs` (process handles).

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub use linux::*;

#[cfg(all(unix, not(target_os = "linux")))]
mod unix_other;
#[cfg(all(unix, not(target_os = "linux")))]
pub use unix_other::*;

#[cfg(windows)]
mod windows;
#[cfg(windows)]
pub use windows::*;

mod loader;
pub use loader::{is_dynamic_loader, loader_target};

use serde::{Deserialize, Serialize};

/// One process, for as long as the machine runs: its pid and its start time in
/// an OS-specific unit (clock ticks since boot on Linux; seconds since the epoch
/// where only that is known; the creation FILETIME on Windows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ProcessId {
    pub pid: u32,
    pub start: u64,
}

impl std::fmt::Display for ProcessId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.pid)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("there is no process {pid}")]
    Gone { pid: u32 },
    #[error("process {pid} is not the one expected: it was started at {found}, not {expected}")]
    Replaced { pid: u32, expected: u64, found: u64 },
    #[error("cannot {action} process {pid}: {source}")]
    Io {
        pid: u32,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// A file as the kernel knows it: device and inode name it whatever path it
/// is reached by (a symlink, a hard link, a bind mount); size and mtime tell
/// whether a cached content hash still applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime: i64,
    /// The file's owner: an executable a user owns may be a loader of theirs.
    pub uid: u32,
}

impl FileId {
    #[cfg(unix)]
    pub fn of(meta: &std::fs::Metadata) -> FileId {
        use std::os::unix::fs::MetadataExt;
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: meta.mtime(),
            uid: meta.uid(),
        }
    }

    /// Device and inode: the file, whatever its size or age.
    pub fn inode(&self) -> (u64, u64) {
        (self.dev, self.ino)
    }
}

/// Whether an I/O error means "out of descriptors" (this process's or the
/// system's): an error to retry, never a sign that a process is gone.
#[cfg(unix)]
pub fn out_of_descriptors(e: &ProcessError) -> bool {
    matches!(e, ProcessError::Io { source, .. }
        if matches!(source.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE)))
}

/// Windows processes hold handles, not descriptors: no such limit applies.
#[cfg(windows)]
pub fn out_of_descriptors(_e: &ProcessError) -> bool {
    false
}

/// Raises this process's soft limit on open files to its hard limit: the
/// agent holds one descriptor per product process, and systemd's default soft
/// limit (1024) is far below what a busy machine can make it hold. Returns
/// (old soft, new soft).
#[cfg(unix)]
pub fn raise_fd_limit() -> std::io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid rlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let old = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: a valid rlimit; raising the soft limit up to the hard one
        // needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok((old, lim.rlim_cur))
}

/// How to ask a process to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM / WM_CLOSE: the product may save and quit.
    Graceful,
    /// SIGKILL / TerminateProcess.
    Forced,
}

/// The names a process can be recognised by, cheapest to read first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Names {
    pub exe_path: Option<std::path::PathBuf>,
    pub comm: Option<String>,
    /// The command line's arguments (the whole of it, up to a cap far above
    /// what a shell can pass).
    pub args: Vec<String>,
}

impl Names {
    /// File name of the executable, with the kernel's " (deleted)" marker removed
    /// (a product upgraded while running still counts).
    pub fn exe_name(&self) -> Option<String> {
        let name = self.exe_path.as_ref()?.file_name()?.to_string_lossy();
        Some(name.strip_suffix(" (deleted)").unwrap_or(&name).to_string())
    }

    /// Candidates in the order they are tried: the program a dynamic loader was
    /// asked to run (`ld-linux-x86-64.so.2 ./acad` runs acad with the loader's
    /// exe, comm and argv[0]), the exe file name, comm, argv[0]'s base name.
    /// comm and argv[0] cover interpreters and launch scripts, whose exe is the
    /// interpreter.
    pub fn candidates(&self) -> impl Iterator<Item = String> + '_ {
        let exe = self.exe_name();
        let loaded = exe
            .as_deref()
            .filter(|e| is_dynamic_loader(e))
            .and_then(|_| loader_target(&self.args))
            .and_then(base_name);
        let argv0 = self.args.first().and_then(|a| base_name(a));
        loaded
            .into_iter()
            .chain(exe)
            .chain(self.comm.clone())
            .chain(argv0)
    }
}

impl Names {
    /// The names of a process `sysinfo` loaded (exe, name and command line).
    pub fn of_sysinfo(p: &sysinfo::Process) -> Names {
        Names {
            exe_path: p.exe().map(|e| e.to_path_buf()),
            comm: Some(p.name().to_string_lossy().into_owned()),
            args: p
                .cmd()
                .iter()
                .take(16)
                .map(|a| a.to_string_lossy().into_owned())
                .collect(),
        }
    }
}

fn base_name(path: &str) -> Option<String> {
    std::path::Path::new(path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deleted_marker_and_argv0_basename() {
        let names = Names {
            exe_path: Some("/opt/acad/acad (deleted)".into()),
            comm: Some("acad-main".into()),
            args: vec!["/usr/bin/acadlaunch".into(), "drawing.dwg".into()],
        };
        let all: Vec<_> = names.candidates().collect();
        assert_eq!(all, ["acad", "acad-main", "acadlaunch"]);
    }

    #[test]
    fn the_program_a_loader_runs_comes_first() {
        let names = Names {
            exe_path: Some("/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2".into()),
            comm: Some("ld-linux-x86-64".into()),
            args: vec![
                "/lib64/ld-linux-x86-64.so.2".into(),
                "--library-path".into(),
                "/tmp/libs".into(),
                "./acad".into(),
                "--version".into(),
            ],
        };
        assert_eq!(names.candidates().next().as_deref(), Some("acad"));
        // Not a loader: its arguments are never taken for a program.
        let cat = Names {
            exe_path: Some("/usr/bin/cat".into()),
            comm: Some("cat".into()),
            args: vec!["cat".into(), "acad".into()],
        };
        assert!(!cat.candidates().any(|c| c == "acad"));
    }
}
