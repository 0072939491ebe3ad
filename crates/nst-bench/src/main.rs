//! Benchmarks: `nst-bench conv | features | render` (see `cargo xtask help`).
#![allow(clippy::print_stdout)]

use anyhow::{bail, Context, Result};
use nst_cpu::Cpu;
use nst_tensor::Tensor;
use std::time::Instant;

mod phases;
mod quality;
mod tiled;
mod time_to_image;

/// The machine's memory in bytes (`MemTotal`).
pub(crate) fn total_memory() -> Option<f64> {
    nst_cpu::host::total_memory().map(|b| b as f64)
}

/// The CPU's model name and whether it has AVX-512 (`/proc/cpuinfo`).
pub(crate) fn cpu_name() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let name = info
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("unknown CPU".to_string(), |s| s.trim().to_string());
    let avx512 = info.contains(" avx512f");
    format!(
        "{name} ({})",
        if avx512 {
            "AVX-512"
        } else {
            "AVX2, no AVX-512"
        }
    )
}

/// Median wall time of `reps` runs of `f`, after one warm-up run.
fn time<T>(reps: usize, mut f: impl FnMut() -> Result<T>) -> Result<f64> {
    f()?;
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        std::hint::black_box(f()?);
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

fn filled(be: &Cpu, dims: &[usize], seed: u32) -> Result<Tensor<Cpu>> {
    let n: usize = dims.iter().product();
    let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
    let data: Vec<f32> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32) - 0.5
        })
        .collect();
    Ok(Tensor::from_f32(be, &data, dims.to_vec())?)
}

/// GFLOP/s of a large square f32 GEMM on this backend: the practical ceiling.
fn gemm_ceiling(be: &Cpu) -> Result<f64> {
    let n = 2048;
    let a = filled(be, &[n, n], 1)?;
    let b = filled(be, &[n, n], 2)?;
    let t = time(5, || Ok(a.matmul(&b)?))?;
    Ok(2.0 * (n * n * n) as f64 / t / 1e9)
}

fn bench_conv(threads: usize, size: usize) -> Result<()> {
    let be = Cpu::new(threads);
    let ceiling = gemm_ceiling(&be)?;
    println!(
        "conv benchmark: {size}x{size} input, {} threads, f32; GEMM ceiling (2048² f32) {ceiling:.0} GFLOP/s",
        be.threads()
    );
    println!("GFLOP/s counts the direct method's FLOPs, so Winograd can pass 100% of the ceiling");
    println!(
        "{:<8} {:>5} {:>5} {:>9} {:>9} {:>10} {:>9} {:>6} {:>10} {:>9} {:>6}",
        "layer",
        "cin",
        "cout",
        "HxW",
        "method",
        "fwd ms",
        "GFLOP/s",
        "%ceil",
        "bwd-in ms",
        "GFLOP/s",
        "%ceil"
    );
    // Distinct VGG19 conv shapes: (name, cin, cout, spatial divisor).
    let layers = [
        ("conv1_1", 3, 64, 1),
        ("conv1_2", 64, 64, 1),
        ("conv2_1", 64, 128, 2),
        ("conv2_2", 128, 128, 2),
        ("conv3_1", 128, 256, 4),
        ("conv3_2", 256, 256, 4),
        ("conv4_1", 256, 512, 8),
        ("conv4_2", 512, 512, 8),
        ("conv5_1", 512, 512, 16),
    ];
    let direct = be.clone().with_winograd(false);
    let fast = be
        .clone()
        .with_precision(nst_cpu::Precision::Fast)
        .with_products(products());
    let fast32 = fast.clone().with_products(nst_cpu::Products::F32);
    for (name, cin, cout, div) in layers {
        let hw = size / div;
        let mut methods: Vec<(&str, &Cpu)> = vec![("im2col", &direct)];
        if cin.min(cout) >= nst_cpu::WINOGRAD_MIN_CHANNELS {
            methods.extend([("winograd", &be), ("wino-fast", &fast)]);
            if fast.bf16_kernel().is_some() {
                methods.push(("fast-f32", &fast32));
            }
        }
        for &(method, be) in &methods {
            let x = filled(be, &[1, cin, hw, hw], 3)?;
            let w = filled(be, &[cout, cin, 3, 3], 4)?;
            let b = filled(be, &[cout], 5)?;
            let p = x.conv2d_params(&w, 1, 1)?;
            let dy = filled(be, &[1, cout, hw, hw], 6)?;
            let reps = if hw >= 256 { 3 } else { 7 };
            let fwd = time(reps, || Ok(x.conv2d(&w, Some(&b), 1, 1)?))?;
            let bwd = time(reps, || Ok(dy.conv2d_backward_input(&w, &p)?))?;
            let gf = p.flops() / 1e9;
            println!(
            "{name:<8} {cin:>5} {cout:>5} {:>9} {method:>9} {:>10.1} {:>9.0} {:>5.0}% {:>10.1} {:>9.0} {:>5.0}%",
            format!("{hw}x{hw}"),
            fwd * 1e3,
            gf / fwd,
            100.0 * gf / fwd / ceiling,
            bwd * 1e3,
            gf / bwd,
            100.0 * gf / bwd / ceiling
        );
        }
    }
    Ok(())
}

