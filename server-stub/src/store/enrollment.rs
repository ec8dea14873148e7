//! Enrollment keys: what an admin hands to one agent or to a fleet of them.
//!
//! A key enrolls up to `uses` agents until it expires or is revoked. Its secret is
//! returned once, at creation, and stored only as a SHA-256 hash, so neither the
//! list nor a copy of the database lets anyone enroll a device. Redeeming a key
//! ([`Store::enroll`](super::Store::enroll)) takes one use in the same transaction
//! that creates the device, so a thousand agents starting at once can never get
//! more than `uses` devices out of it.
//!
//! Redeeming is idempotent by the agent's `enrollment_request_id`
//! ([`PriorRequest`]): an answer lost to a timeout or a stopped service is
//! asked for again with the same id and comes back the same, so a key's use is
//! never spent on a device nobody holds the credential of. "The same
//! credential" is handed out only to whoever holds the id, and only until the
//! device first contacts the server: the device token of such an enrollment is
//! derived from the id and a salt kept here ([`device_token_for`]), the id itself
//! is stored only as a hash, and the salt is dropped at the device's first
//! heartbeat ([`acknowledge`]), after which nobody can obtain that credential
//! again.

use chrono::{DateTime, Utc};
use flex_protocol::api::{
    EnrollmentToken, EnrollmentTokenInfo, EnrollmentTokenState, NewEnrollmentToken,
};
use hmac::{Hmac, Mac};

use super::db::{params, Conn, Row};
use super::{new_secret, parse_ts, sha256_hex, ts, Result, Store, StoreError};

/// Most agents one key may enroll.
pub const MAX_USES: u32 = 100_000;
/// Shortest and longest validity of a key.
pub const MIN_TTL: std::time::Duration = std::time::Duration::from_secs(60);
pub const MAX_TTL: std::time::Duration = std::time::Duration::from_secs(366 * 24 * 3600);
/// Longest note.
pub const MAX_NOTE: usize = 200;

/// Why a key cannot enroll one more agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeyRefusal {
    Unknown,
    Revoked,
    Expired(DateTime<Utc>),
    UsedUp(u32),
}

impl KeyRefusal {
    pub(crate) fn into_error(self) -> StoreError {
        let next = "ask your license admin for a new one (flex-admin enroll-token)";
        match self {
            KeyRefusal::Unknown => StoreError::Unauthorized(format!(
                "the enrollment token is not known to this server (mistyped, or made on another server): {next}"
            )),
            KeyRefusal::Revoked => StoreError::Unauthorized(format!(
                "the enrollment token was revoked by an admin: {next}"
            )),
            KeyRefusal::UsedUp(uses) => StoreError::Unauthorized(format!(
                "the enrollment token has enrolled {uses} device(s), its limit: {next}"
            )),
            KeyRefusal::Expired(at) => StoreError::Expired(format!(
                "the enrollment token expired at {}: {next}",
                ts(at)
            )),
        }
    }
}

/// A key found by its secret, as the enroll transaction sees it.
pub(crate) struct KeyRow {
    pub id: String,
    uses: u32,
    uses_left: u32,
    expires_at: DateTime<Utc>,
    revoked: bool,
}

impl KeyRow {
    /// Whether it may enroll one more agent at `now`.
    pub(crate) fn check(&self, now: DateTime<Utc>) -> std::result::Result<(), KeyRefusal> {
        if self.revoked {
            Err(KeyRefusal::Revoked)
        } else if self.expires_at <= now {
            Err(KeyRefusal::Expired(self.expires_at))
        } else if self.uses_left == 0 {
            Err(KeyRefusal::UsedUp(self.uses))
        } else {
            Ok(())
        }
    }
}

