//! HTTPS through rustls, with a private CA: a real handshake, a client that trusts
//! only that CA, and a client that does not trust it.

use flex_e2e::{test_ca, Server, ServerOpts};

#[tokio::test]
async fn https_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (ca_pem, cert, key) = test_ca(dir.path());
    let s = Server::start(ServerOpts {
        test_clock: true,
        tls: Some((cert, key)),
        ..Default::default()
    });
    assert!(s.url.starts_with("https://127.0.0.1:"), "{}", s.url);

    let trusting = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let health: serde_json::Value = trusting
        .get(format!("{}/v1/health", s.url))
        .send()
        .await
        .expect("handshake with the test CA succeeds")
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");

    // The same server by name, as agents configured with a hostname would reach it.
    let by_name = s.url.replace("127.0.0.1", "localhost");
    let r = trusting.get(format!("{by_name}/v1/health")).send().await;
    assert!(r.is_ok(), "{r:?}");

    let stranger = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .build()
        .unwrap();
    let err = stranger
        .get(format!("{}/v1/health", s.url))
        .send()
        .await
        .expect_err("a client without the CA must refuse the certificate");
    assert!(err.is_connect(), "{err:?}");

    // Plain HTTP to the TLS port gets nowhere.
    let plain = s.url.replace("https://", "http://");
    let r = reqwest::get(format!("{plain}/v1/health")).await;
    assert!(r.is_err() || !r.unwrap().status().is_success());
}
