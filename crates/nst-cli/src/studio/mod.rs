//! `nst studio`: a local app in the browser for people who do not use a terminal. A server
//! (axum, as the web view's) serves one page and a JSON API under `/api/` (docs/studio.md);
//! a worker thread runs the queue one render at a time, each a child `nst render` with a
//! checkpoint; an SQLite database under `--data` keeps the uploads, the queue and the
//! history, with the images as files beside it.
//!
//! Safe by default: loopback unless `--addr` says otherwise, the `Host` check and the token
//! of the web view on every request but the page's, uploads capped and decoded under the
//! CLI's limits, and ids, never paths, from the client.

mod api;
pub(crate) mod db;
pub(crate) mod spec;
mod worker;

use anyhow::{bail, Context, Result};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// `nst studio`'s arguments.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Where the database, the uploads and the results live [default: the user's data
    /// folder: $XDG_DATA_HOME/nst/studio, ~/.local/share/nst/studio; on macOS
    /// ~/Library/Application Support/nst/studio; on Windows %LOCALAPPDATA%\nst\studio].
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// The address to listen on (HOST:PORT, or a port for 127.0.0.1). Beyond loopback anyone
    /// who can reach it sees the page; every action still needs the token.
    #[arg(long, default_value = crate::web::DEFAULT_ADDR, value_parser = crate::web::parse_addr)]
    addr: SocketAddr,
    /// The largest upload accepted, e.g. 50M.
    #[arg(long, default_value = "50M", value_name = "SIZE", value_parser = parse_size)]
    max_upload: u64,
    /// Refuse images with more pixels than this (uploads and renders).
    #[arg(long, default_value_t = crate::io::DEFAULT_MAX_PIXELS, value_name = "N")]
    max_pixels: u64,
    /// Worker threads of each render (0: one per core).
    #[arg(long, default_value_t = 0, value_name = "N")]
    threads: usize,
    /// The device renders run on (as `nst render --device`).
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    device: String,
    /// The weights (default: $NST_WEIGHTS, else weights/vgg19.safetensors).
    #[arg(long, value_name = "PATH")]
    weights: Option<PathBuf>,
    /// Between a render's checkpoints (as `nst render --checkpoint-every`).
    #[arg(long, default_value = "auto", value_name = "N|TIME|auto")]
    checkpoint_every: String,
}

fn parse_size(s: &str) -> std::result::Result<u64, String> {
    nst_style::memory::parse_bytes(s).map_err(|e| e.to_string())
}

/// Everything the server and the worker share.
pub(crate) struct Studio {
    /// The data folder.
    pub(crate) data: PathBuf,
    db: Mutex<db::Db>,
    control: Mutex<worker::Control>,
    /// Wakes the worker (with `control`).
    pub(crate) wake: Condvar,
    /// The running render's progress.
    pub(crate) live: Mutex<Option<worker::Live>>,
    pub(crate) machine: spec::Machine,
    /// This executable (each render is `exe render …`).
    pub(crate) exe: PathBuf,
    pub(crate) max_upload: u64,
    pub(crate) token: String,
    pub(crate) bound: SocketAddr,
}

impl Studio {
    /// Runs `f` on the database (one connection, one user at a time).
    pub(crate) fn with_db<T>(&self, f: impl FnOnce(&mut db::Db) -> Result<T>) -> Result<T> {
        let mut db = self.db.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut db)
    }

    pub(crate) fn lock_control(&self) -> MutexGuard<'_, worker::Control> {
        self.control.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tells the worker the queue changed.
    pub(crate) fn poke(&self) {
        self.lock_control().poke = true;
        self.wake.notify_all();
    }

    /// Asks the worker to stop or cancel the running job `id`.
    pub(crate) fn request(&self, id: i64, action: worker::Action) {
        self.lock_control().request = Some((id, action));
        self.wake.notify_all();
    }

    pub(crate) fn uploads_dir(&self) -> PathBuf {
        self.data.join("uploads")
    }

    /// The file of upload `id` (an id checked by [`spec::is_upload_id`], so never a path).
    pub(crate) fn upload_path(&self, id: &str) -> PathBuf {
        let ext = self
            .with_db(|db| db.upload(id))
            .ok()
            .flatten()
            .map_or_else(|| "bin".to_string(), |u| u.ext);
        self.uploads_dir().join(format!("{id}.{ext}"))
    }
}

