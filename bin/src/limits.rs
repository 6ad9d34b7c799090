//! Process limits raised at start-up.

/// Raises the soft limit of open files to the hard limit: every connection and every open
/// artifact costs a descriptor, and the soft default (often 1,024) is far below what the
/// artifact server's `server.max_connections` allows. Returns the limit now in force.
pub fn raise_open_files() -> Option<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit only writes the struct it is given, which lives on this stack frame.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
        // SAFETY: setrlimit only reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            tracing::debug!(from = limit.rlim_cur, to = raised.rlim_cur, "raised the open-file limit");
            return Some(raised.rlim_cur);
        }
        tracing::warn!(soft = limit.rlim_cur, hard = limit.rlim_max, "cannot raise the open-file limit");
    }
    Some(limit.rlim_cur)
}

/// Where the memory limit came from, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryLimit {
    pub bytes: u64,
    pub source: String,
}

/// cgroup v2, then v1.
const CGROUP_MEMORY_FILES: &[&str] = &["/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"];

/// The memory limit of this process's cgroup, if it has one.
pub fn cgroup_memory_limit() -> Option<MemoryLimit> {
    CGROUP_MEMORY_FILES.iter().find_map(|path| {
        let text = std::fs::read_to_string(path).ok()?;
        Some(MemoryLimit { bytes: parse_cgroup_limit(&text)?, source: (*path).to_owned() })
    })
}

/// `max` (v2) or a page-rounded `i64::MAX` (v1) mean no limit.
fn parse_cgroup_limit(text: &str) -> Option<u64> {
    let bytes: u64 = text.trim().parse().ok()?;
    (bytes < 1 << 60).then_some(bytes)
}

/// glibc's `MALLOC_MMAP_THRESHOLD_`, which, when set, wins over [`bound_heap_growth`].
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD_ENV: &str = "MALLOC_MMAP_THRESHOLD_";

/// Blocks at least this large are mapped on their own and given back to the kernel when freed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 128 * 1024;

/// Keeps large temporary buffers (fetched bodies, packaging and compressor state) out of the
/// heap. glibc raises its mmap threshold as such blocks are freed, so later ones come from the
/// heap, where the small long-lived objects allocated between them (cached sources, metrics)
/// keep the freed space from ever being returned: after a burst of 2,000 reconciles the
/// controller held 323 MiB for 15 MiB of live heap. With a fixed threshold it held 62 MiB
/// (docs/benchmarks.md, the reconcile curve). Set `MALLOC_MMAP_THRESHOLD_` to choose another.
pub fn bound_heap_growth() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os(MMAP_THRESHOLD_ENV).is_none() {
        // SAFETY: mallopt only changes allocator parameters; called once at start-up, before any
        // other thread exists.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_limits_parse() {
        assert_eq!(parse_cgroup_limit("536870912\n"), Some(512 << 20));
        assert_eq!(parse_cgroup_limit("max\n"), None, "v2 without a limit");
        assert_eq!(parse_cgroup_limit("9223372036854771712\n"), None, "v1 without a limit");
        assert_eq!(parse_cgroup_limit(""), None);
    }
}
