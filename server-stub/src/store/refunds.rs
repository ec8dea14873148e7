//! Refunds of short runs (R13): `POST /v1/agent/refunds` loads the facts
//! [`rules::refunds::decide`] needs and writes what it decides, on either
//! backend.
//!
//! A window is refunded at most once, ever. Its verdict — the refund, or the
//! refusal of a window that was used — is stored with the lot updates in one
//! transaction and replayed byte for byte to every repeat, so a retry after a
//! crash at any point gets the first answer and nothing moves twice. The
//! `refunds` table holds one row per window and per charge at most, and
//! `refund_answers` one answer per window: on PostgreSQL, two replicas
//! answering the same window at once cannot both commit (SERIALIZABLE, and
//! those keys); the loser runs again and replays the winner's answer.
//! Refusals about the request or the moment (another device's window, too
//! early, refunds off) are answered and not kept.
//!
//! The session records a request carries are stored first, as a heartbeat
//! stores them, so the decision sees them with those uploaded before. Of the
//! device's records it reads only the two that can decide — the earliest run
//! going at the window's start plus the grace, and the earliest run of the
//! window begun after it — so no number of records makes a refund fail.
//! Claims call in here too: every device answered with a window is noted
//! ([`note_grant`]); a refunded window covers no launch and cannot be renewed
//! (the claim rules see `refunded_at`, see `claims.rs`).

use chrono::{DateTime, Duration, Utc};
use flex_protocol::api::{ErrorBody, LotShare, RefundRequest, RefundResponse};
use flex_protocol::{ErrorCode, WindowId};

use super::charges::lot_shares;
use super::claims::load_window;
use super::db::{params, Conn, Row};
use super::heartbeat::{check_sessions, store_sessions};
use super::lots::{balance_of, load_lots};
use super::{notices, parse_ts, ts, ClaimOutcome, Result, Store, StoreError};
use crate::rules::claim::WindowFact as StoredWindow;
use crate::rules::refunds::{self as rules, Decision, Facts, Grants, Run, WindowFact};

/// Notes that `device_id` was answered with window `window_id` at `now`.
pub(super) fn note_grant(
    tx: &Conn<'_>,
    window_id: &WindowId,
    device_id: &str,
    now: DateTime<Utc>,
) -> Result<()> {
    // The later time wins; `WHERE` rather than MAX/GREATEST, which the two
    // backends spell differently.
    tx.execute(
        "INSERT INTO window_grants (window_id, device_id, last_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (window_id, device_id) DO UPDATE SET last_at = excluded.last_at
         WHERE excluded.last_at > window_grants.last_at",
        params![window_id, device_id, ts(now)],
    )?;
    Ok(())
}

/// The checks the request's types do not make: its window id, user and
/// product were checked when it was read.
fn validate(req: &RefundRequest) -> Result<()> {
    check_sessions(&req.sessions, "refund request")
}

fn load_grants(conn: &Conn<'_>, window_id: &WindowId, device_id: &str) -> Result<Grants> {
    let mut grants = Grants::default();
    conn.query_each(
        "SELECT device_id, last_at FROM window_grants WHERE window_id = ?1",
        params![window_id],
        |r| {
            if r.str(0)? == device_id {
                grants.here = Some(parse_ts(r.str(1)?)?);
            } else {
                grants.elsewhere = true;
            }
            Ok(())
        },
    )?;
    Ok(grants)
}

/// The window's charge: its id and each lot's share.
fn load_charge(conn: &Conn<'_>, w: &StoredWindow) -> Result<(i64, Vec<LotShare>)> {
    // By user first: the charges index, not a scan of the whole ledger.
    let id: i64 = conn
        .query_opt(
            "SELECT id FROM charges WHERE \"user\" = ?1 AND window_id = ?2",
            params![w.user, w.id],
            |r| r.get(0),
        )?
        .ok_or_else(|| StoreError::Corrupt(format!("window '{}' has no charge", w.id)))?;
    Ok((id, lot_shares(conn, id)?))
}

