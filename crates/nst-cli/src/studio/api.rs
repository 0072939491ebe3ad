//! The studio's HTTP side: the page at `/` and the JSON API under `/api/` (documented in
//! docs/studio.md). Every request must name the server by its address (`Host`), every one
//! but the page's must carry the token, and a state-changing one that says where it comes
//! from (`Origin`) must come from the page's own origin. Errors are `{"error": "…"}` with
//! the status that says what went wrong.

use super::db::{State as JobState, Upload};
use super::spec::{is_upload_id, JobFiles, Spec};
use super::worker::Action;
use super::Studio;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;

/// The page, with its script and styles inline (no external resource).
const PAGE: &str = include_str!("page.html");

/// The longest side of an upload's thumbnail and of its view (the page's before/after).
const THUMB: usize = 256;
const VIEW: usize = 1024;

type S = State<Arc<Studio>>;

pub(super) fn router(studio: Arc<Studio>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/api/status", get(status))
        .route("/api/uploads", post(upload))
        .route("/api/uploads/{id}", get(upload_info))
        .route("/api/uploads/{id}/{file}", get(upload_file))
        .route("/api/estimate", post(estimate))
        .route("/api/jobs", get(jobs).post(create))
        .route("/api/jobs/{id}", get(job).delete(delete))
        .route("/api/jobs/{id}/{file}", get(job_file).post(job_action))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn_with_state(studio.clone(), guard))
        .with_state(studio)
}

/// `{"error": msg}` with `status`.
fn fail(status: StatusCode, msg: impl std::fmt::Display) -> Response {
    let body = serde_json::json!({ "error": msg.to_string() }).to_string();
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

fn json(status: StatusCode, v: serde_json::Value) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        v.to_string(),
    )
        .into_response()
}

fn internal(e: anyhow::Error) -> Response {
    fail(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}"))
}

/// A refused request: its status and message (a small `Err` for the checks below).
struct Refusal(StatusCode, String);

impl Refusal {
    fn internal(e: anyhow::Error) -> Refusal {
        Refusal(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}"))
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        fail(self.0, self.1)
    }
}

/// The `Host` check, the token, and the origin of state-changing requests.
async fn guard(State(s): S, req: Request, next: Next) -> Response {
    let headers = req.headers();
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    if !host.is_some_and(|h| crate::web::host_allowed(h, s.bound)) {
        return fail(
            StatusCode::MISDIRECTED_REQUEST,
            "this server answers only to the address it listens on",
        );
    }
    let is_page = req.uri().path() == "/" && req.method() == Method::GET;
    if !is_page {
        let given = crate::web::given_token(req.uri().query(), headers);
        if !given.is_some_and(|t| crate::web::same_token(t.as_bytes(), s.token.as_bytes())) {
            return fail(StatusCode::FORBIDDEN, "a valid token is needed");
        }
    }
    if req.method() != Method::GET {
        if let Some(origin) = headers.get(header::ORIGIN) {
            let same = matches!((origin.to_str().ok(), host), (Some(o), Some(h)) if o == format!("http://{h}"));
            if !same {
                return fail(StatusCode::FORBIDDEN, "cross-origin requests are refused");
            }
        }
    }
    next.run(req).await
}

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Html(PAGE),
    )
        .into_response()
}

async fn status(State(s): S) -> Response {
    json(
        StatusCode::OK,
        serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "device": s.machine.device,
            "max_upload": s.max_upload,
            "max_pixels": s.machine.max_pixels,
        }),
    )
}

/// A file removed when dropped unless kept: an upload cut off or refused leaves nothing.
struct Temp(Option<std::path::PathBuf>);

