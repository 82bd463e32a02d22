//! Image auto-detection for `run` and `create` when neither `--image` nor the config names one:
//! from the command, then the project's files, then its Procfile, else `alpine:3.20`. The
//! tables are the reference documentation's.

use std::path::Path;

/// The image used when nothing else decides.
pub const DEFAULT_IMAGE: &str = "alpine:3.20";

/// A language: the programs that mean it, the project files that mean it, and its image.
struct Language {
    programs: &'static [&'static str],
    /// File names, or `*.ext` for any file with that extension in the project directory.
    files: &'static [&'static str],
    image: &'static str,
}

const LANGUAGES: &[Language] = &[
    Language {
        programs: &["node", "npm", "npx", "yarn", "pnpm", "bun"],
        files: &["package.json", "yarn.lock", "pnpm-lock.yaml"],
        image: "node:22-alpine",
    },
    Language {
        programs: &["python", "python3", "pip", "pip3", "poetry", "uv", "pytest"],
        files: &["pyproject.toml", "requirements.txt", "Pipfile"],
        image: "python:3.12-alpine",
    },
    Language {
        programs: &["cargo", "rustc"],
        files: &["Cargo.toml"],
        image: "rust:1.85-alpine",
    },
    Language {
        programs: &["go", "gofmt"],
        files: &["go.mod"],
        image: "golang:1.23-alpine",
    },
    Language {
        programs: &["ruby", "gem", "bundle", "rails"],
        files: &["Gemfile"],
        image: "ruby:3.3-alpine",
    },
    Language {
        programs: &["java", "mvn", "gradle"],
        files: &["pom.xml", "build.gradle", "*.kt"],
        image: "eclipse-temurin:21-alpine",
    },
    Language {
        programs: &["dotnet"],
        files: &["*.csproj", "*.sln"],
        image: "mcr.microsoft.com/dotnet/sdk:8.0",
    },
    Language {
        programs: &["gcc", "g++", "make", "cmake"],
        files: &["Makefile", "CMakeLists.txt"],
        image: "gcc:14-bookworm",
    },
    Language {
        programs: &["php", "composer"],
        files: &["composer.json"],
        image: "php:8.3-alpine",
    },
    Language {
        programs: &["elixir", "mix"],
        files: &["mix.exs"],
        image: "elixir:1.16-alpine",
    },
    Language {
        programs: &["lua", "luajit"],
        files: &["*.lua"],
        image: "nickblah/lua:5.4-alpine",
    },
    Language {
        programs: &["terraform"],
        files: &["*.tf", "*.tfvars"],
        image: "hashicorp/terraform:1.10",
    },
];

/// Shells say nothing about the project's language: the project's files decide after them.
const SHELLS: &[&str] = &["sh", "bash", "zsh", "dash", "ash"];

/// Which image was chosen and by what rule (`run -v` prints both).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detection {
    pub image: String,
    pub rule: String,
}

fn program_of(arg: &str) -> &str {
    arg.rsplit('/').next().unwrap_or(arg)
}

fn by_program(program: &str) -> Option<&'static Language> {
    LANGUAGES.iter().find(|l| l.programs.contains(&program))
}

/// The image of a runtime named in config (`[daemon.agents.claude] runtime = "python"`): a
/// language's program name means its image; anything else is taken as an image reference.
pub fn runtime_image(runtime: &str) -> String {
    by_program(runtime).map_or_else(|| runtime.to_string(), |l| l.image.to_string())
}

/// Chooses the image for `command` (empty for `create`) run in `project`: the project's files
/// decide after the command. `None` when the caller has no project on this host (an HTTP or MCP
/// caller): then the command alone decides, never the files of whatever directory the server
/// happens to run in.
pub fn detect_image(command: &[String], project: Option<&Path>) -> Detection {
    if let Some(first) = command.first() {
        let program = program_of(first);
        if let Some(lang) = by_program(program) {
            return Detection {
                image: lang.image.to_string(),
                rule: format!("command `{program}`"),
            };
        }
    }
    if let Some(project) = project
        && let Some(found) = detect_from_project(project)
    {
        return found;
    }
    let rule = match command.first().map(|c| program_of(c)) {
        Some(shell) if SHELLS.contains(&shell) => format!("command `{shell}`"),
        _ => "default".to_string(),
    };
    Detection {
        image: DEFAULT_IMAGE.to_string(),
        rule,
    }
}