/// Finds the key whose secret is `token`.
pub(crate) fn find_key(tx: &Conn<'_>, token: &str) -> Result<Option<KeyRow>> {
    let hash = sha256_hex(token.trim().as_bytes());
    tx.query_opt(
        "SELECT id, uses, uses_left, expires_at, revoked_at FROM enrollment_keys WHERE token_hash = ?1",
        params![hash],
        |r| {
            Ok(KeyRow {
                id: r.get(0)?,
                uses: r.get(1)?,
                uses_left: r.get(2)?,
                expires_at: parse_ts(r.str(3)?)?,
                revoked: r.opt_str(4)?.is_some(),
            })
        },
    )
}

/// Takes one use of key `id` (checked with [`KeyRow::check`] in the same transaction).
pub(crate) fn take_use(tx: &Conn<'_>, id: &str) -> Result<()> {
    let n = tx.execute(
        "UPDATE enrollment_keys SET uses_left = uses_left - 1 WHERE id = ?1 AND uses_left > 0",
        params![id],
    )?;
    if n != 1 {
        return Err(StoreError::Conflict(format!(
            "enrollment key {id} has no use left"
        )));
    }
    Ok(())
}

/// An enrollment request id seen before, as a repeat of it finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PriorRequest {
    pub device_id: String,
    pub key_id: String,
    pub hostname: String,
    /// `None` once the device has contacted the server ([`acknowledge`]).
    pub token_salt: Option<String>,
    pub device_revoked: bool,
}

impl PriorRequest {
    /// Whether a repeat that presents key `key_id` (the key its token names, if
    /// any) from `hostname` gets the original answer: the salt to derive the
    /// device token with.
    pub(crate) fn repeat(&self, key_id: Option<&str>, hostname: &str) -> Result<&str> {
        if key_id != Some(self.key_id.as_str()) || hostname != self.hostname {
            return Err(StoreError::Conflict(
                "this enrollment request id was sent before with another enrollment token or \
                 hostname: the agent must start a new enrollment request"
                    .into(),
            ));
        }
        if self.device_revoked {
            return Err(StoreError::Unauthorized(format!(
                "device {} that this enrollment request created was revoked by an admin: \
                 ask your license admin for a new enrollment token",
                self.device_id
            )));
        }
        self.token_salt.as_deref().ok_or_else(|| {
            StoreError::Conflict(format!(
                "this enrollment request was answered already and device {} has contacted \
                 the server since: its credential is not handed out again (enroll again with \
                 a new enrollment request)",
                self.device_id
            ))
        })
    }
}

/// The earlier enrollment with the request id whose SHA-256 is `request_hash`.
pub(crate) fn find_request(tx: &Conn<'_>, request_hash: &str) -> Result<Option<PriorRequest>> {
    tx.query_opt(
        "SELECT r.device_id, r.key_id, r.hostname, r.token_salt, d.revoked_at
         FROM enrollment_requests r JOIN devices d ON d.id = r.device_id
         WHERE r.request_hash = ?1",
        params![request_hash],
        |r| {
            Ok(PriorRequest {
                device_id: r.get(0)?,
                key_id: r.get(1)?,
                hostname: r.get(2)?,
                token_salt: r.get(3)?,
                device_revoked: r.opt_str(4)?.is_some(),
            })
        },
    )
}

/// Records that the request id hashing to `request_hash` enrolled `device_id`.
pub(crate) fn record_request(
    tx: &Conn<'_>,
    request_hash: &str,
    prior: &PriorRequest,
    now: DateTime<Utc>,
) -> Result<()> {
    tx.execute(
        "INSERT INTO enrollment_requests (request_hash, device_id, key_id, hostname, token_salt, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            request_hash,
            prior.device_id,
            prior.key_id,
            prior.hostname,
            prior.token_salt,
            ts(now)
        ],
    )?;
    Ok(())
}

/// The device's first contact: the credential of its enrollment request can no
/// longer be handed out (called in the heartbeat's transaction).
pub(crate) fn acknowledge(tx: &Conn<'_>, device_id: &str) -> Result<()> {
    tx.execute(
        "UPDATE enrollment_requests SET token_salt = NULL
         WHERE device_id = ?1 AND token_salt IS NOT NULL",
        params![device_id],
    )?;
    Ok(())
}

