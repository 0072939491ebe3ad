//! A loss the crates don't ship, written as a term: the template to copy.
//!
//! Style as per-channel statistics, the mean and variance of each channel of each style layer
//! (Huang & Belongie, "Arbitrary Style Transfer in Real-time with Adaptive Instance
//! Normalization", ICCV 2017; Li et al., "Demystifying Neural Style Transfer", IJCAI 2017), in
//! place of the Gram matrices, beside nst's content and total-variation terms. It is a
//! statistic term: each position contributes `f` and `f²` per channel, and the loss is a
//! function of their sums. Nothing else is written: the render session runs it coarse to fine,
//! tile by tile when the image is large (exactly: the statistic is the whole image's), with
//! checkpoints, the progress line and the JSON log.
//!
//! ```sh
//! cargo run --release --example custom_loss -- --content tubingen.jpg --style starry_night.jpg \
//!     --size 512 --iterations 200 --out custom.png
//! ```

#![allow(clippy::print_stdout)]

mod common;

use common::{Args, Res, Summary};
use nst::autodiff::Var;
use nst::loss::term::statistic_fn;
use nst::style::{targets, Contribution, ObjectiveConfig, RenderConfig, RenderSession};
use nst::style::{Init, Scale, Site, Term, TermSource, TileChoice};
use nst::tensor::{Backend, Result};
use std::path::PathBuf;

const STYLE: [&str; 4] = ["relu1_1", "relu2_1", "relu3_1", "relu4_1"];

/// The statistic: `Σ f` and `Σ f²` per channel (`[C, 1]` each) over the positions a tile owns.
struct ChannelSums;

impl<B: Backend> Contribution<B> for ChannelSums {
    fn contribution<'t>(&self, f: &[Var<'t, B>], sites: &[Site]) -> Result<Vec<Var<'t, B>>> {
        let own = sites[0].own(&f[0])?;
        let d = own.shape().dims().to_vec();
        let flat = own.reshape([d[1], d[2] * d[3]])?;
        Ok(vec![flat.sum_axis(1)?, flat.square()?.sum_axis(1)?])
    }
}

/// `(μ, σ²)` from the sums over `n` positions.
fn mean_var<'t, B: Backend>(sums: &[Var<'t, B>], n: usize) -> Result<(Var<'t, B>, Var<'t, B>)> {
    let mean = sums[0].scale(1.0 / n as f64)?;
    let var = sums[1].scale(1.0 / n as f64)?.sub(&mean.square()?)?;
    Ok((mean, var))
}

/// The terms of a scale, `mean((μ − μ_s)²) + mean((σ² − σ²_s)²)` per layer, against the
/// style image's statistics at this scale.
struct ChannelStatsLoss(f64);

impl<B: Backend> TermSource<B> for ChannelStatsLoss {
    fn describe(&self) -> String {
        format!("channel stats {STYLE:?} weight {}", self.0)
    }

    fn layers(&self) -> Vec<String> {
        STYLE.map(String::from).to_vec()
    }

    fn terms(&self, scale: &Scale<'_, B>) -> nst::style::Result<Vec<Term<B>>> {
        let mut terms = Vec::new();
        for layer in STYLE {
            let (sums, ns) = targets::statistic(
                scale.model,
                &scale.styles[0],
                &[layer],
                &ChannelSums,
                scale.tiling,
            )?;
            let stat = statistic_fn(ChannelSums, move |x, n| {
                let (m, v) = mean_var(x, n[0])?;
                let style: Vec<_> = sums.iter().map(|s| m.tape().constant(s.clone())).collect();
                let (ms, vs) = mean_var(&style, ns[0])?;
                m.sub(&ms)?
                    .square()?
                    .mean()?
                    .add(&v.sub(&vs)?.square()?.mean()?)
            });
            terms.push(Term::statistic(
                format!("stats/{layer}"),
                &[layer],
                self.0,
                stat,
            ));
        }
        Ok(terms)
    }
}

