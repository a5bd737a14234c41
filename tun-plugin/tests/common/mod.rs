//! Harness of the tun plugin's tests: a job in fresh network namespaces
//! (the nodes of a test rig), with its own coordinator on node 0,
//! programs launched under `dmtcp_launch` (the tun plugin is on by
//! default), their output in files, checkpoints, kills and restarts on
//! the node the job is "at" (node 0 unless moved).
#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const TIMEOUT: Duration = Duration::from_secs(60);

/// target/release (or debug): where the workspace's binaries are.
pub fn bin_dir() -> PathBuf {
    dmtcp_testkit::bin_dir(&[
        "libdmtcp.so",
        "libdmtcp_tun.so",
        "dmtcp_launch",
        "dmtcp_restart",
        "dmtcp_coordinator",
        "dmtcp_command",
    ])
}

pub use dmtcp_testkit::wait_timeout;

pub struct Job {
    pub dir: PathBuf,
    pub ckpt: PathBuf,
    port: u16,
    coord: Child,
    pub procs: Vec<(String, Child)>,
    /// Start time of each launched process (by pid), taken at launch: its
    /// process group is killed only while it is that process.
    starts: std::collections::HashMap<u32, Option<u64>>,
    restart: Option<Child>,
    rig: testrig::Rig,
    /// The coordinator's address as the processes reach it.
    host: String,
    /// The node programs, restarts and `sh` run on.
    pub at: usize,
    /// Extra `dmtcp_launch` options.
    pub launch_opts: Vec<String>,
}

impl Job {
    pub fn new(name: &str) -> Job {
        Job::on_nodes(name, 1)
    }

    /// A job over `n` nodes (network namespaces joined by a bridge).
    pub fn on_nodes(name: &str, n: usize) -> Job {
        let rig = testrig::Rig::up(n).expect("test rig (needs root, iproute2, util-linux)");
        let dir = dmtcp_testkit::fresh_dir(
            Path::new(env!("CARGO_TARGET_TMPDIR")),
            &format!("tun-{name}"),
        );
        let ckpt = dir.join("ckpt");
        std::fs::create_dir_all(&ckpt).unwrap();
        let port_file = dir.join("port");
        let coord = rig
            .node(0)
            .command(bin_dir().join("dmtcp_coordinator"))
            .args(["-q", "-p", "0", "--port-file"])
            .arg(&port_file)
            .arg("--secret-file")
            .arg(dir.join("secret"))
            .current_dir(&dir)
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
        // Node 0's address where there are others to reach it.
        let host = if n > 1 {
            rig.node(0).addr().to_string()
        } else {
            "127.0.0.1".into()
        };
        Job {
            dir,
            ckpt,
            port,
            coord,
            procs: Vec::new(),
            starts: std::collections::HashMap::new(),
            restart: None,
            rig,
            host,
            at: 0,
            launch_opts: Vec::new(),
        }
    }

    /// `prog` on the job's current node, in its directory; the secret
    /// for the coordinator's challenge is in that directory, which every
    /// node sees.
    fn cmd(&self, prog: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = self.rig.node(self.at).command(prog);
        c.current_dir(&self.dir)
            .env("DMTCP_SECRET_FILE", self.dir.join("secret"));
        c
    }

