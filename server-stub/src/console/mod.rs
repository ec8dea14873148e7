//! The admin's web console at `/admin/`: server-rendered pages (maud), charts as
//! inline SVG, one small stylesheet, no script.
//!
//! Security: the admin token is asked once on a login form (field `token`) and
//! exchanged for a session cookie (HttpOnly, SameSite=Strict, 8 hours, Secure
//! over TLS); no token ever appears in a URL. Every form carries the session's
//! CSRF token, and a post whose `Origin` is another site or whose
//! `Sec-Fetch-Site` says cross-site is refused. Pages are sent with a strict
//! Content-Security-Policy (no script at all, styles only from the stylesheet),
//! `frame-ancestors 'none'` and `Cache-Control: no-store`. Wrong tokens on the
//! form count against the client address like wrong bearer tokens do (429
//! after `limits.admin_auth_failures`, see [`crate::net::throttle`]).

mod charts;
mod pages;
pub mod session;
mod users;

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use maud::{html, Markup, DOCTYPE};

use crate::api::error::retry_after_secs;
use crate::api::extract::ClientIp;
use crate::api::{AdminAuth, AppState};
use session::{cookie, same, set_cookie, Session, COOKIE, LOGIN_COOKIE};

const STYLE: &str = include_str!("style.css");
const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Console state: whether cookies need `Secure` (sessions are in the store).
#[derive(Debug, Default)]
pub struct Console {
    pub secure: bool,
}

impl Console {
    pub fn new(secure: bool) -> Self {
        Console { secure }
    }
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin", get(|| async { Redirect::to("/admin/") }))
        .route("/admin/", get(pages::overview))
        .route("/admin/login", get(login_page).post(login))
        .route("/admin/logout", post(logout))
        .route("/admin/style.css", get(style))
        .route("/admin/usage", get(pages::usage))
        .route("/admin/usage.csv", get(pages::usage_csv))
        .route("/admin/recommendations", get(pages::recommendations))
        .route(
            "/admin/estimator",
            get(pages::estimator).post(pages::estimate),
        )
        .route("/admin/users", get(users::list).post(users::add))
        .route(
            "/admin/users/import",
            post(users::import).layer(axum::extract::DefaultBodyLimit::max(
                crate::api::MAX_CSV_BODY,
            )),
        )
        .route("/admin/users/{email}", get(users::detail))
        .route("/admin/users/{email}/flex", post(users::set_flex))
        .route(
            "/admin/users/{email}/subscriptions",
            post(users::add_subscription),
        )
        .route(
            "/admin/users/{email}/subscriptions/remove",
            post(users::remove_subscription),
        )
        .layer(axum::middleware::map_response(security_headers))
}

async fn security_headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

async fn style() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE)
}

