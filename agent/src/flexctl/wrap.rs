//! `flexctl wrap`: the launcher change that starts a product through
//! `flexctl run`.
//!
//! On Linux that is a desktop entry (freedesktop Desktop Entry Specification,
//! version 1.4 keys) whose `Exec` is `flexctl run --product P -- <the product's command>`:
//! a new one from a command line, or the vendor's own entry (`--from`) with
//! every `Exec` (its actions' too) rewritten and nothing else changed. Installed
//! (`--install`) under the same file name in `~/.local/share/applications`, or
//! `/usr/local/share/applications` for root, it hides the vendor's copy in
//! `/usr/share/applications` and survives the vendor's updates. For Windows
//! (`--windows`) it prints the shortcut's target, arguments, folder and icon,
//! and a PowerShell snippet that creates the shortcut.
//!
//! Everything here is text in, text out; [`install`] is the only write.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Where flexctl lives on Windows (the MSI's layout).
pub const WINDOWS_FLEXCTL: &str = r"C:\Program Files\Flex\flexctl.exe";

/// Errors of `flexctl wrap`. Messages say what to do next.
#[derive(Debug, thiserror::Error)]
pub enum WrapError {
    #[error("cannot read the launcher {}: {source}; give the path of an existing .desktop file", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a desktop entry: {why}", path.display())]
    NotAnEntry { path: PathBuf, why: String },
    #[error("{} already starts {product} through flexctl run (X-Flex-Product); nothing to do", path.display())]
    AlreadyWrapped { path: PathBuf, product: String },
    #[error("cannot write {}: {source}; choose a directory you may write to with --dir", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("'{0}' cannot go in a launcher: it contains a line break")]
    LineBreak(String),
    #[error("no home directory to install into: set HOME or XDG_DATA_HOME, or give --dir")]
    NoHome,
}

/// What goes before the product's own command in a launcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunPrefix {
    /// flexctl's absolute path.
    pub flexctl: String,
    /// `--socket PATH`, when the agent is not at the default path.
    pub socket: Option<String>,
    pub product: String,
    pub version: Option<String>,
}

impl RunPrefix {
    /// `flexctl [--socket S] run --product P [--version V] --`, as arguments.
    fn args(&self) -> Vec<String> {
        let mut args = vec![self.flexctl.clone()];
        if let Some(s) = &self.socket {
            args.extend(["--socket".into(), s.clone()]);
        }
        args.extend(["run".into(), "--product".into(), self.product.clone()]);
        if let Some(v) = &self.version {
            args.extend(["--version".into(), v.clone()]);
        }
        args.push("--".into());
        args
    }
}

/// The field codes a launcher passes through as they are (files, URLs, icon,
/// name, location).
const FIELD_CODES: [&str; 7] = ["%f", "%F", "%u", "%U", "%i", "%c", "%k"];

/// One argument of an `Exec` value: quoted when it has a reserved character,
/// `%` doubled, then the value's own backslash escaping applied (so a literal
/// backslash inside quotes is written as four).
fn exec_arg(arg: &str) -> Result<String, WrapError> {
    if arg.contains(['\n', '\r']) {
        return Err(WrapError::LineBreak(arg.to_string()));
    }
    if FIELD_CODES.contains(&arg) {
        return Ok(arg.to_string());
    }
    let reserved = |c: char| " \t\"'\\><~|&;$*?#()`".contains(c);
    let quoted = if arg.is_empty() || arg.contains(reserved) {
        let mut q = String::from("\"");
        for c in arg.chars() {
            if matches!(c, '"' | '`' | '$' | '\\') {
                q.push('\\');
            }
            q.push(c);
        }
        q.push('"');
        q
    } else {
        arg.to_string()
    };
    Ok(quoted.replace('%', "%%").replace('\\', "\\\\"))
}

/// A whole `Exec` value from arguments.
fn exec_line(args: &[String]) -> Result<String, WrapError> {
    Ok(args
        .iter()
        .map(|a| exec_arg(a))
        .collect::<Result<Vec<_>, _>>()?
        .join(" "))
}

