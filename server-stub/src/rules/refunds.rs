//! R13 short runs are free: a window — first or renewal, tokens or
//! subscription — in which no process of its (user, product) runs on the
//! asking device at the window's start plus `short_use_grace` is refunded to
//! the lots it came from. A lot that expired meanwhile gets nothing back.
//!
//! The agent asks once that moment (the *cut*) has passed; the store loads
//! what it knows about the window and [`decide`] answers. The order:
//!
//! 1. Only a device that was answered with the window may ask, for the
//!    window's own user and product ([`Reason::NotThisDevice`],
//!    [`Reason::Mismatch`]); nothing is written for such a request.
//! 2. (The store replays a verdict already given for the window.)
//! 3. `short_use_grace = 0s` turns refunds off; before the cut it is too early.
//! 4. The window was used — a verdict, stored and replayed for good — when it
//!    was granted to another device too (this device cannot vouch for
//!    another's runs), when it was renewed (a process ran at its end), when
//!    this device was answered with it again at or after the cut, when one of
//!    the device's runs was going at the cut, or when a run of the window
//!    began after the cut (a launch while offline, under the lease).
//! 5. Otherwise the charge's lot shares go back to the lots still live.
//!
//! Per-result jobs have no window and are never refunded. A refunded window
//! no longer covers launches and cannot be renewed: closing at 4:59 and
//! reopening at 5:01 is a refund and a new charge, one charge in all.

use chrono::{DateTime, Duration, Utc};
use flex_protocol::api::LotShare;

use crate::ledger::LotState;

/// The window asked about, as stored.
#[derive(Debug, Clone, Copy)]
pub struct WindowFact<'a> {
    pub id: &'a str,
    pub user: &'a str,
    pub product: &'a str,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// The devices answered with the window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Grants {
    /// When the asking device was last answered with it; `None`: never.
    pub here: Option<DateTime<Utc>>,
    /// Another device was answered with it too.
    pub elsewhere: bool,
}

/// One run of the window's (user, product) on the asking device: a session
/// record, as stored from heartbeats and from the request itself.
#[derive(Debug, Clone, Copy)]
pub struct Run<'a> {
    pub id: &'a str,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub window_id: Option<&'a str>,
}

/// Everything [`decide`] looks at.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// The user and product the request names.
    pub asked_user: &'a str,
    pub asked_product: &'a str,
    pub window: WindowFact<'a>,
    /// The product's display name, for messages people read.
    pub product_name: &'a str,
    /// `policy.short_use_grace`; zero turns refunds off.
    pub grace: Duration,
    pub grants: Grants,
    /// A later window renews this one.
    pub renewed: bool,
    /// The asking device's runs of (user, product) that overlap the window.
    pub runs: &'a [Run<'a>],
    /// Each lot's share of the window's charge (none for 0 tokens).
    pub shares: &'a [LotShare],
    pub lots: &'a [LotState],
}

/// Why a refund is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    NotThisDevice,
    Mismatch,
    Off,
    TooEarly,
    Shared,
    Renewed,
    /// Answered with the window again at or after the cut.
    GrantedAfterCut,
    /// A run was going at the cut.
    Running,
    /// A run of the window began after the cut.
    RunAfterCut,
}

