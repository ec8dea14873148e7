//! `flex-agent.exe --service`: the agent under the Service Control Manager.
//!
//! The MSI registers the service `flex-agent` (automatic, LocalSystem) with
//! `--service --config C:\ProgramData\Flex\agent.toml`. On start the service
//! writes its config from the installer's values when there is none, enrolls
//! when the journal has no enrollment ([`crate::provision`]), sets its own
//! recovery (restart after a failure), then runs the daemon until the SCM says
//! stop or shutdown; stopping journals the sessions like SIGTERM does on Linux.
//! It logs to daily files in `C:\ProgramData\Flex\logs` (14 kept).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::Notify;
use windows_service::service::{
    ServiceAccess, ServiceAction, ServiceActionType, ServiceControl, ServiceControlAccept,
    ServiceExitCode, ServiceFailureActions, ServiceFailureResetPeriod, ServiceState, ServiceStatus,
    ServiceType,
};
use windows_service::service_control_handler::{self, ServiceControlHandlerResult};
use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};
use windows_service::{define_windows_service, service_dispatcher};
use windows_sys::Win32::System::Registry::{RegGetValueW, HKEY_LOCAL_MACHINE, RRF_RT_REG_SZ};

use super::{from_wide, wide};
use crate::config::Config;
use crate::provision::{self, InstallValues};

/// The service's name, as `sc query flex-agent` knows it.
pub const SERVICE_NAME: &str = "flex-agent";

/// Where the MSI keeps the values it was installed with (HKLM).
pub const INSTALL_KEY: &str = r"SOFTWARE\Flex\Agent";

/// Log files kept (one per day).
const LOG_FILES: usize = 14;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Provision(#[from] provision::ProvisionError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Daemon(#[from] crate::daemon::DaemonError),
    #[error("cannot talk to the service control manager: {}", scm_reason(.0))]
    Scm(#[from] windows_service::Error),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

/// The crate's message and the OS error under it ("IO error in winapi call"
/// alone says nothing).
fn scm_reason(e: &windows_service::Error) -> String {
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

static CONFIG_PATH: OnceLock<PathBuf> = OnceLock::new();

/// Hands this process to the SCM as service `flex-agent`; returns when the
/// service has stopped. `config` is the agent's config file.
pub fn run(config: PathBuf) -> Result<(), ServiceError> {
    let _ = CONFIG_PATH.set(config);
    service_dispatcher::start(SERVICE_NAME, ffi_service_main)?;
    Ok(())
}

/// Asks the SCM to start the installed service (not waiting for it to run).
pub fn start() -> Result<(), ServiceError> {
    let manager = ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT)?;
    let service = manager.open_service(SERVICE_NAME, ServiceAccess::START)?;
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
        tracing::error!("flex-agent service stopped: {e}");
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

fn serve(config_path: &Path) -> Result<(), ServiceError> {
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
    // Enrollment on first start talks to the server: allow for it.
    handle.set_service_status(status(
        ServiceState::StartPending,
        0,
        Duration::from_secs(120),
    ))?;
    let result = (|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(ServiceError::Runtime)?;
        runtime.block_on(async {
            let config = prepare(config_path).await?;
            configure_recovery();
            let stopped = {
                let stop = stop.clone();
                async move { stop.notified().await }
            };
            crate::daemon::run(config, stopped, |ready| {
                tracing::info!(
                    pipe = %ready.socket.display(),
                    device_id = %ready.device_id,
                    credential_store = %ready.credential_store,
                    detection = %ready.detection,
                    "flex-agent service running"
                );
                let _ = handle.set_service_status(status(ServiceState::Running, 0, Duration::ZERO));
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
    // A non-zero exit is a failure the SCM's recovery restarts.
    let code = u32::from(result.is_err());
    handle.set_service_status(status(ServiceState::Stopped, code, Duration::ZERO))?;
    result
}

/// The config, written from the installer's values on the first start, and
/// the pending enrollment done.
async fn prepare(config_path: &Path) -> Result<Config, ServiceError> {
    let values = install_values();
    if provision::write_config_if_missing(config_path, &values, &crate::paths::current())? {
        tracing::info!(config = %config_path.display(), "wrote the config from the installer's values");
    }
    let config = Config::load(config_path)?;
    if let Some(done) = provision::enroll_if_pending(&config, &values).await? {
        tracing::info!(device_id = %done.device_id, "enrolled on first start");
    }
    Ok(config)
}

/// The MSI's properties, as it stored them under HKLM\[`INSTALL_KEY`].
pub fn install_values() -> InstallValues {
    InstallValues {
        server_url: registry_string(INSTALL_KEY, "ServerUrl"),
        enroll_token_file: registry_string(INSTALL_KEY, "EnrollTokenFile").map(PathBuf::from),
        email_template: registry_string(INSTALL_KEY, "EmailTemplate"),
    }
}

/// A REG_SZ value under HKLM; `None` when missing or empty.
pub fn registry_string(key: &str, value: &str) -> Option<String> {
    let (k, v) = (wide(key), wide(value));
    let mut buf = vec![0u16; 2048];
    let mut size = (buf.len() * 2) as u32;
    // SAFETY: NUL-terminated names and a buffer with its size in bytes.
    let rc = unsafe {
        RegGetValueW(
            HKEY_LOCAL_MACHINE,
            k.as_ptr(),
            v.as_ptr(),
            RRF_RT_REG_SZ,
            std::ptr::null_mut(),
            buf.as_mut_ptr().cast(),
            &mut size,
        )
    };
    if rc != 0 {
        return None;
    }
    let s = from_wide(&buf[..(size as usize / 2).min(buf.len())]);
    (!s.trim().is_empty()).then(|| s.trim().to_string())
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
        tracing::warn!("cannot set the service's recovery actions: {e}");
    }
}
