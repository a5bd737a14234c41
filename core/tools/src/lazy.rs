//! The page server of a lazy restore of compressed chunks.
//!
//! Where this process may use userfaultfd fully (root, or
//! `vm.unprivileged_userfaultfd=1`, or `CAP_SYS_PTRACE`), compressed chunks
//! of anonymous private memory are not decompressed before the program
//! resumes: the restorer registers their ranges with a userfaultfd it hands to
//! the streamer, which then becomes this server. It fills each page the
//! program (or the kernel, in a system call) touches first, from the
//! chunk read and decompressed on the spot, and fills the rest in the
//! background in address order; then it closes the userfaultfd (the
//! process owns all its memory), tells the restored library so, and ends.
//!
//! The restored library asks for everything (and waits) before a fork and
//! before a checkpoint, on the socket it got from the restorer; `mremap`,
//! `munmap` and `madvise(MADV_DONTNEED)` of a range still to fill are
//! followed through the userfaultfd's events.
//!
//! Raw chunks of anonymous private memory are served the same way. By
//! default (`dmtcp_restart --verify on-fill`) the streamer does not read
//! any of these chunks before the program resumes: this server checks each
//! chunk's CRC when it reads it, before any of its pages goes into the
//! process. A cold restart then does not wait for the whole image to be
//! read; a damaged chunk stops the restarted process (SIGKILL, with the
//! reason on stderr) and, through the coordinator, the rest of its
//! computation, instead of refusing the restart before it starts (what
//! `--verify before` does: the streamer checks every chunk first).
//!
//! Without full userfaultfd
//! (or with `DMTCP_RESTART_NO_UFFD=1`) the chunks are decompressed before
//! the program resumes, as before.

use dmtcp_common::image::{ChunkDesc, Image};
use dmtcp_sys::uffd;

/// May this process use userfaultfd with faults of the kernel handled
/// (checked by opening one)? On by default; `DMTCP_RESTART_UFFD=0` or
/// `DMTCP_RESTART_NO_UFFD=1` turn it off (and `DMTCP_RESTART_EAGER=1`,
/// which maps nothing from the image either).
pub fn usable() -> bool {
    let set = |k: &str| std::env::var(k).ok();
    if set("DMTCP_RESTART_UFFD").is_some_and(|v| !dmtcp_common::env::truthy(&v))
        || set("DMTCP_RESTART_NO_UFFD").is_some_and(|v| dmtcp_common::env::truthy(&v))
    {
        return false;
    }
    let fd = uffd::open();
    if fd < 0 {
        return false;
    }
    // SAFETY: closing the fd just opened.
    unsafe { libc::close(fd as i32) };
    true
}

/// A connected pair of Unix stream sockets, close-on-exec.
pub fn socketpair() -> std::io::Result<(i32, i32)> {
    let mut p = [0i32; 2];
    // SAFETY: socketpair writes two fds.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            p.as_mut_ptr(),
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((p[0], p[1]))
}

/// What the restored library sends to ask for every page now.
pub const ASK_ALL: u8 = b'F';
/// What the server sends once every page is in (the userfaultfd closed).
pub const ALL_IN: u8 = b'D';

/// A run of memory still to fill: `len` bytes at `addr`, which are the
/// bytes from `off` of chunk `chunk` (decompressed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Seg {
    addr: u64,
    len: u64,
    chunk: usize,
    off: u64,
}

/// The runs still to fill, sorted by address, never overlapping. (A
/// deque: the background fill takes from the front, 65,536 runs for
/// 4 GiB of 64 KiB chunks.)
struct Todo(std::collections::VecDeque<Seg>);

impl Todo {
    /// Take out the run at `i` and the ones [`group_len`] joins to it.
    fn claim(&mut self, i: usize, chunks: &[ChunkDesc]) -> Vec<Seg> {
        let n = group_len(self.0.range(i..), chunks);
        self.0.drain(i..i + n).collect()
    }

    /// Put back runs taken by [`Todo::claim`] (what a fill stopped short of).
    fn put_back(&mut self, segs: Vec<Seg>) {
        if segs.is_empty() {
            return;
        }
        self.0.extend(segs);
        self.0.make_contiguous().sort_unstable_by_key(|s| s.addr);
    }

    fn find(&self, addr: u64) -> Option<usize> {
        let i = self.0.partition_point(|s| s.addr + s.len <= addr);
        self.0.get(i).filter(|s| s.addr <= addr).map(|_| i)
    }

    /// Take `[start, end)` out; the parts taken, in address order.
    fn cut(&mut self, start: u64, end: u64) -> Vec<Seg> {
        let mut taken = Vec::new();
        let mut kept = std::collections::VecDeque::with_capacity(self.0.len() + 2);
        for s in self.0.drain(..) {
            let (a, b) = (s.addr, s.addr + s.len);
            if b <= start || a >= end {
                kept.push_back(s);
                continue;
            }
            if a < start {
                kept.push_back(Seg {
                    len: start - a,
                    ..s
                });
            }
            let (ia, ib) = (a.max(start), b.min(end));
            taken.push(Seg {
                addr: ia,
                len: ib - ia,
                chunk: s.chunk,
                off: s.off + (ia - a),
            });
            if b > end {
                kept.push_back(Seg {
                    addr: end,
                    len: b - end,
                    chunk: s.chunk,
                    off: s.off + (end - a),
                });
            }
        }
        self.0 = kept;
        taken
    }

