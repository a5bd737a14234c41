//! Checkpoint (save every vCPU and VM through the KVM API into buffers that
//! are part of the image) and restart (make the VMs again at the same fds,
//! with the same memory, devices and vCPUs, and load the state back).
//!
//! The pre-checkpoint hook runs on the checkpoint thread while every
//! program thread is suspended: no vCPU is inside KVM_RUN (the checkpoint
//! signal made it return), so the vCPU ioctls do not wait for it. It must
//! not allocate (a suspended thread may hold malloc's lock): everything it
//! writes was allocated when the VM and vCPUs were made, and its messages
//! are formatted on the stack.

use crate::kvm::{self, *};
use crate::run;
use crate::sys::{self, StackStr};
use crate::track::{self, reg, Setup, Vcpu, Vm, GEN};
use core::ffi::c_int;
use core::fmt::Write;
use core::sync::atomic::{AtomicU64, Ordering::*};

/// A message for `dmtcp_fail_checkpoint` or a restart error.
type Msg = StackStr<768>;

/// How the guest clock is treated across a restart (DMTCP_KVM_CLOCK).
#[derive(Clone, Copy, PartialEq, Eq)]
enum ClockMode {
    /// The guest's clocks (kvmclock, TSC) go on from their values at the
    /// checkpoint: the time between checkpoint and restart does not exist
    /// for the guest, as for a paused VM (the default).
    Continue,
    /// They are moved forward by the real time that passed.
    Realtime,
}

fn clock_mode() -> ClockMode {
    match std::env::var("DMTCP_KVM_CLOCK").as_deref() {
        Ok("realtime") => ClockMode::Realtime,
        _ => ClockMode::Continue,
    }
}

/// The process's permission for guest XSAVE features (AMX), from
/// `ARCH_GET_XCOMP_GUEST_PERM` at the checkpoint; asked for again at
/// restart before any vCPU exists.
static GUEST_PERM: AtomicU64 = AtomicU64::new(0);
const ARCH_GET_XCOMP_GUEST_PERM: c_int = 0x1024;
const ARCH_REQ_XCOMP_GUEST_PERM: c_int = 0x1025;
/// The features every process has (x87, SSE, AVX, ... up to bit 17).
const XFEATURES_DEFAULT: u64 = (1 << 18) - 1;

fn fail(msg: &mut Msg) {
    let _ = msg.write_str("\0");
    sys::fail_checkpoint(msg.as_bytes());
}

pub(crate) fn precheckpoint() {
    if track::FORKED_LOCKED.load(SeqCst) {
        return;
    }
    let mut g = reg();
    if g.vms.iter().all(|v| v.inherited) {
        return;
    }
    let mut msg = Msg::new();
    for vm in g.vms.iter().filter(|v| !v.inherited) {
        if let Some(u) = &vm.unsupported {
            let _ = write!(
                msg,
                "KVM plugin: the VM at fd {} uses {u}: this process cannot be checkpointed",
                vm.fd
            );
            return fail(&mut msg);
        }
    }
    if unsupported_device_fd(&mut msg) {
        return fail(&mut msg);
    }
    let mut perm: u64 = 0;
    // SAFETY: the call writes one u64.
    if unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_GET_XCOMP_GUEST_PERM, &mut perm) } == 0 {
        GUEST_PERM.store(perm, SeqCst);
    }
    for vm in g.vms.iter_mut().filter(|v| !v.inherited) {
        if let Err(()) = save_vm(vm, &mut msg) {
            return fail(&mut msg);
        }
    }
}

