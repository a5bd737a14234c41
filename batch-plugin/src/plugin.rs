//! `libdmtcp_batch.so`: srun run by a process of the computation.
//!
//! Its `execve`/`execvpe` come after libdmtcp.so's (and libdmtcp_ssh.so's)
//! in LD_PRELOAD, so the engine's exec wrappers hand every exec of the
//! computation to them. An exec of `srun` (by name or a path ending in
//! `/srun` that is an executable file) whose environment keeps this plugin
//! becomes an exec of `dmtcp_srun --relay --srun <prog> -- <srun's
//! arguments>` (the program next to this library, or in the `bin/` of an
//! installed prefix): a stand-in that stays in the computation, in the
//! place of srun (mpirun's child, the batch script's), and runs the real
//! srun outside it with every task under `dmtcp_launch --join-coordinator`
//! (docs/batch.md).
//!
//! Exec rewriting may run in a vfork child (sharing its parent's heap): it
//! never allocates; the new argument vector lives in pages of its own.

use core::ffi::{c_char, c_int, c_void, CStr};

#[path = "../../ssh-plugin/src/execrelay.rs"]
mod execrelay;

/// `<dir of this library>/dmtcp_srun`, NUL-terminated, set once at load.
struct PathBuf4k(core::cell::UnsafeCell<[u8; 4096]>);
// SAFETY: written once by the constructor before any other thread or exec
// can read it, then only read.
unsafe impl Sync for PathBuf4k {}
static DMTCP_SRUN: PathBuf4k = PathBuf4k(core::cell::UnsafeCell::new([0; 4096]));

extern "C" fn init() {
    let mut info = libc::Dl_info {
        dli_fname: core::ptr::null(),
        dli_fbase: core::ptr::null_mut(),
        dli_sname: core::ptr::null(),
        dli_saddr: core::ptr::null_mut(),
    };
    // SAFETY: dladdr on a function of this library fills `info`.
    let ok =
        unsafe { libc::dladdr(init as *const c_void, &mut info) } != 0 && !info.dli_fname.is_null();
    if !ok {
        return;
    }
    // SAFETY: dli_fname is a C string owned by the dynamic loader.
    let lib = unsafe { CStr::from_ptr(info.dli_fname) }.to_bytes();
    let dir = match lib.iter().rposition(|&c| c == b'/') {
        Some(i) => &lib[..=i],
        None => b"./".as_slice(),
    };
    // SAFETY: only the constructor writes, before anything reads.
    let buf = unsafe { &mut *DMTCP_SRUN.0.get() };
    // Beside the library (a build tree), or in the bin/ of an installed
    // prefix whose lib/dmtcp/ holds the library.
    for name in [
        b"dmtcp_srun\0".as_slice(),
        b"../../bin/dmtcp_srun\0".as_slice(),
    ] {
        if dir.len() + name.len() > buf.len() {
            break;
        }
        buf[..dir.len()].copy_from_slice(dir);
        buf[dir.len()..dir.len() + name.len()].copy_from_slice(name);
        // SAFETY: access() of the NUL-terminated path just written.
        if unsafe { libc::access(buf.as_ptr() as *const c_char, libc::X_OK) } == 0 {
            return;
        }
    }
    buf[0] = 0;
}

#[used]
#[link_section = ".init_array"]
static INIT: extern "C" fn() = init;

/// srun, relayed through dmtcp_srun (found by the constructor).
fn relay() -> execrelay::Relay<'static> {
    execrelay::Relay {
        // SAFETY: the constructor wrote it before any exec.
        relay: unsafe { &*DMTCP_SRUN.0.get() },
        program: b"srun",
        lib: b"libdmtcp_batch.",
        options: &[c"--relay", c"--srun"],
    }
}

/// `execve`: srun becomes dmtcp_srun --relay.
///
/// # Safety
/// The `execve(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn execve(
    path: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    // SAFETY: forwarded contract.
    unsafe { execrelay::exec_or_relay(c"execve", &relay(), path, argv, envp) }
}

/// `execvpe`: srun (found in PATH by dmtcp_srun) becomes dmtcp_srun --relay.
///
/// # Safety
/// The `execvpe(3)` contract.
#[no_mangle]
pub unsafe extern "C" fn execvpe(
    file: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    // SAFETY: forwarded contract.
    unsafe { execrelay::exec_or_relay(c"execvpe", &relay(), file, argv, envp) }
}

#[cfg(test)]
mod tests {
    fn is_srun(p: &[u8]) -> bool {
        super::execrelay::named(p, b"srun")
    }

    #[test]
    fn srun_by_name_or_path() {
        assert!(is_srun(b"srun"));
        assert!(is_srun(b"/usr/bin/srun"));
        assert!(!is_srun(b"/usr/bin/srun2"));
        assert!(!is_srun(b"sbatch"));
        assert!(!is_srun(b"/srun/x"));
    }
}
