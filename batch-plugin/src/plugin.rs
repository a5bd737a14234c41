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

type ExecveFn =
    unsafe extern "C" fn(*const c_char, *const *const c_char, *const *const c_char) -> c_int;

fn next_exec(name: &CStr) -> Option<ExecveFn> {
    // SAFETY: dlsym RTLD_NEXT finds the definition after ours (libc's).
    let p = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) };
    // SAFETY: execve and execvpe have this signature.
    (!p.is_null()).then(|| unsafe { core::mem::transmute::<*mut c_void, ExecveFn>(p) })
}

/// Is `prog` (a path or a name) SLURM's srun?
fn is_srun(prog: &[u8]) -> bool {
    let base = match prog.iter().rposition(|&c| c == b'/') {
        Some(i) => &prog[i + 1..],
        None => prog,
    };
    base == b"srun"
}

/// Does the environment keep this plugin preloaded (so the new program is
/// a process of the computation)?
///
/// # Safety
/// `envp` is null or a null-terminated array of C strings.
unsafe fn keeps_plugin(envp: *const *const c_char) -> bool {
    const LIB: &[u8] = b"libdmtcp_batch.";
    let mut i = 0;
    // SAFETY: a null-terminated array (caller's contract).
    while !envp.is_null() && unsafe { !(*envp.add(i)).is_null() } {
        // SAFETY: each entry is a C string.
        let e = unsafe { CStr::from_ptr(*envp.add(i)) }.to_bytes();
        if let Some(v) = e.strip_prefix(b"LD_PRELOAD=") {
            return v.windows(LIB.len()).any(|w| w == LIB);
        }
        i += 1;
    }
    false
}

/// If `prog` is srun run inside the computation: exec `dmtcp_srun --relay
/// --srun prog -- argv[1..]` instead. Returns only if that was not done or
/// failed.
///
/// # Safety
/// The exec contract: C strings and null-terminated arrays.
unsafe fn exec_dmtcp_srun(
    prog: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> Option<c_int> {
    // SAFETY: the constructor wrote it before any exec.
    let me = unsafe { &*DMTCP_SRUN.0.get() };
    if prog.is_null()
        || argv.is_null()
        || me[0] == 0
        // SAFETY: prog is a C string (caller's contract).
        || !is_srun(unsafe { CStr::from_ptr(prog) }.to_bytes())
        // SAFETY: envp is a NULL-terminated array (caller's contract).
        || !unsafe { keeps_plugin(envp) }
    {
        return None;
    }
    // A path that is not an executable file fails as it would have (a
    // caller may try each PATH entry in turn).
    // SAFETY: prog is a C string (caller's contract).
    if unsafe { CStr::from_ptr(prog) }.to_bytes().contains(&b'/')
        // SAFETY: access of that C string; it allocates nothing.
        && unsafe { libc::access(prog, libc::X_OK) } != 0
    {
        return None;
    }
    let real = next_exec(c"execve")?;
    let mut n = 0;
    // SAFETY: null-terminated argv.
    while unsafe { !(*argv.add(n)).is_null() } {
        n += 1;
    }
    let slots = n.max(1) + 5;
    let size = (slots * core::mem::size_of::<usize>()).next_multiple_of(4096);
    // SAFETY: fresh private pages of our own (no heap: this may be a vfork child).
    let buf = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if buf == libc::MAP_FAILED {
        return None;
    }
    let v = buf as *mut *const c_char;
    // SAFETY: `slots` pointers fit in the mapping: 5 fixed entries, n-1
    // arguments, the final null.
    let r = unsafe {
        *v = me.as_ptr().cast();
        *v.add(1) = c"--relay".as_ptr();
        *v.add(2) = c"--srun".as_ptr();
        *v.add(3) = prog;
        *v.add(4) = c"--".as_ptr();
        let mut k = 5;
        for i in 1..n {
            *v.add(k) = *argv.add(i);
            k += 1;
        }
        *v.add(k) = core::ptr::null();
        real(me.as_ptr().cast(), v as *const *const c_char, envp)
    };
    // SAFETY: our own mapping (the exec failed).
    unsafe { libc::munmap(buf, size) };
    Some(r)
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
    if let Some(r) = unsafe { exec_dmtcp_srun(path, argv, envp) } {
        return r;
    }
    let Some(real) = next_exec(c"execve") else {
        return -1;
    };
    // SAFETY: forwarded contract.
    unsafe { real(path, argv, envp) }
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
    if let Some(r) = unsafe { exec_dmtcp_srun(file, argv, envp) } {
        return r;
    }
    let Some(real) = next_exec(c"execvpe") else {
        return -1;
    };
    // SAFETY: forwarded contract.
    unsafe { real(file, argv, envp) }
}

#[cfg(test)]
mod tests {
    use super::is_srun;

    #[test]
    fn srun_by_name_or_path() {
        assert!(is_srun(b"srun"));
        assert!(is_srun(b"/usr/bin/srun"));
        assert!(!is_srun(b"/usr/bin/srun2"));
        assert!(!is_srun(b"sbatch"));
        assert!(!is_srun(b"/srun/x"));
    }
}