/// An open fd of a device the plugin cannot re-create for a VM: vhost
/// (in-kernel virtio back ends that hold guest memory and eventfds),
/// VFIO (device passthrough), vDPA. Scanned with raw system calls.
fn unsupported_device_fd(msg: &mut Msg) -> bool {
    // SAFETY: open of a literal path.
    let dir = unsafe {
        libc::syscall(
            libc::SYS_open,
            c"/proc/self/fd".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if dir < 0 {
        return false;
    }
    let mut buf = [0u8; 4096];
    let mut found = false;
    'outer: loop {
        // SAFETY: getdents64 into our buffer.
        let n = unsafe { libc::syscall(libc::SYS_getdents64, dir, buf.as_mut_ptr(), buf.len()) };
        if n <= 0 {
            break;
        }
        let mut off = 0usize;
        while off + 19 < n as usize {
            let reclen = u16::from_ne_bytes([buf[off + 16], buf[off + 17]]) as usize;
            if reclen == 0 {
                break;
            }
            let name = &buf[off + 19..off + reclen];
            let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
            off += reclen;
            let Some(fd) = core::str::from_utf8(name)
                .ok()
                .and_then(|s| s.parse::<c_int>().ok())
            else {
                continue;
            };
            let mut t = [0u8; 256];
            let len = sys::fd_target(fd, &mut t);
            let t = &t[..len];
            if let Some(what) = unsupported_device(t) {
                let _ = write!(
                    msg,
                    "KVM plugin: fd {fd} ({}) is {what}, which cannot be checkpointed",
                    core::str::from_utf8(t).unwrap_or("?")
                );
                found = true;
                break 'outer;
            }
        }
    }
    sys::close(dir as c_int);
    found
}

/// What a device fd (its /proc/self/fd link) is, if the plugin cannot
/// checkpoint a VM that uses it.
fn unsupported_device(target: &[u8]) -> Option<&'static str> {
    if target.starts_with(b"/dev/vhost-vdpa") {
        Some("a vDPA device (vhost-vdpa)")
    } else if target.starts_with(b"/dev/vhost-") {
        Some("an in-kernel vhost back end (vhost-net, vhost-vsock, vhost-scsi; use a user-space back end, e.g. QEMU's vhost=off)")
    } else if target.starts_with(b"/dev/vfio/") {
        Some("device passthrough (VFIO)")
    } else {
        None
    }
}

fn failed(msg: &mut Msg, what: &str, fd: c_int, r: isize) -> Result<(), ()> {
    let _ = write!(msg, "KVM plugin: {what} on fd {fd} failed (errno {})", -r);
    Err(())
}

/// Save a VM's devices, its clock and each vCPU.
fn save_vm(vm: &mut Vm, msg: &mut Msg) -> Result<(), ()> {
    let mut t = [0u8; 256];
    let n = sys::fd_target(vm.fd, &mut t);
    if !track::is_vm_target(&t[..n]) {
        let _ = write!(
            msg,
            "KVM plugin: the program closed its VM's fd {} while the VM lives on: this process cannot be checkpointed",
            vm.fd
        );
        return Err(());
    }
    vm.cloexec = sys::cloexec(vm.fd);
    let lapic = vm.irqchip || vm.split_irqchip;
    for c in vm.vcpus.iter() {
        save_vcpu(c, lapic, msg)?;
    }
    if vm.irqchip {
        for (i, chip) in vm.st.irqchip.iter_mut().enumerate() {
            *chip = kvm_irqchip {
                chip_id: i as u32,
                ..Default::default()
            };
            let r = sys::ioctl_ptr(vm.fd, kvm::GET_IRQCHIP, chip);
            if r < 0 {
                return failed(msg, "KVM_GET_IRQCHIP", vm.fd, r);
            }
        }
    }
    if vm.pit {
        let r = sys::ioctl_ptr(vm.fd, kvm::GET_PIT2, &mut vm.st.pit);
        if r < 0 {
            return failed(msg, "KVM_GET_PIT2", vm.fd, r);
        }
    }
    let r = sys::ioctl_ptr(vm.fd, kvm::GET_CLOCK, &mut vm.st.clock);
    if r < 0 {
        return failed(msg, "KVM_GET_CLOCK", vm.fd, r);
    }
    vm.st.realtime = sys::realtime_ns();
    for &(fd, _) in &vm.stats_fds {
        sys::claim_fd(fd);
    }
    vm.st.saved = true;
    Ok(())
}

