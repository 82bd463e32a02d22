//! `attach`: a real pty with resize, Ctrl-C and full-screen programs.

mod common;
use common::*;
use rustix::fd::OwnedFd;
use std::time::{Duration, Instant};

struct Session {
    master: OwnedFd,
    child: std::process::Child,
    seen: String,
    /// Every byte read from the terminal, in order.
    transcript: Vec<u8>,
}

impl Session {
    fn open(ak: &Ak, name: &str) -> Session {
        Session::open_with(ak, &["attach", name])
    }

    fn open_with(ak: &Ak, args: &[&str]) -> Session {
        let master =
            rustix::pty::openpt(rustix::pty::OpenptFlags::RDWR | rustix::pty::OpenptFlags::NOCTTY)
                .expect("openpt");
        rustix::pty::grantpt(&master).expect("grantpt");
        rustix::pty::unlockpt(&master).expect("unlockpt");
        let slave = rustix::pty::ioctl_tiocgptpeer(
            &master,
            rustix::pty::OpenptFlags::RDWR | rustix::pty::OpenptFlags::NOCTTY,
        )
        .expect("peer");
        set_size(&master, 30, 100);
        let slave_out = slave.try_clone().expect("dup");
        let slave_err = slave.try_clone().expect("dup");
        let mut cmd = ak.cmd(args);
        cmd.stdin(std::process::Stdio::from(slave))
            .stdout(std::process::Stdio::from(slave_out))
            .stderr(std::process::Stdio::from(slave_err));
        let child = cmd.spawn().expect("spawn attach");
        let flags = rustix::fs::fcntl_getfl(&master).expect("getfl");
        rustix::fs::fcntl_setfl(&master, flags | rustix::fs::OFlags::NONBLOCK).expect("setfl");
        Session {
            master,
            child,
            seen: String::new(),
            transcript: Vec::new(),
        }
    }

    fn send(&self, text: &str) {
        rustix::io::write(&self.master, text.as_bytes()).expect("write to pty");
    }

    fn expect(&mut self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut buf = [0u8; 4096];
        while !self.seen.contains(needle) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {needle:?}; saw:\n{}",
                self.seen
            );
            match rustix::io::read(&self.master, &mut buf) {
                Ok(n) if n > 0 => {
                    self.transcript.extend_from_slice(&buf[..n]);
                    self.seen.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        // Only what follows the match counts for the next expectation.
        let at = self.seen.find(needle).expect("found") + needle.len();
        self.seen.drain(..at);
    }
}

fn set_size(fd: &OwnedFd, rows: u16, cols: u16) {
    rustix::termios::tcsetwinsize(
        fd,
        rustix::termios::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        },
    )
    .expect("winsize");
}

#[test]
fn attach_gives_a_working_terminal() {
    terminal_session(Ak::new(), &[]);
}

/// The same session in a container of each engine (see tests/engines.rs).
#[test]
fn attach_gives_a_working_terminal_in_docker() {
    in_engine("docker");
}

#[test]
fn attach_gives_a_working_terminal_in_podman() {
    in_engine("podman");
}

#[test]
fn attach_gives_a_working_terminal_in_gvisor() {
    in_engine("gvisor");
}

fn in_engine(backend: &'static str) {
    let engine = common::engines::engine(backend);
    let mut ak = Ak::new();
    ak.env.push((engine.var.to_string(), engine.host));
    terminal_session(ak, &["-B", backend, "--image", "busybox:latest"]);
}

fn terminal_session(ak: Ak, create: &[&str]) {
    let mut args = vec!["create", "tty-box", "--no-network"];
    args.extend_from_slice(create);
    ak.ok(&args);
    ak.ok(&["start", "tty-box"]);
    let mut s = Session::open(&ak, "tty-box");
    s.send("echo ready-$((6*7))\n");
    s.expect("ready-42");
    // The command sees a real terminal inside the sandbox, with our size.
    // (isatty rather than tty(1): gVisor's /proc names no /dev/pts path for it)
    s.send("test -t 0 && test -t 1 && echo term-$((2+3)); stty size\n");
    s.expect("term-5");
    s.expect("30 100");
    // Resize passes through.
    set_size(&s.master, 40, 120);
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_raw(s.child.id() as i32).expect("pid"),
        rustix::process::Signal::WINCH,
    );
    std::thread::sleep(Duration::from_millis(300));
    s.send("stty size\n");
    s.expect("40 120");
    // Ctrl-C interrupts the foreground program, not the session.
    s.send("sleep 100; echo slept\n");
    std::thread::sleep(Duration::from_millis(500));
    s.send("\x03");
    s.send("echo after-$((1+1))\n");
    s.expect("after-2");
    assert!(!s.seen.contains("slept"));
    // A full-screen editor: raw keys, Escape and its own screen drawing.
    s.send("busybox vi /tmp/edited\n");
    s.expect("/tmp/edited");
    std::thread::sleep(Duration::from_millis(300));
    s.send("ihello from vi\x1b");
    std::thread::sleep(Duration::from_millis(200));
    s.send(":wq\r");
    s.send("echo saved: $(cat /tmp/edited)\n");
    s.expect("saved: hello from vi");
    s.send("exit 3\n");
    let status = s.child.wait().expect("wait");
    assert_eq!(status.code(), Some(3));
    let audit = ak
        .ok(&["audit", "list", "--sandbox", "tty-box", "--json"])
        .stdout;
    assert!(audit.contains("session_attached"));
    ak.ok(&["remove", "tty-box"]);
}

