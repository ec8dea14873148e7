//! The facts behind reports, recommendations, the estimator and the forecast.
//!
//! Reports read `usage_daily`, a rollup of the ledger kept up to date by
//! [`Store::fold_usage`]: the ticker folds new charges every minute and every
//! report folds what is left first, in short transactions so claims never wait
//! long. The rules in [`crate::rules`] make every decision from what is loaded
//! here.

use chrono::{DateTime, Duration, NaiveDate, Utc};
use chrono_tz::Tz;
use flex_protocol::reports::{
    Estimate, EstimateRequest, Forecast, RecommendationList, ReportBy, UsageReport,
};
use rusqlite::{params, Connection};

use super::lots::load_lots;
use super::{get_meta, parse_ts, set_meta, ts, Result, Store, StoreError};
use crate::rules::calendar::{self, local_day, Period};
use crate::rules::estimate::{self, PastUse};
use crate::rules::forecast::{self, ForecastPlan, Spend, BURN_DAYS};
use crate::rules::recommendations::{self, PairUsage};
use crate::rules::reports::{DayUsage, UsageAccumulator, WeekFact};
use crate::rules::Invalid;

const ROLLUP_ID: &str = "rollup.charge_id";
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

/// Folds up to one chunk of new charges into the rollup; returns how many.
fn fold_chunk(tx: &Connection, tz: Tz) -> Result<i64> {
    if get_meta(tx, ROLLUP_ZONE)?.as_deref() != Some(tz.name()) {
        tx.execute("DELETE FROM usage_daily", [])?;
        tx.execute("DELETE FROM usage_weekly", [])?;
        set_meta(tx, ROLLUP_ID, "0")?;
        set_meta(tx, ROLLUP_ZONE, tz.name())?;
    }
    let after: i64 = get_meta(tx, ROLLUP_ID)?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut stmt = tx.prepare_cached(
        "SELECT c.id, c.user, c.product, c.source, c.tokens, c.created_at, w.start
         FROM charges c LEFT JOIN windows w ON w.id = c.window_id
         WHERE c.id > ?1 ORDER BY c.id LIMIT ?2",
    )?;
    let mut daily = tx.prepare_cached(
        "INSERT INTO usage_daily (day, user, product, windows, token_windows, tokens)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (day, user, product) DO UPDATE SET
             windows = windows + excluded.windows,
             token_windows = token_windows + excluded.token_windows,
             tokens = tokens + excluded.tokens
         RETURNING windows, token_windows",
    )?;
    let mut weekly = tx.prepare_cached(
        "INSERT INTO usage_weekly (week, user, product, usage_days, token_days, tokens)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (week, user, product) DO UPDATE SET
             usage_days = usage_days + excluded.usage_days,
             token_days = token_days + excluded.token_days,
             tokens = tokens + excluded.tokens",
    )?;
    // Adds to a day and to its week; a day's first window (or first paid one)
    // is a new usage day (or paid usage day) of the week.
    let mut add =
        |day: i32, user: &str, product: &str, windows: i64, paid: i64, tokens: i64| -> Result<()> {
            let (w, p): (i64, i64) = daily
                .query_row(params![day, user, product, windows, paid, tokens], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?;
            let new_day = i64::from(windows > 0 && w == windows);
            let new_paid = i64::from(paid > 0 && p == paid);
            weekly.execute(params![
                calendar::week_start(day),
                user,
                product,
                new_day,
                new_paid,
                tokens
            ])?;
            Ok(())
        };
    let mut rows = stmt.query(params![after, FOLD_CHUNK])?;
    let (mut last, mut n) = (after, 0);
    while let Some(r) = rows.next()? {
        let id: i64 = r.get(0)?;
        let user: String = r.get(1)?;
        let product: String = r.get(2)?;
        let paid = r.get_ref(3)?.as_str().unwrap_or("") == "tokens";
        let tokens: i64 = r.get(4)?;
        let charged = local_day(parse_ts(r.get_ref(5)?.as_str().unwrap_or(""))?, tz);
        match r.get_ref(6)?.as_str_or_null().ok().flatten() {
            Some(start) => {
                let day = local_day(parse_ts(start)?, tz);
                if day == charged {
                    add(day, &user, &product, 1, paid as i64, tokens)?;
                } else {
                    add(day, &user, &product, 1, paid as i64, 0)?;
                    add(charged, &user, &product, 0, 0, tokens)?;
                }
            }
            None => add(charged, &user, &product, 0, 0, tokens)?,
        }
        last = id;
        n += 1;
    }
    if n > 0 {
        set_meta(tx, ROLLUP_ID, &last.to_string())?;
    }
    Ok(n)
}

/// Reads a period's usage: whole weeks from `usage_weekly`, the days before
/// the first Monday and after the last whole week from `usage_daily`.
fn report_from(conn: &Connection, by: ReportBy, period: Period, tz: &str) -> Result<UsageReport> {
    let mut acc = UsageAccumulator::new(by, period);
    let first = calendar::day_number(period.from);
    let last = calendar::day_number(period.to);
    let w0 = calendar::week_start(first);
    let weeks_from = if w0 == first { first } else { w0 + 7 };
    let weeks_to = calendar::week_start(last + 1); // exclusive
    let mut days = vec![(first, last)];
    if weeks_from < weeks_to {
        days = vec![(first, weeks_from - 1), (weeks_to, last)];
        let mut stmt = conn.prepare_cached(
            "SELECT user, product, week, usage_days, tokens FROM usage_weekly WHERE week BETWEEN ?1 AND ?2",
        )?;
        let mut rows = stmt.query(params![weeks_from, weeks_to - 7])?;
        while let Some(r) = rows.next()? {
            acc.add_week(&WeekFact {
                user: text(r, 0)?,
                product: text(r, 1)?,
                week: r.get(2)?,
                usage_days: r.get::<_, i64>(3)? as u64,
                tokens: r.get::<_, i64>(4)? as u64,
            });
        }
    }
    let mut stmt = conn.prepare_cached(
        "SELECT user, product, day, windows, tokens FROM usage_daily WHERE day BETWEEN ?1 AND ?2",
    )?;
    for (a, b) in days.into_iter().filter(|(a, b)| a <= b) {
        let mut rows = stmt.query(params![a, b])?;
        while let Some(r) = rows.next()? {
            acc.add(&DayUsage {
                user: text(r, 0)?,
                product: text(r, 1)?,
                day: r.get(2)?,
                windows: r.get::<_, i64>(3)? as u64,
                tokens: r.get::<_, i64>(4)? as u64,
            });
        }
    }
    Ok(acc.finish(tz))
}

fn text<'r>(r: &'r rusqlite::Row<'_>, i: usize) -> Result<&'r str> {
    r.get_ref(i)?
        .as_str()
        .map_err(|e| StoreError::Corrupt(format!("usage rollup: {e}")))
}

/// Per (user, product) usage days and tokens in a period; `paid_only` counts
/// only windows paid with tokens.
fn pair_usage(conn: &Connection, period: Period, paid_only: bool) -> Result<Vec<PairUsage>> {
    let days = if paid_only {
        "SUM(token_windows > 0)"
    } else {
        "SUM(windows > 0)"
    };
    let mut stmt = conn.prepare(&format!(
        "SELECT user, product, {days}, SUM(tokens) FROM usage_daily
         WHERE day BETWEEN ?1 AND ?2 GROUP BY user, product"
    ))?;
    let rows = stmt.query_map(
        params![
            calendar::day_number(period.from),
            calendar::day_number(period.to)
        ],
        |r| {
            Ok(PairUsage {
                user: r.get(0)?,
                product: r.get(1)?,
                usage_days: r.get::<_, i64>(2)? as u64,
                tokens: r.get::<_, i64>(3)? as u64,
            })
        },
    )?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

fn charged_since(conn: &Connection, since: DateTime<Utc>) -> Result<u64> {
    let n: i64 = conn.query_row(
        "SELECT COALESCE(SUM(tokens), 0) FROM charges WHERE created_at > ?1",
        [ts(since)],
        |r| r.get(0),
    )?;
    Ok(n as u64)
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
            let mut stmt = c.prepare("SELECT email, product FROM subscriptions")?;
            let subs: Vec<(String, String)> = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
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
                    .filter(|u| {
                        matches!(
                            self.rates().get(&u.product).map(|p| p.charge),
                            Some(flex_protocol::api::ChargeModel::Daily { .. })
                        )
                    })
                    .map(|u| PastUse {
                        product: u.product,
                        user: u.user,
                        usage_days: u.usage_days,
                    })
                    .collect();
                let rows = estimate::rows_from_usage(&past, period.days());
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
            let mut stmt = c.prepare(
                "SELECT c.created_at, cl.lot_id, cl.tokens FROM charges c
                 JOIN charge_lots cl ON cl.charge_id = c.id WHERE c.created_at > ?1",
            )?;
            let raw: Vec<(String, i64, i64)> = stmt
                .query_map([ts(since)], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<rusqlite::Result<_>>()?;
            let spends = raw
                .into_iter()
                .map(|(at, lot_id, tokens)| {
                    Ok(Spend {
                        at: parse_ts(&at)?,
                        lot_id,
                        tokens: tokens as u64,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            Ok((load_lots(c)?, spends))
        })?;
        Ok(forecast::balance_history(&lots, &spends, now, days, tz))
    }

    /// A user's usage days and tokens per product per month over `period`.
    pub fn user_months(&self, email: &str, period: Period) -> Result<Vec<MonthUsage>> {
        self.fold_usage()?;
        let rows: Vec<(String, i32, i64, i64)> = self.read(|c| {
            let mut stmt = c.prepare(
                "SELECT product, day, windows, tokens FROM usage_daily
                 WHERE user = ?1 AND day BETWEEN ?2 AND ?3",
            )?;
            let rows = stmt
                .query_map(
                    params![
                        email,
                        calendar::day_number(period.from),
                        calendar::day_number(period.to)
                    ],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )?
                .collect::<rusqlite::Result<_>>()?;
            Ok(rows)
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
