//! The file backend on Windows: the token file is a DPAPI blob.

use super::*;

#[test]
fn file_backend_seals_the_token_with_dpapi() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let store = CredentialStore::file(&state);
    assert!(
        store.describe().ends_with("device-token (DPAPI)"),
        "{}",
        store.describe()
    );
    assert!(matches!(store.load(), Err(CredentialError::Missing { .. })));
    let token = DeviceToken::new("dev_secret_7f3a");
    store.save(&token).unwrap();
    let on_disk = std::fs::read(state.join(TOKEN_FILE)).unwrap();
    assert!(
        !on_disk
            .windows(token.expose().len())
            .any(|w| w == token.expose().as_bytes()),
        "the file must not hold the token in clear"
    );
    assert_eq!(store.load().unwrap(), token);
    // A file that is not a DPAPI blob of this machine is refused, not used.
    std::fs::write(state.join(TOKEN_FILE), b"dev_plain_text").unwrap();
    let err = store.load().unwrap_err().to_string();
    assert!(err.contains("DPAPI") && err.contains("enroll"), "{err}");
    store.delete().unwrap();
    assert!(!state.join(TOKEN_FILE).exists());
}

#[test]
fn credential_manager_round_trip() {
    // Windows' Credential Manager (Wine keeps it in the registry).
    let dir = tempfile::tempdir().unwrap();
    let store = CredentialStore::keyring(dir.path()).expect("Credential Manager reachable");
    assert_eq!(store.describe(), "keyring (Windows Credential Manager)");
    let token = DeviceToken::new("dev_keyring_9c1d");
    store.save(&token).unwrap();
    assert_eq!(store.load().unwrap(), token);
    store.delete().unwrap();
    assert!(matches!(store.load(), Err(CredentialError::Missing { .. })));
}
