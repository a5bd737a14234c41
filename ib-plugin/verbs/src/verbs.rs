//! The verbs: device list, context, PD, MR, channels, CQ, SRQ, QP, AH and
//! the data path. Every object handed to the program is one of the structs
//! below, which start with the verbs struct the program sees.

use crate::conn::{self, Conn};
use crate::ffi;
use crate::set_errno;
use softib::proto::{self, AhAttr, QpAttr, QpCap, Req, Resp, SendWr, Sge};
use softib::ring::{Ring, Wc};
use std::ffi::{c_char, c_int, c_uint, c_void};
use std::mem::{offset_of, size_of};
use std::os::fd::{AsRawFd, OwnedFd};
use std::ptr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

// The completion ring's entries are copied out as `struct ibv_wc`.
const _: () = {
    assert!(size_of::<Wc>() == size_of::<ffi::ibv_wc>());
    assert!(offset_of!(Wc, status) == offset_of!(ffi::ibv_wc, status));
    assert!(offset_of!(Wc, opcode) == offset_of!(ffi::ibv_wc, opcode));
    assert!(offset_of!(Wc, byte_len) == offset_of!(ffi::ibv_wc, byte_len));
    assert!(offset_of!(Wc, imm_data) == offset_of!(ffi::ibv_wc, __bindgen_anon_1));
    assert!(offset_of!(Wc, qp_num) == offset_of!(ffi::ibv_wc, qp_num));
    assert!(offset_of!(Wc, src_qp) == offset_of!(ffi::ibv_wc, src_qp));
    assert!(offset_of!(Wc, wc_flags) == offset_of!(ffi::ibv_wc, wc_flags));
    assert!(offset_of!(Wc, pkey_index) == offset_of!(ffi::ibv_wc, pkey_index));
    assert!(offset_of!(Wc, slid) == offset_of!(ffi::ibv_wc, slid));
    assert!(offset_of!(Wc, sl) == offset_of!(ffi::ibv_wc, sl));
    assert!(offset_of!(Wc, dlid_path_bits) == offset_of!(ffi::ibv_wc, dlid_path_bits));
    // The protocol's numbers are the header's.
    assert!(proto::wc_status::REM_ACCESS_ERR == ffi::IBV_WC_REM_ACCESS_ERR);
    assert!(proto::wc_status::RNR_RETRY_EXC_ERR == ffi::IBV_WC_RNR_RETRY_EXC_ERR);
    assert!(proto::wc_status::WR_FLUSH_ERR == ffi::IBV_WC_WR_FLUSH_ERR);
    assert!(proto::wc_opcode::RECV_RDMA_WITH_IMM == ffi::IBV_WC_RECV_RDMA_WITH_IMM);
    assert!(proto::wc_opcode::FETCH_ADD == ffi::IBV_WC_FETCH_ADD);
    assert!(proto::wr_opcode::ATOMIC_FETCH_AND_ADD == ffi::IBV_WR_ATOMIC_FETCH_AND_ADD);
    assert!(proto::wr_opcode::SEND_WITH_IMM == ffi::IBV_WR_SEND_WITH_IMM);
    assert!(proto::send_flags::INLINE == ffi::IBV_SEND_INLINE);
    assert!(proto::send_flags::SIGNALED == ffi::IBV_SEND_SIGNALED);
    assert!(proto::access::REMOTE_ATOMIC == ffi::IBV_ACCESS_REMOTE_ATOMIC);
    assert!(proto::qp_type::UD == ffi::IBV_QPT_UD);
    assert!(proto::qp_state::ERR == ffi::IBV_QPS_ERR);
    assert!(proto::qp_mask::DEST_QPN == ffi::IBV_QP_DEST_QPN);
    assert!(proto::qp_mask::MAX_DEST_RD_ATOMIC == ffi::IBV_QP_MAX_DEST_RD_ATOMIC);
    assert!(proto::event::SRQ_LIMIT_REACHED == ffi::IBV_EVENT_SRQ_LIMIT_REACHED);
    assert!(proto::event::CQ_ERR == ffi::IBV_EVENT_CQ_ERR);
    assert!(proto::wc_flags::WITH_IMM == ffi::IBV_WC_WITH_IMM);
};

// ---------------------------------------------------------------- live objects

/// Addresses of the CQs, QPs and SRQs alive in this process. Event records
/// carry these addresses (the cookies given at creation); an event queued
/// for an object destroyed since is dropped when read instead of handing
/// the program a dangling pointer, as the kernel drops such events.
static LIVE: Mutex<Option<std::collections::HashSet<usize>>> = Mutex::new(None);

fn live_add(p: *const c_void) {
    LIVE.lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(Default::default)
        .insert(p as usize);
}

fn live_remove(p: *const c_void) {
    if let Some(set) = LIVE.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
        set.remove(&(p as usize));
    }
}

fn is_live(p: u64) -> bool {
    LIVE.lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .is_some_and(|s| s.contains(&(p as usize)))
}

// ---------------------------------------------------------------- devices

/// A device as handed out by `ibv_get_device_list`.
#[repr(C)]
pub(crate) struct Dev {
    pub(crate) dev: ffi::ibv_device,
    pub(crate) index: u32,
    pub(crate) info: proto::DevInfo,
}

// SAFETY: devices are immutable after creation and live for the process.
unsafe impl Send for Dev {}
// SAFETY: as above.
unsafe impl Sync for Dev {}

static DEVICES: OnceLock<Vec<&'static Dev>> = OnceLock::new();

fn copy_cstr(dst: &mut [c_char], s: &str) {
    let n = dst.len().saturating_sub(1);
    for (d, b) in dst.iter_mut().zip(s.bytes().take(n)) {
        *d = b as c_char;
    }
}

pub(crate) fn sysfs_path() -> String {
    std::env::var("SYSFS_PATH")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "/sys".into())
}

fn devices() -> Option<&'static [&'static Dev]> {
    if let Some(d) = DEVICES.get() {
        return Some(d);
    }
    let infos = match conn::query_devices() {
        Ok(i) => i,
        Err(e) => {
            crate::warn(&format!(
                "no device service at {} ({e}); run the program under `softib exec`",
                softib::paths::socket().display()
            ));
            return None;
        }
    };
    let sysfs = sysfs_path();
    let list: Vec<&'static Dev> = infos
        .into_iter()
        .enumerate()
        .map(|(i, info)| {
            let mut dev = ffi::ibv_device {
                node_type: ffi::IBV_NODE_CA,
                transport_type: ffi::IBV_TRANSPORT_IB,
                ..Default::default()
            };
            copy_cstr(&mut dev.name, &info.name);
            copy_cstr(&mut dev.dev_name, &format!("uverbs{i}"));
            copy_cstr(
                &mut dev.dev_path,
                &format!("{sysfs}/class/infiniband_verbs/uverbs{i}"),
            );
            copy_cstr(
                &mut dev.ibdev_path,
                &format!("{sysfs}/class/infiniband/{}", info.name),
            );
            &*Box::leak(Box::new(Dev {
                dev,
                index: i as u32,
                info,
            }))
        })
        .collect();
    Some(DEVICES.get_or_init(|| list))
}

pub(crate) unsafe fn dev_of(d: *mut ffi::ibv_device) -> Option<&'static Dev> {
    let list = devices()?;
    list.iter().copied().find(|x| ptr::eq(&x.dev, d))
}

pub unsafe extern "C" fn get_device_list(num: *mut c_int) -> *mut *mut ffi::ibv_device {
    let list = devices().unwrap_or(&[]);
    // SAFETY: calloc'd array of n+1 pointers, freed by ibv_free_device_list.
    let arr = unsafe { libc::calloc(list.len() + 1, size_of::<*mut ffi::ibv_device>()) }
        as *mut *mut ffi::ibv_device;
    if arr.is_null() {
        set_errno(libc::ENOMEM);
        return ptr::null_mut();
    }
    for (i, d) in list.iter().enumerate() {
        // SAFETY: i < len + 1 slots.
        unsafe { *arr.add(i) = &d.dev as *const ffi::ibv_device as *mut ffi::ibv_device };
    }
    if !num.is_null() {
        // SAFETY: the caller's out-parameter.
        unsafe { *num = list.len() as c_int };
    }
    arr
}

pub unsafe extern "C" fn free_device_list(list: *mut *mut ffi::ibv_device) {
    // SAFETY: the array came from calloc in get_device_list.
    unsafe { libc::free(list.cast()) };
}

