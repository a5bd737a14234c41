//! OpenMPI (Debian's 4.1, `mpicc`/`mpirun`) over its openib BTL on the
//! software device: an MPI program (tests/c/mpi_ring.c) moves data of many
//! sizes with checked contents and prints a checksum, which must equal the
//! one the same program prints over shared memory.
//!
//! The jobs allow only `--mca btl openib,self` (no tcp, no vader), so ranks
//! can only reach each other through the device; the BTL's verbose output
//! must show openib chosen for every pair of ranks, and the verbs library's
//! counters (`SOFTIB_STATS`) must show the RDMA operations the protocols
//! use (RDMA READ for rendezvous, RDMA WRITE for eager RDMA and the
//! pipelined protocol).
//!
//! On two nodes of the test rig, mpirun starts the remote ranks over ssh;
//! every rank runs under `softib exec`, which starts its node's service on
//! first use; the fabric directory is the rig's shared directory.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long one mpirun may take before the test fails.
const JOB_LIMIT: Duration = Duration::from_secs(45);

/// MPI ranks busy-poll: jobs run one at a time, or on a small machine they
/// would starve each other (and the services) of CPU.
static JOBS: Mutex<()> = Mutex::new(());

fn softib() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_softib"))
}

/// The MPI program, built once with mpicc, in a directory the rig's nodes
/// see (not under the node-private /tmp).
fn program() -> &'static Path {
    static PROG: OnceLock<PathBuf> = OnceLock::new();
    PROG.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/mpi_ring.c");
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("softib-mpi");
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("mpi_ring");
        let tmp = dir.join(format!(".mpi_ring.{}", std::process::id()));
        let r = Command::new("mpicc")
            .args(["-O2", "-Wall", "-Werror", "-o"])
            .arg(&tmp)
            .arg(&src)
            .output()
            .expect("mpicc (Debian's libopenmpi-dev) must be installed");
        assert!(
            r.status.success(),
            "mpicc failed:\n{}",
            String::from_utf8_lossy(&r.stderr)
        );
        std::fs::rename(&tmp, &out).unwrap();
        out
    })
}

struct Job {
    ok: bool,
    status: String,
    stdout: String,
    stderr: String,
    took: Duration,
}

