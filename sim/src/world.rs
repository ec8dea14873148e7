//! The simulated world: agents, server, network and clocks, stepped one event
//! at a time in true-time order.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use flex_agent::account::AccountId;
use flex_agent::core::{Action, CloseRoute, Core, CoreConfig, Input, Now, ProcessInfo};
use flex_agent::journal::{HeartbeatBatch, Journal};
use flex_agent::process::ProcessId;
use flex_protocol::api::{
    ClaimRequest, ClaimResponse, Denial, HeartbeatRequest, HeartbeatResponse, RefundRequest,
    RefundResponse,
};
use flex_protocol::lease::{LeaseBody, LeaseSigner, LeaseVerifier};
use flex_protocol::socket::{CloseReason, Event};
use flex_protocol::{ClaimId, ProductId, WindowId};
use flex_protocol::{Email, ErrorCode, IdSource};
use flex_server::clock::TestClock;
use flex_server::config::PolicyConfig;
use flex_server::rates::RateSheet;
use flex_server::store::{PlantedBug, Store, StoreError};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

use crate::checks::{Checker, Grant};

/// The products users run, with how often each is picked.
const PRODUCTS: [(&str, u32); 3] = [("autocad", 6), ("revit", 3), ("3dsmax", 1)];

/// How many of the last steps a violation's trace shows.
const TRACE_STEPS: usize = 12;

/// A bug planted on purpose, to show the invariants find it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plant {
    /// The server charges a repeated claim again (a hook in the real store).
    DoubleChargeOnDuplicate,
    /// The server makes a repeated refund again (a hook in the real store).
    RefundTwice,
    /// The agent is handed an offline limit one tick (a minute) shorter than
    /// the server's policy: it closes a product one tick early.
    OfflineCloseEarly,
}

