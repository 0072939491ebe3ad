//! A render's settings as the studio's clients send them (`POST /api/jobs`), checked, and
//! turned into the `nst render` and `nst estimate` command lines the worker runs. Inputs are
//! named by upload id only: nothing a client sends becomes a path.

use serde::{Deserialize, Serialize};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The most style images one render blends.
pub(crate) const MAX_STYLES: usize = 8;

/// The longest side a render may ask for.
pub(crate) const MAX_SIZE: u32 = 16384;

/// One painting and its blend weight.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StyleRef {
    pub(crate) upload: String,
    #[serde(default = "one")]
    pub(crate) weight: f64,
}

fn one() -> f64 {
    1.0
}

fn default_size() -> u32 {
    512
}

/// A render's settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Spec {
    /// The photo (an upload id).
    pub(crate) content: String,
    /// The paintings.
    pub(crate) styles: Vec<StyleRef>,
    /// Region masks (upload ids), one per painting, or none.
    #[serde(default)]
    pub(crate) masks: Vec<String>,
    /// The longer side of the result in pixels.
    #[serde(default = "default_size")]
    pub(crate) size: u32,
    /// `draft`, `default` or `high` (`--quality`).
    #[serde(default = "default_quality")]
    pub(crate) quality: String,
    /// `gram`, `w2` or `nn` (`--style-loss`).
    #[serde(default = "default_loss")]
    pub(crate) style_loss: String,
    /// `none`, `luminance`, `match` or `palette` (`--color-control`); the loss's default when
    /// absent.
    #[serde(default)]
    pub(crate) color: Option<String>,
    /// "More photo ↔ more painting", -1 to 1: the style weight is the loss's default times
    /// 10^strength.
    #[serde(default)]
    pub(crate) strength: f64,
    #[serde(default)]
    pub(crate) seed: u64,
    /// Iterations at the output size (overrides the quality preset's schedule).
    #[serde(default)]
    pub(crate) iterations: Option<u32>,
}

fn default_quality() -> String {
    "default".into()
}

fn default_loss() -> String {
    "gram".into()
}

