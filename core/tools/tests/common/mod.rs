//! Checkpoint-kill-restart test harness, shared by every integration test.
//!
//! Each [`Job`] owns a private directory and its own coordinator on a free
//! port, so tests run in parallel. Programs run with their stdout in a
//! regular file opened without O_APPEND: after a restart the engine reopens
//! it at the saved offset, so the file ends up equal to a bare run's output
//! when the restart is right.
#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub mod stuck;
#[allow(unused_imports)]
pub use stuck::descendants;

pub const TIMEOUT: Duration = Duration::from_secs(90);

/// Directory of the built tools (the same profile as this test).
pub fn bin_dir() -> PathBuf {
    dmtcp_testkit::bin_dir(&[
        "libdmtcp.so",
        "dmtcp_restorer",
        "dmtcp_coordinator",
        "dmtcp_restart",
        "dmtcp_command",
    ])
}

pub fn tool(name: &str) -> Command {
    Command::new(bin_dir().join(name))
}

fn tmp_root() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

/// Compile `tests/c/<name>.c` once per test run; returns the binary path.
pub fn c_program(name: &str) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c");
    dmtcp_testkit::c_program_once(&src, &tmp_root(), name)
}

#[allow(unused_imports)]
pub use dmtcp_testkit::unused_port;

/// A new empty directory `<prefix>-<pid>-<n>` under the tests' temporary
/// directory.
pub fn fresh_dir(prefix: &str) -> PathBuf {
    dmtcp_testkit::fresh_dir(&tmp_root(), prefix)
}

/// The port a coordinator wrote to its `--port-file`, once it has.
pub fn read_port_file(file: &Path) -> u16 {
    read_port_file_within(file, TIMEOUT)
}

