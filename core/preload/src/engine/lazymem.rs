//! Memory a lazy restart mapped from the image file, and `realloc` over it.
//!
//! A lazy restart maps raw chunks privately from the image (their pages
//! come from the page cache on first touch). Such a mapping is a file
//! mapping, not anonymous memory, and the kernel grows the two differently:
//! `mremap` extends a file mapping with the file's next pages, so a block
//! the program grows in place after the restart would show the image's
//! following bytes and, past the end of the image, die of SIGBUS on the
//! first write. glibc grows every block it serves with its own mapping
//! (128 KiB and more by default) with `mremap`. So `realloc` of such a block (IS_MMAPPED in its chunk header) that
//! lies in such memory, to a larger size, is done here as a new block, a
//! copy and a free: the new block is ordinary memory, the program sees the
//! same bytes.
//!
//! The ranges are found after each restart, while user threads are
//! suspended, and are never freed: a user thread may be reading a table
//! when it is suspended and read it again after the next restart.

use core::ffi::c_void;
use core::sync::atomic::{AtomicI32, AtomicPtr, AtomicUsize, Ordering::*};

/// The number of the socket to the page server of a lazy restore of
/// compressed chunks (`dmtcp_restart`'s `lazy` module), while it has pages
/// to fill.
pub const LAZY_FD_NUM: i32 = super::fds::PROTECTED_FD_BASE + 5;
/// [`LAZY_FD_NUM`] while the page server has pages to fill, else -1.
pub static LAZY_FD: AtomicI32 = AtomicI32::new(-1);
static LAZY_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Have the page server fill every page still missing, and wait until it
/// has (and let go of the process). Before a fork (the child would see
/// zero pages where the parent had pages still to come) and a checkpoint
/// (the image is written from this memory, maybe by a forked writer).
/// Not for code that runs while user threads are suspended (a lock).
pub fn fill_all() {
    if LAZY_FD.load(SeqCst) < 0 {
        return;
    }
    let _g = LAZY_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let fd = LAZY_FD.load(SeqCst);
    if fd < 0 {
        return;
    }
    let ask = [b'F'];
    // SAFETY: one byte to our socket (no SIGPIPE if the server is done
    // and gone: its answer is waiting all the same).
    unsafe { libc::send(fd, ask.as_ptr().cast(), 1, libc::MSG_NOSIGNAL) };
    let mut b = [0u8; 1];
    let n = loop {
        // SAFETY: reading one byte from our socket into our buffer.
        let n = unsafe { libc::read(fd, b.as_mut_ptr().cast(), 1) };
        // SAFETY: errno is thread-local.
        if n >= 0 || unsafe { *libc::__errno_location() } != libc::EINTR {
            break n;
        }
    };
    if n != 1 || b[0] != b'D' {
        server_lost();
    }
    release(fd);
}

/// The server is done: let go of its socket.
fn release(fd: i32) {
    LAZY_FD.store(-1, SeqCst);
    super::fdguard::close_own(fd);
    super::fdguard::fill_placeholders();
}

/// The checkpoint thread saw the page server's socket readable: the
/// server is done (its byte `D`; the socket is closed) or gone. Gone
/// before it filled every page means the kernel now answers the program's
/// next touch of a missing page with a zero page: rather than let it run on
/// wrong memory, the process stops here with the reason (the server
/// ignores the terminal's signals and is not part of the job, so only a
/// SIGKILL of it, e.g. the OOM killer's, gets here).
pub fn server_spoke() {
    let _g = LAZY_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let fd = LAZY_FD.load(SeqCst);
    if fd < 0 {
        return;
    }
    let mut b = [0u8; 1];
    // SAFETY: reading one byte from our socket into our buffer, without
    // blocking (poll said it is readable).
    let n = unsafe { libc::recv(fd, b.as_mut_ptr().cast(), 1, libc::MSG_DONTWAIT) };
    if n == 1 && b[0] == b'D' {
        release(fd);
        return;
    }
    if n < 0 {
        // SAFETY: errno is thread-local.
        let e = unsafe { *libc::__errno_location() };
        if e == libc::EAGAIN || e == libc::EINTR {
            return;
        }
    }
    server_lost();
}

/// The page server is gone with pages still missing: stop with the reason.
fn server_lost() -> ! {
    super::log::error(format_args!(
        "the page server of the lazy restore ended before it had restored all of this \
         process's memory; stopping rather than running on zero pages \
         (DMTCP_RESTART_NO_UFFD=1 restores everything before the program resumes)"
    ));
    dmtcp_sys::exit_group(1)
}

