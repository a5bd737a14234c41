//! The internal "file" plugin: the fds no other plugin claims. Regular
//! files, directories and devices (reopened by path at their offset, with
//! the locks the process held; files shared between processes keep one
//! open file description), named pipes with their bytes, pipes with both
//! ends inside the process, deleted-but-open files (kept in the image).
//!
//! Other kinds of fd belong to the plugin that claims them
//! ([`Plugin::claims_fd`]): sockets, event fds, terminals, message queues.
//! The file plugin records them only to know, at restart, which fds that
//! `dmtcp_restart` or their plugin put in place it must not close.
//!
//! Captured at pre-checkpoint time, while user threads are suspended:
//! everything here uses raw syscalls or libc calls that do not allocate
//! (allocation goes to the library's own allocator).

use crate::engine::iface::{self as dmtcp, fds, Event, FdDesc, Plugin, Tree};
use fds::{fd_is, fd_target, list_fds, move_fd, set_nonblock};
use std::ffi::CString;
use std::sync::Mutex;

#[derive(Clone, Debug, PartialEq, Eq)]
enum FdKind {
    /// Regular file, directory or character device: reopened by path.
    Path,
    /// Read end of a pipe whose write end is also in this process.
    PipeRead { ino: u64 },
    /// Write end of such a pipe.
    PipeWrite { ino: u64 },
    /// Claimed by the plugin of that name, which saves and restores it.
    Owned(&'static str),
    /// A named pipe (FIFO), reopened by path.
    Fifo { dev: u64, ino: u64 },
    /// Anything else: not restored (fds 0-2 keep what dmtcp_restart got).
    Other,
}

#[derive(Clone, Debug)]
struct FdInfo {
    fd: i32,
    target: String,
    kind: FdKind,
    flags: i32,
    cloexec: bool,
    offset: i64,
    /// Regular files: (device, inode).
    file_id: Option<(u64, u64)>,
    /// Regular files: the size at checkpoint time.
    size: i64,
}

/// `struct f_owner_ex` of `<fcntl.h>`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct OwnerEx {
    kind: i32,
    pid: i32,
}
const _: () = assert!(core::mem::size_of::<OwnerEx>() == 8);
const F_SETOWN_EX: i32 = 15;
const F_GETOWN_EX: i32 = 16;

/// Save the contents of every open regular file (`--ckpt-open-files`);
/// set at start-up.
static SAVE_OPEN_FILES: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
/// Largest file whose contents are kept in an image.
const MAX_SAVED_FILE: u64 = 1 << 30;
/// Largest open file in a temporary directory (which a restart elsewhere or
/// after a cleanup will not find) kept in an image without
/// `--ckpt-open-files`: session files of MPI and the like, not scratch data.
const MAX_SAVED_TEMP_FILE: i64 = 16 << 20;

fn deleted(target: &str) -> bool {
    target.ends_with(" (deleted)")
}

/// A lock the process held at checkpoint time: (fd, flock?, write?, start, end (-1: to EOF)).
type Lock = (i32, bool, bool, i64, i64);
/// A lock without its fd: (flock?, write?, start, end).
type LockKind = (bool, bool, i64, i64);

/// The record locks (`fcntl`) this process holds and the `flock` locks it
/// took, on the regular files it has open: from each one's
/// /proc/self/fdinfo, whose `lock:` lines are /proc/locks' lines for the
/// locks taken through that open file. (/proc/locks is not read: opening
/// it takes a lock of the whole kernel's file locking that waits for an
/// RCU grace period, 10-15 ms here, twice per read, in the pause.) A lock
/// seen through several fds (duplicates of one open file) is kept once,
/// with the first.
fn held_locks(infos: &[FdInfo]) -> Vec<Lock> {
    let me = dmtcp_sys::getpid();
    let mut out: Vec<Lock> = Vec::new();
    let mut seen: Vec<((u64, u64), LockKind)> = Vec::new();
    for i in infos {
        let Some(id) = i.file_id else { continue };
        let Ok(text) = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", i.fd)) else {
            continue;
        };
        for l in text.lines().filter_map(|l| l.strip_prefix("lock:")) {
            let Some(kind) = parse_lock(l, me, id) else {
                continue;
            };
            if !seen.contains(&(id, kind)) {
                seen.push((id, kind));
                let (flock, write, start, end) = kind;
                out.push((i.fd, flock, write, start, end));
            }
        }
    }
    out
}

/// One line of /proc/locks (as in fdinfo): (flock?, write?, start, end)
/// if it is a POSIX or FLOCK lock of process `me` on the file `id`
/// (device, inode).
fn parse_lock(l: &str, me: i32, id: (u64, u64)) -> Option<LockKind> {
    let f: Vec<&str> = l.split_whitespace().collect();
    if f.len() < 8 || l.contains("->") {
        return None;
    }
    let flock = match f[1] {
        "POSIX" => false,
        "FLOCK" => true,
        _ => return None, // OFD locks show no owner; leases are not kept
    };
    if f[4].parse::<i32>().ok() != Some(me) {
        return None;
    }
    let mut dev = f[5].split(':');
    let maj = u32::from_str_radix(dev.next()?, 16).ok()?;
    let min = u32::from_str_radix(dev.next()?, 16).ok()?;
    let ino = dev.next()?.parse::<u64>().ok()?;
    if ino != id.1 || libc::major(id.0) != maj || libc::minor(id.0) != min {
        return None;
    }
    let start: i64 = f[6].parse().unwrap_or(0);
    let end: i64 = if f[7] == "EOF" {
        -1
    } else {
        f[7].parse().unwrap_or(-1)
    };
    Some((flock, f[3] == "WRITE", start, end))
}

