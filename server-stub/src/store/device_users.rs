//! Which users each device speaks for, per tenant day: every claim and every
//! user check records (device, day, user), and when the rule in
//! [`crate::rules::notices`] finds one device's count for a day above
//! `policy.device_users_alert`, a `device_users` notice is raised, once for that
//! device and day (a marker row, so lowering the alert mid-day still raises it).
//! The row and the notice are written in the caller's transaction, so a claim
//! that rolls back leaves neither.

use chrono::{DateTime, Utc};

use super::db::{params, Conn};
use super::{notices, Result};
use crate::config::PolicyConfig;
use crate::rules::calendar;

/// Days kept: today and yesterday (a day in the tenant's zone may still be open
/// somewhere else in the fleet).
const KEEP_DAYS: i32 = 2;

/// `device_id` spoke for `user` (already normalised) at `now`.
pub(crate) fn spoke_for(
    tx: &Conn<'_>,
    device_id: &str,
    user: &str,
    policy: &PolicyConfig,
    now: DateTime<Utc>,
) -> Result<()> {
    let day = calendar::local_day(now, calendar::zone(&policy.timezone));
    let added = tx.execute(
        "INSERT INTO device_user_days (device_id, day, \"user\") VALUES (?1, ?2, ?3)
         ON CONFLICT DO NOTHING",
        params![device_id, day, user],
    )?;
    if added == 0 {
        return Ok(());
    }
    let count: i64 = tx.query_one(
        "SELECT COUNT(*) FROM device_user_days WHERE device_id = ?1 AND day = ?2",
        params![device_id, day],
        |r| r.get(0),
    )?;
    if !crate::rules::notices::device_users_over(count as u64, policy.device_users_alert) {
        return Ok(());
    }
    let first_time = tx.execute(
        "INSERT INTO device_user_alerts (device_id, day) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
        params![device_id, day],
    )?;
    if first_time == 0 {
        return Ok(());
    }
    let users: Vec<String> = tx.query_all(
        "SELECT \"user\" FROM device_user_days WHERE device_id = ?1 AND day = ?2 ORDER BY \"user\"",
        params![device_id, day],
        |r| r.get(0),
    )?;
    let hostname: String = tx
        .query_opt(
            "SELECT hostname FROM devices WHERE id = ?1",
            params![device_id],
            |r| r.get(0),
        )?
        .unwrap_or_else(|| "unknown host".into());
    let n = crate::rules::notices::device_users(
        device_id,
        &hostname,
        calendar::date_of(day),
        &users,
        policy.device_users_alert,
    );
    tracing::warn!(device_id, users = users.len(), "{}", n.message);
    notices::raise(tx, &n, now)
}

/// Forgets days no claim can still fall on.
pub(crate) fn prune(tx: &Conn<'_>, policy: &PolicyConfig, now: DateTime<Utc>) -> Result<()> {
    let today = calendar::local_day(now, calendar::zone(&policy.timezone));
    let oldest = today - KEEP_DAYS + 1;
    tx.execute(
        "DELETE FROM device_user_days WHERE day < ?1",
        params![oldest],
    )?;
    tx.execute(
        "DELETE FROM device_user_alerts WHERE day < ?1",
        params![oldest],
    )?;
    Ok(())
}
