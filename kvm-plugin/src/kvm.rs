//! The KVM interface: the structs of <linux/kvm.h> (bindgen), the ioctl
//! numbers (the header's `_IO*` macros, which bindgen cannot evaluate) and
//! the few fields of `struct kvm_run` the plugin reads and writes.

#[allow(
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    dead_code,
    unsafe_op_in_unsafe_fn,
    clippy::all,
    clippy::undocumented_unsafe_blocks
)]
mod ffi {
    include!(concat!(env!("OUT_DIR"), "/kvm.rs"));
}
pub(crate) use ffi::*;

use core::mem::size_of;

const KVMIO: u64 = 0xAE;

const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (KVMIO << 8) | nr
}
const fn io(nr: u64) -> u64 {
    ioc(0, nr, 0)
}
const fn iow<T>(nr: u64) -> u64 {
    ioc(1, nr, size_of::<T>())
}
const fn ior<T>(nr: u64) -> u64 {
    ioc(2, nr, size_of::<T>())
}
const fn iowr<T>(nr: u64) -> u64 {
    ioc(3, nr, size_of::<T>())
}

/// Is `req` an ioctl of KVM (type 0xAE)?
#[inline]
pub(crate) fn is_kvm_ioctl(req: u64) -> bool {
    (req >> 8) & 0xff == KVMIO
}

// /dev/kvm
pub(crate) const CREATE_VM: u64 = io(0x01);
pub(crate) const GET_MSR_INDEX_LIST: u64 = iowr::<kvm_msr_list>(0x02);
pub(crate) const CHECK_EXTENSION: u64 = io(0x03);

// VM
pub(crate) const SET_MEMORY_REGION: u64 = iow::<kvm_memory_region>(0x40);
pub(crate) const CREATE_VCPU: u64 = io(0x41);
pub(crate) const SET_NR_MMU_PAGES: u64 = io(0x44);
pub(crate) const SET_USER_MEMORY_REGION: u64 = iow::<kvm_userspace_memory_region>(0x46);
pub(crate) const SET_TSS_ADDR: u64 = io(0x47);
pub(crate) const SET_IDENTITY_MAP_ADDR: u64 = iow::<u64>(0x48);
/// `KVM_SET_USER_MEMORY_REGION2` (Linux 6.8; not in older headers): its
/// struct is 160 bytes.
pub(crate) const SET_USER_MEMORY_REGION2: u64 = ioc(1, 0x49, 160);
pub(crate) const CREATE_IRQCHIP: u64 = io(0x60);
pub(crate) const GET_IRQCHIP: u64 = iowr::<kvm_irqchip>(0x62);
pub(crate) const SET_IRQCHIP: u64 = ior::<kvm_irqchip>(0x63);
pub(crate) const CREATE_PIT: u64 = io(0x64);
pub(crate) const REGISTER_COALESCED_MMIO: u64 = iow::<kvm_coalesced_mmio_zone>(0x67);
pub(crate) const UNREGISTER_COALESCED_MMIO: u64 = iow::<kvm_coalesced_mmio_zone>(0x68);
pub(crate) const SET_GSI_ROUTING: u64 = iow::<kvm_irq_routing>(0x6a);
pub(crate) const REINJECT_CONTROL: u64 = io(0x71);
pub(crate) const IRQFD: u64 = iow::<kvm_irqfd>(0x76);
pub(crate) const CREATE_PIT2: u64 = iow::<kvm_pit_config>(0x77);
pub(crate) const SET_BOOT_CPU_ID: u64 = io(0x78);
pub(crate) const IOEVENTFD: u64 = iow::<kvm_ioeventfd>(0x79);
pub(crate) const XEN_HVM_CONFIG: u64 = iow::<kvm_xen_hvm_config>(0x7a);
pub(crate) const SET_CLOCK: u64 = iow::<kvm_clock_data>(0x7b);
pub(crate) const GET_CLOCK: u64 = ior::<kvm_clock_data>(0x7c);
pub(crate) const GET_PIT2: u64 = ior::<kvm_pit_state2>(0x9f);
pub(crate) const SET_PIT2: u64 = iow::<kvm_pit_state2>(0xa0);
pub(crate) const SET_TSC_KHZ: u64 = io(0xa2);
pub(crate) const GET_TSC_KHZ: u64 = io(0xa3);
pub(crate) const CREATE_DEVICE: u64 = iowr::<kvm_create_device>(0xe0);
pub(crate) const MEMORY_ENCRYPT_OP: u64 = iowr::<core::ffi::c_ulong>(0xba);
pub(crate) const X86_SET_MSR_FILTER: u64 = iow::<kvm_msr_filter>(0xc6);
pub(crate) const SET_PMU_EVENT_FILTER: u64 = iow::<kvm_pmu_event_filter>(0xb2);
pub(crate) const GET_STATS_FD: u64 = io(0xce);
/// `KVM_CREATE_GUEST_MEMFD` (Linux 6.8): a 64-byte struct.
pub(crate) const CREATE_GUEST_MEMFD: u64 = ioc(3, 0xd4, 64);

