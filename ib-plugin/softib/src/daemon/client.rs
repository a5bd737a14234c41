//! A context's connection: one thread per connection reads requests
//! ([`Req`]), handles each under the service lock and sends the answer
//! after releasing it. The first request must be [`Req::Hello`]; resources
//! may only be made after [`Req::Open`], and only the context's own
//! resources may be named. A malformed packet or a protocol violation
//! closes the connection; when it closes, for whatever reason, everything
//! the context made is destroyed, as the kernel does for a dying process
//! on real hardware.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use super::datapath;
use super::state::{
    mine, Ah, Channel, Client, ClientId, ConnHandle, Cq, Mr, Pd, Qp, Shared, Srq, State,
};
use crate::proto::{self, access, qp_mask, qp_state, qp_type, AhAttr, QpAttr, QpCap, Req, Resp};
use crate::ring::{self, Ring};
use crate::sys;

/// Largest CQ.
const MAX_CQE: u32 = 4_194_304;
/// Largest send or receive queue, SRQ.
const MAX_WR: u32 = 16_384;
/// Most SGEs per WR.
const MAX_SGE: u32 = 32;

/// What to do after a request.
enum Action {
    Reply(Resp, Option<OwnedFd>),
    Nothing,
    /// Answer, then close the connection.
    ReplyClose(Resp),
    Close,
}

fn reply(r: Resp) -> Action {
    Action::Reply(r, None)
}

fn err(errno: i32) -> Action {
    reply(Resp::Err(errno))
}

/// Per-connection facts.
struct Conn {
    id: ClientId,
    pid: i32,
    hello: bool,
    opened: bool,
}

/// Serves one context connection until it closes, then destroys what it
/// owned.
pub(crate) fn serve(shared: Arc<Shared>, sock: OwnedFd, id: ClientId) {
    let fd = sock.as_raw_fd();
    let pid = sys::peer_pid(fd).unwrap_or(0);
    if let Ok(dup) = sock.try_clone() {
        shared.lock().conns.insert(
            id,
            ConnHandle::Unix(std::os::unix::net::UnixStream::from(dup)),
        );
    }
    let mut conn = Conn {
        id,
        pid,
        hello: false,
        opened: false,
    };
    let mut buf = vec![0u8; proto::MAX_PACKET];
    loop {
        let n = match sys::recv_packet(fd, &mut buf) {
            Ok((0, _)) | Err(_) => break,
            // A descriptor from a client is never expected: it is dropped.
            Ok((n, _fd)) => n,
        };
        let Some(req) = proto::decode::<Req>(&buf[..n]) else {
            break;
        };
        let action = {
            let mut st = shared.lock();
            handle(&mut st, &mut conn, req)
        };
        match action {
            Action::Nothing => {}
            Action::Reply(r, f) => {
                if sys::send_packet(fd, &proto::encode(&r), f.as_ref().map(|f| f.as_raw_fd()))
                    .is_err()
                {
                    break;
                }
            }
            Action::ReplyClose(r) => {
                let _ = sys::send_packet(fd, &proto::encode(&r), None);
                break;
            }
            Action::Close => break,
        }
    }
    let mut st = shared.lock();
    st.conns.remove(&id);
    destroy_client(&mut st, id);
    st.connections = st.connections.saturating_sub(1);
    if st.connections == 0 {
        st.idle_since = std::time::Instant::now();
    }
}

/// Destroys everything context `id` owned.
pub(crate) fn destroy_client(st: &mut State, id: ClientId) {
    let qpns: Vec<u32> = st
        .qps
        .iter()
        .filter(|(_, q)| q.owner == id)
        .map(|(&n, _)| n)
        .collect();
    for qpn in qpns {
        datapath::destroy_qp(st, qpn);
    }
    st.srqs.retain(|_, s| s.owner != id);
    st.cqs.retain(|_, c| c.owner != id);
    st.ahs.retain(|_, a| a.owner != id);
    let mrs: Vec<u32> = st
        .mrs
        .iter()
        .filter(|(_, m)| m.owner == id)
        .map(|(&h, _)| h)
        .collect();
    for h in mrs {
        dereg(st, h);
    }
    st.pds.retain(|_, p| p.owner != id);
    st.channels.retain(|_, c| c.owner != id);
    st.clients.remove(&id);
}

fn dereg(st: &mut State, h: u32) {
    if let Some(mr) = st.mrs.remove(&h) {
        st.lkeys.remove(&mr.lkey);
        st.rkeys.remove(&(mr.dev, mr.rkey));
    }
}

