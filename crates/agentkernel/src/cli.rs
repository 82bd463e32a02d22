//! Command-line grammar. Names and flags follow the reference documentation of the tool.

use clap::{Args, FromArgMatches, Parser, Subcommand};
use std::ffi::OsString;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "agentkernel",
    version,
    about = "Run commands in isolated sandboxes: Linux namespaces, seccomp, Landlock and cgroups",
    propagate_version = true,
    disable_help_subcommand = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Parses `args` (the program name first). `run` and `exec`, the commands an agent makes
    /// for every step, are parsed by a command tree holding only themselves: clap builds the
    /// whole tree before parsing, and the full one (every subcommand and flag) costs ~50 pages
    /// of heap and ~0.2 ms at each start. Anything that does not parse that way (help, version,
    /// errors) is parsed again by the full tree, so that messages and help are exactly clap's.
    pub fn parse_from_args(args: Vec<OsString>) -> Result<Cli, clap::Error> {
        if let Some(tree) = args.get(1).and_then(|a| a.to_str()).and_then(hot_tree)
            && let Ok(matches) = tree.try_get_matches_from(&args)
            && let Ok(cli) = Cli::from_arg_matches(&matches)
        {
            return Ok(cli);
        }
        Cli::try_parse_from(args)
    }
}

/// The command tree for one hot subcommand, with the settings the full tree has.
fn hot_tree(name: &str) -> Option<clap::Command> {
    let sub = match name {
        "run" => RunArgs::augment_args(clap::Command::new("run")),
        "exec" => ExecArgs::augment_args(clap::Command::new("exec")),
        _ => return None,
    };
    Some(
        clap::Command::new("agentkernel")
            .version(env!("CARGO_PKG_VERSION"))
            .propagate_version(true)
            .disable_help_subcommand(true)
            .subcommand(sub),
    )
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a command in a temporary sandbox (removed afterwards unless --keep)
    Run(Box<RunArgs>),
    /// Create a persistent sandbox
    Create(Box<CreateArgs>),
    /// Start a stopped sandbox
    Start(NameArg),
    /// Stop a running sandbox (files written in it are kept)
    Stop(NameArg),
    /// Remove a sandbox and everything written in it
    #[command(visible_alias = "rm")]
    Remove(NameArg),
    /// List sandboxes
    #[command(visible_alias = "ls")]
    List(SandboxListArgs),
    /// Execute a command in a running sandbox
    Exec(ExecArgs),
    /// Open an interactive shell in a running sandbox
    Attach(AttachArgs),
    /// Copy files between the host and a sandbox (NAME:/path on one side)
    Cp(CpArgs),
    /// Manage sandboxes (create, start, stop, remove, list, gc, fork, export, export-config, import-config)
    #[command(subcommand)]
    Sandbox(SandboxCommand),
    /// Remove expired sandboxes and leftovers of crashed ones
    Gc(GcArgs),
    /// View the audit log
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Check and replay signed execution receipts (`run --receipt FILE`)
    #[command(subcommand, visible_alias = "receipts")]
    Receipt(ReceiptCommand),
    /// Check what this machine can run, and how to fix what it cannot
    Doctor(ListArgs),
    /// Prepare what the default backend needs (packages, state directory, host image)
    Setup(SetupArgs),
    /// Serve the HTTP API (for SDKs, programs and fleets)
    Serve(ServeArgs),
    /// Manage the daemon: warm sandbox pools and the API on a local socket
    #[command(subcommand)]
    Daemon(DaemonCommand),
    /// The MCP server: the sandbox tools for AI agents (`mcp server`, over stdio)
    #[command(subcommand)]
    Mcp(McpCommand),
    /// Serve the MCP tools over stdio (the same as `mcp server`)
    #[command(name = "mcp-server")]
    McpServer,
    /// Manage images (pull, list)
    #[command(subcommand, visible_alias = "image")]
    Images(ImagesCommand),
    /// Set up AI coding agents to use agentkernel (skill, command, MCP server, OpenCode plugin)
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// List supported AI coding agents: installed or not, version, API key set or not
    Agents(ListArgs),
    /// Store credentials (API keys) on the host: set, get, list, delete
    #[command(subcommand, visible_alias = "secrets")]
    Secret(SecretCommand),
    /// Save and restore sandbox state: take, list, show, restore, delete
    #[command(subcommand, visible_alias = "snapshots")]
    Snapshot(crate::snapshots::SnapshotCommand),
    /// Agent sessions: a sandbox with its saves (start, save, resume, list, delete)
    #[command(subcommand, visible_alias = "sessions")]
    Session(crate::snapshots::SessionCommand),
    /// Sandbox templates: list, show, add, save, remove (use one with --template)
    #[command(subcommand, visible_alias = "templates")]
    Template(crate::templates::TemplateCommand),
    /// Print the shell completion script: bash, zsh, fish, elvish or powershell
    Completions(crate::completions::CompletionsArgs),
    /// Print the man page, or write one per command with --dir
    Man(crate::completions::ManArgs),
    /// Measure run and exec on each backend this machine can use, and print a table
    Benchmark(crate::benchmark::BenchmarkArgs),
    /// Sandbox count and the CPU, memory and disk each sandbox uses, and all of them
    Stats(ListArgs),
    /// Play a recorded session (`attach --record`) in this terminal with its timing
    Replay(crate::replay::ReplayArgs),
    /// Run independent jobs at once, each in its own sandbox (--job NAME:IMAGE:COMMAND …)
    Parallel(crate::parallel::ParallelArgs),
    /// Run the steps of a pipeline file in order, each step's output the next one's input
    Pipeline(crate::pipeline::PipelineArgs),
}

