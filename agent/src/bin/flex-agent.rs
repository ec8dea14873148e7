//! `flex-agent`: the workstation daemon (`flex-agent --config FILE`) and its
//! enrollment (`flex-agent enroll ...`). The command line is
//! [`flex_agent::cli`]; exit codes are [`flex_agent::enroll::exit`]. On Windows
//! the Service Control Manager starts it with `--service`
//! ([`flex_agent::win32::service`]); without it the agent runs in the console,
//! for debugging.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use flex_agent::cli::{Cli, Cmd, ConfigureArgs, EnrollArgs};
use flex_agent::config::Config;
use flex_agent::daemon::DaemonError;
use flex_agent::enroll::{self, exit, EnrollOptions};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::prelude::*;

fn default_targets(level: LevelFilter) -> Targets {
    Targets::new().with_default(level)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    #[cfg(windows)]
    if let Some(code) = flex_agent::win32::service::from_command_line(&cli) {
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    let under_systemd = std::env::var_os("JOURNAL_STREAM").is_some();
    // `enroll` is run by hand or by an installer: its printed summary is the
    // report, so only warnings are logged beside it.
    let default_level = if cli.command.is_some() {
        LevelFilter::WARN
    } else {
        LevelFilter::INFO
    };
    // `FLEX_AGENT_LOG` takes `LEVEL` and `TARGET=LEVEL` directives: a target
    // filter, not an `EnvFilter`, whose regular expressions would be a large
    // part of the agent's resident code.
    let filter = match std::env::var("FLEX_AGENT_LOG") {
        Ok(v) => v.parse::<Targets>().unwrap_or_else(|e| {
            eprintln!("flex-agent: FLEX_AGENT_LOG={v:?} is not a log filter ({e}); logging at {default_level}");
            default_targets(default_level)
        }),
        Err(_) => default_targets(default_level),
    };
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    // journald stamps each line itself.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    if under_systemd {
        let logs = logs.without_time().with_ansi(false).with_filter(filter);
        tracing_subscriber::registry().with(logs).init();
    } else {
        tracing_subscriber::registry()
            .with(logs.with_ansi(ansi).with_filter(filter))
            .init();
    }
    // One thread for the driver loop, the socket and the network: a launch's
    // answer passes between tasks without a thread switch. The journal and the
    // watcher have threads of their own (see `daemon`).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
    {
        Ok(r) => r,
        Err(e) => return ExitCode::from(fail(1, &e) as u8),
    };
    let code = runtime.block_on(async {
        match cli.command {
            Some(Cmd::Enroll(args)) => enroll_command(args).await,
            Some(Cmd::Configure(args)) => configure_command(args).await,
            None => daemon(&cli.config).await,
        }
    });
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// Prints `error` (with its causes) and returns `code`.
fn fail(code: i32, error: &dyn std::fmt::Display) -> i32 {
    eprintln!("flex-agent: {error}");
    code
}

fn load_config(path: &Path) -> Result<Config, i32> {
    Config::load(path).map_err(|e| fail(exit::CONFIG, &e))
}

async fn enroll_command(args: EnrollArgs) -> i32 {
    let config = match load_config(&args.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let token = match (&args.token, &args.token_file) {
        (Some(t), _) => t.clone(),
        (None, Some(path)) => match enroll::read_token_file(path) {
            Ok(t) => t,
            Err(e) => return fail(exit::BAD_ARGUMENTS, &e),
        },
        (None, None) => unreachable!("clap requires --token or --token-file"),
    };
    let mut opts = EnrollOptions::for_config(&config, token);
    if let Some(server) = args.server {
        opts.server = server;
    }
    opts.force = args.force;
    match enroll::enroll(&config, opts).await {
        Ok(outcome) => {
            println!("{outcome}");
            exit::OK
        }
        Err(e) => fail(e.exit_code(), &e),
    }
}

/// `flex-agent configure`: the install's values applied ([`flex_agent::provision`]).
async fn configure_command(args: ConfigureArgs) -> i32 {
    use flex_agent::provision::{self, InstallValues, ProvisionError};
    let values = InstallValues {
        server_url: args.server_url,
        enroll_token_file: args.token_file.map(std::path::PathBuf::from),
        email_template: args.email_template,
    };
    let config = args.config;
    let applied = tokio::task::spawn_blocking(move || {
        provision::apply(&config, &values, &flex_agent::paths::current(), |c| {
            // Unknown (a credential store that does not answer now) counts as
            // enrolled: the service says what is wrong when it starts.
            enroll::current_enrollment(c).map_or_else(
                |e| {
                    tracing::warn!("cannot tell whether this workstation is enrolled: {e}");
                    true
                },
                |e| e.is_some(),
            )
        })
    })
    .await;
    match applied {
        Ok(Ok(applied)) => {
            println!("{applied}");
            exit::OK
        }
        Ok(Err(e @ (ProvisionError::Io { .. } | ProvisionError::Keep(_)))) => {
            fail(exit::LOCAL_ERROR, &e)
        }
        Ok(Err(e)) => fail(exit::CONFIG, &e),
        Err(e) => fail(exit::LOCAL_ERROR, &e),
    }
}

/// Runs the agent; enrolls it first if needed. Exit 78 for what a restart
/// cannot fix (config, no or refused enrollment token), so systemd
/// (RestartPreventExitStatus=78) does not loop on it.
async fn daemon(config_path: &Path) -> i32 {
    let config = match load_config(config_path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let stop = os::stop_signal();
    tokio::pin!(stop);
    let token_file = enroll::token_file_for(config_path);
    tokio::select! {
        _ = &mut stop => return 0,
        enrolled = enroll::enroll_at_start(&config, &token_file, |e| {
            os::waiting(&format!("waiting to enroll: {e}"))
        }) => {
            if let Err(e) = enrolled {
                tracing::error!("{e}");
                os::refuse_waiting_clients(&e.to_string());
                return fail(exit::CONFIG, &e);
            }
        }
    }
    let result = flex_agent::daemon::run(config, stop, |ready| {
        // Scripts and tests wait for this line; systemd for READY=1.
        println!("flex-agent listening on {}", ready.socket.display());
        tracing::info!(
            device_id = %ready.device_id,
            credential_store = %ready.credential_store,
            detection = %ready.detection,
            "flex-agent ready"
        );
        os::ready();
        // Start-up's code (with the first contact with the server, a few
        // seconds on) is not run again: hand its pages back, and then the
        // pages of whatever ran since, from time to time.
        tokio::spawn(async {
            use flex_agent::residency::{
                release_after_journal_work, release_code_pages, AGAIN_EVERY, SETTLED,
            };
            tokio::time::sleep(SETTLED).await;
            release_after_journal_work();
            loop {
                match release_code_pages() {
                    Ok(bytes) => tracing::trace!(bytes, "code pages released"),
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot release code pages");
                        return;
                    }
                }
                tokio::time::sleep(AGAIN_EVERY).await;
            }
        });
    })
    .await;
    match result {
        Ok(()) => 0,
        Err(e) => {
            let code = match e {
                DaemonError::NotEnrolled { .. } | DaemonError::BadKeys { .. } => exit::CONFIG,
                _ => 1,
            };
            fail(code, &e)
        }
    }
}

/// The service manager around the daemon: systemd (readiness, status line,
/// socket activation) and Unix signals.
#[cfg(unix)]
mod os {
    use std::time::Duration;

    /// Socket-activated but unable to serve (exit 78): answers the clients
    /// already queued on systemd's socket with the reason, so that `flexctl`
    /// says why and their waiting connections do not start the agent again and
    /// again.
    pub fn refuse_waiting_clients(reason: &str) {
        use std::io::Write;
        let Some(listener) = flex_agent::socket::systemd_listener() else {
            return;
        };
        let reply = flex_protocol::socket::ErrReply::new(
            flex_protocol::ErrorCode::Internal,
            format!("flex-agent cannot start: {reason}"),
        );
        let Ok(line) = serde_json::to_string(&reply) else {
            return;
        };
        // Non-blocking: only the connections already waiting.
        while let Ok((mut stream, _)) = listener.accept() {
            let _ = stream.set_nonblocking(false);
            let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
            let _ = stream.write_all(format!("{line}\n").as_bytes());
        }
    }

    /// The unit counts as started while it waits to enroll, with the reason
    /// in its status line.
    pub fn waiting(status: &str) {
        notify(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status(status),
        ]);
    }

    pub fn ready() {
        notify(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status("serving"),
        ]);
    }

    fn notify(state: &[sd_notify::NotifyState]) {
        if let Err(e) = sd_notify::notify(state) {
            tracing::warn!("cannot tell systemd the agent's state: {e}");
        }
    }

    /// Resolves at SIGTERM or SIGINT.
    pub async fn stop_signal() {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            // Without handlers the default action (exit) still stops the agent.
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
}

/// In a Windows console (debugging; the service is `--service`): no service
/// manager to tell anything, Ctrl-C to stop.
#[cfg(windows)]
mod os {
    pub fn refuse_waiting_clients(_reason: &str) {}

    pub fn waiting(_status: &str) {}

    pub fn ready() {}

    /// Resolves at Ctrl-C or Ctrl-Break, or when the console closes.
    pub async fn stop_signal() {
        use tokio::signal::windows::{ctrl_break, ctrl_close};
        let (Ok(mut brk), Ok(mut close)) = (ctrl_break(), ctrl_close()) else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = brk.recv() => {}
            _ = close.recv() => {}
        }
    }
}
