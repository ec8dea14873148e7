//! `flex-agent.exe --service`: the agent under the Service Control Manager.
//!
//! The MSI registers the service `flex-agent` (automatic, LocalSystem) with
//! `--service --config C:\ProgramData\Flex\agent.toml`, writes that config and
//! places the enrollment token beside it (`flex-agent.exe configure`, see
//! [`crate::provision`]), then (re)starts the service (`--start-service`). On
//! start the service sets its own recovery (restart after a failure) and
//! reports Running; then, as on Linux, it enrolls itself if needed
//! ([`crate::enroll::enroll_at_start`], retried while the server cannot be
//! reached, a stop honoured meanwhile) with the token in `enroll-token` next to
//! the config. Then it runs the daemon until the SCM says stop or shutdown;
//! stopping journals the sessions like SIGTERM does on Linux. A config or
//! enrollment problem stops it with the service-specific exit code 78, as on
//! Linux, the reason logged before the stop is reported; the recovery actions
//! start it again a minute later, so a token put in place later is picked up.
//! It logs to daily files in `C:\ProgramData\Flex\logs` (14 kept).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use windows_service::service::{
    ServiceAccess, ServiceAction, ServiceActionType, ServiceControl, ServiceControlAccept,
    ServiceExitCode, ServiceFailureActions, ServiceFailureResetPeriod, ServiceState, ServiceStatus,
    ServiceType,
};
use windows_service::service_control_handler::{self, ServiceControlHandlerResult};
use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};
use windows_service::{define_windows_service, service_dispatcher};

use crate::config::Config;
use crate::enroll::{self, exit};

/// The service's name, as `sc query flex-agent` knows it.
pub const SERVICE_NAME: &str = "flex-agent";

