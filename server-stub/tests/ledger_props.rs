//! Property tests of the token ledger through the real store (a SQLite file and
//! a PostgreSQL database, test clock): random purchases, clock moves, claims and refunds of short runs
//! (R13) never make a lot negative, never spend an expired lot, always spend
//! the earliest-expiring lot first, never refund to an expired lot, refund a
//! window at most once (a repeat gets the first answer), and the balance
//! always equals purchases − charges + refunds − expired remainders.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use flex_protocol::api::{
    ClaimRequest, ClaimResponse, EnrollRequest, LotShare, NewEnrollmentToken, NewUser,
    RefundRequest, RefundResponse, SessionRecord, Source,
};
use flex_server::clock::TestClock;
use flex_server::config::PolicyConfig;
use flex_server::rates::RateSheet;
use flex_server::store::testing::{backends, TestBackend};
use proptest::prelude::*;

const PRODUCTS: [&str; 3] = ["autocad", "revit", "fusion"];

/// What the session record sent with a refund request says about the run
/// that opened the window.
#[derive(Debug, Clone, Copy)]
enum RunAtCut {
    /// No record sent.
    Unsaid,
    /// Closed a minute after the window's start.
    EndedBefore,
    /// Still running (no end).
    Running,
}

#[derive(Debug, Clone)]
enum Op {
    Buy(usize),
    /// Hours.
    Advance(i64),
    /// Minutes: around the 5-minute grace.
    Nudge(i64),
    /// Just past the expiry of the lot that expires next, so refunds of
    /// windows charged before it meet an expired lot.
    PastExpiry,
    Launch(usize, usize),
    Job(usize, u64),
    /// Asks for the latest window opened back.
    Refund(RunAtCut),
    /// Launches the (user, product) of the latest window opened again.
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0usize..3).prop_map(Op::Buy),
        // Up to ~100 days, so lots expire within a run.
        2 => (1i64..2400).prop_map(Op::Advance),
        2 => (1i64..8).prop_map(Op::Nudge),
        1 => Just(Op::PastExpiry),
        2 => (0usize..4, 0..PRODUCTS.len()).prop_map(|(u, p)| Op::Launch(u, p)),
        2 => (0usize..4, 1u64..3000).prop_map(|(u, n)| Op::Job(u, n)),
        3 => prop::sample::select(vec![RunAtCut::Unsaid, RunAtCut::EndedBefore, RunAtCut::Running])
            .prop_map(Op::Refund),
        2 => Just(Op::Reopen),
    ]
}

/// A window as the model sees it.
#[derive(Debug, Clone)]
struct ModelWindow {
    id: flex_protocol::WindowId,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    shares: Vec<LotShare>,
    /// When this (only) device was last answered with it.
    last_grant: DateTime<Utc>,
    /// The first answer kept for a repeat: status and body.
    answer: Option<(u16, String)>,
    refunded: Option<u64>,
}

/// A stored run: (user, product, started, ended).
type ModelRun = (usize, usize, DateTime<Utc>, Option<DateTime<Utc>>);

/// An independent model of the lots: (id, remaining, purchased, expires).
#[derive(Debug, Clone)]
struct ModelLot {
    id: i64,
    remaining: u64,
    purchased: DateTime<Utc>,
    expires: DateTime<Utc>,
}

fn expected_shares(model: &[ModelLot], amount: u64, now: DateTime<Utc>) -> Option<Vec<(i64, u64)>> {
    let mut live: Vec<&ModelLot> = model
        .iter()
        .filter(|l| now < l.expires && l.remaining > 0)
        .collect();
    if live.iter().map(|l| l.remaining).sum::<u64>() < amount {
        return None;
    }
    live.sort_by(|a, b| {
        a.expires
            .cmp(&b.expires)
            .then(a.remaining.cmp(&b.remaining))
            .then(a.purchased.cmp(&b.purchased))
            .then(a.id.cmp(&b.id))
    });
    let mut left = amount;
    let mut out = Vec::new();
    for l in live {
        if left == 0 {
            break;
        }
        let take = left.min(l.remaining);
        out.push((l.id, take));
        left -= take;
    }
    Some(out)
}

