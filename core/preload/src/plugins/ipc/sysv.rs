//! The "sysv" plugin: System V message queues and semaphore sets across a
//! restart, with their ids virtualized (and POSIX message queues, see
//! [`super::posixmq`]).
//!
//! The program keeps seeing the ids the kernel first gave it; wrappers of
//! `msgget`, `msgsnd`, `msgrcv`, `msgctl`, `semget`, `semop`, `semtimedop`
//! and `semctl` translate them to the ids of the objects re-created at
//! restart. An id the process did not get itself (inherited, or passed in
//! argv to an exec'd program) is recorded the first time it is used.
//! `msgrcv`, `msgsnd` and `semop`, which the kernel never restarts after a
//! signal, are retried when a checkpoint interrupted them.
//!
//! At checkpoint time each process publishes the objects it knows; the
//! last writer of an object (the same for all, read after the barrier
//! `sysv:elect`) is its leader and saves it: a queue's mode, size limit and
//! messages (copied in place with `MSG_COPY`, nothing is taken), a set's
//! mode and values. At restart the leaders re-create the objects (a stale
//! object with the same key, left by the killed job, is removed first) and
//! publish the new ids; after the barrier `sysv:made` every process maps
//! the old ids to the new ones.
//!
//! Limits: shared memory segments (`shmget`) keep their memory shared at
//! restart but not their id; `SEM_UNDO` adjustments are not kept. The
//! killed job's objects (still in the kernel, in their state after the
//! checkpoint) are removed at restart: restart a job only after it is gone.

use crate::engine::iface as dmtcp;
use core::sync::atomic::AtomicUsize;

const MSG: i32 = 0;
const SEM: i32 = 1;
pub(crate) const SHM: i32 = 2;
const DB: &str = "dmtcp:sysv";
const MSG_COPY: i32 = 0o40000;

#[derive(Clone, Copy, Debug)]
struct Id {
    kind: i32,
    virt: i32,
    real: i32,
    key: i32,
}

/// Known objects of this process (inherited across fork with its memory).
static IDS: dmtcp::FLock<Vec<Id>> = dmtcp::FLock::new(Vec::new());

#[derive(Clone, Debug, Default)]
pub(crate) struct Saved {
    pub(crate) kind: i32,
    pub(crate) virt: i32,
    pub(crate) key: i32,
    pub(crate) mode: i32,
    pub(crate) leader: bool,
    /// Shared memory: removed (IPC_RMID) while still attached.
    pub(crate) dest: bool,
    /// Shared memory attached by no process of the job: its contents.
    pub(crate) data: Vec<u8>,
    /// Queues: size limit; sets: number of semaphores; segments: size.
    pub(crate) size: u64,
    msgs: Vec<(i64, Vec<u8>)>,
    sems: Vec<u16>,
}

static SAVED: dmtcp::FLock<Vec<Saved>> = dmtcp::FLock::new(Vec::new());

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

// The id table is taken by wrappers on user threads and by the checkpoint
// thread: a user thread holds checkpoints off while it has the table (a
// thread suspended with it would deadlock the checkpoint).

pub(crate) fn to_real(kind: i32, virt: i32) -> i32 {
    let _hold = dmtcp::CkptHold::new();
    IDS.with(|v| {
        if let Some(i) = v.iter().find(|i| i.kind == kind && i.virt == virt) {
            return i.real;
        }
        v.push(Id {
            kind,
            virt,
            real: virt,
            key: libc::IPC_PRIVATE,
        });
        virt
    })
}

pub(crate) fn record(kind: i32, id: i32, key: i32) -> i32 {
    if id < 0 {
        return id;
    }
    let _hold = dmtcp::CkptHold::new();
    IDS.with(|v| {
        // After a restart the kernel may hand out an id that a virtual id
        // already uses: give the new object another virtual id.
        if let Some(i) = v.iter().find(|i| i.kind == kind && i.real == id) {
            return i.virt;
        }
        let mut virt = id;
        while v.iter().any(|i| i.kind == kind && i.virt == virt) {
            virt = virt.wrapping_add(1 << 16) & i32::MAX;
        }
        v.push(Id {
            kind,
            virt,
            real: id,
            key,
        });
        virt
    })
}

