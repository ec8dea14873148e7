//! X11: the user's idle time from the MIT-SCREEN-SAVER extension, and closing
//! a process's top-level windows the way a window manager does.
//!
//! A window belongs to a process by its `_NET_WM_PID` property or, for
//! clients that do not set it, by the X-Resource extension's client pid (the
//! X server knows the pid of every local client). The top-level windows are
//! the window manager's `_NET_CLIENT_LIST`, or, with no window manager, the
//! root window's mapped children (each followed down to the window carrying
//! `WM_STATE` under a reparenting manager that does not publish the list).
//!
//! Closing follows ICCCM and EWMH: a window that lists `WM_DELETE_WINDOW` in
//! its `WM_PROTOCOLS` gets that client message (the program decides: it may
//! ask "Save changes?"); any other window is handed to the window manager with
//! `_NET_CLOSE_WINDOW`, when one runs that supports it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use x11rb::connection::{Connection, RequestConnection};
use x11rb::errors::ReplyError;
use x11rb::protocol::res::{self, ClientIdMask, ClientIdSpec, ConnectionExt as _};
use x11rb::protocol::screensaver::{self, ConnectionExt as _};
use x11rb::protocol::xproto::{
    AtomEnum, ClientMessageEvent, ConnectionExt as _, EventMask, MapState, Window,
};
use x11rb::rust_connection::RustConnection;
use x11rb::CURRENT_TIME;

use super::{DesktopError, IdleReading, IdleSource, WindowCloser};

x11rb::atom_manager! {
    Atoms: AtomsCookie {
        WM_PROTOCOLS,
        WM_DELETE_WINDOW,
        WM_STATE,
        _NET_WM_PID,
        _NET_CLIENT_LIST,
        _NET_CLOSE_WINDOW,
        _NET_SUPPORTED,
    }
}

/// How deep under a top-level window the client window is looked for (frame,
/// then maybe a decoration window, then the client).
const CLIENT_DEPTH: u32 = 3;

/// At most this many windows are looked at (a property or tree longer than
/// that is cut): a desktop has tens.
const MAX_WINDOWS: u32 = 4096;

fn err(action: &'static str) -> impl FnOnce(ReplyError) -> DesktopError {
    move |e| DesktopError::new("X11", action, e)
}

/// A connection to one X display.
pub struct X11 {
    conn: RustConnection,
    root: Window,
    atoms: Atoms,
    screensaver: bool,
    resources: bool,
}

impl X11 {
    /// Connects to `display` (`None`: `$DISPLAY`).
    pub fn connect(display: Option<&str>) -> Result<X11, DesktopError> {
        let (conn, screen) = RustConnection::connect(display)
            .map_err(|e| DesktopError::new("X11", "connect to the display", e))?;
        let root = conn.setup().roots[screen].root;
        let atoms = Atoms::new(&conn)
            .map_err(ReplyError::from)
            .and_then(|c| c.reply())
            .map_err(err("look up atoms"))?;
        let has = |name| {
            conn.extension_information(name)
                .map(|i| i.is_some())
                .unwrap_or(false)
        };
        let screensaver = has(screensaver::X11_EXTENSION_NAME);
        // X-Resource answers client ids only after its version is agreed.
        let resources = has(res::X11_EXTENSION_NAME)
            && conn
                .res_query_version(1, 2)
                .map_err(ReplyError::from)
                .and_then(|c| c.reply())
                .is_ok();
        Ok(X11 {
            conn,
            root,
            atoms,
            screensaver,
            resources,
        })
    }

    /// Time since the last keyboard or pointer input on this display.
    pub fn idle(&self) -> Result<Duration, DesktopError> {
        if !self.screensaver {
            return Err(DesktopError::new(
                "X11",
                "read the idle time",
                "the display has no MIT-SCREEN-SAVER extension",
            ));
        }
        let info = self
            .conn
            .screensaver_query_info(self.root)
            .map_err(ReplyError::from)
            .and_then(|c| c.reply())
            .map_err(err("read the idle time"))?;
        Ok(Duration::from_millis(info.ms_since_user_input.into()))
    }

    /// The 32-bit values of `window`'s property `name` of type `kind`; empty
    /// when it has none (or the window is gone).
    fn values(&self, window: Window, name: u32, kind: AtomEnum) -> Vec<u32> {
        self.conn
            .get_property(false, window, name, kind, 0, MAX_WINDOWS)
            .map_err(ReplyError::from)
            .and_then(|c| c.reply())
            .ok()
            .and_then(|r| r.value32().map(|v| v.collect()))
            .unwrap_or_default()
    }

    fn has_property(&self, window: Window, name: u32) -> bool {
        self.conn
            .get_property(false, window, name, AtomEnum::ANY, 0, 0)
            .map_err(ReplyError::from)
            .and_then(|c| c.reply())
            .is_ok_and(|r| r.type_ != u32::from(AtomEnum::NONE))
    }

