//! `flexctl run`: ask for a license, run the product, report its exit.
//!
//! The wrapper keeps its socket connection for the life of the product. The agent
//! closes a session by sending `{"event":"product_closed",...}` on that connection;
//! the wrapper then stops the product gracefully (SIGTERM, then SIGKILL after the
//! policy's close grace sent with the grant, else [`RunOptions::close_grace`]).
//! SIGINT, SIGTERM and SIGHUP sent to the wrapper are passed to the product. If the agent goes away (restart, upgrade) the product keeps
//! running: the restarted agent adopts it through the watcher, and the exit is
//! reported on a new connection when possible. Exit code: the product's, 128+signal
//! when a signal ended it, [`EXIT_DENIED`] when the license was refused.

use std::path::PathBuf;
#[cfg(unix)]
use std::process::ExitStatus;
use std::time::Duration;

use flex_protocol::api::ApiError;
use flex_protocol::socket::{display_name, Empty, Event, LaunchReply, Request};
use flex_protocol::ErrorCode;
use flex_protocol::ProductId;
use tokio::sync::mpsc;

use super::{Client, CtlError, Incoming, EXIT_DENIED};

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub socket: PathBuf,
    pub product: ProductId,
    pub version: Option<String>,
    pub command: Vec<String>,
    /// Local account to launch for instead of the caller's own; the agent allows
    /// it for root only (a service starting a product for a user).
    pub user: Option<String>,
    /// Between SIGTERM and SIGKILL when the agent closes the session, unless the
    /// grant carries the policy's value.
    pub close_grace: Duration,
}

impl RunOptions {
    pub fn new(
        socket: PathBuf,
        product: ProductId,
        version: Option<String>,
        command: Vec<String>,
    ) -> Self {
        RunOptions {
            socket,
            product,
            version,
            command,
            user: None,
            close_grace: Duration::from_secs(30),
        }
    }
}

/// SIGINT, SIGTERM and SIGHUP delivered to this process, as signal numbers.
#[cfg(unix)]
pub fn forward_signals() -> mpsc::Receiver<i32> {
    use tokio::signal::unix::{signal, SignalKind};
    let (tx, rx) = mpsc::channel(8);
    for kind in [
        SignalKind::interrupt(),
        SignalKind::terminate(),
        SignalKind::hangup(),
    ] {
        let Ok(mut stream) = signal(kind) else {
            continue;
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                if tx.send(kind.as_raw_value()).await.is_err() {
                    break;
                }
            }
        });
    }
    rx
}

/// One line for stderr: what was refused, why, and what to do. `product` is
/// what people call it: the display name from the refusal, else the id.
pub fn denial_line(product: &str, e: &ApiError) -> String {
    // The server's refusals (and the agent's unknown-user one) already end with
    // what to do; repeating it read as "ask your license admin… ; ask your
    // license administrator…". The agent's own refusals carry only the fact.
    let advice = match e.code {
        ErrorCode::OutOfTokens | ErrorCode::NotEntitled | ErrorCode::UnknownUser => None,
        ErrorCode::Offline => Some(
            "connect to the network so flex-agent can reach the license server, then try again",
        ),
        ErrorCode::UnknownProduct => Some("check the product id with your license administrator"),
        ErrorCode::Forbidden => Some("run flexctl as the user who will use the product"),
        ErrorCode::DeviceRevoked => {
            Some("this workstation was removed from the license server: ask IT to enroll it again")
        }
        _ if cfg!(windows) => Some(
            r"try again; if it persists, see: flexctl status and the logs in C:\ProgramData\Flex\logs",
        ),
        _ => Some("try again; if it persists, see: flexctl status and journalctl -u flex-agent"),
    };
    let line = format!("flexctl: {product} not started: {} ({})", e.message, e.code);
    match advice {
        Some(advice) => format!("{line}; {advice}"),
        None => line,
    }
}