/// A new desktop entry that runs `command` through `prefix`.
pub fn new_entry(prefix: &RunPrefix, name: &str, command: &[String]) -> Result<String, WrapError> {
    if name.contains(['\n', '\r']) {
        return Err(WrapError::LineBreak(name.to_string()));
    }
    let mut args = prefix.args();
    args.extend(command.iter().cloned());
    let mut out = String::new();
    let _ = writeln!(out, "[Desktop Entry]");
    let _ = writeln!(out, "Type=Application");
    let _ = writeln!(out, "Version=1.4");
    let _ = writeln!(out, "Name={name}");
    let _ = writeln!(out, "Comment=Starts {name} with a Flex license");
    let _ = writeln!(out, "Exec={}", exec_line(&args)?);
    let _ = writeln!(out, "Terminal=false");
    let _ = writeln!(out, "X-Flex-Product={}", prefix.product);
    Ok(out)
}

/// The vendor's entry `text` (read from `path`) with every `Exec` going
/// through `prefix`, `Name` replaced when `name` is given (its translations
/// and GNOME's full name dropped), D-Bus activation turned off (it would
/// bypass `Exec`), and `X-Flex-Product` added.
pub fn rewrite_entry(
    path: &Path,
    text: &str,
    prefix: &RunPrefix,
    name: Option<&str>,
) -> Result<String, WrapError> {
    let not_entry = |why: &str| WrapError::NotAnEntry {
        path: path.to_owned(),
        why: why.to_string(),
    };
    let first_group = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'));
    if first_group != Some("[Desktop Entry]") {
        return Err(not_entry("its first group is not [Desktop Entry]"));
    }
    if let Some(name) = name.filter(|n| n.contains(['\n', '\r'])) {
        return Err(WrapError::LineBreak(name.to_string()));
    }
    let prefix_exec = exec_line(&prefix.args())?;
    let mut out = String::with_capacity(text.len() + 256);
    let mut group = String::new();
    let mut main_exec = false;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with('[') {
            group = trimmed.trim_end().to_string();
            let _ = writeln!(out, "{line}");
            if group == "[Desktop Entry]" {
                let _ = writeln!(out, "X-Flex-Product={}", prefix.product);
            }
            continue;
        }
        let key = trimmed.split('=').next().unwrap_or("").trim_end();
        let value = trimmed
            .split_once('=')
            .map(|(_, v)| v.trim_start())
            .unwrap_or("");
        let in_entry = group == "[Desktop Entry]";
        let in_action = group.starts_with("[Desktop Action ");
        match key {
            "X-Flex-Product" if in_entry => {
                return Err(WrapError::AlreadyWrapped {
                    path: path.to_owned(),
                    product: value.to_string(),
                })
            }
            "Exec" if in_entry || in_action => {
                main_exec |= in_entry;
                let _ = writeln!(out, "Exec={prefix_exec} {value}");
            }
            "Name" if in_entry && name.is_some() => {
                let _ = writeln!(out, "Name={}", name.unwrap_or_default());
            }
            // Renamed: the vendor's translations of the old name would show
            // it again on every desktop in another language, and GNOME shows
            // its full name in place of Name. Descriptions (GenericName,
            // Comment, Keywords) and their translations still hold.
            _ if in_entry && name.is_some() && renames(key) => {}
            "DBusActivatable" if in_entry => {
                let _ = writeln!(out, "DBusActivatable=false");
            }
            _ => {
                let _ = writeln!(out, "{line}");
            }
        }
    }
    if !main_exec {
        return Err(not_entry(
            "its [Desktop Entry] has no Exec line (a link or a D-Bus-only application): give the product's command after --",
        ));
    }
    Ok(out)
}

/// Keys that give the entry's name in some language or desktop: dropped
/// when the entry is renamed (`Name` itself is replaced).
fn renames(key: &str) -> bool {
    let base = key.split('[').next().unwrap_or(key);
    (base == "Name" && key != "Name") || base == "X-GNOME-FullName"
}

