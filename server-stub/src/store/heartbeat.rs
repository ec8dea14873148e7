//! Agent heartbeats: session records up (R10 usage), policy, balance and notices
//! down.

use flex_protocol::api::{HeartbeatRequest, HeartbeatResponse, SessionRecord};

use super::db::{params, Conn};
use super::lots::balance_of;
use super::{notices, ts, Result, Store, StoreError};

/// Most session records one heartbeat may carry; the agent sends the rest next time.
pub const MAX_SESSIONS_PER_HEARTBEAT: usize = 1000;

/// Checks uploaded session records (a heartbeat's, or a refund request's:
/// `what`) before anything is written.
pub(crate) fn check_sessions(sessions: &[SessionRecord], what: &str) -> Result<()> {
    if sessions.len() > MAX_SESSIONS_PER_HEARTBEAT {
        return Err(StoreError::invalid(
            "sessions",
            format!(
                "{} session records in one {what}; send at most {MAX_SESSIONS_PER_HEARTBEAT}",
                sessions.len()
            ),
        ));
    }
    for s in sessions {
        // The ids, user and product were checked when the request was read.
        if s.ended_at.is_some_and(|end| end < s.started_at) {
            return Err(StoreError::invalid(
                "sessions",
                format!("session {} ends before it starts", s.id),
            ));
        }
    }
    Ok(())
}

/// Stores session records checked by [`check_sessions`] for `device_id`.
pub(crate) fn store_sessions(
    tx: &Conn<'_>,
    device_id: &str,
    sessions: &[SessionRecord],
) -> Result<()> {
    for s in sessions {
        // Re-uploading a record (after a lost answer) replaces it.
        tx.execute(
            "INSERT INTO sessions (id, device_id, \"user\", product, version, source, window_id, started_at, ended_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT(id) DO UPDATE SET ended_at = excluded.ended_at
             WHERE sessions.device_id = excluded.device_id",
            params![
                s.id,
                device_id,
                s.user.as_str(),
                s.product,
                s.version,
                s.source.as_str(),
                s.window_id,
                ts(s.started_at),
                s.ended_at.map(ts),
            ],
        )?;
    }
    Ok(())
}

impl Store {
    pub fn heartbeat(&self, device_id: &str, req: &HeartbeatRequest) -> Result<HeartbeatResponse> {
        check_sessions(&req.sessions, "heartbeat")?;
        if req.clock_rollbacks.len() > 100 {
            return Err(StoreError::invalid(
                "clock_rollbacks",
                format!(
                    "{} clock rollbacks in one heartbeat; send at most 100",
                    req.clock_rollbacks.len()
                ),
            ));
        }
        let now = self.now();
        let out = self.write(|tx| {
            store_sessions(tx, device_id, &req.sessions)?;
            for r in &req.clock_rollbacks {
                tracing::warn!(device_id, seconds = r.seconds, "agent reported a wall-clock rollback");
                tx.execute(
                    "INSERT INTO clock_rollbacks (device_id, detected_at, seconds, received_at) VALUES (?1, ?2, ?3, ?4)",
                    params![device_id, ts(r.detected_at), r.seconds, ts(now)],
                )?;
            }
            tx.execute(
                "UPDATE devices SET last_seen = ?1, agent_version = COALESCE(?3, agent_version) WHERE id = ?2",
                params![
                    ts(now),
                    device_id,
                    req.agent_version
                        .as_deref()
                        .map(|v| v.chars().filter(|c| !c.is_control()).take(64).collect::<String>())
                ],
            )?;
            // The device holds its credential: its enrollment request is spent.
            super::enrollment::acknowledge(tx, device_id)?;
            notices::check_expiring(tx, now)?;
            let mut recent = notices::list(tx, req.notices_after, 50, notices::Audience::Agents)?;
            recent.reverse();
            Ok((balance_of(tx, now)?, recent))
        })?;
        Ok(HeartbeatResponse {
            server_time: now,
            policy: self.policy().to_wire(),
            balance: out.0,
            notices: out.1,
            accepted_sessions: req.sessions.iter().map(|s| s.id.clone()).collect(),
            products: self.rates().products().to_vec(),
        })
    }
}
