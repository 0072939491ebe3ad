//! L-BFGS: the classic choice for style transfer (a fixed step of 1 and no line search, as
//! the classic implementations run it), with an optional strong-Wolfe line search.

use crate::{Optimizer, Step, Vector};
use std::collections::VecDeque;

/// How L-BFGS chooses its step length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineSearch {
    /// A fixed step of `learning_rate` (the first step is scaled by `min(1, 1/‖g‖₁)`).
    None,
    /// A line search satisfying the strong Wolfe conditions (c1 = 1e-4, c2 = 0.9).
    StrongWolfe,
}

/// How L-BFGS computes its search direction `-H·g`. Both give the same direction in exact
/// arithmetic (they differ in the last bits).
///
/// Why both are kept (measured 2026-12-07, AMD EPYC, 2 threads, history 100, 589,824 values,
/// the size of a 512x384 image; mean of 20 steps after the history filled): on the CPU
/// backend the two-loop recursion takes 68–72 ms a step and the compact one 95–105 ms, so
/// the two-loop is 1.4x faster where a dot product costs no wait; on a GPU each of the
/// two-loop's 200 dot products is a wait for the device, and the compact form waits three
/// times.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Recursion {
    /// [`Recursion::Compact`] where the vectors batch their reductions (device tensors on a
    /// GPU, see [`Vector::batches_reductions`]), [`Recursion::TwoLoop`] elsewhere.
    #[default]
    Auto,
    /// The two-loop recursion: with `m` pairs, `2m` dot products, each a scalar the loop
    /// waits for, and `2m` vector updates.
    TwoLoop,
    /// The same recursion on coefficients: the dot products between the correction pairs and
    /// the gradient are kept from step to step, the newest ones computed in one batch
    /// ([`Vector::dots`]), the loops run on the host over scalars, and the direction is one
    /// linear combination ([`Vector::combine`]). A step waits for the device three times,
    /// whatever the history.
    Compact,
}

/// L-BFGS settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LbfgsConfig {
    /// Step length (the initial trial step with a line search).
    pub learning_rate: f64,
    /// Number of correction pairs kept.
    pub history: usize,
    /// Step length selection.
    pub line_search: LineSearch,
    /// Converged when the largest gradient entry is at most this.
    pub tolerance_grad: f64,
    /// Most objective evaluations of one line search.
    pub max_line_search_evals: usize,
    /// The largest change of any one entry in a step without a line search: a longer step
    /// is shortened to it (infinite: never). Steps on a bounded image are meaningless beyond
    /// its range, and an early quasi-Newton step can be far longer.
    pub max_step: f64,
    /// How the direction is computed.
    pub recursion: Recursion,
}

impl Default for LbfgsConfig {
    fn default() -> Self {
        LbfgsConfig {
            learning_rate: 1.0,
            history: 100,
            line_search: LineSearch::None,
            tolerance_grad: 0.0,
            max_line_search_evals: 25,
            max_step: f64::INFINITY,
            recursion: Recursion::Auto,
        }
    }
}

/// Limited-memory BFGS with the two-loop recursion, over any [`Vector`] (a host `Vec<f32>` by
/// default; a device tensor keeps all its state on the device).
#[derive(Clone, Debug)]
pub struct Lbfgs<V = Vec<f32>> {
    cfg: LbfgsConfig,
    /// Correction pairs (s, y, 1/(yᵀs)), oldest first.
    pairs: VecDeque<(V, V, f64)>,
    /// The last step taken and the gradient at its start.
    last: Option<(V, V)>,
    h_diag: f64,
    /// An evaluation made by the line search at the point the next step starts from.
    cached: Option<(V, f64, V)>,
    /// For [`Recursion::Compact`]: the dot products between the pairs' vectors, in the order
    /// `s_0, y_0, s_1, y_1, …` (`None` until first needed, e.g. after a restore).
    gram: Option<Vec<Vec<f64>>>,
}

impl<V: Vector> Lbfgs<V> {
    /// Tells the optimizer that the point it stepped to was moved by `delta` afterwards (e.g.
    /// projected back into a box), so that its last step, and with it the next correction
    /// pair, is the displacement that really happened.
    pub fn moved(&mut self, delta: &V) -> Result<(), V::Error> {
        if let Some((s, _)) = &mut self.last {
            *s = delta.axpy(1.0, s)?;
        }
        self.cached = None;
        Ok(())
    }

