//! The version resource of a PE file: the names a product's vendor gave it,
//! which survive renaming the .exe.

use std::ffi::c_void;
use std::path::Path;
use std::ptr::null_mut;

use windows_sys::Win32::Storage::FileSystem::{
    GetFileVersionInfoSizeW, GetFileVersionInfoW, VerQueryValueW,
};

use super::{from_wide, wide};

/// The strings of a version resource the watcher matches on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VersionInfo {
    pub original_filename: Option<String>,
    pub product_name: Option<String>,
    pub product_version: Option<String>,
}

/// Version resources are tiny; a file claiming more is not read.
const MAX_RESOURCE: u32 = 1 << 20;

/// Reads the version resource of `path`; `None` when it has none.
pub fn read(path: &Path) -> Option<VersionInfo> {
    let p = wide(path);
    let mut ignored = 0;
    // SAFETY: a NUL-terminated path.
    let size = unsafe { GetFileVersionInfoSizeW(p.as_ptr(), &mut ignored) };
    if size == 0 || size > MAX_RESOURCE {
        return None;
    }
    let mut data = vec![0u8; size as usize];
    // SAFETY: a buffer of `size` bytes.
    if unsafe { GetFileVersionInfoW(p.as_ptr(), 0, size, data.as_mut_ptr().cast()) } == 0 {
        return None;
    }
    let mut tables: Vec<String> = translations(&data)
        .into_iter()
        .map(|(lang, cp)| format!("{lang:04x}{cp:04x}"))
        .collect();
    // Files that list no translation usually use one of these two.
    tables.extend(["040904b0".to_string(), "040904e4".to_string()]);
    let get = |key: &str| {
        tables
            .iter()
            .find_map(|t| query_string(&data, &format!("\\StringFileInfo\\{t}\\{key}")))
    };
    let info = VersionInfo {
        original_filename: get("OriginalFilename"),
        product_name: get("ProductName"),
        product_version: get("ProductVersion"),
    };
    (info != VersionInfo::default()).then_some(info)
}

/// The (language, code page) pairs of `\VarFileInfo\Translation`.
fn translations(data: &[u8]) -> Vec<(u16, u16)> {
    let Some((ptr, len)) = query(data, "\\VarFileInfo\\Translation") else {
        return Vec::new();
    };
    // SAFETY: VerQueryValueW points `len` bytes into `data`, which is alive.
    let bytes = unsafe { std::slice::from_raw_parts(ptr as *const u8, len as usize) };
    bytes
        .chunks_exact(4)
        .map(|c| {
            (
                u16::from_le_bytes([c[0], c[1]]),
                u16::from_le_bytes([c[2], c[3]]),
            )
        })
        .collect()
}

fn query_string(data: &[u8], key: &str) -> Option<String> {
    let (ptr, len) = query(data, key)?;
    // SAFETY: for a string value `len` counts UTF-16 units inside `data`.
    let units = unsafe { std::slice::from_raw_parts(ptr as *const u16, len as usize) };
    let s = from_wide(units).trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn query(data: &[u8], key: &str) -> Option<(*const c_void, u32)> {
    let k = wide(key);
    let mut ptr: *mut c_void = null_mut();
    let mut len = 0u32;
    // SAFETY: `data` holds a version block from GetFileVersionInfoW.
    let ok = unsafe { VerQueryValueW(data.as_ptr().cast(), k.as_ptr(), &mut ptr, &mut len) };
    (ok != 0 && !ptr.is_null() && len > 0).then_some((ptr as *const c_void, len))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The test product built by tests/wine/prepare.sh, whose version
    /// resource names it flexfake.exe (the Wine runner exports its path).
    pub(crate) fn fake_product() -> std::path::PathBuf {
        std::env::var_os("FLEX_TEST_FAKE_PRODUCT")
            .map(Into::into)
            .expect("FLEX_TEST_FAKE_PRODUCT is unset: run the Windows tests through tests/wine/runner.sh (cargo test --target x86_64-pc-windows-gnu does)")
    }

    #[test]
    fn version_resource_of_the_test_product() {
        let info = read(&fake_product()).expect("the test product has a version resource");
        assert_eq!(info.original_filename.as_deref(), Some("flexfake.exe"));
        assert_eq!(info.product_name.as_deref(), Some("Flex Fake Product"));
        assert_eq!(info.product_version.as_deref(), Some("1.0"));
    }

    #[test]
    fn files_without_one() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain.exe");
        std::fs::write(&plain, b"MZ not really").unwrap();
        assert_eq!(read(&plain), None);
        assert_eq!(read(&dir.path().join("missing.exe")), None);
    }
}
