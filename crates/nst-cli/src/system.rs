//! What the machine has: the memory available for a budget, and this process's peak.

/// 80% of the memory available now (`MemAvailable`), or 8 GB where that cannot be read.
pub(crate) fn default_budget() -> u64 {
    nst_cpu::host::available_memory().map_or(8_000_000_000, |b| b / 10 * 8)
}

/// The default memory budget of a backend that keeps its buffers in `memory`, and where it
/// comes from: 80% of the host's memory available now, or 90% of a GPU's free memory.
pub(crate) fn default_budget_for(memory: nst_tensor::MemoryKind) -> anyhow::Result<(u64, String)> {
    use nst_style::memory::format_bytes;
    match memory {
        nst_tensor::MemoryKind::Host => Ok((
            default_budget(),
            "80% of the memory available now".to_string(),
        )),
        nst_tensor::MemoryKind::Device { free: 0, .. } => anyhow::bail!(
            "the GPU did not say how much of its memory is free: give a budget with --max-memory"
        ),
        nst_tensor::MemoryKind::Device { total, free } => Ok((
            free / 10 * 9,
            format!(
                "90% of the GPU's free memory ({} free of {})",
                format_bytes(free),
                format_bytes(total)
            ),
        )),
    }
}

pub(crate) use nst_cpu::host::peak_rss;

#[cfg(test)]
mod tests {
    use super::*;
    use nst_tensor::MemoryKind;

    #[test]
    fn the_default_budget_is_of_the_memory_the_backend_uses() {
        let (b, why) = default_budget_for(MemoryKind::Host).unwrap();
        assert_eq!(b, default_budget());
        assert!(why.contains("available"), "{why}");
        let gpu = MemoryKind::Device {
            total: 80_000_000_000,
            free: 10_000_000_000,
        };
        let (b, why) = default_budget_for(gpu).unwrap();
        assert_eq!(b, 9_000_000_000);
        assert!(
            why.contains("GPU") && why.contains("10.0 GB free of 80.0 GB"),
            "{why}"
        );
        let unknown = MemoryKind::Device { total: 0, free: 0 };
        let e = default_budget_for(unknown).unwrap_err().to_string();
        assert!(e.contains("--max-memory"), "{e}");
    }
}
