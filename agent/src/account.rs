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
    }
}
