//! The local API's listener on Windows: the named pipe `\\.\pipe\flex-agent`.
//!
//! Every instance is created with the same security descriptor
//! ([`PIPE_SDDL`]): local authenticated users may connect, only SYSTEM and
//! administrators may create instances, network logons are refused, and
//! remote clients are rejected by the pipe itself. The first instance is
//! created with `FILE_FLAG_FIRST_PIPE_INSTANCE`, so a second agent (or anyone
//! squatting on the name) makes this one refuse to start rather than share
//! the name. One instance always waits for the next client.
//!
//! The caller's identity is its token as of the last message the agent read
//! ([`Peer::from_pipe`]), so [`Listener::identify`] first reads what the
//! client sent (its `hello`), then hands those bytes on in front of the stream:
//! the connection is then served exactly like a Unix socket's, with the same
//! [`Admission`](super::Admission) limits and [`Permissions`](super::Permissions).

use std::ffi::c_void;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::windows::named_pipe::{NamedPipeServer, PipeMode, ServerOptions};

use super::{Peer, SocketConfig, SocketError};
use crate::core::ConnId;
use crate::win32::acl::{SecurityDescriptor, PIPE_SDDL};

/// ERROR_ACCESS_DENIED: what creating a first instance returns when the name
/// is taken.
const ERROR_ACCESS_DENIED: i32 = 5;

/// A client must send its first bytes this soon after connecting (flexctl
/// sends `hello` at once): until then it holds a pipe instance without
/// counting against any account's connections.
pub const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The most read before the identity is taken; the rest waits in the pipe.
const HEAD: usize = 4096;

/// Where the listener came from (a pipe is always created by the agent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenOrigin {
    Bound,
}

/// A named pipe accepting clients.
pub struct Listener {
    name: PathBuf,
    next: NamedPipeServer,
    security: SecurityDescriptor,
}

impl Listener {
    /// Creates the first instance of pipe `config.path`. Must be called inside
    /// a tokio runtime.
    pub fn bind(config: &SocketConfig) -> Result<Listener, SocketError> {
        let name = &config.path;
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
        Ok(Listener {
            name: name.to_path_buf(),
            next,
            security,
        })
    }

    pub fn origin(&self) -> ListenOrigin {
        ListenOrigin::Bound
    }

    pub fn name(&self) -> &Path {
        &self.name
    }

    /// Waits for a client and returns its connected instance, with a fresh
    /// instance already waiting for the next one.
    pub async fn accept(&mut self) -> io::Result<NamedPipeServer> {
        self.next.connect().await?;
        let fresh = create(&self.name, &self.security, false)?;
        Ok(std::mem::replace(&mut self.next, fresh))
    }

    /// Who is on the other end: reads the client's first bytes (within
    /// [`FIRST_REQUEST_TIMEOUT`]), takes its identity from its token, and
    /// returns the stream with those bytes in front.
    pub async fn identify(
        pipe: NamedPipeServer,
        conn_id: ConnId,
    ) -> io::Result<(Peer, impl AsyncRead + AsyncWrite + Send + Unpin)> {
        let head = tokio::time::timeout(FIRST_REQUEST_TIMEOUT, first_bytes(&pipe))
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the pipe client sent nothing after connecting",
                )
            })??;
        let peer = Peer::from_pipe(&pipe, conn_id).await?;
        let (read, write) = tokio::io::split(pipe);
        Ok((
            peer,
            tokio::io::join(io::Cursor::new(head).chain(read), write),
        ))
    }

    /// Stops listening (the waiting instance is closed with the listener).
    pub fn close(self) {}
}