/// Save one vCPU (its thread is suspended, outside KVM_RUN).
fn save_vcpu(c: &Vcpu, lapic: bool, msg: &mut Msg) -> Result<(), ()> {
    // SAFETY: the checkpoint thread while program threads are suspended.
    let inner = unsafe { c.inner() };
    inner.st.saved = false;
    inner.st.pending = None;
    let mut t = [0u8; 256];
    let n = sys::fd_target(c.fd, &mut t);
    if !track::is_vcpu_target(&t[..n], c.id) {
        // The program closed the fd (the vCPU lives on in the VM, unused).
        if !inner.fd_gone {
            inner.fd_gone = true;
            track::drop_vcpu_fd(c);
            sys::release_fd(c.fd);
        }
        return Ok(());
    }
    inner.cloexec = sys::cloexec(c.fd);
    let fd = c.fd;
    let st = &mut inner.st;
    let run = c.run.load(SeqCst);
    let len = c.run_len.load(SeqCst).min(st.run_copy.len());
    if run != 0 && len > 0 {
        // SAFETY: the run mapping holds `len` bytes; run_copy as many.
        unsafe { core::ptr::copy_nonoverlapping(run as *const u8, st.run_copy.as_mut_ptr(), len) };
        st.pending = run::pending_exit(c, run);
        match st.pending {
            Some(kvm::EXIT_IO) if run::rd8(run, kvm::IO_DIRECTION) == KVM_EXIT_IO_OUT as u8 => {
                // An OUT needs nothing from the program: the kernel finishes
                // it now (on its fast path it has yet to move the guest
                // past the instruction; the emulator already did).
                if let Err(r) = run::finish_out(fd, run, &st.run_copy) {
                    return failed(msg, "KVM_RUN (finishing an OUT)", fd, r);
                }
                st.pending = None;
                crate::debug(format_args!("vCPU {}: pending OUT finished", c.id));
            }
            Some(kvm::EXIT_MMIO) if run::rd8(run, kvm::MMIO_IS_WRITE) != 0 => {
                // The emulator has already moved the guest past an MMIO
                // write (the rest of its completion does nothing for a
                // write of up to 8 bytes).
                st.pending = None;
            }
            Some(reason) => {
                crate::debug(format_args!("vCPU {}: exit {reason} pending", c.id));
            }
            None => {}
        }
    }
    macro_rules! get {
        ($req:expr, $v:expr, $name:literal) => {{
            let r = sys::ioctl_ptr(fd, $req, $v);
            if r < 0 {
                return failed(msg, $name, fd, r);
            }
        }};
    }
    get!(kvm::GET_REGS, &mut st.regs, "KVM_GET_REGS");
    let (cr4, efer) = if inner.sregs2 {
        get!(kvm::GET_SREGS2, &mut st.sregs2, "KVM_GET_SREGS2");
        (st.sregs2.cr4, st.sregs2.efer)
    } else {
        get!(kvm::GET_SREGS, &mut st.sregs, "KVM_GET_SREGS");
        (st.sregs.cr4, st.sregs.efer)
    };
    if cr4 & kvm::CR4_VMXE != 0 || efer & kvm::EFER_SVME != 0 {
        let _ = write!(
            msg,
            "KVM plugin: the guest on vCPU {} uses hardware virtualization itself ({}): nested guests cannot be checkpointed",
            c.id,
            if cr4 & kvm::CR4_VMXE != 0 { "VMX" } else { "SVM" }
        );
        return Err(());
    }
    if inner.xsave_size > 4096 {
        let r = sys::ioctl(fd, kvm::GET_XSAVE2, st.xsave.as_mut_ptr() as usize);
        if r < 0 {
            return failed(msg, "KVM_GET_XSAVE2", fd, r);
        }
    } else if inner.xsave_size == 4096 {
        let r = sys::ioctl(fd, kvm::GET_XSAVE, st.xsave.as_mut_ptr() as usize);
        if r < 0 {
            return failed(msg, "KVM_GET_XSAVE", fd, r);
        }
    } else {
        get!(kvm::GET_FPU, &mut st.fpu, "KVM_GET_FPU");
    }
    if inner.xsave_size > 0 {
        get!(kvm::GET_XCRS, &mut st.xcrs, "KVM_GET_XCRS");
    }
    st.nmsrs = read_msrs(fd, &mut st.msrs);
    if lapic {
        get!(kvm::GET_LAPIC, &mut st.lapic, "KVM_GET_LAPIC");
    }
    get!(kvm::GET_VCPU_EVENTS, &mut st.events, "KVM_GET_VCPU_EVENTS");
    get!(kvm::GET_MP_STATE, &mut st.mp, "KVM_GET_MP_STATE");
    get!(kvm::GET_DEBUGREGS, &mut st.debugregs, "KVM_GET_DEBUGREGS");
    let khz = sys::ioctl(fd, kvm::GET_TSC_KHZ, 0);
    st.tsc_khz = if khz > 0 { khz as u64 } else { 0 };
    for &(sfd, _) in &inner.stats_fds {
        sys::claim_fd(sfd);
    }
    st.saved = true;
    Ok(())
}

