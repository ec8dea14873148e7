//! JSON bodies of the HTTP API v1 (DESIGN.md section 4).
//!
//! Field names are the contract. Times are RFC 3339 UTC; durations in
//! [`Policy`] are whole seconds so that any client can read them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::lease::SignedLease;
use crate::{ClaimId, Email, ErrorCode, ProductId, SessionId, WindowId};

/// `{"error":{"code","message"}}`, the body of every 4xx/5xx answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ApiError,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorBody {
            error: ApiError {
                code,
                message: message.into(),
            },
        }
    }
}

/// `GET /v1/health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    pub version: String,
    pub server_time: DateTime<Utc>,
}

// ---------------------------------------------------------------- rate sheet

/// How a product is charged (R1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "model", rename_all = "snake_case")]
pub enum ChargeModel {
    /// `tokens` per 24-hour window.
    Daily { tokens: u64 },
    /// `ceil(n / per) * tokens` per job of `n` results.
    PerResult { tokens: u64, per: u64 },
}

impl ChargeModel {
    /// Tokens for a job of `results` results; `None` for a daily product.
    pub fn per_result_cost(&self, results: u64) -> Option<u64> {
        match *self {
            ChargeModel::Daily { .. } => None,
            ChargeModel::PerResult { tokens, per } => {
                Some(results.div_ceil(per.max(1)).saturating_mul(tokens))
            }
        }
    }
}

/// Executable file names that identify a product, per OS.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Executables {
    #[serde(default)]
    pub linux: Vec<String>,
    #[serde(default)]
    pub macos: Vec<String>,
    #[serde(default)]
    pub windows: Vec<String>,
    /// Windows: the product's executables by their version resource, which
    /// survives renaming the .exe. An entry matches a file whose resource has
    /// every field the entry gives (compared case-insensitively).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub windows_version: Vec<VersionMatch>,
}

/// Fields of a Windows version resource (`VS_VERSIONINFO` strings) that
/// identify a product's executable; at least one is given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_filename: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_name: Option<String>,
}

impl VersionMatch {
    /// Whether a resource with these strings matches (see [`Executables::windows_version`]).
    pub fn matches(&self, original_filename: Option<&str>, product_name: Option<&str>) -> bool {
        let field = |want: &Option<String>, have: Option<&str>| match want {
            None => true,
            Some(w) => have.is_some_and(|h| h.trim().eq_ignore_ascii_case(w.trim())),
        };
        (self.original_filename.is_some() || self.product_name.is_some())
            && field(&self.original_filename, original_filename)
            && field(&self.product_name, product_name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    pub id: ProductId,
    pub name: String,
    pub charge: ChargeModel,
    #[serde(default)]
    pub executables: Executables,
    /// True for the illustrative rates shipped with the server.
    #[serde(default)]
    pub sample: bool,
}

/// `GET /v1/admin/products`, `GET /v1/agent/products`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProductList {
    pub products: Vec<Product>,
}

// ---------------------------------------------------------------- users

/// `POST /v1/admin/users`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewUser {
    /// Trimmed and lowercased as the body is read; a value that is not an
    /// address fails the whole body.
    pub email: Email,
    pub first_name: String,
    pub last_name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub email: Email,
    pub first_name: String,
    pub last_name: String,
    pub flex_assigned: bool,
    #[serde(default)]
    pub subscriptions: Vec<ProductId>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserList {
    pub users: Vec<User>,
}

/// `POST /v1/admin/users/import` (R12).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImportResult {
    pub created: u64,
    pub updated: u64,
    pub assigned: u64,
    #[serde(default)]
    pub errors: Vec<ImportError>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImportError {
    /// Line in the file, the header being line 1.
    pub line: u64,
    pub message: String,
}

/// `PUT /v1/admin/users/{email}/flex`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlexAssignment {
    pub assigned: bool,
}

/// `POST /v1/admin/subscriptions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewSubscription {
    pub email: Email,
    pub product: ProductId,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Subscription {
    pub email: Email,
    pub product: ProductId,
    pub created_at: DateTime<Utc>,
}

/// R7 mode of the default assignments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AssignmentMode {
    All,
    Allow,
    Deny,
}

/// `PUT /v1/admin/default-assignments`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DefaultAssignments {
    pub mode: AssignmentMode,
    #[serde(default)]
    pub products: Vec<ProductId>,
}

