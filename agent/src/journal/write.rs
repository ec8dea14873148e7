//! Writing the core's [`Persist`] actions, one transaction per batch.

use flex_protocol::api::Source;
use rusqlite::{params, Transaction};

use super::{ts, Journal, JournalError};
use crate::core::{Action, JobOutcome, Persist};

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("protocol types serialize")
}

fn ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Runs `sql` through the connection's statement cache: a launch inside a
/// window writes the same few statements every time, and parsing them again
/// was most of the write's cost.
fn exec(tx: &Transaction<'_>, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize> {
    tx.prepare_cached(sql)?.execute(params)
}

fn meta(tx: &Transaction<'_>, key: &str, value: String) -> rusqlite::Result<()> {
    exec(
        tx,
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )
    .map(drop)
}

impl Journal {
    /// Applies every [`Action::Persist`] in `actions` in one transaction and
    /// ignores the other actions. Call it before carrying out any of them.
    pub fn apply(&mut self, actions: &[Action]) -> Result<(), JournalError> {
        self.apply_persist(actions.iter().filter_map(|a| match a {
            Action::Persist(p) => Some(p),
            _ => None,
        }))
    }

    pub fn apply_persist<'a>(
        &mut self,
        items: impl IntoIterator<Item = &'a Persist>,
    ) -> Result<(), JournalError> {
        let mut items = items.into_iter().peekable();
        if items.peek().is_none() {
            return Ok(());
        }
        let items: Vec<&Persist> = items.collect();
        let path = self.path.clone();
        let err = move |source| JournalError::Sqlite {
            action: "write",
            path,
            source,
        };
        // Money waits for the disk (synchronous=FULL: the WAL is fsynced at
        // commit); usage records and caches do not (NORMAL: durable at the next
        // checkpoint or FULL commit, and through a crash of the agent, which
        // leaves them in the OS cache; only a power cut can lose them).
        let durable = items.iter().any(|p| p.is_money());
        if durable != self.durable {
            let mode = if durable { "FULL" } else { "NORMAL" };
            self.conn
                .pragma_update(None, "synchronous", mode)
                .map_err(err.clone())?;
            self.durable = durable;
        }
        let tx = self.conn.transaction().map_err(err.clone())?;
        for item in items {
            write_one(&tx, item).map_err(err.clone())?;
        }
        tx.commit().map_err(err)
    }
}

