//! System V shared memory (`shmget`/`shmat`) across a restart, with
//! virtual ids, as part of the sysv plugin.
//!
//! The memory of an attached segment is in the images like any shared
//! memory (and shared again at restart, see `tree.rs`); what this module
//! adds is the segment itself. At checkpoint time each process records
//! where it has segments attached (`/proc/self/maps` names them `/SYSV...`
//! with the segment id as inode), and the segment's leader records its
//! size, mode, key and whether it was removed while attached (and its
//! contents if no process of the job has it attached). At restart the
//! leader creates a segment again; after the barrier `sysv:made` one
//! process per segment (elected through the name service before
//! `sysv:opened`) copies the restored memory into it, and every process
//! attaches it at the old address over the restored mapping
//! (`SHM_REMAP`); after `sysv:attached` a segment that had been removed
//! is removed again (it lives on while attached).

use super::sysv::{Saved, SHM};
use crate::engine::iface as dmtcp;

const DB: &str = "dmtcp:sysv";
/// `SHM_DEST` in `shm_perm.mode`: removed, alive while attached.
const SHM_DEST: u16 = 0o1000;

/// An attached segment: (virtual id, start, length, writable, executable).
type Attach = (i32, u64, u64, bool, bool);

/// Attached segments of this process.
static ATTACHES: dmtcp::FLock<Vec<Attach>> = dmtcp::FLock::new(Vec::new());

type ShmGetFn = unsafe extern "C" fn(libc::key_t, libc::size_t, libc::c_int) -> libc::c_int;
type ShmAtFn =
    unsafe extern "C" fn(libc::c_int, *const libc::c_void, libc::c_int) -> *mut libc::c_void;
type ShmCtlFn = unsafe extern "C" fn(libc::c_int, libc::c_int, *mut libc::shmid_ds) -> libc::c_int;

static SHMGET: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);
static SHMAT: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);
static SHMCTL: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);

fn shmget_real(key: i32, size: usize, flags: i32) -> i32 {
    let f = dmtcp::libc_fn(&SHMGET, c"shmget");
    if f == 0 {
        return -1;
    }
    // SAFETY: libc's shmget.
    unsafe { core::mem::transmute::<usize, ShmGetFn>(f)(key, size, flags) }
}

fn shmat_real(id: i32, addr: *const libc::c_void, flags: i32) -> *mut libc::c_void {
    let f = dmtcp::libc_fn(&SHMAT, c"shmat");
    if f == 0 {
        return usize::MAX as *mut libc::c_void;
    }
    // SAFETY: libc's shmat.
    unsafe { core::mem::transmute::<usize, ShmAtFn>(f)(id, addr, flags) }
}

fn shmctl_real(id: i32, cmd: i32, buf: *mut libc::shmid_ds) -> i32 {
    let f = dmtcp::libc_fn(&SHMCTL, c"shmctl");
    if f == 0 {
        return -1;
    }
    // SAFETY: libc's shmctl.
    unsafe { core::mem::transmute::<usize, ShmCtlFn>(f)(id, cmd, buf) }
}

fn stat(id: i32) -> Option<libc::shmid_ds> {
    // SAFETY: a zeroed shmid_ds for IPC_STAT to fill.
    let mut ds: libc::shmid_ds = unsafe { core::mem::zeroed() };
    (shmctl_real(id, libc::IPC_STAT, &mut ds) == 0).then_some(ds)
}

/// `shmget(2)`, giving out virtual ids.
///
/// # Safety
/// As `shmget(2)`.
#[no_mangle]
pub unsafe extern "C" fn shmget(
    key: libc::key_t,
    size: libc::size_t,
    flags: libc::c_int,
) -> libc::c_int {
    // The new segment and its virtual id appear in one image or in neither.
    let _hold = dmtcp::CkptHold::new();
    let id = shmget_real(key, size, flags);
    super::sysv::record(SHM, id, key)
}

/// `shmat(2)` of the real segment.
///
/// # Safety
/// As `shmat(2)`.
#[no_mangle]
pub unsafe extern "C" fn shmat(
    id: libc::c_int,
    addr: *const libc::c_void,
    flags: libc::c_int,
) -> *mut libc::c_void {
    // Attached in one image with the id it was attached by, or not at all.
    let _hold = dmtcp::CkptHold::new();
    shmat_real(super::sysv::to_real(SHM, id), addr, flags)
}

/// `shmctl(2)` on the real segment.
///
/// # Safety
/// As `shmctl(2)`.
#[no_mangle]
pub unsafe extern "C" fn shmctl(
    id: libc::c_int,
    cmd: libc::c_int,
    buf: *mut libc::shmid_ds,
) -> libc::c_int {
    // IPC_INFO / SHM_INFO / SHM_STAT / SHM_STAT_ANY take no segment id.
    if matches!(cmd, 3 | 14 | 13 | 15) {
        return shmctl_real(id, cmd, buf);
    }
    // Lookup and call in one image (the call does not block).
    let _hold = dmtcp::CkptHold::new();
    let r = shmctl_real(super::sysv::to_real(SHM, id), cmd, buf);
    if r == 0 && cmd == libc::IPC_RMID {
        // Still attached somewhere? Then it lives on, and so does its id.
        if stat(super::sysv::to_real(SHM, id)).is_none() {
            super::sysv::forget(SHM, id);
        }
    }
    r
}

