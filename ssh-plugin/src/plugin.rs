//! `libdmtcp_ssh.so`: the ssh plugin, on the public C interface only.
//!
//! - Its `execve`/`execvpe` come after libdmtcp.so's in LD_PRELOAD, so the
//!   engine's exec wrappers hand every exec of the computation to them: an
//!   exec of `ssh` (by name or a path ending in `/ssh`) whose environment
//!   keeps the plugin becomes an exec of `dmtcp_ssh --ssh <prog> -- <the
//!   ssh arguments>` (the program next to this library).
//! - Its event hook passes checkpoint phases to the relay running in this
//!   process (dmtcp_ssh or dmtcp_sshd register with `dmtcp_ssh_set_role`),
//!   and at every restart meets the whole computation at the global barrier
//!   `ssh:restart`: relays publish their new host before it and look their
//!   peer up after it.
//!
//! Exec rewriting may run in a vfork child (sharing its parent's heap):
//! it never allocates; the new argument vector lives in pages of its own.

mod capi;

use core::ffi::{c_char, c_int, c_void, CStr};
use core::sync::atomic::{AtomicUsize, Ordering};

/// `<dir of this library>/dmtcp_ssh`, NUL-terminated, set once at load.
struct PathBuf4k(core::cell::UnsafeCell<[u8; 4096]>);
// SAFETY: written once by the constructor before any other thread or exec
// can read it, then only read.
unsafe impl Sync for PathBuf4k {}
static DMTCP_SSH: PathBuf4k = PathBuf4k(core::cell::UnsafeCell::new([0; 4096]));

/// The relay's phase hook (0: none).
static ROLE: AtomicUsize = AtomicUsize::new(0);

#[repr(C)]
struct Descriptor {
    api: *const c_char,
    version: *const c_char,
    name: *const c_char,
    author: *const c_char,
    email: *const c_char,
    description: *const c_char,
    hook: extern "C" fn(c_int, *mut c_void),
}
// SAFETY: only pointers to static C strings and a function.
unsafe impl Sync for Descriptor {}

static DESCRIPTOR: Descriptor = Descriptor {
    api: c"1".as_ptr(),
    version: c"DMTCP-rs".as_ptr(),
    name: c"ssh".as_ptr(),
    author: c"DMTCP-rs".as_ptr(),
    email: c"".as_ptr(),
    description:
        c"ssh sessions of the computation: remote processes are checkpointed and reconnected"
            .as_ptr(),
    hook: event_hook,
};

const EVENT_PRESUSPEND: c_int = 3;
const EVENT_RESUME: c_int = 5;
const EVENT_RESTART: c_int = 6;

fn role(phase: c_int) {
    let p = ROLE.load(Ordering::Acquire);
    if p != 0 {
        // SAFETY: set by dmtcp_ssh_set_role from a function of this type.
        let f: extern "C" fn(c_int) = unsafe { core::mem::transmute(p) };
        f(phase);
    }
}

extern "C" fn event_hook(event: c_int, _data: *mut c_void) {
    match event {
        EVENT_PRESUSPEND => role(capi::PHASE_PRESUSPEND),
        EVENT_RESUME => role(capi::PHASE_RESUME),
        EVENT_RESTART => {
            role(capi::PHASE_RESTART_PUBLISH);
            capi::barrier(c"ssh:restart");
            role(capi::PHASE_RESTART_LOOKUP);
        }
        _ => {}
    }
}

/// Called by the relay programs: their phase hook.
#[no_mangle]
pub extern "C" fn dmtcp_ssh_set_role(hook: extern "C" fn(c_int)) {
    ROLE.store(hook as usize, Ordering::Release);
}

extern "C" fn init() {
    let mut info: libc::Dl_info = Dl_info_zeroed();
    // SAFETY: dladdr on a function of this library fills `info`.
    let ok =
        unsafe { libc::dladdr(init as *const c_void, &mut info) } != 0 && !info.dli_fname.is_null();
    if ok {
        // SAFETY: dli_fname is a C string owned by the dynamic loader.
        let lib = unsafe { CStr::from_ptr(info.dli_fname) }.to_bytes();
        let dir = match lib.iter().rposition(|&c| c == b'/') {
            Some(i) => &lib[..=i],
            None => b"./".as_slice(),
        };
        // SAFETY: only the constructor writes, before anything reads.
        let buf = unsafe { &mut *DMTCP_SSH.0.get() };
        // Beside the library (a build tree), or in the bin/ of an
        // installed prefix whose lib/dmtcp/ holds the library.
        for name in [
            b"dmtcp_ssh\0".as_slice(),
            b"../../bin/dmtcp_ssh\0".as_slice(),
        ] {
            if dir.len() + name.len() > buf.len() {
                break;
            }
            buf[..dir.len()].copy_from_slice(dir);
            buf[dir.len()..dir.len() + name.len()].copy_from_slice(name);
            // SAFETY: access() of the NUL-terminated path just written.
            if unsafe { libc::access(buf.as_ptr() as *const c_char, libc::X_OK) } == 0 {
                break;
            }
        }
    }
    // SAFETY: looking up the engine's registration function.
    let reg = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"dmtcp_register_plugin".as_ptr()) };
    if !reg.is_null() {
        // SAFETY: `void dmtcp_register_plugin(const DmtcpPluginDescriptor_t *)`.
        let f: extern "C" fn(*const Descriptor) = unsafe { core::mem::transmute(reg) };
        f(&DESCRIPTOR);
    }
}

