//! `flexctl notify`: the agent's events as desktop notifications.
//!
//! One notifier runs in each desktop session. It subscribes on the agent's socket
//! (the agent sends only the connecting user's events) and shows each event
//! through a [`Display`], normally the desktop's notification service via
//! notify-rust. When the agent is not there, or goes away, it reconnects with
//! exponential [`Backoff`]: the agent restarting must not end the notifier.

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Local, TimeZone, Utc};
use flex_protocol::socket::{display_name, CloseReason, Empty, Event, Request};
use flex_protocol::ErrorCode;

use super::{Client, CtlError, Incoming};

/// How pressing a notification is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Urgency {
    Normal,
    /// Stays on screen until dismissed: something will be closed or cost money.
    Critical,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub summary: String,
    pub body: String,
    pub urgency: Urgency,
}

impl Urgency {
    /// The word used in printed lines: `normal` or `critical`.
    pub fn as_str(self) -> &'static str {
        match self {
            Urgency::Normal => "normal",
            Urgency::Critical => "critical",
        }
    }
}

impl Notification {
    /// The notification as one line for a terminal or a log:
    /// `[critical] summary: body`. Line breaks inside become spaces.
    pub fn line(&self) -> String {
        let one_line = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
        format!(
            "[{}] {}: {}",
            self.urgency.as_str(),
            one_line(&self.summary),
            one_line(&self.body)
        )
    }
}

/// "2 h 5 min", "30 min", "45 s".
pub fn human_duration(secs: u64) -> String {
    let (d, h, m, s) = (
        secs / 86_400,
        secs % 86_400 / 3600,
        secs % 3600 / 60,
        secs % 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{s} s"),
        (0, 0, m) => format!("{m} min"),
        (0, h, 0) => format!("{h} h"),
        (0, h, m) => format!("{h} h {m} min"),
        (d, 0, _) => format!("{d} d"),
        (d, h, _) => format!("{d} d {h} h"),
    }
}

/// "Tue 11:50" in `tz`: when something ends, as a person near the screen reads it.
fn clock<Tz: TimeZone>(t: DateTime<Utc>, tz: &Tz) -> String
where
    Tz::Offset: std::fmt::Display,
{
    t.with_timezone(tz).format("%a %H:%M").to_string()
}

/// "1 token", "7 tokens".
fn tokens(n: u64) -> String {
    if n == 1 {
        "1 token".into()
    } else {
        format!("{n} tokens")
    }
}

