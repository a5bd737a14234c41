//! The object graph of the program's virtual machines, recorded from the
//! ioctls that build it: each VM (its type, memory slots, in-kernel
//! devices, interrupt routing, eventfds, capabilities), each vCPU (its id,
//! CPUID, capabilities, the address of its `kvm_run` mapping), and the
//! buffers its state is saved into at a checkpoint (allocated here, on the
//! program's threads, so the checkpoint hooks never allocate).
//!
//! Records change only inside a section that holds checkpoints off
//! ([`crate::sys::NoCkpt`]) and under [`REG`]'s lock, so a checkpoint never
//! finds a thread holding the lock or a call done but not recorded. The
//! KVM_RUN path takes neither: it finds its vCPU in [`VCPU_BY_FD`].

use crate::kvm::{self, *};
use crate::sys;
use core::cell::UnsafeCell;
use core::ffi::c_int;
use core::sync::atomic::{AtomicPtr, AtomicU32, AtomicUsize, Ordering::*};
use std::sync::Mutex;

/// One recorded virtual machine.
pub(crate) struct Vm {
    /// The VM's fd and its close-on-exec flag.
    pub fd: c_int,
    pub cloexec: bool,
    /// The argument of KVM_CREATE_VM (the machine type).
    pub vm_type: u64,
    /// Created in another process (before a fork): not ours to save.
    pub inherited: bool,
    /// The fd no longer leads to the VM (closed by the program); its vCPUs
    /// still run. Re-created on a spare fd at restart, then closed.
    pub fd_gone: bool,
    /// VM-level calls in the order they were made (KVM_ENABLE_CAP,
    /// KVM_SET_TSS_ADDR, ..., everything before the first vCPU that sets
    /// the VM up), replayed in that order at restart.
    pub setup: Vec<Setup>,
    /// Memory slots by slot number (flags, guest address, size, user address).
    pub slots: Vec<kvm_userspace_memory_region>,
    pub irqchip: bool,
    pub split_irqchip: bool,
    pub pit: bool,
    /// The last KVM_SET_GSI_ROUTING table (header and entries).
    pub gsi_routing: Option<Vec<u8>>,
    pub irqfds: Vec<kvm_irqfd>,
    pub ioeventfds: Vec<kvm_ioeventfd>,
    pub coalesced: Vec<kvm_coalesced_mmio_zone>,
    /// KVM_X86_SET_MSR_FILTER: the struct's bytes and a copy of each
    /// range's bitmap.
    pub msr_filter: Option<(Vec<u8>, Vec<Vec<u8>>)>,
    /// Stats fds (KVM_GET_STATS_FD) of the VM: (fd, close-on-exec).
    pub stats_fds: Vec<(c_int, bool)>,
    /// What the plugin cannot restart (the first such thing seen); the
    /// next checkpoint is refused with it.
    pub unsupported: Option<String>,
    pub vcpus: Vec<&'static Vcpu>,
    /// Saved at the last checkpoint.
    pub st: VmState,
}

/// A VM-level call replayed at restart in its original order.
#[derive(Clone)]
pub(crate) enum Setup {
    /// An ioctl whose argument is a value.
    Value(u64, u64),
    /// An ioctl whose argument points to these bytes.
    Bytes(u64, Vec<u8>),
    /// KVM_CREATE_VCPU of the VM's vCPU of this index.
    Vcpu(usize),
}

/// The VM's saved state (filled at pre-checkpoint time).
#[derive(Default)]
pub(crate) struct VmState {
    /// PIC master, PIC slave, IOAPIC (full in-kernel irqchip only).
    pub irqchip: [kvm_irqchip; 3],
    pub pit: kvm_pit_state2,
    pub clock: kvm_clock_data,
    /// CLOCK_REALTIME when the clock was read.
    pub realtime: u64,
    pub saved: bool,
}

/// One recorded vCPU. Leaked when created: the KVM_RUN wrapper holds a
/// reference without a lock, so it is never freed.
pub(crate) struct Vcpu {
    pub fd: c_int,
    pub id: u64,
    /// Address and length of the `kvm_run` mapping (0: not mapped).
    pub run: AtomicUsize,
    pub run_len: AtomicUsize,
    /// The exit reason the program was done with when it last called
    /// KVM_RUN (see `run::pending_exit`).
    pub prev_reason: AtomicU32,
    pub inner: UnsafeCell<VcpuInner>,
}

// SAFETY: `inner` is written by program threads only under REG's lock in a
// section that holds checkpoints off, and by the checkpoint thread only
// while every program thread is suspended. The rest is atomic.
unsafe impl Sync for Vcpu {}

