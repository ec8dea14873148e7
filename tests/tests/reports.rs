//! R10 reports and recommendations, R11 estimator and the forecast, over real
//! HTTP against a real server driven by its test clock.

use flex_e2e::{Server, ServerOpts};
use reqwest::Method as M;
use serde_json::{json, Value};

/// `date` at 08:00 UTC, `n` days after 2026-11-02 (a Monday).
fn nov(day: u32) -> String {
    format!("2026-11-{day:02}T08:00:00Z")
}

async fn subscriber(s: &Server, email: &str, product: &str) {
    s.flex_user(email).await;
    s.ok(
        M::POST,
        "/subscriptions",
        Some(json!({"email": email, "product": product})),
    )
    .await;
}

fn row<'a>(report: &'a Value, key: &str) -> &'a Value {
    report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["key"] == key)
        .unwrap_or_else(|| panic!("no row {key} in {report}"))
}

/// Ada (Flex) on AutoCAD 17 days of November, Bob (Revit subscription) on
/// Revit 3 days, Cy (Revit subscription) never.
async fn november(s: &Server) {
    s.set_time("2026-11-01T07:00:00Z").await;
    s.buy(500).await;
    s.flex_user("ada@example.com").await;
    subscriber(s, "bob@example.com", "revit").await;
    subscriber(s, "cy@example.com", "revit").await;
    let dev = s.enroll().await;
    for day in 2..=18 {
        s.set_time(&nov(day)).await;
        assert_eq!(s.launch(&dev, "ada@example.com", "autocad").await, 7);
        if day <= 4 {
            assert_eq!(s.launch(&dev, "bob@example.com", "revit").await, 0);
        }
    }
    // A per-result job: tokens, no usage day.
    let (_, job) = s
        .claim(
            &dev,
            json!({"user": "bob@example.com", "product": "recap-photo", "results": 85}),
        )
        .await;
    assert_eq!(job["tokens_charged"], 2, "{job}");
    s.set_time("2026-12-01T09:00:00Z").await;
}

