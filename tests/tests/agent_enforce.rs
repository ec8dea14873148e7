//! Enforcement with a real agent: a watched product nobody may run is closed and
//! nothing is charged (unless `enforce = false`, which only reports), and a
//! renewal the balance cannot pay leaves the product running for the policy's
//! `renewal_grace`, then closes it (R5).

use std::time::{Duration, Instant};

use flex_e2e::agent::{
    eventually, fake_product, flex_server, Agent, Rates, Running, SHORT_POLICY, WAIT,
};
use serde_json::json;

/// Sample rate of inventor (server-stub/rates/sample-rates.toml).
const INVENTOR: u64 = 9;

/// A server whose default assignments leave inventor out of Flex.
async fn inventor_denied() -> (Rates, flex_e2e::Server) {
    let rates = Rates::unique();
    let server = flex_server(SHORT_POLICY, Some(&rates), 500).await;
    server
        .ok(
            reqwest::Method::PUT,
            "/default-assignments",
            Some(json!({"mode": "deny", "products": ["inventor"]})),
        )
        .await;
    (rates, server)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watched_product_outside_flex_is_closed_and_not_charged() {
    let (rates, server) = inventor_denied().await;
    let agent = Agent::start(&server, "").await;
    let exe = fake_product(agent.dir.path(), &rates.exe("inventor"));
    let mut inventor = Running::product(&exe);
    let status = inventor.wait_exit(WAIT).await;
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(15), "closed gracefully: {status:?}");
    assert!(server.charges().await.is_empty());
    assert_eq!(server.balance().await, 500);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_enforce_an_unlicensed_product_keeps_running() {
    let (rates, server) = inventor_denied().await;
    let agent = Agent::start(&server, "enforce = false").await;
    let exe = fake_product(agent.dir.path(), &rates.exe("inventor"));
    let inventor = Running::product(&exe);
    // The denial is logged once the claim is answered; then give a close, had
    // one been sent, the policy's whole close grace (1 s) and more to land.
    eventually("the agent to see the denial", WAIT, || async {
        agent.log().contains("NotEntitled").then_some(())
    })
    .await;
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        assert!(flex_e2e::agent::alive(inventor.pid()), "{}", agent.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(server.charges().await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unpaid_renewal_closes_the_product_after_the_grace() {
    let rates = Rates::unique();
    // Packs of 10: inventor's first window (9) leaves 1, too little to renew.
    let policy = format!("{SHORT_POLICY}pack_sizes = [10]\n");
    let server = flex_server(&policy, Some(&rates), 10).await;
    let agent = Agent::start(&server, "").await;
    let exe = fake_product(agent.dir.path(), &rates.exe("inventor"));
    let mut inventor = Running::product(&exe);
    let session = eventually("inventor's window", WAIT, || async {
        agent.session_of(inventor.pid())
    })
    .await;
    assert_eq!(server.balance().await, 10 - INVENTOR);
    let window_end = flex_e2e::t(session["window_end"].as_str().unwrap());

    let status = inventor.wait_exit(WAIT * 2).await;
    let closed_at = chrono::Utc::now();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(15), "closed gracefully: {status:?}");
    // Not before the window's end plus the 2 s renewal grace.
    assert!(
        closed_at >= window_end + chrono::Duration::seconds(2),
        "closed at {closed_at}, window ended {window_end}:\n{}",
        agent.log()
    );
    let charges = server.charges().await;
    assert_eq!(charges.len(), 1, "the renewal was not charged: {charges:?}");
    assert_eq!(server.balance().await, 1);
    let notices = server.notices().await;
    assert!(
        notices.iter().any(|n| n["kind"] == "out_of_tokens"),
        "{notices:?}"
    );
}