    fn children(&self, window: Window) -> Vec<Window> {
        self.conn
            .query_tree(window)
            .map_err(ReplyError::from)
            .and_then(|c| c.reply())
            .map(|t| {
                let mut c = t.children;
                c.truncate(MAX_WINDOWS as usize);
                c
            })
            .unwrap_or_default()
    }

    /// The client window at or under `window` (the one with `WM_STATE`).
    fn client_under(&self, window: Window, depth: u32) -> Option<Window> {
        if self.has_property(window, self.atoms.WM_STATE) {
            return Some(window);
        }
        if depth == 0 {
            return None;
        }
        self.children(window)
            .into_iter()
            .find_map(|c| self.client_under(c, depth - 1))
    }

    /// The display's top-level client windows.
    fn clients(&self) -> Vec<Window> {
        let listed = self.values(self.root, self.atoms._NET_CLIENT_LIST, AtomEnum::WINDOW);
        if !listed.is_empty() {
            return listed;
        }
        self.children(self.root)
            .into_iter()
            .filter(|&w| {
                // Menus and tooltips (override-redirect) and withdrawn windows
                // are not what a user closes.
                self.conn
                    .get_window_attributes(w)
                    .map_err(ReplyError::from)
                    .and_then(|c| c.reply())
                    .is_ok_and(|a| !a.override_redirect && a.map_state == MapState::VIEWABLE)
            })
            .map(|w| self.client_under(w, CLIENT_DEPTH).unwrap_or(w))
            .collect()
    }

    /// The pid of the process that shows `window`.
    fn pid_of(&self, window: Window) -> Option<u32> {
        if let Some(&pid) = self
            .values(window, self.atoms._NET_WM_PID, AtomEnum::CARDINAL)
            .first()
        {
            return Some(pid);
        }
        if !self.resources {
            return None;
        }
        let spec = ClientIdSpec {
            client: window,
            mask: ClientIdMask::LOCAL_CLIENT_PID,
        };
        let reply = self
            .conn
            .res_query_client_ids(&[spec])
            .map_err(ReplyError::from)
            .and_then(|c| c.reply())
            .ok()?;
        reply
            .ids
            .iter()
            .find(|id| id.spec.mask == ClientIdMask::LOCAL_CLIENT_PID)
            .and_then(|id| id.value.first().copied())
    }

    /// The top-level windows of any of `pids`.
    pub fn windows_of(&self, pids: &[u32]) -> Vec<Window> {
        self.clients()
            .into_iter()
            .filter(|&w| self.pid_of(w).is_some_and(|p| pids.contains(&p)))
            .collect()
    }

    /// Asks `window` to close; `false` when there was no way to ask (no
    /// `WM_DELETE_WINDOW` and no window manager that closes windows).
    fn ask_to_close(&self, window: Window) -> Result<bool, DesktopError> {
        let a = &self.atoms;
        let protocols = self.values(window, a.WM_PROTOCOLS, AtomEnum::ATOM);
        let sent = if protocols.contains(&a.WM_DELETE_WINDOW) {
            let event = ClientMessageEvent::new(
                32,
                window,
                a.WM_PROTOCOLS,
                [a.WM_DELETE_WINDOW, CURRENT_TIME, 0, 0, 0],
            );
            self.conn
                .send_event(false, window, EventMask::NO_EVENT, event)
        } else if self
            .values(self.root, a._NET_SUPPORTED, AtomEnum::ATOM)
            .contains(&a._NET_CLOSE_WINDOW)
        {
            // Source indication 2: a pager or other tool acting for the user.
            let event = ClientMessageEvent::new(
                32,
                window,
                a._NET_CLOSE_WINDOW,
                [CURRENT_TIME, 2, 0, 0, 0],
            );
            self.conn.send_event(
                false,
                self.root,
                EventMask::SUBSTRUCTURE_NOTIFY | EventMask::SUBSTRUCTURE_REDIRECT,
                event,
            )
        } else {
            return Ok(false);
        };
        sent.map_err(ReplyError::from)
            .and_then(|c| c.check())
            .map_err(err("send a close request"))?;
        Ok(true)
    }
}

impl WindowCloser for X11 {
    fn close_windows(&mut self, pid: u32) -> Result<u32, DesktopError> {
        let mut windows = self.windows_of(&[pid]);
        #[cfg(target_os = "linux")]
        if windows.is_empty() {
            // A launcher script whose child shows the windows.
            let children = super::procs::descendants(pid);
            if !children.is_empty() {
                windows = self.windows_of(&children);
            }
        }
        let mut asked = 0;
        for w in windows {
            if self.ask_to_close(w)? {
                asked += 1;
            }
        }
        self.conn
            .flush()
            .map_err(|e| DesktopError::new("X11", "send close requests", e))?;
        tracing::info!(pid, windows = asked, "asked the product's windows to close");
        Ok(asked)
    }
}

impl IdleSource for X11 {
    fn name(&self) -> &'static str {
        "X11"
    }

    fn read(&mut self) -> Result<IdleReading, DesktopError> {
        Ok(IdleReading {
            idle: self.idle()?,
            locked: false,
        })
    }
}

