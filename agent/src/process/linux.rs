//! Linux: details from `/proc`, identity and signals through a pidfd.
//!
//! Every `/proc` read tolerates the process vanishing half-way: that is normal,
//! and the caller just skips it. A [`ProcessHandle`] is a pidfd (Linux 5.3+);
//! where the kernel has none the handle falls back to re-reading the start time
//! right before each signal, which narrows the pid-reuse race to microseconds
//! instead of closing it (logged once at start).
//!
//! A process whose main thread ended while its other threads run on (a
//! `pthread_exit` in `main`) keeps its pid, but `/proc/PID` then describes the
//! zombie main thread: no `exe`, an empty `cmdline`, no `maps`, no `root`.
//! The process still runs its program, so every read that finds nothing there
//! is made again through a live thread's `/proc/PID/task/TID` ([`leaderless`]),
//! and liveness counts the threads left. Without that, a product could hide by
//! ending its main thread early.

use std::fs;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::OnceLock;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};

use super::{FileId, Names, ProcessError, ProcessId, Stop};
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

/// How much of `/proc/PID/cmdline` is read: all of it in practice. The
/// kernel caps a command line at a quarter of the stack limit (2 MiB with the
/// usual 8 MiB stack); a loader's options before the program it runs can be
/// made arbitrarily long, so reading only the first KiB let a long
/// `--library-path` hide the program.
const CMDLINE_READ: usize = 4 << 20;

pub fn names(pid: u32) -> Names {
    let base = format!("/proc/{pid}");
    match fs::read_link(format!("{base}/exe")) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => match leaderless(pid) {
            Some(thread) => names_in(&thread, None),
            None => names_in(&base, None),
        },
        exe => names_in(&base, Some(exe.ok())),
    }
}

/// The names read from `dir` (`/proc/PID` or a thread's directory), `exe`
/// when its link was read already.
fn names_in(dir: &str, exe: Option<Option<std::path::PathBuf>>) -> Names {
    let exe_path = exe.unwrap_or_else(|| fs::read_link(format!("{dir}/exe")).ok());
    Names {
        exe_path,
        comm: read_comm(&format!("{dir}/comm")),
        args: read_args(&format!("{dir}/cmdline")),
    }
}

/// The directory of a live thread of `pid`, when its main thread has ended
/// (a zombie) while others run on; `None` for any other process, running or not.
pub fn leaderless(pid: u32) -> Option<String> {
    // One stat first: the task directory has two links of its own and one
    // per thread, so what usually comes here (a process gone, a kernel
    // thread, a zombie) costs nothing more.
    use std::os::unix::fs::MetadataExt;
    let links = fs::metadata(format!("/proc/{pid}/task")).ok()?.nlink();
    if links < 4 {
        return None;
    }
    let (state, threads, _) = stat_fields(pid)?;
    if state != b'Z' || threads < 2 {
        return None;
    }
    for entry in fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let Ok(entry) = entry else { continue };
        let Some(tid) = entry
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<u32>().ok())
        else {
            continue;
        };
        if tid != pid {
            return Some(format!("/proc/{pid}/task/{tid}"));
        }
    }
    None
}

/// `comm` is at most 16 bytes and comes in one read; `read_to_string` would
/// also stat the file for a size hint, for every exec the watcher looks at.
fn read_comm(path: &str) -> Option<String> {
    let mut buf = [0u8; 64];
    let n = fs::File::open(path).ok()?.read(&mut buf).ok()?;
    let comm = buf[..n].strip_suffix(b"\n").unwrap_or(&buf[..n]);
    Some(String::from_utf8_lossy(comm).into_owned())
}

fn read_args(path: &str) -> Vec<String> {
    let Ok(f) = fs::File::open(path) else {
        return Vec::new();
    };
    let mut buf = Vec::with_capacity(256);
    if f.take(CMDLINE_READ as u64).read_to_end(&mut buf).is_err() {
        return Vec::new();
    }
    let mut args: Vec<String> = buf
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    // The buffer ends with a NUL (or mid-argument when cut): drop the tail.
    args.pop();
    args
}

