//! The data path: what an HCA does with posted work requests.
//!
//! **Requester.** [`post_send`] turns each send WR into a [`Packet`]: the
//! local data is gathered from the program's memory (its MRs, by lkey) with
//! `process_vm_readv`, the destination is the QP's address vector (RC, UC)
//! or the WR's address handle (UD). A packet for a LID of this service is
//! delivered in-process ([`deliver`]); any other goes to the peer link of
//! that LID ([`super::peer`]). Every WR gets a [`SqEntry`] in the QP's send
//! queue; completions leave the queue in posting order ([`drain`]). RC
//! entries wait for the responder's [`Ack`]; UC and UD ones are done once
//! sent. Several packets of a QP may be in flight: nothing waits for an
//! ack before sending the next one.
//!
//! **Responder.** [`deliver`] finds the target QP. RC packets go through the
//! QP's inbound queue, processed strictly in order: the head waits while
//! the QP is not ready (RESET/INIT, until the requester's retry budget is
//! spent) or, for SEND and RDMA WRITE with immediate, while no receive WQE
//! is posted (until the requester's RNR retry budget is spent, forever for
//! `rnr_retry` 7); the timer thread ([`expire_timers`]) NAKs a head whose
//! deadline passed, and the packets queued behind it from the same
//! requester are dropped, as a real responder drops packets after a
//! sequence error. UC and UD packets that find no receive are dropped.
//! Memory of the target process is written directly (one-sided operations
//! run no code in it); atomics are serialized by the service lock.
//!
//! **Errors** move a QP to ERR ([`to_error`]): every outstanding send and
//! receive WR completes with `WR_FLUSH_ERR`, except the failing one, which
//! carries its own status. A packet that can get no answer (no such QP,
//! responder in ERR, unknown LID, broken link) is "lost"
//! ([`AckResult::Lost`]): as on hardware, the requester reports
//! RETRY_EXC_ERR only once its retry budget (`timeout`, `retry_cnt`) is
//! spent, so a program whose peer exits right after the last message it
//! needed does not see an error it would not see on a real HCA.

use std::cmp::Reverse;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::peer::{self, PeerMsg};
use super::state::{Held, Origin, SqEntry, State, Wait};
use crate::proto::{
    access, event, qp_state, qp_type, send_flags, wc_flags, wc_opcode, wc_status, wr_opcode,
    RecvWr, SendWr, Sge, GRH_BYTES, MAX_INLINE, MAX_MSG_SIZE, PORT_MTU,
};
use crate::ring::Wc;
use crate::sys;

/// A piece of a process's memory, as the device reaches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Seg {
    pub pid: i32,
    pub addr: u64,
    pub len: u64,
}

/// The requester QP a packet comes from, and what the responder needs of it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Src {
    /// The requester's service-unique QP id: acks name it.
    pub uid: u64,
    pub epoch: u32,
    pub seq: u64,
    pub qpn: u32,
    pub lid: u16,
    pub gid: [u8; 16],
    pub sl: u8,
    pub qp_type: u32,
    pub rnr_retry: u8,
    pub timeout: u8,
    pub retry_cnt: u8,
}

/// UD: what the receiver checks and reports.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct UdInfo {
    pub qkey: u32,
    pub grh: Option<Grh>,
}

/// The sender's global routing fields (address handle with `is_global`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Grh {
    pub traffic_class: u8,
    pub flow_label: u32,
    pub hop_limit: u8,
    pub dgid: [u8; 16],
}

/// One operation on the wire.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) enum Op {
    Send {
        data: Vec<u8>,
        imm: Option<u32>,
        solicited: bool,
        ud: Option<UdInfo>,
    },
    Write {
        addr: u64,
        rkey: u32,
        data: Vec<u8>,
        imm: Option<u32>,
        solicited: bool,
    },
    Read {
        addr: u64,
        rkey: u32,
        len: u32,
    },
    CmpSwap {
        addr: u64,
        rkey: u32,
        compare: u64,
        swap: u64,
    },
    FetchAdd {
        addr: u64,
        rkey: u32,
        add: u64,
    },
}

/// A packet for a responder QP.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Packet {
    pub dlid: u16,
    pub dqpn: u32,
    pub src: Src,
    pub op: Op,
}

/// The responder's answer to an RC packet.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) enum AckResult {
    Ok,
    /// READ data or the original value of an atomic.
    Data(Vec<u8>),
    /// The requester's completion status.
    Nak(u32),
    /// The packet was dropped (no such QP, QP not able to receive): a real
    /// responder says nothing and the requester gives up after its retry
    /// budget, so that is when the requester reports RETRY_EXC_ERR.
    Lost,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Ack {
    pub uid: u64,
    pub seq: u64,
    pub result: AckResult,
}

/// Reads `segs` one after the other.
fn read_segs(segs: &[Seg]) -> std::io::Result<Vec<u8>> {
    let total: u64 = segs.iter().map(|s| s.len).sum();
    let mut data = vec![0u8; total as usize];
    let mut off = 0usize;
    for s in segs {
        let n = s.len as usize;
        sys::vm_read(s.pid, s.addr, &mut data[off..off + n])?;
        off += n;
    }
    Ok(data)
}

