//! A real SLURM cluster on the rig: munged on every node, slurmctld on node0,
//! slurmd on every node (Debian's slurm-wlm 22.05 and munge 0.5).
//!
//! Everything lives in `<rig dir>/slurm`: the munge key, `etc/slurm.conf`
//! (bind-mounted on `/etc/slurm` in every node, so `sinfo`, `srun`, `sbatch`
//! ... run in a node need no `SLURM_CONF`), the controller's state, each
//! slurmd's spool directory and every daemon's log. The daemons run in the
//! foreground as children of the rig and die with it: the rig kills them, then
//! every process left in the nodes' network namespaces (slurmstepd, job
//! tasks).
//!
//! Needs the node's private `/run` (munged's socket and the daemons' pid files
//! are at their default paths there), so a rig without private dirs cannot
//! run SLURM.

use crate::{sys, Node};
use anyhow::{bail, Context, Result};
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// CPUs each node declares (`SlurmdParameters=config_overrides`: whatever the
/// machine has, every node offers this many task slots).
pub const CPUS_PER_NODE: usize = 2;
/// slurmctld's port (on node0's address).
pub const SLURMCTLD_PORT: u16 = 6817;
/// How long the daemons may take until every node is idle.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// The job credential lifetime, which is also how long a requeued job waits
/// before it may start again (SLURM's default is 120 s).
pub const CRED_EXPIRE_SECS: u32 = 10;
/// Where munged puts its socket in each node's private `/run` (SLURM's default).
const MUNGE_SOCKET: &str = "/run/munge/munge.socket.2";

/// Paths of the cluster's files.
#[derive(Debug, Clone)]
pub struct SlurmPaths {
    /// `<rig dir>/slurm`.
    pub dir: PathBuf,
}

impl SlurmPaths {
    pub fn new(rig_dir: &Path) -> Self {
        SlurmPaths {
            dir: rig_dir.join("slurm"),
        }
    }
    /// The directory bind-mounted on `/etc/slurm` in every node.
    pub fn etc(&self) -> PathBuf {
        self.dir.join("etc")
    }
    pub fn conf(&self) -> PathBuf {
        self.etc().join("slurm.conf")
    }
    pub fn munge_key(&self) -> PathBuf {
        self.dir.join("munge/munge.key")
    }
    pub fn state(&self) -> PathBuf {
        self.dir.join("state")
    }
    /// slurmd's spool directory of node `name`.
    pub fn spool(&self, name: &str) -> PathBuf {
        self.dir.join("spool").join(name)
    }
    pub fn slurmctld_log(&self) -> PathBuf {
        self.dir.join("slurmctld.log")
    }
    pub fn slurmd_log(&self, name: &str) -> PathBuf {
        self.dir.join(format!("slurmd.{name}.log"))
    }
    /// munged's log (its stderr) on node `name`.
    pub fn munged_log(&self, name: &str) -> PathBuf {
        self.dir.join(format!("munged.{name}.log"))
    }
}

/// The `slurm.conf` of a rig: controller on the first node, one `NodeName`
/// line per node with its rig address, one default partition `rig` of all
/// nodes; no cgroups (proctrack/linuxproc, task/none), no accounting, short
/// timeouts, builtin scheduler run every second (a requeued job starts as soon
/// as its credential delay is over).
pub fn slurm_conf(
    rig_id: u32,
    paths: &SlurmPaths,
    nodes: &[(String, std::net::Ipv4Addr)],
) -> String {
    let d = &paths.dir;
    let mut s = String::new();
    let (ctl_name, ctl_addr) = &nodes[0];
    let _ = write!(
        s,
        "# slurm.conf of testrig rig {rig_id} (generated; see mpi-tests/rig/src/slurm.rs)\n\
         ClusterName=testrig{rig_id}\n\
         SlurmctldHost={ctl_name}({ctl_addr})\n\
         SlurmctldPort={SLURMCTLD_PORT}\n\
         SlurmUser=root\nSlurmdUser=root\n\
         AuthType=auth/munge\nCredType=cred/munge\n\
         AuthInfo=cred_expire={CRED_EXPIRE_SECS}\n\
         MpiDefault=none\nSwitchType=switch/none\n\
         ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\n\
         JobAcctGatherType=jobacct_gather/none\nAccountingStorageType=accounting_storage/none\n\
         JobCompType=jobcomp/none\nMailProg=/bin/true\n\
         SchedulerType=sched/builtin\nSchedulerParameters=sched_interval=1\n\
         SelectType=select/cons_tres\nSelectTypeParameters=CR_Core\n\
         SlurmdParameters=config_overrides\n\
         ReturnToService=2\nJobRequeue=1\n\
         SlurmctldTimeout=10\nSlurmdTimeout=10\nMessageTimeout=5\nInactiveLimit=0\n\
         KillWait=2\nMinJobAge=60\nWaittime=0\nOverTimeLimit=0\n\
         StateSaveLocation={state}\n\
         SlurmdSpoolDir={spool}/%n\n\
         SlurmctldLogFile={d}/slurmctld.log\nSlurmdLogFile={d}/slurmd.%n.log\n\
         SlurmctldDebug=info\nSlurmdDebug=info\n\
         SlurmctldPidFile=/run/slurmctld.pid\nSlurmdPidFile=/run/slurmd.pid\n\
         PlugStackConfig={etc}/plugstack.conf\n",
        state = paths.state().display(),
        spool = d.join("spool").display(),
        d = d.display(),
        etc = paths.etc().display(),
    );
    for (name, addr) in nodes {
        let _ = writeln!(
            s,
            "NodeName={name} NodeAddr={addr} CPUs={CPUS_PER_NODE} State=UNKNOWN"
        );
    }
    s.push_str("PartitionName=rig Nodes=ALL Default=YES MaxTime=INFINITE State=UP\n");
    s
}

