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

    /// Whether this peer may hand process `pid` to the agent (which, running as
    /// root, may later stop it): root may, others only for their own processes.
    /// `Err` names why not.
    pub fn may_attach(&self, pid: u32) -> Result<(), String> {
        if self.is_root() {
            return Ok(());
        }
        match process_uid(pid) {
            Some(uid) if uid == self.uid => Ok(()),
            Some(_) => Err(format!(
                "process {pid} does not belong to '{}'",
                self.account
            )),
            None => Err(format!("there is no process {pid}")),
        }
    }

    /// The account a request acts for: the requested one (already checked with
    /// [`Peer::may_act_as`] by the server) or the peer's own.
    pub fn acting_user<'a>(&'a self, requested: Option<&'a str>) -> &'a str {
        requested.unwrap_or(&self.account)
    }
}

/// Real uid of process `pid`; `None` if it is gone.
#[cfg(target_os = "linux")]
pub fn process_uid(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Owner of process `pid` (effective uid, from sysinfo); `None` if it is gone.
#[cfg(all(unix, not(target_os = "linux")))]
pub fn process_uid(pid: u32) -> Option<u32> {
    use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System, UpdateKind};
    let mut sys = System::new();
    let pid = Pid::from_u32(pid);
    sys.refresh_processes_specifics(
        ProcessesToUpdate::Some(&[pid]),
        true,
        ProcessRefreshKind::nothing().with_user(UpdateKind::Always),
    );
    sys.process(pid)?.user_id().map(|u| **u)
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

    #[test]
    fn only_own_processes_can_be_attached() {
        use std::os::unix::process::CommandExt;
        let mut mine = std::process::Command::new("sleep")
            .arg("30")
            .uid(1000)
            .gid(1000)
            .spawn()
            .expect("tests run as root, so they can start a process as uid 1000");
        let alice = Peer {
            uid: 1000,
            gid: 1000,
            pid: None,
            account: "alice".into(),
            conn_id: 1,
        };
        assert_eq!(alice.may_attach(mine.id()), Ok(()));
        assert_eq!(
            alice.may_attach(1),
            Err("process 1 does not belong to 'alice'".into())
        );
        mine.kill().unwrap();
        mine.wait().unwrap();
        assert_eq!(
            alice.may_attach(mine.id()),
            Err(format!("there is no process {}", mine.id()))
        );
        let root = Peer { uid: 0, ..alice };
        assert_eq!(root.may_attach(1), Ok(()));
    }
}