/// Writes `data` into the concatenation of `segs`, from byte `skip` on.
/// The caller checked that it fits.
fn write_segs(segs: &[Seg], mut skip: u64, mut data: &[u8]) -> std::io::Result<()> {
    for s in segs {
        if data.is_empty() {
            break;
        }
        if skip >= s.len {
            skip -= s.len;
            continue;
        }
        let room = (s.len - skip) as usize;
        let n = room.min(data.len());
        sys::vm_write(s.pid, s.addr + skip, &data[..n])?;
        data = &data[n..];
        skip = 0;
    }
    Ok(())
}

/// Resolves local SGEs through their lkeys: the MR must exist, belong to
/// `pd`, cover the range and (`write`) allow LOCAL_WRITE.
fn resolve_local(st: &State, pd: u32, sg: &[Sge], write: bool) -> Option<Vec<Seg>> {
    let mut out = Vec::with_capacity(sg.len());
    for s in sg {
        if s.length == 0 {
            continue;
        }
        let mr = st.lkeys.get(&s.lkey).and_then(|h| st.mrs.get(h))?;
        if mr.pd != pd || (write && mr.access & access::LOCAL_WRITE == 0) {
            return None;
        }
        out.push(mr.seg(s.addr, s.length as u64)?);
    }
    Some(out)
}

fn sum_len(sg: &[Sge]) -> u64 {
    sg.iter().map(|s| s.length as u64).sum()
}

/// The completion opcode of a send WR opcode.
fn wc_opcode_of(op: u32) -> Option<u32> {
    Some(match op {
        wr_opcode::SEND | wr_opcode::SEND_WITH_IMM => wc_opcode::SEND,
        wr_opcode::RDMA_WRITE | wr_opcode::RDMA_WRITE_WITH_IMM => wc_opcode::RDMA_WRITE,
        wr_opcode::RDMA_READ => wc_opcode::RDMA_READ,
        wr_opcode::ATOMIC_CMP_AND_SWP => wc_opcode::COMP_SWAP,
        wr_opcode::ATOMIC_FETCH_AND_ADD => wc_opcode::FETCH_ADD,
        _ => return None,
    })
}

/// What the requester QP contributes to a packet (copied out of the QP so
/// the state's other maps can be used meanwhile).
struct ReqQp {
    owner: u64,
    pd: u32,
    dev: usize,
    qp_type: u32,
    uid: u64,
    epoch: u32,
    qpn: u32,
    qkey: u32,
    dlid: u16,
    dqpn: u32,
    sl: u8,
    rnr_retry: u8,
    timeout: u8,
    retry_cnt: u8,
}

/// A packet ready to go, and what its send queue entry keeps.
struct Built {
    pkt: Packet,
    scatter: Vec<Seg>,
    byte_len: u32,
}

/// Builds the packet of one send WR; `Err(status)` for a local error.
fn build(st: &State, q: &ReqQp, seq: u64, wr: SendWr) -> Result<Built, u32> {
    let allowed = match q.qp_type {
        qp_type::UD => matches!(wr.opcode, wr_opcode::SEND | wr_opcode::SEND_WITH_IMM),
        qp_type::UC => matches!(
            wr.opcode,
            wr_opcode::SEND
                | wr_opcode::SEND_WITH_IMM
                | wr_opcode::RDMA_WRITE
                | wr_opcode::RDMA_WRITE_WITH_IMM
        ),
        _ => wc_opcode_of(wr.opcode).is_some(),
    };
    if !allowed {
        return Err(wc_status::LOC_QP_OP_ERR);
    }
    let imm = matches!(
        wr.opcode,
        wr_opcode::SEND_WITH_IMM | wr_opcode::RDMA_WRITE_WITH_IMM
    )
    .then_some(wr.imm);
    let solicited = wr.flags & send_flags::SOLICITED != 0;
    let mut scatter = Vec::new();
    let gather = |sg: &[Sge], inline: Vec<u8>, flags: u32| -> Result<Vec<u8>, u32> {
        if flags & send_flags::INLINE != 0 {
            if inline.len() > MAX_INLINE as usize {
                return Err(wc_status::LOC_LEN_ERR);
            }
            return Ok(inline);
        }
        if sum_len(sg) > MAX_MSG_SIZE {
            return Err(wc_status::LOC_LEN_ERR);
        }
        let segs = resolve_local(st, q.pd, sg, false).ok_or(wc_status::LOC_PROT_ERR)?;
        read_segs(&segs).map_err(|_| wc_status::LOC_PROT_ERR)
    };
    let (mut dlid, mut dqpn, mut sl) = (q.dlid, q.dqpn, q.sl);
    let (op, byte_len) = match wr.opcode {
        wr_opcode::SEND | wr_opcode::SEND_WITH_IMM => {
            let data = gather(&wr.sg, wr.inline, wr.flags)?;
            let ud = if q.qp_type == qp_type::UD {
                if data.len() > PORT_MTU as usize {
                    return Err(wc_status::LOC_LEN_ERR);
                }
                let ah = st
                    .ahs
                    .get(&wr.ah)
                    .filter(|a| a.owner == q.owner)
                    .ok_or(wc_status::LOC_QP_OP_ERR)?;
                dlid = ah.attr.dlid;
                sl = ah.attr.sl;
                dqpn = wr.remote_qpn & 0x00FF_FFFF;
                let qkey = if wr.remote_qkey & 0x8000_0000 != 0 {
                    q.qkey
                } else {
                    wr.remote_qkey
                };
                let grh = ah.attr.is_global.then_some(Grh {
                    traffic_class: ah.attr.traffic_class,
                    flow_label: ah.attr.flow_label,
                    hop_limit: ah.attr.hop_limit,
                    dgid: ah.attr.dgid,
                });
                Some(UdInfo { qkey, grh })
            } else {
                None
            };
            let n = data.len() as u32;
            (
                Op::Send {
                    data,
                    imm,
                    solicited,
                    ud,
                },
                n,
            )
        }
        wr_opcode::RDMA_WRITE | wr_opcode::RDMA_WRITE_WITH_IMM => {
            let data = gather(&wr.sg, wr.inline, wr.flags)?;
            let n = data.len() as u32;
            (
                Op::Write {
                    addr: wr.remote_addr,
                    rkey: wr.rkey,
                    data,
                    imm,
                    solicited,
                },
                n,
            )
        }
        wr_opcode::RDMA_READ => {
            let total = sum_len(&wr.sg);
            if total > MAX_MSG_SIZE {
                return Err(wc_status::LOC_LEN_ERR);
            }
            scatter = resolve_local(st, q.pd, &wr.sg, true).ok_or(wc_status::LOC_PROT_ERR)?;
            (
                Op::Read {
                    addr: wr.remote_addr,
                    rkey: wr.rkey,
                    len: total as u32,
                },
                total as u32,
            )
        }
        _ => {
            if sum_len(&wr.sg) != 8 {
                return Err(wc_status::LOC_LEN_ERR);
            }
            scatter = resolve_local(st, q.pd, &wr.sg, true).ok_or(wc_status::LOC_PROT_ERR)?;
            let op = if wr.opcode == wr_opcode::ATOMIC_CMP_AND_SWP {
                Op::CmpSwap {
                    addr: wr.remote_addr,
                    rkey: wr.rkey,
                    compare: wr.compare_add,
                    swap: wr.swap,
                }
            } else {
                Op::FetchAdd {
                    addr: wr.remote_addr,
                    rkey: wr.rkey,
                    add: wr.compare_add,
                }
            };
            (op, 8)
        }
    };
    let dev = &st.devices[q.dev];
    let src = Src {
        uid: q.uid,
        epoch: q.epoch,
        seq,
        qpn: q.qpn,
        lid: dev.lid,
        gid: dev.gid,
        sl,
        qp_type: q.qp_type,
        rnr_retry: q.rnr_retry,
        timeout: q.timeout,
        retry_cnt: q.retry_cnt,
    };
    Ok(Built {
        pkt: Packet {
            dlid,
            dqpn,
            src,
            op,
        },
        scatter,
        byte_len,
    })
}

