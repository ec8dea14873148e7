//! Claims: the rules that spend money (R4 entitlement, R5 daily windows, R6
//! per-result jobs, R7 default assignments) and their idempotency.
//!
//! A claim id names one attempt. The answer to a claim is stored in the same
//! transaction as the charge it made, so a retry after any crash gets exactly the
//! original answer and nothing is charged twice; the same id with another body is
//! a conflict and changes nothing.

use chrono::{DateTime, Utc};
use flex_protocol::api::{
    ChargeKind, ClaimRequest, ClaimResponse, Denial, Grant, LotShare, Source, Window,
};
use flex_protocol::lease::LeaseBody;
use flex_protocol::{ClaimId, ErrorCode, ProductId, WindowId};

use super::db::{params, Conn, Row};
use super::lots::{balance_of, spend};
use super::users::{has_subscription, load_defaults, load_user};
use super::{device_users, notices, parse_ts, refunds, sha256_hex, ts, Result, Store, StoreError};
use crate::rules::claim::{self, Decision, ProductFact, UserFacts, WindowFact};

/// Advisory lock key the replicas' claim writers take turns with ("flexclm").
const CLAIM_WRITERS: i64 = 0x0066_6c65_7863_6c6d;

/// The stored answer to a claim: replayed byte for byte on a retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimOutcome {
    pub status: u16,
    pub body: String,
}

pub(crate) fn source_of(s: &str) -> Result<Source> {
    match s {
        "tokens" => Ok(Source::Tokens),
        "subscription" => Ok(Source::Subscription),
        other => Err(StoreError::Corrupt(format!("source '{other}'"))),
    }
}

/// A window and when it was refunded (R13), from `windows w LEFT JOIN refunds r`.
const WINDOW_COLS: &str = "w.id, w.source, w.start, w.\"end\", w.\"user\", w.product, r.created_at";
const WINDOW_FROM: &str = "windows w LEFT JOIN refunds r ON r.window_id = w.id";

pub(super) fn window_row(r: &Row<'_>) -> Result<WindowFact> {
    Ok(WindowFact {
        id: r.get(0)?,
        source: source_of(r.str(1)?)?,
        start: parse_ts(r.str(2)?)?,
        end: parse_ts(r.str(3)?)?,
        user: r.get(4)?,
        product: r.get(5)?,
        refunded_at: r.opt_str(6)?.map(parse_ts).transpose()?,
    })
}

/// The window with this id, refunded or not.
pub(super) fn load_window(conn: &Conn<'_>, id: &WindowId) -> Result<Option<WindowFact>> {
    conn.query_opt(
        &format!("SELECT {WINDOW_COLS} FROM {WINDOW_FROM} WHERE w.id = ?1"),
        params![id],
        window_row,
    )
}

fn wire(w: &WindowFact) -> Window {
    Window {
        id: w.id.clone(),
        start: w.start,
        end: w.end,
    }
}

/// The claim rules' facts, loaded from the transaction the claim runs in.
struct StoreFacts<'s, 'c, 'a> {
    store: &'s Store,
    conn: &'c Conn<'a>,
}

impl claim::Facts for StoreFacts<'_, '_, '_> {
    type Error = StoreError;

    fn product(&self, id: &ProductId) -> Option<ProductFact<'_>> {
        self.store.rates().get(id).map(|p| ProductFact {
            name: &p.name,
            charge: p.charge,
        })
    }

    fn window_len(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.store.policy().window).expect("window fits")
    }

    fn window(&mut self, id: &WindowId) -> Result<Option<WindowFact>> {
        load_window(self.conn, id)
    }

    fn covering(
        &mut self,
        user: &str,
        product: &ProductId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Option<WindowFact>> {
        self.conn.query_opt(
            &format!(
                "SELECT {WINDOW_COLS} FROM {WINDOW_FROM}
                 WHERE w.\"user\" = ?1 AND w.product = ?2 AND w.start < ?4 AND w.\"end\" > ?3
                   AND r.window_id IS NULL
                 ORDER BY w.start LIMIT 1"
            ),
            params![user, product, ts(from), ts(to)],
            window_row,
        )
    }

    fn user(&mut self, user: &str, product: &ProductId) -> Result<UserFacts> {
        let u = load_user(self.conn, user)?;
        Ok(UserFacts {
            known: u.is_some(),
            flex_assigned: u.as_ref().is_some_and(|u| u.flex_assigned),
            subscribed: u.is_some() && has_subscription(self.conn, user, product)?,
            defaults: load_defaults(self.conn)?,
        })
    }
}

