//! Windows: identity, details and control of processes through process handles.
//!
//! A [`ProcessHandle`] is a process handle opened when a process is detected or
//! attached and kept for the life of its session: while any handle to a process
//! is open Windows does not give its pid to another process, so every later call
//! (alive? close it, terminate it) reaches the very process that was detected.
//! The creation time (a FILETIME, 100 ns since 1601) with the pid is its
//! [`ProcessId`], kept in the journal, so after an agent restart
//! [`ProcessHandle::open_as`] recognises a pid that now runs something else.
//!
//! Closing is WM_CLOSE to the process's top-level windows (a graceful stop, as
//! a user would close it), then `TerminateProcess`. A service runs in Session 0
//! and cannot post to a user's desktop, so for a process in another session
//! `flexctl.exe close-windows PID` is started in that session, as its user, to
//! post the messages there.

use std::ffi::c_void;
use std::io;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use windows_sys::Win32::Foundation::{
    ERROR_ACCESS_DENIED, ERROR_INVALID_PARAMETER, FILETIME, HANDLE, HWND, INVALID_HANDLE_VALUE,
    LPARAM, WAIT_TIMEOUT,
};
use windows_sys::Win32::Security::TOKEN_QUERY;
use windows_sys::Win32::Storage::FileSystem::SYNCHRONIZE;
use windows_sys::Win32::System::Diagnostics::ToolHelp::{
    CreateToolhelp32Snapshot, Process32FirstW, Process32NextW, PROCESSENTRY32W, TH32CS_SNAPPROCESS,
};
use windows_sys::Win32::System::Threading::{
    GetExitCodeProcess, GetProcessTimes, OpenProcess, OpenProcessToken, QueryFullProcessImageNameW,
    RegisterWaitForSingleObject, TerminateProcess, UnregisterWaitEx, WaitForSingleObject, INFINITE,
    PROCESS_ACCESS_RIGHTS, PROCESS_NAME_WIN32, PROCESS_QUERY_LIMITED_INFORMATION,
    PROCESS_TERMINATE, WT_EXECUTEONLYONCE,
};
use windows_sys::Win32::UI::WindowsAndMessaging::{
    EnumWindows, GetWindow, GetWindowThreadProcessId, IsWindowVisible, PostMessageW, GW_OWNER,
    WM_CLOSE,
};

use super::{Names, ProcessError, ProcessId, Stop};
use crate::account::AccountId;
use crate::win32::{check, from_wide, token_user, Handle};

/// Exit code given to a process the agent terminates.
pub const KILLED_EXIT_CODE: u32 = 1;

/// (pid, executable file name) of every process, from one Toolhelp snapshot.
pub fn snapshot() -> io::Result<Vec<(u32, String)>> {
    // SAFETY: plain flags; the handle is checked and owned.
    let snap = Handle::check(unsafe { CreateToolhelp32Snapshot(TH32CS_SNAPPROCESS, 0) })?;
    let mut out = Vec::with_capacity(512);
    // SAFETY: an all-zero PROCESSENTRY32W is valid; dwSize is set below.
    let mut entry: PROCESSENTRY32W = unsafe { std::mem::zeroed() };
    entry.dwSize = std::mem::size_of::<PROCESSENTRY32W>() as u32;
    // SAFETY: a snapshot handle and an entry with its size set.
    let mut more = unsafe { Process32FirstW(snap.raw(), &mut entry) } != 0;
    while more {
        out.push((entry.th32ProcessID, from_wide(&entry.szExeFile)));
        // SAFETY: as above.
        more = unsafe { Process32NextW(snap.raw(), &mut entry) } != 0;
    }
    Ok(out)
}

/// Every process's pid.
pub fn list_pids() -> io::Result<Vec<u32>> {
    Ok(snapshot()?.into_iter().map(|(pid, _)| pid).collect())
}

/// The names of `pid`: its executable's full path. The command line lives in
/// the other process's memory; the agent does not read it.
pub fn names(pid: u32) -> Names {
    Names {
        exe_path: open_raw(pid, PROCESS_QUERY_LIMITED_INFORMATION)
            .ok()
            .and_then(|h| image_path(&h)),
        comm: None,
        args: Vec::new(),
    }
}