/// The file `pid` executes (through `/proc/PID/exe`, which names the file
/// itself: a bind mount, a symlink or another mount namespace does not hide it).
pub fn exe_file(pid: u32) -> Option<FileId> {
    exe_lookup(pid).ok()
}

/// What a stat of `/proc/PID/exe` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExeLookup {
    /// The process is gone, a zombie or a kernel thread: it runs no program.
    NoProgram,
    /// It runs a program this process may not look at (an agent without
    /// root, for another user's process); its names may still be readable.
    NotReadable,
}

/// [`exe_file`], telling a process that runs nothing from one whose file
/// cannot be read, so a short-lived process costs the watcher one stat.
pub fn exe_lookup(pid: u32) -> Result<FileId, ExeLookup> {
    // Built on the stack: this runs for every exec on the machine.
    let mut buf = [0u8; 32];
    let mut w = &mut buf[..];
    let _ = std::io::Write::write_fmt(&mut w, format_args!("/proc/{pid}/exe"));
    let len = 32 - w.len();
    let path = std::path::Path::new(std::ffi::OsStr::from_bytes(&buf[..len]));
    let found = match fs::metadata(path) {
        // Gone, a zombie or a kernel thread; or a main thread that ended
        // while the others run on (one more stat tells, for most).
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => match leaderless(pid) {
            Some(thread) => fs::metadata(format!("{thread}/exe")),
            None => return Err(ExeLookup::NoProgram),
        },
        found => found,
    };
    match found {
        Ok(m) => Ok(FileId::of(&m)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(ExeLookup::NoProgram),
        Err(_) => Err(ExeLookup::NotReadable),
    }
}

/// Opens the file `pid` executes, for reading its content (root can, even for
/// an execute-only file).
pub fn open_exe(pid: u32) -> std::io::Result<fs::File> {
    match fs::File::open(format!("/proc/{pid}/exe")) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => match leaderless(pid) {
            Some(thread) => fs::File::open(format!("{thread}/exe")),
            None => Err(e),
        },
        found => found,
    }
}

/// A file mapped executable into a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedFile {
    pub dev: u64,
    pub ino: u64,
    pub path: std::path::PathBuf,
    /// The mapping's address range as `/proc/PID/map_files` names it.
    pub range: String,
}

/// The files `pid` has mapped executable: what a dynamic loader, valgrind or
/// any other loader actually runs, whatever its command line says.
pub fn exec_mappings(pid: u32) -> Vec<MappedFile> {
    // A zombie main thread has no memory: its maps read empty.
    let maps = match fs::read_to_string(format!("/proc/{pid}/maps")) {
        Ok(maps) if !maps.is_empty() => maps,
        _ => match leaderless(pid).and_then(|t| fs::read_to_string(format!("{t}/maps")).ok()) {
            Some(maps) => maps,
            None => return Vec::new(),
        },
    };
    let mut out: Vec<MappedFile> = Vec::new();
    for line in maps.lines() {
        if let Some(m) = parse_map_line(line) {
            if !out.iter().any(|o| o.dev == m.dev && o.ino == m.ino) {
                out.push(m);
            }
        }
    }
    out
}

/// One line of `/proc/PID/maps`: `range perms offset MAJ:MIN inode path`,
/// kept when executable and backed by a file.
fn parse_map_line(line: &str) -> Option<MappedFile> {
    let mut fields = line.splitn(6, ' ');
    let range = fields.next()?;
    let perms = fields.next()?;
    let _offset = fields.next()?;
    let dev = fields.next()?;
    let ino: u64 = fields.next()?.parse().ok()?;
    let path = fields.next()?.trim_start();
    if !perms.contains('x') || ino == 0 || !path.starts_with('/') {
        return None;
    }
    let (major, minor) = dev.split_once(':')?;
    let major = u32::from_str_radix(major, 16).ok()?;
    let minor = u32::from_str_radix(minor, 16).ok()?;
    Some(MappedFile {
        dev: libc::makedev(major, minor),
        ino,
        path: path.into(),
        range: range.to_string(),
    })
}