/// [`read_port_file`], failing after `limit`.
pub fn read_port_file_within(file: &Path, limit: Duration) -> u16 {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(p) = std::fs::read_to_string(file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            return p;
        }
        assert!(Instant::now() < deadline, "coordinator did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Run `args` without the checkpointer in a fresh directory; returns stdout.
pub fn run_bare(args: &[&str]) -> String {
    let dir = fresh_dir("bare");
    let out = Command::new(args[0])
        .args(&args[1..])
        .current_dir(&dir)
        .stderr(Stdio::inherit())
        .output()
        .expect("bare run");
    assert!(
        out.status.success(),
        "bare run of {args:?} failed: {:?}",
        out.status
    );
    let _ = std::fs::remove_dir_all(&dir);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One job under test: a directory, a coordinator, the launched program.
pub struct Job {
    pub dir: PathBuf,
    pub ckpt: PathBuf,
    pub port: u16,
    coord: Child,
    pub proc: Option<Child>,
    extra_env: Vec<(String, String)>,
    /// The running process is a `dmtcp_restart` (not a launched program).
    restarted: bool,
}

/// A raw connection to the coordinator at `port` on this machine whose
/// challenge is read: (the stream, the `auth` answer for its Hello, made
/// with the secret the coordinator wrote for this user).
pub fn raw_connect(port: u16) -> (std::net::TcpStream, String) {
    use std::os::fd::AsRawFd;
    let s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let auth = dmtcp_common::auth::answer_challenge(s.as_raw_fd(), "test", || {
        dmtcp_common::auth::find(None, "localhost", port)
    })
    .expect("answer the coordinator's challenge");
    (s, auth)
}

/// Start `dmtcp_coordinator` for a job in `dir` on `port` (0: any) with
/// `args`; its port.
fn start_coordinator(dir: &Path, port: u16, args: &[&str]) -> (Child, u16) {
    let port_file = dir.join("port");
    let _ = std::fs::remove_file(&port_file);
    let coord = tool("dmtcp_coordinator")
        .args(["-q", "-p", &port.to_string(), "--port-file"])
        .arg(&port_file)
        .args(args)
        .stdin(Stdio::null())
        .stdout(File::create(dir.join("coord.log")).unwrap())
        .stderr(File::create(dir.join("coord.err")).unwrap())
        .spawn()
        .expect("start coordinator");
    let port = read_port_file(&port_file);
    (coord, port)
}

impl Job {
    pub fn new(name: &str) -> Job {
        Job::with_coordinator_args(name, &[])
    }

    /// A job whose coordinator gets `args` too.
    pub fn with_coordinator_args(name: &str, args: &[&str]) -> Job {
        let dir = fresh_dir(&format!("job-{name}"));
        let ckpt = dir.join("ckpt");
        std::fs::create_dir_all(&ckpt).unwrap();
        let (coord, port) = start_coordinator(&dir, 0, args);
        Job {
            dir,
            ckpt,
            port,
            coord,
            proc: None,
            extra_env: Vec::new(),
            restarted: false,
        }
    }

    /// SIGKILL the coordinator (the job's processes go on without it).
    pub fn kill_coordinator(&mut self) {
        let _ = self.coord.kill();
        let _ = self.coord.wait();
    }

    /// A new coordinator on the job's port, after [`Job::kill_coordinator`].
    pub fn new_coordinator(&mut self, args: &[&str]) {
        let (coord, port) = start_coordinator(&self.dir, self.port, args);
        assert_eq!(port, self.port);
        self.coord = coord;
    }

    pub fn env(mut self, k: &str, v: &str) -> Job {
        self.extra_env.push((k.into(), v.into()));
        self
    }

    pub fn out_path(&self) -> PathBuf {
        self.dir.join("out.txt")
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(self.out_path()).unwrap_or_default()
    }

    pub fn diag(&self) -> String {
        let r = |f: &str| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        format!(
            "\n--- out.txt\n{}\n--- err.txt\n{}\n--- restart.err\n{}\n--- coord.err\n{}",
            r("out.txt"),
            r("err.txt"),
            r("restart.err"),
            r("coord.err")
        )
    }

    /// `name` (`dmtcp_launch` or `dmtcp_restart`) joined to this job's
    /// coordinator, run in the job's directory; `dmtcp_launch` writes its
    /// images into the job's checkpoint directory.
    pub fn joined(&self, name: &str) -> Command {
        let mut c = tool(name);
        c.args(["-j", "-h", "127.0.0.1", "-p", &self.port.to_string()]);
        if name == "dmtcp_launch" {
            c.arg("--ckptdir").arg(&self.ckpt);
        }
        c.current_dir(&self.dir);
        c
    }

    /// `dmtcp_launch -j` the program, stdout to out.txt.
    pub fn launch(&mut self, args: &[&str], launch_opts: &[&str]) {
        let mut c = self.joined("dmtcp_launch");
        c.args(launch_opts)
            .args(args)
            .stdin(Stdio::null())
            .stdout(File::create(self.out_path()).unwrap())
            .stderr(File::create(self.dir.join("err.txt")).unwrap());
        for (k, v) in &self.extra_env {
            c.env(k, v);
        }
        // A process group of its own, so kill() reaches its children too.
        std::os::unix::process::CommandExt::process_group(&mut c, 0);
        self.proc = Some(c.spawn().expect("dmtcp_launch"));
        self.restarted = false;
    }

    /// As [`Job::launch`], with the program's stdout and stderr one file,
    /// out.txt (`>out.txt 2>&1`).
    pub fn launch_one_log(&mut self, args: &[&str]) {
        let out = File::create(self.out_path()).unwrap();
        let mut c = self.joined("dmtcp_launch");
        c.args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        for (k, v) in &self.extra_env {
            c.env(k, v);
        }
        std::os::unix::process::CommandExt::process_group(&mut c, 0);
        self.proc = Some(c.spawn().expect("dmtcp_launch"));
        self.restarted = false;
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

    pub fn command(&self, args: &[&str]) -> std::process::Output {
        tool("dmtcp_command")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("dmtcp_command")
    }

    /// Wait until the coordinator lists `peers` processes, all running
    /// (after a restart, before the next command).
    pub fn wait_running(&self, peers: usize) {
        let want = format!("NUM_PEERS={peers}");
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let s = String::from_utf8_lossy(&self.command(&["-s"]).stdout).into_owned();
            if s.lines().any(|l| l.trim() == want) && s.contains("RUNNING=yes") {
                return;
            }
            assert!(Instant::now() < deadline, "not running: {s}{}", self.diag());
            std::thread::sleep(Duration::from_millis(50));
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

    /// Checkpoint then kill (`-kc`); waits for the process to go.
    pub fn checkpoint_and_kill(&mut self) {
        let o = self.command(&["-kc"]);
        assert!(
            o.status.success(),
            "dmtcp_command -kc failed: {}{}",
            String::from_utf8_lossy(&o.stderr),
            self.diag()
        );
        if let Some(mut p) = self.proc.take() {
            wait_timeout(&mut p, TIMEOUT).expect("process did not exit after -kc");
        }
    }

    /// SIGKILL the whole job, as a crash or a preemption would, and wait
    /// until the coordinator has seen every process go. A restarted job
    /// dies with its `dmtcp_restart` (the pid namespace goes with it); a
    /// launched one is killed by process group and by the pids the
    /// coordinator lists (processes that left the group).
    pub fn kill(&mut self) {
        let Some(mut p) = self.proc.take() else {
            return;
        };
        if !self.restarted {
            // The group first, in one call: killed one by one, a survivor
            // could still run and see the others die (a client writing
            // "connection closed" to its output before its own SIGKILL),
            // which no crash of the whole job would show.
            // SAFETY: signalling the job's process group.
            unsafe { libc::kill(-(p.id() as i32), libc::SIGKILL) };
            for pid in self.peer_pids() {
                // SAFETY: signalling a process of our own job.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        // SAFETY: signalling our own child.
        unsafe { libc::kill(p.id() as i32, libc::SIGKILL) };
        let _ = p.wait();
        let deadline = Instant::now() + TIMEOUT;
        while !self.peer_pids().is_empty() {
            assert!(
                Instant::now() < deadline,
                "the job's processes did not go after SIGKILL{}",
                self.diag()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Pids of the processes the coordinator knows (as they see themselves).
    pub fn peer_pids(&self) -> Vec<i32> {
        let o = self.command(&["--json", "-l"]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        v["peers"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| p["pid"].as_i64().map(|x| x as i32))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn images(&self) -> Vec<PathBuf> {
        images_in(&self.ckpt)
    }

    /// Start `dmtcp_restart` of all images (or with `args` instead).
    pub fn restart_with(&mut self, args: &[String]) {
        let mut c = self.joined("dmtcp_restart");
        c.args(args)
            .stdin(Stdio::null())
            .stdout(File::create(self.dir.join("restart.out")).unwrap())
            .stderr(File::create(self.dir.join("restart.err")).unwrap());
        for (k, v) in &self.extra_env {
            c.env(k, v);
        }
        self.proc = Some(c.spawn().expect("dmtcp_restart"));
        self.restarted = true;
    }

    pub fn restart(&mut self) {
        let imgs: Vec<String> = self
            .images()
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        assert!(
            !imgs.is_empty(),
            "no images in {}{}",
            self.ckpt.display(),
            self.diag()
        );
        self.restart_with(&imgs);
    }

    /// Wait for the current process to exit successfully (on a timeout,
    /// say where every thread of the job sits).
    pub fn wait_success(&mut self) {
        let mut p = self.proc.take().expect("no running process");
        let mut stuck = String::new();
        let st = wait_timeout_then(&mut p, TIMEOUT, |c| {
            stuck = stuck::stuck_report_of(&[c.id() as i32])
        });
        if st.is_none() {
            eprintln!("{stuck}");
        }
        match st {
            Some(s) if s.success() => {}
            other => panic!("process ended with {other:?}{}", self.diag()),
        }
    }

    /// The whole cycle: wait for `mark`, checkpoint, let it run on to
    /// `after`, SIGKILL, restart from the images, wait for the end.
    pub fn cycle(&mut self, mark: &str, after: &str) {
        self.wait_for(mark);
        self.checkpoint();
        self.wait_for(after);
        self.kill();
        self.restart();
    }
}

/// Run `args` bare, then under checkpoint control with a
/// checkpoint-kill-restart cycle at each (mark, after) pair of out.txt
/// marks (see [`Job::cycle`]); the output must equal the bare run's.
/// Returns it.
pub fn cycles_match_bare(
    name: &str,
    args: &[&str],
    launch_opts: &[&str],
    marks: &[(&str, &str)],
) -> String {
    let bare = run_bare(args);
    let mut job = Job::new(name);
    job.launch(args, launch_opts);
    for (mark, after) in marks {
        job.cycle(mark, after);
    }
    job.wait_success();
    assert_eq!(
        job.output(),
        bare,
        "{name}: output after restarts differs from a bare run"
    );
    bare
}

/// Committed generation directories in `dir`: (number, path), by number.
pub fn committed(dir: &Path) -> Vec<(u32, PathBuf)> {
    dmtcp_common::generation::list(dir)
        .into_iter()
        .filter(|f| !f.partial)
        .map(|f| (f.generation, f.path))
        .collect()
}

pub fn images_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.retain(|p| {
        let n = p.file_name().unwrap().to_string_lossy();
        n.starts_with("ckpt_") && n.ends_with(".dmtcp")
    });
    v.sort();
    v
}

/// Wait for a child with a deadline (kills it on timeout).
pub fn wait_timeout(c: &mut Child, t: Duration) -> Option<ExitStatus> {
    wait_timeout_then(c, t, |_| {})
}

/// [`wait_timeout`], calling `late` on the child before it is killed.
pub use dmtcp_testkit::wait_or_kill as wait_timeout_then;

impl Drop for Job {
    fn drop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
        let _ = self.command(&["-k"]);
        let _ = self.coord.kill();
        let _ = self.coord.wait();
        // The killed coordinator could not remove its secret file.
        let _ = std::fs::remove_file(dmtcp_common::auth::default_path(
            &dmtcp_common::hostname(),
            self.port,
        ));
        // The job's directory (images of up to a few GiB) goes with a test
        // that passed; a failed one keeps it to be looked at, and so does
        // every test with DMTCP_TEST_KEEP set.
        if !std::thread::panicking() && std::env::var_os("DMTCP_TEST_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
