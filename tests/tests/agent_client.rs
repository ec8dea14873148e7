//! The agent's HTTPS client, credential store and enrollment against the real
//! server: enrollment, claims and their retries, the error classes the agent's
//! driver acts on, and TLS with a private CA trusted alone.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use flex_agent::client::{Client, ClientError, ClientOptions};
use flex_agent::config::Config;
use flex_agent::credentials::{CredentialStore, DeviceToken, StoreChoice, TOKEN_FILE};
use flex_agent::enroll::{run_enroll_with, EnrollError};
use flex_agent::journal::Journal;
use flex_e2e::{test_ca, Server, ServerOpts};
use flex_protocol::api::{ClaimRequest, ClaimResponse, EnrollRequest, HeartbeatRequest};
use flex_protocol::lease::LeaseVerifier;
use flex_protocol::ErrorCode;

const ADA: &str = "ada@example.com";

async fn enrollment_token(s: &Server) -> String {
    let v = s
        .ok(
            reqwest::Method::POST,
            "/enrollment-tokens",
            Some(serde_json::json!({})),
        )
        .await;
    v["token"].as_str().unwrap().to_string()
}

fn claim(id: &str, product: &str) -> ClaimRequest {
    ClaimRequest {
        claim_id: id.parse().unwrap(),
        user: flex_protocol::Email::parse(ADA).unwrap(),
        product: product.parse().unwrap(),
        version: None,
        results: None,
        renews: None,
    }
}

fn plain(url: &str) -> Client {
    Client::new(url, &ClientOptions::default()).unwrap()
}

/// A ready server with tokens and a Flex user, and an agent client enrolled to it.
async fn enrolled() -> (Server, Client, flex_protocol::api::EnrollResponse) {
    let s = Server::start_test_clock();
    s.set_time("2026-11-02T08:00:00Z").await;
    s.buy(100).await;
    s.flex_user(ADA).await;
    let token = enrollment_token(&s).await;
    let client = plain(&s.url);
    let answer = client
        .enroll(&EnrollRequest {
            enrollment_token: token,
            hostname: "ws-client-test".into(),
            platform: None,
            agent_version: None,
            enrollment_request_id: None,
        })
        .await
        .expect("enrollment succeeds");
    let client = client.with_token(DeviceToken::new(answer.device_token.clone()));
    (s, client, answer)
}

#[tokio::test]
async fn enroll_claim_and_retry_with_the_same_id() {
    let (s, client, answer) = enrolled().await;
    let verifier = LeaseVerifier::from_keys(&answer.lease_keys).expect("pinned keys parse");

    let first = client.claim(&claim("c-1", "autocad")).await.unwrap();
    let ClaimResponse::Granted(grant) = &first else {
        panic!("expected a grant: {first:?}");
    };
    assert_eq!(grant.tokens_charged, 7);
    assert_eq!(grant.balance, 93);
    let lease = grant.lease.as_ref().expect("a window comes with a lease");
    let body = verifier.verify(lease).expect("the lease verifies");
    assert_eq!(
        (body.user.as_str(), body.device_id.as_str()),
        (ADA, answer.device_id.as_str())
    );

    // The driver's retry after a lost answer: same id, same answer, one charge.
    let again = client.claim(&claim("c-1", "autocad")).await.unwrap();
    assert_eq!(again, first);
    assert_eq!(s.charges().await.len(), 1);
    assert_eq!(s.balance().await, 93);

    // Same id, another body: a conflict, which retrying cannot fix.
    let err = client.claim(&claim("c-1", "maya")).await.unwrap_err();
    assert!(matches!(err, ClientError::Conflict { .. }), "{err:?}");
    assert!(!err.is_retryable() && !err.needs_reenroll());

    // A denial is an answer, not an error.
    let denied = client.claim(&claim("c-2", "no-such-product")).await;
    match denied {
        Ok(ClaimResponse::Denied(d)) => assert_eq!(d.reason, ErrorCode::UnknownProduct),
        Err(ClientError::Rejected { code, .. }) => assert_eq!(code, ErrorCode::UnknownProduct),
        other => panic!("unexpected answer for an unknown product: {other:?}"),
    }

    let hb = client
        .heartbeat(&HeartbeatRequest::default())
        .await
        .unwrap();
    assert_eq!(hb.balance, 93);
    assert!(hb.policy.heartbeat_interval_secs > 0);
    let products = client.products().await.unwrap();
    assert!(products.products.iter().any(|p| p.id == "autocad"));
}

#[tokio::test]
async fn a_crashed_server_is_retryable_and_the_retry_is_not_charged_twice() {
    let (mut s, client, _) = enrolled().await;
    let first = client.claim(&claim("c-9", "autocad")).await.unwrap();
    s.kill9();
    let err = client.claim(&claim("c-9", "autocad")).await.unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    assert!(matches!(err, ClientError::Transport { .. }), "{err:?}");
    s.restart();
    // The restarted server keeps the port; the pool reconnects by itself.
    let again = client.claim(&claim("c-9", "autocad")).await.unwrap();
    assert_eq!(again, first);
    assert_eq!(s.charges().await.len(), 1);
}

#[tokio::test]
async fn an_unknown_device_token_means_reenroll() {
    let (s, _, _) = enrolled().await;
    let stranger = plain(&s.url).with_token(DeviceToken::new("not-a-device-token"));
    for err in [
        stranger.claim(&claim("c-x", "autocad")).await.unwrap_err(),
        stranger
            .heartbeat(&HeartbeatRequest::default())
            .await
            .unwrap_err(),
    ] {
        assert!(err.needs_reenroll(), "{err:?}");
        assert!(!err.is_retryable());
        assert_eq!(err.code(), Some(ErrorCode::Unauthorized));
    }
    assert!(s.charges().await.is_empty());
}

