//! Closing a product so that it can keep unsaved work, and saying so once.
//!
//! A run that must close (refused, offline too long, a renewal that could not
//! be paid, a revoked workstation) goes through these steps, each at most once:
//!
//! 1. **Announce**: the user and the wrapper holding the run get
//!    `product_closing` with the deadline, as soon as the close is scheduled
//!    (a wrapper's product integration can save on its own).
//! 2. **Ask the desktop** (at the deadline): if a notifier of the run's
//!    account is reporting, it is asked (`close_windows`) to close the
//!    process's windows the way the window manager does, so the product can
//!    ask to save. It answers how many windows it asked; none, or no answer
//!    within [`DESKTOP_ANSWER`], and the next step follows at once.
//! 3. **Graceful stop** when there is no window to ask: the wrapper's order
//!    (`product_closed` on its connection) or SIGTERM through the process
//!    handle.
//! 4. **Kill** `close_grace` after the deadline, whatever happened: a product
//!    is not licensed past its limit.
//!
//! Users are told "was closed" when the process has exited, not when it was
//! asked to; a product that was refused at launch was already reported as
//! not started and is not reported again.

use chrono::{DateTime, Utc};
use flex_protocol::socket::Event;

use super::runs::{Found, Run, RunState};
use super::{Action, CloseRoute, Core};
use crate::account::AccountId;

/// How long the desktop has to say whether it found windows to close.
pub(super) const DESKTOP_ANSWER: chrono::Duration = chrono::Duration::seconds(3);

/// The wrapper's order, or the signal: the graceful step without a desktop.
fn graceful_route(
    conn: Option<super::ConnId>,
    process: Option<crate::process::ProcessId>,
    event: &Event,
) -> CloseRoute {
    match (conn, process) {
        (Some(conn), fallback) => CloseRoute::Wrapper {
            conn,
            event: event.clone(),
            fallback,
        },
        (None, Some(process)) => CloseRoute::Signal { process },
        (None, None) => CloseRoute::Nothing,
    }
}

impl Core {
    /// Carries out what is due in every close.
    pub(super) fn run_closes(&mut self, out: &mut Vec<Action>) {
        let now = self.contact.now();
        let grace = chrono::Duration::seconds(self.policy.close_grace_secs as i64);
        let mut ended = Vec::new();
        for found in self.runs.all() {
            let desktop = self
                .runs
                .get(&found)
                .is_some_and(|r| r.process.is_some() && self.activity.has_desktop(&r.account, now));
            let wall = |t: DateTime<Utc>| self.contact.clock.wall_at(t);
            let products = &self.products;
            let Some(run) = self.runs.get_mut(&found) else {
                continue;
            };
            let name = super::name_of(products, &run.product);
            let conn = run.wrapper.as_ref().and_then(|w| w.conn);
            let RunState::Closing { close, cover } = &mut run.state else {
                continue;
            };
            // Refused at launch: its user was told it was not started.
            let refused = cover.is_none() && close.renewal_of.is_none();
            let closed_event = Event::ProductClosed {
                product: run.product.clone(),
                product_name: name.clone(),
                reason: close.reason,
                message: close.message.clone(),
            };
            if !close.announced {
                close.announced = true;
                let event = Event::ProductClosing {
                    product: run.product.clone(),
                    product_name: name.clone(),
                    reason: close.reason,
                    message: close.message.clone(),
                    deadline: wall(close.term_at.max(now)),
                };
                if let Some(conn) = conn {
                    out.push(Action::TellWrapper {
                        conn,
                        event: event.clone(),
                    });
                }
                if !refused {
                    out.push(Action::Notify {
                        account: Some(run.account.clone()),
                        event,
                    });
                }
            }
            if close.kill_at.is_none() && now >= close.term_at {
                let kill_at = now + grace;
                close.kill_at = Some(kill_at);
                if let (true, Some(process)) = (desktop, run.process) {
                    close.asked_desktop = Some(now);
                    out.push(Action::Notify {
                        account: Some(run.account.clone()),
                        event: Event::CloseWindows {
                            pid: process.pid,
                            product: run.product.clone(),
                            product_name: name.clone(),
                            kill_at: wall(kill_at),
                        },
                    });
                }
            }
            let desktop_silent = close
                .asked_desktop
                .is_none_or(|asked| now >= asked + DESKTOP_ANSWER);
            if close.kill_at.is_some() && !close.graceful && desktop_silent {
                close.graceful = true;
                let route = graceful_route(conn, run.process, &closed_event);
                if route == CloseRoute::Nothing {
                    ended.push(found.clone());
                }
                out.push(Action::Close {
                    session: run.id.clone(),
                    route,
                    graceful: true,
                });
            }
            if let Some(kill_at) = close.kill_at {
                if !close.killed && now >= kill_at {
                    close.killed = true;
                    match run.process {
                        Some(process) => out.push(Action::Kill {
                            session: run.id.clone(),
                            process,
                        }),
                        // A wrapper told to close a product it never
                        // attached: nothing runs, the session ends.
                        None => ended.push(found.clone()),
                    }
                }
            }
        }
        for found in ended {
            if let Found::Pending(id) = found {
                if let Some(run) = self.runs.take_pending(&id) {
                    self.end_run(&run, out);
                }
            }
        }
    }

    /// When closes next need attention.
    pub(super) fn close_deadlines(&self) -> Vec<DateTime<Utc>> {
        let mut at = Vec::new();
        for close in self.runs.iter().filter_map(|r| r.closing()) {
            if !close.announced {
                at.push(close.term_at.min(self.contact.now()));
            }
            match close.kill_at {
                None => at.push(close.term_at),
                Some(k) if !close.killed => {
                    at.push(k);
                    if let (Some(asked), false) = (close.asked_desktop, close.graceful) {
                        at.push(asked + DESKTOP_ANSWER);
                    }
                }
                Some(_) => {}
            }
        }
        at
    }

    /// The desktop of `account` asked `windows` windows of process `pid` to
    /// close: with none, the graceful stop goes by signal at once.
    pub(super) fn windows_closing(&mut self, account: &AccountId, pid: u32, windows: u32) {
        for run in self.runs.iter_mut() {
            if &run.account != account || run.process.is_none_or(|p| p.pid != pid) {
                continue;
            }
            let RunState::Closing { close, .. } = &mut run.state else {
                continue;
            };
            if close.asked_desktop.is_none() || close.graceful {
                continue;
            }
            if windows > 0 {
                // The product was asked as the desktop asks: it may save, and
                // is killed at kill_at whatever it does.
                close.graceful = true;
            } else {
                // No window to ask: the graceful stop goes by signal now
                // (run_closes, in this same evaluation).
                close.asked_desktop = None;
            }
        }
    }

    /// Tells the user a closed run's product has closed, once per product:
    /// when its last closing process of that user exited. A run refused at
    /// launch was reported as not started, and is not reported again.
    pub(super) fn closed(&mut self, run: &Run, out: &mut Vec<Action>) {
        let RunState::Closing { close, cover } = &run.state else {
            return;
        };
        if cover.is_none() && close.renewal_of.is_none() {
            return;
        }
        let more = self.runs.iter().any(|r| {
            r.account == run.account
                && r.product == run.product
                && matches!(r.state, RunState::Closing { .. })
        });
        if more {
            return;
        }
        out.push(Action::Notify {
            account: Some(run.account.clone()),
            event: Event::ProductClosed {
                product: run.product.clone(),
                product_name: self.product_name(&run.product),
                reason: close.reason,
                message: close.message.clone(),
            },
        });
    }
}
