//! Offline time and the agent's trusted idea of "now".
//!
//! R8 says offline time counts from the last successful server contact, keeps
//! counting across suspend and reboot, and cannot be wound back by changing the wall
//! clock. The wall clock is the one thing a user can move, so within one boot the
//! clock counts only the boot clock (`CLOCK_BOOTTIME`: monotonic, counts suspend,
//! cannot be set). The time since contact is accumulated at checkpoints:
//!
//! * **Same boot** (the agent kept running, or restarted with the same boot id):
//!   elapsed = boot − checkpoint boot. Moving the wall clock back does not extend
//!   anything and moving it forward does not close anything early.
//! * **Across a reboot** the boot clock restarted from zero, so the only witness of
//!   the time the machine was off is the wall clock: elapsed = max(boot now,
//!   wall now − checkpoint wall). The boot clock alone is a lower bound that the
//!   user cannot shrink (the machine has been up at least that long since the
//!   checkpoint), so a wall clock wound back during the reboot never gives back
//!   time; a wall clock moved forward while the machine was off does count, which
//!   errs on the side of the rule. A reboot is recognised by a changed boot id
//!   (`/proc/sys/kernel/random/boot_id`) or, where there is none, by the boot clock
//!   being smaller than at the checkpoint.
//!
//! Rollbacks are detected by comparing the wall clock with what it should read
//! (checkpoint wall + elapsed); a step back of more than [`ROLLBACK_TOLERANCE`] is
//! reported once. The high-water mark (the latest wall time ever seen, persisted)
//! is the agent's time before it has ever reached the server.
//!
//! "Trusted now" is the server's time at the last contact plus the offline time
//! since: windows, leases and deadlines are compared with it, never with the raw
//! wall clock, so a wall clock moved back cannot stretch a lease either.

use std::time::Duration;

use chrono::{DateTime, Utc};
use flex_protocol::api::ClockRollback;
use serde::{Deserialize, Serialize};

/// Wall-clock steps back smaller than this (NTP corrections) are not reported.
pub const ROLLBACK_TOLERANCE: Duration = Duration::from_secs(2);

/// The time as the driver reads it: wall clock and boot clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub wall: DateTime<Utc>,
    /// Time since boot, counting suspend (`CLOCK_BOOTTIME`).
    pub boot: Duration,
}

/// The persisted part of the offline clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockState {
    /// Server time at the last successful contact; `None` before the first.
    pub contact: Option<DateTime<Utc>>,
    /// Offline time accumulated since `contact`, as of the checkpoint.
    pub since_contact: Duration,
    pub checkpoint_wall: DateTime<Utc>,
    pub checkpoint_boot: Duration,
    pub boot_id: Option<String>,
    /// The latest wall time ever seen.
    pub high_water: DateTime<Utc>,
}

impl ClockState {
    /// Whether the machine booted since this state was saved.
    pub fn rebooted(&self, now: Now, boot_id: Option<&str>) -> bool {
        match (self.boot_id.as_deref(), boot_id) {
            (Some(old), Some(new)) => old != new,
            _ => now.boot < self.checkpoint_boot,
        }
    }

