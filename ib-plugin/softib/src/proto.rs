//! Messages between a device context (the verbs library in a program) and
//! the node's service, and between the services of different nodes.
//!
//! A program's context is one `SOCK_SEQPACKET` connection to the service;
//! each message is one packet: a bincode-encoded [`Req`] from the client,
//! a [`Resp`] back for every request except the posting ones
//! ([`Req::PostSend`], [`Req::PostRecv`], [`Req::PostSrqRecv`],
//! [`Req::ReqNotify`]), which are answered by completions, as on hardware.
//! Some answers carry a file descriptor (SCM_RIGHTS): [`Resp::Opened`]
//! (async event fd), [`Resp::Channel`] (completion channel fd) and
//! [`Resp::Cq`] (memfd of the completion ring).
//!
//! Numbers (opcodes, statuses, masks, flags) are the verbs ABI's own values,
//! listed here so the service does not depend on the C header; the library
//! checks them against the header at compile time.

use serde::{Deserialize, Serialize};

/// Protocol version; [`Req::Hello`] carries it and the service refuses others.
pub const VERSION: u32 = 1;

/// Largest packet either side sends or accepts on a context connection.
pub const MAX_PACKET: usize = 1 << 20;

/// Largest inline payload of one work request.
pub const MAX_INLINE: u32 = 512;

/// Largest message (SEND, RDMA WRITE/READ) the device accepts.
pub const MAX_MSG_SIZE: u64 = 1 << 31;

pub mod wc_status {
    pub const SUCCESS: u32 = 0;
    pub const LOC_LEN_ERR: u32 = 1;
    pub const LOC_QP_OP_ERR: u32 = 2;
    pub const LOC_PROT_ERR: u32 = 4;
    pub const WR_FLUSH_ERR: u32 = 5;
    pub const LOC_ACCESS_ERR: u32 = 8;
    pub const REM_INV_REQ_ERR: u32 = 9;
    pub const REM_ACCESS_ERR: u32 = 10;
    pub const REM_OP_ERR: u32 = 11;
    pub const RETRY_EXC_ERR: u32 = 12;
    pub const RNR_RETRY_EXC_ERR: u32 = 13;
    pub const FATAL_ERR: u32 = 19;
    pub const GENERAL_ERR: u32 = 21;
}

pub mod wc_opcode {
    pub const SEND: u32 = 0;
    pub const RDMA_WRITE: u32 = 1;
    pub const RDMA_READ: u32 = 2;
    pub const COMP_SWAP: u32 = 3;
    pub const FETCH_ADD: u32 = 4;
    pub const RECV: u32 = 128;
    pub const RECV_RDMA_WITH_IMM: u32 = 129;
}

pub mod wc_flags {
    pub const GRH: u32 = 1;
    pub const WITH_IMM: u32 = 2;
}

pub mod wr_opcode {
    pub const RDMA_WRITE: u32 = 0;
    pub const RDMA_WRITE_WITH_IMM: u32 = 1;
    pub const SEND: u32 = 2;
    pub const SEND_WITH_IMM: u32 = 3;
    pub const RDMA_READ: u32 = 4;
    pub const ATOMIC_CMP_AND_SWP: u32 = 5;
    pub const ATOMIC_FETCH_AND_ADD: u32 = 6;
}

pub mod send_flags {
    pub const FENCE: u32 = 1;
    pub const SIGNALED: u32 = 2;
    pub const SOLICITED: u32 = 4;
    pub const INLINE: u32 = 8;
}

pub mod access {
    pub const LOCAL_WRITE: u32 = 1;
    pub const REMOTE_WRITE: u32 = 2;
    pub const REMOTE_READ: u32 = 4;
    pub const REMOTE_ATOMIC: u32 = 8;
}

pub mod qp_type {
    pub const RC: u32 = 2;
    pub const UC: u32 = 3;
    pub const UD: u32 = 4;
}

