//! systemd's service watchdog (`WatchdogSec=` in the unit).
//!
//! systemd passes the allowed silence in `WATCHDOG_USEC`; the agent must send
//! `WATCHDOG=1` more often than that or be restarted. The ping comes from the
//! driver loop itself (see [`super::Driver`]), so a loop stuck on a lock or a
//! blocking call stops pinging and systemd restarts the agent. Pings go out at
//! half the allowed interval, as sd_watchdog_enabled(3) advises. Without the
//! variables nothing is sent and [`Watchdog::tick`] never fires.

use std::time::Duration;

/// When the next ping is due, if systemd asked for pings.
pub struct Watchdog {
    every: Option<tokio::time::Interval>,
}

impl Watchdog {
    /// Reads `WATCHDOG_USEC` (and `WATCHDOG_PID`, which must be ours if set).
    pub fn from_env() -> Watchdog {
        Watchdog::every(sd_notify::watchdog_enabled().map(|allowed| allowed / 2))
    }

    /// Pings every `period` (`None`: never). Must be called inside a tokio runtime.
    pub fn every(period: Option<Duration>) -> Watchdog {
        Watchdog {
            every: period.filter(|p| !p.is_zero()).map(|p| {
                let mut i = tokio::time::interval(p);
                i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                i
            }),
        }
    }

    /// The ping period, if enabled.
    pub fn period(&self) -> Option<Duration> {
        self.every.as_ref().map(|i| i.period())
    }

    /// Resolves when the next ping is due; never when the watchdog is off.
    pub async fn tick(&mut self) {
        match &mut self.every {
            Some(i) => {
                i.tick().await;
            }
            None => std::future::pending().await,
        }
    }

    /// Sends `WATCHDOG=1`.
    pub fn ping(&self) {
        if self.every.is_some() {
            if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]) {
                tracing::warn!("cannot ping systemd's watchdog: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn off_never_fires_and_on_fires_every_period() {
        let mut off = Watchdog::every(None);
        assert!(off.period().is_none());
        let fired = tokio::time::timeout(Duration::from_secs(3600), off.tick()).await;
        assert!(fired.is_err(), "a disabled watchdog must not wake the loop");

        let mut on = Watchdog::every(Some(Duration::from_secs(30)));
        assert_eq!(on.period(), Some(Duration::from_secs(30)));
        let start = tokio::time::Instant::now();
        on.tick().await; // the first tick is immediate
        on.tick().await;
        on.tick().await;
        assert_eq!(start.elapsed(), Duration::from_secs(60));
    }
}
