//! Claims: the rules that spend money (R4 entitlement, R5 daily windows, R6
//! per-result jobs, R7 default assignments) and their idempotency.
//!
//! A claim id names one attempt. The answer to a claim is stored in the same
//! transaction as the charge it made, so a retry after any crash gets exactly the
//! original answer and nothing is charged twice; the same id with another body is
//! a conflict and changes nothing.

use chrono::{DateTime, Utc};
use flex_protocol::api::{
    ChargeKind, ChargeModel, ClaimRequest, ClaimResponse, Denial, Grant, LotShare, Source, Window,
};
use flex_protocol::lease::LeaseBody;
use flex_protocol::ErrorCode;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::lots::{balance_of, spend};
use super::users::{has_subscription, load_defaults, load_user, normalize_email};
use super::{device_users, notices, parse_ts, refunds, sha256_hex, ts, Result, Store, StoreError};
use crate::rules::{entitlement, per_result, windows};

/// The stored answer to a claim: replayed byte for byte on a retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimOutcome {
    pub status: u16,
    pub body: String,
}

#[derive(Debug, Clone)]
pub(super) struct WindowRow {
    pub(super) id: String,
    pub(super) source: Source,
    pub(super) start: DateTime<Utc>,
    pub(super) end: DateTime<Utc>,
    pub(super) user: String,
    pub(super) product: String,
}

impl WindowRow {
    fn wire(&self) -> Window {
        Window {
            id: self.id.clone(),
            start: self.start,
            end: self.end,
        }
    }
}

pub(crate) fn source_of(s: &str) -> Result<Source> {
    match s {
        "tokens" => Ok(Source::Tokens),
        "subscription" => Ok(Source::Subscription),
        other => Err(StoreError::Corrupt(format!("source '{other}'"))),
    }
}

fn window_from_row(
    r: &rusqlite::Row<'_>,
) -> rusqlite::Result<(String, String, String, String, String, String)> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
    ))
}

fn to_window(raw: (String, String, String, String, String, String)) -> Result<WindowRow> {
    let (id, source, start, end, user, product) = raw;
    Ok(WindowRow {
        id,
        source: source_of(&source)?,
        start: parse_ts(&start)?,
        end: parse_ts(&end)?,
        user,
        product,
    })
}

const WINDOW_COLS: &str = "id, source, start, end, user, product";

pub(super) fn load_window(conn: &Connection, id: &str) -> Result<Option<WindowRow>> {
    conn.query_row(
        &format!("SELECT {WINDOW_COLS} FROM windows WHERE id = ?1"),
        [id],
        window_from_row,
    )
    .optional()?
    .map(to_window)
    .transpose()
}

/// A window of `user`/`product` that overlaps `[start, end)`; a refunded
/// window covers nothing (R13).
fn overlapping(
    conn: &Connection,
    user: &str,
    product: &str,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Result<Option<WindowRow>> {
    conn.query_row(
        &format!(
            "SELECT {WINDOW_COLS} FROM windows
             WHERE user = ?1 AND product = ?2 AND start < ?4 AND end > ?3
               AND NOT EXISTS (SELECT 1 FROM refunds r WHERE r.window_id = windows.id)
             ORDER BY start LIMIT 1"
        ),
        params![user, product, ts(start), ts(end)],
        window_from_row,
    )
    .optional()?
    .map(to_window)
    .transpose()
}

fn validate(req: &ClaimRequest) -> Result<String> {
    let invalid = |m: String| Err(StoreError::Invalid(m));
    let id_ok = !req.claim_id.is_empty()
        && req.claim_id.len() <= 128
        && req.claim_id.bytes().all(|b| b.is_ascii_graphic());
    if !id_ok {
        return invalid(format!(
            "claim_id '{}' must be 1-128 printable characters without spaces",
            req.claim_id.chars().take(140).collect::<String>()
        ));
    }
    let user = normalize_email(&req.user).map_err(|e| StoreError::Invalid(format!("user {e}")))?;
    if req.product.is_empty() || req.product.len() > 64 {
        return invalid(format!("product '{}' is not a product id", req.product));
    }
    if req.version.as_ref().is_some_and(|v| v.len() > 64) {
        return invalid("version is longer than 64 characters".into());
    }
    match req.results {
        Some(0) => return invalid("results must be at least 1".into()),
        Some(n) if n > 1_000_000_000 => {
            return invalid(format!("results {n} is more than one job can hold"))
        }
        _ => {}
    }
    if req.results.is_some() && req.renews.is_some() {
        return invalid("a claim cannot both renew a window and carry results".into());
    }
    Ok(user)
}

fn denied(reason: ErrorCode, message: String, balance: Option<u64>) -> ClaimResponse {
    ClaimResponse::Denied(Denial {
        reason,
        message,
        balance,
    })
}

#[derive(Clone, Copy)]
struct ChargeRow<'a> {
    claim_id: &'a str,
    user: &'a str,
    product: &'a str,
    version: Option<&'a str>,
    kind: ChargeKind,
    source: Source,
    window_id: Option<&'a str>,
    results: Option<u64>,
    tokens: u64,
    device_id: &'a str,
    shares: &'a [LotShare],
}

