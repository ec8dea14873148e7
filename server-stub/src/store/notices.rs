//! Balance notices (R9): `low_balance` once when a charge takes the balance to or
//! below the line, re-armed when a purchase lifts it above; `out_of_tokens` at
//! zero or on a refused charge, re-armed by a purchase; `tokens_expiring` once per
//! lot that has tokens left within 90 days of expiry.

use chrono::{DateTime, Utc};
use flex_protocol::api::{Notice, NoticeKind};

use super::db::{params, Conn};
use super::lots::load_lots;
use super::{get_meta, parse_ts, set_meta, ts, Result, Store, StoreError};
use crate::config::PolicyConfig;
use crate::ledger::LotState;
use crate::rules::notices::{self as rules, Armed, Raise};

const LOW_ARMED: &str = "notice.low_balance.armed";
const OUT_ARMED: &str = "notice.out_of_tokens.armed";

const KINDS: [NoticeKind; 4] = [
    NoticeKind::LowBalance,
    NoticeKind::OutOfTokens,
    NoticeKind::TokensExpiring,
    NoticeKind::DeviceUsers,
];

fn kind_of(s: &str) -> Result<NoticeKind> {
    KINDS
        .into_iter()
        .find(|k| k.as_str() == s)
        .ok_or_else(|| StoreError::Corrupt(format!("notice kind '{s}'")))
}

pub(crate) fn raise(conn: &Conn<'_>, r: &Raise, now: DateTime<Utc>) -> Result<()> {
    tracing::info!(kind = r.kind.as_str(), "notice: {}", r.message);
    conn.execute(
        "INSERT INTO notices (kind, message, created_at) VALUES (?1, ?2, ?3)",
        params![r.kind.as_str(), r.message, ts(now)],
    )?;
    Ok(())
}

fn load_armed(conn: &Conn<'_>) -> Result<Armed> {
    let armed = |key| -> Result<bool> { Ok(get_meta(conn, key)?.as_deref() != Some("0")) };
    Ok(Armed {
        low: armed(LOW_ARMED)?,
        out: armed(OUT_ARMED)?,
    })
}

/// Raises `notices` and stores what changed in `armed`.
fn apply(
    conn: &Conn<'_>,
    before: Armed,
    notices: &[Raise],
    after: Armed,
    now: DateTime<Utc>,
) -> Result<()> {
    for n in notices {
        raise(conn, n, now)?;
    }
    let flag = |b: bool| if b { "1" } else { "0" };
    if before.low != after.low {
        set_meta(conn, LOW_ARMED, flag(after.low))?;
    }
    if before.out != after.out {
        set_meta(conn, OUT_ARMED, flag(after.out))?;
    }
    Ok(())
}

/// After tokens were spent.
pub(crate) fn after_charge(
    conn: &Conn<'_>,
    policy: &PolicyConfig,
    now: DateTime<Utc>,
) -> Result<()> {
    let armed = load_armed(conn)?;
    let (notices, next) =
        rules::after_charge(&load_lots(conn)?, policy.low_balance_ratio, armed, now);
    apply(conn, armed, &notices, next, now)
}

/// A charge was refused for lack of tokens; `product` is its display name.
pub(crate) fn on_refusal(
    conn: &Conn<'_>,
    user: &str,
    product: &str,
    balance: u64,
    needed: u64,
    now: DateTime<Utc>,
) -> Result<()> {
    let armed = load_armed(conn)?;
    let (notices, next) = rules::on_refusal(user, product, balance, needed, armed);
    apply(conn, armed, &notices, next, now)
}

pub(crate) fn after_purchase(
    conn: &Conn<'_>,
    policy: &PolicyConfig,
    now: DateTime<Utc>,
) -> Result<()> {
    let armed = load_armed(conn)?;
    let next = rules::after_purchase(&load_lots(conn)?, policy.low_balance_ratio, armed, now);
    apply(conn, armed, &[], next, now)?;
    check_expiring(conn, now)
}

/// Raises `tokens_expiring` for lots with tokens left that expire within 90 days.
pub(crate) fn check_expiring(conn: &Conn<'_>, now: DateTime<Utc>) -> Result<()> {
    // Only lots that could be due are loaded: claims call this every time.
    let lots = conn.query_all(
        "SELECT id, tokens, remaining, purchased_at, expires_at FROM lots
         WHERE expiry_noticed = 0 AND remaining > 0 AND expires_at > ?1",
        params![ts(now)],
        |r| {
            Ok((
                LotState {
                    id: r.get(0)?,
                    tokens: r.get(1)?,
                    remaining: r.get(2)?,
                    purchased_at: parse_ts(r.str(3)?)?,
                    expires_at: parse_ts(r.str(4)?)?,
                },
                false,
            ))
        },
    )?;
    for (id, notice) in rules::expiring(&lots, now) {
        raise(conn, &notice, now)?;
        conn.execute(
            "UPDATE lots SET expiry_noticed = 1 WHERE id = ?1",
            params![id],
        )?;
    }
    Ok(())
}

/// Who reads a notice list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Audience {
    Admins,
    /// Heartbeats: only kinds agents know ([`NoticeKind::for_agents`]); an
    /// older agent cannot parse the others.
    Agents,
}

pub(crate) fn list(
    conn: &Conn<'_>,
    after: Option<i64>,
    limit: i64,
    audience: Audience,
) -> Result<Vec<Notice>> {
    // The kinds are our own constants, not input.
    let kinds: Vec<String> = KINDS
        .iter()
        .filter(|k| audience == Audience::Admins || k.for_agents())
        .map(|k| format!("'{}'", k.as_str()))
        .collect();
    conn.query_all(
        &format!(
            "SELECT id, kind, message, created_at FROM notices
             WHERE id > ?1 AND kind IN ({}) ORDER BY id DESC LIMIT ?2",
            kinds.join(", ")
        ),
        params![after.unwrap_or(0), limit],
        |r| {
            Ok(Notice {
                id: r.get(0)?,
                kind: kind_of(r.str(1)?)?,
                message: r.get(2)?,
                created_at: parse_ts(r.str(3)?)?,
            })
        },
    )
}

impl Store {
    /// Every notice, newest first.
    pub fn notices(&self) -> Result<Vec<Notice>> {
        let now = self.now();
        self.write(|tx| {
            check_expiring(tx, now)?;
            list(tx, None, i64::MAX, Audience::Admins)
        })
    }

    /// Runs the time-driven notice rules; called by a periodic task and when the
    /// test clock moves.
    pub fn tick(&self) -> Result<()> {
        let now = self.now();
        self.write(|tx| {
            check_expiring(tx, now)?;
            super::device_users::prune(tx, self.policy(), now)
        })
    }
}