pub unsafe extern "C" fn get_device_name(d: *mut ffi::ibv_device) -> *const c_char {
    if d.is_null() {
        return ptr::null();
    }
    // SAFETY: d is one of our devices (or at least an ibv_device).
    unsafe { (*d).name.as_ptr() }
}

pub unsafe extern "C" fn get_device_guid(d: *mut ffi::ibv_device) -> u64 {
    // SAFETY: d comes from our device list.
    match unsafe { dev_of(d) } {
        Some(dev) => dev.info.guid.to_be(),
        None => 0,
    }
}

pub unsafe extern "C" fn get_device_index(d: *mut ffi::ibv_device) -> c_int {
    // SAFETY: d comes from our device list.
    match unsafe { dev_of(d) } {
        Some(dev) => dev.index as c_int,
        None => -1,
    }
}

// ---------------------------------------------------------------- context

#[repr(C)]
pub(crate) struct Ctx {
    vctx: ffi::verbs_context,
    pub(crate) conn: Conn,
    pub(crate) dev: &'static Dev,
    /// The device as the service describes it when this context was
    /// opened: a service started again since the device list was read
    /// has new LIDs and GUIDs, and a context reports its own device's.
    pub(crate) info: proto::DevInfo,
    async_fd: OwnedFd,
    posted: Posted,
}

/// Work requests posted on a context, counted for `SOFTIB_STATS` (which
/// lets a test see which operations a program really used: a transport
/// that never posts an RDMA READ or WRITE shows it here).
#[derive(Default)]
struct Posted {
    /// By `ibv_wr_opcode` (RDMA_WRITE .. ATOMIC_FETCH_AND_ADD).
    send: [AtomicU64; 7],
    recv: AtomicU64,
    srq_recv: AtomicU64,
}

const OPCODE_NAMES: [&str; 7] = [
    "rdma_write",
    "rdma_write_imm",
    "send",
    "send_imm",
    "rdma_read",
    "cmp_swap",
    "fetch_add",
];

impl Posted {
    fn report(&self, dev: &str) -> String {
        let mut s = format!("pid {} {dev} posted:", std::process::id());
        for (name, n) in OPCODE_NAMES.iter().zip(&self.send) {
            s.push_str(&format!(" {name} {}", n.load(Ordering::Relaxed)));
        }
        s.push_str(&format!(
            " recv {} srq_recv {}",
            self.recv.load(Ordering::Relaxed),
            self.srq_recv.load(Ordering::Relaxed)
        ));
        s
    }
}

const CTX_OFF: usize = offset_of!(Ctx, vctx) + offset_of!(ffi::verbs_context, context);

pub(crate) unsafe fn ctx<'a>(c: *mut ffi::ibv_context) -> &'a Ctx {
    // SAFETY: every ibv_context we hand out is the `context` field of a Ctx.
    unsafe { &*(c.byte_sub(CTX_OFF) as *const Ctx) }
}

pub unsafe extern "C" fn open_device(d: *mut ffi::ibv_device) -> *mut ffi::ibv_context {
    // SAFETY: d comes from our device list.
    let Some(dev) = (unsafe { dev_of(d) }) else {
        set_errno(libc::ENODEV);
        return ptr::null_mut();
    };
    let conn = match Conn::open() {
        Ok(c) => c,
        Err(e) => {
            crate::warn(&format!("cannot reach the device service: {e}"));
            set_errno(libc::ENODEV);
            return ptr::null_mut();
        }
    };
    let (async_fd, info) = match conn.call(&Req::Open { dev: dev.index }) {
        Ok((Resp::Opened { info }, Some(fd))) => (fd, info),
        Ok((Resp::Err(e), _)) => {
            set_errno(e);
            return ptr::null_mut();
        }
        _ => {
            set_errno(libc::EPROTO);
            return ptr::null_mut();
        }
    };
    let mut vctx = ffi::verbs_context {
        sz: size_of::<ffi::verbs_context>(),
        ..Default::default()
    };
    vctx.query_port = Some(query_port_ex);
    vctx.query_device_ex = Some(query_device_ex);
    vctx.create_qp_ex = Some(create_qp_ex);
    let c = &mut vctx.context;
    c.device = d;
    c.cmd_fd = conn.fd.as_raw_fd();
    c.async_fd = async_fd.as_raw_fd();
    c.num_comp_vectors = 1;
    c.abi_compat = usize::MAX as *mut c_void;
    c.ops.poll_cq = Some(poll_cq);
    c.ops.req_notify_cq = Some(req_notify_cq);
    c.ops.post_send = Some(post_send);
    c.ops.post_recv = Some(post_recv);
    c.ops.post_srq_recv = Some(post_srq_recv);
    let b = Box::into_raw(Box::new(Ctx {
        vctx,
        conn,
        dev,
        info,
        async_fd,
        posted: Posted::default(),
    }));
    // SAFETY: b is a live, exclusively owned allocation.
    unsafe {
        libc::pthread_mutex_init(
            ptr::addr_of_mut!((*b).vctx.context.mutex).cast(),
            ptr::null(),
        );
        ptr::addr_of_mut!((*b).vctx.context)
    }
}

pub unsafe extern "C" fn close_device(c: *mut ffi::ibv_context) -> c_int {
    if c.is_null() {
        return libc::EINVAL;
    }
    // SAFETY: c is a context from open_device; the program gives it up here.
    let cx = unsafe { Box::from_raw(c.byte_sub(CTX_OFF) as *mut Ctx) };
    if std::env::var_os("SOFTIB_STATS").is_some_and(|v| !v.is_empty() && v != "0") {
        crate::warn(&cx.posted.report(&cx.dev.info.name));
    }
    drop(cx);
    0
}

fn device_attr(info: &proto::DevInfo) -> ffi::ibv_device_attr {
    let mut a = ffi::ibv_device_attr::default();
    copy_cstr(&mut a.fw_ver, "softib 1.0");
    a.node_guid = info.guid.to_be();
    a.sys_image_guid = info.guid.to_be();
    a.max_mr_size = 1 << 40;
    a.page_size_cap = 0xffff_f000;
    a.vendor_id = 0x5346; // not a real vendor: programs take their generic paths
    a.vendor_part_id = 1;
    a.hw_ver = 1;
    a.max_qp = 65536;
    a.max_qp_wr = 16384;
    a.device_cap_flags = ffi::IBV_DEVICE_RC_RNR_NAK_GEN
        | ffi::IBV_DEVICE_PORT_ACTIVE_EVENT
        | ffi::IBV_DEVICE_SYS_IMAGE_GUID;
    a.max_sge = 32;
    a.max_sge_rd = 32;
    a.max_cq = 65536;
    a.max_cqe = 4 << 20;
    a.max_mr = 1 << 20;
    a.max_pd = 65536;
    a.max_qp_rd_atom = 16;
    a.max_res_rd_atom = 1 << 20;
    a.max_qp_init_rd_atom = 16;
    a.atomic_cap = ffi::IBV_ATOMIC_HCA;
    a.max_ah = 1 << 20;
    a.max_srq = 65536;
    a.max_srq_wr = 16384;
    a.max_srq_sge = 32;
    a.max_pkeys = 1;
    a.local_ca_ack_delay = 15;
    a.phys_port_cnt = 1;
    a
}

pub unsafe extern "C" fn query_device(
    c: *mut ffi::ibv_context,
    attr: *mut ffi::ibv_device_attr,
) -> c_int {
    if c.is_null() || attr.is_null() {
        return libc::EINVAL;
    }
    // SAFETY: c is our context; attr is the caller's buffer.
    unsafe { *attr = device_attr(&ctx(c).info) };
    0
}

unsafe extern "C" fn query_device_ex(
    c: *mut ffi::ibv_context,
    _input: *const ffi::ibv_query_device_ex_input,
    attr: *mut ffi::ibv_device_attr_ex,
    size: usize,
) -> c_int {
    if c.is_null() || attr.is_null() || size < size_of::<ffi::ibv_device_attr>() {
        return libc::EINVAL;
    }
    let ex = ffi::ibv_device_attr_ex {
        // SAFETY: c is our context.
        orig_attr: device_attr(&unsafe { ctx(c) }.info),
        ..Default::default()
    };
    let n = size.min(size_of::<ffi::ibv_device_attr_ex>());
    // SAFETY: the caller's buffer holds `size` bytes; we copy at most that.
    unsafe {
        ptr::write_bytes(attr.cast::<u8>(), 0, size);
        ptr::copy_nonoverlapping(
            (&ex as *const ffi::ibv_device_attr_ex).cast::<u8>(),
            attr.cast::<u8>(),
            n,
        );
    }
    0
}

