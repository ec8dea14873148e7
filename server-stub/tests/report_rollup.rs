//! The usage rollup stays exact: on a random ledger written through the real
//! claim path (launches, renewals claimed late, per-result jobs, subscription
//! windows, refunds of short runs; 24-hour windows and short ones, several a
//! day) in a zone with DST or a half-hour offset, folded at random moments,
//! every report and the recommendations equal what an independent model
//! computes from the raw ledger (`GET /v1/admin/charges`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chrono::{Datelike, Duration, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use flex_protocol::api::{
    ChargeModel, ClaimRequest, ClaimResponse, NewSubscription, NewUser, RefundRequest, Source,
};
use flex_protocol::reports::{
    EstimateRequest, ReportBy, UsagePeriod, UsageReport, UsageRow, WeekUsage,
};
use flex_server::clock::{Clock, TestClock};
use flex_server::config::PolicyConfig;
use flex_server::rates::RateSheet;
use flex_server::rules::calendar::Period;
use flex_server::rules::estimate::{self, PastUse};
use flex_server::store::testing::{backends, TestBackend};
use flex_server::store::{Store, StoreError};
use proptest::prelude::*;

const USERS: usize = 3;
const PRODUCTS: [&str; 3] = ["autocad", "revit", "fusion"];

#[derive(Debug, Clone)]
enum Op {
    /// Minutes.
    Advance(i64),
    Launch(usize, usize),
    /// Renews the pair's latest window, claimed this many minutes after its end.
    Renew(usize, usize, i64),
    Job(usize, u64),
    /// Asks for the pair's latest window back (refused when it was used or
    /// is too young; the ledger says which).
    Refund(usize, usize),
    Fold,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1i64..3000).prop_map(Op::Advance),
        4 => (0..USERS, 0..PRODUCTS.len()).prop_map(|(u, p)| Op::Launch(u, p)),
        2 => (0..USERS, 0..PRODUCTS.len(), 0i64..90).prop_map(|(u, p, m)| Op::Renew(u, p, m)),
        1 => (0..USERS, 1u64..200).prop_map(|(u, n)| Op::Job(u, n)),
        2 => (0..USERS, 0..PRODUCTS.len()).prop_map(|(u, p)| Op::Refund(u, p)),
        1 => Just(Op::Fold),
    ]
}

/// The reports computed straight from the ledger: per (user, product), the
/// local start dates of its windows and the tokens per local charge date,
/// less what a refund gave back. A refunded window is still a usage day, but
/// not one paid with tokens.
#[derive(Default)]
struct Model {
    days: BTreeMap<(String, String), BTreeSet<NaiveDate>>,
    /// The days of windows paid with tokens.
    paid: BTreeMap<(String, String), BTreeSet<NaiveDate>>,
    tokens: BTreeMap<(String, String), BTreeMap<NaiveDate, u64>>,
}

fn monday(d: NaiveDate) -> NaiveDate {
    d - Duration::days(d.weekday().num_days_from_monday() as i64)
}

impl Model {
    fn from_ledger(store: &Store, tz: Tz) -> Model {
        let mut m = Model::default();
        for c in store.charges(&Default::default()).unwrap() {
            let pair = (c.user.clone(), c.product.to_string());
            if let Some(w) = &c.window {
                let day = w.start.with_timezone(&tz).date_naive();
                m.days.entry(pair.clone()).or_default().insert(day);
                if c.source == Source::Tokens && c.refunded_at.is_none() {
                    m.paid.entry(pair.clone()).or_default().insert(day);
                }
            }
            let day = c.created_at.with_timezone(&tz).date_naive();
            *m.tokens.entry(pair).or_default().entry(day).or_default() +=
                c.tokens - c.refunded_tokens;
        }
        m
    }

    /// (usage days, tokens) per week of the pair inside the period.
    fn weeks(&self, pair: &(String, String), p: Period) -> BTreeMap<NaiveDate, (u64, u64)> {
        let inside = |d: &&NaiveDate| **d >= p.from && **d <= p.to;
        let mut w: BTreeMap<NaiveDate, (u64, u64)> = BTreeMap::new();
        for d in self.days.get(pair).into_iter().flatten().filter(inside) {
            w.entry(monday(*d)).or_default().0 += 1;
        }
        for (d, t) in self.tokens.get(pair).into_iter().flatten() {
            if inside(&d) && *t > 0 {
                w.entry(monday(*d)).or_default().1 += t;
            }
        }
        w.retain(|_, (d, t)| *d > 0 || *t > 0);
        w
    }

