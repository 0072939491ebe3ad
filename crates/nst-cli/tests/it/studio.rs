//! `nst studio`: the API over plain HTTP (every refusal with its status, the queue's order,
//! a kill -9 of the server mid-render and the same bytes after the restart), and the app in
//! headless Chromium (upload, render, watch, stop, resume, download, history after a
//! restart).

use super::{images, weights_path};
#[cfg(unix)]
use crate::cdp::Chromium;
use crate::features::tmp;
use crate::web::until;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `nst studio`, killed when dropped.
struct Studio {
    child: Child,
    /// `HOST:PORT`.
    addr: String,
    token: String,
    data: PathBuf,
}

impl Drop for Studio {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `nst studio` on a free port over `data` with the test model, `extra` options.
fn start(data: &Path, extra: &[&str]) -> Studio {
    let child = Command::new(env!("CARGO_BIN_EXE_nst"))
        .args([
            "studio",
            "--addr",
            "127.0.0.1:0",
            "--threads",
            "2",
            "--data",
        ])
        .arg(data)
        .arg("--weights")
        // NST_STUDIO_WEIGHTS: the real network, for the README's screenshot.
        .arg(std::env::var_os("NST_STUDIO_WEIGHTS").unwrap_or_else(|| weights_path().into()))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nst studio starts");
    // Owned at once, so a failure below kills it.
    let mut st = Studio {
        child,
        addr: String::new(),
        token: String::new(),
        data: data.to_path_buf(),
    };
    let err = st.child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("nst studio printed no URL: {seen:?}"));
        if let Some(url) = line.strip_prefix("studio: http://") {
            let (addr, rest) = url.split_once('/').unwrap();
            st.addr = addr.to_string();
            st.token = rest.split("token=").nth(1).unwrap().to_string();
            return st;
        }
        seen.push(line);
    }
}

/// `(status, body)` of one HTTP/1.1 request to `addr` naming `host`, with `body`.
pub(crate) fn request(
    addr: &str,
    host: &str,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &[u8],
) -> (u16, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    stream.write_all(req.as_bytes()).unwrap();
    // A server that answers before reading the whole body may close early.
    let _ = stream.write_all(body);
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let mut body = raw[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = unchunk(&body);
    }
    (status, body)
}

fn unchunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(i) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let n = usize::from_str_radix(std::str::from_utf8(&b[..i]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[i + 2..i + 2 + n]);
        b = &b[i + 2 + n + 2..];
    }
}

impl Studio {
    /// An API call with the token; the status and the JSON body.
    fn api(&self, method: &str, path: &str, body: &[u8]) -> (u16, Value) {
        let token = format!("X-Nst-Token: {}", self.token);
        let (st, b) = request(&self.addr, &self.addr, method, path, &[&token], body);
        (st, serde_json::from_slice(&b).unwrap_or(Value::Null))
    }

    fn upload(&self, path: &Path) -> String {
        let (st, v) = self.api("POST", "/api/uploads", &std::fs::read(path).unwrap());
        assert_eq!(st, 201, "{v}");
        v["id"].as_str().unwrap().to_string()
    }

    fn job(&self, id: i64) -> Value {
        let (st, v) = self.api("GET", &format!("/api/jobs/{id}"), b"");
        assert_eq!(st, 200, "{v}");
        v
    }

    fn create(&self, spec: &Value) -> i64 {
        let (st, v) = self.api("POST", "/api/jobs", spec.to_string().as_bytes());
        assert_eq!(st, 201, "{v}");
        v["id"].as_i64().unwrap()
    }

    /// Waits until job `id` is in `state` (failing on `failed`).
    fn wait_state(&self, id: i64, state: &str, secs: u64) -> Value {
        until(&format!("render {id} to be {state}"), secs, || {
            let j = self.job(id);
            assert!(
                j["state"] != "failed" || state == "failed",
                "render {id} failed: {}",
                j["error"]
            );
            (j["state"] == state).then_some(j)
        })
    }

    fn result(&self, id: i64) -> Vec<u8> {
        std::fs::read(
            self.data
                .join("jobs")
                .join(id.to_string())
                .join("result.png"),
        )
        .unwrap()
    }
}

