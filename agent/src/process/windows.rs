//! Process identity and control on Windows, always through a process handle.
//!
//! A [`ProcessHandle`] is opened when a process is detected or attached and kept
//! for the life of its session: while the agent holds it, Windows does not reuse
//! the pid, and every later call (alive? close it, kill it) goes to the very
//! process that was detected, never to whatever now has its number. The
//! creation time (a FILETIME, 100 ns since 1601) with the pid identifies the
//! process across agent restarts, when the handle must be opened again.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use windows_sys::Win32::Foundation::{FILETIME, HWND, LPARAM, WAIT_TIMEOUT};
use windows_sys::Win32::Security::TOKEN_QUERY;
use windows_sys::Win32::Storage::FileSystem::SYNCHRONIZE;
use windows_sys::Win32::System::Threading::{
    GetExitCodeProcess, GetProcessTimes, OpenProcess, OpenProcessToken, QueryFullProcessImageNameW,
    TerminateProcess, WaitForSingleObject, PROCESS_NAME_WIN32, PROCESS_QUERY_LIMITED_INFORMATION,
    PROCESS_TERMINATE,
};
use windows_sys::Win32::UI::WindowsAndMessaging::{
    EnumWindows, GetWindow, GetWindowThreadProcessId, IsWindowVisible, PostMessageW, GW_OWNER,
    WM_CLOSE,
};

use super::ProcessId;
use crate::win32::{check, from_wide, token_user, Handle, Sid};

/// Exit code given to a process the agent terminates.
pub const KILLED_EXIT_CODE: u32 = 1;

/// An open process.
#[derive(Debug)]
pub struct ProcessHandle {
    handle: Handle,
    id: ProcessId,
}

impl ProcessHandle {
    /// Opens `pid` with the rights the agent needs (query, wait, terminate).
    pub fn open(pid: u32) -> io::Result<ProcessHandle> {
        // SAFETY: plain integer arguments; the result is checked.
        let raw = unsafe {
            OpenProcess(
                PROCESS_QUERY_LIMITED_INFORMATION | PROCESS_TERMINATE | SYNCHRONIZE,
                0,
                pid,
            )
        };
        let handle = Handle::check(raw)?;
        let start_time = creation_time(&handle)?;
        Ok(ProcessHandle {
            handle,
            id: ProcessId { pid, start_time },
        })
    }

    /// Opens `id.pid` only if it is still the process `id` names.
    pub fn reopen(id: ProcessId) -> Option<ProcessHandle> {
        let h = ProcessHandle::open(id.pid).ok()?;
        (h.id == id && h.is_alive()).then_some(h)
    }

    pub fn identity(&self) -> ProcessId {
        self.id
    }

    pub fn pid(&self) -> u32 {
        self.id.pid
    }

    /// The raw handle, for calls that take one (job assignment).
    pub fn raw_handle(&self) -> windows_sys::Win32::Foundation::HANDLE {
        self.handle.raw()
    }

    /// Whether the process still runs.
    pub fn is_alive(&self) -> bool {
        // SAFETY: a valid process handle opened with SYNCHRONIZE.
        unsafe { WaitForSingleObject(self.handle.raw(), 0) == WAIT_TIMEOUT }
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

    /// Asks the process to quit as a user would: WM_CLOSE to each of its
    /// top-level windows. Returns how many windows were asked (1 when a helper
    /// was sent, see below); 0 for a process without windows (a console
    /// program), which then only stops when killed.
    ///
    /// A service runs in Session 0 and cannot reach windows on a user's
    /// desktop: when the product runs in another session, `flexctl.exe
    /// close-windows PID` is started in that session, as its user, to post
    /// the messages there.
    pub fn close_gracefully(&self) -> usize {
        let here = close_windows_of(self.id.pid);
        if here > 0 {
            return here;
        }
        match close_in_users_session(self.id.pid) {
            Ok(true) => 1,
            Ok(false) => 0,
            Err(e) => {
                tracing::warn!(
                    pid = self.id.pid,
                    "cannot ask the product to close in its session: {e}"
                );
                0
            }
        }
    }

    /// Ends the process now (TerminateProcess).
    pub fn kill(&self) -> io::Result<()> {
        if !self.is_alive() {
            return Ok(());
        }
        // SAFETY: a valid handle opened with PROCESS_TERMINATE.
        check(unsafe { TerminateProcess(self.handle.raw(), KILLED_EXIT_CODE) })
    }

    /// Full Win32 path of its executable.
    pub fn exe_path(&self) -> Option<PathBuf> {
        let mut buf = vec![0u16; 1024];
        let mut len = buf.len() as u32;
        // SAFETY: a buffer and its length in UTF-16 units.
        check(unsafe {
            QueryFullProcessImageNameW(
                self.handle.raw(),
                PROCESS_NAME_WIN32,
                buf.as_mut_ptr(),
                &mut len,
            )
        })
        .ok()?;
        Some(PathBuf::from(from_wide(&buf[..len as usize])))
    }

    /// The account the process runs as.
    pub fn owner(&self) -> Option<Sid> {
        let mut token = std::ptr::null_mut();
        // SAFETY: a valid process handle; `token` receives a new handle.
        check(unsafe { OpenProcessToken(self.handle.raw(), TOKEN_QUERY, &mut token) }).ok()?;
        token_user(&Handle::new(token)?).ok()
    }
}

/// Handles of the processes the agent watches, held from detection (or
/// attach) until the process is known to have exited, so closing a session
/// always reaches the process that was detected.
static HELD: std::sync::Mutex<Option<HashMap<u32, Arc<ProcessHandle>>>> =
    std::sync::Mutex::new(None);

fn held() -> std::sync::MutexGuard<'static, Option<HashMap<u32, Arc<ProcessHandle>>>> {
    HELD.lock().unwrap_or_else(|e| e.into_inner())
}

