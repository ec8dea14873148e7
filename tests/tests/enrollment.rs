//! Enrollment that never wastes a token (issue 18, item 1): the server's answer
//! to an enrollment is lost on the way (a proxy slower than the agent's
//! request timeout, the service stopped while the request is in flight), after
//! the server has made the device and spent a use of the token. The agent asks
//! again with the enrollment request id it journaled before sending, and the
//! server answers with the same device and credential: one device, one use,
//! and an agent that works.
//!
//! Also `flex-agent configure` moving an enrolled agent (item 3): to the same
//! server under a new name, or to another server with a token from it.
//!
//! The real `flex-agent` and `flex-server`, with [`Proxy`] between them. The
//! Windows service's side (`sc stop` mid-request) is in `windows_agent.rs`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use flex_e2e::agent::{flex_server, Agent, SHORT_POLICY, WAIT};
use flex_e2e::proxy::Proxy;
use flex_e2e::{bin, Server};
use reqwest::Method as M;
use serde_json::{json, Value};

/// Longer than the agent's request timeout (30 s) plus its first retry (5 s).
const LATE: Duration = Duration::from_secs(90);

/// A one-use enrollment token.
async fn one_use_token(server: &Server) -> String {
    server
        .ok(M::POST, "/enrollment-tokens", Some(json!({"uses": 1})))
        .await["token"]
        .as_str()
        .expect("token")
        .to_string()
}

/// The server's devices, and the uses left on its only enrollment token.
async fn devices_and_uses_left(server: &Server) -> (Vec<Value>, u64) {
    let devices = server.ok(M::GET, "/devices", None).await["devices"]
        .as_array()
        .expect("devices")
        .clone();
    let keys = server.ok(M::GET, "/enrollment-tokens", None).await;
    let uses_left = keys["enrollment_tokens"][0]["uses_left"]
        .as_u64()
        .expect("uses_left");
    (devices, uses_left)
}

/// What the agent, enrolled in the end, must show: the one device the server
/// made, with the credential the server issued for it (its first heartbeat
/// passes), and the token's one use spent once.
async fn enrolled_once(server: &Server, agent: &Agent) {
    agent.rate_sheet_known().await;
    let status = agent.status();
    let (devices, uses_left) = devices_and_uses_left(server).await;
    assert_eq!(devices.len(), 1, "one device, not an orphan: {devices:?}");
    assert_eq!(status["device_id"], devices[0]["id"], "{status}");
    assert_eq!(uses_left, 0);
    assert!(
        devices[0]["last_seen"].is_string(),
        "the server accepted the device's credential: {devices:?}"
    );
    assert!(
        !agent.token_file().exists(),
        "the token file is removed once used"
    );
    let log = agent.log();
    assert!(log.contains("earlier attempt"), "{log}");
}

#[tokio::test]
async fn enroll_answer_later_than_the_agent_timeout_wastes_no_token() {
    let server = flex_server(SHORT_POLICY, None, 100).await;
    let token = one_use_token(&server).await;
    let mut proxy = Proxy::holding_enroll_answers(&server.url, 1);
    let mut agent = Agent::configured_for(&proxy.url, "");
    agent.put_token_file(&token);

    // The first answer never comes: the agent gives up after its timeout and
    // retries; the retry's answer comes through.
    let agent = tokio::task::spawn_blocking(move || {
        agent.spawn();
        agent
    });
    proxy.held(1, WAIT).await;
    let (devices, uses_left) = devices_and_uses_left(&server).await;
    assert_eq!(
        (devices.len(), uses_left),
        (1, 0),
        "the server made the device and spent the token before the answer was lost"
    );
    let agent = tokio::time::timeout(LATE, agent)
        .await
        .expect("the agent enrolls after its retry")
        .expect("the agent's start");
    assert_eq!(proxy.held_now(), 1);
    enrolled_once(&server, &agent).await;
}

#[tokio::test]
async fn agent_stopped_while_its_enroll_request_is_in_flight_wastes_no_token() {
    let server = flex_server(SHORT_POLICY, None, 100).await;
    let token = one_use_token(&server).await;
    let mut proxy = Proxy::holding_enroll_answers(&server.url, 1);
    let mut agent = Agent::configured_for(&proxy.url, "");
    agent.put_token_file(&token);

    // Started by hand, stopped (SIGTERM, as systemctl stop would) while the
    // server's answer is on its way.
    let mut first = Command::new(bin("flex-agent"))
        .arg("--config")
        .arg(&agent.config)
        .env("FLEX_AGENT_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start flex-agent");
    proxy.held(1, WAIT).await;
    // SAFETY: kill(2) with plain integers.
    unsafe {
        libc::kill(first.id() as i32, libc::SIGTERM);
    }
    assert!(first.wait().expect("wait for flex-agent").success());
    let mut line = String::new();
    BufReader::new(first.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read its output");
    assert!(line.is_empty(), "it never got ready: {line}");
    assert_eq!(devices_and_uses_left(&server).await.0.len(), 1);

    // Started again: the same request, the same device.
    let agent = tokio::task::spawn_blocking(move || {
        agent.spawn();
        agent
    })
    .await
    .expect("the agent's start");
    enrolled_once(&server, &agent).await;
}

/// `flex-agent configure` as IT runs it (the MSI runs the same on Windows).
fn configure(agent: &Agent, args: &[&str]) -> std::process::Output {
    let out = Command::new(bin("flex-agent"))
        .arg("configure")
        .arg("--config")
        .arg(&agent.config)
        .args(args)
        .output()
        .expect("run flex-agent configure");
    assert!(
        out.status.success(),
        "flex-agent configure {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Issue 18, item 3, the fleet's server changed: a new address for the same
/// server (the URL alone) keeps the enrollment; another server, with a token
/// from it, gets a device there at the agent's next start.
#[tokio::test]
async fn a_server_given_again_keeps_the_enrollment_or_moves_it_with_a_token() {
    let old = flex_server(SHORT_POLICY, None, 100).await;
    let mut agent = Agent::start(&old, "").await;
    let device = agent.status()["device_id"].clone();
    agent.stop();

    let renamed = old.url.replace("127.0.0.1", "localhost");
    configure(&agent, &["--server-url", &renamed]);
    assert_eq!(agent.server_url(), renamed);
    agent.spawn();
    agent.rate_sheet_known().await;
    assert_eq!(
        agent.status()["device_id"],
        device,
        "the same server: still enrolled"
    );
    agent.stop();

    let new = flex_server(SHORT_POLICY, None, 100).await;
    let token = one_use_token(&new).await;
    let file = agent.dir.path().join("new-server-token.txt");
    std::fs::write(&file, &token).unwrap();
    let said = configure(
        &agent,
        &[
            "--server-url",
            &new.url,
            "--token-file",
            &file.display().to_string(),
        ],
    );
    let said = String::from_utf8_lossy(&said.stdout);
    assert!(said.contains("placed the enrollment token"), "{said}");
    agent.spawn();
    agent.rate_sheet_known().await;
    let status = agent.status();
    let (devices, uses_left) = devices_and_uses_left(&new).await;
    assert_eq!((devices.len(), uses_left), (1, 0), "{devices:?}");
    assert_eq!(status["device_id"], devices[0]["id"], "{status}");
    assert_ne!(status["device_id"], device);
    assert!(!agent.token_file().exists());
}