/// A message from the agent or server as a sentence inside a notification:
/// capitalised, without its own closing punctuation (the caller adds one).
fn sentence(message: &str) -> String {
    let trimmed = message
        .trim()
        .trim_end_matches(|c: char| matches!(c, '.' | ';' | ':' | ',') || c.is_whitespace());
    let mut chars = trimmed.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// The notification shown for `event`, with times in the local time zone.
pub fn notification_for(event: &Event) -> Notification {
    notification_in(event, &Local)
}

/// The notification shown for `event`, with times in `tz`.
///
/// Each one is a summary line saying what happened and a body line saying what
/// it means and what to do; products are named as people know them (the rate
/// sheet's display name, the id only when the agent has no name for it).
pub fn notification_in<Tz: TimeZone>(event: &Event, tz: &Tz) -> Notification
where
    Tz::Offset: std::fmt::Display,
{
    use Urgency::*;
    let at = |t: &DateTime<Utc>| clock(*t, tz);
    let (summary, body, urgency) = match event {
        Event::Charged {
            product,
            product_name,
            tokens: 0,
            window_end,
            ..
        } => {
            let p = display_name(product, product_name.as_deref());
            (
                format!("{p} is licensed"),
                match window_end {
                    Some(end) => {
                        format!("No tokens charged. Reopening {p} is free until {}.", at(end))
                    }
                    None => "No tokens charged.".into(),
                },
                Normal,
            )
        }
        Event::Charged {
            product,
            product_name,
            tokens: n,
            balance,
            window_end,
            renewal,
        } => {
            let p = display_name(product, product_name.as_deref());
            (
                if *renewal {
                    format!("{p} renewed: {} charged", tokens(*n))
                } else {
                    format!("{p}: {} charged", tokens(*n))
                },
                match window_end {
                    Some(end) => format!(
                        "Reopening {p} is free until {}. Balance: {}.",
                        at(end),
                        tokens(*balance)
                    ),
                    None => format!("The job is paid for. Balance: {}.", tokens(*balance)),
                },
                Normal,
            )
        }
        Event::LowBalance { balance } => (
            "Flex token balance is low".into(),
            format!(
                "{} left. Ask your license administrator to buy more before they run out.",
                tokens(*balance)
            ),
            Normal,
        ),
        Event::OutOfTokens {
            product,
            product_name,
        } => {
            let p = display_name(product, product_name.as_deref());
            (
                "Out of Flex tokens".into(),
                format!("{p} cannot be charged: the token balance is used up. Ask your license administrator to buy tokens."),
                Critical,
            )
        }
        Event::LaunchDenied {
            product,
            product_name,
            reason,
            message,
        } => {
            let p = display_name(product, product_name.as_deref());
            (format!("{p} was not started"), denied_body(p, *reason, message), Normal)
        }
        Event::OfflineWarning {
            product,
            product_name,
            seconds_left,
            deadline,
        } => {
            let p = display_name(product, product_name.as_deref());
            (
                format!("{p} closes in {}", human_duration(*seconds_left)),
                format!(
                    "This computer has not reached the license server for too long. Connect to the network before {}, or save your work: {p} will be closed.",
                    at(deadline)
                ),
                Critical,
            )
        }
        Event::RenewalFailed {
            product,
            product_name,
            reason,
            closes_at,
        } => {
            let p = display_name(product, product_name.as_deref());
            let why = match reason {
                ErrorCode::OutOfTokens => "The token balance does not cover the next window".to_string(),
                ErrorCode::NotEntitled => format!("Your account is no longer licensed for {p}"),
                _ => "The license server did not renew it".to_string(),
            };
            (
                format!("{p} license could not be renewed"),
                format!("{why}. Save your work: {p} will be closed at {}.", at(closes_at)),
                Critical,
            )
        }
        Event::ProductClosed {
            product,
            product_name,
            reason,
            message,
        } => {
            let p = display_name(product, product_name.as_deref());
            let why = match reason {
                CloseReason::NotEntitled => format!("Your account is not licensed for {p}"),
                CloseReason::OutOfTokens => {
                    format!("The token balance does not cover {p}")
                }
                CloseReason::Offline | CloseReason::Denied => sentence(message),
            };
            (
                format!("{p} was closed"),
                format!("{why}. {}", next_step(*reason)),
                Critical,
            )
        }
        Event::ClockRollback { seconds } => (
            "System clock was set back".into(),
            format!(
                "The clock moved back by {}. Offline time still counts from the last server contact, and the change was reported to your administrator.",
                human_duration(seconds.unsigned_abs())
            ),
            Critical,
        ),
        Event::ProductClosing {
            product,
            product_name,
            reason,
            message,
            deadline,
        } => {
            let p = display_name(product, product_name.as_deref());
            (
                format!("{p} closes at {}", at(deadline)),
                format!("{}. Save your work now. {}", sentence(message), next_step(*reason)),
                Critical,
            )
        }
        Event::CloseWindows {
            product,
            product_name,
            kill_at,
            ..
        } => {
            let p = display_name(product, product_name.as_deref());
            (
                format!("{p} is being closed"),
                format!("{p} was asked to close: save your work. It will be stopped at {}.", at(kill_at)),
                Critical,
            )
        }
        Event::Refunded {
            product,
            product_name,
            tokens: n,
            balance,
            grace_secs,
        } => {
            let p = display_name(product, product_name.as_deref());
            (
                format!("{p} closed within {}: {} returned", human_duration(*grace_secs), tokens(*n)),
                format!("A run this short is not charged. Balance: {}.", tokens(*balance)),
                Normal,
            )
        }
        Event::RenewalNotice {
            product,
            product_name,
            at: when,
            tokens: n,
        } => {
            let p = display_name(product, product_name.as_deref());
            (
                format!("{p} renews at {} for {}", at(when), tokens(*n)),
                format!("Close {p} before then to avoid the charge."),
                Normal,
            )
        }
        Event::Paused {
            product,
            product_name,
            ..
        } => {
            let p = display_name(product, product_name.as_deref());
            (
                format!("{p} is paused"),
                format!("{p} was not used for a while, so its license was not renewed. It stays open; using it again starts a new charge."),
                Normal,
            )
        }
        Event::Resumed {
            product,
            product_name,
            tokens: n,
        } => {
            let p = display_name(product, product_name.as_deref());
            (
                format!("{p} is in use again"),
                format!("{} charged for a new window.", tokens(*n)),
                Normal,
            )
        }
        Event::BackOnline => (
            "Back online".into(),
            "The license server is reachable again.".into(),
            Normal,
        ),
    };
    Notification {
        summary,
        body,
        urgency,
    }
}

/// What a refused launch means for product `p` and what to do about it.
fn denied_body(p: &str, reason: ErrorCode, message: &str) -> String {
    match reason {
        ErrorCode::NotEntitled => {
            format!("Your account is not licensed for {p}. Ask your license administrator for access.")
        }
        ErrorCode::OutOfTokens => format!(
            "The Flex token balance does not cover {p}. Ask your license administrator to buy tokens."
        ),
        ErrorCode::Offline => format!(
            "This computer cannot reach the license server and holds no license for {p}. Connect to the network, then start it again."
        ),
        ErrorCode::UnknownUser => "The license server does not know your account. Ask your license administrator to add you.".into(),
        ErrorCode::UnknownProduct => format!(
            "{p} is not on the license server's rate sheet. Check the product with your license administrator."
        ),
        ErrorCode::LimitExceeded => format!(
            "Too many products are open through wrappers on this account. Close one, then start {p} again."
        ),
        _ => format!(
            "{}. If it happens again, run flexctl status and tell your license administrator.",
            sentence(message)
        ),
    }
}

/// What a user can do about a closed product.
pub fn next_step(reason: CloseReason) -> &'static str {
    match reason {
        CloseReason::Offline => "Connect to the network, then start it again.",
        CloseReason::OutOfTokens => "Ask your license administrator to buy tokens.",
        CloseReason::NotEntitled | CloseReason::Denied => {
            "Ask your license administrator for access."
        }
    }
}

