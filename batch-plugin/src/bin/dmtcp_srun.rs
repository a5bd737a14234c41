//! `dmtcp_srun --srun SRUN -- ARGS`: run SLURM's srun outside the
//! computation, each of its tasks under `dmtcp_launch --join-coordinator`.
//!
//! `dmtcp_launch srun ARGS` execs this (without the checkpointer's
//! libraries). It execs `SRUN ARGS` with the task command prefixed by
//!
//!     <dir>/dmtcp_launch --join-coordinator --coord-host H --coord-port P --ckptdir D [--no-gzip|--gzip] [-q..]
//!
//! (`<dir>`: this program's directory; the values from the environment
//! dmtcp_launch set: DMTCP_COORD_HOST, unless a loopback name, else this
//! host's name; DMTCP_COORD_PORT, DMTCP_CHECKPOINT_DIR, DMTCP_GZIP,
//! DMTCP_QUIET). srun passes the environment on to the tasks (so
//! DMTCP_PLUGIN and the other settings reach their dmtcp_launch). srun
//! itself, and slurmstepd, stay outside the computation: no image has them.

use dmtcp_batch::srunargs::{self, Srun};
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

const USAGE: &str = "usage: dmtcp_srun --srun SRUN -- [srun options] program [args]";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (srun, rest) = match args.as_slice() {
        [flag, srun, sep, rest @ ..] if flag == "--srun" && sep == "--" => {
            (srun.clone(), rest.to_vec())
        }
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    };
    let new_args = match srunargs::parse(&rest) {
        Ok(Srun::Tasks(k)) => {
            let mut v = rest[..k].to_vec();
            v.extend(launch_words());
            v.extend_from_slice(&rest[k..]);
            v
        }
        Ok(Srun::NoTasks) => rest,
        Err(m) => {
            eprintln!("dmtcp_srun: {m}");
            std::process::exit(2);
        }
    };
    let e = Command::new(&srun)
        .args(&new_args)
        .env_clear()
        .envs(outside_env())
        .exec();
    eprintln!("dmtcp_srun: cannot run {srun}: {e}");
    std::process::exit(if e.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    });
}

/// The directory of this program (dmtcp_launch is next to it).
fn bin_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("."))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
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
        hostname()
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