    /// `[from, from + len)` moved to `to` (mremap).
    fn moved(&mut self, from: u64, to: u64, len: u64) {
        let taken = self.cut(from, from + len);
        // Whatever was at the destination is gone.
        self.cut(to, to + len);
        for s in taken {
            self.0.push_back(Seg {
                addr: s.addr - from + to,
                ..s
            });
        }
        self.0.make_contiguous().sort_unstable_by_key(|s| s.addr);
    }
}

/// Why filling stopped short.
enum Stop {
    /// An event is pending (EAGAIN): read the events, then try again.
    Again,
    /// The process is gone.
    Gone,
    /// Anything else (errno).
    Failed(i32),
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Copy `src` to `seg.addr`, advancing `seg` as pages go in; pages found
/// present or unmapped are skipped.
///
/// `UFFDIO_COPY` answers ENOENT both for a page no longer mapped and for a
/// range that does not lie within one mapping: a run is one mapping when
/// it is registered, but the program may split that mapping afterwards
/// (`mprotect` of a part, `madvise` that changes its flags), which sends no
/// event. So after an ENOENT the next page is tried alone: copied, it was
/// the boundary (whole runs again from the next page); refused, it is
/// really gone and skipped. Skipping the whole run's pages one by one
/// would leave them missing, and the kernel would give zero pages there
/// once the userfaultfd is closed (or a thread that faulted on one would
/// wait for ever).
fn fill(fd: i32, seg: &mut Seg, src: &[u8]) -> Result<(), Stop> {
    let mut one_page = false;
    while seg.len > 0 {
        let at = (seg.off) as usize;
        let len = if one_page { seg.len.min(4096) } else { seg.len };
        let mut c = uffd::Copy {
            dst: seg.addr,
            src: src[at..].as_ptr() as u64,
            len,
            mode: 0,
            copy: 0,
        };
        // SAFETY: UFFDIO_COPY reads `len` bytes at `src` (inside `src`,
        // whose length the caller checked) and writes our struct.
        let r = unsafe { libc::ioctl(fd, uffd::UFFDIO_COPY as _, &mut c) };
        let e = if r == 0 { 0 } else { errno() };
        if c.copy > 0 {
            let n = (c.copy as u64).min(seg.len);
            seg.addr += n;
            seg.off += n;
            seg.len -= n;
        }
        if r == 0 || seg.len == 0 {
            one_page = false;
            continue;
        }
        match e {
            libc::EAGAIN => return Err(Stop::Again),
            // The range crosses the end of a mapping (or its first page is
            // gone): that page alone next.
            libc::ENOENT if !one_page && c.copy <= 0 && seg.len > 4096 => one_page = true,
            // A page there already, or no mapping any more: skip one page.
            libc::EEXIST | libc::ENOENT => {
                seg.addr += 4096;
                seg.off += 4096;
                seg.len = seg.len.saturating_sub(4096);
                one_page = false;
            }
            libc::ESRCH => return Err(Stop::Gone),
            e => return Err(Stop::Failed(e)),
        }
    }
    Ok(())
}

/// A fault on a page no chunk fills (dropped by `madvise`, or grown by
/// `mremap`, or filled meanwhile): a zero page, or just wake the thread.
fn zero_or_wake(fd: i32, page: u64) -> Result<(), Stop> {
    let mut z = uffd::Zeropage {
        range: uffd::Range {
            start: page,
            len: 4096,
        },
        mode: 0,
        zeropage: 0,
    };
    // SAFETY: UFFDIO_ZEROPAGE reads and writes our struct.
    if unsafe { libc::ioctl(fd, uffd::UFFDIO_ZEROPAGE as _, &mut z) } == 0 {
        return Ok(());
    }
    match errno() {
        libc::EAGAIN => Err(Stop::Again),
        libc::ESRCH => Err(Stop::Gone),
        libc::EEXIST | libc::ENOENT => {
            let mut r = uffd::Range {
                start: page,
                len: 4096,
            };
            // SAFETY: UFFDIO_WAKE reads our struct.
            unsafe { libc::ioctl(fd, uffd::UFFDIO_WAKE as _, &mut r) };
            Ok(())
        }
        e => Err(Stop::Failed(e)),
    }
}

/// Receive the userfaultfd the restorer sends on `sock` (-1: none came).
fn receive_fd(sock: i32) -> i32 {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut control = [0u64; 4];
    // SAFETY: an all-zero msghdr is valid; the fields are set below.
    let mut mh: libc::msghdr = unsafe { std::mem::zeroed() };
    mh.msg_iov = &mut iov;
    mh.msg_iovlen = 1;
    mh.msg_control = control.as_mut_ptr().cast();
    mh.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: recvmsg writes into the buffers mh points at, alive here.
    let n = unsafe { libc::recvmsg(sock, &mut mh, libc::MSG_CMSG_CLOEXEC) };
    if n != 1 {
        return -1;
    }
    // SAFETY: walking the control messages recvmsg wrote into `control`.
    unsafe {
        let cm = libc::CMSG_FIRSTHDR(&mh);
        if cm.is_null()
            || (*cm).cmsg_level != libc::SOL_SOCKET
            || (*cm).cmsg_type != libc::SCM_RIGHTS
        {
            return -1;
        }
        std::ptr::read_unaligned(libc::CMSG_DATA(cm) as *const i32)
    }
}

/// Close every fd but `keep` and the image files: the server may live as
/// long as the program, and must not hold its pipes or sockets open (nor
/// the coordinator's connection, which it inherited).
fn close_all_but(img: &Image, keep: &[i32]) {
    use std::os::fd::AsRawFd;
    let mut keep = keep.to_vec();
    keep.extend(
        std::iter::once(img)
            .chain(img.sources.iter())
            .map(|i| i.file().as_raw_fd()),
    );
    let open: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    for fd in open {
        if !keep.contains(&fd) {
            // SAFETY: no handle of this process refers to these fds any
            // more (the directory listing's own fd is closed already).
            unsafe { libc::close(fd) };
        }
    }
}

/// Bytes read, checked and copied at once from a run of whole raw chunks.
const GROUP_BYTES: u64 = 4 << 20;

/// How many of `segs` (from the first) are whole raw chunks adjacent in
/// memory and in one image file, up to [`GROUP_BYTES`]: 1 if the first is
/// not such a chunk. (Chunks are 64 KiB: one read, one copy and one
/// round of the loop per chunk made the server the slowest part of a
/// restart.)
fn group_len<'a>(segs: impl IntoIterator<Item = &'a Seg>, chunks: &[ChunkDesc]) -> usize {
    let whole = |s: &Seg| s.off == 0 && s.len == chunks[s.chunk].len;
    let raw =
        |c: &ChunkDesc| c.flags & dmtcp_common::image::CHUNK_ZSTD == 0 && c.stored_len == c.len;
    let mut segs = segs.into_iter();
    let Some(first) = segs.next() else {
        return 0;
    };
    if !whole(first) || !raw(&chunks[first.chunk]) {
        return 1;
    }
    let (mut n, mut bytes, mut p) = (1, first.len, first);
    while bytes < GROUP_BYTES {
        let Some(s) = segs.next() else { break };
        let (pc, c) = (&chunks[p.chunk], &chunks[s.chunk]);
        if !whole(s)
            || !raw(c)
            || s.addr != p.addr + p.len
            || !crate::restart::follows_in_file(pc, c)
        {
            break;
        }
        bytes += s.len;
        n += 1;
        p = s;
    }
    n
}

