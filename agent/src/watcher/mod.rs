//! Detects product processes starting and exiting.
//!
//! [`Watcher::start`] spawns a task that reports [`ProcEvent`]s for processes whose
//! executable matches a product of the rate sheet (see [`Matcher`]; the names a
//! process goes by, including the program a dynamic loader runs, come from
//! [`crate::process::Names`]). On Linux the source is the kernel process connector
//! ([`connector`]): exec and exit events arrive within a millisecond, and
//! `/proc/PID` is read only for processes that just exec'd. When the connector cannot be opened (no CAP_NET_ADMIN, another network
//! namespace, an old kernel) the watcher polls instead: it lists `/proc` every
//! interval and reads details only for pids it has not seen before, because a full
//! process-table refresh costs about seventy times as much CPU. On other systems it
//! polls with `sysinfo`; on Windows with Toolhelp snapshots ([`windows_poll`]), woken
//! at once by ETW process events where the service may open a kernel-provider
//! session ([`windows_etw`]).
//!
//! Processes already running when the watcher starts, or when the rate sheet changes
//! to include them, are reported as [`ProcEventKind::Adopted`].

#[cfg(target_os = "linux")]
pub mod connector;
#[cfg(target_os = "linux")]
mod identify;
#[cfg(unix)]
mod sysinfo_poll;
mod tracker;
#[cfg(windows)]
mod windows_etw;
#[cfg(windows)]
mod windows_poll;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use flex_protocol::api::Product;
use tokio::sync::{mpsc, Notify};

use crate::account::AccountId;
use crate::process::ProcessId;

pub use tracker::Matcher;

/// A product process starting or ending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcEvent {
    pub kind: ProcEventKind,
    /// The process (pid and start time).
    pub process: ProcessId,
    /// Who runs it (the real uid on Unix): the user the product is charged to.
    pub owner: AccountId,
    /// Rate-sheet id of the product.
    pub product: flex_protocol::ids::ProductId,
    /// The name that matched: executable file name, comm or argv[0] base name.
    pub exe_name: String,
    pub exe_path: Option<PathBuf>,
    pub started_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcEventKind {
    /// Was running before the watcher knew it as a product.
    Adopted,
    Started,
    /// `code` is the exit status, `signal` the signal that killed it; both are
    /// `None` when the source cannot tell (polling).
    Exited {
        code: Option<i32>,
        signal: Option<i32>,
    },
}

/// Which mechanism reports processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DetectionSource {
    ProcConnector,
    Polling,
    /// Windows: ETW process events wake the poller (see `windows_etw`).
    Etw,
}

impl DetectionSource {
    /// The name shown by `flexctl status`.
    pub fn as_str(self) -> &'static str {
        match self {
            DetectionSource::ProcConnector => "proc-connector",
            DetectionSource::Polling => "polling",
            DetectionSource::Etw => "etw",
        }
    }
}

/// Which source to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceChoice {
    /// The process connector where it works, else polling.
    Auto,
    /// The process connector or an error (tests, diagnostics).
    ProcConnector,
    Polling,
}

#[derive(Debug, Clone)]
pub struct WatcherConfig {
    pub source: SourceChoice,
    pub poll_interval: Duration,
    /// Events buffered before the watcher waits for the daemon.
    pub channel_capacity: usize,
    /// Where product files are installed: indexed at start, so a product is
    /// recognised by its file under any name (Linux).
    pub product_dirs: Vec<PathBuf>,
}

