//! Contact with the server: the offline clock, whether the last attempt got
//! through, when the next heartbeat is due, and which session changes the
//! server has yet to acknowledge.
//!
//! Offline time is the clock's time since the last successful contact (a
//! heartbeat or a claim answer; see [`super::clock`]). A heartbeat is due at the
//! policy interval after the last one, sooner with exponential backoff while
//! the server is unreachable, and only while there is something to tell or keep
//! fresh.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{Action, Now, OfflineClock, Persist};

/// First retry delay after a failed heartbeat; it doubles up to the interval.
const BACKOFF_START: Duration = Duration::from_secs(5);

/// How often the clock's checkpoint is journaled while runs are tracked. A
/// reboot with the wall clock wound back can lose at most this much offline
/// time (the boot clock restarts and the wall clock is not believed), so it is
/// short; one small row write a minute costs nothing.
pub(super) const CLOCK_PERSIST_EVERY: chrono::Duration = chrono::Duration::minutes(1);

pub(super) fn chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

#[derive(Debug)]
pub(super) struct Contact {
    pub clock: OfflineClock,
    /// The last contact attempt succeeded.
    pub online: bool,
    /// Trusted time of the last heartbeat sent, and failures in a row since.
    heartbeat_at: Option<DateTime<Utc>>,
    heartbeat_in_flight: bool,
    failures: u32,
    /// Session changes counted: made, included in the heartbeat in flight, and
    /// acknowledged by a successful heartbeat. `unsent > acked`: upload due.
    unsent: u64,
    sending: u64,
    acked: u64,
    clock_persisted_at: DateTime<Utc>,
    /// The newest server notice already passed on to users.
    pub notices_seen: Option<i64>,
}

impl Contact {
    pub fn new(clock: OfflineClock, notices_seen: Option<i64>) -> Contact {
        Contact {
            clock_persisted_at: clock.trusted_now(),
            clock,
            online: false,
            heartbeat_at: None,
            heartbeat_in_flight: false,
            failures: 0,
            // The journal may hold records from before the restart.
            unsent: 1,
            sending: 0,
            acked: 0,
            notices_seen,
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.trusted_now()
    }

    /// Moves the clock to `now`; returns a rollback to report, if any.
    pub fn advance(&mut self, now: Now) -> Option<flex_protocol::api::ClockRollback> {
        self.clock.advance(now)
    }

    /// A session record changed: the next heartbeat carries it.
    pub fn changed(&mut self) {
        self.unsent += 1;
    }

    /// Whether there is anything to tell the server or to keep fresh.
    fn needed(&self, busy: bool) -> bool {
        busy || self.unsent > self.acked || self.clock.last_contact().is_none()
    }

    /// When the next heartbeat is due; `busy` while runs or claims exist.
    pub fn heartbeat_due(&self, interval_secs: u64, busy: bool) -> Option<DateTime<Utc>> {
        if self.heartbeat_in_flight || !self.needed(busy) {
            return None;
        }
        let interval = Duration::from_secs(interval_secs.max(1));
        let delay = match self.failures {
            0 => interval,
            n => BACKOFF_START
                .saturating_mul(1u32 << (n - 1).min(16))
                .min(interval),
        };
        Some(match self.heartbeat_at {
            None => self.now(),
            Some(t) => t + chrono(delay),
        })
    }

    /// Asks for a heartbeat if one is due.
    pub fn heartbeat(&mut self, interval_secs: u64, busy: bool, out: &mut Vec<Action>) {
        let now = self.now();
        if self
            .heartbeat_due(interval_secs, busy)
            .is_some_and(|due| now >= due)
        {
            self.heartbeat_at = Some(now);
            self.heartbeat_in_flight = true;
            self.sending = self.unsent;
            out.push(Action::Heartbeat);
        }
    }

    /// A heartbeat succeeded with the server's time.
    pub fn heartbeat_ok(&mut self, server_time: DateTime<Utc>, out: &mut Vec<Action>) {
        self.clock.contact(server_time);
        self.acked = self.sending;
        self.heartbeat_in_flight = false;
        self.reached(out);
    }

    /// A claim answer proves the server is reachable: offline time restarts.
    pub fn claim_answered(&mut self, out: &mut Vec<Action>) {
        let now = self.now();
        self.clock.contact(now);
        self.reached(out);
    }

    fn reached(&mut self, out: &mut Vec<Action>) {
        self.online = true;
        self.failures = 0;
        self.persist_clock(out);
    }

    pub fn heartbeat_failed(&mut self) {
        self.online = false;
        self.heartbeat_in_flight = false;
        self.failures = self.failures.saturating_add(1);
    }

    pub fn persist_clock(&mut self, out: &mut Vec<Action>) {
        self.clock_persisted_at = self.now();
        out.push(Action::Persist(Persist::Clock(self.clock.state().clone())));
    }

    /// Journals the clock's checkpoint when it is due.
    pub fn checkpoint(&mut self, out: &mut Vec<Action>) {
        if self.now() - self.clock_persisted_at >= CLOCK_PERSIST_EVERY {
            self.persist_clock(out);
        }
    }

    pub fn next_checkpoint(&self) -> DateTime<Utc> {
        self.clock_persisted_at + CLOCK_PERSIST_EVERY
    }
}
