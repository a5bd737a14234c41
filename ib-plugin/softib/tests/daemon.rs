//! Tests of the service (`softib::daemon`) through its wire protocol, with
//! a small client written here: the test process itself is the "program"
//! whose memory the service reads and writes, and its buffers are touched
//! only through `process_vm_readv`/`writev` (like the device does), never
//! through Rust references, once the device may write them.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use softib::daemon::{self, Counts, Daemon, Options};
use softib::proto::*;
use softib::ring::{Ring, Wc};
use softib::sys;

const T: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------- fixtures

/// A fresh temporary directory, removed when dropped.
struct TmpDir(PathBuf);

impl std::ops::Deref for TmpDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tmpdir(tag: &str) -> TmpDir {
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "softib-t{}-{}-{tag}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    TmpDir(d)
}

struct Node {
    d: Option<Daemon>,
    sock: PathBuf,
    _dir: TmpDir,
}

impl Node {
    fn start(fabric: &Path, devices: u32) -> Node {
        let dir = tmpdir("node");
        let sock = dir.join("softibd.sock");
        let opts = Options {
            devices,
            socket: sock.clone(),
            fabric: fabric.to_path_buf(),
            idle_exit: None,
            addr: Some(std::net::Ipv4Addr::LOCALHOST),
        };
        let d = daemon::start(opts).unwrap().expect("socket free");
        Node {
            d: Some(d),
            sock,
            _dir: dir,
        }
    }
    fn d(&self) -> &Daemon {
        self.d.as_ref().unwrap()
    }
    fn ctx(&self) -> Ctx {
        Ctx::open(&self.sock, 0)
    }
    fn counts(&self) -> Counts {
        self.d().counts()
    }
    fn stop(&mut self) {
        if let Some(d) = self.d.take() {
            d.stop();
        }
    }
}

/// Memory of this process that the device reads and writes.
struct Buf {
    mem: Box<[u8]>,
}

