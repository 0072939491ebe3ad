//! Nearest-neighbour feature matching (after Kolkin et al., "Neural Neighbor Style Transfer",
//! 2022): hypercolumns of several layers compared position by position at one working
//! resolution, the centred-cosine search of each position's nearest style hypercolumn, and
//! the local term `mean over positions of 1 − cos(h(x), target)` (see `docs/objective.md`).
//!
//! **Working grid.** The hypercolumn layers have strides `s_l` (1 to 16); the deepest has
//! stride `S`. The working stride is `w = min(4, S)` (NNST's quarter resolution), and the
//! working grid is the deepest layer's grid refined `S / w` times, so every working position
//! lies inside one position of every layer: layers finer than `w` are average-pooled onto it
//! (`w / s_l` squares), coarser ones repeated (nearest upsampling). A tile that owns a block of
//! the deepest layer owns exactly the working positions and finer positions under it, so the
//! term is local with no reach and tiles exactly.

use crate::term::{cut_var, Local, Site, Term, Window};
use nst_autodiff::Var;
use nst_tensor::{Backend, Error, PoolKind, Result, Tensor};
use std::sync::Arc;

/// The working stride of the hypercolumns (at most; less when every layer is finer).
pub const WORK_STRIDE: usize = 4;

/// The most style hypercolumns a search compares against; a larger set is thinned to every
/// `k`-th hypercolumn (in the order they were added) to stay under it.
pub const MAX_STYLE_ROWS: usize = 1 << 16;

/// Entries of one block of the distance matrix (rows × style hypercolumns) at a time.
const SEARCH_BLOCK: usize = 1 << 22;

/// `ε` under the square root of the norm in the cosine (NNST clamps the squared norm at 1e-8).
const NORM_EPS: f64 = 1e-8;

/// One layer of a hypercolumn.
#[derive(Clone, Debug, PartialEq)]
pub struct HyperLayer {
    /// The layer's name.
    pub name: String,
    /// Its stride in pixels (a power of two).
    pub stride: usize,
    /// Its channels.
    pub channels: usize,
    /// Its multiplier; the layer's features enter the hypercolumn times `multiplier / channels`
    /// (NNST's division by the channel count keeps wide layers from dominating the cosine).
    pub multiplier: f64,
}

/// The layers of a hypercolumn, deepest first (the order of the term's layers), and its
/// working grid.
#[derive(Clone, Debug, PartialEq)]
pub struct Hypercolumn {
    layers: Vec<HyperLayer>,
    work: usize,
}

impl Hypercolumn {
    /// The hypercolumn of `layers` (in any order; kept deepest first, ties in the given order).
    pub fn new(mut layers: Vec<HyperLayer>) -> Result<Self> {
        if layers.is_empty() {
            return Err(Error::invalid(
                "nn",
                "a hypercolumn needs at least one layer",
            ));
        }
        for l in &layers {
            if !l.stride.is_power_of_two() || l.stride > 64 || l.channels == 0 {
                return Err(Error::invalid(
                    "nn",
                    format!(
                        "layer {} has stride {} and {} channels",
                        l.name, l.stride, l.channels
                    ),
                ));
            }
            if !(l.multiplier.is_finite() && l.multiplier > 0.0) {
                return Err(Error::invalid(
                    "nn",
                    format!("the multiplier of {} must be positive", l.name),
                ));
            }
        }
        layers.sort_by_key(|l| std::cmp::Reverse(l.stride));
        let work = WORK_STRIDE.min(layers[0].stride);
        Ok(Hypercolumn { layers, work })
    }

    /// The layers, deepest first.
    pub fn layers(&self) -> &[HyperLayer] {
        &self.layers
    }

    /// The layer names, deepest first (a term's layers).
    pub fn names(&self) -> Vec<&str> {
        self.layers.iter().map(|l| l.name.as_str()).collect()
    }

    /// The hypercolumn's length (the sum of the layers' channels).
    pub fn len(&self) -> usize {
        self.layers.iter().map(|l| l.channels).sum()
    }

    /// Whether the hypercolumn is empty (never: [`Hypercolumn::new`] needs a layer).
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// The working stride in pixels.
    pub fn work_stride(&self) -> usize {
        self.work
    }

    /// The working grid (rows, columns) of an image whose deepest layer has `deep` positions.
    pub fn grid(&self, deep: (usize, usize)) -> (usize, usize) {
        let r = self.layers[0].stride / self.work;
        (deep.0 * r, deep.1 * r)
    }