/// The checks the request's types do not make: its ids, product and user
/// were checked when it was read (flex_protocol::ids, flex_protocol::Email).
fn validate(req: &ClaimRequest) -> Result<String> {
    let invalid = |field: &str, m: String| Err(StoreError::invalid(field, m));
    let user = req.user.as_str().to_owned();
    if req.version.as_ref().is_some_and(|v| v.len() > 64) {
        return invalid("version", "version is longer than 64 characters".into());
    }
    match req.results {
        Some(0) => return invalid("results", "results must be at least 1".into()),
        Some(n) if n > 1_000_000_000 => {
            return invalid(
                "results",
                format!("results {n} is more than one job can hold"),
            )
        }
        _ => {}
    }
    if req.results.is_some() && req.renews.is_some() {
        return invalid(
            "renews",
            "a claim cannot both renew a window and carry results".into(),
        );
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
    claim_id: &'a ClaimId,
    user: &'a str,
    product: &'a ProductId,
    version: Option<&'a str>,
    kind: ChargeKind,
    source: Source,
    window_id: Option<&'a WindowId>,
    results: Option<u64>,
    tokens: u64,
    device_id: &'a str,
    shares: &'a [LotShare],
}

fn insert_charge(tx: &Conn<'_>, c: &ChargeRow<'_>, now: DateTime<Utc>) -> Result<()> {
    let kind = match c.kind {
        ChargeKind::Window => "window",
        ChargeKind::Renewal => "renewal",
        ChargeKind::PerResult => "per_result",
    };
    let charge_id: i64 = tx.query_one(
        "INSERT INTO charges (claim_id, \"user\", product, version, kind, source, window_id, results, tokens, device_id, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) RETURNING id",
        params![
            c.claim_id,
            c.user,
            c.product,
            c.version,
            kind,
            c.source.as_str(),
            c.window_id,
            c.results,
            c.tokens,
            c.device_id,
            ts(now)
        ],
        |r| r.get(0),
    )?;
    for s in c.shares {
        tx.execute(
            "INSERT INTO charge_lots (charge_id, lot_id, tokens) VALUES (?1, ?2, ?3)",
            params![charge_id, s.lot_id, s.tokens],
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
    /// On PostgreSQL the batch is one SERIALIZABLE transaction, run again
    /// whole when another replica's transaction conflicted with it.
    pub fn claim_batch(&self, claims: &[(String, ClaimRequest)]) -> Vec<Result<ClaimOutcome>> {
        let conn = match self.engine() {
            super::Engine::Sqlite(conn) => conn,
            super::Engine::Postgres(pool) => {
                return super::db::postgres::write_in_turn(pool, CLAIM_WRITERS, |tx| {
                    self.claims_in(tx, claims)
                })
                .unwrap_or_else(|e| {
                    let msg = e.to_string();
                    claims
                        .iter()
                        .map(|_| Err(StoreError::Commit(msg.clone())))
                        .collect()
                })
            }
        };
        let mut answers: Vec<Result<ClaimOutcome>> = Vec::with_capacity(claims.len());
        let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
        let mut tx = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        {
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
                let out = self.claim_in(&Conn::Lite(&sp), device_id, &user, req)?;
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

    /// Each claim of a PostgreSQL batch in a savepoint of `tx`: one that fails
    /// leaves nothing behind; a conflict with another replica fails the whole
    /// transaction, to be run again.
    fn claims_in(
        &self,
        tx: &Conn<'_>,
        claims: &[(String, ClaimRequest)],
    ) -> Result<Vec<Result<ClaimOutcome>>> {
        let mut answers = Vec::with_capacity(claims.len());
        for (device_id, req) in claims {
            let user = match validate(req) {
                Ok(user) => user,
                Err(e) => {
                    answers.push(Err(e));
                    continue;
                }
            };
            tx.batch("SAVEPOINT claim")?;
            match self.claim_in(tx, device_id, &user, req) {
                Ok(out) => {
                    tx.batch("RELEASE SAVEPOINT claim")?;
                    answers.push(Ok(out));
                }
                Err(e) if super::db::postgres::is_conflict(&e) => return Err(e),
                Err(e) => {
                    tx.batch("ROLLBACK TO SAVEPOINT claim; RELEASE SAVEPOINT claim")?;
                    answers.push(Err(e));
                }
            }
        }
        Ok(answers)
    }

    /// The body of one claim, on a connection inside a write transaction.
    fn claim_in(
        &self,
        tx: &Conn<'_>,
        device_id: &str,
        user: &str,
        req: &ClaimRequest,
    ) -> Result<ClaimOutcome> {
        let fingerprint =
            sha256_hex(&serde_json::to_vec(&(device_id, req)).expect("claim request serializes"));
        let now = self.now();
        let seen: Option<(String, u16, String)> = tx.query_opt(
            "SELECT request_hash, status, response FROM claims WHERE claim_id = ?1",
            params![req.claim_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        if let Some((hash, status, body)) = seen {
            if hash == fingerprint {
                #[cfg(feature = "planted-bugs")]
                if self.planted() == Some(super::PlantedBug::DoubleChargeOnDuplicate) {
                    super::planted::charge_again(tx, req.claim_id.as_str(), now)?;
                }
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
        let response = self.answer(tx, device_id, user, req, now)?;
        let body = serde_json::to_string(&response).expect("claim response serializes");
        tx.execute(
            "INSERT INTO claims (claim_id, request_hash, status, response, created_at)
             VALUES (?1, ?2, 200, ?3, ?4)",
            params![req.claim_id, fingerprint, body, ts(now)],
        )?;
        Ok(ClaimOutcome { status: 200, body })
    }

    /// Decides the claim by [`claim::decide`] and carries the decision out:
    /// pays, opens the window, records the charge, signs the lease.
    fn answer(
        &self,
        tx: &Conn<'_>,
        device_id: &str,
        user: &str,
        req: &ClaimRequest,
        now: DateTime<Utc>,
    ) -> Result<ClaimResponse> {
        let decision = claim::decide(
            &mut StoreFacts {
                store: self,
                conn: tx,
            },
            req,
            now,
        )?;
        let (source, cost, kind, window) = match &decision {
            Decision::Deny { reason, message } => {
                return Ok(denied(*reason, message.clone(), None))
            }
            Decision::Covered(w) => return self.grant(tx, device_id, w, 0, now),
            Decision::Job { source, cost } => (*source, *cost, ChargeKind::PerResult, None),
            Decision::Open { window, cost } => {
                let w = WindowFact {
                    id: self.new_window_id(),
                    user: req.user.clone(),
                    product: req.product.clone(),
                    source: window.source,
                    start: window.start,
                    end: window.end,
                    refunded_at: None,
                };
                (window.source, *cost, window.kind, Some(w))
            }
        };
        let name = self
            .rates()
            .get(&req.product)
            .map_or(req.product.as_str(), |p| p.name.as_str());
        // R3: the lots that expire first pay first; a short balance pays nothing.
        let shares = match spend(tx, cost, now)? {
            Ok(s) => s,
            Err(short) => {
                notices::on_refusal(tx, user, name, short.balance, cost, now)?;
                return Ok(denied(
                    ErrorCode::OutOfTokens,
                    claim::out_of_tokens(&decision, req, name, short.balance),
                    Some(short.balance),
                ));
            }
        };
        // The window is written once paid for, before the charge that names it.
        if let Some(w) = &window {
            tx.execute(
                "INSERT INTO windows (id, \"user\", product, source, start, \"end\", renews)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    w.id,
                    user,
                    req.product,
                    source.as_str(),
                    ts(w.start),
                    ts(w.end),
                    req.renews
                ],
            )?;
        }
        insert_charge(
            tx,
            &ChargeRow {
                claim_id: &req.claim_id,
                user,
                product: &req.product,
                version: req.version.as_deref(),
                kind,
                source,
                window_id: window.as_ref().map(|w| &w.id),
                results: req.results,
                tokens: cost,
                device_id,
                shares: &shares,
            },
            now,
        )?;
        if cost > 0 {
            notices::after_charge(tx, self.policy(), now)?;
        }
        match &window {
            Some(w) => self.grant(tx, device_id, w, cost, now),
            None => Ok(ClaimResponse::Granted(Grant {
                source,
                window: None,
                tokens_charged: cost,
                balance: balance_of(tx, now)?,
                lease: None,
            })),
        }
    }

    fn grant(
        &self,
        tx: &Conn<'_>,
        device_id: &str,
        w: &WindowFact,
        charged: u64,
        now: DateTime<Utc>,
    ) -> Result<ClaimResponse> {
        // Which devices hold the window, and when each was last answered
        // with it, is what a refund of a short run looks at.
        refunds::note_grant(tx, &w.id, device_id, now)?;
        let lease = self.signer().sign(&LeaseBody {
            window_id: w.id.clone(),
            device_id: device_id.to_string(),
            user: w.user.clone(),
            product: w.product.clone(),
            source: w.source,
            start: w.start,
            end: w.end,
            issued_at: now,
        });
        Ok(ClaimResponse::Granted(Grant {
            source: w.source,
            window: Some(wire(w)),
            tokens_charged: charged,
            balance: balance_of(tx, now)?,
            lease: Some(lease),
        }))
    }
}
