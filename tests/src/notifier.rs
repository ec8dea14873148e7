//! A running `flexctl notify --print` for end-to-end tests: started, waited
//! for (its `subscribed` line on stderr, so no event after that is missed),
//! its printed lines collected, stopped on drop.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};

use crate::agent::{eventually, Running, WAIT};

pub struct Notifier {
    _proc: Running,
    /// Its stdout, line by line.
    printed: Arc<Mutex<Vec<String>>>,
    /// Its stderr, line by line.
    said: Arc<Mutex<Vec<String>>>,
}

impl Notifier {
    /// Starts `cmd` (a `flexctl ... notify --print` command, with its
    /// environment) and returns once it said it is subscribed.
    pub fn start(mut cmd: Command) -> Notifier {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start flexctl notify");
        let stdout = child.stdout.take().expect("notifier stdout");
        let stderr = child.stderr.take().expect("notifier stderr");
        let proc = Running::new(child);

        let printed = Arc::new(Mutex::new(Vec::new()));
        let lines = printed.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        // stderr is read to its end (so the notifier never blocks on it), and
        // its lines are handed over until the readiness line came.
        let said = Arc::new(Mutex::new(Vec::new()));
        let kept = said.clone();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                kept.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        tokio::task::block_in_place(|| loop {
            match rx.recv_timeout(WAIT) {
                Ok(line) if line.contains("subscribed") => break,
                Ok(_) => {}
                Err(e) => panic!(
                    "flexctl notify did not subscribe ({e}); it said: {:?}",
                    said.lock().unwrap()
                ),
            }
        });
        Notifier {
            _proc: proc,
            printed,
            said,
        }
    }

    /// What it printed on stdout so far.
    pub fn printed_lines(&self) -> Vec<String> {
        self.printed.lock().unwrap().clone()
    }

    /// What it said on stderr so far.
    pub fn said(&self) -> Vec<String> {
        self.said.lock().unwrap().clone()
    }

    /// Waits until a printed line satisfies `matches`, and returns it.
    pub async fn printed_where(&self, what: &str, matches: impl Fn(&str) -> bool) -> String {
        eventually(&format!("a printed line: {what}"), WAIT, || async {
            self.printed_lines().into_iter().find(|l| matches(l))
        })
        .await
    }

    /// Waits until `line` was printed on stdout.
    pub async fn printed(&self, line: &str) {
        self.printed_where(&format!("{line:?}"), |l| l == line)
            .await;
    }
}
