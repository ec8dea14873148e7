//! Which product a process runs, by what the kernel says it runs (Linux).
//!
//! Names are only the first hint: a product renamed, reached through a
//! symlink or a bind mount, copied, or run by a loader (the dynamic loader,
//! valgrind, qemu) carries another name. So a product is also known by its
//! file:
//!
//! * **device and inode** of `/proc/PID/exe`: the file itself, whatever path
//!   reached it (a symlink, a hard link, a bind mount in another mount
//!   namespace). Product files are learned from every process that runs under
//!   a product's name, and found at start in the configured product
//!   directories (`product_dirs`);
//! * **content**: an executable with the size of a known product file is
//!   hashed (SHA-256, cached per file version: device, inode, size, mtime) and
//!   compared, which finds a renamed copy;
//! * **executable mappings** (`/proc/PID/maps`): for a *runner* — a dynamic
//!   loader, valgrind, qemu, or any executable a user owns (a loader of their
//!   own) — the files it has mapped executable are checked the same way.
//!   A runner maps its program after the exec the watcher sees, so it is
//!   checked again at the next few ticks ([`RECHECKS`]).
//!
//! What still escapes is said in SECURITY.md: a modified private copy (other
//! content, other inode) under a name no product has, run directly; and root.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use flex_protocol::ids::ProductId;

use super::tracker::Matcher;
use crate::process::{self, is_dynamic_loader, loader_target, FileId, Names};

/// Ticks a runner is checked again after its exec.
pub const RECHECKS: u8 = 5;
/// Content hashes kept (per file version); the cache is cleared when full.
const HASH_CACHE: usize = 4096;
/// Entries visited when indexing the product directories, and how deep.
const INDEX_ENTRIES: usize = 100_000;
const INDEX_DEPTH: usize = 6;

/// What a process was found to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// A product, and the name (or path) it was recognised by.
    Product {
        product: ProductId,
        name: String,
    },
    /// Nothing yet, but it may load a product: check again later.
    Runner,
    Nothing,
}

#[derive(Debug, Clone)]
struct Known {
    product: ProductId,
    id: FileId,
    path: PathBuf,
}

#[derive(Debug, Default)]
pub struct Identifier {
    matcher: Matcher,
    /// Product files by (device, inode).
    files: HashMap<(u64, u64), Known>,
    /// The same files' inodes by size.
    sizes: HashMap<u64, Vec<(u64, u64)>>,
    hashes: HashMap<FileId, [u8; 32]>,
}

impl Identifier {
    /// A new rate sheet: files of products no longer on it are forgotten.
    pub fn set_matcher(&mut self, matcher: Matcher) {
        self.matcher = matcher;
        let gone: Vec<(u64, u64)> = self
            .files
            .iter()
            .filter(|(_, k)| !self.matcher.has_product(&k.product))
            .map(|(i, _)| *i)
            .collect();
        for inode in gone {
            self.forget(inode);
        }
    }

    fn forget(&mut self, inode: (u64, u64)) {
        if let Some(k) = self.files.remove(&inode) {
            if let Some(v) = self.sizes.get_mut(&k.id.size) {
                v.retain(|i| *i != inode);
            }
        }
    }

    /// Remembers `id` (reached as `path`) as a file of `product`.
    pub fn learn(&mut self, product: &ProductId, id: FileId, path: &Path) {
        let inode = id.inode();
        if self.files.get(&inode).is_some_and(|k| k.id == id) {
            return;
        }
        self.forget(inode);
        self.files.insert(
            inode,
            Known {
                product: product.clone(),
                id,
                path: path.to_path_buf(),
            },
        );
        self.sizes.entry(id.size).or_default().push(inode);
    }

