//! `doctor` and `setup`: what the machine can run, and the fix for what it cannot.

mod common;
use common::*;

fn checks(out: &Out) -> Vec<serde_json::Value> {
    serde_json::from_str(&out.stdout).expect("doctor --json is JSON")
}

#[test]
fn doctor_reports_backends_and_the_registry_with_fixes() {
    let mut ak = Ak::new();
    ak.env.push((
        "DOCKER_HOST".to_string(),
        "unix:///nonexistent/docker.sock".to_string(),
    ));
    let out = ak.ok(&["doctor", "--json"]);
    let list = checks(&out);
    assert_eq!(list[0]["name"], "backend native (default)");
    assert_eq!(list[0]["ok"], true, "{list:?}");
    let docker = list
        .iter()
        .find(|c| c["name"] == "backend docker")
        .expect("docker listed");
    assert_eq!(docker["ok"], false, "{docker:?}");
    let detail = docker["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("/nonexistent/docker.sock") && detail.contains("DOCKER_HOST"),
        "{docker:?}"
    );
    // Each backend's advice is its own: a missing Docker socket is not fixed with overlayfs.
    let fix = docker["fix"].as_str().unwrap_or_default();
    assert!(
        fix.contains("DOCKER_HOST") && !fix.contains("overlayfs") && !fix.contains("as root"),
        "{docker:?}"
    );
    // The cgroup attach latency says how the host's cgroup2 root is mounted, and the fix.
    let mounted_favoring = std::fs::read_to_string("/proc/self/mounts")
        .expect("mounts")
        .lines()
        .any(|l| l.contains(" cgroup2 ") && l.contains("favordynmods"));
    let attach = list
        .iter()
        .find(|c| c["name"] == "cgroup attach latency")
        .expect("cgroup attach check");
    assert_eq!(attach["ok"], mounted_favoring, "{attach}");
    if !mounted_favoring {
        assert!(
            attach["fix"]
                .as_str()
                .is_some_and(|f| f.contains("favordynmods")),
            "{attach}"
        );
    }
    let registry = list
        .iter()
        .find(|c| {
            c["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("registry mirror"))
        })
        .expect("mirror check");
    assert_eq!(
        registry["ok"], true,
        "the test registry answers: {registry}"
    );

    let out: Out = ak
        .cmd(&["doctor", "--json"])
        .env("AGENTKERNEL_REGISTRY_MIRROR", "http://127.0.0.1:1")
        .output()
        .expect("spawn")
        .into();
    assert_eq!(out.code, 0, "the default backend still works: {out:?}");
    let registry = checks(&out)
        .into_iter()
        .find(|c| c["name"] == "registry mirror http://127.0.0.1:1")
        .expect("mirror check");
    assert_eq!(registry["ok"], false);
    assert!(
        registry["fix"]
            .as_str()
            .is_some_and(|f| f.contains("AGENTKERNEL_REGISTRY_MIRROR")),
        "{registry}"
    );

    // The user config's [images] mirrors are checked too, in the order pulls try them.
    std::fs::write(
        ak.home.path().join("config.toml"),
        "[images]\nmirrors = [\"http://127.0.0.1:1\"]\n",
    )
    .expect("write");
    let out: Out = ak
        .cmd(&["doctor", "--json"])
        .env_remove("AGENTKERNEL_REGISTRY_MIRROR")
        .output()
        .expect("spawn")
        .into();
    let names: Vec<String> = checks(&out)
        .iter()
        .filter_map(|c| c["name"].as_str().map(str::to_string))
        .collect();
    let mirror = names
        .iter()
        .position(|n| n == "registry mirror http://127.0.0.1:1")
        .expect("config mirror checked");
    let hub = names
        .iter()
        .position(|n| n == "registry docker.io")
        .expect("Docker Hub checked");
    assert!(mirror < hub, "{names:?}");
}

#[test]
fn setup_prepares_the_host_image() {
    let ak = Ak::new();
    let out = ak.ok(&["setup", "--no-install"]);
    assert!(out.stdout.contains("prepared the host image"), "{out:?}");
    assert!(ak.home.path().join("images/host").is_dir());
    let out = ak.ok(&[
        "run",
        "--image",
        "host",
        "--no-network",
        "--",
        "python3",
        "-c",
        "print('after setup')",
    ]);
    assert_eq!(out.stdout, "after setup\n");
}

/// Every `[section] key` the docs name is one the config parser knows (a key it rejects would
/// stop the user's config at the first run).
#[test]
fn every_config_key_the_docs_name_is_known() {
    let ak = Ak::new();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut pages = vec![root.join("README.md")];
    for entry in std::fs::read_dir(root.join("docs"))
        .expect("docs")
        .flatten()
    {
        if entry.path().extension().is_some_and(|e| e == "md") {
            pages.push(entry.path());
        }
    }
    let mut keys = std::collections::BTreeSet::new();
    for page in &pages {
        let text = std::fs::read_to_string(page).expect("read a doc page");
        // `[section] key`
        for (i, _) in text.match_indices("`[") {
            let rest = &text[i + 2..];
            let Some((section, after)) = rest.split_once("] ") else {
                continue;
            };
            let key: String = after
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            if !key.is_empty()
                && !section.is_empty()
                && section.chars().all(|c| c.is_ascii_lowercase() || c == '_')
            {
                keys.insert((section.to_string(), key));
            }
        }
    }
    assert!(keys.len() > 10, "too few keys found: {keys:?}");
    let config = ak.home.path().join("config.toml");
    for (section, key) in &keys {
        // A value of the wrong type is fine here: only an unknown key is a finding.
        std::fs::write(&config, format!("[{section}]\n{key} = 0\n")).expect("write");
        let out = ak.run(&["doctor", "--json"]);
        assert!(
            !out.stdout.contains("unknown field") && !out.stderr.contains("unknown field"),
            "the docs name [{section}] {key}, which the config parser does not know: {out:?}"
        );
    }
}
