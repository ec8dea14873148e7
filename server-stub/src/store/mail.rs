//! Which notices have been mailed (see [`crate::mail`]).

use flex_protocol::api::Notice;

use super::db::params;
use super::{get_meta, notices, set_meta, ts, Result, Store};

/// Notices with an id above this were raised after mail was configured.
const MAIL_AFTER: &str = "mail.after_notice_id";

impl Store {
    /// Called when the mailer starts: the first time, notices already raised
    /// are marked as not to be mailed.
    pub fn start_mail(&self) -> Result<()> {
        self.write(|tx| {
            if get_meta(tx, MAIL_AFTER)?.is_none() {
                let last: i64 =
                    tx.query_one("SELECT COALESCE(MAX(id), 0) FROM notices", params![], |r| {
                        r.get(0)
                    })?;
                set_meta(tx, MAIL_AFTER, &last.to_string())?;
            }
            Ok(())
        })
    }

    /// Notices not mailed yet, oldest first.
    pub fn unmailed_notices(&self, limit: i64) -> Result<Vec<Notice>> {
        self.read(|c| {
            let after: i64 = get_meta(c, MAIL_AFTER)?
                .and_then(|v| v.parse().ok())
                .unwrap_or(i64::MAX);
            let unsent: std::collections::HashSet<i64> = c
                .query_all(
                    "SELECT n.id FROM notices n LEFT JOIN notice_mail m ON m.notice_id = n.id
                     WHERE n.id > ?1 AND m.sent_at IS NULL",
                    params![after],
                    |r| r.get(0),
                )?
                .into_iter()
                .collect();
            let mut out: Vec<Notice> =
                notices::list(c, Some(after), i64::MAX, notices::Audience::Admins)?
                    .into_iter()
                    .filter(|n| unsent.contains(&n.id))
                    .collect();
            out.reverse();
            out.truncate(limit.max(0) as usize);
            Ok(out)
        })
    }

    pub fn mail_sent(&self, notice_id: i64) -> Result<()> {
        let now = self.now();
        self.write(|tx| {
            tx.execute(
                "INSERT INTO notice_mail (notice_id, attempts, sent_at) VALUES (?1, 1, ?2)
                 ON CONFLICT (notice_id) DO UPDATE SET attempts = notice_mail.attempts + 1, sent_at = excluded.sent_at, last_error = NULL",
                params![notice_id, ts(now)],
            )?;
            Ok(())
        })
    }

    pub fn mail_failed(&self, notice_id: i64, error: &str) -> Result<()> {
        let error: String = error.chars().take(500).collect();
        self.write(|tx| {
            tx.execute(
                "INSERT INTO notice_mail (notice_id, attempts, last_error) VALUES (?1, 1, ?2)
                 ON CONFLICT (notice_id) DO UPDATE SET attempts = notice_mail.attempts + 1, last_error = excluded.last_error",
                params![notice_id, error],
            )?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::clock::TestClock;
    use crate::config::PolicyConfig;
    use crate::rates::RateSheet;
    use crate::store::testing::backends;

    /// Regression: on PostgreSQL the retry count's upsert named `attempts`
    /// unqualified, which PostgreSQL refuses as ambiguous, so a mailed notice
    /// was never recorded and was mailed again.
    #[test]
    fn mailed_and_failed_notices_are_recorded_once_each() {
        for backend in backends() {
            let clock = TestClock::new("2026-11-02T08:00:00Z".parse().unwrap());
            let s = backend.open(
                Arc::new(clock),
                PolicyConfig::default(),
                RateSheet::sample(),
            );
            s.start_mail().unwrap();
            s.write(|tx| {
                tx.execute(
                    "INSERT INTO notices (kind, message, created_at) VALUES ('low_balance', 'm', '2026-11-02T08:00:00.000000Z')",
                    params![],
                )?;
                Ok(())
            })
            .unwrap();
            let pending = s.unmailed_notices(10).unwrap();
            assert_eq!(pending.len(), 1, "{}", backend.name());
            let id = pending[0].id;
            s.mail_failed(id, "smtp down").unwrap();
            s.mail_failed(id, "smtp still down").unwrap();
            assert_eq!(s.unmailed_notices(10).unwrap().len(), 1);
            s.mail_sent(id).unwrap();
            assert!(
                s.unmailed_notices(10).unwrap().is_empty(),
                "{}",
                backend.name()
            );
            let attempts: i64 = s
                .read(|c| {
                    c.query_one(
                        "SELECT attempts FROM notice_mail WHERE notice_id = ?1",
                        params![id],
                        |r| r.get(0),
                    )
                })
                .unwrap();
            assert_eq!(attempts, 3);
        }
    }
}
