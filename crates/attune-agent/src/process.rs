//! Process groups: signalling, killing and reaping a job's whole process tree.
//!
//! Every action runs as the leader of its own process group, so one `kill(-pgid, ...)` reaches
//! its children and grandchildren. When the agent is PID 1 of its container, orphaned members of
//! the group become its children and are reaped here.

use std::time::Duration;
use tokio::process::Child;
use tokio::time::Instant;

/// How often group membership is checked while waiting for a group to empty.
const GROUP_POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Environment variables of the agent that an action must not inherit: its own settings
/// (`ATTUNE_AGENT_*`), a worker's (`ATTUNE_WORKER_*`: its token and token file among them),
/// the API it enrolls with (`ATTUNE_API_URL`), its config file (`ATTUNE_CONFIG`) and the
/// server-style settings it reads (`ATTUNE__*`, the broker's address among them).
pub fn is_agent_variable(name: &str) -> bool {
    use attune_protocol::worker;
    name.starts_with("ATTUNE_AGENT_")
        || name.starts_with("ATTUNE_WORKER_")
        || name.starts_with("ATTUNE__")
        || name == attune_protocol::queues::ENV_WORKER_RUNTIMES
        || name == worker::ENV_WORKER_TOKEN
        || name == worker::ENV_WORKER_TOKEN_FILE
        || name == worker::ENV_API_URL
        || name == worker::ENV_WORKER_MQ_URL
        || name == worker::ENV_CONFIG
}

/// The agent's environment without its own settings, for the processes it starts.
pub fn inherited_environment() -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
    std::env::vars_os()
        .filter(|(name, _)| !name.to_str().is_some_and(is_agent_variable))
        .collect()
}

/// Sends `signal` to every process of the group; false when the group no longer exists.
pub fn signal_group(process_group: i32, signal: i32) -> bool {
    if process_group <= 1 {
        return false;
    }
    // SAFETY: kill has no memory-safety preconditions; a negative pid addresses a group.
    unsafe { libc::kill(-process_group, signal) == 0 }
}

/// Reaps exited members of the group that are children of this process (orphans adopted when
/// the agent is PID 1); never touches processes outside the group.
pub fn reap_group(process_group: i32) {
    if process_group <= 1 {
        return;
    }
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes only into `status`; WNOHANG keeps it from blocking.
        let reaped = unsafe { libc::waitpid(-process_group, &mut status, libc::WNOHANG) };
        if reaped <= 0 {
            return;
        }
    }
}

/// Whether any process of the group is still running (zombies do not count).
pub fn group_has_live_members(process_group: i32) -> bool {
    reap_group(process_group);
    // SAFETY: signal 0 only checks for existence and permission.
    let exists = unsafe { libc::kill(-process_group, 0) == 0 };
    if !exists {
        return false;
    }
    match live_members_from_proc(process_group) {
        Some(count) => count > 0,
        None => true,
    }
}

