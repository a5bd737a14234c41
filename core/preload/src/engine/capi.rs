//! The program interface of include/dmtcp.h: a program may ask for a
//! checkpoint, hold checkpoints off around a critical section, and learn
//! whether it resumed or restarted.
//!
//! These functions run on user threads, which may be suspended at any
//! instant of a checkpoint. They therefore take no lock the checkpoint
//! thread needs and allocate only inside a disabled section (during which
//! no checkpoint can start).

use core::cell::{Cell, UnsafeCell};
use core::sync::atomic::{
    compiler_fence, AtomicBool, AtomicI32, AtomicU32, AtomicUsize, Ordering::*,
};
use std::ffi::{c_char, c_int, CStr};

/// Return values, as in the header.
pub const AFTER_CHECKPOINT: c_int = 1;
pub const AFTER_RESTART: c_int = 2;

/// Threads inside a disabled section that have no flag of their own (see
/// "Disabled sections" below).
static DISABLE: AtomicU32 = AtomicU32::new(0);
/// 1 while a checkpoint is starting or running.
static PENDING: AtomicU32 = AtomicU32::new(0);
/// Bumped at the end of every checkpoint (and restart).
pub static EVENTS: AtomicU32 = AtomicU32::new(0);
static RESTARTS: AtomicU32 = AtomicU32::new(0);
static LAST_OK: AtomicU32 = AtomicU32::new(1);
static GENERATION: AtomicU32 = AtomicU32::new(0);
/// eventfd that wakes the checkpoint thread with a program's request.
pub static WAKE_FD: AtomicI32 = AtomicI32::new(-1);
/// Coordinator port (the host is in COORD_HOST).
pub static COORD_PORT: AtomicU32 = AtomicU32::new(0);

/// The fd number the wake-up eventfd lives at.
pub const WAKE_FD_NUM: i32 = super::fds::PROTECTED_FD_BASE + 3;

const DIR_MAX: usize = 4096;
struct Buf(UnsafeCell<[u8; DIR_MAX]>);
// SAFETY: written only inside a disabled section or by the checkpoint thread
// while no user code runs; readers copy or get a pointer, as DMTCP's does.
unsafe impl Sync for Buf {}
static CKPT_DIR: Buf = Buf(UnsafeCell::new([0; DIR_MAX]));
static COORD_HOST: Buf = Buf(UnsafeCell::new([0; DIR_MAX]));

thread_local! {
    static DEPTH: Cell<u32> = const { Cell::new(0) };
    /// How the thread's outermost disabled section was entered: its flag's
    /// index + 1, or 0 through the shared counter.
    static HELD: Cell<u32> = const { Cell::new(0) };
    static MY_FLAG: FlagSlot = const { FlagSlot(Cell::new(0)) };
}

// ------------------------------------------------------ Disabled sections
//
// Plugins hold checkpoints off around every call that touches state the
// checkpoint needs consistent (the IB plugin around each verb), so entering
// and leaving a section is on the data path and must cost next to nothing.
// A shared counter costs two locked instructions per section, and waking
// the checkpoint thread on every exit cost a system call (about 0.25 us in
// this VM, more than a whole verb). So each thread has a flag of its own
// (`FLAGS`), written only by itself with plain stores, and the checkpoint
// thread pays instead: it sets PENDING, then `membarrier(2)` makes every
// running thread of the process execute a full barrier, so afterwards every
// flag set before is visible to it and every thread entering later reads
// PENDING set; it then waits until no flag is set. This is the asymmetric
// fence of userspace RCU. Threads fall back on the shared counter (the old
// way) when membarrier is unavailable or all flags are taken.

/// Per-thread flags: non-zero while the thread is inside a disabled section.
const NFLAGS: usize = 1024;
static FLAGS: [AtomicU32; NFLAGS] = [const { AtomicU32::new(0) }; NFLAGS];
static FLAG_USED: [AtomicBool; NFLAGS] = [const { AtomicBool::new(false) }; NFLAGS];
/// Flags ever handed out (the checkpoint thread looks at FLAGS[..this]).
static FLAGS_HIGH: AtomicUsize = AtomicUsize::new(0);
/// membarrier(PRIVATE_EXPEDITED) is registered: flags may be handed out.
static FAST: AtomicBool = AtomicBool::new(false);
/// Bumped when a thread leaves a section while a checkpoint waits.
static EXITS: AtomicU32 = AtomicU32::new(0);
const NO_FLAG: u32 = u32::MAX;

