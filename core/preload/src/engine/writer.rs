//! Parallel image writing.
//!
//! Writer threads are created at start-up, each with its buffers and a
//! static zstd context already allocated, so nothing is allocated while
//! user threads are suspended and memory is being written: a torn allocator
//! state can therefore never end up in an image. Writers claim work items
//! (ranges of pages) from a shared counter, pick the pages worth saving
//! through /proc/self/pagemap, and `pwrite` runs of them (raw with O_DIRECT
//! straight from memory, or zstd-compressed) at offsets taken from a shared
//! atomic counter. The index and header are written afterwards by the
//! checkpoint thread; the file is fsync'd and renamed into place.

use super::arch;
use super::incr;
use super::memory::{Item, Plan, Select};
use super::threads::{self, Slot};
use core::cell::UnsafeCell;
use core::ffi::c_void;
use core::sync::atomic::{
    AtomicBool, AtomicI32, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering::*,
};
use dmtcp_common::image::{self, ChunkDesc, Header, Meta, CHUNK_ZSTD};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// At most this many separate runs per work item; past it the rest of the
/// item is written as one run (bounded index size, no allocation).
const MAX_RUNS_PER_ITEM: usize = 16;
const PAGE: usize = 4096;
/// zstd level for images.
const ZSTD_LEVEL: i32 = 1;

struct Job {
    items: AtomicPtr<Item>,
    n: AtomicUsize,
    next: AtomicUsize,
    fd_direct: AtomicI32,
    fd_buf: AtomicI32,
    pm_fd: AtomicI32,
    off: AtomicU64,
    compress: AtomicBool,
    error: AtomicI32,
    ready: AtomicU32,
    done: AtomicU32,
    job_epoch: AtomicU32,
    go_epoch: AtomicU32,
    /// Where `Writing` lines go: the coordinator connection, or in a
    /// forked writer its own connection.
    report_fd: AtomicI32,
    /// The first `shared_n` items are memory the program can change after
    /// it resumes (shared mappings, not copied on write by a fork): a
    /// forked writer writes them first and then tells its parent, which
    /// waits for that before it lets the program go on.
    shared_n: AtomicUsize,
    shared_left: AtomicUsize,
    /// The write end of the pipe that tells the parent (forked writer
    /// only; -1 once told).
    shared_fd: AtomicI32,
    /// Incremental images on: chunks on the [`incr::BLOCK`] grid, each
    /// with its content hash.
    incremental: AtomicBool,
    /// The previous image's chunks (sorted by address; owned by the
    /// checkpoint thread's `Prev` for the job), or null: a full image.
    prev: AtomicPtr<incr::PrevChunk>,
    prev_n: AtomicUsize,
    /// Pages unchanged since the previous image (dirty tracking: sorted
    /// ranges owned by the checkpoint thread for the job), or null.
    clean: AtomicPtr<(u64, u64)>,
    clean_n: AtomicUsize,
    /// Blocks taken from the previous image without being read (dirty
    /// tracking), and blocks hashed.
    skipped: AtomicU64,
    hashed: AtomicU64,
}

static JOB: Job = Job {
    items: AtomicPtr::new(core::ptr::null_mut()),
    n: AtomicUsize::new(0),
    next: AtomicUsize::new(0),
    fd_direct: AtomicI32::new(-1),
    fd_buf: AtomicI32::new(-1),
    pm_fd: AtomicI32::new(-1),
    off: AtomicU64::new(0),
    compress: AtomicBool::new(false),
    error: AtomicI32::new(0),
    ready: AtomicU32::new(0),
    done: AtomicU32::new(0),
    job_epoch: AtomicU32::new(0),
    go_epoch: AtomicU32::new(0),
    report_fd: AtomicI32::new(-1),
    shared_n: AtomicUsize::new(0),
    shared_left: AtomicUsize::new(0),
    shared_fd: AtomicI32::new(-1),
    incremental: AtomicBool::new(false),
    prev: AtomicPtr::new(core::ptr::null_mut()),
    prev_n: AtomicUsize::new(0),
    clean: AtomicPtr::new(core::ptr::null_mut()),
    clean_n: AtomicUsize::new(0),
    skipped: AtomicU64::new(0),
    hashed: AtomicU64::new(0),
};

/// A writer's buffers. They live in scratch mappings that are left out of
/// images (see [`super::memory::exclude`]): writers scribble on them while
/// memory is being written, and nothing in them matters after a restart.
struct WState {
    descs: *mut ChunkDesc,
    /// Content hash of each descriptor's memory (incremental images).
    hashes: *mut u128,
    descs_cap: usize,
    /// Per-job counters, in scratch memory so that the saved heap (where
    /// this struct lives) does not change while it is being written.
    hot: *mut Hot,
    pm: *mut u64,
    /// mincore() results for one item (shared anonymous memory).
    mc: *mut u8,
    zbuf: *mut u8,
    vbuf: *mut u8,
    zcap: usize,
    cmem: *mut u8,
    csize: usize,
}

/// What a writer changes during a job (lives in its scratch mapping).
struct Hot {
    descs_len: usize,
    cctx: *mut zstd_sys::ZSTD_CCtx,
    /// Hashes of the changed blocks of a run not yet written
    /// (incremental images; a run is at most one item).
    pending: [u128; PENDING],
    /// Their CRC-32s (taken while the block was in cache).
    pending_crc: [u32; PENDING],
}

/// Blocks of one run at most: an item, cut on the grid.
const PENDING: usize = (super::memory::ITEM_PAGES as usize * PAGE) / incr::BLOCK as usize + 1;

impl WState {
    // The Hot record is not part of `self`: it lives in scratch memory that
    // only the owning writer (during a job) or the checkpoint thread
    // (between jobs) touches, so handing out `&mut` from `&self` is sound.
    #[allow(clippy::mut_from_ref)]
    fn hot(&self) -> &mut Hot {
        // SAFETY: the Hot record sits in this writer's scratch mapping and is
        // used only by the writer during a job, by the checkpoint thread between jobs.
        unsafe { &mut *self.hot }
    }
    fn push_hashed(&mut self, d: ChunkDesc, hash: u128) -> Result<(), i32> {
        let h = self.hot();
        if h.descs_len == self.descs_cap {
            return Err(libc::ENOSPC);
        }
        // SAFETY: descs_len < descs_cap slots of both scratch mappings.
        unsafe {
            self.descs.add(h.descs_len).write(d);
            self.hashes.add(h.descs_len).write(hash);
        }
        h.descs_len += 1;
        Ok(())
    }
    fn pend(&self, i: usize, h: u128, crc: u32) {
        let hot = self.hot();
        hot.pending[i] = h;
        hot.pending_crc[i] = crc;
    }
    fn descs(&self) -> &[ChunkDesc] {
        // SAFETY: the first descs_len entries were written by push.
        unsafe { core::slice::from_raw_parts(self.descs, self.hot().descs_len) }
    }
    fn hashes(&self) -> &[u128] {
        // SAFETY: the first descs_len entries were written by push.
        unsafe { core::slice::from_raw_parts(self.hashes, self.hot().descs_len) }
    }
}

/// One writer thread.
pub struct Writer {
    slot: AtomicPtr<Slot>,
    st: UnsafeCell<WState>,
}

// SAFETY: `st` is used by the writer thread during a job, and by the
// checkpoint thread only while no job runs (ordered by the ready/done counters).
unsafe impl Sync for Writer {}

static WRITERS: OnceLock<Vec<&'static Writer>> = OnceLock::new();

/// A scratch mapping left out of images (restored as zeroes).
fn scratch(size: usize) -> *mut u8 {
    let size = size.div_ceil(PAGE) * PAGE;
    // SAFETY: a fresh anonymous mapping, owned by the writer for good.
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
    assert!(p != libc::MAP_FAILED, "scratch mapping");
    super::memory::exclude(p as u64, size as u64);
    p as *mut u8
}

/// Testing knob (`DMTCP_TEST_WRITE_DELAY_MS`): a forked writer pauses
/// this long before each work item (up to 4 MiB) of shared memory, and
/// after each other item that had pages to write (as far as it can tell:
/// the file offset moved meanwhile), so that tests can watch the
/// program run on while its image is written, or kill the writer mid-way.
static TEST_DELAY_MS: AtomicU32 = AtomicU32::new(0);

/// Testing knob (`DMTCP_TEST_DIRTY_POKE`, an address): when the byte
/// there lies in memory the dirty tracking proved unchanged, it is set to
/// 0x5a right after the writers are done, as a write from outside the
/// program during the image's writing would (the check after the writers
/// must then hash and rewrite its chunk); with a forked writer, right
/// before the fork (the parent's check after the fork must find it).
static TEST_POKE: AtomicU64 = AtomicU64::new(0);

