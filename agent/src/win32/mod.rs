//! Small safe wrappers over the Win32 calls the Windows edges share: wide
//! strings, owned handles, security identifiers and access tokens.
//!
//! Everything unsafe about Windows lives in `win32/` and the per-OS files that
//! use it (`process/windows.rs`, `socket/pipe_windows.rs`, ...); each `unsafe`
//! block is a single documented call whose buffers are owned right there.

pub mod acl;
pub mod dpapi;
pub mod service;
pub mod version;

use std::ffi::{c_void, OsStr, OsString};
use std::io;
use std::os::windows::ffi::{OsStrExt, OsStringExt};
use std::ptr::null_mut;

use windows_sys::Win32::Foundation::{CloseHandle, LocalFree, HANDLE, INVALID_HANDLE_VALUE};
use windows_sys::Win32::Security::Authorization::{ConvertSidToStringSidW, ConvertStringSidToSidW};
use windows_sys::Win32::Security::{
    CheckTokenMembership, GetTokenInformation, LookupAccountNameW, LookupAccountSidW, TokenUser,
    PSID, SID_NAME_USE, TOKEN_USER,
};

/// `s` as a NUL-terminated UTF-16 string.
pub fn wide(s: impl AsRef<OsStr>) -> Vec<u16> {
    s.as_ref().encode_wide().chain(Some(0)).collect()
}

/// The text of a UTF-16 buffer up to its first NUL.
pub fn from_wide(buf: &[u16]) -> String {
    let end = buf.iter().position(|&c| c == 0).unwrap_or(buf.len());
    OsString::from_wide(&buf[..end])
        .to_string_lossy()
        .into_owned()
}

/// The text of a NUL-terminated UTF-16 string.
///
/// # Safety
/// `p` must point to a NUL-terminated UTF-16 string.
pub unsafe fn from_wide_ptr(p: *const u16) -> String {
    let mut len = 0;
    // SAFETY: per the caller, every unit up to the NUL is readable.
    while unsafe { *p.add(len) } != 0 {
        len += 1;
    }
    // SAFETY: `len` units were just counted.
    from_wide(unsafe { std::slice::from_raw_parts(p, len) })
}

/// The calling thread's last error as an `io::Error`.
pub fn last_error() -> io::Error {
    io::Error::last_os_error()
}

/// `Err(last_error())` when a Win32 BOOL result is false.
pub fn check(ok: i32) -> io::Result<()> {
    if ok == 0 {
        Err(last_error())
    } else {
        Ok(())
    }
}

/// A kernel handle closed on drop.
#[derive(Debug)]
pub struct Handle(HANDLE);

// SAFETY: a kernel handle is a process-wide value; Windows allows using and
// closing it from any thread.
unsafe impl Send for Handle {}
// SAFETY: as above; the wrappers only pass it to thread-safe kernel calls.
unsafe impl Sync for Handle {}

impl Handle {
    /// Takes ownership of `h`; `None` for the null and invalid handles.
    pub fn new(h: HANDLE) -> Option<Handle> {
        (!h.is_null() && h != INVALID_HANDLE_VALUE).then_some(Handle(h))
    }

    /// Takes ownership of `h`, or the last error when it is null/invalid.
    pub fn check(h: HANDLE) -> io::Result<Handle> {
        Handle::new(h).ok_or_else(last_error)
    }

    pub fn raw(&self) -> HANDLE {
        self.0
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: we own the handle and close it once.
        unsafe { CloseHandle(self.0) };
    }
}

/// Memory the system allocated with `LocalAlloc`, freed on drop.
struct LocalMem(*mut c_void);

impl Drop for LocalMem {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: the pointer came from a call documented to need LocalFree.
            unsafe { LocalFree(self.0) };
        }
    }
}

/// A security identifier (the user of a token or process) in its string form
/// (`S-1-5-21-…-1001`), which is how the agent keys accounts on Windows.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sid(pub String);

/// LocalSystem, the account the service runs as.
pub const SYSTEM_SID: &str = "S-1-5-18";

