//! Suspending, resuming and re-creating threads.
//!
//! At checkpoint time the checkpoint thread lists /proc/self/task and sends
//! the checkpoint signal to every thread that is not one of ours. Each
//! thread's handler claims a slot, records its kernel-side state (thread
//! pointer, clear-child-tid address, robust futex list, alternate signal
//! stack, name), saves its context with `save_and_call` and blocks on a futex
//! until the epoch changes. Everything here that runs in the handler is
//! async-signal-safe: raw syscalls and atomics only, no allocation, no lock.

use super::arch::{self, Ctx};
use core::cell::UnsafeCell;
use core::ffi::c_void;
use core::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering::*};
use dmtcp_sys::{nr, syscall3, syscall6};

/// Most threads a process may have at checkpoint time.
pub const MAX_THREADS: usize = 4096;

/// Slot kinds.
pub const KIND_FREE: u32 = 0;
pub const KIND_USER: u32 = 1;
pub const KIND_CKPT: u32 = 2;
pub const KIND_WRITER: u32 = 3;

/// Per-thread state recorded at checkpoint time.
pub struct Slot {
    pub kind: AtomicU32,
    pub tid: AtomicI32,
    pub ctx: UnsafeCell<Ctx>,
    pub fs: AtomicU64,
    pub tid_addr: AtomicU64,
    pub robust_head: AtomicU64,
    pub robust_len: AtomicU64,
    pub alt_sp: AtomicU64,
    pub alt_size: AtomicU64,
    pub alt_flags: AtomicI32,
    pub name: UnsafeCell<[u8; 16]>,
    /// Stack range of our own threads (0 for user threads).
    pub stack_lo: AtomicU64,
    pub stack_hi: AtomicU64,
    /// Signals pending for the thread at checkpoint time (its own and the process's).
    pub pending: AtomicU64,
}

// SAFETY: the UnsafeCell fields are written only by the slot's own thread
// while the checkpoint thread waits for it (synchronised by the SUSPENDED
// counter), and read by the restart entry when a single thread runs.
unsafe impl Sync for Slot {}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: Slot = Slot {
    kind: AtomicU32::new(KIND_FREE),
    tid: AtomicI32::new(0),
    ctx: UnsafeCell::new(Ctx {
        rbx: 0,
        rbp: 0,
        r12: 0,
        r13: 0,
        r14: 0,
        r15: 0,
        rsp: 0,
        rip: 0,
        mxcsr: 0,
        fpucw: 0,
    }),
    fs: AtomicU64::new(0),
    tid_addr: AtomicU64::new(0),
    robust_head: AtomicU64::new(0),
    robust_len: AtomicU64::new(0),
    alt_sp: AtomicU64::new(0),
    alt_size: AtomicU64::new(0),
    alt_flags: AtomicI32::new(0),
    name: UnsafeCell::new([0; 16]),
    stack_lo: AtomicU64::new(0),
    stack_hi: AtomicU64::new(0),
    pending: AtomicU64::new(0),
};

/// All slots: first our own threads (fixed), then user threads (claimed per checkpoint).
pub static SLOTS: [Slot; MAX_THREADS] = [EMPTY; MAX_THREADS];
/// Slots used by our own threads (checkpoint thread and writers).
pub static OWN: AtomicUsize = AtomicUsize::new(0);
/// Slots in use during the current checkpoint.
pub static NSLOTS: AtomicUsize = AtomicUsize::new(0);
/// User threads that reached the suspended state.
pub static SUSPENDED: AtomicU32 = AtomicU32::new(0);
/// Changes each time suspended threads are released.
pub static EPOCH: AtomicU32 = AtomicU32::new(0);
/// True between the first checkpoint signal and the release.
pub static ACTIVE: AtomicBool = AtomicBool::new(false);
/// Set when more threads than MAX_THREADS tried to suspend.
pub static OVERFLOW: AtomicBool = AtomicBool::new(false);
/// Signals pending for the whole process at checkpoint time.
pub static SHARED_PENDING: AtomicU64 = AtomicU64::new(0);
/// The checkpoint signal number.
pub static CKPT_SIGNAL: AtomicI32 = AtomicI32::new(12);

