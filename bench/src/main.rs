//! Checkpoint/restart benchmark.
//!
//! `cargo run --release -p bench -- run [--sizes 1,4] [--kinds random,zero,untouched]
//!  (also: compressible)
//!  [--modes zstd,raw] [--dir DIR]` launches a workload process holding the
//! given amount of memory under dmtcp_launch, checkpoints it (blocking),
//! kills it, restarts it, and prints a table: checkpoint and restart seconds,
//! image bytes, GB/s, next to a raw O_DIRECT write of the same number of bytes
//! to the same directory, and plots checkpoint and restart time against the
//! size (`--plots DIR`, default bench/plots). The workload is this same
//! binary (`workload`).
//!
//! `cargo run --release -p bench -- overhead [--runs 5] [--scale 1]
//!  [--startup-runs 30]` measures the run-time cost of the preload library:
//! per-call time of open/close, getpid, malloc/free, pthread_create/join
//! and fork/exit/wait (bench/c/overhead.c, compiled with cc -O2) bare and
//! under dmtcp_launch, and the start-up time of /bin/true, medians of
//! several runs, next to the targets of issue 3, and plots the ratios
//! (overhead.svg in `--plots DIR`, default bench/plots).
//!
//! `cargo run --release -p bench -- softib [--iters N] [--sizes ...]` runs
//! perftest on the software InfiniBand device (ib-plugin/softib), on one
//! node and across two nodes of the test rig.
//!
//! `cargo run --release -p bench -- ibqps [--qps 10,100,1000] [--runs 3] [--pause-us 0]`
//! times what the InfiniBand plugin adds to a checkpoint (the drain) and
//! a restart (re-creating and reconnecting) with N QPs (see ibqps.rs).
//!
//! `cargo run --release -p bench -- scale [--peers 4096] [--rounds 3]
//!  [--real 256]` times the coordinator with many simulated peers and
//! with many real processes (see scale.rs).
//!
//! `cargo run --release -p bench -- soak [--cycles 500] [--restarts 50]`
//! checkpoints and restarts a 4-process job many times (see soak.rs).
//!
//! `cargo run --release -p bench -- parallel [--procs 8] [--mib 512]
//!  [--dmtcp DIR]` checkpoints N processes of one computation at once and
//! compares the aggregate write bandwidth with N raw O_DIRECT writers of
//! the same bytes (see parallel.rs).
//!
//! `cargo run --release -p bench -- mpi [--ranks 2,4,8] [--runs 3]
//!  [--per-node K] [--dmtcp DIR]` times the Jacobi program of mpi-tests
//! bare, under this project and under DMTCP: run-time overhead, and
//! checkpoint and restart per rank count (see mpi.rs); with `--per-node`
//! on test-rig nodes, K ranks on each.
//!
//! `cargo run --release -p bench -- incremental [--mib 1024] [--percent 10]`
//! times a full checkpoint and an incremental one after 10 % of the
//! memory changed, and restart of both (see incremental.rs).
//!
//! `cargo run --release -p bench -- peers [--sizes 1,4] [--dmtcp DIR]
//!  [--criu] [--host-memory touched|as-is]` runs the same workload under
//! this project, DMTCP (an install at DIR) and CRIU, side by side in one
//! run (see peers.rs).

mod ibqps;
mod incremental;
mod mpi;
mod parallel;
mod peers;
mod scale;
mod soak;
mod softib;
mod svg;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const GIB: usize = 1 << 30;

/// The options of the subcommands whose arguments `opt` reads (each
/// takes a value, but the flags listed second): checked before anything
/// runs, so that a misspelt option (or `--help`) does not start a long run
/// with the defaults and overwrite the plots in bench/plots.
const OPTIONS: &[(&str, &[&str], &[&str])] = &[
    (
        "run",
        &["--sizes", "--kinds", "--modes", "--dir", "--plots"],
        &[],
    ),
    (
        "overhead",
        &["--runs", "--scale", "--startup-runs", "--plots"],
        &[],
    ),
    ("ibrate", &["--runs", "--iters"], &[]),
    (
        "scale",
        &[
            "--peers", "--rounds", "--real", "--dir", "--plots", "--dmtcp",
        ],
        &[],
    ),
    ("soak", &["--cycles", "--restarts", "--every", "--dir"], &[]),
    (
        "peers",
        &[
            "--sizes",
            "--kinds",
            "--cache",
            "--modes",
            "--dmtcp",
            "--dir",
            "--plots",
            "--host-memory",
        ],
        &["--criu"],
    ),
    (
        "mpi",
        &[
            "--ranks",
            "--steps",
            "--runs",
            "--btl",
            "--per-node",
            "--dmtcp",
            "--dir",
        ],
        &[],
    ),
    (
        "parallel",
        &["--procs", "--mib", "--runs", "--nodes", "--dmtcp", "--dir"],
        &[],
    ),
    (
        "incremental",
        &["--mib", "--percent", "--modes", "--runs", "--dir"],
        &[],
    ),
];

