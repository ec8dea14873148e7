//! Messages of the agent's local socket.
//!
//! Newline-delimited JSON: one [`Request`] per line from the client, one reply per
//! line back (`{"ok":true,...}` or `{"ok":false,"error":{"code","message"}}`).
//! After a `subscribe` the agent keeps the connection and writes one [`Event`] per
//! line. Lines are at most [`MAX_LINE`] bytes. The caller's identity comes from the
//! socket's peer credentials, never from a message; `user` fields are honoured only
//! for root, which may act for another account.

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::api::{ApiError, Source};
use crate::{ErrorCode, ProductId, SessionId};

/// Longest line either side may send, newline included.
pub const MAX_LINE: usize = 64 * 1024;

/// Default socket path on Linux.
pub const DEFAULT_SOCKET: &str = "/run/flex-agent/agent.sock";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Hello {
        protocol: u32,
        #[serde(default)]
        client: Option<String>,
    },
    /// A wrapper asks to start a product (R4/R5).
    Launch {
        product: ProductId,
        #[serde(default)]
        version: Option<String>,
        /// The product's pid once started, so the agent can close it.
        #[serde(default)]
        pid: Option<u32>,
        /// Local account to act for; root only.
        #[serde(default)]
        user: Option<String>,
    },
    /// Tells the agent the pid of a granted session after the wrapper started it.
    Attach {
        session: SessionId,
        pid: u32,
    },
    /// A session's product exited.
    Exit {
        session: SessionId,
        #[serde(default)]
        code: Option<i32>,
    },
    /// A per-result job (R6).
    Result {
        product: ProductId,
        count: u64,
        #[serde(default)]
        job: Option<String>,
        #[serde(default)]
        user: Option<String>,
    },
    Status,
    /// Keep the connection and stream this user's [`Event`]s.
    Subscribe,
    /// The notifier of a desktop session reports its user's activity (R14),
    /// for the caller's own account: how long since the last keyboard or
    /// mouse input, and whether the session is locked. Sent periodically;
    /// with several sessions of one account, the account is idle only if all
    /// are. An account that never reports is never idle.
    Idle {
        idle_secs: u64,
        #[serde(default)]
        locked: bool,
    },
    /// The notifier's answer to [`Event::CloseWindows`]: it asked `windows`
    /// top-level windows of process `pid` to close (0: it found none, so the
    /// agent stops the process by signal).
    Closing {
        pid: u32,
        windows: u32,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloReply {
    pub protocol: u32,
    pub agent_version: String,
    /// The local account the agent sees on this connection.
    pub account: String,
    pub uid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchReply {
    pub session: SessionId,
    pub product: ProductId,
    /// The product's display name from the rate sheet ("AutoCAD"), when the
    /// agent knows it; show this to people and keep `product` for logic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_name: Option<String>,
    pub source: Source,
    pub window_end: DateTime<Utc>,
    pub tokens_charged: u64,
    #[serde(default)]
    pub balance: Option<u64>,
    /// Granted from a journaled lease without reaching the server.
    #[serde(default)]
    pub offline: bool,
    /// When the agent closes the session: seconds between the graceful stop and
    /// the forced one (the policy's `close_grace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub close_grace_secs: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultReply {
    pub product: ProductId,
    /// The product's display name from the rate sheet ("AutoCAD"), when the
    /// agent knows it; show this to people and keep `product` for logic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_name: Option<String>,
    pub job: String,
    pub tokens_charged: u64,
    pub balance: u64,
    /// This job had been charged before: `tokens_charged` is that first charge,
    /// nothing was charged now.
    #[serde(default)]
    pub already_charged: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionStatus {
    pub session: SessionId,
    pub user: String,
    pub product: ProductId,
    /// The product's display name from the rate sheet ("AutoCAD"), when the
    /// agent knows it; show this to people and keep `product` for logic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_name: Option<String>,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub pid: Option<u32>,
    pub source: Source,
    pub started_at: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    /// How the session was found: `wrapper` or `watcher`.
    pub origin: String,
    /// `running`, `closing` or `paused`.
    #[serde(default = "running")]
    pub state: String,
    /// Set while it is paused (R14).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_since: Option<DateTime<Utc>>,
    /// When it will be closed, if a close is scheduled (renewal grace, the
    /// offline limit) or under way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closes_at: Option<DateTime<Utc>>,
}

fn running() -> String {
    "running".into()
}

/// A charge window the user holds now: reopening its product is free until `end`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowStatus {
    pub user: String,
    pub product: ProductId,
    /// The product's display name from the rate sheet ("AutoCAD"), when the
    /// agent knows it; show this to people and keep `product` for logic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_name: Option<String>,
    pub source: Source,
    /// What opening (or renewing) this window cost; 0 for a subscription.
    pub tokens_charged: u64,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReply {
    pub agent_version: String,
    pub server_url: String,
    pub device_id: Option<String>,
    /// Where the device credential lives: `keyring` or `file:PATH`.
    pub credential_store: String,
    /// Process detection source: `proc-connector` or `polling`.
    pub detection: String,
    pub sessions: Vec<SessionStatus>,
    /// Sessions left out of `sessions` to keep the reply within [`MAX_LINE`].
    #[serde(default, skip_serializing_if = "is_zero")]
    pub sessions_omitted: usize,
    /// Windows held now, for the caller's user (every user's for root).
    #[serde(default)]
    pub windows: Vec<WindowStatus>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub windows_omitted: usize,
    #[serde(default)]
    pub balance: Option<u64>,
    #[serde(default)]
    pub last_server_contact: Option<DateTime<Utc>>,
    /// Seconds before token-backed products would be closed for being offline.
    #[serde(default)]
    pub offline_seconds_left: Option<i64>,
    pub online: bool,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Why the agent closed a product.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CloseReason {
    Offline,
    OutOfTokens,
    NotEntitled,
    Denied,
}

/// What the agent tells a subscribed notifier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Charged {
        product: ProductId,
        /// The product's display name from the rate sheet ("AutoCAD"), when the
        /// agent knows it; show this to people and keep `product` for logic.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        product_name: Option<String>,
        tokens: u64,
        balance: u64,
        window_end: Option<DateTime<Utc>>,
        /// The charge renewed a window the product was still running in.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        renewal: bool,
    },
    LowBalance {
        balance: u64,
    },
    OutOfTokens {
        product: ProductId,
        /// The product's display name from the rate sheet ("AutoCAD"), when the
        /// agent knows it; show this to people and keep `product` for logic.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        product_name: Option<String>,
    },
    LaunchDenied {
        product: ProductId,
        /// The product's display name from the rate sheet ("AutoCAD"), when the
        /// agent knows it; show this to people and keep `product` for logic.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        product_name: Option<String>,
        reason: ErrorCode,
        message: String,
    },
    OfflineWarning {
        product: ProductId,
        /// The product's display name from the rate sheet ("AutoCAD"), when the
        /// agent knows it; show this to people and keep `product` for logic.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        product_name: Option<String>,
        seconds_left: u64,
        deadline: DateTime<Utc>,
    },
    RenewalFailed {
        product: ProductId,
        /// The product's display name from the rate sheet ("AutoCAD"), when the
        /// agent knows it; show this to people and keep `product` for logic.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        product_name: Option<String>,
        reason: ErrorCode,
        closes_at: DateTime<Utc>,
    },
    ProductClosed {
        product: ProductId,
        /// The product's display name from the rate sheet ("AutoCAD"), when the
        /// agent knows it; show this to people and keep `product` for logic.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        product_name: Option<String>,
        reason: CloseReason,
        message: String,
    },
    ClockRollback {
        seconds: i64,
    },
    /// The product will be closed at `deadline` (wall clock): sent to the
    /// wrapper holding the session (so an integration can save on its own) and
    /// to the user, before the close starts.
    ProductClosing {
        product: ProductId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        product_name: Option<String>,
        reason: CloseReason,
        message: String,
        deadline: DateTime<Utc>,
    },
    /// To the notifier of the process's account: ask the top-level windows of
    /// `pid` to close as the desktop would (WM_DELETE_WINDOW), so the product
    /// can ask to save. It is killed at `kill_at` whatever happens. Answer with
    /// [`Request::Closing`].
    CloseWindows {
        pid: u32,
        product: ProductId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        product_name: Option<String>,
        kill_at: DateTime<Utc>,
    },
    /// A window no process used past the short-use grace was refunded (R13).
    Refunded {
        product: ProductId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        product_name: Option<String>,
        tokens: u64,
        balance: u64,
        grace_secs: u64,
    },
    /// A running product's window is renewed at `at` (wall clock) for
    /// `tokens`, unless it is closed first.
    RenewalNotice {
        product: ProductId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        product_name: Option<String>,
        at: DateTime<Utc>,
        tokens: u64,
    },
    /// The product was idle when its window ended: not renewed, it keeps
    /// running, paused, until its user comes back (R14).
    Paused {
        product: ProductId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        product_name: Option<String>,
        since: DateTime<Utc>,
    },
    /// A paused product is in use again and was charged a new window.
    Resumed {
        product: ProductId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        product_name: Option<String>,
        tokens: u64,
    },
    /// The server is reachable again: offline warnings no longer apply.
    BackOnline,
}

/// A successful reply line: `{"ok":true, ...data}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OkReply<T> {
    pub ok: bool,
    #[serde(flatten)]
    pub data: T,
}

impl<T> OkReply<T> {
    pub fn new(data: T) -> Self {
        OkReply { ok: true, data }
    }
}

/// A failed reply line: `{"ok":false,"error":{"code","message"}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrReply {
    pub ok: bool,
    pub error: ApiError,
    /// A refused `launch` or `result` of a product on the rate sheet: its
    /// display name, for the line a wrapper shows ("AutoCAD not started: ...").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_name: Option<String>,
}

