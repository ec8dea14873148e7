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
use std::process::ExitStatus;
use std::time::Duration;

use flex_protocol::api::ApiError;
use flex_protocol::socket::{display_name, Empty, Event, LaunchReply, Request};
use flex_protocol::ErrorCode;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::sync::mpsc;

use super::{Client, CtlError, Incoming, EXIT_DENIED};

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub socket: PathBuf,
    pub product: String,
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
        product: String,
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
        _ => Some("try again; if it persists, see: flexctl status and journalctl -u flex-agent"),
    };
    let line = format!("flexctl: {product} not started: {} ({})", e.message, e.code);
    match advice {
        Some(advice) => format!("{line}; {advice}"),
        None => line,
    }
}

fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

fn signal_child(pid: u32, sig: i32) {
    if let Ok(sig) = Signal::try_from(sig) {
        let _ = kill(Pid::from_raw(pid as i32), sig);
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
        asked = asked => asked?,
        Some(sig) = signals.recv() => return Ok(128 + sig),
    };
    let mut closed = false;
    let grant = match answer {
        Ok(grant) => grant,
        Err(refused) => {
            let product = display_name(&opts.product, refused.product_name.as_deref());
            eprintln!("{}", denial_line(product, &refused.error));
            return Ok(EXIT_DENIED);
        }
    };
    tracing::info!(session = %grant.session, source = grant.source.as_str(), "license granted");
    // The agent's policy decides how long a closed product may take to stop.
    let close_grace = grant
        .close_grace_secs
        .map_or(opts.close_grace, Duration::from_secs);

    let program = &opts.command[0];
    let mut child = match tokio::process::Command::new(program)
        .args(&opts.command[1..])
        .spawn()
    {
        Ok(child) => child,
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
            Some(sig) = signals.recv() => signal_child(pid, sig),
            _ = kill_timer => {
                signal_child(pid, libc::SIGKILL);
                kill_at = None;
            }
            line = from_agent => match line {
                Ok(Some(Incoming::Event(Event::ProductClosed { product, product_name, reason, message }))) => {
                    if !closed {
                        eprintln!(
                            "flexctl: flex-agent closed {}: {}. {}",
                            display_name(&product, product_name.as_deref()),
                            message.trim_end_matches('.'),
                            super::notify::next_step(reason)
                        );
                        signal_child(pid, libc::SIGTERM);
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
