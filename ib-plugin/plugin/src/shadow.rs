//! Shadow verbs objects and the verbs the plugin exports.
//!
//! Each shadow embeds the public struct first (the program reads its
//! fields: `qp->qp_num`, `mr->lkey`, `cq->channel`, ...) and keeps the real
//! object beside it. Every exported verb takes the program's shadow,
//! unwraps it, calls the real verb and wraps what comes back; the shadow
//! context's `ops` send the inline verbs here as well. Ids the program
//! passes in are translated (identity until the first restart); ids it
//! gets out are the first run's.
//!
//! This module is the C ABI boundary: it takes raw pointers from C.

use crate::ffi::*;
use crate::sys::{self, real, set_errno, NoCkpt};
use rustc_hash::FxHashMap as HashMap;
use std::collections::VecDeque;
use std::ffi::{c_int, c_uint, c_void};
use std::mem::offset_of;
use std::ptr::{self, null_mut};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Mutex, RwLock};

/// Set at the first restart: ids differ from now on, so work requests are
/// translated (before, the first run's ids are the real ones).
pub(crate) static RESTARTED: AtomicBool = AtomicBool::new(false);

pub(crate) const MAX_PORTS: usize = 4;
const MAX_SGE: usize = 32;

#[derive(Clone, Copy, Default)]
pub(crate) struct PortIds {
    pub(crate) seen: bool,
    pub(crate) vlid: u16,
    pub(crate) rlid: u16,
    pub(crate) gid_seen: bool,
    pub(crate) vgid: [u8; 16],
    pub(crate) rgid: [u8; 16],
}

#[repr(C)]
pub(crate) struct SCtx {
    pub(crate) vctx: verbs_context,
    pub(crate) real: *mut ibv_context,
    pub(crate) dev_name: [u8; 64],
    pub(crate) ports: Mutex<[PortIds; MAX_PORTS]>,
    /// The real library's data-path functions (from the real context's ops).
    pub(crate) post_send:
        unsafe extern "C" fn(*mut ibv_qp, *mut ibv_send_wr, *mut *mut ibv_send_wr) -> c_int,
    pub(crate) post_recv:
        unsafe extern "C" fn(*mut ibv_qp, *mut ibv_recv_wr, *mut *mut ibv_recv_wr) -> c_int,
    pub(crate) post_srq_recv:
        unsafe extern "C" fn(*mut ibv_srq, *mut ibv_recv_wr, *mut *mut ibv_recv_wr) -> c_int,
    pub(crate) poll_cq: unsafe extern "C" fn(*mut ibv_cq, c_int, *mut ibv_wc) -> c_int,
    pub(crate) req_notify_cq: unsafe extern "C" fn(*mut ibv_cq, c_int) -> c_int,
}

const CTX_OFF: usize = offset_of!(SCtx, vctx) + offset_of!(verbs_context, context);
// The shadow context must start with a full verbs_context whose last field
// is the ibv_context, as the inline verbs of verbs.h expect.
const _: () =
    assert!(CTX_OFF == std::mem::size_of::<verbs_context>() - std::mem::size_of::<ibv_context>());

pub(crate) unsafe fn sctx<'a>(c: *mut ibv_context) -> &'a SCtx {
    // SAFETY: every context the program holds is the `context` of an SCtx.
    unsafe { &*(c.byte_sub(CTX_OFF) as *const SCtx) }
}

pub(crate) fn ctx_ptr(s: *mut SCtx) -> *mut ibv_context {
    // SAFETY: a field address of a live shadow.
    unsafe { ptr::addr_of_mut!((*s).vctx.context) }
}

#[repr(C)]
pub(crate) struct SPd {
    pub(crate) pd: ibv_pd,
    pub(crate) real: *mut ibv_pd,
}

#[repr(C)]
pub(crate) struct SMr {
    pub(crate) mr: ibv_mr,
    pub(crate) real: *mut ibv_mr,
    pub(crate) access: c_uint,
    pub(crate) iova: u64,
    /// The real keys of now (the virtual ones are in `mr`).
    pub(crate) rlkey: u32,
    pub(crate) rrkey: u32,
}

#[repr(C)]
pub(crate) struct SChan {
    pub(crate) ch: ibv_comp_channel,
    pub(crate) real: *mut ibv_comp_channel,
    /// A channel event was waiting when the checkpoint was taken.
    pub(crate) pending_at_ckpt: bool,
    /// Events to hand out before reading the device (after a restart).
    pub(crate) saved: AtomicU32,
    pub(crate) saved_cq: *mut SCq,
}

/// A completion drained from the device at a checkpoint, already in the
/// program's (virtual) ids.
pub(crate) struct WcQueue {
    pub(crate) buf: Box<[ibv_wc]>,
    pub(crate) head: usize,
    pub(crate) len: usize,
}

#[repr(C)]
pub(crate) struct SCq {
    pub(crate) cq: ibv_cq,
    pub(crate) real: *mut ibv_cq,
    pub(crate) cqe_asked: c_int,
    /// 0: not armed, 1: armed, 2: armed for solicited only.
    pub(crate) armed: AtomicU32,
    pub(crate) qlen: AtomicUsize,
    pub(crate) queue: Mutex<WcQueue>,
}

#[derive(Clone)]
pub(crate) struct RecvRec {
    pub(crate) wr_id: u64,
    pub(crate) sges: Sges,
}

/// A logged request's SGEs: up to 4 kept in place, so logging a post
/// allocates nothing in the common case (this is on every verb's path).
pub(crate) type Sges = smallvec::SmallVec<[ibv_sge; 4]>;

/// A posted send of an RC QP, as the program gave it (virtual ids), kept
/// until a completion shows it ran (a QP's sends complete in order): a
/// send still waiting for a receive at a checkpoint (RNR: the receiver's
/// threads are suspended, it cannot post one) is posted again after a
/// restart (`ckpt::replay`).
#[derive(Clone)]
pub(crate) struct SendRec {
    /// `next` and `sg_list` null.
    pub(crate) wr: ibv_send_wr,
    pub(crate) sges: Sges,
    /// The data of an inline send (the program may reuse its buffer);
    /// up to 64 bytes kept in place.
    pub(crate) inline: smallvec::SmallVec<[u8; 64]>,
    /// Among the QP's sends that consume a receive (SEND, SEND_WITH_IMM,
    /// RDMA_WRITE_WITH_IMM), this one's index; u64::MAX for the others.
    pub(crate) seq: u64,
}

/// Does this opcode consume a receive at the peer?
pub(crate) fn consumes_recv(op: c_uint) -> bool {
    matches!(
        op,
        IBV_WR_SEND | IBV_WR_SEND_WITH_IMM | IBV_WR_RDMA_WRITE_WITH_IMM
    )
}

#[repr(C)]
pub(crate) struct SSrq {
    pub(crate) srq: ibv_srq,
    pub(crate) real: *mut ibv_srq,
    pub(crate) attr: ibv_srq_attr,
    pub(crate) recvs: Mutex<VecDeque<RecvRec>>,
}

#[repr(C)]
pub(crate) struct SQp {
    pub(crate) qp: ibv_qp,
    pub(crate) real: *mut ibv_qp,
    pub(crate) init: ibv_qp_init_attr,
    /// The attributes of the INIT, RTR and RTS transitions, as the program
    /// gave them (virtual ids), with their masks (0: not done).
    pub(crate) log: Mutex<[(ibv_qp_attr, c_int); 3]>,
    pub(crate) port: u8,
    /// Signaled sends posted and not completed yet.
    pub(crate) outstanding: AtomicU32,
    /// Unsignaled sends posted after the last signaled one: no completion
    /// will tell whether they ran.
    pub(crate) unsignaled_tail: AtomicU32,
    /// The checkpoint's fence (see `ckpt::post_fences`) is posted on this
    /// QP and has not completed yet: its completion is not the program's.
    pub(crate) fence: AtomicBool,
    /// Set by the drain when this RC QP's oldest outstanding send waits
    /// for a receive its peer has not posted (see `ckpt::rnr_blocked`).
    pub(crate) rnr_blocked: AtomicBool,
    pub(crate) recvs: Mutex<VecDeque<RecvRec>>,
    /// RC: sends posted and not known to have run (see `SendRec`).
    pub(crate) sends: Mutex<VecDeque<SendRec>>,
    /// RC: sends that consume a receive posted so far, and receives
    /// completed (successfully) so far, since the QP was created (counted
    /// on the QP the message came in on, also when it takes its receives
    /// from an SRQ).
    pub(crate) consuming_posted: AtomicU64,
    pub(crate) recvs_done: AtomicU64,
    /// UD: (virtual LID, virtual QPN) destinations used.
    pub(crate) ud_dests: Mutex<Vec<(u16, u32)>>,
    /// The peer's rkeys: (virtual, real) sorted, after a restart.
    pub(crate) peer_rkeys: RwLock<Vec<(u32, u32)>>,
}

#[repr(C)]
pub(crate) struct SAh {
    pub(crate) ah: ibv_ah,
    pub(crate) real: *mut ibv_ah,
    pub(crate) attr: ibv_ah_attr,
}

