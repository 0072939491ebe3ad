//! `nst video`: stylise the frames in a folder with temporal consistency (Ruder, Dosovitskiy
//! & Brox 2016): each frame after the first starts from the previous stylised frame warped
//! by the optical flow, and a temporal term keeps it there where the flow is reliable.
//! Resumable per frame (finished outputs are kept) and mid-frame (a checkpoint per frame).

use crate::io;
use crate::manifest::Manifest;
use anyhow::{bail, ensure, Context, Result};
use nst_flow::{Flow, Gray, Params};
use nst_style::{Image, Temporal};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The video's own options; every other argument is an `nst render` option for every frame.
#[derive(clap::Args)]
#[command(
    after_help = "Every other option is an `nst render` option applied to each frame (--style, --size, --iterations, --style-weight, …)."
)]
pub(crate) struct Args {
    /// `--frames DIR --out DIR [--temporal-weight W] [--first-iterations N]` and any `nst
    /// render` options (`--style S`, `--size`, `--iterations`, …).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "OPTIONS"
    )]
    args: Vec<String>,
}

/// The default w_t of the temporal term.
pub(crate) const DEFAULT_TEMPORAL_WEIGHT: f64 = 2000.0;

struct VideoOptions {
    frames: PathBuf,
    out: PathBuf,
    temporal_weight: f64,
    first_iterations: Option<u32>,
    iterations: u32,
    render: Vec<String>,
}

/// Takes the video's own options out of the argument list; the rest go to `nst render`.
fn split(args: &[String]) -> Result<VideoOptions> {
    let mut frames = None;
    let mut out = None;
    let mut temporal_weight = DEFAULT_TEMPORAL_WEIGHT;
    let mut first_iterations = None;
    let mut iterations = 500;
    let mut render = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (key, inline) = match a.split_once('=') {
            Some((k, v)) if k.starts_with("--") => (k, Some(v.to_string())),
            _ => (a.as_str(), None),
        };
        let mut value = |what: &str| -> Result<String> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None => it
                    .next()
                    .cloned()
                    .with_context(|| format!("{what} needs a value")),
            }
        };
        match key {
            "--frames" => frames = Some(PathBuf::from(value("--frames")?)),
            "--out" => out = Some(PathBuf::from(value("--out")?)),
            "--temporal-weight" => {
                let v = value("--temporal-weight")?;
                temporal_weight = v
                    .parse()
                    .ok()
                    .filter(|w: &f64| w.is_finite() && *w >= 0.0)
                    .with_context(|| {
                        format!("--temporal-weight: expected a non-negative number, got {v:?}")
                    })?;
            }
            "--first-iterations" => {
                let v = value("--first-iterations")?;
                first_iterations =
                    Some(v.parse().ok().filter(|n: &u32| *n > 0).with_context(|| {
                        format!("--first-iterations: expected a positive number, got {v:?}")
                    })?);
            }
            "--iterations" => {
                let v = value("--iterations")?;
                iterations = v.parse().ok().filter(|n: &u32| *n > 0).with_context(|| {
                    format!("--iterations: expected a positive number, got {v:?}")
                })?;
            }
            "--content" | "--checkpoint" | "--resume" | "--web" | "--init" => {
                bail!("{key} cannot be used with nst video (it is set for every frame)")
            }
            _ => render.push(a.clone()),
        }
    }
    Ok(VideoOptions {
        frames: frames.context("--frames DIR is needed (the folder of frames)")?,
        out: out.context("--out DIR is needed (the folder of the stylised frames)")?,
        temporal_weight,
        first_iterations,
        iterations,
        render,
    })
}

/// The frames of a folder: PNG and JPEG files in name order, all of one size, of at most
/// `max_pixels` pixels.
fn list_frames(dir: &Path, max_pixels: u64) -> Result<(Vec<PathBuf>, (u32, u32))> {
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read the frames folder {}", dir.display()))?;
    let mut frames: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                    matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg")
                })
        })
        .collect();
    frames.sort();
    ensure!(
        !frames.is_empty(),
        "no frames (PNG or JPEG files) in {}",
        dir.display()
    );
    let mut size = None;
    for f in &frames {
        let d = image::image_dimensions(f)
            .with_context(|| format!("cannot read the frame {}", f.display()))?;
        ensure!(
            d.0 as u64 * d.1 as u64 <= max_pixels,
            "the frame {} is {}x{} pixels, over the limit of {max_pixels} (raise it with --max-pixels)",
            f.display(),
            d.0,
            d.1
        );
        match size {
            None => size = Some(d),
            Some(s) if s != d => bail!(
                "the frame {} is {}x{}, the first is {}x{}: every frame must have the same size",
                f.display(),
                d.0,
                d.1,
                s.0,
                s.1
            ),
            _ => {}
        }
    }
    Ok((frames, size.expect("one frame")))
}

