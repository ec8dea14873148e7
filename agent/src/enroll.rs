//! Enrollment: trading an enrollment token for this workstation's device
//! credential, by hand (`flex-agent enroll`) or by the agent itself at start.
//!
//! The server answers with a device id, the secret device token and the public
//! keys it signs leases with. The token goes to the credential store
//! ([`crate::credentials`]); the rest is not secret and goes to the journal
//! ([`crate::journal::Journal::set_enrollment`]), where the daemon reads the pinned
//! lease keys at start.
//!
//! An enrollment token is spent by the server the moment it answers, so
//! everything that could keep the answer from being stored is checked first: the
//! journal opens, the credential store takes a test write (an OS keyring that
//! fails gives way to the file under `auto`). The lease keys are checked to parse
//! before anything is stored, so a bad answer never leaves a half-enrolled agent.
//!
//! An answer can still be lost on the way (a proxy slower than the request
//! timeout, the service stopped mid-request, a crash before it is stored), after
//! the server has spent a use of the token. So each enrollment request carries a
//! random id that is journaled before it is sent ([`PendingEnrollment`]) and
//! reused by every retry with the same server, token and hostname: the server
//! answers a repeat with the same device and credential and spends nothing more.
//! The id is forgotten in the transaction that records the enrollment.
//!
//! Self-enrollment ([`self_enroll`]): a machine installed from an image (or by a
//! fleet tool that only drops a file) enrolls at its agent's first start with the
//! token in `FLEX_ENROLL_TOKEN` or in the file `enroll-token` next to the config
//! (`/etc/flex-agent/enroll-token`), which is deleted once used. Each machine
//! thus gets its own identity, created on the machine itself. A workstation
//! already enrolled ignores (and deletes) a token file, unless its config now
//! names another server than the one it enrolled with: then the token is for
//! that server, and it enrolls there.
//!
//! Every failure maps to a documented exit code ([`EnrollError::exit_code`],
//! [`exit`]) so that deployment tools can branch on it, and says what to do next.

use std::path::{Path, PathBuf};

use flex_protocol::api::EnrollRequest;
use flex_protocol::lease::LeaseVerifier;

use crate::client::{Client, ClientError, ClientOptions};
use crate::config::Config;
use crate::credentials::{
    ensure_private_dir, CredentialError, CredentialStore, DeviceToken, StoreChoice,
};
use crate::journal::{Enrollment, Journal, JournalError, PendingEnrollment};

/// Exit codes of `flex-agent enroll` (and `install.sh`, which passes them on),
/// listed in `install/README.md`. Deployment tools branch on them.
pub mod exit {
    /// Enrolled.
    pub const OK: i32 = 0;
    /// Bad command line (clap's own code), or a server URL that is not one.
    pub const BAD_ARGUMENTS: i32 = 2;
    /// Already enrolled: nothing changed, the token was not used (`--force` enrolls again).
    pub const ALREADY_ENROLLED: i32 = 3;
    /// The server could not be reached (DNS, refused, timeout): retry later.
    pub const UNREACHABLE: i32 = 4;
    /// TLS failed: the certificate is not trusted (ca_file), names another host,
    /// or this machine's clock is wrong.
    pub const TLS: i32 = 5;
    /// The token was refused: unknown, used up or revoked. Get a new one.
    pub const TOKEN_REFUSED: i32 = 6;
    /// The token has expired. Get a new one.
    pub const TOKEN_EXPIRED: i32 = 7;
    /// The server failed or answered something unusable: retry later.
    pub const SERVER_ERROR: i32 = 8;
    /// This machine cannot keep the credential (state directory, credential
    /// store, journal); checked before the token is spent.
    pub const LOCAL_ERROR: i32 = 9;
    /// The configuration is missing or invalid (EX_CONFIG), or, for the daemon,
    /// the workstation is not enrolled and has no token.
    pub const CONFIG: i32 = 78;
}