/// A thread's flag (index + 1; 0 not yet chosen; NO_FLAG: shared counter),
/// given back when the thread exits.
struct FlagSlot(Cell<u32>);

impl Drop for FlagSlot {
    fn drop(&mut self) {
        let i = self.0.get();
        if i != 0 && i != NO_FLAG {
            FLAGS[i as usize - 1].store(0, Release);
            FLAG_USED[i as usize - 1].store(false, Release);
        }
    }
}

/// Start-up, after fork and at restart (a new address space): register
/// for `membarrier(PRIVATE_EXPEDITED)`; flags are used only if it works.
pub fn init_sections() {
    let ok = dmtcp_sys::membarrier(dmtcp_sys::nr::MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) == 0
        && dmtcp_sys::membarrier(dmtcp_sys::nr::MEMBARRIER_CMD_PRIVATE_EXPEDITED) == 0;
    if !ok && FLAGS_HIGH.load(SeqCst) > 0 {
        // Flags are in use (a restart into a kernel that refuses what the
        // first run allowed): keep them, begin_checkpoint falls back on a
        // slower barrier.
        return;
    }
    FAST.store(ok, SeqCst);
}

/// The calling thread's flag (index + 1), chosen on first use; 0: the
/// shared counter.
fn my_flag() -> u32 {
    let i = MY_FLAG.try_with(|f| {
        let i = f.0.get();
        if i != 0 {
            return i;
        }
        let mut got = NO_FLAG;
        if FAST.load(Relaxed) {
            for (k, u) in FLAG_USED.iter().enumerate() {
                if !u.load(Relaxed) && u.compare_exchange(false, true, AcqRel, Relaxed).is_ok() {
                    FLAGS_HIGH.fetch_max(k + 1, SeqCst);
                    got = k as u32 + 1;
                    break;
                }
            }
        }
        f.0.set(got);
        got
    });
    match i {
        Ok(i) if i != NO_FLAG => i,
        _ => 0,
    }
}

/// Tells a waiting checkpoint thread that a section ended.
fn wake_checkpoint() {
    EXITS.fetch_add(1, SeqCst);
    dmtcp_sys::futex_wake(&EXITS, i32::MAX as u32);
}

/// Is any thread inside a disabled section? (Checkpoint thread, after the
/// barrier.)
fn sections_busy() -> bool {
    let n = FLAGS_HIGH.load(SeqCst).min(NFLAGS);
    DISABLE.load(SeqCst) != 0 || FLAGS[..n].iter().any(|f| f.load(Acquire) != 0)
}

/// Makes every flag stored before it visible here (see above).
fn barrier() {
    if dmtcp_sys::membarrier(dmtcp_sys::nr::MEMBARRIER_CMD_PRIVATE_EXPEDITED) == 0
        || dmtcp_sys::membarrier(dmtcp_sys::nr::MEMBARRIER_CMD_GLOBAL) == 0
    {
        return;
    }
    // No membarrier at all: a store waits in a CPU's store buffer for
    // nanoseconds; the waits between two looks below are far longer.
    dmtcp_sys::sleep_ms(1);
}

fn put(buf: &Buf, s: &[u8]) {
    let n = s.len().min(DIR_MAX - 1);
    // SAFETY: see Buf's Sync note.
    unsafe {
        let b = &mut *buf.0.get();
        b[..n].copy_from_slice(&s[..n]);
        b[n] = 0;
    }
}

fn get(buf: &Buf) -> String {
    // SAFETY: the buffer always holds a NUL-terminated string.
    unsafe { CStr::from_ptr((*buf.0.get()).as_ptr() as *const c_char) }
        .to_string_lossy()
        .into_owned()
}

/// Record the checkpoint directory (start-up, restart, set_ckpt_dir).
pub fn set_dir(d: &str) {
    put(&CKPT_DIR, d.as_bytes());
}

/// The checkpoint directory as a NUL-terminated string in static memory.
pub fn dir_ptr() -> *const c_char {
    CKPT_DIR.0.get() as *const c_char
}

/// The checkpoint directory the next image goes to.
pub fn dir() -> String {
    get(&CKPT_DIR)
}

/// Record where the coordinator is (start-up and restart).
pub fn set_coordinator(host: &str, port: u16) {
    put(&COORD_HOST, host.as_bytes());
    COORD_PORT.store(port as u32, SeqCst);
}