/// `len` bytes of an image file from `off` (page-aligned), mapped
/// privately and read-only with their pages read in at once; unmapped
/// when dropped.
pub(crate) struct MappedRange {
    p: *mut libc::c_void,
    len: usize,
}

impl MappedRange {
    /// None where the range is not inside the file (a file cut short
    /// since it was checked would fault in the mapping) or cannot be mapped.
    pub(crate) fn new(img: &Image, off: u64, len: u64) -> Option<MappedRange> {
        use std::os::fd::AsRawFd;
        let inside = img
            .file()
            .metadata()
            .is_ok_and(|m| m.len() >= off.saturating_add(len));
        if len == 0 || !off.is_multiple_of(4096) || !inside {
            return None;
        }
        // SAFETY: a new private read-only mapping of the open image's
        // bytes [off, off + len), inside the file; only this struct uses
        // it, and unmaps it.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_POPULATE,
                img.file().as_raw_fd(),
                off as libc::off_t,
            )
        };
        (p != libc::MAP_FAILED).then_some(MappedRange {
            p,
            len: len as usize,
        })
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is `len` readable bytes, alive while self is.
        unsafe { std::slice::from_raw_parts(self.p as *const u8, self.len) }
    }
}

impl Drop for MappedRange {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping; no slice of it outlives self.
        unsafe { libc::munmap(self.p, self.len) };
    }
}

