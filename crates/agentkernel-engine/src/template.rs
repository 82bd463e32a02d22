//! Templates (`template list|show|add|save|remove`, `--template` on `run` and `create`,
//! `sandbox export-config|import-config`): a sandbox's defaults — image, environment, resources,
//! profile, compatibility mode, ports — and setup steps, written as TOML (docs/templates.md).
//!
//! A template is referred to by name (one of the built-ins shipped in this binary, or one the
//! user added under `<home>/templates/NAME.toml`), or by a file path (it contains `/` or ends
//! in `.toml`). `github:owner/repo/path` is recognised and refused: this machine fetches no
//! template over the network.
//!
//! Where a template sits among the other sources of a spec (DESIGN, "Data flow"): flags >
//! `--config` > `./agentkernel.toml` > template > the user's own config > auto-detection. The
//! template becomes one config layer (`Template::as_config`), and its environment goes under
//! the `-e` flags. Its setup (packages, then commands) runs once per template, image, backend
//! and policy and is cached as a hidden snapshot (`template_cache`); a template saved from a
//! sandbox (`template save`) names the snapshot of that sandbox's files, which every sandbox
//! made from it starts with.

use crate::Engine;
use crate::error::{EngineError, Result};
use crate::resolve::{Caller, SpecRequest};
use crate::snapshot::SnapshotKind;
use agentkernel_core::compat::CompatMode;
use agentkernel_core::config::{AgentSection, Config, ResourcesSection, SandboxSection};
use agentkernel_core::{CoreError, ImageRef, Policy, Profile, SandboxSpec, validate_name};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The built-in templates, embedded in the binary: the reference documentation's eighteen and
/// the four agents'.
pub const BUILT_IN: &[(&str, &str)] = &[
    ("python", include_str!("../templates/python.toml")),
    ("node", include_str!("../templates/node.toml")),
    ("rust", include_str!("../templates/rust.toml")),
    ("go", include_str!("../templates/go.toml")),
    ("ruby", include_str!("../templates/ruby.toml")),
    ("java", include_str!("../templates/java.toml")),
    ("dotnet", include_str!("../templates/dotnet.toml")),
    ("php", include_str!("../templates/php.toml")),
    ("elixir", include_str!("../templates/elixir.toml")),
    ("c-cpp", include_str!("../templates/c-cpp.toml")),
    ("shell", include_str!("../templates/shell.toml")),
    ("terraform", include_str!("../templates/terraform.toml")),
    ("python-ci", include_str!("../templates/python-ci.toml")),
    ("node-ci", include_str!("../templates/node-ci.toml")),
    ("rust-ci", include_str!("../templates/rust-ci.toml")),
    (
        "data-science",
        include_str!("../templates/data-science.toml"),
    ),
    ("web-dev", include_str!("../templates/web-dev.toml")),
    ("fullstack", include_str!("../templates/fullstack.toml")),
    ("claude", include_str!("../templates/claude.toml")),
    ("codex", include_str!("../templates/codex.toml")),
    ("gemini", include_str!("../templates/gemini.toml")),
    ("opencode", include_str!("../templates/opencode.toml")),
];

/// The directory of the user's templates in the state directory.
pub const TEMPLATES_DIR: &str = "templates";
/// The largest template file read, in bytes.
pub const MAX_TEMPLATE_BYTES: u64 = 1 << 20;
/// At most this many setup commands, packages, environment variables and ports.
const MAX_COMMANDS: usize = 64;
const MAX_PACKAGES: usize = 256;
const MAX_ENV: usize = 256;
const MAX_PORTS: usize = 64;
/// The longest setup command, in bytes.
const MAX_COMMAND_BYTES: usize = 16 * 1024;
/// The label a sandbox made from a template carries, naming it.
pub const TEMPLATE_LABEL: &str = "agentkernel.template";
/// Snapshots `template save` takes are named this and the template's name.
pub const SAVED_SNAPSHOT_PREFIX: &str = "tpl-save-";

/// A template as written in TOML. Every field is optional: what a template leaves out comes
/// from the other sources of the spec.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Template {
    /// The template's name; a user template's file name wins over it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A registry image (`python:3.12-alpine`) or `host`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// `permissive`, `moderate` or `restrictive`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// An agent compatibility mode: `native`, `claude`, `codex` or `gemini`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compatibility: Option<String>,
    /// Whether the sandbox has a network (`false`: none; the profile's when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<bool>,
    /// `[domains] allow = [...]`, `deny = [...]`: host patterns that narrow the network to an
    /// allowlist, and hosts it never reaches (as `[security.domains]` of agentkernel.toml).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domains: Option<agentkernel_core::config::DomainsSection>,
    /// Ports the sandbox's services listen on: stored and shown (publishing comes later).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    /// The snapshot of a sandbox's files (`template save`) that sandboxes from this template
    /// start with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    #[serde(default, skip_serializing_if = "Setup::is_empty")]
    pub setup: Setup,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Resources::is_empty")]
    pub resources: Resources,
}

/// `[setup]`: what runs once, in a sandbox of the template, before the result is cached.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Setup {
    /// Installed with the image's package manager, before the commands.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packages: Vec<String>,
    /// `apk` or `apt`; guessed from the image's name when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package_manager: Option<String>,
    /// Shell commands (`/bin/sh -c`), in order; the first that fails stops the setup.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub commands: Vec<String>,
}

impl Setup {
    fn is_empty(&self) -> bool {
        self.packages.is_empty() && self.commands.is_empty() && self.package_manager.is_none()
    }
}

