//! Exec of a program by a process of the computation turned into the exec
//! of a relay that stays in the computation and runs the real program
//! outside it: `ssh` into `dmtcp_ssh --ssh ssh -- args` (this crate's
//! plugin), `srun` into `dmtcp_srun --relay --srun srun -- args` (the
//! batch plugin, which includes this file). No heap: this may run in a
//! vfork child.

use core::ffi::{c_char, c_int, c_void, CStr};

pub type ExecveFn =
    unsafe extern "C" fn(*const c_char, *const *const c_char, *const *const c_char) -> c_int;

/// libc's definition of `name` (`execve` or `execvpe`), after ours.
pub fn next_exec(name: &CStr) -> Option<ExecveFn> {
    // SAFETY: dlsym RTLD_NEXT finds libc's definition after ours.
    let p = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) };
    // SAFETY: execve and execvpe have this signature.
    (!p.is_null()).then(|| unsafe { core::mem::transmute::<*mut c_void, ExecveFn>(p) })
}

/// Is `prog` (a path or a name) the program called `name`?
pub fn named(prog: &[u8], name: &[u8]) -> bool {
    let base = match prog.iter().rposition(|&c| c == b'/') {
        Some(i) => &prog[i + 1..],
        None => prog,
    };
    base == name
}

/// Does the environment keep the plugin whose file name contains `lib`
/// preloaded (so the new program is a process of the computation)?
///
/// # Safety
/// `envp` is null or a null-terminated array of C strings.
pub unsafe fn keeps_plugin(envp: *const *const c_char, lib: &[u8]) -> bool {
    let mut i = 0;
    // SAFETY: a null-terminated array (caller's contract).
    while !envp.is_null() && unsafe { !(*envp.add(i)).is_null() } {
        // SAFETY: each entry is a C string.
        let e = unsafe { CStr::from_ptr(*envp.add(i)) }.to_bytes();
        if let Some(v) = e.strip_prefix(b"LD_PRELOAD=") {
            return v.windows(lib.len()).any(|w| w == lib);
        }
        i += 1;
    }
    false
}

/// What a plugin relays: the program's name, its plugin library's name (as
/// `LD_PRELOAD` spells it) and the relay's options before the program.
pub struct Relay<'a> {
    /// The relay's path, NUL-terminated (empty or starting with NUL: none).
    pub relay: &'a [u8],
    pub program: &'a [u8],
    pub lib: &'a [u8],
    pub options: &'a [&'a CStr],
}

/// If `prog` is `r.program` run inside the computation: exec `r.relay
/// r.options... prog -- argv[1..]` instead. Returns only if that was not
/// done (None) or failed (the exec's result).
///
/// # Safety
/// The exec contract: C strings and null-terminated arrays.
pub unsafe fn exec_relay(
    r: &Relay,
    prog: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> Option<c_int> {
    if prog.is_null()
        || argv.is_null()
        || r.relay.first().is_none_or(|&c| c == 0)
        // SAFETY: prog is a C string (caller's contract).
        || !named(unsafe { CStr::from_ptr(prog) }.to_bytes(), r.program)
        // SAFETY: envp is a NULL-terminated array (caller's contract).
        || !unsafe { keeps_plugin(envp, r.lib) }
    {
        return None;
    }
    // A path that is not an executable file fails as it would have
    // (callers such as Python's subprocess try each PATH entry in turn).
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
    let fixed = r.options.len() + 3; // relay, options, prog, "--"
    let slots = n.max(1) + fixed;
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
    // SAFETY: `slots` pointers fit in the mapping: the fixed entries, n-1
    // arguments, the final null.
    let res = unsafe {
        *v = r.relay.as_ptr().cast();
        let mut k = 1;
        for o in r.options {
            *v.add(k) = o.as_ptr();
            k += 1;
        }
        *v.add(k) = prog;
        *v.add(k + 1) = c"--".as_ptr();
        k += 2;
        for i in 1..n {
            *v.add(k) = *argv.add(i);
            k += 1;
        }
        *v.add(k) = core::ptr::null();
        real(r.relay.as_ptr().cast(), v as *const *const c_char, envp)
    };
    // SAFETY: our own mapping (the exec failed).
    unsafe { libc::munmap(buf, size) };
    Some(res)
}

/// `execve` or `execvpe` (`which`) through the relay of `r` when it
/// applies, libc's otherwise.
///
/// # Safety
/// The exec contract: C strings and null-terminated arrays.
pub unsafe fn exec_or_relay(
    which: &CStr,
    r: &Relay,
    prog: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    // SAFETY: forwarded contract.
    if let Some(res) = unsafe { exec_relay(r, prog, argv, envp) } {
        return res;
    }
    let Some(real) = next_exec(which) else {
        return -1;
    };
    // SAFETY: forwarded contract.
    unsafe { real(prog, argv, envp) }
}
