//! The agent's real local socket: bad lines get an `invalid_request` reply and
//! the daemon goes on serving; identity comes from the kernel, so an account that
//! is not root can neither launch nor charge a job for root (`forbidden`), is
//! itself denied as an unknown Flex user, and cannot end root's session.
//!
//! Acting as another account: `flexctl` runs with uid 65534 (nobody), and for raw
//! socket lines this test binary re-runs itself with that uid as a small client
//! ([`socket_client_helper`]). These tests need root, as the whole agent suite does.

use std::io::{BufRead, BufReader as StdBufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Output};

use flex_e2e::agent::{
    alive, eventually, fake_product, Agent, Rates, Running, SocketConn as Conn, WAIT,
};
use flex_e2e::Server;
use flex_protocol::socket::MAX_LINE;
use flex_protocol::PROTOCOL_VERSION;
use serde_json::{json, Value};

/// nobody: not root, and not a Flex user of the test server.
const NOBODY: u32 = 65534;
/// Set (to the socket path) when this binary runs as the helper client.
const CLIENT_SOCKET: &str = "FLEX_E2E_CLIENT_SOCKET";
/// The request lines the helper client sends, one per line.
const CLIENT_LINES: &str = "FLEX_E2E_CLIENT_LINES";

/// The usual [`setup`](flex_e2e::agent::setup), with the agent's socket
/// reachable by other accounts.
async fn setup() -> (Rates, Server, Agent) {
    let (rates, server, agent) = flex_e2e::agent::setup().await;
    // The harness's temp dir is 0700: let other accounts reach the socket in it
    // (the socket itself is 0666; identity comes from peer credentials).
    std::fs::set_permissions(agent.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    (rates, server, agent)
}

fn assert_invalid(reply: &Value, what: &str) {
    assert_eq!(reply["ok"], false, "{what}: {reply}");
    assert_eq!(reply["error"]["code"], "invalid_request", "{what}: {reply}");
    let message = reply["error"]["message"].as_str().unwrap_or_default();
    assert!(!message.is_empty(), "{what}: {reply}");
}

/// `flexctl ARGS` as uid `uid`.
fn flexctl_as(agent: &Agent, uid: u32, args: &[&str]) -> Output {
    agent
        .flexctl()
        .args(args)
        .uid(uid)
        .gid(uid)
        .output()
        .expect("run flexctl as another uid (these tests run as root)")
}

/// Sends `lines` over the agent's socket from a process running as `uid`
/// (this test binary, re-run as [`socket_client_helper`]); returns the replies.
fn socket_as(agent: &Agent, uid: u32, lines: &[Value]) -> Vec<Value> {
    let exe = std::env::current_exe().unwrap();
    let text: Vec<String> = lines.iter().map(Value::to_string).collect();
    let out = Command::new(exe)
        .args([
            "--exact",
            "socket_client_helper",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CLIENT_SOCKET, &agent.socket)
        .env(CLIENT_LINES, text.join("\n"))
        .uid(uid)
        .gid(uid)
        .output()
        .expect("run the socket client helper as another uid (these tests run as root)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "socket client helper failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let replies: Vec<Value> = stdout
        .lines()
        // libtest prints "test NAME ... " on the line of the first reply.
        .filter_map(|l| l.split_once("reply: ").map(|(_, reply)| reply))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(replies.len(), lines.len(), "{stdout}");
    replies
}

/// Not a test of its own: the client that [`socket_as`] runs as another uid.
/// Sends each line of `$FLEX_E2E_CLIENT_LINES` and prints each reply.
#[test]
#[ignore = "helper: run by the other tests as another uid"]
fn socket_client_helper() {
    let Ok(path) = std::env::var(CLIENT_SOCKET) else {
        return;
    };
    let lines = std::env::var(CLIENT_LINES).unwrap_or_default();
    let stream = std::os::unix::net::UnixStream::connect(&path)
        .unwrap_or_else(|e| panic!("connect to {path}: {e}"));
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut reader = StdBufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    for line in lines.lines() {
        writeln!(writer, "{line}").unwrap();
        let mut reply = String::new();
        reader.read_line(&mut reply).unwrap();
        println!("reply: {}", reply.trim_end());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_lines_get_invalid_request_and_the_daemon_keeps_serving() {
    let (_rates, server, agent) = setup().await;
    let mut conn = Conn::open(&agent.socket).await;

    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("not JSON", b"this is not json".to_vec()),
        ("truncated JSON", br#"{"op":"launch","product":"#.to_vec()),
        ("not an object", b"[1,2,3]".to_vec()),
        ("unknown op", br#"{"op":"format_disk"}"#.to_vec()),
        ("no op", br#"{"product":"autocad"}"#.to_vec()),
        ("launch without product", br#"{"op":"launch"}"#.to_vec()),
        (
            "wrong type",
            br#"{"op":"result","product":"recap-photo","count":"many"}"#.to_vec(),
        ),
        ("invalid UTF-8", vec![b'{', 0xff, 0xfe, b'}']),
        (
            "bad product id",
            br#"{"op":"launch","product":"../../etc/passwd"}"#.to_vec(),
        ),
        (
            "zero results",
            br#"{"op":"result","product":"recap-photo","count":0}"#.to_vec(),
        ),
    ];
    for (what, line) in &bad {
        let reply = conn.ask(line).await;
        assert_invalid(&reply, what);
    }

    // A line over the 64 KiB limit (a launch padded with a huge version) is
    // discarded whole, never acted upon.
    let mut huge = br#"{"op":"launch","product":"autocad","version":""#.to_vec();
    huge.resize(MAX_LINE + 10, b'9');
    huge.extend_from_slice(br#""}"#);
    let reply = conn.ask(&huge).await;
    assert_invalid(&reply, "over-long line");
    let message = reply["error"]["message"].as_str().unwrap();
    assert!(message.contains(&MAX_LINE.to_string()), "{message}");

    // The same connection goes on.
    let hello = conn
        .ask(
            json!({"op":"hello","protocol":PROTOCOL_VERSION})
                .to_string()
                .as_bytes(),
        )
        .await;
    assert_eq!(hello["ok"], true, "{hello}");
    assert_eq!(hello["uid"], 0, "{hello}");
    assert_eq!(hello["account"], "root", "{hello}");
    let status = conn.ask(br#"{"op":"status"}"#).await;
    assert_eq!(status["ok"], true, "{status}");
    assert_eq!(status["sessions"], json!([]), "{status}");
    // So do new connections, and real work.
    assert_eq!(agent.status()["sessions"], json!([]));
    let out = agent.run("autocad", &["true"]);
    assert!(out.status.success(), "{out:?}");
    let charges = server.charges().await;
    assert_eq!(
        charges.len(),
        1,
        "only the real launch was charged: {charges:?}"
    );
    assert_eq!(charges[0]["version"], Value::Null, "{charges:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn another_uid_cannot_act_for_root_and_is_denied_as_itself() {
    let (_rates, server, agent) = setup().await;
    // Somewhere nobody could write, so a product that ran would leave a mark.
    let open = agent.dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let marker = open.join("started");
    let marker_s = marker.to_str().unwrap();

    let hello = socket_as(
        &agent,
        NOBODY,
        &[json!({"op":"hello","protocol":PROTOCOL_VERSION})],
    );
    assert_eq!(hello[0]["uid"], NOBODY, "{hello:?}");
    assert_eq!(hello[0]["account"], "nobody", "{hello:?}");

    let out = flexctl_as(
        &agent,
        NOBODY,
        &[
            "run",
            "--product",
            "autocad",
            "--user",
            "root",
            "--",
            "touch",
            marker_s,
        ],
    );
    assert_eq!(out.status.code(), Some(77), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("forbidden"), "{stderr}");
    assert!(stderr.contains("'root'"), "{stderr}");
    assert!(
        !marker.exists(),
        "a forbidden launch must not start the product"
    );

    let out = flexctl_as(
        &agent,
        NOBODY,
        &[
            "result",
            "--product",
            "recap-photo",
            "--count",
            "120",
            "--user",
            "root",
        ],
    );
    assert_eq!(out.status.code(), Some(77), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("forbidden"), "{stderr}");

    // The same account for itself: nobody@example.com is no Flex user.
    let out = flexctl_as(
        &agent,
        NOBODY,
        &["run", "--product", "autocad", "--", "touch", marker_s],
    );
    assert_eq!(out.status.code(), Some(77), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not_entitled") && stderr.contains("nobody@example.com"),
        "{stderr}"
    );
    assert!(
        !marker.exists(),
        "a denied launch must not start the product"
    );
    let out = flexctl_as(
        &agent,
        NOBODY,
        &[
            "run",
            "--product",
            "autocad",
            "--user",
            "nobody",
            "--",
            "touch",
            marker_s,
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(77),
        "naming oneself is allowed, and denied the same: {out:?}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not_entitled"),
        "{out:?}"
    );

    let charges = server.charges().await;
    assert!(charges.is_empty(), "nothing charged to anyone: {charges:?}");
    assert_eq!(server.balance().await, 500);

    // Root itself may act for another account (and is told that one is unknown).
    let out = agent
        .flexctl()
        .args([
            "run",
            "--product",
            "autocad",
            "--user",
            "nobody",
            "--",
            "true",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(77), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("nobody@example.com"), "{stderr}");
    assert!(server.charges().await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn another_uid_cannot_end_or_see_roots_sessions() {
    let (rates, server, agent) = setup().await;
    let mut wrapper = Running::wrapper(&agent, "autocad");
    let exe = fake_product(agent.dir.path(), &rates.exe("inventor"));
    let watched = Running::product(&exe);
    let (wrapped_id, watched_id) = eventually("root's two sessions", WAIT, || async {
        let sessions = agent.sessions();
        let find = |origin: &str| {
            sessions
                .iter()
                .find(|s| s["origin"] == origin && s["pid"].is_u64())
                .and_then(|s| s["session"].as_str().map(String::from))
        };
        Some((find("wrapper")?, find("watcher")?))
    })
    .await;

    let replies = socket_as(
        &agent,
        NOBODY,
        &[
            json!({"op":"exit","session":wrapped_id}),
            json!({"op":"exit","session":watched_id}),
            json!({"op":"status"}),
        ],
    );
    for reply in &replies[..2] {
        assert_eq!(reply["ok"], false, "{replies:?}");
        assert_eq!(reply["error"]["code"], "forbidden", "{replies:?}");
    }
    assert_eq!(replies[2]["ok"], true, "{replies:?}");
    assert_eq!(
        replies[2]["sessions"],
        json!([]),
        "root's sessions are not nobody's business"
    );

    // Not even root ends a watched session while its process runs: `exit` is
    // answered and changes nothing; the session ends when the process exits
    // (else the product would run on unaccounted).
    let mut conn = Conn::open(&agent.socket).await;
    let reply = conn
        .ask(
            json!({"op":"exit","session":watched_id})
                .to_string()
                .as_bytes(),
        )
        .await;
    assert_eq!(reply["ok"], true, "{reply}");

    // Root's sessions and products go on.
    let status = agent.status();
    let sessions = status["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2, "{status}");
    assert!(alive(watched.pid()));
    assert!(wrapper.exited().is_none(), "the wrapper still runs");
    let charges = server.charges().await;
    assert_eq!(charges.len(), 2, "{charges:?}");
}
