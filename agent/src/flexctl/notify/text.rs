//! What each agent event says to a person: a summary line saying what
//! happened and a body saying what it means and what to do. Products are
//! named as people know them (the rate sheet's display name; the id only when
//! the agent has no name for it); times are local, with their zone; countdowns
//! are rounded up, so "closes in 2 min" is never less than two minutes.

use chrono::{DateTime, Utc};
use flex_protocol::socket::{display_name, CloseReason, Event};
use flex_protocol::ErrorCode;

use crate::flexctl::zone::Zone;

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

/// A time left, rounded up: "2 min" with 89 s left, "45 s" under a minute.
/// A countdown that rounds down tells a person they have more time than
/// they do.
pub fn countdown(secs: u64) -> String {
    if secs < 60 {
        human_duration(secs)
    } else {
        human_duration(secs.div_ceil(60) * 60)
    }
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

/// The notification shown for `event` now, with times in the local zone.
pub fn notification_for(event: &Event) -> Notification {
    Texts::local(Utc::now()).event(event)
}

/// Writes notifications as of `now`, with times in `zone`.
#[derive(Debug, Clone, Copy)]
pub struct Texts {
    pub now: DateTime<Utc>,
    pub zone: Zone,
}

impl Texts {
    pub fn local(now: DateTime<Utc>) -> Texts {
        Texts {
            now,
            zone: Zone::local(),
        }
    }

    fn at(&self, t: &DateTime<Utc>) -> String {
        self.zone.clock(*t)
    }

    /// The notification for `event`.
    pub fn event(&self, event: &Event) -> Notification {
        use Urgency::*;
        let at = |t: &DateTime<Utc>| self.at(t);
        let (summary, body, urgency) = match event {
        Event::Charged {
            product,
            product_name,
            tokens: 0,
            window_end,
            ..
        } => {
            let p = display_name(product.as_str(), product_name.as_deref());
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
            let p = display_name(product.as_str(), product_name.as_deref());
            if *renewal {
                return self.renewed(p, *n, *balance, window_end.as_ref());
            }
            (
                format!("{p}: {} charged", tokens(*n)),
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
            let p = display_name(product.as_str(), product_name.as_deref());
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
            let p = display_name(product.as_str(), product_name.as_deref());
            (format!("{p} was not started"), denied_body(p, *reason, message), Normal)
        }
        Event::OfflineWarning {
            product,
            product_name,
            seconds_left,
            deadline,
        } => {
            let p = display_name(product.as_str(), product_name.as_deref());
            (
                format!("{p} closes in {}", countdown(*seconds_left)),
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
            let p = display_name(product.as_str(), product_name.as_deref());
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
            let p = display_name(product.as_str(), product_name.as_deref());
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
            let p = display_name(product.as_str(), product_name.as_deref());
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
        } => return self.closing_windows(display_name(product.as_str(), product_name.as_deref()), kill_at, 1),
        Event::Refunded {
            product,
            product_name,
            tokens: n,
            balance,
            grace_secs,
        } => {
            let p = display_name(product.as_str(), product_name.as_deref());
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
            let p = display_name(product.as_str(), product_name.as_deref());
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
            let p = display_name(product.as_str(), product_name.as_deref());
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
            let p = display_name(product.as_str(), product_name.as_deref());
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

    /// A charge for a product that was still open when its window ended.
    pub fn renewed(
        &self,
        product: &str,
        tokens_charged: u64,
        balance: u64,
        window_end: Option<&DateTime<Utc>>,
    ) -> Notification {
        let until = window_end
            .map(|end| format!(" It is licensed until {}.", self.at(end)))
            .unwrap_or_default();
        Notification {
            summary: format!("{product} renewed: {} charged", tokens(tokens_charged)),
            body: format!(
                "{product} was still open when its license ended, so a new one was charged.{until} Balance: {}.",
                tokens(balance)
            ),
            urgency: Urgency::Normal,
        }
    }

    /// The close of `product` under way: `windows` of its windows were asked
    /// to close (0: it was told to quit by signal), and it is killed at `kill_at`.
    pub fn closing_windows(
        &self,
        product: &str,
        kill_at: &DateTime<Utc>,
        windows: u32,
    ) -> Notification {
        let left = (*kill_at - self.now).num_seconds().max(0) as u64;
        let stop = self.zone.format(*kill_at, "%H:%M:%S");
        let body = if windows > 0 {
            format!(
                "{product} was asked to close: save your work now. A save prompt has {}: {product} is stopped at {stop}.",
                countdown(left)
            )
        } else {
            format!(
                "{product} was told to quit: save your work now if you can. It is stopped at {stop}, in {}.",
                countdown(left)
            )
        };
        Notification {
            summary: format!("{product} is being closed"),
            body,
            urgency: Urgency::Critical,
        }
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
