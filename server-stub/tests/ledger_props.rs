//! Property tests of the token ledger through the real store (a SQLite file and
//! a PostgreSQL database, test clock): random purchases, clock moves and claims never make a lot negative,
//! never spend an expired lot, always spend the earliest-expiring lot first, and
//! the balance always equals purchases − charges − expired remainders.

use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use flex_protocol::api::{ClaimRequest, ClaimResponse, NewUser};
use flex_server::clock::TestClock;
use flex_server::config::PolicyConfig;
use flex_server::rates::RateSheet;
use flex_server::store::testing::{backends, TestBackend};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Buy(usize),
    Advance(i64),
    Launch(usize, &'static str),
    Job(usize, u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0usize..3).prop_map(Op::Buy),
        // Up to ~100 days, so lots expire within a run.
        (1i64..2400).prop_map(Op::Advance),
        (
            0usize..4,
            prop::sample::select(vec!["autocad", "revit", "fusion"])
        )
            .prop_map(|(u, p)| Op::Launch(u, p)),
        (0usize..4, 1u64..3000).prop_map(|(u, n)| Op::Job(u, n)),
    ]
}

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
    let users: Vec<String> = (0..4).map(|i| format!("u{i}@example.com")).collect();
    for u in &users {
        store
            .add_user(NewUser {
                email: u.clone(),
                first_name: "P".into(),
                last_name: "T".into(),
            })
            .unwrap();
        store.set_flex(u, true).unwrap();
    }
    let packs = [100u64, 500, 1000];
    let mut model: Vec<ModelLot> = Vec::new();
    let mut bought = 0u64;
    let mut charged = 0u64;
    let mut claim_no = 0;

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
            Op::Launch(u, p) => Some((
                None,
                ClaimRequest {
                    claim_id: String::new(),
                    user: flex_protocol::Email::parse(&users[u]).unwrap(),
                    product: p.into(),
                    version: None,
                    results: None,
                    renews: None,
                },
            )),
            Op::Job(u, n) => Some((
                Some(n.div_ceil(50)),
                ClaimRequest {
                    claim_id: String::new(),
                    user: flex_protocol::Email::parse(&users[u]).unwrap(),
                    product: "recap-photo".into(),
                    version: None,
                    results: Some(n),
                    renews: None,
                },
            )),
        };
        if let Some((job_cost, mut req)) = amount_and_req {
            claim_no += 1;
            req.claim_id = format!("c{claim_no}");
            let before = store.charges(&Default::default()).unwrap().len();
            let out = store.claim("dev", &req).unwrap();
            let resp: ClaimResponse = serde_json::from_str(&out.body).unwrap();
            let charges = store.charges(&Default::default()).unwrap();
            match resp {
                ClaimResponse::Granted(g) => {
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
        prop_assert_eq!(b.balance, bought - charged - expired_left);
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
