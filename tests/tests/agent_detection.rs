//! Products found by the agent's process watcher, with no wrapper: a copy of
//! `sleep` named like a product's Linux executable in the server's rate sheet is
//! detected, charged once per
//! window, adopted when it was running before the agent started, and its exit
//! ends the session. Runs with the default source (the kernel's process connector
//! where it opens) and once with `detection = "polling"`.
//!
//! Every agent watches the whole machine, so each test's server has a rate sheet
//! of its own ([`Rates::unique`]: the sample rates, executable names suffixed) and
//! its agent sees only that test's products.

use flex_e2e::agent::{
    alive, eventually, fake_product, fake_product_of, flex_server, setup, Agent, Rates, Running,
    SHORT_POLICY, WAIT,
};
use flex_e2e::Server;
use serde_json::Value;

/// Inventor's sample rate in server-stub/rates/sample-rates.toml.
const INVENTOR_TOKENS: u64 = 9;

async fn charge_count(server: &Server, n: usize) -> Vec<Value> {
    eventually(&format!("{n} ledger rows"), WAIT, || async {
        let c = server.charges().await;
        (c.len() >= n).then_some(c)
    })
    .await
}

/// Window charges (not renewals) for `product`.
fn window_charges(charges: &[Value], product: &str) -> usize {
    charges
        .iter()
        .filter(|c| c["product"] == product && c["kind"] == "window")
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn detected_product_is_charged_once_and_its_exit_ends_the_session() {
    let (rates, server, agent) = setup().await;
    let exe = fake_product(agent.dir.path(), &rates.exe("inventor"));

    let mut first = Running::product(&exe);
    let charges = charge_count(&server, 1).await;
    assert_eq!(charges.len(), 1, "{charges:?}");
    let c = &charges[0];
    assert_eq!(c["product"], "inventor", "{c}");
    assert_eq!(c["user"], "root@example.com", "{c}");
    assert_eq!(c["kind"], "window", "{c}");
    assert_eq!(c["source"], "tokens", "{c}");
    assert_eq!(c["tokens"], INVENTOR_TOKENS, "{c}");
    assert_eq!(server.balance().await, 500 - INVENTOR_TOKENS);

    let s = eventually("the detected session in status", WAIT, || async {
        agent.session_of(first.pid())
    })
    .await;
    assert_eq!(s["origin"], "watcher", "{s}");
    assert_eq!(s["product"], "inventor", "{s}");
    assert_eq!(s["user"], "root@example.com", "{s}");
    assert_eq!(s["source"], "tokens", "{s}");
    let status = agent.status();
    assert!(
        matches!(
            status["detection"].as_str(),
            Some("proc-connector" | "polling")
        ),
        "{status}"
    );

    // A second copy inside the window costs nothing and shares the window.
    let mut second = Running::product(&exe);
    let s2 = eventually("the second copy's session", WAIT, || async {
        agent.session_of(second.pid())
    })
    .await;
    assert_eq!(s2["origin"], "watcher", "{s2}");
    let both = agent.sessions();
    assert_eq!(both.len(), 2, "{both:?}");
    assert_eq!(both[0]["window_end"], both[1]["window_end"], "{both:?}");
    let charges = server.charges().await;
    assert_eq!(window_charges(&charges, "inventor"), 1, "{charges:?}");

    first.quit();
    second.quit();
    eventually("no sessions once both copies exited", WAIT, || async {
        agent.sessions().is_empty().then_some(())
    })
    .await;
    let charges = server.charges().await;
    assert_eq!(window_charges(&charges, "inventor"), 1, "{charges:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn product_running_before_the_agent_starts_is_adopted_and_charged() {
    let rates = Rates::unique();
    let server = flex_server(SHORT_POLICY, Some(&rates), 500).await;
    let mut agent = Agent::enrolled(&server, "").await;
    let exe = fake_product(agent.dir.path(), &rates.exe("inventor"));
    let mut product = Running::product(&exe);
    assert!(alive(product.pid()));

    agent.spawn();
    let s = eventually("the running product adopted", WAIT, || async {
        agent.session_of(product.pid())
    })
    .await;
    assert_eq!(s["origin"], "watcher", "{s}");
    assert_eq!(s["product"], "inventor", "{s}");
    let charges = charge_count(&server, 1).await;
    assert_eq!(charges.len(), 1, "{charges:?}");
    assert_eq!(charges[0]["product"], "inventor");
    assert_eq!(charges[0]["tokens"], INVENTOR_TOKENS);
    assert!(alive(product.pid()), "a licensed product keeps running");

    product.quit();
    eventually("no sessions once the product exited", WAIT, || async {
        agent.sessions().is_empty().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn polling_source_detects_start_and_exit() {
    let rates = Rates::unique();
    let server = flex_server(SHORT_POLICY, Some(&rates), 500).await;
    let agent = Agent::start(&server, "detection = \"polling\"").await;
    assert_eq!(agent.status()["detection"], "polling");
    let exe = fake_product(agent.dir.path(), &rates.exe("revit"));

    let mut product = Running::product(&exe);
    let s = eventually("the polled product's session", WAIT, || async {
        agent.session_of(product.pid())
    })
    .await;
    assert_eq!(s["origin"], "watcher", "{s}");
    assert_eq!(s["product"], "revit", "{s}");
    let charges = charge_count(&server, 1).await;
    assert_eq!(charges.len(), 1, "{charges:?}");
    assert_eq!(charges[0]["product"], "revit");
    assert_eq!(charges[0]["tokens"], 10, "revit's sample rate");

    product.quit();
    eventually("no sessions once the product exited", WAIT, || async {
        agent.sessions().is_empty().then_some(())
    })
    .await;
    let charges = server.charges().await;
    assert_eq!(window_charges(&charges, "revit"), 1, "{charges:?}");
}

/// A product whose main thread ends while another thread runs on (what a
/// preloaded library could make any product do) is charged like any other,
/// and its session lasts until its last thread ends: the main thread's exit,
/// which the kernel reports like a process's, ends nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_product_that_ends_its_main_thread_is_charged_and_followed_to_its_end() {
    use flex_agent::testsupport::leaderless;
    let (rates, server, agent) = setup().await;
    let exe = fake_product_of(
        leaderless::program(),
        agent.dir.path(),
        &rates.exe("inventor"),
    );
    let mut headless = Running::spawn(
        std::process::Command::new(&exe)
            .arg("wait")
            .stdin(std::process::Stdio::piped()),
    );
    eventually("the product's session", WAIT, || async {
        agent.session_of(headless.pid())
    })
    .await;
    headless.write_stdin(b"x");
    leaderless::wait_main_thread_ended(headless.pid());
    // One started after the main thread ended, and at once without its own:
    // the agent has handled the first one's main thread exit by the time
    // this one has a session.
    let mut second = Running::spawn(&mut std::process::Command::new(&exe));
    eventually("the second one's session", WAIT, || async {
        agent.session_of(second.pid())
    })
    .await;
    assert!(
        agent.session_of(headless.pid()).is_some(),
        "the first one's session ended with its main thread: {:?}",
        agent.sessions()
    );
    let charges = server.charges().await;
    assert_eq!(window_charges(&charges, "inventor"), 1, "{charges:?}");
    assert_eq!(server.balance().await, 500 - INVENTOR_TOKENS);

    headless.quit();
    eventually(
        "the first one's session ends with its last thread",
        WAIT,
        || async { agent.session_of(headless.pid()).is_none().then_some(()) },
    )
    .await;
    assert!(agent.session_of(second.pid()).is_some());
    second.quit();
    eventually("no sessions once both ended", WAIT, || async {
        agent.sessions().is_empty().then_some(())
    })
    .await;
}
