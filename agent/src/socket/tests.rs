//! Socket server behaviour: framing limits, errors, identity, limits.

use std::io::{BufRead, BufReader as StdBufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::sync::Arc;
use std::time::Duration;

use flex_protocol::socket::{parse_reply, Event, HelloReply, LaunchReply, MAX_LINE};
use flex_protocol::PROTOCOL_VERSION;
use serde_json::Value;
use tokio::io::{AsyncWriteExt, DuplexStream};
use tokio::net::UnixStream;

use super::fake::{start_fake_agent, FakeHandler};
use super::*;

fn alice() -> Peer {
    Peer {
        account: crate::account::AccountId::from_uid(1000),
        name: "alice".into(),
        admin: false,
        pid: Some(1234),
        conn_id: 1,
    }
}

/// A client end of a duplex pipe served by `serve_connection` for `peer`.
struct Client {
    reader: LineReader<tokio::io::ReadHalf<DuplexStream>>,
    writer: tokio::io::WriteHalf<DuplexStream>,
}

impl Client {
    fn start(peer: Peer, handler: Arc<FakeHandler>, config: SocketConfig) -> Client {
        let (client, server) = tokio::io::duplex(256 * 1024);
        tokio::spawn(async move { serve_connection(server, peer, handler, &config).await });
        let (r, w) = tokio::io::split(client);
        Client {
            reader: LineReader::new(r, MAX_LINE),
            writer: w,
        }
    }

    async fn send(&mut self, line: &str) {
        write_line(&mut self.writer, line).await.unwrap();
    }

    async fn recv(&mut self) -> Option<Value> {
        match self.reader.next().await.unwrap() {
            LineRead::Line => Some(serde_json::from_slice(self.reader.line()).unwrap()),
            LineRead::Eof => None,
            LineRead::TooLong { len } => panic!("server sent a {len}-byte line"),
        }
    }

    async fn ask(&mut self, line: &str) -> Value {
        self.send(line).await;
        self.recv().await.expect("connection closed before a reply")
    }
}

fn error_code(reply: &Value) -> &str {
    assert_eq!(reply["ok"], false, "expected an error, got {reply}");
    reply["error"]["code"].as_str().unwrap()
}

fn config() -> SocketConfig {
    SocketConfig::new("/nonexistent/agent.sock")
}

#[tokio::test]
async fn oversize_line_is_rejected_and_the_next_line_served() {
    let (handler, _seen) = FakeHandler::new();
    let mut c = Client::start(alice(), handler, config());
    let huge = format!(
        "{{\"op\":\"status\",\"pad\":\"{}\"}}\n",
        "x".repeat(MAX_LINE)
    );
    c.writer.write_all(huge.as_bytes()).await.unwrap();
    let reply = c.recv().await.unwrap();
    assert_eq!(error_code(&reply), "invalid_request");
    let message = reply["error"]["message"].as_str().unwrap();
    assert!(message.contains("65536"), "{message}");

    let hello = c.ask(r#"{"op":"hello","protocol":1}"#).await;
    assert_eq!(hello["ok"], true, "{hello}");
    assert_eq!(hello["account"], "alice");
}

#[tokio::test]
async fn malformed_json_names_the_problem() {
    let (handler, _seen) = FakeHandler::new();
    let mut c = Client::start(alice(), handler, config());
    let reply = c.ask("{not json").await;
    assert_eq!(error_code(&reply), "invalid_request");
    assert!(reply["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("malformed request: key must be a string"));

    let reply = c.ask(r#"{"op":"explode"}"#).await;
    assert_eq!(error_code(&reply), "invalid_request");
    assert!(reply["error"]["message"]
        .as_str()
        .unwrap()
        .contains("unknown variant `explode`"));

    let reply = c.ask(r#"{"op":"launch"}"#).await;
    assert!(reply["error"]["message"]
        .as_str()
        .unwrap()
        .contains("missing field `product`"));

    // Still serving.
    assert_eq!(c.ask(r#"{"op":"status"}"#).await["ok"], true);
}

/// One rule for product ids, the rate sheet's: a line naming a product the
/// agent once took (`AutoCAD`, `acad.exe`, up to 128 of `[A-Za-z0-9-_.:]`)
/// is refused as it is read, naming the value, and reaches no handler.
#[tokio::test]
async fn a_product_id_off_the_rate_sheets_rule_is_refused_as_the_line_is_read() {
    let (handler, mut seen) = FakeHandler::new();
    let mut c = Client::start(alice(), handler, config());
    for (line, value) in [
        (
            r#"{"op":"launch","product":"AutoCAD"}"#,
            "product 'AutoCAD'",
        ),
        (
            r#"{"op":"launch","product":"acad.exe"}"#,
            "product 'acad.exe'",
        ),
        (
            r#"{"op":"result","product":"ReCap:Photo","count":3}"#,
            "product 'ReCap:Photo'",
        ),
        (
            r#"{"op":"exit","session":"two words"}"#,
            "session id 'two words'",
        ),
        (r#"{"op":"attach","session":"","pid":1}"#, "session id ''"),
    ] {
        let reply = c.ask(line).await;
        assert_eq!(error_code(&reply), "invalid_request", "{line}: {reply}");
        let message = reply["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with("malformed request: ") && message.contains(value),
            "{line}: {message}"
        );
    }
    assert!(
        seen.try_recv().is_err(),
        "a refused line reached the handler"
    );
    // A product id of the rule is served.
    let reply = c.ask(r#"{"op":"launch","product":"autocad"}"#).await;
    assert_eq!(reply["ok"], true, "{reply}");
}

#[tokio::test]
async fn hello_checks_the_protocol_version() {
    let (handler, _seen) = FakeHandler::new();
    let mut c = Client::start(alice(), handler, config());
    let reply = c
        .ask(&format!(
            r#"{{"op":"hello","protocol":{}}}"#,
            PROTOCOL_VERSION + 1
        ))
        .await;
    assert_eq!(error_code(&reply), "unsupported_protocol");
    let ok: HelloReply = parse_reply(
        &serde_json::to_string(&c.ask(r#"{"op":"hello","protocol":1,"client":"t"}"#).await)
            .unwrap(),
    )
    .unwrap()
    .unwrap();
    assert_eq!(ok.uid, 1000);
    assert_eq!(ok.protocol, PROTOCOL_VERSION);
}

#[tokio::test]
async fn non_root_cannot_act_as_another_user() {
    let (handler, mut seen) = FakeHandler::new();
    let mut c = Client::start(alice(), handler.clone(), config());
    for line in [
        r#"{"op":"launch","product":"autocad","user":"bob"}"#,
        r#"{"op":"result","product":"recap-photo","count":85,"user":"bob"}"#,
    ] {
        assert_eq!(error_code(&c.ask(line).await), "forbidden");
    }
    // Nor hand the agent someone else's process to stop later.
    let reply = c.ask(r#"{"op":"attach","session":"s1","pid":1}"#).await;
    assert_eq!(error_code(&reply), "forbidden");
    assert!(reply["error"]["message"]
        .as_str()
        .unwrap()
        .contains("process 1 does not belong to 'alice'"));
    assert!(
        seen.try_recv().is_err(),
        "forbidden requests reached the handler"
    );

    // Naming yourself is fine.
    let reply = c
        .ask(r#"{"op":"launch","product":"autocad","user":"alice"}"#)
        .await;
    assert_eq!(reply["ok"], true, "{reply}");

    // Root may act for anyone.
    let root = Peer {
        account: crate::account::AccountId::from_uid(0),
        name: "root".into(),
        admin: true,
        ..alice()
    };
    let mut c = Client::start(root, handler, config());
    let reply = c
        .ask(r#"{"op":"result","product":"recap-photo","count":85,"user":"nobody"}"#)
        .await;
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["tokens_charged"], 2);
    // An account that does not exist is named.
    let reply = c
        .ask(r#"{"op":"result","product":"recap-photo","count":85,"user":"no-such-account"}"#)
        .await;
    assert_eq!(error_code(&reply), "unknown_user");
}

#[tokio::test(start_paused = true)]
async fn idle_connections_close_but_streams_stay_open() {
    let (handler, _seen) = FakeHandler::new();
    let mut limits = config();
    limits.idle_timeout = Duration::from_secs(5);

    let mut idle = Client::start(alice(), handler.clone(), limits.clone());
    // Time is paused and advances only when every task waits: the idle timer fires.
    assert_eq!(idle.recv().await, None);

    // Blank lines are not requests: they do not keep a connection open.
    let mut chatty = Client::start(alice(), handler.clone(), limits.clone());
    for _ in 0..30 {
        if write_line(&mut chatty.writer, "").await.is_err() {
            break; // closed for idleness
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(
        chatty.recv().await,
        None,
        "blank lines kept the connection open"
    );

    let mut notifier = Client::start(alice(), handler.clone(), limits);
    assert_eq!(notifier.ask(r#"{"op":"subscribe"}"#).await["ok"], true);
    tokio::time::sleep(Duration::from_secs(60)).await;
    handler.publish(Event::LowBalance { balance: 12 }).await;
    let event = notifier
        .recv()
        .await
        .expect("subscriber was dropped as idle");
    assert_eq!(event["event"], "low_balance");
    assert_eq!(event["balance"], 12);
}

#[tokio::test]
async fn launch_stream_carries_the_close_event() {
    let (handler, _seen) = FakeHandler::new();
    let mut c = Client::start(alice(), handler.clone(), config());
    let reply = c.ask(r#"{"op":"launch","product":"autocad"}"#).await;
    let grant: LaunchReply = parse_reply(&reply.to_string()).unwrap().unwrap();
    // Requests still work on a connection with a stream.
    let mut product = std::process::Command::new("sleep")
        .arg("30")
        .uid(1000)
        .gid(1000)
        .spawn()
        .unwrap();
    let attach = c
        .ask(&format!(
            r#"{{"op":"attach","session":"{}","pid":{}}}"#,
            grant.session,
            product.id()
        ))
        .await;
    product.kill().unwrap();
    product.wait().unwrap();
    assert_eq!(attach["ok"], true, "{attach}");
    handler.close_session(grant.session.as_str()).await;
    let event = c.recv().await.unwrap();
    assert_eq!(event["event"], "product_closed");
    assert_eq!(event["reason"], "offline");
}

/// Connects from a thread running as `nobody`: raw setresuid changes only the
/// calling thread's credentials, which is what the kernel records at connect().
fn connect_as_nobody(path: std::path::PathBuf, lines: Vec<String>) -> Vec<Value> {
    std::thread::spawn(move || {
        // SAFETY: plain syscalls on this thread only; no memory is shared.
        unsafe {
            assert_eq!(
                libc::syscall(libc::SYS_setresgid, 65534, 65534, 65534),
                0,
                "setresgid: tests must run as root"
            );
            assert_eq!(
                libc::syscall(libc::SYS_setresuid, 65534, 65534, 65534),
                0,
                "setresuid: tests must run as root"
            );
        }
        let stream = std::os::unix::net::UnixStream::connect(&path).expect("nobody cannot connect");
        let mut reader = StdBufReader::new(stream.try_clone().unwrap());
        let mut writer = stream;
        lines
            .iter()
            .map(|line| {
                writeln!(writer, "{line}").unwrap();
                let mut reply = String::new();
                reader.read_line(&mut reply).unwrap();
                serde_json::from_str(&reply).unwrap()
            })
            .collect()
    })
    .join()
    .unwrap()
}

#[tokio::test]
async fn peer_credentials_come_from_the_kernel() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (handler, mut seen) = FakeHandler::new();
    let agent = start_fake_agent(dir.path(), handler);
    let path = agent.path.clone();

    // As ourselves (root in the test environment).
    let mut me = UnixStream::connect(&path).await.unwrap();
    me.write_all(b"{\"op\":\"hello\",\"protocol\":1}\n")
        .await
        .unwrap();
    let (r, _w) = me.split();
    let mut r = LineReader::new(r, MAX_LINE);
    assert_eq!(r.next().await.unwrap(), LineRead::Line);
    let hello: HelloReply = parse_reply(std::str::from_utf8(r.line()).unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(hello.uid, nix::unistd::getuid().as_raw());
    assert_eq!(hello.account, crate::account::name_of_uid(hello.uid));

    // As another uid over a real socket: identity from SO_PEERCRED, and that
    // user cannot launch as root, but can launch as themselves.
    let replies = tokio::task::spawn_blocking(move || {
        connect_as_nobody(
            path,
            vec![
                r#"{"op":"hello","protocol":1}"#.into(),
                r#"{"op":"launch","product":"autocad","user":"root"}"#.into(),
                r#"{"op":"launch","product":"autocad"}"#.into(),
            ],
        )
    })
    .await
    .unwrap();
    let nobody = crate::account::name_of_uid(65534);
    assert_eq!(replies[0]["uid"], 65534);
    assert_eq!(replies[0]["account"], nobody.as_str());
    assert_eq!(error_code(&replies[1]), "forbidden");
    assert_eq!(replies[2]["ok"], true);
    let (peer, req) = seen.recv().await.unwrap();
    assert_eq!(peer.account, crate::account::AccountId::from_uid(65534));
    assert!(!peer.admin);
    assert!(matches!(req, Request::Launch { user: Some(u), .. } if u == nobody));
}

/// Holds `n` connections as `nobody` (each confirmed with a `hello`), then
/// opens one more and returns the first line it gets, if any.
fn nobody_holds(
    path: std::path::PathBuf,
    n: usize,
) -> (Vec<std::os::unix::net::UnixStream>, Option<Value>) {
    std::thread::spawn(move || {
        // SAFETY: plain syscalls on this thread only; no memory is shared.
        unsafe {
            assert_eq!(libc::syscall(libc::SYS_setresgid, 65534, 65534, 65534), 0);
            assert_eq!(libc::syscall(libc::SYS_setresuid, 65534, 65534, 65534), 0);
        }
        let mut held = Vec::new();
        for _ in 0..n {
            let mut s = std::os::unix::net::UnixStream::connect(&path).unwrap();
            writeln!(s, r#"{{"op":"hello","protocol":1}}"#).unwrap();
            let mut line = String::new();
            StdBufReader::new(s.try_clone().unwrap())
                .read_line(&mut line)
                .unwrap();
            assert!(line.contains("\"ok\":true"), "{line}");
            held.push(s);
        }
        let extra = std::os::unix::net::UnixStream::connect(&path).unwrap();
        let mut line = String::new();
        StdBufReader::new(extra).read_line(&mut line).unwrap();
        (held, serde_json::from_str(&line).ok())
    })
    .join()
    .unwrap()
}

#[tokio::test]
async fn max_connections_per_account_over_a_real_socket() {
    // Regression: one uid could hold all 256 connections, and everyone else's
    // flexctl run then failed.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (handler, _seen) = FakeHandler::new();
    let agent = start_fake_agent(dir.path(), handler);
    let path = agent.path.clone();
    let (held, refused) = tokio::task::spawn_blocking(move || {
        nobody_holds(path, crate::limits::MAX_CONNECTIONS_PER_ACCOUNT)
    })
    .await
    .unwrap();
    let refused = refused.expect("the extra connection was told why");
    assert_eq!(error_code(&refused), "limit_exceeded");
    assert!(refused["error"]["message"]
        .as_str()
        .unwrap()
        .contains("limit"));
    // Root (and any other account) still gets in.
    let mut root = UnixStream::connect(&agent.path).await.unwrap();
    root.write_all(b"{\"op\":\"hello\",\"protocol\":1}\n")
        .await
        .unwrap();
    let (r, _w) = root.split();
    let mut r = LineReader::new(r, MAX_LINE);
    assert_eq!(r.next().await.unwrap(), LineRead::Line);
    drop(held);
    agent.stop().await;
}

#[tokio::test]
async fn shutdown_removes_the_socket_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.sock");
    let server = SocketServer::bind(SocketConfig::new(&path)).unwrap();
    assert_eq!(server.origin(), ListenOrigin::Bound);
    let (handler, _seen) = FakeHandler::new();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(handler, async move {
        let _ = stopped.await;
    }));
    assert!(path.exists());
    stop.send(()).unwrap();
    task.await.unwrap();
    assert!(!path.exists());
}
