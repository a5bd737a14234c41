//! A multi-node test rig on one machine.
//!
//! [`Rig::up`] brings up `n` "nodes": each is a network namespace joined by a
//! veth pair to a bridge in the root namespace, with an address in a private
//! `10.231.<id>.0/24` that exists only inside these namespaces (the bridge has
//! no address, nothing is routed). Each node also has its own UTS namespace
//! (`hostname` prints `node0`, `node1`, ...), IPC namespace and mount namespace,
//! in which:
//! - `/etc/hosts` is the rig's file, so nodes resolve each other by name;
//! - root's `~/.bashrc` (if any) is replaced by a minimal one, so that
//!   `ssh node1 cmd` does not run whatever the real one does (on Debian root's
//!   runs `pyenv init`: slow, and racy when logins overlap);
//! - unless [`RigBuilder::private_dirs`] is off: `/dev/shm` and `/run` are fresh
//!   tmpfs and `/tmp` is the node's own directory, in which the rig directory,
//!   and any `/tmp` path given to [`RigBuilder::share`], appear at their usual
//!   place.
//!
//! The namespaces of a node are held by a small "anchor" process
//! (`sleep infinity`) started through `ip netns exec <ns> unshare --uts --mount
//! --ipc`; [`Node::command`] enters them with `nsenter`.
//!
//! Several rigs can be up at once, in one process or many: each takes a free
//! id under an flock in `/tmp/testrig` (see [`alloc`]). Dropping the rig tears
//! everything down; a rig whose owner died is removed by the next allocation
//! of its id or by `testrig cleanup` ([`cleanup_stale`]).

pub mod alloc;
pub mod names;
pub mod procs;
pub mod slurm;
mod sys;

use anyhow::{bail, Context, Result};
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read};
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

pub use alloc::cleanup_stale;
pub use sys::{find_program, is_listening_on_port};

/// How long a node's anchor or sshd may take to come up.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// The SSH port of each node's sshd.
pub const SSH_PORT: u16 = 22;

/// Options of a rig; [`Rig::up`] uses the defaults.
#[derive(Debug, Clone)]
pub struct RigBuilder {
    nodes: usize,
    private_dirs: bool,
    shares: Vec<PathBuf>,
    sshd: bool,
    slurm: bool,
}

impl RigBuilder {
    /// Whether each node gets its own `/tmp`, `/run` and `/dev/shm` (default true).
    ///
    /// With it, a path under `/tmp` is only visible in a node if it is the rig
    /// directory, under a shared path, or under `/tmp/X` where `X` holds the
    /// current executable, the current directory, `$CARGO_TARGET_DIR` or
    /// `$CARGO_MANIFEST_DIR` (shared automatically).
    pub fn private_dirs(mut self, on: bool) -> Self {
        self.private_dirs = on;
        self
    }

    /// Makes a host path under `/tmp` visible at the same path in every node
    /// (a bind mount; paths outside `/tmp` are visible anyway). It must exist.
    pub fn share(mut self, path: impl Into<PathBuf>) -> Self {
        self.shares.push(path.into());
        self
    }

    /// Also start an sshd on every node (see [`Rig::start_sshd`]).
    pub fn sshd(mut self, on: bool) -> Self {
        self.sshd = on;
        self
    }

    /// Also start a SLURM cluster (see [`Rig::start_slurm`]).
    pub fn slurm(mut self, on: bool) -> Self {
        self.slurm = on;
        self
    }

    /// Brings the rig up.
    pub fn up(self) -> Result<Rig> {
        Rig::up_with(self)
    }
}

/// One node of a rig.
#[derive(Debug)]
pub struct Node {
    index: usize,
    name: String,
    addr: Ipv4Addr,
    netns: String,
    pid: u32,
    tmp: Option<PathBuf>,
    nsenter: PathBuf,
}

impl Node {
    /// Its index in the rig (0-based).
    pub fn index(&self) -> usize {
        self.index
    }

    /// Its hostname and name in the rig's hosts file: `node<index>`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its IPv4 address (on `eth0`).
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// Its network namespace (`ip netns exec <netns> ...` enters only the
    /// network, not the hostname nor the mounts: prefer [`Node::command`]).
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// Pid of the process holding the node's namespaces:
    /// `nsenter -t <pid> -n -u -m -i` enters the node.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Host path of the node's private `/tmp` (None without private dirs).
    pub fn tmp_dir(&self) -> Option<&Path> {
        self.tmp.as_deref()
    }