/// Configuration and saved state of a vCPU.
pub(crate) struct VcpuInner {
    pub cloexec: bool,
    /// Protection of the run mapping.
    pub run_prot: c_int,
    /// vCPU-level calls in their original order (KVM_SET_CPUID2,
    /// KVM_ENABLE_CAP, KVM_SET_SIGNAL_MASK, KVM_SET_GUEST_DEBUG, ...).
    pub setup: Vec<Setup>,
    pub stats_fds: Vec<(c_int, bool)>,
    /// The fd no longer leads to this vCPU.
    pub fd_gone: bool,
    /// Size of the XSAVE area (KVM_CAP_XSAVE2; 0: no XSAVE, use KVM_GET_FPU).
    pub xsave_size: usize,
    pub sregs2: bool,
    pub st: VcpuState,
}

/// A vCPU's saved state (buffers allocated when it was created or mapped).
pub(crate) struct VcpuState {
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub sregs2: kvm_sregs2,
    pub xsave: Vec<u8>,
    pub fpu: kvm_fpu,
    pub xcrs: kvm_xcrs,
    /// `struct kvm_msrs` with room for every MSR KVM lists; `nmsrs` of
    /// them were read.
    pub msrs: Vec<u64>,
    pub nmsrs: usize,
    pub lapic: kvm_lapic_state,
    pub events: kvm_vcpu_events,
    pub mp: kvm_mp_state,
    pub debugregs: kvm_debugregs,
    pub tsc_khz: u64,
    /// The run mapping's bytes at the checkpoint.
    pub run_copy: Vec<u8>,
    /// The reason of an exit the kernel held for the program at the
    /// checkpoint (made again at restart: `run.rs`).
    pub pending: Option<u32>,
    pub saved: bool,
}

impl Default for VcpuState {
    fn default() -> Self {
        VcpuState {
            regs: Default::default(),
            sregs: Default::default(),
            sregs2: Default::default(),
            xsave: Vec::new(),
            fpu: Default::default(),
            xcrs: Default::default(),
            msrs: Vec::new(),
            nmsrs: 0,
            lapic: kvm_lapic_state { regs: [0; 1024] },
            events: Default::default(),
            mp: Default::default(),
            debugregs: Default::default(),
            tsc_khz: 0,
            run_copy: Vec::new(),
            pending: None,
            saved: false,
        }
    }
}

impl Vcpu {
    #[cfg(test)]
    pub(crate) fn for_test() -> Vcpu {
        Vcpu {
            fd: -1,
            id: 0,
            run: AtomicUsize::new(0),
            run_len: AtomicUsize::new(0),
            prev_reason: AtomicU32::new(0),
            inner: UnsafeCell::new(VcpuInner {
                cloexec: true,
                run_prot: 0,
                setup: Vec::new(),
                stats_fds: Vec::new(),
                fd_gone: false,
                xsave_size: 0,
                sregs2: false,
                st: VcpuState::default(),
            }),
        }
    }

    /// # Safety
    /// See the `Sync` impl: the caller holds REG's lock in a no-checkpoint
    /// section, or is the checkpoint thread while program threads are
    /// suspended.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn inner(&self) -> &mut VcpuInner {
        // SAFETY: the caller's contract.
        unsafe { &mut *self.inner.get() }
    }
}

/// Every recorded VM.
pub(crate) struct Registry {
    pub vms: Vec<Vm>,
}

pub(crate) static REG: Mutex<Registry> = Mutex::new(Registry { vms: Vec::new() });

pub(crate) fn reg() -> std::sync::MutexGuard<'static, Registry> {
    REG.lock().unwrap_or_else(|e| e.into_inner())
}

/// vCPUs by fd number, for the KVM_RUN path (no lock). Numbers past the
/// table take the locked path.
pub(crate) const FD_TABLE: usize = 1 << 16;
pub(crate) static VCPU_BY_FD: [AtomicPtr<Vcpu>; FD_TABLE] =
    [const { AtomicPtr::new(core::ptr::null_mut()) }; FD_TABLE];

/// Every vCPU ever created, for the munmap wrapper (no lock).
pub(crate) const MAX_VCPUS: usize = 4096;
pub(crate) static ALL_VCPUS: [AtomicPtr<Vcpu>; MAX_VCPUS] =
    [const { AtomicPtr::new(core::ptr::null_mut()) }; MAX_VCPUS];
pub(crate) static NVCPUS: AtomicUsize = AtomicUsize::new(0);