fn port_attr(info: &proto::DevInfo) -> ffi::ibv_port_attr {
    ffi::ibv_port_attr {
        state: ffi::IBV_PORT_ACTIVE,
        max_mtu: ffi::IBV_MTU_4096,
        active_mtu: ffi::IBV_MTU_4096,
        gid_tbl_len: 1,
        port_cap_flags: 0,
        max_msg_sz: proto::MAX_MSG_SIZE as u32,
        pkey_tbl_len: 1,
        lid: info.lid,
        sm_lid: info.lid,
        lmc: 0,
        max_vl_num: 1,
        subnet_timeout: 18,
        active_width: 2,  // 4X
        active_speed: 32, // EDR
        phys_state: 5,    // LinkUp
        link_layer: ffi::IBV_LINK_LAYER_INFINIBAND as u8,
        ..Default::default()
    }
}

unsafe extern "C" fn query_port_ex(
    c: *mut ffi::ibv_context,
    port: u8,
    attr: *mut ffi::ibv_port_attr,
    size: usize,
) -> c_int {
    if c.is_null() || attr.is_null() {
        return libc::EINVAL;
    }
    if port != 1 {
        return libc::EINVAL;
    }
    // SAFETY: c is our context.
    let a = port_attr(&unsafe { ctx(c) }.info);
    let n = size.min(size_of::<ffi::ibv_port_attr>());
    // SAFETY: the caller's buffer holds `size` bytes; we copy at most that.
    unsafe {
        ptr::copy_nonoverlapping(
            (&a as *const ffi::ibv_port_attr).cast::<u8>(),
            attr.cast::<u8>(),
            n,
        )
    };
    0
}

/// The exported (compat) `ibv_query_port`, which programs reach when they
/// call the symbol rather than the header's inline wrapper. Its struct
/// (private to rdma-core, only declared in the header) is `ibv_port_attr`
/// up to `link_layer`; newer fields are not written.
pub unsafe extern "C" fn query_port(
    c: *mut ffi::ibv_context,
    port: u8,
    attr: *mut ffi::_compat_ibv_port_attr,
) -> c_int {
    // SAFETY: forwards the caller's pointers with the compat struct's size.
    unsafe {
        query_port_ex(
            c,
            port,
            attr.cast(),
            offset_of!(ffi::ibv_port_attr, link_layer) + 1,
        )
    }
}

pub unsafe extern "C" fn query_gid(
    c: *mut ffi::ibv_context,
    port: u8,
    index: c_int,
    gid: *mut ffi::ibv_gid,
) -> c_int {
    if c.is_null() || gid.is_null() || port != 1 || index != 0 {
        set_errno(libc::EINVAL);
        return -1;
    }
    // SAFETY: c is our context; gid the caller's buffer.
    unsafe { (*gid).raw = ctx(c).info.gid };
    0
}

pub unsafe extern "C" fn query_gid_ex(
    c: *mut ffi::ibv_context,
    port: u32,
    index: u32,
    entry: *mut ffi::ibv_gid_entry,
    _flags: u32,
    size: usize,
) -> c_int {
    if c.is_null() || entry.is_null() || port != 1 || size < size_of::<ffi::ibv_gid_entry>() {
        return libc::EINVAL;
    }
    if index != 0 {
        return libc::ENODATA;
    }
    // SAFETY: c is our context; entry the caller's buffer.
    unsafe {
        let mut e = ffi::ibv_gid_entry {
            gid_index: 0,
            port_num: 1,
            gid_type: ffi::IBV_GID_TYPE_IB,
            ..Default::default()
        };
        e.gid.raw = ctx(c).info.gid;
        *entry = e;
    }
    0
}

pub unsafe extern "C" fn query_gid_table(
    c: *mut ffi::ibv_context,
    entries: *mut ffi::ibv_gid_entry,
    max: usize,
    flags: u32,
    size: usize,
) -> isize {
    if max == 0 {
        return -(libc::EINVAL as isize);
    }
    // SAFETY: forwards the caller's pointers; entries holds at least one.
    match unsafe { query_gid_ex(c, 1, 0, entries, flags, size) } {
        0 => 1,
        e => -(e as isize),
    }
}

pub unsafe extern "C" fn query_gid_type(
    _c: *mut ffi::ibv_context,
    port: u8,
    index: c_uint,
    ty: *mut c_uint,
) -> c_int {
    if port != 1 || index != 0 || ty.is_null() {
        set_errno(libc::EINVAL);
        return -1;
    }
    // SAFETY: the caller's out-parameter; 0 is IBV_GID_TYPE_SYSFS_IB_ROCE_V1 (IB).
    unsafe { *ty = 0 };
    0
}

pub unsafe extern "C" fn query_pkey(
    _c: *mut ffi::ibv_context,
    port: u8,
    index: c_int,
    pkey: *mut u16,
) -> c_int {
    if port != 1 || index != 0 || pkey.is_null() {
        set_errno(libc::EINVAL);
        return -1;
    }
    // SAFETY: the caller's out-parameter (network order; 0xffff either way).
    unsafe { *pkey = 0xffff };
    0
}

pub unsafe extern "C" fn get_pkey_index(_c: *mut ffi::ibv_context, port: u8, pkey: u16) -> c_int {
    if port == 1 && pkey == 0xffff {
        0
    } else {
        -1
    }
}

// ---------------------------------------------------------------- PD, MR

#[repr(C)]
struct Pd {
    pd: ffi::ibv_pd,
}

pub unsafe extern "C" fn alloc_pd(c: *mut ffi::ibv_context) -> *mut ffi::ibv_pd {
    if c.is_null() {
        set_errno(libc::EINVAL);
        return ptr::null_mut();
    }
    // SAFETY: c is our context.
    let cx = unsafe { ctx(c) };
    match cx.conn.call(&Req::AllocPd) {
        Ok((Resp::Handle(h), _)) => Box::into_raw(Box::new(Pd {
            pd: ffi::ibv_pd {
                context: c,
                handle: h,
            },
        }))
        .cast(),
        r => fail_null(r),
    }
}

fn fail_null<T>(r: std::io::Result<(Resp, Option<OwnedFd>)>) -> *mut T {
    set_errno(match r {
        Ok((Resp::Err(e), _)) => e,
        Ok(_) => libc::EPROTO,
        Err(e) => e.raw_os_error().unwrap_or(libc::EIO),
    });
    ptr::null_mut()
}

pub unsafe extern "C" fn dealloc_pd(pd: *mut ffi::ibv_pd) -> c_int {
    if pd.is_null() {
        return libc::EINVAL;
    }
    // SAFETY: pd is one of ours.
    let rc = unsafe { ctx((*pd).context) }
        .conn
        .call_status(&Req::DeallocPd {
            // SAFETY: pd is one of ours.
            pd: unsafe { (*pd).handle },
        });
    if rc == 0 {
        // SAFETY: allocated as a Pd in alloc_pd.
        drop(unsafe { Box::from_raw(pd as *mut Pd) });
    }
    rc
}

#[repr(C)]
struct Mr {
    mr: ffi::ibv_mr,
}

pub unsafe extern "C" fn reg_mr_iova2(
    pd: *mut ffi::ibv_pd,
    addr: *mut c_void,
    len: usize,
    iova: u64,
    access: c_uint,
) -> *mut ffi::ibv_mr {
    if pd.is_null() {
        set_errno(libc::EINVAL);
        return ptr::null_mut();
    }
    // SAFETY: pd is one of ours.
    let (c, h) = unsafe { ((*pd).context, (*pd).handle) };
    // SAFETY: c is our context.
    let cx = unsafe { ctx(c) };
    // Optional-range bits (rdma-core's hints) and zero-based, relaxed
    // ordering and the like change nothing for this device.
    let access = access & 0xf;
    let req = Req::RegMr {
        pd: h,
        addr: addr as u64,
        len: len as u64,
        iova,
        access,
    };
    match cx.conn.call(&req) {
        Ok((Resp::Mr { handle, lkey, rkey }, _)) => {
            let mr = ffi::ibv_mr {
                context: c,
                pd,
                addr,
                length: len,
                handle,
                lkey,
                rkey,
            };
            Box::into_raw(Box::new(Mr { mr })).cast()
        }
        r => fail_null(r),
    }
}

pub unsafe extern "C" fn reg_mr(
    pd: *mut ffi::ibv_pd,
    addr: *mut c_void,
    len: usize,
    access: c_int,
) -> *mut ffi::ibv_mr {
    // SAFETY: forwards the caller's arguments.
    unsafe { reg_mr_iova2(pd, addr, len, addr as u64, access as c_uint) }
}

