//! `--grace`: after SIGINT or SIGTERM, the iteration in flight is finished only when it will
//! end in time for the image and the checkpoint to be written within the grace a scheduler
//! gives (Kubernetes and Slurm: 30 s before SIGKILL); otherwise it is abandoned
//! ([`nst_style::RenderSession::set_cancel`]) and the last completed iteration is written.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the watcher knows of the render loop.
struct State {
    /// When the iteration in flight started (`None`: none is running).
    started: Option<Instant>,
    /// Iterations completed.
    completed: u64,
    /// How long an iteration takes (the last one's time, or its average with the ones
    /// before).
    typical: Option<Duration>,
    /// How long the last checkpoint took to write.
    write_cost: Duration,
}

struct Shared {
    cancel: Arc<AtomicBool>,
    finished: AtomicBool,
    state: Mutex<State>,
}

/// Watches for a signal on its own thread while the render loop runs; dropping it stops the
/// thread.
pub(crate) struct Watch {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// When to abandon the iteration in flight, for a signal at `signal`: at once when it will
/// not end before the deadline (the grace less the time to write, and a tenth of the grace
/// for the rest), else at the deadline should it still be running.
pub(crate) fn cancel_at(
    signal: Instant,
    grace: Duration,
    started: Option<Instant>,
    typical: Option<Duration>,
    write_cost: Duration,
) -> Instant {
    let reserve = write_cost + grace / 10;
    let deadline = signal + grace.saturating_sub(reserve);
    match (started, typical) {
        (Some(s), Some(t)) if s + t <= deadline => deadline,
        _ => signal,
    }
}

impl Watch {
    /// Starts watching; `cancel` is the flag the render session reads.
    pub(crate) fn start(grace: Duration, cancel: Arc<AtomicBool>) -> Watch {
        let shared = Arc::new(Shared {
            cancel,
            finished: AtomicBool::new(false),
            state: Mutex::new(State {
                started: None,
                completed: 0,
                typical: None,
                write_cost: Duration::ZERO,
            }),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("nst-grace".into())
            .spawn(move || watch(&s, grace))
            .ok();
        Watch { shared, thread }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An iteration starts now.
    pub(crate) fn starting(&self) {
        self.state().started = Some(Instant::now());
    }

    /// The iteration in flight completed.
    pub(crate) fn completed(&self) {
        let mut s = self.state();
        if let Some(t) = s.started.take() {
            let took = t.elapsed();
            s.typical = Some(match s.typical {
                Some(before) => (before + took) / 2,
                None => took,
            });
        }
        s.completed += 1;
    }

    /// A checkpoint took `cost` to write.
    pub(crate) fn wrote(&self, cost: Duration) {
        self.state().write_cost = cost;
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.shared.finished.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn watch(shared: &Shared, grace: Duration) {
    let tick = Duration::from_millis(10);
    let lock = || shared.state.lock().unwrap_or_else(|p| p.into_inner());
    let (signal, completed) = loop {
        if shared.finished.load(Ordering::SeqCst) {
            return;
        }
        if crate::signals::received().is_some() {
            break (Instant::now(), lock().completed);
        }
        std::thread::sleep(tick);
    };
    while !shared.finished.load(Ordering::SeqCst) {
        let s = lock();
        if s.completed != completed {
            // An iteration ended in time: the render loop stops after it.
            return;
        }
        if s.started.is_some()
            && Instant::now() >= cancel_at(signal, grace, s.started, s.typical, s.write_cost)
        {
            shared.cancel.store(true, Ordering::SeqCst);
            return;
        }
        drop(s);
        std::thread::sleep(tick);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_iteration_is_abandoned_only_when_it_would_end_too_late() {
        let t0 = Instant::now();
        let s = |secs: f64| Duration::from_secs_f64(secs);
        let grace = s(25.0);
        // Started 2 s ago, takes 10 s: ends 8 s from now, well within 25 − 2.5 − 3 s.
        let at = cancel_at(t0 + s(2.0), grace, Some(t0), Some(s(10.0)), s(3.0));
        assert_eq!(at, t0 + s(2.0) + s(25.0 - 2.5 - 3.0));
        // Takes 60 s: abandoned at once.
        let at = cancel_at(t0 + s(2.0), grace, Some(t0), Some(s(60.0)), s(3.0));
        assert_eq!(at, t0 + s(2.0));
        // The first iteration (no time known yet) is abandoned at once.
        assert_eq!(cancel_at(t0, grace, Some(t0), None, s(0.0)), t0);
        // A checkpoint slower to write than the grace: at once.
        assert_eq!(cancel_at(t0, grace, Some(t0), Some(s(1.0)), s(40.0)), t0);
        // No grace: at once.
        assert_eq!(cancel_at(t0, s(0.0), Some(t0), Some(s(0.1)), s(0.0)), t0);
    }
}