/// One connection serving as both the idle source and the window closer.
pub struct Shared(pub Arc<Mutex<X11>>);

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, X11> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl IdleSource for Shared {
    fn name(&self) -> &'static str {
        "X11"
    }

    fn read(&mut self) -> Result<IdleReading, DesktopError> {
        self.lock().read()
    }
}

impl WindowCloser for Shared {
    fn close_windows(&mut self, pid: u32) -> Result<u32, DesktopError> {
        self.lock().close_windows(pid)
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::time::Instant;

    use x11rb::protocol::xproto::{CreateWindowAux, PropMode, WindowClass};
    use x11rb::protocol::Event as XEvent;
    use x11rb::wrapper::ConnectionExt as _;

    use super::*;
    use crate::testsupport::x11::Xvfb;

    /// A top-level window of the test process, on a connection of its own:
    /// the product's side.
    struct TestWindow {
        conn: RustConnection,
        window: Window,
        atoms: Atoms,
    }

    impl TestWindow {
        /// A mapped window; `pid` goes in `_NET_WM_PID`, `delete` lists
        /// WM_DELETE_WINDOW in its WM_PROTOCOLS.
        fn open(display: &str, pid: Option<u32>, delete: bool) -> TestWindow {
            let (conn, screen) = RustConnection::connect(Some(display)).unwrap();
            let atoms = Atoms::new(&conn).unwrap().reply().unwrap();
            let root = conn.setup().roots[screen].root;
            let window = conn.generate_id().unwrap();
            conn.create_window(
                0,
                window,
                root,
                0,
                0,
                100,
                100,
                0,
                WindowClass::INPUT_OUTPUT,
                0,
                &CreateWindowAux::new(),
            )
            .unwrap();
            if let Some(pid) = pid {
                conn.change_property32(
                    PropMode::REPLACE,
                    window,
                    atoms._NET_WM_PID,
                    AtomEnum::CARDINAL,
                    &[pid],
                )
                .unwrap();
            }
            if delete {
                conn.change_property32(
                    PropMode::REPLACE,
                    window,
                    atoms.WM_PROTOCOLS,
                    AtomEnum::ATOM,
                    &[atoms.WM_DELETE_WINDOW],
                )
                .unwrap();
            }
            conn.map_window(window).unwrap();
            // Mapped once the server has answered a later request.
            conn.get_input_focus().unwrap().reply().unwrap();
            TestWindow {
                conn,
                window,
                atoms,
            }
        }

        /// Whether WM_DELETE_WINDOW arrives within 10 s.
        fn asked_to_close(&self) -> bool {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                match self.conn.poll_for_event().unwrap() {
                    Some(XEvent::ClientMessage(m)) => {
                        let data = m.data.as_data32();
                        return m.window == self.window
                            && m.type_ == self.atoms.WM_PROTOCOLS
                            && data[0] == self.atoms.WM_DELETE_WINDOW;
                    }
                    Some(_) => {}
                    None => std::thread::sleep(Duration::from_millis(20)),
                }
            }
            false
        }
    }

    #[test]
    fn windows_are_asked_to_close_by_pid_and_idle_time_follows_input() {
        let x = Xvfb::start();
        let me = std::process::id();
        let mut desk = X11::connect(Some(&x.display)).unwrap();

        // Found by _NET_WM_PID, and asked with WM_DELETE_WINDOW.
        let product = TestWindow::open(&x.display, Some(4_000_001), true);
        let other = TestWindow::open(&x.display, Some(4_000_002), true);
        assert_eq!(desk.close_windows(4_000_001).unwrap(), 1);
        assert!(product.asked_to_close());
        // Nothing was sent to another process's window.
        other.conn.get_input_focus().unwrap().reply().unwrap();
        assert!(other.conn.poll_for_event().unwrap().is_none());
        // A pid with no window: none asked (the agent then signals it).
        assert_eq!(desk.close_windows(4_000_003).unwrap(), 0);

        // No _NET_WM_PID: the X server's client pid (X-Resource) finds it.
        let unnamed = TestWindow::open(&x.display, None, true);
        assert_eq!(desk.windows_of(&[me]), vec![unnamed.window]);
        assert_eq!(desk.close_windows(me).unwrap(), 1);
        assert!(unnamed.asked_to_close());
        drop(unnamed);

        // Without WM_DELETE_WINDOW and with no window manager to close it,
        // nothing can ask: not counted.
        let _stubborn = TestWindow::open(&x.display, Some(4_000_004), false);
        assert_eq!(desk.windows_of(&[4_000_004]).len(), 1);
        assert_eq!(desk.close_windows(4_000_004).unwrap(), 0);

        // Idle time: grows without input, drops when the pointer moves.
        let deadline = Instant::now() + Duration::from_secs(10);
        while desk.idle().unwrap() < Duration::from_millis(1500) {
            assert!(Instant::now() < deadline, "the idle time does not grow");
            std::thread::sleep(Duration::from_millis(100));
        }
        x.move_pointer(10, 20);
        let after = desk.read().unwrap();
        assert!(after.idle < Duration::from_millis(1000), "{after:?}");
        assert!(!after.locked);
    }
}
