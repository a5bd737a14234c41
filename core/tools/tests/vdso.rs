//! Restart across a vDSO change, simulated on one kernel.
//!
//! A restart on another kernel meets a vDSO of another layout; the
//! restorer then leaves the new vDSO where the kernel put it and builds a
//! proxy at the old address (a trampoline per old entry point). No second
//! kernel is at hand here, so DMTCP_RESTORE_VDSO_PROXY=1 forces that path on
//! this one (the trampolines lead to this kernel's vDSO, mapped elsewhere),
//! and DMTCP_RESTORE_VDSO_PROXY=stubs also pretends the new vDSO lacks every
//! function (each old entry point then makes its system call). The program
//! calls the vDSO through glibc's start-up pointers and checks the clocks;
//! it reports what sits at the old `__vdso_clock_gettime` when it ends.

mod common;
use common::*;

/// Checkpoint at the first mark, kill after the second.
const MARKS: [(&str, &str); 2] = [("step 10 ok", "step 14 ok"), ("step 30 ok", "step 34 ok")];

/// The program's report: what sits at the old `__vdso_clock_gettime`
/// (first line); it must also say that `getauxval(AT_SYSINFO_EHDR)` names
/// the running vDSO (second line), after any restart.
fn report(job: &Job) -> String {
    let r = std::fs::read_to_string(job.dir.join("vdso-report.txt")).unwrap_or_default();
    let mut lines = r.lines();
    let first = lines.next().unwrap_or_default().to_string();
    assert_eq!(
        lines.next(),
        Some("auxv current"),
        "getauxval(AT_SYSINFO_EHDR) after the restart: {r:?}"
    );
    first
}

fn restart_err(job: &Job) -> String {
    std::fs::read_to_string(job.dir.join("restart.err")).unwrap_or_default()
}

