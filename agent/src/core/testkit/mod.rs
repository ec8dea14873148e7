//! The one fake of each thing the core's tests need: a driven clock (true time,
//! a wall clock the "user" can move, a boot clock that counts suspend), a fake
//! entitlement server that answers claims and heartbeats like the real one, and a
//! harness that plays the driver's part, journaling into a real SQLite file.

use std::collections::VecDeque;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use flex_protocol::api::ClaimRequest;
use flex_protocol::socket::{Event, LaunchReply};

use super::{
    Action, Caller, CloseRoute, Core, CoreConfig, CoreState, Input, JobRequest, LaunchRequest, Now,
    ProcessInfo, Refusal,
};
use crate::account::AccountId;
use crate::journal::Journal;
use crate::process::ProcessId;
use flex_protocol::Email;

mod server;
pub use server::FakeServer;

pub const DEVICE: &str = "dev-1";

/// Monday 2026-11-02 at `h`:`m` UTC.
pub fn monday(h: u32, m: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 2, h, m, 0).unwrap()
}

pub fn hours(h: u64) -> Duration {
    Duration::from_secs(h * 3600)
}

pub fn uid_of(account: &str) -> AccountId {
    AccountId::from_uid(match account {
        "alice" => 1001,
        "bob" => 1002,
        _ => 1999,
    })
}

pub fn email_of(account: &str) -> Email {
    Email::parse(&format!("{account}@example.com")).unwrap()
}

/// A process the harness "starts": pid and a start time of its own.
pub fn process(pid: u32) -> ProcessId {
    ProcessId {
        pid,
        start: 1_000 + u64::from(pid),
    }
}

/// What happens to claims the core sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    Up,
    /// Every request fails in transport.
    Down,
    /// Claims reach the server but the answers are lost (the agent dies first).
    LoseAnswers,
    /// Claims are journaled but the agent dies before sending them.
    DieBeforeSend,
    /// Claims stay in flight until [`Harness::release_claims`] delivers them.
    Hold,
    /// Requests leave and nothing answers yet: claims are held as with
    /// [`Network::Hold`], a heartbeat (a check of the server) waits.
    Silent,
}

/// A directory for a real SQLite journal, on tmpfs where there is one:
/// month-long scenarios journal tens of thousands of batches and disk fsyncs
/// would dominate.
pub fn journal_dir() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
    .unwrap()
}

/// Plays the driver: owns the core, the clocks, the fake server and a journal.
pub struct Harness {
    pub core: Core,
    pub server: FakeServer,
    pub journal: Journal,
    _dir: tempfile::TempDir,
    /// The real time, which the server's clock shows.
    pub true_time: DateTime<Utc>,
    /// How far the user moved the workstation's wall clock.
    pub wall_offset: chrono::Duration,
    pub boot: Duration,
    pub boot_id: String,
    pub network: Network,
    pub enforce: bool,
    /// Every action the core returned, in order.
    pub log: Vec<Action>,
    next_request: u64,
    next_pid: u32,
    /// Processes the core asked to track and has not released.
    pub tracked: std::collections::BTreeSet<ProcessId>,
    /// Claims sent while the network holds them ([`Network::Hold`]).
    pub held: Vec<ClaimRequest>,
    /// The share of a core each process uses (by pid; 0 unless set).
    pub cpu_percent: std::collections::HashMap<u32, f64>,
    /// CPU time each process used so far, and when it was last counted.
    cpu_used: std::collections::HashMap<u32, (DateTime<Utc>, Duration)>,
}

impl Harness {
    /// An enrolled agent that reached the server at `start`.
    pub fn new(start: DateTime<Utc>, balance: u64) -> Self {
        Self::with_backlog(start, balance, Vec::new())
    }

    /// Like [`new`](Self::new), with the server holding `notices` at that first
    /// contact.
    pub fn with_backlog(
        start: DateTime<Utc>,
        balance: u64,
        notices: Vec<flex_protocol::api::Notice>,
    ) -> Self {
        let dir = journal_dir();
        let mut server = FakeServer::new(balance);
        server.notices = notices;
        Self::with_server(start, server, dir)
    }

