//! Tests of [`run`](super::run) over real HTTP against a canned responder: the
//! token goes out as a bearer header, bodies and content types are right, and
//! each kind of answer (table, `--json`, 204, 401, API error, refused import)
//! ends as it should. The responder answers one request with a fixed status and
//! body and hands back the raw request it read.

use std::io::Write as _;

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::{run, AdminError, Cli};

/// Serves one request with `status` and `body`; the handle yields the request text.
async fn canned(status: u16, body: &'static str) -> (String, JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let handle = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let header_end = loop {
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "client closed before sending headers");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos + 4;
            }
        };
        let head = String::from_utf8_lossy(&buf[..header_end]).to_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0);
        while buf.len() < header_end + length {
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "client closed before sending the body");
            buf.extend_from_slice(&chunk[..n]);
        }
        let reply = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(reply.as_bytes()).await.unwrap();
        stream.shutdown().await.unwrap();
        String::from_utf8(buf).unwrap()
    });
    (url, handle)
}

fn cli(url: &str, args: &[&str]) -> Cli {
    let argv = ["flex-admin", "--server", url]
        .into_iter()
        .chain(args.iter().copied());
    Cli::try_parse_from(argv).expect("arguments parse")
}

async fn run_with(
    url: &str,
    args: &[&str],
    token: Option<&str>,
) -> (Result<(), AdminError>, String) {
    let mut out = Vec::new();
    let result = run(&cli(url, args), token.map(str::to_owned), &mut out).await;
    (result, String::from_utf8(out).unwrap())
}

const BALANCE: &str = r#"{"balance":486,"low_balance_threshold":100,"lots":[{"id":1,"tokens":500,"remaining":486,"purchased_at":"2026-03-15T10:00:00Z","expires_at":"2027-03-15T10:00:00Z"}]}"#;

#[tokio::test]
async fn balance_sends_the_bearer_token_and_prints_a_table() {
    let (url, server) = canned(200, BALANCE).await;
    let (result, out) = run_with(&url, &["tokens", "balance"], Some("s3cret")).await;
    result.unwrap();
    let request = server.await.unwrap();
    assert!(
        request.starts_with("GET /v1/admin/balance HTTP/1.1\r\n"),
        "{request}"
    );
    assert!(
        request.contains("authorization: Bearer s3cret\r\n"),
        "{request}"
    );
    assert!(
        out.starts_with("balance:               486 tokens\n"),
        "{out}"
    );
    assert!(out.contains("2027-03-15T10:00:00Z"), "{out}");
}

#[tokio::test]
async fn json_prints_the_servers_answer_pretty() {
    let (url, server) = canned(200, BALANCE).await;
    let (result, out) = run_with(&url, &["tokens", "balance", "--json"], Some("t")).await;
    result.unwrap();
    server.await.unwrap();
    let printed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        printed,
        serde_json::from_str::<serde_json::Value>(BALANCE).unwrap()
    );
    assert!(
        out.contains("\n  \"balance\": 486,\n"),
        "pretty-printed: {out}"
    );
}

#[tokio::test]
async fn token_file_is_read_and_trimmed() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(file, "from-file").unwrap();
    let (url, server) = canned(200, r#"{"notices":[]}"#).await;
    let path = file.path().to_str().unwrap();
    let (result, out) = run_with(&url, &["notices", "--token-file", path], Some("from-env")).await;
    result.unwrap();
    assert!(server
        .await
        .unwrap()
        .contains("authorization: Bearer from-file\r\n"));
    assert_eq!(out, "no notices\n");
}