/// In a forked child (one thread): forget every slot of the parent's threads.
pub fn reset_after_fork() {
    let n = OWN.load(SeqCst).max(NSLOTS.load(SeqCst)).min(MAX_THREADS);
    for s in &SLOTS[..n] {
        s.kind.store(KIND_FREE, SeqCst);
        s.tid.store(0, SeqCst);
        s.stack_lo.store(0, SeqCst);
        s.stack_hi.store(0, SeqCst);
    }
    // The child's one thread is new; its tid is its pid.
    for e in &PTIDS {
        e.fs.store(0, SeqCst);
    }
    OWN.store(0, SeqCst);
    NSLOTS.store(0, SeqCst);
    SUSPENDED.store(0, SeqCst);
    ACTIVE.store(false, SeqCst);
    OVERFLOW.store(false, SeqCst);
}

/// Thread ids of every slot in use (the threads a restart re-creates),
/// as the program knows them. Also forgets the program tids of threads
/// that are gone (checkpoint thread, user threads suspended).
pub fn slot_tids() -> Vec<i32> {
    let n = NSLOTS.load(SeqCst).max(OWN.load(SeqCst)).min(MAX_THREADS);
    let live = &SLOTS[..n];
    for e in &PTIDS {
        let fs = e.fs.load(SeqCst);
        if fs != 0
            && !live
                .iter()
                .any(|s| s.kind.load(SeqCst) != KIND_FREE && s.fs.load(SeqCst) == fs)
        {
            e.fs.store(0, SeqCst);
        }
    }
    live.iter()
        .filter(|s| s.kind.load(SeqCst) != KIND_FREE)
        .map(program_tid)
        .collect()
}

/// The tid the program knows for a thread, and the thread's real one now:
/// they differ after a restart without a pid namespace (new tids). Kept by
/// thread pointer (the address of glibc's thread control block, which a
/// restart keeps), since slots are handed out afresh every round.
struct ProgramTid {
    /// Thread pointer (0: free entry).
    fs: AtomicU64,
    /// The tid the program knows.
    virt: AtomicI32,
    /// The thread's real tid when last seen.
    real: AtomicI32,
}

static PTIDS: [ProgramTid; MAX_THREADS] = [const {
    ProgramTid {
        fs: AtomicU64::new(0),
        virt: AtomicI32::new(0),
        real: AtomicI32::new(0),
    }
}; MAX_THREADS];

/// In the checkpoint signal handler (async-signal-safe): the thread with
/// pointer `fs` and real tid `real` was seen. The same thread keeps its
/// program tid; a thread new since the last round (or one that reuses a
/// gone thread's control block: its real tid differs) gets its real tid.
fn note_program_tid(fs: u64, real: i32) {
    if fs == 0 {
        return;
    }
    if let Some(e) = PTIDS.iter().find(|e| e.fs.load(SeqCst) == fs) {
        if e.real.load(SeqCst) != real {
            e.virt.store(real, SeqCst);
            e.real.store(real, SeqCst);
        }
        return;
    }
    for e in &PTIDS {
        // Claimed first, then filled: only this thread reads its entry
        // before the checkpoint thread does, once every thread is
        // suspended. (Filled first, two threads claiming at once could
        // leave one's tid under the other's thread pointer.)
        if e.fs.load(SeqCst) == 0 && e.fs.compare_exchange(0, fs, SeqCst, SeqCst).is_ok() {
            e.virt.store(real, SeqCst);
            e.real.store(real, SeqCst);
            return;
        }
    }
}

/// The tid the program knows for the thread of `slot` (its real tid at
/// the checkpoint if none is recorded).
pub fn program_tid(slot: &Slot) -> i32 {
    let fs = slot.fs.load(SeqCst);
    PTIDS
        .iter()
        .find(|e| fs != 0 && e.fs.load(SeqCst) == fs)
        .map_or(slot.tid.load(SeqCst), |e| e.virt.load(SeqCst))
}

