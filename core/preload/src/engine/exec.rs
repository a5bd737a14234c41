//! exec: the process stays in the computation across exec (its
//! coordinator connection is handed to the new program), with the
//! pre-exec and post-exec events.

use super::start::{ENABLED, INHERIT_VAR, LOADED};
use super::{capi, coord, plugin};
use core::sync::atomic::Ordering::SeqCst;

/// Environment marker telling an exec'd program's library that it comes
/// from an exec (for the post-exec event).
pub(super) const EXEC_MARK: &str = "DMTCP_EXEC_MARK";

type ExecveFn = unsafe extern "C" fn(
    *const libc::c_char,
    *const *const libc::c_char,
    *const *const libc::c_char,
) -> libc::c_int;

extern "C" {
    static environ: *const *const libc::c_char;
}

/// Before an exec: run the pre-exec event, hold checkpoints off, and leave
/// the coordinator connection open for the new program (it carries on as
/// the same process of the computation). True if the connection is handed
/// on. A vfork child shares its parent's memory but not its connection: it
/// touches neither (and holds nothing off: its parent, stopped in vfork
/// until the exec, could never be suspended while it waited).
fn before_exec() -> bool {
    plugin::run_user(plugin::Event::PreExec);
    let on = ENABLED.load(SeqCst) && !super::fork::in_vfork_child();
    if on {
        capi::dmtcp_disable_ckpt();
        // SAFETY: clearing close-on-exec on our own connection.
        unsafe { libc::fcntl(coord::COORD_FD, libc::F_SETFD, 0) };
    }
    on
}

/// `INHERIT_VAR=<pid>` as a NUL-terminated string.
fn inherit_entry() -> [u8; 48] {
    let mut b = [0u8; 48];
    let name = INHERIT_VAR.as_bytes();
    b[..name.len()].copy_from_slice(name);
    b[name.len()] = b'=';
    let k = name.len() + 1;
    let mut digits = [0u8; 20];
    let d = dmtcp_sys::fmt_u64(dmtcp_sys::getpid() as u64, &mut digits);
    b[k..k + d.len()].copy_from_slice(d);
    b
}

/// The exec failed: the process goes on as it was.
fn exec_failed(was_on: bool) {
    if was_on {
        // SAFETY: restoring close-on-exec on our connection.
        unsafe { libc::fcntl(coord::COORD_FD, libc::F_SETFD, libc::FD_CLOEXEC) };
        capi::dmtcp_enable_ckpt();
    }
}

/// `execv` with the pre-/post-exec events.
///
/// # Safety
/// The `execv(3)` contract.
#[no_mangle]
pub unsafe extern "C" fn execv(
    path: *const libc::c_char,
    argv: *const *const libc::c_char,
) -> libc::c_int {
    let Some(real) = next_exec(c"execve") else {
        return -1;
    };
    // SAFETY: forwarded contract; environ is the process's environment.
    unsafe { exec_with_env(environ, |env| real(path, argv, env)) }
}

/// `execvp` with the pre-/post-exec events.
///
/// # Safety
/// The `execvp(3)` contract.
#[no_mangle]
pub unsafe extern "C" fn execvp(
    file: *const libc::c_char,
    argv: *const *const libc::c_char,
) -> libc::c_int {
    let Some(real) = next_exec(c"execvpe") else {
        return -1;
    };
    // SAFETY: forwarded contract; environ is the process's environment.
    unsafe { exec_with_env(environ, |env| real(file, argv, env)) }
}

/// libc's exec call `name` taking an environment (execve, execvpe).
fn next_exec(name: &core::ffi::CStr) -> Option<ExecveFn> {
    let f = super::start::next_fn(name);
    // SAFETY: execve and execvpe have this signature.
    (!f.is_null()).then(|| unsafe { core::mem::transmute::<*mut libc::c_void, ExecveFn>(f) })
}