    fn report(&self, by: ReportBy, p: Period, timezone: &str) -> UsageReport {
        let pairs: BTreeSet<&(String, String)> =
            self.days.keys().chain(self.tokens.keys()).collect();
        // key → (tokens, usage days, others, weeks)
        type Acc = (u64, u64, u64, BTreeMap<NaiveDate, (u64, u64)>);
        let mut rows: BTreeMap<String, Acc> = BTreeMap::new();
        for pair in pairs {
            let weeks = self.weeks(pair, p);
            if weeks.is_empty() {
                continue;
            }
            let key = match by {
                ReportBy::User => pair.0.clone(),
                ReportBy::Product => pair.1.clone(),
            };
            let row = rows.entry(key).or_default();
            row.2 += 1;
            for (w, (d, t)) in weeks {
                row.0 += t;
                row.1 += d;
                let cell = row.3.entry(w).or_default();
                cell.0 += t;
                cell.1 += d;
            }
        }
        let mut rows: Vec<UsageRow> = rows
            .into_iter()
            .map(|(key, (tokens, usage_days, others, weeks))| UsageRow {
                key,
                tokens,
                usage_days,
                users: (by == ReportBy::Product).then_some(others),
                products: (by == ReportBy::User).then_some(others),
                weeks: weeks
                    .into_iter()
                    .map(|(week_start, (tokens, usage_days))| WeekUsage {
                        week_start,
                        tokens,
                        usage_days,
                    })
                    .collect(),
            })
            .collect();
        rows.sort_by(|a, b| b.tokens.cmp(&a.tokens).then_with(|| a.key.cmp(&b.key)));
        UsageReport {
            from: p.from,
            to: p.to,
            timezone: timezone.into(),
            by,
            total_tokens: rows.iter().map(|r| r.tokens).sum(),
            rows,
        }
    }
}