/// Fill the runs `segs` (whole raw chunks, [`group_len`]) with one read
/// of their bytes, each chunk's CRC checked, and one copy; the parts of
/// the runs a copy stopped short of are returned with the result.
fn fill_group(st: &Server, f: &mut Filler, segs: &[Seg]) -> (Result<(), Stop>, Vec<Seg>) {
    use std::os::unix::fs::FileExt;
    let (img, chunks, pid) = (st.img, st.chunks, st.pid);
    let first = &chunks[segs[0].chunk];
    let total: u64 = segs.iter().map(|s| s.len).sum();
    let src = img.file_of(first);
    // The stored bytes where they lie in the page cache (no copy into a
    // buffer), else read.
    let mapped = MappedRange::new(src, first.file_off, total);
    let bytes: &[u8] = match &mapped {
        Some(m) => m.bytes(),
        None => {
            f.group.resize(total as usize, 0);
            if let Err(e) = src.file().read_exact_at(&mut f.group, first.file_off) {
                dmtcp_common::log_error!(
                    "lazy restore: reading {} bytes at offset {} of {}: {e}; the restarted \
                     process {pid} is stopped before it could use that memory",
                    total,
                    first.file_off,
                    src.path.display()
                );
                return (Err(Stop::Failed(libc::EIO)), segs.to_vec());
            }
            &f.group
        }
    };
    let run = segs.iter().map(|s| &chunks[s.chunk]);
    if let Err(e) = crate::restart::check_stored_run(img, run, bytes) {
        dmtcp_common::log_error!(
            "lazy restore: {e}; the restarted process {pid} is stopped before it could use \
             that memory (restart an earlier checkpoint generation)"
        );
        return (Err(Stop::Failed(libc::EIO)), segs.to_vec());
    }
    let mut all = Seg {
        addr: segs[0].addr,
        len: total,
        chunk: segs[0].chunk,
        off: 0,
    };
    let r = fill(st.fd, &mut all, bytes);
    let left = all.addr..all.addr + all.len;
    let kept = segs
        .iter()
        .filter_map(|s| {
            let a = s.addr.max(left.start);
            let e = (s.addr + s.len).min(left.end);
            (a < e).then(|| Seg {
                addr: a,
                len: e - a,
                chunk: s.chunk,
                off: a - s.addr,
            })
        })
        .collect();
    (r, kept)
}

/// What one filling thread keeps between fills.
#[derive(Default)]
struct Filler {
    /// The chunk whose bytes are in `out`, if any.
    cached: Option<usize>,
    out: Vec<u8>,
    scratch: Vec<u8>,
    /// A group's bytes where they could not be mapped.
    group: Vec<u8>,
    /// The kernel reads ahead of this thread's fills (one thread only).
    ahead: crate::restart::ReadAhead,
}

/// The runs still to fill, and the ranges of those claimed and being
/// filled now.
struct Work {
    todo: Todo,
    flying: Vec<(u64, u64)>,
}

/// The page server's state, shared by the thread that reads the
/// userfaultfd (faults and events) and the threads that fill in the
/// background.
///
/// Runs are claimed (taken out of [`Work::todo`], their range listed in
/// [`Work::flying`]) and filled with the `layout` lock held for reading; the
/// events that change the memory's layout (`mremap`, `munmap`,
/// `madvise`) are read from the userfaultfd and applied to `todo` with
/// it held for writing. So a claimed run is always filled, or put back,
/// in the layout it was claimed in: while an event is pending, its copy
/// fails with EAGAIN (the kernel's doing) and it is put back before the
/// event is read; and no run is in flight when one is applied.
struct Server<'a> {
    img: &'a Image,
    chunks: &'a [ChunkDesc],
    fd: i32,
    pid: i32,
    work: std::sync::Mutex<Work>,
    layout: std::sync::RwLock<()>,
    /// Set while the reader of the userfaultfd waits for `layout` (or
    /// holds it) for writing: the background threads do not take it for
    /// reading meanwhile. (A thread that releases the std lock and takes it
    /// again at once keeps a waiting writer out: with one background
    /// thread, no fault was served until the fill was done.)
    writer_waiting: std::sync::atomic::AtomicBool,
    /// Whether the kernel is asked to read ahead of the fills: with one
    /// background thread only (two or more keep reads enough in flight,
    /// and 64 MiB asked ahead by each delayed the pages faults wait for:
    /// 4 GiB from a cold cache with `--verify on-fill`, the program ran
    /// after 0.7-1.1 s with it, 0.19 s without).
    read_ahead: bool,
    /// 0, or why filling stops: [`GONE`] or [`FAILED`].
    stop: std::sync::atomic::AtomicU8,
    on_fault: std::sync::atomic::AtomicU64,
    in_background: std::sync::atomic::AtomicU64,
    /// Fills that stopped short (a change of the memory's layout
    /// pending) and were put back.
    put_back: std::sync::atomic::AtomicU64,
    /// Written by each background thread as it ends (an eventfd).
    ended: i32,
    /// Testing knob (`DMTCP_TEST_FILL_PAUSE_MS`): each background fill
    /// waits this long between its claim and its copy, so that a change
    /// of the program's memory layout lands while a copy is under way and
    /// the run is put back (otherwise a matter of timing).
    test_pause: Option<std::time::Duration>,
}

const GONE: u8 = 1;
const FAILED: u8 = 2;

/// Threads that fill in the background (`DMTCP_RESTART_FILL_THREADS`,
/// default the CPUs, at most 4): a single thread's copies into new pages
/// bound the time until all memory is in (4 GiB: 1.6 s with one thread,
/// 0.8 s with two, memory the machine had just used).
fn fill_threads() -> usize {
    std::env::var("DMTCP_RESTART_FILL_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .min(4)
        })
        .clamp(1, 64)
}