// vCPU
pub(crate) const RUN: u64 = io(0x80);
pub(crate) const GET_REGS: u64 = ior::<kvm_regs>(0x81);
pub(crate) const SET_REGS: u64 = iow::<kvm_regs>(0x82);
pub(crate) const GET_SREGS: u64 = ior::<kvm_sregs>(0x83);
pub(crate) const SET_SREGS: u64 = iow::<kvm_sregs>(0x84);
pub(crate) const GET_MSRS: u64 = iowr::<kvm_msrs>(0x88);
pub(crate) const SET_MSRS: u64 = iow::<kvm_msrs>(0x89);
pub(crate) const SET_CPUID: u64 = iow::<kvm_cpuid>(0x8a);
pub(crate) const SET_SIGNAL_MASK: u64 = iow::<kvm_signal_mask>(0x8b);
pub(crate) const GET_FPU: u64 = ior::<kvm_fpu>(0x8c);
pub(crate) const SET_FPU: u64 = iow::<kvm_fpu>(0x8d);
pub(crate) const GET_LAPIC: u64 = ior::<kvm_lapic_state>(0x8e);
pub(crate) const SET_LAPIC: u64 = iow::<kvm_lapic_state>(0x8f);
pub(crate) const SET_CPUID2: u64 = iow::<kvm_cpuid2>(0x90);
pub(crate) const GET_MP_STATE: u64 = ior::<kvm_mp_state>(0x98);
pub(crate) const SET_MP_STATE: u64 = iow::<kvm_mp_state>(0x99);
pub(crate) const SET_GUEST_DEBUG: u64 = iow::<kvm_guest_debug>(0x9b);
pub(crate) const X86_SETUP_MCE: u64 = iow::<u64>(0x9c);
pub(crate) const GET_VCPU_EVENTS: u64 = ior::<kvm_vcpu_events>(0x9f);
pub(crate) const SET_VCPU_EVENTS: u64 = iow::<kvm_vcpu_events>(0xa0);
pub(crate) const GET_DEBUGREGS: u64 = ior::<kvm_debugregs>(0xa1);
pub(crate) const SET_DEBUGREGS: u64 = iow::<kvm_debugregs>(0xa2);
pub(crate) const ENABLE_CAP: u64 = iow::<kvm_enable_cap>(0xa3);
pub(crate) const GET_XSAVE: u64 = ior::<kvm_xsave>(0xa4);
pub(crate) const SET_XSAVE: u64 = iow::<kvm_xsave>(0xa5);
pub(crate) const GET_XCRS: u64 = ior::<kvm_xcrs>(0xa6);
pub(crate) const SET_XCRS: u64 = iow::<kvm_xcrs>(0xa7);
pub(crate) const GET_SREGS2: u64 = ior::<kvm_sregs2>(0xcc);
pub(crate) const SET_SREGS2: u64 = iow::<kvm_sregs2>(0xcd);
pub(crate) const GET_XSAVE2: u64 = ior::<kvm_xsave>(0xcf);
pub(crate) const SET_VAPIC_ADDR: u64 = iow::<kvm_vapic_addr>(0x93);
pub(crate) const TPR_ACCESS_REPORTING: u64 = iowr::<kvm_tpr_access_ctl>(0x92);

// Capabilities asked about.
pub(crate) const CAP_XSAVE2: u64 = KVM_CAP_XSAVE2 as u64;
pub(crate) const CAP_SREGS2: u64 = KVM_CAP_SREGS2 as u64;
pub(crate) const CAP_SPLIT_IRQCHIP: u64 = KVM_CAP_SPLIT_IRQCHIP as u64;
pub(crate) const CAP_DIRTY_LOG_RING: u64 = KVM_CAP_DIRTY_LOG_RING as u64;
pub(crate) const CAP_DIRTY_LOG_RING_ACQ_REL: u64 = KVM_CAP_DIRTY_LOG_RING_ACQ_REL as u64;

// Exit reasons (kvm_run.exit_reason).
pub(crate) const EXIT_IO: u32 = KVM_EXIT_IO;
pub(crate) const EXIT_HYPERCALL: u32 = KVM_EXIT_HYPERCALL;
pub(crate) const EXIT_MMIO: u32 = KVM_EXIT_MMIO;
pub(crate) const EXIT_X86_RDMSR: u32 = KVM_EXIT_X86_RDMSR;
pub(crate) const EXIT_X86_WRMSR: u32 = KVM_EXIT_X86_WRMSR;
pub(crate) const EXIT_XEN: u32 = KVM_EXIT_XEN;

/// Written into `exit_reason` by the KVM_RUN wrapper just before it asks
/// the kernel to run the vCPU: no exit has this number. Still there at a
/// checkpoint, it says the program has finished with the previous exit
/// (see `run.rs`).
pub(crate) const EXIT_SENTINEL: u32 = 0x4b56_4d00;

