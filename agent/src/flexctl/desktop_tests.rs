//! `flexctl notify`'s desktop output against a real D-Bus: a private session bus
//! (`dbus-daemon`, Debian package `dbus-daemon`) with a recording
//! org.freedesktop.Notifications server, so summary, body and the `urgency` hint
//! (2 = critical) are checked as a desktop would receive them.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use flex_protocol::socket::{CloseReason, Event};
use tokio::sync::mpsc;
use zbus::zvariant::OwnedValue;

use super::notify::{notification_for, Desktop, Display};

struct Recorder(mpsc::UnboundedSender<(String, String, Option<u8>)>);

#[zbus::interface(name = "org.freedesktop.Notifications")]
impl Recorder {
    #[allow(clippy::too_many_arguments)]
    async fn notify(
        &self,
        _app_name: String,
        _replaces_id: u32,
        _app_icon: String,
        summary: String,
        body: String,
        _actions: Vec<String>,
        hints: HashMap<String, OwnedValue>,
        _expire_timeout: i32,
    ) -> u32 {
        let urgency = hints.get("urgency").and_then(|v| u8::try_from(&**v).ok());
        let _ = self.0.send((summary, body, urgency));
        1
    }

    fn get_capabilities(&self) -> Vec<String> {
        vec!["body".into()]
    }

    fn get_server_information(&self) -> (String, String, String, String) {
        (
            "recorder".into(),
            "flex tests".into(),
            "1".into(),
            "1.2".into(),
        )
    }

    fn close_notification(&self, _id: u32) {}
}

/// A private bus daemon, killed on drop.
struct Bus {
    child: std::process::Child,
    address: String,
}

impl Bus {
    fn start() -> Bus {
        let mut child = Command::new("dbus-daemon")
            .args(["--session", "--nofork", "--nopidfile", "--print-address=1"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("dbus-daemon is needed for this test: apt-get install dbus-daemon");
        // The daemon prints its address once it listens: that is the readiness signal.
        let mut address = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut address)
            .unwrap();
        Bus {
            child,
            address: address.trim().to_string(),
        }
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn desktop_receives_summary_body_and_urgency() {
    let bus = tokio::task::spawn_blocking(Bus::start).await.unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _server = zbus::connection::Builder::address(bus.address.as_str())
        .unwrap()
        .name("org.freedesktop.Notifications")
        .unwrap()
        .serve_at("/org/freedesktop/Notifications", Recorder(tx))
        .unwrap()
        .build()
        .await
        .expect("cannot serve notifications on the private bus");
    // Only this test talks to a session bus.
    std::env::set_var("DBUS_SESSION_BUS_ADDRESS", &bus.address);

    let events = [
        Event::LowBalance { balance: 12 },
        Event::ProductClosed {
            product: "autocad".into(),
            reason: CloseReason::Offline,
            message: "offline for more than 24 h".into(),
        },
        Event::ClockRollback { seconds: -3600 },
    ];
    for event in events {
        let expected = notification_for(&event);
        Desktop.show(expected.clone()).await;
        let (summary, body, urgency) = rx.recv().await.expect("notification never arrived");
        assert_eq!(summary, expected.summary);
        assert_eq!(body, expected.body);
        let want = match expected.urgency {
            super::notify::Urgency::Normal => 1,
            super::notify::Urgency::Critical => 2,
        };
        assert_eq!(urgency, Some(want), "{event:?}");
    }
}
