//! R13 short runs are free, against the real `flex-server` binary driven by
//! its test clock: a short first window and a short renewal are refunded to
//! their lots, a session record showing the product running at the window's
//! start plus the grace refuses, a repeat gets the first answer byte for byte
//! (also across kill -9), a refunded window no longer covers a launch, and
//! the charges list, `flex-admin charges` and the usage report show it. With
//! the real agent too: a run shorter than the grace comes back, a longer one
//! does not. On PostgreSQL too, where two replicas asked at once refund once.

use std::process::Command;

use flex_e2e::agent::{
    eventually, fake_product, flex_server, Agent, Rates, Running, SHORT_POLICY, WAIT,
};
use flex_e2e::{bin, t, Device, Server, ServerOpts, ADMIN_TOKEN};
use flex_server::store::testing::TestDatabase;
use reqwest::Method as M;
use serde_json::{json, Value};

const ANN: &str = "ann@example.com";

/// A server at Monday 2026-11-02 08:00 with 100 tokens, Ann on Flex and one
/// workstation.
async fn monday(opts: ServerOpts) -> (Server, Device) {
    let s = Server::start(ServerOpts {
        test_clock: true,
        ..opts
    });
    s.set_time("2026-11-02T08:00:00Z").await;
    s.buy(100).await;
    s.flex_user(ANN).await;
    let dev = s.enroll().await;
    (s, dev)
}

/// A granted claim: (window id, tokens charged).
async fn claim(s: &Server, dev: &Device, body: Value) -> (String, u64) {
    let (status, v) = s.claim(dev, body).await;
    assert_eq!(
        (status, v["decision"].as_str()),
        (200, Some("granted")),
        "{v}"
    );
    (
        v["window"]["id"].as_str().unwrap().to_owned(),
        v["tokens_charged"].as_u64().unwrap(),
    )
}

async fn open_autocad(s: &Server, dev: &Device) -> (String, u64) {
    claim(s, dev, json!({"user": ANN, "product": "autocad"})).await
}

/// Uploads session records the way the agent's heartbeat does.
async fn heartbeat(s: &Server, dev: &Device, sessions: Value) {
    let (status, v) = s
        .call(
            M::POST,
            "/v1/agent/heartbeat",
            &dev.token,
            Some(json!({ "sessions": sessions })),
        )
        .await;
    assert_eq!(status, 200, "{v}");
}

fn run(id: &str, window: &str, from: &str, to: Option<&str>) -> Value {
    json!({"id": id, "user": ANN, "product": "autocad", "source": "tokens",
           "window_id": window, "started_at": from, "ended_at": to})
}

/// `POST /v1/agent/refunds`: the status and the body exactly as sent.
async fn refund(s: &Server, dev: &Device, window: &str, sessions: Value) -> (u16, String) {
    let resp = s
        .http
        .post(format!("{}/v1/agent/refunds", s.url))
        .bearer_auth(&dev.token)
        .json(
            &json!({"window_id": window, "user": ANN, "product": "autocad", "sessions": sessions}),
        )
        .send()
        .await
        .expect("request reaches the server");
    (resp.status().as_u16(), resp.text().await.unwrap())
}

fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// AutoCAD opened at 08:00, closed at 08:04:59 (the heartbeat says so),
/// asked back at 08:05: 7 tokens return to the lot; the charges list,
/// `flex-admin charges` and the usage report show it; reopened at 08:05:01 it
/// is a new window, charged: one charge in all.
#[tokio::test]
async fn a_short_first_window_is_refunded_and_a_reopen_after_the_grace_is_charged_again() {
    short_first_window(ServerOpts::default()).await;
}

/// The same on PostgreSQL (a fresh database in the tests' cluster; see
/// `flex_server::store::testing` for when it is left out).
#[tokio::test]
async fn on_postgresql_a_short_first_window_is_refunded_and_a_reopen_after_the_grace_is_charged_again(
) {
    let Some(db) = TestDatabase::create() else {
        return;
    };
    short_first_window(ServerOpts {
        database_url: Some(db.url().to_string()),
        ..Default::default()
    })
    .await;
}

