//! The hostile-client property test of the enforcement set.
//!
//! Random sequences of what local users can do — start processes, exec
//! products in them, end them, and send the agent `launch`, `attach`, `exit`
//! and `result` naming their own processes (product or not, running or not
//! yet a product), foreign sessions, sessions that ended or never were —
//! interleaved with server outages, entitlement and balance changes and time
//! passing, against the real core with the fake server and a real journal.
//! A model kernel plays the processes: a graceful close ends a process unless
//! it ignores SIGTERM, a kill always does, and every exec and exit is reported
//! as the watcher would.
//!
//! After every step:
//!
//! * every running product process is in the enforcement set, and nothing
//!   that exited is;
//! * no product process runs unpaid (no server window for its user and
//!   product covers the moment) for longer than the claim timeout, or the
//!   renewal grace, plus `close_grace` — or, if the server was unreachable
//!   meanwhile, the offline limit plus `close_grace`;
//! * no process is ever signalled unless it runs a product or its owner
//!   named it in a `launch` or `attach`, and never one that has exited.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use proptest::prelude::*;

use super::testkit::*;
use super::{Action, Caller, CloseRoute, Input, LaunchRequest, CLAIM_TIMEOUT};
use crate::process::ProcessId;

const ACCOUNTS: [&str; 3] = ["alice", "bob", "mallory"];
const PRODUCTS: [&str; 2] = ["autocad", "revit"];
/// Time advances in steps of at most this, so a timer fires at most this late.
const STEP: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
enum Target {
    None,
    /// One of the account's own processes (by index among them).
    Own(usize),
}

#[derive(Debug, Clone)]
enum Op {
    Spawn {
        account: usize,
        product: Option<usize>,
        ignores_term: bool,
    },
    Exec {
        process: usize,
        product: usize,
    },
    End {
        process: usize,
    },
    Launch {
        conn: u64,
        account: usize,
        product: usize,
        target: Target,
    },
    Attach {
        conn: u64,
        account: usize,
        session: usize,
        process: usize,
    },
    Exit {
        conn: u64,
        account: usize,
        session: usize,
    },
    CloseConn {
        conn: u64,
    },
    Job {
        account: usize,
        job: u8,
    },
    Network(bool),
    Flex {
        account: usize,
        on: bool,
    },
    Buy(u64),
    Wait {
        secs: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let account = 0..ACCOUNTS.len();
    let product = 0..PRODUCTS.len();
    let target = prop_oneof![Just(Target::None), (0..4usize).prop_map(Target::Own)];
    prop_oneof![
        4 => (account.clone(), proptest::option::of(product.clone()), any::<bool>())
            .prop_map(|(account, product, ignores_term)| Op::Spawn { account, product, ignores_term }),
        2 => (0..12usize, product.clone()).prop_map(|(process, product)| Op::Exec { process, product }),
        2 => (0..12usize).prop_map(|process| Op::End { process }),
        4 => (0..4u64, account.clone(), product.clone(), target)
            .prop_map(|(conn, account, product, target)| Op::Launch { conn, account, product, target }),
        2 => (0..4u64, account.clone(), 0..8usize, 0..12usize)
            .prop_map(|(conn, account, session, process)| Op::Attach { conn, account, session, process }),
        3 => (0..4u64, account.clone(), 0..8usize)
            .prop_map(|(conn, account, session)| Op::Exit { conn, account, session }),
        1 => (0..4u64).prop_map(|conn| Op::CloseConn { conn }),
        1 => (account.clone(), any::<u8>()).prop_map(|(account, job)| Op::Job { account, job }),
        1 => any::<bool>().prop_map(Op::Network),
        1 => (account, any::<bool>()).prop_map(|(account, on)| Op::Flex { account, on }),
        1 => (1..40u64).prop_map(Op::Buy),
        5 => (1..1200u64).prop_map(|secs| Op::Wait { secs }),
    ]
}

/// A process of the model kernel.
#[derive(Debug, Clone)]
struct Proc {
    id: ProcessId,
    account: usize,
    product: Option<usize>,
    ignores_term: bool,
    alive: bool,
    /// Its owner named it in a `launch` or `attach`.
    named: bool,
    /// Since when no server window covers it (while it runs a product).
    unpaid_since: Option<DateTime<Utc>>,
    /// The server was unreachable at some point since `unpaid_since`.
    offline_meanwhile: bool,
}

struct World {
    h: Harness,
    procs: Vec<Proc>,
    sessions: Vec<flex_protocol::SessionId>,
    next_pid: u32,
    next_request: u64,
    up: bool,
}

impl World {
    fn new() -> World {
        let mut server = FakeServer::new(40);
        server.policy.window_secs = 3600;
        server.policy.flex_offline_limit_secs = 1200;
        server.policy.offline_warning_secs = vec![300];
        server.policy.heartbeat_interval_secs = 300;
        server.policy.renewal_grace_secs = 120;
        server.policy.close_grace_secs = 30;
        let h = Harness::with_server(monday(8, 0), server, journal_dir());
        World {
            h,
            procs: Vec::new(),
            sessions: Vec::new(),
            next_pid: 100,
            next_request: 0,
            up: true,
        }
    }