/// The account `pid` runs as; `None` if it is gone or not ours to see.
pub fn owner(pid: u32) -> Option<AccountId> {
    let h = open_raw(pid, PROCESS_QUERY_LIMITED_INFORMATION).ok()?;
    token_owner(&h).ok()
}

/// The identity of the process running as `pid` now.
pub fn identify(pid: u32) -> Option<ProcessId> {
    let h = open_raw(pid, PROCESS_QUERY_LIMITED_INFORMATION | SYNCHRONIZE).ok()?;
    if !alive(&h) {
        return None;
    }
    let start = creation_time(&h).ok()?;
    Some(ProcessId { pid, start })
}

/// Wall-clock time of a start time (a FILETIME).
pub fn start_time(id: ProcessId) -> DateTime<Utc> {
    filetime_to_utc(id.start)
}

/// An open process: its identity, its owner and the handle every call goes
/// through.
#[derive(Debug)]
pub struct ProcessHandle {
    handle: Handle,
    id: ProcessId,
    owner: AccountId,
}

impl ProcessHandle {
    /// Opens whatever process runs as `pid` now.
    pub fn open(pid: u32) -> Result<ProcessHandle, ProcessError> {
        Self::open_checked(pid, None)
    }

    /// Opens the process `id` names, or fails if `id.pid` now runs another
    /// process (or none).
    /// The same as [`open_as`](Self::open_as) here: there is no descriptor to
    /// run out of.
    pub fn by_pid(id: ProcessId) -> Result<ProcessHandle, ProcessError> {
        Self::open_as(id)
    }

    pub fn open_as(id: ProcessId) -> Result<ProcessHandle, ProcessError> {
        Self::open_checked(id.pid, Some(id.start))
    }

    fn open_checked(pid: u32, expected: Option<u64>) -> Result<ProcessHandle, ProcessError> {
        let full = PROCESS_QUERY_LIMITED_INFORMATION | PROCESS_TERMINATE | SYNCHRONIZE;
        let handle = match open_raw(pid, full) {
            // A process we may watch but not terminate (another account's, when
            // not run as LocalSystem): stop() will say so.
            Err(ProcessError::Io { source, .. })
                if source.raw_os_error() == Some(ERROR_ACCESS_DENIED as i32) =>
            {
                open_raw(pid, PROCESS_QUERY_LIMITED_INFORMATION | SYNCHRONIZE)?
            }
            other => other?,
        };
        // A handle keeps an ended process's object (and pid) alive: an ended
        // process is gone, as a zombie is on Linux.
        if !alive(&handle) {
            return Err(ProcessError::Gone { pid });
        }
        let io = |action| {
            move |source| ProcessError::Io {
                pid,
                action,
                source,
            }
        };
        let start = creation_time(&handle).map_err(io("read the start time of"))?;
        let owner = token_owner(&handle).map_err(io("read the owner of"))?;
        if let Some(expected) = expected.filter(|&e| e != start) {
            return Err(ProcessError::Replaced {
                pid,
                expected,
                found: start,
            });
        }
        Ok(ProcessHandle {
            handle,
            id: ProcessId { pid, start },
            owner,
        })
    }

    pub fn id(&self) -> ProcessId {
        self.id
    }

    pub fn owner(&self) -> &AccountId {
        &self.owner
    }

    /// The raw handle, for calls that take one (job assignment).
    pub fn raw_handle(&self) -> HANDLE {
        self.handle.raw()
    }

    /// Whether the process still runs.
    pub fn is_alive(&self) -> bool {
        alive(&self.handle)
    }

