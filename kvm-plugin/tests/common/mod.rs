//! Harness for programs that run KVM guests under `dmtcp_launch --kvm`: a
//! private coordinator per job, the program's output in a file (restored
//! at its offset after a restart, so it ends up equal to a bare run's
//! output when nothing was lost or repeated), checkpoint, SIGKILL, restart.
#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const TIMEOUT: Duration = Duration::from_secs(180);

/// target/release (or debug): where the workspace's binaries are.
pub fn bin_dir() -> PathBuf {
    dmtcp_testkit::bin_dir(&[
        "libdmtcp.so",
        "libdmtcp_kvm.so",
        "dmtcp_launch",
        "dmtcp_restart",
        "dmtcp_coordinator",
        "dmtcp_command",
    ])
}

pub fn tool(name: &str) -> Command {
    Command::new(bin_dir().join(name))
}

fn tmp_root() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

/// Can this machine run KVM guests (/dev/kvm opens, KVM_CREATE_VM works)?
/// A machine that cannot fails the tests with the reason: CI and the
/// developers' machines have /dev/kvm, and a test that passes without
/// testing would hide its loss.
pub fn kvm_usable() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        // SAFETY: open/ioctl/close on our own fds.
        unsafe {
            let fd = libc::open(c"/dev/kvm".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
            if fd < 0 {
                panic!(
                    "no usable /dev/kvm ({}): the KVM tests need it",
                    std::io::Error::last_os_error()
                );
            }
            // KVM_CREATE_VM
            let vm = libc::ioctl(fd, 0xae01, 0);
            libc::close(fd);
            if vm < 0 {
                panic!(
                    "KVM_CREATE_VM fails here ({}): the KVM tests need it",
                    std::io::Error::last_os_error()
                );
            }
            libc::close(vm);
            true
        }
    })
}

/// Compile `tests/c/<name>.c` once per test run; the binary's path.
pub fn c_program(name: &str) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c");
    dmtcp_testkit::c_program_once(&src, &tmp_root(), name)
}

/// A new empty directory under the tests' temporary directory.
pub fn fresh_dir(prefix: &str) -> PathBuf {
    dmtcp_testkit::fresh_dir(&tmp_root(), &format!("kvm-{prefix}"))
}

/// Run `args` without the checkpointer; its stdout.
pub fn run_bare(args: &[&str]) -> String {
    let dir = fresh_dir("bare");
    let out = Command::new(args[0])
        .args(&args[1..])
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .expect("bare run");
    assert!(
        out.status.success(),
        "bare run of {args:?}: {:?}",
        out.status
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub use dmtcp_testkit::wait_timeout;

/// One job: a directory, a coordinator, the launched or restarted program.
pub struct Job {
    pub dir: PathBuf,
    pub ckpt: PathBuf,
    pub port: u16,
    coord: Child,
    pub proc: Option<Child>,
    env: Vec<(String, String)>,
    restarted: bool,
}

impl Job {
    pub fn new(name: &str) -> Job {
        let dir = fresh_dir(name);
        let ckpt = dir.join("ckpt");
        std::fs::create_dir_all(&ckpt).unwrap();
        let port_file = dir.join("port");
        let coord = tool("dmtcp_coordinator")
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
        Job {
            dir,
            ckpt,
            port,
            coord,
            proc: None,
            env: Vec::new(),
            restarted: false,
        }
    }

    pub fn env(mut self, k: &str, v: &str) -> Job {
        self.env.push((k.into(), v.into()));
        self
    }

    pub fn out_path(&self) -> PathBuf {
        self.dir.join("out.txt")
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(self.out_path()).unwrap_or_default()
    }

    pub fn read(&self, f: &str) -> String {
        std::fs::read_to_string(self.dir.join(f)).unwrap_or_default()
    }

    pub fn diag(&self) -> String {
        format!(
            "\n--- out.txt\n{}\n--- err.txt\n{}\n--- restart.err\n{}\n--- coord.err\n{}",
            self.read("out.txt"),
            self.read("err.txt"),
            self.read("restart.err"),
            self.read("coord.err")
        )
    }

    fn joined(&self, name: &str) -> Command {
        let mut c = tool(name);
        c.args(["-j", "-h", "127.0.0.1", "-p", &self.port.to_string()]);
        if name == "dmtcp_launch" {
            c.arg("--ckptdir").arg(&self.ckpt);
        }
        c.current_dir(&self.dir);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    /// `dmtcp_launch -j <opts> <args>`, stdout to out.txt, stderr to err.txt.
    pub fn launch(&mut self, args: &[&str], opts: &[&str]) {
        let mut c = self.joined("dmtcp_launch");
        c.args(opts)
            .args(args)
            .stdin(Stdio::null())
            .stdout(File::create(self.out_path()).unwrap())
            .stderr(File::create(self.dir.join("err.txt")).unwrap());
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

    /// A checkpoint that must fail; what dmtcp_command said.
    pub fn checkpoint_fails(&self) -> String {
        let o = self.command(&["-bc"]);
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            !o.status.success(),
            "dmtcp_command -bc succeeded: {said}{}",
            self.diag()
        );
        said
    }

    /// Pids the coordinator knows.
    fn peer_pids(&self) -> Vec<i32> {
        let o = self.command(&["--json", "-l"]);
        let s = String::from_utf8_lossy(&o.stdout);
        // "pid": N entries (no JSON parser needed for this).
        s.match_indices("\"pid\":")
            .filter_map(|(i, _)| {
                s[i + 6..]
                    .trim_start()
                    .split(|c: char| !c.is_ascii_digit())
                    .next()
                    .and_then(|n| n.parse().ok())
            })
            .collect()
    }

    /// SIGKILL the job and wait until the coordinator has seen it go.
    pub fn kill(&mut self) {
        let Some(mut p) = self.proc.take() else {
            return;
        };
        if !self.restarted {
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
                "the job did not go after SIGKILL{}",
                self.diag()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The newest committed images.
    pub fn images(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.ckpt)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                let n = p.file_name().unwrap().to_string_lossy().into_owned();
                n.starts_with("ckpt_") && n.ends_with(".dmtcp")
            })
            .map(|p| p.display().to_string())
            .collect();
        v.sort();
        v
    }

    /// `dmtcp_restart` of the images.
    pub fn restart(&mut self) {
        let imgs = self.images();
        assert!(!imgs.is_empty(), "no images{}", self.diag());
        let mut c = self.joined("dmtcp_restart");
        c.args(&imgs)
            .stdin(Stdio::null())
            .stdout(File::create(self.dir.join("restart.out")).unwrap())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.dir.join("restart.err"))
                    .unwrap(),
            );
        self.proc = Some(c.spawn().expect("dmtcp_restart"));
        self.restarted = true;
    }

    /// Wait for the running process to end successfully.
    pub fn wait_success(&mut self) {
        let mut p = self.proc.take().expect("no running process");
        match wait_timeout(&mut p, TIMEOUT) {
            Some(s) if s.success() => {}
            other => {
                let _ = p.kill();
                panic!("process ended with {other:?}{}", self.diag())
            }
        }
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            if !self.restarted {
                // SAFETY: the job's process group.
                unsafe { libc::kill(-(p.id() as i32), libc::SIGKILL) };
            }
            let _ = p.kill();
            let _ = p.wait();
        }
        let _ = self.coord.kill();
        let _ = self.coord.wait();
    }
}
