//! `libdmtcp_kvm.so`: the KVM plugin of DMTCP-rs.
//!
//! Loaded by `dmtcp_launch --kvm` after `libdmtcp.so`, it lets a program
//! that runs virtual machines through /dev/kvm (a host of its own, QEMU)
//! be checkpointed while its guests run, and restarted. It wraps `ioctl`
//! to record how each VM is built (memory slots, in-kernel irqchip and
//! PIT, vCPUs, CPUID, capabilities, interrupt routing, irqfds and
//! ioeventfds), and `mmap` to know where each vCPU's run pages are. At a
//! checkpoint, while the program's threads are suspended, it saves every
//! vCPU (registers, special registers, FPU/XSAVE, MSRs, local APIC,
//! pending events, MP state, debug registers), the in-kernel irqchip and
//! PIT, and the VM's clock into its own memory, which is in the image with
//! the guest's memory (ordinary memory of the process). At a restart it
//! makes each VM again at the same fds, registers the same memory, and
//! loads the state back; an exit the kernel held for the program is made
//! again (`run.rs`). See docs/kvm.md.
//!
//! It speaks only the public plugin interface (include/dmtcp.h), found at
//! run time.

#![allow(clippy::missing_safety_doc)]

mod ckpt;
mod kvm;
mod run;
mod sys;
mod track;

use core::ffi::{c_char, c_int, c_ulong, c_void};
use core::sync::atomic::{AtomicU8, Ordering::*};

/// `DmtcpPluginDescriptor_t` of include/dmtcp.h.
#[repr(C)]
pub(crate) struct PluginDescriptor {
    api_version: *const c_char,
    dmtcp_version: *const c_char,
    name: *const c_char,
    author: *const c_char,
    email: *const c_char,
    description: *const c_char,
    event_hook: extern "C" fn(c_int, *mut c_void),
}

const _: () = assert!(core::mem::size_of::<PluginDescriptor>() == 7 * 8);

struct SyncDescr(PluginDescriptor);
// SAFETY: immutable static data (string literals and a function pointer).
unsafe impl Sync for SyncDescr {}

static DESCR: SyncDescr = SyncDescr(PluginDescriptor {
    api_version: c"1".as_ptr(),
    dmtcp_version: c"DMTCP-rs".as_ptr(),
    name: c"kvm".as_ptr(),
    author: c"DMTCP-rs".as_ptr(),
    email: c"".as_ptr(),
    description:
        c"KVM virtual machines: vCPU and VM state saved at checkpoint, VMs made again at restart"
            .as_ptr(),
    event_hook,
});

// Event numbers of DmtcpEvent_t.
const EV_PRECHECKPOINT: c_int = 4;
const EV_RESUME: c_int = 5;
const EV_RESTART: c_int = 6;
const EV_ATFORK_CHILD: c_int = 10;

extern "C" fn event_hook(ev: c_int, _data: *mut c_void) {
    match ev {
        EV_PRECHECKPOINT => ckpt::precheckpoint(),
        EV_RESUME => ckpt::resume(),
        EV_RESTART => ckpt::restart(),
        EV_ATFORK_CHILD => track::forked_child(),
        _ => {}
    }
}

extern "C" fn register() {
    // Looked at now: the checkpoint hooks must not allocate.
    let on = std::env::var_os("DMTCP_KVM_DEBUG").is_some_and(|v| !v.is_empty() && v != "0");
    DEBUG.store(if on { 1 } else { 2 }, Relaxed);
    // The wrapped functions' next definitions, found now: the first
    // lookup (dlsym) may take the loader's lock and allocate, which a
    // wrapper called from a checkpoint hook must not do.
    let _ = (
        sys::next_ioctl(),
        sys::next_mmap(),
        sys::next_mmap64(),
        sys::next_munmap(),
    );
    sys::register(&DESCR.0);
}

#[used]
#[link_section = ".init_array"]
static REGISTER: extern "C" fn() = register;

/// DMTCP_KVM_DEBUG set: 1, unset: 2.
static DEBUG: AtomicU8 = AtomicU8::new(0);