impl Sid {
    /// # Safety
    /// `psid` must point to a valid SID.
    unsafe fn from_psid(psid: PSID) -> io::Result<Sid> {
        let mut text: *mut u16 = null_mut();
        // SAFETY: per the caller, psid is valid; `text` receives a LocalAlloc'd string.
        check(unsafe { ConvertSidToStringSidW(psid, &mut text) })?;
        let _free = LocalMem(text.cast());
        // SAFETY: the string is NUL-terminated.
        Ok(Sid(unsafe { from_wide_ptr(text) }))
    }

    /// Runs `f` with this SID in binary form.
    fn with_psid<T>(&self, f: impl FnOnce(PSID) -> io::Result<T>) -> io::Result<T> {
        let mut psid: PSID = null_mut();
        let text = wide(&self.0);
        // SAFETY: `text` is NUL-terminated; psid receives a LocalAlloc'd SID.
        check(unsafe { ConvertStringSidToSidW(text.as_ptr(), &mut psid) })?;
        let _free = LocalMem(psid);
        f(psid)
    }

    /// `DOMAIN\user` of this SID, or the SID text when it does not resolve (a
    /// deleted account, a domain controller out of reach).
    pub fn account_name(&self) -> String {
        self.with_psid(|psid| {
            let mut name = [0u16; 256];
            let mut domain = [0u16; 256];
            let (mut nlen, mut dlen) = (name.len() as u32, domain.len() as u32);
            let mut kind: SID_NAME_USE = 0;
            // SAFETY: buffers and their lengths in UTF-16 units.
            check(unsafe {
                LookupAccountSidW(
                    std::ptr::null(),
                    psid,
                    name.as_mut_ptr(),
                    &mut nlen,
                    domain.as_mut_ptr(),
                    &mut dlen,
                    &mut kind,
                )
            })?;
            let (name, domain) = (from_wide(&name), from_wide(&domain));
            Ok(if domain.is_empty() {
                name
            } else {
                format!("{domain}\\{name}")
            })
        })
        .unwrap_or_else(|_| self.0.clone())
    }

    /// The SID of local or domain account `name` (`user` or `DOMAIN\user`).
    pub fn lookup(name: &str) -> Option<Sid> {
        let wname = wide(name);
        let mut sid = [0u8; 68]; // SECURITY_MAX_SID_SIZE
        let mut domain = [0u16; 256];
        let (mut slen, mut dlen) = (sid.len() as u32, domain.len() as u32);
        let mut kind: SID_NAME_USE = 0;
        // SAFETY: buffers and their lengths (bytes for the SID, units for the domain).
        let ok = unsafe {
            LookupAccountNameW(
                std::ptr::null(),
                wname.as_ptr(),
                sid.as_mut_ptr().cast(),
                &mut slen,
                domain.as_mut_ptr(),
                &mut dlen,
                &mut kind,
            )
        };
        if ok == 0 {
            return None;
        }
        // SAFETY: LookupAccountNameW wrote a valid SID into `sid`.
        unsafe { Sid::from_psid(sid.as_mut_ptr().cast()) }.ok()
    }
}

/// The user SID of an access token.
pub fn token_user(token: &Handle) -> io::Result<Sid> {
    // TOKEN_USER plus the SID it points into; 256 bytes holds any SID.
    let mut buf = [0u64; 32];
    let mut len = 0u32;
    // SAFETY: an 8-byte aligned buffer and its size in bytes.
    check(unsafe {
        GetTokenInformation(
            token.raw(),
            TokenUser,
            buf.as_mut_ptr().cast(),
            std::mem::size_of_val(&buf) as u32,
            &mut len,
        )
    })?;
    // SAFETY: GetTokenInformation filled a TOKEN_USER at the start of buf.
    let user = unsafe { &*(buf.as_ptr() as *const TOKEN_USER) };
    // SAFETY: its SID pointer points into buf, still alive.
    unsafe { Sid::from_psid(user.User.Sid) }
}

/// Whether an impersonation token is LocalSystem or an enabled member of
/// BUILTIN\Administrators. A UAC-filtered token of an administrator has the
/// group for deny only and is not an administrator here: only an elevated
/// caller is.
pub fn token_is_admin(token: &Handle, user: &Sid) -> bool {
    if user.0 == SYSTEM_SID {
        return true;
    }
    Sid("S-1-5-32-544".into())
        .with_psid(|admins| {
            let mut member = 0;
            // SAFETY: an impersonation token, a valid SID and an out BOOL.
            check(unsafe { CheckTokenMembership(token.raw(), admins, &mut member) })?;
            Ok(member != 0)
        })
        .unwrap_or(false)
}