fn agent_config(state_dir: &Path, url: &str, ca: Option<&Path>) -> Config {
    let mut text = format!(
        "server_url = \"{url}\"\nstate_dir = \"{}\"\n",
        state_dir.display()
    );
    if let Some(ca) = ca {
        text.push_str(&format!("ca_file = \"{}\"\n", ca.display()));
    }
    Config::parse(&text).unwrap()
}

#[tokio::test]
async fn run_enroll_stores_the_token_and_pins_the_keys() {
    let s = Server::start_test_clock();
    s.set_time("2026-11-02T08:00:00Z").await;
    s.buy(100).await;
    s.flex_user(ADA).await;
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let config = agent_config(&state, &s.url, None);
    let token = enrollment_token(&s).await;

    let outcome = run_enroll_with(&config, &s.url, &token, StoreChoice::File)
        .await
        .expect("enrollment succeeds");
    let summary = outcome.to_string();
    assert!(
        summary.contains(&outcome.device_id) && summary.contains("device token stored in file:"),
        "{summary}"
    );
    assert!(!summary.contains(CredentialStore::file(&state).load().unwrap().expose()));
    assert_eq!(
        outcome.credential_store,
        format!("file:{}", state.join(TOKEN_FILE).display())
    );
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&state.join(TOKEN_FILE)), 0o600);

    // The journal holds the non-secret half, and never the token.
    let journal = Journal::open_in(&state).unwrap();
    let e = journal.enrollment().unwrap().expect("enrollment recorded");
    assert_eq!(e.device_id, outcome.device_id);
    assert_eq!(e.server_url, s.url);
    LeaseVerifier::from_keys(&e.lease_keys).unwrap();
    let stored = CredentialStore::file(&state).load().unwrap();
    for f in std::fs::read_dir(&state).unwrap() {
        let path = f.unwrap().path();
        if path.file_name().unwrap() == TOKEN_FILE {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        let secret = stored.expose().as_bytes();
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret),
            "the device token leaked into {}",
            path.display()
        );
    }

    // The stored token works for the daemon's calls.
    let client = Client::from_config(&config).unwrap().with_token(stored);
    let answer = client.claim(&claim("c-e", "autocad")).await.unwrap();
    assert!(matches!(answer, ClaimResponse::Granted(_)), "{answer:?}");

    // Enrolled already: refused before the server is asked, nothing changes.
    let err = run_enroll_with(&config, &s.url, &token, StoreChoice::File)
        .await
        .unwrap_err();
    assert!(
        matches!(err, EnrollError::AlreadyEnrolled { .. }),
        "{err:?}"
    );

    // On another machine, a used token is refused with the next step, once.
    let other = agent_config(&tmp.path().join("other"), &s.url, None);
    let err = run_enroll_with(&other, &s.url, &token, StoreChoice::File)
        .await
        .unwrap_err();
    assert!(matches!(err, EnrollError::Refused { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.starts_with("the server refused the enrollment token:")
            && msg.contains("(flex-admin enroll-token)")
            && msg.matches("new one").count() == 1,
        "{msg}"
    );
    let err = run_enroll_with(&other, &s.url, "never-issued", StoreChoice::File)
        .await
        .unwrap_err();
    assert!(matches!(err, EnrollError::Refused { .. }), "{err:?}");
}

#[tokio::test]
async fn tls_with_a_private_ca_trusted_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (ca_pem, cert, key) = test_ca(dir.path());
    let ca_file = dir.path().join("ca.pem");
    let mut s = Server::start(ServerOpts {
        test_clock: true,
        tls: Some((cert, key)),
        ..Default::default()
    });
    assert!(s.url.starts_with("https://"), "{}", s.url);
    // The harness's own admin calls must trust the test CA too.
    s.http = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    s.set_time("2026-11-02T08:00:00Z").await;

    let trusting = Client::new(
        &s.url,
        &ClientOptions {
            ca_file: Some(ca_file.clone()),
            ..ClientOptions::default()
        },
    )
    .unwrap();
    assert_eq!(trusting.health().await.unwrap().status, "ok");

    // Enrollment through the config's ca_file.
    let state = dir.path().join("state");
    let config = agent_config(&state, &s.url, Some(&ca_file));
    let token = enrollment_token(&s).await;
    run_enroll_with(&config, &s.url, &token, StoreChoice::File)
        .await
        .expect("enrollment over TLS with the private CA");

    // Without the CA (public roots only) the handshake fails: a TLS error the
    // driver would retry, and enrollment says what to check (exit code 5).
    let err = plain(&s.url).health().await.unwrap_err();
    assert!(matches!(err, ClientError::Tls { .. }), "{err:?}");
    assert!(err.is_retryable());
    let no_ca = agent_config(&dir.path().join("state2"), &s.url, None);
    let token = enrollment_token(&s).await;
    let err = run_enroll_with(&no_ca, &s.url, &token, StoreChoice::File)
        .await
        .unwrap_err();
    assert!(matches!(err, EnrollError::Tls(_)), "{err:?}");
    assert_eq!(err.exit_code(), 5);
    assert!(err.to_string().contains("ca_file"), "{err}");

    // Another CA given as ca_file replaces the public roots and is not this one.
    let other = tempfile::tempdir().unwrap();
    test_ca(other.path());
    let wrong = Client::new(
        &s.url,
        &ClientOptions {
            ca_file: Some(other.path().join("ca.pem")),
            ..ClientOptions::default()
        },
    )
    .unwrap();
    let err = wrong.health().await.unwrap_err();
    assert!(matches!(err, ClientError::Tls { .. }), "{err:?}");
}
