//! The daemon: a thin tokio driver around the decision [`Core`].
//!
//! One task, the driver loop, owns the core and the journal. Everything the
//! agent observes reaches it as a message: socket requests ([`handler`]),
//! watcher events, server answers ([`net`]) and the timer. For each one it asks
//! the core what to do, writes the batch's `Persist` actions to the journal in one
//! transaction, and only then carries out the rest: sending claims, signalling
//! processes, answering the socket and publishing events ([`hub`]). Because the
//! journal commit comes first, a claim id is durable before it leaves the machine
//! and a kill -9 at any point is recovered by [`Core::restore`] at the next start.
//!
//! The driver holds no rules of its own; what it adds is plumbing: which socket
//! connection waits for which answer, which wrapper connection carries which
//! session, and whether a session's process is still alive.

mod failpoint;
mod handler;
pub mod hub;
mod net;
pub mod watchdog;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use flex_protocol::api::{HeartbeatRequest, Product};
use flex_protocol::lease::LeaseVerifier;
use flex_protocol::socket::{Empty, Event, StatusReply};
use flex_protocol::ErrorCode;
use tokio::sync::{mpsc, oneshot};

use crate::client::{Client, ClientError};
use crate::config::Config;
use crate::core::{Action, Core, CoreConfig, Input, Origin, ProcessInfo};
use crate::credentials::{ensure_private_dir, CredentialError, CredentialStore};
use crate::journal::{Enrollment, Journal, JournalError};
use crate::socket::{account_name, Reply, SocketConfig, SocketError, SocketServer};
use crate::sysclock;
use crate::watcher::{ProcEvent, ProcEventKind, WatchError, Watcher, WatcherConfig, WatcherHandle};
use failpoint::Failpoint;
use handler::{Command, SocketHandler};
use hub::Hub;
use net::NetEvent;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(
        "this workstation is not enrolled (nothing in {journal}): run \
         flex-agent enroll --config FILE --server URL --token ENROLL_TOKEN"
    )]
    NotEnrolled { journal: PathBuf },
    #[error("the pinned lease keys in {journal} are unusable ({reason}): enroll again")]
    BadKeys { journal: PathBuf, reason: String },
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Credential(#[from] CredentialError),
    #[error("cannot set up the server connection: {0}")]
    Client(#[from] ClientError),
    #[error(transparent)]
    Socket(#[from] SocketError),
    #[error("cannot start process detection: {0}")]
    Watch(#[from] WatchError),
    #[error("the journal task failed: {0}")]
    Task(String),
}

/// What `flex-agent` reports once it serves.
#[derive(Debug, Clone)]
pub struct Ready {
    pub socket: PathBuf,
    pub device_id: String,
    pub credential_store: String,
    pub detection: String,
}

/// Runs the agent until `shutdown` resolves. `on_ready` is called once the socket
/// accepts clients and the journal's state is restored.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()>,
    on_ready: impl FnOnce(&Ready),
) -> Result<(), DaemonError> {
    let config = Arc::new(config);
    let state_dir = config.state_dir.clone();
    let (journal, enrollment) = tokio::task::spawn_blocking(move || {
        ensure_private_dir(&state_dir)?;
        let journal = Journal::open_in(&state_dir)?;
        let enrollment = journal.enrollment()?;
        Ok::<_, DaemonError>((journal, enrollment))
    })
    .await
    .map_err(|e| DaemonError::Task(e.to_string()))??;
    let Some(enrollment) = enrollment else {
        return Err(DaemonError::NotEnrolled {
            journal: journal.path().to_path_buf(),
        });
    };
    let verifier =
        LeaseVerifier::from_keys(&enrollment.lease_keys).map_err(|e| DaemonError::BadKeys {
            journal: journal.path().to_path_buf(),
            reason: e.to_string(),
        })?;
    let store =
        CredentialStore::select_async(config.credential_store, config.state_dir.clone()).await?;
    let token = store.load_async().await?;
    let client = Client::from_config(&config)?.with_token(token);

    let state = journal.load_state()?;
    let (core, first) = Core::restore(
        CoreConfig {
            device_id: enrollment.device_id.clone(),
            enforce: config.enforce,
            verifier,
        },
        state,
        sysclock::now(),
        sysclock::boot_id(),
    );
    let products: Vec<Product> = core.products().cloned().collect();
    let (watcher, proc_events) = match Watcher::start(
        WatcherConfig {
            source: config.detection.source_choice(),
            poll_interval: config.poll_interval,
            ..WatcherConfig::default()
        },
        &products,
    ) {
        Ok((handle, rx)) => (Some(handle), rx),
        Err(WatchError::Unsupported) => {
            tracing::warn!("no process detection on this OS: only flexctl run launches are seen");
            (None, mpsc::channel(1).1)
        }
        Err(e) => return Err(e.into()),
    };

    let hub = Hub::default();
    let (cmd_tx, cmd_rx) = mpsc::channel(256);
    let (net_tx, net_rx) = mpsc::channel(256);
    let socket = SocketServer::bind(SocketConfig::new(&config.socket_path))?;
    let (stop_socket, socket_stopped) = oneshot::channel::<()>();
    let socket_task = tokio::spawn(socket.serve(
        Arc::new(SocketHandler::new(
            config.clone(),
            cmd_tx.clone(),
            hub.clone(),
        )),
        async move {
            let _ = socket_stopped.await;
        },
    ));

    let mut driver = Driver {
        core,
        journal,
        client,
        hub,
        watcher,
        config: config.clone(),
        enrollment,
        credential_store: store.describe(),
        launches: HashMap::new(),
        jobs: HashMap::new(),
        wrappers: HashMap::new(),
        accounts: HashMap::new(),
        claims_in_flight: Default::default(),
        heartbeat_in_flight: false,
        cmd_tx,
        net_tx,
    };
    driver.carry_out(first)?;
    driver.reap_gone_sessions()?;

    on_ready(&Ready {
        socket: config.socket_path.clone(),
        device_id: driver.enrollment.device_id.clone(),
        credential_store: driver.credential_store.clone(),
        detection: driver.detection().to_string(),
    });
    let result = driver.run(cmd_rx, net_rx, proc_events, shutdown).await;
    let _ = stop_socket.send(());
    let _ = socket_task.await;
    result
}

/// A `flexctl run` connection holding a granted session.
struct Wrapper {
    uid: u32,
    product: String,
    pid: Option<u32>,
    events: mpsc::Sender<Event>,
}

struct Driver {
    core: Core,
    journal: Journal,
    client: Client,
    hub: Hub,
    watcher: Option<WatcherHandle>,
    config: Arc<Config>,
    enrollment: Enrollment,
    credential_store: String,
    /// Socket requests waiting for the core's answer, by request id.
    /// (uid, pid given at launch, where to answer) by request id.
    launches: HashMap<String, (u32, Option<u32>, oneshot::Sender<Reply>)>,
    jobs: HashMap<String, oneshot::Sender<Reply>>,
    /// Granted wrapper sessions, by session id.
    wrappers: HashMap<String, Wrapper>,
    /// uid → (account, email), resolved once per uid.
    accounts: HashMap<u32, Option<(String, String)>>,
    claims_in_flight: std::collections::HashSet<String>,
    heartbeat_in_flight: bool,
    cmd_tx: mpsc::Sender<Command>,
    net_tx: mpsc::Sender<NetEvent>,
}

impl Driver {
    async fn run(
        &mut self,
        mut commands: mpsc::Receiver<Command>,
        mut net: mpsc::Receiver<NetEvent>,
        mut procs: mpsc::Receiver<ProcEvent>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), DaemonError> {
        tokio::pin!(shutdown);
        let poll = self.config.poll_interval;
        // Pinged from this loop, so a stuck loop gets the agent restarted.
        let mut watchdog = watchdog::Watchdog::from_env();
        loop {
            // The core's next deadline is a boot-clock reading; the poll interval
            // bounds the wait because tokio's timer does not count suspend. With
            // no deadline and no session the agent sleeps until something happens.
            let idle = self.core.status().sessions.is_empty() && self.wrappers.is_empty();
            let wait = match self.core.next_deadline() {
                Some(at) => Some(at.saturating_sub(sysclock::now().boot).min(poll)),
                None if idle => None,
                None => Some(poll),
            };
            let timer = async {
                match wait {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = &mut shutdown => {
                    tracing::info!("stopping");
                    return Ok(());
                }
                Some(cmd) = commands.recv() => self.command(cmd)?,
                Some(ev) = net.recv() => self.net(ev)?,
                Some(ev) = procs.recv() => self.proc_event(ev)?,
                _ = timer => {
                    self.feed(Input::Tick)?;
                    self.reap_gone_sessions()?;
                }
                _ = watchdog.tick() => watchdog.ping(),
            }
        }
    }

    /// Asks the core and carries out its answer.
    fn feed(&mut self, input: Input) -> Result<(), DaemonError> {
        let actions = self.core.handle(input, sysclock::now());
        self.carry_out(actions)
    }

    fn carry_out(&mut self, actions: Vec<Action>) -> Result<(), DaemonError> {
        // Journal first: nothing below may happen unless it is durable.
        self.journal.apply(&actions)?;
        for (i, action) in actions.iter().enumerate() {
            match action {
                Action::Persist(_) | Action::SetTimer(_) => {}
                Action::Claim { claim_id, request } => {
                    if self.claims_in_flight.insert(claim_id.clone()) {
                        failpoint::hit(Failpoint::ClaimJournaled);
                        net::spawn_claim(self.client.clone(), request.clone(), self.net_tx.clone());
                    }
                }
                Action::Heartbeat => self.heartbeat()?,
                Action::Notify { uid, event } => {
                    // The journal's record of what users were told and why.
                    tracing::info!(?uid, ?event, "user event");
                    self.hub.publish(*uid, event)
                }
                Action::Close {
                    session,
                    pid,
                    graceful,
                } => self.close(session, *pid, *graceful, &actions[i..]),
                Action::Kill { session, pid } => {
                    tracing::warn!(session, ?pid, "product ignored the close: killing it");
                    if let Some(pid) = pid {
                        signal(*pid, nix::sys::signal::Signal::SIGKILL);
                    }
                }
                Action::ReplyLaunch { request, result } => {
                    let Some((uid, pid, reply_to)) = self.launches.remove(request) else {
                        continue;
                    };
                    let reply = match result {
                        Ok(granted) => {
                            let (tx, rx) = mpsc::channel(8);
                            self.watch_wrapper(&granted.session, tx.clone());
                            self.wrappers.insert(
                                granted.session.clone(),
                                Wrapper {
                                    uid,
                                    product: granted.product.clone(),
                                    pid,
                                    events: tx,
                                },
                            );
                            Reply::ok(granted).with_events(rx)
                        }
                        Err(refused) => Reply::error(refused.code, refused.message.clone()),
                    };
                    // A wrapper that hung up is noticed through its session's channel.
                    let _ = reply_to.send(reply);
                }
                Action::ReplyJob { request, result } => {
                    if let Some(reply_to) = self.jobs.remove(request) {
                        let _ = reply_to.send(match result {
                            Ok(done) => Reply::ok(done.clone()),
                            Err(refused) => Reply::error(refused.code, refused.message.clone()),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    fn command(&mut self, cmd: Command) -> Result<(), DaemonError> {
        match cmd {
            Command::Launch { req, reply } => {
                self.launches
                    .insert(req.request.clone(), (req.uid, req.pid, reply));
                self.feed(Input::Launch(req))
            }
            Command::Job { req, reply } => {
                self.jobs.insert(req.request.clone(), reply);
                self.feed(Input::Job(req))
            }
            Command::Attach {
                peer_uid,
                session,
                pid,
                reply,
            } => {
                if let Err(r) = self.own_session(peer_uid, &session) {
                    let _ = reply.send(r);
                    return Ok(());
                }
                if let Some(w) = self.wrappers.get_mut(&session) {
                    w.pid = Some(pid);
                }
                self.feed(Input::Attach { session, pid })?;
                let _ = reply.send(Reply::ok(Empty {}));
                Ok(())
            }
            Command::Exit {
                peer_uid,
                session,
                reply,
            } => {
                if let Err(r) = self.own_session(peer_uid, &session) {
                    let _ = reply.send(r);
                    return Ok(());
                }
                self.wrappers.remove(&session);
                self.feed(Input::Exit { session })?;
                let _ = reply.send(Reply::ok(Empty {}));
                Ok(())
            }
            Command::Status { only, reply } => {
                let _ = reply.send(Reply::ok(self.status(only.as_deref())));
                Ok(())
            }
            Command::WrapperGone { session } => {
                let Some(w) = self.wrappers.remove(&session) else {
                    return Ok(());
                };
                // A wrapper killed without reporting may leave its product running:
                // then the session goes on and ends when the process does.
                if w.pid.is_some_and(process_alive) {
                    tracing::info!(session, "wrapper gone, product still running");
                    return Ok(());
                }
                self.feed(Input::Exit { session })
            }
        }
    }

    /// Only the account that launched a session (or root) may attach or end it,
    /// and only while a wrapper holds it: a session the watcher found (or whose
    /// wrapper went away) ends when its process exits, or the product would run
    /// on unaccounted.
    fn own_session(&self, peer_uid: u32, session: &str) -> Result<(), Reply> {
        // (owner, how it was found when no wrapper holds it)
        let owner = match self.wrappers.get(session) {
            Some(w) => Some((w.uid, None)),
            None => self
                .core
                .session_owner(session)
                .map(|(uid, origin)| (uid, Some(origin))),
        };
        match owner {
            Some((uid, _)) if uid != peer_uid && peer_uid != 0 => Err(Reply::error(
                ErrorCode::Forbidden,
                format!("session {session} belongs to another account"),
            )),
            Some((_, None)) => Ok(()),
            Some((_, Some(origin))) => Err(Reply::error(
                ErrorCode::Conflict,
                format!(
                    "session {session} {}: it ends when its product process exits",
                    match origin {
                        Origin::Watcher => "was found by the process watcher",
                        Origin::Wrapper => "lost its flexctl run connection",
                    }
                ),
            )),
            None => Err(Reply::error(
                ErrorCode::NotFound,
                format!("no running session {session}: it ended or was never granted"),
            )),
        }
    }

    fn net(&mut self, ev: NetEvent) -> Result<(), DaemonError> {
        match ev {
            NetEvent::Claim { claim_id, outcome } => {
                self.claims_in_flight.remove(&claim_id);
                match outcome {
                    Ok(response) => self.feed(Input::ClaimAnswered { claim_id, response }),
                    Err(error) => self.feed(Input::ClaimFailed { claim_id, error }),
                }
            }
            NetEvent::Heartbeat { batch, outcome } => {
                self.heartbeat_in_flight = false;
                match outcome {
                    Ok(resp) => {
                        self.journal.acknowledge(&batch, &resp.accepted_sessions)?;
                        if !resp.products.is_empty() && !self.same_products(&resp.products) {
                            if let Some(w) = &self.watcher {
                                w.set_products(&resp.products);
                            }
                            self.feed(Input::RateSheet(resp.products))?;
                        }
                        self.feed(Input::ContactOk {
                            server_time: resp.server_time,
                            policy: resp.policy,
                            balance: resp.balance,
                            notices: resp.notices,
                        })
                    }
                    Err(e) => {
                        if e.needs_reenroll() {
                            tracing::error!("{e}");
                        } else {
                            tracing::warn!("heartbeat failed: {e}");
                        }
                        self.feed(Input::ContactFailed {
                            error: e.to_string(),
                        })
                    }
                }
            }
        }
    }

    fn same_products(&self, new: &[Product]) -> bool {
        let mut old: Vec<&Product> = self.core.products().collect();
        old.sort_by(|a, b| a.id.cmp(&b.id));
        let mut new: Vec<&Product> = new.iter().collect();
        new.sort_by(|a, b| a.id.cmp(&b.id));
        old == new
    }

    fn heartbeat(&mut self) -> Result<(), DaemonError> {
        if self.heartbeat_in_flight {
            return Ok(());
        }
        let batch = self.journal.heartbeat_batch()?;
        let request = HeartbeatRequest {
            sessions: batch.sessions.clone(),
            clock_rollbacks: batch.clock_rollbacks.clone(),
            notices_after: self.core.notices_after(),
            agent_version: Some(env!("CARGO_PKG_VERSION").to_string()),
        };
        // No jitter before the first contact: the rate sheet comes with it.
        let interval = if self.core.status().last_server_contact.is_some() {
            Duration::from_secs(self.core.policy().heartbeat_interval_secs)
        } else {
            Duration::ZERO
        };
        self.heartbeat_in_flight = true;
        net::spawn_heartbeat(
            self.client.clone(),
            request,
            batch,
            interval,
            self.net_tx.clone(),
        );
        Ok(())
    }

    fn proc_event(&mut self, ev: ProcEvent) -> Result<(), DaemonError> {
        match ev.kind {
            ProcEventKind::Exited { .. } => self.feed(Input::ProcessExited { pid: ev.pid }),
            ProcEventKind::Started | ProcEventKind::Adopted => {
                let Some((account, user)) = self.account(ev.uid) else {
                    return Ok(());
                };
                tracing::info!(pid = ev.pid, uid = ev.uid, product = %ev.product, exe = %ev.exe_name, "product process detected");
                self.feed(Input::ProcessStarted(ProcessInfo {
                    pid: ev.pid,
                    uid: ev.uid,
                    account,
                    user,
                    product: ev.product,
                    version: None,
                    started_at: ev.started_at,
                }))
            }
        }
    }

    /// The account and email of `uid`, or `None` (logged once) when the config
    /// maps it to no email: such a process cannot be charged to anyone.
    fn account(&mut self, uid: u32) -> Option<(String, String)> {
        let config = self.config.clone();
        self.accounts
            .entry(uid)
            .or_insert_with(|| {
                let account = account_name(uid);
                match config.email_for(&account) {
                    Ok(email) => Some((account, email)),
                    Err(e) => {
                        tracing::warn!(
                            uid,
                            "product processes of this account are not licensed: {e}"
                        );
                        None
                    }
                }
            })
            .clone()
    }

    /// Closes a session: through its wrapper when it has one (which stops the
    /// product gracefully and reports the exit), else by signalling the process.
    fn close(&mut self, session: &str, pid: Option<u32>, graceful: bool, rest: &[Action]) {
        if let Some(w) = self.wrappers.get(session) {
            let event = rest
                .iter()
                .find_map(|a| match a {
                    Action::Notify {
                        event: e @ Event::ProductClosed { product, .. },
                        ..
                    } if *product == w.product => Some(e.clone()),
                    _ => None,
                })
                .unwrap_or_else(|| Event::ProductClosed {
                    product: w.product.clone(),
                    reason: flex_protocol::socket::CloseReason::Denied,
                    message: format!("{} was closed by the license agent", w.product),
                });
            if w.events.try_send(event).is_ok() {
                return;
            }
        }
        if let Some(pid) = pid {
            let sig = if graceful {
                nix::sys::signal::Signal::SIGTERM
            } else {
                nix::sys::signal::Signal::SIGKILL
            };
            tracing::info!(session, pid, ?sig, "closing product");
            signal(pid, sig);
        }
    }

    /// Tells the loop when a wrapper's connection goes away.
    fn watch_wrapper(&self, session: &str, events: mpsc::Sender<Event>) {
        let cmd = self.cmd_tx.clone();
        let session = session.to_string();
        tokio::spawn(async move {
            events.closed().await;
            let _ = cmd.send(Command::WrapperGone { session }).await;
        });
    }

    /// Ends sessions whose process is gone without the watcher saying so: after
    /// a restart, and for wrapped products the rate sheet does not name.
    fn reap_gone_sessions(&mut self) -> Result<(), DaemonError> {
        let gone: Vec<u32> = self
            .core
            .status()
            .sessions
            .iter()
            .filter(|s| !self.wrappers.contains_key(&s.session))
            .filter_map(|s| s.pid)
            .filter(|pid| !process_alive(*pid))
            .collect();
        for pid in gone {
            self.feed(Input::ProcessExited { pid })?;
        }
        Ok(())
    }

    fn detection(&self) -> &'static str {
        self.watcher.as_ref().map_or("off", |w| w.source().as_str())
    }

    fn status(&self, only: Option<&str>) -> StatusReply {
        let s = self.core.status();
        StatusReply {
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            server_url: self.config.server_url.clone(),
            device_id: Some(self.enrollment.device_id.clone()),
            credential_store: self.credential_store.clone(),
            detection: self.detection().to_string(),
            sessions: s
                .sessions
                .into_iter()
                .filter(|x| only.is_none_or(|u| x.user == u))
                .collect(),
            balance: s.balance,
            last_server_contact: s.last_server_contact,
            offline_seconds_left: s.offline_seconds_left,
            online: s.online,
        }
    }
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    let Ok(raw) = i32::try_from(pid) else { return };
    if let Err(e) = nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), sig) {
        if e != nix::errno::Errno::ESRCH {
            tracing::warn!(pid, ?sig, "cannot signal product process: {e}");
        }
    }
}

/// Whether `pid` runs (a zombie does not).
fn process_alive(pid: u32) -> bool {
    #[cfg(target_os = "linux")]
    {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next())
                .is_some_and(|state| !matches!(state, 'Z' | 'X')),
            Err(_) => false,
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let Ok(raw) = i32::try_from(pid) else {
            return false;
        };
        !matches!(
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), None),
            Err(nix::errno::Errno::ESRCH)
        )
    }
}
