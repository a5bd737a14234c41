//! Signal actions, saved at checkpoint time and re-installed first thing by
//! the restart entry (raw syscalls, a static table: no allocation).

/// Raw kernel sigaction (as rt_sigaction reads and writes it).
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct KSigaction {
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: u64,
}

const NSIG: usize = 65;

/// Signal actions saved at checkpoint time, restored first thing at restart
/// (static, so the restart entry can reach them with no allocation).
pub static mut SIGACTIONS: [KSigaction; NSIG] = [KSigaction {
    handler: 0,
    flags: 0,
    restorer: 0,
    mask: 0,
}; NSIG];

/// Save every signal action (called with user threads suspended).
pub fn save_sigactions() {
    for sig in 1..NSIG {
        if sig == 9 || sig == 19 {
            continue;
        }
        let mut old = KSigaction::default();
        // SAFETY: rt_sigaction with a null new action only writes `old`.
        let r = unsafe {
            dmtcp_sys::syscall6(
                dmtcp_sys::nr::RT_SIGACTION,
                sig,
                0,
                &mut old as *mut KSigaction as usize,
                8,
                0,
                0,
            )
        };
        if r == 0 {
            // SAFETY: only the checkpoint thread writes this table, with user
            // threads suspended; the restart entry reads it single-threaded.
            unsafe { (*core::ptr::addr_of_mut!(SIGACTIONS))[sig] = old };
        }
    }
}

/// Re-install the saved signal actions (restart entry; raw syscalls only).
pub fn restore_sigactions() {
    for sig in 1..NSIG {
        if sig == 9 || sig == 19 {
            continue;
        }
        // SAFETY: single-threaded restart entry reads the static table.
        let a = unsafe { (*core::ptr::addr_of!(SIGACTIONS))[sig] };
        // SAFETY: rt_sigaction reads our struct; handlers are at their old addresses.
        unsafe {
            dmtcp_sys::syscall6(
                dmtcp_sys::nr::RT_SIGACTION,
                sig,
                &a as *const KSigaction as usize,
                0,
                8,
                0,
                0,
            )
        };
    }
}