fn handle(st: &mut State, c: &mut Conn, req: Req) -> Action {
    if !c.hello {
        return match req {
            Req::Hello { version } if version == proto::VERSION => {
                c.hello = true;
                reply(Resp::Hello {
                    version: proto::VERSION,
                })
            }
            Req::Hello { .. } => Action::ReplyClose(Resp::Hello {
                version: proto::VERSION,
            }),
            _ => Action::Close,
        };
    }
    match req {
        Req::Hello { .. } => Action::Close,
        Req::QueryDevices => reply(Resp::Devices(st.devices.clone())),
        Req::Open { dev } => open(st, c, dev),
        _ if !c.opened => Action::Close,
        Req::AllocPd => {
            let h = st.new_handle();
            st.pds.insert(h, Pd { owner: c.id });
            reply(Resp::Handle(h))
        }
        Req::DeallocPd { pd } => {
            if !mine(&st.pds, pd, c.id) {
                return err(libc::EINVAL);
            }
            let busy = st.qps.values().any(|q| q.pd == pd)
                || st.mrs.values().any(|m| m.pd == pd)
                || st.srqs.values().any(|s| s.pd == pd)
                || st.ahs.values().any(|a| a.pd == pd);
            if busy {
                return err(libc::EBUSY);
            }
            st.pds.remove(&pd);
            reply(Resp::Ok)
        }
        Req::RegMr {
            pd,
            addr,
            len,
            iova,
            access,
        } => reg_mr(st, c, pd, addr, len, iova, access),
        Req::DeregMr { mr } => {
            if !mine(&st.mrs, mr, c.id) {
                return err(libc::EINVAL);
            }
            dereg(st, mr);
            reply(Resp::Ok)
        }
        Req::CreateChannel => {
            let Ok((ours, theirs)) = sys::socketpair(libc::SOCK_SEQPACKET) else {
                return err(libc::ENOMEM);
            };
            if sys::set_nonblock(ours.as_raw_fd(), true).is_err() {
                return err(libc::ENOMEM);
            }
            let h = st.new_handle();
            st.channels.insert(
                h,
                Channel {
                    owner: c.id,
                    fd: ours,
                },
            );
            Action::Reply(Resp::Channel { handle: h }, Some(theirs))
        }
        Req::DestroyChannel { channel } => {
            if !mine(&st.channels, channel, c.id) {
                return err(libc::EINVAL);
            }
            if st.cqs.values().any(|q| q.channel == Some(channel)) {
                return err(libc::EBUSY);
            }
            st.channels.remove(&channel);
            reply(Resp::Ok)
        }
        Req::CreateCq {
            cqe,
            channel,
            cookie,
        } => create_cq(st, c, cqe, channel, cookie),
        Req::DestroyCq { cq } => {
            if !mine(&st.cqs, cq, c.id) {
                return err(libc::EINVAL);
            }
            if st.qps.values().any(|q| q.send_cq == cq || q.recv_cq == cq) {
                return err(libc::EBUSY);
            }
            st.cqs.remove(&cq);
            reply(Resp::Ok)
        }
        Req::ReqNotify { cq, solicited_only } => {
            st.arm_cq(cq, c.id, solicited_only);
            Action::Nothing
        }
        Req::CreateSrq {
            pd,
            max_wr,
            max_sge,
            limit,
            cookie,
        } => {
            if !mine(&st.pds, pd, c.id) {
                return err(libc::EINVAL);
            }
            if max_wr > MAX_WR || max_sge > MAX_SGE || limit > max_wr {
                return err(libc::EINVAL);
            }
            let (max_wr, max_sge) = (max_wr.max(1), max_sge.max(1));
            let h = st.new_handle();
            let srq = Srq {
                owner: c.id,
                pd,
                max_wr,
                max_sge,
                limit,
                cookie,
                queue: Default::default(),
                waiting: Vec::new(),
            };
            st.srqs.insert(h, srq);
            reply(Resp::Srq {
                handle: h,
                max_wr,
                max_sge,
            })
        }
        Req::ModifySrq {
            srq,
            mask,
            max_wr: _,
            limit,
        } => {
            let Some(s) = st.srqs.get_mut(&srq).filter(|s| s.owner == c.id) else {
                return err(libc::EINVAL);
            };
            if mask & 1 != 0 || mask & !3 != 0 {
                return err(libc::EINVAL);
            }
            if mask & 2 != 0 {
                if limit > s.max_wr {
                    return err(libc::EINVAL);
                }
                s.limit = limit;
            }
            reply(Resp::Ok)
        }
        Req::QuerySrq { srq } => match st.srqs.get(&srq).filter(|s| s.owner == c.id) {
            Some(s) => reply(Resp::SrqAttr {
                max_wr: s.max_wr,
                max_sge: s.max_sge,
                limit: s.limit,
            }),
            None => err(libc::EINVAL),
        },
        Req::DestroySrq { srq } => {
            if !mine(&st.srqs, srq, c.id) {
                return err(libc::EINVAL);
            }
            if st.qps.values().any(|q| q.srq == Some(srq)) {
                return err(libc::EBUSY);
            }
            st.srqs.remove(&srq);
            reply(Resp::Ok)
        }
        Req::PostSrqRecv { srq, wrs } => {
            datapath::post_srq_recv(st, c.id, srq, wrs);
            Action::Nothing
        }
        Req::CreateQp {
            pd,
            send_cq,
            recv_cq,
            srq,
            qp_type,
            cap,
            sq_sig_all,
            cookie,
        } => create_qp(
            st, c, pd, send_cq, recv_cq, srq, qp_type, cap, sq_sig_all, cookie,
        ),
        Req::ModifyQp { qpn, attr, mask } => modify_qp(st, c, qpn, &attr, mask),
        Req::QueryQp { qpn } => match st.qps.get(&qpn).filter(|q| q.owner == c.id) {
            Some(q) => {
                let mut attr = q.attr;
                attr.qp_state = q.state;
                attr.cur_qp_state = q.state;
                attr.cap = q.cap;
                reply(Resp::QpAttr {
                    attr,
                    cap: q.cap,
                    sq_sig_all: q.sq_sig_all,
                })
            }
            None => err(libc::EINVAL),
        },
        Req::DestroyQp { qpn } => {
            if !mine(&st.qps, qpn, c.id) {
                return err(libc::EINVAL);
            }
            datapath::destroy_qp(st, qpn);
            reply(Resp::Ok)
        }
        Req::CreateAh { pd, attr } => {
            if !mine(&st.pds, pd, c.id) {
                return err(libc::EINVAL);
            }
            if attr.port_num > 1 {
                return err(libc::EINVAL);
            }
            let h = st.new_handle();
            st.ahs.insert(
                h,
                Ah {
                    owner: c.id,
                    pd,
                    attr,
                },
            );
            reply(Resp::Handle(h))
        }
        Req::DestroyAh { ah } => {
            if !mine(&st.ahs, ah, c.id) {
                return err(libc::EINVAL);
            }
            st.ahs.remove(&ah);
            reply(Resp::Ok)
        }
        Req::PostSend { qpn, wrs } => {
            datapath::post_send(st, c.id, qpn, wrs);
            Action::Nothing
        }
        Req::PostRecv { qpn, wrs } => {
            datapath::post_recv(st, c.id, qpn, wrs);
            Action::Nothing
        }
    }
}

