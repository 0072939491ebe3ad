//! `nst-fuzz`: structure-aware mutation fuzzing of every loader nst exposes to files.
//!
//! Targets: the pickle reader, both `torch.save` readers (zip and legacy), safetensors
//! weights (conversion and the model loader), the checkpoint reader, PNG, JPEG, TIFF
//! and WebP decoding through `nst-io` (the CLI's image path, with its limits), and the CLI's
//! untrusted text and sockets: a batch file's lines, the `--scales` and `--style-layers`
//! values, the studio's render settings, and raw HTTP requests to the web view
//! (`nst_cli::fuzz`).
//!
//! Each target starts from valid inputs built here and mutates them: bit flips, interesting
//! bytes, integer fields overwritten (little- and big-endian: lengths, offsets, dimensions),
//! truncation, insertion, deletion, duplication and splicing; plus, per format, pickle
//! opcodes and globals swapped, safetensors header numbers edited with the length prefix kept
//! consistent, PNG chunk CRCs repaired so the decoder goes past them, and zip archives
//! rebuilt around a mutated pickle.
//!
//! Every input must load or return an error: a panic, an input running longer than the time
//! limit, or an input whose live allocations peak above the memory bound is a failure; the
//! input is written to the output folder and the run exits non-zero.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod alloc;
mod mutate;
mod seeds;

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The most live memory one input may take.
const MEMORY_BOUND: usize = 512 << 20;
/// The longest one input may run.
const TIME_LIMIT: Duration = Duration::from_secs(10);

#[global_allocator]
static ALLOC: alloc::Counting = alloc::Counting;

/// A loader under test: `Ok` or `Err` are both fine, only how it ends matters.
type Run = fn(&[u8]) -> bool;

struct Target {
    name: &'static str,
    kind: mutate::Kind,
    run: Run,
}

fn image_limits() -> nst_io::Limits {
    nst_io::Limits {
        max_pixels: 16_000_000,
        max_bytes: 256 << 20,
    }
}

fn targets() -> Vec<Target> {
    use mutate::Kind;
    vec![
        Target {
            name: "pickle",
            kind: Kind::Pickle,
            run: |b| nst_weights::pickle::load(b, &mut 0).is_ok(),
        },
        Target {
            name: "torch-zip",
            kind: Kind::Zip,
            run: |b| nst_weights::torch::read_zip(b).is_ok(),
        },
        Target {
            name: "torch-legacy",
            kind: Kind::Pickle,
            run: |b| nst_weights::torch::read_legacy(b).is_ok(),
        },
        Target {
            name: "safetensors-weights",
            kind: Kind::Safetensors,
            run: |b| {
                let converted = nst_weights::convert_any(b).is_ok();
                let model = nst_vgg::Vgg::from_safetensors(&nst_cpu::Cpu::new(1), b).is_ok();
                converted || model
            },
        },
        Target {
            name: "checkpoint",
            kind: Kind::Safetensors,
            run: |b| nst_style::Checkpoint::from_bytes(b).is_ok(),
        },
        Target {
            name: "png",
            kind: Kind::Png,
            run: |b| nst_io::decode(b, "fuzz.png", &image_limits()).is_ok(),
        },
        Target {
            name: "jpeg",
            kind: Kind::Bytes,
            run: |b| nst_io::decode(b, "fuzz.jpg", &image_limits()).is_ok(),
        },
        Target {
            name: "tiff",
            kind: Kind::Bytes,
            run: |b| nst_io::decode(b, "fuzz.tif", &image_limits()).is_ok(),
        },
        Target {
            name: "webp",
            kind: Kind::Bytes,
            run: |b| nst_io::decode(b, "fuzz.webp", &image_limits()).is_ok(),
        },
        Target {
            name: "batch-line",
            kind: Kind::Bytes,
            run: nst_cli::fuzz::batch_line,
        },
        Target {
            name: "scales",
            kind: Kind::Bytes,
            run: nst_cli::fuzz::scales,
        },
        Target {
            name: "style-layers",
            kind: Kind::Bytes,
            run: nst_cli::fuzz::style_layers,
        },
        Target {
            name: "studio-spec",
            kind: Kind::Bytes,
            run: nst_cli::fuzz::studio_spec,
        },
        Target {
            name: "http",
            kind: Kind::Bytes,
            run: nst_cli::fuzz::http,
        },
    ]
}