/// `[resources]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_mb: Option<u64>,
}

impl Resources {
    fn is_empty(&self) -> bool {
        self.vcpus.is_none() && self.memory_mb.is_none() && self.disk_mb.is_none()
    }
}

/// The package managers `[setup] packages` can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackageManager {
    Apk,
    Apt,
}

impl PackageManager {
    fn parse(text: &str) -> std::result::Result<PackageManager, String> {
        match text {
            "apk" => Ok(PackageManager::Apk),
            "apt" | "apt-get" => Ok(PackageManager::Apt),
            other => Err(format!(
                "[setup] package_manager = {other:?}: use \"apk\" (Alpine) or \"apt\" (Debian, Ubuntu), or install with [setup] commands"
            )),
        }
    }

    /// The one shell command that installs `packages`.
    fn install_command(self, packages: &[String]) -> String {
        let list = packages.join(" ");
        match self {
            PackageManager::Apk => format!("apk add --no-cache {list}"),
            PackageManager::Apt => format!(
                "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends {list} && rm -rf /var/lib/apt/lists/*"
            ),
        }
    }

    /// The package manager an image of this name has, when its name says: Alpine images (an
    /// `alpine` tag or repository) have apk; Debian and Ubuntu ones (a `slim`, `bookworm`, …
    /// tag, or a repository built on them) have apt.
    pub fn guess(image: &str) -> Option<PackageManager> {
        let canonical = agentkernel_image::canonical_name(image).ok()?;
        let without_digest = canonical.split('@').next().unwrap_or_default();
        let (repository, tag) = match without_digest.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => (r, t),
            _ => (without_digest, ""),
        };
        let last = repository.rsplit('/').next().unwrap_or_default();
        if last == "alpine" || tag.contains("alpine") {
            return Some(PackageManager::Apk);
        }
        const DEBIAN_TAGS: &[&str] = &[
            "bookworm", "bullseye", "buster", "trixie", "slim", "jammy", "noble", "focal",
        ];
        const DEBIAN_REPOSITORIES: &[&str] = &["debian", "ubuntu", "gcc", "buildpack-deps"];
        if DEBIAN_TAGS.iter().any(|t| tag.contains(t))
            || DEBIAN_REPOSITORIES.contains(&last)
            || repository.ends_with("/dotnet/sdk")
        {
            return Some(PackageManager::Apt);
        }
        None
    }
}

impl Template {
    /// Parses and validates template text; `origin` (a file's path, a template's name) starts
    /// every error, with the line where the TOML is wrong.
    pub fn parse(text: &str, origin: &str) -> Result<Template> {
        let invalid = |message: String| EngineError::TemplateInvalid {
            origin: origin.to_string(),
            message,
        };
        let template: Template = toml::from_str(text).map_err(|e| {
            let message = e.message().trim_end().replace('\n', "; ");
            invalid(match e.span() {
                Some(span) => {
                    let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                    format!("line {line}: {message}")
                }
                None => message,
            })
        })?;
        template.validate().map_err(invalid)?;
        Ok(template)
    }

