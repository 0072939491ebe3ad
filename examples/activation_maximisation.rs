//! Activation maximisation (feature visualisation) — Erhan et al., "Visualizing Higher-Layer
//! Features of a Deep Network" (2009); Simonyan, Vedaldi & Zisserman, "Deep Inside
//! Convolutional Networks" (2014).
//!
//! From a flat grey image, climb the gradient of one channel's mean activation at one layer,
//! with a small L2 penalty on the pixels to keep them bounded: the picture shows the pattern
//! that channel responds to (a mid-level channel's is a repeated motif; without the image
//! transformations of later feature-visualisation work it stays high-frequency). `--tv W`
//! adds a total-variation penalty that smooths it, at the cost of activation.
//!
//! Demonstrates: gradients w.r.t. the input through `nst::features` and the tape alone
//! (`narrow` picks the channel), and plain gradient ascent written out by hand.
//!
//! ```sh
//! cargo run --release --example activation_maximisation -- --layer relu4_1 --channel 65 \
//!     --size 224 --iterations 200 --out channel.png
//! ```

#![allow(clippy::print_stdout)]

mod common;

use common::{Args, Res, Summary};
use nst::autodiff::Tape;
use nst::cpu::Cpu;
use nst::features::FeatureExtractor;
use nst::style::Image;
use nst::tensor::Tensor;
use std::path::PathBuf;

fn run(args: &Args) -> Res<Summary> {
    let size: usize = args.num("size", 224)?;
    let iterations: usize = args.num("iterations", 200)?;
    let channel: usize = args.num("channel", 65)?;
    let layer = args.get("layer", "relu4_1");
    let step: f64 = args.num("step", 2.0)?;
    let l2: f64 = args.num("l2", 1e-4)?;
    let tv: f64 = args.num("tv", 0.0)?;
    let out = PathBuf::from(args.get("out", "channel.png"));
    let cpu = Cpu::new(args.num("threads", 0)?);
    let vgg = nst::load_vgg19(&cpu)?;
    let fx = FeatureExtractor::new(&vgg, &[layer.as_str()])?;
    // Grey plus a little noise (0 is the mean pixel in model space).
    let mut x = Tensor::from_f32(
        &cpu,
        &common::noise(3 * size * size, 2.0, 3),
        [1, 3, size, size],
    )?;
    // The channel's mean activation at the start and at the end.
    let (mut before, mut after) = (f64::NAN, f64::NAN);
    for it in 0..=iterations {
        let tape = Tape::new();
        let v = tape.var(x.clone());
        let f = fx.extract_var(&v)?.into_vec().remove(0).1;
        if channel >= f.shape().dims()[1] {
            return Err(format!("{layer} has {} channels", f.shape().dims()[1]).into());
        }
        let activation = f.narrow(1, channel, 1)?.mean()?;
        let value = activation.value().scalar()?;
        if it == 0 {
            before = value;
        }
        after = value;
        if it == iterations {
            break;
        }
        // Maximise the activation minus the penalty: descend on its negative.
        let n = v.value().numel() as f64;
        let penalty = v
            .square()?
            .mean()?
            .scale(l2)?
            .add(&nst::loss::total_variation(&v, tv / n)?)?;
        let objective = penalty.sub(&activation)?;
        let g = tape
            .backward(&objective)?
            .take(&v)
            .expect("x is a variable");
        // A normalised step, so the step size is in pixels whatever the gradient's scale.
        let (_, g_max) = g.norms()?;
        x = g.axpy(-step / g_max.max(1e-12), &x)?;
    }
    let img =
        Image::from_model(&x.to_f32()?, size, size, vgg.convention()).ok_or("a size mismatch")?;
    common::save(&img, &out)?;
    Ok(Summary {
        first: before,
        last: after,
        out,
    })
}

fn main() -> Res<()> {
    run(&Args::from_env()?)?.print("mean activation");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_channel_activation_rises() {
        let out = common::test_dir("activation").join("a.png");
        let args = Args::parse(&[
            "--size",
            "48",
            "--iterations",
            "10",
            "--threads",
            "2",
            "--layer",
            "relu3_1",
            "--channel",
            "7",
            "--out",
            out.to_str().unwrap(),
        ])
        .unwrap();
        let s = run(&args).unwrap();
        assert!(s.last > s.first + 1.0, "{} -> {}", s.first, s.last);
        assert_eq!(image::open(&s.out).unwrap().width(), 48);
        let bad =
            Args::parse(&["--size", "48", "--iterations", "1", "--channel", "100000"]).unwrap();
        let err = run(&bad).err().expect("an error").to_string();
        assert!(err.contains("channels"), "{err}");
    }
}