/// `[start, end)` of the mappings of the image file, sorted, merged.
struct Ranges(Vec<(usize, usize)>);

static RANGES: AtomicPtr<Ranges> = AtomicPtr::new(core::ptr::null_mut());

/// After a restart (checkpoint thread, user threads suspended): record the
/// mappings of the image this process was restarted from.
pub fn note_restart() {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let mut v: Vec<(usize, usize)> = Vec::new();
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (range, dev, inode) = (
            f.next().unwrap_or(""),
            f.nth(2).unwrap_or(""),
            f.next().unwrap_or("0"),
        );
        let (s, e) = range.split_once('-').unwrap_or(("0", "0"));
        if !super::memory::is_image_mapping(dev, inode.parse().unwrap_or(0)) {
            continue;
        }
        let (s, e) = (
            usize::from_str_radix(s, 16).unwrap_or(0),
            usize::from_str_radix(e, 16).unwrap_or(0),
        );
        match v.last_mut() {
            Some(last) if last.1 == s => last.1 = e,
            _ => v.push((s, e)),
        }
    }
    let table = if v.is_empty() {
        core::ptr::null_mut()
    } else {
        Box::into_raw(Box::new(Ranges(v)))
    };
    RANGES.store(table, SeqCst);
}

/// Does `[start, start+len)` overlap memory mapped from the image?
fn overlaps_image(start: usize, len: usize) -> bool {
    let t = RANGES.load(Acquire);
    if t.is_null() {
        return false;
    }
    // SAFETY: a published table is never freed or changed.
    let v = unsafe { &(*t).0 };
    let i = v.partition_point(|&(_, e)| e <= start);
    v.get(i)
        .is_some_and(|&(s, _)| s < start.saturating_add(len))
}

/// Is `p` a block glibc serves with a mapping of its own (the only kind it
/// grows with `mremap`)? Bit 1 (IS_MMAPPED) of the size word in front of
/// the block. Blocks of the arenas grow in place without touching the
/// mapping, so they are left to libc's `realloc` untouched.
fn is_mmapped_chunk(p: *mut c_void) -> bool {
    // SAFETY: every glibc block is preceded by its chunk header, whose
    // size word is the machine word just below the block.
    unsafe { *(p as *const usize).sub(1) & 2 != 0 }
}

type ReallocFn = unsafe extern "C" fn(*mut c_void, usize) -> *mut c_void;
static NEXT_REALLOC: AtomicUsize = AtomicUsize::new(0);

/// `realloc`: a block in memory mapped from the image is grown by moving
/// it (see the module's documentation); everything else goes to libc.
///
/// # Safety
/// The `realloc(3)` contract.
#[no_mangle]
pub unsafe extern "C" fn realloc(p: *mut c_void, size: usize) -> *mut c_void {
    if !p.is_null() && size > 0 && !RANGES.load(Relaxed).is_null() {
        // SAFETY: `p` is a live block of the program's allocator (caller's contract).
        let have = unsafe { libc::malloc_usable_size(p) };
        if size > have && is_mmapped_chunk(p) && overlaps_image(p as usize, have) {
            // SAFETY: the program's allocator, as realloc would use it.
            let q = unsafe { libc::malloc(size) };
            if !q.is_null() {
                // SAFETY: `have` bytes are readable at `p` and writable at
                // `q` (size > have); two live blocks never overlap.
                unsafe { core::ptr::copy_nonoverlapping(p as *const u8, q as *mut u8, have) };
                // SAFETY: `p` is the caller's block, now moved to `q`.
                unsafe { libc::free(p) };
            }
            return q;
        }
    }
    let next = super::iface::next_libc!(NEXT_REALLOC, c"realloc", ReallocFn, core::ptr::null_mut());
    // SAFETY: forwarded contract.
    unsafe { next(p, size) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_is_found_by_address() {
        let t = Box::into_raw(Box::new(Ranges(vec![(0x1000, 0x3000), (0x8000, 0x9000)])));
        let old = RANGES.swap(t, SeqCst);
        assert!(overlaps_image(0x2000, 0x10));
        assert!(overlaps_image(0x0800, 0x1000));
        assert!(overlaps_image(0x7000, 0x2000));
        assert!(!overlaps_image(0x3000, 0x5000));
        assert!(!overlaps_image(0x9000, 0x1000));
        assert!(!overlaps_image(0x0, 0x1000));
        RANGES.store(old, SeqCst);
    }
}