pub unsafe extern "C" fn reg_mr_iova(
    pd: *mut ffi::ibv_pd,
    addr: *mut c_void,
    len: usize,
    iova: u64,
    access: c_int,
) -> *mut ffi::ibv_mr {
    // SAFETY: forwards the caller's arguments.
    unsafe { reg_mr_iova2(pd, addr, len, iova, access as c_uint) }
}

pub unsafe extern "C" fn dereg_mr(mr: *mut ffi::ibv_mr) -> c_int {
    if mr.is_null() {
        return libc::EINVAL;
    }
    // SAFETY: mr is one of ours.
    let rc = unsafe { ctx((*mr).context) }
        .conn
        .call_status(&Req::DeregMr {
            // SAFETY: mr is one of ours.
            mr: unsafe { (*mr).handle },
        });
    if rc == 0 {
        // SAFETY: allocated as an Mr in reg_mr_iova2.
        drop(unsafe { Box::from_raw(mr as *mut Mr) });
    }
    rc
}

// ---------------------------------------------------------------- channels, CQs

#[repr(C)]
struct Channel {
    ch: ffi::ibv_comp_channel,
    fd: OwnedFd,
    handle: u32,
}

pub unsafe extern "C" fn create_comp_channel(
    c: *mut ffi::ibv_context,
) -> *mut ffi::ibv_comp_channel {
    if c.is_null() {
        set_errno(libc::EINVAL);
        return ptr::null_mut();
    }
    // SAFETY: c is our context.
    match unsafe { ctx(c) }.conn.call(&Req::CreateChannel) {
        Ok((Resp::Channel { handle }, Some(fd))) => {
            let ch = ffi::ibv_comp_channel {
                context: c,
                fd: fd.as_raw_fd(),
                refcnt: 0,
            };
            Box::into_raw(Box::new(Channel { ch, fd, handle })).cast()
        }
        r => fail_null(r),
    }
}

pub unsafe extern "C" fn destroy_comp_channel(ch: *mut ffi::ibv_comp_channel) -> c_int {
    if ch.is_null() {
        return libc::EINVAL;
    }
    let chan = ch as *mut Channel;
    // SAFETY: ch is one of ours.
    let rc = unsafe {
        ctx((*ch).context).conn.call_status(&Req::DestroyChannel {
            channel: (*chan).handle,
        })
    };
    if rc == 0 {
        // SAFETY: allocated as a Channel in create_comp_channel.
        drop(unsafe { Box::from_raw(chan) });
    }
    rc
}

#[repr(C)]
struct Cq {
    cq: ffi::ibv_cq,
    ring: Option<Ring>,
    poll: Mutex<()>,
    /// Channel events handed to the program for this CQ (acked ones are
    /// counted in `cq.comp_events_completed`).
    events: AtomicU32,
}

pub unsafe extern "C" fn create_cq(
    c: *mut ffi::ibv_context,
    cqe: c_int,
    cq_context: *mut c_void,
    channel: *mut ffi::ibv_comp_channel,
    _vector: c_int,
) -> *mut ffi::ibv_cq {
    if c.is_null() || cqe < 0 {
        set_errno(libc::EINVAL);
        return ptr::null_mut();
    }
    // SAFETY: c is our context.
    let cx = unsafe { ctx(c) };
    let cq = Box::into_raw(Box::new(Cq {
        cq: ffi::ibv_cq {
            context: c,
            channel,
            cq_context,
            ..Default::default()
        },
        ring: None,
        poll: Mutex::new(()),
        events: AtomicU32::new(0),
    }));
    let ch = if channel.is_null() {
        None
    } else {
        // SAFETY: channel, if given, is one of ours.
        Some(unsafe { (*(channel as *mut Channel)).handle })
    };
    let r = cx.conn.call(&Req::CreateCq {
        cqe: cqe.max(1) as u32,
        channel: ch,
        cookie: cq as u64,
    });
    match r {
        Ok((Resp::Cq { handle, cqe }, Some(fd))) => match Ring::map(fd.as_raw_fd(), cqe, false) {
            Ok(ring) => {
                // SAFETY: cq is our fresh, exclusively owned allocation.
                unsafe {
                    (*cq).ring = Some(ring);
                    (*cq).cq.handle = handle;
                    (*cq).cq.cqe = cqe as c_int;
                    libc::pthread_mutex_init(ptr::addr_of_mut!((*cq).cq.mutex).cast(), ptr::null());
                    libc::pthread_cond_init(ptr::addr_of_mut!((*cq).cq.cond).cast(), ptr::null());
                    if !channel.is_null() {
                        (*channel).refcnt += 1;
                    }
                }
                live_add(cq.cast());
                cq.cast()
            }
            Err(e) => {
                cx.conn.call_status(&Req::DestroyCq { cq: handle });
                // SAFETY: ours, not handed out.
                drop(unsafe { Box::from_raw(cq) });
                set_errno(e.raw_os_error().unwrap_or(libc::ENOMEM));
                ptr::null_mut()
            }
        },
        r => {
            // SAFETY: ours, not handed out.
            drop(unsafe { Box::from_raw(cq) });
            fail_null(r)
        }
    }
}

pub unsafe extern "C" fn destroy_cq(cq: *mut ffi::ibv_cq) -> c_int {
    if cq.is_null() {
        return libc::EINVAL;
    }
    let q = cq as *mut Cq;
    // SAFETY: cq is one of ours. As rdma-core does, wait until the program
    // has acknowledged every channel event it got for this CQ.
    unsafe {
        let m = ptr::addr_of_mut!((*cq).mutex).cast();
        libc::pthread_mutex_lock(m);
        while (*cq).comp_events_completed < (*q).events.load(Ordering::Acquire) {
            libc::pthread_cond_wait(ptr::addr_of_mut!((*cq).cond).cast(), m);
        }
        libc::pthread_mutex_unlock(m);
    }
    // SAFETY: as above.
    let rc = unsafe {
        ctx((*cq).context)
            .conn
            .call_status(&Req::DestroyCq { cq: (*cq).handle })
    };
    if rc == 0 {
        live_remove(cq.cast());
        // SAFETY: allocated as a Cq in create_cq; the program gives it up.
        unsafe {
            if !(*cq).channel.is_null() {
                (*(*cq).channel).refcnt -= 1;
            }
            drop(Box::from_raw(q));
        }
    }
    rc
}

/// `ibv_resize_cq`: the verb only promises a CQ of at least `cqe` entries,
/// so a size the ring already holds (it was rounded up to 2^n - 1 at
/// creation) succeeds without change. Growing the ring needs the service
/// (a new ring to move the pending completions into), which the protocol
/// has no request for yet: EOPNOTSUPP.
pub unsafe extern "C" fn resize_cq(cq: *mut ffi::ibv_cq, cqe: c_int) -> c_int {
    if cq.is_null() || cqe < 1 {
        return libc::EINVAL;
    }
    // SAFETY: cq is one of ours; cqe is the ring's capacity, set at creation.
    if cqe <= unsafe { (*cq).cqe } {
        return 0;
    }
    static ONCE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    crate::unsupported("ibv_resize_cq to more entries than the CQ has", &ONCE);
    libc::EOPNOTSUPP
}

unsafe extern "C" fn poll_cq(cq: *mut ffi::ibv_cq, n: c_int, wc: *mut ffi::ibv_wc) -> c_int {
    if cq.is_null() || n <= 0 || wc.is_null() {
        return 0;
    }
    // SAFETY: cq is one of ours.
    let q = unsafe { &*(cq as *const Cq) };
    let Some(ring) = &q.ring else { return -1 };
    let _g = q.poll.lock().unwrap_or_else(|p| p.into_inner());
    // SAFETY: the caller's array holds n entries; Wc has ibv_wc's layout.
    let out = unsafe { std::slice::from_raw_parts_mut(wc as *mut Wc, n as usize) };
    ring.pop_into(out) as c_int
}

unsafe extern "C" fn req_notify_cq(cq: *mut ffi::ibv_cq, solicited_only: c_int) -> c_int {
    if cq.is_null() {
        return libc::EINVAL;
    }
    // SAFETY: cq is one of ours.
    unsafe {
        ctx((*cq).context).conn.post(&Req::ReqNotify {
            cq: (*cq).handle,
            solicited_only: solicited_only != 0,
        })
    }
}

fn read_record(fd: c_int, buf: &mut [u8]) -> bool {
    loop {
        // SAFETY: reads into our own buffer.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n == buf.len() as isize {
            return true;
        }
        if n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        if n >= 0 {
            set_errno(libc::EIO);
        }
        return false;
    }
}