    /// Checks every field; the message names the field and says what would be valid.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if let Some(name) = &self.name {
            validate_name(name).map_err(|e| format!("name: {e}"))?;
        }
        if let Some(d) = &self.description {
            crate::resolve::validate_description(d).map_err(|e| format!("description: {e}"))?;
        }
        if let Some(image) = &self.image {
            match ImageRef::parse(image, Path::new("/")) {
                Ok(ImageRef::Registry { .. } | ImageRef::Host) => {}
                Ok(_) => {
                    return Err(format!(
                        "image = {image:?}: a template names a registry image (e.g. \"python:3.12-alpine\") or \"host\"; give a directory or OCI layout with --image instead"
                    ));
                }
                Err(e) => return Err(format!("image: {e}")),
            }
        }
        if let Some(p) = &self.profile {
            p.parse::<Profile>().map_err(|e| format!("profile: {e}"))?;
        }
        if let Some(c) = &self.compatibility {
            c.parse::<CompatMode>()
                .map_err(|e| format!("compatibility: {e}"))?;
        }
        self.validate_ports()?;
        if let Some(d) = &self.domains {
            for (list, hosts) in [("allow", &d.allow), ("deny", &d.deny)] {
                for h in hosts.iter().flatten() {
                    agentkernel_core::egress::validate_host_pattern(h)
                        .map_err(|e| format!("[domains] {list}: {e}"))?;
                }
            }
        }
        if let Some(s) = &self.snapshot {
            validate_name(s).map_err(|e| format!("snapshot: {e}"))?;
        }
        self.validate_setup()?;
        if self.env.len() > MAX_ENV {
            return Err(format!(
                "[env] has {} variables: give at most {MAX_ENV}",
                self.env.len()
            ));
        }
        for (k, v) in &self.env {
            agentkernel_core::spec::validate_env_var(k, v).map_err(|e| format!("[env] {e}"))?;
        }
        self.validate_resources()
    }

    fn validate_ports(&self) -> std::result::Result<(), String> {
        if self.ports.len() > MAX_PORTS {
            return Err(format!(
                "ports lists {} ports: give at most {MAX_PORTS}",
                self.ports.len()
            ));
        }
        for (i, port) in self.ports.iter().enumerate() {
            if *port == 0 {
                return Err("ports: 0 is not a port: give numbers from 1 to 65535".to_string());
            }
            if self.ports[..i].contains(port) {
                return Err(format!(
                    "ports: {port} is listed twice: list each port once"
                ));
            }
        }
        Ok(())
    }

    fn validate_setup(&self) -> std::result::Result<(), String> {
        let setup = &self.setup;
        if setup.commands.len() > MAX_COMMANDS {
            return Err(format!(
                "[setup] commands has {} commands: give at most {MAX_COMMANDS} (join steps with &&)",
                setup.commands.len()
            ));
        }
        for c in &setup.commands {
            if c.trim().is_empty() {
                return Err("[setup] commands: a command is empty: remove it".to_string());
            }
            if c.contains('\0') || c.len() > MAX_COMMAND_BYTES {
                return Err(format!(
                    "[setup] commands: a command is longer than {MAX_COMMAND_BYTES} bytes or holds a NUL byte: put long steps in a script the commands run"
                ));
            }
        }
        if setup.packages.len() > MAX_PACKAGES {
            return Err(format!(
                "[setup] packages lists {}: give at most {MAX_PACKAGES}",
                setup.packages.len()
            ));
        }
        for p in &setup.packages {
            let well_formed = p.len() <= 128
                && p.starts_with(|c: char| c.is_ascii_alphanumeric())
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".+_:=~-".contains(&b));
            if !well_formed {
                return Err(format!(
                    "[setup] packages: {p:?} is not a package name (letters, digits and . + _ : = ~ -, e.g. \"git\" or \"curl=7.88.1-10\"): install anything else with [setup] commands"
                ));
            }
        }
        if let Some(m) = &setup.package_manager {
            PackageManager::parse(m)?;
        }
        if !setup.packages.is_empty() {
            self.package_manager()?;
        }
        Ok(())
    }

    fn validate_resources(&self) -> std::result::Result<(), String> {
        let r = &self.resources;
        if let Some(v) = r.vcpus
            && !(v.is_finite() && (0.0..=1024.0).contains(&v))
        {
            return Err(format!(
                "[resources] vcpus = {v}: give a number of cores from 0 (no limit) to 1024, e.g. 2 or 0.5"
            ));
        }
        if let Some(m) = r.memory_mb
            && !(16..=agentkernel_core::policy::MAX_MEMORY_MB).contains(&m)
        {
            return Err(format!(
                "[resources] memory_mb = {m}: give 16 to {} MB",
                agentkernel_core::policy::MAX_MEMORY_MB
            ));
        }
        if let Some(d) = r.disk_mb
            && !(agentkernel_core::policy::MIN_DISK_MB..=agentkernel_core::policy::MAX_DISK_MB)
                .contains(&d)
        {
            return Err(format!(
                "[resources] disk_mb = {d}: give {} to {} MB",
                agentkernel_core::policy::MIN_DISK_MB,
                agentkernel_core::policy::MAX_DISK_MB
            ));
        }
        Ok(())
    }

    /// The package manager `[setup] packages` use: the one named, else the image's.
    fn package_manager(&self) -> std::result::Result<PackageManager, String> {
        if let Some(m) = &self.setup.package_manager {
            return PackageManager::parse(m);
        }
        let Some(image) = &self.image else {
            return Err(
                "[setup] packages needs the template's image (image = \"...\") or [setup] package_manager = \"apk\" or \"apt\"".to_string(),
            );
        };
        PackageManager::guess(image).ok_or_else(|| {
            format!(
                "[setup] packages: which package manager image {image:?} has cannot be told from its name: set [setup] package_manager = \"apk\" or \"apt\", or install with [setup] commands"
            )
        })
    }

    /// The setup as shell commands: the packages' install command first, then the commands.
    /// `image` is the image the sandbox really uses (a flag may have replaced the template's).
    pub fn setup_commands(&self, image: &ImageRef) -> Result<Vec<String>> {
        let mut steps = Vec::with_capacity(self.setup.commands.len() + 1);
        if !self.setup.packages.is_empty() {
            let manager = match (&self.setup.package_manager, image) {
                (None, ImageRef::Registry { reference }) => PackageManager::guess(reference)
                    .ok_or_else(|| {
                        CoreError::InvalidArgument(format!(
                            "the template installs packages, and which package manager image {reference} has cannot be told from its name: use the template's own image, or set [setup] package_manager in a copy of the template"
                        ))
                    })?,
                _ => self.package_manager().map_err(CoreError::InvalidArgument)?,
            };
            steps.push(manager.install_command(&self.setup.packages));
        }
        steps.extend(self.setup.commands.iter().cloned());
        Ok(steps)
    }

    /// The template as a config layer: image, resources, profile and compatibility mode.
    pub fn as_config(&self) -> Config {
        Config {
            sandbox: SandboxSection {
                base_image: self.image.clone(),
                ..Default::default()
            },
            agent: AgentSection {
                compatibility_mode: self.compatibility.clone(),
                ..Default::default()
            },
            resources: ResourcesSection {
                vcpus: self.resources.vcpus,
                memory_mb: self.resources.memory_mb,
                disk_mb: self.resources.disk_mb,
                pids: None,
            },
            security: agentkernel_core::config::SecuritySection {
                profile: self.profile.clone(),
                network: self.network,
                domains: self.domains.clone(),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// The template as TOML text.
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self).map_err(|e| {
            EngineError::Input(CoreError::InvalidArgument(format!(
                "the template cannot be written as TOML ({e}): report this as a bug"
            )))
        })
    }
}

/// Where a template came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateSource {
    BuiltIn,
    /// One the user added or saved: `<home>/templates/NAME.toml`.
    User(PathBuf),
    /// A file named by its path.
    File(PathBuf),
}

