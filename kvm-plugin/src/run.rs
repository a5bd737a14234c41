//! KVM_RUN, and the one piece of vCPU state no KVM_GET_* ioctl reports.
//!
//! When KVM_RUN returns an exit that needs the program (an IN, an OUT, an
//! MMIO read or write, RDMSR...), the kernel has not finished the guest's
//! instruction: it finishes it at the next KVM_RUN, with the program's
//! answer (the IN data it wrote into the run page), and only then moves the
//! guest past it (`complete_userspace_io`, invisible to user space). A vCPU
//! saved in between comes back, in a new VM, before that instruction, and
//! the new kernel knows nothing of the pending exit: run as is, the guest
//! would execute the instruction again and the program would see its OUT
//! twice, or answer its IN twice.
//!
//! So a checkpoint notes, per vCPU, whether such an exit is pending in the
//! kernel (see [`pending_exit`]):
//!
//! - an OUT needs no answer: the checkpoint lets the kernel finish it at
//!   once ([`finish_out`]). (Whether the guest is already past the OUT
//!   depends on how KVM handled it: its fast path moves the guest on only
//!   when it finishes the exit, its instruction emulator before it
//!   exits.) An MMIO write is already past: KVM emulates it.
//! - an IN, an MMIO read, RDMSR/WRMSR and hypercall exits wait for the
//!   program's answer, and the guest is still before the instruction. The
//!   restart makes the new vCPU execute that instruction again from the
//!   checkpoint thread before any program thread runs (`ckpt.rs`): the
//!   guest repeats the exit (an interrupt shadow set with its state keeps
//!   interrupts from coming first), the plugin checks it is the same exit
//!   and leaves it pending, and puts the program's run page back. The
//!   program then finishes handling the exit it was handling and calls
//!   KVM_RUN, and the new kernel finishes the instruction with its answer,
//!   as the old one would have.
//!
//! Whether the exit is still pending depends on whether the program's
//! next KVM_RUN has reached the kernel, which only the kernel knows. The
//! wrapper tells it from two fields of the run page: before the call it
//! writes [`APIC_BASE_MARK`] into `apic_base`, which the kernel overwrites
//! whenever KVM_RUN returns, and [`EXIT_SENTINEL`] into `exit_reason`,
//! which the kernel overwrites when it reports an exit (or EINTR from a
//! signal). KVM_RUN interrupted by the checkpoint signal (EINTR) is
//! retried.

use crate::kvm::*;
use crate::sys::{self, IoctlFn};
use crate::track::{Vcpu, GEN};
use core::ffi::c_int;
use core::sync::atomic::Ordering::*;

/// Written into `kvm_run.apic_base` before KVM_RUN: no APIC base has its
/// top bits set, and the kernel writes the real one whenever KVM_RUN
/// returns (`post_kvm_run_save`).
pub(crate) const APIC_BASE_MARK: u64 = 0xffff_4b56_4d00_0000;
/// Offset of `kvm_run.apic_base`.
pub(crate) const RUN_APIC_BASE: usize = 24;
const _: () = assert!(core::mem::offset_of!(kvm_run, apic_base) == RUN_APIC_BASE);

#[inline]
pub(crate) fn rd32(run: usize, off: usize) -> u32 {
    // SAFETY: `run` is a live run mapping (at least one page).
    unsafe { core::ptr::read_volatile((run + off) as *const u32) }
}

#[inline]
pub(crate) fn wr32(run: usize, off: usize, v: u32) {
    // SAFETY: as above.
    unsafe { core::ptr::write_volatile((run + off) as *mut u32, v) }
}

#[inline]
pub(crate) fn rd64(run: usize, off: usize) -> u64 {
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile((run + off) as *const u64) }
}

#[inline]
pub(crate) fn wr64(run: usize, off: usize, v: u64) {
    // SAFETY: as above.
    unsafe { core::ptr::write_volatile((run + off) as *mut u64, v) }
}