pub unsafe extern "C" fn get_cq_event(
    ch: *mut ffi::ibv_comp_channel,
    cq: *mut *mut ffi::ibv_cq,
    cq_context: *mut *mut c_void,
) -> c_int {
    if ch.is_null() || cq.is_null() || cq_context.is_null() {
        set_errno(libc::EINVAL);
        return -1;
    }
    let mut rec = [0u8; proto::CQ_EVENT_BYTES];
    let q = loop {
        // SAFETY: ch is one of ours.
        if !read_record(unsafe { (*ch).fd }, &mut rec) {
            return -1;
        }
        let cookie = u64::from_ne_bytes(rec);
        if is_live(cookie) {
            break cookie as *mut Cq;
        }
    };
    // SAFETY: the service echoes the cookie we gave for one of our live CQs.
    unsafe {
        (*q).events.fetch_add(1, Ordering::AcqRel);
        *cq = q.cast();
        *cq_context = (*q).cq.cq_context;
    }
    0
}

pub unsafe extern "C" fn ack_cq_events(cq: *mut ffi::ibv_cq, n: c_uint) {
    if cq.is_null() {
        return;
    }
    // SAFETY: cq is one of ours; its mutex and cond were initialized.
    unsafe {
        let m = ptr::addr_of_mut!((*cq).mutex).cast();
        libc::pthread_mutex_lock(m);
        (*cq).comp_events_completed += n;
        libc::pthread_cond_broadcast(ptr::addr_of_mut!((*cq).cond).cast());
        libc::pthread_mutex_unlock(m);
    }
}

pub unsafe extern "C" fn get_async_event(
    c: *mut ffi::ibv_context,
    ev: *mut ffi::ibv_async_event,
) -> c_int {
    if c.is_null() || ev.is_null() {
        set_errno(libc::EINVAL);
        return -1;
    }
    let mut rec = [0u8; proto::ASYNC_EVENT_BYTES];
    let (ty, cookie) = loop {
        // SAFETY: c is our context.
        if !read_record(unsafe { (*c).async_fd }, &mut rec) {
            return -1;
        }
        let ty = u32::from_ne_bytes([rec[0], rec[1], rec[2], rec[3]]);
        let cookie = u64::from_ne_bytes([
            rec[8], rec[9], rec[10], rec[11], rec[12], rec[13], rec[14], rec[15],
        ]);
        let port_event = matches!(
            ty,
            ffi::IBV_EVENT_PORT_ACTIVE
                ..=ffi::IBV_EVENT_SM_CHANGE
                    | ffi::IBV_EVENT_DEVICE_FATAL
                    | ffi::IBV_EVENT_CLIENT_REREGISTER
                    | ffi::IBV_EVENT_GID_CHANGE
        );
        if port_event || is_live(cookie) {
            break (ty, cookie);
        }
    };
    let mut e = ffi::ibv_async_event {
        event_type: ty,
        ..Default::default()
    };
    match ty {
        ffi::IBV_EVENT_CQ_ERR => e.element.cq = cookie as *mut ffi::ibv_cq,
        ffi::IBV_EVENT_SRQ_ERR | ffi::IBV_EVENT_SRQ_LIMIT_REACHED => {
            e.element.srq = cookie as *mut ffi::ibv_srq
        }
        ffi::IBV_EVENT_PORT_ACTIVE
        | ffi::IBV_EVENT_PORT_ERR
        | ffi::IBV_EVENT_LID_CHANGE
        | ffi::IBV_EVENT_PKEY_CHANGE
        | ffi::IBV_EVENT_SM_CHANGE
        | ffi::IBV_EVENT_CLIENT_REREGISTER
        | ffi::IBV_EVENT_GID_CHANGE => e.element.port_num = cookie as c_int,
        ffi::IBV_EVENT_DEVICE_FATAL => {}
        _ => e.element.qp = cookie as *mut ffi::ibv_qp,
    }
    // SAFETY: the caller's out-parameter.
    unsafe { *ev = e };
    0
}

pub unsafe extern "C" fn ack_async_event(ev: *mut ffi::ibv_async_event) {
    if ev.is_null() {
        return;
    }
    // SAFETY: the event came from get_async_event; its element is one of ours.
    unsafe {
        match (*ev).event_type {
            ffi::IBV_EVENT_CQ_ERR => {
                let cq = (*ev).element.cq;
                if !cq.is_null() {
                    (*cq).async_events_completed += 1;
                }
            }
            ffi::IBV_EVENT_SRQ_ERR | ffi::IBV_EVENT_SRQ_LIMIT_REACHED => {
                let s = (*ev).element.srq;
                if !s.is_null() {
                    (*s).events_completed += 1;
                }
            }
            ffi::IBV_EVENT_QP_FATAL
            | ffi::IBV_EVENT_QP_REQ_ERR
            | ffi::IBV_EVENT_QP_ACCESS_ERR
            | ffi::IBV_EVENT_COMM_EST
            | ffi::IBV_EVENT_SQ_DRAINED
            | ffi::IBV_EVENT_PATH_MIG
            | ffi::IBV_EVENT_PATH_MIG_ERR
            | ffi::IBV_EVENT_QP_LAST_WQE_REACHED => {
                let q = (*ev).element.qp;
                if !q.is_null() {
                    (*q).events_completed += 1;
                }
            }
            _ => {}
        }
    }
}

// ---------------------------------------------------------------- SRQ

#[repr(C)]
struct Srq {
    srq: ffi::ibv_srq,
    max_sge: u32,
}

pub unsafe extern "C" fn create_srq(
    pd: *mut ffi::ibv_pd,
    init: *mut ffi::ibv_srq_init_attr,
) -> *mut ffi::ibv_srq {
    if pd.is_null() || init.is_null() {
        set_errno(libc::EINVAL);
        return ptr::null_mut();
    }
    // SAFETY: pd is ours; init is the caller's.
    let (c, pdh, a, sctx) = unsafe {
        (
            (*pd).context,
            (*pd).handle,
            (*init).attr,
            (*init).srq_context,
        )
    };
    let s = Box::into_raw(Box::new(Srq {
        srq: ffi::ibv_srq {
            context: c,
            srq_context: sctx,
            pd,
            ..Default::default()
        },
        max_sge: 0,
    }));
    let req = Req::CreateSrq {
        pd: pdh,
        max_wr: a.max_wr,
        max_sge: a.max_sge,
        limit: a.srq_limit,
        cookie: s as u64,
    };
    // SAFETY: c is our context.
    match unsafe { ctx(c) }.conn.call(&req) {
        Ok((
            Resp::Srq {
                handle,
                max_wr,
                max_sge,
            },
            _,
        )) => {
            // SAFETY: s is our fresh allocation; init the caller's.
            unsafe {
                (*s).srq.handle = handle;
                (*s).max_sge = max_sge;
                libc::pthread_mutex_init(ptr::addr_of_mut!((*s).srq.mutex).cast(), ptr::null());
                libc::pthread_cond_init(ptr::addr_of_mut!((*s).srq.cond).cast(), ptr::null());
                (*init).attr.max_wr = max_wr;
                (*init).attr.max_sge = max_sge;
            }
            live_add(s.cast());
            s.cast()
        }
        r => {
            // SAFETY: ours, not handed out.
            drop(unsafe { Box::from_raw(s) });
            fail_null(r)
        }
    }
}

pub unsafe extern "C" fn modify_srq(
    srq: *mut ffi::ibv_srq,
    attr: *mut ffi::ibv_srq_attr,
    mask: c_int,
) -> c_int {
    if srq.is_null() || attr.is_null() {
        return libc::EINVAL;
    }
    // SAFETY: srq is ours; attr the caller's.
    unsafe {
        let req = Req::ModifySrq {
            srq: (*srq).handle,
            mask: mask as u32,
            max_wr: (*attr).max_wr,
            limit: (*attr).srq_limit,
        };
        ctx((*srq).context).conn.call_status(&req)
    }
}

pub unsafe extern "C" fn query_srq(srq: *mut ffi::ibv_srq, attr: *mut ffi::ibv_srq_attr) -> c_int {
    if srq.is_null() || attr.is_null() {
        return libc::EINVAL;
    }
    // SAFETY: srq is ours; attr the caller's.
    unsafe {
        match ctx((*srq).context)
            .conn
            .call(&Req::QuerySrq { srq: (*srq).handle })
        {
            Ok((
                Resp::SrqAttr {
                    max_wr,
                    max_sge,
                    limit,
                },
                _,
            )) => {
                *attr = ffi::ibv_srq_attr {
                    max_wr,
                    max_sge,
                    srq_limit: limit,
                };
                0
            }
            Ok((Resp::Err(e), _)) => e,
            _ => libc::EPROTO,
        }
    }
}