impl Reason {
    /// Whether the refusal judges the window itself, for good: the store keeps
    /// it and replays it. The others are about the request or the moment.
    pub fn is_verdict(self) -> bool {
        matches!(
            self,
            Reason::Shared
                | Reason::Renewed
                | Reason::GrantedAfterCut
                | Reason::Running
                | Reason::RunAfterCut
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: Reason,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Give `back` to the lots (the live ones among the charge's shares):
    /// `tokens` in all, 0 for a subscription window.
    Refund {
        tokens: u64,
        back: Vec<LotShare>,
    },
    Refuse(Refusal),
}

/// The moment a process must be running for the window to count as used.
pub fn cut(start: DateTime<Utc>, grace: Duration) -> DateTime<Utc> {
    start + grace
}

fn clock(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

fn grace_text(grace: Duration) -> String {
    grace
        .to_std()
        .map(|d| humantime::format_duration(d).to_string())
        .unwrap_or_else(|_| format!("{}s", grace.num_seconds()))
}

/// Whether the asking device may ask about this window at all (step 1).
pub fn admissible(f: &Facts<'_>) -> Result<(), Refusal> {
    let w = &f.window;
    if f.grants.here.is_none() {
        return Err(Refusal {
            reason: Reason::NotThisDevice,
            message: format!(
                "window '{}' was not granted to this device: only a device that claimed it may ask for its refund",
                w.id
            ),
        });
    }
    if f.asked_user != w.user || f.asked_product != w.product {
        return Err(Refusal {
            reason: Reason::Mismatch,
            message: format!(
                "window '{}' belongs to {} / {}, not {} / {}",
                w.id, w.user, w.product, f.asked_user, f.asked_product
            ),
        });
    }
    Ok(())
}

/// Decides a refund request at `now` (see the module's order).
pub fn decide(f: &Facts<'_>, now: DateTime<Utc>) -> Decision {
    if let Err(r) = admissible(f) {
        return Decision::Refuse(r);
    }
    let w = &f.window;
    let name = f.product_name;
    let refuse = |reason, message: String| Decision::Refuse(Refusal { reason, message });
    if f.grace <= Duration::zero() {
        return refuse(
            Reason::Off,
            format!(
                "refunds of short runs are off on this server (policy.short_use_grace = \"0s\"): window '{}' of {name} stays charged",
                w.id
            ),
        );
    }
    let cut = cut(w.start, f.grace);
    let stays = format!("window '{}' of {name} stays charged", w.id);
    if now < cut {
        return refuse(
            Reason::TooEarly,
            format!(
                "window '{}' of {name} started at {}: a refund may be asked from {} (its start plus short_use_grace {}), not at {}",
                w.id,
                clock(w.start),
                clock(cut),
                grace_text(f.grace),
                clock(now)
            ),
        );
    }
    if f.grants.elsewhere {
        return refuse(
            Reason::Shared,
            format!("{name} was granted this window on another device too, whose runs this device cannot vouch for: {stays}"),
        );
    }
    if f.renewed {
        return refuse(
            Reason::Renewed,
            format!(
                "{name} was still running at the window's end ({}) and the window was renewed: {stays}",
                clock(w.end)
            ),
        );
    }
    if let Some(at) = f.grants.here.filter(|&at| at >= cut) {
        return refuse(
            Reason::GrantedAfterCut,
            format!(
                "{name} was launched on this device at {} inside the window, after its start plus short_use_grace ({}): {stays}",
                clock(at),
                clock(cut)
            ),
        );
    }
    if let Some(r) = f
        .runs
        .iter()
        .find(|r| r.started_at <= cut && r.ended_at.is_none_or(|end| end > cut))
    {
        let until = match r.ended_at {
            Some(end) => format!("until {}", clock(end)),
            None => "and has not ended".to_owned(),
        };
        return refuse(
            Reason::Running,
            format!(
                "{name} was running on this device at {} (the window's start plus short_use_grace {}): session '{}' started at {} {until}; {stays}",
                clock(cut),
                grace_text(f.grace),
                r.id,
                clock(r.started_at)
            ),
        );
    }
    if let Some(r) = f
        .runs
        .iter()
        .find(|r| r.window_id == Some(w.id) && r.started_at >= cut && r.started_at < w.end)
    {
        return refuse(
            Reason::RunAfterCut,
            format!(
                "session '{}' of {name} began at {} inside the window, after its start plus short_use_grace ({}): {stays}",
                r.id,
                clock(r.started_at),
                clock(cut)
            ),
        );
    }
    let back: Vec<LotShare> = f
        .shares
        .iter()
        .filter(|s| f.lots.iter().any(|l| l.id == s.lot_id && l.is_live(now)))
        .cloned()
        .collect();
    Decision::Refund {
        tokens: back.iter().map(|s| s.tokens).sum(),
        back,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::expiry_of;
    use crate::rules::windows;
    use chrono::TimeZone;
    use flex_protocol::api::{ChargeModel, Source};

    fn at(d: u32, h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, d, h, m, s).unwrap()
    }

    const GRACE: i64 = 5;
    const USER: &str = "ann@example.com";

    fn lot(id: i64, remaining: u64, expires_at: DateTime<Utc>) -> LotState {
        LotState {
            id,
            tokens: 500,
            remaining,
            purchased_at: expires_at - Duration::days(365),
            expires_at,
        }
    }

    fn share(lot_id: i64, tokens: u64) -> LotShare {
        LotShare { lot_id, tokens }
    }

    fn run(id: &str, from: DateTime<Utc>, to: Option<DateTime<Utc>>) -> Run<'_> {
        Run {
            id,
            started_at: from,
            ended_at: to,
            window_id: Some("w1"),
        }
    }

    /// The facts of AutoCAD's window `w1` from `start`, paid 7 tokens from
    /// lot 1, granted to this device at `start` only.
    fn facts<'a>(
        start: DateTime<Utc>,
        runs: &'a [Run<'a>],
        shares: &'a [LotShare],
        lots: &'a [LotState],
    ) -> Facts<'a> {
        Facts {
            asked_user: USER,
            asked_product: "autocad",
            window: WindowFact {
                id: "w1",
                user: USER,
                product: "autocad",
                start,
                end: start + Duration::hours(24),
            },
            product_name: "AutoCAD",
            grace: Duration::minutes(GRACE),
            grants: Grants {
                here: Some(start),
                elsewhere: false,
            },
            renewed: false,
            runs,
            shares,
            lots,
        }
    }

