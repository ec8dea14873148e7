//! The balance forecast: the burn rate of the last 30 days carried forward,
//! spending the earliest-expiring lot first (R3) and losing what a lot still
//! holds when it expires (R2). Also the balance of past days, for the
//! console's burn-down chart.

use chrono::{DateTime, Duration, NaiveDate, Utc};
use chrono_tz::Tz;
use flex_protocol::reports::{ExpiringLot, Forecast};

use super::calendar::{date_of, local_day, start_of};
use crate::ledger::{self, LotState};

/// Days of history the burn rate averages.
pub const BURN_DAYS: i64 = 30;

/// The forecast and the projected balance curve behind it.
#[derive(Debug, Clone, PartialEq)]
pub struct ForecastPlan {
    pub forecast: Forecast,
    /// (instant, balance) where the projected balance line bends: now, each lot
    /// spent, each lot expiring.
    pub projection: Vec<(DateTime<Utc>, u64)>,
}

/// Projects `lots` forward from `now` at the rate of `charged_last_30_days`.
pub fn forecast(
    lots: &[LotState],
    charged_last_30_days: u64,
    now: DateTime<Utc>,
    tz: Tz,
) -> ForecastPlan {
    let burn = charged_last_30_days as f64 / BURN_DAYS as f64;
    let mut order: Vec<&LotState> = lots
        .iter()
        .filter(|l| l.is_live(now) && l.remaining > 0)
        .collect();
    order.sort_by_key(|l| (l.expires_at, l.remaining, l.purchased_at, l.id));
    let mut balance = ledger::balance(lots, now);
    let start_balance = balance;
    let mut t = now;
    let mut projection = vec![(now, balance)];
    let mut expiring = Vec::new();
    for lot in order {
        let days_to_expiry = (lot.expires_at - t).num_seconds() as f64 / 86_400.0;
        let can_spend = burn * days_to_expiry;
        if burn > 0.0 && can_spend >= lot.remaining as f64 {
            let secs = (lot.remaining as f64 / burn * 86_400.0).round() as i64;
            t += Duration::seconds(secs);
            balance -= lot.remaining;
            projection.push((t, balance));
            continue;
        }
        // The epsilon keeps 0.7 × 10 from flooring to 6.
        let spent = ((can_spend + 1e-9).floor() as u64).min(lot.remaining);
        let unused = lot.remaining - spent;
        balance -= spent;
        if spent > 0 {
            projection.push((lot.expires_at, balance));
        }
        balance -= unused;
        t = lot.expires_at;
        projection.push((t, balance));
        expiring.push(ExpiringLot {
            lot_id: lot.id,
            remaining: lot.remaining,
            expires_at: lot.expires_at,
            projected_unused: unused,
        });
    }
    let (days_left, empty_on) = if burn > 0.0 {
        let days = (t - now).num_seconds().max(0) / 86_400;
        (Some(days as u64), Some(date_of(local_day(t, tz))))
    } else {
        (None, None)
    };
    ForecastPlan {
        forecast: Forecast {
            balance: start_balance,
            burn_per_day: (burn * 100.0).round() / 100.0,
            days_left,
            empty_on,
            expiring_unused: expiring,
        },
        projection,
    }
}

/// Tokens taken from one lot by one charge; negative when a refund of a
/// short run (R13) gave them back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spend {
    pub at: DateTime<Utc>,
    pub lot_id: i64,
    pub tokens: i64,
}