impl Drop for Temp {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The name the client gave the file (`X-Filename`), for display only: its last
/// component, printable, at most 100 characters.
fn display_name(headers: &HeaderMap) -> String {
    let raw = headers
        .get("x-filename")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("image");
    let last = raw.rsplit(['/', '\\']).next().unwrap_or(raw);
    let clean: String = last.chars().filter(|c| !c.is_control()).take(100).collect();
    if clean.is_empty() {
        "image".into()
    } else {
        clean
    }
}

/// `POST /api/uploads`: the image's bytes as the body. Streamed to a temporary file (at most
/// `--max-upload`), decoded under the CLI's limits (the pixel count from the header first),
/// then named by its SHA-256 with a thumbnail and a view beside it.
async fn upload(State(s): S, headers: HeaderMap, body: Body) -> Response {
    let too_big = || {
        fail(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the upload is over the limit of {} (--max-upload)",
                nst_style::memory::format_bytes(s.max_upload)
            ),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > s.max_upload) {
        return too_big();
    }
    let name = display_name(&headers);
    let tmp_path = s
        .uploads_dir()
        .join(format!(".upload-{}.part", crate::web::random_token()));
    let mut file = match std::fs::File::create(&tmp_path) {
        Ok(f) => f,
        Err(e) => {
            return fail(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot store the upload: {e}"),
            )
        }
    };
    let tmp = Temp(Some(tmp_path.clone()));
    let mut hasher = Sha256::new();
    let mut n = 0u64;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else {
            return fail(StatusCode::BAD_REQUEST, "the upload was cut off");
        };
        n += chunk.len() as u64;
        if n > s.max_upload {
            return too_big();
        }
        hasher.update(&chunk);
        if let Err(e) = file.write_all(&chunk) {
            return fail(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot store the upload: {e}"),
            );
        }
    }
    drop(file);
    if n == 0 {
        return fail(StatusCode::BAD_REQUEST, "the upload is empty");
    }
    let digest = hasher.finalize();
    let id: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    let studio = s.clone();
    let done = tokio::task::spawn_blocking(move || store_upload(&studio, tmp, &id, &name, n)).await;
    match done {
        Ok(r) => r,
        Err(_) => fail(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the upload's decoder failed",
        ),
    }
}

/// Decodes the uploaded file, writes its thumbnail and view, and moves it in place.
fn store_upload(s: &Studio, tmp: Temp, id: &str, name: &str, bytes: u64) -> Response {
    let path = tmp.0.clone().expect("set");
    let limits = crate::io::limits(s.machine.max_pixels);
    let loaded = std::fs::File::open(&path)
        .map_err(|e| e.to_string())
        .and_then(|f| {
            nst_io::decode_from(std::io::BufReader::new(f), name, &limits)
                .map_err(|e| e.to_string())
        });
    let loaded = match loaded {
        Ok(l) => l,
        Err(e) => return fail(StatusCode::UNPROCESSABLE_ENTITY, e),
    };
    let ext = match image::ImageReader::open(&path)
        .and_then(|r| r.with_guessed_format())
        .ok()
        .and_then(|r| r.format())
    {
        Some(image::ImageFormat::Png) => "png",
        Some(image::ImageFormat::Jpeg) => "jpg",
        Some(image::ImageFormat::WebP) => "webp",
        Some(image::ImageFormat::Bmp) => "bmp",
        Some(image::ImageFormat::Tiff) => "tiff",
        _ => return fail(StatusCode::UNPROCESSABLE_ENTITY, "unsupported image format"),
    };
    let dir = s.uploads_dir();
    for (suffix, max) in [("thumb", THUMB), ("view", VIEW)] {
        let Some(png) = crate::web::scaled_png(&loaded.image, max) else {
            return fail(
                StatusCode::UNPROCESSABLE_ENTITY,
                "the image cannot be scaled",
            );
        };
        let out = dir.join(format!("{id}.{suffix}.png"));
        if let Err(e) = nst_io::write_atomic(&out, |t| std::fs::write(t, &png)) {
            return fail(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot store the upload: {e}"),
            );
        }
    }
    let fin = dir.join(format!("{id}.{ext}"));
    if let Err(e) = std::fs::rename(&path, &fin) {
        return fail(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot store the upload: {e}"),
        );
    }
    let mut tmp = tmp;
    tmp.0 = None;
    let u = Upload {
        id: id.to_string(),
        name: name.to_string(),
        ext: ext.to_string(),
        width: loaded.image.width() as u32,
        height: loaded.image.height() as u32,
        bytes,
    };
    match s.with_db(|db| db.add_upload(&u)) {
        Ok(()) => json(
            StatusCode::CREATED,
            serde_json::to_value(&u).expect("serialises"),
        ),
        Err(e) => internal(e),
    }
}

