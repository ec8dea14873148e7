//! What goes into the core ([`Input`]) and what comes out ([`Action`]).
//!
//! Inputs are facts the driver observed (a wrapper asked, a process started, the
//! server answered, a timer fired); actions are things the driver must do. The
//! [`Persist`] actions are what the journal must record; the driver applies every
//! `Persist` of one batch in one transaction *before* carrying out any other action
//! of that batch, which is what makes "journal the claim id, then send it" hold.

use chrono::{DateTime, Utc};
use flex_protocol::api::{
    ClaimRequest, ClaimResponse, ClockRollback, Notice, Policy, Product, RefundResponse,
    SessionRecord, Source, Window,
};
use flex_protocol::lease::SignedLease;
use flex_protocol::socket::{Event, LaunchReply, ResultReply};
use flex_protocol::{ClaimId, ProductId, SessionId, WindowId};
use flex_protocol::{Email, ErrorCode};
use serde::{Deserialize, Serialize};
use std::time::Duration;

use super::clock::ClockState;
use crate::account::AccountId;
use crate::process::ProcessId;

/// Id of a local-API connection, unique for the agent's run.
pub type ConnId = u64;

/// Who sent a request, from the kernel: the account, and whether it is an
/// administrator (root; SYSTEM or Administrators on Windows), who may act for
/// other accounts and manage their sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub account: AccountId,
    pub admin: bool,
}

/// A wrapper (`flexctl run`) asks to start a product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchRequest {
    /// Id of this socket request; echoed in [`Action::ReplyLaunch`].
    pub request: String,
    /// The connection asking; the session it gets is held by it.
    pub conn: ConnId,
    /// The account the product runs for (the caller's own, or for an admin
    /// caller the one it named).
    pub account: AccountId,
    pub account_name: String,
    /// The account's email, from the config's user mapping.
    pub user: Email,
    pub product: ProductId,
    pub version: Option<String>,
    /// Known only when the wrapper started the product before asking; the
    /// driver checked that the caller may hand this process over.
    pub process: Option<ProcessId>,
}

/// The watcher saw a product process start (or adopted one at agent start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    pub process: ProcessId,
    pub account: AccountId,
    pub account_name: String,
    pub user: Email,
    pub product: ProductId,
    pub version: Option<String>,
    pub started_at: DateTime<Utc>,
}

/// A per-result job (`flexctl result`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRequest {
    pub request: String,
    pub account: AccountId,
    pub user: Email,
    pub product: ProductId,
    pub count: u64,
    /// The caller's job id: a retry with the same id is charged at most once.
    pub job: String,
}

/// A refusal sent back over the socket: a stable code and a message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
    /// The display name of the product refused, for the wrapper's line.
    pub product_name: Option<String>,
}