/// The balance at the end of each of the last `days` local days (today ends
/// at `now`), from today's lots and the spends since the first of those days.
pub fn balance_history(
    lots: &[LotState],
    spends: &[Spend],
    now: DateTime<Utc>,
    days: i64,
    tz: Tz,
) -> Vec<(NaiveDate, u64)> {
    let today = local_day(now, tz);
    (today - days as i32 + 1..=today)
        .map(|day| {
            let end = if day == today {
                now
            } else {
                start_of(date_of(day + 1), tz) - Duration::microseconds(1)
            };
            let balance = lots
                .iter()
                .filter(|l| l.purchased_at <= end && end < l.expires_at)
                .map(|l| {
                    let later: i64 = spends
                        .iter()
                        .filter(|s| s.lot_id == l.id && s.at > end)
                        .map(|s| s.tokens)
                        .sum();
                    l.remaining.saturating_add_signed(later)
                })
                .sum();
            (date_of(day), balance)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(m: u32, d: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, m, d, 12, 0, 0).unwrap()
    }

    fn lot(id: i64, tokens: u64, remaining: u64, expires: DateTime<Utc>) -> LotState {
        LotState {
            id,
            tokens,
            remaining,
            purchased_at: expires - Duration::days(365),
            expires_at: expires,
        }
    }

    #[test]
    fn a_lot_expiring_before_it_is_spent_loses_the_rest() {
        // 6 tokens a day; lot 1 (100 left) expires in 10 days: 60 spent, 40 lost.
        let later = Utc.with_ymd_and_hms(2027, 3, 31, 12, 0, 0).unwrap();
        let lots = [lot(1, 500, 100, at(11, 11)), lot(2, 500, 500, later)];
        let p = forecast(&lots, 180, at(11, 1), Tz::UTC);
        let f = &p.forecast;
        assert_eq!((f.balance, f.burn_per_day), (600, 6.0));
        assert_eq!(f.expiring_unused.len(), 1);
        assert_eq!(
            (
                f.expiring_unused[0].lot_id,
                f.expiring_unused[0].projected_unused
            ),
            (1, 40)
        );
        // Then lot 2's 500 last 83⅓ days from 11-11: 2027-02-02.
        assert_eq!(
            f.empty_on,
            Some(NaiveDate::from_ymd_opt(2027, 2, 2).unwrap())
        );
        assert_eq!(f.days_left, Some(93));
        assert_eq!(p.projection.first(), Some(&(at(11, 1), 600)));
        assert_eq!(p.projection.last().unwrap().1, 0);
    }

    #[test]
    fn nothing_charged_in_30_days_means_no_end_date() {
        let lots = [lot(1, 500, 300, at(12, 31))];
        let f = forecast(&lots, 0, at(11, 1), Tz::UTC).forecast;
        assert_eq!((f.burn_per_day, f.days_left, f.empty_on), (0.0, None, None));
        assert_eq!(f.expiring_unused[0].projected_unused, 300);
    }

    #[test]
    fn lots_spent_in_time_expire_empty() {
        let lots = [lot(1, 100, 100, at(12, 31)), lot(2, 100, 100, at(12, 30))];
        let f = forecast(&lots, 300, at(11, 1), Tz::UTC).forecast;
        assert!(f.expiring_unused.is_empty());
        assert_eq!(
            (f.days_left, f.empty_on),
            (
                Some(20),
                Some(NaiveDate::from_ymd_opt(2026, 11, 21).unwrap())
            )
        );
        // Expired lots are not in the balance.
        let f = forecast(&[lot(1, 100, 100, at(10, 1))], 30, at(11, 1), Tz::UTC).forecast;
        assert_eq!((f.balance, f.days_left), (0, Some(0)));
    }

    #[test]
    fn past_balance_adds_back_later_spends() {
        let bought = at(11, 1);
        let l = LotState {
            id: 1,
            tokens: 500,
            remaining: 486,
            purchased_at: bought,
            expires_at: ledger::expiry_of(bought),
        };
        let spends = [
            Spend {
                at: at(11, 2),
                lot_id: 1,
                tokens: 7,
            },
            Spend {
                at: at(11, 3),
                lot_id: 1,
                tokens: 7,
            },
        ];
        let h = balance_history(&[l], &spends, at(11, 3), 4, Tz::UTC);
        let b: Vec<u64> = h.iter().map(|(_, b)| *b).collect();
        // 10-31: not bought yet; 11-01: 500; 11-02: 493; 11-03 (now): 486.
        assert_eq!(b, vec![0, 500, 493, 486]);
    }

    #[test]
    fn past_balance_takes_back_a_later_refund() {
        let bought = at(11, 1);
        // 7 spent on the 2nd and given back on the 3rd (a short run, R13).
        let l = LotState {
            id: 1,
            tokens: 500,
            remaining: 500,
            purchased_at: bought,
            expires_at: ledger::expiry_of(bought),
        };
        let spends = [
            Spend {
                at: at(11, 2),
                lot_id: 1,
                tokens: 7,
            },
            Spend {
                at: at(11, 3),
                lot_id: 1,
                tokens: -7,
            },
        ];
        let h = balance_history(&[l], &spends, at(11, 4), 3, Tz::UTC);
        let b: Vec<u64> = h.iter().map(|(_, b)| *b).collect();
        // 11-02: 493; 11-03: 500 again; 11-04 (now): 500.
        assert_eq!(b, vec![493, 500, 500]);
    }
}