fn test_poke(clean: &[(u64, u64)]) {
    let poke = TEST_POKE.load(SeqCst);
    if poke != 0 && super::dirty::Clean::covers(clean, poke, poke + 1) {
        // SAFETY: the byte lies in a tracked area: private, writable, mapped.
        unsafe { core::ptr::write_volatile(poke as *mut u8, 0x5a) };
    }
}

/// Start `n` writer threads (at library start-up).
pub fn start(n: usize) {
    // The hash's code for this CPU, chosen now (the writers hash while the
    // program is suspended).
    super::xxh3::init();
    if let Some(ms) = std::env::var("DMTCP_TEST_WRITE_DELAY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        TEST_DELAY_MS.store(ms, SeqCst);
    }
    if let Some(a) = std::env::var("DMTCP_TEST_DIRTY_POKE")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        TEST_POKE.store(a, SeqCst);
    }
    let mut ws = Vec::new();
    for i in 0..n {
        // SAFETY: ZSTD_estimateCCtxSize is a pure function.
        let csize = unsafe { zstd_sys::ZSTD_estimateCCtxSize(ZSTD_LEVEL) };
        let cmem = scratch(csize);
        // SAFETY: pure function.
        let bound =
            unsafe { zstd_sys::ZSTD_compressBound(super::memory::ITEM_PAGES as usize * PAGE) };
        let zcap = bound.div_ceil(PAGE) * PAGE;
        let w: &'static Writer = Box::leak(Box::new(Writer {
            slot: AtomicPtr::new(core::ptr::null_mut()),
            st: UnsafeCell::new(WState {
                descs: core::ptr::null_mut(),
                hashes: core::ptr::null_mut(),
                descs_cap: 0,
                hot: scratch(core::mem::size_of::<Hot>()) as *mut Hot,
                pm: scratch(super::memory::ITEM_PAGES as usize * 8) as *mut u64,
                mc: scratch(super::memory::ITEM_PAGES as usize),
                zbuf: scratch(zcap),
                vbuf: scratch(VBUF_BYTES),
                zcap,
                cmem,
                csize,
            }),
        }));
        ws.push(w);
        spawn(i, w);
    }
    let _ = WRITERS.set(ws);
}

fn spawn(i: usize, w: &'static Writer) {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::Builder::new()
        .name(format!("dmtcp:writer{i}"))
        .stack_size(256 << 10)
        .spawn(move || writer_main(w, tx))
        .expect("spawn writer thread");
    let _ = rx.recv();
    std::mem::forget(h);
}

/// In a forked child: start writer threads again over the same buffers
/// (the child has copies of them, but none of the parent's threads).
pub fn respawn() {
    for (i, w) in WRITERS.get().into_iter().flatten().enumerate() {
        w.slot.store(core::ptr::null_mut(), SeqCst);
        spawn(i, w);
    }
}

fn writer_main(w: &'static Writer, ready: std::sync::mpsc::Sender<()>) {
    threads::block_all_signals();
    let slot = threads::claim_own(threads::KIND_WRITER);
    threads::record_own_stack(slot);
    w.slot.store(slot as *const Slot as *mut Slot, SeqCst);
    let _ = ready.send(());
    drop(ready);
    let mut seen = JOB.job_epoch.load(SeqCst);
    loop {
        while JOB.job_epoch.load(SeqCst) == seen {
            dmtcp_sys::futex_wait(&JOB.job_epoch, seen, 0);
        }
        seen = JOB.job_epoch.load(SeqCst);
        threads::capture(slot);
        // SAFETY: the slot's ctx is static memory saved in every image.
        let r = unsafe {
            arch::save_and_call(
                slot.ctx.get(),
                writer_phase,
                w as *const Writer as *mut c_void,
            )
        };
        if r != 0 {
            threads::reapply(slot);
        }
    }
}

extern "C" fn writer_phase(arg: *mut c_void) -> u64 {
    // SAFETY: arg is the &'static Writer passed by writer_main.
    let w = unsafe { &*(arg as *const Writer) };
    let go = JOB.go_epoch.load(SeqCst);
    JOB.ready.fetch_add(1, SeqCst);
    dmtcp_sys::futex_wake(&JOB.ready, 1);
    while JOB.go_epoch.load(SeqCst) == go {
        dmtcp_sys::futex_wait(&JOB.go_epoch, go, 0);
    }
    run_job(w);
    0
}

/// One writer's share of the job: items until none is left (or one
/// failed), then counted done. Raw system calls only and no allocation:
/// it also runs on the bare threads of a forked writer, which share one
/// thread pointer (and errno).
fn run_job(w: &Writer) {
    // SAFETY: during a job only this thread touches its state.
    let st = unsafe { &mut *w.st.get() };
    // SAFETY: (re)build the static context in its scratch workspace: after a
    // restart that workspace comes back as zeroes.
    st.hot().cctx = unsafe { zstd_sys::ZSTD_initStaticCCtx(st.cmem as *mut c_void, st.csize) };
    let items = JOB.items.load(SeqCst);
    let n = JOB.n.load(SeqCst);
    let shared_n = JOB.shared_n.load(SeqCst);
    // One of the node's write streams, unless the items are all taken.
    let held = if JOB.next.load(SeqCst) < n {
        Some(super::streams::take())
    } else {
        None
    };
    loop {
        let i = JOB.next.fetch_add(1, SeqCst);
        if i >= n || JOB.error.load(Relaxed) != 0 {
            break;
        }
        // SAFETY: items points at n Items owned by the plan, alive for the job.
        let it = unsafe { *items.add(i) };
        if i < shared_n {
            test_delay();
        }
        let before = JOB.off.load(Relaxed);
        if let Err(e) = process(st, &it) {
            JOB.error.store(e.max(1), SeqCst);
        }
        let wrote = JOB.off.load(Relaxed) != before;
        if i < shared_n && JOB.shared_left.fetch_sub(1, SeqCst) == 1 {
            shared_written();
        }
        if wrote && i >= shared_n {
            test_delay();
        }
    }
    if let Some(h) = held {
        super::streams::give(h);
    }
    JOB.done.fetch_add(1, SeqCst);
    dmtcp_sys::futex_wake(&JOB.done, 1);
}

/// The testing pause of [`TEST_DELAY_MS`] (forked writers only).
fn test_delay() {
    let ms = TEST_DELAY_MS.load(Relaxed);
    if ms == 0 || !in_forked_child() {
        return;
    }
    dmtcp_sys::sleep_ms(ms as u64);
}

/// A forked writer has written the shared memory (or given up): its
/// parent may let the program change it again.
fn shared_written() {
    let fd = JOB.shared_fd.swap(-1, SeqCst);
    if fd >= 0 {
        // SAFETY: one byte to our pipe, then our end is closed.
        unsafe {
            dmtcp_sys::syscall3(dmtcp_sys::nr::WRITE, fd as usize, b"w".as_ptr() as usize, 1);
            dmtcp_sys::syscall3(dmtcp_sys::nr::CLOSE, fd as usize, 0, 0);
        }
    }
}

fn is_zero(addr: u64) -> bool {
    // SAFETY: the page is mapped and readable (checked by the caller's pagemap
    // view and protection handling); read as 512 u64 words.
    let words = unsafe { core::slice::from_raw_parts(addr as *const u64, PAGE / 8) };
    words
        .chunks(64)
        .all(|c| c.iter().fold(0u64, |a, &b| a | b) == 0)
}

/// How far ahead of the zero test [`process_with`] asks for pages: the
/// hardware prefetchers do not cross pages, so without this each page's
/// first read waits for memory (a third of the hash's time on 1 GiB).
const PREFETCH_PAGES: usize = 6;

/// Ask the CPU to start loading the start of the page at `addr` (a hint:
/// it never faults, whatever is or is not mapped there).
fn prefetch(addr: u64) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 (SSE, in baseline x86-64) reads nothing
    // architecturally and cannot fault.
    unsafe {
        use core::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(addr as *const i8);
        _mm_prefetch::<_MM_HINT_T0>((addr + 64) as *const i8);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = addr;
}

/// A page of private or shared anonymous memory known not to be all
/// zeroes: is it in memory or swap (by its page-map entry `e`)?
fn want_unread(e: u64) -> bool {
    e >> 63 & 1 != 0 || e >> 62 & 1 != 0
}

fn want(select: Select, e: u64, addr: u64) -> bool {
    let present = e >> 63 & 1 != 0;
    let swapped = e >> 62 & 1 != 0;
    let file = e >> 61 & 1 != 0;
    match select {
        Select::Anon | Select::SharedAnon => want_unread(e) && !is_zero(addr),
        Select::Cow => (present && !file) || swapped,
        Select::Shared => true,
    }
}

