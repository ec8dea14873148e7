//! Refunds of short runs (R13): `POST /v1/agent/refunds` loads the facts
//! [`rules::refunds::decide`] needs and writes what it decides.
//!
//! A window is refunded at most once, ever. Its verdict — the refund, or the
//! refusal of a window that was used — is stored with the lot updates in one
//! transaction and replayed byte for byte to every repeat, so a retry after a
//! crash at any point gets the first answer and nothing moves twice (the
//! `refunds` table also holds one row per window at most). Refusals about the
//! request or the moment (another device's window, too early, refunds off)
//! are answered and not kept.
//!
//! The session records a request carries are stored first, as a heartbeat
//! stores them, so the decision sees them with those uploaded before.
//! Claims call in here too: every device answered with a window is noted
//! ([`note_grant`]), a refunded window covers no launch (the claim's lookup
//! skips it) and cannot be renewed ([`refuse_renewal`]).

use chrono::{DateTime, Duration, Utc};
use flex_protocol::api::{ErrorBody, LotShare, RefundRequest, RefundResponse};
use flex_protocol::ErrorCode;
use rusqlite::{params, Connection, OptionalExtension};

use super::charges::lot_shares;
use super::claims::{load_window, WindowRow};
use super::heartbeat::{check_sessions, store_sessions};
use super::lots::{balance_of, load_lots};
use super::users::normalize_email;
use super::{notices, parse_ts, ts, ClaimOutcome, Result, Store, StoreError};
use crate::rules::refunds::{self as rules, Decision, Facts, Grants, Run, WindowFact};

/// Most runs of one (device, user, product) a window may overlap: more are
/// not a person opening a product by mistake, and are not read.
const MAX_RUNS: usize = 10_000;

/// Notes that `device_id` was answered with window `window_id` at `now`.
pub(super) fn note_grant(
    tx: &Connection,
    window_id: &str,
    device_id: &str,
    now: DateTime<Utc>,
) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO window_grants (window_id, device_id, last_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (window_id, device_id) DO UPDATE SET last_at = MAX(last_at, excluded.last_at)",
    )?
    .execute(params![window_id, device_id, ts(now)])?;
    Ok(())
}

/// When window `id` was refunded, if it was.
fn refunded_at(conn: &Connection, id: &str) -> Result<Option<DateTime<Utc>>> {
    conn.prepare_cached("SELECT created_at FROM refunds WHERE window_id = ?1")?
        .query_row([id], |r| r.get::<_, String>(0))
        .optional()?
        .map(|t| parse_ts(&t))
        .transpose()
}

/// A refunded window cannot be renewed: the product must claim a new one.
pub(super) fn refuse_renewal(conn: &Connection, old: &WindowRow) -> Result<()> {
    match refunded_at(conn, &old.id)? {
        Some(at) => Err(StoreError::Conflict(format!(
            "window '{}' was refunded at {} as a short run and cannot be renewed; claim a new window",
            old.id,
            at.format("%Y-%m-%d %H:%M:%S UTC")
        ))),
        None => Ok(()),
    }
}

fn validate(req: &RefundRequest) -> Result<String> {
    let id_ok = !req.window_id.is_empty()
        && req.window_id.len() <= 128
        && req.window_id.bytes().all(|b| b.is_ascii_graphic());
    if !id_ok {
        return Err(StoreError::Invalid(format!(
            "window_id '{}' must be 1-128 printable characters without spaces",
            req.window_id.chars().take(140).collect::<String>()
        )));
    }
    let user = normalize_email(&req.user).map_err(|e| StoreError::Invalid(format!("user {e}")))?;
    if req.product.is_empty() || req.product.len() > 64 {
        return Err(StoreError::Invalid(format!(
            "product '{}' is not a product id",
            req.product.chars().take(70).collect::<String>()
        )));
    }
    check_sessions(&req.sessions, "refund request")?;
    Ok(user)
}

fn load_grants(conn: &Connection, window_id: &str, device_id: &str) -> Result<Grants> {
    let mut stmt =
        conn.prepare_cached("SELECT device_id, last_at FROM window_grants WHERE window_id = ?1")?;
    let rows = stmt.query_map([window_id], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
    })?;
    let mut grants = Grants::default();
    for row in rows {
        let (device, at) = row?;
        if device == device_id {
            grants.here = Some(parse_ts(&at)?);
        } else {
            grants.elsewhere = true;
        }
    }
    Ok(grants)
}