/// Checkpoints and restarts so far (bumped in RESUME and RESTART): a
/// KVM_RUN that fails with EINTR while it changed was interrupted by the
/// checkpoint, not by the program's own signal, and is retried.
pub(crate) static GEN: AtomicU32 = AtomicU32::new(0);

/// The vCPU behind `fd`, if the plugin recorded one there.
#[inline]
pub(crate) fn vcpu_by_fd(fd: c_int) -> Option<&'static Vcpu> {
    if fd < 0 {
        return None;
    }
    if (fd as usize) < FD_TABLE {
        let p = VCPU_BY_FD[fd as usize].load(Acquire);
        // SAFETY: entries point to leaked (never freed) vCPUs.
        return (!p.is_null()).then(|| unsafe { &*p });
    }
    let _hold = sys::NoCkpt::new();
    let r = reg();
    r.vms
        .iter()
        .flat_map(|v| v.vcpus.iter())
        .find(|c| c.fd == fd)
        .copied()
}

fn set_vcpu_fd(fd: c_int, v: *mut Vcpu) {
    if fd >= 0 && (fd as usize) < FD_TABLE {
        VCPU_BY_FD[fd as usize].store(v, Release);
    }
}

/// The checkpoint signal (the KVM signal mask must never block it).
fn ckpt_signal() -> c_int {
    static SIG: AtomicU32 = AtomicU32::new(0);
    let s = SIG.load(Relaxed);
    if s != 0 {
        return s as c_int;
    }
    let n = std::env::var("DMTCP_CKPT_SIGNAL")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|&n| (1..=64).contains(&n))
        .unwrap_or(12);
    SIG.store(n, Relaxed);
    n as c_int
}

