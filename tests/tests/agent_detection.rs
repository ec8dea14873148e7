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

use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use flex_e2e::agent::{alive, eventually, fake_product, Agent, Rates, SHORT_POLICY};
use flex_e2e::{Server, ServerOpts};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(15);

/// Inventor's sample rate in server-stub/rates/sample-rates.toml.
const INVENTOR_TOKENS: u64 = 9;

async fn server(rates: &Rates) -> Server {
    let server = Server::start(ServerOpts {
        config: Some(SHORT_POLICY.to_string()),
        rates: Some(rates.toml.clone()),
        ..Default::default()
    });
    server.buy(500).await;
    server.flex_user("root@example.com").await;
    server
}

/// A product process started by the test; killed and reaped when dropped.
struct Product(Child);

impl Product {
    fn start(exe: &Path) -> Product {
        Product(
            Command::new(exe)
                .arg("60")
                .spawn()
                .expect("start fake product"),
        )
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Ends the process and reaps it, as a user quitting the product would.
    fn quit(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Product {
    fn drop(&mut self) {
        self.quit();
    }
}

/// The status's sessions.
fn sessions(agent: &Agent) -> Vec<Value> {
    agent.status()["sessions"].as_array().unwrap().clone()
}

fn session_of(agent: &Agent, pid: u32) -> Option<Value> {
    sessions(agent)
        .into_iter()
        .find(|s| s["pid"].as_u64() == Some(pid.into()))
}

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
    let rates = Rates::unique();
    let server = server(&rates).await;
    let agent = Agent::start(&server, "").await;
    let exe = fake_product(agent.dir.path(), &rates.exe("inventor"));

    let mut first = Product::start(&exe);
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
        session_of(&agent, first.pid())
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
    let mut second = Product::start(&exe);
    let s2 = eventually("the second copy's session", WAIT, || async {
        session_of(&agent, second.pid())
    })
    .await;
    assert_eq!(s2["origin"], "watcher", "{s2}");
    let both = sessions(&agent);
    assert_eq!(both.len(), 2, "{both:?}");
    assert_eq!(both[0]["window_end"], both[1]["window_end"], "{both:?}");
    let charges = server.charges().await;
    assert_eq!(window_charges(&charges, "inventor"), 1, "{charges:?}");

    first.quit();
    second.quit();
    eventually("no sessions once both copies exited", WAIT, || async {
        sessions(&agent).is_empty().then_some(())
    })
    .await;
    let charges = server.charges().await;
    assert_eq!(window_charges(&charges, "inventor"), 1, "{charges:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn product_running_before_the_agent_starts_is_adopted_and_charged() {
    let rates = Rates::unique();
    let server = server(&rates).await;
    let mut agent = Agent::enrolled(&server, "").await;
    let exe = fake_product(agent.dir.path(), &rates.exe("inventor"));
    let mut product = Product::start(&exe);
    assert!(alive(product.pid()));

    agent.spawn();
    let s = eventually("the running product adopted", WAIT, || async {
        session_of(&agent, product.pid())
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
        sessions(&agent).is_empty().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn polling_source_detects_start_and_exit() {
    let rates = Rates::unique();
    let server = server(&rates).await;
    let agent = Agent::start(&server, "detection = \"polling\"").await;
    assert_eq!(agent.status()["detection"], "polling");
    let exe = fake_product(agent.dir.path(), &rates.exe("revit"));

    let mut product = Product::start(&exe);
    let s = eventually("the polled product's session", WAIT, || async {
        session_of(&agent, product.pid())
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
        sessions(&agent).is_empty().then_some(())
    })
    .await;
    let charges = server.charges().await;
    assert_eq!(window_charges(&charges, "revit"), 1, "{charges:?}");
}