/// What is wrong with the arguments `a` of subcommand `cmd` (None: all
/// known, each option with its value).
fn bad_options(cmd: &str, a: &[String]) -> Option<String> {
    let (_, values, flags) = OPTIONS.iter().find(|(c, _, _)| *c == cmd)?;
    let mut i = 0;
    while i < a.len() {
        let x = a[i].as_str();
        if flags.contains(&x) {
            i += 1;
        } else if values.contains(&x) {
            if a.get(i + 1).is_none_or(|v| v.starts_with("--")) {
                return Some(format!("bench {cmd}: {x} needs a value"));
            }
            i += 2;
        } else if x == "--help" || x == "-h" {
            return Some(String::new());
        } else {
            return Some(format!("bench {cmd}: unknown argument {x:?}"));
        }
    }
    None
}

/// The usage text, a line per subcommand (the options of those in
/// [`OPTIONS`] must match it: unit test).
const USAGE: &[&str] = &[
    "usage: bench run [--sizes 1,4] [--kinds random,zero,untouched] [--modes zstd,raw] [--dir DIR] [--plots DIR]",
    "       bench overhead [--runs 5] [--scale 1] [--startup-runs 30] [--plots DIR]",
    "       bench softib [--iters 20000] [--sizes 8,4096,65536,1048576]",
    "       bench ibqps [--qps 10,100,1000] [--runs 3] [--pause-us 0]",
    "       bench scale [--peers 512,1024,2048,4096] [--rounds 3] [--real 256] [--dmtcp DIR] [--dir DIR] [--plots DIR]",
    "       bench soak [--cycles 500] [--restarts 50] [--every 50] [--dir DIR]",
    "       bench parallel [--procs 8] [--mib 512] [--runs 3] [--nodes K] [--dmtcp DIR] [--dir DIR]",
    "       bench mpi [--ranks 2,4,8] [--steps 100000] [--runs 3] [--btl self,vader] [--per-node K] [--dmtcp DIR] [--dir DIR]",
    "       bench peers [--sizes 1,4] [--kinds random] [--cache cold,warm] [--modes zstd,raw,raw+before] [--host-memory touched|as-is] [--dmtcp DIR] [--criu] [--dir DIR] [--plots DIR]",
    "       bench ibrate [--runs 7] [--iters 300000]   (8-byte ib_write_bw message rate, bare vs --ib)",
    "       bench pause [MIB...]   (the program's pause with and without --forked-ckpt)",
    "       bench incremental [--mib 1024] [--percent 10] [--modes zstd,raw] [--runs 1] [--dir DIR]",
];

