//! Console sessions: a random id in an HttpOnly, SameSite=Strict cookie that
//! expires, and a per-session CSRF token that every form posts back.
//!
//! Sessions live in memory (a restart logs admins out) and are kept by the
//! SHA-256 of their id, so the map never holds a usable cookie. Time comes from
//! the server's clock, so tests drive expiry with the test clock.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, Duration, Utc};
use sha2::{Digest, Sha256};

/// Name of the session cookie.
pub const COOKIE: &str = "flex_console";
/// Name of the cookie that guards the login form against cross-site posts.
pub const LOGIN_COOKIE: &str = "flex_login";
/// A session ends this long after login, whatever happens.
pub const TTL: Duration = Duration::hours(8);
/// Most sessions kept at once; the oldest go first.
const MAX_SESSIONS: usize = 256;

#[derive(Debug, Clone)]
struct Entry {
    csrf: String,
    expires: DateTime<Utc>,
}

/// A live session as a handler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub csrf: String,
    pub expires: DateTime<Utc>,
}

#[derive(Debug, Default)]
pub struct Sessions {
    map: Mutex<HashMap<[u8; 32], Entry>>,
}

fn key(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

/// A random hex secret of 32 bytes.
pub fn secret() -> String {
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

/// Equal strings, compared in time independent of where they differ.
pub fn same(a: &str, b: &str) -> bool {
    let (x, y): ([u8; 32], [u8; 32]) = (key(a), key(b));
    x.iter()
        .zip(y.iter())
        .fold(0u8, |acc, (p, q)| acc | (p ^ q))
        == 0
}

impl Sessions {
    /// Starts a session; returns its id (for the cookie) and the session.
    pub fn create(&self, now: DateTime<Utc>) -> (String, Session) {
        let id = secret();
        let entry = Entry {
            csrf: secret(),
            expires: now + TTL,
        };
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, e| e.expires > now);
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map.iter().min_by_key(|(_, e)| e.expires).map(|(k, _)| *k) {
                map.remove(&oldest);
            }
        }
        map.insert(key(&id), entry.clone());
        (
            id,
            Session {
                csrf: entry.csrf,
                expires: entry.expires,
            },
        )
    }

    /// The live session of cookie value `id`, if any.
    pub fn get(&self, id: &str, now: DateTime<Utc>) -> Option<Session> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let k = key(id);
        match map.get(&k) {
            Some(e) if e.expires > now => Some(Session {
                csrf: e.csrf.clone(),
                expires: e.expires,
            }),
            Some(_) => {
                map.remove(&k);
                None
            }
            None => None,
        }
    }

    pub fn end(&self, id: &str) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key(id));
    }
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|part| {
        let (k, v) = part.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Strict, scoped to the console,
/// `Secure` when the server speaks TLS. `max_age` 0 deletes it.
pub fn set_cookie(name: &str, value: &str, max_age: i64, secure: bool) -> String {
    format!(
        "{name}={value}; Path=/admin; Max-Age={max_age}; HttpOnly; SameSite=Strict{}",
        if secure { "; Secure" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn sessions_expire_and_end() {
        let s = Sessions::default();
        let t0 = Utc.with_ymd_and_hms(2026, 11, 2, 8, 0, 0).unwrap();
        let (id, session) = s.create(t0);
        assert_eq!(s.get(&id, t0 + Duration::hours(7)), Some(session.clone()));
        assert_eq!(s.get(&id, t0 + TTL), None, "expired at its end");
        let (id, _) = s.create(t0);
        s.end(&id);
        assert_eq!(s.get(&id, t0), None);
        assert_eq!(s.get("forged", t0), None);
    }

    #[test]
    fn cookies_are_parsed_and_set_strictly() {
        assert_eq!(cookie("a=1; flex_console=abc; b=2", COOKIE), Some("abc"));
        assert_eq!(cookie("flex_console_x=abc", COOKIE), None);
        let c = set_cookie(COOKIE, "abc", 60, true);
        assert_eq!(
            c,
            "flex_console=abc; Path=/admin; Max-Age=60; HttpOnly; SameSite=Strict; Secure"
        );
        assert!(same("x", "x") && !same("x", "y"));
    }
}
