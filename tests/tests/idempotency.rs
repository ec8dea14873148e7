//! Claims are idempotent across retries, crashes and concurrency.

use std::sync::Arc;

use flex_e2e::Server;
use serde_json::json;

#[tokio::test]
async fn a_repeated_claim_id_gets_the_original_answer_forever() {
    let mut s = Server::start_test_clock();
    s.set_time("2026-11-02T08:00:00Z").await;
    s.buy(100).await;
    s.flex_user("ada@example.com").await;
    let dev = s.enroll().await;
    let body = json!({"claim_id": "c-42", "user": "ada@example.com", "product": "autocad"});

    let (status, first) = s.claim(&dev, body.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(first["tokens_charged"], 7);
    let (status, retry) = s.claim(&dev, body.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(
        retry, first,
        "the retry sees the original response, byte for byte"
    );

    // Crash the server (SIGKILL, no shutdown) and retry after restart.
    s.restart();
    let (status, after) = s.claim(&dev, body.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(after, first);

    // The same id with another body is a conflict and changes nothing.
    let (status, v) = s
        .claim(
            &dev,
            json!({"claim_id": "c-42", "user": "ada@example.com", "product": "maya"}),
        )
        .await;
    assert_eq!(status, 409);
    assert_eq!(v["error"]["code"], "conflict");

    assert_eq!(s.balance().await, 93);
    assert_eq!(s.charges().await.len(), 1);
}

#[tokio::test]
async fn a_denied_claim_id_stays_denied() {
    let s = Server::start_test_clock();
    s.flex_user("ada@example.com").await;
    let dev = s.enroll().await;
    let body = json!({"claim_id": "c-poor", "user": "ada@example.com", "product": "autocad"});
    let (_, first) = s.claim(&dev, body.clone()).await;
    assert_eq!(first["reason"], "out_of_tokens");
    s.buy(100).await;
    let (_, retry) = s.claim(&dev, body).await;
    assert_eq!(retry, first, "a claim id is one attempt");
    // A new attempt uses a new id and succeeds.
    assert_eq!(s.launch(&dev, "ada@example.com", "autocad").await, 7);
}

#[tokio::test]
async fn answers_survive_a_kill_between_commit_and_reply() {
    // Kill the server while many claims are in flight; every claim that got an
    // answer is on disk, and retrying every id charges each window exactly once.
    let mut s = Server::start_test_clock();
    s.set_time("2026-11-02T08:00:00Z").await;
    s.buy(10000).await;
    let users: Vec<String> = (0..40).map(|i| format!("u{i}@example.com")).collect();
    for u in &users {
        s.flex_user(u).await;
    }
    let dev = Arc::new(s.enroll().await);
    let mut tasks = Vec::new();
    for (i, u) in users.iter().enumerate() {
        let url = s.url.clone();
        let token = dev.token.clone();
        let u = u.clone();
        tasks.push(tokio::spawn(async move {
            reqwest::Client::new()
                .post(format!("{url}/v1/agent/claims"))
                .bearer_auth(token)
                .json(&json!({"claim_id": format!("k-{i}"), "user": u, "product": "autocad"}))
                .send()
                .await
                .ok()
        }));
    }
    // Wait until some answers are out, then crash with the rest in flight.
    let mut rest = tasks.split_off(5);
    for t in tasks {
        let _ = t.await;
    }
    s.kill9();
    for t in rest.drain(..) {
        let _ = t.await;
    }
    s.restart();
    for (i, u) in users.iter().enumerate() {
        let (status, v) = s
            .claim(
                &dev,
                json!({"claim_id": format!("k-{i}"), "user": u, "product": "autocad"}),
            )
            .await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["decision"], "granted");
    }
    let charges = s.charges().await;
    assert_eq!(charges.len(), users.len(), "one window per user, never two");
    assert_eq!(s.balance().await, 10000 - 7 * users.len() as u64);
}

#[tokio::test]
async fn parallel_claims_for_one_user_open_one_window() {
    let s = Server::start_test_clock();
    s.set_time("2026-11-02T08:00:00Z").await;
    s.buy(100).await;
    s.flex_user("ada@example.com").await;
    let dev = s.enroll().await;
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let http = s.http.clone();
        let url = s.url.clone();
        let token = dev.token.clone();
        tasks.push(tokio::spawn(async move {
            let v: serde_json::Value = http
                .post(format!("{url}/v1/agent/claims"))
                .bearer_auth(token)
                .json(&json!({"claim_id": uuid::Uuid::new_v4().to_string(), "user": "ada@example.com", "product": "autocad"}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v
        }));
    }
    let mut windows = std::collections::HashSet::new();
    let mut charged = 0;
    for t in tasks {
        let v = t.await.unwrap();
        assert_eq!(v["decision"], "granted");
        charged += v["tokens_charged"].as_u64().unwrap();
        windows.insert(v["window"]["id"].as_str().unwrap().to_string());
    }
    assert_eq!(windows.len(), 1);
    assert_eq!(charged, 7);
    assert_eq!(s.balance().await, 93);
}

#[tokio::test]
async fn parallel_claims_never_overdraw() {
    let s = Server::start_test_clock();
    s.set_time("2026-11-02T08:00:00Z").await;
    s.buy(100).await; // 14 windows of 7 fit, the 15th does not
    let users: Vec<String> = (0..30).map(|i| format!("p{i}@example.com")).collect();
    for u in &users {
        s.flex_user(u).await;
    }
    let dev = s.enroll().await;
    let mut tasks = Vec::new();
    for u in &users {
        let http = s.http.clone();
        let url = s.url.clone();
        let token = dev.token.clone();
        let u = u.clone();
        tasks.push(tokio::spawn(async move {
            let v: serde_json::Value = http
                .post(format!("{url}/v1/agent/claims"))
                .bearer_auth(token)
                .json(&json!({"claim_id": uuid::Uuid::new_v4().to_string(), "user": u, "product": "autocad"}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v
        }));
    }
    let mut granted = 0;
    let mut denied = 0;
    for t in tasks {
        let v = t.await.unwrap();
        match v["decision"].as_str().unwrap() {
            "granted" => granted += 1,
            _ => {
                assert_eq!(v["reason"], "out_of_tokens");
                denied += 1
            }
        }
    }
    assert_eq!((granted, denied), (14, 16));
    assert_eq!(s.balance().await, 2);
}
