//! Helpers the examples share: `--key value` arguments, the shared images, and images in
//! and out through `nst::io`.
#![allow(dead_code)]

use nst::style::Image;
use std::path::{Path, PathBuf};

/// The examples' error type.
pub(crate) type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// `--key value` pairs.
pub(crate) struct Args(Vec<(String, String)>);

impl Args {
    /// The process's arguments.
    pub(crate) fn from_env() -> Res<Args> {
        Args::parse(&std::env::args().skip(1).collect::<Vec<_>>())
    }

    /// Arguments from a list (the tests use this).
    pub(crate) fn parse<S: AsRef<str>>(list: &[S]) -> Res<Args> {
        let mut pairs = Vec::new();
        let mut it = list.iter().map(|s| s.as_ref());
        while let Some(k) = it.next() {
            let key = k
                .strip_prefix("--")
                .ok_or_else(|| format!("expected --name value, got {k:?}"))?;
            let v = it.next().ok_or_else(|| format!("--{key} needs a value"))?;
            pairs.push((key.to_string(), v.to_string()));
        }
        Ok(Args(pairs))
    }

    /// The value of `--key`, or `default`.
    pub(crate) fn get(&self, key: &str, default: &str) -> String {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map_or(default.to_string(), |(_, v)| v.clone())
    }

    /// The value of `--key` as a number, or `default`.
    pub(crate) fn num<T: std::str::FromStr>(&self, key: &str, default: T) -> Res<T> {
        match self.0.iter().rev().find(|(k, _)| k == key) {
            None => Ok(default),
            Some((_, v)) => v
                .parse()
                .map_err(|_| format!("--{key}: {v:?} is not a number").into()),
        }
    }
}

pub(crate) use nst_testkit::images;

/// An image file (a bare name is looked up in [`images`]), its longer side scaled to `size`.
pub(crate) fn load(name: &str, size: usize) -> Res<Image> {
    let p = Path::new(name);
    let path = if p.exists() {
        p.to_path_buf()
    } else {
        images().join(name)
    };
    Ok(nst::io::load(&path, &nst::io::Limits::default())?
        .image
        .fit(size))
}

/// Writes an image (PNG, or what the extension says).
pub(crate) fn save(img: &Image, path: &Path) -> Res<()> {
    let format = nst::io::output_format(path)?;
    let bytes = nst::io::encode(img, format, &nst::io::SaveOptions::default())?;
    std::fs::write(path, bytes)?;
    Ok(())
}

/// Small deterministic noise (`n` values in `[-amplitude, amplitude)`).
pub(crate) fn noise(n: usize, amplitude: f32, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * amplitude
        })
        .collect()
}

/// A temporary folder for a test's outputs.
pub(crate) fn test_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("nst-example-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("a temporary folder");
    d
}

/// What an optimising example did: the loss at the first and the last iteration, and the
/// file it wrote.
pub(crate) struct Summary {
    pub(crate) first: f64,
    pub(crate) last: f64,
    pub(crate) out: PathBuf,
}

impl Summary {
    /// One line: `what first -> last; wrote out`.
    #[allow(clippy::print_stdout)]
    pub(crate) fn print(&self, what: &str) {
        println!(
            "{what} {:.4e} -> {:.4e}; wrote {}",
            self.first,
            self.last,
            self.out.display()
        );
    }
}

/// Runs `iterations` steps of `opt` on `x`; returns the loss at the first and the last.
pub(crate) fn optimise<V, O, F>(
    opt: &mut O,
    x: &mut V,
    mut f: F,
    iterations: usize,
) -> Res<(f64, f64)>
where
    V: nst::optim::Vector,
    O: nst::optim::Optimizer<V>,
    F: FnMut(&V) -> Res<(f64, V)>,
    Box<dyn std::error::Error + Send + Sync>: From<V::Error>,
{
    let (mut first, mut last) = (f64::NAN, f64::NAN);
    for it in 0..iterations {
        let step = opt.step(x, &mut f)?;
        if it == 0 {
            first = step.loss;
        }
        last = step.loss;
    }
    Ok((first, last))
}
