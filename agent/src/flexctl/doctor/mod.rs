//! `flexctl doctor [--json] [--bundle FILE]`: every check a fleet admin needs to
//! tell why a workstation does not license products, each with what was found
//! and the fix. Exit 0 when nothing failed, 1 otherwise.
//!
//! Checks, in order: the config (with its drop-ins) parses; the state directory
//! and the socket; the agent answers; the workstation is enrolled and its
//! credential readable; the server answers, its TLS chain is trusted and its
//! clock agrees with this one; the server still accepts the device credential;
//! process detection sees a test exec; the user's notifier runs; the user's
//! email is known to the server. Run as root it checks everything (the journal
//! and the credential are root's); as a user it checks what a user can see and
//! says which checks need `sudo`.
//!
//! The checks gather facts here; [`report`] holds the check list and its
//! rendering, [`fixes`] every fix per OS, and [`bundle`] the support archive.

pub mod bundle;
pub mod fixes;
pub mod report;
#[cfg(windows)]
mod windows;

#[cfg(windows)]
use windows::{caller, notifier_pids_of, paths_check};

use std::path::{Path, PathBuf};
use std::time::Duration;

use flex_protocol::socket::{Request, StatusReply};

use super::{Client, CtlError};
use crate::client::{Client as ServerClient, ClientError};
use crate::config::{self, Config};
use crate::credentials::{CredentialError, DeviceToken};
use crate::enroll::EnrollError;
use crate::journal::Enrollment;
use fixes::Fixes;
use report::{Check, Report};

/// Clock skew to the server above which the check fails.
pub const MAX_SKEW: Duration = Duration::from_secs(60);
/// How long the detection check waits to see its test exec.
#[cfg(target_os = "linux")]
const EXEC_WAIT: Duration = Duration::from_secs(3);

/// What `flexctl doctor` was asked.
#[derive(Debug, Clone)]
pub struct DoctorOptions {
    pub config: PathBuf,
    pub socket: PathBuf,
    /// The account to check (root only for another account); default: the caller.
    pub user: Option<String>,
    pub json: bool,
    pub bundle: Option<PathBuf>,
}

/// Runs every check, prints the report (and writes the bundle); returns the exit code.
pub async fn run(opts: DoctorOptions) -> Result<i32, CtlError> {
    let (report, status) = diagnose(&opts).await;
    if opts.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    if let Some(path) = &opts.bundle {
        match bundle::write(path, &opts.config, &report, status.as_ref()) {
            Ok(()) => eprintln!("flexctl: support bundle written to {}", path.display()),
            Err(e) => {
                eprintln!("flexctl: {e}");
                return Ok(1);
            }
        }
    }
    Ok(if report.ok() { 0 } else { 1 })
}

/// The checks, and the agent's status when it answered (for the bundle).
pub async fn diagnose(opts: &DoctorOptions) -> (Report, Option<StatusReply>) {
    let mut r = Report::default();
    let fixes = fixes::current();
    let (me, root) = caller();
    let no_desktop = opts.user.is_none() && fixes.has_no_desktop(&me, root);
    let account = opts.user.clone().unwrap_or(me);

    // Config.
    let config = match Config::load(&opts.config) {
        Ok(c) => {
            let files = config::sources(&opts.config).map(|s| s.len()).unwrap_or(1);
            r.push(Check::ok(
                "config",
                format!(
                    "{} and {} drop-in(s) parse; server {}",
                    opts.config.display(),
                    files.saturating_sub(1),
                    c.servers().join(", ")
                ),
            ));
            Some(c)
        }
        Err(e) => {
            r.push(Check::fail("config", e.to_string(), &fixes.config));
            None
        }
    };

    // Paths.
    if let Some(c) = &config {
        r.push(paths_check(c, &opts.socket, &fixes));
    }

    // The agent.
    let status = agent_status(&opts.socket).await;
    match &status {
        Ok(s) => r.push(Check::ok(
            "agent",
            format!(
                "flex-agent {} answers on {} ({})",
                s.agent_version,
                opts.socket.display(),
                if s.online { "online" } else { "offline" }
            ),
        )),
        Err(e) => r.push(Check::fail("agent", e.to_string(), &fixes.start_agent)),
    }
    let status = status.ok();

    // Enrollment and credential.
    let token_file = crate::enroll::token_file_for(&opts.config);
    let enrollment =
        enrollment_check(config.as_ref(), status.as_ref(), root, &token_file, &fixes).await;
    let device_token = enrollment.1;
    r.push(enrollment.0);

    // Server, TLS, clock, credential accepted, user known.
    match &config {
        Some(c) => server_checks(&mut r, c, device_token, &account, root, &fixes).await,
        None => {
            for name in ["server", "tls", "clock", "credential", "user"] {
                r.push(Check::skip(name, "no usable config"));
            }
        }
    }

    // Detection.
    r.push(detection_check(status.as_ref(), root, &fixes).await);

    // The notifier.
    r.push(notifier_check(&account, no_desktop, &fixes));

    (r, status)
}

