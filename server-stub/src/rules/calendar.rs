//! Days, weeks, months and periods in the tenant's time zone.
//!
//! A day is kept as its number since the common era (`NaiveDate::
//! num_days_from_ce`, 0001-01-01 = 1, a Monday), so that week arithmetic on a
//! million usage rows is integer arithmetic.

use chrono::{DateTime, Datelike, Days, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;

use super::Invalid;

/// Longest period a usage report covers.
pub const MAX_PERIOD_DAYS: i64 = 400;

/// The tenant's zone; the config check already refused a bad name.
pub fn zone(name: &str) -> Tz {
    name.parse().unwrap_or(Tz::UTC)
}

/// The day number of `t` in `tz`.
pub fn local_day(t: DateTime<Utc>, tz: Tz) -> i32 {
    t.with_timezone(&tz).date_naive().num_days_from_ce()
}

pub fn day_number(d: NaiveDate) -> i32 {
    d.num_days_from_ce()
}

pub fn date_of(day: i32) -> NaiveDate {
    NaiveDate::from_num_days_from_ce_opt(day).expect("a day number from a real date")
}

/// The Monday of the week holding `day`.
pub fn week_start(day: i32) -> i32 {
    day - (day - 1).rem_euclid(7)
}

/// The instant a local date begins. Where a zone skips midnight (a DST change
/// at 00:00) the day begins at the first local time that exists.
pub fn start_of(date: NaiveDate, tz: Tz) -> DateTime<Utc> {
    let mut t = date.and_hms_opt(0, 0, 0).expect("midnight");
    for _ in 0..4 {
        if let Some(local) = tz.from_local_datetime(&t).earliest() {
            return local.with_timezone(&Utc);
        }
        t += chrono::Duration::minutes(30);
    }
    Utc.from_utc_datetime(&date.and_hms_opt(0, 0, 0).expect("midnight"))
}

/// Inclusive dates of a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    pub from: NaiveDate,
    pub to: NaiveDate,
}

impl Period {
    pub fn days(&self) -> i64 {
        (self.to - self.from).num_days() + 1
    }

    /// How many calendar months the period covers: each month it touches
    /// counts for the share of its days inside the period, so November 1–30
    /// is exactly one month, and so is February 1–28.
    pub fn months(&self) -> f64 {
        let mut months = 0.0;
        let mut day = self.from;
        while day <= self.to {
            let first = day.with_day(1).expect("the 1st");
            let next = first
                .checked_add_months(chrono::Months::new(1))
                .expect("a next month");
            let in_month = (next - first).num_days() as f64;
            let end = self.to.min(next.pred_opt().expect("a last day"));
            months += ((end - day).num_days() + 1) as f64 / in_month;
            day = next;
        }
        months
    }

    /// `[start, end)` in UTC.
    pub fn bounds(&self, tz: Tz) -> (DateTime<Utc>, DateTime<Utc>) {
        let after = self
            .to
            .checked_add_days(Days::new(1))
            .expect("date in range");
        (start_of(self.from, tz), start_of(after, tz))
    }

