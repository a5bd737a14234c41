//! The device state of every HCA the service presents: the resources of
//! every context (PDs, MRs, CQs, completion channels, SRQs, AHs, QPs), the
//! links to other nodes' services and the RNR/retry timers.
//!
//! One [`State`] sits behind the service's single mutex ([`Shared`]); every
//! thread (a context's connection, a peer link, the timer) takes it for the
//! time of one request or message and never does socket I/O that may block
//! while it holds it: replies to a context are sent after the lock is
//! dropped, messages to peers go through per-link channels, and event
//! descriptors are non-blocking.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Condvar, Mutex, MutexGuard, Weak};
use std::time::Instant;

use crossbeam_channel::Sender;

use super::datapath::{Packet, Seg};
use super::peer::PeerMsg;
use crate::proto::{self, AhAttr, DevInfo, QpAttr, QpCap, RecvWr};
use crate::ring::{Ring, Wc};

/// Identifies a context connection (and so the owner of resources).
pub(crate) type ClientId = u64;

/// Everything the service's threads share.
pub(crate) struct Shared {
    pub state: Mutex<State>,
    /// Wakes the timer thread when an earlier deadline was added or at stop.
    pub timer_cv: Condvar,
    pub stop: AtomicBool,
    pub fabric: PathBuf,
}

impl Shared {
    /// Takes the state lock. Threads abort on panic (panic = "abort"), so a
    /// poisoned lock cannot be observed; it is accepted anyway.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Where a packet arriving at a responder came from, for its acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Origin {
    /// A QP of this service (delivered in-process).
    Local,
    /// An inbound peer connection.
    Conn(u64),
}

/// A resource that belongs to a context.
pub(crate) trait Owned {
    fn owner(&self) -> ClientId;
}

macro_rules! owned {
    ($($t:ty),*) => {$(impl Owned for $t { fn owner(&self) -> ClientId { self.owner } })*};
}
owned!(Pd, Mr, Channel, Cq, Srq, Ah, Qp);

/// Whether resource `h` of `map` exists and belongs to `id`.
pub(crate) fn mine<T: Owned>(map: &HashMap<u32, T>, h: u32, id: ClientId) -> bool {
    map.get(&h).is_some_and(|r| r.owner() == id)
}

/// A context that opened a device.
pub(crate) struct Client {
    pub dev: usize,
    /// Our end of the async event socket pair (non-blocking).
    pub async_fd: OwnedFd,
}

pub(crate) struct Pd {
    pub owner: ClientId,
}

pub(crate) struct Mr {
    pub owner: ClientId,
    pub pd: u32,
    /// The registering process: "DMA" goes to its memory.
    pub pid: i32,
    pub addr: u64,
    pub len: u64,
    pub iova: u64,
    pub access: u32,
    pub lkey: u32,
    pub rkey: u32,
    /// The device it was registered on (its rkey is that device's).
    pub dev: usize,
}

impl Mr {
    /// The process range of `[iova, iova+len)` if this MR covers it.
    pub fn seg(&self, iova: u64, len: u64) -> Option<Seg> {
        let end = iova.checked_add(len)?;
        if iova < self.iova || end > self.iova.checked_add(self.len)? {
            return None;
        }
        Some(Seg {
            pid: self.pid,
            addr: self.addr.checked_add(iova - self.iova)?,
            len,
        })
    }
}

pub(crate) struct Channel {
    pub owner: ClientId,
    /// Our end of the channel's socket pair (non-blocking).
    pub fd: OwnedFd,
}

pub(crate) struct Cq {
    pub owner: ClientId,
    pub ring: Ring,
    pub channel: Option<u32>,
    pub cookie: u64,
    /// Armed by ReqNotify: `Some(solicited_only)`.
    pub armed: Option<bool>,
    /// An overflow was already reported (one CQ_ERR event per CQ).
    pub overflow_reported: bool,
}

pub(crate) struct Srq {
    pub owner: ClientId,
    pub pd: u32,
    pub max_wr: u32,
    pub max_sge: u32,
    pub limit: u32,
    pub cookie: u64,
    pub queue: VecDeque<RecvWr>,
    /// QPs whose inbound queue waits for a receive of this SRQ.
    pub waiting: Vec<u32>,
}