pub(crate) fn forget(kind: i32, virt: i32) {
    let _hold = dmtcp::CkptHold::new();
    IDS.with(|v| v.retain(|i| !(i.kind == kind && i.virt == virt)));
}

/// Run `f` with the real id; again (with the id as it is then) if a
/// checkpoint interrupted it, or if a restart came between the lookup and
/// the call (a thread suspended there comes back holding the id of an
/// object the new kernel does not have: EINVAL or EIDRM).
fn retrying(kind: i32, virt: i32, f: impl Fn(i32) -> isize) -> isize {
    loop {
        let before = dmtcp::checkpoint_count();
        let r = dmtcp::again(|| f(to_real(kind, virt)));
        if r < 0
            && matches!(errno(), libc::EINVAL | libc::EIDRM)
            && dmtcp::checkpoint_count() != before
        {
            continue;
        }
        return r;
    }
}

static MSGGET: AtomicUsize = AtomicUsize::new(0);
static MSGSND: AtomicUsize = AtomicUsize::new(0);
static MSGRCV: AtomicUsize = AtomicUsize::new(0);
static MSGCTL: AtomicUsize = AtomicUsize::new(0);
static SEMGET: AtomicUsize = AtomicUsize::new(0);
static SEMOP: AtomicUsize = AtomicUsize::new(0);
static SEMTIMEDOP: AtomicUsize = AtomicUsize::new(0);
static SEMCTL: AtomicUsize = AtomicUsize::new(0);

type GetFn = unsafe extern "C" fn(libc::key_t, libc::c_int) -> libc::c_int;
type SemGetFn = unsafe extern "C" fn(libc::key_t, libc::c_int, libc::c_int) -> libc::c_int;
type SndFn = unsafe extern "C" fn(
    libc::c_int,
    *const libc::c_void,
    libc::size_t,
    libc::c_int,
) -> libc::c_int;
type RcvFn = unsafe extern "C" fn(
    libc::c_int,
    *mut libc::c_void,
    libc::size_t,
    libc::c_long,
    libc::c_int,
) -> libc::ssize_t;
type MsgCtlFn = unsafe extern "C" fn(libc::c_int, libc::c_int, *mut libc::msqid_ds) -> libc::c_int;
type SemOpFn = unsafe extern "C" fn(libc::c_int, *mut libc::sembuf, libc::size_t) -> libc::c_int;
type SemTimedOpFn = unsafe extern "C" fn(
    libc::c_int,
    *mut libc::sembuf,
    libc::size_t,
    *const libc::timespec,
) -> libc::c_int;
type SemCtlFn = unsafe extern "C" fn(libc::c_int, libc::c_int, libc::c_int, usize) -> libc::c_int;

/// `msgget(2)`, giving out virtual ids.
///
/// # Safety
/// As `msgget(2)`.
#[no_mangle]
pub unsafe extern "C" fn msgget(key: libc::key_t, flags: libc::c_int) -> libc::c_int {
    let f = dmtcp::next_libc!(MSGGET, c"msgget", GetFn);
    // The new object and its virtual id appear in one image or in neither.
    let _hold = dmtcp::CkptHold::new();
    // SAFETY: forwarding the caller's arguments.
    let id = unsafe { f(key, flags) };
    record(MSG, id, key)
}

/// `msgsnd(2)` on the real queue.
///
/// # Safety
/// As `msgsnd(2)`.
#[no_mangle]
pub unsafe extern "C" fn msgsnd(
    id: libc::c_int,
    p: *const libc::c_void,
    n: libc::size_t,
    flags: libc::c_int,
) -> libc::c_int {
    let f = dmtcp::next_libc!(MSGSND, c"msgsnd", SndFn);
    // SAFETY: forwarding the caller's arguments.
    retrying(MSG, id, |r| unsafe { f(r, p, n, flags) } as isize) as libc::c_int
}