/// Two replicas on one PostgreSQL database asked for the same window's refund
/// at the same moment: one refund, and both answer it byte for byte.
#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_asked_for_the_same_refund_at_once_refund_it_once() {
    let Some(db) = TestDatabase::create() else {
        return;
    };
    let opts = || ServerOpts {
        database_url: Some(db.url().to_string()),
        ..Default::default()
    };
    let (a, dev) = monday(opts()).await;
    let b = Server::start(ServerOpts {
        test_clock: true,
        ..opts()
    });
    let (window, _) = open_autocad(&a, &dev).await;
    a.set_time("2026-11-02T08:05:00Z").await;
    b.set_time("2026-11-02T08:05:00Z").await;
    for round in 0..2 {
        let (x, y) = tokio::join!(
            refund(&a, &dev, &window, json!([])),
            refund(&b, &dev, &window, json!([]))
        );
        assert_eq!(x, y, "round {round}");
        assert_eq!(x.0, 200, "{}", x.1);
        assert_eq!(
            json_of(&x.1),
            json!({"window_id": window, "refunded_tokens": 7, "balance": 100})
        );
    }
    assert_eq!(a.balance().await, 100);
    assert_eq!(b.balance().await, 100);
    let charges = b.charges().await;
    assert_eq!(charges.len(), 1);
    assert_eq!(charges[0]["refunded_tokens"], 7);
}

async fn short_first_window(opts: ServerOpts) {
    let (s, dev) = monday(opts).await;
    let (window, cost) = open_autocad(&s, &dev).await;
    assert_eq!(cost, 7);
    s.set_time("2026-11-02T08:04:59Z").await;
    heartbeat(
        &s,
        &dev,
        json!([run(
            "s1",
            &window,
            "2026-11-02T08:00:00Z",
            Some("2026-11-02T08:04:59Z")
        )]),
    )
    .await;
    s.set_time("2026-11-02T08:05:00Z").await;
    let (status, body) = refund(&s, &dev, &window, json!([])).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        json_of(&body),
        json!({"window_id": window, "refunded_tokens": 7, "balance": 100})
    );
    assert_eq!(s.balance().await, 100);
    let lots = s.ok(M::GET, "/balance", None).await;
    assert_eq!(lots["lots"][0]["remaining"], 100);

    let charges = s.charges().await;
    assert_eq!(charges.len(), 1);
    assert_eq!(charges[0]["tokens"], 7);
    assert_eq!(charges[0]["refunded_tokens"], 7);
    assert_eq!(charges[0]["refunded_at"], "2026-11-02T08:05:00Z");

    let out = Command::new(bin("flex-admin"))
        .args(["--server", &s.url, "charges"])
        .env("FLEX_ADMIN_TOKEN", ADMIN_TOKEN)
        .env_remove("FLEX_SERVER")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("REFUNDED"), "{text}");
    assert!(text.contains("7 at 2026-11-02T08:05:00Z"), "{text}");
    assert!(
        text.contains("total: 7 tokens in 1 charge(s), 7 refunded in 1 short run(s): 0 spent"),
        "{text}"
    );

    // The usage day counts, with 0 tokens.
    let report = s
        .ok(
            M::GET,
            "/reports/usage?from=2026-11-02&to=2026-11-02&by=user",
            None,
        )
        .await;
    assert_eq!(report["total_tokens"], 0, "{report}");
    assert_eq!(report["rows"][0]["key"], ANN, "{report}");
    assert_eq!(report["rows"][0]["usage_days"], 1, "{report}");
    assert_eq!(report["rows"][0]["tokens"], 0, "{report}");

    s.set_time("2026-11-02T08:05:01Z").await;
    let (again, cost) = open_autocad(&s, &dev).await;
    assert_ne!(again, window, "the refunded window covers nothing");
    assert_eq!(cost, 7);
    assert_eq!(s.balance().await, 93, "one charge in all");
    let report = s
        .ok(
            M::GET,
            "/reports/usage?from=2026-11-02&to=2026-11-02&by=product",
            None,
        )
        .await;
    assert_eq!(report["total_tokens"], 7, "{report}");
    assert_eq!(report["rows"][0]["usage_days"], 1, "{report}");
}

