use super::*;

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
