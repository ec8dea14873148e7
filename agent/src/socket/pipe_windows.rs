//! The local API's listener on Windows: the named pipe `\\.\pipe\flex-agent`.
//!
//! Every instance is created with the same security descriptor
//! ([`PIPE_SDDL`]): local authenticated users may connect, only SYSTEM and
//! administrators may create instances, network logons are refused, and
//! remote clients are rejected by the pipe itself. The first instance is
//! created with `FILE_FLAG_FIRST_PIPE_INSTANCE`, so a second agent (or anyone
//! squatting on the name) makes this one refuse to start rather than share
//! the name. One instance always waits for the next client.

use std::ffi::c_void;
use std::io;
use std::path::{Path, PathBuf};

use tokio::net::windows::named_pipe::{NamedPipeServer, PipeMode, ServerOptions};

use super::SocketError;
use crate::win32::acl::{SecurityDescriptor, PIPE_SDDL};

/// ERROR_ACCESS_DENIED: what creating a first instance returns when the name
/// is taken.
const ERROR_ACCESS_DENIED: i32 = 5;

/// A named pipe accepting clients.
pub struct PipeListener {
    name: PathBuf,
    next: NamedPipeServer,
    security: SecurityDescriptor,
}

impl PipeListener {
    /// Creates the first instance of pipe `name`. Must be called inside a
    /// tokio runtime.
    pub fn bind(name: &Path) -> Result<PipeListener, SocketError> {
        let security =
            SecurityDescriptor::from_sddl(PIPE_SDDL).map_err(|source| SocketError::Io {
                action: "build the security descriptor of",
                path: name.to_path_buf(),
                source,
            })?;
        // A server that answers already owns the name. Windows also refuses a
        // second first instance; the probe makes the refusal explicit.
        if tokio::net::windows::named_pipe::ClientOptions::new()
            .open(name)
            .is_ok()
        {
            return Err(SocketError::AlreadyRunning {
                path: name.to_path_buf(),
            });
        }
        let next = create(name, &security, true).map_err(|source| {
            if source.raw_os_error() == Some(ERROR_ACCESS_DENIED) {
                SocketError::AlreadyRunning {
                    path: name.to_path_buf(),
                }
            } else {
                SocketError::Io {
                    action: "create named pipe",
                    path: name.to_path_buf(),
                    source,
                }
            }
        })?;
        Ok(PipeListener {
            name: name.to_path_buf(),
            next,
            security,
        })
    }

    /// Waits for a client and returns its connected instance, with a fresh
    /// instance already waiting for the next one.
    pub async fn accept(&mut self) -> io::Result<NamedPipeServer> {
        self.next.connect().await?;
        let fresh = create(&self.name, &self.security, false)?;
        Ok(std::mem::replace(&mut self.next, fresh))
    }

    pub fn name(&self) -> &Path {
        &self.name
    }
}

fn create(name: &Path, security: &SecurityDescriptor, first: bool) -> io::Result<NamedPipeServer> {
    let mut attrs = security.attributes();
    let mut options = ServerOptions::new();
    options
        .first_pipe_instance(first)
        .reject_remote_clients(true)
        .pipe_mode(PipeMode::Byte)
        .max_instances(254);
    // SAFETY: `attrs` is a valid SECURITY_ATTRIBUTES whose descriptor outlives
    // the call (it is owned by the listener).
    unsafe {
        options.create_with_security_attributes_raw(name, &mut attrs as *mut _ as *mut c_void)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::windows::named_pipe::ClientOptions;

    fn unique_name() -> PathBuf {
        PathBuf::from(format!(
            r"\\.\pipe\flex-agent-test-{}",
            uuid::Uuid::new_v4().simple()
        ))
    }

    #[tokio::test]
    async fn serves_clients_and_refuses_a_second_server() {
        let name = unique_name();
        let mut listener = PipeListener::bind(&name).unwrap();
        for round in 0..2u8 {
            let client = tokio::spawn({
                let name = name.clone();
                async move {
                    let mut c = ClientOptions::new().open(&name).unwrap();
                    c.write_all(&[b'a' + round, b'\n']).await.unwrap();
                    let mut back = [0u8; 2];
                    c.read_exact(&mut back).await.unwrap();
                    back
                }
            });
            let mut server = listener.accept().await.unwrap();
            let peer = crate::socket::Peer::from_pipe(&server, 1).await.unwrap();
            assert!(!peer.account.is_empty());
            assert!(peer.pid.is_some());
            let mut got = [0u8; 2];
            server.read_exact(&mut got).await.unwrap();
            server.write_all(&got).await.unwrap();
            assert_eq!(client.await.unwrap(), [b'a' + round, b'\n']);
        }
        // A second agent finds the name taken and refuses to start.
        assert!(matches!(
            PipeListener::bind(&name),
            Err(SocketError::AlreadyRunning { .. })
        ));
    }
}
