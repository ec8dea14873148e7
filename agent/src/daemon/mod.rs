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
//! The driver holds no rules of its own: session ownership, wrapper lifecycle
//! and process identity are the core's. What it keeps is plumbing: which
//! request waits for which answer, each wrapper connection's event sender, and
//! the handles of the processes the core tracks ([`processes`]), through which
//! alone a process is ever signalled.

mod failpoint;
mod handler;
pub mod hub;
mod net;
mod processes;
pub mod watchdog;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use flex_protocol::api::{HeartbeatRequest, Product, RefundRequest};
use flex_protocol::lease::LeaseVerifier;
use flex_protocol::socket::{Empty, Event, StatusReply};
use flex_protocol::Email;
use tokio::sync::{mpsc, oneshot};

use crate::account::{self, AccountId};
use crate::client::{Client, ClientError};
use crate::config::Config;
use crate::core::{Action, CloseRoute, ConnId, Core, CoreConfig, Input, Persist, ProcessInfo};
use crate::credentials::{ensure_private_dir, CredentialError, CredentialStore};
use crate::journal::{Enrollment, Journal, JournalError, JournalWriter};
use crate::process::{ProcessId, Stop};
use crate::socket::{Reply, SocketConfig, SocketError, SocketServer};
use crate::sysclock;
use crate::watcher::{ProcEvent, ProcEventKind, WatchError, Watcher, WatcherConfig, WatcherHandle};
use failpoint::Failpoint;
use handler::{Command, SocketHandler, StatusFor};
use hub::Hub;
use net::NetEvent;
use processes::Processes;

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
    #[error("cannot start the {what} thread: {source}")]
    Thread {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
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
    // One descriptor per product process: the soft limit a service starts
    // with (1024 under systemd) is far below what a busy machine needs.
    #[cfg(unix)]
    match crate::process::raise_fd_limit() {
        Ok((old, new)) if old != new => {
            tracing::info!("raised the open-file limit from {old} to {new}")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot raise the open-file limit: {e}"),
    }
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
    let watcher_runtime = WatcherRuntime::start()?;
    let (watcher, proc_events) = match watcher_runtime.start_watcher(
        WatcherConfig {
            source: config.detection.source_choice(),
            poll_interval: config.poll_interval,
            product_dirs: config.product_dirs.clone(),
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
    let (exit_tx, exit_rx) = mpsc::channel(256);
    let socket = SocketServer::bind(SocketConfig::new(&config.socket_path))?;
    let (stop_socket, socket_stopped) = oneshot::channel::<()>();
    let socket_task = tokio::spawn(socket.serve(
        Arc::new(SocketHandler::new(config.clone(), cmd_tx, hub.clone())),
        async move {
            let _ = socket_stopped.await;
        },
    ));

    let journal = JournalWriter::start(journal).map_err(|source| DaemonError::Thread {
        what: "journal",
        source,
    })?;
    let mut driver = Driver {
        core,
        journal,
        client,
        hub,
        watcher,
        config: config.clone(),
        enrollment,
        credential_store: store.describe(),
        replies: HashMap::new(),
        wrappers: HashMap::new(),
        accounts: HashMap::new(),
        processes: Processes::new(exit_tx),
        net_tx,
    };
    driver.carry_out(first)?;

    on_ready(&Ready {
        socket: config.socket_path.clone(),
        device_id: driver.enrollment.device_id.clone(),
        credential_store: driver.credential_store.clone(),
        detection: driver.detection().to_string(),
    });
    let result = driver
        .run(cmd_rx, net_rx, proc_events, exit_rx, shutdown)
        .await;
    let _ = stop_socket.send(());
    let _ = socket_task.await;
    // The watcher first: it feeds nothing any more.
    drop(driver.watcher.take());
    drop(watcher_runtime);
    let closed = driver.journal.close();
    result.and(closed.map_err(DaemonError::from))
}

/// The watcher's own thread and runtime. The driver loop runs on the main
/// thread beside the socket (one thread, so a launch's answer needs no thread
/// switch); a journal commit there must not hold up reading the kernel's
/// process events, nor a reindex of the product directories the socket.
///
/// The runtime is driven by a plain thread blocked in `block_on` until the
/// agent stops. On Linux it is a current-thread runtime: a process event then
/// wakes one thread and runs the watcher there, where the multi-threaded
/// scheduler (even with one worker) spent several times the event's own cost
/// on its bookkeeping. Windows keeps one worker thread because its poller
/// uses `block_in_place`, which a current-thread runtime does not allow.
struct WatcherRuntime {
    handle: tokio::runtime::Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl WatcherRuntime {
    fn start() -> Result<WatcherRuntime, DaemonError> {
        let failed = |source| DaemonError::Thread {
            what: "watcher",
            source,
        };
        #[cfg(windows)]
        let mut builder = {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(1).thread_name("watcher-worker");
            b
        };
        #[cfg(not(windows))]
        let mut builder = tokio::runtime::Builder::new_current_thread();
        let rt = builder.enable_all().build().map_err(failed)?;
        let handle = rt.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("watcher".into())
            .spawn(move || {
                let _ = rt.block_on(stopped);
                // Its tasks are done or abandoned: the agent is stopping.
                rt.shutdown_background();
            })
            .map_err(failed)?;
        Ok(WatcherRuntime {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    fn start_watcher(
        &self,
        config: WatcherConfig,
        products: &[Product],
    ) -> Result<(WatcherHandle, mpsc::Receiver<ProcEvent>), WatchError> {
        let _inside = self.handle.enter();
        Watcher::start(config, products)
    }
}

impl Drop for WatcherRuntime {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Driver {
    core: Core,
    journal: JournalWriter,
    client: Client,
    hub: Hub,
    watcher: Option<WatcherHandle>,
    config: Arc<Config>,
    enrollment: Enrollment,
    credential_store: String,
    /// Socket requests waiting for the core's answer, by request id.
    replies: HashMap<String, oneshot::Sender<Reply>>,
    /// The event sender of every connection that launched: a close of the
    /// session it holds is sent there.
    wrappers: HashMap<ConnId, mpsc::Sender<Event>>,
    /// Account → (name, email), resolved once per account; `None` when the
    /// config maps it to no email.
    accounts: HashMap<AccountId, Option<(String, Email)>>,
    processes: Processes,
    net_tx: mpsc::Sender<NetEvent>,
}

impl Driver {
    async fn run(
        &mut self,
        mut commands: mpsc::Receiver<Command>,
        mut net: mpsc::Receiver<NetEvent>,
        mut procs: mpsc::Receiver<ProcEvent>,
        mut exits: mpsc::Receiver<ProcessId>,
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
            let wait = match self.core.next_deadline() {
                Some(at) => Some(at.saturating_sub(sysclock::now().boot).min(poll)),
                None if !self.core.has_sessions() => None,
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
                Some(process) = exits.recv() => self.feed(Input::ProcessExited { process })?,
                _ = timer => self.feed(Input::Tick)?,
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
        let mut records = Vec::new();
        let mut rest = Vec::with_capacity(actions.len());
        for action in actions {
            match action {
                Action::Persist(p) => records.push(p),
                other => rest.push(other),
            }
        }
        // Journal first when the batch holds money (a claim id, a window, a
        // refund): nothing below may happen unless it is durable. A batch of
        // usage records only (a launch inside an open window) is answered
        // first and handed to the journal's thread (see `JournalWriter`).
        if records.iter().any(Persist::is_money) {
            self.journal.commit(records)?;
        } else {
            let (replies, others): (Vec<_>, Vec<_>) = rest
                .into_iter()
                .partition(|a| matches!(a, Action::ReplyLaunch { .. } | Action::ReplyDone { .. }));
            for reply in replies {
                self.carry_out_reply(reply);
            }
            self.journal.later(records);
            rest = others;
        }
        let mut gone = Vec::new();
        let mut cpu = None;
        for action in rest {
            match action {
                Action::Persist(_) | Action::SetTimer(_) => {}
                Action::Claim { request, .. } => {
                    failpoint::hit(Failpoint::ClaimJournaled);
                    net::spawn_claim(self.client.clone(), request, self.net_tx.clone());
                }
                Action::Heartbeat => self.heartbeat()?,
                Action::SampleCpu { processes } => {
                    cpu = Some(self.processes.cpu_times(&processes));
                }
                Action::Refund(ask) => {
                    let request = RefundRequest {
                        sessions: {
                            let (user, product) = (ask.user.clone(), ask.product.clone());
                            self.journal
                                .read(move |j| j.session_records(&user, &product))?
                        },
                        window_id: ask.window_id,
                        user: ask.user,
                        product: ask.product,
                    };
                    net::spawn_refund(self.client.clone(), request, self.net_tx.clone());
                }
                Action::Notify { account, event } => {
                    // The journal's record of what users were told and why.
                    tracing::info!(account = ?account.as_ref().map(AccountId::as_str), ?event, "user event");
                    self.hub.publish(account.as_ref(), &event)
                }
                Action::Close {
                    session,
                    route,
                    graceful,
                } => self.close(session.as_str(), route, graceful),
                Action::TellWrapper { conn, event } => {
                    if let Some(tx) = self.wrappers.get(&conn) {
                        let _ = tx.try_send(event);
                    }
                }
                Action::Kill { session, process } => {
                    tracing::warn!(
                        %session,
                        pid = process.pid,
                        "product ignored the close: killing it"
                    );
                    self.processes.stop(process, Stop::Forced);
                }
                Action::Track { process } => {
                    if self.processes.track(process) == processes::Tracking::Gone {
                        gone.push(process);
                    }
                }
                Action::Release { process } => self.processes.release(process),
                Action::ReplyLaunch { .. } | Action::ReplyDone { .. } => {
                    self.carry_out_reply(action)
                }
                Action::ReplyJob { request, result } => self.reply(
                    &request,
                    match result {
                        Ok(done) => Reply::ok(done),
                        Err(r) => Reply::refusal(r.code, r.message, r.product_name),
                    },
                ),
            }
        }
        // Processes that were gone before a handle could be opened.
        for process in gone {
            self.feed(Input::ProcessExited { process })?;
        }
        if let Some(samples) = cpu {
            self.feed(Input::CpuTimes { samples })?;
        }
        Ok(())
    }

    /// Sends a launch's or attach/exit's answer.
    fn carry_out_reply(&mut self, action: Action) {
        match action {
            Action::ReplyLaunch { request, result } => self.reply(
                &request,
                match result {
                    Ok(granted) => Reply::ok(granted).long_lived(),
                    Err(r) => Reply::refusal(r.code, r.message, r.product_name),
                },
            ),
            Action::ReplyDone { request, result } => self.reply(
                &request,
                match result {
                    Ok(()) => Reply::ok(Empty {}),
                    Err(r) => Reply::refusal(r.code, r.message, r.product_name),
                },
            ),
            _ => {}
        }
    }

    fn reply(&mut self, request: &str, reply: Reply) {
        if let Some(to) = self.replies.remove(request) {
            // A client that hung up is noticed when its connection closes.
            let _ = to.send(reply);
        }
    }

    fn command(&mut self, cmd: Command) -> Result<(), DaemonError> {
        match cmd {
            Command::Launch { req, events, reply } => {
                self.wrappers.insert(req.conn, events);
                self.replies.insert(req.request.clone(), reply);
                self.feed(Input::Launch(req))
            }
            Command::Job { req, reply } => {
                self.replies.insert(req.request.clone(), reply);
                self.feed(Input::Job(req))
            }
            Command::Attach {
                conn,
                caller,
                session,
                process,
                reply,
            } => {
                let request = uuid::Uuid::new_v4().to_string();
                self.replies.insert(request.clone(), reply);
                self.feed(Input::Attach {
                    request,
                    conn,
                    caller,
                    session,
                    process,
                })
            }
            Command::Exit {
                conn,
                caller,
                session,
                reply,
            } => {
                let request = uuid::Uuid::new_v4().to_string();
                self.replies.insert(request.clone(), reply);
                self.feed(Input::Exit {
                    request,
                    conn,
                    caller,
                    session,
                })
            }
            Command::Status { only, reply } => {
                let _ = reply.send(Reply::ok(self.status(&only)));
                Ok(())
            }
            Command::Closed { conn } => {
                self.wrappers.remove(&conn);
                self.feed(Input::ConnectionClosed { conn })
            }
            Command::Idle {
                conn,
                caller,
                idle_secs,
                locked,
            } => {
                tracing::debug!(account = %caller.account, idle_secs, locked, "idle report");
                self.feed(Input::Activity {
                    conn,
                    account: caller.account,
                    idle: std::time::Duration::from_secs(idle_secs),
                    locked,
                })
            }
            Command::Closing {
                caller,
                pid,
                windows,
            } => self.feed(Input::WindowsClosing {
                account: caller.account,
                pid,
                windows,
            }),
        }
    }

    fn net(&mut self, ev: NetEvent) -> Result<(), DaemonError> {
        match ev {
            NetEvent::Claim { claim_id, outcome } => match outcome {
                Ok(response) => self.feed(Input::ClaimAnswered { claim_id, response }),
                Err(error) => self.feed(Input::ClaimFailed { claim_id, error }),
            },
            NetEvent::Refund { window_id, outcome } => match outcome {
                Ok(response) => self.feed(Input::RefundAnswered {
                    window_id,
                    result: Ok(response),
                }),
                // The server's decision (refused, not this device's window):
                // final. Anything else is asked again at the next contact.
                Err(e) if !e.is_retryable() => {
                    tracing::info!("refund of window {window_id} refused: {e}");
                    self.feed(Input::RefundAnswered {
                        window_id,
                        result: Err(e.to_string()),
                    })
                }
                Err(e) => {
                    tracing::warn!("refund of window {window_id} not delivered: {e}");
                    self.feed(Input::RefundFailed { window_id })
                }
            },
            NetEvent::Heartbeat { batch, outcome } => match outcome {
                Ok(resp) => {
                    if !resp.products.is_empty() && !self.core.same_products(&resp.products) {
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
                        uploaded: batch.receipt(resp.accepted_sessions),
                    })
                }
                Err(e) => {
                    if e.needs_reenroll() {
                        tracing::error!("{e}");
                    } else {
                        tracing::warn!("heartbeat failed: {e}");
                    }
                    if matches!(e, ClientError::Revoked { .. }) {
                        self.feed(Input::DeviceRevoked {
                            message: e.to_string(),
                        })
                    } else {
                        self.feed(Input::ContactFailed {
                            error: e.to_string(),
                        })
                    }
                }
            },
        }
    }

    /// Sends the heartbeat the core asked for (the core never asks for a
    /// second one while one is in flight).
    fn heartbeat(&mut self) -> Result<(), DaemonError> {
        let batch = self.journal.read(|j| j.heartbeat_batch())?;
        let request = HeartbeatRequest {
            sessions: batch.sessions.clone(),
            clock_rollbacks: batch.clock_rollbacks.clone(),
            notices_after: self.core.notices_after(),
            agent_version: Some(env!("CARGO_PKG_VERSION").to_string()),
        };
        net::spawn_heartbeat(
            self.client.clone(),
            request,
            batch,
            self.core.heartbeat_jitter(),
            self.net_tx.clone(),
        );
        Ok(())
    }

    fn proc_event(&mut self, ev: ProcEvent) -> Result<(), DaemonError> {
        match ev.kind {
            ProcEventKind::Exited { .. } => self.feed(Input::ProcessExited {
                process: ev.process,
            }),
            ProcEventKind::Started | ProcEventKind::Adopted => {
                let Some((name, user)) = self.account(&ev.owner) else {
                    return Ok(());
                };
                tracing::info!(pid = ev.process.pid, account = %name, product = %ev.product, exe = %ev.exe_name, "product process detected");
                self.feed(Input::ProcessStarted(ProcessInfo {
                    process: ev.process,
                    account: ev.owner,
                    account_name: name,
                    user,
                    product: ev.product,
                    version: None,
                    started_at: ev.started_at,
                }))
            }
        }
    }

    /// The name and email of `account`, or `None` (logged once) when the config
    /// maps it to no email: such a process cannot be charged to anyone.
    fn account(&mut self, id: &AccountId) -> Option<(String, Email)> {
        let config = self.config.clone();
        self.accounts
            .entry(id.clone())
            .or_insert_with(|| {
                let name = account::name_of(id);
                match config.email_for(&name) {
                    Ok(email) => Some((name, email)),
                    Err(e) => {
                        tracing::warn!(
                            account = %id,
                            "product processes of this account are not licensed: {e}"
                        );
                        None
                    }
                }
            })
            .clone()
    }

    /// Closes a session along the route the core chose: through the wrapper
    /// holding it (which stops its product and reports the exit), else through
    /// the process's handle.
    fn close(&mut self, session: &str, route: CloseRoute, graceful: bool) {
        let how = if graceful {
            Stop::Graceful
        } else {
            Stop::Forced
        };
        match route {
            CloseRoute::Wrapper {
                conn,
                event,
                fallback,
            } => {
                let sent = self
                    .wrappers
                    .get(&conn)
                    .is_some_and(|tx| tx.try_send(event).is_ok());
                if !sent {
                    if let Some(process) = fallback {
                        self.processes.stop(process, how);
                    }
                }
            }
            CloseRoute::Signal { process } => self.processes.stop(process, how),
            CloseRoute::Nothing => tracing::info!(session, "closed a session with no process"),
        }
    }

    fn detection(&self) -> &'static str {
        self.watcher.as_ref().map_or("off", |w| w.source().as_str())
    }

    fn status(&self, only: &StatusFor) -> StatusReply {
        let mut s = self.core.status(match only {
            StatusFor::All => None,
            StatusFor::User(e) => Some(e),
            StatusFor::Nobody => None,
        });
        if *only == StatusFor::Nobody {
            s.sessions.clear();
            s.windows.clear();
            s.sessions_omitted = 0;
            s.windows_omitted = 0;
        }
        StatusReply {
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            server_url: self.config.server_url.clone(),
            device_id: Some(self.enrollment.device_id.clone()),
            credential_store: self.credential_store.clone(),
            detection: self.detection().to_string(),
            sessions: s.sessions,
            sessions_omitted: s.sessions_omitted,
            windows: s.windows,
            windows_omitted: s.windows_omitted,
            balance: s.balance,
            last_server_contact: s.last_server_contact,
            offline_seconds_left: s.offline_seconds_left,
            online: s.online,
        }
    }
}