    /// An enrolled agent that first reaches `server` at `start` (its policy
    /// applies from then on).
    pub fn with_server(start: DateTime<Utc>, server: FakeServer, dir: tempfile::TempDir) -> Self {
        let journal = Journal::open_in(&dir.path().join("state")).unwrap();
        let boot = Duration::from_secs(3600);
        let config = CoreConfig {
            device_id: DEVICE.into(),
            enforce: true,
            verifier: server.verifier(),
        };
        let now = Now { wall: start, boot };
        let (core, first) = Core::restore(config, CoreState::default(), now, Some("boot-1".into()));
        let mut h = Harness {
            core,
            server,
            journal,
            _dir: dir,
            true_time: start,
            wall_offset: chrono::Duration::zero(),
            boot,
            boot_id: "boot-1".into(),
            network: Network::Up,
            enforce: true,
            log: Vec::new(),
            next_request: 1,
            next_pid: 4000,
            tracked: Default::default(),
            held: Vec::new(),
            cpu_percent: Default::default(),
            cpu_used: Default::default(),
        };
        let mut queue = VecDeque::new();
        h.absorb(first, &mut queue, &mut Vec::new());
        h.drain(queue);
        h
    }

    pub fn now(&self) -> Now {
        Now {
            wall: self.true_time + self.wall_offset,
            boot: self.boot,
        }
    }

    fn config(&self) -> CoreConfig {
        CoreConfig {
            device_id: DEVICE.into(),
            enforce: self.enforce,
            verifier: self.server.verifier(),
        }
    }

    /// Feeds one input and every answer the fake server gives in return; returns
    /// all actions of the exchange.
    pub fn feed(&mut self, input: Input) -> Vec<Action> {
        self.drain(VecDeque::from([input]))
    }

    fn absorb(&mut self, actions: Vec<Action>, queue: &mut VecDeque<Input>, all: &mut Vec<Action>) {
        // The driver's contract: journal first, then act.
        self.journal.apply(&actions).unwrap();
        for a in &actions {
            match a {
                Action::Claim { claim_id, request } => match self.network {
                    Network::Up => queue.push_back(Input::ClaimAnswered {
                        claim_id: claim_id.clone(),
                        response: self.server.claim(request, self.true_time),
                    }),
                    Network::Down => queue.push_back(Input::ClaimFailed {
                        claim_id: claim_id.clone(),
                        error: "connection refused".into(),
                    }),
                    Network::LoseAnswers => {
                        self.server.claim(request, self.true_time);
                    }
                    Network::DieBeforeSend => {}
                    Network::Hold | Network::Silent => self.held.push(request.clone()),
                },
                Action::Refund(ask) => match self.network {
                    Network::Up => {
                        let sessions = self
                            .journal
                            .session_records(&ask.user, &ask.product)
                            .unwrap();
                        queue.push_back(Input::RefundAnswered {
                            window_id: ask.window_id.clone(),
                            result: self
                                .server
                                .refund(&ask.window_id, &sessions, self.true_time),
                        });
                    }
                    Network::LoseAnswers => {
                        let sessions = self
                            .journal
                            .session_records(&ask.user, &ask.product)
                            .unwrap();
                        let _ = self
                            .server
                            .refund(&ask.window_id, &sessions, self.true_time);
                    }
                    Network::Down | Network::Hold => queue.push_back(Input::RefundFailed {
                        window_id: ask.window_id.clone(),
                    }),
                    Network::DieBeforeSend | Network::Silent => {}
                },
                Action::Heartbeat => match self.network {
                    Network::Silent => {}
                    Network::Up => {
                        let batch = self.journal.heartbeat_batch().unwrap();
                        let ids: Vec<flex_protocol::SessionId> =
                            batch.sessions.iter().map(|s| s.id.clone()).collect();
                        queue.push_back(Input::ContactOk {
                            server_time: self.true_time,
                            policy: self.server.policy.clone(),
                            balance: self.server.balance,
                            notices: std::mem::take(&mut self.server.notices),
                            uploaded: batch.receipt(ids),
                        });
                    }
                    _ => queue.push_back(Input::ContactFailed {
                        error: "connection refused".into(),
                    }),
                },
                Action::SampleCpu { processes } => {
                    let now = self.true_time;
                    let samples = processes
                        .iter()
                        .map(|p| {
                            let percent = self.cpu_percent.get(&p.pid).copied().unwrap_or(0.0);
                            let (last, used) =
                                self.cpu_used.entry(p.pid).or_insert((now, Duration::ZERO));
                            let secs = (now - *last).num_milliseconds().max(0) as f64 / 1000.0;
                            *used += Duration::from_secs_f64(secs * percent / 100.0);
                            *last = now;
                            (*p, *used)
                        })
                        .collect();
                    queue.push_back(Input::CpuTimes { samples });
                }
                Action::Track { process } => {
                    assert!(self.tracked.insert(*process), "{process:?} tracked twice");
                }
                Action::Release { process } => {
                    assert!(
                        self.tracked.remove(process),
                        "{process:?} released untracked"
                    );
                }
                _ => {}
            }
        }
        self.log.extend(actions.iter().cloned());
        all.extend(actions);
    }