impl std::str::FromStr for Plant {
    type Err = String;
    fn from_str(s: &str) -> Result<Plant, String> {
        match s {
            "double-charge-on-duplicate" => Ok(Plant::DoubleChargeOnDuplicate),
            "refund-twice" => Ok(Plant::RefundTwice),
            "offline-close-early" => Ok(Plant::OfflineCloseEarly),
            other => Err(format!(
                "unknown planted bug '{other}': use double-charge-on-duplicate, refund-twice or offline-close-early"
            )),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub seed: u64,
    pub agents: usize,
    pub days: u32,
    pub plant: Option<Plant>,
    /// Print every step to stderr (to study one seed).
    pub print_trace: bool,
}

/// An invariant that did not hold.
#[derive(Debug, Clone)]
pub struct Violation {
    pub invariant: &'static str,
    pub detail: String,
    pub at: DateTime<Utc>,
    pub step: u64,
    /// The last steps before it, oldest first.
    pub trace: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub seed: u64,
    pub steps: u64,
    /// SHA-256 over every step and every server answer: equal for two runs
    /// of one seed.
    pub trace_hash: String,
    pub violation: Option<Violation>,
    /// What the run went through (for the report line and for tests that a
    /// fault was exercised).
    pub stats: Stats,
}

#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub claims: u64,
    pub heartbeats: u64,
    pub duplicates: u64,
    pub drops: u64,
    pub tampered: u64,
    pub server_crashes: u64,
    pub agent_crashes: u64,
    pub reboots: u64,
    pub suspends: u64,
    pub wall_jumps: u64,
    pub partitions: u64,
    pub offline_closes: u64,
    pub launches: u64,
    /// Refund answers the server gave (repeats included).
    pub refunds: u64,
    /// Timers that fired and stayed due (the daemon would busy-loop).
    pub stuck_timers: u64,
}

impl Stats {
    pub fn add(&mut self, o: &Stats) {
        self.claims += o.claims;
        self.heartbeats += o.heartbeats;
        self.duplicates += o.duplicates;
        self.drops += o.drops;
        self.tampered += o.tampered;
        self.server_crashes += o.server_crashes;
        self.agent_crashes += o.agent_crashes;
        self.reboots += o.reboots;
        self.suspends += o.suspends;
        self.wall_jumps += o.wall_jumps;
        self.partitions += o.partitions;
        self.offline_closes += o.offline_closes;
        self.launches += o.launches;
        self.stuck_timers += o.stuck_timers;
        self.refunds += o.refunds;
    }
}

#[derive(Debug, Clone)]
enum Req {
    Claim(ClaimRequest),
    Heartbeat(HeartbeatRequest, HeartbeatBatch),
    Refund(RefundRequest),
}

#[derive(Debug, Clone)]
enum Ans {
    Claim(ClaimId, ClaimResponse),
    ClaimFailed(ClaimId),
    Heartbeat(Box<HeartbeatResponse>, HeartbeatBatch),
    HeartbeatFailed,
    Refund(WindowId, Result<RefundResponse, String>),
    RefundFailed(WindowId),
}

#[derive(Debug, Clone)]
enum Ev {
    Day,
    Timer {
        agent: usize,
        gen: u64,
    },
    UserStart {
        agent: usize,
        user: usize,
        product: &'static str,
        hours: f64,
    },
    UserClose {
        agent: usize,
        pid: u32,
    },
    ProductExits {
        agent: usize,
        pid: u32,
    },
    ToServer {
        agent: usize,
        inc: u64,
        req: Req,
        copies: u8,
    },
    ToAgent {
        agent: usize,
        inc: u64,
        ans: Ans,
    },
    ServerCrash,
    ServerUp,
    AgentCrash {
        agent: usize,
    },
    AgentUp {
        agent: usize,
    },
    Reboot {
        agent: usize,
    },
    Partition {
        agent: usize,
    },
    Heal {
        agent: usize,
        gen: u64,
    },
    WallJump {
        agent: usize,
        secs: i64,
    },
    Suspend {
        agent: usize,
    },
    Wake {
        agent: usize,
        gen: u64,
    },
    Buy {
        tokens: u64,
    },
}

impl Ev {
    fn label(&self) -> String {
        match self {
            Ev::Day => "new day".into(),
            Ev::Timer { agent, .. } => format!("a{agent} timer"),
            Ev::UserStart {
                agent,
                user,
                product,
                ..
            } => format!("a{agent} user{user} starts {product}"),
            Ev::UserClose { agent, pid } => format!("a{agent} user closes pid {pid}"),
            Ev::ProductExits { agent, pid } => format!("a{agent} pid {pid} exits on close"),
            Ev::ToServer {
                agent, req, copies, ..
            } => {
                let what = match req {
                    Req::Claim(c) => format!(
                        "claim {} {} renews={}",
                        short(c.claim_id.as_str()),
                        c.product,
                        c.renews.as_ref().map(|w| short(w.as_str())).unwrap_or("-")
                    ),
                    Req::Heartbeat(..) => "heartbeat".into(),
                    Req::Refund(r) => format!("refund {}", short(r.window_id.as_str())),
                };
                let dup = if *copies > 1 { " (duplicated)" } else { "" };
                format!("a{agent} → server: {what}{dup}")
            }
            Ev::ToAgent { agent, ans, .. } => {
                let what = match ans {
                    Ans::Claim(id, ClaimResponse::Granted(g)) => format!(
                        "claim {} granted {} tokens window {}",
                        short(id.as_str()),
                        g.tokens_charged,
                        g.window
                            .as_ref()
                            .map(|w| short(w.id.as_str()))
                            .unwrap_or("-")
                    ),
                    Ans::Claim(id, ClaimResponse::Denied(d)) => {
                        format!("claim {} denied {:?}", short(id.as_str()), d.reason)
                    }
                    Ans::ClaimFailed(id) => format!("claim {} failed", short(id.as_str())),
                    Ans::Heartbeat(..) => "heartbeat ok".into(),
                    Ans::HeartbeatFailed => "heartbeat failed".into(),
                    Ans::Refund(w, r) => format!("refund {} {}", short(w.as_str()), r.is_ok()),
                    Ans::RefundFailed(w) => format!("refund {} failed", short(w.as_str())),
                };
                format!("server → a{agent}: {what}")
            }
            Ev::ServerCrash => "server crashes".into(),
            Ev::ServerUp => "server restarts (store reopened)".into(),
            Ev::AgentCrash { agent } => format!("a{agent} agent crashes"),
            Ev::AgentUp { agent } => format!("a{agent} agent restarts from its journal"),
            Ev::Reboot { agent } => format!("a{agent} machine reboots"),
            Ev::Partition { agent } => format!("a{agent} partitioned"),
            Ev::Heal { agent, .. } => format!("a{agent} partition heals"),
            Ev::WallJump { agent, secs } => format!("a{agent} wall clock moved {secs}s"),
            Ev::Suspend { agent } => format!("a{agent} suspends"),
            Ev::Wake { agent, .. } => format!("a{agent} wakes"),
            Ev::Buy { tokens } => format!("admin buys {tokens} tokens"),
        }
    }
}

/// Makes a fault event for an agent.
type MakeFault = fn(usize) -> Ev;

fn short(id: &str) -> &str {
    &id[..id.len().min(8)]
}

/// A product process on a simulated machine.
#[derive(Debug, Clone)]
pub(crate) struct Proc {
    pub user: usize,
    pub product: ProductId,
    pub id: ProcessId,
    pub alive: bool,
    /// Whether the close of this process is honoured (SIGTERM ends it).
    pub honours_close: bool,
    /// Whether a window of its user and product has covered it since it started.
    pub covered: bool,
    /// Time the agent was up and awake while this process ran uncovered.
    pub uncovered_for: chrono::Duration,
    /// When a graceful close was last asked for it.
    pub close_asked: Option<DateTime<Utc>>,
    /// True time it started and ended (for "charged for use").
    pub started: DateTime<Utc>,
    pub ended: Option<DateTime<Utc>>,
}

pub(crate) struct Agent {
    pub device: String,
    pub users: [Email; 2],
    dir: PathBuf,
    journal: Option<Journal>,
    core: Option<Core>,
    /// Incarnation: answers to a previous agent process are never delivered.
    inc: u64,
    boot_base: Duration,
    boot_from: DateTime<Utc>,
    boot_n: u32,
    pub wall_offset: chrono::Duration,
    pub up: bool,
    pub asleep: bool,
    sleep_gen: u64,
    /// When the agent last became able to act (started, or woke).
    pub active_since: DateTime<Utc>,
    partitioned: bool,
    part_gen: u64,
    timer_gen: u64,
    timer_at: Option<Duration>,
    /// The deadline whose timer just fired (to tell a deadline that stays due).
    fired: Option<Duration>,
    pub procs: BTreeMap<u32, Proc>,
    next_pid: u32,
    /// What the journal holds of windows: (user, product) → window.
    pub held: BTreeMap<(String, String), flex_agent::core::HeldWindow>,
    /// True time of the last server answer the core was given.
    pub last_contact: Option<DateTime<Utc>>,
    /// Offline closes announced: (user, product) → when announced.
    pub offline_close: BTreeMap<(String, ProductId), DateTime<Utc>>,
}

impl Agent {
    fn boot(&self, t: DateTime<Utc>) -> Duration {
        self.boot_base + (t - self.boot_from).to_std().unwrap_or_default()
    }

    fn now(&self, t: DateTime<Utc>) -> Now {
        Now {
            wall: t + self.wall_offset,
            boot: self.boot(t),
        }
    }

    /// The pids of the runs the core counts as licensed (its status lists
    /// exactly those with a window, paused or closing with one).
    pub fn licensed_pids(&self) -> std::collections::BTreeSet<u32> {
        self.core
            .as_ref()
            .map(|c| {
                c.status(None)
                    .sessions
                    .into_iter()
                    .filter_map(|s| s.pid)
                    .collect()
            })
            .unwrap_or_default()
    }

    fn boot_id(&self) -> String {
        format!("boot-{}", self.boot_n)
    }

