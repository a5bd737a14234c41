//! Multi-host checkpoint-kill-restart harness: a job launched on node0 of
//! a testrig rig (sshd on every node), its images in the rig's shared
//! directory, restarted with the generated dmtcp_restart_script.sh.
#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use testrig::Rig;

#[path = "../../../core/tools/tests/common/stuck.rs"]
pub mod stuck;

pub const TIMEOUT: Duration = Duration::from_secs(120);

/// `c`'s output, or, when it has not ended within `limit`, a killed
/// status (SIGKILL) with a line on stderr saying so: no step of a test
/// waits without bound (a hang fails the test, with the job's threads in
/// its message, instead of stalling the suite).
pub fn output_within(c: &mut Command, limit: Duration) -> Output {
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{c:?}: {e}"));
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let o = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let e = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let mut stderr = format!("{c:?}: no end within {limit:?}\n").into_bytes();
            // Its pipes may be held by processes it started: not waited for.
            if e.is_finished() {
                stderr.extend(e.join().unwrap_or_default());
            }
            return Output {
                // The wait status of a process killed by SIGKILL (9).
                status: ExitStatusExt::from_raw(9),
                stdout: Vec::new(),
                stderr,
            };
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: o.join().unwrap_or_default(),
        stderr: e.join().unwrap_or_default(),
    }
}

/// Directory of the built tools and programs (target/<profile>; the
/// test binary runs from its deps/). The MPI suite's multi-node tests use
/// this harness too.
pub fn bin_dir() -> PathBuf {
    dmtcp_testkit::bin_dir(&[
        "libdmtcp.so",
        "libdmtcp_ssh.so",
        "dmtcp_sshd",
        "dmtcp_launch",
        "dmtcp_restorer",
        "dmtcp_coordinator",
        "dmtcp_restart",
        "dmtcp_command",
    ])
}

/// A rig of `n` nodes with sshd.
pub fn rig(n: usize) -> Rig {
    Rig::builder(n)
        .sshd(true)
        .up()
        .expect("rig with sshd (needs root, iproute2, openssh-server)")
}

/// `ssh -F <rig config>`: the ssh command line prefix for scripts.
pub fn ssh(rig: &Rig) -> String {
    format!("ssh -F {}", rig.ssh_config().display())
}

/// Compile `tests/c/<name>.c` into the shared directory (seen by every node).
pub fn compile(rig: &Rig, name: &str, extra: &[&str]) -> PathBuf {
    let out = rig.shared_dir().join(name);
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/c")
        .join(format!("{name}.c"));
    let cc = if extra.contains(&"mpi") {
        "mpicc"
    } else {
        "cc"
    };
    let flags: Vec<&str> = extra.iter().copied().filter(|f| *f != "mpi").collect();
    let st = Command::new(cc)
        .args(["-O2", "-Wall", "-o"])
        .arg(&out)
        .arg(&src)
        .args(flags)
        .status()
        .expect(cc);
    assert!(st.success(), "compiling {}", src.display());
    out
}