/// Where self-enrollment looks for a token, next to the config file.
pub const TOKEN_FILE_NAME: &str = "enroll-token";
/// The environment variable self-enrollment (and `flex-agent enroll`) reads.
pub const TOKEN_ENV: &str = "FLEX_ENROLL_TOKEN";
/// Longest enrollment token file accepted.
const MAX_TOKEN_FILE: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("{0}")]
    BadArgument(String),
    #[error(
        "this workstation is already enrolled with {server_url} as device {device_id}: \
         nothing changed and the token was not used (run flex-agent enroll --force to \
         enroll it again, e.g. after changing server_url)"
    )]
    AlreadyEnrolled {
        device_id: String,
        server_url: String,
    },
    #[error("the server refused the enrollment token: {message}")]
    Refused { message: String },
    #[error("the server refused the enrollment token: {message}")]
    Expired { message: String },
    #[error(
        "cannot reach the server at {url}: {reason}. Check the URL, that flex-server \
         is running and reachable from this machine (DNS, firewall, proxy), and \
         ca_file in the agent config when the server uses a private CA"
    )]
    Unreachable { url: String, reason: String },
    #[error("{0}")]
    Tls(ClientError),
    #[error("enrollment at {url} failed: {source}")]
    Server {
        url: String,
        #[source]
        source: ClientError,
    },
    #[error("the server at {url} sent lease keys this agent cannot use: {reason}")]
    BadKeys { url: String, reason: String },
    #[error(
        "cannot keep a device credential on this machine, so the enrollment token was \
         not used: {0}"
    )]
    CannotKeep(CredentialError),
    #[error("cannot store the device token: {0}")]
    Credential(#[from] CredentialError),
    #[error("cannot record the enrollment: {0}")]
    Journal(#[from] JournalError),
    #[error(
        "this workstation is not enrolled and has no enrollment token: put one in {} \
         (mode 0600; an admin creates it with flex-admin enroll-token) or in \
         {TOKEN_ENV}, then restart flex-agent; or run flex-agent enroll --config FILE \
         --server URL --token TOKEN",
        token_file.display()
    )]
    NotEnrolled { token_file: PathBuf },
    #[error("cannot read the enrollment token file {path}: {reason}")]
    TokenFile { path: PathBuf, reason: String },
    #[error("the enrollment task failed: {0}")]
    Task(String),
}

impl EnrollError {
    /// The process exit code for this failure (see [`exit`]).
    pub fn exit_code(&self) -> i32 {
        match self {
            EnrollError::BadArgument(_) => exit::BAD_ARGUMENTS,
            EnrollError::AlreadyEnrolled { .. } => exit::ALREADY_ENROLLED,
            EnrollError::Unreachable { .. } => exit::UNREACHABLE,
            EnrollError::Tls(_) => exit::TLS,
            EnrollError::Refused { .. } => exit::TOKEN_REFUSED,
            EnrollError::Expired { .. } => exit::TOKEN_EXPIRED,
            EnrollError::Server { .. } | EnrollError::BadKeys { .. } => exit::SERVER_ERROR,
            EnrollError::CannotKeep(_)
            | EnrollError::Credential(_)
            | EnrollError::Journal(_)
            | EnrollError::Task(_) => exit::LOCAL_ERROR,
            EnrollError::NotEnrolled { .. } | EnrollError::TokenFile { .. } => exit::CONFIG,
        }
    }

    /// Worth trying again later without anyone changing anything: the network,
    /// the server, or a clock not yet set (TLS "not valid yet" at first boot).
    pub fn is_temporary(&self) -> bool {
        matches!(
            self,
            EnrollError::Unreachable { .. } | EnrollError::Server { .. } | EnrollError::Tls(_)
        )
    }
}

/// What `flex-agent enroll` reports on success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollOutcome {
    pub device_id: String,
    pub server_url: String,
    pub hostname: String,
    /// Where the token went: `keyring (Secret Service)` or `file:/path`.
    pub credential_store: String,
    /// Ids of the pinned lease keys.
    pub lease_key_ids: Vec<String>,
    pub journal_path: PathBuf,
}