fn insert_charge(tx: &Connection, c: &ChargeRow<'_>, now: DateTime<Utc>) -> Result<()> {
    let kind = match c.kind {
        ChargeKind::Window => "window",
        ChargeKind::Renewal => "renewal",
        ChargeKind::PerResult => "per_result",
    };
    tx.execute(
        "INSERT INTO charges (claim_id, user, product, version, kind, source, window_id, results, tokens, device_id, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        params![
            c.claim_id,
            c.user,
            c.product,
            c.version,
            kind,
            c.source.as_str(),
            c.window_id,
            c.results.map(|n| n as i64),
            c.tokens as i64,
            c.device_id,
            ts(now)
        ],
    )?;
    let charge_id = tx.last_insert_rowid();
    for s in c.shares {
        tx.execute(
            "INSERT INTO charge_lots (charge_id, lot_id, tokens) VALUES (?1, ?2, ?3)",
            params![charge_id, s.lot_id, s.tokens as i64],
        )?;
    }
    Ok(())
}

impl Store {
    /// Answers `POST /v1/agent/claims` for `device_id`, in a transaction of its own.
    pub fn claim(&self, device_id: &str, req: &ClaimRequest) -> Result<ClaimOutcome> {
        let user = validate(req)?;
        self.write(|tx| self.claim_in(tx, device_id, &user, req))
    }

