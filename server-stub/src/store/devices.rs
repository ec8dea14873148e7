//! Devices: enrollment (an enrollment key for a device credential), bearer-token
//! authentication, the inventory and revocation.
//!
//! Device tokens are stored only as SHA-256 hashes: a copy of the database does
//! not let anyone act as a device. A revoked device keeps its row (its usage and
//! history stay in the reports) but its token is refused from then on.

use chrono::{DateTime, Utc};
use flex_protocol::api::{
    valid_enrollment_request_id, DeviceInfo, EnrollRequest, EnrollResponse,
    ENROLLMENT_REQUEST_ID_MAX, ENROLLMENT_REQUEST_ID_MIN,
};

use super::db::{params, Row};
use super::enrollment::{
    device_token_for, find_key, find_request, record_request, take_use, KeyRefusal, PriorRequest,
};
use super::{new_secret, parse_ts, sha256_hex, ts, Result, Store, StoreError};

/// Longest platform or agent version string kept from an agent.
const MAX_LABEL: usize = 64;

/// Who a device bearer token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceAuth {
    /// An enrolled device in good standing.
    Active(String),
    /// A device an admin revoked at the given time.
    Revoked { id: String, at: DateTime<Utc> },
    /// No device has this token.
    Unknown,
}

/// The credential an enrollment hands out.
struct Issued {
    device_id: String,
    device_token: String,
    key_id: String,
    /// A repeat of an earlier request, answered as it was.
    repeated: bool,
}

/// A short printable label from the agent, or nothing.
fn label(value: &Option<String>) -> Option<String> {
    value
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(|v| {
            v.chars()
                .filter(|c| !c.is_control())
                .take(MAX_LABEL)
                .collect()
        })
}

const DEVICE_COLUMNS: &str =
    "id, hostname, platform, agent_version, enrolled_at, last_seen, revoked_at, enrollment_key";

fn device_row(r: &Row<'_>) -> Result<DeviceInfo> {
    let revoked_at = r.opt_str(6)?.map(parse_ts).transpose()?;
    Ok(DeviceInfo {
        id: r.get(0)?,
        hostname: r.get(1)?,
        platform: r.get(2)?,
        agent_version: r.get(3)?,
        enrolled_at: parse_ts(r.str(4)?)?,
        last_seen: r.opt_str(5)?.map(parse_ts).transpose()?,
        revoked: revoked_at.is_some(),
        revoked_at,
        enrollment_token: r.get(7)?,
    })
}

/// Advisory lock key the replicas' enrollments take turns with ("flexenr").
const ENROLL_WRITERS: i64 = 0x0066_6c65_7865_6e72;