/// A stored run: id, started, ended, window.
type RunRow = (String, DateTime<Utc>, Option<DateTime<Utc>>, Option<String>);

fn run_row(r: &Row<'_>) -> Result<RunRow> {
    Ok((
        r.get(0)?,
        parse_ts(r.str(1)?)?,
        r.opt_str(2)?.map(parse_ts).transpose()?,
        r.get(3)?,
    ))
}

/// The device's runs of the window's (user, product) that can decide the
/// refund (see [`rules::decide`]): the earliest one going at `cut`, and the
/// earliest one of the window that began at or after it. Any others cannot
/// change the answer, so none is read: a device with many records is
/// answered like one with few.
fn load_runs(
    conn: &Conn<'_>,
    device_id: &str,
    w: &StoredWindow,
    cut: DateTime<Utc>,
) -> Result<Vec<RunRow>> {
    let mut runs = Vec::new();
    runs.extend(conn.query_opt(
        "SELECT id, started_at, ended_at, window_id FROM sessions
         WHERE device_id = ?1 AND \"user\" = ?2 AND product = ?3 AND started_at <= ?4
           AND (ended_at IS NULL OR ended_at > ?4)
         ORDER BY started_at, id LIMIT 1",
        params![device_id, w.user, w.product, ts(cut)],
        run_row,
    )?);
    runs.extend(conn.query_opt(
        "SELECT id, started_at, ended_at, window_id FROM sessions
         WHERE device_id = ?1 AND \"user\" = ?2 AND product = ?3 AND window_id = ?4
           AND started_at >= ?5 AND started_at < ?6
         ORDER BY started_at, id LIMIT 1",
        params![device_id, w.user, w.product, w.id, ts(cut), ts(w.end)],
        run_row,
    )?);
    Ok(runs)
}

/// Whether a window renews `w` (a process of it ran at its end).
fn renewed(conn: &Conn<'_>, w: &StoredWindow) -> Result<bool> {
    Ok(conn
        .query_opt(
            "SELECT 1 FROM windows WHERE \"user\" = ?1 AND product = ?2 AND start = ?3 AND renews = ?4 LIMIT 1",
            params![w.user, w.product, ts(w.end), w.id],
            |_| Ok(()),
        )?
        .is_some())
}

fn stored_answer(conn: &Conn<'_>, window_id: &WindowId) -> Result<Option<ClaimOutcome>> {
    conn.query_opt(
        "SELECT status, response FROM refund_answers WHERE window_id = ?1",
        params![window_id],
        |r| {
            Ok(ClaimOutcome {
                status: r.get(0)?,
                body: r.get(1)?,
            })
        },
    )
}

fn keep_answer(
    conn: &Conn<'_>,
    window_id: &WindowId,
    answer: &ClaimOutcome,
    now: DateTime<Utc>,
) -> Result<()> {
    conn.execute(
        "INSERT INTO refund_answers (window_id, status, response, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![window_id, answer.status, answer.body, ts(now)],
    )?;
    Ok(())
}

fn conflict(message: String) -> ClaimOutcome {
    ClaimOutcome {
        status: 409,
        body: serde_json::to_string(&ErrorBody::new(ErrorCode::Conflict, message))
            .expect("error body serializes"),
    }
}

impl Store {
    /// Answers `POST /v1/agent/refunds` for `device_id`, in one transaction:
    /// 200 with a [`RefundResponse`], or 409 with the reason. The answer is
    /// a status and a body to send as they are, like a claim's.
    pub fn refund(&self, device_id: &str, req: &RefundRequest) -> Result<ClaimOutcome> {
        validate(req)?;
        let now = self.now();
        self.write(|tx| self.refund_in(tx, device_id, req, now))
    }

