//! Charge exactly once through a crash of the agent in the middle of a claim
//! (DESIGN §3 "Claims are idempotent", §5 reliability). The agent's failpoints
//! SIGKILL it
//!
//! * `claim-journaled`: after the claim id is committed to its journal, before
//!   the claim is sent: nothing is charged until the restarted agent resends it;
//! * `claim-answered`: after the server answered, before the answer is
//!   journaled: the server charged, and the restarted agent's resend of the same
//!   claim id gets the original answer instead of a second charge.
//!
//! Each case runs for a `flexctl run` launch (the wrapper loses its agent and
//! fails) and for a product process the watcher detects, which keeps running
//! across the crash and is adopted after the restart. In every case the ledger
//! ends with one charge, made by the journaled claim id; the agent holds its
//! window, so a new launch is free; and `flexctl status` tells the truth.
//!
//! Every agent watches the whole machine, so each test's server has a rate sheet
//! of its own ([`Rates::unique`]): no other agent takes its product for one.

use std::os::unix::process::ExitStatusExt;

use flex_agent::core::CoreState;
use flex_agent::journal::Journal;
use flex_e2e::agent::{
    alive, eventually, fake_product, flex_server, Agent, Rates, Running, USER, WAIT,
};
use flex_e2e::Server;
use serde_json::Value;

/// Heartbeat every second; a window long enough that "a new launch inside the
/// window is free" does not race the window's end on a slow machine.
const POLICY: &str = r#"
[policy]
window = "10m"
heartbeat_interval = "1s"
close_grace = "1s"
"#;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failpoint {
    ClaimJournaled,
    ClaimAnswered,
}

impl Failpoint {
    fn name(self) -> &'static str {
        match self {
            Failpoint::ClaimJournaled => "claim-journaled",
            Failpoint::ClaimAnswered => "claim-answered",
        }
    }
}

/// What the agent's journal holds, read while the agent is down or (SQLite in
/// WAL mode) while it runs.
fn journal(agent: &Agent) -> CoreState {
    Journal::open_in(&agent.state_dir)
        .and_then(|j| j.load_state())
        .expect("read the agent's journal")
}

/// A server with tokens, the test user on Flex and a rate sheet of its own, and
/// an enrolled agent that will SIGKILL itself at `point`.
async fn setup(point: Failpoint) -> (Server, Agent, Rates) {
    let rates = Rates::unique();
    let server = flex_server(POLICY, Some(&rates), 500).await;
    let mut agent = Agent::enrolled(&server, "").await;
    agent
        .env
        .push(("FLEX_AGENT_FAILPOINT".into(), point.name().into()));
    agent.spawn();
    (server, agent, rates)
}

/// Waits for the agent to die at its failpoint and checks what the crash left:
/// one journaled, unsettled autocad claim, whose id it returns.
fn crashed(agent: &mut Agent, point: Failpoint) -> String {
    let status = agent
        .wait_exit(WAIT)
        .unwrap_or_else(|| panic!("the agent did not die at failpoint {}", point.name()));
    assert_eq!(status.signal(), Some(9), "killed by SIGKILL: {status:?}");
    assert!(
        agent
            .log()
            .contains(&format!("failpoint {} hit", point.name())),
        "{}",
        agent.log()
    );
    let state = journal(agent);
    assert_eq!(state.pending_claims.len(), 1, "{:?}", state.pending_claims);
    let claim = &state.pending_claims[0];
    assert_eq!(
        (claim.user.as_str(), claim.product.as_str()),
        (USER, "autocad")
    );
    assert!(
        state.windows.is_empty(),
        "no window before the answer is journaled: {:?}",
        state.windows
    );
    claim.claim_id.to_string()
}

/// Before the restart: `claim-journaled` sent nothing; `claim-answered` was
/// charged by the server under the journaled claim id.
async fn ledger_before_restart(server: &Server, point: Failpoint, claim_id: &str) {
    let charges = server.charges().await;
    match point {
        Failpoint::ClaimJournaled => assert!(charges.is_empty(), "{charges:?}"),
        Failpoint::ClaimAnswered => {
            assert_eq!(charges.len(), 1, "{charges:?}");
            assert_eq!(charges[0]["claim_id"], claim_id);
        }
    }
}