/// The account running the doctor and whether it is root.
#[cfg(unix)]
fn caller() -> (String, bool) {
    let uid = nix::unistd::getuid().as_raw();
    (crate::account::name_of_uid(uid), uid == 0)
}

async fn agent_status(socket: &Path) -> Result<StatusReply, CtlError> {
    let mut client = Client::connect(socket).await?;
    client
        .call(&Request::Status)
        .await?
        .map_err(CtlError::Refused)
}

#[cfg(unix)]
fn paths_check(c: &Config, socket: &Path, fixes: &Fixes) -> Check {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let mut problems = Vec::new();
    match std::fs::metadata(&c.state_dir) {
        Ok(m) if !m.is_dir() => {
            problems.push(format!("{} is not a directory", c.state_dir.display()))
        }
        Ok(m) if m.permissions().mode() & 0o077 != 0 => problems.push(format!(
            "{} has mode {:o}, not 0700",
            c.state_dir.display(),
            m.permissions().mode() & 0o777
        )),
        Ok(_) => {}
        Err(e) => problems.push(format!("state_dir {}: {e}", c.state_dir.display())),
    }
    match std::fs::metadata(socket) {
        Ok(m) if !m.file_type().is_socket() => {
            problems.push(format!("{} exists but is not a socket", socket.display()))
        }
        Ok(_) => {}
        Err(e) => problems.push(format!("socket {}: {e}", socket.display())),
    }
    if problems.is_empty() {
        Check::ok(
            "paths",
            format!(
                "state_dir {} (0700), socket {}",
                c.state_dir.display(),
                socket.display()
            ),
        )
    } else {
        Check::fail("paths", problems.join("; "), &fixes.paths)
    }
}

/// The enrollment check and, for root, the device token to test with the server.
async fn enrollment_check(
    config: Option<&Config>,
    status: Option<&StatusReply>,
    root: bool,
    token_file: &Path,
    fixes: &Fixes,
) -> (Check, Option<crate::credentials::DeviceToken>) {
    if root {
        let Some(c) = config else {
            return (Check::skip("enrollment", "no usable config"), None);
        };
        let cfg = c.clone();
        let found = tokio::task::spawn_blocking(move || enrollment_and_token(&cfg)).await;
        let found = found
            .map_err(|e| e.to_string())
            .and_then(|f| f.map_err(|e| e.to_string()));
        match found {
            Ok(Some((e, Ok(token)))) => (
                Check::ok(
                    "enrollment",
                    format!(
                        "device {} with {}; credential readable",
                        e.device_id, e.server_url
                    ),
                ),
                Some(token),
            ),
            // The service keeps it where this administrator cannot look.
            Ok(Some((e, Err(CredentialError::Missing { .. }))))
                if fixes.credential_elsewhere.is_some() =>
            {
                (
                    Check::ok(
                        "enrollment",
                        format!(
                            "device {} with {}; credential {}",
                            e.device_id,
                            e.server_url,
                            fixes.credential_elsewhere.as_deref().unwrap_or_default()
                        ),
                    ),
                    None,
                )
            }
            Ok(Some((e, Err(err)))) => (
                Check::fail(
                    "enrollment",
                    format!(
                        "device {} is recorded but its credential is not: {err}",
                        e.device_id
                    ),
                    &fixes.reenroll,
                ),
                None,
            ),
            Ok(None) => (not_enrolled(token_file, c, fixes), None),
            Err(e) => (Check::fail("enrollment", e, &fixes.enroll), None),
        }
    } else {
        match status.and_then(|s| s.device_id.clone()) {
            Some(id) => (
                Check::ok(
                    "enrollment",
                    format!(
                        "device {id}, credential in {} (as reported by the agent)",
                        status.map(|s| s.credential_store.as_str()).unwrap_or("?")
                    ),
                ),
                None,
            ),
            None if status.is_some() || token_file.exists() => (
                match config {
                    Some(c) => not_enrolled(token_file, c, fixes),
                    None => Check::fail(
                        "enrollment",
                        "the agent reports no device id",
                        &fixes.enroll,
                    ),
                },
                None,
            ),
            None => (
                Check::skip(
                    "enrollment",
                    format!(
                        "the agent did not answer; {} to read the journal",
                        fixes.elevate
                    ),
                ),
                None,
            ),
        }
    }
}