/// Whether `s` has the shape of an upload id (32 lowercase hex digits: never a path).
pub(crate) fn is_upload_id(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Spec {
    /// Parses and checks a client's JSON; the error is one line for the client.
    pub(crate) fn parse(body: &[u8]) -> Result<Spec, String> {
        let spec: Spec =
            serde_json::from_slice(body).map_err(|e| format!("bad render settings: {e}"))?;
        spec.check()?;
        Ok(spec)
    }

    fn check(&self) -> Result<(), String> {
        for id in self.uploads() {
            if !is_upload_id(id) {
                return Err(format!(
                    "{id:?} is not an upload id (inputs are named by the id POST /api/uploads returned, never by a path)"
                ));
            }
        }
        if self.styles.is_empty() || self.styles.len() > MAX_STYLES {
            return Err(format!("a render takes 1 to {MAX_STYLES} paintings"));
        }
        if self
            .styles
            .iter()
            .any(|s| !(s.weight.is_finite() && s.weight > 0.0 && s.weight <= 1e6))
        {
            return Err("each painting's weight must be a positive number".into());
        }
        if !self.masks.is_empty() && self.masks.len() != self.styles.len() {
            return Err(format!(
                "{} region masks for {} paintings: give one per painting, or none",
                self.masks.len(),
                self.styles.len()
            ));
        }
        if !self.masks.is_empty() && self.styles.iter().any(|s| s.weight != 1.0) {
            return Err(
                "with region masks the masks are the blend: leave each painting's weight at 1"
                    .into(),
            );
        }
        if !(16..=MAX_SIZE).contains(&self.size) {
            return Err(format!("the size must be 16 to {MAX_SIZE} px"));
        }
        if !["draft", "default", "high"].contains(&self.quality.as_str()) {
            return Err("quality must be draft, default or high".into());
        }
        if !["gram", "w2", "nn"].contains(&self.style_loss.as_str()) {
            return Err("style_loss must be gram, w2 or nn".into());
        }
        if let Some(c) = &self.color {
            if !["none", "luminance", "match", "palette"].contains(&c.as_str()) {
                return Err("color must be none, luminance, match or palette".into());
            }
        }
        if !(self.strength.is_finite() && (-1.0..=1.0).contains(&self.strength)) {
            return Err("strength must be between -1 and 1".into());
        }
        if let Some(n) = self.iterations {
            if !(1..=100_000).contains(&n) {
                return Err("iterations must be 1 to 100000".into());
            }
        }
        Ok(())
    }

    /// Every upload the render reads.
    pub(crate) fn uploads(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.content.as_str())
            .chain(self.styles.iter().map(|s| s.upload.as_str()))
            .chain(self.masks.iter().map(String::as_str))
    }

    /// The style weight w_s the strength asks for, or `None` for the loss's default.
    pub(crate) fn style_weight(&self) -> Option<f64> {
        if self.strength == 0.0 {
            return None;
        }
        let loss = match self.style_loss.as_str() {
            "w2" => nst_style::StyleLoss::W2,
            "nn" => nst_style::StyleLoss::Nn,
            _ => nst_style::StyleLoss::Gram,
        };
        Some(loss.default_style_weight() * 10f64.powf(self.strength))
    }

    /// The options `nst render` and `nst estimate` share; `input` maps an upload id to its
    /// file.
    pub(crate) fn options(
        &self,
        input: impl Fn(&str) -> PathBuf,
        machine: &Machine,
    ) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        let mut push = |k: &str, v: OsString| {
            a.push(k.into());
            a.push(v);
        };
        push("--content", input(&self.content).into());
        for s in &self.styles {
            push("--style", input(&s.upload).into());
        }
        if self.masks.is_empty() {
            let weights: Vec<String> = self.styles.iter().map(|s| s.weight.to_string()).collect();
            push("--style-blend", weights.join(",").into());
        }
        for m in &self.masks {
            push("--content-mask", input(m).into());
        }
        push("--size", self.size.to_string().into());
        push("--quality", self.quality.clone().into());
        if let Some(n) = self.iterations {
            push("--iterations", n.to_string().into());
        }
        push("--style-loss", self.style_loss.clone().into());
        if let Some(c) = &self.color {
            push("--color-control", c.clone().into());
        }
        if let Some(w) = self.style_weight() {
            push("--style-weight", w.to_string().into());
        }
        push("--seed", self.seed.to_string().into());
        push("--threads", machine.threads.to_string().into());
        push("--device", machine.device.clone().into());
        push("--max-pixels", machine.max_pixels.to_string().into());
        if let Some(w) = &machine.weights {
            push("--weights", w.clone().into());
        }
        a
    }
}

/// What every render of one studio shares: the machine's side of the command line.
#[derive(Clone, Debug)]
pub(crate) struct Machine {
    pub(crate) threads: usize,
    pub(crate) device: String,
    pub(crate) max_pixels: u64,
    pub(crate) weights: Option<PathBuf>,
    /// `--checkpoint-every` of each render.
    pub(crate) checkpoint_every: String,
}

/// The files of one job, in its folder.
pub(crate) struct JobFiles {
    pub(crate) dir: PathBuf,
}

impl JobFiles {
    pub(crate) fn new(data: &Path, id: i64) -> JobFiles {
        JobFiles {
            dir: data.join("jobs").join(id.to_string()),
        }
    }
    /// The result at full size, 16 bits per channel.
    pub(crate) fn result(&self) -> PathBuf {
        self.dir.join("result.png")
    }
    pub(crate) fn preview(&self) -> PathBuf {
        self.dir.join("preview.png")
    }
    pub(crate) fn checkpoint(&self) -> PathBuf {
        self.dir.join("render.ckpt")
    }
    pub(crate) fn log(&self) -> PathBuf {
        self.dir.join("log.jsonl")
    }
}

