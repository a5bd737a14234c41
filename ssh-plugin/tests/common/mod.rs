//! Multi-host checkpoint-kill-restart harness: a job launched on node0 of
//! a testrig rig (sshd on every node), its images in the rig's shared
//! directory, restarted with the generated dmtcp_restart_script.sh.
#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use testrig::Rig;

pub const TIMEOUT: Duration = Duration::from_secs(120);

/// Directory of the built tools and of this crate's programs.
pub fn bin_dir() -> PathBuf {
    let d = Path::new(env!("CARGO_BIN_EXE_dmtcp_ssh")).parent().unwrap().to_path_buf();
    for f in ["libdmtcp.so", "libdmtcp_ssh.so", "dmtcp_sshd", "dmtcp_launch", "dmtcp_restorer", "dmtcp_coordinator", "dmtcp_restart", "dmtcp_command"] {
        assert!(d.join(f).exists(), "{} missing: build the whole workspace first (cargo build --release --workspace)", d.join(f).display());
    }
    d
}

/// A rig of `n` nodes with sshd.
pub fn rig(n: usize) -> Rig {
    Rig::builder(n).sshd(true).up().expect("rig with sshd (needs root, iproute2, openssh-server)")
}

/// `ssh -F <rig config>`: the ssh command line prefix for scripts.
pub fn ssh(rig: &Rig) -> String {
    format!("ssh -F {}", rig.ssh_config().display())
}

/// Compile `tests/c/<name>.c` into the shared directory (seen by every node).
pub fn compile(rig: &Rig, name: &str, extra: &[&str]) -> PathBuf {
    let out = rig.shared_dir().join(name);
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c").join(format!("{name}.c"));
    let cc = if extra.contains(&"mpi") { "mpicc" } else { "cc" };
    let flags: Vec<&str> = extra.iter().copied().filter(|f| *f != "mpi").collect();
    let st = Command::new(cc).args(["-O2", "-Wall", "-o"]).arg(&out).arg(&src).args(flags).status().expect(cc);
    assert!(st.success(), "compiling {}", src.display());
    out
}

/// Run `script` (bash) on node `k` without the checkpointer; its stdout.
pub fn bare(rig: &Rig, k: usize, script: &str) -> String {
    let o = rig.node(k).command("bash").args(["-c", script]).stdin(Stdio::null()).output().expect("bash");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The images in `dir`.
pub fn images(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "dmtcp")).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// A job launched on node0 under a new coordinator.
pub struct Job<'a> {
    pub rig: &'a Rig,
    pub dir: PathBuf,
    pub ckpt: PathBuf,
    pub port: u16,
    proc: Option<Child>,
    restarts: u32,
}

