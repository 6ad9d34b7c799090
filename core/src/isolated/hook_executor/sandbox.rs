//! What confines one hook run besides its whitelist: a private directory and kernel limits.
//!
//! - a fresh directory per run (mode 0700, under `hooks.run_dir`), its working directory, `HOME`
//!   and `TMPDIR`, removed when the run ends, however it ends; so no run sees or leaves files
//!   for another tenant's;
//! - `PR_SET_NO_NEW_PRIVS`: nothing it executes gains privileges;
//! - rlimits: CPU seconds (`hooks.max_cpu`, SIGXCPU then SIGKILL), address space
//!   (`hooks.max_memory`), open files (`hooks.max_open_files`), processes (`hooks.max_processes`),
//!   no core dumps;
//! - the OOM killer's first choice, and killed with the executor.
//!
//! `RLIMIT_NPROC` is not per run: the kernel counts every process and thread of the real user
//! ID against it (in the user namespace: with the pod's default of the host's, every container
//! on the node running as that user, the executor's and the controller's threads included), and
//! refuses a `fork` past it. So `hooks.max_processes` is a ceiling for the executor's user as a
//! whole that a fork bomb runs into; it is not enforced for root or with `CAP_SYS_RESOURCE`.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::config::HooksConfig;
use crate::isolated::child::{die_first, no_new_privs, set_rlimit};

/// The kernel limits of each run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunLimits {
    /// CPU time of each process (`RLIMIT_CPU`): SIGXCPU, then SIGKILL a second later.
    pub cpu: Duration,
    /// Address space of each process, bytes (`RLIMIT_AS`).
    pub memory: u64,
    /// Open file descriptors of each process (`RLIMIT_NOFILE`).
    pub open_files: u64,
    /// Processes and threads of the executor's user (`RLIMIT_NPROC`; see the module docs).
    pub processes: u64,
}

impl RunLimits {
    /// Whole seconds of CPU, at least one.
    pub fn cpu_secs(&self) -> u64 {
        self.cpu.as_secs_f64().ceil().max(1.0) as u64
    }

    /// Applies the limits to the calling process: only between fork and exec.
    pub fn apply_in_child(self) -> std::io::Result<()> {
        no_new_privs()?;
        let cpu = self.cpu_secs();
        set_rlimit!(libc::RLIMIT_CPU, cpu, cpu + 1)?;
        set_rlimit!(libc::RLIMIT_AS, self.memory, self.memory)?;
        set_rlimit!(libc::RLIMIT_NOFILE, self.open_files, self.open_files)?;
        set_rlimit!(libc::RLIMIT_NPROC, self.processes, self.processes)?;
        set_rlimit!(libc::RLIMIT_CORE, 0, 0)?;
        die_first();
        Ok(())
    }

    /// What a command killed by `signal` most likely ran into, for the error message.
    pub fn explain_signal(&self, signal: i32) -> String {
        let name = signal_name(signal);
        match signal {
            libc::SIGXCPU => {
                format!(
                    "was killed by {name}: it used its CPU time limit of {}s ({})",
                    self.cpu_secs(),
                    HooksConfig::max_cpu
                )
            }
            libc::SIGKILL => format!(
                "was killed by {name} (past its CPU time limit of {}s, {}, or by the out-of-memory killer)",
                self.cpu_secs(),
                HooksConfig::max_cpu
            ),
            libc::SIGABRT | libc::SIGSEGV | libc::SIGBUS => format!(
                "was killed by {name}: most likely an allocation failed at its address-space limit of {} MiB \
                 (hooks.max_memory)",
                self.memory >> 20
            ),
            _ => format!("was killed by {name}"),
        }
    }
}

fn signal_name(signal: i32) -> String {
    match signal {
        libc::SIGXCPU => "SIGXCPU".into(),
        libc::SIGKILL => "SIGKILL".into(),
        libc::SIGABRT => "SIGABRT".into(),
        libc::SIGSEGV => "SIGSEGV".into(),
        libc::SIGBUS => "SIGBUS".into(),
        libc::SIGTERM => "SIGTERM".into(),
        other => format!("signal {other}"),
    }
}

/// Prefix of every run directory, so start-up clears only what the executor made.
const RUN_PREFIX: &str = "run-";