/// A post that did not come from the console's own pages. Browsers say so in
/// `Sec-Fetch-Site`; older ones only in `Origin` (which is `null` when the
/// browser keeps it private: the CSRF token still decides then).
fn cross_site(headers: &HeaderMap) -> bool {
    let header = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    if let Some(site) = header("sec-fetch-site") {
        return !matches!(site, "same-origin" | "none");
    }
    match (header("origin"), header("host")) {
        (Some("null"), _) => false,
        (Some(o), Some(h)) => o.split_once("://").map_or(o, |(_, rest)| rest) != h,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// A logged-in admin; anything else is sent to the login page. Posts are also
/// checked for a cross-site origin here; their CSRF field by [`Authed::check`].
pub struct Authed {
    pub session: Session,
    id: String,
}

impl FromRequestParts<AppState> for Authed {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, Response> {
        if parts.method != Method::GET && cross_site(&parts.headers) {
            return Err(forbidden("this form was posted from another site"));
        }
        let id = parts
            .headers
            .get(header::COOKIE)
            .and_then(|v| v.to_str().ok())
            .and_then(|c| cookie(c, COOKIE))
            .map(str::to_owned);
        let Some(id) = id else {
            return Err(Redirect::to("/admin/login").into_response());
        };
        let now = st.store.now();
        let lookup = id.clone();
        match st.store.run(move |s| s.console_session(&lookup, now)).await {
            Ok(Some(session)) => Ok(Authed { session, id }),
            Ok(None) => Err(Redirect::to("/admin/login").into_response()),
            Err(e) => Err(crate::api::error::ApiError::from(e).into_response()),
        }
    }
}

impl Authed {
    /// The form's CSRF token must be this session's.
    pub fn check(&self, posted: Option<&str>) -> Result<(), Forged> {
        match posted {
            Some(t) if same(t, &self.session.csrf) => Ok(()),
            _ => Err(Forged),
        }
    }
}

/// A form without this session's CSRF token.
#[derive(Debug)]
pub struct Forged;

impl IntoResponse for Forged {
    fn into_response(self) -> Response {
        forbidden(
            "the form has expired or did not come from this console: reload the page and try again",
        )
    }
}

fn forbidden(why: &str) -> Response {
    let body = html! {
        (DOCTYPE)
        html lang="en" { head { meta charset="utf-8"; title { "Refused · Flex console" } link rel="stylesheet" href="/admin/style.css"; }
            body { main.narrow { h1 { "Refused" } p.error { (why) } p { a href="/admin/" { "Back to the console" } } } } }
    };
    (StatusCode::FORBIDDEN, body).into_response()
}

/// The frame of every page: navigation, the logout button and the content.
pub fn layout(title: &str, active: &str, csrf: &str, content: Markup) -> Markup {
    let nav = [
        ("/admin/", "Overview"),
        ("/admin/usage", "Token usage"),
        ("/admin/recommendations", "Recommendations"),
        ("/admin/estimator", "Estimator"),
        ("/admin/users", "Users"),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Flex console" }
                link rel="stylesheet" href="/admin/style.css";
            }
            body {
                header.top {
                    span.brand { "Flex" }
                    nav {
                        @for (href, name) in nav {
                            a href=(href) class=[(name == active).then_some("active")] { (name) }
                        }
                    }
                    form.logout method="post" action="/admin/logout" {
                        input type="hidden" name="csrf" value=(csrf);
                        button type="submit" { "Log out" }
                    }
                }
                main { h1 { (title) } (content) }
            }
        }
    }
}

/// Thousands separators: 12345 → "12,345".
pub fn num(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// An error shown under a field, or nothing.
pub fn field_error(error: Option<&str>) -> Markup {
    html! { @if let Some(e) = error { span.field-error role="alert" { (e) } } }
}

fn login_form(error: Option<&str>, note: Option<&str>, login_csrf: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "Log in · Flex console" }
                link rel="stylesheet" href="/admin/style.css";
            }
            body {
                main.narrow {
                    h1 { "Flex console" }
                    @if let Some(n) = note { p.note { (n) } }
                    form.card method="post" action="/admin/login" {
                        input type="hidden" name="csrf" value=(login_csrf);
                        label for="token" { "Admin token" }
                        input #token type="password" name="token" autocomplete="current-password" required autofocus
                            aria-invalid=[error.map(|_| "true")];
                        (field_error(error))
                        p.hint { "The token is in the server's data directory (admin-token) or its FLEX_ADMIN_TOKEN." }
                        button type="submit" { "Log in" }
                    }
                }
            }
        }
    }
}

/// The login page, with a fresh anti-forgery cookie for its form.
fn login_response(
    status: StatusCode,
    error: Option<&str>,
    note: Option<&str>,
    secure: bool,
) -> Response {
    let csrf = session::secret();
    (
        status,
        [(
            header::SET_COOKIE,
            set_cookie(LOGIN_COOKIE, &csrf, 3600, secure),
        )],
        login_form(error, note, &csrf),
    )
        .into_response()
}

#[derive(serde::Deserialize)]
pub struct LoginQuery {
    out: Option<String>,
}

async fn login_page(
    State(st): State<AppState>,
    axum::extract::Query(q): axum::extract::Query<LoginQuery>,
) -> Response {
    let note = q.out.is_some().then_some("You are logged out.");
    login_response(StatusCode::OK, None, note, st.console.secure)
}

#[derive(serde::Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    csrf: String,
}