fn write_one(tx: &Transaction<'_>, item: &Persist) -> rusqlite::Result<()> {
    match item {
        Persist::ClaimPending(req) => {
            exec(
                tx,
                "INSERT INTO pending_claims (claim_id, request, created)
                 VALUES (?1, ?2, ?3) ON CONFLICT (claim_id) DO NOTHING",
                params![req.claim_id.as_str(), json(req), ts(&chrono::Utc::now())],
            )?;
        }
        Persist::ClaimSettled { claim_id } => {
            exec(
                tx,
                "DELETE FROM pending_claims WHERE claim_id = ?1",
                [claim_id.as_str()],
            )?;
        }
        Persist::Window(h) => {
            exec(
                tx,
                "INSERT INTO windows (user, product, window_id, source, start, end, lease,
                   tokens_charged)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (user, product) DO UPDATE SET window_id = excluded.window_id,
                   source = excluded.source, start = excluded.start, end = excluded.end,
                   lease = excluded.lease, tokens_charged = excluded.tokens_charged",
                params![
                    h.user.as_str(),
                    h.product.as_str(),
                    h.window.id.as_str(),
                    h.source.as_str(),
                    ts(&h.window.start),
                    ts(&h.window.end),
                    json(&h.lease),
                    i64::try_from(h.tokens_charged).unwrap_or(i64::MAX)
                ],
            )?;
        }
        Persist::Session(row) => {
            let r = &row.record;
            exec(
                tx,
                "INSERT INTO sessions (id, user, product, version, source, window_id,
                   started_at, ended_at, uid, account, pid, origin, revision, account_id,
                   pid_start)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, 1, ?13, ?14)
                 ON CONFLICT (id) DO UPDATE SET version = excluded.version,
                   source = excluded.source, window_id = excluded.window_id,
                   started_at = excluded.started_at, ended_at = excluded.ended_at,
                   pid = excluded.pid, pid_start = excluded.pid_start,
                   revision = sessions.revision + 1",
                params![
                    r.id.as_str(),
                    r.user.as_str(),
                    r.product.as_str(),
                    r.version,
                    source_str(r.source),
                    r.window_id.as_ref().map(|w| w.as_str()),
                    ts(&r.started_at),
                    r.ended_at.as_ref().map(ts),
                    // The v1 column, kept for old readers: -1 for a non-Unix id.
                    row.account.uid().map_or(-1, i64::from),
                    row.account_name,
                    row.process.map(|p| p.pid),
                    row.origin.as_str(),
                    row.account.as_str(),
                    row.process
                        .map(|p| i64::try_from(p.start).unwrap_or(i64::MAX))
                ],
            )?;
        }
        Persist::Clock(c) => {
            exec(
                tx,
                "INSERT INTO clock (id, contact, since_contact_ms, checkpoint_wall,
                   checkpoint_boot_ms, boot_id, high_water)
                 VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (id) DO UPDATE SET contact = excluded.contact,
                   since_contact_ms = excluded.since_contact_ms,
                   checkpoint_wall = excluded.checkpoint_wall,
                   checkpoint_boot_ms = excluded.checkpoint_boot_ms,
                   boot_id = excluded.boot_id, high_water = excluded.high_water",
                params![
                    c.contact.as_ref().map(ts),
                    ms(c.since_contact),
                    ts(&c.checkpoint_wall),
                    ms(c.checkpoint_boot),
                    c.boot_id,
                    ts(&c.high_water)
                ],
            )?;
        }
        Persist::ClockRollback(rb) => {
            exec(
                tx,
                "INSERT INTO clock_rollbacks (detected_at, seconds) VALUES (?1, ?2)",
                params![ts(&rb.detected_at), rb.seconds],
            )?;
        }
        Persist::Policy(p) => meta(tx, "policy", json(p))?,
        Persist::RateSheet(products) => meta(tx, "products", json(products))?,
        Persist::Balance(b) => meta(tx, "balance", b.to_string())?,
        Persist::NoticesSeen(id) => meta(tx, "notices_seen", id.to_string())?,
        Persist::RefundPending(ask) => {
            exec(
                tx,
                "INSERT INTO pending_refunds (window_id, user, product, account, created)
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (window_id) DO NOTHING",
                params![
                    ask.window_id.as_str(),
                    ask.user.as_str(),
                    ask.product.as_str(),
                    ask.account.as_ref().map(|a| a.as_str()),
                    ts(&chrono::Utc::now())
                ],
            )?;
        }
        Persist::RefundSettled { window_id } => {
            exec(
                tx,
                "DELETE FROM pending_refunds WHERE window_id = ?1",
                [window_id.as_str()],
            )?;
        }
        Persist::DropWindow { user, product } => {
            exec(
                tx,
                "DELETE FROM windows WHERE user = ?1 AND product = ?2",
                params![user.as_str(), product.as_str()],
            )?;
        }
        Persist::Uploaded(receipt) => {
            for (id, revision) in &receipt.revisions {
                if receipt.accepted.contains(id) {
                    exec(
                        tx,
                        "UPDATE sessions SET uploaded_revision = ?2 WHERE id = ?1",
                        params![id.as_str(), revision],
                    )?;
                }
            }
            exec(
                tx,
                "DELETE FROM sessions WHERE ended_at IS NOT NULL AND uploaded_revision >= revision",
                [],
            )?;
            if let Some(last) = receipt.last_rollback {
                exec(tx, "DELETE FROM clock_rollbacks WHERE id <= ?1", [last])?;
            }
        }
        Persist::Job(j) => {
            exec(
                tx,
                "INSERT INTO jobs (user, product, job, attempt, outcome, updated)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (user, product, job) DO UPDATE SET attempt = excluded.attempt,
                   outcome = excluded.outcome, updated = excluded.updated",
                params![
                    j.user.as_str(),
                    j.product.as_str(),
                    j.job,
                    j.attempt,
                    match j.outcome {
                        JobOutcome::Pending => "pending",
                        JobOutcome::Charged => "charged",
                        JobOutcome::Refused => "refused",
                    },
                    ts(&j.updated)
                ],
            )?;
            // Jobs are retried within minutes; old settled ones are forgotten.
            let cutoff = j.updated - crate::core::JOB_MEMORY;
            exec(
                tx,
                "DELETE FROM jobs WHERE outcome != 'pending' AND updated < ?1",
                [ts(&cutoff)],
            )?;
        }
    }
    Ok(())
}

fn source_str(s: Source) -> &'static str {
    s.as_str()
}
