//! A Wine prefix for the Windows end-to-end tests: the Windows agent, its MSI
//! and `flexctl.exe`, run under Wine against a Linux `flex-server` on loopback.
//!
//! Each [`Wine`] has a prefix of its own in a temp dir, prepared by
//! `tests/wine/prepare.sh` (which also builds the test-only helpers with mingw:
//! the ProcessPrng shim and a small GUI product with a version resource).
//! Wine ends its services once the last ordinary process of a prefix exits,
//! so a [`Wine`] keeps one alive (`ping -n 3600`) for its whole life, and stops
//! the whole prefix (`wineserver -k`) when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// The repository's root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A build output of the Windows target (`target/x86_64-pc-windows-gnu/debug/NAME`).
pub fn windows_bin(name: &str) -> PathBuf {
    let path = repo_root()
        .join("target/x86_64-pc-windows-gnu/debug")
        .join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build -p flex-agent --bins --target \
         x86_64-pc-windows-gnu` (tests/run.sh does this)",
        path.display()
    );
    path
}

/// The MSI `install/windows/build-msi.sh --debug` made.
pub fn msi() -> PathBuf {
    let dir = repo_root().join("target/windows");
    let found = std::fs::read_dir(&dir).ok().and_then(|entries| {
        entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "msi"))
    });
    found.unwrap_or_else(|| {
        panic!(
            "no MSI in {}: run `bash install/windows/build-msi.sh --debug` (tests/run.sh does this)",
            dir.display()
        )
    })
}

/// An MSI of the same debug build with `version` (a new product code, as
/// every build has), made by `build-msi.sh` in `dir`: a major upgrade of
/// [`msi`]'s when the version is higher, a rebuild when it is the same, a
/// downgrade when lower.
pub fn msi_version(version: &str, dir: &Path) -> PathBuf {
    let out = dir.join(format!("flex-agent-{version}-x64.msi"));
    windows_bin("flex-agent.exe");
    let made = Command::new("bash")
        .arg("install/windows/build-msi.sh")
        .args(["--debug", "--version", version, "--out"])
        .arg(&out)
        .current_dir(repo_root())
        .output()
        .expect("run install/windows/build-msi.sh");
    assert!(
        made.status.success(),
        "build-msi.sh failed: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    out
}

/// What Wine's `msiexec` exits with for Windows Installer's 1603 (a fatal
/// error: a bad property, a refused downgrade): Linux keeps only the low byte
/// of a process's exit code. On Windows it is 1603.
pub const MSI_FAILED: i32 = 1603 & 0xff;

pub struct Wine {
    _tmp: tempfile::TempDir,
    pub prefix: PathBuf,
    /// Where prepare.sh put the helpers (shim, fake product).
    pub helpers: PathBuf,
    wine: PathBuf,
    keepalive: Option<Child>,
}

impl Wine {
    /// A new prefix, with the keep-alive process running.
    pub fn new() -> Wine {
        let tmp = tempfile::tempdir().expect("temp dir for the Wine prefix");
        let prefix = tmp.path().join("prefix");
        let helpers = repo_root().join("target/wine");
        let out = Command::new("bash")
            .arg("-c")
            .arg("source tests/wine/prepare.sh && wine_prepare && echo \"$WINE\"")
            .current_dir(repo_root())
            .env("FLEX_WINEPREFIX", &prefix)
            .output()
            .expect("run tests/wine/prepare.sh");
        assert!(
            out.status.success(),
            "preparing Wine failed (is wine64 installed? tests/run.sh installs it): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let wine = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let mut w = Wine {
            _tmp: tmp,
            prefix,
            helpers,
            wine,
            keepalive: None,
        };
        // A debug build loads slowly under Wine: give services the time a
        // slow machine gets (ServicesPipeTimeout, a Windows setting too).
        let timeout = w.run(
            "reg",
            &[
                "add",
                r"HKLM\System\CurrentControlSet\Control",
                "/v",
                "ServicesPipeTimeout",
                "/t",
                "REG_DWORD",
                "/d",
                "60000",
                "/f",
            ],
        );
        assert!(
            timeout.status.success(),
            "reg add ServicesPipeTimeout: {}: {}{}",
            timeout.status,
            String::from_utf8_lossy(&timeout.stdout),
            String::from_utf8_lossy(&timeout.stderr)
        );
        // Test setup only: the MSI's custom action DLL runs from a temp file,
        // so the ProcessPrng shim goes where every process finds it.
        w.shim_into(r"C:\windows\system32");
        w.keep_alive();
        w.bring_up_desktop();
        w
    }

    fn keep_alive(&mut self) {
        let keepalive = self
            .cmd("cmd")
            .args(["/c", "ping", "-n", "3600", "127.0.0.1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the keep-alive process");
        self.keepalive = Some(keepalive);
        // Wine's system processes (and the services they start) inherit the
        // open files of whichever process brings Wine up: make that one with
        // no output of ours, so they never hold a test's pipe open.
        let up = self
            .cmd("cmd")
            .args(["/c", "exit"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("start Wine");
        assert!(
            up.success(),
            "Wine did not start in {}",
            self.prefix.display()
        );
    }

    /// Brings up the desktop process (explorer.exe /desktop) with no output
    /// of ours, as [`keep_alive`](Self::keep_alive) does Wine: Wine starts it
    /// for the first program that wants a window, and were that the agent
    /// started by msiexec, it would hold msiexec's output open for good. A
    /// window that closes at once brings it up; before any agent is
    /// installed, so no agent takes it for a product.
    fn bring_up_desktop(&self) {
        let desktop = self
            .cmd(self.helpers.join("fake-product.exe"))
            .arg("0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("start the desktop");
        assert!(desktop.success(), "no desktop in {}", self.prefix.display());
    }

    /// Ends every process of the prefix and starts Wine again, as a reboot
    /// would. Wine's service manager sees a service that msiexec installed
    /// only after this (Wine 8: until then `sc start` answers 1060 or times
    /// out with 1053); Windows needs no such step.
    pub fn reboot(&mut self) {
        self.stop_all();
        self.keep_alive();
    }

    fn stop_all(&mut self) {
        let server = self.wine.with_file_name("wineserver");
        let _ = Command::new(&server)
            .arg("-k")
            .env("WINEPREFIX", &self.prefix)
            .status();
        // -w: wait until the wineserver of this prefix has exited.
        let _ = Command::new(server)
            .arg("-w")
            .env("WINEPREFIX", &self.prefix)
            .status();
        if let Some(mut k) = self.keepalive.take() {
            let _ = k.kill();
            let _ = k.wait();
        }
    }

    /// `wine PROGRAM`, in this prefix, ready for arguments.
    pub fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(&self.wine);
        c.arg(program)
            .env("WINEPREFIX", &self.prefix)
            .env("WINEDEBUG", "-all")
            .env("WINEDLLOVERRIDES", "mscoree,mshtml=")
            .env_remove("DISPLAY");
        c
    }

    /// Runs `wine PROGRAM ARGS...` to its end: its exit and what it printed.
    ///
    /// The output goes to files, not pipes: a Wine process that this one
    /// starts and that outlives it (the desktop process after a
    /// [`reboot`](Self::reboot), the service manager) keeps its Unix stderr,
    /// and reading a pipe to its end would then wait for good.
    pub fn run(&self, program: &str, args: &[&str]) -> Output {
        use std::io::{Read, Seek};
        let fail = |e: std::io::Error| -> ! { panic!("run wine {program}: {e}") };
        let mut out = tempfile::tempfile().unwrap_or_else(|e| fail(e));
        let mut err = tempfile::tempfile().unwrap_or_else(|e| fail(e));
        let status = self
            .cmd(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap_or_else(|e| fail(e)))
            .stderr(err.try_clone().unwrap_or_else(|e| fail(e)))
            .status()
            .unwrap_or_else(|e| fail(e));
        let read = |f: &mut std::fs::File| {
            let mut bytes = Vec::new();
            f.rewind()
                .and_then(|()| f.read_to_end(&mut bytes))
                .unwrap_or_else(|e| fail(e));
            bytes
        };
        Output {
            status,
            stdout: read(&mut out),
            stderr: read(&mut err),
        }
    }

    /// The Linux path of Windows path `C:\...` in this prefix.
    pub fn host_path(&self, windows: &str) -> PathBuf {
        let rest = windows
            .strip_prefix("C:\\")
            .or_else(|| windows.strip_prefix("c:\\"))
            .expect("a C:\\ path");
        let mut p = self.prefix.join("drive_c");
        for part in rest.split('\\').filter(|s| !s.is_empty()) {
            p.push(part);
        }
        p
    }

    /// The Windows path (`Z:\...`) of a Linux path.
    pub fn windows_path(host: &Path) -> String {
        format!("Z:{}", host.display()).replace('/', "\\")
    }

    /// Copies a Linux file to Windows path `to`, creating its folder.
    pub fn put(&self, from: &Path, to: &str) -> PathBuf {
        let dest = self.host_path(to);
        std::fs::create_dir_all(dest.parent().expect("a parent")).expect("create folder");
        std::fs::copy(from, &dest).unwrap_or_else(|e| panic!("copy {from:?} to {dest:?}: {e}"));
        dest
    }

    /// Places the ProcessPrng shim beside the executables in Windows folder
    /// `dir` (test setup only: Wine 8 lacks ProcessPrng, Windows has it).
    pub fn shim_into(&self, dir: &str) {
        self.put(
            &self.helpers.join("bcryptprimitives.dll"),
            &format!("{dir}\\bcryptprimitives.dll"),
        );
    }
}

impl Wine {
    /// The Windows Installer products named `name` in "Add/Remove Programs"
    /// (the Uninstall key), by product code.
    pub fn installed_products(&self, name: &str) -> Vec<String> {
        let out = self.run(
            "reg",
            &[
                "query",
                r"HKLM\Software\Microsoft\Windows\CurrentVersion\Uninstall",
                "/s",
            ],
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let mut products = Vec::new();
        let mut key = "";
        for line in text.lines() {
            if line.starts_with("HKEY_") {
                key = line.rsplit('\\').next().unwrap_or_default();
            } else if line.trim_start().starts_with("DisplayName")
                && line.trim_end().ends_with(name)
            {
                products.push(key.to_string());
            }
        }
        products
    }
}

impl Default for Wine {
    fn default() -> Self {
        Wine::new()
    }
}

impl Wine {
    /// Prints the agent service's log files (a failed test's evidence).
    pub fn print_agent_logs(&self) {
        let dir = self.host_path(r"C:\ProgramData\Flex\logs");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            eprintln!("no agent logs in {}", dir.display());
            return;
        };
        for e in entries.flatten() {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            eprintln!("---- {}\n{text}", e.path().display());
        }
    }
}

impl Drop for Wine {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_agent_logs();
        }
        self.stop_all();
    }
}
