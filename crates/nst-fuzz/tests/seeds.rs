//! The fuzzer's binary over every target's seeds and a few mutations: it starts, runs each
//! target, and finds no failure (`cargo xtask fuzz` runs the long campaigns).

use std::process::Command;

#[test]
fn every_target_runs_its_seeds_without_a_failure() {
    let out = std::env::temp_dir().join(format!("nst-fuzz-seeds-{}", std::process::id()));
    let run = Command::new(env!("CARGO_BIN_EXE_nst-fuzz"))
        .args(["--seconds", "2.8", "--out"])
        .arg(&out)
        .output()
        .expect("the fuzzer starts");
    let _ = std::fs::remove_dir_all(&out);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{}\n{}",
        stdout,
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("no failures"), "{stdout}");
    // Every target ran at least its seeds.
    for line in stdout
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| target"))
    {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let executions: u64 = cells[2].parse().unwrap_or(0);
        assert!(executions > 0, "a target ran nothing: {line}");
    }
}
