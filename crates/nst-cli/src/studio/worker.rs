//! The studio's queue: one render at a time, each a child `nst render` with a checkpoint, a
//! JSON log and a preview file in the job's folder. The worker follows the log for the live
//! view, stops (SIGTERM: the render writes its checkpoint) and cancels (SIGKILL) on request,
//! and records how each render ended. A child dies with the server (Linux: the parent-death
//! signal), and a restarted server resumes it from its checkpoint.

use super::db::State;
use super::spec::{render_args, JobFiles, Spec};
use super::Studio;
use anyhow::{Context, Result};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// What the user asked of the running render.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    Stop,
    Cancel,
}

/// Requests to the worker (under the studio's `control` lock).
#[derive(Default)]
pub(crate) struct Control {
    /// A request for the running job: its id and the action.
    pub(crate) request: Option<(i64, Action)>,
    /// The server is shutting down: stop the render (it resumes at the next start).
    pub(crate) shutdown: bool,
    /// Something changed in the queue.
    pub(crate) poke: bool,
}

/// The running render as the page sees it.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub(crate) struct Live {
    pub(crate) job: i64,
    /// Iterations done, counted across scales, and in all.
    pub(crate) step: usize,
    pub(crate) steps: usize,
    /// The scale (1-based) and the number of scales.
    pub(crate) scale: usize,
    pub(crate) scales: usize,
    pub(crate) width: usize,
    pub(crate) height: usize,
    /// The objective at the latest iteration.
    pub(crate) loss: Option<f64>,
    pub(crate) elapsed_s: f64,
    pub(crate) eta_s: Option<f64>,
    /// Grows with every new preview image.
    pub(crate) preview: u64,
    /// The objective at every iteration so far (for the plot).
    pub(crate) losses: Vec<f64>,
}

/// Follows a render's JSON log: reads the lines added since the last call.
struct LogFollower {
    path: PathBuf,
    offset: u64,
    partial: String,
    scale_iterations: Vec<usize>,
    /// (time, step) of the first iteration seen in this run (the rate's start).
    first: Option<(Instant, usize)>,
    preview_stamp: Option<(SystemTime, u64)>,
}

impl LogFollower {
    fn new(path: PathBuf) -> LogFollower {
        LogFollower {
            path,
            offset: 0,
            partial: String::new(),
            scale_iterations: Vec::new(),
            first: None,
            preview_stamp: None,
        }
    }

    /// Reads new lines into `live`.
    fn follow(&mut self, live: &mut Live) {
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return;
        };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut text = String::new();
        let Ok(n) = f.read_to_string(&mut text) else {
            return;
        };
        self.offset += n as u64;
        self.partial.push_str(&text);
        while let Some(i) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=i).collect();
            self.line(line.trim_end(), live);
        }
    }

    fn line(&mut self, line: &str, live: &mut Live) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            return;
        };
        if v.get("event").and_then(|e| e.as_str()) == Some("start") {
            let scales = v["scales"].as_array().map_or(0, |s| s.len()).max(1);
            let default = v["iterations"].as_u64().unwrap_or(0) as usize;
            let per: Vec<usize> = v["scale_iterations"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_u64())
                        .map(|x| x as usize)
                        .collect()
                })
                .unwrap_or_default();
            self.scale_iterations = (0..scales)
                .map(|i| per.get(i).copied().unwrap_or(default))
                .collect();
            live.scales = scales;
            live.steps = self.scale_iterations.iter().sum();
            return;
        }
        let Ok(crate::record::Line::Iteration(r)) = crate::record::parse_line(line) else {
            return;
        };
        let before: usize = self.scale_iterations.iter().take(r.scale).sum();
        live.step = before + r.iteration;
        live.scale = r.scale + 1;
        live.width = r.width;
        live.height = r.height;
        live.loss = r.total;
        live.elapsed_s = r.elapsed_s;
        // A run resumed from a checkpoint repeats the iterations its predecessor logged after
        // that checkpoint: the plot keeps one value a step.
        live.losses.truncate(live.step.saturating_sub(1));
        if let Some(t) = r.total {
            live.losses.push(t);
        }
        let now = Instant::now();
        match self.first {
            None => self.first = Some((now, live.step)),
            Some((t0, s0)) if live.step > s0 => {
                let rate = (live.step - s0) as f64 / now.duration_since(t0).as_secs_f64().max(1e-6);
                live.eta_s = Some(live.steps.saturating_sub(live.step) as f64 / rate);
            }
            Some(_) => {}
        }
    }

    /// Bumps `live.preview` when the preview file changed.
    fn preview(&mut self, path: &std::path::Path, live: &mut Live) {
        let Ok(meta) = std::fs::metadata(path) else {
            return;
        };
        let stamp = (
            meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            meta.len(),
        );
        if self.preview_stamp != Some(stamp) {
            self.preview_stamp = Some(stamp);
            live.preview += 1;
        }
    }
}

