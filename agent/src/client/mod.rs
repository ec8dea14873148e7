//! The agent's HTTPS client to the entitlement server (`/v1/agent/*`).
//!
//! reqwest with rustls. With `ca_file` set, the certificates in that PEM file are
//! the only trusted roots, so a company CA cannot be bypassed by any public one;
//! without it the built-in webpki roots apply. Agent calls carry the device token
//! as a bearer token; enrollment carries none.
//!
//! Errors are sorted by what the caller should do, not by where they came from:
//! [`ClientError::is_retryable`] (transport failure, timeout, 5xx) means "send the
//! same request again later, with the same claim id", [`ClientError::needs_reenroll`]
//! (401) means the device credential is gone, and the rest are final answers that
//! retrying would not change. [`backoff::Backoff`] spaces the retries.
//!
//! A client may know several servers (`server_urls`: replicas of one
//! flex-server on one database). Each call goes to the server that answered
//! last; when it cannot be reached or fails (an error [`is_retryable`]), the
//! same request goes to the next one in order, and the one that answers is
//! kept for the next calls. Only when every server failed does the call fail,
//! so the agent's offline rule counts time without any server, as with one.
//! Sending a claim again to another replica is safe: claims are idempotent
//! by claim id across replicas.
//!
//! [`is_retryable`]: ClientError::is_retryable

pub mod backoff;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flex_protocol::api::{
    ClaimRequest, ClaimResponse, EnrollRequest, EnrollResponse, ErrorBody, Health,
    HeartbeatRequest, HeartbeatResponse, ProductList, RefundRequest, RefundResponse, UserCheck,
};
use flex_protocol::ErrorCode;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::credentials::DeviceToken;

/// Time allowed to open a TCP + TLS connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for a whole request, answer included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How much of an unexpected (non-JSON) error body is quoted in an error.
const QUOTE_LIMIT: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the server at {url}: {reason}")]
    Transport { url: String, reason: String },
    #[error("the server at {url} did not answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("the server at {url} failed ({status}): {message}")]
    Server {
        url: String,
        status: u16,
        message: String,
    },
    #[error(
        "the server at {url} refused the device token: {message}; enroll this workstation \
         again (flex-agent enroll --config FILE --server URL --token ENROLL_TOKEN)"
    )]
    Unauthorized { url: String, message: String },
    /// The server's message says what happened and what IT must do.
    #[error("{message} (license server {url})")]
    Revoked { url: String, message: String },
    /// An enrollment token that is past its expiry (401 `enrollment_token_expired`).
    #[error("the server at {url} refused an expired enrollment token: {message}")]
    Expired { url: String, message: String },
    #[error(
        "the TLS connection to {url} failed: {reason}. If the server uses a private CA, \
         set ca_file in the agent config to that CA's PEM certificate"
    )]
    Tls { url: String, reason: String },
    #[error("the server at {url} reports a conflict: {message}")]
    Conflict { url: String, message: String },
    #[error("the server at {url} rejected the request ({status}, {code}): {message}")]
    Rejected {
        url: String,
        status: u16,
        code: ErrorCode,
        message: String,
    },
    #[error("the server at {url} answered {status} with a body this agent cannot read: {reason}")]
    BadResponse {
        url: String,
        status: u16,
        reason: String,
    },
    #[error("cannot read CA file {path}: {source}")]
    CaFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("CA file {path} holds no usable PEM certificate: {reason}")]
    BadCa { path: PathBuf, reason: String },
    #[error("server URL '{url}' is invalid: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot set up the HTTPS client: {0}")]
    Setup(String),
}