/// An option `attach` does not know is refused before the terminal is touched: the terminal
/// stays in its cooked mode and no session is recorded.
#[test]
fn attach_refuses_unknown_options_before_touching_the_terminal() {
    let ak = Ak::new();
    ak.ok(&["create", "att", "--image", "host", "--no-network"]);
    ak.ok(&["start", "att"]);
    let master =
        rustix::pty::openpt(rustix::pty::OpenptFlags::RDWR | rustix::pty::OpenptFlags::NOCTTY)
            .expect("openpt");
    rustix::pty::grantpt(&master).expect("grantpt");
    rustix::pty::unlockpt(&master).expect("unlockpt");
    let slave = rustix::pty::ioctl_tiocgptpeer(
        &master,
        rustix::pty::OpenptFlags::RDWR | rustix::pty::OpenptFlags::NOCTTY,
    )
    .expect("peer");
    let before = rustix::termios::tcgetattr(&slave).expect("tcgetattr");
    for args in [
        &["attach", "--bogus", "att"][..],
        &["attach", "--ssh", "att"],
        &["attach", "-x", "att", "sh"],
    ] {
        let out: Out = ak
            .cmd(args)
            .stdin(std::process::Stdio::from(slave.try_clone().expect("dup")))
            .output()
            .expect("spawn attach")
            .into();
        assert_eq!(out.code, 125, "{args:?}: {out:?}");
        assert!(
            out.stderr.contains("unexpected argument"),
            "{args:?}: {out:?}"
        );
        let after = rustix::termios::tcgetattr(&slave).expect("tcgetattr");
        assert_eq!(
            (after.local_modes, after.input_modes, after.output_modes),
            (before.local_modes, before.input_modes, before.output_modes),
            "{args:?} changed the terminal's modes"
        );
    }
    let audit = ak.ok(&["audit", "list", "--json"]).stdout;
    assert!(!audit.contains("session_attached"), "{audit}");
    ak.ok(&["remove", "att"]);
}

/// `attach --record` writes the session as asciicast v2 and `replay` plays back the same bytes
/// the terminal showed (multi-byte characters whole), with the recorded pauses unless
/// `--max-idle` caps them.
#[test]
fn a_recorded_session_replays_its_bytes() {
    let ak = Ak::new();
    ak.ok(&["create", "rec-box", "--no-network"]);
    ak.ok(&["start", "rec-box"]);
    let mut s = Session::open_with(&ak, &["attach", "--record", "rec-box"]);
    s.send("echo ready-$((6*7))\n");
    s.expect("ready-42");
    // A pause the recording keeps, then characters of two, three and four bytes.
    std::thread::sleep(Duration::from_millis(1500));
    s.send("echo \"h\u{e9}llo \u{2192} \u{1f980} $((3*3))\"\n");
    s.expect("h\u{e9}llo \u{2192} \u{1f980} 9");
    s.send("exit\n");
    let status = s.child.wait().expect("wait");
    assert_eq!(status.code(), Some(0));
    // What the terminal still holds of the session's end.
    let mut buf = [0u8; 4096];
    while let Ok(n) = rustix::io::read(&s.master, &mut buf)
        && n > 0
    {
        s.transcript.extend_from_slice(&buf[..n]);
    }
    let recordings: Vec<_> = std::fs::read_dir(ak.home.path().join("recordings"))
        .expect("recordings directory")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(recordings.len(), 1, "{recordings:?}");
    let cast = recordings[0].to_str().expect("utf-8 path");
    let header = std::fs::read_to_string(cast).expect("read the recording");
    assert!(header.starts_with("{\""), "{header}");
    assert!(header.contains("\"version\":2"), "{header}");

    let began = Instant::now();
    let played = ak
        .cmd(&["replay", cast])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("replay");
    let took = began.elapsed();
    assert!(played.status.success(), "{played:?}");
    let bytes = played.stdout;
    assert!(!bytes.is_empty());
    assert!(
        s.transcript
            .windows(bytes.len())
            .any(|w| w == bytes.as_slice()),
        "the replay is not what the terminal showed:\nreplay: {:?}\nterminal: {:?}",
        String::from_utf8_lossy(&bytes),
        String::from_utf8_lossy(&s.transcript)
    );
    let text = String::from_utf8(bytes).expect("the replay is UTF-8");
    assert!(text.contains("h\u{e9}llo \u{2192} \u{1f980} 9"), "{text}");
    assert!(took >= Duration::from_millis(1400), "played in {took:?}");

    // --max-idle caps the pause; --speed divides it.
    let began = Instant::now();
    let capped = ak.run(&["replay", cast, "--max-idle", "0.1", "--speed", "2"]);
    assert_eq!(capped.code, 0, "{capped:?}");
    // The 1.5 s pause plays in 50 ms: far from it even on a loaded machine.
    assert!(
        began.elapsed() < Duration::from_millis(1200),
        "{:?}",
        began.elapsed()
    );
    assert_eq!(capped.stdout, text);
    // Bad numbers and files that are not recordings are refused.
    let bad = ak.run(&["replay", cast, "--speed", "0"]);
    assert_eq!(bad.code, 125, "{bad:?}");
    assert!(bad.stderr.contains("--speed"), "{bad:?}");
    let not_cast = ak.cwd.path().join("notes.txt");
    std::fs::write(&not_cast, "hello\n").expect("write");
    let bad = ak.run(&["replay", not_cast.to_str().expect("utf-8")]);
    assert_eq!(bad.code, 125, "{bad:?}");
    assert!(bad.stderr.contains("asciicast"), "{bad:?}");
    let missing = ak.run(&["replay", "/nonexistent/x.cast"]);
    assert_eq!(missing.code, 125, "{missing:?}");
    ak.ok(&["remove", "rec-box"]);
}