/// How a child render ended.
enum Outcome {
    Done,
    Stopped,
    Canceled,
    /// The server is shutting down; back to the queue's front.
    Requeued,
    Failed(String),
}

/// Runs the queue until the server shuts down.
pub(crate) fn run(studio: Arc<Studio>) {
    loop {
        {
            let mut c = studio.lock_control();
            if c.shutdown {
                return;
            }
            c.poke = false;
            if c.request.is_some() {
                c.request = None;
            }
        }
        let next = studio.with_db(|db| db.next_queued());
        let job = match next {
            Ok(Some(job)) => job,
            Ok(None) => {
                let c = studio.lock_control();
                let _ = studio
                    .wake
                    .wait_timeout_while(c, Duration::from_secs(2), |c| !c.poke && !c.shutdown);
                continue;
            }
            Err(e) => {
                eprintln!("studio: {e:#}");
                std::thread::sleep(Duration::from_secs(2));
                continue;
            }
        };
        if let Err(e) = studio.with_db(|db| db.started(job.id)) {
            eprintln!("studio: {e:#}");
            std::thread::sleep(Duration::from_secs(2));
            continue;
        }
        let outcome = match serde_json::from_value::<Spec>(job.spec.clone()) {
            Ok(spec) => run_job(&studio, job.id, &spec)
                .unwrap_or_else(|e| Outcome::Failed(format!("{e:#}"))),
            Err(e) => Outcome::Failed(format!("the stored settings cannot be read: {e}")),
        };
        let files = JobFiles::new(&studio.data, job.id);
        let live = studio.live.lock().unwrap_or_else(|p| p.into_inner()).take();
        let (seconds, loss) = live.map_or((None, None), |l| (Some(l.elapsed_s), l.loss));
        let recorded = studio.with_db(|db| match &outcome {
            Outcome::Done => {
                let _ = std::fs::remove_file(files.checkpoint());
                db.ended(job.id, State::Done, seconds, loss, None)
            }
            Outcome::Stopped => db.ended(job.id, State::Stopped, seconds, loss, None),
            Outcome::Canceled => {
                let _ = std::fs::remove_file(files.checkpoint());
                let _ = std::fs::remove_file(files.result());
                db.ended(job.id, State::Canceled, seconds, loss, None)
            }
            Outcome::Requeued => db.requeue(job.id, true),
            Outcome::Failed(why) => db.ended(job.id, State::Failed, seconds, loss, Some(why)),
        });
        if let Err(e) = recorded {
            eprintln!("studio: {e:#}");
        }
    }
}

/// Runs one job's render to its end.
fn run_job(studio: &Studio, id: i64, spec: &Spec) -> Result<Outcome> {
    let files = JobFiles::new(&studio.data, id);
    std::fs::create_dir_all(&files.dir)
        .with_context(|| format!("cannot create {}", files.dir.display()))?;
    let args = render_args(spec, |u| studio.upload_path(u), &studio.machine, &files);
    let mut child = spawn(&studio.exe, &args)?;
    let stderr = child.stderr.take().expect("piped");
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = errors.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let mut e = sink.lock().unwrap_or_else(|p| p.into_inner());
            e.push(line);
            if e.len() > 50 {
                e.remove(0);
            }
        }
    });
    let mut follower = LogFollower::new(files.log());
    // A resumed render appends to its log: skip what earlier runs wrote, keeping the plot.
    let mut live = Live {
        job: id,
        ..Live::default()
    };
    follower.follow(&mut live);
    follower.first = None;
    live.eta_s = None;
    *studio.live.lock().unwrap_or_else(|p| p.into_inner()) = Some(live.clone());
    let mut sent: Option<Action> = None;
    let mut shutdown = false;
    let status = loop {
        if let Some(st) = child.try_wait().context("cannot watch the render")? {
            break st;
        }
        {
            let mut c = studio.lock_control();
            if c.shutdown && !shutdown {
                shutdown = true;
                signal(&child, libc_sig::TERM);
            }
            if let Some((job, action)) = c.request {
                if job == id && sent != Some(Action::Cancel) {
                    c.request = None;
                    sent = Some(action);
                    match action {
                        Action::Stop => signal(&child, libc_sig::TERM),
                        Action::Cancel => {
                            let _ = child.kill();
                        }
                    }
                }
            }
            let _ = studio.wake.wait_timeout(c, Duration::from_millis(200));
        }
        follower.follow(&mut live);
        follower.preview(&files.preview(), &mut live);
        *studio.live.lock().unwrap_or_else(|p| p.into_inner()) = Some(live.clone());
    };
    let _ = reader.join();
    follower.follow(&mut live);
    follower.preview(&files.preview(), &mut live);
    *studio.live.lock().unwrap_or_else(|p| p.into_inner()) = Some(live);
    let errors = errors.lock().unwrap_or_else(|p| p.into_inner());
    Ok(if sent == Some(Action::Cancel) {
        Outcome::Canceled
    } else if status.success() {
        // Finished (a stop that came too late changes nothing).
        Outcome::Done
    } else if shutdown {
        Outcome::Requeued
    } else if sent == Some(Action::Stop) && stopped_by_signal(&status) {
        Outcome::Stopped
    } else {
        Outcome::Failed(
            errors
                .iter()
                .rev()
                .find(|l| l.starts_with("error: "))
                .map(|l| l.trim_start_matches("error: ").to_string())
                .unwrap_or_else(|| format!("the render ended with {status}")),
        )
    })
}

