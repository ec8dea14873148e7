//! R9 balance notices, decided from the lots and whether each notice is armed:
//! `low_balance` once when a charge takes the balance to or below the line
//! (20% of the tokens in unexpired lots), re-armed when a purchase lifts it
//! above; `out_of_tokens` at zero or on a refused charge, re-armed by a
//! purchase; `tokens_expiring` once per lot with tokens left within 90 days of
//! its expiry. Beside them, for admins only, `device_users` once per device and
//! tenant day when one device speaks for more distinct users than
//! `policy.device_users_alert` (a shared workstation, or a device credential
//! used to charge other people).

use chrono::{DateTime, Duration, Utc};
use flex_protocol::api::NoticeKind;

use crate::ledger::{self, LotState};

/// How far ahead `tokens_expiring` looks.
pub const EXPIRY_NOTICE_DAYS: i64 = 90;

/// Whether each once-only notice may be raised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Armed {
    pub low: bool,
    pub out: bool,
}

/// A notice to raise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Raise {
    pub kind: NoticeKind,
    pub message: String,
}

/// After tokens were spent.
pub fn after_charge(
    lots: &[LotState],
    ratio: f64,
    armed: Armed,
    now: DateTime<Utc>,
) -> (Vec<Raise>, Armed) {
    let balance = ledger::balance(lots, now);
    let bought = ledger::live_purchased(lots, now);
    let line = ledger::low_balance_threshold(bought, ratio);
    let mut out = Vec::new();
    let mut next = armed;
    if balance <= line && armed.low {
        out.push(Raise {
            kind: NoticeKind::LowBalance,
            message: format!(
                "token balance is {balance}, at or below {:.0}% of the {bought} tokens in unexpired lots; buy tokens to keep Flex users working",
                ratio * 100.0
            ),
        });
        next.low = false;
    }
    if balance == 0 && armed.out {
        out.push(Raise {
            kind: NoticeKind::OutOfTokens,
            message: "token balance is 0: Flex launches are refused until tokens are bought".into(),
        });
        next.out = false;
    }
    (out, next)
}

/// A charge of `needed` was refused at `balance`.
pub fn on_refusal(
    user: &str,
    product: &str,
    balance: u64,
    needed: u64,
    armed: Armed,
) -> (Vec<Raise>, Armed) {
    if !armed.out {
        return (Vec::new(), armed);
    }
    (
        vec![Raise {
            kind: NoticeKind::OutOfTokens,
            message: format!("{user} was refused {product}: it costs {needed} tokens and the balance is {balance}"),
        }],
        Armed { out: false, ..armed },
    )
}

/// After a purchase: re-arms what the new balance is clear of.
pub fn after_purchase(lots: &[LotState], ratio: f64, armed: Armed, now: DateTime<Utc>) -> Armed {
    let balance = ledger::balance(lots, now);
    let line = ledger::low_balance_threshold(ledger::live_purchased(lots, now), ratio);
    Armed {
        low: armed.low || balance > line,
        out: armed.out || balance > 0,
    }
}

/// Lots (not yet noticed) with tokens left that expire within 90 days.
pub fn expiring(lots: &[(LotState, bool)], now: DateTime<Utc>) -> Vec<(i64, Raise)> {
    let horizon = now + Duration::days(EXPIRY_NOTICE_DAYS);
    lots.iter()
        .filter(|(l, noticed)| {
            !noticed && l.remaining > 0 && l.expires_at > now && l.expires_at <= horizon
        })
        .map(|(l, _)| {
            (
                l.id,
                Raise {
                    kind: NoticeKind::TokensExpiring,
                    message: format!(
                        "lot {}: {} tokens expire on {}; unused tokens are lost",
                        l.id,
                        l.remaining,
                        l.expires_at.format("%Y-%m-%d %H:%M UTC")
                    ),
                },
            )
        })
        .collect()
}

/// Longest list of users a `device_users` notice names.
const DEVICE_USERS_LISTED: usize = 20;

/// Whether a device that spoke for `users` people in a day is above `alert`.
pub fn device_users_over(users: u64, alert: u32) -> bool {
    users > u64::from(alert)
}

