//! The restart entry: where the restorer jumps once memory is back. It
//! re-creates every thread of the image and returns each to its saved
//! context; the checkpoint thread then goes on in `ckpt`.

use super::start::{OLD_PID, RESTART_FLAGS, RESTART_INFO_FD};
use super::{arch, coord, threads};
use core::cell::UnsafeCell;
use core::sync::atomic::Ordering::SeqCst;
use dmtcp_sys::restore::RestartArgs;
use dmtcp_sys::{nr, syscall3, syscall6};

const RESTART_STACK_SIZE: usize = 256 << 10;
#[repr(C, align(64))]
struct EntryStack(UnsafeCell<[u8; RESTART_STACK_SIZE]>);
// SAFETY: used only by the single thread running the restart entry.
unsafe impl Sync for EntryStack {}
static ENTRY_STACK: EntryStack = EntryStack(UnsafeCell::new([0; RESTART_STACK_SIZE]));

/// The top of the stack the restart entry runs on (recorded in the image).
pub(super) fn entry_stack_top() -> u64 {
    ENTRY_STACK.0.get() as u64 + RESTART_STACK_SIZE as u64
}

/// 1 once the restart entry has re-created every thread and noted its
/// new tid (0 until then).
static RECREATED: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);

/// On the checkpoint thread after a restart: wait until the restart entry
/// has re-created every thread (the checkpoint thread is re-created
/// among them, and runs on while the entry creates the rest).
pub(super) fn wait_recreated() {
    while RECREATED.load(SeqCst) == 0 {
        dmtcp_sys::futex_wait(&RECREATED, 0, 0);
    }
}

fn entry_fail(msg: &[u8]) -> ! {
    let _ = dmtcp_sys::write_all(2, b"dmtcp_restart: ");
    let _ = dmtcp_sys::write_all(2, msg);
    let _ = dmtcp_sys::write_all(2, b"\n");
    dmtcp_sys::exit_group(1)
}

