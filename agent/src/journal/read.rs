//! Reading the journal back: the core's state after a restart, and what the next
//! heartbeat must upload.

use std::time::Duration;

use flex_protocol::api::{ClaimRequest, ClockRollback, SessionRecord, Source, Window};
use rusqlite::{OptionalExtension, Row};

use flex_protocol::{Email, ProductId, SessionId, WindowId};

use super::{parse_ts, Journal, JournalError};
use crate::account::AccountId;
use crate::core::{
    ClockState, CoreState, HeldWindow, JobOutcome, JobState, Origin, RefundAsk, SessionRow,
    UploadReceipt,
};
use crate::process::ProcessId;

/// The records one heartbeat uploads, and what to mark once the server took them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeartbeatBatch {
    pub sessions: Vec<SessionRecord>,
    pub clock_rollbacks: Vec<ClockRollback>,
    /// (session id, revision sent).
    revisions: Vec<(SessionId, i64)>,
    last_rollback: Option<i64>,
}

fn source(s: &str) -> Option<Source> {
    match s {
        "tokens" => Some(Source::Tokens),
        "subscription" => Some(Source::Subscription),
        _ => None,
    }
}

fn origin(s: &str) -> Option<Origin> {
    match s {
        "wrapper" => Some(Origin::Wrapper),
        "watcher" => Some(Origin::Watcher),
        _ => None,
    }
}

/// A session row as stored, converted after the query so that a bad value is a
/// `Corrupt` error naming the column rather than a generic SQLite one.
struct RawSession {
    row: [Option<String>; 8],
    uid: Option<u32>,
    account_id: Option<String>,
    pid: Option<u32>,
    pid_start: Option<i64>,
    revision: i64,
}

const SESSION_COLUMNS: &str = "id, user, product, version, source, window_id, started_at, \
                               ended_at, account, origin, uid, pid, revision, account_id, pid_start";

fn raw_session(r: &Row<'_>) -> rusqlite::Result<RawSession> {
    Ok(RawSession {
        row: [
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
            r.get(6)?,
            r.get(7)?,
        ],
        // -1 (written for an id that is no uid, a Windows SID) is no uid.
        uid: r
            .get::<_, Option<i64>>(10)?
            .and_then(|u| u32::try_from(u).ok()),
        pid: r.get(11)?,
        revision: r.get(12)?,
        account_id: r.get(13)?,
        pid_start: r.get(14)?,
    })
}

impl Journal {
    fn session_rows(&self, filter: &str) -> Result<Vec<(SessionRow, i64)>, JournalError> {
        let sql =
            format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE {filter} ORDER BY started_at");
        let mut stmt = self
            .conn
            .prepare(&sql)
            .map_err(self.sqlite("read sessions from"))?;
        let raws: Vec<(RawSession, String, String)> = stmt
            .query_map([], |r| Ok((raw_session(r)?, r.get(8)?, r.get(9)?)))
            .and_then(|rows| rows.collect())
            .map_err(self.sqlite("read sessions from"))?;
        raws.into_iter()
            .map(|(raw, account, orig)| {
                let bad = |what: &str| self.corrupt("session", format!("bad {what}"));
                let [id, user, product, version, src, window_id, started, ended] = raw.row;
                let started = started.ok_or_else(|| bad("started_at"))?;
                let record = SessionRecord {
                    id: id
                        .as_deref()
                        .and_then(|i| SessionId::parse(i).ok())
                        .ok_or_else(|| bad("id"))?,
                    user: user
                        .as_deref()
                        .and_then(|u| Email::parse(u).ok())
                        .ok_or_else(|| bad("user"))?,
                    product: product
                        .as_deref()
                        .and_then(|p| ProductId::parse(p).ok())
                        .ok_or_else(|| bad("product"))?,
                    version,
                    source: src
                        .as_deref()
                        .and_then(source)
                        .ok_or_else(|| bad("source"))?,
                    window_id: window_id
                        .map(|w| WindowId::parse(&w).map_err(|_| bad("window_id")))
                        .transpose()?,
                    started_at: parse_ts(&started).map_err(|_| bad("started_at"))?,
                    ended_at: ended
                        .map(|e| parse_ts(&e).map_err(|_| bad("ended_at")))
                        .transpose()?,
                };
                // Rows from before schema v2 have a uid and a pid without a
                // start time: such a process cannot be recognised again.
                let account_id = match (raw.account_id, raw.uid) {
                    (Some(id), _) => AccountId::new(id),
                    (None, Some(uid)) => AccountId::from_uid(uid),
                    (None, None) => return Err(bad("account")),
                };
                let process = match (raw.pid, raw.pid_start) {
                    (Some(pid), Some(start)) => Some(ProcessId {
                        pid,
                        start: u64::try_from(start).map_err(|_| bad("pid_start"))?,
                    }),
                    _ => None,
                };
                let row = SessionRow {
                    record,
                    account: account_id,
                    account_name: account,
                    process,
                    origin: origin(&orig).ok_or_else(|| bad("origin"))?,
                };
                Ok((row, raw.revision))
            })
            .collect()
    }

