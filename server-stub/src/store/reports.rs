//! The facts behind reports, recommendations, the estimator and the forecast.
//!
//! Reports read a rollup of the ledger kept up to date by
//! [`Store::fold_usage`]: the ticker folds new charges every minute and every
//! report folds what is left first, in short transactions so claims never wait
//! long. The ledger is append-only — charges, and refunds of short runs (R13)
//! that take a charge's tokens back — and the fold records the last charge
//! and the last refund it took in the same transaction as its sums, so a
//! report is always exact. A refunded window still counts as a usage day, with
//! its tokens gone and no longer paid with tokens.
//!
//! The rollup (migration 0004) numbers each (user, product) once in
//! `usage_pairs`, keeps per (local day, pair) the windows started and the
//! tokens charged in `usage_days`, and the same per week packed 64 weeks to a
//! row in `usage_weeks` (see [`usage_blocks`]). A period reads its whole weeks
//! from the blocks and only its edge days by day. The rules in
//! [`crate::rules`] make every decision from what is loaded here.

use std::collections::HashMap;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use chrono_tz::Tz;
use flex_protocol::reports::{
    Estimate, EstimateRequest, Forecast, RecommendationList, ReportBy, UsageReport,
};
use flex_protocol::ProductId;

use super::db::{params, Conn, Row};
use super::lots::load_lots;
use super::usage_blocks::{self, WeekCell};
use super::{get_meta, parse_ts, set_meta, ts, Result, Store, StoreError};
use crate::rules::calendar::{self, local_day, Period};
use crate::rules::estimate::{self, PastUse};
use crate::rules::forecast::{self, ForecastPlan, Spend, BURN_DAYS};
use crate::rules::recommendations::{self, PairUsage};
use crate::rules::reports::{DayUsage, UsageAccumulator, WeekFact};
use crate::rules::Invalid;

const ROLLUP_ID: &str = "rollup.charge_id";
const ROLLUP_REFUND_ID: &str = "rollup.refund_id";
const ROLLUP_ZONE: &str = "rollup.timezone";
/// Charges folded per transaction: keeps each hold on the database short.
const FOLD_CHUNK: i64 = 20_000;

/// One (user, product) of a user's usage in one month, for the console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonthUsage {
    /// `YYYY-MM`.
    pub month: String,
    pub product: String,
    pub usage_days: u64,
    pub tokens: u64,
}

/// What one charge (or, negative, one refund) adds to one local day of its
/// (user, product).
struct DayAdd {
    day: i32,
    pair: i64,
    windows: i64,
    paid: i64,
    tokens: i64,
}

/// The rollup rows one chunk of the fold writes.
struct Folder<'c, 'a> {
    tx: &'c Conn<'a>,
    pairs: HashMap<(String, String), i64>,
    /// Blocks read and changed in this chunk, written back at its end.
    blocks: HashMap<(i32, i64), Vec<u8>>,
}

impl Folder<'_, '_> {
    fn pair(&mut self, user: &str, product: &str) -> Result<i64> {
        if let Some(&id) = self.pairs.get(&(user.to_owned(), product.to_owned())) {
            return Ok(id);
        }
        let found: Option<i64> = self.tx.query_opt(
            "SELECT id FROM usage_pairs WHERE \"user\" = ?1 AND product = ?2",
            params![user, product],
            |r| r.get(0),
        )?;
        let id = match found {
            Some(id) => id,
            None => self.tx.query_one(
                "INSERT INTO usage_pairs (\"user\", product) VALUES (?1, ?2) RETURNING id",
                params![user, product],
                |r| r.get(0),
            )?,
        };
        self.pairs.insert((user.to_owned(), product.to_owned()), id);
        Ok(id)
    }