/// Wait until the restorer of the latest restart noted a vDSO proxy (its
/// stderr is restart.err, made afresh by each restart); returns the note.
/// The deadline only bounds a failing test.
fn wait_proxy_note(job: &Job) -> String {
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let err = restart_err(job);
        if let Some(line) = err
            .lines()
            .find(|l| l.starts_with("dmtcp_restorer: vDSO proxy at 0x"))
        {
            return line.to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the restorer built no vDSO proxy:\n{err}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Checkpoint-kill-restart `cycles` times with the proxy forced as `mode`;
/// the output must equal a bare run's, and every restart must say it built
/// the proxy. Returns the program's report.
fn forced_proxy(name: &str, mode: &str, cycles: usize) -> String {
    let prog = c_program("vdsoclock");
    let p = prog.to_str().unwrap();
    let bare = run_bare(&[p]);
    assert!(
        bare.contains("vdso found: yes"),
        "the program found no vDSO: {bare}"
    );
    assert!(
        bare.contains(
            "RESULT monotonic 0 realtime 0 gettimeofday 0 time 0 getcpu 0 getres 0 spinner 0"
        ),
        "bare run: {bare}"
    );
    let mut job = Job::new(name).env("DMTCP_RESTORE_VDSO_PROXY", mode);
    job.launch(&[p], &[]);
    for (mark, after) in &MARKS[..cycles] {
        job.cycle(mark, after);
        let note = wait_proxy_note(&job);
        assert!(note.contains("(forced)"), "{note}");
    }
    job.wait_success();
    assert_eq!(
        job.output(),
        bare,
        "{name}: output after restarts through the vDSO proxy differs from a bare run"
    );
    report(&job)
}

/// The old entry points lead, by trampolines, into this kernel's vDSO
/// mapped at another address.
#[test]
fn vdso_proxy_trampolines_restart() {
    let r = forced_proxy("vdso-proxy", "1", 1);
    assert_eq!(r, "trampoline", "what sits at the old __vdso_clock_gettime");
}

/// Twice: the second image holds the first proxy as ordinary memory and
/// records the vDSO the first restart left elsewhere; the second restart
/// builds a proxy there in turn (a chain of two trampolines).
#[test]
fn vdso_proxy_two_generations() {
    let r = forced_proxy("vdso-proxy-2", "1", 2);
    assert_eq!(r, "trampoline", "what sits at the old __vdso_clock_gettime");
}

/// As if the new vDSO had none of the old functions: each old entry point
/// makes the system call it stands for.
#[test]
fn vdso_proxy_syscall_stubs() {
    let r = forced_proxy("vdso-stubs", "stubs", 1);
    assert_eq!(r, "stub", "what sits at the old __vdso_clock_gettime");
}

/// Without the proxy forced, the same kernel's vDSO is moved onto the old
/// address (the layouts match) and no proxy is built.
#[test]
fn vdso_same_kernel_moves_in_place() {
    let prog = c_program("vdsoclock");
    let p = prog.to_str().unwrap();
    let bare = run_bare(&[p]);
    let mut job = Job::new("vdso-in-place");
    job.launch(&[p], &[]);
    job.cycle(MARKS[0].0, MARKS[0].1);
    job.wait_success();
    assert_eq!(job.output(), bare);
    assert!(
        !restart_err(&job).contains("vDSO proxy"),
        "a proxy was built on the same kernel:\n{}",
        restart_err(&job)
    );
    assert_eq!(report(&job), "in place");
}

/// Checkpoint at the first mark, kill after the second; the images are
/// then changed by `tamper` before the restart.
fn checkpoint_tamper_restart(
    job: &mut Job,
    p: &str,
    tamper: impl Fn(&mut dmtcp_common::image::Meta),
) {
    job.launch(&[p], &[]);
    checkpoint_tamper(job, tamper);
    job.restart();
}

/// [`checkpoint_tamper_restart`] but the launch and the restart.
fn checkpoint_tamper(job: &mut Job, tamper: impl Fn(&mut dmtcp_common::image::Meta)) {
    job.wait_for(MARKS[0].0);
    job.checkpoint();
    job.wait_for(MARKS[0].1);
    job.kill();
    let imgs = job.images();
    assert_eq!(imgs.len(), 1);
    dmtcp_common::image::rewrite_meta(&imgs[0], &tamper).unwrap();
}

/// The image as a kernel without `[vvar_vclock]` (before 6.x) would have
/// made it: one larger `[vvar]` before the same `[vdso]`. This kernel's
/// layout differs, so the restorer builds the proxy on its own.
fn older_kernel_layout(m: &mut dmtcp_common::image::Meta) {
    let [vvar, vclock, vdso] = m.special;
    assert!(
        vdso.0 != 0 && !m.vdso_syms.is_empty(),
        "the image records the vDSO and its entry points: {:?}",
        m.special
    );
    if vclock.0 != 0 {
        m.special = [(vvar.0.min(vclock.0), vvar.1 + vclock.1), (0, 0), vdso];
    } else {
        // A kernel that has no [vvar_vclock]: pretend the old one had it.
        m.special = [
            (vvar.0, vvar.1 - 4096),
            (vvar.0 + vvar.1 - 4096, 4096),
            vdso,
        ];
    }
}

/// A restart across a (simulated) vDSO layout change works through the
/// proxy, which the restorer builds without being told to.
#[test]
fn vdso_layout_change_restarts_through_the_proxy() {
    let prog = c_program("vdsoclock");
    let p = prog.to_str().unwrap();
    let bare = run_bare(&[p]);
    let mut job = Job::new("vdso-layout");
    checkpoint_tamper_restart(&mut job, p, older_kernel_layout);
    job.wait_success();
    let err = restart_err(&job);
    assert!(
        err.contains("vDSO proxy at 0x") && err.contains("differs from the image's"),
        "no vDSO proxy:\n{err}"
    );
    assert_eq!(job.output(), bare);
    assert_eq!(report(&job), "trampoline");
}

/// An image that does not record the old vDSO's entry points (made by an
/// older version) is refused, with a clear message, on another layout.
#[test]
fn vdso_layout_change_without_entry_points_is_refused() {
    let prog = c_program("vdsoclock");
    let p = prog.to_str().unwrap();
    let mut job = Job::new("vdso-old-image");
    checkpoint_tamper_restart(&mut job, p, |m| {
        older_kernel_layout(m);
        m.vdso_syms.clear();
    });
    let st = wait_timeout(job.proc.as_mut().unwrap(), TIMEOUT).expect("dmtcp_restart did not end");
    job.proc = None;
    assert_eq!(st.code(), Some(1), "{st:?}");
    let err = restart_err(&job);
    assert!(
        err.contains("vDSO/vvar layout differs")
            && err.contains("restart it on the kernel it was made on"),
        "{err}"
    );
}

/// When no proxy can be built (here: two old entry points 2 bytes apart),
/// the restorer says why and exits; nothing crashes.
#[test]
fn vdso_proxy_failure_is_a_clear_error() {
    let prog = c_program("vdsoclock");
    let p = prog.to_str().unwrap();
    let mut job = Job::new("vdso-no-room");
    checkpoint_tamper_restart(&mut job, p, no_room_for_a_proxy);
    let st = wait_timeout(job.proc.as_mut().unwrap(), TIMEOUT).expect("dmtcp_restart did not end");
    job.proc = None;
    assert_eq!(st.code(), Some(1), "{st:?}");
    let err = restart_err(&job);
    assert!(err.contains("dmtcp_restorer: cannot build the vDSO proxy: the old vDSO's entry points are too close together"), "{err}");
}

/// The restorer's own messages go to the stderr `dmtcp_restart` was
/// started with, also when the program's stdout and stderr are one file
/// (`>log 2>&1` in a batch script: `dmtcp_restart` puts that file back at
/// fds 1 and 2 before it runs the restorer). Before, a restart that failed
/// there said why only in the program's log, and `dmtcp_restart` printed
/// nothing.
#[test]
fn the_restorers_messages_go_to_the_restarts_stderr() {
    let prog = c_program("vdsoclock");
    let mut job = Job::new("vdso-restorer-stderr");
    job.launch_one_log(&[prog.to_str().unwrap()]);
    checkpoint_tamper(&mut job, no_room_for_a_proxy);
    let before = job.output();
    job.restart();
    let st = wait_timeout(job.proc.as_mut().unwrap(), TIMEOUT).expect("dmtcp_restart did not end");
    job.proc = None;
    assert_eq!(st.code(), Some(1), "{st:?}{}", job.diag());
    let err = restart_err(&job);
    assert!(
        err.contains("dmtcp_restorer: cannot build the vDSO proxy"),
        "not in restart.err{}",
        job.diag()
    );
    assert_eq!(
        job.output(),
        before,
        "the program's log changed at the restart{}",
        job.diag()
    );
}

/// The image as in [`older_kernel_layout`], with two old entry points 2
/// bytes apart: no proxy can be built.
fn no_room_for_a_proxy(m: &mut dmtcp_common::image::Meta) {
    older_kernel_layout(m);
    let off = m
        .vdso_syms
        .iter()
        .find(|s| s.0 == "__vdso_time")
        .expect("__vdso_time")
        .1;
    m.vdso_syms.push(("__vdso_squeezed".into(), off + 2));
}