/// A line to stderr when DMTCP_KVM_DEBUG is set (what the checkpoint and
/// the restart did). No allocation.
pub(crate) fn debug(args: core::fmt::Arguments) {
    if DEBUG.load(Relaxed) == 1 {
        say(args);
    }
}

/// One line to stderr, prefixed (formatted on the stack).
pub(crate) fn say(args: core::fmt::Arguments) {
    let mut s = sys::StackStr::<512>::new();
    let _ = core::fmt::Write::write_str(&mut s, "dmtcp_kvm: ");
    let _ = core::fmt::Write::write_fmt(&mut s, args);
    let _ = core::fmt::Write::write_str(&mut s, "\n");
    sys::write_err(s.as_bytes());
}

/// `ioctl(2)`: KVM's requests are looked at (KVM_RUN on a vCPU, and those
/// that build a VM); every other one goes straight to libc.
///
/// # Safety
/// The ioctl(2) contract. (Variadic in C; on x86-64 a call with one more
/// integer argument passes it as this one.)
#[no_mangle]
pub unsafe extern "C" fn ioctl(fd: c_int, req: c_ulong, arg: usize) -> c_int {
    let Some(next) = sys::next_ioctl() else {
        sys::set_errno(libc::ENOSYS);
        return -1;
    };
    let r: u64 = req;
    if !kvm::is_kvm_ioctl(r) {
        // SAFETY: forwarded call.
        return unsafe { next(fd, req, arg) };
    }
    if r == kvm::RUN {
        if let Some(c) = track::vcpu_by_fd(fd) {
            // SAFETY: forwarded contract; `c` is the vCPU at `fd`.
            return unsafe { run::run(next, c, fd, arg) };
        }
    } else if track::is_recorded(r) {
        // SAFETY: forwarded contract.
        return unsafe { track::recorded(next, fd, r, arg) };
    }
    // SAFETY: forwarded call.
    unsafe { next(fd, req, arg) }
}

/// After a mapping of a vCPU fd: note its run pages.
fn after_map(p: *mut c_void, len: usize, prot: c_int, fd: c_int, off: libc::off_t) {
    if p == libc::MAP_FAILED || fd < 0 {
        return;
    }
    if let Some(c) = track::vcpu_by_fd(fd) {
        track::mapped(c, p as usize, len, prot, off);
    }
}

/// # Safety
/// The mmap(2) contract.
#[no_mangle]
pub unsafe extern "C" fn mmap(
    addr: *mut c_void,
    len: usize,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    off: libc::off_t,
) -> *mut c_void {
    let Some(next) = sys::next_mmap() else {
        sys::set_errno(libc::ENOSYS);
        return libc::MAP_FAILED;
    };
    // SAFETY: forwarded call.
    let p = unsafe { next(addr, len, prot, flags, fd, off) };
    after_map(p, len, prot, fd, off);
    p
}

/// `mmap64` (what programs built with _FILE_OFFSET_BITS=64 call, QEMU
/// among them).
///
/// # Safety
/// The mmap(2) contract.
#[no_mangle]
pub unsafe extern "C" fn mmap64(
    addr: *mut c_void,
    len: usize,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    off: libc::off_t,
) -> *mut c_void {
    let Some(next) = sys::next_mmap64() else {
        sys::set_errno(libc::ENOSYS);
        return libc::MAP_FAILED;
    };
    // SAFETY: forwarded call.
    let p = unsafe { next(addr, len, prot, flags, fd, off) };
    after_map(p, len, prot, fd, off);
    p
}

/// # Safety
/// The munmap(2) contract.
#[no_mangle]
pub unsafe extern "C" fn munmap(addr: *mut c_void, len: usize) -> c_int {
    let Some(next) = sys::next_munmap() else {
        sys::set_errno(libc::ENOSYS);
        return -1;
    };
    // SAFETY: forwarded call.
    let r = unsafe { next(addr, len) };
    if r == 0 {
        track::unmapped(addr as usize, len);
    }
    r
}
