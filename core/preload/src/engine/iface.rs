//! The one door through which plugins use the engine. It has the shape of
//! the public C interface (include/dmtcp.h) that user plugins get:
//!
//! - events: [`Plugin`] and [`Event`], plus the hooks through which a
//!   plugin owns a kind of fd ([`Plugin::claims_fd`], [`Plugin::keeps_fd`])
//!   and adds records for `dmtcp_restart` to the image ([`Plugin::records`]);
//! - global barriers ([`barrier`]) and the name service ([`kv_put`],
//!   [`kv_get`]), both on the checkpoint thread only;
//! - virtual ids ([`vid_set`], [`vid_to_real`], ...);
//! - the fd table ([`fds`]);
//! - memory kept out of images ([`skip_memory`]);
//! - holding checkpoints off around a wrapper's critical section
//!   ([`CkptHold`]);
//! - the few facts plugins need about signals and threads, messages, the
//!   library's fork-safe lock and libc lookups.
//!
//! Nothing else of the engine is visible to a plugin: a plugin module uses
//! `crate::engine::iface` and its own files, never another plugin.

pub use super::fds::{self, FdDesc};
pub use super::flock::FLock;
pub use super::plugin::{Event, Plugin};
pub use dmtcp_common::image::Tree;

use core::sync::atomic::Ordering::SeqCst;

/// A warning on stderr (silenced by `-q`).
pub fn warn(args: core::fmt::Arguments) {
    super::log::warn(args)
}

/// An error on stderr.
pub fn error(args: core::fmt::Arguments) {
    super::log::error(args)
}

/// Wait until every process of the job reached barrier `name` (checkpoint
/// thread only, from a plugin's event). False if the coordinator is gone.
pub fn barrier(name: &str) -> bool {
    super::coord::barrier(name)
}

/// Publish `key` = `val` in database `db` of the job's name service.
pub fn kv_put(db: &str, key: Vec<u8>, val: Vec<u8>) -> bool {
    super::coord::send(&dmtcp_common::proto::ToCoord::KvPut {
        db: db.into(),
        key,
        val,
    })
}

/// Look `key` up in database `db`: None if the coordinator is gone,
/// Some(None) if nobody published it.
pub fn kv_get(db: &str, key: &[u8]) -> Option<Option<Vec<u8>>> {
    super::coord::kv_get(db, key)
}

/// Map virtual id `virt` to `real` in `table`.
pub fn vid_set(table: &str, virt: u64, real: u64) {
    super::capi::with_vids(|v| v.entry(table.to_string()).or_default().insert(virt, real));
}

/// The real id behind `virt` in `table`.
pub fn vid_to_real(table: &str, virt: u64) -> Option<u64> {
    super::capi::with_vids(|v| v.get(table).and_then(|m| m.get(&virt).copied()))
}

/// The virtual id of `real` in `table`.
pub fn vid_to_virtual(table: &str, real: u64) -> Option<u64> {
    super::capi::with_vids(|v| {
        v.get(table)
            .and_then(|m| m.iter().find(|(_, &r)| r == real).map(|(&k, _)| k))
    })
}

/// Forget `virt` in `table`.
pub fn vid_erase(table: &str, virt: u64) {
    super::capi::with_vids(|v| v.get_mut(table).map(|m| m.remove(&virt)));
}

pub use super::capi::CkptHold;

/// Keep `[start, start+len)` out of images, with nothing mapped there after
/// a restart (device memory the plugin re-creates); `len` 0 undoes it.
pub fn skip_memory(start: u64, len: u64) {
    super::memory::skip(start, len)
}

/// A file in a directory of temporary files (per host, cleaned at boot or
/// when a job ends): a restart cannot expect to find it.
pub fn is_temp_path(path: &str) -> bool {
    super::memory::is_temp_path(path)
}

/// Retry a call a checkpoint interrupted (EINTR) while the program did not
/// ask for it; `call` returns a negative value with errno set on failure.
pub fn again<T: PartialOrd + Default>(call: impl FnMut() -> T) -> T {
    super::restartable::again(call)
}

/// Fail this process's part of the checkpoint round under way (from a
/// pre-checkpoint hook): no image, the round reports `why`, and the resume
/// event follows.
pub fn fail_round(why: String) {
    super::ckpt::fail_round(why)
}

/// libc's function `name` (the definition after ours), looked up once and
/// kept in `slot`; 0 if there is none.
pub fn libc_fn(slot: &core::sync::atomic::AtomicUsize, name: &core::ffi::CStr) -> usize {
    super::start::libc_fn(slot, name)
}

/// This boot's id: socket, pty and IPC numbers are unique within one
/// running kernel only.
pub fn boot_id() -> String {
    super::start::boot_id()
}

/// The pid the program knows for a real pid (they differ after a restart
/// without a pid namespace): what images record.
pub fn pid_to_virtual(real: i32) -> i32 {
    super::vpid::to_virt(real)
}

/// Checkpoints and restarts so far in this process (a change between two
/// reads means one came in between).
pub fn checkpoint_count() -> u32 {
    super::capi::EVENTS.load(SeqCst)
}

/// The signal the checkpoint uses.
pub fn ckpt_signal() -> i32 {
    super::threads::CKPT_SIGNAL.load(SeqCst)
}

/// Signals pending for the whole process (a bit per signal), read while
/// user threads are suspended.
pub fn process_pending() -> u64 {
    super::threads::sigpending()
}

/// Set the process-wide pending signals the engine raises again when
/// threads resume after a checkpoint or a restart.
pub fn set_process_pending(mask: u64) {
    super::threads::SHARED_PENDING.store(mask, SeqCst);
}

/// The process-wide pending signals recorded at the last checkpoint.
pub fn saved_process_pending() -> u64 {
    super::threads::SHARED_PENDING.load(SeqCst)
}

/// The active plugin that claims fd `d` (the file plugin asks; see
/// [`Plugin::claims_fd`]).
pub fn fd_owner(d: &FdDesc) -> Option<&'static str> {
    super::plugin::fd_owner(d)
}

/// Does plugin `owner` keep `fd` in place at restart ([`Plugin::keeps_fd`])?
pub fn owner_keeps(owner: &str, fd: i32) -> bool {
    super::plugin::owner_keeps(owner, fd)
}

/// libc's function `name` (the next definition after the library's own) as
/// a fn of type `ty`, looked up once and kept in `slot` (a static of the
/// call site when none is given). When libc has none, the calling function
/// sets ENOSYS and returns `fail` (-1 when not given), as a wrapper of a
/// missing call should.
macro_rules! next_libc {
    ($name:literal, $ty:ty $(, $fail:expr)?) => {{
        static SLOT: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);
        $crate::engine::iface::next_libc!(SLOT, $name, $ty $(, $fail)?)
    }};
    ($slot:ident, $name:literal, $ty:ty) => {
        $crate::engine::iface::next_libc!($slot, $name, $ty, -1)
    };
    ($slot:ident, $name:literal, $ty:ty, $fail:expr) => {{
        let f = $crate::engine::iface::libc_fn(&$slot, $name);
        if f == 0 {
            // SAFETY: errno is thread-local.
            unsafe { *libc::__errno_location() = libc::ENOSYS };
            return $fail;
        }
        // SAFETY: dlsym found libc's function of this name, whose type is `$ty`.
        unsafe { core::mem::transmute::<usize, $ty>(f) }
    }};
}
pub(crate) use next_libc;