#[tokio::test]
async fn import_sends_csv_and_a_refusal_lists_the_lines_and_fails() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    write!(file, "First Name,Last Name,Email\nAnn,Lee,not-an-email\n").unwrap();
    let (url, server) = canned(
        422,
        r#"{"created":0,"updated":0,"assigned":0,
            "errors":[{"line":2,"message":"'not-an-email' is not an email address"}],
            "error":{"code":"invalid_request","message":"1 bad line"}}"#,
    )
    .await;
    let path = file.path().to_str().unwrap();
    let (result, out) = run_with(&url, &["users", "import", path], Some("t")).await;
    let request = server.await.unwrap();
    assert!(
        request.starts_with("POST /v1/admin/users/import HTTP/1.1\r\n"),
        "{request}"
    );
    assert!(
        request.contains("content-type: text/csv; charset=utf-8\r\n"),
        "{request}"
    );
    assert!(request.ends_with("\r\n\r\nFirst Name,Last Name,Email\nAnn,Lee,not-an-email\n"));
    assert_eq!(
        out,
        "1 bad line(s), nothing was imported:\nline 2: 'not-an-email' is not an email address\n"
    );
    let err = result.unwrap_err();
    assert!(
        matches!(err, AdminError::ImportRejected { count: 1 }),
        "{err}"
    );
}

#[tokio::test]
async fn import_of_a_missing_file_names_it() {
    let (result, _) = run_with(
        "http://127.0.0.1:9",
        &["users", "import", "/nonexistent/staff.csv"],
        Some("t"),
    )
    .await;
    let msg = result.unwrap_err().to_string();
    assert!(
        msg.starts_with("cannot read the user file /nonexistent/staff.csv"),
        "{msg}"
    );
}

#[tokio::test]
async fn a_401_blames_the_token() {
    let (url, server) = canned(
        401,
        r#"{"error":{"code":"unauthorized","message":"bad token"}}"#,
    )
    .await;
    let (result, _) = run_with(&url, &["users", "list"], Some("wrong")).await;
    server.await.unwrap();
    assert!(matches!(result, Err(AdminError::Unauthorized)));
}

#[tokio::test]
async fn an_api_error_under_json_also_prints_the_error_body() {
    let body = r#"{"error":{"code":"unknown_product","message":"no product 'acad'"}}"#;
    let (url, server) = canned(404, body).await;
    let args = ["subscriptions", "add", "ann@example.com", "acad", "--json"];
    let (result, out) = run_with(&url, &args, Some("t")).await;
    let request = server.await.unwrap();
    assert!(
        request.ends_with(r#"{"email":"ann@example.com","product":"acad"}"#),
        "{request}"
    );
    let printed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(printed["error"]["code"], "unknown_product");
    let msg = result.unwrap_err().to_string();
    assert!(
        msg.contains("no product 'acad' (unknown_product, http 404)"),
        "{msg}"
    );
    assert!(
        msg.ends_with("see the product ids with `flex-admin products`"),
        "{msg}"
    );
}

#[tokio::test]
async fn a_204_prints_a_sentence_or_nothing_under_json() {
    let (url, server) = canned(204, "").await;
    let args = ["subscriptions", "remove", "ann@example.com", "revit"];
    let (result, out) = run_with(&url, &args, Some("t")).await;
    result.unwrap();
    assert!(server
        .await
        .unwrap()
        .starts_with("DELETE /v1/admin/subscriptions/ann@example.com/revit HTTP/1.1"));
    assert_eq!(
        out,
        "removed the subscription of ann@example.com to revit\n"
    );

    let (url, server) = canned(204, "").await;
    let args = [
        "subscriptions",
        "remove",
        "ann@example.com",
        "revit",
        "--json",
    ];
    let (result, out) = run_with(&url, &args, Some("t")).await;
    result.unwrap();
    server.await.unwrap();
    assert_eq!(out, "");
}

#[tokio::test]
async fn health_needs_no_token_and_sends_none() {
    let (url, server) = canned(
        200,
        r#"{"status":"ok","version":"0.1.0","server_time":"2026-03-15T10:00:00Z"}"#,
    )
    .await;
    let (result, out) = run_with(&url, &["health"], None).await;
    result.unwrap();
    let request = server.await.unwrap();
    assert!(
        !request.to_lowercase().contains("authorization:"),
        "{request}"
    );
    assert_eq!(
        out,
        "flex-server 0.1.0: ok, server time 2026-03-15T10:00:00Z\n"
    );
}

#[tokio::test]
async fn an_admin_call_without_a_token_fails_before_connecting() {
    let (result, _) = run_with("http://127.0.0.1:9", &["tokens", "balance"], None).await;
    assert!(matches!(result, Err(AdminError::NoToken)));
}
