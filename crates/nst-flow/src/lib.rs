//! Dense optical flow for video style transfer, usable on its own.
//!
//! - [`flow`]: the displacement of every pixel of one grey frame into the next, by
//!   coarse-to-fine Horn–Schunck (Horn & Schunck 1981) with iterative warping: on an image
//!   pyramid, each level starts from the coarser level's flow, warps the second frame by it,
//!   linearises the brightness constancy around it and solves for the update with Jacobi
//!   iterations of the Horn–Schunck equations; a 3x3 median filter after each warp removes
//!   outliers (Sun, Roth & Black 2010).
//! - [`warp`]: backward warping, `out(p) = img(p + w(p))`, bilinear.
//! - [`consistency`]: the forward–backward check of Sundaram, Brox & Keutzer (2010), as
//!   Ruder, Dosovitskiy & Brox (2016) use it: a pixel's weight is 0 where the two flows
//!   disagree (occlusion), at motion boundaries, or where its match leaves the frame; else 1.
//!
//! ```
//! // A frame and the same frame moved 2 px right: the flow is (−2, 0) from the second back
//! // into the first, away from the borders.
//! let (w, h) = (48, 40);
//! let pattern = |x: f32, y: f32| (x * 0.4).sin() * (y * 0.3).cos() * 100.0 + 128.0;
//! let a = nst_flow::Gray::from_fn(w, h, |x, y| pattern(x as f32, y as f32));
//! let b = nst_flow::Gray::from_fn(w, h, |x, y| pattern(x as f32 - 2.0, y as f32));
//! let f = nst_flow::flow(&b, &a, &nst_flow::Params::default());
//! let (u, v) = f.at(24, 20);
//! assert!((u + 2.0).abs() < 0.2 && v.abs() < 0.2, "{u} {v}");
//! ```

#![warn(missing_docs)]

use rayon::prelude::*;

/// A grey image, row-major, values on any scale (e.g. 0–255).
#[derive(Clone, Debug, PartialEq)]
pub struct Gray {
    width: usize,
    height: usize,
    data: Vec<f32>,
}

impl Gray {
    /// From row-major values; `None` when the length is not `width · height` or a side is 0.
    pub fn new(width: usize, height: usize, data: Vec<f32>) -> Option<Gray> {
        (width > 0 && height > 0 && data.len() == width * height).then_some(Gray {
            width,
            height,
            data,
        })
    }

    /// From a function of the pixel's column and row.
    pub fn from_fn(width: usize, height: usize, f: impl Fn(usize, usize) -> f32) -> Gray {
        let data = (0..width * height)
            .map(|i| f(i % width, i / width))
            .collect();
        Gray {
            width,
            height,
            data,
        }
    }

    /// From interleaved RGB (BT.601 luma).
    pub fn from_rgb(width: usize, height: usize, rgb: &[f32]) -> Option<Gray> {
        if rgb.len() != width * height * 3 {
            return None;
        }
        let data = rgb
            .chunks_exact(3)
            .map(|p| 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2])
            .collect();
        Gray::new(width, height, data)
    }

    /// The width.
    pub fn width(&self) -> usize {
        self.width
    }

    /// The height.
    pub fn height(&self) -> usize {
        self.height
    }

    /// The values, row-major.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    fn get(&self, x: isize, y: isize) -> f32 {
        let x = x.clamp(0, self.width as isize - 1) as usize;
        let y = y.clamp(0, self.height as isize - 1) as usize;
        self.data[y * self.width + x]
    }

    /// Bilinear sample at (x, y); `None` outside the image.
    fn sample(&self, x: f32, y: f32) -> Option<f32> {
        let (w, h) = (self.width as f32, self.height as f32);
        if !(x >= 0.0 && y >= 0.0 && x <= w - 1.0 && y <= h - 1.0) {
            return None;
        }
        let (x0, y0) = (x.floor(), y.floor());
        let (fx, fy) = (x - x0, y - y0);
        let (x0, y0) = (x0 as isize, y0 as isize);
        let a = self.get(x0, y0) * (1.0 - fx) + self.get(x0 + 1, y0) * fx;
        let b = self.get(x0, y0 + 1) * (1.0 - fx) + self.get(x0 + 1, y0 + 1) * fx;
        Some(a * (1.0 - fy) + b * fy)
    }

    /// A 5-tap binomial blur (σ ≈ 1).
    fn blur(&self) -> Gray {
        const K: [f32; 5] = [1.0 / 16.0, 4.0 / 16.0, 6.0 / 16.0, 4.0 / 16.0, 1.0 / 16.0];
        let (w, h) = (self.width, self.height);
        let mut tmp = vec![0.0; w * h];
        for y in 0..h {
            for x in 0..w {
                tmp[y * w + x] = (0..5)
                    .map(|k| K[k] * self.get(x as isize + k as isize - 2, y as isize))
                    .sum();
            }
        }
        let t = Gray {
            width: w,
            height: h,
            data: tmp,
        };
        Gray::from_fn(w, h, |x, y| {
            (0..5)
                .map(|k| K[k] * t.get(x as isize, y as isize + k as isize - 2))
                .sum()
        })
    }

    /// Blurred and halved (ceiling sizes).
    fn half(&self) -> Gray {
        let b = self.blur();
        let (w, h) = (self.width.div_ceil(2), self.height.div_ceil(2));
        Gray::from_fn(w, h, |x, y| b.get(2 * x as isize, 2 * y as isize))
    }
}

