//! `testrig`: bring a multi-node rig up by hand, or clean up after dead ones.

use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use testrig::Rig;

const USAGE: &str = "\
usage:
  testrig up N [--sshd] [--slurm] [--shared-dirs] [--share PATH]...
      bring up N nodes (--slurm: also a SLURM cluster, slurmctld on node0),
      print KEY=value lines describing them, then '# ready';
      keep running until SIGINT/SIGTERM/SIGHUP, then tear down
  testrig cleanup
      remove every rig whose owner process is dead
  testrig serve ADDR:PORT [COUNT]
      (probe) accept COUNT connections (default 1): read a line, answer
      '<hostname> <line>'; prints 'listening' once bound
  testrig connect HOST:PORT MESSAGE
      (probe) send MESSAGE, print the answer";

fn main() {
    if let Err(e) = run() {
        eprintln!("testrig: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("up") => up(&args[1..]),
        Some("cleanup") => {
            let ids = testrig::cleanup_stale()?;
            if ids.is_empty() {
                println!("nothing to clean up");
            } else {
                println!("removed stale rigs {ids:?}");
            }
            Ok(())
        }
        Some("serve") => serve(&args[1..]),
        Some("connect") => connect(&args[1..]),
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            Ok(())
        }
        _ => bail!("{USAGE}"),
    }
}

fn up(args: &[String]) -> Result<()> {
    let mut it = args.iter();
    let n: usize = it
        .next()
        .context("missing node count")?
        .parse()
        .context("node count")?;
    let mut b = Rig::builder(n);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--sshd" => b = b.sshd(true),
            "--slurm" => b = b.slurm(true),
            "--shared-dirs" => b = b.private_dirs(false),
            "--share" => b = b.share(it.next().context("--share needs a path")?),
            _ => bail!("unknown option {a}\n{USAGE}"),
        }
    }
    // Register before bringing the rig up, so that a signal during setup also
    // ends in a teardown.
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ])?;
    let rig = b.up()?;
    let mut out = std::io::stdout().lock();
    for (k, v) in rig.env() {
        writeln!(out, "{k}={v}")?;
    }
    for node in rig.nodes() {
        writeln!(
            out,
            "# enter {}: nsenter -t {} -n -u -m -i --wd=/ bash",
            node.name(),
            node.pid()
        )?;
    }
    writeln!(out, "# ready")?;
    out.flush()?;
    drop(out);
    let sig = signals.forever().next();
    eprintln!("testrig: signal {sig:?}, tearing down rig {}", rig.id());
    rig.down()
}

fn serve(args: &[String]) -> Result<()> {
    let addr = args.first().context("missing ADDR:PORT")?;
    let count: usize = args.get(1).map(|c| c.parse()).transpose()?.unwrap_or(1);
    let listener = TcpListener::bind(addr).with_context(|| format!("bind {addr}"))?;
    println!("listening");
    std::io::stdout().flush()?;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")?;
    for _ in 0..count {
        let (stream, _) = listener.accept()?;
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line)?;
        writeln!(&stream, "{} {}", host.trim(), line.trim())?;
    }
    Ok(())
}

fn connect(args: &[String]) -> Result<()> {
    let addr = args.first().context("missing HOST:PORT")?;
    let msg = args.get(1).context("missing MESSAGE")?;
    let stream = TcpStream::connect(addr.as_str()).with_context(|| format!("connect {addr}"))?;
    writeln!(&stream, "{msg}")?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    print!("{line}");
    Ok(())
}
