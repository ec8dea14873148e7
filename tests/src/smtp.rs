//! A real SMTP server for the mail tests: `support/smtp_sink.py` on aiosmtpd
//! (Debian's python3-aiosmtpd, installed by tests/run.sh), started on a port
//! of the test's choosing. It prints a readiness line, then one JSON line per
//! message, which [`SmtpSink::next`] hands over.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

pub struct SmtpSink {
    child: Child,
    pub port: u16,
    messages: mpsc::Receiver<Value>,
}

impl SmtpSink {
    /// Starts the sink on `port` (0: any free port) and waits until it listens.
    pub fn start(port: u16) -> SmtpSink {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/support/smtp_sink.py");
        let mut child = Command::new("/usr/bin/python3")
            .arg(script)
            .arg(port.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the SMTP sink (/usr/bin/python3 with python3-aiosmtpd: tests/run.sh installs it)");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let first = lines.next().and_then(Result::ok).unwrap_or_default();
        let port = first
            .strip_prefix("listening on ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| {
                panic!("the SMTP sink did not start: {first:?} (is python3-aiosmtpd installed?)")
            });
        let (tx, messages) = mpsc::channel();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let v: Value = serde_json::from_str(&line).expect("sink prints JSON lines");
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        SmtpSink {
            child,
            port,
            messages,
        }
    }

    /// The next message, waiting at most `secs` seconds for it.
    pub fn next(&self, secs: u64) -> Value {
        self.messages
            .recv_timeout(Duration::from_secs(secs))
            .unwrap_or_else(|_| panic!("no mail reached the SMTP sink within {secs} s"))
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// A loopback port that was free a moment ago (for a server started later).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}
