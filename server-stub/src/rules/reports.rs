//! Usage reports (R10): tokens and usage days by product or by user over a
//! period, with a weekly breakdown.
//!
//! The input is the store's rollup: each (user, product) is declared once as
//! a numbered pair, then its facts arrive by day (the edges of a period) or by
//! whole week: how many usage days and how many tokens. A day with at least one
//! window is one usage day of that (user, product). Facts stream through
//! [`UsageAccumulator`] so a year of a large tenant is never held as a list,
//! and each fact is a few integer operations: no string is hashed per fact.

use std::collections::HashMap;

use flex_protocol::reports::{ReportBy, UsageReport, UsageRow, WeekUsage};

use super::calendar::{date_of, day_number, week_start, Period};

/// One (user, product, day) of usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DayUsage {
    /// The pair, as declared with [`UsageAccumulator::pair`].
    pub pair: u32,
    /// Day number in the tenant's zone (see [`super::calendar`]).
    pub day: i32,
    /// Windows that started that day (a usage day when > 0).
    pub windows: u64,
    pub tokens: u64,
}

/// One (user, product, week) of usage: a whole week inside the period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeekFact {
    pub pair: u32,
    /// Day number of the week's Monday.
    pub week: i32,
    pub usage_days: u64,
    pub tokens: u64,
}

#[derive(Default)]
struct RowAcc {
    tokens: u64,
    usage_days: u64,
    /// Distinct users (by product) or products (by user): one pair each.
    others: u64,
    /// (tokens, usage days) per week of the period.
    weeks: Vec<(u64, u64)>,
}

#[derive(Clone, Copy)]
struct PairSlot {
    /// Index of the row (the user or the product) the pair counts in.
    row: u32,
    /// Whether the pair has counted yet, for the row's `others`.
    seen: bool,
}

/// Folds declared pairs' facts into a report.
pub struct UsageAccumulator {
    by: ReportBy,
    period: Period,
    first_day: i32,
    last_day: i32,
    first_week: i32,
    weeks: usize,
    keys: HashMap<String, u32>,
    pairs: Vec<Option<PairSlot>>,
    /// Per key, in the order first declared: its name and, once it has usage, its sums.
    rows: Vec<(String, Option<RowAcc>)>,
}

impl UsageAccumulator {
    pub fn new(by: ReportBy, period: Period) -> Self {
        let first_day = day_number(period.from);
        let last_day = day_number(period.to);
        let first_week = week_start(first_day);
        let weeks = ((week_start(last_day) - first_week) / 7 + 1) as usize;
        UsageAccumulator {
            by,
            period,
            first_day,
            last_day,
            first_week,
            weeks,
            keys: HashMap::new(),
            pairs: Vec::new(),
            rows: Vec::new(),
        }
    }

    /// Declares pair `id` as (user, product); its facts may follow.
    pub fn pair(&mut self, id: u32, user: &str, product: &str) {
        let key = match self.by {
            ReportBy::Product => product,
            ReportBy::User => user,
        };
        let row = match self.keys.get(key) {
            Some(&r) => r,
            None => {
                let r = self.rows.len() as u32;
                self.rows.push((key.to_owned(), None));
                self.keys.insert(key.to_owned(), r);
                r
            }
        };
        let i = id as usize;
        if self.pairs.len() <= i {
            self.pairs.resize(i + 1, None);
        }
        self.pairs[i] = Some(PairSlot { row, seen: false });
    }

    /// Adds one day; days outside the period or with nothing in them are ignored.
    pub fn add(&mut self, f: &DayUsage) {
        if f.day < self.first_day || f.day > self.last_day {
            return;
        }
        self.count(
            f.pair,
            week_start(f.day),
            u64::from(f.windows > 0),
            f.tokens,
        );
    }

    /// Adds a whole week, which must lie inside the period.
    pub fn add_week(&mut self, f: &WeekFact) {
        debug_assert!(f.week >= self.first_day && f.week + 6 <= self.last_day);
        self.count(f.pair, f.week, f.usage_days, f.tokens);
    }

