//! What a hook leaves running outside its process group ends with its run.
//!
//! Each run is its own process group, killed when the run ends; but a program can leave the
//! group (`setsid`, `setpgid`) and would then outlive its run, keeping its CPU, memory and
//! connections. The executor is therefore a child subreaper (`PR_SET_CHILD_SUBREAPER`): an
//! orphan anywhere below it is re-parented to it rather than to init. Since the only children
//! the executor starts are the runs' leaders, any other child is a process that left its run and
//! whose parent has died, which every escapee becomes at the latest when its run's group is
//! killed. After each run the executor kills and reaps those ([`sweep`]), repeating until none
//! turns up, since killing one hands its own children over in turn.
//!
//! No privilege is needed for any of it, unlike a PID namespace or a cgroup per run.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

static SUBREAPER: AtomicBool = AtomicBool::new(false);

/// The PIDs of the runs' leaders while they run. Spawning a leader and looking for strays both
/// hold it, so a leader is never taken for a stray.
static LEADERS: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());

/// How long a sweep waits between looks, and how many looks in a row must find nothing.
const LOOK_AGAIN: Duration = Duration::from_millis(20);
const QUIET_LOOKS: u32 = 3;
/// A bound on one sweep; what is left is found by the next one.
const MAX_LOOKS: u32 = 100;

/// Makes the executor the reaper of orphans below it. Called once, at start-up, by the executor
/// process alone: a process that starts children of its own (a test binary) must not sweep.
pub fn become_subreaper() -> std::io::Result<()> {
    // SAFETY: prctl(2) with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    SUBREAPER.store(true, Ordering::SeqCst);
    Ok(())
}

fn leaders() -> std::sync::MutexGuard<'static, BTreeSet<u32>> {
    // The set is consistent after any panic (single inserts and removes).
    LEADERS.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A run's leader, known as such until dropped.
pub struct Leader(Option<u32>);

impl Drop for Leader {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            leaders().remove(&pid);
        }
    }
}

/// Spawns `cmd` as a run's leader.
pub fn spawn_leader(cmd: &mut tokio::process::Command) -> std::io::Result<(tokio::process::Child, Leader)> {
    let mut known = leaders();
    let child = cmd.spawn()?;
    let pid = child.id();
    if let Some(pid) = pid {
        known.insert(pid);
    }
    Ok((child, Leader(pid)))
}

/// A child of the executor that is not a leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stray {
    pid: i32,
    group: i32,
}

/// Kills and reaps every child that is not a running leader, until a few looks find none. Does
/// nothing unless the executor became a subreaper.
pub async fn sweep() {
    if !SUBREAPER.load(Ordering::SeqCst) {
        return;
    }
    // SAFETY: getpid(2) and getpgrp(2) cannot fail.
    let (own, own_group) = unsafe { (libc::getpid(), libc::getpgrp()) };
    let mut quiet = 0;
    for _ in 0..MAX_LOOKS {
        let strays = {
            let known = leaders();
            let strays = strays_of(own, &known);
            for stray in &strays {
                kill(*stray, own_group);
            }
            strays
        };
        if strays.is_empty() {
            quiet += 1;
            if quiet == QUIET_LOOKS {
                return;
            }
        } else {
            quiet = 0;
            tracing::warn!(count = strays.len(), "killed processes a hook left running outside its run");
            tokio::time::sleep(LOOK_AGAIN).await;
            reap(&strays);
        }
        tokio::time::sleep(LOOK_AGAIN).await;
    }
}

/// SIGKILL to `stray`, and to the group it leads unless that is the executor's own (a process
/// may join any group of its session, the executor's included).
fn kill(stray: Stray, own_group: i32) {
    // SAFETY: kill(2) on PIDs and groups; no memory is involved.
    unsafe {
        libc::kill(stray.pid, libc::SIGKILL);
        if stray.group == stray.pid && stray.group != own_group && stray.group > 1 {
            libc::kill(-stray.group, libc::SIGKILL);
        }
    }
}

/// Collects the exit status of each stray that has died; one still dying is reaped on a later
/// look (it is still a child, so it is found again).
fn reap(strays: &[Stray]) {
    for stray in strays {
        let mut status = 0;
        // SAFETY: waitpid(2) on one child, without blocking, into a local.
        unsafe {
            libc::waitpid(stray.pid, &mut status, libc::WNOHANG);
        }
    }
}

/// The children of `parent` (from `/proc`) that are not in `leaders`.
fn strays_of(parent: i32, leaders: &BTreeSet<u32>) -> Vec<Stray> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| !leaders.contains(pid))
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let (ppid, group) = parent_and_group(&stat)?;
            (ppid == parent).then_some(Stray { pid: i32::try_from(pid).ok()?, group })
        })
        .collect()
}

/// The parent PID and process group from a `/proc/PID/stat` line. The command name before them
/// is in parentheses and may itself hold spaces and parentheses: the fields start after the last
/// `)`.
fn parent_and_group(stat: &str) -> Option<(i32, i32)> {
    let mut fields = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
    let _state = fields.next()?;
    Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_after_the_command_name() {
        assert_eq!(parent_and_group("42 (sleep) S 7 42 42 0 -1"), Some((7, 42)));
        assert_eq!(parent_and_group("42 (a) b) (c) Z 1 9 9 0"), Some((1, 9)), "a name with ') ' in it");
        assert_eq!(parent_and_group("42 (x"), None);
    }

    #[test]
    fn leaders_are_not_strays_and_this_process_children_are_found() {
        let mut child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        let own = std::process::id() as i32;
        let found = strays_of(own, &BTreeSet::new());
        assert!(found.iter().any(|s| s.pid == child.id() as i32), "{found:?}");
        let known = BTreeSet::from([child.id()]);
        assert!(!strays_of(own, &known).iter().any(|s| s.pid == child.id() as i32));
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
