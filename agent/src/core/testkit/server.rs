//! The fake entitlement server: the server's own claim rules (R4–R6, from
//! `flex_server::rules`) over in-memory state, idempotent by claim id, signing
//! leases with a fixed key.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use ed25519_dalek::SigningKey;
use flex_protocol::api::{
    AssignmentMode, ChargeModel, ClaimRequest, ClaimResponse, DefaultAssignments, Denial, Grant,
    Notice, Policy, RefundResponse, SessionRecord, Source, Window,
};
use flex_protocol::lease::{LeaseBody, LeaseSigner, LeaseVerifier};
use flex_protocol::ErrorCode;
use flex_server::rules::{entitlement, per_result, windows};

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
    windows: HashMap<(String, String), Window>,
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
            windows: HashMap::new(),
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
    pub fn window_of(&self, user: &flex_protocol::Email, product: &str) -> Option<&Window> {
        self.windows.get(&(user.to_string(), product.to_string()))
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

    /// The server's own rules (`flex_server::rules`) over this fake's state:
    /// every user is on Flex with every product allowed, the balance is one lot.
    fn decide(&mut self, req: &ClaimRequest, now: DateTime<Utc>) -> ClaimResponse {
        let Some(charge) = self.rates.get(&req.product).copied() else {
            return deny(ErrorCode::UnknownProduct, "no such product", None);
        };
        let key = (req.user.to_string(), req.product.clone());
        let all = DefaultAssignments {
            mode: AssignmentMode::All,
            products: Vec::new(),
        };
        let facts = entitlement::Facts {
            known: true,
            flex_assigned: !self.not_on_flex.contains(&key.0),
            subscribed: self.subscriptions.contains(&key),
            defaults: &all,
        };
        let source = match entitlement::decide(&key.0, &key.1, &facts) {
            Ok(source) => source,
            Err(why) => return deny(ErrorCode::NotEntitled, &why, None),
        };
        if let Some(n) = req.results {
            let Some(cost) = per_result::job_cost(charge, n, source) else {
                return deny(
                    ErrorCode::InvalidRequest,
                    "results on a daily product",
                    None,
                );
            };
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
        let day = chrono::Duration::seconds(self.policy.window_secs as i64);
        let current = self.windows.get(&key).cloned();
        // The fake keeps only the newest window per (user, product); one that
        // was already renewed is the renewal's predecessor, ending at its start.
        let renews_end = match (&req.renews, &current) {
            (Some(old), Some(cur)) if &cur.id == old => Some(cur.end),
            (Some(_), Some(cur)) => Some(cur.start),
            _ => None,
        };
        let (start, end, kind) = windows::requested(now, renews_end, day);
        let (from, to) = windows::lookup(kind, now, start, end);
        if let Some(cur) = current.filter(|c| windows::overlaps(c.start, c.end, from, to)) {
            return self.grant(req, source, cur, 0, now);
        }
        let rate = windows::cost(source, charge);
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
            end,
        };
        self.next_window += 1;
        if let Some(c) = self
            .charges
            .last_mut()
            .filter(|c| c.claim_id == req.claim_id)
        {
            c.window = Some(window.id.clone());
        }
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
            .find(|(_, w)| w.id == window_id)
            .map(|(k, w)| (k.clone(), w.clone()));
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
                    self.windows.remove(&k);
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

fn deny(reason: ErrorCode, message: &str, balance: Option<u64>) -> ClaimResponse {
    ClaimResponse::Denied(Denial {
        reason,
        message: message.into(),
        balance,
    })
}