/// The file a mapping of `pid` comes from: by its path as the process sees
/// it (its root), checked to be the mapped inode, else through
/// `map_files` (which needs CAP_SYS_ADMIN, which the service does not have).
pub fn mapped_file(pid: u32, m: &MappedFile) -> Option<(FileId, fs::File)> {
    let main = format!("/proc/{pid}");
    let thread = leaderless(pid);
    let dir = thread.as_deref().unwrap_or(&main);
    let by_path = format!("{dir}/root{}", m.path.display());
    for candidate in [by_path, format!("{dir}/map_files/{}", m.range)] {
        let Ok(f) = fs::File::open(&candidate) else {
            continue;
        };
        let Ok(meta) = f.metadata() else {
            continue;
        };
        let id = FileId::of(&meta);
        if (id.dev, id.ino) == (m.dev, m.ino) {
            return Some((id, f));
        }
    }
    None
}

/// `path` as process `pid` sees it (its root and working directory, so its
/// mount namespace too), following symlinks.
pub fn resolve_in(pid: u32, path: &str) -> Option<FileId> {
    let seen = |dir: &str| {
        let seen = if path.starts_with('/') {
            format!("{dir}/root{path}")
        } else {
            format!("{dir}/cwd/{path}")
        };
        fs::metadata(seen).ok().map(|m| FileId::of(&m))
    };
    // A zombie main thread has no root or working directory any more.
    seen(&format!("/proc/{pid}")).or_else(|| seen(&leaderless(pid)?))
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
/// A process whose main thread ended while others run on is running: its
/// main thread's stat says `Z`, and counts the threads left.
pub fn start_ticks(pid: u32) -> Option<u64> {
    let (state, threads, start) = stat_fields(pid)?;
    match state {
        b'X' | b'x' => None,
        b'Z' if threads < 2 => None,
        _ => Some(start),
    }
}

/// State (field 3), thread count (field 20) and start time (field 22) of
/// `/proc/PID/stat`.
fn stat_fields(pid: u32) -> Option<(u8, u64, u64)> {
    // 52 numbers and a 16-byte name: well under 2 KiB, read in one go.
    let mut buf = [0u8; 2048];
    let n = fs::File::open(format!("/proc/{pid}/stat"))
        .ok()?
        .read(&mut buf)
        .ok()?;
    let stat = &buf[..n];
    // comm (field 2) may contain spaces and parentheses: fields resume after the last ')'.
    let close = stat.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(&stat[close + 1..]).ok()?;
    let mut fields = rest.split_whitespace();
    // `rest` starts at field 3 (state), so field 20 is index 17 and 22 is 19.
    let state = *fields.next()?.as_bytes().first()?;
    let threads = fields.nth(16)?.parse().ok()?;
    let start = fields.nth(1)?.parse().ok()?;
    Some((state, threads, start))
}

/// The identity of the process running as `pid` now.
pub fn identify(pid: u32) -> Option<ProcessId> {
    start_ticks(pid).map(|start| ProcessId { pid, start })
}

/// Clock ticks per second (`_SC_CLK_TCK`).
fn clock_ticks() -> u64 {
    static HZ: OnceLock<u64> = OnceLock::new();
    *HZ.get_or_init(|| {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if hz > 0 {
            hz as u64
        } else {
            100
        }
    })
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

    /// CPU time used so far (user and system, fields 14 and 15 of
    /// `/proc/PID/stat`), for the idle rule (R14); `None` once it is gone.
    pub fn cpu_time(&self) -> Option<Duration> {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.id.pid)).ok()?;
        let rest = &stat[stat.rfind(')')? + 1..];
        let mut fields = rest.split_whitespace();
        // `rest` starts at field 3: utime is field 14 (index 11), stime 15.
        let utime: u64 = fields.nth(11)?.parse().ok()?;
        let stime: u64 = fields.next()?.parse().ok()?;
        let start: u64 = fields.nth(6)?.parse().ok()?;
        if start != self.id.start {
            return None; // the pid is another process's now
        }
        Some(Duration::from_secs_f64(
            (utime + stime) as f64 / clock_ticks() as f64,
        ))
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
    /// Waits on the handle's own pidfd, registered as it is (no second
    /// descriptor: a process costs the agent one fd, see defect 5 of issue 14).
    pub async fn exited(&self) {
        if let Some(fd) = &self.fd {
            // SAFETY: the pidfd is owned by `self`, which this future borrows,
            // so it stays open and unchanged for as long as the AsyncFd lives.
            let registered = unsafe {
                tokio::io::unix::AsyncFd::register_with_interest(
                    RawPidfd(fd.as_raw_fd()),
                    tokio::io::Interest::READABLE,
                )
            };
            if let Ok(afd) = registered {
                let _ = afd.readable().await;
                return;
            }
        }
        // No pidfd (an old kernel, or none could be opened): look now and then.
        while self.is_alive() {
            tokio::time::sleep(BY_PID_POLL).await;
        }
    }

    /// A handle without a pidfd, for when none can be opened (the agent is out
    /// of descriptors): the process is checked by pid and start time before
    /// every signal, as on kernels without pidfd_open. Fails only if `id` no
    /// longer runs.
    pub fn by_pid(id: ProcessId) -> Result<ProcessHandle, ProcessError> {
        let pid = id.pid;
        let start = start_ticks(pid).ok_or(ProcessError::Gone { pid })?;
        if start != id.start {
            return Err(ProcessError::Replaced {
                pid,
                expected: id.start,
                found: start,
            });
        }
        let owner = owner(pid).ok_or(ProcessError::Gone { pid })?;
        Ok(ProcessHandle {
            id,
            owner,
            fd: None,
        })
    }
}