/// In the restart entry (raw code, no allocation): the thread of `slot`
/// was re-created with real tid `tid`.
pub fn note_recreated(slot: &Slot, tid: i32) {
    let fs = slot.fs.load(SeqCst);
    if let Some(e) = PTIDS.iter().find(|e| fs != 0 && e.fs.load(SeqCst) == fs) {
        e.real.store(tid, SeqCst);
    }
}

/// After a restart: (program tid, real tid) of every thread whose tid
/// changed.
pub fn changed_tids() -> Vec<(i32, i32)> {
    PTIDS
        .iter()
        .filter(|e| e.fs.load(SeqCst) != 0)
        .map(|e| (e.virt.load(SeqCst), e.real.load(SeqCst)))
        .filter(|(v, r)| v != r)
        .collect()
}

/// Claim a slot for one of our own threads (at start-up).
pub fn claim_own(kind: u32) -> &'static Slot {
    let i = OWN.fetch_add(1, SeqCst);
    assert!(i < 64, "too many internal threads");
    let s = &SLOTS[i];
    s.kind.store(kind, SeqCst);
    s.tid.store(dmtcp_sys::gettid(), SeqCst);
    s
}

/// Record the calling internal thread's stack range (its pages change
/// while images are written, so writers copy them before checksumming).
pub fn record_own_stack(slot: &Slot) {
    // SAFETY: querying the attributes of the calling (non-main) thread.
    unsafe {
        let mut attr: libc::pthread_attr_t = core::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) == 0 {
            let mut addr: *mut c_void = core::ptr::null_mut();
            let mut size: usize = 0;
            if libc::pthread_attr_getstack(&attr, &mut addr, &mut size) == 0 {
                slot.stack_lo.store(addr as u64, Relaxed);
                slot.stack_hi.store(addr as u64 + size as u64, Relaxed);
            }
            libc::pthread_attr_destroy(&mut attr);
        }
    }
}

/// Stack ranges of our own threads.
pub fn own_stacks() -> impl Iterator<Item = (u64, u64)> {
    SLOTS[..OWN.load(SeqCst)]
        .iter()
        .map(|s| (s.stack_lo.load(Relaxed), s.stack_hi.load(Relaxed)))
        .filter(|r| r.1 > r.0)
}

/// Is `tid` one of our own threads?
pub fn is_own(tid: i32) -> bool {
    SLOTS[..OWN.load(SeqCst)]
        .iter()
        .any(|s| s.tid.load(Relaxed) == tid)
}

/// Record the calling thread's kernel-side state in `slot`.
pub fn capture(slot: &Slot) {
    slot.tid.store(dmtcp_sys::gettid(), Relaxed);
    let mut v: u64 = 0;
    // SAFETY: ARCH_GET_FS writes one u64 to the given address.
    unsafe {
        syscall3(
            nr::ARCH_PRCTL,
            nr::ARCH_GET_FS,
            &mut v as *mut u64 as usize,
            0,
        )
    };
    slot.fs.store(v, Relaxed);
    note_program_tid(v, slot.tid.load(Relaxed));
    let mut a: u64 = 0;
    // SAFETY: PR_GET_TID_ADDRESS writes one pointer to the given address.
    let r = unsafe {
        syscall6(
            nr::PRCTL,
            nr::PR_GET_TID_ADDRESS,
            &mut a as *mut u64 as usize,
            0,
            0,
            0,
            0,
        )
    };
    slot.tid_addr.store(if r == 0 { a } else { 0 }, Relaxed);
    let (mut head, mut len) = (0u64, 0u64);
    // SAFETY: get_robust_list(0, ...) writes the caller's head pointer and length.
    let r = unsafe {
        syscall3(
            nr::GET_ROBUST_LIST,
            0,
            &mut head as *mut u64 as usize,
            &mut len as *mut u64 as usize,
        )
    };
    if r != 0 {
        head = 0;
    }
    slot.robust_head.store(head, Relaxed);
    slot.robust_len.store(len, Relaxed);
    let mut ss = libc::stack_t {
        ss_sp: core::ptr::null_mut(),
        ss_flags: 0,
        ss_size: 0,
    };
    // SAFETY: sigaltstack(NULL, &old) only writes `ss`.
    unsafe {
        syscall3(
            nr::SIGALTSTACK,
            0,
            &mut ss as *mut libc::stack_t as usize,
            0,
        )
    };
    slot.alt_sp.store(ss.ss_sp as u64, Relaxed);
    slot.alt_size.store(ss.ss_size as u64, Relaxed);
    slot.alt_flags.store(ss.ss_flags, Relaxed);
    // SAFETY: PR_GET_NAME writes at most 16 bytes; the slot is ours.
    unsafe {
        syscall6(
            nr::PRCTL,
            libc::PR_GET_NAME as usize,
            slot.name.get() as usize,
            0,
            0,
            0,
            0,
        )
    };
    capture_queued(slot);
    slot.pending.store(sigpending(), Relaxed);
}