    fn account(user: usize) -> AccountId {
        AccountId::from_uid(1000 + user as u32)
    }
}

struct Server {
    store: Option<Store>,
    dir: tempfile::TempDir,
    clock: TestClock,
    policy: PolicyConfig,
}

pub(crate) struct World {
    pub t: DateTime<Utc>,
    end: DateTime<Utc>,
    rng: ChaCha8Rng,
    seq: u64,
    events: BTreeMap<(DateTime<Utc>, u64), Ev>,
    server: Server,
    pub agents: Vec<Agent>,
    _root: tempfile::TempDir,
    pub verifier: LeaseVerifier,
    pub policy: PolicyConfig,
    plant: Option<Plant>,
    print_trace: bool,
    hasher: Sha256,
    trace: VecDeque<String>,
    steps: u64,
    pub stats: Stats,
    pub checker: Checker,
}

fn tmp_root() -> tempfile::TempDir {
    // tmpfs where there is one: a month of a fleet is hundreds of thousands of
    // small commits, and disk fsyncs would dominate.
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        tempfile::Builder::new().prefix("flex-sim").tempdir_in(shm)
    } else {
        tempfile::Builder::new().prefix("flex-sim").tempdir()
    }
    .expect("a temporary directory for the simulation")
}

/// Runs one seed to its end or its first violation.
pub fn run(opts: &Options) -> Outcome {
    let mut w = World::new(opts);
    let violation = w.run();
    Outcome {
        seed: opts.seed,
        steps: w.steps,
        trace_hash: hex::encode(w.hasher.clone().finalize()),
        violation,
        stats: w.stats.clone(),
    }
}

impl World {
    fn new(opts: &Options) -> World {
        let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
        // Monday 2026-11-02, midnight UTC.
        let start = Utc.with_ymd_and_hms(2026, 11, 2, 0, 0, 0).unwrap();
        let root = tmp_root();
        let clock = TestClock::new(start);
        let policy = PolicyConfig::default();
        let dir = tempfile::tempdir_in(root.path()).expect("server directory");
        let store = open_store(dir.path(), &clock, &policy, &mut rng, opts.plant);
        for i in 0..opts.agents {
            store
                .add_user(flex_protocol::api::NewUser {
                    email: Email::parse(&user_email(i)).expect("a sim email"),
                    first_name: "Sim".into(),
                    last_name: format!("User{i}"),
                })
                .expect("add a user");
            store
                .set_flex(&Email::parse(&user_email(i)).expect("a sim email"), true)
                .expect("assign flex");
        }
        // Every workstation enrolls, as an installer would, with one token.
        let token: flex_protocol::api::NewEnrollmentToken =
            serde_json::from_value(serde_json::json!({ "uses": opts.agents.max(1) }))
                .expect("an enrollment token request");
        let token = store
            .create_enrollment_token(&token)
            .expect("create an enrollment token")
            .token;
        let devices: Vec<String> = (0..opts.agents)
            .map(|i| {
                store
                    .enroll(&flex_protocol::api::EnrollRequest {
                        enrollment_token: token.clone(),
                        hostname: format!("sim-{i}"),
                        platform: Some("linux".into()),
                        agent_version: None,
                        enrollment_request_id: None,
                    })
                    .expect("enroll a workstation")
                    .device_id
            })
            .collect();
        let key = store.signer().public_key();
        let verifier = LeaseVerifier::from_keys(std::slice::from_ref(&key)).unwrap();
        let mut w = World {
            t: start,
            end: start + chrono::Duration::days(i64::from(opts.days)),
            rng,
            seq: 0,
            events: BTreeMap::new(),
            server: Server {
                store: Some(store),
                dir,
                clock,
                policy: policy.clone(),
            },
            agents: Vec::new(),
            verifier,
            policy,
            plant: opts.plant,
            print_trace: opts.print_trace,
            hasher: Sha256::new(),
            trace: VecDeque::new(),
            steps: 0,
            stats: Stats::default(),
            checker: Checker::new(key, start),
            _root: root,
        };
        // About two weeks of the fleet's use: the top-ups decide whether the
        // month runs dry now and then.
        let first = w.rng.gen_range(30..90) * opts.agents as u64;
        w.buy(first.div_ceil(100) * 100);
        for (i, device) in devices.into_iter().enumerate() {
            let dir = w._root.path().join(format!("agent-{i}"));
            // Each user works on two machines: windows are per (user, product),
            // whatever the device.
            let users = [
                Email::parse(&user_email(i)).unwrap(),
                Email::parse(&user_email((i + 1) % opts.agents)).unwrap(),
            ];
            w.agents.push(Agent {
                device,
                users,
                dir,
                journal: None,
                core: None,
                inc: 0,
                boot_base: Duration::from_secs(3600),
                boot_from: start,
                boot_n: 1,
                wall_offset: chrono::Duration::zero(),
                up: false,
                asleep: false,
                sleep_gen: 0,
                active_since: start,
                partitioned: false,
                part_gen: 0,
                timer_gen: 0,
                timer_at: None,
                fired: None,
                procs: BTreeMap::new(),
                next_pid: 1000,
                held: BTreeMap::new(),
                last_contact: None,
                offline_close: BTreeMap::new(),
            });
            w.start_agent(i);
        }
        w.push(start, Ev::Day);
        w
    }

    fn push(&mut self, at: DateTime<Utc>, ev: Ev) {
        self.seq += 1;
        self.events.insert((at.max(self.t), self.seq), ev);
    }

    fn after(&mut self, d: chrono::Duration, ev: Ev) {
        self.push(self.t + d, ev);
    }

    fn secs(&mut self, lo: i64, hi: i64) -> chrono::Duration {
        chrono::Duration::seconds(self.rng.gen_range(lo..=hi))
    }

    fn millis(&mut self, lo: i64, hi: i64) -> chrono::Duration {
        chrono::Duration::milliseconds(self.rng.gen_range(lo..=hi))
    }

    fn chance(&mut self, p: f64) -> bool {
        self.rng.gen_bool(p)
    }

    fn note(&mut self, line: String) {
        if self.print_trace {
            eprintln!("{line}");
        }
        self.hasher.update(line.as_bytes());
        self.hasher.update(b"\n");
        if self.trace.len() == TRACE_STEPS {
            self.trace.pop_front();
        }
        self.trace.push_back(line);
    }