/// Keeps `handle` until [`release`] of its pid.
pub fn hold(handle: Arc<ProcessHandle>) {
    held()
        .get_or_insert_with(HashMap::new)
        .insert(handle.pid(), handle);
}

/// Opens and holds `pid` if no handle is held for it yet.
pub fn hold_pid(pid: u32) {
    if held_handle(pid).is_none() {
        if let Ok(h) = ProcessHandle::open(pid) {
            hold(Arc::new(h));
        }
    }
}

/// The handle held for `pid`, if any.
pub fn held_handle(pid: u32) -> Option<Arc<ProcessHandle>> {
    held().as_ref()?.get(&pid).cloned()
}

/// Forgets the handle of `pid` (its process ended).
pub fn release(pid: u32) {
    if let Some(map) = held().as_mut() {
        map.remove(&pid);
    }
}

/// The held handle of `pid`, else a fresh one (a session restored from the
/// journal after a restart, before the watcher adopted it again).
fn handle_for(pid: u32) -> Option<Arc<ProcessHandle>> {
    held_handle(pid).or_else(|| ProcessHandle::open(pid).ok().map(Arc::new))
}

/// Whether the process of `pid` still runs.
pub fn pid_alive(pid: u32) -> bool {
    handle_for(pid).is_some_and(|h| h.is_alive())
}

/// Asks the process of `pid` to close (WM_CLOSE); how many windows were asked.
pub fn close_pid(pid: u32) -> usize {
    handle_for(pid).map_or(0, |h| h.close_gracefully())
}

/// Terminates the process of `pid`.
pub fn kill_pid(pid: u32) -> io::Result<()> {
    match handle_for(pid) {
        Some(h) => h.kill(),
        None => Ok(()),
    }
}

/// The account process `pid` runs as; `None` if it is gone or not ours to see.
pub fn owner(pid: u32) -> Option<Sid> {
    ProcessHandle::open(pid).ok()?.owner()
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
    Ok(filetime_u64(created))
}

pub(crate) fn filetime_u64(t: FILETIME) -> u64 {
    (u64::from(t.dwHighDateTime) << 32) | u64::from(t.dwLowDateTime)
}

/// Wall-clock time of a FILETIME (100 ns ticks since 1601-01-01 UTC).
pub fn filetime_to_utc(ticks: u64) -> chrono::DateTime<chrono::Utc> {
    const UNIX_EPOCH_TICKS: u64 = 116_444_736_000_000_000;
    let since = ticks.saturating_sub(UNIX_EPOCH_TICKS);
    chrono::DateTime::from_timestamp(
        (since / 10_000_000) as i64,
        (since % 10_000_000) as u32 * 100,
    )
    .unwrap_or_else(chrono::Utc::now)
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

/// Posts WM_CLOSE to the visible top-level windows of `pid` (to its hidden
/// ones if it shows none); returns how many were asked.
pub fn close_windows_of(pid: u32) -> usize {
    let mut search = Search {
        pid,
        visible: Vec::new(),
        hidden: Vec::new(),
    };
    // SAFETY: the callback only reads `search` through the LPARAM, during the call.
    unsafe { EnumWindows(Some(collect), &mut search as *mut Search as LPARAM) };
    let targets = if search.visible.is_empty() {
        search.hidden
    } else {
        search.visible
    };
    targets
        .iter()
        // SAFETY: posting a message to a window handle is always allowed to fail.
        .filter(|&&hwnd| unsafe { PostMessageW(hwnd, WM_CLOSE, 0, 0) } != 0)
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handle_identifies_and_stops_a_child() {
        let mut child = std::process::Command::new("cmd")
            .args(["/c", "ping", "-n", "30", "127.0.0.1"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start cmd");
        let h = ProcessHandle::open(child.id()).unwrap();
        assert!(h.is_alive());
        assert_eq!(h.identity().pid, child.id());
        assert!(h.identity().start_time > 0);
        let again = ProcessHandle::reopen(h.identity()).expect("same process");
        assert_eq!(again.identity(), h.identity());
        let exe = h.exe_path().expect("image path");
        assert!(
            exe.file_name().unwrap().eq_ignore_ascii_case("cmd.exe"),
            "{exe:?}"
        );
        assert_eq!(h.owner(), owner(std::process::id()));
        // A console program has no window to close.
        assert_eq!(h.close_gracefully(), 0);
        h.kill().unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(KILLED_EXIT_CODE as i32));
        assert!(!h.is_alive());
        assert_eq!(h.exit_code(), Some(KILLED_EXIT_CODE));
        // Killing an ended process is not an error; reopening it finds nothing.
        h.kill().unwrap();
        assert!(ProcessHandle::reopen(h.identity()).is_none());
    }

    #[test]
    fn filetime_conversion() {
        // 2026-01-01T00:00:00Z
        let t = filetime_to_utc(116_444_736_000_000_000 + 1_767_225_600 * 10_000_000);
        assert_eq!(t.to_rfc3339(), "2026-01-01T00:00:00+00:00");
    }
}