/// Real-time signals queued for one thread, taken out (with their siginfo)
/// when it suspends and queued again at once, and again after a restart.
/// A fixed pool: the suspending thread runs in a signal handler.
const QPOOL: usize = 256;
struct QEntry {
    slot: AtomicUsize,
    info: UnsafeCell<[u64; 16]>,
}
// SAFETY: an entry's info is written once by the thread that claimed it
// (fetch_add on QUEUED_N), then read by that same thread after a restart.
unsafe impl Sync for QEntry {}
#[allow(clippy::declare_interior_mutable_const)]
const QEMPTY: QEntry = QEntry {
    slot: AtomicUsize::new(usize::MAX),
    info: UnsafeCell::new([0; 16]),
};
static QUEUED: [QEntry; QPOOL] = [QEMPTY; QPOOL];
static QUEUED_N: AtomicUsize = AtomicUsize::new(0);
const SI_TKILL: i32 = -6;

fn slot_index(slot: &Slot) -> usize {
    (slot as *const Slot as usize - SLOTS.as_ptr() as usize) / core::mem::size_of::<Slot>()
}

/// This thread's own pending signals and the process's, from
/// /proc/thread-self/status (raw syscalls, a stack buffer).
fn pending_split() -> Option<(u64, u64)> {
    let mut buf = [0u8; 4096];
    // SAFETY: open/read/close of a /proc file into our stack buffer.
    let n = unsafe {
        let fd = syscall3(
            nr::OPEN,
            c"/proc/thread-self/status".as_ptr() as usize,
            libc::O_RDONLY as usize | libc::O_CLOEXEC as usize,
            0,
        );
        if fd < 0 {
            return None;
        }
        let n = syscall3(nr::READ, fd as usize, buf.as_mut_ptr() as usize, buf.len());
        syscall3(nr::CLOSE, fd as usize, 0, 0);
        n
    };
    if n <= 0 {
        return None;
    }
    let text = &buf[..n as usize];
    let field = |name: &[u8]| -> Option<u64> {
        let at = text.windows(name.len()).position(|w| w == name)? + name.len();
        let mut v = 0u64;
        for &c in text[at..]
            .iter()
            .skip_while(|c| **c == b'\t' || **c == b' ')
            .take_while(|c| c.is_ascii_hexdigit())
        {
            v = v << 4 | (c as char).to_digit(16)? as u64;
        }
        Some(v)
    };
    Some((field(b"SigPnd:")?, field(b"ShdPnd:")?))
}

/// Queue `info` for the calling thread again: with its siginfo where the
/// kernel lets us (sigqueue-style codes), else as a plain tgkill.
fn requeue_own(info: &[u64; 16]) {
    let sig = info[0] as u32 as usize;
    let code = (info[1] & 0xffff_ffff) as u32 as i32;
    let (pid, tid) = (dmtcp_sys::getpid() as usize, dmtcp_sys::gettid() as usize);
    // SAFETY: rt_tgsigqueueinfo reads our 128-byte siginfo; tgkill takes numbers.
    unsafe {
        if code >= 0
            || code == SI_TKILL
            || syscall6(
                nr::RT_TGSIGQUEUEINFO,
                pid,
                tid,
                sig,
                info.as_ptr() as usize,
                0,
                0,
            ) < 0
        {
            syscall3(nr::TGKILL, pid, tid, sig);
        }
    }
}

