//! Where the weights are: the one rule the CLI, the facade, the benchmarks and the tests use.

use std::path::{Path, PathBuf};

/// Where `cargo xtask fetch-weights` writes VGG19, relative to the workspace root.
pub const DEFAULT_FILE: &str = "weights/vgg19.safetensors";

/// The environment variable that names the weights file.
pub const ENV: &str = "NST_WEIGHTS";

/// The weights file to read, by one rule:
///
/// 1. `given` (the CLI's `--weights`), when there is one;
/// 2. else `$NST_WEIGHTS`;
/// 3. else the first [`DEFAULT_FILE`] that exists in the current folder or a folder above
///    it, then in a folder above the running executable (so `target/release/nst` finds the
///    checkout's weights from anywhere);
/// 4. else [`DEFAULT_FILE`] itself, relative, so that the error of reading it names the
///    path that `cargo xtask fetch-weights` would have made.
///
/// Nothing is read or checked here: a path that does not exist is the reader's error.
///
/// ```
/// use std::path::Path;
/// let p = nst_weights::locate(Some(Path::new("my/vgg.safetensors")));
/// assert_eq!(p, Path::new("my/vgg.safetensors"));
/// ```
pub fn locate(given: Option<&Path>) -> PathBuf {
    if let Some(p) = given {
        return p.to_path_buf();
    }
    if let Some(p) = std::env::var_os(ENV) {
        return PathBuf::from(p);
    }
    let cwd = std::env::current_dir().ok();
    let exe = std::env::current_exe().ok();
    search(cwd.as_deref(), exe.as_deref())
}

/// Step 3 and 4 of [`locate`]: `DEFAULT_FILE` under `cwd` or a folder above it, then under a
/// folder above `exe`, else the relative path.
fn search(cwd: Option<&Path>, exe: Option<&Path>) -> PathBuf {
    let rel = Path::new(DEFAULT_FILE);
    let above_cwd = cwd.into_iter().flat_map(Path::ancestors);
    let above_exe = exe.into_iter().flat_map(|e| e.ancestors().skip(1));
    above_cwd
        .chain(above_exe)
        .map(|dir| dir.join(rel))
        .find(|c| c.is_file())
        .unwrap_or_else(|| rel.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nearest_folder_with_weights_wins_then_the_executables() {
        let tmp = std::env::temp_dir().join(format!("nst-locate-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let deep = tmp.join("a").join("b");
        let exe_dir = tmp.join("bin").join("release");
        std::fs::create_dir_all(&deep).unwrap();
        std::fs::create_dir_all(&exe_dir).unwrap();
        let exe = exe_dir.join("nst");
        // Nothing anywhere: the relative default.
        assert_eq!(search(Some(&deep), Some(&exe)), Path::new(DEFAULT_FILE));
        // Above the executable only.
        let by_exe = tmp.join("bin").join(DEFAULT_FILE);
        std::fs::create_dir_all(by_exe.parent().unwrap()).unwrap();
        std::fs::write(&by_exe, b"x").unwrap();
        assert_eq!(search(Some(&deep), Some(&exe)), by_exe);
        // A folder above the working directory comes first, and the nearest one of those.
        let far = tmp.join(DEFAULT_FILE);
        std::fs::create_dir_all(far.parent().unwrap()).unwrap();
        std::fs::write(&far, b"x").unwrap();
        assert_eq!(search(Some(&deep), Some(&exe)), far);
        let near = tmp.join("a").join(DEFAULT_FILE);
        std::fs::create_dir_all(near.parent().unwrap()).unwrap();
        std::fs::write(&near, b"x").unwrap();
        assert_eq!(search(Some(&deep), Some(&exe)), near);
        // With neither folder known: the relative default.
        assert_eq!(search(None, None), Path::new(DEFAULT_FILE));
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
