//! "Is this output done?": the one rule `nst batch` and `nst video` use to skip work. An
//! output counts as done when the manifest beside it (`out.png` → `out.png.nst.json`) names
//! this version of nst, the same settings, the same inputs (by SHA-256) and the output's own
//! SHA-256. The manifest is written, atomically, only after the output: a render killed
//! midway leaves none, so it is done again.

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The SHA-256 of a file (hex).
pub(crate) fn sha256_file(p: &Path) -> Result<String> {
    let bytes = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
    Ok(format!("{:x}", Sha256::digest(&bytes)))
}

/// The manifest beside an output: `out.png` → `out.png.nst.json`.
pub(crate) fn path_of(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".nst.json");
    out.with_file_name(name)
}

/// What the manifest of an output must say for the output to count as done.
pub(crate) struct Manifest {
    out: PathBuf,
    expected: serde_json::Value,
}

impl Manifest {
    /// The manifest `out` needs: this nst, `settings` (normalised by the caller: whatever
    /// changes the output) and the SHA-256 of each input file.
    pub(crate) fn expect(out: &Path, settings: &str, inputs: &[PathBuf]) -> Result<Self> {
        let mut hashes = serde_json::Map::new();
        for p in inputs {
            hashes.insert(p.display().to_string(), serde_json::json!(sha256_file(p)?));
        }
        Ok(Manifest {
            out: out.to_path_buf(),
            expected: serde_json::json!({
                "nst": env!("CARGO_PKG_VERSION"),
                "settings": settings,
                "inputs": hashes,
            }),
        })
    }

    /// Whether the output exists with a manifest that matches, and its bytes are the ones
    /// the manifest recorded.
    pub(crate) fn is_done(&self) -> bool {
        let Ok(text) = std::fs::read_to_string(path_of(&self.out)) else {
            return false;
        };
        let Ok(m) = serde_json::from_str::<serde_json::Value>(&text) else {
            return false;
        };
        let same = ["nst", "settings", "inputs"]
            .iter()
            .all(|k| m.get(k) == self.expected.get(k));
        same && self.out.is_file()
            && m.get("output").and_then(|o| o.as_str()) == sha256_file(&self.out).ok().as_deref()
    }

    /// Records the output as done: the manifest with the output's SHA-256, written atomically
    /// after the output.
    pub(crate) fn record(self) -> Result<()> {
        let mut manifest = self.expected;
        manifest["output"] = serde_json::json!(sha256_file(&self.out)?);
        let text = serde_json::to_string_pretty(&manifest)? + "\n";
        crate::io::write_atomic(&path_of(&self.out), |tmp| {
            std::fs::write(tmp, &text).with_context(|| format!("cannot write {}", tmp.display()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_output_is_done_only_with_its_manifest_its_inputs_and_its_bytes() {
        let dir = std::env::temp_dir().join(format!("nst-manifest-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (input, out) = (dir.join("in.png"), dir.join("out.png"));
        std::fs::write(&input, b"photo").unwrap();
        let m = || Manifest::expect(&out, "{\"size\":64}", std::slice::from_ref(&input));
        assert!(!m().unwrap().is_done(), "no output yet");
        std::fs::write(&out, b"render").unwrap();
        assert!(!m().unwrap().is_done(), "an output without a manifest");
        m().unwrap().record().unwrap();
        assert!(m().unwrap().is_done());
        // Other settings, another input, or other output bytes: not done.
        let other = Manifest::expect(&out, "{\"size\":128}", std::slice::from_ref(&input));
        assert!(!other.unwrap().is_done());
        std::fs::write(&input, b"another photo").unwrap();
        assert!(!m().unwrap().is_done());
        m().unwrap().record().unwrap();
        std::fs::write(&out, b"edited").unwrap();
        assert!(!m().unwrap().is_done());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
