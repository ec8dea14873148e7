//! What goes into the core ([`Input`]) and what comes out ([`Action`]).
//!
//! Inputs are facts the driver observed (a wrapper asked, a process started, the
//! server answered, a timer fired); actions are things the driver must do. The
//! [`Persist`] actions are what the journal must record; the driver applies every
//! `Persist` of one batch in one transaction *before* carrying out any other action
//! of that batch, which is what makes "journal the claim id, then send it" hold.

use chrono::{DateTime, Utc};
use flex_protocol::api::{
    ClaimRequest, ClaimResponse, ClockRollback, Notice, Policy, Product, SessionRecord, Source,
    Window,
};
use flex_protocol::lease::SignedLease;
use flex_protocol::socket::{Event, LaunchReply, ResultReply};
use flex_protocol::ErrorCode;
use serde::{Deserialize, Serialize};
use std::time::Duration;

use super::clock::ClockState;

/// A wrapper (`flexctl run`) asks to start a product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchRequest {
    /// Id of this socket request; echoed in [`Action::ReplyLaunch`].
    pub request: String,
    pub uid: u32,
    pub account: String,
    /// The account's email, from the config's user mapping.
    pub user: String,
    pub product: String,
    pub version: Option<String>,
    /// Known only when the wrapper started the product before asking.
    pub pid: Option<u32>,
}

/// The watcher saw a product process start (or adopted one at agent start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    pub uid: u32,
    pub account: String,
    pub user: String,
    pub product: String,
    pub version: Option<String>,
    pub started_at: DateTime<Utc>,
}

/// A per-result job (`flexctl result`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRequest {
    pub request: String,
    pub uid: u32,
    pub user: String,
    pub product: String,
    pub count: u64,
    /// The caller's job id; a retry with the same id reuses the claim.
    pub job: Option<String>,
}

/// A refusal sent back over the socket: a stable code and a message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    Launch(LaunchRequest),
    /// The wrapper started the granted product with this pid.
    Attach {
        session: String,
        pid: u32,
    },
    /// The wrapper reports that its product exited.
    Exit {
        session: String,
    },
    ProcessStarted(ProcessInfo),
    ProcessExited {
        pid: u32,
    },
    /// The server answered a claim. A 4xx error body (`{"error":{code,message}}`)
    /// is passed as a [`ClaimResponse::Denied`] with that code; a 5xx answer is a
    /// [`Input::ClaimFailed`], as the server may not have decided.
    ClaimAnswered {
        claim_id: String,
        response: ClaimResponse,
    },
    /// The claim could not be delivered or its answer was lost (after the driver's
    /// own quick retries). The claim stays journaled and is resent with its id.
    ClaimFailed {
        claim_id: String,
        error: String,
    },
    /// A heartbeat succeeded.
    ContactOk {
        server_time: DateTime<Utc>,
        policy: Policy,
        balance: u64,
        /// The heartbeat's R9 notices (those after [`super::Core::notices_after`]).
        notices: Vec<Notice>,
    },
    ContactFailed {
        error: String,
    },
    /// The rate sheet changed (heartbeat `products`, or the journal at start).
    RateSheet(Vec<Product>),
    Job(JobRequest),
    /// A timer set by [`Action::SetTimer`] fired, or the driver's periodic tick.
    Tick,
}

/// How a session was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    Wrapper,
    Watcher,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Wrapper => "wrapper",
            Origin::Watcher => "watcher",
        }
    }
}

/// A licensed session as journaled: the record uploaded to the server plus what
/// the agent needs locally to find and close the process again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRow {
    pub record: SessionRecord,
    pub uid: u32,
    pub account: String,
    pub pid: Option<u32>,
    pub origin: Origin,
}

/// A window the agent holds, with the server's signed lease for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldWindow {
    pub user: String,
    pub product: String,
    pub source: Source,
    pub window: Window,
    pub lease: SignedLease,
}

/// What the journal must record.
#[derive(Debug, Clone, PartialEq)]
pub enum Persist {
    /// A claim about to be sent; written before the matching [`Action::Claim`].
    ClaimPending(ClaimRequest),
    /// The claim's answer has been acted upon; it is never resent.
    ClaimSettled {
        claim_id: String,
    },
    /// Insert or replace the window held for (user, product).
    Window(HeldWindow),
    /// Insert or replace a session (its record changed: started, window, ended).
    Session(SessionRow),
    Clock(ClockState),
    ClockRollback(ClockRollback),
    Policy(Policy),
    RateSheet(Vec<Product>),
    Balance(u64),
    /// The newest server notice already passed on to users.
    NoticesSeen(i64),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Persist(Persist),
    /// Send this claim (`POST /v1/agent/claims`); answer with
    /// [`Input::ClaimAnswered`] or [`Input::ClaimFailed`].
    Claim {
        claim_id: String,
        request: ClaimRequest,
    },
    /// Call `handle(Input::Tick, ..)` when the boot clock reaches this value.
    SetTimer(Duration),
    /// Publish an event to one account's subscribers, or to every subscriber.
    Notify {
        uid: Option<u32>,
        event: Event,
    },
    /// Stop a product: `graceful` is SIGTERM / WM_CLOSE. A wrapper session without
    /// a pid is closed through its wrapper.
    Close {
        session: String,
        pid: Option<u32>,
        graceful: bool,
    },
    /// The graceful close was ignored for `close_grace`: SIGKILL.
    Kill {
        session: String,
        pid: Option<u32>,
    },
    ReplyLaunch {
        request: String,
        result: Result<LaunchReply, Refusal>,
    },
    ReplyJob {
        request: String,
        result: Result<ResultReply, Refusal>,
    },
    /// Contact the server now (`POST /v1/agent/heartbeat` with the journal's
    /// unsent session records and clock rollbacks); answer with
    /// [`Input::ContactOk`] or [`Input::ContactFailed`]. The driver adds jitter.
    Heartbeat,
}

/// Everything the journal gives back to rebuild a core after a restart.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CoreState {
    pub clock: Option<ClockState>,
    pub policy: Option<Policy>,
    pub products: Vec<Product>,
    pub balance: Option<u64>,
    pub notices_seen: Option<i64>,
    pub windows: Vec<HeldWindow>,
    /// Sessions not yet ended.
    pub sessions: Vec<SessionRow>,
    /// Claims journaled but never settled, oldest first.
    pub pending_claims: Vec<ClaimRequest>,
}