impl ErrReply {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrReply {
            ok: false,
            error: ApiError {
                code,
                message: message.into(),
            },
            product_name: None,
        }
    }

    /// The same refusal, naming the product it is about.
    pub fn about(mut self, product_name: Option<String>) -> Self {
        self.product_name = product_name;
        self
    }
}

/// What people call a product: its display name when known, else its id.
pub fn display_name<'a>(product: &'a str, product_name: Option<&'a str>) -> &'a str {
    product_name
        .filter(|n| !n.trim().is_empty())
        .unwrap_or(product)
}

/// Reads a reply line: `Ok(Ok(data))`, `Ok(Err(error))` for `ok:false`, or a
/// decoding error when the line is neither.
pub fn parse_reply<T: DeserializeOwned>(
    line: &str,
) -> Result<Result<T, ApiError>, serde_json::Error> {
    Ok(parse_answer(line)?.map_err(|refused| refused.error))
}

/// Like [`parse_reply`], keeping the whole refusal (with its `product_name`).
pub fn parse_answer<T: DeserializeOwned>(
    line: &str,
) -> Result<Result<T, ErrReply>, serde_json::Error> {
    #[derive(Deserialize)]
    struct Probe {
        ok: bool,
    }
    let probe: Probe = serde_json::from_str(line)?;
    if probe.ok {
        Ok(Ok(serde_json::from_str::<OkReply<T>>(line)?.data))
    } else {
        Ok(Err(serde_json::from_str::<ErrReply>(line)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_round_trip() {
        let line = serde_json::to_string(&OkReply::new(ResultReply {
            product: ProductId::parse("recap-photo").unwrap(),
            job: "j1".into(),
            tokens_charged: 2,
            balance: 98,
            already_charged: false,
            product_name: Some("ReCap Photo".into()),
        }))
        .unwrap();
        assert!(line.starts_with("{\"ok\":true"));
        let got: ResultReply = parse_reply(&line).unwrap().unwrap();
        assert_eq!(got.tokens_charged, 2);

        let err = serde_json::to_string(&ErrReply::new(ErrorCode::OutOfTokens, "no")).unwrap();
        let got = parse_reply::<ResultReply>(&err).unwrap().unwrap_err();
        assert_eq!(got.code, ErrorCode::OutOfTokens);
    }
}