pub(crate) struct Ah {
    pub owner: ClientId,
    pub pd: u32,
    pub attr: AhAttr,
}

/// One posted send WR of a QP, from posting until its completion is
/// delivered (in posting order).
pub(crate) struct SqEntry {
    pub seq: u64,
    pub wr_id: u64,
    /// `wc_opcode` of its completion.
    pub opcode: u32,
    pub signaled: bool,
    pub byte_len: u32,
    /// `None` while waiting for the responder's ack; then the status.
    pub status: Option<u32>,
    /// No answer will come: RETRY_EXC_ERR is scheduled.
    pub lost: bool,
    /// READ and atomics: where the ack's data goes.
    pub scatter: Vec<Seg>,
    /// The peer link the request went out on, for link failures.
    pub link: Option<u64>,
}

/// Why the head of a responder's inbound queue waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    /// No receive WQE (RNR).
    Rnr,
    /// The QP is not ready to receive yet (RESET/INIT): a real requester
    /// retransmits until it is, or until its retry count is exhausted.
    NotReady,
}

/// An RC packet queued at its responder QP.
pub(crate) struct Held {
    pub id: u64,
    pub origin: Origin,
    pub pkt: Packet,
    pub blocked: Option<Wait>,
}

/// Identifies one requester QP incarnation at a responder (for dropping the
/// packets that follow a NAK, as a PSN sequence error would).
pub(crate) type SrcKey = (Origin, u64, u32);

pub(crate) struct Qp {
    pub owner: ClientId,
    /// Service-unique id of this QP (acks name it; QPNs could be reused).
    pub uid: u64,
    pub dev: usize,
    pub pd: u32,
    pub send_cq: u32,
    pub recv_cq: u32,
    pub srq: Option<u32>,
    pub qp_type: u32,
    pub cap: QpCap,
    pub sq_sig_all: bool,
    pub cookie: u64,
    pub state: u32,
    pub attr: QpAttr,
    /// Bumped at every reset, so a responder can tell incarnations apart.
    pub epoch: u32,
    pub next_seq: u64,
    pub sq: VecDeque<SqEntry>,
    /// An entry failed: later WRs are not sent, they will be flushed.
    pub sq_stopped: bool,
    pub rq: VecDeque<RecvWr>,
    /// RC responder: packets processed in order; the head may wait.
    pub inbound: VecDeque<Held>,
    pub drop_src: Option<SrcKey>,
}

/// An outgoing link to the service owning a remote LID.
pub(crate) struct Link {
    pub id: u64,
    pub tx: Sender<PeerMsg>,
}

/// A connection to shut down when the service stops.
pub(crate) enum ConnHandle {
    Unix(std::os::unix::net::UnixStream),
    Tcp(std::net::TcpStream),
}