/// The `nst render` command line of a job (resuming from its checkpoint when one exists).
pub(crate) fn render_args(
    spec: &Spec,
    input: impl Fn(&str) -> PathBuf,
    machine: &Machine,
    files: &JobFiles,
) -> Vec<OsString> {
    let mut a: Vec<OsString> = vec!["render".into()];
    a.extend(spec.options(input, machine));
    for (k, v) in [
        ("--out", files.result()),
        ("--checkpoint", files.checkpoint()),
        ("--json-log", files.log()),
        ("--preview", files.preview()),
    ] {
        a.push(k.into());
        a.push(v.into());
    }
    if files.checkpoint().is_file() {
        a.push("--resume".into());
        a.push(files.checkpoint().into());
    }
    for x in [
        "--bit-depth",
        "16",
        "--checkpoint-every",
        &machine.checkpoint_every,
        "--grace",
        "10s",
        "--quiet",
    ] {
        a.push(x.into());
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: &str = "0123456789abcdef0123456789abcdef";
    const S: &str = "fedcba9876543210fedcba9876543210";

    #[test]
    fn settings_are_checked_and_paths_are_never_inputs() {
        let ok = format!("{{\"content\":\"{C}\",\"styles\":[{{\"upload\":\"{S}\"}}]}}");
        let spec = Spec::parse(ok.as_bytes()).unwrap();
        assert_eq!((spec.size, spec.quality.as_str()), (512, "default"));
        assert_eq!(spec.style_weight(), None);
        for (body, why) in [
            (
                format!("{{\"content\":\"../../etc/passwd\",\"styles\":[{{\"upload\":\"{S}\"}}]}}"),
                "is not an upload id",
            ),
            (
                format!("{{\"content\":\"{C}\",\"styles\":[{{\"upload\":\"/etc/passwd\"}}]}}"),
                "is not an upload id",
            ),
            (format!("{{\"content\":\"{C}\",\"styles\":[]}}"), "1 to 8 paintings"),
            (
                format!("{{\"content\":\"{C}\",\"styles\":[{{\"upload\":\"{S}\"}}],\"out\":\"/tmp/x\"}}"),
                "unknown field",
            ),
            (
                format!("{{\"content\":\"{C}\",\"styles\":[{{\"upload\":\"{S}\",\"weight\":-1}}]}}"),
                "positive",
            ),
            (
                format!("{{\"content\":\"{C}\",\"styles\":[{{\"upload\":\"{S}\"}}],\"masks\":[\"{C}\",\"{S}\"]}}"),
                "2 region masks for 1 paintings",
            ),
            (
                format!("{{\"content\":\"{C}\",\"styles\":[{{\"upload\":\"{S}\"}}],\"strength\":3}}"),
                "between -1 and 1",
            ),
            (
                format!("{{\"content\":\"{C}\",\"styles\":[{{\"upload\":\"{S}\"}}],\"size\":0}}"),
                "16 to",
            ),
            ("[1]".to_string(), "bad render settings"),
        ] {
            let e = Spec::parse(body.as_bytes()).err().unwrap();
            assert!(e.contains(why), "{body}: {e}");
            assert!(!e.contains('\n'));
        }
    }

    #[test]
    fn the_strength_slider_scales_the_losss_default_weight() {
        let mut spec = Spec::parse(
            format!("{{\"content\":\"{C}\",\"styles\":[{{\"upload\":\"{S}\"}}],\"strength\":1}}")
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(spec.style_weight(), Some(1000.0));
        spec.strength = -1.0;
        spec.style_loss = "nn".into();
        assert!((spec.style_weight().unwrap() - 3e6).abs() < 1e-6);
    }

    #[test]
    fn a_job_resumes_from_its_checkpoint_when_there_is_one() {
        let dir = std::env::temp_dir().join(format!("nst-studio-spec-{}", std::process::id()));
        let files = JobFiles::new(&dir, 7);
        std::fs::create_dir_all(&files.dir).unwrap();
        let spec = Spec::parse(
            format!("{{\"content\":\"{C}\",\"styles\":[{{\"upload\":\"{S}\",\"weight\":2}}]}}")
                .as_bytes(),
        )
        .unwrap();
        let machine = Machine {
            threads: 2,
            device: "cpu".into(),
            max_pixels: 1000,
            weights: None,
            checkpoint_every: "auto".into(),
        };
        let input = |id: &str| PathBuf::from(format!("/u/{id}.png"));
        let a = render_args(&spec, input, &machine, &files);
        let text: Vec<String> = a.iter().map(|s| s.to_string_lossy().into_owned()).collect();
        assert!(text
            .windows(2)
            .any(|w| w[0] == "--style" && w[1] == format!("/u/{S}.png")));
        assert!(text
            .windows(2)
            .any(|w| w[0] == "--style-blend" && w[1] == "2"));
        assert!(!text.contains(&"--resume".to_string()));
        std::fs::write(files.checkpoint(), b"x").unwrap();
        let a = render_args(&spec, input, &machine, &files);
        assert!(a.iter().any(|s| s == "--resume"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
