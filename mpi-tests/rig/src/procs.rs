//! Process identity for test harnesses: signal a launched job's process
//! group only while its leader is still the process that was launched.

/// When process `pid` started (clock ticks since boot, field 22 of
/// /proc/<pid>/stat), while it exists (running, or a zombie not yet
/// reaped). With its pid this names one process: a pid is reused once its
/// process is reaped, the start time is not.
pub fn proc_start(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name (in parentheses, may hold anything): state is
    // field 3, start time field 22.
    s.get(s.rfind(')')? + 2..)?.split(' ').nth(19)?.parse().ok()
}

/// SIGKILL the process group led by `pid` if `pid` is still the process
/// that started at `start` (see [`proc_start`]): once a leader is reaped,
/// its pid and so its group's id may be another process's, another
/// test's job running at the same time, which a SIGKILL to the old id
/// would kill.
pub fn kill_group_of(pid: u32, start: Option<u64>) {
    if start.is_some() && proc_start(pid) == start {
        // SAFETY: signalling the group a live (or unreaped) leader leads.
        unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A child's start time is known while it runs and while it is a
    /// zombie, and gone once it is reaped; kill_group_of kills a live
    /// group and leaves a reaped leader's old id alone.
    #[test]
    fn start_time_names_one_process() {
        let mut c = std::process::Command::new("sleep");
        c.arg("30");
        std::os::unix::process::CommandExt::process_group(&mut c, 0);
        let mut child = c.spawn().unwrap();
        let pid = child.id();
        let start = proc_start(pid);
        assert!(start.is_some());
        assert!(proc_start(std::process::id()).is_some());
        kill_group_of(pid, start);
        let st = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(st.signal(), Some(libc::SIGKILL));
        assert_eq!(proc_start(pid), None);
        kill_group_of(pid, start); // a reaped leader: nothing to signal
    }
}