impl ClientError {
    /// Worth sending the same request again later (same claim id): the server
    /// may not have seen it, or failed before answering.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ClientError::Transport { .. }
                | ClientError::Timeout { .. }
                | ClientError::Server { .. }
                // A clock set wrong at boot, a certificate being renewed: the
                // same request (same claim id) may well pass later.
                | ClientError::Tls { .. }
        )
    }

    /// The server no longer accepts this device's token: enroll again.
    pub fn needs_reenroll(&self) -> bool {
        matches!(
            self,
            ClientError::Unauthorized { .. } | ClientError::Revoked { .. }
        )
    }

    /// The server's error code, when it sent one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Unauthorized { .. } => Some(ErrorCode::Unauthorized),
            ClientError::Revoked { .. } => Some(ErrorCode::DeviceRevoked),
            ClientError::Expired { .. } => Some(ErrorCode::EnrollmentTokenExpired),
            ClientError::Conflict { .. } => Some(ErrorCode::Conflict),
            ClientError::Rejected { code, .. } => Some(*code),
            ClientError::Server { .. } => Some(ErrorCode::Internal),
            _ => None,
        }
    }
}

/// Settings of a [`Client`] other than the token.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// PEM file whose certificates are the only trusted roots.
    pub ca_file: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            ca_file: None,
            connect_timeout: CONNECT_TIMEOUT,
            request_timeout: REQUEST_TIMEOUT,
        }
    }
}

/// A connection pool to one server or to several replicas, with or without a
/// device token.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    /// The servers, in the order they are tried; never empty.
    bases: Arc<[String]>,
    /// The one that answered last, tried first; shared by clones.
    current: Arc<AtomicUsize>,
    token: Option<DeviceToken>,
    request_timeout: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("servers", &self.bases)
            .field("current", &self.server_url())
            .field("token", &self.token)
            .finish()
    }
}

/// `url` without a trailing slash, checked to be `http(s)://host[:port]`.
fn base_of(url: &str) -> Result<String, ClientError> {
    let base = url.trim_end_matches('/').to_string();
    let parsed = reqwest::Url::parse(&base).map_err(|e| ClientError::BadUrl {
        url: url.to_string(),
        reason: e.to_string(),
    })?;
    if !matches!(parsed.scheme(), "https" | "http") || parsed.host().is_none() {
        return Err(ClientError::BadUrl {
            url: url.to_string(),
            reason: "expected http(s)://host[:port]".into(),
        });
    }
    Ok(base)
}

impl Client {
    /// A client for `server_url` (`https://host[:port]`, no path needed).
    pub fn new(server_url: &str, options: &ClientOptions) -> Result<Client, ClientError> {
        Client::with_servers(&[server_url.to_string()], options)
    }

