//! What the integration-test harnesses of every package share (each
//! package's `tests/common/mod.rs` builds its own `Job` on these): where
//! the built tools are, a fresh directory per test, C test programs
//! compiled once per run, a free port, and waiting for a child with a
//! deadline.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// target/<profile>, where the workspace's tools and libraries are (the
/// running test binary is in its `deps/`), after checking that every file
/// of `need` is there: a missing one fails the test with how to build it.
pub fn bin_dir(need: &[&str]) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let d = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>")
        .to_path_buf();
    for f in need {
        assert!(
            d.join(f).exists(),
            "{} missing: build the whole workspace first (cargo build --release --workspace)",
            d.join(f).display()
        );
    }
    d
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A new empty directory `<prefix>-<pid>-<n>` under `root` (a test's
/// `CARGO_TARGET_TMPDIR`): unique within the run and across runs.
pub fn fresh_dir(root: &Path, prefix: &str) -> PathBuf {
    let dir = root.join(format!(
        "{prefix}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a test directory");
    dir
}

/// Compile the C file `src` into `out` with `cc`, `args` after the
/// sources (flags, libraries); fails the test if it does not compile.
pub fn compile_c(src: &Path, out: &Path, args: &[&str]) {
    let st = Command::new("cc")
        .args(["-g", "-Wall", "-o"])
        .arg(out)
        .arg(src)
        .args(args)
        .status()
        .expect("cc");
    assert!(st.success(), "compiling {}", src.display());
}

/// `<src_dir>/<name>.c` compiled (-O0, threads) into `<out_root>/cbin-<pid>/
/// <name>` once per test run, however many tests ask; the binary's path.
pub fn c_program_once(src_dir: &Path, out_root: &Path, name: &str) -> PathBuf {
    static BUILT: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    let out = out_root
        .join(format!("cbin-{}", std::process::id()))
        .join(name);
    if !built.contains(&out) {
        std::fs::create_dir_all(out.parent().expect("cbin dir")).expect("cbin dir");
        compile_c(
            &src_dir.join(format!("{name}.c")),
            &out,
            &["-O0", "-pthread"],
        );
        built.push(out.clone());
    }
    out
}

/// A TCP port nobody on this machine listens on (now).
pub fn unused_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Wait for `c` to exit, at most `t`; None (and `c` left running) if it
/// did not.
pub fn wait_timeout(c: &mut Child, t: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + t;
    loop {
        if let Ok(Some(s)) = c.try_wait() {
            return Some(s);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// [`wait_timeout`], but a child still running at the deadline is shown
/// to `late` (to report what it was doing) and then killed.
pub fn wait_or_kill(c: &mut Child, t: Duration, late: impl FnOnce(&Child)) -> Option<ExitStatus> {
    let s = wait_timeout(c, t);
    if s.is_none() {
        late(c);
        let _ = c.kill();
        let _ = c.wait();
    }
    s
}