impl std::fmt::Display for EnrollOutcome {
    /// The summary `flex-agent enroll` prints.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "enrolled {} with {} as device {}",
            self.hostname, self.server_url, self.device_id
        )?;
        writeln!(f, "device token stored in {}", self.credential_store)?;
        writeln!(f, "lease keys pinned: {}", self.lease_key_ids.join(", "))?;
        write!(f, "enrollment recorded in {}", self.journal_path.display())
    }
}

/// One enrollment: where, with what, and whether to replace an existing one.
#[derive(Debug, Clone)]
pub struct EnrollOptions {
    pub server: String,
    pub token: String,
    pub choice: StoreChoice,
    /// Enroll even if this workstation already has a working enrollment.
    pub force: bool,
}

impl EnrollOptions {
    /// Enrolls with the config's server and credential store.
    pub fn for_config(config: &Config, token: String) -> EnrollOptions {
        EnrollOptions {
            server: config.server_url.clone(),
            token,
            choice: config.credential_store,
            force: false,
        }
    }
}

/// Enrolls with the config's credential store choice.
pub async fn run_enroll(
    config: &Config,
    server: &str,
    token: &str,
) -> Result<EnrollOutcome, EnrollError> {
    enroll(
        config,
        EnrollOptions {
            server: server.to_string(),
            token: token.to_string(),
            choice: config.credential_store,
            force: false,
        },
    )
    .await
}

/// [`run_enroll`] with the credential store choice given explicitly.
pub async fn run_enroll_with(
    config: &Config,
    server: &str,
    token: &str,
    choice: StoreChoice,
) -> Result<EnrollOutcome, EnrollError> {
    enroll(
        config,
        EnrollOptions {
            server: server.to_string(),
            token: token.to_string(),
            choice,
            force: false,
        },
    )
    .await
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, EnrollError> + Send + 'static,
) -> Result<T, EnrollError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| EnrollError::Task(e.to_string()))?
}

