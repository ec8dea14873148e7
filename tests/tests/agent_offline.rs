//! The offline rule (R8) with a real agent and server under the short policy
//! (offline limit 8 s, heartbeat every second): a product keeps running while the
//! agent is offline up to the limit and is closed after it, whether the watcher
//! found it or `flexctl run` wraps it; reconnecting first cancels the close; while
//! offline, a launch inside a held window is granted and any other is refused with
//! "connect to the network".
//!
//! Each test's server has a rate sheet of its own
//! ([`Rates::unique`](flex_e2e::agent::Rates::unique)), so its agent watches
//! (and closes) only that test's products.

use std::ffi::OsStr;
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use flex_e2e::agent::{alive, eventually, fake_product, setup, Agent, Running, WAIT};
use flex_e2e::t;
use serde_json::Value;

/// `flex_offline_limit` of [`SHORT_POLICY`](flex_e2e::agent::SHORT_POLICY).
const LIMIT: Duration = Duration::from_secs(8);

/// Waits for a granted session of `product` (with `origin`) in the status.
async fn session(agent: &Agent, product: &str, origin: &str) -> Value {
    eventually(
        &format!("a {origin} session of {product}"),
        WAIT,
        || async {
            agent
                .sessions()
                .into_iter()
                .find(|s| s["product"] == product && s["origin"] == origin)
        },
    )
    .await
}

/// Waits until the agent has heard from the server within the last second or
/// so (a full offline allowance ahead), so the offline clock starts at a known
/// moment when the server goes away.
async fn fresh_contact(agent: &Agent) {
    eventually("a fresh server contact", WAIT, || async {
        let s = agent.status();
        (s["online"] == true && s["offline_seconds_left"].as_i64() >= Some(7)).then_some(())
    })
    .await
}

fn offline_left(agent: &Agent) -> Option<i64> {
    agent.status()["offline_seconds_left"].as_i64()
}

#[tokio::test(flavor = "multi_thread")]
async fn offline_limit_closes_watched_and_wrapped_products_only_after_it() {
    let (rates, mut server, agent) = setup().await;
    let exe = fake_product(agent.dir.path(), &rates.exe("navisworks"));
    let mut watched = Running::product(&exe);
    let mut wrapper = Running::wrapper(&agent, "fusion");
    session(&agent, "navisworks", "watcher").await;
    session(&agent, "fusion", "wrapper").await;
    fresh_contact(&agent).await;

    server.kill9();
    let killed = Instant::now();
    let mut closest = i64::MAX;
    loop {
        // Status first: while it says more than a second is left, nothing may be
        // closed yet, whatever the scheduling delays after the read.
        let left = offline_left(&agent).expect("offline time counts while offline");
        if left > 1 {
            assert!(
                alive(watched.pid()),
                "watched product closed with {left}s left"
            );
            assert!(
                wrapper.exited().is_none(),
                "wrapper exited with {left}s left: {}",
                wrapper.stderr()
            );
            closest = closest.min(left);
        }
        if !alive(watched.pid()) && wrapper.exited().is_some() {
            break;
        }
        assert!(
            killed.elapsed() < LIMIT + WAIT,
            "products still running {:?} after the server went away",
            killed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let closed_seen = chrono::Utc::now();
    assert!(
        closest <= 3,
        "never saw the products alive near the limit ({closest}s left)"
    );
    // Offline time counts from the last contact, which cannot move any more.
    let contact = t(agent.status()["last_server_contact"].as_str().unwrap());
    let limit = chrono::Duration::from_std(LIMIT).unwrap();
    assert!(
        closed_seen >= contact + limit - chrono::Duration::milliseconds(200),
        "closed by {closed_seen}, before the limit: last contact {contact}"
    );

    let status = watched.wait();
    assert_eq!(
        status.signal(),
        Some(15),
        "a graceful close first: {status:?}"
    );
    let code = wrapper.exited().unwrap();
    assert_eq!(
        code.code(),
        Some(128 + 15),
        "the wrapped product's SIGTERM: {code:?}"
    );
    let stderr = wrapper.stderr();
    assert!(stderr.contains("closed Fusion"), "{stderr}");
    assert!(
        stderr.to_lowercase().contains("connect to the network"),
        "{stderr}"
    );

    eventually("no sessions after the close", WAIT, || async {
        agent.sessions().is_empty().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reconnecting_before_the_limit_cancels_the_close() {
    let (rates, mut server, agent) = setup().await;
    let exe = fake_product(agent.dir.path(), &rates.exe("civil3d"));
    let watched = Running::product(&exe);
    let mut wrapper = Running::wrapper(&agent, "3dsmax");
    session(&agent, "civil3d", "watcher").await;
    session(&agent, "3dsmax", "wrapper").await;
    fresh_contact(&agent).await;

    server.kill9();
    let killed = Instant::now();
    eventually("about 3 s offline", WAIT, || async {
        (offline_left(&agent)? <= 5).then_some(())
    })
    .await;
    assert!(alive(watched.pid()));
    server.restart();
    eventually("back online", WAIT, || async {
        let s = agent.status();
        (s["online"] == true && s["offline_seconds_left"].as_i64()? >= 6).then_some(())
    })
    .await;

    // Well past the original limit the products still run.
    let until = killed + LIMIT + Duration::from_secs(3);
    while Instant::now() < until {
        assert!(
            alive(watched.pid()),
            "watched product closed {:?} after going offline despite reconnecting",
            killed.elapsed()
        );
        assert!(
            wrapper.exited().is_none(),
            "wrapper exited despite reconnecting: {}",
            wrapper.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let s = agent.sessions();
    assert_eq!(s.len(), 2, "both sessions go on: {s:?}");
    assert_eq!(agent.status()["online"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn offline_launch_is_free_inside_a_held_window_and_refused_otherwise() {
    let (_rates, mut server, agent) = setup().await;
    // A running product keeps the agent calling the server, so it notices the loss.
    let mut running = Running::wrapper(&agent, "maya");
    session(&agent, "maya", "wrapper").await;
    assert_eq!(server.charges().await.len(), 1);

    server.kill9();
    eventually("the agent to notice it is offline", WAIT, || async {
        (agent.status()["online"] == false).then_some(())
    })
    .await;

    // Same product, same window: granted without the server.
    let marker = agent.dir.path().join("maya-started");
    let out = agent.run("maya", &[OsStr::new("touch"), marker.as_os_str()]);
    assert!(out.status.success(), "{out:?}");
    assert!(marker.exists(), "the product ran");

    // Another product: no window held, so no license without the server.
    let marker = agent.dir.path().join("revit-started");
    let out = agent.run("revit", &[OsStr::new("touch"), marker.as_os_str()]);
    assert_eq!(out.status.code(), Some(77), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.to_lowercase().contains("connect to the network"),
        "{stderr}"
    );
    assert!(stderr.contains("offline"), "{stderr}");
    assert!(!marker.exists(), "a refused product must not start");

    // End the running product, reconnect, and let the agent upload what it has:
    // the offline launch cost nothing and the refused one is not sent later.
    running.term();
    running.wait_exit(WAIT).await;
    server.restart();
    eventually("back online with nothing outstanding", WAIT, || async {
        let s = agent.status();
        (s["online"] == true && s["sessions"].as_array()?.is_empty()).then_some(())
    })
    .await;
    let charges = server.charges().await;
    assert_eq!(charges.len(), 1, "{charges:?}");
    assert_eq!(charges[0]["product"], "maya");
    assert_eq!(server.balance().await, 500 - 7);
}