fn open(st: &mut State, c: &mut Conn, dev: u32) -> Action {
    if c.opened {
        return Action::Close;
    }
    let Some(info) = st.devices.get(dev as usize).cloned() else {
        return err(libc::ENODEV);
    };
    let Ok((ours, theirs)) = sys::socketpair(libc::SOCK_SEQPACKET) else {
        return err(libc::ENOMEM);
    };
    if sys::set_nonblock(ours.as_raw_fd(), true).is_err() {
        return err(libc::ENOMEM);
    }
    st.clients.insert(
        c.id,
        Client {
            dev: dev as usize,
            async_fd: ours,
        },
    );
    c.opened = true;
    Action::Reply(Resp::Opened { info }, Some(theirs))
}

fn reg_mr(st: &mut State, c: &Conn, pd: u32, addr: u64, len: u64, iova: u64, acc: u32) -> Action {
    if !mine(&st.pds, pd, c.id) {
        return err(libc::EINVAL);
    }
    let remote_needs_local = access::REMOTE_WRITE | access::REMOTE_ATOMIC;
    if acc & remote_needs_local != 0 && acc & access::LOCAL_WRITE == 0 {
        return err(libc::EINVAL);
    }
    if addr.checked_add(len).is_none() || iova.checked_add(len).is_none() || len > i64::MAX as u64 {
        return err(libc::EINVAL);
    }
    if len > 0 {
        let mut b = [0u8; 1];
        if sys::vm_read(c.pid, addr, &mut b).is_err()
            || sys::vm_read(c.pid, addr + len - 1, &mut b).is_err()
        {
            return err(libc::EFAULT);
        }
    }
    let Some(dev) = st.clients.get(&c.id).map(|cl| cl.dev) else {
        return err(libc::EINVAL);
    };
    let h = st.new_handle();
    let lkey = st.new_key();
    st.lkeys.insert(lkey, h);
    let rkey = st.new_rkey(dev);
    st.rkeys.insert((dev, rkey), h);
    st.mrs.insert(
        h,
        Mr {
            owner: c.id,
            pd,
            pid: c.pid,
            addr,
            len,
            iova,
            access: acc,
            lkey,
            rkey,
            dev,
        },
    );
    reply(Resp::Mr {
        handle: h,
        lkey,
        rkey,
    })
}