    /// Adds to a day and to its week; a day's first window (or first paid
    /// one) is a new usage day (or paid usage day) of the week, and a refund
    /// that leaves a day no paid window takes a paid day off its week.
    fn add(&mut self, a: DayAdd) -> Result<()> {
        let (w, p): (i64, i64) = self.tx.query_one(
            "INSERT INTO usage_days (day, pair, windows, token_windows, tokens)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (day, pair) DO UPDATE SET
                 windows = usage_days.windows + excluded.windows,
                 token_windows = usage_days.token_windows + excluded.token_windows,
                 tokens = usage_days.tokens + excluded.tokens
             RETURNING windows, token_windows",
            params![a.day, a.pair, a.windows, a.paid, a.tokens],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let new_day = i8::from(a.windows > 0 && w == a.windows);
        let new_paid = i8::from(a.paid > 0 && p == a.paid) - i8::from(a.paid < 0 && p == 0);
        if new_day == 0 && new_paid == 0 && a.tokens == 0 {
            return Ok(());
        }
        let (block, slot) = usage_blocks::locate(a.day);
        let blob = match self.blocks.entry((block, a.pair)) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let stored: Option<Vec<u8>> = self.tx.query_opt(
                    "SELECT weeks FROM usage_weeks WHERE block = ?1 AND pair = ?2",
                    params![block, a.pair],
                    |r| r.get(0),
                )?;
                e.insert(stored.unwrap_or_else(usage_blocks::empty))
            }
        };
        usage_blocks::add(blob, slot, new_day, new_paid, a.tokens);
        Ok(())
    }

    fn write_blocks(self) -> Result<()> {
        for ((block, pair), blob) in &self.blocks {
            self.tx.execute(
                "INSERT INTO usage_weeks (block, pair, weeks) VALUES (?1, ?2, ?3)
                 ON CONFLICT (block, pair) DO UPDATE SET weeks = excluded.weeks",
                params![block, pair, blob],
            )?;
        }
        Ok(())
    }
}

fn meta_id(tx: &Conn<'_>, key: &str) -> Result<i64> {
    Ok(get_meta(tx, key)?.and_then(|v| v.parse().ok()).unwrap_or(0))
}

/// Folds up to one chunk of new charges, then up to one chunk of new refunds
/// of charges already folded, into the rollup; returns the larger count.
fn fold_chunk(tx: &Conn<'_>, tz: Tz) -> Result<i64> {
    // Charges and refunds are folded by id, once: every row below the last
    // id taken must already be visible.
    tx.settle_inserts("charges")?;
    tx.settle_inserts("refunds")?;
    if get_meta(tx, ROLLUP_ZONE)?.as_deref() != Some(tz.name()) {
        tx.execute("DELETE FROM usage_days", params![])?;
        tx.execute("DELETE FROM usage_weeks", params![])?;
        set_meta(tx, ROLLUP_ID, "0")?;
        set_meta(tx, ROLLUP_REFUND_ID, "0")?;
        set_meta(tx, ROLLUP_ZONE, tz.name())?;
    }
    let after = meta_id(tx, ROLLUP_ID)?;
    struct Taken {
        id: i64,
        user: String,
        product: String,
        paid: i64,
        tokens: i64,
        charged: String,
        start: Option<String>,
    }
    let taken = tx.query_all(
        "SELECT c.id, c.\"user\", c.product, c.source, c.tokens, c.created_at, w.start
         FROM charges c LEFT JOIN windows w ON w.id = c.window_id
         WHERE c.id > ?1 ORDER BY c.id LIMIT ?2",
        params![after, FOLD_CHUNK],
        |r| {
            Ok(Taken {
                id: r.get(0)?,
                user: r.get(1)?,
                product: r.get(2)?,
                paid: i64::from(r.str(3)? == "tokens"),
                tokens: r.get(4)?,
                charged: r.get(5)?,
                start: r.get(6)?,
            })
        },
    )?;
    let mut folder = Folder {
        tx,
        pairs: HashMap::new(),
        blocks: HashMap::new(),
    };
    let (mut last, mut n) = (after, 0);
    for t in &taken {
        let pair = folder.pair(&t.user, &t.product)?;
        let charged = local_day(parse_ts(&t.charged)?, tz);
        let day = |day, windows, paid, tokens| DayAdd {
            day,
            pair,
            windows,
            paid,
            tokens,
        };
        // Usage counts on the window's start day, tokens on the charge's day;
        // a per-result charge has no window.
        match &t.start {
            Some(start) => {
                let start = local_day(parse_ts(start)?, tz);
                if start == charged {
                    folder.add(day(start, 1, t.paid, t.tokens))?;
                } else {
                    folder.add(day(start, 1, t.paid, 0))?;
                    folder.add(day(charged, 0, 0, t.tokens))?;
                }
            }
            None => folder.add(day(charged, 0, 0, t.tokens))?,
        }
        last = t.id;
        n += 1;
    }
    let refunds = fold_refunds(&mut folder, tz, last)?;
    folder.write_blocks()?;
    if n > 0 {
        set_meta(tx, ROLLUP_ID, &last.to_string())?;
    }
    Ok(n.max(refunds))
}