impl TemplateSource {
    pub fn as_str(&self) -> &'static str {
        match self {
            TemplateSource::BuiltIn => "built-in",
            TemplateSource::User(_) => "user",
            TemplateSource::File(_) => "file",
        }
    }
}

/// A template found by its reference.
#[derive(Debug, Clone)]
pub struct LoadedTemplate {
    /// The name it is known by (a file's `name`, else the file's stem).
    pub name: String,
    pub source: TemplateSource,
    pub template: Template,
    /// The TOML as written.
    pub text: String,
}

/// A template as `template list` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TemplateInfo {
    pub name: String,
    /// `built-in` or `user`.
    pub source: String,
    pub description: Option<String>,
    pub image: Option<String>,
    pub profile: Option<String>,
    pub compatibility: Option<String>,
    pub ports: Vec<u16>,
    /// Whether it has setup steps (run once, then cached).
    pub setup: bool,
    /// The snapshot of saved files it starts sandboxes with.
    pub snapshot: Option<String>,
    /// A user template's file.
    pub path: Option<String>,
    /// Why a user template's file does not load (it is listed anyway, to be fixed or removed).
    pub error: Option<String>,
}

impl TemplateInfo {
    fn of(name: &str, source: &TemplateSource, t: &Template) -> TemplateInfo {
        TemplateInfo {
            name: name.to_string(),
            source: source.as_str().to_string(),
            description: t.description.clone(),
            image: t.image.clone(),
            profile: t.profile.clone(),
            compatibility: t.compatibility.clone(),
            ports: t.ports.clone(),
            setup: !t.setup.packages.is_empty() || !t.setup.commands.is_empty(),
            snapshot: t.snapshot.clone(),
            path: match source {
                TemplateSource::User(p) | TemplateSource::File(p) => Some(p.display().to_string()),
                TemplateSource::BuiltIn => None,
            },
            error: None,
        }
    }
}

/// The text of built-in template `name`.
pub fn built_in(name: &str) -> Option<&'static str> {
    BUILT_IN.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// Whether a reference names a file rather than a template: it contains `/` or ends in `.toml`.
pub fn is_file_reference(reference: &str) -> bool {
    reference.contains('/') || reference.ends_with(".toml")
}

fn user_dir(home: &Path) -> PathBuf {
    home.join(TEMPLATES_DIR)
}

fn user_path(home: &Path, name: &str) -> PathBuf {
    user_dir(home).join(format!("{name}.toml"))
}

/// Reads a template file, refusing one larger than [`MAX_TEMPLATE_BYTES`].
fn read_text(path: &Path) -> Result<String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => EngineError::TemplateNotFound(path.display().to_string()),
        _ => EngineError::io(format!("read template file {}", path.display()))(e),
    })?;
    let mut text = String::new();
    file.take(MAX_TEMPLATE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| EngineError::TemplateInvalid {
            origin: path.display().to_string(),
            message: format!("cannot read it as UTF-8 text: {e}"),
        })?;
    if text.len() as u64 > MAX_TEMPLATE_BYTES {
        return Err(EngineError::TemplateInvalid {
            origin: path.display().to_string(),
            message: format!(
                "it is larger than {MAX_TEMPLATE_BYTES} bytes: a template is a short TOML file"
            ),
        });
    }
    Ok(text)
}

/// Finds the template `reference` names: a built-in or user template by name, or a file by
/// its path (relative to `cwd`). Callers other than the local user may name templates only,
/// never host files; nobody may name `github:` (nothing is fetched).
pub fn load(home: &Path, reference: &str, cwd: &Path, caller: Caller) -> Result<LoadedTemplate> {
    if let Some(rest) = reference.strip_prefix("github:") {
        return Err(EngineError::TemplateRemote(format!(
            "template {reference:?} is on GitHub, and this machine does not fetch templates (agentkernel makes no network request for one): download {rest} yourself and pass the file's path, e.g. --template ./{}",
            rest.rsplit('/').next().unwrap_or("template.toml")
        )));
    }
    if is_file_reference(reference) {
        if caller != Caller::Local {
            return Err(EngineError::Input(CoreError::NotPermitted(format!(
                "template {reference:?} is a host file, which a remote or MCP caller may not name: name a template from `agentkernel template list`"
            ))));
        }
        let path = if Path::new(reference).is_absolute() {
            PathBuf::from(reference)
        } else {
            cwd.join(reference)
        };
        let text = read_text(&path)?;
        let template = Template::parse(&text, &path.display().to_string())?;
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .filter(|s| validate_name(s).is_ok());
        let name = template
            .name
            .clone()
            .or(stem)
            .unwrap_or_else(|| "file".to_string());
        return Ok(LoadedTemplate {
            name,
            source: TemplateSource::File(path),
            template,
            text,
        });
    }
    if validate_name(reference).is_err() {
        return Err(EngineError::TemplateNotFound(reference.to_string()));
    }
    if let Some(text) = built_in(reference) {
        return Ok(LoadedTemplate {
            name: reference.to_string(),
            source: TemplateSource::BuiltIn,
            template: Template::parse(text, reference)?,
            text: text.to_string(),
        });
    }
    let path = user_path(home, reference);
    let text = match read_text(&path) {
        Err(EngineError::TemplateNotFound(_)) => {
            return Err(EngineError::TemplateNotFound(reference.to_string()));
        }
        other => other?,
    };
    let template = Template::parse(&text, &path.display().to_string())?;
    Ok(LoadedTemplate {
        name: reference.to_string(),
        source: TemplateSource::User(path),
        template,
        text,
    })
}

