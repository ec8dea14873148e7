//! Who is on the other end of a connection.
//!
//! Identity comes only from the kernel (`SO_PEERCRED` on Linux, `getpeereid` on the
//! BSDs via tokio), read once when the connection is accepted, never from a message.
//! Root may act for another account; everyone else only for themselves.

use std::io;

use tokio::net::UnixStream;

/// The credentials of a connected client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    /// Absent on systems that do not report it.
    pub pid: Option<u32>,
    /// Account name of `uid`, or the uid in decimal when it has no passwd entry.
    pub account: String,
    /// Distinguishes connections in logs.
    pub conn_id: u64,
}

impl Peer {
    /// Reads the peer credentials of `stream` and resolves the account name.
    pub async fn from_stream(stream: &UnixStream, conn_id: u64) -> io::Result<Peer> {
        let cred = stream.peer_cred()?;
        let uid = cred.uid();
        // getpwuid_r may consult NSS (LDAP, sssd): keep it off the runtime threads.
        let account = tokio::task::spawn_blocking(move || account_name(uid))
            .await
            .map_err(io::Error::other)?;
        Ok(Peer {
            uid,
            gid: cred.gid(),
            pid: cred.pid().and_then(|p| u32::try_from(p).ok()),
            account,
            conn_id,
        })
    }

    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    /// Whether this peer may act for local account `user`.
    pub fn may_act_as(&self, user: &str) -> bool {
        self.is_root() || user == self.account
    }

    /// The account a request acts for: the requested one (already checked with
    /// [`Peer::may_act_as`] by the server) or the peer's own.
    pub fn acting_user<'a>(&'a self, requested: Option<&'a str>) -> &'a str {
        requested.unwrap_or(&self.account)
    }
}

/// Account name of `uid`, falling back to the number.
pub fn account_name(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(user)) => user.name,
        _ => uid.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn credentials_of_a_real_socket_pair() {
        let (a, _b) = UnixStream::pair().unwrap();
        let peer = Peer::from_stream(&a, 7).await.unwrap();
        assert_eq!(peer.uid, nix::unistd::getuid().as_raw());
        assert_eq!(peer.gid, nix::unistd::getgid().as_raw());
        assert_eq!(peer.pid, Some(std::process::id()));
        assert_eq!(peer.account, account_name(peer.uid));
        assert_eq!(peer.conn_id, 7);
    }

    #[test]
    fn only_root_acts_for_others() {
        let alice = Peer {
            uid: 1000,
            gid: 1000,
            pid: None,
            account: "alice".into(),
            conn_id: 1,
        };
        assert!(alice.may_act_as("alice"));
        assert!(!alice.may_act_as("bob"));
        let root = Peer {
            uid: 0,
            account: "root".into(),
            ..alice
        };
        assert!(root.may_act_as("bob"));
        assert_eq!(root.acting_user(Some("bob")), "bob");
        assert_eq!(root.acting_user(None), "root");
    }
}