#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Obj {
    Ctx(*mut SCtx),
    Pd(*mut SPd),
    Mr(*mut SMr),
    Chan(*mut SChan),
    Cq(*mut SCq),
    Srq(*mut SSrq),
    Qp(*mut SQp),
    Ah(*mut SAh),
}

pub(crate) struct Registry {
    /// Every live object, in creation order (restart re-creates them in it).
    pub(crate) objs: Vec<Obj>,
}
// SAFETY: the pointers are to shadows the plugin owns; access is serialized
// by the Mutex.
unsafe impl Send for Registry {}

pub(crate) static REG: Mutex<Registry> = Mutex::new(Registry { objs: Vec::new() });

fn reg_add(o: Obj) {
    REG.lock().unwrap_or_else(|e| e.into_inner()).objs.push(o);
}

fn reg_remove(o: Obj) {
    REG.lock()
        .unwrap_or_else(|e| e.into_inner())
        .objs
        .retain(|x| *x != o);
}

/// A shadow object the program destroyed (its real one is gone): out of
/// the registry, then freed.
///
/// # Safety
/// `s` came from `Box::into_raw` and `o` is its registry entry; neither is
/// used again.
unsafe fn release<T>(s: *mut T, o: Obj) {
    reg_remove(o);
    // SAFETY: per the contract, s is ours to free, once.
    drop(unsafe { Box::from_raw(s) });
}

/// A device context (the shadow's address): QP numbers and memory keys
/// are the device's, and two HCAs may number theirs alike (mlx5 does), so
/// the maps of real QP numbers and of lkeys are per context.
pub(crate) type CtxKey = usize;

pub(crate) struct Maps {
    /// (context, real QP number of now) -> shadow QP.
    pub(crate) qp_by_real: HashMap<(CtxKey, u32), usize>,
    /// (context, virtual lkey) -> real lkey (only after a restart).
    pub(crate) lkey: HashMap<(CtxKey, u32), u32>,
    /// (virtual, real) LIDs: own ports and peers'.
    pub(crate) lids: Vec<(u16, u16)>,
    /// (virtual LID, virtual QPN) -> real QPN, and (real LID, real QPN) -> virtual QPN.
    pub(crate) qpn: HashMap<(u16, u32), u32>,
    pub(crate) qpn_rev: HashMap<(u16, u32), u32>,
    /// (virtual, real) GIDs.
    pub(crate) gids: Vec<([u8; 16], [u8; 16])>,
    /// Virtual LID of a device's port -> the (virtual, real) rkeys, sorted,
    /// of every MR of every process on that device (after a restart):
    /// rkeys are the device's, so two devices may number theirs alike.
    pub(crate) rkeys: HashMap<u16, Vec<(u32, u32)>>,
}

pub(crate) static MAPS: RwLock<Option<Maps>> = RwLock::new(None);

pub(crate) fn with_maps<R>(f: impl FnOnce(&mut Maps) -> R) -> R {
    let mut g = MAPS.write().unwrap_or_else(|e| e.into_inner());
    let m = g.get_or_insert_with(|| Maps {
        qp_by_real: HashMap::default(),
        lkey: HashMap::default(),
        lids: Vec::new(),
        qpn: HashMap::default(),
        qpn_rev: HashMap::default(),
        gids: Vec::new(),
        rkeys: HashMap::default(),
    });
    f(m)
}

fn read_maps<R>(f: impl FnOnce(&Maps) -> R) -> Option<R> {
    let g = MAPS.read().unwrap_or_else(|e| e.into_inner());
    g.as_ref().map(f)
}

pub(crate) fn lid_to_real(v: u16) -> u16 {
    read_maps(|m| m.lids.iter().find(|x| x.0 == v).map(|x| x.1))
        .flatten()
        .unwrap_or(v)
}

pub(crate) fn lid_to_virt(r: u16) -> u16 {
    read_maps(|m| m.lids.iter().find(|x| x.1 == r).map(|x| x.0))
        .flatten()
        .unwrap_or(r)
}

pub(crate) fn gid_to_real(v: [u8; 16]) -> [u8; 16] {
    read_maps(|m| m.gids.iter().find(|x| x.0 == v).map(|x| x.1))
        .flatten()
        .unwrap_or(v)
}

pub(crate) fn qpn_to_real(vlid: u16, vqpn: u32) -> u32 {
    read_maps(|m| m.qpn.get(&(vlid, vqpn)).copied())
        .flatten()
        .unwrap_or(vqpn)
}

fn qpn_to_virt(rlid: u16, rqpn: u32) -> u32 {
    read_maps(|m| m.qpn_rev.get(&(rlid, rqpn)).copied())
        .flatten()
        .unwrap_or(rqpn)
}

pub(crate) fn lkey_to_real(ctx: *mut ibv_context, v: u32) -> u32 {
    read_maps(|m| m.lkey.get(&(ctx as CtxKey, v)).copied())
        .flatten()
        .unwrap_or(v)
}

fn no_real() -> c_int {
    set_errno(libc::ENOSYS);
    libc::ENOSYS
}

// ---------------------------------------------------------------- context

unsafe extern "C" fn query_port_op(
    c: *mut ibv_context,
    port: u8,
    attr: *mut ibv_port_attr,
    _len: usize,
) -> c_int {
    // SAFETY: the program passes its shadow context and a port_attr buffer.
    unsafe { query_port_full(c, port, attr) }
}

unsafe fn query_port_full(c: *mut ibv_context, port: u8, attr: *mut ibv_port_attr) -> c_int {
    let Some(r) = real() else { return no_real() };
    let _g = NoCkpt::new();
    // SAFETY: c is a shadow context; attr the caller's buffer.
    unsafe {
        let s = sctx(c);
        let rv = (s.real as *mut u8).sub(offset_of!(verbs_context, context)) as *mut verbs_context;
        let rc = if (*rv).sz >= size_of::<verbs_context>()
            && (*s.real).abi_compat == usize::MAX as *mut c_void
        {
            match (*rv).query_port {
                Some(f) => f(s.real, port, attr, size_of::<ibv_port_attr>()),
                None => (r.query_port)(s.real, port, attr.cast()),
            }
        } else {
            ptr::write_bytes(attr, 0, 1);
            (r.query_port)(s.real, port, attr.cast())
        };
        if rc == 0 {
            (*attr).lid = port_lid(s, port, (*attr).lid);
        }
        rc
    }
}

/// The LID the program sees for `port` whose real LID is `rlid`.
fn port_lid(s: &SCtx, port: u8, rlid: u16) -> u16 {
    let i = port as usize;
    if i >= MAX_PORTS || rlid == 0 {
        return rlid;
    }
    let mut p = s.ports.lock().unwrap_or_else(|e| e.into_inner());
    if !p[i].seen {
        p[i].seen = true;
        p[i].vlid = rlid;
        p[i].rlid = rlid;
        let v = rlid;
        with_maps(|m| {
            if !m.lids.iter().any(|x| x.0 == v) {
                m.lids.push((v, v));
            }
        });
    }
    p[i].vlid
}

unsafe extern "C" fn query_device_ex_op(
    c: *mut ibv_context,
    input: *const ibv_query_device_ex_input,
    attr: *mut ibv_device_attr_ex,
    len: usize,
) -> c_int {
    // SAFETY: c is a shadow; the real context is a verbs_context of the real library.
    unsafe {
        let s = sctx(c);
        let rv = (s.real as *mut u8).sub(offset_of!(verbs_context, context)) as *mut verbs_context;
        match (*rv).query_device_ex {
            Some(f) if (*s.real).abi_compat == usize::MAX as *mut c_void => {
                f(s.real, input, attr, len)
            }
            _ => match real() {
                Some(r) => (r.query_device)(s.real, attr.cast()),
                None => no_real(),
            },
        }
    }
}

/// `ibv_create_qp_ex` for what the classic `ibv_create_qp` covers; the
/// extended QP (`ibv_wr_*` builders), XRC, RSS, TSO: EOPNOTSUPP.
unsafe extern "C" fn create_qp_ex_op(
    _c: *mut ibv_context,
    a: *mut ibv_qp_init_attr_ex,
) -> *mut ibv_qp {
    // SAFETY: the caller's attribute struct.
    unsafe {
        let allowed = IBV_QP_INIT_ATTR_PD;
        if a.is_null() || ((*a).comp_mask & !allowed) != 0 || (*a).pd.is_null() {
            unsupported("extended QPs (ibv_create_qp_ex with comp_mask beyond PD: ibv_wr_* send ops, XRC, RSS, TSO)");
            set_errno(libc::EOPNOTSUPP);
            return null_mut();
        }
        ibv_create_qp((*a).pd, a.cast())
    }
}

pub(crate) fn unsupported(what: &str) {
    static SAID: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let mut s = SAID.lock().unwrap_or_else(|e| e.into_inner());
    if !s.iter().any(|x| x == what) {
        s.push(what.to_string());
        crate::say(&format!(
            "{what}: not supported under checkpointing (EOPNOTSUPP)"
        ));
    }
}