/// Run `script` (bash) on node `k` without the checkpointer; its stdout.
pub fn bare(rig: &Rig, k: usize, script: &str) -> String {
    // Into a file, so a run that does not end shows how far it got.
    let out = rig.shared_dir().join(format!(
        "bare-{}.out",
        SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let o = output_within(
        rig.node(k)
            .command("bash")
            .args(["-c", &format!("exec >{}; {script}", out.display())])
            .stdin(Stdio::null()),
        TIMEOUT,
    );
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    if o.status.code().is_none() {
        hold_if_asked();
        let tail: Vec<&str> = text.lines().rev().take(5).collect();
        panic!(
            "bare run: {}\n--- its output, newest first: {}\n{}",
            String::from_utf8_lossy(&o.stderr),
            tail.join(" | "),
            stuck::stuck_report_of(&[std::process::id() as i32])
        );
    }
    text
}

static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// For a look at a failed job while it is still there:
/// RIG_HOLD_ON_FAILURE=<seconds> keeps it (and the rig) that long before
/// the test fails.
fn hold_if_asked() {
    if let Some(secs) = std::env::var("RIG_HOLD_ON_FAILURE")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        eprintln!("holding the failed job for {secs} s (RIG_HOLD_ON_FAILURE)");
        std::thread::sleep(Duration::from_secs(secs));
    }
}

/// The images in `dir`.
pub fn images(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "dmtcp"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// How many of `procs` (as [`Job::processes`] lists them) run `prog` on `host`.
pub fn count(procs: &[(String, String, i64)], prog: &str, host: &str) -> usize {
    procs
        .iter()
        .filter(|(p, h, _)| p == prog && h == host)
        .count()
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
            if let Some(p) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                break p;
            }
            assert!(
                Instant::now() < deadline,
                "no coordinator port in {}",
                port_file.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        Job {
            rig,
            dir,
            ckpt,
            port,
            proc: Some(proc),
            restarts: 0,
        }
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(self.dir.join("out.txt")).unwrap_or_default()
    }

    pub fn diag(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        let out = self.output();
        let tail: String = out.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
        // The job's processes: those with the checkpointer loaded (restored
        // ones are not this test's descendants), and what they started.
        let job: Vec<i32> = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
            .filter(|p| {
                std::fs::read_to_string(format!("/proc/{p}/maps"))
                    .is_ok_and(|m| m.contains("libdmtcp.so"))
            })
            .collect();
        hold_if_asked();
        // Their fds, and what each epoll instance watches.
        let fds: String = job
            .iter()
            .map(|p| {
                let mut line = format!("--- fds of {p}:");
                let mut list: Vec<(i32, String)> = std::fs::read_dir(format!("/proc/{p}/fd"))
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter_map(|e| {
                        let n = e.file_name().to_string_lossy().parse().ok()?;
                        let t = std::fs::read_link(e.path()).ok()?;
                        Some((n, t.display().to_string()))
                    })
                    .collect();
                list.sort();
                for (n, t) in list {
                    line.push_str(&format!(" {n}={t}"));
                    if t.contains("eventpoll") {
                        let info = std::fs::read_to_string(format!("/proc/{p}/fdinfo/{n}"))
                            .unwrap_or_default();
                        let watched: Vec<&str> = info
                            .lines()
                            .filter_map(|l| l.strip_prefix("tfd:"))
                            .map(|l| l.split_whitespace().next().unwrap_or(""))
                            .collect();
                        line.push_str(&format!("(watches {})", watched.join(",")));
                    }
                }
                line.push('\n');
                line
            })
            .collect();
        // Sockets of every host, with their queues.
        let sockets: String = (0..self.rig.nodes().len())
            .map(|k| {
                let o = output_within(
                    self.rig
                        .node(k)
                        .command("ss")
                        .args(["-tanxp"])
                        .stdin(Stdio::null()),
                    Duration::from_secs(10),
                );
                format!(
                    "--- sockets of node{k}:\n{}",
                    String::from_utf8_lossy(&o.stdout)
                )
            })
            .collect();
        format!(
            "\n--- out.txt tail (newest first): {tail}\n--- err.txt:\n{}\n--- restart.err:\n{}\n--- restart.out:\n{}\n--- status:\n{}\n--- list:\n{}\n{}{}{}",
            read("err.txt"),
            read("restart.err"),
            read("restart.out"),
            String::from_utf8_lossy(&self.command(&["-s"]).stdout),
            String::from_utf8_lossy(&self.command(&["-l"]).stdout),
            fds,
            sockets,
            stuck::stuck_report_with_stacks(&job, 16)
        )
    }

    /// Wait until out.txt contains `pat`.
    pub fn wait_for(&self, pat: &str) {
        let deadline = Instant::now() + TIMEOUT;
        while !self.output().contains(pat) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {pat:?}{}",
                self.diag()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `dmtcp_command` against the job's coordinator (run on node0).
    pub fn command(&self, args: &[&str]) -> Output {
        output_within(
            self.rig
                .node(0)
                .command(bin_dir().join("dmtcp_command"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
                .args(args)
                .stdin(Stdio::null()),
            TIMEOUT,
        )
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
                Some(if let Some(s) = rest.strip_prefix('"') {
                    s[..s.find('"')?].to_string()
                } else {
                    rest.split([',', '}']).next()?.trim().to_string()
                })
            };
            if let (Some(p), Some(h), Some(pid)) =
                (field("program"), field("hostname"), field("pid"))
            {
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
            let peers = s
                .lines()
                .find_map(|l| l.trim().strip_prefix("NUM_PEERS="))
                .and_then(|v| v.parse().ok());
            if peers.is_some_and(&ok) && s.contains("RUNNING=yes") {
                return;
            }
            let n = what;
            assert!(
                Instant::now() < deadline,
                "never {n} processes running: {s}{}",
                self.diag()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Blocking checkpoint; asserts success.
    pub fn checkpoint(&self) {
        let o = self.command(&["-bc"]);
        assert!(
            o.status.success(),
            "dmtcp_command -bc failed: {}{}",
            String::from_utf8_lossy(&o.stderr),
            self.diag()
        );
    }

    /// Kill every process of the job on every host (the coordinator's
    /// kill) and wait until the coordinator is gone with the last one.
    pub fn kill(&mut self) {
        let _ = self.command(&["-k"]);
        self.wait_gone("after kill");
        if let Some(mut p) = self.proc.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }

    /// Wait until the coordinator is gone with the job's last process
    /// (`dmtcp_command` finds none: exit code 2); `when` is for the message.
    pub fn wait_gone(&self, when: &str) {
        let deadline = Instant::now() + TIMEOUT;
        while self.command(&["-s"]).status.code() != Some(2) {
            assert!(
                Instant::now() < deadline,
                "the job did not go {when}{}",
                self.diag()
            );
            std::thread::sleep(Duration::from_millis(20));
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

    /// Wait at most `limit` for the launched bash (or the restart script)
    /// to end: true once it ended (checked as [`Job::finish`] does), false
    /// if it still runs (it is left running).
    pub fn ended_within(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let done = match self.proc.as_mut() {
                None => return true,
                Some(p) => p.try_wait().unwrap().is_some(),
            };
            if done {
                self.finish();
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait for the launched bash (or the restart script) to end.
    pub fn finish(&mut self) {
        let Some(mut p) = self.proc.take() else {
            return;
        };
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(st) = p.try_wait().unwrap() {
                assert!(
                    st.success() || self.restarts > 0,
                    "job ended with {st}{}",
                    self.diag()
                );
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
