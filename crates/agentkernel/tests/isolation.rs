//! Security tests of the native backend: each tries an escape or an abuse and asserts it fails.
//! What every backend guarantees (host processes invisible, restrictive root read-only,
//! hostname, capabilities, memory and pids limits…) is in tests/conformance.rs; here is what
//! only the native backend has: the `host` image, /proc masking, loopback and metadata probes,
//! and the extra calls its seccomp filter refuses.

mod common;
use common::*;

#[test]
fn host_files_outside_the_image_are_unreadable() {
    let ak = Ak::new();
    let secret = ak.cwd.path().join("secret.txt");
    std::fs::write(&secret, "TOP SECRET\n").expect("write");
    let s = secret.to_str().expect("utf8");
    let out = ak.run(&[
        "run",
        "--image",
        "host",
        "--no-network",
        "--",
        "sh",
        "-c",
        &format!("cat {s} /etc/shadow /root/.bashrc 2>&1; ls /home /var 2>&1; ls /etc/ssh 2>&1; echo checked"),
    ]);
    // The probes ran (a sandbox that failed to start would also show no secret).
    assert!(
        out.stdout.ends_with("checked\n") && out.stdout.contains(s),
        "{out:?}"
    );
    assert!(!out.stdout.contains("TOP SECRET"), "{out:?}");
    assert!(!out.stdout.contains("root:"), "shadow readable: {out:?}");
    let bb = busybox_root();
    let out = ak.run(&[
        "run",
        "--image",
        bb.to_str().expect("utf8"),
        "--no-network",
        "--",
        "sh",
        "-c",
        &format!("cat {s} /etc/shadow /usr/bin/python3 2>&1; echo checked"),
    ]);
    assert!(
        out.stdout.ends_with("checked\n") && out.stdout.contains(s),
        "{out:?}"
    );
    assert!(!out.stdout.contains("TOP SECRET"), "{out:?}");
}

#[test]
fn host_image_is_read_only_and_complete_enough() {
    let ak = Ak::new();
    let out = ak.run(&[
        "run",
        "--image",
        "host",
        "--no-network",
        "--",
        "sh",
        "-c",
        "touch /usr/bin/evil; echo $?; touch /tmp/ok && echo tmp-ok",
    ]);
    assert!(out.stdout.contains("tmp-ok"), "{out:?}");
    assert!(
        !std::path::Path::new("/usr/bin/evil").exists(),
        "wrote into the host's /usr"
    );
    assert!(
        out.stdout.starts_with('1'),
        "writing to /usr must fail: {out:?}"
    );
}

/// A TCP listener on the host's loopback, accepting in the background.
fn host_listener() -> (std::net::TcpListener, u16) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    (l, port)
}

#[test]
fn no_network_in_restrictive_or_with_no_network() {
    let ak = Ak::new();
    let (_l, port) = host_listener();
    let probe = format!(
        "import socket,sys\nfor host in ['127.0.0.1', '10.0.2.2', '192.0.2.1']:\n    s=socket.socket(); s.settimeout(2)\n    try:\n        s.connect((host,{port})); print('CONNECTED', host); sys.exit(0)\n    except Exception as e:\n        print('refused', host, type(e).__name__)\nsys.exit(3)\n"
    );
    for flags in [&["-p", "restrictive"][..], &["--no-network"][..]] {
        let mut args = vec!["run", "--image", "host"];
        args.extend_from_slice(flags);
        args.extend_from_slice(&["--", "python3", "-c", &probe]);
        let out = ak.run(&args);
        assert_eq!(
            out.code, 3,
            "reached the host's loopback with {flags:?}: {out:?}"
        );
        let out2 = ak.run(
            &[
                &args[..args.len() - 4],
                &["--", "sh", "-c", "ls /sys/class/net"][..],
            ]
            .concat(),
        );
        assert_eq!(
            out2.stdout.trim(),
            "lo",
            "only loopback with {flags:?}: {out2:?}"
        );
    }
}