/// `execve` with the pre-exec event; the environment given gets the
/// post-exec marker when the process is checkpointed.
///
/// # Safety
/// The `execve(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn execve(
    path: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
) -> libc::c_int {
    let Some(real) = next_exec(c"execve") else {
        return -1;
    };
    // SAFETY: forwarded contract.
    unsafe { exec_with_env(envp, |env| real(path, argv, env)) }
}

/// `execvpe` (glibc's reaches execve internally, out of our sight).
///
/// # Safety
/// The `execvpe(3)` contract.
#[no_mangle]
pub unsafe extern "C" fn execvpe(
    file: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
) -> libc::c_int {
    let Some(real) = next_exec(c"execvpe") else {
        return -1;
    };
    // SAFETY: forwarded contract.
    unsafe { exec_with_env(envp, |env| real(file, argv, env)) }
}

/// Run an exec call that takes an environment: hold checkpoints off, give
/// the new program a copy of the environment with our markers, and undo
/// all that if it fails. The copy lives in pages of its own (mmap), not in
/// any heap: in a vfork child, malloc or the library's heap would be the
/// parent's, whose other threads (the checkpoint thread too) go on running.
///
/// # Safety
/// `envp` is null or a null-terminated array of C strings; `exec` is an
/// exec call taking such an array.
unsafe fn exec_with_env(
    envp: *const *const libc::c_char,
    exec: impl Fn(*const *const libc::c_char) -> libc::c_int,
) -> libc::c_int {
    if !LOADED.load(SeqCst) {
        return exec(envp);
    }
    let mut on = before_exec();
    let mut n = 0;
    // SAFETY: envp is null or a null-terminated array (exec contract).
    unsafe {
        while !envp.is_null() && !(*envp.add(n)).is_null() {
            n += 1;
        }
    }
    // After a restart the coordinator may be another one: the new
    // program's environment names the coordinator of now (the variables
    // are replaced; their text goes after the pointers).
    let coord = capi::coordinator_if_restarted();
    const HOST_VAR: &[u8] = b"DMTCP_COORD_HOST=";
    const PORT_VAR: &[u8] = b"DMTCP_COORD_PORT=";
    const SECRET_VAR: &[u8] = b"DMTCP_SECRET_FD=";
    let text = coord.map_or(0, |(h, _)| HOST_VAR.len() + h.len() + PORT_VAR.len() + 12)
        + SECRET_VAR.len()
        + 48;
    let ptrs = (n + 6) * core::mem::size_of::<usize>();
    let size = (ptrs + text).next_multiple_of(4096);
    // SAFETY: fresh private anonymous pages of our own.
    let buf = unsafe {
        super::unmap::sys_mmap(
            core::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if buf == libc::MAP_FAILED {
        // No room for a copy: exec as asked (the new program is not marked).
        exec_failed(on);
        return exec(envp);
    }
    let env = buf as *mut *const libc::c_char;
    let mut k = 0;
    let mut preloaded = false;
    for i in 0..n {
        // SAFETY: i < n entries of the caller's array, each a C string.
        let e = unsafe { *envp.add(i) };
        // SAFETY: as above.
        let bytes = unsafe { core::ffi::CStr::from_ptr(e) }.to_bytes();
        if bytes.starts_with(INHERIT_VAR.as_bytes()) || bytes.starts_with(EXEC_MARK.as_bytes()) {
            continue;
        }
        if coord.is_some() && (bytes.starts_with(HOST_VAR) || bytes.starts_with(PORT_VAR)) {
            continue;
        }
        if bytes.starts_with(SECRET_VAR) {
            continue;
        }
        preloaded |=
            bytes.starts_with(b"LD_PRELOAD=") && bytes.windows(9).any(|w| w == b"libdmtcp.");
        // SAFETY: k <= i < n + 3 slots of our buffer.
        unsafe { *env.add(k) = e };
        k += 1;
    }
    if on && !preloaded {
        // The new program will not be checkpointed: let the connection close.
        exec_failed(on);
        on = false;
    }
    let inherit = inherit_entry();
    // The coordinator's secret for the new program: an inherited pipe.
    let secret_fd = if on {
        super::secret::pipe_for_exec()
    } else {
        -1
    };
    // SAFETY: five more entries and the terminating null fit in n + 6
    // slots; the variables' text fits in the `text` bytes after them.
    unsafe {
        let mut at = (buf as *mut u8).add(ptrs);
        if secret_fd >= 0 {
            let mut digits = [0u8; 20];
            let d = dmtcp_sys::fmt_u64(secret_fd as u64, &mut digits);
            *env.add(k) = at as *const libc::c_char;
            k += 1;
            core::ptr::copy_nonoverlapping(SECRET_VAR.as_ptr(), at, SECRET_VAR.len());
            at = at.add(SECRET_VAR.len());
            core::ptr::copy_nonoverlapping(d.as_ptr(), at, d.len());
            at = at.add(d.len());
            // ",<pid>": the exec keeps the pid.
            *at = b',';
            at = at.add(1);
            let mut pd = [0u8; 20];
            let p = dmtcp_sys::fmt_u64(dmtcp_sys::getpid() as u64, &mut pd);
            core::ptr::copy_nonoverlapping(p.as_ptr(), at, p.len());
            at = at.add(p.len());
            *at = 0;
            at = at.add(1);
        }
        if let Some((host, port)) = coord {
            let mut digits = [0u8; 20];
            let d = dmtcp_sys::fmt_u64(port as u64, &mut digits);
            for (var, val) in [(HOST_VAR, host), (PORT_VAR, d)] {
                *env.add(k) = at as *const libc::c_char;
                k += 1;
                core::ptr::copy_nonoverlapping(var.as_ptr(), at, var.len());
                at = at.add(var.len());
                core::ptr::copy_nonoverlapping(val.as_ptr(), at, val.len());
                at = at.add(val.len());
                *at = 0;
                at = at.add(1);
            }
        }
        *env.add(k) = c"DMTCP_EXEC_MARK=1".as_ptr();
        k += 1;
        if on {
            *env.add(k) = inherit.as_ptr() as *const libc::c_char;
            k += 1;
        }
        *env.add(k) = core::ptr::null();
    }
    let r = exec(env as *const *const libc::c_char);
    // SAFETY: unmapping our own copy (the exec failed).
    unsafe { super::unmap::sys_munmap(buf, size) };
    if secret_fd >= 0 {
        // SAFETY: closing the pipe the new program did not take.
        unsafe { libc::close(secret_fd) };
    }
    exec_failed(on);
    r
}

/// Most arguments a variadic exec call may pass.
const EXEC_LIST_MAX: usize = 4096;

/// Body of execl (kind 0), execlp (1) and execle (2): `regs` holds the
/// first five list entries, `stack` the rest (see `arch`).
///
/// # Safety
/// Called only by the assembly in `arch` with the caller's arguments.
pub(crate) unsafe extern "C" fn exec_list(
    path: *const libc::c_char,
    regs: *const *const libc::c_char,
    stack: *const *const libc::c_char,
    kind: u32,
) -> libc::c_int {
    let arg = |i: usize| -> *const libc::c_char {
        // SAFETY: the caller passed at least i+1 list entries (the list is
        // NULL-terminated and we stop at the NULL).
        unsafe {
            if i < 5 {
                *regs.add(i)
            } else {
                *stack.add(i - 5)
            }
        }
    };
    let mut argv = [core::ptr::null::<libc::c_char>(); EXEC_LIST_MAX];
    let mut n = 0;
    loop {
        if n == EXEC_LIST_MAX {
            // SAFETY: setting errno.
            unsafe { *libc::__errno_location() = libc::E2BIG };
            return -1;
        }
        argv[n] = arg(n);
        if argv[n].is_null() {
            break;
        }
        n += 1;
    }
    // SAFETY: forwarding to our wrappers with a NULL-terminated argv.
    unsafe {
        match kind {
            0 => execv(path, argv.as_ptr()),
            1 => execvp(path, argv.as_ptr()),
            _ => execve(
                path,
                argv.as_ptr(),
                arg(n + 1) as *const *const libc::c_char,
            ),
        }
    }
}