/// Where notifications go.
pub trait Display: Sync {
    fn show(&self, n: Notification) -> impl std::future::Future<Output = ()> + Send;
}

/// The desktop notification service (D-Bus on Linux, Notification Center on macOS).
pub struct Desktop;

impl Display for Desktop {
    async fn show(&self, n: Notification) {
        // notify-rust blocks on D-Bus: keep it off the runtime threads.
        let shown = tokio::task::spawn_blocking(move || {
            let mut note = notify_rust::Notification::new();
            note.appname("Flex licensing")
                .summary(&n.summary)
                .body(&n.body);
            #[cfg(all(unix, not(target_os = "macos")))]
            note.urgency(match n.urgency {
                Urgency::Normal => notify_rust::Urgency::Normal,
                Urgency::Critical => notify_rust::Urgency::Critical,
            });
            note.show().map(|_| ())
        })
        .await;
        match shown {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot show a desktop notification; is a notification service running?")
            }
            Err(e) => tracing::warn!(error = %e, "notification task failed"),
        }
    }
}

/// What `flexctl notify` does with each event: prints it as a [`Notification::line`]
/// on stdout (`--print`), shows it on the desktop (unless `--no-desktop`), or both.
pub struct Notifier {
    pub print: bool,
    pub desktop: bool,
}

impl Display for Notifier {
    async fn show(&self, n: Notification) {
        if self.print {
            use std::io::Write;
            // A closed stdout (the reader went away) must not end the notifier.
            let _ = writeln!(std::io::stdout().lock(), "{}", n.line());
        }
        if self.desktop {
            Desktop.show(n).await;
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

/// Subscribes and shows events until the process ends, reconnecting as needed.
pub async fn run(socket: &Path, display: &impl Display, backoff: Backoff) {
    let mut delay = backoff.first;
    let mut warned = false;
    loop {
        match follow(socket, display).await {
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
async fn follow(socket: &Path, display: &impl Display) -> Result<(), CtlError> {
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
    loop {
        match client.next().await {
            Ok(Some(Incoming::Event(event))) => display.show(notification_for(&event)).await,
            Ok(Some(Incoming::Reply(_))) => {}
            Ok(None) | Err(_) => return Ok(()),
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
            product: "autocad".into(),
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
                no_desktop: false
            })
        ));
        assert!(matches!(
            parse(&["flexctl", "notify", "--print", "--no-desktop"]),
            Ok(Command::Notify {
                print: true,
                no_desktop: true
            })
        ));
        assert!(parse(&["flexctl", "notify", "--no-desktop"]).is_err());
    }
}
