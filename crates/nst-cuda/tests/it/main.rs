//! CUDA backend tests: kernel compilation (no GPU needed) and CPU parity (GPU only).
//!
//! The parity tests are ignored unless asked for (`--include-ignored`, which the GPU bundle
//! and `cargo xtask test` on a machine with a GPU pass), and fail when asked for without a GPU.
//! The compile tests need NVRTC and fail without it (`cargo xtask test` installs it).
#![allow(clippy::print_stderr)]

mod parity;

#[test]
fn every_kernel_compiles_with_nvrtc() {
    if let Err(e) = nst_cuda::probe::nvrtc() {
        panic!("NVRTC is required here (`cargo xtask test` installs it): {e}");
    }
    let ptx = nst_cuda::kernels::compile_all().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ptx.len(), nst_cuda::kernels::SOURCES.len());
    for ((name, p), (_, _, kernels)) in ptx.iter().zip(nst_cuda::kernels::SOURCES) {
        let text = p.to_src();
        for k in kernels.iter() {
            assert!(
                text.contains(&format!(".entry {k}")),
                "{name} lacks kernel {k}"
            );
        }
    }
}

#[test]
fn every_kernel_compiles_for_each_gpu_architecture() {
    if let Err(e) = nst_cuda::probe::nvrtc() {
        panic!("NVRTC is required here (`cargo xtask test` installs it): {e}");
    }
    // Turing, Ampere, Ada, Hopper (the H200), Blackwell: what `Cuda::open` asks for.
    for arch in [(7, 5), (8, 0), (8, 9), (9, 0), (10, 0)] {
        let ptx = nst_cuda::kernels::compile_all_for(Some(arch))
            .unwrap_or_else(|e| panic!("{arch:?}: {e}"));
        let target = format!(".target sm_{}{}", arch.0, arch.1);
        for (name, p) in &ptx {
            assert!(
                p.to_src().contains(&target),
                "{name} for {arch:?} lacks {target}"
            );
        }
    }
}

#[test]
fn a_broken_kernel_reports_the_nvrtc_log() {
    if let Err(e) = nst_cuda::probe::nvrtc() {
        panic!("NVRTC is required here (`cargo xtask test` installs it): {e}");
    }
    let err = nst_cuda::kernels::compile(
        "broken.cu",
        "extern \"C\" __global__ void f() { undefined_name; }",
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("broken.cu") && err.contains("undefined_name"),
        "{err}"
    );
}
