//! The fake entitlement server: the server's own claim rules (R4–R6, in the
//! order `flex_server::rules::claim::decide` applies them, as the real store
//! does) over in-memory state, idempotent by claim id, signing leases with a
//! fixed key.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use ed25519_dalek::SigningKey;
use flex_protocol::api::{
    AssignmentMode, ChargeModel, ClaimRequest, ClaimResponse, DefaultAssignments, Denial, Grant,
    Notice, Policy, RefundResponse, SessionRecord, Source, Window,
};
use flex_protocol::lease::{LeaseBody, LeaseSigner, LeaseVerifier};
use flex_protocol::ErrorCode;
use flex_server::rules::claim::{self, Decision, ProductFact, UserFacts, WindowFact};
use flex_server::rules::{windows, Invalid};

use super::DEVICE;
use crate::core::default_policy;

/// One charge the server made.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeCharge {
    pub claim_id: String,
    pub user: String,
    pub product: String,
    pub tokens: u64,
    pub renewal: bool,
    /// The window it paid for (none for a per-result job).
    pub window: Option<String>,
}

/// The entitlement server's claim rules (R4–R6), idempotent by claim id.
pub struct FakeServer {
    signer: LeaseSigner,
    pub balance: u64,
    pub rates: HashMap<String, ChargeModel>,
    pub subscriptions: HashSet<(String, String)>,
    /// Users not on Flex (every other user is, with every product allowed).
    pub not_on_flex: HashSet<String>,
    pub policy: Policy,
    /// Every window granted, oldest first.
    windows: Vec<WindowFact>,
    answers: HashMap<String, (ClaimRequest, ClaimResponse)>,
    pub charges: Vec<FakeCharge>,
    /// Every claim received, retries included.
    pub received: Vec<ClaimRequest>,
    /// Notices the next heartbeat delivers.
    pub notices: Vec<Notice>,
    /// Refund answers by window id: a repeat gets the first answer.
    pub refunds: HashMap<String, Result<RefundResponse, String>>,
    /// Every refund request received, retries included.
    pub refund_requests: Vec<String>,
    /// (window id, when) of every grant of a window to a launch.
    window_grants: Vec<(String, DateTime<Utc>)>,
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
            rates: rates.iter().map(|(p, c)| (p.to_string(), *c)).collect(),
            subscriptions: HashSet::new(),
            not_on_flex: HashSet::new(),
            policy: default_policy(),
            windows: Vec::new(),
            answers: HashMap::new(),
            charges: Vec::new(),
            received: Vec::new(),
            notices: Vec::new(),
            refunds: HashMap::new(),
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
        let mut ids: Vec<&String> = self.rates.keys().collect();
        ids.sort();
        ids.into_iter()
            .map(|id| flex_protocol::api::Product {
                id: id.clone(),
                name: id.clone(),
                charge: self.rates[id],
                executables: Default::default(),
                sample: false,
            })
            .collect()
    }

    /// The newest window the server opened for (user, product).
    pub fn window_of(&self, user: &flex_protocol::Email, product: &str) -> Option<Window> {
        self.windows
            .iter()
            .rev()
            .find(|w| w.user == user.as_str() && w.product == product)
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
            Err(invalid) => return deny(ErrorCode::InvalidRequest, &invalid.message, None),
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
                    id: format!("w{}", self.next_window),
                    user: req.user.to_string(),
                    product: req.product.clone(),
                    source: window.source,
                    start: window.start,
                    end: window.end,
                };
                self.next_window += 1;
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

    /// R13, as the server decides it: refunds the window's charge unless a
    /// record shows a process of (user, product) running at start + grace.
    pub fn refund(
        &mut self,
        window_id: &str,
        sessions: &[SessionRecord],
        now: DateTime<Utc>,
    ) -> Result<RefundResponse, String> {
        self.refund_requests.push(window_id.to_string());
        if let Some(answer) = self.refunds.get(window_id) {
            return answer.clone();
        }
        let grace = chrono::Duration::seconds(self.policy.short_use_grace_secs as i64);
        let key = self
            .windows
            .iter()
            .position(|w| w.id == window_id)
            .map(|i| (i, self.windows[i].clone()));
        let answer = match key {
            None => Err(format!("window {window_id} is not this device's")),
            Some(_) if grace.is_zero() => Err("refunds are off".into()),
            Some((_, w)) if now < w.start + grace => Err("too early".into()),
            Some((k, w)) => {
                let point = w.start + grace;
                let running = sessions
                    .iter()
                    .any(|s| s.started_at <= point && s.ended_at.is_none_or(|e| e > point));
                // A launch granted this window after the grace point used it.
                let used = self
                    .window_grants
                    .iter()
                    .any(|(id, at)| id == window_id && *at >= point);
                if used {
                    Err(format!(
                        "window {window_id} was granted to a launch after {point}"
                    ))
                } else if running {
                    Err(format!("a process was running at {point}"))
                } else {
                    let tokens: u64 = self
                        .charges
                        .iter()
                        .filter(|c| c.window.as_deref() == Some(window_id))
                        .map(|c| c.tokens)
                        .sum();
                    self.balance += tokens;
                    // A refunded window no longer counts as open.
                    self.windows.remove(k);
                    Ok(RefundResponse {
                        window_id: window_id.to_string(),
                        refunded_tokens: tokens,
                        balance: self.balance,
                    })
                }
            }
        };
        self.refunds.insert(window_id.to_string(), answer.clone());
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
    type Error = Invalid;

    fn product(&self, id: &str) -> Option<ProductFact<'_>> {
        self.rates
            .get_key_value(id)
            .map(|(name, charge)| ProductFact {
                name,
                charge: *charge,
            })
    }

    fn window_len(&self) -> chrono::Duration {
        chrono::Duration::seconds(self.policy.window_secs as i64)
    }

    fn window(&mut self, id: &str) -> Result<Option<WindowFact>, Invalid> {
        Ok(self.windows.iter().find(|w| w.id == id).cloned())
    }

    fn covering(
        &mut self,
        user: &str,
        product: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Option<WindowFact>, Invalid> {
        Ok(self
            .windows
            .iter()
            .filter(|w| w.user == user && w.product == product)
            .filter(|w| windows::overlaps(w.start, w.end, from, to))
            .min_by_key(|w| w.start)
            .cloned())
    }

    fn user(&mut self, user: &str, product: &str) -> Result<UserFacts, Invalid> {
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
