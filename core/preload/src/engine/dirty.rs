//! Dirty-page tracking for incremental images (docs/storage.md, "Dirty
//! tracking").
//!
//! Without it, every checkpoint hashes all of memory to find the 64 KiB
//! chunks that did not change since the previous image. With it, the
//! private anonymous writable areas are registered with a userfaultfd of
//! the library's in asynchronous write-protect mode (the kernel resolves a
//! write fault itself, clearing the page's write-protect bit: no handler,
//! no signal, the program sees nothing), and each checkpoint asks
//! `PAGEMAP_SCAN` which pages were written since the last one, write-
//! protecting them again in the same call. A chunk of a page range that was
//! provably not written since the previous image was captured is taken
//! from that image (hash and reference) without being read.
//!
//! Trusted only when all of this holds, else the chunk is hashed:
//! - the pages were write-protected when the previous image (the one
//!   `incr::Prev` refers to) was captured by this process, in this
//!   address space: not in a forked writer's round, not across a restart
//!   or a fork, not after a round whose image failed;
//! - the area is registered with our userfaultfd (a new, moved or
//!   re-mapped area is not: the scan fails with EPERM for it; an area
//!   another userfaultfd holds cannot be registered, EBUSY);
//! - the process has no long-term pinned pages (`VmPin` in
//!   /proc/self/status: memory a device writes through pinned pages, such
//!   as RDMA memory regions or io_uring fixed buffers, changes without a
//!   fault), and no io_uring or Linux AIO context (a request in flight
//!   writes its buffer when it completes, without a fault);
//! - the chunk is not memory one of the library's threads is using (its
//!   stacks), and no page of it was written while the image was written:
//!   a second scan after the writers checks that (the library's own
//!   threads keep running), and such chunks are hashed again and rewritten.
//!
//! A page zapped by `MADV_DONTNEED` is not present and not in the image,
//! which shortens the run of pages it was in, so the chunk there no longer
//! matches the previous image's (by address and length); a page faulted in
//! again, for reading (the zero page) or writing, carries no write-protect
//! bit and counts as written. Kernel writes into the program's memory
//! (`read(2)`, `process_vm_writev` from another process) go through the
//! same write faults.

use super::fds::PROTECTED_FD_BASE;
use super::memory::Plan;
use core::sync::atomic::{AtomicI32, AtomicU32, Ordering::SeqCst};
use dmtcp_sys::uffd;

/// The library's userfaultfd for write-protect tracking.
pub const UFFD_FD: i32 = PROTECTED_FD_BASE + 6;

/// 0: not tried yet; 1: usable; -1: off (`DMTCP_DIRTY_TRACKING=0`, or the
/// kernel refused the userfaultfd or its features).
static STATE: AtomicI32 = AtomicI32::new(0);
/// The process whose address space [`UFFD_FD`] tracks (0: none).
static OWNER: AtomicI32 = AtomicI32::new(0);
/// The generation whose capture last write-protected the tracked areas
/// (0: none that can be trusted).
static ARMED_GEN: AtomicU32 = AtomicU32::new(0);

/// Regions asked of one `PAGEMAP_SCAN` call (a buffer on the stack: the
/// `ioctl` wrapper runs on the program's threads, whose stacks may be
/// small).
const VEC_LEN: usize = 64;

/// Pages provably unchanged since the previous image: sorted, disjoint
/// `[start, end)` ranges.
pub struct Clean {
    pub ranges: Vec<(u64, u64)>,
}

impl Clean {
    /// Is `[a, b)` inside one of the ranges?
    pub fn covers(ranges: &[(u64, u64)], a: u64, b: u64) -> bool {
        let i = ranges.partition_point(|r| r.1 <= a);
        ranges.get(i).is_some_and(|r| r.0 <= a && b <= r.1)
    }
}

fn off() -> bool {
    match STATE.load(SeqCst) {
        -1 => true,
        1 => false,
        _ => {
            // getenv, not std::env (whose lock a suspended thread could hold).
            // SAFETY: getenv with a NUL-terminated name; read at once.
            let v = unsafe { libc::getenv(c"DMTCP_DIRTY_TRACKING".as_ptr()) };
            // SAFETY: getenv returned a NUL-terminated string.
            let zero = !v.is_null() && unsafe { core::ffi::CStr::from_ptr(v) }.to_bytes() == b"0";
            STATE.store(if zero { -1 } else { 1 }, SeqCst);
            zero
        }
    }
}

/// Our userfaultfd, made now if this process has none yet; None (and
/// tracking off for good, silently) if the kernel refuses it.
fn uffd() -> Option<i32> {
    let me = dmtcp_sys::getpid();
    if OWNER.load(SeqCst) == me {
        return Some(UFFD_FD);
    }
    let fd = uffd::open_wp_async();
    if fd < 0 {
        STATE.store(-1, SeqCst);
        return None;
    }
    let moved = super::fdguard::dup_own(fd as i32, UFFD_FD);
    super::fdguard::close_own(fd as i32);
    if moved < 0 {
        STATE.store(-1, SeqCst);
        return None;
    }
    OWNER.store(me, SeqCst);
    ARMED_GEN.store(0, SeqCst);
    Some(UFFD_FD)
}