    fn reason(d: &Decision) -> Option<Reason> {
        match d {
            Decision::Refuse(r) => Some(r.reason),
            Decision::Refund { .. } => None,
        }
    }

    fn live_lot() -> Vec<LotState> {
        vec![lot(1, 93, expiry_of(at(1, 0, 0, 0)))]
    }

    /// R13's example: AutoCAD (7 tokens) opened at 08:00 and closed at
    /// 08:04:59 is refunded; reopened at 08:05:01 it is a new window and a new
    /// charge: one charge in all.
    #[test]
    fn closed_at_4_59_is_refunded_and_reopened_at_5_01_is_one_charge_in_all() {
        let autocad = ChargeModel::Daily { tokens: 7 };
        let day = Duration::hours(24);
        let opened = at(2, 8, 0, 0);
        let lots = live_lot();
        let shares = [share(1, 7)];
        let runs = [run("s1", opened, Some(at(2, 8, 4, 59)))];
        // (start, end, refunded) of each window, and the ledger.
        let mut windows_: Vec<(DateTime<Utc>, DateTime<Utc>, bool)> = Vec::new();
        let (mut charged, mut refunded) = (0, 0);
        let claim = |now, windows_: &mut Vec<(DateTime<Utc>, DateTime<Utc>, bool)>| {
            let (start, end, kind) = windows::requested(now, None, day);
            let (from, to) = windows::lookup(kind, now, start, end);
            // A refunded window no longer covers a launch.
            if windows_
                .iter()
                .any(|&(s, e, r)| !r && windows::overlaps(s, e, from, to))
            {
                return 0;
            }
            windows_.push((start, end, false));
            windows::cost(Source::Tokens, autocad)
        };
        charged += claim(opened, &mut windows_);
        let d = decide(&facts(opened, &runs, &shares, &lots), at(2, 8, 5, 0));
        assert_eq!(
            d,
            Decision::Refund {
                tokens: 7,
                back: vec![share(1, 7)]
            }
        );
        refunded += 7;
        windows_[0].2 = true;
        charged += claim(at(2, 8, 5, 1), &mut windows_);
        assert_eq!(charged - refunded, 7, "one charge in all");
        assert_eq!(windows_.len(), 2);
        assert_eq!(
            windows_[1].0,
            at(2, 8, 5, 1),
            "the new window starts at 5:01"
        );
    }

