//! What the machine has: the memory available for a budget, and this process's peak.

/// 80% of the memory available now (`MemAvailable`), or 8 GB where that cannot be read.
pub(crate) fn default_budget() -> u64 {
    let avail = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find(|l| l.starts_with("MemAvailable:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
    });
    avail.map_or(8_000_000_000, |kb| kb * 1024 / 10 * 8)
}

/// The peak resident set size of this process in bytes (Linux `VmHWM`).
pub(crate) fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
