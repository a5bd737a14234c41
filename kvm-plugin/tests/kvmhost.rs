//! A KVM host of our own (tests/c/kvmhost.c: a VM, its memory, vCPU
//! threads, a guest that computes a checksum and reports it through port
//! and memory-mapped I/O) under `dmtcp_launch --kvm`: checkpointed while
//! the guest runs, killed, restarted; the output must equal a bare run's,
//! every block reported once, with the same checksum.

mod common;
use common::*;

fn host() -> String {
    c_program("kvmhost").display().to_string()
}

/// Bare run, then launched with `--kvm`: checkpoint at each of `marks`
/// (killing and restarting after the ones in `restart_after`), wait for
/// the end; returns (bare output, output, job).
fn cycle(
    name: &str,
    args: &[&str],
    marks: &[&str],
    restart_after: &[usize],
    env: &[(&str, &str)],
) -> (String, String, Job) {
    let prog = host();
    let mut full = vec![prog.as_str()];
    full.extend_from_slice(args);
    let bare = run_bare(&full);
    let mut job = Job::new(name);
    for (k, v) in env {
        job = job.env(k, v);
    }
    job.launch(&full, &["--kvm"]);
    for (i, m) in marks.iter().enumerate() {
        job.wait_for(m);
        job.checkpoint();
        if restart_after.contains(&i) {
            job.kill();
            job.restart();
        }
    }
    job.wait_for("all done");
    job.wait_success();
    let out = job.output();
    (bare, out, job)
}

#[test]
fn guest_with_a_local_apic_timer_survives_checkpoints_and_a_restart() {
    if !kvm_usable() {
        return;
    }
    // In-kernel irqchip: the guest waits for its local APIC timer with
    // sti; hlt (the vCPU sleeps in the kernel) between blocks. Two
    // checkpoints while it runs, then SIGKILL after the second and a
    // restart from it.
    let (bare, out, job) = cycle(
        "lapic",
        &["--mode", "lapic", "--blocks", "30"],
        &["block 5 ", "block 12 "],
        &[1],
        &[],
    );
    assert_eq!(out, bare, "{}", job.diag());
    assert!(out.contains("cpu 0 done csum"), "{}", job.diag());
}

#[test]
fn restarted_guest_is_checkpointed_and_restarted_again() {
    if !kvm_usable() {
        return;
    }
    // No in-kernel irqchip: every HLT comes to the host, which sleeps.
    // Restart, run on, checkpoint the restarted process, kill, restart.
    let (bare, out, job) = cycle(
        "none",
        &["--mode", "none", "--blocks", "30"],
        &["block 4 ", "block 10 ", "block 16 "],
        &[0, 2],
        &[],
    );
    assert_eq!(out, bare, "{}", job.diag());
}

#[test]
fn exits_pending_at_the_checkpoint_are_neither_lost_nor_repeated() {
    if !kvm_usable() {
        return;
    }
    // The host sleeps 30 ms inside the handling of every IN, MMIO read and
    // block report: checkpoints find the vCPU thread in the middle of an
    // exit the kernel has not finished. An OUT finished by the checkpoint
    // must not print its line twice after the restart; an IN or MMIO read
    // made again at restart must not be answered twice (the checksum
    // would differ).
    let marks = [
        "block 8 ",
        "block 16 ",
        "block 24 ",
        "block 32 ",
        "block 40 ",
    ];
    let (bare, out, job) = cycle(
        "pending",
        &[
            "--mode",
            "none",
            "--period-ms",
            "0",
            "--io-sleep-ms",
            "30",
            "--iters",
            "20",
            "--blocks",
            "50",
        ],
        &marks,
        &[0, 1, 2, 3, 4],
        &[("DMTCP_KVM_DEBUG", "1")],
    );
    assert_eq!(out, bare, "{}", job.diag());
    let err = job.read("err.txt");
    let handled = err.matches("pending OUT finished").count() + err.matches("made again").count();
    assert!(
        handled >= 3,
        "most checkpoints should have found an exit pending: {err}"
    );
}

/// The lines of `cpu`, in order.
fn of_cpu(out: &str, cpu: u32) -> Vec<&str> {
    let p = format!("cpu {cpu} ");
    out.lines().filter(|l| l.starts_with(&p)).collect()
}

