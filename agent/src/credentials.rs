//! The device credential store: where the secret device token from enrollment lives.
//!
//! Two backends. The OS credential store through the `keyring` ecosystem
//! (keyring-core with the Secret Service on Linux, the Keychain on macOS, the
//! Credential Manager on Windows) when one is reachable; otherwise a file named
//! `device-token`, mode 0600, in the state directory, which is forced to 0700. The
//! file is the normal case for a headless Linux system service: root has no session
//! bus, and the kernel keyring would lose the token at reboot, so it is not used.
//!
//! [`StoreChoice`] selects: `keyring` insists on the OS store, `file` on the file,
//! and `auto` (the default) tries the OS store only where one can exist (a D-Bus
//! session bus address is set on Linux; always on macOS and Windows) and falls back
//! to the file with a logged reason.
//!
//! The keyring calls block (the Secret Service is a D-Bus round trip, possibly a
//! prompt), so async code must use the `*_async` wrappers, which move the work to
//! tokio's blocking pool. The token itself is a [`DeviceToken`], whose `Debug`
//! redacts it and which has no `Display`, so it cannot end up in a log by accident.

use std::ffi::OsString;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// File name of the token in the state directory (file backend).
pub const TOKEN_FILE: &str = "device-token";

/// The `service` of the keyring entry; the `user` is derived from the state dir.
pub const KEYRING_SERVICE: &str = "flex-agent";

/// The secret that authenticates this workstation to the server.
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceToken(String);

impl DeviceToken {
    pub fn new(token: impl Into<String>) -> Self {
        DeviceToken(token.into())
    }

    /// The secret itself, for the `Authorization` header and the store only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for DeviceToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DeviceToken(<redacted>)")
    }
}

/// The `credential_store` config option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreChoice {
    /// The OS store where one can be reached, else the file.
    Auto,
    /// The OS store or an error.
    Keyring,
    /// Always the file in the state directory.
    File,
}

/// The agent runs as a system service. On Linux that service has no session bus
/// and so no Secret Service: a keyring reached while enrolling from a desktop
/// session (`sudo -E`) would hold a token the service cannot read. The file is
/// the default there; elsewhere the OS store (with the file as its fallback).
impl Default for StoreChoice {
    fn default() -> Self {
        if cfg!(all(unix, not(target_os = "macos"))) {
            StoreChoice::File
        } else {
            StoreChoice::Auto
        }
    }
}

impl std::str::FromStr for StoreChoice {
    type Err = CredentialError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(StoreChoice::Auto),
            "keyring" => Ok(StoreChoice::Keyring),
            "file" => Ok(StoreChoice::File),
            other => Err(CredentialError::BadChoice(other.to_string())),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error(
        "no device token in {store}: enroll this workstation first \
         (flex-agent enroll --config FILE --server URL --token ENROLL_TOKEN)"
    )]
    Missing { store: String },
    #[error("device token file {path} is empty: enroll this workstation again")]
    Empty { path: PathBuf },
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the OS credential store ({store}) is not reachable: {reason}")]
    Unavailable { store: &'static str, reason: String },
    #[error("cannot {action} the device token in {store}: {reason}")]
    Keyring {
        action: &'static str,
        store: String,
        reason: String,
    },
    #[error(
        "state directory {path} is shared with others (mode {mode:o}): set state_dir \
         to a directory of its own, such as /var/lib/flex-agent"
    )]
    SharedDir { path: PathBuf, mode: u32 },
    #[error("credential_store '{0}' is not one of auto, keyring, file")]
    BadChoice(String),
    #[error("the credential store task for '{action}' failed: {reason}")]
    Task {
        action: &'static str,
        reason: String,
    },
}

/// How the token file is protected beyond the directory's permissions.
#[cfg(windows)]
const FILE_SEAL: &str = " (DPAPI)";
#[cfg(not(windows))]
const FILE_SEAL: &str = "";

/// Name of the platform's OS store, as shown by `flexctl status`.
#[cfg(target_os = "macos")]
const OS_STORE: &str = "macOS Keychain";
#[cfg(windows)]
const OS_STORE: &str = "Windows Credential Manager";
#[cfg(all(unix, not(target_os = "macos")))]
const OS_STORE: &str = "Secret Service";

#[derive(Clone)]
enum Backend {
    Keyring {
        store: Arc<keyring_core::CredentialStore>,
        user: String,
        /// The file that `auto` would have used; read when the keyring has no
        /// entry, so an agent enrolled without a session bus still finds its token.
        fallback: Option<PathBuf>,
    },
    File {
        dir: PathBuf,
    },
}

/// Where this agent keeps its device token. Cheap to clone.
#[derive(Clone)]
pub struct CredentialStore {
    backend: Backend,
}