#[derive(Subcommand, Debug)]
#[command(
    after_help = "Backends: file (default, encrypted in ~/.agentkernel/secrets), env (read-only, for CI) or keychain; choose with [secrets] backend or AGENTKERNEL_SECRETS_BACKEND."
)]
pub enum SecretCommand {
    /// Store a secret (the value is read from stdin when not given, keeping it out of shell history)
    Set(SecretSetArgs),
    /// Print a secret's value
    Get(SecretKeyArg),
    /// List the stored secrets' names (never their values)
    #[command(visible_alias = "ls")]
    List,
    /// Remove a secret
    #[command(visible_alias = "rm")]
    Delete(SecretKeyArg),
}

#[derive(Args, Debug)]
pub struct SecretSetArgs {
    /// The secret's name: letters, digits and '_', not starting with a digit (e.g. ANTHROPIC_API_KEY)
    pub key: String,
    /// The value; read from stdin when absent (one trailing newline is dropped)
    pub value: Option<String>,
}

#[derive(Args, Debug)]
pub struct SecretKeyArg {
    /// The secret's name (e.g. ANTHROPIC_API_KEY)
    pub key: String,
}

#[derive(Subcommand, Debug)]
pub enum PluginCommand {
    /// Install the files an agent needs to use agentkernel (merged into existing configs)
    Install(PluginInstallArgs),
    /// Show, for each agent, whether its files are installed and up to date
    #[command(visible_alias = "ls")]
    List(ListArgs),
}

#[derive(Args, Debug)]
pub struct PluginInstallArgs {
    /// claude, codex, gemini, opencode, mcp (any MCP client) or all [default: `[agent] preferred`]
    pub agent: Option<String>,
    /// Install into your home directory (all projects) instead of the current project
    #[arg(long)]
    pub global: bool,
    /// Replace files of ours (skill, command, plugin) that were edited since they were installed
    #[arg(long)]
    pub force: bool,
    /// Show the changes as a diff and write nothing
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Subcommand, Debug)]
pub enum McpCommand {
    /// Serve the MCP tools on stdin/stdout (JSON-RPC), for an agent that starts this process
    Server,
}

#[derive(Subcommand, Debug)]
pub enum ImagesCommand {
    /// Pull an image from its registry (or AGENTKERNEL_REGISTRY_MIRROR), even if it is stored
    Pull(PullArgs),
    /// List pulled images
    #[command(visible_alias = "ls")]
    List(ImagesListArgs),
    /// Forget a pulled image (its files go at the next prune)
    Rm(ImageArg),
    /// Remove every pulled image no sandbox uses, and what nothing reaches
    Prune,
}