/// A refusal said where a launcher's user sees it: on the desktop, when no
/// terminal and no notifier shows it (see [`super::desktop::fallback`]), in
/// the notifier's words.
fn show_on_desktop(
    product: &ProductId,
    product_name: Option<&str>,
    reason: ErrorCode,
    message: &str,
) {
    #[cfg(all(unix, not(target_os = "macos")))]
    {
        let n = super::notify::notification_for(&Event::LaunchDenied {
            product: product.clone(),
            product_name: product_name.map(str::to_string),
            reason,
            message: message.to_string(),
        });
        super::desktop::fallback::show_refusal(&n.summary, &n.body);
    }
    #[cfg(not(all(unix, not(target_os = "macos"))))]
    let _ = (product, product_name, reason, message);
}

/// Ctrl-C, Ctrl-Break and closing the console window, as SIGINT (2) or
/// SIGHUP (1). The product shares the console and sees Ctrl-C itself; these
/// only end the wrapper before the product runs, or close it gracefully.
#[cfg(windows)]
pub fn forward_signals() -> mpsc::Receiver<i32> {
    use tokio::signal::windows::{ctrl_break, ctrl_c, ctrl_close};
    let (tx, rx) = mpsc::channel(8);
    if let (Ok(mut c), Ok(mut b), Ok(mut close)) = (ctrl_c(), ctrl_break(), ctrl_close()) {
        tokio::spawn(async move {
            loop {
                let sig = tokio::select! {
                    Some(()) = c.recv() => 2,
                    Some(()) = b.recv() => 2,
                    Some(()) = close.recv() => 1,
                    else => break,
                };
                if tx.send(sig).await.is_err() {
                    break;
                }
            }
        });
    }
    rx
}

#[cfg(unix)]
fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

#[cfg(windows)]
use super::job_windows::exit_code;

/// The running product: stopped through its pid with signals on Unix.
#[cfg(unix)]
struct Product {
    pid: u32,
}

#[cfg(unix)]
impl Product {
    fn spawn(command: &[String]) -> std::io::Result<(tokio::process::Child, Product)> {
        let child = tokio::process::Command::new(&command[0])
            .args(&command[1..])
            .spawn()?;
        let pid = child.id().expect("a child that was just spawned has a pid");
        Ok((child, Product { pid }))
    }

    fn signal(&self, sig: i32) {
        use nix::sys::signal::{kill, Signal};
        if let Ok(sig) = Signal::try_from(sig) {
            let _ = kill(nix::unistd::Pid::from_raw(self.pid as i32), sig);
        }
    }

    /// Passes a signal the wrapper received on to the product.
    fn forward(&self, sig: i32) {
        self.signal(sig)
    }

    fn close(&self) {
        self.signal(libc::SIGTERM)
    }

    fn kill(&self) {
        self.signal(libc::SIGKILL)
    }
}

/// The running product: a Job object holding it and its children on Windows.
#[cfg(windows)]
struct Product {
    job: super::job_windows::ProductJob,
}

#[cfg(windows)]
impl Product {
    fn spawn(command: &[String]) -> std::io::Result<(tokio::process::Child, Product)> {
        let (child, job) = super::job_windows::ProductJob::spawn(command)?;
        Ok((child, Product { job }))
    }

    /// Ctrl-C already reached the product through the shared console; closing
    /// the console window asks it to close.
    fn forward(&self, sig: i32) {
        if sig == 1 {
            self.close();
        }
    }

    fn close(&self) {
        let asked = self.job.close();
        tracing::debug!(windows = asked, "asked the product to close");
    }

    fn kill(&self) {
        self.job.kill()
    }
}

