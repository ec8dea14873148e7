//! `flexctl run` through a real agent and server: granted and charged once per
//! window, free inside it, refused with exit code 77 without starting the product.

use std::ffi::OsStr;

use flex_e2e::agent::{flex_server, Agent, SHORT_POLICY};
use flex_e2e::Server;

/// A server with the sample rate sheet, and a started agent.
async fn setup() -> (Server, Agent) {
    let server = flex_server(SHORT_POLICY, None, 500).await;
    let agent = Agent::start(&server, "").await;
    (server, agent)
}

#[tokio::test(flavor = "multi_thread")]
async fn wrapper_is_charged_once_and_reopening_is_free() {
    let (server, agent) = setup().await;
    let out = agent.run("autocad", &["sh", "-c", "exit 3"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "exit code passes through: {out:?}"
    );
    let charges = server.charges().await;
    assert_eq!(charges.len(), 1, "{charges:?}");
    assert_eq!(charges[0]["tokens"], 7);
    assert_eq!(server.balance().await, 493);

    let out = agent
        .flexctl()
        .args([
            "run",
            "--product",
            "autocad",
            "--version",
            "2025",
            "--",
            "true",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(server.charges().await.len(), 1, "second launch is free");
    assert_eq!(server.balance().await, 493);
}

#[tokio::test(flavor = "multi_thread")]
async fn denied_launch_exits_77_and_never_starts_the_product() {
    let (server, agent) = setup().await;
    server
        .ok(
            reqwest::Method::PUT,
            "/default-assignments",
            Some(serde_json::json!({"mode": "deny", "products": ["maya"]})),
        )
        .await;
    agent.rate_sheet_known().await;
    let marker = agent.dir.path().join("started");
    let out = agent.run("maya", &[OsStr::new("touch"), marker.as_os_str()]);
    assert_eq!(out.status.code(), Some(77), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    // The refusal names Maya as people know it, says why and what to do.
    assert!(
        stderr.starts_with("flexctl: Maya not started: ")
            && stderr.contains("has no subscription to Maya")
            && stderr.contains("(not_entitled)")
            && stderr.matches("ask your license admin").count() == 1,
        "the advice, once: {stderr}"
    );
    assert!(!marker.exists(), "the product must not start");
    assert!(server.charges().await.is_empty());
}
