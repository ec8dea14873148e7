//! The Linux kernel process connector (cn_proc) over netlink.
//!
//! The kernel multicasts a message for every fork, exec and exit to sockets of
//! protocol `NETLINK_CONNECTOR` bound to group `CN_IDX_PROC` that have sent
//! `PROC_CN_MCAST_LISTEN`. Needs CAP_NET_ADMIN and the initial network namespace.
//! No maintained crate wraps this, so the layouts are spelled out here, from
//! `<linux/netlink.h>`, `<linux/connector.h>` and `<linux/cn_proc.h>`:
//!
//! ```text
//! offset  size  field
//!      0    16  struct nlmsghdr  { u32 len; u16 type; u16 flags; u32 seq; u32 pid; }
//!     16    20  struct cn_msg    { u32 idx; u32 val; u32 seq; u32 ack; u16 len; u16 flags; }
//!     36        struct proc_event (the cn_msg payload, no padding before it)
//!     36     4    u32 what          PROC_EVENT_FORK 1, EXEC 2, ..., EXIT 0x80000000
//!     40     4    u32 cpu
//!     44     8    u64 timestamp_ns  (aligned(8) within proc_event, whose base is 8-aligned
//!                                   in the kernel's buffer: offset 8 from `what`)
//!     52          union event_data
//!                   exec: i32 process_pid; i32 process_tgid
//!                   exit: i32 process_pid; i32 process_tgid; u32 exit_code;
//!                         u32 exit_signal; i32 parent_pid; i32 parent_tgid
//! ```
//!
//! The subscription request is the same headers followed by a `u32` op
//! (`PROC_CN_MCAST_LISTEN` = 1). Fields are read with `from_ne_bytes` at these
//! offsets, so the receive buffer's alignment does not matter.

use std::io;
use std::mem;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

const CN_IDX_PROC: u32 = 1;
const CN_VAL_PROC: u32 = 1;
const PROC_CN_MCAST_LISTEN: u32 = 1;
const PROC_EVENT_EXEC: u32 = 0x0000_0002;
const PROC_EVENT_EXIT: u32 = 0x8000_0000;
const NLMSG_HDRLEN: usize = 16;
const CN_MSG_LEN: usize = 20;
const EVENT_OFFSET: usize = NLMSG_HDRLEN + CN_MSG_LEN;
const EVENT_DATA_OFFSET: usize = EVENT_OFFSET + 16;

/// What the connector reported, reduced to what the watcher uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CnEvent {
    /// Process `pid` (a thread-group id) replaced its program.
    Exec { pid: u32 },
    /// Process `pid` (its main thread) ended with a wait(2)-style status.
    Exit { pid: u32, status: u32 },
    /// Messages were lost (the receive buffer overflowed): rescan `/proc`.
    Overflow,
}

/// Why the connector could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    #[error("cannot {action} the netlink process connector: {source}")]
    Io {
        action: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("the process connector sent no event within {0:?} of subscribing (another network namespace?)")]
    Silent(Duration),
}

fn io_err(action: &'static str) -> impl FnOnce(io::Error) -> ConnectorError {
    move |source| ConnectorError::Io { action, source }
}

/// A subscribed connector socket, read by a thread of its own (see
/// `tracker::run_connector`): one blocking wait and one read an event, and no
/// async runtime between the kernel and the watcher.
pub struct ProcConnector {
    fd: OwnedFd,
    buf: Vec<u8>,
}

/// What [`ProcConnector::wait`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ready {
    /// A datagram is queued on the connector.
    pub events: bool,
    /// The other descriptor is readable.
    pub other: bool,
}