pub(crate) unsafe fn fill_ctx(s: *mut SCtx, realc: *mut ibv_context) {
    // SAFETY: s is our fresh shadow; realc an open real context.
    unsafe {
        let c = &mut (*s).vctx.context;
        c.device = (*realc).device;
        c.cmd_fd = (*realc).cmd_fd;
        c.async_fd = (*realc).async_fd;
        c.num_comp_vectors = (*realc).num_comp_vectors;
        c.abi_compat = usize::MAX as *mut c_void;
        c.ops.poll_cq = Some(poll_cq);
        c.ops.req_notify_cq = Some(req_notify_cq);
        c.ops.post_send = Some(post_send);
        c.ops.post_recv = Some(post_recv);
        c.ops.post_srq_recv = Some(post_srq_recv);
        (*s).vctx.sz = size_of::<verbs_context>();
        (*s).vctx.query_port = Some(query_port_op);
        (*s).vctx.query_device_ex = Some(query_device_ex_op);
        (*s).vctx.create_qp_ex = Some(create_qp_ex_op);
        set_real_ops(s, realc);
    }
}

pub(crate) unsafe fn set_real_ops(s: *mut SCtx, realc: *mut ibv_context) -> bool {
    // SAFETY: realc is an open real context.
    unsafe {
        let o = &(*realc).ops;
        let (Some(a), Some(b), Some(c), Some(d), Some(e)) = (
            o.post_send,
            o.post_recv,
            o.post_srq_recv,
            o.poll_cq,
            o.req_notify_cq,
        ) else {
            return false;
        };
        (*s).real = realc;
        (*s).post_send = a;
        (*s).post_recv = b;
        (*s).post_srq_recv = c;
        (*s).poll_cq = d;
        (*s).req_notify_cq = e;
        true
    }
}

unsafe extern "C" fn bad_post_send(
    _: *mut ibv_qp,
    _: *mut ibv_send_wr,
    _: *mut *mut ibv_send_wr,
) -> c_int {
    libc::ENOSYS
}
unsafe extern "C" fn bad_post_recv(
    _: *mut ibv_qp,
    _: *mut ibv_recv_wr,
    _: *mut *mut ibv_recv_wr,
) -> c_int {
    libc::ENOSYS
}
unsafe extern "C" fn bad_post_srq_recv(
    _: *mut ibv_srq,
    _: *mut ibv_recv_wr,
    _: *mut *mut ibv_recv_wr,
) -> c_int {
    libc::ENOSYS
}
unsafe extern "C" fn bad_poll(_: *mut ibv_cq, _: c_int, _: *mut ibv_wc) -> c_int {
    -1
}
unsafe extern "C" fn bad_notify(_: *mut ibv_cq, _: c_int) -> c_int {
    libc::ENOSYS
}

#[no_mangle]
pub unsafe extern "C" fn ibv_open_device(d: *mut ibv_device) -> *mut ibv_context {
    let Some(r) = real() else {
        no_real();
        return null_mut();
    };
    let _g = NoCkpt::new();
    // SAFETY: d comes from the real ibv_get_device_list.
    let rc = unsafe { (r.open_device)(d) };
    if rc.is_null() {
        return null_mut();
    }
    let mut name = [0u8; 64];
    // SAFETY: the real library's device name, a C string.
    unsafe {
        let n = std::ffi::CStr::from_ptr((r.get_device_name)(d)).to_bytes();
        name[..n.len().min(63)].copy_from_slice(&n[..n.len().min(63)]);
    }
    let s = Box::into_raw(Box::new(SCtx {
        vctx: verbs_context::default(),
        real: rc,
        dev_name: name,
        ports: Mutex::new([PortIds::default(); MAX_PORTS]),
        post_send: bad_post_send,
        post_recv: bad_post_recv,
        post_srq_recv: bad_post_srq_recv,
        poll_cq: bad_poll,
        req_notify_cq: bad_notify,
    }));
    // SAFETY: s is ours; rc an open context.
    unsafe {
        fill_ctx(s, rc);
        sys::init_mutex_cond(ptr::addr_of_mut!((*s).vctx.context.mutex), null_mut());
        sys::claim((*rc).cmd_fd);
        sys::claim((*rc).async_fd);
    }
    reg_add(Obj::Ctx(s));
    ctx_ptr(s)
}

#[no_mangle]
pub unsafe extern "C" fn ibv_close_device(c: *mut ibv_context) -> c_int {
    let Some(r) = real() else { return no_real() };
    if c.is_null() {
        return libc::EINVAL;
    }
    let _g = NoCkpt::new();
    // SAFETY: a shadow context the program gives up.
    unsafe {
        let s = c.byte_sub(CTX_OFF) as *mut SCtx;
        let (oc, oa) = ((*s).vctx.context.cmd_fd, (*s).vctx.context.async_fd);
        let (rcf, raf) = ((*(*s).real).cmd_fd, (*(*s).real).async_fd);
        let rc = (r.close_device)((*s).real);
        if rc == 0 {
            // After a restart the numbers the program knew are our copies.
            if oc != rcf {
                libc::close(oc);
            }
            if oa != raf {
                libc::close(oa);
            }
            release(s, Obj::Ctx(s));
        }
        rc
    }
}

#[no_mangle]
pub unsafe extern "C" fn ibv_query_device(
    c: *mut ibv_context,
    attr: *mut ibv_device_attr,
) -> c_int {
    let Some(r) = real() else { return no_real() };
    // SAFETY: shadow context.
    unsafe { (r.query_device)(sctx(c).real, attr) }
}

#[no_mangle]
pub unsafe extern "C" fn ibv_query_port(
    c: *mut ibv_context,
    port: u8,
    attr: *mut _compat_ibv_port_attr,
) -> c_int {
    let Some(r) = real() else { return no_real() };
    let _g = NoCkpt::new();
    // SAFETY: shadow context; the compat struct is a prefix of ibv_port_attr.
    unsafe {
        let s = sctx(c);
        // The compat struct is ibv_port_attr without its last fields
        // (rdma-core's verbs.h); its LID is at the same place.
        let rc = (r.query_port)(s.real, port, attr);
        if rc == 0 {
            let a = attr as *mut ibv_port_attr;
            (*a).lid = port_lid(s, port, (*a).lid);
        }
        rc
    }
}

#[no_mangle]
pub unsafe extern "C" fn ibv_query_gid(
    c: *mut ibv_context,
    port: u8,
    index: c_int,
    gid: *mut ibv_gid,
) -> c_int {
    let Some(r) = real() else { return no_real() };
    let _g = NoCkpt::new();
    // SAFETY: shadow context, caller's gid buffer.
    unsafe {
        let s = sctx(c);
        let rc = (r.query_gid)(s.real, port, index, gid);
        if rc == 0 && index == 0 {
            (*gid).raw = virt_gid(s, port as u32, (*gid).raw);
        }
        rc
    }
}

/// The program's GID 0 of `port` for the device's `g` (the first run's:
/// noted the first time the program asks).
fn virt_gid(s: &SCtx, port: u32, g: [u8; 16]) -> [u8; 16] {
    if port as usize >= MAX_PORTS {
        return g;
    }
    let mut p = s.ports.lock().unwrap_or_else(|e| e.into_inner());
    let pi = &mut p[port as usize];
    if !pi.gid_seen {
        pi.gid_seen = true;
        pi.vgid = g;
        pi.rgid = g;
        with_maps(|m| m.gids.push((g, g)));
    }
    pi.vgid
}

type QueryGidEx =
    unsafe extern "C" fn(*mut ibv_context, u32, u32, *mut ibv_gid_entry, u32, usize) -> c_int;
type QueryGidTable =
    unsafe extern "C" fn(*mut ibv_context, *mut ibv_gid_entry, usize, u32, usize) -> isize;

/// The real `_ibv_query_gid_ex`/`_ibv_query_gid_table` (rdma-core v32+,
/// IBVERBS_1.11), looked up on first use: older libraries lack them.
fn real_gid_ex() -> Option<(QueryGidEx, QueryGidTable)> {
    static F: std::sync::OnceLock<Option<(QueryGidEx, QueryGidTable)>> = std::sync::OnceLock::new();
    *F.get_or_init(|| {
        // SAFETY: NUL-terminated literals; the symbols have these C signatures (verbs.h).
        unsafe {
            let v = c"IBVERBS_1.11".as_ptr();
            let a = libc::dlvsym(libc::RTLD_NEXT, c"_ibv_query_gid_ex".as_ptr(), v);
            let b = libc::dlvsym(libc::RTLD_NEXT, c"_ibv_query_gid_table".as_ptr(), v);
            (!a.is_null() && !b.is_null()).then(|| {
                (
                    std::mem::transmute::<*mut c_void, QueryGidEx>(a),
                    std::mem::transmute::<*mut c_void, QueryGidTable>(b),
                )
            })
        }
    })
}

/// `ibv_query_gid_ex` of verbs.h: the real one on the real context, GID 0
/// the program's (as `ibv_query_gid`).
#[no_mangle]
pub unsafe extern "C" fn _ibv_query_gid_ex(
    c: *mut ibv_context,
    port: u32,
    index: u32,
    entry: *mut ibv_gid_entry,
    flags: u32,
    size: usize,
) -> c_int {
    let Some((f, _)) = real_gid_ex() else {
        return libc::EOPNOTSUPP;
    };
    let _g = NoCkpt::new();
    // SAFETY: shadow context; the caller's entry of `size` bytes.
    unsafe {
        let s = sctx(c);
        let rc = f(s.real, port, index, entry, flags, size);
        if rc == 0 && index == 0 && !entry.is_null() {
            (*entry).gid.raw = virt_gid(s, port, (*entry).gid.raw);
        }
        rc
    }
}

