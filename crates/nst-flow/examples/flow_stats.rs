//! Prints the mean and spread of the flow between two image files:
//! `cargo run --release -p nst-flow --example flow_stats -- A.png B.png`.
#![allow(clippy::print_stdout)]

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let load = |p: &str| {
        let img = image::open(p).expect("an image").into_rgb8();
        let rgb: Vec<f32> = img.as_raw().iter().map(|&v| v as f32).collect();
        nst_flow::Gray::from_rgb(img.width() as usize, img.height() as usize, &rgb).expect("pixels")
    };
    let (a, b) = (load(&args[0]), load(&args[1]));
    let mut params = nst_flow::Params::default();
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<f32>().ok());
    if let Some(v) = env("FLOW_ALPHA") {
        params.alpha = v;
    }
    if let Some(v) = env("FLOW_ITERATIONS") {
        params.iterations = v as usize;
    }
    if let Some(v) = env("FLOW_WARPS") {
        params.warps = v as usize;
    }
    let f = nst_flow::flow(&a, &b, &params);
    let n = f.u().len() as f32;
    let mu = f.u().iter().sum::<f32>() / n;
    let mv = f.v().iter().sum::<f32>() / n;
    let su = (f.u().iter().map(|u| (u - mu).powi(2)).sum::<f32>() / n).sqrt();
    let sv = (f.v().iter().map(|v| (v - mv).powi(2)).sum::<f32>() / n).sqrt();
    println!("mean ({mu:.3}, {mv:.3}), spread ({su:.3}, {sv:.3})");
}