impl Job {
    fn text(&self) -> String {
        format!(
            "exit: {}\nstdout:\n{}\nstderr:\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs `cmd` in its own process group with the output captured; kills the
/// group if it runs past `limit`.
fn run(mut cmd: Command, limit: Duration) -> Job {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let t0 = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            String::from_utf8_lossy(&v).into_owned()
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if t0.elapsed() > limit {
            // SAFETY: kill(2) of the process group this test created.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            panic!(
                "{cmd:?} did not finish in {limit:?}\nstdout:\n{}\nstderr:\n{}",
                out.join().unwrap(),
                err.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = t0.elapsed();
    // Whatever the job left in its group (it should leave nothing).
    // SAFETY: as above.
    unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
    Job {
        ok: status.success(),
        status: status.to_string(),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
        took,
    }
}

fn checksum_line(stdout: &str) -> Option<&str> {
    stdout.lines().find(|l| l.starts_with("mpi_ring: ok "))
}

/// The program's result for `ranks` ranks over shared memory (no device).
fn reference(ranks: usize) -> String {
    static REF: Mutex<Vec<(usize, String)>> = Mutex::new(Vec::new());
    if let Some((_, s)) = REF.lock().unwrap().iter().find(|(n, _)| *n == ranks) {
        return s.clone();
    }
    let mut c = Command::new("mpirun");
    c.args([
        "--allow-run-as-root",
        "--oversubscribe",
        "--bind-to",
        "none",
        "-np",
        &ranks.to_string(),
    ])
    .args(["--mca", "pml", "ob1", "--mca", "btl", "self,vader"])
    .arg(program())
    .arg(ranks.to_string());
    let job = {
        let _g = JOBS.lock().unwrap_or_else(|p| p.into_inner());
        run(c, JOB_LIMIT)
    };
    assert!(
        job.ok,
        "reference run over shared memory failed\n{}",
        job.text()
    );
    let line = checksum_line(&job.stdout)
        .unwrap_or_else(|| panic!("no result line\n{}", job.text()))
        .to_string();
    assert!(line.contains(&format!("size={ranks} ")), "{line}");
    REF.lock().unwrap().push((ranks, line.clone()));
    line
}

/// mpirun options that leave openib as the only way between ranks.
fn openib_args(extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "--allow-run-as-root",
        "--oversubscribe",
        // Each node's mpirun/orted would bind its first rank to core 0: two
        // nodes on one machine would then share one core.
        "--bind-to",
        "none",
        "--mca",
        "pml",
        "ob1",
        "--mca",
        "btl",
        "openib,self",
        "--mca",
        "btl_openib_allow_ib",
        "1",
        "--mca",
        "btl_openib_cpc_include",
        "udcm",
        "--mca",
        "btl_openib_warn_no_device_params_found",
        "0",
        "--mca",
        "btl_base_verbose",
        "100",
        // Spinning ranks yield, so the services get the CPU to move data.
        "--mca",
        "mpi_yield_when_idle",
        "1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// Counters of one `SOFTIB_STATS` line: (name, value) pairs.
fn posted(line: &str) -> Vec<(String, u64)> {
    let rest = line.split_once("posted:").map(|(_, r)| r).unwrap_or("");
    let w: Vec<&str> = rest.split_whitespace().collect();
    w.chunks(2)
        .filter_map(|c| Some((c[0].to_string(), c.get(1)?.parse().ok()?)))
        .collect()
}

/// Sum of counter `name` over the job's ranks.
fn total(job: &Job, name: &str) -> u64 {
    job.stderr
        .lines()
        .filter(|l| l.contains(" posted: "))
        .flat_map(posted)
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v)
        .sum()
}

/// Checks a finished openib job of `ranks` ranks on the nodes `hosts`.
fn check(job: &Job, ranks: usize, hosts: &[&str]) {
    let t = job.text();
    assert!(job.ok, "mpirun failed\n{t}");
    assert_eq!(
        checksum_line(&job.stdout),
        Some(reference(ranks).as_str()),
        "wrong result\n{t}"
    );
    for h in hosts {
        assert!(
            job.stdout.contains(&format!(" on {h}\n")),
            "no rank ran on {h}\n{t}"
        );
    }
    let ports = job
        .stderr
        .lines()
        .filter(|l| l.contains("openib: using port softib0:1"))
        .count();
    assert_eq!(ports, ranks, "every rank must open the device's port\n{t}");
    let pairs = job
        .stderr
        .lines()
        .filter(|l| l.contains("mca: bml: Using openib btl for send to"))
        .count();
    assert_eq!(
        pairs,
        ranks * (ranks - 1),
        "openib must carry traffic between every pair of ranks\n{t}"
    );
    let stats = job
        .stderr
        .lines()
        .filter(|l| l.contains(" posted: "))
        .count();
    assert_eq!(
        stats, ranks,
        "each rank closes its device context once\n{t}"
    );
    // Failed completions ("error polling ... RETRY EXCEEDED"), unsupported
    // verbs, OpenMPI's warnings.
    for bad in [
        "not supported by the software device",
        "rror",
        "RETRY",
        "WARNING",
    ] {
        let hits: Vec<&str> = job.stderr.lines().filter(|l| l.contains(bad)).collect();
        assert!(
            hits.is_empty(),
            "{bad:?} in the job's output: {hits:?}\n{t}"
        );
    }
    eprintln!("job of {ranks} ranks took {:?}\n{}", job.took, job.stdout);
}

/// One node: a private service directory; mpirun and its ranks all run
/// under one `softib exec`.
struct Node {
    dir: PathBuf,
}

impl Node {
    fn new(name: &str) -> Node {
        let dir = std::env::temp_dir().join(format!("softib-mpi-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Node { dir }
    }

    fn mpirun(&self, ranks: usize, extra: &[&str]) -> Job {
        let mut c = Command::new(softib());
        c.env("SOFTIB_DIR", &self.dir)
            .env("SOFTIB_IDLE_EXIT", "5")
            .env("SOFTIB_STATS", "1")
            .env_remove("SOFTIB_FABRIC")
            .env_remove("SOFTIB_SOCKET")
            .env_remove("SYSFS_PATH")
            .args(["exec", "--", "mpirun"])
            .args(openib_args(extra))
            .args(["-np", &ranks.to_string()])
            .arg(program())
            .arg(ranks.to_string());
        reference(ranks);
        let _g = JOBS.lock().unwrap_or_else(|p| p.into_inner());
        run(c, JOB_LIMIT)
    }
}

impl Drop for Node {
    /// Stops the service `softib exec` started for this node (it would
    /// leave on its own after SOFTIB_IDLE_EXIT seconds): the `softib
    /// daemon` process whose SOFTIB_DIR is this node's directory.
    fn drop(&mut self) {
        let want = format!("SOFTIB_DIR={}", self.dir.display());
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let env = std::fs::read(e.path().join("environ")).unwrap_or_default();
            let is_daemon = cmd.split(|&b| b == 0).nth(1) == Some(b"daemon".as_slice());
            if is_daemon && env.split(|&b| b == 0).any(|v| v == want.as_bytes()) {
                // SAFETY: plain kill(2) of a service this test started.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Rendezvous with RDMA READ (leave_pinned, the default here) and, after a
/// few messages to a peer, eager messages as RDMA WRITEs into its buffers.
#[test]
fn one_node_two_ranks_rdma_read_and_eager_rdma() {
    let n = Node::new("read");
    let job = n.mpirun(2, &["--mca", "btl_openib_use_eager_rdma", "1"]);
    check(&job, 2, &[]);
    assert!(
        total(&job, "rdma_read") > 0,
        "large messages should use RDMA READ\n{}",
        job.text()
    );
    assert!(
        total(&job, "rdma_write") > 0,
        "eager RDMA should use RDMA WRITE\n{}",
        job.text()
    );
    assert!(
        total(&job, "send_imm") + total(&job, "send") > 0,
        "{}",
        job.text()
    );
    // The tree softib exec made for the job, as openib found it.
    let host = softib::paths::hostname();
    let lid = std::fs::read_to_string(
        n.dir
            .join(&host)
            .join("sysfs/class/infiniband/softib0/ports/1/lid"),
    )
    .unwrap();
    assert!(lid.starts_with("0x"), "{lid}");
}

/// Without leave_pinned, large messages go by the pipelined protocol: the
/// receiver's PUT requests make the sender RDMA WRITE the fragments.
#[test]
fn one_node_two_ranks_pipelined_rdma_write() {
    let n = Node::new("pipeline");
    let job = n.mpirun(
        2,
        &[
            "--mca",
            "mpi_leave_pinned",
            "0",
            "--mca",
            "btl_openib_use_eager_rdma",
            "0",
        ],
    );
    check(&job, 2, &[]);
    assert!(
        total(&job, "rdma_write") > 0,
        "the pipeline should use RDMA WRITE\n{}",
        job.text()
    );
}

/// A job over two rig nodes: `ranks` ranks, `per_node` on each node.
fn two_nodes(ranks: usize, per_node: usize, extra: &[&str]) -> Job {
    reference(ranks);
    let rig = testrig::Rig::builder(2)
        .sshd(true)
        .up()
        .expect("test rig with sshd (needs root, iproute2, util-linux, openssh)");
    let fabric = rig.shared_dir().join("fabric");
    std::fs::create_dir_all(&fabric).unwrap();
    let hostfile = rig.hostfile(per_node).unwrap();
    let mut c = rig.node(0).command("mpirun");
    c.env("SOFTIB_FABRIC", &fabric)
        .env("SOFTIB_IDLE_EXIT", "5")
        .env("SOFTIB_STATS", "1")
        .env_remove("SOFTIB_DIR")
        .env_remove("SOFTIB_SOCKET")
        .env_remove("SYSFS_PATH")
        .args(openib_args(extra))
        .args(["-np", &ranks.to_string(), "--map-by", "node", "--hostfile"])
        .arg(&hostfile)
        .args([
            "--mca",
            "plm_rsh_agent",
            &format!("ssh -F {}", rig.ssh_config().display()),
        ])
        .args(["--mca", "oob_tcp_if_include", &rig.subnet()])
        .args([
            "-x",
            "SOFTIB_FABRIC",
            "-x",
            "SOFTIB_IDLE_EXIT",
            "-x",
            "SOFTIB_STATS",
        ])
        .arg(softib())
        .args(["exec", "--"])
        .arg(program())
        .arg(ranks.to_string());
    let job = {
        let _g = JOBS.lock().unwrap_or_else(|p| p.into_inner());
        run(c, JOB_LIMIT)
    };
    // Both nodes' services registered their LIDs in the shared fabric dir.
    let lids = std::fs::read_dir(&fabric).map(|d| d.count()).unwrap_or(0);
    assert!(
        lids >= 2 || !job.ok,
        "the fabric directory should hold both nodes' LIDs ({lids})\n{}",
        job.text()
    );
    rig.down().expect("rig teardown");
    job
}

/// One rank on each of two nodes: everything crosses the services' link.
#[test]
fn two_nodes_two_ranks() {
    let job = two_nodes(2, 1, &["--mca", "btl_openib_use_eager_rdma", "1"]);
    check(&job, 2, &["node0", "node1"]);
    assert!(total(&job, "rdma_read") > 0, "{}", job.text());
    assert!(total(&job, "rdma_write") > 0, "{}", job.text());
}

/// Two ranks on each node (ranks 0, 2 on node0): pairs on one node share
/// its service, the others cross the link; large messages by the
/// pipelined RDMA WRITE protocol.
#[test]
fn two_nodes_four_ranks_pipelined() {
    let job = two_nodes(4, 2, &["--mca", "mpi_leave_pinned", "0"]);
    check(&job, 4, &["node0", "node1"]);
    assert!(total(&job, "rdma_write") > 0, "{}", job.text());
}
