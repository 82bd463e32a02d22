//! `completions SHELL` (clap_complete) and `man` (clap_mangen): generated from the command tree
//! the CLI parses with, so they cannot disagree with it.

use crate::cli::Cli;
use clap::CommandFactory;
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct CompletionsArgs {
    /// The shell: bash, zsh, fish, elvish or powershell
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(clap::Args, Debug)]
pub struct ManArgs {
    /// Write agentkernel.1 and a page per command (agentkernel-run.1, …) into DIR instead of
    /// printing the main page
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// Prints the completion script for `args.shell` on stdout.
pub fn completions(args: &CompletionsArgs) -> i32 {
    let mut cmd = Cli::command();
    // Rendered first: clap_complete panics when its writer fails (`… | head`).
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "agentkernel", &mut script);
    print(&script)
}

/// Prints the main man page, or writes every page into `--dir`.
pub fn man(args: &ManArgs) -> i32 {
    let Some(dir) = &args.dir else {
        let mut page = Vec::new();
        return match clap_mangen::Man::new(Cli::command()).render(&mut page) {
            Ok(()) => print(&page),
            Err(e) => fail("the man page", &e),
        };
    };
    match write_pages(dir) {
        Ok(()) => 0,
        Err(e) => fail("the man pages", &e),
    }
}

/// Writes `bytes` to stdout; a reader that went away (`… | head`) is no error.
fn print(bytes: &[u8]) -> i32 {
    use std::io::Write;
    match std::io::stdout().lock().write_all(bytes) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => fail("to stdout", &e),
        _ => 0,
    }
}

fn fail(what: &str, e: &std::io::Error) -> i32 {
    eprintln!(
        "agentkernel: error: writing {what}: {e}: give a directory (or stdout) you can write to"
    );
    agentkernel_core::exec::EXIT_AGENTKERNEL_ERROR
}

fn write_pages(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut cmd = Cli::command();
    cmd.build();
    let write = |name: &str, page: clap::Command| -> std::io::Result<()> {
        let mut out = std::fs::File::create(dir.join(format!("{name}.1")))?;
        clap_mangen::Man::new(page).title(name).render(&mut out)
    };
    write("agentkernel", cmd.clone())?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write(&format!("agentkernel-{}", sub.get_name()), sub.clone())?;
    }
    Ok(())
}
