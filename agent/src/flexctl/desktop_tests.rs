//! `flexctl notify`'s desktop output against a real D-Bus: a private session bus
//! (`dbus-daemon`, Debian package `dbus`) with the recording
//! org.freedesktop.Notifications server of [`crate::testsupport`], so summary,
//! body and the `urgency` hint (2 = critical) are checked as a desktop would
//! receive them.

use flex_protocol::socket::{CloseReason, Event};

use super::notify::{notification_for, Desktop, Display, Slot, Urgency};
use crate::testsupport::{NotificationServer, PrivateBus, URGENCY_CRITICAL, URGENCY_NORMAL};

#[tokio::test]
async fn desktop_receives_summary_body_and_urgency() {
    let bus = tokio::task::spawn_blocking(PrivateBus::start)
        .await
        .unwrap();
    let server = NotificationServer::start(&bus).await;
    // Only this test talks to a session bus.
    std::env::set_var("DBUS_SESSION_BUS_ADDRESS", &bus.address);

    let events = [
        Event::LowBalance { balance: 12 },
        Event::ProductClosed {
            product: "autocad".parse().unwrap(),
            product_name: Some("AutoCAD".into()),
            reason: CloseReason::Offline,
            message: "offline for more than 24 h".into(),
        },
        Event::ClockRollback { seconds: -3600 },
    ];
    let desktop = Desktop::default();
    for (i, event) in events.into_iter().enumerate() {
        let expected = notification_for(&event);
        let slot = Slot {
            product: Some(format!("p{i}")),
            subject: super::notify::board::Subject::Stop,
        };
        desktop.show(&slot, expected.clone()).await;
        let got = server
            .wait_for(&expected.summary, |r| r.summary == expected.summary)
            .await;
        assert_eq!(got.body, expected.body);
        assert_eq!(got.app_name, "Flex licensing");
        let want = match expected.urgency {
            Urgency::Normal => URGENCY_NORMAL,
            Urgency::Critical => URGENCY_CRITICAL,
        };
        assert_eq!(got.urgency, Some(want), "{event:?}");
        assert_eq!(server.recorded().len(), i + 1, "one notification per event");
    }

    // One notification per slot: a new state replaces it in place (same id),
    // and a withdrawn one is closed.
    let slot = Slot {
        product: Some("autocad".into()),
        subject: super::notify::board::Subject::Stop,
    };
    let first = notification_for(&Event::LowBalance { balance: 5 });
    desktop.show(&slot, first.clone()).await;
    let shown = server
        .wait_for("the first state", |r| r.body == first.body)
        .await;
    assert_eq!(shown.replaces_id, 0);
    let second = notification_for(&Event::LowBalance { balance: 4 });
    desktop.show(&slot, second.clone()).await;
    let replaced = server
        .wait_for("the second state", |r| r.body == second.body)
        .await;
    assert_eq!((replaced.replaces_id, replaced.id), (shown.id, shown.id));
    desktop.withdraw(&slot).await;
    server.wait_closed(shown.id).await;
    // Withdrawing an empty slot closes nothing.
    desktop.withdraw(&slot).await;
    assert_eq!(server.closed(), [shown.id]);
}

/// GNOME's idle monitor answers for a Wayland session: its idle time is what
/// Mutter says; a bus without Mutter is no source.
#[tokio::test]
async fn gnome_idle_monitor_gives_the_idle_time() {
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use crate::flexctl::desktop::gnome::Mutter;
    use crate::flexctl::desktop::IdleSource;
    use crate::testsupport::IdleMonitor;

    let bus = tokio::task::spawn_blocking(PrivateBus::start)
        .await
        .unwrap();
    let address = bus.address.clone();
    let absent = tokio::task::spawn_blocking(move || Mutter::connect(Some(&address)))
        .await
        .unwrap();
    assert!(absent.is_err(), "no Mutter on the bus, yet a source");

    let monitor = IdleMonitor::start(&bus).await;
    monitor.idle_ms.store(61_500, Ordering::SeqCst);
    let address = bus.address.clone();
    let (first, second) = tokio::task::spawn_blocking(move || {
        let mut mutter = Mutter::connect(Some(&address)).expect("Mutter answers");
        let first = mutter.read().unwrap();
        monitor.idle_ms.store(0, Ordering::SeqCst);
        (first, mutter.read().unwrap())
    })
    .await
    .unwrap();
    assert_eq!(first.idle, Duration::from_millis(61_500));
    assert_eq!(second.idle, Duration::ZERO);
}