/// A credential as the doctor could load it.
type CredentialLoad = Result<DeviceToken, CredentialError>;

/// The journal's enrollment, if any, and whether its credential loads (blocking).
fn enrollment_and_token(c: &Config) -> Result<Option<(Enrollment, CredentialLoad)>, EnrollError> {
    if !c.journal_path().exists() {
        return Ok(None);
    }
    let Some(e) = crate::journal::Journal::open_in(&c.state_dir)?.enrollment()? else {
        return Ok(None);
    };
    let token = crate::credentials::CredentialStore::select(c.credential_store, &c.state_dir)
        .and_then(|store| store.load());
    Ok(Some((e, token)))
}

/// Not enrolled: waiting on a token in place (the agent enrolls, retrying
/// while the server is out of reach, or was refused), or with none at all.
fn not_enrolled(token_file: &Path, c: &Config, fixes: &Fixes) -> Check {
    if token_file.exists() {
        let pending = crate::journal::Journal::open_in(&c.state_dir)
            .ok()
            .filter(|_| c.journal_path().exists())
            .and_then(|j| j.pending_enrollment().ok().flatten())
            .map_or(String::new(), |p| {
                format!(
                    "; a request to {} awaits its answer (the agent asks again)",
                    p.server_url
                )
            });
        Check::fail(
            "enrollment",
            format!(
                "not enrolled yet: the enrollment token in {} waits to be used{pending}",
                token_file.display()
            ),
            &fixes.enrolling,
        )
    } else {
        Check::fail(
            "enrollment",
            format!(
                "this workstation is not enrolled and no enrollment token waits in {}",
                token_file.display()
            ),
            &fixes.enroll,
        )
    }
}

/// With several servers (`server_urls`), whether each answers: the agent
/// fails over to the next, but a replica that never answers is worth fixing.
async fn replica_checks(r: &mut Report, c: &Config, fixes: &Fixes) {
    let servers = c.servers();
    if servers.len() < 2 {
        return;
    }
    let options = crate::client::ClientOptions {
        ca_file: c.ca_file.clone(),
        ..Default::default()
    };
    for (i, url) in servers.iter().enumerate() {
        let name = format!("replica {}", i + 1);
        match ServerClient::new(url, &options) {
            Ok(one) => match one.health().await {
                Ok(h) => r.push(Check::ok(
                    &name,
                    format!("{url} answers (flex-server {})", h.version),
                )),
                Err(e) => r.push(Check::warn(&name, e.to_string(), &fixes.replica)),
            },
            Err(e) => r.push(Check::fail(&name, e.to_string(), &fixes.server_urls)),
        }
    }
}