/// Copy the bytes in a named pipe: take them through a new read end and
/// put them straight back (a read end stays open meanwhile, so the pipe
/// keeps them).
fn drain_fifo(fd: i32) -> Vec<u8> {
    let p = CString::new(format!("/proc/self/fd/{fd}")).unwrap_or_default();
    let mut data = Vec::new();
    // SAFETY: opening our FIFO again by its /proc path, reading into our buffer.
    unsafe {
        let r = libc::open(
            p.as_ptr(),
            libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC,
        );
        if r < 0 {
            return data;
        }
        let mut buf = vec![0u8; 65536];
        loop {
            let n = libc::read(r, buf.as_mut_ptr() as *mut libc::c_void, buf.len());
            if n <= 0 {
                break;
            }
            data.extend_from_slice(&buf[..n as usize]);
        }
        if !data.is_empty() {
            let w = libc::open(
                p.as_ptr(),
                libc::O_WRONLY | libc::O_NONBLOCK | libc::O_CLOEXEC,
            );
            if w >= 0 {
                refill(w, &data);
                libc::close(w);
            }
        }
        libc::close(r);
    }
    data
}

/// Open a named pipe again without blocking (see [`open_fifo`]). One that
/// is gone (not one the program had unlinked) is made again first, with
/// the directories missing on its path (0700) and itself (0600), as the
/// program that holds it expects to find it there: mpirun's session
/// directory, say, goes with a job that died, and a restarted mpirun
/// watches the named pipe it had in it.
fn reopen_fifo(path: &str, flags: i32) -> std::io::Result<i32> {
    let opened = |fd: i32| {
        if fd >= 0 {
            Ok(fd)
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    match opened(open_fifo(path, flags)) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) && !deleted(path) => {}
        r => return r,
    }
    if let Some(dir) = std::path::Path::new(path).parent() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let p = CString::new(path)?;
    // SAFETY: mkfifo of a NUL-terminated path of ours.
    if unsafe { libc::mkfifo(p.as_ptr(), 0o600) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(e);
        }
    }
    opened(open_fifo(path, flags))
}

/// Open a named pipe without blocking: a read end at once, a write end
/// with a throw-away read end open meanwhile (so there is a reader).
fn open_fifo(path: &str, flags: i32) -> i32 {
    let Ok(p) = CString::new(path) else { return -1 };
    // SAFETY: open/close of the FIFO by path; fcntl on our new fd.
    unsafe {
        let acc = flags & libc::O_ACCMODE;
        let fd = if acc == libc::O_WRONLY {
            let tmp = libc::open(
                p.as_ptr(),
                libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC,
            );
            let w = libc::open(
                p.as_ptr(),
                libc::O_WRONLY | libc::O_NONBLOCK | libc::O_CLOEXEC,
            );
            if tmp >= 0 {
                libc::close(tmp);
            }
            w
        } else {
            libc::open(p.as_ptr(), acc | libc::O_NONBLOCK | libc::O_CLOEXEC)
        };
        if fd >= 0 {
            libc::fcntl(
                fd,
                libc::F_SETFL,
                flags & (libc::O_NONBLOCK | libc::O_APPEND),
            );
        }
        fd
    }
}

