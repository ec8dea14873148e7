//! Reading the real clocks for the core: the wall clock, a boot clock that counts
//! suspend, and the boot id that tells a reboot apart from an agent restart.
//!
//! This is the I/O half of [`crate::core::clock`]; the driver calls [`now`] before
//! every `Core::handle` and [`boot_id`] once at start.

use std::time::Duration;

use crate::core::Now;

/// The wall clock and the boot clock, read together.
pub fn now() -> Now {
    Now {
        wall: chrono::Utc::now(),
        boot: boot_clock(),
    }
}

/// Time since boot including suspend: `CLOCK_BOOTTIME` on Linux, and
/// `CLOCK_MONOTONIC` on macOS, where it keeps counting during sleep (Windows:
/// below).
#[cfg(any(target_os = "linux", target_os = "android", target_os = "macos"))]
fn boot_clock() -> Duration {
    use nix::time::{clock_gettime, ClockId};
    #[cfg(target_os = "macos")]
    let id = ClockId::CLOCK_MONOTONIC;
    #[cfg(not(target_os = "macos"))]
    let id = ClockId::CLOCK_BOOTTIME;
    match clock_gettime(id) {
        Ok(ts) => Duration::new(ts.tv_sec().max(0) as u64, ts.tv_nsec().max(0) as u32),
        // Never expected; a process-local monotonic clock is the safe fallback
        // (it does not count suspend, so offline time can only be undercounted
        // until the next server contact).
        Err(_) => process_clock(),
    }
}

/// Time since boot including sleep and hibernation on Windows: the tick count
/// keeps counting while the machine sleeps (QueryUnbiasedInterruptTime would
/// not), and like CLOCK_BOOTTIME it restarts at boot.
#[cfg(windows)]
fn boot_clock() -> Duration {
    // SAFETY: no arguments, no memory.
    Duration::from_millis(unsafe {
        windows_sys::Win32::System::SystemInformation::GetTickCount64()
    })
}

#[cfg(not(any(
    target_os = "linux",
    target_os = "android",
    target_os = "macos",
    windows
)))]
fn boot_clock() -> Duration {
    process_clock()
}

#[cfg(not(windows))]
fn process_clock() -> Duration {
    use std::sync::OnceLock;
    use std::time::Instant;
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed()
}

/// The kernel's id of this boot; `None` where the OS has none, in which case a
/// reboot is recognised by the boot clock going back.
pub fn boot_id() -> Option<String> {
    #[cfg(target_os = "linux")]
    {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_clock_moves_forward_and_boot_id_is_stable() {
        let a = now();
        let b = now();
        assert!(b.boot >= a.boot);
        assert!(a.boot > Duration::ZERO);
        assert_eq!(boot_id(), boot_id());
        #[cfg(target_os = "linux")]
        assert!(boot_id().is_some());
    }
}