    fn refund_in(
        &self,
        tx: &Conn<'_>,
        device_id: &str,
        req: &RefundRequest,
        now: DateTime<Utc>,
    ) -> Result<ClaimOutcome> {
        let w = load_window(tx, &req.window_id)?.ok_or_else(|| StoreError::NotFound {
            what: "window",
            key: req.window_id.to_string(),
        })?;
        let grants = load_grants(tx, &w.id, device_id)?;
        let lots = load_lots(tx)?;
        let name = self
            .rates()
            .get(&w.product)
            .map_or(w.product.as_str(), |p| p.name.as_str());
        let grace = Duration::from_std(self.policy().short_use_grace).map_err(|_| {
            StoreError::invalid("policy.short_use_grace", "short_use_grace is too long")
        })?;
        let mut facts = Facts {
            asked_user: req.user.as_str(),
            asked_product: req.product.as_str(),
            window: WindowFact {
                id: w.id.as_str(),
                user: &w.user,
                product: w.product.as_str(),
                start: w.start,
                end: w.end,
            },
            product_name: name,
            grace,
            grants,
            renewed: false,
            runs: &[],
            shares: &[],
            lots: &lots,
        };
        // Another device's window, or a wrong user or product: nothing is kept.
        if let Err(r) = rules::admissible(&facts) {
            return Err(StoreError::Conflict(r.message));
        }
        store_sessions(tx, device_id, &req.sessions)?;
        if let Some(answer) = stored_answer(tx, &w.id)? {
            #[cfg(feature = "planted-bugs")]
            if self.planted() == Some(super::PlantedBug::RefundTwice) {
                super::planted::refund_again(tx, w.id.as_str(), now)?;
            }
            return Ok(answer);
        }
        let (charge_id, shares) = load_charge(tx, &w)?;
        let stored_runs = load_runs(tx, device_id, &w, rules::cut(w.start, grace))?;
        let runs: Vec<Run<'_>> = stored_runs
            .iter()
            .map(|(id, start, end, window)| Run {
                id,
                started_at: *start,
                ended_at: *end,
                window_id: window.as_deref(),
            })
            .collect();
        facts.renewed = renewed(tx, &w)?;
        facts.runs = &runs;
        facts.shares = &shares;
        let answer = match rules::decide(&facts, now) {
            Decision::Refuse(r) if !r.reason.is_verdict() => return Ok(conflict(r.message)),
            Decision::Refuse(r) => conflict(r.message),
            Decision::Refund { tokens, back } => {
                debug_assert_eq!(tokens, back.iter().map(|s| s.tokens).sum::<u64>());
                self.give_back(tx, &w, charge_id, device_id, &back, now)?;
                let body = RefundResponse {
                    window_id: w.id.clone(),
                    refunded_tokens: tokens,
                    balance: balance_of(tx, now)?,
                };
                ClaimOutcome {
                    status: 200,
                    body: serde_json::to_string(&body).expect("refund response serializes"),
                }
            }
        };
        keep_answer(tx, &w.id, &answer, now)?;
        Ok(answer)
    }

    /// Writes the refund and returns `back` to its lots; the balance rose, so
    /// the balance notices re-arm as after a purchase (R9).
    fn give_back(
        &self,
        tx: &Conn<'_>,
        w: &StoredWindow,
        charge_id: i64,
        device_id: &str,
        back: &[LotShare],
        now: DateTime<Utc>,
    ) -> Result<()> {
        let tokens: u64 = back.iter().map(|s| s.tokens).sum();
        let refund_id: i64 = tx.query_one(
            "INSERT INTO refunds (window_id, charge_id, device_id, tokens, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5) RETURNING id",
            params![w.id, charge_id, device_id, tokens, ts(now)],
            |r| r.get(0),
        )?;
        for s in back {
            tx.execute(
                "UPDATE lots SET remaining = remaining + ?1 WHERE id = ?2",
                params![s.tokens, s.lot_id],
            )?;
            tx.execute(
                "INSERT INTO refund_lots (refund_id, lot_id, tokens) VALUES (?1, ?2, ?3)",
                params![refund_id, s.lot_id, s.tokens],
            )?;
        }
        tracing::info!(
            window = %w.id,
            user = %w.user,
            product = %w.product,
            tokens,
            "refunded a short run"
        );
        if tokens > 0 {
            notices::after_purchase(tx, self.policy(), now)?;
        }
        Ok(())
    }
}