/// The enrollment this workstation works with, if any: recorded in the journal
/// and with a credential that can be read (blocking).
pub fn current_enrollment(config: &Config) -> Result<Option<Enrollment>, EnrollError> {
    if !config.journal_path().exists() {
        return Ok(None);
    }
    let Some(enrollment) = Journal::open_in(&config.state_dir)?.enrollment()? else {
        return Ok(None);
    };
    let store = CredentialStore::select(config.credential_store, &config.state_dir)?;
    match store.load() {
        Ok(_) => Ok(Some(enrollment)),
        Err(CredentialError::Missing { .. } | CredentialError::Empty { .. }) => {
            tracing::warn!(
                device_id = %enrollment.device_id,
                "the journal records an enrollment but {} holds no device token: enrolling again",
                store.describe()
            );
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Enrolls this workstation as `opts` says.
pub async fn enroll(config: &Config, opts: EnrollOptions) -> Result<EnrollOutcome, EnrollError> {
    let server = opts.server.trim_end_matches('/').to_string();
    if !config
        .servers()
        .iter()
        .any(|u| u.trim_end_matches('/') == server)
    {
        tracing::warn!(
            "enrolling with {server} but the config's server_url is {}: the daemon \
             will talk to the config's server",
            config.server_url
        );
    }
    let client = Client::new(
        &server,
        &ClientOptions {
            ca_file: config.ca_file.clone(),
            ..ClientOptions::default()
        },
    )
    .map_err(|e| match e {
        ClientError::BadUrl { .. } => EnrollError::BadArgument(e.to_string()),
        source => EnrollError::Server {
            url: server.clone(),
            source,
        },
    })?;

    // Everything that could keep the answer from being stored, checked before
    // the server spends the token.
    let (state_dir, choice, force) = (config.state_dir.clone(), opts.choice, opts.force);
    let cfg = config.clone();
    let store = blocking(move || {
        if !force {
            if let Some(e) = current_enrollment(&cfg)? {
                return Err(EnrollError::AlreadyEnrolled {
                    device_id: e.device_id,
                    server_url: e.server_url,
                });
            }
        }
        ensure_private_dir(&state_dir).map_err(EnrollError::CannotKeep)?;
        Journal::open_in(&state_dir)?;
        CredentialStore::select_for_enrollment(choice, &state_dir).map_err(EnrollError::CannotKeep)
    })
    .await?;

    let hostname = hostname();
    let token = opts.token.trim().to_string();
    let request = journal_request(config, &server, &token, &hostname).await?;
    let sent = client
        .enroll(&EnrollRequest {
            enrollment_token: token,
            hostname: hostname.clone(),
            platform: Some(std::env::consts::OS.to_string()),
            agent_version: Some(env!("CARGO_PKG_VERSION").to_string()),
            enrollment_request_id: Some(request.request_id.clone()),
        })
        .await;
    // A refused token, or a request the server will not answer again: the
    // next attempt starts a new request.
    if let Err(
        ClientError::Unauthorized { .. }
        | ClientError::Expired { .. }
        | ClientError::Conflict { .. },
    ) = &sent
    {
        let state_dir = config.state_dir.clone();
        blocking(move || Ok(Journal::open_in(&state_dir)?.clear_pending_enrollment()?)).await?;
    }
    let answer = sent.map_err(|e| match e {
        ClientError::Unauthorized { message, .. } => EnrollError::Refused { message },
        ClientError::Expired { message, .. } => EnrollError::Expired { message },
        ClientError::Transport { url, reason } => EnrollError::Unreachable { url, reason },
        ClientError::Timeout { url, timeout } => EnrollError::Unreachable {
            url,
            reason: format!("no answer within {timeout:?}"),
        },
        e @ ClientError::Tls { .. } => EnrollError::Tls(e),
        source => EnrollError::Server {
            url: server.clone(),
            source,
        },
    })?;

    if answer.lease_keys.is_empty() {
        return Err(EnrollError::BadKeys {
            url: server,
            reason: "no lease keys in the answer".into(),
        });
    }
    LeaseVerifier::from_keys(&answer.lease_keys).map_err(|e| EnrollError::BadKeys {
        url: server.clone(),
        reason: e.to_string(),
    })?;

    let token = DeviceToken::new(answer.device_token);
    let store = match store.save_async(token.clone()).await {
        Ok(()) => store,
        // The probe passed but the real write did not: under `auto` the file
        // still keeps the credential the server has now issued.
        Err(e) if opts.choice == StoreChoice::Auto && store.is_keyring() => {
            tracing::warn!("cannot store the device token in the OS store ({e}): using the file");
            let file = CredentialStore::file(&config.state_dir);
            file.save_async(token).await?;
            file
        }
        Err(e) => return Err(e.into()),
    };

    let enrollment = Enrollment {
        device_id: answer.device_id.clone(),
        server_url: server.clone(),
        lease_keys: answer.lease_keys.clone(),
    };
    let state_dir = config.state_dir.clone();
    let journal_path = blocking(move || {
        let mut journal = Journal::open_in(&state_dir)?;
        journal.set_enrollment(&enrollment)?;
        Ok(journal.path().to_path_buf())
    })
    .await?;

    tracing::info!(
        device_id = %answer.device_id,
        credential_store = %store.describe(),
        "enrolled with {server}"
    );
    Ok(EnrollOutcome {
        device_id: answer.device_id,
        server_url: server,
        hostname,
        credential_store: store.describe(),
        lease_key_ids: answer.lease_keys.into_iter().map(|k| k.kid).collect(),
        journal_path,
    })
}

/// The enrollment request this attempt sends, journaled before it goes: the
/// pending one of an earlier attempt whose answer was lost, else a new one.
async fn journal_request(
    config: &Config,
    server: &str,
    token: &str,
    hostname: &str,
) -> Result<PendingEnrollment, EnrollError> {
    let (state_dir, server, hostname) = (
        config.state_dir.clone(),
        server.to_string(),
        hostname.to_string(),
    );
    let token_sha256 = sha256_hex(token);
    blocking(move || {
        let mut journal = Journal::open_in(&state_dir)?;
        let pending = journal.pending_enrollment()?;
        let (request, fresh) =
            request_for(pending, &server, &token_sha256, &hostname, new_request_id);
        if fresh {
            journal.set_pending_enrollment(&request)?;
        } else {
            tracing::info!(
                "asking {server} again with the enrollment request of an earlier attempt, \
                 whose answer never arrived"
            );
        }
        Ok(request)
    })
    .await
}

/// The enrollment request to send: the pending one when it went to the same
/// server with the same token from the same host (a retry: the server answers
/// it with the device it made), else a new one with id `new_id()`; and whether
/// it is new (to be journaled before it is sent). A clone of an imaged machine
/// has another hostname and so never reuses the image's pending request.
pub fn request_for(
    pending: Option<PendingEnrollment>,
    server_url: &str,
    token_sha256: &str,
    hostname: &str,
    new_id: impl FnOnce() -> String,
) -> (PendingEnrollment, bool) {
    match pending {
        Some(p)
            if p.server_url == server_url
                && p.token_sha256 == token_sha256
                && p.hostname == hostname =>
        {
            (p, false)
        }
        _ => (
            PendingEnrollment {
                request_id: new_id(),
                server_url: server_url.to_string(),
                token_sha256: token_sha256.to_string(),
                hostname: hostname.to_string(),
            },
            true,
        ),
    }
}

/// A new enrollment request id: 256 random bits (a secret, see [`PendingEnrollment`]).
fn new_request_id() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("fer_{hex}")
}

fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The token file self-enrollment reads for the config at `config_path`.
pub fn token_file_for(config_path: &Path) -> PathBuf {
    config_path.with_file_name(TOKEN_FILE_NAME)
}

/// Where a self-enrollment token came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    Env,
    File(PathBuf),
}

/// Reads an enrollment token file: a regular file of at most 4 KiB holding the
/// token (surrounding blanks ignored).
pub fn read_token_file(path: &Path) -> Result<String, EnrollError> {
    let err = |reason: String| EnrollError::TokenFile {
        path: path.to_path_buf(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    if !meta.is_file() || meta.len() > MAX_TOKEN_FILE {
        return Err(err(format!(
            "expected a file of at most {MAX_TOKEN_FILE} bytes holding the token"
        )));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                "enrollment token file {} is readable by other users (mode {mode:o}): \
                 install it with mode 0600",
                path.display()
            );
        }
    }
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let token = text.trim();
    if token.is_empty() || token.chars().any(char::is_whitespace) {
        return Err(err(
            "expected the token alone (fet_...), as flex-admin enroll-token printed it".into(),
        ));
    }
    Ok(token.to_string())
}

/// The token self-enrollment would use: `FLEX_ENROLL_TOKEN`, else the file.
pub fn find_token(token_file: &Path) -> Result<Option<(String, TokenSource)>, EnrollError> {
    if let Some(t) = std::env::var(TOKEN_ENV)
        .ok()
        .filter(|t| !t.trim().is_empty())
    {
        return Ok(Some((t.trim().to_string(), TokenSource::Env)));
    }
    match std::fs::symlink_metadata(token_file) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        _ => Ok(Some((
            read_token_file(token_file)?,
            TokenSource::File(token_file.to_path_buf()),
        ))),
    }
}

