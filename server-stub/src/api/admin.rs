//! Handlers of `/v1/admin/*`. Each one takes [`Admin`] first: no token, no call.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use flex_protocol::api::*;
use flex_protocol::{Email, ProductId};

use super::error::{import_response, ApiError};
use super::extract::{bytes_rejection, Admin, ApiJson, PathEmail};
use super::AppState;
use crate::store::ChargeFilter;

type ApiResult<T> = Result<T, ApiError>;

pub async fn add_user(
    _: Admin,
    State(st): State<AppState>,
    ApiJson(new): ApiJson<NewUser>,
) -> ApiResult<(StatusCode, Json<User>)> {
    let user = st.store.run(move |s| s.add_user(new)).await?;
    Ok((StatusCode::CREATED, Json(user)))
}

pub async fn list_users(_: Admin, State(st): State<AppState>) -> ApiResult<Json<UserList>> {
    let users = st.store.run(|s| s.list_users()).await?;
    Ok(Json(UserList { users }))
}

pub async fn import_users(
    _: Admin,
    State(st): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(e) => return bytes_rejection(e).into_response(),
    };
    let result = st.store.run(move |s| s.import_users(&body)).await;
    import_response(result)
}

pub async fn set_flex(
    _: Admin,
    State(st): State<AppState>,
    PathEmail(email): PathEmail,
    ApiJson(body): ApiJson<FlexAssignment>,
) -> ApiResult<Json<User>> {
    let user = st
        .store
        .run(move |s| s.set_flex(&email, body.assigned))
        .await?;
    Ok(Json(user))
}

pub async fn add_subscription(
    _: Admin,
    State(st): State<AppState>,
    ApiJson(new): ApiJson<NewSubscription>,
) -> ApiResult<(StatusCode, Json<Subscription>)> {
    let sub = st.store.run(move |s| s.add_subscription(new)).await?;
    Ok((StatusCode::CREATED, Json(sub)))
}

pub async fn remove_subscription(
    _: Admin,
    State(st): State<AppState>,
    PathEmail(email): PathEmail,
    Path((_, product)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let product = ProductId::parse(&product).map_err(|e| ApiError::invalid(e.to_string()))?;
    st.store
        .run(move |s| s.remove_subscription(&email, &product))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn products(_: Admin, State(st): State<AppState>) -> Json<ProductList> {
    Json(ProductList {
        products: st.store.rates().products().to_vec(),
    })
}

pub async fn get_defaults(
    _: Admin,
    State(st): State<AppState>,
) -> ApiResult<Json<DefaultAssignments>> {
    Ok(Json(st.store.run(|s| s.default_assignments()).await?))
}

pub async fn set_defaults(
    _: Admin,
    State(st): State<AppState>,
    ApiJson(body): ApiJson<DefaultAssignments>,
) -> ApiResult<Json<DefaultAssignments>> {
    Ok(Json(
        st.store
            .run(move |s| s.set_default_assignments(body))
            .await?,
    ))
}

pub async fn buy_tokens(
    _: Admin,
    State(st): State<AppState>,
    ApiJson(body): ApiJson<BuyTokens>,
) -> ApiResult<(StatusCode, Json<Lot>)> {
    let lot = st.store.run(move |s| s.buy_tokens(body.tokens)).await?;
    Ok((StatusCode::CREATED, Json(lot)))
}

pub async fn balance(_: Admin, State(st): State<AppState>) -> ApiResult<Json<Balance>> {
    Ok(Json(st.store.run(|s| s.balance()).await?))
}

/// `GET /v1/admin/charges?user&product`, as the query string says it.
#[derive(serde::Deserialize)]
pub struct ChargeQuery {
    user: Option<String>,
    product: Option<String>,
}

pub async fn charges(
    _: Admin,
    State(st): State<AppState>,
    Query(q): Query<ChargeQuery>,
) -> ApiResult<Json<ChargeList>> {
    // The user is parsed here, where the text enters; a bad one is a 400
    // naming it rather than a filter that silently matches nothing.
    let user = q
        .user
        .as_deref()
        .map(Email::parse)
        .transpose()
        .map_err(|e| ApiError::invalid(format!("user: {e}")))?;
    let filter = ChargeFilter {
        user,
        product: q.product,
    };
    let charges = st.store.run(move |s| s.charges(&filter)).await?;
    Ok(Json(ChargeList { charges }))
}

pub async fn notices(_: Admin, State(st): State<AppState>) -> ApiResult<Json<NoticeList>> {
    let notices = st.store.run(|s| s.notices()).await?;
    Ok(Json(NoticeList { notices }))
}

/// A body is optional: no body (or `{}`) makes a one-use key with the default ttl.
pub async fn enrollment_token(
    _: Admin,
    State(st): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<EnrollmentToken>)> {
    let body = body.map_err(bytes_rejection)?;
    let req: NewEnrollmentToken = if body.iter().all(u8::is_ascii_whitespace) {
        NewEnrollmentToken::default()
    } else {
        super::extract::object_from_slice(&body)?
    };
    let token = st
        .store
        .run(move |s| s.create_enrollment_token(&req))
        .await?;
    Ok((StatusCode::CREATED, Json(token)))
}

pub async fn enrollment_tokens(
    _: Admin,
    State(st): State<AppState>,
) -> ApiResult<Json<EnrollmentTokenList>> {
    let enrollment_tokens = st.store.run(|s| s.enrollment_tokens()).await?;
    Ok(Json(EnrollmentTokenList { enrollment_tokens }))
}

pub async fn revoke_enrollment_token(
    _: Admin,
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<EnrollmentTokenInfo>> {
    Ok(Json(
        st.store
            .run(move |s| s.revoke_enrollment_token(&id))
            .await?,
    ))
}

pub async fn devices(_: Admin, State(st): State<AppState>) -> ApiResult<Json<DeviceList>> {
    let devices = st.store.run(|s| s.devices()).await?;
    Ok(Json(DeviceList { devices }))
}

pub async fn revoke_device(
    _: Admin,
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<DeviceInfo>> {
    Ok(Json(st.store.run(move |s| s.revoke_device(&id)).await?))
}

pub async fn set_test_clock(
    _: Admin,
    State(st): State<AppState>,
    ApiJson(body): ApiJson<TestClock>,
) -> ApiResult<Json<TestClock>> {
    let clock = st
        .test_clock
        .as_ref()
        .ok_or_else(|| ApiError::not_found("the server was not started with --test-clock"))?;
    clock.set(body.now);
    // Persisted so a restarted test server resumes at the same instant.
    let now = body.now;
    st.store
        .run(move |s| {
            s.set_meta(crate::server::TEST_CLOCK_KEY, &now.to_rfc3339())?;
            s.tick()
        })
        .await?;
    Ok(Json(body))
}

pub async fn get_test_clock(_: Admin, State(st): State<AppState>) -> ApiResult<Json<TestClock>> {
    Ok(Json(TestClock {
        now: st.store.now(),
    }))
}