#[derive(Args, Debug)]
pub struct ImagesListArgs {
    /// Also list prepared images no reference names (from oci: layouts, or removed and not pruned)
    #[arg(short, long)]
    pub all: bool,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct SetupArgs {
    /// Accepted for scripts written when setup installed pasta; there is nothing to install now
    #[arg(long, hide = true)]
    pub no_install: bool,
}

#[derive(Args, Debug)]
pub struct ImageArg {
    /// Image reference
    pub image: String,
}

#[derive(Args, Debug)]
pub struct PullArgs {
    /// Image reference, e.g. python:3.12-alpine or ghcr.io/org/img:tag
    pub image: String,
    /// Print nothing but errors
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Subcommand, Debug)]
pub enum SandboxCommand {
    /// Create a persistent sandbox
    Create(Box<CreateArgs>),
    /// Start a stopped sandbox
    Start(NameArg),
    /// Stop a running sandbox
    Stop(NameArg),
    /// Remove a sandbox
    #[command(visible_alias = "rm")]
    Remove(NameArg),
    /// List sandboxes
    #[command(visible_alias = "ls")]
    List(SandboxListArgs),
    /// Remove expired sandboxes and leftovers
    Gc(GcArgs),
    /// Show or change a sandbox's network policy; a running sandbox's next connection sees it
    Policy(PolicyArgs),
    /// Make copies of a sandbox, each starting with its files and independent afterwards
    Fork(crate::snapshots::ForkArgs),
    /// Write a sandbox's whole filesystem to a tar archive
    Export(crate::snapshots::ExportArgs),
    /// Remove every sandbox, snapshot, session, template cache and unused image
    Clean(crate::snapshots::CleanArgs),
    /// Print a sandbox's settings as template TOML (secrets named, never their values)
    ExportConfig(NameArg),
    /// Create a sandbox from settings `export-config` printed (or any template file)
    ImportConfig(crate::templates::ImportConfigArgs),
}

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// List audit entries
    List(AuditListArgs),
    /// Print the audit log's path
    Path,
}

#[derive(Subcommand, Debug)]
#[command(
    after_help = "Exit codes: 0 valid (verify) or all matched (replay); 1 not valid, or something differed; 125 the receipt could not be read or the replay could not run."
)]
pub enum ReceiptCommand {
    /// Check a receipt's signature and document; say whose key signed it
    Verify(ReceiptVerifyArgs),
    /// Run a receipt's command again (same image digest, backend and policy) and compare the
    /// exit code and output hashes
    Replay(ReceiptReplayArgs),
}