/// How often a handle without a pidfd checks that its process still runs.
const BY_PID_POLL: Duration = Duration::from_secs(2);

/// The raw pidfd of a [`ProcessHandle`], registered with the reactor while the
/// handle (which owns and closes it) is alive.
struct RawPidfd(std::os::fd::RawFd);

impl AsRawFd for RawPidfd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0
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
        let comm = fs::read_to_string("/proc/self/comm").unwrap();
        assert_eq!(names.comm.as_deref(), Some(comm.trim_end_matches('\n')));
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
    fn cpu_time_counts_what_a_busy_process_used() {
        let mut child = std::process::Command::new("sh")
            .args([
                "-c",
                "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done; sleep 30",
            ])
            .spawn()
            .unwrap();
        let h = ProcessHandle::open(child.id()).unwrap();
        let first = h.cpu_time().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while h.cpu_time().unwrap() < first + Duration::from_millis(50) {
            assert!(std::time::Instant::now() < deadline, "no CPU time counted");
            std::thread::sleep(Duration::from_millis(20));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(h.cpu_time(), None, "gone");
    }

    #[test]
    fn a_program_is_told_from_no_program_and_from_a_file_it_may_not_read() {
        assert_eq!(
            exe_lookup(std::process::id()).ok(),
            fs::metadata("/proc/self/exe").ok().map(|m| FileId::of(&m))
        );
        // kthreadd runs no program.
        assert_eq!(exe_lookup(2), Err(ExeLookup::NoProgram));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert_eq!(exe_lookup(pid), Err(ExeLookup::NoProgram), "reaped");
        // init runs a program, whether or not this process may see its file
        // (not without root; in some containers not even as root).
        assert_ne!(exe_lookup(1), Err(ExeLookup::NoProgram));
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
        assert_eq!(exe_lookup(pid), Err(ExeLookup::NoProgram));
        assert!(matches!(
            ProcessHandle::open(pid),
            Err(ProcessError::Gone { .. })
        ));
        child.wait().unwrap();
    }

    #[test]
    fn a_process_whose_main_thread_ended_still_runs_its_program() {
        let program = crate::testsupport::leaderless::program();
        let mut child = std::process::Command::new(program)
            .stdin(std::process::Stdio::piped())
            .arg("wait")
            .spawn()
            .unwrap();
        let pid = child.id();
        let before = identify(pid).expect("running");
        let file = exe_lookup(pid).expect("its program");
        assert_eq!(leaderless(pid), None, "its main thread still runs");
        // Let the main thread end: the other one runs on.
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"x").unwrap();
        crate::testsupport::leaderless::wait_main_thread_ended(pid);
        assert!(
            fs::metadata(format!("/proc/{pid}/exe")).is_err(),
            "the kernel's view changed"
        );
        assert!(leaderless(pid).is_some());

        assert_eq!(identify(pid), Some(before), "still the same process");
        assert_eq!(exe_lookup(pid), Ok(file));
        assert_eq!(exe_file(pid), Some(file));
        let names = names(pid);
        assert_eq!(names.exe_path.as_deref(), Some(program));
        assert_eq!(names.args, [program.to_str().unwrap(), "wait"]);
        assert!(names.comm.is_some());
        assert!(
            exec_mappings(pid)
                .iter()
                .any(|m| (m.dev, m.ino) == file.inode()),
            "its maps, through a live thread"
        );
        let mapped = exec_mappings(pid)
            .into_iter()
            .find(|m| (m.dev, m.ino) == file.inode())
            .unwrap();
        assert_eq!(mapped_file(pid, &mapped).map(|(id, _)| id), Some(file));
        assert_eq!(resolve_in(pid, program.to_str().unwrap()), Some(file));
        assert!(open_exe(pid).is_ok());

        let h = ProcessHandle::open_as(before).expect("a handle on it");
        assert!(h.is_alive());
        assert!(h.cpu_time().is_some());
        h.stop(Stop::Forced).unwrap();
        child.wait().unwrap();
        assert!(!h.is_alive());
        assert_eq!(identify(pid), None);
        assert_eq!(exe_lookup(pid), Err(ExeLookup::NoProgram));
    }

    /// The idle rule (R14) reads a process's CPU time: a busy product
    /// without its main thread is counted whole, not as idle.
    #[test]
    fn the_cpu_time_of_a_process_without_its_main_thread_counts_its_other_threads() {
        let program = crate::testsupport::leaderless::program();
        let mut child = std::process::Command::new(program)
            .arg("spin")
            .spawn()
            .unwrap();
        let pid = child.id();
        crate::testsupport::leaderless::wait_main_thread_ended(pid);
        let h = ProcessHandle::open(pid).unwrap();
        let first = h.cpu_time().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while h.cpu_time().unwrap() < first + Duration::from_millis(50) {
            assert!(std::time::Instant::now() < deadline, "no CPU time counted");
            std::thread::sleep(Duration::from_millis(20));
        }
        h.stop(Stop::Forced).unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn a_process_whose_threads_all_ended_is_not_alive() {
        let program = crate::testsupport::leaderless::program();
        let mut child = std::process::Command::new(program).spawn().unwrap();
        let pid = child.id();
        crate::testsupport::leaderless::wait_main_thread_ended(pid);
        // SAFETY: kill has no memory preconditions.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        // Wait for the end without reaping: a zombie, now with one thread.
        // SAFETY: a zeroed siginfo_t is valid for waitid to fill.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let r = unsafe { libc::waitid(libc::P_PID, pid, &mut info, libc::WEXITED | libc::WNOWAIT) };
        assert_eq!(r, 0);
        assert_eq!(start_ticks(pid), None);
        assert_eq!(leaderless(pid), None);
        assert_eq!(exe_lookup(pid), Err(ExeLookup::NoProgram));
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
