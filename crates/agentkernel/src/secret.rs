//! `agentkernel secret set|get|list|delete`: the secrets vault (`agentkernel_engine::vault`)
//! on the command line. The vault is the one the user config (`[secrets]`) and the
//! environment choose; a project's `agentkernel.toml` never chooses it.

use crate::cli::SecretCommand;
use agentkernel_engine::vault::{Vault, VaultError};
use agentkernel_engine::{EngineError, resolve};
use std::io::{IsTerminal, Read, Write};

/// Runs one `secret` subcommand; returns the exit code.
pub fn command(cmd: SecretCommand) -> Result<i32, EngineError> {
    let home = agentkernel_core::paths::agentkernel_home();
    let vault = Vault::open(&home, &resolve::user_config(&home)?)?;
    match cmd {
        SecretCommand::Set(a) => {
            let value = match a.value {
                Some(v) => v,
                None => read_value(&a.key)?,
            };
            vault.set(&a.key, &value)?;
        }
        SecretCommand::Get(a) => {
            let value = vault.get(&a.key)?;
            print_lines(&[value])?;
        }
        SecretCommand::List => print_lines(&vault.list()?)?,
        SecretCommand::Delete(a) => vault.delete(&a.key)?,
    }
    Ok(0)
}

/// The value of `secret set KEY` from stdin, without one trailing newline (`echo`'s, or the
/// Enter that ends a typed line).
fn read_value(key: &str) -> Result<String, EngineError> {
    let mut stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprintln!("agentkernel: type the value of {key}, then Enter and Ctrl-D");
    }
    let mut bytes = Vec::new();
    stdin.read_to_end(&mut bytes).map_err(|e| EngineError::Io {
        context: "read the secret's value from stdin".into(),
        source: e,
    })?;
    if bytes.ends_with(b"\n") {
        bytes.pop();
        if bytes.ends_with(b"\r") {
            bytes.pop();
        }
    }
    String::from_utf8(bytes).map_err(|_| {
        VaultError::InvalidValue {
            key: key.to_string(),
            reason: "the value on stdin is not UTF-8: give text".into(),
        }
        .into()
    })
}

fn print_lines(lines: &[String]) -> Result<(), EngineError> {
    let mut out = std::io::stdout().lock();
    lines
        .iter()
        .try_for_each(|l| writeln!(out, "{l}"))
        .and_then(|()| out.flush())
        .map_err(|e| EngineError::Io {
            context: "write to stdout".into(),
            source: e,
        })
}
