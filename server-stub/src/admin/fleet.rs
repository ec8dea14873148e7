//! Human output of the fleet commands: `enroll-token` (create, list, revoke)
//! and `devices` (list, revoke).

use chrono::{DateTime, SecondsFormat, Utc};
use flex_protocol::api::{DeviceInfo, DeviceList, EnrollmentToken, EnrollmentTokenInfo};

use super::table::Table;

fn time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A new token: the only time its secret is shown, with how to hand it out.
pub fn created(t: &EnrollmentToken) -> String {
    let mut out = format!(
        "enrollment token: {}\nid:               {}\nuses:             {} agent(s)\nexpires:          {}\n",
        t.token,
        t.id,
        t.uses,
        time(&t.expires_at)
    );
    if let Some(note) = &t.note {
        out.push_str(&format!("note:             {note}\n"));
    }
    out.push_str(
        "The token is shown only now and stored hashed: keep it like a password.\n\
         Install it on each workstation as /etc/flex-agent/enroll-token (mode 0600), or\n\
         run install.sh --token-file FILE; the agent enrolls itself at its next start.\n",
    );
    out
}

pub fn tokens(list: &[EnrollmentTokenInfo]) -> String {
    if list.is_empty() {
        return "no enrollment tokens yet: create one with `flex-admin enroll-token --uses N`\n"
            .to_owned();
    }
    let mut t = Table::new(&["ID", "STATE", "USES", "LEFT", "EXPIRES", "NOTE"]).right(&[2, 3]);
    for k in list {
        t.row([
            k.id.clone(),
            k.state.as_str().to_owned(),
            k.uses.to_string(),
            k.uses_left.to_string(),
            time(&k.expires_at),
            k.note.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    t.render()
}

pub fn token_revoked(k: &EnrollmentTokenInfo) -> String {
    format!(
        "enrollment token {} is revoked ({} use(s) were left); devices it enrolled keep working\n",
        k.id, k.uses_left
    )
}

pub fn devices(list: &DeviceList) -> String {
    if list.devices.is_empty() {
        return "no devices enrolled yet: create a token with `flex-admin enroll-token`\n"
            .to_owned();
    }
    let mut t = Table::new(&[
        "ID",
        "HOSTNAME",
        "PLATFORM",
        "AGENT",
        "ENROLLED",
        "LAST SEEN",
        "STATE",
    ]);
    for d in &list.devices {
        t.row([
            d.id.clone(),
            d.hostname.clone(),
            d.platform.clone().unwrap_or_else(|| "-".into()),
            d.agent_version.clone().unwrap_or_else(|| "-".into()),
            time(&d.enrolled_at),
            d.last_seen.as_ref().map_or("never".into(), time),
            if d.revoked { "revoked" } else { "active" }.to_owned(),
        ]);
    }
    t.render()
}

pub fn device_revoked(d: &DeviceInfo) -> String {
    format!(
        "device {} ({}) is revoked{}: the server refuses its credential, and its agent \
         closes products when their windows end; enroll it again to bring it back\n",
        d.id,
        d.hostname,
        d.revoked_at
            .as_ref()
            .map(|t| format!(" since {}", time(t)))
            .unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn de<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_new_token_is_shown_once_with_how_to_use_it() {
        let out = created(&de(json!({"token": "fet_abc", "id": "ek_1", "uses": 3,
            "uses_left": 3, "expires_at": "2026-03-16T10:00:00Z", "note": "lab"})));
        assert!(
            out.starts_with(
                "enrollment token: fet_abc\nid:               ek_1\nuses:             3 agent(s)\n"
            ),
            "{out}"
        );
        assert!(
            out.contains("note:             lab\n") && out.contains("/etc/flex-agent/enroll-token"),
            "{out}"
        );
    }

    #[test]
    fn tokens_and_devices_are_tables() {
        let list: Vec<EnrollmentTokenInfo> = de(json!([{"id": "ek_1", "uses": 3, "uses_left": 0,
            "created_at": "2026-03-15T10:00:00Z", "expires_at": "2026-03-22T10:00:00Z",
            "state": "used_up"}]));
        assert_eq!(
            tokens(&list),
            "ID    STATE    USES  LEFT  EXPIRES               NOTE\n\
             ek_1  used_up     3     0  2026-03-22T10:00:00Z  -\n"
        );
        let list: DeviceList = de(json!({"devices": [{"id": "d-1", "hostname": "ws-1",
            "platform": "linux", "agent_version": "0.2.0", "enrolled_at": "2026-03-15T10:00:00Z",
            "last_seen": null, "revoked": true}]}));
        assert_eq!(
            devices(&list),
            "ID   HOSTNAME  PLATFORM  AGENT  ENROLLED              LAST SEEN  STATE\n\
             d-1  ws-1      linux     0.2.0  2026-03-15T10:00:00Z  never      revoked\n"
        );
        assert!(tokens(&[]).contains("flex-admin enroll-token"));
    }
}