/// Writes the cluster's files and starts munged, slurmctld and the slurmds;
/// returns the daemons (the caller kills them) once every node is idle.
pub(crate) fn start(
    rig_id: u32,
    rig_dir: &Path,
    nodes: &[Node],
    private_dirs: bool,
) -> Result<Vec<Child>> {
    if !private_dirs {
        bail!(
            "SLURM on the rig needs private dirs: each node's munged and slurmd use their own /run"
        );
    }
    let munged = sys::require_program("munged", "munge")?;
    let slurmctld = sys::require_program("slurmctld", "slurmctld")?;
    let slurmd = sys::require_program("slurmd", "slurmd")?;
    sys::require_program("sinfo", "slurm-client")?;
    let paths = SlurmPaths::new(rig_dir);
    for d in [paths.etc(), paths.state(), paths.dir.join("munge")] {
        fs::create_dir_all(&d)?;
    }
    fs::set_permissions(paths.dir.join("munge"), fs::Permissions::from_mode(0o700))?;
    for n in nodes {
        fs::create_dir_all(paths.spool(n.name()))?;
    }
    let mut key = vec![0u8; 1024];
    File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut key))
        .context("reading /dev/urandom for the munge key")?;
    let mut f = File::create(paths.munge_key())?;
    f.set_permissions(fs::Permissions::from_mode(0o400))?;
    f.write_all(&key)?;
    drop(f);
    let list: Vec<_> = nodes
        .iter()
        .map(|n| (n.name().to_string(), n.addr()))
        .collect();
    fs::write(paths.conf(), slurm_conf(rig_id, &paths, &list))?;
    // No cgroup plugin is used, but slurmd initialises one anyway, and its
    // autodetection looks at /sys/fs/cgroup, which `ip netns exec`'s fresh
    // sysfs lacks. cgroup/v1 named explicitly initialises without touching it.
    fs::write(paths.etc().join("cgroup.conf"), "CgroupPlugin=cgroup/v1\n")?;
    fs::write(paths.etc().join("plugstack.conf"), "")?;
    if !Path::new("/etc/slurm").is_dir() {
        fs::create_dir_all("/etc/slurm").context("creating /etc/slurm (mount point)")?;
    }

    let mut children = Vec::new();
    match start_daemons(&paths, nodes, &munged, &slurmctld, &slurmd, &mut children) {
        Ok(()) => Ok(children),
        Err(e) => {
            for c in &mut children {
                let _ = c.kill();
                let _ = c.wait();
            }
            Err(e)
        }
    }
}

/// Fails with the log's contents if `child` has exited.
fn check_alive(child: &mut Child, what: &str, log: &Path) -> Result<()> {
    if let Some(status) = child.try_wait()? {
        bail!(
            "{what} exited ({status}): {}",
            fs::read_to_string(log).unwrap_or_default().trim()
        );
    }
    Ok(())
}

