//! The child side of the transform sandbox: `externalsource-controller transform-worker`.
//!
//! It reads one request from stdin (see [`Request`]), runs the filter and answers with its exit
//! code: the output on stdout and success, or a failure code from [`exit`] with the message on
//! stderr. The limits that matter (CPU, address space, wall clock) are set by the parent before
//! this code runs, so a hostile filter can only end this process, never the controller.

use std::io::{Read, Write};
use std::process::ExitCode;

use crate::isolated::transform::{Transform, TransformError};

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
}

/// The request header: output cap (u64), nesting cap (u32), filter length (u32), all little
/// endian, then the filter (UTF-8), then the payload up to end of input.
pub struct Request {
    pub max_output: u64,
    pub max_depth: u32,
    pub code: String,
    pub payload: Vec<u8>,
}

const HEADER: usize = 16;

impl Request {
    pub fn encode_header(max_output: u64, max_depth: u32, code: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + code.len());
        out.extend_from_slice(&max_output.to_le_bytes());
        out.extend_from_slice(&max_depth.to_le_bytes());
        out.extend_from_slice(&(code.len() as u32).to_le_bytes());
        out.extend_from_slice(code.as_bytes());
        out
    }

    pub fn decode(mut input: Vec<u8>) -> Option<Self> {
        let header: &[u8; HEADER] = input.get(..HEADER)?.try_into().ok()?;
        let max_output = u64::from_le_bytes(header[..8].try_into().ok()?);
        let max_depth = u32::from_le_bytes(header[8..12].try_into().ok()?);
        let code_len = u32::from_le_bytes(header[12..16].try_into().ok()?) as usize;
        let code = std::str::from_utf8(input.get(HEADER..HEADER.checked_add(code_len)?)?).ok()?.to_owned();
        let payload = input.split_off(HEADER + code_len);
        Some(Self { max_output, max_depth, code, payload })
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
    let result = Transform::compile(&request.code)
        .and_then(|t| t.apply(&request.payload, request.max_output, request.max_depth));
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
                _ => exit::RUN,
            };
            let message = match e {
                TransformError::Compile(m) | TransformError::Input(m) | TransformError::Run(m) => m,
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
        let mut bytes = Request::encode_header(1000, 7, ".a | 1");
        bytes.extend_from_slice(b"{\"a\":1}");
        let r = Request::decode(bytes).unwrap();
        assert_eq!(
            (r.max_output, r.max_depth, r.code.as_str(), r.payload.as_slice()),
            (1000, 7, ".a | 1", &b"{\"a\":1}"[..])
        );
        assert!(Request::decode(vec![0; 10]).is_none(), "short header");
        let mut long = Request::encode_header(1, 1, "abc");
        long.truncate(HEADER + 2);
        assert!(Request::decode(long).is_none(), "filter cut short");
    }
}
