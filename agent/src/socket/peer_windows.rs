//! Who is on the other end of the named pipe (Windows).
//!
//! Identity comes from the kernel: the server impersonates the pipe client for
//! a moment, reads the user SID of its thread token and whether that token is
//! LocalSystem or an elevated administrator, and reverts. The account name
//! (`DOMAIN\user`) is looked up from the SID. Nothing in a message counts.
//!
//! The daemon still keys accounts by a `u32` uid, as on Unix. Until accounts
//! are keyed by an opaque string everywhere, each SID gets a number of its own
//! for the life of the process ([`account_uid`]): LocalSystem is 0, others
//! count up from 1000. The number never leaves the agent.

use std::collections::HashMap;
use std::io;
use std::sync::Mutex;

use tokio::net::windows::named_pipe::NamedPipeServer;
use windows_sys::Win32::Security::{RevertToSelf, TOKEN_QUERY};
use windows_sys::Win32::System::Pipes::{GetNamedPipeClientProcessId, ImpersonateNamedPipeClient};
use windows_sys::Win32::System::Threading::{GetCurrentThread, OpenThreadToken};

use crate::win32::{check, token_is_admin, token_user, Handle, Sid, SYSTEM_SID};

/// The credentials of a connected client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The agent-local number of the client's SID (see the module doc).
    pub uid: u32,
    /// Unused on Windows (0).
    pub gid: u32,
    pub pid: Option<u32>,
    /// `DOMAIN\user`, or the SID when it does not resolve.
    pub account: String,
    pub conn_id: u64,
    /// LocalSystem or an elevated administrator: may act for other accounts.
    pub admin: bool,
}

impl Peer {
    /// Reads the identity of the client on `pipe`. Impersonation needs data
    /// from the client, so this waits until its first request is readable.
    pub async fn from_pipe(pipe: &NamedPipeServer, conn_id: u64) -> io::Result<Peer> {
        pipe.readable().await?;
        let raw = std::os::windows::io::AsRawHandle::as_raw_handle(pipe);
        let mut pid = 0;
        // SAFETY: a connected pipe handle and an out u32.
        let pid = (unsafe { GetNamedPipeClientProcessId(raw, &mut pid) } != 0).then_some(pid);
        let (sid, admin) = client_token(raw)?;
        // LookupAccountSid may ask a domain controller: off the runtime threads.
        let (uid, account) = tokio::task::spawn_blocking(move || {
            let account = sid.account_name();
            (account_uid(&sid), account)
        })
        .await
        .map_err(io::Error::other)?;
        Ok(Peer {
            uid,
            gid: 0,
            pid,
            account,
            conn_id,
            admin,
        })
    }

    pub fn is_root(&self) -> bool {
        self.admin
    }

    /// Whether this peer may act for account `user` (`DOMAIN\user`, or the
    /// bare name of its own account).
    pub fn may_act_as(&self, user: &str) -> bool {
        let own_name = self
            .account
            .rsplit_once('\\')
            .is_some_and(|(_, name)| name.eq_ignore_ascii_case(user));
        self.is_root() || user.eq_ignore_ascii_case(&self.account) || own_name
    }

    /// Whether this peer may hand process `pid` to the agent: administrators
    /// may, others only for processes running as themselves.
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

    pub fn acting_user<'a>(&'a self, requested: Option<&'a str>) -> &'a str {
        requested.unwrap_or(&self.account)
    }
}

/// The user SID of the pipe client's token and whether it is an administrator,
/// read while impersonating it on this thread (no await in between).
fn client_token(pipe: std::os::windows::io::RawHandle) -> io::Result<(Sid, bool)> {
    // SAFETY: a connected server end of a pipe.
    check(unsafe { ImpersonateNamedPipeClient(pipe) })?;
    let mut token = std::ptr::null_mut();
    // SAFETY: the current thread's pseudo handle; `token` receives a new handle.
    // OpenAsSelf: the access check uses the agent's identity, not the client's.
    let opened = check(unsafe { OpenThreadToken(GetCurrentThread(), TOKEN_QUERY, 1, &mut token) });
    // SAFETY: always paired with the impersonation above.
    let reverted = check(unsafe { RevertToSelf() });
    if let Err(e) = reverted {
        // Running on as the client would be a privilege bug: stop instead.
        panic!("cannot stop impersonating a pipe client: {e}");
    }
    opened?;
    let token = Handle::check(token)?;
    let sid = token_user(&token)?;
    let admin = token_is_admin(&token, &sid);
    Ok((sid, admin))
}