/// `ibv_query_gid_table` of verbs.h (the `ibverbs` crate's way to a GID):
/// the real one on the real context, each port's GID 0 the program's.
#[no_mangle]
pub unsafe extern "C" fn _ibv_query_gid_table(
    c: *mut ibv_context,
    entries: *mut ibv_gid_entry,
    max: usize,
    flags: u32,
    size: usize,
) -> isize {
    let Some((_, f)) = real_gid_ex() else {
        return -(libc::EOPNOTSUPP as isize);
    };
    let _g = NoCkpt::new();
    // SAFETY: shadow context; the caller's `max` entries of `size` bytes each.
    unsafe {
        let s = sctx(c);
        let n = f(s.real, entries, max, flags, size);
        if n > 0 && size >= std::mem::size_of::<ibv_gid_entry>() {
            for i in 0..n as usize {
                let e = entries.cast::<u8>().add(i * size).cast::<ibv_gid_entry>();
                if (*e).gid_index == 0 {
                    (*e).gid.raw = virt_gid(s, (*e).port_num, (*e).gid.raw);
                }
            }
        }
        n
    }
}

#[no_mangle]
pub unsafe extern "C" fn ibv_query_pkey(
    c: *mut ibv_context,
    port: u8,
    index: c_int,
    pkey: *mut u16,
) -> c_int {
    let Some(r) = real() else { return no_real() };
    // SAFETY: shadow context.
    unsafe { (r.query_pkey)(sctx(c).real, port, index, pkey) }
}

#[no_mangle]
pub unsafe extern "C" fn ibv_get_pkey_index(c: *mut ibv_context, port: u8, pkey: u16) -> c_int {
    let Some(r) = real() else { return no_real() };
    // SAFETY: shadow context.
    unsafe { (r.get_pkey_index)(sctx(c).real, port, pkey) }
}

#[no_mangle]
pub unsafe extern "C" fn ibv_get_async_event(
    c: *mut ibv_context,
    ev: *mut ibv_async_event,
) -> c_int {
    let Some(r) = real() else { return no_real() };
    // SAFETY: shadow context; the real objects' context fields hold our shadows.
    unsafe {
        let rc = (r.get_async_event)(sctx(c).real, ev);
        if rc == 0 {
            let e = &mut *ev;
            match e.event_type {
                IBV_EVENT_CQ_ERR => e.element.cq = (*e.element.cq).cq_context.cast(),
                IBV_EVENT_QP_FATAL..=IBV_EVENT_PATH_MIG_ERR | IBV_EVENT_QP_LAST_WQE_REACHED => {
                    e.element.qp = (*e.element.qp).qp_context.cast()
                }
                IBV_EVENT_SRQ_ERR | IBV_EVENT_SRQ_LIMIT_REACHED => {
                    e.element.srq = (*e.element.srq).srq_context.cast()
                }
                _ => {}
            }
        }
        rc
    }
}

#[no_mangle]
pub unsafe extern "C" fn ibv_ack_async_event(ev: *mut ibv_async_event) {
    let Some(r) = real() else { return };
    // SAFETY: an event from ibv_get_async_event, elements are our shadows.
    unsafe {
        let mut e = *ev;
        match e.event_type {
            IBV_EVENT_CQ_ERR => e.element.cq = (*(e.element.cq as *mut SCq)).real,
            IBV_EVENT_QP_FATAL..=IBV_EVENT_PATH_MIG_ERR | IBV_EVENT_QP_LAST_WQE_REACHED => {
                e.element.qp = (*(e.element.qp as *mut SQp)).real
            }
            IBV_EVENT_SRQ_ERR | IBV_EVENT_SRQ_LIMIT_REACHED => {
                e.element.srq = (*(e.element.srq as *mut SSrq)).real
            }
            _ => {}
        }
        (r.ack_async_event)(&mut e)
    }
}

// ---------------------------------------------------------------- PD, MR

#[no_mangle]
pub unsafe extern "C" fn ibv_alloc_pd(c: *mut ibv_context) -> *mut ibv_pd {
    let Some(r) = real() else {
        no_real();
        return null_mut();
    };
    let _g = NoCkpt::new();
    // SAFETY: shadow context.
    let rp = unsafe { (r.alloc_pd)(sctx(c).real) };
    if rp.is_null() {
        return null_mut();
    }
    let s = Box::into_raw(Box::new(SPd {
        pd: ibv_pd {
            context: c,
            // SAFETY: rp is a live real PD.
            handle: unsafe { (*rp).handle },
        },
        real: rp,
    }));
    reg_add(Obj::Pd(s));
    s.cast()
}

#[no_mangle]
pub unsafe extern "C" fn ibv_dealloc_pd(pd: *mut ibv_pd) -> c_int {
    let Some(r) = real() else { return no_real() };
    let _g = NoCkpt::new();
    let s = pd as *mut SPd;
    // SAFETY: a shadow PD the program gives up.
    unsafe {
        let rc = (r.dealloc_pd)((*s).real);
        if rc == 0 {
            release(s, Obj::Pd(s));
        }
        rc
    }
}

unsafe fn reg_mr_common(
    pd: *mut ibv_pd,
    addr: *mut c_void,
    len: usize,
    iova: u64,
    access: c_uint,
) -> *mut ibv_mr {
    let Some(r) = real() else {
        no_real();
        return null_mut();
    };
    if access & (IBV_ACCESS_ON_DEMAND | IBV_ACCESS_MW_BIND) != 0 {
        unsupported(
            "on-demand paging and memory windows (IBV_ACCESS_ON_DEMAND, IBV_ACCESS_MW_BIND)",
        );
        set_errno(libc::EOPNOTSUPP);
        return null_mut();
    }
    let _g = NoCkpt::new();
    // SAFETY: shadow PD; the program's buffer.
    unsafe {
        let sp = pd as *mut SPd;
        let rm = (r.reg_mr_iova2)((*sp).real, addr, len, iova, access);
        if rm.is_null() {
            return null_mut();
        }
        let mut mr = *rm;
        mr.context = (*sp).pd.context;
        mr.pd = pd;
        let s = Box::into_raw(Box::new(SMr {
            mr,
            real: rm,
            access,
            iova,
            rlkey: (*rm).lkey,
            rrkey: (*rm).rkey,
        }));
        if RESTARTED.load(Relaxed) {
            let k = (*rm).lkey;
            let c = (*sp).pd.context as CtxKey;
            with_maps(|m| {
                m.lkey.insert((c, k), k);
            });
        }
        reg_add(Obj::Mr(s));
        s.cast()
    }
}

#[no_mangle]
pub unsafe extern "C" fn ibv_reg_mr(
    pd: *mut ibv_pd,
    addr: *mut c_void,
    len: usize,
    access: c_int,
) -> *mut ibv_mr {
    // SAFETY: forwarded.
    unsafe { reg_mr_common(pd, addr, len, addr as u64, access as c_uint) }
}

#[no_mangle]
pub unsafe extern "C" fn ibv_reg_mr_iova(
    pd: *mut ibv_pd,
    addr: *mut c_void,
    len: usize,
    iova: u64,
    access: c_int,
) -> *mut ibv_mr {
    // SAFETY: forwarded.
    unsafe { reg_mr_common(pd, addr, len, iova, access as c_uint) }
}

#[no_mangle]
pub unsafe extern "C" fn ibv_reg_mr_iova2(
    pd: *mut ibv_pd,
    addr: *mut c_void,
    len: usize,
    iova: u64,
    access: c_uint,
) -> *mut ibv_mr {
    // SAFETY: forwarded.
    unsafe { reg_mr_common(pd, addr, len, iova, access) }
}

#[no_mangle]
pub unsafe extern "C" fn ibv_dereg_mr(mr: *mut ibv_mr) -> c_int {
    let Some(r) = real() else { return no_real() };
    let _g = NoCkpt::new();
    let s = mr as *mut SMr;
    // SAFETY: a shadow MR the program gives up.
    unsafe {
        let rc = (r.dereg_mr)((*s).real);
        if rc == 0 {
            let k = ((*s).mr.context as CtxKey, (*s).mr.lkey);
            if RESTARTED.load(Relaxed) {
                with_maps(|m| {
                    m.lkey.remove(&k);
                });
            }
            release(s, Obj::Mr(s));
        }
        rc
    }
}

/// Refused: re-registration would need the old and new key both valid.
#[no_mangle]
pub unsafe extern "C" fn ibv_rereg_mr(
    _mr: *mut ibv_mr,
    _flags: c_int,
    _pd: *mut ibv_pd,
    _a: *mut c_void,
    _l: usize,
    _acc: c_int,
) -> c_int {
    unsupported("ibv_rereg_mr");
    libc::EOPNOTSUPP
}

