//! Failed admin-token attempts, counted per client address.
//!
//! An address may present `max_failures` wrong tokens in a window that starts
//! at its first failure and lasts `window`; after that every attempt from it
//! answers 429 (without the token being looked at, or the throttle would still
//! tell a right guess from a wrong one) until the window ends. A right token
//! clears the address's count. Other addresses are not affected. The map is
//! capped: when full, expired entries go first, then the oldest.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most addresses remembered at once.
const MAX_ENTRIES: usize = 65_536;

#[derive(Debug, Clone, Copy)]
struct Entry {
    since: Instant,
    failures: u32,
}

#[derive(Debug)]
pub struct AuthThrottle {
    max_failures: u32,
    window: Duration,
    entries: Mutex<HashMap<IpAddr, Entry>>,
}

/// What a wrong token did to its address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    /// Failures in the current window, this one included.
    pub failures: u32,
    /// Set when this failure blocked the address: how long until it may try again.
    pub blocked_for: Option<Duration>,
}

impl AuthThrottle {
    pub fn new(max_failures: u32, window: Duration) -> Self {
        AuthThrottle {
            max_failures: max_failures.max(1),
            window,
            entries: Mutex::default(),
        }
    }

    pub fn max_failures(&self) -> u32 {
        self.max_failures
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    fn live(&self, e: &Entry, now: Instant) -> bool {
        now.saturating_duration_since(e.since) < self.window
    }

    /// `Err(retry_after)` while `key` is blocked.
    pub fn check(&self, key: IpAddr, now: Instant) -> Result<(), Duration> {
        let map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(&key) {
            Some(e) if self.live(e, now) && e.failures >= self.max_failures => {
                Err(self.window - now.saturating_duration_since(e.since))
            }
            _ => Ok(()),
        }
    }

    /// Counts a wrong token from `key`.
    pub fn failed(&self, key: IpAddr, now: Instant) -> Failure {
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if !map.contains_key(&key) && map.len() >= MAX_ENTRIES {
            map.retain(|_, e| now.saturating_duration_since(e.since) < self.window);
            if map.len() >= MAX_ENTRIES {
                if let Some(oldest) = map.iter().min_by_key(|(_, e)| e.since).map(|(k, _)| *k) {
                    map.remove(&oldest);
                }
            }
        }
        let e = map.entry(key).or_insert(Entry {
            since: now,
            failures: 0,
        });
        if !self.live(e, now) {
            *e = Entry {
                since: now,
                failures: 0,
            };
        }
        e.failures += 1;
        let blocked_for = (e.failures == self.max_failures)
            .then(|| self.window - now.saturating_duration_since(e.since));
        Failure {
            failures: e.failures,
            blocked_for,
        }
    }

    /// A right token from `key`: its count starts again.
    pub fn succeeded(&self, key: IpAddr) {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_tenth_failure_blocks_the_address_until_its_window_ends() {
        let t = AuthThrottle::new(10, Duration::from_secs(60));
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        for i in 1..10 {
            let at = t0 + Duration::from_secs(i - 1);
            let f = t.failed(a, at);
            assert_eq!((f.failures, f.blocked_for), (i as u32, None));
            assert!(t.check(a, at).is_ok());
        }
        let f = t.failed(a, t0 + Duration::from_secs(20));
        assert_eq!(f.blocked_for, Some(Duration::from_secs(40)));
        assert_eq!(
            t.check(a, t0 + Duration::from_secs(30)),
            Err(Duration::from_secs(30))
        );
        assert!(
            t.check(ip("192.0.2.2"), t0 + Duration::from_secs(30))
                .is_ok(),
            "another address is not blocked"
        );
        assert!(
            t.check(a, t0 + Duration::from_secs(60)).is_ok(),
            "cooled down"
        );
        let f = t.failed(a, t0 + Duration::from_secs(61));
        assert_eq!(f.failures, 1, "a new window starts");
    }

    #[test]
    fn a_right_token_clears_the_count() {
        let t = AuthThrottle::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        t.failed(a, t0);
        t.failed(a, t0);
        t.succeeded(a);
        assert_eq!(t.failed(a, t0).failures, 1);
    }

    #[test]
    fn the_map_stays_capped() {
        let t = AuthThrottle::new(3, Duration::from_secs(3600));
        let t0 = Instant::now();
        for i in 0..(MAX_ENTRIES as u32 + 10) {
            t.failed(
                IpAddr::from(i.to_be_bytes()),
                t0 + Duration::from_millis(i as u64),
            );
        }
        assert_eq!(t.entries.lock().unwrap().len(), MAX_ENTRIES);
    }
}