async fn login(
    State(st): State<AppState>,
    ClientIp(peer): ClientIp,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    let secure = st.console.secure;
    let expected = headers
        .get(header::COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|c| cookie(c, LOGIN_COOKIE));
    if cross_site(&headers) || !expected.is_some_and(|e| same(e, &f.csrf)) {
        return login_response(
            StatusCode::FORBIDDEN,
            None,
            Some("The login form expired or came from another site: log in again."),
            secure,
        );
    }
    if f.token.trim().is_empty() {
        return login_response(
            StatusCode::BAD_REQUEST,
            Some("enter the admin token"),
            None,
            secure,
        );
    }
    match st.admin_auth(peer, f.token.trim()) {
        AdminAuth::Ok => {}
        AdminAuth::Wrong => {
            return login_response(
                StatusCode::UNAUTHORIZED,
                Some("this is not the admin token of this server"),
                None,
                secure,
            )
        }
        AdminAuth::Throttled(wait) => {
            let secs = retry_after_secs(wait);
            let mut res = login_response(
                StatusCode::TOO_MANY_REQUESTS,
                Some(&format!(
                    "too many wrong tokens from this address: try again in {secs} seconds"
                )),
                None,
                secure,
            );
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            return res;
        }
    }
    let now = st.store.now();
    let id = match st.store.run(move |s| s.create_console_session(now)).await {
        Ok((id, _)) => id,
        Err(e) => return crate::api::error::ApiError::from(e).into_response(),
    };
    let mut res = Redirect::to("/admin/").into_response();
    let h = res.headers_mut();
    let max_age = session::TTL.num_seconds();
    h.append(
        header::SET_COOKIE,
        set_cookie(COOKIE, &id, max_age, secure)
            .parse()
            .expect("cookie header"),
    );
    h.append(
        header::SET_COOKIE,
        set_cookie(LOGIN_COOKIE, "", 0, secure)
            .parse()
            .expect("cookie header"),
    );
    res
}

#[derive(serde::Deserialize)]
pub struct CsrfForm {
    csrf: Option<String>,
}

async fn logout(a: Authed, State(st): State<AppState>, Form(f): Form<CsrfForm>) -> Response {
    if let Err(r) = a.check(f.csrf.as_deref()) {
        return r.into_response();
    }
    let id = a.id.clone();
    if let Err(e) = st.store.run(move |s| s.end_console_session(&id)).await {
        return crate::api::error::ApiError::from(e).into_response();
    }
    (
        [(
            header::SET_COOKIE,
            set_cookie(COOKIE, "", 0, st.console.secure),
        )],
        Redirect::to("/admin/login?out=1"),
    )
        .into_response()
}

/// A store failure on a page: logged, and shown as a plain error page.
pub fn server_error(e: crate::store::StoreError) -> Response {
    tracing::error!("console: {e}");
    (StatusCode::INTERNAL_SERVER_ERROR, html! {
        (DOCTYPE)
        html lang="en" { head { meta charset="utf-8"; title { "Error · Flex console" } link rel="stylesheet" href="/admin/style.css"; }
            body { main.narrow { h1 { "Something went wrong" } p.error { (e.to_string()) } p { a href="/admin/" { "Back to the console" } } } } }
    })
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cross_site_posts_are_recognised() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "127.0.0.1:8080".parse().unwrap());
        assert!(!cross_site(&h));
        h.insert(header::ORIGIN, "http://127.0.0.1:8080".parse().unwrap());
        assert!(!cross_site(&h));
        h.insert(header::ORIGIN, "https://evil.example".parse().unwrap());
        assert!(cross_site(&h));
        h.insert(header::ORIGIN, "null".parse().unwrap());
        assert!(!cross_site(&h));
        h.insert(header::ORIGIN, "http://127.0.0.1:8080".parse().unwrap());
        h.insert("sec-fetch-site", "cross-site".parse().unwrap());
        assert!(cross_site(&h));
        h.insert("sec-fetch-site", "same-origin".parse().unwrap());
        assert!(!cross_site(&h));
    }

    #[test]
    fn numbers_have_separators() {
        assert_eq!(num(0), "0");
        assert_eq!(num(999), "999");
        assert_eq!(num(12345), "12,345");
        assert_eq!(num(1234567), "1,234,567");
    }
}
