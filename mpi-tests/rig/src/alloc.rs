//! Rig id allocation and removal of what a rig leaves behind.
//!
//! `/tmp/testrig/alloc.lock` is flock'ed (exclusively, blocking) around every
//! allocation, release and cleanup, so they are serialized across processes.
//! Each live rig holds an exclusive flock on `/tmp/testrig/rig<id>.lock` for its
//! whole life; the kernel drops it when the owner dies, however it dies, so an
//! id whose lock can be taken is free, and anything left under its names is
//! stale and removed before the id is reused. The owner's pid is written into
//! the lock file for humans only.

use crate::names::{self, Object};
use crate::sys;
use anyhow::{bail, Context, Result};
use std::collections::BTreeSet;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const KILL_TIMEOUT: Duration = Duration::from_secs(10);
pub const GONE_TIMEOUT: Duration = Duration::from_secs(10);

/// The global allocation lock, released on drop.
pub struct GlobalLock(#[allow(dead_code)] File);

pub fn global_lock() -> Result<GlobalLock> {
    std::fs::create_dir_all(names::STATE_DIR)
        .with_context(|| format!("creating {}", names::STATE_DIR))?;
    let path = names::alloc_lock();
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    f.lock()
        .with_context(|| format!("flock {}", path.display()))?;
    Ok(GlobalLock(f))
}

/// Tries to take the lock of `id`. `Ok(None)` when a live rig holds it.
fn try_lock_id(id: u32, _global: &GlobalLock) -> Result<Option<File>> {
    let path = names::lock_file(id);
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match f.try_lock() {
        Ok(()) => Ok(Some(f)),
        Err(TryLockError::WouldBlock) => Ok(None),
        Err(TryLockError::Error(e)) => Err(e).with_context(|| format!("flock {}", path.display())),
    }
}

/// Allocates a free id, removing stale leftovers of a dead owner first.
/// The returned file holds the id's lock.
pub fn allocate(global: &GlobalLock) -> Result<(u32, File)> {
    for id in 0..names::MAX_RIGS {
        let Some(mut f) = try_lock_id(id, global)? else {
            continue;
        };
        remove_leftovers(id).with_context(|| format!("removing leftovers of rig {id}"))?;
        f.set_len(0)?;
        writeln!(f, "{}", std::process::id())?;
        return Ok((id, f));
    }
    bail!(
        "all {} rig ids are in use (see {})",
        names::MAX_RIGS,
        names::STATE_DIR
    )
}

/// Releases an id: removes its lock file while still holding the lock.
pub fn release(id: u32, lock: File) -> Result<()> {
    let _global = global_lock()?;
    let _ = std::fs::remove_file(names::lock_file(id));
    drop(lock);
    Ok(())
}

/// Names of the namespaces and interfaces of rig `id` that exist now.
pub struct Leftovers {
    pub netns: Vec<String>,
    pub veths: Vec<String>,
    pub bridges: Vec<String>,
}

fn list_dir(dir: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

pub fn leftovers(id: u32) -> Leftovers {
    let mut l = Leftovers {
        netns: vec![],
        veths: vec![],
        bridges: vec![],
    };
    for name in list_dir("/run/netns") {
        if let Some((i, Object::Netns(_))) = names::parse(&name) {
            if i == id {
                l.netns.push(name);
            }
        }
    }
    for name in list_dir("/sys/class/net") {
        match names::parse(&name) {
            Some((i, Object::Veth(_))) if i == id => l.veths.push(name),
            Some((i, Object::Bridge)) if i == id => l.bridges.push(name),
            _ => {}
        }
    }
    l
}

/// Kills every process in the given namespaces, deletes them, the veths and
/// the bridges, and waits until the kernel has really removed the interfaces.
pub fn destroy(netns: &[String], veths: &[String], bridges: &[String]) -> Result<()> {
    let mut first_err = None;
    for ns in netns {
        if let Err(e) = sys::kill_netns_processes(&netns_file(ns), KILL_TIMEOUT) {
            first_err.get_or_insert(e);
        }
    }
    // Deleting the root-namespace end of a veth deletes the pair at once;
    // relying on the namespace's (asynchronous) destruction instead leaves the
    // veth around for a while, or forever if something still pins the netns.
    let mut lines: Vec<String> = veths.iter().map(|v| format!("link del dev {v}")).collect();
    lines.extend(netns.iter().map(|n| format!("netns del {n}")));
    lines.extend(bridges.iter().map(|b| format!("link del dev {b}")));
    if let Err(e) = sys::ip_batch(None, &lines, true) {
        first_err.get_or_insert(e);
    }
    let mut paths: Vec<PathBuf> = veths
        .iter()
        .chain(bridges)
        .map(|i| Path::new("/sys/class/net").join(i))
        .collect();
    paths.extend(netns.iter().map(|n| netns_file(n)));
    if let Err(e) = sys::wait_gone(&paths, GONE_TIMEOUT) {
        first_err.get_or_insert(e);
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

pub fn netns_file(ns: &str) -> PathBuf {
    Path::new("/run/netns").join(ns)
}

/// Removes everything named after rig `id` (its owner must be dead).
pub fn remove_leftovers(id: u32) -> Result<()> {
    let l = leftovers(id);
    destroy(&l.netns, &l.veths, &l.bridges)?;
    remove_dir(&names::rig_dir(id))
}

pub fn remove_dir(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", dir.display()))
        }
        _ => Ok(()),
    }
}

/// Removes all rigs whose owner is dead; returns the ids that had something left.
pub fn cleanup_stale() -> Result<Vec<u32>> {
    let global = global_lock()?;
    let mut ids = BTreeSet::new();
    for name in list_dir(names::STATE_DIR) {
        if let Some(id) = names::parse_state_entry(&name) {
            ids.insert(id);
        }
    }
    for name in list_dir("/run/netns")
        .into_iter()
        .chain(list_dir("/sys/class/net"))
    {
        if let Some((id, _)) = names::parse(&name) {
            ids.insert(id);
        }
    }
    let mut cleaned = Vec::new();
    for id in ids {
        let Some(lock) = try_lock_id(id, &global)? else {
            continue;
        };
        let l = leftovers(id);
        let had_something = !(l.netns.is_empty() && l.veths.is_empty() && l.bridges.is_empty())
            || names::rig_dir(id).exists();
        remove_leftovers(id).with_context(|| format!("removing leftovers of rig {id}"))?;
        let _ = std::fs::remove_file(names::lock_file(id));
        drop(lock);
        if had_something {
            cleaned.push(id);
        }
    }
    Ok(cleaned)
}