fn usage() {
    for l in USAGE {
        eprintln!("{l}");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(cmd) = args.get(1) {
        match bad_options(cmd, &args[2..]) {
            None => {}
            Some(e) if e.is_empty() => {
                usage();
                std::process::exit(0);
            }
            Some(e) => {
                eprintln!("{e}");
                usage();
                std::process::exit(2);
            }
        }
    }
    match args.get(1).map(String::as_str) {
        Some("workload") => workload(&args[2..]),
        Some("run") => run(&args[2..]),
        Some("overhead") => overhead(&args[2..]),
        Some("softib") => softib::run(&args[2..]),
        Some("ibrate") => softib::rate(&args[2..]),
        Some("ibqps") => ibqps::run(&args[2..]),
        Some("scale") => scale::run(&args[2..]),
        Some("soak") => soak::run(&args[2..]),
        Some("peers") => peers::run(&args[2..]),
        Some("mpi") => mpi::run(&args[2..]),
        Some("parallel") => parallel::run(&args[2..]),
        Some("pause") => pause(&args[2..]),
        Some("incremental") => incremental::run(&args[2..]),
        _ => {
            usage();
            std::process::exit(1);
        }
    }
}

/// The application's pause with and without forked checkpointing, as
/// the program itself sees it (bench/pause.sh, bench/c/pausegap.c): a
/// Markdown table on stdout.
fn pause(a: &[String]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("pause.sh");
    let st = Command::new("bash")
        .arg(&script)
        .args(a)
        .status()
        .expect("bash");
    std::process::exit(st.code().unwrap_or(1));
}

/// Hold `gib` GiB (or `<n>M`: MiB) of memory of the given kind, say
/// "ready", then idle.
fn workload(a: &[String]) {
    let n = match a[0].strip_suffix('M') {
        Some(m) => m.parse::<usize>().expect("MiB") << 20,
        None => a[0].parse::<usize>().expect("GiB") * GIB,
    };
    let kind = a[1].as_str();
    // SAFETY: a fresh anonymous mapping we own.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            n,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert!(p != libc::MAP_FAILED);
    // SAFETY: the mapping is n bytes long and ours.
    let mem = unsafe { std::slice::from_raw_parts_mut(p as *mut u64, n / 8) };
    match kind {
        "random" | "compressible" => {
            // compressible: two bytes of noise in every eight (zstd stores
            // about a quarter).
            let mask = if kind == "random" { u64::MAX } else { 0xffff };
            let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
            for w in mem.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *w = x & mask;
            }
        }
        "zero" => {
            // Touch every page with a write of zero: present, all-zero pages.
            for i in (0..mem.len()).step_by(512) {
                // SAFETY: in-bounds volatile write so the touch is not optimised away.
                unsafe { std::ptr::write_volatile(&mut mem[i], 0) };
            }
        }
        _ => {}
    }
    println!("ready");
    std::io::stdout().flush().unwrap();
    if a.get(2).map(String::as_str) == Some("changing") {
        // `change P` on stdin: P % of the memory, in 256 KiB regions
        // chosen at random, gets new contents; then "changed".
        let region = (256 << 10) / 8;
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for l in std::io::stdin().lock().lines() {
            let Some(p) = l
                .ok()
                .and_then(|l| l.strip_prefix("change ")?.trim().parse::<u64>().ok())
            else {
                continue;
            };
            let mut changed = 0;
            for r in mem.chunks_mut(region) {
                if next() % 100 < p {
                    changed += 1;
                    for w in r.iter_mut() {
                        *w = next();
                    }
                }
            }
            println!(
                "changed {changed} of {} regions",
                mem.len().div_ceil(region)
            );
            std::io::stdout().flush().unwrap();
        }
    }
    let mut beat = 0u64;
    loop {
        std::thread::sleep(Duration::from_millis(20));
        beat += 1;
        std::hint::black_box(beat);
    }
}

fn bin_dir() -> PathBuf {
    std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf()
}

fn opt<'a>(a: &'a [String], name: &str, default: &'a str) -> &'a str {
    opt_given(a, name).unwrap_or(default)
}

/// The value after `name` on the command line, if given.
fn opt_given<'a>(a: &'a [String], name: &str) -> Option<&'a str> {
    a.iter()
        .position(|x| x == name)
        .and_then(|i| a.get(i + 1))
        .map(String::as_str)
}