/// AutoCAD still open at Tuesday 08:00 is renewed (7 more tokens) and closed
/// at 08:02: the renewal is refunded, Monday's window stays charged.
#[tokio::test]
async fn a_short_renewal_is_refunded_and_the_window_it_renewed_is_not() {
    let (s, dev) = monday(ServerOpts::default()).await;
    let (monday_w, _) = open_autocad(&s, &dev).await;
    s.set_time("2026-11-03T08:00:00Z").await;
    let (tuesday_w, cost) = claim(
        &s,
        &dev,
        json!({"user": ANN, "product": "autocad", "renews": monday_w}),
    )
    .await;
    assert_eq!(cost, 7);
    assert_eq!(s.balance().await, 86);
    s.set_time("2026-11-03T08:07:00Z").await;
    let ran = json!([run(
        "s1",
        &monday_w,
        "2026-11-02T08:00:00Z",
        Some("2026-11-03T08:02:00Z")
    )]);
    let (status, body) = refund(&s, &dev, &tuesday_w, ran.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json_of(&body)["refunded_tokens"], 7);
    assert_eq!(s.balance().await, 93);

    let (status, body) = refund(&s, &dev, &monday_w, ran).await;
    assert_eq!(status, 409, "{body}");
    let v = json_of(&body);
    assert_eq!(v["error"]["code"], "conflict");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("renewed"),
        "{v}"
    );
    let charges = s.charges().await;
    assert_eq!(charges[0]["kind"], "window");
    assert!(charges[0].get("refunded_at").is_none(), "{}", charges[0]);
    assert_eq!(charges[1]["kind"], "renewal");
    assert_eq!(charges[1]["refunded_tokens"], 7);
    assert_eq!(s.balance().await, 93);
}

/// A heartbeat uploaded AutoCAD's session still running; the refund request
/// itself carries no record: the server's own records refuse it, naming 08:05.
#[tokio::test]
async fn a_session_record_running_at_start_plus_grace_refuses_the_refund() {
    let (s, dev) = monday(ServerOpts::default()).await;
    let (window, _) = open_autocad(&s, &dev).await;
    s.set_time("2026-11-02T08:03:00Z").await;
    heartbeat(
        &s,
        &dev,
        json!([run("s1", &window, "2026-11-02T08:00:00Z", None)]),
    )
    .await;
    s.set_time("2026-11-02T08:30:00Z").await;
    let (status, body) = refund(&s, &dev, &window, json!([])).await;
    assert_eq!(status, 409, "{body}");
    let v = json_of(&body);
    assert_eq!(v["error"]["code"], "conflict");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("was running on this device at 2026-11-02 08:05:00 UTC"),
        "{message}"
    );
    assert_eq!(s.balance().await, 93);
    assert!(s.charges().await[0].get("refunded_tokens").is_none());
}