impl ProcConnector {
    /// Opens, binds and subscribes, then proves events arrive: a thread is started
    /// and ended, which the kernel reports as a fork and an exit.
    pub fn open() -> Result<ProcConnector, ConnectorError> {
        // SAFETY: plain socket(2); the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                libc::NETLINK_CONNECTOR,
            )
        };
        if raw < 0 {
            return Err(io_err("open")(io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };

        // A larger buffer rides out fork storms; overflow is handled by a rescan anyway.
        let size: libc::c_int = 1 << 20;
        // SAFETY: valid fd, pointer and length of a c_int. Failure only keeps the default.
        unsafe {
            libc::setsockopt(
                raw,
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                &size as *const _ as *const libc::c_void,
                mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }

        // SAFETY: sockaddr_nl is plain data; all-zero is a valid value.
        let mut addr: libc::sockaddr_nl = unsafe { mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        addr.nl_pid = 0; // let the kernel pick a unique port id
        addr.nl_groups = CN_IDX_PROC;
        // SAFETY: addr is a valid sockaddr_nl and its size is passed.
        let rc = unsafe {
            libc::bind(
                raw,
                &addr as *const _ as *const libc::sockaddr,
                mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io_err("bind")(io::Error::last_os_error()));
        }

        // Since Linux 6.6 the op may be followed by the events wanted: the
        // kernel then drops forks, uid changes and the rest before they reach
        // this socket (most of the idle agent's work on a busy machine). An
        // older kernel ignores a request of that length, so it gets the op alone.
        let filtered = kernel_filters_events(&kernel_release());
        let payload = if filtered { 8 } else { 4 };
        let mut msg = [0u8; EVENT_OFFSET + 8];
        let len = EVENT_OFFSET + payload;
        put_u32(&mut msg, 0, len as u32); // nlmsg_len
        msg[4..6].copy_from_slice(&(libc::NLMSG_DONE as u16).to_ne_bytes()); // nlmsg_type
        put_u32(&mut msg, 16, CN_IDX_PROC);
        put_u32(&mut msg, 20, CN_VAL_PROC);
        msg[32..34].copy_from_slice(&(payload as u16).to_ne_bytes()); // cn_msg.len
        put_u32(&mut msg, EVENT_OFFSET, PROC_CN_MCAST_LISTEN);
        put_u32(
            &mut msg,
            EVENT_OFFSET + 4,
            PROC_EVENT_EXEC | PROC_EVENT_EXIT,
        );
        // SAFETY: msg is a valid buffer of at least `len` bytes.
        let sent = unsafe { libc::send(raw, msg.as_ptr().cast(), len, 0) };
        if sent < 0 {
            return Err(io_err("subscribe to")(io::Error::last_os_error()));
        }

        // Inside another network namespace the socket opens but nothing arrives:
        // make the kernel report something and wait for it.
        let _ = std::thread::spawn(|| {}).join();
        let timeout = Duration::from_secs(1);
        let mut pfd = libc::pollfd {
            fd: raw,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) };
        if ready < 0 {
            return Err(io_err("poll")(io::Error::last_os_error()));
        }
        if ready == 0 {
            return Err(ConnectorError::Silent(timeout));
        }

        Ok(ProcConnector {
            fd,
            buf: vec![0u8; 16 * 1024],
        })
    }

    /// Blocks until a datagram is queued, `other` is readable, or `timeout`
    /// (if any) passes; both may be ready at once.
    pub fn wait(&self, other: BorrowedFd<'_>, timeout: Option<Duration>) -> io::Result<Ready> {
        let mut fds = [
            libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: other.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // Rounded up, so a deadline is never woken for just before it.
        let ms = timeout.map_or(-1, |t| {
            t.as_nanos()
                .div_ceil(1_000_000)
                .min(libc::c_int::MAX as u128) as libc::c_int
        });
        loop {
            // SAFETY: two valid pollfds.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
            if n >= 0 {
                break;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        // POLLERR on the socket is an overflow (ENOBUFS), which a read reports.
        let ready = |p: &libc::pollfd| p.revents & (libc::POLLIN | libc::POLLERR) != 0;
        Ok(Ready {
            events: ready(&fds[0]),
            other: ready(&fds[1]),
        })
    }

    /// Reads one queued datagram, without blocking, and appends its exec and
    /// exit events to `out`. `Ok(false)`: nothing was queued.
    pub fn recv_now(&mut self, out: &mut Vec<CnEvent>) -> io::Result<bool> {
        loop {
            match recv_from_kernel(self.fd.as_raw_fd(), &mut self.buf) {
                Ok(n) => {
                    parse(&self.buf[..n], out);
                    return Ok(true);
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    out.push(CnEvent::Overflow);
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
    }

    /// Waits up to `timeout` for a datagram and appends its events to `out`;
    /// `Ok(false)` when none came. For checks and tests: the watcher waits on
    /// its wake-up descriptor too.
    pub fn recv_timeout(&mut self, out: &mut Vec<CnEvent>, timeout: Duration) -> io::Result<bool> {
        let deadline = Instant::now() + timeout;
        let never = WakeFd::new()?;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if !self.wait(never.as_fd(), Some(left))?.events {
                return Ok(false);
            }
            if self.recv_now(out)? {
                return Ok(true);
            }
        }
    }
}

/// An eventfd another thread wakes the watcher's thread with.
pub struct WakeFd(OwnedFd);

impl WakeFd {
    pub fn new() -> io::Result<WakeFd> {
        // SAFETY: plain eventfd(2); the result is checked before use.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        Ok(WakeFd(unsafe { OwnedFd::from_raw_fd(raw) }))
    }

    pub fn as_fd(&self) -> BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.0.as_fd()
    }

    /// Makes the descriptor readable until [`WakeFd::clear`].
    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64. A full counter (never, in
        // practice) still leaves the descriptor readable, which is the point.
        unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    pub fn clear(&self) {
        let mut n: u64 = 0;
        // SAFETY: reads 8 bytes into a valid u64; EAGAIN when already clear.
        unsafe { libc::read(self.0.as_raw_fd(), (&mut n as *mut u64).cast(), 8) };
    }
}

/// `SO_ATTACH_FILTER` from `<asm-generic/socket.h>` (the same on every
/// architecture the agent ships for; the libc crate leaves it out on Linux).
const SO_ATTACH_FILTER: libc::c_int = 26;
/// Pids beyond which the filter lets every main-thread exit through (a
/// classic BPF program holds at most 4096 instructions, two per pid).
pub const MAX_FILTERED_PIDS: usize = 1024;

impl ProcConnector {
    /// Lets through only execs and the exits of `pids` (the processes the
    /// tracker follows), so the exits of everything else — on a busy machine
    /// most events, and every thread's — never wake the agent. A socket
    /// filter runs as the kernel queues each message, so an exit queued
    /// before this call was filtered by the previous program: the caller
    /// checks that newly followed processes are still alive afterwards.
    /// With more than [`MAX_FILTERED_PIDS`] pids, every exit of a main
    /// thread is let through.
    pub fn follow_exits_of(&self, pids: &[u32]) -> io::Result<()> {
        let program = exit_filter(pids);
        let fprog = libc::sock_fprog {
            len: program.len() as libc::c_ushort,
            filter: program.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: fprog points at `program`, alive for the call; the kernel
        // copies and checks the program.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_ATTACH_FILTER,
                &fprog as *const _ as *const libc::c_void,
                mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// The classic BPF program of [`ProcConnector::follow_exits_of`]. A filter
/// reads the message from its netlink header on, and its word loads are
/// big-endian while the connector's fields are in the host's order: the
/// constants are compared byte-swapped on a little-endian host.
fn exit_filter(pids: &[u32]) -> Vec<libc::sock_filter> {
    const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const JEQ_X: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_X) as u16;
    const TAX: u16 = (libc::BPF_MISC | libc::BPF_TAX) as u16;
    const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    let stmt = |code, k| libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    };
    let jump = |code, k, jt, jf| libc::sock_filter { code, jt, jf, k };
    // What a big-endian load of a host-order field reads.
    let wire = |v: u32| u32::from_be_bytes(v.to_ne_bytes());
    let (accept, drop) = (u32::MAX, 0);
    let mut p = vec![
        stmt(LD_W_ABS, EVENT_OFFSET as u32),
        jump(JEQ_K, wire(PROC_EVENT_EXEC), 0, 1),
        stmt(RET_K, accept),
        jump(JEQ_K, wire(PROC_EVENT_EXIT), 1, 0),
        stmt(RET_K, drop),
        stmt(LD_W_ABS, EVENT_DATA_OFFSET as u32),
        stmt(TAX, 0),
        stmt(LD_W_ABS, EVENT_DATA_OFFSET as u32 + 4),
        // A thread's exit (pid ≠ tgid) never ends a process.
        jump(JEQ_X, 0, 1, 0),
        stmt(RET_K, drop),
    ];
    if pids.len() > MAX_FILTERED_PIDS {
        p.push(stmt(RET_K, accept));
        return p;
    }
    for &pid in pids {
        p.push(jump(JEQ_K, wire(pid), 0, 1));
        p.push(stmt(RET_K, accept));
    }
    p.push(stmt(RET_K, drop));
    p
}

/// The running kernel's release (`uname -r`), empty if unknown.
fn kernel_release() -> String {
    // SAFETY: utsname is plain data, filled by uname(2) on success.
    let mut u: libc::utsname = unsafe { mem::zeroed() };
    // SAFETY: `u` is a valid utsname.
    if unsafe { libc::uname(&mut u) } != 0 {
        return String::new();
    }
    let bytes: Vec<u8> = u
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Whether a kernel of `release` ("6.12.1-amd64") takes an event filter with
/// the subscription (Linux 6.6 and later).
fn kernel_filters_events(release: &str) -> bool {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (6, 6)
}

/// recvfrom(2), returning only datagrams sent by the kernel (port id 0).
fn recv_from_kernel(fd: i32, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: sockaddr_nl is plain data.
        let mut from: libc::sockaddr_nl = unsafe { mem::zeroed() };
        let mut len = mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
        // SAFETY: buf and from are valid for the lengths passed.
        let n = unsafe {
            libc::recvfrom(
                fd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                &mut from as *mut _ as *mut libc::sockaddr,
                &mut len,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if from.nl_pid == 0 {
            return Ok(n as usize);
        }
    }
}

/// Decodes every netlink message in one datagram.
fn parse(mut data: &[u8], out: &mut Vec<CnEvent>) {
    while data.len() >= NLMSG_HDRLEN {
        let len = get_u32(data, 0) as usize;
        if len < NLMSG_HDRLEN || len > data.len() {
            return;
        }
        let msg = &data[..len];
        let ty = u16::from_ne_bytes([msg[4], msg[5]]);
        if ty == libc::NLMSG_DONE as u16
            && msg.len() >= EVENT_DATA_OFFSET + 8
            && get_u32(msg, 16) == CN_IDX_PROC
            && get_u32(msg, 20) == CN_VAL_PROC
        {
            let what = get_u32(msg, EVENT_OFFSET);
            let pid = get_u32(msg, EVENT_DATA_OFFSET);
            let tgid = get_u32(msg, EVENT_DATA_OFFSET + 4);
            match what {
                PROC_EVENT_EXEC => out.push(CnEvent::Exec { pid: tgid }),
                // Threads exit too; only the main thread's exit ends the process.
                PROC_EVENT_EXIT if pid == tgid && msg.len() >= EVENT_DATA_OFFSET + 12 => {
                    out.push(CnEvent::Exit {
                        pid,
                        status: get_u32(msg, EVENT_DATA_OFFSET + 8),
                    })
                }
                _ => {}
            }
        }
        let aligned = (len + 3) & !3; // NLMSG_ALIGN
        data = &data[aligned.min(data.len())..];
    }
}

fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(what: u32, data: &[u32]) -> Vec<u8> {
        let mut m = vec![0u8; EVENT_DATA_OFFSET];
        for v in data {
            m.extend_from_slice(&v.to_ne_bytes());
        }
        let len = m.len() as u32;
        put_u32(&mut m, 0, len);
        m[4..6].copy_from_slice(&(libc::NLMSG_DONE as u16).to_ne_bytes());
        put_u32(&mut m, 16, CN_IDX_PROC);
        put_u32(&mut m, 20, CN_VAL_PROC);
        put_u32(&mut m, EVENT_OFFSET, what);
        m
    }

    #[test]
    fn event_filter_from_linux_6_6() {
        assert!(kernel_filters_events("6.6.0"));
        assert!(kernel_filters_events("6.12.48+deb13-amd64"));
        assert!(kernel_filters_events("7.0"));
        assert!(!kernel_filters_events("6.1.0-37-amd64"));
        assert!(!kernel_filters_events("5.15.0-generic"));
        assert!(!kernel_filters_events(""));
        assert!(!kernel_release().is_empty());
    }

    #[test]
    fn parses_exec_and_main_thread_exit_only() {
        let mut datagram = message(PROC_EVENT_EXEC, &[101, 100]);
        datagram.extend(message(PROC_EVENT_EXIT, &[101, 100, 0, 17, 1, 1])); // a thread
        datagram.extend(message(PROC_EVENT_EXIT, &[100, 100, 3 << 8, 17, 1, 1]));
        datagram.extend(message(1 /* fork */, &[1, 1, 100, 100]));
        let mut out = Vec::new();
        parse(&datagram, &mut out);
        assert_eq!(
            out,
            [
                CnEvent::Exec { pid: 100 },
                CnEvent::Exit {
                    pid: 100,
                    status: 3 << 8
                }
            ]
        );
    }

    /// Events for `pids` until `until` says stop or 5 s pass.
    fn events_for(
        c: &mut ProcConnector,
        pids: &[u32],
        until: impl Fn(&[CnEvent]) -> bool,
    ) -> Vec<CnEvent> {
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !until(&seen) {
            let mut batch = Vec::new();
            let left = deadline.saturating_duration_since(Instant::now());
            if !c.recv_timeout(&mut batch, left).unwrap() {
                break;
            }
            seen.extend(batch.into_iter().filter(|e| match e {
                CnEvent::Exec { pid } | CnEvent::Exit { pid, .. } => pids.contains(pid),
                CnEvent::Overflow => true,
            }));
        }
        seen
    }

    /// The kernel runs the filter: exits of processes not followed never
    /// arrive, a followed one's does, and execs always do. Needs the
    /// connector (root in the initial network namespace), as the agent does.
    #[test]
    fn the_filter_lets_through_execs_and_followed_exits_only() {
        let mut c = ProcConnector::open().expect("open the process connector (run as root)");
        c.follow_exits_of(&[]).unwrap();
        let mut unfollowed = std::process::Command::new("/bin/true").spawn().unwrap();
        let mut followed = std::process::Command::new("/bin/sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let (a, b) = (unfollowed.id(), followed.id());
        unfollowed.wait().unwrap();
        let execs = |seen: &[CnEvent]| {
            seen.contains(&CnEvent::Exec { pid: a }) && seen.contains(&CnEvent::Exec { pid: b })
        };
        let seen = events_for(&mut c, &[a, b], execs);
        assert!(execs(&seen), "{seen:?}");
        c.follow_exits_of(&[1, b]).unwrap();
        followed.kill().unwrap();
        followed.wait().unwrap();
        let exit_b = |seen: &[CnEvent]| {
            seen.iter()
                .any(|e| matches!(e, CnEvent::Exit { pid, .. } if *pid == b))
        };
        let seen = events_for(&mut c, &[a, b], exit_b);
        assert!(exit_b(&seen), "the followed exit never came: {seen:?}");
        assert!(
            !seen
                .iter()
                .any(|e| matches!(e, CnEvent::Exit { pid, .. } if *pid == a)),
            "an exit not followed came through: {seen:?}"
        );
        // Past the cap every main thread's exit comes.
        let many: Vec<u32> = (1..=MAX_FILTERED_PIDS as u32 + 1)
            .map(|p| p + 4_000_000)
            .collect();
        c.follow_exits_of(&many).unwrap();
        let mut other = std::process::Command::new("/bin/true").spawn().unwrap();
        let d = other.id();
        other.wait().unwrap();
        let exit_d = |seen: &[CnEvent]| {
            seen.iter()
                .any(|e| matches!(e, CnEvent::Exit { pid, .. } if *pid == d))
        };
        assert!(exit_d(&events_for(&mut c, &[d], exit_d)));
    }

    /// The watcher's thread sleeps in `wait`: another thread's wake-up ends
    /// it at once, an exec ends it with the event queued, and a timeout
    /// ends it with neither.
    #[test]
    fn a_wait_ends_on_a_wake_up_an_event_or_its_timeout() {
        let mut c = ProcConnector::open().expect("open the process connector (run as root)");
        c.follow_exits_of(&[]).unwrap();
        let drain = |c: &mut ProcConnector| while c.recv_now(&mut Vec::new()).unwrap() {};
        let wake = std::sync::Arc::new(WakeFd::new().unwrap());
        let waker = wake.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            waker.wake();
        });
        // Other execs on the machine may come first.
        let started = Instant::now();
        while !c
            .wait(wake.as_fd(), Some(Duration::from_secs(30)))
            .unwrap()
            .other
        {
            assert!(started.elapsed() < Duration::from_secs(30), "no wake-up");
            drain(&mut c);
        }
        t.join().unwrap();
        wake.clear();

        let mut child = std::process::Command::new("/bin/true").spawn().unwrap();
        child.wait().unwrap();
        let ready = c.wait(wake.as_fd(), Some(Duration::from_secs(30))).unwrap();
        assert!(ready.events && !ready.other, "{ready:?}");
        let mut out = Vec::new();
        assert!(c.recv_now(&mut out).unwrap());

        drain(&mut c);
        let started = Instant::now();
        let ready = c
            .wait(wake.as_fd(), Some(Duration::from_millis(20)))
            .unwrap();
        // Anything else on the machine may exec meanwhile; a wake-up may not.
        assert!(!ready.other, "{ready:?}");
        assert!(ready.events || started.elapsed() >= Duration::from_millis(20));
    }

    #[test]
    fn ignores_truncated_messages() {
        let mut m = message(PROC_EVENT_EXEC, &[5, 5]);
        m.truncate(EVENT_DATA_OFFSET + 4);
        let len = m.len() as u32;
        put_u32(&mut m, 0, len);
        let mut out = Vec::new();
        parse(&m, &mut out);
        assert!(out.is_empty());
    }
}
