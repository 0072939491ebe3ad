//! `nst-bench time-to-image`: how long `nst render` at its defaults takes to a finished image,
//! against the time PyTorch's classic recipe needs to reach the same score.
//!
//! Both sides are scored the same way, on what a user gets: an 8-bit image, evaluated by
//! `nst eval` at the output size. The PyTorch reference (`pytorch/classic.py`) saves its image
//! every `--every` iterations; its iterations to nst's score are interpolated between those
//! snapshots and multiplied by its seconds per iteration, measured in this run beside nst's
//! wall time. The reference trajectories do not depend on timing, so they are cached under
//! the work folder, keyed by everything they depend on (`--fresh` recomputes them).

#![allow(clippy::print_stderr)]

use anyhow::{bail, ensure, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// The options of the benchmark.
pub(crate) struct Options {
    pub sizes: Vec<usize>,
    /// (content, style) file names in `$NST_IMAGES`.
    pub pairs: Vec<(String, String)>,
    pub reference_iterations: usize,
    pub every: usize,
    pub threads: usize,
    pub fresh: bool,
    /// Compute (and cache) the PyTorch trajectories and their scores only.
    pub references_only: bool,
    /// Extra `nst render` arguments (after the defaults), e.g. to measure a lever.
    pub render_args: Vec<String>,
    /// Iterations of the PyTorch timing run.
    pub timing_iterations: usize,
}

/// The default pairs: three photos, each with a different painting.
pub(crate) fn default_pairs() -> Vec<(String, String)> {
    [
        ("tubingen.jpg", "starry_night.jpg"),
        ("golden_gate.jpg", "the_scream.jpg"),
        ("hoovertowernight.jpg", "woman-with-hat-matisse.jpg"),
    ]
    .iter()
    .map(|(c, s)| (c.to_string(), s.to_string()))
    .collect()
}

fn stem(name: &str) -> &str {
    Path::new(name)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or(name)
}

/// FNV-1a over byte strings: a cache key, not a checksum against tampering.
fn key(parts: &[&[u8]]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in p.iter().chain(&[0xff]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// An image rounded to 8 bits, saved as PNG and as the raw file `classic.py` reads.
fn write_inputs(img: &nst_style::Image, png: &Path, raw: &Path) -> Result<Vec<u8>> {
    let bytes: Vec<u8> = img
        .data()
        .iter()
        .map(|v| v.round().clamp(0.0, 255.0) as u8)
        .collect();
    let (w, h) = (img.width() as u32, img.height() as u32);
    image::RgbImage::from_raw(w, h, bytes.clone())
        .context("an image buffer of the wrong size")?
        .save(png)
        .with_context(|| format!("writing {}", png.display()))?;
    let mut out = format!("{w} {h}\n").into_bytes();
    out.extend_from_slice(&bytes);
    std::fs::write(raw, &out).with_context(|| format!("writing {}", raw.display()))?;
    Ok(out)
}

/// A raw snapshot of `classic.py` as PNG.
fn raw_to_png(raw: &Path, png: &Path) -> Result<()> {
    let bytes = std::fs::read(raw)?;
    let nl = bytes
        .iter()
        .position(|&b| b == b'\n')
        .context("no header")?;
    let head = std::str::from_utf8(&bytes[..nl])?;
    let mut it = head.split_whitespace();
    let w: u32 = it.next().context("no width")?.parse()?;
    let h: u32 = it.next().context("no height")?.parse()?;
    image::RgbImage::from_raw(w, h, bytes[nl + 1..].to_vec())
        .context("a snapshot of the wrong size")?
        .save(png)?;
    Ok(())
}

struct Tools {
    nst: PathBuf,
    python: PathBuf,
    script: PathBuf,
    weights: String,
    threads: usize,
}

impl Tools {
    fn torch(&self) -> Command {
        let mut c = Command::new(&self.python);
        c.arg(&self.script);
        if self.threads > 0 {
            c.env("OMP_NUM_THREADS", self.threads.to_string());
        }
        c
    }

    fn nst(&self) -> Command {
        let mut c = Command::new(&self.nst);
        c.env("NST_WEIGHTS", &self.weights);
        c
    }

    /// The total of `nst eval` for `image`.
    fn score(&self, content: &Path, style: &Path, image: &Path, dir: &Path) -> Result<f64> {
        let grad = dir.join("eval-grad.safetensors");
        let mut c = self.nst();
        c.arg("eval")
            .arg("--content")
            .arg(content)
            .arg("--style")
            .arg(style)
            .arg("--image")
            .arg(image)
            .arg("--out")
            .arg(&grad);
        if self.threads > 0 {
            c.args(["--threads", &self.threads.to_string()]);
        }
        let out = run(c, "nst eval")?;
        let _ = std::fs::remove_file(&grad);
        let v: serde_json::Value = serde_json::from_str(out.trim()).context("nst eval output")?;
        v["total"].as_f64().context("no total in nst eval's output")
    }
}

fn run(mut c: Command, what: &str) -> Result<String> {
    let out = c.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// The reference trajectory's scores, `(iteration, score)`, computed or read from the cache.
fn reference(
    tools: &Tools,
    o: &Options,
    inputs: (&Path, &Path, &Path, &Path),
    dir: &Path,
) -> Result<Vec<(usize, f64)>> {
    let (cpng, spng, craw, sraw) = inputs;
    let done = dir.join("done");
    let scores_path = dir.join("scores.txt");
    if o.fresh && dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    if !done.exists() {
        std::fs::create_dir_all(dir)?;
        eprintln!(
            "  PyTorch classic recipe, {} iterations (snapshots every {}) into {}",
            o.reference_iterations,
            o.every,
            dir.display()
        );
        let mut c = tools.torch();
        c.arg("trajectory")
            .arg(&tools.weights)
            .arg(craw)
            .arg(sraw)
            .arg(o.reference_iterations.to_string())
            .arg(o.every.to_string())
            .arg(dir)
            .arg("0");
        run(c, "the PyTorch classic recipe")?;
    }
    if let Ok(text) = std::fs::read_to_string(&scores_path) {
        let parsed: Result<Vec<(usize, f64)>> = text
            .lines()
            .map(|l| {
                let mut p = l.split_whitespace();
                Ok((
                    p.next().context("iteration")?.parse()?,
                    p.next().context("score")?.parse()?,
                ))
            })
            .collect();
        if let Ok(v) = parsed {
            if !v.is_empty() {
                return Ok(v);
            }
        }
    }
    let mut snaps: Vec<(usize, PathBuf)> = std::fs::read_dir(dir)?
        .filter_map(|e| {
            let p = e.ok()?.path();
            let name = p.file_name()?.to_str()?;
            let it = name
                .strip_prefix("iter_")?
                .strip_suffix(".rgb")?
                .parse()
                .ok()?;
            Some((it, p))
        })
        .collect();
    snaps.sort();
    ensure!(!snaps.is_empty(), "no snapshots in {}", dir.display());
    eprintln!("  scoring {} PyTorch snapshots with nst eval", snaps.len());
    let mut scores = Vec::new();
    let png = dir.join("snapshot.png");
    for (it, raw) in snaps {
        raw_to_png(&raw, &png)?;
        scores.push((it, tools.score(cpng, spng, &png, dir)?));
    }
    let text: String = scores.iter().map(|(i, s)| format!("{i} {s:e}\n")).collect();
    std::fs::write(&scores_path, text)?;
    Ok(scores)
}

/// The first (interpolated) iteration at which the trajectory's score reaches `target`, or
/// `None` when it never does.
pub(crate) fn iterations_to(scores: &[(usize, f64)], target: f64) -> Option<f64> {
    let first = scores.first()?;
    if first.1 <= target {
        return Some(first.0 as f64);
    }
    scores.windows(2).find_map(|w| {
        let ((i0, s0), (i1, s1)) = (w[0], w[1]);
        (s1 <= target).then(|| {
            // Linear in the score between the two snapshots.
            let t = if s0 > s1 {
                (s0 - target) / (s0 - s1)
            } else {
                1.0
            };
            i0 as f64 + t * (i1 - i0) as f64
        })
    })
}

/// `side_by_side.png` in `dir`: nst's image, a gap, and the classic recipe's 500th iterate.
fn side_by_side(nst: &Path, classic_raw: &Path, dir: &Path) -> Result<()> {
    let classic = dir.join("classic500.png");
    raw_to_png(classic_raw, &classic)?;
    let a = image::open(nst)?.to_rgb8();
    let b = image::open(&classic)?.to_rgb8();
    ensure!(
        a.dimensions() == b.dimensions(),
        "the two renders differ in size"
    );
    let (w, h) = a.dimensions();
    let gap = 8;
    let mut out = image::RgbImage::from_pixel(2 * w + gap, h, image::Rgb([255, 255, 255]));
    image::imageops::replace(&mut out, &a, 0, 0);
    image::imageops::replace(&mut out, &b, i64::from(w + gap), 0);
    out.save(dir.join("side_by_side.png"))?;
    Ok(())
}

/// One row of the table.
struct Row {
    pair: String,
    size: (usize, usize),
    nst_s: f64,
    nst_score: f64,
    torch_s_per_it: f64,
    classic500: Option<f64>,
    torch_its: Option<f64>,
}

pub(crate) fn bench(o: &Options) -> Result<()> {
    let tools = Tools {
        nst: PathBuf::from(std::env::var_os("NST_BIN").context("NST_BIN is not set")?),
        python: std::env::var_os("NST_PYTHON")
            .map_or_else(|| PathBuf::from("python3"), PathBuf::from),
        script: Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("pytorch")
            .join("classic.py"),
        weights: nst_weights::locate(None)
            .to_str()
            .context("the weights' path is not UTF-8")?
            .to_string(),
        threads: o.threads,
    };
    let work = std::env::var_os("NST_BENCH_DIR").map_or_else(
        || std::env::temp_dir().join("nst-time-to-image"),
        PathBuf::from,
    );
    std::fs::create_dir_all(&work)?;
    let script_bytes = std::fs::read(&tools.script)?;
    let net_bytes = std::fs::read(tools.script.with_file_name("render_bench.py"))?;
    let mut rows = Vec::new();
    for (c, s) in &o.pairs {
        let content = crate::load_rgb(c)?;
        let style = crate::load_rgb(s)?;
        for &size in &o.sizes {
            let (w, h) = content.fitted_size(size);
            let pair = format!("{}/{}", stem(c), stem(s));
            eprintln!("{pair} at {w}x{h}");
            let tag = format!("{}-{}-{size}", stem(c), stem(s));
            let inputs = work.join(&tag);
            std::fs::create_dir_all(&inputs)?;
            let (cpng, craw) = (inputs.join("content.png"), inputs.join("content.rgb"));
            let (spng, sraw) = (inputs.join("style.png"), inputs.join("style.rgb"));
            let cb = write_inputs(&content.resize(w, h), &cpng, &craw)?;
            let sb = write_inputs(&style.fit(size), &spng, &sraw)?;
            let k = key(&[
                &script_bytes,
                &net_bytes,
                &cb,
                &sb,
                tools.weights.as_bytes(),
                o.reference_iterations.to_string().as_bytes(),
                o.every.to_string().as_bytes(),
            ]);
            let ref_dir = work.join("reference").join(format!("{tag}-{k}"));
            let scores = reference(&tools, o, (&cpng, &spng, &craw, &sraw), &ref_dir)?;
            if o.references_only {
                continue;
            }
            // nst at its defaults: wall time from the start to the written file.
            let out = inputs.join("nst.png");
            let _ = std::fs::remove_file(&out);
            let mut cmd = tools.nst();
            cmd.arg("render")
                .arg("--content")
                .arg(&cpng)
                .arg("--style")
                .arg(&spng)
                .args(["--size", &size.to_string(), "--quiet"])
                .args(["--threads", &o.threads.to_string(), "--out"])
                .arg(&out)
                .args(&o.render_args);
            let t = Instant::now();
            run(cmd, "nst render")?;
            let nst_s = t.elapsed().as_secs_f64();
            let nst_score = tools.score(&cpng, &spng, &out, &inputs)?;
            // PyTorch's seconds per iteration, measured right after.
            let mut c = tools.torch();
            c.arg("time")
                .arg(&tools.weights)
                .arg(&craw)
                .arg(&sraw)
                .arg(o.timing_iterations.to_string())
                .arg("0");
            let torch_s_per_it: f64 = run(c, "the PyTorch timing")?.trim().parse()?;
            let classic500 = scores.iter().find(|(i, _)| *i == 500).map(|(_, v)| *v);
            if classic500.is_some() {
                side_by_side(&out, &ref_dir.join("iter_0500.rgb"), &inputs)?;
            }
            let row = Row {
                pair: pair.clone(),
                size: (w, h),
                nst_s,
                nst_score,
                torch_s_per_it,
                classic500,
                torch_its: iterations_to(&scores, nst_score),
            };
            eprintln!("  {}", format_row(&row, o.reference_iterations));
            rows.push(row);
        }
    }
    if o.references_only {
        return Ok(());
    }
    println!(
        "time to a finished image: nst render at its defaults{} against PyTorch's classic recipe \
         (noise start, L-BFGS history 100, {} iterations at most), {} threads, {}",
        if o.render_args.is_empty() {
            String::new()
        } else {
            format!(" + {}", o.render_args.join(" "))
        },
        o.reference_iterations,
        if o.threads == 0 {
            "all".to_string()
        } else {
            o.threads.to_string()
        },
        crate::cpu_name()
    );
    println!("| pair | size | nst s | nst score | classic@500 score | nst / classic@500 | PyTorch s/it | PyTorch its to nst's score | PyTorch s | nst / PyTorch |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!("{}", format_row(r, o.reference_iterations));
    }
    Ok(())
}

fn format_row(r: &Row, cap: usize) -> String {
    let (its, note) = match r.torch_its {
        Some(i) => (i, String::new()),
        None => (cap as f64, format!(" (not reached in {cap})")),
    };
    let torch_s = its * r.torch_s_per_it;
    format!(
        "| {} | {}x{} | {:.1} | {:.4e} | {} | {} | {:.3} | {:.0}{note} | {:.1} | {:.2} |",
        r.pair,
        r.size.0,
        r.size.1,
        r.nst_s,
        r.nst_score,
        r.classic500.map_or("-".into(), |v| format!("{v:.4e}")),
        r.classic500
            .map_or("-".into(), |v| format!("{:.3}", r.nst_score / v)),
        r.torch_s_per_it,
        its,
        torch_s,
        r.nst_s / torch_s.max(1e-9)
    )
}

#[cfg(test)]
mod tests {
    use super::iterations_to;

    #[test]
    fn interpolates_between_snapshots() {
        let s = [(0, 100.0), (25, 50.0), (50, 30.0), (75, 20.0)];
        assert_eq!(iterations_to(&s, 150.0), Some(0.0));
        assert_eq!(iterations_to(&s, 40.0), Some(37.5));
        assert_eq!(iterations_to(&s, 20.0), Some(75.0));
        assert_eq!(iterations_to(&s, 19.0), None);
    }
}
