//! The library's own heap: dlmalloc over one arena mapped at start-up.
//!
//! Two properties matter for checkpointing. User threads never touch this
//! heap, so the checkpoint thread may allocate while they are suspended.
//! And allocating never changes the address-space layout: the arena is one
//! mapping made once, so memory allocated after the memory plan is taken is
//! still inside a planned area (and freed memory is never unmapped).

use super::flock::FLock;
use core::sync::atomic::{AtomicUsize, Ordering::*};
use std::alloc::{GlobalAlloc, Layout};

/// Arena sizes to try (NORESERVE: untouched pages cost nothing).
const ARENA_SIZES: [usize; 3] = [1 << 30, 256 << 20, 64 << 20];
const PAGE: usize = 4096;

static BASE: AtomicUsize = AtomicUsize::new(0);
static SIZE: AtomicUsize = AtomicUsize::new(0);
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// The arena as dlmalloc's system allocator: bump allocation, never freed.
pub struct ArenaSys;

fn arena() -> Option<(usize, usize)> {
    let b = BASE.load(Acquire);
    if b != 0 {
        return Some((b, SIZE.load(Acquire)));
    }
    for size in ARENA_SIZES {
        // SAFETY: a fresh private anonymous mapping.
        let p = unsafe {
            super::unmap::sys_mmap(
                core::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p != libc::MAP_FAILED {
            SIZE.store(size, Release);
            NEXT.store(p as usize, Release);
            BASE.store(p as usize, Release);
            return Some((p as usize, size));
        }
    }
    None
}

/// The arena, `[start, end)`, once mapped.
pub fn arena_range() -> Option<(u64, u64)> {
    let b = BASE.load(Acquire);
    (b != 0).then(|| (b as u64, (b + SIZE.load(Acquire)) as u64))
}

// SAFETY: alloc hands out disjoint, page-aligned ranges of one mapping that
// stays mapped for the life of the process; nothing is ever unmapped.
unsafe impl dlmalloc::Allocator for ArenaSys {
    fn alloc(&self, size: usize) -> (*mut u8, usize, u32) {
        let Some((base, total)) = arena() else {
            return (core::ptr::null_mut(), 0, 0);
        };
        let size = size.div_ceil(PAGE) * PAGE;
        let start = NEXT.fetch_add(size, SeqCst);
        if start + size > base + total {
            return (core::ptr::null_mut(), 0, 0);
        }
        (start as *mut u8, size, 0)
    }
    fn remap(&self, _ptr: *mut u8, _old: usize, _new: usize, _can_move: bool) -> *mut u8 {
        core::ptr::null_mut()
    }
    fn free_part(&self, _ptr: *mut u8, _old: usize, _new: usize) -> bool {
        false
    }
    fn free(&self, _ptr: *mut u8, _size: usize) -> bool {
        false
    }
    fn can_release_part(&self, _flags: u32) -> bool {
        false
    }
    fn allocates_zeros(&self) -> bool {
        true
    }
    fn page_size(&self) -> usize {
        PAGE
    }
}

/// The global allocator of the library: dlmalloc behind a lock that the
/// fork handlers hold across `fork`.
pub struct Heap(pub FLock<dlmalloc::Dlmalloc<ArenaSys>>);

impl Heap {
    pub const fn new() -> Heap {
        Heap(FLock::new(dlmalloc::Dlmalloc::new_with_allocator(ArenaSys)))
    }
    fn with<R>(&self, f: impl FnOnce(&mut dlmalloc::Dlmalloc<ArenaSys>) -> R) -> R {
        self.0.with(f)
    }
}

// SAFETY: every call is serialised by the lock and forwarded to dlmalloc
// with the layout the caller gave.
unsafe impl GlobalAlloc for Heap {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: forwarded GlobalAlloc contract.
        self.with(|d| unsafe { d.malloc(l.size(), l.align()) })
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        // SAFETY: forwarded GlobalAlloc contract.
        self.with(|d| unsafe { d.calloc(l.size(), l.align()) })
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: forwarded GlobalAlloc contract.
        self.with(|d| unsafe { d.free(p, l.size(), l.align()) })
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        // SAFETY: forwarded GlobalAlloc contract.
        self.with(|d| unsafe { d.realloc(p, l.size(), l.align(), new) })
    }
}