pub mod qp_state {
    pub const RESET: u32 = 0;
    pub const INIT: u32 = 1;
    pub const RTR: u32 = 2;
    pub const RTS: u32 = 3;
    pub const SQD: u32 = 4;
    pub const SQE: u32 = 5;
    pub const ERR: u32 = 6;
}

/// `enum ibv_qp_attr_mask` bits.
pub mod qp_mask {
    pub const STATE: u32 = 1 << 0;
    pub const CUR_STATE: u32 = 1 << 1;
    pub const EN_SQD_ASYNC_NOTIFY: u32 = 1 << 2;
    pub const ACCESS_FLAGS: u32 = 1 << 3;
    pub const PKEY_INDEX: u32 = 1 << 4;
    pub const PORT: u32 = 1 << 5;
    pub const QKEY: u32 = 1 << 6;
    pub const AV: u32 = 1 << 7;
    pub const PATH_MTU: u32 = 1 << 8;
    pub const TIMEOUT: u32 = 1 << 9;
    pub const RETRY_CNT: u32 = 1 << 10;
    pub const RNR_RETRY: u32 = 1 << 11;
    pub const RQ_PSN: u32 = 1 << 12;
    pub const MAX_QP_RD_ATOMIC: u32 = 1 << 13;
    pub const ALT_PATH: u32 = 1 << 14;
    pub const MIN_RNR_TIMER: u32 = 1 << 15;
    pub const SQ_PSN: u32 = 1 << 16;
    pub const MAX_DEST_RD_ATOMIC: u32 = 1 << 17;
    pub const PATH_MIG_STATE: u32 = 1 << 18;
    pub const CAP: u32 = 1 << 19;
    pub const DEST_QPN: u32 = 1 << 20;
}

/// `enum ibv_event_type` values the device raises.
pub mod event {
    pub const CQ_ERR: u32 = 0;
    pub const QP_FATAL: u32 = 1;
    pub const QP_REQ_ERR: u32 = 2;
    pub const QP_ACCESS_ERR: u32 = 3;
    pub const COMM_EST: u32 = 4;
    pub const PORT_ACTIVE: u32 = 9;
    pub const SRQ_LIMIT_REACHED: u32 = 15;
    pub const QP_LAST_WQE_REACHED: u32 = 16;
}

/// Link MTU of every port, bytes (IBV_MTU_4096).
pub const PORT_MTU: u32 = 4096;
/// Bytes a UD receive buffer starts with for the global route header.
pub const GRH_BYTES: u32 = 40;

/// What the service tells of one device (HCA) it presents.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DevInfo {
    /// `softib0`, `softib1`, ...
    pub name: String,
    /// Node GUID (host order).
    pub guid: u64,
    /// LID of its single port; chosen at random when the service starts.
    pub lid: u16,
    /// Port GID 0 (raw 16 bytes): fe80::/64 + the GUID.
    pub gid: [u8; 16],
}

/// One scatter/gather element, as in `struct ibv_sge`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Sge {
    pub addr: u64,
    pub length: u32,
    pub lkey: u32,
}

/// A receive work request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RecvWr {
    pub wr_id: u64,
    pub sg: Vec<Sge>,
}

/// A send work request as posted (`struct ibv_send_wr`, flattened).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SendWr {
    pub wr_id: u64,
    /// [`wr_opcode`] value.
    pub opcode: u32,
    /// [`send_flags`]; SIGNALED is already or'ed in when the QP signals all.
    pub flags: u32,
    /// Immediate data, as the program gave it (network order, untouched).
    pub imm: u32,
    /// Gather list; empty when the data is inline.
    pub sg: Vec<Sge>,
    /// Inline data (flags has INLINE): copied by the library at post time.
    pub inline: Vec<u8>,
    /// RDMA and atomic: remote address and rkey.
    pub remote_addr: u64,
    pub rkey: u32,
    /// Atomics: compare (CAS) or add (FAA) operand, and swap value.
    pub compare_add: u64,
    pub swap: u64,
    /// UD: address handle, remote QPN and Q_Key.
    pub ah: u32,
    pub remote_qpn: u32,
    pub remote_qkey: u32,
}

