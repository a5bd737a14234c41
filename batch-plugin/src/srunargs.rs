//! srun's command line: where its options end and the task command begins.

/// Short options of srun (22.05) that take an argument (`-N 2` or `-N2`).
const SHORT_WITH_ARG: &[u8] = b"AbcdDeiJLMmnNopqrSTtWCwxBG";

/// Long options of srun (22.05) whose argument is required, so that it may
/// be the next word (`--nodes 2` as well as `--nodes=2`). Options whose
/// argument is optional (`--bcast`, `--compress`, `--exclusive`, `--nice`,
/// `--propagate`, `--send-libs`, `--immediate`, `--kill-on-bad-exit`, `--x11`)
/// take it only after `=`.
const LONG_WITH_ARG: &[&str] = &[
    "account",
    "acctg-freq",
    "bb",
    "bbf",
    "bcast-exclude",
    "begin",
    "cpus-per-task",
    "comment",
    "container",
    "cpu-freq",
    "dependency",
    "deadline",
    "delay-boot",
    "chdir",
    "export",
    "error",
    "epilog",
    "gres",
    "gres-flags",
    "input",
    "jobid",
    "job-name",
    "licenses",
    "clusters",
    "distribution",
    "mail-type",
    "mail-user",
    "mcs-label",
    "mpi",
    "ntasks",
    "ntasks-per-node",
    "nodes",
    "output",
    "het-group",
    "partition",
    "power",
    "priority",
    "prolog",
    "profile",
    "qos",
    "relative",
    "core-spec",
    "signal",
    "slurmd-debug",
    "switches",
    "task-epilog",
    "task-prolog",
    "thread-spec",
    "threads",
    "time",
    "time-min",
    "wait",
    "wckey",
    "cluster-constraint",
    "constraint",
    "mem",
    "mincpus",
    "reservation",
    "tmp",
    "nodelist",
    "exclude",
    "mem-per-cpu",
    "sockets-per-node",
    "cores-per-socket",
    "threads-per-core",
    "extra-node-info",
    "ntasks-per-core",
    "ntasks-per-socket",
    "cpus-per-gpu",
    "gpus",
    "gpu-bind",
    "gpu-freq",
    "gpus-per-node",
    "gpus-per-socket",
    "gpus-per-task",
    "mem-per-gpu",
    "cpu-bind",
    "mem-bind",
    "hint",
    "accel-bind",
    "network",
    "open-mode",
    "uid",
    "gid",
    "tres-per-task",
    "container-id",
    "ntasks-per-gpu",
    "tres-bind",
];

/// What srun was asked to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Srun {
    /// Run a task command: it starts at this index of the arguments (after
    /// a `--` if there was one).
    Tasks(usize),
    /// No task command (`--help`, `--usage`, `--version`, or nothing):
    /// srun runs as it is.
    NoTasks,
}

/// Where the task command starts in srun's arguments (without argv[0]).
/// `--multi-prog` (the command is a configuration file naming a program
/// per task) is refused: its programs cannot be wrapped.
pub fn parse(args: &[String]) -> Result<Srun, String> {
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        if a == "--" {
            return Ok(if i + 1 < args.len() {
                Srun::Tasks(i + 1)
            } else {
                Srun::NoTasks
            });
        }
        if let Some(long) = a.strip_prefix("--") {
            let name = long.split('=').next().unwrap_or(long);
            match name {
                "help" | "usage" | "version" => return Ok(Srun::NoTasks),
                "multi-prog" => {
                    return Err("srun --multi-prog is not supported under the checkpointer".into())
                }
                _ => {}
            }
            if !long.contains('=') && LONG_WITH_ARG.contains(&name) {
                i += 1;
            }
        } else if let Some(short) = a.strip_prefix('-').filter(|s| !s.is_empty()) {
            // Clustered letters: the first that takes an argument takes the
            // rest of the word, or the next word.
            for (k, c) in short.bytes().enumerate() {
                if c == b'h' || c == b'V' {
                    return Ok(Srun::NoTasks);
                }
                if SHORT_WITH_ARG.contains(&c) {
                    if k + 1 == short.len() {
                        i += 1;
                    }
                    break;
                }
            }
        } else {
            return Ok(Srun::Tasks(i));
        }
        i += 1;
    }
    Ok(Srun::NoTasks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Srun, String> {
        parse(&s.split_whitespace().map(String::from).collect::<Vec<_>>())
    }

    #[test]
    fn finds_the_task_command() {
        assert_eq!(p("./prog a b"), Ok(Srun::Tasks(0)));
        assert_eq!(p("-N2 ./prog"), Ok(Srun::Tasks(1)));
        assert_eq!(p("-N 2 -n 4 ./prog -N 3"), Ok(Srun::Tasks(4)));
        assert_eq!(
            p("--nodes 2 --ntasks=4 --overlap -l prog"),
            Ok(Srun::Tasks(5))
        );
        assert_eq!(p("-lN 2 prog"), Ok(Srun::Tasks(2)));
        assert_eq!(p("-lN2 prog"), Ok(Srun::Tasks(1)));
        assert_eq!(
            p("-w node0,node1 --kill-on-bad-exit prog"),
            Ok(Srun::Tasks(3))
        );
        assert_eq!(p("--bcast --exclusive -- prog"), Ok(Srun::Tasks(3)));
        assert_eq!(p("--nodelist node1 -- -weird-prog"), Ok(Srun::Tasks(3)));
    }

    #[test]
    fn no_task_command() {
        assert_eq!(p(""), Ok(Srun::NoTasks));
        assert_eq!(p("--version"), Ok(Srun::NoTasks));
        assert_eq!(p("-N2 --help"), Ok(Srun::NoTasks));
        assert_eq!(p("-N 2"), Ok(Srun::NoTasks));
        assert!(p("--multi-prog tasks.conf").is_err());
    }
}
