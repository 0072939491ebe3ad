//! The nearest-neighbour style loss's targets (`--style-loss nn`): the style images'
//! hypercolumns pooled into one set, and each working position's nearest style hypercolumn
//! for a blend of the current image and the content, found tile by tile in bounded memory.
//! The term itself is [`nst_loss::nn_term`]; the objective refreshes its targets
//! ([`crate::Objective::refresh`]).

use crate::targets::{each_part, key_of, unowned};
use crate::tiled::Tiling;
use crate::{Error, Result};
use nst_loss::nn::{HyperLayer, Hypercolumn, NnTargets, StyleSet};
use nst_loss::term::{Site, Window};
use nst_tensor::{Backend, Tensor};
use nst_vgg::{Span, Vgg};
use std::sync::Arc;

/// The layers of the nearest-neighbour loss by default, with their multipliers: the first
/// layer of each of VGG19's first four blocks (NNST matched features down to the fourth block
/// and dropped the fifth for speed without loss of quality; one layer a block keeps the
/// hypercolumn at 960 channels, a third of NNST's, and the search cost with it). The
/// multipliers (1, 0.3, 0.1, 0.1) lean the cosine toward the shallow layers, as NNST's
/// division by the channels does: measured on three pairs at 192 px, they kept more of the
/// photo and came nearer the painting's palette than equal multipliers or ones leaning deep
/// (0.1, 0.3, 1, 3), whose renders came out dim and grey (docs/objective.md).
pub const NN_LAYERS: [(&str, f64); 4] = [
    ("relu1_1", 1.0),
    ("relu2_1", 0.3),
    ("relu3_1", 0.1),
    ("relu4_1", 0.1),
];

/// The share of the current image in the image whose hypercolumns are matched (NNST's
/// `alpha`: the rest is the content photo).
pub const NN_BLEND: f64 = 0.25;

/// The settings of the nearest-neighbour style loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NnConfig {
    /// Recompute the targets every this many iterations (besides each scale's start).
    pub refresh: usize,
    /// Add the style images' flips and quarter turns to the style set.
    pub augment: bool,
}

/// The default refresh interval (iterations): in effect, at each scale's start only. Measured
/// on two pairs at 256 px (docs/benchmarks.md), remaking the targets every 10 or 50 iterations
/// kept less of the photo, matched the painting's palette less and took longer than never
/// remaking them within a scale (each remake restarts L-BFGS's history).
pub const NN_REFRESH: usize = 500;

impl Default for NnConfig {
    fn default() -> Self {
        NnConfig {
            refresh: NN_REFRESH,
            augment: false,
        }
    }
}

/// The hypercolumn of `layers` (name, multiplier) of `model`.
pub fn hypercolumn<B: Backend>(model: &Vgg<B>, layers: &[(String, f64)]) -> Result<Hypercolumn> {
    let table = model.layers();
    let mut out = Vec::with_capacity(layers.len());
    for (name, m) in layers {
        let i = model.layer_index(name)?;
        let span =
            Span::of(table, i).ok_or_else(|| Error::Config(format!("no layer with index {i}")))?;
        out.push(HyperLayer {
            name: name.clone(),
            stride: span.stride,
            channels: model.channels(i),
            multiplier: *m,
        });
    }
    Ok(Hypercolumn::new(out)?)
}

/// Calls `visit` with the hypercolumn rows (`[n, D]`) of every part of `image` and the
/// window of the working grid they cover, with the grid's size.
fn each_hypercolumn<B: Backend>(
    model: &Vgg<B>,
    layout: &Hypercolumn,
    image: &Tensor<B>,
    tiling: Tiling,
    mut visit: impl FnMut(Window, (usize, usize), Vec<f32>) -> Result<()>,
) -> Result<()> {
    let keys = layout
        .names()
        .iter()
        .map(|n| key_of(model, n))
        .collect::<Result<Vec<_>>>()?;
    each_part(model, image, &keys, tiling, |vars, sites| {
        let Some(deep) = sites[0] else {
            return Ok(());
        };
        let grid = layout.grid(deep.full);
        if grid.0 == 0 || grid.1 == 0 {
            return Err(Error::Config(too_small(layout)));
        }
        let sites: Vec<Site> = sites.iter().map(|s| s.unwrap_or_else(unowned)).collect();
        let (win, parts) = layout.parts(vars, &sites)?;
        let parts: Vec<Tensor<B>> = parts.iter().map(|p| p.value().clone()).collect();
        visit(win, grid, layout.rows(&parts)?)
    })
}

fn too_small(layout: &Hypercolumn) -> String {
    let deep = &layout.layers()[0];
    format!(
        "an image is too small for the nearest-neighbour loss: {} needs at least {} pixels a side",
        deep.name, deep.stride
    )
}

