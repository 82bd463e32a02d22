//! What a sandbox init must not keep of the process that cloned it: the command line and
//! environment strings.
//!
//! The init is cloned without exec, so its memory starts as a copy of its parent's (the CLI,
//! the boot helper, the HTTP server), and the kernel shows that copy's argument and environment
//! strings as the init's `/proc/PID/cmdline` (readable by everyone, inside the sandbox too) and
//! `/proc/PID/environ`: a server's `serve --api-key …`, a CLI's tokens in its environment. The
//! kernel reads them from the ranges `[arg_start, arg_end)` and `[env_start, env_end)` of the
//! process's memory (fields 48–51 of /proc/PID/stat), which cannot be moved without
//! CAP_SYS_RESOURCE (`PR_SET_MM`). So the init overwrites its own copy of those ranges right
//! after the clone: the environment with zeros, the command line with `agentkernel-init` and
//! zeros. Nothing else of the init reads them (its commands get their environment from the
//! sandbox's spec), and it is a write to one or two pages, with no exec.

use std::sync::OnceLock;

/// The ranges of this process's argument and environment strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct StartStrings {
    args: (usize, usize),
    env: (usize, usize),
}

/// What an init's command line reads as.
const INIT_TITLE: &[u8] = b"agentkernel-init";

impl StartStrings {
    /// This process's ranges, read from /proc once (they never change).
    pub(super) fn of_this_process() -> Option<StartStrings> {
        static READ: OnceLock<Option<StartStrings>> = OnceLock::new();
        *READ.get_or_init(|| {
            std::fs::read_to_string("/proc/self/stat")
                .ok()
                .and_then(|stat| parse_stat(&stat))
        })
    }

    /// In a freshly cloned init: overwrites its copy of the strings (see the module doc).
    ///
    /// # Safety
    /// Only in a process whose memory holds these ranges mapped writable: this process, or a
    /// fork-like clone of it (the strings are on the initial stack, which stays mapped).
    pub(super) unsafe fn scrub(&self) {
        let (start, end) = self.args;
        let len = end.saturating_sub(start);
        // Keep a NUL at the end of the range: the kernel shows the range up to it as is.
        let title = &INIT_TITLE[..INIT_TITLE.len().min(len.saturating_sub(1))];
        // SAFETY: the caller guarantees the ranges are mapped and writable; volatile writes,
        // so that stores to memory nothing reads afterwards are not optimised away.
        unsafe {
            fill(start, end, title);
            let (start, end) = self.env;
            fill(start, end, b"");
        }
    }
}

/// Writes `prefix` then zeros over `[start, end)`.
///
/// # Safety
/// The range must be mapped and writable.
unsafe fn fill(start: usize, end: usize, prefix: &[u8]) {
    for (i, addr) in (start..end).enumerate() {
        let byte = prefix.get(i).copied().unwrap_or(0);
        // SAFETY: `addr` is inside the range the caller vouches for.
        unsafe { std::ptr::write_volatile(addr as *mut u8, byte) };
    }
}

/// Fields 48–51 (arg_start, arg_end, env_start, env_end) of a /proc/PID/stat line.
fn parse_stat(stat: &str) -> Option<StartStrings> {
    // Fields resume after the command name's last ')' with field 3.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<usize> = rest
        .split_whitespace()
        .skip(48 - 3)
        .take(4)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let [arg_start, arg_end, env_start, env_end] = fields[..] else {
        return None;
    };
    (arg_start <= arg_end && env_start <= env_end && arg_start != 0).then_some(StartStrings {
        args: (arg_start, arg_end),
        env: (env_start, env_end),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ranges_are_read_from_stat() {
        let stat = "42 (a b) c) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32 33 34 35 36 37 38 39 40 41 42 43 44 1000 1010 1010 1100 0\n";
        assert_eq!(
            parse_stat(stat),
            Some(StartStrings {
                args: (1000, 1010),
                env: (1010, 1100)
            })
        );
        assert_eq!(parse_stat("1 (x) S 1 2"), None);
    }

    #[test]
    fn this_process_has_its_strings_where_stat_says() {
        let s = StartStrings::of_this_process().expect("/proc/self/stat");
        let (start, end) = s.args;
        // SAFETY: the kernel says this range of our own memory holds our arguments.
        let args = unsafe { std::slice::from_raw_parts(start as *const u8, end - start) };
        let first = std::env::args_os().next().expect("argv[0]");
        assert!(args.starts_with(first.as_encoded_bytes()));
    }

    /// The scrub, in a forked child (it changes the process it runs in): its cmdline and
    /// environ read back as the title and nothing.
    #[test]
    fn a_scrubbed_child_shows_no_arguments_or_environment() {
        let s = StartStrings::of_this_process().expect("/proc/self/stat");
        let (r, w) = rustix::pipe::pipe().expect("pipe");
        // SAFETY: the child only scrubs, reads two files and writes to a pipe, then _exits;
        // a test harness thread holding a lock at the fork is not touched by it (the reads
        // allocate, which a held allocator lock could block: glibc's fork resets its locks).
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            // SAFETY: a fork of this process; see above.
            unsafe { s.scrub() };
            let cmdline = std::fs::read("/proc/self/cmdline").unwrap_or_default();
            let environ = std::fs::read("/proc/self/environ").unwrap_or_default();
            let ok = cmdline.starts_with(b"agentkernel-init\0")
                && cmdline[INIT_TITLE.len()..].iter().all(|b| *b == 0)
                && environ.iter().all(|b| *b == 0);
            let _ = rustix::io::write(&w, if ok { b"y" } else { b"n" });
            // SAFETY: ends the forked child without running the test harness's exit path.
            unsafe { libc::_exit(0) };
        }
        drop(w);
        let mut got = [0u8; 1];
        let n = rustix::io::read(&r, &mut got).expect("read");
        let mut status = 0;
        // SAFETY: reaping our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(&got[..n], b"y");
    }
}
