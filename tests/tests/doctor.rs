//! `flexctl doctor` (issue 9) against a healthy agent and against each failure a
//! fleet admin meets: a stopped server, a wrong CA, a skewed clock, an unknown
//! user. The check that explains it fails, with its fix; the others do not.

use std::process::Command;

use flex_e2e::agent::{setup, Agent};
use flex_e2e::{bin, Server, ServerOpts};
use serde_json::Value;

/// `flexctl doctor --json` for `agent`'s config and socket: (exit code, report).
fn doctor(agent: &Agent, extra: &[&str]) -> (Option<i32>, Value) {
    let out = Command::new(bin("flexctl"))
        .arg("--socket")
        .arg(agent.socket_path())
        .args(["doctor", "--json", "--config"])
        .arg(&agent.config)
        .args(extra)
        .output()
        .expect("run flexctl doctor");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor --json printed no JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), report)
}

fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {report:#}"))
}

fn failed(report: &Value) -> Vec<String> {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] == "fail")
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn a_healthy_agent_passes_every_check_and_bundles_its_report() {
    let (_rates, _server, agent) = setup().await;
    let bundle = agent.dir.path().join("support.tar.gz");
    let (code, report) = doctor(&agent, &["--bundle", bundle.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{report:#}");
    assert!(failed(&report).is_empty(), "{report:#}");
    for name in [
        "config",
        "paths",
        "agent",
        "enrollment",
        "server",
        "clock",
        "credential",
        "detection",
        "user",
    ] {
        assert_eq!(check(&report, name)["status"], "ok", "{name}: {report:#}");
    }
    assert!(check(&report, "detection")["detail"]
        .as_str()
        .unwrap()
        .contains("test exec was seen"));
    assert!(check(&report, "user")["detail"]
        .as_str()
        .unwrap()
        .contains("root@example.com"));
    // http:// in tests: a warning, not a failure.
    assert_eq!(check(&report, "tls")["status"], "warn");
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(&bundle).expect("bundle written");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert!(meta.len() > 0);
}

#[tokio::test]
async fn the_bundle_follows_a_planted_symlink_and_keeps_a_planted_files_owner() {
    // `sudo flexctl doctor --bundle FILE` followed a symlink planted at FILE
    // (overwriting what it pointed to) and kept a pre-created file's owner and
    // mode (a user could then read the bundle).
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let (_rates, _server, agent) = setup().await;
    let victim = agent.dir.path().join("victim");
    std::fs::write(&victim, "keep me\n").unwrap();
    let planted = agent.dir.path().join("planted.tar.gz");
    std::os::unix::fs::symlink(&victim, &planted).unwrap();
    let (code, report) = doctor(&agent, &["--bundle", planted.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me\n");
    let meta = std::fs::symlink_metadata(&planted).unwrap();
    assert!(
        meta.file_type().is_file(),
        "the symlink was replaced by the bundle"
    );
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    let precreated = agent.dir.path().join("precreated.tar.gz");
    std::fs::write(&precreated, "").unwrap();
    std::os::unix::fs::chown(&precreated, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(&precreated, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, report) = doctor(&agent, &["--bundle", precreated.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{report:#}");
    let meta = std::fs::metadata(&precreated).unwrap();
    assert_eq!((meta.uid(), meta.permissions().mode() & 0o777), (0, 0o600));
    assert!(meta.len() > 0);
}

#[tokio::test]
async fn a_stopped_server_fails_the_server_check_with_its_fix() {
    let (_rates, mut server, agent) = setup().await;
    server.kill9();
    let (code, report) = doctor(&agent, &[]);
    assert_eq!(code, Some(1));
    assert_eq!(failed(&report), vec!["server"], "{report:#}");
    let c = check(&report, "server");
    assert!(c["detail"].as_str().unwrap().contains(&server.url), "{c}");
    assert!(c["fix"].as_str().unwrap().contains("flex-server"), "{c}");
    assert_eq!(check(&report, "agent")["status"], "ok");
}

#[tokio::test]
async fn a_wrong_ca_fails_the_tls_check_naming_the_ca_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, cert, key) = flex_e2e::test_ca(tmp.path());
    let server = Server::start(ServerOpts {
        tls: Some((cert, key)),
        ..Default::default()
    });
    let other = tempfile::tempdir().unwrap();
    flex_e2e::test_ca(other.path());
    let wrong = other.path().join("ca.pem");
    let agent = Agent::configured(&server, &format!("ca_file = \"{}\"", wrong.display()));
    let (code, report) = doctor(&agent, &[]);
    assert_eq!(code, Some(1));
    let c = check(&report, "tls");
    assert_eq!(c["status"], "fail", "{report:#}");
    let detail = c["detail"].as_str().unwrap();
    assert!(
        detail.contains("not signed by a trusted CA")
            && detail.contains(&wrong.display().to_string()),
        "{c}"
    );
    assert!(c["fix"].as_str().unwrap().contains("ca_file"), "{c}");
    assert_eq!(check(&report, "server")["status"], "ok", "{report:#}");
}

#[tokio::test]
async fn a_skewed_clock_fails_the_clock_check() {
    let server = Server::start_test_clock();
    server.set_time("2020-01-01T00:00:00Z").await;
    let agent = Agent::configured(&server, "");
    let (code, report) = doctor(&agent, &[]);
    assert_eq!(code, Some(1));
    let c = check(&report, "clock");
    assert_eq!(c["status"], "fail", "{report:#}");
    assert!(
        c["detail"]
            .as_str()
            .unwrap()
            .contains("ahead of the server"),
        "{c}"
    );
    assert!(c["fix"].as_str().unwrap().contains("timedatectl"), "{c}");
    assert_eq!(check(&report, "server")["status"], "ok");
}

#[tokio::test]
async fn an_unknown_user_fails_the_user_check_with_what_to_ask() {
    let (_rates, _server, agent) = setup().await;
    let (code, report) = doctor(&agent, &["--user", "nobody"]);
    assert_eq!(code, Some(1));
    let c = check(&report, "user");
    assert_eq!(c["status"], "fail", "{report:#}");
    assert!(
        c["detail"].as_str().unwrap().contains("nobody@example.com"),
        "{c}"
    );
    assert!(
        c["fix"]
            .as_str()
            .unwrap()
            .contains("flex-admin users add nobody@example.com"),
        "{c}"
    );
    // nobody has no desktop session either.
    assert_eq!(check(&report, "notifier")["status"], "fail");
    assert_eq!(check(&report, "credential")["status"], "ok");
}
