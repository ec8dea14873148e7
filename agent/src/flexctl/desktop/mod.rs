//! The desktop session `flexctl notify` runs in: how long its user has given
//! no input (and whether the session is locked), and closing a product's
//! windows the way the desktop's close button does.
//!
//! The agent runs as a system service: it can see every process but no
//! user's display, so the notifier is its hands and eyes in the session. Each
//! OS's edge sits behind two small traits, [`IdleSource`] and
//! [`WindowCloser`]; [`Session::detect`] picks what this session has:
//!
//! * Linux and the BSDs: X11 (`DISPLAY`) through MIT-SCREEN-SAVER for the idle
//!   time and client messages for closing; under Wayland, whose input X
//!   clients do not see, GNOME's idle monitor (Mutter) on the session bus;
//!   logind's `IdleHint` as the fallback (other Wayland compositors, a
//!   console) and its `LockedHint` for the lock state. (`ext-idle-notify-v1`
//!   of wlroots and KDE compositors is not used: logind stands in for it.)
//! * Windows: `GetLastInputInfo` and the session's lock state; windows are
//!   asked to close with WM_CLOSE.
//! * macOS: `HIDIdleTime` of the HID system; no closing (the agent signals).
//!
//! The traits are synchronous (a round trip to the X server or a cached D-Bus
//! property); the notifier calls them from a blocking thread.

#[cfg(all(unix, not(target_os = "macos")))]
pub mod fallback;
#[cfg(all(unix, not(target_os = "macos")))]
pub mod gnome;
pub mod idle;
#[cfg(all(unix, not(target_os = "macos")))]
mod logind;
pub mod macos;
#[cfg(target_os = "linux")]
pub mod procs;
#[cfg(windows)]
mod windows;
#[cfg(all(unix, not(target_os = "macos")))]
pub mod x11;

pub use idle::IdleReading;

/// Why the desktop could not answer.
#[derive(Debug, thiserror::Error)]
#[error("cannot {action} through {source_name}: {source}")]
pub struct DesktopError {
    /// What was asked: `X11`, `logind`, `Windows`, `ioreg`.
    pub source_name: &'static str,
    pub action: &'static str,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl DesktopError {
    pub fn new(
        source_name: &'static str,
        action: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        DesktopError {
            source_name,
            action,
            source: source.into(),
        }
    }
}

/// Tells how long the session's user has given no input.
pub trait IdleSource: Send {
    /// For logs: `X11`, `logind`, ...
    fn name(&self) -> &'static str;
    /// What the session says now. `locked` is `false` when this source cannot
    /// tell (a [`LockSource`] may know better).
    fn read(&mut self) -> Result<IdleReading, DesktopError>;
}

/// Tells whether the session is locked.
pub trait LockSource: Send {
    fn locked(&mut self) -> Result<bool, DesktopError>;
}

/// Asks a process's windows to close as the desktop's close button would, so
/// that the product can ask to save.
pub trait WindowCloser: Send {
    /// Returns how many top-level windows of `pid` (or, if it shows none, of
    /// its child processes) were asked.
    fn close_windows(&mut self, pid: u32) -> Result<u32, DesktopError>;
}

/// What this desktop session offers the notifier.
#[derive(Default)]
pub struct Session {
    idle: Vec<Box<dyn IdleSource>>,
    lock: Option<Box<dyn LockSource>>,
    closer: Option<Box<dyn WindowCloser>>,
    /// Sources already reported as failing, so a log says it once.
    failing: Vec<&'static str>,
}

impl Session {
    /// A session with exactly these parts (tests, and [`Session::detect`]).
    pub fn new(
        idle: Vec<Box<dyn IdleSource>>,
        lock: Option<Box<dyn LockSource>>,
        closer: Option<Box<dyn WindowCloser>>,
    ) -> Session {
        Session {
            idle,
            lock,
            closer,
            failing: Vec::new(),
        }
    }

