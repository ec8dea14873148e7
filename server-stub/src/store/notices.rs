//! Balance notices (R9): `low_balance` once when a charge takes the balance to or
//! below the line, re-armed when a purchase lifts it above; `out_of_tokens` at
//! zero or on a refused charge, re-armed by a purchase; `tokens_expiring` once per
//! lot that has tokens left within 90 days of expiry.

use chrono::{DateTime, Duration, Utc};
use flex_protocol::api::{Notice, NoticeKind};
use rusqlite::{params, Connection};

use super::lots::load_lots;
use super::{get_meta, parse_ts, set_meta, ts, Result, Store, StoreError};
use crate::config::PolicyConfig;
use crate::ledger;

const LOW_ARMED: &str = "notice.low_balance.armed";
const OUT_ARMED: &str = "notice.out_of_tokens.armed";
/// How far ahead `tokens_expiring` looks.
pub const EXPIRY_NOTICE_DAYS: i64 = 90;

fn kind_str(kind: NoticeKind) -> &'static str {
    match kind {
        NoticeKind::LowBalance => "low_balance",
        NoticeKind::OutOfTokens => "out_of_tokens",
        NoticeKind::TokensExpiring => "tokens_expiring",
    }
}

fn kind_of(s: &str) -> Result<NoticeKind> {
    Ok(match s {
        "low_balance" => NoticeKind::LowBalance,
        "out_of_tokens" => NoticeKind::OutOfTokens,
        "tokens_expiring" => NoticeKind::TokensExpiring,
        other => return Err(StoreError::Corrupt(format!("notice kind '{other}'"))),
    })
}

fn raise(conn: &Connection, kind: NoticeKind, message: &str, now: DateTime<Utc>) -> Result<()> {
    tracing::info!(kind = kind_str(kind), "notice: {message}");
    conn.execute(
        "INSERT INTO notices (kind, message, created_at) VALUES (?1, ?2, ?3)",
        params![kind_str(kind), message, ts(now)],
    )?;
    Ok(())
}

fn armed(conn: &Connection, key: &str) -> Result<bool> {
    Ok(get_meta(conn, key)?.as_deref() != Some("0"))
}

/// After tokens were spent.
pub(crate) fn after_charge(
    conn: &Connection,
    policy: &PolicyConfig,
    now: DateTime<Utc>,
) -> Result<()> {
    let lots = load_lots(conn)?;
    let balance = ledger::balance(&lots, now);
    let bought = ledger::live_purchased(&lots, now);
    let line = ledger::low_balance_threshold(bought, policy.low_balance_ratio);
    if balance <= line && armed(conn, LOW_ARMED)? {
        raise(
            conn,
            NoticeKind::LowBalance,
            &format!(
                "token balance is {balance}, at or below {:.0}% of the {bought} tokens in unexpired lots; buy tokens to keep Flex users working",
                policy.low_balance_ratio * 100.0
            ),
            now,
        )?;
        set_meta(conn, LOW_ARMED, "0")?;
    }
    if balance == 0 && armed(conn, OUT_ARMED)? {
        raise(
            conn,
            NoticeKind::OutOfTokens,
            "token balance is 0: Flex launches are refused until tokens are bought",
            now,
        )?;
        set_meta(conn, OUT_ARMED, "0")?;
    }
    Ok(())
}

/// A charge was refused for lack of tokens; `product` is its display name.
pub(crate) fn on_refusal(
    conn: &Connection,
    user: &str,
    product: &str,
    balance: u64,
    needed: u64,
    now: DateTime<Utc>,
) -> Result<()> {
    if armed(conn, OUT_ARMED)? {
        raise(
            conn,
            NoticeKind::OutOfTokens,
            &format!("{user} was refused {product}: it costs {needed} tokens and the balance is {balance}"),
            now,
        )?;
        set_meta(conn, OUT_ARMED, "0")?;
    }
    Ok(())
}

pub(crate) fn after_purchase(
    conn: &Connection,
    policy: &PolicyConfig,
    now: DateTime<Utc>,
) -> Result<()> {
    let lots = load_lots(conn)?;
    let balance = ledger::balance(&lots, now);
    let line =
        ledger::low_balance_threshold(ledger::live_purchased(&lots, now), policy.low_balance_ratio);
    if balance > line {
        set_meta(conn, LOW_ARMED, "1")?;
    }
    if balance > 0 {
        set_meta(conn, OUT_ARMED, "1")?;
    }
    check_expiring(conn, now)
}

/// Raises `tokens_expiring` for lots with tokens left that expire within 90 days.
pub(crate) fn check_expiring(conn: &Connection, now: DateTime<Utc>) -> Result<()> {
    let horizon = ts(now + Duration::days(EXPIRY_NOTICE_DAYS));
    let mut stmt = conn.prepare(
        "SELECT id, remaining, expires_at FROM lots
         WHERE expiry_noticed = 0 AND remaining > 0 AND expires_at > ?1 AND expires_at <= ?2",
    )?;
    let due: Vec<(i64, i64, String)> = stmt
        .query_map([ts(now), horizon], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    for (id, remaining, expires) in due {
        let expires = parse_ts(&expires)?;
        raise(
            conn,
            NoticeKind::TokensExpiring,
            &format!(
                "lot {id}: {remaining} tokens expire on {}; unused tokens are lost",
                expires.format("%Y-%m-%d %H:%M UTC")
            ),
            now,
        )?;
        conn.execute("UPDATE lots SET expiry_noticed = 1 WHERE id = ?1", [id])?;
    }
    Ok(())
}

pub(crate) fn list(conn: &Connection, after: Option<i64>, limit: i64) -> Result<Vec<Notice>> {
    let mut stmt = conn.prepare(
        "SELECT id, kind, message, created_at FROM notices WHERE id > ?1 ORDER BY id DESC LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![after.unwrap_or(0), limit], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, kind, message, created) = row?;
        out.push(Notice {
            id,
            kind: kind_of(&kind)?,
            message,
            created_at: parse_ts(&created)?,
        });
    }
    Ok(out)
}

impl Store {
    /// Every notice, newest first.
    pub fn notices(&self) -> Result<Vec<Notice>> {
        let now = self.now();
        self.write(|tx| {
            check_expiring(tx, now)?;
            list(tx, None, i64::MAX)
        })
    }

    /// Runs the time-driven notice rules; called by a periodic task and when the
    /// test clock moves.
    pub fn tick(&self) -> Result<()> {
        let now = self.now();
        self.write(|tx| check_expiring(tx, now))
    }
}