struct Args {
    seconds: f64,
    only: Option<String>,
    out: PathBuf,
    seed: u64,
    replay: Vec<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        seconds: 60.0,
        only: None,
        out: PathBuf::from("target/fuzz"),
        seed: 0,
        replay: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--seconds" => {
                a.seconds = value()?
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s > 0.0)
                    .ok_or("--seconds needs a positive number")?
            }
            "--target" => a.only = Some(value()?),
            "--out" => a.out = PathBuf::from(value()?),
            "--seed" => a.seed = value()?.parse().map_err(|_| "--seed needs a number")?,
            "--replay" => a.replay.push(PathBuf::from(value()?)),
            "-h" | "--help" => {
                println!(
                    "nst-fuzz [--seconds N] [--target NAME] [--out DIR] [--seed N] [--replay FILE]...\n\
                     targets: {}",
                    targets().iter().map(|t| t.name).collect::<Vec<_>>().join(", ")
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

/// What one input did.
enum Outcome {
    Done { loaded: bool, peak: usize },
    Panicked(String),
}

/// Runs `input` through `run` on the worker, catching panics and measuring its peak memory.
fn execute(run: Run, input: &[u8]) -> Outcome {
    let base = alloc::reset_peak();
    match std::panic::catch_unwind(|| run(input)) {
        Ok(loaded) => Outcome::Done {
            loaded,
            peak: alloc::peak().saturating_sub(base),
        },
        Err(e) => Outcome::Panicked(
            e.downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic".into()),
        ),
    }
}

#[derive(Default)]
struct Stats {
    executions: u64,
    loaded: u64,
    failures: Vec<String>,
    max_peak: usize,
}

fn save_failure(out: &std::path::Path, target: &str, n: usize, input: &[u8]) -> PathBuf {
    let _ = std::fs::create_dir_all(out);
    let path = out.join(format!("{target}-failure-{n}.bin"));
    let _ = std::fs::write(&path, input);
    path
}

/// Fuzzes one target for `budget` on a worker thread; a hang ends the whole run.
fn fuzz(t: &Target, budget: Duration, seed: u64, out: &std::path::Path) -> Stats {
    let seeds = seeds::for_target(t.name);
    assert!(!seeds.is_empty(), "no seeds for {}", t.name);
    let (to_worker, inputs) = mpsc::sync_channel::<Vec<u8>>(1);
    let (to_main, results) = mpsc::channel::<Outcome>();
    let run = t.run;
    std::thread::Builder::new()
        .name(format!("fuzz-{}", t.name))
        .stack_size(64 << 20)
        .spawn(move || {
            for input in inputs {
                if to_main.send(execute(run, &input)).is_err() {
                    break;
                }
            }
        })
        .expect("a worker thread");
    let mut rng = mutate::Rng::new(seed ^ fnv(t.name));
    let mut stats = Stats::default();
    let start = Instant::now();
    let mut k = 0usize;
    while start.elapsed() < budget {
        // The seeds themselves first, then mutations of them.
        let input = if k < seeds.len() {
            seeds[k].clone()
        } else {
            mutate::mutate(&mut rng, &seeds, t.kind)
        };
        k += 1;
        to_worker.send(input.clone()).expect("the worker runs");
        match results.recv_timeout(TIME_LIMIT) {
            Ok(Outcome::Done { loaded, peak }) => {
                stats.executions += 1;
                stats.loaded += u64::from(loaded);
                stats.max_peak = stats.max_peak.max(peak);
                if peak > MEMORY_BOUND {
                    let p = save_failure(out, t.name, stats.failures.len(), &input);
                    stats.failures.push(format!(
                        "{}: peak allocation {} MB over the bound of {} MB ({})",
                        t.name,
                        peak >> 20,
                        MEMORY_BOUND >> 20,
                        p.display()
                    ));
                }
            }
            Ok(Outcome::Panicked(msg)) => {
                stats.executions += 1;
                let p = save_failure(out, t.name, stats.failures.len(), &input);
                stats
                    .failures
                    .push(format!("{}: panic: {msg} ({})", t.name, p.display()));
            }
            Err(_) => {
                let p = save_failure(out, t.name, stats.failures.len(), &input);
                eprintln!(
                    "{}: an input ran over {}s ({}); stopping",
                    t.name,
                    TIME_LIMIT.as_secs(),
                    p.display()
                );
                std::process::exit(1);
            }
        }
        if stats.failures.len() >= 20 {
            break;
        }
    }
    stats
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    // Panics are caught and reported per input; the default hook would print each one.
    std::panic::set_hook(Box::new(|_| {}));
    let all = targets();
    let chosen: Vec<&Target> = all
        .iter()
        .filter(|t| args.only.as_deref().is_none_or(|o| o == t.name))
        .collect();
    if chosen.is_empty() {
        eprintln!("error: unknown target {:?}", args.only.unwrap_or_default());
        std::process::exit(2);
    }
    if !args.replay.is_empty() {
        let mut bad = 0;
        for path in &args.replay {
            let input = std::fs::read(path).unwrap_or_default();
            for t in &chosen {
                if let Outcome::Panicked(msg) = execute(t.run, &input) {
                    println!("{}: {}: panic: {msg}", path.display(), t.name);
                    bad += 1;
                }
            }
        }
        std::process::exit(i32::from(bad > 0));
    }
    let per = Duration::from_secs_f64(args.seconds / chosen.len() as f64);
    println!(
        "fuzzing {} targets for {:.0}s each (time limit {}s an input, memory bound {} MB)",
        chosen.len(),
        per.as_secs_f64(),
        TIME_LIMIT.as_secs(),
        MEMORY_BOUND >> 20
    );
    println!("| target | executions | loaded | failures | peak memory of one input |");
    println!("|---|---|---|---|---|");
    let mut failures = Vec::new();
    for t in chosen {
        let s = fuzz(t, per, args.seed, &args.out);
        println!(
            "| {} | {} | {} | {} | {:.1} MB |",
            t.name,
            s.executions,
            s.loaded,
            s.failures.len(),
            s.max_peak as f64 / 1e6
        );
        failures.extend(s.failures);
    }
    if failures.is_empty() {
        println!("no failures");
    } else {
        for f in &failures {
            println!("FAILURE {f}");
        }
        std::process::exit(1);
    }
}
