//! The token estimator (R11): planned use → tokens per month and in total, and
//! the packs to buy: the fewest tokens at or over the need, then the fewest packs.

use std::collections::BTreeMap;

use flex_protocol::api::ChargeModel;
use flex_protocol::reports::{Estimate, EstimateInput, EstimateRow, PackCount};
use flex_protocol::ProductId;

use super::recommendations::SUBSCRIPTION_DAYS;
use super::Invalid;

pub const MAX_MONTHS: i64 = 120;
pub const MAX_ROWS: usize = 1000;
/// Average days in a month, to turn a period of real usage into "per month".
pub const DAYS_PER_MONTH: f64 = 365.25 / 12.0;
/// Cap on the pack search table (entries), whatever sizes are configured.
const MAX_TABLE: u64 = 4_000_000;

/// The estimate for `rows` over `months`, with `charge` giving each product's
/// charge model and `pack_sizes` the sizes on sale. Errors name rows from 1.
pub fn estimate(
    months: i64,
    rows: &[EstimateInput],
    charge: impl Fn(&str) -> Option<ChargeModel>,
    pack_sizes: &[u64],
) -> Result<Estimate, Invalid> {
    let numbered: Vec<(usize, EstimateInput)> = rows
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, r)| (i + 1, r))
        .collect();
    estimate_numbered(months, &numbered, charge, pack_sizes)
}

/// [`estimate`] for rows that carry their own numbers (a form whose blank
/// rows were left out), so errors name the row the admin sees.
pub fn estimate_numbered(
    months: i64,
    rows: &[(usize, EstimateInput)],
    charge: impl Fn(&str) -> Option<ChargeModel>,
    pack_sizes: &[u64],
) -> Result<Estimate, Invalid> {
    if !(1..=MAX_MONTHS).contains(&months) {
        return Err(Invalid::new(
            "months",
            format!("months must be between 1 and {MAX_MONTHS} (got {months})"),
        ));
    }
    if rows.is_empty() {
        return Err(Invalid::new(
            "rows",
            "rows is empty: give at least one row (product, users, days_per_month)",
        ));
    }
    if rows.len() > MAX_ROWS {
        return Err(Invalid::new(
            "rows",
            format!("{} rows: an estimate takes at most {MAX_ROWS}", rows.len()),
        ));
    }
    let mut out = Vec::with_capacity(rows.len());
    for (n, r) in rows {
        let name = format!("row {n} ({})", r.product);
        let field = |f: &str| format!("rows.{n}.{f}");
        let rate = match charge(r.product.as_str()) {
            Some(ChargeModel::Daily { tokens }) => tokens,
            Some(ChargeModel::PerResult { .. }) => {
                return Err(Invalid::new(
                    field("product"),
                    format!("{name}: the product is charged per result, not per day; leave it out"),
                ))
            }
            None => {
                return Err(Invalid::new(
                    field("product"),
                    format!("{name}: product '{}' is not on the rate sheet", r.product),
                ))
            }
        };
        if !(1..=1_000_000).contains(&r.users) {
            return Err(Invalid::new(
                field("users"),
                format!(
                    "{name}: users must be between 1 and 1000000 (got {})",
                    r.users
                ),
            ));
        }
        if !(r.days_per_month.is_finite() && r.days_per_month > 0.0 && r.days_per_month <= 31.0) {
            return Err(Invalid::new(
                field("days_per_month"),
                format!(
                    "{name}: days_per_month must be more than 0 and at most 31 (got {})",
                    r.days_per_month
                ),
            ));
        }
        let users = r.users as u64;
        let per_month = (users as f64 * r.days_per_month * rate as f64 - 1e-9)
            .ceil()
            .max(0.0) as u64;
        out.push(EstimateRow {
            product: r.product.clone(),
            users,
            days_per_month: r.days_per_month,
            tokens_per_month: per_month,
            subscription_cheaper: r.days_per_month > SUBSCRIPTION_DAYS as f64,
        });
    }
    let tokens_per_month: u64 = out.iter().map(|r| r.tokens_per_month).sum();
    let tokens_total = tokens_per_month * months as u64;
    let packs = best_packs(tokens_total, pack_sizes);
    Ok(Estimate {
        months: months as u64,
        tokens_per_month,
        tokens_total,
        packs_tokens: packs.iter().map(|p| p.size * p.count).sum(),
        packs,
        rows: out,
    })
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The packs covering `need`: the fewest tokens at or over it, then the fewest
/// packs; largest size first.
///
/// Exact search over totals in units of the sizes' gcd. A large need first takes
/// largest packs: an optimal choice never holds `L` or more smaller packs (`L` the
/// largest size in units), since among any `L` packs some subset sums to a
/// multiple of `L` and can be swapped for as many or fewer largest packs of the
/// same total. So only the last `L²` units need the search.
pub fn best_packs(need: u64, sizes: &[u64]) -> Vec<PackCount> {
    let mut sizes: Vec<u64> = sizes.iter().copied().filter(|&s| s > 0).collect();
    sizes.sort_unstable_by(|a, b| b.cmp(a));
    sizes.dedup();
    if need == 0 || sizes.is_empty() {
        return Vec::new();
    }
    let g = sizes.iter().fold(0, |acc, &s| gcd(acc, s));
    let units: Vec<u64> = sizes.iter().map(|s| s / g).collect();
    let largest = units[0];
    let mut need_u = need.div_ceil(g);
    let bound = (largest * largest).min(MAX_TABLE / 2);
    let mut fixed = 0;
    if need_u > bound + largest {
        fixed = (need_u - bound) / largest;
        need_u -= fixed * largest;
    }
    // count[t]: fewest packs summing to exactly t units; last[t]: one of them.
    let top = (need_u + largest) as usize;
    let mut count = vec![u32::MAX; top];
    let mut last = vec![0usize; top];
    count[0] = 0;
    for t in 1..top {
        for (i, &u) in units.iter().enumerate() {
            let u = u as usize;
            if u <= t && count[t - u] != u32::MAX && count[t - u] + 1 < count[t] {
                count[t] = count[t - u] + 1;
                last[t] = i;
            }
        }
    }
    let mut t = (need_u as usize..top)
        .find(|&t| count[t] != u32::MAX)
        .expect("largest packs alone reach the need");
    let mut chosen: BTreeMap<usize, u64> = BTreeMap::new();
    if fixed > 0 {
        chosen.insert(0, fixed);
    }
    while t > 0 {
        let i = last[t];
        *chosen.entry(i).or_default() += 1;
        t -= units[i] as usize;
    }
    chosen
        .into_iter()
        .map(|(i, count)| PackCount {
            size: sizes[i],
            count,
        })
        .collect()
}

/// A (product, user) pair's tokens-paid usage days in a past period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PastUse {
    pub product: ProductId,
    pub user: String,
    pub usage_days: u64,
}