    /// Trusted time at the checkpoint: the last moment the agent is known to
    /// have been running.
    pub fn checkpoint_trusted(&self) -> DateTime<Utc> {
        match self.contact {
            Some(c) => c + chrono(self.since_contact),
            None => self.high_water.max(self.checkpoint_wall),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfflineClock {
    state: ClockState,
}

fn chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

fn std_or_zero(d: chrono::Duration) -> Duration {
    d.to_std().unwrap_or(Duration::ZERO)
}

impl OfflineClock {
    /// A clock that has never reached the server.
    pub fn new(now: Now, boot_id: Option<String>) -> Self {
        OfflineClock {
            state: ClockState {
                contact: None,
                since_contact: Duration::ZERO,
                checkpoint_wall: now.wall,
                checkpoint_boot: now.boot,
                boot_id,
                high_water: now.wall,
            },
        }
    }

    /// Rebuilds the clock from its journaled state after an agent restart, counting
    /// the time the agent was down. Returns a rollback if the wall clock went back.
    pub fn resume(
        state: ClockState,
        now: Now,
        boot_id: Option<String>,
    ) -> (Self, Option<ClockRollback>) {
        let rebooted = state.rebooted(now, boot_id.as_deref());
        let mut clock = OfflineClock { state };
        let rollback = if rebooted {
            let by_wall = std_or_zero(now.wall - clock.state.checkpoint_wall);
            let elapsed = now.boot.max(by_wall);
            // Only the boot clock is a bound the user cannot move.
            let expected = clock.state.checkpoint_wall + chrono(now.boot);
            clock.step(now, elapsed, expected)
        } else {
            clock.advance(now)
        };
        clock.state.boot_id = boot_id;
        (clock, rollback)
    }

    pub fn state(&self) -> &ClockState {
        &self.state
    }

    /// Moves the checkpoint to `now` (same boot). Returns a detected rollback.
    pub fn advance(&mut self, now: Now) -> Option<ClockRollback> {
        if now.boot < self.state.checkpoint_boot {
            // The boot clock never goes back within a boot; a driver bug or a
            // reboot we were not told about. Count nothing rather than guess.
            self.state.checkpoint_boot = now.boot;
            self.state.checkpoint_wall = now.wall;
            return None;
        }
        let elapsed = now.boot - self.state.checkpoint_boot;
        let expected = self.state.checkpoint_wall + chrono(elapsed);
        self.step(now, elapsed, expected)
    }

    fn step(
        &mut self,
        now: Now,
        elapsed: Duration,
        expected: DateTime<Utc>,
    ) -> Option<ClockRollback> {
        self.state.since_contact += elapsed;
        self.state.checkpoint_boot = now.boot;
        self.state.checkpoint_wall = now.wall;
        self.state.high_water = self.state.high_water.max(now.wall);
        let behind = expected - now.wall;
        (behind > chrono(ROLLBACK_TOLERANCE)).then(|| ClockRollback {
            detected_at: now.wall,
            seconds: behind.num_seconds(),
        })
    }

    /// The server answered at `server_time`: offline time starts again from zero.
    pub fn contact(&mut self, server_time: DateTime<Utc>) {
        self.state.contact = Some(server_time);
        self.state.since_contact = Duration::ZERO;
    }

    /// Time since the last successful contact; `None` if there never was one.
    pub fn offline_for(&self) -> Option<Duration> {
        self.state.contact.map(|_| self.state.since_contact)
    }

    /// The server's time at the last contact (as of the last checkpoint).
    pub fn last_contact(&self) -> Option<DateTime<Utc>> {
        self.state.contact
    }

    /// The agent's best estimate of server time, immune to wall-clock changes.
    pub fn trusted_now(&self) -> DateTime<Utc> {
        match self.state.contact {
            Some(c) => c + chrono(self.state.since_contact),
            None => self.state.high_water.max(self.state.checkpoint_wall),
        }
    }

    /// The boot-clock reading at which trusted time reaches `at` (the timer value).
    pub fn boot_at(&self, at: DateTime<Utc>) -> Duration {
        self.state.checkpoint_boot + std_or_zero(at - self.trusted_now())
    }

    /// The wall-clock reading at which trusted time reaches `at`, for messages.
    pub fn wall_at(&self, at: DateTime<Utc>) -> DateTime<Utc> {
        self.state.checkpoint_wall + (at - self.trusted_now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 2, 8, 0, 0).unwrap()
    }

    fn at(secs: u64, wall_shift: i64) -> Now {
        Now {
            wall: t0() + chrono::Duration::seconds(secs as i64 + wall_shift),
            boot: Duration::from_secs(1000 + secs),
        }
    }

    fn contacted() -> OfflineClock {
        let mut c = OfflineClock::new(at(0, 0), Some("b1".into()));
        c.contact(t0());
        c
    }

    #[test]
    fn wall_clock_back_neither_extends_nor_hides() {
        let mut c = contacted();
        let rb = c.advance(at(3600, -3 * 86400)).expect("rollback reported");
        assert_eq!(rb.seconds, 3 * 86400);
        assert_eq!(c.offline_for(), Some(Duration::from_secs(3600)));
        assert_eq!(c.trusted_now(), t0() + chrono::Duration::hours(1));
        // Reported once, not at every later checkpoint.
        assert_eq!(c.advance(at(7200, -3 * 86400)), None);
        assert_eq!(c.offline_for(), Some(Duration::from_secs(7200)));
    }

    #[test]
    fn wall_clock_forward_does_not_count() {
        let mut c = contacted();
        assert_eq!(c.advance(at(60, 3 * 86400)), None);
        assert_eq!(c.offline_for(), Some(Duration::from_secs(60)));
    }

    #[test]
    fn restart_same_boot_counts_downtime_by_boot_clock() {
        let mut c = contacted();
        c.advance(at(100, 0));
        let saved = c.state().clone();
        // Down for 2 h, wall clock moved back meanwhile.
        let (c, rb) = OfflineClock::resume(saved, at(7300, -86400), Some("b1".into()));
        assert_eq!(c.offline_for(), Some(Duration::from_secs(7300)));
        assert_eq!(rb.map(|r| r.seconds), Some(86400));
    }

    #[test]
    fn reboot_uses_wall_time_but_never_less_than_uptime() {
        let mut c = contacted();
        c.advance(at(3600, 0));
        let saved = c.state().clone();
        // Machine off for 5 h, up again for 10 min: wall says 5h10m since checkpoint.
        let now = Now {
            wall: t0() + chrono::Duration::seconds(3600 + 5 * 3600 + 600),
            boot: Duration::from_secs(600),
        };
        let (c, rb) = OfflineClock::resume(saved.clone(), now, Some("b2".into()));
        assert_eq!(rb, None);
        assert_eq!(
            c.offline_for(),
            Some(Duration::from_secs(3600 + 5 * 3600 + 600))
        );
        // Same reboot, wall clock wound back two days: uptime still counts.
        let back = Now {
            wall: now.wall - chrono::Duration::days(2),
            ..now
        };
        let (c, rb) = OfflineClock::resume(saved, back, Some("b2".into()));
        assert!(rb.is_some());
        assert_eq!(c.offline_for(), Some(Duration::from_secs(3600 + 600)));
    }

    #[test]
    fn reboot_without_boot_id_is_seen_from_the_boot_clock() {
        let mut c = OfflineClock::new(at(0, 0), None);
        c.contact(t0());
        let saved = c.state().clone();
        let now = Now {
            wall: t0() + chrono::Duration::hours(3),
            boot: Duration::from_secs(5),
        };
        let (c, _) = OfflineClock::resume(saved, now, None);
        assert_eq!(c.offline_for(), Some(Duration::from_secs(3 * 3600)));
    }

    #[test]
    fn boot_at_maps_trusted_deadlines_to_the_boot_clock() {
        let mut c = contacted();
        c.advance(at(10, -500));
        let deadline = t0() + chrono::Duration::seconds(100);
        assert_eq!(c.boot_at(deadline), Duration::from_secs(1100));
        assert_eq!(
            c.wall_at(deadline),
            t0() + chrono::Duration::seconds(100 - 500)
        );
    }
}
