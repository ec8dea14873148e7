use std::os::unix::fs::PermissionsExt;

use super::*;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn file_round_trip_with_private_modes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    let store = CredentialStore::file(&dir);
    store.save(&DeviceToken::new("dt-secret-1")).unwrap();
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join(TOKEN_FILE)), 0o600);
    assert_eq!(store.load().unwrap().expose(), "dt-secret-1");

    // Replacing keeps the mode and leaves no temp file behind.
    store.save(&DeviceToken::new("dt-secret-2")).unwrap();
    assert_eq!(store.load().unwrap().expose(), "dt-secret-2");
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, vec![TOKEN_FILE.to_string()]);
}

#[test]
fn existing_open_state_dir_is_tightened() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    CredentialStore::file(&dir)
        .save(&DeviceToken::new("t"))
        .unwrap();
    assert_eq!(mode(&dir), 0o700);
}

#[test]
fn a_shared_directory_is_refused_not_tightened() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tmp-like");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let err = CredentialStore::file(&dir)
        .save(&DeviceToken::new("t"))
        .unwrap_err();
    assert!(matches!(err, CredentialError::SharedDir { .. }), "{err:?}");
    assert!(err.to_string().contains("1777"), "{err}");
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o7777,
        0o1777
    );
    assert!(!dir.join(TOKEN_FILE).exists());
}

#[test]
fn write_goes_through_a_temp_file_and_rename() {
    // A reader holding the old file keeps the old bytes: the write replaced the
    // directory entry (rename) instead of rewriting the file in place.
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("f");
    write_private_file(&path, b"old").unwrap();
    let before = std::fs::File::open(&path).unwrap();
    write_private_file(&path, b"new").unwrap();
    let mut old = String::new();
    std::io::Read::read_to_string(&mut &before, &mut old).unwrap();
    assert_eq!(old, "old");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
    assert_eq!(mode(&path), 0o600);
}

#[test]
fn a_world_readable_token_file_is_tightened_on_read() {
    let tmp = tempfile::tempdir().unwrap();
    let store = CredentialStore::file(tmp.path());
    store.save(&DeviceToken::new("t\n")).unwrap();
    let path = tmp.path().join(TOKEN_FILE);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(store.load().unwrap().expose(), "t");
    assert_eq!(mode(&path), 0o600);
}

#[test]
fn missing_and_empty_tokens_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let store = CredentialStore::file(tmp.path());
    let err = store.load().unwrap_err();
    assert!(matches!(err, CredentialError::Missing { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("no device token")
            && msg.contains(TOKEN_FILE)
            && msg.contains("flex-agent enroll"),
        "{msg}"
    );
    std::fs::write(tmp.path().join(TOKEN_FILE), "\n").unwrap();
    let msg = store.load().unwrap_err().to_string();
    assert!(msg.contains("is empty"), "{msg}");
    store.delete().unwrap();
    store.delete().unwrap();
    assert!(matches!(store.load(), Err(CredentialError::Missing { .. })));
}

#[test]
fn secrets_never_show_in_debug() {
    let token = DeviceToken::new("dt-very-secret");
    assert_eq!(format!("{token:?}"), "DeviceToken(<redacted>)");
    let tmp = tempfile::tempdir().unwrap();
    let store = CredentialStore::file(tmp.path());
    store.save(&token).unwrap();
    assert!(!format!("{store:?}").contains("dt-very-secret"));
}

#[test]
fn describe_names_the_file() {
    let store = CredentialStore::file(Path::new("/var/lib/flex-agent"));
    assert_eq!(store.describe(), "file:/var/lib/flex-agent/device-token");
    assert!(!store.is_keyring());
}

#[test]
fn auto_without_a_session_bus_uses_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    for bus in [None, Some(OsString::new())] {
        let store = CredentialStore::select_with(StoreChoice::Auto, tmp.path(), bus).unwrap();
        assert!(!store.is_keyring());
    }
}

#[test]
fn choice_parses_from_config_words() {
    assert_eq!("auto".parse::<StoreChoice>().unwrap(), StoreChoice::Auto);
    assert_eq!("file".parse::<StoreChoice>().unwrap(), StoreChoice::File);
    assert_eq!(
        "keyring".parse::<StoreChoice>().unwrap(),
        StoreChoice::Keyring
    );
    let err = "kernel".parse::<StoreChoice>().unwrap_err().to_string();
    assert!(err.contains("'kernel'"), "{err}");
    let c: StoreChoice = serde_json::from_str("\"keyring\"").unwrap();
    assert_eq!(c, StoreChoice::Keyring);
}

#[tokio::test]
async fn async_wrappers_run_off_the_runtime() {
    let tmp = tempfile::tempdir().unwrap();
    let store = CredentialStore::select_async(StoreChoice::File, tmp.path().to_path_buf())
        .await
        .unwrap();
    store.save_async(DeviceToken::new("async-t")).await.unwrap();
    assert_eq!(store.load_async().await.unwrap().expose(), "async-t");
    store.delete_async().await.unwrap();
    assert!(store.load_async().await.is_err());
}

/// libdbus reads `DBUS_SESSION_BUS_ADDRESS` from the process environment, and
/// changing it inside this multi-threaded test process is unsound (another test
/// here sets it for its own bus), so the keyring tests run as child processes of
/// this test binary with the address in their environment.
const CHILD_STATE_DIR: &str = "FLEX_TEST_KEYRING_STATE_DIR";