/// The job's table of the previous image's chunks (empty: none).
fn job_prev() -> &'static [incr::PrevChunk] {
    let p = JOB.prev.load(Relaxed);
    if p.is_null() {
        return &[];
    }
    // SAFETY: the checkpoint thread keeps the table alive and unchanged
    // for the job (see write_image).
    unsafe { core::slice::from_raw_parts(p, JOB.prev_n.load(Relaxed)) }
}

/// The job's pages proven unchanged since the previous image (empty:
/// none).
fn job_clean() -> &'static [(u64, u64)] {
    let p = JOB.clean.load(Relaxed);
    if p.is_null() {
        return &[];
    }
    // SAFETY: as for the previous image's table.
    unsafe { core::slice::from_raw_parts(p, JOB.clean_n.load(Relaxed)) }
}

/// Pages of an item, asked in (mostly) rising order: is the page one the
/// dirty tracking proved unchanged since the previous image, and if so,
/// was it in that image? A page in it was present and not all zeroes
/// then, and is so now; a page that was not in it was all zeroes or
/// absent then (a page faulted in since counts as written), and is either
/// now. So its zero test, a read of up to 512 bytes of it (most of the
/// time of an incremental image of which most is unchanged), is not needed.
struct CleanPages<'a> {
    clean: &'a [(u64, u64)],
    prev: &'a [incr::PrevChunk],
    ci: usize,
    pi: usize,
    last: u64,
}

impl<'a> CleanPages<'a> {
    fn new(clean: &'a [(u64, u64)], prev: &'a [incr::PrevChunk]) -> Self {
        CleanPages {
            clean: if prev.is_empty() { &[] } else { clean },
            prev,
            ci: 0,
            pi: 0,
            // (Above any page: the first question finds its place anew.)
            last: u64::MAX,
        }
    }

    /// None: not proven unchanged (test it); Some(it was in the previous
    /// image).
    fn at(&mut self, a: u64) -> Option<bool> {
        if self.clean.is_empty() {
            return None;
        }
        if a < self.last {
            self.ci = self.clean.partition_point(|r| r.1 <= a);
            self.pi = self.prev.partition_point(|c| c.addr + c.len <= a);
        }
        self.last = a;
        while self.clean.get(self.ci).is_some_and(|r| r.1 <= a) {
            self.ci += 1;
        }
        let r = self.clean.get(self.ci)?;
        if a < r.0 {
            return None;
        }
        while self.prev.get(self.pi).is_some_and(|c| c.addr + c.len <= a) {
            self.pi += 1;
        }
        Some(self.prev.get(self.pi).is_some_and(|c| c.addr <= a))
    }
}

fn process(st: &mut WState, it: &Item) -> Result<(), i32> {
    let pages = (it.len as usize) / PAGE;
    // The Vec itself is never modified during a job (an image taken now
    // must hold it intact): work on a slice view of its buffer.
    // SAFETY: the scratch buffer holds ITEM_PAGES entries; items are at most that long.
    let pm = unsafe {
        core::slice::from_raw_parts_mut(st.pm, pages.min(super::memory::ITEM_PAGES as usize))
    };
    process_with(st, it, pm)
}

fn process_with(st: &mut WState, it: &Item, pm: &mut [u64]) -> Result<(), i32> {
    let pages = pm.len();
    let pm_fd = JOB.pm_fd.load(Relaxed);
    let mut got = 0usize;
    while got < pages * 8 {
        // SAFETY: reading into our own u64 buffer (raw: no errno).
        let r = unsafe {
            dmtcp_sys::syscall6(
                dmtcp_sys::nr::PREAD64,
                pm_fd as usize,
                (pm.as_mut_ptr() as *mut u8).add(got) as usize,
                pages * 8 - got,
                ((it.start / PAGE as u64) * 8 + got as u64) as usize,
                0,
                0,
            )
        };
        if r <= 0 {
            // No page map: treat every page as present (correct, just larger).
            pm[got / 8..].iter_mut().for_each(|e| *e = 1 << 63);
            break;
        }
        got += r as usize;
    }
    if it.select == Select::SharedAnon {
        // The shared object may hold pages this process never mapped:
        // count the ones in memory (mincore looks at the object's page
        // cache), and read them through our mapping.
        // SAFETY: the scratch buffer holds ITEM_PAGES bytes; items are at most that long.
        let mc = unsafe { core::slice::from_raw_parts_mut(st.mc, pages) };
        // SAFETY: mincore on a mapped range of ours, one byte per page into our buffer.
        if unsafe {
            dmtcp_sys::syscall3(
                dmtcp_sys::nr::MINCORE,
                it.start as usize,
                pages * PAGE,
                mc.as_mut_ptr() as usize,
            )
        } == 0
        {
            for (e, m) in pm.iter_mut().zip(mc.iter()) {
                if m & 1 != 0 {
                    *e |= 1 << 63;
                }
            }
        }
    }
    let addr = |i: usize| it.start + (i * PAGE) as u64;
    let tests_zero = matches!(it.select, Select::Anon | Select::SharedAnon);
    let mut known = CleanPages::new(if it.volatile { &[] } else { job_clean() }, job_prev());
    // Page j is wanted in the image (pages are tested in order).
    let mut wanted = |j: usize| {
        if tests_zero {
            if let Some(was_in) = known.at(addr(j)) {
                return was_in && want_unread(pm[j]);
            }
            if j + PREFETCH_PAGES < pages {
                prefetch(addr(j + PREFETCH_PAGES));
            }
        }
        want(it.select, pm[j], addr(j))
    };
    let mut runs = 0;
    let mut i = 0;
    while i < pages {
        if !wanted(i) {
            i += 1;
            continue;
        }
        let s = i;
        if runs == MAX_RUNS_PER_ITEM - 1 {
            let mut last = i;
            for j in i..pages {
                if wanted(j) {
                    last = j;
                }
            }
            i = last + 1;
        } else {
            while i < pages && wanted(i) {
                i += 1;
            }
        }
        write_run(st, addr(s), (i - s) * PAGE, it.volatile)?;
        runs += 1;
    }
    Ok(())
}

