//! Who is on the other end of the named pipe (Windows).
//!
//! Identity comes from the kernel: the server impersonates the pipe client for
//! a moment, reads the user SID of its thread token and whether that token is
//! LocalSystem or an elevated administrator, and reverts. Windows takes the
//! client's security context from the last message read from the pipe, so
//! the first bytes the client sends are read before (and handed on with the
//! stream, see [`super::pipe_windows`]). The SID is the [`AccountId`]; the
//! name shown to people (`DOMAIN\user`) is looked up from it. Nothing in a
//! message counts.

use std::io;
use std::os::windows::io::{AsRawHandle, RawHandle};

use tokio::net::windows::named_pipe::NamedPipeServer;
use windows_sys::Win32::Security::{RevertToSelf, TOKEN_QUERY};
use windows_sys::Win32::System::Pipes::{GetNamedPipeClientProcessId, ImpersonateNamedPipeClient};
use windows_sys::Win32::System::Threading::{GetCurrentThread, OpenThreadToken};

use super::Peer;
use crate::account::{self, AccountId};
use crate::core::ConnId;
use crate::win32::{check, token_is_admin, token_user, Handle};

impl Peer {
    /// The identity of the client on `pipe`, which must have read at least
    /// one byte of the client's (the impersonation uses the context of the
    /// last message read).
    pub async fn from_pipe(pipe: &NamedPipeServer, conn_id: ConnId) -> io::Result<Peer> {
        let raw = pipe.as_raw_handle();
        let mut pid = 0;
        // SAFETY: a connected pipe handle and an out u32.
        let pid = (unsafe { GetNamedPipeClientProcessId(raw, &mut pid) } != 0).then_some(pid);
        let (sid, admin) = client_token(raw)?;
        let account = AccountId::new(sid.0);
        // LookupAccountSid may ask a domain controller: off the runtime threads.
        let name = {
            let account = account.clone();
            tokio::task::spawn_blocking(move || account::name_of(&account))
                .await
                .map_err(io::Error::other)?
        };
        Ok(Peer {
            account,
            name,
            admin,
            pid,
            conn_id,
        })
    }
}

/// The user SID of the pipe client's token and whether it is an administrator,
/// read while impersonating it on this thread (no await in between).
fn client_token(pipe: RawHandle) -> io::Result<(crate::win32::Sid, bool)> {
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