/// Counts non-zombie processes whose process group is `process_group` by reading `/proc`.
fn live_members_from_proc(process_group: i32) -> Option<usize> {
    let entries = std::fs::read_dir("/proc").ok()?;
    let mut live = 0;
    for entry in entries.filter_map(Result::ok) {
        let file_name = entry.file_name();
        let Some(pid) = file_name
            .to_str()
            .filter(|name| name.bytes().all(|byte| byte.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if let Some((state, group)) = parse_stat_state_and_group(&stat) {
            if group == process_group && state != 'Z' && state != 'X' {
                live += 1;
            }
        }
    }
    Some(live)
}

/// State and process group from a `/proc/<pid>/stat` line (`pid (comm) S ppid pgrp ...`).
fn parse_stat_state_and_group(stat: &str) -> Option<(char, i32)> {
    let after_command = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_command.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let _parent = fields.next()?;
    let group = fields.next()?.parse().ok()?;
    Some((state, group))
}

/// Waits until the group has no live member or the deadline passes; true when it emptied.
pub async fn wait_for_group_exit(process_group: i32, deadline: Instant) -> bool {
    loop {
        if !group_has_live_members(process_group) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(GROUP_POLL_INTERVAL.min(deadline - Instant::now())).await;
    }
}

/// Stops a whole process group: SIGTERM, up to `grace` for the leader and every member to
/// exit, then SIGKILL to whatever is left. Returns the leader's exit status.
pub async fn terminate_group(
    child: &mut Child,
    process_group: i32,
    grace: Duration,
) -> std::io::Result<std::process::ExitStatus> {
    signal_group(process_group, libc::SIGTERM);
    let deadline = Instant::now() + grace;
    let leader_status = tokio::select! {
        status = child.wait() => Some(status?),
        _ = tokio::time::sleep_until(deadline) => None,
    };
    if leader_status.is_none() || !wait_for_group_exit(process_group, deadline).await {
        signal_group(process_group, libc::SIGKILL);
    }
    let status = match leader_status {
        Some(status) => status,
        None => child.wait().await?,
    };
    // Members killed just now may need a moment to become reapable zombies.
    wait_for_group_exit(process_group, Instant::now() + Duration::from_secs(1)).await;
    Ok(status)
}

/// After the leader exited on its own: give leftover group members (background jobs the action
/// started) `grace` to finish, then kill them, so nothing outlives its execution.
pub async fn clean_up_group(process_group: i32, grace: Duration) {
    if !group_has_live_members(process_group) {
        return;
    }
    signal_group(process_group, libc::SIGTERM);
    if !wait_for_group_exit(process_group, Instant::now() + grace).await {
        signal_group(process_group, libc::SIGKILL);
        wait_for_group_exit(process_group, Instant::now() + Duration::from_secs(1)).await;
    }
}

/// Kills (SIGKILL) every process this agent can see except PID 1 (the container's init) and
/// itself, and reaps what it can; returns how many it signalled. Only for an agent alone in its
/// container between two jobs ([`attune_protocol::queues::ENV_AGENT_SWEEP_PROCESSES`]): a job's
/// process that left its group (`setsid`) must not outlive the job.
pub fn kill_every_other_process() -> usize {
    let own = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut signalled = 0;
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u32>().ok())
        else {
            continue;
        };
        if pid <= 1 || pid == own {
            continue;
        }
        let Ok(pid) = i32::try_from(pid) else {
            continue;
        };
        // SAFETY: kill has no memory-safety preconditions.
        if unsafe { libc::kill(pid, libc::SIGKILL) } == 0 {
            signalled += 1;
        }
    }
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes only into `status`; WNOHANG keeps it from blocking.
        if unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) } <= 0 {
            break;
        }
    }
    signalled
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_even_with_odd_command_names() {
        assert_eq!(
            parse_stat_state_and_group("1234 (sleep) S 1200 1234 1200 0 -1 4194560"),
            Some(('S', 1234))
        );
        assert_eq!(
            parse_stat_state_and_group("99 (a) b (c)) Z 1 42 42 0"),
            Some(('Z', 42))
        );
        assert_eq!(parse_stat_state_and_group("garbage"), None);
    }

    #[test]
    fn agent_variables_are_not_inherited() {
        assert!(is_agent_variable("ATTUNE_AGENT_MQ_URL"));
        assert!(is_agent_variable("ATTUNE_WORKER_RUNTIMES"));
        for worker_variable in [
            "ATTUNE_WORKER_TOKEN",
            "ATTUNE_WORKER_TOKEN_FILE",
            "ATTUNE_WORKER_NAME",
            "ATTUNE_API_URL",
            "ATTUNE__MESSAGE_QUEUE__URL",
            "ATTUNE_CONFIG",
        ] {
            assert!(is_agent_variable(worker_variable), "{worker_variable}");
        }
        assert!(!is_agent_variable("ATTUNE_EXECUTION_ID"));
        assert!(!is_agent_variable("ATTUNE_PACK_DIR"));
        assert!(!is_agent_variable("PATH"));
    }

    #[test]
    fn groups_that_do_not_exist_are_not_alive() {
        assert!(!signal_group(0, 0));
        assert!(!signal_group(1, 0));
        // pid_max is at most 2^22; this group cannot exist.
        assert!(!group_has_live_members(i32::MAX - 1));
    }
}
