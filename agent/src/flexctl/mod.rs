//! `flexctl`: the command line for users, product wrappers and the desktop notifier.
//!
//! Every subcommand talks to flex-agent over its local socket (`--socket`, default
//! [`crate::paths::current`], or `FLEX_AGENT_SOCKET`). The binary only parses arguments and
//! calls [`execute`], which returns the process exit code; errors carry the next
//! step for the user in their message.

mod client;
pub mod desktop;
pub mod doctor;
#[cfg(windows)]
mod job_windows;
pub mod notify;
pub mod run;
mod status;
pub mod wrap;
pub mod zone;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use flex_protocol::api::ApiError;
use flex_protocol::socket::{display_name, Request, ResultReply, StatusReply};
use flex_protocol::ProductId;

pub use client::{Client, Incoming};

/// The command that shows whether the agent's service runs.
#[cfg(windows)]
pub const SERVICE_STATUS: &str = "sc query flex-agent";
#[cfg(not(windows))]
pub const SERVICE_STATUS: &str = "systemctl status flex-agent";

/// Exit code of `flexctl run` and `flexctl result` when the agent refuses.
pub const EXIT_DENIED: i32 = 77;

#[derive(Debug, Parser)]
#[command(name = "flexctl", version, about = "Talk to the Flex licensing agent")]
pub struct Cli {
    /// The agent's socket.
    #[arg(long, global = true, env = "FLEX_AGENT_SOCKET", default_value_os_t = crate::paths::current().socket)]
    pub socket: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Ask for a license, then run a product; exits with the product's exit code,
    /// or 77 without starting it when the license is refused.
    Run {
        /// Product id from the rate sheet, e.g. autocad.
        #[arg(long)]
        product: ProductId,
        /// Product version, for usage reports.
        #[arg(long)]
        version: Option<String>,
        /// Launch for this local account instead of your own. Root only, e.g. a
        /// service starting a product for a user.
        #[arg(long, value_name = "ACCOUNT")]
        user: Option<String>,
        /// The product's command line.
        #[arg(required = true, last = true, num_args = 1..)]
        command: Vec<String>,
    },
    /// Charge a per-result job, e.g. 85 photos processed.
    Result {
        /// Product id from the rate sheet, e.g. recap-photo.
        #[arg(long)]
        product: ProductId,
        #[arg(long)]
        count: u64,
        /// Job id; repeating an id never charges twice. Without it flexctl makes
        /// one, and prints it when the charge could not be confirmed.
        #[arg(long)]
        job: Option<String>,
        /// Charge the job to this local account instead of your own. Root only,
        /// e.g. a service processing a user's job.
        #[arg(long, value_name = "ACCOUNT")]
        user: Option<String>,
    },
    /// Show sessions, windows, balance and connectivity.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Print (or install) a launcher that starts a product through `flexctl run`:
    /// a .desktop entry, or with --windows the shortcut's target.
    Wrap {
        /// Product id from the rate sheet, e.g. autocad.
        #[arg(long)]
        product: ProductId,
        /// Product version, for usage reports.
        #[arg(long)]
        version: Option<String>,
        /// The launcher's name, e.g. "AutoCAD" (default: the --from entry's own,
        /// else the product id).
        #[arg(long)]
        name: Option<String>,
        /// The vendor's .desktop file to rewrite, instead of a command.
        #[arg(long, value_name = "FILE", conflicts_with_all = ["command", "windows"])]
        from: Option<PathBuf>,
        /// Write the entry where it takes precedence over the vendor's
        /// (~/.local/share/applications; /usr/local/share/applications as root).
        #[arg(long, conflicts_with = "windows")]
        install: bool,
        /// With --install: write into this directory instead.
        #[arg(long, requires = "install", value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Print the Windows shortcut (target, folder, icon, PowerShell) instead
        /// (always so on Windows).
        #[arg(long)]
        windows: bool,
        /// flexctl's path in the launcher (default: this flexctl; with --windows
        /// C:\Program Files\Flex\flexctl.exe).
        #[arg(long, value_name = "PATH")]
        flexctl: Option<String>,
        /// The product's command line, field codes (%F, %U) included.
        #[arg(last = true, required_unless_present = "from")]
        command: Vec<String>,
    },
    /// Check this workstation end to end: config, agent, enrollment, server, TLS,
    /// clock, detection, notifier, the user's email. Exit 0 when all pass, 1 otherwise.
    Doctor {
        /// Print the checks as JSON (for fleet tools).
        #[arg(long)]
        json: bool,
        /// Also write a support archive (.tar.gz): report, status, config without
        /// secrets, the agent's last 1,000 log lines.
        #[arg(long, value_name = "FILE")]
        bundle: Option<std::path::PathBuf>,
        /// The agent's config.
        #[arg(long, value_name = "FILE", default_value_os_t = crate::cli::default_config())]
        config: std::path::PathBuf,
        /// Check this local account (notifier, email) instead of your own. Needs root
        /// for the server's answer.
        #[arg(long, value_name = "ACCOUNT")]
        user: Option<String>,
    },
    /// Show the agent's events as desktop notifications (run once per desktop session).
    Notify {
        /// Also print each event as one line on stdout: `[critical] summary: body`.
        #[arg(long)]
        print: bool,
        /// With --print: only print, show no desktop notifications (no desktop needed).
        #[arg(long, requires = "print")]
        no_desktop: bool,
        /// Between two reports of the user's idle time to the agent (tests
        /// shorten it).
        #[arg(long, hide = true, default_value = "30s", value_parser = humantime::parse_duration)]
        report_every: std::time::Duration,
    },
    /// Ask process PID to close (WM_CLOSE to its top-level windows on this
    /// desktop). The agent's service starts it in a user's session, which it
    /// cannot reach from Session 0. Exit code 0 when a window was asked, 3 when
    /// the process shows none.
    #[cfg(windows)]
    #[command(hide = true)]
    CloseWindows { pid: u32 },
}

