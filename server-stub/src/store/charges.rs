//! The ledger as admins read it: every charge with its window and lot shares,
//! and the refund of a short run (R13) when its window got one.

use flex_protocol::api::{Charge, ChargeKind, LotShare, Window};

use super::claims::source_of;
use super::db::{params, Conn};
use super::{parse_ts, Result, Store, StoreError};

/// Optional filters of `GET /v1/admin/charges`.
#[derive(Debug, Clone, Default)]
pub struct ChargeFilter {
    pub user: Option<flex_protocol::Email>,
    pub product: Option<String>,
}

/// Each lot's share of charge `id`, in the order they were spent.
pub(super) fn lot_shares(conn: &Conn<'_>, id: i64) -> Result<Vec<LotShare>> {
    conn.query_all(
        "SELECT lot_id, tokens FROM charge_lots WHERE charge_id = ?1 ORDER BY rowid",
        params![id],
        share,
    )
}

fn share(r: &super::db::Row<'_>) -> Result<LotShare> {
    Ok(LotShare {
        lot_id: r.get(0)?,
        tokens: r.get(1)?,
    })
}

impl Store {
    pub fn charges(&self, filter: &ChargeFilter) -> Result<Vec<Charge>> {
        let user = filter.user.as_ref();
        self.read(|c| {
            let rows = c.query_all(
                "SELECT c.id, c.claim_id, c.\"user\", c.product, c.version, c.kind, c.source,
                        c.results, c.tokens, c.created_at, w.id, w.start, w.\"end\",
                        r.tokens, r.created_at
                 FROM charges c LEFT JOIN windows w ON w.id = c.window_id
                 LEFT JOIN refunds r ON r.charge_id = c.id
                 WHERE (CAST(?1 AS TEXT) IS NULL OR c.\"user\" = ?1) AND (CAST(?2 AS TEXT) IS NULL OR c.product = ?2)
                 ORDER BY c.id",
                params![user, filter.product],
                |r| {
                    let kind = match r.str(5)? {
                        "window" => ChargeKind::Window,
                        "renewal" => ChargeKind::Renewal,
                        "per_result" => ChargeKind::PerResult,
                        other => return Err(StoreError::Corrupt(format!("charge kind '{other}'"))),
                    };
                    let window = match (r.get(10)?, r.opt_str(11)?, r.opt_str(12)?) {
                        (Some(id), Some(start), Some(end)) => Some(Window {
                            id,
                            start: parse_ts(start)?,
                            end: parse_ts(end)?,
                        }),
                        _ => None,
                    };
                    Ok(Charge {
                        id: r.get(0)?,
                        claim_id: r.get(1)?,
                        user: r.get(2)?,
                        product: r.get(3)?,
                        version: r.get(4)?,
                        kind,
                        source: source_of(r.str(6)?)?,
                        window,
                        results: r.get(7)?,
                        tokens: r.get(8)?,
                        lots: Vec::new(),
                        created_at: parse_ts(r.str(9)?)?,
                        refunded_tokens: r.get::<Option<u64>>(13)?.unwrap_or(0),
                        refunded_at: r.opt_str(14)?.map(parse_ts).transpose()?,
                    })
                },
            )?;
            // Every share of the charges listed, in one query, grouped by charge.
            let mut out = rows;
            let mut shares: std::collections::HashMap<i64, Vec<LotShare>> = Default::default();
            c.query_each(
                "SELECT cl.charge_id, cl.lot_id, cl.tokens
                 FROM charge_lots cl JOIN charges c ON c.id = cl.charge_id
                 WHERE (CAST(?1 AS TEXT) IS NULL OR c.\"user\" = ?1) AND (CAST(?2 AS TEXT) IS NULL OR c.product = ?2)
                 ORDER BY cl.charge_id, cl.rowid",
                params![user, filter.product],
                |r| {
                    shares.entry(r.get(0)?).or_default().push(LotShare {
                        lot_id: r.get(1)?,
                        tokens: r.get(2)?,
                    });
                    Ok(())
                },
            )?;
            for charge in &mut out {
                charge.lots = shares.remove(&charge.id).unwrap_or_default();
            }
            Ok(out)
        })
    }
}
