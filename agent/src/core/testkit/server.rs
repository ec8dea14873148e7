//! The fake entitlement server: the server's own rules over in-memory state —
//! claims by `flex_server::rules::claim::decide` (R4–R7), refunds of short
//! runs by `flex_server::rules::refunds::decide` (R13) — idempotent by claim
//! id and by refunded window as the real store is, signing leases with a
//! fixed key. The balance is one lot that never expires.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Duration, Utc};
use ed25519_dalek::SigningKey;
use flex_protocol::api::{
    AssignmentMode, ChargeModel, ClaimRequest, ClaimResponse, DefaultAssignments, Denial, Grant,
    LotShare, Notice, Policy, RefundResponse, SessionRecord, Source, Window,
};
use flex_protocol::lease::{LeaseBody, LeaseSigner, LeaseVerifier};
use flex_protocol::ErrorCode;
use flex_protocol::{ClaimId, ProductId, SessionId, WindowId};
use flex_server::ledger::LotState;
use flex_server::rules::claim::{self, Decision, ProductFact, UserFacts, WindowFact};
use flex_server::rules::refunds;
use flex_server::rules::{windows, Refused};

use super::DEVICE;
use crate::core::default_policy;

/// One charge the server made.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeCharge {
    pub claim_id: ClaimId,
    pub user: String,
    pub product: ProductId,
    pub tokens: u64,
    pub renewal: bool,
    /// The window it paid for (none for a per-result job).
    pub window: Option<WindowId>,
}

/// The entitlement server's claim rules (R4–R6), idempotent by claim id.
pub struct FakeServer {
    signer: LeaseSigner,
    pub balance: u64,
    pub rates: HashMap<ProductId, ChargeModel>,
    pub subscriptions: HashSet<(String, String)>,
    /// Users not on Flex (every other user is, with every product allowed).
    pub not_on_flex: HashSet<String>,
    pub policy: Policy,
    /// Every window granted, oldest first.
    windows: Vec<WindowFact>,
    answers: HashMap<ClaimId, (ClaimRequest, ClaimResponse)>,
    pub charges: Vec<FakeCharge>,
    /// Every claim received, retries included.
    pub received: Vec<ClaimRequest>,
    /// Notices the next heartbeat delivers.
    pub notices: Vec<Notice>,
    /// Refund verdicts by window id: a repeat gets the first answer.
    pub refunds: HashMap<WindowId, Result<RefundResponse, String>>,
    /// Session records refund requests carried, by id (as the store keeps them).
    sessions: HashMap<SessionId, SessionRecord>,
    /// Windows a renewal continued.
    renewed: HashSet<WindowId>,
    /// Every refund request received, retries included.
    pub refund_requests: Vec<WindowId>,
    /// (window id, when) of every grant of a window to a launch.
    window_grants: Vec<(WindowId, DateTime<Utc>)>,
    next_window: u64,
}

impl FakeServer {
    pub fn new(balance: u64) -> Self {
        let rates = [
            ("autocad", ChargeModel::Daily { tokens: 7 }),
            ("revit", ChargeModel::Daily { tokens: 10 }),
            ("recap-photo", ChargeModel::PerResult { tokens: 1, per: 50 }),
        ];
        FakeServer {
            signer: LeaseSigner::new("k1", SigningKey::from_bytes(&[7; 32])),
            balance,
            rates: rates
                .iter()
                .map(|(p, c)| (p.parse().unwrap(), *c))
                .collect(),
            subscriptions: HashSet::new(),
            not_on_flex: HashSet::new(),
            policy: default_policy(),
            windows: Vec::new(),
            answers: HashMap::new(),
            charges: Vec::new(),
            received: Vec::new(),
            notices: Vec::new(),
            refunds: HashMap::new(),
            sessions: HashMap::new(),
            renewed: HashSet::new(),
            refund_requests: Vec::new(),
            window_grants: Vec::new(),
            next_window: 1,
        }
    }

    /// The server starts signing with a new key the agent never pinned (a
    /// re-keyed or replaced server).
    pub fn rotate_key(&mut self) {
        self.signer = LeaseSigner::new("k2", SigningKey::from_bytes(&[9; 32]));
    }

    /// The server signs with the key the agent pinned again (a fixed server).
    pub fn restore_key(&mut self) {
        self.signer = LeaseSigner::new("k1", SigningKey::from_bytes(&[7; 32]));
    }

    pub fn verifier(&self) -> LeaseVerifier {
        LeaseVerifier::from_keys(&[self.signer.public_key()]).unwrap()
    }

    /// The rate sheet the server would send: every product it rates.
    pub fn products(&self) -> Vec<flex_protocol::api::Product> {
        let mut ids: Vec<&ProductId> = self.rates.keys().collect();
        ids.sort();
        ids.into_iter()
            .map(|id| flex_protocol::api::Product {
                id: id.clone(),
                name: id.to_string(),
                charge: self.rates[id],
                executables: Default::default(),
                sample: false,
            })
            .collect()
    }

