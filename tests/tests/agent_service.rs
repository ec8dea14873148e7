//! The agent as systemd runs it (issue 9): socket activation through
//! `systemd-socket-activate` (a client that connects before the agent is ready
//! is served), watchdog pings from the driver loop, and self-enrollment that
//! waits for an unreachable server instead of failing the unit.

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use flex_e2e::agent::{Agent, WAIT};
use flex_e2e::{bin, Server};
use reqwest::Method as M;
use serde_json::json;

/// A stand-in for systemd's notification socket: the datagrams the agent sends.
struct NotifySocket {
    sock: UnixDatagram,
    path: std::path::PathBuf,
}

impl NotifySocket {
    fn bind(dir: &std::path::Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        NotifySocket { sock, path }
    }

    /// Messages received until `done` says enough, or `timeout`.
    fn collect(&self, timeout: Duration, done: impl Fn(&[String]) -> bool) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline && !done(&got) {
            if let Ok(n) = self.sock.recv(&mut buf) {
                got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        got
    }
}

#[tokio::test]
async fn a_client_that_connects_before_the_socket_activated_agent_is_ready_is_served() {
    let server = Server::start_test_clock();
    let agent = Agent::enrolled(&server, "").await;
    let activated = agent.dir.path().join("activated.sock");
    let mut activate = Command::new("systemd-socket-activate")
        .arg("-l")
        .arg(&activated)
        .args(["-E", "FLEX_AGENT_LOG=info"])
        .arg(bin("flex-agent"))
        .arg("--config")
        .arg(&agent.config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run systemd-socket-activate (Debian package systemd)");
    // It binds, says so, then waits for the first connection to start the agent.
    let mut stderr = BufReader::new(activate.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    assert!(line.contains("Listening on"), "{line}");
    // This client's connection is what starts the agent: it waits in the
    // socket's queue while the agent restores its journal, and is then served.
    let out = Command::new(bin("flexctl"))
        .arg("--socket")
        .arg(&activated)
        .args(["status", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(status["device_id"].is_string(), "{status}");
    // The agent used the socket it was given, not its own socket_path.
    assert!(!agent.socket_path().exists());
    let mut stdout = BufReader::new(activate.stdout.take().unwrap());
    let mut ready = String::new();
    stdout.read_line(&mut ready).unwrap();
    assert!(ready.starts_with("flex-agent listening on"), "{ready}");
    // Stopped, it leaves the socket to its owner.
    // SAFETY: kill(2) with plain integers.
    unsafe {
        libc::kill(activate.id() as i32, libc::SIGTERM);
    }
    let status = activate.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(
        activated.exists(),
        "the activated socket is not the agent's to remove"
    );
}

#[tokio::test]
async fn the_driver_loop_pings_the_watchdog() {
    let server = Server::start_test_clock();
    let mut agent = Agent::enrolled(&server, "").await;
    let notify = NotifySocket::bind(agent.dir.path());
    agent
        .env
        .push(("NOTIFY_SOCKET".into(), notify.path.display().to_string()));
    // Half of 400 ms: a ping every 200 ms.
    agent.env.push(("WATCHDOG_USEC".into(), "400000".into()));
    agent.spawn();
    let got = notify.collect(WAIT, |m| {
        m.iter().filter(|s| s.contains("WATCHDOG=1")).count() >= 3
    });
    assert!(got.iter().any(|m| m.contains("READY=1")), "{got:?}");
    assert!(
        got.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 3,
        "{got:?}"
    );
}

#[tokio::test]
async fn self_enrollment_waits_for_an_unreachable_server() {
    let mut server = Server::start_test_clock();
    let token = server
        .ok(M::POST, "/enrollment-tokens", Some(json!({})))
        .await["token"]
        .as_str()
        .unwrap()
        .to_string();
    let mut agent = Agent::configured(&server, "");
    agent.put_token_file(&token);
    let notify = NotifySocket::bind(agent.dir.path());
    agent
        .env
        .push(("NOTIFY_SOCKET".into(), notify.path.display().to_string()));
    server.kill9();

    // Started while the server is down: it does not exit, it says why it waits.
    let mut child = Command::new(bin("flex-agent"))
        .arg("--config")
        .arg(&agent.config)
        .env("NOTIFY_SOCKET", &notify.path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let got = notify.collect(WAIT, |m| m.iter().any(|s| s.contains("waiting to enroll")));
    assert!(
        got.iter()
            .any(|m| m.contains("READY=1") && m.contains("STATUS=waiting to enroll")),
        "{got:?}"
    );
    assert!(child.try_wait().unwrap().is_none(), "still running");
    assert!(
        agent.token_file().exists(),
        "the token is kept until it is used"
    );

    // The server comes back (same port, same database): the next attempt enrolls.
    server.restart();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("flex-agent listening on"), "{line}");
    assert!(!agent.token_file().exists());
    // SAFETY: kill(2) with plain integers.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    assert!(child.wait().unwrap().success());
}

#[tokio::test]
async fn socket_activated_but_not_enrolled_answers_the_waiting_client_with_why() {
    let server = Server::start_test_clock();
    let agent = Agent::configured(&server, "");
    let activated = agent.dir.path().join("activated.sock");
    let mut activate = Command::new("systemd-socket-activate")
        .arg("-l")
        .arg(&activated)
        .arg(bin("flex-agent"))
        .arg("--config")
        .arg(&agent.config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run systemd-socket-activate");
    let mut stderr = BufReader::new(activate.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    assert!(line.contains("Listening on"), "{line}");
    let out = Command::new(bin("flexctl"))
        .arg("--socket")
        .arg(&activated)
        .arg("status")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cannot start")
            && err.contains("not enrolled")
            && err.contains("enroll-token"),
        "{err}"
    );
    // The agent exited 78 (EX_CONFIG): systemd does not restart it for that.
    assert_eq!(activate.wait().unwrap().code(), Some(78));
}