impl Server<'_> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Work> {
        self.work.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stopped(&self) -> bool {
        self.stop.load(std::sync::atomic::Ordering::SeqCst) != 0
    }

    /// Fill the runs `segs` claimed from the todo (one group, or one run
    /// of a chunk read and decompressed whole), then settle them: out of
    /// `flying`, what was not filled back into the todo. Call with the
    /// layout lock held for reading.
    fn fill_claimed(&self, f: &mut Filler, segs: Vec<Seg>) -> Result<(), Stop> {
        let (r, left) = if segs.len() > 1 {
            let last = segs[segs.len() - 1].chunk;
            if self.read_ahead {
                f.ahead.advance(self.img, self.chunks, last + 1, &|_| false);
            }
            fill_group(self, f, &segs)
        } else {
            let mut seg = segs[0];
            let mut r = Ok(());
            if f.cached != Some(seg.chunk) {
                f.cached = None;
                if self.read_ahead {
                    f.ahead
                        .advance(self.img, self.chunks, seg.chunk + 1, &|_| false);
                }
                match self
                    .img
                    .read_chunk(&self.chunks[seg.chunk], &mut f.out, &mut f.scratch)
                {
                    Ok(()) => f.cached = Some(seg.chunk),
                    Err(e) => {
                        dmtcp_common::log_error!(
                            "lazy restore: {e}; the restarted process {} is stopped before it \
                             could use that memory (restart an earlier checkpoint generation)",
                            self.pid
                        );
                        r = Err(Stop::Failed(libc::EIO));
                    }
                }
            }
            if r.is_ok() {
                r = fill(self.fd, &mut seg, &f.out);
            }
            (r, if seg.len > 0 { vec![seg] } else { Vec::new() })
        };
        let start = segs[0].addr;
        if !left.is_empty() {
            self.put_back
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let mut w = self.lock();
        if let Some(k) = w.flying.iter().position(|&(a, _)| a == start) {
            w.flying.swap_remove(k);
        }
        w.todo.put_back(left);
        r
    }

    /// Claim the runs from the one at `i` and list them as in flight.
    fn claim(&self, w: &mut Work, i: usize) -> Vec<Seg> {
        let segs = w.todo.claim(i, self.chunks);
        let end = segs.last().map_or(0, |s| s.addr + s.len);
        w.flying.push((segs[0].addr, end));
        segs
    }

    /// Stop for `e` (an error of a fill): the process is gone, or it
    /// cannot get its memory and is killed.
    fn fail(&self, e: Stop) {
        use std::sync::atomic::Ordering::SeqCst;
        match e {
            Stop::Again => {}
            Stop::Gone => {
                let _ = self.stop.compare_exchange(0, GONE, SeqCst, SeqCst);
            }
            Stop::Failed(e) => {
                if self.stop.swap(FAILED, SeqCst) == FAILED {
                    return;
                }
                if e != libc::EIO {
                    dmtcp_common::log_error!(
                        "lazy restore: cannot fill the memory of the restarted process {} (errno {e}); it is stopped",
                        self.pid
                    );
                }
                // SAFETY: stopping the process whose memory cannot be
                // filled (it would wait for this page for ever).
                unsafe { libc::kill(self.pid, libc::SIGKILL) };
            }
        }
    }

    /// A background thread: fill runs from the lowest address up until
    /// none is left (or filling stops).
    fn background(&self) {
        let mut f = Filler::default();
        while !self.stopped() {
            if self
                .writer_waiting
                .load(std::sync::atomic::Ordering::SeqCst)
            {
                std::thread::yield_now();
                continue;
            }
            let layout = self.layout.read().unwrap_or_else(|e| e.into_inner());
            let segs = {
                let mut w = self.lock();
                if w.todo.0.is_empty() {
                    break;
                }
                self.claim(&mut w, 0)
            };
            if let Some(d) = self.test_pause {
                std::thread::sleep(d);
            }
            let r = self.fill_claimed(&mut f, segs);
            drop(layout);
            match r {
                Ok(()) => {
                    self.in_background
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                // An event is pending: let the reader of the userfaultfd
                // take the layout lock and read it.
                Err(Stop::Again) => std::thread::sleep(std::time::Duration::from_micros(200)),
                Err(e) => self.fail(e),
            }
        }
        // SAFETY: adding 1 to our eventfd from our own buffer.
        unsafe { libc::write(self.ended, [1u64].as_ptr().cast(), 8) };
    }

    /// Serve the faults at `faults` (page addresses, in the order they
    /// came); those that must wait (their run in flight, or an event
    /// pending) are returned.
    fn faults(&self, f: &mut Filler, faults: Vec<u64>) -> Vec<u64> {
        let mut wait = Vec::new();
        let _layout = self.layout.read().unwrap_or_else(|e| e.into_inner());
        for (k, &page) in faults.iter().enumerate() {
            if self.stopped() {
                return Vec::new();
            }
            let claimed = {
                let mut w = self.lock();
                match w.todo.find(page) {
                    Some(i) => Some(self.claim(&mut w, i)),
                    None if w.flying.iter().any(|&(a, e)| a <= page && page < e) => {
                        wait.push(page);
                        continue;
                    }
                    None => None,
                }
            };
            let r = match claimed {
                Some(segs) => {
                    self.on_fault
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    self.fill_claimed(f, segs)
                }
                None => zero_or_wake(self.fd, page),
            };
            match r {
                Ok(()) => {}
                Err(Stop::Again) => {
                    wait.extend_from_slice(&faults[k..]);
                    break;
                }
                Err(e) => {
                    self.fail(e);
                    return Vec::new();
                }
            }
        }
        wait
    }

    /// Read every message of the userfaultfd (with the layout lock held
    /// for writing): the faults' pages are added to `faults`, the events
    /// applied to the todo.
    fn read_messages(&self, faults: &mut Vec<u64>) {
        use std::sync::atomic::Ordering::SeqCst;
        self.writer_waiting.store(true, SeqCst);
        let layout = self.layout.write().unwrap_or_else(|e| e.into_inner());
        self.read_messages_locked(faults);
        drop(layout);
        self.writer_waiting.store(false, SeqCst);
    }

    fn read_messages_locked(&self, faults: &mut Vec<u64>) {
        let todo = &mut self.lock().todo;
        loop {
            let mut m = uffd::Msg::default();
            // SAFETY: reading one message into our struct.
            let r = unsafe {
                libc::read(
                    self.fd,
                    (&mut m as *mut uffd::Msg).cast(),
                    std::mem::size_of::<uffd::Msg>(),
                )
            };
            if r != std::mem::size_of::<uffd::Msg>() as isize {
                break;
            }
            match m.event {
                uffd::EVENT_PAGEFAULT => faults.push(m.arg[1] & !4095),
                uffd::EVENT_REMAP => todo.moved(m.arg[0], m.arg[1], m.arg[2]),
                uffd::EVENT_REMOVE | uffd::EVENT_UNMAP => {
                    todo.cut(m.arg[0], m.arg[1]);
                }
                _ => {}
            }
        }
    }
}

/// Serve the faults of process `pid` on the ranges of `chunks` (of `img`;
/// each chunk's CRC is checked again as it is read) and fill them all; the exit status of the streamer.
pub fn serve(img: &Image, sock: i32, chunks: Vec<ChunkDesc>, pid: i32, coord: (&str, u16)) -> i32 {
    use std::sync::atomic::Ordering::Relaxed;
    let fd = receive_fd(sock);
    if fd < 0 {
        // The restorer failed before handing it over (it said why).
        return 0;
    }
    close_all_but(img, &[2, sock, fd]);
    // The signals of a terminal or of `kill` are for the program: were the
    // server to die with pages still to fill, the program would find zero
    // pages there. It ends when the program does (its socket closes).
    for sig in [
        libc::SIGINT,
        libc::SIGTERM,
        libc::SIGHUP,
        libc::SIGQUIT,
        libc::SIGPIPE,
    ] {
        // SAFETY: ignoring a signal in this single-threaded process.
        unsafe { libc::signal(sig, libc::SIG_IGN) };
    }
    let started = std::time::Instant::now();
    let background = !std::env::var("DMTCP_RESTART_LAZY_BACKGROUND").is_ok_and(|v| v == "0");
    let stats =
        std::env::var("DMTCP_RESTART_LAZY_STATS").is_ok_and(|v| dmtcp_common::env::truthy(&v));
    // SAFETY: a new eventfd, ours.
    let ended = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if ended < 0 {
        dmtcp_common::log_error!(
            "lazy restore: eventfd: {}; the restarted process {pid} is stopped",
            std::io::Error::last_os_error()
        );
        // SAFETY: stopping the process no server will fill.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        return 1;
    }
    let threads = fill_threads();
    let st = Server {
        img,
        chunks: &chunks,
        fd,
        pid,
        work: std::sync::Mutex::new(Work {
            todo: Todo(
                chunks
                    .iter()
                    .enumerate()
                    .map(|(i, c)| Seg {
                        addr: c.addr,
                        len: c.len,
                        chunk: i,
                        off: 0,
                    })
                    .collect(),
            ),
            flying: Vec::new(),
        }),
        layout: std::sync::RwLock::new(()),
        writer_waiting: std::sync::atomic::AtomicBool::new(false),
        read_ahead: threads == 1,
        stop: std::sync::atomic::AtomicU8::new(0),
        on_fault: std::sync::atomic::AtomicU64::new(0),
        in_background: std::sync::atomic::AtomicU64::new(0),
        put_back: std::sync::atomic::AtomicU64::new(0),
        ended,
        test_pause: std::env::var("DMTCP_TEST_FILL_PAUSE_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(std::time::Duration::from_millis),
    };
    std::thread::scope(|scope| {
        let mut filling = false;
        let mut start_filling = || {
            if !filling {
                filling = true;
                for _ in 0..threads {
                    scope.spawn(|| st.background());
                }
            }
        };
        if background {
            start_filling();
        }
        let mut f = Filler::default();
        let mut waiting: Vec<u64> = Vec::new();
        loop {
            if st.stopped() {
                break;
            }
            {
                let w = st.lock();
                if w.todo.0.is_empty() && w.flying.is_empty() {
                    break;
                }
            }
            let mut pfd = [fd, sock, ended].map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            });
            // Faults that wait for a run in flight are looked at again
            // every millisecond.
            let timeout = if waiting.is_empty() { -1 } else { 1 };
            // SAFETY: poll on our three fds.
            let n = unsafe { libc::poll(pfd.as_mut_ptr(), 3, timeout) };
            if n < 0 && errno() != libc::EINTR {
                break;
            }
            if pfd[1].revents != 0 {
                let mut b = [0u8; 1];
                // SAFETY: reading one byte into our buffer.
                match unsafe { libc::read(sock, b.as_mut_ptr().cast(), 1) } {
                    1 if b[0] == ASK_ALL => start_filling(),
                    // The process is gone (or exec'd: its memory with it).
                    _ => {
                        st.fail(Stop::Gone);
                        break;
                    }
                }
            }
            if pfd[2].revents != 0 {
                let mut v = 0u64;
                // SAFETY: reading the eventfd's count into our u64.
                unsafe { libc::read(ended, (&mut v as *mut u64).cast(), 8) };
            }
            if pfd[0].revents != 0 {
                st.read_messages(&mut waiting);
            }
            if !waiting.is_empty() {
                waiting = st.faults(&mut f, std::mem::take(&mut waiting));
            }
        }
        // The scope waits for the background threads (they see the todo
        // empty, or the stop).
        if !st.stopped() && !st.lock().todo.0.is_empty() {
            st.fail(Stop::Gone);
        }
    });
    // SAFETY: closing our eventfd.
    unsafe { libc::close(ended) };
    if st.stop.load(Relaxed) == FAILED {
        stop_computation(img, coord);
        return 1;
    }
    let done = st.lock().todo.0.is_empty();
    // SAFETY: closing the userfaultfd: the kernel lets go of the ranges,
    // whose pages are all in.
    unsafe { libc::close(fd) };
    if done {
        // SAFETY: one byte on our socket (the library reads it when it asks).
        unsafe { libc::write(sock, [ALL_IN].as_ptr().cast(), 1) };
    }
    if stats {
        eprintln!(
            "dmtcp_restart: lazy restore of {} chunks ({} compressed, {} MB): {} runs filled on a fault, {} in the background ({threads} threads, {} put back), in {} ms{}",
            chunks.len(),
            chunks.iter().filter(|c| c.flags & dmtcp_common::image::CHUNK_ZSTD != 0).count(),
            chunks.iter().map(|c| c.len).sum::<u64>() >> 20,
            st.on_fault.load(Relaxed),
            st.in_background.load(Relaxed),
            st.put_back.load(Relaxed),
            started.elapsed().as_millis(),
            if done { "" } else { " (the process went away first)" }
        );
    }
    0
}

