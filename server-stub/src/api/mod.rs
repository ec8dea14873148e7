//! The HTTP API v1 (DESIGN.md section 4): routes, shared state and limits.

mod admin;
mod agent;
pub mod error;
pub(crate) mod extract;
mod reports;

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post, put};
use axum::Router;
use sha2::{Digest, Sha256};

use crate::clock::TestClock;
use crate::net::throttle::AuthThrottle;
use crate::store::{ClaimBatcher, Store};
use error::ApiError;

/// Cap on JSON bodies.
pub const MAX_JSON_BODY: usize = 1024 * 1024;
/// Cap on CSV imports.
pub const MAX_CSV_BODY: usize = 8 * 1024 * 1024;

/// The OpenAPI document served at `/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

#[derive(Clone)]
pub struct AppState {
    pub store: Arc<Store>,
    /// Claims go through group commit (see [`crate::store::ClaimBatcher`]).
    pub claims: ClaimBatcher,
    admin_token_hash: [u8; 32],
    /// Present only when the server was started with `--test-clock`.
    pub test_clock: Option<TestClock>,
    /// The web console's sessions and cookie settings.
    pub console: Arc<crate::console::Console>,
    /// `/v1/openapi.json` with this server's pack sizes.
    openapi: Arc<str>,
    /// Wrong admin tokens per client address.
    auth_throttle: Arc<AuthThrottle>,
}

/// What a presented admin token got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AdminAuth {
    Ok,
    Wrong,
    /// The address is throttled; the token was not looked at.
    Throttled(std::time::Duration),
}

impl AppState {
    pub fn new(store: Arc<Store>, admin_token: &str, test_clock: Option<TestClock>) -> Self {
        let store_pack_sizes = store.policy().pack_sizes.clone();
        let product_ids: Vec<String> = store
            .rates()
            .products()
            .iter()
            .map(|p| p.id.to_string())
            .collect();
        let defaults = crate::config::LimitsConfig::default();
        AppState {
            claims: ClaimBatcher::start(store.clone()),
            store,
            admin_token_hash: Sha256::digest(admin_token.as_bytes()).into(),
            test_clock,
            console: Arc::new(crate::console::Console::default()),
            openapi: openapi_for(&store_pack_sizes, &product_ids),
            auth_throttle: Arc::new(AuthThrottle::new(
                defaults.admin_auth_failures,
                defaults.admin_auth_window,
            )),
        }
    }

    /// Counts wrong admin tokens with `throttle` (from `[limits]`).
    pub fn with_auth_throttle(mut self, throttle: AuthThrottle) -> Self {
        self.auth_throttle = Arc::new(throttle);
        self
    }

    /// Checks an admin token presented from `peer` (the console's login form or
    /// a bearer token), throttling an address that keeps guessing.
    pub(crate) fn admin_auth(&self, peer: Option<IpAddr>, presented: &str) -> AdminAuth {
        let ip = peer.unwrap_or(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED));
        let key = crate::net::client_key(ip);
        let now = std::time::Instant::now();
        if let Err(wait) = self.auth_throttle.check(key, now) {
            return AdminAuth::Throttled(wait);
        }
        if self.admin_token_matches(presented) {
            self.auth_throttle.succeeded(key);
            return AdminAuth::Ok;
        }
        let f = self.auth_throttle.failed(key, now);
        let (max, window) = (
            self.auth_throttle.max_failures(),
            self.auth_throttle.window(),
        );
        tracing::warn!(
            client = %ip,
            "wrong admin token from {ip} ({} of {max} allowed in {}s)",
            f.failures,
            window.as_secs()
        );
        if let Some(wait) = f.blocked_for {
            tracing::warn!(
                client = %ip,
                "admin-token attempts from {ip} answer 429 for {}s: {max} wrong tokens",
                error::retry_after_secs(wait)
            );
        }
        AdminAuth::Wrong
    }

    /// Console cookies get `Secure` (the server speaks TLS).
    pub fn with_secure_cookies(mut self, secure: bool) -> Self {
        self.console = Arc::new(crate::console::Console::new(secure));
        self
    }

    /// Compares digests so the time taken does not depend on a matching prefix.
    fn admin_token_matches(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        digest
            .iter()
            .zip(self.admin_token_hash.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

pub fn router(state: AppState) -> Router {
    let mut admin = Router::new()
        .route("/users", post(admin::add_user).get(admin::list_users))
        .route(
            "/users/import",
            post(admin::import_users).layer(DefaultBodyLimit::max(MAX_CSV_BODY)),
        )
        .route("/users/{email}/flex", put(admin::set_flex))
        .route("/subscriptions", post(admin::add_subscription))
        .route(
            "/subscriptions/{email}/{product}",
            delete(admin::remove_subscription),
        )
        .route("/products", get(admin::products))
        .route(
            "/default-assignments",
            put(admin::set_defaults).get(admin::get_defaults),
        )
        .route("/token-lots", post(admin::buy_tokens))
        .route("/balance", get(admin::balance))
        .route("/charges", get(admin::charges))
        .route("/notices", get(admin::notices))
        .route(
            "/enrollment-tokens",
            post(admin::enrollment_token).get(admin::enrollment_tokens),
        )
        .route(
            "/enrollment-tokens/{id}",
            delete(admin::revoke_enrollment_token),
        )
        .route("/devices", get(admin::devices))
        .route("/devices/{id}", delete(admin::revoke_device))
        .route("/reports/usage", get(reports::usage))
        .route("/recommendations", get(reports::recommendations))
        .route("/estimate", post(reports::estimate))
        .route("/forecast", get(reports::forecast));
    if state.test_clock.is_some() {
        admin = admin.route(
            "/test-clock",
            put(admin::set_test_clock).get(admin::get_test_clock),
        );
    }
    let agent = Router::new()
        .route("/enroll", post(agent::enroll))
        .route("/claims", post(agent::claim))
        .route("/refunds", post(agent::refund))
        .route("/heartbeat", post(agent::heartbeat))
        .route("/products", get(agent::products))
        .route("/users/{email}", get(agent::user_check));
    Router::new()
        .route("/v1/health", get(agent::health))
        .route("/v1/openapi.json", get(openapi))
        .nest("/v1/admin", admin)
        .nest("/v1/agent", agent)
        .merge(crate::console::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY))
        .with_state(state)
}

async fn openapi(
    axum::extract::State(st): axum::extract::State<AppState>,
) -> impl axum::response::IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        st.openapi.to_string(),
    )
}

