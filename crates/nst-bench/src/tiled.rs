//! `nst-bench tiled`: seconds per render iteration and peak memory of `nst render`, untiled
//! and tiled under memory budgets, each next to `nst estimate`'s prediction.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// One configuration's measurement.
struct Row {
    secs: f64,
    peak_mb: f64,
}

/// What `nst estimate --json` predicts for a configuration.
struct Predicted {
    peak_mb: f64,
    tiles: usize,
    tile: usize,
    kept: usize,
    history: usize,
}

/// A number of a JSON object printed by `nst`.
fn field(json: &serde_json::Value, key: &str) -> Option<f64> {
    json.get(key)?.as_f64()
}

fn nst(bin: &Path, args: &[String]) -> Result<String> {
    let out = Command::new(bin)
        .args(args)
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8(out.stdout)?)
}

fn estimate(bin: &Path, common: &[String]) -> Result<Predicted> {
    let mut args = vec!["estimate".to_string(), "--json".into()];
    args.extend_from_slice(common);
    let json: serde_json::Value =
        serde_json::from_str(&nst(bin, &args)?).context("nst estimate --json")?;
    let scale = &json["scales"][0];
    Ok(Predicted {
        peak_mb: field(&json, "peak_bytes").context("no peak")? / 1e6,
        tiles: field(scale, "tiles").context("no tiles")? as usize,
        tile: field(scale, "tile").context("no tile")? as usize,
        kept: field(scale, "kept").context("no kept")? as usize,
        history: field(scale, "history").context("no history")? as usize,
    })
}

fn render(bin: &Path, common: &[String], dir: &Path) -> Result<Row> {
    let log = dir.join("log.json");
    let mut args = vec!["render".to_string(), "--quiet".into()];
    args.extend_from_slice(common);
    args.extend([
        "--out".into(),
        dir.join("out.png").display().to_string(),
        "--json-log".into(),
        log.display().to_string(),
    ]);
    nst(bin, &args)?;
    let text = std::fs::read_to_string(&log)?;
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(serde_json::from_str)
        .collect::<std::result::Result<Vec<serde_json::Value>, _>>()
        .context("the JSON log")?
        .into_iter()
        .filter(|v| v.get("event").is_none())
        .collect();
    if lines.len() < 2 {
        bail!("a timing needs two iterations at least");
    }
    let t = |l: &serde_json::Value| field(l, "elapsed_s").context("no elapsed_s");
    let first = t(&lines[0])?;
    let last = t(&lines[lines.len() - 1])?;
    Ok(Row {
        secs: (last - first) / (lines.len() - 1) as f64,
        peak_mb: field(&lines[lines.len() - 1], "peak_rss_mb").context("no peak")?,
    })
}

/// Writes the content and style, resized to `w x h`, as PNG files in `dir`.
fn inputs(dir: &Path, w: usize, h: usize) -> Result<(PathBuf, PathBuf)> {
    let save = |name: &str, src: &str| -> Result<PathBuf> {
        let img = crate::load_rgb(src)?.resize(w, h);
        let bytes: Vec<u8> = img
            .data()
            .iter()
            .map(|v| v.round().clamp(0.0, 255.0) as u8)
            .collect();
        let p = dir.join(name);
        image::RgbImage::from_raw(w as u32, h as u32, bytes)
            .context("image size")?
            .save(&p)?;
        Ok(p)
    };
    Ok((
        save("content.png", "tubingen.jpg")?,
        save("style.png", "starry_night.jpg")?,
    ))
}

/// The benchmark: for each size, untiled (where the estimate says it fits in `untiled_max`
/// bytes) and `--tile auto` under each budget.
pub(crate) fn bench_tiled(
    sizes: &[(usize, usize)],
    budgets: &[String],
    iterations: usize,
    threads: usize,
) -> Result<()> {
    let bin = PathBuf::from(std::env::var_os("NST_BIN").context("NST_BIN is not set")?);
    let dir = std::env::temp_dir().join(format!("nst-bench-tiled-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let total = crate::total_memory().unwrap_or(0.0);
    println!(
        "render iterations of `nst render` ({iterations} iterations, L-BFGS; seconds per iteration after the first), {} threads, {}; peak MB: measured RSS (VmHWM) / predicted by `nst estimate`",
        if threads == 0 { "all".to_string() } else { threads.to_string() },
        crate::cpu_name()
    );
    println!(
        "{:>11} {:>9} {:>6} {:>6} {:>5} {:>7} {:>9} {:>9} {:>9} {:>7} {:>9}",
        "size",
        "mode",
        "tiles",
        "tile",
        "kept",
        "history",
        "s/iter",
        "peak MB",
        "pred MB",
        "error",
        "/untiled"
    );
    for &(w, h) in sizes {
        let (c, s) = inputs(&dir, w, h)?;
        let common = |mode: &[&str]| -> Vec<String> {
            let mut a: Vec<String> = [
                "--content",
                &c.display().to_string(),
                "--style",
                &s.display().to_string(),
                "--size",
                &w.max(h).to_string(),
                "--iterations",
                &iterations.to_string(),
                "--threads",
                &threads.to_string(),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            a.extend(mode.iter().map(|s| s.to_string()));
            a
        };
        let mut untiled: Option<f64> = None;
        let mut modes: Vec<(String, Vec<String>)> = vec![(
            "untiled".into(),
            common(&[
                "--tile",
                "off",
                "--max-memory",
                &format!("{}", (total * 0.9) as u64),
            ]),
        )];
        for b in budgets {
            modes.push((
                format!("auto {b}"),
                common(&["--tile", "auto", "--max-memory", b]),
            ));
        }
        for (name, args) in modes {
            let label = format!("{w}x{h}");
            let pred = match estimate(&bin, &args) {
                Ok(p) => p,
                Err(e) => {
                    println!("{label:>11} {name:>9}  does not fit: {e}");
                    continue;
                }
            };
            let row = render(&bin, &args, &dir)?;
            if name == "untiled" {
                untiled = Some(row.secs);
            }
            println!(
                "{label:>11} {name:>9} {:>6} {:>6} {:>5} {:>7} {:>9.2} {:>9.0} {:>9.0} {:>6.1}% {:>9}",
                pred.tiles,
                pred.tile,
                pred.kept,
                pred.history,
                row.secs,
                row.peak_mb,
                pred.peak_mb,
                100.0 * (pred.peak_mb - row.peak_mb) / row.peak_mb,
                untiled.map_or("-".to_string(), |u| format!("{:.2}x", row.secs / u)),
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