/// The peak resident set size of this process, in MB of 10⁶ bytes (as `nst estimate`, the JSON
/// log and the PyTorch scripts count them; this benchmark and the scripts used MiB before).
fn peak_rss_mb() -> Option<f64> {
    nst_cpu::host::peak_rss().map(|b| b as f64 / 1e6)
}

fn load_rgb(name: &str) -> Result<nst_style::Image> {
    let path = nst_testkit::image(name);
    let img = image::open(&path)
        .with_context(|| format!("opening {}", path.display()))?
        .into_rgb8();
    let (w, h) = (img.width() as usize, img.height() as usize);
    nst_style::Image::new(w, h, img.into_raw().into_iter().map(f32::from).collect())
        .context("empty image")
}

fn model<B: nst_tensor::Backend>(be: &B) -> Result<nst_vgg::Vgg<B>> {
    let path = nst_weights::locate(None);
    let bytes = std::fs::read(&path).with_context(|| {
        format!(
            "reading the weights {} (cargo xtask fetch-weights)",
            path.display()
        )
    })?;
    Ok(nst_vgg::Vgg::from_safetensors(be, &bytes)?)
}

/// One measurement in this process: prints `seconds peak_mb`.
fn measure(
    kind: &str,
    device: &str,
    threads: usize,
    size: usize,
    reps: usize,
    fast: bool,
) -> Result<()> {
    let precision = if fast {
        nst_cpu::Precision::Fast
    } else {
        nst_cpu::Precision::Default
    };
    match device {
        "cpu" => measure_on(
            &Cpu::new(threads)
                .with_precision(precision)
                .with_products(products()),
            kind,
            size,
            reps,
            &|| Ok(()),
            &|| peak_rss_mb().context("reading the peak RSS"),
        ),
        #[cfg(any(feature = "cuda", feature = "cuda-12"))]
        d if d.starts_with("cuda") => {
            let ordinal = d.strip_prefix("cuda:").map_or(Ok(0), str::parse)?;
            let g = nst_cuda::Cuda::open(
                ordinal,
                if fast {
                    nst_cuda::Precision::Fast
                } else {
                    nst_cuda::Precision::Default
                },
            )?;
            measure_on(&g, kind, size, reps, &|| Ok(g.synchronize()?), &|| {
                Ok(g.peak_memory()? as f64 / 1e6)
            })?;
            // What ran the convolutions, for the table's notes.
            println!("# {:?}", g.convolutions());
            for a in g.algorithms() {
                println!("# {a}");
            }
            Ok(())
        }
        d => bail!("device {d} is not available in this build"),
    }
}