/// Writes `text` as `path`, 0600, atomically and never over an existing file: written beside
/// it under a temporary name, then linked into place (which fails if the name is taken).
fn write_new(path: &Path, text: &str, name: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(crate::state_dir::DIR_MODE)
        .create(dir)
        .map_err(EngineError::io(format!("create {}", dir.display())))?;
    let tmp = dir.join(format!(
        ".{name}.toml.{}.{}.partial",
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    ));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(crate::state_dir::FILE_MODE)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(text.as_bytes())?;
            f.sync_all()
        })
        .map_err(EngineError::io(format!("write {}", tmp.display())))
        .and_then(|()| match std::fs::hard_link(&tmp, path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(EngineError::TemplateTaken(name.to_string()))
            }
            Err(e) => Err(EngineError::io(format!("write {}", path.display()))(e)),
        });
    let _ = std::fs::remove_file(&tmp);
    written
}

/// Refuses `name` for a new user template: not a valid name, a built-in's, or taken.
fn check_new_name(home: &Path, name: &str) -> Result<()> {
    validate_name(name)?;
    if is_file_reference(name) {
        return Err(CoreError::InvalidArgument(format!(
            "template name {name:?} ends in .toml, so --template {name} would read a file of that name: name it {:?}",
            name.trim_end_matches(".toml")
        ))
        .into());
    }
    if built_in(name).is_some() {
        return Err(EngineError::TemplateBuiltIn(name.to_string()));
    }
    if user_path(home, name).exists() {
        return Err(EngineError::TemplateTaken(name.to_string()));
    }
    Ok(())
}