pub unsafe extern "C" fn destroy_srq(srq: *mut ffi::ibv_srq) -> c_int {
    if srq.is_null() {
        return libc::EINVAL;
    }
    // SAFETY: srq is ours.
    let rc = unsafe {
        ctx((*srq).context)
            .conn
            .call_status(&Req::DestroySrq { srq: (*srq).handle })
    };
    if rc == 0 {
        live_remove(srq.cast());
        // SAFETY: allocated as a Srq in create_srq.
        drop(unsafe { Box::from_raw(srq as *mut Srq) });
    }
    rc
}

unsafe fn recv_list(
    mut wr: *mut ffi::ibv_recv_wr,
    max_sge: u32,
    bad: *mut *mut ffi::ibv_recv_wr,
) -> Result<Vec<proto::RecvWr>, c_int> {
    let mut out = Vec::new();
    while !wr.is_null() {
        // SAFETY: wr is an element of the caller's list.
        let w = unsafe { &*wr };
        if w.num_sge < 0 || w.num_sge as u32 > max_sge {
            if !bad.is_null() {
                // SAFETY: the caller's out-parameter.
                unsafe { *bad = wr };
            }
            return Err(libc::EINVAL);
        }
        // SAFETY: sg_list holds num_sge entries.
        let sg = unsafe { sges(w.sg_list, w.num_sge) };
        out.push(proto::RecvWr { wr_id: w.wr_id, sg });
        wr = w.next;
    }
    Ok(out)
}

unsafe fn sges(list: *const ffi::ibv_sge, n: c_int) -> Vec<Sge> {
    if list.is_null() || n <= 0 {
        return Vec::new();
    }
    // SAFETY: the caller promises list holds n entries.
    unsafe { std::slice::from_raw_parts(list, n as usize) }
        .iter()
        .map(|s| Sge {
            addr: s.addr,
            length: s.length,
            lkey: s.lkey,
        })
        .collect()
}

unsafe extern "C" fn post_srq_recv(
    srq: *mut ffi::ibv_srq,
    wr: *mut ffi::ibv_recv_wr,
    bad: *mut *mut ffi::ibv_recv_wr,
) -> c_int {
    if srq.is_null() {
        return libc::EINVAL;
    }
    // SAFETY: srq is ours.
    let s = unsafe { &*(srq as *const Srq) };
    // SAFETY: the caller's list.
    match unsafe { recv_list(wr, s.max_sge, bad) } {
        Ok(wrs) if wrs.is_empty() => 0,
        Ok(wrs) => {
            // SAFETY: srq's context is ours.
            let cx = unsafe { ctx(s.srq.context) };
            cx.posted
                .srq_recv
                .fetch_add(wrs.len() as u64, Ordering::Relaxed);
            post_chunked(cx, wrs, |wrs| Req::PostSrqRecv {
                srq: s.srq.handle,
                wrs,
            })
        }
        Err(e) => e,
    }
}

/// Sends posted work requests in packets of bounded size.
fn post_chunked<T>(cx: &Ctx, wrs: Vec<T>, mk: impl Fn(Vec<T>) -> Req) -> c_int
where
    T: WrSize,
{
    let mut batch = Vec::new();
    let mut bytes = 0usize;
    for w in wrs {
        let sz = w.wire_size();
        if !batch.is_empty() && bytes + sz > 48 * 1024 {
            let rc = cx.conn.post(&mk(std::mem::take(&mut batch)));
            if rc != 0 {
                return rc;
            }
            bytes = 0;
        }
        bytes += sz;
        batch.push(w);
    }
    if batch.is_empty() {
        0
    } else {
        cx.conn.post(&mk(batch))
    }
}

trait WrSize {
    fn wire_size(&self) -> usize;
}

impl WrSize for proto::RecvWr {
    fn wire_size(&self) -> usize {
        16 + 16 * self.sg.len()
    }
}

impl WrSize for SendWr {
    fn wire_size(&self) -> usize {
        96 + 16 * self.sg.len() + self.inline.len()
    }
}

// ---------------------------------------------------------------- QP

#[repr(C)]
struct Qp {
    qp: ffi::ibv_qp,
    cap: QpCap,
    sq_sig_all: bool,
}

fn cap_to_proto(c: &ffi::ibv_qp_cap) -> QpCap {
    QpCap {
        max_send_wr: c.max_send_wr,
        max_recv_wr: c.max_recv_wr,
        max_send_sge: c.max_send_sge,
        max_recv_sge: c.max_recv_sge,
        max_inline_data: c.max_inline_data,
    }
}

fn cap_from_proto(c: &QpCap) -> ffi::ibv_qp_cap {
    ffi::ibv_qp_cap {
        max_send_wr: c.max_send_wr,
        max_recv_wr: c.max_recv_wr,
        max_send_sge: c.max_send_sge,
        max_recv_sge: c.max_recv_sge,
        max_inline_data: c.max_inline_data,
    }
}

unsafe fn create_qp_common(
    pd: *mut ffi::ibv_pd,
    a: &mut ffi::ibv_qp_init_attr_ex,
) -> *mut ffi::ibv_qp {
    if pd.is_null()
        || a.send_cq.is_null()
        || (a.recv_cq.is_null() && a.qp_type != ffi::IBV_QPT_UD && a.srq.is_null())
    {
        set_errno(libc::EINVAL);
        return ptr::null_mut();
    }
    if !matches!(
        a.qp_type,
        ffi::IBV_QPT_RC | ffi::IBV_QPT_UC | ffi::IBV_QPT_UD
    ) {
        set_errno(libc::EOPNOTSUPP);
        return ptr::null_mut();
    }
    let recv_cq = if a.recv_cq.is_null() {
        a.send_cq
    } else {
        a.recv_cq
    };
    // SAFETY: pd and the CQs/SRQ are ours.
    let (c, pdh, scq, rcq, srq) = unsafe {
        (
            (*pd).context,
            (*pd).handle,
            (*a.send_cq).handle,
            (*recv_cq).handle,
            if a.srq.is_null() {
                None
            } else {
                Some((*a.srq).handle)
            },
        )
    };
    let q = Box::into_raw(Box::new(Qp {
        qp: ffi::ibv_qp {
            context: c,
            qp_context: a.qp_context,
            pd,
            send_cq: a.send_cq,
            recv_cq,
            srq: a.srq,
            state: ffi::IBV_QPS_RESET,
            qp_type: a.qp_type,
            ..Default::default()
        },
        cap: QpCap::default(),
        sq_sig_all: a.sq_sig_all != 0,
    }));
    let req = Req::CreateQp {
        pd: pdh,
        send_cq: scq,
        recv_cq: rcq,
        srq,
        qp_type: a.qp_type,
        cap: cap_to_proto(&a.cap),
        sq_sig_all: a.sq_sig_all != 0,
        cookie: q as u64,
    };
    // SAFETY: c is our context.
    match unsafe { ctx(c) }.conn.call(&req) {
        Ok((Resp::Qp { qpn, cap }, _)) => {
            // SAFETY: q is our fresh allocation.
            unsafe {
                (*q).qp.handle = qpn;
                (*q).qp.qp_num = qpn;
                (*q).cap = cap;
                libc::pthread_mutex_init(ptr::addr_of_mut!((*q).qp.mutex).cast(), ptr::null());
                libc::pthread_cond_init(ptr::addr_of_mut!((*q).qp.cond).cast(), ptr::null());
            }
            a.cap = cap_from_proto(&cap);
            live_add(q.cast());
            q.cast()
        }
        r => {
            // SAFETY: ours, not handed out.
            drop(unsafe { Box::from_raw(q) });
            fail_null(r)
        }
    }
}

pub unsafe extern "C" fn create_qp(
    pd: *mut ffi::ibv_pd,
    init: *mut ffi::ibv_qp_init_attr,
) -> *mut ffi::ibv_qp {
    if init.is_null() {
        set_errno(libc::EINVAL);
        return ptr::null_mut();
    }
    // SAFETY: init is the caller's.
    let i = unsafe { &mut *init };
    let mut a = ffi::ibv_qp_init_attr_ex {
        qp_context: i.qp_context,
        send_cq: i.send_cq,
        recv_cq: i.recv_cq,
        srq: i.srq,
        cap: i.cap,
        qp_type: i.qp_type,
        sq_sig_all: i.sq_sig_all,
        comp_mask: ffi::IBV_QP_INIT_ATTR_PD,
        pd,
        ..Default::default()
    };
    // SAFETY: forwards the caller's objects.
    let q = unsafe { create_qp_common(pd, &mut a) };
    if !q.is_null() {
        i.cap = a.cap;
    }
    q
}

