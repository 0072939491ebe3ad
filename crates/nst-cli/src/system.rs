//! What the machine has: the memory available for a budget, and this process's peak.

/// The default memory budget of a backend that keeps its buffers in `memory`, and where it
/// comes from (the rule is nst-style's, which `RenderConfig::default()` uses too).
pub(crate) fn default_budget_for(memory: nst_tensor::MemoryKind) -> anyhow::Result<(u64, String)> {
    Ok(nst_style::memory::default_budget(memory)?)
}

pub(crate) use nst_cpu::host::peak_rss;

/// `nst devices`: one line per device `--device` can name.
#[allow(clippy::print_stdout)]
pub(crate) fn devices() -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let memory = match nst_tensor::MemoryKind::host_now() {
        nst_tensor::MemoryKind::Host { available } if available > 0 => {
            format!(", {} available", nst_tensor::format_bytes(available))
        }
        _ => String::new(),
    };
    println!("cpu  {cores} threads{memory}");
    #[cfg(any(feature = "cuda", feature = "cuda-12"))]
    match nst_cuda::Cuda::new(0) {
        Ok(g) => println!("cuda:0  {}", nst_tensor::BackendCore::name(&g)),
        Err(e) => println!("cuda  unavailable: {e}"),
    }
    #[cfg(not(any(feature = "cuda", feature = "cuda-12")))]
    println!("cuda  not in this build (rebuild with `--features cuda`)");
    #[cfg(feature = "wgpu")]
    match nst_wgpu::adapters() {
        Ok(list) => {
            for a in list {
                println!("{a}");
            }
        }
        Err(e) => println!("wgpu  unavailable: {e}"),
    }
    #[cfg(not(feature = "wgpu"))]
    println!("wgpu  not in this build (rebuild with `--features wgpu`)");
    Ok(())
}