/// Log files kept (one per day).
const LOG_FILES: usize = 14;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Enroll(#[from] enroll::EnrollError),
    #[error(transparent)]
    Daemon(#[from] crate::daemon::DaemonError),
    #[error("cannot talk to the service control manager: {}", scm_reason(.0))]
    Scm(#[from] windows_service::Error),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

impl ServiceError {
    /// The service-specific exit code: 78 for what a restart alone cannot fix
    /// (config, enrollment), as `flex-agent` exits on Linux; 1 otherwise.
    pub fn exit_code(&self) -> u32 {
        use crate::daemon::DaemonError;
        match self {
            ServiceError::Config(_)
            | ServiceError::Enroll(_)
            | ServiceError::Daemon(DaemonError::NotEnrolled { .. } | DaemonError::BadKeys { .. }) => {
                exit::CONFIG as u32
            }
            _ => 1,
        }
    }
}

/// The crate's message and the OS error under it ("IO error in winapi call"
/// alone says nothing).
fn scm_reason(e: &windows_service::Error) -> String {
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

/// The Windows-only ways `flex-agent.exe` is started: `--start-service` (by
/// the MSI) and `--service` (by the SCM). `None`: neither, run as on Unix.
pub fn from_command_line(cli: &crate::cli::Cli) -> Option<i32> {
    if cli.start_service {
        return Some(match start() {
            Ok(()) => {
                println!("asked the service control manager to (re)start {SERVICE_NAME}");
                0
            }
            Err(e) => {
                eprintln!("flex-agent: cannot start the service: {e}");
                1
            }
        });
    }
    if !cli.service {
        return None;
    }
    let filter = tracing_subscriber::EnvFilter::try_from_env("FLEX_AGENT_LOG")
        .unwrap_or_else(|_| "info".into());
    let logs = crate::paths::current()
        .log_dir
        .unwrap_or_else(|| std::env::temp_dir().join("flex-agent"));
    init_logging(&logs, filter);
    Some(match run(cli.config.clone()) {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("{e}");
            1
        }
    })
}

static CONFIG_PATH: OnceLock<PathBuf> = OnceLock::new();

/// Hands this process to the SCM as service `flex-agent`; returns when the
/// service has stopped. `config` is the agent's config file.
pub fn run(config: PathBuf) -> Result<(), ServiceError> {
    let _ = CONFIG_PATH.set(config);
    service_dispatcher::start(SERVICE_NAME, ffi_service_main)?;
    Ok(())
}

/// How long `--start-service` waits for a running service to stop.
const STOP_WAIT: Duration = Duration::from_secs(60);

/// Asks the SCM to start the installed service, not waiting for it to run; a
/// service that runs is stopped first (the SCM refuses a start until the stop
/// completes), so that what the install just configured applies.
pub fn start() -> Result<(), ServiceError> {
    let manager = ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT)?;
    let service = manager.open_service(
        SERVICE_NAME,
        ServiceAccess::START | ServiceAccess::STOP | ServiceAccess::QUERY_STATUS,
    )?;
    if service.query_status()?.current_state != ServiceState::Stopped {
        let _ = service.stop();
        let deadline = Instant::now() + STOP_WAIT;
        while service.query_status()?.current_state != ServiceState::Stopped
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    service.start::<&str>(&[])?;
    Ok(())
}

/// Sends the agent's logs to daily files in `dir` (created if missing). Returns
/// false when the directory cannot be used, and logs then go nowhere.
pub fn init_logging(dir: &Path, filter: tracing_subscriber::EnvFilter) -> bool {
    let _ = std::fs::create_dir_all(dir);
    let appender = tracing_appender::rolling::Builder::new()
        .rotation(tracing_appender::rolling::Rotation::DAILY)
        .filename_prefix("flex-agent")
        .filename_suffix("log")
        .max_log_files(LOG_FILES)
        .build(dir);
    match appender {
        Ok(appender) => {
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_ansi(false)
                .with_writer(appender)
                .init();
            true
        }
        Err(_) => false,
    }
}

define_windows_service!(ffi_service_main, service_main);

fn service_main(_args: Vec<OsString>) {
    let config = CONFIG_PATH
        .get()
        .cloned()
        .unwrap_or_else(|| crate::paths::current().config);
    if let Err(e) = serve(&config) {
        tracing::error!(
            "cannot tell the service control manager about flex-agent: {}",
            scm_reason(&e)
        );
    }
}

fn status(state: ServiceState, exit: u32, wait: Duration) -> ServiceStatus {
    ServiceStatus {
        service_type: ServiceType::OWN_PROCESS,
        current_state: state,
        controls_accepted: if state == ServiceState::Running {
            ServiceControlAccept::STOP | ServiceControlAccept::SHUTDOWN
        } else {
            ServiceControlAccept::empty()
        },
        exit_code: if exit == 0 {
            ServiceExitCode::Win32(0)
        } else {
            ServiceExitCode::ServiceSpecific(exit)
        },
        checkpoint: 0,
        wait_hint: wait,
        process_id: None,
    }
}

/// Runs the service; `Err` only when the SCM could not be told its state (the
/// service's own failures are logged and reported as its exit code).
fn serve(config_path: &Path) -> Result<(), windows_service::Error> {
    let stop = Arc::new(Notify::new());
    let on_control = {
        let stop = stop.clone();
        move |control| match control {
            ServiceControl::Stop | ServiceControl::Shutdown => {
                // notify_one keeps the wake-up if the daemon is not waiting yet.
                stop.notify_one();
                ServiceControlHandlerResult::NoError
            }
            ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
            _ => ServiceControlHandlerResult::NotImplemented,
        }
    };
    let handle = service_control_handler::register(SERVICE_NAME, on_control)?;
    handle.set_service_status(status(
        ServiceState::StartPending,
        0,
        Duration::from_secs(30),
    ))?;
    let result = (|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(ServiceError::Runtime)?;
        runtime.block_on(async {
            let config = Config::load(config_path)?;
            configure_recovery();
            // Running from here, as systemd's READY with a status line: a stop
            // is honoured while the agent waits for the server to enroll.
            handle.set_service_status(status(ServiceState::Running, 0, Duration::ZERO))?;
            let stopped = stop.notified();
            tokio::pin!(stopped);
            let token_file = enroll::token_file_for(config_path);
            tokio::select! {
                _ = &mut stopped => return Ok(()),
                enrolled = enroll::enroll_at_start(&config, &token_file, |_| {}) => enrolled?,
            }
            crate::daemon::run(config, stopped, |ready| {
                tracing::info!(
                    pipe = %ready.socket.display(),
                    device_id = %ready.device_id,
                    credential_store = %ready.credential_store,
                    detection = %ready.detection,
                    "flex-agent service running"
                );
            })
            .await?;
            let _ = handle.set_service_status(status(
                ServiceState::StopPending,
                0,
                Duration::from_secs(10),
            ));
            Ok::<_, ServiceError>(())
        })
    })();
    finish(&result, |code| {
        handle.set_service_status(status(ServiceState::Stopped, code, Duration::ZERO))
    })
}

/// The end of the service: the reason logged, then `report` (SERVICE_STOPPED
/// with the exit code; a non-zero one is a failure the SCM's recovery
/// restarts) called. In that order: once the SCM has SERVICE_STOPPED it may
/// end the process at any moment, and a reason logged after it was lost about
/// once in thirty failed starts (the log writer is synchronous, so logged is
/// written).
fn finish<R>(result: &Result<(), ServiceError>, report: impl FnOnce(u32) -> R) -> R {
    let code = match result {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("flex-agent service stopped: {e}");
            e.exit_code()
        }
    };
    report(code)
}

/// Restart after a failure, like systemd's Restart=on-failure: after 5 s,
/// 5 s, then 60 s; the count resets after a day without failure. Set by the
/// service itself so that however it was registered, it recovers.
fn configure_recovery() {
    let result = (|| {
        let manager = ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT)?;
        let service = manager.open_service(SERVICE_NAME, ServiceAccess::CHANGE_CONFIG)?;
        let restart = |secs| ServiceAction {
            action_type: ServiceActionType::Restart,
            delay: Duration::from_secs(secs),
        };
        service.update_failure_actions(ServiceFailureActions {
            reset_period: ServiceFailureResetPeriod::After(Duration::from_secs(86_400)),
            reboot_msg: None,
            command: None,
            actions: Some(vec![restart(5), restart(5), restart(60)]),
        })?;
        service.set_failure_actions_on_non_crash_failures(true)
    })();
    if let Err(e) = result {
        tracing::warn!(
            "cannot set the service's recovery actions: {}",
            scm_reason(&e)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Log lines written so far, shared with the test.
    #[derive(Clone, Default)]
    struct Lines(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Issue 18, item 6: the reason is in the log before SERVICE_STOPPED is
    /// reported (after it the process may be gone), and the exit code is 78.
    #[test]
    fn the_reason_is_logged_before_the_stop_is_reported() {
        let lines = Lines::default();
        let writer = {
            let lines = lines.clone();
            move || lines.clone()
        };
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(writer)
            .finish();
        let failed: Result<(), ServiceError> = Err(ServiceError::Config(
            crate::config::Config::parse("server_url = \"flex.corp:8443\"").unwrap_err(),
        ));
        let logged_at_report = tracing::subscriber::with_default(subscriber, || {
            finish(&failed, |code| {
                (
                    code,
                    String::from_utf8_lossy(&lines.0.lock().unwrap()).into_owned(),
                )
            })
        });
        let (code, log) = logged_at_report;
        assert_eq!(code, 78);
        assert!(
            log.contains("ERROR") && log.contains("flex.corp:8443"),
            "not in the log when STOPPED was reported: {log:?}"
        );
        assert_eq!(finish(&Ok(()), |code| code), 0);
    }
}
