//! Desktop notifications end to end: a real agent and server, a real
//! `flexctl notify --print` process, and the desktop played by a private D-Bus
//! session bus with a recording `org.freedesktop.Notifications` service (the one
//! of `flex_agent::testsupport`). Each event the user must hear about arrives as
//! a notification with the right summary, body and `urgency` hint (2 critical,
//! 1 normal), and as the same line on the notifier's stdout:
//!
//! * a charge (tokens and balance), a refused launch (exit 77) and a low balance;
//! * the offline warnings and the closure of a product when the server is gone.
//!
//! The notifier is started and waited for (its `subscribed` line on stderr)
//! before anything happens: no event may be missed, and nothing sleeps.

use flex_agent::testsupport::{
    NotificationServer, PrivateBus, Recorded, URGENCY_CRITICAL, URGENCY_NORMAL,
};
use flex_e2e::agent::{alive, eventually, flex_server, Agent, Running, SHORT_POLICY, WAIT};
use flex_e2e::notifier::Notifier;
use flex_e2e::Server;

/// Held for a whole test: the short policy's timings are kept under less load.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `flexctl notify --print` on the private bus, subscribed to `agent`.
fn notifier(agent: &Agent, bus: &PrivateBus) -> Notifier {
    let mut cmd = agent.flexctl();
    cmd.args(["notify", "--print"])
        .env("DBUS_SESSION_BUS_ADDRESS", &bus.address);
    Notifier::start(cmd)
}

/// The line `flexctl notify --print` prints for what the desktop received.
fn line_of(n: &Recorded) -> String {
    let urgency = if n.urgency == Some(URGENCY_CRITICAL) {
        "critical"
    } else {
        "normal"
    };
    format!("[{urgency}] {}: {}", n.summary, n.body)
}

/// Everything a test needs, started in order: bus and desktop first, then
/// server and agent, then the subscribed notifier.
struct Desk {
    notifier: Notifier,
    agent: Agent,
    server: Server,
    desktop: NotificationServer,
    _bus: PrivateBus,
}

impl Desk {
    async fn start(tokens: u64) -> Desk {
        let bus = PrivateBus::start();
        let desktop = NotificationServer::start(&bus).await;
        let server = flex_server(SHORT_POLICY, None, tokens).await;
        let agent = Agent::start(&server, "").await;
        // Notifications name products as the rate sheet does.
        agent.rate_sheet_known().await;
        let notifier = notifier(&agent, &bus);
        Desk {
            notifier,
            agent,
            server,
            desktop,
            _bus: bus,
        }
    }

    /// Waits for the notification whose summary satisfies `summary`, checks its
    /// urgency and that the notifier printed it too, and returns it.
    async fn expect(&self, what: &str, summary: impl Fn(&str) -> bool, urgency: u8) -> Recorded {
        let n = self.desktop.wait_for(what, |n| summary(&n.summary)).await;
        assert_eq!(n.app_name, "Flex licensing", "{n:?}");
        assert_eq!(n.urgency, Some(urgency), "urgency of {what}: {n:?}");
        self.notifier.printed(&line_of(&n)).await;
        n
    }

