//! A probe of the style representation — the Gram matrices of Gatys, Ecker & Bethge, "Image
//! Style Transfer Using Convolutional Neural Networks" (CVPR 2016).
//!
//! For a content/style pair, prints each style layer's Gram distance `mean((G(C) − G(S))²)`,
//! and how much it moves when the content image gets a small random perturbation (`--noise`,
//! in pixel values): a first look at how stable the style representation is.
//!
//! Demonstrates: `nst::features` without a tape (inference only) and
//! `nst::loss::gram_tensor` — no optimizer, a few lines.
//!
//! ```sh
//! cargo run --release --example gram_probe -- --content tubingen.jpg --style starry_night.jpg --size 256
//! ```

#![allow(clippy::print_stdout)]

mod common;

use common::{Args, Res};
use nst::cpu::Cpu;
use nst::features::FeatureExtractor;
use nst::tensor::Tensor;

const LAYERS: [&str; 5] = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"];

/// Per layer: its name, the Gram distance, the distance with the content perturbed.
type Row = (String, f64, f64);

fn distance(a: &Tensor<Cpu>, b: &Tensor<Cpu>) -> Res<f64> {
    Ok(a.sub(b)?.square()?.mean()?.scalar()?)
}

fn run(args: &Args) -> Res<Vec<Row>> {
    let size: usize = args.num("size", 256)?;
    let noise: f32 = args.num("noise", 2.0)?;
    let cpu = Cpu::new(args.num("threads", 0)?);
    let vgg = nst::load_vgg19(&cpu)?;
    let conv = vgg.convention();
    let content = common::load(&args.get("content", "tubingen.jpg"), size)?;
    let style = common::load(&args.get("style", "starry_night.jpg"), size)?;
    let fx = FeatureExtractor::new(&vgg, &LAYERS)?;
    let grams = |t: &Tensor<Cpu>| -> Res<Vec<Tensor<Cpu>>> {
        Ok(fx
            .extract(t)?
            .iter()
            .map(|(_, f)| nst::loss::gram_tensor(f))
            .collect::<Result<_, _>>()?)
    };
    let c = content.to_model(&cpu, conv)?;
    let jitter = Tensor::from_f32(&cpu, &common::noise(c.numel(), noise, 4), c.dims().to_vec())?;
    let (gc, gp, gs) = (
        grams(&c)?,
        grams(&c.add(&jitter)?)?,
        grams(&style.to_model(&cpu, conv)?)?,
    );
    LAYERS
        .iter()
        .enumerate()
        .map(|(i, name)| {
            Ok((
                name.to_string(),
                distance(&gc[i], &gs[i])?,
                distance(&gp[i], &gs[i])?,
            ))
        })
        .collect()
}

fn main() -> Res<()> {
    println!("| layer | Gram distance | content perturbed | relative change |");
    println!("|---|---|---|---|");
    for (layer, d, p) in run(&Args::from_env()?)? {
        println!("| {layer} | {d:.4e} | {p:.4e} | {:+.2e} |", (p - d) / d);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_layer_has_a_distance_that_noise_moves_a_little() {
        let args = Args::parse(&["--size", "48", "--threads", "2"]).unwrap();
        let rows = run(&args).unwrap();
        assert_eq!(rows.len(), 5);
        for (layer, d, p) in &rows {
            assert!(*d > 0.0 && d.is_finite(), "{layer}: {d}");
            assert!(((p - d) / d).abs() < 0.5, "{layer}: {d} vs {p}");
        }
        // No noise, no change.
        let args = Args::parse(&["--size", "48", "--threads", "2", "--noise", "0"]).unwrap();
        assert!(run(&args).unwrap().iter().all(|(_, d, p)| d == p));
    }
}
