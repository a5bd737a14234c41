//! The page server of a lazy restore of compressed chunks.
//!
//! Where this process may use userfaultfd fully (root, or
//! `vm.unprivileged_userfaultfd=1`, or `CAP_SYS_PTRACE`), compressed chunks
//! of anonymous private memory are not decompressed before the program
//! resumes: the streamer checks their CRC over the stored bytes like every
//! other chunk (a damaged image is still refused before anything starts),
//! and the restorer registers their ranges with a userfaultfd it hands to
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
//! With `dmtcp_restart --verify on-fill` (`DMTCP_RESTART_VERIFY=on-fill`)
//! the raw chunks of anonymous private memory are served the same way
//! instead of being mapped from the image, and the streamer does not read
//! them before the program resumes: this server checks each chunk's CRC
//! when it reads it, before any of its pages goes into the process. A
//! cold restart then does not wait for the whole image to be read; a
//! damaged chunk stops the restarted process (SIGKILL, with the reason on
//! stderr) instead of refusing the restart before it starts.
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

/// The runs still to fill, sorted by address, never overlapping.
struct Todo(Vec<Seg>);

impl Todo {
    fn find(&self, addr: u64) -> Option<usize> {
        let i = self.0.partition_point(|s| s.addr + s.len <= addr);
        self.0.get(i).filter(|s| s.addr <= addr).map(|_| i)
    }

