//! `flex-agent.exe --service`: the agent under the Service Control Manager.
//!
//! The MSI registers the service `flex-agent` (automatic, LocalSystem) with
//! `--service --config C:\ProgramData\Flex\agent.toml`. On start the service
//! writes its config from the installer's values when there is none
//! ([`crate::provision`]), sets its own recovery (restart after a failure) and
//! reports Running; then, as on Linux, it enrolls itself if needed
//! ([`crate::enroll::enroll_at_start`], retried while the server cannot be
//! reached, a stop honoured meanwhile) with the token in `enroll-token` next to
//! the config, where it first copies the installer's `ENROLL_TOKEN_FILE` (a
//! share many machines read, which is left alone). Then it runs the daemon
//! until the SCM says stop or shutdown; stopping journals the sessions like
//! SIGTERM does on Linux. A config or enrollment problem stops it with the
//! service-specific exit code 78, as on Linux; the recovery actions start it
//! again a minute later, so a token put in place later is picked up. It logs
//! to daily files in `C:\ProgramData\Flex\logs` (14 kept).

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
use crate::enroll::{self, exit};
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
            ServiceError::Provision(_)
            | ServiceError::Config(_)
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
                println!("asked the service control manager to start {SERVICE_NAME}");
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
            let values = install_values();
            let config = prepare(config_path, &values)?;
            configure_recovery();
            // Running from here, as systemd's READY with a status line: a stop
            // is honoured while the agent waits for the server to enroll.
            handle.set_service_status(status(ServiceState::Running, 0, Duration::ZERO))?;
            let stopped = stop.notified();
            tokio::pin!(stopped);
            let token_file = enroll::token_file_for(config_path);
            stage_enroll_token(&config, &values, &token_file).await;
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
    // A non-zero exit is a failure the SCM's recovery restarts.
    let code = result.as_ref().map_or_else(ServiceError::exit_code, |()| 0);
    handle.set_service_status(status(ServiceState::Stopped, code, Duration::ZERO))?;
    result
}

/// The config, written from the installer's values on the first start.
fn prepare(config_path: &Path, values: &InstallValues) -> Result<Config, ServiceError> {
    if provision::write_config_if_missing(config_path, values, &crate::paths::current())? {
        tracing::info!(config = %config_path.display(), "wrote the config from the installer's values");
    }
    Ok(Config::load(config_path)?)
}

/// Copies the installer's enrollment token file to `token_file` (where
/// self-enrollment reads it, and deletes it once used) when the workstation
/// is not enrolled and nothing is there yet. The copy is readable by SYSTEM
/// and Administrators only. Failures are logged: self-enrollment then says
/// what is missing.
async fn stage_enroll_token(config: &Config, values: &InstallValues, token_file: &Path) {
    let Some(source) = values.enroll_token_file.clone() else {
        return;
    };
    if token_file.exists() {
        return;
    }
    let (config, target) = (config.clone(), token_file.to_path_buf());
    let staged = tokio::task::spawn_blocking(move || {
        if enroll::current_enrollment(&config)?.is_some() {
            return Ok(false);
        }
        let token = enroll::read_token_file(&source)?;
        write_admin_only(&target, token.as_bytes()).map_err(|e| {
            enroll::EnrollError::TokenFile {
                path: target.clone(),
                reason: e.to_string(),
            }
        })?;
        Ok::<_, enroll::EnrollError>(true)
    })
    .await;
    match staged {
        Ok(Ok(true)) => tracing::info!(
            "copied the installer's enrollment token to {}",
            token_file.display()
        ),
        Ok(Ok(false)) => {}
        Ok(Err(e)) => tracing::warn!("cannot use the installer's enrollment token: {e}"),
        Err(e) => tracing::warn!("cannot use the installer's enrollment token: {e}"),
    }
}

/// Writes a new file readable by SYSTEM and Administrators only: created
/// empty, restricted, then filled and moved into place.
fn write_admin_only(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        super::acl::restrict_to_admins(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
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
        tracing::warn!(
            "cannot set the service's recovery actions: {}",
            scm_reason(&e)
        );
    }
}