fn fresh(name: &str) -> PathBuf {
    let d = tmp(name);
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn spec(content: &str, style: &str, iterations: u32) -> Value {
    json!({
        "content": content,
        "styles": [{ "upload": style }],
        "size": 64,
        "iterations": iterations,
    })
}

/// The files in the uploads folder whose names start with a dot (partial uploads).
fn partial_uploads(data: &Path) -> Vec<String> {
    std::fs::read_dir(data.join("uploads"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect()
}

/// A PNG whose header claims 100000 x 100000 pixels (a decompression bomb's signature).
fn bomb() -> Vec<u8> {
    let img = image::RgbImage::new(1, 1);
    let mut png = std::io::Cursor::new(Vec::new());
    img.write_to(&mut png, image::ImageFormat::Png).unwrap();
    let mut b = png.into_inner();
    // IHDR's width and height, then its CRC over the type and data.
    b[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    b[20..24].copy_from_slice(&100_000u32.to_be_bytes());
    let crc = crc32(&b[12..29]);
    b[29..33].copy_from_slice(&crc.to_be_bytes());
    b
}

fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for &byte in data {
        c ^= byte as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

#[test]
fn every_refusal_has_its_status_and_leaves_nothing_behind() {
    let data = fresh("studio-refusals");
    let st = start(&data, &["--max-upload", "450K"]);
    let token = format!("X-Nst-Token: {}", st.token);
    // The page needs no token; the API does; a foreign Host gets nothing.
    assert_eq!(request(&st.addr, &st.addr, "GET", "/", &[], b"").0, 200);
    assert_eq!(
        request(&st.addr, &st.addr, "GET", "/api/jobs", &[], b"").0,
        403
    );
    let wrong = "X-Nst-Token: 00000000000000000000000000000000";
    assert_eq!(
        request(&st.addr, &st.addr, "GET", "/api/jobs", &[wrong], b"").0,
        403
    );
    let evil = format!("evil.example:{}", st.addr.rsplit(':').next().unwrap());
    assert_eq!(request(&st.addr, &evil, "GET", "/", &[], b"").0, 421);
    assert_eq!(
        request(&st.addr, &evil, "GET", "/api/jobs", &[&token], b"").0,
        421
    );
    // Another origin cannot change anything, even with the token.
    let (code, _) = request(
        &st.addr,
        &st.addr,
        "POST",
        "/api/uploads",
        &[&token, "Origin: http://evil.example"],
        b"x",
    );
    assert_eq!(code, 403);

    let photo = st.upload(&images().join("tubingen.jpg"));
    let painting = st.upload(&images().join("starry_night.jpg"));
    // The same bytes are the same upload.
    assert_eq!(st.upload(&images().join("tubingen.jpg")), photo);
    // Over --max-upload (813 KB against 450 KB).
    let big = std::fs::read(images().join("tubingen.jpg"))
        .unwrap()
        .repeat(2);
    let (code, body) = st.api("POST", "/api/uploads", &big);
    assert_eq!(code, 413, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("--max-upload"),
        "{body}"
    );
    // A bomb is refused from its header; junk does not decode; nothing empty is kept.
    let (code, body) = st.api("POST", "/api/uploads", &bomb());
    assert_eq!(code, 422, "{body}");
    assert!(body["error"].as_str().unwrap().contains("pixels"), "{body}");
    let (code, body) = st.api("POST", "/api/uploads", b"this is not an image at all");
    assert_eq!(code, 422, "{body}");
    assert_eq!(st.api("POST", "/api/uploads", b"").0, 400);
    // A client that vanishes mid-upload.
    {
        let mut s = TcpStream::connect(&st.addr).unwrap();
        write!(
            s,
            "POST /api/uploads HTTP/1.1\r\nHost: {}\r\n{token}\r\nContent-Length: 400000\r\n\r\n",
            st.addr
        )
        .unwrap();
        s.write_all(&big[..100_000]).unwrap();
    }
    until("the cut-off upload to be removed", 20, || {
        partial_uploads(&data).is_empty().then_some(())
    });

    // Paths are never inputs; unknown ids are 404; bad ids 400.
    let (code, body) = st.api(
        "POST",
        "/api/jobs",
        spec("../../../../etc/passwd", &painting, 5)
            .to_string()
            .as_bytes(),
    );
    assert_eq!(code, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("not an upload id"));
    let unknown = "0123456789abcdef0123456789abcdef";
    let (code, _) = st.api(
        "POST",
        "/api/jobs",
        spec(&photo, unknown, 5).to_string().as_bytes(),
    );
    assert_eq!(code, 404);
    let (code, _) = st.api(
        "POST",
        "/api/jobs",
        json!({"content": photo, "styles": [{"upload": painting}], "out": "/tmp/x"})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(code, 400);
    let (code, info) = st.api("GET", &format!("/api/uploads/{photo}"), b"");
    assert_eq!((code, info["width"].as_u64()), (200, Some(1024)), "{info}");
    assert_eq!(st.api("GET", "/api/uploads/..%2Fstudio.sqlite", b"").0, 400);
    assert_eq!(st.api("GET", "/api/jobs/999", b"").0, 404);
    assert_eq!(st.api("GET", "/api/jobs/..%2F..%2Fetc", b"").0, 400);
    assert_eq!(st.api("GET", "/api/jobs/999/result.png", b"").0, 404);
    assert_eq!(
        st.api("GET", "/api/uploads/..%2F..%2Fetc%2Fpasswd/thumb.png", b"")
            .0,
        400
    );
    assert_eq!(
        st.api("GET", &format!("/api/uploads/{unknown}/thumb.png"), b"")
            .0,
        404
    );
    let (code, body) = st.api(
        "POST",
        "/api/estimate",
        spec(&photo, &painting, 5).to_string().as_bytes(),
    );
    assert_eq!(code, 200, "{body}");
    assert!(body["seconds"].as_f64().unwrap() >= 0.0 && body["peak_bytes"].as_u64().unwrap() > 0);

    // The queue: the first render runs, the third is moved to the front, the second is held
    // and cancelled, the rest run in order.
    let a = st.create(&spec(&photo, &painting, 400));
    st.wait_state(a, "running", 60);
    let b = st.create(&spec(&photo, &painting, 3));
    let c = st.create(&spec(&photo, &painting, 3));
    let d = st.create(&spec(&photo, &painting, 3));
    let (code, _) = st.api("POST", &format!("/api/jobs/{d}/move"), br#"{"to":"top"}"#);
    assert_eq!(code, 200);
    let (code, _) = st.api(
        "POST",
        &format!("/api/jobs/{d}/move"),
        br#"{"to":"sideways"}"#,
    );
    assert_eq!(code, 400);
    assert_eq!(st.api("POST", &format!("/api/jobs/{b}/stop"), b"").0, 200);
    let (_, list) = st.api("GET", "/api/jobs", b"");
    let order: Vec<(i64, String)> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["state"] == "queued" || j["state"] == "running")
        .map(|j| {
            (
                j["id"].as_i64().unwrap(),
                j["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        order,
        [
            (a, "running".into()),
            (d, "queued".into()),
            (c, "queued".into())
        ]
    );
    assert_eq!(
        st.api("POST", &format!("/api/jobs/{a}/move"), br#"{"to":"top"}"#)
            .0,
        409
    );
    assert_eq!(st.api("DELETE", &format!("/api/jobs/{a}"), b"").0, 409);
    assert_eq!(st.api("POST", &format!("/api/jobs/{b}/cancel"), b"").0, 200);
    assert_eq!(st.api("POST", &format!("/api/jobs/{a}/cancel"), b"").0, 200);
    st.wait_state(a, "canceled", 60);
    let jd = st.wait_state(d, "done", 60);
    let jc = st.wait_state(c, "done", 60);
    assert!(jd["started"].as_f64() < jc["started"].as_f64(), "{jd} {jc}");
    assert_eq!(st.job(b)["state"], "canceled");
    // A finished render downloads at 16 bits, or 8.
    let (code, png16) = request(
        &st.addr,
        &st.addr,
        "GET",
        &format!("/api/jobs/{c}/result.png?depth=16&token={}", st.token),
        &[],
        b"",
    );
    assert_eq!(code, 200);
    assert_eq!(png16, st.result(c));
    let (code, png8) = st.api_raw(&format!("/api/jobs/{c}/result.png?depth=8"));
    assert_eq!(code, 200);
    let img = image::load_from_memory(&png8).unwrap();
    assert_eq!(
        (img.width(), img.height(), img.color()),
        (64, 48, image::ColorType::Rgb8)
    );
    // Two paintings in regions: masks are uploads too.
    let scream = st.upload(&images().join("the_scream.jpg"));
    let masks: Vec<String> = [false, true]
        .iter()
        .map(|&right| {
            let m = image::GrayImage::from_fn(64, 48, |x, _| {
                image::Luma([if (x >= 32) == right { 255 } else { 0 }])
            });
            let mut png = std::io::Cursor::new(Vec::new());
            m.write_to(&mut png, image::ImageFormat::Png).unwrap();
            let (code, v) = st.api("POST", "/api/uploads", &png.into_inner());
            assert_eq!(code, 201, "{v}");
            v["id"].as_str().unwrap().to_string()
        })
        .collect();
    let regions = st.create(&json!({
        "content": photo,
        "styles": [{ "upload": painting }, { "upload": scream }],
        "masks": masks,
        "size": 64,
        "iterations": 3,
    }));
    st.wait_state(regions, "done", 60);
    // The masks change the picture: the same paintings blended everywhere differ.
    let blended = st.create(&json!({
        "content": photo,
        "styles": [{ "upload": painting }, { "upload": scream }],
        "size": 64,
        "iterations": 3,
    }));
    st.wait_state(blended, "done", 60);
    assert_ne!(st.result(regions), st.result(blended));
    // Uploads at once from several clients: one file, one id, nothing partial.
    let bytes = std::fs::read(images().join("shipwreck.jpg")).unwrap();
    let ids: Vec<String> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..6)
            .map(|_| {
                sc.spawn(|| {
                    let (code, v) = st.api("POST", "/api/uploads", &bytes);
                    assert_eq!(code, 201, "{v}");
                    v["id"].as_str().unwrap().to_string()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(ids.iter().all(|i| *i == ids[0]), "{ids:?}");
    let (code, thumb) = st.api_raw(&format!("/api/uploads/{}/thumb.png", ids[0]));
    assert_eq!(code, 200);
    let t = image::load_from_memory(&thumb).unwrap();
    assert_eq!(t.width().max(t.height()), 256);
    // Again, then delete.
    let (code, v) = st.api("POST", &format!("/api/jobs/{c}/again"), b"");
    assert_eq!(code, 201);
    let again = v["id"].as_i64().unwrap();
    st.wait_state(again, "done", 60);
    assert_eq!(
        st.result(again),
        st.result(c),
        "the same settings give the same bytes"
    );
    assert_eq!(st.api("DELETE", &format!("/api/jobs/{again}"), b"").0, 200);
    assert_eq!(st.api("GET", &format!("/api/jobs/{again}"), b"").0, 404);
    assert!(!st.data.join("jobs").join(again.to_string()).exists());
    assert!(partial_uploads(&data).is_empty());
}

impl Studio {
    fn api_raw(&self, path: &str) -> (u16, Vec<u8>) {
        let token = format!("X-Nst-Token: {}", self.token);
        request(&self.addr, &self.addr, "GET", path, &[&token], b"")
    }
}

#[test]
fn a_second_studio_a_foreign_database_and_a_bad_address_are_refused() {
    let data = fresh("studio-refuse-start");
    let first = start(&data, &[]);
    let out = Command::new(env!("CARGO_BIN_EXE_nst"))
        .args(["studio", "--addr", "127.0.0.1:0", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("another nst studio is using"), "{err}");
    drop(first);
    // A database that is not nst's is left alone.
    let other = fresh("studio-foreign");
    std::fs::create_dir_all(&other).unwrap();
    let junk = b"SQLite format 3\0 but then nothing a database would hold, repeated ".repeat(64);
    std::fs::write(other.join("studio.sqlite"), &junk).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_nst"))
        .args(["studio", "--addr", "127.0.0.1:0", "--data"])
        .arg(&other)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("will not change it"), "{err}");
    assert_eq!(std::fs::read(other.join("studio.sqlite")).unwrap(), junk);
    let out = Command::new(env!("CARGO_BIN_EXE_nst"))
        .args(["studio", "--addr", "nowhere", "--data"])
        .arg(&other)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// The processes whose command line names `needle`.
#[cfg(target_os = "linux")]
fn processes_naming(needle: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(needle))
                .unwrap_or(false)
        })
        .collect()
}

#[cfg(target_os = "linux")]
#[test]
fn a_server_killed_mid_render_resumes_it_with_the_same_bytes() {
    let data = fresh("studio-kill9");
    let mut st = start(&data, &["--checkpoint-every", "4"]);
    let photo = st.upload(&images().join("tubingen.jpg"));
    let painting = st.upload(&images().join("starry_night.jpg"));
    let interrupted = st.create(&spec(&photo, &painting, 300));
    until("a checkpoint and some iterations", 120, || {
        let j = st.job(interrupted);
        let step = j["live"]["step"].as_u64().unwrap_or(0);
        let ckpt = data
            .join("jobs")
            .join(interrupted.to_string())
            .join("render.ckpt");
        (step >= 30 && ckpt.is_file()).then_some(())
    });
    let job_dir = data.join("jobs").join(interrupted.to_string());
    let needle = job_dir.join("result.png").display().to_string();
    assert_eq!(processes_naming(&needle).len(), 1, "the render runs");
    // SIGKILL: no handler runs; the render dies with its server.
    st.child.kill().unwrap();
    st.child.wait().unwrap();
    until("the render to die with the server", 10, || {
        processes_naming(&needle).is_empty().then_some(())
    });
    assert!(st.job_after_kill_is_unreachable());
    drop(st);
    let st = start(&data, &["--checkpoint-every", "4"]);
    let done = st.wait_state(interrupted, "done", 300);
    let log = std::fs::read_to_string(job_dir.join("log.jsonl")).unwrap();
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("\"event\":\"start\""))
            .count(),
        2,
        "one start per run: resumed, not restarted"
    );
    assert!(done["seconds"].as_f64().unwrap() > 0.0);
    // The same settings uninterrupted.
    let straight = st.create(&spec(&photo, &painting, 300));
    st.wait_state(straight, "done", 300);
    assert_eq!(st.result(interrupted), st.result(straight));
    // The history survived the restart.
    let (_, list) = st.api("GET", "/api/jobs", b"");
    assert_eq!(list.as_array().unwrap().len(), 2);
}

impl Studio {
    /// After a kill, the old address answers no more.
    fn job_after_kill_is_unreachable(&self) -> bool {
        TcpStream::connect(&self.addr).is_err()
    }
}

/// Chromium: `$NST_CHROMIUM`, else the first of the usual names on the PATH.
#[cfg(unix)]
fn chromium() -> PathBuf {
    super::web::chromium()
}

#[cfg(unix)]
#[test]
#[ignore = "needs Chromium: `cargo xtask test` installs it and runs this test"]
fn the_app_in_a_real_browser_renders_stops_resumes_and_keeps_its_history() {
    let data = fresh("studio-browser");
    let st = start(&data, &["--checkpoint-every", "10"]);
    let url = format!("http://{}/?token={}", st.addr, st.token);
    let mut tab = Chromium::open(&chromium(), &url, (1400, 1000));
    // Waits for `js` to be true; on a timeout, says what the page shows.
    let wait_js = |tab: &mut Chromium, what: &str, secs: u64, js: &str| {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while tab.eval(js).as_bool() != Some(true) {
            if Instant::now() > deadline {
                let shown = tab.eval(
                    "JSON.stringify({error: document.getElementById('new-error').textContent, \
                     conn: document.getElementById('conn').textContent, \
                     photo: document.getElementById('photo-thumb').innerHTML, \
                     queue: document.getElementById('queue').textContent, \
                     live: document.getElementById('live').src, \
                     step: document.getElementById('live-step').textContent, \
                     running: document.getElementById('live-box').style.display, \
                     natural: document.getElementById('live').naturalWidth, \
                     complete: document.getElementById('live').complete, \
                     size: document.getElementById('size').value, \
                     iterations: document.getElementById('iterations').value, \
                     paintings: document.querySelectorAll('#painting-thumbs img').length, \
                     edit: JSON.stringify(document.getElementById('edit').getBoundingClientRect())})",
                );
                panic!("timed out waiting for {what}; the page shows {shown}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_js(
        &mut tab,
        "the page",
        60,
        "document.readyState === 'complete' && !!document.getElementById('start')",
    );
    if std::env::var_os("NST_STUDIO_SCREENSHOT").is_some() {
        // Two earlier renders for the history in the picture.
        for (c, p) in [
            ("golden_gate.jpg", "the_scream.jpg"),
            ("hoovertowernight.jpg", "woman-with-hat-matisse.jpg"),
        ] {
            let mut v = spec(
                &st.upload(&images().join(c)),
                &st.upload(&images().join(p)),
                1,
            );
            v["size"] = json!(256);
            v["quality"] = json!("draft");
            v.as_object_mut().unwrap().remove("iterations");
            let id = st.create(&v);
            st.wait_state(id, "done", 900);
        }
    }
    // A user picks a photo and a painting.
    // Chromium reads picked files itself; the shared images' folder is a mount it refuses
    // to read from ("NotReadableError"), so the test picks copies in its own folder.
    let pick = |name: &str| -> PathBuf {
        let copy = data.with_extension(name);
        std::fs::copy(images().join(name), &copy).unwrap();
        copy
    };
    let (photo, painting) = (pick("tubingen.jpg"), pick("starry_night.jpg"));
    tab.set_files("#photo", &[&photo]);
    wait_js(&mut tab, "the photo's thumbnail", 60, "!!document.querySelector('#photo-thumb img') && document.querySelector('#photo-thumb img').naturalWidth > 0");
    tab.set_files("#paintings", &[&painting]);
    wait_js(&mut tab, "the painting's thumbnail", 60, "!!document.querySelector('#painting-thumbs img') && document.querySelector('#painting-thumbs img').naturalWidth > 0");
    // NST_STUDIO_SIZE and NST_STUDIO_SCREENSHOT make the README's screenshot.
    let size: u32 = std::env::var("NST_STUDIO_SIZE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(96);
    let iterations = if size > 96 { 300 } else { 400 };
    tab.eval(&format!(
        "document.getElementById('size').value = {size}; \
         document.getElementById('iterations').value = {iterations}; \
         document.getElementById('size').dispatchEvent(new Event('change'))"
    ));
    wait_js(
        &mut tab,
        "the estimate",
        60,
        "document.getElementById('estimate').textContent.startsWith('about')",
    );
    tab.click("#start");
    // It paints: the live image appears and changes.
    wait_js(
        &mut tab,
        "the live image",
        120,
        &format!("document.getElementById('live').naturalWidth === {size}"),
    );
    let id = tab
        .eval("+document.getElementById('live-stop').dataset.job")
        .as_i64()
        .expect("the running render's id");
    let first = tab
        .eval("+document.getElementById('live').dataset.version")
        .as_f64()
        .unwrap();
    until("the live image to update", 60, || {
        let v = tab
            .eval("+document.getElementById('live').dataset.version")
            .as_f64()?;
        (v > first).then_some(())
    });
    wait_js(
        &mut tab,
        "the progress",
        30,
        &format!(
            "/^\\d+ \\/ {iterations}$/.test(document.getElementById('live-step').textContent)"
        ),
    );
    if let Some(path) = std::env::var_os("NST_STUDIO_SCREENSHOT") {
        until("a picture worth showing", 600, || {
            let t = tab.eval("document.getElementById('live-step').textContent");
            let n: u64 = t.as_str()?.split(' ').next()?.parse().ok()?;
            (n >= 150).then_some(())
        });
        std::thread::sleep(Duration::from_millis(1500));
        std::fs::write(path, tab.screenshot()).unwrap();
    }
    // Stop; it waits in the queue; resume; it finishes.
    tab.click("#live-stop");
    wait_js(
        &mut tab,
        "the render to stop",
        60,
        "[...document.querySelectorAll('#queue .state')].some(e => e.textContent === 'stopped')",
    );
    assert_eq!(st.job(id)["state"], "stopped");
    tab.click("#queue [data-act=resume]");
    wait_js(
        &mut tab,
        "the render to finish",
        300,
        &format!("!!document.querySelector('#history [data-open=\"{id}\"]')"),
    );
    assert_eq!(st.job(id)["state"], "done");
    // Open it: before/after, and the download is the server's file.
    tab.click(&format!("#history [data-open=\"{id}\"]"));
    wait_js(&mut tab, "the comparison", 30, &format!("document.getElementById('after').naturalWidth === {size} && document.getElementById('before').naturalWidth > 0"));
    let bytes = tab.eval_async(
        "fetch(document.getElementById('download16').href).then(r => r.arrayBuffer()).then(b => Array.from(new Uint8Array(b)))",
    );
    let bytes: Vec<u8> = bytes
        .as_array()
        .expect("the download's bytes")
        .iter()
        .map(|v| v.as_u64().unwrap() as u8)
        .collect();
    assert_eq!(bytes, st.result(id), "the download is the rendered file");
    let img = image::load_from_memory(&bytes).unwrap();
    assert_eq!(img.color(), image::ColorType::Rgb16);
    // "Edit settings" puts the render's settings back in a changed form.
    tab.eval(
        "document.getElementById('size').value = 512; \
         document.querySelector('#painting-thumbs [data-remove]').click(); 1",
    );
    wait_js(
        &mut tab,
        "the painting removed",
        10,
        "document.querySelectorAll('#painting-thumbs img').length === 0",
    );
    tab.click("#edit");
    wait_js(
        &mut tab,
        "the settings back in the form",
        30,
        &format!(
            "document.getElementById('size').value === '{size}' && \
             document.getElementById('iterations').value === '{iterations}' && \
             document.querySelectorAll('#painting-thumbs img').length === 1"
        ),
    );
    drop(tab);
    // After a restart the history is there.
    drop(st);
    let st = start(&data, &[]);
    let url = format!("http://{}/?token={}", st.addr, st.token);
    let mut tab = Chromium::open(&chromium(), &url, (1400, 1000));
    let card = format!("document.querySelector('#history [data-open=\"{id}\"] img')");
    wait_js(
        &mut tab,
        "the history after a restart",
        60,
        &format!("!!{card} && {card}.naturalWidth > 0"),
    );
}

#[test]
fn the_page_is_served_whole_with_no_external_resource() {
    let data = fresh("studio-page");
    let st = start(&data, &[]);
    let (code, page) = request(&st.addr, &st.addr, "GET", "/", &[], b"");
    assert_eq!(code, 200);
    let page = String::from_utf8(page).unwrap();
    assert!(page.contains("<title>nst studio</title>"));
    for external in ["http://", "https://", "//cdn", "<link"] {
        assert!(!page.contains(external), "{external}");
    }
}

#[cfg(unix)]
#[test]
fn a_terminated_server_stops_its_render_at_a_checkpoint_and_resumes_it_next_time() {
    let data = fresh("studio-term");
    let mut st = start(&data, &[]);
    let photo = st.upload(&images().join("tubingen.jpg"));
    let painting = st.upload(&images().join("starry_night.jpg"));
    let id = st.create(&spec(&photo, &painting, 400));
    until("some iterations", 120, || {
        let step = st.job(id)["live"]["step"].as_u64().unwrap_or(0);
        (step >= 10).then_some(())
    });
    let killed = Command::new("kill")
        .args(["-TERM", &st.child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = st.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the studio did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(143));
    let job_dir = data.join("jobs").join(id.to_string());
    assert!(
        job_dir.join("render.ckpt").is_file(),
        "stopped at a checkpoint"
    );
    drop(st);
    let st = start(&data, &[]);
    st.wait_state(id, "done", 300);
    let log = std::fs::read_to_string(job_dir.join("log.jsonl")).unwrap();
    assert_eq!(log.matches("\"event\":\"start\"").count(), 2, "resumed");
    assert!(
        !job_dir.join("render.ckpt").exists(),
        "a finished render keeps no checkpoint"
    );
}
