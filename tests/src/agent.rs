//! A real `flex-agent` for end-to-end tests: its own config, state directory and
//! socket in a temp dir, enrolled against a test [`Server`], started and killed
//! like the service would be.
//!
//! Readiness is the agent's own `flex-agent listening on PATH` line, never a sleep.
//! Conditions that take a moment (a charge reaching the ledger, a process being
//! closed) are awaited with [`eventually`], which polls with a deadline.
//!
//! One fake of each thing, in this one module, for every agent test file: the
//! usual test bed ([`setup`], [`flex_server`]), a product or `flexctl run`
//! wrapper the test starts ([`Running`]), a product's executable
//! ([`fake_product`]) and a rate sheet of a test's own ([`Rates`]).

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use std::io::Write as _;
use std::os::unix::net::UnixStream as StdStream;

use crate::{bin, Server, ServerOpts};

/// How long a test waits for what the agent or server does soon (a charge, a
/// session, a close).
pub const WAIT: Duration = Duration::from_secs(15);

/// The Flex user of root, the account the suite runs as (the agent maps
/// accounts to `{user}@example.com`).
pub const USER: &str = "root@example.com";

/// A server policy where a "day" is six seconds: window 6 s, offline limit 8 s
/// with warnings 4 s and 2 s before, heartbeat every second, 1 s close grace.
pub const SHORT_POLICY: &str = r#"
[policy]
window = "6s"
flex_offline_limit = "8s"
offline_warnings = ["4s", "2s"]
subscription_offline_limit = "20s"
subscription_warning = "5s"
heartbeat_interval = "1s"
renewal_grace = "2s"
close_grace = "1s"
"#;

/// A test server under `policy` with `tokens` bought and [`USER`] on Flex;
/// with `rates` as its rate sheet, else the server's own sample sheet.
pub async fn flex_server(policy: &str, rates: Option<&Rates>, tokens: u64) -> Server {
    let server = Server::start(ServerOpts {
        config: Some(policy.to_string()),
        rates: rates.map(|r| r.toml.clone()),
        ..Default::default()
    });
    server.buy(tokens).await;
    server.flex_user(USER).await;
    server
}

/// The usual test bed: a rate sheet of the test's own ([`Rates::unique`]), a
/// [`flex_server`] under [`SHORT_POLICY`] with 500 tokens, and a started agent.
pub async fn setup() -> (Rates, Server, Agent) {
    let rates = Rates::unique();
    let server = flex_server(SHORT_POLICY, Some(&rates), 500).await;
    let agent = Agent::start(&server, "").await;
    (rates, server, agent)
}

/// A running (or stopped) agent with everything it owns in one temp dir.
pub struct Agent {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    /// Extra environment for the next start (e.g. a failpoint).
    pub env: Vec<(String, String)>,
    /// The open-file limit (soft, hard) to start it with, as a service
    /// manager would set it.
    pub nofile: Option<(u64, u64)>,
    starts: u32,
}

impl Agent {
    /// Writes a config for `server` (file credential store, 100 ms polling,
    /// accounts mapped to `{user}@example.com`) plus `extra` TOML lines, enrolls,
    /// and starts the agent.
    pub async fn start(server: &Server, extra: &str) -> Agent {
        let agent = Self::enrolled(server, extra).await;
        let mut agent = agent;
        agent.spawn();
        agent
    }