    /// Whether this step computes its direction from batched dot products.
    fn compact(&self, x: &V) -> bool {
        match self.cfg.recursion {
            Recursion::Auto => x.batches_reductions(),
            Recursion::TwoLoop => false,
            Recursion::Compact => true,
        }
    }

    /// The pairs' vectors in the Gram matrix's order.
    fn basis(&self) -> Vec<&V> {
        self.pairs.iter().flat_map(|(s, y, _)| [s, y]).collect()
    }

    /// Folds the gradient `g` into the curvature history ([`Recursion::Compact`]): computes
    /// in one batch the dot products of the new pair (from the last step, if any) and of `g`
    /// with every vector kept, adds the pair when its curvature is positive, and returns
    /// `g`'s dot products with the (new) basis followed by `g·g`.
    fn update_compact(&mut self, g: &V) -> Result<Vec<f64>, V::Error> {
        if self.gram.is_none() {
            let basis = self.basis();
            let flat = V::dots(&basis, &basis)?;
            let k = basis.len();
            self.gram = Some(flat.chunks(k.max(1)).take(k).map(<[f64]>::to_vec).collect());
        }
        let new = match self.last.take() {
            Some((s, g_prev)) => Some((s, g_prev.axpy(-1.0, g)?)),
            None => None,
        };
        let old = self.basis().len();
        let (mut rows, mut cols): (Vec<&V>, Vec<&V>) = (Vec::new(), self.basis());
        if let Some((s, y)) = &new {
            rows.extend([s, y]);
            cols.extend([s, y]);
        }
        rows.push(g);
        cols.push(g);
        let flat = V::dots(&rows, &cols)?;
        let width = cols.len();
        let row = |r: usize| &flat[r * width..(r + 1) * width];
        let mut g_dots = row(rows.len() - 1).to_vec();
        let gram = self.gram.as_mut().expect("built above");
        if let Some((s, y)) = new {
            let (ys, yy) = (row(1)[old], row(1)[old + 1]);
            if ys > 1e-10 {
                // Extend the matrix by the new pair's rows and columns.
                for (a, r) in gram.iter_mut().enumerate() {
                    r.extend([row(0)[a], row(1)[a]]);
                }
                gram.push(row(0)[..old + 2].to_vec());
                gram.push(row(1)[..old + 2].to_vec());
                if self.pairs.len() == self.cfg.history.max(1) {
                    self.pairs.pop_front();
                    gram.drain(..2);
                    for r in gram.iter_mut() {
                        r.drain(..2);
                    }
                    g_dots.drain(..2);
                }
                self.h_diag = ys / yy;
                self.pairs.push_back((s, y, 1.0 / ys));
            } else {
                // The pair is dropped: so are g's products with it.
                g_dots.drain(old..old + 2);
            }
        }
        Ok(g_dots)
    }

    /// The two-loop recursion on coefficients over the basis `s_0, y_0, …, g`, from the Gram
    /// matrix and `g`'s products (`g_dots`, ending with `g·g`): the direction's coefficients
    /// and `gᵀd`.
    fn coefficients(&self, g_dots: &[f64]) -> (Vec<f64>, f64) {
        let gram = self.gram.as_ref().expect("updated before");
        let k = gram.len();
        // q·b_a for basis vector a, where q = Σ delta_j b_j (b_k = g).
        let dot = |delta: &[f64], a: usize| -> f64 {
            let mut acc = delta[k] * g_dots[a];
            for (j, d) in delta[..k].iter().enumerate() {
                acc += d * gram[a][j];
            }
            acc
        };
        let mut delta = vec![0.0; k + 1];
        delta[k] = -1.0;
        let mut alpha = vec![0.0; self.pairs.len()];
        for (i, (_, _, rho)) in self.pairs.iter().enumerate().rev() {
            let a = rho * dot(&delta, 2 * i);
            alpha[i] = a;
            delta[2 * i + 1] -= a;
        }
        for d in delta.iter_mut() {
            *d *= self.h_diag;
        }
        for (i, (_, _, rho)) in self.pairs.iter().enumerate() {
            let b = rho * dot(&delta, 2 * i + 1);
            delta[2 * i] += alpha[i] - b;
        }
        let gtd = delta.iter().zip(g_dots).map(|(d, p)| d * p).sum();
        (delta, gtd)
    }

