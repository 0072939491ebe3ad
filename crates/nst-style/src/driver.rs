//! The one loop that runs a [`RenderSession`] to its end and tells an [`Observer`] what
//! happens: [`render`] uses it, and so do `nst render`, `nst batch` and `nst video` (the CLI's
//! progress line, JSON log, web view, checkpoints and signals are its observer) and the
//! tests.

use crate::{Error, Image, MemoryPlan, Progress, RenderConfig, RenderSession, Rendered, Result};
use nst_tensor::Backend;
use nst_vgg::Vgg;

/// What an observer wants after an iteration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Run the next iteration.
    Continue,
    /// Stop here (the session stays as it is: it can be checkpointed, or driven on later).
    Stop,
}

/// How [`drive`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// The session is over: every scale is done, or it stopped itself (a non-finite loss);
    /// [`RenderSession::status`] says which.
    Over,
    /// The observer asked to stop ([`Flow::Stop`]).
    Stopped,
    /// The iteration in flight was abandoned through the session's cancel flag
    /// ([`RenderSession::set_cancel`]): the session is at its last completed iteration.
    Cancelled,
}

/// What a driver of a render wants to hear. Every method but [`Observer::iteration`] has a
/// default that does nothing.
pub trait Observer<B: Backend> {
    /// A scale is about to start, with the memory plan chosen for it.
    fn plan(&mut self, _scale: usize, _size: (usize, usize), _plan: &MemoryPlan) {}
    /// An iteration is about to run (e.g. to time it).
    fn starting(&mut self) {}
    /// Every [`RenderConfig::save_every`] iterations, after [`Observer::iteration`], with the
    /// current image.
    fn snapshot(&mut self, _progress: &Progress, _image: &Image) {}
    /// After every iteration, with the session (to show its image, write its checkpoint):
    /// whether to go on.
    fn iteration(&mut self, session: &RenderSession<B>, progress: &Progress) -> Result<Flow>;
}

/// Steps `session` until it is over, the observer stops it, or its iteration in flight is
/// cancelled; an error of a step or of the observer ends the drive with that error.
pub fn drive<B: Backend>(
    session: &mut RenderSession<B>,
    observer: &mut dyn Observer<B>,
) -> Result<Ended> {
    loop {
        if let Some((si, size, plan)) = session.starting_scale() {
            observer.plan(si, size, plan);
        }
        observer.starting();
        let progress = match session.step() {
            Ok(Some(p)) => p,
            Ok(None) => return Ok(Ended::Over),
            Err(Error::Cancelled) => return Ok(Ended::Cancelled),
            Err(e) => return Err(e),
        };
        let flow = observer.iteration(session, &progress)?;
        let every = session.config().save_every;
        if every > 0 && progress.iteration.0 % every == 0 {
            observer.snapshot(&progress, &session.image()?);
        }
        if flow == Flow::Stop {
            return Ok(Ended::Stopped);
        }
    }
}

/// Runs a render of `content` in the style of `styles` on the model's backend: a
/// [`RenderSession`] [`drive`]n to its end, reporting to `observer`. When the observer stops
/// it, the result is the image so far, with the reason in [`Rendered::stopped_early`].
pub fn render<B: Backend>(
    backend: &B,
    model: &Vgg<B>,
    content: &Image,
    styles: &[Image],
    cfg: &RenderConfig,
    observer: &mut dyn Observer<B>,
) -> Result<Rendered> {
    let mut session = RenderSession::new(backend, model, content, styles, cfg)?;
    match drive(&mut session, observer)? {
        Ended::Over => {}
        Ended::Stopped | Ended::Cancelled => {
            let at = session.last_progress().map_or(0, |p| p.iteration.0);
            session.stop(format!("stopped at iteration {at}"));
        }
    }
    session.finish()
}