/// The MSRs KVM saves and restores (KVM_GET_MSR_INDEX_LIST of /dev/kvm).
pub(crate) fn msr_index_list() -> &'static [u32] {
    static LIST: std::sync::OnceLock<Vec<u32>> = std::sync::OnceLock::new();
    LIST.get_or_init(|| {
        // SAFETY: open of a literal path.
        let kvm = unsafe { libc::open(c"/dev/kvm".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        if kvm < 0 {
            return Vec::new();
        }
        let mut n: u32 = 0;
        // The first call says how many (E2BIG).
        sys::ioctl_ptr(kvm, kvm::GET_MSR_INDEX_LIST, &mut n);
        let mut buf = vec![0u32; 1 + n as usize];
        buf[0] = n;
        let r = sys::ioctl(kvm, kvm::GET_MSR_INDEX_LIST, buf.as_mut_ptr() as usize);
        sys::close(kvm);
        if r < 0 {
            return Vec::new();
        }
        let got = buf[0] as usize;
        buf[1..1 + got.min(n as usize)].to_vec()
    })
}

/// `1 << kvm_ioeventfd_flag_nr_deassign` of <linux/kvm.h>.
const IOEVENTFD_DEASSIGN_BIT: u32 = 2;

/// Requests that change what a VM or vCPU is (recorded). Everything else
/// passes straight through.
pub(crate) fn is_recorded(req: u64) -> bool {
    matches!(
        req,
        kvm::CREATE_VM
            | kvm::SET_MEMORY_REGION
            | kvm::CREATE_VCPU
            | kvm::SET_NR_MMU_PAGES
            | kvm::SET_USER_MEMORY_REGION
            | kvm::SET_USER_MEMORY_REGION2
            | kvm::SET_TSS_ADDR
            | kvm::SET_IDENTITY_MAP_ADDR
            | kvm::CREATE_IRQCHIP
            | kvm::CREATE_PIT
            | kvm::CREATE_PIT2
            | kvm::REINJECT_CONTROL
            | kvm::REGISTER_COALESCED_MMIO
            | kvm::UNREGISTER_COALESCED_MMIO
            | kvm::SET_GSI_ROUTING
            | kvm::IRQFD
            | kvm::IOEVENTFD
            | kvm::SET_BOOT_CPU_ID
            | kvm::ENABLE_CAP
            | kvm::SET_TSC_KHZ
            | kvm::X86_SET_MSR_FILTER
            | kvm::SET_PMU_EVENT_FILTER
            | kvm::CREATE_DEVICE
            | kvm::GET_STATS_FD
            | kvm::XEN_HVM_CONFIG
            | kvm::MEMORY_ENCRYPT_OP
            | kvm::CREATE_GUEST_MEMFD
            | kvm::SET_CPUID
            | kvm::SET_CPUID2
            | kvm::SET_SIGNAL_MASK
            | kvm::SET_GUEST_DEBUG
            | kvm::X86_SETUP_MCE
            | kvm::SET_VAPIC_ADDR
            | kvm::TPR_ACCESS_REPORTING
    )
}

/// Bytes at `arg` (the program's argument).
///
/// # Safety
/// `arg` points to `len` readable bytes.
unsafe fn bytes(arg: usize, len: usize) -> Vec<u8> {
    if arg == 0 {
        return Vec::new();
    }
    // SAFETY: the caller's contract.
    unsafe { core::slice::from_raw_parts(arg as *const u8, len) }.to_vec()
}

/// A copy of the `T` at `arg`.
///
/// # Safety
/// `arg` points to a readable `T`.
unsafe fn read<T: Copy>(arg: usize) -> T {
    // SAFETY: the caller's contract (unaligned reads are fine).
    unsafe { core::ptr::read_unaligned(arg as *const T) }
}

/// Which recorded object `fd` is.
enum Obj {
    Vm(usize),
    Vcpu(usize, usize),
    Other,
}

fn find(r: &Registry, fd: c_int) -> Obj {
    for (i, vm) in r.vms.iter().enumerate() {
        if vm.fd == fd && !vm.fd_gone && !vm.inherited {
            return Obj::Vm(i);
        }
        for (j, c) in vm.vcpus.iter().enumerate() {
            if c.fd == fd && !vm.inherited {
                return Obj::Vcpu(i, j);
            }
        }
    }
    Obj::Other
}

/// A recorded request on `fd`: the real call, in a section that holds
/// checkpoints off, then its record.
///
/// # Safety
/// The ioctl(2) contract for `req` and `arg`.
pub(crate) unsafe fn recorded(next: sys::IoctlFn, fd: c_int, req: u64, arg: usize) -> c_int {
    let _hold = sys::NoCkpt::new();
    // KVM_SET_SIGNAL_MASK: the program's mask without the checkpoint
    // signal (a vCPU in KVM_RUN must be interruptible by it).
    let mask_copy: Vec<u8>;
    let mut arg = arg;
    if req == kvm::SET_SIGNAL_MASK && arg != 0 {
        // SAFETY: struct kvm_signal_mask { u32 len; u8 sigset[len]; }.
        let len = unsafe { read::<u32>(arg) } as usize;
        // SAFETY: as above.
        let mut m = unsafe { bytes(arg, 4 + len) };
        let bit = (ckpt_signal() - 1) as usize;
        if bit / 8 < len {
            m[4 + bit / 8] &= !(1u8 << (bit % 8));
        }
        mask_copy = m;
        arg = mask_copy.as_ptr() as usize;
    }
    // SAFETY: forwarded contract.
    let r = unsafe { next(fd, req as _, arg) };
    if r < 0 {
        return r;
    }
    let e = sys::errno();
    let mut g = reg();
    let obj = find(&g, fd);
    // SAFETY: the program's argument of a call that succeeded.
    unsafe { record(&mut g, obj, fd, req, arg, r) };
    drop(g);
    sys::set_errno(e);
    r
}

/// Note what a successful call did.
///
/// # Safety
/// `arg` is the argument of `req`, which succeeded with result `r`.
unsafe fn record(g: &mut Registry, obj: Obj, fd: c_int, req: u64, arg: usize, r: c_int) {
    match obj {
        Obj::Other => {
            if req == kvm::CREATE_VM {
                sys::claim_fd(r);
                g.vms.push(Vm {
                    fd: r,
                    cloexec: sys::cloexec(r),
                    vm_type: arg as u64,
                    inherited: false,
                    fd_gone: false,
                    setup: Vec::new(),
                    slots: Vec::new(),
                    irqchip: false,
                    split_irqchip: false,
                    pit: false,
                    gsi_routing: None,
                    irqfds: Vec::new(),
                    ioeventfds: Vec::new(),
                    coalesced: Vec::new(),
                    msr_filter: None,
                    stats_fds: Vec::new(),
                    unsupported: (arg != 0).then(|| {
                        format!(
                            "a VM of type {arg} (confidential or protected VMs are not supported)"
                        )
                    }),
                    vcpus: Vec::new(),
                    st: VmState::default(),
                });
            }
        }
        Obj::Vm(i) => {
            let vm = &mut g.vms[i];
            // SAFETY: forwarded contract.
            unsafe { record_vm(vm, req, arg, r) };
            let _ = fd;
        }
        Obj::Vcpu(i, j) => {
            let vm = &mut g.vms[i];
            let c = vm.vcpus[j];
            // SAFETY: REG is held in a no-checkpoint section.
            let inner = unsafe { c.inner() };
            match req {
                kvm::SET_CPUID2 => {
                    // SAFETY: struct kvm_cpuid2 { u32 nent; u32 pad; entries[nent] }.
                    let n = unsafe { read::<u32>(arg) } as usize;
                    let len = 8 + n * core::mem::size_of::<kvm_cpuid_entry2>();
                    // SAFETY: as above.
                    let b = unsafe { bytes(arg, len) };
                    inner
                        .setup
                        .retain(|s| !matches!(s, Setup::Bytes(q, _) if *q == req));
                    inner.setup.push(Setup::Bytes(req, b));
                }
                kvm::SET_CPUID => {
                    // SAFETY: struct kvm_cpuid { u32 nent; u32 pad; entries[nent] }.
                    let n = unsafe { read::<u32>(arg) } as usize;
                    let len = 8 + n * core::mem::size_of::<kvm_cpuid_entry>();
                    // SAFETY: as above.
                    let b = unsafe { bytes(arg, len) };
                    inner
                        .setup
                        .retain(|s| !matches!(s, Setup::Bytes(q, _) if *q == req));
                    inner.setup.push(Setup::Bytes(req, b));
                }
                kvm::SET_SIGNAL_MASK => {
                    let len = if arg == 0 {
                        0
                    } else {
                        // SAFETY: the copy made above (u32 len + mask).
                        (unsafe { read::<u32>(arg) }) as usize
                    };
                    // SAFETY: as above.
                    let b = unsafe { bytes(arg, if arg == 0 { 0 } else { 4 + len }) };
                    inner
                        .setup
                        .retain(|s| !matches!(s, Setup::Bytes(q, _) if *q == req));
                    inner.setup.push(Setup::Bytes(req, b));
                }
                kvm::SET_GUEST_DEBUG
                | kvm::SET_VAPIC_ADDR
                | kvm::TPR_ACCESS_REPORTING
                | kvm::X86_SETUP_MCE => {
                    let len = ((req >> 16) & 0x3fff) as usize;
                    // SAFETY: the request's struct, `len` bytes.
                    let b = unsafe { bytes(arg, len) };
                    inner
                        .setup
                        .retain(|s| !matches!(s, Setup::Bytes(q, _) if *q == req));
                    inner.setup.push(Setup::Bytes(req, b));
                }
                kvm::ENABLE_CAP => {
                    // SAFETY: struct kvm_enable_cap.
                    let b = unsafe { bytes(arg, core::mem::size_of::<kvm_enable_cap>()) };
                    inner.setup.push(Setup::Bytes(req, b));
                }
                kvm::SET_TSC_KHZ => {
                    inner
                        .setup
                        .retain(|s| !matches!(s, Setup::Value(q, _) if *q == req));
                    inner.setup.push(Setup::Value(req, arg as u64));
                }
                kvm::GET_STATS_FD => {
                    sys::claim_fd(r);
                    inner.stats_fds.push((r, sys::cloexec(r)));
                }
                _ => {}
            }
        }
    }
}

/// A VM-level call that succeeded.
///
/// # Safety
/// `arg` is the argument of `req`.
unsafe fn record_vm(vm: &mut Vm, req: u64, arg: usize, r: c_int) {
    let struct_len = ((req >> 16) & 0x3fff) as usize;
    match req {
        kvm::CREATE_VCPU => {
            sys::claim_fd(r);
            let inner = new_vcpu_inner(vm, r);
            let c: &'static mut Vcpu = Box::leak(Box::new(Vcpu {
                fd: r,
                id: arg as u64,
                run: AtomicUsize::new(0),
                run_len: AtomicUsize::new(0),
                prev_reason: AtomicU32::new(0),
                inner: UnsafeCell::new(inner),
            }));
            let k = NVCPUS.fetch_add(1, SeqCst);
            if k < MAX_VCPUS {
                ALL_VCPUS[k].store(c, Release);
            }
            set_vcpu_fd(r, c);
            vm.setup.push(Setup::Vcpu(vm.vcpus.len()));
            vm.vcpus.push(c);
        }
        kvm::SET_USER_MEMORY_REGION => {
            // SAFETY: struct kvm_userspace_memory_region.
            let m: kvm_userspace_memory_region = unsafe { read(arg) };
            vm.slots.retain(|s| s.slot != m.slot);
            if m.memory_size != 0 {
                vm.slots.push(m);
            }
        }
        kvm::SET_USER_MEMORY_REGION2 => {
            // SAFETY: its first 32 bytes are a kvm_userspace_memory_region;
            // flags bit 2 (KVM_MEM_GUEST_MEMFD) adds guest_memfd fields.
            let m: kvm_userspace_memory_region = unsafe { read(arg) };
            if m.flags & (1 << 2) != 0 {
                vm.unsupported.get_or_insert_with(|| {
                    "guest_memfd memory (private guest memory outside the process) is not supported".into()
                });
            }
            vm.slots.retain(|s| s.slot != m.slot);
            if m.memory_size != 0 {
                vm.slots.push(m);
            }
        }
        kvm::SET_MEMORY_REGION => {
            vm.unsupported
                .get_or_insert_with(|| "KVM_SET_MEMORY_REGION (the pre-2007 memory API)".into());
        }
        kvm::CREATE_IRQCHIP => {
            vm.irqchip = true;
            vm.setup.push(Setup::Value(req, 0));
        }
        kvm::CREATE_PIT => {
            vm.pit = true;
            vm.setup.push(Setup::Value(req, 0));
        }
        kvm::CREATE_PIT2 => {
            vm.pit = true;
            // SAFETY: struct kvm_pit_config.
            let b = unsafe { bytes(arg, struct_len) };
            vm.setup.push(Setup::Bytes(req, b));
        }
        kvm::SET_TSS_ADDR | kvm::SET_NR_MMU_PAGES | kvm::SET_BOOT_CPU_ID | kvm::SET_TSC_KHZ => {
            vm.setup.push(Setup::Value(req, arg as u64));
        }
        kvm::SET_IDENTITY_MAP_ADDR => {
            // SAFETY: a u64.
            let b = unsafe { bytes(arg, 8) };
            vm.setup.push(Setup::Bytes(req, b));
        }
        kvm::REINJECT_CONTROL => {
            // SAFETY: struct kvm_reinject_control (32 bytes).
            let b = unsafe { bytes(arg, 32) };
            vm.setup.push(Setup::Bytes(req, b));
        }
        kvm::ENABLE_CAP => {
            // SAFETY: struct kvm_enable_cap.
            let b = unsafe { bytes(arg, struct_len) };
            // SAFETY: same struct.
            let cap: kvm_enable_cap = unsafe { read(arg) };
            if cap.cap as u64 == kvm::CAP_SPLIT_IRQCHIP {
                vm.split_irqchip = true;
            }
            if cap.cap as u64 == kvm::CAP_DIRTY_LOG_RING
                || cap.cap as u64 == kvm::CAP_DIRTY_LOG_RING_ACQ_REL
            {
                vm.unsupported
                    .get_or_insert_with(|| "the dirty ring (KVM_CAP_DIRTY_LOG_RING)".into());
            }
            vm.setup.push(Setup::Bytes(req, b));
        }
        kvm::X86_SET_MSR_FILTER => {
            // SAFETY: struct kvm_msr_filter; each range's bitmap holds
            // nmsrs bits.
            let f: kvm_msr_filter = unsafe { read(arg) };
            let maps = f
                .ranges
                .iter()
                .map(|rg| {
                    if rg.bitmap.is_null() || rg.nmsrs == 0 {
                        Vec::new()
                    } else {
                        // SAFETY: as above.
                        unsafe { bytes(rg.bitmap as usize, (rg.nmsrs as usize).div_ceil(8)) }
                    }
                })
                .collect();
            // SAFETY: the same struct, as bytes.
            let b = unsafe { bytes(arg, core::mem::size_of::<kvm_msr_filter>()) };
            vm.msr_filter = Some((b, maps));
        }
        kvm::SET_PMU_EVENT_FILTER => {
            // SAFETY: struct kvm_pmu_event_filter { ..., u32 nevents (at
            // 4), ..., u64 events[nevents] (at 32) }.
            let n = unsafe { read::<u32>(arg + 4) } as usize;
            // SAFETY: as above.
            let b = unsafe { bytes(arg, 32 + 8 * n) };
            vm.setup
                .retain(|s| !matches!(s, Setup::Bytes(q, _) if *q == req));
            vm.setup.push(Setup::Bytes(req, b));
        }
        kvm::REGISTER_COALESCED_MMIO => {
            // SAFETY: struct kvm_coalesced_mmio_zone.
            vm.coalesced.push(unsafe { read(arg) });
        }
        kvm::UNREGISTER_COALESCED_MMIO => {
            // SAFETY: struct kvm_coalesced_mmio_zone.
            let z: kvm_coalesced_mmio_zone = unsafe { read(arg) };
            // The kernel removes every zone inside the given one.
            vm.coalesced.retain(|c| {
                // SAFETY: reading the pad/pio union as u32.
                let same_space = unsafe { c.__bindgen_anon_1.pio == z.__bindgen_anon_1.pio };
                !(same_space
                    && c.addr >= z.addr
                    && c.addr + c.size as u64 <= z.addr + z.size as u64)
            });
        }
        kvm::SET_GSI_ROUTING => {
            // SAFETY: struct kvm_irq_routing { u32 nr; u32 flags; entries[nr] }.
            let n = unsafe { read::<u32>(arg) } as usize;
            let len = 8 + n * core::mem::size_of::<kvm_irq_routing_entry>();
            // SAFETY: as above.
            vm.gsi_routing = Some(unsafe { bytes(arg, len) });
        }
        kvm::IRQFD => {
            // SAFETY: struct kvm_irqfd.
            let f: kvm_irqfd = unsafe { read(arg) };
            vm.irqfds.retain(|x| !(x.fd == f.fd && x.gsi == f.gsi));
            if f.flags & KVM_IRQFD_FLAG_DEASSIGN == 0 {
                vm.irqfds.push(f);
            }
        }
        kvm::IOEVENTFD => {
            // SAFETY: struct kvm_ioeventfd.
            let f: kvm_ioeventfd = unsafe { read(arg) };
            let deassign = f.flags & (1 << IOEVENTFD_DEASSIGN_BIT) != 0;
            let key = |x: &kvm_ioeventfd| {
                (
                    x.fd,
                    x.addr,
                    x.len,
                    x.flags & !(1 << IOEVENTFD_DEASSIGN_BIT),
                    x.datamatch,
                )
            };
            let k = key(&f);
            vm.ioeventfds.retain(|x| key(x) != k);
            if !deassign {
                vm.ioeventfds.push(f);
            }
        }
        kvm::GET_STATS_FD => {
            sys::claim_fd(r);
            vm.stats_fds.push((r, sys::cloexec(r)));
        }
        kvm::CREATE_DEVICE => {
            // SAFETY: struct kvm_create_device { u32 type; u32 fd; u32 flags }.
            let d: kvm_create_device = unsafe { read(arg) };
            if d.flags & KVM_CREATE_DEVICE_TEST == 0 {
                let what = if d.type_ == KVM_DEV_TYPE_VFIO {
                    "a VFIO device (device passthrough) is not supported".to_string()
                } else {
                    format!("a KVM device of type {} is not supported", d.type_)
                };
                vm.unsupported.get_or_insert(what);
            }
        }
        kvm::XEN_HVM_CONFIG => {
            vm.unsupported
                .get_or_insert_with(|| "Xen guests (KVM_XEN_HVM_CONFIG) are not supported".into());
        }
        kvm::MEMORY_ENCRYPT_OP => {
            vm.unsupported.get_or_insert_with(|| {
                "encrypted guests (SEV, KVM_MEMORY_ENCRYPT_OP) are not supported".into()
            });
        }
        kvm::CREATE_GUEST_MEMFD => {
            vm.unsupported.get_or_insert_with(|| {
                "guest_memfd memory (private guest memory outside the process) is not supported"
                    .into()
            });
        }
        _ => {}
    }
}

