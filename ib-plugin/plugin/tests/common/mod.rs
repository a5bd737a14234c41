//! Harness for verbs programs under `dmtcp_launch --ib` on the software
//! device: a private softib service (killed and started again between a
//! checkpoint and the restart, so every device id changes), a private
//! coordinator, and the programs' output in files.
#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const TIMEOUT: Duration = Duration::from_secs(240);

/// target/release (or debug): where the workspace's binaries are.
pub fn bin_dir() -> PathBuf {
    dmtcp_testkit::bin_dir(&[
        "libdmtcp.so",
        "libdmtcp_ib.so",
        "dmtcp_launch",
        "dmtcp_restart",
        "dmtcp_coordinator",
        "dmtcp_command",
        "softib",
    ])
}

fn tool(name: &str) -> Command {
    Command::new(bin_dir().join(name))
}

pub use dmtcp_testkit::unused_port as free_port;

pub use dmtcp_testkit::wait_timeout;

pub struct Job {
    pub dir: PathBuf,
    pub ckpt: PathBuf,
    pub port: u16,
    coord: Child,
    /// The coordinator's address as the processes reach it.
    host: String,
    /// The device service of each node.
    services: Vec<Option<Child>>,
    pub procs: Vec<(String, Child)>,
    /// Start time of each launched process (by pid), taken at launch: its
    /// process group is killed only while it is that process.
    starts: std::collections::HashMap<u32, Option<u64>>,
    /// The node each launched process runs on.
    node_of: Vec<usize>,
    /// The `dmtcp_restart` of each node.
    restarts: Vec<Child>,
    /// Several nodes (network namespaces sharing a fabric directory).
    rig: Option<testrig::Rig>,
    /// Launch with `--ib` (the default).
    pub ib: bool,
    /// More `dmtcp_launch` options (`--forked-ckpt`, ...).
    pub launch_opts: Vec<String>,
    /// More environment of the launched processes.
    pub launch_env: Vec<(String, String)>,
    /// HCAs of each node's device service (`softib daemon --devices`).
    devices: u32,
    /// Extra environment of the device services (`SOFTIB_RKEYS`, ...).
    service_env: Vec<(String, String)>,
}

impl Job {
    pub fn new(name: &str) -> Job {
        Job::build(name, 1, 1, &[])
    }

    /// A job on one node whose device service has `devices` HCAs
    /// (softib0, softib1, ...; each one port with its own LID).
    pub fn with_devices(name: &str, devices: u32) -> Job {
        Job::build(name, 1, devices, &[])
    }

    /// The same, the device service started with `env` set.
    pub fn with_devices_env(name: &str, devices: u32, env: &[(&str, &str)]) -> Job {
        Job::build(name, 1, devices, env)
    }

    /// A job over `n` nodes of a test rig, each with its own device service.
    pub fn nodes(name: &str, n: usize) -> Job {
        Job::build(name, n, 1, &[])
    }

    fn cmd_on(&self, node: usize, prog: impl AsRef<std::ffi::OsStr>) -> Command {
        match &self.rig {
            None => Command::new(prog),
            Some(r) => {
                // Processes on the other nodes answer the coordinator's
                // challenge with the secret in the job's directory, which
                // every node sees (docs/security.md).
                let mut c = r.node(node).command(prog);
                c.env("DMTCP_SECRET_FILE", self.dir.join("secret"));
                c
            }
        }
    }

    /// The softib environment of node `k`.
    fn softib_env(&self, c: &mut Command) {
        c.env_remove("SOFTIB_SOCKET");
        match &self.rig {
            None => {
                c.env("SOFTIB_DIR", self.softib_dir())
                    .env_remove("SOFTIB_FABRIC");
            }
            Some(r) => {
                c.env("SOFTIB_FABRIC", r.shared_dir().join("fabric"))
                    .env_remove("SOFTIB_DIR");
            }
        }
    }

