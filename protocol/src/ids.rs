//! Identifiers as types, each checked once where it is parsed (or
//! deserialised) and carried typed from there.
//!
//! * [`ProductId`]: the rate sheet's rule, 1–64 of `[a-z0-9-]` (`autocad`,
//!   `recap-photo`), for everyone who names a product.
//! * [`ClaimId`]: 1–128 printable ASCII characters without spaces; the agent
//!   makes one per attempt (a UUID) and retries with it.
//! * [`SessionId`] and [`WindowId`]: 1–128 printable ASCII characters without
//!   spaces, made by the agent and the server respectively.
//!
//! A value that breaks its rule fails deserialisation with a message naming
//! the value and the rule, so a request carrying one is refused before any
//! handler sees it.
//!
//! New ids (claims and sessions on the agent, windows and devices on the
//! server) come from an [`IdSource`]: random UUIDs in production, a seeded
//! sequence of UUIDs in the deterministic simulation (`flex-sim`), where the
//! same seed must replay the same run, and where ids decide orders (maps
//! keyed by claim id, job claim ids hashed from the device id).

use std::fmt;
use std::sync::Mutex;

use rand::{Rng, SeedableRng};

use serde::{Deserialize, Deserializer, Serialize};

/// A value refused by an identifier's rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} '{value}' {rule}")]
pub struct IdError {
    pub kind: &'static str,
    /// The refused value, cut to 80 characters.
    pub value: String,
    pub rule: &'static str,
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $rule:literal, $check:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// The rule this identifier follows, for messages and schemas.
            pub const RULE: &'static str = $rule;

            /// Checks `raw` against the rule.
            pub fn parse(raw: &str) -> Result<$name, IdError> {
                let check: fn(&str) -> bool = $check;
                if check(raw) {
                    Ok($name(raw.to_owned()))
                } else {
                    Err(IdError {
                        kind: $kind,
                        value: raw.chars().take(80).collect(),
                        rule: $rule,
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

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        // Maps keyed by the id can be looked up with a `&str`: the derived
        // `Hash`/`Eq`/`Ord` are those of the inner `String`.
        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<&$name> for $name {
            fn eq(&self, other: &&$name) -> bool {
                self == *other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                &self.0 == other
            }
        }

        impl PartialEq<$name> for String {
            fn eq(&self, other: &$name) -> bool {
                self == &other.0
            }
        }

        impl PartialEq<$name> for str {
            fn eq(&self, other: &$name) -> bool {
                self == other.0
            }
        }

        impl PartialEq<$name> for &str {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(raw: String) -> Result<$name, IdError> {
                $name::parse(&raw)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<$name, IdError> {
                $name::parse(s)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<$name, D::Error> {
                let raw = String::deserialize(d)?;
                $name::parse(&raw).map_err(serde::de::Error::custom)
            }
        }
    };
}

fn printable(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_graphic())
}

id_type!(
    /// A product of the rate sheet (`autocad`).
    ProductId,
    "product",
    "is not a product id: 1-64 lowercase letters, digits or dashes",
    |s| !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
);

id_type!(
    /// One claim attempt; a retry repeats it.
    ClaimId,
    "claim_id",
    "must be 1-128 printable characters without spaces",
    |s| printable(s, 128)
);

id_type!(
    /// One run of a product on a device, as the agent reports it.
    SessionId,
    "session id",
    "must be 1-128 printable characters without spaces",
    |s| printable(s, 128)
);

id_type!(
    /// A charge window, as the server names it.
    WindowId,
    "window id",
    "must be 1-128 printable characters without spaces",
    |s| printable(s, 128)
);

/// Where new ids come from.
#[derive(Debug, Default)]
pub enum IdSource {
    /// Random version-4 UUIDs: production.
    #[default]
    Random,
    /// UUIDs from a seeded generator: the same seed, the same ids.
    Seeded(Box<Mutex<rand::rngs::StdRng>>),
}

impl IdSource {
    pub fn seeded(seed: u64) -> IdSource {
        IdSource::Seeded(Box::new(Mutex::new(rand::rngs::StdRng::seed_from_u64(
            seed,
        ))))
    }

    /// A new claim id.
    pub fn next_claim_id(&self) -> ClaimId {
        ClaimId(self.next_id())
    }

    /// A new session id.
    pub fn next_session_id(&self) -> SessionId {
        SessionId(self.next_id())
    }

    /// A new window id.
    pub fn next_window_id(&self) -> WindowId {
        WindowId(self.next_id())
    }

    /// A new id: a version-4 UUID, as text (which every id rule accepts).
    pub fn next_id(&self) -> String {
        let bytes: [u8; 16] = match self {
            IdSource::Random => rand::random(),
            IdSource::Seeded(rng) => rng.lock().unwrap_or_else(|p| p.into_inner()).gen(),
        };
        uuid::Builder::from_random_bytes(bytes)
            .into_uuid()
            .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_ids_repeat_and_random_ones_do_not() {
        let (a, b) = (IdSource::seeded(7), IdSource::seeded(7));
        let first: Vec<String> = (0..3).map(|_| a.next_id()).collect();
        assert_eq!(first, (0..3).map(|_| b.next_id()).collect::<Vec<_>>());
        assert_ne!(first[0], first[1]);
        assert_ne!(IdSource::Random.next_id(), IdSource::Random.next_id());
        // The form production uses (a claim id, a session id, a window id).
        let id = uuid::Uuid::parse_str(&first[0]).unwrap();
        assert_eq!(id.get_version_num(), 4);
        ClaimId::parse(&first[0]).unwrap();
    }

    #[test]
    fn product_ids_follow_the_rate_sheets_rule() {
        for ok in ["autocad", "recap-photo", "3dsmax", &"a".repeat(64)] {
            assert_eq!(ProductId::parse(ok).unwrap().as_str(), ok);
        }
        for bad in [
            "",
            "AutoCAD",
            "auto cad",
            "acad.exe",
            "a:b",
            &"a".repeat(65),
        ] {
            let e = ProductId::parse(bad).unwrap_err();
            assert!(e.to_string().contains("is not a product id"), "{bad}: {e}");
        }
    }

    #[test]
    fn ids_are_checked_when_deserialised() {
        let c: ClaimId = serde_json::from_str("\"9eb423fd-5f78\"").unwrap();
        assert_eq!(serde_json::to_string(&c).unwrap(), "\"9eb423fd-5f78\"");
        let e = serde_json::from_str::<ClaimId>("\"two words\"").unwrap_err();
        assert!(
            e.to_string().contains("claim_id 'two words' must be"),
            "{e}"
        );
        assert!(serde_json::from_str::<ProductId>("\"Revit\"").is_err());
        assert!(serde_json::from_str::<SessionId>(&format!("\"{}\"", "s".repeat(129))).is_err());
        assert!(serde_json::from_str::<WindowId>("\"\"").is_err());
    }
}
