//! `nst batch`: three shards as concurrent processes, one killed mid-job and run again; every
//! output exactly once and valid, a bad job reported while the rest complete, and a full
//! rerun that renders nothing; the folders a job writes in are made.

use super::{images, weights, weights_path};
use crate::features::s;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

fn batch(jobs: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_nst"));
    c.arg("batch")
        .arg(jobs)
        .args(extra)
        .env("NST_WEIGHTS", weights_path())
        // The test sets its shards itself.
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("JOB_COMPLETION_INDEX")
        .env_remove("AWS_BATCH_JOB_ARRAY_INDEX");
    c
}

fn summary(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn shards_kills_reruns_and_a_bad_job() {
    weights();
    let dir = std::env::temp_dir().join(format!("nst-batch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // No `out/` folder: the three shards make it (concurrently).
    std::fs::create_dir_all(&dir).unwrap();
    let c = images().join("tubingen.jpg");
    let styles = ["starry_night.jpg", "the_scream.jpg", "shipwreck.jpg"];
    let mut lines = Vec::new();
    for i in 0..6 {
        let st = images().join(styles[i % 3]);
        lines.push(format!(
            r#"{{"content": "{}", "style": ["{}"], "out": "out/job{i}.png", "size": 40, "iterations": {}, "threads": 1, {}}}"#,
            s(&c),
            s(&st),
            if i == 0 { 60 } else { 4 },
            // Job 0 reports every iteration: the test kills it on its first.
            if i == 0 {
                r#""quiet": false, "print_every": 1"#
            } else {
                r#""quiet": true"#
            }
        ));
    }
    // Job 6: a missing content image.
    lines.push(
        r#"{"content": "missing.jpg", "style": "x.jpg", "out": "out/bad.png", "size": 40}"#.into(),
    );
    let jobs = dir.join("jobs.jsonl");
    std::fs::write(&jobs, lines.join("\n") + "\n").unwrap();

    // Shard 0 holds jobs 0, 3 and 6: it is killed while rendering job 0, as soon as it has
    // reported its first iteration of 60.
    let mut first = batch(&jobs, &["--shard", "0/3"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut others: Vec<_> = (1..3)
        .map(|k| {
            let sum = dir.join(format!("summary{k}.json"));
            let child = batch(&jobs, &["--shard", &format!("{k}/3"), "--summary", s(&sum)])
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            (child, sum)
        })
        .collect();
    let err = first.stderr.take().unwrap();
    let mut reader = BufReader::new(err);
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "shard 0 ended early"
        );
        if line.contains(" 1/60 ") {
            break;
        }
    }
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(
        !dir.join("out/job0.png.nst.json").exists(),
        "a killed job looks done"
    );
    for (child, sum) in &mut others {
        assert!(child.wait().unwrap().success());
        let v = summary(sum);
        assert_eq!(
            (v["done"].as_u64(), v["failed"].as_u64()),
            (Some(2), Some(0)),
            "{v}"
        );
    }
    // Shard 0 again: its jobs complete, the bad one is reported, the exit status says so.
    let sum0 = dir.join("summary0.json");
    let r = batch(&jobs, &["--shard", "0/3", "--summary", s(&sum0)])
        .output()
        .unwrap();
    assert!(!r.status.success());
    let v = summary(&sum0);
    assert_eq!(
        (v["done"].as_u64(), v["failed"].as_u64()),
        (Some(2), Some(1)),
        "{v}"
    );
    let bad = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["status"] == "failed")
        .unwrap();
    assert!(
        bad["reason"].as_str().unwrap().contains("missing.jpg"),
        "{bad}"
    );
    // Every output exactly once, valid, with its manifest; nothing half-written.
    for i in 0..6 {
        let out = dir.join(format!("out/job{i}.png"));
        assert_eq!(image::open(&out).unwrap().width(), 40);
        assert!(dir.join(format!("out/job{i}.png.nst.json")).is_file());
    }
    let names: Vec<String> = std::fs::read_dir(dir.join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 12, "{names:?}");
    // A full rerun renders nothing.
    let all = dir.join("summary_all.json");
    let r = batch(&jobs, &["--summary", s(&all)]).output().unwrap();
    assert!(!r.status.success(), "the bad job still fails");
    let v = summary(&all);
    assert_eq!(
        (
            v["done"].as_u64(),
            v["skipped"].as_u64(),
            v["failed"].as_u64()
        ),
        (Some(0), Some(6), Some(1)),
        "{v}"
    );
    // A changed setting renders that job again, and only it.
    let changed = lines[1].replace("\"iterations\": 4", "\"iterations\": 5");
    let mut l2 = lines.clone();
    l2[1] = changed;
    l2.pop();
    std::fs::write(&jobs, l2.join("\n") + "\n").unwrap();
    let r = batch(&jobs, &["--summary", s(&all)]).output().unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let v = summary(&all);
    assert_eq!(
        (v["done"].as_u64(), v["skipped"].as_u64()),
        (Some(1), Some(5)),
        "{v}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_fresh_output_tree_is_made() {
    weights();
    let dir = std::env::temp_dir().join(format!("nst-batch-tree-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let line = format!(
        r#"{{"content": "{}", "style": "{}", "out": "renders/a/b/o.png", "checkpoint": "state/c/o.ckpt", "json_log": "logs/d/o.jsonl", "size": 32, "iterations": 2, "threads": 1, "quiet": true}}"#,
        s(&images().join("tubingen.jpg")),
        s(&images().join("the_scream.jpg")),
    );
    let jobs = dir.join("jobs.jsonl");
    std::fs::write(&jobs, line + "\n").unwrap();
    let r = batch(&jobs, &[]).output().unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(
        image::open(dir.join("renders/a/b/o.png")).unwrap().width(),
        32
    );
    assert!(dir.join("renders/a/b/o.png.nst.json").is_file());
    assert!(dir.join("state/c/o.ckpt").is_file());
    let log = std::fs::read_to_string(dir.join("logs/d/o.jsonl")).unwrap();
    assert!(log.lines().count() >= 2, "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}