    /// The newest window the server opened for (user, product) and did not refund.
    pub fn window_of(&self, user: &flex_protocol::Email, product: &str) -> Option<Window> {
        self.windows
            .iter()
            .rev()
            .find(|w| w.user == user.as_str() && w.product == product && w.refunded_at.is_none())
            .map(wire)
    }

    pub fn total_charged(&self) -> u64 {
        self.charges.iter().map(|c| c.tokens).sum()
    }

    pub fn claim(&mut self, req: &ClaimRequest, now: DateTime<Utc>) -> ClaimResponse {
        self.received.push(req.clone());
        if let Some((first, answer)) = self.answers.get(&req.claim_id) {
            if first != req {
                return deny(
                    ErrorCode::Conflict,
                    "claim id reused with another body",
                    None,
                );
            }
            return answer.clone();
        }
        let answer = self.decide(req, now);
        self.answers
            .insert(req.claim_id.clone(), (req.clone(), answer.clone()));
        answer
    }

    /// The server's own rules (`flex_server::rules::claim::decide`) over this
    /// fake's state: every user is on Flex with every product allowed, the
    /// balance is one lot.
    fn decide(&mut self, req: &ClaimRequest, now: DateTime<Utc>) -> ClaimResponse {
        let decision = match claim::decide(self, req, now) {
            Ok(d) => d,
            Err(Refused::Invalid(e)) => return deny(ErrorCode::InvalidRequest, &e.message, None),
            Err(Refused::Conflict(e)) => return deny(ErrorCode::Conflict, &e.message, None),
        };
        match decision {
            Decision::Deny { reason, message } => deny(reason, &message, None),
            Decision::Covered(w) => {
                let source = w.source;
                self.grant(req, source, wire(&w), 0, now)
            }
            Decision::Job { source, cost } => {
                if !self.pay(req, cost, false) {
                    return deny(
                        ErrorCode::OutOfTokens,
                        "balance too low",
                        Some(self.balance),
                    );
                }
                ClaimResponse::Granted(Grant {
                    source,
                    window: None,
                    tokens_charged: cost,
                    balance: self.balance,
                    lease: None,
                })
            }
            Decision::Open { window, cost } => {
                if !self.pay(req, cost, window.renews.is_some()) {
                    return deny(
                        ErrorCode::OutOfTokens,
                        "balance too low",
                        Some(self.balance),
                    );
                }
                let w = WindowFact {
                    id: format!("w{}", self.next_window).parse().unwrap(),
                    user: req.user.clone(),
                    product: req.product.clone(),
                    source: window.source,
                    start: window.start,
                    end: window.end,
                    refunded_at: None,
                };
                self.next_window += 1;
                self.renewed.extend(window.renews.clone());
                if let Some(c) = self
                    .charges
                    .last_mut()
                    .filter(|c| c.claim_id == req.claim_id)
                {
                    c.window = Some(w.id.clone());
                }
                self.windows.push(w.clone());
                self.grant(req, window.source, wire(&w), cost, now)
            }
        }
    }

    fn pay(&mut self, req: &ClaimRequest, tokens: u64, renewal: bool) -> bool {
        if self.balance < tokens {
            return false;
        }
        self.balance -= tokens;
        self.charges.push(FakeCharge {
            claim_id: req.claim_id.clone(),
            user: req.user.to_string(),
            product: req.product.clone(),
            tokens,
            renewal,
            window: None,
        });
        true
    }