impl Refusal {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
            product_name: None,
        }
    }

    /// The same refusal, naming the product it refuses.
    pub fn about(mut self, product_name: Option<String>) -> Refusal {
        self.product_name = product_name;
        self
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    Launch(LaunchRequest),
    /// The wrapper started the granted product as this process.
    Attach {
        request: String,
        conn: ConnId,
        caller: Caller,
        session: SessionId,
        process: ProcessId,
    },
    /// The wrapper reports that its product exited.
    Exit {
        request: String,
        conn: ConnId,
        caller: Caller,
        session: SessionId,
    },
    /// A local-API connection closed: the sessions it held lose their wrapper.
    ConnectionClosed {
        conn: ConnId,
    },
    ProcessStarted(ProcessInfo),
    /// A process ended (the watcher saw it, or its handle said so), or its
    /// handle could not be opened again after a restart.
    ProcessExited {
        process: ProcessId,
    },
    /// The server answered a claim. A 4xx error body (`{"error":{code,message}}`)
    /// is passed as a [`ClaimResponse::Denied`] with that code; a 5xx answer is a
    /// [`Input::ClaimFailed`], as the server may not have decided.
    ClaimAnswered {
        claim_id: ClaimId,
        response: ClaimResponse,
    },
    /// The claim could not be delivered or its answer was lost (after the driver's
    /// own quick retries). The claim stays journaled and is resent with its id.
    ClaimFailed {
        claim_id: ClaimId,
        error: String,
    },
    /// A heartbeat succeeded.
    ContactOk {
        server_time: DateTime<Utc>,
        policy: Policy,
        balance: u64,
        /// The heartbeat's R9 notices (those after [`super::Core::notices_after`]).
        notices: Vec<Notice>,
        /// What the server took of the uploaded records: journaled by the core's
        /// [`Persist::Uploaded`].
        uploaded: UploadReceipt,
    },
    ContactFailed {
        error: String,
    },
    /// The server answered a refund: refunded, or refused for good (`Err`
    /// with its reason).
    RefundAnswered {
        window_id: WindowId,
        result: Result<RefundResponse, String>,
    },
    /// The refund could not be delivered; it is asked again at next contact.
    RefundFailed {
        window_id: WindowId,
    },
    /// The server answered that this workstation's credential was revoked.
    DeviceRevoked {
        message: String,
    },
    /// The rate sheet changed (heartbeat `products`, or the journal at start).
    RateSheet(Vec<Product>),
    Job(JobRequest),
    /// A notifier (desktop session) of `account` on connection `conn` reports
    /// how long its user gave no input, and whether the session is locked.
    Activity {
        conn: ConnId,
        account: AccountId,
        idle: Duration,
        locked: bool,
    },
    /// `account`'s notifier asked `windows` top-level windows of process
    /// `pid` to close (see [`Event::CloseWindows`]).
    WindowsClosing {
        account: AccountId,
        pid: u32,
        windows: u32,
    },
    /// CPU time used so far by each process asked in [`Action::SampleCpu`]
    /// (those gone are left out).
    CpuTimes {
        samples: Vec<(ProcessId, Duration)>,
    },
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
    pub account: AccountId,
    pub account_name: String,
    pub process: Option<ProcessId>,
    pub origin: Origin,
}

/// A window the agent holds, with the server's signed lease for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldWindow {
    pub user: Email,
    pub product: ProductId,
    pub source: Source,
    pub window: Window,
    pub lease: SignedLease,
    /// What the server charged for this window (0 when it was free).
    #[serde(default)]
    pub tokens_charged: u64,
}

/// Where a per-result job stands, so that a retry is charged at most once and a
/// refused job can be retried once its cause is fixed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobState {
    pub user: Email,
    pub product: ProductId,
    pub job: String,
    /// Which claim id the job is on: a refusal moves it to the next one.
    pub attempt: u32,
    pub outcome: JobOutcome,
    pub updated: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobOutcome {
    /// Sent, or about to be; the server's answer is not known.
    Pending,
    /// Charged: a retry gets the same answer, never a second charge.
    Charged,
    /// Refused (out of tokens, not entitled, …): the next try is a new claim.
    Refused,
}

/// What the journal must record.
#[derive(Debug, Clone, PartialEq)]
pub enum Persist {
    /// A claim about to be sent; written before the matching [`Action::Claim`].
    ClaimPending(ClaimRequest),
    /// The claim's answer has been acted upon; it is never resent.
    ClaimSettled {
        claim_id: ClaimId,
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
    /// Insert or replace a job's state.
    Job(JobState),
    /// A refund about to be asked; written before the matching
    /// [`Action::Refund`].
    RefundPending(RefundAsk),
    /// The refund's answer (or refusal) was acted upon; never asked again.
    RefundSettled {
        window_id: WindowId,
    },
    /// Forget the window held for (user, product).
    DropWindow {
        user: Email,
        product: ProductId,
    },
    /// A heartbeat's upload was stored by the server.
    Uploaded(UploadReceipt),
}

/// A refund of a window no process used past the short-use grace (R13).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundAsk {
    pub window_id: WindowId,
    pub user: Email,
    pub product: ProductId,
    /// Whom to tell (the account that last ran the product in the window).
    pub account: Option<AccountId>,
}

