//! Windows: `GetLastInputInfo` (the tick of this session's last input), the
//! session's lock state from `WTSQuerySessionInformation(WTSSessionInfoEx)`,
//! and WM_CLOSE to a process's main windows on this desktop.

use std::time::Duration;

use windows_sys::Win32::System::RemoteDesktop::{
    WTSFreeMemory, WTSQuerySessionInformationW, WTSSessionInfoEx, WTSINFOEXW,
    WTS_CURRENT_SERVER_HANDLE, WTS_CURRENT_SESSION, WTS_SESSIONSTATE_LOCK,
};
use windows_sys::Win32::System::SystemInformation::GetTickCount;
use windows_sys::Win32::UI::Input::KeyboardAndMouse::{GetLastInputInfo, LASTINPUTINFO};

use super::{DesktopError, IdleReading, IdleSource, LockSource, WindowCloser};

/// Milliseconds from tick `last_input` to tick `now` of the 32-bit tick
/// counter, which wraps every 49.7 days.
pub fn ticks_since(last_input: u32, now: u32) -> Duration {
    Duration::from_millis(now.wrapping_sub(last_input).into())
}

/// The lock state in `SessionFlags` of `WTSINFOEX_LEVEL1`. (Windows 7 and
/// Server 2008 R2 report it inverted; neither is supported.)
pub fn locked_flag(session_flags: i32) -> Option<bool> {
    match session_flags as u32 {
        WTS_SESSIONSTATE_LOCK => Some(true),
        windows_sys::Win32::System::RemoteDesktop::WTS_SESSIONSTATE_UNLOCK => Some(false),
        _ => None,
    }
}

/// This session's input and windows.
pub struct Input;

impl IdleSource for Input {
    fn name(&self) -> &'static str {
        "GetLastInputInfo"
    }

    fn read(&mut self) -> Result<IdleReading, DesktopError> {
        let mut info = LASTINPUTINFO {
            cbSize: std::mem::size_of::<LASTINPUTINFO>() as u32,
            dwTime: 0,
        };
        // SAFETY: `info` is a LASTINPUTINFO with its size set, as required.
        if unsafe { GetLastInputInfo(&mut info) } == 0 {
            return Err(DesktopError::new(
                "Windows",
                "read the last input time",
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: no arguments.
        let now = unsafe { GetTickCount() };
        Ok(IdleReading {
            idle: ticks_since(info.dwTime, now),
            locked: false,
        })
    }
}

impl LockSource for Input {
    fn locked(&mut self) -> Result<bool, DesktopError> {
        let mut buf: *mut u16 = std::ptr::null_mut();
        let mut len = 0u32;
        // SAFETY: out pointers to locals; the buffer is freed below.
        let ok = unsafe {
            WTSQuerySessionInformationW(
                WTS_CURRENT_SERVER_HANDLE,
                WTS_CURRENT_SESSION,
                WTSSessionInfoEx,
                &mut buf,
                &mut len,
            )
        };
        if ok == 0 || buf.is_null() {
            return Err(DesktopError::new(
                "Windows",
                "read the session's lock state",
                std::io::Error::last_os_error(),
            ));
        }
        let flags = if len as usize >= std::mem::size_of::<WTSINFOEXW>() {
            // SAFETY: the API returned a WTSINFOEXW of `len` bytes at `buf`;
            // level 1 is the only level there is, and its plain integers may
            // be read whatever the level says.
            let info = unsafe { &*(buf as *const WTSINFOEXW) };
            let flags = unsafe { info.Data.WTSInfoExLevel1.SessionFlags };
            (info.Level == 1).then_some(flags)
        } else {
            None
        };
        // SAFETY: allocated by WTSQuerySessionInformationW, freed once.
        unsafe { WTSFreeMemory(buf.cast()) };
        Ok(flags.and_then(locked_flag).unwrap_or(false))
    }
}

impl WindowCloser for Input {
    fn close_windows(&mut self, pid: u32) -> Result<u32, DesktopError> {
        Ok(crate::process::close_windows_of(pid) as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_wrap_around() {
        assert_eq!(ticks_since(1_000, 61_000), Duration::from_secs(60));
        assert_eq!(ticks_since(u32::MAX - 999, 59_000), Duration::from_secs(60));
    }

    #[test]
    fn lock_flags() {
        assert_eq!(locked_flag(0), Some(true));
        assert_eq!(locked_flag(1), Some(false));
        assert_eq!(locked_flag(-1), None);
    }

    #[test]
    fn this_session_answers() {
        // Under Wine as in Windows: the calls work and give a sane answer.
        let r = Input.read().expect("GetLastInputInfo");
        assert!(r.idle < Duration::from_secs(49 * 86_400), "{r:?}");
        let _ = Input.locked();
    }
}