fn run_child(test: &str, bus_address: &str, state_dir: &Path) {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            test,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("DBUS_SESSION_BUS_ADDRESS", bus_address)
        .env(CHILD_STATE_DIR, state_dir)
        .output()
        .expect("run the keyring child test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "child test {test} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The child's state dir and bus address, as the parent set them.
fn child_env() -> (PathBuf, Option<OsString>) {
    let state = PathBuf::from(
        std::env::var_os(CHILD_STATE_DIR).expect("run through the parent keyring test"),
    );
    let bus = std::env::var_os("DBUS_SESSION_BUS_ADDRESS");
    assert!(bus.is_some(), "the parent test sets the bus address");
    (state, bus)
}

#[test]
fn auto_with_an_unreachable_bus_falls_back_to_the_file() {
    let state = tempfile::tempdir().unwrap();
    let bus = format!("unix:path={}", state.path().join("no-bus").display());
    run_child(
        "credentials::tests::keyring_child_unreachable",
        &bus,
        state.path(),
    );
}

#[test]
#[ignore = "run by auto_with_an_unreachable_bus_falls_back_to_the_file"]
fn keyring_child_unreachable() {
    let (state, bus) = child_env();
    let store = CredentialStore::select_with(StoreChoice::Auto, &state, bus.clone()).unwrap();
    assert!(!store.is_keyring(), "{}", store.describe());
    let err = CredentialStore::select_with(StoreChoice::Keyring, &state, bus).unwrap_err();
    assert!(
        err.to_string()
            .contains("(Secret Service) is not reachable"),
        "{err}"
    );
}

#[test]
fn keyring_round_trip_against_a_real_secret_service() {
    let ss = crate::testsupport::SecretService::start();
    let state = tempfile::tempdir().unwrap();
    run_child(
        "credentials::tests::keyring_child_round_trip",
        &ss.bus.address,
        state.path(),
    );
}

#[test]
#[ignore = "run by keyring_round_trip_against_a_real_secret_service with a private bus"]
fn keyring_child_round_trip() {
    let (state, bus) = child_env();

    // A token file from an earlier file-backed enrollment: found while the keyring
    // is empty, removed once the keyring holds the token.
    CredentialStore::file(&state)
        .save(&DeviceToken::new("old-file-token"))
        .unwrap();
    let store = CredentialStore::select_with(StoreChoice::Auto, &state, bus).unwrap();
    assert!(store.is_keyring(), "auto chose {}", store.describe());
    assert_eq!(store.describe(), "keyring (Secret Service)");
    assert_eq!(store.load().unwrap().expose(), "old-file-token");

    store.save(&DeviceToken::new("dt-keyring-secret")).unwrap();
    assert!(
        !state.join(TOKEN_FILE).exists(),
        "token must not stay in the file"
    );

    // A fresh connection reads what the daemon stored.
    let again = CredentialStore::keyring(&state).unwrap();
    assert_eq!(again.load().unwrap().expose(), "dt-keyring-secret");
    assert!(CredentialStore::file(&state).load().is_err());

    // Keyed by state dir: another agent's entry is separate.
    let other = tempfile::tempdir().unwrap();
    let other_store = CredentialStore::keyring(other.path()).unwrap();
    assert!(matches!(
        other_store.load(),
        Err(CredentialError::Missing { .. })
    ));

    again.delete().unwrap();
    assert!(matches!(again.load(), Err(CredentialError::Missing { .. })));
}

#[test]
fn enrollment_probes_the_store_before_the_token_is_spent() {
    // A session bus with no Secret Service on it (a minimal desktop, `sudo -E`).
    let bus = crate::testsupport::PrivateBus::start();
    let state = tempfile::tempdir().unwrap();
    run_child(
        "credentials::tests::keyring_child_bus_without_secret_service",
        &bus.address,
        state.path(),
    );
}

#[test]
#[ignore = "run by enrollment_probes_the_store_before_the_token_is_spent"]
fn keyring_child_bus_without_secret_service() {
    let (state, _bus) = child_env();
    // auto: the OS store fails its test write, so the token goes to the file.
    let store = CredentialStore::select_for_enrollment(StoreChoice::Auto, &state).unwrap();
    assert!(!store.is_keyring(), "{}", store.describe());
    assert!(!state.join(".device-token.probe").exists());
    // keyring: the failure comes before any enrollment token is redeemed.
    let err = CredentialStore::select_for_enrollment(StoreChoice::Keyring, &state).unwrap_err();
    assert!(err.to_string().contains("Secret Service"), "{err}");
}

#[test]
fn the_file_store_is_probed_without_touching_the_token() {
    let tmp = tempfile::tempdir().unwrap();
    let store = CredentialStore::file(tmp.path());
    store.save(&DeviceToken::new("kept")).unwrap();
    store.probe().unwrap();
    assert_eq!(store.load().unwrap().expose(), "kept");
    let names: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, vec![TOKEN_FILE.to_string()]);
    // A state dir that cannot be made private fails the probe.
    let shared = tmp.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    assert!(CredentialStore::file(&shared).probe().is_err());
}