fn pwrite_all(fd: i32, mut p: *const u8, mut len: usize, mut off: u64) -> Result<(), i32> {
    while len > 0 {
        // SAFETY: p..p+len is readable memory (process memory or our buffer);
        // raw, so that no errno is touched.
        let r = unsafe {
            dmtcp_sys::syscall6(
                dmtcp_sys::nr::PWRITE64,
                fd as usize,
                p as usize,
                len,
                off as usize,
                0,
                0,
            )
        };
        if r < 0 {
            let e = -r as i32;
            if e == libc::EINTR {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            return Err(libc::EIO);
        }
        // SAFETY: advancing within the range.
        p = unsafe { p.add(r as usize) };
        len -= r as usize;
        off += r as u64;
    }
    Ok(())
}

/// Write with O_DIRECT if possible, falling back to the buffered fd.
fn put(p: *const u8, len: usize, off: u64) -> Result<(), i32> {
    let d = JOB.fd_direct.load(Relaxed);
    if d >= 0 {
        match pwrite_all(d, p, len, off) {
            Ok(()) => return Ok(()),
            Err(libc::EINVAL) => JOB.fd_direct.store(-1, SeqCst),
            Err(e) => return Err(e),
        }
    }
    pwrite_all(JOB.fd_buf.load(Relaxed), p, len, off)
}

/// Where an O_DIRECT write of the `len` bytes at `p` (program memory, or
/// the bounce buffer already) takes them from. In a forked writer the
/// program's memory is shared copy-on-write with the program, and the
/// kernel pins the pages of an O_DIRECT write: it copies each shared
/// anonymous page it pins (so that the pinned page is the child's alone),
/// a fault, a new page and a copy per 4 KiB page. 4 GiB that the program
/// did not touch during the write took 15.2 s that way against 1.7 s
/// suspended, and the child ended up with its own copy of all of it. One
/// copy into the writer's own bounce buffer costs a memcpy instead.
fn direct_source(st: &mut WState, p: *const u8, len: usize) -> *const u8 {
    if !bounced(st, p) {
        return p;
    }
    // SAFETY: len <= ITEM_PAGES pages = the bounce buffer's size (a run or
    // part of one); the buffer is this writer's own scratch mapping.
    unsafe { core::ptr::copy_nonoverlapping(p, st.vbuf, len) };
    st.vbuf
}

/// The size of a writer's bounce buffer (`WState::vbuf`).
const VBUF_BYTES: usize = super::memory::ITEM_PAGES as usize * PAGE;

fn write_run(st: &mut WState, addr: u64, len: usize, volatile: bool) -> Result<(), i32> {
    let mut src = addr as *const u8;
    if volatile {
        // Memory one of our own threads is using right now: checksum and
        // write one stable copy of it.
        // SAFETY: len <= ITEM_PAGES pages = the bounce buffer's size.
        unsafe { core::ptr::copy_nonoverlapping(src, st.vbuf, len) };
        src = st.vbuf;
    }
    if JOB.incremental.load(Relaxed) {
        return write_blocks(st, addr, src, len, volatile);
    }
    write_chunk(st, addr, src, len, 0)
}

/// Incremental images: the run `[addr, addr+len)` (its bytes at `src`)
/// cut on the [`incr::BLOCK`] grid; each block is hashed, and one the
/// previous image holds with the same hash becomes a reference to it.
/// Consecutive changed blocks are written with one `pwrite` when stored
/// raw (one descriptor each). A block the dirty tracking proves unchanged
/// since the previous image (which has a chunk of the same address and
/// length) is taken from it without being read.
///
/// Each block is read from memory once: its hash, its compression and its
/// CRC-32 are taken one after the other while it is in cache. A forked
/// writer that writes with O_DIRECT copies each block it reads into its
/// bounce buffer first (at the block's place in the run, see
/// [`direct_source`]) and works on that copy, from which the raw blocks
/// are then written.
fn write_blocks(
    st: &mut WState,
    addr: u64,
    src: *const u8,
    len: usize,
    volatile: bool,
) -> Result<(), i32> {
    let prev = job_prev();
    let clean = if volatile { &[][..] } else { job_clean() };
    // Where the blocks are read (and the raw ones written) from: the
    // bounce buffer when this is a forked writer's O_DIRECT write (a
    // volatile run is there already).
    let base = if bounced(st, src) {
        st.vbuf as *const u8
    } else {
        src
    };
    let (mut skipped, mut hashed) = (0u64, 0u64);
    let end = addr + len as u64;
    let bytes = |a: u64, n: u64| {
        // SAFETY: [a, a+n) lies in the run, whose bytes are readable at
        // base (copied there by `take` first when base is the buffer).
        unsafe { core::slice::from_raw_parts(base.add((a - addr) as usize), n as usize) }
    };
    let take = |a: u64, n: u64| {
        if base != src {
            // SAFETY: [a, a+n) lies in the run (at most VBUF_BYTES long):
            // from the program's memory to the same place in the buffer.
            unsafe {
                core::ptr::copy_nonoverlapping(
                    src.add((a - addr) as usize),
                    base.add((a - addr) as usize) as *mut u8,
                    n as usize,
                )
            };
        }
    };
    // Changed blocks not yet written: [pend, a), np of them.
    let mut pend = addr;
    let mut np = 0;
    let mut a = addr;
    while a < end {
        let b = ((a / incr::BLOCK) + 1) * incr::BLOCK;
        let b = b.min(end);
        let unchanged = if super::dirty::Clean::covers(clean, a, b) {
            incr::Prev::at(prev, a, b - a)
        } else {
            None
        };
        let h = match unchanged {
            Some(p) => {
                skipped += 1;
                p.hash
            }
            None => {
                hashed += 1;
                take(a, b - a);
                super::xxh3::hash128(bytes(a, b - a))
            }
        };
        if let Some(p) = unchanged.or_else(|| incr::Prev::find(prev, a, b - a, h)) {
            flush_raw(st, addr, base, pend, a)?;
            np = 0;
            st.push_hashed(
                ChunkDesc {
                    addr: a,
                    len: p.len,
                    file_off: p.file_off,
                    stored_len: p.stored_len,
                    crc: p.crc,
                    flags: p.flags,
                },
                h,
            )?;
            pend = b;
        } else if let Some(n) = compressed(st, bytes(a, b - a).as_ptr(), (b - a) as usize) {
            // (A block that does not compress joins the raw ones below:
            // written with them in one `pwrite`, not on its own.)
            flush_raw(st, addr, base, pend, a)?;
            np = 0;
            put_compressed(st, a, (b - a) as usize, n, h)?;
            pend = b;
        } else {
            st.pend(np, h, crc32fast::hash(bytes(a, b - a)));
            np += 1;
        }
        a = b;
    }
    JOB.skipped.fetch_add(skipped, Relaxed);
    JOB.hashed.fetch_add(hashed, Relaxed);
    flush_raw(st, addr, base, pend, end)
}

/// Whether the run at `src` is written through the bounce buffer: by a
/// forked writer, with O_DIRECT (see [`direct_source`]), unless it is
/// there already.
fn bounced(st: &WState, src: *const u8) -> bool {
    in_forked_child() && !in_vbuf(st, src) && JOB.fd_direct.load(Relaxed) >= 0
}

fn in_vbuf(st: &WState, p: *const u8) -> bool {
    let v = st.vbuf as usize;
    (p as usize) >= v && (p as usize) < v + VBUF_BYTES
}

/// Write the changed blocks `[from, to)` of the run at `addr` (bytes at
/// `src`: the bounce buffer's copy when the write must not be made from
/// the program's memory, see [`write_blocks`]) raw with one `pwrite`, one
/// descriptor per block (their hashes and CRC-32s were kept by `pend`).
fn flush_raw(st: &mut WState, addr: u64, src: *const u8, from: u64, to: u64) -> Result<(), i32> {
    if from >= to {
        return Ok(());
    }
    // SAFETY: [from, to) lies in the run.
    let p = unsafe { src.add((from - addr) as usize) };
    let off = JOB.off.fetch_add(to - from, SeqCst);
    put(p, (to - from) as usize, off)?;
    let mut a = from;
    let mut i = 0;
    while a < to {
        let b = (((a / incr::BLOCK) + 1) * incr::BLOCK).min(to);
        st.push_hashed(
            ChunkDesc {
                addr: a,
                len: b - a,
                file_off: off + (a - from),
                stored_len: b - a,
                crc: st.hot().pending_crc[i],
                flags: 0,
            },
            st.hot().pending[i],
        )?;
        a = b;
        i += 1;
    }
    Ok(())
}

/// Compress the `len` bytes at `src` into the writer's buffer: their
/// compressed length, if compression is on and saves an eighth or more.
fn compressed(st: &mut WState, src: *const u8, len: usize) -> Option<usize> {
    if !JOB.compress.load(Relaxed) {
        return None;
    }
    // SAFETY: the static context and our buffer are owned by this writer;
    // src..src+len is readable process memory.
    let n = unsafe {
        zstd_sys::ZSTD_compressCCtx(
            st.hot().cctx,
            st.zbuf as *mut c_void,
            st.zcap,
            src as *const c_void,
            len,
            ZSTD_LEVEL,
        )
    };
    // SAFETY: pure function on a return code.
    let failed = unsafe { zstd_sys::ZSTD_isError(n) } != 0;
    (!failed && n < len - len / 8).then_some(n)
}

/// Write the `n` bytes [`compressed`] left in the writer's buffer as the
/// chunk of the `len` bytes of memory at `addr`; `hash` is their content
/// hash.
fn put_compressed(st: &mut WState, addr: u64, len: usize, n: usize, hash: u128) -> Result<(), i32> {
    let padded = n.div_ceil(PAGE) * PAGE;
    // SAFETY: zero the padding inside our buffer (padded <= zcap).
    unsafe { core::ptr::write_bytes(st.zbuf.add(n), 0, padded - n) };
    // SAFETY: n bytes of our buffer were just written by zstd.
    let crc = crc32fast::hash(unsafe { core::slice::from_raw_parts(st.zbuf, n) });
    let off = JOB.off.fetch_add(padded as u64, SeqCst);
    put(st.zbuf, padded, off)?;
    st.push_hashed(
        ChunkDesc {
            addr,
            len: len as u64,
            file_off: off,
            stored_len: n as u64,
            crc,
            flags: CHUNK_ZSTD,
        },
        hash,
    )
}

/// Store `len` bytes of memory at `addr` (read at `src`) as one chunk,
/// compressed if that is on and pays; `hash` is its content hash.
fn write_chunk(
    st: &mut WState,
    addr: u64,
    src: *const u8,
    len: usize,
    hash: u128,
) -> Result<(), i32> {
    if let Some(n) = compressed(st, src, len) {
        return put_compressed(st, addr, len, n, hash);
    }
    // The CRC-32 is taken from the bounce buffer's copy when there is one
    // (just written, in cache).
    let from = direct_source(st, src, len);
    // SAFETY: from..from+len is readable (process memory or our buffer).
    let crc = crc32fast::hash(unsafe { core::slice::from_raw_parts(from, len) });
    let off = JOB.off.fetch_add(len as u64, SeqCst);
    put(from, len, off)?;
    st.push_hashed(
        ChunkDesc {
            addr,
            len: len as u64,
            file_off: off,
            stored_len: len as u64,
            crc,
            flags: 0,
        },
        hash,
    )?;
    Ok(())
}

extern "C" fn ckpt_phase(_: *mut c_void) -> u64 {
    if FORK_LINK.load(SeqCst) >= 0 && fork_writer() {
        return 0;
    }
    JOB.go_epoch.fetch_add(1, SeqCst);
    dmtcp_sys::futex_wake(&JOB.go_epoch, i32::MAX as u32);
    wait_done(WRITERS.get().map_or(0, |w| w.len()) as u32);
    0
}

/// Wait until `n` writers are done with the job, telling the coordinator
/// every second how far the image is.
fn wait_done(n: u32) {
    let mut beat = std::time::Instant::now();
    loop {
        let d = JOB.done.load(SeqCst);
        if d >= n {
            break;
        }
        dmtcp_sys::futex_wait(&JOB.done, d, 250_000_000);
        if beat.elapsed() >= std::time::Duration::from_secs(1) {
            beat = std::time::Instant::now();
            heartbeat(JOB.off.load(SeqCst));
        }
    }
}

/// Forked writing (see [`write_image`]): the coordinator connection of
/// the forked writer (at [`WRITER_FD`]), or -1 to write in this process.
static FORK_LINK: AtomicI32 = AtomicI32::new(-1);
/// In the parent, once its writer is forked: the writer's pid.
static FORKED: AtomicI32 = AtomicI32::new(0);
/// Why the writer could not be forked (an errno; the image is then
/// written in this process).
static FORK_ERR: AtomicI32 = AtomicI32::new(0);
/// Set in a forked writer (and cleared again in a process restarted from
/// its image, where it was set when the memory was written).
static IN_CHILD: AtomicBool = AtomicBool::new(false);
/// Stack of each of a forked writer's threads.
const HELPER_STACK: usize = 256 << 10;

/// Is this the forked child writing an image (not the program)?
pub fn in_forked_child() -> bool {
    IN_CHILD.load(SeqCst)
}

/// Fork the writer (checkpoint thread, every thread of the process
/// suspended or waiting for the job, contexts saved): the child writes the
/// memory as it was at the fork and returns to finish the image; the
/// parent waits only until the child has written the shared memory (if
/// any), lets its own writers go idle and returns. False if no child could
/// be forked: the image is then written here.
fn fork_writer() -> bool {
    let mut p = [-1i32; 2];
    // SAFETY: a fresh pipe of ours.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        FORK_ERR.store(
            std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO),
            SeqCst,
        );
        return false;
    }
    test_poke(job_clean());
    let pid = arch::raw_fork();
    super::dirty::handoff_after_fork(pid == 0);
    if pid == 0 {
        child_write(p[1]);
        return true;
    }
    // SAFETY: our end of the pipe we made.
    unsafe { libc::close(p[1]) };
    if pid < 0 {
        // SAFETY: as above.
        unsafe { libc::close(p[0]) };
        FORK_ERR.store(-pid as i32, SeqCst);
        return false;
    }
    if JOB.shared_n.load(SeqCst) > 0 {
        // The child's byte (shared memory written), or the end of the file
        // (it is gone).
        super::fdguard::read_byte(p[0]);
    }
    // SAFETY: our end of the pipe.
    unsafe { libc::close(p[0]) };
    FORKED.store(pid as i32, SeqCst);
    // This process's writers write nothing: released with no items.
    JOB.n.store(0, SeqCst);
    JOB.go_epoch.fetch_add(1, SeqCst);
    dmtcp_sys::futex_wake(&JOB.go_epoch, i32::MAX as u32);
    wait_done(WRITERS.get().map_or(0, |w| w.len()) as u32);
    true
}