    fn count(&mut self, pair: u32, week: i32, usage_days: u64, tokens: u64) {
        if usage_days == 0 && tokens == 0 {
            return;
        }
        // The store declares every pair it reads facts of.
        let Some(Some(slot)) = self.pairs.get_mut(pair as usize) else {
            debug_assert!(false, "pair {pair} was not declared");
            return;
        };
        let first = !slot.seen;
        slot.seen = true;
        let weeks = self.weeks;
        let row = self.rows[slot.row as usize]
            .1
            .get_or_insert_with(|| RowAcc {
                weeks: vec![(0, 0); weeks],
                ..RowAcc::default()
            });
        row.tokens += tokens;
        row.usage_days += usage_days;
        row.others += u64::from(first);
        let w = ((week - self.first_week) / 7) as usize;
        row.weeks[w].0 += tokens;
        row.weeks[w].1 += usage_days;
    }

    /// The report: rows by tokens (descending), then key; weeks without usage
    /// left out.
    pub fn finish(self, timezone: &str) -> UsageReport {
        let first_week = self.first_week;
        let by = self.by;
        let mut rows: Vec<UsageRow> = self
            .rows
            .into_iter()
            .filter_map(|(key, acc)| acc.map(|acc| (key, acc)))
            .map(|(key, acc)| UsageRow {
                key,
                tokens: acc.tokens,
                usage_days: acc.usage_days,
                users: (by == ReportBy::Product).then_some(acc.others),
                products: (by == ReportBy::User).then_some(acc.others),
                weeks: acc
                    .weeks
                    .iter()
                    .enumerate()
                    .filter(|(_, (t, d))| *t > 0 || *d > 0)
                    .map(|(i, &(tokens, usage_days))| WeekUsage {
                        week_start: date_of(first_week + 7 * i as i32),
                        tokens,
                        usage_days,
                    })
                    .collect(),
            })
            .collect();
        rows.sort_by(|a, b| b.tokens.cmp(&a.tokens).then_with(|| a.key.cmp(&b.key)));
        UsageReport {
            from: self.period.from,
            to: self.period.to,
            timezone: timezone.to_owned(),
            by,
            total_tokens: rows.iter().map(|r| r.tokens).sum(),
            rows,
        }
    }
}