/// The machine's ProgramData folder (`C:\ProgramData`), as the shell knows
/// it: the folder the MSI's CommonAppDataFolder names. The environment
/// variable is not used, because a service's environment may differ.
/// The NetBIOS name of the domain this computer is joined to, if any (a
/// workgroup or an unjoined computer has none).
pub fn joined_domain() -> Option<String> {
    use windows_sys::Win32::NetworkManagement::NetManagement::{
        NetApiBufferFree, NetGetJoinInformation, NetSetupDomainName, NETSETUP_JOIN_STATUS,
    };
    let mut name: windows_sys::core::PWSTR = null_mut();
    let mut status: NETSETUP_JOIN_STATUS = 0;
    // SAFETY: out-pointers to fill; the buffer is freed below.
    let rc = unsafe { NetGetJoinInformation(std::ptr::null(), &mut name, &mut status) };
    if rc != 0 || name.is_null() {
        return None;
    }
    // SAFETY: the API returned a NUL-terminated wide string.
    let len = (0..).take_while(|&i| unsafe { *name.add(i) } != 0).count();
    let domain = from_wide(unsafe { std::slice::from_raw_parts(name, len) });
    // SAFETY: allocated by NetGetJoinInformation.
    unsafe { NetApiBufferFree(name as *const c_void) };
    (status == NetSetupDomainName && !domain.is_empty()).then_some(domain)
}

pub fn program_data() -> Option<String> {
    use windows_sys::Win32::System::Com::CoTaskMemFree;
    use windows_sys::Win32::UI::Shell::{FOLDERID_ProgramData, SHGetKnownFolderPath};
    let mut path: *mut u16 = std::ptr::null_mut();
    // SAFETY: a known folder id and an out pointer the shell allocates.
    let hr =
        unsafe { SHGetKnownFolderPath(&FOLDERID_ProgramData, 0, std::ptr::null_mut(), &mut path) };
    if hr != 0 || path.is_null() {
        if !path.is_null() {
            // SAFETY: allocated by the shell, freed once.
            unsafe { CoTaskMemFree(path.cast()) };
        }
        return std::env::var("ProgramData").ok();
    }
    // SAFETY: a NUL-terminated string from the shell.
    let s = unsafe { from_wide_ptr(path) };
    // SAFETY: allocated by the shell, freed once.
    unsafe { CoTaskMemFree(path.cast()) };
    Some(s)
}

/// Lets go of the console window this process was started with, if any.
pub fn detach_console() {
    // SAFETY: no arguments; failing (no console) is fine.
    unsafe { windows_sys::Win32::System::Console::FreeConsole() };
}

/// Whether this process runs as LocalSystem or elevated administrator.
pub fn current_is_admin() -> bool {
    Sid("S-1-5-32-544".into())
        .with_psid(|admins| {
            let mut member = 0;
            // SAFETY: a null token means the calling thread's own token.
            check(unsafe { CheckTokenMembership(std::ptr::null_mut(), admins, &mut member) })?;
            Ok(member != 0)
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wide_strings_round_trip() {
        let w = wide("C:\\Flex\\é");
        assert_eq!(w.last(), Some(&0));
        assert_eq!(from_wide(&w), "C:\\Flex\\é");
    }

    #[test]
    fn well_known_sids_resolve() {
        let system = Sid(SYSTEM_SID.into());
        let name = system.account_name();
        assert!(name.to_uppercase().ends_with("\\SYSTEM"), "{name}");
        let again = Sid::lookup(&name).expect("SYSTEM resolves by name");
        assert_eq!(again, system);
        assert_eq!(Sid::lookup("no-such-account-flex-test"), None);
        let unknown = Sid("S-1-5-21-1-2-3-4242".into());
        assert_eq!(unknown.account_name(), "S-1-5-21-1-2-3-4242");
    }
}