impl Default for WatcherConfig {
    fn default() -> Self {
        WatcherConfig {
            source: SourceChoice::Auto,
            poll_interval: Duration::from_secs(1),
            channel_capacity: 1024,
            product_dirs: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[cfg(target_os = "linux")]
    #[error(transparent)]
    Connector(#[from] connector::ConnectorError),
    #[error("the process connector exists only on linux; use polling")]
    ConnectorUnsupported,
    #[error("process detection is not implemented on this operating system yet; use flexctl run")]
    Unsupported,
}

/// Controls a running watcher; dropping it stops the watcher.
pub struct WatcherHandle {
    source: tracker::SharedSource,
    matcher: Arc<RwLock<Matcher>>,
    rescan: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl WatcherHandle {
    /// The source in use now (the connector falls back to polling if it fails).
    pub fn source(&self) -> DetectionSource {
        tracker::load_source(&self.source)
    }

    /// Replaces the rate sheet. Running processes that now match are reported as
    /// adopted; tracked ones keep their product until they exit.
    pub fn set_products(&self, products: &[Product]) {
        *self.matcher.write().unwrap_or_else(|e| e.into_inner()) = Matcher::new(products);
        self.rescan.notify_one();
    }
}

impl Drop for WatcherHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub struct Watcher;

impl Watcher {
    /// Starts watching for `products`. Must be called inside a tokio runtime.
    /// The watcher stops when the handle or the receiver is dropped.
    pub fn start(
        config: WatcherConfig,
        products: &[Product],
    ) -> Result<(WatcherHandle, mpsc::Receiver<ProcEvent>), WatchError> {
        let matcher = Arc::new(RwLock::new(Matcher::new(products)));
        let rescan = Arc::new(Notify::new());
        let (tx, rx) = mpsc::channel(config.channel_capacity.max(1));
        let source = tracker::SharedSource::default();
        let task = spawn_source(&config, source.clone(), matcher.clone(), rescan.clone(), tx)?;
        Ok((
            WatcherHandle {
                source,
                matcher,
                rescan,
                task,
            },
            rx,
        ))
    }
}

#[cfg(target_os = "linux")]
fn spawn_source(
    config: &WatcherConfig,
    source: tracker::SharedSource,
    matcher: Arc<RwLock<Matcher>>,
    rescan: Arc<Notify>,
    tx: mpsc::Sender<ProcEvent>,
) -> Result<tokio::task::JoinHandle<()>, WatchError> {
    let connector = match config.source {
        SourceChoice::Polling => None,
        SourceChoice::ProcConnector => Some(connector::ProcConnector::open()?),
        SourceChoice::Auto => match connector::ProcConnector::open() {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(error = %e, "process connector unavailable; polling /proc instead");
                None
            }
        },
    };
    let interval = config.poll_interval;
    let mut tracker = tracker::Tracker::new(config.product_dirs.clone());
    let initial = tracker.scan(&matcher.read().unwrap_or_else(|e| e.into_inner()), true);
    Ok(match connector {
        Some(c) => {
            tracker::store_source(&source, DetectionSource::ProcConnector);
            tokio::spawn(tracker::run_connector(
                c, tracker, initial, source, interval, matcher, rescan, tx,
            ))
        }
        None => {
            tracker::store_source(&source, DetectionSource::Polling);
            tokio::spawn(tracker::run_procfs_polling(
                tracker, initial, interval, matcher, rescan, tx,
            ))
        }
    })
}

#[cfg(all(unix, not(target_os = "linux")))]
fn spawn_source(
    config: &WatcherConfig,
    source: tracker::SharedSource,
    matcher: Arc<RwLock<Matcher>>,
    rescan: Arc<Notify>,
    tx: mpsc::Sender<ProcEvent>,
) -> Result<tokio::task::JoinHandle<()>, WatchError> {
    if config.source == SourceChoice::ProcConnector {
        return Err(WatchError::ConnectorUnsupported);
    }
    tracker::store_source(&source, DetectionSource::Polling);
    let mut tracker = sysinfo_poll::SysinfoTracker::default();
    let initial = tracker.scan(&matcher.read().unwrap_or_else(|e| e.into_inner()), true);
    Ok(tokio::spawn(sysinfo_poll::run(
        tracker,
        initial,
        config.poll_interval,
        matcher,
        rescan,
        tx,
    )))
}

/// Windows: Toolhelp snapshots, woken by ETW process events when a session can
/// be started (`SourceChoice::Auto`), on the poll interval otherwise.
#[cfg(windows)]
fn spawn_source(
    config: &WatcherConfig,
    source: tracker::SharedSource,
    matcher: Arc<RwLock<Matcher>>,
    rescan: Arc<Notify>,
    tx: mpsc::Sender<ProcEvent>,
) -> Result<tokio::task::JoinHandle<()>, WatchError> {
    if config.source == SourceChoice::ProcConnector {
        return Err(WatchError::ConnectorUnsupported);
    }
    tracker::store_source(&source, DetectionSource::Polling);
    let wake = Arc::new(Notify::new());
    let session = match config.source {
        SourceChoice::Polling => None,
        _ => match windows_etw::start(wake.clone(), source.clone()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::info!(error = %e, "no ETW process events; detection polls");
                None
            }
        },
    };
    let mut tracker = windows_poll::WindowsTracker::default();
    let initial = tracker.scan(&matcher.read().unwrap_or_else(|e| e.into_inner()), true);
    Ok(tokio::spawn(windows_poll::run(
        tracker,
        initial,
        windows_poll::Wakers {
            interval: config.poll_interval,
            events: wake,
            session,
        },
        matcher,
        rescan,
        tx,
    )))
}

#[cfg(not(any(unix, windows)))]
fn spawn_source(
    _config: &WatcherConfig,
    _source: tracker::SharedSource,
    _matcher: Arc<RwLock<Matcher>>,
    _rescan: Arc<Notify>,
    _tx: mpsc::Sender<ProcEvent>,
) -> Result<tokio::task::JoinHandle<()>, WatchError> {
    Err(WatchError::Unsupported)
}

#[cfg(all(test, unix))]
mod tests;