/// Rows from real usage over `months` calendar months ([`Period::months`]):
/// per product, the users who used it on tokens and their average usage days
/// per month, to one decimal. A whole calendar month's usage is its own rate:
/// dividing by an average month (30.44 days) instead made November's 10 days
/// 10.2 a month.
///
/// [`Period::months`]: crate::rules::calendar::Period::months
pub fn rows_from_usage(past: &[PastUse], months: f64) -> Vec<EstimateInput> {
    let months = months.max(1.0 / DAYS_PER_MONTH);
    let mut per: BTreeMap<&ProductId, (u64, u64)> = BTreeMap::new();
    for p in past.iter().filter(|p| p.usage_days > 0) {
        let e = per.entry(&p.product).or_default();
        e.0 += 1;
        e.1 += p.usage_days;
    }
    per.into_iter()
        .map(|(product, (users, days))| {
            let per_month = (days as f64 / users as f64 / months).min(31.0);
            EstimateInput {
                product: product.clone(),
                users: users as i64,
                days_per_month: ((per_month * 10.0).round() / 10.0).max(0.1),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PACKS: [u64; 6] = [100, 500, 1000, 2500, 5000, 10000];

    fn packs(need: u64) -> Vec<(u64, u64)> {
        best_packs(need, &PACKS)
            .iter()
            .map(|p| (p.size, p.count))
            .collect()
    }

    fn rates(p: &str) -> Option<ChargeModel> {
        match p {
            "autocad" => Some(ChargeModel::Daily { tokens: 7 }),
            "revit" => Some(ChargeModel::Daily { tokens: 10 }),
            "recap-photo" => Some(ChargeModel::PerResult { tokens: 1, per: 50 }),
            _ => None,
        }
    }

    fn row(product: &str, users: i64, days: f64) -> EstimateInput {
        EstimateInput {
            product: product.parse().unwrap(),
            users,
            days_per_month: days,
        }
    }

    #[test]
    fn fewest_tokens_then_fewest_packs() {
        // 2,400 exactly (six packs) beats a single pack of 2,500.
        assert_eq!(packs(2400), vec![(1000, 2), (100, 4)]);
        // 4,600 exactly beats a 5,000 pack: fewer tokens come first.
        assert_eq!(packs(4600), vec![(2500, 1), (1000, 2), (100, 1)]);
        assert_eq!(packs(1), vec![(100, 1)]);
        assert_eq!(packs(10_001), vec![(10000, 1), (100, 1)]);
        assert_eq!(packs(123_456), vec![(10000, 12), (2500, 1), (1000, 1)]);
        assert!(packs(0).is_empty());
    }

    #[test]
    fn sizes_that_do_not_divide_each_other() {
        // Packs of 300 and 700: 1,000 = 300 + 700 beats 4 × 300 = 1,200.
        let p = best_packs(1000, &[300, 700]);
        assert_eq!(
            p,
            vec![
                PackCount {
                    size: 700,
                    count: 1
                },
                PackCount {
                    size: 300,
                    count: 1
                }
            ]
        );
        // 1,300: 2 × 300 + 700 (3 packs), not 1,400 = 2 × 700.
        let p = best_packs(1300, &[700, 300]);
        assert_eq!(p.iter().map(|p| p.size * p.count).sum::<u64>(), 1300);
    }

    #[test]
    fn the_design_example_of_an_estimate() {
        let e = estimate(
            12,
            &[row("autocad", 10, 4.0), row("revit", 2, 10.0)],
            rates,
            &PACKS,
        )
        .unwrap();
        assert_eq!(e.rows[0].tokens_per_month, 280);
        assert_eq!(e.rows[1].tokens_per_month, 200);
        assert!(!e.rows[0].subscription_cheaper && e.rows[1].subscription_cheaper);
        assert_eq!((e.tokens_per_month, e.tokens_total), (480, 5760));
        assert_eq!(e.packs_tokens, 5800);
        assert_eq!(
            e.packs,
            vec![
                PackCount {
                    size: 5000,
                    count: 1
                },
                PackCount {
                    size: 500,
                    count: 1
                },
                PackCount {
                    size: 100,
                    count: 3
                }
            ]
        );
    }

    #[test]
    fn bad_rows_are_named() {
        let e = |rows: &[EstimateInput]| estimate(1, rows, rates, &PACKS).unwrap_err().message;
        assert_eq!(
            e(&[row("autocad", 1, 1.0), row("photoshop", 1, 1.0)]),
            "row 2 (photoshop): product 'photoshop' is not on the rate sheet"
        );
        assert!(e(&[row("autocad", 0, 1.0)]).starts_with("row 1 (autocad): users must be"));
        assert!(e(&[row("autocad", -3, 1.0)]).contains("(got -3)"));
        assert!(e(&[row("autocad", 1, 0.0)]).starts_with("row 1 (autocad): days_per_month"));
        assert!(e(&[row("autocad", 1, 32.0)]).contains("(got 32)"));
        assert!(e(&[row("recap-photo", 1, 3.0)]).contains("per result"));
        assert!(e(&[]).starts_with("rows is empty"));
        let m = estimate(0, &[row("autocad", 1, 1.0)], rates, &PACKS)
            .unwrap_err()
            .message;
        assert_eq!(m, "months must be between 1 and 120 (got 0)");
    }

    /// Regression: November's 10 AutoCAD days (70 tokens) estimated 71 tokens
    /// a month, the days scaled by 30.44 / 30.
    #[test]
    fn an_estimate_from_a_whole_calendar_month_equals_that_months_usage() {
        let day = |m, d| chrono::NaiveDate::from_ymd_opt(2026, m, d).unwrap();
        let november = crate::rules::calendar::Period::checked(day(11, 1), day(11, 30)).unwrap();
        assert_eq!(november.months(), 1.0);
        let past = [PastUse {
            product: "autocad".parse().unwrap(),
            user: "a".into(),
            usage_days: 10,
        }];
        let rows = rows_from_usage(&past, november.months());
        assert_eq!(rows[0].days_per_month, 10.0);
        let e = estimate(1, &rows, rates, &PACKS).unwrap();
        assert_eq!(e.tokens_per_month, 70);
        let february = crate::rules::calendar::Period::checked(day(2, 1), day(2, 28)).unwrap();
        assert_eq!(february.months(), 1.0);
        let half = crate::rules::calendar::Period::checked(day(11, 16), day(12, 31)).unwrap();
        assert_eq!(half.months(), 1.5);
    }

    #[test]
    fn rows_from_three_months_of_usage() {
        let past = [
            PastUse {
                product: "autocad".parse().unwrap(),
                user: "a".into(),
                usage_days: 30,
            },
            PastUse {
                product: "autocad".parse().unwrap(),
                user: "b".into(),
                usage_days: 6,
            },
            PastUse {
                product: "revit".parse().unwrap(),
                user: "a".into(),
                usage_days: 0,
            },
        ];
        // August to October: three whole months.
        let quarter = crate::rules::calendar::Period::checked(
            chrono::NaiveDate::from_ymd_opt(2026, 8, 1).unwrap(),
            chrono::NaiveDate::from_ymd_opt(2026, 10, 31).unwrap(),
        )
        .unwrap();
        let rows = rows_from_usage(&past, quarter.months());
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].product.as_str(), rows[0].users), ("autocad", 2));
        assert_eq!(rows[0].days_per_month, 6.0);
    }
}
