//! Checkpoint (drain the device into the plugin's memory) and restart
//! (re-create every object on the new device, exchange the new ids through
//! the coordinator's name service, reconnect).

use crate::ffi::*;
use crate::shadow::*;
use crate::sys::{self, real};
use std::collections::HashMap;
use std::ffi::c_int;
use std::ptr::null_mut;
use std::sync::atomic::{AtomicU64, Ordering::*};

/// This process's name in the name service (its MR table's key); in the
/// image, so the same after a restart.
static TOKEN: AtomicU64 = AtomicU64::new(0);

fn token() -> u64 {
    let t = TOKEN.load(Relaxed);
    if t != 0 {
        return t;
    }
    let mut b = [0u8; 8];
    // SAFETY: fills our buffer.
    unsafe { libc::getrandom(b.as_mut_ptr().cast(), 8, 0) };
    let t = u64::from_ne_bytes(b) | 1;
    TOKEN.store(t, Relaxed);
    t
}

/// How long the last drain took (µs), said at RESUME/RESTART with DMTCP_IB_DEBUG.
static DRAIN_US: AtomicU64 = AtomicU64::new(0);

/// How long the drain waits for posted sends to complete.
const DRAIN_MS: u64 = 10_000;

pub(crate) fn presuspend(generation: i32) {
    token();
    sys::exclude_device_memory();
    post_fences();
    // The drain's buffers: nothing may be allocated once threads are
    // suspended.
    let n = objs().iter().filter(|o| matches!(o, Obj::Qp(_))).count();
    ROUND.store(generation, Relaxed);
    *RNR.lock().unwrap_or_else(|e| e.into_inner()) = Some(RnrBufs {
        mine: Vec::with_capacity(n * RNR_REC),
        page: vec![0; 64 << 10],
    });
}

/// The generation of the checkpoint round under way.
static ROUND: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// Buffers of the drain's exchange of RC QPs without a posted receive
/// (`rnr_blocked`), allocated at PRESUSPEND.
struct RnrBufs {
    /// This process's records: virtual LID (2 bytes), virtual QPN (4),
    /// receives completed (8).
    mine: Vec<u8>,
    /// A page of the listing of every process's records.
    page: Vec<u8>,
}
const RNR_REC: usize = 14;
static RNR: std::sync::Mutex<Option<RnrBufs>> = std::sync::Mutex::new(None);

/// A name-service key formatted without allocating.
struct FixedKey {
    buf: [u8; 96],
    len: usize,
}

impl std::fmt::Write for FixedKey {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let b = s.as_bytes();
        let end = self.len + b.len();
        if end > self.buf.len() {
            return Err(std::fmt::Error);
        }
        self.buf[self.len..end].copy_from_slice(b);
        self.len = end;
        Ok(())
    }
}

