//! Security descriptors written in SDDL: the named pipe's (who may connect)
//! and the state directory's (who may read the journal and the token).

use std::io;
use std::path::Path;
use std::ptr::null_mut;

use windows_sys::Win32::Foundation::LocalFree;
use windows_sys::Win32::Security::Authorization::ConvertStringSecurityDescriptorToSecurityDescriptorW;
use windows_sys::Win32::Security::{
    SetFileSecurityW, DACL_SECURITY_INFORMATION, PROTECTED_DACL_SECURITY_INFORMATION,
    PSECURITY_DESCRIPTOR, SECURITY_ATTRIBUTES,
};

use super::{check, wide};

/// SDDL revision 1, the only one.
const SDDL_REVISION_1: u32 = 1;

/// The state directory: full control for SYSTEM and Administrators only,
/// inherited by everything in it; inheritance from the parent is cut.
pub const STATE_DIR_SDDL: &str = "D:P(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)";

/// The pipe: SYSTEM and Administrators full control; authenticated users may
/// read, write and query it (0x12019b: FILE_GENERIC_READ | FILE_WRITE_DATA |
/// FILE_WRITE_EA | FILE_WRITE_ATTRIBUTES) but not FILE_CREATE_PIPE_INSTANCE, so
/// no user can start a fake agent on the same name. Network logons are denied
/// on top of the pipe rejecting remote clients.
pub const PIPE_SDDL: &str = "D:P(D;;GA;;;NU)(A;;GA;;;SY)(A;;GA;;;BA)(A;;0x12019b;;;AU)";

/// A self-relative security descriptor, freed on drop.
pub struct SecurityDescriptor(PSECURITY_DESCRIPTOR);

// SAFETY: the descriptor is plain memory owned by this value and never mutated.
unsafe impl Send for SecurityDescriptor {}
// SAFETY: as above.
unsafe impl Sync for SecurityDescriptor {}

impl SecurityDescriptor {
    pub fn from_sddl(sddl: &str) -> io::Result<SecurityDescriptor> {
        let text = wide(sddl);
        let mut sd: PSECURITY_DESCRIPTOR = null_mut();
        // SAFETY: a NUL-terminated string; `sd` receives a LocalAlloc'd descriptor.
        check(unsafe {
            ConvertStringSecurityDescriptorToSecurityDescriptorW(
                text.as_ptr(),
                SDDL_REVISION_1,
                &mut sd,
                null_mut(),
            )
        })?;
        Ok(SecurityDescriptor(sd))
    }

    /// `SECURITY_ATTRIBUTES` pointing at this descriptor; valid while `self` is.
    pub fn attributes(&self) -> SECURITY_ATTRIBUTES {
        SECURITY_ATTRIBUTES {
            nLength: std::mem::size_of::<SECURITY_ATTRIBUTES>() as u32,
            lpSecurityDescriptor: self.0,
            bInheritHandle: 0,
        }
    }

    /// Sets this descriptor's DACL on `path`, protected from inheritance.
    pub fn apply_to(&self, path: &Path) -> io::Result<()> {
        let p = wide(path);
        // SAFETY: a NUL-terminated path and a valid descriptor.
        check(unsafe {
            SetFileSecurityW(
                p.as_ptr(),
                DACL_SECURITY_INFORMATION | PROTECTED_DACL_SECURITY_INFORMATION,
                self.0,
            )
        })
    }
}

impl Drop for SecurityDescriptor {
    fn drop(&mut self) {
        // SAFETY: allocated by ConvertStringSecurityDescriptorToSecurityDescriptorW.
        unsafe { LocalFree(self.0) };
    }
}

/// Restricts a directory (and what it will hold) or a file to SYSTEM and
/// Administrators.
pub fn restrict_to_admins(dir: &Path) -> io::Result<()> {
    SecurityDescriptor::from_sddl(STATE_DIR_SDDL)?.apply_to(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_parse_and_apply() {
        for sddl in [STATE_DIR_SDDL, PIPE_SDDL] {
            let sd = SecurityDescriptor::from_sddl(sddl).unwrap();
            assert!(!sd.attributes().lpSecurityDescriptor.is_null());
        }
        assert!(SecurityDescriptor::from_sddl("D:(nonsense").is_err());
        let dir = tempfile::tempdir().unwrap();
        restrict_to_admins(dir.path()).unwrap();
    }
}