#[test]
fn two_vcpus_with_their_timers() {
    if !kvm_usable() {
        return;
    }
    // Two vCPU threads, each paced by its own local APIC timer; their
    // lines interleave differently from run to run, so each vCPU's own
    // sequence is compared.
    let (bare, out, job) = cycle(
        "smp",
        &[
            "--mode",
            "lapic",
            "--vcpus",
            "2",
            "--blocks",
            "30",
            "--io-sleep-ms",
            "5",
        ],
        &["cpu 1 block 6 ", "cpu 0 block 14 "],
        &[1],
        &[],
    );
    for cpu in 0..2 {
        assert_eq!(of_cpu(&out, cpu), of_cpu(&bare, cpu), "{}", job.diag());
    }
    assert!(out.ends_with("all done\n"), "{}", job.diag());
}

#[test]
fn in_kernel_pic_and_pit() {
    if !kvm_usable() {
        return;
    }
    // KVM_CREATE_PIT2: the guest programs the in-kernel PIC and PIT and
    // waits for two PIT ticks per block; their state must come back.
    let (bare, out, job) = cycle(
        "pit",
        &["--mode", "pit", "--blocks", "25"],
        &["block 4 ", "block 9 "],
        &[1],
        &[],
    );
    assert_eq!(out, bare, "{}", job.diag());
}

/// (block, tsc, kvmclock, realtime) of each line of a clock log.
fn clock_lines(log: &str) -> Vec<(u64, u64, u64, u64)> {
    log.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() != 8 {
                return None;
            }
            Some((
                f[1].parse().ok()?,
                f[3].parse().ok()?,
                f[5].parse().ok()?,
                f[7].parse().ok()?,
            ))
        })
        .collect()
}

/// Run with a clock log, kill after a checkpoint, wait `gap`, restart;
/// the guest's (kvmclock, TSC) advance across the restart, and the
/// median advance per block.
fn clock_across_restart(
    name: &str,
    env: &[(&str, &str)],
    gap: std::time::Duration,
) -> ((u64, u64), (u64, u64), Job) {
    let prog = host();
    let mut job = Job::new(name);
    for (k, v) in env {
        job = job.env(k, v);
    }
    let log = job.dir.join("clock.log").display().to_string();
    job.launch(
        &[
            &prog,
            "--mode",
            "lapic",
            "--blocks",
            "24",
            "--clock-log",
            &log,
        ],
        &["--kvm"],
    );
    job.wait_for("block 8 ");
    job.checkpoint();
    job.kill();
    std::thread::sleep(gap);
    job.restart();
    job.wait_for("all done");
    job.wait_success();
    let lines = clock_lines(&job.read("clock.log"));
    assert!(lines.len() >= 20, "{lines:?}{}", job.diag());
    // The restart is where real time jumps most between two blocks.
    let mut steps: Vec<(u64, u64, u64)> = lines
        .windows(2)
        .map(|w| {
            (
                w[1].2.wrapping_sub(w[0].2),
                w[1].1.wrapping_sub(w[0].1),
                w[1].3.saturating_sub(w[0].3),
            )
        })
        .collect();
    let (i, _) = steps.iter().enumerate().max_by_key(|(_, s)| s.2).unwrap();
    let across = (steps[i].0, steps[i].1);
    assert!(
        steps[i].2 >= gap.as_nanos() as u64,
        "no real-time gap of {gap:?} in the log: {lines:?}"
    );
    steps.remove(i);
    steps.sort_by_key(|s| s.0);
    let median = (steps[steps.len() / 2].0, {
        let mut t: Vec<u64> = steps.iter().map(|s| s.1).collect();
        t.sort();
        t[t.len() / 2]
    });
    (across, median, job)
}