/// A completion of QP `qpn`.
fn wc(wr_id: u64, status: u32, opcode: u32, byte_len: u32, qpn: u32) -> Wc {
    Wc {
        wr_id,
        status,
        opcode,
        byte_len,
        qp_num: qpn,
        ..Wc::default()
    }
}

/// Processes a PostSend of context `cid`. WRs on a QP it does not own, or
/// on a QP that is not in RTS (the library checks that), are dropped; on a
/// QP in ERR they complete with WR_FLUSH_ERR.
pub(crate) fn post_send(st: &mut State, cid: u64, qpn: u32, wrs: Vec<SendWr>) {
    for wr in wrs {
        post_one(st, cid, qpn, wr);
    }
}

fn post_one(st: &mut State, cid: u64, qpn: u32, wr: SendWr) {
    let Some(qp) = st.qps.get_mut(&qpn).filter(|q| q.owner == cid) else {
        return;
    };
    let signaled = qp.sq_sig_all || wr.flags & send_flags::SIGNALED != 0;
    let opcode = wc_opcode_of(wr.opcode).unwrap_or(wc_opcode::SEND);
    if qp.state == qp_state::ERR {
        let (cq, w) = (
            qp.send_cq,
            wc(wr.wr_id, wc_status::WR_FLUSH_ERR, opcode, 0, qpn),
        );
        st.complete(cq, &w, false);
        return;
    }
    if qp.state != qp_state::RTS {
        return;
    }
    let seq = qp.next_seq;
    qp.next_seq += 1;
    let mut entry = SqEntry {
        seq,
        wr_id: wr.wr_id,
        opcode,
        signaled,
        byte_len: 0,
        status: None,
        lost: false,
        scatter: Vec::new(),
        link: None,
    };
    if qp.sq_stopped {
        entry.status = Some(wc_status::WR_FLUSH_ERR);
        qp.sq.push_back(entry);
        return;
    }
    let q = ReqQp {
        owner: qp.owner,
        pd: qp.pd,
        dev: qp.dev,
        qp_type: qp.qp_type,
        uid: qp.uid,
        epoch: qp.epoch,
        qpn,
        qkey: qp.attr.qkey,
        dlid: qp.attr.ah_attr.dlid,
        dqpn: qp.attr.dest_qp_num,
        sl: qp.attr.ah_attr.sl,
        rnr_retry: qp.attr.rnr_retry,
        timeout: qp.attr.timeout,
        retry_cnt: qp.attr.retry_cnt,
    };
    let built = match build(st, &q, seq, wr) {
        Ok(b) => b,
        Err(status) => {
            if let Some(qp) = st.qps.get_mut(&qpn) {
                entry.status = Some(status);
                qp.sq.push_back(entry);
                qp.sq_stopped = true;
            }
            drain(st, qpn);
            return;
        }
    };
    let rc = q.qp_type == qp_type::RC;
    entry.byte_len = built.byte_len;
    entry.scatter = built.scatter;
    if !rc {
        entry.status = Some(wc_status::SUCCESS);
    }
    let dlid = built.pkt.dlid;
    if st.dev_by_lid(dlid).is_some() {
        if let Some(qp) = st.qps.get_mut(&qpn) {
            qp.sq.push_back(entry);
        }
        deliver(st, Origin::Local, built.pkt);
    } else {
        let link = peer::send_to_lid(st, dlid, PeerMsg::Deliver(built.pkt));
        entry.link = link.filter(|_| rc);
        let unreachable = link.is_none();
        if let Some(qp) = st.qps.get_mut(&qpn) {
            qp.sq.push_back(entry);
        }
        if rc && unreachable {
            lose(st, qpn, seq);
        }
    }
    drain(st, qpn);
}