/// A frame in grey at `w x h`.
fn gray_at(path: &Path, w: usize, h: usize) -> Result<Gray> {
    let img = io::load_image(path, u64::MAX)?.resize(w, h);
    Gray::from_rgb(w, h, img.data()).context("a frame's pixels")
}

fn digest(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(format!("{:x}", Sha256::digest(&bytes))[..16].to_string())
}

/// Writes a flow in the Middlebury `.flo` format (tag, width, height, interleaved u, v).
fn write_flo(path: &Path, f: &Flow) -> Result<()> {
    let mut bytes = Vec::with_capacity(12 + f.u().len() * 8);
    bytes.extend_from_slice(&202021.25f32.to_le_bytes());
    bytes.extend_from_slice(&(f.width() as u32).to_le_bytes());
    bytes.extend_from_slice(&(f.height() as u32).to_le_bytes());
    for (u, v) in f.u().iter().zip(f.v()) {
        bytes.extend_from_slice(&u.to_le_bytes());
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    io::write_atomic(path, |tmp| {
        std::fs::write(tmp, &bytes).with_context(|| format!("cannot write {}", tmp.display()))
    })
}

/// Reads a `.flo` of `w x h` (`None` when missing, of another size, or damaged).
fn read_flo(path: &Path, w: usize, h: usize) -> Option<Flow> {
    let b = std::fs::read(path).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> { b.get(i * 4..i * 4 + 4)?.try_into().ok() };
    if f32::from_le_bytes(word(0)?) != 202021.25
        || u32::from_le_bytes(word(1)?) as usize != w
        || u32::from_le_bytes(word(2)?) as usize != h
        || b.len() != 12 + w * h * 8
    {
        return None;
    }
    let (mut u, mut v) = (Vec::with_capacity(w * h), Vec::with_capacity(w * h));
    for k in 0..w * h {
        u.push(f32::from_le_bytes(word(3 + 2 * k)?));
        v.push(f32::from_le_bytes(word(4 + 2 * k)?));
    }
    Flow::new(w, h, u, v)
}

/// The flow from frame `a` to frame `b` at `w x h`, from the cache beside the output when
/// it is there (keyed by both frames' bytes and the size).
fn cached_flow(cache: &Path, a: &Path, b: &Path, w: usize, h: usize) -> Result<Flow> {
    let name = format!("{}-{}-{w}x{h}.flo", digest(a)?, digest(b)?);
    let path = cache.join(name);
    if let Some(f) = read_flo(&path, w, h) {
        return Ok(f);
    }
    let f = nst_flow::flow(&gray_at(a, w, h)?, &gray_at(b, w, h)?, &Params::default());
    write_flo(&path, &f)?;
    Ok(f)
}

/// The render options of one frame, parsed (their first line of error).
fn parse_line(argv: &[String]) -> Result<crate::render::Args> {
    crate::render::parse_argv(argv).map_err(|first| anyhow::anyhow!("{first}"))
}

pub(crate) fn run(a: Args) -> Result<()> {
    let o = split(&a.args)?;
    // The pixel limit of the render options, before any frame is decoded.
    let mut probe: Vec<String> = vec!["nst render".into()];
    probe.extend(o.render.iter().cloned());
    probe.extend(["--content", "frame", "--out", "frame.png"].map(String::from));
    let max_pixels = parse_line(&probe)?.max_pixels();
    let (frames, _) = list_frames(&o.frames, max_pixels)?;
    std::fs::create_dir_all(&o.out)
        .with_context(|| format!("cannot create the output folder {}", o.out.display()))?;
    let state = o.out.join(".nst-video");
    std::fs::create_dir_all(&state)
        .with_context(|| format!("cannot create {}", state.display()))?;
    let first = o.first_iterations.unwrap_or(o.iterations.saturating_mul(2));
    let n = frames.len();
    for (i, frame) in frames.iter().enumerate() {
        let name = frame.file_name().expect("a file").to_owned();
        let out = o.out.join(&name);
        let ckpt = state.join(format!("{}.ckpt", name.to_string_lossy()));
        let iterations = if i == 0 { first } else { o.iterations };
        let mut argv: Vec<String> = vec!["nst render".into()];
        argv.extend(o.render.iter().cloned());
        argv.extend([
            "--content".into(),
            frame.display().to_string(),
            "--out".into(),
            out.display().to_string(),
            "--iterations".into(),
            iterations.to_string(),
        ]);
        if ckpt.is_file() {
            argv.extend(["--resume".into(), ckpt.display().to_string()]);
        } else {
            argv.extend(["--checkpoint".into(), ckpt.display().to_string()]);
        }
        let args = parse_line(&argv)?;
        // Done before: the one rule of `nst batch` too (the manifest beside the output). A
        // frame depends on the previous stylised frame, so redoing one redoes the rest.
        let mut inputs = args.input_files();
        if i > 0 {
            inputs.push(o.out.join(frames[i - 1].file_name().expect("a file")));
        }
        let settings = serde_json::json!({
            "render": o.render,
            "iterations": iterations,
            "temporal_weight": o.temporal_weight,
        })
        .to_string();
        let manifest = Manifest::expect(&out, &settings, &inputs)?;
        if manifest.is_done() {
            eprintln!(
                "frame {}/{n} {}: done before, kept",
                i + 1,
                name.to_string_lossy()
            );
            continue;
        }
        eprintln!("frame {}/{n} {}", i + 1, name.to_string_lossy());
        let extras = if i == 0 {
            None
        } else {
            let prev_out = o.out.join(frames[i - 1].file_name().expect("a file"));
            let prev = io::load_image(&prev_out, u64::MAX).with_context(|| {
                format!("reading the previous stylised frame {}", prev_out.display())
            })?;
            let (w, h) = (prev.width(), prev.height());
            // ŵ: this frame into the previous one; w: the previous one into this one.
            let cache = state.join("flow");
            std::fs::create_dir_all(&cache)?;
            let back = cached_flow(&cache, frame, &frames[i - 1], w, h)?;
            let fwd = cached_flow(&cache, &frames[i - 1], frame, w, h)?;
            let weights = nst_flow::consistency(&back, &fwd);
            let (warped, inside) = nst_flow::warp(prev.data(), 3, &back);
            // Where the match leaves the frame, the frame itself.
            let here = io::load_image(frame, u64::MAX)?.resize(w, h);
            let mut omega = warped;
            for (p, ok) in inside.iter().enumerate() {
                if !ok {
                    omega[p * 3..p * 3 + 3].copy_from_slice(&here.data()[p * 3..p * 3 + 3]);
                }
            }
            let omega = Image::new(w, h, omega).context("the warped frame")?;
            Some(crate::render::FrameExtras {
                init: omega.clone(),
                temporal: Temporal {
                    target: omega,
                    weights,
                    weight: o.temporal_weight,
                },
            })
        };
        crate::render::run_frame(args, extras)
            .with_context(|| format!("frame {}", name.to_string_lossy()))?;
        manifest.record()?;
        let _ = std::fs::remove_file(&ckpt);
    }
    eprintln!("wrote {n} frames to {}", o.out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_video_options_are_taken_out_and_the_rest_go_to_render() {
        let args: Vec<String> = [
            "--frames",
            "in",
            "--style",
            "s.jpg",
            "--out=o",
            "--temporal-weight",
            "10",
            "--iterations",
            "40",
            "--size",
            "64",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let o = split(&args).unwrap();
        assert_eq!((o.frames, o.out), (PathBuf::from("in"), PathBuf::from("o")));
        assert_eq!(
            (o.temporal_weight, o.iterations, o.first_iterations),
            (10.0, 40, None)
        );
        assert_eq!(o.render, ["--style", "s.jpg", "--size", "64"]);
        for bad in [
            &["--out", "o"][..],
            &["--frames", "f"],
            &["--frames", "f", "--out", "o", "--content", "x"],
            &["--frames", "f", "--out", "o", "--temporal-weight", "-1"],
            &["--frames", "f", "--out"],
        ] {
            let v: Vec<String> = bad.iter().map(|s| s.to_string()).collect();
            assert!(split(&v).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn flo_files_round_trip_and_damaged_ones_are_ignored() {
        let dir = std::env::temp_dir().join(format!("nst-flo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = Flow::new(3, 2, vec![0.5, -1.0, 2.0, 0.0, 1.0, 3.0], vec![1.0; 6]).unwrap();
        let p = dir.join("a.flo");
        write_flo(&p, &f).unwrap();
        assert_eq!(read_flo(&p, 3, 2), Some(f));
        assert_eq!(read_flo(&p, 2, 3), None);
        std::fs::write(&p, b"PIEH").unwrap();
        assert_eq!(read_flo(&p, 3, 2), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
