//! R2 lots, R3 spending order, R6 per-result jobs and R9 notices.

use flex_e2e::{t, Server};
use reqwest::Method as M;
use serde_json::json;

#[tokio::test]
async fn tokens_bought_in_march_are_spent_before_may() {
    let s = Server::start_test_clock();
    s.flex_user("ada@example.com").await;
    s.set_time("2026-05-10T09:00:00Z").await;
    let may = s.buy(100).await;
    s.set_time("2026-03-15T10:00:00Z").await; // bought earlier: expires earlier
    let march = s.buy(100).await;
    assert_eq!(
        t(march["expires_at"].as_str().unwrap()),
        t("2027-03-15T10:00:00Z")
    );
    s.set_time("2026-06-01T08:00:00Z").await;
    let dev = s.enroll().await;
    s.launch(&dev, "ada@example.com", "autocad").await;
    let charges = s.charges().await;
    assert_eq!(
        charges[0]["lots"],
        json!([{"lot_id": march["id"], "tokens": 7}])
    );
    let bal = s.ok(M::GET, "/balance", None).await;
    let lots = bal["lots"].as_array().unwrap();
    let rem = |id: &serde_json::Value| {
        lots.iter().find(|l| l["id"] == *id).unwrap()["remaining"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(rem(&march["id"]), 93);
    assert_eq!(rem(&may["id"]), 100);
}

#[tokio::test]
async fn a_charge_spans_lots_earliest_expiry_first() {
    let s = Server::start_test_clock();
    s.flex_user("ada@example.com").await;
    s.set_time("2026-01-10T09:00:00Z").await;
    let early = s.buy(100).await;
    s.set_time("2026-02-10T09:00:00Z").await;
    let late = s.buy(100).await;
    let dev = s.enroll().await;
    // Take 97 of the early lot with per-result jobs, leaving 3.
    let (_, j) = s
        .claim(
            &dev,
            json!({"user": "ada@example.com", "product": "recap-photo", "results": 4850}),
        )
        .await;
    assert_eq!(j["tokens_charged"], 97);
    s.launch(&dev, "ada@example.com", "autocad").await;
    let charges = s.charges().await;
    assert_eq!(
        charges[1]["lots"],
        json!([{"lot_id": early["id"], "tokens": 3}, {"lot_id": late["id"], "tokens": 4}])
    );
    assert_eq!(s.balance().await, 96);
}

#[tokio::test]
async fn lots_expire_one_calendar_year_after_purchase() {
    let s = Server::start_test_clock();
    s.set_time("2026-03-15T10:00:00Z").await;
    let lot = s.buy(500).await;
    assert_eq!(
        t(lot["expires_at"].as_str().unwrap()),
        t("2027-03-15T10:00:00Z")
    );
    s.flex_user("ada@example.com").await;
    let dev = s.enroll().await;

    s.set_time("2027-03-15T09:59:59Z").await;
    assert_eq!(
        s.balance().await,
        500,
        "the second before expiry still counts"
    );
    s.set_time("2027-03-15T10:00:00Z").await;
    assert_eq!(s.balance().await, 0, "expired tokens are gone");
    let (_, v) = s
        .claim(
            &dev,
            json!({"user": "ada@example.com", "product": "autocad"}),
        )
        .await;
    assert_eq!(
        v["reason"], "out_of_tokens",
        "expired lots are never spent: {v}"
    );
    let notices = s.notices().await;
    assert!(
        notices.iter().any(|n| n["kind"] == "tokens_expiring"),
        "{notices:?}"
    );

    // 29 February: one calendar year later is 28 February.
    s.set_time("2028-02-29T12:00:00Z").await;
    let leap = s.buy(100).await;
    assert_eq!(
        t(leap["expires_at"].as_str().unwrap()),
        t("2029-02-28T12:00:00Z")
    );
}

#[tokio::test]
async fn eighty_five_photos_cost_two_tokens() {
    let s = Server::start_test_clock();
    s.buy(100).await;
    s.flex_user("ada@example.com").await;
    let dev = s.enroll().await;
    let (_, v) = s
        .claim(
            &dev,
            json!({"user": "ada@example.com", "product": "recap-photo", "results": 85}),
        )
        .await;
    assert_eq!(v["decision"], "granted");
    assert_eq!(v["tokens_charged"], 2);
    assert!(v["window"].is_null());
    let (_, v) = s
        .claim(
            &dev,
            json!({"user": "ada@example.com", "product": "recap-photo", "results": 50}),
        )
        .await;
    assert_eq!(v["tokens_charged"], 1);
    assert_eq!(s.balance().await, 97);
    let charges = s.charges().await;
    assert_eq!(charges[0]["kind"], "per_result");
    assert_eq!(charges[0]["results"], 85);
    // Results on a daily product are a malformed claim, not a charge.
    let (status, v) = s
        .claim(
            &dev,
            json!({"user": "ada@example.com", "product": "autocad", "results": 3}),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(s.balance().await, 97);
}

#[tokio::test]
async fn low_balance_notice_at_one_hundred_of_five_hundred_once() {
    let s = Server::start_test_clock();
    s.set_time("2026-11-02T08:00:00Z").await;
    s.buy(500).await;
    s.flex_user("ada@example.com").await;
    let dev = s.enroll().await;
    // 399 tokens: balance 101, still above the line.
    let (_, v) = s
        .claim(
            &dev,
            json!({"user": "ada@example.com", "product": "recap-photo", "results": 19950}),
        )
        .await;
    assert_eq!(v["tokens_charged"], 399);
    let low = |n: &Vec<serde_json::Value>| n.iter().filter(|n| n["kind"] == "low_balance").count();
    assert_eq!(low(&s.notices().await), 0);
    // One more token: 100 left → the notice.
    s.claim(
        &dev,
        json!({"user": "ada@example.com", "product": "recap-photo", "results": 1}),
    )
    .await;
    assert_eq!(s.balance().await, 100);
    assert_eq!(low(&s.notices().await), 1);
    // Further charges below the line do not repeat it.
    s.launch(&dev, "ada@example.com", "autocad").await;
    assert_eq!(low(&s.notices().await), 1);
    // A purchase lifting the balance above the line re-arms it.
    s.buy(500).await; // balance 593, line 200
    s.claim(
        &dev,
        json!({"user": "ada@example.com", "product": "recap-photo", "results": 19650}),
    )
    .await; // 393 → 200 left
    assert_eq!(s.balance().await, 200);
    assert_eq!(low(&s.notices().await), 2);
    let b = s.ok(M::GET, "/balance", None).await;
    assert_eq!(b["low_balance_threshold"], 200);
}

#[tokio::test]
async fn only_configured_pack_sizes_can_be_bought() {
    let s = Server::start_test_clock();
    let (status, v) = s
        .admin(M::POST, "/token-lots", Some(json!({"tokens": 123})))
        .await;
    assert_eq!(status, 400);
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("123 is not a pack size"));
    assert_eq!(s.balance().await, 0);
    for size in [100, 500, 1000, 2500, 5000, 10000] {
        s.buy(size).await;
    }
    assert_eq!(s.balance().await, 19100);
}
