//! `flex-test-x11-app FILE`: a desktop program with unsaved work, for the
//! end-to-end tests of closes that keep it.
//!
//! It shows one top-level window with `_NET_WM_PID` and `WM_DELETE_WINDOW` in
//! its `WM_PROTOCOLS`, as toolkits do, and prints `ready` once the window is
//! mapped. Asked to close the way a window manager asks (`WM_DELETE_WINDOW`)
//! it saves (writes `saved` to FILE) and exits 0. SIGTERM ends it at once,
//! without saving, as it would many programs with a document open.

use std::io::Write;

use x11rb::connection::Connection;
use x11rb::protocol::xproto::{
    AtomEnum, ConnectionExt as _, CreateWindowAux, EventMask, PropMode, WindowClass,
};
use x11rb::protocol::Event;
use x11rb::rust_connection::RustConnection;
use x11rb::wrapper::ConnectionExt as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let file = std::env::args_os()
        .nth(1)
        .ok_or("usage: flex-test-x11-app FILE")?;
    let (conn, screen) = RustConnection::connect(None)?;
    let root = conn.setup().roots[screen].root;
    let atom = |name: &str| -> Result<u32, Box<dyn std::error::Error>> {
        Ok(conn.intern_atom(false, name.as_bytes())?.reply()?.atom)
    };
    let (protocols, delete, pid_atom) = (
        atom("WM_PROTOCOLS")?,
        atom("WM_DELETE_WINDOW")?,
        atom("_NET_WM_PID")?,
    );
    let window = conn.generate_id()?;
    conn.create_window(
        0,
        window,
        root,
        10,
        10,
        300,
        200,
        0,
        WindowClass::INPUT_OUTPUT,
        0,
        &CreateWindowAux::new().event_mask(EventMask::STRUCTURE_NOTIFY),
    )?;
    conn.change_property8(
        PropMode::REPLACE,
        window,
        AtomEnum::WM_NAME,
        AtomEnum::STRING,
        b"drawing.dwg (unsaved)",
    )?;
    conn.change_property32(
        PropMode::REPLACE,
        window,
        pid_atom,
        AtomEnum::CARDINAL,
        &[std::process::id()],
    )?;
    conn.change_property32(
        PropMode::REPLACE,
        window,
        protocols,
        AtomEnum::ATOM,
        &[delete],
    )?;
    conn.map_window(window)?;
    // Mapped once the server has answered a later request.
    conn.get_input_focus()?.reply()?;
    println!("ready");
    std::io::stdout().flush()?;
    loop {
        if let Event::ClientMessage(m) = conn.wait_for_event()? {
            if m.type_ == protocols && m.data.as_data32()[0] == delete {
                let tmp = std::path::Path::new(&file).with_extension("tmp");
                std::fs::write(&tmp, "saved\n")?;
                std::fs::rename(&tmp, &file)?;
                return Ok(());
            }
        }
    }
}
