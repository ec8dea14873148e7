//! A private X server for tests: Xvfb (Debian package `xvfb`) on a display
//! number it picks itself (`-displayfd`), so tests never assume a running
//! display or fight over one. Ready once it has printed that number.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};

/// An Xvfb server, killed on drop.
pub struct Xvfb {
    child: Child,
    /// `:N`, for `DISPLAY`.
    pub display: String,
}

impl Xvfb {
    pub fn start() -> Xvfb {
        let mut child = Command::new("Xvfb")
            // Xvfb writes the display number it chose to fd 1 once it accepts
            // connections: a free number, and the readiness signal.
            .args([
                "-displayfd",
                "1",
                "-screen",
                "0",
                "800x600x24",
                "-nolisten",
                "tcp",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start Xvfb ({e}): install it (apt-get install -y xvfb)")
            });
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("Xvfb stdout"))
            .read_line(&mut line)
            .expect("read Xvfb's display number");
        let number = line.trim();
        if number.parse::<u32>().is_err() {
            let status = child.wait().ok();
            panic!("Xvfb exited without a display number ({status:?}, printed {line:?})");
        }
        Xvfb {
            display: format!(":{number}"),
            child,
        }
    }

    /// `xdotool ARGS` on this display (Debian package `xdotool`); panics
    /// when it fails.
    pub fn xdotool(&self, args: &[&str]) -> Output {
        let out = Command::new("xdotool")
            .args(args)
            .env("DISPLAY", &self.display)
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run xdotool ({e}): install it (apt-get install -y xdotool)")
            });
        assert!(
            out.status.success(),
            "xdotool {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Input as a user gives it: the pointer moves to (`x`, `y`).
    pub fn move_pointer(&self, x: u32, y: u32) {
        self.xdotool(&["mousemove", &x.to_string(), &y.to_string()]);
    }
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