    /// Reopened at 4:00 inside the grace: the launch is free (covered by the
    /// window) and the process runs at 5:00, so the window is used.
    #[test]
    fn reopened_within_the_grace_keeps_the_window_and_its_charge() {
        let opened = at(2, 8, 0, 0);
        let lots = live_lot();
        let shares = [share(1, 7)];
        let runs = [
            run("s1", opened, Some(at(2, 8, 2, 0))),
            run("s2", at(2, 8, 4, 0), None),
        ];
        let mut f = facts(opened, &runs, &shares, &lots);
        f.grants.here = Some(at(2, 8, 4, 0));
        let d = decide(&f, at(2, 8, 5, 0));
        assert_eq!(reason(&d), Some(Reason::Running));
        let Decision::Refuse(r) = d else {
            unreachable!()
        };
        assert!(
            r.message.contains("2026-11-02 08:05:00 UTC"),
            "{}",
            r.message
        );
        assert!(r.message.contains("'s2'"), "{}", r.message);
        // Closed again before 5:00 too: nothing ran at the cut, refunded.
        let runs = [
            run("s1", opened, Some(at(2, 8, 2, 0))),
            run("s2", at(2, 8, 4, 0), Some(at(2, 8, 4, 30))),
        ];
        let f = Facts { runs: &runs, ..f };
        assert_eq!(reason(&decide(&f, at(2, 8, 6, 0))), None);
    }

    /// A product still running at Tuesday 08:00 renews Monday's window; it
    /// exits at 08:03, inside the renewal's grace: the renewal is refunded,
    /// Monday's window (which it renewed) stays charged.
    #[test]
    fn a_renewal_whose_product_exits_within_the_grace_is_refunded() {
        let monday = at(2, 8, 0, 0);
        let tuesday = at(3, 8, 0, 0);
        let lots = live_lot();
        let shares = [share(1, 7)];
        let runs = [Run {
            id: "s1",
            started_at: monday,
            ended_at: Some(at(3, 8, 3, 0)),
            window_id: Some("w0"),
        }];
        let f = facts(tuesday, &runs, &shares, &lots);
        assert_eq!(
            decide(&f, at(3, 9, 0, 0)),
            Decision::Refund {
                tokens: 7,
                back: vec![share(1, 7)]
            }
        );
        // Monday's window was renewed: a process ran at its end.
        let mut mon = facts(monday, &runs, &shares, &lots);
        mon.window.id = "w0";
        mon.renewed = true;
        assert_eq!(reason(&decide(&mon, at(3, 9, 0, 0))), Some(Reason::Renewed));
    }

    /// 7 tokens came 5 from lot 1 and 2 from lot 2; lot 1 expired at 08:03,
    /// before the refund at 08:05: only lot 2's share comes back.
    #[test]
    fn a_lot_expired_meanwhile_gets_nothing_back() {
        let opened = at(2, 8, 0, 0);
        let lots = [
            lot(1, 0, at(2, 8, 3, 0)),
            lot(2, 98, expiry_of(at(1, 0, 0, 0))),
        ];
        let shares = [share(1, 5), share(2, 2)];
        let runs = [run("s1", opened, Some(at(2, 8, 1, 0)))];
        assert_eq!(
            decide(&facts(opened, &runs, &shares, &lots), at(2, 8, 5, 0)),
            Decision::Refund {
                tokens: 2,
                back: vec![share(2, 2)]
            }
        );
    }

    #[test]
    fn a_subscription_window_is_refunded_with_nothing() {
        let opened = at(2, 8, 0, 0);
        let f = facts(opened, &[], &[], &[]);
        assert_eq!(
            decide(&f, at(2, 8, 5, 0)),
            Decision::Refund {
                tokens: 0,
                back: vec![]
            }
        );
    }

