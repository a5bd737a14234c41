//! Memory for forked checkpointing: is there room for it on this node?
//!
//! A forked writer shares the program's pages copy-on-write. Each page the
//! program writes while its image is being written is copied, so one
//! forked checkpoint may need up to the program's anonymous resident
//! memory again (plus the writer's own buffers), until the writer is done.
//! With 64 processes on one node all forking at once, that is the node's
//! memory twice over at worst.
//!
//! So, by default (`DMTCP_FORKED_CKPT` unset or `auto`), a process forks
//! its writer only if that worst case fits:
//!
//! ```text
//! need (RssAnon + WRITER_OVERHEAD)  +  what other forked writers of the user
//! on this node have reserved  <=  room
//! room = min(MemAvailable - SLACK, the memory cgroup's limit - its
//!            non-file usage - SLACK, DMTCP_FORKED_CKPT_MEM if set)
//! ```
//!
//! and otherwise writes the image with the program suspended (saying why).
//! `--forked-ckpt` (`DMTCP_FORKED_CKPT=1`) forks without asking (and still
//! reserves, so that the others count it); `DMTCP_FORKED_CKPT=0` never
//! forks.
//!
//! The reservations of a node are files `r.<pid>.<generation>` holding the
//! bytes reserved, in `dmtcp-forkmem-<uid>` of the directory the stream
//! slots use (`/dev/shm`, see [`super::streams`]). Each is `flock`ed by its
//! writer: the fd is inherited by the forked writer, and the parent closes
//! its copy once the fork is done, so the lock (and the reservation) lasts
//! exactly as long as the writer lives, however it ends. A file nobody
//! holds is stale, and is removed by the next process that looks. Looking
//! and reserving are done under `lock` in that directory, so two processes
//! checking at once do not both take the last room.
//!
//! All of it runs on the checkpoint thread before the program is
//! suspended (not part of the pause).

use core::sync::atomic::{AtomicBool, AtomicI32, Ordering::SeqCst};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// What a forked writer needs besides the program's memory (its bounce
/// buffers, stacks, page tables, the library pages it touches).
const WRITER_OVERHEAD: u64 = 64 << 20;
/// Memory left alone for everything else on the node.
const SLACK: u64 = 256 << 20;
const MIB: u64 = 1 << 20;

/// Forked checkpointing: never, when it is safe (the default), always.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Off,
    Auto,
    On,
}

impl Mode {
    /// From `DMTCP_FORKED_CKPT` (or DMTCP's `DMTCP_FORKED_CHECKPOINT`):
    /// unset, empty or `auto`: Auto; `0`/`no`/`false`: Off; else On.
    pub fn parse(v: Option<&str>) -> Mode {
        match v.map(str::trim) {
            None | Some("") => Mode::Auto,
            Some(s) if s.eq_ignore_ascii_case("auto") => Mode::Auto,
            Some(s) if dmtcp_common::env::truthy(s) => Mode::On,
            Some(_) => Mode::Off,
        }
    }
}

/// The library's fd number for the reservation of this process's round
/// (the file whose lock stands for it): one of its protected numbers, so
/// the program never gets it, the file plugin never records it and a
/// restart never finds anything of the program there. A forked writer
/// keeps its inherited copy open until it exits ([`super::writer`] does
/// not close it).
pub const RESERVE_FD_NUM: i32 = super::fds::PROTECTED_FD_BASE + 7;
/// [`RESERVE_FD_NUM`] while a reservation is held there, else -1.
pub static RESERVE_FD: AtomicI32 = AtomicI32::new(-1);
/// Said once at warning level; later refusals are logged as info.
static WARNED: AtomicBool = AtomicBool::new(false);

/// `key:   N kB` of /proc/meminfo or /proc/self/status, in bytes.
fn kb_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.strip_prefix(':')?;
        let n: u64 = rest.split_whitespace().next()?.parse().ok()?;
        Some(n * 1024)
    })
}

/// `key N` of a cgroup's memory.stat.
fn stat_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

/// Room under one cgroup limit: the limit less what is used and cannot be
/// given back by dropping file pages. None: no limit.
fn under_limit(limit: Option<u64>, usage: u64, file: u64) -> Option<u64> {
    let limit = limit?;
    Some(limit.saturating_sub(usage.saturating_sub(file)))
}

fn read(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok()
}

