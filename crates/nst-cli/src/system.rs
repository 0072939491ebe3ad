//! What the machine has: the memory available for a budget, and this process's peak.

/// The default memory budget of a backend that keeps its buffers in `memory`, and where it
/// comes from (the rule is nst-style's, which `RenderConfig::default()` uses too).
pub(crate) fn default_budget_for(memory: nst_tensor::MemoryKind) -> anyhow::Result<(u64, String)> {
    Ok(nst_style::memory::default_budget(memory)?)
}

pub(crate) use nst_cpu::host::peak_rss;
