//! Wiring: configuration, admin token, database, listener and TLS.
//!
//! The server prints `flex-server listening on URL` on stdout once the socket is
//! bound, so scripts and tests wait on that line instead of sleeping. Before
//! that it raises its open-file limit and sizes its connection cap to fit
//! (see [`crate::net`]).

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::api::{router, AppState};
use crate::clock::{Clock, SystemClock, TestClock};
use crate::config::{Config, ConfigError, LimitsConfig};
use crate::net::admission::Admission;
use crate::rates::{RateSheet, RatesError};
use crate::store::{Backend, Database, Store, StoreError};

/// `meta` key holding the test clock, so a restarted test server keeps its time.
pub const TEST_CLOCK_KEY: &str = "test_clock.now";
/// Environment variable that overrides the admin token.
pub const ADMIN_TOKEN_ENV: &str = "FLEX_ADMIN_TOKEN";

#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// PostgreSQL instead of `data_dir/flex.db` (`--database-url`).
    pub database_url: Option<String>,
    pub config: Option<PathBuf>,
    pub test_clock: bool,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub rates: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Rates(#[from] RatesError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("--test-clock is refused: the config says production = true")]
    TestClockInProduction,
    #[error("--tls-cert and --tls-key must be given together")]
    TlsHalf,
    #[error(
        "the admin token from {from} is {len} characters long: use at least {MIN_ADMIN_TOKEN} \
         (e.g. openssl rand -hex 24), or remove it to have one generated into DATA_DIR/admin-token"
    )]
    WeakAdminToken { from: &'static str, len: usize },
    #[error("cannot load TLS certificate {cert} / key {key}: {source}")]
    Tls {
        cert: PathBuf,
        key: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server stopped with an error: {0}")]
    Serve(std::io::Error),
    #[error(transparent)]
    Mail(#[from] crate::mail::MailError),
    #[error(transparent)]
    Backup(#[from] crate::backup::BackupError),
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ServerError + 'a {
    move |source| ServerError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Shortest admin token accepted: a token anyone can guess opens the ledger.
pub const MIN_ADMIN_TOKEN: usize = 16;

fn strong(token: &str, from: &'static str) -> Result<String, ServerError> {
    let token = token.trim();
    if token.chars().count() < MIN_ADMIN_TOKEN {
        return Err(ServerError::WeakAdminToken {
            from,
            len: token.chars().count(),
        });
    }
    Ok(token.to_string())
}

/// The admin token: environment, else config, else a generated `admin-token` file.
/// A token that is set (even empty) must be at least [`MIN_ADMIN_TOKEN`] long.
/// On PostgreSQL the generated token is kept in the database, so that every
/// replica takes the same one, and copied to each replica's `admin-token` file.
fn admin_token(config: &Config, data_dir: &Path, store: &Store) -> Result<String, ServerError> {
    if let Some(t) = std::env::var_os(ADMIN_TOKEN_ENV) {
        let t = strong(&t.to_string_lossy(), ADMIN_TOKEN_ENV)?;
        tracing::info!("admin token taken from {ADMIN_TOKEN_ENV}");
        return Ok(t);
    }
    if let Some(t) = &config.admin_token {
        let t = strong(t, "admin_token in the config file")?;
        tracing::info!("admin token taken from the config file");
        return Ok(t);
    }
    let path = data_dir.join("admin-token");
    if store.backend() == Backend::Postgres {
        let token = store.shared_secret(SHARED_ADMIN_TOKEN, new_admin_token)?;
        if std::fs::read_to_string(&path)
            .ok()
            .as_deref()
            .map(str::trim)
            != Some(token.as_str())
        {
            write_secret(&path, &token)?;
        }
        tracing::info!(path = %path.display(), "admin token shared through the database");
        return Ok(token);
    }
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => {
            tracing::info!(path = %path.display(), "admin token read from file");
            return Ok(t.trim().to_string());
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("read", &path)(e)),
    }
    let token = new_admin_token();
    write_secret(&path, &token)?;
    tracing::info!(path = %path.display(), "generated an admin token (mode 0600)");
    Ok(token)
}

/// `meta` key of the admin token generated for PostgreSQL replicas.
const SHARED_ADMIN_TOKEN: &str = "admin_token";

fn new_admin_token() -> String {
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    format!("fat_{}", hex::encode(b))
}

fn write_secret(path: &Path, secret: &str) -> Result<(), ServerError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io("create", path))?;
    f.write_all(secret.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(io("write", path))
}

fn prepare_data_dir(dir: &Path) -> Result<(), ServerError> {
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(io("create data directory", dir))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io("set permissions on", dir))?;
    }
    Ok(())
}

/// Everything the server needs, built but not yet serving.
pub struct Prepared {
    pub state: AppState,
    pub listener: std::net::TcpListener,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Mails admin notices when `[smtp]` is configured.
    pub mailer: Option<crate::mail::Mailer>,
    /// How often the background work (notices, the usage rollup) runs.
    pub background_interval: std::time::Duration,
    /// Held while serving a SQLite data directory: one server per ledger file,
    /// and `flex-server restore` waits for it to stop.
    pub dir_lock: Option<crate::backup::DirLock>,
    pub limits: LimitsConfig,
    /// The connection caps, the total already fitted to the open-file limit.
    pub admission: Admission,
}

/// The certificate chain and key, for HTTP/1.1 only (see [`crate::net::serve`]).
fn tls_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, ServerError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let failed = |source: std::io::Error| ServerError::Tls {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        source,
    };
    let pem = |e: rustls::pki_types::pem::Error| failed(std::io::Error::other(e.to_string()));
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(pem)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem)?;
    let private = PrivateKeyDer::from_pem_file(key).map_err(pem)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(chain, private))
        .map_err(|e| failed(std::io::Error::other(e)))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