#[no_mangle]
pub unsafe extern "C" fn ibv_attach_mcast(
    _qp: *mut ibv_qp,
    _gid: *const ibv_gid,
    _lid: u16,
) -> c_int {
    unsupported("multicast (ibv_attach_mcast)");
    libc::EOPNOTSUPP
}

#[no_mangle]
pub unsafe extern "C" fn ibv_detach_mcast(
    _qp: *mut ibv_qp,
    _gid: *const ibv_gid,
    _lid: u16,
) -> c_int {
    libc::EOPNOTSUPP
}

#[no_mangle]
pub unsafe extern "C" fn ibv_qp_to_qp_ex(_qp: *mut ibv_qp) -> *mut ibv_qp_ex {
    unsupported("extended QPs (ibv_qp_to_qp_ex)");
    set_errno(libc::EOPNOTSUPP);
    null_mut()
}

#[no_mangle]
pub unsafe extern "C" fn ibv_reg_dmabuf_mr(
    _pd: *mut ibv_pd,
    _o: u64,
    _l: usize,
    _i: u64,
    _fd: c_int,
    _a: c_int,
) -> *mut ibv_mr {
    unsupported("dma-buf memory regions");
    set_errno(libc::EOPNOTSUPP);
    null_mut()
}

// ---------------------------------------------------------------- channels, CQs

#[no_mangle]
pub unsafe extern "C" fn ibv_create_comp_channel(c: *mut ibv_context) -> *mut ibv_comp_channel {
    let Some(r) = real() else {
        no_real();
        return null_mut();
    };
    let _g = NoCkpt::new();
    // SAFETY: shadow context.
    unsafe {
        let rch = (r.create_comp_channel)(sctx(c).real);
        if rch.is_null() {
            return null_mut();
        }
        sys::claim((*rch).fd);
        let s = Box::into_raw(Box::new(SChan {
            ch: ibv_comp_channel {
                context: c,
                fd: (*rch).fd,
                refcnt: 0,
            },
            real: rch,
            pending_at_ckpt: false,
            saved: AtomicU32::new(0),
            saved_cq: null_mut(),
        }));
        reg_add(Obj::Chan(s));
        s.cast()
    }
}

#[no_mangle]
pub unsafe extern "C" fn ibv_destroy_comp_channel(ch: *mut ibv_comp_channel) -> c_int {
    let Some(r) = real() else { return no_real() };
    let _g = NoCkpt::new();
    let s = ch as *mut SChan;
    // SAFETY: a shadow channel the program gives up.
    unsafe {
        if (*s).ch.refcnt > 0 {
            return libc::EBUSY;
        }
        let rc = (r.destroy_comp_channel)((*s).real);
        if rc == 0 {
            release(s, Obj::Chan(s));
        }
        rc
    }
}

pub(crate) fn new_queue(cqe: c_int) -> WcQueue {
    let cap = (cqe.max(1) as usize) * 2 + 16;
    WcQueue {
        buf: vec![ibv_wc::default(); cap].into_boxed_slice(),
        head: 0,
        len: 0,
    }
}

#[no_mangle]
pub unsafe extern "C" fn ibv_create_cq(
    c: *mut ibv_context,
    cqe: c_int,
    cq_context: *mut c_void,
    channel: *mut ibv_comp_channel,
    vector: c_int,
) -> *mut ibv_cq {
    let Some(r) = real() else {
        no_real();
        return null_mut();
    };
    let _g = NoCkpt::new();
    // SAFETY: shadow context and channel; the real CQ's cq_context leads back to the shadow.
    unsafe {
        let s = Box::into_raw(Box::new(SCq {
            cq: ibv_cq {
                context: c,
                channel,
                cq_context,
                ..Default::default()
            },
            real: null_mut(),
            cqe_asked: cqe,
            armed: AtomicU32::new(0),
            qlen: AtomicUsize::new(0),
            queue: Mutex::new(new_queue(cqe)),
        }));
        let rch = if channel.is_null() {
            null_mut()
        } else {
            (*(channel as *mut SChan)).real
        };
        let rcq = (r.create_cq)(sctx(c).real, cqe, s.cast(), rch, vector);
        if rcq.is_null() {
            drop(Box::from_raw(s));
            return null_mut();
        }
        (*s).real = rcq;
        (*s).cq.handle = (*rcq).handle;
        (*s).cq.cqe = (*rcq).cqe;
        sys::init_mutex_cond(
            ptr::addr_of_mut!((*s).cq.mutex),
            ptr::addr_of_mut!((*s).cq.cond),
        );
        if !channel.is_null() {
            (*channel).refcnt += 1;
        }
        reg_add(Obj::Cq(s));
        s.cast()
    }
}

#[no_mangle]
pub unsafe extern "C" fn ibv_destroy_cq(cq: *mut ibv_cq) -> c_int {
    let Some(r) = real() else { return no_real() };
    let s = cq as *mut SCq;
    // The drain must not poll a CQ being destroyed.
    let _g = NoCkpt::new();
    // SAFETY: a shadow CQ the program gives up.
    unsafe {
        let rc = (r.destroy_cq)((*s).real);
        if rc == 0 {
            if !(*s).cq.channel.is_null() {
                (*(*s).cq.channel).refcnt -= 1;
            }
            release(s, Obj::Cq(s));
        }
        rc
    }
}

#[no_mangle]
pub unsafe extern "C" fn ibv_resize_cq(cq: *mut ibv_cq, cqe: c_int) -> c_int {
    let Some(r) = real() else { return no_real() };
    let _g = NoCkpt::new();
    let s = cq as *mut SCq;
    // SAFETY: shadow CQ.
    unsafe {
        let rc = (r.resize_cq)((*s).real, cqe);
        if rc == 0 {
            (*s).cq.cqe = (*(*s).real).cqe;
            (*s).cqe_asked = cqe;
            let mut q = (*s).queue.lock().unwrap_or_else(|e| e.into_inner());
            if q.len == 0 {
                *q = new_queue(cqe);
            }
        }
        rc
    }
}

#[no_mangle]
pub unsafe extern "C" fn ibv_get_cq_event(
    ch: *mut ibv_comp_channel,
    cq: *mut *mut ibv_cq,
    cq_context: *mut *mut c_void,
) -> c_int {
    let Some(r) = real() else {
        no_real();
        return -1;
    };
    let s = ch as *mut SChan;
    // SAFETY: shadow channel; the real CQ's cq_context is its shadow.
    unsafe {
        let fd = (*s).ch.fd;
        let nonblocking = libc::fcntl(fd, libc::F_GETFL) & libc::O_NONBLOCK != 0;
        // Wait here rather than inside the real library, and read the
        // device only inside a no-checkpoint section once it has an event:
        // a thread suspended by a checkpoint while waiting must, after a
        // restart, get the event that was pending then (saved: the new
        // device will not send it) instead of blocking on the new device.
        loop {
            let _g = NoCkpt::new();
            if (*s)
                .saved
                .fetch_update(AcqRel, Acquire, |n| n.checked_sub(1))
                .is_ok()
                && !(*s).saved_cq.is_null()
            {
                return deliver((*s).saved_cq, cq, cq_context);
            }
            if nonblocking || sys::poll_readable(fd) {
                let mut rcq = null_mut();
                let mut rctx = null_mut();
                let rc = (r.get_cq_event)((*s).real, &mut rcq, &mut rctx);
                if rc != 0 {
                    return rc;
                }
                return deliver(rctx as *mut SCq, cq, cq_context);
            }
            drop(_g);
            sys::wait_readable(fd, 200);
        }
    }
}

/// Hands the program a channel event of shadow CQ `q`.
unsafe fn deliver(q: *mut SCq, cq: *mut *mut ibv_cq, cq_context: *mut *mut c_void) -> c_int {
    // SAFETY: q is a live shadow CQ; the out-parameters are the caller's.
    unsafe {
        (*q).armed.store(0, Relaxed);
        *cq = q.cast();
        *cq_context = (*q).cq.cq_context;
    }
    0
}

#[no_mangle]
pub unsafe extern "C" fn ibv_ack_cq_events(cq: *mut ibv_cq, n: c_uint) {
    let Some(r) = real() else { return };
    let s = cq as *mut SCq;
    // SAFETY: shadow CQ.
    unsafe { (r.ack_cq_events)((*s).real, n) }
}

