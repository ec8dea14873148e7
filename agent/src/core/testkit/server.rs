//! The fake entitlement server: the claim rules of R4–R6, idempotent by claim id,
//! signing leases with a fixed key.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use ed25519_dalek::SigningKey;
use flex_protocol::api::{
    ChargeModel, ClaimRequest, ClaimResponse, Denial, Grant, Notice, Policy, Source, Window,
};
use flex_protocol::lease::{LeaseBody, LeaseSigner, LeaseVerifier};
use flex_protocol::ErrorCode;

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
}

/// The entitlement server's claim rules (R4–R6), idempotent by claim id.
pub struct FakeServer {
    signer: LeaseSigner,
    pub balance: u64,
    pub rates: HashMap<String, ChargeModel>,
    pub subscriptions: HashSet<(String, String)>,
    pub policy: Policy,
    windows: HashMap<(String, String), Window>,
    answers: HashMap<String, (ClaimRequest, ClaimResponse)>,
    pub charges: Vec<FakeCharge>,
    /// Every claim received, retries included.
    pub received: Vec<ClaimRequest>,
    /// Notices the next heartbeat delivers.
    pub notices: Vec<Notice>,
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
            policy: default_policy(),
            windows: HashMap::new(),
            answers: HashMap::new(),
            charges: Vec::new(),
            received: Vec::new(),
            notices: Vec::new(),
            next_window: 1,
        }
    }

    /// The server starts signing with a new key the agent never pinned (a
    /// re-keyed or replaced server).
    pub fn rotate_key(&mut self) {
        self.signer = LeaseSigner::new("k2", SigningKey::from_bytes(&[9; 32]));
    }

    pub fn verifier(&self) -> LeaseVerifier {
        LeaseVerifier::from_keys(&[self.signer.public_key()]).unwrap()
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

    fn decide(&mut self, req: &ClaimRequest, now: DateTime<Utc>) -> ClaimResponse {
        let Some(charge) = self.rates.get(&req.product).copied() else {
            return deny(ErrorCode::UnknownProduct, "no such product", None);
        };
        let key = (req.user.to_string(), req.product.clone());
        let source = if self.subscriptions.contains(&key) {
            Source::Subscription
        } else {
            Source::Tokens
        };
        if let Some(n) = req.results {
            let cost = charge.per_result_cost(n).unwrap_or(0);
            if !self.pay(req, cost, false) {
                return deny(
                    ErrorCode::OutOfTokens,
                    "balance too low",
                    Some(self.balance),
                );
            }
            return ClaimResponse::Granted(Grant {
                source,
                window: None,
                tokens_charged: cost,
                balance: self.balance,
                lease: None,
            });
        }
        let rate = match (source, charge) {
            (Source::Subscription, _) => 0,
            (_, ChargeModel::Daily { tokens }) => tokens,
            (_, ChargeModel::PerResult { .. }) => {
                return deny(ErrorCode::InvalidRequest, "per-result product", None)
            }
        };
        let day = chrono::Duration::seconds(self.policy.window_secs as i64);
        let current = self.windows.get(&key).cloned();
        let start = match (&req.renews, &current) {
            (Some(old), Some(cur)) if &cur.id == old => cur.end,
            // Renewing a window that was already renewed: the newer one stands.
            (Some(_), Some(cur)) => return self.grant(req, source, cur.clone(), 0, now),
            (None, Some(cur)) if cur.start <= now && now < cur.end => {
                return self.grant(req, source, cur.clone(), 0, now)
            }
            _ => now,
        };
        if !self.pay(req, rate, req.renews.is_some()) {
            return deny(
                ErrorCode::OutOfTokens,
                "balance too low",
                Some(self.balance),
            );
        }
        let window = Window {
            id: format!("w{}", self.next_window),
            start,
            end: start + day,
        };
        self.next_window += 1;
        self.windows.insert(key, window.clone());
        self.grant(req, source, window, rate, now)
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
        });
        true
    }

    fn grant(
        &self,
        req: &ClaimRequest,
        source: Source,
        window: Window,
        tokens: u64,
        now: DateTime<Utc>,
    ) -> ClaimResponse {
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

fn deny(reason: ErrorCode, message: &str, balance: Option<u64>) -> ClaimResponse {
    ClaimResponse::Denied(Denial {
        reason,
        message: message.into(),
        balance,
    })
}