/// The restarted process was stopped for memory it could not be given: the
/// rest of its computation cannot go on without it (its peers would wait
/// for it for ever, or go on with half a job), so the coordinator at
/// `coord` is asked to end them all, as `dmtcp_command --kill` would; the
/// message says which earlier generation to restart, where there is one.
fn stop_computation(img: &Image, (host, port): (&str, u16)) {
    // Bounded (a coordinator on a host that does not answer must not keep
    // this host's processes from being stopped below).
    let (tx, rx) = std::sync::mpsc::channel();
    let h = host.to_string();
    std::thread::spawn(move || {
        let _ = tx.send(crate::command::send_command_as(
            "dmtcp_restart",
            &h,
            port,
            dmtcp_common::proto::Cmd::Kill,
            |_, _, _| {},
        ));
    });
    let r = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .unwrap_or_else(|_| Err("no answer within 10 s".into()));
    let earlier = earlier_generation(img)
        .map(|d| format!(": dmtcp_restart --restartdir {}", d.display()))
        .unwrap_or_default();
    match r {
        Ok(_) => dmtcp_common::log_error!(
            "lazy restore: the other processes of the computation (coordinator {host}:{port}) \
             are stopped too, since it cannot go on without this one; restart an earlier \
             checkpoint generation{earlier}"
        ),
        Err(e) => dmtcp_common::log_error!(
            "lazy restore: could not ask the coordinator at {host}:{port} to stop the rest of \
             the computation ({e}); stop it with dmtcp_command --kill and restart an earlier \
             checkpoint generation{earlier}"
        ),
    }
    // The processes of this restart on this host that have not joined the
    // coordinator yet (it cannot stop them): the restart's init kills them
    // all (this server too: last).
    crate::tree::stop_job();
}

