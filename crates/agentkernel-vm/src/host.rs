//! Facts about the host that a guest's command line needs.

use std::fs;

use crate::VmError;

/// The host's TSC frequency in kHz, for the guest's `tsc_early_khz=`.
///
/// Under TCG a guest that calibrates its TSC against the emulated PIT gets a different answer
/// on every boot, and under CPU contention some boots hang; telling it the frequency avoids
/// both (measured, issue 18). The kernel's own figure (`tsc_freq_khz`, present on some kernels)
/// is preferred; otherwise the first `cpu MHz` of `/proc/cpuinfo`.
pub fn tsc_khz() -> Result<u64, VmError> {
    if let Ok(text) = fs::read_to_string("/sys/devices/system/cpu/cpu0/tsc_freq_khz")
        && let Ok(khz) = text.trim().parse::<u64>()
        && khz > 0
    {
        return Ok(khz);
    }
    let cpuinfo = fs::read_to_string("/proc/cpuinfo")
        .map_err(|e| VmError::TscUnknown(format!("reading /proc/cpuinfo: {e}")))?;
    khz_from_cpuinfo(&cpuinfo)
        .ok_or_else(|| VmError::TscUnknown("/proc/cpuinfo has no usable `cpu MHz` line".into()))
}

/// The first `cpu MHz : 2100.000` of a `/proc/cpuinfo` text, in kHz.
pub fn khz_from_cpuinfo(cpuinfo: &str) -> Option<u64> {
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        if key.trim() != "cpu MHz" {
            return None;
        }
        let mhz: f64 = value.trim().parse().ok()?;
        // 1 MHz to 100 GHz: anything else is not a clock.
        (1.0..100_000.0)
            .contains(&mhz)
            .then(|| (mhz * 1000.0).round() as u64)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_mhz_becomes_khz() {
        let text = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R)\ncpu MHz\t\t: 2100.000\n\
                    processor\t: 1\ncpu MHz\t\t: 800.5\n";
        assert_eq!(khz_from_cpuinfo(text), Some(2_100_000));
        assert_eq!(khz_from_cpuinfo("cpu MHz : 2399.9996\n"), Some(2_400_000));
        assert_eq!(khz_from_cpuinfo("cpu MHz : nan\n"), None);
        assert_eq!(khz_from_cpuinfo("BogoMIPS : 4200\n"), None);
    }

    #[test]
    fn this_host_has_a_tsc_frequency() {
        let khz = tsc_khz().expect("tsc_khz");
        assert!(khz >= 1000, "{khz}");
    }
}
