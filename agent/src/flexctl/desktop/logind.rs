//! logind's view of this session on the system bus: `LockedHint` (set by the
//! desktop's screen locker) and `IdleHint` with `IdleSinceHintMonotonic` (set
//! by desktops that track idleness, GNOME and KDE among them; computed from the
//! terminal for a console session).
//!
//! The session is logind's `auto` object: the caller's own session, or, for a
//! notifier started as a systemd user service outside any session, the user's
//! graphical one. Properties are cached by zbus and kept current through
//! logind's change signals, so reading them costs no round trip.

use std::time::Duration;

use futures_lite::future::block_on;

use super::{DesktopError, IdleReading, IdleSource, LockSource};

const SESSION: &str = "/org/freedesktop/login1/session/auto";

/// How long this session has been idle by logind's hints: since
/// `idle_since_us` (CLOCK_MONOTONIC, µs) when the hint is set, else not idle.
pub fn idle_from_hints(idle_hint: bool, idle_since_us: u64, now_us: u64) -> Duration {
    if idle_hint && idle_since_us > 0 {
        Duration::from_micros(now_us.saturating_sub(idle_since_us))
    } else {
        Duration::ZERO
    }
}

fn fail(action: &'static str) -> impl FnOnce(zbus::Error) -> DesktopError {
    move |e| DesktopError::new("logind", action, e)
}

/// This session's object on logind.
#[derive(Clone)]
pub struct Logind {
    proxy: zbus::Proxy<'static>,
}

impl Logind {
    /// Connects to the system bus and finds this session. Blocks: call from
    /// a thread that is not running async tasks (zbus answers on threads of
    /// its own).
    pub fn connect() -> Result<Logind, DesktopError> {
        let proxy = block_on(async {
            let conn = zbus::Connection::system()
                .await
                .map_err(fail("connect to the system bus"))?;
            let proxy = zbus::Proxy::new_owned(
                conn,
                "org.freedesktop.login1",
                SESSION,
                "org.freedesktop.login1.Session",
            )
            .await
            .map_err(fail("find this session"))?;
            // Fails when this process has no session at all.
            proxy
                .get_property::<bool>("LockedHint")
                .await
                .map_err(fail("read this session's lock state"))?;
            Ok::<_, DesktopError>(proxy)
        })?;
        Ok(Logind { proxy })
    }

    fn property<T>(&self, name: &str, action: &'static str) -> Result<T, DesktopError>
    where
        T: serde::de::DeserializeOwned + zbus::zvariant::Type,
    {
        block_on(self.proxy.get_property::<T>(name)).map_err(fail(action))
    }
}

impl IdleSource for Logind {
    fn name(&self) -> &'static str {
        "logind"
    }

    fn read(&mut self) -> Result<IdleReading, DesktopError> {
        let hint: bool = self.property("IdleHint", "read the idle hint")?;
        let since: u64 = self.property("IdleSinceHintMonotonic", "read the idle hint")?;
        let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .map(|t| Duration::from(t).as_micros() as u64)
            .map_err(|e| DesktopError::new("logind", "read the monotonic clock", e))?;
        Ok(IdleReading {
            idle: idle_from_hints(hint, since, now),
            locked: self.locked()?,
        })
    }
}

impl LockSource for Logind {
    fn locked(&mut self) -> Result<bool, DesktopError> {
        self.property("LockedHint", "read the lock state")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_counts_from_the_hint() {
        assert_eq!(
            idle_from_hints(true, 1_000_000, 61_000_000),
            Duration::from_secs(60)
        );
        assert_eq!(
            idle_from_hints(false, 1_000_000, 61_000_000),
            Duration::ZERO
        );
        // No time with the hint (an old logind): not idle rather than idle since boot.
        assert_eq!(idle_from_hints(true, 0, 61_000_000), Duration::ZERO);
        assert_eq!(
            idle_from_hints(true, 70_000_000, 61_000_000),
            Duration::ZERO
        );
    }
}
