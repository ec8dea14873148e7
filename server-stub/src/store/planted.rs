//! Known bugs the deterministic simulation (`flex-sim`) plants in the real
//! store to prove that its invariants find them. Compiled only with the
//! `planted-bugs` feature, and inert unless [`Store::with_planted_bug`] is
//! called, which only the simulation does.

use chrono::{DateTime, Utc};

use super::db::{params, Conn};
use super::lots::spend;
use super::{ts, Result, Store, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlantedBug {
    /// A repeated claim (same id, same body) is answered as the first one
    /// was, and charged again.
    DoubleChargeOnDuplicate,
    /// A repeated refund request is answered as the first one was, and the
    /// refund is made again.
    RefundTwice,
}

impl Store {
    /// Plants `bug` in this store (the simulation's proof that it is found).
    pub fn with_planted_bug(mut self, bug: PlantedBug) -> Self {
        self.planted = Some(bug);
        self
    }

    pub(crate) fn planted(&self) -> Option<PlantedBug> {
        self.planted
    }
}

/// The bug itself: every charge of `claim_id` is made once more, paid from
/// the lots like the first.
pub(crate) fn charge_again(tx: &Conn<'_>, claim_id: &str, now: DateTime<Utc>) -> Result<()> {
    let rows: Vec<(i64, u64)> = tx.query_all(
        "SELECT id, tokens FROM charges WHERE claim_id = ?1 ORDER BY id",
        params![claim_id],
        |r| Ok((r.get(0)?, r.get::<i64>(1)? as u64)),
    )?;
    if let Some((id, tokens)) = rows.first() {
        if spend(tx, *tokens, now)?.is_err() {
            return Err(StoreError::Conflict(
                "planted double charge: no tokens".into(),
            ));
        }
        tx.execute(
            "INSERT INTO charges (claim_id, \"user\", product, version, kind, source, window_id, results, tokens, device_id, created_at)
             SELECT claim_id, \"user\", product, version, kind, source, window_id, results, tokens, device_id, ?2
             FROM charges WHERE id = ?1",
            params![id, ts(now)],
        )?;
    }
    Ok(())
}

/// The bug itself: the refund of window `window_id`, if one was made, is
/// made once more, back to the same lots.
pub(crate) fn refund_again(tx: &Conn<'_>, window_id: &str, _now: DateTime<Utc>) -> Result<()> {
    // The schema keeps a second refund row out (`refunds.window_id` and
    // `charge_id` are UNIQUE), so the bug is planted as it would really
    // happen: the lots are credited again with the first refund's shares.
    let shares: Vec<(i64, i64)> = tx.query_all(
        "SELECT rl.lot_id, rl.tokens FROM refund_lots rl JOIN refunds r ON r.id = rl.refund_id
         WHERE r.window_id = ?1",
        params![window_id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    for (lot, n) in shares {
        tx.execute(
            "UPDATE lots SET remaining = remaining + ?1 WHERE id = ?2",
            params![n, lot],
        )?;
    }
    Ok(())
}
