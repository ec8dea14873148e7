//! Per-account event fan-out for `subscribe` connections (`flexctl notify`).
//!
//! Each subscriber gets a bounded channel. A notifier that stops reading loses
//! events rather than slowing the daemon: publishing never waits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use flex_protocol::socket::Event;
use tokio::sync::mpsc;

/// Events queued per subscriber before new ones are dropped.
const QUEUE: usize = 64;

#[derive(Clone, Default)]
pub struct Hub {
    subscribers: Arc<Mutex<HashMap<u32, Vec<mpsc::Sender<Event>>>>>,
}

impl Hub {
    /// A stream of the events for account `uid` and of those sent to everyone.
    pub fn subscribe(&self, uid: u32) -> mpsc::Receiver<Event> {
        let (tx, rx) = mpsc::channel(QUEUE);
        self.lock().entry(uid).or_default().push(tx);
        rx
    }

    /// Sends `event` to `uid`'s subscribers, or to every subscriber for `None`.
    pub fn publish(&self, uid: Option<u32>, event: &Event) {
        let mut subs = self.lock();
        for (owner, senders) in subs.iter_mut() {
            if uid.is_some_and(|u| u != *owner) {
                continue;
            }
            senders.retain(|tx| match tx.try_send(event.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::warn!(uid = owner, "a notifier is not reading; event dropped");
                    true
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
        }
        subs.retain(|_, senders| !senders.is_empty());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Vec<mpsc::Sender<Event>>>> {
        self.subscribers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_reach_their_account_and_broadcasts_reach_all() {
        let hub = Hub::default();
        let mut alice = hub.subscribe(1000);
        let mut bob = hub.subscribe(1001);
        hub.publish(Some(1000), &Event::LowBalance { balance: 5 });
        hub.publish(None, &Event::ClockRollback { seconds: 60 });
        assert_eq!(alice.try_recv().unwrap(), Event::LowBalance { balance: 5 });
        assert_eq!(
            alice.try_recv().unwrap(),
            Event::ClockRollback { seconds: 60 }
        );
        assert_eq!(
            bob.try_recv().unwrap(),
            Event::ClockRollback { seconds: 60 }
        );
        assert!(bob.try_recv().is_err());
    }

    #[test]
    fn closed_subscribers_are_forgotten() {
        let hub = Hub::default();
        drop(hub.subscribe(7));
        hub.publish(None, &Event::LowBalance { balance: 1 });
        assert!(hub.lock().is_empty());
    }
}