fn run(args: &Args) -> Res<Summary> {
    let size: usize = args.num("size", 256)?;
    let out = PathBuf::from(args.get("out", "custom.png"));
    let cpu = nst::cpu::Cpu::new(args.num("threads", 0)?);
    let vgg = nst::load_vgg19(&cpu)?;
    let content = common::load(&args.get("content", "tubingen.jpg"), size)?;
    let styles = [common::load(&args.get("style", "starry_night.jpg"), size)?];
    let cfg = RenderConfig {
        // The classic content and TV terms; the new terms replace the Gram matrices.
        objective: ObjectiveConfig {
            style_layers: Vec::new(),
            content_weight: 1.0,
            ..Default::default()
        },
        scales: vec![size / 2, size],
        tile: match args.num("tile", 0)? {
            0 => TileChoice::Auto,
            t => TileChoice::Size(t),
        },
        clamp_pixels: true,
        init: Init::Content,
        // Both scales with the same iterations.
        ..RenderConfig::single_scale(args.num("iterations", 100)?)
    };
    let loss = ChannelStatsLoss(args.num("style-weight", 1e-3)?);
    let mut session = RenderSession::new(&cpu, &vgg, &content, &styles, &cfg)?.with_terms(loss)?;
    let (mut first, mut last) = (f64::NAN, f64::NAN);
    while let Some(p) = session.step()? {
        if p.iteration.0 == 1 {
            first = p.total;
        }
        last = p.total;
    }
    common::save(&session.finish()?.image, &out)?;
    Ok(Summary { first, last, out })
}

fn main() -> Res<()> {
    run(&Args::from_env()?)?.print("loss at the last scale");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nst::cpu::Cpu64;
    use nst::style::{Objective, Tiling};

    /// The terms' gradient passes the finite-difference check, tiled equals untiled in f64,
    /// and a render in exact tiles lowers the loss.
    #[test]
    fn the_new_term_checks_tiles_and_renders() {
        let be = Cpu64::new(2);
        let bytes = std::fs::read(nst::weights_path()).unwrap();
        let vgg = nst::vgg::Vgg::from_safetensors(&be, &bytes).unwrap();
        let img = |name: &str| {
            common::load(name, 48)
                .unwrap()
                .to_model(&be, vgg.convention())
                .unwrap()
        };
        let (c, s, x) = (
            img("tubingen.jpg"),
            img("starry_night.jpg"),
            img("golden_gate.jpg"),
        );
        let (w, h) = (c.dims()[3], c.dims()[2]);
        let terms = |tiling| {
            let scale = Scale {
                model: &vgg,
                content: &c,
                styles: std::slice::from_ref(&s),
                size: (w, h),
                tiling,
            };
            ChannelStatsLoss(1.0).terms(&scale).unwrap()
        };
        // The gradient of a term w.r.t. its activations (relu1_1 of a 6 x 5 patch of x).
        let fx = nst::features::FeatureExtractor::new(&vgg, &["relu1_1"]).unwrap();
        let f = fx.extract(&x).unwrap().into_vec().remove(0).1;
        let f = f.narrow(2, 10, 6).unwrap().narrow(3, 10, 5).unwrap();
        let term = terms(Tiling::Off).remove(0);
        let whole = [Site::whole(6, 5)];
        let report = nst::autodiff::gradcheck::check(
            &[f],
            |_, v| term.evaluate(v, &whole),
            // Activations in the hundreds make a large loss: a wider step keeps the
            // differences clear of rounding.
            nst::autodiff::gradcheck::Tolerance {
                eps: 1e-3,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(report.is_ok(), "{report}");
        // Tiled equals untiled: 48 x 36 in tiles of 16 cuts every layer.
        let eval = |tiling| {
            let o = Objective::from_terms(&vgg, terms(tiling), (w, h), tiling).unwrap();
            (
                o.evaluate(&x).unwrap(),
                o.plan().map_or(1, |p| p.tiles.len()),
            )
        };
        let ((a, _), (b, tiles)) = (eval(Tiling::Off), eval(Tiling::Tiles(16)));
        assert!(tiles >= 6, "{tiles} tiles");
        assert!(
            (a.total - b.total).abs() <= 1e-10 * a.total.abs(),
            "{} vs {}",
            a.total,
            b.total
        );
        let (ga, gb) = (a.grad.to_f64().unwrap(), b.grad.to_f64().unwrap());
        let num: f64 = ga.iter().zip(&gb).map(|(u, v)| (u - v) * (u - v)).sum();
        let den: f64 = ga.iter().map(|u| u * u).sum();
        assert!(
            (num / den).sqrt() <= 1e-10,
            "gradient differs by {:e}",
            (num / den).sqrt()
        );

        let out = common::test_dir("custom").join("c.png");
        let args = [
            "--size",
            "48",
            "--iterations",
            "10",
            "--tile",
            "16",
            "--threads",
            "2",
            "--out",
        ];
        let s =
            run(&Args::parse(&[&args[..], &[out.to_str().unwrap()]].concat()).unwrap()).unwrap();
        assert!(s.last < s.first, "{} -> {}", s.first, s.last);
        assert_eq!(image::open(&s.out).unwrap().width(), 48);
    }
}
