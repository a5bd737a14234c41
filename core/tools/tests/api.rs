//! The program interface (include/dmtcp.h) with and without the checkpointer.

mod common;
use common::*;

/// The header as installed next to the tools by the build.
fn installed_include() -> std::path::PathBuf {
    let inc = bin_dir().join("include");
    assert!(
        inc.join("dmtcp.h").exists(),
        "dmtcp.h is not installed in {}",
        inc.display()
    );
    inc
}

/// Compile `examples/<file>` (or `<file>` of the repository when it is a
/// path) against the installed header into target/tmp (a shared library
/// when `shared`).
fn compile_example(file: &str, shared: bool) -> std::path::PathBuf {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let src = if file.contains('/') {
        root.join(file)
    } else {
        root.join("examples").join(file)
    };
    let stem = file
        .rsplit('/')
        .next()
        .unwrap_or(file)
        .trim_end_matches(".c");
    let out = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "{}{stem}-{}{}",
        if shared { "lib" } else { "" },
        std::process::id(),
        if shared { ".so" } else { "" }
    ));
    let mut cc = std::process::Command::new("cc");
    if shared {
        cc.args(["-shared", "-fPIC"]);
    } else {
        // A test plugin may look up the program's symbols.
        cc.arg("-rdynamic");
    }
    let st = cc
        .args(["-O1", "-Wall", "-Werror", "-I"])
        .arg(installed_include())
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .arg("-ldl")
        .status()
        .unwrap();
    assert!(
        st.success(),
        "{file} does not compile against the installed dmtcp.h"
    );
    out
}

fn build_example() -> std::path::PathBuf {
    static BUILT: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| compile_example("api.c", false))
        .clone()
}

#[test]
fn without_the_checkpointer_calls_report_not_present() {
    let prog = build_example();
    let out = run_bare(&[prog.to_str().unwrap()]);
    assert!(out.contains("enabled=0 generation=-1"), "{out}");
    assert!(out.contains("checkpoint returned not-present"), "{out}");
    assert!(out.contains("status not-present"), "{out}");
    assert!(
        out.contains("section end") && out.contains("RESULT 819"),
        "{out}"
    );
}

#[test]
fn program_checkpoints_itself_and_learns_it_was_restarted() {
    let prog = build_example();
    let mut job = Job::new("api-self");
    job.launch(&[prog.to_str().unwrap()], &[]);
    job.wait_for("checkpoint returned after-checkpoint generation=1");
    assert!(
        job.output().contains("enabled=1 generation=0"),
        "{}",
        job.output()
    );
    assert_eq!(job.images().len(), 1);
    job.wait_for("step 5\n");
    job.kill();
    job.restart();
    job.wait_success();
    let out = job.output();
    assert!(
        out.contains("checkpoint returned after-restart generation=1"),
        "{out}"
    );
    assert!(
        !out.contains("after-checkpoint"),
        "the restarted run rewrote the file from the checkpoint on: {out}"
    );
    assert!(
        out.contains("status ok peers=1") && out.contains("RESULT 819"),
        "{out}"
    );
}

/// With a forked writer (slowed down here: a pause per item it writes),
/// the program runs on as soon as its state is captured, but
/// `dmtcp_checkpoint()` still returns only once the generation is
/// committed, as without forked writers: its image is there by then.
#[test]
fn with_a_forked_writer_the_call_returns_once_the_generation_is_committed() {
    let prog = build_example();
    let mut job = Job::new("api-forked").env("DMTCP_TEST_WRITE_DELAY_MS", "200");
    job.launch(&[prog.to_str().unwrap()], &["--forked-ckpt"]);
    job.wait_for("checkpoint returned after-checkpoint generation=1");
    assert_eq!(
        job.images().len(),
        1,
        "dmtcp_checkpoint() returned before the generation was committed{}",
        job.diag()
    );
    job.wait_success();
    let out = job.output();
    assert!(
        out.contains("status ok peers=1") && out.contains("RESULT 819"),
        "{out}"
    );
}