impl Buf {
    fn new(n: usize) -> Buf {
        Buf {
            mem: vec![0u8; n.max(8)].into_boxed_slice(),
        }
    }
    fn addr(&self) -> u64 {
        self.mem.as_ptr() as u64
    }
    fn len(&self) -> u64 {
        self.mem.len() as u64
    }
    fn read(&self, off: usize, n: usize) -> Vec<u8> {
        assert!(off + n <= self.mem.len());
        let mut v = vec![0u8; n];
        sys::vm_read(std::process::id() as i32, self.addr() + off as u64, &mut v).unwrap();
        v
    }
    fn write(&self, off: usize, data: &[u8]) {
        assert!(off + data.len() <= self.mem.len());
        sys::vm_write(std::process::id() as i32, self.addr() + off as u64, data).unwrap();
    }
    fn u64_at(&self, off: usize) -> u64 {
        u64::from_ne_bytes(self.read(off, 8).try_into().unwrap())
    }
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[derive(Clone, Copy)]
struct Mr {
    handle: u32,
    lkey: u32,
    rkey: u32,
}

struct Cq {
    handle: u32,
    ring: Ring,
}

impl Cq {
    /// Waits for `n` completions.
    fn poll(&self, n: usize) -> Vec<Wc> {
        let mut out = Vec::new();
        let end = Instant::now() + T;
        let mut tmp = [Wc::default(); 64];
        while out.len() < n {
            let want = (n - out.len()).min(64);
            let k = self.ring.pop_into(&mut tmp[..want]);
            out.extend_from_slice(&tmp[..k]);
            if k == 0 {
                assert!(
                    Instant::now() < end,
                    "timeout: got {} of {n} completions: {out:?}",
                    out.len()
                );
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        out
    }
    fn poll1(&self) -> Wc {
        self.poll(1)[0]
    }
    /// Asserts that nothing arrives for `d`.
    fn none_for(&self, d: Duration) {
        std::thread::sleep(d);
        let mut tmp = [Wc::default(); 4];
        let k = self.ring.pop_into(&mut tmp);
        assert_eq!(k, 0, "unexpected completions {:?}", &tmp[..k]);
    }
}

/// A device context: one connection to the service.
struct Ctx {
    fd: OwnedFd,
    info: DevInfo,
    async_fd: OwnedFd,
}

fn recv_resp(fd: &OwnedFd) -> (Resp, Option<OwnedFd>) {
    let mut buf = vec![0u8; MAX_PACKET];
    let (n, f) = sys::recv_packet(fd.as_raw_fd(), &mut buf).unwrap();
    assert!(n > 0, "connection closed");
    (decode::<Resp>(&buf[..n]).unwrap(), f)
}

fn raw_connect(sock: &Path) -> OwnedFd {
    sys::connect_seqpacket(sock).unwrap()
}

fn send_req(fd: &OwnedFd, r: &Req) {
    sys::send_packet(fd.as_raw_fd(), &encode(r), None).unwrap();
}

/// True when the service closed `fd` (reads end of stream).
fn closed_by_peer(fd: &OwnedFd) -> bool {
    let mut buf = vec![0u8; 4096];
    matches!(
        sys::recv_packet(fd.as_raw_fd(), &mut buf),
        Ok((0, _)) | Err(_)
    )
}

impl Ctx {
    fn open(sock: &Path, dev: u32) -> Ctx {
        let fd = raw_connect(sock);
        send_req(&fd, &Req::Hello { version: VERSION });
        assert!(matches!(recv_resp(&fd).0, Resp::Hello { version: VERSION }));
        send_req(&fd, &Req::Open { dev });
        match recv_resp(&fd) {
            (Resp::Opened { info }, Some(async_fd)) => Ctx { fd, info, async_fd },
            other => panic!("{other:?}"),
        }
    }
    fn call(&self, r: Req) -> (Resp, Option<OwnedFd>) {
        send_req(&self.fd, &r);
        recv_resp(&self.fd)
    }
    fn ok(&self, r: Req) {
        match self.call(r).0 {
            Resp::Ok => {}
            other => panic!("{other:?}"),
        }
    }
    fn errno(&self, r: Req) -> i32 {
        match self.call(r).0 {
            Resp::Err(e) => e,
            other => panic!("expected an error, got {other:?}"),
        }
    }
    /// Waits until the service has handled everything sent before (posts
    /// have no answer; a request with one comes back after them).
    fn sync(&self) {
        assert!(matches!(self.call(Req::QueryDevices).0, Resp::Devices(_)));
    }
    fn post(&self, r: Req) {
        send_req(&self.fd, &r);
    }
    fn pd(&self) -> u32 {
        match self.call(Req::AllocPd).0 {
            Resp::Handle(h) => h,
            other => panic!("{other:?}"),
        }
    }
    fn mr(&self, pd: u32, b: &Buf, access: u32) -> Mr {
        match self
            .call(Req::RegMr {
                pd,
                addr: b.addr(),
                len: b.len(),
                iova: b.addr(),
                access,
            })
            .0
        {
            Resp::Mr { handle, lkey, rkey } => Mr { handle, lkey, rkey },
            other => panic!("{other:?}"),
        }
    }
    fn cq_with(&self, cqe: u32, channel: Option<u32>, cookie: u64) -> Cq {
        match self.call(Req::CreateCq {
            cqe,
            channel,
            cookie,
        }) {
            (Resp::Cq { handle, cqe: cap }, Some(fd)) => {
                assert!(cap >= cqe);
                Cq {
                    handle,
                    ring: Ring::map(fd.as_raw_fd(), cap, false).unwrap(),
                }
            }
            other => panic!("{other:?}"),
        }
    }
    fn cq(&self, cqe: u32) -> Cq {
        self.cq_with(cqe, None, 0)
    }
    fn qp(&self, pd: u32, scq: &Cq, rcq: &Cq, srq: Option<u32>, kind: u32) -> u32 {
        let cap = QpCap {
            max_send_wr: 1024,
            max_recv_wr: 1024,
            max_send_sge: 4,
            max_recv_sge: 4,
            max_inline_data: 256,
        };
        let r = self.call(Req::CreateQp {
            pd,
            send_cq: scq.handle,
            recv_cq: rcq.handle,
            srq,
            qp_type: kind,
            cap,
            sq_sig_all: false,
            cookie: 0x51,
        });
        match r.0 {
            Resp::Qp { qpn, cap: got } => {
                assert!(qpn > 1 && qpn < 1 << 24);
                assert!(got.max_send_wr >= 1024 && got.max_inline_data >= 256);
                qpn
            }
            other => panic!("{other:?}"),
        }
    }
    fn modify(&self, qpn: u32, attr: QpAttr, mask: u32) -> Resp {
        self.call(Req::ModifyQp { qpn, attr, mask }).0
    }
    fn query(&self, qpn: u32) -> QpAttr {
        match self.call(Req::QueryQp { qpn }).0 {
            Resp::QpAttr { attr, .. } => attr,
            other => panic!("{other:?}"),
        }
    }
    /// Posts a receive and waits until the service has it (UD and UC drop
    /// what arrives before).
    fn recv(&self, qpn: u32, wr_id: u64, b: &Buf, mr: Mr, off: u64, len: u32) {
        self.post(Req::PostRecv {
            qpn,
            wrs: vec![rwr(wr_id, b, mr, off, len)],
        });
        self.sync();
    }
    fn send(&self, qpn: u32, wrs: Vec<SendWr>) {
        self.post(Req::PostSend { qpn, wrs });
    }
}

fn rwr(wr_id: u64, b: &Buf, mr: Mr, off: u64, len: u32) -> RecvWr {
    RecvWr {
        wr_id,
        sg: vec![Sge {
            addr: b.addr() + off,
            length: len,
            lkey: mr.lkey,
        }],
    }
}

fn sge(b: &Buf, mr: Mr, off: u64, len: u32) -> Sge {
    Sge {
        addr: b.addr() + off,
        length: len,
        lkey: mr.lkey,
    }
}

fn wr(wr_id: u64, opcode: u32, sg: Vec<Sge>) -> SendWr {
    SendWr {
        wr_id,
        opcode,
        flags: send_flags::SIGNALED,
        sg,
        ..SendWr::default()
    }
}

fn rdma(wr_id: u64, opcode: u32, sg: Vec<Sge>, remote: &Buf, roff: u64, rkey: u32) -> SendWr {
    SendWr {
        remote_addr: remote.addr() + roff,
        rkey,
        ..wr(wr_id, opcode, sg)
    }
}

const ALL_ACCESS: u32 =
    access::LOCAL_WRITE | access::REMOTE_WRITE | access::REMOTE_READ | access::REMOTE_ATOMIC;

/// RESET -> INIT -> RTR -> RTS for an RC or UC QP connected to (dlid, dqpn).
fn connect(c: &Ctx, qpn: u32, kind: u32, dlid: u16, dqpn: u32, rnr_retry: u8, min_rnr_timer: u8) {
    let mut a = QpAttr {
        qp_state: qp_state::INIT,
        port_num: 1,
        qp_access_flags: ALL_ACCESS,
        ..Default::default()
    };
    let m = qp_mask::STATE | qp_mask::PKEY_INDEX | qp_mask::PORT | qp_mask::ACCESS_FLAGS;
    assert!(matches!(c.modify(qpn, a, m), Resp::Ok));
    a.qp_state = qp_state::RTR;
    a.path_mtu = 5;
    a.dest_qp_num = dqpn;
    a.rq_psn = 0;
    a.max_dest_rd_atomic = 1;
    a.min_rnr_timer = min_rnr_timer;
    a.ah_attr = AhAttr {
        dlid,
        port_num: 1,
        ..Default::default()
    };
    let mut m =
        qp_mask::STATE | qp_mask::AV | qp_mask::PATH_MTU | qp_mask::DEST_QPN | qp_mask::RQ_PSN;
    if kind == qp_type::RC {
        m |= qp_mask::MAX_DEST_RD_ATOMIC | qp_mask::MIN_RNR_TIMER;
    }
    assert!(matches!(c.modify(qpn, a, m), Resp::Ok));
    a.qp_state = qp_state::RTS;
    a.sq_psn = 0;
    a.timeout = 14;
    a.retry_cnt = 7;
    a.rnr_retry = rnr_retry;
    a.max_rd_atomic = 1;
    let mut m = qp_mask::STATE | qp_mask::SQ_PSN;
    if kind == qp_type::RC {
        m |= qp_mask::TIMEOUT | qp_mask::RETRY_CNT | qp_mask::RNR_RETRY | qp_mask::MAX_QP_RD_ATOMIC;
    }
    assert!(matches!(c.modify(qpn, a, m), Resp::Ok));
}

/// One side of a connected pair: its PD, buffer + MR, CQ and QP.
struct End {
    pd: u32,
    buf: Buf,
    mr: Mr,
    cq: Cq,
    qpn: u32,
}

fn end(c: &Ctx, kind: u32, buf_len: usize) -> End {
    let pd = c.pd();
    let buf = Buf::new(buf_len);
    let mr = c.mr(pd, &buf, ALL_ACCESS);
    let cq = c.cq(4096);
    let qpn = c.qp(pd, &cq, &cq, None, kind);
    End {
        pd,
        buf,
        mr,
        cq,
        qpn,
    }
}

/// Two connected QPs of `kind`.
fn pair(a: &Ctx, b: &Ctx, kind: u32, rnr_retry: u8) -> (End, End) {
    let ea = end(a, kind, 1 << 16);
    let eb = end(b, kind, 1 << 16);
    connect(a, ea.qpn, kind, b.info.lid, eb.qpn, rnr_retry, 12);
    connect(b, eb.qpn, kind, a.info.lid, ea.qpn, rnr_retry, 12);
    (ea, eb)
}

/// Reads one record from a (channel or async event) descriptor, waiting
/// up to `d`.
fn read_event(fd: &OwnedFd, d: Duration) -> Option<Vec<u8>> {
    sys::set_nonblock(fd.as_raw_fd(), true).unwrap();
    let end = Instant::now() + d;
    let mut buf = [0u8; 64];
    loop {
        match sys::recv_packet(fd.as_raw_fd(), &mut buf) {
            Ok((n, _)) => return Some(buf[..n].to_vec()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > end {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("{e}"),
        }
    }
}

fn assert_wc(w: &Wc, wr_id: u64, status: u32, opcode: u32) {
    assert_eq!(
        (w.wr_id, w.status, w.opcode),
        (wr_id, status, opcode),
        "{w:?}"
    );
}

// ------------------------------------------------------------------ tests

#[test]
fn rc_send_recv_both_ways() {
    let fab = tmpdir("fab");
    let n = Node::start(&fab, 1);
    let (a, b) = (n.ctx(), n.ctx());
    let (ea, eb) = pair(&a, &b, qp_type::RC, 7);

    // a -> b, two SGEs gathered.
    let data = pattern(300, 1);
    ea.buf.write(0, &data[..100]);
    ea.buf.write(1000, &data[100..]);
    b.recv(eb.qpn, 77, &eb.buf, eb.mr, 0, 4096);
    a.send(
        ea.qpn,
        vec![wr(
            5,
            wr_opcode::SEND,
            vec![sge(&ea.buf, ea.mr, 0, 100), sge(&ea.buf, ea.mr, 1000, 200)],
        )],
    );
    let w = ea.cq.poll1();
    assert_wc(&w, 5, wc_status::SUCCESS, wc_opcode::SEND);
    assert_eq!(w.qp_num, ea.qpn);
    let r = eb.cq.poll1();
    assert_wc(&r, 77, wc_status::SUCCESS, wc_opcode::RECV);
    assert_eq!(
        (r.byte_len, r.qp_num, r.src_qp, r.slid, r.wc_flags),
        (300, eb.qpn, ea.qpn, a.info.lid, 0)
    );
    assert_eq!(eb.buf.read(0, 300), data);

    // b -> a with immediate, and an inline send.
    let data2 = pattern(64, 9);
    eb.buf.write(8192, &data2);
    a.recv(ea.qpn, 1, &ea.buf, ea.mr, 4096, 128);
    a.recv(ea.qpn, 2, &ea.buf, ea.mr, 8192, 128);
    let mut s = wr(
        6,
        wr_opcode::SEND_WITH_IMM,
        vec![sge(&eb.buf, eb.mr, 8192, 64)],
    );
    s.imm = 0xdead_beef;
    let mut inl = wr(7, wr_opcode::SEND, vec![]);
    inl.flags |= send_flags::INLINE;
    inl.inline = b"inline!".to_vec();
    b.send(eb.qpn, vec![s, inl]);
    let ws = eb.cq.poll(2);
    assert_wc(&ws[0], 6, wc_status::SUCCESS, wc_opcode::SEND);
    assert_wc(&ws[1], 7, wc_status::SUCCESS, wc_opcode::SEND);
    let rs = ea.cq.poll(2);
    assert_wc(&rs[0], 1, wc_status::SUCCESS, wc_opcode::RECV);
    assert_eq!(
        (rs[0].byte_len, rs[0].wc_flags, rs[0].imm_data),
        (64, wc_flags::WITH_IMM, 0xdead_beef)
    );
    assert_eq!(ea.buf.read(4096, 64), data2);
    assert_wc(&rs[1], 2, wc_status::SUCCESS, wc_opcode::RECV);
    assert_eq!((rs[1].byte_len, rs[1].wc_flags), (7, 0));
    assert_eq!(ea.buf.read(8192, 7), b"inline!");
}

#[test]
fn unsignaled_sends_complete_silently() {
    let fab = tmpdir("fab");
    let n = Node::start(&fab, 1);
    let (a, b) = (n.ctx(), n.ctx());
    let (ea, eb) = pair(&a, &b, qp_type::RC, 7);
    for i in 0..3 {
        b.recv(eb.qpn, i, &eb.buf, eb.mr, i * 64, 64);
    }
    let mut w0 = wr(1, wr_opcode::SEND, vec![sge(&ea.buf, ea.mr, 0, 8)]);
    w0.flags = 0;
    let mut w1 = w0.clone();
    w1.wr_id = 2;
    let w2 = wr(3, wr_opcode::SEND, vec![sge(&ea.buf, ea.mr, 0, 8)]);
    a.send(ea.qpn, vec![w0, w1, w2]);
    assert_wc(&ea.cq.poll1(), 3, wc_status::SUCCESS, wc_opcode::SEND);
    ea.cq.none_for(Duration::from_millis(50));
    assert_eq!(eb.cq.poll(3).len(), 3);
}

#[test]
fn rdma_write_and_read() {
    let fab = tmpdir("fab");
    let n = Node::start(&fab, 1);
    let (a, b) = (n.ctx(), n.ctx());
    let (ea, eb) = pair(&a, &b, qp_type::RC, 7);
    let data = pattern(5000, 3);
    ea.buf.write(0, &data);
    a.send(
        ea.qpn,
        vec![rdma(
            1,
            wr_opcode::RDMA_WRITE,
            vec![sge(&ea.buf, ea.mr, 0, 5000)],
            &eb.buf,
            100,
            eb.mr.rkey,
        )],
    );
    let w = ea.cq.poll1();
    assert_wc(&w, 1, wc_status::SUCCESS, wc_opcode::RDMA_WRITE);
    assert_eq!(eb.buf.read(100, 5000), data);
    eb.cq.none_for(Duration::from_millis(20));

    // Write with immediate consumes a receive; the data lands at the
    // remote address, not in the receive buffer.
    b.recv(eb.qpn, 9, &eb.buf, eb.mr, 30000, 16);
    let mut wi = rdma(
        2,
        wr_opcode::RDMA_WRITE_WITH_IMM,
        vec![sge(&ea.buf, ea.mr, 0, 64)],
        &eb.buf,
        20000,
        eb.mr.rkey,
    );
    wi.imm = 42;
    a.send(ea.qpn, vec![wi]);
    assert_wc(&ea.cq.poll1(), 2, wc_status::SUCCESS, wc_opcode::RDMA_WRITE);
    let r = eb.cq.poll1();
    assert_wc(&r, 9, wc_status::SUCCESS, wc_opcode::RECV_RDMA_WITH_IMM);
    assert_eq!(
        (r.byte_len, r.imm_data, r.wc_flags, r.src_qp),
        (64, 42, wc_flags::WITH_IMM, ea.qpn)
    );
    assert_eq!(eb.buf.read(20000, 64), data[..64]);
    assert_eq!(eb.buf.read(30000, 16), vec![0; 16]);

    // Read back into two local SGEs.
    let rdata = pattern(3000, 77);
    eb.buf.write(40000, &rdata);
    a.send(
        ea.qpn,
        vec![rdma(
            3,
            wr_opcode::RDMA_READ,
            vec![
                sge(&ea.buf, ea.mr, 10000, 1000),
                sge(&ea.buf, ea.mr, 20000, 2000),
            ],
            &eb.buf,
            40000,
            eb.mr.rkey,
        )],
    );
    let w = ea.cq.poll1();
    assert_wc(&w, 3, wc_status::SUCCESS, wc_opcode::RDMA_READ);
    assert_eq!(w.byte_len, 3000);
    assert_eq!(ea.buf.read(10000, 1000), rdata[..1000]);
    assert_eq!(ea.buf.read(20000, 2000), rdata[1000..]);
}

#[test]
fn atomics() {
    let fab = tmpdir("fab");
    let n = Node::start(&fab, 1);
    let (a, b) = (n.ctx(), n.ctx());
    let (ea, eb) = pair(&a, &b, qp_type::RC, 7);
    eb.buf.write(64, &5u64.to_ne_bytes());
    let atomic = |id: u64, op: u32, off: u64, ca: u64, swap: u64| SendWr {
        compare_add: ca,
        swap,
        ..rdma(
            id,
            op,
            vec![sge(&ea.buf, ea.mr, off, 8)],
            &eb.buf,
            64,
            eb.mr.rkey,
        )
    };
    a.send(
        ea.qpn,
        vec![
            atomic(1, wr_opcode::ATOMIC_CMP_AND_SWP, 0, 5, 9),
            atomic(2, wr_opcode::ATOMIC_CMP_AND_SWP, 8, 5, 11),
            atomic(3, wr_opcode::ATOMIC_FETCH_AND_ADD, 16, 3, 0),
        ],
    );
    let ws = ea.cq.poll(3);
    assert_wc(&ws[0], 1, wc_status::SUCCESS, wc_opcode::COMP_SWAP);
    assert_wc(&ws[1], 2, wc_status::SUCCESS, wc_opcode::COMP_SWAP);
    assert_wc(&ws[2], 3, wc_status::SUCCESS, wc_opcode::FETCH_ADD);
    assert_eq!(ws[0].byte_len, 8);
    assert_eq!(
        (ea.buf.u64_at(0), ea.buf.u64_at(8), ea.buf.u64_at(16)),
        (5, 9, 9)
    );
    assert_eq!(eb.buf.u64_at(64), 12);

    // Misaligned: remote invalid request.
    let mut bad = atomic(4, wr_opcode::ATOMIC_FETCH_AND_ADD, 0, 1, 0);
    bad.remote_addr += 4;
    a.send(ea.qpn, vec![bad]);
    assert_wc(
        &ea.cq.poll1(),
        4,
        wc_status::REM_INV_REQ_ERR,
        wc_opcode::FETCH_ADD,
    );
}

#[test]
fn bad_rkey_then_flush() {
    let fab = tmpdir("fab");
    let n = Node::start(&fab, 1);
    let (a, b) = (n.ctx(), n.ctx());
    let (ea, eb) = pair(&a, &b, qp_type::RC, 7);
    // A receive buffer-only MR: no remote write.
    let local_only = b.mr(eb.pd, &Buf::new(64), access::LOCAL_WRITE);
    let s = vec![sge(&ea.buf, ea.mr, 0, 8)];
    a.send(
        ea.qpn,
        vec![
            rdma(
                1,
                wr_opcode::RDMA_WRITE,
                s.clone(),
                &eb.buf,
                0,
                eb.mr.rkey ^ 0x5a5a,
            ),
            wr(2, wr_opcode::SEND, s.clone()),
            rdma(3, wr_opcode::RDMA_WRITE, s.clone(), &eb.buf, 0, eb.mr.rkey),
        ],
    );
    let ws = ea.cq.poll(3);
    assert_wc(&ws[0], 1, wc_status::REM_ACCESS_ERR, wc_opcode::RDMA_WRITE);
    assert_eq!(ws[1].status, wc_status::WR_FLUSH_ERR);
    assert_eq!(ws[2].status, wc_status::WR_FLUSH_ERR);
    assert_eq!(a.query(ea.qpn).qp_state, qp_state::ERR);
    // Posting to a QP in ERR flushes at once, signaled or not.
    let mut u = wr(4, wr_opcode::SEND, s.clone());
    u.flags = 0;
    a.send(ea.qpn, vec![u]);
    assert_eq!(ea.cq.poll1().status, wc_status::WR_FLUSH_ERR);
    a.recv(ea.qpn, 5, &ea.buf, ea.mr, 0, 8);
    assert_wc(&ea.cq.poll1(), 5, wc_status::WR_FLUSH_ERR, wc_opcode::RECV);

    // Out of range and wrong permission on a second pair.
    let (ea, eb) = pair(&a, &b, qp_type::RC, 7);
    let s = vec![sge(&ea.buf, ea.mr, 0, 8)];
    a.send(
        ea.qpn,
        vec![rdma(
            1,
            wr_opcode::RDMA_WRITE,
            s.clone(),
            &eb.buf,
            eb.buf.len() - 4,
            eb.mr.rkey,
        )],
    );
    assert_wc(
        &ea.cq.poll1(),
        1,
        wc_status::REM_ACCESS_ERR,
        wc_opcode::RDMA_WRITE,
    );
    let (ea, _eb) = pair(&a, &b, qp_type::RC, 7);
    let s = vec![sge(&ea.buf, ea.mr, 0, 8)];
    a.send(
        ea.qpn,
        vec![SendWr {
            remote_addr: 0,
            rkey: local_only.rkey,
            ..wr(1, wr_opcode::RDMA_READ, s.clone())
        }],
    );
    assert_wc(
        &ea.cq.poll1(),
        1,
        wc_status::REM_ACCESS_ERR,
        wc_opcode::RDMA_READ,
    );

    // A local SGE with a bad lkey: local protection error.
    let (ea, _eb) = pair(&a, &b, qp_type::RC, 7);
    a.send(
        ea.qpn,
        vec![wr(
            1,
            wr_opcode::SEND,
            vec![Sge {
                addr: ea.buf.addr(),
                length: 8,
                lkey: ea.mr.lkey ^ 1,
            }],
        )],
    );
    assert_wc(&ea.cq.poll1(), 1, wc_status::LOC_PROT_ERR, wc_opcode::SEND);
}

#[test]
fn rnr_retry_exceeded_and_infinite() {
    let fab = tmpdir("fab");
    let n = Node::start(&fab, 1);
    let (a, b) = (n.ctx(), n.ctx());
    let (ea, _eb) = pair(&a, &b, qp_type::RC, 0);
    let t0 = Instant::now();
    a.send(
        ea.qpn,
        vec![
            wr(1, wr_opcode::SEND, vec![sge(&ea.buf, ea.mr, 0, 8)]),
            wr(2, wr_opcode::SEND, vec![]),
        ],
    );
    let ws = ea.cq.poll(2);
    assert_wc(&ws[0], 1, wc_status::RNR_RETRY_EXC_ERR, wc_opcode::SEND);
    assert_eq!(ws[1].status, wc_status::WR_FLUSH_ERR);
    assert!(t0.elapsed() < Duration::from_secs(2));

    // rnr_retry 7 waits for the receive; later ops (a write) wait behind.
    let (ea, eb) = pair(&a, &b, qp_type::RC, 7);
    ea.buf.write(0, b"late but fine");
    a.send(
        ea.qpn,
        vec![
            wr(1, wr_opcode::SEND, vec![sge(&ea.buf, ea.mr, 0, 13)]),
            rdma(
                2,
                wr_opcode::RDMA_WRITE,
                vec![sge(&ea.buf, ea.mr, 0, 4)],
                &eb.buf,
                500,
                eb.mr.rkey,
            ),
        ],
    );
    ea.cq.none_for(Duration::from_millis(300));
    assert_eq!(
        eb.buf.read(500, 4),
        vec![0; 4],
        "the write overtook the waiting send"
    );
    b.recv(eb.qpn, 3, &eb.buf, eb.mr, 0, 64);
    let ws = ea.cq.poll(2);
    assert_wc(&ws[0], 1, wc_status::SUCCESS, wc_opcode::SEND);
    assert_wc(&ws[1], 2, wc_status::SUCCESS, wc_opcode::RDMA_WRITE);
    assert_wc(&eb.cq.poll1(), 3, wc_status::SUCCESS, wc_opcode::RECV);
    assert_eq!(eb.buf.read(0, 13), b"late but fine");
    assert_eq!(eb.buf.read(500, 4), b"late");
}

#[test]
fn recv_too_small() {
    let fab = tmpdir("fab");
    let n = Node::start(&fab, 1);
    let (a, b) = (n.ctx(), n.ctx());
    let (ea, eb) = pair(&a, &b, qp_type::RC, 7);
    b.recv(eb.qpn, 1, &eb.buf, eb.mr, 0, 16);
    b.recv(eb.qpn, 2, &eb.buf, eb.mr, 0, 16);
    a.send(
        ea.qpn,
        vec![wr(9, wr_opcode::SEND, vec![sge(&ea.buf, ea.mr, 0, 64)])],
    );
    assert_wc(
        &ea.cq.poll1(),
        9,
        wc_status::REM_INV_REQ_ERR,
        wc_opcode::SEND,
    );
    let rs = eb.cq.poll(2);
    assert_eq!((rs[0].wr_id, rs[0].status), (1, wc_status::LOC_LEN_ERR));
    assert_eq!((rs[1].wr_id, rs[1].status), (2, wc_status::WR_FLUSH_ERR));
    assert_eq!(b.query(eb.qpn).qp_state, qp_state::ERR);
}

fn ud_qp(c: &Ctx, qkey: u32) -> End {
    let e = end(c, qp_type::UD, 1 << 14);
    let mut a = QpAttr {
        qp_state: qp_state::INIT,
        port_num: 1,
        qkey,
        ..Default::default()
    };
    assert!(matches!(
        c.modify(
            e.qpn,
            a,
            qp_mask::STATE | qp_mask::PKEY_INDEX | qp_mask::PORT | qp_mask::QKEY
        ),
        Resp::Ok
    ));
    a.qp_state = qp_state::RTR;
    assert!(matches!(c.modify(e.qpn, a, qp_mask::STATE), Resp::Ok));
    a.qp_state = qp_state::RTS;
    assert!(matches!(
        c.modify(e.qpn, a, qp_mask::STATE | qp_mask::SQ_PSN),
        Resp::Ok
    ));
    e
}

#[test]
fn ud_send_with_grh() {
    let fab = tmpdir("fab");
    let n = Node::start(&fab, 1);
    let (a, b) = (n.ctx(), n.ctx());
    let qkey = 0x1111_1111;
    let ea = ud_qp(&a, qkey);
    let eb = ud_qp(&b, qkey);
    let global = AhAttr {
        dlid: b.info.lid,
        port_num: 1,
        is_global: true,
        dgid: b.info.gid,
        hop_limit: 64,
        ..Default::default()
    };
    let ah_g = match a
        .call(Req::CreateAh {
            pd: ea.pd,
            attr: global,
        })
        .0
    {
        Resp::Handle(h) => h,
        o => panic!("{o:?}"),
    };
    let ah_l = match a
        .call(Req::CreateAh {
            pd: ea.pd,
            attr: AhAttr {
                dlid: b.info.lid,
                port_num: 1,
                ..Default::default()
            },
        })
        .0
    {
        Resp::Handle(h) => h,
        o => panic!("{o:?}"),
    };
    let data = pattern(64, 5);
    ea.buf.write(0, &data);
    let ud = |id, ah, qkey| SendWr {
        ah,
        remote_qpn: eb.qpn,
        remote_qkey: qkey,
        ..wr(id, wr_opcode::SEND, vec![sge(&ea.buf, ea.mr, 0, 64)])
    };
    b.recv(eb.qpn, 1, &eb.buf, eb.mr, 0, 40 + 64);
    b.recv(eb.qpn, 2, &eb.buf, eb.mr, 1000, 40 + 64);
    a.send(ea.qpn, vec![ud(1, ah_g, qkey)]);
    assert_wc(&ea.cq.poll1(), 1, wc_status::SUCCESS, wc_opcode::SEND);
    let r = eb.cq.poll1();
    assert_wc(&r, 1, wc_status::SUCCESS, wc_opcode::RECV);
    assert_eq!(
        (r.byte_len, r.wc_flags, r.src_qp, r.slid),
        (104, wc_flags::GRH, ea.qpn, a.info.lid)
    );
    assert_eq!(eb.buf.read(40, 64), data);
    let grh = eb.buf.read(0, 40);
    assert_eq!(grh[0] >> 4, 6);
    assert_eq!(u16::from_be_bytes([grh[4], grh[5]]), 64);
    assert_eq!((grh[6], grh[7]), (0x1B, 64));
    assert_eq!(&grh[8..24], &a.info.gid);
    assert_eq!(&grh[24..40], &b.info.gid);

    // Not global: no GRH flag; the qkey comes from the QP (bit 31).
    a.send(ea.qpn, vec![ud(2, ah_l, 0x8000_0000)]);
    assert_wc(&ea.cq.poll1(), 2, wc_status::SUCCESS, wc_opcode::SEND);
    let r = eb.cq.poll1();
    assert_eq!((r.wr_id, r.byte_len, r.wc_flags), (2, 104, 0));
    assert_eq!(eb.buf.read(1040, 64), data);

    // Wrong qkey: dropped silently; no receive posted: dropped silently.
    b.recv(eb.qpn, 3, &eb.buf, eb.mr, 0, 40 + 64);
    a.send(ea.qpn, vec![ud(4, ah_l, 0x1234)]);
    assert_wc(&ea.cq.poll1(), 4, wc_status::SUCCESS, wc_opcode::SEND);
    eb.cq.none_for(Duration::from_millis(50));
    a.send(ea.qpn, vec![ud(5, ah_l, qkey)]);
    a.send(ea.qpn, vec![ud(6, ah_l, qkey)]);
    assert_eq!(
        ea.cq.poll(2).iter().map(|w| w.status).collect::<Vec<_>>(),
        vec![0, 0]
    );
    assert_eq!(eb.cq.poll1().wr_id, 3);
    eb.cq.none_for(Duration::from_millis(50));

    // Larger than the MTU: local length error.
    let big = Buf::new(8192);
    let bmr = a.mr(ea.pd, &big, access::LOCAL_WRITE);
    a.send(
        ea.qpn,
        vec![SendWr {
            ah: ah_l,
            remote_qpn: eb.qpn,
            remote_qkey: qkey,
            ..wr(7, wr_opcode::SEND, vec![sge(&big, bmr, 0, 5000)])
        }],
    );
    assert_wc(&ea.cq.poll1(), 7, wc_status::LOC_LEN_ERR, wc_opcode::SEND);
}

#[test]
fn uc_write_and_send() {
    let fab = tmpdir("fab");
    let n = Node::start(&fab, 1);
    let (a, b) = (n.ctx(), n.ctx());
    let (ea, eb) = pair(&a, &b, qp_type::UC, 0);
    ea.buf.write(0, b"unreliable");
    a.send(
        ea.qpn,
        vec![rdma(
            1,
            wr_opcode::RDMA_WRITE,
            vec![sge(&ea.buf, ea.mr, 0, 10)],
            &eb.buf,
            64,
            eb.mr.rkey,
        )],
    );
    assert_wc(&ea.cq.poll1(), 1, wc_status::SUCCESS, wc_opcode::RDMA_WRITE);
    assert_eq!(eb.buf.read(64, 10), b"unreliable");
    // A send with no receive posted is dropped; the sender does not know.
    a.send(
        ea.qpn,
        vec![wr(2, wr_opcode::SEND, vec![sge(&ea.buf, ea.mr, 0, 10)])],
    );
    assert_wc(&ea.cq.poll1(), 2, wc_status::SUCCESS, wc_opcode::SEND);
    eb.cq.none_for(Duration::from_millis(50));
    b.recv(eb.qpn, 3, &eb.buf, eb.mr, 0, 64);
    a.send(
        ea.qpn,
        vec![wr(4, wr_opcode::SEND, vec![sge(&ea.buf, ea.mr, 0, 10)])],
    );
    assert_wc(&ea.cq.poll1(), 4, wc_status::SUCCESS, wc_opcode::SEND);
    let r = eb.cq.poll1();
    assert_eq!((r.wr_id, r.byte_len), (3, 10));
    // No READ on UC.
    a.send(
        ea.qpn,
        vec![rdma(
            5,
            wr_opcode::RDMA_READ,
            vec![sge(&ea.buf, ea.mr, 0, 8)],
            &eb.buf,
            0,
            eb.mr.rkey,
        )],
    );
    assert_wc(
        &ea.cq.poll1(),
        5,
        wc_status::LOC_QP_OP_ERR,
        wc_opcode::RDMA_READ,
    );
}

#[test]
fn srq_shared_by_two_qps() {
    let fab = tmpdir("fab");
    let n = Node::start(&fab, 1);
    let (a, b) = (n.ctx(), n.ctx());
    let pb = b.pd();
    let bbuf = Buf::new(1 << 16);
    let bmr = b.mr(pb, &bbuf, ALL_ACCESS);
    let bcq = b.cq(64);
    let srq = match b
        .call(Req::CreateSrq {
            pd: pb,
            max_wr: 64,
            max_sge: 1,
            limit: 0,
            cookie: 0xabc,
        })
        .0
    {
        Resp::Srq { handle, max_wr, .. } => {
            assert!(max_wr >= 64);
            handle
        }
        o => panic!("{o:?}"),
    };
    let qb1 = b.qp(pb, &bcq, &bcq, Some(srq), qp_type::RC);
    let qb2 = b.qp(pb, &bcq, &bcq, Some(srq), qp_type::RC);
    let ea1 = end(&a, qp_type::RC, 4096);
    let ea2 = end(&a, qp_type::RC, 4096);
    connect(&a, ea1.qpn, qp_type::RC, b.info.lid, qb1, 7, 12);
    connect(&a, ea2.qpn, qp_type::RC, b.info.lid, qb2, 7, 12);
    connect(&b, qb1, qp_type::RC, a.info.lid, ea1.qpn, 7, 12);
    connect(&b, qb2, qp_type::RC, a.info.lid, ea2.qpn, 7, 12);

    b.post(Req::PostSrqRecv {
        srq,
        wrs: (0..4)
            .map(|i| rwr(100 + i, &bbuf, bmr, i * 1024, 1024))
            .collect(),
    });
    b.ok(Req::ModifySrq {
        srq,
        mask: 2,
        max_wr: 0,
        limit: 3,
    });
    assert!(matches!(
        b.call(Req::QuerySrq { srq }).0,
        Resp::SrqAttr { limit: 3, .. }
    ));
    assert_eq!(
        b.errno(Req::ModifySrq {
            srq,
            mask: 1,
            max_wr: 128,
            limit: 0
        }),
        libc::EINVAL
    );
    ea1.buf.write(0, b"one");
    ea2.buf.write(0, b"two");
    a.send(
        ea1.qpn,
        vec![wr(1, wr_opcode::SEND, vec![sge(&ea1.buf, ea1.mr, 0, 3)])],
    );
    a.send(
        ea2.qpn,
        vec![wr(2, wr_opcode::SEND, vec![sge(&ea2.buf, ea2.mr, 0, 3)])],
    );
    assert_wc(&ea1.cq.poll1(), 1, 0, wc_opcode::SEND);
    assert_wc(&ea2.cq.poll1(), 2, 0, wc_opcode::SEND);
    let rs = bcq.poll(2);
    let mut got: Vec<(u32, u64)> = rs.iter().map(|w| (w.qp_num, w.wr_id)).collect();
    got.sort();
    let mut want = vec![(qb1, 100), (qb2, 101)];
    want.sort();
    assert_eq!(got, want);
    // The limit (3) was crossed when the second WQE was taken.
    let ev = read_event(&b.async_fd, T).expect("SRQ limit event");
    assert_eq!(ev.len(), ASYNC_EVENT_BYTES);
    assert_eq!(
        u32::from_ne_bytes(ev[0..4].try_into().unwrap()),
        event::SRQ_LIMIT_REACHED
    );
    assert_eq!(u64::from_ne_bytes(ev[8..16].try_into().unwrap()), 0xabc);
    assert!(matches!(
        b.call(Req::QuerySrq { srq }).0,
        Resp::SrqAttr { limit: 0, .. }
    ));

    // Drain the SRQ, then a send waits (rnr_retry 7) until a post.
    a.send(
        ea1.qpn,
        vec![
            wr(3, wr_opcode::SEND, vec![]),
            wr(4, wr_opcode::SEND, vec![]),
            wr(5, wr_opcode::SEND, vec![]),
        ],
    );
    assert_eq!(ea1.cq.poll(2).len(), 2);
    ea1.cq.none_for(Duration::from_millis(100));
    b.post(Req::PostSrqRecv {
        srq,
        wrs: vec![rwr(200, &bbuf, bmr, 0, 64)],
    });
    assert_wc(&ea1.cq.poll1(), 5, 0, wc_opcode::SEND);
    assert_eq!(bcq.poll(3)[2].wr_id, 200);
    assert_eq!(b.errno(Req::DestroySrq { srq }), libc::EBUSY);
}

#[test]
fn channel_events() {
    let fab = tmpdir("fab");
    let n = Node::start(&fab, 1);
    let (a, b) = (n.ctx(), n.ctx());
    let (ch, chfd) = match b.call(Req::CreateChannel) {
        (Resp::Channel { handle }, Some(fd)) => (handle, fd),
        o => panic!("{o:?}"),
    };
    let cq = b.cq_with(16, Some(ch), 0xc00c1e);
    let pd = b.pd();
    let buf = Buf::new(4096);
    let mr = b.mr(pd, &buf, ALL_ACCESS);
    let qb = b.qp(pd, &cq, &cq, None, qp_type::RC);
    let ea = end(&a, qp_type::RC, 4096);
    connect(&a, ea.qpn, qp_type::RC, b.info.lid, qb, 7, 12);
    connect(&b, qb, qp_type::RC, a.info.lid, ea.qpn, 7, 12);
    for i in 0..4 {
        b.recv(qb, i, &buf, mr, 0, 64);
    }
    let send = |id, solicited: bool| {
        let mut w = wr(id, wr_opcode::SEND, vec![]);
        if solicited {
            w.flags |= send_flags::SOLICITED;
        }
        a.send(ea.qpn, vec![w]);
        ea.cq.poll1();
    };
    // Not armed: no event.
    send(1, false);
    cq.poll1();
    assert!(read_event(&chfd, Duration::from_millis(50)).is_none());
    // Armed: one event for the next completion, then disarmed.
    b.post(Req::ReqNotify {
        cq: cq.handle,
        solicited_only: false,
    });
    b.sync();
    send(2, false);
    let ev = read_event(&chfd, T).expect("event");
    assert_eq!(ev, 0xc00c1eu64.to_ne_bytes());
    send(3, false);
    assert!(read_event(&chfd, Duration::from_millis(50)).is_none());
    assert_eq!(cq.poll(2).len(), 2);
    // Solicited only: an unsolicited completion does not fire.
    b.post(Req::ReqNotify {
        cq: cq.handle,
        solicited_only: true,
    });
    b.recv(qb, 10, &buf, mr, 0, 64);
    b.sync();
    send(4, false);
    assert!(read_event(&chfd, Duration::from_millis(50)).is_none());
    send(5, true);
    assert_eq!(
        read_event(&chfd, T).expect("solicited event"),
        0xc00c1eu64.to_ne_bytes()
    );
    // Arming while completions wait in the ring fires at once (the program
    // polls right after arming, maybe before the service saw the arm).
    b.recv(qb, 11, &buf, mr, 0, 64);
    send(6, false);
    b.sync();
    b.post(Req::ReqNotify {
        cq: cq.handle,
        solicited_only: false,
    });
    assert_eq!(
        read_event(&chfd, T).expect("event for a pending completion"),
        0xc00c1eu64.to_ne_bytes()
    );
    assert_eq!(cq.poll(3).len(), 3);
    b.post(Req::ReqNotify {
        cq: cq.handle,
        solicited_only: false,
    });
    assert!(read_event(&chfd, Duration::from_millis(50)).is_none());
    assert_eq!(b.errno(Req::DestroyChannel { channel: ch }), libc::EBUSY);
}

#[test]
fn cq_overflow_raises_cq_err_and_reset_drops_receives() {
    let fab = tmpdir("fab");
    let n = Node::start(&fab, 1);
    let (a, b) = (n.ctx(), n.ctx());
    // A one-entry CQ for a's sends: the second completion does not fit.
    let pd = a.pd();
    let buf = Buf::new(4096);
    let mr = a.mr(pd, &buf, ALL_ACCESS);
    let small = a.cq_with(1, None, 0x0f10);
    assert_eq!(small.ring.capacity(), 1);
    let rcq = a.cq(16);
    let qa = a.qp(pd, &small, &rcq, None, qp_type::RC);
    let eb = end(&b, qp_type::RC, 4096);
    // A receive posted in RESET is dropped.
    b.recv(eb.qpn, 99, &eb.buf, eb.mr, 0, 64);
    connect(&a, qa, qp_type::RC, b.info.lid, eb.qpn, 0, 12);
    connect(&b, eb.qpn, qp_type::RC, a.info.lid, qa, 0, 12);
    a.send(
        qa,
        vec![
            wr(1, wr_opcode::RDMA_WRITE, vec![]),
            wr(2, wr_opcode::RDMA_WRITE, vec![]),
        ],
    );
    let ev = read_event(&a.async_fd, T).expect("CQ_ERR");
    assert_eq!(
        u32::from_ne_bytes(ev[0..4].try_into().unwrap()),
        event::CQ_ERR
    );
    assert_eq!(u64::from_ne_bytes(ev[8..16].try_into().unwrap()), 0x0f10);
    assert!(small.ring.overflowed());
    assert_eq!(small.poll1().wr_id, 1);
    // The dropped receive: an RNR error (rnr_retry 0) for the next send.
    a.send(qa, vec![wr(3, wr_opcode::SEND, vec![sge(&buf, mr, 0, 8)])]);
    assert_wc(
        &small.poll1(),
        3,
        wc_status::RNR_RETRY_EXC_ERR,
        wc_opcode::SEND,
    );
    eb.cq.none_for(Duration::from_millis(20));
}

#[test]
fn control_verbs_and_errors() {
    let fab = tmpdir("fab");
    let n = Node::start(&fab, 2);
    // A second service on the same socket does not start.
    let again = daemon::start(Options {
        devices: 1,
        socket: n.sock.clone(),
        fabric: fab.to_path_buf(),
        idle_exit: None,
        addr: Some(std::net::Ipv4Addr::LOCALHOST),
    })
    .unwrap();
    assert!(again.is_none());

    let devs = n.d().devices();
    assert_eq!(devs.len(), 2);
    assert_ne!(devs[0].lid, devs[1].lid);
    for d in &devs {
        assert!(d.lid >= 1 && d.lid <= 0xBFFF);
        assert_ne!(d.guid, 0);
        assert_eq!(&d.gid[..8], &[0xfe, 0x80, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&d.gid[8..], &d.guid.to_be_bytes());
        let entry = std::fs::read_to_string(fab.join(format!("{:04x}", d.lid))).unwrap();
        assert!(
            entry.starts_with("127.0.0.1:") && entry.ends_with('\n'),
            "{entry:?}"
        );
    }
    let c = Ctx::open(&n.sock, 1);
    assert_eq!(c.info, devs[1]);
    assert!(matches!(c.call(Req::QueryDevices).0, Resp::Devices(d) if d == devs));

    let pd = c.pd();
    let buf = Buf::new(4096);
    assert_eq!(
        c.errno(Req::RegMr {
            pd,
            addr: buf.addr(),
            len: 64,
            iova: buf.addr(),
            access: access::REMOTE_WRITE
        }),
        libc::EINVAL
    );
    assert_eq!(
        c.errno(Req::RegMr {
            pd,
            addr: buf.addr(),
            len: 64,
            iova: 0,
            access: access::REMOTE_ATOMIC
        }),
        libc::EINVAL
    );
    assert_eq!(
        c.errno(Req::RegMr {
            pd,
            addr: 8,
            len: 64,
            iova: 0,
            access: access::LOCAL_WRITE
        }),
        libc::EFAULT
    );
    assert_eq!(
        c.errno(Req::RegMr {
            pd: pd + 1000,
            addr: buf.addr(),
            len: 64,
            iova: 0,
            access: 0
        }),
        libc::EINVAL
    );
    let m1 = c.mr(pd, &buf, ALL_ACCESS);
    let m2 = c.mr(pd, &buf, access::LOCAL_WRITE);
    assert!(m1.lkey != m2.lkey && m1.rkey != m2.rkey && m1.lkey != 0);
    assert_eq!(
        c.errno(Req::CreateCq {
            cqe: 4_194_305,
            channel: None,
            cookie: 0
        }),
        libc::EINVAL
    );
    let cq = c.cq(1);
    let too_big = QpCap {
        max_send_wr: 20000,
        max_recv_wr: 1,
        max_send_sge: 1,
        max_recv_sge: 1,
        max_inline_data: 0,
    };
    let create = |cap| Req::CreateQp {
        pd,
        send_cq: cq.handle,
        recv_cq: cq.handle,
        srq: None,
        qp_type: qp_type::RC,
        cap,
        sq_sig_all: true,
        cookie: 0,
    };
    assert_eq!(c.errno(create(too_big)), libc::EINVAL);
    assert_eq!(
        c.errno(create(QpCap {
            max_send_wr: 1,
            max_send_sge: 33,
            ..too_big
        })),
        libc::EINVAL
    );
    assert_eq!(
        c.errno(create(QpCap {
            max_send_wr: 1,
            max_inline_data: MAX_INLINE + 1,
            ..too_big
        })),
        libc::EINVAL
    );
    let qpn = c.qp(pd, &cq, &cq, None, qp_type::RC);
    let qpn2 = c.qp(pd, &cq, &cq, None, qp_type::RC);
    assert_ne!(qpn, qpn2);

    // State machine.
    let init = QpAttr {
        qp_state: qp_state::INIT,
        port_num: 1,
        qp_access_flags: access::REMOTE_WRITE,
        ..Default::default()
    };
    let rtr = QpAttr {
        qp_state: qp_state::RTR,
        ..init
    };
    assert_eq!(
        c.errno(Req::ModifyQp {
            qpn,
            attr: rtr,
            mask: qp_mask::STATE
        }),
        libc::EINVAL
    );
    assert_eq!(
        c.errno(Req::ModifyQp {
            qpn,
            attr: init,
            mask: qp_mask::STATE | qp_mask::PORT | qp_mask::PKEY_INDEX
        }),
        libc::EINVAL
    );
    let m = qp_mask::STATE | qp_mask::PORT | qp_mask::PKEY_INDEX | qp_mask::ACCESS_FLAGS;
    assert_eq!(
        c.errno(Req::ModifyQp {
            qpn,
            attr: QpAttr {
                port_num: 2,
                ..init
            },
            mask: m
        }),
        libc::EINVAL
    );
    assert_eq!(c.query(qpn).qp_state, qp_state::RESET);
    c.ok(Req::ModifyQp {
        qpn,
        attr: init,
        mask: m,
    });
    c.ok(Req::ModifyQp {
        qpn,
        attr: init,
        mask: qp_mask::STATE,
    });
    assert_eq!(
        c.errno(Req::ModifyQp {
            qpn,
            attr: QpAttr {
                qp_state: qp_state::RTS,
                ..init
            },
            mask: qp_mask::STATE
        }),
        libc::EINVAL
    );
    assert_eq!(
        c.errno(Req::ModifyQp {
            qpn,
            attr: rtr,
            mask: qp_mask::STATE | qp_mask::AV
        }),
        libc::EINVAL
    );
    connect_from_init(&c, qpn, devs[0].lid, 0x1234);
    let q = c.query(qpn);
    assert_eq!(
        (
            q.qp_state,
            q.dest_qp_num,
            q.ah_attr.dlid,
            q.rnr_retry,
            q.timeout,
            q.min_rnr_timer
        ),
        (qp_state::RTS, 0x1234, devs[0].lid, 6, 14, 12)
    );
    assert_eq!(q.qp_access_flags, access::REMOTE_WRITE);
    c.ok(Req::ModifyQp {
        qpn,
        attr: QpAttr {
            qp_state: qp_state::RTS,
            ..q
        },
        mask: qp_mask::STATE,
    });
    assert_eq!(
        c.errno(Req::ModifyQp {
            qpn,
            attr: init,
            mask: qp_mask::STATE
        }),
        libc::EINVAL
    );
    c.ok(Req::ModifyQp {
        qpn,
        attr: QpAttr {
            qp_state: qp_state::ERR,
            ..q
        },
        mask: qp_mask::STATE,
    });
    c.ok(Req::ModifyQp {
        qpn,
        attr: QpAttr {
            qp_state: qp_state::RESET,
            ..q
        },
        mask: qp_mask::STATE,
    });
    assert_eq!(c.query(qpn).qp_state, qp_state::RESET);

    // Busy resources.
    assert_eq!(c.errno(Req::DeallocPd { pd }), libc::EBUSY);
    assert_eq!(c.errno(Req::DestroyCq { cq: cq.handle }), libc::EBUSY);
    c.ok(Req::DestroyQp { qpn });
    c.ok(Req::DestroyQp { qpn: qpn2 });
    assert_eq!(c.errno(Req::DestroyQp { qpn }), libc::EINVAL);
    c.ok(Req::DestroyCq { cq: cq.handle });
    assert_eq!(c.errno(Req::DeallocPd { pd }), libc::EBUSY);
    c.ok(Req::DeregMr { mr: m1.handle });
    c.ok(Req::DeregMr { mr: m2.handle });
    c.ok(Req::DeallocPd { pd });
    let k = n.counts();
    assert_eq!((k.pds, k.mrs, k.cqs, k.qps), (0, 0, 0, 0));

    // Another context cannot use this one's handles.
    let pd = c.pd();
    let other = n.ctx();
    assert_eq!(other.errno(Req::DeallocPd { pd }), libc::EINVAL);
    assert_eq!(
        other.errno(Req::RegMr {
            pd,
            addr: buf.addr(),
            len: 64,
            iova: 0,
            access: 0
        }),
        libc::EINVAL
    );
}

fn connect_from_init(c: &Ctx, qpn: u32, dlid: u16, dqpn: u32) {
    let a = QpAttr {
        qp_state: qp_state::RTR,
        path_mtu: 5,
        dest_qp_num: dqpn,
        max_dest_rd_atomic: 1,
        min_rnr_timer: 12,
        ah_attr: AhAttr {
            dlid,
            port_num: 1,
            ..Default::default()
        },
        ..Default::default()
    };
    let m = qp_mask::STATE
        | qp_mask::AV
        | qp_mask::PATH_MTU
        | qp_mask::DEST_QPN
        | qp_mask::RQ_PSN
        | qp_mask::MAX_DEST_RD_ATOMIC;
    assert_eq!(
        c.errno(Req::ModifyQp {
            qpn,
            attr: a,
            mask: m
        }),
        libc::EINVAL,
        "MIN_RNR_TIMER is required"
    );
    c.ok(Req::ModifyQp {
        qpn,
        attr: a,
        mask: m | qp_mask::MIN_RNR_TIMER,
    });
    let a = QpAttr {
        qp_state: qp_state::RTS,
        timeout: 14,
        retry_cnt: 7,
        rnr_retry: 6,
        max_rd_atomic: 1,
        ..a
    };
    let m = qp_mask::STATE
        | qp_mask::SQ_PSN
        | qp_mask::TIMEOUT
        | qp_mask::RETRY_CNT
        | qp_mask::RNR_RETRY;
    assert_eq!(
        c.errno(Req::ModifyQp {
            qpn,
            attr: a,
            mask: m
        }),
        libc::EINVAL,
        "MAX_QP_RD_ATOMIC is required"
    );
    c.ok(Req::ModifyQp {
        qpn,
        attr: a,
        mask: m | qp_mask::MAX_QP_RD_ATOMIC,
    });
}

#[test]
fn protocol_violations_close_the_connection() {
    let fab = tmpdir("fab");
    let n = Node::start(&fab, 1);
    // Request before Hello.
    let fd = raw_connect(&n.sock);
    send_req(&fd, &Req::AllocPd);
    assert!(closed_by_peer(&fd));
    // Wrong version: answered, then closed.
    let fd = raw_connect(&n.sock);
    send_req(&fd, &Req::Hello { version: 999 });
    assert!(matches!(recv_resp(&fd).0, Resp::Hello { version: VERSION }));
    assert!(closed_by_peer(&fd));
    // Resources before Open.
    let fd = raw_connect(&n.sock);
    send_req(&fd, &Req::Hello { version: VERSION });
    recv_resp(&fd);
    send_req(&fd, &Req::AllocPd);
    assert!(closed_by_peer(&fd));
    // Garbage after some resources: closed, and they are gone.
    let c = n.ctx();
    let pd = c.pd();
    let _mr = c.mr(pd, &Buf::new(64), 0);
    assert_eq!(n.counts().mrs, 1);
    sys::send_packet(c.fd.as_raw_fd(), &[0xff; 7], None).unwrap();
    assert!(closed_by_peer(&c.fd));
    wait_for(|| n.counts() == Counts::default());
    // Posting to handles one does not own is ignored, not fatal.
    let c = n.ctx();
    c.send(0x777, vec![wr(1, wr_opcode::SEND, vec![])]);
    c.post(Req::PostRecv {
        qpn: 0x777,
        wrs: vec![],
    });
    c.post(Req::ReqNotify {
        cq: 12345,
        solicited_only: false,
    });
    let _ = c.pd();
}

fn wait_for(mut f: impl FnMut() -> bool) {
    let end = Instant::now() + T;
    while !f() {
        assert!(Instant::now() < end, "condition not reached");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn flush_on_modify_to_error() {
    let fab = tmpdir("fab");
    let n = Node::start(&fab, 1);
    let (a, b) = (n.ctx(), n.ctx());
    let (ea, eb) = pair(&a, &b, qp_type::RC, 7);
    for i in 0..3 {
        b.recv(eb.qpn, i, &eb.buf, eb.mr, 0, 64);
    }
    let err = QpAttr {
        qp_state: qp_state::ERR,
        ..Default::default()
    };
    assert!(matches!(b.modify(eb.qpn, err, qp_mask::STATE), Resp::Ok));
    let rs = eb.cq.poll(3);
    assert!(rs.iter().all(|w| w.status == wc_status::WR_FLUSH_ERR));
    assert_eq!(
        rs.iter().map(|w| w.wr_id).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    // The peer's send now fails (responder in ERR).
    a.send(ea.qpn, vec![wr(1, wr_opcode::SEND, vec![])]);
    assert_eq!(ea.cq.poll1().status, wc_status::RETRY_EXC_ERR);
    // RESET drops without completions; the QP can be reconnected.
    let reset = QpAttr {
        qp_state: qp_state::RESET,
        ..Default::default()
    };
    assert!(matches!(b.modify(eb.qpn, reset, qp_mask::STATE), Resp::Ok));
    assert!(matches!(a.modify(ea.qpn, reset, qp_mask::STATE), Resp::Ok));
    connect(&a, ea.qpn, qp_type::RC, b.info.lid, eb.qpn, 7, 12);
    connect(&b, eb.qpn, qp_type::RC, a.info.lid, ea.qpn, 7, 12);
    b.recv(eb.qpn, 9, &eb.buf, eb.mr, 0, 64);
    a.send(ea.qpn, vec![wr(2, wr_opcode::SEND, vec![])]);
    assert_wc(&ea.cq.poll1(), 2, 0, wc_opcode::SEND);
    assert_wc(&eb.cq.poll1(), 9, 0, wc_opcode::RECV);
}

#[test]
fn sender_ahead_of_receiver_waits_for_rtr() {
    // A requester may reach RTS and send before its peer QP is in RTR; as
    // on hardware (retransmission), the packet waits for the responder.
    let fab = tmpdir("fab");
    let n = Node::start(&fab, 1);
    let (a, b) = (n.ctx(), n.ctx());
    let ea = end(&a, qp_type::RC, 4096);
    let eb = end(&b, qp_type::RC, 4096);
    connect(&a, ea.qpn, qp_type::RC, b.info.lid, eb.qpn, 7, 12);
    ea.buf.write(0, b"early");
    a.send(
        ea.qpn,
        vec![rdma(
            1,
            wr_opcode::RDMA_WRITE,
            vec![sge(&ea.buf, ea.mr, 0, 5)],
            &eb.buf,
            0,
            eb.mr.rkey,
        )],
    );
    ea.cq.none_for(Duration::from_millis(50));
    connect(&b, eb.qpn, qp_type::RC, a.info.lid, ea.qpn, 7, 12);
    assert_wc(&ea.cq.poll1(), 1, 0, wc_opcode::RDMA_WRITE);
    assert_eq!(eb.buf.read(0, 5), b"early");
}

#[test]
fn two_daemons() {
    let fab = tmpdir("fab");
    let n1 = Node::start(&fab, 1);
    let n2 = Node::start(&fab, 1);
    let (a, b) = (n1.ctx(), n2.ctx());
    assert_ne!(a.info.lid, b.info.lid);
    let (ea, eb) = pair(&a, &b, qp_type::RC, 7);
    // SEND both ways.
    let data = pattern(10000, 4);
    ea.buf.write(0, &data);
    b.recv(eb.qpn, 1, &eb.buf, eb.mr, 0, 20000);
    a.send(
        ea.qpn,
        vec![wr(2, wr_opcode::SEND, vec![sge(&ea.buf, ea.mr, 0, 10000)])],
    );
    assert_wc(&ea.cq.poll1(), 2, 0, wc_opcode::SEND);
    let r = eb.cq.poll1();
    assert_eq!(
        (r.wr_id, r.byte_len, r.src_qp, r.slid),
        (1, 10000, ea.qpn, a.info.lid)
    );
    assert_eq!(eb.buf.read(0, 10000), data);
    a.recv(ea.qpn, 3, &ea.buf, ea.mr, 30000, 100);
    let mut s = wr(
        4,
        wr_opcode::SEND_WITH_IMM,
        vec![sge(&eb.buf, eb.mr, 0, 100)],
    );
    s.imm = 7;
    b.send(eb.qpn, vec![s]);
    assert_wc(&eb.cq.poll1(), 4, 0, wc_opcode::SEND);
    let r = ea.cq.poll1();
    assert_eq!((r.wr_id, r.imm_data, r.slid), (3, 7, b.info.lid));
    assert_eq!(ea.buf.read(30000, 100), data[..100]);
    // WRITE, READ, atomics, pipelined in one post.
    let wdata = pattern(4000, 8);
    ea.buf.write(40000, &wdata);
    eb.buf.write(50000, &pattern(2000, 9));
    eb.buf.write(60000, &100u64.to_ne_bytes());
    a.send(
        ea.qpn,
        vec![
            rdma(
                5,
                wr_opcode::RDMA_WRITE,
                vec![sge(&ea.buf, ea.mr, 40000, 4000)],
                &eb.buf,
                20000,
                eb.mr.rkey,
            ),
            rdma(
                6,
                wr_opcode::RDMA_READ,
                vec![sge(&ea.buf, ea.mr, 10000, 2000)],
                &eb.buf,
                50000,
                eb.mr.rkey,
            ),
            SendWr {
                compare_add: 5,
                ..rdma(
                    7,
                    wr_opcode::ATOMIC_FETCH_AND_ADD,
                    vec![sge(&ea.buf, ea.mr, 64000, 8)],
                    &eb.buf,
                    60000,
                    eb.mr.rkey,
                )
            },
            SendWr {
                compare_add: 105,
                swap: 1,
                ..rdma(
                    8,
                    wr_opcode::ATOMIC_CMP_AND_SWP,
                    vec![sge(&ea.buf, ea.mr, 64008, 8)],
                    &eb.buf,
                    60000,
                    eb.mr.rkey,
                )
            },
        ],
    );
    let ws = ea.cq.poll(4);
    assert_eq!(
        ws.iter().map(|w| (w.wr_id, w.status)).collect::<Vec<_>>(),
        vec![(5, 0), (6, 0), (7, 0), (8, 0)]
    );
    assert_eq!(eb.buf.read(20000, 4000), wdata);
    assert_eq!(ea.buf.read(10000, 2000), pattern(2000, 9));
    assert_eq!(
        (
            ea.buf.u64_at(64000),
            ea.buf.u64_at(64008),
            eb.buf.u64_at(60000)
        ),
        (100, 105, 1)
    );
    // Remote errors cross the link too.
    a.send(
        ea.qpn,
        vec![rdma(
            9,
            wr_opcode::RDMA_WRITE,
            vec![sge(&ea.buf, ea.mr, 0, 8)],
            &eb.buf,
            0,
            0,
        )],
    );
    assert_wc(
        &ea.cq.poll1(),
        9,
        wc_status::REM_ACCESS_ERR,
        wc_opcode::RDMA_WRITE,
    );

    // RNR across services.
    let (ea, _eb) = pair(&a, &b, qp_type::RC, 1);
    a.send(ea.qpn, vec![wr(1, wr_opcode::SEND, vec![])]);
    assert_wc(
        &ea.cq.poll1(),
        1,
        wc_status::RNR_RETRY_EXC_ERR,
        wc_opcode::SEND,
    );

    // UD across services.
    let qkey = 0x22;
    let ua = ud_qp(&a, qkey);
    let ub = ud_qp(&b, qkey);
    let ah = match a
        .call(Req::CreateAh {
            pd: ua.pd,
            attr: AhAttr {
                dlid: b.info.lid,
                port_num: 1,
                ..Default::default()
            },
        })
        .0
    {
        Resp::Handle(h) => h,
        o => panic!("{o:?}"),
    };
    b.recv(ub.qpn, 1, &ub.buf, ub.mr, 0, 2000);
    ua.buf.write(0, b"datagram");
    a.send(
        ua.qpn,
        vec![SendWr {
            ah,
            remote_qpn: ub.qpn,
            remote_qkey: qkey,
            ..wr(1, wr_opcode::SEND, vec![sge(&ua.buf, ua.mr, 0, 8)])
        }],
    );
    assert_wc(&ua.cq.poll1(), 1, 0, wc_opcode::SEND);
    assert_eq!(ub.cq.poll1().byte_len, 48);
    assert_eq!(ub.buf.read(40, 8), b"datagram");
}

#[test]
fn unknown_lid_and_peer_death() {
    let fab = tmpdir("fab");
    let n1 = Node::start(&fab, 1);
    let mut n2 = Node::start(&fab, 1);
    let a = n1.ctx();
    // A LID nobody registered.
    let lids: Vec<u16> = vec![a.info.lid, n2.d().devices()[0].lid];
    let nobody = (1..0xBFFF).find(|l| !lids.contains(l)).unwrap();
    let ea = end(&a, qp_type::RC, 4096);
    connect(&a, ea.qpn, qp_type::RC, nobody, 0x4242, 7, 12);
    a.send(
        ea.qpn,
        vec![
            wr(1, wr_opcode::SEND, vec![]),
            wr(2, wr_opcode::SEND, vec![]),
        ],
    );
    let ws = ea.cq.poll(2);
    assert_wc(&ws[0], 1, wc_status::RETRY_EXC_ERR, wc_opcode::SEND);
    assert_eq!(ws[1].status, wc_status::WR_FLUSH_ERR);

    // Outstanding requests on a peer that stops fail with RETRY_EXC_ERR.
    let b = n2.ctx();
    let (ea, _eb) = pair(&a, &b, qp_type::RC, 7);
    a.send(ea.qpn, vec![wr(1, wr_opcode::SEND, vec![])]);
    wait_for(|| n2.counts().held == 1);
    ea.cq.none_for(Duration::from_millis(20));
    let lid2 = b.info.lid;
    n2.stop();
    assert_wc(&ea.cq.poll1(), 1, wc_status::RETRY_EXC_ERR, wc_opcode::SEND);
    assert!(
        !fab.join(format!("{lid2:04x}")).exists(),
        "fabric entry removed at stop"
    );
    assert!(closed_by_peer(&b.fd));
}

#[test]
fn client_death_destroys_everything() {
    let fab = tmpdir("fab");
    let n1 = Node::start(&fab, 1);
    let n2 = Node::start(&fab, 1);
    let a = n1.ctx();
    let base1 = n1.counts();
    let b = n2.ctx();
    let (ea, eb) = pair(&a, &b, qp_type::RC, 7);
    // More of everything on b's side.
    let (ch, _chfd) = match b.call(Req::CreateChannel) {
        (Resp::Channel { handle }, Some(fd)) => (handle, fd),
        o => panic!("{o:?}"),
    };
    let _cq2 = b.cq_with(8, Some(ch), 1);
    let srq = match b
        .call(Req::CreateSrq {
            pd: eb.pd,
            max_wr: 8,
            max_sge: 1,
            limit: 0,
            cookie: 0,
        })
        .0
    {
        Resp::Srq { handle, .. } => handle,
        o => panic!("{o:?}"),
    };
    b.post(Req::PostSrqRecv {
        srq,
        wrs: vec![rwr(1, &eb.buf, eb.mr, 0, 8)],
    });
    let _ah = b.call(Req::CreateAh {
        pd: eb.pd,
        attr: AhAttr {
            dlid: a.info.lid,
            port_num: 1,
            ..Default::default()
        },
    });
    b.recv(eb.qpn, 1, &eb.buf, eb.mr, 0, 8);
    b.sync();
    let k = n2.counts();
    assert_eq!(
        (k.contexts, k.pds, k.mrs, k.cqs, k.channels, k.srqs, k.ahs, k.qps, k.recv_wrs),
        (1, 1, 1, 2, 1, 1, 1, 1, 2)
    );
    // One send completes; the next waits at b for a receive (rnr_retry 7).
    a.send(
        ea.qpn,
        vec![
            wr(1, wr_opcode::SEND, vec![]),
            wr(2, wr_opcode::SEND, vec![]),
        ],
    );
    assert_wc(&ea.cq.poll1(), 1, 0, wc_opcode::SEND);
    wait_for(|| n2.counts().held == 1);
    let old_qpn = eb.qpn;
    let t0 = Instant::now();
    drop(b);
    // The waiting request fails as if the peer stopped answering: after
    // the requester's retry budget (timeout 14: 67 ms, 8 tries), not at once.
    assert_wc(&ea.cq.poll1(), 2, wc_status::RETRY_EXC_ERR, wc_opcode::SEND);
    assert!(
        t0.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t0.elapsed()
    );
    wait_for(|| {
        let k = n2.counts();
        k.connections == 0
            && Counts {
                inbound_peers: 0,
                ..k
            } == Counts::default()
    });
    // Its QP number no longer takes traffic.
    let ea2 = end(&a, qp_type::RC, 4096);
    connect(&a, ea2.qpn, qp_type::RC, eb_lid(&n2), old_qpn, 7, 12);
    a.send(ea2.qpn, vec![wr(1, wr_opcode::SEND, vec![])]);
    assert_wc(
        &ea2.cq.poll1(),
        1,
        wc_status::RETRY_EXC_ERR,
        wc_opcode::SEND,
    );
    // a's own resources are intact; when a goes, n1 is empty too.
    assert!(n1.counts().qps >= 2 && base1.qps == 0);
    drop(a);
    wait_for(|| {
        let k = n1.counts();
        Counts { links: 0, ..k } == Counts::default()
    });
}

fn eb_lid(n: &Node) -> u16 {
    n.d().devices()[0].lid
}

#[test]
fn idle_exit_and_cleanup() {
    let fab = tmpdir("fab");
    let dir = tmpdir("node");
    let sock = dir.join("s.sock");
    let opts = Options {
        devices: 1,
        socket: sock.clone(),
        fabric: fab.to_path_buf(),
        idle_exit: Some(Duration::from_millis(300)),
        addr: Some(std::net::Ipv4Addr::LOCALHOST),
    };
    let d = daemon::start(opts.clone()).unwrap().unwrap();
    let lid = d.devices()[0].lid;
    assert!(fab.join(format!("{lid:04x}")).exists());
    let c = Ctx::open(&sock, 0);
    std::thread::sleep(Duration::from_millis(600));
    assert!(!d.finished(), "a connected context keeps it alive");
    drop(c);
    wait_for(|| d.finished());
    assert!(!sock.exists());
    assert!(!fab.join(format!("{lid:04x}")).exists());
    drop(d);
    // The lock is free again: a new one starts, with fresh numbers.
    let d2 = daemon::start(opts).unwrap().unwrap();
    assert_ne!(d2.devices()[0].guid, 0);
    d2.stop();

    // A stale fabric entry (nobody listening) is replaced.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    for l in 1..=0xBFFFu16 {
        std::fs::write(fab.join(format!("{l:04x}")), format!("{dead_addr}\n")).unwrap();
    }
    let n = Node::start(&fab, 1);
    let lid = n.d().devices()[0].lid;
    let entry = std::fs::read_to_string(fab.join(format!("{lid:04x}"))).unwrap();
    assert_ne!(entry, format!("{dead_addr}\n"));
}

#[test]
fn throughput() {
    let fab = tmpdir("fab");
    let n1 = Node::start(&fab, 1);
    let n2 = Node::start(&fab, 1);
    let a = n1.ctx();
    for (label, b) in [("local", n1.ctx()), ("two services over TCP", n2.ctx())] {
        let (ea, eb) = pair(&a, &b, qp_type::RC, 7);
        let total: u64 = 100_000;
        let window: u64 = 1024;
        let batch: u64 = 64;
        for i in 0..window {
            b.recv(eb.qpn, i, &eb.buf, eb.mr, (i % 512) * 64, 64);
        }
        let start = Instant::now();
        let (mut sent, mut done_s, mut done_r) = (0u64, 0u64, 0u64);
        let mut tmp = [Wc::default(); 256];
        while done_s < total || done_r < total {
            if sent < total && sent - done_s < window {
                let k = batch.min(total - sent);
                let wrs = (0..k)
                    .map(|j| wr(sent + j, wr_opcode::SEND, vec![sge(&ea.buf, ea.mr, 0, 64)]))
                    .collect();
                a.send(ea.qpn, wrs);
                sent += k;
            }
            let k = ea.cq.ring.pop_into(&mut tmp);
            assert!(tmp[..k].iter().all(|w| w.status == 0));
            done_s += k as u64;
            let k = eb.cq.ring.pop_into(&mut tmp);
            assert!(tmp[..k].iter().all(|w| w.status == 0));
            if k > 0 {
                let wrs = (0..k as u64)
                    .map(|j| {
                        rwr(
                            done_r + window + j,
                            &eb.buf,
                            eb.mr,
                            ((done_r + j) % 512) * 64,
                            64,
                        )
                    })
                    .collect();
                b.post(Req::PostRecv { qpn: eb.qpn, wrs });
            }
            done_r += k as u64;
            if k == 0 {
                std::thread::yield_now();
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "stalled at {done_s}/{done_r}"
            );
        }
        let secs = start.elapsed().as_secs_f64();
        eprintln!(
            "softib throughput ({label}): {total} RC 64-byte sends in {secs:.3} s = {:.0} ops/s",
            total as f64 / secs
        );
    }
}