/// Address vector (`struct ibv_ah_attr`, flattened).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct AhAttr {
    pub dlid: u16,
    pub sl: u8,
    pub src_path_bits: u8,
    pub static_rate: u8,
    pub is_global: bool,
    pub port_num: u8,
    pub dgid: [u8; 16],
    pub flow_label: u32,
    pub sgid_index: u8,
    pub hop_limit: u8,
    pub traffic_class: u8,
}

/// Queue sizes (`struct ibv_qp_cap`).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct QpCap {
    pub max_send_wr: u32,
    pub max_recv_wr: u32,
    pub max_send_sge: u32,
    pub max_recv_sge: u32,
    pub max_inline_data: u32,
}

/// QP attributes (`struct ibv_qp_attr`, the fields the device uses).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct QpAttr {
    pub qp_state: u32,
    pub cur_qp_state: u32,
    pub path_mtu: u32,
    pub qkey: u32,
    pub rq_psn: u32,
    pub sq_psn: u32,
    pub dest_qp_num: u32,
    pub qp_access_flags: u32,
    pub cap: QpCap,
    pub ah_attr: AhAttr,
    pub pkey_index: u16,
    pub sq_draining: u8,
    pub max_rd_atomic: u8,
    pub max_dest_rd_atomic: u8,
    pub min_rnr_timer: u8,
    pub port_num: u8,
    pub timeout: u8,
    pub retry_cnt: u8,
    pub rnr_retry: u8,
}

/// Requests from a device context to the service.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Req {
    /// First message of a connection. Answer: [`Resp::Hello`].
    Hello {
        version: u32,
    },
    /// Answer: [`Resp::Devices`].
    QueryDevices,
    /// Makes this connection a context of device `dev` (index in the list).
    /// Answer: [`Resp::Opened`] with the async event fd.
    Open {
        dev: u32,
    },
    /// Answer: [`Resp::Handle`].
    AllocPd,
    /// Answer: [`Resp::Ok`], or EBUSY while QPs, MRs, SRQs or AHs use it.
    DeallocPd {
        pd: u32,
    },
    /// `addr..addr+len` of the program's memory, seen by the device at
    /// `iova..iova+len` (both local SGEs and remote addresses use iova).
    /// Answer: [`Resp::Mr`].
    RegMr {
        pd: u32,
        addr: u64,
        len: u64,
        iova: u64,
        access: u32,
    },
    DeregMr {
        mr: u32,
    },
    /// Answer: [`Resp::Channel`] with the channel's fd: readable when a CQ
    /// event is queued; each event is 8 bytes, the CQ's cookie.
    CreateChannel,
    DestroyChannel {
        channel: u32,
    },
    /// `cookie` is returned in channel events and async events of this CQ.
    /// Answer: [`Resp::Cq`] with the ring's memfd (see [`crate::ring`]).
    CreateCq {
        cqe: u32,
        channel: Option<u32>,
        cookie: u64,
    },
    /// Answer: [`Resp::Ok`], or EBUSY while a QP or SRQ uses it.
    DestroyCq {
        cq: u32,
    },
    /// Arms the CQ: the next completion added to it queues one event on
    /// its channel (only solicited and error completions if
    /// `solicited_only`). No answer.
    ReqNotify {
        cq: u32,
        solicited_only: bool,
    },
    /// Answer: [`Resp::Srq`].
    CreateSrq {
        pd: u32,
        max_wr: u32,
        max_sge: u32,
        limit: u32,
        cookie: u64,
    },
    /// `mask`: 1 = max_wr (refused: EINVAL, the device cannot resize), 2 = limit.
    ModifySrq {
        srq: u32,
        mask: u32,
        max_wr: u32,
        limit: u32,
    },
    /// Answer: [`Resp::SrqAttr`].
    QuerySrq {
        srq: u32,
    },
    DestroySrq {
        srq: u32,
    },
    /// No answer.
    PostSrqRecv {
        srq: u32,
        wrs: Vec<RecvWr>,
    },
    /// Answer: [`Resp::Qp`].
    CreateQp {
        pd: u32,
        send_cq: u32,
        recv_cq: u32,
        srq: Option<u32>,
        qp_type: u32,
        cap: QpCap,
        sq_sig_all: bool,
        cookie: u64,
    },
    /// Answer: [`Resp::Ok`] or EINVAL (bad transition or missing attribute).
    ModifyQp {
        qpn: u32,
        attr: QpAttr,
        mask: u32,
    },
    /// Answer: [`Resp::QpAttr`].
    QueryQp {
        qpn: u32,
    },
    DestroyQp {
        qpn: u32,
    },
    /// Answer: [`Resp::Handle`].
    CreateAh {
        pd: u32,
        attr: AhAttr,
    },
    DestroyAh {
        ah: u32,
    },
    /// No answer: results come as completions.
    PostSend {
        qpn: u32,
        wrs: Vec<SendWr>,
    },
    /// No answer.
    PostRecv {
        qpn: u32,
        wrs: Vec<RecvWr>,
    },
}

