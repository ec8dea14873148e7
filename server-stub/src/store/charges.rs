//! The ledger as admins read it: every charge with its window and lot shares,
//! and the refund of a short run (R13) when its window got one.

use flex_protocol::api::{Charge, ChargeKind, LotShare, Window};
use rusqlite::{params, Connection};

use super::claims::source_of;
use super::{parse_ts, Result, Store, StoreError};

/// Optional filters of `GET /v1/admin/charges`.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct ChargeFilter {
    pub user: Option<String>,
    pub product: Option<String>,
}

/// Each lot's share of charge `id`, in the order they were spent.
pub(super) fn lot_shares(conn: &Connection, id: i64) -> Result<Vec<LotShare>> {
    let mut stmt = conn.prepare_cached(
        "SELECT lot_id, tokens FROM charge_lots WHERE charge_id = ?1 ORDER BY rowid",
    )?;
    let shares = stmt
        .query_map([id], |r| {
            Ok(LotShare {
                lot_id: r.get(0)?,
                tokens: r.get::<_, i64>(1)? as u64,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(shares)
}

impl Store {
    pub fn charges(&self, filter: &ChargeFilter) -> Result<Vec<Charge>> {
        self.read(|c| {
            let mut stmt = c.prepare(
                "SELECT c.id, c.claim_id, c.user, c.product, c.version, c.kind, c.source,
                        c.results, c.tokens, c.created_at, w.id, w.start, w.end,
                        r.tokens, r.created_at
                 FROM charges c LEFT JOIN windows w ON w.id = c.window_id
                 LEFT JOIN refunds r ON r.charge_id = c.id
                 WHERE (?1 IS NULL OR c.user = ?1) AND (?2 IS NULL OR c.product = ?2)
                 ORDER BY c.id",
            )?;
            let user = filter.user.as_ref().map(|u| u.trim().to_lowercase());
            let rows = stmt.query_map(params![user, filter.product], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, Option<String>>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, String>(6)?,
                    r.get::<_, Option<i64>>(7)?,
                    r.get::<_, i64>(8)?,
                    r.get::<_, String>(9)?,
                    (
                        (
                            r.get::<_, Option<String>>(10)?,
                            r.get::<_, Option<String>>(11)?,
                            r.get::<_, Option<String>>(12)?,
                        ),
                        (
                            r.get::<_, Option<i64>>(13)?,
                            r.get::<_, Option<String>>(14)?,
                        ),
                    ),
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (id, claim_id, user, product, version, kind, source, results, tokens, at, more) =
                    row?;
                let (w, (refunded, refunded_at)) = more;
                let kind = match kind.as_str() {
                    "window" => ChargeKind::Window,
                    "renewal" => ChargeKind::Renewal,
                    "per_result" => ChargeKind::PerResult,
                    other => return Err(StoreError::Corrupt(format!("charge kind '{other}'"))),
                };
                let window = match w {
                    (Some(id), Some(start), Some(end)) => Some(Window {
                        id,
                        start: parse_ts(&start)?,
                        end: parse_ts(&end)?,
                    }),
                    _ => None,
                };
                let lots = lot_shares(c, id)?;
                out.push(Charge {
                    id,
                    claim_id,
                    user,
                    product,
                    version,
                    kind,
                    source: source_of(&source)?,
                    window,
                    results: results.map(|n| n as u64),
                    tokens: tokens as u64,
                    lots,
                    created_at: parse_ts(&at)?,
                    refunded_tokens: refunded.unwrap_or(0) as u64,
                    refunded_at: refunded_at.as_deref().map(parse_ts).transpose()?,
                });
            }
            Ok(out)
        })
    }
}