/// Leader, at checkpoint time: size, mode, removed?, and the contents if
/// nobody has it attached. False if the segment is gone.
pub fn save(s: &mut Saved, real: i32) -> bool {
    let Some(ds) = stat(real) else { return false };
    s.size = ds.shm_segsz as u64;
    s.mode = (ds.shm_perm.mode & 0o777) as i32;
    s.dest = ds.shm_perm.mode & SHM_DEST != 0;
    if ds.shm_nattch == 0 {
        let p = shmat_real(real, core::ptr::null(), libc::SHM_RDONLY);
        if p as isize != -1 {
            // SAFETY: the segment is mapped readable for its whole size.
            s.data =
                unsafe { core::slice::from_raw_parts(p as *const u8, s.size as usize) }.to_vec();
            // SAFETY: detaching our temporary mapping.
            unsafe { libc::shmdt(p) };
        }
    }
    true
}

/// Every process, at checkpoint time: where its segments are attached.
pub fn save_attaches() {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let mut out = Vec::new();
    for l in maps.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 6 || !f[5].starts_with("/SYSV") {
            continue;
        }
        let Some((a, b)) = f[0].split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end), Ok(id)) = (
            u64::from_str_radix(a, 16),
            u64::from_str_radix(b, 16),
            f[4].parse::<i32>(),
        ) else {
            continue;
        };
        let virt = super::sysv::record(SHM, id, libc::IPC_PRIVATE);
        out.push((
            virt,
            start,
            end - start,
            f[1].as_bytes().get(1) == Some(&b'w'),
            f[1].as_bytes().get(2) == Some(&b'x'),
        ));
    }
    ATTACHES.with(|v| *v = out);
}

/// Remove the killed job's segment `id` if it is still there and ours.
pub fn remove_stale(id: i32, uid: u32) {
    if stat(id).is_some_and(|ds| ds.shm_perm.cuid == uid) {
        shmctl_real(id, libc::IPC_RMID, core::ptr::null_mut());
    }
}

/// Leader, at restart: a new segment like the old one.
pub fn remake(s: &Saved) -> Option<i32> {
    let flags = libc::IPC_CREAT | libc::IPC_EXCL | s.mode;
    let mut id = shmget_real(s.key, s.size as usize, flags);
    if id < 0
        && std::io::Error::last_os_error().raw_os_error() == Some(libc::EEXIST)
        && s.key != libc::IPC_PRIVATE
    {
        let stale = shmget_real(s.key, 0, 0);
        if stale >= 0 {
            shmctl_real(stale, libc::IPC_RMID, core::ptr::null_mut());
        }
        id = shmget_real(s.key, s.size as usize, flags);
    }
    if id < 0 {
        return None;
    }
    if !s.data.is_empty() {
        let p = shmat_real(id, core::ptr::null(), 0);
        if p as isize != -1 {
            // SAFETY: copying the saved contents into the new segment's mapping.
            unsafe {
                core::ptr::copy_nonoverlapping(
                    s.data.as_ptr(),
                    p as *mut u8,
                    s.data.len().min(s.size as usize),
                );
                libc::shmdt(p);
            }
        }
    }
    Some(id)
}

/// After `sysv:made`: offer to copy each attached segment's memory.
pub fn claim_copies() {
    let pid = dmtcp_sys::getpid();
    for (virt, ..) in ATTACHES.with(|v| v.clone()) {
        let key = format!("c:{virt}");
        dmtcp::kv_put(DB, key.into_bytes(), pid.to_ne_bytes().to_vec());
    }
}

/// After `sysv:opened`: the elected copier fills the new segment from the
/// restored memory; everyone attaches it at the old address.
pub fn reattach() {
    let pid = dmtcp_sys::getpid();
    let mut copied: Vec<i32> = Vec::new();
    for (virt, start, len, writable, exec) in ATTACHES.with(|v| v.clone()) {
        let real = super::sysv::to_real(SHM, virt);
        let copier = dmtcp::kv_get(DB, format!("c:{virt}").as_bytes())
            .flatten()
            .is_some_and(|o| o == pid.to_ne_bytes());
        if copier && !copied.contains(&virt) {
            copied.push(virt);
            let p = shmat_real(real, core::ptr::null(), 0);
            if p as isize != -1 {
                let n = stat(real).map_or(len, |ds| (ds.shm_segsz as u64).min(len));
                // SAFETY: both mappings are at least `n` bytes; the restored one is readable.
                unsafe {
                    core::ptr::copy_nonoverlapping(start as *const u8, p as *mut u8, n as usize);
                    libc::shmdt(p);
                }
            }
        }
        // Only a whole-segment mapping can be replaced by the segment
        // (SHM_REMAP maps all of it and would cover what lies beyond).
        let whole = stat(real).is_some_and(|ds| (ds.shm_segsz as u64).div_ceil(4096) * 4096 == len);
        if !whole {
            dmtcp::warn(format_args!(
                "System V segment {virt} was attached in part at {start:#x}: that memory stays, not shared as a segment"
            ));
            continue;
        }
        let mut flags = libc::SHM_REMAP;
        if !writable {
            flags |= libc::SHM_RDONLY;
        }
        if exec {
            flags |= libc::SHM_EXEC;
        }
        let p = shmat_real(real, start as *const libc::c_void, flags);
        if p as u64 != start {
            dmtcp::warn(format_args!(
                "System V segment {virt} cannot be attached at {start:#x} again: {}; the memory stays, not shared as a segment",
                std::io::Error::last_os_error()
            ));
        }
    }
}

/// After `sysv:attached`: segments that had been removed are removed again.
pub fn remove_destroyed(saved: &[Saved]) {
    for s in saved.iter().filter(|s| s.leader && s.kind == SHM && s.dest) {
        shmctl_real(
            super::sysv::to_real(SHM, s.virt),
            libc::IPC_RMID,
            core::ptr::null_mut(),
        );
    }
}