    fn load_clock(&self) -> Result<Option<ClockState>, JournalError> {
        type Raw = (Option<String>, i64, String, i64, Option<String>, String);
        let raw: Option<Raw> = self
            .conn
            .query_row(
                "SELECT contact, since_contact_ms, checkpoint_wall, checkpoint_boot_ms,
                        boot_id, high_water FROM clock WHERE id = 1",
                [],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                    ))
                },
            )
            .optional()
            .map_err(self.sqlite("read the clock from"))?;
        let Some((contact, since, cp_wall, cp_boot, boot_id, high_water)) = raw else {
            return Ok(None);
        };
        let bad = |e: chrono::ParseError| self.corrupt("clock", e);
        Ok(Some(ClockState {
            contact: contact.map(|c| parse_ts(&c)).transpose().map_err(bad)?,
            since_contact: Duration::from_millis(since.max(0) as u64),
            checkpoint_wall: parse_ts(&cp_wall).map_err(bad)?,
            checkpoint_boot: Duration::from_millis(cp_boot.max(0) as u64),
            boot_id,
            high_water: parse_ts(&high_water).map_err(bad)?,
        }))
    }

    fn load_windows(&self) -> Result<Vec<HeldWindow>, JournalError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT user, product, window_id, source, start, end, lease, tokens_charged \
                 FROM windows",
            )
            .map_err(self.sqlite("read windows from"))?;
        type Raw = (String, String, String, String, String, String, String, i64);
        let raws: Vec<Raw> = stmt
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                ))
            })
            .and_then(|rows| rows.collect())
            .map_err(self.sqlite("read windows from"))?;
        raws.into_iter()
            .map(|(user, product, id, src, start, end, lease, charged)| {
                let bad = |d: String| self.corrupt("window", d);
                Ok(HeldWindow {
                    source: source(&src).ok_or_else(|| bad(format!("source '{src}'")))?,
                    window: Window {
                        id: WindowId::parse(&id).map_err(|e| bad(e.to_string()))?,
                        start: parse_ts(&start).map_err(|e| bad(e.to_string()))?,
                        end: parse_ts(&end).map_err(|e| bad(e.to_string()))?,
                    },
                    lease: serde_json::from_str(&lease).map_err(|e| bad(e.to_string()))?,
                    user: Email::parse(&user).map_err(|e| bad(e.to_string()))?,
                    product: ProductId::parse(&product).map_err(|e| bad(e.to_string()))?,
                    tokens_charged: u64::try_from(charged).unwrap_or(0),
                })
            })
            .collect()
    }

    fn load_claims(&self) -> Result<Vec<ClaimRequest>, JournalError> {
        let mut stmt = self
            .conn
            .prepare("SELECT request FROM pending_claims ORDER BY seq")
            .map_err(self.sqlite("read pending claims from"))?;
        let raws: Vec<String> = stmt
            .query_map([], |r| r.get(0))
            .and_then(|rows| rows.collect())
            .map_err(self.sqlite("read pending claims from"))?;
        let mut claims = Vec::with_capacity(raws.len());
        for s in &raws {
            match serde_json::from_str(s) {
                Ok(claim) => claims.push(claim),
                // Journaled by an agent that took product names the rate
                // sheet's rule refuses (`AutoCAD`, `acad.exe`): the server
                // refuses such a claim, so it is left out, not sent.
                Err(e) if legacy_claim(s) => {
                    tracing::warn!("leaving out a pending claim the id rules refuse: {e}")
                }
                Err(e) => return Err(self.corrupt("pending claim", e)),
            }
        }
        Ok(claims)
    }

    /// Everything [`crate::core::Core::restore`] needs after a restart.
    pub fn load_state(&self) -> Result<CoreState, JournalError> {
        Ok(CoreState {
            clock: self.load_clock()?,
            policy: self.meta_json("policy")?,
            products: self.meta_json("products")?.unwrap_or_default(),
            balance: self.meta_json("balance")?,
            notices_seen: self.meta_json("notices_seen")?,
            windows: self.load_windows()?,
            sessions: self
                .session_rows("ended_at IS NULL")?
                .into_iter()
                .map(|(row, _)| row)
                .collect(),
            pending_claims: self.load_claims()?,
            pending_refunds: self.load_refunds()?,
            jobs: self.load_jobs()?,
        })
    }

    fn load_refunds(&self) -> Result<Vec<RefundAsk>, JournalError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT window_id, user, product, account FROM pending_refunds ORDER BY created",
            )
            .map_err(self.sqlite("read pending refunds from"))?;
        type Raw = (String, String, String, Option<String>);
        let raws: Vec<Raw> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .and_then(|rows| rows.collect())
            .map_err(self.sqlite("read pending refunds from"))?;
        raws.into_iter()
            .map(|(window_id, user, product, account)| {
                let bad = |e: String| self.corrupt("pending refund", e);
                Ok(RefundAsk {
                    window_id: WindowId::parse(&window_id).map_err(|e| bad(e.to_string()))?,
                    user: Email::parse(&user).map_err(|e| bad(e.to_string()))?,
                    product: ProductId::parse(&product).map_err(|e| bad(e.to_string()))?,
                    account: account.map(AccountId::new),
                })
            })
            .collect()
    }

    /// The journal's records of `user`'s runs of `product` not yet acknowledged
    /// by the server (running, or ended since the last upload): what a refund
    /// request carries.
    pub fn session_records(
        &self,
        user: &Email,
        product: &ProductId,
    ) -> Result<Vec<SessionRecord>, JournalError> {
        Ok(self
            .session_rows("revision > uploaded_revision OR ended_at IS NULL")?
            .into_iter()
            .map(|(row, _)| row.record)
            .filter(|r| &r.user == user && r.product == product)
            .collect())
    }

    fn load_jobs(&self) -> Result<Vec<JobState>, JournalError> {
        let mut stmt = self
            .conn
            .prepare("SELECT user, product, job, attempt, outcome, updated FROM jobs")
            .map_err(self.sqlite("read jobs from"))?;
        type Raw = (String, String, String, u32, String, String);
        let raws: Vec<Raw> = stmt
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })
            .and_then(|rows| rows.collect())
            .map_err(self.sqlite("read jobs from"))?;
        raws.into_iter()
            .map(|(user, product, job, attempt, outcome, updated)| {
                let bad = |d: String| self.corrupt("job", d);
                Ok(JobState {
                    user: Email::parse(&user).map_err(|e| bad(e.to_string()))?,
                    product: ProductId::parse(&product).map_err(|e| bad(e.to_string()))?,
                    job,
                    attempt,
                    outcome: match outcome.as_str() {
                        "pending" => JobOutcome::Pending,
                        "charged" => JobOutcome::Charged,
                        "refused" => JobOutcome::Refused,
                        other => return Err(bad(format!("outcome '{other}'"))),
                    },
                    updated: parse_ts(&updated).map_err(|e| bad(e.to_string()))?,
                })
            })
            .collect()
    }

    /// Session records and clock rollbacks the server has not acknowledged.
    pub fn heartbeat_batch(&self) -> Result<HeartbeatBatch, JournalError> {
        let rows = self.session_rows("revision > uploaded_revision")?;
        let mut stmt = self
            .conn
            .prepare("SELECT id, detected_at, seconds FROM clock_rollbacks ORDER BY id")
            .map_err(self.sqlite("read clock rollbacks from"))?;
        let rollbacks: Vec<(i64, String, i64)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .and_then(|rows| rows.collect())
            .map_err(self.sqlite("read clock rollbacks from"))?;
        let mut batch = HeartbeatBatch {
            last_rollback: rollbacks.last().map(|r| r.0),
            ..HeartbeatBatch::default()
        };
        for (_, at, seconds) in rollbacks {
            batch.clock_rollbacks.push(ClockRollback {
                detected_at: parse_ts(&at).map_err(|e| self.corrupt("clock rollback", e))?,
                seconds,
            });
        }
        for (row, revision) in rows {
            batch.revisions.push((row.record.id.clone(), revision));
            batch.sessions.push(row.record);
        }
        Ok(batch)
    }
}

impl HeartbeatBatch {
    /// What to journal once the server stored this batch (`accepted` lists
    /// the session ids it took): acknowledged ended sessions and the reported
    /// rollbacks are deleted; a session changed since the batch was read stays
    /// due. The core journals it with the rest of the heartbeat's answer.
    pub fn receipt(&self, accepted: Vec<SessionId>) -> UploadReceipt {
        UploadReceipt {
            revisions: self.revisions.clone(),
            last_rollback: self.last_rollback,
            accepted,
        }
    }
}

/// Whether a pending claim that does not deserialise is one an older agent
/// journaled with ids the rules now refuse, rather than a damaged row.
fn legacy_claim(raw: &str) -> bool {
    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    struct Loose {
        claim_id: String,
        user: String,
        product: String,
    }
    serde_json::from_str::<Loose>(raw).is_ok()
}