/// Reads a file the server wrote, as a response of `mime` (404 when it is not there).
fn file_response(path: &std::path::Path, mime: &'static str, download: Option<String>) -> Response {
    match std::fs::read(path) {
        Ok(bytes) => {
            let mut r = (
                [
                    (header::CONTENT_TYPE, mime),
                    (header::CACHE_CONTROL, "no-store"),
                ],
                bytes,
            )
                .into_response();
            if let Some(name) = download {
                if let Ok(v) = format!("attachment; filename=\"{name}\"").parse() {
                    r.headers_mut().insert(header::CONTENT_DISPOSITION, v);
                }
            }
            r
        }
        Err(_) => fail(StatusCode::NOT_FOUND, "not there (yet)"),
    }
}

/// `GET /api/uploads/{id}`: what was uploaded (name, format, size).
async fn upload_info(State(s): S, Path(id): Path<String>) -> Response {
    if !is_upload_id(&id) {
        return fail(
            StatusCode::BAD_REQUEST,
            format!("{id:?} is not an upload id"),
        );
    }
    match s.with_db(|db| db.upload(&id)) {
        Ok(Some(u)) => json(
            StatusCode::OK,
            serde_json::to_value(&u).expect("serialises"),
        ),
        Ok(None) => fail(StatusCode::NOT_FOUND, format!("no upload {id}")),
        Err(e) => internal(e),
    }
}

/// `GET /api/uploads/{id}/thumb.png` and `…/view.png`.
async fn upload_file(State(s): S, Path((id, file)): Path<(String, String)>) -> Response {
    if !is_upload_id(&id) {
        return fail(
            StatusCode::BAD_REQUEST,
            format!("{id:?} is not an upload id"),
        );
    }
    let suffix = match file.as_str() {
        "thumb.png" => "thumb",
        "view.png" => "view",
        _ => return fail(StatusCode::NOT_FOUND, "no such file"),
    };
    match s.with_db(|db| db.upload(&id)) {
        Ok(Some(_)) => file_response(
            &s.uploads_dir().join(format!("{id}.{suffix}.png")),
            "image/png",
            None,
        ),
        Ok(None) => fail(StatusCode::NOT_FOUND, format!("no upload {id}")),
        Err(e) => internal(e),
    }
}

/// Parses a job's settings and checks that its uploads exist.
fn checked_spec(s: &Studio, body: &[u8]) -> Result<Spec, Refusal> {
    let spec = Spec::parse(body).map_err(|e| Refusal(StatusCode::BAD_REQUEST, e))?;
    for id in spec.uploads() {
        match s.with_db(|db| db.upload(id)) {
            Ok(Some(_)) => {}
            Ok(None) => return Err(Refusal(StatusCode::NOT_FOUND, format!("no upload {id}"))),
            Err(e) => return Err(Refusal::internal(e)),
        }
    }
    Ok(spec)
}

/// `POST /api/estimate`: `nst estimate --json` for the settings: predicted time and memory.
async fn estimate(State(s): S, body: Bytes) -> Response {
    let spec = match checked_spec(&s, &body) {
        Ok(spec) => spec,
        Err(r) => return r.into_response(),
    };
    let studio = s.clone();
    let out = tokio::task::spawn_blocking(move || {
        let mut args: Vec<std::ffi::OsString> = vec!["estimate".into()];
        args.extend(spec.options(|u| studio.upload_path(u), &studio.machine));
        args.push("--json".into());
        std::process::Command::new(&studio.exe)
            .args(&args)
            .stdin(std::process::Stdio::null())
            .output()
    })
    .await;
    match out {
        Ok(Ok(o)) if o.status.success() => {
            match serde_json::from_slice::<serde_json::Value>(&o.stdout) {
                Ok(v) => json(
                    StatusCode::OK,
                    serde_json::json!({
                        "seconds": v["seconds"],
                        "peak_bytes": v["peak_bytes"],
                        "budget_bytes": v["budget_bytes"],
                    }),
                ),
                Err(_) => fail(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "nst estimate printed no JSON",
                ),
            }
        }
        Ok(Ok(o)) => {
            let err = String::from_utf8_lossy(&o.stderr);
            let line = err.lines().last().unwrap_or("nst estimate failed");
            fail(
                StatusCode::UNPROCESSABLE_ENTITY,
                line.trim_start_matches("error: "),
            )
        }
        _ => fail(StatusCode::INTERNAL_SERVER_ERROR, "cannot run nst estimate"),
    }
}