struct Accounts {
    by_sid: HashMap<Sid, u32>,
    by_uid: HashMap<u32, Sid>,
    next: u32,
}

static ACCOUNTS: Mutex<Option<Accounts>> = Mutex::new(None);

/// The agent-local number of `sid`: 0 for LocalSystem, else stable for the
/// life of the process.
pub fn account_uid(sid: &Sid) -> u32 {
    let mut guard = ACCOUNTS.lock().unwrap_or_else(|e| e.into_inner());
    let table = guard.get_or_insert_with(|| Accounts {
        by_sid: HashMap::new(),
        by_uid: HashMap::new(),
        next: 1000,
    });
    if let Some(&uid) = table.by_sid.get(sid) {
        return uid;
    }
    let uid = if sid.0 == SYSTEM_SID {
        0
    } else {
        table.next += 1;
        table.next - 1
    };
    table.by_sid.insert(sid.clone(), uid);
    table.by_uid.insert(uid, sid.clone());
    uid
}

/// The SID behind an agent-local number.
pub fn sid_of(uid: u32) -> Option<Sid> {
    if uid == 0 {
        return Some(Sid(SYSTEM_SID.into()));
    }
    let guard = ACCOUNTS.lock().unwrap_or_else(|e| e.into_inner());
    guard.as_ref()?.by_uid.get(&uid).cloned()
}

/// `DOMAIN\user` of an agent-local number (the number itself if unknown).
pub fn account_name(uid: u32) -> String {
    match sid_of(uid) {
        Some(sid) => sid.account_name(),
        None => uid.to_string(),
    }
}

/// The agent-local number of account `name`, if Windows knows the account.
pub fn account_uid_by_name(name: &str) -> Option<u32> {
    Sid::lookup(name).map(|sid| account_uid(&sid))
}

/// The agent-local number of the account process `pid` runs as.
pub fn process_uid(pid: u32) -> Option<u32> {
    crate::process::owner(pid).map(|sid| account_uid(&sid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_administrators_act_for_others() {
        let alice = Peer {
            // A number no real SID is given in a test run.
            uid: u32::MAX - 1,
            gid: 0,
            pid: None,
            account: r"CORP\alice".into(),
            conn_id: 1,
            admin: false,
        };
        assert!(alice.may_act_as(r"corp\ALICE"));
        assert!(alice.may_act_as("alice"));
        assert!(!alice.may_act_as(r"CORP\bob"));
        assert!(!alice.may_act_as("bob"));
        assert_eq!(
            alice.may_attach(std::process::id()),
            Err(format!(
                "process {} does not belong to 'CORP\\alice'",
                std::process::id()
            ))
        );
        let admin = Peer {
            admin: true,
            ..alice
        };
        assert!(admin.may_act_as(r"CORP\bob"));
        assert_eq!(admin.may_attach(std::process::id()), Ok(()));
    }

    #[test]
    fn numbers_are_stable_and_system_is_zero() {
        let system = Sid(SYSTEM_SID.into());
        assert_eq!(account_uid(&system), 0);
        let a = Sid("S-1-5-21-1-2-3-1001".into());
        let b = Sid("S-1-5-21-1-2-3-1002".into());
        let (ua, ub) = (account_uid(&a), account_uid(&b));
        assert!(ua >= 1000 && ub >= 1000 && ua != ub);
        assert_eq!(account_uid(&a), ua);
        assert_eq!(sid_of(ua), Some(a));
        assert_eq!(account_name(ua), "S-1-5-21-1-2-3-1001");
        let me = process_uid(std::process::id()).expect("own process");
        assert_eq!(account_uid_by_name(&account_name(me)), Some(me));
    }
}
