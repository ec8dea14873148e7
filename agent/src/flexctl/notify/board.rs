//! Which notifications are on screen, so that none surprises: one per product
//! and subject, replaced when its state changes, withdrawn when it no longer
//! applies, never shown twice for one fact.
//!
//! Subjects:
//!
//! * **use** of a product: its charges, a renewal ahead, paused and resumed,
//!   a refund. A renewal notice becomes the renewal's charge; a pause becomes
//!   the resume; a refund replaces the charge it returns.
//! * **stop**: what threatens or ended a product: a refused launch, offline
//!   warnings, a renewal that failed, its close. A product the watcher found
//!   and the agent refused shows one notification that goes from "was not
//!   started" to "was closed", not two. A charge withdraws it: the product is
//!   licensed again (a renewal retried after a top-up, a new launch).
//! * the **network**: "back online", shown once when the server is reachable
//!   again, after offline warnings, which it withdraws.
//! * the **balance** and the **clock**, one each.
//!
//! Identical text in the same place is shown once: two windows of one product
//! get one warning. Pure: the caller writes the texts and carries out the
//! [`Step`]s.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use flex_protocol::socket::{display_name, CloseReason, Event};

use super::text::{Notification, Texts};

/// What a notification is about, within a product or on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Subject {
    Use,
    Stop,
    Network,
    Balance,
    Clock,
}

/// Where a notification goes: at most one is shown per slot.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Slot {
    /// The product id, for product subjects.
    pub product: Option<String>,
    pub subject: Subject,
}

impl Slot {
    fn of(product: &str, subject: Subject) -> Slot {
        Slot {
            product: Some(product.to_string()),
            subject,
        }
    }

    fn global(subject: Subject) -> Slot {
        Slot {
            product: None,
            subject,
        }
    }
}

/// What to do on screen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Show `Notification` in the slot, replacing what it holds.
    Show(Slot, Notification),
    /// Take the slot's notification off the screen.
    Withdraw(Slot),
}

/// What a shown notification stands for, beyond its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Says the server cannot be reached: withdrawn when it can.
    Offline,
    Other,
}

#[derive(Debug)]
struct Shown {
    n: Notification,
    kind: Kind,
}

/// The notifications on screen.
#[derive(Debug, Default)]
pub struct Board {
    shown: HashMap<Slot, Shown>,
}

impl Board {
    /// What to do for `event`, written with `texts`.
    pub fn event(&mut self, event: &Event, texts: &Texts) -> Vec<Step> {
        let mut steps = Vec::new();
        let name = |product: &str, product_name: &Option<String>| {
            display_name(product, product_name.as_deref()).to_string()
        };
        match event {
            Event::Charged { product, .. } => {
                // Licensed: what threatened the product no longer applies (a
                // renewal retried after a top-up, a new launch after a close).
                self.withdraw(&Slot::of(product.as_str(), Subject::Stop), &mut steps);
                self.show(
                    Slot::of(product.as_str(), Subject::Use),
                    texts.event(event),
                    Kind::Other,
                    &mut steps,
                );
            }
            Event::Resumed { product, .. } | Event::Refunded { product, .. } => {
                self.withdraw(&Slot::of(product.as_str(), Subject::Stop), &mut steps);
                self.show(
                    Slot::of(product.as_str(), Subject::Use),
                    texts.event(event),
                    Kind::Other,
                    &mut steps,
                );
            }
            Event::RenewalNotice { product, .. } | Event::Paused { product, .. } => self.show(
                Slot::of(product.as_str(), Subject::Use),
                texts.event(event),
                Kind::Other,
                &mut steps,
            ),
            Event::OfflineWarning { product, .. } => {
                self.withdraw(&Slot::global(Subject::Network), &mut steps);
                self.show(
                    Slot::of(product.as_str(), Subject::Stop),
                    texts.event(event),
                    Kind::Offline,
                    &mut steps,
                );
            }
            Event::ProductClosing {
                product, reason, ..
            } => {
                let kind = if *reason == CloseReason::Offline {
                    Kind::Offline
                } else {
                    Kind::Other
                };
                self.show(
                    Slot::of(product.as_str(), Subject::Stop),
                    texts.event(event),
                    kind,
                    &mut steps,
                );
            }
            Event::LaunchDenied { product, .. }
            | Event::OutOfTokens { product, .. }
            | Event::RenewalFailed { product, .. } => self.show(
                Slot::of(product.as_str(), Subject::Stop),
                texts.event(event),
                Kind::Other,
                &mut steps,
            ),
            Event::CloseWindows {
                product,
                product_name,
                kill_at,
                ..
            } => {
                // The notifier tells with the number of windows it asked;
                // this is the text when it could not ask any.
                let n = texts.closing_windows(&name(product.as_str(), product_name), kill_at, 0);
                self.show(
                    Slot::of(product.as_str(), Subject::Stop),
                    n,
                    Kind::Other,
                    &mut steps,
                );
            }
            Event::ProductClosed { product, .. } => {
                self.withdraw(&Slot::of(product.as_str(), Subject::Use), &mut steps);
                self.show(
                    Slot::of(product.as_str(), Subject::Stop),
                    texts.event(event),
                    Kind::Other,
                    &mut steps,
                );
            }
            Event::BackOnline => {
                let offline: Vec<Slot> = self
                    .shown
                    .iter()
                    .filter(|(_, s)| s.kind == Kind::Offline)
                    .map(|(slot, _)| slot.clone())
                    .collect();
                // Nothing said the server was gone: nothing to take back.
                if !offline.is_empty() {
                    for slot in offline {
                        self.withdraw(&slot, &mut steps);
                    }
                    self.show(
                        Slot::global(Subject::Network),
                        texts.event(event),
                        Kind::Other,
                        &mut steps,
                    );
                }
            }
            Event::LowBalance { .. } => self.show(
                Slot::global(Subject::Balance),
                texts.event(event),
                Kind::Other,
                &mut steps,
            ),
            Event::ClockRollback { .. } => self.show(
                Slot::global(Subject::Clock),
                texts.event(event),
                Kind::Other,
                &mut steps,
            ),
        }
        steps
    }

