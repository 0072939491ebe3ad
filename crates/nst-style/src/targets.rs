//! Targets: the activations and statistics of an image (a content photo, a style painting)
//! at named layers, computed whole or tile by tile, and the helpers the tiled objective
//! shares with them.

use crate::tiled::{Geometry, Tile, TilePlan, Tiling, Window, IMAGE};
use crate::{Error, Result};
use nst_autodiff::{Tape, Var};
use nst_features::FeatureExtractor;
use nst_loss::{Contribution, Site, INPUT};
use nst_tensor::{Backend, Tensor};
use nst_vgg::Vgg;

/// The part of `t` (`[1, C, H, W]`) inside `w` (itself when `w` covers it).
pub(crate) fn window<B: Backend>(t: &Tensor<B>, w: &Window) -> nst_tensor::Result<Tensor<B>> {
    nst_loss::term::cut(t, w)
}

/// The site of a part that owns no position at a layer.
pub(crate) fn unowned() -> Site {
    Site {
        own: Window {
            y: 0,
            x: 0,
            h: 0,
            w: 0,
        },
        origin: (0, 0),
        full: (0, 0),
    }
}

/// Element-wise `slots += parts`.
pub(crate) fn add_all<B: Backend>(
    slots: &mut Option<Vec<Tensor<B>>>,
    parts: Vec<Tensor<B>>,
) -> nst_tensor::Result<()> {
    *slots = Some(match slots.take() {
        None => parts,
        Some(acc) => {
            if acc.len() != parts.len() {
                return Err(nst_tensor::Error::invalid(
                    "statistic",
                    "tiles contributed statistics of different lengths",
                ));
            }
            acc.iter()
                .zip(&parts)
                .map(|(a, p)| a.add(p))
                .collect::<nst_tensor::Result<Vec<_>>>()?
        }
    });
    Ok(())
}

/// The index of a layer name ([`IMAGE`] for [`INPUT`]).
pub(crate) fn key_of<B: Backend>(model: &Vgg<B>, name: &str) -> Result<usize> {
    if name == INPUT {
        Ok(IMAGE)
    } else {
        Ok(model.layer_index(name)?)
    }
}

/// The activation at layer `key` among `feats`.
pub(crate) fn find<A>(feats: &[(usize, A)], key: usize) -> Option<&A> {
    feats.iter().find(|(k, _)| *k == key).map(|(_, a)| a)
}

/// The size of a `[1, 3, H, W]` image as (height, width).
pub(crate) fn image_size(dims: &[usize], what: &str) -> Result<(usize, usize)> {
    match dims {
        [1, 3, h, w] => Ok((*h, *w)),
        _ => Err(Error::Config(format!(
            "{what} must be [1, 3, H, W], got {dims:?}"
        ))),
    }
}

/// A plan for an `h x w` image with the tile size `tiling` asks for (`None` when untiled).
pub(crate) fn plan_of(
    geometry: &Geometry,
    h: usize,
    w: usize,
    tiling: Tiling,
) -> Result<Option<TilePlan>> {
    Ok(match tiling {
        Tiling::Off => None,
        Tiling::Tiles(t) | Tiling::TilesKeeping { tile: t, .. } | Tiling::Shallow(t) => {
            Some(geometry.plan(h, w, t)?)
        }
        Tiling::TilesWithHalo { tile, halo } => Some(geometry.plan_with_halo(h, w, tile, halo)?),
    })
}

/// Where a tile's activation at layer `key` lies (`None` when the tile owns no position
/// there).
pub(crate) fn site_of(geo: &Geometry, plan: &TilePlan, tile: &Tile, key: usize) -> Option<Site> {
    let own = geo.inner_at(plan, tile, key)?;
    let (s, _) = geo.layer(key);
    Some(Site {
        own,
        origin: (tile.crop.y / s, tile.crop.x / s),
        full: (plan.height / s, plan.width / s),
    })
}