/// A job as the API shows it: the row, and while it runs its live progress.
fn job_json(s: &Studio, job: &super::db::Job) -> serde_json::Value {
    let mut v = serde_json::to_value(job).expect("serialises");
    if job.state == JobState::Running {
        let live = s.live.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = live.as_ref().filter(|l| l.job == job.id) {
            v["live"] = serde_json::to_value(l).expect("serialises");
        }
    }
    let files = JobFiles::new(&s.data, job.id);
    v["has_result"] = files.result().is_file().into();
    v["has_preview"] = files.preview().is_file().into();
    v
}

async fn jobs(State(s): S) -> Response {
    match s.with_db(|db| db.jobs()) {
        Ok(list) => json(
            StatusCode::OK,
            serde_json::Value::Array(list.iter().map(|j| job_json(&s, j)).collect()),
        ),
        Err(e) => internal(e),
    }
}

/// `POST /api/jobs`: a render of these settings at the end of the queue.
async fn create(State(s): S, body: Bytes) -> Response {
    let spec = match checked_spec(&s, &body) {
        Ok(spec) => spec,
        Err(r) => return r.into_response(),
    };
    add_job(&s, &spec)
}

fn add_job(s: &Studio, spec: &Spec) -> Response {
    let value = serde_json::to_value(spec).expect("serialises");
    match s.with_db(|db| db.add_job(&value)) {
        Ok(id) => {
            s.poke();
            json(StatusCode::CREATED, serde_json::json!({ "id": id }))
        }
        Err(e) => internal(e),
    }
}

/// The job named by a path segment: 400 when it is not a number, 404 when there is none.
fn find_job(s: &Studio, id: &str) -> Result<super::db::Job, Refusal> {
    let Ok(n) = id.parse::<i64>() else {
        return Err(Refusal(
            StatusCode::BAD_REQUEST,
            format!("{id:?} is not a render id"),
        ));
    };
    match s.with_db(|db| db.job(n)) {
        Ok(Some(j)) => Ok(j),
        Ok(None) => Err(Refusal(StatusCode::NOT_FOUND, format!("no render {n}"))),
        Err(e) => Err(Refusal::internal(e)),
    }
}

async fn job(State(s): S, Path(id): Path<String>) -> Response {
    match find_job(&s, &id) {
        Ok(j) => json(StatusCode::OK, job_json(&s, &j)),
        Err(r) => r.into_response(),
    }
}

/// `GET /api/jobs/{id}/preview.png`, `…/result.png` (`?depth=16`, the file as rendered, or
/// `8`).
async fn job_file(
    State(s): S,
    Path((id, file)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let job = match find_job(&s, &id) {
        Ok(j) => j,
        Err(r) => return r.into_response(),
    };
    let files = JobFiles::new(&s.data, job.id);
    match file.as_str() {
        "preview.png" => file_response(&files.preview(), "image/png", None),
        "result.png" => match q.get("depth").map(String::as_str) {
            None | Some("16") => file_response(
                &files.result(),
                "image/png",
                Some(format!("nst-{}.png", job.id)),
            ),
            Some("8") => {
                let path = files.result();
                let out = tokio::task::spawn_blocking(move || eight_bit(&path)).await;
                match out {
                    Ok(Some(bytes)) => {
                        let mut r = file_bytes(bytes);
                        if let Ok(v) =
                            format!("attachment; filename=\"nst-{}-8bit.png\"", job.id).parse()
                        {
                            r.headers_mut().insert(header::CONTENT_DISPOSITION, v);
                        }
                        r
                    }
                    _ => fail(StatusCode::NOT_FOUND, "no result (yet)"),
                }
            }
            Some(_) => fail(StatusCode::BAD_REQUEST, "depth must be 8 or 16"),
        },
        _ => fail(StatusCode::NOT_FOUND, "no such file"),
    }
}

fn file_bytes(bytes: Vec<u8>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "image/png"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        bytes,
    )
        .into_response()
}