    /// R13 by the server's own rules: the request's session records are
    /// kept first (by id), then `refunds::decide` judges the window over this
    /// fake's state; a verdict is kept and replayed, a refusal about the
    /// request or the moment is not (as the store does).
    pub fn refund(
        &mut self,
        window_id: &WindowId,
        sessions: &[SessionRecord],
        now: DateTime<Utc>,
    ) -> Result<RefundResponse, String> {
        self.refund_requests.push(window_id.clone());
        let Some(w) = self.windows.iter().find(|w| w.id == window_id).cloned() else {
            return Err(format!("window '{window_id}' not found"));
        };
        for s in sessions {
            self.sessions.insert(s.id.clone(), s.clone());
        }
        if let Some(answer) = self.refunds.get(window_id) {
            return answer.clone();
        }
        let runs: Vec<refunds::Run<'_>> = self
            .sessions
            .values()
            .filter(|s| s.user == w.user && s.product == w.product)
            .map(|s| refunds::Run {
                id: s.id.as_str(),
                started_at: s.started_at,
                ended_at: s.ended_at,
                window_id: s.window_id.as_ref().map(WindowId::as_str),
            })
            .collect();
        let shares: Vec<LotShare> = self
            .charges
            .iter()
            .filter(|c| c.window.as_ref() == Some(window_id) && c.tokens > 0)
            .map(|c| LotShare {
                lot_id: 1,
                tokens: c.tokens,
            })
            .collect();
        let lot = [LotState {
            id: 1,
            tokens: self.balance,
            remaining: self.balance,
            purchased_at: DateTime::<Utc>::MIN_UTC,
            expires_at: DateTime::<Utc>::MAX_UTC,
        }];
        let facts = refunds::Facts {
            asked_user: &w.user,
            asked_product: w.product.as_str(),
            window: refunds::WindowFact {
                id: w.id.as_str(),
                user: &w.user,
                product: w.product.as_str(),
                start: w.start,
                end: w.end,
            },
            product_name: w.product.as_str(),
            grace: Duration::seconds(self.policy.short_use_grace_secs as i64),
            grants: refunds::Grants {
                here: self
                    .window_grants
                    .iter()
                    .filter(|(id, _)| id == window_id)
                    .map(|(_, at)| *at)
                    .max(),
                elsewhere: false,
            },
            renewed: self.renewed.contains(window_id),
            runs: &runs,
            shares: &shares,
            lots: &lot,
        };
        let answer = match refunds::decide(&facts, now) {
            refunds::Decision::Refuse(r) if !r.reason.is_verdict() => return Err(r.message),
            refunds::Decision::Refuse(r) => Err(r.message),
            refunds::Decision::Refund { tokens, .. } => {
                self.balance += tokens;
                // A refunded window covers no launch and cannot be renewed.
                if let Some(w) = self.windows.iter_mut().find(|w| w.id == window_id) {
                    w.refunded_at = Some(now);
                }
                Ok(RefundResponse {
                    window_id: window_id.clone(),
                    refunded_tokens: tokens,
                    balance: self.balance,
                })
            }
        };
        self.refunds.insert(window_id.clone(), answer.clone());
        answer
    }

    /// Tokens refunded in all.
    pub fn total_refunded(&self) -> u64 {
        self.refunds
            .values()
            .filter_map(|a| a.as_ref().ok())
            .map(|r| r.refunded_tokens)
            .sum()
    }

    fn grant(
        &mut self,
        req: &ClaimRequest,
        source: Source,
        window: Window,
        tokens: u64,
        now: DateTime<Utc>,
    ) -> ClaimResponse {
        if req.results.is_none() {
            self.window_grants.push((window.id.clone(), now));
        }
        let lease = self.signer.sign(&LeaseBody {
            window_id: window.id.clone(),
            device_id: DEVICE.into(),
            user: req.user.clone(),
            product: req.product.clone(),
            source,
            start: window.start,
            end: window.end,
            issued_at: now,
        });
        ClaimResponse::Granted(Grant {
            source,
            window: Some(window),
            tokens_charged: tokens,
            balance: self.balance,
            lease: Some(lease),
        })
    }
}

/// The facts of the claim rules, from this fake's state.
impl claim::Facts for FakeServer {
    type Error = Refused;

    fn product(&self, id: &ProductId) -> Option<ProductFact<'_>> {
        self.rates
            .get_key_value(id)
            .map(|(name, charge)| ProductFact {
                name: name.as_str(),
                charge: *charge,
            })
    }

    fn window_len(&self) -> chrono::Duration {
        chrono::Duration::seconds(self.policy.window_secs as i64)
    }

    fn window(&mut self, id: &WindowId) -> Result<Option<WindowFact>, Refused> {
        Ok(self.windows.iter().find(|w| w.id == id).cloned())
    }

    fn covering(
        &mut self,
        user: &str,
        product: &ProductId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Option<WindowFact>, Refused> {
        Ok(self
            .windows
            .iter()
            .filter(|w| w.user == user && w.product == product && w.refunded_at.is_none())
            .filter(|w| windows::overlaps(w.start, w.end, from, to))
            .min_by_key(|w| w.start)
            .cloned())
    }

    fn user(&mut self, user: &str, product: &ProductId) -> Result<UserFacts, Refused> {
        Ok(UserFacts {
            known: true,
            flex_assigned: !self.not_on_flex.contains(user),
            subscribed: self
                .subscriptions
                .contains(&(user.to_string(), product.to_string())),
            defaults: DefaultAssignments {
                mode: AssignmentMode::All,
                products: Vec::new(),
            },
        })
    }
}

fn wire(w: &WindowFact) -> Window {
    Window {
        id: w.id.clone(),
        start: w.start,
        end: w.end,
    }
}

fn deny(reason: ErrorCode, message: &str, balance: Option<u64>) -> ClaimResponse {
    ClaimResponse::Denied(Denial {
        reason,
        message: message.into(),
        balance,
    })
}