    /// The close of `product` under way, after `windows` windows were asked.
    pub fn closing_windows(
        &mut self,
        product: &str,
        product_name: Option<&str>,
        kill_at: &DateTime<Utc>,
        windows: u32,
        texts: &Texts,
    ) -> Vec<Step> {
        let mut steps = Vec::new();
        let n = texts.closing_windows(display_name(product, product_name), kill_at, windows);
        self.show(Slot::of(product, Subject::Stop), n, Kind::Other, &mut steps);
        steps
    }

    fn show(&mut self, slot: Slot, n: Notification, kind: Kind, steps: &mut Vec<Step>) {
        if let Some(shown) = self.shown.get_mut(&slot).filter(|s| s.n == n) {
            // The same words in the same place: already on screen.
            shown.kind = kind;
            return;
        }
        self.shown
            .insert(slot.clone(), Shown { n: n.clone(), kind });
        steps.push(Step::Show(slot, n));
    }

    fn withdraw(&mut self, slot: &Slot, steps: &mut Vec<Step>) {
        if self.shown.remove(slot).is_some() {
            steps.push(Step::Withdraw(slot.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::{Duration, TimeZone};
    use flex_protocol::ErrorCode;

    use super::*;
    use crate::flexctl::zone::Zone;

    fn texts() -> Texts {
        Texts {
            now: Utc.with_ymd_and_hms(2026, 11, 30, 7, 45, 0).unwrap(),
            zone: Zone::Named(chrono_tz::UTC),
        }
    }

    fn name() -> Option<String> {
        Some("AutoCAD".into())
    }

    /// An offline warning with the deadline of the device's offline limit.
    fn warning(seconds_left: u64) -> Event {
        Event::OfflineWarning {
            product: "autocad".parse().unwrap(),
            product_name: name(),
            seconds_left,
            deadline: Utc.with_ymd_and_hms(2026, 11, 30, 8, 15, 0).unwrap(),
        }
    }

    fn shown(steps: &[Step]) -> Vec<(Subject, String)> {
        steps
            .iter()
            .filter_map(|s| match s {
                Step::Show(slot, n) => Some((slot.subject, n.summary.clone())),
                Step::Withdraw(_) => None,
            })
            .collect()
    }

    fn withdrawn(steps: &[Step]) -> Vec<Subject> {
        steps
            .iter()
            .filter_map(|s| match s {
                Step::Withdraw(slot) => Some(slot.subject),
                Step::Show(..) => None,
            })
            .collect()
    }

    #[test]
    fn a_repeated_warning_is_shown_once_and_a_new_one_replaces_it() {
        let mut b = Board::default();
        let t = texts();
        assert_eq!(
            shown(&b.event(&warning(1800), &t)),
            [(Subject::Stop, "AutoCAD closes in 30 min".to_string())]
        );
        // Two processes of AutoCAD: the same warning again, a second apart.
        assert!(b.event(&warning(1800), &t).is_empty());
        assert!(b.event(&warning(1799), &t).is_empty());
        // The next warning takes the first one's place.
        let steps = b.event(&warning(300), &t);
        assert_eq!(
            steps,
            [Step::Show(
                Slot::of("autocad", Subject::Stop),
                t.event(&warning(300))
            )]
        );
    }

    #[test]
    fn back_online_withdraws_the_offline_warnings_and_is_said_once() {
        let mut b = Board::default();
        let t = texts();
        b.event(&warning(300), &t);
        b.event(
            &Event::OfflineWarning {
                product: "revit".parse().unwrap(),
                product_name: None,
                seconds_left: 300,
                deadline: t.now,
            },
            &t,
        );
        let steps = b.event(&Event::BackOnline, &t);
        assert_eq!(withdrawn(&steps), [Subject::Stop, Subject::Stop]);
        assert_eq!(
            shown(&steps),
            [(Subject::Network, "Back online".to_string())]
        );
        // Again: nothing left to take back, nothing to say.
        assert!(b.event(&Event::BackOnline, &t).is_empty());
        // A later warning takes "back online" off the screen.
        let steps = b.event(&warning(300), &t);
        assert_eq!(withdrawn(&steps), [Subject::Network]);
    }

    #[test]
    fn back_online_with_no_warning_says_nothing() {
        let mut b = Board::default();
        assert!(b.event(&Event::BackOnline, &texts()).is_empty());
    }

    #[test]
    fn a_refused_product_that_was_running_shows_one_notification() {
        let mut b = Board::default();
        let t = texts();
        let denied = b.event(
            &Event::LaunchDenied {
                product: "maya".parse().unwrap(),
                product_name: Some("Maya".into()),
                reason: ErrorCode::NotEntitled,
                message: "no".into(),
            },
            &t,
        );
        let closed = b.event(
            &Event::ProductClosed {
                product: "maya".parse().unwrap(),
                product_name: Some("Maya".into()),
                reason: CloseReason::NotEntitled,
                message: "no".into(),
            },
            &t,
        );
        // Both in the one slot: the second replaces the first on screen.
        let slot = |steps: &[Step]| match &steps[0] {
            Step::Show(slot, _) => slot.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(slot(&denied), slot(&closed));
        assert_eq!(shown(&closed), [(Subject::Stop, "Maya was closed".into())]);
    }

    #[test]
    fn a_renewal_notice_becomes_the_renewal_and_a_charge_ends_a_failed_renewal() {
        let mut b = Board::default();
        let t = texts();
        let at = t.now + Duration::minutes(15);
        let notice = b.event(
            &Event::RenewalNotice {
                product: "autocad".parse().unwrap(),
                product_name: name(),
                at,
                tokens: 7,
            },
            &t,
        );
        assert_eq!(
            shown(&notice),
            [(
                Subject::Use,
                "AutoCAD renews at Mon 08:00 UTC for 7 tokens".into()
            )]
        );
        let failed = b.event(
            &Event::RenewalFailed {
                product: "autocad".parse().unwrap(),
                product_name: name(),
                reason: ErrorCode::OutOfTokens,
                closes_at: at + Duration::minutes(30),
            },
            &t,
        );
        assert_eq!(shown(&failed)[0].0, Subject::Stop);
        // Tokens were bought, the retry was charged: the warning goes, and
        // the renewal's charge takes the notice's place.
        let charged = b.event(
            &Event::Charged {
                product: "autocad".parse().unwrap(),
                product_name: name(),
                tokens: 7,
                balance: 93,
                window_end: Some(at + Duration::hours(24)),
                renewal: true,
            },
            &t,
        );
        assert_eq!(withdrawn(&charged), [Subject::Stop]);
        assert_eq!(
            shown(&charged),
            [(Subject::Use, "AutoCAD renewed: 7 tokens charged".into())]
        );
        // A later charge (a new launch) replaces it again.
        let again = b.event(
            &Event::Charged {
                product: "autocad".parse().unwrap(),
                product_name: name(),
                tokens: 7,
                balance: 86,
                window_end: Some(at + Duration::hours(48)),
                renewal: false,
            },
            &t,
        );
        assert_eq!(
            shown(&again),
            [(Subject::Use, "AutoCAD: 7 tokens charged".into())]
        );
    }

    #[test]
    fn a_pause_becomes_the_resume_and_a_close_withdraws_the_use() {
        let mut b = Board::default();
        let t = texts();
        b.event(
            &Event::Paused {
                product: "autocad".parse().unwrap(),
                product_name: name(),
                since: t.now,
            },
            &t,
        );
        let resumed = b.event(
            &Event::Resumed {
                product: "autocad".parse().unwrap(),
                product_name: name(),
                tokens: 7,
            },
            &t,
        );
        assert_eq!(
            shown(&resumed),
            [(Subject::Use, "AutoCAD is in use again".into())]
        );
        let closed = b.event(
            &Event::ProductClosed {
                product: "autocad".parse().unwrap(),
                product_name: name(),
                reason: CloseReason::Offline,
                message: "offline".into(),
            },
            &t,
        );
        assert_eq!(withdrawn(&closed), [Subject::Use]);
        assert_eq!(
            shown(&closed),
            [(Subject::Stop, "AutoCAD was closed".into())]
        );
    }

    #[test]
    fn the_close_under_way_says_how_long_a_save_prompt_has() {
        let mut b = Board::default();
        let t = texts();
        let kill_at = t.now + Duration::seconds(89);
        let steps = b.closing_windows("autocad", Some("AutoCAD"), &kill_at, 2, &t);
        let Step::Show(_, n) = &steps[0] else {
            panic!("{steps:?}")
        };
        assert_eq!(n.summary, "AutoCAD is being closed");
        assert_eq!(
            n.body,
            "AutoCAD was asked to close: save your work now. A save prompt has 2 min: AutoCAD is stopped at 07:46:29 UTC."
        );
    }
}