/// The notice for device `device` (enrolled as `hostname`), which spoke for
/// `users` on `date`, more than `alert`.
pub fn device_users(
    device: &str,
    hostname: &str,
    date: chrono::NaiveDate,
    users: &[String],
    alert: u32,
) -> Raise {
    let mut named = users
        .iter()
        .take(DEVICE_USERS_LISTED)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if users.len() > DEVICE_USERS_LISTED {
        named.push_str(", ...");
    }
    Raise {
        kind: NoticeKind::DeviceUsers,
        message: format!(
            "device {device} ({hostname}) claimed for or looked up {} different users on \
             {date}, more than policy.device_users_alert = {alert}: {named}. A shared \
             workstation does this; otherwise its credential may be charging other people: \
             check it with flex-admin devices and revoke it if it is not expected",
            users.len()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn lot(id: i64, tokens: u64, remaining: u64) -> LotState {
        let bought = Utc.with_ymd_and_hms(2026, 3, 15, 10, 0, 0).unwrap();
        LotState {
            id,
            tokens,
            remaining,
            purchased_at: bought,
            expires_at: ledger::expiry_of(bought),
        }
    }

    const ARMED: Armed = Armed {
        low: true,
        out: true,
    };

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 6, 1, 8, 0, 0).unwrap()
    }

    #[test]
    fn five_hundred_bought_low_balance_at_one_hundred_once() {
        let (n, armed) = after_charge(&[lot(1, 500, 101)], 0.2, ARMED, now());
        assert!(n.is_empty());
        let (n, armed) = after_charge(&[lot(1, 500, 100)], 0.2, armed, now());
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].kind, NoticeKind::LowBalance);
        assert!(n[0]
            .message
            .starts_with("token balance is 100, at or below 20% of the 500 tokens"));
        assert!(!armed.low);
        // Not again until a purchase lifts the balance above the line.
        let (n, armed) = after_charge(&[lot(1, 500, 93)], 0.2, armed, now());
        assert!(n.is_empty());
        let armed = after_purchase(&[lot(1, 500, 93), lot(2, 500, 500)], 0.2, armed, now());
        assert!(armed.low);
    }

    #[test]
    fn out_of_tokens_at_zero_or_on_a_refusal_once() {
        let (n, armed) = after_charge(
            &[lot(1, 500, 0)],
            0.2,
            Armed {
                low: false,
                out: true,
            },
            now(),
        );
        assert_eq!(
            n.iter().map(|r| r.kind).collect::<Vec<_>>(),
            vec![NoticeKind::OutOfTokens]
        );
        let (n, _) = on_refusal("ada@x.com", "autocad", 0, 7, armed);
        assert!(n.is_empty(), "already raised");
        let (n, armed) = on_refusal("ada@x.com", "autocad", 3, 7, ARMED);
        assert_eq!(
            n[0].message,
            "ada@x.com was refused autocad: it costs 7 tokens and the balance is 3"
        );
        assert!(!armed.out);
    }

    #[test]
    fn device_users_above_the_alert_name_the_device_and_the_users() {
        assert!(!device_users_over(10, 10));
        assert!(device_users_over(11, 10));
        let date = chrono::NaiveDate::from_ymd_opt(2026, 11, 2).unwrap();
        let users: Vec<String> = (0..25).map(|i| format!("u{i:02}@x.com")).collect();
        let n = device_users("d1", "ws-1", date, &users[..11], 10);
        assert_eq!(n.kind, NoticeKind::DeviceUsers);
        assert!(
            n.message.starts_with(
                "device d1 (ws-1) claimed for or looked up 11 different users on 2026-11-02, \
                 more than policy.device_users_alert = 10: u00@x.com, u01@x.com,"
            ),
            "{}",
            n.message
        );
        let long = device_users("d1", "ws-1", date, &users, 10).message;
        assert!(
            long.contains("u19@x.com, ...") && !long.contains("u20@x.com"),
            "{long}"
        );
    }

    #[test]
    fn lots_expiring_within_ninety_days_once() {
        let l = lot(1, 500, 40); // expires 2027-03-15 10:00
        let before = Utc.with_ymd_and_hms(2026, 12, 15, 9, 0, 0).unwrap();
        let within = Utc.with_ymd_and_hms(2026, 12, 15, 10, 0, 0).unwrap();
        assert!(expiring(&[(l.clone(), false)], before).is_empty());
        let due = expiring(&[(l.clone(), false)], within);
        assert_eq!(
            due[0].1.message,
            "lot 1: 40 tokens expire on 2027-03-15 10:00 UTC; unused tokens are lost"
        );
        assert!(
            expiring(&[(l.clone(), true)], within).is_empty(),
            "noticed already"
        );
        assert!(
            expiring(&[(lot(2, 500, 0), false)], within).is_empty(),
            "nothing left to lose"
        );
    }
}
