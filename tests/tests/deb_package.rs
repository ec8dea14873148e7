//! The .deb packages as a fleet admin meets them (issue 9): lintian finds no
//! error or warning, and a whole package lifecycle in a throwaway root
//! ([`DebRoot`]) is unattended: install, enroll from the token file, edit the
//! config, disable the service, upgrade to a rebuilt newer version with stdin
//! closed (no prompt; config, enrollment and the disable kept), remove (state
//! kept), purge (nothing left).
//!
//! The packages are built by `install/deb/build.sh` from the debug binaries the
//! suite already built (stripped like release ones), twice, with two versions.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use flex_e2e::agent::{flex_server, Rates, SHORT_POLICY};
use flex_e2e::bin;
use flex_e2e::debroot::DebRoot;
use reqwest::Method as M;
use serde_json::json;

const OLD: &str = "0.1.0+lifecycle1";
const NEW: &str = "0.1.0+lifecycle2";

struct Debs {
    dir: PathBuf,
}

impl Debs {
    fn get(&self, pkg: &str, version: &str) -> PathBuf {
        let arch = String::from_utf8(
            Command::new("dpkg")
                .arg("--print-architecture")
                .output()
                .expect("dpkg")
                .stdout,
        )
        .unwrap();
        self.dir
            .join(version)
            .join(format!("{pkg}_{version}_{}.deb", arch.trim()))
    }
}