/// Turns a completion of the device into the program's view, and updates
/// the QP's bookkeeping (outstanding sends, posted receives). False for the
/// completion of a checkpoint fence, which the program must not see.
pub(crate) unsafe fn process_wc(ctx: *mut ibv_context, w: &mut ibv_wc) -> bool {
    let qp = read_maps(|m| m.qp_by_real.get(&(ctx as CtxKey, w.qp_num)).copied()).flatten();
    if let Some(p) = qp {
        let q = p as *mut SQp;
        // SAFETY: QPs in the map are live shadows.
        unsafe {
            w.qp_num = (*q).qp.qp_num;
            let srq = (*q).qp.srq as *mut SSrq;
            let is_recv = if w.status == IBV_WC_SUCCESS {
                w.opcode & IBV_WC_RECV != 0
            } else if srq.is_null() {
                (*q).recvs
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .front()
                    .is_some_and(|r| r.wr_id == w.wr_id)
            } else {
                (*srq)
                    .recvs
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .any(|r| r.wr_id == w.wr_id)
            };
            if is_recv {
                if w.status == IBV_WC_SUCCESS {
                    (*q).recvs_done.fetch_add(1, Relaxed);
                }
                if srq.is_null() {
                    (*q).recvs
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .pop_front();
                } else {
                    let mut l = (*srq).recvs.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(i) = l.iter().position(|r| r.wr_id == w.wr_id) {
                        l.remove(i);
                    }
                }
            } else {
                let _ = (*q)
                    .outstanding
                    .fetch_update(AcqRel, Acquire, |n| n.checked_sub(1));
                if w.wr_id == FENCE_WR_ID && (*q).fence.swap(false, AcqRel) {
                    // Sends of an RC/UC QP complete in order: every send
                    // posted before the fence has run.
                    (*q).unsignaled_tail.store(0, Relaxed);
                    (*q).sends.lock().unwrap_or_else(|e| e.into_inner()).clear();
                    return false;
                }
                if (*q).qp.qp_type == IBV_QPT_RC {
                    // In order: this completion is the oldest signaled
                    // send's, and every send before it ran (an error or
                    // flush completion is one send's).
                    let mut l = (*q).sends.lock().unwrap_or_else(|e| e.into_inner());
                    if w.status == IBV_WC_SUCCESS {
                        while let Some(r) = l.pop_front() {
                            if signaled(&*q, r.wr.send_flags) {
                                break;
                            }
                        }
                    } else {
                        l.pop_front();
                    }
                }
            }
        }
    }
    if RESTARTED.load(Relaxed) && w.status == IBV_WC_SUCCESS && w.opcode & IBV_WC_RECV != 0 {
        let rl = w.slid;
        w.src_qp = qpn_to_virt(rl, w.src_qp);
        w.slid = lid_to_virt(rl);
    }
    true
}

/// The wr_id of the plugin's own checkpoint fence.
pub(crate) const FENCE_WR_ID: u64 = 0xd37c_fe9c_e000_0001;

unsafe extern "C" fn poll_cq(cq: *mut ibv_cq, n: c_int, wc: *mut ibv_wc) -> c_int {
    if n <= 0 {
        return 0;
    }
    let _g = NoCkpt::new();
    let s = cq as *mut SCq;
    // SAFETY: shadow CQ; wc holds n entries.
    unsafe {
        let mut got = 0usize;
        if (*s).qlen.load(Acquire) > 0 {
            let mut q = (*s).queue.lock().unwrap_or_else(|e| e.into_inner());
            let cap = q.buf.len();
            while q.len > 0 && got < n as usize {
                *wc.add(got) = q.buf[q.head];
                q.head = (q.head + 1) % cap;
                q.len -= 1;
                got += 1;
            }
            (*s).qlen.store(q.len, Release);
        }
        if got < n as usize {
            let f = sctx((*s).cq.context).poll_cq;
            let r = f((*s).real, n - got as c_int, wc.add(got));
            if r < 0 {
                return if got > 0 { got as c_int } else { r };
            }
            // The program's completions move up over hidden ones.
            let mut kept = got;
            for i in got..got + r as usize {
                if process_wc((*s).cq.context, &mut *wc.add(i)) {
                    *wc.add(kept) = *wc.add(i);
                    kept += 1;
                }
            }
            got = kept;
        }
        got as c_int
    }
}

unsafe extern "C" fn req_notify_cq(cq: *mut ibv_cq, solicited_only: c_int) -> c_int {
    let _g = NoCkpt::new();
    let s = cq as *mut SCq;
    // SAFETY: shadow CQ.
    unsafe {
        (*s).armed
            .store(if solicited_only != 0 { 2 } else { 1 }, Relaxed);
        (sctx((*s).cq.context).req_notify_cq)((*s).real, solicited_only)
    }
}

// ---------------------------------------------------------------- SRQ

#[no_mangle]
pub unsafe extern "C" fn ibv_create_srq(
    pd: *mut ibv_pd,
    init: *mut ibv_srq_init_attr,
) -> *mut ibv_srq {
    let Some(r) = real() else {
        no_real();
        return null_mut();
    };
    let _g = NoCkpt::new();
    // SAFETY: shadow PD, the caller's attributes.
    unsafe {
        let sp = pd as *mut SPd;
        let mut a = *init;
        let rs = (r.create_srq)((*sp).real, &mut a);
        if rs.is_null() {
            return null_mut();
        }
        (*init).attr = a.attr;
        let s = Box::into_raw(Box::new(SSrq {
            srq: ibv_srq {
                context: (*sp).pd.context,
                srq_context: (*init).srq_context,
                pd,
                handle: (*rs).handle,
                ..Default::default()
            },
            real: rs,
            attr: a.attr,
            recvs: Mutex::new(VecDeque::new()),
        }));
        (*rs).srq_context = s.cast();
        sys::init_mutex_cond(
            ptr::addr_of_mut!((*s).srq.mutex),
            ptr::addr_of_mut!((*s).srq.cond),
        );
        reg_add(Obj::Srq(s));
        s.cast()
    }
}

#[no_mangle]
pub unsafe extern "C" fn ibv_modify_srq(
    srq: *mut ibv_srq,
    attr: *mut ibv_srq_attr,
    mask: c_int,
) -> c_int {
    let Some(r) = real() else { return no_real() };
    let _g = NoCkpt::new();
    let s = srq as *mut SSrq;
    // SAFETY: shadow SRQ.
    unsafe {
        let rc = (r.modify_srq)((*s).real, attr, mask);
        if rc == 0 {
            if mask & IBV_SRQ_LIMIT as c_int != 0 {
                (*s).attr.srq_limit = (*attr).srq_limit;
            }
            if mask & IBV_SRQ_MAX_WR as c_int != 0 {
                (*s).attr.max_wr = (*attr).max_wr;
            }
        }
        rc
    }
}

#[no_mangle]
pub unsafe extern "C" fn ibv_query_srq(srq: *mut ibv_srq, attr: *mut ibv_srq_attr) -> c_int {
    let Some(r) = real() else { return no_real() };
    // SAFETY: shadow SRQ.
    unsafe { (r.query_srq)((*(srq as *mut SSrq)).real, attr) }
}

#[no_mangle]
pub unsafe extern "C" fn ibv_destroy_srq(srq: *mut ibv_srq) -> c_int {
    let Some(r) = real() else { return no_real() };
    let _g = NoCkpt::new();
    let s = srq as *mut SSrq;
    // SAFETY: a shadow SRQ the program gives up.
    unsafe {
        let rc = (r.destroy_srq)((*s).real);
        if rc == 0 {
            release(s, Obj::Srq(s));
        }
        rc
    }
}

/// Posts a chain of receive WRs one by one with real lkeys, logging each.
unsafe fn post_recv_chain(
    ctx: *mut ibv_context,
    log: &Mutex<VecDeque<RecvRec>>,
    wr: *mut ibv_recv_wr,
    bad: *mut *mut ibv_recv_wr,
    mut post: impl FnMut(*mut ibv_recv_wr, *mut *mut ibv_recv_wr) -> c_int,
) -> c_int {
    let translate = RESTARTED.load(Relaxed);
    let mut w = wr;
    // SAFETY: the program's WR chain; copies live on our stack.
    unsafe {
        while !w.is_null() {
            let n = (*w).num_sge.max(0) as usize;
            if n > MAX_SGE {
                *bad = w;
                return libc::EINVAL;
            }
            let sg = if n == 0 {
                &[][..]
            } else {
                std::slice::from_raw_parts((*w).sg_list, n)
            };
            let rec = RecvRec {
                wr_id: (*w).wr_id,
                sges: Sges::from_slice(sg),
            };
            let mut c = *w;
            c.next = null_mut();
            let mut sges = [ibv_sge::default(); MAX_SGE];
            if translate {
                for (d, s) in sges.iter_mut().zip(sg) {
                    *d = *s;
                    d.lkey = lkey_to_real(ctx, s.lkey);
                }
                c.sg_list = sges.as_mut_ptr();
            }
            log.lock().unwrap_or_else(|e| e.into_inner()).push_back(rec);
            let mut b = null_mut();
            let rc = post(&mut c, &mut b);
            if rc != 0 {
                log.lock().unwrap_or_else(|e| e.into_inner()).pop_back();
                *bad = w;
                return rc;
            }
            w = (*w).next;
        }
    }
    0
}

unsafe extern "C" fn post_srq_recv(
    srq: *mut ibv_srq,
    wr: *mut ibv_recv_wr,
    bad: *mut *mut ibv_recv_wr,
) -> c_int {
    let _g = NoCkpt::new();
    let s = srq as *mut SSrq;
    // SAFETY: shadow SRQ.
    unsafe {
        let f = sctx((*s).srq.context).post_srq_recv;
        let real = (*s).real;
        post_recv_chain((*s).srq.context, &(*s).recvs, wr, bad, |w, b| f(real, w, b))
    }
}

// ---------------------------------------------------------------- QP