/// After the restart: the resent claim settles into a held window and the
/// ledger has exactly one charge, made by the journaled claim id.
async fn settled(server: &Server, agent: &Agent, claim_id: &str) {
    let window = eventually("the resent claim to settle", WAIT, || async {
        let state = journal(agent);
        let held = state
            .windows
            .iter()
            .find(|w| w.user == USER && w.product == "autocad");
        match (state.pending_claims.is_empty(), held) {
            (true, Some(w)) => Some(w.window.id.clone()),
            _ => None,
        }
    })
    .await;
    let charges = server.charges().await;
    assert_eq!(charges.len(), 1, "exactly one charge: {charges:?}");
    let charge = &charges[0];
    assert_eq!(charge["claim_id"], claim_id, "charged by the journaled id");
    assert_eq!(charge["tokens"], 7);
    assert_eq!(charge["window"]["id"], window.as_str());
    assert_eq!(server.balance().await, 493);
}

/// A status with the facts right: online, the balance after one charge.
async fn sane_status(agent: &Agent) -> Value {
    eventually("status online with balance 493", WAIT, || async {
        let s = agent.status();
        (s["online"] == true && s["balance"] == 493).then_some(s)
    })
    .await
}

/// `flexctl run --product autocad -- true` must be granted for free.
async fn free_launch(server: &Server, agent: &Agent) {
    let out = agent.run("autocad", &["true"]);
    assert!(out.status.success(), "{out:?}\n{}", agent.log());
    assert_eq!(server.charges().await.len(), 1, "the new launch is free");
    assert_eq!(server.balance().await, 493);
}

async fn wrapper_launch_survives_a_crash_at(point: Failpoint) {
    let (server, mut agent, _) = setup(point).await;

    let out = agent.run("autocad", &["true"]);
    assert!(
        !out.status.success(),
        "the agent died before answering: {out:?}"
    );
    let claim_id = crashed(&mut agent, point);
    ledger_before_restart(&server, point, &claim_id).await;

    agent.env.clear();
    agent.spawn();
    settled(&server, &agent, &claim_id).await;
    let status = sane_status(&agent).await;
    assert_eq!(
        status["sessions"],
        serde_json::json!([]),
        "the wrapper died with the agent; its product never started: {status}"
    );
    free_launch(&server, &agent).await;
    let status = sane_status(&agent).await;
    assert_eq!(status["sessions"], serde_json::json!([]), "{status}");
}

async fn watched_product_survives_a_crash_at(point: Failpoint) {
    let (server, mut agent, rates) = setup(point).await;

    let exe = fake_product(agent.dir.path(), &rates.exe("acad"));
    let product = Running::product(&exe);
    let pid = product.pid();
    let claim_id = crashed(&mut agent, point);
    ledger_before_restart(&server, point, &claim_id).await;
    assert!(alive(pid), "the product outlives the agent");

    agent.env.clear();
    agent.spawn();
    settled(&server, &agent, &claim_id).await;
    // The running product is adopted into the window the resent claim opened.
    let status = eventually(
        "the product adopted as a licensed session",
        WAIT,
        || async {
            let s = agent.status();
            let adopted = s["sessions"].as_array().is_some_and(|sessions| {
                sessions.len() == 1
                    && sessions[0]["pid"] == pid
                    && sessions[0]["product"] == "autocad"
                    && sessions[0]["origin"] == "watcher"
                    && sessions[0]["source"] == "tokens"
            });
            (adopted && s["online"] == true && s["balance"] == 493).then_some(s)
        },
    )
    .await;
    assert_eq!(status["sessions"][0]["user"], USER, "{status}");
    assert!(alive(pid), "a licensed product is not closed");

    free_launch(&server, &agent).await;
    assert_eq!(server.charges().await.len(), 1);
    drop(product);
}

#[tokio::test(flavor = "multi_thread")]
async fn wrapper_crash_after_journaling_the_claim_charges_once_after_restart() {
    wrapper_launch_survives_a_crash_at(Failpoint::ClaimJournaled).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn wrapper_crash_before_journaling_the_answer_charges_once() {
    wrapper_launch_survives_a_crash_at(Failpoint::ClaimAnswered).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn watched_product_crash_after_journaling_the_claim_charges_once_after_restart() {
    watched_product_survives_a_crash_at(Failpoint::ClaimJournaled).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn watched_product_crash_before_journaling_the_answer_charges_once() {
    watched_product_survives_a_crash_at(Failpoint::ClaimAnswered).await;
}