impl DefaultAssignments {
    /// Whether a Flex user may open `product` under these defaults.
    pub fn allows(&self, product: &ProductId) -> bool {
        let listed = self.products.contains(product);
        match self.mode {
            AssignmentMode::All => true,
            AssignmentMode::Allow => listed,
            AssignmentMode::Deny => !listed,
        }
    }
}

// ---------------------------------------------------------------- tokens

/// `POST /v1/admin/token-lots`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuyTokens {
    pub tokens: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lot {
    pub id: i64,
    pub tokens: u64,
    pub remaining: u64,
    pub purchased_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// `GET /v1/admin/balance`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Balance {
    pub balance: u64,
    pub low_balance_threshold: u64,
    pub lots: Vec<Lot>,
}

/// Whether a window or charge is paid by a subscription or by tokens (R4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Subscription,
    Tokens,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Subscription => "subscription",
            Source::Tokens => "tokens",
        }
    }
}

/// Why a ledger row exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChargeKind {
    /// A launch opened a new window.
    Window,
    /// A product still running at window end started the next window.
    Renewal,
    /// A per-result job.
    PerResult,
}

/// A lot's share of one charge (R3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LotShare {
    pub lot_id: i64,
    pub tokens: u64,
}

/// A 24-hour charge window `[start, end)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    pub id: WindowId,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// One row of `GET /v1/admin/charges`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Charge {
    pub id: i64,
    pub claim_id: ClaimId,
    pub user: String,
    pub product: ProductId,
    #[serde(default)]
    pub version: Option<String>,
    pub kind: ChargeKind,
    pub source: Source,
    #[serde(default)]
    pub window: Option<Window>,
    #[serde(default)]
    pub results: Option<u64>,
    pub tokens: u64,
    pub lots: Vec<LotShare>,
    pub created_at: DateTime<Utc>,
    /// Tokens given back because no process used the window past the
    /// short-use grace (R13); 0 when not refunded.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub refunded_tokens: u64,
    /// When the refund was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refunded_at: Option<DateTime<Utc>>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChargeList {
    pub charges: Vec<Charge>,
}

// ---------------------------------------------------------------- notices

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeKind {
    LowBalance,
    OutOfTokens,
    TokensExpiring,
    /// One device claimed for more distinct users in a tenant day than
    /// `policy.device_users_alert`. For admins only: heartbeats never carry it.
    DeviceUsers,
}

impl NoticeKind {
    /// The wire form, e.g. `"low_balance"`.
    pub fn as_str(self) -> &'static str {
        match self {
            NoticeKind::LowBalance => "low_balance",
            NoticeKind::OutOfTokens => "out_of_tokens",
            NoticeKind::TokensExpiring => "tokens_expiring",
            NoticeKind::DeviceUsers => "device_users",
        }
    }

    /// Whether agents get it in heartbeats (the balance notices of R9).
    pub fn for_agents(self) -> bool {
        !matches!(self, NoticeKind::DeviceUsers)
    }
}

/// An R9 notice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notice {
    pub id: i64,
    pub kind: NoticeKind,
    pub message: String,
    pub created_at: DateTime<Utc>,
}

/// `GET /v1/admin/notices`, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NoticeList {
    pub notices: Vec<Notice>,
}

// ---------------------------------------------------------------- devices

/// `POST /v1/admin/enrollment-tokens`: an enrollment key for one agent or a fleet.
/// Every field is optional: `{}` makes a key for one agent, valid for the server's
/// `enrollment_token_ttl` (7 days by default).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewEnrollmentToken {
    /// How many agents may enroll with it (1 to 100,000). Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uses: Option<u32>,
    /// How long it stays valid, like `"30d"` or `"12h"` (1 minute to 366 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    /// Free text for the admin, e.g. `"Berlin office, November rollout"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// `POST /v1/admin/enrollment-tokens` answer. `token` is the secret: shown once,
/// stored only as a hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrollmentToken {
    pub token: String,
    pub expires_at: DateTime<Utc>,
    /// The key's id, for listing and revoking (not a secret).
    #[serde(default)]
    pub id: String,
    /// How many agents may still enroll with it.
    #[serde(default)]
    pub uses_left: u32,
    #[serde(default)]
    pub uses: u32,
    #[serde(default)]
    pub note: Option<String>,
}

/// Whether an enrollment key still enrolls agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnrollmentTokenState {
    Active,
    Expired,
    UsedUp,
    Revoked,
}

