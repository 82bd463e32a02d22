//! `template list|show|add|save|remove` and `sandbox export-config|import-config`: the
//! engine's templates (`agentkernel_engine::template`) on the command line.

use agentkernel_engine::EngineError;
use agentkernel_engine::SpecRequest;
use agentkernel_engine::template::TemplateInfo;
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum TemplateCommand {
    /// List the built-in templates and yours
    #[command(visible_alias = "ls")]
    List(ListArgs),
    /// Print a template's TOML
    Show(ShowArgs),
    /// Add a template from a TOML file (validated first) under NAME
    Add(AddArgs),
    /// Save a sandbox's settings and files as a template
    Save(SaveArgs),
    /// Remove one of your templates (built-ins stay)
    #[command(visible_alias = "rm")]
    Remove(NameArg),
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ShowArgs {
    /// A template's name, or a template file's path
    pub name: String,
}

#[derive(Args, Debug)]
pub struct AddArgs {
    /// The template's name (letters, digits, _ . -; not a built-in's)
    pub name: String,
    /// The TOML file (see docs/templates.md for its keys)
    pub file: PathBuf,
}

#[derive(Args, Debug)]
pub struct SaveArgs {
    /// The sandbox whose settings and files become the template
    #[arg(long = "from", value_name = "SANDBOX")]
    pub from: String,
    /// The template's name
    pub name: String,
}

#[derive(Args, Debug)]
pub struct NameArg {
    /// Template name
    pub name: String,
}

#[derive(Args, Debug)]
pub struct ImportConfigArgs {
    /// A file `sandbox export-config` wrote (any template file works)
    pub file: PathBuf,
    /// Name of the new sandbox
    #[arg(long = "as", value_name = "NAME")]
    pub as_name: String,
    #[arg(
        short = 'B',
        long,
        help = "Backend of the new sandbox (default: as `create` chooses)"
    )]
    pub backend: Option<String>,
}

/// Runs one `template` subcommand; returns the exit code.
pub fn template(cmd: TemplateCommand) -> Result<i32, EngineError> {
    let engine = crate::engine()?;
    match cmd {
        TemplateCommand::List(a) => list(&engine.list_templates()?, a.json),
        TemplateCommand::Show(a) => {
            let t = engine.get_template(&a.name, &crate::current_dir()?)?;
            print!("{}", t.text);
            if !t.text.ends_with('\n') {
                println!();
            }
        }
        TemplateCommand::Add(a) => {
            let info = engine.add_template(&a.name, &a.file)?;
            eprintln!(
                "agentkernel: added template {}; use it with --template {}",
                info.name, info.name
            );
        }
        TemplateCommand::Save(a) => {
            let info = engine.save_template(&a.from, &a.name)?;
            eprintln!(
                "agentkernel: saved sandbox {} as template {}; use it with --template {}",
                a.from, info.name, info.name
            );
        }
        TemplateCommand::Remove(a) => engine.remove_template(&a.name)?,
    }
    Ok(0)
}

/// `sandbox export-config NAME`: the TOML on stdout.
pub fn export_config(name: &str) -> Result<i32, EngineError> {
    print!("{}", crate::engine()?.export_config(name)?);
    Ok(0)
}

/// `sandbox import-config FILE --as NEW [-B BACKEND]`: `create NEW --template FILE`. Nothing is
/// left when it fails.
pub fn import_config(a: ImportConfigArgs) -> Result<i32, EngineError> {
    let text = a.file.to_string_lossy().into_owned();
    // The file is a file even when its name does not say so (no `/`, no .toml).
    let reference = if agentkernel_engine::template::is_file_reference(&text) {
        text
    } else {
        format!("./{text}")
    };
    let req = SpecRequest {
        template: Some(reference),
        backend: a.backend,
        cwd: crate::current_dir()?,
        caller: agentkernel_engine::resolve::Caller::Local,
        ..Default::default()
    };
    let info = crate::engine()?.create(&req, Some(&a.as_name), None)?;
    println!("{}", info.name);
    Ok(0)
}

fn list(list: &[TemplateInfo], json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(list).unwrap_or_else(|_| "[]".into())
        );
        return;
    }
    println!("{:<16} {:<9} {:<34} DESCRIPTION", "NAME", "SOURCE", "IMAGE");
    for t in list {
        let description = match &t.error {
            Some(e) => format!("(does not load: {e})"),
            None => {
                let mut d = t.description.clone().unwrap_or_default();
                if t.setup {
                    d.push_str(" [setup]");
                }
                d
            }
        };
        println!(
            "{:<16} {:<9} {:<34} {}",
            t.name,
            t.source,
            t.image.as_deref().unwrap_or("-"),
            description.trim()
        );
    }
}