/// `msgrcv(2)` on the real queue.
///
/// # Safety
/// As `msgrcv(2)`.
#[no_mangle]
pub unsafe extern "C" fn msgrcv(
    id: libc::c_int,
    p: *mut libc::c_void,
    n: libc::size_t,
    typ: libc::c_long,
    flags: libc::c_int,
) -> libc::ssize_t {
    let f = dmtcp::next_libc!(MSGRCV, c"msgrcv", RcvFn);
    // SAFETY: forwarding the caller's arguments.
    retrying(MSG, id, |r| unsafe { f(r, p, n, typ, flags) })
}

/// `msgctl(2)` on the real queue.
///
/// # Safety
/// As `msgctl(2)`.
#[no_mangle]
pub unsafe extern "C" fn msgctl(
    id: libc::c_int,
    cmd: libc::c_int,
    buf: *mut libc::msqid_ds,
) -> libc::c_int {
    let f = dmtcp::next_libc!(MSGCTL, c"msgctl", MsgCtlFn);
    // IPC_INFO / MSG_INFO / MSG_STAT take no queue id.
    if matches!(cmd, 3 | 12 | 11 | 13) {
        // SAFETY: forwarding the caller's arguments.
        return unsafe { f(id, cmd, buf) };
    }
    // Lookup and call in one image (the call does not block).
    let _hold = dmtcp::CkptHold::new();
    // SAFETY: forwarding the caller's arguments.
    let r = unsafe { f(to_real(MSG, id), cmd, buf) };
    if r == 0 && cmd == libc::IPC_RMID {
        forget(MSG, id);
    }
    r
}

/// `semget(2)`, giving out virtual ids.
///
/// # Safety
/// As `semget(2)`.
#[no_mangle]
pub unsafe extern "C" fn semget(
    key: libc::key_t,
    n: libc::c_int,
    flags: libc::c_int,
) -> libc::c_int {
    let f = dmtcp::next_libc!(SEMGET, c"semget", SemGetFn);
    // The new object and its virtual id appear in one image or in neither.
    let _hold = dmtcp::CkptHold::new();
    // SAFETY: forwarding the caller's arguments.
    let id = unsafe { f(key, n, flags) };
    record(SEM, id, key)
}

/// `semop(2)` on the real set.
///
/// # Safety
/// As `semop(2)`.
#[no_mangle]
pub unsafe extern "C" fn semop(
    id: libc::c_int,
    ops: *mut libc::sembuf,
    n: libc::size_t,
) -> libc::c_int {
    let f = dmtcp::next_libc!(SEMOP, c"semop", SemOpFn);
    // SAFETY: forwarding the caller's arguments.
    retrying(SEM, id, |r| unsafe { f(r, ops, n) } as isize) as libc::c_int
}

/// `semtimedop(2)` on the real set (a retry after a checkpoint waits the
/// whole timeout again).
///
/// # Safety
/// As `semtimedop(2)`.
#[no_mangle]
pub unsafe extern "C" fn semtimedop(
    id: libc::c_int,
    ops: *mut libc::sembuf,
    n: libc::size_t,
    t: *const libc::timespec,
) -> libc::c_int {
    let f = dmtcp::next_libc!(SEMTIMEDOP, c"semtimedop", SemTimedOpFn);
    // SAFETY: forwarding the caller's arguments.
    retrying(SEM, id, |r| unsafe { f(r, ops, n, t) } as isize) as libc::c_int
}

