//! Files written whole or not at all, and still there after a crash: [`write_atomic`].

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// Writes the file at `path` through a temporary file beside it: `write` fills the
/// temporary file (it is given its path), which is then flushed to the disk, renamed over
/// `path`, and the folder's entry flushed too. So a reader sees the old file or the whole new
/// one, never a part, and once this returns the new file survives a crash or a power cut.
///
/// The temporary name is unique to the call (the process id, a counter, and 64 random bits
/// drawn once per process), so threads or processes writing the same path or neighbouring
/// ones never write into each other's temporary file, even across machines sharing a
/// network folder. On any error the temporary file is removed and `path` is untouched.
///
/// Errors of the flush, the rename or a missing folder come as [`io::Error`]s whose message
/// names `path`; `write`'s own errors come back unchanged.
///
/// ```
/// let dir = std::env::temp_dir().join(format!("nst-io-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let path = dir.join("a.txt");
/// nst_io::write_atomic::<std::io::Error>(&path, |tmp| std::fs::write(tmp, "whole")).unwrap();
/// assert_eq!(std::fs::read_to_string(&path).unwrap(), "whole");
/// # std::fs::remove_dir_all(&dir).unwrap();
/// ```
pub fn write_atomic<E: From<io::Error>>(
    path: &Path,
    write: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), E> {
    let tmp = temp_path(path)?;
    let result = write(&tmp).and_then(|()| commit(&tmp, path).map_err(E::from));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The folder `path` is in (`.` for a bare name).
fn folder(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// A fresh temporary name beside `path`, with `path`'s name last so that a writer that picks
/// the format by the extension still sees it. The folder must exist.
pub(crate) fn temp_path(path: &Path) -> io::Result<PathBuf> {
    let dir = folder(path);
    if !dir.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "cannot write {}: folder {} does not exist",
                path.display(),
                dir.display()
            ),
        ));
    }
    let name = path.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("cannot write {}: not a file path", path.display()),
        )
    })?;
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    Ok(dir.join(format!(
        ".nst-tmp-{}-{seq}-{:016x}-{name}",
        std::process::id(),
        process_nonce()
    )))
}

/// 64 random bits, drawn once per process from the standard library's randomly seeded hasher
/// (the operating system's entropy): what tells apart two processes with the same id on two
/// machines writing into one shared folder.
fn process_nonce() -> u64 {
    static NONCE: OnceLock<u64> = OnceLock::new();
    *NONCE.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.finish()
    })
}

/// Flushes `tmp`'s data, renames it over `path`, then flushes the folder so that the new entry
/// itself is on the disk.
fn commit(tmp: &Path, path: &Path) -> io::Result<()> {
    let named =
        |e: io::Error| io::Error::new(e.kind(), format!("cannot write {}: {e}", path.display()));
    std::fs::File::open(tmp)
        .and_then(|f| f.sync_all())
        .map_err(named)?;
    std::fs::rename(tmp, path).map_err(named)?;
    sync_folder(folder(path)).map_err(named)
}

/// Flushes a folder's entries (`fsync` on the folder). Some file systems cannot do it and say
/// so (`EINVAL`); for them the rename's own ordering is all there is, as for every program.
#[cfg(unix)]
fn sync_folder(dir: &Path) -> io::Result<()> {
    match std::fs::File::open(dir).and_then(|f| f.sync_all()) {
        Err(e)
            if e.kind() == io::ErrorKind::InvalidInput
                || e.kind() == io::ErrorKind::Unsupported =>
        {
            Ok(())
        }
        r => r,
    }
}

/// Windows has no handle to flush for a folder; its renames are journaled by NTFS.
#[cfg(not(unix))]
fn sync_folder(_dir: &Path) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("nst-atomic-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn threads_writing_one_path_never_share_a_temporary_file() {
        // Eight writers, forty rounds each, all on one path: every write must succeed (a shared
        // temporary name makes one writer's rename take the other's file, and the other's
        // rename then fails), and the file is always one writer's whole content.
        let dir = scratch("race");
        let path = dir.join("out.bin");
        std::thread::scope(|s| {
            for t in 0..8u8 {
                let path = &path;
                s.spawn(move || {
                    for round in 0..40u32 {
                        let body = vec![t; 64 * 1024 + round as usize];
                        write_atomic::<io::Error>(path, |tmp| {
                            use std::io::Write;
                            let mut f = std::fs::File::create(tmp)?;
                            for chunk in body.chunks(4096) {
                                f.write_all(chunk)?;
                            }
                            Ok(())
                        })
                        .unwrap();
                        let now = std::fs::read(path).unwrap();
                        assert!(now.len() >= 64 * 1024);
                        assert!(now.iter().all(|&b| b == now[0]), "a mixed file");
                    }
                });
            }
        });
        // Nothing but the output is left.
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(names.len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn temporary_names_are_fresh_and_keep_the_extension() {
        let dir = scratch("names");
        let a = temp_path(&dir.join("x.png")).unwrap();
        let b = temp_path(&dir.join("x.png")).unwrap();
        assert_ne!(a, b);
        assert!(a.to_str().unwrap().ends_with("-x.png"));
        assert_eq!(a.parent(), Some(dir.as_path()));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_write_leaves_nothing_and_the_old_file_whole() {
        let dir = scratch("fail");
        let path = dir.join("keep.txt");
        std::fs::write(&path, "old").unwrap();
        let r = write_atomic::<io::Error>(&path, |tmp| {
            std::fs::write(tmp, "half")?;
            Err(io::Error::other("disk full"))
        });
        assert_eq!(r.unwrap_err().to_string(), "disk full");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_folder_is_named() {
        let dir = scratch("missing");
        let e = write_atomic::<io::Error>(&dir.join("no/such/f.png"), |_| Ok(())).unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
        assert!(e.to_string().contains("no/such"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