/// Delivers the completions at the front of `qpn`'s send queue that are
/// done, in order; the first error moves the QP to ERR.
pub(crate) fn drain(st: &mut State, qpn: u32) {
    loop {
        let Some(qp) = st.qps.get_mut(&qpn) else {
            return;
        };
        let Some(status) = qp.sq.front().and_then(|e| e.status) else {
            return;
        };
        let Some(e) = qp.sq.pop_front() else { return };
        let cq = qp.send_cq;
        if status != wc_status::SUCCESS {
            st.complete(cq, &wc(e.wr_id, status, e.opcode, e.byte_len, qpn), false);
            to_error(st, qpn);
            return;
        }
        if e.signaled {
            st.complete(cq, &wc(e.wr_id, status, e.opcode, e.byte_len, qpn), false);
        }
    }
}

/// Moves `qpn` to ERR: flushes its send queue, its receive queue (not an
/// SRQ's); the packets held at it are lost.
pub(crate) fn to_error(st: &mut State, qpn: u32) {
    let Some(qp) = st.qps.get_mut(&qpn) else {
        return;
    };
    qp.state = qp_state::ERR;
    qp.sq_stopped = false;
    let sq: Vec<SqEntry> = qp.sq.drain(..).collect();
    let rq: Vec<RecvWr> = qp.rq.drain(..).collect();
    let held: Vec<Held> = qp.inbound.drain(..).collect();
    let (send_cq, recv_cq, srq) = (qp.send_cq, qp.recv_cq, qp.srq);
    for e in sq {
        st.complete(
            send_cq,
            &wc(e.wr_id, wc_status::WR_FLUSH_ERR, e.opcode, 0, qpn),
            false,
        );
    }
    for r in rq {
        st.complete(
            recv_cq,
            &wc(r.wr_id, wc_status::WR_FLUSH_ERR, wc_opcode::RECV, 0, qpn),
            false,
        );
    }
    // No QP_LAST_WQE_REACHED for SRQ QPs: events name the QP by the
    // library's pointer, and nothing makes a destroy wait for the events
    // already queued, so an event nobody asked for could reach a program
    // after it freed the QP.
    if let Some(s) = srq.and_then(|s| st.srqs.get_mut(&s)) {
        s.waiting.retain(|&q| q != qpn);
    }
    for h in held {
        reply(st, h.origin, &h.pkt.src, AckResult::Lost);
    }
}

/// Moves `qpn` to RESET: queues are emptied without completions.
pub(crate) fn reset(st: &mut State, qpn: u32) {
    let Some(qp) = st.qps.get_mut(&qpn) else {
        return;
    };
    qp.state = qp_state::RESET;
    qp.sq.clear();
    qp.rq.clear();
    qp.sq_stopped = false;
    qp.epoch = qp.epoch.wrapping_add(1);
    qp.drop_src = None;
    let held: Vec<Held> = qp.inbound.drain(..).collect();
    if let Some(s) = qp.srq.and_then(|s| st.srqs.get_mut(&s)) {
        s.waiting.retain(|&q| q != qpn);
    }
    for h in held {
        reply(st, h.origin, &h.pkt.src, AckResult::Lost);
    }
}

/// Destroys `qpn`: the packets held at it are lost (their requesters get
/// RETRY_EXC_ERR after their retry budget); acks for its own requests that
/// arrive later are ignored.
pub(crate) fn destroy_qp(st: &mut State, qpn: u32) {
    let Some(mut qp) = st.qps.remove(&qpn) else {
        return;
    };
    st.qp_uids.remove(&qp.uid);
    if let Some(s) = qp.srq.and_then(|s| st.srqs.get_mut(&s)) {
        s.waiting.retain(|&q| q != qpn);
    }
    for h in qp.inbound.drain(..) {
        reply(st, h.origin, &h.pkt.src, AckResult::Lost);
    }
}

/// Posts receive WRs to a QP (dropped in RESET; flushed in ERR).
pub(crate) fn post_recv(st: &mut State, cid: u64, qpn: u32, wrs: Vec<RecvWr>) {
    let Some(qp) = st
        .qps
        .get_mut(&qpn)
        .filter(|q| q.owner == cid && q.srq.is_none())
    else {
        return;
    };
    match qp.state {
        qp_state::RESET => {}
        qp_state::ERR => {
            let cq = qp.recv_cq;
            for r in wrs {
                st.complete(
                    cq,
                    &wc(r.wr_id, wc_status::WR_FLUSH_ERR, wc_opcode::RECV, 0, qpn),
                    false,
                );
            }
        }
        _ => {
            qp.rq.extend(wrs);
            if !qp.inbound.is_empty() {
                drain_inbound(st, qpn);
            }
        }
    }
}