/// Take the real-time signals queued for this thread alone (every
/// instance, in order) into the pool and queue them again at once.
fn capture_queued(slot: &Slot) {
    let Some((own, shared)) = pending_split() else {
        return;
    };
    let ckpt = CKPT_SIGNAL.load(Relaxed);
    let idx = slot_index(slot);
    for sig in 34..=64i32 {
        let bit = 1u64 << (sig - 1);
        // A signal queued for both the thread and the process: the kernel
        // would hand them out mixed; those keep the old treatment.
        if sig == ckpt || own & bit == 0 || shared & bit != 0 {
            continue;
        }
        let first = QUEUED_N.load(SeqCst);
        let zero = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        loop {
            let mut info = [0u64; 16];
            // SAFETY: rt_sigtimedwait reads our set and timeout, writes `info`.
            let r = unsafe {
                syscall6(
                    nr::RT_SIGTIMEDWAIT,
                    &bit as *const u64 as usize,
                    info.as_mut_ptr() as usize,
                    &zero as *const libc::timespec as usize,
                    8,
                    0,
                    0,
                )
            };
            if r != sig as isize {
                break;
            }
            let i = QUEUED_N.fetch_add(1, SeqCst);
            if i >= QPOOL {
                requeue_own(&info); // no room: it stays queued, its count may not survive a restart
                break;
            }
            // SAFETY: entry `i` is ours alone (claimed just now).
            unsafe { *QUEUED[i].info.get() = info };
            QUEUED[i].slot.store(idx, SeqCst);
        }
        for e in QUEUED
            .iter()
            .take(QUEUED_N.load(SeqCst).min(QPOOL))
            .skip(first)
        {
            if e.slot.load(SeqCst) == idx {
                // SAFETY: written above by this thread.
                let info = unsafe { *e.info.get() };
                if info[0] as u32 as i32 == sig {
                    requeue_own(&info);
                }
            }
        }
    }
}

/// The signals pending for the calling thread (its own and the process's).
pub fn sigpending() -> u64 {
    let mut set: u64 = 0;
    // SAFETY: rt_sigpending writes 8 bytes into `set`.
    unsafe { syscall3(nr::RT_SIGPENDING, &mut set as *mut u64 as usize, 8, 0) };
    set
}

/// glibc's rseq registration (glibc 2.35 and later register an rseq area
/// for every thread unless `glibc.pthread.rseq=0`): the area's offset from
/// the thread pointer, and whether glibc registered at all. Read at
/// start-up; a restored thread is a new kernel thread and must register
/// its area again (processes started without dmtcp_launch's environment,
/// by ssh or an MPI launcher, keep rseq on).
static RSEQ_OFFSET: core::sync::atomic::AtomicIsize = core::sync::atomic::AtomicIsize::new(0);
static RSEQ_ON: AtomicBool = AtomicBool::new(false);
/// The signature glibc registers with (x86_64).
const RSEQ_SIG: usize = 0x5305_3053;
/// The length glibc registers (struct rseq, as the kernel first defined it).
const RSEQ_LEN: usize = 32;

/// Learn glibc's rseq registration (start-up).
pub fn init_rseq() {
    // SAFETY: dlsym lookups of glibc's exported data symbols.
    let (size, offset) = unsafe {
        (
            libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_size".as_ptr()),
            libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_offset".as_ptr()),
        )
    };
    if size.is_null() || offset.is_null() {
        return;
    }
    // SAFETY: glibc's `const unsigned int __rseq_size` and `const ptrdiff_t __rseq_offset`.
    let (size, offset) = unsafe { (*(size as *const u32), *(offset as *const isize)) };
    if size > 0 {
        RSEQ_OFFSET.store(offset, SeqCst);
        RSEQ_ON.store(true, SeqCst);
    }
}

/// Register again the rseq area of the calling thread, whose thread pointer
/// is `fs` (after a restart; async-signal-safe).
pub fn reregister_rseq(fs: u64) {
    if !RSEQ_ON.load(Relaxed) || fs == 0 {
        return;
    }
    let area = (fs as isize + RSEQ_OFFSET.load(Relaxed)) as usize;
    // SAFETY: the area is in this thread's restored TLS block; no critical
    // section is under way on a thread that was suspended in our handler,
    // so its rseq_cs (offset 8) is cleared before the kernel reads it.
    unsafe {
        core::ptr::write_volatile((area + 8) as *mut u64, 0);
        syscall6(nr::RSEQ, area, RSEQ_LEN, 0, RSEQ_SIG, 0, 0);
    }
}