/// A dense flow field: the displacement `(u, v)` of every pixel of the first frame to its
/// match in the second, in pixels.
#[derive(Clone, Debug, PartialEq)]
pub struct Flow {
    width: usize,
    height: usize,
    u: Vec<f32>,
    v: Vec<f32>,
}

impl Flow {
    /// The zero flow.
    pub fn zeros(width: usize, height: usize) -> Flow {
        Flow {
            width,
            height,
            u: vec![0.0; width * height],
            v: vec![0.0; width * height],
        }
    }

    /// From the two components, row-major; `None` when the lengths do not match.
    pub fn new(width: usize, height: usize, u: Vec<f32>, v: Vec<f32>) -> Option<Flow> {
        (u.len() == width * height && v.len() == width * height).then_some(Flow {
            width,
            height,
            u,
            v,
        })
    }

    /// The width.
    pub fn width(&self) -> usize {
        self.width
    }

    /// The height.
    pub fn height(&self) -> usize {
        self.height
    }

    /// The displacement at a pixel.
    pub fn at(&self, x: usize, y: usize) -> (f32, f32) {
        let i = y * self.width + x;
        (self.u[i], self.v[i])
    }

    /// The horizontal components, row-major.
    pub fn u(&self) -> &[f32] {
        &self.u
    }

    /// The vertical components, row-major.
    pub fn v(&self) -> &[f32] {
        &self.v
    }

    fn comp(c: &[f32], w: usize, h: usize) -> Gray {
        Gray {
            width: w,
            height: h,
            data: c.to_vec(),
        }
    }

    /// Upsampled to `w x h` (bilinear), the vectors scaled with the size.
    fn upsample(&self, w: usize, h: usize) -> Flow {
        let (sx, sy) = (w as f32 / self.width as f32, h as f32 / self.height as f32);
        let (gu, gv) = (
            Flow::comp(&self.u, self.width, self.height),
            Flow::comp(&self.v, self.width, self.height),
        );
        let at = |g: &Gray, x: usize, y: usize| {
            let fx = ((x as f32 + 0.5) / sx - 0.5).clamp(0.0, (self.width - 1) as f32);
            let fy = ((y as f32 + 0.5) / sy - 0.5).clamp(0.0, (self.height - 1) as f32);
            g.sample(fx, fy).unwrap_or(0.0)
        };
        let mut u = vec![0.0; w * h];
        let mut v = vec![0.0; w * h];
        for y in 0..h {
            for x in 0..w {
                u[y * w + x] = at(&gu, x, y) * sx;
                v[y * w + x] = at(&gv, x, y) * sy;
            }
        }
        Flow {
            width: w,
            height: h,
            u,
            v,
        }
    }