impl EnrollmentTokenState {
    pub fn as_str(self) -> &'static str {
        match self {
            EnrollmentTokenState::Active => "active",
            EnrollmentTokenState::Expired => "expired",
            EnrollmentTokenState::UsedUp => "used_up",
            EnrollmentTokenState::Revoked => "revoked",
        }
    }
}

/// One enrollment key as listed (never its secret).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrollmentTokenInfo {
    pub id: String,
    #[serde(default)]
    pub note: Option<String>,
    pub uses: u32,
    pub uses_left: u32,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    #[serde(default)]
    pub revoked_at: Option<DateTime<Utc>>,
    pub state: EnrollmentTokenState,
}

/// `GET /v1/admin/enrollment-tokens`, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrollmentTokenList {
    pub enrollment_tokens: Vec<EnrollmentTokenInfo>,
}

/// One enrolled workstation, `GET /v1/admin/devices`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceInfo {
    pub id: String,
    pub hostname: String,
    /// `linux`, `macos`, `windows`, as the agent reported it.
    #[serde(default)]
    pub platform: Option<String>,
    /// The agent's version at enrollment, then at its last heartbeat.
    #[serde(default)]
    pub agent_version: Option<String>,
    pub enrolled_at: DateTime<Utc>,
    #[serde(default)]
    pub last_seen: Option<DateTime<Utc>>,
    pub revoked: bool,
    #[serde(default)]
    pub revoked_at: Option<DateTime<Utc>>,
    /// Id of the enrollment key it enrolled with.
    #[serde(default)]
    pub enrollment_token: Option<String>,
}

/// `GET /v1/agent/users/{email}`: whether the server knows a user, which is
/// all `flexctl doctor` needs to tell a wrong account-to-email mapping. What the
/// user may run (Flex, subscriptions) is not a device's business: a claim
/// answers that for the one product asked. Each check counts as the device
/// speaking for that user (`policy.device_users_alert`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserCheck {
    /// The email as the server normalised it.
    pub email: Email,
    pub known: bool,
}

/// `GET /v1/admin/devices`, newest enrollment first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceList {
    pub devices: Vec<DeviceInfo>,
}

/// `PUT /v1/admin/test-clock`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestClock {
    pub now: DateTime<Utc>,
}

/// `POST /v1/agent/enroll`.
///
/// `enrollment_request_id` makes enrollment idempotent: the agent journals a
/// new random id (a secret, [`ENROLLMENT_REQUEST_ID_MIN`] to
/// [`ENROLLMENT_REQUEST_ID_MAX`] characters of `[A-Za-z0-9_-]`) before it
/// sends the request and sends the same id on every retry. The server answers
/// a repeat of the id (same token, same hostname) with the same device and the
/// same credential, without spending another use of the key, until the device
/// first contacts it (its first heartbeat); after that a repeat is a 409
/// `conflict`. Without the id (older agents) every request enrolls a new device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrollRequest {
    pub enrollment_token: String,
    pub hostname: String,
    /// `linux`, `macos` or `windows`, shown in the device list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollment_request_id: Option<String>,
}

/// Shortest enrollment request id: 128 bits of randomness as hex.
pub const ENROLLMENT_REQUEST_ID_MIN: usize = 32;
/// Longest enrollment request id.
pub const ENROLLMENT_REQUEST_ID_MAX: usize = 128;

