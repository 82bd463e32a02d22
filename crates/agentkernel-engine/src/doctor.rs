//! `doctor` and `setup`: what this machine can run, why not, and the exact fix; and preparing
//! what the default backend needs.

use crate::Engine;
use crate::backend;
use agentkernel_core::BackendKind;
use serde::Serialize;
use std::time::Duration;

/// One finding of `doctor`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
    /// What to do when it is not ok.
    pub fix: Option<String>,
}

fn check(name: &str, ok: bool, detail: impl Into<String>, fix: Option<&str>) -> Check {
    Check {
        name: name.to_string(),
        ok,
        detail: detail.into(),
        fix: if ok { None } else { fix.map(str::to_string) },
    }
}

/// What to do when backend `kind` cannot run sandboxes here: each backend's own remedy.
fn not_usable_fix(kind: BackendKind) -> &'static str {
    match kind {
        BackendKind::Native => {
            "see docs/security.md: run agentkernel as root on Linux with overlayfs and cgroups"
        }
        BackendKind::Docker => {
            "start the Docker engine, or point DOCKER_HOST at its socket (docs/container-backends.md)"
        }
        BackendKind::Podman => {
            "start the Podman service (`podman system service`), or point CONTAINER_HOST at its socket (docs/container-backends.md)"
        }
        BackendKind::Gvisor => {
            "start the Docker engine with a `runsc` runtime registered (`dockerd --add-runtime runsc=/usr/bin/runsc`), or point DOCKER_HOST at one (docs/container-backends.md)"
        }
        _ => "use one of the backends this build has: -B native, docker, podman or gvisor",
    }
}

/// What `doctor` found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub checks: Vec<Check>,
    /// The default backend can run sandboxes (`doctor` exits 1 when not).
    pub ready: bool,
}

impl Engine {
    /// Everything `doctor` reports, for the project (config file) in `cwd`.
    pub fn doctor(&self, cwd: &std::path::Path) -> Report {
        let mut checks = Vec::new();
        let mut ready = false;
        for kind in BackendKind::ALL {
            let default = if kind == BackendKind::Native {
                " (default)"
            } else {
                ""
            };
            let name = format!("backend {kind}{default}");
            checks.push(match backend::backend_for(kind, self.home()) {
                Ok(b) => {
                    let r = b.readiness();
                    if kind == BackendKind::Native {
                        ready = r.usable;
                    }
                    check(&name, r.usable, r.reason, Some(not_usable_fix(kind)))
                }
                Err(_) => Check {
                    name,
                    ok: false,
                    detail: "not in this build".to_string(),
                    fix: Some("use -B native".to_string()),
                },
            });
        }
        // Tried, not guessed: a throwaway namespace is routed to listeners as a sandbox's is.
        let egress = agentkernel_net::netns::probe();
        checks.push(check(
            "egress",
            egress.is_ok(),
            match &egress {
                Ok(()) => "networked sandboxes reach out through the egress proxy (nftables nat redirect in their namespace)".to_string(),
                Err(e) => format!("cannot route a network namespace to the egress proxy: {e}"),
            },
            Some("load the kernel's nf_tables nat support (`modprobe nft_redir nft_chain_nat`), run agentkernel as root, or run sandboxes with --no-network"),
        ));
        checks.extend(cgroup_attach_check());
        let home = self.home();
        let writable = std::fs::create_dir_all(home).is_ok() && tempfile_in(home).is_ok();
        checks.push(check(
            "state directory",
            writable,
            home.display().to_string(),
            Some("make it writable, or set AGENTKERNEL_HOME"),
        ));
        let images = self.list_images(false);
        checks.push(check(
            "image store",
            true,
            format!(
                "{} ({} pulled images)",
                home.join("images").display(),
                images.len()
            ),
            None,
        ));
        let req = crate::SpecRequest {
            cwd: cwd.to_path_buf(),
            caller: crate::resolve::Caller::Local,
            ..Default::default()
        };
        match crate::resolve::load_config(home, &req)
            .and_then(|c| crate::registry_settings(Some(&c)))
        {
            Ok(settings) => {
                for (label, addr) in settings.docker_hub_sources() {
                    checks.push(registry_check(&label, &addr));
                }
            }
            Err(e) => checks.push(check(
                "configuration",
                false,
                e.to_string(),
                Some("fix the file it names"),
            )),
        }
        Report { checks, ready }
    }

    /// Prepares what the default backend needs: the state directory and the `host` image
    /// (the native backend needs no package of the system's since the egress proxy replaced
    /// pasta). Returns what it did.
    pub fn setup(&self) -> crate::Result<Vec<String>> {
        let mut done = Vec::new();
        std::fs::create_dir_all(self.home()).map_err(crate::EngineError::io(format!(
            "create {}",
            self.home().display()
        )))?;
        self.images_for(None)?
            .resolve(&agentkernel_core::ImageRef::Host)?;
        done.push(format!(
            "prepared the host image in {}",
            self.home().join("images/host").display()
        ));
        Ok(done)
    }
}

/// Whether a registry answers: a TCP connection within three seconds; nothing is downloaded.
/// Joining a cgroup (every `exec`, every sandbox boot) takes the kernel's threadgroup rwsem for
/// writing; after a quiet spell that first waits for an RCU grace period, 6-15 ms measured
/// here, unless the cgroup2 root is mounted with `favordynmods` (Linux 6.0+), which moves the
/// cost to forks and exits host-wide. Reported, never changed: it is the host's choice.
fn cgroup_attach_check() -> Option<Check> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    let fields: Vec<&str> = mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.get(2) == Some(&"cgroup2"))?;
    let (root, options) = (fields.get(1)?, fields.get(3)?);
    let favored = options.split(',').any(|o| o == "favordynmods");
    Some(check(
        "cgroup attach latency",
        favored,
        if favored {
            "favordynmods: joining a sandbox's cgroups stays fast after idle".to_string()
        } else {
            "the first cgroup join after a quiet spell waits for an RCU grace period (6-15 ms measured per run or exec)".to_string()
        },
        Some(&format!(
            "optional, host-wide: `mount -o remount,favordynmods {root}` (forks and exits elsewhere get a little slower)"
        )),
    ))
}

fn registry_check(label: &str, addr: &str) -> Check {
    let name = if label == "docker.io" {
        "registry docker.io".to_string()
    } else {
        format!("registry mirror {label}")
    };
    let reachable = std::net::ToSocketAddrs::to_socket_addrs(addr)
        .ok()
        .and_then(|mut addrs| addrs.next())
        .is_some_and(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(3)).is_ok());
    check(
        &name,
        reachable,
        if reachable {
            format!("{addr} answers")
        } else {
            format!("{addr} does not answer")
        },
        Some(
            "set AGENTKERNEL_REGISTRY_MIRROR (or [images] mirrors) to a reachable registry, or use --image host or a local directory",
        ),
    )
}

fn tempfile_in(dir: &std::path::Path) -> std::io::Result<()> {
    let probe = dir.join(format!(".doctor-{}", std::process::id()));
    std::fs::write(&probe, b"")?;
    std::fs::remove_file(probe)
}