/// Folds new refunds in id order, up to the first whose charge is not folded
/// yet (`charges_to` is the last folded charge): a refund takes its tokens
/// off its charge's day and, for a window paid with tokens, the paid window
/// off its start day. The window stays a usage day.
fn fold_refunds(folder: &mut Folder<'_, '_>, tz: Tz, charges_to: i64) -> Result<i64> {
    let tx = folder.tx;
    let after = meta_id(tx, ROLLUP_REFUND_ID)?;
    struct Taken {
        id: i64,
        charge_id: i64,
        tokens: i64,
        user: String,
        product: String,
        paid: i64,
        charged: String,
        start: String,
    }
    let taken = tx.query_all(
        "SELECT r.id, r.charge_id, r.tokens, c.\"user\", c.product, c.source, c.created_at, w.start
         FROM refunds r JOIN charges c ON c.id = r.charge_id JOIN windows w ON w.id = r.window_id
         WHERE r.id > ?1 ORDER BY r.id LIMIT ?2",
        params![after, FOLD_CHUNK],
        |r| {
            Ok(Taken {
                id: r.get(0)?,
                charge_id: r.get(1)?,
                tokens: r.get(2)?,
                user: r.get(3)?,
                product: r.get(4)?,
                paid: i64::from(r.str(5)? == "tokens"),
                charged: r.get(6)?,
                start: r.get(7)?,
            })
        },
    )?;
    let (mut last, mut n) = (after, 0);
    for t in taken.iter().take_while(|t| t.charge_id <= charges_to) {
        let pair = folder.pair(&t.user, &t.product)?;
        let charged = local_day(parse_ts(&t.charged)?, tz);
        let start = local_day(parse_ts(&t.start)?, tz);
        let day = |day, paid, tokens| DayAdd {
            day,
            pair,
            windows: 0,
            paid,
            tokens,
        };
        if start == charged {
            folder.add(day(start, -t.paid, -t.tokens))?;
        } else {
            folder.add(day(start, -t.paid, 0))?;
            folder.add(day(charged, 0, -t.tokens))?;
        }
        last = t.id;
        n += 1;
    }
    if n > 0 {
        set_meta(tx, ROLLUP_REFUND_ID, &last.to_string())?;
    }
    Ok(n)
}

/// One fact of a period, about one numbered (user, product).
enum Fact<'a> {
    /// A day at the period's edge: windows started (of which paid), tokens.
    Day {
        pair: u32,
        day: i32,
        windows: i64,
        paid: i64,
        tokens: i64,
    },
    /// A whole week inside the period, by its Monday.
    Week {
        pair: u32,
        monday: i32,
        cell: &'a WeekCell,
    },
}

fn pair_id(id: i64) -> Result<u32> {
    u32::try_from(id).map_err(|_| StoreError::Corrupt(format!("usage pair id {id}")))
}