/// In a forked child (the program's fork): the inherited userfaultfd
/// works on the parent's address space; it goes, and the child starts
/// afresh (its areas are not registered: everything is hashed first).
pub fn forked_child() {
    if OWNER.swap(0, SeqCst) != 0 {
        super::fdguard::close_own(UFFD_FD);
    }
    ARMED_GEN.store(0, SeqCst);
}

/// After a restart: the address space is new, nothing is registered (the
/// number [`UFFD_FD`] holds whatever the restart put there).
pub fn after_restart() {
    OWNER.store(0, SeqCst);
    ARMED_GEN.store(0, SeqCst);
}

/// Can memory of this process change without a write fault? Pages
/// pinned for good (`VmPin`: RDMA memory regions, io_uring fixed buffers)
/// are written by devices directly, and so are the buffers of
/// asynchronous I/O in flight (io_uring, Linux AIO), pinned only while
/// their request runs: a request submitted before the checkpoint may
/// complete after its pages were write-protected.
fn writes_without_faults() -> bool {
    let Ok(s) = std::fs::read_to_string("/proc/self/status") else {
        return true;
    };
    let pinned = s
        .lines()
        .find_map(|l| l.strip_prefix("VmPin:"))
        .is_none_or(|v| v.trim().trim_end_matches("kB").trim() != "0");
    if pinned {
        return true;
    }
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    if maps.contains("[aio]") || maps.contains("io_uring") {
        return true;
    }
    std::fs::read_dir("/proc/self/fd").is_ok_and(|d| {
        d.flatten().any(|e| {
            std::fs::read_link(e.path()).is_ok_and(|t| {
                let t = t.to_string_lossy();
                t.contains("[io_uring]") || t.contains("[aio]")
            })
        })
    })
}