/// A new vCPU's configuration and state buffers.
fn new_vcpu_inner(vm: &Vm, fd: c_int) -> VcpuInner {
    let xsave = sys::ioctl(vm.fd, kvm::CHECK_EXTENSION, kvm::CAP_XSAVE2 as usize);
    let xsave_size = if xsave > 0 {
        (xsave as usize).max(4096)
    } else if sys::ioctl(vm.fd, kvm::CHECK_EXTENSION, KVM_CAP_XSAVE as usize) > 0 {
        4096
    } else {
        0
    };
    let sregs2 = sys::ioctl(vm.fd, kvm::CHECK_EXTENSION, kvm::CAP_SREGS2 as usize) > 0;
    let list = msr_index_list();
    // struct kvm_msrs: u32 nmsrs, u32 pad, then 16-byte entries.
    let st = VcpuState {
        xsave: vec![0u8; xsave_size],
        msrs: vec![0u64; 1 + 2 * list.len()],
        ..Default::default()
    };
    VcpuInner {
        cloexec: sys::cloexec(fd),
        run_prot: libc::PROT_READ | libc::PROT_WRITE,
        setup: Vec::new(),
        stats_fds: Vec::new(),
        fd_gone: false,
        xsave_size,
        sregs2,
        st,
    }
}

