//! Renders that never lose work: kill -9 and resume, SIGINT and SIGTERM, checkpoints of
//! another render refused, snapshot failures as warnings; and real-world images: EXIF
//! orientation, 16-bit input and output, ICC profiles.

use super::{images, nst, weights, weights_path};
use crate::features::{assert_fails_with, s, tmp};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The arguments of the small render these tests interrupt (96 px, 40 iterations, unless
/// `extra` says otherwise).
fn render_args(out: &Path, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "render",
        "--content",
        s(&images().join("tubingen.jpg")),
        "--style",
        s(&images().join("starry_night.jpg")),
        "--out",
        s(out),
        "--threads",
        "2",
        "--quiet",
    ]
    .iter()
    .map(|x| x.to_string())
    .collect();
    for (flag, default) in [("--size", "96"), ("--iterations", "40")] {
        if !extra.contains(&flag) {
            a.extend([flag.to_string(), default.to_string()]);
        }
    }
    a.extend(extra.iter().map(|x| x.to_string()));
    a
}

fn spawn(args: &[String]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_nst"))
        .args(args)
        .env("NST_WEIGHTS", weights_path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nst starts")
}

fn run_ok(args: &[String]) {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = nst(&refs);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
}

/// The iteration records of a JSON log (not its start and scale events).
fn iteration_lines(text: &str) -> usize {
    text.lines().filter(|l| !l.contains("\"event\"")).count()
}

/// Waits until the JSON log has at least `lines` iteration records (or the child exits).
fn wait_for_log(child: &mut Child, log: &Path, lines: usize) {
    let start = Instant::now();
    loop {
        let n = std::fs::read_to_string(log).map_or(0, |t| iteration_lines(&t));
        if n >= lines {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("nst exited ({status}) before iteration {lines}");
        }
        assert!(start.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The uninterrupted render's bytes (made once per test binary).
fn reference() -> Vec<u8> {
    static REF: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    REF.get_or_init(|| {
        let out = tmp("resume_reference.png");
        run_ok(&render_args(&out, &[]));
        std::fs::read(&out).unwrap()
    })
    .clone()
}

/// A checkpoint's `(scale, iteration)` from its safetensors header.
fn checkpoint_position(path: &Path) -> (usize, usize) {
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let m = meta.metadata().clone().unwrap();
    (m["scale"].parse().unwrap(), m["iteration"].parse().unwrap())
}

/// Temporary files left beside `out` for it or for `checkpoint` (other tests write in the
/// same folder at the same time, so only these names count).
fn leftovers(out: &Path, checkpoint: &Path) -> Vec<PathBuf> {
    let names = [out, checkpoint].map(|p| p.file_name().unwrap().to_string_lossy().to_string());
    std::fs::read_dir(out.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().to_string();
            n.starts_with(".nst-tmp") && names.iter().any(|m| n.ends_with(m.as_str()))
        })
        .collect()
}

#[test]
fn kill_9_then_resume_gives_the_uninterrupted_bytes() {
    weights();
    let (out, ck, log) = (tmp("k9.png"), tmp("k9.ckpt"), tmp("k9.jsonl"));
    let every = 5;
    let mut child = spawn(&render_args(
        &out,
        &[
            "--checkpoint",
            s(&ck),
            "--checkpoint-every",
            &every.to_string(),
            "--json-log",
            s(&log),
        ],
    ));
    wait_for_log(&mut child, &log, 17);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let done = iteration_lines(&std::fs::read_to_string(&log).unwrap());
    let (scale, at) = checkpoint_position(&ck);
    assert_eq!(scale, 0);
    assert!(
        at % every == 0 && done - at <= every,
        "checkpoint at {at} after {done} iterations"
    );
    assert!(!out.exists(), "a killed render wrote no output");
    // Resumed with one thread instead of two: the CPU backend gives the same bytes with any
    // thread count, so a render may move to another machine.
    let mut a = render_args(&out, &["--resume", s(&ck)]);
    let t = a.iter().position(|x| x == "--threads").unwrap();
    a[t + 1] = "1".into();
    run_ok(&a);
    assert!(std::fs::read(&out).unwrap() == reference());
}

#[test]
fn sigint_writes_image_and_checkpoint_and_resumes_to_the_same_bytes() {
    weights();
    for (signal, code) in [("INT", 130), ("TERM", 143)] {
        let name = signal.to_lowercase();
        let out = tmp(&format!("{name}.png"));
        let (ck, log) = (tmp(&format!("{name}.ckpt")), tmp(&format!("{name}.jsonl")));
        let mut child = spawn(&render_args(
            &out,
            &["--checkpoint", s(&ck), "--json-log", s(&log)],
        ));
        wait_for_log(&mut child, &log, 8);
        let k = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .unwrap();
        assert!(k.success());
        let r = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(code), "{err}");
        assert!(err.contains("--resume") && err.contains(s(&ck)), "{err}");
        // The current image and the checkpoint exist, complete.
        let img = image::open(&out).unwrap();
        assert_eq!(img.width(), 96);
        let (_, at) = checkpoint_position(&ck);
        assert!((8..40).contains(&at), "stopped at {at}");
        assert!(leftovers(&out, &ck).is_empty());
        run_ok(&render_args(&out, &["--resume", s(&ck)]));
        assert!(std::fs::read(&out).unwrap() == reference(), "{signal}");
    }
}

/// SIGTERM in the middle of a slow iteration (128 px in 16 px tiles: about a second each
/// with the test model, while the signal comes a tenth of a second into it) with no grace
/// to finish it (`--grace 0s`): the iteration is abandoned, the image and checkpoint of the
/// last completed one are written, the exit code is 143, and resuming gives the bytes of
/// the render never interrupted.
#[test]
fn sigterm_abandons_an_iteration_that_would_outlast_the_grace() {
    weights();
    let (out, ck, log) = (tmp("grace.png"), tmp("grace.ckpt"), tmp("grace.jsonl"));
    let slow = ["--tile", "16", "--iterations", "3", "--size", "128"];
    let uninterrupted = tmp("grace_whole.png");
    run_ok(&render_args(&uninterrupted, &slow));
    let mut extra = slow.to_vec();
    extra.extend([
        "--grace",
        "0s",
        "--checkpoint",
        s(&ck),
        "--json-log",
        s(&log),
    ]);
    let mut child = spawn(&render_args(&out, &extra));
    wait_for_log(&mut child, &log, 1);
    // Into the second iteration, which takes far longer than this.
    std::thread::sleep(std::time::Duration::from_millis(100));
    let k = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(k.success());
    let r = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(143), "{err}");
    assert!(err.contains("abandoned the iteration in flight"), "{err}");
    let done = iteration_lines(&std::fs::read_to_string(&log).unwrap());
    let (_, at) = checkpoint_position(&ck);
    assert_eq!(at, done, "the checkpoint is the last completed iteration's");
    assert!(done < 3, "stopped after {done} iterations");
    assert!(leftovers(&out, &ck).is_empty());
    run_ok(&render_args(
        &out,
        &[&slow[..], &["--resume", s(&ck)]].concat(),
    ));
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&uninterrupted).unwrap());
    // A bad --grace is refused before any work.
    assert_fails_with(
        &nst(&render_args(&out, &["--grace", "soon"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()),
        &["--grace", "25s"],
    );
}

#[test]
fn a_checkpoint_of_another_render_is_refused_naming_the_difference() {
    weights();
    let (out, ck) = (tmp("other.png"), tmp("other.ckpt"));
    run_ok(&render_args(
        &out,
        &["--iterations", "3", "--checkpoint", s(&ck)],
    ));
    let resume = |extra: &[&str]| {
        let mut a = render_args(&out, extra);
        a.extend(["--resume".to_string(), s(&ck).to_string()]);
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        nst(&refs)
    };
    // `render_args` asks for 40 iterations, the checkpoint was made with 3.
    assert_fails_with(&resume(&[]), &["another render", "iterations"]);
    assert_fails_with(
        &resume(&["--iterations", "3", "--seed", "7"]),
        &["another render", "seed"],
    );
    assert_fails_with(
        &resume(&["--iterations", "3", "--style-weight", "10"]),
        &["another render", "objective"],
    );
    // Other weights of the same size (one value of the last tensor changed): refused, naming
    // the weights by their SHA-256.
    let other = tmp("other_weights.safetensors");
    let mut bytes = std::fs::read(weights_path()).unwrap();
    let n = bytes.len();
    let last: [u8; 4] = bytes[n - 4..].try_into().unwrap();
    let value = if f32::from_le_bytes(last) == 0.5 {
        0.25f32
    } else {
        0.5
    };
    bytes[n - 4..].copy_from_slice(&value.to_le_bytes());
    std::fs::write(&other, &bytes).unwrap();
    drop(bytes);
    let r = resume(&["--iterations", "3", "--weights", s(&other)]);
    std::fs::remove_file(&other).unwrap();
    let _ = std::fs::remove_file(tmp("other_weights.safetensors.sha256"));
    assert_fails_with(&r, &["another render", "weights (sha256"]);
    // Not a checkpoint at all.
    let junk = tmp("junk.ckpt");
    std::fs::write(&junk, b"not a checkpoint").unwrap();
    let mut a = render_args(&out, &[]);
    a.extend(["--resume".to_string(), s(&junk).to_string()]);
    let refs: Vec<&str> = a.iter().map(String::as_str).collect();
    assert_fails_with(&nst(&refs), &["cannot resume", "junk.ckpt"]);
    // The same render resumes from its finished checkpoint to the same bytes.
    let before = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    let r = resume(&["--iterations", "3"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(std::fs::read(&out).unwrap() == before);
}

#[test]
fn a_failed_snapshot_is_a_warning_and_the_final_image_is_written() {
    weights();
    let out = tmp("snapfail.png");
    // A folder where the snapshot of iteration 2 would go.
    let blocker = tmp("snapfail_iter2.png");
    std::fs::create_dir_all(&blocker).unwrap();
    let mut a = render_args(&out, &["--iterations", "4", "--save-every", "2"]);
    a.retain(|x| x != "--quiet");
    let refs: Vec<&str> = a.iter().map(String::as_str).collect();
    let r = nst(&refs);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{err}");
    assert!(
        err.contains("warning") && err.contains("snapfail_iter2"),
        "{err}"
    );
    assert!(tmp("snapfail_iter4.png").is_file());
    assert_eq!(image::open(&out).unwrap().width(), 96);
}

/// Runs `nst`, failing the test if it is still running after `limit` (only a hung process
/// takes that long: the limit is not a measurement).
fn nst_bounded(args: &[String], limit: Duration) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_nst"))
        .args(args)
        .env("NST_WEIGHTS", weights_path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nst starts");
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("nst {args:?} still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn unwritable_outputs_fail_before_any_work() {
    // Each render would run for hours if it started work: it must fail at once, having
    // reported no iteration (progress is on: no --quiet).
    let hung = Duration::from_secs(300);
    let loud = |mut a: Vec<String>| {
        a.retain(|x| x != "--quiet");
        a.extend(["--print-every".to_string(), "1".to_string()]);
        a
    };
    let no_iteration = |r: &std::process::Output| {
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(!err.contains("1/100000"), "an iteration ran: {err}");
    };
    let missing = tmp("no-such-folder").join("x.png");
    let a = loud(render_args(&missing, &["--iterations", "100000"]));
    let r = nst_bounded(&a, hung);
    assert_fails_with(&r, &["cannot write", "does not exist"]);
    no_iteration(&r);
    let ck = tmp("no-such-folder").join("c.ckpt");
    let out = tmp("ok.png");
    let a = loud(render_args(
        &out,
        &["--iterations", "100000", "--checkpoint", s(&ck)],
    ));
    let r = nst_bounded(&a, hung);
    assert_fails_with(&r, &["cannot write", "c.ckpt"]);
    no_iteration(&r);
    assert!(!out.exists(), "nothing is written");
    let a = loud(render_args(
        &tmp("deep.jpg"),
        &["--iterations", "100000", "--bit-depth", "16"],
    ));
    let r = nst_bounded(&a, hung);
    assert_fails_with(&r, &["16 bits", "PNG and TIFF"]);
    no_iteration(&r);
}

/// A JPEG of `w x h` stored pixels with EXIF orientation `o`: the left half red, the right
/// half blue.
fn exif_jpeg(path: &Path, w: u32, h: u32, o: u16) {
    use image::ImageEncoder;
    let img = image::RgbImage::from_fn(w, h, |x, _| {
        if x < w / 2 {
            image::Rgb([220, 20, 20])
        } else {
            image::Rgb([20, 20, 220])
        }
    });
    // A little-endian TIFF header and one IFD entry: Orientation (0x0112), SHORT, 1, o.
    let mut exif = b"II*\0".to_vec();
    exif.extend(8u32.to_le_bytes());
    exif.extend(1u16.to_le_bytes());
    exif.extend(0x0112u16.to_le_bytes());
    exif.extend(3u16.to_le_bytes());
    exif.extend(1u32.to_le_bytes());
    exif.extend(o.to_le_bytes());
    exif.extend(0u16.to_le_bytes());
    exif.extend(0u32.to_le_bytes());
    let mut bytes = Vec::new();
    let mut enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 95);
    enc.set_exif_metadata(exif).unwrap();
    enc.write_image(img.as_raw(), w, h, image::ExtendedColorType::Rgb8)
        .unwrap();
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn exif_orientation_6_renders_upright() {
    weights();
    let content = tmp("rotated.jpg");
    // Stored 64x32 landscape; orientation 6 means "rotate 90° clockwise to view": upright it
    // is 32 wide and 64 tall, red on top.
    exif_jpeg(&content, 64, 32, 6);
    let out = tmp("rotated_out.png");
    let r = nst(&[
        "render",
        "--content",
        s(&content),
        "--style",
        s(&images().join("starry_night.jpg")),
        "--out",
        s(&out),
        "--size",
        "64",
        "--iterations",
        "1",
        "--init",
        "content",
        "--style-weight",
        "0",
        "--tv-weight",
        "0",
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let img = image::open(&out).unwrap().to_rgb8();
    assert_eq!((img.width(), img.height()), (32, 64));
    let top = img.get_pixel(16, 8);
    let bottom = img.get_pixel(16, 56);
    assert!(top[0] > 150 && top[2] < 100, "top {top:?}");
    assert!(bottom[2] > 150 && bottom[0] < 100, "bottom {bottom:?}");
}

#[test]
fn sixteen_bit_png_round_trips_at_full_precision_with_its_icc_profile() {
    use image::{ImageDecoder, ImageEncoder};
    weights();
    let (w, h) = (48u32, 40u32);
    // A smooth 16-bit ramp: most values are not multiples of 257 (8-bit values scaled).
    let values: Vec<u16> = (0..w * h * 3)
        .map(|i| ((i * 7919) % 65536) as u16)
        .collect();
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_ne_bytes()).collect();
    let profile = b"nst-test-icc-profile: any bytes are kept as they are".to_vec();
    let content = tmp("deep.png");
    {
        let f = std::fs::File::create(&content).unwrap();
        let mut enc = image::codecs::png::PngEncoder::new(f);
        enc.set_icc_profile(profile.clone()).unwrap();
        enc.write_image(&bytes, w, h, image::ExtendedColorType::Rgb16)
            .unwrap();
    }
    let out = tmp("deep_out.png");
    // Every weight 0: the gradient is 0, so the image stays the content, whose 16 bits must
    // survive loading, the model-space round trip and writing.
    let r = nst(&[
        "render",
        "--content",
        s(&content),
        "--style",
        s(&images().join("starry_night.jpg")),
        "--out",
        s(&out),
        "--size",
        "48",
        "--iterations",
        "1",
        "--init",
        "content",
        "--content-weight",
        "0",
        "--style-weight",
        "0",
        "--tv-weight",
        "0",
        "--bit-depth",
        "16",
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let mut dec = image::codecs::png::PngDecoder::new(std::io::BufReader::new(
        std::fs::File::open(&out).unwrap(),
    ))
    .unwrap();
    assert_eq!(dec.color_type(), image::ColorType::Rgb16);
    assert_eq!(dec.icc_profile().unwrap(), Some(profile));
    let got = image::DynamicImage::from_decoder(dec)
        .unwrap()
        .into_rgb16()
        .into_raw();
    assert_eq!(got.len(), values.len());
    let worst = got
        .iter()
        .zip(&values)
        .map(|(a, b)| (*a as i32 - *b as i32).abs())
        .max()
        .unwrap();
    assert!(worst <= 1, "16-bit values changed by up to {worst}");
    let fine = got.iter().filter(|v| *v % 257 != 0).count();
    assert!(
        fine > got.len() / 2,
        "only {fine} values use more than 8 bits"
    );
}

#[test]
fn a_second_sigint_exits_at_once_leaving_no_partial_file() {
    weights();
    let out = tmp("twice.png");
    let (ck, log) = (tmp("twice.ckpt"), tmp("twice.jsonl"));
    let mut child = spawn(&render_args(
        &out,
        &[
            "--checkpoint",
            s(&ck),
            "--checkpoint-every",
            "1",
            "--json-log",
            s(&log),
        ],
    ));
    wait_for_log(&mut child, &log, 3);
    for _ in 0..2 {
        let k = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(k.success());
    }
    let r = child.wait_with_output().unwrap();
    assert_eq!(r.status.code(), Some(130));
    // Whatever was being written when the second signal came is either complete or gone.
    assert!(leftovers(&out, &ck).is_empty());
    if ck.exists() {
        checkpoint_position(&ck);
    }
    if out.exists() {
        image::open(&out).unwrap();
    }
}

/// A JSON log that cannot be written (a full disk: `/dev/full`) is a warning; the render
/// and its output go on.
#[cfg(target_os = "linux")]
#[test]
fn a_failing_json_log_is_a_warning_and_the_image_is_written() {
    weights();
    let out = tmp("fulllog.png");
    let mut a = render_args(&out, &["--iterations", "3", "--json-log", "/dev/full"]);
    a.retain(|x| x != "--quiet");
    let refs: Vec<&str> = a.iter().map(String::as_str).collect();
    let r = nst(&refs);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{err}");
    assert!(err.contains("warning: cannot write the JSON log"), "{err}");
    assert_eq!(image::open(&out).unwrap().width(), 96);
}

/// Resuming holds the checkpoint once, as the plan counts it: a checkpoint of about 660 MB
/// (4,000 L-BFGS pairs at 96x72) is resumed, the process is killed after its first
/// iteration, and its peak resident memory must stay within the plan `nst estimate` gives for
/// the same render plus 64 MB. The peak is the process's own (`VmHWM`, which the JSON log
/// records): a child's `ru_maxrss` would count the test process's memory too, which a
/// `vfork`ed child shares until it executes. Reading the whole file before decoding it (the old reader)
/// holds it twice while the process is otherwise small, and peaks about 300 MB over. (The
/// checkpoint is read before the weights are loaded, so a checkpoint smaller than the
/// plan's fixed base would not tell the readers apart.)
#[test]
fn resuming_a_large_checkpoint_stays_within_its_plan() {
    weights();
    let (out, ck, log) = (tmp("big.png"), tmp("big.ckpt"), tmp("big.jsonl"));
    let pairs = 4000;
    let settings = ["--iterations", "4000", "--lbfgs-history", "4000"];
    let mut first = settings.to_vec();
    first.extend(["--checkpoint", s(&ck), "--json-log", s(&log)]);
    let mut child = spawn(&render_args(&out, &first));
    wait_for_log(&mut child, &log, 3);
    let k = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(k.success());
    assert_eq!(child.wait().unwrap().code(), Some(130));
    // The history filled to the plan's 4,000 pairs (copies of the first; the memory is the
    // point, not the direction).
    let mut c = nst_style::Checkpoint::read_from(std::fs::File::open(&ck).unwrap()).unwrap();
    let nst_style::OptimizerState::Lbfgs(state) = &mut c.optimizer else {
        panic!("no L-BFGS state in the checkpoint")
    };
    assert!(!state.pairs.is_empty());
    while state.pairs.len() < pairs {
        state.pairs.push(state.pairs[0].clone());
    }
    let mut bytes = Vec::new();
    c.write_to(&mut bytes).unwrap();
    std::fs::write(&ck, &bytes).unwrap();
    let file = bytes.len() as u64;
    assert!(file > 600_000_000, "{file} bytes");
    drop(bytes);
    drop(c);
    // The plan of this render, as the CLI makes it.
    let mut est: Vec<String> = render_args(&out, &settings)
        .into_iter()
        .filter(|a| a != "--quiet")
        .collect();
    est[0] = "estimate".into();
    let o = est.iter().position(|a| a == "--out").unwrap();
    est.drain(o..o + 2);
    est.push("--json".into());
    let refs: Vec<&str> = est.iter().map(String::as_str).collect();
    let r = nst(&refs);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let plan: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    let plan = plan["peak_bytes"].as_u64().unwrap();
    // The resume, killed once it has made two iterations; its peak is the highest the log
    // records.
    let _ = std::fs::remove_file(&log);
    let mut again = settings.to_vec();
    again.extend(["--resume", s(&ck), "--json-log", s(&log)]);
    let mut child = spawn(&render_args(&out, &again));
    wait_for_log(&mut child, &log, 2);
    child.kill().unwrap();
    child.wait().unwrap();
    let peak = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["peak_rss_mb"].as_f64())
        .fold(0.0f64, f64::max);
    assert!(
        peak > 0.0,
        "the log records no peak (this test needs Linux's /proc)"
    );
    let peak = (peak * 1e6) as u64;
    let slack = 64_000_000;
    assert!(
        peak <= plan + slack,
        "resuming a {file}-byte checkpoint peaked at {peak} bytes, over its plan of {plan} + {slack}"
    );
    eprintln!("checkpoint {file} B: resume peak {peak} B, plan {plan} B");
    let _ = std::fs::remove_file(&ck);
}
