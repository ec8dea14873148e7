//! The HTTP side of `flex-admin`: the admin token, the reqwest client and the
//! mapping of failures to messages that say what to do next.
//!
//! The client is async reqwest over rustls; `--ca-file` adds a private CA to the
//! trusted roots. [`send`](AdminClient::send) only moves bytes; [`check`] decides,
//! without I/O, whether an answer is a success, a refused token, a missing test
//! clock or an API error with the server's code and message.

use std::path::Path;
use std::time::Duration;

use flex_protocol::api::ErrorBody;

use super::call::{Body, Call, Method};
use super::error::{hint_for, AdminError};

/// How long to wait for a TCP/TLS connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a whole call may take (an import of 5,000 rows included).
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// The admin token: `--token-file` when given, else `FLEX_ADMIN_TOKEN` (passed in as
/// `env`), trimmed of surrounding whitespace.
pub fn resolve_token(env: Option<String>, token_file: Option<&Path>) -> Result<String, AdminError> {
    let (raw, origin) = match (token_file, env) {
        (Some(path), _) => {
            let raw = std::fs::read_to_string(path).map_err(|source| AdminError::TokenFile {
                path: path.to_owned(),
                source,
            })?;
            (raw, path.display().to_string())
        }
        (None, Some(raw)) => (raw, "FLEX_ADMIN_TOKEN".to_owned()),
        (None, None) => return Err(AdminError::NoToken),
    };
    let token = raw.trim();
    if token.is_empty() {
        return Err(AdminError::EmptyToken { origin });
    }
    Ok(token.to_owned())
}

/// A server's answer: status and body text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

/// A client for one flex-server.
#[derive(Debug, Clone)]
pub struct AdminClient {
    http: reqwest::Client,
    /// `--server` without a trailing slash.
    base: String,
    /// Whether to suggest `--ca-file` when a connection fails.
    suggest_ca: bool,
}

