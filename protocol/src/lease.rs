//! Signed window leases.
//!
//! The server signs every window it grants so that the agent can honour the window
//! later without the network (a restart, an offline launch). The signed message is
//!
//! ```text
//! DOMAIN || kid || 0x00 || payload
//! ```
//!
//! where `payload` is the JSON of [`LeaseBody`] exactly as sent (the verifier checks
//! the bytes it received, never a re-encoding, so no canonical JSON is needed) and
//! the domain prefix keeps a lease signature from being valid as anything else.
//! Binding the key id means a lease cannot be moved to another key.

use std::collections::HashMap;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chrono::{DateTime, Utc};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::api::{LeaseKey, Source};
use crate::{Email, ProductId, WindowId};

/// Domain separation prefix of lease signatures, version 1.
pub const LEASE_DOMAIN: &[u8] = b"flex-lease/v1\n";

/// What a lease asserts: `user` may run `product` on `device_id` in `[start, end)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseBody {
    pub window_id: WindowId,
    pub device_id: String,
    pub user: Email,
    pub product: ProductId,
    pub source: Source,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub issued_at: DateTime<Utc>,
}

/// A lease as it travels and is journaled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedLease {
    pub kid: String,
    /// The JSON of [`LeaseBody`], standard base64.
    pub payload: String,
    /// Ed25519 signature, standard base64.
    pub signature: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LeaseError {
    #[error("lease signed with unknown key id '{0}'")]
    UnknownKey(String),
    #[error("lease {field} is not valid base64")]
    Encoding { field: &'static str },
    #[error("lease signature does not verify with key '{0}'")]
    BadSignature(String),
    #[error("lease payload is not a lease body: {0}")]
    Payload(String),
    #[error("public key '{kid}' is not a valid ed25519 key")]
    BadKey { kid: String },
}

fn message(domain: &[u8], kid: &str, payload: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(domain.len() + kid.len() + 1 + payload.len());
    msg.extend_from_slice(domain);
    msg.extend_from_slice(kid.as_bytes());
    msg.push(0);
    msg.extend_from_slice(payload);
    msg
}

/// The server's side: one signing key with its id.
pub struct LeaseSigner {
    kid: String,
    key: SigningKey,
}

impl LeaseSigner {
    pub fn new(kid: impl Into<String>, key: SigningKey) -> Self {
        LeaseSigner {
            kid: kid.into(),
            key,
        }
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public half, as published at enrollment.
    pub fn public_key(&self) -> LeaseKey {
        LeaseKey {
            kid: self.kid.clone(),
            public_key: STANDARD.encode(self.key.verifying_key().as_bytes()),
        }
    }

    pub fn sign(&self, body: &LeaseBody) -> SignedLease {
        self.sign_with_domain(LEASE_DOMAIN, body)
    }

    /// Signs under another domain; only for tests that prove the prefix matters.
    #[doc(hidden)]
    pub fn sign_with_domain(&self, domain: &[u8], body: &LeaseBody) -> SignedLease {
        let payload = serde_json::to_vec(body).expect("lease body serializes");
        let sig = self.key.sign(&message(domain, &self.kid, &payload));
        SignedLease {
            kid: self.kid.clone(),
            payload: STANDARD.encode(&payload),
            signature: STANDARD.encode(sig.to_bytes()),
        }
    }
}

/// The agent's side: the keys pinned at enrollment.
#[derive(Debug, Clone, Default)]
pub struct LeaseVerifier {
    keys: HashMap<String, VerifyingKey>,
}

impl LeaseVerifier {
    pub fn from_keys(keys: &[LeaseKey]) -> Result<Self, LeaseError> {
        let mut map = HashMap::new();
        for k in keys {
            let bad = || LeaseError::BadKey { kid: k.kid.clone() };
            let bytes: [u8; 32] = STANDARD
                .decode(&k.public_key)
                .map_err(|_| bad())?
                .try_into()
                .map_err(|_| bad())?;
            let vk = VerifyingKey::from_bytes(&bytes).map_err(|_| bad())?;
            map.insert(k.kid.clone(), vk);
        }
        Ok(LeaseVerifier { keys: map })
    }

    /// Checks the signature and returns what the lease asserts. Whether the
    /// assertion fits the situation (user, product, times) is the caller's rule.
    pub fn verify(&self, lease: &SignedLease) -> Result<LeaseBody, LeaseError> {
        let key = self
            .keys
            .get(&lease.kid)
            .ok_or_else(|| LeaseError::UnknownKey(lease.kid.clone()))?;
        let payload = STANDARD
            .decode(&lease.payload)
            .map_err(|_| LeaseError::Encoding { field: "payload" })?;
        let sig_bytes: [u8; 64] = STANDARD
            .decode(&lease.signature)
            .map_err(|_| LeaseError::Encoding { field: "signature" })?
            .try_into()
            .map_err(|_| LeaseError::Encoding { field: "signature" })?;
        let sig = Signature::from_bytes(&sig_bytes);
        key.verify(&message(LEASE_DOMAIN, &lease.kid, &payload), &sig)
            .map_err(|_| LeaseError::BadSignature(lease.kid.clone()))?;
        serde_json::from_slice(&payload).map_err(|e| LeaseError::Payload(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn body() -> LeaseBody {
        let start = Utc.with_ymd_and_hms(2026, 11, 2, 8, 0, 0).unwrap();
        LeaseBody {
            window_id: "w-1".parse().unwrap(),
            device_id: "d-1".into(),
            user: crate::Email::parse("ada@example.com").unwrap(),
            product: "autocad".parse().unwrap(),
            source: Source::Tokens,
            start,
            end: start + chrono::Duration::hours(24),
            issued_at: start,
        }
    }

    #[test]
    fn signed_lease_verifies_and_returns_body() {
        let signer = LeaseSigner::new("k1", key(1));
        let verifier = LeaseVerifier::from_keys(&[signer.public_key()]).unwrap();
        let lease = signer.sign(&body());
        assert_eq!(verifier.verify(&lease).unwrap(), body());
    }

    #[test]
    fn every_changed_payload_byte_is_rejected() {
        let signer = LeaseSigner::new("k1", key(1));
        let verifier = LeaseVerifier::from_keys(&[signer.public_key()]).unwrap();
        let lease = signer.sign(&body());
        let payload = STANDARD.decode(&lease.payload).unwrap();
        for i in 0..payload.len() {
            let mut tampered = payload.clone();
            tampered[i] ^= 0x01;
            let forged = SignedLease {
                payload: STANDARD.encode(&tampered),
                ..lease.clone()
            };
            assert!(verifier.verify(&forged).is_err(), "byte {i} accepted");
        }
    }

    #[test]
    fn changed_signature_is_rejected() {
        let signer = LeaseSigner::new("k1", key(1));
        let verifier = LeaseVerifier::from_keys(&[signer.public_key()]).unwrap();
        let mut lease = signer.sign(&body());
        let mut sig = STANDARD.decode(&lease.signature).unwrap();
        sig[10] ^= 0x80;
        lease.signature = STANDARD.encode(sig);
        assert_eq!(
            verifier.verify(&lease),
            Err(LeaseError::BadSignature("k1".into()))
        );
    }

    #[test]
    fn wrong_key_id_is_rejected() {
        let k1 = LeaseSigner::new("k1", key(1));
        let k2 = LeaseSigner::new("k2", key(2));
        let verifier = LeaseVerifier::from_keys(&[k1.public_key(), k2.public_key()]).unwrap();
        // Relabelled to another known key: the signature no longer matches.
        let mut lease = k1.sign(&body());
        lease.kid = "k2".into();
        assert_eq!(
            verifier.verify(&lease),
            Err(LeaseError::BadSignature("k2".into()))
        );
        // A key the agent never pinned.
        lease.kid = "k9".into();
        assert_eq!(
            verifier.verify(&lease),
            Err(LeaseError::UnknownKey("k9".into()))
        );
        // Same key bytes under another id: the id is part of the signed message.
        let same_key_other_id = LeaseSigner::new("k1-copy", key(1));
        let verifier = LeaseVerifier::from_keys(&[same_key_other_id.public_key()]).unwrap();
        let mut lease = k1.sign(&body());
        lease.kid = "k1-copy".into();
        assert!(matches!(
            verifier.verify(&lease),
            Err(LeaseError::BadSignature(_))
        ));
    }

    #[test]
    fn wrong_domain_prefix_is_rejected() {
        let signer = LeaseSigner::new("k1", key(1));
        let verifier = LeaseVerifier::from_keys(&[signer.public_key()]).unwrap();
        let lease = signer.sign_with_domain(b"flex-lease/v0\n", &body());
        assert_eq!(
            verifier.verify(&lease),
            Err(LeaseError::BadSignature("k1".into()))
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let signer = LeaseSigner::new("k1", key(1));
        let verifier = LeaseVerifier::from_keys(&[signer.public_key()]).unwrap();
        let lease = SignedLease {
            kid: "k1".into(),
            payload: "***".into(),
            signature: "AA==".into(),
        };
        assert!(verifier.verify(&lease).is_err());
        assert!(LeaseVerifier::from_keys(&[LeaseKey {
            kid: "x".into(),
            public_key: "AAAA".into()
        }])
        .is_err());
    }
}