/// Where `--install` writes: `dir` if given, else `/usr/local/share/applications`
/// for root (every user) or `$XDG_DATA_HOME/applications`
/// (`~/.local/share/applications`) for anyone else.
pub fn install_dir(
    dir: Option<&Path>,
    root: bool,
    xdg_data_home: Option<&str>,
    home: Option<&str>,
) -> Result<PathBuf, WrapError> {
    if let Some(d) = dir {
        return Ok(d.to_owned());
    }
    if root {
        return Ok(PathBuf::from("/usr/local/share/applications"));
    }
    match (
        xdg_data_home.filter(|x| x.starts_with('/')),
        home.filter(|h| !h.is_empty()),
    ) {
        (Some(x), _) => Ok(Path::new(x).join("applications")),
        (None, Some(h)) => Ok(Path::new(h).join(".local/share/applications")),
        (None, None) => Err(WrapError::NoHome),
    }
}

/// Writes `entry` as `dir/file_name` (0644), through a temporary file and a
/// rename so a desktop never reads half an entry. Returns the path.
pub fn install(dir: &Path, file_name: &str, entry: &str) -> Result<PathBuf, WrapError> {
    use std::io::Write;
    let path = dir.join(file_name);
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let err = |source| WrapError::Write {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    let written = (|| {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o644);
        let mut file = options.open(&tmp)?;
        // Readable by every user's desktop, whatever the umask.
        #[cfg(unix)]
        file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
        file.write_all(entry.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    Ok(path)
}

/// One argument of a Windows command line, quoted the way programs split it
/// (`CommandLineToArgvW`): quotes around anything with a space, tab or quote,
/// backslashes before a quote doubled.
fn windows_arg(arg: &str) -> String {
    if !arg.is_empty() && !arg.contains([' ', '\t', '"']) {
        return arg.to_string();
    }
    let mut out = String::from("\"");
    let mut backslashes = 0;
    for c in arg.chars() {
        match c {
            '\\' => backslashes += 1,
            '"' => {
                out.push_str(&"\\".repeat(backslashes * 2 + 1));
                backslashes = 0;
            }
            _ => {
                out.push_str(&"\\".repeat(backslashes));
                backslashes = 0;
            }
        }
        if c != '\\' {
            out.push(c);
        }
    }
    out.push_str(&"\\".repeat(backslashes * 2));
    out.push('"');
    out
}

/// A PowerShell single-quoted string.
fn ps_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The Windows shortcut that starts `command` through `prefix`: its fields,
/// and a PowerShell snippet that creates it on the public desktop.
pub fn windows_shortcut(prefix: &RunPrefix, name: &str, command: &[String]) -> String {
    let target = prefix.flexctl.clone();
    let mut args: Vec<String> = prefix.args().into_iter().skip(1).collect();
    args.extend(command.iter().cloned());
    let arguments = args
        .iter()
        .map(|a| windows_arg(a))
        .collect::<Vec<_>>()
        .join(" ");
    let exe = command.first().cloned().unwrap_or_default();
    let folder = exe
        .rfind(['\\', '/'])
        .map(|i| exe[..i].to_string())
        .unwrap_or_default();
    let icon = format!("{exe},0");
    let file = format!(
        "{}.lnk",
        name.replace(['\\', '/', ':', '*', '?', '"', '<', '>', '|'], "_")
    );
    let mut out = String::new();
    let _ = writeln!(out, "Shortcut for {name} through the Flex wrapper:");
    let _ = writeln!(out, "  Target     {} {arguments}", windows_arg(&target));
    let _ = writeln!(out, "  Start in   {folder}");
    let _ = writeln!(out, "  Icon       {icon}");
    let _ = writeln!(out, "  Run        Minimized");
    let _ = writeln!(out);
    let _ = writeln!(out, "PowerShell (elevated), to create it for every user:");
    let _ = writeln!(
        out,
        "$s = (New-Object -ComObject WScript.Shell).CreateShortcut(\"$env:PUBLIC\\Desktop\\{}\")",
        file.replace('"', "`\"").replace('$', "`$")
    );
    let _ = writeln!(out, "$s.TargetPath = {}", ps_quote(&target));
    let _ = writeln!(out, "$s.Arguments = {}", ps_quote(&arguments));
    let _ = writeln!(out, "$s.WorkingDirectory = {}", ps_quote(&folder));
    let _ = writeln!(out, "$s.IconLocation = {}", ps_quote(&icon));
    let _ = writeln!(out, "$s.WindowStyle = 7");
    let _ = writeln!(out, "$s.Save()");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix() -> RunPrefix {
        RunPrefix {
            flexctl: "/usr/bin/flexctl".into(),
            socket: None,
            product: "autocad".into(),
            version: None,
        }
    }

    #[test]
    fn exec_quotes_reserved_characters_and_keeps_field_codes() {
        let line = exec_line(&[
            "/opt/My App/acad".into(),
            "--title=a$b".into(),
            "100%".into(),
            r"C:\dir".into(),
            "%F".into(),
            "plain".into(),
        ])
        .unwrap();
        assert_eq!(
            line,
            r#""/opt/My App/acad" "--title=a\\$b" 100%% "C:\\\\dir" %F plain"#
        );
        assert!(exec_line(&["a\nb".into()]).is_err());
    }

    #[test]
    fn a_new_entry_runs_the_command_through_flexctl() {
        let e = new_entry(
            &prefix(),
            "AutoCAD",
            &["/opt/acad/acad".into(), "%f".into()],
        )
        .unwrap();
        assert!(e.starts_with("[Desktop Entry]\nType=Application\n"), "{e}");
        assert!(e.contains("\nName=AutoCAD\n"), "{e}");
        assert!(
            e.contains("\nExec=/usr/bin/flexctl run --product autocad -- /opt/acad/acad %f\n"),
            "{e}"
        );
        assert!(e.contains("\nX-Flex-Product=autocad\n"), "{e}");
    }

    #[test]
    fn the_vendor_entry_keeps_everything_but_its_execs() {
        let vendor = "# vendor file\n[Desktop Entry]\nType=Application\nName=AutoCAD 2026\nName[de]=AutoCAD 2026\n\
                      Icon=acad\nExec=/opt/acad/acad %F\nTryExec=/opt/acad/acad\nDBusActivatable=true\nActions=safe;\n\n\
                      [Desktop Action safe]\nName=Safe mode\nExec=/opt/acad/acad --safe\n";
        let mut p = prefix();
        p.socket = Some("/tmp/agent.sock".into());
        let e = rewrite_entry(Path::new("acad.desktop"), vendor, &p, None).unwrap();
        assert_eq!(
            e,
            "# vendor file\n[Desktop Entry]\nX-Flex-Product=autocad\nType=Application\nName=AutoCAD 2026\n\
             Name[de]=AutoCAD 2026\nIcon=acad\n\
             Exec=/usr/bin/flexctl --socket /tmp/agent.sock run --product autocad -- /opt/acad/acad %F\n\
             TryExec=/opt/acad/acad\nDBusActivatable=false\nActions=safe;\n\n\
             [Desktop Action safe]\nName=Safe mode\n\
             Exec=/usr/bin/flexctl --socket /tmp/agent.sock run --product autocad -- /opt/acad/acad --safe\n"
        );
        // Wrapping twice would charge through two wrappers: refused.
        let again = rewrite_entry(Path::new("acad.desktop"), &e, &p, None).unwrap_err();
        assert!(matches!(again, WrapError::AlreadyWrapped { .. }), "{again}");
        // Not an entry, or one without a command.
        assert!(rewrite_entry(Path::new("x"), "[Other]\nExec=x\n", &p, None).is_err());
        assert!(rewrite_entry(
            Path::new("x"),
            "[Desktop Entry]\nType=Link\nURL=https://example.com\n",
            &p,
            None
        )
        .is_err());
    }

    #[test]
    fn a_renamed_entry_drops_the_old_names_translations() {
        let vendor = "[Desktop Entry]\nType=Application\nName=AutoCAD 2026\nName[de]=AutoCAD 2026\n\
                      Name[ja]=AutoCAD 2026 日本語\nX-GNOME-FullName=Autodesk AutoCAD 2026\n\
                      X-GNOME-FullName[fr]=Autodesk AutoCAD 2026\nGenericName=CAD\nGenericName[de]=CAD-Programm\n\
                      Comment[de]=Zeichnen\nExec=/opt/acad/acad %F\nActions=safe;\n\n\
                      [Desktop Action safe]\nName=Safe mode\nName[de]=Abgesicherter Modus\nExec=/opt/acad/acad --safe\n";
        let e = rewrite_entry(
            Path::new("acad.desktop"),
            vendor,
            &prefix(),
            Some("AutoCAD (Flex)"),
        )
        .unwrap();
        assert!(e.contains("\nName=AutoCAD (Flex)\n"), "{e}");
        let main_group = e.split("[Desktop Action").next().unwrap();
        for gone in ["Name[de]", "Name[ja]", "X-GNOME-FullName"] {
            assert!(
                !main_group.lines().any(|l| l.starts_with(gone)),
                "{gone} kept in:\n{e}"
            );
        }
        // What the program is, in every language, and the actions' own names stay.
        for kept in [
            "GenericName=CAD\n",
            "GenericName[de]=CAD-Programm\n",
            "Comment[de]=Zeichnen\n",
            "[Desktop Action safe]\nName=Safe mode\nName[de]=Abgesicherter Modus\n",
        ] {
            assert!(e.contains(kept), "{kept:?} lost in:\n{e}");
        }
        // Not renamed: the vendor's names and their translations stay.
        let same = rewrite_entry(Path::new("acad.desktop"), vendor, &prefix(), None).unwrap();
        assert!(same.contains("\nName[de]=AutoCAD 2026\n"), "{same}");
        assert!(
            same.contains("\nX-GNOME-FullName=Autodesk AutoCAD 2026\n"),
            "{same}"
        );
    }

    #[test]
    fn install_goes_where_it_hides_the_vendor_copy() {
        assert_eq!(
            install_dir(None, true, None, Some("/root")).unwrap(),
            Path::new("/usr/local/share/applications")
        );
        assert_eq!(
            install_dir(None, false, Some("/x/data"), Some("/home/ada")).unwrap(),
            Path::new("/x/data/applications")
        );
        assert_eq!(
            install_dir(None, false, Some("relative"), Some("/home/ada")).unwrap(),
            Path::new("/home/ada/.local/share/applications")
        );
        assert!(install_dir(None, false, None, None).is_err());
        let dir = tempfile::tempdir().unwrap();
        let path = install(
            &dir.path().join("apps"),
            "acad.desktop",
            "[Desktop Entry]\n",
        )
        .unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "[Desktop Entry]\n");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o644);
        }
    }

    #[test]
    fn windows_shortcut_target_and_snippet() {
        let p = RunPrefix {
            flexctl: WINDOWS_FLEXCTL.into(),
            ..prefix()
        };
        let s = windows_shortcut(
            &p,
            "AutoCAD",
            &[r"C:\Program Files\Autodesk\AutoCAD 2026\acad.exe".into()],
        );
        assert!(
            s.contains(
                r#"  Target     "C:\Program Files\Flex\flexctl.exe" run --product autocad -- "C:\Program Files\Autodesk\AutoCAD 2026\acad.exe""#
            ),
            "{s}"
        );
        assert!(
            s.contains(r"  Start in   C:\Program Files\Autodesk\AutoCAD 2026"),
            "{s}"
        );
        assert!(
            s.contains(r#"CreateShortcut("$env:PUBLIC\Desktop\AutoCAD.lnk")"#),
            "{s}"
        );
        assert!(
            s.contains(r#"$s.Arguments = 'run --product autocad -- "C:\Program Files\Autodesk\AutoCAD 2026\acad.exe"'"#),
            "{s}"
        );
        assert_eq!(windows_arg(r#"a "b" c\"#), r#""a \"b\" c\\""#);
        assert_eq!(windows_arg(""), r#""""#);
    }
}