fn run(
    backend: &TestBackend,
    zone: &str,
    window_hours: u64,
    ops: Vec<Op>,
    periods: Vec<(i64, i64)>,
) -> Result<(), TestCaseError> {
    let tz: Tz = zone.parse().unwrap();
    // Starts near a DST change in both hemispheres' zones.
    let start = Utc.with_ymd_and_hms(2026, 3, 26, 20, 0, 0).unwrap();
    let clock = TestClock::new(start);
    let policy = PolicyConfig {
        timezone: zone.into(),
        window: std::time::Duration::from_secs(window_hours * 3600),
        ..PolicyConfig::default()
    };
    let store = backend.open(Arc::new(clock.clone()), policy, RateSheet::sample());
    let users: Vec<String> = (0..USERS).map(|i| format!("u{i}@example.com")).collect();
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
    // u0 holds a Revit subscription: windows of 0 tokens that still count.
    store
        .add_subscription(NewSubscription {
            email: flex_protocol::Email::parse(&users[0]).unwrap(),
            product: "revit".parse().unwrap(),
        })
        .unwrap();
    store.buy_tokens(10_000).unwrap();

    let mut latest: BTreeMap<(usize, usize), (flex_protocol::WindowId, chrono::DateTime<Utc>)> =
        BTreeMap::new();
    let mut n = 0;
    for op in ops {
        let (u, product, results, renews) = match op {
            Op::Advance(m) => {
                clock.advance(Duration::minutes(m));
                continue;
            }
            Op::Fold => {
                store.fold_usage().unwrap();
                continue;
            }
            Op::Refund(u, p) => {
                if let Some((id, _)) = latest.get(&(u, p)) {
                    store
                        .refund(
                            "dev",
                            &RefundRequest {
                                window_id: id.clone(),
                                user: flex_protocol::Email::parse(&users[u]).unwrap(),
                                product: PRODUCTS[p].parse().unwrap(),
                                sessions: vec![],
                            },
                        )
                        .unwrap();
                }
                continue;
            }
            Op::Launch(u, p) => (u, PRODUCTS[p], None, None),
            Op::Job(u, r) => (u, "recap-photo", Some(r), None),
            Op::Renew(u, p, late) => {
                let Some((id, end)) = latest.get(&(u, p)).cloned() else {
                    continue;
                };
                let at = end + Duration::minutes(late);
                if at > Clock::now(&clock) {
                    clock.set(at);
                }
                (u, PRODUCTS[p], None, Some(id))
            }
        };
        n += 1;
        let req = ClaimRequest {
            claim_id: format!("c{n}").parse().unwrap(),
            user: flex_protocol::Email::parse(&users[u]).unwrap(),
            product: product.parse().unwrap(),
            version: None,
            results,
            renews,
        };
        let out = match store.claim("dev", &req) {
            Ok(out) => out,
            // A refunded window cannot be renewed.
            Err(StoreError::Conflict(m)) if req.renews.is_some() => {
                prop_assert!(m.contains("refunded"), "{}", m);
                continue;
            }
            Err(e) => panic!("claim: {e}"),
        };
        if let ClaimResponse::Granted(g) = serde_json::from_str(&out.body).unwrap() {
            if let (Some(w), Some(p)) = (g.window, PRODUCTS.iter().position(|p| *p == product)) {
                latest.insert((u, p), (w.id, w.end));
            }
        }
    }

    let model = Model::from_ledger(&store, tz);
    let first = start.with_timezone(&tz).date_naive();
    for (offset, len) in periods {
        let from = first + Duration::days(offset);
        let period = Period {
            from,
            to: from + Duration::days(len),
        };
        for by in [ReportBy::User, ReportBy::Product] {
            let got = store.usage_report(by, period).unwrap();
            prop_assert_eq!(got, model.report(by, period, zone), "{:?} {:?}", by, period);
        }
        // The estimator from usage counts only days paid with tokens, of daily products.
        let charge = |p: &str| store.rates().get(p).map(|p| p.charge);
        let past: Vec<PastUse> = model
            .paid
            .iter()
            .filter(|((_, product), _)| matches!(charge(product), Some(ChargeModel::Daily { .. })))
            .map(|((user, product), days)| PastUse {
                user: user.clone(),
                product: product.parse().unwrap(),
                usage_days: days
                    .iter()
                    .filter(|d| **d >= period.from && **d <= period.to)
                    .count() as u64,
            })
            .collect();
        let rows = estimate::rows_from_usage(&past, period.months());
        let got = store.estimate(&EstimateRequest {
            months: 2,
            rows: None,
            from_usage: Some(UsagePeriod {
                from: period.from,
                to: period.to,
            }),
        });
        match got {
            Ok(got) => prop_assert_eq!(
                got,
                estimate::estimate(2, &rows, charge, &store.policy().pack_sizes).unwrap()
            ),
            Err(e) => prop_assert!(rows.is_empty(), "{e}"),
        }
    }
    // The recommendations of each month the ledger touches.
    for month in ["2026-03", "2026-04", "2026-05"] {
        let got = store.recommendations(month).unwrap();
        let p = Period::month(month).unwrap();
        let usage: Vec<flex_server::rules::recommendations::PairUsage> = model
            .days
            .keys()
            .chain(model.tokens.keys())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .filter_map(|pair| {
                let weeks = model.weeks(pair, p);
                let days: u64 = weeks.values().map(|w| w.0).sum();
                let tokens: u64 = weeks.values().map(|w| w.1).sum();
                (days > 0 || tokens > 0).then(|| flex_server::rules::recommendations::PairUsage {
                    user: pair.0.clone(),
                    product: pair.1.parse().unwrap(),
                    usage_days: days,
                    tokens,
                })
            })
            .collect();
        let subs = vec![(users[0].clone(), "revit".parse().unwrap())];
        let expected = flex_server::rules::recommendations::recommend(month, &usage, &subs, |p| {
            store.rates().get(p).map(|p| p.charge)
        });
        prop_assert_eq!(got.recommendations, expected, "{}", month);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn reports_from_the_rollup_equal_reports_from_the_ledger(
        zone in prop::sample::select(vec!["Europe/Paris", "America/St_Johns", "Pacific/Auckland", "UTC"]),
        // Short windows put several windows of a pair on one day.
        window_hours in prop::sample::select(vec![24u64, 7]),
        ops in prop::collection::vec(op(), 1..120),
        periods in prop::collection::vec((-3i64..60, 0i64..45), 1..4),
    ) {
        for backend in backends() {
            run(&backend, zone, window_hours, ops.clone(), periods.clone())?;
        }
    }
}