/// One `struct kvm_msrs` with a single entry (on the stack).
#[repr(C)]
#[derive(Default)]
struct OneMsr {
    nmsrs: u32,
    pad: u32,
    index: u32,
    reserved: u32,
    data: u64,
}

/// Read every MSR of KVM's list that this vCPU has, one at a time (a
/// batch stops at the first one the vCPU lacks), into `buf` (the layout
/// of `struct kvm_msrs`: a header word, then (index, data) pairs).
/// Returns how many were read. No allocation.
fn read_msrs(fd: c_int, buf: &mut [u64]) -> usize {
    let list = track::msr_index_list();
    let room = (buf.len().saturating_sub(1)) / 2;
    let mut n = 0;
    for &index in list.iter().take(room) {
        let mut m = OneMsr {
            nmsrs: 1,
            index,
            ..Default::default()
        };
        if sys::ioctl_ptr(fd, kvm::GET_MSRS, &mut m) == 1 {
            buf[1 + 2 * n] = index as u64;
            buf[2 + 2 * n] = m.data;
            n += 1;
        }
    }
    buf[0] = n as u64;
    n
}

pub(crate) fn resume() {
    GEN.fetch_add(1, SeqCst);
}

pub(crate) fn restart() {
    GEN.fetch_add(1, SeqCst);
    if track::FORKED_LOCKED.load(SeqCst) {
        return;
    }
    let mut g = reg();
    if g.vms.iter().all(|v| v.inherited) {
        return;
    }
    let perm = GUEST_PERM.load(SeqCst);
    let mut msg = Msg::new();
    if perm & !XFEATURES_DEFAULT != 0 {
        for bit in 18..64 {
            if perm & (1 << bit) != 0 {
                // SAFETY: asks the kernel for a feature permission.
                unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_GUEST_PERM, bit) };
            }
        }
    }
    // SAFETY: open of a literal path.
    let kvm = unsafe { libc::open(c"/dev/kvm".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if kvm < 0 {
        let _ = write!(
            msg,
            "KVM plugin: cannot open /dev/kvm at restart (errno {}): the program's virtual machines cannot come back",
            sys::errno()
        );
        fatal(&msg);
    }
    let mode = clock_mode();
    for vm in g.vms.iter_mut().filter(|v| !v.inherited) {
        if restore_vm(kvm, vm, mode, &mut msg).is_err() {
            fatal(&msg);
        }
    }
    sys::close(kvm);
}

/// The restart cannot give the program its VM back: say so and end the
/// process, rather than let it run on without its guest.
fn fatal(msg: &Msg) -> ! {
    sys::write_err(b"dmtcp_kvm: ");
    sys::write_err(msg.as_bytes());
    sys::write_err(b"\n");
    // SAFETY: ends the process.
    unsafe { libc::syscall(libc::SYS_exit_group, 70) };
    unreachable!()
}

fn check(msg: &mut Msg, what: &str, fd: c_int, r: isize) -> Result<(), ()> {
    if r < 0 {
        let _ = write!(
            msg,
            "KVM plugin: restart: {what} on fd {fd} failed (errno {})",
            -r
        );
        return Err(());
    }
    Ok(())
}

/// Make `vm` again: a new VM at the same fd, its setup calls in their
/// order (vCPUs among them), memory, devices, state, clock.
fn restore_vm(kvm: c_int, vm: &mut Vm, mode: ClockMode, msg: &mut Msg) -> Result<(), ()> {
    let fd = sys::ioctl(kvm, kvm::CREATE_VM, vm.vm_type as usize);
    check(msg, "KVM_CREATE_VM", kvm, fd)?;
    if !sys::move_fd(fd as c_int, vm.fd, vm.cloexec) {
        let _ = write!(
            msg,
            "KVM plugin: restart: cannot put the VM at fd {}",
            vm.fd
        );
        return Err(());
    }
    sys::claim_fd(vm.fd);
    let setup = vm.setup.clone();
    for s in &setup {
        match s {
            Setup::Value(req, v) => {
                let r = sys::ioctl(vm.fd, *req, *v as usize);
                check(msg, req_name(*req), vm.fd, r)?;
            }
            Setup::Bytes(req, b) => {
                let r = sys::ioctl(vm.fd, *req, b.as_ptr() as usize);
                check(msg, req_name(*req), vm.fd, r)?;
            }
            Setup::Vcpu(i) => create_vcpu(vm, *i, msg)?,
        }
    }
    for m in &vm.slots {
        let mut m = *m;
        let r = sys::ioctl_ptr(vm.fd, kvm::SET_USER_MEMORY_REGION, &mut m);
        check(msg, "KVM_SET_USER_MEMORY_REGION", vm.fd, r)?;
    }
    if let Some((b, maps)) = &vm.msr_filter {
        // SAFETY: the bytes of a kvm_msr_filter (read unaligned).
        let mut f: kvm_msr_filter = unsafe { core::ptr::read_unaligned(b.as_ptr().cast()) };
        for (rg, map) in f.ranges.iter_mut().zip(maps.iter()) {
            if !map.is_empty() {
                rg.bitmap = map.as_ptr() as *mut u8;
            }
        }
        let r = sys::ioctl_ptr(vm.fd, kvm::X86_SET_MSR_FILTER, &mut f);
        check(msg, "KVM_X86_SET_MSR_FILTER", vm.fd, r)?;
    }
    if let Some(t) = &vm.gsi_routing {
        let r = sys::ioctl(vm.fd, kvm::SET_GSI_ROUTING, t.as_ptr() as usize);
        check(msg, "KVM_SET_GSI_ROUTING", vm.fd, r)?;
    }
    if vm.st.saved {
        if vm.irqchip {
            for chip in vm.st.irqchip.iter_mut() {
                let r = sys::ioctl_ptr(vm.fd, kvm::SET_IRQCHIP, chip);
                check(msg, "KVM_SET_IRQCHIP", vm.fd, r)?;
            }
        }
        if vm.pit {
            let r = sys::ioctl_ptr(vm.fd, kvm::SET_PIT2, &mut vm.st.pit);
            check(msg, "KVM_SET_PIT2", vm.fd, r)?;
        }
    }
    let elapsed = match mode {
        ClockMode::Continue => 0,
        ClockMode::Realtime => sys::realtime_ns().saturating_sub(vm.st.realtime),
    };
    let lapic = vm.irqchip || vm.split_irqchip;
    for c in vm.vcpus.iter() {
        load_vcpu(c, lapic, elapsed, msg)?;
    }
    for f in &vm.irqfds {
        let mut f = *f;
        let r = sys::ioctl_ptr(vm.fd, kvm::IRQFD, &mut f);
        check(msg, "KVM_IRQFD", vm.fd, r)?;
    }
    for f in &vm.ioeventfds {
        let mut f = *f;
        let r = sys::ioctl_ptr(vm.fd, kvm::IOEVENTFD, &mut f);
        check(msg, "KVM_IOEVENTFD", vm.fd, r)?;
    }
    for z in &vm.coalesced {
        let mut z = *z;
        let r = sys::ioctl_ptr(vm.fd, kvm::REGISTER_COALESCED_MMIO, &mut z);
        check(msg, "KVM_REGISTER_COALESCED_MMIO", vm.fd, r)?;
    }
    for &(sfd, cloexec) in &vm.stats_fds {
        let r = sys::ioctl(vm.fd, kvm::GET_STATS_FD, 0);
        check(msg, "KVM_GET_STATS_FD", vm.fd, r)?;
        sys::move_fd(r as c_int, sfd, cloexec);
        sys::claim_fd(sfd);
    }
    if vm.st.saved {
        // The guest's clock last, once every vCPU (and its TSC) is back.
        let mut clock = kvm_clock_data {
            clock: vm.st.clock.clock + elapsed,
            ..Default::default()
        };
        let r = sys::ioctl_ptr(vm.fd, kvm::SET_CLOCK, &mut clock);
        check(msg, "KVM_SET_CLOCK", vm.fd, r)?;
    }
    // Exits the kernel held for the program at the checkpoint: the guest
    // makes them again now, and they stay pending for the program's next
    // KVM_RUN (run.rs).
    for c in vm.vcpus.iter() {
        repeat_pending_exit(c, msg)?;
    }
    // The program's run pages as they were.
    for c in vm.vcpus.iter() {
        // SAFETY: the checkpoint thread at restart; threads are suspended.
        let inner = unsafe { c.inner() };
        let run = c.run.load(SeqCst);
        let len = c.run_len.load(SeqCst).min(inner.st.run_copy.len());
        if run != 0 && !inner.fd_gone && inner.st.saved {
            // SAFETY: the new run mapping holds `len` bytes.
            unsafe {
                core::ptr::copy_nonoverlapping(inner.st.run_copy.as_ptr(), run as *mut u8, len)
            };
        }
    }
    crate::debug(format_args!(
        "VM at fd {} restored: {} vCPU(s), {} memory slot(s)",
        vm.fd,
        vm.vcpus.len(),
        vm.slots.len()
    ));
    Ok(())
}

/// KVM_CREATE_VCPU of the VM's vCPU `i` at its fd, its run pages mapped
/// at their old address, its setup calls.
fn create_vcpu(vm: &Vm, i: usize, msg: &mut Msg) -> Result<(), ()> {
    let c: &'static Vcpu = vm.vcpus[i];
    // SAFETY: the checkpoint thread at restart; threads are suspended.
    let inner = unsafe { c.inner() };
    let nfd = sys::ioctl(vm.fd, kvm::CREATE_VCPU, c.id as usize);
    check(msg, "KVM_CREATE_VCPU", vm.fd, nfd)?;
    if inner.fd_gone {
        // The program had closed it: the vCPU exists, nobody runs it.
        sys::close(nfd as c_int);
        return Ok(());
    }
    if !sys::move_fd(nfd as c_int, c.fd, inner.cloexec) {
        let _ = write!(
            msg,
            "KVM plugin: restart: cannot put vCPU {} at fd {}",
            c.id, c.fd
        );
        return Err(());
    }
    sys::claim_fd(c.fd);
    track::set_vcpu_fd_of(c);
    let run = c.run.load(SeqCst);
    let len = c.run_len.load(SeqCst);
    if run != 0 {
        let r = sys::sys_mmap(
            run,
            len,
            inner.run_prot,
            libc::MAP_SHARED | libc::MAP_FIXED,
            c.fd,
        );
        if r as usize != run {
            let _ = write!(
                msg,
                "KVM plugin: restart: cannot map vCPU {}'s run pages at {run:#x} (errno {})",
                c.id, -r
            );
            return Err(());
        }
    }
    for s in &inner.setup {
        let r = match s {
            Setup::Value(req, v) => sys::ioctl(c.fd, *req, *v as usize),
            Setup::Bytes(req, b) if b.is_empty() => sys::ioctl(c.fd, *req, 0),
            Setup::Bytes(req, b) => sys::ioctl(c.fd, *req, b.as_ptr() as usize),
            Setup::Vcpu(_) => 0,
        };
        let req = match s {
            Setup::Value(q, _) | Setup::Bytes(q, _) => *q,
            Setup::Vcpu(_) => 0,
        };
        check(msg, req_name(req), c.fd, r)?;
    }
    for &(sfd, cloexec) in &inner.stats_fds {
        let r = sys::ioctl(c.fd, kvm::GET_STATS_FD, 0);
        check(msg, "KVM_GET_STATS_FD", c.fd, r)?;
        sys::move_fd(r as c_int, sfd, cloexec);
        sys::claim_fd(sfd);
    }
    Ok(())
}

/// Load a vCPU's saved state (the order the kernel needs: special
/// registers before MSRs, the local APIC before the TSC deadline, events
/// last).
fn load_vcpu(c: &Vcpu, lapic: bool, elapsed: u64, msg: &mut Msg) -> Result<(), ()> {
    // SAFETY: the checkpoint thread at restart; threads are suspended.
    let inner = unsafe { c.inner() };
    if inner.fd_gone || !inner.st.saved {
        return Ok(());
    }
    let fd = c.fd;
    let sregs2 = inner.sregs2;
    let xsave_size = inner.xsave_size;
    let st = &mut inner.st;
    macro_rules! set {
        ($req:expr, $v:expr, $name:literal) => {{
            let r = sys::ioctl_ptr(fd, $req, $v);
            check(msg, $name, fd, r)?;
        }};
    }
    if sregs2 {
        set!(kvm::SET_SREGS2, &mut st.sregs2, "KVM_SET_SREGS2");
    } else {
        set!(kvm::SET_SREGS, &mut st.sregs, "KVM_SET_SREGS");
    }
    set!(kvm::SET_REGS, &mut st.regs, "KVM_SET_REGS");
    if xsave_size > 0 {
        set!(kvm::SET_XCRS, &mut st.xcrs, "KVM_SET_XCRS");
        let r = sys::ioctl(fd, kvm::SET_XSAVE, st.xsave.as_mut_ptr() as usize);
        check(msg, "KVM_SET_XSAVE", fd, r)?;
    } else {
        set!(kvm::SET_FPU, &mut st.fpu, "KVM_SET_FPU");
    }
    let n = st.nmsrs;
    let tsc_ticks = elapsed as u128 * st.tsc_khz as u128 / 1_000_000;
    let mut deadline = None;
    for k in 0..n {
        let index = st.msrs[1 + 2 * k] as u32;
        let mut data = st.msrs[2 + 2 * k];
        if index == kvm::MSR_IA32_TSC_DEADLINE {
            deadline = Some(data);
            continue;
        }
        if index == kvm::MSR_IA32_TSC {
            data = data.wrapping_add(tsc_ticks as u64);
        }
        write_msr(fd, c.id, index, data);
    }
    if lapic {
        set!(kvm::SET_LAPIC, &mut st.lapic, "KVM_SET_LAPIC");
    }
    if let Some(d) = deadline {
        let d = if d == 0 {
            0
        } else {
            d.wrapping_add(tsc_ticks as u64)
        };
        write_msr(fd, c.id, kvm::MSR_IA32_TSC_DEADLINE, d);
    }
    if st.pending.is_some() {
        // No interrupt before the instruction is made again.
        st.events.interrupt.shadow = kvm::SHADOW_INT_MOV_SS;
        st.events.flags |= KVM_VCPUEVENT_VALID_SHADOW;
    }
    set!(kvm::SET_VCPU_EVENTS, &mut st.events, "KVM_SET_VCPU_EVENTS");
    if lapic || st.mp.mp_state == KVM_MP_STATE_RUNNABLE {
        set!(kvm::SET_MP_STATE, &mut st.mp, "KVM_SET_MP_STATE");
    }
    set!(kvm::SET_DEBUGREGS, &mut st.debugregs, "KVM_SET_DEBUGREGS");
    Ok(())
}

fn write_msr(fd: c_int, id: u64, index: u32, data: u64) {
    let mut m = OneMsr {
        nmsrs: 1,
        index,
        data,
        ..Default::default()
    };
    if sys::ioctl_ptr(fd, kvm::SET_MSRS, &mut m) != 1 {
        crate::debug(format_args!(
            "vCPU {id}: MSR {index:#x} could not be set back ({data:#x})"
        ));
    }
}

/// Let the new vCPU execute again the instruction whose exit the kernel
/// held at the checkpoint, up to that exit, which then stays pending.
fn repeat_pending_exit(c: &Vcpu, msg: &mut Msg) -> Result<(), ()> {
    // SAFETY: the checkpoint thread at restart; threads are suspended.
    let inner = unsafe { c.inner() };
    let Some(reason) = inner.st.pending else {
        return Ok(());
    };
    let run = c.run.load(SeqCst);
    if run == 0 || inner.fd_gone {
        return Ok(());
    }
    // A fresh run page: nothing asked of the kernel but to run.
    run::wr32(run, RUN_EXIT_REASON, 0);
    // SAFETY: byte fields of the new run page.
    unsafe {
        core::ptr::write_volatile((run + RUN_IMMEDIATE_EXIT) as *mut u8, 0);
        core::ptr::write_volatile(run as *mut u8, 0);
    }
    let mut tries = 0;
    loop {
        let r = sys::ioctl(c.fd, kvm::RUN, 0);
        if r == -(libc::EINTR as isize) && tries < 100 {
            tries += 1;
            continue;
        }
        if r == 0 && run::same_exit(run, &inner.st.run_copy, reason) {
            crate::debug(format_args!(
                "vCPU {}: exit {reason} made again for the program",
                c.id
            ));
            return Ok(());
        }
        let _ = write!(
            msg,
            "KVM plugin: restart: vCPU {} did not repeat the exit {} it had pending at the checkpoint (KVM_RUN {}, exit {})",
            c.id,
            reason,
            r,
            run::rd32(run, RUN_EXIT_REASON)
        );
        return Err(());
    }
}

/// A name for error messages.
fn req_name(req: u64) -> &'static str {
    match req {
        kvm::CREATE_IRQCHIP => "KVM_CREATE_IRQCHIP",
        kvm::CREATE_PIT | kvm::CREATE_PIT2 => "KVM_CREATE_PIT2",
        kvm::SET_TSS_ADDR => "KVM_SET_TSS_ADDR",
        kvm::SET_IDENTITY_MAP_ADDR => "KVM_SET_IDENTITY_MAP_ADDR",
        kvm::SET_NR_MMU_PAGES => "KVM_SET_NR_MMU_PAGES",
        kvm::SET_BOOT_CPU_ID => "KVM_SET_BOOT_CPU_ID",
        kvm::SET_TSC_KHZ => "KVM_SET_TSC_KHZ",
        kvm::ENABLE_CAP => "KVM_ENABLE_CAP",
        kvm::REINJECT_CONTROL => "KVM_REINJECT_CONTROL",
        kvm::SET_PMU_EVENT_FILTER => "KVM_SET_PMU_EVENT_FILTER",
        kvm::SET_CPUID2 => "KVM_SET_CPUID2",
        kvm::SET_CPUID => "KVM_SET_CPUID",
        kvm::SET_SIGNAL_MASK => "KVM_SET_SIGNAL_MASK",
        kvm::SET_GUEST_DEBUG => "KVM_SET_GUEST_DEBUG",
        kvm::X86_SETUP_MCE => "KVM_X86_SETUP_MCE",
        kvm::SET_VAPIC_ADDR => "KVM_SET_VAPIC_ADDR",
        kvm::TPR_ACCESS_REPORTING => "KVM_TPR_ACCESS_REPORTING",
        _ => "a KVM ioctl",
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn devices_that_cannot_be_checkpointed() {
        use super::unsupported_device as u;
        assert!(u(b"/dev/vhost-net").unwrap().contains("vhost"));
        assert!(u(b"/dev/vhost-vsock").unwrap().contains("vhost"));
        assert!(u(b"/dev/vhost-vdpa-0").unwrap().contains("vDPA"));
        assert!(u(b"/dev/vfio/vfio").unwrap().contains("VFIO"));
        assert!(u(b"/dev/vfio/devices/vfio0").unwrap().contains("VFIO"));
        assert!(u(b"/dev/kvm").is_none());
        assert!(u(b"/dev/net/tun").is_none());
        assert!(u(b"anon_inode:kvm-vm").is_none());
    }
}
