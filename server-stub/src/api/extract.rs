//! Request extractors: JSON bodies with our error shape, and bearer-token
//! authentication for admins and devices.

use axum::extract::rejection::{BytesRejection, JsonRejection};
use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, RawPathParams, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use flex_protocol::{Email, ErrorCode};
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::{AdminAuth, AppState};
use crate::store::DeviceAuth;

/// `axum::Json` whose rejections are `{"error":{...}}` naming the bad field.
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !json_content_type(req.headers()) {
            return Err(json_rejection(JsonRejection::MissingJsonContentType(
                Default::default(),
            )));
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(bytes_rejection)?;
        object_from_slice(&bytes).map(ApiJson)
    }
}

/// A JSON object body as `T`. Every request body is an object; serde alone
/// would also read a struct from an array of its fields (`[null, null]`).
pub(super) fn object_from_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::invalid("the body must be a JSON object"));
    }
    axum::Json::<T>::from_bytes(bytes)
        .map(|axum::Json(v)| v)
        .map_err(json_rejection)
}

/// `application/json`, or a `+json` type, as axum's own `Json` accepts.
fn json_content_type(headers: &axum::http::HeaderMap) -> bool {
    let Some(ct) = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

fn json_rejection(r: JsonRejection) -> ApiError {
    match r {
        JsonRejection::BytesRejection(b) => bytes_rejection(b),
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::InvalidRequest,
            "the body must be JSON with content-type application/json",
        ),
        JsonRejection::JsonDataError(e) => {
            ApiError::invalid(format!("invalid body: {}", inner(&e)))
        }
        JsonRejection::JsonSyntaxError(e) => {
            ApiError::invalid(format!("body is not valid JSON: {}", inner(&e)))
        }
        other => ApiError::invalid(other.body_text()),
    }
}

/// serde's own message ("missing field `claim_id` at line 1 column 20") names the
/// field; axum wraps it in a prefix we drop.
fn inner(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg = s.to_string();
        source = s.source();
    }
    msg
}

pub fn bytes_rejection(b: BytesRejection) -> ApiError {
    if b.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::PayloadTooLarge,
            "request body is larger than the limit for this endpoint",
        )
    } else {
        ApiError::invalid(format!("cannot read the request body: {}", b.body_text()))
    }
}

fn bearer(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// The client's IP address, as the accept loop saw it (none in unit tests
/// that call the router directly).
pub fn peer_ip(parts: &Parts) -> Option<IpAddr> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

/// The user a path's `{email}` names (`/v1/admin/users/{email}/flex`,
/// `/v1/admin/subscriptions/{email}/{product}`, `/v1/agent/users/{email}`),
/// checked and normalised before the handler (or the body) is read: a bad
/// address answers 400 naming it, and no store function sees it.
pub struct PathEmail(pub Email);

impl<S: Send + Sync> FromRequestParts<S> for PathEmail {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::invalid(format!("the path's email: {}", e.body_text())))?;
        let raw = params
            .iter()
            .find_map(|(name, value)| (name == "email").then_some(value))
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ErrorCode::Internal,
                    "this route has no {email} in its path",
                )
            })?;
        Email::parse(raw)
            .map(PathEmail)
            .map_err(|e| ApiError::invalid(e.to_string()))
    }
}

/// The client's IP address; never rejects.
pub struct ClientIp(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(peer_ip(parts)))
    }
}

/// Proof that the request carries the admin token. Wrong tokens are counted
/// per client address (see [`crate::net::throttle`]).
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(token) = bearer(parts) else {
            return Err(ApiError::unauthorized(
                "missing admin token: send Authorization: Bearer <token>",
            ));
        };
        match state.admin_auth(peer_ip(parts), token) {
            AdminAuth::Ok => Ok(Admin),
            AdminAuth::Wrong => Err(ApiError::unauthorized("the admin token is not valid")),
            AdminAuth::Throttled(wait) => Err(ApiError::throttled(wait)),
        }
    }
}

/// The enrolled device a request comes from.
pub struct Device(pub String);

impl FromRequestParts<AppState> for Device {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(token) = bearer(parts).map(str::to_owned) else {
            return Err(ApiError::unauthorized(
                "missing device token: send Authorization: Bearer <device token>",
            ));
        };
        match state
            .store
            .run(move |s| s.authenticate_device(&token))
            .await?
        {
            DeviceAuth::Active(id) => Ok(Device(id)),
            DeviceAuth::Revoked { id, at } => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                ErrorCode::DeviceRevoked,
                format!(
                    "this workstation (device {id}) was revoked by the license admin at {}: \
                     it can no longer license products; ask IT to enroll it again with a new \
                     enrollment token",
                    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ),
            )),
            DeviceAuth::Unknown => Err(ApiError::unauthorized(
                "the device token is not valid; enroll the agent again",
            )),
        }
    }
}

#[cfg(test)]
mod object_tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Two {
        a: Option<u32>,
        b: Option<u32>,
    }

    /// Regression (schemathesis): `[null, null]` was read as `{a: null, b: null}`.
    #[test]
    fn only_objects_are_bodies() {
        let err = object_from_slice::<Two>(b" [null, null]").unwrap_err();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        assert!(object_from_slice::<Two>(b"null").is_err());
        assert!(object_from_slice::<Two>(b" {\"a\": 1}").is_ok());
    }
}