    fn run(&mut self) -> Option<Violation> {
        while let Some(((at, _), ev)) = self.events.pop_first() {
            if at >= self.end {
                break;
            }
            self.checker.account_time(&mut self.agents, at);
            self.t = at;
            self.steps += 1;
            let line = format!("{} {}", at.format("%d %H:%M:%S%.3f"), ev.label());
            self.note(line);
            self.step(ev);
            if let Some(v) = self.checker.take() {
                return Some(self.violation(v));
            }
            if let Some(v) = self
                .checker
                .after_step(&mut self.agents, &self.policy, self.t)
            {
                return Some(self.violation(v));
            }
        }
        // The end of the run: the rollup against the raw ledger.
        let store = match self.server.store.take() {
            Some(s) => s,
            None => self.reopen(),
        };
        let runs: Vec<crate::checks::Run> = self
            .agents
            .iter()
            .flat_map(|a| {
                a.procs.values().map(|p| crate::checks::Run {
                    user: a.users[p.user].to_string(),
                    product: p.product.clone(),
                    from: p.started,
                    to: p.ended.unwrap_or(self.t),
                })
            })
            .collect();
        let v = self.checker.at_end(&store, &runs, self.t);
        self.server.store = Some(store);
        v.map(|v| self.violation(v))
    }

