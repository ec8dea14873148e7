//! `flex-agent`: the workstation daemon (`flex-agent --config FILE`) and its
//! enrollment (`flex-agent enroll --config FILE --server URL --token TOKEN`).
//! On Windows the Service Control Manager starts it with `--service`; without
//! it the agent runs in the console, for debugging.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use flex_agent::config::Config;

/// The Flex licensing agent: detects product launches, claims charge windows,
/// enforces the offline rule and notifies users.
#[derive(Parser)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Cli {
    /// Agent configuration (TOML).
    #[arg(long, default_value_os_t = flex_agent::paths::current().config)]
    config: PathBuf,
    /// Run under the Windows Service Control Manager (the MSI registers this).
    #[cfg(windows)]
    #[arg(long)]
    service: bool,
    /// Ask the Service Control Manager to start the flex-agent service, and
    /// return (the MSI runs this once the service is registered).
    #[cfg(windows)]
    #[arg(long, conflicts_with = "service")]
    start_service: bool,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Trade a one-time enrollment token for this workstation's device credential.
    Enroll {
        #[arg(long, default_value_os_t = flex_agent::paths::current().config)]
        config: PathBuf,
        /// Server URL, e.g. https://flex.example.com
        #[arg(long)]
        server: String,
        /// Enrollment token from `flex-admin enroll-token`.
        #[arg(long, env = "FLEX_ENROLL_TOKEN", hide_env_values = true)]
        token: String,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    #[cfg(windows)]
    if cli.start_service {
        flex_agent::win32::service::start()?;
        println!("asked the service control manager to start flex-agent");
        return Ok(());
    }
    #[cfg(windows)]
    if cli.service {
        let filter = tracing_subscriber::EnvFilter::try_from_env("FLEX_AGENT_LOG")
            .unwrap_or_else(|_| "info".into());
        let logs = flex_agent::paths::current()
            .log_dir
            .unwrap_or_else(|| std::env::temp_dir().join("flex-agent"));
        flex_agent::win32::service::init_logging(&logs, filter);
        flex_agent::win32::service::run(cli.config)?;
        return Ok(());
    }
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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        match cli.command {
            Some(Cmd::Enroll {
                config,
                server,
                token,
            }) => enroll(config, server, token).await,
            None => daemon(cli.config).await,
        }
    })
}

async fn enroll(config: PathBuf, server: String, token: String) -> anyhow::Result<()> {
    let config = Config::load(&config)?;
    let outcome = flex_agent::enroll::run_enroll(&config, &server, &token).await?;
    println!("{outcome}");
    Ok(())
}

async fn daemon(config_path: PathBuf) -> anyhow::Result<()> {
    let config = Config::load(&config_path)?;
    flex_agent::daemon::run(config, stop_signal(), |ready| {
        // Scripts and tests wait for this line; systemd for READY=1.
        println!("flex-agent listening on {}", ready.socket.display());
        tracing::info!(
            device_id = %ready.device_id,
            credential_store = %ready.credential_store,
            detection = %ready.detection,
            "flex-agent ready"
        );
        #[cfg(unix)]
        if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
            tracing::warn!("cannot tell systemd the agent is ready: {e}");
        }
    })
    .await?;
    Ok(())
}

/// Resolves at Ctrl-C or Ctrl-Break, or when the console closes.
#[cfg(windows)]
async fn stop_signal() {
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

/// Resolves at SIGTERM or SIGINT.
#[cfg(unix)]
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