    /// `flexctl run --product PRODUCT -- sleep 60` in the background, once its
    /// license is granted (its session shows in the status).
    async fn running(&self, product: &str) -> Running {
        let wrapper = Running::wrapper(&self.agent, product);
        eventually(&format!("a running {product} session"), WAIT, || async {
            self.agent
                .sessions()
                .iter()
                .any(|s| s["product"] == product && s["pid"].is_u64())
                .then_some(())
        })
        .await;
        wrapper
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn charge_denied_launch_and_low_balance_reach_the_desktop() {
    let _serial = SERIAL.lock().await;
    // 100 tokens: the low-balance line is 20.
    let desk = Desk::start(100).await;

    // Refused launch: maya is on the default assignments' deny list.
    desk.server
        .ok(
            reqwest::Method::PUT,
            "/default-assignments",
            Some(serde_json::json!({"mode": "deny", "products": ["maya"]})),
        )
        .await;
    let out = desk
        .agent
        .flexctl()
        .args(["run", "--product", "maya", "--", "true"])
        .output()
        .expect("run flexctl");
    assert_eq!(out.status.code(), Some(77), "{out:?}");
    let denied = desk
        .expect(
            "launch denied",
            |s| s == "Maya was not started",
            URGENCY_NORMAL,
        )
        .await;
    assert_eq!(
        denied.body,
        "Your account is not licensed for Maya. Ask your license administrator for access.",
        "{denied:?}"
    );

    // A charge: tokens and the balance after it.
    let _autocad = desk.running("autocad").await;
    let charged = desk
        .expect(
            "charged",
            |s| s == "AutoCAD: 7 tokens charged",
            URGENCY_NORMAL,
        )
        .await;
    assert!(
        charged.body.starts_with("Reopening AutoCAD is free until "),
        "{charged:?}"
    );
    assert!(
        charged.body.ends_with(". Balance: 93 tokens."),
        "{charged:?}"
    );

    // A per-result job of 74 tokens takes the balance to 19, below the line;
    // the server raises low_balance and the agent, heartbeating while autocad
    // runs, passes it on.
    let out = desk
        .agent
        .flexctl()
        .args([
            "result",
            "--product",
            "recap-photo",
            "--count",
            "3700",
            "--job",
            "survey-1",
        ])
        .output()
        .expect("run flexctl result");
    assert!(out.status.success(), "{out:?}");
    let job = desk
        .expect(
            "the job charged",
            |s| s == "ReCap Photo: 74 tokens charged",
            URGENCY_NORMAL,
        )
        .await;
    assert_eq!(
        job.body, "The job is paid for. Balance: 19 tokens.",
        "{job:?}"
    );
    let low = desk
        .expect(
            "low balance",
            |s| s == "Flex token balance is low",
            URGENCY_NORMAL,
        )
        .await;
    let left: u64 = low
        .body
        .split_once(" tokens left.")
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or_else(|| panic!("no balance in {low:?}"));
    assert!(left <= 19, "{low:?}");
    assert!(
        low.body
            .contains("Ask your license administrator to buy more"),
        "{low:?}"
    );
    let notices = desk.server.notices().await;
    assert!(
        notices.iter().any(|n| n["kind"] == "low_balance"),
        "{notices:?}"
    );
    assert_eq!(
        desk.desktop
            .recorded()
            .iter()
            .filter(|n| n.summary == "Flex token balance is low")
            .count(),
        1,
        "told once"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn offline_warnings_and_the_closure_reach_the_desktop() {
    let _serial = SERIAL.lock().await;
    let mut desk = Desk::start(500).await;
    let autocad = desk.running("autocad").await;
    desk.expect(
        "charged",
        |s| s == "AutoCAD: 7 tokens charged",
        URGENCY_NORMAL,
    )
    .await;

    // The server goes away: warnings 4 s and 2 s before the 8 s limit, then
    // autocad is closed.
    desk.server.kill9();
    let warning = desk
        .expect(
            "an offline warning",
            |s| s.starts_with("AutoCAD closes in "),
            URGENCY_CRITICAL,
        )
        .await;
    assert!(
        warning
            .body
            .starts_with("This computer has not reached the license server for too long."),
        "{warning:?}"
    );
    assert!(
        warning.body.contains("AutoCAD will be closed"),
        "{warning:?}"
    );
    let closed = desk
        .expect(
            "the closure",
            |s| s == "AutoCAD was closed",
            URGENCY_CRITICAL,
        )
        .await;
    assert!(
        closed
            .body
            .contains("has not reached the license server for 8 s"),
        "{closed:?}"
    );
    assert!(
        closed
            .body
            .ends_with("Connect to the network, then start it again."),
        "{closed:?}"
    );
    let wrapper = autocad.pid();
    eventually("the wrapper to end with its product", WAIT, || async {
        (!alive(wrapper)).then_some(())
    })
    .await;
    // Warnings come before the closure, and there were two of them.
    let summaries: Vec<String> = desk
        .desktop
        .recorded()
        .into_iter()
        .map(|n| n.summary)
        .collect();
    let warnings: Vec<usize> = summaries
        .iter()
        .enumerate()
        .filter(|(_, s)| s.starts_with("AutoCAD closes in "))
        .map(|(i, _)| i)
        .collect();
    let closure = summaries
        .iter()
        .position(|s| s == "AutoCAD was closed")
        .unwrap();
    assert_eq!(warnings.len(), 2, "{summaries:?}");
    assert!(warnings.iter().all(|&w| w < closure), "{summaries:?}");
}