    fn violation(&self, (invariant, detail): (&'static str, String)) -> Violation {
        Violation {
            invariant,
            detail,
            at: self.t,
            step: self.steps,
            trace: self.trace.iter().cloned().collect(),
        }
    }

    fn step(&mut self, ev: Ev) {
        match ev {
            Ev::Day => self.day(),
            Ev::Timer { agent, gen } => {
                let a = &self.agents[agent];
                if a.up && !a.asleep && a.timer_gen == gen {
                    let a = &mut self.agents[agent];
                    a.fired = a.timer_at.take();
                    self.feed(agent, Input::Tick);
                }
            }
            Ev::UserStart {
                agent,
                user,
                product,
                hours,
            } => self.user_start(agent, user, product, hours),
            Ev::UserClose { agent, pid } | Ev::ProductExits { agent, pid } => {
                self.process_ends(agent, pid)
            }
            Ev::ToServer {
                agent,
                inc,
                req,
                copies,
            } => self.at_server(agent, inc, req, copies),
            Ev::ToAgent { agent, inc, ans } => self.at_agent(agent, inc, ans),
            Ev::ServerCrash => {
                if self.server.store.take().is_some() {
                    self.stats.server_crashes += 1;
                    let down = self.secs(30, 3 * 3600);
                    self.after(down, Ev::ServerUp);
                }
            }
            Ev::ServerUp => {
                if self.server.store.is_none() {
                    let store = self.reopen();
                    self.server.store = Some(store);
                }
            }
            Ev::AgentCrash { agent } => {
                if self.agents[agent].up {
                    self.stats.agent_crashes += 1;
                    self.stop_agent(agent);
                    let down = self.secs(5, 2 * 3600);
                    self.after(down, Ev::AgentUp { agent });
                }
            }
            Ev::AgentUp { agent } => {
                if !self.agents[agent].up {
                    self.start_agent(agent);
                }
            }
            Ev::Reboot { agent } => self.reboot(agent),
            Ev::Partition { agent } => {
                let a = &mut self.agents[agent];
                a.partitioned = true;
                a.part_gen += 1;
                let gen = a.part_gen;
                self.stats.partitions += 1;
                // Minutes to days.
                let len = if self.chance(0.7) {
                    self.secs(60, 4 * 3600)
                } else {
                    self.secs(4 * 3600, 3 * 86_400)
                };
                self.after(len, Ev::Heal { agent, gen });
            }
            Ev::Heal { agent, gen } => {
                if self.agents[agent].part_gen == gen {
                    self.agents[agent].partitioned = false;
                }
            }
            Ev::WallJump { agent, secs } => {
                self.stats.wall_jumps += 1;
                self.agents[agent].wall_offset += chrono::Duration::seconds(secs);
                if self.agents[agent].up && !self.agents[agent].asleep {
                    self.feed(agent, Input::Tick);
                }
            }
            Ev::Suspend { agent } => {
                let a = &mut self.agents[agent];
                if !a.asleep {
                    a.asleep = true;
                    a.sleep_gen += 1;
                    let gen = a.sleep_gen;
                    self.stats.suspends += 1;
                    let len = if self.chance(0.6) {
                        self.secs(60, 3600)
                    } else {
                        self.secs(3600, 40 * 3600)
                    };
                    self.after(len, Ev::Wake { agent, gen });
                }
            }
            Ev::Wake { agent, gen } => {
                let t = self.t;
                let a = &mut self.agents[agent];
                if a.asleep && a.sleep_gen == gen {
                    a.asleep = false;
                    a.active_since = t;
                    if a.up {
                        // The timer did not fire while asleep.
                        a.timer_at = None;
                        self.feed(agent, Input::Tick);
                    }
                }
            }
            Ev::Buy { tokens } => {
                if self.server.store.is_some() {
                    self.buy(tokens);
                }
            }
        }
    }

    fn reopen(&mut self) -> Store {
        let store = open_store(
            self.server.dir.path(),
            &self.server.clock,
            &self.server.policy,
            &mut self.rng,
            self.plant,
        );
        // The signing key comes back from the database.
        self.checker.same_key(&store.signer().public_key());
        store
    }

    fn buy(&mut self, tokens: u64) {
        let store = self.server.store.as_ref().expect("server up");
        self.server.clock.set(self.t);
        // In packs of the default sizes, largest first.
        let mut left = tokens;
        for pack in [1000, 500, 100] {
            while left >= pack {
                store.buy_tokens(pack).expect("buy tokens");
                self.checker.bought(pack);
                left -= pack;
            }
        }
        self.checker.check_balance(store);
    }

    /// One simulated day: each user's work, and the day's faults.
    fn day(&mut self) {
        let day_start = self.t;
        self.after(chrono::Duration::days(1), Ev::Day);
        let weekday =
            (day_start - Utc.with_ymd_and_hms(2026, 11, 2, 0, 0, 0).unwrap()).num_days() % 7 < 5;
        for agent in 0..self.agents.len() {
            for user in 0..2 {
                let p = if weekday { 0.6 } else { 0.1 };
                if !self.chance(p) {
                    continue;
                }
                let sessions = if self.chance(0.3) { 2 } else { 1 };
                for k in 0..sessions {
                    let product = pick_product(&mut self.rng);
                    let start = self.secs(7 * 3600 + k * 5 * 3600, 10 * 3600 + k * 5 * 3600);
                    let hours = if self.chance(0.1) {
                        // A short run: refunded under R13.
                        self.rng.gen_range(0.01..0.08)
                    } else if self.chance(0.08) {
                        // Left running overnight or longer: renewals.
                        self.rng.gen_range(14.0..60.0)
                    } else {
                        self.rng.gen_range(0.5..9.0)
                    };
                    self.push(
                        day_start + start,
                        Ev::UserStart {
                            agent,
                            user,
                            product,
                            hours,
                        },
                    );
                }
            }
            // Faults, at random moments of the day.
            let faults: [(f64, MakeFault); 5] = [
                (0.04, |agent| Ev::AgentCrash { agent }),
                (0.02, |agent| Ev::Reboot { agent }),
                (0.08, |agent| Ev::Suspend { agent }),
                (0.06, |agent| Ev::Partition { agent }),
                (0.04, |agent| Ev::WallJump { agent, secs: 0 }),
            ];
            for (p, make) in faults {
                if self.chance(p) {
                    let at = day_start + self.secs(0, 86_399);
                    let mut ev = make(agent);
                    if let Ev::WallJump { secs, .. } = &mut ev {
                        let mag = if self.chance(0.5) {
                            self.rng.gen_range(60..7200)
                        } else {
                            self.rng.gen_range(7200..4 * 86_400)
                        };
                        *secs = if self.chance(0.5) { -mag } else { mag };
                    }
                    self.push(at, ev);
                }
            }
        }
        if self.chance(0.3) {
            let at = day_start + self.secs(0, 86_399);
            self.push(at, Ev::ServerCrash);
        }
        // The admin tops up now and then, not always in time: some claims
        // meet an empty balance.
        if self.chance(0.25) {
            let at = day_start + self.secs(8 * 3600, 18 * 3600);
            let tokens = self.rng.gen_range(1..=self.agents.len() as u64) * 100;
            self.push(at, Ev::Buy { tokens });
        }
    }

    fn user_start(&mut self, agent: usize, user: usize, product: &'static str, hours: f64) {
        let a = &mut self.agents[agent];
        if a.asleep {
            return;
        }
        a.next_pid += 1;
        let pid = a.next_pid;
        let id = ProcessId {
            pid,
            start: 10_000 + u64::from(pid),
        };
        let honours_close = self.rng.gen_bool(0.8);
        self.agents[agent].procs.insert(
            pid,
            Proc {
                user,
                product: product.parse().unwrap(),
                id,
                alive: true,
                honours_close,
                covered: false,
                uncovered_for: chrono::Duration::zero(),
                close_asked: None,
                started: self.t,
                ended: None,
            },
        );
        self.stats.launches += 1;
        let len = chrono::Duration::milliseconds((hours * 3_600_000.0) as i64);
        self.after(len, Ev::UserClose { agent, pid });
        if self.agents[agent].up {
            let info = self.process_info(agent, pid);
            self.feed(agent, Input::ProcessStarted(info));
        }
    }

    fn process_info(&self, agent: usize, pid: u32) -> ProcessInfo {
        let a = &self.agents[agent];
        let p = &a.procs[&pid];
        ProcessInfo {
            process: p.id,
            account: Agent::account(p.user),
            account_name: format!("user{}", p.user),
            user: a.users[p.user].clone(),
            product: p.product.clone(),
            version: None,
            started_at: self.t + a.wall_offset,
        }
    }

    fn process_ends(&mut self, agent: usize, pid: u32) {
        if self.agents[agent].asleep {
            // Nothing runs on a suspended machine: the user closes the
            // product (or it exits) after the machine wakes. Ending it here
            // lost its exit, and the agent renewed it for days.
            self.after(chrono::Duration::seconds(60), Ev::UserClose { agent, pid });
            return;
        }
        let t = self.t;
        let a = &mut self.agents[agent];
        let Some(p) = a.procs.get_mut(&pid) else {
            return;
        };
        if !p.alive {
            return;
        }
        p.alive = false;
        p.ended = Some(t);
        let process = p.id;
        if a.up && !a.asleep {
            self.feed(agent, Input::ProcessExited { process });
        }
    }

    fn start_agent(&mut self, agent: usize) {
        let t = self.t;
        let ids = IdSource::seeded(self.rng.gen());
        let a = &mut self.agents[agent];
        let journal = Journal::open_in(&a.dir).expect("open the agent's journal");
        let state = journal.load_state().expect("load the journal");
        let config = CoreConfig {
            device_id: a.device.clone(),
            enforce: true,
            verifier: self.verifier.clone(),
        };
        let (core, first) = Core::restore_with_ids(config, state, a.now(t), Some(a.boot_id()), ids);
        a.journal = Some(journal);
        a.core = Some(core);
        a.up = true;
        a.inc += 1;
        a.active_since = t;
        a.timer_at = None;
        a.timer_gen += 1;
        let mut queue = VecDeque::new();
        self.carry_out(agent, first, &mut queue);
        // The watcher adopts every product process running at start.
        let live: Vec<u32> = self.agents[agent]
            .procs
            .iter()
            .filter(|(_, p)| p.alive)
            .map(|(pid, _)| *pid)
            .collect();
        if !self.agents[agent].asleep {
            for pid in live {
                let info = self.process_info(agent, pid);
                queue.push_back(Input::ProcessStarted(info));
            }
        }
        self.drain(agent, queue);
    }

    fn stop_agent(&mut self, agent: usize) {
        let a = &mut self.agents[agent];
        a.core = None;
        a.journal = None;
        a.up = false;
        a.inc += 1;
        a.timer_gen += 1;
        a.timer_at = None;
    }

    fn reboot(&mut self, agent: usize) {
        self.stats.reboots += 1;
        let t = self.t;
        if self.agents[agent].up {
            self.stop_agent(agent);
        }
        let a = &mut self.agents[agent];
        for p in a.procs.values_mut().filter(|p| p.alive) {
            p.alive = false;
            p.ended = Some(t);
        }
        a.asleep = false;
        a.sleep_gen += 1;
        let down = chrono::Duration::seconds(self.rng.gen_range(30..600));
        let a = &mut self.agents[agent];
        a.boot_n += 1;
        a.boot_base = Duration::from_secs(20);
        a.boot_from = t + down;
        self.after(down, Ev::AgentUp { agent });
    }

    fn feed(&mut self, agent: usize, input: Input) {
        self.drain(agent, VecDeque::from([input]));
    }

    fn drain(&mut self, agent: usize, mut queue: VecDeque<Input>) {
        while let Some(input) = queue.pop_front() {
            let t = self.t;
            let a = &mut self.agents[agent];
            if !a.up {
                return;
            }
            match &input {
                Input::ClaimAnswered { .. }
                | Input::ContactOk { .. }
                | Input::RefundAnswered { .. } => a.last_contact = Some(t),
                _ => {}
            }
            let now = a.now(t);
            let actions = a.core.as_mut().expect("agent up").handle(input, now);
            self.carry_out(agent, actions, &mut queue);
        }
        self.arm_timer(agent);
    }

    fn arm_timer(&mut self, agent: usize) {
        let t = self.t;
        let a = &mut self.agents[agent];
        let Some(core) = a.core.as_ref() else {
            return;
        };
        let next = core.next_deadline();
        let fired = a.fired.take();
        if next == a.timer_at {
            return;
        }
        a.timer_at = next;
        a.timer_gen += 1;
        if let Some(at) = next {
            let boot = a.boot(t);
            let gen = a.timer_gen;
            // The clock's resolution: a timer never fires before its moment.
            let mut wait = chrono::Duration::from_std(at.saturating_sub(boot)).unwrap()
                + chrono::Duration::microseconds(1);
            if fired.is_some() && at <= boot {
                // Right after a timer fired the core is due again at once: the
                // daemon would spin (its wait is the deadline minus now, capped
                // by the poll interval). Seen while an offline warning or close
                // waits for its contact check (agent/src/core/offline.rs keeps
                // the passed deadline). The simulation counts it and waits one
                // poll interval.
                self.stats.stuck_timers += 1;
                wait = crate::checks::TICK;
            }
            self.after(wait, Ev::Timer { agent, gen });
        }
    }

    /// The driver's part: journal the batch, then act, in order.
    fn carry_out(&mut self, agent: usize, actions: Vec<Action>, queue: &mut VecDeque<Input>) {
        let t = self.t;
        self.agents[agent]
            .journal
            .as_mut()
            .expect("agent up")
            .apply(&actions)
            .expect("journal the batch");
        for action in actions {
            match action {
                Action::Persist(p) => {
                    self.checker
                        .persisted(&mut self.agents[agent], &p, &self.verifier, t)
                }
                Action::Claim { request, .. } => {
                    self.stats.claims += 1;
                    self.send(agent, Req::Claim(request), chrono::Duration::zero());
                }
                Action::Heartbeat => {
                    self.stats.heartbeats += 1;
                    let a = &self.agents[agent];
                    let core = a.core.as_ref().expect("agent up");
                    let batch = a
                        .journal
                        .as_ref()
                        .unwrap()
                        .heartbeat_batch()
                        .expect("batch");
                    let req = HeartbeatRequest {
                        sessions: batch.sessions.clone(),
                        clock_rollbacks: batch.clock_rollbacks.clone(),
                        notices_after: core.notices_after(),
                        agent_version: Some("sim".into()),
                    };
                    let max = (core.heartbeat_jitter() / 10).min(Duration::from_secs(5));
                    let jitter = if max.is_zero() {
                        chrono::Duration::zero()
                    } else {
                        chrono::Duration::milliseconds(
                            self.rng.gen_range(0..=max.as_millis() as i64),
                        )
                    };
                    self.send(agent, Req::Heartbeat(req, batch), jitter);
                }
                Action::Refund(ask) => {
                    let journal = self.agents[agent].journal.as_ref().expect("agent up");
                    let req = RefundRequest {
                        sessions: journal
                            .session_records(&ask.user, &ask.product)
                            .expect("read sessions"),
                        window_id: ask.window_id,
                        user: ask.user,
                        product: ask.product,
                    };
                    self.send(agent, Req::Refund(req), chrono::Duration::zero());
                }
                Action::Close {
                    route, graceful, ..
                } => {
                    let process = match route {
                        CloseRoute::Signal { process } => Some(process),
                        CloseRoute::Wrapper { fallback, .. } => fallback,
                        CloseRoute::Nothing => None,
                    };
                    if let (true, Some(process)) = (graceful, process) {
                        self.close_asked(agent, process);
                    }
                }
                Action::Kill { process, .. } => {
                    let a = &mut self.agents[agent];
                    if let Some(p) = a.procs.get_mut(&process.pid).filter(|p| p.alive) {
                        p.alive = false;
                        p.ended = Some(t);
                        queue.push_back(Input::ProcessExited { process });
                    }
                }
                Action::Track { process } => {
                    let alive = self.agents[agent]
                        .procs
                        .get(&process.pid)
                        .is_some_and(|p| p.alive && p.id == process);
                    if !alive {
                        queue.push_back(Input::ProcessExited { process });
                    }
                }
                Action::SampleCpu { processes } => {
                    // Products in use: a busy core, so never idle.
                    let a = &self.agents[agent];
                    let samples = processes
                        .into_iter()
                        .filter(|p| a.procs.get(&p.pid).is_some_and(|x| x.alive))
                        .map(|p| (p, (a.boot(t) / 2)))
                        .collect();
                    queue.push_back(Input::CpuTimes { samples });
                }
                Action::Notify {
                    event:
                        Event::ProductClosing {
                            reason: CloseReason::Offline,
                            product,
                            ..
                        },
                    account: Some(account),
                } => {
                    let a = &mut self.agents[agent];
                    let user = (0..2).find(|u| Agent::account(*u) == account);
                    if let Some(u) = user {
                        let key = (a.users[u].to_string(), product);
                        a.offline_close.insert(key, t);
                    }
                }
                _ => {}
            }
        }
    }

    fn close_asked(&mut self, agent: usize, process: ProcessId) {
        let t = self.t;
        let a = &mut self.agents[agent];
        let Some(p) = a.procs.get_mut(&process.pid).filter(|p| p.alive) else {
            return;
        };
        p.close_asked = Some(t);
        let key = (a.users[p.user].to_string(), p.product.clone());
        let honours = p.honours_close;
        let contact = a.last_contact;
        if a.offline_close
            .get(&key)
            .is_some_and(|at| Some(*at) >= contact)
        {
            self.stats.offline_closes += 1;
        }
        self.checker
            .close_started(&self.agents[agent], &key, t, &self.policy);
        if honours {
            let d = self.millis(200, 20_000);
            self.after(
                d,
                Ev::ProductExits {
                    agent,
                    pid: process.pid,
                },
            );
        }
    }

    /// A request leaves the agent: the network decides what becomes of it.
    fn send(&mut self, agent: usize, req: Req, wait: chrono::Duration) {
        let inc = self.agents[agent].inc;
        if self.agents[agent].partitioned || self.chance(0.02) {
            // Lost on the way: the client times out.
            self.stats.drops += 1;
            let d = wait + self.secs(1, 15);
            let ans = failed(&req);
            self.after(d, Ev::ToAgent { agent, inc, ans });
            return;
        }
        let d = wait + self.latency();
        let copies = if self.chance(0.03) {
            self.stats.duplicates += 1;
            2
        } else {
            1
        };
        self.after(
            d,
            Ev::ToServer {
                agent,
                inc,
                req,
                copies,
            },
        );
    }

    /// Mostly fast, sometimes slow: slow messages overtake nothing and are
    /// overtaken, which reorders them.
    fn latency(&mut self) -> chrono::Duration {
        if self.chance(0.05) {
            self.millis(2_000, 25_000)
        } else {
            self.millis(1, 300)
        }
    }

    fn at_server(&mut self, agent: usize, inc: u64, req: Req, copies: u8) {
        let Some(store) = self.server.store.take() else {
            // Connection refused.
            let d = self.millis(1, 2_000);
            let ans = failed(&req);
            self.after(d, Ev::ToAgent { agent, inc, ans });
            return;
        };
        self.server.clock.set(self.t);
        let ans = self.handle(&store, agent, &req);
        self.server.store = Some(store);
        let claim = match &req {
            Req::Claim(c) => Some(c.clone()),
            _ => None,
        };
        if copies > 1 {
            // The duplicate arrives a little later; the client hears one answer.
            let d = self.latency();
            self.after(
                d,
                Ev::ToServer {
                    agent,
                    inc,
                    req,
                    copies: 1,
                },
            );
            if self.chance(0.5) {
                return;
            }
        }
        let mut ans = ans;
        if self.chance(0.02) {
            // The answer is lost: the client times out.
            self.stats.drops += 1;
            ans = failed_ans(&ans);
        } else if self.chance(0.03) {
            if let (Ans::Claim(_, ClaimResponse::Granted(g)), Some(c)) = (&mut ans, &claim) {
                self.stats.tampered += 1;
                tamper(g, &self.agents[agent].device, c);
            }
        }
        let d = self.latency();
        self.after(d, Ev::ToAgent { agent, inc, ans });
    }

    /// The server's part: the real store answers, as its HTTP layer would.
    fn handle(&mut self, store: &Store, agent: usize, req: &Req) -> Ans {
        let device = self.agents[agent].device.clone();
        match req {
            Req::Claim(c) => {
                let ans = match store.claim(&device, c) {
                    Ok(out) => {
                        let resp: ClaimResponse = serde_json::from_str(&out.body)
                            .expect("the store's claim answer parses");
                        // The lease's key id and signature are left out: the server makes
                        // its signing key at random when its store is created.
                        let mut shown = resp.clone();
                        if let ClaimResponse::Granted(g) = &mut shown {
                            if let Some(l) = g.lease.as_mut() {
                                l.signature.clear();
                                l.kid.clear();
                            }
                        }
                        self.note(format!(
                            "  server answers {}: {}",
                            short(c.claim_id.as_str()),
                            serde_json::to_string(&shown).expect("serializes")
                        ));
                        if let ClaimResponse::Granted(g) = &resp {
                            if let (Some(w), Some(lease)) = (&g.window, &g.lease) {
                                self.checker.granted(Grant {
                                    window: w.clone(),
                                    user: c.user.to_string(),
                                    product: c.product.clone(),
                                    lease: lease.clone(),
                                });
                            }
                        }
                        Ans::Claim(c.claim_id.clone(), resp)
                    }
                    Err(e) => match refusal(&e) {
                        Some(code) => Ans::Claim(
                            c.claim_id.clone(),
                            ClaimResponse::Denied(Denial {
                                reason: code,
                                message: e.to_string(),
                                balance: None,
                            }),
                        ),
                        None => Ans::ClaimFailed(c.claim_id.clone()),
                    },
                };
                self.checker.after_claim(store, &c.user, c.product.as_str());
                ans
            }
            Req::Heartbeat(r, batch) => match store.heartbeat(&device, r) {
                Ok(resp) => {
                    self.note(format!(
                        "  server heartbeat: balance {} accepted {}",
                        resp.balance,
                        resp.accepted_sessions.len()
                    ));
                    Ans::Heartbeat(Box::new(resp), batch.clone())
                }
                Err(_) => Ans::HeartbeatFailed,
            },
            Req::Refund(r) => {
                let w = r.window_id.clone();
                let ans = match store.refund(&device, r) {
                    Ok(out) if out.status == 200 => {
                        self.stats.refunds += 1;
                        self.note(format!(
                            "  server refunds {}: {}",
                            short(w.as_str()),
                            out.body
                        ));
                        let resp: RefundResponse = serde_json::from_str(&out.body)
                            .expect("the store's refund answer parses");
                        Ans::Refund(w, Ok(resp))
                    }
                    // A 409: the server's final word (the client does not retry).
                    Ok(out) => {
                        self.note(format!(
                            "  server refuses refund {}: {}",
                            short(w.as_str()),
                            out.body
                        ));
                        Ans::Refund(w, Err(out.body))
                    }
                    Err(e) => {
                        self.note(format!(
                            "  server error on refund {}: {e}",
                            short(w.as_str())
                        ));
                        match refusal(&e) {
                            Some(_) => Ans::Refund(w, Err(e.to_string())),
                            None => Ans::RefundFailed(w),
                        }
                    }
                };
                self.checker.after_claim(store, &r.user, r.product.as_str());
                ans
            }
        }
    }

    fn at_agent(&mut self, agent: usize, inc: u64, ans: Ans) {
        let a = &self.agents[agent];
        if !a.up || a.inc != inc {
            return;
        }
        if a.asleep {
            // The connection died with the suspend: the client saw an error.
            let ans = failed_ans(&ans);
            let inc = a.inc;
            let d = chrono::Duration::seconds(1);
            // Delivered after waking; the sleep generation keeps it queued.
            let wake = self.events.iter().find_map(|((at, _), e)| match e {
                Ev::Wake { agent: x, .. } if *x == agent => Some(*at),
                _ => None,
            });
            let at = wake.unwrap_or(self.t) + d;
            self.push(at, Ev::ToAgent { agent, inc, ans });
            return;
        }
        let input = match ans {
            Ans::Claim(claim_id, response) => Input::ClaimAnswered { claim_id, response },
            Ans::ClaimFailed(claim_id) => Input::ClaimFailed {
                claim_id,
                error: "timed out".into(),
            },
            Ans::Heartbeat(resp, batch) => {
                let core = a.core.as_ref().expect("agent up");
                let mut queue = VecDeque::new();
                if !resp.products.is_empty() && !core.same_products(&resp.products) {
                    queue.push_back(Input::RateSheet(resp.products.clone()));
                }
                let mut policy = resp.policy.clone();
                if self.plant == Some(Plant::OfflineCloseEarly) {
                    // The planted bug: one tick (a minute) off the limit.
                    policy.flex_offline_limit_secs -= 60;
                }
                queue.push_back(Input::ContactOk {
                    server_time: resp.server_time,
                    policy,
                    balance: resp.balance,
                    notices: resp.notices.clone(),
                    uploaded: batch.receipt(resp.accepted_sessions.clone()),
                });
                self.drain(agent, queue);
                return;
            }
            Ans::HeartbeatFailed => Input::ContactFailed {
                error: "timed out".into(),
            },
            Ans::Refund(window_id, result) => Input::RefundAnswered { window_id, result },
            Ans::RefundFailed(window_id) => Input::RefundFailed { window_id },
        };
        self.feed(agent, input);
    }
}

fn user_email(i: usize) -> String {
    format!("user{i}@sim.example")
}

fn pick_product(rng: &mut ChaCha8Rng) -> &'static str {
    let total: u32 = PRODUCTS.iter().map(|p| p.1).sum();
    let mut k = rng.gen_range(0..total);
    for (p, w) in PRODUCTS {
        if k < w {
            return p;
        }
        k -= w;
    }
    unreachable!()
}