impl AdminClient {
    /// A client for the server at `server` (http or https), trusting `ca_file` in
    /// addition to the public roots.
    pub fn new(server: &str, ca_file: Option<&Path>) -> Result<AdminClient, AdminError> {
        let base = server.trim().trim_end_matches('/').to_owned();
        let url = reqwest::Url::parse(&base).map_err(|_| AdminError::BadServerUrl {
            url: server.to_owned(),
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(AdminError::BadServerUrl {
                url: server.to_owned(),
            });
        }
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(CALL_TIMEOUT)
            .user_agent(concat!("flex-admin/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = ca_file {
            for cert in read_ca_file(path)? {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build().map_err(|e| AdminError::Client {
            reason: innermost(&e),
        })?;
        Ok(AdminClient {
            http,
            base,
            suggest_ca: url.scheme() == "https" && ca_file.is_none(),
        })
    }

    /// The server URL as given, for messages.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends `call` with `token` as bearer; `csv` is the file content of a
    /// [`Body::CsvFile`] call. Any HTTP status is a [`Reply`]; only transport
    /// failures are errors.
    pub async fn send(
        &self,
        call: &Call,
        token: Option<&str>,
        csv: Option<Vec<u8>>,
    ) -> Result<Reply, AdminError> {
        let url = format!("{}{}", self.base, call.path);
        let method = match call.method {
            Method::Get => reqwest::Method::GET,
            Method::Post => reqwest::Method::POST,
            Method::Put => reqwest::Method::PUT,
            Method::Delete => reqwest::Method::DELETE,
        };
        let mut request = self.http.request(method, &url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request = match &call.body {
            Body::None => request,
            Body::Json(value) => request.json(value),
            Body::CsvFile(_) => request
                .header(reqwest::header::CONTENT_TYPE, "text/csv; charset=utf-8")
                .body(csv.unwrap_or_default()),
        };
        let what = call.describe();
        let response = request
            .send()
            .await
            .map_err(|e| self.transport_error(&what, &e))?;
        let status = response.status().as_u16();
        let body = response
            .text()
            .await
            .map_err(|e| self.transport_error(&what, &e))?;
        Ok(Reply { status, body })
    }

    fn transport_error(&self, what: &str, e: &reqwest::Error) -> AdminError {
        transport_error(&self.base, self.suggest_ca, what, e)
    }
}

/// Maps a reqwest failure to the admin's next step.
fn transport_error(base: &str, suggest_ca: bool, what: &str, e: &reqwest::Error) -> AdminError {
    if e.is_connect() {
        let hint = if suggest_ca {
            "; if the server's certificate comes from a private CA, pass --ca-file CA.pem"
        } else {
            ""
        };
        AdminError::Unreachable {
            url: base.to_owned(),
            cause: innermost(e),
            hint: hint.to_owned(),
        }
    } else if e.is_timeout() {
        AdminError::Timeout {
            url: base.to_owned(),
            what: what.to_owned(),
            secs: CALL_TIMEOUT.as_secs(),
        }
    } else {
        AdminError::Transport {
            url: base.to_owned(),
            what: what.to_owned(),
            cause: innermost(e),
        }
    }
}

/// The deepest cause in an error chain: the part that says what really happened
/// ("Connection refused (os error 111)", "invalid peer certificate: UnknownIssuer").
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

fn read_ca_file(path: &Path) -> Result<Vec<reqwest::Certificate>, AdminError> {
    let fail = |reason: String| AdminError::CaFile {
        path: path.to_owned(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| fail(format!("not a PEM certificate ({})", innermost(&e))))?;
    if certs.is_empty() {
        return Err(fail(
            "it holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)".to_owned(),
        ));
    }
    Ok(certs)
}

/// Decides whether `reply` to `call` is a success; every failure says what to do.
pub fn check(call: &Call, reply: &Reply) -> Result<(), AdminError> {
    let status = reply.status;
    if (200..300).contains(&status) {
        return Ok(());
    }
    if status == 401 {
        return Err(AdminError::Unauthorized);
    }
    if status == 404 && call.path == "/v1/admin/test-clock" {
        return Err(AdminError::NoTestClock);
    }
    let what = call.describe();
    match serde_json::from_str::<ErrorBody>(&reply.body) {
        Ok(ErrorBody { error }) => Err(AdminError::Api {
            what,
            status,
            code: error.code,
            hint: hint_for(error.code, &call.path).to_owned(),
            message: error.message,
            body: reply.body.clone(),
        }),
        Err(_) => Err(AdminError::Status {
            what,
            status,
            excerpt: excerpt(&reply.body),
        }),
    }
}

/// The start of a body for a message: one line, at most 200 characters.
fn excerpt(body: &str) -> String {
    let one_line: String = body.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.is_empty() {
        return "(empty body)".to_owned();
    }
    let mut out: String = one_line.chars().take(200).collect();
    if one_line.chars().count() > 200 {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::call::plan;
    use crate::admin::cli::{Command, TestClockCmd, TokensCmd, UsersCmd};
    use flex_protocol::ErrorCode;
    use std::io::Write;

    fn reply(status: u16, body: &str) -> Reply {
        Reply {
            status,
            body: body.to_owned(),
        }
    }

    #[test]
    fn token_file_wins_and_is_trimmed() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "  secret-from-file  ").unwrap();
        let token = resolve_token(Some("from-env".into()), Some(file.path())).unwrap();
        assert_eq!(token, "secret-from-file");
        assert_eq!(resolve_token(Some(" env\n".into()), None).unwrap(), "env");
    }

    #[test]
    fn missing_token_says_where_to_get_one() {
        let msg = resolve_token(None, None).unwrap_err().to_string();
        assert!(
            msg.contains("set FLEX_ADMIN_TOKEN or pass --token-file"),
            "{msg}"
        );
        assert!(msg.contains("DATA_DIR/admin-token"), "{msg}");

        let msg = resolve_token(None, Some(Path::new("/nonexistent/admin-token")))
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with("cannot read the admin token from /nonexistent/admin-token"),
            "{msg}"
        );

        let msg = resolve_token(Some("  \n".into()), None)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("FLEX_ADMIN_TOKEN is empty"), "{msg}");
    }

    #[test]
    fn server_url_must_be_http_or_https() {
        for bad in ["127.0.0.1:8080", "ftp://x", "not a url", ""] {
            let err = AdminClient::new(bad, None).unwrap_err();
            assert!(
                matches!(err, AdminError::BadServerUrl { .. }),
                "{bad}: {err}"
            );
        }
        let client = AdminClient::new("https://licensing.example.com:8443/", None).unwrap();
        assert_eq!(client.base(), "https://licensing.example.com:8443");
    }

    #[test]
    fn ca_file_errors_name_the_file() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "hello").unwrap();
        let msg = AdminClient::new("https://x", Some(file.path()))
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with(&format!(
                "cannot use {} as a CA certificate",
                file.path().display()
            )),
            "{msg}"
        );
        let msg = AdminClient::new("https://x", Some(Path::new("/nonexistent/ca.pem")))
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with("cannot use /nonexistent/ca.pem as a CA certificate"),
            "{msg}"
        );
    }

    #[test]
    fn status_401_is_the_token() {
        let call = plan(&Command::Tokens(TokensCmd::Balance));
        let err = check(
            &call,
            &reply(401, r#"{"error":{"code":"unauthorized","message":"no"}}"#),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "the server refused the admin token: check FLEX_ADMIN_TOKEN or --token-file"
        );
    }

    #[test]
    fn api_errors_show_code_message_and_next_step() {
        let call = plan(&Command::Users(UsersCmd::Flex {
            email: flex_protocol::Email::parse("zed@example.com").unwrap(),
            assign: true,
            unassign: false,
        }));
        let body = r#"{"error":{"code":"unknown_user","message":"no user 'zed@example.com'"}}"#;
        let err = check(&call, &reply(404, body)).unwrap_err();
        assert!(matches!(
            err,
            AdminError::Api {
                code: ErrorCode::UnknownUser,
                status: 404,
                ..
            }
        ));
        assert_eq!(
            err.to_string(),
            "the server refused PUT /v1/admin/users/zed@example.com/flex: no user 'zed@example.com' \
             (unknown_user, http 404): add the user first with \
             `flex-admin users add EMAIL --first NAME --last NAME`"
        );

        let body =
            r#"{"error":{"code":"not_found","message":"user 'zed@example.com' does not exist"}}"#;
        let msg = check(&call, &reply(404, body)).unwrap_err().to_string();
        assert!(
            msg.ends_with("(not_found, http 404): see the users with `flex-admin users list`"),
            "{msg}"
        );

        let call = plan(&Command::Tokens(TokensCmd::Buy { tokens: 7 }));
        let body =
            r#"{"error":{"code":"invalid_request","message":"7 is not a pack size (100, 500)"}}"#;
        assert_eq!(
            check(&call, &reply(400, body)).unwrap_err().to_string(),
            "the server refused POST /v1/admin/token-lots: 7 is not a pack size (100, 500) \
             (invalid_request, http 400)"
        );
    }

    #[test]
    fn test_clock_404_means_the_flag_is_missing() {
        let call = plan(&Command::TestClock(TestClockCmd::Set {
            now: "2026-03-15T10:00:00Z".parse().unwrap(),
        }));
        let err = check(&call, &reply(404, "")).unwrap_err();
        assert!(
            err.to_string()
                .contains("start flex-server with --test-clock"),
            "{err}"
        );
    }

    #[test]
    fn non_json_errors_show_an_excerpt() {
        let call = plan(&Command::Notices);
        let err = check(&call, &reply(502, "<html>\n  Bad   gateway</html>")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the server answered GET /v1/admin/notices with http 502: <html> Bad gateway</html>"
        );
        assert!(check(&call, &reply(500, ""))
            .unwrap_err()
            .to_string()
            .ends_with("(empty body)"));
        assert!(check(&call, &reply(200, "{}")).is_ok());
        assert!(check(&call, &reply(204, "")).is_ok());
    }

    #[tokio::test]
    async fn connection_refused_tells_the_admin_to_check_the_server() {
        // A port that was just free: nothing listens on it.
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let url = format!("http://127.0.0.1:{port}");
        let client = AdminClient::new(&url, None).unwrap();
        let err = client
            .send(&plan(&Command::Health), None, None)
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, AdminError::Unreachable { .. }), "{msg}");
        assert!(
            msg.starts_with(&format!("cannot reach flex-server at {url} (")),
            "{msg}"
        );
        assert!(
            msg.ends_with("is it running? check --server or FLEX_SERVER"),
            "{msg}"
        );
    }
}
