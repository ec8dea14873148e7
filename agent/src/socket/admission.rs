//! Admitting connections within the limits of [`crate::limits`]: one account
//! cannot take every connection, and some are always kept for admins.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use flex_protocol::ErrorCode;

use super::{Peer, Reply};
use crate::account::AccountId;
use crate::limits::{MAX_CONNECTIONS, MAX_CONNECTIONS_PER_ACCOUNT, RESERVED_FOR_ADMIN};

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_account: HashMap<AccountId, usize>,
}

/// Live connections, per account; shared by the accept loop's tasks.
#[derive(Debug, Clone, Default)]
pub struct Admission {
    counts: Arc<Mutex<Counts>>,
}

/// Holds one admitted connection's place; dropping it frees the place.
#[derive(Debug)]
pub struct Ticket {
    counts: Arc<Mutex<Counts>>,
    account: AccountId,
}

impl Admission {
    /// Admits `peer` or says why not (as the line to send before closing).
    pub fn admit(&self, peer: &Peer) -> Result<Ticket, Reply> {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let mine = c.per_account.get(&peer.account).copied().unwrap_or(0);
        let refused = if peer.admin {
            (c.total >= MAX_CONNECTIONS)
                .then(|| format!("flex-agent is serving {MAX_CONNECTIONS} connections, its limit"))
        } else if c.total >= MAX_CONNECTIONS - RESERVED_FOR_ADMIN {
            Some(format!(
                "flex-agent is serving {} connections, the limit for non-admin accounts",
                c.total
            ))
        } else if mine >= MAX_CONNECTIONS_PER_ACCOUNT {
            Some(format!(
                "account '{}' already has {mine} connections to flex-agent, the limit",
                peer.name
            ))
        } else {
            None
        };
        if let Some(why) = refused {
            return Err(Reply::error(
                ErrorCode::LimitExceeded,
                format!("{why}: close some (flexctl notify, flexctl run) and retry"),
            ));
        }
        c.total += 1;
        *c.per_account.entry(peer.account.clone()).or_default() += 1;
        Ok(Ticket {
            counts: self.counts.clone(),
            account: peer.account.clone(),
        })
    }

    #[cfg(test)]
    fn total(&self) -> usize {
        self.counts.lock().unwrap().total
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        c.total -= 1;
        if let Some(n) = c.per_account.get_mut(&self.account) {
            *n -= 1;
            if *n == 0 {
                c.per_account.remove(&self.account);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32) -> Peer {
        Peer {
            account: AccountId::from_uid(uid),
            name: format!("user{uid}"),
            admin: uid == 0,
            pid: None,
            conn_id: 0,
        }
    }

    fn code(r: Reply) -> String {
        let v: serde_json::Value = serde_json::from_str(r.line()).unwrap();
        v["error"]["code"].as_str().unwrap().to_string()
    }

    #[test]
    fn max_connections_per_account() {
        let a = Admission::default();
        let held: Vec<Ticket> = (0..MAX_CONNECTIONS_PER_ACCOUNT)
            .map(|_| a.admit(&peer(1000)).unwrap())
            .collect();
        assert_eq!(code(a.admit(&peer(1000)).unwrap_err()), "limit_exceeded");
        // Other accounts and root are not affected.
        let _bob = a.admit(&peer(1001)).unwrap();
        let _root = a.admit(&peer(0)).unwrap();
        drop(held);
        let _again = a.admit(&peer(1000)).unwrap();
        assert_eq!(a.total(), 3);
    }

    #[test]
    fn reserved_for_admin() {
        let a = Admission::default();
        let mut held = Vec::new();
        let mut uid = 1000;
        while held.len() < MAX_CONNECTIONS - RESERVED_FOR_ADMIN {
            match a.admit(&peer(uid)) {
                Ok(t) => held.push(t),
                Err(_) => uid += 1,
            }
        }
        assert_eq!(code(a.admit(&peer(uid + 1)).unwrap_err()), "limit_exceeded");
        // Root still gets in, up to the total.
        for _ in 0..RESERVED_FOR_ADMIN {
            held.push(a.admit(&peer(0)).unwrap());
        }
        assert_eq!(code(a.admit(&peer(0)).unwrap_err()), "limit_exceeded");
        assert_eq!(a.total(), MAX_CONNECTIONS);
    }
}
