//! Reports on a year of a 5,000-user tenant (≈ 1 M charge windows), printed as
//! figures (DESIGN.md §5 style: nothing is asserted).
//!
//! The ledger is written straight into a fresh database (the claim path would
//! take hours of fsyncs), then the store answers, each timed over several runs:
//! the usage report by user for a month and for the year, by product for the
//! year, and the recommendations for a month. Target: p95 ≤ 200 ms each. The
//! one-time fold of the whole year into the usage rollup is timed apart.
//!
//! Run with `cargo bench -p flex-server --bench reports`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{NaiveDate, TimeZone, Utc};
use flex_protocol::reports::ReportBy;
use flex_server::clock::SystemClock;
use flex_server::config::PolicyConfig;
use flex_server::rates::RateSheet;
use flex_server::rules::calendar::Period;
use flex_server::store::Store;
use rusqlite::params;

const USERS: usize = 5_000;
const DAYS: i64 = 365;
const RUNS: usize = 15;

/// A small deterministic generator: the same tenant every run.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn ts(t: chrono::DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Writes the tenant; returns the number of windows.
fn seed(dir: &std::path::Path) -> usize {
    // Creates and migrates the database.
    drop(
        Store::open(
            dir,
            Arc::new(SystemClock),
            PolicyConfig::default(),
            RateSheet::sample(),
        )
        .unwrap(),
    );
    let mut conn = rusqlite::Connection::open(dir.join("flex.db")).unwrap();
    conn.pragma_update(None, "synchronous", "OFF").unwrap();
    let tx = conn.transaction().unwrap();
    let products = [
        ("autocad", 7),
        ("revit", 10),
        ("navisworks", 9),
        ("inventor", 9),
        ("civil3d", 10),
        ("3dsmax", 7),
        ("maya", 7),
        ("fusion", 3),
    ];
    let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let mut rng = Lcg(42);
    let mut windows = 0;
    {
        let mut user = tx.prepare("INSERT INTO users (email, first_name, last_name, flex_assigned, created_at) VALUES (?1, 'Bench', 'User', 1, ?2)").unwrap();
        let mut sub = tx
            .prepare("INSERT INTO subscriptions (email, product, created_at) VALUES (?1, ?2, ?3)")
            .unwrap();
        let mut win = tx.prepare("INSERT INTO windows (id, user, product, source, start, end) VALUES (?1, ?2, ?3, ?4, ?5, ?6)").unwrap();
        let mut charge = tx.prepare("INSERT INTO charges (claim_id, user, product, kind, source, window_id, tokens, device_id, created_at) VALUES (?1, ?2, ?3, 'window', ?4, ?5, ?6, 'bench', ?7)").unwrap();
        for u in 0..USERS {
            let email = format!("user{u:04}@example.com");
            user.execute(params![email, ts(start)]).unwrap();
            // One or two products each; a tenth hold a subscription to the first.
            let mine: Vec<usize> = (0..1 + rng.below(2) as usize)
                .map(|_| rng.below(products.len() as u64) as usize)
                .collect();
            let subscribed = rng.below(10) == 0;
            if subscribed {
                sub.execute(params![email, products[mine[0]].0, ts(start)])
                    .unwrap();
            }
            // Heavy and light users: 20% to 95% of working days.
            let share = 20 + rng.below(76);
            for day in 0..DAYS {
                let date = start + chrono::Duration::days(day);
                if chrono::Datelike::weekday(&date).number_from_monday() > 5 {
                    continue;
                }
                for (i, &p) in mine.iter().enumerate() {
                    if rng.below(100) >= share {
                        continue;
                    }
                    let (id, rate) = products[p];
                    let at = date + chrono::Duration::minutes(7 * 60 + rng.below(240) as i64);
                    let w = format!("w{windows}");
                    let paid_by_sub = subscribed && i == 0;
                    let source = if paid_by_sub {
                        "subscription"
                    } else {
                        "tokens"
                    };
                    let tokens = if paid_by_sub { 0 } else { rate };
                    win.execute(params![
                        w,
                        email,
                        id,
                        source,
                        ts(at),
                        ts(at + chrono::Duration::hours(24))
                    ])
                    .unwrap();
                    charge
                        .execute(params![
                            format!("c{windows}"),
                            email,
                            id,
                            source,
                            w,
                            tokens,
                            ts(at)
                        ])
                        .unwrap();
                    windows += 1;
                }
            }
        }
    }
    tx.commit().unwrap();
    windows
}

fn timed<T>(runs: usize, mut f: impl FnMut() -> T) -> (Vec<Duration>, T) {
    let mut times = Vec::with_capacity(runs);
    let mut last = None;
    for _ in 0..runs {
        let t = Instant::now();
        last = Some(f());
        times.push(t.elapsed());
    }
    times.sort();
    (times, last.unwrap())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn report(name: &str, times: &[Duration], note: String) {
    let p = |q: f64| times[((times.len() as f64 * q).ceil() as usize).clamp(1, times.len()) - 1];
    println!(
        "{name:<40} p50 {:>7.1} ms   p95 {:>7.1} ms   ({} runs; {note})",
        ms(p(0.5)),
        ms(p(0.95)),
        times.len()
    );
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let windows = seed(dir.path());
    println!(
        "seeded {USERS} users, {windows} windows of 2026 in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let store = Store::open(
        dir.path(),
        Arc::new(SystemClock),
        PolicyConfig::default(),
        RateSheet::sample(),
    )
    .unwrap();
    let t = Instant::now();
    let folded = store.fold_usage().unwrap();
    println!(
        "one-time fold of {folded} charges into the usage rollup: {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let d = |m, day| NaiveDate::from_ymd_opt(2026, m, day).unwrap();
    let month = Period {
        from: d(11, 1),
        to: d(11, 30),
    };
    let year = Period {
        from: d(1, 1),
        to: d(12, 31),
    };

    let (times, r) = timed(RUNS, || store.usage_report(ReportBy::User, month).unwrap());
    report(
        "usage by user, November",
        &times,
        format!("{} rows", r.rows.len()),
    );
    let (times, r) = timed(RUNS, || store.usage_report(ReportBy::User, year).unwrap());
    report(
        "usage by user, 2026",
        &times,
        format!("{} rows, {} tokens", r.rows.len(), r.total_tokens),
    );
    let (times, json) = timed(RUNS, || serde_json::to_vec(&r).unwrap().len());
    report("  its JSON answer", &times, format!("{} KiB", json / 1024));
    let (times, r) = timed(RUNS, || {
        store.usage_report(ReportBy::Product, year).unwrap()
    });
    report(
        "usage by product, 2026",
        &times,
        format!("{} rows", r.rows.len()),
    );
    let (times, r) = timed(RUNS, || store.recommendations("2026-11").unwrap());
    report(
        "recommendations, November",
        &times,
        format!("{} recommendations", r.recommendations.len()),
    );
}