    fn own(&self, account: usize, i: usize) -> Option<usize> {
        self.procs
            .iter()
            .enumerate()
            .filter(|(_, p)| p.account == account && p.alive)
            .map(|(n, _)| n)
            .nth(i)
    }

    fn alive(&self, i: usize) -> Option<usize> {
        let alive: Vec<usize> = (0..self.procs.len())
            .filter(|&n| self.procs[n].alive)
            .collect();
        (!alive.is_empty()).then(|| alive[i % alive.len()])
    }

    /// Feeds an input and plays the kernel's part for what the core did.
    fn feed(&mut self, input: Input) -> Vec<Action> {
        let actions = self.h.feed(input);
        self.kernel(&actions);
        actions
    }

    /// Signals reach processes: checks who may be signalled, ends the ones
    /// that stop, and reports their exits.
    fn kernel(&mut self, actions: &[Action]) {
        let mut ended = Vec::new();
        for a in actions {
            let (target, forced) = match a {
                Action::Close {
                    route: CloseRoute::Signal { process },
                    ..
                } => (*process, false),
                // A hostile wrapper ignores the close it is sent; the kill
                // through the process handle still comes.
                Action::Close { .. } => continue,
                Action::Kill { process, .. } => (*process, true),
                _ => continue,
            };
            let p = self
                .procs
                .iter()
                .find(|p| p.id == target)
                .unwrap_or_else(|| panic!("signalled {target:?}, which never existed"));
            assert!(p.alive, "signalled {target:?} after it exited");
            assert!(
                p.product.is_some() || p.named,
                "signalled {target:?}, which runs no product and was never named by its owner"
            );
            if forced || !p.ignores_term {
                ended.push(target);
            }
        }
        for id in ended {
            if let Some(p) = self.procs.iter_mut().find(|p| p.id == id && p.alive) {
                p.alive = false;
                self.feed(Input::ProcessExited { process: id });
            }
        }
    }

    fn request(&mut self) -> String {
        self.next_request += 1;
        format!("h{}", self.next_request)
    }

    fn caller(account: usize) -> Caller {
        Caller {
            account: uid_of(ACCOUNTS[account]),
            admin: false,
        }
    }

    fn exec(&mut self, i: usize, product: usize) {
        self.procs[i].product = Some(product);
        let p = self.procs[i].clone();
        let account = ACCOUNTS[p.account];
        let actions = self.h.detect(account, PRODUCTS[product], p.id);
        self.kernel(&actions);
    }

