//! The network edge: what one client may hold of the server before any handler
//! runs.
//!
//! Every connection is admitted by [`admission`] (a cap in total, held below the
//! open-file limit that [`nofile`] raises at start, and a cap per client
//! address), must finish its TLS handshake and then each request head within a
//! timeout, and each request within another ([`serve`]). Failed admin-token
//! attempts are counted per client address by [`throttle`]. The caps and
//! counters are plain structs that take the time as an argument; the driver in
//! [`serve`] does the I/O.
//!
//! A "client address" is an IPv4 address or an IPv6 /64 (one site's LAN, as a
//! NAT would be), so a host cannot escape a cap by walking its own /64.

pub mod admission;
pub mod nofile;
pub mod serve;
pub mod throttle;

use std::net::{IpAddr, Ipv6Addr};

/// The key that per-address caps and counters use for `ip`.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_is_keyed_by_its_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key(c));
        assert_eq!(
            client_key("::ffff:192.0.2.7".parse().unwrap()),
            "192.0.2.7".parse::<IpAddr>().unwrap()
        );
        let v4: IpAddr = "127.0.0.2".parse().unwrap();
        assert_eq!(client_key(v4), v4);
    }
}