/// The answer is kept with the refund: a repeat gets it byte for byte, before
/// and after the server is killed with SIGKILL, and nothing moves twice.
#[tokio::test]
async fn a_repeat_after_kill_9_gets_the_first_answer_and_refunds_nothing_more() {
    let (mut s, dev) = monday(ServerOpts::default()).await;
    let (window, _) = open_autocad(&s, &dev).await;
    // A second window, used past the grace: its refusal is kept as well.
    let (revit, _) = claim(&s, &dev, json!({"user": ANN, "product": "revit"})).await;
    s.set_time("2026-11-02T08:06:00Z").await;
    claim(&s, &dev, json!({"user": ANN, "product": "revit"})).await;
    s.set_time("2026-11-02T08:10:00Z").await;
    let ended = json!([run(
        "s1",
        &window,
        "2026-11-02T08:00:00Z",
        Some("2026-11-02T08:01:00Z")
    )]);
    let first = refund(&s, &dev, &window, ended.clone()).await;
    assert_eq!(first.0, 200, "{}", first.1);
    let revit_refund = |s: &Server| {
        let url = format!("{}/v1/agent/refunds", s.url);
        let (http, token, revit) = (s.http.clone(), dev.token.clone(), revit.clone());
        async move {
            let resp = http
                .post(url)
                .bearer_auth(token)
                .json(&json!({"window_id": revit, "user": ANN, "product": "revit", "sessions": []}))
                .send()
                .await
                .unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        }
    };
    let used = revit_refund(&s).await;
    assert_eq!(used.0, 409, "{}", used.1);
    assert_eq!(refund(&s, &dev, &window, ended.clone()).await, first);
    assert_eq!(s.balance().await, 90);

    s.restart();
    s.set_time("2026-11-02T11:00:00Z").await;
    assert_eq!(refund(&s, &dev, &window, ended).await, first);
    assert_eq!(refund(&s, &dev, &window, json!([])).await, first);
    assert_eq!(revit_refund(&s).await, used);
    assert_eq!(s.balance().await, 90);
    let charges = s.charges().await;
    let refunded: u64 = charges
        .iter()
        .map(|c| c["refunded_tokens"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(refunded, 7);
}

/// `policy.short_use_grace = "0s"` turns refunds off; an unknown window is
/// 404, another device's window 409, a bad body 400, no token 401; none of
/// them changes the balance.
#[tokio::test]
async fn refunds_off_and_bad_requests_change_nothing() {
    let (s, dev) = monday(ServerOpts {
        config: Some("[policy]\nshort_use_grace = \"0s\"\n".into()),
        ..ServerOpts::default()
    })
    .await;
    let (window, _) = open_autocad(&s, &dev).await;
    s.set_time("2026-11-02T09:00:00Z").await;
    let (status, body) = refund(&s, &dev, &window, json!([])).await;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("short_use_grace"), "{body}");

    let (status, body) = refund(&s, &dev, "no-such-window", json!([])).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(json_of(&body)["error"]["code"], "not_found");

    let other = s.enroll().await;
    let (status, body) = refund(&s, &other, &window, json!([])).await;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("not granted to this device"), "{body}");

    let (status, v) = s
        .call(
            M::POST,
            "/v1/agent/refunds",
            &dev.token,
            Some(json!({"window_id": window, "user": ANN})),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    let (status, _) = s
        .call(
            M::POST,
            "/v1/agent/refunds",
            "",
            Some(json!({"window_id": window, "user": ANN, "product": "autocad", "sessions": []})),
        )
        .await;
    assert_eq!(status, 401);
    assert_eq!(s.balance().await, 93);

    let (status, doc) = s.call(M::GET, "/v1/openapi.json", "", None).await;
    assert_eq!(status, 200);
    assert!(doc["paths"].get("/v1/agent/refunds").is_some());
}

/// The real agent and server under a 6-second "day" and a 2-second grace:
/// Revit run through its wrapper for an instant is refunded by the agent's
/// own request; Inventor, still running at its start plus 2 s, is not.
#[tokio::test(flavor = "multi_thread")]
async fn with_the_real_agent_a_run_shorter_than_the_grace_is_refunded_and_a_longer_one_is_not() {
    let rates = Rates::unique();
    let policy = format!("{SHORT_POLICY}short_use_grace = \"2s\"\n");
    let server = flex_server(&policy, Some(&rates), 500).await;
    let agent = Agent::start(&server, "").await;
    let exe = fake_product(agent.dir.path(), &rates.exe("inventor"));
    let mut inventor = Running::product(&exe);
    let out = agent.run("revit", &["true"]);
    assert!(out.status.success(), "{out:?}");

    let revit = eventually("revit's window refunded", WAIT, || async {
        let c = server.charges().await;
        c.into_iter()
            .find(|c| c["product"] == "revit" && c.get("refunded_at").is_some())
    })
    .await;
    assert_eq!(revit["tokens"], 10, "{revit}");
    assert_eq!(revit["refunded_tokens"], 10, "{revit}");

    let charges = server.charges().await;
    let inv = charges
        .iter()
        .find(|c| c["product"] == "inventor")
        .expect("inventor charged")
        .clone();
    let cut = t(inv["window"]["start"].as_str().unwrap()) + chrono::Duration::seconds(3);
    eventually("a second past inventor's grace", WAIT, || async {
        (chrono::Utc::now() > cut).then_some(())
    })
    .await;
    inventor.quit();
    // Whatever the agent asked, inventor ran at its start plus the grace.
    let charges = server.charges().await;
    let inv: Vec<&Value> = charges
        .iter()
        .filter(|c| c["product"] == "inventor")
        .collect();
    assert!(
        inv.iter().all(|c| c.get("refunded_at").is_none()),
        "{charges:?}"
    );
    assert_eq!(server.balance().await, 500 - 9 * inv.len() as u64);
}