    /// Delivers the claims held in flight to the server, and its answers back.
    pub fn release_claims(&mut self) -> Vec<Action> {
        let held = std::mem::take(&mut self.held);
        let queue = held
            .iter()
            .map(|request| Input::ClaimAnswered {
                claim_id: request.claim_id.clone(),
                response: self.server.claim(request, self.true_time),
            })
            .collect();
        self.drain(queue)
    }

    /// Lets `d` pass with the agent running, firing every timer at its moment.
    pub fn advance(&mut self, d: Duration) -> Vec<Action> {
        let target = self.boot + d;
        let mut all = Vec::new();
        for _ in 0..100_000 {
            match self.core.next_deadline() {
                Some(at) if at <= target => {
                    let step = at.saturating_sub(self.boot);
                    self.pass(step);
                    all.extend(self.feed(Input::Tick));
                    if step.is_zero() && self.core.next_deadline() == Some(at) {
                        panic!(
                            "timer at {at:?} fired but stays due: {:?} now {:?}",
                            self.core.deadlines(),
                            self.now()
                        );
                    }
                }
                _ => break,
            }
        }
        let rest = target - self.boot;
        self.pass(rest);
        all.extend(self.feed(Input::Tick));
        all
    }

    /// Advances to a moment of true time (never backwards).
    pub fn advance_to(&mut self, t: DateTime<Utc>) -> Vec<Action> {
        self.advance(
            (t - self.true_time)
                .to_std()
                .expect("time only moves forward"),
        )
    }

    fn pass(&mut self, d: Duration) {
        self.boot += d;
        self.true_time += chrono::Duration::from_std(d).unwrap();
    }

    /// The machine sleeps for `d`: both clocks move on, no timer fires meanwhile.
    pub fn suspend(&mut self, d: Duration) -> Vec<Action> {
        self.pass(d);
        self.feed(Input::Tick)
    }

    /// The user moves the wall clock by `by` (negative: back).
    pub fn move_wall_clock(&mut self, by: chrono::Duration) -> Vec<Action> {
        self.wall_offset += by;
        self.feed(Input::Tick)
    }

    /// kill -9 and start again: a new core from the journal only.
    pub fn restart(&mut self, down: Duration) -> Vec<Action> {
        self.pass(down);
        self.rebuild()
    }

    /// The machine is off for `down` and boots again (boot clock from zero).
    pub fn reboot(&mut self, down: Duration) -> Vec<Action> {
        self.true_time += chrono::Duration::from_std(down).unwrap();
        self.boot = Duration::from_secs(30);
        self.true_time += chrono::Duration::seconds(30);
        self.boot_id = format!("{}'", self.boot_id);
        self.rebuild()
    }

    fn rebuild(&mut self) -> Vec<Action> {
        // A new agent process holds no handles.
        self.tracked.clear();
        let state = self.journal.load_state().unwrap();
        let (core, actions) =
            Core::restore(self.config(), state, self.now(), Some(self.boot_id.clone()));
        self.core = core;
        let mut queue = VecDeque::new();
        let mut all = Vec::new();
        self.absorb(actions, &mut queue, &mut all);
        all.extend(self.drain(queue));
        all
    }

    /// Feeds queued inputs (server answers) until none is left.
    fn drain(&mut self, mut queue: VecDeque<Input>) -> Vec<Action> {
        let mut all = Vec::new();
        while let Some(input) = queue.pop_front() {
            let actions = self.core.handle(input, self.now());
            self.absorb(actions, &mut queue, &mut all);
        }
        all
    }

    fn request_id(&mut self) -> String {
        self.next_request += 1;
        format!("r{}", self.next_request)
    }

    /// A wrapper launch on a connection of its own; `None` while no answer came
    /// (claim not answered). A granted launch attaches a new process.
    pub fn launch(&mut self, account: &str, product: &str) -> Option<Result<LaunchReply, Refusal>> {
        let conn = self.next_request + 1_000_000;
        let reply = self.launch_on(conn, account, product, None);
        if let Some(Ok(r)) = &reply {
            let pid = self.pid();
            let done = self.attach(conn, account, r.session.as_str(), process(pid));
            assert_eq!(done, Ok(()));
        }
        reply
    }

    /// A `launch` on connection `conn`, for an already started process or none.
    pub fn launch_on(
        &mut self,
        conn: u64,
        account: &str,
        product: &str,
        started: Option<ProcessId>,
    ) -> Option<Result<LaunchReply, Refusal>> {
        let request = self.request_id();
        let actions = self.feed(Input::Launch(LaunchRequest {
            request: request.clone(),
            conn,
            account: uid_of(account),
            account_name: account.into(),
            user: email_of(account),
            product: product.parse().unwrap(),
            version: Some("2026".into()),
            process: started,
        }));
        actions.into_iter().find_map(|a| match a {
            Action::ReplyLaunch { request: r, result } if r == request => Some(result),
            _ => None,
        })
    }