    /// Answers many claims with one commit (one fsync): each runs in a savepoint
    /// of the same IMMEDIATE transaction, in order, so each sees the ones before it
    /// exactly as if they had been committed one by one, and a claim that fails
    /// leaves nothing behind. No answer is released before the commit; if the
    /// commit fails, every claim of the batch fails and nothing was written.
    pub fn claim_batch(&self, claims: &[(String, ClaimRequest)]) -> Vec<Result<ClaimOutcome>> {
        let mut answers: Vec<Result<ClaimOutcome>> = Vec::with_capacity(claims.len());
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let mut tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
            Ok(tx) => tx,
            Err(e) => {
                let msg = e.to_string();
                return claims
                    .iter()
                    .map(|_| Err(StoreError::Commit(msg.clone())))
                    .collect();
            }
        };
        for (device_id, req) in claims {
            let answer = validate(req).and_then(|user| {
                let sp = tx.savepoint()?;
                let out = self.claim_in(&sp, device_id, &user, req)?;
                sp.commit()?;
                Ok(out)
            });
            answers.push(answer);
        }
        if let Err(e) = tx.commit() {
            let msg = e.to_string();
            return claims
                .iter()
                .map(|_| Err(StoreError::Commit(msg.clone())))
                .collect();
        }
        answers
    }

    /// The body of one claim, on a connection inside a write transaction.
    fn claim_in(
        &self,
        tx: &Connection,
        device_id: &str,
        user: &str,
        req: &ClaimRequest,
    ) -> Result<ClaimOutcome> {
        let fingerprint =
            sha256_hex(&serde_json::to_vec(&(device_id, req)).expect("claim request serializes"));
        let now = self.now();
        let seen: Option<(String, u16, String)> = tx
            .query_row(
                "SELECT request_hash, status, response FROM claims WHERE claim_id = ?1",
                [&req.claim_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        if let Some((hash, status, body)) = seen {
            if hash == fingerprint {
                return Ok(ClaimOutcome { status, body });
            }
            return Err(StoreError::Conflict(format!(
                "claim id '{}' was already used for a different request; use a new id for a new attempt",
                req.claim_id
            )));
        }
        if self.rates().get(&req.product).is_none() {
            // Refused, charging nothing, and kept nowhere: a flood of claims for
            // products that do not exist costs no storage. A retry gets the same
            // answer while the rate sheet does not name the product.
            let response = denied(
                ErrorCode::UnknownProduct,
                format!("product '{}' is not on the rate sheet", req.product),
                None,
            );
            let body = serde_json::to_string(&response).expect("claim response serializes");
            return Ok(ClaimOutcome { status: 200, body });
        }
        notices::check_expiring(tx, now)?;
        device_users::spoke_for(tx, device_id, user, self.policy(), now)?;
        let response = self.decide(tx, device_id, user, req, now)?;
        let body = serde_json::to_string(&response).expect("claim response serializes");
        tx.execute(
            "INSERT INTO claims (claim_id, request_hash, status, response, created_at)
             VALUES (?1, ?2, 200, ?3, ?4)",
            params![req.claim_id, fingerprint, body, ts(now)],
        )?;
        Ok(ClaimOutcome { status: 200, body })
    }

    /// The facts of R4 and R7, decided by [`entitlement::decide`].
    fn entitlement(
        &self,
        tx: &Connection,
        user: &str,
        product: &str,
    ) -> Result<std::result::Result<Source, String>> {
        let u = load_user(tx, user)?;
        let defaults = load_defaults(tx)?;
        let facts = entitlement::Facts {
            known: u.is_some(),
            flex_assigned: u.as_ref().is_some_and(|u| u.flex_assigned),
            subscribed: u.is_some() && has_subscription(tx, user, product)?,
            defaults: &defaults,
        };
        // Refusals are read by people: the product by its display name.
        let name = self
            .rates()
            .get(product)
            .map_or(product, |p| p.name.as_str());
        Ok(entitlement::decide_as(user, product, name, &facts))
    }

    /// Spends the charge's tokens in R3 order (planned by [`crate::ledger`]),
    /// runs `before_charge`, records the charge and raises the notices it
    /// causes; or refuses the whole charge, writes nothing and raises
    /// `out_of_tokens`. The one path every charge takes.
    fn pay(
        &self,
        tx: &Connection,
        charge: &ChargeRow<'_>,
        refusal: impl FnOnce(u64) -> String,
        before_charge: impl FnOnce() -> Result<()>,
        now: DateTime<Utc>,
    ) -> Result<Option<ClaimResponse>> {
        let shares = match spend(tx, charge.tokens, now)? {
            Ok(s) => s,
            Err(short) => {
                let name = self
                    .rates()
                    .get(charge.product)
                    .map_or(charge.product, |p| p.name.as_str());
                notices::on_refusal(tx, charge.user, name, short.balance, charge.tokens, now)?;
                return Ok(Some(denied(
                    ErrorCode::OutOfTokens,
                    refusal(short.balance),
                    Some(short.balance),
                )));
            }
        };
        before_charge()?;
        insert_charge(
            tx,
            &ChargeRow {
                shares: &shares,
                ..*charge
            },
            now,
        )?;
        if charge.tokens > 0 {
            notices::after_charge(tx, self.policy(), now)?;
        }
        Ok(None)
    }

    fn decide(
        &self,
        tx: &Connection,
        device_id: &str,
        user: &str,
        req: &ClaimRequest,
        now: DateTime<Utc>,
    ) -> Result<ClaimResponse> {
        let Some(product) = self.rates().get(&req.product) else {
            return Ok(denied(
                ErrorCode::UnknownProduct,
                format!("product '{}' is not on the rate sheet", req.product),
                None,
            ));
        };
        if let Some(n) = req.results {
            return self.per_result(tx, device_id, user, req, product.charge, n, now);
        }

        let len = chrono::Duration::from_std(self.policy().window).expect("window fits");
        let renews_end = match &req.renews {
            Some(old_id) => {
                let old = load_window(tx, old_id)?.ok_or_else(|| {
                    StoreError::Invalid(format!("renews: window '{old_id}' does not exist"))
                })?;
                if old.user != user || old.product != req.product {
                    return Err(StoreError::Invalid(format!(
                        "renews: window '{old_id}' belongs to {} / {}, not {user} / {}",
                        old.user, old.product, req.product
                    )));
                }
                refunds::refuse_renewal(tx, &old)?;
                Some(old.end)
            }
            None => None,
        };
        let (start, end, kind) = windows::requested(now, renews_end, len);

        // Inside an open window (or one already renewed by another device) the
        // launch is free, whatever the assignments say now (R7).
        let (from, to) = windows::lookup(kind, now, start, end);
        if let Some(w) = overlapping(tx, user, &req.product, from, to)? {
            return self.grant(tx, device_id, &w, 0, now);
        }

        let source = match self.entitlement(tx, user, &req.product)? {
            Ok(source) => source,
            Err(why) => return Ok(denied(ErrorCode::NotEntitled, why, None)),
        };
        let cost = windows::cost(source, product.charge);
        let window = WindowRow {
            id: uuid::Uuid::new_v4().to_string(),
            source,
            start,
            end,
            user: user.to_string(),
            product: req.product.clone(),
        };
        let charge = ChargeRow {
            claim_id: &req.claim_id,
            user,
            product: &req.product,
            version: req.version.as_deref(),
            kind,
            source,
            window_id: Some(&window.id),
            results: None,
            tokens: cost,
            device_id,
            shares: &[],
        };
        let refusal = |balance| {
            format!(
                "{} costs {cost} tokens for 24 hours and the balance is {balance}; ask your license admin to buy tokens",
                product.name
            )
        };
        // The window is written once paid for, before the charge that names it.
        let open = || -> Result<()> {
            tx.execute(
                "INSERT INTO windows (id, user, product, source, start, end, renews) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![window.id, user, req.product, source.as_str(), ts(start), ts(end), req.renews],
            )?;
            Ok(())
        };
        if let Some(refused) = self.pay(tx, &charge, refusal, open, now)? {
            return Ok(refused);
        }
        self.grant(tx, device_id, &window, cost, now)
    }

    fn grant(
        &self,
        tx: &Connection,
        device_id: &str,
        w: &WindowRow,
        charged: u64,
        now: DateTime<Utc>,
    ) -> Result<ClaimResponse> {
        refunds::note_grant(tx, &w.id, device_id, now)?;
        let lease = self.signer().sign(&LeaseBody {
            window_id: w.id.clone(),
            device_id: device_id.to_string(),
            // Stored users were normalised on the way in; this cannot fail.
            user: flex_protocol::Email::parse(&w.user)
                .map_err(|e| StoreError::Invalid(format!("stored window user {e}")))?,
            product: w.product.clone(),
            source: w.source,
            start: w.start,
            end: w.end,
            issued_at: now,
        });
        Ok(ClaimResponse::Granted(Grant {
            source: w.source,
            window: Some(w.wire()),
            tokens_charged: charged,
            balance: balance_of(tx, now)?,
            lease: Some(lease),
        }))
    }

    #[allow(clippy::too_many_arguments)]
    fn per_result(
        &self,
        tx: &Connection,
        device_id: &str,
        user: &str,
        req: &ClaimRequest,
        charge: ChargeModel,
        results: u64,
        now: DateTime<Utc>,
    ) -> Result<ClaimResponse> {
        if charge.per_result_cost(results).is_none() {
            return Err(StoreError::Invalid(format!(
                "product '{}' is charged per day; results are only for per-result products",
                req.product
            )));
        }
        let source = match self.entitlement(tx, user, &req.product)? {
            Ok(source) => source,
            Err(why) => return Ok(denied(ErrorCode::NotEntitled, why, None)),
        };
        let cost = per_result::job_cost(charge, results, source).expect("a per-result product");
        let row = ChargeRow {
            claim_id: &req.claim_id,
            user,
            product: &req.product,
            version: req.version.as_deref(),
            kind: ChargeKind::PerResult,
            source,
            window_id: None,
            results: Some(results),
            tokens: cost,
            device_id,
            shares: &[],
        };
        let refusal = |balance| {
            format!(
                "a job of {results} results costs {cost} tokens and the balance is {balance}; ask your license admin to buy tokens"
            )
        };
        if let Some(refused) = self.pay(tx, &row, refusal, || Ok(()), now)? {
            return Ok(refused);
        }
        Ok(ClaimResponse::Granted(Grant {
            source,
            window: None,
            tokens_charged: cost,
            balance: balance_of(tx, now)?,
            lease: None,
        }))
    }
}