/// Re-apply, after a restart, the per-thread kernel state saved by [`capture`]
/// (the thread pointer and tid address were given to clone already).
pub fn reapply(slot: &Slot) {
    slot.tid.store(dmtcp_sys::gettid(), Relaxed);
    reregister_rseq(slot.fs.load(Relaxed));
    let head = slot.robust_head.load(Relaxed);
    if head != 0 {
        // SAFETY: the list head lives in restored memory at the same address.
        unsafe {
            syscall3(
                nr::SET_ROBUST_LIST,
                head as usize,
                slot.robust_len.load(Relaxed) as usize,
                0,
            )
        };
    }
    let sp = slot.alt_sp.load(Relaxed);
    if sp != 0 && slot.alt_flags.load(Relaxed) & libc::SS_DISABLE == 0 {
        let ss = libc::stack_t {
            ss_sp: sp as *mut c_void,
            ss_flags: 0,
            ss_size: slot.alt_size.load(Relaxed) as usize,
        };
        // SAFETY: re-installing the alternate stack the thread had; its memory is restored.
        unsafe { syscall3(nr::SIGALTSTACK, &ss as *const libc::stack_t as usize, 0, 0) };
    }
    // SAFETY: PR_SET_NAME reads a NUL-terminated name of at most 16 bytes.
    unsafe {
        syscall6(
            nr::PRCTL,
            libc::PR_SET_NAME as usize,
            slot.name.get() as usize,
            0,
            0,
            0,
            0,
        )
    };
    // Signals that were pending for this thread alone are raised again (the
    // thread blocks everything until it resumes, so they wait as before).
    let ckpt_bit = 1u64 << (CKPT_SIGNAL.load(Relaxed) - 1);
    let mut own = slot.pending.load(Relaxed) & !SHARED_PENDING.load(Relaxed) & !ckpt_bit;
    // Queued real-time signals: every instance, with its value.
    let idx = slot_index(slot);
    for e in QUEUED.iter().take(QUEUED_N.load(SeqCst).min(QPOOL)) {
        if e.slot.load(SeqCst) == idx {
            // SAFETY: written by this thread before the checkpoint.
            let info = unsafe { *e.info.get() };
            own &= !(1u64 << ((info[0] as u32).saturating_sub(1)));
            requeue_own(&info);
        }
    }
    let (pid, tid) = (dmtcp_sys::getpid(), dmtcp_sys::gettid());
    for sig in 1..=64usize {
        if own & (1u64 << (sig - 1)) != 0 {
            // SAFETY: tgkill to the calling thread.
            unsafe { syscall3(nr::TGKILL, pid as usize, tid as usize, sig) };
        }
    }
}

/// Block until the epoch differs from `seen`.
pub fn wait_epoch(seen: u32) {
    while EPOCH.load(SeqCst) == seen {
        dmtcp_sys::futex_wait(&EPOCH, seen, 0);
    }
}

extern "C" fn suspended_wait(arg: *mut c_void) -> u64 {
    SUSPENDED.fetch_add(1, SeqCst);
    dmtcp_sys::futex_wake(&SUSPENDED, 1);
    wait_epoch(arg as usize as u32);
    0
}

