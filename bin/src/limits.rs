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