/// The OpenAPI document with the pack sizes this server sells as the only
/// values of `POST /v1/admin/token-lots`'s `tokens`, and the products of its
/// rate sheet as the only product ids where a request must name one of them
/// (`RateSheetProductId`; `ProductId` is the rule alone, for answers that
/// may name a product since taken off the rate sheet).
fn openapi_for(pack_sizes: &[u64], products: &[String]) -> Arc<str> {
    let mut doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("openapi.json parses");
    let tokens = doc.pointer_mut(
        "/paths/~1v1~1admin~1token-lots/post/requestBody/content/application~1json/schema/properties/tokens",
    );
    if let Some(serde_json::Value::Object(t)) = tokens {
        t.insert("enum".into(), serde_json::json!(pack_sizes));
    }
    if let Some(serde_json::Value::Object(p)) =
        doc.pointer_mut("/components/schemas/RateSheetProductId")
    {
        p.insert("enum".into(), serde_json::json!(products));
    }
    doc.to_string().into()
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no endpoint at {}", uri.path()))
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        flex_protocol::ErrorCode::InvalidRequest,
        format!("{method} is not allowed on {}", uri.path()),
    )
}

#[cfg(test)]
mod openapi_tests {
    use super::*;

    #[test]
    fn the_served_document_lists_this_servers_packs_and_products() {
        let doc: serde_json::Value =
            serde_json::from_str(&openapi_for(&[20, 50], &["autocad".into()])).unwrap();
        assert_eq!(
            doc.pointer("/paths/~1v1~1admin~1token-lots/post/requestBody/content/application~1json/schema/properties/tokens/enum"),
            Some(&serde_json::json!([20, 50]))
        );
        assert_eq!(
            doc.pointer("/components/schemas/RateSheetProductId/enum"),
            Some(&serde_json::json!(["autocad"]))
        );
    }

    /// Every email of the users and subscriptions API, in a body, an answer or
    /// a path, is described by the one `Email` schema `Email::parse` enforces.
    #[test]
    fn emails_share_the_one_schema() {
        let doc: serde_json::Value =
            serde_json::from_str(&openapi_for(&[20], &["autocad".into()])).unwrap();
        let email = serde_json::json!("#/components/schemas/Email");
        for at in [
            "/components/schemas/NewUser/properties/email/$ref",
            "/components/schemas/User/properties/email/$ref",
            "/paths/~1v1~1admin~1subscriptions/post/requestBody/content/application~1json/schema/properties/email/$ref",
            "/paths/~1v1~1admin~1subscriptions/post/responses/201/content/application~1json/schema/properties/email/$ref",
            "/paths/~1v1~1agent~1users~1{email}/get/responses/200/content/application~1json/schema/properties/email/allOf/0/$ref",
            "/paths/~1v1~1admin~1users~1{email}~1flex/put/parameters/0/schema/$ref",
            "/paths/~1v1~1admin~1subscriptions~1{email}~1{product}/delete/parameters/0/schema/$ref",
            "/paths/~1v1~1agent~1users~1{email}/get/parameters/0/schema/$ref",
            "/paths/~1v1~1admin~1charges/get/parameters/0/schema/$ref",
        ] {
            assert_eq!(doc.pointer(at), Some(&email), "{at}");
        }
        let schema = &doc["components"]["schemas"]["Email"];
        assert_eq!(schema["maxLength"], flex_protocol::MAX_EMAIL);
        // No "email" format: it is ASCII-only (RFC 5321), and the server takes
        // addresses with other letters; the fuzzer held the two apart.
        assert_eq!(schema.get("format"), None);
        assert!(schema["pattern"].is_string());
    }
}