/// The program's KVM_RUN on vCPU `c`.
///
/// # Safety
/// `next` is libc's ioctl; `fd` is `c`'s fd.
pub(crate) unsafe fn run(next: IoctlFn, c: &'static Vcpu, fd: c_int, arg: usize) -> c_int {
    loop {
        let gen = GEN.load(SeqCst);
        let run = c.run.load(Acquire);
        if run == 0 {
            // SAFETY: forwarded call.
            return unsafe { next(fd, RUN as _, arg) };
        }
        // The order matters to `pending_exit`: the exit the program is done
        // with is kept before the marks go in.
        c.prev_reason.store(rd32(run, RUN_EXIT_REASON), SeqCst);
        wr64(run, RUN_APIC_BASE, APIC_BASE_MARK);
        wr32(run, RUN_EXIT_REASON, EXIT_SENTINEL);
        // SAFETY: forwarded call.
        let r = unsafe { next(fd, RUN as _, arg) };
        if r < 0 {
            let e = sys::errno();
            if rd32(run, RUN_EXIT_REASON) == EXIT_SENTINEL {
                // Returned without an exit (immediate_exit, or an error):
                // the exit before it was finished all the same.
                wr32(run, RUN_EXIT_REASON, KVM_EXIT_INTR);
            }
            if e == libc::EINTR && GEN.load(SeqCst) != gen {
                continue;
            }
            sys::set_errno(e);
        }
        return r;
    }
}

/// Is an exit pending in the kernel for this vCPU (read from its run page
/// while its thread is suspended)? Returns the exit's reason.
///
/// - `apic_base` holds the mark: the program called KVM_RUN (it is done
///   with its last exit) but the call has not reached the kernel, which
///   still holds that exit if it needs completing. Its reason is in
///   `exit_reason`, or, once the sentinel is there, in `prev_reason`.
/// - Otherwise the last KVM_RUN returned: with an exit (its reason in
///   `exit_reason`; pending if it needs completing, whether or not the
///   program has looked at it yet), or without one (the sentinel, or
///   KVM_EXIT_INTR: the call finished the previous exit first).
pub(crate) fn pending_exit(c: &Vcpu, run: usize) -> Option<u32> {
    let reason = rd32(run, RUN_EXIT_REASON);
    let reason = if rd64(run, RUN_APIC_BASE) == APIC_BASE_MARK && reason == EXIT_SENTINEL {
        c.prev_reason.load(SeqCst)
    } else {
        reason
    };
    needs_completion(reason).then_some(reason)
}

#[inline]
pub(crate) fn rd8(run: usize, off: usize) -> u8 {
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile((run + off) as *const u8) }
}

/// Let the kernel finish a pending OUT now, from the checkpoint thread:
/// KVM_RUN with `immediate_exit` set finishes the exit and returns EINTR
/// before the guest runs. The run page's first page is put back as it was
/// (`saved`), so the program sees nothing. Err(-errno) if KVM_RUN did
/// something else.
pub(crate) fn finish_out(fd: c_int, run: usize, saved: &[u8]) -> Result<(), isize> {
    // SAFETY: a byte of the run page.
    unsafe { core::ptr::write_volatile((run + RUN_IMMEDIATE_EXIT) as *mut u8, 1) };
    let r = sys::ioctl(fd, RUN, 0);
    let n = saved.len().min(4096);
    // SAFETY: the run page holds at least a page; `saved` was copied from it.
    unsafe { core::ptr::copy_nonoverlapping(saved.as_ptr(), run as *mut u8, n) };
    if r == -(libc::EINTR as isize) {
        Ok(())
    } else {
        Err(if r < 0 { r } else { -(libc::EPROTO as isize) })
    }
}

