//! Bad input: one clear line, exit 125, and nothing half-made.

mod common;
use common::*;

fn assert_refused(ak: &Ak, args: &[&str], needle: &str) {
    let out = ak.run(args);
    assert_eq!(out.code, 125, "{args:?}: {out:?}");
    assert!(
        out.stderr.contains(needle),
        "{args:?}: expected {needle:?} in: {out:?}"
    );
    assert!(out.stdout.is_empty(), "{args:?}: {out:?}");
}

#[test]
fn bad_inputs_exit_125_with_a_clear_message() {
    let ak = Ak::new();
    assert_refused(
        &ak,
        &["exec", "ghost", "--", "true"],
        "no sandbox named \"ghost\"",
    );
    assert_refused(&ak, &["start", "ghost"], "agentkernel list");
    assert_refused(&ak, &["create", "../../x"], "invalid sandbox name");
    assert_refused(&ak, &["create", "-bad"], "");
    // An option-looking image is never taken as the image (nor as the command): `--image`
    // is left without its value (or the option is unknown); spelled as the value, the engine
    // refuses the reference.
    assert_refused(
        &ak,
        &["run", "--image", "--volume=/:/host", "--", "true"],
        "a value is required for '--image",
    );
    assert_refused(
        &ak,
        &["run", "--image", "--mount=/:/host", "--", "true"],
        "unexpected argument '--mount'",
    );
    assert_refused(
        &ak,
        &["run", "--image=--volume=/:/host", "--", "true"],
        "invalid image reference",
    );
    assert_refused(
        &ak,
        &["run", "--image", "/no/such/dir", "--", "true"],
        "/no/such/dir",
    );
    assert_refused(&ak, &["run"], "no command given");
    assert_refused(&ak, &["run", "-p", "lax", "--", "true"], "unknown profile");
    assert_refused(
        &ak,
        &["run", "-B", "vmware", "--", "true"],
        "unknown backend",
    );
    assert_refused(
        &ak,
        &["run", "-B", "kubernetes", "--", "true"],
        "not available",
    );
    // A container backend whose engine is not there says where it looked.
    let mut no_engine = Ak::new();
    no_engine.env.push((
        "DOCKER_HOST".to_string(),
        "unix:///nonexistent/docker.sock".to_string(),
    ));
    assert_refused(
        &no_engine,
        &["run", "-B", "docker", "--", "true"],
        "/nonexistent/docker.sock",
    );
    // An engine on another host cannot mount this host's paths: refused, not half-working.
    let mut remote = Ak::new();
    remote.env.push((
        "DOCKER_HOST".to_string(),
        "tcp://192.0.2.1:2375".to_string(),
    ));
    assert_refused(
        &remote,
        &["run", "-B", "docker", "--", "true"],
        "needs the engine on this machine",
    );
    assert_refused(
        &ak,
        &["run", "--ttl", "soon", "--keep", "--", "true"],
        "invalid duration",
    );
    // `-e NAME` alone is the shell's own value; a name that is empty is refused.
    assert_refused(&ak, &["run", "-e", "=novalue", "--", "true"], "KEY=VALUE");
    assert_refused(&ak, &["run", "-w", "relative", "--", "true"], "absolute");
    assert_refused(&ak, &["exec", "x"], "no command");
    assert_refused(&ak, &["frobnicate"], "frobnicate");
    std::fs::write(ak.cwd.path().join("agentkernel.toml"), "[sandbox\nname=1").expect("write");
    assert_refused(&ak, &["run", "--", "true"], "agentkernel.toml");
    std::fs::remove_file(ak.cwd.path().join("agentkernel.toml")).expect("rm");
    assert!(
        ak.list_json().is_empty(),
        "no sandbox may be left by refused commands"
    );
    assert!(
        !ak.home.path().join("sandboxes").exists()
            || std::fs::read_dir(ak.home.path().join("sandboxes"))
                .expect("dir")
                .next()
                .is_none()
    );
}

#[test]
fn name_taken_is_refused_and_the_first_sandbox_is_untouched() {
    let ak = Ak::new();
    ak.ok(&["create", "dup", "--no-network"]);
    ak.ok(&["start", "dup"]);
    ak.ok(&["exec", "dup", "--", "sh", "-c", "echo mine > /workspace/f"]);
    assert_refused(&ak, &["create", "dup"], "already exists");
    let out = ak.ok(&["exec", "dup", "--", "cat", "/workspace/f"]);
    assert_eq!(out.stdout, "mine\n");
    assert_eq!(ak.list_json().len(), 1);
    ak.ok(&["remove", "dup"]);
}

#[test]
fn failed_start_leaves_no_cgroup_or_mount() {
    let ak = Ak::new();
    let dir = ak.cwd.path().join("img");
    std::fs::create_dir(&dir).expect("mkdir");
    // An image whose /proc is a symlink to the host's root: setup must refuse it.
    std::os::unix::fs::symlink("/", dir.join("proc")).expect("symlink");
    let image = dir.to_str().expect("utf8");
    let out = ak.run(&["run", "--image", image, "--no-network", "--", "true"]);
    assert_eq!(out.code, 125, "{out:?}");
    assert!(out.stderr.contains("not a directory"), "{out:?}");
    // The same through start, where the sandbox's name says which cgroups would be its own.
    ak.ok(&["create", "badroot", "--image", image, "--no-network"]);
    let out = ak.run(&["start", "badroot"]);
    assert_eq!(out.code, 125, "{out:?}");
    assert_eq!(ak.status_of("badroot").as_deref(), Some("stopped"));
    let home = ak.home.path().to_str().expect("utf8").to_string();
    assert!(
        mounts_mentioning(&home).is_empty(),
        "{:?}",
        mounts_mentioning(&home)
    );
    assert!(
        cgroups_matching("badroot-").is_empty(),
        "{:?}",
        cgroups_matching("badroot-")
    );
    ak.ok(&["remove", "badroot"]);
}

#[test]
fn help_and_version_exit_zero() {
    let ak = Ak::new();
    let out = ak.run(&["--help"]);
    assert_eq!(out.code, 0);
    assert!(out.stdout.contains("run") && out.stdout.contains("exec"));
    let out = ak.run(&["--version"]);
    assert_eq!(out.code, 0);
    assert!(out.stdout.starts_with("agentkernel "));
}

/// A backend this build does not have is refused (125) with the backends it does have.
#[test]
fn a_backend_not_in_this_build_names_the_ones_that_are() {
    let ak = Ak::new();
    let out = ak.run(&["run", "-B", "firecracker", "--image", "host", "--", "true"]);
    assert_eq!(out.code, 125, "{out:?}");
    assert!(
        out.stderr.contains("not available in this build")
            && out
                .stderr
                .contains("native, docker, podman, gvisor, microvm"),
        "{out:?}"
    );
}