/// Answers of the service.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Resp {
    Ok,
    /// A failed request: the errno the verb returns.
    Err(i32),
    Hello {
        version: u32,
    },
    Devices(Vec<DevInfo>),
    /// Carries the async event fd: each event is 16 bytes, `u32` event type
    /// (ibv_event_type), `u32` zero, `u64` cookie of the CQ/QP/SRQ (0 for
    /// port events).
    Opened {
        info: DevInfo,
    },
    Handle(u32),
    Mr {
        handle: u32,
        lkey: u32,
        rkey: u32,
    },
    /// Carries the channel fd.
    Channel {
        handle: u32,
    },
    /// Carries the ring memfd; `cqe` is the usable capacity.
    Cq {
        handle: u32,
        cqe: u32,
    },
    Srq {
        handle: u32,
        max_wr: u32,
        max_sge: u32,
    },
    Qp {
        qpn: u32,
        cap: QpCap,
    },
    QpAttr {
        attr: QpAttr,
        cap: QpCap,
        sq_sig_all: bool,
    },
    SrqAttr {
        max_wr: u32,
        max_sge: u32,
        limit: u32,
    },
}

/// Size of one channel event record.
pub const CQ_EVENT_BYTES: usize = 8;
/// Size of one async event record.
pub const ASYNC_EVENT_BYTES: usize = 16;

/// Encodes a message for a packet.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    // Serializing plain data into a Vec cannot fail.
    bincode::serialize(msg).unwrap_or_default()
}

/// Decodes a packet; `None` for anything malformed.
pub fn decode<'a, T: Deserialize<'a>>(buf: &'a [u8]) -> Option<T> {
    use bincode::Options;
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .allow_trailing_bytes()
        .with_limit(MAX_PACKET as u64 * 4)
        .deserialize(buf)
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let r = Req::PostSend {
            qpn: 7,
            wrs: vec![SendWr {
                wr_id: 1,
                opcode: wr_opcode::SEND,
                flags: send_flags::SIGNALED,
                imm: 0,
                sg: vec![Sge {
                    addr: 10,
                    length: 20,
                    lkey: 30,
                }],
                ..SendWr::default()
            }],
        };
        let b = encode(&r);
        match decode::<Req>(&b) {
            Some(Req::PostSend { qpn: 7, wrs }) => assert_eq!(wrs[0].sg[0].lkey, 30),
            other => panic!("{other:?}"),
        }
        assert!(decode::<Req>(&b[..b.len() - 3]).is_none());
        assert!(decode::<Req>(&[0xff; 9]).is_none());
    }
}