/// Calls `f(id, user, product)` for every (user, product) with usage.
fn each_pair(conn: &Conn<'_>, mut f: impl FnMut(u32, &str, &str)) -> Result<()> {
    conn.query_each(
        "SELECT id, \"user\", product FROM usage_pairs",
        params![],
        |r| {
            f(pair_id(r.get(0)?)?, text(r, 1)?, text(r, 2)?);
            Ok(())
        },
    )
}

/// Streams a period's usage: whole weeks from `usage_weeks`, the days before
/// the first Monday and after the last whole week from `usage_days`.
fn period_facts(conn: &Conn<'_>, period: Period, mut f: impl FnMut(Fact<'_>)) -> Result<()> {
    let first = calendar::day_number(period.from);
    let last = calendar::day_number(period.to);
    let w0 = calendar::week_start(first);
    let weeks_from = if w0 == first { first } else { w0 + 7 };
    let weeks_to = calendar::week_start(last + 1); // exclusive
    let mut days = vec![(first, last)];
    if weeks_from < weeks_to {
        days = vec![(first, weeks_from - 1), (weeks_to, last)];
        let (b0, _) = usage_blocks::locate(weeks_from);
        let (b1, _) = usage_blocks::locate(weeks_to - 7);
        conn.query_each(
            "SELECT pair, block, weeks FROM usage_weeks WHERE block BETWEEN ?1 AND ?2",
            params![b0, b1],
            |r| {
                let pair = pair_id(r.get(0)?)?;
                let blob = r.blob(2)?;
                usage_blocks::each(blob, r.get(1)?, weeks_from, weeks_to - 7, |monday, cell| {
                    f(Fact::Week {
                        pair,
                        monday,
                        cell: &cell,
                    })
                });
                Ok(())
            },
        )?;
    }
    for (a, b) in days.into_iter().filter(|(a, b)| a <= b) {
        conn.query_each(
            "SELECT pair, day, windows, token_windows, tokens FROM usage_days WHERE day BETWEEN ?1 AND ?2",
            params![a, b],
            |r| {
                f(Fact::Day {
                    pair: pair_id(r.get(0)?)?,
                    day: r.get(1)?,
                    windows: r.get(2)?,
                    paid: r.get(3)?,
                    tokens: r.get(4)?,
                });
                Ok(())
            },
        )?;
    }
    Ok(())
}

fn report_from(conn: &Conn<'_>, by: ReportBy, period: Period, tz: &str) -> Result<UsageReport> {
    let mut acc = UsageAccumulator::new(by, period);
    each_pair(conn, |id, user, product| acc.pair(id, user, product))?;
    period_facts(conn, period, |fact| match fact {
        Fact::Day {
            pair,
            day,
            windows,
            tokens,
            ..
        } => acc.add(&DayUsage {
            pair,
            day,
            windows: windows as u64,
            tokens: tokens as u64,
        }),
        Fact::Week { pair, monday, cell } => acc.add_week(&WeekFact {
            pair,
            week: monday,
            usage_days: u64::from(cell.usage_days),
            tokens: cell.tokens,
        }),
    })?;
    Ok(acc.finish(tz))
}

fn text<'r>(r: &'r Row<'_>, i: usize) -> Result<&'r str> {
    r.str(i)
}