/// Take the locks again (restart), without waiting.
fn retake_locks(locks: &[Lock]) {
    for &(fd, flock, write, start, end) in locks {
        // SAFETY: flock/fcntl on a program fd that is open again, our struct.
        let r = unsafe {
            if flock {
                libc::flock(
                    fd,
                    if write { libc::LOCK_EX } else { libc::LOCK_SH } | libc::LOCK_NB,
                )
            } else {
                let mut fl: libc::flock = core::mem::zeroed();
                fl.l_type = if write { libc::F_WRLCK } else { libc::F_RDLCK } as i16;
                fl.l_whence = libc::SEEK_SET as i16;
                fl.l_start = start;
                fl.l_len = if end < 0 { 0 } else { end - start + 1 };
                libc::fcntl(fd, libc::F_SETLK, &fl)
            }
        };
        if r != 0 {
            dmtcp::warn(format_args!(
                "fd {fd}: the lock the program held cannot be taken again: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
}

#[derive(Default)]
struct FdSaved {
    /// Locks held at checkpoint time.
    locks: Vec<Lock>,
    /// Bytes that were in named pipes this process leads (it has them open
    /// for reading), by (device, inode).
    fifo_data: Vec<((u64, u64), Vec<u8>)>,
    /// Contents of deleted open files, of small open files in temporary
    /// directories (and, with `--ckpt-open-files`, of every open regular
    /// file), by (device, inode).
    contents: Vec<((u64, u64), Vec<u8>)>,
    /// `--ckpt-open-files` was on: every saved file is put back as it was;
    /// otherwise saved contents only come back for a file that is gone.
    put_back_all: bool,
    fds: Vec<FdInfo>,
    /// File owners (F_GETOWN_EX) as the program had them, put back on resume.
    owners: Vec<(i32, OwnerEx)>,
    /// Bytes drained from in-process pipes, by read-end fd.
    drained: Vec<(i32, Vec<u8>)>,
}

/// File descriptors: regular files, directories, devices, terminals and
/// pipes with both ends inside the process.
pub struct FilePlugin {
    saved: Mutex<FdSaved>,
}

impl FilePlugin {
    pub fn new() -> Self {
        FilePlugin {
            saved: Mutex::new(FdSaved::default()),
        }
    }
}

/// A regular file's whole contents, read through a new open of the fd
/// (the program's may be write-only; its offset is left alone).
fn read_contents(fd: i32) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut f = std::fs::File::open(format!("/proc/self/fd/{fd}"))?;
    let len = f.metadata()?.len();
    if len > MAX_SAVED_FILE {
        return Err(std::io::Error::other(format!(
            "{len} bytes, more than the {MAX_SAVED_FILE} kept"
        )));
    }
    let mut v = Vec::with_capacity(len as usize);
    f.read_to_end(&mut v)?;
    Ok(v)
}

/// A regular file the program had open, whose contents were not put back:
/// gone, it is created again (empty, with its directories) if the program
/// had it open for writing, and the restart fails if it was read-only (the
/// program would read nothing where it read data); changed in size (other
/// than an output file grown), the user is warned.
fn missing_file(i: &FdInfo) {
    let path = std::path::Path::new(&i.target);
    match std::fs::metadata(path) {
        Ok(m) => {
            // An output file the job went on writing after the checkpoint
            // has grown: what it is expected to do, not worth a word.
            let grown_output =
                i.flags & libc::O_ACCMODE == libc::O_WRONLY && m.len() as i64 > i.size;
            if m.len() as i64 != i.size && !grown_output {
                dmtcp::warn(format_args!(
                    "{} (fd {}) was {} bytes at checkpoint time and is {} now",
                    i.target,
                    i.fd,
                    i.size,
                    m.len()
                ));
            }
        }
        // A kernel file of another process or device (/proc/<old pid>/...):
        // not the program's data; the reopen below warns.
        Err(_) if i.target.starts_with("/proc/") || i.target.starts_with("/sys/") => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if i.flags & libc::O_ACCMODE == libc::O_RDONLY {
                dmtcp::error(format_args!(
                    "restart failed: {} (fd {}, open for reading) is missing and its contents are not in the image (launch with --ckpt-open-files to keep open files in the images)",
                    i.target, i.fd
                ));
                dmtcp_sys::exit_group(1);
            }
            let made = path
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|_| {
                    std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(path)
                });
            match made {
                Ok(_) => dmtcp::warn(format_args!(
                    "{} (fd {}) was missing: created again, empty (it was {} bytes at checkpoint time)",
                    i.target, i.fd, i.size
                )),
                Err(e) => dmtcp::warn(format_args!("cannot create {} again: {e}", i.target)),
            }
        }
        Err(_) => {}
    }
}

/// Write saved contents back into `path` (with its directories, if gone).
fn put_back(path: &str, data: &[u8]) {
    use std::io::Write;
    if let Some(d) = std::path::Path::new(path).parent() {
        let _ = std::fs::create_dir_all(d);
    }
    let r = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .and_then(|mut f| f.write_all(data));
    if let Err(e) = r {
        dmtcp::warn(format_args!("cannot put back the contents of {path}: {e}"));
    }
}

/// A new unnamed file with `data`, like the deleted file the program had
/// open at `target` (made in the same directory when possible).
fn recreate_deleted(target: &str, data: &[u8], flags: i32) -> i32 {
    let path = target.strip_suffix(" (deleted)").unwrap_or(target);
    let dir = std::path::Path::new(path)
        .parent()
        .map(|d| d.to_path_buf())
        .unwrap_or_else(|| "/tmp".into());
    let open_tmp = |d: &std::path::Path| {
        let Ok(c) = CString::new(d.as_os_str().as_encoded_bytes()) else {
            return -1;
        };
        // SAFETY: open(2) with O_TMPFILE on a NUL-terminated directory path.
        unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC,
                0o600,
            )
        }
    };
    let mut fd = open_tmp(&dir);
    if fd < 0 {
        fd = open_tmp(std::path::Path::new("/tmp"));
    }
    if fd < 0 {
        return -1;
    }
    let mut done = 0;
    while done < data.len() {
        // SAFETY: writing our buffer into our new file.
        let n = unsafe {
            libc::write(
                fd,
                data[done..].as_ptr() as *const libc::c_void,
                data.len() - done,
            )
        };
        if n <= 0 {
            break;
        }
        done += n as usize;
    }
    // SAFETY: flags of our new fd.
    unsafe {
        libc::fcntl(
            fd,
            libc::F_SETFL,
            flags & (libc::O_APPEND | libc::O_NONBLOCK),
        )
    };
    fd
}