    /// A command that runs `program` inside the node (network, hostname, IPC
    /// and mount namespaces). Add arguments, environment and stdio as usual;
    /// the environment is inherited as usual. The working directory is the
    /// path the command would have had on the host (so `current_dir` works),
    /// looked up again inside the node: if it does not exist there (a path
    /// under `/tmp` that is not shared), the command fails with exit status 127
    /// and a message on stderr. The spawned process's pid is the program's.
    ///
    /// Runs `sh -c` on the host, `nsenter`, then `sh -c 'cd DIR; exec PROGRAM'`
    /// in the node: a few milliseconds.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        const OUTER: &str = r#"n=$1; t=$2; ns=$3; inner=$4; node=$5; shift 5
exec "$n" --target "$t" "--net=$ns" --uts --mount --ipc -- /bin/sh -c "$inner" "$node" "$PWD" "$@""#;
        const INNER: &str = r#"cd "$1" 2>/dev/null || {
  echo "testrig: no directory $1 in $0 (a /tmp path of the host? see RigBuilder::share)" >&2; exit 127; }
shift; exec "$@""#;
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(OUTER)
            .arg("testrig-enter")
            .arg(&self.nsenter)
            .arg(self.pid.to_string())
            .arg(alloc::netns_file(&self.netns))
            .arg(INNER)
            .arg(&self.name)
            .arg(program);
        cmd
    }

    /// Starts `program` in the node as a daemon kept in the foreground: in
    /// `/`, stdin from /dev/null, stdout and stderr into `log`, in its own
    /// process group (a Ctrl-C of the rig's owner does not reach it).
    pub(crate) fn spawn_daemon(
        &self,
        program: &Path,
        args: impl IntoIterator<Item = impl AsRef<OsStr>>,
        log: &Path,
    ) -> Result<Child> {
        let log = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        self.command(program)
            .args(args)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {} on {}", program.display(), self.name))
    }

    /// Runs `sh -c script` in the node and returns its stdout; fails with its
    /// stderr if it exits with non-zero.
    pub fn sh(&self, script: &str) -> Result<String> {
        let out = self
            .command("/bin/sh")
            .args(["-c", script])
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running on {}: {script}", self.name))?;
        if !out.status.success() {
            bail!(
                "on {}: `{script}` failed ({}): stdout: {} stderr: {}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// A set of nodes on this machine; torn down on drop.
#[derive(Debug)]
pub struct Rig {
    id: u32,
    dir: PathBuf,
    nodes: Vec<Node>,
    private_dirs: bool,
    anchors: Mutex<Vec<Child>>,
    sshd: Mutex<Vec<Child>>,
    slurm: Mutex<Vec<Child>>,
    lock: Option<File>,
}

impl Rig {
    /// Brings up `n` nodes with the default options.
    pub fn up(n: usize) -> Result<Rig> {
        Rig::builder(n).up()
    }

    /// Options for a rig of `n` nodes.
    pub fn builder(n: usize) -> RigBuilder {
        RigBuilder {
            nodes: n,
            private_dirs: true,
            shares: Vec::new(),
            sshd: false,
            slurm: false,
        }
    }

    fn up_with(opts: RigBuilder) -> Result<Rig> {
        let n = opts.nodes;
        if n == 0 || n > names::MAX_NODES {
            bail!("a rig has 1 to {} nodes, not {n}", names::MAX_NODES);
        }
        sys::require_root()?;
        let nsenter = sys::require_program("nsenter", "util-linux")?;
        for (p, pkg) in [
            ("ip", "iproute2"),
            ("unshare", "util-linux"),
            ("mount", "mount"),
        ] {
            sys::require_program(p, pkg)?;
        }
        let shares = shares(&opts.shares)?;

        let global = alloc::global_lock()?;
        let (id, lock) = alloc::allocate(&global)?;
        let dir = names::rig_dir(id);
        let mut rig = Rig {
            id,
            dir: dir.clone(),
            nodes: Vec::new(),
            private_dirs: opts.private_dirs,
            anchors: Mutex::new(Vec::new()),
            sshd: Mutex::new(Vec::new()),
            slurm: Mutex::new(Vec::new()),
            lock: Some(lock),
        };
        // From here on, dropping `rig` removes whatever was made.

        fs::create_dir_all(dir.join("shared"))?;
        fs::set_permissions(dir.join("shared"), fs::Permissions::from_mode(0o1777))?;
        let mut hosts =
            String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
        for k in 0..n {
            writeln!(hosts, "{}\t{}", names::addr(id, k), names::node_name(k))?;
        }
        fs::write(rig.hosts_file(), hosts)?;

        // Network: everything in the root namespace in one `ip -batch` (under
        // the global lock: concurrent first `ip netns add`s race on making
        // /run/netns a shared mount), then one batch per node namespace.
        let bridge = names::bridge(id);
        let mut lines = vec![
            format!("link add {bridge} type bridge"),
            format!("link set {bridge} up"),
        ];
        for k in 0..n {
            lines.insert(k, format!("netns add {}", names::netns(id, k)));
        }
        for k in 0..n {
            lines.push(format!(
                "link add {} up master {bridge} type veth peer name eth0 netns {}",
                names::veth(id, k),
                names::netns(id, k)
            ));
        }
        sys::ip_batch(None, &lines, false)?;
        drop(global);
        let ns_setup: Vec<_> = (0..n)
            .map(|k| {
                let ns = names::netns(id, k);
                let lines = vec![
                    "link set lo up".to_string(),
                    format!("addr add {}/24 dev eth0", names::addr(id, k)),
                    "link set eth0 up".to_string(),
                ];
                std::thread::spawn(move || sys::ip_batch(Some(&ns), &lines, false))
            })
            .collect();
        for t in ns_setup {
            t.join().expect("ip thread panicked")?;
        }

        // Anchors: one process per node holding its UTS, mount and IPC namespaces.
        let home_bashrc = sys::root_home().join(".bashrc");
        let path = std::env::var("PATH").unwrap_or_default();
        let mut pending = Vec::new();
        for k in 0..n {
            let name = names::node_name(k);
            let node_dir = dir.join(&name);
            fs::create_dir_all(&node_dir)?;
            let mut script = String::from("set -e\n");
            writeln!(script, "hostname {}", sys::sh_quote(&name))?;
            writeln!(
                script,
                "mount --bind {} /etc/hosts",
                sys::sh_quote(rig.hosts_file())
            )?;
            if home_bashrc.is_file() {
                let bashrc = node_dir.join("bashrc");
                fs::write(
                    &bashrc,
                    format!(
                        "# Minimal ~/.bashrc of testrig node {name} (rig {id}): the real one is hidden here.\n\
                         export TESTRIG_NODE={name}\nexport PATH={}\n",
                        sys::sh_quote(&path)
                    ),
                )?;
                writeln!(
                    script,
                    "mount --bind {} {}",
                    sys::sh_quote(&bashrc),
                    sys::sh_quote(&home_bashrc)
                )?;
            }
            let tmp = if opts.private_dirs {
                script.push_str(
                    "mount -t tmpfs -o mode=1777 testrig-shm /dev/shm\n\
                     mount -t tmpfs -o mode=0755 testrig-run /run\n\
                     mkdir -p /run/sshd /run/lock\n\
                     chmod 1777 /run/lock\n",
                );
                let tmp = node_dir.join("tmp");
                fs::create_dir_all(&tmp)?;
                fs::set_permissions(&tmp, fs::Permissions::from_mode(0o1777))?;
                for share in std::iter::once(&dir).chain(&shares) {
                    let rel = share.strip_prefix("/tmp").expect("shares are under /tmp");
                    let target = tmp.join(rel);
                    if share.is_dir() {
                        fs::create_dir_all(&target)?;
                    } else {
                        fs::create_dir_all(target.parent().expect("has a parent"))?;
                        File::create(&target)?;
                    }
                    writeln!(
                        script,
                        "mount --bind {} {}",
                        sys::sh_quote(share),
                        sys::sh_quote(&target)
                    )?;
                }
                writeln!(script, "mount --rbind {} /tmp", sys::sh_quote(&tmp))?;
                Some(tmp)
            } else {
                None
            };
            script.push_str("echo ready\nexec sleep infinity\n");
            let mut child = Command::new("ip")
                .args(["netns", "exec", &names::netns(id, k)])
                .args([
                    "unshare",
                    "--uts",
                    "--mount",
                    "--ipc",
                    "--propagation",
                    "slave",
                ])
                .args(["/bin/sh", "-c", &script])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .process_group(0)
                .spawn()
                .context("starting a node's anchor process")?;
            let stdout = child.stdout.take().expect("piped");
            let stderr = child.stderr.take().expect("piped");
            let pid = child.id();
            rig.anchors.lock().expect("not poisoned").push(child);
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                let mut line = String::new();
                let _ = BufReader::new(stdout).read_line(&mut line);
                let mut err = String::new();
                if line.trim() != "ready" {
                    let _ = BufReader::new(stderr).read_to_string(&mut err);
                }
                let _ = tx.send((line, err));
            });
            pending.push(rx);
            rig.nodes.push(Node {
                index: k,
                name,
                addr: names::addr(id, k),
                netns: names::netns(id, k),
                pid,
                tmp,
                nsenter: nsenter.clone(),
            });
        }
        let deadline = Instant::now() + START_TIMEOUT;
        for (k, rx) in pending.into_iter().enumerate() {
            let wait = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok((line, _)) if line.trim() == "ready" => {}
                Ok((line, err)) => {
                    bail!("setting up node{k} failed: {} {}", line.trim(), err.trim())
                }
                Err(_) => bail!("node{k} not set up after {START_TIMEOUT:?}"),
            }
        }
        if opts.sshd {
            rig.start_sshd()?;
        }
        if opts.slurm {
            rig.start_slurm()?;
        }
        Ok(rig)
    }

    /// The rig id (0..256): the third octet of the subnet.
    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Node `k`; panics if there is none.
    pub fn node(&self, k: usize) -> &Node {
        &self.nodes[k]
    }

    /// `10.231.<id>.0/24`, e.g. for OpenMPI's `btl_tcp_if_include`.
    pub fn subnet(&self) -> String {
        names::subnet(self.id)
    }

    /// The bridge in the root namespace (every node's interface is `eth0`).
    pub fn bridge(&self) -> String {
        names::bridge(self.id)
    }

    /// The rig's working directory (same path on the host and in every node).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A directory visible at the same path on the host and in every node
    /// (world-writable), e.g. for checkpoint images.
    pub fn shared_dir(&self) -> PathBuf {
        self.dir.join("shared")
    }

    /// The hosts file bind-mounted on `/etc/hosts` in every node.
    pub fn hosts_file(&self) -> PathBuf {
        self.dir.join("hosts")
    }

    /// Node names joined by commas (`node0,node1`), e.g. for `mpiexec -hosts`.
    pub fn host_list(&self) -> String {
        self.nodes
            .iter()
            .map(Node::name)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Writes an OpenMPI hostfile (`nodeK slots=<slots>` per line) and returns its path.
    pub fn hostfile(&self, slots: usize) -> Result<PathBuf> {
        let path = self.dir.join("hostfile");
        let text: String = self
            .nodes
            .iter()
            .map(|n| format!("{} slots={slots}\n", n.name))
            .collect();
        fs::write(&path, text)?;
        Ok(path)
    }

    /// The ssh client configuration (exists once [`Rig::start_sshd`] ran):
    /// `ssh -F <it> node1 cmd` from any node logs in as root on node1.
    pub fn ssh_config(&self) -> PathBuf {
        self.dir.join("ssh/config")
    }

    /// `ssh -F <config> <node to>` run in node `from`; append the remote command.
    pub fn ssh(&self, from: usize, to: usize) -> Command {
        let mut cmd = self.node(from).command("ssh");
        cmd.arg("-F")
            .arg(self.ssh_config())
            .arg(self.node(to).name());
        cmd
    }

    /// Starts an sshd in every node (idempotent): it listens on the node's
    /// address, port 22 only, with a host key and an authorized client key the
    /// rig generates in `<dir>/ssh`; logs go to `<dir>/nodeK/sshd.log`. Fails
    /// if openssh-server or openssh-client is missing.
    pub fn start_sshd(&self) -> Result<()> {
        let mut running = self.sshd.lock().expect("not poisoned");
        if !running.is_empty() {
            return Ok(());
        }
        let sshd = sys::require_program("sshd", "openssh-server")?;
        let keygen = sys::require_program("ssh-keygen", "openssh-client")?;
        sys::require_program("ssh", "openssh-client")?;
        let ssh_dir = self.dir.join("ssh");
        fs::create_dir_all(&ssh_dir)?;
        let host_key = ssh_dir.join("host_key");
        let id_key = ssh_dir.join("id_ed25519");
        let keygens: Vec<Child> = [(&host_key, "testrig-host"), (&id_key, "testrig-client")]
            .into_iter()
            .map(|(key, comment)| {
                Command::new(&keygen)
                    .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
                    .arg(key)
                    .stdin(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
            })
            .collect::<Result<_, _>>()
            .context("running ssh-keygen")?;
        for k in keygens {
            let out = k.wait_with_output()?;
            if !out.status.success() {
                bail!(
                    "ssh-keygen failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        let authorized = ssh_dir.join("authorized_keys");
        fs::copy(id_key.with_extension("pub"), &authorized)?;
        fs::write(
            self.ssh_config(),
            format!(
                "# ssh client configuration of testrig rig {id}\n\
                 Host *\n  User root\n  Port {SSH_PORT}\n  IdentityFile {key}\n  IdentitiesOnly yes\n\
                 \x20 StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  GlobalKnownHostsFile /dev/null\n\
                 \x20 BatchMode yes\n  LogLevel ERROR\n  ConnectTimeout 10\n  AddressFamily inet\n\
                 \x20 ForwardAgent no\n  ForwardX11 no\n  ControlMaster no\n  ControlPath none\n",
                id = self.id,
                key = id_key.display()
            ),
        )?;
        if !self.private_dirs {
            // sshd's privilege separation directory; /run is the host's.
            fs::create_dir_all("/run/sshd")?;
        }
        for node in &self.nodes {
            let node_dir = self.dir.join(&node.name);
            let conf = node_dir.join("sshd_config");
            fs::write(
                &conf,
                format!(
                    "# sshd of testrig rig {id}, {name}\n\
                     ListenAddress {addr}:{SSH_PORT}\nAddressFamily inet\nHostKey {host_key}\nPidFile none\n\
                     AuthorizedKeysFile {authorized}\nPermitRootLogin prohibit-password\nPubkeyAuthentication yes\n\
                     PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nUseDNS no\n\
                     StrictModes no\nPrintMotd no\nPrintLastLog no\nX11Forwarding no\nPermitUserEnvironment no\n\
                     MaxStartups 1000\nMaxSessions 1000\nSubsystem sftp internal-sftp\n",
                    id = self.id,
                    name = node.name,
                    addr = node.addr,
                    host_key = host_key.display(),
                    authorized = authorized.display(),
                ),
            )?;
            let args = [
                OsStr::new("-D"),
                OsStr::new("-e"),
                OsStr::new("-f"),
                conf.as_os_str(),
            ];
            running.push(node.spawn_daemon(&sshd, args, &node_dir.join("sshd.log"))?);
        }
        let deadline = Instant::now() + START_TIMEOUT;
        for (node, child) in self.nodes.iter().zip(running.iter_mut()) {
            while !sys::is_listening(child.id(), node.addr, SSH_PORT) {
                let log = self.dir.join(&node.name).join("sshd.log");
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "sshd on {} exited ({status}): {}",
                        node.name,
                        fs::read_to_string(log).unwrap_or_default().trim()
                    );
                }
                if Instant::now() > deadline {
                    bail!(
                        "sshd on {} not listening after {START_TIMEOUT:?}: {}",
                        node.name,
                        fs::read_to_string(log).unwrap_or_default().trim()
                    );
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        Ok(())
    }

    /// Starts a SLURM cluster on the rig (idempotent): munged on every node
    /// (one key), slurmctld on node0, slurmd on every node, with a generated
    /// `slurm.conf` ([`slurm::slurm_conf`]) bind-mounted on `/etc/slurm` in
    /// the nodes; returns once `sinfo` shows every node idle in partition
    /// `rig`. Run SLURM's commands in a node (`node.command("srun")`): the
    /// host has no address on the rig's subnet. Needs private dirs, and the
    /// packages slurmctld, slurmd, slurm-client and munge. The daemons, their
    /// job steps and tasks are killed with the rig.
    pub fn start_slurm(&self) -> Result<()> {
        let mut running = self.slurm.lock().expect("not poisoned");
        if !running.is_empty() {
            return Ok(());
        }
        *running = slurm::start(self.id, &self.dir, &self.nodes, self.private_dirs)?;
        Ok(())
    }

    /// The files of the rig's SLURM cluster (`slurm.conf`, logs, state).
    pub fn slurm_paths(&self) -> slurm::SlurmPaths {
        slurm::SlurmPaths::new(&self.dir)
    }

    /// Shell-style `KEY=value` lines describing the rig.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut v = vec![
            ("TESTRIG_ID".to_string(), self.id.to_string()),
            ("TESTRIG_DIR".to_string(), self.dir.display().to_string()),
            (
                "TESTRIG_SHARED_DIR".to_string(),
                self.shared_dir().display().to_string(),
            ),
            ("TESTRIG_SUBNET".to_string(), self.subnet()),
            ("TESTRIG_BRIDGE".to_string(), self.bridge()),
            (
                "TESTRIG_HOSTS_FILE".to_string(),
                self.hosts_file().display().to_string(),
            ),
            ("TESTRIG_NODES".to_string(), self.host_list()),
        ];
        if !self.sshd.lock().expect("not poisoned").is_empty() {
            v.push((
                "TESTRIG_SSH_CONFIG".to_string(),
                self.ssh_config().display().to_string(),
            ));
        }
        if !self.slurm.lock().expect("not poisoned").is_empty() {
            v.push((
                "TESTRIG_SLURM_CONF".to_string(),
                self.slurm_paths().conf().display().to_string(),
            ));
        }
        for n in &self.nodes {
            let k = n.index;
            v.push((format!("TESTRIG_NODE{k}_ADDR"), n.addr.to_string()));
            v.push((format!("TESTRIG_NODE{k}_NETNS"), n.netns.clone()));
            v.push((format!("TESTRIG_NODE{k}_PID"), n.pid.to_string()));
        }
        v
    }

    /// Tears the rig down, reporting errors (dropping it does the same and
    /// prints them).
    pub fn down(mut self) -> Result<()> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<()> {
        let Some(lock) = self.lock.take() else {
            return Ok(());
        };
        let mut children: Vec<Child> = self.slurm.get_mut().map(std::mem::take).unwrap_or_default();
        children.extend(self.sshd.get_mut().map(std::mem::take).unwrap_or_default());
        children.extend(
            self.anchors
                .get_mut()
                .map(std::mem::take)
                .unwrap_or_default(),
        );
        for c in &mut children {
            let _ = c.kill();
        }
        let l = alloc::leftovers(self.id);
        let destroyed = alloc::destroy(&l.netns, &l.veths, &l.bridges);
        // Reaped only now: until the namespaces are gone the anchors' pids
        // cannot be reused, so a late `Node::command` fails instead of
        // entering some other process's namespaces.
        for c in &mut children {
            let _ = c.wait();
        }
        let removed = alloc::remove_dir(&self.dir);
        let released = alloc::release(self.id, lock);
        destroyed.and(removed).and(released)
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("testrig: tearing down rig {} failed: {e:#}", self.id);
        }
    }
}

/// Polls `check` every 50 ms until it returns Some, for a condition a test
/// waits for (a daemon's state, a job's output); fails after `timeout`.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `/tmp` paths to show in the nodes: the caller's and automatic ones
/// (`/tmp/X` holding the executable, the current directory, the cargo target
/// or manifest directory), without duplicates or nested ones.
fn shares(requested: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let tmp = Path::new("/tmp");
    let mut out: Vec<PathBuf> = Vec::new();
    for p in requested {
        let c = p
            .canonicalize()
            .with_context(|| format!("shared path {}", p.display()))?;
        if c.starts_with(tmp) && c != tmp {
            out.push(c);
        }
    }
    let auto = [
        std::env::current_exe().ok(),
        std::env::current_dir().ok(),
        std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from),
        std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from),
    ];
    for p in auto.into_iter().flatten() {
        let Ok(c) = p.canonicalize() else { continue };
        if let Ok(rel) = c.strip_prefix(tmp) {
            if let Some(first) = rel.components().next() {
                out.push(tmp.join(first));
            }
        }
    }
    let state = Path::new(names::STATE_DIR);
    out.retain(|p| !p.starts_with(state) && !state.starts_with(p));
    out.sort();
    out.dedup();
    let mut kept: Vec<PathBuf> = Vec::new();
    for p in out {
        if !kept.iter().any(|k| p.starts_with(k)) {
            kept.push(p);
        }
    }
    Ok(kept)
}
