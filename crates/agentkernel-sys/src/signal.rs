//! Signals to host processes. Every function takes a [`Pid`], which is never 0: a pid the
//! engine could not see (a container engine's process, reported as 0) cannot become
//! `kill(0, …)`, which would signal the caller's own process group. The group functions also
//! refuse pid 1: `kill(-1, …)` signals every process the caller may signal, and the host's
//! init leads no command's group.

use rustix::process::{Pid, Signal};

/// A pid as recorded (0 when the process is not visible on this host), as a [`Pid`] if it
/// names a process.
pub fn pid(raw: u32) -> Option<Pid> {
    i32::try_from(raw).ok().and_then(Pid::from_raw)
}

/// Sends signal number `sig` to the process group led by `leader`. Unknown signal numbers and
/// groups that are gone are ignored: the caller is relaying a request, not asserting a state.
pub fn signal_group(leader: Pid, sig: i32) {
    if leader == Pid::INIT {
        return;
    }
    if let Some(sig) = Signal::from_named_raw(sig) {
        let _ = rustix::process::kill_process_group(leader, sig);
    }
}

/// Kills the process group led by `leader`, and `leader` itself in case it left its group.
pub fn kill_group(leader: Pid) {
    if leader == Pid::INIT {
        return;
    }
    let _ = rustix::process::kill_process_group(leader, Signal::KILL);
    let _ = rustix::process::kill_process(leader, Signal::KILL);
}

/// Sends signal number `sig` to one process.
pub fn signal_process(target: Pid, sig: i32) {
    if let Some(sig) = Signal::from_named_raw(sig) {
        let _ = rustix::process::kill_process(target, sig);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_zero_and_overflow_name_no_process() {
        assert_eq!(pid(0), None);
        assert_eq!(pid(u32::MAX), None);
        assert_eq!(pid(42).map(Pid::as_raw_nonzero).map(|p| p.get()), Some(42));
    }

    #[test]
    fn pid_one_leads_no_group_to_signal() {
        // kill(-1, SIGKILL) would end every process this test may signal: nothing happens.
        kill_group(Pid::INIT);
        signal_group(Pid::INIT, 9);
    }

    #[test]
    fn a_group_kill_ends_the_whole_group() {
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 100 & sleep 100"])
            .process_group(0)
            .spawn()
            .expect("spawn sh");
        let leader = pid(child.id()).expect("a child has a pid");
        kill_group(leader);
        let status = child.wait().expect("wait");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
    }
}
