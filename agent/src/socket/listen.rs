//! Getting a listening socket: from systemd, or by binding the path ourselves.
//!
//! Binding is careful about what is already at the path: if a daemon answers there
//! we refuse to start (two agents would fight over processes and the journal); a
//! leftover socket nobody answers on is removed; anything that is not a socket is
//! left alone and reported. The mode is set between `bind` and `listen`, so there is
//! no moment when clients can connect to a socket with the wrong mode.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixListener as StdUnixListener;
use std::path::{Path, PathBuf};

use nix::sys::socket::{self, AddressFamily, Backlog, SockFlag, SockType, UnixAddr};
use tokio::net::{UnixListener, UnixStream};

use super::{Peer, SocketConfig, SocketError};
use crate::core::ConnId;

/// Where the listener came from, for logs and status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenOrigin {
    /// Handed over by systemd socket activation (`LISTEN_FDS`).
    Systemd,
    /// Bound by the agent at the configured path.
    Bound,
}

/// The agent's listening Unix socket.
pub struct Listener {
    inner: UnixListener,
    origin: ListenOrigin,
    path: PathBuf,
}

impl Listener {
    /// Takes the socket from systemd when socket-activated, else binds
    /// `config.path` with `config.mode`. Must be called inside a tokio runtime.
    pub fn bind(config: &SocketConfig) -> Result<Listener, SocketError> {
        let (std, origin) = match systemd_listener() {
            Some(l) => (l, ListenOrigin::Systemd),
            None => (bind_path(&config.path, config.mode)?, ListenOrigin::Bound),
        };
        let inner = UnixListener::from_std(std)
            .map_err(|e| io_err("register listener", &config.path, e))?;
        Ok(Listener {
            inner,
            origin,
            path: config.path.clone(),
        })
    }

    /// A listener the caller bound at `path`.
    pub fn bound(inner: UnixListener, path: &Path) -> Listener {
        Listener {
            inner,
            origin: ListenOrigin::Bound,
            path: path.to_path_buf(),
        }
    }

    pub fn origin(&self) -> ListenOrigin {
        self.origin
    }

    pub async fn accept(&mut self) -> io::Result<UnixStream> {
        self.inner.accept().await.map(|(stream, _)| stream)
    }

    /// Who is on the other end: the socket's peer credentials.
    pub async fn identify(stream: UnixStream, conn_id: ConnId) -> io::Result<(Peer, UnixStream)> {
        let peer = Peer::from_stream(&stream, conn_id).await?;
        Ok((peer, stream))
    }

