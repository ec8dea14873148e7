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

/// While no product runs the agent still reaches the server, this many times
/// more slowly: a product reopened the next morning is judged against a
/// recent contact, not against the evening before.
const IDLE_HEARTBEAT_FACTOR: u32 = 6;

/// A failed contact attempt this recent proves the server unreachable: an
/// offline warning or close may go ahead. Older, and the server is tried
/// first.
const FRESH_FAILURE: chrono::Duration = chrono::Duration::seconds(30);

/// How long a warning or close waits for the contact attempt made to check.
const CHECK_WAIT: chrono::Duration = chrono::Duration::seconds(60);

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
    /// When the last contact attempt failed.
    failed_at: Option<DateTime<Utc>>,
    /// A heartbeat sent to check the server before a warning or close: sent
    /// without jitter, and since when it is awaited.
    checking: Option<DateTime<Utc>>,
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
            failed_at: None,
            checking: None,
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

    /// Whether there is something to tell the server or keep fresh now.
    fn needed(&self, busy: bool) -> bool {
        busy || self.unsent > self.acked || self.clock.last_contact().is_none()
    }

    /// When the next heartbeat is due: at the policy interval while runs or
    /// claims exist (`busy`) or records wait, more slowly otherwise.
    pub fn heartbeat_due(&self, interval_secs: u64, busy: bool) -> Option<DateTime<Utc>> {
        if self.heartbeat_in_flight {
            return None;
        }
        let mut interval = Duration::from_secs(interval_secs.max(1));
        if !self.needed(busy) {
            interval = interval.saturating_mul(IDLE_HEARTBEAT_FACTOR);
        }
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
        self.checking = None;
        self.reached(out);
    }

    /// Whether the server is known to be unreachable right now: a contact
    /// attempt failed moments ago. If not, a heartbeat is sent at once to
    /// find out (the caller waits for its answer, at most [`CHECK_WAIT`]).
    pub fn confirm_offline(&mut self, now: DateTime<Utc>, out: &mut Vec<Action>) -> bool {
        if self.failed_at.is_some_and(|t| now - t <= FRESH_FAILURE) {
            return true;
        }
        match self.checking {
            // The check got no answer in time: as good as a failure.
            Some(since) if now - since >= CHECK_WAIT => true,
            Some(_) => false,
            None => {
                self.checking = Some(now);
                if !self.heartbeat_in_flight {
                    self.heartbeat_at = Some(now);
                    self.heartbeat_in_flight = true;
                    self.sending = self.unsent;
                    out.push(Action::Heartbeat);
                }
                false
            }
        }
    }

    /// When a check of the server stops being waited for.
    /// None once the wait is over (the check's answer may still come; until
    /// then nothing waits for it).
    pub fn check_deadline(&self) -> Option<DateTime<Utc>> {
        self.checking
            .map(|t| t + CHECK_WAIT)
            .filter(|&d| d > self.now())
    }

    /// Whether the heartbeat about to go is a check: sent without jitter.
    pub fn checking(&self) -> bool {
        self.checking.is_some()
    }

    /// A launch inside a held window when the server was last reached more
    /// than a heartbeat interval ago: the server is asked now, so the offline
    /// rule judges the product against a fresh contact.
    pub fn refresh_if_stale(
        &mut self,
        interval_secs: u64,
        now: DateTime<Utc>,
        out: &mut Vec<Action>,
    ) {
        let stale = self
            .clock
            .last_contact()
            .is_none_or(|t| now - t > chrono::Duration::seconds(interval_secs as i64));
        if stale && !self.heartbeat_in_flight {
            self.checking = Some(now);
            self.heartbeat_at = Some(now);
            self.heartbeat_in_flight = true;
            self.sending = self.unsent;
            out.push(Action::Heartbeat);
        }
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
        self.failed_at = Some(self.now());
        self.checking = None;
    }

    /// A claim could not be delivered: the server is unreachable now.
    pub fn claim_failed(&mut self) {
        self.online = false;
        self.failed_at = Some(self.now());
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