async fn first_bytes(pipe: &NamedPipeServer) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; HEAD];
    loop {
        pipe.readable().await?;
        match pipe.try_read(&mut buf) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the pipe client left before sending anything",
                ))
            }
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
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
    use crate::account::{self, AccountId};
    use crate::socket::fake::{start_fake_agent, FakeHandler};
    use crate::socket::Permissions;
    use flex_protocol::socket::{HelloReply, Request};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::windows::named_pipe::ClientOptions;

    fn unique_name() -> PathBuf {
        PathBuf::from(format!(
            r"\\.\pipe\flex-agent-test-{}",
            uuid::Uuid::new_v4().simple()
        ))
    }

    fn my_account() -> AccountId {
        crate::process::owner(std::process::id()).expect("own process owner")
    }

    #[tokio::test]
    async fn identifies_clients_and_refuses_a_second_server() {
        let name = unique_name();
        let mut listener = Listener::bind(&SocketConfig::new(&name)).unwrap();
        for round in 0..2u8 {
            let client = tokio::spawn({
                let name = name.clone();
                async move {
                    let mut c = ClientOptions::new().open(&name).unwrap();
                    c.write_all(&[b'a' + round, b'b', b'\n']).await.unwrap();
                    let mut back = [0u8; 3];
                    c.read_exact(&mut back).await.unwrap();
                    back
                }
            });
            let server = listener.accept().await.unwrap();
            let (peer, mut stream) = Listener::identify(server, 7).await.unwrap();
            assert_eq!(peer.account, my_account());
            assert_eq!(peer.name, account::name_of(&peer.account));
            assert_eq!(peer.conn_id, 7);
            assert!(peer.pid.is_some());
            // The bytes read to take the identity are still there to serve.
            let mut got = [0u8; 3];
            stream.read_exact(&mut got).await.unwrap();
            assert_eq!(got, [b'a' + round, b'b', b'\n']);
            stream.write_all(&got).await.unwrap();
            assert_eq!(client.await.unwrap(), got);
        }
        // A second agent finds the name taken and refuses to start.
        assert!(matches!(
            Listener::bind(&SocketConfig::new(&name)),
            Err(SocketError::AlreadyRunning { .. })
        ));
    }

    #[tokio::test]
    async fn a_silent_client_is_not_identified() {
        let name = unique_name();
        let mut listener = Listener::bind(&SocketConfig::new(&name)).unwrap();
        let client = ClientOptions::new().open(&name).unwrap();
        let server = listener.accept().await.unwrap();
        drop(client);
        let err = Listener::identify(server, 1)
            .await
            .err()
            .expect("no identity");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
    }

    /// The served pipe answers like the Unix socket: `hello` names the
    /// caller's account from its token, and the fake handler is given the
    /// same peer and permissions.
    #[tokio::test]
    async fn the_pipe_is_served_with_the_callers_identity() {
        let (handler, mut seen) = FakeHandler::new();
        let dir = tempfile::tempdir().unwrap();
        let agent = start_fake_agent(dir.path(), handler);
        let pipe = ClientOptions::new().open(&agent.path).unwrap();
        let (read, mut write) = tokio::io::split(pipe);
        let mut lines = BufReader::new(read).lines();
        let line = |req: Request| serde_json::to_string(&req).unwrap() + "\n";
        let hello = line(Request::Hello {
            protocol: flex_protocol::PROTOCOL_VERSION,
            client: Some("test".into()),
        });
        write.write_all(hello.as_bytes()).await.unwrap();
        let reply = lines.next_line().await.unwrap().unwrap();
        let hello: HelloReply = flex_protocol::socket::parse_reply(&reply).unwrap().unwrap();
        assert_eq!(hello.account, account::name_of(&my_account()));
        // Not a uid: Windows accounts have none.
        assert_eq!(hello.uid, u32::MAX);
        write
            .write_all(line(Request::Status).as_bytes())
            .await
            .unwrap();
        let _status = lines.next_line().await.unwrap().unwrap();
        let (peer, req) = seen.recv().await.unwrap();
        assert_eq!(req, Request::Status);
        assert_eq!(peer.account, my_account());
        let perms = Permissions::new(peer);
        // Naming yourself another way is still yourself.
        let short = hello.account.rsplit('\\').next().unwrap().to_lowercase();
        assert_eq!(perms.acting(Some(&short)).unwrap().account, my_account());
        drop(write);
        agent.stop().await;
    }
}
