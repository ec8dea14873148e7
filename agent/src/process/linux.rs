//! Linux: details from `/proc`, identity and signals through a pidfd.
//!
//! Every `/proc` read tolerates the process vanishing half-way: that is normal,
//! and the caller just skips it. A [`ProcessHandle`] is a pidfd (Linux 5.3+);
//! where the kernel has none the handle falls back to re-reading the start time
//! right before each signal, which narrows the pid-reuse race to microseconds
//! instead of closing it (logged once at start).

use std::fs;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::OnceLock;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};

use super::{Names, ProcessError, ProcessId, Stop};
use crate::account::AccountId;

/// Every numeric entry of `/proc`.
pub fn list_pids() -> std::io::Result<Vec<u32>> {
    let mut pids = Vec::with_capacity(512);
    for entry in fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        if let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        {
            pids.push(pid);
        }
    }
    Ok(pids)
}

/// How much of `/proc/PID/cmdline` is read: enough for argv[0] and a loader's
/// options and program in any sane case; command lines can be huge.
const CMDLINE_READ: usize = 4096;

pub fn names(pid: u32) -> Names {
    let base = format!("/proc/{pid}");
    let exe_path = fs::read_link(format!("{base}/exe")).ok();
    let comm = fs::read_to_string(format!("{base}/comm"))
        .ok()
        .map(|s| s.trim_end_matches('\n').to_string());
    let args = read_args(&format!("{base}/cmdline"));
    Names {
        exe_path,
        comm,
        args,
    }
}

fn read_args(path: &str) -> Vec<String> {
    let mut buf = [0u8; CMDLINE_READ];
    let Ok(mut f) = fs::File::open(path) else {
        return Vec::new();
    };
    let n = f.read(&mut buf).unwrap_or(0);
    let mut args: Vec<String> = buf[..n]
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    // The buffer ends with a NUL (or mid-argument when cut): drop the tail.
    args.pop();
    args
}

