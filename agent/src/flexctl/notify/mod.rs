//! `flexctl notify`: the agent's hands and eyes in a desktop session.
//!
//! One notifier runs in each desktop session. It subscribes on the agent's
//! socket (the agent sends only the connecting user's events) and:
//!
//! * shows each event through a [`Display`], normally the desktop's
//!   notification service, keeping one notification per product and subject
//!   ([`board`]): replaced when its state changes, withdrawn when it no longer
//!   applies;
//! * reports its user's input idle time and lock state (`idle`, R14) on the
//!   same connection, every 30 s and at once when the user comes back
//!   ([`desktop::idle`]), in every mode (`--print` too): the agent counts an
//!   account no notifier reports for as present;
//! * answers `close_windows` by asking the product's windows to close as the
//!   desktop's close button does, so it can ask to save, and tells the agent
//!   how many it asked (`closing`).
//!
//! When the agent is not there, or goes away, it reconnects with exponential
//! [`Backoff`]: the agent restarting must not end the notifier. The agent
//! forgets a connection's idle reports when it closes, so a notifier that
//! stops leaves its user counted as present.

pub mod board;
mod display;
pub mod text;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use flex_protocol::socket::{Empty, Event, Request};

pub use board::{Board, Slot, Step};
pub use display::{Desktop, Display, Notifier};
pub use text::{
    countdown, human_duration, next_step, notification_for, Notification, Texts, Urgency,
};

use super::desktop::idle::{IdleReading, Reporter, REPORT_EVERY, SAMPLE_EVERY};
use super::desktop::Session;
use super::{Client, CtlError, Incoming};

/// The desktop session, shared with the blocking threads that ask it.
#[derive(Clone, Default)]
pub struct Desk(Arc<Mutex<Session>>);

impl Desk {
    pub fn new(session: Session) -> Desk {
        Desk(Arc::new(Mutex::new(session)))
    }

    /// What this process's session offers (X11, logind, ...).
    pub async fn detect() -> Desk {
        let session = tokio::task::spawn_blocking(Session::detect)
            .await
            .unwrap_or_default();
        Desk::new(session)
    }

    /// Runs `f` on the session in a blocking thread.
    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Session) -> T + Send + 'static,
    ) -> Option<T> {
        let session = self.0.clone();
        tokio::task::spawn_blocking(move || {
            f(&mut session.lock().unwrap_or_else(|e| e.into_inner()))
        })
        .await
        .ok()
    }

    pub async fn describe(&self) -> String {
        self.with(|s| s.describe()).await.unwrap_or_default()
    }

    pub async fn read(&self) -> Option<IdleReading> {
        self.with(Session::read).await.flatten()
    }

    pub async fn close_windows(&self, pid: u32) -> u32 {
        self.with(move |s| s.close_windows(pid)).await.unwrap_or(0)
    }
}

/// Carries out the board's steps.
async fn apply(display: &impl Display, steps: Vec<Step>) {
    for step in steps {
        match step {
            Step::Show(slot, n) => display.show(&slot, n).await,
            Step::Withdraw(slot) => display.withdraw(&slot).await,
        }
    }
}

/// Reconnection delays: `first`, doubling up to `max`, reset after a good connection.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            first: Duration::from_millis(500),
            max: Duration::from_secs(30),
        }
    }
}

/// How the notifier runs.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub backoff: Backoff,
    /// Between two idle reports ([`REPORT_EVERY`]).
    pub report_every: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            backoff: Backoff::default(),
            report_every: REPORT_EVERY,
        }
    }
}

