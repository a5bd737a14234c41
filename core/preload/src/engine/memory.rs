//! Which memory to save: /proc/self/maps classified into image areas, and
//! the work items the writer threads share.

use core::sync::atomic::AtomicBool;
use dmtcp_common::image::Area;
use dmtcp_sys::restore::*;
use std::io::Read;

/// How a work item's pages are selected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Select {
    /// Memory restored as fresh anonymous memory (anonymous mappings,
    /// shared anonymous memory, mappings of deleted files): pages present or
    /// swapped, and not all zero (zero pages come back as zero anyway).
    Anon,
    /// Shared anonymous memory (MAP_SHARED anonymous, memfd, System V,
    /// deleted shared files): as `Anon`, but pages count when the shared
    /// object holds them, not only when this process has them mapped (a
    /// memfd filled with write(2), pages only another process touched).
    SharedAnon,
    /// Private file mapping: pages that became private copies (written),
    /// zero or not, since the file underneath may differ.
    Cow,
    /// A shared file mapping whose contents are kept (POSIX shared memory):
    /// every page within the file, zero or not (they are written back into
    /// the file, which may have changed since).
    Shared,
}

/// A slice of an area for one writer to scan and write.
#[derive(Clone, Copy, Debug)]
pub struct Item {
    pub start: u64,
    pub len: u64,
    pub select: Select,
    /// Overlaps the stack of one of our running threads.
    pub volatile: bool,
}

/// Scratch ranges left out of images (writer buffers): restored as zeroes.
pub static EXCLUDED: super::flock::FLock<Vec<(u64, u64)>> = super::flock::FLock::new(Vec::new());

/// Leave `[start, start+len)` out of every image.
pub fn exclude(start: u64, len: u64) {
    EXCLUDED.with(|x| x.push((start, start + len)));
}

/// Ranges left out of images entirely (`dmtcp_skip_memory`): nothing is
/// mapped there after a restart.
pub static SKIPPED: super::flock::FLock<Vec<(u64, u64)>> = super::flock::FLock::new(Vec::new());

/// Leave `[start, start+len)` out of every image, unmapped at restart (a
/// plugin re-creates what was there); `len` 0 stops skipping the range
/// that starts at `start`.
pub fn skip(start: u64, len: u64) {
    if len > 0 {
        REQUESTED_RANGES.store(true, core::sync::atomic::Ordering::Relaxed);
    }
    SKIPPED.with(|x| {
        x.retain(|r| r.0 != start);
        if len > 0 {
            x.push((start, start + len));
        }
    });
}

/// Stop excluding the range that starts at `start`.
pub fn unexclude(start: u64) {
    EXCLUDED.with(|x| x.retain(|r| r.0 != start));
}

/// Set once a range is excluded or skipped on request (a plugin or
/// `dmtcp_exclude_memory`): from then on the unmap wrappers look at them.
pub static REQUESTED_RANGES: core::sync::atomic::AtomicBool =
    core::sync::atomic::AtomicBool::new(false);

/// `ranges` without `[a, b)`.
fn subtract(ranges: &mut Vec<(u64, u64)>, a: u64, b: u64) {
    let mut out = Vec::with_capacity(ranges.len() + 1);
    for &(s, e) in ranges.iter() {
        if e <= a || b <= s {
            out.push((s, e));
            continue;
        }
        if s < a {
            out.push((s, a));
        }
        if b < e {
            out.push((b, e));
        }
    }
    *ranges = out;
}

/// The program unmapped (or replaced) `[start, start+len)`: exclusions
/// and skips end there. They were asked for the memory mapped then; what
/// is mapped there later is the program's again and is saved.
pub fn forget_ranges(start: u64, len: u64) {
    if !REQUESTED_RANGES.load(core::sync::atomic::Ordering::Relaxed) || len == 0 {
        return;
    }
    // The library's own threads (Rust's std unmaps their signal stacks)
    // never had requests, and a writer must not wait for a checkpoint.
    if super::threads::is_own(dmtcp_sys::gettid()) {
        return;
    }
    let end = start.saturating_add(len.div_ceil(4096) * 4096);
    let _hold = super::capi::CkptHold::new();
    EXCLUDED.with(|x| subtract(x, start, end));
    SKIPPED.with(|x| subtract(x, start, end));
}