/// The memory cgroup's room for this process, and which cgroup set it;
/// None where there is no limit (or none can be read).
fn cgroup_room() -> Option<(u64, String)> {
    let own = read(Path::new("/proc/self/cgroup"))?;
    let mut best: Option<(u64, String)> = None;
    let mut take = |room: Option<u64>, dir: &Path| {
        if let Some(r) = room {
            if best.as_ref().is_none_or(|(b, _)| r < *b) {
                best = Some((r, dir.display().to_string()));
            }
        }
    };
    for line in own.lines() {
        let mut f = line.splitn(3, ':');
        let (Some(id), Some(ctl), Some(path)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let path = path.trim_start_matches('/');
        if id == "0" && ctl.is_empty() {
            // cgroup v2: every level from ours up to the mount's root
            // (a container sees its own cgroup as the root, and the path
            // here may not exist under the mount: then the root is ours).
            for base in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
                let base = Path::new(base);
                let mut dir = base.join(path);
                if !dir.join("memory.max").exists() {
                    dir = base.to_path_buf();
                }
                loop {
                    if let (Some(max), Some(cur)) = (
                        read(&dir.join("memory.max")),
                        read(&dir.join("memory.current")),
                    ) {
                        let file = read(&dir.join("memory.stat"))
                            .and_then(|s| stat_field(&s, "file"))
                            .unwrap_or(0);
                        take(
                            under_limit(
                                max.trim().parse().ok(),
                                cur.trim().parse().unwrap_or(0),
                                file,
                            ),
                            &dir,
                        );
                    }
                    if dir == base || !dir.pop() || !dir.starts_with(base) {
                        break;
                    }
                }
            }
        } else if ctl.split(',').any(|c| c == "memory") {
            // cgroup v1: hierarchical_memory_limit covers the ancestors.
            let base = Path::new("/sys/fs/cgroup/memory");
            let mut dir = base.join(path);
            if !dir.join("memory.usage_in_bytes").exists() {
                dir = base.to_path_buf();
            }
            let (Some(usage), Some(stat)) = (
                read(&dir.join("memory.usage_in_bytes")),
                read(&dir.join("memory.stat")),
            ) else {
                continue;
            };
            let limit = stat_field(&stat, "hierarchical_memory_limit");
            let file = stat_field(&stat, "total_cache")
                .or_else(|| stat_field(&stat, "cache"))
                .unwrap_or(0);
            // "No limit" reads as a huge number (close to i64::MAX).
            let limit = limit.filter(|&l| l < 1 << 60);
            take(
                under_limit(limit, usage.trim().parse().unwrap_or(0), file),
                &dir,
            );
        }
    }
    best
}

/// The room forked writers may take on this node now, and what limits it.
fn room() -> (u64, String) {
    let mut room = (u64::MAX, String::from("no limit known"));
    if let Some(avail) = read(Path::new("/proc/meminfo")).and_then(|t| kb_field(&t, "MemAvailable"))
    {
        room = (avail.saturating_sub(SLACK), "MemAvailable".into());
    }
    if let Some((r, dir)) = cgroup_room() {
        let r = r.saturating_sub(SLACK);
        if r < room.0 {
            room = (r, format!("memory cgroup {dir}"));
        }
    }
    if let Some(cap) = std::env::var(dmtcp_common::env::FORKED_CKPT_MEM)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        if cap.saturating_mul(MIB) < room.0 {
            room = (cap * MIB, dmtcp_common::env::FORKED_CKPT_MEM.into());
        }
    }
    room
}

/// This process's worst case: its anonymous resident memory and the
/// writer's own.
fn need() -> u64 {
    read(Path::new("/proc/self/status"))
        .and_then(|t| kb_field(&t, "RssAnon"))
        .unwrap_or(0)
        + WRITER_OVERHEAD
}

fn dir() -> PathBuf {
    PathBuf::from(super::streams::node_dir())
        .join(format!("dmtcp-forkmem-{}", dmtcp_sys::geteuid()))
}

/// `flock` on `f` (`op`: LOCK_SH/LOCK_EX, maybe | LOCK_NB): 0 or -1.
fn flock(f: &std::fs::File, op: i32) -> i32 {
    // SAFETY: flock on an open file of ours.
    unsafe { libc::flock(f.as_raw_fd(), op) }
}

/// Bytes reserved by live forked writers in `dir` (stale files removed).
fn reserved(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut sum = 0u64;
    for e in rd.flatten() {
        let name = e.file_name();
        if !name.to_string_lossy().starts_with("r.") {
            continue;
        }
        let Ok(mut f) = std::fs::File::open(e.path()) else {
            continue;
        };
        if flock(&f, libc::LOCK_SH | libc::LOCK_NB) == 0 {
            // Nobody holds it: its writer is gone.
            let _ = std::fs::remove_file(e.path());
            continue;
        }
        let mut s = String::new();
        let _ = f.read_to_string(&mut s);
        sum = sum.saturating_add(s.trim().parse().unwrap_or(0));
    }
    sum
}

