//! Fleet deployment (issue 9): enrollment keys for many agents, self-enrollment
//! from a token file, documented exit codes, and revoked devices.

use std::os::unix::process::ExitStatusExt;
use std::process::Command;

use flex_e2e::agent::{
    eventually, fake_product, flex_server, Agent, Rates, Running, SHORT_POLICY, WAIT,
};
use flex_e2e::{bin, Server, ServerOpts, ADMIN_TOKEN};
use reqwest::Method as M;
use serde_json::{json, Value};

/// `flex-admin --server URL ARGS... --json`, which must succeed.
fn admin_json(server: &Server, args: &[&str]) -> Value {
    let out = Command::new(bin("flex-admin"))
        .args(["--server", &server.url, "--json"])
        .args(args)
        .env("FLEX_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .expect("run flex-admin");
    assert!(
        out.status.success(),
        "flex-admin {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("flex-admin --json prints JSON")
}

#[tokio::test]
async fn a_key_with_three_uses_enrolls_three_agents_and_refuses_the_fourth() {
    let server = flex_server(SHORT_POLICY, Some(&Rates::unique()), 100).await;
    let key = admin_json(
        &server,
        &[
            "enroll-token",
            "--uses",
            "3",
            "--ttl",
            "30d",
            "--note",
            "lab",
        ],
    );
    let token = key["token"].as_str().unwrap().to_string();
    assert_eq!(
        (key["uses"].as_u64(), key["uses_left"].as_u64()),
        (Some(3), Some(3))
    );

    // Two agents enroll themselves at start from the token file, which goes away.
    let mut agents = Vec::new();
    for _ in 0..2 {
        let mut a = Agent::configured(&server, "");
        a.put_token_file(&token);
        a.spawn();
        assert!(
            !a.token_file().exists(),
            "the token file is deleted once used"
        );
        assert!(a.status()["device_id"].is_string());
        agents.push(a);
    }
    // A third with `flex-agent enroll --token-file`.
    let third = Agent::configured(&server, "");
    third.put_token_file(&token);
    let out = Command::new(bin("flex-agent"))
        .args(["enroll", "--config"])
        .arg(&third.config)
        .arg("--token-file")
        .arg(third.token_file())
        .env_remove("FLEX_ENROLL_TOKEN")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The fourth is refused, with the documented exit code and the reason.
    let fourth = Agent::configured(&server, "");
    let out = fourth.enroll_command(&token).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "token refused: {stderr}");
    assert!(
        stderr.contains("enrolled 3 device(s), its limit")
            && stderr.contains("flex-admin enroll-token")
            && stderr.matches("new one").count() == 1,
        "{stderr}"
    );
    // ... and so is the daemon starting with it: 78, no restart loop.
    let mut fourth = fourth;
    fourth.put_token_file(&token);
    let status = fourth.try_spawn().unwrap_err();
    assert_eq!(status.code(), Some(78), "{}", fourth.log());
    assert!(fourth.log().contains("its limit"), "{}", fourth.log());

    let list = admin_json(&server, &["enroll-token", "list"]);
    let k = &list["enrollment_tokens"][0];
    assert_eq!(
        (k["uses_left"].as_u64(), k["state"].as_str()),
        (Some(0), Some("used_up"))
    );
    assert_eq!(k["note"], "lab");
    assert!(
        !list.to_string().contains(&token),
        "a listed key never shows its secret"
    );
    let devices = admin_json(&server, &["devices", "list"]);
    let devices = devices["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 3);
    for d in devices {
        assert_eq!(d["platform"], "linux");
        assert_eq!(d["agent_version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(d["enrollment_token"], k["id"]);
        assert_eq!(d["revoked"], false);
    }
}

#[tokio::test]
async fn not_enrolled_and_no_token_exits_78_with_the_fix() {
    let server = Server::start_test_clock();
    let mut agent = Agent::configured(&server, "");
    let status = agent.try_spawn().unwrap_err();
    assert_eq!(status.code(), Some(78));
    let log = agent.log();
    assert!(
        log.contains("not enrolled")
            && log.contains(&agent.token_file().display().to_string())
            && log.contains("FLEX_ENROLL_TOKEN"),
        "{log}"
    );
    // The variable works as well as the file.
    let token = server
        .ok(M::POST, "/enrollment-tokens", Some(json!({})))
        .await["token"]
        .as_str()
        .unwrap()
        .to_string();
    agent.env.push(("FLEX_ENROLL_TOKEN".into(), token));
    agent.spawn();
    assert!(agent.status()["device_id"].is_string());
}

#[tokio::test]
async fn enroll_exit_codes_tell_deployment_tools_what_happened() {
    let server = Server::start_test_clock();
    server.set_time("2026-11-02T08:00:00Z").await;
    let agent = Agent::configured(&server, "");
    let new_key = |ttl: &'static str| {
        let server = &server;
        async move {
            server
                .ok(M::POST, "/enrollment-tokens", Some(json!({ "ttl": ttl })))
                .await["token"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    let code = |mut cmd: Command| {
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    // Expired: 7.
    let expiring = new_key("1h").await;
    server.set_time("2026-11-02T10:00:00Z").await;
    let (c, err) = code(agent.enroll_command(&expiring));
    assert_eq!(c, Some(7), "{err}");
    assert!(err.contains("expired at 2026-11-02T09:00:00"), "{err}");

    // Unknown: 6; a good one: 0; again: 3, nothing changed.
    let (c, err) = code(agent.enroll_command("fet_not-a-real-token"));
    assert_eq!(c, Some(6), "{err}");
    let good = new_key("1d").await;
    let (c, err) = code(agent.enroll_command(&good));
    assert_eq!(c, Some(0), "{err}");
    let second = new_key("1d").await;
    let (c, err) = code(agent.enroll_command(&second));
    assert_eq!(c, Some(3), "{err}");
    assert!(
        err.contains("already enrolled") && err.contains("--force"),
        "{err}"
    );
    let keys = server.ok(M::GET, "/enrollment-tokens", None).await;
    assert_eq!(
        keys["enrollment_tokens"][0]["uses_left"], 1,
        "the token was not used"
    );
    let mut force = agent.enroll_command(&second);
    force.arg("--force");
    assert_eq!(code(force).0, Some(0));

    // Unreachable: 4. Bad arguments: 2. Bad config: 78.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let other = Agent::configured(&server, "");
    let enroll_at = |url: &str| {
        let mut cmd = Command::new(bin("flex-agent"));
        cmd.args(["enroll", "--token", "fet_x", "--server", url, "--config"])
            .arg(&other.config);
        cmd
    };
    let (c, err) = code(enroll_at(&closed));
    assert_eq!(c, Some(4), "{err}");
    assert_eq!(code(enroll_at("flex.example.com")).0, Some(2));
    let mut cmd = Command::new(bin("flex-agent"));
    cmd.args(["enroll", "--bogus"]);
    assert_eq!(code(cmd).0, Some(2));
    std::fs::write(&other.config, "server_url = 3\n").unwrap();
    assert_eq!(code(enroll_at(&closed)).0, Some(78));
}

#[tokio::test]
async fn a_tls_failure_is_exit_5_and_names_the_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, cert, key) = flex_e2e::test_ca(tmp.path());
    let server = Server::start(ServerOpts {
        tls: Some((cert, key)),
        ..Default::default()
    });
    // Another CA than the one that signed the server's certificate.
    let other = tempfile::tempdir().unwrap();
    flex_e2e::test_ca(other.path());
    let agent = Agent::configured(
        &server,
        &format!("ca_file = \"{}\"", other.path().join("ca.pem").display()),
    );
    let out = agent.enroll_command("fet_x").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(
        err.contains("not signed by a trusted CA") && err.contains("ca_file"),
        "{err}"
    );
}

#[tokio::test]
async fn a_revoked_device_is_refused_and_its_product_closes_like_a_refused_renewal() {
    let rates = Rates::unique();
    // Windows of 6 s and a 2 s renewal grace, but a long offline limit: the
    // product must close because the device was revoked, not for being
    // offline.
    let policy = SHORT_POLICY.replace(
        "flex_offline_limit = \"8s\"",
        "flex_offline_limit = \"60s\"",
    );
    let server = flex_server(&policy, Some(&rates), 100).await;
    let agent = Agent::start(&server, "").await;
    let exe = fake_product(agent.dir.path(), &rates.exe("acad"));
    let mut acad = Running::product(&exe);
    eventually("acad's window", WAIT, || async {
        agent.session_of(acad.pid())
    })
    .await;

    let device = agent.status()["device_id"].as_str().unwrap().to_string();
    let before_revoke = chrono::Utc::now();
    let out = Command::new(bin("flex-admin"))
        .args(["--server", &server.url, "devices", "revoke", &device])
        .env("FLEX_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("is revoked"));

    // A new launch is refused at once, with what to do.
    let out = agent.run("revit", &["true"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(77), "{stderr}");
    assert!(
        stderr.contains("device_revoked") && stderr.contains("enroll it again"),
        "{stderr}"
    );
    let refused_at = chrono::Utc::now();

    // Once the server said so, no window is honoured any more: the running
    // product is closed after the renewal grace (2 s), as a refused renewal
    // would be, and its user told why.
    let status = acad.wait_exit(WAIT * 2).await;
    let closed_at = chrono::Utc::now();
    assert_eq!(status.signal(), Some(15), "closed gracefully: {status:?}");
    assert!(
        closed_at >= before_revoke + chrono::Duration::seconds(2)
            && closed_at < refused_at + chrono::Duration::seconds(30),
        "closed at {closed_at}, revoked at {before_revoke}:\n{}",
        agent.log()
    );
    let log = agent.log();
    assert!(
        log.contains("ProductClosing") && log.contains("DeviceRevoked"),
        "{log}"
    );
    assert_eq!(
        server.charges().await.len(),
        1,
        "nothing charged after revocation"
    );
    let devices = server.ok(M::GET, "/devices", None).await;
    assert_eq!(devices["devices"][0]["revoked"], true);
}