fn create_cq(st: &mut State, c: &Conn, cqe: u32, channel: Option<u32>, cookie: u64) -> Action {
    if cqe > MAX_CQE {
        return err(libc::EINVAL);
    }
    if let Some(ch) = channel {
        if !mine(&st.channels, ch, c.id) {
            return err(libc::EINVAL);
        }
    }
    // Like real HCAs, round up (to 2^n - 1): programs sized for hardware
    // may count on the slack.
    let capacity = ((cqe as u64 + 1).next_power_of_two() - 1).max(1) as u32;
    let Ok(fd) = sys::memfd("softib-cq", ring::bytes_for(capacity)) else {
        return err(libc::ENOMEM);
    };
    let Ok(ring) = Ring::map(fd.as_raw_fd(), capacity, true) else {
        return err(libc::ENOMEM);
    };
    let h = st.new_handle();
    st.cqs.insert(
        h,
        Cq {
            owner: c.id,
            ring,
            channel,
            cookie,
            armed: None,
            overflow_reported: false,
        },
    );
    Action::Reply(
        Resp::Cq {
            handle: h,
            cqe: capacity,
        },
        Some(fd),
    )
}

#[allow(clippy::too_many_arguments)]
fn create_qp(
    st: &mut State,
    c: &Conn,
    pd: u32,
    send_cq: u32,
    recv_cq: u32,
    srq: Option<u32>,
    kind: u32,
    cap: QpCap,
    sq_sig_all: bool,
    cookie: u64,
) -> Action {
    let own_cq = |h: u32| mine(&st.cqs, h, c.id);
    if !mine(&st.pds, pd, c.id) || !own_cq(send_cq) || !own_cq(recv_cq) {
        return err(libc::EINVAL);
    }
    if let Some(s) = srq {
        if !mine(&st.srqs, s, c.id) {
            return err(libc::EINVAL);
        }
    }
    if !matches!(kind, qp_type::RC | qp_type::UC | qp_type::UD) {
        return err(libc::EINVAL);
    }
    let recv_ok = srq.is_some() || (cap.max_recv_wr <= MAX_WR && cap.max_recv_sge <= MAX_SGE);
    if cap.max_send_wr > MAX_WR
        || cap.max_send_sge > MAX_SGE
        || cap.max_inline_data > proto::MAX_INLINE
        || !recv_ok
    {
        return err(libc::EINVAL);
    }
    let Some(dev) = st.clients.get(&c.id).map(|cl| cl.dev) else {
        return err(libc::EINVAL);
    };
    let cap = QpCap {
        max_send_wr: cap.max_send_wr.max(1),
        max_send_sge: cap.max_send_sge.max(1),
        max_recv_wr: if srq.is_some() {
            0
        } else {
            cap.max_recv_wr.max(1)
        },
        max_recv_sge: if srq.is_some() {
            0
        } else {
            cap.max_recv_sge.max(1)
        },
        max_inline_data: cap.max_inline_data,
    };
    let qpn = st.new_qpn();
    let uid = st.next_id();
    let qp = Qp {
        owner: c.id,
        uid,
        dev,
        pd,
        send_cq,
        recv_cq,
        srq,
        qp_type: kind,
        cap,
        sq_sig_all,
        cookie,
        state: qp_state::RESET,
        attr: QpAttr::default(),
        epoch: 0,
        next_seq: 1,
        sq: Default::default(),
        sq_stopped: false,
        rq: Default::default(),
        inbound: Default::default(),
        drop_src: None,
    };
    st.qps.insert(qpn, qp);
    st.qp_uids.insert(uid, qpn);
    reply(Resp::Qp { qpn, cap })
}