fn pipe_ino(target: &str) -> Option<u64> {
    target
        .strip_prefix("pipe:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

fn refill(fd_write: i32, data: &[u8]) {
    let mut done = 0;
    while done < data.len() {
        // SAFETY: writing our buffer into the pipe.
        let n = unsafe {
            libc::write(
                fd_write,
                data[done..].as_ptr() as *const libc::c_void,
                data.len() - done,
            )
        };
        if n <= 0 {
            dmtcp::warn(format_args!(
                "could not refill a pipe ({} bytes lost)",
                data.len() - done
            ));
            return;
        }
        done += n as usize;
    }
}

/// A tun/tap fd nobody claimed: the tun plugin is not loaded
/// (`--disable-tun-plugin`). Reopened by its path at a restart, it would
/// be attached to no device; the program is told once.
fn warn_tun_without_plugin(fd: i32) {
    static WARNED: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
    if !WARNED.swap(true, core::sync::atomic::Ordering::Relaxed) {
        dmtcp::warn(format_args!(
            "fd {fd} is a tun/tap device (/dev/net/tun) and the tun plugin is not loaded: after a restart it will be attached to no device (launch without --disable-tun-plugin; docs/tun.md)"
        ));
    }
}

impl FilePlugin {
    fn save(&self, s: &mut FdSaved) {
        s.fds.clear();
        s.drained.clear();
        fds::prune_claims();
        let fds = list_fds();
        let mut infos = Vec::new();
        for fd in fds {
            if fds::is_protected(fd) || fds::is_claimed(fd) {
                continue;
            }
            let target = fd_target(fd);
            // SAFETY: fstat/fcntl/lseek on a live fd, writing our struct.
            let (st, flags, fdflags, offset) = unsafe {
                let mut st: libc::stat = std::mem::zeroed();
                libc::fstat(fd, &mut st);
                (
                    st,
                    libc::fcntl(fd, libc::F_GETFL),
                    libc::fcntl(fd, libc::F_GETFD),
                    libc::lseek(fd, 0, libc::SEEK_CUR),
                )
            };
            let fmt = st.st_mode & libc::S_IFMT;
            if fmt == libc::S_IFCHR && target == "/dev/net/tun" {
                warn_tun_without_plugin(fd);
            }
            let owner = dmtcp::fd_owner(&FdDesc {
                fd,
                target: &target,
                fmt,
                flags,
            });
            let kind = if let Some(name) = owner {
                FdKind::Owned(name)
            } else if fmt == libc::S_IFREG || fmt == libc::S_IFDIR || fmt == libc::S_IFCHR {
                if target.starts_with('/') {
                    FdKind::Path
                } else {
                    FdKind::Other
                }
            } else if fmt == libc::S_IFIFO && target.starts_with('/') {
                FdKind::Fifo {
                    dev: st.st_dev,
                    ino: st.st_ino,
                }
            } else if let Some(ino) = pipe_ino(&target) {
                if flags & libc::O_ACCMODE == libc::O_WRONLY {
                    FdKind::PipeWrite { ino }
                } else {
                    FdKind::PipeRead { ino }
                }
            } else {
                FdKind::Other
            };
            if kind == FdKind::Other && target.starts_with("anon_inode:kvm-") {
                // A virtual machine's fd (its VM, vCPUs, devices) that no
                // plugin took: the restart could not give it back, and the
                // program would find its VM gone. Refused now instead.
                dmtcp::fail_round(format!(
                    "fd {fd} ({target}) belongs to a KVM virtual machine: without the KVM plugin it cannot be restarted (run the program with dmtcp_launch --kvm)"
                ));
            }
            let file_id =
                (kind == FdKind::Path && fmt == libc::S_IFREG).then_some((st.st_dev, st.st_ino));
            infos.push(FdInfo {
                fd,
                target,
                kind,
                flags,
                cloexec: fdflags & libc::FD_CLOEXEC != 0,
                offset,
                file_id,
                size: st.st_size,
            });
        }
        s.contents.clear();
        let all = SAVE_OPEN_FILES.load(core::sync::atomic::Ordering::SeqCst);
        s.put_back_all = all;
        for i in infos.iter().filter(|i| {
            i.file_id.is_some()
                && (all
                    || deleted(&i.target)
                    || (dmtcp::is_temp_path(&i.target) && i.size <= MAX_SAVED_TEMP_FILE))
        }) {
            let id = i.file_id.unwrap_or_default();
            if s.contents.iter().any(|(x, _)| *x == id) {
                continue;
            }
            match read_contents(i.fd) {
                Ok(data) => s.contents.push((id, data)),
                Err(e) => dmtcp::warn(format_args!(
                    "fd {} ({}): contents not saved: {e}",
                    i.fd, i.target
                )),
            }
        }
        s.locks = held_locks(&infos);
        let files = Self::shared_files(s, &infos);
        FILES.with(|f| *f = files);
        // Drain each pipe once (first read end found here). A pipe read by
        // several processes is drained by each of them in part: bytes are
        // kept, their order across readers is not.
        let mut seen = Vec::new();
        for i in &infos {
            if let FdKind::PipeRead { ino } = i.kind {
                if seen.contains(&ino) {
                    continue;
                }
                seen.push(ino);
                s.drained.push((i.fd, drain_pipe(i.fd)));
            }
        }
        PIPES.with(|p| {
            p.clear();
            for i in &infos {
                match i.kind {
                    FdKind::PipeRead { ino } => p.push((i.fd, ino, false)),
                    FdKind::PipeWrite { ino } => p.push((i.fd, ino, true)),
                    _ => {}
                }
            }
        });
        let drained = s.drained.clone();
        DRAINED.with(|d| *d = drained);
        s.fds = infos;
    }

    /// Name each open regular file by its open file description, the same
    /// way in every process that shares it (inherited across fork), so a
    /// restart can share it again: every process makes itself the file's
    /// owner (`F_SETOWN`); after the barrier, all sharers of one
    /// description read the same owner, the last one to set it. With the
    /// file, offset and flags (equal for sharers) that makes the key. The
    /// owners the program had are put back on resume.
    fn shared_files(s: &mut FdSaved, infos: &[FdInfo]) -> Vec<dmtcp_common::image::FileRec> {
        let regs: Vec<&FdInfo> = infos.iter().filter(|i| i.file_id.is_some()).collect();
        s.owners.clear();
        for i in &regs {
            let mut o = OwnerEx::default();
            // SAFETY: fcntl writes our struct.
            if unsafe { libc::fcntl(i.fd, F_GETOWN_EX, &mut o) } == 0 {
                s.owners.push((i.fd, o));
            }
        }
        let me = dmtcp_sys::getpid();
        let fifo_key = |dev: u64, ino: u64| format!("fifo:{dev}:{ino}");
        // One process that has a named pipe open for reading keeps its bytes.
        for i in infos {
            if let FdKind::Fifo { dev, ino } = i.kind {
                if i.flags & libc::O_ACCMODE != libc::O_WRONLY {
                    dmtcp::kv_put(
                        "dmtcp:file",
                        fifo_key(dev, ino).into_bytes(),
                        me.to_ne_bytes().to_vec(),
                    );
                }
            }
        }
        if !dmtcp::barrier("file:owners") {
            return Vec::new();
        }
        for i in &regs {
            // SAFETY: making ourselves the owner of our own fd's file.
            unsafe { libc::fcntl(i.fd, libc::F_SETOWN, me) };
        }
        if !dmtcp::barrier("file:elect") {
            return Vec::new();
        }
        s.fifo_data.clear();
        for i in infos {
            let FdKind::Fifo { dev, ino } = i.kind else {
                continue;
            };
            if i.flags & libc::O_ACCMODE == libc::O_WRONLY
                || s.fifo_data.iter().any(|(x, _)| *x == (dev, ino))
            {
                continue;
            }
            let lead = dmtcp::kv_get("dmtcp:file", fifo_key(dev, ino).as_bytes())
                .flatten()
                .is_some_and(|v| v == me.to_ne_bytes());
            if lead {
                s.fifo_data.push(((dev, ino), drain_fifo(i.fd)));
            }
        }
        let mut recs: Vec<dmtcp_common::image::FileRec> = regs
            .iter()
            .map(|i| {
                // SAFETY: fcntl query on a live fd.
                let owner = unsafe { libc::fcntl(i.fd, libc::F_GETOWN) };
                let (dev, ino) = i.file_id.unwrap_or_default();
                dmtcp_common::image::FileRec {
                    fd: i.fd,
                    key: format!("{owner}:{dev}:{ino}:{}:{:o}", i.offset, i.flags),
                    path: i.target.clone(),
                    flags: i.flags,
                    offset: i.offset,
                }
            })
            .collect();
        // Within this process, fds with one key may still be separate opens
        // of the file: tell them apart with kcmp(KCMP_FILE), which compares
        // open file descriptions without touching them (other processes
        // sharing them are looking at the same moment), and number the
        // descriptions in fd order. Without kcmp they count as one.
        let keys: Vec<String> = recs.iter().map(|r| r.key.clone()).collect();
        for k in keys
            .iter()
            .filter(|k| keys.iter().filter(|x| x == k).count() > 1)
        {
            let fds: Vec<i32> = recs.iter().filter(|r| &r.key == k).map(|r| r.fd).collect();
            let mut class: Vec<(i32, usize)> = Vec::new();
            for &fd in &fds {
                if class.iter().any(|c| c.0 == fd) {
                    continue;
                }
                let n = class.iter().map(|c| c.1 + 1).max().unwrap_or(0);
                class.push((fd, n));
                let others: Vec<i32> = fds
                    .iter()
                    .copied()
                    .filter(|&o| o != fd && !class.iter().any(|c| c.0 == o))
                    .collect();
                for other in others {
                    const KCMP_FILE: usize = 0;
                    // SAFETY: kcmp compares two of our own fds; it changes nothing.
                    let r = unsafe {
                        dmtcp_sys::syscall6(
                            312,
                            me as usize,
                            me as usize,
                            KCMP_FILE,
                            fd as usize,
                            other as usize,
                            0,
                        )
                    };
                    if r <= 0 {
                        // 0: the same open file description (or kcmp missing: assume so).
                        class.push((other, n));
                    }
                }
            }
            for r in recs.iter_mut().filter(|r| &r.key == k) {
                if let Some(c) = class.iter().find(|c| c.0 == r.fd) {
                    r.key = format!("{k}:{}", c.1);
                }
            }
        }
        recs
    }

    /// Taken: a resume after a round broken before its pre-checkpoint
    /// must not put back the owners of an earlier round.
    fn resume(&self, s: &mut FdSaved) {
        for (fd, o) in std::mem::take(&mut s.owners) {
            // SAFETY: putting back the owner the program had.
            unsafe { libc::fcntl(fd, F_SETOWN_EX, &o) };
        }
    }

    fn writer_for(s: &FdSaved, read_fd: i32) -> Option<i32> {
        let ino = s
            .fds
            .iter()
            .find(|i| i.fd == read_fd)
            .and_then(|i| match i.kind {
                FdKind::PipeRead { ino } => Some(ino),
                _ => None,
            })?;
        s.fds
            .iter()
            .find(|i| i.kind == FdKind::PipeWrite { ino })
            .map(|i| i.fd)
    }

    fn restart(&self, s: &FdSaved) {
        // Close whatever this process inherited beyond stdio that the program
        // did not have (keeps fd numbers free for the program's own).
        // Pipes shared with other processes were re-created by dmtcp_restart
        // and are already at their numbers: keep those.
        let installed: Vec<i32> = s
            .fds
            .iter()
            .filter(|i| match i.kind {
                FdKind::PipeRead { .. } | FdKind::PipeWrite { .. } => fd_is(i.fd, libc::S_IFIFO),
                // Its plugin says (made by dmtcp_restart, or by the plugin).
                FdKind::Owned(owner) => dmtcp::owner_keeps(owner, i.fd),
                // Shared with other processes: dmtcp_restart opened it once.
                FdKind::Path => fds::installed_by_restart(i.fd) && fd_target(i.fd) == i.target,
                _ => false,
            })
            .map(|i| i.fd)
            .collect();
        for fd in list_fds() {
            if fd > 2 && !installed.contains(&fd) && !fds::is_protected(fd) {
                // SAFETY: closing an fd inherited from dmtcp_restart.
                unsafe { libc::close(fd) };
            }
        }
        // --ckpt-open-files: the files as they were at checkpoint time;
        // without it, saved files (in temporary directories) that are gone.
        let mut put: Vec<(u64, u64)> = Vec::new();
        for i in s
            .fds
            .iter()
            .filter(|i| i.kind == FdKind::Path && !deleted(&i.target))
        {
            let Some(id) = i.file_id else { continue };
            if put.contains(&id) {
                continue;
            }
            let Some((_, data)) = s.contents.iter().find(|(x, _)| *x == id) else {
                continue;
            };
            if !s.put_back_all && std::path::Path::new(&i.target).exists() {
                continue;
            }
            put.push(id);
            put_back(&i.target, data);
        }
        let mut pipes_done: Vec<u64> = Vec::new();
        for i in &s.fds {
            match &i.kind {
                FdKind::Other if i.fd <= 2 => {} // keep what dmtcp_restart gave us
                FdKind::Path if installed.contains(&i.fd) => {
                    // SAFETY: the fd flag of a file dmtcp_restart gave us.
                    unsafe {
                        libc::fcntl(
                            i.fd,
                            libc::F_SETFD,
                            if i.cloexec { libc::FD_CLOEXEC } else { 0 },
                        )
                    };
                }
                FdKind::Fifo { dev, ino } => {
                    let nfd = match reopen_fifo(&i.target, i.flags) {
                        Ok(fd) => fd,
                        Err(e) => {
                            dmtcp::warn(format_args!(
                                "cannot reopen the named pipe {} as fd {}: {e}",
                                i.target, i.fd
                            ));
                            continue;
                        }
                    };
                    // SAFETY: our new fd onto the program's number.
                    unsafe { move_fd(nfd, i.fd, i.cloexec) };
                    if let Some((_, data)) = s
                        .fifo_data
                        .iter()
                        .find(|(x, _)| *x == (*dev, *ino))
                        .filter(|(_, d)| !d.is_empty())
                    {
                        // We have it open for reading: the pipe keeps what we put in.
                        if let Ok(w) = reopen_fifo(&i.target, libc::O_WRONLY | libc::O_NONBLOCK) {
                            refill(w, data);
                            // SAFETY: closing our temporary write end.
                            unsafe { libc::close(w) };
                        }
                    }
                }
                FdKind::Path
                    if deleted(&i.target)
                        && i.file_id
                            .is_some_and(|id| s.contents.iter().any(|(x, _)| *x == id)) =>
                {
                    let id = i.file_id.unwrap_or_default();
                    let data = s
                        .contents
                        .iter()
                        .find(|(x, _)| *x == id)
                        .map(|(_, d)| d.as_slice())
                        .unwrap_or(&[]);
                    let nfd = recreate_deleted(&i.target, data, i.flags);
                    if nfd < 0 {
                        dmtcp::warn(format_args!(
                            "cannot re-create the deleted file {} as fd {}",
                            i.target, i.fd
                        ));
                        continue;
                    }
                    // SAFETY: our new fd onto the program's number, at its offset.
                    unsafe {
                        move_fd(nfd, i.fd, i.cloexec);
                        libc::lseek(i.fd, i.offset, libc::SEEK_SET);
                    }
                }
                FdKind::Path => {
                    let Ok(p) = CString::new(i.target.clone()) else {
                        continue;
                    };
                    let fl = i.flags & !(libc::O_CREAT | libc::O_TRUNC | libc::O_EXCL);
                    if i.file_id.is_some() && !put.contains(&i.file_id.unwrap_or_default()) {
                        missing_file(i);
                    }
                    // SAFETY: open/dup2/lseek on NUL-terminated paths and our fds.
                    unsafe {
                        let nfd = libc::open(p.as_ptr(), fl | libc::O_CLOEXEC);
                        if nfd < 0 {
                            dmtcp::warn(format_args!(
                                "cannot reopen {} as fd {}: {}",
                                i.target,
                                i.fd,
                                std::io::Error::last_os_error()
                            ));
                            continue;
                        }
                        move_fd(nfd, i.fd, i.cloexec);
                        if i.offset > 0 {
                            libc::lseek(i.fd, i.offset, libc::SEEK_SET);
                        }
                    }
                }
                FdKind::PipeRead { .. } | FdKind::PipeWrite { .. } if installed.contains(&i.fd) => {
                    // SAFETY: flags of a pipe end dmtcp_restart gave us.
                    unsafe {
                        libc::fcntl(
                            i.fd,
                            libc::F_SETFD,
                            if i.cloexec { libc::FD_CLOEXEC } else { 0 },
                        );
                        libc::fcntl(
                            i.fd,
                            libc::F_SETFL,
                            i.flags & (libc::O_NONBLOCK | libc::O_APPEND),
                        );
                    }
                }
                FdKind::PipeRead { ino } | FdKind::PipeWrite { ino } => {
                    if pipes_done.contains(ino) {
                        continue;
                    }
                    pipes_done.push(*ino);
                    let ends: Vec<&FdInfo> = s.fds.iter().filter(|o| matches!(o.kind, FdKind::PipeRead { ino: x } | FdKind::PipeWrite { ino: x } if x == *ino)).collect();
                    let both = ends
                        .iter()
                        .any(|e| matches!(e.kind, FdKind::PipeRead { .. }))
                        && ends
                            .iter()
                            .any(|e| matches!(e.kind, FdKind::PipeWrite { .. }));
                    if !both && ends.iter().all(|e| e.fd <= 2) {
                        continue; // led outside the job: keep what dmtcp_restart gave us
                    }
                    if !both {
                        dmtcp::warn(format_args!(
                            "fd {} ({}) leads to another process and was not re-created (restart without a pid namespace?); it stays closed",
                            i.fd, i.target
                        ));
                        continue;
                    }
                    let mut p = [0i32; 2];
                    // SAFETY: pipe2 writes two fds into our array.
                    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
                        continue;
                    }
                    // Move the fresh ends out of the way of the target numbers first.
                    // SAFETY: fcntl dup of our own fds.
                    let (r, w) = unsafe {
                        let r = libc::fcntl(
                            p[0],
                            libc::F_DUPFD_CLOEXEC,
                            fds::PROTECTED_FD_BASE + fds::PROTECTED_FD_COUNT,
                        );
                        let w = libc::fcntl(
                            p[1],
                            libc::F_DUPFD_CLOEXEC,
                            fds::PROTECTED_FD_BASE + fds::PROTECTED_FD_COUNT,
                        );
                        libc::close(p[0]);
                        libc::close(p[1]);
                        (r, w)
                    };
                    for e in &ends {
                        let src = if matches!(e.kind, FdKind::PipeRead { .. }) {
                            r
                        } else {
                            w
                        };
                        // SAFETY: dup2 of our fds onto the program's numbers.
                        unsafe {
                            libc::dup2(src, e.fd);
                            if !e.cloexec {
                                libc::fcntl(e.fd, libc::F_SETFD, 0);
                            }
                            libc::fcntl(
                                e.fd,
                                libc::F_SETFL,
                                e.flags & (libc::O_NONBLOCK | libc::O_APPEND),
                            );
                        }
                    }
                    // SAFETY: closing the temporaries.
                    unsafe {
                        libc::close(r);
                        libc::close(w);
                    }
                }
                FdKind::Owned(_) => {} // its plugin's
                FdKind::Other => {
                    dmtcp::warn(format_args!(
                        "fd {} ({}) cannot be restored yet; it stays closed",
                        i.fd, i.target
                    ));
                }
            }
        }
        refill_all(s);
        retake_locks(&s.locks);
        // Numbers of fds user plugins own, held until their restart hooks run.
        fds::hold_claimed_numbers();
    }
}

/// Put drained bytes back into their pipes: through a write end this
/// process has, or else through a new one opened on the read end.
fn refill_all(s: &FdSaved) {
    for (rfd, data) in &s.drained {
        if data.is_empty() {
            continue;
        }
        if let Some(w) = FilePlugin::writer_for(s, *rfd) {
            refill(w, data);
            continue;
        }
        let p = CString::new(format!("/proc/self/fd/{rfd}")).unwrap_or_default();
        // SAFETY: opening the pipe's other end by its /proc path.
        let w = unsafe { libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
        if w < 0 {
            dmtcp::warn(format_args!(
                "could not refill the pipe at fd {rfd} ({} bytes lost)",
                data.len()
            ));
            continue;
        }
        refill(w, data);
        // SAFETY: closing our temporary write end.
        unsafe { libc::close(w) };
    }
}

/// Regular files of the last checkpoint, keyed by open file description.
static FILES: dmtcp::FLock<Vec<dmtcp_common::image::FileRec>> = dmtcp::FLock::new(Vec::new());

/// Everything waiting in a pipe, read without blocking. Other processes of
/// the job may drain the same pipe at the same moment through the same open
/// file description, so its O_NONBLOCK flag (shared by them) is not
/// toggled: each read is non-blocking by itself (RWF_NOWAIT). On kernels
/// without RWF_NOWAIT for pipes, the flag is set for the drain.
fn drain_pipe(fd: i32) -> Vec<u8> {
    let mut data = Vec::new();
    let mut buf = vec![0u8; 65536];
    let mut old = None;
    loop {
        let iov = libc::iovec {
            iov_base: buf.as_mut_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        };
        // SAFETY: reading into our buffer.
        let n = unsafe {
            if old.is_none() {
                libc::preadv2(fd, &iov, 1, -1, libc::RWF_NOWAIT)
            } else {
                libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len())
            }
        };
        if n > 0 {
            data.extend_from_slice(&buf[..n as usize]);
            continue;
        }
        let e = std::io::Error::last_os_error().raw_os_error();
        if n < 0 && old.is_none() && matches!(e, Some(libc::EOPNOTSUPP) | Some(libc::EINVAL)) {
            old = Some(set_nonblock(fd, true));
            continue;
        }
        if n < 0 && e == Some(libc::EINTR) {
            continue;
        }
        break;
    }
    if let Some(fl) = old {
        // SAFETY: restoring the fd's flags.
        unsafe { libc::fcntl(fd, libc::F_SETFL, fl) };
    }
    data
}

/// Pipe ends of the last checkpoint: (fd, inode, is the write end). The
/// restart of a tree re-creates each pipe once and hands its ends over.
static PIPES: dmtcp::FLock<Vec<(i32, u64, bool)>> = dmtcp::FLock::new(Vec::new());
static DRAINED: dmtcp::FLock<Vec<(i32, Vec<u8>)>> = dmtcp::FLock::new(Vec::new());

/// After the image is written, before any process of the computation goes
/// on: put the bytes drained from pipes back.
fn refill_drained() {
    let drained = DRAINED.with(core::mem::take);
    let fds = PIPES.with(|p| p.clone());
    let s = FdSaved {
        fifo_data: Vec::new(),
        locks: Vec::new(),
        contents: Vec::new(),
        put_back_all: false,
        owners: Vec::new(),
        fds: fds
            .iter()
            .map(|&(fd, ino, w)| FdInfo {
                fd,
                target: String::new(),
                kind: if w {
                    FdKind::PipeWrite { ino }
                } else {
                    FdKind::PipeRead { ino }
                },
                flags: 0,
                cloexec: true,
                offset: 0,
                file_id: None,
                size: 0,
            })
            .collect(),
        drained,
    };
    refill_all(&s);
}

impl Plugin for FilePlugin {
    fn name(&self) -> &'static str {
        "file"
    }
    fn event(&self, ev: Event) {
        let mut s = self.saved.lock().unwrap_or_else(|e| e.into_inner());
        match ev {
            Event::Init => {
                let v = std::env::var(dmtcp_common::env::CKPT_OPEN_FILES);
                SAVE_OPEN_FILES.store(
                    v.is_ok_and(|v| dmtcp_common::env::truthy(&v)),
                    core::sync::atomic::Ordering::SeqCst,
                );
            }
            Event::PreCheckpoint => self.save(&mut s),
            // After the image: bytes drained from pipes go back before any
            // process of the job goes on.
            Event::Written => refill_drained(),
            Event::Resume => self.resume(&mut s),
            Event::Restart => self.restart(&s),
            _ => {}
        }
    }
    fn records(&self, tree: &mut Tree) {
        tree.pipes = PIPES.with(|p| p.clone());
        tree.files = FILES.with(|f| f.clone());
    }
}
