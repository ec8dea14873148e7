//! Test support for the end-to-end suite: start the real binaries, talk to them
//! over real sockets, and drive their clocks.
//!
//! This is the one place that knows how to launch `flex-server`; every test file
//! uses it rather than wiring its own. The server announces readiness with a
//! `listening on URL` line, which [`Server::start`] waits for: no sleeping.

pub mod agent;
pub mod debroot;
pub mod notifier;
pub mod proxy;
pub mod smtp;
pub mod wine;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

/// A compiled binary of the workspace, next to the test executable's directory.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --workspace --bins` first (tests/run.sh does this)",
        path.display()
    );
    path
}

pub const ADMIN_TOKEN: &str = "test-admin-token";

/// An HTTP client for a test server. The server closes a connection that
/// stays idle for its `header_read_timeout` (10 s); a client that sent a
/// request on such a connection as it closed got "connection closed before
/// message completed". Idle connections are dropped here first.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_idle_timeout(Duration::from_secs(5))
        .build()
        .expect("an HTTP client")
}

/// Options for a test server.
#[derive(Clone, Default)]
pub struct ServerOpts {
    pub test_clock: bool,
    /// TOML written to a config file and passed with `--config`.
    pub config: Option<String>,
    pub tls: Option<(PathBuf, PathBuf)>,
    /// A rate sheet (TOML) written to a file and passed with `--rates`.
    pub rates: Option<String>,
    /// PostgreSQL instead of SQLite (`--database-url`); replicas share it.
    pub database_url: Option<String>,
    /// The soft open-file limit the server starts with (its hard limit stays
    /// this process's), e.g. 1,024 as systemd leaves a unit without LimitNOFILE.
    pub nofile: Option<u64>,
    /// Server's stderr to a file that [`Server::log`] reads, instead of the
    /// test's own stderr.
    pub capture_log: bool,
}

/// A running `flex-server` on a loopback port with its own data directory.
pub struct Server {
    child: Option<Child>,
    pub url: String,
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    opts: ServerOpts,
    pub http: reqwest::Client,
    port: u16,
}

impl Server {
    /// A server with `--test-clock`.
    pub fn start_test_clock() -> Server {
        Self::start(ServerOpts {
            test_clock: true,
            ..Default::default()
        })
    }

    pub fn start(opts: ServerOpts) -> Server {
        let tmp = tempfile::tempdir().expect("temp dir");
        let data_dir = tmp.path().join("data");
        let mut s = Server {
            child: None,
            url: String::new(),
            data_dir,
            _tmp: Some(tmp),
            opts,
            http: http_client(),
            port: 0,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(bin("flex-server"));
        cmd.arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--data-dir")
            .arg(&self.data_dir)
            .env("FLEX_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if self.opts.test_clock {
            cmd.arg("--test-clock");
        }
        if let Some(cfg) = &self.opts.config {
            let path = self.data_dir.with_file_name("server.toml");
            std::fs::write(&path, cfg).expect("write config");
            cmd.arg("--config").arg(path);
        }
        if let Some(rates) = &self.opts.rates {
            let path = self.data_dir.with_file_name("rates.toml");
            std::fs::write(&path, rates).expect("write rate sheet");
            cmd.arg("--rates").arg(path);
        }
        if let Some((cert, key)) = &self.opts.tls {
            cmd.arg("--tls-cert").arg(cert).arg("--tls-key").arg(key);
        }
        if let Some(url) = &self.opts.database_url {
            cmd.arg("--database-url").arg(url);
        }
        if let Some(soft) = self.opts.nofile {
            let (_, hard) = nofile();
            let limit = libc::rlimit {
                rlim_cur: soft.min(hard),
                rlim_max: hard,
            };
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe and `limit` is a plain copy.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        if self.opts.capture_log {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.log_path())
                .expect("open the server log");
            cmd.stderr(log);
        }
        let mut child = cmd.spawn().expect("start flex-server");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read readiness line");
        let url = line
            .trim()
            .strip_prefix("flex-server listening on ")
            .unwrap_or_else(|| panic!("flex-server did not start: {line:?}"))
            .to_string();
        // Keep the same port across restarts so clients keep working.
        self.port = url.rsplit(':').next().unwrap().parse().unwrap();
        self.url = url;
        self.child = Some(child);
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn log_path(&self) -> PathBuf {
        self.data_dir.with_file_name("server.log")
    }

    /// What the server logged so far (with [`ServerOpts::capture_log`]).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The address the server listens on.
    pub fn addr(&self) -> std::net::SocketAddr {
        let hostport = self.url.rsplit("//").next().expect("url with a scheme");
        hostport.parse().expect("url names an IP and a port")
    }

    /// SIGKILL: no graceful shutdown, as in a crash or power loss.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().ok();
            c.wait().ok();
        }
    }