    /// A client for several replicas of one server, tried in this order.
    pub fn with_servers(urls: &[String], options: &ClientOptions) -> Result<Client, ClientError> {
        let bases = urls
            .iter()
            .map(|u| base_of(u))
            .collect::<Result<Vec<_>, _>>()?;
        if bases.is_empty() {
            return Err(ClientError::BadUrl {
                url: String::new(),
                reason: "no server URL given".into(),
            });
        }
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(options.connect_timeout)
            .timeout(options.request_timeout)
            .user_agent(concat!("flex-agent/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &options.ca_file {
            builder = builder.tls_built_in_root_certs(false);
            for cert in load_ca(path)? {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            .build()
            .map_err(|e| ClientError::Setup(error_chain(&e)))?;
        Ok(Client {
            http,
            bases: bases.into(),
            current: Arc::new(AtomicUsize::new(0)),
            token: None,
            request_timeout: options.request_timeout,
        })
    }

    /// A client for the agent's config: its server URL(s) and CA file.
    pub fn from_config(config: &crate::config::Config) -> Result<Client, ClientError> {
        Client::with_servers(
            &config.servers(),
            &ClientOptions {
                ca_file: config.ca_file.clone(),
                ..ClientOptions::default()
            },
        )
    }

    /// The same client authenticating agent calls with `token`.
    pub fn with_token(mut self, token: DeviceToken) -> Client {
        self.token = Some(token);
        self
    }

    /// The server calls go to first (the one that answered last), without a
    /// trailing slash.
    pub fn server_url(&self) -> &str {
        &self.bases[self.current.load(Ordering::Relaxed) % self.bases.len()]
    }

    /// Every server, in the order they are tried after a failure.
    pub fn servers(&self) -> &[String] {
        &self.bases
    }

    /// `GET /v1/health`, no authentication.
    pub async fn health(&self) -> Result<Health, ClientError> {
        self.call::<(), _>(Method::GET, "/v1/health", None).await
    }

    /// `POST /v1/agent/enroll`: trades a one-time enrollment token for a device
    /// token. A refused enrollment token is [`ClientError::Unauthorized`].
    pub async fn enroll(&self, req: &EnrollRequest) -> Result<EnrollResponse, ClientError> {
        self.call(Method::POST, "/v1/agent/enroll", Some(req)).await
    }

    /// `POST /v1/agent/claims`. A denial is an `Ok` answer; only a failure to get
    /// an answer is an error, and a retryable one is retried with the same request.
    pub async fn claim(&self, req: &ClaimRequest) -> Result<ClaimResponse, ClientError> {
        self.call(Method::POST, "/v1/agent/claims", Some(req)).await
    }

    /// `POST /v1/agent/refunds` (R13).
    pub async fn refund(&self, req: &RefundRequest) -> Result<RefundResponse, ClientError> {
        self.call(Method::POST, "/v1/agent/refunds", Some(req))
            .await
    }

    /// `POST /v1/agent/heartbeat`.
    pub async fn heartbeat(
        &self,
        req: &HeartbeatRequest,
    ) -> Result<HeartbeatResponse, ClientError> {
        self.call(Method::POST, "/v1/agent/heartbeat", Some(req))
            .await
    }

    /// `GET /v1/agent/users/{email}`: whether the server knows the user.
    pub async fn check_user(&self, email: &str) -> Result<UserCheck, ClientError> {
        let mut path = String::from("/v1/agent/users/");
        for b in email.bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'@' => {
                    path.push(b as char)
                }
                _ => path.push_str(&format!("%{b:02X}")),
            }
        }
        self.call::<(), _>(Method::GET, &path, None).await
    }

    /// `GET /v1/agent/products`: the rate sheet.
    pub async fn products(&self) -> Result<ProductList, ClientError> {
        self.call::<(), _>(Method::GET, "/v1/agent/products", None)
            .await
    }

    /// Sends the request to the current server, and on a failure that another
    /// replica may not share, to the next ones in order.
    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let n = self.bases.len();
        let first = self.current.load(Ordering::Relaxed) % n;
        let mut k = 0;
        loop {
            let i = (first + k) % n;
            match self
                .call_one(&self.bases[i], method.clone(), path, body)
                .await
            {
                Ok(answer) => {
                    if i != first {
                        tracing::info!(server = %self.bases[i], "switched to this server");
                        self.current.store(i, Ordering::Relaxed);
                    }
                    return Ok(answer);
                }
                Err(e) if e.is_retryable() && k + 1 < n => {
                    tracing::warn!("{e}; trying {}", self.bases[(i + 1) % n]);
                    k += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn call_one<B: Serialize, T: DeserializeOwned>(
        &self,
        base: &str,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let url = format!("{base}{path}");
        let mut req = self.http.request(method, &url);
        if let Some(token) = &self.token {
            req = req.bearer_auth(token.expose());
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let send_err = |e: reqwest::Error| self.transport_error(&url, e);
        let resp = req.send().await.map_err(send_err)?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(send_err)?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| ClientError::BadResponse {
                url,
                status: status.as_u16(),
                reason: e.to_string(),
            });
        }
        Err(status_error(url, status, &bytes))
    }

    fn transport_error(&self, url: &str, e: reqwest::Error) -> ClientError {
        if e.is_timeout() {
            ClientError::Timeout {
                url: url.to_string(),
                timeout: self.request_timeout,
            }
        } else if let Some(tls) = tls_cause(&e) {
            ClientError::Tls {
                url: url.to_string(),
                reason: tls,
            }
        } else {
            ClientError::Transport {
                url: url.to_string(),
                reason: error_chain(&e),
            }
        }
    }
}

/// Maps a non-2xx answer, reading the server's `{"error":{code,message}}` when
/// there is one (a proxy in between may send HTML instead).
fn status_error(url: String, status: StatusCode, body: &[u8]) -> ClientError {
    let parsed: Option<ErrorBody> = serde_json::from_slice(body).ok();
    let message = match &parsed {
        Some(b) => b.error.message.clone(),
        None => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            if text.is_empty() {
                status
                    .canonical_reason()
                    .unwrap_or("no message")
                    .to_string()
            } else {
                text.chars().take(QUOTE_LIMIT).collect()
            }
        }
    };
    let code = parsed.map(|b| b.error.code);
    if status.is_server_error() {
        return ClientError::Server {
            url,
            status: status.as_u16(),
            message,
        };
    }
    match status {
        StatusCode::UNAUTHORIZED => match code {
            Some(ErrorCode::DeviceRevoked) => ClientError::Revoked { url, message },
            Some(ErrorCode::EnrollmentTokenExpired) => ClientError::Expired { url, message },
            _ => ClientError::Unauthorized { url, message },
        },
        StatusCode::CONFLICT => ClientError::Conflict { url, message },
        // A proxy's rate limit or a gateway timeout in 4xx clothing: try later.
        StatusCode::TOO_MANY_REQUESTS | StatusCode::REQUEST_TIMEOUT => ClientError::Server {
            url,
            status: status.as_u16(),
            message,
        },
        _ => ClientError::Rejected {
            url,
            status: status.as_u16(),
            code: code.unwrap_or(ErrorCode::InvalidRequest),
            message,
        },
    }
}

fn load_ca(path: &Path) -> Result<Vec<reqwest::Certificate>, ClientError> {
    let pem = std::fs::read(path).map_err(|source| ClientError::CaFile {
        path: path.to_path_buf(),
        source,
    })?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ClientError::BadCa {
        path: path.to_path_buf(),
        reason: error_chain(&e),
    })?;
    if certs.is_empty() {
        return Err(ClientError::BadCa {
            path: path.to_path_buf(),
            reason: "no BEGIN CERTIFICATE block found".into(),
        });
    }
    Ok(certs)
}

/// The certificate problem behind a failed connection, in words that name the
/// fix, when the cause is TLS. reqwest exposes no error kind for this, so the
/// source chain is searched for the rustls error it wraps.
fn tls_cause(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    use rustls::{CertificateError, Error as Tls};
    let mut source = Some(e);
    while let Some(s) = source {
        if let Some(tls) = s.downcast_ref::<Tls>().or_else(|| tls_in_io(s)) {
            return Some(match tls {
                Tls::InvalidCertificate(
                    CertificateError::UnknownIssuer | CertificateError::BadSignature,
                ) => "the server's certificate is not signed by a trusted CA (unknown issuer: \
                     check ca_file)"
                    .to_string(),
                Tls::InvalidCertificate(CertificateError::NotValidForName)
                | Tls::InvalidCertificate(CertificateError::NotValidForNameContext { .. }) => {
                    "the server's certificate does not name this host (check server_url)"
                        .to_string()
                }
                Tls::InvalidCertificate(CertificateError::Expired)
                | Tls::InvalidCertificate(CertificateError::ExpiredContext { .. }) => {
                    "the server's certificate has expired (or this machine's clock is wrong)"
                        .to_string()
                }
                Tls::InvalidCertificate(CertificateError::NotValidYet)
                | Tls::InvalidCertificate(CertificateError::NotValidYetContext { .. }) => {
                    "the server's certificate is not valid yet (check this machine's clock)"
                        .to_string()
                }
                other => format!("TLS error: {other}"),
            });
        }
        source = s.source();
    }
    None
}

/// The rustls error inside (nested) io::Errors: their `source()` skips the error
/// they wrap, so the chain walk alone never meets it.
fn tls_in_io<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut io = e.downcast_ref::<std::io::Error>()?;
    loop {
        let inner = io.get_ref()?;
        if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        io = inner.downcast_ref::<std::io::Error>()?;
    }
}

/// reqwest's top-level message ("error sending request") hides the cause
/// (connection refused, certificate unknown); join the whole chain.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let msg = s.to_string();
        if !out.contains(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests;
