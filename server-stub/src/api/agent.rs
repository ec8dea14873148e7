//! Handlers of `/v1/agent/*` and `/v1/health`. Every agent call but `enroll`
//! takes [`Device`]: the device token identifies the workstation.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use flex_protocol::api::*;

use super::error::ApiError;
use super::extract::{ApiJson, Device, PathEmail};
use super::AppState;
use crate::store::ClaimOutcome;

pub async fn health(State(st): State<AppState>) -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        server_time: st.store.now(),
    })
}

pub async fn enroll(
    State(st): State<AppState>,
    ApiJson(req): ApiJson<EnrollRequest>,
) -> Result<Json<EnrollResponse>, ApiError> {
    Ok(Json(st.store.run(move |s| s.enroll(&req)).await?))
}

/// A stored answer, sent verbatim: a retry is byte-for-byte the original.
fn stored(outcome: ClaimOutcome) -> Response {
    let status = StatusCode::from_u16(outcome.status).unwrap_or(StatusCode::OK);
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        outcome.body,
    )
        .into_response()
}

pub async fn claim(
    Device(device): Device,
    State(st): State<AppState>,
    ApiJson(req): ApiJson<ClaimRequest>,
) -> Result<Response, ApiError> {
    Ok(stored(st.claims.claim(device, req).await?))
}

/// R13: a short run's window back; a repeat gets the first answer.
pub async fn refund(
    Device(device): Device,
    State(st): State<AppState>,
    ApiJson(req): ApiJson<RefundRequest>,
) -> Result<Response, ApiError> {
    Ok(stored(
        st.store.run(move |s| s.refund(&device, &req)).await?,
    ))
}

pub async fn heartbeat(
    Device(device): Device,
    State(st): State<AppState>,
    ApiJson(req): ApiJson<HeartbeatRequest>,
) -> Result<Json<HeartbeatResponse>, ApiError> {
    Ok(Json(
        st.store.run(move |s| s.heartbeat(&device, &req)).await?,
    ))
}

pub async fn products(_: Device, State(st): State<AppState>) -> Json<ProductList> {
    Json(ProductList {
        products: st.store.rates().products().to_vec(),
    })
}

/// Whether a user is known (nothing more), for `flexctl doctor` on a workstation.
pub async fn user_check(
    Device(device): Device,
    State(st): State<AppState>,
    PathEmail(email): PathEmail,
) -> Result<Json<UserCheck>, ApiError> {
    Ok(Json(
        st.store.run(move |s| s.check_user(&device, &email)).await?,
    ))
}
