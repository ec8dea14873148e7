//! Console sessions, kept in the database so that a restart does not log
//! admins out and, with PostgreSQL, any replica serves a logged-in admin.
//!
//! Only the SHA-256 of a session's id is stored: a copy of the database does
//! not hold a usable cookie. Expired sessions are removed when a new one
//! starts, and at most [`MAX_SESSIONS`] are kept (the oldest go first).

use chrono::{DateTime, Duration, Utc};

use super::db::params;
use super::{new_secret, parse_ts, sha256_hex, ts, Result, Store};

/// A session ends this long after login, whatever happens.
pub const SESSION_TTL: Duration = Duration::hours(8);
/// Most sessions kept at once.
pub const MAX_SESSIONS: i64 = 256;

/// A live console session as a handler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleSession {
    /// The token every form of this session posts back.
    pub csrf: String,
    pub expires: DateTime<Utc>,
}

impl Store {
    /// Starts a session at `now`; returns its id (for the cookie) and the session.
    pub fn create_console_session(&self, now: DateTime<Utc>) -> Result<(String, ConsoleSession)> {
        let id = new_secret("");
        let session = ConsoleSession {
            csrf: new_secret(""),
            expires: now + SESSION_TTL,
        };
        self.write(|tx| {
            tx.execute(
                "DELETE FROM console_sessions WHERE expires_at <= ?1",
                params![ts(now)],
            )?;
            let live: i64 =
                tx.query_one("SELECT COUNT(*) FROM console_sessions", params![], |r| {
                    r.get(0)
                })?;
            if live >= MAX_SESSIONS {
                tx.execute(
                    "DELETE FROM console_sessions WHERE id_hash IN
                     (SELECT id_hash FROM console_sessions ORDER BY expires_at LIMIT ?1)",
                    params![live - MAX_SESSIONS + 1],
                )?;
            }
            tx.execute(
                "INSERT INTO console_sessions (id_hash, csrf, expires_at) VALUES (?1, ?2, ?3)",
                params![sha256_hex(id.as_bytes()), session.csrf, ts(session.expires)],
            )?;
            Ok(())
        })?;
        Ok((id, session))
    }

    /// The live session of cookie value `id` at `now`, if any.
    pub fn console_session(&self, id: &str, now: DateTime<Utc>) -> Result<Option<ConsoleSession>> {
        let found = self.read(|c| {
            c.query_opt(
                "SELECT csrf, expires_at FROM console_sessions WHERE id_hash = ?1",
                params![sha256_hex(id.as_bytes())],
                |r| {
                    Ok(ConsoleSession {
                        csrf: r.get(0)?,
                        expires: parse_ts(r.str(1)?)?,
                    })
                },
            )
        })?;
        Ok(found.filter(|s| s.expires > now))
    }

    /// Ends the session of cookie value `id` (logout).
    pub fn end_console_session(&self, id: &str) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "DELETE FROM console_sessions WHERE id_hash = ?1",
                params![sha256_hex(id.as_bytes())],
            )?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::TimeZone;

    use super::*;
    use crate::clock::TestClock;
    use crate::config::PolicyConfig;
    use crate::rates::RateSheet;
    use crate::store::testing::backends;

    #[test]
    fn sessions_expire_end_and_survive_a_reopen() {
        for backend in backends() {
            let t0 = Utc.with_ymd_and_hms(2026, 11, 2, 8, 0, 0).unwrap();
            let open = || {
                backend.open(
                    Arc::new(TestClock::new(t0)),
                    PolicyConfig::default(),
                    RateSheet::sample(),
                )
            };
            let s = open();
            let (id, session) = s.create_console_session(t0).unwrap();
            drop(s);
            // Another process (a restart, or another replica) knows the session.
            let s = open();
            assert_eq!(
                s.console_session(&id, t0 + Duration::hours(7)).unwrap(),
                Some(session.clone())
            );
            assert_eq!(s.console_session(&id, t0 + SESSION_TTL).unwrap(), None);
            let (id, _) = s.create_console_session(t0).unwrap();
            s.end_console_session(&id).unwrap();
            assert_eq!(s.console_session(&id, t0).unwrap(), None);
            assert_eq!(s.console_session("forged", t0).unwrap(), None);
        }
    }

    #[test]
    fn the_oldest_sessions_go_beyond_the_cap() {
        let backend = crate::store::testing::TestBackend::sqlite();
        let t0 = Utc.with_ymd_and_hms(2026, 11, 2, 8, 0, 0).unwrap();
        let s = backend.open(
            Arc::new(TestClock::new(t0)),
            PolicyConfig::default(),
            RateSheet::sample(),
        );
        let (first, _) = s.create_console_session(t0).unwrap();
        for i in 1..=MAX_SESSIONS {
            s.create_console_session(t0 + Duration::seconds(i)).unwrap();
        }
        assert_eq!(s.console_session(&first, t0).unwrap(), None);
        let n: i64 = s
            .read(|c| {
                c.query_one("SELECT COUNT(*) FROM console_sessions", params![], |r| {
                    r.get(0)
                })
            })
            .unwrap();
        assert_eq!(n, MAX_SESSIONS);
    }
}