/// Attributes a transition requires; `None`: the transition is invalid.
fn required(kind: u32, cur: u32, new: u32) -> Option<u32> {
    use qp_mask::*;
    use qp_state::*;
    Some(match (cur, new) {
        (_, RESET) | (_, ERR) => 0,
        (RESET, INIT) if kind == qp_type::UD => PKEY_INDEX | PORT | QKEY,
        (RESET, INIT) => PKEY_INDEX | PORT | ACCESS_FLAGS,
        (INIT, INIT) | (RTS, RTS) => 0,
        (INIT, RTR) => match kind {
            qp_type::RC => AV | PATH_MTU | DEST_QPN | RQ_PSN | MAX_DEST_RD_ATOMIC | MIN_RNR_TIMER,
            qp_type::UC => AV | PATH_MTU | DEST_QPN | RQ_PSN,
            _ => 0,
        },
        (RTR, RTS) => match kind {
            qp_type::RC => SQ_PSN | TIMEOUT | RETRY_CNT | RNR_RETRY | MAX_QP_RD_ATOMIC,
            _ => SQ_PSN,
        },
        _ => return None,
    })
}

/// Applies the masked attributes to `a` (validated first by the caller).
fn apply_attrs(a: &mut QpAttr, n: &QpAttr, mask: u32) {
    use qp_mask::*;
    let has = |b: u32| mask & b != 0;
    if has(ACCESS_FLAGS) {
        a.qp_access_flags = n.qp_access_flags;
    }
    if has(PKEY_INDEX) {
        a.pkey_index = n.pkey_index;
    }
    if has(PORT) {
        a.port_num = n.port_num;
    }
    if has(QKEY) {
        a.qkey = n.qkey;
    }
    if has(AV) {
        a.ah_attr = n.ah_attr;
    }
    if has(PATH_MTU) {
        a.path_mtu = n.path_mtu;
    }
    if has(TIMEOUT) {
        a.timeout = n.timeout;
    }
    if has(RETRY_CNT) {
        a.retry_cnt = n.retry_cnt;
    }
    if has(RNR_RETRY) {
        a.rnr_retry = n.rnr_retry;
    }
    if has(RQ_PSN) {
        a.rq_psn = n.rq_psn & 0x00FF_FFFF;
    }
    if has(SQ_PSN) {
        a.sq_psn = n.sq_psn & 0x00FF_FFFF;
    }
    if has(MAX_QP_RD_ATOMIC) {
        a.max_rd_atomic = n.max_rd_atomic;
    }
    if has(MAX_DEST_RD_ATOMIC) {
        a.max_dest_rd_atomic = n.max_dest_rd_atomic;
    }
    if has(MIN_RNR_TIMER) {
        a.min_rnr_timer = n.min_rnr_timer;
    }
    if has(DEST_QPN) {
        a.dest_qp_num = n.dest_qp_num & 0x00FF_FFFF;
    }
}

fn valid_av(av: &AhAttr) -> bool {
    av.port_num <= 1
}

fn modify_qp(st: &mut State, c: &Conn, qpn: u32, attr: &QpAttr, mask: u32) -> Action {
    let Some(qp) = st.qps.get_mut(&qpn).filter(|q| q.owner == c.id) else {
        return err(libc::EINVAL);
    };
    let cur = qp.state;
    let new = if mask & qp_mask::STATE != 0 {
        attr.qp_state
    } else {
        cur
    };
    let Some(req) = required(qp.qp_type, cur, new) else {
        return err(libc::EINVAL);
    };
    if mask & req != req {
        return err(libc::EINVAL);
    }
    if (mask & qp_mask::PORT != 0 && attr.port_num != 1)
        || (mask & qp_mask::PKEY_INDEX != 0 && attr.pkey_index != 0)
        || (mask & qp_mask::AV != 0 && !valid_av(&attr.ah_attr))
        || (mask & qp_mask::PATH_MTU != 0 && !(1..=5).contains(&attr.path_mtu))
    {
        return err(libc::EINVAL);
    }
    apply_attrs(&mut qp.attr, attr, mask);
    match new {
        qp_state::RESET if cur != qp_state::RESET => datapath::reset(st, qpn),
        qp_state::ERR if cur != qp_state::ERR => datapath::to_error(st, qpn),
        _ => {
            qp.state = new;
            if cur == qp_state::INIT && new == qp_state::RTR {
                qp.drop_src = None;
                datapath::drain_inbound(st, qpn);
            }
        }
    }
    reply(Resp::Ok)
}
