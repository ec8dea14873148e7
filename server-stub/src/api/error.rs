//! The one JSON error type of the HTTP API: `{"error":{"code","message"}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use flex_protocol::api::{ErrorBody, ImportResult};
use flex_protocol::ErrorCode;

use crate::store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
    /// Sent as `Retry-After` (whole seconds, rounded up).
    pub retry_after: Option<std::time::Duration>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 429: too many wrong admin tokens from this address.
    pub fn throttled(retry_after: std::time::Duration) -> Self {
        let secs = retry_after_secs(retry_after);
        ApiError {
            retry_after: Some(retry_after),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::TooManyAttempts,
                format!("too many wrong admin tokens from this address: try again in {secs}s"),
            )
        }
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, message)
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidRequest, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(code = %self.code, "{}", self.message);
        }
        let body = Json(ErrorBody::new(self.code, self.message));
        if let Some(wait) = self.retry_after {
            return (
                self.status,
                [(
                    axum::http::header::RETRY_AFTER,
                    retry_after_secs(wait).to_string(),
                )],
                body,
            )
                .into_response();
        }
        if self.status == StatusCode::PAYLOAD_TOO_LARGE {
            // The rest of the oversize body was never read, so this connection
            // cannot carry another request: say so, or a client reusing it fails.
            return (
                self.status,
                [(axum::http::header::CONNECTION, "close")],
                body,
            )
                .into_response();
        }
        (self.status, body).into_response()
    }
}

/// `Retry-After` in whole seconds, never 0 (that would invite an instant retry).
pub fn retry_after_secs(d: std::time::Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

/// An import with bad lines answers 422 with the import shape plus the error.
#[derive(serde::Serialize)]
struct ImportFailure {
    #[serde(flatten)]
    result: ImportResult,
    error: flex_protocol::api::ApiError,
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Invalid(e) => ApiError::invalid(e.message),
            StoreError::NotFound { .. } => ApiError::not_found(e.to_string()),
            StoreError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, ErrorCode::Conflict, m),
            StoreError::Unauthorized(m) => ApiError::unauthorized(m),
            StoreError::Expired(m) => ApiError::new(
                StatusCode::UNAUTHORIZED,
                ErrorCode::EnrollmentTokenExpired,
                m,
            ),
            StoreError::Import(_) => ApiError::invalid(e.to_string()),
            other => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Internal,
                other.to_string(),
            ),
        }
    }
}

/// Maps a store result for the import endpoint, where bad lines are a 422 body.
pub fn import_response(r: Result<ImportResult, StoreError>) -> Response {
    match r {
        Ok(result) => Json(result).into_response(),
        Err(StoreError::Import(errors)) => {
            let message = format!(
                "{} invalid line(s); nothing was imported. Fix them and import the file again",
                errors.len()
            );
            let body = ImportFailure {
                result: ImportResult {
                    errors,
                    ..ImportResult::default()
                },
                error: flex_protocol::api::ApiError {
                    code: ErrorCode::InvalidRequest,
                    message,
                },
            };
            (StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response()
        }
        Err(e) => ApiError::from(e).into_response(),
    }
}
