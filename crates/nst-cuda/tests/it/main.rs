//! CUDA backend tests: kernel compilation (no GPU needed) and CPU parity (GPU only).
//!
//! The host test compiles the kernels' indexing with gcc and runs it on the CPU.
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

/// Every kernel compiled as C by gcc and run on the host against direct computations
/// (`tests/host/harness.c`): the banded im2col/col2im, the batched dot products and
/// combinations, the projection, bias + ReLU, the reductions (shared-memory trees with 256
/// threads per block, as an OpenMP team whose barrier is `__syncthreads`), data movement,
/// pooling with ties, and the elementwise ops. Their indexing and block arithmetic are
/// checked without a GPU.
#[test]
fn kernels_run_on_the_host() {
    let dir = std::env::temp_dir().join(format!("nst-cuda-host-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut header = String::new();
    for (_, src, _) in nst_cuda::kernels::SOURCES {
        header.push_str(&src.replace("extern \"C\" ", ""));
    }
    std::fs::write(dir.join("kernels.h"), header).unwrap();
    let harness = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/host/harness.c");
    let exe = dir.join("harness");
    let cc = std::process::Command::new("gcc")
        .args(["-O1", "-std=c11", "-fopenmp", "-Wall", "-Werror", "-I"])
        .arg(&dir)
        .arg(harness)
        .args(["-lm", "-o"])
        .arg(&exe)
        .output()
        .unwrap_or_else(|e| panic!("gcc is required for this test: {e}"));
    assert!(
        cc.status.success(),
        "gcc: {}",
        String::from_utf8_lossy(&cc.stderr)
    );
    // 256 threads per block on a few cores: waiting threads sleep instead of spinning.
    let run = std::process::Command::new(&exe)
        .env("OMP_WAIT_POLICY", "passive")
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(String::from_utf8_lossy(&run.stdout).contains("all kernel checks passed"));
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