fn open_store(
    dir: &std::path::Path,
    clock: &TestClock,
    policy: &PolicyConfig,
    rng: &mut ChaCha8Rng,
    plant: Option<Plant>,
) -> Store {
    let store = Store::open(
        dir,
        Arc::new(clock.clone()),
        policy.clone(),
        RateSheet::sample(),
    )
    .expect("open the server's store")
    .with_ids(IdSource::seeded(rng.gen()));
    match plant {
        Some(Plant::DoubleChargeOnDuplicate) => {
            store.with_planted_bug(PlantedBug::DoubleChargeOnDuplicate)
        }
        Some(Plant::RefundTwice) => store.with_planted_bug(PlantedBug::RefundTwice),
        _ => store,
    }
}

/// How the HTTP layer answers a store error: a refusal the client takes as
/// the server's decision, or `None` for a 5xx (the client retries later).
fn refusal(e: &StoreError) -> Option<ErrorCode> {
    match e {
        StoreError::Invalid(_) => Some(ErrorCode::InvalidRequest),
        StoreError::Conflict(_) => Some(ErrorCode::Conflict),
        StoreError::NotFound { .. } => Some(ErrorCode::NotFound),
        StoreError::Unauthorized(_) => Some(ErrorCode::Unauthorized),
        _ => None,
    }
}