    fn build(name: &str, nodes: usize, devices: u32, service_env: &[(&str, &str)]) -> Job {
        let rig = (nodes > 1).then(|| {
            let r = testrig::Rig::up(nodes).expect("test rig (needs root, iproute2, util-linux)");
            std::fs::create_dir_all(r.shared_dir().join("fabric")).unwrap();
            r
        });
        let dir = dmtcp_testkit::fresh_dir(
            Path::new(env!("CARGO_TARGET_TMPDIR")),
            &format!("ib-{name}"),
        );
        let ckpt = dir.join("ckpt");
        std::fs::create_dir_all(&ckpt).unwrap();
        let port_file = dir.join("port");
        let mut coord = match &rig {
            None => tool("dmtcp_coordinator"),
            Some(r) => r.node(0).command(bin_dir().join("dmtcp_coordinator")),
        };
        if rig.is_some() {
            coord.arg("--secret-file").arg(dir.join("secret"));
        }
        let coord = coord
            .args(["-q", "-p", "0", "--port-file"])
            .arg(&port_file)
            .stdin(Stdio::null())
            .stdout(File::create(dir.join("coord.log")).unwrap())
            .stderr(File::create(dir.join("coord.err")).unwrap())
            .spawn()
            .expect("start coordinator");
        let deadline = Instant::now() + TIMEOUT;
        let port = loop {
            if let Some(p) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                break p;
            }
            assert!(Instant::now() < deadline, "coordinator did not start");
            std::thread::sleep(Duration::from_millis(10));
        };
        let host = rig
            .as_ref()
            .map(|r| r.node(0).addr().to_string())
            .unwrap_or_else(|| "127.0.0.1".into());
        let mut j = Job {
            dir,
            ckpt,
            port,
            coord,
            host,
            services: Vec::new(),
            procs: Vec::new(),
            starts: std::collections::HashMap::new(),
            node_of: Vec::new(),
            restarts: Vec::new(),
            rig,
            ib: true,
            launch_opts: Vec::new(),
            launch_env: Vec::new(),
            devices,
            service_env: service_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        for k in 0..nodes {
            std::fs::create_dir_all(j.ckpt_of(k)).unwrap();
            j.services.push(None);
            j.start_service(k);
        }
        j
    }

    fn ckpt_of(&self, node: usize) -> PathBuf {
        self.ckpt.join(format!("node{node}"))
    }

    /// Where the server listens, as the client names it.
    pub fn server_addr(&self) -> String {
        self.rig
            .as_ref()
            .map(|r| r.node(0).addr().to_string())
            .unwrap_or_else(|| "127.0.0.1".into())
    }

    fn softib_dir(&self) -> PathBuf {
        self.dir.join("softib")
    }