/// After a restart, the coordinator's host (NUL-terminated, in static
/// memory) and port, which may differ from the environment the process
/// was started with; None if the process never restarted. No allocation
/// (exec wrappers in a vfork child read it).
pub fn coordinator_if_restarted() -> Option<(&'static [u8], u16)> {
    if RESTARTS.load(SeqCst) == 0 {
        return None;
    }
    // SAFETY: see Buf's Sync note; a NUL-terminated string in static memory.
    let host = unsafe { CStr::from_ptr((*COORD_HOST.0.get()).as_ptr() as *const c_char) };
    Some((host.to_bytes(), COORD_PORT.load(SeqCst) as u16))
}

/// Create the wake-up eventfd at its fixed number (start-up and restart).
pub fn open_wake_fd() {
    // SAFETY: eventfd and dup2 on fds we own.
    unsafe {
        let fd = libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK);
        if fd >= 0 {
            super::fdguard::dup_own(fd, WAKE_FD_NUM);
            libc::close(fd);
            WAKE_FD.store(WAKE_FD_NUM, SeqCst);
        }
    }
}

/// In a forked child: no disabled sections, no checkpoint under way (the
/// parent's threads, which held them, do not exist here).
pub fn reset_after_fork() {
    DISABLE.store(0, SeqCst);
    PENDING.store(0, SeqCst);
    DEPTH.with(|d| d.set(0));
    HELD.with(|h| h.set(0));
    let mine = MY_FLAG.try_with(|f| f.0.get()).unwrap_or(0);
    for (k, (f, u)) in FLAGS.iter().zip(&FLAG_USED).enumerate() {
        f.store(0, SeqCst);
        if k as u32 + 1 != mine {
            u.store(false, SeqCst);
        }
    }
    init_sections();
}

/// Drain the eventfd; true if a program asked for a checkpoint.
pub fn take_request() -> bool {
    let mut v: u64 = 0;
    // SAFETY: reading 8 bytes from our eventfd into `v`.
    let n = unsafe {
        libc::read(
            WAKE_FD.load(SeqCst),
            &mut v as *mut u64 as *mut libc::c_void,
            8,
        )
    };
    n == 8 && v > 0
}

/// Checkpoint thread: a checkpoint starts; wait for disabled sections to end.
pub fn begin_checkpoint() {
    PENDING.store(1, SeqCst);
    let mut wait_ms = 1u64;
    loop {
        let e = EXITS.load(SeqCst);
        barrier();
        if !sections_busy() {
            return;
        }
        // A thread leaving its section wakes us; the timeout covers one
        // that read PENDING just before we set it.
        dmtcp_sys::futex_wait(&EXITS, e, wait_ms * 1_000_000);
        wait_ms = (wait_ms * 2).min(50);
    }
}

/// The generation of this process's last round whose image a forked
/// writer writes, until the coordinator says how that round ended (0:
/// none waiting).
static UNSETTLED: AtomicU32 = AtomicU32::new(0);
/// The generation of this process's last forked round.
static FORKED_GEN: AtomicU32 = AtomicU32::new(0);
/// How the last forked round ended (1: committed).
static SETTLED_OK: AtomicU32 = AtomicU32::new(1);

/// Checkpoint thread, when the state is captured and a forked writer
/// writes the image: `dmtcp_checkpoint()` waits for [`settled`] before it
/// returns, so that, as without forked writers, the generation is
/// committed (or has failed) when it does.
pub fn forked_round(generation: u32) {
    FORKED_GEN.store(generation, SeqCst);
    UNSETTLED.store(generation, SeqCst);
}

/// The coordinator said how the forked round of `generation` ended (any
/// waiting round when `generation` is 0: the coordinator is gone, and
/// nothing will be committed by this process's account).
pub fn settled(generation: u32, commit: bool) {
    let u = UNSETTLED.load(SeqCst);
    if u != 0 && (generation == 0 || generation == u) {
        SETTLED_OK.store(commit as u32, SeqCst);
        UNSETTLED.store(0, SeqCst);
        dmtcp_sys::futex_wake(&UNSETTLED, i32::MAX as u32);
    }
}

/// Checkpoint thread: the checkpoint (or the restart) is over.
pub fn end_checkpoint(ok: bool, restarted: bool, generation: u32) {
    GENERATION.store(generation, SeqCst);
    LAST_OK.store(ok as u32, SeqCst);
    if restarted {
        RESTARTS.fetch_add(1, SeqCst);
    }
    EVENTS.fetch_add(1, SeqCst);
    PENDING.store(0, SeqCst);
    dmtcp_sys::futex_wake(&PENDING, i32::MAX as u32);
    dmtcp_sys::futex_wake(&EVENTS, i32::MAX as u32);
}