/// With network on, neither the sandbox's loopback nor any of the host's own addresses reach a
/// service on the host: the egress proxy refuses the host's addresses (and says so in the
/// audit log), so a service listening on all of the host's interfaces sees no connection.
#[test]
fn moderate_network_does_not_reach_host_loopback_services() {
    let ak = Ak::new();
    let listener = std::net::TcpListener::bind("0.0.0.0:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();
    let out = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .expect("ip addr");
    let host_ips: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .nth(3)?
                .split('/')
                .next()
                .map(str::to_string)
        })
        .collect();
    assert!(
        host_ips.len() >= 2,
        "expected loopback and another address: {host_ips:?}"
    );
    let probe = format!(
        "import socket\nfor h in {host_ips:?}:\n    s=socket.socket(); s.settimeout(3)\n    try:\n        s.connect((h,{port})); s.sendall(b'x'); print(h, 'answered', s.recv(64))\n    except Exception as e:\n        print(h, 'refused', type(e).__name__)\n"
    );
    let out = ak.run(&["run", "--image", "host", "--", "python3", "-c", &probe]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        matches!(listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "a host service was reached from the sandbox: {out:?}"
    );
    let audit = std::fs::read_to_string(ak.home.path().join("audit.jsonl")).expect("audit");
    for ip in host_ips.iter().filter(|ip| !ip.starts_with("127.")) {
        assert!(
            audit.lines().any(|l| l.contains("network_blocked")
                && l.contains(&format!("\"host\":\"{ip}\""))
                && l.contains("an address of the host itself")),
            "no refusal of {ip} audited: {audit}"
        );
    }
}

/// Cloud metadata, however it is written, gets the proxy's refusal. The CLI (whose thread is the
/// sandbox's proxy) runs in a network namespace of its own with no uplink, so that a proxy
/// that wrongly let it through could still send nothing off this machine.
#[test]
fn cloud_metadata_is_unreachable() {
    let ak = Ak::new();
    let probe = "import socket\nfor h in ['169.254.169.254', '2852039166', '0xa9fea9fe', '100.100.100.200']:\n    s=socket.create_connection((h,80), timeout=3)\n    s.sendall(b'GET / HTTP/1.1\\r\\nHost: ' + h.encode() + b'\\r\\n\\r\\n')\n    print(h, s.recv(200).split(b'\\r\\n')[0].decode())\n";
    let mut cmd = std::process::Command::new("unshare");
    cmd.arg("--net")
        .arg(bin())
        .args(["run", "--image", "host", "--", "python3", "-c", probe])
        .env("AGENTKERNEL_HOME", ak.home.path())
        .stdin(std::process::Stdio::null());
    let out: Out = cmd.output().expect("unshare").into();
    assert_eq!(out.code, 0, "{out:?}");
    for h in [
        "169.254.169.254",
        "2852039166",
        "0xa9fea9fe",
        "100.100.100.200",
    ] {
        assert!(
            out.stdout.contains(&format!("{h} HTTP/1.1 403 Forbidden")),
            "{h} was not refused by the proxy: {out:?}"
        );
    }
    let audit = std::fs::read_to_string(ak.home.path().join("audit.jsonl")).expect("audit");
    assert!(
        audit.contains("cloud metadata address"),
        "no metadata refusal audited: {audit}"
    );
}

