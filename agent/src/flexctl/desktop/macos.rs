//! macOS: the user's idle time is the HID system's `HIDIdleTime` (nanoseconds
//! since the last keyboard, mouse or trackpad input) and the lock state is the
//! console user's `CGSSessionScreenIsLocked`, both read from the I/O Registry
//! with `ioreg`, the system's own tool (no private framework is linked).
//!
//! The parsers are plain text functions, tested on every OS; the reader that
//! runs `ioreg` exists on macOS only.

use std::time::Duration;

/// `HIDIdleTime` in the output of `ioreg -c IOHIDSystem -d 4`: the first
/// `"HIDIdleTime" = N` line.
pub fn hid_idle_time(ioreg: &str) -> Option<Duration> {
    ioreg.lines().find_map(|line| {
        let (_, rest) = line.split_once("\"HIDIdleTime\"")?;
        let value = rest.trim_start().strip_prefix('=')?.trim();
        value.parse::<u64>().ok().map(Duration::from_nanos)
    })
}

/// Whether the console session of user `uid` shows the lock screen, from the
/// output of `ioreg -n Root -d 1`, whose `IOConsoleUsers` is a list of
/// `{"kCGSSessionUserIDKey"=501,...,"CGSSessionScreenIsLocked"=Yes,...}`
/// dictionaries. `None` when that user has no console session listed.
pub fn screen_locked(ioreg: &str, uid: u32) -> Option<bool> {
    let users = ioreg.split_once("\"IOConsoleUsers\"")?.1;
    let mut found = None;
    for entry in users.split('{').skip(1) {
        let entry = entry.split('}').next().unwrap_or_default();
        let key = |name: &str| {
            entry.split(',').find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                (k.trim().trim_matches('"') == name).then(|| v.trim().trim_matches('"'))
            })
        };
        if key("kCGSSessionUserIDKey").and_then(|v| v.parse::<u32>().ok()) != Some(uid) {
            continue;
        }
        let locked = key("CGSSessionScreenIsLocked") == Some("Yes");
        // Several sessions of one user (fast user switching): locked if any is.
        found = Some(found.unwrap_or(false) || locked);
    }
    found
}

/// Reads both through `/usr/sbin/ioreg`.
#[cfg(target_os = "macos")]
pub struct Ioreg;

#[cfg(target_os = "macos")]
impl Ioreg {
    fn run(args: &[&str]) -> Result<String, super::DesktopError> {
        let out = std::process::Command::new("/usr/sbin/ioreg")
            .args(args)
            .output()
            .map_err(|e| super::DesktopError::new("ioreg", "run /usr/sbin/ioreg", e))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

#[cfg(target_os = "macos")]
impl super::IdleSource for Ioreg {
    fn name(&self) -> &'static str {
        "HIDIdleTime"
    }

    fn read(&mut self) -> Result<super::IdleReading, super::DesktopError> {
        let text = Self::run(&["-c", "IOHIDSystem", "-d", "4"])?;
        let idle = hid_idle_time(&text).ok_or_else(|| {
            super::DesktopError::new("ioreg", "read HIDIdleTime", "no HIDIdleTime in its output")
        })?;
        Ok(super::IdleReading {
            idle,
            locked: false,
        })
    }
}

#[cfg(target_os = "macos")]
impl super::LockSource for Ioreg {
    fn locked(&mut self) -> Result<bool, super::DesktopError> {
        let text = Self::run(&["-n", "Root", "-d", "1"])?;
        Ok(screen_locked(&text, nix::unistd::getuid().as_raw()).unwrap_or(false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hid_idle_time_is_read_in_nanoseconds() {
        let text = r#"+-o IOHIDSystem  <class IOHIDSystem, id 0x100000463, registered, matched, active, busy 0 (0 ms), retain 19>
    {
      "IOClass" = "IOHIDSystem"
      "HIDParameters" = {"HIDClickTime"=500000000}
      "HIDIdleTime" = 61234567890
      "IOProviderClass" = "IOResources"
    }"#;
        assert_eq!(
            hid_idle_time(text),
            Some(Duration::from_nanos(61_234_567_890))
        );
        assert_eq!(hid_idle_time("\"HIDIdleTime\" = soon"), None);
        assert_eq!(hid_idle_time(""), None);
    }

    #[test]
    fn the_lock_state_is_the_users_own_session() {
        let text = r#"+-o Root  <class IORegistryEntry, id 0x100000100, retain 27>
    {
      "IOConsoleLocked" = No
      "IOConsoleUsers" = ({"kCGSSessionOnConsoleKey"=Yes,"kCGSSessionUserIDKey"=501,"kCGSessionLoginDoneKey"=Yes,"CGSSessionScreenIsLocked"=Yes,"kCGSSessionUserNameKey"="ada"},{"kCGSSessionUserIDKey"=502,"kCGSSessionUserNameKey"="bob"})
      "IOKitBuildVersion" = "Darwin Kernel Version 23.0.0"
    }"#;
        assert_eq!(screen_locked(text, 501), Some(true));
        assert_eq!(screen_locked(text, 502), Some(false));
        assert_eq!(screen_locked(text, 503), None);
        assert_eq!(screen_locked("nothing", 501), None);
    }
}