#[no_mangle]
pub unsafe extern "C" fn ibv_create_qp(
    pd: *mut ibv_pd,
    init: *mut ibv_qp_init_attr,
) -> *mut ibv_qp {
    let Some(r) = real() else {
        no_real();
        return null_mut();
    };
    let _g = NoCkpt::new();
    // SAFETY: shadow PD and the caller's attributes with shadow CQs/SRQ.
    unsafe {
        let sp = pd as *mut SPd;
        let i = &mut *init;
        if i.qp_type != IBV_QPT_RC && i.qp_type != IBV_QPT_UC && i.qp_type != IBV_QPT_UD {
            unsupported("QP types other than RC, UC and UD (XRC, raw packet)");
            set_errno(libc::EOPNOTSUPP);
            return null_mut();
        }
        let mut a = *i;
        a.qp_context = null_mut();
        a.send_cq = (*(i.send_cq as *mut SCq)).real;
        a.recv_cq = (*(i.recv_cq as *mut SCq)).real;
        a.srq = if i.srq.is_null() {
            null_mut()
        } else {
            (*(i.srq as *mut SSrq)).real
        };
        let rq = (r.create_qp)((*sp).real, &mut a);
        if rq.is_null() {
            return null_mut();
        }
        i.cap = a.cap;
        let s = Box::into_raw(Box::new(SQp {
            qp: ibv_qp {
                context: (*sp).pd.context,
                qp_context: i.qp_context,
                pd,
                send_cq: i.send_cq,
                recv_cq: i.recv_cq,
                srq: i.srq,
                handle: (*rq).handle,
                qp_num: (*rq).qp_num,
                state: IBV_QPS_RESET,
                qp_type: i.qp_type,
                ..Default::default()
            },
            real: rq,
            init: *i,
            log: Mutex::new([(ibv_qp_attr::default(), 0); 3]),
            port: 1,
            outstanding: AtomicU32::new(0),
            unsignaled_tail: AtomicU32::new(0),
            fence: AtomicBool::new(false),
            rnr_blocked: AtomicBool::new(false),
            recvs: Mutex::new(VecDeque::new()),
            sends: Mutex::new(VecDeque::new()),
            consuming_posted: AtomicU64::new(0),
            recvs_done: AtomicU64::new(0),
            ud_dests: Mutex::new(Vec::new()),
            peer_rkeys: RwLock::new(Vec::new()),
        }));
        (*rq).qp_context = s.cast();
        sys::init_mutex_cond(
            ptr::addr_of_mut!((*s).qp.mutex),
            ptr::addr_of_mut!((*s).qp.cond),
        );
        let n = ((*s).qp.context as CtxKey, (*rq).qp_num);
        with_maps(|m| {
            m.qp_by_real.insert(n, s as usize);
        });
        reg_add(Obj::Qp(s));
        s.cast()
    }
}

/// The program's attributes with the current device's ids.
pub(crate) unsafe fn attr_to_real(a: &mut ibv_qp_attr, mask: c_int) {
    if mask & IBV_QP_AV as c_int != 0 {
        let vl = a.ah_attr.dlid;
        if mask & IBV_QP_DEST_QPN as c_int != 0 {
            a.dest_qp_num = qpn_to_real(vl, a.dest_qp_num);
        }
        a.ah_attr.dlid = lid_to_real(vl);
        if a.ah_attr.is_global != 0 {
            // SAFETY: plain bytes of the union.
            unsafe { a.ah_attr.grh.dgid.raw = gid_to_real(a.ah_attr.grh.dgid.raw) };
        }
    }
    if mask & IBV_QP_ALT_PATH as c_int != 0 {
        a.alt_ah_attr.dlid = lid_to_real(a.alt_ah_attr.dlid);
    }
}

#[no_mangle]
pub unsafe extern "C" fn ibv_modify_qp(
    qp: *mut ibv_qp,
    attr: *mut ibv_qp_attr,
    mask: c_int,
) -> c_int {
    let Some(r) = real() else { return no_real() };
    let _g = NoCkpt::new();
    let s = qp as *mut SQp;
    // SAFETY: shadow QP, the caller's attributes.
    unsafe {
        let mut a = *attr;
        attr_to_real(&mut a, mask);
        let rc = (r.modify_qp)((*s).real, &mut a, mask);
        if rc != 0 {
            return rc;
        }
        if mask & IBV_QP_PORT as c_int != 0 {
            (*s).port = (*attr).port_num;
        }
        if mask & IBV_QP_STATE as c_int != 0 {
            let st = (*attr).qp_state;
            (*s).qp.state = st;
            if st == IBV_QPS_RTR && mask & IBV_QP_AV as c_int != 0 && RESTARTED.load(Relaxed) {
                // Connected after a restart: the peer's MRs may be older.
                set_peer_rkeys(&*s, (*attr).ah_attr.dlid);
                crate::debug(|| {
                    format!(
                        "QP {:#x} RTR after the restart: dlid {:#x} -> {:#x}, dest QP {:#x} -> {:#x}",
                        (*s).qp.qp_num,
                        (*attr).ah_attr.dlid,
                        a.ah_attr.dlid,
                        (*attr).dest_qp_num,
                        a.dest_qp_num
                    )
                });
            }
            let mut log = (*s).log.lock().unwrap_or_else(|e| e.into_inner());
            match st {
                IBV_QPS_RESET => *log = [(ibv_qp_attr::default(), 0); 3],
                IBV_QPS_INIT | IBV_QPS_RTR | IBV_QPS_RTS => log[st as usize - 1] = (*attr, mask),
                _ => {}
            }
            if st == IBV_QPS_RTR || st == IBV_QPS_RTS {
                crate::debug(|| {
                    format!(
                        "QP {:#x} is in {}",
                        (*s).qp.qp_num,
                        if st == IBV_QPS_RTR { "(RTR)" } else { "(RTS)" }
                    )
                });
            }
        }
        0
    }
}

#[no_mangle]
pub unsafe extern "C" fn ibv_query_qp(
    qp: *mut ibv_qp,
    attr: *mut ibv_qp_attr,
    mask: c_int,
    init: *mut ibv_qp_init_attr,
) -> c_int {
    let Some(r) = real() else { return no_real() };
    let _g = NoCkpt::new();
    let s = qp as *mut SQp;
    // SAFETY: shadow QP, the caller's buffers.
    unsafe {
        let rc = (r.query_qp)((*s).real, attr, mask, init);
        if rc != 0 {
            return rc;
        }
        let log = (*s).log.lock().unwrap_or_else(|e| e.into_inner());
        let (rtr, rm) = log[1];
        if rm & IBV_QP_DEST_QPN as c_int != 0 {
            (*attr).dest_qp_num = rtr.dest_qp_num;
        }
        if rm & IBV_QP_AV as c_int != 0 {
            (*attr).ah_attr = rtr.ah_attr;
        }
        (*attr).qp_state = (*(*s).real).state;
        let cap = (*init).cap;
        *init = (*s).init;
        (*init).cap = cap;
        0
    }
}

#[no_mangle]
pub unsafe extern "C" fn ibv_destroy_qp(qp: *mut ibv_qp) -> c_int {
    let Some(r) = real() else { return no_real() };
    let _g = NoCkpt::new();
    let s = qp as *mut SQp;
    // SAFETY: a shadow QP the program gives up.
    unsafe {
        let n = ((*s).qp.context as CtxKey, (*(*s).real).qp_num);
        let rc = (r.destroy_qp)((*s).real);
        if rc == 0 {
            with_maps(|m| {
                m.qp_by_real.remove(&n);
            });
            release(s, Obj::Qp(s));
        }
        rc
    }
}

pub(crate) fn signaled(s: &SQp, flags: c_uint) -> bool {
    s.init.sq_sig_all != 0 || flags & IBV_SEND_SIGNALED != 0
}

unsafe extern "C" fn post_send(
    qp: *mut ibv_qp,
    wr: *mut ibv_send_wr,
    bad: *mut *mut ibv_send_wr,
) -> c_int {
    let _g = NoCkpt::new();
    // SAFETY: forwarded contract.
    unsafe { post_send_inner(qp, wr, bad) }
}

/// Logs a send of an RC QP (see `SendRec`).
///
/// # Safety
/// `w` is the program's WR, its SGEs readable.
unsafe fn log_send(q: &SQp, w: &ibv_send_wr) {
    if q.qp.qp_type != IBV_QPT_RC {
        return;
    }
    let n = w.num_sge.max(0) as usize;
    let sg = if n == 0 || w.sg_list.is_null() {
        &[][..]
    } else {
        // SAFETY: the program's SGE array (caller's contract).
        unsafe { std::slice::from_raw_parts(w.sg_list, n) }
    };
    let mut wr = *w;
    wr.next = null_mut();
    wr.sg_list = null_mut();
    let seq = if consumes_recv(w.opcode) {
        q.consuming_posted.fetch_add(1, Relaxed)
    } else {
        u64::MAX
    };
    let r = if w.send_flags & IBV_SEND_INLINE != 0 {
        let mut d = smallvec::SmallVec::new();
        for e in sg {
            // SAFETY: the program's inline data, readable during the post.
            d.extend_from_slice(unsafe {
                std::slice::from_raw_parts(e.addr as usize as *const u8, e.length as usize)
            });
        }
        SendRec {
            wr,
            sges: Sges::new(),
            inline: d,
            seq,
        }
    } else {
        SendRec {
            wr,
            sges: Sges::from_slice(sg),
            inline: smallvec::SmallVec::new(),
            seq,
        }
    };
    q.sends
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push_back(r);
}