async fn server_checks(
    r: &mut Report,
    c: &Config,
    token: Option<crate::credentials::DeviceToken>,
    account: &str,
    root: bool,
    fixes: &Fixes,
) {
    let client = match ServerClient::from_config(c) {
        Ok(client) => client,
        Err(e) => {
            r.push(Check::fail("server", e.to_string(), &fixes.config));
            for name in ["tls", "clock", "credential", "user"] {
                r.push(Check::skip(name, "no HTTPS client"));
            }
            return;
        }
    };
    replica_checks(r, c, fixes).await;
    let https = c.servers().iter().all(|u| u.starts_with("https://"));
    let ca = c
        .ca_file
        .as_ref()
        .map_or("the system's trusted roots".to_string(), |p| {
            format!("ca_file {}", p.display())
        });
    let health = client.health().await;
    let reached = match &health {
        Ok(h) => {
            r.push(Check::ok(
                "server",
                format!(
                    "{} answers (flex-server {})",
                    client.server_url(),
                    h.version
                ),
            ));
            if https {
                r.push(Check::ok(
                    "tls",
                    format!("certificate chain trusted by {ca}"),
                ));
            } else {
                r.push(Check::warn(
                    "tls",
                    "server_url is http://: traffic is not encrypted",
                    &fixes.https,
                ));
            }
            let skew = (h.server_time - chrono::Utc::now()).num_milliseconds() as f64 / 1000.0;
            if skew.abs() > MAX_SKEW.as_secs_f64() {
                r.push(Check::fail(
                    "clock",
                    format!(
                        "this machine's clock is {:.0} s {} the server's ({})",
                        skew.abs(),
                        if skew > 0.0 { "behind" } else { "ahead of" },
                        h.server_time
                            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    ),
                    &fixes.clock,
                ));
            } else {
                r.push(Check::ok(
                    "clock",
                    format!("within {:.1} s of the server", skew.abs()),
                ));
            }
            true
        }
        Err(e @ ClientError::Tls { reason, .. }) => {
            r.push(Check::ok(
                "server",
                format!("{} accepts connections", c.server_url),
            ));
            r.push(Check::fail(
                "tls",
                format!("{reason}; trusted: {ca}"),
                &fixes.tls,
            ));
            tracing::debug!("{e}");
            r.push(Check::skip("clock", "no TLS connection to the server"));
            false
        }
        Err(e) => {
            r.push(Check::fail("server", e.to_string(), &fixes.server));
            r.push(Check::skip("tls", "the server did not answer"));
            r.push(Check::skip("clock", "the server did not answer"));
            false
        }
    };

    // The credential and the user: need the device token (root).
    let Some(token) = token.filter(|_| reached) else {
        let why = if !reached {
            "the server did not answer".to_string()
        } else if root {
            match &fixes.credential_elsewhere {
                Some(place) => format!("the device credential is {place}"),
                None => "not enrolled".to_string(),
            }
        } else {
            fixes.credential_owner.clone()
        };
        r.push(Check::skip("credential", why.clone()));
        user_mapping_only(r, c, account, &why, fixes);
        return;
    };
    let device = client.with_token(token);
    match device.products().await {
        Ok(_) => r.push(Check::ok(
            "credential",
            "the server accepts this device's credential",
        )),
        Err(e @ ClientError::Revoked { .. }) => {
            r.push(Check::fail("credential", e.to_string(), &fixes.reenroll))
        }
        Err(e) => r.push(Check::fail(
            "credential",
            format!("{e} (the server was reinstalled, or the device deleted)"),
            &fixes.reenroll,
        )),
    }
    let email = match c.email_for(account) {
        Ok(e) => e,
        Err(e) => {
            r.push(unmapped(e.to_string(), fixes));
            return;
        }
    };
    match device.check_user(&email).await {
        // The server tells a device only whether the user exists; what they may
        // run is shown to admins (flex-admin users) and answered per claim.
        Ok(u) if u.known => r.push(Check::ok(
            "user",
            format!("{account} is {} on the server", u.email),
        )),
        Ok(u) => r.push(Check::fail(
            "user",
            format!(
                "{account} maps to {} (users.email_template / users.overrides), which the \
                 server does not know",
                u.email
            ),
            &fixes.user_unknown(u.email.as_str(), account),
        )),
        Err(e) => r.push(Check::fail("user", e.to_string(), &fixes.see_credential)),
    }
}

fn unmapped(reason: String, fixes: &Fixes) -> Check {
    Check::fail("user", reason, &fixes.user_mapping)
}

/// Without the credential: at least the mapping from account to email.
fn user_mapping_only(r: &mut Report, c: &Config, account: &str, why: &str, fixes: &Fixes) {
    match c.email_for(account) {
        Ok(email) => r.push(Check::skip(
            "user",
            format!("{account} maps to {email}; not asked of the server: {why}"),
        )),
        Err(e) => r.push(unmapped(e.to_string(), fixes)),
    }
}

