//! `dmtcp_launch srun` on the rig's real SLURM cluster: needs root, gcc,
//! slurmctld, slurmd, slurm-client and munge. Build the workspace first
//! (`cargo build --release --workspace`): the tools are found next to the
//! test binary's target directory.

mod common;

use common::{bin, read, sh, task_lines, wait_for};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use testrig::Rig;

/// Builds the counter program into `dir`; the srun task line that runs it
/// for `n` lines (20 ms apart), each task printing "task<rank> <i>".
fn counter_task(dir: &Path, n: usize) -> String {
    let counter = dir.join("counter");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ssh-plugin/tests/c/counter.c");
    assert!(Command::new("cc")
        .args(["-O2", "-o"])
        .arg(&counter)
        .arg(&src)
        .status()
        .unwrap()
        .success());
    format!(
        "sh -c 'exec {} task$SLURM_PROCID {n} 20'",
        counter.display()
    )
}

/// `dmtcp_launch srun -N2 prog` in an allocation of node0 and node1: the
/// tasks (one per node) are the computation, srun is not; checkpointed and
/// killed, then restarted by the restart script in another allocation,
/// on node1 and node2, placed there with srun. Each task's lines, before
/// and after, are the bare run's.
#[test]
fn srun_job_restarts_in_another_allocation() {
    let rig = Rig::builder(3).slurm(true).up().unwrap();
    let dir = rig.shared_dir();
    let n = 300;
    let task = counter_task(&dir, n);

    let mut bare = sh(
        &rig,
        &dir,
        "bare",
        &format!("salloc -N2 -w node0,node1 srun -N2 {task}"),
    );
    assert!(
        bare.wait().unwrap().success(),
        "{}",
        read(&dir.join("bare.err"))
    );
    let bare = read(&dir.join("bare.out"));
    for t in 0..2 {
        assert_eq!(task_lines(&bare, t).len(), n, "bare run: {bare}");
    }

    let ck = dir.join("ck");
    std::fs::create_dir(&ck).unwrap();
    let port_file = dir.join("port");
    let (launch, command) = (bin("dmtcp_launch"), bin("dmtcp_command"));
    let mut job = sh(
        &rig,
        &dir,
        "job",
        &format!(
            "salloc -N2 -w node0,node1 {} --new-coordinator -p 0 --port-file {} -c {} srun -N2 {task}",
            launch.display(),
            port_file.display(),
            ck.display()
        ),
    );
    let port: String = wait_for("the coordinator", Duration::from_secs(20), || {
        Some(read(&port_file).trim().to_string()).filter(|p| !p.is_empty())
    });
    let out1 = dir.join("job.out");
    wait_for("50 lines of each task", Duration::from_secs(30), || {
        (0..2)
            .all(|t| task_lines(&read(&out1), t).len() >= 50)
            .then_some(())
    });
    let dmtcp_command = |args: &[&str]| {
        let o = rig
            .node(0)
            .command(&command)
            .args(["-p", &port])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let list = dmtcp_command(&["-l"]);
    assert!(
        list.contains("counter[") && list.contains("@node0") && list.contains("@node1"),
        "{list}"
    );
    assert!(
        !list.contains("srun") && !list.contains("slurmstepd"),
        "{list}"
    );
    dmtcp_command(&["--kcheckpoint"]);
    job.wait().unwrap();
    let images: Vec<String> = std::fs::read_dir(&ck)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|f| f.ends_with(".dmtcp"))
        .collect();
    assert_eq!(images.len(), 2, "{images:?}");
    assert!(
        images.iter().all(|i| i.starts_with("ckpt_counter_")),
        "{images:?}"
    );
    let before = read(&out1);
    for t in 0..2 {
        let l = task_lines(&before, t).len();
        assert!(
            (50..n).contains(&l),
            "task {t} printed {l} lines before the checkpoint: {before}"
        );
    }

    // A new allocation on other nodes runs the restart script.
    let mut restart = sh(
        &rig,
        &dir,
        "restart",
        &format!(
            "salloc -N2 -w node1,node2 {}",
            ck.join("dmtcp_restart_script.sh").display()
        ),
    );
    // The restarted tasks run on the new allocation's nodes, under the
    // coordinator the script started here.
    let list = wait_for("the restarted tasks", Duration::from_secs(30), || {
        let l = dmtcp_command(&["-l"]);
        (l.matches("counter[").count() == 2).then_some(l)
    });
    assert!(
        list.contains("@node1") && list.contains("@node2") && !list.contains("@node0"),
        "{list}"
    );
    let st = restart.wait().unwrap();
    assert!(
        st.success(),
        "restart: {st} {}",
        read(&dir.join("restart.err"))
    );
    let after = read(&dir.join("restart.out"));
    for t in 0..2 {
        let mut all = task_lines(&before, t);
        all.extend(task_lines(&after, t));
        assert_eq!(
            all,
            task_lines(&bare, t),
            "task {t}: before {before}\nafter {after}"
        );
    }
}

