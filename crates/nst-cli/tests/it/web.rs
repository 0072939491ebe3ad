//! `nst render --web`: the endpoints over plain HTTP (token and origin checks, a graceful
//! stop), and the page in headless Chromium (the iteration advancing, the image, one plot
//! series per loss term, the Stop button).

use super::{images, weights, weights_path};
#[cfg(unix)]
use crate::cdp::Chromium;
use crate::features::{assert_fails_with, render_small, s, tmp};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A render with `--web` on a free port; returns the child, the page's URL (with the token),
/// and the channel of its remaining stderr lines. (Every caller waits for the child.)
/// A running `nst render --web`, killed when dropped: a failing test must not leave its
/// render of 100,000 iterations running.
struct Server(Child);

impl std::ops::Deref for Server {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Server {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(out: &Path, size: u32, extra: &[&str]) -> (Server, String, mpsc::Receiver<String>) {
    let c = images().join("tubingen.jpg");
    let st = images().join("starry_night.jpg");
    let size = size.to_string();
    // NST_WEB_ITERATIONS: a render that ends on its own (for the README's screenshot).
    let iterations = std::env::var("NST_WEB_ITERATIONS").unwrap_or_else(|_| "100000".into());
    let mut args = vec![
        "render",
        "--content",
        s(&c),
        "--style",
        s(&st),
        "--out",
        s(out),
        "--size",
        &size,
        "--iterations",
        &iterations,
        "--threads",
        "2",
        "--print-every",
        "100000",
        "--web",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    let mut child = Server(
        Command::new(env!("CARGO_BIN_EXE_nst"))
            .args(&args)
            .env("NST_WEIGHTS", weights_path())
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let (tx, rx) = mpsc::channel();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("nst printed the web view's URL");
        if let Some(url) = line.strip_prefix("web view: ") {
            return (child, url.to_string(), rx);
        }
    }
}

/// The `HOST:PORT` of a URL.
fn authority(url: &str) -> String {
    url.trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_string()
}

/// `(status, body)` of one HTTP/1.1 request.
fn http(url: &str, method: &str, path: &str, headers: &[&str]) -> (u16, Vec<u8>) {
    http_as(&authority(url), url, method, path, headers)
}

/// [`http`] with `host` in the `Host` header.
fn http_as(host: &str, url: &str, method: &str, path: &str, headers: &[&str]) -> (u16, Vec<u8>) {
    let mut stream = TcpStream::connect(authority(url)).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("Content-Length: 0\r\n\r\n");
    stream.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, raw[split + 4..].to_vec())
}

fn token(url: &str) -> &str {
    url.split("token=").nth(1).unwrap()
}

/// Waits for the child to exit (at most `secs`), killing it when it does not.
fn wait(child: &mut Child, secs: u64) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("nst did not end within {secs} s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub(crate) fn until<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_endpoints_answer_and_stopping_needs_the_token_and_the_origin() {
    weights();
    let out = tmp("web_http.png");
    let _ = std::fs::remove_file(&out);
    let (mut child, url, rx) = start(&out, 40, &[]);
    assert!(
        url.starts_with("http://127.0.0.1:") && token(&url).len() == 32,
        "{url}"
    );
    let t = token(&url).to_string();
    let with = |path: &str| format!("{path}?token={t}");
    // The token with its first character changed (to another: a fixed replacement equals
    // the token itself whenever the token starts with it, one run in sixteen).
    let wrong = format!("{}{}", if t.starts_with('0') { '1' } else { '0' }, &t[1..]);
    assert_ne!(wrong, t);
    let (st, page) = http(&url, "GET", "/", &[]);
    assert_eq!(st, 200);
    assert!(String::from_utf8_lossy(&page).contains("id=\"stop\""));
    let (st, settings) = http(&url, "GET", &with("/settings"), &[]);
    assert_eq!(st, 200);
    assert!(String::from_utf8_lossy(&settings).contains("\"style_loss\":\"gram\""));
    let progress = until("an iteration", 60, || {
        let (st, body) = http(&url, "GET", &with("/progress"), &[]);
        let text = String::from_utf8_lossy(&body).to_string();
        (st == 200 && text.contains("\"iteration\"")).then_some(text)
    });
    // The log's iteration record, with the view's fields and every term by name.
    let v: serde_json::Value = serde_json::from_str(&progress).unwrap();
    assert!(
        v["eta_s"].is_number() && v["step"].is_number(),
        "{progress}"
    );
    assert!(v["content/relu4_2"].is_number(), "{progress}");
    let png = until("an image", 60, || {
        let (st, body) = http(&url, "GET", &with("/image.png"), &[]);
        (st == 200).then_some(body)
    });
    let img = image::load_from_memory(&png).unwrap();
    assert_eq!((img.width(), img.height()), (40, 30));
    let (st, history) = http(&url, "GET", &with("/history"), &[]);
    assert_eq!(st, 200);
    assert!(history.starts_with(b"[{"));
    // The token in a header does as well as in the query.
    let token_header = format!("X-Nst-Token: {t}");
    assert_eq!(http(&url, "GET", "/progress", &[&token_header]).0, 200);
    // DNS rebinding: a foreign `Host` is refused on every route, token or not; `localhost`
    // names the loopback server.
    let port = authority(&url).rsplit(':').next().unwrap().to_string();
    for path in [
        "/",
        "/image.png",
        "/progress",
        "/history",
        "/settings",
        "/events",
    ] {
        for host in [
            format!("attacker.example:{port}"),
            format!("127.0.0.1.nip.example:{port}"),
            format!("10.1.2.3:{port}"),
            "127.0.0.1:1".to_string(),
            "127.0.0.1".to_string(),
        ] {
            let st = http_as(&host, &url, "GET", &with(path), &[]).0;
            assert_eq!(st, 421, "{path} with Host {host}");
        }
        // Without the token: only the page answers.
        let st = http(&url, "GET", path, &[]).0;
        assert_eq!(st, if path == "/" { 200 } else { 403 }, "{path}");
        let st = http(&url, "GET", &format!("{path}?token={wrong}"), &[]).0;
        assert_eq!(st, if path == "/" { 200 } else { 403 }, "{path}");
    }
    let local = format!("localhost:{port}");
    assert_eq!(http_as(&local, &url, "GET", &with("/progress"), &[]).0, 200);
    assert_eq!(
        http_as(
            &format!("attacker.example:{port}"),
            &url,
            "POST",
            &with("/stop"),
            &[]
        )
        .0,
        421
    );
    // No token, a wrong one, or another origin: refused, and the render goes on.
    assert_eq!(http(&url, "POST", "/stop", &[]).0, 403);
    assert_eq!(http(&url, "POST", "/stop?token=0123", &[]).0, 403);
    let cross = http(
        &url,
        "POST",
        &format!("/stop?token={t}"),
        &["Origin: http://attacker.example"],
    );
    assert_eq!(cross.0, 403);
    assert_eq!(http(&url, "GET", &with("/stop"), &[]).0, 405);
    assert!(
        child.try_wait().unwrap().is_none(),
        "a refused stop stopped it"
    );
    // The token in a header, from the page's own origin: the render ends gracefully.
    let origin = format!("Origin: http://{}", authority(&url));
    assert_eq!(
        http(&url, "POST", "/stop", &[&origin, &token_header]).0,
        200
    );
    let status = wait(&mut child, 60);
    let err: Vec<String> = rx.try_iter().collect();
    assert!(status.success(), "{err:?}");
    assert!(
        err.iter().any(|l| l.contains("stopped from the web view")),
        "{err:?}"
    );
    assert_eq!(image::open(&out).unwrap().width(), 40);
}

/// Opens `GET /events` and reads the status line only; the stream is left unread.
fn open_events(url: &str) -> (u16, BufReader<TcpStream>) {
    let host = authority(url);
    let mut stream = TcpStream::connect(&host).unwrap();
    let req = format!(
        "GET /events?token={} HTTP/1.1\r\nHost: {host}\r\n\r\n",
        token(url)
    );
    stream.write_all(req.as_bytes()).unwrap();
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status = line.split(' ').nth(1).unwrap().parse().unwrap();
    (status, r)
}

/// The render's current iteration, from `/progress`.
fn iteration(url: &str) -> u64 {
    let (_, body) = http(url, "GET", &format!("/progress?token={}", token(url)), &[]);
    serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["step"].as_u64())
        .unwrap_or(0)
}

#[test]
fn many_event_clients_are_capped_and_stalled_ones_neither_stall_the_render_nor_keep_their_slot() {
    weights();
    let out = tmp("web_load.png");
    let _ = std::fs::remove_file(&out);
    let (mut child, url, rx) = start(&out, 40, &[]);
    until("an iteration", 60, || (iteration(&url) > 0).then_some(()));
    // 200 clients that never read their stream: the first 64 are served, the rest get a 503.
    let cap = 64;
    let mut served = Vec::new();
    let mut refused = 0;
    for _ in 0..200 {
        let (st, r) = open_events(&url);
        match st {
            200 => served.push(r),
            503 => refused += 1,
            other => panic!("/events answered {other}"),
        }
    }
    assert_eq!((served.len(), refused), (cap, 200 - cap));
    // The render goes on while they stall, and the other routes still answer.
    let before = iteration(&url);
    until("the render advancing under load", 60, || {
        (iteration(&url) > before + 20).then_some(())
    });
    // Closing them gives their slots back.
    drop(served);
    let mut r = until("a free slot", 30, || {
        let (st, r) = open_events(&url);
        (st == 200).then_some(r)
    });
    let data = until("an event", 30, || {
        let mut line = String::new();
        r.read_line(&mut line).ok()?;
        line.starts_with("data: {").then_some(line)
    });
    assert!(data.contains("\"state\""), "{data}");
    child.kill().unwrap();
    let _ = child.wait();
    drop(rx);
}

#[test]
fn a_bad_or_busy_address_is_an_error_before_any_work() {
    weights();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().to_string();
    let out = tmp("web_bad.png");
    for (addr, needles) in [
        ("nowhere", &["HOST:PORT"][..]),
        (port.as_str(), &["cannot listen", &port][..]),
    ] {
        assert_fails_with(&render_small(&out, 32, 2, &["--web", addr]), needles);
    }
    // Beyond loopback only when asked, and with a warning.
    let r = render_small(&out, 32, 2, &["--web", "0.0.0.0:0"]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{err}");
    assert!(
        err.contains("warning: the web view listens on 0.0.0.0"),
        "{err}"
    );
}

/// Chromium: `$NST_CHROMIUM`, else the first of the usual names on the PATH.
#[cfg(unix)]
pub(crate) fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("NST_CHROMIUM") {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in ["chromium", "chromium-browser", "google-chrome", "chrome"] {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!("Chromium not found (cargo xtask test installs it; or set NST_CHROMIUM)");
}

#[cfg(unix)]
#[test]
#[ignore = "needs Chromium: `cargo xtask test` installs it and runs this test"]
fn the_page_in_a_real_browser_shows_the_render_and_stops_it() {
    weights();
    // NST_WEB_SIZE and NST_WEB_SCREENSHOT make the README's screenshot.
    let size: u32 = std::env::var("NST_WEB_SIZE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let out = tmp("web_browser.png");
    let _ = std::fs::remove_file(&out);
    let (mut child, url, rx) = start(&out, size, &[]);
    let tab = std::cell::RefCell::new(Chromium::open(&chromium(), &url, (1280, 900)));
    let eval = |js: &str| -> serde_json::Value { tab.borrow_mut().eval(js) };
    until("the page to load", 60, || {
        (eval("document.readyState").as_str() == Some("complete")).then_some(())
    });
    let iteration = || -> u64 {
        eval("document.getElementById('iteration').textContent")
            .as_str()
            .and_then(|t| t.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let first = until("the first iteration on the page", 120, || {
        let i = iteration();
        (i > 0).then_some(i)
    });
    until("the iteration advancing", 60, || {
        (iteration() > first).then_some(())
    });
    let (w, h) = until("the image", 60, || {
        let w = eval("document.getElementById('image').naturalWidth").as_u64()?;
        let h = eval("document.getElementById('image').naturalHeight").as_u64()?;
        (w > 0).then_some((w, h))
    });
    assert_eq!((w, h), (size as u64, (size * 3 / 4) as u64));
    // One series per loss term: content/relu4_2, five style layers, tv.
    until("the plot's series", 60, || {
        let n = eval("window.nstPlot.series.size").as_u64()?;
        let drawn = eval("document.getElementById('plot').dataset.series");
        (n == 7 && drawn.as_str() == Some("7")).then_some(())
    });
    if let Some(path) = std::env::var_os("NST_WEB_SCREENSHOT") {
        // Far enough into the render for a picture worth showing.
        until("iteration 80", 600, || (iteration() >= 80).then_some(()));
        std::thread::sleep(Duration::from_secs(1));
        let png = tab.borrow_mut().screenshot();
        std::fs::write(path, png).unwrap();
    }
    tab.borrow_mut().click("#stop");
    let status = wait(&mut child, 120);
    let err: Vec<String> = rx.try_iter().collect();
    assert!(status.success(), "{err:?}");
    assert!(
        err.iter().any(|l| l.contains("stopped from the web view")),
        "{err:?}"
    );
    assert_eq!(image::open(&out).unwrap().width(), size);
    until("the page to show the stop", 10, || {
        (eval("document.getElementById('state').textContent").as_str() == Some("stopped"))
            .then_some(())
    });
}
