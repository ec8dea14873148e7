//! R5 daily windows: per (user, product), a launch with no open window opens
//! `[t, t + 24h)` and pays the daily rate; a launch inside an open window is
//! free; a renewal opens the next window at the old one's end. The store finds
//! the window a claim falls in with [`lookup`] (in SQL, on the same bounds).

use chrono::{DateTime, Duration, Utc};
use flex_protocol::api::{ChargeKind, ChargeModel, Source};

/// The window a claim asks for: a launch starts now, a renewal at the end of
/// the window it renews.
pub fn requested(
    now: DateTime<Utc>,
    renews_end: Option<DateTime<Utc>>,
    len: Duration,
) -> (DateTime<Utc>, DateTime<Utc>, ChargeKind) {
    match renews_end {
        Some(end) => (end, end + len, ChargeKind::Renewal),
        None => (now, now + len, ChargeKind::Window),
    }
}

/// The span an existing window must overlap to cover the claim: a launch is
/// covered by a window open at `now`; a renewal by any window overlapping the
/// one it asks for (another device renewed first).
pub fn lookup(
    kind: ChargeKind,
    now: DateTime<Utc>,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> (DateTime<Utc>, DateTime<Utc>) {
    match kind {
        ChargeKind::Window => (now, now + Duration::microseconds(1)),
        _ => (start, end),
    }
}

/// A window's length as a refusal names it: "24 hours", "1 hour 30 minutes",
/// "45 seconds" (policy may set any length, so none is assumed).
pub fn length_text(len: Duration) -> String {
    let secs = len.num_seconds().max(0);
    let parts = [
        (secs / 3600, "hour"),
        (secs % 3600 / 60, "minute"),
        (secs % 60, "second"),
    ];
    let text: Vec<String> = parts
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, unit)| format!("{n} {unit}{}", if *n == 1 { "" } else { "s" }))
        .collect();
    if text.is_empty() {
        "0 seconds".into()
    } else {
        text.join(" ")
    }
}

/// Whether `[w_start, w_end)` overlaps `[from, to)`.
pub fn overlaps(
    w_start: DateTime<Utc>,
    w_end: DateTime<Utc>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> bool {
    w_start < to && w_end > from
}

/// What a new window costs: the daily rate when tokens pay; nothing for a
/// subscription or for opening a per-result product (its jobs are charged).
pub fn cost(source: Source, charge: ChargeModel) -> u64 {
    match (source, charge) {
        (Source::Tokens, ChargeModel::Daily { tokens }) => tokens,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(d: u32, h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, d, h, 0, 0).unwrap()
    }

    /// DESIGN.md R5: AutoCAD (7/day) opened Mon 08:00, closed 17:00; opened Tue
    /// 07:00 (free), still open at Tue 08:00 (renewed, charged) → 14 tokens.
    #[test]
    fn monday_and_tuesday_cost_fourteen_tokens() {
        let day = Duration::hours(24);
        let autocad = ChargeModel::Daily { tokens: 7 };
        let mut windows: Vec<(DateTime<Utc>, DateTime<Utc>)> = Vec::new();
        let mut charged = 0;
        let claim = |now: DateTime<Utc>,
                     renews: Option<usize>,
                     windows: &mut Vec<(DateTime<Utc>, DateTime<Utc>)>| {
            let (start, end, kind) = requested(now, renews.map(|i| windows[i].1), day);
            let (from, to) = lookup(kind, now, start, end);
            if windows.iter().any(|&(s, e)| overlaps(s, e, from, to)) {
                return 0;
            }
            windows.push((start, end));
            cost(Source::Tokens, autocad)
        };
        charged += claim(at(2, 8), None, &mut windows); // Mon 08:00
        charged += claim(at(3, 7), None, &mut windows); // Tue 07:00, inside Monday's
        charged += claim(at(3, 8), Some(0), &mut windows); // Tue 08:00 renewal
        assert_eq!(charged, 14);
        assert_eq!(windows[1], (at(3, 8), at(4, 8)));
        // A second device renewing the same window finds the renewal: free.
        assert_eq!(claim(at(3, 8), Some(0), &mut windows), 0);
    }

    #[test]
    fn a_launch_after_the_window_ends_opens_a_fresh_one_at_its_own_time() {
        let (s, e, k) = requested(at(4, 10), None, Duration::hours(24));
        assert_eq!((s, e, k), (at(4, 10), at(5, 10), ChargeKind::Window));
        let (from, to) = lookup(k, at(4, 10), s, e);
        // Monday's window [2nd 08:00, 3rd 08:00) ended: it does not cover.
        assert!(!overlaps(at(2, 8), at(3, 8), from, to));
        assert!(
            !overlaps(at(3, 8), at(4, 8), from, to),
            "the end is exclusive"
        );
    }

    #[test]
    fn subscriptions_and_per_result_products_open_windows_for_free() {
        assert_eq!(
            cost(Source::Subscription, ChargeModel::Daily { tokens: 7 }),
            0
        );
        assert_eq!(
            cost(
                Source::Tokens,
                ChargeModel::PerResult { tokens: 1, per: 50 }
            ),
            0
        );
        assert_eq!(cost(Source::Tokens, ChargeModel::Daily { tokens: 10 }), 10);
    }

    #[test]
    fn lengths_read_as_people_say_them() {
        assert_eq!(length_text(Duration::hours(24)), "24 hours");
        assert_eq!(length_text(Duration::hours(1)), "1 hour");
        assert_eq!(length_text(Duration::minutes(90)), "1 hour 30 minutes");
        assert_eq!(length_text(Duration::seconds(61)), "1 minute 1 second");
        assert_eq!(length_text(Duration::zero()), "0 seconds");
    }
}
