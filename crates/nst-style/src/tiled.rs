//! Tile plans for the exact tiled objective: how an image is cut into inner tiles, how wide a
//! halo each tile reads around itself, and where each used layer's positions of a tile lie.
//!
//! Every term of the objective is a sum over positions, and an activation depends only on
//! the input pixels of its receptive field ([`nst_vgg::Span`]). A tile read with a halo at
//! least as wide as the deepest used layer's margin therefore reproduces the whole image's
//! activations on its inner positions, and summing the tiles' contributions gives the
//! whole image's objective and gradient (see `docs/tiling.md`).

use crate::{Error, Result};
use nst_vgg::{Span, Vgg};

/// The layer index that stands for the image itself ([`nst_loss::INPUT`]): stride 1, three
/// channels, no margin.
pub(crate) const IMAGE: usize = usize::MAX;

/// Whether and how the objective is evaluated tile by tile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Tiling {
    /// The whole image at once.
    #[default]
    Off,
    /// Inner tiles of at most this many pixels per side (a positive multiple of the
    /// alignment, [`Geometry::align`]); the image is cut into equal tiles of at most this
    /// side, rounded up to the alignment.
    Tiles(usize),
    /// Tiles of which only the last `keep` of pass 1 keep their tape for pass 2 (the others
    /// are run again); the default keeps every tile's deep part. Fewer kept tapes hold less
    /// memory and cost more time.
    TilesKeeping {
        /// The largest inner side.
        tile: usize,
        /// Tiles whose tape is kept.
        keep: usize,
    },
    /// Tiles of at most this side for the network's shallow part (to `pool3`, where the
    /// activations are large and the receptive fields small, so the halo is narrow); the
    /// deeper layers run on the whole image at once, their input assembled from the tiles'
    /// own positions. Exact like [`Tiling::Tiles`], with far less halo and no deep
    /// recomputation; it holds the deep part's activations of the whole image. An
    /// objective with a term reading layers on both sides of `pool3` tiles the whole network
    /// instead, keeping no tape.
    Shallow(usize),
    /// Tiles with a given halo (a multiple of the alignment) instead of the computed one:
    /// for studying the halo. A halo narrower than [`Geometry::halo`] is inexact.
    TilesWithHalo {
        /// The largest inner side.
        tile: usize,
        /// The halo on each side.
        halo: usize,
    },
}

pub use nst_loss::Window;

/// One tile: the pixels it owns and the pixels it reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tile {
    /// The pixels whose positions this tile contributes (the tiles partition the image).
    pub inner: Window,
    /// The inner window plus the halo, clipped to the image.
    pub crop: Window,
}

/// The layers an objective uses and what tiling needs to know of them.
#[derive(Clone, Debug)]
pub struct Geometry {
    /// (layer index, stride, channels) of every used layer.
    layers: Vec<(usize, usize, usize)>,
    halo: usize,
    align: usize,
}

impl Geometry {
    /// The geometry of `model`'s layers at the given indices (at least one).
    pub fn new<B: nst_tensor::Backend>(model: &Vgg<B>, indices: &[usize]) -> Result<Self> {
        let uses: Vec<(usize, usize)> = indices.iter().map(|&i| (i, 0)).collect();
        Self::with_reach(model, &uses)
    }

    /// The geometry of layers read with a reach: `(index, reach)` pairs, where a reach of
    /// `r` means that the positions within `r` of a tile's own positions are read too (the
    /// halo grows by `r` strides of the layer).
    pub(crate) fn with_reach<B: nst_tensor::Backend>(
        model: &Vgg<B>,
        uses: &[(usize, usize)],
    ) -> Result<Self> {
        let table = model.layers();
        let mut layers = Vec::new();
        let (mut margin, mut align) = (1, 1);
        for &(i, reach) in uses {
            if i == IMAGE {
                margin = margin.max(reach);
                continue;
            }
            let span = Span::of(table, i)
                .ok_or_else(|| Error::Config(format!("no layer with index {i}")))?;
            let channels = model.channels(i);
            margin = margin.max(span.margin() + reach * span.stride);
            align = align.max(span.stride);
            layers.push((i, span.stride, channels));
        }
        // Tile origins and crop origins sit on multiples of the deepest stride, so that every
        // pooling window of a crop is a pooling window of the whole image.
        Ok(Geometry {
            layers,
            halo: margin.div_ceil(align) * align,
            align,
        })
    }

    /// The halo a tile reads on each side: the widest margin of the used layers, rounded up
    /// to the alignment.
    pub fn halo(&self) -> usize {
        self.halo
    }

    /// The alignment of tile origins: the stride of the deepest used layer.
    pub fn align(&self) -> usize {
        self.align
    }

    /// Stride and channels of a used layer, by layer index.
    pub(crate) fn layer(&self, index: usize) -> (usize, usize) {
        let (_, s, c) = self
            .layers
            .iter()
            .find(|(i, _, _)| *i == index)
            .copied()
            .unwrap_or((index, 1, 3));
        (s, c)
    }

