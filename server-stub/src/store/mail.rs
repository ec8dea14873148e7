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
            let mut out: Vec<Notice> = notices::list(c, Some(after), i64::MAX)?
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
                 ON CONFLICT (notice_id) DO UPDATE SET attempts = attempts + 1, sent_at = excluded.sent_at, last_error = NULL",
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
                 ON CONFLICT (notice_id) DO UPDATE SET attempts = attempts + 1, last_error = excluded.last_error",
                params![notice_id, error],
            )?;
            Ok(())
        })
    }
}