/// Can KVM set a guest's TSC here? (A KVM without TSC offsetting, such as
/// PVM running inside a VM without hardware virtualization, lets the guest
/// read the host's TSC, whatever the MSR is set to.)
fn tsc_settable() -> bool {
    #[repr(C)]
    struct OneMsr {
        nmsrs: u32,
        pad: u32,
        index: u32,
        reserved: u32,
        data: u64,
    }
    // SAFETY: ioctls on fds of our own, with structs of the KVM ABI.
    unsafe {
        let kvm = libc::open(c"/dev/kvm".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        let vm = libc::ioctl(kvm, 0xae01, 0); // KVM_CREATE_VM
        let vcpu = libc::ioctl(vm, 0xae41, 0); // KVM_CREATE_VCPU
        let mut m = OneMsr {
            nmsrs: 1,
            pad: 0,
            index: 0x10,
            reserved: 0,
            data: 1_000_000,
        };
        libc::ioctl(vcpu, 0x4008ae89, &mut m); // KVM_SET_MSRS
        m.data = 0;
        libc::ioctl(vcpu, 0xc008ae88, &mut m); // KVM_GET_MSRS
        for fd in [vcpu, vm, kvm] {
            libc::close(fd);
        }
        m.data < 1_000_000_000
    }
}

#[test]
fn guest_clock_goes_on_from_the_checkpoint() {
    if !kvm_usable() {
        return;
    }
    // By default the guest does not see the time between checkpoint and
    // restart (as a paused VM): its kvmclock and TSC advance across the
    // restart by about one block's worth, not by the 3 s the job was dead.
    let gap = std::time::Duration::from_secs(3);
    let (across, median, job) = clock_across_restart("clock", &[], gap);
    assert!(
        across.0 < 10 * median.0 + 500_000_000,
        "kvmclock jumped by {} ns across the restart (a block takes {} ns){}",
        across.0,
        median.0,
        job.diag()
    );
    if tsc_settable() {
        assert!(
            across.1 < 10 * median.1,
            "TSC jumped by {} across the restart (a block takes {}){}",
            across.1,
            median.1,
            job.diag()
        );
    } else {
        eprintln!("this KVM cannot set a guest's TSC: the TSC is not checked");
    }
}

#[test]
fn guest_clock_can_follow_real_time() {
    if !kvm_usable() {
        return;
    }
    // DMTCP_KVM_CLOCK=realtime: the guest's clocks move on by the real
    // time that passed.
    let gap = std::time::Duration::from_secs(3);
    let (across, median, job) =
        clock_across_restart("clock-rt", &[("DMTCP_KVM_CLOCK", "realtime")], gap);
    assert!(
        across.0 >= gap.as_nanos() as u64,
        "kvmclock moved by {} ns only across a {gap:?} gap{}",
        across.0,
        job.diag()
    );
    // The TSC as much (median.1 ticks per block of median.0 ns).
    let tsc_gap = (gap.as_nanos() as f64 * median.1 as f64 / median.0 as f64) as u64;
    assert!(
        across.1 >= tsc_gap / 2,
        "TSC moved by {} only across a {gap:?} gap ({} expected){}",
        across.1,
        tsc_gap,
        job.diag()
    );
}

#[test]
fn vfio_device_refuses_the_checkpoint_and_the_guest_goes_on() {
    if !kvm_usable() {
        return;
    }
    // A KVM VFIO device (device passthrough) cannot be made again: the
    // checkpoint fails with the reason, the previous generation is kept,
    // and the program runs to its end as if nothing happened.
    let prog = host();
    let args = [
        prog.as_str(),
        "--mode",
        "lapic",
        "--blocks",
        "15",
        "--vfio-device",
    ];
    let bare = run_bare(&args);
    let mut job = Job::new("vfio");
    job.launch(&args, &["--kvm"]);
    job.wait_for("block 3 ");
    let said = job.checkpoint_fails();
    assert!(said.contains("VFIO"), "{said}");
    job.wait_for("all done");
    job.wait_success();
    assert_eq!(job.output(), bare, "{}", job.diag());
    assert!(job.images().is_empty());
}

#[test]
fn without_the_plugin_the_checkpoint_is_refused() {
    if !kvm_usable() {
        return;
    }
    // Launched without --kvm, the VM's fds would not come back: the
    // checkpoint says so (naming --kvm) instead of writing an image whose
    // restart would find no VM.
    let prog = host();
    let args = [prog.as_str(), "--mode", "lapic", "--blocks", "15"];
    let mut job = Job::new("noplugin");
    job.launch(&args, &[]);
    job.wait_for("block 3 ");
    let said = job.checkpoint_fails();
    assert!(said.contains("--kvm"), "{said}");
    job.wait_for("all done");
    job.wait_success();
}