    /// CPU time used so far (kernel and user), for the idle rule (R14).
    pub fn cpu_time(&self) -> Option<std::time::Duration> {
        let zero = FILETIME {
            dwLowDateTime: 0,
            dwHighDateTime: 0,
        };
        let (mut created, mut exited, mut kernel, mut user) = (zero, zero, zero, zero);
        // SAFETY: a valid handle and four out FILETIMEs.
        check(unsafe {
            GetProcessTimes(
                self.handle.raw(),
                &mut created,
                &mut exited,
                &mut kernel,
                &mut user,
            )
        })
        .ok()?;
        let ticks = |f: FILETIME| (u64::from(f.dwHighDateTime) << 32) | u64::from(f.dwLowDateTime);
        // FILETIME counts 100 ns.
        Some(std::time::Duration::from_nanos(
            (ticks(kernel) + ticks(user)).saturating_mul(100),
        ))
    }

    /// Its exit code once it has ended.
    pub fn exit_code(&self) -> Option<u32> {
        if self.is_alive() {
            return None;
        }
        let mut code = 0;
        // SAFETY: a valid handle and an out u32.
        check(unsafe { GetExitCodeProcess(self.handle.raw(), &mut code) }).ok()?;
        Some(code)
    }

    /// Full Win32 path of its executable.
    pub fn exe_path(&self) -> Option<PathBuf> {
        image_path(&self.handle)
    }

    /// Asks the process to stop: `Graceful` posts WM_CLOSE to its top-level
    /// windows (through the close helper in the user's session when that is
    /// not ours); a process that shows no window (a console program) then only
    /// stops at `Forced`, which is TerminateProcess. A process that has ended
    /// is not an error.
    pub fn stop(&self, how: Stop) -> Result<(), ProcessError> {
        if !self.is_alive() {
            return Ok(());
        }
        let pid = self.id.pid;
        match how {
            Stop::Graceful => {
                if close_windows_of(pid) == 0 {
                    match close_in_users_session(pid) {
                        Ok(true) => {}
                        Ok(false) => tracing::info!(
                            pid,
                            "the product shows no window to close: it is terminated after the close grace"
                        ),
                        Err(source) => {
                            return Err(ProcessError::Io {
                                pid,
                                action: "ask (in its user's session) to close",
                                source,
                            })
                        }
                    }
                }
                Ok(())
            }
            Stop::Forced => {
                // SAFETY: a valid handle, opened with PROCESS_TERMINATE when allowed.
                let ok = unsafe { TerminateProcess(self.handle.raw(), KILLED_EXIT_CODE) };
                match check(ok) {
                    Ok(()) => Ok(()),
                    // Ended between the check above and the call.
                    Err(_) if !self.is_alive() => Ok(()),
                    Err(source) => Err(ProcessError::Io {
                        pid,
                        action: "terminate",
                        source,
                    }),
                }
            }
        }
    }