pub fn prepare(opts: &ServerOptions) -> Result<Prepared, ServerError> {
    let config = match &opts.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    if opts.test_clock && config.production {
        return Err(ServerError::TestClockInProduction);
    }
    let tls = match (&opts.tls_cert, &opts.tls_key) {
        (Some(c), Some(k)) => Some(tls_config(c, k)?),
        (None, None) => None,
        _ => return Err(ServerError::TlsHalf),
    };
    let limits = config.limits.clone();
    let nofile = crate::net::nofile::raise();
    let total = crate::net::nofile::connection_cap(limits.max_connections, nofile);
    if total < limits.max_connections {
        tracing::warn!(
            max_connections = limits.max_connections,
            open_file_limit = nofile,
            "serving at most {total} connections: the open-file limit leaves no room for more; \
             raise LimitNOFILE= (the packaged unit sets 65536)"
        );
    }
    let admission = Admission::new(total, limits.max_connections_per_address);
    let mailer = config
        .smtp
        .as_ref()
        .map(crate::mail::Mailer::new)
        .transpose()?;
    let rates = match &opts.rates {
        Some(p) => RateSheet::load(p)?,
        None => RateSheet::sample(),
    };
    prepare_data_dir(&opts.data_dir)?;

    let test_clock = opts.test_clock.then(|| TestClock::new(Utc::now()));
    let clock: Arc<dyn Clock> = match &test_clock {
        Some(c) => Arc::new(c.clone()),
        None => Arc::new(SystemClock),
    };
    let database = match &opts.database_url {
        Some(url) => Database::Postgres { url: url.clone() },
        None => Database::Sqlite {
            data_dir: opts.data_dir.clone(),
        },
    };
    let dir_lock = match &database {
        Database::Sqlite { data_dir } => Some(crate::backup::DirLock::take(data_dir)?),
        Database::Postgres { .. } => None,
    };
    let store = Store::open_at(&database, clock, config.policy.clone(), rates)?
        .with_enrollment_ttl(config.enrollment_token_ttl);
    tracing::info!(backend = store.backend().name(), database = %database.describe(), "ledger opened");
    let token = admin_token(&config, &opts.data_dir, &store)?;
    if let Some(c) = &test_clock {
        tracing::warn!("test clock enabled: PUT /v1/admin/test-clock sets the server's time");
        if let Some(saved) = store.meta(TEST_CLOCK_KEY)? {
            if let Ok(t) = DateTime::parse_from_rfc3339(&saved) {
                c.set(t.with_timezone(&Utc));
            }
        }
    }
    let listener = bind(opts.listen).map_err(|source| ServerError::Bind {
        addr: opts.listen,
        source,
    })?;
    let throttle = crate::net::throttle::AuthThrottle::new(
        limits.admin_auth_failures,
        limits.admin_auth_window,
    );
    Ok(Prepared {
        state: AppState::new(Arc::new(store), &token, test_clock)
            .with_secure_cookies(tls.is_some())
            .with_auth_throttle(throttle),
        listener,
        tls,
        mailer,
        background_interval: config.background_interval,
        dir_lock,
        limits,
        admission,
    })
}

/// Connections the kernel queues before the server accepts them. std's 128 is
/// too few under a burst (a slowloris opening thousands at once): a full queue
/// drops new SYNs, and an agent's connect then waits for its 1 s retransmit.
/// The kernel caps it at `net.core.somaxconn` (4096 by default).
const LISTEN_BACKLOG: i32 = 4096;

/// A non-blocking listener on `addr` with [`LISTEN_BACKLOG`].
fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    // As std does: a restarted server rebinds while old connections linger.
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}

/// Serves until SIGINT/SIGTERM.
pub async fn serve(p: Prepared) -> Result<(), ServerError> {
    let addr = p.listener.local_addr().map_err(ServerError::Serve)?;
    let scheme = if p.tls.is_some() { "https" } else { "http" };
    if p.tls.is_none() && !addr.ip().is_loopback() {
        tracing::warn!(%addr, "serving plain HTTP on a non-loopback address: tokens travel unencrypted; use --tls-cert/--tls-key");
    }

    // Time-driven notices (lot expiry) without waiting for a request, on the
    // one replica that leads (see store/leader.rs).
    let ticker = Arc::clone(&p.state.store);
    let interval = p.background_interval;
    tokio::spawn(async move {
        let mut every = tokio::time::interval(interval);
        loop {
            every.tick().await;
            match ticker.run(|s| s.lead()).await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!("cannot tell which replica runs the background work: {e}");
                    continue;
                }
            }
            if let Err(e) = ticker.run(|s| s.tick()).await {
                tracing::warn!("notice check failed: {e}");
            }
            // Keeps the reports' usage rollup close to the ledger.
            if let Err(e) = ticker.run(|s| s.fold_usage()).await {
                tracing::warn!("usage rollup failed: {e}");
            }
        }
    });

    if let Some(mailer) = p.mailer {
        tokio::spawn(mailer.run(Arc::clone(&p.state.store)));
    }

    let store = Arc::clone(&p.state.store);
    let _dir_lock = p.dir_lock;
    let app = router(p.state);
    let listener = tokio::net::TcpListener::from_std(p.listener).map_err(ServerError::Serve)?;
    println!("flex-server listening on {scheme}://{addr}");
    let _ = std::io::stdout().flush();
    let edge = crate::net::serve::Edge {
        limits: p.limits,
        admission: p.admission,
        tls: p.tls,
    };
    let served = crate::net::serve::run(listener, app, edge, shutdown_signal())
        .await
        .map_err(ServerError::Serve);
    // Another replica takes the background work at once.
    let _ = store
        .run(|s| {
            s.resign();
            Ok(())
        })
        .await;
    served
}