impl fmt::Debug for CredentialStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The backend holds no secret, but the platform store's own Debug is not
        // ours to vouch for: show only what `describe` shows.
        f.debug_struct("CredentialStore")
            .field("store", &self.describe())
            .finish()
    }
}

impl CredentialStore {
    /// The file backend in `state_dir`. Does no I/O until used.
    pub fn file(state_dir: &Path) -> Self {
        CredentialStore {
            backend: Backend::File {
                dir: state_dir.to_path_buf(),
            },
        }
    }

    /// The OS store, connecting to it now (blocking). The entry is keyed by the
    /// state directory so that two agents on one machine (tests) do not collide.
    pub fn keyring(state_dir: &Path) -> Result<Self, CredentialError> {
        let store = connect_os_store()?;
        Ok(CredentialStore {
            backend: Backend::Keyring {
                store,
                user: keyring_user(state_dir),
                fallback: None,
            },
        })
    }

    /// Applies `choice` for the agent whose state lives in `state_dir` (blocking).
    pub fn select(choice: StoreChoice, state_dir: &Path) -> Result<Self, CredentialError> {
        Self::select_with(
            choice,
            state_dir,
            std::env::var_os("DBUS_SESSION_BUS_ADDRESS"),
        )
    }

    /// [`select`](Self::select) with the session bus address passed in, for tests.
    pub fn select_with(
        choice: StoreChoice,
        state_dir: &Path,
        session_bus: Option<OsString>,
    ) -> Result<Self, CredentialError> {
        match choice {
            StoreChoice::File => Ok(Self::file(state_dir)),
            StoreChoice::Keyring => Self::keyring(state_dir),
            StoreChoice::Auto => {
                let has_bus = session_bus.is_some_and(|a| !a.is_empty());
                if cfg!(all(unix, not(target_os = "macos"))) && !has_bus {
                    tracing::info!(
                        "device token kept in a file in {}: no D-Bus session bus \
                         (DBUS_SESSION_BUS_ADDRESS unset), so no Secret Service",
                        state_dir.display()
                    );
                    return Ok(Self::file(state_dir));
                }
                match Self::keyring(state_dir) {
                    Ok(mut s) => {
                        if let Backend::Keyring { fallback, .. } = &mut s.backend {
                            *fallback = Some(state_dir.join(TOKEN_FILE));
                        }
                        Ok(s)
                    }
                    Err(e) => {
                        tracing::warn!(
                            "device token kept in a file in {} because {e}",
                            state_dir.display()
                        );
                        Ok(Self::file(state_dir))
                    }
                }
            }
        }
    }

    /// The store a new device token will go to, checked before the enrollment
    /// token is spent (blocking): an enrollment token redeemed for a credential
    /// that cannot be kept is lost. With `auto`, an OS store that fails the check
    /// gives way to the file; with `keyring` the failure is the answer.
    pub fn select_for_enrollment(
        choice: StoreChoice,
        state_dir: &Path,
    ) -> Result<Self, CredentialError> {
        let store = Self::select(choice, state_dir)?;
        match store.probe() {
            Ok(()) => Ok(store),
            Err(e) if choice == StoreChoice::Auto && store.is_keyring() => {
                tracing::warn!(
                    "device token will be kept in a file in {}: the OS credential store \
                     failed a test write ({e})",
                    state_dir.display()
                );
                let file = Self::file(state_dir);
                file.probe()?;
                Ok(file)
            }
            Err(e) => Err(e),
        }
    }

    /// Writes, reads back and deletes a throwaway entry next to where the token
    /// goes (blocking), leaving any stored token alone.
    pub fn probe(&self) -> Result<(), CredentialError> {
        match &self.backend {
            Backend::File { dir } => {
                ensure_private_dir(dir)?;
                let path = dir.join(".device-token.probe");
                write_private_file(&path, b"probe")?;
                remove_if_present(&path)
            }
            Backend::Keyring { store, user, .. } => {
                let probe = entry(store, &format!("probe:{user}"))?;
                probe
                    .set_password("probe")
                    .map_err(|e| keyring_error("store a test entry in", e))?;
                let back = probe.get_password();
                let _ = probe.delete_credential();
                match back {
                    Ok(v) if v == "probe" => Ok(()),
                    Ok(_) => Err(CredentialError::Keyring {
                        action: "read back a test entry from",
                        store: self.describe(),
                        reason: "it returned something else".into(),
                    }),
                    Err(e) => Err(keyring_error("read back a test entry from", e)),
                }
            }
        }
    }

    /// `keyring (Secret Service)` or `file:/var/lib/flex-agent/device-token`.
    pub fn describe(&self) -> String {
        match &self.backend {
            Backend::Keyring { .. } => format!("keyring ({OS_STORE})"),
            Backend::File { dir } => format!("file:{}{FILE_SEAL}", dir.join(TOKEN_FILE).display()),
        }
    }