/// Posts receive WRs to an SRQ and lets the QPs waiting for one go on.
pub(crate) fn post_srq_recv(st: &mut State, cid: u64, srq: u32, wrs: Vec<RecvWr>) {
    let Some(s) = st.srqs.get_mut(&srq).filter(|s| s.owner == cid) else {
        return;
    };
    s.queue.extend(wrs);
    let waiting = std::mem::take(&mut s.waiting);
    for qpn in waiting {
        drain_inbound(st, qpn);
    }
}

/// What the responder QP contributes (copied out).
struct RespQp {
    qpn: u32,
    /// Its device (rkeys are looked up on it).
    dev: usize,
    owner: u64,
    pd: u32,
    srq: Option<u32>,
    recv_cq: u32,
    qp_type: u32,
    access: u32,
    qkey: u32,
    cookie: u64,
}

fn resp_qp(st: &State, qpn: u32) -> Option<RespQp> {
    let qp = st.qps.get(&qpn)?;
    Some(RespQp {
        qpn,
        dev: qp.dev,
        owner: qp.owner,
        pd: qp.pd,
        srq: qp.srq,
        recv_cq: qp.recv_cq,
        qp_type: qp.qp_type,
        access: qp.attr.qp_access_flags,
        qkey: qp.attr.qkey,
        cookie: qp.cookie,
    })
}

fn has_recv(st: &State, r: &RespQp) -> bool {
    match r.srq {
        Some(s) => st.srqs.get(&s).is_some_and(|s| !s.queue.is_empty()),
        None => st.qps.get(&r.qpn).is_some_and(|q| !q.rq.is_empty()),
    }
}

/// Takes the next receive WQE (and the PD its SGEs are checked against);
/// raises SRQ_LIMIT_REACHED when an armed SRQ drops below its limit.
fn take_recv(st: &mut State, r: &RespQp) -> Option<(RecvWr, u32)> {
    match r.srq {
        Some(h) => {
            let s = st.srqs.get_mut(&h)?;
            let wr = s.queue.pop_front()?;
            let pd = s.pd;
            if s.limit > 0 && (s.queue.len() as u64) < s.limit as u64 {
                s.limit = 0;
                let (owner, cookie) = (s.owner, s.cookie);
                st.async_event(owner, event::SRQ_LIMIT_REACHED, cookie);
            }
            Some((wr, pd))
        }
        None => st.qps.get_mut(&r.qpn)?.rq.pop_front().map(|wr| (wr, r.pd)),
    }
}

/// The target range of a remote access, if the rkey allows it: an MR of
/// the responder QP's PD with `need`, covering the range, on a QP whose
/// access flags allow `need`.
fn check_rkey(st: &State, r: &RespQp, rkey: u32, addr: u64, len: u64, need: u32) -> Option<Seg> {
    if r.access & need == 0 {
        return None;
    }
    let mr = st.rkeys.get(&(r.dev, rkey)).and_then(|h| st.mrs.get(h))?;
    if mr.access & need == 0 || mr.pd != r.pd {
        return None;
    }
    mr.seg(addr, len)
}

/// A responder-side failure of a receive: the receive completes with
/// `status`, the QP goes to ERR.
fn recv_error(st: &mut State, r: &RespQp, wr_id: u64, status: u32) {
    st.complete(
        r.recv_cq,
        &wc(wr_id, status, wc_opcode::RECV, 0, r.qpn),
        false,
    );
    to_error(st, r.qpn);
}

/// A remote access violation: RC responders go to ERR with an async
/// QP_ACCESS_ERR; the requester gets `status`.
fn access_error(st: &mut State, r: &RespQp, status: u32) -> AckResult {
    if r.qp_type == qp_type::RC {
        st.async_event(r.owner, event::QP_ACCESS_ERR, r.cookie);
        to_error(st, r.qpn);
    }
    AckResult::Nak(status)
}

/// The 40-byte global route header a UD receive starts with.
fn grh_bytes(g: &Grh, len: usize, sgid: &[u8; 16], dgid: &[u8; 16]) -> [u8; 40] {
    let mut h = [0u8; 40];
    let word = (6u32 << 28) | ((g.traffic_class as u32) << 20) | (g.flow_label & 0xF_FFFF);
    h[0..4].copy_from_slice(&word.to_be_bytes());
    h[4..6].copy_from_slice(&(len as u16).to_be_bytes());
    h[6] = 0x1B;
    h[7] = g.hop_limit;
    h[8..24].copy_from_slice(sgid);
    h[24..40].copy_from_slice(dgid);
    h
}

