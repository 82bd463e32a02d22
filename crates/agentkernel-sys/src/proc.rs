//! Facts about host processes read from /proc.

/// Field 22 of /proc/PID/stat (start time in clock ticks after boot), or None if the process
/// is gone.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses; fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    // `rest` starts at field 3; field 22 is the 20th from there.
    rest.split(' ').nth(19)?.parse().ok()
}

/// Whether `pid` is still the process that started at `start`, and not a zombie.
pub fn is_alive(pid: u32, start: u64) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some(close) = stat.rfind(')') else {
        return false;
    };
    let mut fields = stat[close + 2..].split(' ');
    let state = fields.next().unwrap_or("Z");
    let started = fields.nth(18).and_then(|v| v.parse::<u64>().ok());
    state != "Z" && state != "X" && started == Some(start)
}

/// The network namespace of `pid`, opened only while `pid` is still the process that started
/// at `start`: checked after opening, so a pid reused in between is refused rather than
/// another process's namespace returned.
pub fn open_netns(pid: u32, start: u64) -> std::io::Result<std::fs::File> {
    let gone = || {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("the sandbox's init (pid {pid}) is not running"),
        )
    };
    if pid == 0 {
        return Err(gone());
    }
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).map_err(|_| gone())?;
    if !is_alive(pid, start) {
        return Err(gone());
    }
    Ok(ns)
}

/// The id of the current boot: a sandbox recorded under another boot id is certainly stopped.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive() {
        let pid = std::process::id();
        let st = start_time(pid).expect("own stat");
        assert!(is_alive(pid, st));
        assert!(!is_alive(pid, st + 1));
        assert!(start_time(u32::MAX).is_none());
    }
}