    /// A 3x3 median of each component.
    fn median(&mut self) {
        let (w, h) = (self.width, self.height);
        for c in [&mut self.u, &mut self.v] {
            let src = Flow::comp(c, w, h);
            for y in 0..h {
                for x in 0..w {
                    let mut n = [0.0f32; 9];
                    for (k, slot) in n.iter_mut().enumerate() {
                        *slot = src.get(
                            x as isize + (k % 3) as isize - 1,
                            y as isize + (k / 3) as isize - 1,
                        );
                    }
                    n.sort_by(f32::total_cmp);
                    c[y * w + x] = n[4];
                }
            }
        }
    }
}

/// The settings of [`flow`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Params {
    /// Pyramid levels at most (the coarsest keeps a side of at least 8 px).
    pub levels: usize,
    /// Warps per level.
    pub warps: usize,
    /// Jacobi iterations per warp.
    pub iterations: usize,
    /// Smoothness weight α, for intensities on a 0–255 scale.
    pub alpha: f32,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            levels: 6,
            warps: 4,
            iterations: 200,
            alpha: 3.0,
        }
    }
}

/// The dense flow from `a` to `b` (same size): `b(p + w(p)) ≈ a(p)` for every pixel `p`.
///
/// # Panics
/// When the frames' sizes differ.
pub fn flow(a: &Gray, b: &Gray, params: &Params) -> Flow {
    assert!(
        a.width == b.width && a.height == b.height,
        "flow: frames of {}x{} and {}x{}",
        a.width,
        a.height,
        b.width,
        b.height
    );
    let mut pa = vec![a.blur()];
    let mut pb = vec![b.blur()];
    while pa.len() < params.levels.max(1) {
        let last = pa.last().expect("one level");
        if last.width.min(last.height) < 16 {
            break;
        }
        let (na, nb) = (last.half(), pb.last().expect("one level").half());
        pa.push(na);
        pb.push(nb);
    }
    let mut f: Option<Flow> = None;
    for (la, lb) in pa.iter().zip(&pb).rev() {
        let mut cur = match f {
            None => Flow::zeros(la.width, la.height),
            Some(prev) => prev.upsample(la.width, la.height),
        };
        for _ in 0..params.warps.max(1) {
            refine(la, lb, &mut cur, params);
            cur.median();
        }
        f = Some(cur);
    }
    f.expect("one level")
}

/// One warp of one level: linearise around `f` and solve the Horn–Schunck equations for the
/// new flow by Jacobi iterations.
fn refine(a: &Gray, b: &Gray, f: &mut Flow, params: &Params) {
    let (w, h) = (a.width, a.height);
    let n = w * h;
    // Derivatives: the average of the first frame's and the warped second frame's spatial
    // gradients, and the temporal difference; zero where the match leaves the frame.
    let mut ix = vec![0.0f32; n];
    let mut iy = vec![0.0f32; n];
    let mut it = vec![0.0f32; n];
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            let (px, py) = (x as f32 + f.u[i], y as f32 + f.v[i]);
            let Some(bw) = b.sample(px, py) else {
                continue;
            };
            let bx =
                0.5 * (b.sample(px + 1.0, py).unwrap_or(bw) - b.sample(px - 1.0, py).unwrap_or(bw));
            let by =
                0.5 * (b.sample(px, py + 1.0).unwrap_or(bw) - b.sample(px, py - 1.0).unwrap_or(bw));
            let (xi, yi) = (x as isize, y as isize);
            let ax = 0.5 * (a.get(xi + 1, yi) - a.get(xi - 1, yi));
            let ay = 0.5 * (a.get(xi, yi + 1) - a.get(xi, yi - 1));
            ix[i] = 0.5 * (ax + bx);
            iy[i] = 0.5 * (ay + by);
            it[i] = bw - a.data[i];
        }
    }
    let (u0, v0) = (f.u.clone(), f.v.clone());
    let a2 = params.alpha * params.alpha;
    let mut u = f.u.clone();
    let mut v = f.v.clone();
    let mut nu = vec![0.0f32; n];
    let mut nv = vec![0.0f32; n];
    for _ in 0..params.iterations {
        nu.par_chunks_mut(w)
            .zip(nv.par_chunks_mut(w))
            .enumerate()
            .for_each(|(y, (ru, rv))| {
                for x in 0..w {
                    let i = y * w + x;
                    // The 4-neighbour average (edges replicate).
                    let nb = |c: &[f32]| {
                        let l = c[y * w + x.saturating_sub(1)];
                        let r = c[y * w + (x + 1).min(w - 1)];
                        let t = c[y.saturating_sub(1) * w + x];
                        let d = c[(y + 1).min(h - 1) * w + x];
                        0.25 * (l + r + t + d)
                    };
                    let (ub, vb) = (nb(&u), nb(&v));
                    let r = ix[i] * (ub - u0[i]) + iy[i] * (vb - v0[i]) + it[i];
                    let t = r / (a2 + ix[i] * ix[i] + iy[i] * iy[i]);
                    ru[x] = ub - ix[i] * t;
                    rv[x] = vb - iy[i] * t;
                }
            });
        std::mem::swap(&mut u, &mut nu);
        std::mem::swap(&mut v, &mut nv);
    }
    f.u = u;
    f.v = v;
}