/// Executes one packet at responder QP `qpn` (in RTR or RTS). `Err(())`:
/// it needs a receive WQE and none is posted (nothing was changed).
fn respond(st: &mut State, qpn: u32, pkt: &Packet) -> Result<AckResult, ()> {
    let Some(r) = resp_qp(st, qpn) else {
        return Ok(AckResult::Lost);
    };
    let src = &pkt.src;
    let recv_wc = |wr_id: u64, opcode: u32, byte_len: u32, flags: u32, imm: u32| Wc {
        wr_id,
        status: wc_status::SUCCESS,
        opcode,
        byte_len,
        imm_data: imm,
        qp_num: qpn,
        src_qp: src.qpn,
        wc_flags: flags,
        slid: src.lid,
        sl: src.sl,
        ..Wc::default()
    };
    match &pkt.op {
        Op::Send {
            data,
            imm,
            solicited,
            ud,
        } => {
            if let Some(u) = ud {
                if u.qkey != r.qkey || data.len() > PORT_MTU as usize {
                    return Ok(AckResult::Ok);
                }
            }
            let Some((rwr, pd)) = take_recv(st, &r) else {
                return Err(());
            };
            let Some(segs) = resolve_local(st, pd, &rwr.sg, true) else {
                recv_error(st, &r, rwr.wr_id, wc_status::LOC_PROT_ERR);
                return Ok(AckResult::Nak(wc_status::REM_OP_ERR));
            };
            let room: u64 = segs.iter().map(|s| s.len).sum();
            let off = if ud.is_some() { GRH_BYTES as u64 } else { 0 };
            if data.len() as u64 + off > room {
                recv_error(st, &r, rwr.wr_id, wc_status::LOC_LEN_ERR);
                return Ok(AckResult::Nak(wc_status::REM_INV_REQ_ERR));
            }
            let mut flags = if imm.is_some() { wc_flags::WITH_IMM } else { 0 };
            let mut written = Ok(());
            if let Some(g) = ud.as_ref().and_then(|u| u.grh.as_ref()) {
                flags |= wc_flags::GRH;
                let dgid = st
                    .qps
                    .get(&qpn)
                    .map(|q| st.devices[q.dev].gid)
                    .unwrap_or(g.dgid);
                written = write_segs(&segs, 0, &grh_bytes(g, data.len(), &src.gid, &dgid));
            }
            if written.and_then(|_| write_segs(&segs, off, data)).is_err() {
                recv_error(st, &r, rwr.wr_id, wc_status::LOC_PROT_ERR);
                return Ok(AckResult::Nak(wc_status::REM_OP_ERR));
            }
            let w = recv_wc(
                rwr.wr_id,
                wc_opcode::RECV,
                (data.len() as u64 + off) as u32,
                flags,
                imm.unwrap_or(0),
            );
            st.complete(r.recv_cq, &w, *solicited);
            Ok(AckResult::Ok)
        }
        Op::Write {
            addr,
            rkey,
            data,
            imm,
            solicited,
        } => {
            let target = if data.is_empty() {
                None
            } else {
                match check_rkey(
                    st,
                    &r,
                    *rkey,
                    *addr,
                    data.len() as u64,
                    access::REMOTE_WRITE,
                ) {
                    Some(s) => Some(s),
                    None => return Ok(access_error(st, &r, wc_status::REM_ACCESS_ERR)),
                }
            };
            if imm.is_some() && !has_recv(st, &r) {
                return Err(());
            }
            if let Some(t) = target {
                if sys::vm_write(t.pid, t.addr, data).is_err() {
                    return Ok(access_error(st, &r, wc_status::REM_ACCESS_ERR));
                }
            }
            if let Some(imm) = imm {
                if let Some((rwr, _)) = take_recv(st, &r) {
                    let w = recv_wc(
                        rwr.wr_id,
                        wc_opcode::RECV_RDMA_WITH_IMM,
                        data.len() as u32,
                        wc_flags::WITH_IMM,
                        *imm,
                    );
                    st.complete(r.recv_cq, &w, *solicited);
                }
            }
            Ok(AckResult::Ok)
        }
        Op::Read { addr, rkey, len } => {
            if *len == 0 {
                return Ok(AckResult::Data(Vec::new()));
            }
            let Some(t) = check_rkey(st, &r, *rkey, *addr, *len as u64, access::REMOTE_READ) else {
                return Ok(access_error(st, &r, wc_status::REM_ACCESS_ERR));
            };
            match read_segs(&[t]) {
                Ok(d) => Ok(AckResult::Data(d)),
                Err(_) => Ok(access_error(st, &r, wc_status::REM_ACCESS_ERR)),
            }
        }
        Op::CmpSwap { addr, rkey, .. } | Op::FetchAdd { addr, rkey, .. } => {
            if addr % 8 != 0 {
                return Ok(access_error(st, &r, wc_status::REM_INV_REQ_ERR));
            }
            let Some(t) = check_rkey(st, &r, *rkey, *addr, 8, access::REMOTE_ATOMIC) else {
                return Ok(access_error(st, &r, wc_status::REM_ACCESS_ERR));
            };
            let mut old = [0u8; 8];
            if sys::vm_read(t.pid, t.addr, &mut old).is_err() {
                return Ok(access_error(st, &r, wc_status::REM_ACCESS_ERR));
            }
            let cur = u64::from_ne_bytes(old);
            let new = match pkt.op {
                Op::CmpSwap { compare, swap, .. } => (cur == compare).then_some(swap),
                Op::FetchAdd { add, .. } => Some(cur.wrapping_add(add)),
                _ => None,
            };
            if let Some(n) = new {
                if sys::vm_write(t.pid, t.addr, &n.to_ne_bytes()).is_err() {
                    return Ok(access_error(st, &r, wc_status::REM_ACCESS_ERR));
                }
            }
            Ok(AckResult::Data(old.to_vec()))
        }
    }
}

/// Sends the answer to an RC packet back to its requester.
pub(crate) fn reply(st: &mut State, origin: Origin, src: &Src, result: AckResult) {
    if src.qp_type != qp_type::RC {
        return;
    }
    let ack = Ack {
        uid: src.uid,
        seq: src.seq,
        result,
    };
    match origin {
        Origin::Local => apply_ack(st, ack),
        Origin::Conn(id) => {
            if let Some(tx) = st.inbound.get(&id) {
                let _ = tx.send(PeerMsg::Ack(ack));
            }
        }
    }
}