/// Whether `id` has the form of an enrollment request id.
pub fn valid_enrollment_request_id(id: &str) -> bool {
    (ENROLLMENT_REQUEST_ID_MIN..=ENROLLMENT_REQUEST_ID_MAX).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A public key the server signs leases with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseKey {
    pub kid: String,
    /// Ed25519 public key, standard base64.
    pub public_key: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrollResponse {
    pub device_id: String,
    pub device_token: String,
    pub lease_keys: Vec<LeaseKey>,
}

// ---------------------------------------------------------------- claims

/// `POST /v1/agent/claims`.
///
/// `claim_id` names one attempt: a retry reuses it and gets the original answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimRequest {
    pub claim_id: ClaimId,
    /// The user's email.
    pub user: Email,
    pub product: ProductId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Number of results of a per-result job (R6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results: Option<u64>,
    /// Id of the window this claim renews; the new window starts at its end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renews: Option<WindowId>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum ClaimResponse {
    Granted(Grant),
    Denied(Denial),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Grant {
    pub source: Source,
    /// The window the launch runs in; absent for a per-result job.
    #[serde(default)]
    pub window: Option<Window>,
    pub tokens_charged: u64,
    pub balance: u64,
    /// Signed copy of the window for offline use; absent for a per-result job.
    #[serde(default)]
    pub lease: Option<SignedLease>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Denial {
    pub reason: ErrorCode,
    pub message: String,
    #[serde(default)]
    pub balance: Option<u64>,
}

// ---------------------------------------------------------------- heartbeat

/// Server policy, learned by agents at every heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    pub window_secs: u64,
    pub flex_offline_limit_secs: u64,
    pub subscription_offline_limit_secs: u64,
    /// Warnings before the Flex offline limit, seconds before it.
    pub offline_warning_secs: Vec<u64>,
    /// Subscription-backed products are warned during this last stretch.
    pub subscription_warning_secs: u64,
    pub heartbeat_interval_secs: u64,
    pub renewal_grace_secs: u64,
    pub close_grace_secs: u64,
    pub low_balance_ratio: f64,
    pub timezone: String,
    pub pack_sizes: Vec<u64>,
    /// R13: a window in which no process of its (user, product) runs at its
    /// start plus this is refunded; 0 turns it off.
    #[serde(default = "default_short_use_grace_secs")]
    pub short_use_grace_secs: u64,
    /// R14: a product whose user gave no input (or was locked) and whose
    /// processes stayed under `idle_cpu_percent` for this long is idle, and a
    /// window ending while it is idle is not renewed; 0 turns it off.
    #[serde(default = "default_idle_after_secs")]
    pub idle_after_secs: u64,
    /// R14: the CPU use (percent of one core) under which a product's
    /// processes count as idle.
    #[serde(default = "default_idle_cpu_percent")]
    pub idle_cpu_percent: f64,
    /// How long before a renewal its user is told ("AutoCAD renews at 08:00
    /// for 7 tokens"); 0 for no notice.
    #[serde(default = "default_renewal_notice_secs")]
    pub renewal_notice_secs: u64,
}

fn default_short_use_grace_secs() -> u64 {
    300
}

fn default_idle_after_secs() -> u64 {
    900
}

fn default_idle_cpu_percent() -> f64 {
    2.0
}

fn default_renewal_notice_secs() -> u64 {
    900
}

/// One run of a product on a device, uploaded by the agent (R10 usage).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// Unique per session; re-uploading the same id replaces the record.
    pub id: SessionId,
    pub user: Email,
    pub product: ProductId,
    #[serde(default)]
    pub version: Option<String>,
    pub source: Source,
    #[serde(default)]
    pub window_id: Option<WindowId>,
    pub started_at: DateTime<Utc>,
    #[serde(default)]
    pub ended_at: Option<DateTime<Utc>>,
}

/// `POST /v1/agent/refunds`: the agent asks for a window back because no
/// process of its (user, product) ran on this device at the window's start
/// plus `short_use_grace` (R13). A window is refunded at most once: a repeat
/// of the request is answered as the first was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundRequest {
    pub window_id: WindowId,
    pub user: Email,
    pub product: ProductId,
    /// The agent's records of the runs of (user, product) on this device that
    /// began before the window's start plus the grace: the server stores them
    /// as a heartbeat's, then checks that none ran at that moment.
    pub sessions: Vec<SessionRecord>,
}

/// The answer to a [`RefundRequest`]. A refusal (a process was running at
/// the window's start plus the grace, or the window is not this device's) is
/// an error body with code `conflict` (409) and is final.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundResponse {
    pub window_id: WindowId,
    /// Tokens given back to the lots they came from (0 for a subscription
    /// window; less than charged when a lot expired meanwhile).
    pub refunded_tokens: u64,
    pub balance: u64,
}

/// A backwards jump of the workstation's wall clock, reported at next contact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockRollback {
    pub detected_at: DateTime<Utc>,
    pub seconds: i64,
}

/// `POST /v1/agent/heartbeat`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatRequest {
    #[serde(default)]
    pub sessions: Vec<SessionRecord>,
    #[serde(default)]
    pub clock_rollbacks: Vec<ClockRollback>,
    /// Only notices with a larger id are returned.
    #[serde(default)]
    pub notices_after: Option<i64>,
    #[serde(default)]
    pub agent_version: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    pub server_time: DateTime<Utc>,
    pub policy: Policy,
    pub balance: u64,
    pub notices: Vec<Notice>,
    /// Session record ids stored by this call.
    #[serde(default)]
    pub accepted_sessions: Vec<SessionId>,
    #[serde(default)]
    pub products: Vec<Product>,
}