/// The image a project's files or its Procfile mean, if any.
fn detect_from_project(project: &Path) -> Option<Detection> {
    let names: Vec<String> = std::fs::read_dir(project)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    for lang in LANGUAGES {
        for pattern in lang.files {
            let found = match pattern.strip_prefix('*') {
                Some(ext) => names.iter().find(|n| n.ends_with(ext)),
                None => names.iter().find(|n| n == pattern),
            };
            if let Some(file) = found {
                return Some(Detection {
                    image: lang.image.to_string(),
                    rule: format!("project file {file}"),
                });
            }
        }
    }
    if let Ok(procfile) = std::fs::read_to_string(project.join("Procfile")) {
        for line in procfile.lines() {
            let Some((_, cmd)) = line.split_once(':') else {
                continue;
            };
            let mut words = cmd.split_whitespace();
            // `bundle exec rails …`: the first word that names a language decides.
            if let Some(lang) = words.by_ref().map(program_of).find_map(by_program) {
                return Some(Detection {
                    image: lang.image.to_string(),
                    rule: "Procfile".to_string(),
                });
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn the_command_decides_first() {
        let empty = tempfile::tempdir().expect("tempdir");
        for (program, image) in [
            ("python3", "python:3.12-alpine"),
            ("pip", "python:3.12-alpine"),
            ("pytest", "python:3.12-alpine"),
            ("uv", "python:3.12-alpine"),
            ("/usr/bin/node", "node:22-alpine"),
            ("pnpm", "node:22-alpine"),
            ("bun", "node:22-alpine"),
            ("cargo", "rust:1.85-alpine"),
            ("go", "golang:1.23-alpine"),
            ("bundle", "ruby:3.3-alpine"),
            ("echo", "alpine:3.20"),
            ("sh", "alpine:3.20"),
        ] {
            assert_eq!(
                detect_image(&cmd(&[program, "x"]), Some(empty.path())).image,
                image,
                "{program}"
            );
        }
        std::fs::write(empty.path().join("package.json"), "{}").expect("write");
        let d = detect_image(&cmd(&["python3", "-c", "1"]), Some(empty.path()));
        assert_eq!(
            d.image, "python:3.12-alpine",
            "the command wins over project files"
        );
        assert_eq!(d.rule, "command `python3`");
    }

    #[test]
    fn then_project_files_then_procfile_then_the_default() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = detect_image(&cmd(&["sh", "-c", "make"]), Some(dir.path()));
        assert_eq!(
            (d.image.as_str(), d.rule.as_str()),
            ("alpine:3.20", "command `sh`")
        );
        assert_eq!(detect_image(&[], Some(dir.path())).rule, "default");
        std::fs::write(
            dir.path().join("Procfile"),
            "web: bundle exec rails server\n",
        )
        .expect("write");
        let d = detect_image(&[], Some(dir.path()));
        assert_eq!(
            (d.image.as_str(), d.rule.as_str()),
            ("ruby:3.3-alpine", "Procfile")
        );
        std::fs::write(dir.path().join("main.tf"), "").expect("write");
        assert_eq!(
            detect_image(&[], Some(dir.path())).image,
            "hashicorp/terraform:1.10"
        );
        std::fs::write(dir.path().join("Cargo.toml"), "").expect("write");
        let d = detect_image(&cmd(&["sh"]), Some(dir.path()));
        assert_eq!(
            (d.image.as_str(), d.rule.as_str()),
            ("rust:1.85-alpine", "project file Cargo.toml")
        );
        // Without a project (a remote caller), the files are not looked at.
        let d = detect_image(&cmd(&["sh"]), None);
        assert_eq!(
            (d.image.as_str(), d.rule.as_str()),
            ("alpine:3.20", "command `sh`")
        );
        assert_eq!(detect_image(&[], None).rule, "default");
    }
}