    /// Resolves when the process exits: a thread-pool wait on the handle, or
    /// polling if that cannot be registered.
    pub async fn exited(&self) {
        match ExitWait::register(&self.handle) {
            Ok((wait, ended)) => {
                let _ = ended.await;
                drop(wait);
            }
            Err(e) => {
                tracing::debug!(
                    pid = self.id.pid,
                    "cannot wait on the process handle ({e}): polling"
                );
                while self.is_alive() {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

/// A wait registered with the thread pool on a process handle; the callback
/// fires once, when the process ends. Dropping it unregisters the wait (and
/// waits for a running callback) before freeing the callback's sender.
struct ExitWait {
    wait: HANDLE,
    sender: *mut Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
}

// SAFETY: the wait handle and the boxed sender may be used and freed from any
// thread; the sender is only touched under its mutex.
unsafe impl Send for ExitWait {}

impl ExitWait {
    fn register(process: &Handle) -> io::Result<(ExitWait, tokio::sync::oneshot::Receiver<()>)> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sender = Box::into_raw(Box::new(Mutex::new(Some(tx))));
        let mut wait: HANDLE = std::ptr::null_mut();
        // SAFETY: a valid process handle that outlives the wait (the caller
        // holds it while awaiting), a callback that only uses `sender`, which
        // stays allocated until the wait is unregistered in Drop.
        let ok = unsafe {
            RegisterWaitForSingleObject(
                &mut wait,
                process.raw(),
                Some(on_exit),
                sender as *const c_void,
                INFINITE,
                WT_EXECUTEONLYONCE,
            )
        };
        if let Err(e) = check(ok) {
            // SAFETY: not registered: we still own the box.
            drop(unsafe { Box::from_raw(sender) });
            return Err(e);
        }
        Ok((ExitWait { wait, sender }, rx))
    }
}

unsafe extern "system" fn on_exit(context: *mut c_void, _timed_out: bool) {
    // SAFETY: `context` is the sender box of a registered ExitWait, freed only
    // after the wait is unregistered and this callback has returned.
    let sender = unsafe { &*(context as *const Mutex<Option<tokio::sync::oneshot::Sender<()>>>) };
    if let Some(tx) = sender.lock().unwrap_or_else(|e| e.into_inner()).take() {
        let _ = tx.send(());
    }
}

impl Drop for ExitWait {
    fn drop(&mut self) {
        // SAFETY: a registered wait; INVALID_HANDLE_VALUE makes the call wait
        // for a callback in progress, so the box is unused afterwards.
        unsafe { UnregisterWaitEx(self.wait, INVALID_HANDLE_VALUE) };
        // SAFETY: allocated in register, freed once, no callback can run now.
        drop(unsafe { Box::from_raw(self.sender) });
    }
}

fn open_raw(pid: u32, access: PROCESS_ACCESS_RIGHTS) -> Result<Handle, ProcessError> {
    // SAFETY: plain integer arguments; the result is checked.
    let raw = unsafe { OpenProcess(access, 0, pid) };
    Handle::check(raw).map_err(|source| {
        // No process has this pid (any more).
        if source.raw_os_error() == Some(ERROR_INVALID_PARAMETER as i32) {
            ProcessError::Gone { pid }
        } else {
            ProcessError::Io {
                pid,
                action: "open",
                source,
            }
        }
    })
}

fn alive(handle: &Handle) -> bool {
    // SAFETY: a valid process handle opened with SYNCHRONIZE.
    unsafe { WaitForSingleObject(handle.raw(), 0) == WAIT_TIMEOUT }
}

fn token_owner(process: &Handle) -> io::Result<AccountId> {
    let mut token = std::ptr::null_mut();
    // SAFETY: a valid process handle; `token` receives a new handle.
    check(unsafe { OpenProcessToken(process.raw(), TOKEN_QUERY, &mut token) })?;
    let token = Handle::check(token)?;
    Ok(AccountId::new(token_user(&token)?.0))
}

fn image_path(process: &Handle) -> Option<PathBuf> {
    let mut buf = vec![0u16; 1024];
    let mut len = buf.len() as u32;
    // SAFETY: a buffer and its length in UTF-16 units.
    check(unsafe {
        QueryFullProcessImageNameW(
            process.raw(),
            PROCESS_NAME_WIN32,
            buf.as_mut_ptr(),
            &mut len,
        )
    })
    .ok()?;
    Some(PathBuf::from(from_wide(&buf[..len as usize])))
}

fn creation_time(handle: &Handle) -> io::Result<u64> {
    let zero = FILETIME {
        dwLowDateTime: 0,
        dwHighDateTime: 0,
    };
    let (mut created, mut exited, mut kernel, mut user) = (zero, zero, zero, zero);
    // SAFETY: a valid handle and four out FILETIMEs.
    check(unsafe {
        GetProcessTimes(
            handle.raw(),
            &mut created,
            &mut exited,
            &mut kernel,
            &mut user,
        )
    })?;
    Ok((u64::from(created.dwHighDateTime) << 32) | u64::from(created.dwLowDateTime))
}

/// Wall-clock time of a FILETIME (100 ns ticks since 1601-01-01 UTC).
pub fn filetime_to_utc(ticks: u64) -> DateTime<Utc> {
    const UNIX_EPOCH_TICKS: u64 = 116_444_736_000_000_000;
    let since = ticks.saturating_sub(UNIX_EPOCH_TICKS);
    DateTime::from_timestamp(
        (since / 10_000_000) as i64,
        (since % 10_000_000) as u32 * 100,
    )
    .unwrap_or_else(Utc::now)
}

/// Starts `flexctl.exe close-windows PID` in the session of `pid` when that is
/// not ours. `Ok(false)`: same session, nothing to do.
fn close_in_users_session(pid: u32) -> io::Result<bool> {
    use windows_sys::Win32::System::RemoteDesktop::{ProcessIdToSessionId, WTSQueryUserToken};
    use windows_sys::Win32::System::Threading::{
        CreateProcessAsUserW, GetCurrentProcessId, CREATE_NO_WINDOW, PROCESS_INFORMATION,
        STARTUPINFOW,
    };
    let (mut mine, mut theirs) = (0, 0);
    // SAFETY: plain pids and out u32s.
    check(unsafe { ProcessIdToSessionId(GetCurrentProcessId(), &mut mine) })?;
    // SAFETY: as above.
    check(unsafe { ProcessIdToSessionId(pid, &mut theirs) })?;
    if mine == theirs {
        return Ok(false);
    }
    let mut token = std::ptr::null_mut();
    // SAFETY: a session id and an out handle (needs LocalSystem's SeTcbPrivilege).
    check(unsafe { WTSQueryUserToken(theirs, &mut token) })?;
    let token = Handle::check(token)?;
    let helper = std::env::current_exe()?.with_file_name("flexctl.exe");
    let mut cmdline = crate::win32::wide(format!("\"{}\" close-windows {pid}", helper.display()));
    let app = crate::win32::wide(&helper);
    let mut desktop = crate::win32::wide("winsta0\\default");
    // SAFETY: all-zero STARTUPINFOW/PROCESS_INFORMATION are valid; sizes set.
    let mut si: STARTUPINFOW = unsafe { std::mem::zeroed() };
    si.cb = std::mem::size_of::<STARTUPINFOW>() as u32;
    si.lpDesktop = desktop.as_mut_ptr();
    // SAFETY: as above.
    let mut pi: PROCESS_INFORMATION = unsafe { std::mem::zeroed() };
    // SAFETY: NUL-terminated strings that outlive the call, a writable command
    // line as the API requires, and the structures above.
    check(unsafe {
        CreateProcessAsUserW(
            token.raw(),
            app.as_ptr(),
            cmdline.as_mut_ptr(),
            std::ptr::null(),
            std::ptr::null(),
            0,
            CREATE_NO_WINDOW,
            std::ptr::null(),
            std::ptr::null(),
            &si,
            &mut pi,
        )
    })?;
    drop((Handle::new(pi.hProcess), Handle::new(pi.hThread)));
    Ok(true)
}

struct Search {
    pid: u32,
    visible: Vec<HWND>,
    hidden: Vec<HWND>,
}

unsafe extern "system" fn collect(hwnd: HWND, param: LPARAM) -> i32 {
    // SAFETY: `param` is the &mut Search passed to EnumWindows below, alive
    // for the whole enumeration, which runs on this thread.
    let search = unsafe { &mut *(param as *mut Search) };
    let mut owner = 0;
    // SAFETY: hwnd comes from the enumeration; `owner` is an out u32.
    unsafe { GetWindowThreadProcessId(hwnd, &mut owner) };
    // Top-level windows without an owner window: the product's main windows,
    // not its dialogs (closing those would answer them).
    // SAFETY: hwnd comes from the enumeration.
    if owner == search.pid && unsafe { GetWindow(hwnd, GW_OWNER) }.is_null() {
        // SAFETY: as above.
        if unsafe { IsWindowVisible(hwnd) } != 0 {
            search.visible.push(hwnd);
        } else {
            search.hidden.push(hwnd);
        }
    }
    1
}

/// The visible top-level windows of `pid` (its hidden ones if it shows none)
/// on this process's desktop.
fn main_windows(pid: u32) -> Vec<HWND> {
    let mut search = Search {
        pid,
        visible: Vec::new(),
        hidden: Vec::new(),
    };
    // SAFETY: the callback only reads `search` through the LPARAM, during the call.
    unsafe { EnumWindows(Some(collect), &mut search as *mut Search as LPARAM) };
    if search.visible.is_empty() {
        search.hidden
    } else {
        search.visible
    }
}

/// Whether `pid` has a top-level window on this desktop (one WM_CLOSE can reach).
pub fn has_window(pid: u32) -> bool {
    !main_windows(pid).is_empty()
}

/// Posts WM_CLOSE to the main windows of `pid` on this desktop; returns how
/// many were asked.
pub fn close_windows_of(pid: u32) -> usize {
    main_windows(pid)
        .iter()
        // SAFETY: posting a message to a window handle is always allowed to fail.
        .filter(|&&hwnd| unsafe { PostMessageW(hwnd, WM_CLOSE, 0, 0) } != 0)
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ping(secs: u32) -> std::process::Child {
        std::process::Command::new("cmd")
            .args(["/c", "ping", "-n", &secs.to_string(), "127.0.0.1"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start cmd")
    }

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(list_pids().unwrap().contains(&me));
        let exe = names(me).exe_path.expect("own image path");
        assert!(exe
            .file_name()
            .unwrap()
            .eq_ignore_ascii_case(std::env::current_exe().unwrap().file_name().unwrap()));
        let started = start_time(identify(me).unwrap());
        let age = Utc::now() - started;
        assert!(
            age.num_seconds() >= -2 && age.num_minutes() < 30,
            "{started}"
        );
        assert!(owner(me).unwrap().as_str().starts_with("S-1-"));
        assert_eq!(identify(u32::MAX - 3), None);
    }

    #[test]
    fn a_handle_names_one_process_and_outlives_it() {
        let mut child = ping(30);
        let pid = child.id();
        let h = ProcessHandle::open(pid).unwrap();
        assert!(h.is_alive());
        assert_eq!(h.id(), identify(pid).unwrap());
        assert_eq!(Some(h.owner().clone()), owner(std::process::id()));
        let exe = h.exe_path().expect("image path");
        assert!(
            exe.file_name().unwrap().eq_ignore_ascii_case("cmd.exe"),
            "{exe:?}"
        );
        // Another start time is another process.
        let other = ProcessId {
            pid,
            start: h.id().start + 1,
        };
        assert!(matches!(
            ProcessHandle::open_as(other),
            Err(ProcessError::Replaced { .. })
        ));
        assert_eq!(ProcessHandle::open_as(h.id()).unwrap().id(), h.id());
        // A console program has no window to close: a graceful stop leaves it.
        h.stop(Stop::Graceful).unwrap();
        assert!(h.is_alive());
        h.stop(Stop::Forced).unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(KILLED_EXIT_CODE as i32));
        assert!(!h.is_alive());
        assert_eq!(h.exit_code(), Some(KILLED_EXIT_CODE));
        // Stopping an ended process is not an error; reopening it finds nothing,
        // although our handle keeps its pid from being reused.
        h.stop(Stop::Forced).unwrap();
        assert!(matches!(
            ProcessHandle::open_as(h.id()),
            Err(ProcessError::Gone { .. })
        ));
    }

    #[tokio::test]
    async fn exited_resolves_when_the_process_ends() {
        let mut child = ping(60);
        let h = ProcessHandle::open(child.id()).unwrap();
        let waiting = tokio::spawn(async move { h.exited().await });
        // An abandoned wait is unregistered cleanly.
        let other = ProcessHandle::open(child.id()).unwrap();
        let abandoned = tokio::spawn(async move { other.exited().await });
        abandoned.abort();
        child.kill().unwrap();
        tokio::time::timeout(Duration::from_secs(20), waiting)
            .await
            .expect("exit seen")
            .unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn filetime_conversion() {
        // 2026-01-01T00:00:00Z
        let t = filetime_to_utc(116_444_736_000_000_000 + 1_767_225_600 * 10_000_000);
        assert_eq!(t.to_rfc3339(), "2026-01-01T00:00:00+00:00");
    }
}
