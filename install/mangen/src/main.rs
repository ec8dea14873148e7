//! `flex-manpages DIR`: writes `flex-agent.1`, `flexctl.1`, `flex-server.1` and
//! `flex-admin.1` (one page per binary, its subcommands included) into DIR,
//! from the same clap definitions the binaries parse. Run by
//! `install/deb/build.sh`, so the packaged pages always match the binaries.

use std::path::PathBuf;

use clap::CommandFactory;

fn main() {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: flex-manpages DIR");
        std::process::exit(2);
    };
    if let Err(e) = write_all(&dir) {
        eprintln!(
            "flex-manpages: cannot write the man pages to {}: {e}",
            dir.display()
        );
        std::process::exit(1);
    }
}

fn write_all(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for command in [
        flex_agent::cli::Cli::command(),
        flex_agent::flexctl::Cli::command(),
        flex_server::cli::Args::command(),
        flex_server::admin::Cli::command(),
    ] {
        let name = command.get_name().to_string();
        let mut page = Vec::new();
        clap_mangen::Man::new(command.clone()).render(&mut page)?;
        // Subcommands in the same page, each with its own options.
        for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
            render_sub(&mut page, &name, sub)?;
        }
        std::fs::write(dir.join(format!("{name}.1")), page)?;
    }
    Ok(())
}

/// A `.SH` section per subcommand (nested ones too): its about text and options.
fn render_sub(page: &mut Vec<u8>, parent: &str, sub: &clap::Command) -> std::io::Result<()> {
    use std::io::Write;
    let full = format!("{parent} {}", sub.get_name());
    let sub = sub.clone().bin_name(full.clone());
    writeln!(page, ".SH \"{}\"", full.to_uppercase())?;
    let man = clap_mangen::Man::new(sub.clone());
    man.render_synopsis_section(page)?;
    man.render_description_section(page)?;
    if sub.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(page)?;
    }
    for nested in sub.get_subcommands().filter(|s| !s.is_hide_set()) {
        render_sub(page, &full, nested)?;
    }
    Ok(())
}