/// Per (user, product) usage days and tokens in a period, for the pairs with
/// usage days or tokens; `paid_only` counts only days with a window paid with
/// tokens.
fn pair_usage(conn: &Conn<'_>, period: Period, paid_only: bool) -> Result<Vec<PairUsage>> {
    let mut sums: Vec<(u64, u64)> = Vec::new();
    let mut add = |pair: u32, days: u64, tokens: u64| {
        let i = pair as usize;
        if sums.len() <= i {
            sums.resize(i + 1, (0, 0));
        }
        sums[i].0 += days;
        sums[i].1 += tokens;
    };
    period_facts(conn, period, |fact| match fact {
        Fact::Day {
            pair,
            windows,
            paid,
            tokens,
            ..
        } => {
            let used = if paid_only { paid } else { windows };
            add(pair, u64::from(used > 0), tokens as u64)
        }
        Fact::Week { pair, cell, .. } => {
            let days = if paid_only {
                cell.paid_days
            } else {
                cell.usage_days
            };
            add(pair, u64::from(days), cell.tokens)
        }
    })?;
    let mut out = Vec::new();
    let mut corrupt = None;
    each_pair(conn, |id, user, product| {
        if let Some(&(usage_days, tokens)) = sums.get(id as usize) {
            if usage_days > 0 || tokens > 0 {
                // Pairs come from charges, whose products were checked.
                match ProductId::parse(product) {
                    Ok(product) => out.push(PairUsage {
                        user: user.to_owned(),
                        product,
                        usage_days,
                        tokens,
                    }),
                    Err(e) => corrupt = Some(format!("usage pair {id}: {e}")),
                }
            }
        }
    })?;
    match corrupt {
        Some(e) => Err(StoreError::Corrupt(e)),
        None => Ok(out),
    }
}

/// Tokens charged since `since`, less those refunded since.
fn charged_since(conn: &Conn<'_>, since: DateTime<Utc>) -> Result<u64> {
    let net: i64 = conn.query_one(
        "SELECT CAST((SELECT COALESCE(SUM(tokens), 0) FROM charges WHERE created_at > ?1)
                   - (SELECT COALESCE(SUM(tokens), 0) FROM refunds WHERE created_at > ?1) AS BIGINT)",
        params![ts(since)],
        |r| r.get(0),
    )?;
    Ok(net.max(0) as u64)
}

impl Store {
    pub fn timezone(&self) -> Tz {
        calendar::zone(&self.policy().timezone)
    }

    /// Brings the usage rollup up to date, one short transaction per chunk.
    pub fn fold_usage(&self) -> Result<u64> {
        let tz = self.timezone();
        let mut total = 0;
        loop {
            let n = self.write(|tx| fold_chunk(tx, tz))?;
            total += n as u64;
            if n < FOLD_CHUNK {
                return Ok(total);
            }
        }
    }

    /// `GET /v1/admin/reports/usage`.
    pub fn usage_report(&self, by: ReportBy, period: Period) -> Result<UsageReport> {
        self.fold_usage()?;
        let tz = self.policy().timezone.clone();
        self.read(|c| report_from(c, by, period, &tz))
    }

