//! Texture synthesis — Gatys, Ecker & Bethge, "Texture Synthesis Using Convolutional Neural
//! Networks" (NeurIPS 2015).
//!
//! A new image with a painting's textures and none of its layout: from noise, match the Gram
//! matrices of the painting's VGG19 activations at five layers. Style loss only, no content.
//!
//! Demonstrates: `nst::features` on a tape, `nst::loss::{gram_tensor, style}`, and
//! `nst::optim::Lbfgs` over a `Tensor` (the optimizer state stays on the backend).
//!
//! ```sh
//! cargo run --release --example texture_synthesis -- --style starry_night.jpg --size 256 \
//!     --iterations 200 --out texture.png
//! ```

#![allow(clippy::print_stdout)]

mod common;

use common::{Args, Res, Summary};
use nst::autodiff::Tape;
use nst::cpu::Cpu;
use nst::features::FeatureExtractor;
use nst::optim::Lbfgs;
use nst::style::Image;
use nst::tensor::Tensor;
use std::path::PathBuf;

const LAYERS: [&str; 5] = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"];

fn run(args: &Args) -> Res<Summary> {
    let size: usize = args.num("size", 256)?;
    let iterations: usize = args.num("iterations", 200)?;
    let out = PathBuf::from(args.get("out", "texture.png"));
    let cpu = Cpu::new(args.num("threads", 0)?);
    let vgg = nst::load_vgg19(&cpu)?;
    let conv = vgg.convention();
    let style = common::load(&args.get("style", "starry_night.jpg"), size)?;
    let fx = FeatureExtractor::new(&vgg, &LAYERS)?;
    // The targets: the painting's Gram matrices, computed once without a tape.
    let feats = fx.extract(&style.to_model(&cpu, conv)?)?;
    let targets = feats
        .iter()
        .map(|(_, f)| nst::loss::gram_tensor(f))
        .collect::<Result<Vec<_>, _>>()?;
    // A square texture from noise around the mean pixel (0 in model space).
    let mut x = Tensor::from_f32(
        &cpu,
        &common::noise(3 * size * size, 1.0, 1),
        [1, 3, size, size],
    )?;
    let mut objective = |x: &Tensor<Cpu>| -> Res<(f64, Tensor<Cpu>)> {
        let tape = Tape::new();
        let v = tape.var(x.clone());
        let feats = fx.extract_var(&v)?;
        let mut loss = None;
        for ((_, f), target) in feats.iter().zip(&targets) {
            let term = nst::loss::style(f, target, 100.0)?;
            loss = Some(match loss {
                None => term,
                Some(l) => term.add(&l)?,
            });
        }
        let loss = loss.expect("five layers");
        let total = loss.value().scalar()?;
        let grad = tape.backward(&loss)?.take(&v).expect("x is a variable");
        Ok((total, grad))
    };
    let mut opt = Lbfgs::new(Default::default());
    let (first, last) = common::optimise(&mut opt, &mut x, &mut objective, iterations)?;
    let img = Image::from_model(&x.to_f32()?, size, size, conv).ok_or("a size mismatch")?;
    common::save(&img, &out)?;
    Ok(Summary { first, last, out })
}

fn main() -> Res<()> {
    run(&Args::from_env()?)?.print("style loss");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tiny_texture_lowers_the_style_loss() {
        let out = common::test_dir("texture").join("t.png");
        let args = Args::parse(&[
            "--size",
            "32",
            "--iterations",
            "12",
            "--threads",
            "2",
            "--out",
        ])
        .err();
        assert!(args.is_some(), "a flag without a value is an error");
        let args = Args::parse(&[
            "--size",
            "32",
            "--iterations",
            "40",
            "--threads",
            "2",
            "--out",
            out.to_str().unwrap(),
        ])
        .unwrap();
        let s = run(&args).unwrap();
        assert!(s.last < 0.5 * s.first, "{} -> {}", s.first, s.last);
        let img = image::open(&s.out).unwrap();
        assert_eq!((img.width(), img.height()), (32, 32));
    }
}