    /// Like [`start`](Self::start) but leaves the agent stopped after enrolling.
    pub async fn enrolled(server: &Server, extra: &str) -> Agent {
        let agent = Self::configured(server, extra);
        let token = server
            .ok(
                reqwest::Method::POST,
                "/enrollment-tokens",
                Some(serde_json::json!({})),
            )
            .await["token"]
            .as_str()
            .expect("enrollment token")
            .to_string();
        let out = agent
            .enroll_command(&token)
            .output()
            .expect("run flex-agent enroll");
        assert!(
            out.status.success(),
            "flex-agent enroll failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        agent
    }

    /// `flex-agent enroll --config THIS --server URL --token TOKEN`, not yet run.
    pub fn enroll_command(&self, token: &str) -> Command {
        let server_url = self.server_url();
        let mut cmd = Command::new(bin("flex-agent"));
        cmd.arg("enroll")
            .arg("--config")
            .arg(&self.config)
            .arg("--server")
            .arg(server_url)
            .arg("--token")
            .arg(token)
            .env("FLEX_AGENT_LOG", "warn")
            .env_remove("FLEX_ENROLL_TOKEN");
        cmd
    }

    /// The config's `server_url`.
    pub fn server_url(&self) -> String {
        let text = std::fs::read_to_string(&self.config).expect("read agent config");
        text.lines()
            .find_map(|l| l.strip_prefix("server_url = \""))
            .and_then(|rest| rest.strip_suffix('"'))
            .expect("server_url line")
            .to_string()
    }

    /// Where self-enrollment looks for a token: `enroll-token` beside the config.
    pub fn token_file(&self) -> PathBuf {
        self.dir.path().join("enroll-token")
    }

    /// Writes `token` to [`token_file`](Self::token_file), mode 0600.
    pub fn put_token_file(&self, token: &str) {
        use std::os::unix::fs::PermissionsExt;
        let path = self.token_file();
        std::fs::write(&path, format!("{token}\n")).expect("write token file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    /// An agent with its config written but not enrolled and not started (to
    /// enroll itself from a token file, or to be refused).
    pub fn configured(server: &Server, extra: &str) -> Agent {
        Self::configured_for(&server.url, extra)
    }

    /// [`configured`](Self::configured) for the server at `server_url` (a
    /// proxy in front of one, say).
    pub fn configured_for(server_url: &str, extra: &str) -> Agent {
        let dir = tempfile::tempdir().expect("agent temp dir");
        let state_dir = dir.path().join("state");
        let socket = dir.path().join("agent.sock");
        let config = dir.path().join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "server_url = \"{}\"\nstate_dir = \"{}\"\nsocket_path = \"{}\"\n\
                 poll_interval = \"100ms\"\ncredential_store = \"file\"\n{extra}\n\
                 [users]\nemail_template = \"{{user}}@example.com\"\n",
                server_url,
                state_dir.display(),
                socket.display()
            ),
        )
        .expect("write agent config");
        Agent {
            child: None,
            dir,
            config,
            socket,
            state_dir,
            env: Vec::new(),
            nofile: None,
            starts: 0,
        }
    }

    /// Where this start's log goes.
    fn log_path(&self, n: u32) -> PathBuf {
        self.dir.path().join(format!("agent-{n}.log"))
    }

    /// Starts the agent and waits for its readiness line. Panics, with the log,
    /// if it exits first.
    pub fn spawn(&mut self) {
        if let Err(status) = self.try_spawn() {
            panic!("flex-agent did not start ({status}); log:\n{}", self.log());
        }
    }

    /// Starts the agent and waits for its readiness line; if it exits first,
    /// its exit status (its log is in [`log`](Self::log)).
    pub fn try_spawn(&mut self) -> Result<(), ExitStatus> {
        self.starts += 1;
        let log = std::fs::File::create(self.log_path(self.starts)).expect("agent log");
        let mut cmd = Command::new(bin("flex-agent"));
        cmd.arg("--config")
            .arg(&self.config)
            .env("FLEX_AGENT_LOG", "info,flex_agent=debug")
            .stdout(Stdio::piped())
            .stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        if let Some((soft, hard)) = self.nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe; nothing else runs here.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: soft,
                        rlim_max: hard,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().expect("start flex-agent");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read agent readiness");
        if !line.starts_with("flex-agent listening on ") {
            let _ = child.kill();
            return Err(child.wait().expect("wait for flex-agent"));
        }
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL, as a crash or power cut would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait, as `systemctl stop` would.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut c = self.child.take()?;
        sigterm(c.id());
        c.wait().ok()
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Waits up to `timeout` for the agent to exit on its own (a failpoint).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let c = self.child.as_mut()?;
            if let Ok(Some(status)) = c.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Every start's log, oldest first.
    pub fn log(&self) -> String {
        (1..=self.starts)
            .map(|n| std::fs::read_to_string(self.log_path(n)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n--- restart ---\n")
    }

    /// `flexctl --socket THIS ...`, ready for more args.
    pub fn flexctl(&self) -> Command {
        let mut cmd = Command::new(bin("flexctl"));
        cmd.arg("--socket").arg(&self.socket);
        cmd
    }

    /// `flexctl status --json`.
    pub fn status(&self) -> Value {
        let out = self
            .flexctl()
            .args(["status", "--json"])
            .output()
            .expect("run flexctl status");
        assert!(
            out.status.success(),
            "flexctl status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status JSON")
    }

    /// Waits for the agent's first server contact: from then on it knows the
    /// rate sheet, and names products by their display names.
    pub async fn rate_sheet_known(&self) {
        eventually("the agent's first server contact", WAIT, || async {
            (!self.status()["last_server_contact"].is_null()).then_some(())
        })
        .await;
    }

    /// The status's sessions.
    pub fn sessions(&self) -> Vec<Value> {
        self.status()["sessions"]
            .as_array()
            .expect("status lists sessions")
            .clone()
    }

    /// The status's session of process `pid`, if it has one.
    pub fn session_of(&self, pid: u32) -> Option<Value> {
        self.sessions()
            .into_iter()
            .find(|s| s["pid"].as_u64() == Some(pid.into()))
    }

    /// `flexctl run --product PRODUCT -- COMMAND...`, run to its end.
    pub fn run<S: AsRef<OsStr>>(&self, product: &str, command: &[S]) -> Output {
        self.flexctl()
            .args(["run", "--product", product, "--"])
            .args(command)
            .output()
            .expect("run flexctl run")
    }

    pub fn socket_path(&self) -> &Path {
        &self.socket
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("---- flex-agent log ----\n{}", self.log());
        }
    }
}

/// A raw connection to an agent's socket: request lines in, reply lines out.
pub struct SocketConn {
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::net::unix::OwnedReadHalf>>,
    write: tokio::net::unix::OwnedWriteHalf,
}

impl SocketConn {
    pub async fn open(path: &Path) -> SocketConn {
        use tokio::io::AsyncBufReadExt;
        let (read, write) = tokio::net::UnixStream::connect(path)
            .await
            .expect("connect to the agent socket")
            .into_split();
        SocketConn {
            lines: tokio::io::BufReader::new(read).lines(),
            write,
        }
    }

    /// Sends `bytes` plus a newline.
    pub async fn send(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.write.write_all(bytes).await.unwrap();
        self.write.write_all(b"\n").await.unwrap();
    }

    /// The next line from the agent (a reply or an event), `None` at its end.
    pub async fn next(&mut self) -> Option<Value> {
        let line = tokio::time::timeout(WAIT, self.lines.next_line())
            .await
            .expect("a line in time")
            .ok()??;
        Some(
            serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("line {line:?} is not JSON: {e}")),
        )
    }

    /// Sends `bytes` plus a newline and reads the one reply line.
    pub async fn ask(&mut self, bytes: &[u8]) -> Value {
        self.send(bytes).await;
        self.next()
            .await
            .expect("the agent keeps the connection open")
    }
}

/// Polls `check` every 50 ms until it returns `Some`, or panics after `timeout`
/// naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIGTERM to `pid` (no external `kill`: a minimal machine may lack procps).
fn sigterm(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        // SAFETY: kill(2) takes plain integers and touches no memory of ours.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
}

/// A process a test started (a product, a `flexctl run` wrapper, a notifier),
/// stopped and reaped when dropped.
pub struct Running(Child);

impl Running {
    /// Takes charge of an already spawned `child`.
    pub fn new(child: Child) -> Running {
        Running(child)
    }

    /// Product executable `exe` (a [`fake_product`]) started with `60`: it runs
    /// for a minute unless stopped.
    pub fn product(exe: &Path) -> Running {
        let mut cmd = Command::new(exe);
        cmd.arg("60");
        Running::spawn(&mut cmd)
    }

    /// Starts `cmd`, whose program is a freshly copied executable. Such a copy
    /// can be briefly "busy" (ETXTBSY): another test thread's fork between
    /// our copy's open and close inherits the write descriptor until that
    /// child execs. Waits it out.
    pub fn spawn(cmd: &mut Command) -> Running {
        let mut tries = 0;
        loop {
            match cmd.spawn() {
                Ok(child) => return Running(child),
                Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 100 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("start product {:?}: {e}", cmd.get_program()),
            }
        }
    }

    /// `flexctl run --product PRODUCT -- sleep 60`, stderr captured (see
    /// [`stderr`](Self::stderr)). The wrapped command is a plain `sleep`, which no
    /// agent's watcher takes for a product.
    pub fn wrapper(agent: &Agent, product: &str) -> Running {
        Running(
            agent
                .flexctl()
                .args(["run", "--product", product, "--", "sleep", "60"])
                .stderr(Stdio::piped())
                .spawn()
                .expect("start flexctl run"),
        )
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Its exit status once it has exited (reaped), else `None`.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.0.try_wait().expect("try_wait")
    }

    /// Waits for it to exit.
    pub fn wait(&mut self) -> ExitStatus {
        self.0.wait().expect("wait")
    }

    /// Waits (up to `timeout`) for it to exit; panics if it does not.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "process {} did not exit",
                self.pid()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends SIGTERM (a wrapper passes it on to its product).
    pub fn term(&self) {
        sigterm(self.pid());
    }

    /// What it wrote to its captured stderr; read to the end, so only once it
    /// has exited (or is known to).
    pub fn stderr(&mut self) -> String {
        let mut s = String::new();
        if let Some(mut e) = self.0.stderr.take() {
            let _ = e.read_to_string(&mut s);
        }
        s
    }

    /// Writes `bytes` to the product's stdin (it was started with a piped one).
    pub fn write_stdin(&mut self, bytes: &[u8]) {
        use std::io::Write;
        self.0
            .stdin
            .as_mut()
            .expect("started with a piped stdin")
            .write_all(bytes)
            .expect("write to the product's stdin");
    }

    /// Stops it as a user quitting would: SIGTERM, up to 5 s to exit, then
    /// SIGKILL; reaped either way. SIGTERM first because a wrapper passes it on
    /// to its product, which would outlive a SIGKILLed wrapper (and hold the
    /// test's output pipes).
    pub fn quit(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            self.term();
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(self.0.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.quit();
    }
}

/// A copy of a harmless long-running binary (`sleep`) named like a product's
/// executable, in `dir`. Started with an argument of seconds, it just waits.
///
/// The copy gets a tail of its own: agents know products by their content
/// too, and a plain copy of `sleep` would make every `sleep` on the machine
/// (and every other test's products) that product for every agent.
pub fn fake_product(dir: &Path, exe_name: &str) -> PathBuf {
    let sleep = ["/bin/sleep", "/usr/bin/sleep"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("a sleep binary");
    fake_product_of(Path::new(sleep), dir, exe_name)
}

/// A copy of the `source` executable named `exe_name` in `dir`, with a tail
/// of its own (see [`fake_product`]).
pub fn fake_product_of(source: &Path, dir: &Path, exe_name: &str) -> PathBuf {
    use std::io::Write;
    let path = dir.join(exe_name);
    std::fs::copy(source, &path).unwrap_or_else(|e| panic!("copy {}: {e}", source.display()));
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .expect("open the copy");
    writeln!(f, "flex test product {exe_name} {}", uuid::Uuid::new_v4()).expect("tag the copy");
    path
}

/// Whether process `pid` still runs (zombies do not count).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|s| s != 'Z' && s != 'X'),
        Err(_) => false,
    }
}

/// The shipped sample rate sheet with every Linux executable name given a
/// suffix of its own (`inventor` → `inventor-k3x9`), for a test server.
///
/// Every agent watches the whole machine: with the sample names, an agent of
/// one test would also detect, charge and maybe close the fake products of
/// another test (or of any agent left running). With names no other sheet has,
/// an agent sees only the products of its own test.
pub struct Rates {
    pub toml: String,
    suffix: String,
}

impl Rates {
    pub fn unique() -> Rates {
        const SAMPLE: &str = include_str!("../../server-stub/rates/sample-rates.toml");
        let id = uuid::Uuid::new_v4().simple().to_string();
        let suffix = format!("-{}", &id[..4]);
        let toml = SAMPLE
            .lines()
            .map(|line| match line.split_once("linux = [") {
                Some((head, rest)) => {
                    let (names, tail) = rest.split_once(']').expect("linux = [...] on one line");
                    let names: Vec<String> = names
                        .split(',')
                        .map(|n| format!("\"{}{suffix}\"", n.trim().trim_matches('"')))
                        .collect();
                    format!("{head}linux = [{}]{tail}", names.join(", "))
                }
                None => line.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n");
        Rates { toml, suffix }
    }

    /// This sheet's Linux executable name for sample name `base` (e.g. `acad`).
    pub fn exe(&self, base: &str) -> String {
        format!("{base}{}", self.suffix)
    }
}

/// nobody: not root, and not a Flex user of a test server unless the test
/// makes `nobody@example.com` one.
pub const NOBODY: u32 = 65534;

/// Runs `f` on a thread whose credentials are uid/gid `uid`. A raw setresuid
/// changes only the calling thread, which is what the kernel records when that
/// thread connects to a socket.
pub fn as_uid<T: Send + 'static>(uid: u32, f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        // SAFETY: plain syscalls on this thread only; no memory is shared.
        unsafe {
            assert_eq!(
                libc::syscall(libc::SYS_setresgid, uid, uid, uid),
                0,
                "setresgid: run as root"
            );
            assert_eq!(
                libc::syscall(libc::SYS_setresuid, uid, uid, uid),
                0,
                "setresuid: run as root"
            );
        }
        f()
    })
    .join()
    .unwrap()
}

/// Opens the agent's socket (from the calling thread) and sends `line`;
/// returns the stream and the first line the agent sent back.
pub fn ask_blocking(path: &Path, line: &str) -> (StdStream, Value) {
    let mut s = StdStream::connect(path).expect("connect");
    s.set_read_timeout(Some(WAIT)).unwrap();
    if !line.is_empty() {
        writeln!(s, "{line}").unwrap();
    }
    let mut reply = String::new();
    BufReader::new(s.try_clone().unwrap())
        .read_line(&mut reply)
        .unwrap();
    let v = serde_json::from_str(&reply).unwrap_or_else(|e| panic!("{reply:?}: {e}"));
    (s, v)
}

/// Lets other accounts reach the agent's socket (the harness dir is 0700).
pub fn open_socket_dir(agent: &Agent) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(agent.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
}

pub fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// The ledger's charge rows for `product`.
pub async fn charges_of(server: &Server, product: &str) -> Vec<Value> {
    server
        .charges()
        .await
        .into_iter()
        .filter(|c| c["product"] == product)
        .collect()
}

/// Tokens charged for `product` in the ledger.
pub async fn charged(server: &Server, product: &str) -> u64 {
    charges_of(server, product)
        .await
        .iter()
        .map(|c| c["tokens"].as_u64().unwrap())
        .sum()
}