#[no_mangle]
pub extern "C" fn dmtcp_is_enabled() -> c_int {
    super::start::is_enabled() as c_int
}

#[no_mangle]
pub extern "C" fn dmtcp_checkpoint() -> c_int {
    if !super::start::is_enabled() || DEPTH.with(|d| d.get()) > 0 {
        return -1;
    }
    let (e0, r0) = (EVENTS.load(SeqCst), RESTARTS.load(SeqCst));
    let one: u64 = 1;
    // SAFETY: writing 8 bytes to our eventfd.
    if unsafe {
        libc::write(
            WAKE_FD.load(SeqCst),
            &one as *const u64 as *const libc::c_void,
            8,
        )
    } != 8
    {
        return -1;
    }
    wait_change(&EVENTS, e0);
    if RESTARTS.load(SeqCst) != r0 {
        return AFTER_RESTART;
    }
    if LAST_OK.load(SeqCst) != 1 {
        return -1;
    }
    // A forked writer still writes this round's image: wait until the
    // generation is committed (or not), as the image is on disk when this
    // returns without forked writers.
    let g = GENERATION.load(SeqCst);
    if FORKED_GEN.load(SeqCst) == g {
        wait_change(&UNSETTLED, g);
        if RESTARTS.load(SeqCst) != r0 {
            return AFTER_RESTART;
        }
        if SETTLED_OK.load(SeqCst) != 1 {
            return -1;
        }
    }
    AFTER_CHECKPOINT
}

/// Wait until `a` holds something other than `v`.
fn wait_change(a: &AtomicU32, v: u32) {
    while a.load(SeqCst) == v {
        dmtcp_sys::futex_wait(a, v, 0);
    }
}

#[no_mangle]
pub extern "C" fn dmtcp_disable_ckpt() -> c_int {
    if DEPTH.with(|d| d.get()) > 0 {
        DEPTH.with(|d| d.set(d.get() + 1));
        return 1;
    }
    let flag = my_flag();
    loop {
        match flag {
            0 => {
                DISABLE.fetch_add(1, SeqCst);
                if PENDING.load(SeqCst) == 0 {
                    DEPTH.with(|d| d.set(1));
                    HELD.with(|h| h.set(0));
                    return 1;
                }
                DISABLE.fetch_sub(1, SeqCst);
            }
            i => {
                let f = &FLAGS[i as usize - 1];
                // Only this thread writes its flag, with plain stores; a
                // count, not a bit, so that a signal handler's section
                // inside this one leaves it as it found it.
                let v = f.load(Relaxed);
                f.store(v + 1, Relaxed);
                // Only the compiler is kept from moving the load above the
                // store: the checkpoint thread's membarrier is the fence.
                compiler_fence(SeqCst);
                if PENDING.load(Relaxed) == 0 {
                    DEPTH.with(|d| d.set(1));
                    HELD.with(|h| h.set(i));
                    return 1;
                }
                f.store(v, Release);
            }
        }
        // A checkpoint is starting: step back and let it pass.
        wake_checkpoint();
        while PENDING.load(SeqCst) != 0 {
            dmtcp_sys::futex_wait(&PENDING, 1, 0);
        }
    }
}

#[no_mangle]
pub extern "C" fn dmtcp_enable_ckpt() -> c_int {
    let depth = DEPTH.with(|d| d.get());
    if depth == 0 {
        return -1;
    }
    DEPTH.with(|d| d.set(depth - 1));
    if depth == 1 {
        let held = HELD.with(|h| h.get());
        if held != 0 {
            let f = &FLAGS[held as usize - 1];
            f.store(f.load(Relaxed).saturating_sub(1), Release);
            compiler_fence(SeqCst);
        } else {
            DISABLE.fetch_sub(1, SeqCst);
        }
        // Only a checkpoint thread that set PENDING waits: no system call
        // on the path every wrapped verb takes. (A PENDING read too early
        // here costs the checkpoint thread one short timeout, see
        // begin_checkpoint.)
        if PENDING.load(Relaxed) != 0 {
            wake_checkpoint();
        }
    }
    1
}

#[no_mangle]
pub extern "C" fn dmtcp_get_ckpt_dir() -> *const c_char {
    CKPT_DIR.0.get() as *const c_char
}