/// Makes sure this workstation is enrolled before the daemon starts: nothing to
/// do if it is, else enroll with the token from [`find_token`] and delete the
/// token file. `Ok(None)`: it was enrolled already.
pub async fn self_enroll(
    config: &Config,
    token_file: &Path,
) -> Result<Option<EnrollOutcome>, EnrollError> {
    let cfg = config.clone();
    let current = blocking(move || current_enrollment(&cfg)).await?;
    if let Some(e) = current {
        let moved = !same_server(&e.server_url, &config.server_url);
        if moved && token_file.exists() {
            // IT moved the workstation to another server and gave a token
            // from it: a device there, with that server's lease keys.
            tracing::info!(
                device_id = %e.device_id,
                "enrolled with {} but configured for {}: enrolling there with the token in {}",
                e.server_url,
                config.server_url,
                token_file.display()
            );
        } else {
            if token_file.exists() {
                // A fleet tool may push the file to every machine; an unused
                // secret is better gone.
                tracing::info!(
                    device_id = %e.device_id,
                    "already enrolled: removing the unused enrollment token file {}",
                    token_file.display()
                );
                remove_token_file(token_file);
            }
            return Ok(None);
        }
    }
    let Some((token, source)) = find_token(token_file)? else {
        return Err(EnrollError::NotEnrolled {
            token_file: token_file.to_path_buf(),
        });
    };
    tracing::info!(
        "not enrolled: enrolling with {} using the enrollment token from {}",
        config.server_url,
        match &source {
            TokenSource::Env => TOKEN_ENV.to_string(),
            TokenSource::File(p) => p.display().to_string(),
        }
    );
    let mut opts = EnrollOptions::for_config(config, token);
    // Not enrolled (checked above): an old journal entry without a credential
    // is replaced.
    opts.force = true;
    let outcome = enroll(config, opts).await?;
    match source {
        TokenSource::File(path) => remove_token_file(&path),
        TokenSource::Env => tracing::info!(
            "enrolled; {TOKEN_ENV} is no longer needed: remove it from the service's environment"
        ),
    }
    Ok(Some(outcome))
}

