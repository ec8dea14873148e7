//! The invariants, checked after every step.
//!
//! * **charged once**: in the server's ledger (`Store::charges`) every claim
//!   id appears at most once, every window is charged at most once, and the
//!   charged windows of one (user, product) never overlap; checked for the
//!   pair after every claim the server handles.
//! * **refunded once**: no charge is refunded twice nor more than it took.
//! * **balance**: the server's balance equals the tokens bought minus the
//!   ledger's charges plus its refunds (it is unsigned, so "never negative"
//!   is this equation holding); checked after every claim and purchase.
//! * **covered**: a product process is covered by a window of its user and
//!   product (as the agent's journal holds it) or gone within
//!   [`CLAIM_TIMEOUT`] + `close_grace` + one tick of agent time (time the
//!   agent is up and its machine awake).
//! * **offline close**: a close the agent announced as an offline close
//!   starts no earlier than the last server answer it got plus the server's
//!   `flex_offline_limit`; and a licensed process still running when that
//!   limit is more than one tick past (counted from when the agent was last
//!   able to act) has been asked to close.
//! * **signed leases**: every window the agent journals carries a lease that
//!   verifies with the server's key and is, field for field, a window the
//!   server granted (tampered answers must be refused).
//! * **rollup**: at the end, the usage report by product equals a model
//!   computed from the raw ledger (tokens and usage days per product).
//! * **charged for use**: at the end, every window that still costs tokens
//!   overlaps a run of its user and product on some device, give or take
//!   [`USE_SLACK`] (a late claim, a renewal asked for as the run ended).
//!   Windows of the last [`USE_SETTLE`] are left out: their refunds may be
//!   still under way.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use flex_agent::core::{Persist, CLAIM_TIMEOUT};
use flex_protocol::api::{LeaseKey, Source, Window};
use flex_protocol::lease::{LeaseVerifier, SignedLease};
use flex_protocol::reports::ReportBy;
use flex_protocol::Email;
use flex_server::config::PolicyConfig;
use flex_server::rules::calendar::Period;
use flex_server::store::{ChargeFilter, Store};

use crate::world::Agent;

/// The driver's poll interval (the daemon's default `poll_interval`): the
/// "one tick" of the bounds.
pub const TICK: chrono::Duration = chrono::Duration::seconds(1);

/// How long the core waits for the contact attempt it makes before an
/// offline warning or close (`CHECK_WAIT` in `agent/src/core/contact.rs`):
/// "never close while the server is reachable" lets an offline close come
/// this much after the limit when the attempt hangs.
pub const CHECK_WAIT: chrono::Duration = chrono::Duration::seconds(60);

/// How far a charged window may lie from every run of its product and still
/// count as used: a launch's claim may reach the server this late (retries,
/// a partition shorter than the close bound), and a run closed in the
/// window's first minutes is refunded rather than left uncharged.
pub const USE_SLACK: chrono::Duration = chrono::Duration::hours(1);

/// Windows that started this close to the end of a run are not checked for
/// use: the refund of a short one may not have been sent yet.
pub const USE_SETTLE: chrono::Duration = chrono::Duration::days(2);

