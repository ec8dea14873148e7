//! DPAPI: the device token file of the service, encrypted for the machine.
//!
//! `CryptProtectData` with `CRYPTPROTECT_LOCAL_MACHINE`: any process on this
//! machine that can read the file could decrypt it, which the state
//! directory's ACL (SYSTEM and Administrators) prevents; what DPAPI adds is that
//! a copy of the file taken off the machine (a backup, a disk image) is useless.
//! The entropy ties blobs to this use.

use std::io;
use std::ptr::{null, null_mut};

use windows_sys::Win32::Foundation::LocalFree;
use windows_sys::Win32::Security::Cryptography::{
    CryptProtectData, CryptUnprotectData, CRYPTPROTECT_LOCAL_MACHINE, CRYPTPROTECT_UI_FORBIDDEN,
    CRYPT_INTEGER_BLOB,
};

use super::check;

const ENTROPY: &[u8] = b"flex-agent device token v1";

fn blob(bytes: &[u8]) -> CRYPT_INTEGER_BLOB {
    CRYPT_INTEGER_BLOB {
        cbData: bytes.len() as u32,
        pbData: bytes.as_ptr() as *mut u8,
    }
}

/// Copies a system-allocated blob out and frees it.
fn take(out: CRYPT_INTEGER_BLOB) -> Vec<u8> {
    // SAFETY: the API returned cbData bytes at pbData, allocated with LocalAlloc.
    let bytes = unsafe { std::slice::from_raw_parts(out.pbData, out.cbData as usize) }.to_vec();
    // SAFETY: freed once, as the API documents.
    unsafe { LocalFree(out.pbData.cast()) };
    bytes
}

/// Encrypts `plain` for this machine.
pub fn protect(plain: &[u8]) -> io::Result<Vec<u8>> {
    let (input, entropy) = (blob(plain), blob(ENTROPY));
    let mut out = CRYPT_INTEGER_BLOB {
        cbData: 0,
        pbData: null_mut(),
    };
    // SAFETY: input blobs borrow live slices; `out` receives a LocalAlloc'd blob.
    check(unsafe {
        CryptProtectData(
            &input,
            null(),
            &entropy,
            null(),
            null(),
            CRYPTPROTECT_LOCAL_MACHINE | CRYPTPROTECT_UI_FORBIDDEN,
            &mut out,
        )
    })?;
    Ok(take(out))
}

/// Decrypts what [`protect`] produced on this machine.
pub fn unprotect(sealed: &[u8]) -> io::Result<Vec<u8>> {
    let (input, entropy) = (blob(sealed), blob(ENTROPY));
    let mut out = CRYPT_INTEGER_BLOB {
        cbData: 0,
        pbData: null_mut(),
    };
    // SAFETY: as in `protect`.
    check(unsafe {
        CryptUnprotectData(
            &input,
            null_mut(),
            &entropy,
            null(),
            null(),
            CRYPTPROTECT_UI_FORBIDDEN,
            &mut out,
        )
    })?;
    Ok(take(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_hides_the_secret() {
        let secret = b"dev_4f1c-secret-token";
        let sealed = protect(secret).unwrap();
        assert!(
            !sealed.windows(secret.len()).any(|w| w == secret),
            "the sealed blob must not contain the token"
        );
        assert_eq!(unprotect(&sealed).unwrap(), secret);
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 0xff;
        assert!(unprotect(&tampered).is_err());
        assert!(unprotect(b"not a dpapi blob").is_err());
    }
}