/// Whether two server URLs name the same server (a trailing slash aside).
fn same_server(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

/// Waits between self-enrollment attempts while the server cannot be reached.
const ENROLL_RETRY_FIRST: std::time::Duration = std::time::Duration::from_secs(5);
const ENROLL_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(300);

/// [`self_enroll`] at the daemon's start, retried while the server cannot be
/// reached (a machine booting off the network, a server being upgraded), with
/// `waiting` told each reason so the service manager can show it; the
/// watchdog is pinged meanwhile. A refused token or none at all ends it.
pub async fn enroll_at_start(
    config: &Config,
    token_file: &Path,
    mut waiting: impl FnMut(&EnrollError),
) -> Result<(), EnrollError> {
    let mut watchdog = crate::daemon::watchdog::Watchdog::from_env();
    let mut wait = ENROLL_RETRY_FIRST;
    loop {
        match self_enroll(config, token_file).await {
            Ok(Some(outcome)) => {
                tracing::info!("{}", outcome.to_string().replace('\n', "; "));
                return Ok(());
            }
            Ok(None) => return Ok(()),
            Err(e) if e.is_temporary() => {
                tracing::warn!("cannot enroll yet, retrying in {wait:?}: {e}");
                waiting(&e);
                let until = tokio::time::Instant::now() + wait;
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep_until(until) => break,
                        _ = watchdog.tick() => watchdog.ping(),
                    }
                }
                wait = (wait * 2).min(ENROLL_RETRY_MAX);
            }
            Err(e) => return Err(e),
        }
    }
}

fn remove_token_file(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(
                "cannot remove the enrollment token file {}: {e}; delete it by hand",
                path.display()
            );
        }
    }
}