fn start_daemons(
    paths: &SlurmPaths,
    nodes: &[Node],
    munged: &Path,
    slurmctld: &Path,
    slurmd: &Path,
    children: &mut Vec<Child>,
) -> Result<()> {
    let etc = sys::sh_quote(paths.etc());
    for n in nodes {
        n.sh(&format!(
            "mount --bind {etc} /etc/slurm && mkdir -p /run/munge"
        ))?;
    }
    let key = format!("--key-file={}", paths.munge_key().display());
    let deadline = Instant::now() + START_TIMEOUT;
    for n in nodes {
        let seed = format!(
            "--seed-file={}",
            paths.dir.join(format!("munge/{}.seed", n.name())).display()
        );
        let log = paths.munged_log(n.name());
        children.push(n.spawn_daemon(munged, ["-F", &key, &seed], &log)?);
    }
    // The socket, seen through the anchor's root (the node's mount namespace).
    for (n, child) in nodes.iter().zip(children.iter_mut()) {
        let socket = PathBuf::from(format!("/proc/{}/root{MUNGE_SOCKET}", n.pid()));
        while !socket.exists() {
            check_alive(
                child,
                &format!("munged on {}", n.name()),
                &paths.munged_log(n.name()),
            )?;
            if Instant::now() > deadline {
                bail!(
                    "munged on {} has no socket after {START_TIMEOUT:?}",
                    n.name()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let conf = paths.conf().display().to_string();
    let ctl_log = paths.dir.join("slurmctld.out");
    let mut ctl = nodes[0].spawn_daemon(slurmctld, ["-D", "-i", "-f", &conf], &ctl_log)?;
    let ctl_pid = ctl.id();
    let waited = loop {
        if sys::is_listening_on_port(ctl_pid, SLURMCTLD_PORT) {
            break Ok(());
        }
        if let Err(e) = check_alive(&mut ctl, "slurmctld", &ctl_log) {
            break Err(e);
        }
        if Instant::now() > deadline {
            break Err(anyhow::anyhow!(
                "slurmctld not listening after {START_TIMEOUT:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    children.push(ctl);
    waited?;
    let mut slurmds = Vec::new();
    for n in nodes {
        let log = paths.dir.join(format!("slurmd.{}.out", n.name()));
        slurmds.push((n.spawn_daemon(slurmd, ["-D", "-f", &conf], &log)?, log));
    }
    let result = wait_idle(nodes, &mut slurmds, deadline);
    children.extend(slurmds.into_iter().map(|(c, _)| c));
    result
}

/// Waits until `sinfo` on node0 reports every node idle.
fn wait_idle(nodes: &[Node], slurmds: &mut [(Child, PathBuf)], deadline: Instant) -> Result<()> {
    loop {
        let out = nodes[0]
            .command("sinfo")
            .args(["-h", "-N", "-o", "%N %t"])
            .stdin(Stdio::null())
            .output()
            .context("running sinfo")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let idle = text
            .lines()
            .filter(|l| l.split_whitespace().nth(1) == Some("idle"))
            .count();
        if out.status.success() && idle == nodes.len() {
            return Ok(());
        }
        for ((child, log), n) in slurmds.iter_mut().zip(nodes) {
            check_alive(child, &format!("slurmd on {}", n.name()), log)?;
        }
        if Instant::now() > deadline {
            bail!(
                "SLURM nodes not all idle after {START_TIMEOUT:?}: sinfo says {:?} {}",
                text.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names;

    #[test]
    fn conf_names_every_node_and_the_controller() {
        let paths = SlurmPaths::new(Path::new("/tmp/testrig/rig7"));
        let nodes: Vec<_> = (0..3)
            .map(|k| (names::node_name(k), names::addr(7, k)))
            .collect();
        let c = slurm_conf(7, &paths, &nodes);
        assert!(c.contains("SlurmctldHost=node0(10.231.7.1)\n"), "{c}");
        assert!(
            c.contains("NodeName=node2 NodeAddr=10.231.7.3 CPUs=2 State=UNKNOWN\n"),
            "{c}"
        );
        assert!(
            c.contains("SlurmdSpoolDir=/tmp/testrig/rig7/slurm/spool/%n\n"),
            "{c}"
        );
        assert!(
            c.contains("StateSaveLocation=/tmp/testrig/rig7/slurm/state\n"),
            "{c}"
        );
        assert!(c.contains("ProctrackType=proctrack/linuxproc\n"), "{c}");
        assert!(c.contains("ReturnToService=2\n"), "{c}");
        assert!(c.ends_with("PartitionName=rig Nodes=ALL Default=YES MaxTime=INFINITE State=UP\n"));
    }
}
