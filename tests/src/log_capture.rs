//! Everything the in-process controller logs, at debug level, kept so a test can search it for
//! secrets (tokens, client secrets) that must never be logged.

use std::io::Write;
use std::sync::{Arc, Mutex};

/// The captured log.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("captured log").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// The process's one log subscriber (each test file is its own process); call it before
    /// anything else installs one.
    pub fn install() -> Self {
        static CAPTURED: std::sync::OnceLock<Captured> = std::sync::OnceLock::new();
        CAPTURED
            .get_or_init(|| {
                let captured = Self::default();
                let writer = captured.clone();
                tracing_subscriber::fmt()
                    .with_env_filter(tracing_subscriber::EnvFilter::new("debug"))
                    .with_ansi(false)
                    .with_writer(move || writer.clone())
                    .init();
                captured
            })
            .clone()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("captured log")).into_owned()
    }
}