    /// The hypercolumn's parts on the working positions a part of the image owns: one
    /// `[1, C_l, h, w]` per layer (deepest first), scaled by `multiplier / C_l`, and the owned
    /// window of the working grid (in the whole grid's coordinates). `inputs[l]` and `sites[l]`
    /// are the layer's activation and site, as a term receives them.
    pub fn parts<'t, B: Backend>(
        &self,
        inputs: &[Var<'t, B>],
        sites: &[Site],
    ) -> Result<(Window, Vec<Var<'t, B>>)> {
        if inputs.len() != self.layers.len() || sites.len() != self.layers.len() {
            return Err(Error::invalid(
                "nn",
                format!(
                    "{} activations for a hypercolumn of {} layers",
                    inputs.len(),
                    self.layers.len()
                ),
            ));
        }
        let deep = sites[0].global();
        let top = self.layers[0].stride;
        let r = top / self.work;
        let window = Window {
            y: deep.y * r,
            x: deep.x * r,
            h: deep.h * r,
            w: deep.w * r,
        };
        let mut parts = Vec::with_capacity(self.layers.len());
        for ((l, f), site) in self.layers.iter().zip(inputs).zip(sites) {
            // The layer's positions under the owned deep block, in the activation's own
            // coordinates.
            let k = top / l.stride;
            let need = Window {
                y: deep.y * k - site.origin.0,
                x: deep.x * k - site.origin.1,
                h: deep.h * k,
                w: deep.w * k,
            };
            let d = f.shape().dims();
            if d.len() != 4 || need.y + need.h > d[2] || need.x + need.w > d[3] {
                return Err(Error::invalid(
                    "nn",
                    format!(
                        "the activation of {} ({d:?}) does not hold the positions under the \
                         owned block",
                        l.name
                    ),
                ));
            }
            let v = cut_var(f, &need)?;
            let v = if l.stride < self.work {
                let p = self.work / l.stride;
                v.pool2d(PoolKind::Avg, p, p)?
            } else if l.stride > self.work {
                let u = l.stride / self.work;
                let c = l.channels;
                v.reshape([c * need.h, 1, need.w, 1])?
                    .broadcast_to([c * need.h, u, need.w, u])?
                    .reshape([1, c, need.h * u, need.w * u])?
            } else {
                v
            };
            parts.push(v.scale(l.multiplier / l.channels as f64)?);
        }
        Ok((window, parts))
    }

    /// The hypercolumns of `parts` (as [`Hypercolumn::parts`] returns them) as host rows,
    /// position-major: `[h·w, len]` in `f32`.
    pub fn rows<B: Backend>(&self, parts: &[Tensor<B>]) -> Result<Vec<f32>> {
        let d = self.len();
        let (h, w) = match parts.first().map(|p| p.dims()) {
            Some([_, _, h, w]) => (*h, *w),
            _ => return Err(Error::invalid("nn", "no hypercolumn parts")),
        };
        let n = h * w;
        let mut rows = vec![0f32; n * d];
        let mut at = 0;
        for (l, p) in self.layers.iter().zip(parts) {
            let v = p.to_f32()?;
            if v.len() != l.channels * n {
                return Err(Error::invalid("nn", "hypercolumn parts of different sizes"));
            }
            for c in 0..l.channels {
                for (i, x) in v[c * n..(c + 1) * n].iter().enumerate() {
                    rows[i * d + at + c] = *x;
                }
            }
            at += l.channels;
        }
        Ok(rows)
    }
}

/// The style's hypercolumns that targets are drawn from, with what the search needs: their
/// mean (both sides are centred by it) and the centred, unit-length hypercolumns as the
/// right-hand side of the search's product.
pub struct StyleSet<B: Backend> {
    /// `[M, D]` hypercolumns, unit length (the loss's targets).
    unit: Vec<f32>,
    mean: Vec<f32>,
    /// `[D, M]`, centred then unit length.
    search: Tensor<B>,
    d: usize,
    m: usize,
}

fn normalize(row: &mut [f32]) {
    let n = row
        .iter()
        .map(|v| (*v as f64) * (*v as f64))
        .sum::<f64>()
        .sqrt();
    let inv = if n > 0.0 { (1.0 / n) as f32 } else { 0.0 };
    row.iter_mut().for_each(|v| *v *= inv);
}

