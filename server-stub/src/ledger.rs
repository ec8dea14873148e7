//! Token arithmetic without storage: lot expiry (R2), the spending order (R3) and
//! the low-balance line (R9). The store loads lots, asks this module what to do,
//! and writes the answer in the same transaction.

use chrono::{DateTime, Months, Utc};
use flex_protocol::api::LotShare;

/// A lot as the spending rule sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LotState {
    pub id: i64,
    pub tokens: u64,
    pub remaining: u64,
    pub purchased_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

impl LotState {
    /// A lot is spendable strictly before its expiry instant.
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        now < self.expires_at
    }
}

/// One calendar year after purchase; 29 February becomes 28 February.
pub fn expiry_of(purchased_at: DateTime<Utc>) -> DateTime<Utc> {
    purchased_at
        .checked_add_months(Months::new(12))
        .expect("a purchase date one year before the end of time")
}

/// What is left in unexpired lots.
pub fn balance(lots: &[LotState], now: DateTime<Utc>) -> u64 {
    lots.iter()
        .filter(|l| l.is_live(now))
        .map(|l| l.remaining)
        .sum()
}

/// Tokens bought in lots that have not expired, the base of the low-balance line.
pub fn live_purchased(lots: &[LotState], now: DateTime<Utc>) -> u64 {
    lots.iter()
        .filter(|l| l.is_live(now))
        .map(|l| l.tokens)
        .sum()
}

/// The balance at or below which `low_balance` is raised: 500 bought, ratio 0.2 → 100.
pub fn low_balance_threshold(live_purchased: u64, ratio: f64) -> u64 {
    (live_purchased as f64 * ratio).floor() as u64
}

/// The balance does not cover the charge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("balance {balance} does not cover {needed} tokens")]
pub struct Insufficient {
    pub balance: u64,
    pub needed: u64,
}

/// Which lots pay `amount`, in R3 order: the lot that expires first, then the
/// smaller remainder, then the older purchase. All or nothing: never a partial
/// charge, never a negative lot.
pub fn plan_spend(
    lots: &[LotState],
    amount: u64,
    now: DateTime<Utc>,
) -> Result<Vec<LotShare>, Insufficient> {
    let available = balance(lots, now);
    if available < amount {
        return Err(Insufficient {
            balance: available,
            needed: amount,
        });
    }
    let mut order: Vec<&LotState> = lots
        .iter()
        .filter(|l| l.is_live(now) && l.remaining > 0)
        .collect();
    order.sort_by_key(|l| (l.expires_at, l.remaining, l.purchased_at, l.id));
    let mut left = amount;
    let mut shares = Vec::new();
    for lot in order {
        if left == 0 {
            break;
        }
        let take = lot.remaining.min(left);
        shares.push(LotShare {
            lot_id: lot.id,
            tokens: take,
        });
        left -= take;
    }
    debug_assert_eq!(left, 0);
    Ok(shares)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(y: i32, mo: u32, d: u32, h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, 0, 0).unwrap()
    }

    fn lot(id: i64, remaining: u64, bought: DateTime<Utc>) -> LotState {
        LotState {
            id,
            tokens: remaining,
            remaining,
            purchased_at: bought,
            expires_at: expiry_of(bought),
        }
    }

    #[test]
    fn expiry_is_one_calendar_year() {
        assert_eq!(expiry_of(at(2026, 3, 15, 10)), at(2027, 3, 15, 10));
        assert_eq!(expiry_of(at(2028, 2, 29, 9)), at(2029, 2, 28, 9));
    }

    #[test]
    fn march_is_spent_before_may() {
        let lots = [
            lot(2, 100, at(2026, 5, 1, 0)),
            lot(1, 100, at(2026, 3, 1, 0)),
        ];
        let shares = plan_spend(&lots, 7, at(2026, 6, 1, 0)).unwrap();
        assert_eq!(
            shares,
            vec![LotShare {
                lot_id: 1,
                tokens: 7
            }]
        );
    }

    #[test]
    fn a_charge_spans_lots_and_records_each_share() {
        let lots = [lot(1, 5, at(2026, 3, 1, 0)), lot(2, 100, at(2026, 5, 1, 0))];
        let shares = plan_spend(&lots, 7, at(2026, 6, 1, 0)).unwrap();
        assert_eq!(
            shares,
            vec![
                LotShare {
                    lot_id: 1,
                    tokens: 5
                },
                LotShare {
                    lot_id: 2,
                    tokens: 2
                }
            ]
        );
    }

    #[test]
    fn ties_go_to_the_smaller_then_older_lot() {
        let t = at(2026, 3, 1, 0);
        let mut big = lot(1, 100, t);
        big.purchased_at = t - chrono::Duration::days(1); // older but larger
        big.expires_at = expiry_of(t);
        let small = lot(2, 10, t);
        let shares = plan_spend(&[big, small], 3, at(2026, 4, 1, 0)).unwrap();
        assert_eq!(shares[0].lot_id, 2);
    }

    #[test]
    fn expired_lots_are_never_spent_and_refusal_is_whole() {
        let lots = [lot(1, 100, at(2025, 1, 1, 0)), lot(2, 5, at(2026, 1, 1, 0))];
        let now = at(2026, 1, 1, 1);
        assert_eq!(balance(&lots, now), 5);
        assert_eq!(
            plan_spend(&lots, 7, now),
            Err(Insufficient {
                balance: 5,
                needed: 7
            })
        );
    }

    #[test]
    fn threshold_is_twenty_percent() {
        assert_eq!(low_balance_threshold(500, 0.2), 100);
    }
}
