//! Seeing through a dynamic loader run as a command.
//!
//! `ld-linux-x86-64.so.2 ./acad` (or the musl loader, with the same options)
//! loads and runs `./acad`, but the kernel only knows it ran the loader: exe,
//! comm and argv[0] all name the loader. The program is the first argument that
//! is not one of the loader's own options.

/// Whether an executable file name is a dynamic loader's: `ld-linux*.so*`,
/// `ld-musl-*.so*`, `ld64.so*`, `ld.so`.
pub fn is_dynamic_loader(file_name: &str) -> bool {
    let name = file_name.strip_suffix(" (deleted)").unwrap_or(file_name);
    name == "ld.so"
        || ((name.starts_with("ld-") || name.starts_with("ld64.")) && name.contains(".so"))
}

/// Loader options that take a value (glibc's and musl's ld.so).
const OPTIONS_WITH_VALUE: &[&str] = &[
    "--library-path",
    "--preload",
    "--argv0",
    "--audit",
    "--inhibit-rpath",
    "--glibc-hwcaps-prepend",
    "--glibc-hwcaps-mask",
];

/// The program a loader command line runs: `args[0]` is the loader; options
/// (with their values) are skipped; the first other argument is the program.
pub fn loader_target(args: &[String]) -> Option<&str> {
    let mut rest = args.iter().skip(1);
    while let Some(arg) = rest.next() {
        if arg == "--" {
            return rest.next().map(String::as_str);
        }
        if let Some(opt) = arg.strip_prefix("--") {
            if !opt.contains('=') && OPTIONS_WITH_VALUE.contains(&arg.as_str()) {
                rest.next();
            }
            continue;
        }
        return Some(arg);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn loader_names() {
        for name in [
            "ld-linux-x86-64.so.2",
            "ld-linux-aarch64.so.1",
            "ld-linux.so.2",
            "ld-musl-x86_64.so.1",
            "ld64.so.2",
            "ld.so",
            "ld-2.36.so",
            "ld-linux-x86-64.so.2 (deleted)",
        ] {
            assert!(is_dynamic_loader(name), "{name}");
        }
        for name in ["ld", "ldd", "ldconfig", "acad", "old-so", "ld-helper"] {
            assert!(!is_dynamic_loader(name), "{name}");
        }
    }

    #[test]
    fn the_program_after_the_options() {
        assert_eq!(
            loader_target(&args(&["ld.so", "./acad", "-x"])),
            Some("./acad")
        );
        assert_eq!(
            loader_target(&args(&[
                "ld.so",
                "--inhibit-cache",
                "--preload",
                "libx.so",
                "--argv0",
                "notepad",
                "/opt/acad/acad"
            ])),
            Some("/opt/acad/acad")
        );
        assert_eq!(
            loader_target(&args(&["ld.so", "--library-path=/x", "acad"])),
            Some("acad")
        );
        assert_eq!(loader_target(&args(&["ld.so", "--", "acad"])), Some("acad"));
        assert_eq!(loader_target(&args(&["ld.so", "--list"])), None);
        assert_eq!(loader_target(&args(&["ld.so"])), None);
    }
}
