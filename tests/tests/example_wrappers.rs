//! The example wrappers of `examples/wrappers/` (Python, and POSIX shell with
//! socat) against a real agent and server, as a wrapper author would try them:
//!
//! * granted: the product runs, its exit code comes back, it is charged once;
//! * reopened inside the window: free;
//! * refused: exit 77, one line naming the product by its display name, and
//!   the product never started;
//! * the agent closes the session (the server is gone past the offline limit):
//!   the wrapper stops its product and exits 128 + SIGTERM.
//!
//! The wrappers learn everything from `docs/local-api.md`'s protocol; this test
//! is what proves a wrapper can be written from it alone.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use flex_e2e::agent::{alive, eventually, flex_server, Agent, Rates, Running, WAIT};
use serde_json::json;

/// A long window (reopening stays free however slow the machine), and an
/// offline limit of 4 s so that the agent closes sessions soon once the server
/// is gone.
const POLICY: &str = r#"
[policy]
window = "1h"
flex_offline_limit = "4s"
offline_warnings = ["2s"]
heartbeat_interval = "1s"
renewal_grace = "2s"
close_grace = "2s"
"#;

/// Sample rate of autocad (server-stub/rates/sample-rates.toml).
const AUTOCAD: u64 = 7;

#[derive(Clone, Copy, Debug)]
enum Wrapper {
    Python,
    Shell,
}

impl Wrapper {
    fn script(self) -> PathBuf {
        let name = match self {
            Wrapper::Python => "flex-wrap.py",
            Wrapper::Shell => "flex-wrap.sh",
        };
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/wrappers")
            .join(name)
    }

    /// `INTERPRETER SCRIPT --socket S --product P -- COMMAND...`, ready to run.
    fn command(self, agent: &Agent, product: &str, command: &[&str]) -> Command {
        let interpreter = match self {
            Wrapper::Python => "python3",
            Wrapper::Shell => "sh",
        };
        let mut cmd = Command::new(interpreter);
        cmd.arg(self.script())
            .arg("--socket")
            .arg(agent.socket_path())
            .args(["--product", product, "--"])
            .args(command);
        cmd
    }

    fn run(self, agent: &Agent, product: &str, command: &[&str]) -> Output {
        self.command(agent, product, command)
            .output()
            .expect("run the example wrapper")
    }
}

/// The parent pid of process `pid`.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

async fn wrapper_end_to_end(wrapper: Wrapper) {
    let rates = Rates::unique();
    let mut server = flex_server(POLICY, Some(&rates), 500).await;
    server
        .ok(
            reqwest::Method::PUT,
            "/default-assignments",
            Some(json!({"mode": "deny", "products": ["maya"]})),
        )
        .await;
    let agent = Agent::start(&server, "").await;
    agent.rate_sheet_known().await;

    // Granted: the product runs and its exit code comes back; charged once.
    let marker = agent.dir.path().join("ran");
    let script = format!("touch '{}'; exit 3", marker.display());
    let out = wrapper.run(&agent, "autocad", &["sh", "-c", &script]);
    assert_eq!(out.status.code(), Some(3), "{wrapper:?}: {out:?}");
    assert!(marker.exists(), "{wrapper:?}: the product ran");
    let charges = server.charges().await;
    assert_eq!(charges.len(), 1, "{charges:?}");
    assert_eq!(charges[0]["tokens"], AUTOCAD);

    // Reopened inside the window: free.
    let out = wrapper.run(&agent, "autocad", &["true"]);
    assert_eq!(out.status.code(), Some(0), "{wrapper:?}: {out:?}");
    assert_eq!(server.charges().await.len(), 1, "reopening is free");
    assert_eq!(server.balance().await, 500 - AUTOCAD);

    // Refused: 77, one line naming Maya, and the product never started.
    let never = agent.dir.path().join("maya-started");
    let touch = format!("touch '{}'", never.display());
    let out = wrapper.run(&agent, "maya", &["sh", "-c", &touch]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(77), "{wrapper:?}: {out:?}");
    assert!(
        !never.exists(),
        "{wrapper:?}: a refused product must not start"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains("Maya not started") && stderr.contains("not_entitled"),
        "{wrapper:?}: {stderr}"
    );
    assert_eq!(server.charges().await.len(), 1, "nothing charged for it");

    // The agent closes the session: the wrapper stops its product.
    let mut running = Running::new(
        wrapper
            .command(&agent, "autocad", &["sleep", "60"])
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the example wrapper"),
    );
    let product = eventually("the wrapper to attach its product", WAIT, || async {
        agent
            .sessions()
            .iter()
            .find(|s| s["product"] == "autocad" && s["origin"] == "wrapper")
            .and_then(|s| s["pid"].as_u64())
            .map(|p| p as u32)
    })
    .await;
    assert_eq!(
        parent_of(product),
        Some(running.pid()),
        "{wrapper:?}: the attached pid is the wrapper's own child"
    );
    server.kill9();
    let status = running
        .wait_exit(WAIT + std::time::Duration::from_secs(10))
        .await;
    let stderr = running.stderr();
    assert_eq!(
        status.code(),
        Some(128 + libc::SIGTERM),
        "{wrapper:?}: the product was stopped gracefully: {stderr}"
    );
    assert!(
        stderr.contains("flex-agent closed AutoCAD"),
        "{wrapper:?}: {stderr}"
    );
    assert!(!alive(product), "{wrapper:?}: the product is gone");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_wrapper_is_charged_once_refused_with_77_and_closed_by_the_agent() {
    wrapper_end_to_end(Wrapper::Python).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_shell_wrapper_is_charged_once_refused_with_77_and_closed_by_the_agent() {
    wrapper_end_to_end(Wrapper::Shell).await;
}