/// Close every fd but those in `keep` (sorted).
fn close_all_but(keep: &[i32]) {
    let mut from = 0u32;
    for &k in keep {
        if k < 0 || (k as u32) < from {
            continue;
        }
        if k as u32 > from {
            // SAFETY: closing fds of this (forked) process.
            unsafe {
                dmtcp_sys::syscall3(dmtcp_sys::nr::CLOSE_RANGE, from as usize, k as usize - 1, 0)
            };
        }
        from = k as u32 + 1;
    }
    // SAFETY: as above.
    unsafe {
        dmtcp_sys::syscall3(
            dmtcp_sys::nr::CLOSE_RANGE,
            from as usize,
            u32::MAX as usize,
            0,
        )
    };
}

extern "C" fn helper_main(arg: *mut c_void) -> u64 {
    // SAFETY: arg is a &'static Writer (see child_write).
    run_job(unsafe { &*(arg as *const Writer) });
    0
}

/// In the forked writer, whose only thread is a copy of the checkpoint
/// thread: keep only the fds the image needs (the program's files,
/// sockets and pipes must not stay open in it), read its own page map,
/// and write the memory with one bare thread per writer. Nothing here
/// allocates or changes memory of the image (the stacks are new mappings).
fn child_write(shared_w: i32) {
    IN_CHILD.store(true, SeqCst);
    let link = FORK_LINK.load(SeqCst);
    let mut keep = [
        2,
        JOB.fd_buf.load(SeqCst),
        JOB.fd_direct.load(SeqCst),
        link,
        shared_w,
        // The node-wide memory reservation: held while this child lives.
        super::forkmem::RESERVE_FD.load(SeqCst),
        // Where the parent says what was written up to the fork.
        super::dirty::handoff_child_fd(),
    ];
    keep.sort_unstable();
    close_all_but(&keep);
    // SAFETY: open of a literal path.
    let pm = unsafe {
        libc::open(
            c"/proc/self/pagemap".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    JOB.pm_fd.store(pm, SeqCst);
    JOB.report_fd.store(link, SeqCst);
    JOB.shared_fd.store(shared_w, SeqCst);
    JOB.shared_left.store(JOB.shared_n.load(SeqCst), SeqCst);
    if JOB.shared_n.load(SeqCst) == 0 {
        shared_written();
    }
    let writers = WRITERS.get().map(Vec::as_slice).unwrap_or(&[]);
    let flags = (dmtcp_sys::nr::CLONE_VM
        | dmtcp_sys::nr::CLONE_FS
        | dmtcp_sys::nr::CLONE_FILES
        | dmtcp_sys::nr::CLONE_SIGHAND
        | dmtcp_sys::nr::CLONE_THREAD
        | dmtcp_sys::nr::CLONE_SYSVSEM) as u64;
    let mut started = 0u32;
    for w in writers {
        // SAFETY: a fresh private mapping for the thread's stack (not in
        // the plan taken before the fork).
        let stack = unsafe {
            super::unmap::sys_mmap(
                core::ptr::null_mut(),
                HELPER_STACK,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if stack == libc::MAP_FAILED {
            break;
        }
        // SAFETY: the stack stays mapped for the life of this process; the
        // thread runs run_job (raw system calls, no thread-local state).
        let tid = unsafe {
            arch::clone_call(
                flags,
                (stack as *mut u8).add(HELPER_STACK),
                helper_main,
                *w as *const Writer as *mut c_void,
            )
        };
        if tid < 0 {
            break;
        }
        started += 1;
    }
    if started == 0 {
        if let Some(w) = writers.first() {
            run_job(w);
            started = 1;
        }
    }
    wait_done(started);
    shared_written();
}

/// Tell the coordinator this process is still writing (`bytes` so far):
/// one `Writing` line written straight to the connection, formatted on
/// the stack (nothing may allocate while the image is written; only this
/// thread uses the connection now, and every message goes out as one
/// whole line).
fn heartbeat(bytes: u64) {
    let mut line = [0u8; 64];
    let head = br#"{"t":"Writing","bytes":"#;
    line[..head.len()].copy_from_slice(head);
    let mut at = head.len();
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut v = bytes;
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    line[at..at + digits.len() - i].copy_from_slice(&digits[i..]);
    at += digits.len() - i;
    line[at..at + 2].copy_from_slice(b"}\n");
    at += 2;
    let _ = dmtcp_sys::write_all(JOB.report_fd.load(SeqCst), &line[..at]);
}

/// Make every writer's descriptor buffer big enough for `n_items` work
/// items. Returns true if a buffer had to be (re)mapped, in which case the
/// memory plan must be taken again so the new mapping is part of it.
pub fn prepare(n_items: usize) -> bool {
    // Incremental images cut each run on the grid: at most PENDING blocks
    // per item plus one more per run.
    let need = n_items * (2 * MAX_RUNS_PER_ITEM + PENDING) + 16;
    let mut remapped = false;
    for w in WRITERS.get().expect("writers started") {
        // SAFETY: no job runs: the writers are idle, waiting for the epoch.
        let st = unsafe { &mut *w.st.get() };
        if st.descs_cap < need {
            if !st.descs.is_null() {
                let old = (st.descs_cap * core::mem::size_of::<ChunkDesc>()).div_ceil(PAGE) * PAGE;
                super::memory::unexclude(st.descs as u64);
                super::memory::unexclude(st.hashes as u64);
                let old_h = (st.descs_cap * 16).div_ceil(PAGE) * PAGE;
                // SAFETY: unmapping our own previous scratch buffers.
                unsafe {
                    super::unmap::sys_munmap(st.descs as *mut c_void, old);
                    super::unmap::sys_munmap(st.hashes as *mut c_void, old_h);
                }
            }
            // Leave head room so that small changes do not remap every time.
            let cap = need + need / 2;
            st.descs = scratch(cap * core::mem::size_of::<ChunkDesc>()) as *mut ChunkDesc;
            st.hashes = scratch(cap * 16) as *mut u128;
            st.descs_cap = cap;
            remapped = true;
        }
        st.hot().descs_len = 0;
    }
    remapped
}

/// What became of a checkpoint.
pub enum Outcome {
    /// Complete and durable at `path`, in the directory of the generation
    /// being written; the round's outcome decides whether that generation
    /// is committed or the image goes ([`discard`]).
    Written {
        path: PathBuf,
        bytes: u64,
        /// CRC-32 of the whole file.
        crc32: u32,
        /// The header's own CRC.
        header_crc: u32,
    },
    Failed(String),
    /// We are running in a restarted process.
    Restarted,
    /// (Forked writing, in the parent.) The child `pid` writes the image
    /// and reports it to the coordinator itself.
    Forked {
        pid: i32,
    },
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap_or_default()
}

fn os_err(what: &str, p: &Path) -> String {
    format!(
        "{what} {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    )
}

/// Make `dir` (a generation's directory being written) if it is not
/// there, and check that it is ours: a directory (not a symbolic link)
/// owned by this user, so nobody else can have planted names in it.
fn own_dir(dir: &Path) -> Result<(), String> {
    let c = cpath(dir);
    // SAFETY: mkdir of a NUL-terminated path.
    if unsafe { libc::mkdir(c.as_ptr(), 0o700) } == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EEXIST) {
        return Err(format!("cannot create {}: {e}", dir.display()));
    }
    // SAFETY: lstat into a zeroed struct of ours.
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    // SAFETY: as above; the path is NUL-terminated.
    let r = unsafe { libc::lstat(c.as_ptr(), &mut st) };
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if r != 0 || st.st_mode & libc::S_IFMT != libc::S_IFDIR || st.st_uid != me {
        return Err(format!(
            "{} exists and is not a directory of this user",
            dir.display()
        ));
    }
    Ok(())
}

/// CRC-32 of the whole image file, from the CRCs of its parts (nothing
/// is read back): the header block, each chunk's stored bytes in file
/// order with the zero padding between them, then the index.
fn file_crc(header: &[u8], chunks: &[ChunkDesc], index: &[u8], index_offset: u64) -> u32 {
    static ZEROS: [u8; PAGE] = [0; PAGE];
    let zeros = |h: &mut crc32fast::Hasher, mut n: u64| {
        while n > 0 {
            let k = n.min(PAGE as u64);
            h.update(&ZEROS[..k as usize]);
            n -= k;
        }
    };
    let mut h = crc32fast::Hasher::new();
    h.update(header);
    let mut pos = header.len() as u64;
    // (Chunks kept in earlier images are not in this file.)
    let mut by_off: Vec<&ChunkDesc> = chunks.iter().filter(|c| c.source() == 0).collect();
    by_off.sort_by_key(|c| c.file_off);
    for c in by_off {
        zeros(&mut h, c.file_off.saturating_sub(pos));
        h.combine(&crc32fast::Hasher::new_with_initial_len(
            c.crc,
            c.stored_len,
        ));
        pos = c.file_off + c.stored_len;
    }
    zeros(&mut h, index_offset.saturating_sub(pos));
    h.update(index);
    h.finalize()
}

/// How an image is written.
#[derive(Clone, Copy)]
pub struct WriteOpts<'a> {
    /// zstd chunks where that pays.
    pub compress: bool,
    /// Chunks on the incremental grid with their content hashes.
    pub incremental: bool,
    /// The previous image's chunks (an incremental image), or None (full).
    pub prev: Option<&'a incr::Prev>,
    /// Pages unchanged since the previous image (dirty tracking), or None.
    pub clean: Option<&'a super::dirty::Clean>,
}

/// The protected fd of a forked writer's coordinator connection.
pub const WRITER_FD: i32 = super::fds::PROTECTED_FD_BASE + 4;

/// Is this item's memory shared with other processes (the program can
/// change it after it resumes, whatever a fork copied)?
pub fn is_shared(it: &Item) -> bool {
    matches!(it.select, Select::SharedAnon | Select::Shared)
}

/// Write the image of this process as `name` in `dir`, the directory of
/// the generation being written (made here if needed). `ckpt_slot` is
/// the checkpoint thread's slot.
///
/// `fork_link` (the connection at [`WRITER_FD`]): fork a child that
/// writes the image from its copy-on-write copy of the memory, once every
/// thread's context is saved, and return [`Outcome::Forked`] in this
/// process; the child goes on here and returns the image's outcome (see
/// [`in_forked_child`]). The plan's items of shared memory must come
/// first: the child writes them before this process goes on. If no child
/// can be forked the image is written here, as without `fork_link`.
pub fn write_image(
    dir: &Path,
    name: &str,
    plan: &Plan,
    meta: &mut Meta,
    opts: WriteOpts<'_>,
    ckpt_slot: &Slot,
    fork_link: Option<i32>,
) -> Outcome {
    let compress = opts.compress;
    if let Err(e) = own_dir(dir) {
        return Outcome::Failed(e);
    }
    // Created new (O_EXCL) and never through a symbolic link, in a
    // directory of ours. A file already there is left from a round that
    // died (this process's name is unique to it): it goes.
    let tmp = dir.join(name);
    let ctmp = cpath(&tmp);
    let create = || {
        // SAFETY: plain open(2) on a NUL-terminated path.
        unsafe {
            libc::open(
                ctmp.as_ptr(),
                libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o600,
            )
        }
    };
    let mut fd_buf = create();
    if fd_buf < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EEXIST) {
        // SAFETY: unlink of a NUL-terminated path in our own directory.
        unsafe { libc::unlink(ctmp.as_ptr()) };
        fd_buf = create();
    }
    if fd_buf < 0 {
        return Outcome::Failed(os_err("cannot create", &tmp));
    }
    // The same file again for O_DIRECT writes, through our own fd (not by
    // name, which someone could have replaced meanwhile).
    let cself = cpath(Path::new(&format!("/proc/self/fd/{fd_buf}")));
    // SAFETY: as above.
    let fd_direct = unsafe {
        libc::open(
            cself.as_ptr(),
            libc::O_WRONLY | libc::O_DIRECT | libc::O_CLOEXEC,
        )
    };
    // SAFETY: as above.
    let pm_fd = unsafe {
        libc::open(
            c"/proc/self/pagemap".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    let writers = WRITERS.get().expect("writers started");
    for w in writers {
        // SAFETY: no job runs; `prepare` sized the buffers for this plan.
        let st = unsafe { &mut *w.st.get() };
        st.hot().descs_len = 0;
    }
    super::memory::open_up(plan);
    JOB.items.store(plan.items.as_ptr() as *mut Item, SeqCst);
    JOB.n.store(plan.items.len(), SeqCst);
    JOB.next.store(0, SeqCst);
    JOB.fd_direct.store(fd_direct, SeqCst);
    JOB.fd_buf.store(fd_buf, SeqCst);
    JOB.pm_fd.store(pm_fd, SeqCst);
    JOB.off.store(image::BLOCK, SeqCst);
    JOB.compress.store(compress, SeqCst);
    JOB.incremental.store(opts.incremental, SeqCst);
    let prev = opts.prev.filter(|_| opts.incremental);
    // The table stays alive and unchanged until the writers are done
    // (it is the caller's, borrowed for this call).
    JOB.prev.store(
        prev.map_or(core::ptr::null_mut(), |p| p.chunks.as_ptr() as *mut _),
        SeqCst,
    );
    JOB.prev_n.store(prev.map_or(0, |p| p.chunks.len()), SeqCst);
    let clean = opts.clean.filter(|_| prev.is_some());
    // A forked writer trusts the tracking only with the parent's list of
    // what was written up to the fork (see dirty.rs).
    let clean = clean.filter(|_| fork_link.is_none() || super::dirty::handoff_open());
    JOB.clean.store(
        clean.map_or(core::ptr::null_mut(), |c| c.ranges.as_ptr() as *mut _),
        SeqCst,
    );
    JOB.clean_n
        .store(clean.map_or(0, |c| c.ranges.len()), SeqCst);
    JOB.skipped.store(0, SeqCst);
    JOB.hashed.store(0, SeqCst);
    JOB.error.store(0, SeqCst);
    JOB.ready.store(0, SeqCst);
    JOB.done.store(0, SeqCst);
    JOB.report_fd.store(super::coord::COORD_FD, SeqCst);
    JOB.shared_n.store(
        plan.items.iter().take_while(|it| is_shared(it)).count(),
        SeqCst,
    );
    JOB.shared_fd.store(-1, SeqCst);
    FORK_LINK.store(fork_link.unwrap_or(-1), SeqCst);
    FORKED.store(0, SeqCst);
    FORK_ERR.store(0, SeqCst);
    JOB.job_epoch.fetch_add(1, SeqCst);
    dmtcp_sys::futex_wake(&JOB.job_epoch, i32::MAX as u32);
    let n = writers.len() as u32;
    loop {
        let r = JOB.ready.load(SeqCst);
        if r >= n {
            break;
        }
        dmtcp_sys::futex_wait(&JOB.ready, r, 0);
    }
    threads::capture(ckpt_slot);
    // SAFETY: static ctx; from here until the writers finish nothing allocates.
    let r = unsafe { arch::save_and_call(ckpt_slot.ctx.get(), ckpt_phase, core::ptr::null_mut()) };
    if r != 0 {
        // (Set if a forked writer wrote this image.)
        IN_CHILD.store(false, SeqCst);
        FORK_LINK.store(-1, SeqCst);
        super::forkmem::forget();
        super::dirty::handoff_forget();
        threads::reapply(ckpt_slot);
        return Outcome::Restarted;
    }
    FORK_LINK.store(-1, SeqCst);
    // Pages of skipped blocks written while the image was written (not by
    // the program, which is suspended): asked before anything else here
    // changes memory, checked below. A forked writer has them from its
    // parent: those written up to the fork.
    if let Some(c) = clean {
        if !in_forked_child() && FORKED.load(SeqCst) == 0 {
            test_poke(&c.ranges);
        }
    }
    let written_meanwhile = clean.map(|c| {
        if in_forked_child() {
            super::dirty::handoff_recv(&c.ranges)
        } else {
            super::dirty::written_since(&c.ranges)
        }
    });
    super::memory::close_down(plan);
    // SAFETY: closing fds we opened (a forked writer closed the page map
    // it inherited, and its own is no longer needed either).
    unsafe {
        if pm_fd >= 0 {
            libc::close(pm_fd);
        }
        if in_forked_child() {
            libc::close(JOB.pm_fd.load(SeqCst));
        }
        if fd_direct >= 0 {
            libc::close(fd_direct);
        }
    }
    let child = FORKED.swap(0, SeqCst);
    if child > 0 {
        super::dirty::handoff_send(written_meanwhile.as_deref());
        // SAFETY: the child has its own copy of the image's fd.
        unsafe { libc::close(fd_buf) };
        return Outcome::Forked { pid: child };
    }
    if !in_forked_child() {
        // (No child was forked.)
        super::dirty::handoff_close();
    }
    let fork_err = FORK_ERR.swap(0, SeqCst);
    if fork_link.is_some() && !in_forked_child() {
        super::log::warn(format_args!(
            "cannot fork the image writer ({}): the image is written with the program suspended",
            std::io::Error::from_raw_os_error(fork_err)
        ));
    }
    let fail = |msg: String| {
        // SAFETY: closing our fd and removing our temporary file.
        unsafe {
            libc::close(fd_buf);
            libc::unlink(ctmp.as_ptr());
        }
        Outcome::Failed(msg)
    };
    let e = JOB.error.load(SeqCst);
    if e != 0 {
        return fail(format!(
            "writing {}: {}",
            tmp.display(),
            std::io::Error::from_raw_os_error(e)
        ));
    }
    JOB.prev.store(core::ptr::null_mut(), SeqCst);
    JOB.prev_n.store(0, SeqCst);
    JOB.clean.store(core::ptr::null_mut(), SeqCst);
    JOB.clean_n.store(0, SeqCst);
    let mut pairs: Vec<(ChunkDesc, u128)> = Vec::new();
    for w in writers {
        // SAFETY: the job is over; writers are idle.
        let st = unsafe { &*w.st.get() };
        pairs.extend(st.descs().iter().copied().zip(st.hashes().iter().copied()));
    }
    pairs.sort_by_key(|p| p.0.addr);
    let mut fixed = 0u64;
    if let (Some(c), Some(w)) = (clean, &written_meanwhile) {
        match recheck(&mut pairs, &c.ranges, w, fd_buf) {
            Ok(n) => fixed = n,
            Err(e) => {
                return fail(format!(
                    "writing {}: {}",
                    tmp.display(),
                    std::io::Error::from_raw_os_error(e)
                ))
            }
        }
    }
    // (A forked writer says it too: its log file and the stats file are
    // opened by name for each line.)
    if opts.incremental {
        stats(
            meta.generation,
            JOB.skipped.load(SeqCst),
            JOB.hashed.load(SeqCst),
            fixed,
        );
    }
    let (mut chunks, hashes): (Vec<ChunkDesc>, Vec<u128>) = pairs.into_iter().unzip();
    meta.areas = plan.areas.clone();
    let (sources, since_full) = incr::finish(&mut chunks, prev);
    meta.sources = sources;
    meta.since_full = since_full;
    let hashes: &[u128] = if opts.incremental { &hashes } else { &[] };
    let index = image::encode_index_hashed(meta, &chunks, hashes);
    let index_offset = JOB.off.load(SeqCst);
    if let Err(e) = pwrite_all(fd_buf, index.as_ptr(), index.len(), index_offset) {
        return fail(format!(
            "writing {}: {}",
            tmp.display(),
            std::io::Error::from_raw_os_error(e)
        ));
    }
    let file_len = index_offset + index.len() as u64;
    let header = Header {
        flags: if compress { image::HDR_COMPRESSED } else { 0 }
            | if opts.incremental {
                image::HDR_HASHES
            } else {
                0
            },
        index_offset,
        index_len: index.len() as u64,
        file_len,
        index_crc: crc32fast::hash(&index),
        ..Default::default()
    }
    .encode();
    if let Err(e) = pwrite_all(fd_buf, header.as_ptr(), header.len(), 0) {
        return fail(format!(
            "writing {}: {}",
            tmp.display(),
            std::io::Error::from_raw_os_error(e)
        ));
    }
    let crc32 = file_crc(&header, &chunks, &index, index_offset);
    let header_crc = Header::decode_crc(&header);
    // SAFETY: fsync/close of our fd.
    if unsafe { libc::fsync(fd_buf) } != 0 {
        return fail(os_err("fsync of", &tmp));
    }
    // SAFETY: as above.
    unsafe { libc::close(fd_buf) };
    Outcome::Written {
        path: tmp,
        bytes: file_len,
        crc32,
        header_crc,
    }
}

/// Blocks taken from the previous image unread (`pairs` that refer to
/// an earlier image and lie in `clean`) of which a page was written while
/// the image was written (`w`): hashed now, and written into this image
/// (raw, at its end) unless their contents still are the previous
/// image's. The number rewritten, or an errno.
fn recheck(
    pairs: &mut [(ChunkDesc, u128)],
    clean: &[(u64, u64)],
    w: &[(u64, u64)],
    fd: i32,
) -> Result<u64, i32> {
    let mut n = 0;
    if w.is_empty() {
        return Ok(0);
    }
    for (d, h) in pairs.iter_mut() {
        let (a, b) = (d.addr, d.addr + d.len);
        if d.source() == 0
            || !super::dirty::Clean::covers(clean, a, b)
            || !super::dirty::meets(w, a, b)
        {
            continue;
        }
        // SAFETY: [a, b) is in a tracked (private, writable, mapped) area
        // of the plan; nothing has been unmapped since.
        let bytes = unsafe { core::slice::from_raw_parts(a as *const u8, d.len as usize) };
        let now = super::xxh3::hash128(bytes);
        if now == *h {
            continue;
        }
        let off = JOB.off.fetch_add(d.len, SeqCst);
        pwrite_all(fd, bytes.as_ptr(), bytes.len(), off)?;
        *d = ChunkDesc {
            addr: a,
            len: d.len,
            file_off: off,
            stored_len: d.len,
            crc: crc32fast::hash(bytes),
            flags: 0,
        };
        *h = now;
        n += 1;
    }
    Ok(n)
}

/// Say how the incremental image's blocks were found: in the log, and
/// (for tests) as a line appended to the file `DMTCP_DIRTY_STATS` names.
fn stats(generation: u32, skipped: u64, hashed: u64, fixed: u64) {
    let line = format!(
        "generation {generation}: {skipped} blocks unchanged by dirty tracking (not read), {hashed} hashed, {fixed} rewritten\n"
    );
    super::log::info(format_args!("{}", line.trim_end()));
    // getenv, not std::env (whose lock a suspended thread could hold).
    // SAFETY: getenv with a NUL-terminated name; the value is used at once.
    let v = unsafe { libc::getenv(c"DMTCP_DIRTY_STATS".as_ptr()) };
    if v.is_null() {
        return;
    }
    // SAFETY: getenv returned a NUL-terminated string.
    let path = unsafe { core::ffi::CStr::from_ptr(v) };
    // SAFETY: open/write/close of a file of ours.
    unsafe {
        let fd = libc::open(
            path.as_ptr(),
            libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT | libc::O_CLOEXEC,
            0o600,
        );
        if fd >= 0 {
            let _ = dmtcp_sys::write_all(fd, line.as_bytes());
            libc::close(fd);
        }
    }
}

/// The round succeeded everywhere and the coordinator committed the
/// generation: normally it has renamed the generation's directory itself
/// (`path`, this image in it, is then gone). When it could not see that
/// directory (a directory local to this host, not shared with the
/// coordinator's), the processes commit it here instead: rename it to its
/// committed name (the first process of the host does) and make this
/// image's name at the top of the checkpoint directory a hard link to it.
pub fn commit_unseen(path: &Path) -> Result<(), String> {
    let cpath_img = cpath(path);
    // SAFETY: access(2) on a NUL-terminated path.
    if unsafe { libc::access(cpath_img.as_ptr(), libc::F_OK) } != 0 {
        return Ok(());
    }
    let (Some(part), Some(name)) = (path.parent(), path.file_name()) else {
        return Ok(());
    };
    let (Some(top), Some(pname)) = (part.parent(), part.file_name()) else {
        return Ok(());
    };
    let pname = pname.to_string_lossy();
    let Some(fname) = pname.strip_suffix(dmtcp_common::generation::PARTIAL) else {
        return Ok(());
    };
    let committed = top.join(fname);
    let (cpart, ccommitted) = (cpath(part), cpath(&committed));
    // SAFETY: rename of NUL-terminated paths; another process of this host
    // may have done it first (then it fails and the image is found below).
    unsafe { libc::rename(cpart.as_ptr(), ccommitted.as_ptr()) };
    let img = committed.join(name);
    let cimg = cpath(&img);
    // SAFETY: as above.
    if unsafe { libc::access(cimg.as_ptr(), libc::F_OK) } != 0 {
        return Err(os_err("cannot commit the generation into", &committed));
    }
    let mut nonce = [0u8; 8];
    // SAFETY: getrandom fills our 8 bytes (a short read leaves zeros, still unique with the pid).
    unsafe { libc::syscall(libc::SYS_getrandom, nonce.as_mut_ptr(), 8usize, 0) };
    let link = top.join(format!(
        ".{}.{}.{:016x}.tmp",
        name.to_string_lossy(),
        std::process::id(),
        u64::from_ne_bytes(nonce)
    ));
    let (clink, ctop_name) = (cpath(&link), cpath(&top.join(name)));
    // SAFETY: link/rename/unlink of NUL-terminated paths.
    unsafe {
        if libc::link(cimg.as_ptr(), clink.as_ptr()) != 0 {
            return Err(os_err("cannot link the image as", &link));
        }
        if libc::rename(clink.as_ptr(), ctop_name.as_ptr()) != 0 {
            let msg = os_err("cannot rename into", &top.join(name));
            libc::unlink(clink.as_ptr());
            return Err(msg);
        }
    }
    fsync_dir(top);
    prune_unseen(top, fname);
    Ok(())
}

/// After [`commit_unseen`]: keep the newest `DMTCP_KEEP_GENERATIONS`
/// (default 2, 0 = all) committed generations of this computation in
/// `top`, `committed` (the one just committed) among them. The coordinator
/// does this where it sees the directory.
fn prune_unseen(top: &Path, committed: &str) {
    use dmtcp_common::generation as gen;
    // getenv, not std::env (whose lock a suspended thread could hold).
    // SAFETY: getenv with a NUL-terminated name; the value is read at once.
    let v = unsafe { libc::getenv(c"DMTCP_KEEP_GENERATIONS".as_ptr()) };
    let keep = if v.is_null() {
        None
    } else {
        // SAFETY: getenv returned a NUL-terminated string.
        let c = unsafe { core::ffi::CStr::from_ptr(v) };
        c.to_str().ok().and_then(|s| s.trim().parse::<usize>().ok())
    };
    let keep = keep.unwrap_or(gen::DEFAULT_KEEP as usize);
    let Some((comp, n, _)) = gen::parse_name(committed) else {
        return;
    };
    if keep == 0 {
        return;
    }
    let mut older: Vec<gen::Found> = gen::list(top)
        .into_iter()
        .filter(|f| f.comp == comp && f.generation < n)
        .collect();
    older.sort_by_key(|f| core::cmp::Reverse((!f.partial, f.generation)));
    let committed_older = older.iter().filter(|f| !f.partial).count();
    // Generations a kept one's incremental images refer to stay.
    let kept: Vec<PathBuf> = std::iter::once(top.join(committed))
        .chain(
            older
                .iter()
                .take(keep - 1)
                .filter(|f| !f.partial)
                .map(|f| f.path.clone()),
        )
        .collect();
    let needed = gen::referenced(kept.iter().map(PathBuf::as_path));
    for (i, f) in older.iter().enumerate() {
        let referenced = f
            .path
            .file_name()
            .is_some_and(|n| needed.contains(&*n.to_string_lossy()));
        if f.partial || i >= keep - 1 && i < committed_older && !referenced {
            let _ = std::fs::remove_dir_all(&f.path);
        }
    }
}

fn fsync_dir(dir: &Path) {
    let cdir = cpath(dir);
    // SAFETY: open/fsync/close of a directory fd of ours.
    unsafe {
        let d = libc::open(
            cdir.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        );
        if d >= 0 {
            libc::fsync(d);
            libc::close(d);
        }
    }
}

/// The round failed somewhere: this image must not become part of any
/// generation. Its directory goes too once it is empty.
pub fn discard(path: &Path) {
    // SAFETY: removing our image and (if empty) the round's directory.
    unsafe {
        libc::unlink(cpath(path).as_ptr());
        if let Some(d) = path.parent() {
            libc::rmdir(cpath(d).as_ptr());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(addr: u64, len: u64) -> incr::PrevChunk {
        incr::PrevChunk {
            addr,
            len,
            hash: 0,
            file_off: 0,
            stored_len: len,
            crc: 0,
            flags: 0,
        }
    }

    #[test]
    fn clean_pages_know_what_the_previous_image_had() {
        let p = PAGE as u64;
        let clean = [(0x10 * p, 0x20 * p), (0x30 * p, 0x40 * p)];
        let prev = [chunk(0x12 * p, 2 * p), chunk(0x1f * p, 0x12 * p)];
        let mut k = CleanPages::new(&clean, &prev);
        // Before, between and after the clean ranges: not known.
        assert_eq!(k.at(0x0f * p), None);
        assert_eq!(k.at(0x10 * p), Some(false));
        assert_eq!(k.at(0x12 * p), Some(true));
        assert_eq!(k.at(0x13 * p), Some(true));
        assert_eq!(k.at(0x14 * p), Some(false));
        assert_eq!(k.at(0x1f * p), Some(true));
        assert_eq!(k.at(0x20 * p), None);
        assert_eq!(k.at(0x30 * p), Some(true));
        assert_eq!(k.at(0x31 * p), Some(false));
        // Asked again further back (after a long last run): found anew.
        assert_eq!(k.at(0x13 * p), Some(true));
        assert_eq!(k.at(0x14 * p), Some(false));
        assert_eq!(k.at(0x40 * p), None);
        // Without a previous image nothing is known.
        let mut none = CleanPages::new(&clean, &[]);
        assert_eq!(none.at(0x12 * p), None);
    }
}
