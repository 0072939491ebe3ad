//! `nst-bench phases`: where one render iteration's time goes, at several sizes, on the CPU:
//! the objective's evaluation and the optimizer, and the evaluation taken apart by hand into
//! the network's forward pass, the losses and the backward pass (the same layers, targets and
//! weights, through the feature extractor: unfused, so their sum can exceed the objective's
//! own evaluation at small sizes), with the time per megapixel, so that a small scale's
//! overhead shows against a large one's.

use anyhow::Result;
use nst_autodiff::Tape;
use nst_cpu::Cpu;
use nst_optim::Optimizer;
use nst_style::{Objective, ObjectiveConfig};
use nst_tensor::Tensor;
use std::time::Instant;

/// Milliseconds of one iteration, by phase (medians over the timed iterations).
struct Row {
    size: (usize, usize),
    iteration: f64,
    evaluation: f64,
    forward: f64,
    losses: f64,
    backward: f64,
    optimizer: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One size: `iterations` L-BFGS steps timed whole and split into the objective's evaluation
/// and the optimizer; then as many evaluations taken apart by hand into forward, losses and
/// backward (the same layers, targets and weights as the classic objective).
fn measure(cpu: &Cpu, vgg: &nst_vgg::Vgg<Cpu>, size: usize, iterations: usize) -> Result<Row> {
    let content = crate::load_rgb("tubingen.jpg")?.fit(size);
    let (w, h) = (content.width(), content.height());
    let style = crate::load_rgb("starry_night.jpg")?.fit(size);
    let conv = vgg.convention();
    let cfg = ObjectiveConfig::default();
    let (content_t, style_t) = (content.to_model(cpu, conv)?, style.to_model(cpu, conv)?);
    let obj = Objective::new(vgg, &cfg, &content_t, std::slice::from_ref(&style_t), &[])?;
    let mut x = Tensor::from_f32(cpu, &conv.to_model(content.data(), h, w), [1, 3, h, w])?;
    let mut opt = nst_optim::Lbfgs::new(Default::default());
    let in_eval = std::cell::Cell::new(0.0f64);
    let mut f = |x: &Tensor<Cpu>| -> Result<(f64, Tensor<Cpu>)> {
        let t = Instant::now();
        let e = obj.evaluate(x)?;
        in_eval.set(in_eval.get() + t.elapsed().as_secs_f64());
        Ok((e.total, e.grad))
    };
    // Two iterations to warm the pool and the caches.
    for _ in 0..2 {
        opt.step(&mut x, &mut f)?;
    }
    let (mut steps, mut evals) = (Vec::new(), Vec::new());
    for _ in 0..iterations {
        in_eval.set(0.0);
        let t = Instant::now();
        opt.step(&mut x, &mut f)?;
        steps.push(t.elapsed().as_secs_f64());
        evals.push(in_eval.get());
    }
    // The same evaluation by hand: forward on a tape, the classic losses, backward.
    let layers: Vec<String> = cfg
        .content_layers
        .iter()
        .chain(&cfg.style_layers)
        .map(|(n, _)| n.clone())
        .collect();
    let fx = nst_features::FeatureExtractor::new(vgg, &layers)?;
    let style_f = fx.extract(&style_t)?;
    let content_f = fx.extract(&content_t)?;
    let grams: Vec<Tensor<Cpu>> = cfg
        .style_layers
        .iter()
        .map(|(n, _)| nst_loss::gram_tensor(style_f.get(n).expect("extracted")))
        .collect::<nst_tensor::Result<_>>()?;
    let (mut fwd, mut loss, mut bwd) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..iterations {
        let tape = Tape::new();
        let xv = tape.var(x.clone());
        let t0 = Instant::now();
        let feats = fx.extract_var(&xv)?;
        let t1 = Instant::now();
        let mut total = nst_loss::total_variation(&xv, cfg.tv_weight)?;
        for (n, wgt) in &cfg.content_layers {
            let target = content_f.get(n).expect("extracted");
            let c = nst_loss::content(
                feats.get(n).expect("extracted"),
                target,
                cfg.content_weight * wgt,
            )?;
            total = total.add(&c)?;
        }
        for ((n, wgt), g) in cfg.style_layers.iter().zip(&grams) {
            let s = nst_loss::style(feats.get(n).expect("extracted"), g, cfg.style_weight * wgt)?;
            total = total.add(&s)?;
        }
        let _ = total.value().scalar()?;
        let t2 = Instant::now();
        let grads = tape.backward(&total)?;
        let _ = grads.get(&xv).expect("the image's gradient").to_f32()?;
        let t3 = Instant::now();
        fwd.push((t1 - t0).as_secs_f64());
        loss.push((t2 - t1).as_secs_f64());
        bwd.push((t3 - t2).as_secs_f64());
    }
    let ms = 1e3;
    let (iteration, eval) = (median(steps) * ms, median(evals) * ms);
    let (forward, losses, backward) = (median(fwd) * ms, median(loss) * ms, median(bwd) * ms);
    Ok(Row {
        size: (w, h),
        iteration,
        evaluation: eval,
        forward,
        losses,
        backward,
        optimizer: iteration - eval,
    })
}

/// Prints the table for `sizes` (longer sides), `iterations` timed at each.
pub(crate) fn bench_phases(threads: usize, sizes: &[usize], iterations: usize) -> Result<()> {
    let cpu = Cpu::new(threads);
    let vgg = crate::model(&cpu)?;
    println!(
        "one L-BFGS iteration of the classic objective (tubingen by starry_night), {} threads, {}; ms, medians of {iterations}",
        cpu.threads(),
        crate::cpu_name()
    );
    println!("| size | iteration | evaluation | optimizer | by hand: forward | losses | backward | iteration, ms per megapixel |");
    println!("|---|---|---|---|---|---|---|---|");
    for &s in sizes {
        let r = measure(&cpu, &vgg, s, iterations.max(1))?;
        let mp = (r.size.0 * r.size.1) as f64 / 1e6;
        println!(
            "| {}x{} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} |",
            r.size.0,
            r.size.1,
            r.iteration,
            r.evaluation,
            r.optimizer,
            r.forward,
            r.losses,
            r.backward,
            r.iteration / mp
        );
    }
    Ok(())
}