/// Both packages in both versions, built once for this test binary.
fn debs() -> &'static Debs {
    static DEBS: OnceLock<Debs> = OnceLock::new();
    DEBS.get_or_init(|| {
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let bin_dir = bin("flex-agent").parent().unwrap().to_path_buf();
        let dir = bin_dir.join("debian-test");
        for version in [OLD, NEW] {
            let out = Command::new("sh")
                .arg(repo.join("install/deb/build.sh"))
                .args(["--no-build", "--bin-dir"])
                .arg(&bin_dir)
                .args(["--version", version, "--out"])
                .arg(dir.join(version))
                // Quicker than xz; lintian and dpkg read both.
                .env("FLEX_DEB_COMPRESS", "gzip")
                .stdin(Stdio::null())
                .output()
                .expect("run install/deb/build.sh");
            assert!(
                out.status.success(),
                "build.sh --version {version}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Debs { dir }
    })
}

#[test]
fn lintian_finds_no_error_or_warning() {
    let d = debs();
    let out = Command::new("lintian")
        .args([
            "--fail-on",
            "error,warning",
            "--display-info",
            "--no-tag-display-limit",
        ])
        .arg(d.get("flex-agent", OLD))
        .arg(d.get("flex-server", OLD))
        .stdin(Stdio::null())
        .output()
        .expect("run lintian (tests/run.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    let bad: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("E: ") || l.starts_with("W: "))
        .collect();
    assert!(
        out.status.success() && bad.is_empty(),
        "lintian ({}):\n{text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn read(root: &DebRoot, path: &str) -> String {
    std::fs::read_to_string(root.path(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

fn exists(root: &DebRoot, path: &str) -> bool {
    root.path(path).symlink_metadata().is_ok()
}

/// `dpkg -i` with stdin closed: a conffile prompt would fail it.
fn install(root: &DebRoot, deb: &Path) -> String {
    let name = deb.file_name().unwrap().to_string_lossy().into_owned();
    root.put(deb, &format!("/root/{name}"));
    let out = root.ok(&["dpkg", "-i", &format!("/root/{name}")]);
    assert!(!out.contains("conffile"), "no conffile question: {out}");
    out
}

/// Starts the agent inside the root as its unit would, waits for readiness.
fn start_agent(root: &DebRoot) -> std::process::Child {
    use std::io::BufRead;
    let mut child = root
        .command(&[
            "/usr/bin/flex-agent",
            "--config",
            "/etc/flex-agent/agent.toml",
        ])
        .env("FLEX_AGENT_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the agent in the root");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(
        line.starts_with("flex-agent listening on"),
        "agent said {line:?}"
    );
    child
}

fn stop(mut child: std::process::Child) {
    // SAFETY: kill(2) with plain integers.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "agent stopped with {status}");
}

fn device_id(root: &DebRoot) -> String {
    let out = root.ok(&["flexctl", "status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("status JSON");
    v["device_id"].as_str().expect("enrolled").to_string()
}

const AGENT_LINKS: [&str; 3] = [
    "/etc/systemd/system/multi-user.target.wants/flex-agent.service",
    "/etc/systemd/system/sockets.target.wants/flex-agent.socket",
    "/etc/systemd/user/graphical-session.target.wants/flexctl-notify.service",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_package_lives_through_install_upgrade_remove_and_purge_unattended() {
    let d = debs();
    let server = flex_server(SHORT_POLICY, Some(&Rates::unique()), 100).await;
    let key = server
        .ok(
            M::POST,
            "/enrollment-tokens",
            Some(json!({"uses": 5, "ttl": "1h"})),
        )
        .await;
    let root = DebRoot::create();
    // The root starts as this machine: make sure it has no flex-agent of its own.
    root.run(&["dpkg", "--purge", "flex-agent"]);
    let before: Vec<String> = root.changes();

    // Install: the small config, drop-in directory, units enabled.
    install(&root, &d.get("flex-agent", OLD));
    let shipped = read(&root, "/etc/flex-agent/agent.toml");
    assert!(shipped.contains("#server_url"), "{shipped}");
    assert!(
        !shipped.lines().any(|l| l.starts_with("email_template")),
        "no live placeholder"
    );
    assert!(root.path("/etc/flex-agent/agent.d").is_dir());
    assert!(exists(
        &root,
        "/usr/share/doc/flex-agent/agent.toml.example"
    ));
    for link in AGENT_LINKS {
        assert!(exists(&root, link), "{link} after install");
    }

    // Enroll from the token file, as a fleet tool would set it up.
    std::fs::write(
        root.path("/etc/flex-agent/agent.d/50-site.toml"),
        format!(
            "server_url = \"{}\"\n[users]\nemail_template = \"{{user}}@corp.example\"\n",
            server.url
        ),
    )
    .unwrap();
    std::fs::write(
        root.path("/etc/flex-agent/enroll-token"),
        key["token"].as_str().unwrap(),
    )
    .unwrap();
    root.ok(&["chmod", "0600", "/etc/flex-agent/enroll-token"]);
    let agent = start_agent(&root);
    let device = device_id(&root);
    assert!(
        !exists(&root, "/etc/flex-agent/enroll-token"),
        "token file deleted once used"
    );
    stop(agent);
    let credential = read(&root, "/var/lib/flex-agent/device-token");

    // The admin edits the main file and disables the service.
    let edited = format!(
        "poll_interval = \"2s\"\n{}",
        read(&root, "/etc/flex-agent/agent.toml")
    );
    std::fs::write(root.path("/etc/flex-agent/agent.toml"), &edited).unwrap();
    root.ok(&[
        "systemctl",
        "disable",
        "flex-agent.service",
        "flex-agent.socket",
    ]);
    assert!(!exists(&root, AGENT_LINKS[0]));

    // Upgrade to the rebuilt newer version, stdin closed.
    install(&root, &d.get("flex-agent", NEW));
    let version = root.ok(&["dpkg-query", "-W", "-f", "${Version}", "flex-agent"]);
    assert_eq!(version, NEW);
    assert_eq!(
        read(&root, "/etc/flex-agent/agent.toml"),
        edited,
        "config kept"
    );
    assert!(read(&root, "/etc/flex-agent/agent.d/50-site.toml").contains(&server.url));
    assert_eq!(
        read(&root, "/var/lib/flex-agent/device-token"),
        credential,
        "credential kept"
    );
    assert!(
        !exists(&root, AGENT_LINKS[0]),
        "the admin's disable survives the upgrade"
    );
    assert!(
        !exists(&root, AGENT_LINKS[1]),
        "the admin's disable survives the upgrade"
    );
    assert!(
        exists(&root, AGENT_LINKS[2]),
        "the notifier the admin left alone stays enabled"
    );
    let agent = start_agent(&root);
    assert_eq!(
        device_id(&root),
        device,
        "the same enrollment after the upgrade"
    );
    stop(agent);

    // Remove: the binaries go, the state and the config stay.
    root.ok(&["dpkg", "--remove", "flex-agent"]);
    assert!(!exists(&root, "/usr/bin/flex-agent"));
    assert_eq!(read(&root, "/var/lib/flex-agent/device-token"), credential);
    assert_eq!(read(&root, "/etc/flex-agent/agent.toml"), edited);

    // Purge: nothing of the agent is left anywhere.
    root.ok(&["dpkg", "--purge", "flex-agent"]);
    let left: Vec<String> = root
        .changes()
        .into_iter()
        .filter(|p| !before.contains(p))
        .filter(|p| p.contains("flex"))
        .filter(|p| !p.starts_with("/var/lib/dpkg/") && !p.starts_with("/root/"))
        .collect();
    assert!(left.is_empty(), "left after purge: {left:#?}");
    for gone in [
        "/etc/flex-agent",
        "/var/lib/flex-agent",
        "/usr/share/doc/flex-agent",
    ] {
        assert!(!exists(&root, gone), "{gone} after purge");
    }
    let status = root.run(&["dpkg-query", "-W", "-f", "${Status}", "flex-agent"]);
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(
        status.is_empty() || status.contains("not-installed"),
        "{status}"
    );
}

#[test]
fn the_server_package_keeps_its_config_over_an_upgrade_and_purges_clean() {
    let d = debs();
    let root = DebRoot::create();
    root.run(&["dpkg", "--purge", "flex-server"]);
    install(&root, &d.get("flex-server", OLD));
    assert!(root
        .ok(&["getent", "passwd", "flex-server"])
        .contains("/var/lib/flex-server"));
    let meta = root
        .path("/etc/flex-server/server.toml")
        .metadata()
        .unwrap();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_eq!(meta.permissions().mode() & 0o777, 0o640);
    assert_eq!(meta.uid(), 0);
    let mut edited = read(&root, "/etc/flex-server/server.toml");
    edited.push_str("enrollment_token_ttl = \"30d\"\n");
    std::fs::write(root.path("/etc/flex-server/server.toml"), &edited).unwrap();
    // The edited config is still one the server accepts.
    let check = root.run(&[
        "/usr/bin/flex-server",
        "--config",
        "/etc/flex-server/server.toml",
        "--data-dir",
        "/tmp/flex-server-check",
        "--listen",
        "127.0.0.1:0",
        "--help",
    ]);
    assert!(check.status.success());

    install(&root, &d.get("flex-server", NEW));
    assert_eq!(read(&root, "/etc/flex-server/server.toml"), edited);
    assert!(exists(
        &root,
        "/etc/systemd/system/multi-user.target.wants/flex-server.service"
    ));
    root.ok(&["dpkg", "--purge", "flex-server"]);
    for gone in [
        "/etc/flex-server",
        "/var/lib/flex-server",
        "/usr/bin/flex-server",
    ] {
        assert!(!exists(&root, gone), "{gone} after purge");
    }
    assert!(!exists(
        &root,
        "/etc/systemd/system/multi-user.target.wants/flex-server.service"
    ));
}
