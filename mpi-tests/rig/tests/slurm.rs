//! The rig's SLURM cluster (Rig::start_slurm): needs root and Debian's
//! slurmctld, slurmd, slurm-client and munge.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use testrig::{Node, Rig};

fn wait_for<T>(what: &str, timeout: Duration, check: impl FnMut() -> Option<T>) -> T {
    testrig::wait_for(what, timeout, check).unwrap()
}

/// Runs a command in `node` and returns its stdout; panics with its stderr on failure.
fn run(node: &Node, program: &str, args: &[&str]) -> String {
    let out = node
        .command(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} on {} failed ({}): {}",
        node.name(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `scontrol show job` field `key` of job `id` (None once SLURM forgot it).
fn job_field(node: &Node, id: &str, key: &str) -> Option<String> {
    let out = node
        .command("scontrol")
        .args(["show", "job", id])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")).map(str::to_string))
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit(')').next().unwrap_or("").split_whitespace().next() != Some("Z"))
        .unwrap_or(false)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn sbatch(node: &Node, dir: &Path, args: &[&str], script: &str) -> String {
    let file = dir.join(format!("job-{}.sh", std::process::id()));
    std::fs::write(&file, script).unwrap();
    let mut a = vec!["--parsable", "-D", dir.to_str().unwrap()];
    a.extend_from_slice(args);
    a.push(file.to_str().unwrap());
    run(node, "sbatch", &a).trim().to_string()
}

#[test]
fn sinfo_and_srun_across_nodes() {
    let rig = Rig::builder(3).slurm(true).up().unwrap();
    let n0 = rig.node(0);
    let sinfo = run(n0, "sinfo", &["-h", "-o", "%P %a %D %t %N"]);
    assert_eq!(sinfo.trim(), "rig* up 3 idle node[0-2]");
    // From another node than the controller's.
    let out = run(rig.node(2), "srun", &["-N2", "hostname"]);
    let mut hosts: Vec<&str> = out.lines().collect();
    hosts.sort();
    assert_eq!(hosts, ["node0", "node1"]);
    // 6 tasks: 2 per node (CPUS_PER_NODE), ranks 0..5 by block.
    let out = run(
        n0,
        "srun",
        &[
            "-N3",
            "-n6",
            "sh",
            "-c",
            "echo $SLURM_PROCID $(hostname) $SLURM_NNODES",
        ],
    );
    let mut lines: Vec<&str> = out.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        [
            "0 node0 3",
            "1 node0 3",
            "2 node1 3",
            "3 node1 3",
            "4 node2 3",
            "5 node2 3"
        ]
    );
    // The host's /etc/slurm is untouched: the configuration is mounted in the nodes only.
    assert!(!Path::new("/etc/slurm/slurm.conf").exists());
    assert!(Path::new(&format!("/proc/{}/root/etc/slurm/slurm.conf", n0.pid())).exists());
}

#[test]
fn sbatch_squeue_scancel() {
    let rig = Rig::builder(2).slurm(true).up().unwrap();
    let n0 = rig.node(0);
    let dir = rig.shared_dir();
    let id = sbatch(
        n0,
        &dir,
        &["-N2", "-J", "sleeper", "-o", "out-%j.txt"],
        "#!/bin/sh\nsrun hostname | sort > hosts.txt\necho $$ > pid.txt\nexec sleep 1000\n",
    );
    let pid: u32 = wait_for("the batch script to start", Duration::from_secs(20), || {
        read(&dir.join("pid.txt")).trim().parse().ok()
    });
    assert_eq!(read(&dir.join("hosts.txt")), "node0\nnode1\n");
    let q = run(n0, "squeue", &["-h", "-o", "%i %j %T %D %N"]);
    assert_eq!(q.trim(), format!("{id} sleeper RUNNING 2 node[0-1]"));
    assert!(alive(pid));
    run(n0, "scancel", &[&id]);
    wait_for("the job to be cancelled", Duration::from_secs(20), || {
        (job_field(n0, &id, "JobState").as_deref() == Some("CANCELLED")).then_some(())
    });
    wait_for(
        "the batch script to be killed",
        Duration::from_secs(20),
        || (!alive(pid)).then_some(()),
    );
    assert_eq!(run(n0, "squeue", &["-h", "-t", "R,PD"]).trim(), "");
}

#[test]
fn scontrol_requeue_runs_the_script_again() {
    let rig = Rig::builder(2).slurm(true).up().unwrap();
    let n0 = rig.node(0);
    let dir = rig.shared_dir();
    let id = sbatch(
        n0,
        &dir,
        &["-N1", "-o", "/dev/null"],
        "#!/bin/sh\necho \"${SLURM_RESTART_COUNT:-0} $SLURM_JOB_ID\" >> runs.txt\nexec sleep 1000\n",
    );
    let runs = dir.join("runs.txt");
    wait_for("the first run", Duration::from_secs(20), || {
        (read(&runs) == format!("0 {id}\n")).then_some(())
    });
    run(n0, "scontrol", &["requeue", &id]);
    // Requeued jobs wait for the credential lifetime before starting again.
    let timeout = Duration::from_secs(u64::from(testrig::slurm::CRED_EXPIRE_SECS) + 20);
    wait_for("the second run", timeout, || {
        (read(&runs) == format!("0 {id}\n1 {id}\n")).then_some(())
    });
    assert_eq!(job_field(n0, &id, "Restarts").as_deref(), Some("1"));
    assert_eq!(job_field(n0, &id, "JobState").as_deref(), Some("RUNNING"));
    run(n0, "scancel", &[&id]);
}

/// Processes of the nodes whose command name starts with one of `names`.
fn daemons(rig: &Rig, names: &[&str]) -> Vec<(u32, String)> {
    let mut v = Vec::new();
    for node in rig.nodes() {
        let out = std::process::Command::new("ip")
            .args(["netns", "pids", node.netns()])
            .output()
            .unwrap();
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let pid: u32 = pid.parse().unwrap();
            let comm = read(Path::new(&format!("/proc/{pid}/comm")))
                .trim()
                .to_string();
            if names.iter().any(|n| comm.starts_with(n)) {
                v.push((pid, comm));
            }
        }
    }
    v
}

#[test]
fn dropping_the_rig_stops_every_daemon_and_job() {
    let rig = Rig::builder(2).slurm(true).up().unwrap();
    let n0 = rig.node(0);
    let dir = rig.shared_dir();
    sbatch(
        n0,
        &dir,
        &["-N2", "-o", "/dev/null"],
        "#!/bin/sh\necho $$ > pid.txt\nexec srun sleep 1000\n",
    );
    wait_for(
        "the job step on both nodes",
        Duration::from_secs(20),
        || {
            let sleeps = daemons(&rig, &["sleep"]).len();
            // The anchors are `sleep infinity` too: 2 anchors + 2 tasks.
            (sleeps == 4).then_some(())
        },
    );
    let procs = daemons(
        &rig,
        &["munged", "slurmctld", "slurmd", "slurmstepd", "sleep"],
    );
    let count = |name: &str| procs.iter().filter(|(_, c)| c == name).count();
    assert_eq!(count("munged"), 2, "{procs:?}");
    assert_eq!(count("slurmctld"), 1, "{procs:?}");
    assert_eq!(count("slurmd"), 2, "{procs:?}");
    assert!(count("slurmstepd") >= 2, "{procs:?}");
    let dir = rig.dir().to_path_buf();
    rig.down().unwrap();
    let left: Vec<_> = procs.iter().filter(|(p, _)| alive(*p)).collect();
    assert!(left.is_empty(), "still running: {left:?}");
    assert!(!dir.exists());
}