/// `semctl(2)` on the real set (the optional fourth argument is passed on
/// as the register it came in).
///
/// # Safety
/// As `semctl(2)`.
#[no_mangle]
pub unsafe extern "C" fn semctl(
    id: libc::c_int,
    num: libc::c_int,
    cmd: libc::c_int,
    arg: usize,
) -> libc::c_int {
    let f = dmtcp::next_libc!(SEMCTL, c"semctl", SemCtlFn);
    // IPC_INFO / SEM_INFO / SEM_STAT take no set id.
    if matches!(cmd, 3 | 19 | 18 | 20) {
        // SAFETY: forwarding the caller's arguments.
        return unsafe { f(id, num, cmd, arg) };
    }
    // Lookup and call in one image (the call does not block).
    let _hold = dmtcp::CkptHold::new();
    // SAFETY: forwarding the caller's arguments.
    let r = unsafe { f(to_real(SEM, id), num, cmd, arg) };
    if r == 0 && cmd == libc::IPC_RMID {
        forget(SEM, id);
    }
    r
}

fn msgctl_real(id: i32, cmd: i32, buf: &mut libc::msqid_ds) -> i32 {
    let f = dmtcp::libc_fn(&MSGCTL, c"msgctl");
    if f == 0 {
        return -1;
    }
    // SAFETY: libc's msgctl with our buffer.
    unsafe { core::mem::transmute::<usize, MsgCtlFn>(f)(id, cmd, buf) }
}

fn semctl_real(id: i32, num: i32, cmd: i32, arg: usize) -> i32 {
    let f = dmtcp::libc_fn(&SEMCTL, c"semctl");
    if f == 0 {
        return -1;
    }
    // SAFETY: libc's semctl; `arg` is what the command expects.
    unsafe { core::mem::transmute::<usize, SemCtlFn>(f)(id, num, cmd, arg) }
}

/// Save a queue: mode, size limit, messages (copied, left in place).
fn save_queue(s: &mut Saved, real: i32) -> bool {
    // SAFETY: a zeroed msqid_ds for IPC_STAT to fill.
    let mut ds: libc::msqid_ds = unsafe { core::mem::zeroed() };
    if msgctl_real(real, libc::IPC_STAT, &mut ds) != 0 {
        return false;
    }
    s.mode = (ds.msg_perm.mode & 0o777) as i32;
    s.size = ds.msg_qbytes as u64;
    let rcv = dmtcp::libc_fn(&MSGRCV, c"msgrcv");
    if rcv == 0 {
        return false;
    }
    // SAFETY: libc's msgrcv.
    let rcv = unsafe { core::mem::transmute::<usize, RcvFn>(rcv) };
    let cap = (s.size as usize).max(8192) + 8;
    let mut buf = vec![0u8; cap];
    for i in 0..ds.msg_qnum as i64 {
        // SAFETY: MSG_COPY copies message `i` into our buffer, leaving it queued.
        let n = unsafe {
            rcv(
                real,
                buf.as_mut_ptr() as *mut libc::c_void,
                cap - 8,
                i,
                libc::IPC_NOWAIT | MSG_COPY | libc::MSG_NOERROR,
            )
        };
        if n < 0 {
            dmtcp::warn(format_args!(
                "message queue {}: cannot copy message {i} ({}); the queue is saved without it",
                s.virt,
                std::io::Error::last_os_error()
            ));
            break;
        }
        let mut t = [0u8; 8];
        t.copy_from_slice(&buf[..8]);
        s.msgs
            .push((i64::from_ne_bytes(t), buf[8..8 + n as usize].to_vec()));
    }
    true
}

/// Save a semaphore set: mode, values.
fn save_sems(s: &mut Saved, real: i32) -> bool {
    // SAFETY: a zeroed semid_ds for IPC_STAT to fill.
    let mut ds: libc::semid_ds = unsafe { core::mem::zeroed() };
    if semctl_real(
        real,
        0,
        libc::IPC_STAT,
        &mut ds as *mut libc::semid_ds as usize,
    ) != 0
    {
        return false;
    }
    s.mode = (ds.sem_perm.mode & 0o777) as i32;
    s.size = ds.sem_nsems as u64;
    s.sems = vec![0u16; ds.sem_nsems as usize];
    semctl_real(real, 0, libc::GETALL, s.sems.as_mut_ptr() as usize) == 0
}

