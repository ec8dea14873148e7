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
            return Err(StoreError::Conflict("planted double charge: no tokens".into()));
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