/// # Safety
/// `dir` must be a NUL-terminated string (or null, which fails).
#[no_mangle]
pub unsafe extern "C" fn dmtcp_set_ckpt_dir(dir: *const c_char) -> c_int {
    if dir.is_null() {
        return -1;
    }
    // SAFETY: the caller passes a NUL-terminated string.
    let s = unsafe { CStr::from_ptr(dir) }.to_bytes();
    if s.is_empty() || s.len() >= DIR_MAX {
        return -1;
    }
    dmtcp_disable_ckpt();
    put(&CKPT_DIR, s);
    dmtcp_enable_ckpt();
    1
}

#[no_mangle]
pub extern "C" fn dmtcp_get_generation() -> c_int {
    GENERATION.load(SeqCst) as c_int
}

/// # Safety
/// Non-null pointers must be valid for writing an int.
#[no_mangle]
pub unsafe extern "C" fn dmtcp_get_coordinator_status(
    num_peers: *mut c_int,
    running: *mut c_int,
) -> c_int {
    if !super::start::is_enabled() {
        return -1;
    }
    dmtcp_disable_ckpt();
    let host = get(&COORD_HOST);
    let port = COORD_PORT.load(SeqCst) as u16;
    let reply = query_status(&host, port);
    dmtcp_enable_ckpt();
    match reply {
        Some(r) => {
            // SAFETY: the caller vouches for the pointers; null ones are skipped.
            unsafe {
                if !num_peers.is_null() {
                    *num_peers = r.num_peers as c_int;
                }
                if !running.is_null() {
                    *running = r.running as c_int;
                }
            }
            1
        }
        None => -1,
    }
}

/// Internal, for the ssh plugin's `dmtcp_ssh` (which sends it to the
/// remote side of its session, inside the session's stream): copy the
/// coordinator's secret (32 bytes) into `buf`. 1 if copied, 0 if the
/// process holds none or `len` is short.
///
/// # Safety
/// `buf` is null or points to `len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn dmtcp_internal_coordinator_secret(buf: *mut u8, len: usize) -> c_int {
    let Some(s) = super::secret::get() else {
        return 0;
    };
    if buf.is_null() || len < s.0.len() {
        return 0;
    }
    // SAFETY: the caller gives `len` >= 32 writable bytes at `buf`.
    unsafe { core::ptr::copy_nonoverlapping(s.0.as_ptr(), buf, s.0.len()) };
    1
}

/// The coordinator's processes (`Cmd::List`), asked on a connection of
/// its own.
pub(super) fn query_peers(host: &str, port: u16) -> Option<Vec<dmtcp_common::proto::PeerInfo>> {
    query(host, port, dmtcp_common::proto::Cmd::List).map(|r| r.peers)
}

fn query_status(host: &str, port: u16) -> Option<dmtcp_common::proto::Reply> {
    query(host, port, dmtcp_common::proto::Cmd::Status)
}

fn query(
    host: &str,
    port: u16,
    cmd: dmtcp_common::proto::Cmd,
) -> Option<dmtcp_common::proto::Reply> {
    use dmtcp_common::proto::{self, FromCoord, Role, ToCoord};
    // The addresses resolved at start-up: this also runs on the checkpoint
    // thread with the program suspended (fork::wait_newcomers), where the
    // resolver's locks and heap could be held by a suspended thread.
    let s = super::start::connect_coordinator(host, port).ok()?;
    let mut w = s.try_clone().ok()?;
    let auth = {
        use std::os::fd::AsRawFd;
        super::secret::answer(s.as_raw_fd(), host, port).ok()?
    };
    let hello = ToCoord::Hello {
        role: Role::Command,
        pid: dmtcp_sys::getpid(),
        hostname: String::new(),
        program: "dmtcp_get_coordinator_status".into(),
        uniq_id: String::new(),
        restarting: false,
        comp_id: None,
        generation: 0,
        num_peers: 0,
        auth: Some(auth),
    };
    proto::send(&mut w, &hello).ok()?;
    proto::send(&mut w, &ToCoord::Command { cmd }).ok()?;
    match proto::recv::<_, FromCoord>(&mut std::io::BufReader::new(s)).ok()? {
        Some(FromCoord::Reply(r)) => Some(r),
        _ => None,
    }
}

