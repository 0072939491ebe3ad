//! The host's memory as the operating system reports it (Linux `/proc`): what is available
//! now, for a default memory budget, and this process's peak, for reports and benchmarks.

/// The memory available now (`MemAvailable`), in bytes; `None` where it cannot be read.
pub fn available_memory() -> Option<u64> {
    match memory() {
        nst_tensor::MemoryKind::Host { available } if available > 0 => Some(available),
        _ => None,
    }
}

/// The host's memory as a backend reports it: what is available now (0 where it cannot be
/// read; the rule is nst-tensor's, which every backend on host memory shares).
pub fn memory() -> nst_tensor::MemoryKind {
    nst_tensor::MemoryKind::host_now()
}

/// The machine's memory (`MemTotal`), in bytes; `None` where it cannot be read.
pub fn total_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    kib_field(&meminfo, "MemTotal:")
}

/// The peak resident set size of this process (`VmHWM`), in bytes; `None` where it cannot be
/// read. Reports show it in MB of 10⁶ bytes, like every other size nst prints.
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    kib_field(&status, "VmHWM:")
}

/// The value of a `Key:   123 kB` line, in bytes.
fn kib_field(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_read_in_bytes() {
        let text = "VmPeak:\t  100 kB\nVmHWM:\t    2048 kB\n";
        assert_eq!(kib_field(text, "VmHWM:"), Some(2048 * 1024));
        assert_eq!(kib_field(text, "VmRSS:"), None);
        assert_eq!(kib_field("VmHWM: lots kB", "VmHWM:"), None);
        #[cfg(target_os = "linux")]
        {
            let peak = peak_rss().unwrap();
            // This test process holds at least its own code.
            assert!(peak > 1_000_000, "{peak}");
            assert!(available_memory().unwrap() > 0);
        }
    }
}