impl<B: Backend> StyleSet<B> {
    /// The set of the `[M, D]` hypercolumns `rows` (every style position of every style image,
    /// in a fixed order), thinned to at most [`MAX_STYLE_ROWS`].
    pub fn new(backend: &B, rows: &[f32], d: usize) -> Result<Self> {
        if d == 0 || rows.is_empty() || !rows.len().is_multiple_of(d) {
            return Err(Error::invalid("nn", "the style gave no hypercolumns"));
        }
        let all = rows.len() / d;
        let step = all.div_ceil(MAX_STYLE_ROWS);
        let kept: Vec<&[f32]> = rows.chunks_exact(d).step_by(step).collect();
        let m = kept.len();
        let mut mean = vec![0f64; d];
        for r in &kept {
            for (a, v) in mean.iter_mut().zip(r.iter()) {
                *a += *v as f64;
            }
        }
        let mean: Vec<f32> = mean.iter().map(|v| (v / m as f64) as f32).collect();
        let mut unit = Vec::with_capacity(m * d);
        let mut centred_t = vec![0f32; d * m];
        let mut row = vec![0f32; d];
        for (j, r) in kept.iter().enumerate() {
            row.copy_from_slice(r);
            normalize(&mut row);
            unit.extend_from_slice(&row);
            for ((o, v), mu) in row.iter_mut().zip(r.iter()).zip(&mean) {
                *o = v - mu;
            }
            normalize(&mut row);
            for (i, v) in row.iter().enumerate() {
                centred_t[i * m + j] = *v;
            }
        }
        let search = Tensor::from_f32(backend, &centred_t, [d, m])?;
        Ok(StyleSet {
            unit,
            mean,
            search,
            d,
            m,
        })
    }

    /// The number of hypercolumns `M`.
    pub fn len(&self) -> usize {
        self.m
    }

    /// Whether the set is empty (never: [`StyleSet::new`] refuses an empty one).
    pub fn is_empty(&self) -> bool {
        self.m == 0
    }

    /// For each of the `[n, D]` hypercolumns `rows`, the index of the style hypercolumn
    /// nearest by centred cosine distance (the first of equals). The distance matrix is
    /// computed a block of rows at a time, so memory stays bounded whatever `n`.
    pub fn nearest(&self, rows: &[f32]) -> Result<Vec<u32>> {
        let d = self.d;
        if !rows.len().is_multiple_of(d) {
            return Err(Error::invalid("nn", "query rows of another length"));
        }
        let n = rows.len() / d;
        let block = (SEARCH_BLOCK / self.m).clamp(1, n.max(1));
        let backend = self.search.backend();
        let mut out = Vec::with_capacity(n);
        let mut q = Vec::with_capacity(block * d);
        for chunk in rows.chunks(block * d) {
            q.clear();
            q.extend(chunk.iter().enumerate().map(|(i, v)| v - self.mean[i % d]));
            let k = chunk.len() / d;
            let scores = Tensor::from_f32(backend, &q, [k, d])?
                .matmul(&self.search)?
                .to_f32()?;
            for s in scores.chunks_exact(self.m) {
                let mut best = 0;
                for (j, v) in s.iter().enumerate() {
                    if *v > s[best] {
                        best = j;
                    }
                }
                out.push(best as u32);
            }
        }
        Ok(out)
    }
}

/// The search's memory in bytes beyond the set itself, for `m` style hypercolumns of length
/// `d` and `n` query hypercolumns at a time: one block of the distance matrix and its query
/// rows, on the host and the backend (for the memory planner).
pub fn search_bytes(d: usize, m: usize, n: usize) -> u64 {
    let m = m.clamp(1, MAX_STYLE_ROWS);
    let block = (SEARCH_BLOCK / m).clamp(1, n.max(1));
    8 * (block * m + block * d) as u64
}

/// A style set's own memory in bytes for `m` hypercolumns of length `d` (the unit rows on the
/// host, the centred ones on the backend).
pub fn set_bytes(d: usize, m: usize) -> u64 {
    let m = m.min(MAX_STYLE_ROWS) as u64;
    4 * (2 * m * d as u64 + d as u64)
}

/// Each working position's target: an index into a style set.
pub struct NnTargets<B: Backend> {
    /// The style hypercolumns.
    pub style: Arc<StyleSet<B>>,
    /// Row-major over the working grid.
    pub index: Vec<u32>,
    /// The working grid (rows, columns).
    pub grid: (usize, usize),
}