impl Store {
    /// Exchanges an enrollment key for a device credential, taking one of its
    /// uses; a repeat of the request's `enrollment_request_id` gets the
    /// original answer without taking another ([`PriorRequest::repeat`]).
    pub fn enroll(&self, req: &EnrollRequest) -> Result<EnrollResponse> {
        let hostname = req.hostname.trim();
        if hostname.is_empty() || hostname.len() > 255 || hostname.chars().any(char::is_control) {
            return Err(StoreError::invalid(
                "hostname",
                format!(
                    "hostname '{}' is not a valid host name",
                    hostname.chars().take(64).collect::<String>()
                ),
            ));
        }
        let request_id = match req.enrollment_request_id.as_deref() {
            Some(id) if !valid_enrollment_request_id(id) => {
                return Err(StoreError::invalid(
                    "enrollment_request_id",
                    format!(
                        "enrollment_request_id '{}' must be {ENROLLMENT_REQUEST_ID_MIN} to \
                         {ENROLLMENT_REQUEST_ID_MAX} characters of A-Z, a-z, 0-9, _ and -",
                        id.chars().take(16).collect::<String>()
                    ),
                ))
            }
            id => id,
        };
        let request_hash = request_id.map(|id| sha256_hex(id.as_bytes()));
        let now = self.now();
        let salt = new_secret("");
        let fresh_device_id = self.new_id();
        // Every enrollment with one key updates its use counter: in turn, or
        // a fleet enrolling at once fails on serialization conflicts.
        let answer = self.write_in_turn(ENROLL_WRITERS, |tx| {
            let key = find_key(tx, &req.enrollment_token)?;
            if let (Some(id), Some(hash)) = (request_id, &request_hash) {
                if let Some(prior) = find_request(tx, hash)? {
                    let salt = prior.repeat(key.as_ref().map(|k| k.id.as_str()), hostname)?;
                    return Ok(Issued {
                        device_token: device_token_for(id, salt),
                        device_id: prior.device_id,
                        key_id: prior.key_id,
                        repeated: true,
                    });
                }
            }
            let key = key
                .ok_or(KeyRefusal::Unknown)
                .and_then(|k| k.check(now).map(|()| k))
                .map_err(KeyRefusal::into_error)?;
            take_use(tx, &key.id)?;
            let device_token = match request_id {
                Some(id) => device_token_for(id, &salt),
                None => new_secret("fdt_"),
            };
            tx.execute(
                "INSERT INTO devices (id, hostname, token_hash, enrolled_at, platform, agent_version, enrollment_key)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    fresh_device_id,
                    hostname,
                    sha256_hex(device_token.as_bytes()),
                    ts(now),
                    label(&req.platform),
                    label(&req.agent_version),
                    key.id
                ],
            )?;
            if let Some(hash) = &request_hash {
                let request = PriorRequest {
                    device_id: fresh_device_id.clone(),
                    key_id: key.id.clone(),
                    hostname: hostname.to_string(),
                    token_salt: Some(salt.clone()),
                    device_revoked: false,
                };
                record_request(tx, hash, &request, now)?;
            }
            Ok(Issued {
                device_id: fresh_device_id.clone(),
                device_token,
                key_id: key.id,
                repeated: false,
            })
        })?;
        let Issued {
            device_id,
            device_token,
            key_id,
            repeated,
        } = answer;
        if repeated {
            tracing::info!(%device_id, hostname, key = %key_id, "enrollment request repeated: the original answer sent again");
        } else {
            tracing::info!(%device_id, hostname, key = %key_id, "device enrolled");
        }
        Ok(EnrollResponse {
            device_id,
            device_token,
            lease_keys: vec![self.signer().public_key()],
        })
    }

    /// The device a bearer token belongs to, and whether it may still call.
    pub fn authenticate_device(&self, token: &str) -> Result<DeviceAuth> {
        let hash = sha256_hex(token.as_bytes());
        let row: Option<(String, Option<String>)> = self.read(|c| {
            c.query_opt(
                "SELECT id, revoked_at FROM devices WHERE token_hash = ?1",
                params![hash],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
        })?;
        Ok(match row {
            None => DeviceAuth::Unknown,
            Some((id, None)) => DeviceAuth::Active(id),
            Some((id, Some(at))) => DeviceAuth::Revoked {
                id,
                at: parse_ts(&at)?,
            },
        })
    }

    /// Whether the server knows `email`, asked by device `device_id` (its
    /// `flexctl doctor`); counts as the device speaking for that user.
    pub fn check_user(
        &self,
        device_id: &str,
        email: &flex_protocol::Email,
    ) -> Result<flex_protocol::api::UserCheck> {
        let now = self.now();
        self.write(|tx| {
            super::device_users::spoke_for(tx, device_id, email, self.policy(), now)?;
            let known = super::users::load_user(tx, email)?.is_some();
            Ok(flex_protocol::api::UserCheck {
                email: email.clone(),
                known,
            })
        })
    }

    /// Every device, newest enrollment first.
    pub fn devices(&self) -> Result<Vec<DeviceInfo>> {
        self.read(|c| {
            c.query_all(
                &format!(
                    "SELECT {DEVICE_COLUMNS} FROM devices ORDER BY enrolled_at DESC, rowid DESC"
                ),
                params![],
                device_row,
            )
        })
    }

    /// Revokes device `id`: its token is refused from the next request on.
    /// Revoking twice keeps the first time.
    pub fn revoke_device(&self, id: &str) -> Result<DeviceInfo> {
        let now = self.now();
        let device = self.write(|tx| {
            tx.execute(
                "UPDATE devices SET revoked_at = ?1 WHERE id = ?2 AND revoked_at IS NULL",
                params![ts(now), id],
            )?;
            tx.query_opt(
                &format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE id = ?1"),
                params![id],
                device_row,
            )?
            .ok_or_else(|| StoreError::NotFound {
                what: "device",
                key: id.to_string(),
            })
        })?;
        tracing::warn!(device_id = %id, hostname = %device.hostname, "device revoked");
        Ok(device)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use flex_protocol::api::NewEnrollmentToken;
    use flex_protocol::ErrorCode;

    use super::*;
    use crate::clock::TestClock;
    use crate::config::PolicyConfig;
    use crate::rates::RateSheet;
    use crate::store::testing::{backends, TestBackend};
    use crate::store::Database;

    fn store(backend: &TestBackend) -> (Arc<Store>, TestClock) {
        let clock = TestClock::new("2026-11-02T08:00:00Z".parse().unwrap());
        let s = backend.open(
            Arc::new(clock.clone()),
            PolicyConfig::default(),
            RateSheet::sample(),
        );
        (Arc::new(s), clock)
    }

    fn enroll(s: &Store, token: &str, host: &str) -> Result<EnrollResponse> {
        s.enroll(&EnrollRequest {
            enrollment_token: token.into(),
            hostname: host.into(),
            platform: Some("linux".into()),
            agent_version: Some("9.9.9".into()),
            enrollment_request_id: None,
        })
    }

    fn key(s: &Store, uses: u32, ttl: &str) -> String {
        s.create_enrollment_token(&NewEnrollmentToken {
            uses: Some(uses),
            ttl: Some(ttl.into()),
            note: None,
        })
        .unwrap()
        .token
    }

    #[test]
    fn a_fleet_enrolling_at_once_with_one_key_all_enroll() {
        // Found by the fleet bench: on PostgreSQL every enrollment updates
        // the key's use counter, and under SERIALIZABLE one of 10,000 (64 at
        // once) ran out of retries (a 500). They now take turns. 48 at once
        // here pass without the turns too (the retries absorb them).
        for backend in backends() {
            let (s, _) = store(&backend);
            let token = key(&s, 48, "1d");
            let handles: Vec<_> = (0..48)
                .map(|i| {
                    let (s, token) = (s.clone(), token.clone());
                    std::thread::spawn(move || enroll(&s, &token, &format!("ws-{i}")))
                })
                .collect();
            for h in handles {
                h.join().unwrap().expect("every agent of the fleet enrolls");
            }
            assert_eq!(s.devices().unwrap().len(), 48);
        }
    }

    #[test]
    fn a_key_enrolls_exactly_its_uses_even_when_agents_race() {
        for backend in backends() {
            a_key_enrolls_exactly_its_uses_even_when_agents_race_on(&backend);
        }
    }

    fn a_key_enrolls_exactly_its_uses_even_when_agents_race_on(backend: &TestBackend) {
        let (s, _) = store(backend);
        let token = key(&s, 3, "1d");
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let (s, token) = (s.clone(), token.clone());
                std::thread::spawn(move || enroll(&s, &token, &format!("ws-{i}")).is_ok())
            })
            .collect();
        let ok = handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|ok| *ok)
            .count();
        assert_eq!(ok, 3);
        assert_eq!(s.devices().unwrap().len(), 3);
        let err = enroll(&s, &token, "ws-9").unwrap_err().to_string();
        assert!(err.contains("enrolled 3 device(s), its limit"), "{err}");
        let list = s.enrollment_tokens().unwrap();
        assert_eq!((list[0].uses, list[0].uses_left), (3, 0));
        assert_eq!(
            list[0].state,
            flex_protocol::api::EnrollmentTokenState::UsedUp
        );
        let d = &s.devices().unwrap()[0];
        assert_eq!(d.platform.as_deref(), Some("linux"));
        assert_eq!(d.agent_version.as_deref(), Some("9.9.9"));
        assert_eq!(d.enrollment_token.as_deref(), Some(list[0].id.as_str()));
    }

    #[test]
    fn expired_and_revoked_keys_are_refused_and_use_nothing() {
        for backend in backends() {
            expired_and_revoked_keys_are_refused_and_use_nothing_on(&backend);
        }
    }

    fn expired_and_revoked_keys_are_refused_and_use_nothing_on(backend: &TestBackend) {
        let (s, clock) = store(backend);
        let token = key(&s, 5, "1h");
        clock.advance(chrono::Duration::hours(2));
        let err = enroll(&s, &token, "ws-1").unwrap_err();
        assert!(matches!(err, StoreError::Expired(_)), "{err:?}");
        assert!(
            err.to_string().contains("expired at 2026-11-02T09:00:00"),
            "{err}"
        );
        let api = crate::api::error::ApiError::from(err);
        assert_eq!(
            (api.status.as_u16(), api.code),
            (401, ErrorCode::EnrollmentTokenExpired)
        );

        let token = key(&s, 5, "1d");
        let id = s.enrollment_tokens().unwrap()[0].id.clone();
        let revoked = s.revoke_enrollment_token(&id).unwrap();
        assert_eq!(revoked.uses_left, 5);
        let err = enroll(&s, &token, "ws-1").unwrap_err().to_string();
        assert!(err.contains("revoked"), "{err}");
        assert!(s.devices().unwrap().is_empty());
        assert!(matches!(
            s.revoke_enrollment_token("ek_nope"),
            Err(StoreError::NotFound { .. })
        ));
        let err = enroll(&s, "fet_guess", "ws-1").unwrap_err().to_string();
        assert!(err.contains("not known"), "{err}");
    }

    #[test]
    fn a_revoked_device_is_refused_and_stays_listed() {
        for backend in backends() {
            a_revoked_device_is_refused_and_stays_listed_on(&backend);
        }
    }

    fn a_revoked_device_is_refused_and_stays_listed_on(backend: &TestBackend) {
        let (s, clock) = store(backend);
        let d = enroll(&s, &key(&s, 1, "1d"), "ws-1").unwrap();
        assert_eq!(
            s.authenticate_device(&d.device_token).unwrap(),
            DeviceAuth::Active(d.device_id.clone())
        );
        clock.advance(chrono::Duration::minutes(5));
        let first = s.revoke_device(&d.device_id).unwrap();
        assert!(first.revoked);
        clock.advance(chrono::Duration::minutes(5));
        assert_eq!(
            s.revoke_device(&d.device_id).unwrap().revoked_at,
            first.revoked_at
        );
        assert_eq!(
            s.authenticate_device(&d.device_token).unwrap(),
            DeviceAuth::Revoked {
                id: d.device_id.clone(),
                at: first.revoked_at.unwrap()
            }
        );
        assert_eq!(s.authenticate_device("fdt_x").unwrap(), DeviceAuth::Unknown);
        assert_eq!(s.devices().unwrap().len(), 1);
    }

    #[test]
    fn single_use_tokens_of_the_first_schema_carry_over() {
        // SQLite's schema history; PostgreSQL starts from today's schema.
        let backend = TestBackend::sqlite();
        let Database::Sqlite { data_dir } = &backend.database else {
            unreachable!()
        };
        let path = data_dir.join("flex.db");
        {
            let c = rusqlite::Connection::open(&path).unwrap();
            c.execute_batch(super::super::schema::SQLITE[0]).unwrap();
            c.pragma_update(None, "user_version", 1).unwrap();
            c.execute(
                "INSERT INTO enrollment_tokens (token_hash, created_at, expires_at, used_at) VALUES
                 (?1, '2026-11-01T00:00:00.000000Z', '2026-11-09T00:00:00.000000Z', NULL),
                 (?2, '2026-11-01T00:00:00.000000Z', '2026-11-09T00:00:00.000000Z', '2026-11-01T01:00:00.000000Z')",
                [sha256_hex(b"fet_fresh"), sha256_hex(b"fet_used")],
            )
            .unwrap();
        }
        let (s, _) = store(&backend);
        assert!(enroll(&s, "fet_used", "ws-1").is_err());
        enroll(&s, "fet_fresh", "ws-1").unwrap();
        assert!(enroll(&s, "fet_fresh", "ws-2").is_err());
    }

    fn enroll_with_request(s: &Store, token: &str, host: &str, id: &str) -> Result<EnrollResponse> {
        s.enroll(&EnrollRequest {
            enrollment_token: token.into(),
            hostname: host.into(),
            platform: Some("windows".into()),
            agent_version: Some("9.9.9".into()),
            enrollment_request_id: Some(id.into()),
        })
    }

    const REQUEST: &str = "fer_0123456789abcdef0123456789abcdef";

    /// Issue 18, item 1: the answer was lost (a proxy slower than the agent's
    /// timeout, a service stopped mid-request) and the agent asks again with
    /// the same request id: the same device and credential, no second use.
    #[test]
    fn a_lost_enroll_answer_is_recovered_by_its_request_id() {
        for backend in backends() {
            a_lost_enroll_answer_is_recovered_by_its_request_id_on(&backend);
        }
    }

    fn a_lost_enroll_answer_is_recovered_by_its_request_id_on(backend: &TestBackend) {
        let (s, _) = store(backend);
        let token = key(&s, 2, "1d");
        let first = enroll_with_request(&s, &token, "ws-1", REQUEST).unwrap();
        let again = enroll_with_request(&s, &token, "ws-1", REQUEST).unwrap();
        assert_eq!(again, first);
        assert_eq!(s.devices().unwrap().len(), 1);
        assert_eq!(s.enrollment_tokens().unwrap()[0].uses_left, 1);
        assert_eq!(
            s.authenticate_device(&first.device_token).unwrap(),
            DeviceAuth::Active(first.device_id.clone())
        );
        // Only the id's hash is kept, and the credential is not derivable
        // from the database alone.
        let stored: String = s
            .read(|c| {
                c.query_one(
                    "SELECT request_hash || hostname || token_salt FROM enrollment_requests",
                    params![],
                    |r| r.get(0),
                )
            })
            .unwrap();
        assert!(!stored.contains(REQUEST) && !stored.contains(&first.device_token));
        // Another id is another enrollment: a new device, the key's last use.
        let other = enroll_with_request(&s, &token, "ws-1", &format!("{REQUEST}-2")).unwrap();
        assert_ne!(other.device_id, first.device_id);
        assert_eq!(s.enrollment_tokens().unwrap()[0].uses_left, 0);
        // The used-up key still answers the original request.
        assert_eq!(
            enroll_with_request(&s, &token, "ws-1", REQUEST).unwrap(),
            first
        );
    }

    #[test]
    fn a_request_id_answers_only_its_own_token_and_host_and_only_until_first_contact() {
        for backend in backends() {
            a_request_id_answers_only_its_own_token_and_host_and_only_until_first_contact_on(
                &backend,
            );
        }
    }

    fn a_request_id_answers_only_its_own_token_and_host_and_only_until_first_contact_on(
        backend: &TestBackend,
    ) {
        let (s, _) = store(backend);
        let (token, other_key) = (key(&s, 5, "1d"), key(&s, 5, "1d"));
        let first = enroll_with_request(&s, &token, "ws-1", REQUEST).unwrap();
        for (t, host) in [
            (&other_key, "ws-1"),
            (&token, "ws-2"),
            (&"fet_guess".to_string(), "ws-1"),
        ] {
            let err = enroll_with_request(&s, t, host, REQUEST).unwrap_err();
            assert!(
                matches!(err, StoreError::Conflict(_)),
                "{t} {host}: {err:?}"
            );
        }
        // The device's first heartbeat: its credential is never handed out again.
        s.heartbeat(
            &first.device_id,
            &flex_protocol::api::HeartbeatRequest {
                sessions: Vec::new(),
                clock_rollbacks: Vec::new(),
                notices_after: None,
                agent_version: None,
            },
        )
        .unwrap();
        let err = enroll_with_request(&s, &token, "ws-1", REQUEST).unwrap_err();
        assert!(
            matches!(&err, StoreError::Conflict(m) if m.contains("contacted the server since")),
            "{err:?}"
        );
        assert_eq!(s.devices().unwrap().len(), 1);
        // A revoked device's request is refused as the device is.
        let second = enroll_with_request(&s, &token, "ws-3", &format!("{REQUEST}-3")).unwrap();
        s.revoke_device(&second.device_id).unwrap();
        let err = enroll_with_request(&s, &token, "ws-3", &format!("{REQUEST}-3")).unwrap_err();
        assert!(matches!(err, StoreError::Unauthorized(_)), "{err:?}");
        // Malformed ids are named and use nothing.
        for bad in [
            "short",
            &"x".repeat(129),
            "fer_0123456789abcdef0123456789abcdef!",
        ] {
            let err = enroll_with_request(&s, &token, "ws-9", bad).unwrap_err();
            assert!(
                matches!(&err, StoreError::Invalid(i) if i.field == "enrollment_request_id"),
                "{bad}: {err:?}"
            );
        }
        assert_eq!(s.enrollment_tokens().unwrap()[1].uses_left, 3);
    }

    #[test]
    fn labels_are_trimmed_capped_and_printable() {
        assert_eq!(label(&None), None);
        assert_eq!(label(&Some("  ".into())), None);
        assert_eq!(label(&Some(" linux\n".into())).as_deref(), Some("linux"));
        assert_eq!(label(&Some("x".repeat(100))).unwrap().len(), MAX_LABEL);
    }
}
