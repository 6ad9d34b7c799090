//! Confinement applied to a child process between fork and exec, shared by the transform
//! sandbox and the hook executor. Everything here is async-signal-safe (setrlimit, prctl, open,
//! write, close on values the caller copied in), as a `pre_exec` closure requires.

/// Sets `resource` (a `libc::RLIMIT_*`) to `soft` and `hard`.
///
/// A macro rather than a function: the resource's C type differs between libc flavours
/// (`__rlimit_resource_t` with glibc, `c_int` with musl).
macro_rules! set_rlimit {
    ($resource:expr, $soft:expr, $hard:expr) => {{
        let value = libc::rlimit { rlim_cur: $soft, rlim_max: $hard };
        // SAFETY: setrlimit reads the struct it is given.
        if unsafe { libc::setrlimit($resource, &value) } == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
    }};
}
pub(crate) use set_rlimit;

/// Makes the calling (child) process die with its parent (`PR_SET_PDEATHSIG`) and the OOM
/// killer's first choice (`oom_score_adj` 1000). Failures are ignored: both are hardening, not
/// limits.
pub fn die_first() {
    // SAFETY: prctl with integer arguments only; open/write/close on a static C string and a
    // static buffer.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        let fd = libc::open(c"/proc/self/oom_score_adj".as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd >= 0 {
            libc::write(fd, b"1000".as_ptr().cast(), 4);
            libc::close(fd);
        }
    }
}

/// `PR_SET_NO_NEW_PRIVS`: neither this process nor anything it executes can gain privileges
/// (set-user-ID binaries, file capabilities).
pub fn no_new_privs() -> std::io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