/// The program mapped `len` bytes of vCPU fd `fd` at `addr` with `prot`.
pub(crate) fn mapped(c: &'static Vcpu, addr: usize, len: usize, prot: c_int, off: i64) {
    let _hold = sys::NoCkpt::new();
    let mut g = reg();
    if off >= kvm::DIRTY_LOG_PAGE_OFFSET * 4096 {
        if let Some(vm) = g
            .vms
            .iter_mut()
            .find(|v| v.vcpus.iter().any(|x| core::ptr::eq(*x, c)))
        {
            vm.unsupported.get_or_insert_with(|| {
                "the dirty ring (mapped from a vCPU) is not supported".into()
            });
        }
        return;
    }
    if off != 0 {
        return;
    }
    // SAFETY: REG held in a no-checkpoint section.
    let inner = unsafe { c.inner() };
    inner.run_prot = prot;
    inner.st.run_copy = vec![0u8; len];
    c.run_len.store(len, SeqCst);
    c.run.store(addr, SeqCst);
    // Device memory: kept out of images, its addresses held at restart
    // until the new vCPU's pages are mapped there.
    sys::exclude_memory(addr, len.div_ceil(4096) * 4096);
    drop(g);
}

/// The program unmapped `[addr, addr+len)`: forget run mappings in it.
pub(crate) fn unmapped(addr: usize, len: usize) {
    let n = NVCPUS.load(Acquire).min(MAX_VCPUS);
    for slot in &ALL_VCPUS[..n] {
        let p = slot.load(Acquire);
        if p.is_null() {
            continue;
        }
        // SAFETY: leaked vCPUs are never freed.
        let c = unsafe { &*p };
        let a = c.run.load(Acquire);
        let l = c.run_len.load(Acquire);
        if a != 0 && a < addr.saturating_add(len) && addr < a + l {
            c.run.store(0, SeqCst);
        }
    }
}