/// The private directory of one run; removed by [`RunDir::remove`], or on drop.
#[derive(Debug)]
pub struct RunDir {
    path: Option<PathBuf>,
}

impl RunDir {
    /// Creates a new directory (mode 0700) under `base`. Names need not be unguessable: `base`
    /// itself is private to the executor (see [`prepare_base`]).
    pub fn create(base: &Path) -> std::io::Result<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = base.join(format!("{RUN_PREFIX}{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
        std::fs::DirBuilder::new().mode(0o700).create(&path)?;
        Ok(Self { path: Some(path) })
    }

    pub fn path(&self) -> &Path {
        self.path.as_deref().unwrap_or(Path::new("/"))
    }

    /// Removes the directory and whatever the run left in it (call once its processes are gone).
    pub async fn remove(mut self) {
        if let Some(path) = self.path.take() {
            let _ = tokio::task::spawn_blocking(move || remove_logged(&path)).await;
        }
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        // Only when the run was abandoned before `remove` (its task cancelled).
        if let Some(path) = self.path.take() {
            remove_logged(&path);
        }
    }
}

fn remove_logged(path: &Path) {
    if let Err(e) = force_remove(path) {
        tracing::warn!(dir = %path.display(), error = %e, "cannot remove a hook run's directory");
    }
}

/// Removes `path` recursively, first giving its owner back the permissions a run may have taken
/// from its own subdirectories (a `chmod 0` would otherwise keep their contents).
fn force_remove(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(_) => {
            open_up(path);
            std::fs::remove_dir_all(path)
        }
    }
}

/// Makes every directory under `dir` (not following links) 0700 again.
fn open_up(dir: &Path) {
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            open_up(&entry.path());
        }
    }
}

/// Creates `base` (mode 0700) if missing, makes it 0700 if not, and removes the run directories
/// a previous executor left (one killed mid-run). Other entries are left alone.
pub fn prepare_base(base: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(base)?;
    std::fs::set_permissions(base, std::fs::Permissions::from_mode(0o700))?;
    for entry in std::fs::read_dir(base)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with(RUN_PREFIX) {
            remove_logged(&entry.path());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn run_directories_are_private_and_removed_whatever_was_left_in_them() {
        let base = tempfile::tempdir().unwrap();
        let base = base.path().join("runs");
        prepare_base(&base).unwrap();
        assert_eq!(std::fs::metadata(&base).unwrap().permissions().mode() & 0o777, 0o700);
        let a = RunDir::create(&base).unwrap();
        let b = RunDir::create(&base).unwrap();
        assert_ne!(a.path(), b.path());
        assert_eq!(std::fs::metadata(a.path()).unwrap().permissions().mode() & 0o777, 0o700);
        // What a hostile run could leave: a locked subdirectory with files in it.
        let locked = a.path().join("locked");
        std::fs::create_dir(&locked).unwrap();
        std::fs::write(locked.join("f"), b"x").unwrap();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
        let (pa, pb) = (a.path().to_owned(), b.path().to_owned());
        a.remove().await;
        assert!(!pa.exists());
        drop(b);
        assert!(!pb.exists(), "dropped without remove: still removed");
        // A crashed executor's leftovers go at the next start; other files stay.
        let left = RunDir::create(&base).unwrap();
        let left_path = left.path().to_owned();
        std::mem::forget(left);
        std::fs::write(base.join("keep"), b"").unwrap();
        prepare_base(&base).unwrap();
        assert!(!left_path.exists() && base.join("keep").exists());
    }

    #[test]
    fn signals_are_explained_with_the_limit_they_most_likely_hit() {
        let limits = RunLimits { cpu: Duration::from_millis(1500), memory: 64 << 20, open_files: 32, processes: 64 };
        assert_eq!(limits.cpu_secs(), 2);
        assert!(limits.explain_signal(libc::SIGXCPU).contains("CPU time limit of 2s (hooks.max_cpu)"));
        assert!(limits.explain_signal(libc::SIGABRT).contains("address-space limit of 64 MiB (hooks.max_memory)"));
        assert_eq!(limits.explain_signal(libc::SIGTERM), "was killed by SIGTERM");
    }
}