impl FixedKey {
    fn new(args: std::fmt::Arguments) -> FixedKey {
        let mut k = FixedKey {
            buf: [0; 96],
            len: 0,
        };
        let _ = std::fmt::Write::write_fmt(&mut k, args);
        k
    }
    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Publishes, under `norecv:<generation>:<token>`, this process's
/// connected RC QPs that have no receive to take: no receive posted on the
/// QP, or, for a QP that takes its receives from an SRQ, none posted on
/// that SRQ (an empty SRQ serves none of the QPs sharing it), each with
/// the receives it has completed. Threads are suspended, so no receive is
/// posted before the checkpoint ends: a send of the peer that consumes a
/// receive and was not received (its index among such sends >= that
/// count) cannot complete, nor can any send after it (in order).
///
/// The count is the QP's own also under an SRQ: a receive completion names
/// the QP the message came in on (`process_wc` counts it there), and an RC
/// QP's messages come in the order its one peer QP sent them, so the count
/// says which of that peer's sends arrived, whichever QPs share the SRQ.
/// The logs hold every receive the device holds (a receive is logged
/// before it is posted, dropped only when its completion is polled), so an
/// empty log is an empty queue; a receive consumed whose completion is not
/// polled yet keeps its log entry, and the QP is not published: its peer
/// waits, as for a slow send.
fn publish_no_recv(reg: &Registry, b: &mut RnrBufs) {
    b.mine.clear();
    for o in &reg.objs {
        let Obj::Qp(q) = *o else { continue };
        // SAFETY: live shadow QP; its SRQ (if any) is a live shadow SRQ
        // (an SRQ cannot be destroyed while a QP uses it).
        unsafe {
            let srq = (*q).qp.srq as *mut SSrq;
            let recvs = if srq.is_null() {
                &(*q).recvs
            } else {
                &(*srq).recvs
            };
            if (*q).qp.qp_type != IBV_QPT_RC
                || !((*q).qp.state == IBV_QPS_RTR || (*q).qp.state == IBV_QPS_RTS)
                || b.mine.len() + RNR_REC > b.mine.capacity()
                || !recvs.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
            {
                continue;
            }
            let Some(vl) = own_vlid(q) else { continue };
            b.mine.extend_from_slice(&vl.to_le_bytes());
            b.mine.extend_from_slice(&(*q).qp.qp_num.to_le_bytes());
            b.mine
                .extend_from_slice(&(*q).recvs_done.load(Relaxed).to_le_bytes());
        }
    }
    if !b.mine.is_empty() {
        let k = FixedKey::new(format_args!("norecv:{}:{}", ROUND.load(Relaxed), token()));
        sys::publish(k.bytes(), &b.mine);
    }
}

/// Marks the busy RC QPs whose oldest outstanding send waits for a receive
/// the peer has not posted (its peer QP is in some process's `norecv`
/// records, and the first logged send the peer had not received comes
/// before any signaled send still outstanding): such a QP's sends cannot
/// complete during this checkpoint, and the drain stops waiting for them.
fn rnr_blocked(reg: &Registry, b: &mut RnrBufs) {
    let prefix = FixedKey::new(format_args!("norecv:{}:", ROUND.load(Relaxed)));
    let mut after: Option<FixedKey> = None;
    loop {
        let page = match sys::list_page(
            prefix.bytes(),
            after.as_ref().map(FixedKey::bytes),
            &mut b.page,
        ) {
            Ok((n, len)) if n > 0 => &b.page[..len],
            _ => return,
        };
        for (k, v) in sys::records(page) {
            for e in v.chunks_exact(RNR_REC) {
                let vl = u16::from_le_bytes([e[0], e[1]]);
                let vq = u32::from_le_bytes([e[2], e[3], e[4], e[5]]);
                let done = u64::from_le_bytes(e[6..14].try_into().unwrap_or([0; 8]));
                mark_blocked(reg, vl, vq, done);
            }
            let mut last = FixedKey {
                buf: [0; 96],
                len: 0,
            };
            if std::fmt::Write::write_str(&mut last, std::str::from_utf8(k).unwrap_or("")).is_err()
            {
                return;
            }
            after = Some(last);
        }
    }
}

/// `rnr_blocked` for the peer QP (`vl`, `vq`) that had completed `done`
/// receives and has none posted.
fn mark_blocked(reg: &Registry, vl: u16, vq: u32, done: u64) {
    for o in &reg.objs {
        let Obj::Qp(q) = *o else { continue };
        // SAFETY: live shadow QP; its logs are the plugin's (no verb runs).
        unsafe {
            let q = &*q;
            if q.qp.qp_type != IBV_QPT_RC
                || q.rnr_blocked.load(Relaxed)
                || q.outstanding.load(Acquire) == 0
            {
                continue;
            }
            let (rtr, m) = q.log.lock().unwrap_or_else(|e| e.into_inner())[1];
            if m & IBV_QP_AV as c_int == 0
                || m & IBV_QP_DEST_QPN as c_int == 0
                || rtr.ah_attr.dlid != vl
                || rtr.dest_qp_num != vq
            {
                continue;
            }
            let blocked = {
                let l = q.sends.lock().unwrap_or_else(|e| e.into_inner());
                let mut it = l.iter();
                loop {
                    match it.next() {
                        None => break false,
                        Some(r) if r.seq != u64::MAX && r.seq >= done => break true,
                        Some(r) if signaled(q, r.wr.send_flags) => break false,
                        _ => {}
                    }
                }
            };
            if blocked {
                q.rnr_blocked.store(true, Relaxed);
                let mut msg = *b"dmtcp_ib: drain: QP 0x00000000 waits for a receive its peer has not posted; a restart posts its sends again\n";
                let n = q.qp.qp_num;
                for i in 0..8 {
                    msg[22 + i] = b"0123456789abcdef"[((n >> (28 - 4 * i)) & 15) as usize];
                }
                sys::write_err(&msg);
            }
        }
    }
}

/// A program that signals only every Nth send (perftest's CQ moderation)
/// may have unsignaled sends queued after its last signaled one: no
/// completion would say whether they ran, and the drain could not wait for
/// them, so a restart would lose the ones that had not. Such an RC or UC
/// QP gets a fence: a signaled zero-length RDMA WRITE (no memory is
/// touched, no rkey is checked), whose completion, sends completing in
/// order, says every send before it ran. Posted before the threads are
/// suspended (the provider's post may allocate), when no verb can be
/// under way or start: the checkpoint is pending, so every verb waits.
fn post_fences() {
    let reg = REG.lock().unwrap_or_else(|e| e.into_inner());
    for o in &reg.objs {
        let Obj::Qp(q) = *o else { continue };
        // SAFETY: live shadow QP (registry); its real QP and context's post.
        unsafe {
            let ty = (*q).qp.qp_type;
            if (*q).unsignaled_tail.load(Relaxed) == 0
                || (ty != IBV_QPT_RC && ty != IBV_QPT_UC)
                || (*q).qp.state != IBV_QPS_RTS
                || (*q).fence.load(Acquire)
            {
                continue;
            }
            let mut wr = ibv_send_wr {
                wr_id: FENCE_WR_ID,
                opcode: IBV_WR_RDMA_WRITE,
                send_flags: IBV_SEND_SIGNALED,
                ..Default::default()
            };
            let mut bad = null_mut();
            (*q).fence.store(true, Release);
            (*q).outstanding.fetch_add(1, AcqRel);
            let post = sctx((*q).qp.context).post_send;
            let t0 = sys::now_ms();
            let mut rc = post((*q).real, &mut wr, &mut bad);
            // A full send queue (a real HCA refuses the post) empties as
            // its completions are polled: into the CQs' queues, as the
            // drain would, the program's verbs all waiting.
            let mut batch = [ibv_wc::default(); 16];
            while rc == libc::ENOMEM && sys::now_ms() - t0 < 2_000 {
                drain_all(&reg, &mut batch);
                libc::sched_yield();
                rc = post((*q).real, &mut wr, &mut bad);
            }
            if rc != 0 {
                (*q).outstanding.fetch_sub(1, AcqRel);
                (*q).fence.store(false, Release);
                crate::debug(|| format!("QP {:#x}: fence not posted: {rc}", (*q).qp.qp_num));
            }
        }
    }
}

fn objs() -> Vec<Obj> {
    REG.lock().unwrap_or_else(|e| e.into_inner()).objs.clone()
}

/// Threads are suspended (none inside a verb: every verb is a no-checkpoint
/// section): no malloc here. Polls every CQ dry into its queue until every
/// signaled send has completed, then notes waiting channel events.
pub(crate) fn precheckpoint() {
    let reg = REG.lock().unwrap_or_else(|e| e.into_inner());
    if reg.objs.is_empty() {
        // Every process takes part in the barrier of `drain`.
        sys::barrier(c"dmtcp-ib-drained");
        return;
    }
    drain(&reg);
}

/// Polls the CQs until this process's signaled sends are done; then, once
/// every process got there (barrier: a message whose send completed at its
/// sender may have reached this process's CQ after the first pass), once
/// more.
fn drain(reg: &Registry) {
    let t0 = sys::now_ms();
    let t0_us = sys::now_us();
    let mut batch = [ibv_wc::default(); 16];
    let mut rnr = RNR.lock().unwrap_or_else(|e| e.into_inner());
    for o in &reg.objs {
        if let Obj::Qp(q) = *o {
            // SAFETY: live shadow.
            unsafe { (*q).rnr_blocked.store(false, Relaxed) };
        }
    }
    let mut first = true;
    let mut checked = t0;
    loop {
        drain_all(reg, &mut batch);
        if first {
            // After a first pass: the receive logs know every receive
            // completed so far.
            if let Some(b) = rnr.as_mut() {
                publish_no_recv(reg, b);
            }
            first = false;
        }
        let mut busy: Option<*mut SQp> = None;
        for o in &reg.objs {
            if let Obj::Qp(q) = *o {
                // SAFETY: live shadow.
                if unsafe { (*q).outstanding.load(Acquire) > 0 && !(*q).rnr_blocked.load(Relaxed) }
                {
                    busy = Some(q);
                }
            }
        }
        let Some(q) = busy else { break };
        if sys::now_ms() - checked >= 20 {
            // Peers publish their QPs without a receive as their drain
            // starts: look again every 20 ms.
            checked = sys::now_ms();
            if let Some(b) = rnr.as_mut() {
                rnr_blocked(reg, b);
            }
        }
        if sys::now_ms() - t0 > DRAIN_MS {
            // Sends an RC peer has no receive for (RNR) cannot complete
            // while its threads are suspended: a restart posts them again
            // (`replay`); a resume finds them still on the device.
            let mut msg = *b"dmtcp_ib: drain: QP 0x00000000 still has sends in flight after 10 s (waiting for a receive?); a restart posts them again\n";
            // SAFETY: live shadow.
            let n = unsafe { (*q).qp.qp_num };
            for i in 0..8 {
                msg[22 + i] = b"0123456789abcdef"[((n >> (28 - 4 * i)) & 15) as usize];
            }
            sys::write_err(&msg);
            break;
        }
        // SAFETY: plain syscall.
        unsafe { libc::sched_yield() };
    }
    sys::barrier(c"dmtcp-ib-drained");
    drain_all(reg, &mut batch);
    DRAIN_US.store(sys::now_us() - t0_us, Relaxed);
    for o in &reg.objs {
        match *o {
            Obj::Chan(c) => {
                // SAFETY: live shadow channel.
                unsafe { (*c).pending_at_ckpt = sys::poll_readable((*(*c).real).fd) };
            }
            Obj::Qp(q) => {
                // SAFETY: live shadow.
                let (n, tail, ty) = unsafe {
                    (
                        (*q).qp.qp_num,
                        (*q).unsignaled_tail.load(Relaxed),
                        (*q).qp.qp_type,
                    )
                };
                // An RC QP's logged sends that consume a receive are sorted
                // out at the restart (`keep_unsent`): no loss to warn of.
                // SAFETY: live shadow.
                let sorted_later = ty == IBV_QPT_RC
                    && unsafe { &(*q).sends }
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .iter()
                        .any(|r| r.seq != u64::MAX);
                if tail > 0 && ty != IBV_QPT_UD && !sorted_later {
                    let mut msg = *b"dmtcp_ib: checkpoint: QP 0x00000000 has unsignaled sends after its last signaled one; if they had not run yet, a restart loses them\n";
                    for i in 0..8 {
                        msg[27 + i] = b"0123456789abcdef"[((n >> (28 - 4 * i)) & 15) as usize];
                    }
                    sys::write_err(&msg);
                }
            }
            _ => {}
        }
    }
}

/// Polls every CQ of the registry dry into its queue.
fn drain_all(reg: &Registry, batch: &mut [ibv_wc; 16]) {
    for o in &reg.objs {
        if let Obj::Cq(s) = *o {
            // SAFETY: live shadows (registry), the real CQ of now.
            unsafe { drain_cq(s, batch) };
        }
    }
}

unsafe fn drain_cq(s: *mut SCq, batch: &mut [ibv_wc; 16]) {
    // SAFETY: s is a live shadow; its context's real poll function.
    unsafe {
        let f = sctx((*s).cq.context).poll_cq;
        let mut q = (*s).queue.lock().unwrap_or_else(|e| e.into_inner());
        let cap = q.buf.len();
        loop {
            let room = (cap - q.len).min(batch.len());
            if room == 0 {
                sys::write_err(b"dmtcp_ib: checkpoint: a CQ's drain queue is full; completions left on the device are lost\n");
                break;
            }
            let n = f((*s).real, room as c_int, batch.as_mut_ptr());
            if n <= 0 {
                break;
            }
            for w in batch.iter_mut().take(n as usize) {
                if !process_wc((*s).cq.context, w) {
                    continue;
                }
                let at = (q.head + q.len) % cap;
                q.buf[at] = *w;
                q.len += 1;
            }
        }
        (*s).qlen.store(q.len, Release);
    }
}

pub(crate) fn resume() {
    sys::include_again();
    crate::debug(|| format!("drain took {} us", DRAIN_US.load(Relaxed)));
    debug_state(&objs(), "resume");
    for o in objs() {
        if let Obj::Chan(c) = o {
            // SAFETY: live shadow.
            unsafe { (*c).pending_at_ckpt = false };
        }
    }
}

fn key(parts: &[&dyn std::fmt::Display]) -> Vec<u8> {
    parts
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(":")
        .into_bytes()
}

fn debug_state(objs: &[Obj], when: &str) {
    for o in objs {
        // SAFETY: live shadows.
        unsafe {
            match *o {
                Obj::Cq(q) => crate::debug(|| {
                    format!(
                        "{when}: CQ {:?} queued {} armed {}",
                        q,
                        (*q).qlen.load(Relaxed),
                        (*q).armed.load(Relaxed)
                    )
                }),
                Obj::Qp(q) => crate::debug(|| {
                    format!(
                        "{when}: QP {:#x} recvs {} outstanding {}",
                        (*q).qp.qp_num,
                        (*q).recvs.lock().map(|l| l.len()).unwrap_or(0),
                        (*q).outstanding.load(Relaxed)
                    )
                }),
                Obj::Chan(c) => crate::debug(|| {
                    format!(
                        "{when}: channel fd {} pending {} saved {}",
                        (*c).ch.fd,
                        (*c).pending_at_ckpt,
                        (*c).saved.load(Relaxed)
                    )
                }),
                _ => {}
            }
        }
    }
}

pub(crate) fn restart(generation: i32) {
    let t0 = sys::now_us();
    sys::include_again();
    let objs = objs();
    debug_state(&objs, "restart");
    let have = !objs.is_empty();
    // Phase ends (µs since t0): rebuilt, published, first barrier, reconnected.
    let mut at = [0u64; 4];
    if have {
        if let Err(m) = rebuild(&objs) {
            crate::say(&format!("restart: {m}"));
        }
    }
    at[0] = sys::now_us() - t0;
    // Every process of the computation takes part in both barriers.
    if have {
        publish(&objs, generation);
    }
    at[1] = sys::now_us() - t0;
    sys::barrier(c"dmtcp-ib-published");
    if have {
        learn_tables(&table_prefix("all", generation));
    }
    at[2] = sys::now_us() - t0;
    if have {
        // QPs whose peer was not connected back at the checkpoint: the
        // peer's program connects it after the restart, in a verb.
        let mut half_open = Vec::new();
        if let Err(m) = reconnect(&objs, &mut half_open) {
            crate::say(&format!("restart: {m}"));
        }
        if !half_open.is_empty() {
            let mut k = table_prefix("half", generation);
            k.extend_from_slice(&key(&[&token()]));
            sys::publish(&k, &half_open);
        }
    }
    at[3] = sys::now_us() - t0;
    sys::barrier(c"dmtcp-ib-connected");
    if have {
        learn_tables(&table_prefix("half", generation));
        replay(&objs);
    }
    crate::debug(|| {
        let all = sys::now_us() - t0;
        format!(
            "drain took {} us; rebuild and reconnect {all} us (with two barriers): \
             re-create {} us, publish {} us, barrier and tables {} us, reconnect {} us, barrier {} us",
            DRAIN_US.load(Relaxed),
            at[0],
            at[1] - at[0],
            at[2] - at[1],
            at[3] - at[2],
            all - at[3]
        )
    });
}

/// Re-creates every object on the new device, in creation order.
fn rebuild(objs: &[Obj]) -> Result<(), String> {
    let r = real().ok_or("libibverbs is not loaded")?;
    RESTARTED.store(true, SeqCst);
    with_maps(|m| {
        m.qp_by_real.clear();
        m.lkey.clear();
        m.lids.clear();
        m.qpn.clear();
        m.qpn_rev.clear();
        m.gids.clear();
        m.rkeys.clear();
    });
    for o in objs {
        // SAFETY: live shadows (registry); the new real objects come from the real library.
        unsafe {
            match *o {
                Obj::Ctx(s) => rebuild_ctx(r, s)?,
                Obj::Pd(s) => {
                    let rp = (r.alloc_pd)(sctx((*s).pd.context).real);
                    if rp.is_null() {
                        return Err(format!("ibv_alloc_pd: errno {}", sys::errno()));
                    }
                    (*s).real = rp;
                }
                Obj::Mr(s) => {
                    let m = &(*s).mr;
                    let rp = (*(m.pd as *mut SPd)).real;
                    let rm = (r.reg_mr_iova2)(rp, m.addr, m.length, (*s).iova, (*s).access);
                    if rm.is_null() {
                        return Err(format!(
                            "ibv_reg_mr({:?}, {}): errno {}",
                            m.addr,
                            m.length,
                            sys::errno()
                        ));
                    }
                    (*s).real = rm;
                    (*s).rlkey = (*rm).lkey;
                    (*s).rrkey = (*rm).rkey;
                    let (v, n) = ((m.context as CtxKey, m.lkey), (*rm).lkey);
                    with_maps(|mp| {
                        mp.lkey.insert(v, n);
                    });
                }
                Obj::Chan(s) => {
                    let rch = (r.create_comp_channel)(sctx((*s).ch.context).real);
                    if rch.is_null() {
                        return Err(format!("ibv_create_comp_channel: errno {}", sys::errno()));
                    }
                    let newfd = (*rch).fd;
                    let old = (*s).ch.fd;
                    sys::move_fd(newfd, old);
                    if newfd != old {
                        libc::close(newfd);
                        (*rch).fd = old;
                    }
                    (*s).real = rch;
                }
                Obj::Cq(s) => {
                    let ch = (*s).cq.channel;
                    let rch = if ch.is_null() {
                        null_mut()
                    } else {
                        (*(ch as *mut SChan)).real
                    };
                    let rcq =
                        (r.create_cq)(sctx((*s).cq.context).real, (*s).cqe_asked, s.cast(), rch, 0);
                    if rcq.is_null() {
                        return Err(format!("ibv_create_cq: errno {}", sys::errno()));
                    }
                    (*s).real = rcq;
                    let armed = (*s).armed.load(Relaxed);
                    if armed != 0 {
                        (sctx((*s).cq.context).req_notify_cq)(rcq, (armed == 2) as c_int);
                    }
                }
                Obj::Srq(s) => {
                    let rp = (*((*s).srq.pd as *mut SPd)).real;
                    let mut a = ibv_srq_init_attr {
                        srq_context: s.cast(),
                        attr: (*s).attr,
                    };
                    let rs = (r.create_srq)(rp, &mut a);
                    if rs.is_null() {
                        return Err(format!("ibv_create_srq: errno {}", sys::errno()));
                    }
                    (*s).real = rs;
                }
                Obj::Qp(s) => rebuild_qp(r, s)?,
                Obj::Ah(_) => {}
            }
        }
    }
    // Receives go back on the SRQs once every MR is re-registered: a
    // program creates its SRQ before the buffers it posts (OpenMPI does).
    for o in objs {
        if let Obj::Srq(s) = *o {
            // SAFETY: a live shadow SRQ, rebuilt above.
            unsafe {
                let f = sctx((*s).srq.context).post_srq_recv;
                let rs = (*s).real;
                repost((*s).srq.context, &(*s).recvs, |w, b| f(rs, w, b))?;
            }
        }
    }
    Ok(())
}

unsafe fn rebuild_ctx(r: &sys::Real, s: *mut SCtx) -> Result<(), String> {
    // SAFETY: s is a live shadow context; device list from the real library.
    unsafe {
        let mut n = 0;
        let list = (r.get_device_list)(&mut n);
        if list.is_null() || n <= 0 {
            return Err("no InfiniBand device after the restart".into());
        }
        let want = std::ffi::CStr::from_bytes_until_nul(&(*s).dev_name)
            .map(|c| c.to_bytes().to_vec())
            .unwrap_or_default();
        let mut dev = *list;
        for i in 0..n as usize {
            let d = *list.add(i);
            if std::ffi::CStr::from_ptr((r.get_device_name)(d)).to_bytes() == want.as_slice() {
                dev = d;
                break;
            }
        }
        let rc = (r.open_device)(dev);
        (r.free_device_list)(list);
        if rc.is_null() {
            return Err(format!("ibv_open_device: errno {}", sys::errno()));
        }
        let c = &mut (*s).vctx.context;
        c.device = (*rc).device;
        sys::claim((*rc).cmd_fd);
        sys::claim((*rc).async_fd);
        sys::move_fd((*rc).cmd_fd, c.cmd_fd);
        sys::move_fd((*rc).async_fd, c.async_fd);
        if !set_real_ops(s, rc) {
            return Err("the new context has no data-path ops".into());
        }
        let mut ports = (*s).ports.lock().unwrap_or_else(|e| e.into_inner());
        for (i, p) in ports.iter_mut().enumerate() {
            if p.seen {
                let mut a = ibv_port_attr::default();
                if (r.query_port)(rc, i as u8, (&mut a as *mut ibv_port_attr).cast()) == 0 {
                    p.rlid = a.lid;
                }
                let (v, n) = (p.vlid, p.rlid);
                with_maps(|m| m.lids.push((v, n)));
            }
            if p.gid_seen {
                let mut g = ibv_gid::default();
                if (r.query_gid)(rc, i as u8, 0, &mut g) == 0 {
                    p.rgid = g.raw;
                }
                let (v, n) = (p.vgid, p.rgid);
                with_maps(|m| m.gids.push((v, n)));
            }
        }
        Ok(())
    }
}

unsafe fn rebuild_qp(r: &sys::Real, s: *mut SQp) -> Result<(), String> {
    // SAFETY: s is a live shadow QP whose PD, CQs and SRQ were rebuilt before it.
    unsafe {
        let mut a = (*s).init;
        a.qp_context = s.cast();
        a.send_cq = (*(a.send_cq as *mut SCq)).real;
        a.recv_cq = (*(a.recv_cq as *mut SCq)).real;
        a.srq = if a.srq.is_null() {
            null_mut()
        } else {
            (*(a.srq as *mut SSrq)).real
        };
        let rp = (*((*s).qp.pd as *mut SPd)).real;
        let rq = (r.create_qp)(rp, &mut a);
        if rq.is_null() {
            return Err(format!("ibv_create_qp: errno {}", sys::errno()));
        }
        (*s).real = rq;
        (*s).outstanding.store(0, Relaxed);
        (*s).fence.store(false, Relaxed);
        let n = ((*s).qp.context as CtxKey, (*rq).qp_num);
        with_maps(|m| {
            m.qp_by_real.insert(n, s as usize);
        });
        let log = (*s).log.lock().unwrap_or_else(|e| e.into_inner());
        let (mut init, mask) = log[0];
        if mask != 0 {
            let rc = (r.modify_qp)(rq, &mut init, mask);
            if rc != 0 {
                return Err(format!("QP {:#x} to INIT: {}", (*s).qp.qp_num, rc));
            }
        }
        Ok(())
    }
}

fn own_vlid(q: *mut SQp) -> Option<u16> {
    // SAFETY: live shadow QP and its context.
    unsafe {
        let c = sctx((*q).qp.context);
        let p = c.ports.lock().unwrap_or_else(|e| e.into_inner());
        let i = (*q).port as usize;
        (i < MAX_PORTS && p[i].seen).then_some(p[i].vlid)
    }
}

/// Records of a process's table in the name service (`all:` keys, see
/// `publish`): a port, a QP anyone may address after the restart, an MR.
const REC_PORT: u8 = 1;
const REC_QP: u8 = 2;
const REC_MR: u8 = 3;
/// Bytes of a record with its tag.
const fn rec_len(tag: u8) -> usize {
    match tag {
        REC_PORT => 1 + 2 + 2 + 16 + 16,
        _ => 1 + 2 + 4 + 4,
    }
}
/// A table is published in values of at most this size.
const PART: usize = 1 << 20;

/// `<what>:<generation>:`, the prefix of a listing of every process's table.
fn table_prefix(what: &str, generation: i32) -> Vec<u8> {
    key(&[&what, &generation, &""])
}

/// Publishes this process's new ids under its old (virtual) ones: for its
/// connected QPs' peers, `qp:<vlid>:<vqpn>` (new QPN, token, receives
/// done) and `qps:<token>` (all its QPs); for everyone, its table under
/// `all:<generation>:<token>:<part>` (`learn_tables`): each port's old and
/// new LID and GID, each QP that a peer may address without being
/// connected to it (UD, or not connected at the checkpoint), and each MR's
/// old and new rkey under each port of its device.
fn publish(objs: &[Obj], generation: i32) {
    let t = token();
    let mut all = Vec::new();
    // All of this process's QPs in one value too: a peer connected to
    // many of them learns them all with one query (`learn_qp`).
    let mut table = Vec::new();
    for o in objs {
        // SAFETY: live shadows.
        unsafe {
            match *o {
                Obj::Ctx(s) => {
                    let p = (*s).ports.lock().unwrap_or_else(|e| e.into_inner());
                    for pi in p.iter().filter(|p| p.seen) {
                        all.push(REC_PORT);
                        all.extend_from_slice(&pi.vlid.to_le_bytes());
                        all.extend_from_slice(&pi.rlid.to_le_bytes());
                        let (vg, rg) = if pi.gid_seen {
                            (pi.vgid, pi.rgid)
                        } else {
                            ([0; 16], [0; 16])
                        };
                        all.extend_from_slice(&vg);
                        all.extend_from_slice(&rg);
                        crate::debug(|| format!("publish LID {:#x} -> {:#x}", pi.vlid, pi.rlid));
                    }
                }
                Obj::Mr(s) => {
                    let c = sctx((*s).mr.context);
                    let p = c.ports.lock().unwrap_or_else(|e| e.into_inner());
                    for pi in p.iter().filter(|p| p.seen) {
                        all.push(REC_MR);
                        all.extend_from_slice(&pi.vlid.to_le_bytes());
                        all.extend_from_slice(&(*s).mr.rkey.to_le_bytes());
                        all.extend_from_slice(&(*s).rrkey.to_le_bytes());
                    }
                }
                Obj::Qp(q) => {
                    if let Some(vl) = own_vlid(q) {
                        let rd = (*q).recvs_done.load(Relaxed);
                        let rq = (*(*q).real).qp_num;
                        let conn = connected(q);
                        let mut v = rq.to_le_bytes().to_vec();
                        v.extend_from_slice(&t.to_le_bytes());
                        v.extend_from_slice(&rd.to_le_bytes());
                        v.push(conn as u8);
                        sys::publish(&key(&[&"qp", &vl, &(*q).qp.qp_num]), &v);
                        table.extend_from_slice(&vl.to_le_bytes());
                        table.extend_from_slice(&(*q).qp.qp_num.to_le_bytes());
                        table.extend_from_slice(&v);
                        if !conn {
                            qp_record(&mut all, vl, (*q).qp.qp_num, rq);
                        }
                        crate::debug(|| {
                            format!("publish QP {vl:#x}/{:#x} -> {rq:#x}", (*q).qp.qp_num)
                        });
                    }
                }
                _ => {}
            }
        }
    }
    sys::publish(&key(&[&"qps", &t]), &table);
    // Records are whole in each part (`learn_tables` reads each alone).
    let mut at = 0;
    let mut part = 0;
    while at < all.len() || part == 0 {
        let mut end = at;
        while end < all.len() && end + rec_len(all[end]) - at <= PART {
            end += rec_len(all[end]);
        }
        let mut k = table_prefix("all", generation);
        k.extend_from_slice(key(&[&t, &part]).as_slice());
        sys::publish(&k, &all[at..end]);
        at = end;
        part += 1;
    }
}

fn qp_record(out: &mut Vec<u8>, vl: u16, vq: u32, rq: u32) {
    out.push(REC_QP);
    out.extend_from_slice(&vl.to_le_bytes());
    out.extend_from_slice(&vq.to_le_bytes());
    out.extend_from_slice(&rq.to_le_bytes());
}

/// An RC or UC QP connected at the checkpoint (RTR with a destination): only
/// its peer addresses it, and finds it through `qp:`/`qps:`.
///
/// # Safety
/// `q` is a live shadow QP.
unsafe fn connected(q: *mut SQp) -> bool {
    // SAFETY: live shadow (caller's contract).
    let q = unsafe { &*q };
    let m = q.log.lock().unwrap_or_else(|e| e.into_inner())[1].1;
    q.qp.qp_type != IBV_QPT_UD && m & IBV_QP_AV as c_int != 0 && m & IBV_QP_DEST_QPN as c_int != 0
}

/// After every process published (barrier), reads the tables of all of
/// them (`all:<generation>:`) into the maps the verbs translate with: every
/// port's LID and GID, every QP that may be addressed without a connection
/// (a UD QP that a UD send or an AH made after the restart names, a QP
/// connected only after the restart), every device's rkeys. So no verb
/// needs the name service (which only the checkpoint thread may use).
fn learn_tables(prefix: &[u8]) {
    let Some(entries) = sys::list(prefix) else {
        crate::say("restart: could not read the computation's id tables");
        return;
    };
    let mut lids: Vec<(u16, u16)> = Vec::new();
    let mut gids: Vec<([u8; 16], [u8; 16])> = Vec::new();
    let mut qps: Vec<(u16, u32, u32)> = Vec::new();
    let mut rkeys: HashMap<u16, Vec<(u32, u32)>> = HashMap::new();
    let mut bytes = 0;
    for (_, v) in &entries {
        bytes += v.len();
        let mut at = 0;
        while at < v.len() && at + rec_len(v[at]) <= v.len() {
            let r = &v[at..at + rec_len(v[at])];
            let u16_at = |i: usize| u16::from_le_bytes([r[i], r[i + 1]]);
            let u32_at = |i: usize| u32::from_le_bytes([r[i], r[i + 1], r[i + 2], r[i + 3]]);
            match r[0] {
                REC_PORT => {
                    lids.push((u16_at(1), u16_at(3)));
                    let mut vg = [0u8; 16];
                    let mut rg = [0u8; 16];
                    vg.copy_from_slice(&r[5..21]);
                    rg.copy_from_slice(&r[21..37]);
                    if vg != [0; 16] {
                        gids.push((vg, rg));
                    }
                }
                REC_QP => qps.push((u16_at(1), u32_at(3), u32_at(7))),
                REC_MR => rkeys
                    .entry(u16_at(1))
                    .or_default()
                    .push((u32_at(3), u32_at(7))),
                _ => break,
            }
            at += r.len();
        }
    }
    for t in rkeys.values_mut() {
        t.sort_unstable();
        t.dedup_by_key(|x| x.0);
    }
    crate::debug(|| {
        format!(
            "tables {}: {} values, {bytes} bytes: {} ports, {} QPs, {} rkeys",
            String::from_utf8_lossy(prefix),
            entries.len(),
            lids.len(),
            qps.len(),
            rkeys.values().map(Vec::len).sum::<usize>()
        )
    });
    with_maps(|m| {
        for &(v, r) in &lids {
            if !m.lids.iter().any(|x| x.0 == v) {
                m.lids.push((v, r));
            }
        }
        for &(v, r) in &gids {
            if !m.gids.iter().any(|x| x.0 == v) {
                m.gids.push((v, r));
            }
        }
        for &(vl, vq, rq) in &qps {
            m.qpn.insert((vl, vq), rq);
            if let Some(rl) = m.lids.iter().find(|x| x.0 == vl).map(|x| x.1) {
                m.qpn_rev.insert((rl, rq), vq);
            }
        }
        m.rkeys.extend(rkeys);
    });
}

fn learn_lid(vl: u16) -> Option<u16> {
    crate::shadow::MAPS.read().ok().and_then(|m| {
        m.as_ref()
            .and_then(|m| m.lids.iter().find(|x| x.0 == vl).map(|x| x.1))
    })
}

/// A peer QP as its process published it at the restart.
#[derive(Clone, Copy)]
struct PeerQp {
    /// Its new number.
    rq: u32,
    /// Its process's token.
    token: u64,
    /// The receives it had completed at the checkpoint.
    recvs_done: u64,
    /// Whether it was connected itself (RTR with a destination).
    connected: bool,
}

/// A QP's value under `qp:` and its record in `qps:` (after its virtual
/// LID and QPN there): new QPN, token, receives done, connected.
const QP_VAL: usize = 4 + 8 + 8 + 1;

fn parse_peer_qp(v: &[u8]) -> Option<PeerQp> {
    Some(PeerQp {
        rq: u32::from_le_bytes(v.get(0..4)?.try_into().ok()?),
        token: u64::from_le_bytes(v.get(4..12)?.try_into().ok()?),
        recvs_done: u64::from_le_bytes(v.get(12..20)?.try_into().ok()?),
        connected: *v.get(20)? != 0,
    })
}

/// The peers' QPs learnt at this restart, by (virtual LID, virtual QPN),
/// and the tokens whose whole table was fetched.
#[derive(Default)]
struct Learnt {
    qps: HashMap<(u16, u32), PeerQp>,
    tables: std::collections::HashSet<u64>,
}

/// The peer QP's new ids: from the peer process's table once it was
/// fetched (one query per peer process, not one per QP: with 1,000 QPs
/// the queries were half the reconnect time).
fn learn_qp(l: &mut Learnt, vl: u16, vq: u32) -> Option<PeerQp> {
    let rl = learn_lid(vl)?;
    let p = match l.qps.get(&(vl, vq)) {
        Some(&x) => x,
        None => {
            let p = parse_peer_qp(&sys::query(&key(&[&"qp", &vl, &vq]))?)?;
            if l.tables.insert(p.token) {
                for e in sys::query(&key(&[&"qps", &p.token]))
                    .unwrap_or_default()
                    .chunks_exact(6 + QP_VAL)
                {
                    let el = u16::from_le_bytes([e[0], e[1]]);
                    let eq = u32::from_le_bytes([e[2], e[3], e[4], e[5]]);
                    if let Some(x) = parse_peer_qp(&e[6..]) {
                        l.qps.insert((el, eq), x);
                    }
                }
            }
            p
        }
    };
    with_maps(|m| {
        m.qpn.insert((vl, vq), p.rq);
        m.qpn_rev.insert((rl, p.rq), vq);
    });
    Some(p)
}

/// Gets the peers' new ids, brings every QP back to its state, re-posts the
/// receives, re-creates the AHs, and sets up the channel events to deliver.
fn reconnect(objs: &[Obj], half_open: &mut Vec<u8>) -> Result<(), String> {
    let r = real().ok_or("libibverbs is not loaded")?;
    let mut learnt = Learnt::default();
    for o in objs {
        // SAFETY: live shadows rebuilt by `rebuild`.
        unsafe {
            match *o {
                Obj::Qp(q) => {
                    let (rtr, rtr_mask, rts, rts_mask) = {
                        let l = (*q).log.lock().unwrap_or_else(|e| e.into_inner());
                        (l[1].0, l[1].1, l[2].0, l[2].1)
                    };
                    if rtr_mask == 0
                        || rtr_mask & IBV_QP_AV as c_int == 0
                        || rtr_mask & IBV_QP_DEST_QPN as c_int == 0
                    {
                        keep_unsent(q, None);
                    }
                    if rtr_mask != 0 {
                        if rtr_mask & IBV_QP_AV as c_int != 0
                            && rtr_mask & IBV_QP_DEST_QPN as c_int != 0
                        {
                            let (vl, vq) = (rtr.ah_attr.dlid, rtr.dest_qp_num);
                            let peer = learn_qp(&mut learnt, vl, vq);
                            keep_unsent(q, peer.map(|p| p.recvs_done));
                            // The peer device's rkeys (`learn_tables`).
                            set_peer_rkeys(&*q, vl);
                            match peer {
                                Some(p) if !p.connected => {
                                    // The peer was not connected back yet:
                                    // it will be, after the restart, in a
                                    // verb, with this QP's old number.
                                    if let Some(own) = own_vlid(q) {
                                        qp_record(half_open, own, (*q).qp.qp_num, (*(*q).real).qp_num);
                                    }
                                }
                                Some(_) => {}
                                None => crate::say(&format!("restart: QP {:#x}: its peer (LID {vl:#x}, QP {vq:#x}) published no new ids", (*q).qp.qp_num)),
                            }
                        } else if rtr_mask & IBV_QP_AV as c_int != 0 {
                            learn_lid(rtr.ah_attr.dlid);
                        }
                        let mut a = rtr;
                        attr_to_real(&mut a, rtr_mask);
                        crate::debug(|| {
                            format!(
                                "QP {:#x} RTR: dlid {:#x} -> {:#x}, dest QP {:#x} -> {:#x}",
                                (*q).qp.qp_num,
                                rtr.ah_attr.dlid,
                                a.ah_attr.dlid,
                                rtr.dest_qp_num,
                                a.dest_qp_num
                            )
                        });
                        let rc = (r.modify_qp)((*q).real, &mut a, rtr_mask);
                        if rc != 0 {
                            return Err(format!("QP {:#x} to RTR: {rc}", (*q).qp.qp_num));
                        }
                    }
                    if rts_mask != 0 {
                        let mut a = rts;
                        attr_to_real(&mut a, rts_mask);
                        let rc = (r.modify_qp)((*q).real, &mut a, rts_mask);
                        if rc != 0 {
                            return Err(format!("QP {:#x} to RTS: {rc}", (*q).qp.qp_num));
                        }
                    }
                    let dests = (*q)
                        .ud_dests
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .clone();
                    for (vl, vq) in dests {
                        // A UD QP is in every process's table (`learn_tables`).
                        let r = qpn_to_real(vl, vq);
                        crate::debug(|| {
                            format!(
                                "QP {:#x}: UD destination {vl:#x}/{vq:#x} -> {r:x?}",
                                (*q).qp.qp_num
                            )
                        });
                    }
                    if (*q).qp.srq.is_null() {
                        let f = sctx((*q).qp.context).post_recv;
                        let rq = (*q).real;
                        repost((*q).qp.context, &(*q).recvs, |w, b| f(rq, w, b))?;
                    }
                }
                Obj::Ah(a) => {
                    learn_lid((*a).attr.dlid);
                    let mut at = (*a).attr;
                    ah_to_real(&mut at);
                    let rp = (*((*a).ah.pd as *mut SPd)).real;
                    let ra = (r.create_ah)(rp, &mut at);
                    if ra.is_null() {
                        return Err(format!("ibv_create_ah: errno {}", sys::errno()));
                    }
                    (*a).real = ra;
                }
                Obj::Chan(c) if (*c).pending_at_ckpt => {
                    let cqs: Vec<*mut SCq> = objs
                        .iter()
                        .filter_map(|o| match *o {
                            Obj::Cq(q) if (*q).cq.channel == c.cast() => Some(q),
                            _ => None,
                        })
                        .collect();
                    if cqs.len() == 1 {
                        (*c).saved_cq = cqs[0];
                        (*c).saved.store(1, Release);
                    } else {
                        crate::say("restart: a completion event was pending on a channel shared by several CQs; it is not re-delivered");
                    }
                    (*c).pending_at_ckpt = false;
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// Keeps in an RC QP's send log only the sends that had not run: from its
/// first send that consumes a receive the peer had not completed
/// (`peer_done`: the peer QP's completed receives at the checkpoint) on;
/// the sends before it ran (in order), and the ones after it could not.
/// Without such a send (or without the peer's count) nothing is known to
/// have waited: the log is emptied, as a restart always did.
///
/// # Safety
/// `q` is a live shadow QP.
unsafe fn keep_unsent(q: *mut SQp, peer_done: Option<u64>) {
    // SAFETY: live shadow (caller's contract).
    let q = unsafe { &*q };
    let mut l = q.sends.lock().unwrap_or_else(|e| e.into_inner());
    let first = peer_done.and_then(|d| l.iter().position(|r| r.seq != u64::MAX && r.seq >= d));
    match first {
        Some(i) => {
            l.drain(..i);
            q.consuming_posted.store(l[0].seq, Relaxed);
            crate::debug(|| {
                format!(
                    "QP {:#x}: {} sends had not run at the checkpoint; posted again",
                    q.qp.qp_num,
                    l.len()
                )
            });
        }
        None => l.clear(),
    }
}

/// Posts again the sends `keep_unsent` kept, once every QP is connected
/// and every receive re-posted (after the last barrier).
fn replay(objs: &[Obj]) {
    for o in objs {
        let Obj::Qp(q) = *o else { continue };
        // SAFETY: live shadow QP, reconnected.
        unsafe {
            let recs: Vec<SendRec> =
                std::mem::take(&mut *(*q).sends.lock().unwrap_or_else(|e| e.into_inner())).into();
            for r in recs {
                let mut wr = r.wr;
                let mut sges = r.sges;
                let mut inl = r.inline;
                let mut one = ibv_sge::default();
                if wr.send_flags & IBV_SEND_INLINE != 0 {
                    one.addr = inl.as_mut_ptr() as u64;
                    one.length = inl.len() as u32;
                    wr.sg_list = &mut one;
                    wr.num_sge = (!inl.is_empty()) as c_int;
                } else {
                    wr.sg_list = sges.as_mut_ptr();
                    wr.num_sge = sges.len() as c_int;
                }
                let mut bad = null_mut();
                let rc = post_send_inner(q.cast(), &mut wr, &mut bad);
                if rc != 0 {
                    crate::say(&format!(
                        "restart: QP {:#x}: posting a send again failed: {rc}",
                        (*q).qp.qp_num
                    ));
                    break;
                }
            }
        }
    }
}

/// Posts the logged receives again (with the new lkeys), leaving the log as is.
unsafe fn repost(
    ctx: *mut ibv_context,
    log: &std::sync::Mutex<std::collections::VecDeque<RecvRec>>,
    mut post: impl FnMut(*mut ibv_recv_wr, *mut *mut ibv_recv_wr) -> c_int,
) -> Result<(), String> {
    let l = log.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for rec in l {
        let mut sg = rec.sges.clone();
        for s in &mut sg {
            s.lkey = lkey_to_real(ctx, s.lkey);
        }
        let mut w = ibv_recv_wr {
            wr_id: rec.wr_id,
            next: null_mut(),
            sg_list: sg.as_mut_ptr(),
            num_sge: sg.len() as c_int,
        };
        let mut b = null_mut();
        let rc = post(&mut w, &mut b);
        if rc != 0 {
            return Err(format!("re-posting a receive: {rc}"));
        }
    }
    Ok(())
}