    fn apply(&mut self, op: &Op) {
        match op.clone() {
            Op::Spawn {
                account,
                product,
                ignores_term,
            } => {
                self.next_pid += 1;
                self.procs.push(Proc {
                    id: ProcessId {
                        pid: self.next_pid,
                        start: 7,
                    },
                    account,
                    product: None,
                    ignores_term,
                    alive: true,
                    named: false,
                    unpaid_since: None,
                    offline_meanwhile: false,
                });
                if let Some(product) = product {
                    self.exec(self.procs.len() - 1, product);
                }
            }
            Op::Exec { process, product } => {
                if let Some(i) = self.alive(process) {
                    self.exec(i, product);
                }
            }
            Op::End { process } => {
                if let Some(i) = self.alive(process) {
                    self.procs[i].alive = false;
                    let id = self.procs[i].id;
                    self.feed(Input::ProcessExited { process: id });
                }
            }
            Op::Launch {
                conn,
                account,
                product,
                target,
            } => {
                // The socket lets an account name only its own running processes.
                let process = match target {
                    Target::None => None,
                    Target::Own(i) => match self.own(account, i) {
                        Some(n) => {
                            self.procs[n].named = true;
                            Some(self.procs[n].id)
                        }
                        None => return,
                    },
                };
                let request = self.request();
                let actions = self.feed(Input::Launch(LaunchRequest {
                    request,
                    conn,
                    account: uid_of(ACCOUNTS[account]),
                    account_name: ACCOUNTS[account].into(),
                    user: email_of(ACCOUNTS[account]),
                    product: PRODUCTS[product].parse().unwrap(),
                    version: None,
                    process,
                }));
                for a in &actions {
                    if let Action::ReplyLaunch { result: Ok(r), .. } = a {
                        self.sessions.push(r.session.clone());
                    }
                }
            }
            Op::Attach {
                conn,
                account,
                session,
                process,
            } => {
                let Some(n) = self.own(account, process) else {
                    return;
                };
                self.procs[n].named = true;
                let session = self.session(session);
                let request = self.request();
                let id = self.procs[n].id;
                self.feed(Input::Attach {
                    request,
                    conn,
                    caller: Self::caller(account),
                    session,
                    process: id,
                });
            }
            Op::Exit {
                conn,
                account,
                session,
            } => {
                let session = self.session(session);
                let request = self.request();
                self.feed(Input::Exit {
                    request,
                    conn,
                    caller: Self::caller(account),
                    session,
                });
            }
            Op::CloseConn { conn } => {
                self.feed(Input::ConnectionClosed { conn });
            }
            Op::Job { account, job } => {
                let actions = self
                    .h
                    .job(ACCOUNTS[account], "recap-photo", 60, &format!("j{job}"));
                self.kernel(&actions);
            }
            Op::Network(up) => {
                self.up = up;
                self.h.network = if up { Network::Up } else { Network::Down };
                let actions = self.h.feed(Input::Tick);
                self.kernel(&actions);
            }
            Op::Flex { account, on } => {
                let email = email_of(ACCOUNTS[account]).to_string();
                if on {
                    self.h.server.not_on_flex.remove(&email);
                } else {
                    self.h.server.not_on_flex.insert(email);
                }
            }
            Op::Buy(tokens) => self.h.server.balance += tokens,
            Op::Wait { secs } => {
                let mut left = Duration::from_secs(secs);
                while !left.is_zero() {
                    let step = left.min(STEP);
                    left -= step;
                    let actions = self.h.advance(step);
                    self.kernel(&actions);
                    self.check();
                }
            }
        }
    }

    /// A session id a client might send: one it was given, or a made-up one.
    fn session(&self, i: usize) -> flex_protocol::SessionId {
        if i < self.sessions.len() {
            self.sessions[i].clone()
        } else {
            format!("made-up-{i}").parse().unwrap()
        }
    }

    fn check(&mut self) {
        let now = self.h.true_time;
        let policy = self.h.server.policy.clone();
        let close_grace = chrono::Duration::seconds(policy.close_grace_secs as i64);
        let slack = chrono::Duration::from_std(STEP).unwrap() * 2;
        let online_bound = CLAIM_TIMEOUT
            .max(chrono::Duration::seconds(policy.renewal_grace_secs as i64))
            + close_grace
            + slack;
        let offline_bound =
            chrono::Duration::seconds(policy.flex_offline_limit_secs as i64) + close_grace + slack;
        let mut live: BTreeSet<(ProcessId, flex_protocol::ProductId)> = BTreeSet::new();
        for p in self.procs.iter_mut().filter(|p| p.alive) {
            let Some(product) = p.product else {
                continue;
            };
            let product = PRODUCTS[product];
            let key = (p.id, product.parse().unwrap());
            assert!(
                self.h.core.runs.live(&key).is_some(),
                "{key:?} runs a product but is not in the enforcement set"
            );
            live.insert(key.clone());
            let user = email_of(ACCOUNTS[p.account]);
            let paid = self
                .h
                .server
                .window_of(&user, product)
                .is_some_and(|w| w.start <= now && now < w.end);
            if paid {
                p.unpaid_since = None;
                p.offline_meanwhile = false;
                continue;
            }
            let since = *p.unpaid_since.get_or_insert(now);
            p.offline_meanwhile |= !self.up;
            let bound = if p.offline_meanwhile {
                offline_bound
            } else {
                online_bound
            };
            assert!(
                now - since <= bound,
                "{key:?} of {} ran unpaid from {since} to {now}, over {bound}",
                ACCOUNTS[p.account]
            );
        }
        for run in self.h.core.runs.iter() {
            if let Some(process) = run.process {
                let alive = self.procs.iter().any(|p| p.id == process && p.alive);
                assert!(alive, "{process:?} exited but is still in the set");
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 1000,
        max_shrink_iters: 2000,
        .. ProptestConfig::default()
    })]

    #[test]
    fn hostile_clients_never_take_a_product_out_of_enforcement(ops in proptest::collection::vec(op(), 1..60)) {
        let mut w = World::new();
        for op in &ops {
            if let Op::Network(up) = op {
                if !up {
                    for p in w.procs.iter_mut() {
                        p.offline_meanwhile = true;
                    }
                }
            }
            w.apply(op);
            w.check();
        }
        // And whatever was done, time passing settles everything.
        w.apply(&Op::Network(true));
        w.apply(&Op::Wait { secs: 7200 });
        w.check();
    }
}