/// Bytes of the images (`*.dmtcp`) at the top of checkpoint directory `d`
/// (the newest generation's, by their top-level names).
fn image_bytes(d: &Path) -> u64 {
    std::fs::read_dir(d)
        .map(|r| {
            r.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "dmtcp"))
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

struct Coord {
    child: std::process::Child,
    port: u16,
    /// Where the tools are (this project's, or a DMTCP install's bin/).
    bin: PathBuf,
    /// The rig whose node0 runs the coordinator and its tools (`bench
    /// mpi --per-node`), or none: this machine's loopback.
    rig: Option<std::sync::Arc<testrig::Rig>>,
    /// On a rig, the coordinator's secret is in this file (its default
    /// place is node0's private /tmp, under a name the tools find only
    /// by node0's name): every tool and job is given it.
    secret: Option<PathBuf>,
}

impl Coord {
    fn start(dir: &Path) -> Coord {
        Coord::start_in(dir, &bin_dir())
    }
    /// A coordinator of the tools in `bin` (DMTCP's take the same options).
    fn start_in(dir: &Path, bin: &Path) -> Coord {
        Coord::start_on(dir, bin, None)
    }
    /// The same on node0 of `rig` (when given): every node reaches it at
    /// node0's address.
    fn start_on(dir: &Path, bin: &Path, rig: Option<std::sync::Arc<testrig::Rig>>) -> Coord {
        let dir = &std::path::absolute(dir).expect("bench directory");
        let pf = dir.join("port");
        let _ = std::fs::remove_file(&pf);
        let secret = rig.as_ref().map(|_| dir.join("coord.secret"));
        let mut c = on_node0(rig.as_deref(), &bin.join("dmtcp_coordinator"));
        if let Some(f) = &secret {
            let _ = std::fs::remove_file(f);
            c.env("DMTCP_SECRET_FILE", f);
        }
        #[allow(clippy::zombie_processes)] // reaped in Drop
        // In `dir`: a coordinator writes its restart script where it runs.
        let child = c
            .args(["-q", "-p", "0", "--port-file"])
            .arg(&pf)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("coordinator");
        loop {
            if let Some(port) = std::fs::read_to_string(&pf)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                return Coord {
                    child,
                    port,
                    bin: bin.to_path_buf(),
                    rig,
                    secret,
                };
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    /// The coordinator's address as its tools and jobs give it.
    fn host(&self) -> String {
        self.rig
            .as_ref()
            .map_or("127.0.0.1".into(), |r| r.node(0).addr().to_string())
    }
    /// `program` where the coordinator runs, with its secret.
    fn tool(&self, program: &Path) -> Command {
        self.tool_on(0, program)
    }
    /// `program` on node `k` of the rig (here without one), with the
    /// coordinator's secret.
    fn tool_on(&self, k: usize, program: &Path) -> Command {
        let mut c = match &self.rig {
            Some(r) => r.node(k).command(program),
            None => Command::new(program),
        };
        if let Some(f) = &self.secret {
            c.env("DMTCP_SECRET_FILE", f);
        }
        c
    }
    /// `dmtcp_launch` joined to this coordinator, images into `ckdir`.
    fn launcher(&self, ckdir: &Path) -> Command {
        self.launcher_on(0, ckdir)
    }
    /// [`Coord::launcher`] run on node `k` of the rig (here without one).
    fn launcher_on(&self, k: usize, ckdir: &Path) -> Command {
        let mut c = self.tool_on(k, &self.bin.join("dmtcp_launch"));
        c.args(["-j", "-h", &self.host(), "-p", &self.port.to_string()])
            .arg("--ckptdir")
            .arg(ckdir);
        c
    }
    fn cmd(&self, args: &[&str]) -> String {
        let o = self
            .tool(&self.bin.join("dmtcp_command"))
            .args(["-h", &self.host(), "-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("dmtcp_command");
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

/// `program` to run here, or in node0 of `rig`.
fn on_node0(rig: Option<&testrig::Rig>, program: &Path) -> Command {
    match rig {
        Some(r) => r.node(0).command(program),
        None => Command::new(program),
    }
}

impl Drop for Coord {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Seconds to write `bytes` with O_DIRECT from a warm buffer, fsync included.
fn raw_write(dir: &Path, bytes: usize) -> f64 {
    let path = dir.join("raw-odirect.bin");
    let chunk = 8 << 20;
    let layout = std::alloc::Layout::from_size_align(chunk, 4096).unwrap();
    // SAFETY: non-zero, aligned layout.
    let buf = unsafe { std::alloc::alloc(layout) };
    // SAFETY: filling our buffer with non-zero bytes.
    unsafe { std::ptr::write_bytes(buf, 0x5a, chunk) };
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: plain open of a NUL-terminated path.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_DIRECT,
            0o600,
        )
    };
    assert!(fd >= 0, "O_DIRECT open failed in {}", dir.display());
    let t = Instant::now();
    let mut off = 0usize;
    while off < bytes {
        // SAFETY: writing our aligned buffer.
        let r = unsafe { libc::pwrite(fd, buf as *const libc::c_void, chunk, off as i64) };
        assert!(r == chunk as isize, "raw write failed");
        off += chunk;
    }
    // SAFETY: fsync/close our fd.
    unsafe {
        libc::fsync(fd);
        libc::close(fd);
    }
    let s = t.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&path);
    // SAFETY: freeing what we allocated.
    unsafe { std::alloc::dealloc(buf, layout) };
    s
}

/// Where the image is when a restart starts.
#[derive(Clone, Copy, PartialEq)]
enum Cache {
    /// As the checkpoint left it: this project writes with O_DIRECT (not in
    /// the page cache), DMTCP buffered (in it).
    AsLeft,
    /// Read into the page cache first (a restart right after a buffered write).
    Warm,
    /// Dropped from every cache (`sync; echo 3 > /proc/sys/vm/drop_caches`,
    /// root): a restart after a crash or on another node.
    Cold,
}

impl Cache {
    fn name(self) -> &'static str {
        match self {
            Cache::AsLeft => "as left",
            Cache::Warm => "warm",
            Cache::Cold => "cold",
        }
    }
    fn prepare(self, img: &Path) {
        match self {
            Cache::AsLeft => {}
            Cache::Warm => {
                let mut f = std::fs::File::open(img).expect("the image");
                std::io::copy(&mut f, &mut std::io::sink()).expect("reading the image");
            }
            Cache::Cold => {
                // SAFETY: sync has no arguments.
                unsafe { libc::sync() };
                std::fs::write("/proc/sys/vm/drop_caches", "3\n")
                    .expect("dropping the page cache needs root");
            }
        }
    }
}

/// Bytes `bench peers --host-memory touched` touches and frees right
/// before each restart (0: nothing; see [`touch_host_memory`]).
static HOST_MEMORY_TOUCH: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Touch [`HOST_MEMORY_TOUCH`] bytes of new anonymous memory and free them
/// again, so that the restart that follows finds that much free memory
/// the machine has just used. On a virtual machine that hands memory
/// freed for a while back to its host (page reporting, a balloon), the
/// first touch of such memory is several times slower than of memory
/// freed a moment ago (4 GiB: 5.6-8 s after 5-20 s, 1.9-2.0 s at once,
/// here): without this step a restart's speed depends on how much memory
/// the runs before it happened to free just before, which differs
/// between systems (DMTCP's image is in the page cache since its
/// checkpoint, ours is read into it after the workload was killed).
fn touch_host_memory() {
    let n = HOST_MEMORY_TOUCH.load(std::sync::atomic::Ordering::Relaxed);
    if n == 0 {
        return;
    }
    // SAFETY: a new private anonymous mapping, populated for writing,
    // unmapped at once; nothing else refers to it.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            n,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
            -1,
            0,
        );
        if p != libc::MAP_FAILED {
            libc::munmap(p, n);
        }
    }
}

struct Row {
    gib: usize,
    kind: String,
    mode: String,
    ckpt_s: f64,
    restart_s: f64,
    /// Seconds until the page server of the lazy restore had filled all
    /// the memory (`restart_s` when there was none).
    all_in_s: f64,
    image: u64,
    raw_s: f64,
}

/// `dmtcp_restart IMG` joined to `coord`: it and the seconds until the
/// restarted process runs.
fn restart_timed(coord: &Coord, img: &Path) -> (std::process::Child, f64) {
    let (r, s, _) = restart_timed_with(coord, img, &[]);
    (r, s)
}

/// As [`restart_timed`], with `dmtcp_restart` options `opts`; also the
/// seconds until the page server of the lazy restore was done (it prints
/// its line with DMTCP_RESTART_LAZY_STATS=1), or until the process ran if
/// no page server said so within 60 s of it.
fn restart_timed_with(coord: &Coord, img: &Path, opts: &[&str]) -> (std::process::Child, f64, f64) {
    let err = img.with_extension("restart-err");
    let t = Instant::now();
    let mut r = Command::new(bin_dir().join("dmtcp_restart"))
        .args(["-j", "-h", "127.0.0.1", "-p", &coord.port.to_string()])
        .args(opts)
        .arg(img)
        .env("DMTCP_RESTART_LAZY_STATS", "1")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err).expect("restart's stderr"))
        .spawn()
        .expect("restart");
    loop {
        let s = coord.cmd(&["-s"]);
        if s.contains("NUM_PEERS=1") && s.contains("RUNNING=yes") {
            break;
        }
        if let Ok(Some(st)) = r.try_wait() {
            panic!(
                "dmtcp_restart {} ended: {st}: {}",
                img.display(),
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let running = t.elapsed().as_secs_f64();
    let mut all_in = running;
    let quiet = Instant::now();
    while quiet.elapsed() < Duration::from_secs(60) {
        let e = std::fs::read_to_string(&err).unwrap_or_default();
        if e.contains("lazy restore of ") {
            all_in = t.elapsed().as_secs_f64();
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let _ = std::fs::remove_file(&err);
    (r, running, all_in)
}

/// A fresh `dir` with a coordinator, and `workload ARGS` launched under
/// it (images into `dir`, raw if `mode` is "raw", with the launch
/// options `opts`), its stdout piped.
fn launch_workload(
    dir: &Path,
    mode: &str,
    opts: &[&str],
    args: &[&str],
    stdin: Stdio,
) -> (Coord, std::process::Child) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let coord = Coord::start(dir);
    let mut launch = coord.launcher(dir);
    if mode.starts_with("raw") {
        launch.arg("--no-gzip");
    }
    let child = launch
        .args(opts)
        .arg(std::env::current_exe().unwrap())
        .arg("workload")
        .args(args)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .spawn()
        .expect("launch");
    (coord, child)
}

fn one(dir: &Path, gib: usize, kind: &str, mode: &str, cache: Cache) -> Row {
    let (coord, mut child) =
        launch_workload(dir, mode, &[], &[&gib.to_string(), kind], Stdio::inherit());
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    let t = Instant::now();
    let out = coord.cmd(&["-bc"]);
    let ckpt_s = t.elapsed().as_secs_f64();
    let _ = out;
    let _ = child.kill();
    let _ = child.wait();
    while !coord.cmd(&["-s"]).contains("NUM_PEERS=0") {
        std::thread::sleep(Duration::from_millis(2));
    }
    let img = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "dmtcp"))
        .expect("an image");
    let image = std::fs::metadata(&img).unwrap().len();
    cache.prepare(&img);
    touch_host_memory();
    // "raw+before", "zstd+before": restarted with `--verify before` (every
    // chunk checked before the program resumes); "+on-fill" spells the
    // default out.
    let opts: Vec<&str> = match mode.split_once('+') {
        Some((_, when @ ("before" | "on-fill"))) => vec!["--verify", when],
        Some((_, other)) => panic!("mode {mode}: +{other}? (+before or +on-fill)"),
        None => Vec::new(),
    };
    let opts = &opts[..];
    let (mut r, restart_s, all_in_s) = restart_timed_with(&coord, &img, opts);
    let _ = r.kill();
    let _ = r.wait();
    let _ = std::fs::remove_file(&img);
    let raw_s = raw_write(dir, gib * GIB);
    Row {
        gib,
        kind: kind.into(),
        mode: mode.into(),
        ckpt_s,
        restart_s,
        all_in_s,
        image,
        raw_s,
    }
}

fn run(a: &[String]) {
    let sizes: Vec<usize> = opt(a, "--sizes", "1,4")
        .split(',')
        .map(|s| s.parse().unwrap())
        .collect();
    let kinds: Vec<String> = opt(a, "--kinds", "random,zero,untouched")
        .split(',')
        .map(String::from)
        .collect();
    let modes: Vec<String> = opt(a, "--modes", "zstd,raw")
        .split(',')
        .map(String::from)
        .collect();
    let dir = PathBuf::from(opt(a, "--dir", "target/bench-ckpt"));
    let dir = std::path::absolute(&dir).unwrap();
    println!("| GiB | memory | image | checkpoint s | ckpt GB/s | restart s | image bytes | raw O_DIRECT write s | ckpt / raw |");
    println!("|---|---|---|---|---|---|---|---|---|");
    // (series name, (GiB, checkpoint s), (GiB, restart s)) for the plots.
    let mut ck: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    let mut rs: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    let mut raw: Vec<(f64, f64)> = Vec::new();
    for &g in &sizes {
        for k in &kinds {
            for m in &modes {
                let r = one(&dir, g, k, m, Cache::AsLeft);
                let name = format!("{k}, {m}");
                for (into, v) in [(&mut ck, r.ckpt_s), (&mut rs, r.restart_s)] {
                    match into.iter_mut().find(|s| s.0 == name) {
                        Some(s) => s.1.push((g as f64, v)),
                        None => into.push((name.clone(), vec![(g as f64, v)])),
                    }
                }
                raw.push((g as f64, r.raw_s));
                let gb = (r.gib * GIB) as f64 / 1e9;
                println!(
                    "| {} | {} | {} | {:.2} | {:.2} | {:.2} | {} | {:.2} | {:.2} |",
                    r.gib,
                    r.kind,
                    r.mode,
                    r.ckpt_s,
                    gb / r.ckpt_s,
                    r.restart_s,
                    r.image,
                    r.raw_s,
                    r.ckpt_s / r.raw_s
                );
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    // The raw write of each size: its fastest of the runs.
    let mut best: Vec<(f64, f64)> = Vec::new();
    for (g, t) in raw {
        match best.iter_mut().find(|b| b.0 == g) {
            Some(b) => b.1 = b.1.min(t),
            None => best.push((g, t)),
        }
    }
    ck.push(("raw O_DIRECT write".into(), best));
    let plots = PathBuf::from(opt(
        a,
        "--plots",
        concat!(env!("CARGO_MANIFEST_DIR"), "/plots"),
    ));
    std::fs::create_dir_all(&plots).expect("--plots directory");
    for (file, title, series) in [
        (
            "checkpoint-vs-size.svg",
            "Checkpoint time against memory size",
            &ck,
        ),
        (
            "restart-vs-size.svg",
            "Restart time against memory size",
            &rs,
        ),
    ] {
        let f = plots.join(file);
        svg::lines(&f, title, "GiB of memory", "s", series).expect("write the plot");
        println!("plot: {}", f.display());
    }
}

/// Compile the C program `src` (relative to bench/) with `-O2` and `extra`
/// flags into `out`; the path of the program.
pub(crate) fn compile_c(src: &str, out: &Path, extra: &[&str]) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(src);
    let st = Command::new("cc")
        .arg("-O2")
        .arg("-o")
        .arg(out)
        .arg(&src)
        .args(extra)
        .status()
        .expect("cc");
    assert!(st.success(), "compiling {}", src.display());
    out.to_path_buf()
}

/// Compile bench/c/overhead.c into `dir`.
fn overhead_program(dir: &Path) -> PathBuf {
    compile_c("c/overhead.c", &dir.join("overhead"), &["-pthread"])
}

/// Parse "<name> <ns>" lines.
fn parse_metrics(out: &str) -> Vec<(String, f64)> {
    out.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// A number field (`VmRSS:`, `Threads:`, ...) of /proc/`pid`/status; 0
/// when the process or the field is not there.
fn status_field(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

/// The metrics the overhead program prints, in order.
const METRICS: [&str; 5] = [
    "open_close",
    "getpid",
    "malloc_free",
    "pthread_create_join",
    "fork_exit_wait",
];

fn overhead(a: &[String]) {
    let runs: usize = opt(a, "--runs", "5").parse().unwrap_or(5);
    let scale = opt(a, "--scale", "1").to_string();
    let startup_runs: usize = opt(a, "--startup-runs", "30").parse().unwrap_or(30);
    let dir = std::env::temp_dir().join(format!("dmtcp-overhead-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let prog = overhead_program(&dir);
    let coord = Coord::start(&dir);
    let port = coord.port.to_string();
    let launch = |args: &[&str]| {
        let mut c = Command::new(bin_dir().join("dmtcp_launch"));
        c.args(["-j", "-h", "127.0.0.1", "-p", &port, "--ckptdir"])
            .arg(&dir)
            .args(args);
        c
    };
    let mut bare: Vec<Vec<f64>> = vec![Vec::new(); METRICS.len()];
    let mut under: Vec<Vec<f64>> = vec![Vec::new(); METRICS.len()];
    for _ in 0..runs {
        for (cmd, into) in [
            (Command::new(&prog), &mut bare),
            (launch(&[prog.to_str().unwrap_or_default()]), &mut under),
        ] {
            let mut cmd = cmd;
            let o = cmd
                .arg(&scale)
                .stderr(Stdio::inherit())
                .output()
                .expect("run overhead program");
            let m = parse_metrics(&String::from_utf8_lossy(&o.stdout));
            for (i, name) in METRICS.iter().enumerate() {
                if let Some((_, v)) = m.iter().find(|(k, _)| k == name) {
                    into[i].push(*v);
                }
            }
        }
    }
    let time = |mut c: Command| {
        let t = Instant::now();
        let st = c.stdout(Stdio::null()).status().expect("start-up run");
        assert!(st.success());
        t.elapsed().as_secs_f64() * 1e3
    };
    let mut s_bare = Vec::new();
    let mut s_under = Vec::new();
    for _ in 0..startup_runs {
        s_bare.push(time(Command::new("/bin/true")));
        s_under.push(time(launch(&["/bin/true"])));
    }
    let targets = ["<= 1.5x", "-", "<= 1.05x", "<= 1.2x", "-"];
    println!("| call | bare ns/op | dmtcp ns/op | ratio | target |");
    println!("| --- | ---: | ---: | ---: | --- |");
    let mut groups = Vec::new();
    for (i, name) in METRICS.iter().enumerate() {
        let (b, u) = (median(bare[i].clone()), median(under[i].clone()));
        groups.push((name.to_string(), vec![1.0, u / b]));
        println!(
            "| {name} | {b:.1} | {u:.1} | {:.2}x | {} |",
            u / b,
            targets[i]
        );
    }
    let (b, u) = (median(s_bare), median(s_under));
    println!(
        "| start-up of /bin/true (ms) | {b:.2} | {u:.2} | +{:.2} ms | <= +10 ms |",
        u - b
    );
    groups.push(("start-up".into(), vec![1.0, u / b]));
    let plots = PathBuf::from(opt(
        a,
        "--plots",
        concat!(env!("CARGO_MANIFEST_DIR"), "/plots"),
    ));
    std::fs::create_dir_all(&plots).expect("--plots directory");
    let f = plots.join("overhead.svg");
    svg::bars(
        &f,
        "Cost of a call under dmtcp_launch, relative to a bare run",
        "time / bare time",
        &["bare".into(), "under dmtcp_launch".into()],
        &groups,
    )
    .expect("write the plot");
    println!("plot: {}", f.display());
    println!("\n(medians of {runs} runs, scale {scale}; start-up: medians of {startup_runs} runs, coordinator already running)");
    drop(coord);
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A misspelt option, a missing value or `--help` stops a subcommand
    /// before it runs; the options every subcommand reads pass.
    #[test]
    fn unknown_options_are_refused_before_anything_runs() {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            bad_options(
                "peers",
                &v(&["--sizes", "4", "--criu", "--host-memory", "as-is"])
            ),
            None
        );
        assert_eq!(bad_options("peers", &v(&["--help"])), Some(String::new()));
        assert!(
            bad_options("peers", &v(&["--size", "4"])).is_some_and(|e| e.contains("\"--size\""))
        );
        assert!(bad_options("peers", &v(&["--sizes"])).is_some_and(|e| e.contains("needs a value")));
        assert!(bad_options("run", &v(&["--modes", "--dir", "x"]))
            .is_some_and(|e| e.contains("--modes")));
        // Not checked here: subcommands that parse their own arguments.
        assert_eq!(bad_options("workload", &v(&["4", "random"])), None);
        // The usage text names exactly the options that are checked.
        for (cmd, values, flags) in OPTIONS {
            let line = USAGE
                .iter()
                .find(|l| {
                    let mut w = l.split_whitespace().skip_while(|w| *w != "bench");
                    w.nth(1) == Some(*cmd)
                })
                .unwrap_or_else(|| panic!("no usage line for {cmd}"));
            // Each `[--option ...]` (not the words of a comment).
            let mut named: Vec<&str> = line
                .split('[')
                .skip(1)
                .filter_map(|seg| seg.split([' ', ']']).next())
                .filter(|w| w.starts_with("--"))
                .collect();
            let mut known: Vec<&str> = values.iter().chain(flags.iter()).copied().collect();
            named.sort_unstable();
            known.sort_unstable();
            assert_eq!(named, known, "bench {cmd}: usage and OPTIONS differ");
        }
        for (cmd, values, _) in OPTIONS {
            let mut a = Vec::new();
            for o in *values {
                a.push(o.to_string());
                a.push("1".to_string());
            }
            assert_eq!(bad_options(cmd, &a), None, "{cmd}");
        }
    }

    /// Every option a subcommand's code reads (`opt`, `opt_given`, a flag
    /// compared with `x == "--..."`) is one `bad_options` lets through for
    /// that subcommand: a misspelt or forgotten name would otherwise be
    /// refused on the command line, or silently never read.
    #[test]
    fn the_options_the_code_reads_are_the_ones_accepted() {
        let files: &[(&str, &str, &[&str])] = &[
            ("main.rs", include_str!("main.rs"), &["run", "overhead"]),
            (
                "incremental.rs",
                include_str!("incremental.rs"),
                &["incremental"],
            ),
            ("mpi.rs", include_str!("mpi.rs"), &["mpi"]),
            ("parallel.rs", include_str!("parallel.rs"), &["parallel"]),
            ("peers.rs", include_str!("peers.rs"), &["peers"]),
            ("scale.rs", include_str!("scale.rs"), &["scale"]),
            ("soak.rs", include_str!("soak.rs"), &["soak"]),
            ("softib.rs", include_str!("softib.rs"), &["ibrate"]),
        ];
        let mut seen = 0;
        for (file, text, cmds) in files {
            // (Not this test's own text.)
            let code = text.split("#[cfg(test)]").next().unwrap();
            let flat: String = code.chars().filter(|c| !c.is_whitespace()).collect();
            for pat in ["opt(a,\"", "opt_given(a,\"", "x==\""] {
                for (i, _) in flat.match_indices(pat) {
                    let rest = &flat[i + pat.len()..];
                    let name = &rest[..rest.find('"').unwrap()];
                    if !name.starts_with("--") || name == "--help" {
                        continue;
                    }
                    seen += 1;
                    let accepted = cmds.iter().any(|c| {
                        OPTIONS
                            .iter()
                            .any(|(k, v, f)| k == c && (v.contains(&name) || f.contains(&name)))
                    });
                    assert!(
                        accepted,
                        "{file} reads {name}, which bench {cmds:?} refuses"
                    );
                }
            }
        }
        assert!(
            seen > 40,
            "only {seen} option reads found: the scan is broken"
        );
    }

    /// The overhead program prints every metric (so the harness cannot rot silently).
    #[test]
    fn overhead_program_prints_every_metric() {
        let dir = std::env::temp_dir().join(format!("dmtcp-overhead-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let prog = overhead_program(&dir);
        let o = Command::new(&prog).arg("0.001").output().unwrap();
        assert!(o.status.success());
        let m = parse_metrics(&String::from_utf8_lossy(&o.stdout));
        for name in METRICS {
            let v = m.iter().find(|(k, _)| k == name).map(|x| x.1);
            assert!(
                v.is_some_and(|v| v > 0.0),
                "metric {name} missing or zero: {m:?}"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