/// Address ranges of this library's writable data (.data, .bss): they
/// change while images are written. Recorded by address at start-up, since
/// after a restart /proc/self/maps may show them backed by an image file.
static SELF_RANGES: std::sync::OnceLock<Vec<(u64, u64)>> = std::sync::OnceLock::new();

/// Find this library's writable ranges (at start-up: dladdr may take the loader's lock).
pub fn init_self_ranges() {
    let mut path = String::new();
    // SAFETY: dladdr fills `info` for an address inside this library.
    unsafe {
        let mut info: libc::Dl_info = core::mem::zeroed();
        if libc::dladdr(
            init_self_ranges as *const () as *const libc::c_void,
            &mut info,
        ) != 0
            && !info.dli_fname.is_null()
        {
            let p = std::ffi::CStr::from_ptr(info.dli_fname)
                .to_string_lossy()
                .into_owned();
            path = std::fs::canonicalize(&p)
                .map(|c| c.display().to_string())
                .unwrap_or(p);
        }
    }
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let mut ranges = Vec::new();
    let mut after_self = false;
    for line in maps.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let name = f.get(5).copied().unwrap_or("");
        let (s, e) = f[0].split_once('-').unwrap_or(("0", "0"));
        let writable = f.get(1).is_some_and(|p| p.as_bytes().get(1) == Some(&b'w'));
        let ours = name == path || (after_self && name.is_empty());
        if ours && writable {
            ranges.push((parse_hex(s), parse_hex(e)));
        }
        after_self = name == path;
    }
    let _ = SELF_RANGES.set(ranges);
}

/// `[start, end)` minus the excluded ranges.
fn minus_excluded(start: u64, end: u64, ex: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = vec![(start, end)];
    for &(xs, xe) in ex {
        subtract(&mut out, xs, xe);
    }
    out
}

/// Pages per work item.
pub const ITEM_PAGES: u64 = 1024;

/// The memory plan of one checkpoint.
pub struct Plan {
    pub areas: Vec<Area>,
    pub items: Vec<Item>,
    /// [vvar], [vvar_vclock], [vdso].
    pub special: [(u64, u64); 3],
    /// Areas made readable for the write and their original protection.
    pub reprotect: Vec<(u64, u64, u32)>,
    /// Private anonymous writable areas, `[start, end)`: those whose
    /// written pages [`super::dirty`] can track.
    pub track: Vec<(u64, u64)>,
}

fn parse_hex(s: &str) -> u64 {
    u64::from_str_radix(s, 16).unwrap_or(0)
}

