//! CUDA backend tests: kernel compilation (no GPU needed) and CPU parity (GPU only).
//!
//! Parity tests skip, printing why, when no GPU is usable; they never fail a GPU-less run.
//! The compile test needs NVRTC; `NST_REQUIRE_NVRTC=1` (set by CI) makes its absence a failure.
#![allow(clippy::print_stderr)]

mod parity;

#[test]
fn every_kernel_compiles_with_nvrtc() {
    if let Err(e) = nst_cuda::probe::nvrtc() {
        assert!(
            std::env::var_os("NST_REQUIRE_NVRTC").is_none(),
            "NVRTC is required here: {e}"
        );
        eprintln!("SKIP: {e}");
        return;
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
fn a_broken_kernel_reports_the_nvrtc_log() {
    if nst_cuda::probe::nvrtc().is_err() {
        eprintln!("SKIP: NVRTC not found");
        return;
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