#[tokio::test]
async fn the_17_day_autocad_user_and_the_3_day_revit_subscriber() {
    let s = Server::start_test_clock();
    november(&s).await;

    let by_user = s
        .ok(
            M::GET,
            "/reports/usage?from=2026-11-01&to=2026-11-30&by=user",
            None,
        )
        .await;
    assert_eq!(by_user["by"], "user");
    assert_eq!(by_user["timezone"], "UTC");
    assert_eq!(by_user["total_tokens"], 121);
    let ada = row(&by_user, "ada@example.com");
    assert_eq!(
        (&ada["tokens"], &ada["usage_days"], &ada["products"]),
        (&json!(119), &json!(17), &json!(1))
    );
    // Weeks start on Monday: 2-8, 9-15, 16-18 November.
    let weeks: Vec<(String, u64)> = ada["weeks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["week_start"].as_str().unwrap().to_owned(),
                w["usage_days"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        weeks,
        vec![
            ("2026-11-02".into(), 7),
            ("2026-11-09".into(), 7),
            ("2026-11-16".into(), 3)
        ]
    );
    let bob = row(&by_user, "bob@example.com");
    assert_eq!(
        (&bob["tokens"], &bob["usage_days"], &bob["products"]),
        (&json!(2), &json!(3), &json!(2))
    );
    // Sorted by tokens, descending.
    assert_eq!(by_user["rows"][0]["key"], "ada@example.com");

    let by_product = s
        .ok(M::GET, "/reports/usage?from=2026-11-01&to=2026-11-30", None)
        .await;
    assert_eq!(by_product["by"], "product");
    let revit = row(&by_product, "revit");
    assert_eq!(
        (&revit["tokens"], &revit["usage_days"], &revit["users"]),
        (&json!(0), &json!(3), &json!(1))
    );
    let recap = row(&by_product, "recap-photo");
    assert_eq!(
        (&recap["tokens"], &recap["usage_days"]),
        (&json!(2), &json!(0))
    );

    let rec = s.ok(M::GET, "/recommendations?month=2026-11", None).await;
    assert_eq!(rec["month"], "2026-11");
    let list = rec["recommendations"].as_array().unwrap();
    assert_eq!(list.len(), 3, "{rec}");
    assert_eq!(
        list[0],
        json!({"email": "ada@example.com", "product": "autocad", "usage_days": 17,
               "current": "flex", "recommend": "subscription", "tokens": 119,
               "reason": list[0]["reason"]})
    );
    assert!(list[0]["reason"].as_str().unwrap().contains("17 days"));
    assert_eq!(list[1]["email"], "bob@example.com");
    assert_eq!(
        (
            &list[1]["usage_days"],
            &list[1]["current"],
            &list[1]["recommend"],
            &list[1]["tokens"]
        ),
        (
            &json!(3),
            &json!("subscription"),
            &json!("flex"),
            &json!(30)
        )
    );
    assert_eq!(list[2]["email"], "cy@example.com");
    assert_eq!(list[2]["usage_days"], 0);

    // A month without usage: only the unused subscriptions.
    let oct = s.ok(M::GET, "/recommendations?month=2026-10", None).await;
    assert_eq!(oct["recommendations"].as_array().unwrap().len(), 2);

    // The same rows as CSV.
    let resp = s
        .http
        .get(format!(
            "{}/v1/admin/reports/usage?from=2026-11-01&to=2026-11-30&by=user&format=csv",
            s.url
        ))
        .bearer_auth(flex_e2e::ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    assert_eq!(
        resp.text().await.unwrap(),
        "user,tokens,usage_days,products\nada@example.com,119,17,1\nbob@example.com,2,3,2\n"
    );

    // The estimator from the same usage: one AutoCAD user, 17 days a month.
    let est = s
        .ok(
            M::POST,
            "/estimate",
            Some(json!({"months": 12, "from_usage": {"from": "2026-11-01", "to": "2026-11-30"}})),
        )
        .await;
    assert_eq!(est["rows"].as_array().unwrap().len(), 1, "{est}");
    assert_eq!(est["rows"][0]["product"], "autocad");
    assert_eq!(est["rows"][0]["users"], 1);
    assert_eq!(est["rows"][0]["subscription_cheaper"], true);
}

#[tokio::test]
async fn a_week_boundary_in_paris() {
    let s = Server::start(ServerOpts {
        test_clock: true,
        config: Some("[policy]\ntimezone = \"Europe/Paris\"\n".into()),
        ..Default::default()
    });
    s.set_time("2026-11-01T07:00:00Z").await;
    s.buy(500).await;
    s.flex_user("ada@example.com").await;
    s.flex_user("bob@example.com").await;
    let dev = s.enroll().await;
    // Sunday 23:30 in Paris (22:30 UTC) and Monday 00:30 in Paris (23:30 UTC,
    // still Sunday in UTC).
    s.set_time("2026-11-08T22:30:00Z").await;
    s.launch(&dev, "ada@example.com", "autocad").await;
    s.set_time("2026-11-08T23:30:00Z").await;
    s.launch(&dev, "bob@example.com", "autocad").await;

    let r = s
        .ok(
            M::GET,
            "/reports/usage?from=2026-11-01&to=2026-11-30&by=user",
            None,
        )
        .await;
    assert_eq!(r["timezone"], "Europe/Paris");
    assert_eq!(
        row(&r, "ada@example.com")["weeks"][0]["week_start"],
        "2026-11-02"
    );
    assert_eq!(
        row(&r, "bob@example.com")["weeks"][0]["week_start"],
        "2026-11-09"
    );

    // Monday 9 November in Paris holds Bob's launch only.
    let monday = s
        .ok(
            M::GET,
            "/reports/usage?from=2026-11-09&to=2026-11-09&by=user",
            None,
        )
        .await;
    let keys: Vec<&str> = monday["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, vec!["bob@example.com"]);
    let product = s
        .ok(M::GET, "/reports/usage?from=2026-11-01&to=2026-11-30", None)
        .await;
    assert_eq!(
        row(&product, "autocad")["weeks"],
        json!([{"week_start": "2026-11-02", "tokens": 7, "usage_days": 1},
               {"week_start": "2026-11-09", "tokens": 7, "usage_days": 1}])
    );
}

#[tokio::test]
async fn report_parameters_are_checked_and_named() {
    let s = Server::start_test_clock();
    let bad = [
        (
            "/reports/usage?from=2026-11-02&to=2026-11-01",
            "from 2026-11-02 is after to",
        ),
        (
            "/reports/usage?from=2025-01-01&to=2026-03-01",
            "to 2026-03-01 is 424 days after",
        ),
        (
            "/reports/usage?from=2026-11-31&to=2026-12-01",
            "from '2026-11-31' is not a date",
        ),
        (
            "/reports/usage?from=2026-11-01&to=tomorrow",
            "to 'tomorrow' is not a date",
        ),
        ("/reports/usage?from=2026-11-01", "to is missing"),
        (
            "/reports/usage?from=2026-11-01&to=2026-11-02&by=team",
            "by 'team'",
        ),
        (
            "/reports/usage?from=2026-11-01&to=2026-11-02&format=xml",
            "format 'xml'",
        ),
        ("/recommendations?month=2026-13", "month '2026-13'"),
        ("/recommendations", "month is missing"),
    ];
    for (path, expected) in bad {
        let (status, v) = s.admin(M::GET, path, None).await;
        assert_eq!(status, 400, "{path}: {v}");
        assert_eq!(v["error"]["code"], "invalid_request");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.starts_with(expected), "{path}: {msg}");
    }
    // No token, no report.
    let (status, _) = s.call(M::GET, "/v1/admin/forecast", "wrong", None).await;
    assert_eq!(status, 401);
    // An empty period is an empty report, not an error.
    let r = s
        .ok(M::GET, "/reports/usage?from=2026-11-01&to=2026-11-30", None)
        .await;
    assert_eq!(
        (r["total_tokens"].clone(), r["rows"].clone()),
        (json!(0), json!([]))
    );
}

#[tokio::test]
async fn estimates_buy_the_fewest_tokens_then_the_fewest_packs() {
    let s = Server::start_test_clock();
    // 12 Revit users × 20 days × 10 tokens = 2,400: exactly, in six packs,
    // rather than one pack of 2,500.
    let e = s
        .ok(
            M::POST,
            "/estimate",
            Some(json!({"months": 1, "rows": [{"product": "revit", "users": 12, "days_per_month": 20}]})),
        )
        .await;
    assert_eq!(e["tokens_total"], 2400);
    assert_eq!(
        e["packs"],
        json!([{"size": 1000, "count": 2}, {"size": 100, "count": 4}])
    );
    assert_eq!(e["rows"][0]["subscription_cheaper"], true);

    // Two rows over two months: 1,350 → 1,400 in five packs.
    let e = s
        .ok(
            M::POST,
            "/estimate",
            Some(json!({"months": 2, "rows": [
                {"product": "revit", "users": 10, "days_per_month": 5},
                {"product": "autocad", "users": 10, "days_per_month": 2.5}
            ]})),
        )
        .await;
    assert_eq!(e["rows"][0]["tokens_per_month"], 500);
    assert_eq!(e["rows"][1]["tokens_per_month"], 175);
    assert_eq!(e["rows"][1]["subscription_cheaper"], false);
    assert_eq!(
        (&e["tokens_per_month"], &e["tokens_total"]),
        (&json!(675), &json!(1350))
    );
    assert_eq!(
        e["packs"],
        json!([{"size": 1000, "count": 1}, {"size": 100, "count": 4}])
    );
    assert_eq!(e["packs_tokens"], 1400);

    // 4,600 exactly (2,500 + 2 × 1,000 + 100) beats one pack of 5,000.
    let e = s
        .ok(
            M::POST,
            "/estimate",
            Some(json!({"months": 1, "rows": [{"product": "revit", "users": 23, "days_per_month": 20}]})),
        )
        .await;
    assert_eq!(
        e["packs"],
        json!([{"size": 2500, "count": 1}, {"size": 1000, "count": 2}, {"size": 100, "count": 1}])
    );

    let bad = [
        (
            json!({"months": 1, "rows": [{"product": "autocad", "users": 1, "days_per_month": 3},
                                      {"product": "photoshop", "users": 1, "days_per_month": 3}]}),
            "row 2 (photoshop): product 'photoshop' is not on the rate sheet",
        ),
        (
            json!({"months": 1, "rows": [{"product": "autocad", "users": 0, "days_per_month": 3}]}),
            "row 1 (autocad): users must be",
        ),
        (
            json!({"months": 1, "rows": [{"product": "autocad", "users": -2, "days_per_month": 3}]}),
            "row 1 (autocad): users must be",
        ),
        (
            json!({"months": 1, "rows": [{"product": "autocad", "users": 2, "days_per_month": -1}]}),
            "row 1 (autocad): days_per_month must be",
        ),
        (
            json!({"months": 0, "rows": [{"product": "autocad", "users": 2, "days_per_month": 1}]}),
            "months must be between 1 and 120 (got 0)",
        ),
        (json!({"months": 1}), "give rows"),
        (
            json!({"months": 1, "from_usage": {"from": "2026-11-01", "to": "2026-11-30"}}),
            "from_usage: no Flex usage",
        ),
    ];
    for (body, expected) in bad {
        let (status, v) = s.admin(M::POST, "/estimate", Some(body.clone())).await;
        assert_eq!(status, 400, "{body}: {v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.starts_with(expected), "{body}: {msg}");
    }
}

#[tokio::test]
async fn packs_that_do_not_divide_each_other() {
    let s = Server::start(ServerOpts {
        test_clock: true,
        config: Some("[policy]\npack_sizes = [300, 700]\n".into()),
        ..Default::default()
    });
    // 1,000 tokens: 700 + 300, neither 4 × 300 (1,200) nor 2 × 700 (1,400).
    let e = s
        .ok(
            M::POST,
            "/estimate",
            Some(json!({"months": 1, "rows": [{"product": "fusion", "users": 10, "days_per_month": 10}]})),
        )
        .await;
    assert_eq!(e["tokens_total"], 300);
    let e = s
        .ok(
            M::POST,
            "/estimate",
            Some(json!({"months": 10, "rows": [{"product": "fusion", "users": 10, "days_per_month": 10.0 / 3.0}]})),
        )
        .await;
    assert_eq!(e["tokens_total"], 1000);
    assert_eq!(
        e["packs"],
        json!([{"size": 700, "count": 1}, {"size": 300, "count": 1}])
    );
    assert_eq!(e["packs_tokens"], 1000);
}

#[tokio::test]
async fn a_forecast_with_a_lot_expiring_unused() {
    let s = Server::start_test_clock();
    s.set_time("2026-01-10T09:00:00Z").await;
    let a = s.buy(100).await;
    // Bought: nothing charged yet, so no end date, and every token expires unused.
    let f = s.ok(M::GET, "/forecast", None).await;
    assert_eq!(f["burn_per_day"], 0.0);
    assert_eq!(
        (f["days_left"].clone(), f["empty_on"].clone()),
        (Value::Null, Value::Null)
    );
    assert_eq!(f["expiring_unused"][0]["projected_unused"], 100);

    s.set_time("2026-12-01T09:00:00Z").await;
    let b = s.buy(500).await;
    s.flex_user("ada@example.com").await;
    let dev = s.enroll().await;
    for day in 20..=22 {
        s.set_time(&format!("2026-12-{day}T09:00:00Z")).await;
        s.launch(&dev, "ada@example.com", "autocad").await;
    }
    // 21 tokens in 30 days: 0.7 a day. Lot A (79 left) expires in 10 days: 7
    // more are spent and 72 lost; lot B's 500 then last until it expires on
    // 2027-12-01 with 500 - 0.7 × 325 = 272.5 → 273 unused.
    s.set_time("2026-12-31T09:00:00Z").await;
    let f = s.ok(M::GET, "/forecast", None).await;
    assert_eq!(f["balance"], 579);
    assert_eq!(f["burn_per_day"], 0.7);
    assert_eq!(
        f["expiring_unused"],
        json!([
            {"lot_id": a["id"], "remaining": 79, "expires_at": a["expires_at"], "projected_unused": 72},
            {"lot_id": b["id"], "remaining": 500, "expires_at": b["expires_at"], "projected_unused": 273}
        ])
    );
    assert_eq!(f["empty_on"], "2027-12-01");
    assert_eq!(f["days_left"], 335);
}
