//! Issue 14, defect 8: one device speaks for every user. A device credential
//! may claim for any email (a shared workstation has many users, and the server
//! cannot know who sits where), so a device that speaks for more people in a
//! tenant day than `policy.device_users_alert` raises a `device_users` notice
//! for the admins, once per device and day. And `GET /v1/agent/users/{email}`
//! tells a device only whether the user exists, not what they may run.

use flex_e2e::smtp::{free_port, SmtpSink};
use flex_e2e::{Device, Server, ServerOpts};
use reqwest::Method as M;
use serde_json::{json, Value};

async fn users(s: &Server, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..n {
        let email = format!("user{i:02}@example.com");
        s.flex_user(&email).await;
        out.push(email);
    }
    out
}

fn device_notices(notices: &[Value]) -> Vec<&Value> {
    notices
        .iter()
        .filter(|n| n["kind"] == "device_users")
        .collect()
}

/// A granted AutoCAD launch; the tokens it charged.
async fn launch(s: &Server, dev: &Device, user: &str) -> u64 {
    s.launch(dev, user, "autocad").await
}

#[tokio::test]
async fn a_device_claiming_for_eleven_users_in_a_day_raises_one_notice() {
    let port = free_port();
    let s = Server::start(ServerOpts {
        test_clock: true,
        config: Some(format!(
            "[smtp]\nhost = \"127.0.0.1\"\nport = {port}\nsecurity = \"none\"\n\
             from = \"flex@example.com\"\nto = [\"it@example.com\"]\n\
             check_interval = \"100ms\"\nretry = \"200ms\"\n"
        )),
        ..Default::default()
    });
    let sink = SmtpSink::start(port);
    s.set_time("2026-11-02T08:00:00Z").await;
    s.buy(1000).await;
    let people = users(&s, 13).await;
    let shared = s.enroll().await;
    let other = s.enroll().await;

    for u in &people[..10] {
        assert_eq!(launch(&s, &shared, u).await, 7);
    }
    // Another device's users are its own count.
    for u in &people[11..13] {
        launch(&s, &other, u).await;
    }
    assert!(
        device_notices(&s.notices().await).is_empty(),
        "ten users is the default alert, not above it"
    );

    // The eleventh, refused or not, is one more person this device speaks for.
    let (status, v) = s
        .claim(
            &shared,
            json!({"user": "stranger@example.com", "product": "autocad"}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(v["decision"], "denied", "{v}");
    let notices = s.notices().await;
    let raised = device_notices(&notices);
    assert_eq!(raised.len(), 1, "{notices:#?}");
    let message = raised[0]["message"].as_str().unwrap();
    assert!(
        message.starts_with(&format!(
            "device {} (ws-test) claimed for or looked up 11 different users on 2026-11-02, \
             more than policy.device_users_alert = 10:",
            shared.id
        )),
        "{message}"
    );
    assert!(message.contains("stranger@example.com"), "{message}");

    let mail = sink.next(30);
    assert_eq!(
        mail["subject"], "[Flex] One workstation claims for many users",
        "{mail}"
    );
    assert!(
        mail["body"].as_str().unwrap().starts_with(message),
        "{mail}"
    );

    // Once a day: a twelfth user (and repeats) raise nothing more.
    assert_eq!(launch(&s, &shared, &people[10]).await, 7);
    assert_eq!(
        launch(&s, &shared, &people[0]).await,
        0,
        "inside its window"
    );
    assert_eq!(device_notices(&s.notices().await).len(), 1);

    // Agents never get it: heartbeats carry the balance notices only.
    let (status, hb) = s
        .call(
            M::POST,
            "/v1/agent/heartbeat",
            &shared.token,
            Some(json!({"sessions": []})),
        )
        .await;
    assert_eq!(status, 200, "{hb}");
    assert!(
        hb["notices"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["kind"] != "device_users"),
        "{hb}"
    );

    // The next day counts afresh.
    s.set_time("2026-11-03T20:00:00Z").await;
    for u in &people[..11] {
        launch(&s, &shared, u).await;
    }
    let raised = device_notices(&s.notices().await)
        .into_iter()
        .map(|n| n["message"].as_str().unwrap().to_owned())
        .collect::<Vec<_>>();
    assert_eq!(raised.len(), 2, "{raised:#?}");
    assert!(raised[0].contains("on 2026-11-03"), "{}", raised[0]);
}

#[tokio::test]
async fn the_day_is_the_tenants_and_the_alert_is_configurable() {
    let s = Server::start(ServerOpts {
        test_clock: true,
        config: Some("[policy]\ntimezone = \"Pacific/Auckland\"\ndevice_users_alert = 2\n".into()),
        ..Default::default()
    });
    // 23:00 on Nov 2 in Auckland (UTC+13).
    s.set_time("2026-11-02T10:00:00Z").await;
    s.buy(500).await;
    let people = users(&s, 5).await;
    let dev = s.enroll().await;
    launch(&s, &dev, &people[0]).await;
    launch(&s, &dev, &people[1]).await;
    // 01:00 on Nov 3 in Auckland, the same UTC day: a new tenant day.
    s.set_time("2026-11-02T12:00:00Z").await;
    launch(&s, &dev, &people[2]).await;
    launch(&s, &dev, &people[3]).await;
    assert!(device_notices(&s.notices().await).is_empty());
    launch(&s, &dev, &people[4]).await;
    let notices = s.notices().await;
    let raised = device_notices(&notices);
    assert_eq!(raised.len(), 1, "{notices:#?}");
    assert!(
        raised[0]["message"].as_str().unwrap().contains(
            "claimed for or looked up 3 different users on 2026-11-03, more than \
                 policy.device_users_alert = 2"
        ),
        "{}",
        raised[0]
    );
}

#[tokio::test]
async fn a_device_learns_whether_a_user_exists_and_nothing_more() {
    let s = Server::start_test_clock();
    s.flex_user("ada@example.com").await;
    s.ok(
        M::POST,
        "/subscriptions",
        Some(json!({"email": "ada@example.com", "product": "revit"})),
    )
    .await;
    let dev = s.enroll().await;

    let (status, v) = s
        .call(M::GET, "/v1/agent/users/Ada@Example.com", &dev.token, None)
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v, json!({"email": "ada@example.com", "known": true}));
    let (_, v) = s
        .call(M::GET, "/v1/agent/users/zed@example.com", &dev.token, None)
        .await;
    assert_eq!(v, json!({"email": "zed@example.com", "known": false}));

    // Asking about people counts like claiming for them: a scan is noticed.
    for i in 0..9 {
        let (status, _) = s
            .call(
                M::GET,
                &format!("/v1/agent/users/probe{i}@example.com"),
                &dev.token,
                None,
            )
            .await;
        assert_eq!(status, 200);
    }
    let notices = s.notices().await;
    let raised = device_notices(&notices);
    assert_eq!(raised.len(), 1, "{notices:#?}");
    assert!(
        raised[0]["message"]
            .as_str()
            .unwrap()
            .contains("claimed for or looked up 11 different users"),
        "{}",
        raised[0]
    );
}
