//! The journal on a thread of its own.
//!
//! The driver loop hands the journal two kinds of work. Money (a claim id, a
//! window, a refund, a job, the offline clock) must be on disk before the
//! driver carries out anything else, so [`JournalWriter::commit`] waits for it.
//! Usage records (the session row of a launch inside an open window, an exit,
//! an upload mark) need not hold up the answer to the user: the driver replies,
//! then hands them to [`JournalWriter::later`] and goes on. The thread writes
//! everything that is queued in one transaction (group commit), so a burst of
//! launches costs one write, not one each.
//!
//! Order is kept: the thread takes work first in, first out, so a commit or a
//! read ([`JournalWriter::read`]) sees every record handed over before it.
//!
//! What a crash may lose: the usage records still queued, at most the work of
//! the one transaction in progress (the queue is written as soon as the thread
//! is free, within milliseconds). A claim id, a window, a refund or a job is
//! never among them. A lost session row is not lost usage: the process it
//! describes is found again by the watcher when the agent restarts, and the
//! server answers any repeated claim as it answered the first.

use std::sync::mpsc;
use std::thread::JoinHandle;

use crate::core::Persist;
use crate::journal::{Journal, JournalError};

/// At most this many usage records in one transaction, so one commit stays
/// short when a flood of launches queued many.
const MAX_GROUP: usize = 4096;

type Call = Box<dyn FnOnce(&mut Journal) + Send>;

enum Work {
    Later(Vec<Persist>),
    Now(Call),
}

pub struct JournalWriter {
    work: Option<mpsc::Sender<Work>>,
    /// The first failure of a `later` write, reported by the next commit or
    /// read (the driver then stops, as for any journal failure).
    failed: mpsc::Receiver<JournalError>,
    thread: Option<JoinHandle<()>>,
}

impl JournalWriter {
    /// Moves `journal` to its own thread.
    pub fn start(journal: Journal) -> std::io::Result<JournalWriter> {
        let (work, queue) = mpsc::channel();
        let (fail_tx, failed) = mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("journal".into())
            .spawn(move || run(journal, queue, fail_tx))?;
        Ok(JournalWriter {
            work: Some(work),
            failed,
            thread: Some(thread),
        })
    }

    /// Queues usage records; they are written shortly, in order.
    pub fn later(&self, items: Vec<Persist>) {
        if !items.is_empty() {
            self.send(Work::Later(items));
        }
    }

    /// Writes `items` (with everything queued before them) and waits until
    /// they are durable.
    pub fn commit(&self, items: Vec<Persist>) -> Result<(), JournalError> {
        self.read(move |j| j.apply_persist(items.iter()))
    }

    /// Runs `f` on the journal after everything queued before it, and waits.
    pub fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Journal) -> Result<T, JournalError> + Send + 'static,
    ) -> Result<T, JournalError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.send(Work::Now(Box::new(move |j| {
            let _ = tx.send(f(j));
        })));
        let answer = rx.recv().map_err(|_| JournalError::WriterGone);
        // A queued write that failed is the older news.
        if let Ok(e) = self.failed.try_recv() {
            return Err(e);
        }
        answer?
    }

    /// Writes what is queued and closes the journal.
    pub fn close(mut self) -> Result<(), JournalError> {
        let flushed = self.read(|_| Ok(()));
        self.work = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        flushed
    }

    fn send(&self, work: Work) {
        if let Some(tx) = &self.work {
            // A gone thread is reported by the next `read`.
            let _ = tx.send(work);
        }
    }
}

impl Drop for JournalWriter {
    fn drop(&mut self) {
        // Closing the queue lets the thread write what is left and end.
        self.work = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(mut journal: Journal, queue: mpsc::Receiver<Work>, failed: mpsc::SyncSender<JournalError>) {
    let mut next = queue.recv().ok();
    while let Some(work) = next.take() {
        match work {
            Work::Now(f) => f(&mut journal),
            Work::Later(mut items) => {
                // Everything else already queued goes in the same transaction.
                while items.len() < MAX_GROUP {
                    match queue.try_recv() {
                        Ok(Work::Later(more)) => items.extend(more),
                        Ok(now) => {
                            next = Some(now);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                if let Err(e) = journal.apply_persist(items.iter()) {
                    tracing::error!("cannot write usage records to the journal: {e}");
                    let _ = failed.try_send(e);
                }
            }
        }
        if next.is_none() {
            // Idle now: the code this work faulted in can go (rate-limited).
            crate::residency::journal_idle();
            next = queue.recv().ok();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::tests::{open_at, session};

    fn row(id: &str, ended: bool) -> Persist {
        Persist::Session(session(id, ended.then(chrono::Utc::now)))
    }

    #[test]
    fn queued_records_are_seen_by_the_next_read_in_order_and_kept_by_close() {
        let dir = tempfile::tempdir().unwrap();
        let writer = JournalWriter::start(open_at(dir.path())).unwrap();
        for i in 0..200 {
            writer.later(vec![row(&format!("s{i}"), false)]);
        }
        // The end of s7 comes after its start: the row read back is ended.
        writer.later(vec![row("s7", true)]);
        let batch = writer.read(|j| j.heartbeat_batch()).unwrap();
        assert_eq!(batch.sessions.len(), 200);
        let s7 = batch.sessions.iter().find(|s| s.id == "s7").unwrap();
        assert!(s7.ended_at.is_some(), "the later record won: {s7:?}");
        writer.later(vec![row("last", false)]);
        writer.close().unwrap();

        let again = open_at(dir.path());
        let batch = again.heartbeat_batch().unwrap();
        assert_eq!(batch.sessions.len(), 201, "close wrote what was queued");
    }

    #[test]
    fn a_failed_queued_write_is_reported_by_the_next_read() {
        let dir = tempfile::tempdir().unwrap();
        let writer = JournalWriter::start(open_at(dir.path())).unwrap();
        writer
            .read(|j| {
                j.conn
                    .execute_batch(
                        "CREATE TRIGGER full BEFORE INSERT ON sessions
                         BEGIN SELECT RAISE(ABORT, 'disk full'); END",
                    )
                    .unwrap();
                Ok(())
            })
            .unwrap();
        writer.later(vec![row("s1", false)]);
        let err = writer.read(|_| Ok(())).unwrap_err();
        assert!(err.to_string().contains("disk full"), "{err}");
    }
}
