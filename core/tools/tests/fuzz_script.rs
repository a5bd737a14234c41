//! The restart script's arguments, fuzzed (issue 19, "Bad input"): a
//! script for images of two hosts (this one and `nodeB`) is run with
//! random option lists whose values are drawn mostly from shell
//! metacharacters and command substitutions. Stubs stand in for
//! `dmtcp_restart` (records its argv), `dmtcp_command` (a coordinator is
//! there) and ssh (`DMTCP_RSH`: runs the remote command with `sh -c`, as
//! the remote login shell would). Every run must end within a bound, never
//! run a command a value smuggled in, pass every value to `dmtcp_restart`
//! as one argument, unchanged, on both hosts, and explain a refusal on
//! stderr. `DMTCP_FUZZ_CASES=n` sets the number of cases (bench/fuzz.sh).

mod common;
use common::*;
use dmtcp::script::{render, ScriptInfo};
use proptest::prelude::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

struct Setup {
    dir: PathBuf,
    script: PathBuf,
    marker: PathBuf,
    host: String,
}

fn setup() -> Setup {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("fuzz-script-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let stub = |name: &str, body: &str| {
        use std::os::unix::fs::PermissionsExt;
        let p = bin.join(name);
        std::fs::write(&p, format!("#!/bin/bash\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    // One record per run: a marker, then each argument, NUL-terminated.
    stub(
        "dmtcp_restart",
        r#"printf '%s\0' @@run@@ "$@" >> "$FUZZ_LOG""#,
    );
    stub("dmtcp_command", "exit 0");
    // The remote login shell (bash: the script quotes with printf %q).
    stub(
        "rsh",
        r#"[ "$1" = -n ] && shift; shift; exec /bin/bash -c "$1""#,
    );
    let host = dmtcp_common::hostname();
    let info = ScriptInfo {
        comp_id: "fuzz".into(),
        generation: 1,
        coord_host: host.clone(),
        coord_port: 7779,
        interval: 0,
        restart_bin: bin.join("dmtcp_restart").display().to_string(),
        ckpt_dir: dir.join("ckpt").display().to_string(),
        images: vec!["ckpt_a_1.dmtcp".into(), "ckpt_b_2.dmtcp".into()],
        hosts: vec![host.clone(), "nodeB".into()],
    };
    let script = dir.join("dmtcp_restart_script.sh");
    std::fs::write(&script, render(&info)).unwrap();
    let marker = dir.join("pwned");
    Setup {
        dir,
        script,
        marker,
        host,
    }
}

/// A value: mostly pieces that a shell would act on.
fn value(marker: &Path) -> impl Strategy<Value = String> {
    let m = marker.display().to_string();
    let piece = prop_oneof![
        Just(format!("$(touch {m})")),
        Just(format!("`touch {m}`")),
        Just(format!(";touch {m};")),
        Just(format!("&& touch {m}")),
        Just(format!("| touch {m}")),
        Just(format!("\ntouch {m}\n")),
        Just("'".to_string()),
        Just("\"".to_string()),
        Just("\\".to_string()),
        Just(" ".to_string()),
        Just("*".to_string()),
        Just("$HOME".to_string()),
        Just("-x".to_string()),
        Just("--help".to_string()),
        Just("7779".to_string()),
        Just("localhost".to_string()),
        Just("nodeC".to_string()),
        Just("é€".to_string()),
        "[a-z0-9./_-]{0,8}",
    ];
    proptest::collection::vec(piece, 0..4).prop_map(|v| v.concat())
}

#[derive(Clone, Debug)]
enum Arg {
    Opt(&'static str, String),
    /// An option with its value missing (last on the line).
    Bare(&'static str),
    /// Not an option (it never starts like one): refused.
    Unknown(String),
}

fn args(marker: &Path) -> impl Strategy<Value = Vec<Arg>> {
    let opt = prop_oneof![
        Just("-h"),
        Just("--coord-host"),
        Just("--host"),
        Just("-p"),
        Just("--coord-port"),
        Just("--port"),
        Just("-i"),
        Just("--interval"),
        Just("-d"),
        Just("--restartdir"),
    ];
    let one = prop_oneof![
        8 => (opt.clone(), value(marker)).prop_map(|(o, v)| Arg::Opt(o, v)),
        1 => value(marker).prop_map(|v| Arg::Unknown(format!("zz{v}"))),
    ];
    (
        proptest::collection::vec(one, 0..5),
        proptest::option::weighted(0.1, opt),
    )
        .prop_map(|(mut v, bare)| {
            v.extend(bare.map(Arg::Bare));
            v
        })
}

/// The runs of `dmtcp_restart` the log recorded: one argv each.
fn runs(log: &Path) -> Vec<Vec<String>> {
    let bytes = std::fs::read(log).unwrap_or_default();
    let mut out: Vec<Vec<String>> = Vec::new();
    let bytes = bytes.strip_suffix(&[0]).unwrap_or(&bytes);
    for f in bytes.split(|&b| b == 0) {
        let f = String::from_utf8_lossy(f).into_owned();
        if f == "@@run@@" {
            out.push(Vec::new());
        } else if let Some(r) = out.last_mut() {
            r.push(f);
        }
    }
    out
}

fn after<'a>(argv: &'a [String], opt: &str) -> Option<&'a str> {
    argv.iter()
        .position(|a| a == opt)
        .and_then(|i| argv.get(i + 1))
        .map(String::as_str)
}

fn check(s: &Setup, case: usize, list: &[Arg]) -> Result<(), TestCaseError> {
    let log = s.dir.join(format!("log-{case}"));
    let _ = std::fs::remove_file(&s.marker);
    let mut argv: Vec<String> = Vec::new();
    for a in list {
        match a {
            Arg::Opt(o, v) => argv.extend([o.to_string(), v.clone()]),
            Arg::Bare(o) => argv.push(o.to_string()),
            Arg::Unknown(v) => argv.push(v.clone()),
        }
    }
    let mut c = std::process::Command::new("bash")
        .arg(&s.script)
        .args(&argv)
        .env("FUZZ_LOG", &log)
        .env("DMTCP_RSH", s.dir.join("bin/rsh"))
        .env_remove("DMTCP_RESTART")
        .env_remove("DMTCP_COORD_HOST")
        .env_remove("DMTCP_COORD_PORT")
        .env_remove("SLURM_JOB_ID")
        .env_remove("SLURM_JOB_NODELIST")
        .env_remove("PBS_NODEFILE")
        .current_dir(&s.dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let st = wait_timeout(&mut c, Duration::from_secs(20));
    let mut err = String::new();
    let _ = std::io::Read::read_to_string(&mut c.stderr.take().unwrap(), &mut err);
    let st = match st {
        Some(st) => st,
        None => {
            let _ = c.kill();
            return Err(TestCaseError::fail(format!(
                "{argv:?}: did not end in 20 s"
            )));
        }
    };
    prop_assert!(
        !s.marker.exists(),
        "{argv:?}: a value ran a command (stderr: {err})"
    );
    if !st.success() {
        prop_assert!(
            !err.trim().is_empty(),
            "{argv:?}: exit {st} with nothing on stderr"
        );
        return Ok(());
    }
    // Accepted: both hosts' dmtcp_restart got every value whole.
    let last = |names: &[&str]| {
        list.iter().rev().find_map(|a| match a {
            Arg::Opt(o, v) if names.contains(o) => Some(v.clone()),
            _ => None,
        })
    };
    let recs = runs(&log);
    prop_assert_eq!(recs.len(), 2, "{:?}: dmtcp_restart runs {:?}", argv, recs);
    let port = last(&["-p", "--coord-port", "--port"]).unwrap_or_else(|| "7779".into());
    let interval = last(&["-i", "--interval"]).unwrap_or_else(|| "0".into());
    let host = last(&["-h", "--coord-host", "--host"]).unwrap_or_else(|| s.host.clone());
    let dir =
        last(&["-d", "--restartdir"]).unwrap_or_else(|| s.dir.join("ckpt").display().to_string());
    for r in &recs {
        prop_assert_eq!(
            after(r, "--coord-port"),
            Some(port.as_str()),
            "{:?}: {:?}",
            argv,
            r
        );
        prop_assert_eq!(
            after(r, "--interval"),
            Some(interval.as_str()),
            "{:?}: {:?}",
            argv,
            r
        );
        let local_name = matches!(host.as_str(), "localhost" | "::1") || host.starts_with("127.");
        if !local_name {
            prop_assert_eq!(
                after(r, "--coord-host"),
                Some(host.as_str()),
                "{:?}: {:?}",
                argv,
                r
            );
        }
        let img = r.last().cloned().unwrap_or_default();
        prop_assert!(
            img == format!("{dir}/ckpt_a_1.dmtcp") || img == format!("{dir}/ckpt_b_2.dmtcp"),
            "{:?}: image argument {:?}",
            argv,
            img
        );
    }
    let _ = std::fs::remove_file(&log);
    Ok(())
}

#[test]
fn restart_script_arguments() {
    let s = setup();
    let cases = std::env::var("DMTCP_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        ..Default::default()
    });
    let n = std::sync::atomic::AtomicUsize::new(0);
    let r = runner.run(&args(&s.marker), |list| {
        let k = n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        check(&s, k, &list)
    });
    if let Err(e) = r {
        panic!("{e}");
    }
    let _ = std::fs::remove_dir_all(&s.dir);
}