    /// True for the OS store, false for the file.
    pub fn is_keyring(&self) -> bool {
        matches!(self.backend, Backend::Keyring { .. })
    }

    /// Reads the token (blocking).
    pub fn load(&self) -> Result<DeviceToken, CredentialError> {
        match &self.backend {
            Backend::File { dir } => read_token_file(&dir.join(TOKEN_FILE), self.describe()),
            Backend::Keyring {
                store,
                user,
                fallback,
            } => match entry(store, user)?.get_password() {
                Ok(t) => Ok(DeviceToken(t)),
                Err(keyring_core::Error::NoEntry) => match fallback {
                    Some(path) if path.exists() => read_token_file(path, self.describe()),
                    _ => Err(CredentialError::Missing {
                        store: self.describe(),
                    }),
                },
                Err(e) => Err(keyring_error("read", e)),
            },
        }
    }

    /// Stores the token, replacing any earlier one (blocking).
    pub fn save(&self, token: &DeviceToken) -> Result<(), CredentialError> {
        match &self.backend {
            Backend::File { dir } => write_token_file(dir, token),
            Backend::Keyring {
                store,
                user,
                fallback,
            } => {
                entry(store, user)?
                    .set_password(token.expose())
                    .map_err(|e| keyring_error("store", e))?;
                // A token file left from an earlier file-backed enrollment is now
                // stale and a needless copy of a secret on disk.
                if let Some(path) = fallback {
                    remove_if_present(path)?;
                }
                Ok(())
            }
        }
    }

    /// Forgets the token; no error when there was none (blocking).
    pub fn delete(&self) -> Result<(), CredentialError> {
        match &self.backend {
            Backend::File { dir } => remove_if_present(&dir.join(TOKEN_FILE)),
            Backend::Keyring { store, user, .. } => match entry(store, user)?.delete_credential() {
                Ok(()) | Err(keyring_core::Error::NoEntry) => Ok(()),
                Err(e) => Err(keyring_error("delete", e)),
            },
        }
    }

    /// [`select`](Self::select) off the async runtime.
    pub async fn select_async(
        choice: StoreChoice,
        state_dir: PathBuf,
    ) -> Result<Self, CredentialError> {
        blocking("select", move || Self::select(choice, &state_dir)).await
    }

    /// [`load`](Self::load) off the async runtime.
    pub async fn load_async(&self) -> Result<DeviceToken, CredentialError> {
        let this = self.clone();
        blocking("read", move || this.load()).await
    }

    /// [`save`](Self::save) off the async runtime.
    pub async fn save_async(&self, token: DeviceToken) -> Result<(), CredentialError> {
        let this = self.clone();
        blocking("store", move || this.save(&token)).await
    }

    /// [`delete`](Self::delete) off the async runtime.
    pub async fn delete_async(&self) -> Result<(), CredentialError> {
        let this = self.clone();
        blocking("delete", move || this.delete()).await
    }
}

async fn blocking<T: Send + 'static>(
    action: &'static str,
    f: impl FnOnce() -> Result<T, CredentialError> + Send + 'static,
) -> Result<T, CredentialError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| CredentialError::Task {
            action,
            reason: e.to_string(),
        })?
}

fn keyring_user(state_dir: &Path) -> String {
    format!("device-token:{}", state_dir.display())
}

fn entry(
    store: &Arc<keyring_core::CredentialStore>,
    user: &str,
) -> Result<keyring_core::Entry, CredentialError> {
    keyring_core::Entry::new_in_store(store, KEYRING_SERVICE, user)
        .map_err(|e| keyring_error("address", e))
}

/// keyring-core's messages never include the secret (even `BadEncoding` prints
/// only a summary), so they are safe to carry.
fn keyring_error(action: &'static str, e: keyring_core::Error) -> CredentialError {
    CredentialError::Keyring {
        action,
        store: format!("keyring ({OS_STORE})"),
        reason: e.to_string(),
    }
}

fn connect_os_store() -> Result<Arc<keyring_core::CredentialStore>, CredentialError> {
    let unavailable = |e: keyring_core::Error| CredentialError::Unavailable {
        store: OS_STORE,
        reason: e.to_string(),
    };
    #[cfg(all(unix, not(target_os = "macos")))]
    let store: Arc<keyring_core::CredentialStore> =
        dbus_secret_service_keyring_store::Store::new().map_err(unavailable)?;
    #[cfg(target_os = "macos")]
    let store: Arc<keyring_core::CredentialStore> =
        apple_native_keyring_store::keychain::Store::new().map_err(unavailable)?;
    #[cfg(windows)]
    let store: Arc<keyring_core::CredentialStore> =
        windows_native_keyring_store::Store::new().map_err(unavailable)?;
    Ok(store)
}

