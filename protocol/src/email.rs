//! Email addresses, the one name by which the server, the agent and signed leases
//! know a user.
//!
//! An [`Email`] can only be made by [`Email::parse`], which trims and lowercases
//! before checking, so every comparison of users anywhere in the system (the
//! agent's config mapping, a claim, the lease the server signs for it, the ledger)
//! compares the same normal form. Before this type existed the server lowercased
//! and the agent did not: a config override written `Root@Example.com` was charged
//! and then refused as not matching its own lease.
//!
//! The check is deliberately plain: one `@`, a non-empty local part, a dotted
//! domain, no spaces or control characters, at most 254 bytes.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};

/// Longest address accepted (RFC 5321's path limit less the angle brackets).
pub const MAX_EMAIL: usize = 254;

/// A normalised (trimmed, lowercase) email address.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Email(String);

/// Why a string is not an email address; the message quotes the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{value}' is not an email address")]
pub struct EmailError {
    /// The rejected value, trimmed and cut to [`MAX_EMAIL`] characters.
    pub value: String,
}

impl Email {
    /// Trims, lowercases and checks `raw`.
    pub fn parse(raw: &str) -> Result<Email, EmailError> {
        let email = raw.trim().to_lowercase();
        let valid = email.len() <= MAX_EMAIL
            && !email.chars().any(|c| c.is_whitespace() || c.is_control())
            && match email.split_once('@') {
                Some((local, domain)) => {
                    !local.is_empty()
                        && !domain.contains('@')
                        && domain.contains('.')
                        && !domain.starts_with('.')
                        && !domain.ends_with('.')
                        && !domain.contains("..")
                }
                None => false,
            };
        if valid {
            Ok(Email(email))
        } else {
            Err(EmailError {
                value: raw.trim().chars().take(MAX_EMAIL).collect(),
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl Deref for Email {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Email {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Email {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Email {
    type Err = EmailError;
    fn from_str(s: &str) -> Result<Email, EmailError> {
        Email::parse(s)
    }
}

impl PartialEq<str> for Email {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for Email {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// Parsing from JSON normalises too, so a peer that sends `Ada@Example.COM`
/// means the same user as one that sends `ada@example.com`.
impl<'de> Deserialize<'de> for Email {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Email, D::Error> {
        let raw = String::deserialize(d)?;
        Email::parse(&raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_and_lowercases() {
        let e = Email::parse("  Root@Example.COM ").unwrap();
        assert_eq!(e.as_str(), "root@example.com");
        assert_eq!(e, Email::parse("root@example.com").unwrap());
    }

    #[test]
    fn rejects_what_is_not_an_address() {
        for bad in [
            "",
            "ada",
            "@example.com",
            "ada@",
            "ada@localhost",
            "ada@@example.com",
            "a b@example.com",
            "ada@.example.com",
            "ada@example..com",
            "ada@example.com.",
        ] {
            let err = Email::parse(bad).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("'{}' is not an email address", bad.trim())
            );
        }
        assert!(Email::parse(&format!("{}@example.com", "a".repeat(250))).is_err());
    }

    #[test]
    fn json_round_trip_normalises() {
        let e: Email = serde_json::from_str("\"Ada@Example.com\"").unwrap();
        assert_eq!(serde_json::to_string(&e).unwrap(), "\"ada@example.com\"");
        let err = serde_json::from_str::<Email>("\"nope\"").unwrap_err();
        assert!(
            err.to_string().contains("'nope' is not an email address"),
            "{err}"
        );
    }
}
