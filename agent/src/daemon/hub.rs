//! Per-account event fan-out for `subscribe` connections (`flexctl notify`).
//!
//! A subscription is the connection's own event sender, registered under its
//! connection id: one per connection (subscribing again changes nothing), at
//! most [`MAX_SUBSCRIPTIONS_PER_ACCOUNT`] per account, and removed when the
//! connection closes. Publishing never waits: a notifier that stops reading
//! loses events rather than slowing the daemon.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use flex_protocol::socket::Event;
use flex_protocol::ErrorCode;
use tokio::sync::mpsc;

use crate::account::AccountId;
use crate::core::{ConnId, Refusal};
use crate::limits::MAX_SUBSCRIPTIONS_PER_ACCOUNT;

/// Subscribed connections: whose events they get, and their sender.
type Subscribers = HashMap<ConnId, (AccountId, mpsc::Sender<Event>)>;

#[derive(Clone, Default)]
pub struct Hub {
    subscribers: Arc<Mutex<Subscribers>>,
}

impl Hub {
    /// Sends the events of `account`, and those for everyone, on `events`.
    pub fn subscribe(
        &self,
        conn: ConnId,
        account: &AccountId,
        events: &mpsc::Sender<Event>,
    ) -> Result<(), Refusal> {
        let mut subs = self.lock();
        if subs.contains_key(&conn) {
            return Ok(());
        }
        let mine = subs.values().filter(|(a, _)| a == account).count();
        if mine >= MAX_SUBSCRIPTIONS_PER_ACCOUNT {
            return Err(Refusal::new(
                ErrorCode::LimitExceeded,
                format!(
                    "this account already has {mine} notifiers subscribed, the limit: \
                     stop one (flexctl notify) first"
                ),
            ));
        }
        subs.insert(conn, (account.clone(), events.clone()));
        Ok(())
    }

    /// The connection closed.
    pub fn unsubscribe(&self, conn: ConnId) {
        self.lock().remove(&conn);
    }

    /// Sends `event` to `account`'s subscribers, or to every subscriber for `None`.
    pub fn publish(&self, account: Option<&AccountId>, event: &Event) {
        let mut subs = self.lock();
        subs.retain(|_, (owner, tx)| {
            if account.is_some_and(|a| a != owner) {
                return !tx.is_closed();
            }
            match tx.try_send(event.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::warn!(account = %owner, "a notifier is not reading; event dropped");
                    true
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Subscribers> {
        self.subscribers.lock().unwrap_or_else(|e| e.into_inner())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(uid: u32) -> AccountId {
        AccountId::from_uid(uid)
    }

    #[test]
    fn events_reach_their_account_and_broadcasts_reach_all() {
        let hub = Hub::default();
        let (atx, mut alice) = mpsc::channel(8);
        let (btx, mut bob) = mpsc::channel(8);
        hub.subscribe(1, &id(1000), &atx).unwrap();
        hub.subscribe(2, &id(1001), &btx).unwrap();
        hub.publish(Some(&id(1000)), &Event::LowBalance { balance: 5 });
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
    fn one_subscription_per_connection_freed_when_it_closes() {
        // Regression: 200,000 `subscribe` lines on one connection used to keep
        // 200,000 senders (491 MB) until the next event.
        let hub = Hub::default();
        let (tx, mut rx) = mpsc::channel(8);
        for _ in 0..10_000 {
            hub.subscribe(7, &id(1000), &tx).unwrap();
        }
        assert_eq!(hub.len(), 1);
        hub.publish(None, &Event::LowBalance { balance: 1 });
        assert_eq!(rx.try_recv().unwrap(), Event::LowBalance { balance: 1 });
        assert!(rx.try_recv().is_err(), "one subscription, one copy");
        hub.unsubscribe(7);
        assert_eq!(hub.len(), 0);
    }

    #[test]
    fn max_subscriptions_per_account() {
        let hub = Hub::default();
        let (tx, _rx) = mpsc::channel(8);
        for conn in 0..MAX_SUBSCRIPTIONS_PER_ACCOUNT as u64 {
            hub.subscribe(conn, &id(1000), &tx).unwrap();
        }
        let refused = hub.subscribe(99, &id(1000), &tx).unwrap_err();
        assert_eq!(refused.code, ErrorCode::LimitExceeded);
        // Another account still subscribes.
        hub.subscribe(100, &id(1001), &tx).unwrap();
        hub.unsubscribe(0);
        hub.subscribe(99, &id(1000), &tx).unwrap();
    }

    #[test]
    fn closed_subscribers_are_forgotten() {
        let hub = Hub::default();
        let (tx, rx) = mpsc::channel(8);
        hub.subscribe(1, &id(7), &tx).unwrap();
        drop(rx);
        hub.publish(None, &Event::LowBalance { balance: 1 });
        assert_eq!(hub.len(), 0);
    }
}