impl Persist {
    /// Whether losing this write could cost money or licence: a claim or
    /// refund about to be sent, a window and its lease, a job's attempt, the
    /// offline clock. Such a batch is made durable (fsync) before anything
    /// else happens. The others (usage records, settled marks, caches) may be
    /// written after the reply and without waiting for the disk: a power cut
    /// may lose the last of them, and each is either sent again (the server
    /// answers a repeat as it answered the first) or rebuilt.
    pub fn is_money(&self) -> bool {
        matches!(
            self,
            Persist::ClaimPending(_)
                | Persist::Window(_)
                | Persist::DropWindow { .. }
                | Persist::RefundPending(_)
                | Persist::Job(_)
                | Persist::Clock(_)
                | Persist::ClockRollback(_)
        )
    }
}

/// What a successful heartbeat uploaded and the server took: the journal marks
/// those session revisions as uploaded and deletes the reported rollbacks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UploadReceipt {
    /// (session id, revision sent) of every session record sent.
    pub revisions: Vec<(SessionId, i64)>,
    /// The last clock rollback row sent.
    pub last_rollback: Option<i64>,
    /// The session ids the server stored.
    pub accepted: Vec<SessionId>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Persist(Persist),
    /// Send this claim (`POST /v1/agent/claims`); answer with
    /// [`Input::ClaimAnswered`] or [`Input::ClaimFailed`].
    Claim {
        claim_id: ClaimId,
        request: ClaimRequest,
    },
    /// Call `handle(Input::Tick, ..)` when the boot clock reaches this value.
    SetTimer(Duration),
    /// Publish an event to one account's subscribers, or to every subscriber.
    Notify {
        account: Option<AccountId>,
        event: Event,
    },
    /// Stop a session's product along `route`: `graceful` is SIGTERM / WM_CLOSE.
    Close {
        session: SessionId,
        route: CloseRoute,
        graceful: bool,
    },
    /// Send `event` to the wrapper on connection `conn` (if it is still there).
    TellWrapper {
        conn: ConnId,
        event: Event,
    },
    /// The graceful close was ignored for `close_grace`: SIGKILL / TerminateProcess,
    /// through the process's handle.
    Kill {
        session: SessionId,
        process: ProcessId,
    },
    /// Open a handle on `process` and report [`Input::ProcessExited`] when it ends,
    /// or at once if it is not (any more) that process. Sessions hold it now.
    Track {
        process: ProcessId,
    },
    /// No session holds `process` any more: close its handle.
    Release {
        process: ProcessId,
    },
    ReplyLaunch {
        request: String,
        result: Result<LaunchReply, Refusal>,
    },
    ReplyJob {
        request: String,
        result: Result<ResultReply, Refusal>,
    },
    /// The answer to an `attach` or `exit`.
    ReplyDone {
        request: String,
        result: Result<(), Refusal>,
    },
    /// Read the CPU time each process has used so far and answer with
    /// [`Input::CpuTimes`] (the idle rule, R14).
    SampleCpu {
        processes: Vec<ProcessId>,
    },
    /// Ask the server to refund a window (`POST /v1/agent/refunds`, with the
    /// journal's records of the user's runs of the product); answer with
    /// [`Input::RefundAnswered`] or [`Input::RefundFailed`].
    Refund(RefundAsk),
    /// Contact the server now (`POST /v1/agent/heartbeat` with the journal's
    /// unsent session records and clock rollbacks); answer with
    /// [`Input::ContactOk`] or [`Input::ContactFailed`]. The driver adds jitter.
    Heartbeat,
}

/// How a close reaches a product.
#[derive(Debug, Clone, PartialEq)]
pub enum CloseRoute {
    /// Send `event` to the wrapper holding the session on connection `conn`; the
    /// wrapper stops its product. If that connection is gone, stop `fallback`.
    Wrapper {
        conn: ConnId,
        event: Event,
        fallback: Option<ProcessId>,
    },
    /// Signal the process through its handle.
    Signal { process: ProcessId },
    /// No process is known and no wrapper holds the session: it just ends.
    Nothing,
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
    /// Refunds journaled but never answered.
    pub pending_refunds: Vec<RefundAsk>,
    pub jobs: Vec<JobState>,
}