pub(super) fn checkpoint() {
    let ids = IDS.with(|v| v.clone());
    let boot = dmtcp::boot_id();
    let pid = dmtcp_sys::getpid();
    let name = |i: &Id| format!("o:{boot}:{}:{}", i.kind, i.real);
    for i in &ids {
        dmtcp::kv_put(DB, name(i).into_bytes(), pid.to_ne_bytes().to_vec());
    }
    let mqs = super::posixmq::publish(pid);
    let coordinated = dmtcp::barrier("sysv:elect");
    super::posixmq::save(mqs, pid, coordinated);
    let mut out = Vec::new();
    for i in &ids {
        let owner = if coordinated {
            dmtcp::kv_get(DB, name(i).as_bytes()).flatten()
        } else {
            None
        };
        let mut s = Saved {
            kind: i.kind,
            virt: i.virt,
            key: i.key,
            leader: owner.is_none_or(|o| o == pid.to_ne_bytes()),
            ..Default::default()
        };
        if s.leader {
            let ok = match i.kind {
                MSG => save_queue(&mut s, i.real),
                SEM => save_sems(&mut s, i.real),
                _ => super::sysvshm::save(&mut s, i.real),
            };
            if !ok {
                continue; // removed meanwhile
            }
        }
        out.push(s);
    }
    SAVED.with(|v| *v = out);
    super::sysvshm::save_attaches();
}

pub(super) fn resume() {
    super::posixmq::forget();
    SAVED.with(|v| v.clear());
}

/// Remove object `id` if it is still there and ours.
pub(crate) fn remove_stale(kind: i32, id: i32) {
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    if kind == SHM {
        super::sysvshm::remove_stale(id, uid);
    } else if kind == MSG {
        // SAFETY: a zeroed msqid_ds for IPC_STAT to fill.
        let mut ds: libc::msqid_ds = unsafe { core::mem::zeroed() };
        if msgctl_real(id, libc::IPC_STAT, &mut ds) == 0 && ds.msg_perm.cuid == uid {
            msgctl_real(id, libc::IPC_RMID, &mut ds);
        }
    } else {
        // SAFETY: a zeroed semid_ds for IPC_STAT to fill.
        let mut ds: libc::semid_ds = unsafe { core::mem::zeroed() };
        if semctl_real(
            id,
            0,
            libc::IPC_STAT,
            &mut ds as *mut libc::semid_ds as usize,
        ) == 0
            && ds.sem_perm.cuid == uid
        {
            semctl_real(id, 0, libc::IPC_RMID, 0);
        }
    }
}