    /// A fresh optimizer.
    pub fn new(cfg: LbfgsConfig) -> Self {
        Lbfgs {
            cfg,
            pairs: VecDeque::new(),
            last: None,
            h_diag: 1.0,
            cached: None,
            gram: None,
        }
    }

    /// Forgets the curvature history (e.g. after the problem changed size).
    pub fn reset(&mut self) {
        self.pairs.clear();
        self.last = None;
        self.h_diag = 1.0;
        self.cached = None;
        self.gram = None;
    }

    /// The number of correction pairs held.
    pub fn history_len(&self) -> usize {
        self.pairs.len()
    }

    /// The search direction `-H·g` by the two-loop recursion.
    fn direction(&self, g: &V) -> Result<V, V::Error> {
        let mut q = g.scale(-1.0)?;
        let mut alpha = vec![0.0; self.pairs.len()];
        for (i, (s, y, rho)) in self.pairs.iter().enumerate().rev() {
            let a = rho * s.dot(&q)?;
            alpha[i] = a;
            q = y.axpy(-a, &q)?;
        }
        q = q.scale(self.h_diag)?;
        for (i, (s, y, rho)) in self.pairs.iter().enumerate() {
            let b = rho * y.dot(&q)?;
            q = s.axpy(alpha[i] - b, &q)?;
        }
        Ok(q)
    }
}

/// The whole state of an L-BFGS run between steps, to save it (a checkpoint) and restore it
/// with [`Lbfgs::from_state`]: continuing from a restored state takes exactly the steps the
/// original would have taken.
///
/// A point evaluated by the line search at the end of a step is not part of it: the next step
/// evaluates that point again (the same loss and gradient, for a deterministic objective).
#[derive(Clone, Debug, PartialEq)]
pub struct LbfgsState<V> {
    /// Correction pairs `(s, y, 1/(yᵀs))`, oldest first.
    pub pairs: Vec<(V, V, f64)>,
    /// The last step taken and the gradient at its start (`None` before the first step).
    pub last: Option<(V, V)>,
    /// The scaling of the initial inverse Hessian, `yᵀs / yᵀy` of the newest pair.
    pub h_diag: f64,
}

impl<V> LbfgsState<V> {
    /// The same state with every vector converted (e.g. device tensors to host vectors).
    pub fn try_map<W, E>(self, mut f: impl FnMut(V) -> Result<W, E>) -> Result<LbfgsState<W>, E> {
        Ok(LbfgsState {
            pairs: self
                .pairs
                .into_iter()
                .map(|(s, y, rho)| Ok((f(s)?, f(y)?, rho)))
                .collect::<Result<_, E>>()?,
            last: match self.last {
                Some((s, g)) => Some((f(s)?, f(g)?)),
                None => None,
            },
            h_diag: self.h_diag,
        })
    }
}

/// A saved optimizer state that cannot be restored: its numbers or vector lengths are not
/// those of any state the optimizer could have reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidState(pub String);

impl std::fmt::Display for InvalidState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid optimizer state: {}", self.0)
    }
}

impl std::error::Error for InvalidState {}