/// This machine's name as the admin will see it in the device list.
pub fn hostname() -> String {
    sysinfo::System::host_name()
        .filter(|h| !h.trim().is_empty())
        .unwrap_or_else(|| "unknown-host".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(state_dir: &std::path::Path, url: &str) -> Config {
        Config::parse(&format!(
            "server_url = \"{url}\"\nstate_dir = '{}'\n",
            state_dir.display()
        ))
        .unwrap()
    }

    /// A one-request HTTP server answering `status` with `body`; bound before the
    /// client starts, so no readiness wait is needed.
    async fn answer_once(status: &'static str, body: &'static str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            // Read the request head and its JSON body before answering.
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = sock.read(&mut buf).await.unwrap();
                req.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&req);
                if let Some((head, rest)) = text.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap())
                        })
                        .unwrap_or(0);
                    if rest.len() >= len {
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
            let resp = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            sock.write_all(resp.as_bytes()).await.unwrap();
        });
        url
    }

    #[tokio::test]
    async fn unusable_lease_keys_store_nothing() {
        let url = answer_once(
            "200 OK",
            r#"{"device_id":"d-1","device_token":"dt-1","lease_keys":[{"kid":"k1","public_key":"not-a-key"}]}"#,
        )
        .await;
        let tmp = tempfile::tempdir().unwrap();
        let err = run_enroll_with(&config(tmp.path(), &url), &url, "et", StoreChoice::File)
            .await
            .unwrap_err();
        assert!(matches!(err, EnrollError::BadKeys { .. }), "{err:?}");
        assert!(err.to_string().contains("'k1'"), "{err}");
        assert!(!tmp.path().join(crate::credentials::TOKEN_FILE).exists());
        // The journal was opened before the token was spent, but records nothing.
        let journal = Journal::open_in(tmp.path()).unwrap();
        assert!(journal.enrollment().unwrap().is_none());
    }

    #[tokio::test]
    async fn a_failing_server_is_not_called_unreachable() {
        let url = answer_once(
            "500 Internal Server Error",
            r#"{"error":{"code":"internal","message":"database is locked"}}"#,
        )
        .await;
        let tmp = tempfile::tempdir().unwrap();
        let err = run_enroll_with(&config(tmp.path(), &url), &url, "et", StoreChoice::File)
            .await
            .unwrap_err();
        assert!(matches!(err, EnrollError::Server { .. }), "{err:?}");
        assert!(err.to_string().contains("database is locked"), "{err}");
    }

    #[test]
    fn a_retry_reuses_the_pending_request_only_for_the_same_server_token_and_host() {
        let ids = std::cell::Cell::new(0);
        let next = || {
            ids.set(ids.get() + 1);
            format!("fer_{}", ids.get())
        };
        let (first, fresh) = request_for(None, "https://a", "t1", "ws-1", next);
        assert!(fresh);
        let (again, fresh) = request_for(Some(first.clone()), "https://a", "t1", "ws-1", next);
        assert_eq!((again.request_id.as_str(), fresh), ("fer_1", false));
        for (server, token, host) in [
            ("https://b", "t1", "ws-1"),
            ("https://a", "t2", "ws-1"),
            ("https://a", "t1", "ws-clone"),
        ] {
            let (other, fresh) = request_for(Some(first.clone()), server, token, host, next);
            assert!(
                fresh && other.request_id != first.request_id,
                "{server} {token} {host}"
            );
            assert_eq!(
                (
                    other.server_url.as_str(),
                    other.token_sha256.as_str(),
                    other.hostname.as_str()
                ),
                (server, token, host)
            );
        }
        let id = new_request_id();
        assert!(flex_protocol::api::valid_enrollment_request_id(&id), "{id}");
        assert_ne!(id, new_request_id());
    }

    #[test]
    fn hostname_is_not_empty() {
        assert!(!hostname().is_empty());
    }

    #[tokio::test]
    async fn unreachable_server_names_the_url_and_what_to_check() {
        // A port that was just ours and is now closed: connection refused.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let url = format!("http://127.0.0.1:{port}");
        let tmp = tempfile::tempdir().unwrap();
        let err = run_enroll_with(&config(tmp.path(), &url), &url, "et", StoreChoice::File)
            .await
            .unwrap_err();
        assert!(matches!(err, EnrollError::Unreachable { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains(&url) && msg.contains("firewall") && msg.contains("ca_file"),
            "{msg}"
        );
        // Nothing was stored.
        assert!(!tmp.path().join(crate::credentials::TOKEN_FILE).exists());
    }

    #[tokio::test]
    async fn a_bad_server_url_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let err = run_enroll_with(
            &config(tmp.path(), "https://flex.example.com"),
            "flex.example.com",
            "et",
            StoreChoice::File,
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains("'flex.example.com'"), "{err}");
    }
}