    #[test]
    fn too_early_off_and_foreign_requests_are_refused_without_a_verdict() {
        let opened = at(2, 8, 0, 0);
        let lots = live_lot();
        let shares = [share(1, 7)];
        let f = facts(opened, &[], &shares, &lots);

        let d = decide(&f, at(2, 8, 4, 59));
        assert_eq!(reason(&d), Some(Reason::TooEarly));
        let Decision::Refuse(r) = d else {
            unreachable!()
        };
        assert!(
            r.message.contains("from 2026-11-02 08:05:00 UTC"),
            "names the time: {}",
            r.message
        );
        assert!(r.message.contains("5m"), "{}", r.message);

        let off = Facts {
            grace: Duration::zero(),
            ..f
        };
        assert_eq!(reason(&decide(&off, at(2, 9, 0, 0))), Some(Reason::Off));

        let other_device = Facts {
            grants: Grants {
                here: None,
                elsewhere: true,
            },
            ..f
        };
        assert_eq!(
            reason(&decide(&other_device, at(2, 9, 0, 0))),
            Some(Reason::NotThisDevice)
        );
        let other_product = Facts {
            asked_product: "revit",
            ..f
        };
        assert_eq!(
            reason(&decide(&other_product, at(2, 9, 0, 0))),
            Some(Reason::Mismatch)
        );
        for r in [
            Reason::NotThisDevice,
            Reason::Mismatch,
            Reason::Off,
            Reason::TooEarly,
        ] {
            assert!(!r.is_verdict(), "{r:?}");
        }
    }

    #[test]
    fn a_window_used_after_the_cut_or_elsewhere_is_judged_used() {
        let opened = at(2, 8, 0, 0);
        let lots = live_lot();
        let shares = [share(1, 7)];
        let now = at(2, 9, 0, 0);
        let f = facts(opened, &[], &shares, &lots);

        let shared = Facts {
            grants: Grants {
                here: Some(opened),
                elsewhere: true,
            },
            ..f
        };
        assert_eq!(reason(&decide(&shared, now)), Some(Reason::Shared));

        // A launch answered with the window exactly at the cut is a use.
        let granted = Facts {
            grants: Grants {
                here: Some(at(2, 8, 5, 0)),
                elsewhere: false,
            },
            ..f
        };
        assert_eq!(
            reason(&decide(&granted, now)),
            Some(Reason::GrantedAfterCut)
        );

        // Launched offline at 08:30 under the window's lease.
        let late = [run("s9", at(2, 8, 30, 0), Some(at(2, 8, 31, 0)))];
        let offline = Facts { runs: &late, ..f };
        assert_eq!(reason(&decide(&offline, now)), Some(Reason::RunAfterCut));
        // A run after the cut that belongs to another window is not this one's.
        let other = [Run {
            window_id: Some("w2"),
            ..late[0]
        }];
        assert_eq!(reason(&decide(&Facts { runs: &other, ..f }, now)), None);

        // A run that began at the cut or ended after it was running at it.
        for r in [
            run("a", at(2, 8, 5, 0), Some(at(2, 8, 6, 0))),
            run("b", opened, Some(at(2, 8, 5, 1))),
        ] {
            let runs = [r];
            assert_eq!(
                reason(&decide(&Facts { runs: &runs, ..f }, now)),
                Some(Reason::Running)
            );
        }
        // One that ended exactly at the cut was not.
        let runs = [run("c", opened, Some(at(2, 8, 5, 0)))];
        assert_eq!(reason(&decide(&Facts { runs: &runs, ..f }, now)), None);

        for r in [
            Reason::Shared,
            Reason::Renewed,
            Reason::GrantedAfterCut,
            Reason::Running,
            Reason::RunAfterCut,
        ] {
            assert!(r.is_verdict(), "{r:?}");
        }
    }
}