/// The device token of the enrollment with request id `request_id` and salt
/// `salt`: HMAC-SHA256 keyed with the id, so only its holder and this server
/// together can make it, in the `fdt_` + hex shape of the random ones.
pub(crate) fn device_token_for(request_id: &str, salt: &str) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(request_id.as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(b"flex device token v1:");
    mac.update(salt.as_bytes());
    format!("fdt_{}", hex::encode(mac.finalize().into_bytes()))
}

/// Checks the request and fills in the defaults: (uses, ttl, note).
fn validate(
    req: &NewEnrollmentToken,
    default_ttl: std::time::Duration,
) -> Result<(u32, std::time::Duration, Option<String>)> {
    let uses = req.uses.unwrap_or(1);
    if uses == 0 || uses > MAX_USES {
        return Err(StoreError::invalid(
            "uses",
            format!("uses {uses} is out of range: one key enrolls 1 to {MAX_USES} devices"),
        ));
    }
    let ttl = match req.ttl.as_deref().map(str::trim) {
        None => default_ttl,
        Some(text) => {
            let ttl = humantime::parse_duration(text).map_err(|e| {
                StoreError::invalid("ttl", format!(
                    "ttl '{text}' is not a duration ({e}): write it like \"30d\", \"12h\" or \"90m\""
                ))
            })?;
            if !(MIN_TTL..=MAX_TTL).contains(&ttl) {
                return Err(StoreError::invalid(
                    "ttl",
                    format!(
                        "ttl '{text}' is out of range: a key is valid for 1 minute to 366 days"
                    ),
                ));
            }
            ttl
        }
    };
    let note = match req.note.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(n) if n.chars().count() > MAX_NOTE || n.chars().any(char::is_control) => {
            return Err(StoreError::invalid(
                "note",
                format!(
                    "note '{}' must be at most {MAX_NOTE} characters on one line",
                    n.chars().take(40).collect::<String>()
                ),
            ))
        }
        Some(n) => Some(n.to_string()),
    };
    Ok((uses, ttl, note))
}

fn state_of(
    uses_left: u32,
    expires_at: DateTime<Utc>,
    revoked: bool,
    now: DateTime<Utc>,
) -> EnrollmentTokenState {
    if revoked {
        EnrollmentTokenState::Revoked
    } else if expires_at <= now {
        EnrollmentTokenState::Expired
    } else if uses_left == 0 {
        EnrollmentTokenState::UsedUp
    } else {
        EnrollmentTokenState::Active
    }
}

const INFO_COLUMNS: &str = "id, note, uses, uses_left, created_at, expires_at, revoked_at";

fn info_row(r: &Row<'_>, now: DateTime<Utc>) -> Result<EnrollmentTokenInfo> {
    let expires_at = parse_ts(r.str(5)?)?;
    let revoked_at = r.opt_str(6)?.map(parse_ts).transpose()?;
    let uses_left: u32 = r.get(3)?;
    Ok(EnrollmentTokenInfo {
        id: r.get(0)?,
        note: r.get(1)?,
        uses: r.get(2)?,
        uses_left,
        created_at: parse_ts(r.str(4)?)?,
        expires_at,
        state: state_of(uses_left, expires_at, revoked_at.is_some(), now),
        revoked_at,
    })
}

impl Store {
    /// A new enrollment key; its secret is in the answer and nowhere else.
    pub fn create_enrollment_token(&self, req: &NewEnrollmentToken) -> Result<EnrollmentToken> {
        let (uses, ttl, note) = validate(req, self.enrollment_ttl)?;
        let now = self.now();
        let expires_at = now + chrono::Duration::from_std(ttl).expect("ttl is at most 366 days");
        let token = new_secret("fet_");
        let id = format!("ek_{}", &new_secret("")[..12]);
        self.write(|tx| {
            tx.execute(
                "INSERT INTO enrollment_keys (id, token_hash, note, uses, uses_left, created_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?4, ?5, ?6)",
                params![id, sha256_hex(token.as_bytes()), note, uses, ts(now), ts(expires_at)],
            )?;
            Ok(())
        })?;
        tracing::info!(key = %id, uses, expires_at = %ts(expires_at), "enrollment key created");
        Ok(EnrollmentToken {
            token,
            expires_at,
            id,
            uses_left: uses,
            uses,
            note,
        })
    }

