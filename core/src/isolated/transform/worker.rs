//! The child side of the transform sandbox: `externalsource-controller transform-worker`.
//!
//! It reads one request from stdin (see [`Request`]), runs its [`Job`] (a jq filter, or a JSON
//! Schema check) and answers with its exit code: the output on stdout and success, or a failure
//! code from [`exit`] with the message on stderr. The limits that matter (CPU, address space,
//! wall clock) are set by the parent before this code runs, so a hostile filter or schema can
//! only end this process, never the controller.

use std::io::{Read, Write};
use std::process::ExitCode;

use crate::isolated::transform::{Transform, TransformError, schema};

/// Exit codes of the worker. Signals (SIGXCPU, SIGABRT from a failed allocation, SIGKILL) are
/// read from the exit status by the parent.
pub mod exit {
    pub const COMPILE: u8 = 64;
    pub const INPUT: u8 = 65;
    pub const RUN: u8 = 66;
    pub const TOO_LARGE: u8 = 67;
    pub const TOO_DEEP: u8 = 68;
    /// A malformed request: a bug of the parent, never of the filter.
    pub const PROTOCOL: u8 = 69;
    /// SIGSEGV, which safe Rust only raises by running off the end of the stack.
    pub const STACK: i32 = 70;
    /// The payload does not satisfy the JSON Schema: stderr holds the instance path of the
    /// first error, a newline, then the error.
    pub const INVALID: u8 = 71;
}

/// What the worker is asked to do with the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Job {
    /// Run the jq filter `code`, writing its outputs like `jq -c`.
    Jq,
    /// Check the payload against the JSON Schema `code`; nothing is written on success.
    Schema,
}

impl Job {
    fn byte(self) -> u8 {
        match self {
            Self::Jq => 0,
            Self::Schema => 1,
        }
    }

    fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            0 => Some(Self::Jq),
            1 => Some(Self::Schema),
            _ => None,
        }
    }
}

/// The request header: the job (one byte), output cap (u64), nesting cap (u32), code length
/// (u32), all little endian, then the code (the filter or the schema, UTF-8), then the payload up
/// to end of input.
pub struct Request {
    pub job: Job,
    pub max_output: u64,
    pub max_depth: u32,
    pub code: String,
    pub payload: Vec<u8>,
}

const HEADER: usize = 17;

impl Request {
    pub fn encode_header(job: Job, max_output: u64, max_depth: u32, code: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + code.len());
        out.push(job.byte());
        out.extend_from_slice(&max_output.to_le_bytes());
        out.extend_from_slice(&max_depth.to_le_bytes());
        out.extend_from_slice(&(code.len() as u32).to_le_bytes());
        out.extend_from_slice(code.as_bytes());
        out
    }

    pub fn decode(mut input: Vec<u8>) -> Option<Self> {
        let header: &[u8; HEADER] = input.get(..HEADER)?.try_into().ok()?;
        let job = Job::from_byte(header[0])?;
        let max_output = u64::from_le_bytes(header[1..9].try_into().ok()?);
        let max_depth = u32::from_le_bytes(header[9..13].try_into().ok()?);
        let code_len = u32::from_le_bytes(header[13..17].try_into().ok()?) as usize;
        let code = std::str::from_utf8(input.get(HEADER..HEADER.checked_add(code_len)?)?).ok()?.to_owned();
        let payload = input.split_off(HEADER + code_len);
        Some(Self { job, max_output, max_depth, code, payload })
    }
}

