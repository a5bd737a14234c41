//! `ibv_rust_check [MESSAGES [WORDS [EVERY]]]`: a verbs program written with the
//! `ibverbs` crate, as a Rust user of the device would write one. It opens
//! the first device, connects two RC queue pairs to each other through the
//! device, sends MESSAGES messages of WORDS u64 each from one to the other
//! (keeping a window of receives posted), checks every received word and
//! every completion, and prints its port's LID and GID, then a checksum of
//! what arrived (with EVERY > 0, also `progress N` every EVERY messages
//! received). Exit 1 on any
//! mismatch or error completion.

use std::process::ExitCode;

fn pattern(msg: u64, word: u64) -> u64 {
    (msg.wrapping_mul(0x9e37_79b9_7f4a_7c15)) ^ word.wrapping_mul(0x0100_0000_01b3) ^ 0x5eed
}

fn run(messages: u64, words: usize, every: u64) -> Result<u64, String> {
    let devs = ibverbs::devices().map_err(|e| format!("device list: {e}"))?;
    let dev = devs.iter().next().ok_or("no verbs device")?;
    let ctx = dev.open().map_err(|e| format!("open: {e}"))?;
    let window: usize = 16;
    let cq = ctx
        .create_cq(4 * window as i32, 0)
        .map_err(|e| format!("create_cq: {e}"))?;
    let pd = ctx.alloc_pd().map_err(|e| format!("alloc_pd: {e}"))?;
    let build = || {
        pd.create_qp(&cq, &cq, ibverbs::ibv_qp_type::IBV_QPT_RC)
            .set_gid_index(0)
            .set_max_send_wr(window as u32)
            .set_max_recv_wr(window as u32)
            .build()
            .map_err(|e| format!("create_qp: {e}"))
    };
    let (a, b) = (build()?, build()?);
    let (ea, eb) = (a.endpoint(), b.endpoint());
    if let Some(g) = ea.gid {
        println!(
            "lid {:#x} gid {:016x}{:016x}",
            ea.lid,
            g.subnet_prefix(),
            g.interface_id()
        );
    }
    let mut a = a.handshake(eb).map_err(|e| format!("connect a: {e}"))?;
    let mut b = b.handshake(ea).map_err(|e| format!("connect b: {e}"))?;

    let mut src = pd
        .allocate::<u64>(words)
        .map_err(|e| format!("reg src: {e}"))?;
    let mut dst = pd
        .allocate::<u64>(words * window)
        .map_err(|e| format!("reg dst: {e}"))?;
    let mut wc = [ibverbs::ibv_wc::default(); 32];
    let mut posted_recv = 0u64;
    let mut received = 0u64;
    let mut sum = 0u64;
    while posted_recv < messages.min(window as u64) {
        let slot = (posted_recv as usize % window) * words;
        // SAFETY: dst stays registered and untouched until the receive completes.
        unsafe { b.post_receive(&mut dst, slot..slot + words, 1_000_000 + posted_recv) }
            .map_err(|e| format!("post_receive: {e}"))?;
        posted_recv += 1;
    }
    for m in 0..messages {
        for (w, x) in src.iter_mut().enumerate() {
            *x = pattern(m, w as u64);
        }
        // SAFETY: src is not written again until this send's completion is polled below.
        unsafe { a.post_send(&mut src, .., m) }.map_err(|e| format!("post_send: {e}"))?;
        let mut sent = false;
        while !sent || received <= m {
            let done = cq.poll(&mut wc).map_err(|e| format!("poll: {e}"))?;
            for c in done.iter() {
                if let Some((status, vendor)) = c.error() {
                    return Err(format!(
                        "completion {} failed: {status:?} (vendor {vendor})",
                        c.wr_id()
                    ));
                }
                if c.wr_id() >= 1_000_000 {
                    let r = c.wr_id() - 1_000_000;
                    if r != received {
                        return Err(format!("receive {r} completed, expected {received}"));
                    }
                    let slot = (r as usize % window) * words;
                    for (w, &x) in dst[slot..slot + words].iter().enumerate() {
                        if x != pattern(r, w as u64) {
                            return Err(format!(
                                "message {r} word {w}: got {x:#x}, sent {:#x}",
                                pattern(r, w as u64)
                            ));
                        }
                        sum = sum.wrapping_add(x.rotate_left((w % 64) as u32));
                    }
                    received += 1;
                    if every > 0 && received.is_multiple_of(every) {
                        println!("progress {received}");
                        std::io::Write::flush(&mut std::io::stdout())
                            .map_err(|e| format!("stdout: {e}"))?;
                    }
                    if posted_recv < messages {
                        let s2 = (posted_recv as usize % window) * words;
                        // SAFETY: this slot's previous receive has completed and was checked.
                        unsafe {
                            b.post_receive(&mut dst, s2..s2 + words, 1_000_000 + posted_recv)
                        }
                        .map_err(|e| format!("post_receive: {e}"))?;
                        posted_recv += 1;
                    }
                } else if c.wr_id() == m {
                    sent = true;
                } else {
                    return Err(format!("unexpected completion {}", c.wr_id()));
                }
            }
        }
    }
    Ok(sum)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let messages = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1000u64);
    let words = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(512usize);
    let every = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(0u64);
    match run(messages, words, every) {
        Ok(sum) => {
            println!("ok {messages} messages of {words} words, checksum {sum:016x}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ibv_rust_check: {e}");
            ExitCode::FAILURE
        }
    }
}