    /// `sh -c script` in the job's network namespace; its stdout.
    pub fn sh(&self, script: &str) -> String {
        let o = self
            .cmd("/bin/sh")
            .args(["-c", script])
            .output()
            .expect("sh");
        assert!(
            o.status.success(),
            "{script}: {}{}",
            String::from_utf8_lossy(&o.stderr),
            self.diag()
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Launches `prog args` under dmtcp_launch as process `name`.
    pub fn launch(&mut self, name: &str, prog: &str, args: &[&str]) {
        let mut c = self.cmd(bin_dir().join("dmtcp_launch"));
        c.args([
            "-j",
            "-h",
            &self.host,
            "-p",
            &self.port.to_string(),
            "--ckptdir",
        ])
        .arg(&self.ckpt)
        .args(&self.launch_opts)
        .arg(prog)
        .args(args)
        .env("DMTCP_TUN_DEBUG", "1")
        .stdin(Stdio::null())
        .stdout(File::create(self.dir.join(format!("{name}.out"))).unwrap())
        .stderr(File::create(self.dir.join(format!("{name}.err"))).unwrap());
        std::os::unix::process::CommandExt::process_group(&mut c, 0);
        let ch = c.spawn().expect("launch");
        self.starts.insert(ch.id(), proc_start(ch.id()));
        self.procs.push((name.to_string(), ch));
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
        s += &format!("\n--- restart.err\n{}", self.read("restart.err"));
        s
    }

    /// How the launched processes and the restart ended, if they did.
    pub fn ended(&mut self) -> String {
        let mut s = String::new();
        if let Some(r) = &mut self.restart {
            s += &format!("\nrestart: {:?}", r.try_wait());
        }
        for (n, c) in &mut self.procs {
            s += &format!("\n{n}: {:?}", c.try_wait());
        }
        s
    }

    /// The launched processes, or after a restart the restart, all run.
    pub fn all_running(&mut self) -> bool {
        if let Some(r) = &mut self.restart {
            return r.try_wait().unwrap().is_none();
        }
        self.procs
            .iter_mut()
            .all(|(_, c)| c.try_wait().unwrap().is_none())
    }

    /// Waits for `pat` in `file` (a program's output).
    pub fn wait_in(&mut self, file: &str, pat: &str) {
        self.wait_for(file, &format!("'{pat}' in {file}"), |o| o.contains(pat));
    }

    /// Waits until `f(file's contents)` holds.
    pub fn wait_for(&mut self, file: &str, what: &str, f: impl Fn(&str) -> bool) {
        self.until(what, |j| f(&j.read(file)));
    }

    /// Waits until `done` holds, while the computation runs.
    fn until(&mut self, what: &str, done: impl Fn(&Job) -> bool) {
        let deadline = Instant::now() + TIMEOUT;
        while !done(self) {
            if !self.all_running() {
                panic!(
                    "a process exited before {what}{}{}",
                    self.ended(),
                    self.diag()
                );
            }
            assert!(Instant::now() < deadline, "no {what}{}", self.diag());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn command(&self, args: &[&str]) -> std::process::Output {
        self.cmd(bin_dir().join("dmtcp_command"))
            .args(["-h", &self.host, "-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("dmtcp_command")
    }

    /// Waits until the coordinator sees `n` processes, all running.
    pub fn wait_running(&mut self, n: usize) {
        let want = format!("NUM_PEERS={n}");
        self.until(&format!("{n} processes running"), |j| {
            let s = String::from_utf8_lossy(&j.command(&["-s"]).stdout).to_string();
            s.contains(&want) && s.contains("RUNNING=yes")
        });
    }

    /// A blocking checkpoint.
    pub fn checkpoint(&mut self) {
        assert!(self.all_running(), "a process ended early{}", self.diag());
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

    /// SIGKILLs the computation and waits until the coordinator has no
    /// process left.
    pub fn kill(&mut self) {
        if let Some(mut r) = self.restart.take() {
            let _ = r.kill();
            let _ = r.wait();
        }
        for (_, c) in &mut self.procs {
            kill_group_of(c.id(), self.starts.get(&c.id()).copied().flatten());
            let _ = c.wait();
        }
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let s = String::from_utf8_lossy(&self.command(&["-s"]).stdout).to_string();
            if s.contains("NUM_PEERS=0") || !s.contains("NUM_PEERS") {
                break;
            }
            assert!(Instant::now() < deadline, "processes did not leave: {s}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn images(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&self.ckpt)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "dmtcp"))
            .collect();
        v.sort();
        v
    }

    /// `dmtcp_restart` of every image.
    pub fn restart(&mut self) {
        let imgs = self.images();
        assert!(!imgs.is_empty(), "no images{}", self.diag());
        let c = self
            .cmd(bin_dir().join("dmtcp_restart"))
            .args(["-j", "-h", &self.host, "-p", &self.port.to_string()])
            .args(&imgs)
            .stdin(Stdio::null())
            .stdout(File::create(self.dir.join("restart.out")).unwrap())
            .stderr(File::create(self.dir.join("restart.err")).unwrap())
            .spawn()
            .expect("dmtcp_restart");
        self.restart = Some(c);
    }

    /// Waits for the restart to end; its exit status.
    pub fn wait_restart(&mut self) -> Option<ExitStatus> {
        let r = self.restart.as_mut().expect("no restart");
        let st = wait_timeout(r, TIMEOUT);
        self.restart = None;
        st
    }

    /// Waits for every launched process (no restart) to end successfully.
    pub fn wait_success(&mut self) {
        if self.restart.is_some() {
            let st = self.wait_restart();
            assert!(
                st.is_some_and(|s| s.success()),
                "restarted computation ended with {st:?}{}",
                self.diag()
            );
            return;
        }
        for i in 0..self.procs.len() {
            let st = wait_timeout(&mut self.procs[i].1, TIMEOUT);
            assert!(
                st.is_some_and(|s| s.success()),
                "{} ended with {st:?}{}",
                self.procs[i].0,
                self.diag()
            );
        }
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        for (_, c) in &mut self.procs {
            kill_group_of(c.id(), self.starts.get(&c.id()).copied().flatten());
            let _ = c.wait();
        }
        if let Some(mut r) = self.restart.take() {
            let _ = r.kill();
            let _ = r.wait();
        }
        let _ = self.coord.kill();
        let _ = self.coord.wait();
    }
}

/// Compiles `tests/c/<name>.c` into the job's directory; returns its path.
pub fn compile_c(j: &Job, name: &str) -> String {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/c/{name}.c"));
    let bin = j.dir.join(name);
    dmtcp_testkit::compile_c(&src, &bin, &["-O2"]);
    bin.display().to_string()
}

/// The last "key N" number of the last line of `out` that has `key`.
pub fn last_num(out: &str, key: &str) -> Option<i64> {
    let l = out
        .lines()
        .rev()
        .find(|l| l.contains(&format!(" {key} ")) || l.starts_with(&format!("{key} ")))?;
    let mut it = l.split_whitespace();
    while let Some(w) = it.next() {
        if w == key {
            return it.next()?.parse().ok();
        }
    }
    None
}

pub use testrig::procs::{kill_group_of, proc_start};