#[test]
fn checkpoint_waits_for_a_disabled_section() {
    let prog = build_example();
    let mut job = Job::new("api-section");
    job.launch(&[prog.to_str().unwrap()], &[]);
    job.wait_for("section begin");
    // Requested inside the section: it must happen only after the section ends.
    let o = job.command(&["-bc"]);
    assert!(o.status.success());
    assert!(
        job.output().contains("section end"),
        "the checkpoint completed inside the disabled section: {}",
        job.output()
    );
    job.kill();
    job.restart();
    job.wait_success();
    let out = job.output();
    assert_eq!(out.matches("section end").count(), 1, "{out}");
    assert!(out.contains("RESULT 819"), "{out}");
}

/// Four threads enter and leave disabled sections without pause while the
/// job is checkpointed 15 times, killed and restarted: at every checkpoint
/// (the plugin looks while the threads are suspended) no thread may be
/// inside a section, and the threads' counts add up after the restart.
#[test]
fn no_checkpoint_lands_inside_a_busy_threads_section() {
    let so = compile_example("core/tools/tests/c/sections_plugin.c", true);
    let prog = compile_example("core/tools/tests/c/sections.c", false);
    let tmp = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let log = tmp.join(format!("sections-{}.txt", std::process::id()));
    let stop = tmp.join(format!("sections-stop-{}", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let _ = std::fs::remove_file(&stop);
    let mut job = Job::new("api-sections").env("EVENT_LOG", log.to_str().unwrap());
    job.launch(
        &[prog.to_str().unwrap(), stop.to_str().unwrap()],
        &["--with-plugin", so.to_str().unwrap()],
    );
    job.wait_for("ready");
    for _ in 0..15 {
        job.checkpoint();
    }
    job.kill();
    job.restart();
    job.wait_running(1);
    job.checkpoint();
    std::fs::write(&stop, "").unwrap();
    job.wait_success();
    let out = job.output();
    assert!(out.contains(" OK"), "{out}");
    let seen = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = seen.lines().collect();
    assert_eq!(lines.len(), 16, "one look per checkpoint: {seen}");
    assert!(lines.iter().all(|l| *l == "clear"), "{seen}");
    let _ = std::fs::remove_file(&log);
    let _ = std::fs::remove_file(&stop);
}

/// A user plugin loaded with --with-plugin sees its events in order across a
/// checkpoint, a kill and a restart.
#[test]
fn plugin_receives_events_in_order() {
    let so = compile_example("plugin_events.c", true);
    let prog = c_program("memcheck");
    let log = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("events-{}.txt", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let mut job = Job::new("plugin").env("EVENT_LOG", log.to_str().unwrap());
    job.launch(
        &[prog.to_str().unwrap()],
        &["--with-plugin", so.to_str().unwrap()],
    );
    job.wait_for("step 2 ok");
    job.checkpoint();
    job.wait_for("step 4 ok");
    job.kill();
    job.restart();
    job.wait_success();
    let events = std::fs::read_to_string(&log).unwrap();
    // memcheck has one user thread: it gets thread-resume after the
    // checkpoint and after the restart.
    assert_eq!(
        events,
        "init\npresuspend\nprecheckpoint\nresume\nthread-resume\nrestart\nthread-resume\nexit\n"
    );

    // fork and exec: a shell that forks and execs /bin/true.
    let log2 = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("events-exec-{}.txt", std::process::id()));
    let _ = std::fs::remove_file(&log2);
    let mut job2 = Job::new("plugin-exec").env("EVENT_LOG", log2.to_str().unwrap());
    job2.launch(
        &["bash", "-c", "/bin/true; echo done"],
        &["--with-plugin", so.to_str().unwrap()],
    );
    job2.wait_success();
    let ev: Vec<String> = std::fs::read_to_string(&log2)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    for want in ["atfork-parent", "atfork-child", "pre-exec", "post-exec"] {
        assert!(ev.iter().any(|e| e == want), "no {want} event: {ev:?}");
    }
    // Plugins are given by absolute path, as in DMTCP.
    let bad = tool("dmtcp_launch")
        .args(["--with-plugin", "relative.so", "true"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("absolute path"));
}

/// Three processes exchange the pids they get after a restart through the
/// coordinator's name service: publish, global barrier, query.
#[test]
fn plugins_exchange_new_ids_after_restart() {
    let so = compile_example("plugin_exchange.c", true);
    let job = Job::new("exchange");
    let log = job.dir.join("exchange");
    let log = log.to_str().unwrap();
    let procs = launch_ranks(
        &job,
        3,
        &so,
        &[("NPROC", "3"), ("EXCHANGE_LOG", log)],
        "step 2 ok",
    );
    assert!(job.command(&["-kc"]).status.success());
    for mut p in procs {
        wait_timeout(&mut p, TIMEOUT).expect("a process survived -kc");
    }
    assert_eq!(job.images().len(), 3);
    let mut r = tool("dmtcp_restart")
        .args(["-j", "-h", "127.0.0.1", "-p", &job.port.to_string()])
        .args(job.images())
        .current_dir(&job.dir)
        .spawn()
        .unwrap();
    let st = wait_timeout(&mut r, TIMEOUT).expect("restart did not finish");
    assert!(st.success());
    let logs: Vec<String> = (0..3)
        .map(|i| std::fs::read_to_string(format!("{log}.{i}")).unwrap_or_default())
        .collect();
    assert!(logs[0].starts_with("rank0=pid="), "{logs:?}");
    assert!(
        logs.iter().all(|l| l == &logs[0]),
        "processes disagree: {logs:?}"
    );
    // The listing (dmtcp_send_list_query_to_coordinator, one entry a call)
    // found the same entries as the queries by key, in key order.
    let lines: Vec<&str> = logs[0].lines().collect();
    assert_eq!(lines.len(), 3, "{logs:?}");
    assert_eq!(lines[1], lines[0], "listing differs from the queries");
    assert_eq!(lines[2], "small buffer: ok");
    let pids: std::collections::BTreeSet<&str> = lines[0]
        .split(' ')
        .map(|kv| kv.split_once("=pid=").unwrap().1)
        .collect();
    assert_eq!(pids.len(), 3, "three distinct pids expected: {}", logs[0]);
}

/// The Python module, pip-installed from python/ into a fresh venv: absent
/// without the checkpointer; under it, a self-requested checkpoint returns
/// RESUMED, and RESTARTED after a kill and restart; a checkpoint requested
/// inside `checkpoints_disabled()` completes only after the block.
#[test]
fn python_module_across_restart() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap();
    let venv = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("venv-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&venv);
    let st = std::process::Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .unwrap();
    assert!(st.success(), "python3 -m venv failed");
    let pip = venv.join("bin/pip");
    let quiet = ["install", "-q", "--disable-pip-version-check"];
    // As users do (pip fetches setuptools for the build); offline, fall back
    // to the venv's own setuptools.
    let ok = std::process::Command::new(&pip)
        .args(quiet)
        .arg(root.join("python"))
        .status()
        .unwrap()
        .success()
        || std::process::Command::new(&pip)
            .args(quiet)
            .arg("--no-build-isolation")
            .arg(root.join("python"))
            .status()
            .unwrap()
            .success();
    assert!(ok, "pip install ./python failed");
    let py = venv.join("bin/python");
    let script = root.join("python/example.py");
    let (py, script) = (py.to_str().unwrap(), script.to_str().unwrap());
    // The venv's module, not the source tree's, must be the one imported.
    let o = std::process::Command::new(py)
        .args(["-c", "import dmtcp; print(dmtcp.__file__)"])
        .current_dir("/")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("site-packages"),
        "{o:?}"
    );
    let bare = run_bare(&[py, script]);
    assert!(
        bare.contains("enabled False")
            && bare.contains("checkpoint absent generation -1")
            && bare.contains("RESULT 66"),
        "{bare}"
    );

    let mut job = Job::new("python-module");
    job.launch(&[py, script], &[]);
    job.wait_for("checkpoint resumed generation 1");
    job.wait_for("step 5\n");
    job.kill();
    job.restart();
    job.wait_for("section begin");
    assert!(job.command(&["-bc"]).status.success());
    assert!(
        job.output().contains("section end"),
        "checkpoint inside the disabled section: {}",
        job.output()
    );
    job.wait_success();
    let out = job.output();
    assert!(out.contains("enabled True"), "{out}");
    assert!(out.contains("checkpoint restarted generation 1"), "{out}");
    assert!(out.contains("RESULT 66"), "{out}");
}

/// A plugin that virtualizes getpid() through a virtual-id table: after a
/// restart the program still sees its launch pid, although the kernel gave
/// the restarted process another one (restart outside a pid namespace,
/// DMTCP_RESTART_PIDNS=0, where pids change). The engine's own virtual
/// pids do the same without the plugin; with it, both agree.
#[test]
fn plugin_virtualizes_the_pid_across_restart() {
    let so = compile_example("plugin_vpid.c", true);
    let prog = c_program("showpid");
    // Without the plugin the engine's own virtual pids keep the launch pid
    // too, although the kernel gave the restarted process another one.
    let mut plain = Job::new("vpid-plain").env("DMTCP_RESTART_PIDNS", "0");
    plain.launch(&[prog.to_str().unwrap()], &[]);
    let plain_pid = plain.proc.as_ref().unwrap().id();
    plain.wait_for("step 3 ");
    plain.checkpoint_and_kill();
    plain.restart();
    assert_ne!(
        plain.proc.as_ref().unwrap().id(),
        plain_pid,
        "the kernel reused the pid: the test proves nothing"
    );
    plain.wait_success();
    assert!(
        plain
            .output()
            .lines()
            .filter(|l| l.starts_with("step "))
            .all(|l| l.ends_with(&format!("pid={plain_pid}"))),
        "{}",
        plain.output()
    );
    // With it (loaded through DMTCP_PLUGIN this time), the launch pid stays.
    let mut job = Job::new("vpid")
        .env("DMTCP_PLUGIN", so.to_str().unwrap())
        .env("DMTCP_RESTART_PIDNS", "0");
    job.launch(&[prog.to_str().unwrap()], &[]);
    let launch_pid = job.proc.as_ref().unwrap().id();
    job.wait_for("step 3 ");
    job.checkpoint_and_kill();
    job.restart();
    let restarted_pid = job.proc.as_ref().unwrap().id();
    assert_ne!(
        restarted_pid, launch_pid,
        "the kernel reused the pid: the test proves nothing"
    );
    job.wait_success();
    let out = job.output();
    assert!(
        out.contains("step 19 ") && out.contains("RESULT done"),
        "{out}"
    );
    for line in out.lines().filter(|l| l.starts_with("step ")) {
        assert!(
            line.ends_with(&format!("pid={launch_pid}")),
            "getpid() changed across the restart: {line}\n{out}"
        );
    }
}

/// The "disconnect from a database" example against a real redis-server:
/// the program's plugin closes its connection before each checkpoint and
/// reconnects on resume and restart; no socket ends up in the image, and
/// the counter in the server stays consistent with what the program saw.
#[test]
fn plugin_reconnects_to_an_outside_server() {
    let prog = compile_example("redis_counter.c", false);
    let port = unused_port().to_string();
    let mut redis = std::process::Command::new("redis-server")
        .args([
            "--port",
            &port,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server is needed (apt-get install redis-server)");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let get = || {
        let o = std::process::Command::new("redis-cli")
            .args(["-p", &port, "GET", "dmtcp-example-counter"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    let deadline = std::time::Instant::now() + TIMEOUT;
    while std::process::Command::new("redis-cli")
        .args(["-p", &port, "ping"])
        .output()
        .map(|o| !o.stdout.starts_with(b"PONG"))
        .unwrap_or(true)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "redis-server did not start"
        );
        assert!(redis.try_wait().unwrap().is_none(), "redis-server exited");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _redis = Kill(redis);
    let mut job = Job::new("redis").env("REDIS_PORT", &port);
    job.launch(&[prog.to_str().unwrap()], &[]);
    job.wait_for("step 5 ");
    job.checkpoint();
    job.wait_for("step 9 ");
    assert!(
        job.output().contains("connections 2"),
        "no reconnection after the checkpoint: {}",
        job.output()
    );
    job.kill();
    job.restart();
    job.wait_success();
    let out = job.output();
    let values: Vec<i64> = out
        .lines()
        .filter_map(|l| l.split("value ").nth(1)?.split(' ').next()?.parse().ok())
        .collect();
    assert_eq!(values.len(), 30, "{out}");
    assert!(
        values.windows(2).all(|w| w[1] > w[0]),
        "values must keep increasing: {out}"
    );
    assert_eq!(
        values.last().unwrap().to_string(),
        get(),
        "the server's counter and the program disagree"
    );
    let errs = std::fs::read_to_string(job.dir.join("err.txt")).unwrap_or_default();
    assert!(
        !errs.contains("socket:"),
        "a socket to the outside was in the image: {errs}"
    );
}

/// `--disable-file-plugin` really turns the file plugin off: the restarted
/// program finds its files closed (and fails), where with it on it finishes.
#[test]
fn disabling_an_internal_plugin() {
    let prog = c_program("filewriter");
    let mut job = Job::new("nofile");
    job.launch(&[prog.to_str().unwrap()], &["--disable-file-plugin"]);
    job.wait_for("step 3\n");
    job.checkpoint_and_kill();
    job.restart();
    let mut p = job.proc.take().unwrap();
    let st = wait_timeout(&mut p, TIMEOUT).expect("restarted program hung");
    assert!(
        !st.success(),
        "the program's files were restored although the file plugin was disabled"
    );
}

/// dmtcp_exclude_memory and the event data: memory kept out with
/// DMTCP_MEM_SKIP is unmapped after a restart (the program's RESTART hook
/// maps it again with MAP_FIXED_NOREPLACE), DMTCP_MEM_ZERO memory comes
/// back zeroed, other memory is saved, and so is memory mapped where an
/// excluded range was unmapped or mapped over; hooks learn the generation, the
/// checkpoint directory and whether they run after a restart.
#[test]
fn excluded_memory_and_event_data() {
    let prog = compile_example("plugin_memory.c", false);
    let p = prog.to_str().unwrap();
    let bare = run_bare(&[p]);
    assert!(
        bare.contains("exclude 3 3 bad 3") && bare.contains("restarted 0 remapped 0"),
        "{bare}"
    );
    assert!(
        bare.contains("dev ok\ncache ok\ndata ok\nreused ok\nreplaced ok\n"),
        "{bare}"
    );
    let mut job = Job::new("exclude-memory");
    job.launch(&[p], &[]);
    job.wait_for("step 5\n");
    job.checkpoint_and_kill();
    job.restart();
    job.wait_success();
    let out = job.output();
    assert!(out.contains("exclude 1 1 bad -1"), "{out}");
    assert!(
        out.contains("restarted 1 remapped 1"),
        "the skipped range was not free after the restart: {out}"
    );
    assert!(
        out.contains("dev ok\ncache ok\ndata ok\nreused ok\nreplaced ok\n"),
        "{out}"
    );
    assert!(
        out.contains("events pre_ok 1 post_ok 1 pre_gen 1 post_gen 1 same_dir 1 thread_resumes 1"),
        "{out}"
    );
}

/// An echo server outside the computation (a bare python3): its port, and
/// the child to kill.
fn external_echo_server() -> (u16, std::process::Child) {
    use std::io::BufRead;
    let script = r#"
import socketserver
class H(socketserver.StreamRequestHandler):
    def handle(self):
        while True:
            d = self.rfile.read(8)
            if not d: return
            self.wfile.write(d); self.wfile.flush()
socketserver.ThreadingTCPServer.daemon_threads = True
s = socketserver.ThreadingTCPServer(('127.0.0.1', 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;
    let mut c = std::process::Command::new("python3")
        .args(["-c", script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(c.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    (line.trim().parse().expect("echo server port"), c)
}

/// dmtcp_claim_fd: a connection to a server outside the computation, owned
/// by the program's own plugin, is neither drained nor restored by the
/// engine; its number is held by /dev/null at restart until the plugin's
/// restart hook connects again, and every echo checks out across two
/// checkpoints and a restart.
#[test]
fn claimed_fd_is_left_to_its_plugin() {
    let prog = compile_example("plugin_claimfd.c", false);
    let (port, mut server) = external_echo_server();
    let port = port.to_string();
    let bare = run_bare(&[prog.to_str().unwrap(), &port, "20"]);
    assert!(
        bare.contains("claim not-present") && bare.contains("RESULT 210"),
        "{bare}"
    );
    let mut job = Job::new("claimfd");
    job.launch(&[prog.to_str().unwrap(), &port, "300"], &[]);
    job.wait_for("claim ok");
    job.wait_for("step 50\n");
    job.checkpoint();
    job.wait_for("step 100\n");
    job.kill();
    job.restart();
    job.wait_success();
    let out = job.output();
    let _ = server.kill();
    assert!(
        out.contains("placeholder ok") && !out.contains("WRONG") && !out.contains("reclaim failed"),
        "{out}"
    );
    assert!(out.contains("RESULT 45150"), "{out}");
}

/// dmtcp_fail_checkpoint: a plugin that cannot save its state fails the
/// round from its pre-checkpoint hook; `-bc` reports its reason, no image
/// is committed, the program goes on, and the next round (which the
/// plugin lets through) checkpoints it. Outside a round the call is -1.
#[test]
fn plugin_fails_a_checkpoint_with_its_reason() {
    let so = compile_example("core/tools/tests/c/refuse_plugin.c", true);
    let prog = c_program("memcheck");
    let mut job = Job::new("refuse").env("STEPS", "40");
    job.launch(
        &[prog.to_str().unwrap()],
        &["--with-plugin", so.to_str().unwrap()],
    );
    job.wait_for("step 3 ok");
    let o = job.command(&["-bc"]);
    let said =
        String::from_utf8_lossy(&o.stderr).into_owned() + &String::from_utf8_lossy(&o.stdout);
    assert!(!o.status.success(), "the refused round succeeded: {said}");
    assert!(
        said.contains("the test plugin's device is busy"),
        "the reason is not reported: {said}"
    );
    assert!(job.images().is_empty(), "{:?}", job.images());
    job.wait_for("step 8 ok");
    job.checkpoint();
    assert_eq!(job.images().len(), 1);
    job.kill();
    job.restart();
    job.wait_success();
    let out = job.output();
    assert!(out.contains("step 39 ok") && !out.contains("BAD"), "{out}");
    let err = std::fs::read_to_string(job.dir.join("err.txt")).unwrap_or_default();
    assert!(err.contains("refuse-plugin: outside a round: -1"), "{err}");
}

/// `n` processes of memcheck under plugin `so`, each with RANK and `env`,
/// output in out<rank>.txt, joined to `job`'s coordinator; returns once
/// each printed `ready`.
fn launch_ranks(
    job: &Job,
    n: usize,
    so: &std::path::Path,
    env: &[(&str, &str)],
    ready: &str,
) -> Vec<std::process::Child> {
    let prog = c_program("memcheck");
    let procs: Vec<std::process::Child> = (0..n)
        .map(|rank| {
            job.joined("dmtcp_launch")
                .args(["--with-plugin", so.to_str().unwrap()])
                .arg(&prog)
                .env("RANK", rank.to_string())
                .envs(env.iter().copied())
                .stdout(std::fs::File::create(job.dir.join(format!("out{rank}.txt"))).unwrap())
                .spawn()
                .unwrap()
        })
        .collect();
    let deadline = std::time::Instant::now() + TIMEOUT;
    while (0..n).any(|r| {
        !std::fs::read_to_string(job.dir.join(format!("out{r}.txt")))
            .unwrap_or_default()
            .contains(ready)
    }) {
        assert!(
            std::time::Instant::now() < deadline,
            "programs did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    procs
}

/// A round that loses a process half way (it exits after its threads are
/// suspended) must not touch the previous generation: the survivor's new
/// image is thrown away, every image of generation 1 keeps its inode and
/// contents, `-bc` fails, and the job restarts from generation 1.
#[test]
fn failed_round_leaves_the_previous_generation_whole() {
    use std::os::unix::fs::MetadataExt;
    let so = compile_example("core/tools/tests/c/fault_exit_plugin.c", true);
    let job = Job::new("generation");
    let mut procs = launch_ranks(
        &job,
        2,
        &so,
        &[("FAULT_RANK", "1"), ("FAULT_GEN", "2")],
        "step 1 ok",
    );
    let out =
        |r: i32| std::fs::read_to_string(job.dir.join(format!("out{r}.txt"))).unwrap_or_default();
    job.checkpoint();
    let snap = |imgs: &[std::path::PathBuf]| -> Vec<(String, u64, Vec<u8>)> {
        imgs.iter()
            .map(|p| {
                (
                    p.display().to_string(),
                    std::fs::metadata(p).unwrap().ino(),
                    std::fs::read(p).unwrap(),
                )
            })
            .collect()
    };
    let gen1 = snap(&job.images());
    assert_eq!(gen1.len(), 2);
    let o = job.command(&["-bc"]);
    assert!(
        !o.status.success(),
        "a round that lost a process succeeded: {o:?}"
    );
    let _ = wait_timeout(&mut procs[1], TIMEOUT).expect("rank 1 did not exit");
    let tmp_left: Vec<_> = std::fs::read_dir(&job.ckpt)
        .unwrap()
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.contains(".tmp") || n.ends_with(".partial")
        })
        .collect();
    assert!(tmp_left.is_empty(), "temporary images left: {tmp_left:?}");
    assert!(
        snap(&job.images()) == gen1,
        "the failed round changed the images of generation 1"
    );
    let _ = procs[0].kill();
    let _ = procs[0].wait();
    let mut r = tool("dmtcp_restart")
        .args(["-j", "-h", "127.0.0.1", "-p", &job.port.to_string()])
        .args(job.images())
        .current_dir(&job.dir)
        .env("FAULT_GEN", "0")
        .spawn()
        .unwrap();
    let st = wait_timeout(&mut r, TIMEOUT).expect("restart did not finish");
    assert!(st.success(), "restart from generation 1 failed");
    for rank in 0..2 {
        assert!(
            out(rank).contains("RESULT ") && !out(rank).contains("BAD"),
            "rank {rank}: {}",
            out(rank)
        );
    }
}

/// A checkpoint requested while the last round's resume hooks still wait
/// at a barrier (here one process reaches it a second late) is not lost:
/// the request that arrives during the barrier is kept for afterwards, and
/// the second `-bc` completes (it hung before: the barrier's wait dropped
/// the request).
#[test]
fn checkpoint_requested_during_a_resume_barrier_happens() {
    let so = compile_example("core/tools/tests/c/slow_resume_plugin.c", true);
    let job = Job::new("resume-barrier");
    let mut procs = launch_ranks(&job, 2, &so, &[], "step 1 ok");
    job.checkpoint();
    let mut c = tool("dmtcp_command")
        .args(["-h", "127.0.0.1", "-p", &job.port.to_string(), "-bc"])
        .spawn()
        .unwrap();
    let st = wait_timeout(&mut c, std::time::Duration::from_secs(20));
    if st.is_none() {
        let _ = c.kill();
    }
    for p in procs.iter_mut() {
        let _ = p.kill();
        let _ = p.wait();
    }
    assert!(
        st.is_some_and(|s| s.success()),
        "the second checkpoint did not complete: {st:?}"
    );
}

/// The coordinator dies while a round waits at its `suspended` barrier (one
/// process still in its pre-suspend hook): every process that ran its
/// pre-suspend hooks runs its resume hooks too (a plugin that let go of
/// something there takes it back), and the programs go on without a
/// coordinator.
#[test]
fn a_round_broken_before_the_image_still_resumes_the_plugins() {
    let so = compile_example("core/tools/tests/c/stalled_round_plugin.c", true);
    let mut job = Job::new("stalled-round");
    let mut procs = launch_ranks(&job, 2, &so, &[("STEPS", "100000")], "step 1 ok");
    let dir = job.dir.clone();
    let events =
        |r: i32| std::fs::read_to_string(dir.join(format!("events{r}.txt"))).unwrap_or_default();
    let out = |r: i32| std::fs::read_to_string(dir.join(format!("out{r}.txt"))).unwrap_or_default();
    let c = job.command(&["-c"]);
    assert!(c.status.success(), "{c:?}");
    let deadline = std::time::Instant::now() + TIMEOUT;
    while !(events(0).contains("presuspend") && events(1).contains("presuspend")) {
        assert!(
            std::time::Instant::now() < deadline,
            "no pre-suspend hooks ran"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    job.kill_coordinator();
    std::fs::write(dir.join("release"), "").unwrap();
    let lines = |r: i32| out(r).lines().count();
    let before = [lines(0), lines(1)];
    let deadline = std::time::Instant::now() + TIMEOUT;
    while !(0..2).all(|r| events(r).ends_with("resume\n") && lines(r) > before[r as usize] + 2) {
        if std::time::Instant::now() > deadline {
            for p in procs.iter_mut() {
                let _ = p.kill();
                let _ = p.wait();
            }
            panic!(
                "after the broken round: events0 {:?}, events1 {:?}, out0 {} -> {} lines, out1 {} -> {}",
                events(0),
                events(1),
                before[0],
                lines(0),
                before[1],
                lines(1)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    for p in procs.iter_mut() {
        let _ = p.kill();
        let _ = p.wait();
    }
    for r in 0..2 {
        assert_eq!(events(r), "presuspend\nresume\n", "rank {r}");
    }
}
