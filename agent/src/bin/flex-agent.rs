//! `flex-agent`: the workstation daemon (`flex-agent --config FILE`) and its
//! enrollment (`flex-agent enroll ...`). The command line is
//! [`flex_agent::cli`]; exit codes are [`flex_agent::enroll::exit`].

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use flex_agent::cli::{Cli, Cmd, EnrollArgs};
use flex_agent::config::Config;
use flex_agent::daemon::watchdog::Watchdog;
use flex_agent::daemon::DaemonError;
use flex_agent::enroll::{self, exit, EnrollError, EnrollOptions};

/// Waits between self-enrollment attempts while the server cannot be reached.
const ENROLL_RETRY_FIRST: Duration = Duration::from_secs(5);
const ENROLL_RETRY_MAX: Duration = Duration::from_secs(300);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let under_systemd = std::env::var_os("JOURNAL_STREAM").is_some();
    // `enroll` is run by hand or by an installer: its printed summary is the
    // report, so only warnings are logged beside it.
    let default_level = if cli.command.is_some() {
        "warn"
    } else {
        "info"
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FLEX_AGENT_LOG")
                .unwrap_or_else(|_| default_level.into()),
        )
        .with_writer(std::io::stderr);
    // journald stamps each line itself.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    if under_systemd {
        logs.without_time().with_ansi(false).init();
    } else {
        logs.with_ansi(ansi).init();
    }
    // Two workers: the driver loop, and the socket and network tasks beside it.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
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

/// Runs the agent; enrolls it first if needed. Exit 78 for what a restart
/// cannot fix (config, no or refused enrollment token), so systemd
/// (RestartPreventExitStatus=78) does not loop on it.
async fn daemon(config_path: &Path) -> i32 {
    let config = match load_config(config_path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let stop = stop_signal();
    tokio::pin!(stop);
    let token_file = enroll::token_file_for(config_path);
    tokio::select! {
        _ = &mut stop => return 0,
        enrolled = enroll_at_start(&config, &token_file) => {
            if let Err(e) = enrolled {
                tracing::error!("{e}");
                refuse_waiting_clients(&e.to_string());
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
        notify(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status("serving"),
        ]);
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

/// Self-enrollment, retried while the server cannot be reached (a machine
/// booting off the network, a server being upgraded): the unit counts as
/// started meanwhile, with the reason in its status line, and keeps pinging
/// the watchdog. A refused token or none at all ends it.
async fn enroll_at_start(config: &Config, token_file: &Path) -> Result<(), EnrollError> {
    let mut watchdog = Watchdog::from_env();
    let mut wait = ENROLL_RETRY_FIRST;
    loop {
        match enroll::self_enroll(config, token_file).await {
            Ok(Some(outcome)) => {
                tracing::info!("{}", outcome.to_string().replace('\n', "; "));
                return Ok(());
            }
            Ok(None) => return Ok(()),
            Err(e) if e.is_temporary() => {
                tracing::warn!("cannot enroll yet, retrying in {wait:?}: {e}");
                let status = format!("waiting to enroll: {e}");
                notify(&[
                    sd_notify::NotifyState::Ready,
                    sd_notify::NotifyState::Status(&status),
                ]);
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

/// Socket-activated but unable to serve (exit 78): answers the clients already
/// queued on systemd's socket with the reason, so that `flexctl` says why and
/// their waiting connections do not start the agent again and again.
fn refuse_waiting_clients(reason: &str) {
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

fn notify(state: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!("cannot tell systemd the agent's state: {e}");
    }
}

/// Resolves at SIGTERM or SIGINT.
async fn stop_signal() {
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
