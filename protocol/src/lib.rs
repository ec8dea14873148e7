//! Wire types shared by the Flex agent, the entitlement server and the admin CLI.
//!
//! Everything that crosses a process boundary is defined here and only here: the
//! JSON bodies of the HTTP API ([`api`]), the stable error codes ([`ErrorCode`]),
//! the newline-delimited JSON spoken on the agent's local socket ([`socket`]) and
//! the signed window lease ([`lease`]) and the admin's reports, estimator and
//! forecast ([`reports`]). New fields must carry `#[serde(default)]`
//! so that an older peer can still read a newer message; golden files under
//! `tests/data` pin the format.

pub mod api;
mod email;
mod error;
pub mod ids;
pub mod lease;
pub mod reports;
pub mod socket;

pub use email::{Email, EmailError, MAX_EMAIL};
pub use error::ErrorCode;
pub use ids::{ClaimId, IdError, IdSource, ProductId, SessionId, WindowId};

/// Version of the local-socket protocol, returned by `hello`.
pub const PROTOCOL_VERSION: u32 = 1;

/// Version prefix of every HTTP API path.
pub const API_PREFIX: &str = "/v1";