    /// What the session this process runs in has: see the module's doc.
    /// Call from a blocking thread (it may connect to D-Bus).
    pub fn detect() -> Session {
        #[cfg(all(unix, not(target_os = "macos")))]
        {
            let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
            let wayland = env("WAYLAND_DISPLAY").is_some();
            let display = env("DISPLAY");
            let x = display.as_deref().and_then(|d| match x11::X11::connect(Some(d)) {
                Ok(x) => Some(x),
                Err(e) => {
                    tracing::warn!(display = d, error = %e, "no X display: windows cannot be asked to close");
                    None
                }
            });
            let logind = logind::Logind::connect()
                .map_err(|e| tracing::info!(error = %e, "no logind session: no lock state"))
                .ok();
            let mut idle: Vec<Box<dyn IdleSource>> = Vec::new();
            if wayland {
                // The compositor sees all input; GNOME's tells it.
                match gnome::Mutter::connect(None) {
                    Ok(m) => idle.push(Box::new(m)),
                    Err(e) => tracing::info!(error = %e, "no GNOME idle monitor"),
                }
            }
            let closer = x.map(|x| {
                let shared = std::sync::Arc::new(std::sync::Mutex::new(x));
                if !wayland {
                    idle.push(Box::new(x11::Shared(shared.clone())));
                }
                Box::new(x11::Shared(shared)) as Box<dyn WindowCloser>
            });
            let lock = logind
                .as_ref()
                .map(|l| Box::new(l.clone()) as Box<dyn LockSource>);
            if let Some(l) = logind {
                idle.push(Box::new(l));
            }
            Session::new(idle, lock, closer)
        }
        #[cfg(windows)]
        {
            Session::new(
                vec![Box::new(windows::Input)],
                Some(Box::new(windows::Input)),
                Some(Box::new(windows::Input)),
            )
        }
        #[cfg(target_os = "macos")]
        {
            Session::new(
                vec![Box::new(macos::Ioreg)],
                Some(Box::new(macos::Ioreg)),
                None,
            )
        }
    }

    /// The sources, for the log line at start: `X11+logind`, or `none`.
    pub fn describe(&self) -> String {
        let names: Vec<&str> = self.idle.iter().map(|s| s.name()).collect();
        if names.is_empty() {
            "none".into()
        } else {
            names.join("+")
        }
    }

    /// The first answer of the idle sources, with the lock state of the lock
    /// source when there is one. `None` when no source answers: then the
    /// notifier reports nothing, and the agent counts the user as present.
    pub fn read(&mut self) -> Option<IdleReading> {
        let mut reading = None;
        for source in &mut self.idle {
            match source.read() {
                Ok(r) => {
                    self.failing.retain(|n| *n != source.name());
                    reading = Some(r);
                    break;
                }
                Err(e) => {
                    if !self.failing.contains(&source.name()) {
                        tracing::warn!(error = %e, "idle time unavailable");
                        self.failing.push(source.name());
                    }
                }
            }
        }
        let mut reading = reading?;
        if let Some(lock) = &mut self.lock {
            match lock.locked() {
                Ok(locked) => reading.locked |= locked,
                Err(e) => tracing::debug!(error = %e, "lock state unavailable"),
            }
        }
        Some(reading)
    }

    /// Asks the windows of `pid` to close; 0 when none were found or there is
    /// no way to ask (the agent then signals the process).
    pub fn close_windows(&mut self, pid: u32) -> u32 {
        let Some(closer) = &mut self.closer else {
            return 0;
        };
        match closer.close_windows(pid) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(pid, error = %e, "could not ask the product's windows to close");
                0
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    struct Fixed(Result<IdleReading, &'static str>, &'static str);

    impl IdleSource for Fixed {
        fn name(&self) -> &'static str {
            self.1
        }
        fn read(&mut self) -> Result<IdleReading, DesktopError> {
            self.0
                .map_err(|e| DesktopError::new(self.1, "read the idle time", e))
        }
    }

    impl LockSource for Fixed {
        fn locked(&mut self) -> Result<bool, DesktopError> {
            self.read().map(|r| r.locked)
        }
    }

    fn reading(idle: u64, locked: bool) -> IdleReading {
        IdleReading {
            idle: Duration::from_secs(idle),
            locked,
        }
    }

    #[test]
    fn the_first_source_that_answers_wins_and_the_lock_source_adds_the_lock() {
        let mut s = Session::new(
            vec![
                Box::new(Fixed(Err("no display"), "X11")),
                Box::new(Fixed(Ok(reading(40, false)), "logind")),
            ],
            Some(Box::new(Fixed(Ok(reading(0, true)), "logind"))),
            None,
        );
        assert_eq!(s.describe(), "X11+logind");
        assert_eq!(s.read(), Some(reading(40, true)));
        // No way to close windows: none asked.
        assert_eq!(s.close_windows(42), 0);
    }

    #[test]
    fn no_source_means_no_report() {
        let mut s = Session::new(
            vec![Box::new(Fixed(Err("gone"), "X11"))],
            Some(Box::new(Fixed(Ok(reading(0, true)), "logind"))),
            None,
        );
        assert_eq!(s.read(), None);
        assert_eq!(Session::default().read(), None);
        assert_eq!(Session::default().describe(), "none");
    }
}