/// The example batch script (examples/slurm/dmtcp_job.sbatch) submitted
/// with `sbatch` runs `srun -N2` tasks under the checkpointer; the test
/// sends the batch shell USR1 (`scancel --signal=USR1 --batch`, what
/// `--signal=B:USR1@60` sends before the time limit): the script
/// checkpoints the job, requeues it, and its second start restarts from
/// the checkpoint. The job ends COMPLETED after one restart, and each
/// task's lines in the job's output (appended across both starts) are the
/// bare run's.
#[test]
fn example_sbatch_script_checkpoints_requeues_and_restarts() {
    let rig = Rig::builder(2).slurm(true).up().unwrap();
    let dir = rig.shared_dir();
    let n = 400;
    let task = counter_task(&dir, n);
    let mut bare = sh(&rig, &dir, "bare", &format!("salloc -N2 srun -N2 {task}"));
    assert!(
        bare.wait().unwrap().success(),
        "{}",
        read(&dir.join("bare.err"))
    );
    let bare = read(&dir.join("bare.out"));

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/slurm/dmtcp_job.sbatch");
    let path = format!(
        "{}:{}",
        bin("dmtcp_launch").parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = dir.join("job.txt");
    let submit = format!(
        "PATH={path} DMTCP_CKPT_ROOT={} sbatch --parsable -N2 -o {} {} srun -N2 {task}",
        dir.join("ckpt").display(),
        out.display(),
        script.display()
    );
    let mut s = sh(&rig, &dir, "sbatch", &submit);
    assert!(
        s.wait().unwrap().success(),
        "{}",
        read(&dir.join("sbatch.err"))
    );
    let id = read(&dir.join("sbatch.out")).trim().to_string();
    let on = |cmd: &str| {
        let o = rig
            .node(0)
            .command("sh")
            .args(["-c", cmd])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    wait_for("100 lines of each task", Duration::from_secs(60), || {
        (0..2)
            .all(|t| task_lines(&read(&out), t).len() >= 100)
            .then_some(())
    });
    on(&format!("scancel --signal=USR1 --batch {id}"));
    let state = wait_for(
        "the job to complete after its restart",
        Duration::from_secs(120),
        || {
            let s = on(&format!("scontrol show job {id}"));
            (s.contains("JobState=COMPLETED") || s.contains("JobState=FAILED")).then_some(s)
        },
    );
    let text = read(&out);
    assert!(
        state.contains("JobState=COMPLETED") && state.contains("Restarts=1"),
        "{state}\n{text}"
    );
    assert!(text.contains("dmtcp_job: restart 1 of job"), "{text}");
    for t in 0..2 {
        assert_eq!(
            task_lines(&text, t),
            task_lines(&bare, t),
            "task {t}: {text}"
        );
    }
}

/// A batch script under `dmtcp_launch` runs `srun -N2` itself (the batch
/// plugin turns it into srun's stand-in); each task prints its lines and
/// exits 3. Checkpointed, killed, and restarted by the restart script in
/// another allocation (node1, node2): the tasks' lines before (in the
/// job's output) and after (in the restart's: the restart steps' srun
/// carries them) are the bare run's, and the script, restored with the
/// stand-in, gets the step's status from it after the restart (`srun
/// status 3`), as in the bare run.
#[test]
fn srun_run_by_a_batch_script_restarts_with_its_status() {
    let rig = Rig::builder(3).slurm(true).up().unwrap();
    let dir = rig.shared_dir();
    let n = 300;
    let task = counter_task(&dir, n)
        .replace("'exec ", "'")
        .replace(" 20'", " 20; exit 3'");
    let script = dir.join("job.sh");
    std::fs::write(
        &script,
        format!("#!/bin/sh\nsrun -N2 {task}\necho \"srun status $?\"\n"),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut bare = sh(
        &rig,
        &dir,
        "bare",
        &format!("salloc -N2 -w node0,node1 {}", script.display()),
    );
    bare.wait().unwrap();
    let bare = read(&dir.join("bare.out"));
    assert!(bare.contains("srun status 3"), "bare run: {bare}");
    for t in 0..2 {
        assert_eq!(task_lines(&bare, t).len(), n, "bare run: {bare}");
    }

    let ck = dir.join("ck");
    std::fs::create_dir(&ck).unwrap();
    let port_file = dir.join("port");
    let mut job = sh(
        &rig,
        &dir,
        "job",
        &format!(
            "salloc -N2 -w node0,node1 {} --new-coordinator -p 0 --port-file {} -c {} {}",
            bin("dmtcp_launch").display(),
            port_file.display(),
            ck.display(),
            script.display()
        ),
    );
    let port: String = wait_for("the coordinator", Duration::from_secs(20), || {
        Some(read(&port_file).trim().to_string()).filter(|p| !p.is_empty())
    });
    let out1 = dir.join("job.out");
    wait_for("50 lines of each task", Duration::from_secs(30), || {
        (0..2)
            .all(|t| task_lines(&read(&out1), t).len() >= 50)
            .then_some(())
    });
    // job.sh, the stand-in; per node a task parent, sh and counter.
    let (list, _) = common::dmtcp_command(&rig, &port, &["-l"]);
    let procs = common::listed(&list);
    assert_eq!(procs.len(), 8, "{list}");
    let relays = procs.iter().filter(|(p, _)| p == "dmtcp_srun").count();
    assert_eq!(relays, 3, "{list}");
    assert!(
        !procs.iter().any(|(p, _)| p == "srun" || p == "slurmstepd"),
        "{list}"
    );
    let (o, code) = common::dmtcp_command(&rig, &port, &["--kcheckpoint"]);
    assert_eq!(code, Some(0), "{o}");
    job.wait().unwrap();
    let before = read(&out1);
    assert!(!before.contains("srun status"), "{before}");

    let mut restart = sh(
        &rig,
        &dir,
        "restart",
        &format!(
            "salloc -N2 -w node1,node2 {}",
            ck.join("dmtcp_restart_script.sh").display()
        ),
    );
    // The restart script's own status is the worst of its per-node
    // dmtcp_restarts' (each the status of its node's restored processes,
    // the tasks' parents exiting 3 among them): not the point here.
    let _ = restart.wait().unwrap();
    let after = read(&dir.join("restart.out"));
    for t in 0..2 {
        let mut all = task_lines(&before, t);
        all.extend(task_lines(&after, t));
        assert_eq!(
            all,
            task_lines(&bare, t),
            "task {t}: before {before}\nafter {after}"
        );
    }
    let end = read(&out1);
    assert!(end.contains("srun status 3"), "job.sh's output: {end}");
}
