//! Feature inversion — Mahendran & Vedaldi, "Understanding Deep Image Representations by
//! Inverting Them" (CVPR 2015).
//!
//! From noise, find an image whose activations at one layer match a photo's: the picture
//! shows what that layer keeps. Shallow layers keep almost every pixel; deep ones keep the
//! objects and their arrangement but let textures and colours go. Content loss only; one
//! image per layer.
//!
//! Demonstrates: `nst::features` (one extractor per layer), `nst::loss::content`, and
//! `nst::optim::Lbfgs` over a `Tensor`.
//!
//! ```sh
//! cargo run --release --example feature_inversion -- --content tubingen.jpg --size 256 \
//!     --layers relu1_1,relu2_1,relu3_1,relu4_1,relu5_1 --iterations 200 --out-dir inversions
//! ```

#![allow(clippy::print_stdout)]

mod common;

use common::{Args, Res};
use nst::autodiff::Tape;
use nst::cpu::Cpu;
use nst::features::FeatureExtractor;
use nst::optim::Lbfgs;
use nst::style::Image;
use nst::tensor::Tensor;
use std::path::PathBuf;

/// Per layer: its name, the loss at the first and the last iteration, the file written.
type Inverted = (String, f64, f64, PathBuf);

fn run(args: &Args) -> Res<Vec<Inverted>> {
    let size: usize = args.num("size", 256)?;
    let iterations: usize = args.num("iterations", 200)?;
    let dir = PathBuf::from(args.get("out-dir", "inversions"));
    std::fs::create_dir_all(&dir)?;
    let cpu = Cpu::new(args.num("threads", 0)?);
    let vgg = nst::load_vgg19(&cpu)?;
    let conv = vgg.convention();
    let photo = common::load(&args.get("content", "tubingen.jpg"), size)?;
    let (w, h) = (photo.width(), photo.height());
    let photo_t = photo.to_model(&cpu, conv)?;
    let mut out = Vec::new();
    for layer in args.get("layers", "relu1_1,relu3_1,relu5_1").split(',') {
        let fx = FeatureExtractor::new(&vgg, &[layer])?;
        let target = fx.extract(&photo_t)?.into_vec().remove(0).1;
        let mut x = Tensor::from_f32(&cpu, &common::noise(3 * w * h, 1.0, 2), [1, 3, h, w])?;
        let mut objective = |x: &Tensor<Cpu>| -> Res<(f64, Tensor<Cpu>)> {
            let tape = Tape::new();
            let v = tape.var(x.clone());
            let f = fx.extract_var(&v)?.into_vec().remove(0).1;
            // The sum of squared differences (the mean's weight times the element count):
            // a mean over a large shallow layer has gradients so small that L-BFGS's first
            // curvature pairs are rejected and it barely moves.
            let n = f.value().numel() as f64;
            let loss = nst::loss::content(&f, &target, n)?;
            let grad = tape.backward(&loss)?.take(&v).expect("x is a variable");
            Ok((loss.value().scalar()?, grad))
        };
        let mut opt = Lbfgs::new(Default::default());
        let (first, last) = common::optimise(&mut opt, &mut x, &mut objective, iterations)?;
        let img = Image::from_model(&x.to_f32()?, w, h, conv).ok_or("a size mismatch")?;
        let path = dir.join(format!("inversion_{layer}.png"));
        common::save(&img, &path)?;
        out.push((layer.to_string(), first, last, path));
    }
    Ok(out)
}

fn main() -> Res<()> {
    for (layer, first, last, path) in run(&Args::from_env()?)? {
        println!(
            "{layer}: content loss {first:.4e} -> {last:.4e}; wrote {}",
            path.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_layer_is_inverted_into_its_own_image() {
        let dir = common::test_dir("inversion");
        let args = Args::parse(&[
            "--size",
            "32",
            "--iterations",
            "30",
            "--threads",
            "2",
            "--layers",
            "relu1_1,relu3_1",
            "--out-dir",
            dir.to_str().unwrap(),
        ])
        .unwrap();
        let layers = run(&args).unwrap();
        assert_eq!(layers.len(), 2);
        for (layer, first, last, path) in layers {
            assert!(last < 0.5 * first, "{layer}: {first} -> {last}");
            let img = image::open(&path).unwrap();
            assert_eq!(img.width().max(img.height()), 32, "{layer}");
        }
    }
}
