//! A loss the crates don't ship, written on the tape: the template to copy.
//!
//! Style as per-channel statistics — the mean and variance of each channel of each style
//! layer, as in Huang & Belongie, "Arbitrary Style Transfer in Real-time with Adaptive
//! Instance Normalization" (ICCV 2017), and Li et al., "Demystifying Neural Style Transfer"
//! (IJCAI 2017), who show that matching these statistics is a style loss in its own right —
//! plus nst's content loss at relu4_2, optimised with Adam over a plain host `Vec<f32>`.
//!
//! Demonstrates: a new differentiable loss from `Var` ops (`reshape`, `mean_axis`,
//! `broadcast_to`, `sub`, `square`, `mean`), nothing else to write: the tape derives its
//! gradient. And `nst::optim` over a host vector with a closure that moves data to the
//! backend and back.
//!
//! ```sh
//! cargo run --release --example custom_loss -- --content tubingen.jpg --style starry_night.jpg \
//!     --size 256 --iterations 300 --out custom.png
//! ```

#![allow(clippy::print_stdout)]

mod common;

use common::{Args, Res, Summary};
use nst::autodiff::{Tape, Var};
use nst::cpu::Cpu;
use nst::features::FeatureExtractor;
use nst::optim::{Adam, AdamConfig};
use nst::style::Image;
use nst::tensor::{Backend, Tensor};
use std::path::PathBuf;

const STYLE: [&str; 4] = ["relu1_1", "relu2_1", "relu3_1", "relu4_1"];

/// The per-channel mean and variance of an activation `[1, C, H, W]`, each `[C, 1]`.
fn channel_stats<'t, B: Backend>(f: &Var<'t, B>) -> Res<(Var<'t, B>, Var<'t, B>)> {
    let dims = f.shape().dims().to_vec();
    let (c, n) = (dims[1], dims[2] * dims[3]);
    let flat = f.reshape([c, n])?;
    let mean = flat.mean_axis(1)?;
    let centred = flat.sub(&mean.broadcast_to([c, n])?)?;
    let var = centred.square()?.mean_axis(1)?;
    Ok((mean, var))
}

/// `mean((μ − μ_s)²) + mean((σ² − σ²_s)²)`: the new loss, in four lines of tape ops.
fn stats_loss<'t, B: Backend>(f: &Var<'t, B>, target: &(Tensor<B>, Tensor<B>)) -> Res<Var<'t, B>> {
    let (mean, var) = channel_stats(f)?;
    let tape = f.tape();
    let dm = mean
        .sub(&tape.constant(target.0.clone()))?
        .square()?
        .mean()?;
    let dv = var
        .sub(&tape.constant(target.1.clone()))?
        .square()?
        .mean()?;
    Ok(dm.add(&dv)?)
}

/// The statistics of a plain tensor, for the targets (the same ops on a throwaway tape).
fn target_stats(f: &Tensor<Cpu>) -> Res<(Tensor<Cpu>, Tensor<Cpu>)> {
    let tape = Tape::new();
    let (m, v) = channel_stats(&tape.constant(f.clone()))?;
    Ok((m.value().clone(), v.value().clone()))
}

fn run(args: &Args) -> Res<Summary> {
    let size: usize = args.num("size", 256)?;
    let iterations: usize = args.num("iterations", 300)?;
    let out = PathBuf::from(args.get("out", "custom.png"));
    let cpu = Cpu::new(args.num("threads", 0)?);
    let vgg = nst::load_vgg19(&cpu)?;
    let conv = vgg.convention();
    let content = common::load(&args.get("content", "tubingen.jpg"), size)?;
    let style = common::load(&args.get("style", "starry_night.jpg"), size)?;
    let (w, h) = (content.width(), content.height());
    let fx_style = FeatureExtractor::new(&vgg, &STYLE)?;
    let fx_content = FeatureExtractor::new(&vgg, &["relu4_2"])?;
    let targets = fx_style
        .extract(&style.to_model(&cpu, conv)?)?
        .iter()
        .map(|(_, f)| target_stats(f))
        .collect::<Res<Vec<_>>>()?;
    let content_t = content.to_model(&cpu, conv)?;
    let content_target = fx_content.extract(&content_t)?.into_vec().remove(0).1;
    let (style_weight, content_weight) = (args.num("style-weight", 1e-3)?, 1.0);
    // The optimizer works on a host vector; the closure uploads it and downloads the gradient.
    let mut objective = |x: &Vec<f32>| -> Res<(f64, Vec<f32>)> {
        let tape = Tape::new();
        let v = tape.var(Tensor::from_f32(&cpu, x, [1, 3, h, w])?);
        let mut loss = nst::loss::content(
            &fx_content.extract_var(&v)?.into_vec().remove(0).1,
            &content_target,
            content_weight,
        )?;
        for ((_, f), t) in fx_style.extract_var(&v)?.iter().zip(&targets) {
            loss = loss.add(&stats_loss(f, t)?.scale(style_weight)?)?;
        }
        let grad = tape.backward(&loss)?.take(&v).expect("x is a variable");
        Ok((loss.value().scalar()?, grad.to_f32()?))
    };
    let mut x = content_t.to_f32()?;
    let mut opt = Adam::new(AdamConfig {
        learning_rate: args.num("learning-rate", 5.0)?,
        ..Default::default()
    });
    let (first, last) = common::optimise(&mut opt, &mut x, &mut objective, iterations)?;
    let img = Image::from_model(&x, w, h, conv).ok_or("a size mismatch")?;
    common::save(&img, &out)?;
    Ok(Summary { first, last, out })
}

fn main() -> Res<()> {
    run(&Args::from_env()?)?.print("loss");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The statistics are those of the definition (checked on a hand-made activation), and
    /// a tiny run lowers the loss.
    #[test]
    fn the_new_loss_is_what_it_says_and_falls() {
        let cpu = Cpu::new(1);
        // Two channels of four positions: [1, 2, 3, 4] and [0, 0, 0, 8].
        let f = Tensor::from_f32(&cpu, &[1., 2., 3., 4., 0., 0., 0., 8.], [1, 2, 2, 2]).unwrap();
        let (m, v) = target_stats(&f).unwrap();
        assert_eq!(m.to_f32().unwrap(), vec![2.5, 2.0]);
        assert_eq!(v.to_f32().unwrap(), vec![1.25, 12.0]);
        let out = common::test_dir("custom").join("c.png");
        let args = Args::parse(&[
            "--size",
            "32",
            "--iterations",
            "15",
            "--threads",
            "2",
            "--out",
            out.to_str().unwrap(),
        ])
        .unwrap();
        let s = run(&args).unwrap();
        assert!(s.last < s.first, "{} -> {}", s.first, s.last);
        assert_eq!(image::open(&s.out).unwrap().width(), 32);
    }
}