/// Before a round that may fork its writer: `Ok` (with the reservation
/// taken, see [`RESERVE_FD`]) if the writer may be forked, or why not.
/// `check`: refuse when the worst case does not fit (Auto); On only
/// reserves.
pub fn reserve(generation: u32, check: bool) -> Result<(), String> {
    release();
    let need = need();
    let dir = dir();
    let _ = std::fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(&dir);
    // The directory must be ours: another user's could lie about room.
    let usable = std::fs::symlink_metadata(&dir)
        .is_ok_and(|m| m.is_dir() && m.uid() == dmtcp_sys::geteuid());
    let lock = usable
        .then(|| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .mode(0o600)
                .custom_flags(libc::O_CLOEXEC)
                .open(dir.join("lock"))
                .ok()
        })
        .flatten();
    // Held only for a scan of a few files; a holder stopped by a signal
    // must not stop this checkpoint: at most about a second, then without.
    let locked = lock.as_ref().is_some_and(|l| {
        (0..500).any(|_| {
            flock(l, libc::LOCK_EX | libc::LOCK_NB) == 0 || {
                dmtcp_sys::sleep_ms(2);
                false
            }
        })
    });
    let others = if usable { reserved(&dir) } else { 0 };
    if check {
        let (room, by) = room();
        if others.saturating_add(need) > room {
            return Err(format!(
                "its writer could need up to {} MiB more memory, other forked writers of this \
                 node have reserved {} MiB, and {by} leaves room for {} MiB",
                need / MIB,
                others / MIB,
                room / MIB
            ));
        }
    }
    if usable && locked {
        let path = dir.join(format!("r.{}.{generation}", dmtcp_sys::getpid()));
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
        {
            let held = flock(&f, libc::LOCK_EX | libc::LOCK_NB) == 0
                && write!(f, "{need}").is_ok()
                && super::fdguard::dup_own(f.as_raw_fd(), RESERVE_FD_NUM) == RESERVE_FD_NUM;
            if held {
                RESERVE_FD.store(RESERVE_FD_NUM, SeqCst);
            } else {
                let _ = std::fs::remove_file(&path);
            }
            // (Closing this number leaves the lock with the open file,
            // held at RESERVE_FD_NUM.)
            drop(f);
        }
    }
    drop(lock);
    Ok(())
}

/// Log a refusal: a warning the first time, info after.
pub fn refused(why: &str) {
    let msg = format_args!(
        "forked checkpointing is not safe now ({why}): this image is written with the program suspended"
    );
    if WARNED.swap(true, SeqCst) {
        super::log::info(msg);
    } else {
        super::log::warn(msg);
    }
}

/// After the round (in the program): close this process's copy of the
/// reservation; a forked writer holds its own until it exits.
pub fn release() {
    if RESERVE_FD.swap(-1, SeqCst) >= 0 {
        super::fdguard::close_own(RESERVE_FD_NUM);
        super::fdguard::fill_placeholders();
    }
}

/// After a restart: the number holds nothing of a reservation now (the
/// restored value of [`RESERVE_FD`] is the checkpointed process's).
pub fn forget() {
    RESERVE_FD.store(-1, SeqCst);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        assert_eq!(Mode::parse(None), Mode::Auto);
        assert_eq!(Mode::parse(Some("")), Mode::Auto);
        assert_eq!(Mode::parse(Some("AUTO")), Mode::Auto);
        assert_eq!(Mode::parse(Some("1")), Mode::On);
        assert_eq!(Mode::parse(Some("yes")), Mode::On);
        assert_eq!(Mode::parse(Some("0")), Mode::Off);
        assert_eq!(Mode::parse(Some("false")), Mode::Off);
    }

    #[test]
    fn fields() {
        let meminfo = "MemTotal:       24683772 kB\nMemFree:  1 kB\nMemAvailable:   24156736 kB\n";
        assert_eq!(kb_field(meminfo, "MemAvailable"), Some(24156736 * 1024));
        assert_eq!(kb_field(meminfo, "MemAvail"), None);
        let status = "VmRSS:\t  70000 kB\nRssAnon:\t   66000 kB\nRssFile:\t 4000 kB\n";
        assert_eq!(kb_field(status, "RssAnon"), Some(66000 * 1024));
        let stat = "anon 100\nfile 4096\nfile_mapped 7\n";
        assert_eq!(stat_field(stat, "file"), Some(4096));
        assert_eq!(stat_field(stat, "anon"), Some(100));
        assert_eq!(stat_field(stat, "kernel"), None);
    }

    #[test]
    fn room_under_a_limit_counts_file_pages_as_free() {
        assert_eq!(under_limit(None, 10, 0), None);
        assert_eq!(under_limit(Some(1000), 600, 100), Some(500));
        assert_eq!(under_limit(Some(1000), 1200, 0), Some(0));
        assert_eq!(under_limit(Some(1000), 50, 80), Some(1000));
    }
}