    pub fn restart(&mut self) {
        self.kill9();
        // Pooled connections died with the old process.
        self.http = http_client();
        self.spawn();
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(token)
            .timeout(Duration::from_secs(30));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request reaches the server");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, value)
    }

    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.call(method, &format!("/v1/admin{path}"), ADMIN_TOKEN, body)
            .await
    }

    /// Admin call that must succeed (2xx); returns the JSON.
    pub async fn ok(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self.admin(method.clone(), path, body).await;
        assert!(
            (200..300).contains(&status),
            "{method} {path} answered {status}: {v}"
        );
        v
    }

    pub async fn set_time(&self, rfc3339: &str) {
        self.ok(
            reqwest::Method::PUT,
            "/test-clock",
            Some(json!({ "now": rfc3339 })),
        )
        .await;
    }

    pub async fn buy(&self, tokens: u64) -> Value {
        self.ok(
            reqwest::Method::POST,
            "/token-lots",
            Some(json!({ "tokens": tokens })),
        )
        .await
    }

    pub async fn balance(&self) -> u64 {
        self.ok(reqwest::Method::GET, "/balance", None).await["balance"]
            .as_u64()
            .unwrap()
    }

    pub async fn charges(&self) -> Vec<Value> {
        self.ok(reqwest::Method::GET, "/charges", None).await["charges"]
            .as_array()
            .unwrap()
            .clone()
    }

    pub async fn notices(&self) -> Vec<Value> {
        self.ok(reqwest::Method::GET, "/notices", None).await["notices"]
            .as_array()
            .unwrap()
            .clone()
    }

    /// Adds a user assigned to Flex.
    pub async fn flex_user(&self, email: &str) {
        self.ok(
            reqwest::Method::POST,
            "/users",
            Some(json!({"email": email, "first_name": "Test", "last_name": "User"})),
        )
        .await;
        self.ok(
            reqwest::Method::PUT,
            &format!("/users/{email}/flex"),
            Some(json!({"assigned": true})),
        )
        .await;
    }

    /// Enrolls a device and returns its token.
    pub async fn enroll(&self) -> Device {
        let t = self
            .ok(reqwest::Method::POST, "/enrollment-tokens", Some(json!({})))
            .await;
        let (status, v) = self
            .call(
                reqwest::Method::POST,
                "/v1/agent/enroll",
                "",
                Some(json!({"enrollment_token": t["token"], "hostname": "ws-test"})),
            )
            .await;
        assert_eq!(status, 200, "enroll: {v}");
        Device {
            id: v["device_id"].as_str().unwrap().to_string(),
            token: v["device_token"].as_str().unwrap().to_string(),
            enroll: v,
        }
    }

    /// Sends a claim; a fresh claim id unless the body names one.
    pub async fn claim(&self, device: &Device, mut body: Value) -> (u16, Value) {
        if body.get("claim_id").is_none() {
            body["claim_id"] = json!(uuid::Uuid::new_v4().to_string());
        }
        self.call(
            reqwest::Method::POST,
            "/v1/agent/claims",
            &device.token,
            Some(body),
        )
        .await
    }

    /// A launch claim that must be granted; returns the tokens charged.
    pub async fn launch(&self, device: &Device, user: &str, product: &str) -> u64 {
        let (status, v) = self
            .claim(device, json!({"user": user, "product": product}))
            .await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["decision"], "granted", "{v}");
        v["tokens_charged"].as_u64().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub struct Device {
    pub id: String,
    pub token: String,
    pub enroll: Value,
}

/// This process's open-file limits (soft, hard).
pub fn nofile() -> (u64, u64) {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) };
    assert_eq!(rc, 0, "getrlimit: {}", std::io::Error::last_os_error());
    (l.rlim_cur, l.rlim_max)
}

/// Raises this process's soft open-file limit to its hard limit, for tests that
/// hold thousands of sockets; returns the new soft limit.
pub fn raise_nofile() -> u64 {
    let (_, hard) = nofile();
    let l = libc::rlimit {
        rlim_cur: hard,
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads the struct it is given.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &l) };
    assert_eq!(rc, 0, "setrlimit: {}", std::io::Error::last_os_error());
    hard
}

/// An HTTP client whose connections come from `ip` (any of 127.0.0.0/8 on
/// Linux), trusting `ca_pem` when given: another client address to the server.
pub fn client_from(ip: std::net::IpAddr, ca_pem: Option<&str>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .local_address(ip)
        .timeout(Duration::from_secs(30));
    if let Some(ca) = ca_pem {
        b = b
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).expect("CA PEM"));
    }
    b.build().expect("http client")
}

/// Parses RFC 3339 in assertions.
pub fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// A throwaway certificate authority and a server certificate for 127.0.0.1 and
/// localhost, written as PEM files into `dir`. Returns (CA PEM, cert path, key path).
pub fn test_ca(dir: &Path) -> (String, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Flex Test CA");
    let ca = ca_params.self_signed(&ca_key).expect("ca cert");
    let key = KeyPair::generate().expect("server key");
    let params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .expect("server params");
    let cert = params.signed_by(&key, &ca, &ca_key).expect("server cert");
    let cert_path = dir.join("server.pem");
    let key_path = dir.join("server.key");
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    (ca.pem(), cert_path, key_path)
}