    /// The plan for an `h x w` image with inner tiles of at most `tile` pixels per side and
    /// this geometry's halo.
    pub fn plan(&self, h: usize, w: usize, tile: usize) -> Result<TilePlan> {
        self.plan_with_halo(h, w, tile, self.halo)
    }

    /// [`Geometry::plan`] with another halo (a multiple of the alignment); a halo narrower
    /// than [`Geometry::halo`] gives inexact results, which tests use to show the halo is
    /// the minimum.
    pub fn plan_with_halo(&self, h: usize, w: usize, tile: usize, halo: usize) -> Result<TilePlan> {
        if tile == 0 || !tile.is_multiple_of(self.align) {
            return Err(Error::Config(format!(
                "the tile size must be a positive multiple of {} for these layers, got {tile}",
                self.align
            )));
        }
        if !halo.is_multiple_of(self.align) {
            return Err(Error::Config(format!(
                "the halo must be a multiple of {}, got {halo}",
                self.align
            )));
        }
        let ys = cuts(h, tile, self.align);
        let xs = cuts(w, tile, self.align);
        let mut tiles = Vec::with_capacity(ys.len() * xs.len());
        for &(y, th) in &ys {
            for &(x, tw) in &xs {
                let cy = y.saturating_sub(halo);
                let cx = x.saturating_sub(halo);
                let cy1 = (y + th + halo).min(h);
                let cx1 = (x + tw + halo).min(w);
                tiles.push(Tile {
                    inner: Window { y, x, h: th, w: tw },
                    crop: Window {
                        y: cy,
                        x: cx,
                        h: cy1 - cy,
                        w: cx1 - cx,
                    },
                });
            }
        }
        Ok(TilePlan {
            height: h,
            width: w,
            tile,
            halo,
            tiles,
        })
    }

    /// The positions a tile owns at layer `index`, in the crop's coordinates at that layer:
    /// `(y, h, x, w)`, or `None` when the tile owns none there.
    pub(crate) fn inner_at(&self, plan: &TilePlan, tile: &Tile, index: usize) -> Option<Window> {
        let (s, _) = self.layer(index);
        let axis = |start: usize, len: usize, crop: usize, full: usize| -> (usize, usize) {
            let end = if start + len == full {
                full / s
            } else {
                (start + len) / s
            };
            let a = start / s;
            (a - crop / s, end.saturating_sub(a))
        };
        let (y, h) = axis(tile.inner.y, tile.inner.h, tile.crop.y, plan.height);
        let (x, w) = axis(tile.inner.x, tile.inner.w, tile.crop.x, plan.width);
        (h > 0 && w > 0).then_some(Window { y, x, h, w })
    }

    /// The number of positions of layer `index` in a whole `h x w` image.
    pub(crate) fn positions(&self, h: usize, w: usize, index: usize) -> usize {
        let (s, _) = self.layer(index);
        (h / s) * (w / s)
    }
}

/// Cuts `len` into pieces of equal size (a multiple of `align`, at most `max`) but the last.
fn cuts(len: usize, max: usize, align: usize) -> Vec<(usize, usize)> {
    let n = len.div_ceil(max).max(1);
    let t = len.div_ceil(n).div_ceil(align).max(1) * align;
    let mut out = Vec::new();
    let mut at = 0;
    while at < len {
        let l = t.min(len - at);
        out.push((at, l));
        at += l;
    }
    out
}

/// How an image is cut into tiles.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TilePlan {
    /// Image height.
    pub height: usize,
    /// Image width.
    pub width: usize,
    /// The largest inner side asked for.
    pub tile: usize,
    /// The halo read on each side.
    pub halo: usize,
    /// The tiles, row by row.
    pub tiles: Vec<Tile>,
}

impl TilePlan {
    /// The largest crop, (h, w).
    pub fn largest_crop(&self) -> (usize, usize) {
        self.tiles
            .iter()
            .fold((0, 0), |(h, w), t| (h.max(t.crop.h), w.max(t.crop.w)))
    }

    /// The longest side of the tiles' inner windows (`None` without tiles).
    pub fn largest_inner(&self) -> Option<usize> {
        self.tiles.iter().map(|t| t.inner.h.max(t.inner.w)).max()
    }

    /// The pixels read per evaluation over the pixels of the image (1 when untiled).
    pub fn overhead(&self) -> f64 {
        let read: usize = self.tiles.iter().map(|t| t.crop.h * t.crop.w).sum();
        read as f64 / (self.height * self.width).max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_cover_and_align() {
        for len in [1, 15, 16, 17, 100, 197, 1000] {
            for max in [16, 32, 48, 512] {
                let c = cuts(len, max, 16);
                assert_eq!(c[0].0, 0);
                assert_eq!(c.iter().map(|p| p.1).sum::<usize>(), len);
                for w in c.windows(2) {
                    assert_eq!(w[0].0 + w[0].1, w[1].0);
                    assert_eq!(w[1].0 % 16, 0);
                    assert!(w[0].1 <= max);
                }
            }
        }
        assert_eq!(cuts(100, 48, 16), [(0, 48), (48, 48), (96, 4)]);
        assert_eq!(cuts(1000, 512, 16), [(0, 512), (512, 488)]);
    }
}
