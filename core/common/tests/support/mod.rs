//! What the fuzz tests share: an allocator that measures, a case budget,
//! their directories.
#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// The system allocator, counting each thread's live bytes and their peak.
pub struct Counting;

thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn grew(n: usize) {
    let _ = LIVE.try_with(|l| {
        l.set(l.get() + n);
        let _ = PEAK.try_with(|p| p.set(p.get().max(l.get())));
    });
}

fn shrank(n: usize) {
    let _ = LIVE.try_with(|l| l.set(l.get().saturating_sub(n)));
}

// SAFETY: every call is passed on to the system allocator unchanged; the
// counters are const-initialised thread-locals (no allocation in them).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        grew(l.size());
        // SAFETY: the caller's layout, as GlobalAlloc::alloc requires.
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        grew(l.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        shrank(l.size());
        // SAFETY: `p` came from this allocator with layout `l`.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        // Counted as a new block beside the old one (what a moving
        // realloc needs at its peak).
        grew(new);
        // SAFETY: as dealloc, and `new` is the caller's size.
        let q = unsafe { System.realloc(p, l, new) };
        shrank(l.size());
        q
    }
}

/// The most bytes this thread had allocated at once while `f` ran, above
/// what it had before.
pub fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.with(|l| l.get());
    PEAK.with(|p| p.set(base));
    let v = f();
    (v, PEAK.with(|p| p.get()) - base)
}

/// Every test binary that uses this module measures its allocations.
#[global_allocator]
static ALLOC: Counting = Counting;

/// `default` cases per property (a CI-sized budget), or
/// `DMTCP_FUZZ_CASES` (the long runs of bench/fuzz.sh). Failures are not
/// written next to the sources: shrunk inputs worth keeping go in the
/// corpus, with their expected result.
pub fn config(default: u32) -> proptest::prelude::ProptestConfig {
    proptest::prelude::ProptestConfig {
        cases: std::env::var("DMTCP_FUZZ_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default),
        failure_persistence: None,
        ..Default::default()
    }
}

/// Where this test binary's inputs and damaged files go.
pub fn scratch_dir(name: &str) -> std::path::PathBuf {
    let d = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("fuzz-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The entries of tests/corpus/`kind`/expect: each file and the rest of
/// its line (what reading it must give), once it is checked that every
/// file of the directory is listed (none goes unreplayed).
pub fn corpus(kind: &str) -> Vec<(std::path::PathBuf, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(kind);
    let expect = std::fs::read_to_string(dir.join("expect")).unwrap();
    let entries: Vec<(std::path::PathBuf, String)> = expect
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (name, rest) = l.split_once(' ').unwrap_or((l, ""));
            (dir.join(name), rest.trim().to_string())
        })
        .collect();
    for f in std::fs::read_dir(&dir).unwrap() {
        let p = f.unwrap().path();
        assert!(
            p.ends_with("expect") || entries.iter().any(|e| e.0 == p),
            "{} is in the corpus but not in its expect file",
            p.display()
        );
    }
    assert!(entries.len() >= 10, "{entries:?}");
    entries
}