    /// `GET /v1/admin/recommendations?month=`.
    pub fn recommendations(&self, month: &str) -> Result<RecommendationList> {
        let period = Period::month(month)?;
        self.fold_usage()?;
        let (usage, subs) = self.read(|c| {
            let usage = pair_usage(c, period, false)?;
            let subs: Vec<(String, ProductId)> =
                c.query_all("SELECT email, product FROM subscriptions", params![], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?;
            Ok((usage, subs))
        })?;
        let label = period.from.format("%Y-%m").to_string();
        let recommendations = recommendations::recommend(&label, &usage, &subs, |p| {
            self.rates().get(p).map(|p| p.charge)
        });
        Ok(RecommendationList {
            month: label,
            recommendations,
        })
    }

    /// `POST /v1/admin/estimate`.
    pub fn estimate(&self, req: &EstimateRequest) -> Result<Estimate> {
        let rows = match (&req.rows, &req.from_usage) {
            (Some(rows), None) => rows.clone(),
            (None, Some(p)) => {
                let period = Period::checked(p.from, p.to)
                    .map_err(|e| Invalid::new("from_usage", format!("from_usage: {e}")))?;
                self.fold_usage()?;
                let past: Vec<PastUse> = self
                    .read(|c| pair_usage(c, period, true))?
                    .into_iter()
                    .filter_map(|u| {
                        // Daily products of the rate sheet, by the sheet's id.
                        let p = self.rates().get(&u.product).filter(|p| {
                            matches!(p.charge, flex_protocol::api::ChargeModel::Daily { .. })
                        })?;
                        Some(PastUse {
                            product: p.id.clone(),
                            user: u.user,
                            usage_days: u.usage_days,
                        })
                    })
                    .collect();
                let rows = estimate::rows_from_usage(&past, period.months());
                if rows.is_empty() {
                    return Err(Invalid::new(
                        "from_usage",
                        format!(
                            "from_usage: no Flex usage of a daily product from {} to {}; give rows instead",
                            p.from, p.to
                        ),
                    )
                    .into());
                }
                rows
            }
            (Some(_), Some(_)) => {
                return Err(Invalid::new("rows", "give either rows or from_usage, not both").into())
            }
            (None, None) => {
                return Err(Invalid::new(
                    "rows",
                    "give rows [{product, users, days_per_month}] or from_usage {from, to}",
                )
                .into())
            }
        };
        Ok(estimate::estimate(
            req.months,
            &rows,
            |p| self.rates().get(p).map(|p| p.charge),
            &self.policy().pack_sizes,
        )?)
    }

    /// The forecast and its projected curve.
    pub fn forecast_plan(&self) -> Result<ForecastPlan> {
        let now = self.now();
        let tz = self.timezone();
        let (lots, charged) = self.read(|c| {
            Ok((
                load_lots(c)?,
                charged_since(c, now - Duration::days(BURN_DAYS))?,
            ))
        })?;
        Ok(forecast::forecast(&lots, charged, now, tz))
    }

    /// `GET /v1/admin/forecast`.
    pub fn forecast(&self) -> Result<Forecast> {
        Ok(self.forecast_plan()?.forecast)
    }

    /// The balance at the end of each of the last `days` days.
    pub fn balance_history(&self, days: i64) -> Result<Vec<(NaiveDate, u64)>> {
        let now = self.now();
        let tz = self.timezone();
        let since = now - Duration::days(days + 1);
        let (lots, spends) = self.read(|c| {
            // A refund gives tokens back: a spend of minus its share.
            let spends = c.query_all(
                "SELECT c.created_at, cl.lot_id, cl.tokens FROM charges c
                 JOIN charge_lots cl ON cl.charge_id = c.id WHERE c.created_at > ?1
                 UNION ALL
                 SELECT r.created_at, rl.lot_id, -rl.tokens FROM refunds r
                 JOIN refund_lots rl ON rl.refund_id = r.id WHERE r.created_at > ?1",
                params![ts(since)],
                |r| {
                    Ok(Spend {
                        at: parse_ts(r.str(0)?)?,
                        lot_id: r.get(1)?,
                        tokens: r.get(2)?,
                    })
                },
            )?;
            Ok((load_lots(c)?, spends))
        })?;
        Ok(forecast::balance_history(&lots, &spends, now, days, tz))
    }

    /// A user's usage days and tokens per product per month over `period`.
    pub fn user_months(
        &self,
        email: &flex_protocol::Email,
        period: Period,
    ) -> Result<Vec<MonthUsage>> {
        self.fold_usage()?;
        let rows: Vec<(String, i32, i64, i64)> = self.read(|c| {
            c.query_all(
                "SELECT p.product, d.day, d.windows, d.tokens
                 FROM usage_pairs p JOIN usage_days d ON d.pair = p.id
                 WHERE p.\"user\" = ?1 AND d.day BETWEEN ?2 AND ?3",
                params![
                    email,
                    calendar::day_number(period.from),
                    calendar::day_number(period.to)
                ],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
        })?;
        let mut months: std::collections::BTreeMap<(String, String), (u64, u64)> =
            Default::default();
        for (product, day, windows, tokens) in rows {
            let month = calendar::date_of(day).format("%Y-%m").to_string();
            let e = months.entry((month, product)).or_default();
            e.0 += u64::from(windows > 0);
            e.1 += tokens as u64;
        }
        Ok(months
            .into_iter()
            .map(|((month, product), (usage_days, tokens))| MonthUsage {
                month,
                product,
                usage_days,
                tokens,
            })
            .collect())
    }
}