/// Does the exit now in `run` (the new vCPU's, at restart) repeat the one
/// of reason `want` whose data is in `saved` (the run page at the
/// checkpoint, whose `exit_reason` may hold the wrapper's sentinel)?
pub(crate) fn same_exit(run: usize, saved: &[u8], want: u32) -> bool {
    // SAFETY: the exit union of the run page.
    let page = unsafe { core::slice::from_raw_parts((run + RUN_EXIT) as *const u8, RUN_EXIT_LEN) };
    let exp = &saved[RUN_EXIT..RUN_EXIT + RUN_EXIT_LEN];
    let reason = rd32(run, RUN_EXIT_REASON);
    reason == want
        && match reason {
            // direction, size, port, count (the data offset may differ)
            EXIT_IO => page[..8] == exp[..8],
            // address, length, direction, and the data of a write
            EXIT_MMIO => {
                let write = page[MMIO_IS_WRITE - RUN_EXIT] != 0;
                page[..8] == exp[..8]
                    && page[16..21] == exp[16..21]
                    && (!write || page[8..16] == exp[8..16])
            }
            // reason and index (and the value written)
            EXIT_X86_RDMSR => page[8..16] == exp[8..16],
            EXIT_X86_WRMSR => page[8..24] == exp[8..24],
            // number and arguments
            EXIT_HYPERCALL => page[..56] == exp[..56],
            _ => true,
        }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::track::Vcpu;

    fn page(reason: u32, apic: u64) -> Vec<u8> {
        let mut p = vec![0u8; 4096];
        p[RUN_EXIT_REASON..RUN_EXIT_REASON + 4].copy_from_slice(&reason.to_ne_bytes());
        p[RUN_APIC_BASE..RUN_APIC_BASE + 8].copy_from_slice(&apic.to_ne_bytes());
        p
    }

    #[test]
    fn pending_exits_are_told_apart() {
        let c = Vcpu::for_test();
        // The program is handling an OUT: pending.
        let p = page(EXIT_IO, 0xfee0_0900);
        assert_eq!(pending_exit(&c, p.as_ptr() as usize), Some(EXIT_IO));
        // In the wrapper, marks written, call not made: pending (the
        // reason kept aside).
        c.prev_reason.store(EXIT_MMIO, SeqCst);
        let p = page(EXIT_SENTINEL, APIC_BASE_MARK);
        assert_eq!(pending_exit(&c, p.as_ptr() as usize), Some(EXIT_MMIO));
        // Marked, but the exit reason not overwritten yet.
        let p = page(EXIT_IO, APIC_BASE_MARK);
        assert_eq!(pending_exit(&c, p.as_ptr() as usize), Some(EXIT_IO));
        // The call returned without an exit (immediate_exit): finished.
        let p = page(EXIT_SENTINEL, 0xfee0_0900);
        assert_eq!(pending_exit(&c, p.as_ptr() as usize), None);
        // Interrupted by a signal: finished.
        let p = page(KVM_EXIT_INTR, 0xfee0_0900);
        assert_eq!(pending_exit(&c, p.as_ptr() as usize), None);
        // A HLT exit needs nothing.
        let p = page(KVM_EXIT_HLT, 0xfee0_0900);
        assert_eq!(pending_exit(&c, p.as_ptr() as usize), None);
    }

    #[test]
    fn repeated_exits_are_recognised() {
        let mut saved = page(EXIT_IO, 0);
        saved[IO_DIRECTION] = 1;
        saved[IO_SIZE] = 4;
        saved[IO_PORT..IO_PORT + 2].copy_from_slice(&0x11u16.to_ne_bytes());
        saved[IO_COUNT..IO_COUNT + 4].copy_from_slice(&1u32.to_ne_bytes());
        let mut now = saved.clone();
        now[IO_DATA_OFFSET] = 0x10;
        assert!(same_exit(now.as_ptr() as usize, &saved, EXIT_IO));
        now[IO_PORT] = 0x12;
        assert!(!same_exit(now.as_ptr() as usize, &saved, EXIT_IO));
        // The saved page may show the sentinel: the reason is given.
        let mut marked = saved.clone();
        marked[RUN_EXIT_REASON..RUN_EXIT_REASON + 4].copy_from_slice(&EXIT_SENTINEL.to_ne_bytes());
        now[IO_PORT] = 0x11;
        assert!(same_exit(now.as_ptr() as usize, &marked, EXIT_IO));
        assert!(!same_exit(now.as_ptr() as usize, &marked, EXIT_MMIO));
        let mut w = page(EXIT_MMIO, 0);
        w[MMIO_IS_WRITE] = 1;
        w[MMIO_DATA] = 7;
        let mut w2 = w.clone();
        assert!(same_exit(w2.as_ptr() as usize, &w, EXIT_MMIO));
        w2[MMIO_DATA] = 8;
        assert!(!same_exit(w2.as_ptr() as usize, &w, EXIT_MMIO));
    }
}