unsafe extern "C" fn create_qp_ex(
    _c: *mut ffi::ibv_context,
    a: *mut ffi::ibv_qp_init_attr_ex,
) -> *mut ffi::ibv_qp {
    if a.is_null() {
        set_errno(libc::EINVAL);
        return ptr::null_mut();
    }
    // SAFETY: the caller's attributes.
    let a = unsafe { &mut *a };
    let known = ffi::IBV_QP_INIT_ATTR_PD
        | ffi::IBV_QP_INIT_ATTR_CREATE_FLAGS
        | ffi::IBV_QP_INIT_ATTR_SEND_OPS_FLAGS;
    if a.comp_mask & ffi::IBV_QP_INIT_ATTR_PD == 0
        || a.comp_mask & !known != 0
        || (a.comp_mask & ffi::IBV_QP_INIT_ATTR_CREATE_FLAGS != 0 && a.create_flags != 0)
        || (a.comp_mask & ffi::IBV_QP_INIT_ATTR_SEND_OPS_FLAGS != 0 && a.send_ops_flags != 0)
    {
        set_errno(libc::EOPNOTSUPP);
        return ptr::null_mut();
    }
    // SAFETY: forwards the caller's objects.
    unsafe { create_qp_common(a.pd, a) }
}

fn ah_to_proto(a: &ffi::ibv_ah_attr) -> AhAttr {
    AhAttr {
        dlid: a.dlid,
        sl: a.sl,
        src_path_bits: a.src_path_bits,
        static_rate: a.static_rate,
        is_global: a.is_global != 0,
        port_num: a.port_num,
        // SAFETY: every bit pattern of the gid union is a valid raw array.
        dgid: unsafe { a.grh.dgid.raw },
        flow_label: a.grh.flow_label,
        sgid_index: a.grh.sgid_index,
        hop_limit: a.grh.hop_limit,
        traffic_class: a.grh.traffic_class,
    }
}

fn ah_from_proto(a: &AhAttr) -> ffi::ibv_ah_attr {
    ffi::ibv_ah_attr {
        grh: ffi::ibv_global_route {
            dgid: ffi::ibv_gid { raw: a.dgid },
            flow_label: a.flow_label,
            sgid_index: a.sgid_index,
            hop_limit: a.hop_limit,
            traffic_class: a.traffic_class,
        },
        dlid: a.dlid,
        sl: a.sl,
        src_path_bits: a.src_path_bits,
        static_rate: a.static_rate,
        is_global: a.is_global as u8,
        port_num: a.port_num,
    }
}

pub unsafe extern "C" fn modify_qp(
    qp: *mut ffi::ibv_qp,
    attr: *mut ffi::ibv_qp_attr,
    mask: c_int,
) -> c_int {
    if qp.is_null() || attr.is_null() {
        return libc::EINVAL;
    }
    // SAFETY: attr is the caller's.
    let a = unsafe { &*attr };
    let pa = QpAttr {
        qp_state: a.qp_state,
        cur_qp_state: a.cur_qp_state,
        path_mtu: a.path_mtu,
        qkey: a.qkey,
        rq_psn: a.rq_psn,
        sq_psn: a.sq_psn,
        dest_qp_num: a.dest_qp_num,
        qp_access_flags: a.qp_access_flags,
        cap: cap_to_proto(&a.cap),
        ah_attr: ah_to_proto(&a.ah_attr),
        pkey_index: a.pkey_index,
        sq_draining: a.sq_draining,
        max_rd_atomic: a.max_rd_atomic,
        max_dest_rd_atomic: a.max_dest_rd_atomic,
        min_rnr_timer: a.min_rnr_timer,
        port_num: a.port_num,
        timeout: a.timeout,
        retry_cnt: a.retry_cnt,
        rnr_retry: a.rnr_retry,
    };
    // SAFETY: qp is ours.
    let rc = unsafe {
        ctx((*qp).context).conn.call_status(&Req::ModifyQp {
            qpn: (*qp).qp_num,
            attr: pa,
            mask: mask as u32,
        })
    };
    if rc == 0 && mask as u32 & ffi::IBV_QP_STATE != 0 {
        // SAFETY: qp is ours.
        unsafe { (*qp).state = a.qp_state };
    }
    rc
}

pub unsafe extern "C" fn query_qp(
    qp: *mut ffi::ibv_qp,
    attr: *mut ffi::ibv_qp_attr,
    _mask: c_int,
    init: *mut ffi::ibv_qp_init_attr,
) -> c_int {
    if qp.is_null() || attr.is_null() {
        return libc::EINVAL;
    }
    // SAFETY: qp is ours.
    let r = unsafe {
        ctx((*qp).context)
            .conn
            .call(&Req::QueryQp { qpn: (*qp).qp_num })
    };
    match r {
        Ok((
            Resp::QpAttr {
                attr: p,
                cap,
                sq_sig_all,
            },
            _,
        )) => {
            let a = ffi::ibv_qp_attr {
                qp_state: p.qp_state,
                cur_qp_state: p.qp_state,
                path_mtu: p.path_mtu,
                qkey: p.qkey,
                rq_psn: p.rq_psn,
                sq_psn: p.sq_psn,
                dest_qp_num: p.dest_qp_num,
                qp_access_flags: p.qp_access_flags,
                cap: cap_from_proto(&cap),
                ah_attr: ah_from_proto(&p.ah_attr),
                pkey_index: p.pkey_index,
                sq_draining: p.sq_draining,
                max_rd_atomic: p.max_rd_atomic,
                max_dest_rd_atomic: p.max_dest_rd_atomic,
                min_rnr_timer: p.min_rnr_timer,
                port_num: p.port_num,
                timeout: p.timeout,
                retry_cnt: p.retry_cnt,
                rnr_retry: p.rnr_retry,
                ..Default::default()
            };
            // SAFETY: the caller's out-parameters; qp is ours.
            unsafe {
                *attr = a;
                (*qp).state = p.qp_state;
                if !init.is_null() {
                    *init = ffi::ibv_qp_init_attr {
                        qp_context: (*qp).qp_context,
                        send_cq: (*qp).send_cq,
                        recv_cq: (*qp).recv_cq,
                        srq: (*qp).srq,
                        cap: cap_from_proto(&cap),
                        qp_type: (*qp).qp_type,
                        sq_sig_all: sq_sig_all as c_int,
                    };
                }
            }
            0
        }
        Ok((Resp::Err(e), _)) => e,
        _ => libc::EPROTO,
    }
}

pub unsafe extern "C" fn destroy_qp(qp: *mut ffi::ibv_qp) -> c_int {
    if qp.is_null() {
        return libc::EINVAL;
    }
    // SAFETY: qp is ours.
    let rc = unsafe {
        ctx((*qp).context)
            .conn
            .call_status(&Req::DestroyQp { qpn: (*qp).qp_num })
    };
    if rc == 0 {
        live_remove(qp.cast());
        // SAFETY: allocated as a Qp in create_qp_common.
        drop(unsafe { Box::from_raw(qp as *mut Qp) });
    }
    rc
}