/// Parse /proc/self/maps into a plan. Runs while user threads are suspended.
pub fn plan() -> std::io::Result<Plan> {
    let mut text = String::with_capacity(1 << 16);
    std::fs::File::open("/proc/self/maps")?.read_to_string(&mut text)?;
    let mut p = Plan {
        areas: Vec::new(),
        items: Vec::new(),
        special: [(0, 0); 3],
        reprotect: Vec::new(),
        track: Vec::new(),
    };
    let excluded = EXCLUDED.with(|x| x.clone());
    let skipped = SKIPPED.with(|x| x.clone());
    let mut stacks: Vec<(u64, u64)> = super::threads::own_stacks().collect();
    stacks.extend(SELF_RANGES.get().map(Vec::as_slice).unwrap_or(&[]));
    let arena: Vec<(u64, u64)> = super::alloc::arena_range().into_iter().collect();
    warn_verbs_without_plugin(&text);
    for line in text.lines() {
        let mut f = line.splitn(6, ' ');
        let range = f.next().unwrap_or("");
        let perms = f.next().unwrap_or("").as_bytes();
        let offset = parse_hex(f.next().unwrap_or("0"));
        let _device = f.next();
        let inode: u64 = f.next().unwrap_or("0").parse().unwrap_or(0);
        let name = f.next().unwrap_or("").trim_start();
        let (s, e) = range.split_once('-').unwrap_or(("0", "0"));
        let (start, end) = (parse_hex(s), parse_hex(e));
        if end <= start || perms.len() < 4 {
            continue;
        }
        if let Some(i) = SPECIAL_NAMES.iter().position(|n| n == &name.as_bytes()) {
            p.special[i] = (start, end - start);
            continue;
        }
        if name == "[vsyscall]" || dmtcp_sys::in_restorer_window(start as usize, end as usize) {
            continue;
        }
        // Ranges plugins keep out of images entirely (device memory they
        // re-create themselves) are left out of the plan: after a restart
        // nothing is mapped there.
        let (orig_start, orig_offset) = (start, offset);
        for (start, end) in minus_excluded(start, end, &skipped) {
            let offset = orig_offset + (start - orig_start);
            let mut prot = 0u32;
            if perms[0] == b'r' {
                prot |= libc::PROT_READ as u32;
            }
            if perms[1] == b'w' {
                prot |= libc::PROT_WRITE as u32;
            }
            if perms[2] == b'x' {
                prot |= libc::PROT_EXEC as u32;
            }
            let shared = perms[3] == b's';
            let deleted = name.ends_with(" (deleted)");
            let is_file = name.starts_with('/') && inode != 0;
            let anon_shared = shared
                && (name.starts_with("/dev/zero")
                    || name.starts_with("/SYSV")
                    || name.starts_with("/memfd:")
                    || !is_file
                    || deleted);
            let mut file_size = 0u64;
            let file_ok = is_file && !deleted && file_matches(name, inode, &mut file_size);
            if shared
                && file_ok
                && !anon_shared
                && name.starts_with("/dev/")
                && is_char_device(name)
            {
                // Device memory (a verbs device's queues, a GPU's): the
                // device's state, outside any image. Its plugin re-creates
                // it; mapping the device file again would give a mapping
                // the device no longer backs.
                warn_device_once(name);
                continue;
            }
            let (kind, select, path) = if anon_shared {
                (KIND_ANON_SHARED, Some(Select::SharedAnon), String::new())
            } else if shared && file_ok && is_temp_path(name) {
                // POSIX shared memory and files in temporary directories (an
                // MPI library's session directory) are the job's own and are
                // gone after a reboot or on another host: keep their contents
                // as of the checkpoint, to write back at restart (where
                // `dmtcp_restart` creates the file again if it is missing).
                (KIND_FILE_SHARED, Some(Select::Shared), name.to_string())
            } else if shared && file_ok {
                (KIND_FILE_SHARED, None, name.to_string())
            } else if shared {
                (KIND_ANON_SHARED, Some(Select::SharedAnon), String::new())
            } else if file_ok {
                (KIND_FILE_PRIVATE, Some(Select::Cow), name.to_string())
            } else if is_file {
                // A private mapping of a deleted or replaced file: keep every
                // page we can see, restore it as anonymous memory.
                (KIND_ANON_PRIVATE, Some(Select::Anon), String::new())
            } else {
                let label = if name.starts_with('[') {
                    name.to_string()
                } else {
                    String::new()
                };
                (KIND_ANON_PRIVATE, Some(Select::Anon), label)
            };
            let mut flags = if name == "[stack]" { AREA_GROWSDOWN } else { 0 };
            if kind == KIND_FILE_SHARED && select.is_some() {
                flags |= AREA_SAVED;
            }
            let shm = if kind == KIND_ANON_SHARED { inode } else { 0 };
            p.areas.push(Area {
                start,
                len: end - start,
                offset,
                prot,
                kind,
                flags,
                path,
                file_size,
                shm,
            });
            // (Not the library's own heap, stacks and data: its threads
            // write them while the image is written.)
            if select == Some(Select::Anon)
                && !shared
                && inode == 0
                && prot & libc::PROT_WRITE as u32 != 0
                && !stacks
                    .iter()
                    .chain(&arena)
                    .any(|&(ls, le)| start < le && ls < end)
            {
                p.track.push((start, end));
            }
            if let Some(select) = select {
                if prot & libc::PROT_READ as u32 == 0 {
                    p.reprotect.push((start, end - start, prot));
                }
                // Pages past the end of a file cannot be read (SIGBUS).
                let end = if kind == KIND_FILE_SHARED {
                    let in_file = file_size.saturating_sub(offset).div_ceil(4096) * 4096;
                    end.min(start + in_file)
                } else {
                    end
                };
                for (s, e) in minus_excluded(start, end, &excluded) {
                    let mut a = s;
                    while a < e {
                        let len = (e - a).min(ITEM_PAGES * 4096);
                        let volatile = stacks.iter().any(|&(ls, le)| a < le && ls < a + len);
                        p.items.push(Item {
                            start: a,
                            len,
                            select,
                            volatile,
                        });
                        a += len;
                    }
                }
            }
        }
    }
    Ok(p)
}