/// The checkpoint signal handler (async-signal-safe).
pub extern "C" fn on_ckpt_signal(sig: i32, info: *mut libc::siginfo_t, uc: *mut c_void) {
    if !ACTIVE.load(SeqCst) {
        // Not a checkpoint: the program's own use of this signal.
        super::sigwrap::forward(sig, info, uc);
        return;
    }
    // SAFETY: errno is this thread's; preserved around our syscalls.
    let errno = unsafe { *libc::__errno_location() };
    if super::vdso::defer(uc) {
        // Inside the vDSO: signalled again once out of it.
        // SAFETY: as above.
        unsafe { *libc::__errno_location() = errno };
        return;
    }
    let seen = EPOCH.load(SeqCst);
    let i = NSLOTS.fetch_add(1, SeqCst);
    if i >= MAX_THREADS {
        OVERFLOW.store(true, SeqCst);
        suspended_wait(seen as usize as *mut c_void);
    } else {
        let slot = &SLOTS[i];
        slot.kind.store(KIND_USER, SeqCst);
        capture(slot);
        // SAFETY: the slot's ctx stays in static memory, part of every image.
        let r = unsafe {
            arch::save_and_call(slot.ctx.get(), suspended_wait, seen as usize as *mut c_void)
        };
        if r != 0 {
            // Restarted: we are a fresh kernel thread resuming the old context.
            reapply(slot);
            wait_epoch(seen);
        }
        super::plugin::run_user(super::plugin::Event::ThreadResume);
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

/// Install the checkpoint signal handler.
pub fn install_handler(sig: i32) -> std::io::Result<()> {
    CKPT_SIGNAL.store(sig, SeqCst);
    // SAFETY: a zeroed sigaction is valid; we fill handler, flags and mask.
    unsafe {
        let mut sa: libc::sigaction = core::mem::zeroed();
        sa.sa_sigaction = on_ckpt_signal as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        libc::sigfillset(&mut sa.sa_mask);
        if super::sigwrap::real_sigaction(sig, &sa) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    super::sigwrap::activate();
    Ok(())
}

/// Block every signal in the calling (internal) thread (raw syscall: the
/// libc entry points are wrapped to keep the checkpoint signal unblocked).
pub fn block_all_signals() {
    let all: u64 = !0;
    // SAFETY: rt_sigprocmask on the caller's own mask with an 8-byte set.
    unsafe {
        syscall6(
            nr::RT_SIGPROCMASK,
            libc::SIG_SETMASK as usize,
            &all as *const u64 as usize,
            0,
            8,
            0,
            0,
        )
    };
}

/// List the thread ids of this process into `out`; returns how many.
fn list_tasks(out: &mut [i32]) -> usize {
    // SAFETY: NUL-terminated literal path.
    let fd = unsafe {
        syscall3(
            nr::OPEN,
            c"/proc/self/task".as_ptr() as usize,
            libc::O_RDONLY as usize | libc::O_DIRECTORY as usize | nr::O_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return 0;
    }
    let mut n = 0;
    let mut buf = [0u8; 4096];
    dmtcp_sys::for_each_dirent(fd as i32, &mut buf, |name| {
        if let Some(tid) = dmtcp_sys::parse_decimal(name) {
            if n < out.len() {
                out[n] = tid;
                n += 1;
            }
        }
    });
    // SAFETY: closing our fd.
    unsafe { syscall3(nr::CLOSE, fd as usize, 0, 0) };
    n
}

/// `PF_USER_WORKER` of the kernel's task flags: a thread the kernel runs
/// inside the process for its own work (KVM's NX-huge-page recovery
/// worker `kvm-nx-lpage-recovery`, io_uring's `iou-wrk-*` and `iou-sqp-*`,
/// vhost workers). It never returns to user space, so it never runs the
/// checkpoint signal's handler (it blocks every signal), and it is not the
/// program's to save: the kernel makes it again for the new objects.
const PF_USER_WORKER: u64 = 0x4000;

/// Is `tid` a kernel worker thread of this process (see [`PF_USER_WORKER`])?
/// Reads the flags field (the 9th) of /proc/self/task/<tid>/stat with raw
/// system calls into a stack buffer.
fn is_kernel_worker(tid: i32) -> bool {
    let mut path = [0u8; 48];
    let prefix = b"/proc/self/task/";
    path[..prefix.len()].copy_from_slice(prefix);
    let mut n = prefix.len();
    let mut digits = [0u8; 10];
    let mut d = 0;
    let mut t = tid as u32;
    loop {
        digits[d] = b'0' + (t % 10) as u8;
        d += 1;
        t /= 10;
        if t == 0 {
            break;
        }
    }
    while d > 0 {
        d -= 1;
        path[n] = digits[d];
        n += 1;
    }
    path[n..n + 6].copy_from_slice(b"/stat\0");
    // SAFETY: a NUL-terminated path in our buffer.
    let fd = unsafe {
        syscall3(
            nr::OPEN,
            path.as_ptr() as usize,
            libc::O_RDONLY as usize | nr::O_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return false;
    }
    let mut buf = [0u8; 1024];
    // SAFETY: reading into our buffer.
    let got = unsafe { syscall3(nr::READ, fd as usize, buf.as_mut_ptr() as usize, buf.len()) };
    // SAFETY: closing our fd.
    unsafe { syscall3(nr::CLOSE, fd as usize, 0, 0) };
    if got <= 0 {
        return false;
    }
    let text = &buf[..got as usize];
    // The name (field 2) may hold spaces and parentheses: count fields
    // from the last ')'. Field 3 (the state) follows it.
    let Some(close) = text.iter().rposition(|&c| c == b')') else {
        return false;
    };
    let flags = text[close + 1..]
        .split(|&c| c == b' ')
        .filter(|f| !f.is_empty())
        .nth(6)
        .and_then(|f| core::str::from_utf8(f).ok())
        .and_then(|f| f.parse::<u64>().ok())
        .unwrap_or(0);
    flags & PF_USER_WORKER != 0
}

/// Suspend every user thread. Returns the number suspended. Called by the
/// checkpoint thread; allocates only before any signal is sent. Kernel
/// worker threads of the process ([`is_kernel_worker`]) are left alone.
pub fn suspend_all() -> usize {
    let pid = dmtcp_sys::getpid();
    let sig = CKPT_SIGNAL.load(SeqCst);
    let mut signalled: Vec<i32> = Vec::with_capacity(MAX_THREADS);
    let mut workers: Vec<i32> = Vec::with_capacity(64);
    let mut tasks = vec![0i32; MAX_THREADS * 2];
    SUSPENDED.store(0, SeqCst);
    OVERFLOW.store(false, SeqCst);
    for e in QUEUED.iter().take(QUEUED_N.load(SeqCst).min(QPOOL)) {
        e.slot.store(usize::MAX, SeqCst);
    }
    QUEUED_N.store(0, SeqCst);
    NSLOTS.store(OWN.load(SeqCst), SeqCst);
    super::vdso::begin_round();
    ACTIVE.store(true, SeqCst);
    let mut waited_ms = 0u64;
    loop {
        let n = list_tasks(&mut tasks);
        let mut new = 0;
        for &tid in &tasks[..n] {
            if is_own(tid) || signalled.contains(&tid) || workers.contains(&tid) {
                continue;
            }
            if is_kernel_worker(tid) {
                if workers.len() < workers.capacity() {
                    workers.push(tid);
                }
                continue;
            }
            if signalled.len() < signalled.capacity() && dmtcp_sys::tgkill(pid, tid, sig) == 0 {
                signalled.push(tid);
                new += 1;
            }
        }
        // Wait for the signalled threads, forgetting ones that exited.
        let mut deferred = 0;
        loop {
            deferred += super::vdso::take_deferred(&mut signalled);
            let got = SUSPENDED.load(SeqCst) as usize;
            let n = list_tasks(&mut tasks);
            let alive = signalled.iter().filter(|t| tasks[..n].contains(t)).count();
            let exited = signalled.len() - alive;
            if got + exited >= signalled.len() {
                break;
            }
            dmtcp_sys::futex_wait(&SUSPENDED, got as u32, 5_000_000);
            waited_ms += 5;
            if waited_ms.is_multiple_of(10_000) {
                super::log::warn(format_args!(
                    "still waiting for {} thread(s) to suspend (do they block signal {sig}?)",
                    signalled.len() - got - exited
                ));
            }
        }
        let retry = super::vdso::pause_if(deferred);
        if new == 0 && !retry {
            break;
        }
    }
    SUSPENDED.load(SeqCst) as usize
}

/// Release suspended threads.
pub fn resume_all() {
    ACTIVE.store(false, SeqCst);
    EPOCH.fetch_add(1, SeqCst);
    dmtcp_sys::futex_wake(&EPOCH, i32::MAX as u32);
}