/// Runs one request from stdin; the whole `transform-worker` subcommand.
pub fn main() -> ExitCode {
    exit_on_stack_overflow();
    // A panic in the jq engine (some filters reach an `unwrap` in it) is the filter's failure.
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let what = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("no message");
        let _ = std::io::stderr().write_all(capped(&format!("the jq engine panicked: {what}")).as_bytes());
        std::process::exit(exit::RUN.into());
    }));
    let mut input = Vec::new();
    if let Err(e) = std::io::stdin().lock().read_to_end(&mut input) {
        return fail(exit::PROTOCOL, &format!("cannot read the request: {e}"));
    }
    let Some(request) = Request::decode(input) else {
        return fail(exit::PROTOCOL, "malformed request");
    };
    let result = match request.job {
        Job::Jq => Transform::compile(&request.code)
            .and_then(|t| t.apply(&request.payload, request.max_output, request.max_depth)),
        Job::Schema => schema::check(&request.code, &request.payload).map(|()| Vec::new()),
    };
    match result {
        Ok(out) => {
            let mut stdout = std::io::stdout().lock();
            if stdout.write_all(&out).and_then(|()| stdout.flush()).is_err() {
                return fail(exit::PROTOCOL, "cannot write the output");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            let code = match &e {
                TransformError::Compile(_) => exit::COMPILE,
                TransformError::Input(_) => exit::INPUT,
                TransformError::TooLarge(_) => exit::TOO_LARGE,
                TransformError::TooDeep(_) => exit::TOO_DEEP,
                TransformError::Invalid { .. } => exit::INVALID,
                _ => exit::RUN,
            };
            let message = match e {
                TransformError::Compile(m) | TransformError::Input(m) | TransformError::Run(m) => m,
                TransformError::Invalid { path, message } => format!("{path}\n{message}"),
                other => other.to_string(),
            };
            // Skip destructors: the filter's values may nest deeper than dropping them can recurse.
            let _ = std::io::stderr().write_all(capped(&message).as_bytes());
            std::process::exit(code.into())
        }
    }
}

fn fail(code: u8, message: &str) -> ExitCode {
    let _ = std::io::stderr().write_all(capped(message).as_bytes());
    ExitCode::from(code)
}

/// The longest message the worker reports: errors may quote a value of any size, and the message
/// ends up in a status condition.
pub const MAX_MESSAGE: usize = 1024;

fn capped(message: &str) -> &str {
    if message.len() <= MAX_MESSAGE {
        return message;
    }
    let mut end = MAX_MESSAGE;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    &message[..end]
}

/// Turns a stack overflow into exit code [`exit::STACK`] instead of Rust's SIGABRT, which the
/// parent reads as a failed allocation. Runs on an alternate signal stack of its own.
fn exit_on_stack_overflow() {
    extern "C" fn on_segv(_: libc::c_int) {
        // SAFETY: _exit is async-signal-safe and takes no pointers.
        unsafe { libc::_exit(exit::STACK) }
    }
    const ALT_STACK: usize = 64 << 10;
    let stack = Box::leak(vec![0u8; ALT_STACK].into_boxed_slice());
    let alt = libc::stack_t { ss_sp: stack.as_mut_ptr().cast(), ss_flags: 0, ss_size: ALT_STACK };
    // SAFETY: the alternate stack is leaked, so it lives as long as the process; the action
    // struct is zeroed (an empty mask) and only names a handler that calls _exit.
    unsafe {
        libc::sigaltstack(&alt, std::ptr::null_mut());
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_segv as extern "C" fn(libc::c_int) as libc::sighandler_t;
        action.sa_flags = libc::SA_ONSTACK;
        libc::sigaction(libc::SIGSEGV, &action, std::ptr::null_mut());
        libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        let mut bytes = Request::encode_header(Job::Jq, 1000, 7, ".a | 1");
        bytes.extend_from_slice(b"{\"a\":1}");
        let r = Request::decode(bytes).unwrap();
        assert_eq!(
            (r.job, r.max_output, r.max_depth, r.code.as_str(), r.payload.as_slice()),
            (Job::Jq, 1000, 7, ".a | 1", &b"{\"a\":1}"[..])
        );
        let r = Request::decode(Request::encode_header(Job::Schema, 0, 1, "{}")).unwrap();
        assert_eq!((r.job, r.code.as_str(), r.payload.len()), (Job::Schema, "{}", 0));
        assert!(Request::decode(vec![0; 10]).is_none(), "short header");
        let mut unknown = Request::encode_header(Job::Jq, 1, 1, "");
        unknown[0] = 9;
        assert!(Request::decode(unknown).is_none(), "unknown job");
        let mut long = Request::encode_header(Job::Jq, 1, 1, "abc");
        long.truncate(HEADER + 2);
        assert!(Request::decode(long).is_none(), "filter cut short");
    }
}