/// Whether the render ended because of a SIGTERM or SIGINT it handled (exit 143 or 130).
fn stopped_by_signal(status: &std::process::ExitStatus) -> bool {
    matches!(status.code(), Some(143) | Some(130))
}

mod libc_sig {
    #[cfg(unix)]
    pub(super) const TERM: i32 = libc::SIGTERM;
    #[cfg(not(unix))]
    pub(super) const TERM: i32 = 15;
}

/// Sends `sig` to the child (on other systems, kills it).
fn signal(child: &Child, sig: i32) {
    #[cfg(unix)]
    {
        // SAFETY: kill(2) with the pid of a child we have not reaped yet.
        unsafe {
            libc::kill(child.id() as libc::pid_t, sig);
        }
    }
    #[cfg(not(unix))]
    {
        let _ = sig;
        let _ = child;
    }
}

/// Starts `exe args` in a process group of its own (a Ctrl-C at the studio's terminal is
/// the studio's to handle), dying with the server on Linux.
fn spawn(exe: &std::path::Path, args: &[std::ffi::OsString]) -> Result<Child> {
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
        #[cfg(target_os = "linux")]
        {
            // SAFETY: only async-signal-safe calls between fork and exec: prctl(2) and
            // getppid(2).
            let parent = std::process::id() as libc::pid_t;
            unsafe {
                cmd.pre_exec(move || {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    // The server died before the signal was armed.
                    if libc::getppid() != parent {
                        return Err(std::io::Error::other("the studio has ended"));
                    }
                    Ok(())
                });
            }
        }
    }
    cmd.spawn()
        .with_context(|| format!("cannot start {}", exe.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iteration(scale: usize, it: usize, total: f64) -> String {
        format!(
            "{{\"scale\":{scale},\"width\":64,\"height\":48,\"iteration\":{it},\"elapsed_s\":{it}.0,\"total\":{total},\"tv\":1.0}}"
        )
    }

    #[test]
    fn the_log_gives_the_step_across_scales_and_a_resume_does_not_repeat_the_plot() {
        let dir = std::env::temp_dir().join(format!("nst-studio-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log.jsonl");
        let start = "{\"event\":\"start\",\"scales\":[32,64],\"iterations\":500,\"scale_iterations\":[3,4]}";
        let mut text = format!("{start}\n");
        for it in 1..=3 {
            text += &(iteration(0, it, 100.0 - it as f64) + "\n");
        }
        text += &(iteration(1, 1, 50.0) + "\n");
        text += &iteration(1, 2, 49.0)[..20]; // half a line: not read yet
        std::fs::write(&path, &text).unwrap();
        let mut f = LogFollower::new(path.clone());
        let mut live = Live::default();
        f.follow(&mut live);
        assert_eq!(
            (live.step, live.steps, live.scale, live.scales),
            (4, 7, 2, 2)
        );
        assert_eq!(live.losses, [99.0, 98.0, 97.0, 50.0]);
        // The line completes; then the render is resumed from a checkpoint at step 3.
        text = iteration(1, 2, 49.0)[20..].to_string() + "\n" + start + "\n";
        text += &(iteration(1, 1, 50.0) + "\n");
        text += &(iteration(1, 2, 49.0) + "\n");
        text += &(iteration(1, 3, 48.0) + "\n");
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut file, text.as_bytes()).unwrap();
        f.follow(&mut live);
        assert_eq!(live.step, 6);
        assert_eq!(live.losses, [99.0, 98.0, 97.0, 50.0, 49.0, 48.0]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
