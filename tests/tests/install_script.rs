//! `install/install.sh` for real, in a throwaway root ([`DebRoot`]) with the
//! built binaries and a test server: it enrolls, is idempotent, passes on the
//! documented exit codes of `flex-agent enroll`, refuses to finish without a user
//! mapping, and uninstalls and purges.

use flex_e2e::agent::{flex_server, Rates, SHORT_POLICY};
use flex_e2e::bin;
use flex_e2e::debroot::DebRoot;
use reqwest::Method as M;
use serde_json::json;

fn repo() -> String {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .canonicalize()
        .unwrap()
        .display()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_sh_enrolls_once_passes_on_exit_codes_and_uninstalls() {
    let server = flex_server(SHORT_POLICY, Some(&Rates::unique()), 100).await;
    let token = server
        .ok(M::POST, "/enrollment-tokens", Some(json!({"uses": 2})))
        .await["token"]
        .as_str()
        .unwrap()
        .to_string();
    let root = DebRoot::create();
    // The root is this machine's file system: the repository and the built
    // binaries are visible in it at the same paths.
    let script = format!("{}/install/install.sh", repo());
    let bin_dir = bin("flex-agent").parent().unwrap().display().to_string();
    std::fs::write(root.path("/root/token"), format!("{token}\n")).unwrap();
    let install = |extra: &[&str]| {
        let mut args = vec![
            "sh",
            script.as_str(),
            "--server",
            server.url.as_str(),
            "--bin-dir",
            bin_dir.as_str(),
        ];
        args.extend_from_slice(extra);
        let out = root.run(&args);
        (
            out.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };

    // No user mapping: refused before anything changes.
    let (code, out) = install(&["--token-file", "/root/token"]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("--email-template"), "{out}");
    assert!(!root.path("/usr/local/bin/flex-agent").exists());

    // A refused token: the enroll exit code comes through, files are in place.
    let (code, out) = install(&[
        "--token",
        "fet_wrong",
        "--email-template",
        "{user}@corp.example",
    ]);
    assert_eq!(code, Some(6), "{out}");
    assert!(root.path("/usr/local/bin/flex-agent").exists());

    // The real token from a file: enrolled, with the token never on a command line.
    let (code, out) = install(&[
        "--token-file",
        "/root/token",
        "--email-template",
        "{user}@corp.example",
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("enrolled"), "{out}");
    assert!(!out.contains(&token), "the token is never printed: {out}");
    assert!(root.path("/var/lib/flex-agent/device-token").exists());
    // (symlink_metadata: the links point to paths inside the root.)
    assert!(root
        .path("/etc/systemd/system/multi-user.target.wants/flex-agent.service")
        .symlink_metadata()
        .is_ok());
    assert!(root
        .path("/etc/systemd/system/sockets.target.wants/flex-agent.socket")
        .symlink_metadata()
        .is_ok());
    let devices = server.ok(M::GET, "/devices", None).await;
    assert_eq!(devices["devices"].as_array().unwrap().len(), 1);

    // Again: nothing to do, exit 0, the token's second use untouched.
    let (code, out) = install(&["--token-file", "/root/token"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("already enrolled"), "{out}");
    let keys = server.ok(M::GET, "/enrollment-tokens", None).await;
    assert_eq!(keys["enrollment_tokens"][0]["uses_left"], 1);

    // Uninstall keeps the identity; purge removes it.
    root.ok(&["sh", &script, "--uninstall"]);
    assert!(!root.path("/usr/local/bin/flex-agent").exists());
    assert!(!root.path("/etc/systemd/system/flex-agent.service").exists());
    assert!(root
        .path("/etc/systemd/system/multi-user.target.wants/flex-agent.service")
        .symlink_metadata()
        .is_err());
    assert!(root.path("/var/lib/flex-agent/device-token").exists());
    root.ok(&["sh", &script, "--purge"]);
    assert!(!root.path("/var/lib/flex-agent").exists());
    assert!(!root.path("/etc/flex-agent").exists());
}