impl ConnHandle {
    pub fn shutdown(&self) {
        match self {
            ConnHandle::Unix(s) => {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
            ConnHandle::Tcp(s) => {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

/// Resource counts, for tests and diagnostics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Connected contexts (including ones that did not open a device).
    pub connections: usize,
    /// Contexts that opened a device.
    pub contexts: usize,
    pub pds: usize,
    pub mrs: usize,
    pub channels: usize,
    pub cqs: usize,
    pub srqs: usize,
    pub ahs: usize,
    pub qps: usize,
    /// Send WRs not yet completed, over all QPs.
    pub send_wrs: usize,
    /// Receive WRs posted to QPs and SRQs.
    pub recv_wrs: usize,
    /// RC packets queued at responders.
    pub held: usize,
    pub links: usize,
    pub inbound_peers: usize,
}

pub(crate) struct State {
    pub shared: Weak<Shared>,
    pub devices: Vec<DevInfo>,
    pub clients: HashMap<ClientId, Client>,
    pub pds: HashMap<u32, Pd>,
    pub mrs: HashMap<u32, Mr>,
    pub lkeys: HashMap<u32, u32>,
    /// (device, rkey) -> MR handle.
    pub rkeys: HashMap<(usize, u32), u32>,
    /// `SOFTIB_RKEYS=per-device`: each device numbers its rkeys on its own,
    /// in order from one base drawn at the service's start and never
    /// reused (a device's next one here), so two devices hand out equal
    /// rkeys, as mlx5's do. None: random rkeys, unique across devices.
    pub rkey_next: Option<Vec<u32>>,
    pub channels: HashMap<u32, Channel>,
    pub cqs: HashMap<u32, Cq>,
    pub srqs: HashMap<u32, Srq>,
    pub ahs: HashMap<u32, Ah>,
    pub qps: HashMap<u32, Qp>,
    pub qp_uids: HashMap<u64, u32>,
    /// Outgoing links by remote LID.
    pub links: HashMap<u16, Link>,
    /// LIDs that could not be reached lately, until when.
    pub dead_lids: HashMap<u16, Instant>,
    /// Ack writers of inbound peer connections.
    pub inbound: HashMap<u64, Sender<PeerMsg>>,
    /// (deadline, qpn, held id) of waiting responder heads.
    pub timers: BinaryHeap<Reverse<(Instant, u32, u64)>>,
    /// (deadline, requester QP uid, seq) of lost RC packets.
    pub req_timers: BinaryHeap<Reverse<(Instant, u64, u64)>>,
    /// Every open connection, to shut down at stop.
    pub conns: HashMap<u64, ConnHandle>,
    /// Connected contexts and since when there has been none.
    pub connections: usize,
    pub idle_since: Instant,
    next_id: u64,
}

impl State {
    pub fn new(shared: Weak<Shared>, devices: Vec<DevInfo>) -> State {
        let rkey_next = std::env::var("SOFTIB_RKEYS")
            .is_ok_and(|v| v == "per-device")
            .then(|| {
                let base = (crate::sys::random_u64() as u32 & 0x0fff_ffff) | 1;
                vec![base; devices.len()]
            });
        State {
            shared,
            devices,
            clients: HashMap::new(),
            pds: HashMap::new(),
            mrs: HashMap::new(),
            lkeys: HashMap::new(),
            rkeys: HashMap::new(),
            rkey_next,
            channels: HashMap::new(),
            cqs: HashMap::new(),
            srqs: HashMap::new(),
            ahs: HashMap::new(),
            qps: HashMap::new(),
            qp_uids: HashMap::new(),
            links: HashMap::new(),
            dead_lids: HashMap::new(),
            inbound: HashMap::new(),
            timers: BinaryHeap::new(),
            req_timers: BinaryHeap::new(),
            conns: HashMap::new(),
            connections: 0,
            idle_since: Instant::now(),
            next_id: 1,
        }
    }

    /// A fresh id (handles, connection ids, QP uids): never 0, never reused.
    pub fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// A fresh 32-bit handle not used by any resource kind.
    pub fn new_handle(&mut self) -> u32 {
        loop {
            let h = self.next_id() as u32;
            if h != 0
                && !self.pds.contains_key(&h)
                && !self.mrs.contains_key(&h)
                && !self.channels.contains_key(&h)
                && !self.cqs.contains_key(&h)
                && !self.srqs.contains_key(&h)
                && !self.ahs.contains_key(&h)
            {
                return h;
            }
        }
    }

    /// A random QP number: 24 bits, not 0 or 1, unused.
    pub fn new_qpn(&self) -> u32 {
        loop {
            let q = (crate::sys::random_u64() as u32) & 0x00FF_FFFF;
            if q > 1 && !self.qps.contains_key(&q) {
                return q;
            }
        }
    }

    /// A random memory key, nonzero, used neither as an lkey nor as an
    /// rkey of any device.
    pub fn new_key(&self) -> u32 {
        loop {
            let k = crate::sys::random_u64() as u32;
            if k != 0
                && !self.lkeys.contains_key(&k)
                && !(0..self.devices.len()).any(|d| self.rkeys.contains_key(&(d, k)))
            {
                return k;
            }
        }
    }

    /// A new rkey of device `dev`: random, or that device's next one
    /// (`rkey_next`).
    pub fn new_rkey(&mut self, dev: usize) -> u32 {
        let Some(next) = self.rkey_next.as_mut().and_then(|n| n.get_mut(dev)) else {
            return self.new_key();
        };
        let k = *next;
        *next = next.wrapping_add(1).max(1);
        k
    }

    /// Index of the device whose port has `lid`.
    pub fn dev_by_lid(&self, lid: u16) -> Option<usize> {
        self.devices.iter().position(|d| d.lid == lid)
    }

    /// Wakes the timer thread (a new deadline was queued).
    pub fn wake_timer(&self) {
        if let Some(s) = self.shared.upgrade() {
            s.timer_cv.notify_one();
        }
    }

    /// Queues an async event for `owner` (dropped if its socket is full or
    /// gone, as nothing may block here).
    pub fn async_event(&self, owner: ClientId, kind: u32, cookie: u64) {
        let Some(c) = self.clients.get(&owner) else {
            return;
        };
        let mut rec = [0u8; proto::ASYNC_EVENT_BYTES];
        rec[0..4].copy_from_slice(&kind.to_ne_bytes());
        rec[8..16].copy_from_slice(&cookie.to_ne_bytes());
        let _ = crate::sys::send_packet(c.async_fd.as_raw_fd(), &rec, None);
    }

    /// Adds a completion to CQ `cq`; then, if the CQ is armed and the
    /// completion qualifies (any, or solicited/error ones for
    /// solicited-only), queues one event on its channel and disarms it. A
    /// full ring loses the completion and raises CQ_ERR.
    pub fn complete(&mut self, cq: u32, wc: &Wc, solicited: bool) {
        let Some(c) = self.cqs.get_mut(&cq) else {
            return;
        };
        if !c.ring.push(wc) {
            if !c.overflow_reported {
                c.overflow_reported = true;
                let (owner, cookie) = (c.owner, c.cookie);
                self.async_event(owner, proto::event::CQ_ERR, cookie);
            }
            return;
        }
        let Some(solicited_only) = c.armed else {
            return;
        };
        if solicited_only && !solicited && wc.status == proto::wc_status::SUCCESS {
            return;
        }
        c.armed = None;
        let (cookie, channel) = (c.cookie, c.channel);
        self.notify_channel(channel, cookie);
    }

    /// Arms CQ `cq` of `owner` (ReqNotify). Arming for any completion wins
    /// over solicited-only.
    ///
    /// The program posts the request and polls its ring at once, without
    /// waiting for the service: a completion added between that poll and
    /// this arm would be seen by neither. So, like an HCA whose arm doorbell
    /// carries the consumer index, an arm that finds completions not yet
    /// taken from the ring fires at once (at worst a spurious event, which
    /// programs tolerate: they poll after every event).
    pub fn arm_cq(&mut self, cq: u32, owner: ClientId, solicited_only: bool) {
        let Some(q) = self.cqs.get_mut(&cq).filter(|q| q.owner == owner) else {
            return;
        };
        q.armed = Some(solicited_only && q.armed.unwrap_or(true));
        if q.ring.is_empty() {
            return;
        }
        q.armed = None;
        let (cookie, channel) = (q.cookie, q.channel);
        self.notify_channel(channel, cookie);
    }

    /// Queues one event record (the CQ's cookie) on a channel.
    fn notify_channel(&self, channel: Option<u32>, cookie: u64) {
        if let Some(ch) = channel.and_then(|h| self.channels.get(&h)) {
            let _ = crate::sys::send_packet(ch.fd.as_raw_fd(), &cookie.to_ne_bytes(), None);
        }
    }

    pub fn counts(&self) -> Counts {
        Counts {
            connections: self.connections,
            contexts: self.clients.len(),
            pds: self.pds.len(),
            mrs: self.mrs.len(),
            channels: self.channels.len(),
            cqs: self.cqs.len(),
            srqs: self.srqs.len(),
            ahs: self.ahs.len(),
            qps: self.qps.len(),
            send_wrs: self.qps.values().map(|q| q.sq.len()).sum(),
            recv_wrs: self.qps.values().map(|q| q.rq.len()).sum::<usize>()
                + self.srqs.values().map(|s| s.queue.len()).sum::<usize>(),
            held: self.qps.values().map(|q| q.inbound.len()).sum(),
            links: self.links.len(),
            inbound_peers: self.inbound.len(),
        }
    }
}