/// A product run as the simulated machine saw it, in true time.
#[derive(Debug, Clone)]
pub struct Run {
    pub user: String,
    pub product: flex_protocol::ProductId,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

/// A window the server granted, as it answered.
#[derive(Debug, Clone)]
pub struct Grant {
    pub window: Window,
    pub user: String,
    pub product: flex_protocol::ProductId,
    pub lease: SignedLease,
}

type Found = (&'static str, String);

pub(crate) struct Checker {
    key: LeaseKey,
    start: DateTime<Utc>,
    bought: u64,
    /// Tokens charged per (user, product), as the ledger last showed.
    charged: BTreeMap<(String, String), i64>,
    /// Windows granted by id, with every lease signed for them (one per
    /// grant: devices and times differ).
    grants: BTreeMap<flex_protocol::WindowId, (Grant, Vec<SignedLease>)>,
    last_t: DateTime<Utc>,
    found: Option<Found>,
}

impl Checker {
    pub fn new(key: LeaseKey, start: DateTime<Utc>) -> Checker {
        Checker {
            key,
            start,
            bought: 0,
            charged: BTreeMap::new(),
            grants: BTreeMap::new(),
            last_t: start,
            found: None,
        }
    }

    fn fail(&mut self, invariant: &'static str, detail: String) {
        if self.found.is_none() {
            self.found = Some((invariant, detail));
        }
    }

    pub fn take(&mut self) -> Option<Found> {
        self.found.take()
    }

    pub fn bought(&mut self, tokens: u64) {
        self.bought += tokens;
    }

    pub fn granted(&mut self, g: Grant) {
        let lease = g.lease.clone();
        self.grants
            .entry(g.window.id.clone())
            .or_insert_with(|| (g, Vec::new()))
            .1
            .push(lease);
    }

    pub fn same_key(&mut self, key: &LeaseKey) {
        if *key != self.key {
            self.fail(
                "signed leases",
                "the reopened store signs with another key".into(),
            );
        }
    }

    /// Counts the time each uncovered process ran while its agent could act,
    /// from the last step to `t` (before the step at `t` changes anything).
    pub fn account_time(&mut self, agents: &mut [Agent], t: DateTime<Utc>) {
        let dt = t - self.last_t;
        self.last_t = t;
        for a in agents.iter_mut() {
            if !a.up || a.asleep {
                continue;
            }
            for p in a.procs.values_mut() {
                if p.alive && !p.covered {
                    p.uncovered_for += dt;
                }
            }
        }
    }

    /// A journal write of the agent: windows must be the server's.
    pub fn persisted(
        &mut self,
        agent: &mut Agent,
        p: &Persist,
        verifier: &LeaseVerifier,
        _t: DateTime<Utc>,
    ) {
        match p {
            Persist::Window(h) => {
                if let Err(e) = verifier.verify(&h.lease) {
                    self.fail(
                        "signed leases",
                        format!(
                            "{} journaled window {} with a lease the server did not sign: {e}",
                            agent.device, h.window.id
                        ),
                    );
                }
                let same = self.grants.get(&h.window.id).is_some_and(|(g, leases)| {
                    g.window == h.window
                        && g.user == h.user.as_str()
                        && g.product == h.product
                        && leases.contains(&h.lease)
                });
                if !same {
                    self.fail(
                        "signed leases",
                        format!(
                            "{} journaled window {} [{} – {}) of {} {} that the server never granted",
                            agent.device, h.window.id, h.window.start, h.window.end, h.user, h.product,
                        ),
                    );
                }
                agent
                    .held
                    .insert((h.user.to_string(), h.product.to_string()), h.clone());
            }
            Persist::DropWindow { user, product } => {
                agent.held.remove(&(user.to_string(), product.to_string()));
            }
            _ => {}
        }
    }

    /// The graceful step of a close of (user, product) starts at `t`.
    pub fn close_started(
        &mut self,
        agent: &Agent,
        key: &(String, flex_protocol::ProductId),
        t: DateTime<Utc>,
        policy: &PolicyConfig,
    ) {
        let Some(announced) = agent.offline_close.get(key) else {
            return;
        };
        let Some(contact) = agent.last_contact else {
            return;
        };
        if *announced < contact {
            return;
        }
        let limit = contact + chrono::Duration::from_std(policy.flex_offline_limit).unwrap();
        if t < limit {
            self.fail(
                "offline close",
                format!(
                    "{} closed {} of {} as offline at {t}, before the limit {limit} (last contact {contact})",
                    agent.device, key.1, key.0
                ),
            );
        }
    }

    /// After every claim the server handled: the pair's ledger, and the balance.
    pub fn after_claim(&mut self, store: &Store, user: &Email, product: &str) {
        let charges = store
            .charges(&ChargeFilter {
                user: Some(user.clone()),
                product: Some(product.to_string()),
            })
            .expect("read the ledger");
        let mut ids = BTreeSet::new();
        let mut windows: BTreeMap<&str, &Window> = BTreeMap::new();
        let mut rows = BTreeSet::new();
        for c in &charges {
            // The ledger lists a charge once per refund of it.
            if !rows.insert(c.id) {
                self.fail(
                    "refunded once",
                    format!(
                        "charge {} (window {}) of {user} {product} refunded more than once",
                        c.id,
                        c.window.as_ref().map_or("-", |w| w.id.as_str())
                    ),
                );
                continue;
            }
            if c.refunded_tokens > c.tokens {
                self.fail(
                    "refunded once",
                    format!(
                        "charge {} refunded {} of {} tokens",
                        c.id, c.refunded_tokens, c.tokens
                    ),
                );
            }
            if !ids.insert(c.claim_id.as_str()) {
                self.fail(
                    "charged once",
                    format!("claim id {} charged twice for {user} {product}", c.claim_id),
                );
            }
            if let (Some(w), Source::Tokens) = (&c.window, c.source) {
                if c.tokens > c.refunded_tokens && windows.insert(w.id.as_str(), w).is_some() {
                    self.fail(
                        "charged once",
                        format!("window {} of {user} {product} charged twice", w.id),
                    );
                }
            }
        }
        let mut spans: Vec<&&Window> = windows.values().collect();
        spans.sort_by_key(|w| w.start);
        for pair in spans.windows(2) {
            if pair[1].start < pair[0].end {
                self.fail(
                    "charged once",
                    format!(
                        "{user} {product}: windows {} and {} overlap and both were charged",
                        pair[0].id, pair[1].id
                    ),
                );
            }
        }
        let net: i64 = charges
            .iter()
            .map(|c| c.tokens as i64 - c.refunded_tokens as i64)
            .sum();
        self.charged
            .insert((user.to_string(), product.to_string()), net);
        self.check_balance(store);
    }

    pub fn check_balance(&mut self, store: &Store) {
        let balance = store.balance().expect("read the balance").balance;
        let charged: i64 = self.charged.values().sum();
        let expected = self.bought as i64 - charged;
        if expected != balance as i64 {
            self.fail(
                "balance",
                format!(
                    "balance {balance}, but bought {} − charged {charged} (net of refunds) = {expected}",
                    self.bought
                ),
            );
        }
    }

    /// The checks of states that last: coverage and late offline closes.
    pub(crate) fn after_step(
        &mut self,
        agents: &mut [Agent],
        policy: &PolicyConfig,
        t: DateTime<Utc>,
    ) -> Option<Found> {
        let bound = CLAIM_TIMEOUT + chrono::Duration::from_std(policy.close_grace).unwrap() + TICK;
        let limit = chrono::Duration::from_std(policy.flex_offline_limit).unwrap();
        for a in agents.iter_mut() {
            // Covered as the enforcement states say: licensed by a held
            // window (which may have ended with its renewal under way),
            // paused, or closing a licensed run; asked only while a process
            // waits to be.
            let waiting = a.procs.values().any(|p| p.alive && !p.covered);
            let licensed = if waiting {
                a.licensed_pids()
            } else {
                BTreeSet::new()
            };
            for (pid, p) in a.procs.iter_mut() {
                if !p.alive {
                    continue;
                }
                if !p.covered {
                    if licensed.contains(pid) {
                        p.covered = true;
                    } else if p.uncovered_for > bound {
                        return Some((
                            "covered",
                            format!(
                                "{} pid {pid} ({} of {}) ran {}s uncovered, over the bound {}s",
                                a.device,
                                p.product,
                                a.users[p.user],
                                p.uncovered_for.num_seconds(),
                                bound.num_seconds()
                            ),
                        ));
                    }
                }
                if !p.covered || !a.up || a.asleep {
                    continue;
                }
                let Some(contact) = a.last_contact else {
                    continue;
                };
                let due = (contact + limit).max(a.active_since) + CHECK_WAIT + TICK;
                let asked = p.close_asked.is_some_and(|at| at >= contact);
                if t > due && !asked {
                    return Some((
                        "offline close",
                        format!(
                            "{} pid {pid} ({} of {}) still runs unclosed at {t}, the offline limit {} passed (last contact {contact})",
                            a.device,
                            p.product,
                            a.users[p.user],
                            contact + limit
                        ),
                    ));
                }
            }
        }
        None
    }

    /// At the end of a run: the ledger's equations once more, and the
    /// rollup against a model of the raw ledger.
    pub fn at_end(&mut self, store: &Store, runs: &[Run], t: DateTime<Utc>) -> Option<Found> {
        self.check_balance(store);
        if let Some(f) = self.take() {
            return Some(f);
        }
        for c in store.charges(&ChargeFilter::default()).expect("ledger") {
            let Some(w) = &c.window else { continue };
            if c.tokens == 0 || c.refunded_tokens > 0 || w.start > t - USE_SETTLE {
                continue;
            }
            let used = runs.iter().any(|r| {
                r.user == c.user
                    && r.product == c.product
                    && r.from <= w.end
                    && r.to + USE_SLACK >= w.start
            });
            if !used {
                return Some((
                    "charged for use",
                    format!(
                        "claim {} charged {} tokens to {} for {} from {} to {}, and no run of it came near",
                        c.claim_id, c.tokens, c.user, c.product, w.start, w.end
                    ),
                ));
            }
        }
        store.fold_usage().expect("fold usage");
        let period = Period {
            from: self.start.date_naive(),
            to: t.date_naive(),
        };
        let report = store
            .usage_report(ReportBy::Product, period)
            .expect("usage report");
        // The model: per product, tokens charged in the period and the days
        // (per user) its windows started on. The tenant's zone is UTC.
        let mut tokens: BTreeMap<String, u64> = BTreeMap::new();
        let mut days: BTreeMap<String, BTreeSet<(String, chrono::NaiveDate)>> = BTreeMap::new();
        for c in store.charges(&ChargeFilter::default()).expect("ledger") {
            let inside = |d: chrono::NaiveDate| d >= period.from && d <= period.to;
            if inside(c.created_at.date_naive()) {
                *tokens.entry(c.product.to_string()).or_default() +=
                    c.tokens.saturating_sub(c.refunded_tokens);
            }
            if let Some(w) = &c.window {
                let d = w.start.date_naive();
                if inside(d) {
                    days.entry(c.product.to_string())
                        .or_default()
                        .insert((c.user.clone(), d));
                }
            }
        }
        let mut model: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for (p, n) in tokens {
            model.entry(p).or_default().0 = n;
        }
        for (p, d) in days {
            model.entry(p).or_default().1 = d.len() as u64;
        }
        model.retain(|_, (t, d)| *t > 0 || *d > 0);
        let got: BTreeMap<String, (u64, u64)> = report
            .rows
            .iter()
            .map(|r| (r.key.clone(), (r.tokens, r.usage_days)))
            .collect();
        if got != model {
            return Some((
                "rollup",
                format!("usage report by product {got:?} ≠ model of the ledger {model:?}"),
            ));
        }
        None
    }
}
