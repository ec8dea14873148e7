//! Where notifications go: the desktop's notification service (notify-rust),
//! stdout (`--print`), or both.
//!
//! On freedesktop desktops a slot's notification keeps its id: a new state
//! replaces it in place (`replaces_id`) and a withdrawn one is closed
//! (`CloseNotification`). Other systems only show.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::board::Slot;
use super::text::Notification;

/// Where notifications go.
pub trait Display: Sync {
    /// Shows `n` in `slot`, in place of what the slot showed.
    fn show(&self, slot: &Slot, n: Notification) -> impl std::future::Future<Output = ()> + Send;
    /// Takes the notification of `slot` off the screen.
    fn withdraw(&self, slot: &Slot) -> impl std::future::Future<Output = ()> + Send;
}

#[cfg(all(unix, not(target_os = "macos")))]
type Handle = notify_rust::NotificationHandle;
#[cfg(not(all(unix, not(target_os = "macos"))))]
type Handle = ();

/// The desktop notification service (D-Bus on Linux, Notification Center on
/// macOS, toasts on Windows).
#[derive(Default)]
pub struct Desktop {
    /// The shown notification of each slot.
    handles: Arc<Mutex<HashMap<Slot, Handle>>>,
}

impl Desktop {
    fn build(n: &Notification) -> notify_rust::Notification {
        let mut note = notify_rust::Notification::new();
        note.appname("Flex licensing")
            .summary(&n.summary)
            .body(&n.body);
        #[cfg(all(unix, not(target_os = "macos")))]
        note.urgency(match n.urgency {
            super::text::Urgency::Normal => notify_rust::Urgency::Normal,
            super::text::Urgency::Critical => notify_rust::Urgency::Critical,
        });
        note
    }
}

fn warn_unshown(e: &dyn std::fmt::Display) {
    tracing::warn!(error = %e, "cannot show a desktop notification; is a notification service running?")
}

impl Display for Desktop {
    async fn show(&self, slot: &Slot, n: Notification) {
        let handles = self.handles.clone();
        let slot = slot.clone();
        // notify-rust blocks on D-Bus: keep it off the runtime threads.
        let shown = tokio::task::spawn_blocking(move || {
            let note = Desktop::build(&n);
            let mut handles = handles.lock().unwrap_or_else(|e| e.into_inner());
            #[cfg(all(unix, not(target_os = "macos")))]
            {
                let mut note = note;
                if let Some(old) = handles.get(&slot) {
                    note.id(old.id());
                }
                handles.insert(slot, note.show()?);
            }
            #[cfg(not(all(unix, not(target_os = "macos"))))]
            {
                let _ = (&mut handles, slot);
                note.show()?;
            }
            Ok::<_, notify_rust::error::Error>(())
        })
        .await;
        match shown {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn_unshown(&e),
            Err(e) => warn_unshown(&e),
        }
    }

    async fn withdraw(&self, slot: &Slot) {
        let handle = self
            .handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(slot);
        #[cfg(all(unix, not(target_os = "macos")))]
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.close()).await;
        }
        #[cfg(not(all(unix, not(target_os = "macos"))))]
        let _ = handle;
    }
}

/// What `flexctl notify` does with each notification: prints it as a
/// [`Notification::line`] on stdout (`--print`), shows it on the desktop
/// (unless `--no-desktop`), or both.
pub struct Notifier {
    pub print: bool,
    pub desktop: Option<Desktop>,
}

impl Notifier {
    pub fn new(print: bool, desktop: bool) -> Notifier {
        Notifier {
            print,
            desktop: desktop.then(Desktop::default),
        }
    }
}

impl Display for Notifier {
    async fn show(&self, slot: &Slot, n: Notification) {
        if self.print {
            use std::io::Write;
            // A closed stdout (the reader went away) must not end the notifier.
            let _ = writeln!(std::io::stdout().lock(), "{}", n.line());
        }
        if let Some(d) = &self.desktop {
            d.show(slot, n).await;
        }
    }

    async fn withdraw(&self, slot: &Slot) {
        if let Some(d) = &self.desktop {
            d.withdraw(slot).await;
        }
    }
}
