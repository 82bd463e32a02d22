//! `completions SHELL` prints a script the shell accepts, for every shell clap_complete knows;
//! `man` prints a man page and writes one per command. Both are generated from the same
//! command tree the CLI parses with.

mod common;
use common::*;
use std::process::Command;

fn script(ak: &Ak, shell: &str) -> std::path::PathBuf {
    let out = ak.ok(&["completions", shell]);
    assert!(!out.stdout.is_empty(), "{shell}: {out:?}");
    let path = ak.cwd.path().join(format!("agentkernel.{shell}"));
    std::fs::write(&path, &out.stdout).expect("write");
    path
}

#[test]
fn bash_completion_parses_and_completes_commands() {
    let ak = Ak::new();
    let path = script(&ak, "bash");
    let check = Command::new("bash")
        .arg("-n")
        .arg(&path)
        .output()
        .expect("bash");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    // Loaded, it completes `agentkernel r` to the commands starting with r.
    let words = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {}; COMP_WORDS=(agentkernel r); COMP_CWORD=1; COMP_LINE='agentkernel r'; COMP_POINT=13; _agentkernel agentkernel r agentkernel; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            path.display()
        ))
        .output()
        .expect("bash");
    let words = String::from_utf8_lossy(&words.stdout);
    for want in ["run", "remove"] {
        assert!(words.lines().any(|w| w == want), "{want} in {words:?}");
    }
}

#[test]
fn fish_completion_parses() {
    let ak = Ak::new();
    let path = script(&ak, "fish");
    let check = Command::new("fish")
        .arg("--no-execute")
        .arg(&path)
        .output()
        .expect("fish (scripts/setup.sh installs it)");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let text = std::fs::read_to_string(&path).expect("read");
    assert!(text.contains("complete -c agentkernel"), "{text}");
}

#[test]
fn every_shell_has_a_script_and_an_unknown_one_is_refused() {
    let ak = Ak::new();
    for shell in ["zsh", "elvish", "powershell"] {
        script(&ak, shell);
    }
    let out = ak.run(&["completions", "tcsh"]);
    assert_eq!(out.code, 125, "{out:?}");
    assert!(out.stderr.contains("bash"), "names the shells: {out:?}");
}

#[test]
fn man_prints_a_page_and_writes_one_per_command() {
    let ak = Ak::new();
    let out = ak.ok(&["man"]);
    assert!(
        out.stdout.contains(".TH agentkernel 1"),
        "{}",
        &out.stdout[..200.min(out.stdout.len())]
    );
    assert!(out.stdout.contains("completions"), "lists the commands");
    let dir = ak.cwd.path().join("man");
    ak.ok(&["man", "--dir", dir.to_str().expect("utf8")]);
    for page in [
        "agentkernel.1",
        "agentkernel-run.1",
        "agentkernel-exec.1",
        "agentkernel-completions.1",
    ] {
        let text =
            std::fs::read_to_string(dir.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.contains(".TH"), "{page}");
    }
    let out = ak.run(&["man", "--dir", "/proc/agentkernel-no-such-dir"]);
    assert_eq!(out.code, 125, "{out:?}");
}