/// Set in a forked child whose registry was locked by another thread of
/// the parent at the fork (that thread does not exist here): the child
/// leaves the parent's VMs alone without looking at them.
pub(crate) static FORKED_LOCKED: core::sync::atomic::AtomicBool =
    core::sync::atomic::AtomicBool::new(false);

/// After a fork, in the child: the parent's VMs are not the child's (KVM
/// refuses them to another process). Their fds stay claimed (the file
/// plugin leaves them alone) and nothing is saved or re-created for them.
pub(crate) fn forked_child() {
    let mut g = match REG.try_lock() {
        Ok(g) => g,
        Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => {
            FORKED_LOCKED.store(true, SeqCst);
            return;
        }
    };
    for vm in g.vms.iter_mut() {
        vm.inherited = true;
        for c in &vm.vcpus {
            set_vcpu_fd(c.fd, core::ptr::null_mut());
            c.run.store(0, SeqCst);
        }
    }
}

/// Forget the fd table entry of a vCPU whose fd now leads elsewhere.
pub(crate) fn drop_vcpu_fd(c: &Vcpu) {
    if c.fd >= 0 && (c.fd as usize) < FD_TABLE {
        let p = VCPU_BY_FD[c.fd as usize].load(Acquire);
        if core::ptr::eq(p, c) {
            VCPU_BY_FD[c.fd as usize].store(core::ptr::null_mut(), Release);
        }
    }
}

/// Put a vCPU back in the fd table (restart).
pub(crate) fn set_vcpu_fd_of(c: &'static Vcpu) {
    set_vcpu_fd(c.fd, c as *const Vcpu as *mut Vcpu);
}

/// Is `target` (a readlink of /proc/self/fd) this vCPU?
pub(crate) fn is_vcpu_target(target: &[u8], id: u64) -> bool {
    let Some(rest) = target.strip_prefix(b"anon_inode:kvm-vcpu:") else {
        return false;
    };
    core::str::from_utf8(rest)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        == Some(id)
}

/// Is `target` a VM?
pub(crate) fn is_vm_target(target: &[u8]) -> bool {
    target == b"anon_inode:kvm-vm"
}

#[cfg(test)]
mod tests {
    #[test]
    fn targets() {
        assert!(super::is_vcpu_target(b"anon_inode:kvm-vcpu:3", 3));
        assert!(!super::is_vcpu_target(b"anon_inode:kvm-vcpu:3", 4));
        assert!(!super::is_vcpu_target(b"anon_inode:[eventfd]", 0));
        assert!(super::is_vm_target(b"anon_inode:kvm-vm"));
    }
}
