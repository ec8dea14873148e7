use std::fmt;

use serde::{Deserialize, Serialize};

/// Stable machine-readable error and denial codes.
///
/// The string form (`snake_case`) is part of the contract: scripts and product
/// wrappers match on it, so a variant is never renamed, only added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The user holds neither a subscription nor a Flex assignment for the product.
    NotEntitled,
    /// The balance does not cover the charge; nothing was charged.
    OutOfTokens,
    /// The product id is not on the rate sheet.
    UnknownProduct,
    /// The user is not known to the server.
    UnknownUser,
    /// A repeated id arrived with a different body, or the request contradicts state.
    Conflict,
    /// Missing or wrong credentials.
    Unauthorized,
    /// The caller is authenticated but not allowed to do this.
    Forbidden,
    /// The request is malformed or names an invalid value.
    InvalidRequest,
    /// The addressed resource does not exist.
    NotFound,
    /// The request body is larger than the cap.
    PayloadTooLarge,
    /// The agent cannot reach the server and holds no valid lease.
    Offline,
    /// The peer speaks a protocol version this side does not.
    UnsupportedProtocol,
    /// The server failed; the request may be retried with the same id.
    Internal,
    /// A per-account limit of the agent's local API was reached (connections,
    /// subscriptions, sessions, pending jobs); retry once some are closed.
    LimitExceeded,
    /// The device's credential was revoked by an admin: enroll it again.
    DeviceRevoked,
    /// The enrollment token was valid once but its time is up: ask for a new one.
    EnrollmentTokenExpired,
    /// Too many wrong admin tokens came from this client address: wait for the
    /// `Retry-After` seconds (HTTP 429).
    TooManyAttempts,
}

impl ErrorCode {
    /// The wire form, e.g. `"out_of_tokens"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NotEntitled => "not_entitled",
            ErrorCode::OutOfTokens => "out_of_tokens",
            ErrorCode::UnknownProduct => "unknown_product",
            ErrorCode::UnknownUser => "unknown_user",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::NotFound => "not_found",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::Offline => "offline",
            ErrorCode::UnsupportedProtocol => "unsupported_protocol",
            ErrorCode::Internal => "internal",
            ErrorCode::LimitExceeded => "limit_exceeded",
            ErrorCode::DeviceRevoked => "device_revoked",
            ErrorCode::EnrollmentTokenExpired => "enrollment_token_expired",
            ErrorCode::TooManyAttempts => "too_many_attempts",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form_matches_as_str() {
        for code in [
            ErrorCode::NotEntitled,
            ErrorCode::OutOfTokens,
            ErrorCode::UnknownProduct,
            ErrorCode::UnknownUser,
            ErrorCode::Conflict,
            ErrorCode::Unauthorized,
            ErrorCode::Forbidden,
            ErrorCode::InvalidRequest,
            ErrorCode::NotFound,
            ErrorCode::PayloadTooLarge,
            ErrorCode::Offline,
            ErrorCode::UnsupportedProtocol,
            ErrorCode::Internal,
            ErrorCode::LimitExceeded,
            ErrorCode::DeviceRevoked,
            ErrorCode::EnrollmentTokenExpired,
            ErrorCode::TooManyAttempts,
        ] {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }
}
