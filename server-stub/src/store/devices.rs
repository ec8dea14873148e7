//! Enrollment tokens and device credentials.
//!
//! Both kinds of secret are stored only as SHA-256 hashes: a copy of the database
//! does not let anyone act as a device.

use flex_protocol::api::{EnrollRequest, EnrollResponse, EnrollmentToken};
use rusqlite::{params, OptionalExtension};

use super::{new_secret, parse_ts, sha256_hex, ts, Result, Store, StoreError};

impl Store {
    /// A one-time token that lets one agent enroll.
    pub fn create_enrollment_token(&self) -> Result<EnrollmentToken> {
        let now = self.now();
        let ttl = chrono::Duration::from_std(self.enrollment_ttl).expect("ttl fits");
        let token = new_secret("fet_");
        let expires_at = now + ttl;
        self.write(|tx| {
            tx.execute(
                "INSERT INTO enrollment_tokens (token_hash, created_at, expires_at) VALUES (?1, ?2, ?3)",
                params![sha256_hex(token.as_bytes()), ts(now), ts(expires_at)],
            )?;
            Ok(())
        })?;
        Ok(EnrollmentToken { token, expires_at })
    }

    /// Exchanges an enrollment token for a device credential.
    pub fn enroll(&self, req: &EnrollRequest) -> Result<EnrollResponse> {
        let hostname = req.hostname.trim();
        if hostname.is_empty() || hostname.len() > 255 || hostname.chars().any(char::is_control) {
            return Err(StoreError::Invalid(format!(
                "hostname '{}' is not a valid host name",
                hostname.chars().take(64).collect::<String>()
            )));
        }
        let now = self.now();
        let hash = sha256_hex(req.enrollment_token.trim().as_bytes());
        let device_id = uuid::Uuid::new_v4().to_string();
        let device_token = new_secret("fdt_");
        self.write(|tx| {
            let row: Option<(String, Option<String>)> = tx
                .query_row(
                    "SELECT expires_at, used_at FROM enrollment_tokens WHERE token_hash = ?1",
                    [&hash],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let refuse = |why: &str| {
                Err(StoreError::Unauthorized(format!(
                    "enrollment token {why}; ask your license admin for a new one (flex-admin enroll-token)"
                )))
            };
            match row {
                None => return refuse("is not known"),
                Some((_, Some(_))) => return refuse("was already used"),
                Some((expires, None)) if parse_ts(&expires)? <= now => {
                    return refuse("has expired")
                }
                Some(_) => {}
            }
            tx.execute(
                "UPDATE enrollment_tokens SET used_at = ?1, device_id = ?2 WHERE token_hash = ?3",
                params![ts(now), device_id, hash],
            )?;
            tx.execute(
                "INSERT INTO devices (id, hostname, token_hash, enrolled_at) VALUES (?1, ?2, ?3, ?4)",
                params![device_id, hostname, sha256_hex(device_token.as_bytes()), ts(now)],
            )?;
            Ok(())
        })?;
        tracing::info!(%device_id, hostname, "device enrolled");
        Ok(EnrollResponse {
            device_id,
            device_token,
            lease_keys: vec![self.signer().public_key()],
        })
    }

    /// The device a bearer token belongs to, if any.
    pub fn authenticate_device(&self, token: &str) -> Result<Option<String>> {
        let hash = sha256_hex(token.as_bytes());
        self.read(|c| {
            Ok(c.query_row(
                "SELECT id FROM devices WHERE token_hash = ?1",
                [hash],
                |r| r.get(0),
            )
            .optional()?)
        })
    }
}