/// A file in a directory of temporary files (whose contents a restart
/// cannot expect to find: per-host, cleaned at boot or when a job ends).
pub(crate) fn is_temp_path(path: &str) -> bool {
    ["/tmp/", "/var/tmp/", "/dev/shm/", "/run/user/"]
        .iter()
        .any(|d| path.starts_with(d))
}

fn is_char_device(path: &str) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_char_device())
}

/// Devices whose mappings were left out, named once per process.
static WARNED_DEVICES: super::flock::FLock<Vec<String>> = super::flock::FLock::new(Vec::new());

/// A program using InfiniBand verbs without the plugin (`dmtcp_launch
/// --ib`) is told once that its device state will not survive a restart.
/// (The software device's library, whose file is libsoftib_verbs.so behind
/// its libibverbs.so.1 link; or rdma-core's with a device open: programs
/// such as QEMU link libibverbs without using it.)
fn warn_verbs_without_plugin(maps: &str) {
    static WARNED: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
    if WARNED.load(core::sync::atomic::Ordering::Relaxed) {
        return;
    }
    let verbs =
        maps.contains("/libsoftib_verbs.so") || (maps.contains("/libibverbs.so") && uverbs_open());
    if verbs
        && !maps.contains("/libdmtcp_ib.so")
        && !WARNED.swap(true, core::sync::atomic::Ordering::Relaxed)
    {
        super::log::warn(format_args!(
            "this program uses InfiniBand verbs (libibverbs) without the InfiniBand plugin: its queue pairs, memory regions and completion queues will not survive a restart (run it with dmtcp_launch --ib)"
        ));
    }
}

/// Has this process a verbs device (/dev/infiniband/...) open?
fn uverbs_open() -> bool {
    std::fs::read_dir("/proc/self/fd").is_ok_and(|d| {
        d.flatten().any(|e| {
            std::fs::read_link(e.path())
                .is_ok_and(|t| t.to_string_lossy().starts_with("/dev/infiniband/"))
        })
    })
}

fn warn_device_once(path: &str) {
    let new = WARNED_DEVICES.with(|w| {
        let new = !w.iter().any(|p| p == path);
        if new {
            w.push(path.to_string());
        }
        new
    });
    if new && !SKIPPED.with(|x| !x.is_empty()) {
        super::log::warn(format_args!("memory mapped from the device {path} is not saved: after a restart only the plugin that drives the device can make it again"));
    }
}

/// Does `path` still name the file mapped (same inode)? Records its size.
fn file_matches(path: &str, inode: u64, size: &mut u64) -> bool {
    match std::fs::metadata(path) {
        Ok(m) => {
            use std::os::unix::fs::MetadataExt;
            *size = m.size();
            m.ino() == inode
        }
        Err(_) => false,
    }
}

/// Has this process (or the one it was forked from) asked `madvise(2)`
/// for `MADV_DONTFORK` or `MADV_WIPEONFORK`? Until it has, no mapping
/// has either flag (exec clears them, and so this), and [`fork_unsafe`]
/// need not read /proc/self/smaps, which walks every page table (about
/// 20 ms a GiB, in the pause).
static FORK_ADVICE: AtomicBool = AtomicBool::new(false);

/// `madvise(2)`: the advice a forked writer must know of is noted (before
/// the call: a checkpoint between the two then looks in vain, never
/// misses it). A raw `syscall(SYS_madvise, ...)` is not seen: a
/// `MADV_DONTFORK` area so marked kills the writer (the round fails, the
/// previous generation stays); a `MADV_WIPEONFORK` one is imaged as
/// zeroes, which is what its owner expects of a new process.
///
/// # Safety
/// The `madvise(2)` contract.
#[no_mangle]
pub unsafe extern "C" fn madvise(
    addr: *mut libc::c_void,
    len: libc::size_t,
    advice: libc::c_int,
) -> libc::c_int {
    if advice == libc::MADV_DONTFORK || advice == libc::MADV_WIPEONFORK {
        FORK_ADVICE.store(true, core::sync::atomic::Ordering::SeqCst);
    }
    let f = super::iface::next_libc!(
        c"madvise",
        unsafe extern "C" fn(*mut libc::c_void, libc::size_t, libc::c_int) -> libc::c_int
    );
    // SAFETY: forwarded as the program passed it.
    unsafe { f(addr, len, advice) }
}