#[test]
fn seccomp_denies_namespaces_mount_and_keyctl() {
    let ak = Ak::new();
    // unshare -U needs no capability, so only seccomp can stop it.
    let out = ak.run(&[
        "run",
        "--image",
        "host",
        "--no-network",
        "--",
        "unshare",
        "-U",
        "true",
    ]);
    assert_ne!(out.code, 0, "unshare -U succeeded: {out:?}");
    let script = "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\nfor name, nr, args in [('keyctl', 250, (0, 0, 0, 0)), ('unshare', 272, (0x10000000,)), ('mount', 165, (b'none', b'/tmp', b'tmpfs', 0, 0)), ('bpf', 321, (0, 0, 0)), ('process_vm_readv', 310, (os.getpid(), 0, 0, 0, 0, 0)), ('io_uring_setup', 425, (1, 0)), ('clone_newuser', 56, (0x10000000 | 17, 0, 0, 0, 0))]:\n    r = libc.syscall(nr, *args)\n    print(name, r, os.strerror(ctypes.get_errno()))\n";
    for profile in ["moderate", "restrictive"] {
        let out = ak.run(&[
            "run",
            "--image",
            "host",
            "--no-network",
            "-p",
            profile,
            "--",
            "python3",
            "-c",
            script,
        ]);
        assert_eq!(out.code, 0, "{out:?}");
        // Each of these succeeds or fails differently without the filter (process_vm_readv of
        // itself with no iovecs returns 0; io_uring_setup with a null pointer is EFAULT).
        for call in [
            "keyctl",
            "unshare",
            "mount",
            "bpf",
            "process_vm_readv",
            "io_uring_setup",
            "clone_newuser",
        ] {
            let line = out
                .stdout
                .lines()
                .find(|l| l.starts_with(call))
                .expect("line per call");
            assert!(
                line.contains(" -1 ") && line.contains("Operation not permitted"),
                "{profile}: {line}"
            );
        }
    }
}

/// `run` (whose command the sandbox's init starts) and `exec` (which joins a running sandbox from
/// outside) harden their commands alike: capabilities, no_new_privs, user, seccomp and Landlock.
#[test]
fn exec_is_hardened_like_run() {
    let ak = Ak::new();
    let probe = "grep -E '^(CapEff|CapBnd|CapPrm|NoNewPrivs|Seccomp):' /proc/self/status; id -u; \
        unshare -U true 2>/dev/null && echo unshare-allowed || echo unshare-denied; \
        mknod /tmp/null-copy c 1 3 2>/dev/null && echo mknod-allowed || echo mknod-denied";
    for profile in ["moderate", "restrictive"] {
        let ran = ak.ok(&[
            "run",
            "--image",
            "host",
            "--no-network",
            "-p",
            profile,
            "--",
            "sh",
            "-c",
            probe,
        ]);
        assert!(ran.stdout.contains("NoNewPrivs:\t1"), "{profile}: {ran:?}");
        assert!(ran.stdout.contains("Seccomp:\t2"), "{profile}: {ran:?}");
        assert!(ran.stdout.contains("unshare-denied"), "{profile}: {ran:?}");
        assert!(ran.stdout.contains("mknod-denied"), "{profile}: {ran:?}");
        let name = format!("hardened-{profile}");
        ak.ok(&[
            "create",
            &name,
            "--image",
            "host",
            "--no-network",
            "-p",
            profile,
        ]);
        ak.ok(&["start", &name]);
        let execd = ak.ok(&["exec", &name, "--", "sh", "-c", probe]);
        assert_eq!(ran.stdout, execd.stdout, "{profile}: run and exec differ");
        ak.ok(&["remove", &name]);
    }
}

#[test]
fn proc_sys_is_read_only_and_kernel_files_are_masked() {
    let ak = Ak::new();
    let out = ak.run(&[
        "run",
        "--no-network",
        "--",
        "sh",
        "-c",
        "echo evil > /proc/sys/kernel/domainname; echo rc=$?",
    ]);
    assert!(
        out.stdout.contains("rc=1") || out.stdout.contains("rc=2"),
        "{out:?}"
    );
    assert!(
        out.stderr.contains("Read-only file system"),
        "/proc/sys must be read-only: {out:?}"
    );
    // Kernels differ in which of these they have; every one the host has must read as empty.
    let masked: Vec<&str> = [
        "/proc/kcore",
        "/proc/keys",
        "/proc/timer_list",
        "/proc/kallsyms",
        "/proc/sched_debug",
    ]
    .into_iter()
    .filter(|p| std::path::Path::new(p).exists())
    .collect();
    assert!(
        !masked.is_empty(),
        "the host has none of the masked /proc files"
    );
    for path in masked {
        let out = ak.ok(&[
            "run",
            "--no-network",
            "--",
            "sh",
            "-c",
            &format!("wc -c < {path}"),
        ]);
        assert_eq!(
            out.stdout.trim(),
            "0",
            "{path} must read as empty in the sandbox: {out:?}"
        );
    }
}
