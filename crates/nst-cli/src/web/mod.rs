//! `nst render --web`: a small HTTP server beside the render (axum on a single-threaded tokio
//! runtime of its own) that shows the current image, the losses and a Stop button.
//!
//! The render thread only publishes: a progress record per iteration (a JSON string) and,
//! every few iterations, the current image, which an encoder thread scales to at most
//! [`PREVIEW_MAX`] px and encodes as PNG, so the render never waits for the browser.
//! Endpoints (documented in `docs/web.md`): `GET /`, `GET /image.png`, `GET /progress`,
//! `GET /history`, `GET /settings`, `GET /events` (Server-Sent Events) and `POST /stop`.
//!
//! Every request must name the server by the address it listens on (the `Host` header: its
//! IP, or `localhost` on loopback), so a web page cannot reach it through a rebinding domain,
//! and every route but the page itself needs the run's token (compared in constant time).
//! At most [`MAX_EVENT_CLIENTS`] event streams run at once; more are refused with 503.

use anyhow::{Context, Result};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use nst_style::Image;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// The longest side of the preview image sent to the browser.
pub(crate) const PREVIEW_MAX: usize = 1024;

/// The page, with its script and styles inline.
const PAGE: &str = include_str!("page.html");

/// The address `--web` binds without a value.
pub(crate) const DEFAULT_ADDR: &str = "127.0.0.1:8080";

/// The most `/events` streams served at once (each holds a connection and one record).
pub(crate) const MAX_EVENT_CLIENTS: usize = 64;

struct Shared {
    token: String,
    /// The address the server listens on (what `Host` must name).
    bound: SocketAddr,
    /// Open `/events` streams.
    event_clients: AtomicUsize,
    settings: String,
    /// The latest progress record.
    progress: watch::Sender<Arc<String>>,
    /// Every progress record so far (the page draws its plot from them when it opens).
    history: Mutex<Vec<Arc<String>>>,
    /// The latest preview PNG.
    image: Mutex<Option<Arc<Vec<u8>>>>,
    /// How many previews have been encoded (the page reloads the image when it grows).
    image_version: AtomicU64,
    stop: AtomicBool,
}

/// A running web view.
pub(crate) struct WebView {
    shared: Arc<Shared>,
    encoder: Encoder,
    url: String,
}

/// A thread that scales images to at most [`PREVIEW_MAX`] px, encodes them as PNG and hands
/// the bytes to a sink. One frame in flight at most: frames offered while it works are
/// dropped (the next one will do), so the render never waits for it.
pub(crate) struct Encoder {
    frames: Option<SyncSender<Image>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Encoder {
    /// Starts the thread; `sink` gets every encoded preview.
    pub(crate) fn start(
        name: &str,
        mut sink: impl FnMut(Vec<u8>) + Send + 'static,
    ) -> Result<Encoder> {
        let (frames, rx) = sync_channel::<Image>(1);
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                while let Ok(img) = rx.recv() {
                    if let Some(png) = preview_png(&img) {
                        sink(png);
                    }
                }
            })
            .with_context(|| format!("cannot start the {name} thread"))?;
        Ok(Encoder {
            frames: Some(frames),
            thread: Some(thread),
        })
    }

    /// Offers an image (dropped when the thread is busy).
    pub(crate) fn offer(&self, img: Image) {
        if let Some(f) = &self.frames {
            match f.try_send(img) {
                Ok(()) | Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {}
            }
        }
    }

    /// Encodes `img` and waits until the sink has it (the last image must not be dropped);
    /// the thread ends.
    pub(crate) fn finish(&mut self, img: Image) {
        if let Some(f) = self.frames.take() {
            let _ = f.send(img);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `nst render --preview FILE`: the current image, at most [`PREVIEW_MAX`] px, written to
/// FILE atomically every few iterations (for a program that watches the render, such as
/// `nst studio`).
pub(crate) struct PreviewFile {
    encoder: Encoder,
}

impl PreviewFile {
    pub(crate) fn start(path: std::path::PathBuf) -> Result<PreviewFile> {
        let encoder = Encoder::start("nst-preview", move |png| {
            // A preview is a convenience: one that cannot be written is skipped.
            let _ = nst_io::write_atomic(&path, |tmp| std::fs::write(tmp, &png));
        })?;
        Ok(PreviewFile { encoder })
    }

    pub(crate) fn offer(&self, img: Image) {
        self.encoder.offer(img);
    }

    pub(crate) fn finish(&mut self, img: Image) {
        self.encoder.finish(img);
    }
}

/// Serves `app` on `listener` (non-blocking) from a thread of its own, named `name`, with a
/// single-threaded tokio runtime (the web view's and the studio's server).
pub(crate) fn serve(listener: std::net::TcpListener, app: Router, name: &str) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .context("cannot start the server's runtime")?;
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            runtime.block_on(async move {
                if let Ok(l) = tokio::net::TcpListener::from_std(listener) {
                    let _ = axum::serve(l, app).await;
                }
            })
        })
        .context("cannot start the server thread")?;
    Ok(())
}

