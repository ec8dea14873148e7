//! Connection admission: at most `total` connections open at once, and at most
//! `per_address` from one client address. A connection holds a [`Permit`]; its
//! drop gives the place back. Refused connections are closed at once, before
//! anything is read from them.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The server holds `total` connections.
    Total,
    /// This address holds `per_address` connections.
    PerAddress,
}

#[derive(Debug, Default)]
struct Counts {
    total: u32,
    per: HashMap<IpAddr, u32>,
}

#[derive(Debug)]
struct Inner {
    total: u32,
    per_address: u32,
    counts: Mutex<Counts>,
}

/// The caps and the connections they count; cheap to clone.
#[derive(Debug, Clone)]
pub struct Admission(Arc<Inner>);

/// One admitted connection.
#[derive(Debug)]
pub struct Permit {
    admission: Arc<Inner>,
    key: IpAddr,
}

impl Admission {
    pub fn new(total: u32, per_address: u32) -> Self {
        Admission(Arc::new(Inner {
            total,
            per_address: per_address.min(total),
            counts: Mutex::default(),
        }))
    }

    pub fn total_cap(&self) -> u32 {
        self.0.total
    }

    pub fn per_address_cap(&self) -> u32 {
        self.0.per_address
    }

    /// A place for a connection from `key` (see [`super::client_key`]).
    pub fn admit(&self, key: IpAddr) -> Result<Permit, Refused> {
        let mut c = self.0.counts.lock().unwrap_or_else(|p| p.into_inner());
        if c.total >= self.0.total {
            return Err(Refused::Total);
        }
        let mine = c.per.entry(key).or_insert(0);
        if *mine >= self.0.per_address {
            return Err(Refused::PerAddress);
        }
        *mine += 1;
        c.total += 1;
        Ok(Permit {
            admission: Arc::clone(&self.0),
            key,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> u32 {
        self.0
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .total
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut c = self
            .admission
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        c.total -= 1;
        if let Some(n) = c.per.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                c.per.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_address_cannot_take_every_place() {
        let a = Admission::new(5, 2);
        let held: Vec<_> = (0..2).map(|_| a.admit(ip("10.0.0.1")).unwrap()).collect();
        assert_eq!(a.admit(ip("10.0.0.1")).unwrap_err(), Refused::PerAddress);
        let other = a
            .admit(ip("10.0.0.2"))
            .expect("another address still gets in");
        drop(held);
        assert_eq!(a.open(), 1);
        a.admit(ip("10.0.0.1")).expect("places come back on drop");
        drop(other);
    }

    #[test]
    fn the_total_cap_holds_across_addresses_and_the_map_empties() {
        let a = Admission::new(3, 3);
        let held: Vec<_> = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
            .iter()
            .map(|s| a.admit(ip(s)).unwrap())
            .collect();
        assert_eq!(a.admit(ip("10.0.0.4")).unwrap_err(), Refused::Total);
        drop(held);
        assert_eq!(a.open(), 0);
        assert!(
            a.0.counts.lock().unwrap().per.is_empty(),
            "no entry left behind"
        );
    }

    #[test]
    fn a_per_address_cap_above_the_total_is_the_total() {
        let a = Admission::new(2, 10);
        assert_eq!(a.per_address_cap(), 2);
    }
}