#[derive(Args, Debug)]
pub struct ReceiptVerifyArgs {
    /// The receipt file `run --receipt` wrote
    pub file: PathBuf,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ReceiptReplayArgs {
    /// The receipt file `run --receipt` wrote
    pub file: PathBuf,
    /// Also show the replay's own stdout and stderr (on stderr; stdout keeps the comparison)
    #[arg(long)]
    pub show_output: bool,
}

/// Options that shape a sandbox, shared by `run` and `create`.
#[derive(Args, Debug, Clone, Default)]
pub struct SandboxOpts {
    /// Image: a registry image (python:3.12-alpine), `host`, a directory, or oci:/layout[:tag]; auto-detected when absent
    #[arg(short = 'i', long)]
    pub image: Option<String>,
    /// Security profile: permissive, moderate (default) or restrictive
    #[arg(short = 'p', long)]
    pub profile: Option<String>,
    /// Path to an agentkernel.toml config file
    #[arg(short = 'c', long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Start from a template: a built-in or your own (`agentkernel template list`), or a
    /// template file's path; flags, --config and ./agentkernel.toml override what it sets
    #[arg(long, value_name = "NAME")]
    pub template: Option<String>,
    #[arg(short = 'B', long, help = backend_help())]
    pub backend: Option<String>,
    /// Disable network access
    #[arg(long)]
    pub no_network: bool,
    /// Set an environment variable in the sandbox (repeatable); `-e KEY` alone passes this
    /// shell's value of KEY
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Working directory inside the sandbox (default /workspace)
    #[arg(short = 'w', long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// Memory limit in MB (overrides the profile and config)
    #[arg(long, value_name = "MB")]
    pub memory: Option<u64>,
    /// CPU limit in cores (overrides the profile and config)
    #[arg(long, value_name = "N")]
    pub vcpus: Option<f64>,
    /// Disk limit in MB for each writable filesystem of the sandbox (overrides the profile and config)
    #[arg(long, value_name = "MB")]
    pub disk: Option<u64>,
    /// Agent compatibility mode: native (allow all), claude, codex or gemini (the agent's API
    /// and the package registries only, the project mounted at /workspace)
    #[arg(long, value_name = "MODE")]
    pub compatibility_mode: Option<String>,
    /// Let the sandbox reach only these hosts (repeatable; `*.example.com` for every name below)
    #[arg(long = "allow-host", value_name = "HOST")]
    pub allow_host: Vec<String>,
    /// Never let the sandbox reach these hosts (repeatable; wildcards as --allow-host)
    #[arg(long = "deny-host", value_name = "HOST")]
    pub deny_host: Vec<String>,
    /// Bind a secret to a host via proxy (KEY:host, KEY=value:host, KEY:host:header; repeatable):
    /// the sandbox sees a placeholder, the proxy adds the value to requests for that host only
    #[arg(short = 'S', long = "secret", value_name = "BINDING")]
    pub secret: Vec<String>,
    /// Inject a vault secret as a file at /run/agentkernel/secrets/KEY (repeatable)
    #[arg(long = "secret-file", value_name = "KEY")]
    pub secret_file: Vec<String>,
    /// Put placeholder tokens in the --secret-file files; the proxy swaps in the real values on
    /// the way out
    #[arg(long)]
    pub placeholder_secrets: bool,
    /// Publish a port: HOST:SANDBOX, PORT for the same on both, or IP:HOST:SANDBOX (e.g.
    /// 8080:80, 3000; repeatable). Bound on 127.0.0.1 unless an address is given
    #[arg(short = 'P', long, value_name = "PORT")]
    pub publish: Vec<String>,
    /// Mount a host directory (HOST_DIR:SANDBOX_DIR[:ro], absolute or ./ relative) or a named
    /// volume agentkernel keeps (NAME:SANDBOX_DIR[:ro]) in the sandbox (repeatable)
    #[arg(short = 'v', long = "volume", value_name = "SOURCE:DIR[:ro]")]
    pub volume: Vec<String>,
    #[command(flatten)]
    pub not_yet: NotYetOpts,
}

/// The `-B` help: the backends this build has, from the engine's registry.
fn backend_help() -> String {
    let names: Vec<&str> = agentkernel_engine::backend::available()
        .map(|b| b.as_str())
        .collect();
    format!("Backend (this build: {})", names.join(", "))
}

/// Options the reference documentation gives `run` and `create` that this build does not have
/// yet. They are parsed (so they are not mistaken for the command) and refused with what to do
/// instead; hidden from `--help`, which lists what works.
#[derive(Args, Debug, Clone, Default)]
pub struct NotYetOpts {
    #[arg(long, hide = true)]
    pub ssh: bool,
}

impl NotYetOpts {
    /// The first option given that this build does not have, as an error saying what to do.
    pub fn refuse(&self) -> Result<(), agentkernel_core::CoreError> {
        let refusal = if self.ssh {
            Some((
                "--ssh",
                "open a shell with `agentkernel attach NAME`, or run commands with `agentkernel exec NAME -- ...`",
            ))
        } else {
            None
        };
        match refusal {
            Some((flag, instead)) => Err(not_yet(flag, instead)),
            None => Ok(()),
        }
    }
}

/// The error for a documented option this build does not have.
pub fn not_yet(flag: &str, instead: &str) -> agentkernel_core::CoreError {
    agentkernel_core::CoreError::Unsupported(format!("`{flag}` is not supported yet: {instead}"))
}

impl SandboxOpts {
    /// Refuses options this build does not have or cannot honour, before anything runs.
    pub fn refuse_unsupported(&self) -> Result<(), agentkernel_core::CoreError> {
        self.not_yet.refuse()?;
        if let Some(mode) = &self.compatibility_mode {
            mode.parse::<agentkernel_core::compat::CompatMode>()?;
        }
        Ok(())
    }
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub sandbox: SandboxOpts,
    /// Keep the sandbox after the command exits
    #[arg(short = 'k', long)]
    pub keep: bool,
    /// Lifetime of a kept sandbox (e.g. 30m, 1h, 3d; default 1h)
    #[arg(long, value_name = "DURATION")]
    pub ttl: Option<String>,
    /// Use (and keep) the sandbox named after the git project and branch
    #[arg(long)]
    pub branch: bool,
    /// Kill the command after this long (e.g. 30s, 5m)
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<String>,
    /// Say which image was chosen and why
    #[arg(long)]
    pub verbose: bool,
    /// Use a warm sandbox of the daemon's pool when one matches (the default); --fast=false
    /// always boots a new one
    #[arg(
        short = 'F',
        long,
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub fast: Option<bool>,
    /// Write a signed execution receipt JSON for this run (check it with `agentkernel receipt
    /// verify FILE`); skips the daemon's warm pool
    #[arg(long, value_name = "FILE")]
    pub receipt: Option<PathBuf>,
    /// The command and its arguments: everything after the first word (or after `--`) is the
    /// command's, hyphens included
    #[arg(trailing_var_arg = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Sandbox name (letters, digits, _ . -; up to 63)
    pub name: Option<String>,
    #[command(flatten)]
    pub sandbox: SandboxOpts,
    /// Remove the sandbox automatically after this long (`gc`)
    #[arg(long, value_name = "DURATION")]
    pub ttl: Option<String>,
    /// Name the sandbox after the git project and branch
    #[arg(long)]
    pub branch: bool,
    /// Copy this project directory into the sandbox as /workspace (with -p permissive it is
    /// mounted there instead); its agentkernel.toml and files are the project's
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Clone this git repository into /workspace (https://, http://, git://, ssh:// or
    /// user@host:path), with git inside the sandbox over its network: the image needs git
    #[arg(long, value_name = "URL", conflicts_with = "dir")]
    pub source_url: Option<String>,
    /// The branch, tag or commit of --source-url to check out
    #[arg(long, value_name = "REF", requires = "source_url")]
    pub source_ref: Option<String>,
}

#[derive(Args, Debug)]
pub struct NameArg {
    /// Sandbox name
    pub name: String,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct SandboxListArgs {
    /// Print JSON
    #[arg(long)]
    pub json: bool,
    /// Only the sandboxes made for this project (the git repository's directory name they
    /// were created in, or the --dir given to create)
    #[arg(long, value_name = "NAME")]
    pub project: Option<String>,
}

#[derive(Args, Debug)]
pub struct ExecArgs {
    /// Set an environment variable (repeatable)
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Working directory inside the sandbox
    #[arg(short = 'w', long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// Kill the command after this long (e.g. 30s, 5m)
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<String>,
    /// Run the command in the background and print its id (output is kept in the sandbox's state)
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Sandbox name
    pub name: String,
    /// The command and its arguments: everything after its first word (or after `--`) is the
    /// command's, hyphens included
    #[arg(trailing_var_arg = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[derive(Args, Debug)]
pub struct AttachArgs {
    /// Set an environment variable (repeatable)
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Record the session (asciicast v2) under ~/.agentkernel/recordings/
    #[arg(long)]
    pub record: bool,
    /// Sandbox name
    pub name: String,
    /// Program to run instead of the default shell (everything after its first word, or after
    /// `--`, is its own)
    #[arg(trailing_var_arg = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[derive(Args, Debug)]
pub struct CpArgs {
    /// Source: a host path or NAME:/path
    pub src: String,
    /// Destination: a host path or NAME:/path
    pub dst: String,
}

#[derive(Args, Debug)]
pub struct GcArgs {
    /// Only show what would be removed
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Args, Debug)]
pub struct AuditListArgs {
    /// Only entries of this sandbox
    #[arg(long)]
    pub sandbox: Option<String>,
    /// Only the N newest entries
    #[arg(long, value_name = "N")]
    pub last: Option<usize>,
    /// Print JSON lines
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1, or `[server] host`]
    #[arg(long)]
    pub host: Option<String>,
    /// Port to listen on [default: 18888, or `[server] port`]
    #[arg(long)]
    pub port: Option<u16>,
    /// Accept this key as `Authorization: Bearer KEY` (repeatable; also AGENTKERNEL_API_KEY)
    #[arg(long = "api-key", value_name = "KEY")]
    pub api_key: Vec<String>,
    /// Read keys from a file, one per line
    #[arg(long, value_name = "FILE")]
    pub api_key_file: Option<PathBuf>,
    /// Serve a non-loopback address without any key (anyone who reaches it can run commands)
    #[arg(long)]
    pub insecure_no_auth: bool,
    /// Answer requests for this host name too (repeatable; also `[server] allowed_hosts`).
    /// localhost and IP addresses are always answered; other names are refused, so that a web
    /// page cannot reach the server through DNS rebinding
    #[arg(long = "allowed-host", value_name = "NAME")]
    pub allowed_host: Vec<String>,
    /// Kill commands after this long unless a request sets timeout_ms [default: 30s]
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<String>,
    /// Requests served at once; more are answered 429 [default: 64]
    #[arg(long, value_name = "N")]
    pub max_concurrent: Option<usize>,
    /// Largest request body in MB [default: 16]
    #[arg(long, value_name = "MB")]
    pub max_body_mb: Option<u64>,
    /// Output of buffered commands held at once, all requests together, in MB; beyond it
    /// output is truncated [default: 256]
    #[arg(long, value_name = "MB")]
    pub max_output_mb: Option<u64>,
    /// Config file (over ./agentkernel.toml)
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Boot every sandbox for its request (no warm pool)
    #[arg(long)]
    pub no_pool: bool,
}

#[derive(Subcommand, Debug)]
pub enum DaemonCommand {
    /// Start the daemon (in the foreground unless --background)
    Start(DaemonStartArgs),
    /// Stop the daemon and destroy its warm sandboxes
    Stop,
    /// Show whether the daemon runs, and its pools
    Status(DaemonStatusArgs),
    /// Keep sandboxes warm for an agent (--mode) or an image and profile
    Prewarm(PrewarmArgs),
}

#[derive(Args, Debug)]
pub struct DaemonStartArgs {
    /// Detach: return once the daemon answers, with its output in ~/.agentkernel/daemon.log
    #[arg(short = 'd', long)]
    pub background: bool,
    /// Config file (over ./agentkernel.toml)
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct DaemonStatusArgs {
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct PrewarmArgs {
    /// An agent (claude, codex, gemini, opencode, native, or a [daemon.agents.NAME] entry)
    #[arg(short = 'm', long)]
    pub mode: Option<String>,
    /// Image of the pool (default: the mode's runtime, else as `run` would choose)
    #[arg(short = 'i', long)]
    pub image: Option<String>,
    /// Security profile: permissive, moderate or restrictive
    #[arg(short = 'p', long)]
    pub profile: Option<String>,
    /// Backend of the pool
    #[arg(short = 'B', long)]
    pub backend: Option<String>,
    /// Pool of sandboxes without network
    #[arg(long)]
    pub no_network: bool,
    /// Sandboxes to keep warm [default: the mode's min_warm, else [daemon] min_warm]
    #[arg(long, value_name = "N")]
    pub count: Option<usize>,
    /// Config file (over ./agentkernel.toml)
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[cfg(test)]
mod hot_path_tests {
    use super::*;

    fn args(line: &[&str]) -> Vec<OsString> {
        std::iter::once("agentkernel")
            .chain(line.iter().copied())
            .map(OsString::from)
            .collect()
    }

    /// The hot trees parse exactly as the full one does.
    #[test]
    fn hot_subcommands_parse_like_the_full_tree() {
        for line in [
            &[
                "run",
                "--image",
                "/x",
                "-p",
                "restrictive",
                "--no-network",
                "--",
                "sh",
                "-c",
                "exit 3",
            ][..],
            &[
                "run", "-e", "A=1", "-e", "B=2", "-w", "/w", "--memory", "64", "true",
            ],
            &[
                "run",
                "--keep",
                "--ttl",
                "5m",
                "--timeout",
                "1s",
                "--verbose",
                "-v",
                "cache:/cache",
                "ls",
                "-la",
            ],
            &["run", "-B", "native", "python3", "-c", "print(1)"],
            &[
                "exec",
                "-e",
                "K=V",
                "-w",
                "/tmp",
                "--timeout",
                "2s",
                "box",
                "--",
                "cat",
                "-n",
            ],
            &["exec", "-d", "box", "sleep", "9"],
            &["exec", "box"],
            &["exec", "box", "ls", "-la", "--color"],
            &["run", "--fast=false", "ls", "-la"],
            &["run", "-F", "--", "--weird-prog", "-x"],
        ] {
            let hot = hot_tree(line[0])
                .expect("a hot subcommand")
                .try_get_matches_from(args(line))
                .map(|m| Cli::from_arg_matches(&m).expect("hot parse"));
            let full = Cli::try_parse_from(args(line)).expect("full parse");
            assert_eq!(
                format!("{:?}", hot.expect("hot tree parses")),
                format!("{full:?}"),
                "{line:?}"
            );
        }
    }

    /// Options before the command are options: an unknown one is refused, never taken for the
    /// command; after the command's first word (or `--`) everything is the command's.
    #[test]
    fn unknown_options_are_refused_and_the_command_keeps_its_hyphens() {
        let e = Cli::parse_from_args(args(&["run", "--receipt-x", "r.json", "--", "true"]))
            .expect_err("an unknown option");
        assert_eq!(e.kind(), clap::error::ErrorKind::UnknownArgument);
        assert!(e.to_string().contains("'--receipt-x'"), "{e}");
        let Command::Run(run) = Cli::parse_from_args(args(&["run", "python3", "-c", "1", "-v"]))
            .expect("a run")
            .command
        else {
            panic!("not a run");
        };
        assert_eq!(run.command, ["python3", "-c", "1", "-v"]);
        assert!(!run.verbose);
        let Command::Run(run) = Cli::parse_from_args(args(&["run", "--", "--weird-prog"]))
            .expect("a run")
            .command
        else {
            panic!("not a run");
        };
        assert_eq!(run.command, ["--weird-prog"]);
        let Command::Attach(attach) =
            Cli::parse_from_args(args(&["attach", "box", "vim", "-u", "NONE"]))
                .expect("an attach")
                .command
        else {
            panic!("not an attach");
        };
        assert_eq!(attach.command, ["vim", "-u", "NONE"]);
        Cli::parse_from_args(args(&["attach", "--bogus", "box"])).expect_err("unknown option");
    }

    /// What the hot trees refuse is left to the full tree, which says it in its own words.
    #[test]
    fn errors_and_help_come_from_the_full_tree() {
        for line in [
            &["run", "--help"][..],
            &["run", "--version"],
            &["run", "--ttl"],
            &["exec"],
            &["exec", "--timeout"],
            &["run", "--bogus", "--", "true"],
            &["exec", "--bogus", "box", "true"],
        ] {
            let quick = Cli::parse_from_args(args(line)).expect_err("not a run");
            let full = Cli::try_parse_from(args(line)).expect_err("not a run");
            assert_eq!(quick.kind(), full.kind(), "{line:?}");
            assert_eq!(
                quick.render().to_string(),
                full.render().to_string(),
                "{line:?}"
            );
        }
    }
}

/// `sandbox policy NAME --allow HOST --deny HOST`.
#[derive(Args, Debug)]
pub struct PolicyArgs {
    /// Sandbox name
    pub name: String,
    /// Let the sandbox reach this host (repeatable): taken off the deny list, and added to the
    /// allowlist of an allowlist sandbox
    #[arg(long = "allow", value_name = "HOST")]
    pub allow: Vec<String>,
    /// Refuse this host from now on (repeatable; `*.example.com` for every name below)
    #[arg(long = "deny", value_name = "HOST")]
    pub deny: Vec<String>,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}