/// Runs the wrapper; `signals` are forwarded to the product once it runs.
pub async fn run(opts: RunOptions, mut signals: mpsc::Receiver<i32>) -> Result<i32, CtlError> {
    // Until the product runs, a signal (Ctrl-C during a slow claim) ends the wrapper.
    let asked = async {
        let mut client = Client::connect(&opts.socket).await?;
        client
            .send(&Request::Launch {
                product: opts.product.clone(),
                version: opts.version.clone(),
                pid: None,
                user: opts.user.clone(),
            })
            .await?;
        let answer = client.answer::<LaunchReply>(|_| {}).await?;
        Ok::<_, CtlError>((client, answer))
    };
    let (mut client, answer) = tokio::select! {
        asked = asked => match asked {
            Ok(asked) => asked,
            Err(e) => {
                show_on_desktop(
                    &opts.product,
                    None,
                    ErrorCode::Internal,
                    &format!("cannot reach the Flex licensing service (flex-agent): is it running? Ask IT to check: {}", super::SERVICE_STATUS),
                );
                return Err(e);
            }
        },
        Some(sig) = signals.recv() => return Ok(128 + sig),
    };
    let mut closed = false;
    let grant = match answer {
        Ok(grant) => grant,
        Err(refused) => {
            let product = display_name(opts.product.as_str(), refused.product_name.as_deref());
            eprintln!("{}", denial_line(product, &refused.error));
            show_on_desktop(
                &opts.product,
                refused.product_name.as_deref(),
                refused.error.code,
                &refused.error.message,
            );
            return Ok(EXIT_DENIED);
        }
    };
    tracing::info!(session = %grant.session, source = grant.source.as_str(), "license granted");
    // The agent's policy decides how long a closed product may take to stop.
    let close_grace = grant
        .close_grace_secs
        .map_or(opts.close_grace, Duration::from_secs);

    let program = &opts.command[0];
    let (mut child, running) = match Product::spawn(&opts.command) {
        Ok(started) => started,
        Err(source) => {
            // The window is open anyway; tell the agent nothing runs.
            let _ = client
                .call::<Empty>(&Request::Exit {
                    session: grant.session.clone(),
                    code: None,
                })
                .await;
            return Err(CtlError::Spawn {
                command: program.clone(),
                source,
            });
        }
    };
    let pid = child.id().expect("a child that was just spawned has a pid");
    client
        .send(&Request::Attach {
            session: grant.session.clone(),
            pid,
        })
        .await?;

    let mut agent = Some(client);
    let mut kill_at: Option<tokio::time::Instant> = None;
    let status = loop {
        let kill_timer = async {
            match kill_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let from_agent = async {
            match agent.as_mut() {
                Some(c) => c.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            status = child.wait() => break status.map_err(|source| CtlError::Wait { command: program.clone(), source })?,
            Some(sig) = signals.recv() => running.forward(sig),
            _ = kill_timer => {
                running.kill();
                kill_at = None;
            }
            line = from_agent => match line {
                Ok(Some(Incoming::Event(Event::ProductClosed { product, product_name, reason, message }))) => {
                    if !closed {
                        eprintln!(
                            "flexctl: flex-agent closed {}: {}. {}",
                            display_name(product.as_str(), product_name.as_deref()),
                            message.trim_end_matches('.'),
                            super::notify::next_step(reason)
                        );
                        running.close();
                        kill_at = Some(tokio::time::Instant::now() + close_grace);
                        closed = true;
                    }
                }
                Ok(Some(Incoming::Reply(line))) => {
                    if let Ok(Err(e)) = super::client::decode_reply::<Empty>(&line) {
                        tracing::warn!(code = %e.code, message = %e.message, "flex-agent refused a session update");
                    }
                }
                Ok(Some(Incoming::Event(_))) => {}
                Ok(None) | Err(_) => {
                    tracing::warn!("lost flex-agent; the product keeps running");
                    agent = None;
                }
            },
        }
    };

    let code = exit_code(status);
    let exit = Request::Exit {
        session: grant.session.clone(),
        code: status.code(),
    };
    // Report on the open connection, or on a new one if the agent restarted.
    // A hung agent must not keep the wrapper from exiting.
    let report = async {
        let reported = match agent.as_mut() {
            Some(c) => c.call::<Empty>(&exit).await.is_ok(),
            None => false,
        };
        if !reported {
            if let Ok(mut c) = Client::connect(&opts.socket).await {
                let _ = c.call::<Empty>(&exit).await;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), report).await;
    Ok(code)
}