fn measure_on<B: nst_tensor::Backend>(
    be: &B,
    kind: &str,
    size: usize,
    reps: usize,
    sync: &dyn Fn() -> Result<()>,
    peak_mb: &dyn Fn() -> Result<f64>,
) -> Result<()> {
    let vgg = model(be)?;
    let secs = match kind {
        "features" => {
            let img = load_rgb("tubingen.jpg")?.resize(size, size);
            let x = img.to_model(be, vgg.convention())?;
            let fx = nst_features::FeatureExtractor::new(&vgg, &["relu5_1"])?;
            time(reps, || {
                let f = fx.extract(&x)?;
                sync()?;
                Ok(f)
            })?
        }
        "render" | "gradient" => {
            let content = load_rgb("tubingen.jpg")?.resize(size, size);
            let style = load_rgb("starry_night.jpg")?.resize(size, size);
            let conv = vgg.convention();
            let obj = nst_style::Objective::new(
                &vgg,
                &nst_style::ObjectiveConfig::default(),
                &content.to_model(be, conv)?,
                &[style.to_model(be, conv)?],
                &[],
            )?;
            // The image and the optimizer's state stay on the device, as in `nst render`.
            let mut x = Tensor::from_f32(
                be,
                &conv.to_model(content.data(), size, size),
                [1, 3, size, size],
            )?;
            let mut opt = nst_optim::Lbfgs::new(Default::default());
            let mut f = |x: &Tensor<B>| -> Result<(f64, Tensor<B>)> {
                let e = obj.evaluate(x)?;
                Ok((e.total, e.grad))
            };
            use nst_optim::Optimizer;
            if kind == "gradient" {
                time(reps, || f(&x))?
            } else {
                time(reps, || opt.step(&mut x, &mut f))?
            }
        }
        other => bail!("unknown measurement {other}"),
    };
    sync()?;
    let peak = peak_mb()?;
    println!("{secs} {peak}");
    Ok(())
}

/// One measurement of nst in a fresh process (so that peak memory is per size): (seconds,
/// peak MB).
/// What `--precision fast`'s products compute in (`--products auto|f32|bf16`).
static PRODUCTS: std::sync::OnceLock<nst_cpu::Products> = std::sync::OnceLock::new();

fn products() -> nst_cpu::Products {
    PRODUCTS.get().copied().unwrap_or_default()
}

fn products_name() -> &'static str {
    match products() {
        nst_cpu::Products::Auto => "auto",
        nst_cpu::Products::F32 => "f32",
        nst_cpu::Products::Bf16 => "bf16",
    }
}

