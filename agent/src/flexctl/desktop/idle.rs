//! When the notifier tells the agent how long its user has been away (R14).
//!
//! The desktop is sampled every [`SAMPLE_EVERY`]; a report goes to the agent on
//! a new connection, every [`REPORT_EVERY`] after that, and at once when the
//! user comes back (input after the last report said "away", or the session
//! unlocked), so a paused product is charged again the moment it is used, not
//! up to half a minute later. Pure: time is passed in.

use std::time::Duration;

/// How often the agent hears from a notifier; the agent forgets a report
/// after a few of these.
pub const REPORT_EVERY: Duration = Duration::from_secs(30);

/// How often the desktop is asked (one round trip to the X server or a cached
/// D-Bus property): the delay before a return is noticed.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);

/// What the desktop says about its user now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdleReading {
    /// Since the last keyboard or mouse input.
    pub idle: Duration,
    /// The session is locked (a locked session gives no use of a product,
    /// whatever is typed at its lock screen).
    pub locked: bool,
}

/// Decides which samples become reports, for one connection to the agent.
#[derive(Debug)]
pub struct Reporter {
    /// Between two reports ([`REPORT_EVERY`]); also how long without input
    /// counts as away.
    every: Duration,
    /// The last report: when (time since the notifier started) and what.
    sent: Option<(Duration, IdleReading)>,
    /// The sample before this one.
    previous: Option<IdleReading>,
}

impl Default for Reporter {
    fn default() -> Self {
        Reporter::every(REPORT_EVERY)
    }
}

impl Reporter {
    /// A reporter that reports every `every` (tests shorten it).
    pub fn every(every: Duration) -> Reporter {
        Reporter {
            every,
            sent: None,
            previous: None,
        }
    }

    /// Whether the agent, told `r`, may count the user as away.
    fn away(&self, r: IdleReading) -> bool {
        r.locked || r.idle >= self.every
    }

    /// Takes the sample `reading` taken at `now` (any monotonic time) and says
    /// whether to send it to the agent.
    pub fn sample(&mut self, now: Duration, reading: IdleReading) -> bool {
        let send = match self.sent {
            None => true,
            Some((at, sent)) => {
                now.saturating_sub(at) >= self.every || (self.away(sent) && self.came_back(reading))
            }
        };
        self.previous = Some(reading);
        if send {
            self.sent = Some((now, reading));
        }
        send
    }

    /// Input since the previous sample (the idle time went down) in an
    /// unlocked session, or the session was unlocked.
    fn came_back(&self, now: IdleReading) -> bool {
        let Some(before) = self.previous else {
            return false;
        };
        !now.locked && (before.locked || now.idle < before.idle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(idle: u64, locked: bool) -> IdleReading {
        IdleReading {
            idle: Duration::from_secs(idle),
            locked,
        }
    }

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[test]
    fn the_first_sample_is_sent_then_one_every_30_seconds() {
        let mut rep = Reporter::default();
        assert!(rep.sample(s(0), r(0, false)));
        // A user at work: input keeps coming, the idle time stays small.
        assert!(!rep.sample(s(2), r(1, false)));
        assert!(!rep.sample(s(28), r(0, false)));
        assert!(rep.sample(s(30), r(1, false)));
        assert!(!rep.sample(s(32), r(0, false)));
        assert!(rep.sample(s(61), r(0, false)));
    }

    #[test]
    fn a_user_coming_back_is_reported_at_once() {
        let mut rep = Reporter::default();
        assert!(rep.sample(s(0), r(900, false)));
        assert!(!rep.sample(s(2), r(902, false)));
        // Input: the idle time drops. Reported now, not at s(30).
        assert!(rep.sample(s(4), r(0, false)));
        // Back at work: the next is the periodic one.
        assert!(!rep.sample(s(6), r(1, false)));
        assert!(!rep.sample(s(8), r(0, false)));
        assert!(rep.sample(s(34), r(0, false)));
    }

    #[test]
    fn input_while_reported_active_waits_for_the_period() {
        let mut rep = Reporter::default();
        assert!(rep.sample(s(0), r(10, false)));
        // 10 s idle is not away: nothing is waiting on a return.
        assert!(!rep.sample(s(2), r(0, false)));
    }

    #[test]
    fn unlocking_is_a_return_and_input_at_the_lock_screen_is_not() {
        let mut rep = Reporter::default();
        assert!(rep.sample(s(0), r(5, true)));
        // A mouse moved at the lock screen: still locked, still away.
        assert!(!rep.sample(s(2), r(0, true)));
        // Unlocked.
        assert!(rep.sample(s(4), r(0, false)));
    }

    #[test]
    fn a_user_going_away_is_told_with_the_period() {
        let mut rep = Reporter::default();
        assert!(rep.sample(s(0), r(0, false)));
        for t in (2..30).step_by(2) {
            assert!(!rep.sample(s(t), r(t, false)), "at {t}");
        }
        assert!(rep.sample(s(30), r(30, false)));
        // A clock that jumps back (a new start time) does not stop reports.
        let mut rep = Reporter::default();
        assert!(rep.sample(s(100), r(0, false)));
        assert!(!rep.sample(s(50), r(0, false)));
        assert!(rep.sample(s(130), r(0, false)));
    }
}
