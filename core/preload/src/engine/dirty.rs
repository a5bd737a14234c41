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
//!   address space: not across a restart or a fork of the program, not
//!   after a round whose image failed;
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
//!   A forked writer writes the memory as it was at the fork: the parent
//!   scans right after the fork and hands the child the pages written
//!   since the write-protect ([`handoff_send`]); the child hashes and
//!   rewrites those. (The child's own threads change only the library's
//!   memory, which is never tracked.)
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
use core::sync::atomic::{AtomicI32, AtomicPtr, AtomicU32, Ordering::SeqCst};
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
    handoff_forget();
}

/// In a process restarted from an image a forked writer wrote: the
/// handoff's mapping and fds were the writer's, not this process's.
pub fn handoff_forget() {
    HANDOFF.map.store(core::ptr::null_mut(), SeqCst);
    HANDOFF.r.store(-1, SeqCst);
    HANDOFF.w.store(-1, SeqCst);
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
/// forbids trusting them. (A forked writer's image is the memory at the
/// fork, taken after this: its pages written in between are handed to
/// it, see [`handoff_send`].)
pub fn begin(plan: &Plan, generation: u32, prev_gen: Option<u32>) -> Option<Clean> {
    if off() {
        return None;
    }
    let fd = uffd()?;
    let pm = open_pagemap();
    if pm < 0 {
        return None;
    }
    let armed = ARMED_GEN.swap(0, SeqCst);
    let trusted = armed != 0 && prev_gen == Some(armed) && !writes_without_faults();
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
    ARMED_GEN.store(generation, SeqCst);
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

/// A forked writer's round: the parent's list of the pages of `clean`
/// written between [`begin`] (the re-arm) and the fork (by the library's
/// own threads, or from outside the process), which the child took from
/// the previous image unread although its copy of memory has them as
/// they were at the fork. The child's own page map cannot tell (its areas
/// are not registered), so the parent, which scans right after the fork,
/// hands the list over: in a shared mapping made for the round, followed
/// by one byte on a socket. A parent gone before the byte (end of file) or
/// a list too long for the mapping counts as every page written.
///
/// One handoff at a time: the checkpoint thread's, for the round under
/// way ([`handoff_open`] before the fork, [`handoff_after_fork`] on both
/// sides, then [`handoff_send`] or [`handoff_recv`], or [`handoff_close`]
/// if no child was forked).
struct Handoff {
    map: AtomicPtr<u64>,
    /// The child's end, the parent's end; -1: closed.
    r: AtomicI32,
    w: AtomicI32,
}

static HANDOFF: Handoff = Handoff {
    map: AtomicPtr::new(core::ptr::null_mut()),
    r: AtomicI32::new(-1),
    w: AtomicI32::new(-1),
};

/// Size of the handoff mapping: a count, then `[start, end)` pairs.
const HANDOFF_BYTES: usize = 1 << 20;
/// The count that says: every page of `clean`.
const HANDOFF_ALL: u64 = u64::MAX;

/// Before the fork: false if the mapping or socket pair cannot be had (the
/// child then must not trust the tracking).
pub fn handoff_open() -> bool {
    // SAFETY: a fresh shared anonymous mapping (made after the memory
    // plan, so it is in no image).
    let map = unsafe {
        super::unmap::sys_mmap(
            core::ptr::null_mut(),
            HANDOFF_BYTES,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if map == libc::MAP_FAILED {
        return false;
    }
    let mut p = [-1i32; 2];
    // SAFETY: a fresh socket pair of ours (a socket, not a pipe: the
    // parent's send to a child already gone must not raise SIGPIPE in
    // the program).
    if unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            p.as_mut_ptr(),
        )
    } != 0
    {
        // SAFETY: unmapping what was mapped above.
        unsafe { super::unmap::sys_munmap(map, HANDOFF_BYTES) };
        return false;
    }
    HANDOFF.map.store(map as *mut u64, SeqCst);
    HANDOFF.r.store(p[0], SeqCst);
    HANDOFF.w.store(p[1], SeqCst);
    true
}

/// The fd the child keeps (-1: no handoff).
pub fn handoff_child_fd() -> i32 {
    HANDOFF.r.load(SeqCst)
}

fn close_end(end: &AtomicI32) {
    let fd = end.swap(-1, SeqCst);
    if fd >= 0 {
        // SAFETY: our fd, closed once (swapped out above).
        unsafe { libc::close(fd) };
    }
}

/// Right after the fork, on each side: the other side's end goes (in the
/// child, so that the parent's death is an end of file there).
pub fn handoff_after_fork(in_child: bool) {
    close_end(if in_child { &HANDOFF.w } else { &HANDOFF.r });
}

/// Let go of the mapping and of this process's socket ends.
pub fn handoff_close() {
    close_end(&HANDOFF.r);
    close_end(&HANDOFF.w);
    let map = HANDOFF.map.swap(core::ptr::null_mut(), SeqCst);
    if !map.is_null() {
        // SAFETY: our mapping, unmapped once (swapped out above).
        unsafe { super::unmap::sys_munmap(map as *mut libc::c_void, HANDOFF_BYTES) };
    }
}

/// In the parent, after the fork: hand over the pages written (sorted;
/// None: all of them).
pub fn handoff_send(written: Option<&[(u64, u64)]>) {
    let map = HANDOFF.map.load(SeqCst);
    if map.is_null() {
        return;
    }
    let cap = (HANDOFF_BYTES / 8 - 1) / 2;
    let n = match written {
        Some(w) if w.len() <= cap => {
            for (i, &(s, e)) in w.iter().enumerate() {
                // SAFETY: 2 + 2 * i < HANDOFF_BYTES / 8: inside the mapping.
                unsafe {
                    map.add(1 + 2 * i).write(s);
                    map.add(2 + 2 * i).write(e);
                }
            }
            w.len() as u64
        }
        _ => HANDOFF_ALL,
    };
    // SAFETY: the first word of the mapping.
    unsafe { map.write_volatile(n) };
    let b = 1u8;
    let w = HANDOFF.w.load(SeqCst);
    if w >= 0 {
        // SAFETY: one byte from our buffer (the socket's buffer is empty:
        // this does not block; a child gone is EPIPE, without a signal).
        unsafe {
            libc::send(
                w,
                &b as *const u8 as *const libc::c_void,
                1,
                libc::MSG_NOSIGNAL,
            )
        };
    }
    handoff_close();
}

/// In the child, once its writers are done: the pages of `clean` the
/// parent found written (all of them if it could not say).
pub fn handoff_recv(clean: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let map = HANDOFF.map.load(SeqCst);
    let r = HANDOFF.r.load(SeqCst);
    let mut n = HANDOFF_ALL;
    if !map.is_null() && r >= 0 && super::fdguard::read_byte(r) {
        // SAFETY: the first word of the mapping (written before the byte).
        n = unsafe { map.read_volatile() };
    }
    let out = if n == HANDOFF_ALL {
        clean.to_vec()
    } else {
        (0..n as usize)
            .map(|i| {
                // SAFETY: the parent wrote n pairs (n within the capacity)
                // before its byte.
                unsafe { (map.add(1 + 2 * i).read(), map.add(2 + 2 * i).read()) }
            })
            .collect()
    };
    handoff_close();
    out
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
