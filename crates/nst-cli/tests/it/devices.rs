//! `nst devices` and `--device wgpu`: listed, rendering like the CPU where the build has wgpu
//! (`cargo xtask test` builds it so, on lavapipe), a clear error where it has not.

use crate::features::{render_small, s, tmp};
use crate::{nst, weights};

#[test]
fn devices_lists_the_cpu_and_each_backend() {
    let r = nst(&["devices"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let out = String::from_utf8_lossy(&r.stdout);
    assert!(out.lines().next().unwrap().starts_with("cpu  "), "{out}");
    if cfg!(feature = "wgpu") {
        assert!(out.contains("wgpu:0  "), "{out}");
    } else {
        assert!(out.contains("wgpu  not in this build"), "{out}");
    }
}

#[test]
fn bad_wgpu_devices_are_one_line_errors() {
    weights();
    for (device, want) in [
        ("wgpu:x", "bad device \"wgpu:x\""),
        (
            "wgpu:99",
            if cfg!(feature = "wgpu") {
                "no adapter 99"
            } else {
                "without wgpu support"
            },
        ),
        ("vulkan", "unknown device"),
    ] {
        let r = render_small(&tmp("bad_device.png"), 32, 1, &["--device", device]);
        assert_eq!(r.status.code(), Some(1), "{device}");
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(err.contains(want), "{device}: {err}");
        // nst's own message is one line. (Mesa's Vulkan drivers print a line of their own
        // when XDG_RUNTIME_DIR is unset, as on a headless CI machine.)
        let ours: Vec<&str> = err
            .lines()
            .filter(|l| !l.contains("XDG_RUNTIME_DIR"))
            .collect();
        assert_eq!(ours.len(), 1, "{device}: {err}");
        assert!(!tmp("bad_device.png").exists());
    }
}

/// The same render on wgpu and on the CPU: the same first evaluation (to f32 rounding), and
/// the device in the log.
#[cfg(feature = "wgpu")]
#[test]
fn a_wgpu_render_starts_where_the_cpus_does() {
    weights();
    let run = |device: &str| {
        let (out, log) = (
            tmp(&format!("d_{device}.png")),
            tmp(&format!("d_{device}.jsonl")),
        );
        let r = render_small(&out, 40, 3, &["--device", device, "--json-log", s(&log)]);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        assert!(out.exists());
        let text = std::fs::read_to_string(&log).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let first = lines
            .iter()
            .find(|v| v.get("event").is_none() && v.get("total").is_some())
            .expect("an iteration")["total"]
            .as_f64()
            .unwrap();
        (first, lines[0]["device"].as_str().unwrap_or("").to_string())
    };
    let (cpu, _) = run("cpu");
    let (gpu, device) = run("wgpu");
    assert!(device.starts_with("wgpu:0"), "{device}");
    assert!((cpu - gpu).abs() <= 1e-4 * cpu, "cpu {cpu} wgpu {gpu}");
}