fn open_pagemap() -> i32 {
    // SAFETY: open of a literal path.
    unsafe {
        libc::open(
            c"/proc/self/pagemap".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    }
}

/// `PAGEMAP_SCAN` of `[start, end)` for written pages, write-protecting
/// them again if `rearm`: the written ranges, appended to `out`; Err (an
/// errno) if the area is not registered for asynchronous write-protect
/// (or the kernel has no `PAGEMAP_SCAN`). (Only written pages, which are
/// populated, are write-protected: page tables are never made for the
/// holes of a sparse area.)
fn written(
    pm: i32,
    start: u64,
    end: u64,
    rearm: bool,
    out: &mut Vec<(u64, u64)>,
) -> Result<(), i32> {
    let flags = uffd::PM_SCAN_CHECK_WPASYNC | if rearm { uffd::PM_SCAN_WP_MATCHING } else { 0 };
    scan(pm, start, end, flags, uffd::PAGE_IS_WRITTEN, out)
}

/// `PAGEMAP_SCAN` of `[start, end)` with `flags` for the pages of
/// category `mask`, appended to `out` as ranges.
fn scan(
    pm: i32,
    start: u64,
    end: u64,
    flags: u64,
    mask: u64,
    out: &mut Vec<(u64, u64)>,
) -> Result<(), i32> {
    let mut buf = [uffd::PageRegion::default(); VEC_LEN];
    let mut at = start;
    while at < end {
        let mut arg = uffd::PmScanArg {
            flags,
            start: at,
            end,
            vec: buf.as_mut_ptr() as u64,
            vec_len: VEC_LEN as u64,
            category_mask: mask,
            return_mask: mask,
            ..Default::default()
        };
        // SAFETY: vec points at our buffer of VEC_LEN regions.
        let n = unsafe { uffd::pagemap_scan(pm, &mut arg) };
        if n < 0 {
            return Err(-n as i32);
        }
        for r in &buf[..(n as usize).min(VEC_LEN)] {
            match out.last_mut() {
                Some(l) if l.1 == r.start => l.1 = r.end,
                _ => out.push((r.start, r.end)),
            }
        }
        if arg.walk_end <= at {
            return Err(libc::EIO);
        }
        at = arg.walk_end;
    }
    Ok(())
}

/// At a checkpoint, the program suspended and the memory plan taken,
/// before the image is written: read which pages of the tracked areas were
/// written since the last capture and write-protect them again (areas not
/// registered yet are registered and write-protected). Returns the pages
/// unchanged since the previous image if that image (generation
/// `prev_gen`) was captured at the last write-protect and nothing else
/// forbids trusting them; `forked`: this image is written by a forked
/// writer (nothing is trusted now, and the next checkpoint cannot trust
/// this one either: its memory is the fork's, its capture not checked).
pub fn begin(plan: &Plan, generation: u32, prev_gen: Option<u32>, forked: bool) -> Option<Clean> {
    if off() {
        return None;
    }
    let fd = uffd()?;
    let pm = open_pagemap();
    if pm < 0 {
        return None;
    }
    let armed = ARMED_GEN.swap(0, SeqCst);
    let trusted = !forked && armed != 0 && prev_gen == Some(armed) && !writes_without_faults();
    let mut clean = Vec::new();
    let mut w = Vec::new();
    let mut refused = false;
    for &(s, e) in &plan.track {
        w.clear();
        match written(pm, s, e, true, &mut w) {
            Ok(()) => {
                if trusted {
                    let mut at = s;
                    for &(ws, we) in &w {
                        if ws > at {
                            clean.push((at, ws));
                        }
                        at = at.max(we);
                    }
                    if at < e {
                        clean.push((at, e));
                    }
                }
            }
            Err(libc::ENOTTY) | Err(libc::EINVAL) => {
                // No PAGEMAP_SCAN (or not these flags) in this kernel.
                refused = true;
                break;
            }
            Err(_) => {
                // Not ours yet (new, moved, re-mapped), or another
                // userfaultfd's (EBUSY): hashed; ours from now on if it
                // can be.
                if uffd::register_wp(fd, s, e - s) == 0 {
                    w.clear();
                    let _ = written(pm, s, e, true, &mut w);
                }
            }
        }
    }
    // SAFETY: closing the fd opened above.
    unsafe { libc::close(pm) };
    if refused {
        STATE.store(-1, SeqCst);
        return None;
    }
    if !forked {
        ARMED_GEN.store(generation, SeqCst);
    }
    trusted.then_some(Clean { ranges: clean })
}

/// After the writers, still suspended: the pages of `clean` written since
/// [`begin`] (by the library's own threads, or from outside the process),
/// sorted; a range whose scan failed counts as written whole.
pub fn written_since(clean: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let pm = open_pagemap();
    let mut out = Vec::new();
    for &(s, e) in clean {
        if pm < 0 || written(pm, s, e, false, &mut out).is_err() {
            out.push((s, e));
        }
    }
    if pm >= 0 {
        // SAFETY: closing the fd opened above.
        unsafe { libc::close(pm) };
    }
    out.sort_unstable();
    out
}

/// `ioctl(2)`: a program registering memory with a userfaultfd of its own
/// gets it: the range leaves ours first (a range can be registered with
/// one userfaultfd only; it is hashed from then on, and ours again once
/// the program lets it go). Every other request goes straight on.
///
/// # Safety
/// The `ioctl(2)` contract. (Variadic in C; on x86-64 a call with one more
/// integer argument passes it as this one.)
#[no_mangle]
pub unsafe extern "C" fn ioctl(fd: libc::c_int, req: libc::c_ulong, arg: usize) -> libc::c_int {
    let f = super::iface::next_libc!(
        c"ioctl",
        unsafe extern "C" fn(libc::c_int, libc::c_ulong, usize) -> libc::c_int
    );
    if req as usize != uffd::UFFDIO_REGISTER || fd == UFFD_FD || arg == 0 {
        // SAFETY: forwarded as the program passed it.
        return unsafe { f(fd, req, arg) };
    }
    // No checkpoint between our letting go and the program's register
    // (it would take the range back).
    let _hold = super::capi::CkptHold::new();
    if OWNER.load(SeqCst) == dmtcp_sys::getpid() {
        // SAFETY: UFFDIO_REGISTER's argument starts with a struct
        // uffdio_range (its contract: the program passes a valid one).
        let r = unsafe { core::ptr::read_unaligned(arg as *const uffd::Range) };
        // Only the parts registered with ours (asynchronous write-protect):
        // unregistering another userfaultfd's range is not ours to do.
        let pm = open_pagemap();
        let mut ours = Vec::new();
        if pm >= 0 {
            let end = r.start.saturating_add(r.len);
            let _ = scan(pm, r.start, end, 0, uffd::PAGE_IS_WPALLOWED, &mut ours);
            // SAFETY: closing the fd opened above.
            unsafe { libc::close(pm) };
        }
        for (s, e) in ours {
            uffd::unregister(UFFD_FD, s, e - s);
        }
    }
    // SAFETY: forwarded as the program passed it.
    unsafe { f(fd, req, arg) }
}

/// Does `[a, b)` meet any of the sorted ranges `w`?
pub fn meets(w: &[(u64, u64)], a: u64, b: u64) -> bool {
    let i = w.partition_point(|r| r.1 <= a);
    w.get(i).is_some_and(|r| r.0 < b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covers_and_meets() {
        let r = [(0x1000, 0x3000), (0x5000, 0x9000)];
        assert!(Clean::covers(&r, 0x1000, 0x3000));
        assert!(Clean::covers(&r, 0x6000, 0x7000));
        assert!(!Clean::covers(&r, 0x2000, 0x4000));
        assert!(!Clean::covers(&r, 0x3000, 0x5000));
        assert!(!Clean::covers(&r, 0x9000, 0xa000));
        assert!(meets(&r, 0x2000, 0x4000));
        assert!(meets(&r, 0x4000, 0x5001));
        assert!(!meets(&r, 0x3000, 0x5000));
        assert!(!meets(&r, 0x9000, 0xa000));
        assert!(!meets(&[], 0, 1));
    }
}