fn failed(req: &Req) -> Ans {
    match req {
        Req::Claim(c) => Ans::ClaimFailed(c.claim_id.clone()),
        Req::Heartbeat(..) => Ans::HeartbeatFailed,
        Req::Refund(r) => Ans::RefundFailed(r.window_id.clone()),
    }
}

fn failed_ans(ans: &Ans) -> Ans {
    match ans {
        Ans::Claim(id, _) | Ans::ClaimFailed(id) => Ans::ClaimFailed(id.clone()),
        Ans::Heartbeat(..) | Ans::HeartbeatFailed => Ans::HeartbeatFailed,
        Ans::Refund(w, _) | Ans::RefundFailed(w) => Ans::RefundFailed(w.clone()),
    }
}

/// A man in the middle: the window stretched by two days and its lease
/// re-signed with a key the server never had (under the server's key id).
fn tamper(g: &mut flex_protocol::api::Grant, device: &str, claim: &ClaimRequest) {
    let (Some(w), Some(lease)) = (g.window.as_mut(), g.lease.as_mut()) else {
        return;
    };
    let forger = LeaseSigner::new(
        lease.kid.clone(),
        ed25519_dalek::SigningKey::from_bytes(&[0x5a; 32]),
    );
    w.end += chrono::Duration::days(2);
    *lease = forger.sign(&LeaseBody {
        window_id: w.id.clone(),
        device_id: device.into(),
        user: claim.user.clone(),
        product: claim.product.clone(),
        source: g.source,
        start: w.start,
        end: w.end,
        issued_at: w.start,
    });
}
