//! GNOME's own idle time, from Mutter's `org.gnome.Mutter.IdleMonitor` on the
//! session bus (`GetIdletime`: milliseconds since the last input). GNOME on
//! Wayland does not offer `ext-idle-notify-v1`, and X clients do not see a
//! Wayland session's input; Mutter sees all of it, under Wayland and X11.

use std::time::Duration;

use futures_lite::future::block_on;

use super::{DesktopError, IdleReading, IdleSource};

pub const SERVICE: &str = "org.gnome.Mutter.IdleMonitor";
pub const PATH: &str = "/org/gnome/Mutter/IdleMonitor/Core";

fn fail(action: &'static str) -> impl FnOnce(zbus::Error) -> DesktopError {
    move |e| DesktopError::new("GNOME", action, e)
}

/// Mutter's idle monitor of this session.
pub struct Mutter {
    proxy: zbus::Proxy<'static>,
}

impl Mutter {
    /// Connects to the session bus at `address` (`None`: this session's,
    /// from `DBUS_SESSION_BUS_ADDRESS`) and checks that Mutter answers there.
    /// Blocks: call from a thread that is not running async tasks.
    pub fn connect(address: Option<&str>) -> Result<Mutter, DesktopError> {
        block_on(async {
            let conn = match address {
                Some(a) => zbus::connection::Builder::address(a).build().await,
                None => zbus::Connection::session().await,
            }
            .map_err(fail("connect to the session bus"))?;
            let proxy = zbus::Proxy::new_owned(conn, SERVICE, PATH, SERVICE)
                .await
                .map_err(fail("find Mutter's idle monitor"))?;
            let mutter = Mutter { proxy };
            mutter.idle_ms().await?;
            Ok(mutter)
        })
    }

    async fn idle_ms(&self) -> Result<u64, DesktopError> {
        self.proxy
            .call::<_, _, u64>("GetIdletime", &())
            .await
            .map_err(fail("read the idle time"))
    }
}

impl IdleSource for Mutter {
    fn name(&self) -> &'static str {
        "GNOME"
    }

    fn read(&mut self) -> Result<IdleReading, DesktopError> {
        Ok(IdleReading {
            idle: Duration::from_millis(block_on(self.idle_ms())?),
            locked: false,
        })
    }
}