unsafe extern "C" fn post_send(
    qp: *mut ffi::ibv_qp,
    mut wr: *mut ffi::ibv_send_wr,
    bad: *mut *mut ffi::ibv_send_wr,
) -> c_int {
    if qp.is_null() {
        return libc::EINVAL;
    }
    // SAFETY: qp is ours.
    let q = unsafe { &*(qp as *const Qp) };
    let fail = |w: *mut ffi::ibv_send_wr, e: c_int| {
        if !bad.is_null() {
            // SAFETY: the caller's out-parameter.
            unsafe { *bad = w };
        }
        e
    };
    if !matches!(
        q.qp.state,
        ffi::IBV_QPS_RTS | ffi::IBV_QPS_SQD | ffi::IBV_QPS_SQE | ffi::IBV_QPS_ERR
    ) {
        return fail(wr, libc::EINVAL);
    }
    let mut wrs = Vec::new();
    while !wr.is_null() {
        // SAFETY: wr is an element of the caller's list.
        let w = unsafe { &*wr };
        let op = w.opcode;
        let ok_op = match q.qp.qp_type {
            ffi::IBV_QPT_UD => matches!(op, ffi::IBV_WR_SEND | ffi::IBV_WR_SEND_WITH_IMM),
            ffi::IBV_QPT_UC => matches!(
                op,
                ffi::IBV_WR_SEND
                    | ffi::IBV_WR_SEND_WITH_IMM
                    | ffi::IBV_WR_RDMA_WRITE
                    | ffi::IBV_WR_RDMA_WRITE_WITH_IMM
            ),
            _ => op <= ffi::IBV_WR_ATOMIC_FETCH_AND_ADD,
        };
        if !ok_op || w.num_sge < 0 || w.num_sge as u32 > q.cap.max_send_sge.max(1) {
            return fail(wr, libc::EINVAL);
        }
        // SAFETY: sg_list holds num_sge entries.
        let sg = unsafe { sges(w.sg_list, w.num_sge) };
        let mut flags = w.send_flags;
        if q.sq_sig_all {
            flags |= ffi::IBV_SEND_SIGNALED;
        }
        let mut out = SendWr {
            wr_id: w.wr_id,
            opcode: op,
            flags,
            // SAFETY: imm_data and invalidate_rkey share the same 4 bytes.
            imm: unsafe { w.__bindgen_anon_1.imm_data },
            ..SendWr::default()
        };
        if flags & ffi::IBV_SEND_INLINE != 0
            && matches!(
                op,
                ffi::IBV_WR_SEND
                    | ffi::IBV_WR_SEND_WITH_IMM
                    | ffi::IBV_WR_RDMA_WRITE
                    | ffi::IBV_WR_RDMA_WRITE_WITH_IMM
            )
        {
            let total: u64 = sg.iter().map(|s| s.length as u64).sum();
            if total > q.cap.max_inline_data as u64 {
                return fail(wr, libc::EINVAL);
            }
            for s in &sg {
                if s.length > 0 {
                    // SAFETY: inline data is read from the program's memory at
                    // post time, as the verbs API defines.
                    out.inline.extend_from_slice(unsafe {
                        std::slice::from_raw_parts(s.addr as usize as *const u8, s.length as usize)
                    });
                }
            }
        } else {
            out.flags &= !ffi::IBV_SEND_INLINE;
            out.sg = sg;
        }
        // SAFETY: the union member matching the opcode / QP type.
        unsafe {
            match op {
                ffi::IBV_WR_RDMA_WRITE
                | ffi::IBV_WR_RDMA_WRITE_WITH_IMM
                | ffi::IBV_WR_RDMA_READ => {
                    out.remote_addr = w.wr.rdma.remote_addr;
                    out.rkey = w.wr.rdma.rkey;
                }
                ffi::IBV_WR_ATOMIC_CMP_AND_SWP | ffi::IBV_WR_ATOMIC_FETCH_AND_ADD => {
                    out.remote_addr = w.wr.atomic.remote_addr;
                    out.rkey = w.wr.atomic.rkey;
                    out.compare_add = w.wr.atomic.compare_add;
                    out.swap = w.wr.atomic.swap;
                }
                _ => {}
            }
            if q.qp.qp_type == ffi::IBV_QPT_UD {
                let ah = w.wr.ud.ah;
                if ah.is_null() {
                    return fail(wr, libc::EINVAL);
                }
                out.ah = (*ah).handle;
                out.remote_qpn = w.wr.ud.remote_qpn;
                out.remote_qkey = w.wr.ud.remote_qkey;
            }
        }
        wrs.push(out);
        wr = w.next;
    }
    if wrs.is_empty() {
        return 0;
    }
    // SAFETY: the QP's context is ours.
    let cx = unsafe { ctx(q.qp.context) };
    for w in &wrs {
        if let Some(n) = cx.posted.send.get(w.opcode as usize) {
            n.fetch_add(1, Ordering::Relaxed);
        }
    }
    post_chunked(cx, wrs, |wrs| Req::PostSend {
        qpn: q.qp.qp_num,
        wrs,
    })
}

unsafe extern "C" fn post_recv(
    qp: *mut ffi::ibv_qp,
    wr: *mut ffi::ibv_recv_wr,
    bad: *mut *mut ffi::ibv_recv_wr,
) -> c_int {
    if qp.is_null() {
        return libc::EINVAL;
    }
    // SAFETY: qp is ours.
    let q = unsafe { &*(qp as *const Qp) };
    if q.qp.state == ffi::IBV_QPS_RESET || !q.qp.srq.is_null() {
        if !bad.is_null() {
            // SAFETY: the caller's out-parameter.
            unsafe { *bad = wr };
        }
        return libc::EINVAL;
    }
    // SAFETY: the caller's list.
    match unsafe { recv_list(wr, q.cap.max_recv_sge.max(1), bad) } {
        Ok(wrs) if wrs.is_empty() => 0,
        Ok(wrs) => {
            // SAFETY: the QP's context is ours.
            let cx = unsafe { ctx(q.qp.context) };
            cx.posted
                .recv
                .fetch_add(wrs.len() as u64, Ordering::Relaxed);
            post_chunked(cx, wrs, |wrs| Req::PostRecv {
                qpn: q.qp.qp_num,
                wrs,
            })
        }
        Err(e) => e,
    }
}

// ---------------------------------------------------------------- AH

#[repr(C)]
struct Ah {
    ah: ffi::ibv_ah,
}

pub unsafe extern "C" fn create_ah(
    pd: *mut ffi::ibv_pd,
    attr: *mut ffi::ibv_ah_attr,
) -> *mut ffi::ibv_ah {
    if pd.is_null() || attr.is_null() {
        set_errno(libc::EINVAL);
        return ptr::null_mut();
    }
    // SAFETY: pd is ours; attr the caller's.
    let (c, h, a) = unsafe { ((*pd).context, (*pd).handle, ah_to_proto(&*attr)) };
    // SAFETY: c is our context.
    match unsafe { ctx(c) }
        .conn
        .call(&Req::CreateAh { pd: h, attr: a })
    {
        Ok((Resp::Handle(handle), _)) => Box::into_raw(Box::new(Ah {
            ah: ffi::ibv_ah {
                context: c,
                pd,
                handle,
            },
        }))
        .cast(),
        r => fail_null(r),
    }
}

pub unsafe extern "C" fn destroy_ah(ah: *mut ffi::ibv_ah) -> c_int {
    if ah.is_null() {
        return libc::EINVAL;
    }
    // SAFETY: ah is ours.
    let rc = unsafe {
        ctx((*ah).context)
            .conn
            .call_status(&Req::DestroyAh { ah: (*ah).handle })
    };
    if rc == 0 {
        // SAFETY: allocated as an Ah in create_ah.
        drop(unsafe { Box::from_raw(ah as *mut Ah) });
    }
    rc
}

pub unsafe extern "C" fn init_ah_from_wc(
    _c: *mut ffi::ibv_context,
    port: u8,
    wc: *mut ffi::ibv_wc,
    grh: *mut ffi::ibv_grh,
    attr: *mut ffi::ibv_ah_attr,
) -> c_int {
    if wc.is_null() || attr.is_null() {
        set_errno(libc::EINVAL);
        return -1;
    }
    // SAFETY: the caller's completion, header and out-parameter.
    unsafe {
        let w = &*wc;
        let mut a = ffi::ibv_ah_attr {
            dlid: w.slid,
            sl: w.sl,
            src_path_bits: w.dlid_path_bits,
            port_num: port,
            ..Default::default()
        };
        if w.wc_flags & ffi::IBV_WC_GRH != 0 && !grh.is_null() {
            let g = &*grh;
            let flow = u32::from_be(g.version_tclass_flow);
            a.is_global = 1;
            a.grh.dgid = g.sgid;
            a.grh.flow_label = flow & 0xfffff;
            a.grh.hop_limit = 0xff;
            a.grh.traffic_class = ((flow >> 20) & 0xff) as u8;
        }
        *attr = a;
    }
    0
}

pub unsafe extern "C" fn create_ah_from_wc(
    pd: *mut ffi::ibv_pd,
    wc: *mut ffi::ibv_wc,
    grh: *mut ffi::ibv_grh,
    port: u8,
) -> *mut ffi::ibv_ah {
    if pd.is_null() {
        set_errno(libc::EINVAL);
        return ptr::null_mut();
    }
    let mut a = ffi::ibv_ah_attr::default();
    // SAFETY: forwards the caller's pointers.
    if unsafe { init_ah_from_wc((*pd).context, port, wc, grh, &mut a) } != 0 {
        return ptr::null_mut();
    }
    // SAFETY: as above.
    unsafe { create_ah(pd, &mut a) }
}