    /// Every enrollment key, newest first, without secrets.
    pub fn enrollment_tokens(&self) -> Result<Vec<EnrollmentTokenInfo>> {
        let now = self.now();
        self.read(|c| {
            c.query_all(
                &format!(
                    "SELECT {INFO_COLUMNS} FROM enrollment_keys ORDER BY created_at DESC, rowid DESC"
                ),
                params![],
                |r| info_row(r, now),
            )
        })
    }

    /// Revokes key `id`: no further agent enrolls with it. Devices it already
    /// enrolled keep working. Revoking twice changes nothing.
    pub fn revoke_enrollment_token(&self, id: &str) -> Result<EnrollmentTokenInfo> {
        let now = self.now();
        let info = self.write(|tx| {
            tx.execute(
                "UPDATE enrollment_keys SET revoked_at = ?1 WHERE id = ?2 AND revoked_at IS NULL",
                params![ts(now), id],
            )?;
            tx.query_opt(
                &format!("SELECT {INFO_COLUMNS} FROM enrollment_keys WHERE id = ?1"),
                params![id],
                |r| info_row(r, now),
            )?
            .ok_or_else(|| StoreError::NotFound {
                what: "enrollment token",
                key: id.to_string(),
            })
        })?;
        tracing::info!(key = %id, "enrollment key revoked");
        Ok(info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uses: Option<u32>, ttl: Option<&str>, note: Option<&str>) -> NewEnrollmentToken {
        NewEnrollmentToken {
            uses,
            ttl: ttl.map(Into::into),
            note: note.map(Into::into),
        }
    }

    const WEEK: std::time::Duration = std::time::Duration::from_secs(7 * 86400);

    #[test]
    fn defaults_are_one_use_and_the_server_ttl() {
        let (uses, ttl, note) = validate(&req(None, None, Some("  ")), WEEK).unwrap();
        assert_eq!((uses, ttl, note), (1, WEEK, None));
        let (uses, ttl, note) =
            validate(&req(Some(1000), Some("30d"), Some(" Berlin ")), WEEK).unwrap();
        assert_eq!(uses, 1000);
        assert_eq!(ttl, std::time::Duration::from_secs(30 * 86400));
        assert_eq!(note.as_deref(), Some("Berlin"));
    }

    #[test]
    fn bad_values_are_named() {
        for (r, needle) in [
            (req(Some(0), None, None), "uses 0"),
            (req(Some(MAX_USES + 1), None, None), "uses 100001"),
            (req(None, Some("soon"), None), "ttl 'soon'"),
            (req(None, Some("10s"), None), "ttl '10s'"),
            (req(None, Some("400d"), None), "ttl '400d'"),
            (req(None, None, Some("a\nb")), "note 'a\nb'"),
        ] {
            let err = validate(&r, WEEK).unwrap_err().to_string();
            assert!(err.contains(needle), "{r:?}: {err}");
        }
    }

    #[test]
    fn state_prefers_revoked_then_expired_then_used_up() {
        let now = chrono::Utc::now();
        let later = now + chrono::Duration::hours(1);
        let earlier = now - chrono::Duration::hours(1);
        assert_eq!(state_of(1, later, false, now), EnrollmentTokenState::Active);
        assert_eq!(state_of(0, later, false, now), EnrollmentTokenState::UsedUp);
        assert_eq!(
            state_of(0, earlier, false, now),
            EnrollmentTokenState::Expired
        );
        assert_eq!(
            state_of(1, earlier, true, now),
            EnrollmentTokenState::Revoked
        );
    }
}
