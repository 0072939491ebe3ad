//! Reading a checkpoint streams it: the heap grows by the checkpoint's vectors and a small
//! buffer, never by the file's bytes beside them (the old reader's twice the file). Its own
//! test binary, so that its counting allocator sees no other test's allocations.

use nst_optim::LbfgsState;
use nst_style::{Checkpoint, OptimizerState};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// The system allocator, counting the bytes live and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call goes to the system allocator unchanged; the counters are only atomics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: the caller's layout, passed on.
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let now = LIVE.fetch_add(l.size(), Ordering::SeqCst) + l.size();
            PEAK.fetch_max(now, Ordering::SeqCst);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: `p` came from `alloc` above with this layout.
        unsafe { System.dealloc(p, l) };
        LIVE.fetch_sub(l.size(), Ordering::SeqCst);
    }
}

#[global_allocator]
static A: Counting = Counting;

/// The peak of live heap bytes while `f` runs, above what was live when it started.
fn peak_of<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    let out = f();
    (out, PEAK.load(Ordering::SeqCst) - base)
}

#[test]
fn reading_a_checkpoint_holds_its_vectors_not_the_file_besides() {
    // A 256x192 render's L-BFGS state with 20 pairs: 44 image-sized vectors, 26 MB.
    let (w, h) = (256, 192);
    let n = 3 * w * h;
    let v = |k: usize| -> Vec<f32> { (0..n).map(|i| (i * k % 977) as f32 * 0.01).collect() };
    let pairs = (0..20).map(|i| (v(2 * i + 1), v(2 * i + 2), 0.5)).collect();
    let c = Checkpoint {
        scale: 0,
        iteration: 20,
        size: (w, h),
        image: v(100),
        previous: Some(v(101)),
        refreshed: None,
        optimizer: OptimizerState::Lbfgs(LbfgsState {
            pairs,
            last: Some((v(102), v(103))),
            h_diag: 1.0,
        }),
        elapsed: Duration::from_secs(1),
        recent_losses: Vec::new(),
        fingerprint: vec![("seed".into(), "1".into())],
    };
    let vectors = 44 * n * 4;
    let path = std::env::temp_dir().join(format!("nst-resume-memory-{}.ckpt", std::process::id()));
    std::fs::write(&path, c.to_bytes().unwrap()).unwrap();
    drop(c);
    let file = std::fs::metadata(&path).unwrap().len() as usize;
    assert!(file > vectors && file < vectors + 100_000);

    let (streamed, peak) =
        peak_of(|| Checkpoint::read_from(std::fs::File::open(&path).unwrap()).unwrap());
    // The vectors, and no more than 256 KB beside them (the header, one 64 KB buffer, the
    // pairs' list).
    assert!(
        peak <= vectors + 256 * 1024,
        "reading {file} bytes peaked at {peak} bytes of heap ({vectors} of vectors)"
    );
    // Reading the whole file first, then decoding it, holds both: what streaming avoids.
    let (whole, peak_whole) =
        peak_of(|| Checkpoint::from_bytes(&std::fs::read(&path).unwrap()).unwrap());
    std::fs::remove_file(&path).unwrap();
    assert!(peak_whole >= vectors + file, "{peak_whole}");
    assert_eq!(streamed, whole);
}