    /// Finds the product files under `dirs` by their names (at most
    /// [`INDEX_DEPTH`] levels and [`INDEX_ENTRIES`] entries in all).
    pub fn index_dirs(&mut self, dirs: &[PathBuf]) {
        let mut budget = INDEX_ENTRIES;
        let mut stack: Vec<(PathBuf, usize)> = dirs.iter().map(|d| (d.clone(), 0)).collect();
        while let Some((dir, depth)) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if budget == 0 {
                    tracing::warn!(
                        "product directories hold over {INDEX_ENTRIES} entries: indexing stopped"
                    );
                    return;
                }
                budget -= 1;
                let Ok(kind) = entry.file_type() else {
                    continue;
                };
                let path = entry.path();
                if kind.is_dir() {
                    if depth < INDEX_DEPTH {
                        stack.push((path, depth + 1));
                    }
                    continue;
                }
                let name = entry.file_name().to_string_lossy().into_owned();
                if let Some((product, _)) = self.matcher.find([name]) {
                    if let Ok(meta) = std::fs::metadata(&path) {
                        if meta.is_file() {
                            self.learn(&product, FileId::of(&meta), &path);
                        }
                    }
                }
            }
        }
    }

    /// What process `pid` (whose names are `names`, and whose executable is
    /// `exe`, as [`process::exe_file`] read it) runs.
    pub fn identify(&mut self, pid: u32, names: &Names, exe: Option<FileId>) -> Identity {
        if let Some(k) = exe.and_then(|e| self.files.get(&e.inode())) {
            let name = names
                .exe_name()
                .unwrap_or_else(|| k.path.display().to_string());
            return Identity::Product {
                product: k.product.clone(),
                name,
            };
        }
        let exe_name = names.exe_name();
        let loader = exe_name.as_deref().is_some_and(is_dynamic_loader);
        if let Some((product, name)) = self.matcher.find(names.candidates()) {
            // Learn the file when the match was its own file name.
            if let (Some(e), Some(path)) = (exe, &names.exe_path) {
                if exe_name.as_deref() == Some(name.as_str()) {
                    self.learn(&product, e, path);
                }
            }
            return Identity::Product { product, name };
        }
        if loader {
            // `ld.so PATH`: the file PATH names as the process sees it, through
            // any symlink.
            if let Some(target) = loader_target(&names.args) {
                if let Some(file) = process::resolve_in(pid, target) {
                    if let Some(k) = self.files.get(&file.inode()) {
                        return Identity::Product {
                            product: k.product.clone(),
                            name: target.to_string(),
                        };
                    }
                }
            }
        }
        if let Some(e) = exe {
            if let Some(found) = self.same_content(e, || process::open_exe(pid).ok()) {
                return Identity::Product {
                    product: found,
                    name: exe_name.clone().unwrap_or_default(),
                };
            }
        }
        let runner = loader
            || exe_name.as_deref().is_some_and(is_known_runner)
            || exe.is_some_and(|e| e.uid != 0);
        if !runner {
            return Identity::Nothing;
        }
        match self.mappings(pid) {
            Some(found) => found,
            None => Identity::Runner,
        }
    }

    /// Checks the files `pid` has mapped executable.
    pub fn mappings(&mut self, pid: u32) -> Option<Identity> {
        for m in process::exec_mappings(pid) {
            if let Some(k) = self.files.get(&(m.dev, m.ino)) {
                return Some(Identity::Product {
                    product: k.product.clone(),
                    name: m.path.display().to_string(),
                });
            }
            let base = m.path.file_name().map(|n| n.to_string_lossy().into_owned());
            if let Some((product, name)) = base.and_then(|b| self.matcher.find([b])) {
                if let Some((id, _)) = process::mapped_file(pid, &m) {
                    self.learn(&product, id, &m.path);
                }
                return Some(Identity::Product { product, name });
            }
            if self.sizes.is_empty() {
                continue;
            }
            if let Some((id, file)) = process::mapped_file(pid, &m) {
                let mut file = Some(file);
                if let Some(product) = self.same_content(id, || file.take()) {
                    return Some(Identity::Product {
                        product,
                        name: m.path.display().to_string(),
                    });
                }
            }
        }
        None
    }

    /// The product whose known file has the content of `id` (opened by
    /// `open` if it must be read), when exactly one product has it.
    fn same_content(
        &mut self,
        id: FileId,
        open: impl FnOnce() -> Option<std::fs::File>,
    ) -> Option<ProductId> {
        let candidates: Vec<Known> = self
            .sizes
            .get(&id.size)?
            .iter()
            .filter_map(|i| self.files.get(i).cloned())
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let digest = match self.hashes.get(&id) {
            Some(h) => *h,
            None => {
                let h = hash(open()?)?;
                self.cache(id, h);
                h
            }
        };
        let mut found: Option<ProductId> = None;
        for k in candidates {
            let known = match self.hashes.get(&k.id) {
                Some(h) => *h,
                None => {
                    let Some(h) = std::fs::File::open(&k.path).ok().and_then(hash) else {
                        continue;
                    };
                    self.cache(k.id, h);
                    h
                }
            };
            if known == digest {
                match &found {
                    // Two products with one content: the content says nothing.
                    Some(p) if *p != k.product => return None,
                    _ => found = Some(k.product.clone()),
                }
            }
        }
        found
    }

    fn cache(&mut self, id: FileId, h: [u8; 32]) {
        if self.hashes.len() >= HASH_CACHE {
            self.hashes.clear();
        }
        self.hashes.insert(id, h);
    }
}

fn hash(mut f: std::fs::File) -> Option<[u8; 32]> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return None,
        }
    }
    Some(hasher.finalize().into())
}

/// Programs that load and run another program's code without exec'ing it.
fn is_known_runner(exe_name: &str) -> bool {
    exe_name.starts_with("valgrind")
        || exe_name.starts_with("qemu-")
        || (exe_name.ends_with("-linux") && exe_name.contains('-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runners() {
        for name in [
            "none-amd64-linux",
            "memcheck-x86-linux",
            "valgrind",
            "qemu-x86_64",
        ] {
            assert!(is_known_runner(name), "{name}");
        }
        for name in ["sleep", "acad", "linux", "bash"] {
            assert!(!is_known_runner(name), "{name}");
        }
    }
}