/// Checks that every vector has the same length.
pub(crate) fn same_lengths<'a, V: Vector + 'a>(
    vectors: impl IntoIterator<Item = &'a V>,
) -> Result<(), InvalidState> {
    let mut len = None;
    for v in vectors {
        match len {
            None => len = Some(v.len()),
            Some(n) if n != v.len() => {
                return Err(InvalidState(format!(
                    "vectors of lengths {n} and {}",
                    v.len()
                )))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

impl<V: Vector> Lbfgs<V> {
    /// The state to save (the vectors are shared, not copied, where `V` shares buffers).
    pub fn state(&self) -> LbfgsState<V> {
        LbfgsState {
            pairs: self.pairs.iter().cloned().collect(),
            last: self.last.clone(),
            h_diag: self.h_diag,
        }
    }

    /// An optimizer continuing from a saved state; refused when the state could not have come
    /// from an optimizer with these settings (more pairs than the history, vectors of
    /// different lengths, curvature scalars that are not positive and finite).
    pub fn from_state(cfg: LbfgsConfig, state: LbfgsState<V>) -> Result<Self, InvalidState> {
        let history = cfg.history.max(1);
        if state.pairs.len() > history {
            return Err(InvalidState(format!(
                "{} correction pairs for a history of {history}",
                state.pairs.len()
            )));
        }
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if !positive(state.h_diag) || state.pairs.iter().any(|p| !positive(p.2)) {
            return Err(InvalidState(
                "a curvature scalar is not a positive number".into(),
            ));
        }
        same_lengths(
            state
                .pairs
                .iter()
                .flat_map(|(s, y, _)| [s, y])
                .chain(state.last.iter().flat_map(|(s, g)| [s, g])),
        )?;
        Ok(Lbfgs {
            cfg,
            pairs: state.pairs.into(),
            last: state.last,
            h_diag: state.h_diag,
            cached: None,
            gram: None,
        })
    }
}

/// The minimiser of the cubic through (x1, f1, g1) and (x2, f2, g2), kept inside `bounds`
/// (bisection when the cubic has no minimum).
fn cubic_min(x1: f64, f1: f64, g1: f64, x2: f64, f2: f64, g2: f64, bounds: (f64, f64)) -> f64 {
    let (lo, hi) = if bounds.0 <= bounds.1 {
        bounds
    } else {
        (bounds.1, bounds.0)
    };
    let d1 = g1 + g2 - 3.0 * (f1 - f2) / (x1 - x2);
    let d2sq = d1 * d1 - g1 * g2;
    if d2sq >= 0.0 && (x1 - x2).abs() > 0.0 {
        let d2 = d2sq.sqrt() * if x2 >= x1 { 1.0 } else { -1.0 };
        let t = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2.0 * d2));
        if t.is_finite() {
            return t.clamp(lo, hi);
        }
    }
    (lo + hi) / 2.0
}

struct Trial<V> {
    t: f64,
    f: f64,
    x: V,
    g: V,
    gtd: f64,
    /// Which evaluation of the step this was (`None`: the starting point, not evaluated here).
    index: Option<usize>,
}

/// A strong-Wolfe line search along `d` from `x` (Nocedal & Wright, algorithms 3.5 and 3.6).
#[allow(clippy::too_many_arguments)]
fn strong_wolfe<V, E, F>(
    f: &mut F,
    x: &V,
    d: &V,
    t0: f64,
    f0: f64,
    g0: &V,
    gtd0: f64,
    max_evals: usize,
    evals: &mut usize,
) -> Result<Trial<V>, E>
where
    V: Vector,
    E: From<V::Error>,
    F: FnMut(&V) -> Result<(f64, V), E>,
{
    const C1: f64 = 1e-4;
    const C2: f64 = 0.9;
    let mut eval = |t: f64, evals: &mut usize| -> Result<Trial<V>, E> {
        let xt = d.axpy(t, x)?;
        let (fv, g) = f(&xt)?;
        let index = Some(*evals);
        *evals += 1;
        let gtd = g.dot(d)?;
        Ok(Trial {
            t,
            f: fv,
            x: xt,
            g,
            gtd,
            index,
        })
    };
    let mut prev = Trial {
        t: 0.0,
        f: f0,
        x: x.clone(),
        g: g0.clone(),
        gtd: gtd0,
        index: None,
    };
    let mut t = t0;
    let (mut lo, mut hi);
    loop {
        let cur = eval(t, evals)?;
        if !cur.f.is_finite() {
            // Shrink into the region where the objective is defined.
            if *evals >= max_evals {
                return Ok(prev);
            }
            t = (prev.t + t) / 2.0;
            continue;
        }
        if cur.f > f0 + C1 * cur.t * gtd0 || (*evals > 1 && cur.f >= prev.f) {
            (lo, hi) = (prev, cur);
            break;
        }
        if cur.gtd.abs() <= -C2 * gtd0 {
            return Ok(cur);
        }
        if cur.gtd >= 0.0 {
            (lo, hi) = (cur, prev);
            break;
        }
        if *evals >= max_evals {
            return Ok(cur);
        }
        let next = cubic_min(
            prev.t,
            prev.f,
            prev.gtd,
            cur.t,
            cur.f,
            cur.gtd,
            (cur.t + 0.01 * (cur.t - prev.t), cur.t * 10.0),
        );
        prev = cur;
        t = next;
    }
    // Zoom: `lo` satisfies sufficient decrease and has the lower value.
    loop {
        if *evals >= max_evals || (hi.t - lo.t).abs() < 1e-12 {
            return Ok(lo);
        }
        let (a, b) = (lo.t.min(hi.t), lo.t.max(hi.t));
        let margin = 0.1 * (b - a);
        let t = cubic_min(
            lo.t,
            lo.f,
            lo.gtd,
            hi.t,
            hi.f,
            hi.gtd,
            (a + margin, b - margin),
        );
        let cur = eval(t, evals)?;
        if !cur.f.is_finite() || cur.f > f0 + C1 * cur.t * gtd0 || cur.f >= lo.f {
            hi = cur;
        } else {
            if cur.gtd.abs() <= -C2 * gtd0 {
                return Ok(cur);
            }
            if cur.gtd * (hi.t - lo.t) >= 0.0 {
                hi = std::mem::replace(&mut lo, cur);
            } else {
                lo = cur;
            }
        }
    }
}

impl<V: Vector> Optimizer<V> for Lbfgs<V> {
    fn step<E, F>(&mut self, x: &mut V, f: &mut F) -> Result<Step, E>
    where
        E: From<V::Error>,
        F: FnMut(&V) -> Result<(f64, V), E>,
    {
        let mut evaluations = 0;
        let (loss, g) = match self.cached.take() {
            Some((at, loss, g)) if at.same(x) => (loss, g),
            _ => {
                evaluations += 1;
                f(x)?
            }
        };
        let start_evaluated = evaluations == 1;
        let (g_l1, g_max) = g.norms()?;
        if g_max <= self.cfg.tolerance_grad {
            return Ok(Step {
                loss,
                evaluations,
                converged: true,
                start_evaluated,
                accepted: None,
            });
        }
        let first = self.last.is_none();
        let (mut d, mut gtd, gg) = if self.compact(x) {
            let g_dots = self.update_compact(&g)?;
            let gg = *g_dots.last().expect("ends with g·g");
            let (delta, gtd) = self.coefficients(&g_dots);
            let mut vectors = self.basis();
            vectors.push(&g);
            (V::combine(&delta, &vectors)?, gtd, Some(gg))
        } else {
            if let Some((s, g_prev)) = self.last.take() {
                let y = g_prev.axpy(-1.0, &g)?;
                let ys = y.dot(&s)?;
                if ys > 1e-10 {
                    if self.pairs.len() == self.cfg.history.max(1) {
                        self.pairs.pop_front();
                    }
                    self.h_diag = ys / y.dot(&y)?;
                    self.pairs.push_back((s, y, 1.0 / ys));
                }
            }
            let d = self.direction(&g)?;
            let gtd = g.dot(&d)?;
            (d, gtd, None)
        };
        let mut restart = first;
        if gtd >= 0.0 || !gtd.is_finite() {
            restart = true;
            // Not a descent direction: start the curvature history again.
            self.pairs.clear();
            self.h_diag = 1.0;
            if self.gram.is_some() {
                self.gram = Some(Vec::new());
            }
            d = g.scale(-1.0)?;
            gtd = match gg {
                Some(gg) => -gg,
                None => g.dot(&d)?,
            };
        }
        // The very first step (and a restart) has no curvature information: scale it down.
        let t = if restart {
            (1.0f64).min(1.0 / g_l1) * self.cfg.learning_rate
        } else {
            self.cfg.learning_rate
        };
        let mut accepted = None;
        let (t, next) = match self.cfg.line_search {
            LineSearch::None => {
                let t = if self.cfg.max_step.is_finite() {
                    let longest = t * d.norms()?.1;
                    if longest > self.cfg.max_step {
                        t * self.cfg.max_step / longest
                    } else {
                        t
                    }
                } else {
                    t
                };
                (t, d.axpy(t, x)?)
            }
            LineSearch::StrongWolfe => {
                let trial = strong_wolfe(
                    f,
                    x,
                    &d,
                    t,
                    loss,
                    &g,
                    gtd,
                    self.cfg.max_line_search_evals.max(1),
                    &mut evaluations,
                )?;
                if trial.t > 0.0 {
                    self.cached = Some((trial.x.clone(), trial.f, trial.g));
                    accepted = trial.index;
                }
                (trial.t, trial.x)
            }
        };
        // With the classic fixed step of 1 the step is the direction itself: share it rather
        // than hold a copy (`d·1` is `d` exactly).
        let s = if t == 1.0 { d } else { d.scale(t)? };
        *x = next;
        let converged = t == 0.0;
        self.last = Some((s, g));
        Ok(Step {
            loss,
            evaluations,
            converged,
            start_evaluated,
            accepted,
        })
    }
}
