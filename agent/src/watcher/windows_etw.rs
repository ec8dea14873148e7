//! Windows' event-driven source: a real-time ETW session on the
//! Microsoft-Windows-Kernel-Process provider, whose process start and stop
//! events wake the poller at once instead of at its next tick.
//!
//! The events only say *when* to look. The snapshot and the held process
//! handles of [`super::windows_poll`] stay the one source of truth, so a late,
//! lost or spurious event costs latency, never a missed or doubled session,
//! and the regular poll keeps running underneath. The source counts as
//! [`DetectionSource::Etw`] from its first event until the session ends (it
//! is stopped, or the system ends it); otherwise it is polling. Starting a
//! kernel-provider session needs an administrator or LocalSystem (the
//! service); a console run by a user, or Wine, which has no ETW, polls.

use std::io;
use std::sync::Arc;

use tokio::sync::Notify;
use windows_sys::core::GUID;
use windows_sys::Win32::Foundation::{ERROR_ALREADY_EXISTS, ERROR_SUCCESS, WIN32_ERROR};
use windows_sys::Win32::System::Diagnostics::Etw::{
    CloseTrace, ControlTraceW, EnableTraceEx2, OpenTraceW, ProcessTrace, StartTraceW,
    CONTROLTRACE_HANDLE, EVENT_CONTROL_CODE_ENABLE_PROVIDER, EVENT_RECORD,
    EVENT_TRACE_CONTROL_STOP, EVENT_TRACE_LOGFILEW, EVENT_TRACE_PROPERTIES,
    EVENT_TRACE_REAL_TIME_MODE, PROCESS_TRACE_MODE_EVENT_RECORD, PROCESS_TRACE_MODE_REAL_TIME,
    TRACE_LEVEL_INFORMATION, WNODE_FLAG_TRACED_GUID,
};

use super::tracker::{store_source, SharedSource};
use super::DetectionSource;
use crate::win32::wide;

/// Microsoft-Windows-Kernel-Process.
const KERNEL_PROCESS: GUID = GUID::from_u128(0x22fb2cd6_0e7b_422b_a0c7_2fad1fd0e716);
/// Its WINEVENT_KEYWORD_PROCESS: process start (event 1) and stop (event 2).
const KEYWORD_PROCESS: u64 = 0x10;
const PROCESS_START: u16 = 1;
const PROCESS_STOP: u16 = 2;
/// The session's name, one per machine (a stale one is replaced).
const SESSION: &str = "flex-agent-process-events";
/// Seconds between buffer flushes: the most an event waits to be delivered.
const FLUSH_SECONDS: u32 = 1;
/// OpenTraceW's failure value.
const INVALID_TRACE: u64 = u64::MAX;

/// What the event callback reaches through the trace's context pointer.
struct Context {
    wake: Arc<Notify>,
    source: SharedSource,
}

/// A running session; dropping it stops the session, which ends the thread
/// that reads it.
pub(crate) struct EtwSession {
    control: CONTROLTRACE_HANDLE,
}

/// Whether an event of the kernel-process provider should wake the poller.
fn wakes(event_id: u16) -> bool {
    matches!(event_id, PROCESS_START | PROCESS_STOP)
}

fn check(code: WIN32_ERROR, action: &str) -> io::Result<()> {
    if code == ERROR_SUCCESS {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{action}: {}",
            io::Error::from_raw_os_error(code as i32)
        )))
    }
}

/// EVENT_TRACE_PROPERTIES followed by room for the session name, as the
/// trace calls want them (u64 units keep the structure aligned).
fn properties() -> Vec<u64> {
    let head = std::mem::size_of::<EVENT_TRACE_PROPERTIES>();
    let bytes = head + (SESSION.len() + 1) * 2;
    let mut buf = vec![0u64; bytes.div_ceil(8)];
    // SAFETY: the buffer is zeroed, 8-byte aligned and larger than the structure.
    let p = unsafe { &mut *(buf.as_mut_ptr() as *mut EVENT_TRACE_PROPERTIES) };
    p.Wnode.BufferSize = (buf.len() * 8) as u32;
    p.Wnode.Flags = WNODE_FLAG_TRACED_GUID;
    // QueryPerformanceCounter time stamps (unused here; the cheapest).
    p.Wnode.ClientContext = 1;
    p.LogFileMode = EVENT_TRACE_REAL_TIME_MODE;
    p.FlushTimer = FLUSH_SECONDS;
    p.LoggerNameOffset = head as u32;
    buf
}

fn props_ptr(buf: &mut [u64]) -> *mut EVENT_TRACE_PROPERTIES {
    buf.as_mut_ptr() as *mut EVENT_TRACE_PROPERTIES
}

fn stop_session(control: CONTROLTRACE_HANDLE) -> WIN32_ERROR {
    let name = wide(SESSION);
    let mut props = properties();
    // SAFETY: a properties buffer with room for the name; a session handle
    // or 0 with the name.
    unsafe {
        ControlTraceW(
            control,
            name.as_ptr(),
            props_ptr(&mut props),
            EVENT_TRACE_CONTROL_STOP,
        )
    }
}