impl<'a> Job<'a> {
    /// `dmtcp_launch` on node0 of `bash -c script`, stdout into out.txt
    /// (a regular file: after a restart it is written on at the saved
    /// offset, so it ends equal to a bare run's output when nothing is
    /// lost or duplicated).
    pub fn launch(rig: &'a Rig, name: &str, script: &str, launch_opts: &[&str]) -> Job<'a> {
        let bin = bin_dir();
        let dir = rig.shared_dir().join(format!("job-{name}"));
        let ckpt = dir.join("ckpt");
        std::fs::create_dir_all(&ckpt).unwrap();
        let port_file = dir.join("port");
        let mut c = rig.node(0).command(bin.join("dmtcp_launch"));
        c.args(["--new-coordinator", "-p", "0", "--port-file"])
            .arg(&port_file)
            .arg("--ckptdir")
            .arg(&ckpt)
            .args(launch_opts)
            .args(["bash", "-c", script])
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(File::create(dir.join("out.txt")).unwrap())
            .stderr(File::create(dir.join("err.txt")).unwrap());
        let proc = c.spawn().expect("dmtcp_launch");
        let deadline = Instant::now() + TIMEOUT;
        let port = loop {
            if let Some(p) = std::fs::read_to_string(&port_file).ok().and_then(|s| s.trim().parse().ok()) {
                break p;
            }
            assert!(Instant::now() < deadline, "no coordinator port in {}", port_file.display());
            std::thread::sleep(Duration::from_millis(20));
        };
        Job { rig, dir, ckpt, port, proc: Some(proc), restarts: 0 }
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(self.dir.join("out.txt")).unwrap_or_default()
    }

    pub fn diag(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        let out = self.output();
        let tail: String = out.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
        format!(
            "\n--- out.txt tail (newest first): {tail}\n--- err.txt:\n{}\n--- restart.err:\n{}\n--- restart.out:\n{}\n--- status:\n{}\n--- list:\n{}",
            read("err.txt"),
            read("restart.err"),
            read("restart.out"),
            String::from_utf8_lossy(&self.command(&["-s"]).stdout),
            String::from_utf8_lossy(&self.command(&["-l"]).stdout)
        )
    }

    /// Wait until out.txt contains `pat`.
    pub fn wait_for(&self, pat: &str) {
        let deadline = Instant::now() + TIMEOUT;
        while !self.output().contains(pat) {
            assert!(Instant::now() < deadline, "timed out waiting for {pat:?}{}", self.diag());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `dmtcp_command` against the job's coordinator (run on node0).
    pub fn command(&self, args: &[&str]) -> Output {
        self.rig
            .node(0)
            .command(bin_dir().join("dmtcp_command"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("dmtcp_command")
    }

    /// (program, host) of every process, from `dmtcp_command --json -l`.
    pub fn processes(&self) -> Vec<(String, String, i64)> {
        let o = self.command(&["--json", "-l"]);
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        // A small scan of the JSON objects (no JSON dependency here).
        let mut out = Vec::new();
        for obj in text.split('{').skip(1) {
            let field = |k: &str| -> Option<String> {
                let i = obj.find(&format!("\"{k}\""))? + k.len() + 2;
                let rest = obj[i..].trim_start().strip_prefix(':')?.trim_start();
                Some(if let Some(s) = rest.strip_prefix('"') { s[..s.find('"')?].to_string() } else { rest.split([',', '}']).next()?.trim().to_string() })
            };
            if let (Some(p), Some(h), Some(pid)) = (field("program"), field("hostname"), field("pid")) {
                out.push((p, h, pid.parse().unwrap_or(0)));
            }
        }
        out
    }

    /// Wait until the coordinator counts `n` processes, all running.
    pub fn wait_peers(&self, n: usize) {
        self.wait_peers_where(|k| k == n, &format!("{n}"));
    }

    /// Wait until the coordinator counts at least `n` processes, all running.
    pub fn wait_peers_at_least(&self, n: usize) {
        self.wait_peers_where(|k| k >= n, &format!(">= {n}"));
    }

    fn wait_peers_where(&self, ok: impl Fn(usize) -> bool, what: &str) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let o = self.command(&["-s"]);
            let s = String::from_utf8_lossy(&o.stdout).into_owned();
            let peers = s.lines().find_map(|l| l.trim().strip_prefix("NUM_PEERS=")).and_then(|v| v.parse().ok());
            if peers.is_some_and(&ok) && s.contains("RUNNING=yes") {
                return;
            }
            let n = what;
            assert!(Instant::now() < deadline, "never {n} processes running: {s}{}", self.diag());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Blocking checkpoint; asserts success.
    pub fn checkpoint(&self) {
        let o = self.command(&["-bc"]);
        assert!(o.status.success(), "dmtcp_command -bc failed: {}{}", String::from_utf8_lossy(&o.stderr), self.diag());
    }

    /// Kill every process of the job on every host (the coordinator's
    /// kill) and wait until the coordinator is gone with the last one.
    pub fn kill(&mut self) {
        let _ = self.command(&["-k"]);
        let deadline = Instant::now() + TIMEOUT;
        while self.command(&["-s"]).status.code() != Some(2) {
            assert!(Instant::now() < deadline, "the job did not go after kill{}", self.diag());
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(mut p) = self.proc.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }

    /// Run the generated restart script on node0 (with `args`), the other
    /// hosts reached through the rig's ssh configuration.
    pub fn restart(&mut self, args: &[&str]) {
        let script = self.ckpt.join("dmtcp_restart_script.sh");
        assert!(script.exists(), "no restart script{}", self.diag());
        let mut c = self.rig.node(0).command("bash");
        c.arg(&script)
            .args(args)
            .env("DMTCP_RSH", ssh(self.rig))
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(File::create(self.dir.join("restart.out")).unwrap())
            .stderr(File::create(self.dir.join("restart.err")).unwrap());
        self.proc = Some(c.spawn().expect("restart script"));
        self.restarts += 1;
    }

    /// Wait for the launched bash (or the restart script) to end.
    pub fn finish(&mut self) {
        let Some(mut p) = self.proc.take() else { return };
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(st) = p.try_wait().unwrap() {
                assert!(st.success() || self.restarts > 0, "job ended with {st}{}", self.diag());
                return;
            }
            if Instant::now() > deadline {
                let _ = p.kill();
                panic!("job did not end{}", self.diag());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Job<'_> {
    fn drop(&mut self) {
        if self.proc.is_some() {
            let _ = self.command(&["-k"]);
            if let Some(mut p) = self.proc.take() {
                let _ = p.kill();
                let _ = p.wait();
            }
        }
    }
}
