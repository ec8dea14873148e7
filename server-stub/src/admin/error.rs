//! What can go wrong when `flex-admin` talks to the server, phrased for the admin.
//!
//! Every message is lowercase, names the value involved and, where there is one,
//! says what to try next. The binary prints the message and exits with status 1;
//! nothing here decides how to print.

use std::path::PathBuf;

use flex_protocol::ErrorCode;
use thiserror::Error;

/// An error of the admin CLI.
#[derive(Debug, Error)]
pub enum AdminError {
    /// Neither `FLEX_ADMIN_TOKEN` nor `--token-file` gave a token.
    #[error(
        "no admin token: set FLEX_ADMIN_TOKEN or pass --token-file PATH \
         (the server writes DATA_DIR/admin-token on its first start)"
    )]
    NoToken,

    /// The token file could not be read.
    #[error("cannot read the admin token from {path}: {source}")]
    TokenFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The token file or variable holds only whitespace.
    #[error("the admin token from {origin} is empty: copy DATA_DIR/admin-token from the server")]
    EmptyToken { origin: String },

    /// `--server` is not an http(s) URL.
    #[error("'{url}' is not a server url: expected http://HOST:PORT or https://HOST:PORT")]
    BadServerUrl { url: String },

    /// `--ca-file` could not be read or holds no certificate.
    #[error("cannot use {path} as a CA certificate: {reason}")]
    CaFile { path: PathBuf, reason: String },

    /// The CSV file for `users import` could not be read.
    #[error("cannot read the user file {path}: {source}")]
    CsvFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The HTTP client could not be built (TLS setup).
    #[error("cannot set up the http client: {reason}")]
    Client { reason: String },

    /// No connection could be made (refused, DNS, TLS handshake).
    #[error("cannot reach flex-server at {url} ({cause}): is it running? check --server or FLEX_SERVER{hint}")]
    Unreachable {
        url: String,
        cause: String,
        /// Extra advice, e.g. about `--ca-file` when the certificate was refused.
        hint: String,
    },

    /// The connection was made but the answer did not come in time.
    #[error("flex-server at {url} did not answer {what} within {secs}s: check the server's log")]
    Timeout {
        url: String,
        what: String,
        secs: u64,
    },

    /// Any other transport failure while sending or reading.
    #[error("{what} to flex-server at {url} failed: {cause}")]
    Transport {
        url: String,
        what: String,
        cause: String,
    },

    /// 401: the server did not accept the token.
    #[error("the server refused the admin token: check FLEX_ADMIN_TOKEN or --token-file")]
    Unauthorized,

    /// `PUT /v1/admin/test-clock` answered 404.
    #[error("the server has no test clock: start flex-server with --test-clock to set its time")]
    NoTestClock,

    /// The server answered with `{"error":{code,message}}`.
    #[error("the server refused {what}: {message} ({code}, http {status}){hint}")]
    Api {
        what: String,
        status: u16,
        code: ErrorCode,
        message: String,
        /// Next step for codes that have an obvious one, with a leading separator.
        hint: String,
        /// The body as sent, printed as-is under `--json`.
        body: String,
    },

    /// The server answered an error status without a readable error body.
    #[error("the server answered {what} with http {status}: {excerpt}")]
    Status {
        what: String,
        status: u16,
        excerpt: String,
    },

    /// A success answer that is not the JSON this version expects.
    #[error(
        "cannot read the server's answer to {what}: {cause} \
         (is --server a flex-server of the same version?)"
    )]
    Decode { what: String, cause: String },

    /// `users import` found bad lines; they have already been listed.
    #[error("the import was refused and nothing was changed: fix the {count} line(s) listed above and import again")]
    ImportRejected { count: usize },

    /// Writing to standard output failed.
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

/// The next step for an API error code on `path`, as a suffix to the message.
pub(crate) fn hint_for(code: ErrorCode, path: &str) -> &'static str {
    match code {
        ErrorCode::NotFound if path.starts_with("/v1/admin/users/") => {
            ": see the users with `flex-admin users list`"
        }
        ErrorCode::NotFound if path.starts_with("/v1/admin/subscriptions/") => {
            ": see each user's subscriptions with `flex-admin users list`"
        }
        ErrorCode::NotFound if path.starts_with("/v1/admin/devices/") => {
            ": see the device ids with `flex-admin devices list`"
        }
        ErrorCode::NotFound if path.starts_with("/v1/admin/enrollment-tokens/") => {
            ": see the token ids with `flex-admin enroll-token list`"
        }
        ErrorCode::UnknownUser => {
            ": add the user first with `flex-admin users add EMAIL --first NAME --last NAME`"
        }
        ErrorCode::UnknownProduct => ": see the product ids with `flex-admin products`",
        ErrorCode::Unauthorized => ": check FLEX_ADMIN_TOKEN or --token-file",
        ErrorCode::TooManyAttempts => {
            ": check FLEX_ADMIN_TOKEN or --token-file before the wait is over"
        }
        ErrorCode::PayloadTooLarge => ": send a smaller request (split the file)",
        ErrorCode::Internal => ": see the server's log; the request may be retried",
        _ => "",
    }
}