/// The report as CSV: one line per row (weeks are in the JSON form only).
pub fn to_csv(report: &UsageReport) -> String {
    let count = match report.by {
        ReportBy::Product => "users",
        ReportBy::User => "products",
    };
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([report.by.as_str(), "tokens", "usage_days", count])
        .expect("write to memory");
    for r in &report.rows {
        let n = r.users.or(r.products).unwrap_or(0);
        w.write_record([
            r.key.as_str(),
            &r.tokens.to_string(),
            &r.usage_days.to_string(),
            &n.to_string(),
        ])
        .expect("write to memory");
    }
    String::from_utf8(w.into_inner().expect("flush to memory")).expect("csv of utf-8 is utf-8")
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    fn d(m: u32, day: u32) -> i32 {
        day_number(NaiveDate::from_ymd_opt(2026, m, day).unwrap())
    }

    /// A day of usage named by user and product, as the tests write it.
    #[derive(Clone, Copy)]
    struct Day<'a> {
        user: &'a str,
        product: &'a str,
        day: i32,
        windows: u64,
        tokens: u64,
    }

    fn fact<'a>(user: &'a str, product: &'a str, day: i32, tokens: u64) -> Day<'a> {
        Day {
            user,
            product,
            day,
            windows: 1,
            tokens,
        }
    }

    /// Numbers each (user, product) as the store does and adds the days.
    fn add_days(acc: &mut UsageAccumulator, facts: &[Day<'_>]) {
        let mut ids: HashMap<(&str, &str), u32> = HashMap::new();
        for f in facts {
            let next = ids.len() as u32;
            let id = *ids.entry((f.user, f.product)).or_insert_with(|| {
                acc.pair(next, f.user, f.product);
                next
            });
            acc.add(&DayUsage {
                pair: id,
                day: f.day,
                windows: f.windows,
                tokens: f.tokens,
            });
        }
    }

    fn report(by: ReportBy, facts: &[Day<'_>]) -> UsageReport {
        let period = Period::month("2026-11").unwrap();
        let mut acc = UsageAccumulator::new(by, period);
        add_days(&mut acc, facts);
        acc.finish("UTC")
    }

    #[test]
    fn seventeen_autocad_days_by_user_and_by_product() {
        let mut facts: Vec<Day> = (1..=17)
            .map(|i| fact("ada@x.com", "autocad", d(11, i), 7))
            .collect();
        // Bob holds a Revit subscription: usage days, no tokens.
        facts.extend((2..=4).map(|i| fact("bob@x.com", "revit", d(11, i), 0)));
        // A per-result job: tokens, no usage day.
        facts.push(Day {
            windows: 0,
            ..fact("bob@x.com", "recap-photo", d(11, 20), 2)
        });
        let by_user = report(ReportBy::User, &facts);
        assert_eq!(by_user.total_tokens, 121);
        let ada = &by_user.rows[0];
        assert_eq!(
            (ada.key.as_str(), ada.tokens, ada.usage_days, ada.products),
            ("ada@x.com", 119, 17, Some(1))
        );
        let bob = &by_user.rows[1];
        assert_eq!((bob.tokens, bob.usage_days, bob.products), (2, 3, Some(2)));
        // 2026-11-01 is a Sunday: Ada's first day is in the week of 2026-10-26.
        assert_eq!(
            ada.weeks[0].week_start,
            NaiveDate::from_ymd_opt(2026, 10, 26).unwrap()
        );
        assert_eq!((ada.weeks[0].tokens, ada.weeks[0].usage_days), (7, 1));
        assert_eq!((ada.weeks[1].tokens, ada.weeks[1].usage_days), (49, 7));
        assert_eq!(ada.weeks.iter().map(|w| w.usage_days).sum::<u64>(), 17);

        let by_product = report(ReportBy::Product, &facts);
        let keys: Vec<_> = by_product
            .rows
            .iter()
            .map(|r| (r.key.as_str(), r.tokens, r.usage_days, r.users))
            .collect();
        assert_eq!(
            keys,
            vec![
                ("autocad", 119, 17, Some(1)),
                ("recap-photo", 2, 0, Some(1)),
                ("revit", 0, 3, Some(1))
            ]
        );
    }

    #[test]
    fn facts_outside_the_period_and_empty_weeks_are_left_out() {
        let facts = [
            fact("ada@x.com", "autocad", d(10, 31), 7),
            fact("ada@x.com", "autocad", d(11, 30), 7),
            fact("ada@x.com", "autocad", d(12, 1), 7),
        ];
        let r = report(ReportBy::User, &facts);
        assert_eq!(r.total_tokens, 7);
        assert_eq!(r.rows[0].weeks.len(), 1);
        assert_eq!(
            r.rows[0].weeks[0].week_start,
            NaiveDate::from_ymd_opt(2026, 11, 30).unwrap()
        );
        assert!(report(ReportBy::User, &[]).rows.is_empty());
    }

    #[test]
    fn whole_weeks_add_up_like_their_days() {
        let period = Period::month("2026-11").unwrap();
        let mut by_days = UsageAccumulator::new(ReportBy::User, period);
        let days: Vec<Day> = (9..=13)
            .map(|day| fact("ada@x.com", "autocad", d(11, day), 7))
            .collect();
        add_days(&mut by_days, &days);
        let mut by_week = UsageAccumulator::new(ReportBy::User, period);
        by_week.pair(0, "ada@x.com", "autocad");
        by_week.add_week(&WeekFact {
            pair: 0,
            week: d(11, 9),
            usage_days: 5,
            tokens: 35,
        });
        assert_eq!(by_days.finish("UTC"), by_week.finish("UTC"));
    }

    #[test]
    fn csv_has_the_same_rows() {
        let r = report(
            ReportBy::Product,
            &[
                fact("a@x.com", "autocad", d(11, 3), 7),
                fact("b@x.com", "autocad", d(11, 3), 7),
            ],
        );
        assert_eq!(
            to_csv(&r),
            "product,tokens,usage_days,users\nautocad,14,2,2\n"
        );
    }
}