/// Re-create one object; its new real id.
fn remake(s: &Saved) -> Option<i32> {
    if s.kind == SHM {
        return super::sysvshm::remake(s);
    }
    let create = |key: i32, flags: i32| -> i32 {
        if s.kind == MSG {
            // SAFETY: libc's msgget.
            unsafe {
                core::mem::transmute::<usize, GetFn>(dmtcp::libc_fn(&MSGGET, c"msgget"))(key, flags)
            }
        } else {
            // SAFETY: libc's semget.
            unsafe {
                core::mem::transmute::<usize, SemGetFn>(dmtcp::libc_fn(&SEMGET, c"semget"))(
                    key,
                    s.size as i32,
                    flags,
                )
            }
        }
    };
    let rmid = |id: i32| {
        if s.kind == MSG {
            // SAFETY: a zeroed buffer, unused by IPC_RMID.
            let mut ds: libc::msqid_ds = unsafe { core::mem::zeroed() };
            msgctl_real(id, libc::IPC_RMID, &mut ds);
        } else {
            semctl_real(id, 0, libc::IPC_RMID, 0);
        }
    };
    if dmtcp::libc_fn(&MSGGET, c"msgget") == 0 || dmtcp::libc_fn(&SEMGET, c"semget") == 0 {
        return None;
    }
    let flags = libc::IPC_CREAT | libc::IPC_EXCL | s.mode;
    let mut id = create(s.key, flags);
    if id < 0 && errno() == libc::EEXIST && s.key != libc::IPC_PRIVATE {
        // The killed job's object, in its state after the checkpoint.
        let stale = create(s.key, 0);
        if stale >= 0 {
            rmid(stale);
        }
        id = create(s.key, flags);
    }
    if id < 0 {
        return None;
    }
    if s.kind == MSG {
        // SAFETY: a zeroed msqid_ds for IPC_STAT/IPC_SET.
        let mut ds: libc::msqid_ds = unsafe { core::mem::zeroed() };
        if msgctl_real(id, libc::IPC_STAT, &mut ds) == 0 && ds.msg_qbytes as u64 != s.size {
            ds.msg_qbytes = s.size as _;
            msgctl_real(id, libc::IPC_SET, &mut ds);
        }
        // SAFETY: libc's msgsnd.
        let snd =
            unsafe { core::mem::transmute::<usize, SndFn>(dmtcp::libc_fn(&MSGSND, c"msgsnd")) };
        for (t, body) in &s.msgs {
            let mut m = t.to_ne_bytes().to_vec();
            m.extend_from_slice(body);
            // SAFETY: sending our buffer (type then text).
            if unsafe {
                snd(
                    id,
                    m.as_ptr() as *const libc::c_void,
                    body.len(),
                    libc::IPC_NOWAIT,
                )
            } != 0
            {
                dmtcp::warn(format_args!(
                    "message queue {}: a message could not be queued again",
                    s.virt
                ));
            }
        }
    } else {
        let mut vals = s.sems.clone();
        semctl_real(id, 0, libc::SETALL, vals.as_mut_ptr() as usize);
    }
    Some(id)
}

pub(super) fn restart() {
    let saved = SAVED.with(core::mem::take);
    let key = |s: &Saved| format!("r:{}:{}", s.kind, s.virt);
    for s in saved.iter().filter(|s| s.leader) {
        // The killed job's private object, if the kernel still has it (it
        // holds the state after the checkpoint): remove it, as the job would.
        let old = IDS.with(|v| {
            v.iter()
                .find(|i| i.kind == s.kind && i.virt == s.virt)
                .map(|i| i.real)
        });
        if let (Some(old), true) = (old, s.key == libc::IPC_PRIVATE) {
            remove_stale(s.kind, old);
        }
        match remake(s) {
            Some(id) => {
                dmtcp::kv_put(DB, key(s).into_bytes(), id.to_ne_bytes().to_vec());
            }
            None => dmtcp::warn(format_args!(
                "System V {} {} cannot be re-created: {}",
                ["message queue", "semaphore set", "shared memory segment"][s.kind as usize],
                s.virt,
                std::io::Error::last_os_error()
            )),
        }
    }
    super::posixmq::remake();
    dmtcp::barrier("sysv:made");
    let mut known = Vec::new();
    for s in &saved {
        let new = dmtcp::kv_get(DB, key(s).as_bytes())
            .flatten()
            .and_then(|v| v.try_into().ok())
            .map(i32::from_ne_bytes);
        if let Some(real) = new {
            known.push(Id {
                kind: s.kind,
                virt: s.virt,
                real,
                key: s.key,
            });
        }
    }
    // Objects that were gone at checkpoint time are forgotten.
    IDS.with(|v| *v = known);
    super::posixmq::reopen();
    super::sysvshm::claim_copies();
    dmtcp::barrier("sysv:opened");
    super::posixmq::unlink_again();
    super::sysvshm::reattach();
    dmtcp::barrier("sysv:attached");
    super::sysvshm::remove_destroyed(&saved);
}