    /// Stops listening; removes the path if the agent bound it.
    pub fn close(self) {
        if self.origin == ListenOrigin::Bound {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The first socket passed by systemd, if this process was socket-activated.
///
/// Follows sd_listen_fds(3): `LISTEN_PID` must name us and fd 3 is the first socket.
/// The variables are removed so children do not inherit them.
pub fn systemd_listener() -> Option<StdUnixListener> {
    let pid = std::env::var("LISTEN_PID").ok()?;
    let fds = std::env::var("LISTEN_FDS").ok()?;
    if pid.parse::<u32>().ok()? != std::process::id() || fds.parse::<u32>().ok()? < 1 {
        return None;
    }
    std::env::remove_var("LISTEN_PID");
    std::env::remove_var("LISTEN_FDS");
    std::env::remove_var("LISTEN_FDNAMES");
    const SD_LISTEN_FDS_START: i32 = 3;
    // Only a stream socket is usable; anything else at fd 3 is a unit file mistake.
    let fd = SD_LISTEN_FDS_START;
    match socket::getsockopt(
        &unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
        socket::sockopt::SockType,
    ) {
        Ok(SockType::Stream) => {}
        _ => return None,
    }
    // SAFETY: systemd passed fd 3 to us and nothing else in this process owns it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let listener = StdUnixListener::from(owned);
    listener.set_nonblocking(true).ok()?;
    Some(listener)
}

/// Binds `path` with `mode`, after checking what is there already.
pub fn bind_path(path: &Path, mode: u32) -> Result<StdUnixListener, SocketError> {
    prepare_parent(path)?;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(SocketError::AlreadyRunning {
                    path: path.to_owned(),
                });
            }
            std::fs::remove_file(path).map_err(|e| io_err("remove stale socket", path, e))?;
        }
        Ok(_) => {
            return Err(SocketError::NotASocket {
                path: path.to_owned(),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("inspect", path, e)),
    }

    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(|e| io_err("create socket for", path, e.into()))?;
    let addr = UnixAddr::new(path).map_err(|e| io_err("use socket path", path, e.into()))?;
    use std::os::fd::AsRawFd;
    socket::bind(fd.as_raw_fd(), &addr).map_err(|e| io_err("bind", path, e.into()))?;
    // The directory is ours alone (checked above), so nobody can have replaced
    // the fresh socket with a symlink; check anyway before chmod follows it.
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {}
        _ => {
            return Err(SocketError::NotASocket {
                path: path.to_owned(),
            })
        }
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| io_err("set mode of", path, e))?;
    let backlog = Backlog::new(128).expect("128 is a valid backlog");
    socket::listen(&fd, backlog).map_err(|e| io_err("listen on", path, e.into()))?;
    Ok(StdUnixListener::from(fd))
}

/// Creates the socket's directory 0755 if missing, so every user can reach the
/// socket; an existing one must be owned by the agent's user and writable by
/// nobody else. Otherwise another account could swap the socket path for a
/// symlink between bind and chmod and have the agent chmod a file of its
/// choice, or put its own socket there after an agent restart.
fn prepare_parent(path: &Path) -> Result<(), SocketError> {
    use std::os::unix::fs::MetadataExt;
    let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(());
    };
    match std::fs::symlink_metadata(dir) {
        Ok(meta) => {
            let me = nix::unistd::geteuid().as_raw();
            let problem = if !meta.is_dir() {
                Some("not a directory (a symlink?)".to_string())
            } else if meta.uid() != me {
                Some(format!("owned by uid {}, not uid {me}", meta.uid()))
            } else if meta.mode() & 0o022 != 0 {
                Some(format!(
                    "writable by others (mode {:o})",
                    meta.mode() & 0o7777
                ))
            } else {
                None
            };
            return match problem {
                Some(problem) => Err(SocketError::UnsafeDirectory {
                    path: dir.to_path_buf(),
                    problem,
                }),
                None => Ok(()),
            };
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("inspect socket directory", dir, e)),
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(|e| io_err("create socket directory", dir, e))?;
    // The umask may have narrowed the mode given to mkdir.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| io_err("set mode of socket directory", dir, e))
}

fn io_err(action: &'static str, path: &Path, source: io::Error) -> SocketError {
    SocketError::Io {
        action,
        path: PathBuf::from(path),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_with_mode_and_creates_parent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/flex/agent.sock");
        let _l = bind_path(&path, 0o666).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o666);
        let parent = std::fs::metadata(path.parent().unwrap()).unwrap();
        assert_eq!(parent.permissions().mode() & 0o777, 0o755);
    }

    #[test]
    fn refuses_a_directory_others_can_write() {
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
        match bind_path(&open.join("agent.sock"), 0o666) {
            Err(SocketError::UnsafeDirectory { problem, .. }) => {
                assert!(problem.contains("writable by others"), "{problem}")
            }
            other => panic!("expected UnsafeDirectory, got {other:?}"),
        }
        // A symlinked directory is refused too.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(dir.path(), &link).unwrap();
        assert!(matches!(
            bind_path(&link.join("agent.sock"), 0o666),
            Err(SocketError::UnsafeDirectory { .. })
        ));
        // Owned by another account.
        let theirs = dir.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        nix::unistd::chown(&theirs, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
        assert!(matches!(
            bind_path(&theirs.join("agent.sock"), 0o666),
            Err(SocketError::UnsafeDirectory { .. })
        ));
    }

    #[test]
    fn refuses_when_a_daemon_answers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let _live = bind_path(&path, 0o666).unwrap();
        match bind_path(&path, 0o666) {
            Err(SocketError::AlreadyRunning { path: p }) => assert_eq!(p, path),
            other => panic!("expected AlreadyRunning, got {other:?}"),
        }
    }

    #[test]
    fn replaces_stale_socket_but_not_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        drop(bind_path(&path, 0o666).unwrap());
        assert!(path.exists(), "a closed listener leaves its path behind");
        let _again = bind_path(&path, 0o600).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );

        let file = dir.path().join("not-a-socket");
        std::fs::write(&file, b"keep me").unwrap();
        assert!(matches!(
            bind_path(&file, 0o666),
            Err(SocketError::NotASocket { .. })
        ));
        assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    }
}
