//! Local accounts: who runs a process, who is on the other end of the socket.
//!
//! The core knows an account by an opaque [`AccountId`] (the decimal uid on Unix,
//! the user's SID on Windows) and shows its name to people. Both come from the
//! kernel: the socket peer's credentials or a process's owner, never a message.

use serde::{Deserialize, Serialize};

/// A local account's stable id: `"1000"` on Unix, `"S-1-5-21-…"` on Windows.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AccountId(String);

impl AccountId {
    /// An id as stored (journal) or read from the OS.
    pub fn new(id: impl Into<String>) -> AccountId {
        AccountId(id.into())
    }

    pub fn from_uid(uid: u32) -> AccountId {
        AccountId(uid.to_string())
    }

    /// The uid this id names, on Unix.
    pub fn uid(&self) -> Option<u32> {
        self.0.parse().ok()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for AccountId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The name people know `id` by: the account name on Unix (the uid when it has
/// no entry), `DOMAIN\user` on Windows (the SID when it does not resolve).
/// May ask a directory service (NSS, a domain controller): keep it off async
/// threads where that matters.
pub fn name_of(id: &AccountId) -> String {
    #[cfg(windows)]
    return crate::win32::Sid(id.as_str().to_string()).account_name();
    #[cfg(unix)]
    id.uid().map(name_of_uid).unwrap_or_else(|| id.to_string())
}

/// Account name of `uid`, falling back to the number when it has no entry.
#[cfg(unix)]
pub fn name_of_uid(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(user)) => user.name,
        _ => uid.to_string(),
    }
}

/// The id of the local account called `name`, if there is one.
#[cfg(unix)]
pub fn lookup(name: &str) -> Option<AccountId> {
    match nix::unistd::User::from_name(name) {
        Ok(Some(u)) => Some(AccountId::from_uid(u.uid.as_raw())),
        _ => None,
    }
}

/// The id of the local or domain account called `name` (`user` or
/// `DOMAIN\user`), if there is one.
#[cfg(windows)]
pub fn lookup(name: &str) -> Option<AccountId> {
    crate::win32::Sid::lookup(name).map(|sid| AccountId::new(sid.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_round_trip() {
        let id = AccountId::from_uid(1000);
        assert_eq!(id.as_str(), "1000");
        assert_eq!(id.uid(), Some(1000));
        assert_eq!(AccountId::new("S-1-5-18").uid(), None);
    }

    #[cfg(unix)]
    #[test]
    fn names_from_the_account_database() {
        assert_eq!(name_of_uid(0), "root");
        assert_eq!(lookup("root"), Some(AccountId::from_uid(0)));
        assert_eq!(lookup("no-such-account-here"), None);
        assert_eq!(name_of_uid(4_000_000_000), "4000000000");
        assert_eq!(name_of(&AccountId::from_uid(0)), "root");
    }

    #[cfg(windows)]
    #[test]
    fn names_from_the_security_database() {
        let system = AccountId::new("S-1-5-18");
        let name = name_of(&system);
        assert!(name.to_uppercase().ends_with("\\SYSTEM"), "{name}");
        assert_eq!(lookup(&name), Some(system));
        assert_eq!(lookup("no-such-account-here"), None);
        // An unknown SID is shown as itself.
        assert_eq!(
            name_of(&AccountId::new("S-1-5-21-1-2-3-4242")),
            "S-1-5-21-1-2-3-4242"
        );
    }
}