#[allow(non_snake_case)]
fn Dl_info_zeroed() -> libc::Dl_info {
    libc::Dl_info {
        dli_fname: core::ptr::null(),
        dli_fbase: core::ptr::null_mut(),
        dli_sname: core::ptr::null(),
        dli_saddr: core::ptr::null_mut(),
    }
}

#[used]
#[link_section = ".init_array"]
static INIT: extern "C" fn() = init;

type ExecveFn =
    unsafe extern "C" fn(*const c_char, *const *const c_char, *const *const c_char) -> c_int;

fn next_exec(name: &CStr) -> Option<ExecveFn> {
    // SAFETY: dlsym RTLD_NEXT finds libc's definition after ours.
    let p = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) };
    // SAFETY: execve and execvpe have this signature.
    (!p.is_null()).then(|| unsafe { core::mem::transmute::<*mut c_void, ExecveFn>(p) })
}

/// Is `prog` (a path or a name) the ssh client?
fn is_ssh(prog: &[u8]) -> bool {
    let base = match prog.iter().rposition(|&c| c == b'/') {
        Some(i) => &prog[i + 1..],
        None => prog,
    };
    base == b"ssh"
}

/// Does the environment keep this plugin preloaded (so the new program is
/// a process of the computation)?
///
/// # Safety
/// `envp` is null or a null-terminated array of C strings.
unsafe fn keeps_plugin(envp: *const *const c_char) -> bool {
    let mut i = 0;
    // SAFETY: a null-terminated array (caller's contract).
    while !envp.is_null() && unsafe { !(*envp.add(i)).is_null() } {
        // SAFETY: each entry is a C string.
        let e = unsafe { CStr::from_ptr(*envp.add(i)) }.to_bytes();
        if e.starts_with(b"LD_PRELOAD=") {
            return e
                .windows(b"libdmtcp_ssh.".len())
                .any(|w| w == b"libdmtcp_ssh.");
        }
        i += 1;
    }
    false
}

/// If `prog` is ssh run inside the computation: exec `dmtcp_ssh --ssh prog
/// -- argv[1..]` instead. Returns only if that was not done or failed.
///
/// # Safety
/// The exec contract: C strings and null-terminated arrays.
unsafe fn exec_dmtcp_ssh(
    prog: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> Option<c_int> {
    // SAFETY: the constructor wrote it before any exec.
    let me = unsafe { &*DMTCP_SSH.0.get() };
    if prog.is_null()
        || argv.is_null()
        || me[0] == 0
        // SAFETY: prog is a C string (caller's contract).
        || !is_ssh(unsafe { CStr::from_ptr(prog) }.to_bytes())
        // SAFETY: envp is a NULL-terminated array (caller's contract).
        || !unsafe { keeps_plugin(envp) }
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
    let slots = n.max(1) + 4;
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
    // SAFETY: `slots` pointers fit in the mapping: 4 fixed entries, n-1
    // arguments, the final null.
    let r = unsafe {
        *v = me.as_ptr().cast();
        *v.add(1) = c"--ssh".as_ptr();
        *v.add(2) = prog;
        *v.add(3) = c"--".as_ptr();
        let mut k = 4;
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

/// `execve`: ssh becomes dmtcp_ssh.
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
    if let Some(r) = unsafe { exec_dmtcp_ssh(path, argv, envp) } {
        return r;
    }
    let Some(real) = next_exec(c"execve") else {
        return -1;
    };
    // SAFETY: forwarded contract.
    unsafe { real(path, argv, envp) }
}

/// `execvpe`: ssh (found in PATH by dmtcp_ssh) becomes dmtcp_ssh.
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
    if let Some(r) = unsafe { exec_dmtcp_ssh(file, argv, envp) } {
        return r;
    }
    let Some(real) = next_exec(c"execvpe") else {
        return -1;
    };
    // SAFETY: forwarded contract.
    unsafe { real(file, argv, envp) }
}