/// A packet arrives at this service (from a local QP or a peer).
pub(crate) fn deliver(st: &mut State, origin: Origin, pkt: Packet) {
    let rc = pkt.src.qp_type == qp_type::RC;
    let target = st.dev_by_lid(pkt.dlid).and_then(|dev| {
        st.qps
            .get(&pkt.dqpn)
            .filter(|q| q.dev == dev && q.qp_type == pkt.src.qp_type)
            .map(|q| (q.state, q.attr.dest_qp_num))
    });
    let Some((state, dest_qpn)) = target else {
        reply(st, origin, &pkt.src, AckResult::Lost);
        return;
    };
    let qpn = pkt.dqpn;
    if !rc {
        let ready = matches!(state, qp_state::RTR | qp_state::RTS);
        if ready && (pkt.src.qp_type == qp_type::UD || pkt.src.qpn == dest_qpn) {
            let _ = respond(st, qpn, &pkt);
        }
        return;
    }
    if !matches!(
        state,
        qp_state::RESET | qp_state::INIT | qp_state::RTR | qp_state::RTS
    ) {
        reply(st, origin, &pkt.src, AckResult::Lost);
        return;
    }
    let id = st.next_id();
    let Some(qp) = st.qps.get_mut(&qpn) else {
        return;
    };
    if qp.drop_src == Some((origin, pkt.src.uid, pkt.src.epoch)) {
        return;
    }
    qp.inbound.push_back(Held {
        id,
        origin,
        pkt,
        blocked: None,
    });
    if qp.inbound.len() == 1 {
        drain_inbound(st, qpn);
    }
}

/// Processes the RC packets queued at `qpn` in order, until one has to wait.
pub(crate) fn drain_inbound(st: &mut State, qpn: u32) {
    loop {
        let Some(qp) = st.qps.get_mut(&qpn) else {
            return;
        };
        let (state, dest) = (qp.state, qp.attr.dest_qp_num);
        if qp.inbound.is_empty() {
            return;
        }
        if matches!(state, qp_state::RESET | qp_state::INIT) {
            block(st, qpn, Wait::NotReady);
            return;
        }
        if !matches!(state, qp_state::RTR | qp_state::RTS) {
            return;
        }
        let Some(held) = qp.inbound.pop_front() else {
            return;
        };
        if held.pkt.src.qpn != dest {
            // Not from the QP this one is connected to: a real responder
            // drops it, its requester times out.
            reply(st, held.origin, &held.pkt.src, AckResult::Lost);
            continue;
        }
        match respond(st, qpn, &held.pkt) {
            Ok(result) => reply(st, held.origin, &held.pkt.src, result),
            Err(()) => {
                if let Some(qp) = st.qps.get_mut(&qpn) {
                    qp.inbound.push_front(held);
                    block(st, qpn, Wait::Rnr);
                }
                return;
            }
        }
    }
}

/// One step of the IB RNR timer (`min_rnr_timer` encoding).
fn rnr_step(code: u8) -> Duration {
    const US: [u32; 32] = [
        655_360, 10, 20, 30, 40, 60, 80, 120, 160, 240, 320, 480, 640, 960, 1_280, 1_920, 2_560,
        3_840, 5_120, 7_680, 10_240, 15_360, 20_480, 30_720, 40_960, 61_440, 81_920, 122_880,
        163_840, 245_760, 327_680, 491_520,
    ];
    Duration::from_micros(US[(code & 31) as usize] as u64)
}

/// Shortest wait per RNR retry: the emulated device is slower than a real
/// one, so the IB timer values are stretched to at least this.
const MIN_RNR_STEP: Duration = Duration::from_millis(4);
/// Shortest wait per transport retry (not-ready responder).
const MIN_RETRY_STEP: Duration = Duration::from_millis(20);

/// Marks the head of `qpn`'s inbound queue as waiting for `why`; starts its
/// deadline if it was not already waiting for that.
fn block(st: &mut State, qpn: u32, why: Wait) {
    let Some(qp) = st.qps.get_mut(&qpn) else {
        return;
    };
    let min_rnr = qp.attr.min_rnr_timer;
    let srq = qp.srq;
    let Some(head) = qp.inbound.front_mut() else {
        return;
    };
    if why == Wait::Rnr {
        if let Some(s) = srq.and_then(|s| st.srqs.get_mut(&s)) {
            if !s.waiting.contains(&qpn) {
                s.waiting.push(qpn);
            }
        }
    }
    if head.blocked == Some(why) {
        return;
    }
    head.blocked = Some(why);
    let src = head.pkt.src;
    let deadline = match why {
        Wait::Rnr if src.rnr_retry >= 7 => None,
        Wait::Rnr => Some(rnr_step(min_rnr).max(MIN_RNR_STEP) * (src.rnr_retry as u32 + 1)),
        Wait::NotReady => retry_budget(src.timeout, src.retry_cnt),
    };
    if let Some(d) = deadline {
        let id = head.id;
        st.timers.push(Reverse((Instant::now() + d, qpn, id)));
        st.wake_timer();
    }
}