/// `image` (`[1, 3, H, W]`) turned by `quarter` quarter turns, then mirrored left to right
/// when `mirror`.
fn turned<B: Backend>(image: &Tensor<B>, quarter: usize, mirror: bool) -> Result<Tensor<B>> {
    let d = image.dims();
    let (c, h, w) = (d[1], d[2], d[3]);
    let v = image.to_f32()?;
    let (oh, ow) = if quarter % 2 == 1 { (w, h) } else { (h, w) };
    let mut out = vec![0f32; c * oh * ow];
    for ch in 0..c {
        for y in 0..oh {
            for x in 0..ow {
                let x0 = if mirror { ow - 1 - x } else { x };
                // The source pixel of output (y, x0) after `quarter` clockwise turns.
                let (sy, sx) = match quarter % 4 {
                    0 => (y, x0),
                    1 => (h - 1 - x0, y),
                    2 => (h - 1 - y, w - 1 - x0),
                    _ => (x0, w - 1 - y),
                };
                out[(ch * oh + y) * ow + x] = v[(ch * h + sy) * w + sx];
            }
        }
    }
    Ok(Tensor::from_f32(image.backend(), &out, [1, c, oh, ow])?)
}

/// The style set of `styles` (`[1, 3, H, W]`, model space): every working position of every
/// style image (with `augment`, of its eight flips and quarter turns too) pooled into one set,
/// each position counting once whatever its image's blend weight (a style with weight 0 adds
/// nothing); thinned to [`nst_loss::nn::MAX_STYLE_ROWS`].
pub fn style_set<B: Backend>(
    model: &Vgg<B>,
    layout: &Hypercolumn,
    styles: &[Tensor<B>],
    blend: &[f64],
    augment: bool,
    tiling: Tiling,
) -> Result<StyleSet<B>> {
    let mut rows = Vec::new();
    let variants: &[(usize, bool)] = if augment {
        &[
            (0, false),
            (1, false),
            (2, false),
            (3, false),
            (0, true),
            (1, true),
            (2, true),
            (3, true),
        ]
    } else {
        &[(0, false)]
    };
    let backend = styles
        .first()
        .ok_or_else(|| Error::Config("the nearest-neighbour loss needs a style image".into()))?
        .backend()
        .clone();
    for (k, s) in styles.iter().enumerate() {
        if blend.get(k).is_some_and(|b| *b == 0.0) {
            continue;
        }
        for &(q, m) in variants {
            let img = if (q, m) == (0, false) {
                s.clone()
            } else {
                turned(s, q, m)?
            };
            each_hypercolumn(model, layout, &img, tiling, |_, _, r| {
                rows.extend_from_slice(&r);
                Ok(())
            })
            .map_err(|e| match e {
                Error::Model(_) => Error::Config(format!(
                    "style image {} is too small for the nearest-neighbour loss ({e})",
                    k + 1
                )),
                e => e,
            })?;
        }
    }
    Ok(StyleSet::new(&backend, &rows, layout.len())?)
}

/// The targets of each working position of `image` (`[1, 3, H, W]`): the nearest style
/// hypercolumn, found part by part as `tiling` cuts the image.
pub fn nn_targets<B: Backend>(
    model: &Vgg<B>,
    layout: &Hypercolumn,
    style: Arc<StyleSet<B>>,
    image: &Tensor<B>,
    tiling: Tiling,
) -> Result<NnTargets<B>> {
    let mut index: Vec<u32> = Vec::new();
    let mut grid = (0, 0);
    each_hypercolumn(model, layout, image, tiling, |win, g, rows| {
        if index.is_empty() {
            grid = g;
            index = vec![0; g.0 * g.1];
        }
        let nearest = style.nearest(&rows)?;
        for y in 0..win.h {
            let at = (win.y + y) * grid.1 + win.x;
            index[at..at + win.w].copy_from_slice(&nearest[y * win.w..(y + 1) * win.w]);
        }
        Ok(())
    })
    .map_err(|e| match e {
        Error::Model(_) => Error::Config(format!(
            "the image is too small for the nearest-neighbour loss ({e})"
        )),
        e => e,
    })?;
    if index.is_empty() {
        return Err(Error::Config(too_small(layout)));
    }
    Ok(NnTargets { style, index, grid })
}

/// The image whose hypercolumns are matched: `NN_BLEND · x + (1 − NN_BLEND) · content`.
pub fn blend_image<B: Backend>(x: &Tensor<B>, content: &Tensor<B>) -> Result<Tensor<B>> {
    Ok(x.scale(NN_BLEND)?.add(&content.scale(1.0 - NN_BLEND)?)?)
}