    /// An `attach` from `account` on connection `conn`.
    pub fn attach(
        &mut self,
        conn: u64,
        account: &str,
        session: &str,
        process: ProcessId,
    ) -> Result<(), Refusal> {
        let request = self.request_id();
        let actions = self.feed(Input::Attach {
            request: request.clone(),
            conn,
            caller: Caller {
                account: uid_of(account),
                admin: account == "root",
            },
            session: session.parse().unwrap(),
            process,
        });
        done(&actions, &request)
    }

    /// An `exit` from `account` on connection `conn`.
    pub fn wrapper_exit(&mut self, conn: u64, account: &str, session: &str) -> Result<(), Refusal> {
        let request = self.request_id();
        let actions = self.feed(Input::Exit {
            request: request.clone(),
            conn,
            caller: Caller {
                account: uid_of(account),
                admin: account == "root",
            },
            session: session.parse().unwrap(),
        });
        done(&actions, &request)
    }

    /// The process of a granted session (wrapper or watcher) for the account's product.
    pub fn pid_of(&self, account: &str, product: &str) -> Option<u32> {
        self.core
            .status(None)
            .sessions
            .into_iter()
            .find(|s| s.user == email_of(account).as_str() && s.product == product)
            .and_then(|s| s.pid)
    }

    fn pid(&mut self) -> u32 {
        self.next_pid += 1;
        self.next_pid
    }

    /// The watcher sees a product process start now; returns its pid.
    pub fn start_process(&mut self, account: &str, product: &str) -> (u32, Vec<Action>) {
        let pid = self.pid();
        let actions = self.detect(account, product, process(pid));
        (pid, actions)
    }

    /// The watcher sees `process` exec `product`.
    pub fn detect(&mut self, account: &str, product: &str, p: ProcessId) -> Vec<Action> {
        self.feed(Input::ProcessStarted(ProcessInfo {
            process: p,
            account: uid_of(account),
            account_name: account.into(),
            user: email_of(account),
            product: product.parse().unwrap(),
            version: None,
            started_at: self.now().wall,
        }))
    }

    pub fn exit(&mut self, pid: u32) -> Vec<Action> {
        self.feed(Input::ProcessExited {
            process: process(pid),
        })
    }

    /// `account`'s notifier (on connection `conn`) reports `idle` without input.
    pub fn activity(&mut self, conn: u64, account: &str, idle: Duration) -> Vec<Action> {
        self.report(conn, account, idle, false)
    }

    /// A notifier's report, with the session's lock state.
    pub fn report(
        &mut self,
        conn: u64,
        account: &str,
        idle: Duration,
        locked: bool,
    ) -> Vec<Action> {
        self.feed(Input::Activity {
            conn,
            account: uid_of(account),
            idle,
            locked,
        })
    }

    pub fn job(&mut self, account: &str, product: &str, count: u64, job: &str) -> Vec<Action> {
        let request = self.request_id();
        self.feed(Input::Job(JobRequest {
            request,
            account: uid_of(account),
            user: email_of(account),
            product: product.parse().unwrap(),
            count,
            job: job.into(),
        }))
    }
}

fn done(actions: &[Action], request: &str) -> Result<(), Refusal> {
    actions
        .iter()
        .find_map(|a| match a {
            Action::ReplyDone { request: r, result } if r == request => Some(result.clone()),
            _ => None,
        })
        .expect("attach and exit are always answered")
}

/// The events among `actions`.
pub fn events(actions: &[Action]) -> Vec<&Event> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Notify { event, .. } => Some(event),
            _ => None,
        })
        .collect()
}

pub fn claims(actions: &[Action]) -> Vec<&ClaimRequest> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Claim { request, .. } => Some(request),
            _ => None,
        })
        .collect()
}

/// (pid, graceful) of every close/kill among `actions`; the pid of the
/// process signalled, or the wrapper's fallback.
pub fn closes(actions: &[Action]) -> Vec<(Option<u32>, bool)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Close {
                route, graceful, ..
            } => {
                let pid = match route {
                    CloseRoute::Signal { process } => Some(process.pid),
                    CloseRoute::Wrapper { fallback, .. } => fallback.map(|p| p.pid),
                    CloseRoute::Nothing => None,
                };
                Some((pid, *graceful))
            }
            Action::Kill { process, .. } => Some((Some(process.pid), false)),
            _ => None,
        })
        .collect()
}