struct Nn<B: Backend> {
    layout: Hypercolumn,
    targets: Arc<NnTargets<B>>,
}

impl<B: Backend> Nn<B> {
    /// The unit targets of the working positions in `win`, one `[1, C_l, h, w]` per layer.
    fn target_parts(&self, backend: &B, win: &Window) -> Result<Vec<Tensor<B>>> {
        let t = &self.targets;
        let (d, n) = (t.style.d, win.h * win.w);
        let mut at = 0;
        let mut out = Vec::with_capacity(self.layout.layers.len());
        for l in &self.layout.layers {
            let mut v = vec![0f32; l.channels * n];
            for y in 0..win.h {
                for x in 0..win.w {
                    let j = t.index[(win.y + y) * t.grid.1 + win.x + x] as usize;
                    let row = &t.style.unit[j * d + at..j * d + at + l.channels];
                    let p = y * win.w + x;
                    for (c, r) in row.iter().enumerate() {
                        v[c * n + p] = *r;
                    }
                }
            }
            out.push(Tensor::from_f32(
                backend,
                &v,
                [1, l.channels, win.h, win.w],
            )?);
            at += l.channels;
        }
        Ok(out)
    }
}

impl<B: Backend> Local<B> for Nn<B> {
    fn loss<'t>(&self, inputs: &[Var<'t, B>], sites: &[Site]) -> Result<Var<'t, B>> {
        let (win, parts) = self.layout.parts(inputs, sites)?;
        let (gh, gw) = self.targets.grid;
        if win.y + win.h > gh || win.x + win.w > gw {
            return Err(Error::invalid(
                "nn",
                format!(
                    "targets for a {gw}x{gh} working grid, evaluated on positions up to {}x{}",
                    win.x + win.w,
                    win.y + win.h
                ),
            ));
        }
        let tape = parts[0].tape();
        let targets = self.target_parts(parts[0].value().backend(), &win)?;
        let mut ss: Option<Var<'t, B>> = None;
        let mut dot: Option<Var<'t, B>> = None;
        for (p, t) in parts.iter().zip(targets) {
            let s = p.square()?.sum_axis(1)?;
            let q = p.mul(&tape.constant(t))?.sum_axis(1)?;
            ss = Some(match ss {
                None => s,
                Some(a) => a.add(&s)?,
            });
            dot = Some(match dot {
                None => q,
                Some(a) => a.add(&q)?,
            });
        }
        let (ss, dot) = (ss.expect("a layer"), dot.expect("a layer"));
        let cos = dot.div(&ss.offset(NORM_EPS)?.sqrt()?)?;
        let total = (gh * gw).max(1) as f64;
        // Σ over the owned positions of (1 − cos), over the whole grid's count.
        cos.sum()?
            .affine(-1.0 / total, (win.h * win.w) as f64 / total)
    }
}

/// The nearest-neighbour term `nn`: `weight · (1/P) · Σ_p (1 − cos(h_p(x), t_p))` over the
/// `P` positions of the working grid, with `h_p` the hypercolumn of `layout` at `p` and `t_p`
/// its target (a unit style hypercolumn, fixed while the term lives).
pub fn nn_term<B: Backend>(
    layout: Hypercolumn,
    targets: NnTargets<B>,
    weight: f64,
) -> Result<Term<B>> {
    if targets.index.len() != targets.grid.0 * targets.grid.1 {
        return Err(Error::invalid(
            "nn",
            "the target indices do not cover the working grid",
        ));
    }
    if targets.style.d != layout.len() {
        return Err(Error::invalid(
            "nn",
            "the style set's hypercolumns are of another length",
        ));
    }
    if let Some(&j) = targets
        .index
        .iter()
        .find(|&&j| j as usize >= targets.style.m)
    {
        return Err(Error::invalid(
            "nn",
            format!("target index {j} beyond a style set of {}", targets.style.m),
        ));
    }
    let names: Vec<String> = layout.names().iter().map(|s| s.to_string()).collect();
    let settings = format!(
        "{names:?} work {} grid {:?} style {}",
        layout.work, targets.grid, targets.style.m
    );
    let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
    Ok(Term::local(
        "nn",
        &refs,
        weight,
        Nn {
            layout,
            targets: Arc::new(targets),
        },
    )
    .with_settings(settings))
}