/// Where the restorer jumps once memory is back. Runs on [`ENTRY_STACK`]
/// with no thread pointer set: raw syscalls and atomics only, no TLS, no
/// allocation. Re-creates every thread of the image and becomes the main one.
///
/// # Safety
/// Only the restorer may call this, in a freshly restored address space,
/// with `args` pointing at a valid `RestartArgs`.
#[no_mangle]
pub unsafe extern "C" fn dmtcp_restart_entry(args: *const RestartArgs) -> ! {
    // SAFETY: the restorer wrote a RestartArgs at this address on our stack.
    let a = unsafe { *args };
    let all: u64 = !0;
    // SAFETY: block every signal in this (only) thread; its clones inherit the mask.
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
    RESTART_FLAGS.store(a.flags, SeqCst);
    RECREATED.store(0, SeqCst);
    // SAFETY: the restorer is done: replace it with the reservation the
    // program had, so the window stays free for the next restart.
    unsafe {
        syscall6(
            nr::MMAP,
            dmtcp_sys::RESTORER_BASE,
            dmtcp_sys::RESTORER_SIZE,
            nr::PROT_NONE,
            nr::MAP_PRIVATE | nr::MAP_ANONYMOUS | nr::MAP_NORESERVE | nr::MAP_FIXED,
            usize::MAX,
            0,
        )
    };
    super::signals::restore_sigactions();
    if a.coord_fd >= 0 {
        // SAFETY: moving the fresh coordinator socket to its fixed number.
        unsafe {
            syscall3(nr::DUP2, a.coord_fd as usize, coord::COORD_FD as usize, 0);
            if a.coord_fd != coord::COORD_FD {
                syscall3(nr::CLOSE, a.coord_fd as usize, 0, 0);
            }
        }
    }
    if a.info_fd >= 0 {
        let target = super::fds::PROTECTED_FD_BASE + 2;
        // SAFETY: as above, for the restart info fd.
        unsafe {
            syscall3(nr::DUP2, a.info_fd as usize, target as usize, 0);
            if a.info_fd != target {
                syscall3(nr::CLOSE, a.info_fd as usize, 0, 0);
            }
        }
        RESTART_INFO_FD.store(target, SeqCst);
    }
    // (A restorer of before the lazy restore has no `lazy_fd`: only the
    // flag says the field is there.)
    if a.flags & dmtcp_sys::restore::RESTART_LAZY_FD != 0 && a.lazy_fd >= 0 {
        let target = super::lazymem::LAZY_FD_NUM;
        // SAFETY: as above, for the page server's socket (close-on-exec:
        // an exec drops the memory it fills anyway).
        unsafe {
            syscall3(nr::DUP3, a.lazy_fd as usize, target as usize, nr::O_CLOEXEC);
            if a.lazy_fd != target {
                syscall3(nr::CLOSE, a.lazy_fd as usize, 0, 0);
            }
        }
        super::lazymem::LAZY_FD.store(target, SeqCst);
    }
    let old_pid = OLD_PID.load(SeqCst);
    let n = threads::NSLOTS.load(SeqCst).min(threads::MAX_THREADS);
    let mut main: Option<&threads::Slot> = None;
    for slot in &threads::SLOTS[..n] {
        if slot.kind.load(SeqCst) == threads::KIND_FREE {
            continue;
        }
        if slot.tid.load(SeqCst) == old_pid {
            main = Some(slot);
            continue;
        }
        let tid_addr = slot.tid_addr.load(SeqCst);
        let mut flags = (nr::CLONE_VM
            | nr::CLONE_FS
            | nr::CLONE_FILES
            | nr::CLONE_SIGHAND
            | nr::CLONE_THREAD
            | nr::CLONE_SYSVSEM
            | nr::CLONE_SETTLS) as u64;
        if tid_addr != 0 {
            flags |= (nr::CLONE_PARENT_SETTID | nr::CLONE_CHILD_CLEARTID) as u64;
        }
        let mut r = -1;
        if a.flags & dmtcp_sys::restore::RESTART_SET_TID != 0 {
            // In a fresh pid namespace: ask for the tid the program knows.
            let want: i32 = threads::program_tid(slot);
            // SAFETY: reading the saved stack pointer of the slot's context.
            let sp = unsafe { (*slot.ctx.get()).rsp };
            let ca = dmtcp_sys::restore::CloneArgs {
                flags,
                child_tid: tid_addr,
                parent_tid: tid_addr,
                stack: sp - 256,
                stack_size: 256,
                tls: slot.fs.load(SeqCst),
                set_tid: &want as *const i32 as u64,
                set_tid_size: 1,
                ..Default::default()
            };
            // SAFETY: as below; the 256 bytes under the saved stack pointer
            // are free stack of that thread.
            r = unsafe { arch::clone3_into(&ca, slot.ctx.get()) };
        }
        if r < 0 {
            // SAFETY: the slot's context was saved by save_and_call in this very
            // address space (now restored), its stack and TLS are mapped again.
            r = unsafe {
                arch::clone_into(
                    flags,
                    slot.fs.load(SeqCst),
                    tid_addr as *mut i32,
                    slot.ctx.get(),
                )
            };
        }
        if r < 0 {
            entry_fail(b"cannot re-create a thread (clone failed)");
        }
        threads::note_recreated(slot, r as i32);
    }
    let Some(m) = main else {
        RECREATED.store(1, SeqCst);
        dmtcp_sys::futex_wake(&RECREATED, i32::MAX as u32);
        // The main thread had exited before the checkpoint: this thread goes too.
        loop {
            // SAFETY: exit of this thread only.
            unsafe { syscall3(nr::EXIT, 0, 0, 0) };
        }
    };
    threads::note_recreated(m, dmtcp_sys::gettid());
    // Every thread exists, with its tid noted: the checkpoint thread
    // (running already) may read them now.
    RECREATED.store(1, SeqCst);
    dmtcp_sys::futex_wake(&RECREATED, i32::MAX as u32);
    let tid_addr = m.tid_addr.load(SeqCst);
    // SAFETY: glibc's struct pthread of the main thread is restored at the
    // same address; the kernel and glibc must agree on its tid.
    unsafe {
        if tid_addr != 0 {
            syscall3(nr::SET_TID_ADDRESS, tid_addr as usize, 0, 0);
            core::ptr::write_volatile(tid_addr as *mut i32, dmtcp_sys::gettid());
        }
        syscall3(
            nr::ARCH_PRCTL,
            nr::ARCH_SET_FS,
            m.fs.load(SeqCst) as usize,
            0,
        );
        arch::jump_context(m.ctx.get())
    }
}
