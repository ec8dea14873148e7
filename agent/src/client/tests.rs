use super::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

fn body(code: &str, message: &str) -> Vec<u8> {
    format!(r#"{{"error":{{"code":"{code}","message":"{message}"}}}}"#).into_bytes()
}

fn map(status: u16, b: &[u8]) -> ClientError {
    status_error("u".into(), StatusCode::from_u16(status).unwrap(), b)
}

#[test]
fn statuses_sort_into_what_to_do() {
    let e = map(401, &body("unauthorized", "device token unknown"));
    assert!(e.needs_reenroll() && !e.is_retryable(), "{e:?}");
    assert!(e.to_string().contains("device token unknown"));

    let e = map(409, &body("conflict", "claim id reused with another body"));
    assert!(matches!(e, ClientError::Conflict { .. }) && !e.is_retryable());
    assert_eq!(e.code(), Some(ErrorCode::Conflict));

    let e = map(400, &body("unknown_product", "no product 'x'"));
    assert!(!e.is_retryable() && !e.needs_reenroll());
    assert_eq!(e.code(), Some(ErrorCode::UnknownProduct));
    assert!(e.to_string().contains("no product 'x'"), "{e}");

    for s in [500, 502, 503, 429] {
        assert!(map(s, b"<html>bad gateway</html>").is_retryable(), "{s}");
    }
    let e = map(502, b"<html>bad gateway</html>");
    assert!(e.to_string().contains("bad gateway"), "{e}");

    // A non-JSON 4xx still says what happened.
    let e = map(404, b"");
    assert!(e.to_string().contains("Not Found"), "{e}");
    assert_eq!(e.code(), Some(ErrorCode::InvalidRequest));
}

#[test]
fn long_foreign_bodies_are_cut() {
    let e = map(500, "x".repeat(10_000).as_bytes());
    assert!(e.to_string().len() < 400);
}

#[test]
fn urls_are_checked() {
    for bad in ["flex.example.com", "ftp://flex", "https://"] {
        let err = Client::new(bad, &ClientOptions::default()).unwrap_err();
        assert!(matches!(err, ClientError::BadUrl { .. }), "{bad}: {err:?}");
    }
    let c = Client::new("https://flex.example.com/", &ClientOptions::default()).unwrap();
    assert_eq!(c.server_url(), "https://flex.example.com");
}

#[test]
fn ca_file_problems_name_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing.pem");
    let opts = |p: &Path| ClientOptions {
        ca_file: Some(p.to_path_buf()),
        ..ClientOptions::default()
    };
    let err = Client::new("https://s", &opts(&missing)).unwrap_err();
    assert!(err.to_string().contains("missing.pem"), "{err}");
    let junk = tmp.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let err = Client::new("https://s", &opts(&junk)).unwrap_err();
    assert!(matches!(err, ClientError::BadCa { .. }), "{err:?}");
    assert!(err.to_string().contains("junk.pem"), "{err}");
}

#[test]
fn debug_redacts_the_token() {
    let c = Client::new("https://s", &ClientOptions::default())
        .unwrap()
        .with_token(DeviceToken::new("dt-secret"));
    let dbg = format!("{c:?}");
    assert!(
        !dbg.contains("dt-secret") && dbg.contains("redacted"),
        "{dbg}"
    );
}

#[tokio::test]
async fn connection_refused_is_retryable() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let c = Client::new(
        &format!("http://127.0.0.1:{port}"),
        &ClientOptions::default(),
    )
    .unwrap();
    let err = c.products().await.unwrap_err();
    assert!(matches!(err, ClientError::Transport { .. }), "{err:?}");
    assert!(err.is_retryable());
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
}

#[tokio::test]
async fn a_silent_server_times_out_retryably() {
    // Bound before the client starts, so the connect succeeds; it never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let (sock, _) = listener.accept().await.unwrap();
        // Keep the connection open, silent, until the test ends.
        std::future::pending::<()>().await;
        drop(sock);
    });
    let c = Client::new(
        &format!("http://{addr}"),
        &ClientOptions {
            request_timeout: Duration::from_millis(300),
            ..ClientOptions::default()
        },
    )
    .unwrap();
    let err = c.products().await.unwrap_err();
    assert!(matches!(err, ClientError::Timeout { .. }), "{err:?}");
    assert!(err.is_retryable());
    hold.abort();
}

/// A one-answer HTTP server on loopback that counts the requests it got.
struct Canned {
    url: String,
    hits: Arc<AtomicUsize>,
}

async fn canned(status: u16, body: &'static str) -> Canned {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&hits);
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let mut buf = vec![0u8; 8192];
            let _ = conn.read(&mut buf).await;
            let answer = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(answer.as_bytes()).await;
        }
    });
    Canned { url, hits }
}

/// A loopback address nothing listens on.
async fn refused() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    format!("http://{}", l.local_addr().unwrap())
}

const HEALTH: &str = r#"{"status":"ok","version":"9","server_time":"2026-11-02T08:00:00Z"}"#;

#[tokio::test]
async fn a_dead_replica_fails_over_to_the_next_and_the_client_stays_there() {
    let dead = refused().await;
    let live = canned(200, HEALTH).await;
    let c =
        Client::with_servers(&[dead.clone(), live.url.clone()], &ClientOptions::default()).unwrap();
    assert_eq!(c.server_url(), dead);
    assert_eq!(c.health().await.unwrap().version, "9");
    assert_eq!(c.server_url(), live.url, "sticky to the one that answered");
    // Clones share the choice, and the next call goes straight there.
    c.clone().health().await.unwrap();
    assert_eq!(live.hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_failing_replica_is_skipped_but_a_final_answer_is_not() {
    let failing = canned(503, r#"{"error":{"code":"internal","message":"db down"}}"#).await;
    let live = canned(200, HEALTH).await;
    let c = Client::with_servers(
        &[failing.url.clone(), live.url.clone()],
        &ClientOptions::default(),
    )
    .unwrap();
    c.health().await.unwrap();
    assert_eq!(
        (
            failing.hits.load(Ordering::SeqCst),
            live.hits.load(Ordering::SeqCst)
        ),
        (1, 1)
    );

    // A refusal is the answer of every replica (one database): not retried.
    let refusing = canned(
        400,
        r#"{"error":{"code":"invalid_request","message":"no"}}"#,
    )
    .await;
    let other = canned(200, HEALTH).await;
    let c = Client::with_servers(
        &[refusing.url.clone(), other.url.clone()],
        &ClientOptions::default(),
    )
    .unwrap();
    let err = c.health().await.unwrap_err();
    assert!(!err.is_retryable(), "{err}");
    assert_eq!(other.hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn with_every_replica_down_the_call_fails_as_with_one_server() {
    let (a, b) = (refused().await, refused().await);
    let c = Client::with_servers(&[a, b.clone()], &ClientOptions::default()).unwrap();
    let err = c.health().await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(
        err.to_string().contains(&b),
        "the last server tried is named: {err}"
    );
}