/// The 16-bit result as an 8-bit PNG.
fn eight_bit(path: &std::path::Path) -> Option<Vec<u8>> {
    let img = image::open(path).ok()?.to_rgb8();
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).ok()?;
    Some(out.into_inner())
}

/// `POST /api/jobs/{id}/stop`, `resume`, `cancel`, `again`, `move` (`{"to": "top"|"up"|
/// "down"|"bottom"}`).
async fn job_action(
    State(s): S,
    Path((id, action)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let job = match find_job(&s, &id) {
        Ok(j) => j,
        Err(r) => return r.into_response(),
    };
    let conflict = |what: &str| {
        fail(
            StatusCode::CONFLICT,
            format!(
                "render {} is {}: it cannot {what}",
                job.id,
                job.state.name()
            ),
        )
    };
    let files = JobFiles::new(&s.data, job.id);
    let done = |state: &str| {
        json(
            StatusCode::OK,
            serde_json::json!({ "id": job.id, "state": state }),
        )
    };
    let result = match (action.as_str(), job.state) {
        ("stop", JobState::Running) => {
            s.request(job.id, Action::Stop);
            Ok(done("stopping"))
        }
        ("stop", JobState::Queued) => s
            .with_db(|db| db.set_state(job.id, JobState::Stopped))
            .map(|()| done("stopped")),
        ("stop", _) => Ok(conflict("stop")),
        ("resume", JobState::Stopped | JobState::Failed) => {
            s.with_db(|db| db.requeue(job.id, false)).map(|()| {
                s.poke();
                done("queued")
            })
        }
        ("resume", _) => Ok(conflict("resume")),
        ("cancel", JobState::Running) => {
            s.request(job.id, Action::Cancel);
            Ok(done("canceling"))
        }
        ("cancel", JobState::Queued | JobState::Stopped | JobState::Failed) => {
            let _ = std::fs::remove_file(files.checkpoint());
            s.with_db(|db| db.ended(job.id, JobState::Canceled, None, None, None))
                .map(|()| done("canceled"))
        }
        ("cancel", _) => Ok(conflict("be canceled")),
        ("again", _) => match serde_json::from_value::<Spec>(job.spec.clone()) {
            Ok(spec) => Ok(add_job(&s, &spec)),
            Err(e) => Ok(fail(
                StatusCode::CONFLICT,
                format!("its settings cannot be read: {e}"),
            )),
        },
        ("move", JobState::Queued) => {
            let to = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["to"].as_str().map(str::to_string))
                .unwrap_or_default();
            s.with_db(|db| db.move_job(job.id, &to)).map(|ok| {
                if ok {
                    s.poke();
                    done("queued")
                } else {
                    fail(
                        StatusCode::BAD_REQUEST,
                        "move takes {\"to\": \"top\", \"up\", \"down\" or \"bottom\"}",
                    )
                }
            })
        }
        ("move", _) => Ok(conflict("move in the queue")),
        _ => Ok(fail(StatusCode::NOT_FOUND, format!("no action {action:?}"))),
    };
    result.unwrap_or_else(internal)
}

/// `DELETE /api/jobs/{id}`: the row and the job's folder (uploads stay: they are shared by
/// content).
async fn delete(State(s): S, Path(id): Path<String>) -> Response {
    let job = match find_job(&s, &id) {
        Ok(j) => j,
        Err(r) => return r.into_response(),
    };
    if job.state == JobState::Running {
        return fail(
            StatusCode::CONFLICT,
            format!("render {} is running: stop or cancel it first", job.id),
        );
    }
    let files = JobFiles::new(&s.data, job.id);
    if let Err(e) = s.with_db(|db| db.delete_job(job.id)) {
        return internal(e);
    }
    let _ = std::fs::remove_dir_all(&files.dir);
    json(StatusCode::OK, serde_json::json!({ "deleted": job.id }))
}
