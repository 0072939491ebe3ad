//! `nst batch JOBS.jsonl`: one render per line, idempotent (a manifest beside each output),
//! sharded for the schedulers people already run (Slurm arrays, Kubernetes Indexed Jobs, AWS
//! Batch arrays) without a scheduler of its own.

use crate::manifest::Manifest;
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub(crate) struct Args {
    /// The jobs: one JSON object per line, `{"content": …, "style": […], "out": …}` plus any
    /// `nst render` option by its long name (`"iterations": 300`, `"original-colors": true`).
    #[arg(value_name = "JOBS.jsonl")]
    jobs: PathBuf,
    /// Also write the summary (done, skipped, failed, with reasons) as JSON here.
    #[arg(long, value_name = "FILE")]
    summary: Option<PathBuf>,
    /// Take only jobs `i` with `i mod N = K` (default: from the scheduler's environment).
    #[arg(long, value_name = "K/N", value_parser = parse_shard)]
    shard: Option<(usize, usize)>,
    /// The number of shards when the environment gives only an index (Kubernetes Indexed
    /// Jobs: `JOB_COMPLETION_INDEX`).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    shards: Option<u64>,
    /// The device of every job that does not set its own (`cpu`, `cuda`, `cuda:N`): one
    /// process per GPU, each with its shard.
    #[arg(long, value_name = "DEVICE")]
    device: Option<String>,
    /// Worker threads of every job that does not set its own.
    #[arg(long, value_name = "N")]
    threads: Option<u32>,
}

fn parse_shard(s: &str) -> std::result::Result<(usize, usize), String> {
    let bad = || format!("expected K/N with 0 <= K < N (e.g. 0/4), got {s:?}");
    let (k, n) = s.split_once('/').ok_or_else(bad)?;
    let (k, n): (usize, usize) = (
        k.trim().parse().map_err(|_| bad())?,
        n.trim().parse().map_err(|_| bad())?,
    );
    if n == 0 || k >= n {
        return Err(bad());
    }
    Ok((k, n))
}

