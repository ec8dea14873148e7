//! Talking to the server on the driver's behalf: one task per claim or
//! heartbeat, whose outcome comes back to the driver loop as a [`NetEvent`].
//!
//! A claim is retried a few times within a second or two with the same claim id
//! (safe: the server answers a repeated id with the original result), so a
//! wrapper is not refused over a dropped packet. After that the core decides: a
//! launch is refused as offline, a renewal is kept and resent at the next contact.

use std::time::Duration;

use flex_protocol::api::{
    ClaimRequest, ClaimResponse, Denial, HeartbeatRequest, HeartbeatResponse, RefundRequest,
    RefundResponse,
};
use flex_protocol::ErrorCode;
use flex_protocol::{ClaimId, WindowId};
use rand::Rng;
use tokio::sync::mpsc;

use super::failpoint::{self, Failpoint};
use crate::client::{Client, ClientError};
use crate::journal::HeartbeatBatch;

/// Attempts per claim before the core hears that it failed.
const CLAIM_ATTEMPTS: u32 = 3;
const CLAIM_RETRY_START: Duration = Duration::from_millis(250);
/// Longest random delay added before a heartbeat, so that agents restarted
/// together (a power cut, a fleet-wide update) do not call the server together.
const HEARTBEAT_JITTER_MAX: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub enum NetEvent {
    Claim {
        claim_id: ClaimId,
        outcome: Result<ClaimResponse, String>,
    },
    Heartbeat {
        batch: HeartbeatBatch,
        outcome: Result<HeartbeatResponse, ClientError>,
    },
    Refund {
        window_id: WindowId,
        outcome: Result<RefundResponse, ClientError>,
    },
}

/// Asks for a refund and reports the answer.
pub fn spawn_refund(client: Client, request: RefundRequest, events: mpsc::Sender<NetEvent>) {
    tokio::spawn(async move {
        let outcome = client.refund(&request).await;
        let _ = events
            .send(NetEvent::Refund {
                window_id: request.window_id.clone(),
                outcome,
            })
            .await;
    });
}

/// Sends `request` and reports the answer.
pub fn spawn_claim(client: Client, request: ClaimRequest, events: mpsc::Sender<NetEvent>) {
    tokio::spawn(async move {
        let outcome = claim(&client, &request).await;
        if outcome.is_ok() {
            // Test hook: die with the answer received but not yet journaled.
            failpoint::hit(Failpoint::ClaimAnswered);
        }
        let _ = events
            .send(NetEvent::Claim {
                claim_id: request.claim_id.clone(),
                outcome,
            })
            .await;
    });
}

/// One claim with quick retries. A 4xx answer is the server's decision and
/// becomes a denial carrying its code; only "no answer" is an `Err`.
async fn claim(client: &Client, request: &ClaimRequest) -> Result<ClaimResponse, String> {
    let mut delay = CLAIM_RETRY_START;
    let mut attempt = 1;
    loop {
        let err = match client.claim(request).await {
            Ok(answer) => return Ok(answer),
            Err(e) => e,
        };
        let decided = match &err {
            ClientError::Rejected { code, message, .. } => Some((*code, message.clone())),
            ClientError::Unauthorized { .. } => Some((ErrorCode::Unauthorized, err.to_string())),
            // A revoked workstation: refused like any denial, so a renewal closes
            // its product after the grace and users are told why.
            ClientError::Revoked { .. } => Some((ErrorCode::DeviceRevoked, err.to_string())),
            ClientError::Conflict { message, .. } => Some((ErrorCode::Conflict, message.clone())),
            _ => None,
        };
        if let Some((reason, message)) = decided {
            tracing::warn!(claim_id = %request.claim_id, %reason, "claim refused: {message}");
            return Ok(ClaimResponse::Denied(Denial {
                reason,
                message,
                balance: None,
            }));
        }
        if !err.is_retryable() || attempt >= CLAIM_ATTEMPTS {
            tracing::warn!(claim_id = %request.claim_id, "claim not delivered: {err}");
            return Err(err.to_string());
        }
        tracing::debug!(claim_id = %request.claim_id, attempt, "claim failed, retrying: {err}");
        tokio::time::sleep(jittered(delay)).await;
        delay *= 4;
        attempt += 1;
    }
}

/// Uploads `batch` and reports the answer.
pub fn spawn_heartbeat(
    client: Client,
    request: HeartbeatRequest,
    batch: HeartbeatBatch,
    interval: Duration,
    events: mpsc::Sender<NetEvent>,
) {
    tokio::spawn(async move {
        let max = (interval / 10).min(HEARTBEAT_JITTER_MAX);
        if !max.is_zero() {
            let wait = rand::thread_rng().gen_range(Duration::ZERO..=max);
            tokio::time::sleep(wait).await;
        }
        let outcome = client.heartbeat(&request).await;
        let _ = events.send(NetEvent::Heartbeat { batch, outcome }).await;
    });
}

/// `d` plus or minus up to a quarter.
fn jittered(d: Duration) -> Duration {
    d.mul_f64(rand::thread_rng().gen_range(0.75..1.25))
}
