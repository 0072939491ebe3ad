//! `nst video` on a synthetic pan (a window moving across a real photo, 2 px a frame):
//! temporally consistent frames flicker at most half as much as frames rendered one by one;
//! a rerun keeps finished frames and reuses the cached flows; bad folders are clear errors.
#![allow(clippy::print_stderr)]

use super::{images, nst, weights};
use crate::features::{assert_fails_with, s};
use std::path::{Path, PathBuf};

const W: u32 = 48;
const H: u32 = 36;
const STEP: u32 = 2;
const FRAMES: u32 = 4;

fn make_frames(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let photo = image::open(images().join("tubingen.jpg"))
        .unwrap()
        .resize(200, 200, image::imageops::FilterType::Triangle)
        .into_rgb8();
    for i in 0..FRAMES {
        let f = image::imageops::crop_imm(&photo, 40 + STEP * i, 30, W, H).to_image();
        f.save(dir.join(format!("f{i:03}.png"))).unwrap();
    }
}

fn load(p: &Path) -> Vec<f32> {
    image::open(p)
        .unwrap()
        .into_rgb8()
        .as_raw()
        .iter()
        .map(|&v| v as f32)
        .collect()
}

/// The mean |o_i(p) − o_{i−1}(p + motion)| over the pixels visible in both, over the frames.
fn warping_error(dir: &Path) -> f64 {
    let (w, h, d) = (W as usize, H as usize, STEP as usize);
    let (mut sum, mut n) = (0.0f64, 0usize);
    for i in 1..FRAMES {
        let a = load(&dir.join(format!("f{:03}.png", i - 1)));
        let b = load(&dir.join(format!("f{i:03}.png")));
        for y in 0..h {
            for x in 0..w - d {
                for c in 0..3 {
                    sum += (b[(y * w + x) * 3 + c] - a[(y * w + x + d) * 3 + c]).abs() as f64;
                    n += 1;
                }
            }
        }
    }
    sum / n as f64
}

fn style() -> PathBuf {
    images().join("starry_night.jpg")
}

#[test]
fn temporal_consistency_halves_the_flicker_and_reruns_keep_finished_frames() {
    weights();
    let root = std::env::temp_dir().join(format!("nst-video-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let (frames, video, single) = (root.join("frames"), root.join("video"), root.join("single"));
    make_frames(&frames);
    let common = ["--size", "48", "--threads", "2", "--quiet"];
    let st = style();
    let mut args = vec![
        "video",
        "--frames",
        s(&frames),
        "--out",
        s(&video),
        "--style",
        s(&st),
        "--iterations",
        "30",
        "--first-iterations",
        "60",
    ];
    args.extend_from_slice(&common);
    let r = nst(&args);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    // The same settings, every frame on its own.
    std::fs::create_dir_all(&single).unwrap();
    for i in 0..FRAMES {
        let name = format!("f{i:03}.png");
        let its = if i == 0 { "60" } else { "30" };
        let (input, output) = (frames.join(&name), single.join(&name));
        let mut a = vec![
            "render",
            "--content",
            s(&input),
            "--style",
            s(&st),
            "--out",
            s(&output),
            "--iterations",
            its,
        ];
        a.extend_from_slice(&common);
        let r = nst(&a);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    }
    let (ev, es) = (warping_error(&video), warping_error(&single));
    eprintln!("mean warping error: temporal {ev:.2}, frame by frame {es:.2} (0-255)");
    assert!(ev <= 0.5 * es, "temporal {ev} vs frame by frame {es}");
    // A rerun after a lost frame renders only that frame and reuses the flows.
    let flows = std::fs::read_dir(video.join(".nst-video/flow"))
        .unwrap()
        .count();
    assert_eq!(flows, 2 * (FRAMES as usize - 1));
    std::fs::remove_file(video.join("f003.png")).unwrap();
    let r = nst(&args);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{err}");
    assert_eq!(
        err.matches("done before, kept").count(),
        FRAMES as usize - 1,
        "{err}"
    );
    assert!(video.join("f003.png").is_file());
    assert_eq!(
        std::fs::read_dir(video.join(".nst-video/flow"))
            .unwrap()
            .count(),
        flows
    );
    // Done means the manifest's rule (as in `nst batch`): a frame whose bytes are not the
    // ones its manifest recorded is done again; rendered again to the same bytes, the frames
    // after it, which read it, are still done.
    for i in 0..FRAMES {
        assert!(video.join(format!("f{i:03}.png.nst.json")).is_file());
    }
    let before = std::fs::read(video.join("f001.png")).unwrap();
    std::fs::copy(video.join("f000.png"), video.join("f001.png")).unwrap();
    let r = nst(&args);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{err}");
    assert!(err.contains("frame 2/4 f001.png\n"), "{err}");
    assert_eq!(err.matches("done before, kept").count(), 3, "{err}");
    assert_eq!(std::fs::read(video.join("f001.png")).unwrap(), before);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn bad_frame_folders_are_clear_errors() {
    weights();
    let root = std::env::temp_dir().join(format!("nst-video-bad-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let empty = root.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = root.join("out");
    let painting = style();
    let run_with = |dir: &Path, extra: &[&str]| {
        let mut a = vec![
            "video",
            "--frames",
            s(dir),
            "--out",
            s(&out),
            "--style",
            s(&painting),
            "--size",
            "32",
            "--iterations",
            "2",
        ];
        a.extend_from_slice(extra);
        nst(&a)
    };
    let run = |dir: &Path| run_with(dir, &[]);
    assert_fails_with(
        &run(&root.join("missing")),
        &["cannot read the frames folder", "missing"],
    );
    assert_fails_with(&run(&empty), &["no frames"]);
    let mixed = root.join("mixed");
    std::fs::create_dir_all(&mixed).unwrap();
    image::RgbImage::new(40, 30)
        .save(mixed.join("a.png"))
        .unwrap();
    image::RgbImage::new(30, 40)
        .save(mixed.join("b.png"))
        .unwrap();
    assert_fails_with(&run(&mixed), &["b.png", "same size"]);
    let broken = root.join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    image::RgbImage::new(40, 30)
        .save(broken.join("a.png"))
        .unwrap();
    std::fs::write(broken.join("b.png"), b"not a png").unwrap();
    assert_fails_with(&run(&broken), &["b.png"]);
    // A frame over the render's pixel limit is refused before any frame is decoded.
    let big = root.join("big");
    std::fs::create_dir_all(&big).unwrap();
    image::RgbImage::new(40, 30)
        .save(big.join("a.png"))
        .unwrap();
    let r = run_with(&big, &["--max-pixels", "1000"]);
    assert_fails_with(&r, &["a.png", "40x30", "limit of 1000"]);
    assert!(
        !out.join("a.png").exists(),
        "nothing is written when a frame is bad"
    );
    let _ = std::fs::remove_dir_all(&root);
}