async fn detection_check(status: Option<&StatusReply>, root: bool, fixes: &Fixes) -> Check {
    let reported = status.map(|s| s.detection.clone());
    if reported.as_deref() == Some("off") {
        return Check::fail(
            "detection",
            "the agent runs without process detection: only flexctl run launches are seen",
            &fixes.detection_off,
        );
    }
    if !root {
        return match reported {
            Some(d) => Check::ok("detection", format!("the agent detects products by {d}")),
            None => Check::skip("detection", "the agent did not answer"),
        };
    }
    #[cfg(target_os = "linux")]
    {
        match exec_seen().await {
            Ok(()) => Check::ok(
                "detection",
                format!(
                    "a test exec was seen by the kernel's process connector{}",
                    reported
                        .map(|d| format!("; the agent uses {d}"))
                        .unwrap_or_default()
                ),
            ),
            Err(e) if reported.as_deref() == Some("polling") => Check::ok(
                "detection",
                format!("the agent polls /proc (the process connector is unusable here: {e})"),
            ),
            Err(e) => Check::fail("detection", e, &fixes.detection_connector),
        }
    }
    #[cfg(not(target_os = "linux"))]
    match reported {
        Some(d) => Check::ok("detection", format!("the agent detects products by {d}")),
        None => Check::skip("detection", "the agent did not answer"),
    }
}

/// Starts `true` and waits for the process connector to report its exec.
#[cfg(target_os = "linux")]
async fn exec_seen() -> Result<(), String> {
    use crate::watcher::connector::{CnEvent, ProcConnector};
    let mut cn = ProcConnector::open().map_err(|e| e.to_string())?;
    let true_bin = ["/usr/bin/true", "/bin/true"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .ok_or("no /usr/bin/true to run as a test")?;
    let mut child = tokio::process::Command::new(true_bin)
        .spawn()
        .map_err(|e| format!("cannot run {true_bin}: {e}"))?;
    let pid = child.id().unwrap_or(0);
    let wait = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + EXEC_WAIT;
        let mut events = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            events.clear();
            if !cn
                .recv_timeout(&mut events, left)
                .map_err(|e| e.to_string())?
            {
                return Err(format!(
                    "no exec event for a test process within {EXEC_WAIT:?}"
                ));
            }
            if events.contains(&CnEvent::Exec { pid }) {
                return Ok::<(), String>(());
            }
        }
    });
    let seen = wait.await;
    let _ = child.wait().await;
    seen.map_err(|e| format!("the exec check stopped: {e}"))?
}

/// Whether `account` has a `flexctl notify` running (`no_desktop`: the doctor
/// runs as an account without one, and was not given another).
fn notifier_check(account: &str, no_desktop: bool, fixes: &Fixes) -> Check {
    if no_desktop {
        return Check::skip("notifier", fixes.no_desktop.clone());
    }
    let Some(pids) = notifier_pids_of(account) else {
        return Check::fail(
            "notifier",
            format!("there is no local account named '{account}'"),
            &fixes.local_account,
        );
    };
    match pids {
        Ok(pids) if !pids.is_empty() => Check::ok(
            "notifier",
            format!("flexctl notify runs for {account} (pid {})", pids[0]),
        ),
        Ok(_) => Check::fail(
            "notifier",
            format!("no flexctl notify runs for {account}: they get no desktop notifications"),
            &fixes.notifier,
        ),
        Err(e) => Check::skip("notifier", format!("cannot list processes: {e}")),
    }
}

/// Pids of `flexctl notify` processes of local account `account`; `None`
/// when there is no such account.
#[cfg(unix)]
fn notifier_pids_of(account: &str) -> Option<std::io::Result<Vec<u32>>> {
    let Ok(Some(user)) = nix::unistd::User::from_name(account) else {
        return None;
    };
    Some(notifier_pids(user.uid.as_raw()))
}

/// Pids of `flexctl notify` processes of `uid`, from /proc.
#[cfg(unix)]
fn notifier_pids(uid: u32) -> std::io::Result<Vec<u32>> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if entry.metadata().map(|m| m.uid()).ok() != Some(uid) {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let mut args = cmdline.split(|b| *b == 0);
        let exe = args.next().unwrap_or_default();
        let is_flexctl =
            Path::new(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(exe))
                .file_name()
                .is_some_and(|n| n == "flexctl");
        if is_flexctl && args.any(|a| a == b"notify") {
            out.push(pid);
        }
    }
    out.sort_unstable();
    Ok(out)
}