/// The shard `(index, count)` and where it came from, from `--shard`, else the environment of
/// a scheduler: Slurm job arrays (`SLURM_ARRAY_TASK_ID` − `SLURM_ARRAY_TASK_MIN`, out of
/// `SLURM_ARRAY_TASK_COUNT`), Kubernetes Indexed Jobs (`JOB_COMPLETION_INDEX`, out of
/// `--shards`), AWS Batch array jobs (`AWS_BATCH_JOB_ARRAY_INDEX`, out of
/// `AWS_BATCH_JOB_ARRAY_SIZE`); else the whole batch.
pub(crate) fn shard_from(
    shard: Option<(usize, usize)>,
    shards: Option<u64>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<((usize, usize), String)> {
    if let Some(s) = shard {
        return Ok((s, "--shard".into()));
    }
    let num = |name: &str| -> Result<Option<usize>> {
        match env(name) {
            None => Ok(None),
            Some(v) => v
                .trim()
                .parse()
                .map(Some)
                .with_context(|| format!("{name}={v:?} is not a number")),
        }
    };
    let checked = |k: usize, n: usize, from: String| -> Result<((usize, usize), String)> {
        if n == 0 || k >= n {
            bail!("{from}: shard {k} of {n} does not exist");
        }
        Ok(((k, n), from))
    };
    if let Some(id) = num("SLURM_ARRAY_TASK_ID")? {
        let min = num("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
        let count = num("SLURM_ARRAY_TASK_COUNT")?
            .context("SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not")?;
        let k = id
            .checked_sub(min)
            .context("SLURM_ARRAY_TASK_ID is below SLURM_ARRAY_TASK_MIN")?;
        return checked(k, count, "Slurm (SLURM_ARRAY_TASK_ID)".into());
    }
    if let Some(k) = num("JOB_COMPLETION_INDEX")? {
        let n = shards.context(
            "JOB_COMPLETION_INDEX is set (a Kubernetes Indexed Job): pass --shards N, the Job's completions",
        )?;
        return checked(k, n as usize, "Kubernetes (JOB_COMPLETION_INDEX)".into());
    }
    if let Some(k) = num("AWS_BATCH_JOB_ARRAY_INDEX")? {
        let n = num("AWS_BATCH_JOB_ARRAY_SIZE")?
            .context("AWS_BATCH_JOB_ARRAY_INDEX is set but AWS_BATCH_JOB_ARRAY_SIZE is not")?;
        return checked(k, n, "AWS Batch (AWS_BATCH_JOB_ARRAY_INDEX)".into());
    }
    Ok(((0, 1), "the whole batch".into()))
}

/// Options whose values are paths, resolved against the jobs file's folder.
const PATH_OPTIONS: [&str; 9] = [
    "content",
    "style",
    "out",
    "content-mask",
    "style-mask",
    "checkpoint",
    "resume",
    "json-log",
    "weights",
];

/// Options a job may not set (the batch decides them).
const REFUSED: [&str; 2] = ["web", "help"];

/// One job, checked: its render arguments and what its manifest records.
struct Job {
    out: PathBuf,
    argv: Vec<String>,
    /// The input files (content, styles, masks, an --init image).
    inputs: Vec<PathBuf>,
    /// The settings, normalised (sorted keys, resolved paths).
    settings: String,
}

fn resolve(base: &Path, v: &str) -> String {
    let p = Path::new(v);
    if p.is_absolute() {
        v.to_string()
    } else {
        base.join(p).display().to_string()
    }
}

/// The `nst render` arguments of one line of a jobs file (paths resolved against `base`).
pub(crate) fn job_argv(line: &str, base: &Path) -> Result<Vec<String>> {
    parse_job(line, base, &[]).map(|j| j.argv)
}

fn parse_job(line: &str, base: &Path, defaults: &[(&str, String)]) -> Result<Job> {
    let v: serde_json::Value = serde_json::from_str(line).context("not JSON")?;
    let obj = v.as_object().context("not a JSON object")?;
    let mut fields: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    for (k, v) in obj {
        let key = k.trim_start_matches("--").replace('_', "-");
        if REFUSED.contains(&key.as_str()) {
            bail!("option {key:?} cannot be used in a batch");
        }
        fields.insert(key, v.clone());
    }
    for (k, v) in defaults {
        fields
            .entry(k.to_string())
            .or_insert_with(|| serde_json::json!(v));
    }
    for needed in ["content", "style", "out"] {
        if !fields.contains_key(needed) {
            bail!("no {needed:?}");
        }
    }
    let mut argv = vec!["nst render".to_string()];
    let mut inputs = Vec::new();
    let mut normalised = serde_json::Map::new();
    for (key, value) in &fields {
        let path_like = PATH_OPTIONS.contains(&key.as_str())
            || (key == "init"
                && !matches!(
                    value.as_str(),
                    Some("noise" | "content" | "gray" | "uniform")
                ));
        let scalar = |v: &serde_json::Value| -> Result<String> {
            match v {
                serde_json::Value::String(s) => Ok(s.clone()),
                serde_json::Value::Number(n) => Ok(n.to_string()),
                serde_json::Value::Bool(b) => Ok(b.to_string()),
                _ => bail!("option {key:?}: expected a string, number or boolean"),
            }
        };
        let values: Vec<String> = match value {
            serde_json::Value::Array(items) => items.iter().map(scalar).collect::<Result<_>>()?,
            serde_json::Value::Bool(true) => Vec::new(),
            serde_json::Value::Bool(false) | serde_json::Value::Null => continue,
            v => vec![scalar(v)?],
        };
        let values: Vec<String> = if path_like {
            values.iter().map(|v| resolve(base, v)).collect()
        } else {
            values
        };
        if path_like
            && !matches!(
                key.as_str(),
                "out" | "checkpoint" | "resume" | "json-log" | "weights"
            )
        {
            inputs.extend(values.iter().map(PathBuf::from));
        }
        if path_like && values.len() > 1 {
            // One flag per path, so that a path with a comma in it stays whole.
            for v in &values {
                argv.extend([format!("--{key}"), v.clone()]);
            }
        } else {
            argv.push(format!("--{key}"));
            if !values.is_empty() {
                argv.push(values.join(","));
            }
        }
        normalised.insert(key.clone(), serde_json::json!(values));
    }
    let out = PathBuf::from(resolve(
        base,
        fields["out"].as_str().context("\"out\" must be a string")?,
    ));
    Ok(Job {
        out,
        argv,
        inputs,
        settings: serde_json::Value::Object(normalised).to_string(),
    })
}

/// What the manifest of `job` must say for its output to count as done.
fn manifest(job: &Job) -> Result<Manifest> {
    Manifest::expect(&job.out, &job.settings, &job.inputs)
}

enum Outcome {
    Done,
    Skipped,
    Failed(String),
}

fn run_job(job: &Job) -> Result<Outcome> {
    let manifest = manifest(job)?;
    if manifest.is_done() {
        return Ok(Outcome::Skipped);
    }
    let args = match crate::render::parse_argv(&job.argv) {
        Ok(a) => a,
        Err(first) => return Ok(Outcome::Failed(first)),
    };
    // A batch over a fresh output tree is the normal case on a cluster, so the folders the
    // job writes in are made (a lone `nst render` refuses a missing folder instead).
    for file in args.output_files() {
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
            if let Err(e) = std::fs::create_dir_all(dir) {
                return Ok(Outcome::Failed(format!(
                    "cannot create the folder {}: {e}",
                    dir.display()
                )));
            }
        }
    }
    if let Err(e) = crate::render::run(args) {
        if e.downcast_ref::<crate::render::Interrupted>().is_some() {
            return Err(e);
        }
        return Ok(Outcome::Failed(format!("{e:#}")));
    }
    manifest.record()?;
    Ok(Outcome::Done)
}

pub(crate) fn run(a: Args) -> Result<()> {
    let text = std::fs::read_to_string(&a.jobs)
        .with_context(|| format!("cannot read {}", a.jobs.display()))?;
    let base = a
        .jobs
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let env = |k: &str| std::env::var(k).ok();
    let ((k, n), from) = shard_from(a.shard, a.shards, &env)?;
    let lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .collect();
    if lines.is_empty() {
        bail!("{} has no jobs", a.jobs.display());
    }
    let mine: Vec<(usize, usize, &str)> = lines
        .iter()
        .enumerate()
        .filter(|(i, _)| i % n == k)
        .map(|(i, (ln, l))| (i, ln + 1, *l))
        .collect();
    eprintln!(
        "batch {}: shard {k} of {n} ({from}): {} of {} jobs",
        a.jobs.display(),
        mine.len(),
        lines.len()
    );
    let mut defaults = Vec::new();
    if let Some(d) = &a.device {
        defaults.push(("device", d.clone()));
    }
    if let Some(t) = a.threads {
        defaults.push(("threads", t.to_string()));
    }
    let mut results = Vec::new();
    let (mut done, mut skipped, mut failed) = (0, 0, 0);
    for (i, lineno, line) in mine {
        let (out, outcome) = match parse_job(line, &base, &defaults) {
            Err(e) => (None, Outcome::Failed(format!("line {lineno}: {e:#}"))),
            Ok(job) => {
                eprintln!("job {i} (line {lineno}): {}", job.out.display());
                let o = match run_job(&job) {
                    Ok(o) => o,
                    Err(e) if e.downcast_ref::<crate::render::Interrupted>().is_some() => {
                        return Err(e);
                    }
                    Err(e) => Outcome::Failed(format!("{e:#}")),
                };
                (Some(job.out), o)
            }
        };
        let (status, reason) = match &outcome {
            Outcome::Done => {
                done += 1;
                ("done", None)
            }
            Outcome::Skipped => {
                skipped += 1;
                eprintln!("job {i}: already done (output and manifest match), skipped");
                ("skipped", None)
            }
            Outcome::Failed(why) => {
                failed += 1;
                eprintln!("job {i} failed: {why}");
                ("failed", Some(why.clone()))
            }
        };
        results.push(serde_json::json!({
            "job": i,
            "line": lineno,
            "out": out.map(|o| o.display().to_string()),
            "status": status,
            "reason": reason,
        }));
    }
    eprintln!("batch: {done} done, {skipped} skipped, {failed} failed");
    if let Some(path) = &a.summary {
        let summary = serde_json::json!({
            "jobs": a.jobs.display().to_string(),
            "shard": [k, n],
            "shard_from": from,
            "done": done,
            "skipped": skipped,
            "failed": failed,
            "results": results,
        });
        let text = serde_json::to_string_pretty(&summary)? + "\n";
        crate::io::write_atomic(path, |tmp| {
            std::fs::write(tmp, &text).with_context(|| format!("cannot write {}", tmp.display()))
        })?;
    }
    if failed > 0 {
        bail!("{failed} of {} jobs failed", done + skipped + failed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn a_path_with_a_comma_stays_one_path() {
        let dir = std::env::temp_dir().join(format!("nst-batch-comma-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let job = parse_job(
            r#"{"content": "c.png", "style": ["a,b.png", "d.png"], "out": "o.png"}"#,
            &dir,
            &[],
        )
        .unwrap();
        let styles: Vec<&String> = job
            .argv
            .windows(2)
            .filter(|w| w[0] == "--style")
            .map(|w| &w[1])
            .collect();
        assert_eq!(styles.len(), 2, "{:?}", job.argv);
        assert!(styles[0].ends_with("a,b.png") && styles[1].ends_with("d.png"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn every_scheduler_maps_to_its_shard() {
        let s =
            |pairs: &[(&str, &str)], shards| shard_from(None, shards, &env_of(pairs)).map(|r| r.0);
        assert_eq!(s(&[], None).unwrap(), (0, 1));
        // Slurm arrays may start anywhere: --array=1-3 gives IDs 1..3, MIN 1.
        assert_eq!(
            s(
                &[
                    ("SLURM_ARRAY_TASK_ID", "3"),
                    ("SLURM_ARRAY_TASK_MIN", "1"),
                    ("SLURM_ARRAY_TASK_COUNT", "3")
                ],
                None
            )
            .unwrap(),
            (2, 3)
        );
        assert_eq!(
            s(
                &[
                    ("SLURM_ARRAY_TASK_ID", "0"),
                    ("SLURM_ARRAY_TASK_COUNT", "4")
                ],
                None
            )
            .unwrap(),
            (0, 4)
        );
        assert!(s(&[("SLURM_ARRAY_TASK_ID", "0")], None).is_err());
        assert_eq!(
            s(&[("JOB_COMPLETION_INDEX", "2")], Some(5)).unwrap(),
            (2, 5)
        );
        let err = s(&[("JOB_COMPLETION_INDEX", "2")], None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--shards"), "{err}");
        assert!(s(&[("JOB_COMPLETION_INDEX", "5")], Some(5)).is_err());
        assert_eq!(
            s(
                &[
                    ("AWS_BATCH_JOB_ARRAY_INDEX", "7"),
                    ("AWS_BATCH_JOB_ARRAY_SIZE", "10")
                ],
                None
            )
            .unwrap(),
            (7, 10)
        );
        assert!(s(
            &[
                ("AWS_BATCH_JOB_ARRAY_INDEX", "x"),
                ("AWS_BATCH_JOB_ARRAY_SIZE", "10")
            ],
            None
        )
        .is_err());
        // --shard wins over the environment.
        assert_eq!(
            shard_from(
                Some((1, 2)),
                None,
                &env_of(&[("JOB_COMPLETION_INDEX", "0")])
            )
            .unwrap()
            .0,
            (1, 2)
        );
        assert!(
            parse_shard("2/2").is_err() && parse_shard("1/0").is_err() && parse_shard("a").is_err()
        );
        assert_eq!(parse_shard("1/3").unwrap(), (1, 3));
    }

    #[test]
    fn jobs_become_render_arguments_with_paths_resolved() {
        let base = Path::new("/data/batch");
        let j = parse_job(
            r#"{"content": "c.jpg", "style": ["s1.jpg", "/abs/s2.jpg"], "out": "out/a.png", "iterations": 30, "original_colors": true, "quiet": false, "init": "gray"}"#,
            base,
            &[("threads", "3".into())],
        )
        .unwrap();
        assert_eq!(j.out, PathBuf::from("/data/batch/out/a.png"));
        let styles: Vec<&str> = j
            .argv
            .windows(2)
            .filter(|w| w[0] == "--style")
            .map(|w| w[1].as_str())
            .collect();
        assert_eq!(styles, ["/data/batch/s1.jpg", "/abs/s2.jpg"]);
        assert!(j
            .argv
            .windows(2)
            .any(|w| w[0] == "--iterations" && w[1] == "30"));
        assert!(j.argv.contains(&"--original-colors".to_string()));
        assert!(!j.argv.contains(&"--quiet".to_string()));
        assert!(j
            .argv
            .windows(2)
            .any(|w| w[0] == "--init" && w[1] == "gray"));
        assert_eq!(j.inputs.len(), 3);
        assert!(j
            .argv
            .windows(2)
            .any(|w| w[0] == "--threads" && w[1] == "3"));
        for bad in [
            r#"{"style": "s", "out": "o"}"#,
            r#"{"content": "c", "style": "s", "out": "o", "web": true}"#,
            "[1]",
            "nope",
        ] {
            assert!(parse_job(bad, base, &[]).is_err(), "{bad}");
        }
    }
}