/// Real uid of `pid`: the user who started it, even for a setuid binary.
pub fn uid(pid: u32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Owner of process `pid` (its real uid); `None` if it is gone.
pub fn owner(pid: u32) -> Option<AccountId> {
    uid(pid).map(AccountId::from_uid)
}

/// Start time of `pid` in clock ticks since boot (field 22 of `/proc/PID/stat`),
/// `None` for a process that is gone or a zombie (it runs nothing any more).
pub fn start_ticks(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm (field 2) may contain spaces and parentheses: fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // `rest` starts at field 3 (state), so field 22 is index 19.
    let state = fields.next()?;
    if matches!(state, "Z" | "X" | "x") {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

/// The identity of the process running as `pid` now.
pub fn identify(pid: u32) -> Option<ProcessId> {
    start_ticks(pid).map(|start| ProcessId { pid, start })
}

/// Wall-clock time of a start time in ticks since boot.
pub fn start_time(id: ProcessId) -> DateTime<Utc> {
    static BOOT: OnceLock<(i64, u64)> = OnceLock::new();
    let (btime, hz) = *BOOT.get_or_init(|| {
        let btime = fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("btime "))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0);
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        (btime, if hz > 0 { hz as u64 } else { 100 })
    });
    let millis = btime * 1000 + (id.start * 1000 / hz) as i64;
    Utc.timestamp_millis_opt(millis)
        .single()
        .unwrap_or_else(Utc::now)
}

/// A process the agent may signal: its identity, its owner, and a pidfd.
#[derive(Debug)]
pub struct ProcessHandle {
    id: ProcessId,
    owner: AccountId,
    /// `None` on kernels without pidfd_open.
    fd: Option<OwnedFd>,
}

impl ProcessHandle {
    /// Opens whatever process runs as `pid` now.
    pub fn open(pid: u32) -> Result<ProcessHandle, ProcessError> {
        Self::open_checked(pid, None)
    }

    /// Opens the process `id` names, or fails if `id.pid` now runs another
    /// process (or none).
    pub fn open_as(id: ProcessId) -> Result<ProcessHandle, ProcessError> {
        Self::open_checked(id.pid, Some(id.start))
    }

    fn open_checked(pid: u32, expected: Option<u64>) -> Result<ProcessHandle, ProcessError> {
        let fd = pidfd_open(pid)?;
        // Read identity and owner, then confirm the pidfd's process is still
        // alive: if it is, the pid was never reused meanwhile, so what /proc
        // said was about this very process.
        let start = start_ticks(pid).ok_or(ProcessError::Gone { pid })?;
        let owner = owner(pid).ok_or(ProcessError::Gone { pid })?;
        let handle = ProcessHandle {
            id: ProcessId { pid, start },
            owner,
            fd,
        };
        if !handle.is_alive() {
            return Err(ProcessError::Gone { pid });
        }
        match expected {
            Some(e) if e != start => Err(ProcessError::Replaced {
                pid,
                expected: e,
                found: start,
            }),
            _ => Ok(handle),
        }
    }

    pub fn id(&self) -> ProcessId {
        self.id
    }

    pub fn owner(&self) -> &AccountId {
        &self.owner
    }

    /// Whether the process still runs (a zombie does not).
    pub fn is_alive(&self) -> bool {
        match &self.fd {
            // A pidfd polls readable once its process has exited.
            Some(fd) => {
                let mut p = libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd, no timeout.
                let n = unsafe { libc::poll(&mut p, 1, 0) };
                n == 0
            }
            None => start_ticks(self.id.pid) == Some(self.id.start),
        }
    }

    /// Asks the process to stop; a process that is gone is not an error (and,
    /// through the pidfd, can never be confused with a newer one).
    pub fn stop(&self, how: Stop) -> Result<(), ProcessError> {
        let sig = match how {
            Stop::Graceful => libc::SIGTERM,
            Stop::Forced => libc::SIGKILL,
        };
        let pid = self.id.pid;
        let res = match &self.fd {
            // SAFETY: a valid pidfd, a valid signal, no siginfo.
            Some(fd) => unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    sig,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                )
            },
            None => {
                if !self.is_alive() {
                    return Ok(());
                }
                // SAFETY: kill has no memory preconditions.
                unsafe { libc::kill(pid as i32, sig) as libc::c_long }
            }
        };
        if res == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ESRCH) {
            return Ok(());
        }
        Err(ProcessError::Io {
            pid,
            action: "signal",
            source: err,
        })
    }

    /// Resolves when the process exits. Must be called inside a tokio runtime.
    pub async fn exited(&self) {
        if let Some(fd) = &self.fd {
            if let Ok(dup) = fd.try_clone() {
                // SAFETY: the AsyncFd owns `dup`, an open pidfd that stays open
                // and unchanged until the AsyncFd is dropped.
                let registered = unsafe {
                    tokio::io::unix::AsyncFd::register_with_interest(
                        dup,
                        tokio::io::Interest::READABLE,
                    )
                };
                if let Ok(afd) = registered {
                    let _ = afd.readable().await;
                    return;
                }
            }
        }
        // No pidfd (or no reactor for it): poll.
        while self.is_alive() {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

fn pidfd_open(pid: u32) -> Result<Option<OwnedFd>, ProcessError> {
    static WARNED: OnceLock<()> = OnceLock::new();
    let raw = i32::try_from(pid).map_err(|_| ProcessError::Gone { pid })?;
    // SAFETY: pidfd_open takes a pid and flags, returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, raw, 0) };
    if fd >= 0 {
        // SAFETY: the kernel just returned this fd to us alone.
        return Ok(Some(unsafe { OwnedFd::from_raw_fd(fd as i32) }));
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::ESRCH) => Err(ProcessError::Gone { pid }),
        Some(libc::ENOSYS) => {
            WARNED.get_or_init(|| {
                tracing::warn!("this kernel has no pidfd_open: processes are signalled by pid after a start-time check")
            });
            Ok(None)
        }
        _ => Err(ProcessError::Io {
            pid,
            action: "open a pidfd for",
            source: err,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(list_pids().unwrap().contains(&me));
        let names = names(me);
        assert_eq!(names.exe_path.unwrap(), std::env::current_exe().unwrap());
        assert_eq!(uid(me), Some(nix::unistd::getuid().as_raw()));
        let started = start_time(identify(me).unwrap());
        let age = Utc::now() - started;
        assert!(
            age.num_seconds() >= -2 && age.num_minutes() < 30,
            "{started}"
        );
    }

    #[test]
    fn a_handle_names_one_process_and_outlives_it() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        let h = ProcessHandle::open(pid).unwrap();
        assert_eq!(h.id(), identify(pid).unwrap());
        assert_eq!(
            h.owner(),
            &AccountId::from_uid(nix::unistd::getuid().as_raw())
        );
        assert!(h.is_alive());
        // Another start time is another process.
        let other = ProcessId {
            pid,
            start: h.id().start + 1,
        };
        assert!(matches!(
            ProcessHandle::open_as(other),
            Err(ProcessError::Replaced { .. })
        ));
        h.stop(Stop::Graceful).unwrap();
        child.wait().unwrap();
        assert!(!h.is_alive());
        // Signalling a gone process is a no-op, not an error.
        h.stop(Stop::Forced).unwrap();
        assert!(matches!(
            ProcessHandle::open_as(h.id()),
            Err(ProcessError::Gone { .. })
        ));
    }

    #[test]
    fn a_zombie_is_not_alive() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Wait for the exit without reaping: the pid stays, as a zombie.
        // SAFETY: a zeroed siginfo_t is valid for waitid to fill.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let r = unsafe { libc::waitid(libc::P_PID, pid, &mut info, libc::WEXITED | libc::WNOWAIT) };
        assert_eq!(r, 0);
        assert_eq!(start_ticks(pid), None);
        assert!(matches!(
            ProcessHandle::open(pid),
            Err(ProcessError::Gone { .. })
        ));
        child.wait().unwrap();
    }

    #[tokio::test]
    async fn exited_resolves_when_the_process_ends() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let h = ProcessHandle::open(child.id()).unwrap();
        let waiting = tokio::spawn(async move { h.exited().await });
        child.kill().unwrap();
        tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("exit seen")
            .unwrap();
        child.wait().unwrap();
    }
}