fn nst_measure(
    kind: &str,
    device: &str,
    threads: usize,
    size: usize,
    reps: usize,
    fast: bool,
) -> Result<(f64, f64)> {
    let exe = std::env::current_exe()?;
    let out = std::process::Command::new(&exe)
        .args(["--measure", kind, "--device", device])
        .args([
            "--threads",
            &threads.to_string(),
            "--size",
            &size.to_string(),
        ])
        .args(["--reps", &reps.to_string(), "--products", products_name()])
        .args(if fast {
            &["--precision", "fast"][..]
        } else {
            &[]
        })
        .output()?;
    if !out.status.success() {
        bail!(
            "measuring {kind} at {size}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8(out.stdout)?;
    let mut parts = text.lines().next().unwrap_or("").split_whitespace();
    let secs: f64 = parts.next().context("no time")?.parse()?;
    let mb: f64 = parts.next().context("no memory")?.parse()?;
    // Notes (`# …` lines: the convolution engine and algorithms) go to stderr, with the
    // precision they belong to.
    let notes: Vec<&str> = text.lines().filter(|l| l.starts_with("# ")).collect();
    if !notes.is_empty() {
        let mut err = std::io::stderr().lock();
        use std::io::Write;
        writeln!(err, "nst at {size}{}:", if fast { ", fast" } else { "" })?;
        for n in notes {
            writeln!(err, "  {n}")?;
        }
    }
    Ok((secs, mb))
}

/// Runs each size in a fresh process so that peak memory is per size. On CUDA against
/// PyTorch, both precisions side by side: nst strict f32 against PyTorch strict f32, and nst
/// `--precision fast` against PyTorch as users get it (TF32, `cudnn.benchmark`).
fn bench_sized(
    kind: &str,
    device: &str,
    threads: usize,
    sizes: &[usize],
    vs_pytorch: bool,
    fast: bool,
) -> Result<()> {
    let what = match kind {
        "features" => "inference pass to relu5_1",
        "gradient" => "objective and its gradient (no optimizer)",
        _ => "render iteration (objective + gradient + L-BFGS step)",
    };
    let threads_text = if threads == 0 {
        "all".to_string()
    } else {
        threads.to_string()
    };
    let gpu = device.starts_with("cuda");
    let both = gpu && vs_pytorch;
    // On a CPU without bf16 instructions PyTorch's bf16 autocast is emulated (minutes per
    // iteration), so nst's fast mode is held against PyTorch f32 there, as issue targets do.
    let torch_fast = if cpu_has_bf16() { "bf16" } else { "f32" };
    let precision = if both {
        "strict f32 against PyTorch strict f32, then nst --precision fast against PyTorch TF32 + cudnn.benchmark"
    } else if fast && torch_fast == "bf16" {
        "nst --precision fast against PyTorch bf16 autocast"
    } else if fast {
        "nst --precision fast against PyTorch f32 (this CPU has no bf16 instructions)"
    } else {
        "f32"
    };
    let kernel = Cpu::new(1)
        .with_precision(nst_cpu::Precision::Fast)
        .with_products(products())
        .bf16_kernel();
    let precision = match (fast && !gpu, kernel) {
        (true, Some(k)) => format!("{precision} (nst's products in bf16 on {k})"),
        (true, None) => format!("{precision} (nst's products in f32)"),
        _ => precision.to_string(),
    };
    println!("{what}, {precision}, {device}, {threads_text} threads (peak MB: process RSS on the CPU, GPU allocation on CUDA)");
    if both {
        println!(
            "{:>10} {:>9} {:>8} {:>9} {:>8} {:>7} {:>9} {:>8} {:>9} {:>8} {:>7}",
            "size",
            "nst s",
            "nst MB",
            "torch s",
            "torch MB",
            "ratio",
            "fast s",
            "fast MB",
            "tf32 s",
            "tf32 MB",
            "ratio"
        );
    } else if vs_pytorch {
        println!(
            "{:>10} {:>10} {:>12} {:>10} {:>12} {:>10}",
            "size", "nst s", "nst MB", "torch s", "torch MB", "nst/torch"
        );
    } else {
        println!("{:>10} {:>12} {:>14}", "size", "seconds", "peak MB");
    }
    for &size in sizes {
        let reps = if size >= 1024 { 2 } else { 3 };
        let label = format!("{size}x{size}");
        if both {
            let (s1, m1) = nst_measure(kind, device, threads, size, reps, false)?;
            let (t1, tm1) = pytorch(kind, device, threads, size, reps, "f32")?;
            let (s2, m2) = nst_measure(kind, device, threads, size, reps, true)?;
            let (t2, tm2) = pytorch(kind, device, threads, size, reps, "tf32")?;
            println!(
                "{label:>10} {s1:>9.4} {m1:>8.0} {t1:>9.4} {tm1:>8.0} {:>7.2} {s2:>9.4} {m2:>8.0} {t2:>9.4} {tm2:>8.0} {:>7.2}",
                s1 / t1,
                s2 / t2
            );
            continue;
        }
        let (secs, mb) = nst_measure(kind, device, threads, size, reps, fast)?;
        if vs_pytorch {
            let mode = if fast { torch_fast } else { "f32" };
            let (ts, tmb) = pytorch(kind, device, threads, size, reps, mode)?;
            println!(
                "{label:>10} {secs:>10.3} {mb:>12.0} {ts:>10.3} {tmb:>12.0} {:>10.2}",
                secs / ts
            );
        } else {
            println!("{label:>10} {secs:>12.3} {mb:>14.0}");
        }
    }
    Ok(())
}

/// Whether the CPU computes in bf16 natively (AVX512-BF16, which every CPU with AMX tiles
/// also has): where PyTorch's bf16 autocast is worth comparing with.
fn cpu_has_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Runs the PyTorch implementation of the same render iteration (`pytorch/render_bench.py`,
/// or `$NST_PYTORCH_SCRIPT`) with `$NST_PYTHON` (default `python3`): (seconds, peak MB).
fn pytorch(
    kind: &str,
    device: &str,
    threads: usize,
    size: usize,
    reps: usize,
    mode: &str,
) -> Result<(f64, f64)> {
    let script = std::env::var_os("NST_PYTORCH_SCRIPT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("pytorch")
                .join("render_bench.py")
        });
    let dir = std::env::temp_dir().join(format!("nst-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let write = |name: &str, img: &nst_style::Image| -> Result<std::path::PathBuf> {
        let p = dir.join(name);
        let bytes: Vec<u8> = img.data().iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(&p, bytes)?;
        Ok(p)
    };
    let c = write("content.f32", &load_rgb("tubingen.jpg")?.resize(size, size))?;
    let s = write(
        "style.f32",
        &load_rgb("starry_night.jpg")?.resize(size, size),
    )?;
    let weights = nst_weights::locate(None);
    let py = std::env::var("NST_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut cmd = std::process::Command::new(&py);
    cmd.arg(&script)
        .arg(&weights)
        .arg(&c)
        .arg(&s)
        .arg(size.to_string())
        .arg(reps.to_string())
        .arg(device)
        .arg(kind)
        .arg(mode);
    if threads > 0 {
        cmd.env("OMP_NUM_THREADS", threads.to_string());
    }
    let out = cmd
        .output()
        .with_context(|| format!("running {py} {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "the PyTorch benchmark failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8(out.stdout)?;
    let mut parts = text.split_whitespace();
    Ok((
        parts.next().context("no time")?.parse()?,
        parts.next().context("no memory")?.parse()?,
    ))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut threads = 0;
    let mut size = 512;
    let mut reps = 3;
    let mut sizes: Option<Vec<usize>> = None;
    let mut measure_kind = None;
    let mut device = "cpu".to_string();
    let mut vs_pytorch = false;
    let mut fast = false;
    let mut what = None;
    let mut budgets = vec!["3G".to_string(), "6G".to_string()];
    let mut iterations = 3;
    let mut ttl = time_to_image::Options {
        sizes: vec![384, 512],
        pairs: time_to_image::default_pairs(),
        reference_iterations: 1000,
        every: 25,
        threads: 0,
        fresh: false,
        references_only: false,
        render_args: Vec::new(),
        timing_iterations: 10,
    };
    let mut pairs_given = false;
    let mut losses: Vec<String> = ["gram", "w2", "nn"].map(String::from).to_vec();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--losses" => {
                losses = it
                    .next()
                    .context("--losses needs a value")?
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .collect()
            }
            "--threads" => threads = it.next().context("--threads needs a value")?.parse()?,
            "--size" => size = it.next().context("--size needs a value")?.parse()?,
            "--reps" => reps = it.next().context("--reps needs a value")?.parse()?,
            "--sizes" => {
                sizes = Some(
                    it.next()
                        .context("--sizes needs a value")?
                        .split(',')
                        .map(|s| s.trim().parse())
                        .collect::<Result<_, _>>()?,
                )
            }
            "--device" => device = it.next().context("--device needs a value")?.clone(),
            "--budgets" => {
                budgets = it
                    .next()
                    .context("--budgets needs a value")?
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .collect()
            }
            "--iterations" => {
                iterations = it.next().context("--iterations needs a value")?.parse()?
            }
            "--vs-pytorch" => vs_pytorch = true,
            "--pairs" => {
                pairs_given = true;
                ttl.pairs = it
                    .next()
                    .context("--pairs needs a value")?
                    .split(',')
                    .map(|p| {
                        p.split_once(':')
                            .map(|(c, s)| (c.trim().to_string(), s.trim().to_string()))
                            .with_context(|| format!("--pairs takes CONTENT:STYLE,…, got {p:?}"))
                    })
                    .collect::<Result<_>>()?
            }
            "--reference-iterations" => {
                ttl.reference_iterations = it
                    .next()
                    .context("--reference-iterations needs a value")?
                    .parse()?
            }
            "--every" => ttl.every = it.next().context("--every needs a value")?.parse()?,
            "--timing-iterations" => {
                ttl.timing_iterations = it
                    .next()
                    .context("--timing-iterations needs a value")?
                    .parse()?
            }
            "--fresh" => ttl.fresh = true,
            "--references-only" => ttl.references_only = true,
            "--" => {
                ttl.render_args = it.by_ref().cloned().collect();
            }
            "--precision" => match it.next().map(String::as_str) {
                Some("fast") => fast = true,
                Some("default") => fast = false,
                other => bail!("--precision takes default or fast, got {other:?}"),
            },
            "--products" => {
                let p = match it.next().map(String::as_str) {
                    Some("auto") => nst_cpu::Products::Auto,
                    Some("f32") => nst_cpu::Products::F32,
                    Some("bf16") => nst_cpu::Products::Bf16,
                    other => bail!("--products takes auto, f32 or bf16, got {other:?}"),
                };
                PRODUCTS.set(p).ok().context("--products given twice")?;
            }
            "--measure" => {
                measure_kind = Some(it.next().context("--measure needs a value")?.clone())
            }
            w if what.is_none() && !w.starts_with('-') => what = Some(w.to_string()),
            other => bail!("unknown argument {other:?}"),
        }
    }
    if let Some(kind) = measure_kind {
        return measure(&kind, &device, threads, size, reps, fast);
    }
    match what.as_deref() {
        Some("conv") => bench_conv(threads, size),
        Some("phases") => {
            let sizes = sizes.as_deref().unwrap_or(&[128, 256, 512]);
            phases::bench_phases(threads, sizes, iterations.max(5))
        }
        Some("features") => {
            let sizes = sizes.as_deref().unwrap_or(&[512, 1024]);
            bench_sized("features", &device, threads, sizes, false, fast)
        }
        Some(kind @ ("render" | "gradient")) => {
            let sizes = sizes.as_deref().unwrap_or(&[256, 512]);
            bench_sized(kind, &device, threads, sizes, vs_pytorch, fast)
        }
        Some("tiled") => {
            let sizes: Vec<(usize, usize)> = match &sizes {
                Some(s) => s.iter().map(|&s| (s, s)).collect(),
                None => vec![(1024, 1024), (2048, 2048), (3072, 2048), (4096, 4096)],
            };
            tiled::bench_tiled(&sizes, &budgets, iterations, threads)
        }
        Some("quality") => {
            let env = |k: &str| {
                std::env::var_os(k)
                    .map(std::path::PathBuf::from)
                    .with_context(|| format!("{k} is not set (run through `cargo xtask bench`)"))
            };
            let pairs = if pairs_given {
                ttl.pairs.clone()
            } else {
                quality::default_pairs()
            };
            let size = sizes.as_ref().and_then(|s| s.first().copied()).unwrap_or(512);
            quality::bench(
                &env("NST_BIN")?,
                &nst_testkit::images(),
                &env("NST_BENCH_DIR")?.join("quality"),
                &pairs,
                &losses,
                size,
                &ttl.render_args,
            )
        }
        Some("time-to-image") => {
            if let Some(s) = sizes {
                ttl.sizes = s;
            }
            ttl.threads = threads;
            anyhow::ensure!(ttl.every > 0, "--every must be positive");
            time_to_image::bench(&ttl)
        }
        _ => bail!("usage: nst-bench conv|features|phases|render|gradient|tiled|time-to-image|quality [--device cpu|cuda[:N]] [--threads N] [--size N] [--sizes A,B] [--vs-pytorch] [--precision default|fast] [--products auto|f32|bf16]"),
    }
}
