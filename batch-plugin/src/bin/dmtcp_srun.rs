//! `dmtcp_srun`: SLURM's srun for the computation (docs/batch.md).
//!
//! - `dmtcp_srun --srun SRUN -- ARGS` (what `dmtcp_launch srun ARGS` execs,
//!   without the checkpointer's libraries): execs `SRUN ARGS` outside the
//!   computation with the task command prefixed by
//!
//!       <dir>/dmtcp_launch --join-coordinator --coord-host H --coord-port P --ckptdir D [--no-gzip|--gzip] [-q..]
//!
//!   (`<dir>`: this program's directory; the values from the environment
//!   dmtcp_launch set: DMTCP_COORD_HOST, unless a loopback name, else this
//!   host's name; DMTCP_COORD_PORT, DMTCP_CHECKPOINT_DIR, DMTCP_GZIP,
//!   DMTCP_QUIET). srun passes the environment on to the tasks (so
//!   DMTCP_PLUGIN and the other settings reach their dmtcp_launch). srun
//!   itself, and slurmstepd, stay outside the computation: no image has
//!   them.
//! - `dmtcp_srun --relay --srun SRUN -- ARGS` (what libdmtcp_batch.so
//!   execs in place of an srun run by a process of the computation): the
//!   stand-in that stays in the computation (`relay.rs`), each task
//!   wrapped as above and then by `dmtcp_srun --task` (`task.rs`).

#[path = "../../../ssh-plugin/src/capi.rs"]
mod capi;
#[path = "../fork.rs"]
mod fork;
#[path = "../relay.rs"]
mod relay;
#[path = "../srunargs.rs"]
mod srunargs;
#[path = "../step.rs"]
mod step;
#[path = "../../../ssh-plugin/src/sys.rs"]
mod sys;
#[path = "../task.rs"]
mod task;

use srunargs::Srun;
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

const USAGE: &str = "usage: dmtcp_srun [--relay] --srun SRUN -- [srun options] program [args]";

fn main() {
    let quiet = std::env::var("DMTCP_QUIET")
        .ok()
        .and_then(|q| q.parse().ok())
        .unwrap_or(0);
    dmtcp_common::log::init_tool("dmtcp_srun", "dmtcp_srun: ", 0, quiet);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (relay, args) = match args.split_first() {
        Some((f, rest)) if f == "--relay" => (true, rest),
        Some((f, rest)) if f == "--task" => match rest.split_first() {
            Some((sep, prog)) if sep == "--" => task::run(prog),
            _ => usage(),
        },
        _ => (false, args.as_slice()),
    };
    let (srun, rest) = match args {
        [flag, srun, sep, rest @ ..] if flag == "--srun" && sep == "--" => {
            (srun.clone(), rest.to_vec())
        }
        _ => usage(),
    };
    // Outside the checkpointer (the plugin loaded without the engine) the
    // stand-in has nothing to stand in for.
    let relay = relay && capi::enabled();
    let new_args = match srunargs::parse(&rest) {
        Ok(Srun::Tasks(k)) => {
            let mut v = rest[..k].to_vec();
            v.extend(launch_words());
            if relay {
                v.extend([
                    bin_dir().join("dmtcp_srun").display().to_string(),
                    "--task".into(),
                    "--".into(),
                ]);
            }
            v.extend_from_slice(&rest[k..]);
            v
        }
        Ok(Srun::NoTasks) => {
            exec_outside(&srun, &rest);
        }
        Err(m) => {
            dmtcp_common::log_error!("{m}");
            std::process::exit(2);
        }
    };
    if relay {
        let path = find_program(&srun).unwrap_or_else(|| {
            dmtcp_common::log_error!("{srun}: command not found");
            std::process::exit(127)
        });
        relay::run(&path, &new_args, outside_env());
    }
    exec_outside(&srun, &new_args);
}

fn usage() -> ! {
    dmtcp_common::log_error!("{USAGE}");
    std::process::exit(2);
}

/// Exec `srun args` outside the computation.
fn exec_outside(srun: &str, args: &[String]) -> ! {
    let e = Command::new(srun)
        .args(args)
        .env_clear()
        .envs(outside_env())
        .exec();
    dmtcp_common::log_error!("cannot run {srun}: {e}");
    std::process::exit(if e.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    });
}

/// `prog` as a path: itself if it has a slash, else found in PATH.
fn find_program(prog: &str) -> Option<PathBuf> {
    if prog.contains('/') {
        return Some(PathBuf::from(prog));
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/bin:/bin"));
    std::env::split_paths(&path)
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}

/// The directory of this program (dmtcp_launch is next to it).
fn bin_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Where tasks on other nodes reach the coordinator.
fn coord_host() -> String {
    let h = std::env::var("DMTCP_COORD_HOST").unwrap_or_default();
    let loopback = matches!(
        h.as_str(),
        "" | "localhost" | "localhost.localdomain" | "ip6-localhost"
    ) || h
        .parse::<std::net::IpAddr>()
        .is_ok_and(|a| a.is_loopback() || a.is_unspecified());
    if loopback {
        sys::hostname()
    } else {
        h
    }
}

/// `dmtcp_launch --join-coordinator ...` put before each task's command.
fn launch_words() -> Vec<String> {
    let mut w = vec![
        bin_dir().join("dmtcp_launch").display().to_string(),
        "--join-coordinator".into(),
        "--coord-host".into(),
        coord_host(),
    ];
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if let Some(p) = var("DMTCP_COORD_PORT") {
        w.extend(["--coord-port".into(), p]);
    }
    if let Some(d) = var("DMTCP_CHECKPOINT_DIR") {
        w.extend(["--ckptdir".into(), d]);
    }
    match var("DMTCP_GZIP").as_deref() {
        Some("0") => w.push("--no-gzip".into()),
        Some("1") => w.push("--gzip".into()),
        _ => {}
    }
    let quiet: u32 = var("DMTCP_QUIET").and_then(|q| q.parse().ok()).unwrap_or(0);
    w.extend((0..quiet.min(2)).map(|_| "-q".to_string()));
    w.push("--".into());
    w
}

/// The environment of srun: without the checkpointer's libraries in
/// LD_PRELOAD (so neither srun nor what it starts is preloaded by us).
fn outside_env() -> Vec<(OsString, OsString)> {
    std::env::vars_os()
        .filter_map(|(k, v)| {
            if k != "LD_PRELOAD" {
                return Some((k, v));
            }
            let s = v.to_string_lossy();
            let kept: Vec<&str> = s
                .split([':', ' '])
                .filter(|p| !p.is_empty() && !p.contains("libdmtcp"))
                .collect();
            (!kept.is_empty()).then(|| (k, OsString::from(kept.join(":"))))
        })
        .collect()
}
