//! `flexctl wrap`: the launchers it writes are valid desktop entries
//! (`desktop-file-validate`, Debian package desktop-file-utils) and their
//! `Exec` really starts the product through `flexctl run`, charged by a real
//! agent and server.

use std::path::Path;
use std::process::{Command, Output};

use flex_e2e::agent::{flex_server, Agent, Rates, SHORT_POLICY};
use flex_e2e::bin;

fn flexctl() -> Command {
    Command::new(bin("flexctl"))
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// `desktop-file-validate FILE` passes without a word.
fn validate(path: &Path) {
    let out = Command::new("desktop-file-validate")
        .arg(path)
        .output()
        .expect("desktop-file-validate (tests/run.sh installs desktop-file-utils)");
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "{}: {}{}\n{}",
        path.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(path).unwrap_or_default()
    );
}

/// The value of the first `KEY=` line of `entry`.
fn key<'a>(entry: &'a str, key: &str) -> &'a str {
    entry
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in:\n{entry}"))
}

/// The arguments an `Exec` value stands for, as a desktop would run it with no
/// files: the value's backslash escapes, then its quoting; field codes dropped.
fn exec_args(value: &str) -> Vec<String> {
    let unescaped = value.replace("\\\\", "\\");
    let mut args = Vec::new();
    let mut cur: Option<String> = None;
    let mut chars = unescaped.chars();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (false, ' ') => args.extend(cur.take()),
            (false, '"') => {
                quoted = true;
                cur.get_or_insert_with(String::new);
            }
            (true, '"') => quoted = false,
            (true, '\\') => cur.get_or_insert_with(String::new).extend(chars.next()),
            (_, c) => cur.get_or_insert_with(String::new).push(c),
        }
    }
    args.extend(cur);
    args.into_iter()
        .filter(|a| !matches!(a.as_str(), "%f" | "%F" | "%u" | "%U" | "%i" | "%c" | "%k"))
        .map(|a| a.replace("%%", "%"))
        .collect()
}

#[test]
fn a_new_entry_is_valid_and_quotes_the_command() {
    let dir = tempfile::tempdir().unwrap();
    let entry = ok(flexctl()
        .args(["wrap", "--product", "autocad", "--name", "AutoCAD", "--"])
        .args(["/opt/My Apps/acad", "--title=a$b \"c\" 100%", "%F"])
        .output()
        .unwrap());
    let path = dir.path().join("flex-autocad.desktop");
    std::fs::write(&path, &entry).unwrap();
    validate(&path);
    assert_eq!(key(&entry, "Name"), "AutoCAD");
    assert_eq!(key(&entry, "X-Flex-Product"), "autocad");
    let flexctl = std::fs::canonicalize(bin("flexctl")).unwrap();
    assert_eq!(
        exec_args(key(&entry, "Exec")),
        [
            flexctl.to_str().unwrap(),
            "run",
            "--product",
            "autocad",
            "--",
            "/opt/My Apps/acad",
            "--title=a$b \"c\" 100%",
        ]
    );
}

#[test]
fn the_vendor_launcher_is_rewritten_and_installed_where_it_takes_precedence() {
    let dir = tempfile::tempdir().unwrap();
    let vendor = dir.path().join("autodesk-autocad.desktop");
    std::fs::write(
        &vendor,
        "[Desktop Entry]\nType=Application\nName=AutoCAD 2026\nGenericName=CAD\nIcon=acad\n\
         Exec=/opt/autodesk/acad %F\nTerminal=false\nCategories=Graphics;Engineering;\n\
         MimeType=application/acad;\nActions=safe;\n\n\
         [Desktop Action safe]\nName=Safe mode\nExec=/opt/autodesk/acad --safe\n",
    )
    .unwrap();
    validate(&vendor);
    let apps = dir.path().join("share/applications");
    let said = ok(flexctl()
        .args([
            "wrap",
            "--product",
            "autocad",
            "--version",
            "2026",
            "--from",
        ])
        .arg(&vendor)
        .arg("--install")
        .arg("--dir")
        .arg(&apps)
        .output()
        .unwrap());
    let installed = apps.join("autodesk-autocad.desktop");
    assert!(said.contains(&installed.display().to_string()), "{said}");
    validate(&installed);
    let entry = std::fs::read_to_string(&installed).unwrap();
    assert_eq!(key(&entry, "Name"), "AutoCAD 2026", "kept");
    assert_eq!(key(&entry, "Icon"), "acad", "kept");
    let execs: Vec<Vec<String>> = entry
        .lines()
        .filter_map(|l| l.strip_prefix("Exec="))
        .map(exec_args)
        .collect();
    assert_eq!(execs.len(), 2, "the action too:\n{entry}");
    for (exec, tail) in execs.iter().zip([
        &["/opt/autodesk/acad"][..],
        &["/opt/autodesk/acad", "--safe"][..],
    ]) {
        assert_eq!(
            exec[1..6],
            ["run", "--product", "autocad", "--version", "2026"]
        );
        assert_eq!(exec[6], "--");
        assert_eq!(&exec[7..], tail);
    }
    // Wrapping the wrapped launcher again is refused: it would run two wrappers.
    let again = flexctl()
        .args(["wrap", "--product", "autocad", "--from"])
        .arg(&installed)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already starts autocad"),
        "{again:?}"
    );
}

#[test]
fn windows_prints_the_shortcut_target() {
    let out = ok(flexctl()
        .args([
            "wrap",
            "--product",
            "autocad",
            "--name",
            "AutoCAD",
            "--windows",
            "--",
        ])
        .arg(r"C:\Program Files\Autodesk\AutoCAD 2026\acad.exe")
        .output()
        .unwrap());
    assert!(
        out.contains(r#"Target     "C:\Program Files\Flex\flexctl.exe" run --product autocad -- "C:\Program Files\Autodesk\AutoCAD 2026\acad.exe""#),
        "{out}"
    );
    assert!(out.contains("CreateShortcut("), "{out}");
}

/// The launcher's `Exec`, run as a desktop would, goes through the agent: the
/// product is charged once and its exit code comes back.
#[tokio::test(flavor = "multi_thread")]
async fn the_launcher_starts_the_product_through_the_agent() {
    let rates = Rates::unique();
    let server = flex_server(SHORT_POLICY, Some(&rates), 500).await;
    let agent = Agent::start(&server, "").await;
    let marker = agent.dir.path().join("it ran");
    let entry = ok(agent
        .flexctl()
        .args(["wrap", "--product", "autocad", "--name", "AutoCAD", "--"])
        .args(["sh", "-c", &format!("touch '{}'; exit 4", marker.display())])
        .output()
        .unwrap());
    let path = agent.dir.path().join("flex-autocad.desktop");
    std::fs::write(&path, &entry).unwrap();
    validate(&path);
    let args = exec_args(key(&entry, "Exec"));
    assert!(args.contains(&"--socket".to_string()), "{args:?}");
    let out = Command::new(&args[0]).args(&args[1..]).output().unwrap();
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert!(marker.exists());
    let charges = server.charges().await;
    assert_eq!(charges.len(), 1, "{charges:?}");
    assert_eq!(charges[0]["product"], "autocad");
}