// ------------------------------------------------------------------ file backend

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CredentialError {
    let path = path.to_path_buf();
    move |source| CredentialError::Io {
        action,
        path,
        source,
    }
}

/// Creates `dir` as 0700, or tightens an existing one to 0700: the directory
/// guards the token file's name and the temp file during a write.
pub fn ensure_private_dir(dir: &Path) -> Result<(), CredentialError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .map_err(io_err("create state directory", dir))?;
    // SYSTEM and Administrators only. A non-elevated process (a developer's
    // console run) would lock itself out, so it leaves the ACL alone.
    #[cfg(windows)]
    if crate::win32::current_is_admin() {
        crate::win32::acl::restrict_to_admins(dir)
            .map_err(io_err("restrict to SYSTEM and Administrators", dir))?;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(dir).map_err(io_err("inspect state directory", dir))?;
        let mode = meta.permissions().mode() & 0o7777;
        // A world-writable or sticky directory is shared (a /tmp): making it 0700
        // would break everyone else using it, so refuse instead of tightening.
        if mode & 0o1002 != 0 {
            return Err(CredentialError::SharedDir {
                path: dir.to_path_buf(),
                mode,
            });
        }
        if mode & 0o777 != 0o700 {
            tracing::warn!(
                "state directory {} had mode {mode:o}; restricting it to 0700",
                dir.display()
            );
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(io_err("set mode 0700 on state directory", dir))?;
        }
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically with mode 0600 (on Windows, readable by
/// SYSTEM and Administrators only): a temp file in the same directory, fsync,
/// rename, fsync of the directory. A crash leaves the old file
/// or the new one, never a torn token. Also used for other private state files.
pub fn write_private_file(path: &Path, bytes: &[u8]) -> Result<(), CredentialError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(&tmp).map_err(io_err("create", &tmp))?;
        // The mode above is filtered by the umask and ignored for a file that
        // already existed; set it explicitly before the secret goes in.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(io_err("set mode 0600 on", &tmp))?;
        }
        // SYSTEM and Administrators only, whatever the folder lets others do
        // (the enrollment token beside the config, in C:\ProgramData\Flex).
        #[cfg(windows)]
        if crate::win32::current_is_admin() {
            crate::win32::acl::restrict_to_admins(&tmp)
                .map_err(io_err("restrict to SYSTEM and Administrators", &tmp))?;
        }
        f.write_all(bytes).map_err(io_err("write", &tmp))?;
        f.sync_all().map_err(io_err("flush", &tmp))?;
        std::fs::rename(&tmp, path).map_err(io_err("replace", path))?;
        #[cfg(unix)]
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("flush directory", dir))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn write_token_file(dir: &Path, token: &DeviceToken) -> Result<(), CredentialError> {
    ensure_private_dir(dir)?;
    let path = dir.join(TOKEN_FILE);
    #[cfg(windows)]
    let sealed = crate::win32::dpapi::protect(token.expose().as_bytes())
        .map_err(io_err("encrypt (DPAPI) the device token for", &path))?;
    #[cfg(windows)]
    let bytes = &sealed[..];
    #[cfg(not(windows))]
    let bytes = token.expose().as_bytes();
    write_private_file(&path, bytes)
}

/// The token file's text: on Windows the file is a DPAPI blob for this machine.
fn read_token_text(path: &Path) -> std::io::Result<String> {
    #[cfg(windows)]
    {
        let sealed = std::fs::read(path)?;
        let plain = crate::win32::dpapi::unprotect(&sealed).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "not sealed for this machine by DPAPI ({e}): enroll this workstation again"
                ),
            )
        })?;
        String::from_utf8(plain)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }
    #[cfg(not(windows))]
    std::fs::read_to_string(path)
}

fn read_token_file(path: &Path, store: String) -> Result<DeviceToken, CredentialError> {
    let text = match read_token_text(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(CredentialError::Missing { store })
        }
        Err(e) => return Err(io_err("read device token file", path)(e)),
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(
                    "device token file {} was readable by others (mode {:o}); restricting it to 0600",
                    path.display(),
                    meta.permissions().mode() & 0o777
                );
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                    .map_err(io_err("set mode 0600 on", path))?;
            }
        }
    }
    // A hand-edited file may end with a newline; the token itself never does.
    let token = text.trim();
    if token.is_empty() {
        return Err(CredentialError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(DeviceToken(token.to_string()))
}

fn remove_if_present(path: &Path) -> Result<(), CredentialError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("remove", path)(e)),
    }
}

#[cfg(all(test, unix))]
mod tests;
#[cfg(all(test, windows))]
mod tests_windows;
