//! The hermetic container engines of `scripts/test-engines.sh` (see tests/engines.rs): where
//! each is, read from the environment or from the file the script writes. A missing one fails
//! the test with what to run; nothing passes silently.

/// One engine under test.
pub struct Engine {
    pub backend: &'static str,
    /// The variable agentkernel reads the engine's address from, and its value.
    pub var: &'static str,
    pub host: String,
}

fn engines_env(name: &str) -> Option<String> {
    if let Some(v) = std::env::var(name).ok().filter(|v| !v.is_empty()) {
        return Some(v);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".to_string());
    let file = std::fs::read_to_string(format!(
        "{home}/.cache/agentkernel-test-engines/engines.env"
    ))
    .ok()?;
    file.lines()
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| k.trim() == name)
        .map(|(_, v)| v.trim().trim_matches('"').to_string())
        .filter(|v| !v.is_empty())
}

fn need(name: &str, backend: &str) -> String {
    engines_env(name).unwrap_or_else(|| {
        panic!(
            "{name} is not set: start the test engines with `bash scripts/test-engines.sh start` (it writes ~/.cache/agentkernel-test-engines/engines.env); the {backend} tests need them"
        )
    })
}

pub fn engine(backend: &'static str) -> Engine {
    match backend {
        "docker" => Engine {
            backend,
            var: "DOCKER_HOST",
            host: need("AGENTKERNEL_TEST_DOCKER_HOST", backend),
        },
        "podman" => Engine {
            backend,
            var: "CONTAINER_HOST",
            host: need("AGENTKERNEL_TEST_PODMAN_HOST", backend),
        },
        "gvisor" => {
            let runtime = need("AGENTKERNEL_TEST_GVISOR_RUNTIME", backend);
            assert_eq!(
                runtime, "runsc",
                "AGENTKERNEL_TEST_GVISOR_RUNTIME names runsc"
            );
            Engine {
                backend,
                var: "DOCKER_HOST",
                host: need("AGENTKERNEL_TEST_DOCKER_HOST", backend),
            }
        }
        other => panic!("no engine {other}"),
    }
}

impl Engine {
    /// The `docker` client against this engine (tests only: the product speaks the API through
    /// bollard).
    pub fn docker(&self, args: &[&str]) -> super::Out {
        std::process::Command::new("docker")
            .arg("-H")
            .arg(&self.host)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run the docker client (apt-get install docker.io)")
            .into()
    }

    /// Containers agentkernel made for the state directory `home` (any state), by name.
    pub fn containers_of(&self, home: &std::path::Path) -> Vec<String> {
        let out = self.docker(&["ps", "-a", "--format", "{{.Names}} {{.Labels}}"]);
        assert_eq!(out.code, 0, "{out:?}");
        let home = std::fs::canonicalize(home).expect("home");
        let hash = {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(home.as_os_str().as_encoded_bytes()))[..16].to_string()
        };
        out.stdout
            .lines()
            .filter(|l| l.contains(&format!("agentkernel.home={hash}")))
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect()
    }
}
