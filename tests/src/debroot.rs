//! A throwaway Debian root for package tests: this machine's own root file
//! system under an overlay whose writable layer is a tmpfs, in a private mount
//! namespace, entered with `chroot`. `dpkg -i` in it changes nothing on the
//! machine; everything it wrote is in the upper layer, and all of it vanishes
//! when the [`DebRoot`] is dropped (the namespace dies with its holder process).
//!
//! Needs root, util-linux (`unshare`, `nsenter`) and overlayfs. Files inside are
//! reached through `/proc/HOLDER/root`, commands through `nsenter` + `chroot`,
//! always with stdin closed so any prompt fails instead of waiting.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// The environment of a command in the root: nothing from the test's own.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub struct DebRoot {
    holder: Child,
    /// The merged root, as a path inside the holder's mount namespace.
    merged: PathBuf,
    /// The writable layer, same.
    upper: PathBuf,
    _dir: tempfile::TempDir,
}

/// Mount commands that show the repository and the built binaries inside the
/// root at their own paths, read-only: a clone under /tmp (or on a mount the
/// overlay of / does not carry) would otherwise be hidden by the root's own /tmp.
fn visible_inside(merged: &Path) -> String {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .canonicalize()
        .expect("workspace root");
    let bins = crate::bin("flex-agent")
        .parent()
        .expect("binaries' directory")
        .canonicalize()
        .expect("binaries' directory");
    let mut dirs = vec![repo];
    if !bins.starts_with(&dirs[0]) {
        dirs.push(bins);
    }
    dirs.iter()
        .map(|d| {
            let (d, m) = (d.display(), merged.display());
            format!(
                "mkdir -p '{m}{d}' && mount --bind '{d}' '{m}{d}' && mount -o remount,bind,ro '{m}{d}'"
            )
        })
        .collect::<Vec<_>>()
        .join("\n             ")
}

impl DebRoot {
    /// Sets up the namespace, the overlay and /proc, /dev, /run, /tmp in it.
    pub fn create() -> DebRoot {
        // SAFETY: geteuid(2) cannot fail and touches no memory.
        assert!(
            unsafe { libc::geteuid() } == 0,
            "the package tests install .deb files into a throwaway root: run them as root (tests/run.sh does)"
        );
        let dir = tempfile::tempdir().expect("temp dir for the overlay");
        let base = dir.path().to_path_buf();
        let merged = base.join("merged");
        let upper = base.join("layer/upper");
        let script = format!(
            "set -e
             mount -t tmpfs -o mode=0755 flex-test {base}
             mkdir -p {base}/layer/upper {base}/layer/work {m}
             mount -t overlay flex-test -o lowerdir=/,upperdir={base}/layer/upper,workdir={base}/layer/work {m}
             mount -t proc proc {m}/proc
             mount --rbind /dev {m}/dev
             mount -t tmpfs -o mode=0755 tmpfs {m}/run
             mount -t tmpfs -o mode=1777 tmpfs {m}/tmp
             {visible}
             echo ready
             exec sleep 3600",
            base = base.display(),
            m = merged.display(),
            visible = visible_inside(&merged),
        );
        let mut holder = Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                &script,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run unshare (util-linux)");
        let mut line = String::new();
        BufReader::new(holder.stdout.take().expect("holder stdout"))
            .read_line(&mut line)
            .expect("read the holder's readiness");
        if line.trim() != "ready" {
            let _ = holder.kill();
            let _ = holder.wait();
            panic!("cannot set up the overlay root (needs root and overlayfs)");
        }
        DebRoot {
            holder,
            merged,
            upper,
            _dir: dir,
        }
    }

    /// `path` (absolute, as seen inside the root) as the test sees it.
    pub fn path(&self, path: &str) -> PathBuf {
        let inner = path.trim_start_matches('/');
        PathBuf::from(format!("/proc/{}/root", self.holder.id()))
            .join(self.merged.strip_prefix("/").expect("absolute"))
            .join(inner)
    }

    /// What was written or deleted in the root since it was made, as paths inside it.
    pub fn changes(&self) -> Vec<String> {
        let upper = PathBuf::from(format!("/proc/{}/root", self.holder.id()))
            .join(self.upper.strip_prefix("/").expect("absolute"));
        let mut out = Vec::new();
        walk(&upper, &upper, &mut out);
        out.sort();
        out
    }

    /// `chroot ROOT ARGS...` in the namespace, stdin closed, a clean environment.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg("--target")
            .arg(self.holder.id().to_string())
            .args(["--mount", "--", "chroot"])
            .arg(&self.merged)
            .args([
                "env",
                "-i",
                &format!("PATH={PATH}"),
                "DEBIAN_FRONTEND=noninteractive",
                "LC_ALL=C",
            ])
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `args` in the root to its end.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args)
            .output()
            .expect("run nsenter (util-linux)")
    }

    /// Runs `args` in the root; panics with its output unless it succeeds.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "{args:?} failed ({}):\n{text}",
            out.status
        );
        text
    }

    /// Copies a file from the machine into the root at `dest`.
    pub fn put(&self, src: &Path, dest: &str) {
        let to = self.path(dest);
        std::fs::create_dir_all(to.parent().expect("a parent")).expect("mkdir in the root");
        std::fs::copy(src, &to)
            .unwrap_or_else(|e| panic!("copy {} into the root: {e}", src.display()));
    }
}

fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let rel = format!("/{}", path.strip_prefix(base).unwrap().display());
        let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
        out.push(rel);
        if is_dir {
            walk(base, &path, out);
        }
    }
}

impl Drop for DebRoot {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}