/// Holds checkpoints off while it lives. A wrapper on a user thread that
/// takes a library lock or allocates from the library's heap must hold
/// one: a thread suspended inside such a section would deadlock the
/// checkpoint thread, which takes the same lock. Nests. Does nothing on
/// the checkpoint thread (which runs the checkpoint itself) and in a vfork
/// child (which shares its parent's memory but is not the process the
/// library serves: it must not take part in the parent's bookkeeping).
pub struct CkptHold(bool);

impl CkptHold {
    pub fn new() -> CkptHold {
        if !super::start::is_enabled() || super::fork::in_vfork_child() || on_ckpt_thread() {
            return CkptHold(false);
        }
        CkptHold(dmtcp_disable_ckpt() == 1)
    }
}

impl Default for CkptHold {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for CkptHold {
    fn drop(&mut self) {
        if self.0 {
            dmtcp_enable_ckpt();
        }
    }
}

/// Plugin hooks run on the checkpoint thread; the name service and
/// barriers share its coordinator connection and are refused elsewhere.
fn on_ckpt_thread() -> bool {
    let me = dmtcp_sys::gettid();
    let own = super::threads::OWN.load(SeqCst);
    super::threads::SLOTS[..own]
        .iter()
        .any(|s| s.kind.load(SeqCst) == super::threads::KIND_CKPT && s.tid.load(SeqCst) == me)
}

/// # Safety
/// `p` must be null or point to `len` readable bytes.
unsafe fn bytes(p: *const core::ffi::c_void, len: u32) -> Vec<u8> {
    if p.is_null() {
        return Vec::new();
    }
    // SAFETY: the caller vouches for `len` readable bytes.
    unsafe { core::slice::from_raw_parts(p as *const u8, len as usize) }.to_vec()
}

/// # Safety
/// `p` must be null or a NUL-terminated string.
unsafe fn text(p: *const c_char) -> Option<String> {
    // SAFETY: the caller vouches for a NUL-terminated string.
    (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

/// Publish a value in the computation's name service (plugin hooks only).
///
/// # Safety
/// Pointers must be valid for the given lengths; `db` NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn dmtcp_send_key_val_pair_to_coordinator(
    db: *const c_char,
    key: *const core::ffi::c_void,
    key_len: u32,
    val: *const core::ffi::c_void,
    val_len: u32,
) -> c_int {
    // SAFETY: forwarded pointer contracts.
    let (Some(db), key, val) = (
        unsafe { text(db) },
        unsafe { bytes(key, key_len) },
        unsafe { bytes(val, val_len) },
    ) else {
        return -1;
    };
    if !on_ckpt_thread() {
        return -1;
    }
    if super::coord::send(&dmtcp_common::proto::ToCoord::KvPut { db, key, val }) {
        1
    } else {
        -1
    }
}

/// Look a value up (plugin hooks only). `*val_len` holds the buffer size on
/// entry and the value's length on return. Returns 1 if found (and it fit),
/// 0 if unknown, -1 on error or a too small buffer.
///
/// # Safety
/// Pointers must be valid for the given lengths; `db` NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn dmtcp_send_query_to_coordinator(
    db: *const c_char,
    key: *const core::ffi::c_void,
    key_len: u32,
    val: *mut core::ffi::c_void,
    val_len: *mut u32,
) -> c_int {
    // SAFETY: forwarded pointer contracts.
    let (Some(db), key) = (unsafe { text(db) }, unsafe { bytes(key, key_len) }) else {
        return -1;
    };
    if !on_ckpt_thread() || val_len.is_null() {
        return -1;
    }
    match super::coord::kv_get(&db, &key) {
        Some(Some(v)) => {
            // SAFETY: val_len is valid (checked non-null); val holds *val_len bytes.
            unsafe {
                let cap = *val_len as usize;
                *val_len = v.len() as u32;
                if v.len() > cap || val.is_null() {
                    return -1;
                }
                core::ptr::copy_nonoverlapping(v.as_ptr(), val as *mut u8, v.len());
            }
            1
        }
        Some(None) => 0,
        None => -1,
    }
}

/// List the name service's entries of `db` whose key begins with `prefix`
/// (plugin hooks only), in key order, from the first key after `after`
/// (from the first when `after` is NULL), as records `[u32 key_len][key]
/// [u32 val_len][val]` (little-endian lengths) into `buf`: as many whole
/// records as fit in `*buf_len` bytes and in one answer of the
/// coordinator. `*buf_len` is set to the bytes written. Returns the number
/// of records (0: none left), or -1 on error, or when the next record
/// alone does not fit: `*buf_len` is then its size.
///
/// # Safety
/// Pointers must be valid for the given lengths; `db` NUL-terminated;
/// `buf` writable for `*buf_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn dmtcp_send_list_query_to_coordinator(
    db: *const c_char,
    prefix: *const core::ffi::c_void,
    prefix_len: u32,
    after: *const core::ffi::c_void,
    after_len: u32,
    buf: *mut core::ffi::c_void,
    buf_len: *mut u32,
) -> c_int {
    // SAFETY: forwarded pointer contracts.
    let (Some(db), prefix) = (unsafe { text(db) }, unsafe { bytes(prefix, prefix_len) }) else {
        return -1;
    };
    // SAFETY: forwarded pointer contract (NULL: from the first entry).
    let after = (!after.is_null()).then(|| unsafe { bytes(after, after_len) });
    if !on_ckpt_thread() || buf_len.is_null() || buf.is_null() {
        return -1;
    }
    // SAFETY: buf_len is valid (checked non-null).
    let cap = unsafe { *buf_len } as usize;
    let Some(entries) = super::coord::kv_list(&db, &prefix, after.as_deref(), cap as u32) else {
        return -1;
    };
    let mut at = 0usize;
    let mut n = 0;
    for (k, v) in &entries {
        let rec = 8 + k.len() + v.len();
        if at + rec > cap {
            if n == 0 {
                // SAFETY: buf_len is valid.
                unsafe { *buf_len = rec as u32 };
                return -1;
            }
            break;
        }
        // SAFETY: buf holds cap >= at + rec bytes (the caller's contract).
        unsafe {
            let out = (buf as *mut u8).add(at);
            core::ptr::copy_nonoverlapping((k.len() as u32).to_le_bytes().as_ptr(), out, 4);
            core::ptr::copy_nonoverlapping(k.as_ptr(), out.add(4), k.len());
            let o = out.add(4 + k.len());
            core::ptr::copy_nonoverlapping((v.len() as u32).to_le_bytes().as_ptr(), o, 4);
            core::ptr::copy_nonoverlapping(v.as_ptr(), o.add(4), v.len());
        }
        at += rec;
        n += 1;
    }
    // SAFETY: buf_len is valid.
    unsafe { *buf_len = at as u32 };
    n
}