/// Errors of flexctl's commands. Messages end with what to do next.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("cannot reach flex-agent at {}: is the service running? try: {} ({source})", path.display(), SERVICE_STATUS)]
    Unreachable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("lost the connection to flex-agent at {}: {source}; check: {}", path.display(), SERVICE_STATUS)]
    Lost {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("flex-agent sent a line flexctl cannot read ({0}): install flexctl from the same release as the agent")]
    Garbled(String),
    #[error("flex-agent refused: {} ({}); see: flexctl status", .0.message, .0.code)]
    Refused(ApiError),
    #[error("cannot start {command}: {source}; check the path and that it is executable")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot wait for {command}: {source}")]
    Wait {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot encode the status as JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Wrap(#[from] wrap::WrapError),
}

/// Runs one parsed command line and returns the exit code.
pub async fn execute(cli: Cli) -> Result<i32, CtlError> {
    match cli.command {
        Command::Run {
            product,
            version,
            user,
            command,
        } => {
            let mut opts = run::RunOptions::new(cli.socket, product, version, command);
            opts.user = user;
            run::run(opts, run::forward_signals()).await
        }
        Command::Result {
            product,
            count,
            job,
            user,
        } => {
            // A job always has an id, so a retry after a lost answer is the same
            // job: the agent charges it at most once.
            let named = job.is_some();
            let job = job.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
            let retry = format!(
                "flexctl result --product {product} --count {count} --job {job}{}",
                user.as_deref()
                    .map(|u| format!(" --user {u}"))
                    .unwrap_or_default()
            );
            let answer = async {
                let mut client = Client::connect(&cli.socket).await?;
                client
                    .ask::<ResultReply>(&Request::Result {
                        product: product.clone(),
                        count,
                        job: Some(job.clone()),
                        user: user.clone(),
                    })
                    .await
            }
            .await;
            match answer {
                Ok(Ok(r)) => {
                    let what = if r.already_charged {
                        format!(
                            "was already charged {} tokens; nothing charged now",
                            r.tokens_charged
                        )
                    } else {
                        format!("charged {} tokens", r.tokens_charged)
                    };
                    println!(
                        "{}: job {} of {count} results {what}; balance {}",
                        display_name(r.product.as_str(), r.product_name.as_deref()),
                        r.job,
                        r.balance
                    );
                    Ok(0)
                }
                Err(e) => {
                    if !named {
                        eprintln!("flexctl: to retry this job without paying twice, run: {retry}");
                    }
                    Err(e)
                }
                Ok(Err(refused)) => {
                    let name = display_name(product.as_str(), refused.product_name.as_deref());
                    eprintln!("{}", run::denial_line(name, &refused.error));
                    let e = refused.error;
                    if e.code == flex_protocol::ErrorCode::Offline
                        || e.code == flex_protocol::ErrorCode::Internal
                    {
                        eprintln!("flexctl: to retry this job without paying twice, run: {retry}");
                    } else if !named {
                        eprintln!("flexctl: once that is fixed, retry with: {retry}");
                    }
                    Ok(EXIT_DENIED)
                }
            }
        }
        Command::Status { json } => {
            let mut client = Client::connect(&cli.socket).await?;
            let status: StatusReply = client
                .call(&Request::Status)
                .await?
                .map_err(CtlError::Refused)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!(
                    "{}",
                    status::render(&status, chrono::Utc::now(), &zone::Zone::local())
                );
            }
            Ok(0)
        }
        Command::Wrap {
            product,
            version,
            name,
            from,
            install,
            dir,
            windows,
            flexctl,
            command,
        } => {
            // On Windows a shortcut's target is the only launcher there is.
            let windows = windows || cfg!(windows);
            let flexctl = match (flexctl, windows) {
                (Some(path), _) => path,
                (None, true) => wrap::WINDOWS_FLEXCTL.to_string(),
                (None, false) => std::env::current_exe()
                    .and_then(std::fs::canonicalize)
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|_| "flexctl".into()),
            };
            // A launcher for an agent at another socket must say so.
            let socket = (!windows && cli.socket != crate::paths::current().socket)
                .then(|| cli.socket.display().to_string());
            let prefix = wrap::RunPrefix {
                flexctl,
                socket,
                product: product.to_string(),
                version,
            };
            let label = name.clone().unwrap_or_else(|| product.to_string());
            if windows {
                print!("{}", wrap::windows_shortcut(&prefix, &label, &command));
                return Ok(0);
            }
            let (entry, file_name) = match &from {
                Some(path) => {
                    let text =
                        std::fs::read_to_string(path).map_err(|source| wrap::WrapError::Read {
                            path: path.clone(),
                            source,
                        })?;
                    let file = path
                        .file_name()
                        .map(|f| f.to_string_lossy().into_owned())
                        .unwrap_or_else(|| format!("flex-{product}.desktop"));
                    (
                        wrap::rewrite_entry(path, &text, &prefix, name.as_deref())?,
                        file,
                    )
                }
                None => (
                    wrap::new_entry(&prefix, &label, &command)?,
                    format!("flex-{product}.desktop"),
                ),
            };
            if install {
                let home = std::env::var("HOME").ok();
                let xdg = std::env::var("XDG_DATA_HOME").ok();
                #[cfg(unix)]
                let root = nix::unistd::geteuid().is_root();
                #[cfg(windows)]
                let root = crate::win32::current_is_admin();
                let dir = wrap::install_dir(dir.as_deref(), root, xdg.as_deref(), home.as_deref())?;
                let path = wrap::install(&dir, &file_name, &entry)?;
                println!(
                    "wrote {}: {label} now starts through flexctl run",
                    path.display()
                );
            } else {
                print!("{entry}");
            }
            Ok(0)
        }
        Command::Doctor {
            json,
            bundle,
            config,
            user,
        } => {
            doctor::run(doctor::DoctorOptions {
                config,
                socket: cli.socket,
                user,
                json,
                bundle,
            })
            .await
        }
        #[cfg(windows)]
        Command::CloseWindows { pid } => Ok(if crate::process::close_windows_of(pid) > 0 {
            0
        } else {
            3
        }),
        Command::Notify {
            print,
            no_desktop,
            report_every,
        } => {
            // Started from the Run key at logon: no console window stays open.
            #[cfg(windows)]
            if !print {
                crate::win32::detach_console();
            }
            let display = notify::Notifier::new(print, !no_desktop);
            let desk = notify::Desk::detect().await;
            let options = notify::Options {
                report_every,
                ..Default::default()
            };
            notify::run(&cli.socket, &display, &desk, options).await;
            Ok(0)
        }
    }
}

#[cfg(all(test, unix))]
mod tests;

#[cfg(all(test, target_os = "linux"))]
mod desktop_tests;