    /// `softib status` of this job's service: its device lines (LID, GUID).
    pub fn device_status(&self, node: usize) -> Option<String> {
        let mut c = self.cmd_on(node, bin_dir().join("softib"));
        c.arg("status");
        self.softib_env(&mut c);
        let o = c.output().ok()?;
        if !o.status.success() {
            return None;
        }
        let devs: Vec<String> = String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| l.starts_with("softib") && l.contains(": lid"))
            .map(str::to_string)
            .collect();
        (!devs.is_empty()).then(|| devs.join("\n"))
    }

    fn start_service(&mut self, node: usize) {
        let mut c = self.cmd_on(node, bin_dir().join("softib"));
        c.args(["daemon", "--idle-exit", "0", "--devices"])
            .arg(self.devices.to_string())
            .envs(self.service_env.iter().map(|(k, v)| (k, v)));
        self.softib_env(&mut c);
        let c = c
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                File::options()
                    .create(true)
                    .append(true)
                    .open(self.dir.join("softibd.err"))
                    .unwrap(),
            )
            .spawn()
            .expect("softib daemon");
        self.services[node] = Some(c);
        let deadline = Instant::now() + TIMEOUT;
        while self.device_status(node).is_none() {
            assert!(Instant::now() < deadline, "softib service did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the device service and starts a new one: every LID, GUID, QP
    /// number and key is new. Asserts the device changed.
    pub fn restart_service(&mut self) {
        for k in 0..self.services.len() {
            let before = self.device_status(k);
            if let Some(mut s) = self.services[k].take() {
                // SAFETY: SIGTERM to the service this job started.
                unsafe { libc::kill(s.id() as i32, libc::SIGTERM) };
                s.wait().unwrap();
            }
            self.start_service(k);
            let after = self.device_status(k).unwrap_or_default();
            let before = before.unwrap_or_default();
            assert_eq!(
                before.lines().count(),
                after.lines().count(),
                "the new service has other devices:\n{before}\n{after}"
            );
            for l in before.lines() {
                assert!(
                    !after.lines().any(|a| a == l),
                    "the new service has the same device ids: {l}"
                );
            }
        }
    }

    /// Runs `softib exec -- dmtcp_launch --ib prog args` as process `name`.
    pub fn launch(&mut self, name: &str, prog: &str, args: &[&str]) -> u32 {
        self.launch_on(0, name, prog, args)
    }

    pub fn launch_on(&mut self, node: usize, name: &str, prog: &str, args: &[&str]) -> u32 {
        let mut c = self.cmd_on(node, bin_dir().join("softib"));
        self.softib_env(&mut c);
        c.arg("exec")
            .arg("--")
            .arg(bin_dir().join("dmtcp_launch"))
            .args([
                "-j",
                "-h",
                &self.host,
                "-p",
                &self.port.to_string(),
                "--ckptdir",
            ])
            .arg(self.ckpt_of(node))
            .args(self.ib.then_some("--ib"))
            .args(&self.launch_opts)
            .arg(prog)
            .args(args)
            .env("DMTCP_IB_DEBUG", "1")
            .envs(self.launch_env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(File::create(self.dir.join(format!("{name}.out"))).unwrap())
            .stderr(File::create(self.dir.join(format!("{name}.err"))).unwrap());
        std::os::unix::process::CommandExt::process_group(&mut c, 0);
        let ch = c.spawn().expect("launch");
        let pid = ch.id();
        self.starts.insert(pid, proc_start(pid));
        self.procs.push((name.to_string(), ch));
        self.node_of.push(node);
        pid
    }

    pub fn read(&self, f: &str) -> String {
        std::fs::read_to_string(self.dir.join(f)).unwrap_or_default()
    }

    pub fn diag(&self) -> String {
        let mut s = String::new();
        for (n, _) in &self.procs {
            s += &format!(
                "\n--- {n}.out\n{}\n--- {n}.err\n{}",
                self.read(&format!("{n}.out")),
                self.read(&format!("{n}.err"))
            );
        }
        s += &format!(
            "\n--- restart0.err\n{}\n--- softibd.err\n{}",
            self.read("restart0.err"),
            self.read("softibd.err")
        );
        s
    }

    /// Waits until `pid` listens on TCP `port` (a pingpong server ready).
    pub fn wait_listening(&mut self, pid: u32, port: u16) {
        let deadline = Instant::now() + TIMEOUT;
        while !testrig::is_listening_on_port(pid, port) {
            assert!(
                self.all_running(),
                "a process exited before listening{}",
                self.diag()
            );
            assert!(
                Instant::now() < deadline,
                "no listener on {port}{}",
                self.diag()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `pid` no longer listens on `port` (the server accepted
    /// its client and closed its listener: the QPs are connected).
    pub fn wait_not_listening(&mut self, pid: u32, port: u16) {
        let deadline = Instant::now() + TIMEOUT;
        while testrig::is_listening_on_port(pid, port) {
            assert!(
                Instant::now() < deadline,
                "server still listening on {port}{}",
                self.diag()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until process `name`'s stderr contains `pat` (the plugin's
    /// debug lines are written unbuffered).
    pub fn wait_err(&mut self, name: &str, pat: &str) {
        self.wait_in(&format!("{name}.err"), pat)
    }

    /// Waits for `pat` in the standard output of process `name`.
    pub fn wait_out(&mut self, name: &str, pat: &str) {
        self.wait_in(&format!("{name}.out"), pat)
    }

    fn wait_in(&mut self, file: &str, pat: &str) {
        let deadline = Instant::now() + TIMEOUT;
        while !self.read(file).contains(pat) {
            assert!(
                self.all_running(),
                "a process exited before '{pat}'{}",
                self.diag()
            );
            assert!(
                Instant::now() < deadline,
                "{file}: no '{pat}'{}",
                self.diag()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The launched processes, or after a restart the restarted ones, all run.
    pub fn all_running(&mut self) -> bool {
        if !self.restarts.is_empty() {
            return self
                .restarts
                .iter_mut()
                .all(|r| r.try_wait().unwrap().is_none());
        }
        self.procs
            .iter_mut()
            .all(|(_, c)| c.try_wait().unwrap().is_none())
    }

    /// Waits until the coordinator sees `n` processes, all running (a
    /// restart is complete).
    pub fn wait_running(&mut self, n: usize) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let s = String::from_utf8_lossy(&self.command(&["-s"]).stdout).to_string();
            if s.contains(&format!("NUM_PEERS={n}")) && s.contains("RUNNING=yes") {
                return;
            }
            assert!(
                self.all_running(),
                "the computation ended before running again{}",
                self.diag()
            );
            assert!(Instant::now() < deadline, "not running: {s}{}", self.diag());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Launches server and client of a verbs test program (`args` without
    /// the TCP port, which is added) and waits until both QPs are
    /// connected (the server's in RTR, the client's in RTS): the traffic
    /// runs from there.
    pub fn pair(&mut self, prog: &str, args: &[&str]) {
        let port = free_port().to_string();
        let mut a: Vec<&str> = args.to_vec();
        a.extend_from_slice(&["-p", &port]);
        let server = self.launch_on(0, "server", prog, &a);
        self.wait_listening(server, port.parse().unwrap());
        let addr = self.server_addr();
        a.push(&addr);
        let client_node = if self.rig.is_some() { 1 } else { 0 };
        self.launch_on(client_node, "client", prog, &a);
        self.wait_err("server", "(RTR)");
        self.wait_err("client", "(RTS)");
    }

    /// Checkpoint, kill everything, restart the device service, restart.
    pub fn cycle(&mut self) {
        self.checkpoint();
        self.kill();
        self.restart_service();
        self.restart();
    }

    pub fn command(&self, args: &[&str]) -> std::process::Output {
        self.cmd_on(0, bin_dir().join("dmtcp_command"))
            .args(["-h", &self.host, "-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("dmtcp_command")
    }

    /// A blocking checkpoint, taken while every process still runs.
    pub fn checkpoint(&mut self) {
        assert!(
            self.all_running(),
            "a process ended before the checkpoint (run too short?){}",
            self.diag()
        );
        let o = self.command(&["-bc"]);
        assert!(
            o.status.success(),
            "dmtcp_command -bc failed: {}{}",
            String::from_utf8_lossy(&o.stderr),
            self.diag()
        );
        assert!(
            self.all_running(),
            "a process ended during the checkpoint{}",
            self.diag()
        );
    }

    /// SIGKILLs every launched process (by process group).
    pub fn kill(&mut self) {
        for mut r in self.restarts.drain(..) {
            // The restarted processes live in its pid namespace.
            let _ = r.kill();
            let _ = r.wait();
        }
        for (_, c) in &mut self.procs {
            kill_group_of(c.id(), self.starts.get(&c.id()).copied().flatten());
            let _ = c.wait();
        }
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let o = self.command(&["-s"]);
            let s = String::from_utf8_lossy(&o.stdout).to_string();
            if s.contains("NUM_PEERS=0") || !s.contains("NUM_PEERS") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "processes did not leave the coordinator: {s}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn images(&self, node: usize) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.ckpt_of(node))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "dmtcp"))
            .collect();
        v.sort();
        v
    }

    /// `dmtcp_restart` of every image, on the node it was taken on.
    pub fn restart(&mut self) {
        for k in 0..self.services.len() {
            let imgs = self.images(k);
            assert!(!imgs.is_empty(), "no images of node {k}{}", self.diag());
            let c = self
                .cmd_on(k, bin_dir().join("dmtcp_restart"))
                .args(["-j", "-h", &self.host, "-p", &self.port.to_string()])
                .args(&imgs)
                .current_dir(&self.dir)
                .stdin(Stdio::null())
                .stdout(File::create(self.dir.join(format!("restart{k}.out"))).unwrap())
                .stderr(File::create(self.dir.join(format!("restart{k}.err"))).unwrap())
                .spawn()
                .expect("dmtcp_restart");
            self.restarts.push(c);
        }
    }

    /// Waits for the restarted computation (or, without a restart, every
    /// launched process) to exit successfully.
    pub fn wait_success(&mut self) {
        let t = TIMEOUT;
        if !self.restarts.is_empty() {
            for i in 0..self.restarts.len() {
                let st = wait_timeout(&mut self.restarts[i], t);
                if !st.is_some_and(|s| s.success()) {
                    panic!("restarted computation ended with {st:?}{}", self.diag());
                }
            }
            // Gone with the restarts' namespaces.
            self.restarts.clear();
            self.procs.clear();
            return;
        }
        for i in 0..self.procs.len() {
            let st = wait_timeout(&mut self.procs[i].1, t);
            if !st.is_some_and(|s| s.success()) {
                panic!("{} ended with {st:?}{}", self.procs[i].0, self.diag());
            }
        }
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        for (_, c) in &mut self.procs {
            kill_group_of(c.id(), self.starts.get(&c.id()).copied().flatten());
            let _ = c.wait();
        }
        for mut r in self.restarts.drain(..) {
            let _ = r.kill();
            let _ = r.wait();
        }
        for s in &mut self.services {
            if let Some(mut s) = s.take() {
                let _ = s.kill();
                let _ = s.wait();
            }
        }
        let _ = self.coord.kill();
        let _ = self.coord.wait();
    }
}

/// What a pingpong run must print: the iteration count, no validation or
/// completion error.
pub fn check_pingpong(out: &str, err: &str, iters: u32, what: &str) {
    assert!(
        out.contains(&format!("{iters} iters in")),
        "{what}: no '{iters} iters in' line:\n{out}\n{err}"
    );
    for bad in ["invalid data", "Failed", "failed", "Couldn't"] {
        assert!(
            !out.contains(bad) && !err.contains(bad),
            "{what}: '{bad}' in the output:\n{out}\n{err}"
        );
    }
}

/// The QPs were re-created with new numbers: the plugin's debug lines
/// "publish QP <lid>/<virtual> -> <real>" show a real number that differs.
pub fn check_ids_changed(err: &str, what: &str) {
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("publish QP")).collect();
    assert!(
        !lines.is_empty(),
        "{what}: the plugin published no QP at restart:\n{err}"
    );
    for l in lines {
        let (v, r) = l.rsplit_once(" -> ").unwrap();
        let v = v.rsplit_once('/').unwrap().1;
        assert_ne!(
            v.trim(),
            r.trim(),
            "{what}: QP number unchanged after the service restart: {l}"
        );
    }
}

/// Compiles the test program `tests/c/<name>.c` (with libibverbs) into
/// the job's directory; returns its path.
pub fn compile_c(j: &Job, name: &str) -> String {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/c/{name}.c"));
    let bin = j.dir.join(name);
    dmtcp_testkit::compile_c(&src, &bin, &["-O2", "-libverbs"]);
    path_of(&bin)
}

pub fn path_of(p: &Path) -> String {
    p.display().to_string()
}

pub use testrig::procs::{kill_group_of, proc_start};