/// Parses `--web`'s address (`HOST:PORT`, or a port alone for 127.0.0.1).
pub(crate) fn parse_addr(s: &str) -> std::result::Result<SocketAddr, String> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.parse::<SocketAddr>()
        .map_err(|_| format!("expected HOST:PORT (e.g. {DEFAULT_ADDR}) or a port, got {s:?}"))
}

pub(crate) fn random_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl WebView {
    /// Binds `addr` (an error now, before any work, if it cannot) and serves on a thread of
    /// its own. `settings` is a JSON object shown on the page.
    pub(crate) fn start(addr: SocketAddr, settings: String) -> Result<WebView> {
        let listener = std::net::TcpListener::bind(addr)
            .with_context(|| format!("--web: cannot listen on {addr}"))?;
        listener
            .set_nonblocking(true)
            .context("--web: cannot configure the socket")?;
        let local = listener.local_addr().context("--web: no local address")?;
        let token = random_token();
        let starting = crate::record::WebEvent {
            state: crate::record::State::Starting,
            image: 0,
            running: None,
        };
        let (tx, _) = watch::channel(Arc::new(starting.to_json()));
        let shared = Arc::new(Shared {
            token: token.clone(),
            bound: local,
            event_clients: AtomicUsize::new(0),
            settings,
            progress: tx,
            history: Mutex::new(Vec::new()),
            image: Mutex::new(None),
            image_version: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        serve(listener, router(shared.clone()), "nst-web").context("--web")?;
        let enc_shared = shared.clone();
        let encoder = Encoder::start("nst-web-png", move |png| {
            *enc_shared.image.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(png));
            enc_shared.image_version.fetch_add(1, Ordering::SeqCst);
        })
        .context("--web")?;
        let host = if local.ip().is_unspecified() {
            "127.0.0.1".to_string()
        } else {
            local.ip().to_string()
        };
        let host = if local.is_ipv6() {
            format!("[{host}]")
        } else {
            host
        };
        Ok(WebView {
            shared,
            encoder,
            url: format!("http://{host}:{}/?token={token}", local.port()),
        })
    }

    /// The page's address with the run's token.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// Publishes a progress record (a JSON object).
    pub(crate) fn progress(&self, record: String) {
        let record = Arc::new(record);
        self.shared
            .history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(record.clone());
        self.shared.progress.send_replace(record);
    }

    /// Offers the current image to the encoder (dropped when it is busy).
    pub(crate) fn image(&self, img: Image) {
        self.encoder.offer(img);
    }

    /// Encodes `img` now, waiting for the encoder (the final image must be what the page
    /// shows).
    pub(crate) fn final_image(&mut self, img: Image) {
        self.encoder.finish(img);
    }

    /// How many previews have been encoded so far.
    pub(crate) fn image_version(&self) -> u64 {
        self.shared.image_version.load(Ordering::SeqCst)
    }

    /// With a page connected, gives it a moment to fetch the final record and image before
    /// the process (and the server) ends.
    pub(crate) fn linger(&self) {
        if self.shared.progress.receiver_count() > 0 {
            std::thread::sleep(Duration::from_millis(1500));
        }
    }

    /// Whether the page's Stop button was pressed.
    pub(crate) fn stop_requested(&self) -> bool {
        self.shared.stop.load(Ordering::SeqCst)
    }
}

/// The image scaled to at most [`PREVIEW_MAX`] px on its longer side, as 8-bit PNG bytes.
fn preview_png(img: &Image) -> Option<Vec<u8>> {
    scaled_png(img, PREVIEW_MAX)
}

/// The image scaled to at most `max` px on its longer side, as 8-bit PNG bytes.
pub(crate) fn scaled_png(img: &Image, max: usize) -> Option<Vec<u8>> {
    let (w, h) = (img.width(), img.height());
    let long = w.max(h).max(1);
    let img = if long > max {
        let s = max as f64 / long as f64;
        img.resize(
            ((w as f64 * s).round() as usize).max(1),
            ((h as f64 * s).round() as usize).max(1),
        )
    } else {
        img.clone()
    };
    let rgb: Vec<u8> = img
        .data()
        .iter()
        .map(|v| v.round().clamp(0.0, 255.0) as u8)
        .collect();
    let buf = image::RgbImage::from_raw(img.width() as u32, img.height() as u32, rgb)?;
    let mut out = std::io::Cursor::new(Vec::new());
    buf.write_to(&mut out, image::ImageFormat::Png).ok()?;
    Some(out.into_inner())
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/image.png", get(image_png))
        .route("/progress", get(progress))
        .route("/history", get(history))
        .route("/settings", get(settings))
        .route("/events", get(events))
        .route("/stop", post(stop))
        .layer(axum::middleware::from_fn_with_state(shared.clone(), guard))
        .with_state(shared)
}

/// Whether a `Host` header names the server at `bound`: its port, and as host the bound IP
/// (any IP literal when it listens on every interface), or `localhost` when it listens on
/// loopback or everywhere. A domain name is refused: that is how DNS rebinding gets in.
pub(crate) fn host_allowed(host: &str, bound: SocketAddr) -> bool {
    let (name, port) = match host.rsplit_once(':') {
        Some((n, p)) if !p.contains(']') => (n, p.parse::<u16>().ok()),
        _ => (host, Some(80)),
    };
    if port != Some(bound.port()) {
        return false;
    }
    let name = name.trim_end_matches('.');
    if name.eq_ignore_ascii_case("localhost") {
        return bound.ip().is_loopback() || bound.ip().is_unspecified();
    }
    let literal = name.trim_start_matches('[').trim_end_matches(']');
    match literal.parse::<IpAddr>() {
        Ok(ip) => bound.ip().is_unspecified() || ip == bound.ip(),
        Err(_) => false,
    }
}

/// Equality of two byte strings in time that depends on their lengths only.
pub(crate) fn same_token(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// The token a request carries: `?token=` or an `X-Nst-Token` header.
pub(crate) fn given_token<'a>(query: Option<&'a str>, headers: &'a HeaderMap) -> Option<&'a str> {
    let from_query = query.and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token=")));
    from_query.or_else(|| headers.get("x-nst-token").and_then(|v| v.to_str().ok()))
}

/// Every request: the `Host` check, then the token on every route but the page.
async fn guard(State(s): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    if !host.is_some_and(|h| host_allowed(h, s.bound)) {
        return (
            StatusCode::MISDIRECTED_REQUEST,
            "this server answers only to the address it listens on\n",
        )
            .into_response();
    }
    if req.uri().path() != "/" {
        let given = given_token(req.uri().query(), req.headers());
        if !given.is_some_and(|t| same_token(t.as_bytes(), s.token.as_bytes())) {
            return (StatusCode::FORBIDDEN, "a valid token is needed\n").into_response();
        }
    }
    next.run(req).await
}

fn json(body: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

async fn image_png(State(s): State<Arc<Shared>>) -> Response {
    let png = s.image.lock().unwrap_or_else(|p| p.into_inner()).clone();
    match png {
        Some(bytes) => (
            [
                (header::CONTENT_TYPE, "image/png"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            bytes.as_ref().clone(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no image yet\n").into_response(),
    }
}

async fn progress(State(s): State<Arc<Shared>>) -> Response {
    json(s.progress.borrow().as_ref().clone())
}

async fn history(State(s): State<Arc<Shared>>) -> Response {
    let h = s.history.lock().unwrap_or_else(|p| p.into_inner());
    let parts: Vec<&str> = h.iter().map(|r| r.as_str()).collect();
    json(format!("[{}]", parts.join(",")))
}

async fn settings(State(s): State<Arc<Shared>>) -> Response {
    json(s.settings.clone())
}

/// One open `/events` stream, counted while it lives.
struct EventClient(Arc<Shared>);

impl Drop for EventClient {
    fn drop(&mut self) {
        self.0.event_clients.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn events(State(s): State<Arc<Shared>>) -> Response {
    let taken = s
        .event_clients
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
            (n < MAX_EVENT_CLIENTS).then_some(n + 1)
        });
    if taken.is_err() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "10")],
            format!("too many event streams (at most {MAX_EVENT_CLIENTS}); try again later\n"),
        )
            .into_response();
    }
    let client = EventClient(s.clone());
    let rx = s.progress.subscribe();
    // The current record first, then one per change. Records published faster than the
    // client reads are coalesced (the latest wins), so a slow client holds one record, never
    // a queue; a client that stops reading stalls only its own stream.
    let stream =
        futures_util::stream::unfold((rx, true, client), |(mut rx, first, client)| async move {
            if !first && rx.changed().await.is_err() {
                return None;
            }
            let data = rx.borrow_and_update().as_ref().clone();
            Some((
                Ok::<_, std::convert::Infallible>(Event::default().data(data)),
                (rx, false, client),
            ))
        });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(10)))
        .into_response()
}

/// `POST /stop`: the token is checked by [`guard`]; when the request says where it comes
/// from (`Origin`), it must be the page's own origin.
async fn stop(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Some(origin) = headers.get(header::ORIGIN) {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        let same = match (origin.to_str().ok(), host) {
            (Some(o), Some(h)) => o == format!("http://{h}"),
            _ => false,
        };
        if !same {
            return (
                StatusCode::FORBIDDEN,
                "cross-origin requests cannot stop a render\n",
            )
                .into_response();
        }
    }
    s.stop.store(true, Ordering::SeqCst);
    json("{\"stopping\":true}".into())
}

#[cfg(test)]
mod tests {
    use super::{host_allowed, same_token};
    use std::net::SocketAddr;

    #[test]
    fn host_must_name_the_bound_address() {
        let lo: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        for ok in [
            "127.0.0.1:8080",
            "localhost:8080",
            "LOCALHOST:8080",
            "localhost.:8080",
        ] {
            assert!(host_allowed(ok, lo), "{ok}");
        }
        for bad in [
            "127.0.0.1:8081",
            "127.0.0.1",
            "127.0.0.2:8080",
            "evil.example:8080",
            "localhost.evil.example:8080",
            "[::1]:8080",
            "",
            ":8080",
        ] {
            assert!(!host_allowed(bad, lo), "{bad}");
        }
        let v6: SocketAddr = "[::1]:9000".parse().unwrap();
        assert!(host_allowed("[::1]:9000", v6));
        assert!(host_allowed("localhost:9000", v6));
        assert!(!host_allowed("[::2]:9000", v6));
        let any: SocketAddr = "0.0.0.0:80".parse().unwrap();
        for ok in ["10.0.0.7", "10.0.0.7:80", "[fe80::1]:80", "localhost"] {
            assert!(host_allowed(ok, any), "{ok}");
        }
        assert!(!host_allowed("nas.home.example", any));
        let lan: SocketAddr = "192.168.1.5:8080".parse().unwrap();
        assert!(!host_allowed("localhost:8080", lan));
        assert!(host_allowed("192.168.1.5:8080", lan));
    }

    #[test]
    fn tokens_compare_by_every_byte() {
        assert!(same_token(b"abcd", b"abcd"));
        assert!(!same_token(b"abcd", b"abce"));
        assert!(!same_token(b"abcd", b"xbcd"));
        assert!(!same_token(b"abcd", b"abc"));
        assert!(!same_token(b"", b"a"));
    }
}
