//! Token lots: purchase (R2), balance, and spending a charge across lots (R3).

use chrono::{DateTime, Utc};
use flex_protocol::api::{Balance, Lot, LotShare};
use rusqlite::{params, Connection};

use super::{notices, parse_ts, ts, Result, Store, StoreError};
use crate::ledger::{self, Insufficient, LotState};

pub(crate) fn load_lots(conn: &Connection) -> Result<Vec<LotState>> {
    let mut stmt = conn
        .prepare("SELECT id, tokens, remaining, purchased_at, expires_at FROM lots ORDER BY id")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, String>(4)?,
        ))
    })?;
    let mut lots = Vec::new();
    for row in rows {
        let (id, tokens, remaining, bought, expires) = row?;
        lots.push(LotState {
            id,
            tokens: tokens as u64,
            remaining: remaining as u64,
            purchased_at: parse_ts(&bought)?,
            expires_at: parse_ts(&expires)?,
        });
    }
    Ok(lots)
}

pub(crate) fn balance_of(conn: &Connection, now: DateTime<Utc>) -> Result<u64> {
    Ok(ledger::balance(&load_lots(conn)?, now))
}

/// Takes `amount` from the lots in R3 order and returns each lot's share.
pub(crate) fn spend(
    conn: &Connection,
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
            params![s.tokens as i64, s.lot_id],
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
            return Err(StoreError::Invalid(format!(
                "{tokens} is not a pack size; packs are {}",
                list.join(", ")
            )));
        }
        let now = self.now();
        let expires = ledger::expiry_of(now);
        self.write(|tx| {
            tx.execute(
                "INSERT INTO lots (tokens, remaining, purchased_at, expires_at) VALUES (?1, ?1, ?2, ?3)",
                params![tokens as i64, ts(now), ts(expires)],
            )?;
            let id = tx.last_insert_rowid();
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