/// Why a forked child could not write this process's memory, if it
/// could not: a mapping of the plan the kernel does not copy into a
/// child (`MADV_DONTFORK`, as verbs libraries may mark registered memory)
/// or copies as zeroes (`MADV_WIPEONFORK`). Read from /proc/self/smaps,
/// once the program has asked for either. (Device memory left out of
/// images, which drivers often mark so, does not matter.)
pub fn fork_unsafe(plan: &Plan) -> Option<String> {
    if !FORK_ADVICE.load(core::sync::atomic::Ordering::SeqCst) {
        return None;
    }
    let text = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let mut area = "";
    let mut planned = false;
    for line in text.lines() {
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            if !planned {
                continue;
            }
            let mut it = flags.split_whitespace();
            if let Some(f) = it.find(|f| *f == "dc" || *f == "wf") {
                let what = if f == "dc" {
                    "MADV_DONTFORK"
                } else {
                    "MADV_WIPEONFORK"
                };
                return Some(format!(
                    "the mapping {area} is marked {what}: a forked child cannot read it"
                ));
            }
        } else if let Some((a, b)) = line.split_whitespace().next().and_then(|r| {
            let (a, b) = r.split_once('-')?;
            Some((
                u64::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b, 16).ok()?,
            ))
        }) {
            area = line;
            planned = plan
                .items
                .iter()
                .any(|it| it.start < b && a < it.start + it.len);
        }
    }
    None
}

/// Make unreadable areas readable for the write (their original protection
/// is in the image and restored after).
pub fn open_up(p: &Plan) {
    for &(s, l, prot) in &p.reprotect {
        // SAFETY: adding PROT_READ to an existing mapping of this process.
        unsafe {
            libc::mprotect(
                s as *mut libc::c_void,
                l as usize,
                prot as i32 | libc::PROT_READ,
            )
        };
    }
}

/// Undo [`open_up`].
pub fn close_down(p: &Plan) {
    for &(s, l, prot) in &p.reprotect {
        // SAFETY: restoring the protection the mapping had.
        unsafe { libc::mprotect(s as *mut libc::c_void, l as usize, prot as i32) };
    }
}

/// Read /proc/self/stat's memory layout fields in prctl_mm_map order
/// (start_code, end_code, start_data, end_data, start_brk, brk, start_stack,
/// arg_start, arg_end, env_start, env_end).
pub fn mm_layout() -> [u64; 11] {
    let mut out = [0u64; 11];
    let Ok(s) = std::fs::read_to_string("/proc/self/stat") else {
        return out;
    };
    let Some(rest) = s.rfind(')').map(|i| &s[i + 2..]) else {
        return out;
    };
    // Fields after ")" start at field 3 (state).
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let field = |n: usize| f.get(n - 3).copied().unwrap_or(0);
    // SAFETY: brk(0) only reports the current break.
    let brk = unsafe { libc::syscall(libc::SYS_brk, 0) } as u64;
    out = [
        field(26),
        field(27),
        field(45),
        field(46),
        field(47),
        brk,
        field(28),
        field(48),
        field(49),
        field(50),
        field(51),
    ];
    out
}

#[cfg(test)]
mod tests {
    use super::{minus_excluded, subtract};

    #[test]
    fn unmapped_parts_leave_the_requests() {
        let mut v = vec![(0x1000, 0x5000), (0x8000, 0x9000)];
        subtract(&mut v, 0x2000, 0x3000);
        assert_eq!(
            v,
            vec![(0x1000, 0x2000), (0x3000, 0x5000), (0x8000, 0x9000)]
        );
        subtract(&mut v, 0x0, 0x1800);
        assert_eq!(
            v,
            vec![(0x1800, 0x2000), (0x3000, 0x5000), (0x8000, 0x9000)]
        );
        subtract(&mut v, 0x4000, 0x10000);
        assert_eq!(v, vec![(0x1800, 0x2000), (0x3000, 0x4000)]);
        subtract(&mut v, 0x5000, 0x6000);
        assert_eq!(v, vec![(0x1800, 0x2000), (0x3000, 0x4000)]);
    }

    #[test]
    fn exclusion_splits_ranges() {
        assert_eq!(
            minus_excluded(0, 100, &[(10, 20), (50, 60)]),
            vec![(0, 10), (20, 50), (60, 100)]
        );
        assert_eq!(minus_excluded(0, 100, &[(0, 100)]), vec![]);
        assert_eq!(minus_excluded(10, 20, &[(0, 5), (25, 30)]), vec![(10, 20)]);
        assert_eq!(minus_excluded(10, 20, &[(5, 15)]), vec![(15, 20)]);
    }
}
