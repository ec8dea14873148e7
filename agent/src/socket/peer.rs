//! Who is on the other end of a connection, and what that allows.
//!
//! Identity comes only from the kernel (`SO_PEERCRED` on Linux, `getpeereid` on the
//! BSDs via tokio, the pipe client's token on Windows: `peer_windows.rs`), read
//! once when the connection is accepted, never from a message.
//! [`Permissions`] are computed from it once per connection, as tailscale's
//! LocalAPI does, and every operation that acts for an account or hands the
//! agent a process goes through them: an admin (root; LocalSystem or an
//! elevated Administrator on Windows) may act for another account and hand
//! over any process; everyone else only their own.

#[cfg(unix)]
use std::io;

use flex_protocol::ErrorCode;
#[cfg(unix)]
use tokio::net::UnixStream;

use super::Reply;
use crate::account::{self, AccountId};
use crate::core::ConnId;
use crate::process::{ProcessHandle, ProcessId};

/// The credentials of a connected client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub account: AccountId,
    /// Account name, or the uid in decimal when it has no passwd entry
    /// (`DOMAIN\user`, or the SID, on Windows).
    pub name: String,
    /// Root (Unix), LocalSystem or an elevated Administrator (Windows): may
    /// act for other accounts.
    pub admin: bool,
    /// Absent on systems that do not report it.
    pub pid: Option<u32>,
    /// Distinguishes connections in logs and in the daemon.
    pub conn_id: ConnId,
}

#[cfg(unix)]
impl Peer {
    /// Reads the peer credentials of `stream` and resolves the account name.
    pub async fn from_stream(stream: &UnixStream, conn_id: ConnId) -> io::Result<Peer> {
        let cred = stream.peer_cred()?;
        let uid = cred.uid();
        // getpwuid_r may consult NSS (LDAP, sssd): keep it off the runtime threads.
        let name = tokio::task::spawn_blocking(move || account::name_of_uid(uid))
            .await
            .map_err(io::Error::other)?;
        Ok(Peer {
            account: AccountId::from_uid(uid),
            name,
            admin: uid == 0,
            pid: cred.pid().and_then(|p| u32::try_from(p).ok()),
            conn_id,
        })
    }
}

/// The account a request acts for: the caller's own, or (admins only) the one
/// it named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acting {
    pub account: AccountId,
    pub name: String,
}

/// What one connection may do, decided once from its [`Peer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    peer: Peer,
}

impl AsRef<Permissions> for Permissions {
    fn as_ref(&self) -> &Permissions {
        self
    }
}

impl Permissions {
    pub fn new(peer: Peer) -> Permissions {
        Permissions { peer }
    }

    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    pub fn admin(&self) -> bool {
        self.peer.admin
    }

    /// The account a request with `user` acts for. Naming yourself is fine;
    /// naming anyone else is for admins only.
    pub fn acting(&self, user: Option<&str>) -> Result<Acting, Reply> {
        let own = || Acting {
            account: self.peer.account.clone(),
            name: self.peer.name.clone(),
        };
        let Some(name) = user.filter(|u| *u != self.peer.name) else {
            return Ok(own());
        };
        // Another spelling of the caller's own account (`alice` for
        // `CORP\alice`, other letter case on Windows) is still the caller.
        let found = account::lookup(name);
        if found.as_ref() == Some(&self.peer.account) {
            return Ok(own());
        }
        if !self.peer.admin {
            return Err(Reply::error(
                ErrorCode::Forbidden,
                format!(
                    "account '{}' ({}) cannot act for '{name}': only an administrator (root) may name another user",
                    self.peer.name, self.peer.account
                ),
            ));
        }
        match found {
            Some(account) => Ok(Acting {
                account,
                name: name.to_string(),
            }),
            None => Err(Reply::error(
                ErrorCode::UnknownUser,
                format!("there is no local account named '{name}'"),
            )),
        }
    }

    /// The identity of process `pid`, if this peer may hand it to the agent
    /// (which, running as root, may later stop it): an admin any process,
    /// others only their own.
    pub fn process(&self, pid: u32) -> Result<ProcessId, Reply> {
        let forbidden =
            |why: String| Reply::error(ErrorCode::Forbidden, format!("cannot attach: {why}"));
        let handle = ProcessHandle::open(pid).map_err(|e| forbidden(e.to_string()))?;
        if !self.peer.admin && handle.owner() != &self.peer.account {
            return Err(forbidden(format!(
                "process {pid} does not belong to '{}'",
                self.peer.name
            )));
        }
        Ok(handle.id())
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    fn alice() -> Peer {
        Peer {
            account: AccountId::from_uid(1000),
            name: "alice".into(),
            admin: false,
            pid: None,
            conn_id: 1,
        }
    }

    #[tokio::test]
    async fn credentials_of_a_real_socket_pair() {
        let (a, _b) = UnixStream::pair().unwrap();
        let peer = Peer::from_stream(&a, 7).await.unwrap();
        let uid = nix::unistd::getuid().as_raw();
        assert_eq!(peer.account, AccountId::from_uid(uid));
        assert_eq!(peer.admin, uid == 0);
        assert_eq!(peer.pid, Some(std::process::id()));
        assert_eq!(peer.name, account::name_of_uid(uid));
        assert_eq!(peer.conn_id, 7);
    }

    #[test]
    fn only_root_acts_for_others() {
        let alice = Permissions::new(alice());
        assert_eq!(alice.acting(Some("alice")).unwrap().name, "alice");
        assert_eq!(
            alice.acting(None).unwrap().account,
            AccountId::from_uid(1000)
        );
        assert!(alice.acting(Some("root")).is_err());
        let root = Permissions::new(Peer {
            account: AccountId::from_uid(0),
            name: "root".into(),
            admin: true,
            ..self::tests::alice()
        });
        let acting = root.acting(Some("nobody")).unwrap();
        assert_eq!(acting.account, AccountId::from_uid(65534));
        assert!(root.acting(Some("no-such-account-here")).is_err());
    }

    #[test]
    fn only_own_processes_can_be_attached() {
        use std::os::unix::process::CommandExt;
        let mut mine = std::process::Command::new("sleep")
            .arg("30")
            .uid(1000)
            .gid(1000)
            .spawn()
            .expect("tests run as root, so they can start a process as uid 1000");
        let alice = Permissions::new(alice());
        let id = alice.process(mine.id()).unwrap();
        assert_eq!(id.pid, mine.id());
        let err = alice.process(1).unwrap_err();
        assert!(
            err.line().contains("process 1 does not belong to 'alice'"),
            "{}",
            err.line()
        );
        mine.kill().unwrap();
        mine.wait().unwrap();
        let err = alice.process(mine.id()).unwrap_err();
        assert!(
            err.line()
                .contains(&format!("there is no process {}", mine.id())),
            "{}",
            err.line()
        );
        let root = Permissions::new(Peer {
            account: AccountId::from_uid(0),
            admin: true,
            ..self::tests::alice()
        });
        assert_eq!(root.process(1).unwrap().pid, 1);
    }
}
