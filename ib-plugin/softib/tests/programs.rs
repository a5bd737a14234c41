//! Unmodified verbs programs from Debian (ibverbs-utils, perftest) on the
//! software device, run under `softib exec` as a user would: a server and a
//! client process exchange their QP numbers and LIDs over TCP and move data
//! through the device; the pingpong programs check the data (`-c`).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn softib() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_softib"))
}

/// A private fabric: on one node (a private SOFTIB_DIR, so each test has
/// its own service), or over the nodes of a test rig (each node's service
/// in its own /tmp, the fabric directory shared).
struct Fabric {
    dir: PathBuf,
    rig: Option<testrig::Rig>,
    /// HCAs of a service `softib exec` starts.
    devices: u32,
}

impl Fabric {
    fn new(name: &str) -> Fabric {
        let dir = std::env::temp_dir().join(format!("softib-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Fabric {
            dir,
            rig: None,
            devices: 1,
        }
    }

    fn nodes(n: usize) -> Fabric {
        let rig = testrig::Rig::up(n).expect("test rig (needs root, iproute2, util-linux)");
        let dir = rig.shared_dir().join("fabric");
        std::fs::create_dir_all(&dir).unwrap();
        Fabric {
            dir,
            rig: Some(rig),
            devices: 1,
        }
    }

    /// `softib exec -- prog args` here, or on node `node` of the rig.
    fn cmd_on(&self, node: usize, prog: &str, args: &[&str]) -> Command {
        let mut c = match &self.rig {
            None => {
                let mut c = Command::new(softib());
                c.env("SOFTIB_DIR", &self.dir).env_remove("SOFTIB_FABRIC");
                c
            }
            Some(rig) => {
                let mut c = rig.node(node).command(softib());
                c.env("SOFTIB_FABRIC", &self.dir).env_remove("SOFTIB_DIR");
                c
            }
        };
        c.arg("exec")
            .arg("--devices")
            .arg(self.devices.to_string())
            .arg("--")
            .arg(prog)
            .args(args);
        c.env("SOFTIB_IDLE_EXIT", "5").env_remove("SOFTIB_SOCKET");
        c
    }

    fn cmd(&self, prog: &str, args: &[&str]) -> Command {
        self.cmd_on(0, prog, args)
    }

    /// Where the server listens, as the client names it.
    fn server_addr(&self) -> String {
        match &self.rig {
            None => "127.0.0.1".into(),
            Some(rig) => rig.node(0).addr().to_string(),
        }
    }
}

impl Drop for Fabric {
    fn drop(&mut self) {
        // Stop this test's services (they would leave on their own when
        // idle; a rig's teardown kills everything in its nodes anyway).
        for d in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            if let Ok(pid) = std::fs::read_to_string(d.path().join("softibd.lock")) {
                if let Ok(pid) = pid.trim().parse::<i32>() {
                    // SAFETY: plain kill(2) of a service this test started.
                    unsafe { libc::kill(pid, libc::SIGTERM) };
                }
            }
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_output(mut child: Child, limit: Duration, what: &str) -> Output {
    let t0 = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{what} did not finish in {limit:?}\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `prog server_args` and, once it listens on `port`, `prog
/// client_args`; both must succeed. Returns (server, client) outputs.
fn pair(f: &Fabric, prog: &str, port: u16, server: &[&str], client: &[&str]) -> (String, String) {
    // One pair at a time: perftest calibrates its clock against
    // gettimeofday when it starts and gives up (r^2 < 0.9, "Can't produce
    // a report") when it is preempted while it samples, which pairs of this
    // file's other tests, busy on the same 2 cores, made happen in CI.
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let mut s = f
        .cmd(prog, server)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !testrig::is_listening_on_port(s.id(), port) {
        if let Ok(Some(st)) = s.try_wait() {
            let mut e = String::new();
            s.stderr.take().unwrap().read_to_string(&mut e).unwrap();
            panic!("{prog} server exited early ({st}): {e}");
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{prog} server never listened on {port}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let c = f
        .cmd_on(1, prog, client)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let co = wait_output(c, Duration::from_secs(120), &format!("{prog} client"));
    let so = wait_output(s, Duration::from_secs(120), &format!("{prog} server"));
    let text = |o: &Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    let (st, ct) = (text(&so), text(&co));
    assert!(
        so.status.success() && co.status.success(),
        "{prog} failed\nserver ({}):\n{st}\nclient ({}):\n{ct}",
        so.status,
        co.status
    );
    (st, ct)
}

fn check_pingpong(out: &str, iters: u32) {
    assert!(
        out.contains(&format!("{iters} iters in")),
        "no iteration summary:\n{out}"
    );
    for bad in ["Failed", "failed", "Couldn't", "Invalid", "error"] {
        assert!(!out.contains(bad), "{bad:?} in output:\n{out}");
    }
}

fn pingpong(prog: &str, extra: &[&str], iters: u32) {
    pingpong_on(
        &Fabric::new(&format!("{prog}{}", extra.join(""))),
        prog,
        extra,
        iters,
    );
}

fn pingpong_on(f: &Fabric, prog: &str, extra: &[&str], iters: u32) {
    let port = free_port();
    let p = port.to_string();
    let n = iters.to_string();
    let mut sa = vec!["-d", "softib0", "-p", &p, "-n", &n, "-c"];
    sa.extend_from_slice(extra);
    let mut ca = sa.clone();
    let addr = f.server_addr();
    ca.push(&addr);
    let (s, c) = pair(f, prog, port, &sa, &ca);
    check_pingpong(&s, iters);
    check_pingpong(&c, iters);
}

#[test]
fn ibv_devinfo_lists_the_device() {
    let f = Fabric::new("devinfo");
    let out = f.cmd("ibv_devinfo", &["-v"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("hca_id:\tsoftib0"), "{text}");
    assert!(text.contains("PORT_ACTIVE"), "{text}");
    assert!(text.contains("link_layer:\t\tInfiniBand"), "{text}");
    // A LID and GUID are chosen fresh by each start of the service.
    let lid = |t: &str| {
        t.lines()
            .find(|l| l.trim_start().starts_with("port_lid:"))
            .map(str::to_string)
    };
    let first = lid(&text).expect("port_lid");
    let status = Command::new(softib())
        .arg("status")
        .env("SOFTIB_DIR", &f.dir)
        .output()
        .unwrap();
    assert!(status.status.success());
    drop(f);
    let g = Fabric::new("devinfo2");
    let out2 = g.cmd("ibv_devinfo", &[]).output().unwrap();
    let text2 = String::from_utf8_lossy(&out2.stdout);
    assert_ne!(
        lid(&text2).expect("port_lid"),
        first,
        "the LID did not change between two services"
    );
}

#[test]
fn ibv_devinfo_without_service_reports_no_device() {
    let dir = std::env::temp_dir().join(format!("softib-none-{}", std::process::id()));
    let lib = softib().parent().unwrap().join("softib-lib");
    // softib exec makes the link; make sure it exists, then run without a service.
    let _ = Command::new(softib())
        .args(["exec", "--", "true"])
        .env("SOFTIB_DIR", &dir)
        .env("SOFTIB_IDLE_EXIT", "1")
        .status();
    let out = Command::new("ibv_devinfo")
        .env("LD_LIBRARY_PATH", &lib)
        .env("SOFTIB_SOCKET", dir.join("nowhere.sock"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("no device service"), "{err}");
    assert!(Path::new(&lib).join("libibverbs.so.1").exists());
}

#[test]
fn rc_pingpong_polling() {
    pingpong("ibv_rc_pingpong", &[], 1000);
}

#[test]
fn rc_pingpong_events_large() {
    pingpong("ibv_rc_pingpong", &["-e", "-s", "65536"], 200);
}

#[test]
fn uc_pingpong_polling_and_events() {
    pingpong("ibv_uc_pingpong", &[], 500);
    pingpong("ibv_uc_pingpong", &["-e"], 200);
}

#[test]
fn ud_pingpong_polling_and_events() {
    pingpong("ibv_ud_pingpong", &["-s", "2048"], 500);
    pingpong("ibv_ud_pingpong", &["-e"], 200);
}

#[test]
fn srq_pingpong_polling_and_events() {
    pingpong("ibv_srq_pingpong", &[], 500);
    pingpong("ibv_srq_pingpong", &["-e", "-q", "4"], 200);
}

fn perftest(prog: &str, extra: &[&str]) -> String {
    perftest_on(&Fabric::new(prog), prog, extra)
}

fn perftest_on(f: &Fabric, prog: &str, extra: &[&str]) -> String {
    let port = free_port();
    let p = port.to_string();
    let mut sa = vec!["-d", "softib0", "-p", &p];
    sa.extend_from_slice(extra);
    let mut ca = sa.clone();
    let addr = f.server_addr();
    ca.push(&addr);
    let (s, c) = pair(f, prog, port, &sa, &ca);
    assert!(
        c.contains("#bytes") || s.contains("#bytes"),
        "no result table:\n{s}\n{c}"
    );
    c
}

#[test]
fn perftest_write_read_send_atomic_lat() {
    perftest("ib_write_bw", &["-n", "2000"]);
    perftest("ib_read_bw", &["-n", "2000"]);
    perftest("ib_send_bw", &["-n", "2000"]);
    perftest("ib_atomic_bw", &["-n", "2000"]);
    perftest("ib_send_lat", &["-n", "2000"]);
    perftest("ib_send_bw", &["-n", "500", "-e"]);
    perftest("ib_read_bw", &["-n", "500", "-e"]);
}

/// Two nodes (network namespaces, each with its own service and LID): the
/// programs reach each other through the services' TCP link.
#[test]
fn two_nodes_pingpong_and_perftest() {
    let f = Fabric::nodes(2);
    let lids: Vec<String> = (0..2)
        .map(|k| {
            let out = f.cmd_on(k, "ibv_devinfo", &[]).output().unwrap();
            let t = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(out.status.success(), "{t}");
            t.lines()
                .find(|l| l.trim_start().starts_with("port_lid:"))
                .unwrap()
                .to_string()
        })
        .collect();
    assert_ne!(lids[0], lids[1], "each node has its own LID");
    pingpong_on(&f, "ibv_rc_pingpong", &[], 500);
    pingpong_on(&f, "ibv_rc_pingpong", &["-e"], 200);
    pingpong_on(&f, "ibv_ud_pingpong", &[], 300);
    pingpong_on(&f, "ibv_uc_pingpong", &["-e"], 200);
    pingpong_on(&f, "ibv_srq_pingpong", &[], 300);
    perftest_on(&f, "ib_write_bw", &["-n", "1000"]);
    perftest_on(&f, "ib_read_bw", &["-n", "1000"]);
    perftest_on(&f, "ib_atomic_bw", &["-n", "1000"]);
    perftest_on(&f, "ib_send_lat", &["-n", "1000"]);
}

/// A Rust program written with the `ibverbs` crate (ib-plugin/verbs-check):
/// two RC QPs, 2000 messages of 4 KiB, every word checked by the program.
#[test]
fn rust_ibverbs_program() {
    let prog = softib().parent().unwrap().join("ibv_rust_check");
    assert!(
        prog.exists(),
        "{} is missing: build the workspace first (scripts/test.sh does)",
        prog.display()
    );
    let f = Fabric::new("rust");
    let out = f
        .cmd(prog.to_str().unwrap(), &["2000", "512"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("ok 2000 messages of 512 words, checksum ")),
        "{text}"
    );
    // Without the device (only the system's libibverbs, no HCA) it fails.
    let bare = Command::new(&prog)
        .args(["10", "8"])
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .unwrap();
    assert!(!bare.status.success());
}

/// A C program (tests/c/verbs_check.c) using the plain verbs API: one-sided
/// operations and atomics into a process that is stopped (SIGSTOP) while
/// they run, and the error returns and error completions real hardware
/// gives (bad rkey, RNR, short receive buffer, bad transitions, busy
/// objects).
#[test]
fn verbs_semantics_and_errors() {
    let dir = std::env::temp_dir().join(format!("softib-vc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let exe = dir.join("verbs_check");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/verbs_check.c");
    let st = Command::new("cc")
        .args(["-O2", "-Wall", "-Werror", "-o"])
        .arg(&exe)
        .arg(&src)
        .arg("-libverbs")
        .status()
        .unwrap();
    assert!(st.success(), "cc verbs_check.c (needs libibverbs-dev)");
    let f = Fabric::new("verbs_check");
    let out = f.cmd(exe.to_str().unwrap(), &[]).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("verbs_check: ok"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A service with two HCAs: each has its own LID and GUID, and a program on
/// one reaches a program on the other.
#[test]
fn two_hcas_on_one_node() {
    let mut f = Fabric::new("twohca");
    f.devices = 2;
    let out = f.cmd("ibv_devinfo", &[]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("hca_id:\tsoftib0") && text.contains("hca_id:\tsoftib1"),
        "{text}"
    );
    let lids: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_start().starts_with("port_lid:"))
        .collect();
    assert_eq!(lids.len(), 2, "{text}");
    assert_ne!(lids[0], lids[1], "{text}");
    let port = free_port();
    let p = port.to_string();
    let (s, c) = pair(
        &f,
        "ibv_rc_pingpong",
        port,
        &["-d", "softib0", "-p", &p, "-n", "300", "-c"],
        &["-d", "softib1", "-p", &p, "-n", "300", "-c", "127.0.0.1"],
    );
    check_pingpong(&s, 300);
    check_pingpong(&c, 300);
}