/// Does an exit of this reason leave work the kernel finishes at the next
/// KVM_RUN, with the program's answer (an IN, an MMIO read, RDMSR, ...)
/// or without (an OUT, an MMIO write)? The kernel keeps that work in
/// state no KVM_GET_* ioctl reports (`complete_userspace_io`).
pub(crate) fn needs_completion(reason: u32) -> bool {
    matches!(
        reason,
        EXIT_IO | EXIT_MMIO | EXIT_HYPERCALL | EXIT_X86_RDMSR | EXIT_X86_WRMSR | EXIT_XEN
    )
}

// struct kvm_run: fixed offsets of the x86-64 ABI (checked against the
// bindgen struct below).
pub(crate) const RUN_IMMEDIATE_EXIT: usize = 1;
pub(crate) const RUN_EXIT_REASON: usize = 8;
/// The exit union.
pub(crate) const RUN_EXIT: usize = 32;
pub(crate) const IO_DIRECTION: usize = RUN_EXIT;
#[cfg(test)]
pub(crate) const IO_SIZE: usize = RUN_EXIT + 1;
#[cfg(test)]
pub(crate) const IO_PORT: usize = RUN_EXIT + 2;
#[cfg(test)]
pub(crate) const IO_COUNT: usize = RUN_EXIT + 4;
#[cfg(test)]
pub(crate) const IO_DATA_OFFSET: usize = RUN_EXIT + 8;
#[cfg(test)]
pub(crate) const MMIO_DATA: usize = RUN_EXIT + 8;
pub(crate) const MMIO_IS_WRITE: usize = RUN_EXIT + 20;
/// Bytes of the exit union compared when an exit is replayed.
pub(crate) const RUN_EXIT_LEN: usize = 256;

const _: () = assert!(core::mem::offset_of!(kvm_run, immediate_exit) == RUN_IMMEDIATE_EXIT);
const _: () = assert!(core::mem::offset_of!(kvm_run, exit_reason) == RUN_EXIT_REASON);
const _: () = assert!(core::mem::offset_of!(kvm_run, __bindgen_anon_1) == RUN_EXIT);
const _: () = assert!(size_of::<kvm_regs>() == 144);
const _: () = assert!(size_of::<kvm_sregs2>() == 320);
const _: () = assert!(size_of::<kvm_xsave>() == 4096);
const _: () = assert!(size_of::<kvm_vcpu_events>() == 64);
const _: () = assert!(size_of::<kvm_clock_data>() == 48);

/// MSR numbers the plugin treats apart.
pub(crate) const MSR_IA32_TSC: u32 = 0x10;
pub(crate) const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;

/// CR4.VMXE and EFER.SVME: the guest runs guests of its own.
pub(crate) const CR4_VMXE: u64 = 1 << 13;
pub(crate) const EFER_SVME: u64 = 1 << 12;

/// `kvm_vcpu_events.interrupt.shadow`: blocking by MOV SS (also holds NMIs).
pub(crate) const SHADOW_INT_MOV_SS: u8 = 1;

/// Mapping offsets of a vCPU fd beyond the run, PIO and coalesced MMIO
/// pages: the dirty ring (KVM_DIRTY_LOG_PAGE_OFFSET, 64 pages in).
pub(crate) const DIRTY_LOG_PAGE_OFFSET: i64 = 64;

#[cfg(test)]
mod tests {
    use super::*;

    /// The numbers <linux/kvm.h>'s macros give (printed by a C program).
    #[test]
    fn ioctl_numbers_match_the_header() {
        assert_eq!(RUN, 0xae80);
        assert_eq!(CREATE_VM, 0xae01);
        assert_eq!(CREATE_VCPU, 0xae41);
        assert_eq!(GET_SREGS2, 0x8140_aecc);
        assert_eq!(SET_CPUID2, 0x4008_ae90);
        assert_eq!(ENABLE_CAP, 0x4068_aea3);
        assert_eq!(IRQFD, 0x4020_ae76);
        assert_eq!(GET_VCPU_EVENTS, 0x8040_ae9f);
        assert_eq!(GET_PIT2, 0x8070_ae9f);
        assert_eq!(SET_GSI_ROUTING, 0x4008_ae6a);
        assert_eq!(X86_SET_MSR_FILTER, 0x4188_aec6);
        assert_eq!(GET_XSAVE2, 0x9000_aecf);
        assert_eq!(GET_MSRS, 0xc008_ae88);
        assert_eq!(SET_MSRS, 0x4008_ae89);
        assert_eq!(SET_USER_MEMORY_REGION, 0x4020_ae46);
        assert_eq!(GET_IRQCHIP, 0xc208_ae62);
        assert_eq!(SET_IRQCHIP, 0x8208_ae63);
        assert_eq!(GET_CLOCK, 0x8030_ae7c);
        assert_eq!(SET_CLOCK, 0x4030_ae7b);
        assert!(is_kvm_ioctl(RUN) && !is_kvm_ioctl(0x5401));
    }
}
