//! The server's notion of "now".
//!
//! Every rule reads time through [`Clock`]. Production uses the system clock; a
//! server started with `--test-clock` uses a frozen clock that the admin API moves,
//! the way billing systems let integrators drive time in black-box tests.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, SubsecRound, Utc};

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
}

/// Wall-clock time.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    /// Microseconds, the precision the database stores: a window's times in a
    /// claim answer and its lease are then exactly the ledger's.
    fn now(&self) -> DateTime<Utc> {
        Utc::now().trunc_subsecs(6)
    }
}

/// A clock that stands still until it is set.
#[derive(Debug, Clone)]
pub struct TestClock {
    now: Arc<Mutex<DateTime<Utc>>>,
}

impl TestClock {
    pub fn new(now: DateTime<Utc>) -> Self {
        TestClock {
            now: Arc::new(Mutex::new(now.trunc_subsecs(6))),
        }
    }

    pub fn set(&self, now: DateTime<Utc>) {
        *self.now.lock().expect("test clock lock") = now.trunc_subsecs(6);
    }

    pub fn advance(&self, by: chrono::Duration) {
        let mut now = self.now.lock().expect("test clock lock");
        *now += by;
    }
}

impl Clock for TestClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.lock().expect("test clock lock")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_have_the_databases_microsecond_precision() {
        assert_eq!(SystemClock.now().timestamp_subsec_nanos() % 1000, 0);
        let t = DateTime::parse_from_rfc3339("2026-03-15T10:00:00.123456789Z")
            .unwrap()
            .with_timezone(&Utc);
        let c = TestClock::new(t);
        assert_eq!(c.now().timestamp_subsec_nanos(), 123_456_000);
        c.set(t);
        assert_eq!(c.now().timestamp_subsec_nanos(), 123_456_000);
    }
}