/// Takes back the last logged send (its post failed).
fn unlog_send(q: &SQp) {
    if q.qp.qp_type != IBV_QPT_RC {
        return;
    }
    let r = q.sends.lock().unwrap_or_else(|e| e.into_inner()).pop_back();
    if r.is_some_and(|r| r.seq != u64::MAX) {
        q.consuming_posted.fetch_sub(1, Relaxed);
    }
}

/// `post_send` without the no-checkpoint section: also what the restart
/// uses to post the logged sends again (on the checkpoint thread).
///
/// # Safety
/// `qp` is a shadow QP; `wr` the program's WR chain.
pub(crate) unsafe fn post_send_inner(
    qp: *mut ibv_qp,
    wr: *mut ibv_send_wr,
    bad: *mut *mut ibv_send_wr,
) -> c_int {
    let s = qp as *mut SQp;
    // SAFETY: shadow QP; the program's WR chain (copies on our stack).
    unsafe {
        let q = &*s;
        let f = sctx(q.qp.context).post_send;
        let ud = q.qp.qp_type == IBV_QPT_UD;
        if !ud && !RESTARTED.load(Relaxed) {
            // First run, RC/UC: the program's ids are the device's.
            let mut n = 0;
            let mut w = wr;
            while !w.is_null() {
                note_tail(q, signaled(q, (*w).send_flags));
                n += signaled(q, (*w).send_flags) as u32;
                w = (*w).next;
            }
            q.outstanding.fetch_add(n, AcqRel);
            // Logged before the post: its completion may be polled by
            // another thread before the post returns.
            let mut w = wr;
            while !w.is_null() {
                log_send(q, &*w);
                w = (*w).next;
            }
            let rc = f(q.real, wr, bad);
            if rc != 0 {
                let mut m = 0;
                let mut w = *bad;
                while !w.is_null() {
                    m += signaled(q, (*w).send_flags) as u32;
                    unlog_send(q);
                    w = (*w).next;
                }
                q.outstanding.fetch_sub(m, AcqRel);
            }
            return rc;
        }
        let mut w = wr;
        while !w.is_null() {
            let mut c = *w;
            c.next = null_mut();
            let n = c.num_sge.max(0) as usize;
            let mut sges = [ibv_sge::default(); MAX_SGE];
            if n > MAX_SGE {
                *bad = w;
                return libc::EINVAL;
            }
            if n > 0 && c.send_flags & IBV_SEND_INLINE == 0 {
                for (i, d) in sges.iter_mut().take(n).enumerate() {
                    *d = *c.sg_list.add(i);
                    d.lkey = lkey_to_real(q.qp.context, d.lkey);
                }
                c.sg_list = sges.as_mut_ptr();
            }
            match c.opcode {
                IBV_WR_RDMA_WRITE | IBV_WR_RDMA_WRITE_WITH_IMM | IBV_WR_RDMA_READ => {
                    c.wr.rdma.rkey = peer_rkey(q, c.wr.rdma.rkey)
                }
                IBV_WR_ATOMIC_CMP_AND_SWP | IBV_WR_ATOMIC_FETCH_AND_ADD => {
                    c.wr.atomic.rkey = peer_rkey(q, c.wr.atomic.rkey)
                }
                _ => {}
            }
            if ud {
                let ah = c.wr.ud.ah as *mut SAh;
                if ah.is_null() {
                    *bad = w;
                    return libc::EINVAL;
                }
                let vl = (*ah).attr.dlid;
                let vq = c.wr.ud.remote_qpn;
                {
                    let mut d = q.ud_dests.lock().unwrap_or_else(|e| e.into_inner());
                    if !d.contains(&(vl, vq)) {
                        d.push((vl, vq));
                    }
                }
                c.wr.ud.ah = (*ah).real;
                c.wr.ud.remote_qpn = qpn_to_real(vl, vq);
            }
            let sig = signaled(q, c.send_flags) as u32;
            note_tail(q, sig != 0);
            q.outstanding.fetch_add(sig, AcqRel);
            let mut b = null_mut();
            log_send(q, &*w);
            let rc = f(q.real, &mut c, &mut b);
            if rc != 0 {
                q.outstanding.fetch_sub(sig, AcqRel);
                unlog_send(q);
                *bad = w;
                return rc;
            }
            w = (*w).next;
        }
        0
    }
}

#[inline]
fn note_tail(q: &SQp, signaled: bool) {
    if signaled {
        if q.unsignaled_tail.load(Relaxed) != 0 {
            q.unsignaled_tail.store(0, Relaxed);
        }
    } else {
        q.unsignaled_tail.fetch_add(1, Relaxed);
    }
}

/// After a restart, the QP whose peer is on the device of virtual LID
/// `vlid` translates its RDMA/atomic rkeys with that device's table.
pub(crate) fn set_peer_rkeys(q: &SQp, vlid: u16) {
    let t = read_maps(|m| m.rkeys.get(&vlid).cloned()).flatten();
    *q.peer_rkeys.write().unwrap_or_else(|e| e.into_inner()) = t.unwrap_or_default();
}

fn peer_rkey(q: &SQp, v: u32) -> u32 {
    let k = q.peer_rkeys.read().unwrap_or_else(|e| e.into_inner());
    match k.binary_search_by_key(&v, |x| x.0) {
        Ok(i) => k[i].1,
        Err(_) => v,
    }
}

unsafe extern "C" fn post_recv(
    qp: *mut ibv_qp,
    wr: *mut ibv_recv_wr,
    bad: *mut *mut ibv_recv_wr,
) -> c_int {
    let _g = NoCkpt::new();
    let s = qp as *mut SQp;
    // SAFETY: shadow QP.
    unsafe {
        let f = sctx((*s).qp.context).post_recv;
        let real = (*s).real;
        post_recv_chain((*s).qp.context, &(*s).recvs, wr, bad, |w, b| f(real, w, b))
    }
}

// ---------------------------------------------------------------- AH

pub(crate) unsafe fn ah_to_real(a: &mut ibv_ah_attr) {
    a.dlid = lid_to_real(a.dlid);
    if a.is_global != 0 {
        a.grh.dgid.raw = gid_to_real(a.grh.dgid.raw);
    }
}

#[no_mangle]
pub unsafe extern "C" fn ibv_create_ah(pd: *mut ibv_pd, attr: *mut ibv_ah_attr) -> *mut ibv_ah {
    let Some(r) = real() else {
        no_real();
        return null_mut();
    };
    let _g = NoCkpt::new();
    // SAFETY: shadow PD, the caller's attributes.
    unsafe {
        let sp = pd as *mut SPd;
        let mut a = *attr;
        ah_to_real(&mut a);
        let ra = (r.create_ah)((*sp).real, &mut a);
        if ra.is_null() {
            return null_mut();
        }
        let s = Box::into_raw(Box::new(SAh {
            ah: ibv_ah {
                context: (*sp).pd.context,
                pd,
                handle: (*ra).handle,
            },
            real: ra,
            attr: *attr,
        }));
        reg_add(Obj::Ah(s));
        s.cast()
    }
}

#[no_mangle]
pub unsafe extern "C" fn ibv_destroy_ah(ah: *mut ibv_ah) -> c_int {
    let Some(r) = real() else { return no_real() };
    let _g = NoCkpt::new();
    let s = ah as *mut SAh;
    // SAFETY: a shadow AH the program gives up.
    unsafe {
        let rc = (r.destroy_ah)((*s).real);
        if rc == 0 {
            release(s, Obj::Ah(s));
        }
        rc
    }
}

#[no_mangle]
pub unsafe extern "C" fn ibv_init_ah_from_wc(
    c: *mut ibv_context,
    port: u8,
    wc: *mut ibv_wc,
    grh: *mut ibv_grh,
    ah: *mut ibv_ah_attr,
) -> c_int {
    let Some(r) = real() else { return no_real() };
    let _g = NoCkpt::new();
    // SAFETY: shadow context; the program's wc (virtual ids) copied.
    unsafe {
        let mut w = *wc;
        w.slid = lid_to_real(w.slid);
        let rc = (r.init_ah_from_wc)(sctx(c).real, port, &mut w, grh, ah);
        if rc == 0 {
            (*ah).dlid = lid_to_virt((*ah).dlid);
        }
        rc
    }
}

#[no_mangle]
pub unsafe extern "C" fn ibv_create_ah_from_wc(
    pd: *mut ibv_pd,
    wc: *mut ibv_wc,
    grh: *mut ibv_grh,
    port: u8,
) -> *mut ibv_ah {
    let mut a = ibv_ah_attr::default();
    // SAFETY: shadow PD and the program's wc.
    unsafe {
        if ibv_init_ah_from_wc((*pd).context, port, wc, grh, &mut a) != 0 {
            return null_mut();
        }
        ibv_create_ah(pd, &mut a)
    }
}