/// The window's charge: its id and each lot's share.
fn load_charge(conn: &Connection, w: &WindowRow) -> Result<(i64, Vec<LotShare>)> {
    // By user first: the charges index, not a scan of the whole ledger.
    let id: i64 = conn
        .query_row(
            "SELECT id FROM charges WHERE user = ?1 AND window_id = ?2",
            params![w.user, w.id],
            |r| r.get(0),
        )
        .optional()?
        .ok_or_else(|| StoreError::Corrupt(format!("window '{}' has no charge", w.id)))?;
    Ok((id, lot_shares(conn, id)?))
}

/// A stored run: id, started, ended, window.
type RunRow = (String, DateTime<Utc>, Option<DateTime<Utc>>, Option<String>);

/// The device's runs of the window's (user, product) that overlap it.
fn load_runs(conn: &Connection, device_id: &str, w: &WindowRow) -> Result<Vec<RunRow>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, started_at, ended_at, window_id FROM sessions
         WHERE device_id = ?1 AND user = ?2 AND product = ?3 AND started_at < ?4
           AND (ended_at IS NULL OR ended_at > ?5)
         ORDER BY started_at LIMIT ?6",
    )?;
    let rows = stmt.query_map(
        params![
            device_id,
            w.user,
            w.product,
            ts(w.end),
            ts(w.start),
            MAX_RUNS as i64 + 1
        ],
        |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, Option<String>>(3)?,
            ))
        },
    )?;
    let mut runs = Vec::new();
    for row in rows {
        let (id, start, end, window) = row?;
        runs.push((
            id,
            parse_ts(&start)?,
            end.as_deref().map(parse_ts).transpose()?,
            window,
        ));
    }
    if runs.len() > MAX_RUNS {
        return Err(StoreError::Conflict(format!(
            "more than {MAX_RUNS} session records of {} / {} on this device overlap window '{}': it stays charged",
            w.user, w.product, w.id
        )));
    }
    Ok(runs)
}

/// Whether a window renews `w` (a process of it ran at its end).
fn renewed(conn: &Connection, w: &WindowRow) -> Result<bool> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM windows WHERE user = ?1 AND product = ?2 AND start = ?3 AND renews = ?4 LIMIT 1",
            params![w.user, w.product, ts(w.end), w.id],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

fn stored_answer(conn: &Connection, window_id: &str) -> Result<Option<ClaimOutcome>> {
    Ok(conn
        .query_row(
            "SELECT status, response FROM refund_answers WHERE window_id = ?1",
            [window_id],
            |r| {
                Ok(ClaimOutcome {
                    status: r.get(0)?,
                    body: r.get(1)?,
                })
            },
        )
        .optional()?)
}

fn keep_answer(
    conn: &Connection,
    window_id: &str,
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
        let user = validate(req)?;
        let now = self.now();
        self.write(|tx| self.refund_in(tx, device_id, &user, req, now))
    }

    fn refund_in(
        &self,
        tx: &Connection,
        device_id: &str,
        user: &str,
        req: &RefundRequest,
        now: DateTime<Utc>,
    ) -> Result<ClaimOutcome> {
        let w = load_window(tx, &req.window_id)?.ok_or_else(|| StoreError::NotFound {
            what: "window",
            key: req.window_id.clone(),
        })?;
        let grants = load_grants(tx, &w.id, device_id)?;
        let lots = load_lots(tx)?;
        let name = self
            .rates()
            .get(&w.product)
            .map_or(w.product.as_str(), |p| p.name.as_str());
        let grace = Duration::from_std(self.policy().short_use_grace)
            .map_err(|_| StoreError::Invalid("policy.short_use_grace is too long".into()))?;
        let mut facts = Facts {
            asked_user: user,
            asked_product: &req.product,
            window: WindowFact {
                id: &w.id,
                user: &w.user,
                product: &w.product,
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
            return Ok(answer);
        }
        let (charge_id, shares) = load_charge(tx, &w)?;
        let stored_runs = load_runs(tx, device_id, &w)?;
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
        tx: &Connection,
        w: &WindowRow,
        charge_id: i64,
        device_id: &str,
        back: &[LotShare],
        now: DateTime<Utc>,
    ) -> Result<()> {
        let tokens: u64 = back.iter().map(|s| s.tokens).sum();
        let refund_id: i64 = tx.query_row(
            "INSERT INTO refunds (window_id, charge_id, device_id, tokens, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5) RETURNING id",
            params![w.id, charge_id, device_id, tokens as i64, ts(now)],
            |r| r.get(0),
        )?;
        for s in back {
            tx.execute(
                "UPDATE lots SET remaining = remaining + ?1 WHERE id = ?2",
                params![s.tokens as i64, s.lot_id],
            )?;
            tx.execute(
                "INSERT INTO refund_lots (refund_id, lot_id, tokens) VALUES (?1, ?2, ?3)",
                params![refund_id, s.lot_id, s.tokens as i64],
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
