//! Benchmarks: `nst-bench conv` (per-layer convolution throughput against the GEMM ceiling).
#![allow(clippy::print_stdout)]

use anyhow::{bail, Context, Result};
use nst_cpu::Cpu;
use nst_tensor::Tensor;
use std::time::Instant;

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
    println!(
        "{:<8} {:>5} {:>5} {:>9} {:>10} {:>9} {:>6} {:>10} {:>9} {:>6}",
        "layer",
        "cin",
        "cout",
        "HxW",
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
    for (name, cin, cout, div) in layers {
        let hw = size / div;
        let x = filled(&be, &[1, cin, hw, hw], 3)?;
        let w = filled(&be, &[cout, cin, 3, 3], 4)?;
        let b = filled(&be, &[cout], 5)?;
        let p = x.conv2d_params(&w, 1, 1)?;
        let dy = filled(&be, &[1, cout, hw, hw], 6)?;
        let reps = if hw >= 256 { 3 } else { 7 };
        let fwd = time(reps, || Ok(x.conv2d(&w, Some(&b), 1, 1)?))?;
        let bwd = time(reps, || Ok(dy.conv2d_backward_input(&w, &p)?))?;
        let gf = p.flops() / 1e9;
        println!(
            "{name:<8} {cin:>5} {cout:>5} {:>9} {:>10.1} {:>9.0} {:>5.0}% {:>10.1} {:>9.0} {:>5.0}%",
            format!("{hw}x{hw}"),
            fwd * 1e3,
            gf / fwd,
            100.0 * gf / fwd / ceiling,
            bwd * 1e3,
            gf / bwd,
            100.0 * gf / bwd / ceiling
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut threads = 0;
    let mut size = 512;
    let mut what = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--threads" => threads = it.next().context("--threads needs a value")?.parse()?,
            "--size" => size = it.next().context("--size needs a value")?.parse()?,
            w if what.is_none() && !w.starts_with('-') => what = Some(w.to_string()),
            other => bail!("unknown argument {other:?}"),
        }
    }
    match what.as_deref() {
        Some("conv") => bench_conv(threads, size),
        _ => bail!("usage: nst-bench conv [--threads N] [--size N]"),
    }
}