/// Backward warping of an interleaved image with `channels` channels: `out(p) = img(p + w(p))`
/// (bilinear), and whether `p + w(p)` is inside the image (where it is not, `out(p)` is 0).
///
/// # Panics
/// When the sizes do not match.
pub fn warp(img: &[f32], channels: usize, f: &Flow) -> (Vec<f32>, Vec<bool>) {
    let (w, h) = (f.width, f.height);
    assert_eq!(
        img.len(),
        w * h * channels,
        "warp: image and flow sizes differ"
    );
    let planes: Vec<Gray> = (0..channels)
        .map(|c| Gray {
            width: w,
            height: h,
            data: img.iter().skip(c).step_by(channels).copied().collect(),
        })
        .collect();
    let mut out = vec![0.0; img.len()];
    let mut inside = vec![false; w * h];
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            let (px, py) = (x as f32 + f.u[i], y as f32 + f.v[i]);
            for (c, p) in planes.iter().enumerate() {
                if let Some(s) = p.sample(px, py) {
                    out[i * channels + c] = s;
                    inside[i] = true;
                }
            }
        }
    }
    (out, inside)
}

/// The consistency weights of the pixels of a frame, from its flow `backward` into the
/// previous frame and the previous frame's flow `forward` into it (Sundaram et al. 2010):
/// with `ŵ = backward(p)` and `w̃ = forward(p + ŵ)`, the weight is 0 where
/// - the match `p + ŵ` leaves the frame;
/// - `|w̃ + ŵ|² > 0.01·(|w̃|² + |ŵ|²) + 0.5` (the flows disagree: occluded or wrong); or
/// - `|∇û|² + |∇v̂|² > 0.01·|ŵ|² + 0.002` (a motion boundary);
///
/// and 1 elsewhere.
///
/// # Panics
/// When the sizes differ.
pub fn consistency(backward: &Flow, forward: &Flow) -> Vec<f32> {
    let (w, h) = (backward.width, backward.height);
    assert!(
        forward.width == w && forward.height == h,
        "consistency: flows of different sizes"
    );
    let (fu, fv) = (Flow::comp(&forward.u, w, h), Flow::comp(&forward.v, w, h));
    let (bu, bv) = (Flow::comp(&backward.u, w, h), Flow::comp(&backward.v, w, h));
    let mut c = vec![0.0; w * h];
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            let (u, v) = (backward.u[i], backward.v[i]);
            let (px, py) = (x as f32 + u, y as f32 + v);
            let (Some(tu), Some(tv)) = (fu.sample(px, py), fv.sample(px, py)) else {
                continue;
            };
            let sum = (tu + u).powi(2) + (tv + v).powi(2);
            let mags = tu * tu + tv * tv + u * u + v * v;
            if sum > 0.01 * mags + 0.5 {
                continue;
            }
            let (xi, yi) = (x as isize, y as isize);
            let gx = |g: &Gray| 0.5 * (g.get(xi + 1, yi) - g.get(xi - 1, yi));
            let gy = |g: &Gray| 0.5 * (g.get(xi, yi + 1) - g.get(xi, yi - 1));
            let grad = gx(&bu).powi(2) + gy(&bu).powi(2) + gx(&bv).powi(2) + gy(&bv).powi(2);
            if grad > 0.01 * (u * u + v * v) + 0.002 {
                continue;
            }
            c[i] = 1.0;
        }
    }
    c
}