/// The user's data folder for the studio.
fn default_data() -> Result<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let base = if cfg!(windows) {
        env("LOCALAPPDATA")
    } else if cfg!(target_os = "macos") {
        env("HOME").map(|h| h.join("Library").join("Application Support"))
    } else {
        env("XDG_DATA_HOME").or_else(|| env("HOME").map(|h| h.join(".local").join("share")))
    };
    match base {
        Some(b) => Ok(b.join("nst").join("studio")),
        None => bail!("no data folder: set HOME or pass --data DIR"),
    }
}

/// The executable renders run: this very program. On Linux `/proc/self/exe`, which still
/// names it after an upgrade replaced the file (so a render and its resume run the version
/// that started them, and never a half-copied binary).
fn own_executable() -> Result<PathBuf> {
    let proc_exe = Path::new("/proc/self/exe");
    if cfg!(target_os = "linux") && proc_exe.exists() {
        return Ok(proc_exe.to_path_buf());
    }
    std::env::current_exe().context("cannot find the nst executable")
}

/// Holds the data folder for this server alone (another studio on it is refused).
struct DataLock {
    _file: std::fs::File,
}

fn lock_data(data: &Path) -> Result<DataLock> {
    let path = data.join("studio.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot write in {}", data.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::io::AsRawFd;
        // SAFETY: flock(2) on a descriptor we own; released when the file closes.
        let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if r != 0 {
            bail!(
                "another nst studio is using {} (one server per data folder)",
                data.display()
            );
        }
    }
    Ok(DataLock { _file: file })
}

/// `nst studio`: opens the data folder and its database, starts the worker and the server,
/// prints the URL, and serves until SIGINT or SIGTERM (the running render is stopped at a
/// checkpoint and resumes at the next start).
pub(crate) fn run(a: Args) -> Result<()> {
    let data = match a.data {
        Some(d) => d,
        None => default_data()?,
    };
    std::fs::create_dir_all(data.join("uploads"))
        .and_then(|()| std::fs::create_dir_all(data.join("jobs")))
        .with_context(|| format!("cannot create the data folder {}", data.display()))?;
    let _lock = lock_data(&data)?;
    let db = db::Db::open(&data.join("studio.sqlite"))?;
    let recovered = db.recover()?;
    let exe = own_executable()?;
    let listener = std::net::TcpListener::bind(a.addr)
        .with_context(|| format!("cannot listen on {}", a.addr))?;
    listener
        .set_nonblocking(true)
        .context("cannot configure the socket")?;
    let bound = listener.local_addr().context("no local address")?;
    let token = crate::web::random_token();
    let studio = Arc::new(Studio {
        data: data.clone(),
        db: Mutex::new(db),
        control: Mutex::new(worker::Control::default()),
        wake: Condvar::new(),
        live: Mutex::new(None),
        machine: spec::Machine {
            threads: a.threads,
            device: a.device,
            max_pixels: a.max_pixels,
            weights: a.weights,
            checkpoint_every: a.checkpoint_every,
        },
        exe,
        max_upload: a.max_upload,
        token: token.clone(),
        bound,
    });
    crate::signals::install();
    crate::web::serve(listener, api::router(studio.clone()), "nst-studio-http")?;
    let w = studio.clone();
    let worker = std::thread::Builder::new()
        .name("nst-studio-worker".into())
        .spawn(move || worker::run(w))
        .context("cannot start the worker")?;
    if !bound.ip().is_loopback() {
        eprintln!(
            "warning: nst studio listens on {bound}, beyond this machine: anyone who can reach it sees the page (every action needs the token)"
        );
    }
    let host = if bound.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else if bound.is_ipv6() {
        format!("[{}]", bound.ip())
    } else {
        bound.ip().to_string()
    };
    eprintln!("data in {}", data.display());
    if recovered > 0 {
        eprintln!("resuming {recovered} render(s) left running");
    }
    eprintln!("studio: http://{host}:{}/?token={token}", bound.port());
    // Serve until a signal; then stop the render at a checkpoint.
    let sig = loop {
        if let Some(s) = crate::signals::received() {
            break s;
        }
        if worker.is_finished() {
            bail!("the studio's worker stopped");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    eprintln!(
        "{}: stopping (the running render resumes at the next start)",
        crate::signals::name(sig)
    );
    studio.lock_control().shutdown = true;
    studio.wake.notify_all();
    let _ = worker.join();
    Err(crate::render::Interrupted(sig).into())
}