    /// Take `[start, end)` out; the parts taken, in address order.
    fn cut(&mut self, start: u64, end: u64) -> Vec<Seg> {
        let mut taken = Vec::new();
        let mut kept = Vec::with_capacity(self.0.len() + 2);
        for s in self.0.drain(..) {
            let (a, b) = (s.addr, s.addr + s.len);
            if b <= start || a >= end {
                kept.push(s);
                continue;
            }
            if a < start {
                kept.push(Seg {
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
                kept.push(Seg {
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
            self.0.push(Seg {
                addr: s.addr - from + to,
                ..s
            });
        }
        self.0.sort_unstable_by_key(|s| s.addr);
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
fn group_len(segs: &[Seg], chunks: &[ChunkDesc]) -> usize {
    let whole = |s: &Seg| s.off == 0 && s.len == chunks[s.chunk].len;
    let raw =
        |c: &ChunkDesc| c.flags & dmtcp_common::image::CHUNK_ZSTD == 0 && c.stored_len == c.len;
    let Some(first) = segs.first() else {
        return 0;
    };
    if !whole(first) || !raw(&chunks[first.chunk]) {
        return 1;
    }
    let (mut n, mut bytes) = (1, first.len);
    while n < segs.len() && bytes < GROUP_BYTES {
        let (p, s) = (&segs[n - 1], &segs[n]);
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
        if len == 0 || off % 4096 != 0 || !inside {
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

/// Fill the `n` runs of `todo` from `i` ([`group_len`]) with one read of
/// their bytes into `buf`, each chunk's CRC checked, and one copy; what a
/// copy stopped short of stays in `todo`, run by run.
#[allow(clippy::too_many_arguments)]
fn fill_group(
    img: &Image,
    chunks: &[ChunkDesc],
    fd: i32,
    todo: &mut Todo,
    i: usize,
    n: usize,
    buf: &mut Vec<u8>,
    pid: i32,
) -> Result<(), Stop> {
    use std::os::unix::fs::FileExt;
    let segs: Vec<Seg> = todo.0[i..i + n].to_vec();
    let first = &chunks[segs[0].chunk];
    let total: u64 = segs.iter().map(|s| s.len).sum();
    let src = img.file_of(first);
    // The stored bytes where they lie in the page cache (no copy into a
    // buffer), else read.
    let mapped = MappedRange::new(src, first.file_off, total);
    let bytes: &[u8] = match &mapped {
        Some(m) => m.bytes(),
        None => {
            buf.resize(total as usize, 0);
            if let Err(e) = src.file().read_exact_at(buf, first.file_off) {
                dmtcp_common::log_error!(
                    "lazy restore: reading {} bytes at offset {} of {}: {e}; the restarted \
                     process {pid} is stopped before it could use that memory",
                    total,
                    first.file_off,
                    src.path.display()
                );
                return Err(Stop::Failed(libc::EIO));
            }
            buf
        }
    };
    let run = segs.iter().map(|s| &chunks[s.chunk]);
    if let Err(e) = crate::restart::check_stored_run(img, run, bytes) {
        dmtcp_common::log_error!(
            "lazy restore: {e}; the restarted process {pid} is stopped before it could use \
             that memory (restart an earlier checkpoint generation)"
        );
        return Err(Stop::Failed(libc::EIO));
    }
    let mut all = Seg {
        addr: segs[0].addr,
        len: total,
        chunk: segs[0].chunk,
        off: 0,
    };
    let r = fill(fd, &mut all, bytes);
    let left = all.addr..all.addr + all.len;
    let kept: Vec<Seg> = segs
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
    todo.0.splice(i..i + n, kept);
    r
}

/// Serve the faults of process `pid` on the ranges of `chunks` (of `img`;
/// each chunk's CRC is checked again as it is read) and fill them all; the exit status of the streamer.
pub fn serve(img: &Image, sock: i32, chunks: Vec<ChunkDesc>, pid: i32) -> i32 {
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
    let mut todo = Todo(
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
    );
    let (mut on_fault, mut in_background) = (0u64, 0u64);
    let mut asked = false;
    let mut retry: Vec<u64> = Vec::new();
    let (mut cached, mut out, mut scratch) = (usize::MAX, Vec::new(), Vec::new());
    let mut gone = false;
    // The background fill goes in address order, which is the order of
    // `chunks` and, mostly, of the image file: the kernel reads ahead of it.
    let mut ahead = crate::restart::ReadAhead::default();
    let mut group = Vec::new();
    let mut fill_seg = |i: usize, todo: &mut Todo| -> Result<(), Stop> {
        let n = group_len(&todo.0[i..], &chunks);
        if n > 1 {
            let last = todo.0[i + n - 1].chunk;
            ahead.advance(img, &chunks, last + 1, &|_| false);
            return fill_group(img, &chunks, fd, todo, i, n, &mut group, pid);
        }
        let mut seg = todo.0[i];
        if cached != seg.chunk {
            cached = usize::MAX;
            ahead.advance(img, &chunks, seg.chunk + 1, &|_| false);
            if let Err(e) = img.read_chunk(&chunks[seg.chunk], &mut out, &mut scratch) {
                dmtcp_common::log_error!(
                    "lazy restore: {e}; the restarted process {pid} is stopped before it could use \
                     that memory (restart an earlier checkpoint generation)"
                );
                return Err(Stop::Failed(libc::EIO));
            }
            cached = seg.chunk;
        }
        let r = fill(fd, &mut seg, &out);
        if seg.len == 0 {
            todo.0.remove(i);
        } else {
            todo.0[i] = seg;
        }
        r
    };
    while !todo.0.is_empty() && !gone {
        let busy = background || asked || !retry.is_empty();
        let mut pfd = [
            libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: sock,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: poll on our two fds.
        let n = unsafe { libc::poll(pfd.as_mut_ptr(), 2, if busy { 0 } else { -1 }) };
        if n < 0 && errno() != libc::EINTR {
            break;
        }
        if pfd[1].revents != 0 {
            let mut b = [0u8; 1];
            // SAFETY: reading one byte into our buffer.
            match unsafe { libc::read(sock, b.as_mut_ptr().cast(), 1) } {
                1 if b[0] == ASK_ALL => asked = true,
                // The process is gone (or exec'd: its memory with it).
                _ => break,
            }
        }
        let mut result = Ok(());
        if pfd[0].revents != 0 {
            loop {
                let mut m = uffd::Msg::default();
                // SAFETY: reading one message into our struct.
                let r = unsafe {
                    libc::read(
                        fd,
                        (&mut m as *mut uffd::Msg).cast(),
                        std::mem::size_of::<uffd::Msg>(),
                    )
                };
                if r != std::mem::size_of::<uffd::Msg>() as isize {
                    break;
                }
                match m.event {
                    uffd::EVENT_PAGEFAULT => retry.push(m.arg[1] & !4095),
                    uffd::EVENT_REMAP => todo.moved(m.arg[0], m.arg[1], m.arg[2]),
                    uffd::EVENT_REMOVE | uffd::EVENT_UNMAP => {
                        todo.cut(m.arg[0], m.arg[1]);
                    }
                    _ => {}
                }
            }
        }
        // Faults first, in the order they came.
        let faults = std::mem::take(&mut retry);
        for (k, &page) in faults.iter().enumerate() {
            let r = match todo.find(page) {
                Some(i) => {
                    on_fault += 1;
                    fill_seg(i, &mut todo)
                }
                None => zero_or_wake(fd, page),
            };
            if let Err(e) = r {
                retry.extend_from_slice(&faults[k..]);
                result = Err(e);
                break;
            }
        }
        if result.is_ok() && retry.is_empty() && (background || asked) && !todo.0.is_empty() {
            in_background += 1;
            result = fill_seg(0, &mut todo);
        }
        match result {
            Ok(()) | Err(Stop::Again) => {}
            Err(Stop::Gone) => gone = true,
            Err(Stop::Failed(e)) => {
                if e != libc::EIO {
                    dmtcp_common::log_error!(
                        "lazy restore: cannot fill the memory of the restarted process {pid} (errno {e}); it is stopped"
                    );
                }
                // SAFETY: stopping the process whose memory cannot be filled
                // (it would wait for this page for ever).
                unsafe { libc::kill(pid, libc::SIGKILL) };
                return 1;
            }
        }
    }
    let done = todo.0.is_empty();
    // SAFETY: closing the userfaultfd: the kernel lets go of the ranges,
    // whose pages are all in.
    unsafe { libc::close(fd) };
    if done {
        // SAFETY: one byte on our socket (the library reads it when it asks).
        unsafe { libc::write(sock, [ALL_IN].as_ptr().cast(), 1) };
    }
    if stats {
        eprintln!(
            "dmtcp_restart: lazy restore of {} chunks ({} compressed, {} MB): {on_fault} runs filled on a fault, {in_background} in the background, in {} ms{}",
            chunks.len(),
            chunks.iter().filter(|c| c.flags & dmtcp_common::image::CHUNK_ZSTD != 0).count(),
            chunks.iter().map(|c| c.len).sum::<u64>() >> 20,
            started.elapsed().as_millis(),
            if done { "" } else { " (the process went away first)" }
        );
    }
    0
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
        let mut t = Todo(vec![seg(0x1000, 0x4000, 0, 0), seg(0x8000, 0x2000, 1, 0)]);
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
    fn moved_runs_follow_mremap() {
        let mut t = Todo(vec![seg(0x1000, 0x2000, 0, 0), seg(0x10000, 0x1000, 1, 0)]);
        // Half of the first run moves above the second; the second is overwritten.
        t.moved(0x2000, 0x10000, 0x1000);
        assert_eq!(
            t.0,
            vec![seg(0x1000, 0x1000, 0, 0), seg(0x10000, 0x1000, 0, 0x1000)]
        );
    }
}
