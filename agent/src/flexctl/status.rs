//! The human form of `flexctl status`: products by their display names (the
//! ids are in `flexctl status --json`), times in the local zone with its name,
//! what each running product is doing (running, paused since when, closing at
//! when), and the offline allowance only while the server cannot be reached.

use std::fmt::Write;

use chrono::{DateTime, Utc};
use flex_protocol::socket::{display_name, SessionStatus, StatusReply};

use super::notify::{countdown, human_duration};
use super::zone::Zone;

/// What a session is doing, for its STATE column.
fn state(x: &SessionStatus, now: DateTime<Utc>, zone: &Zone) -> String {
    match (x.state.as_str(), x.paused_since, x.closes_at) {
        (_, _, Some(at)) => format!(
            "closes at {} (in {})",
            zone.format(at, "%H:%M:%S"),
            countdown((at - now).num_seconds().max(0) as u64)
        ),
        ("paused", Some(since), None) => format!("paused since {}", zone.format(since, "%H:%M")),
        (other, _, None) => other.to_string(),
    }
}

/// Renders `status` as a short report with a session table, times in `zone`.
pub fn render(s: &StatusReply, now: DateTime<Utc>, zone: &Zone) -> String {
    let local = |t: DateTime<Utc>| zone.format(t, "%Y-%m-%d %H:%M");
    let mut out = String::new();
    let _ = writeln!(
        out,
        "agent          {} ({})",
        s.agent_version,
        if s.online { "online" } else { "OFFLINE" }
    );
    let _ = writeln!(out, "server         {}", s.server_url);
    let _ = writeln!(
        out,
        "device         {}",
        s.device_id
            .as_deref()
            .unwrap_or("not enrolled: run flex-agent enroll")
    );
    let _ = writeln!(out, "credentials    {}", s.credential_store);
    let _ = writeln!(out, "detection      {}", s.detection);
    let _ = writeln!(
        out,
        "balance        {}",
        s.balance
            .map_or("unknown".into(), |b| format!("{b} tokens"))
    );
    let contact = match s.last_server_contact {
        Some(t) => format!(
            "{} ({} ago)",
            local(t),
            human_duration((now - t).num_seconds().max(0) as u64)
        ),
        None => "never".into(),
    };
    let _ = writeln!(out, "last contact   {contact}");
    // While the server answers nothing counts down: saying how long an
    // outage may last only alarms.
    if !s.online {
        let left = match s.offline_seconds_left {
            Some(secs) if secs <= 0 => {
                "none: offline products are being closed; connect to the network".into()
            }
            Some(secs) => format!("{} before offline products close", countdown(secs as u64)),
            None => "no limit running".into(),
        };
        let _ = writeln!(out, "offline left   {left}");
    }
    render_windows(&mut out, s, now, &local);
    if s.sessions.is_empty() {
        let _ = writeln!(out, "\nno product sessions");
        return out;
    }
    let rows: Vec<[String; 8]> = s
        .sessions
        .iter()
        .map(|x| {
            [
                display_name(x.product.as_str(), x.product_name.as_deref()).to_string(),
                x.version.clone().unwrap_or_else(|| "-".into()),
                x.user.clone(),
                x.pid.map_or("-".into(), |p| p.to_string()),
                x.source.as_str().to_string(),
                state(x, now, zone),
                // A paused product holds no window.
                if x.state == "paused" {
                    "-".into()
                } else {
                    local(x.window_end)
                },
                x.origin.clone(),
            ]
        })
        .collect();
    table(
        &mut out,
        [
            "PRODUCT",
            "VERSION",
            "USER",
            "PID",
            "SOURCE",
            "STATE",
            "WINDOW ENDS",
            "SEEN BY",
        ],
        &rows,
    );
    if s.sessions_omitted > 0 {
        let _ = writeln!(out, "... and {} more sessions", s.sessions_omitted);
    }
    out
}

/// The windows the user holds: what was paid, and until when reopening is free.
fn render_windows(
    out: &mut String,
    s: &StatusReply,
    now: DateTime<Utc>,
    local: &dyn Fn(DateTime<Utc>) -> String,
) {
    if s.windows.is_empty() {
        let _ = writeln!(out, "\nno charge windows held");
        return;
    }
    let rows: Vec<[String; 5]> = s
        .windows
        .iter()
        .map(|w| {
            [
                display_name(w.product.as_str(), w.product_name.as_deref()).to_string(),
                w.user.clone(),
                match w.source {
                    flex_protocol::api::Source::Subscription => "subscription".into(),
                    flex_protocol::api::Source::Tokens => format!("{} tokens", w.tokens_charged),
                },
                local(w.end),
                human_duration((w.end - now).num_seconds().max(0) as u64),
            ]
        })
        .collect();
    table(
        out,
        ["PRODUCT", "USER", "PAID", "FREE TO REOPEN UNTIL", "LEFT"],
        &rows,
    );
    if s.windows_omitted > 0 {
        let _ = writeln!(out, "... and {} more windows", s.windows_omitted);
    }
}

/// A left-aligned table with a header, after a blank line.
fn table<const N: usize>(out: &mut String, header: [&str; N], rows: &[[String; N]]) {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    out.push('\n');
    let mut line = |cells: &[String]| {
        let text: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", text.join("  ").trim_end());
    };
    line(&header.map(String::from));
    for row in rows {
        line(row);
    }
}