fn run(backend: &TestBackend, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let start = Utc.with_ymd_and_hms(2026, 1, 1, 9, 0, 0).unwrap();
    let clock = TestClock::new(start);
    let store = backend.open(
        Arc::new(clock.clone()),
        PolicyConfig::default(),
        RateSheet::sample(),
    );
    let token = store
        .create_enrollment_token(&NewEnrollmentToken::default())
        .unwrap()
        .token;
    let dev = store
        .enroll(&EnrollRequest {
            enrollment_token: token,
            hostname: "ws".into(),
            platform: None,
            agent_version: None,
            enrollment_request_id: None,
        })
        .unwrap()
        .device_id;
    let grace = Duration::minutes(5);
    let users: Vec<String> = (0..4).map(|i| format!("u{i}@example.com")).collect();
    for u in &users {
        let u = flex_protocol::Email::parse(u).unwrap();
        store
            .add_user(NewUser {
                email: u.clone(),
                first_name: "P".into(),
                last_name: "T".into(),
            })
            .unwrap();
        store.set_flex(&u, true).unwrap();
    }
    let packs = [100u64, 500, 1000];
    let mut model: Vec<ModelLot> = Vec::new();
    let mut bought = 0u64;
    let mut charged = 0u64;
    let mut refunded = 0u64;
    let mut claim_no = 0;
    // Per (user, product): its windows, latest last.
    let mut windows: HashMap<(usize, usize), Vec<ModelWindow>> = HashMap::new();
    let mut runs: Vec<ModelRun> = Vec::new();
    let mut latest: Option<(usize, usize)> = None;

    for op in ops {
        let now = clock.now_for_test();
        let amount_and_req = match op {
            Op::Buy(i) => {
                let lot = store.buy_tokens(packs[i]).unwrap();
                bought += packs[i];
                model.push(ModelLot {
                    id: lot.id,
                    remaining: lot.tokens,
                    purchased: lot.purchased_at,
                    expires: lot.expires_at,
                });
                None
            }
            Op::Advance(h) => {
                clock.advance(Duration::hours(h));
                None
            }
            Op::Nudge(m) => {
                clock.advance(Duration::minutes(m));
                None
            }
            Op::PastExpiry => {
                if let Some(next) = model.iter().map(|l| l.expires).filter(|e| *e > now).min() {
                    clock.set(next + Duration::seconds(1));
                }
                None
            }
            Op::Refund(said) => {
                let Some((u, p)) = latest else {
                    continue;
                };
                let w = windows
                    .get_mut(&(u, p))
                    .and_then(|ws| ws.last_mut())
                    .unwrap();
                let sessions = match said {
                    RunAtCut::Unsaid => vec![],
                    RunAtCut::EndedBefore | RunAtCut::Running => {
                        let ended = match said {
                            RunAtCut::Running => None,
                            _ => Some(w.start + Duration::minutes(1)),
                        };
                        runs.push((u, p, w.start, ended));
                        vec![SessionRecord {
                            id: format!("s{}", runs.len()).parse().unwrap(),
                            user: flex_protocol::Email::parse(&users[u]).unwrap(),
                            product: PRODUCTS[p].parse().unwrap(),
                            version: None,
                            source: Source::Tokens,
                            window_id: Some(w.id.clone()),
                            started_at: w.start,
                            ended_at: ended,
                        }]
                    }
                };
                let out = store
                    .refund(
                        &dev,
                        &RefundRequest {
                            window_id: w.id.clone(),
                            user: flex_protocol::Email::parse(&users[u]).unwrap(),
                            product: PRODUCTS[p].parse().unwrap(),
                            sessions,
                        },
                    )
                    .unwrap();
                let got = (out.status, out.body.clone());
                let cut = w.start + grace;
                let running = runs.iter().any(|&(ru, rp, from, to)| {
                    (ru, rp) == (u, p) && from <= cut && to.is_none_or(|t| t > cut)
                });
                if let Some(first) = &w.answer {
                    prop_assert_eq!(&got, first, "a repeat gets the first answer");
                } else if now < cut {
                    prop_assert_eq!(out.status, 409, "too early: {}", out.body);
                } else if w.last_grant >= cut || running {
                    prop_assert_eq!(out.status, 409, "used: {}", out.body);
                    w.answer = Some(got);
                } else {
                    prop_assert_eq!(out.status, 200, "refund: {}", out.body);
                    let back: Vec<&LotShare> = w
                        .shares
                        .iter()
                        .filter(|s| model.iter().any(|l| l.id == s.lot_id && now < l.expires))
                        .collect();
                    let tokens: u64 = back.iter().map(|s| s.tokens).sum();
                    let answer: RefundResponse = serde_json::from_str(&out.body).unwrap();
                    prop_assert_eq!(answer.refunded_tokens, tokens);
                    for s in back {
                        let l = model.iter_mut().find(|l| l.id == s.lot_id).unwrap();
                        l.remaining += s.tokens;
                    }
                    refunded += tokens;
                    w.refunded = Some(tokens);
                    w.answer = Some(got);
                }
                None
            }
            Op::Reopen | Op::Launch(..) => {
                let (u, p) = match op {
                    Op::Launch(u, p) => (u, p),
                    _ => match latest {
                        Some(pair) => pair,
                        None => continue,
                    },
                };
                Some((
                    None,
                    ClaimRequest {
                        claim_id: "pending".parse().unwrap(),
                        user: flex_protocol::Email::parse(&users[u]).unwrap(),
                        product: PRODUCTS[p].parse().unwrap(),
                        version: None,
                        results: None,
                        renews: None,
                    },
                ))
            }
            Op::Job(u, n) => Some((
                Some(n.div_ceil(50)),
                ClaimRequest {
                    claim_id: "pending".parse().unwrap(),
                    user: flex_protocol::Email::parse(&users[u]).unwrap(),
                    product: "recap-photo".parse().unwrap(),
                    version: None,
                    results: Some(n),
                    renews: None,
                },
            )),
        };
        if let Some((job_cost, mut req)) = amount_and_req {
            claim_no += 1;
            req.claim_id = format!("c{claim_no}").parse().unwrap();
            let before = store.charges(&Default::default()).unwrap().len();
            let out = store.claim(&dev, &req).unwrap();
            let resp: ClaimResponse = serde_json::from_str(&out.body).unwrap();
            let charges = store.charges(&Default::default()).unwrap();
            match resp {
                ClaimResponse::Granted(g) => {
                    if let Some(gw) = &g.window {
                        let u = users.iter().position(|u| *u == req.user.as_str()).unwrap();
                        let p = PRODUCTS.iter().position(|p| req.product == *p).unwrap();
                        let ws = windows.entry((u, p)).or_default();
                        // An open window covers the launch, unless it was refunded.
                        let open = ws
                            .iter()
                            .position(|w| w.refunded.is_none() && w.start <= now && now < w.end);
                        match open {
                            Some(i) => {
                                prop_assert_eq!(&gw.id, &ws[i].id, "covered by the open window");
                                prop_assert_eq!(g.tokens_charged, 0);
                                ws[i].last_grant = now;
                            }
                            None => {
                                prop_assert!(ws.iter().all(|w| w.id != gw.id), "a new window");
                                latest = Some((u, p));
                                ws.push(ModelWindow {
                                    id: gw.id.clone(),
                                    start: gw.start,
                                    end: gw.end,
                                    shares: charges.last().unwrap().lots.clone(),
                                    last_grant: now,
                                    answer: None,
                                    refunded: None,
                                });
                            }
                        }
                    }
                    if charges.len() > before {
                        let c = charges.last().unwrap();
                        let expected = expected_shares(&model, c.tokens, now)
                            .expect("a granted charge was affordable");
                        let got: Vec<(i64, u64)> =
                            c.lots.iter().map(|s| (s.lot_id, s.tokens)).collect();
                        prop_assert_eq!(&got, &expected, "R3 order at {}", now);
                        for (id, t) in got {
                            let l = model.iter_mut().find(|l| l.id == id).unwrap();
                            prop_assert!(now < l.expires, "spent expired lot {}", id);
                            l.remaining -= t;
                        }
                        charged += c.tokens;
                        prop_assert_eq!(g.tokens_charged, c.tokens);
                    } else {
                        prop_assert_eq!(g.tokens_charged, 0);
                    }
                    if let Some(cost) = job_cost {
                        prop_assert_eq!(g.tokens_charged, cost);
                    }
                }
                ClaimResponse::Denied(d) => {
                    prop_assert_eq!(charges.len(), before, "a denial charges nothing");
                    let bal: u64 = model
                        .iter()
                        .filter(|l| now < l.expires)
                        .map(|l| l.remaining)
                        .sum();
                    prop_assert_eq!(d.balance, Some(bal));
                }
            }
        }
        // Invariants after every step.
        let now = clock.now_for_test();
        let b = store.balance().unwrap();
        let expired_left: u64 = model
            .iter()
            .filter(|l| now >= l.expires)
            .map(|l| l.remaining)
            .sum();
        prop_assert_eq!(b.balance, bought - charged + refunded - expired_left);
        // Each window's refund shows on its charge, once.
        let listed: u64 = store
            .charges(&Default::default())
            .unwrap()
            .iter()
            .map(|c| c.refunded_tokens)
            .sum();
        prop_assert_eq!(listed, refunded);
        for lot in &b.lots {
            prop_assert!(lot.remaining <= lot.tokens);
            let m = model.iter().find(|l| l.id == lot.id).unwrap();
            prop_assert_eq!(lot.remaining, m.remaining);
        }
    }
    Ok(())
}

trait NowForTest {
    fn now_for_test(&self) -> DateTime<Utc>;
}

impl NowForTest for TestClock {
    fn now_for_test(&self) -> DateTime<Utc> {
        use flex_server::clock::Clock;
        self.now()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn ledger_invariants_hold(ops in prop::collection::vec(op(), 1..40)) {
        for backend in backends() {
            run(&backend, ops.clone())?;
        }
    }
}
