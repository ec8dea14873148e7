//! Daily windows (R5) with a real agent under the short policy (a 6 s window):
//! a product still running at window end is charged again for the next window,
//! linked to the first; one closed before is not; and a window survives a kill -9
//! of the agent: the journal's signed lease makes launches inside it free, even
//! with the server unreachable.
//!
//! Each test's server has a rate sheet of its own
//! ([`Rates::unique`](flex_e2e::agent::Rates::unique)), so its agent watches
//! only that test's products.

use flex_e2e::agent::{eventually, fake_product, setup, Agent, Running, WAIT};
use flex_e2e::t;
use serde_json::Value;

/// Sample rates (server-stub/rates/sample-rates.toml).
const INVENTOR: u64 = 9;
const REVIT: u64 = 10;

fn of_product<'a>(charges: &'a [Value], product: &str) -> Vec<&'a Value> {
    charges.iter().filter(|c| c["product"] == product).collect()
}

/// Whether two timestamps name the same instant. The ledger keeps microseconds;
/// the agent keeps the grant's own (finer) reading of the same window end.
fn same_instant(a: &Value, b: &Value) -> bool {
    match (a.as_str(), b.as_str()) {
        (Some(a), Some(b)) => (t(a) - t(b)).abs() < chrono::Duration::microseconds(1),
        _ => false,
    }
}

/// `flexctl run --product PRODUCT -- true`: a launch that ends at once.
fn launch(agent: &Agent, product: &str) -> std::process::Output {
    agent.run(product, &["true"])
}

#[tokio::test(flavor = "multi_thread")]
async fn running_product_is_renewed_at_window_end_and_a_closed_one_is_not() {
    let (rates, server, agent) = setup().await;
    let exe = fake_product(agent.dir.path(), &rates.exe("inventor"));
    let mut inventor = Running::product(&exe);
    let first = eventually("inventor's first window", WAIT, || async {
        agent.session_of(inventor.pid())
    })
    .await;
    // Revit opens its own window and is closed before it ends.
    let out = launch(&agent, "revit");
    assert!(out.status.success(), "{out:?}");

    let charges = eventually("inventor's renewal", WAIT, || async {
        let c = server.charges().await;
        (of_product(&c, "inventor").len() >= 2).then_some(c)
    })
    .await;
    let inv = of_product(&charges, "inventor");
    assert_eq!(inv.len(), 2, "{charges:?}");
    assert_eq!(inv[0]["kind"], "window", "{charges:?}");
    assert_eq!(inv[1]["kind"], "renewal", "{charges:?}");
    assert_eq!(inv[1]["tokens"], INVENTOR);
    let (w1, w2) = (&inv[0]["window"], &inv[1]["window"]);
    assert_ne!(w1["id"], w2["id"]);
    assert_eq!(
        t(w2["start"].as_str().unwrap()),
        t(w1["end"].as_str().unwrap()),
        "the renewal starts where the first window ends: {charges:?}"
    );
    assert_eq!(
        t(w2["end"].as_str().unwrap()) - t(w2["start"].as_str().unwrap()),
        chrono::Duration::seconds(6)
    );
    assert!(
        same_instant(&first["window_end"], &w1["end"]),
        "{first} {w1}"
    );
    // The running session moved to the new window.
    eventually("the session in the renewed window", WAIT, || async {
        let s = agent.session_of(inventor.pid())?;
        same_instant(&s["window_end"], &w2["end"]).then_some(())
    })
    .await;
    inventor.quit();

    // Revit's window has ended by now (it opened after inventor's); give the
    // agent a moment past its end: no renewal for a product that is not running.
    let revit = of_product(&charges, "revit");
    assert_eq!(revit.len(), 1, "{charges:?}");
    let revit_end = t(revit[0]["window"]["end"].as_str().unwrap());
    eventually("a second past revit's window end", WAIT, || async {
        (chrono::Utc::now() > revit_end + chrono::Duration::seconds(1)).then_some(())
    })
    .await;
    let charges = server.charges().await;
    let revit = of_product(&charges, "revit");
    assert_eq!(
        revit.len(),
        1,
        "no renewal of a closed product: {charges:?}"
    );
    assert_eq!(revit[0]["kind"], "window");
    assert_eq!(revit[0]["tokens"], REVIT);
    assert!(
        of_product(&charges, "inventor").len() == 2,
        "inventor quit inside its second window: {charges:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_kill9_inside_a_window_keeps_the_window_and_the_session() {
    let (rates, mut server, mut agent) = setup().await;
    let exe = fake_product(agent.dir.path(), &rates.exe("inventor"));
    let mut inventor = Running::product(&exe);
    let before = eventually("inventor's session", WAIT, || async {
        agent.session_of(inventor.pid())
    })
    .await;
    assert_eq!(server.charges().await.len(), 1);

    // Crash the agent with the server unreachable: whatever the restarted
    // agent grants now comes from its journal alone.
    server.kill9();
    agent.kill9();
    agent.spawn();
    let after = eventually("the session restored from the journal", WAIT, || async {
        agent.session_of(inventor.pid())
    })
    .await;
    assert_eq!(after["session"], before["session"], "{after}");
    assert_eq!(after["window_end"], before["window_end"], "{after}");
    assert_eq!(agent.status()["online"], false);

    let out = launch(&agent, "inventor");
    assert!(
        out.status.success(),
        "a launch inside the journaled window is granted offline: {out:?}"
    );
    inventor.quit();

    server.restart();
    eventually("back online with no sessions", WAIT, || async {
        let s = agent.status();
        (s["online"] == true && s["sessions"].as_array()?.is_empty()).then_some(())
    })
    .await;
    let charges = server.charges().await;
    let windows: Vec<_> = charges.iter().filter(|c| c["kind"] == "window").collect();
    assert_eq!(windows.len(), 1, "nothing new was charged: {charges:?}");
    // Only a renewal may follow, if the machine was slow enough for the window
    // to end while inventor still ran; then it continues the same window.
    for c in charges.iter().filter(|c| c["kind"] != "window") {
        assert_eq!(c["kind"], "renewal", "{charges:?}");
        assert_eq!(
            c["window"]["start"], windows[0]["window"]["end"],
            "{charges:?}"
        );
    }
}