/// Wait until every process of the computation reaches the barrier `name`
/// (plugin hooks only, during the same event in every process).
///
/// # Safety
/// `name` must be a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn dmtcp_global_barrier(name: *const c_char) -> c_int {
    // SAFETY: forwarded pointer contract.
    let Some(name) = (unsafe { text(name) }) else {
        return -1;
    };
    if !on_ckpt_thread() {
        return -1;
    }
    if super::coord::barrier(&format!("user:{name}")) {
        1
    } else {
        -1
    }
}

/// `dmtcp_fail_checkpoint` of include/dmtcp.h: a plugin that cannot save
/// its state (from its PRESUSPEND or PRECHECKPOINT hook) fails this
/// process's part of the round: no image, the checkpoint reports `reason`
/// (`dmtcp_command -bc` prints it and exits non-zero), the previous
/// generation is kept and the process goes on (RESUME follows). Returns 1,
/// or -1 outside those hooks.
///
/// # Safety
/// `reason` must be null or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn dmtcp_fail_checkpoint(reason: *const c_char) -> c_int {
    if !on_ckpt_thread() {
        return -1;
    }
    // SAFETY: forwarded pointer contract.
    let why = unsafe { text(reason) }.unwrap_or_else(|| "a plugin failed the checkpoint".into());
    if super::ckpt::fail_round_from_hook(why) {
        1
    } else {
        -1
    }
}

/// What `dmtcp_exclude_memory` does with a range.
pub const MEM_SAVE: c_int = 0;
pub const MEM_SKIP: c_int = 1;
pub const MEM_ZERO: c_int = 2;

/// Keep `[addr, addr+len)` out of images: `DMTCP_MEM_SKIP`, nothing is
/// mapped there after a restart (the caller re-creates it, device memory
/// for instance); `DMTCP_MEM_ZERO`, restored as zero-filled memory;
/// `DMTCP_MEM_SAVE`, saved again. Returns 1, or -1 for a bad argument.
#[no_mangle]
pub extern "C" fn dmtcp_exclude_memory(
    addr: *const core::ffi::c_void,
    len: usize,
    how: c_int,
) -> c_int {
    let start = addr as u64;
    if !start.is_multiple_of(4096) || !(MEM_SAVE..=MEM_ZERO).contains(&how) {
        return -1;
    }
    let len = (len as u64).div_ceil(4096) * 4096;
    let _hold = CkptHold::new();
    super::memory::skip(start, 0);
    super::memory::unexclude(start);
    match how {
        MEM_SKIP => super::memory::skip(start, len),
        MEM_ZERO => {
            super::memory::REQUESTED_RANGES.store(true, SeqCst);
            super::memory::exclude(start, len)
        }
        _ => {}
    }
    1
}