    /// The calendar month `YYYY-MM`.
    pub fn month(text: &str) -> Result<Period, Invalid> {
        let bad = || {
            Invalid::new(
                "month",
                format!(
                    "month '{}' is not a month: write it as YYYY-MM, e.g. 2026-11",
                    cut(text)
                ),
            )
        };
        let (y, m) = text.trim().split_once('-').ok_or_else(bad)?;
        if y.len() != 4 || m.len() != 2 {
            return Err(bad());
        }
        let (y, m): (i32, u32) = (y.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
        let from = NaiveDate::from_ymd_opt(y, m, 1).ok_or_else(bad)?;
        let to = from
            .checked_add_months(chrono::Months::new(1))
            .and_then(|d| d.pred_opt())
            .ok_or_else(bad)?;
        Ok(Period { from, to })
    }

    /// `from` and `to` query parameters: both dates, `from <= to`, at most
    /// [`MAX_PERIOD_DAYS`] days.
    pub fn parse(from: Option<&str>, to: Option<&str>) -> Result<Period, Invalid> {
        let from = date_param("from", from)?;
        let to = date_param("to", to)?;
        Period::checked(from, to)
    }

    pub fn checked(from: NaiveDate, to: NaiveDate) -> Result<Period, Invalid> {
        if from > to {
            return Err(Invalid::new(
                "from",
                format!(
                    "from {from} is after to {to}: the period runs from 'from' to 'to', inclusive"
                ),
            ));
        }
        let p = Period { from, to };
        if p.days() > MAX_PERIOD_DAYS {
            return Err(Invalid::new("to", format!(
                "to {to} is {} days after from {from}: a period covers at most {MAX_PERIOD_DAYS} days",
                p.days() - 1
            )));
        }
        Ok(p)
    }
}

fn cut(s: &str) -> String {
    s.chars().take(40).collect()
}

/// A required `YYYY-MM-DD` parameter.
pub fn date_param(name: &str, value: Option<&str>) -> Result<NaiveDate, Invalid> {
    let Some(v) = value else {
        return Err(Invalid::new(
            name,
            format!("{name} is missing: give it as YYYY-MM-DD"),
        ));
    };
    NaiveDate::parse_from_str(v.trim(), "%Y-%m-%d").map_err(|_| {
        Invalid::new(
            name,
            format!("{name} '{}' is not a date: write it as YYYY-MM-DD", cut(v)),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).unwrap()
    }

    #[test]
    fn weeks_start_on_monday() {
        // 2026-11-02 is a Monday, 2026-11-08 a Sunday.
        assert_eq!(
            week_start(day_number(d(2026, 11, 2))),
            day_number(d(2026, 11, 2))
        );
        assert_eq!(
            week_start(day_number(d(2026, 11, 8))),
            day_number(d(2026, 11, 2))
        );
        assert_eq!(
            week_start(day_number(d(2026, 11, 9))),
            day_number(d(2026, 11, 9))
        );
        assert_eq!(
            date_of(week_start(day_number(d(2026, 1, 1)))),
            d(2025, 12, 29)
        );
    }

    #[test]
    fn a_late_utc_evening_is_the_next_day_in_paris() {
        let tz = zone("Europe/Paris");
        let t = Utc.with_ymd_and_hms(2026, 11, 8, 23, 30, 0).unwrap(); // Sunday UTC
        assert_eq!(date_of(local_day(t, tz)), d(2026, 11, 9)); // Monday in Paris
        assert_eq!(date_of(local_day(t, Tz::UTC)), d(2026, 11, 8));
    }

    #[test]
    fn periods_are_checked_and_named() {
        let p = Period::parse(Some("2026-11-01"), Some("2026-11-30")).unwrap();
        assert_eq!(p.days(), 30);
        let e = Period::parse(Some("2026-11-31"), Some("2026-12-01")).unwrap_err();
        assert!(
            e.message.starts_with("from '2026-11-31' is not a date"),
            "{e}"
        );
        let e = Period::parse(Some("2026-11-01"), None).unwrap_err();
        assert!(e.message.starts_with("to is missing"), "{e}");
        let e = Period::parse(Some("2026-11-02"), Some("2026-11-01")).unwrap_err();
        assert!(e.message.starts_with("from 2026-11-02 is after to"), "{e}");
        let e = Period::parse(Some("2025-01-01"), Some("2026-02-05")).unwrap_err();
        assert!(
            e.message.starts_with("to 2026-02-05 is 400 days after"),
            "{e}"
        );
        assert!(Period::parse(Some("2025-01-01"), Some("2026-02-04")).is_ok());
    }

    #[test]
    fn months_and_local_bounds() {
        let p = Period::month("2028-02").unwrap();
        assert_eq!((p.from, p.to), (d(2028, 2, 1), d(2028, 2, 29)));
        assert!(Period::month("2026-13")
            .unwrap_err()
            .message
            .contains("'2026-13'"));
        assert!(Period::month("11/2026").is_err());
        let (a, b) = Period::month("2026-11")
            .unwrap()
            .bounds(zone("Europe/Paris"));
        assert_eq!(a, Utc.with_ymd_and_hms(2026, 10, 31, 23, 0, 0).unwrap());
        assert_eq!(b, Utc.with_ymd_and_hms(2026, 11, 30, 23, 0, 0).unwrap());
    }
}