/// Subscribes, shows events and reports activity until the process ends,
/// reconnecting as needed.
pub async fn run(socket: &Path, display: &impl Display, desk: &Desk, options: Options) {
    let backoff = options.backoff;
    let mut delay = backoff.first;
    let mut warned = false;
    let mut board = Board::default();
    let sources = desk.describe().await;
    tracing::info!(sources = %sources, "idle time sources");
    eprintln!("flexctl notify: idle time from {sources}");
    loop {
        match follow(socket, display, desk, &mut board, options.report_every).await {
            Ok(()) => {
                tracing::info!("flex-agent closed the event stream; reconnecting");
                delay = backoff.first;
                warned = false;
            }
            Err(e) => {
                if !warned {
                    eprintln!("flexctl notify: {e}; retrying in the background");
                    warned = true;
                }
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(backoff.max);
    }
}

/// One subscription: returns `Ok` when the agent ends it.
async fn follow(
    socket: &Path,
    display: &impl Display,
    desk: &Desk,
    board: &mut Board,
    report_every: Duration,
) -> Result<(), CtlError> {
    let mut client = Client::connect(socket).await?;
    client
        .call::<Empty>(&Request::Subscribe)
        .await?
        .map_err(CtlError::Refused)?;
    tracing::info!(socket = %socket.display(), "subscribed to flex-agent events");
    // Also the readiness signal scripts and tests wait for: from here on no event
    // for this user is missed.
    eprintln!(
        "flexctl notify: subscribed to flex-agent at {}",
        socket.display()
    );
    // A new connection is a new reporter: the agent forgot the old one's reports.
    let mut reporter = Reporter::every(report_every);
    let started = Instant::now();
    let mut sample = tokio::time::interval(SAMPLE_EVERY);
    sample.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            line = client.next() => match line {
                Ok(Some(Incoming::Event(Event::CloseWindows { pid, product, product_name, kill_at }))) => {
                    let windows = desk.close_windows(pid).await;
                    client.send(&Request::Closing { pid, windows }).await?;
                    let texts = Texts::local(Utc::now());
                    apply(display, board.closing_windows(product.as_str(), product_name.as_deref(), &kill_at, windows, &texts)).await;
                }
                Ok(Some(Incoming::Event(event))) => {
                    let texts = Texts::local(Utc::now());
                    apply(display, board.event(&event, &texts)).await;
                }
                Ok(Some(Incoming::Reply(line))) => {
                    // The answers to `idle` and `closing`; an older agent
                    // refuses them, which changes nothing here.
                    if let Ok(Err(e)) = super::client::decode_reply::<Empty>(&line) {
                        tracing::debug!(code = %e.code, message = %e.message, "flex-agent refused a report");
                    }
                }
                Ok(None) | Err(_) => return Ok(()),
            },
            _ = sample.tick() => {
                if let Some(reading) = desk.read().await {
                    if reporter.sample(started.elapsed(), reading) {
                        client
                            .send(&Request::Idle {
                                idle_secs: reading.idle.as_secs(),
                                locked: reading.locked,
                            })
                            .await?;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod line_tests {
    use clap::Parser;
    use flex_protocol::socket::{CloseReason, Event};

    use super::*;
    use crate::flexctl::{Cli, Command};

    #[test]
    fn printed_lines_carry_urgency_summary_and_body() {
        let n = notification_for(&Event::ProductClosed {
            product: "autocad".parse().unwrap(),
            product_name: Some("AutoCAD".into()),
            reason: CloseReason::Offline,
            message: "offline for more than 24 h".into(),
        });
        assert_eq!(
            n.line(),
            "[critical] AutoCAD was closed: Offline for more than 24 h. \
             Connect to the network, then start it again."
        );
        let n = notification_for(&Event::LowBalance { balance: 12 });
        assert!(
            n.line()
                .starts_with("[normal] Flex token balance is low: 12 tokens left."),
            "{}",
            n.line()
        );
    }

    #[test]
    fn a_printed_notification_is_one_line() {
        let n = Notification {
            summary: "two\nlines".into(),
            body: "a body\r\nover  lines\n".into(),
            urgency: Urgency::Normal,
        };
        assert_eq!(n.line(), "[normal] two lines: a body over lines");
    }

    #[test]
    fn no_desktop_needs_print() {
        let parse = |args: &[&str]| Cli::try_parse_from(args).map(|c| c.command);
        assert!(matches!(
            parse(&["flexctl", "notify"]),
            Ok(Command::Notify {
                print: false,
                no_desktop: false,
                ..
            })
        ));
        assert!(matches!(
            parse(&["flexctl", "notify", "--print", "--no-desktop"]),
            Ok(Command::Notify {
                print: true,
                no_desktop: true,
                ..
            })
        ));
        assert!(parse(&["flexctl", "notify", "--no-desktop"]).is_err());
    }
}