/// Starts the session and a thread delivering its events: each process start
/// or stop notifies `wake`, and `source` says ETW while events arrive.
pub(crate) fn start(wake: Arc<Notify>, source: SharedSource) -> io::Result<EtwSession> {
    let name = wide(SESSION);
    let mut control = CONTROLTRACE_HANDLE::default();
    let mut props = properties();
    // SAFETY: an out handle, a NUL-terminated name and the properties buffer.
    let mut started = unsafe { StartTraceW(&mut control, name.as_ptr(), props_ptr(&mut props)) };
    if started == ERROR_ALREADY_EXISTS {
        // Left over from an agent that did not stop cleanly.
        let _ = stop_session(CONTROLTRACE_HANDLE::default());
        let mut props = properties();
        // SAFETY: as above.
        started = unsafe { StartTraceW(&mut control, name.as_ptr(), props_ptr(&mut props)) };
    }
    check(started, "start the ETW session")?;
    let session = EtwSession { control };
    // SAFETY: a started session and a provider GUID that outlives the call.
    check(
        unsafe {
            EnableTraceEx2(
                control,
                &KERNEL_PROCESS,
                EVENT_CONTROL_CODE_ENABLE_PROVIDER,
                TRACE_LEVEL_INFORMATION as u8,
                KEYWORD_PROCESS,
                0,
                0,
                std::ptr::null(),
            )
        },
        "enable the kernel-process provider",
    )?;
    let context = Box::into_raw(Box::new(Context {
        wake,
        source: source.clone(),
    }));
    let mut logger = wide(SESSION);
    // SAFETY: an all-zero EVENT_TRACE_LOGFILEW is valid; fields set below.
    let mut logfile: EVENT_TRACE_LOGFILEW = unsafe { std::mem::zeroed() };
    logfile.LoggerName = logger.as_mut_ptr();
    logfile.Anonymous1.ProcessTraceMode =
        PROCESS_TRACE_MODE_REAL_TIME | PROCESS_TRACE_MODE_EVENT_RECORD;
    logfile.Anonymous2.EventRecordCallback = Some(on_event);
    logfile.Context = context.cast();
    // SAFETY: a filled EVENT_TRACE_LOGFILEW whose strings outlive the call.
    let trace = unsafe { OpenTraceW(&mut logfile) };
    if trace.Value == INVALID_TRACE {
        let e = io::Error::last_os_error();
        // SAFETY: no trace was opened, so no callback holds the context.
        drop(unsafe { Box::from_raw(context) });
        return Err(io::Error::other(format!("open the ETW session: {e}")));
    }
    let context = ContextPtr(context);
    std::thread::Builder::new()
        .name("etw-process".into())
        .spawn(move || {
            let context = context;
            // SAFETY: an opened trace; blocks, calling on_event on this
            // thread, until the session stops.
            let ended = unsafe { ProcessTrace(&trace, 1, std::ptr::null(), std::ptr::null()) };
            // SAFETY: the trace handle from OpenTraceW, closed once.
            unsafe { CloseTrace(trace) };
            // SAFETY: ProcessTrace has returned, so no callback runs any more.
            let context = unsafe { Box::from_raw(context.0) };
            store_source(&context.source, DetectionSource::Polling);
            tracing::info!(
                code = ended,
                "the ETW process-event session ended: detection continues by polling"
            );
        })?;
    Ok(session)
}

/// The context pointer, handed to the thread that owns it from then on.
struct ContextPtr(*mut Context);
// SAFETY: only the reading thread uses it (callbacks run on that thread).
unsafe impl Send for ContextPtr {}

unsafe extern "system" fn on_event(record: *mut EVENT_RECORD) {
    // SAFETY: ETW passes a valid record for the duration of the call.
    let record = unsafe { &*record };
    if record.UserContext.is_null() || !wakes(record.EventHeader.EventDescriptor.Id) {
        return;
    }
    // SAFETY: UserContext is the Context given to OpenTraceW, alive until
    // ProcessTrace returns.
    let context = unsafe { &*(record.UserContext as *const Context) };
    store_source(&context.source, DetectionSource::Etw);
    context.wake.notify_one();
}

impl Drop for EtwSession {
    fn drop(&mut self) {
        let code = stop_session(self.control);
        if code != ERROR_SUCCESS {
            tracing::warn!(code, "cannot stop the ETW process-event session");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_starts_and_stops_wake_the_poller() {
        assert!(wakes(PROCESS_START) && wakes(PROCESS_STOP));
        // Thread and image-load events of the same provider do not.
        assert!(!wakes(3) && !wakes(5));
    }

    #[test]
    fn the_properties_hold_the_session_name() {
        let mut buf = properties();
        // SAFETY: properties() made the buffer for this structure.
        let p = unsafe { &*props_ptr(&mut buf) };
        assert_eq!(p.Wnode.BufferSize as usize, buf.len() * 8);
        assert!(p.LoggerNameOffset as usize + (SESSION.len() + 1) * 2 <= buf.len() * 8);
        assert_eq!(p.LogFileMode, EVENT_TRACE_REAL_TIME_MODE);
    }

    /// Where no session can be had (Wine has no ETW: OpenTrace is refused;
    /// Windows refuses a user who is not an administrator) start says why and
    /// leaves no session behind; where one can, it stops when dropped and
    /// the name is free again. Either way detection polls meanwhile.
    #[test]
    fn a_session_starts_and_stops_or_says_why_not() {
        for _ in 0..2 {
            let source = SharedSource::default();
            store_source(&source, DetectionSource::Polling);
            match start(Arc::new(Notify::new()), source.clone()) {
                Ok(session) => drop(session),
                Err(e) => {
                    let e = e.to_string();
                    assert!(
                        e.contains("the ETW session") || e.contains("provider"),
                        "{e}"
                    );
                    assert_eq!(
                        super::super::tracker::load_source(&source),
                        DetectionSource::Polling
                    );
                }
            }
        }
    }
}