/// The sites of a tile at `keys`, when it owns positions at the first (others that own
/// none get an empty window).
pub(crate) fn sites_of(
    geo: &Geometry,
    plan: &TilePlan,
    tile: &Tile,
    keys: &[usize],
) -> Option<Vec<Site>> {
    let first = site_of(geo, plan, tile, *keys.first()?)?;
    let mut sites = vec![first];
    for &k in &keys[1..] {
        sites.push(site_of(geo, plan, tile, k).unwrap_or_else(|| {
            let (s, _) = geo.layer(k);
            Site {
                origin: (tile.crop.y / s, tile.crop.x / s),
                full: (plan.height / s, plan.width / s),
                ..unowned()
            }
        }));
    }
    Some(sites)
}

/// Runs `image` (`[1, 3, H, W]`) through `model`, whole or tile by tile as `tiling` says,
/// and calls `visit` with each part's activations at `keys` (on a tape of constants, in the
/// order of `keys`) and their sites (`None` where the part owns no position). The keys'
/// geometry sets the halo; the tile size is the one `tiling` names.
pub(crate) fn each_part<B: Backend>(
    model: &Vgg<B>,
    image: &Tensor<B>,
    keys: &[usize],
    tiling: Tiling,
    mut visit: impl FnMut(&[Var<'_, B>], &[Option<Site>]) -> Result<()>,
) -> Result<()> {
    let (h, w) = image_size(image.dims(), "an image")?;
    let net: Vec<usize> = keys.iter().copied().filter(|&k| k != IMAGE).collect();
    let uses: Vec<(usize, usize)> = keys.iter().map(|&k| (k, 0)).collect();
    let geometry = Geometry::with_reach(model, &uses)?;
    let tape = Tape::new();
    let run = |x: &Tensor<B>| -> Result<Vec<(usize, Tensor<B>)>> {
        let mut feats = vec![(IMAGE, x.clone())];
        if let Some(&deepest) = net.iter().max() {
            model.forward_some(x.clone(), deepest, &|i| net.contains(&i), |i, f| {
                feats.push((i, f.clone()));
                Ok(())
            })?;
        }
        Ok(feats)
    };
    match plan_of(&geometry, h, w, tiling)? {
        None => {
            let names: Vec<&str> = net
                .iter()
                .map(|&i| model.layers()[i].name.as_str())
                .collect();
            // The extractor checks the image is large enough for the deepest layer.
            let f = FeatureExtractor::new(model, &names)?.extract(image)?;
            let mut feats = vec![(IMAGE, image.clone())];
            feats.extend(
                net.iter()
                    .zip(&names)
                    .map(|(&i, n)| (i, f.get(n).expect("extracted").clone())),
            );
            let vars: Vec<Var<'_, B>> = keys
                .iter()
                .map(|&k| tape.constant(find(&feats, k).expect("run").clone()))
                .collect();
            let sites = vars
                .iter()
                .map(|v| Site::of_whole(v.shape().dims()).map(Some))
                .collect::<nst_tensor::Result<Vec<_>>>()?;
            visit(&vars, &sites)
        }
        Some(plan) => {
            for tile in &plan.tiles {
                let feats = run(&window(image, &tile.crop)?)?;
                let vars: Vec<Var<'_, B>> = keys
                    .iter()
                    .map(|&k| tape.constant(find(&feats, k).expect("run").clone()))
                    .collect();
                let sites: Vec<Option<Site>> = keys
                    .iter()
                    .map(|&k| site_of(&geometry, &plan, tile, k))
                    .collect();
                visit(&vars, &sites)?;
            }
            Ok(())
        }
    }
}

/// The activations of `image` (`[1, 3, H, W]`, model space) at `layers`, each over the whole
/// layer; with tiles, computed tile by tile (only one tile's network pass is held) and
/// assembled. What a term's targets are made from.
pub fn features<B: Backend>(
    model: &Vgg<B>,
    image: &Tensor<B>,
    layers: &[&str],
    tiling: Tiling,
) -> Result<Vec<Tensor<B>>> {
    let keys = layers
        .iter()
        .map(|n| key_of(model, n))
        .collect::<Result<Vec<_>>>()?;
    let mut whole: Vec<Option<Tensor<B>>> = vec![None; keys.len()];
    // Tiled: the layers assembled on the host in f64, (dims, values).
    let mut host: Vec<Option<(Vec<usize>, Vec<f64>)>> = vec![None; keys.len()];
    each_part(model, image, &keys, tiling, |vars, sites| {
        for (i, (v, site)) in vars.iter().zip(sites).enumerate() {
            let Some(site) = site else { continue };
            if site.is_whole() {
                whole[i] = Some(v.value().clone());
                continue;
            }
            let c = v.shape().dims()[1];
            let (fh, fw) = site.full;
            let (dims, buf) =
                host[i].get_or_insert_with(|| (vec![1, c, fh, fw], vec![0.0; c * fh * fw]));
            debug_assert_eq!(dims[1], c);
            let part = site.own(v)?.value().to_f64()?;
            let g = site.global();
            for ch in 0..c {
                for y in 0..g.h {
                    let src = (ch * g.h + y) * g.w;
                    let dst = (ch * fh + g.y + y) * fw + g.x;
                    buf[dst..dst + g.w].copy_from_slice(&part[src..src + g.w]);
                }
            }
        }
        Ok(())
    })?;
    whole
        .into_iter()
        .zip(host)
        .map(|(w, h)| match (w, h) {
            (Some(w), _) => Ok(w),
            (None, Some((dims, buf))) => Ok(Tensor::from_f64(image.backend(), &buf, dims)?),
            (None, None) => Err(Error::Config("a layer got no activation".into())),
        })
        .collect()
}

/// A statistic summed over an image, and the number of positions of each of its layers.
pub type Sums<B> = (Vec<Tensor<B>>, Vec<usize>);

/// The statistic `contribution` computes at `layers`, summed over every position of
/// `image` (tile by tile with tiles), and the number of positions of each layer: what a
/// statistic term's target is made from (e.g. a style image's Gram matrices).
pub fn statistic<B: Backend>(
    model: &Vgg<B>,
    image: &Tensor<B>,
    layers: &[&str],
    contribution: &dyn Contribution<B>,
    tiling: Tiling,
) -> Result<Sums<B>> {
    let mut all = statistics(model, image, &[(layers, contribution)], tiling)?;
    Ok(all.remove(0))
}

/// [`statistic`] for several statistics in one pass over the image.
pub fn statistics<B: Backend>(
    model: &Vgg<B>,
    image: &Tensor<B>,
    parts: &[(&[&str], &dyn Contribution<B>)],
    tiling: Tiling,
) -> Result<Vec<Sums<B>>> {
    let part_keys = parts
        .iter()
        .map(|(layers, _)| {
            layers
                .iter()
                .map(|n| key_of(model, n))
                .collect::<Result<Vec<_>>>()
        })
        .collect::<Result<Vec<_>>>()?;
    let mut keys: Vec<usize> = part_keys.iter().flatten().copied().collect();
    keys.sort_unstable();
    keys.dedup();
    let mut sums: Vec<Option<Vec<Tensor<B>>>> = vec![None; parts.len()];
    let mut positions: Vec<Vec<usize>> = vec![Vec::new(); parts.len()];
    each_part(model, image, &keys, tiling, |vars, sites| {
        for (pi, ((_, contribution), pk)) in parts.iter().zip(&part_keys).enumerate() {
            let idx: Vec<usize> = pk
                .iter()
                .map(|k| keys.iter().position(|x| x == k).expect("a key"))
                .collect();
            let Some(Some(_)) = idx.first().map(|&i| sites[i]) else {
                continue;
            };
            let inputs: Vec<Var<'_, B>> = idx.iter().map(|&i| vars[i].clone()).collect();
            let s: Vec<Site> = idx
                .iter()
                .map(|&i| sites[i].unwrap_or_else(unowned))
                .collect();
            if positions[pi].is_empty() {
                positions[pi] = s.iter().map(|s| s.full.0 * s.full.1).collect();
            }
            let c = contribution.contribution(&inputs, &s)?;
            add_all(
                &mut sums[pi],
                c.into_iter().map(|v| v.value().clone()).collect(),
            )?;
        }
        Ok(())
    })?;
    sums.into_iter()
        .zip(positions)
        .map(|(s, p)| {
            s.map(|s| (s, p))
                .ok_or_else(|| Error::Config("a statistic got no contribution".into()))
        })
        .collect()
}