/// Runs the deadlines that passed (responders' waiting heads, requesters'
/// lost packets); returns when the next one is due.
pub(crate) fn expire_timers(st: &mut State) -> Option<Instant> {
    let now = Instant::now();
    while let Some(&Reverse((when, uid, seq))) = st.req_timers.peek() {
        if when > now {
            break;
        }
        st.req_timers.pop();
        let Some(&qpn) = st.qp_uids.get(&uid) else {
            continue;
        };
        let Some(qp) = st.qps.get_mut(&qpn) else {
            continue;
        };
        let Some(e) = qp
            .sq
            .iter_mut()
            .find(|e| e.seq == seq && e.status.is_none())
        else {
            continue;
        };
        e.status = Some(wc_status::RETRY_EXC_ERR);
        qp.sq_stopped = true;
        drain(st, qpn);
    }
    let next_req = st.req_timers.peek().map(|r| r.0 .0);
    while let Some(&Reverse((when, qpn, id))) = st.timers.peek() {
        if when > now {
            return Some(next_req.map_or(when, |r| r.min(when)));
        }
        st.timers.pop();
        let Some(qp) = st.qps.get_mut(&qpn) else {
            continue;
        };
        let Some(head) = qp.inbound.front().filter(|h| h.id == id) else {
            continue;
        };
        let status = match head.blocked {
            Some(Wait::Rnr) => wc_status::RNR_RETRY_EXC_ERR,
            Some(Wait::NotReady) => wc_status::RETRY_EXC_ERR,
            None => continue,
        };
        let Some(head) = qp.inbound.pop_front() else {
            continue;
        };
        // The requester stops at this NAK; what it sent after is dropped.
        let key = (head.origin, head.pkt.src.uid, head.pkt.src.epoch);
        qp.drop_src = Some(key);
        qp.inbound
            .retain(|h| (h.origin, h.pkt.src.uid, h.pkt.src.epoch) != key);
        if let Some(s) = qp.srq.and_then(|s| st.srqs.get_mut(&s)) {
            s.waiting.retain(|&q| q != qpn);
        }
        reply(st, head.origin, &head.pkt.src, AckResult::Nak(status));
        drain_inbound(st, qpn);
    }
    next_req
}

/// An ack reaches the requester QP it names.
pub(crate) fn apply_ack(st: &mut State, ack: Ack) {
    let Some(&qpn) = st.qp_uids.get(&ack.uid) else {
        return;
    };
    let Some(qp) = st.qps.get_mut(&qpn) else {
        return;
    };
    let Some(e) = qp.sq.iter_mut().find(|e| e.seq == ack.seq) else {
        return;
    };
    if e.status.is_some() {
        return;
    }
    let status = match ack.result {
        AckResult::Ok => wc_status::SUCCESS,
        AckResult::Data(d) => {
            let room: u64 = e.scatter.iter().map(|s| s.len).sum();
            if (d.len() as u64) > room || write_segs(&e.scatter, 0, &d).is_err() {
                wc_status::LOC_PROT_ERR
            } else {
                wc_status::SUCCESS
            }
        }
        AckResult::Nak(s) => s,
        AckResult::Lost => {
            lose(st, qpn, ack.seq);
            return;
        }
    };
    e.status = Some(status);
    if status != wc_status::SUCCESS {
        qp.sq_stopped = true;
    }
    drain(st, qpn);
}

/// A peer link failed: every RC request still waiting for an ack on it is
/// lost (RETRY_EXC_ERR once the requester's retries would be spent).
pub(crate) fn fail_link_entries(st: &mut State, link: u64) {
    let lost: Vec<(u32, u64)> = st
        .qps
        .iter()
        .flat_map(|(&n, q)| {
            q.sq.iter()
                .filter(|e| e.link == Some(link) && e.status.is_none())
                .map(move |e| (n, e.seq))
        })
        .collect();
    for (qpn, seq) in lost {
        lose(st, qpn, seq);
    }
}

/// RC request `seq` of `qpn` got no answer and will get none: it fails
/// with RETRY_EXC_ERR when the requester's retry budget (`timeout`,
/// `retry_cnt`) would be spent, as on hardware. Timeout 0 (infinite):
/// never.
fn lose(st: &mut State, qpn: u32, seq: u64) {
    let Some(qp) = st.qps.get_mut(&qpn) else {
        return;
    };
    let (timeout, retry_cnt, uid) = (qp.attr.timeout, qp.attr.retry_cnt, qp.uid);
    let Some(e) = qp
        .sq
        .iter_mut()
        .find(|e| e.seq == seq && e.status.is_none() && !e.lost)
    else {
        return;
    };
    e.lost = true;
    if let Some(d) = retry_budget(timeout, retry_cnt) {
        st.req_timers.push(Reverse((Instant::now() + d, uid, seq)));
        st.wake_timer();
    }
}

/// How long a requester retransmits before RETRY_EXC_ERR (`None`: forever).
fn retry_budget(timeout: u8, retry_cnt: u8) -> Option<Duration> {
    if timeout == 0 {
        return None;
    }
    let step = Duration::from_nanos(4096u64 << timeout.min(31)).max(MIN_RETRY_STEP);
    Some(step * (retry_cnt.min(7) as u32 + 1))
}

/// An inbound peer connection closed: forget the packets it left queued.
pub(crate) fn drop_origin(st: &mut State, origin: Origin) {
    let mut touched = Vec::new();
    for (&qpn, qp) in st.qps.iter_mut() {
        if qp.inbound.iter().any(|h| h.origin == origin) {
            qp.inbound.retain(|h| h.origin != origin);
            touched.push(qpn);
        }
    }
    // A packet that waited behind a dropped one may go on now.
    for qpn in touched {
        drain_inbound(st, qpn);
    }
}