/// The newest committed generation of `img`'s computation older than
/// `img`'s, in the checkpoint directory `img` lies in (in its generation's
/// directory, or at the top level).
fn earlier_generation(img: &Image) -> Option<std::path::PathBuf> {
    use dmtcp_common::generation as gen;
    let path = std::fs::canonicalize(&img.path).ok()?;
    let dir = path.parent()?;
    let in_gen = dir
        .file_name()
        .and_then(|n| gen::parse_name(&n.to_string_lossy()))
        .is_some();
    let ckpt_dir = if in_gen { dir.parent()? } else { dir };
    let comp = gen::safe_comp(&img.meta.comp_id);
    gen::list(ckpt_dir)
        .into_iter()
        .filter(|f| !f.partial && f.comp == comp && f.generation < img.meta.generation)
        .map(|f| f.path)
        .next_back()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(addr: u64, len: u64, chunk: usize, off: u64) -> Seg {
        Seg {
            addr,
            len,
            chunk,
            off,
        }
    }

    #[test]
    fn cut_splits_runs_and_keeps_their_offsets() {
        let mut t = Todo(vec![seg(0x1000, 0x4000, 0, 0), seg(0x8000, 0x2000, 1, 0)].into());
        let taken = t.cut(0x2000, 0x3000);
        assert_eq!(taken, vec![seg(0x2000, 0x1000, 0, 0x1000)]);
        assert_eq!(
            t.0,
            vec![
                seg(0x1000, 0x1000, 0, 0),
                seg(0x3000, 0x2000, 0, 0x2000),
                seg(0x8000, 0x2000, 1, 0)
            ]
        );
        assert_eq!(t.find(0x3fff), Some(1));
        assert_eq!(t.find(0x2000), None);
        assert_eq!(t.find(0x9000), Some(2));
        assert_eq!(t.find(0xa000), None);
    }

    #[test]
    fn groups_are_whole_raw_chunks_adjacent_in_memory_and_file() {
        let k = 0x10000u64;
        let chunk = |addr: u64, file_off: u64, flags: u32| ChunkDesc {
            addr,
            len: k,
            file_off,
            stored_len: k,
            crc: 0,
            flags,
        };
        let chunks = vec![
            chunk(0x100000, 0x1000, 0),
            chunk(0x110000, 0x11000, 0),
            chunk(0x120000, 0x21000, 0),
            // Not next in the file.
            chunk(0x130000, 0x41000, 0),
            chunk(0x140000, 0x51000, 0),
            // In the next source image.
            chunk(0x150000, 0x61000, 1 << dmtcp_common::image::CHUNK_SRC_SHIFT),
        ];
        let segs: Vec<Seg> = (0..chunks.len())
            .map(|i| seg(chunks[i].addr, k, i, 0))
            .collect();
        assert_eq!(group_len(&segs, &chunks), 3);
        assert_eq!(group_len(&segs[3..], &chunks), 2);
        assert_eq!(group_len(&segs[5..], &chunks), 1);
        // A run cut by munmap is no longer a whole chunk: alone.
        let mut cut = segs.clone();
        cut[1] = seg(0x118000, k / 2, 1, k / 2);
        assert_eq!(group_len(&cut, &chunks), 1);
        assert_eq!(group_len(&cut[1..], &chunks), 1);
        // Compressed: alone.
        let mut z = chunks.clone();
        z[0].flags = dmtcp_common::image::CHUNK_ZSTD;
        assert_eq!(group_len(&segs, &z), 1);
        assert_eq!(group_len(&segs[1..], &z), 2);
    }

    #[test]
    fn claimed_runs_leave_the_todo_and_what_is_put_back_returns_in_order() {
        let k = 0x10000u64;
        let chunks: Vec<ChunkDesc> = (0..4u64)
            .map(|i| ChunkDesc {
                addr: 0x100000 + i * k,
                len: k,
                file_off: 0x1000 + i * k,
                stored_len: k,
                crc: 0,
                flags: if i == 3 {
                    dmtcp_common::image::CHUNK_ZSTD
                } else {
                    0
                },
            })
            .collect();
        let segs: Vec<Seg> = (0..4).map(|i| seg(chunks[i].addr, k, i, 0)).collect();
        let mut t = Todo(segs.clone().into());
        // From the second: it and the third (adjacent raw chunks), not the
        // compressed fourth.
        let c = t.claim(1, &chunks);
        assert_eq!(c, vec![segs[1], segs[2]]);
        assert_eq!(t.0, vec![segs[0], segs[3]]);
        assert_eq!(t.find(segs[2].addr), None);
        // A fill that stopped in the third chunk puts back its rest.
        let rest = seg(segs[2].addr + 0x3000, k - 0x3000, 2, 0x3000);
        t.put_back(vec![rest]);
        assert_eq!(t.0, vec![segs[0], rest, segs[3]]);
        assert_eq!(t.find(segs[2].addr + 0x3000), Some(1));
        assert_eq!(t.claim(2, &chunks), vec![segs[3]]);
        assert_eq!(t.claim(0, &chunks), vec![segs[0]]);
    }

    #[test]
    fn moved_runs_follow_mremap() {
        let mut t = Todo(vec![seg(0x1000, 0x2000, 0, 0), seg(0x10000, 0x1000, 1, 0)].into());
        // Half of the first run moves above the second; the second is overwritten.
        t.moved(0x2000, 0x10000, 0x1000);
        assert_eq!(
            t.0,
            vec![seg(0x1000, 0x1000, 0, 0), seg(0x10000, 0x1000, 0, 0x1000)]
        );
    }
}