/// Virtual-id tables: name -> (virtual -> real). In the library's heap, so
/// they are saved with the image.
static VIDS: std::sync::Mutex<
    Option<std::collections::HashMap<String, std::collections::BTreeMap<u64, u64>>>,
> = std::sync::Mutex::new(None);

/// Run `f` on the tables. From a user thread this happens inside a disabled
/// section, so no checkpoint can suspend a thread holding the lock; plugin
/// hooks (on the checkpoint thread) use it directly.
pub(crate) fn with_vids<R>(
    f: impl FnOnce(&mut std::collections::HashMap<String, std::collections::BTreeMap<u64, u64>>) -> R,
) -> R {
    let _hold = CkptHold::new();
    f(VIDS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(Default::default))
}

/// Map virtual id `virt` to real id `real` in `table` (creates or updates).
///
/// # Safety
/// `table` must be a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn dmtcp_vid_set(table: *const c_char, virt: u64, real: u64) -> c_int {
    // SAFETY: forwarded pointer contract.
    let Some(t) = (unsafe { text(table) }) else {
        return -1;
    };
    with_vids(|v| v.entry(t).or_default().insert(virt, real));
    1
}

/// Give `real` a fresh virtual id in `table` (one more than the largest so far, from 1).
///
/// # Safety
/// `table` must be a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn dmtcp_vid_new(table: *const c_char, real: u64) -> u64 {
    // SAFETY: forwarded pointer contract.
    let Some(t) = (unsafe { text(table) }) else {
        return 0;
    };
    with_vids(|v| {
        let m = v.entry(t).or_default();
        let id = m.keys().next_back().map_or(1, |k| k + 1);
        m.insert(id, real);
        id
    })
}

/// The real id behind `virt` (0 if unknown).
///
/// # Safety
/// `table` must be a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn dmtcp_vid_to_real(table: *const c_char, virt: u64) -> u64 {
    // SAFETY: forwarded pointer contract.
    let Some(t) = (unsafe { text(table) }) else {
        return 0;
    };
    with_vids(|v| v.get(&t).and_then(|m| m.get(&virt).copied()).unwrap_or(0))
}

/// The virtual id of `real` (0 if unknown).
///
/// # Safety
/// `table` must be a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn dmtcp_vid_to_virtual(table: *const c_char, real: u64) -> u64 {
    // SAFETY: forwarded pointer contract.
    let Some(t) = (unsafe { text(table) }) else {
        return 0;
    };
    with_vids(|v| {
        v.get(&t)
            .and_then(|m| m.iter().find(|(_, &r)| r == real).map(|(&k, _)| k))
            .unwrap_or(0)
    })
}

/// Forget virtual id `virt`.
///
/// # Safety
/// `table` must be a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn dmtcp_vid_erase(table: *const c_char, virt: u64) -> c_int {
    // SAFETY: forwarded pointer contract.
    let Some(t) = (unsafe { text(table) }) else {
        return -1;
    };
    with_vids(|v| v.get_mut(&t).and_then(|m| m.remove(&virt)).map_or(0, |_| 1))
}

/// `dmtcp_claim_fd` of include/dmtcp.h: `fd` is the calling plugin's (a
/// device connection, a link to a process outside the computation): the
/// engine neither drains, saves nor restores it. Returns 1, or -1 if `fd`
/// is not open.
#[no_mangle]
pub extern "C" fn dmtcp_claim_fd(fd: c_int) -> c_int {
    let _hold = CkptHold::new();
    if super::fds::is_protected(fd) || !super::fds::claim(fd) {
        return -1;
    }
    1
}

/// `dmtcp_release_fd`: the engine handles `fd` again. Returns 1, or 0 if
/// it was not claimed.
#[no_mangle]
pub extern "C" fn dmtcp_release_fd(fd: c_int) -> c_int {
    let _hold = CkptHold::new();
    super::fds::release(fd) as c_int
}
