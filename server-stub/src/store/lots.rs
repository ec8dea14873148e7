//! Token lots: purchase (R2), balance, and spending a charge across lots (R3).

use chrono::{DateTime, Utc};
use flex_protocol::api::{Balance, Lot, LotShare};

use super::db::{params, Conn};
use super::{notices, parse_ts, ts, Result, Store, StoreError};
use crate::ledger::{self, Insufficient, LotState};

pub(crate) fn load_lots(conn: &Conn<'_>) -> Result<Vec<LotState>> {
    conn.query_all(
        "SELECT id, tokens, remaining, purchased_at, expires_at FROM lots ORDER BY id",
        params![],
        |r| {
            Ok(LotState {
                id: r.get(0)?,
                tokens: r.get(1)?,
                remaining: r.get(2)?,
                purchased_at: parse_ts(r.str(3)?)?,
                expires_at: parse_ts(r.str(4)?)?,
            })
        },
    )
}

pub(crate) fn balance_of(conn: &Conn<'_>, now: DateTime<Utc>) -> Result<u64> {
    Ok(ledger::balance(&load_lots(conn)?, now))
}

/// Takes `amount` from the lots in R3 order and returns each lot's share.
pub(crate) fn spend(
    conn: &Conn<'_>,
    amount: u64,
    now: DateTime<Utc>,
) -> Result<std::result::Result<Vec<LotShare>, Insufficient>> {
    if amount == 0 {
        return Ok(Ok(Vec::new()));
    }
    let lots = load_lots(conn)?;
    let shares = match ledger::plan_spend(&lots, amount, now) {
        Ok(s) => s,
        Err(e) => return Ok(Err(e)),
    };
    for s in &shares {
        conn.execute(
            "UPDATE lots SET remaining = remaining - ?1 WHERE id = ?2",
            params![s.tokens, s.lot_id],
        )?;
    }
    Ok(Ok(shares))
}

fn to_wire(l: &LotState) -> Lot {
    Lot {
        id: l.id,
        tokens: l.tokens,
        remaining: l.remaining,
        purchased_at: l.purchased_at,
        expires_at: l.expires_at,
    }
}

impl Store {
    /// Buys one pack (R2); the size must be one of the policy's pack sizes.
    pub fn buy_tokens(&self, tokens: u64) -> Result<Lot> {
        let packs = &self.policy().pack_sizes;
        if !packs.contains(&tokens) {
            let list: Vec<String> = packs.iter().map(u64::to_string).collect();
            return Err(StoreError::invalid(
                "tokens",
                format!("{tokens} is not a pack size; packs are {}", list.join(", ")),
            ));
        }
        let now = self.now();
        let expires = ledger::expiry_of(now);
        self.write(|tx| {
            let id: i64 = tx.query_one(
                "INSERT INTO lots (tokens, remaining, purchased_at, expires_at) VALUES (?1, ?1, ?2, ?3)
                 RETURNING id",
                params![tokens, ts(now), ts(expires)],
                |r| r.get(0),
            )?;
            notices::after_purchase(tx, self.policy(), now)?;
            Ok(Lot {
                id,
                tokens,
                remaining: tokens,
                purchased_at: now,
                expires_at: expires,
            })
        })
    }

    pub fn balance(&self) -> Result<Balance> {
        let now = self.now();
        let ratio = self.policy().low_balance_ratio;
        self.write(|tx| {
            notices::check_expiring(tx, now)?;
            let lots = load_lots(tx)?;
            Ok(Balance {
                balance: ledger::balance(&lots, now),
                low_balance_threshold: ledger::low_balance_threshold(
                    ledger::live_purchased(&lots, now),
                    ratio,
                ),
                lots: lots.iter().map(to_wire).collect(),
            })
        })
    }
}