impl Engine {
    /// The built-in templates, then the user's (by name); a user template whose file does not
    /// load is listed with the reason.
    pub fn list_templates(&self) -> Result<Vec<TemplateInfo>> {
        let mut list = Vec::new();
        for (name, text) in BUILT_IN {
            let t = Template::parse(text, name)?;
            list.push(TemplateInfo::of(name, &TemplateSource::BuiltIn, &t));
        }
        let dir = user_dir(&self.home);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(list),
            Err(e) => return Err(EngineError::io(format!("read {}", dir.display()))(e)),
        };
        let mut names: Vec<String> = entries
            .flatten()
            .filter_map(|e| {
                let file = e.file_name().to_string_lossy().into_owned();
                file.strip_suffix(".toml")
                    .filter(|n| validate_name(n).is_ok())
                    .map(str::to_string)
            })
            .collect();
        names.sort();
        for name in names {
            let path = user_path(&self.home, &name);
            let source = TemplateSource::User(path.clone());
            match read_text(&path).and_then(|text| Template::parse(&text, &name)) {
                Ok(t) => list.push(TemplateInfo::of(&name, &source, &t)),
                Err(e) => {
                    let mut info = TemplateInfo::of(&name, &source, &Template::default());
                    info.error = Some(e.to_string());
                    list.push(info);
                }
            }
        }
        Ok(list)
    }

    /// The template `reference` names (`template show`).
    pub fn get_template(&self, reference: &str, cwd: &Path) -> Result<LoadedTemplate> {
        load(&self.home, reference, cwd, Caller::Local)
    }

    /// Adds the template in `file` as the user's template `name`, after validating it. The
    /// file is kept as written (comments too); `name` wins over its `name` field.
    pub fn add_template(&self, name: &str, file: &Path) -> Result<TemplateInfo> {
        check_new_name(&self.home, name)?;
        let text = read_text(file)?;
        let template = Template::parse(&text, &file.display().to_string())?;
        let path = user_path(&self.home, name);
        write_new(&path, &text, name)?;
        self.audit.record(crate::audit::AuditEvent::TemplateAdded {
            template: name.to_string(),
        });
        Ok(TemplateInfo::of(
            name,
            &TemplateSource::User(path),
            &template,
        ))
    }

    /// Removes the user's template `name`, and the snapshot of files `template save` took for
    /// it (its layers stay while sandboxes made from it use them). Built-ins cannot be removed.
    pub fn remove_template(&self, name: &str) -> Result<()> {
        if built_in(name).is_some() {
            return Err(EngineError::TemplateBuiltIn(name.to_string()));
        }
        if validate_name(name).is_err() {
            return Err(EngineError::TemplateNotFound(name.to_string()));
        }
        let path = user_path(&self.home, name);
        // A file that no longer parses is removed all the same: that is how it gets fixed.
        let snapshot = read_text(&path)
            .map_err(|e| match e {
                EngineError::TemplateNotFound(_) => EngineError::TemplateNotFound(name.to_string()),
                other => other,
            })
            .map(|text| {
                Template::parse(&text, name)
                    .ok()
                    .and_then(|t| t.snapshot)
                    // Only the snapshot `save` took for this template: one a hand-written
                    // template names is someone else's.
                    .filter(|s| *s == format!("{SAVED_SNAPSHOT_PREFIX}{name}"))
            })?;
        std::fs::remove_file(&path)
            .map_err(EngineError::io(format!("remove {}", path.display())))?;
        if let Some(snapshot) = snapshot {
            match self.delete_snapshot(&snapshot, true) {
                Ok(()) | Err(EngineError::SnapshotNotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        self.audit
            .record(crate::audit::AuditEvent::TemplateRemoved {
                template: name.to_string(),
            });
        Ok(())
    }

    /// `template save --from SANDBOX NAME`: the sandbox's settings as user template `name`,
    /// with a snapshot of its files that sandboxes from the template start with. Nothing is
    /// left if any step fails.
    pub fn save_template(&self, sandbox: &str, name: &str) -> Result<TemplateInfo> {
        check_new_name(&self.home, name)?;
        let snapshot = format!("{SAVED_SNAPSHOT_PREFIX}{name}");
        validate_name(&snapshot).map_err(|_| {
            CoreError::InvalidArgument(format!(
                "template name {name:?} is too long to name its snapshot {snapshot}: use at most {} characters",
                agentkernel_core::name::MAX_NAME_LEN - SAVED_SNAPSHOT_PREFIX.len()
            ))
        })?;
        let (mut template, notes) = self.template_of_sandbox(sandbox)?;
        template.name = Some(name.to_string());
        template.snapshot = Some(snapshot.clone());
        if template.description.is_none() {
            template.description = Some(format!("saved from sandbox {sandbox}"));
        }
        let text = format!(
            "# Saved from sandbox {sandbox} by `agentkernel template save` on {}.\n# Sandboxes made from it start with that sandbox's files (snapshot {snapshot}).\n{}{}",
            chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
            notes,
            template.to_toml()?
        );
        self.take_snapshot(sandbox, Some(&snapshot), SnapshotKind::Template)?;
        let path = user_path(&self.home, name);
        if let Err(e) = write_new(&path, &text, name) {
            let _ = self.delete_snapshot(&snapshot, true);
            return Err(e);
        }
        self.audit.record(crate::audit::AuditEvent::TemplateAdded {
            template: name.to_string(),
        });
        Ok(TemplateInfo::of(
            name,
            &TemplateSource::User(path),
            &template,
        ))
    }

    /// `sandbox export-config NAME`: the sandbox's settings as template TOML, which
    /// `sandbox import-config` (or `--template FILE`) turns into a sandbox again. Secrets are
    /// named in a comment, never given a value.
    pub fn export_config(&self, sandbox: &str) -> Result<String> {
        let (template, notes) = self.template_of_sandbox(sandbox)?;
        Ok(format!(
            "# Settings of sandbox {sandbox} (`agentkernel sandbox export-config`); make a sandbox of them with\n# `agentkernel sandbox import-config FILE --as NEW`.\n{notes}{}",
            template.to_toml()?
        ))
    }

    /// A sandbox's spec as a template, with comment lines saying what a template does not
    /// carry (secrets, network host lists, files).
    fn template_of_sandbox(&self, sandbox: &str) -> Result<(Template, String)> {
        let rec = self.get_record(sandbox)?;
        let spec = &rec.spec;
        let image = match &spec.image {
            ImageRef::Registry { reference } => reference.clone(),
            ImageRef::Host => "host".to_string(),
            other => {
                return Err(CoreError::Unsupported(format!(
                    "sandbox {sandbox} runs on image {}, a host path, which a template cannot name: make the sandbox from a registry image or `host`",
                    other.display()
                ))
                .into());
            }
        };
        let mut notes = String::new();
        let compatibility = compat_mode_of(spec);
        let env = self.user_env_of(spec, &mut notes);
        let limits = &spec.policy.limits;
        let template = Template {
            name: Some(sandbox.to_string()),
            description: spec.description.clone(),
            image: Some(image),
            profile: Some(spec.policy.profile.to_string()),
            compatibility: compatibility.map(|c| c.to_string()),
            env,
            resources: Resources {
                vcpus: Some(limits.vcpus),
                memory_mb: Some(limits.memory_mb),
                disk_mb: limits.disk_explicit.then_some(limits.disk_mb),
            },
            ..Default::default()
        };
        let mode_hosts = compatibility
            .map(CompatMode::allow_hosts)
            .unwrap_or_default();
        let extra: Vec<String> = spec
            .policy
            .allow_hosts
            .iter()
            .filter(|h| !mode_hosts.contains(h))
            .cloned()
            .collect();
        let mut template = template;
        if spec.policy.network != Policy::for_profile(spec.policy.profile).network {
            template.network = Some(spec.policy.network.is_networked());
        }
        if !extra.is_empty() || !spec.policy.deny_hosts.is_empty() {
            template.domains = Some(agentkernel_core::config::DomainsSection {
                allow: (!extra.is_empty()).then_some(extra),
                deny: (!spec.policy.deny_hosts.is_empty()).then(|| spec.policy.deny_hosts.clone()),
            });
        }
        if !spec.layers.is_empty() {
            notes.push_str(
                "# Files are not carried: this sandbox started from captured layers (use `agentkernel template save` or `snapshot take` for its files).\n",
            );
        }
        Ok((template, notes))
    }

    /// The variables a user set in a sandbox: its env without what the image, the profile's
    /// passthrough and agentkernel set; secret placeholders are named in `notes`.
    fn user_env_of(&self, spec: &SandboxSpec, notes: &mut String) -> BTreeMap<String, String> {
        let image_env: Vec<String> = self
            .backend(spec)
            .ok()
            .and_then(|b| {
                self.images_for(None)
                    .ok()
                    .and_then(|images| b.resolve_image(&spec.image, &images).ok())
            })
            .map(|rootfs| rootfs.config.env.clone())
            .unwrap_or_default();
        let secret_keys: Vec<&str> = spec.secrets.iter().map(|b| b.key.as_str()).collect();
        if !spec.secrets.is_empty() {
            let bound: Vec<String> = spec
                .secrets
                .iter()
                .map(|b| format!("{} → {}", b.key, b.host))
                .collect();
            notes.push_str(&format!(
                "# Secrets bound to the sandbox (values not exported): {}; bind them again with --secret KEY:HOST.\n",
                bound.join(", ")
            ));
        }
        if !spec.secret_files.is_empty() {
            notes.push_str(&format!(
                "# Secret files not exported: {}; give --secret-file again.\n",
                spec.secret_files.join(", ")
            ));
        }
        let home = if spec.policy.user.uid == 0 {
            "/root"
        } else {
            "/tmp"
        };
        spec.env
            .iter()
            .filter(|(k, v)| {
                let from_image = image_env.iter().any(|kv| kv == &format!("{k}={v}"));
                let default = (k == "PATH" && v == crate::resolve::DEFAULT_PATH)
                    || (k == "HOME" && v == home)
                    || k == "HOSTNAME";
                !from_image
                    && !default
                    && !secret_keys.contains(&k.as_str())
                    && !spec.policy.env_passthrough.contains(k)
                    && !k.starts_with("AGENTKERNEL_")
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Applies the template a request names to a resolved spec: its snapshot's files, its
    /// setup's cached layers, and the label naming it. The image and policy come from the
    /// template's config layer, its env from `with_template_env`.
    pub(crate) fn apply_template(
        &self,
        loaded: &LoadedTemplate,
        req: &SpecRequest,
        spec: &mut SandboxSpec,
    ) -> Result<()> {
        let t = &loaded.template;
        if let Some(snapshot) = &t.snapshot {
            let saved = self.snapshot_spec(snapshot).map_err(|e| match e {
                EngineError::SnapshotNotFound(_) => EngineError::TemplateInvalid {
                    origin: loaded.name.clone(),
                    message: format!(
                        "its files (snapshot {snapshot}) are gone, deleted or cleaned: save it again with `agentkernel template save --from SANDBOX {}` (after `agentkernel template remove {}`)",
                        loaded.name, loaded.name
                    ),
                },
                other => other,
            })?;
            if saved.backend != spec.backend {
                return Err(CoreError::Conflicting(format!(
                    "template {} starts sandboxes with files saved on the {} backend, and this sandbox is for {}: use -B {}",
                    loaded.name, saved.backend, spec.backend, saved.backend
                ))
                .into());
            }
            if saved.image != spec.image {
                return Err(CoreError::Conflicting(format!(
                    "template {} starts sandboxes with files saved over image {}, and this sandbox's image is {}: drop --image (or [sandbox] base_image) to use the template's",
                    loaded.name,
                    saved.image.display(),
                    spec.image.display()
                ))
                .into());
            }
            spec.layers = saved.layers;
        }
        let setup = t.setup_commands(&spec.image)?;
        if !setup.is_empty() {
            let builder = setup_spec(spec, req);
            let key = match &t.snapshot {
                Some(s) => format!("{}@{s}", loaded.name),
                None => loaded.name.clone(),
            };
            spec.layers = self.template_layers(&key, &builder, &setup)?;
        }
        spec.labels
            .insert(TEMPLATE_LABEL.to_string(), loaded.name.clone());
        Ok(())
    }
}

/// The spec a template's setup runs in: the sandbox's, without what belongs to this one
/// sandbox rather than to the template (its name, the caller's `-e` variables and secrets, the
/// profile's passthrough, host mounts, labels), so the cached result serves every sandbox made
/// from the template and the setup never writes into a host directory.
fn setup_spec(spec: &SandboxSpec, req: &SpecRequest) -> SandboxSpec {
    let flagged: Vec<&str> = req
        .env
        .iter()
        .filter_map(|kv| kv.split_once('=').map(|(k, _)| k))
        .collect();
    let secret_keys: Vec<&str> = spec.secrets.iter().map(|b| b.key.as_str()).collect();
    let mut build = spec.clone();
    build.env.retain(|(k, _)| {
        k != "HOSTNAME"
            && !flagged.contains(&k.as_str())
            && !secret_keys.contains(&k.as_str())
            && !spec.policy.env_passthrough.contains(k)
    });
    build.policy.mounts.clear();
    build.policy.masked_paths.clear();
    build.secrets.clear();
    build.secret_files.clear();
    build.placeholder_secrets = false;
    build.labels.clear();
    build.description = None;
    build.ports.clear();
    build
}

/// The compatibility mode whose allowlist a sandbox's policy starts with, if any.
fn compat_mode_of(spec: &SandboxSpec) -> Option<CompatMode> {
    [CompatMode::Claude, CompatMode::Codex, CompatMode::Gemini]
        .into_iter()
        .find(|m| {
            let hosts = m.allow_hosts();
            spec.policy.allow_hosts.starts_with(&hosts)
        })
}

/// The request with the template's environment under its own `-e` variables (later ones win).
pub(crate) fn with_template_env(req: &SpecRequest, loaded: &LoadedTemplate) -> SpecRequest {
    let mut env: Vec<String> = loaded
        .template
        .env
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    env.extend(req.env.iter().cloned());
    SpecRequest { env, ..req.clone() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_built_in_parses_validates_and_is_named_after_its_file() {
        assert_eq!(BUILT_IN.len(), 22);
        for (name, text) in BUILT_IN {
            let t = Template::parse(text, name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(t.name.as_deref(), Some(*name), "{name}");
            assert!(t.description.is_some(), "{name} has a description");
            let image = t.image.as_deref().unwrap_or_else(|| panic!("{name} image"));
            let image = ImageRef::parse(image, Path::new("/")).expect("image");
            t.setup_commands(&image)
                .unwrap_or_else(|e| panic!("{name} setup: {e}"));
        }
        for seed in [
            "python",
            "node",
            "rust",
            "go",
            "ruby",
            "java",
            "dotnet",
            "php",
            "elixir",
            "c-cpp",
            "shell",
            "terraform",
            "python-ci",
            "node-ci",
            "rust-ci",
            "data-science",
            "web-dev",
            "fullstack",
            "claude",
            "codex",
            "gemini",
            "opencode",
        ] {
            assert!(built_in(seed).is_some(), "{seed} is built in");
        }
    }

    #[test]
    fn bad_templates_are_refused_with_the_field_and_line() {
        for (text, needle) in [
            ("name = \"x\"\nimage = \n", "line 2"),
            ("imagee = \"alpine\"\n", "imagee"),
            ("profile = \"lax\"\n", "profile"),
            ("compatibility = \"vim\"\n", "compatibility"),
            ("ports = [0]\n", "ports"),
            ("ports = [70000]\n", "line 1"),
            ("[resources]\nmemory_mb = 1\n", "memory_mb"),
            ("[resources]\nvcpus = -1\n", "vcpus"),
            ("image = \"/srv/root\"\n", "registry image"),
            ("[setup]\npackages = [\"git; rm -rf /\"]\n", "package name"),
            (
                "image = \"busybox:latest\"\n[setup]\npackages = [\"git\"]\n",
                "package_manager",
            ),
            ("[setup]\npackage_manager = \"yum\"\n", "apk"),
            ("[env]\n\"\" = \"x\"\n", "[env]"),
            ("name = \"../x\"\n", "name"),
        ] {
            let e = Template::parse(text, "t.toml").expect_err(text);
            let message = e.to_string();
            assert!(message.contains(needle), "{text:?}: {message}");
            assert!(message.starts_with("template t.toml:"), "{message}");
        }
    }

    #[test]
    fn package_managers_are_told_from_image_names() {
        for (image, manager) in [
            ("python:3.12-alpine", Some(PackageManager::Apk)),
            ("alpine:3.20", Some(PackageManager::Apk)),
            ("node:22-alpine", Some(PackageManager::Apk)),
            ("python:3.12-slim", Some(PackageManager::Apt)),
            ("gcc:14-bookworm", Some(PackageManager::Apt)),
            ("debian:12", Some(PackageManager::Apt)),
            (
                "mcr.microsoft.com/dotnet/sdk:8.0",
                Some(PackageManager::Apt),
            ),
            (
                "127.0.0.1:5000/library/alpine:3.20",
                Some(PackageManager::Apk),
            ),
            ("busybox:latest", None),
            ("hashicorp/terraform:1.10", None),
        ] {
            assert_eq!(PackageManager::guess(image), manager, "{image}");
        }
        let t = Template::parse(
            "image = \"node:22-alpine\"\n[setup]\npackages = [\"git\", \"bash\"]\ncommands = [\"npm i -g x\"]\n",
            "t",
        )
        .expect("valid");
        let image = ImageRef::parse("node:22-alpine", Path::new("/")).expect("image");
        assert_eq!(
            t.setup_commands(&image).expect("steps"),
            ["apk add --no-cache git bash", "npm i -g x"]
        );
    }

    #[test]
    fn references_name_built_ins_users_and_files_and_refuse_github() {
        let home = tempfile::tempdir().expect("home");
        let cwd = tempfile::tempdir().expect("cwd");
        let t = load(home.path(), "python", cwd.path(), Caller::Local).expect("built-in");
        assert_eq!(t.source, TemplateSource::BuiltIn);
        std::fs::write(cwd.path().join("mine.toml"), "image = \"alpine:3.20\"\n").expect("write");
        let t = load(home.path(), "mine.toml", cwd.path(), Caller::Local).expect("file");
        assert_eq!(t.name, "mine");
        assert!(matches!(t.source, TemplateSource::File(_)));
        let e = load(home.path(), "./mine.toml", cwd.path(), Caller::Remote).expect_err("remote");
        assert!(e.to_string().contains("template list"), "{e}");
        let e = load(home.path(), "nope", cwd.path(), Caller::Local).expect_err("unknown");
        assert!(matches!(e, EngineError::TemplateNotFound(_)), "{e}");
        let e =
            load(home.path(), "github:o/r/t.toml", cwd.path(), Caller::Local).expect_err("github");
        assert!(e.to_string().contains("download"), "{e}");
        assert!(e.to_string().contains("./t.toml"), "{e}");
    }

    #[test]
    fn a_template_round_trips_through_toml_and_becomes_a_config_layer() {
        let t = Template {
            name: Some("x".into()),
            image: Some("alpine:3.20".into()),
            profile: Some("restrictive".into()),
            ports: vec![3000],
            env: [("A".to_string(), "1".to_string())].into(),
            resources: Resources {
                memory_mb: Some(300),
                ..Default::default()
            },
            setup: Setup {
                commands: vec!["true".into()],
                ..Default::default()
            },
            ..Default::default()
        };
        let text = t.to_toml().expect("toml");
        assert_eq!(Template::parse(&text, "x").expect("parse"), t);
        let c = t.as_config();
        assert_eq!(c.sandbox.base_image.as_deref(), Some("alpine:3.20"));
        assert_eq!(c.resources.memory_mb, Some(300));
        assert_eq!(c.security.profile.as_deref(), Some("restrictive"));
    }
}
