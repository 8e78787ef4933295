//! A watchdog that ends a server process when the test process that
//! started it dies, so that a server never outlives its test binary (even
//! one kept in a `static`, which is never dropped).

use std::io;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};

/// A `sh` process holding the read end of a pipe from the test process:
/// when the pipe closes (the test process exited, however it ended), it
/// sends its signal to the guarded process.
#[derive(Debug)]
pub(crate) struct Watchdog {
    process: Child,
    /// Held open; closes when the test process exits.
    _lifeline: ChildStdin,
}

impl Watchdog {
    /// Guards process `pid`: `signal` (`-9`, `-QUIT`...) is sent to it when
    /// this process dies, and then, once it is gone (or after a minute),
    /// `cleanup` is removed if given: a server kept in a `static` is never
    /// dropped, so nothing else would remove its directory.
    pub(crate) fn guard(pid: u32, signal: &str, cleanup: Option<&Path>) -> io::Result<Self> {
        let script = format!(
            "read _; kill {signal} \"$0\" 2>/dev/null; \
             if [ -n \"$1\" ]; then \
               i=0; while kill -0 \"$0\" 2>/dev/null && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; \
               rm -rf \"$1\"; \
             fi"
        );
        let mut process = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg(pid.to_string())
            .arg(cleanup.map(Path::as_os_str).unwrap_or_default())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let lifeline = process
            .stdin
            .take()
            .ok_or_else(|| io::Error::other("the watchdog has no stdin"))?;
        Ok(Self {
            process,
            _lifeline: lifeline,
        })
    }

    /// Ends the watchdog without signalling: the server is being stopped on
    /// purpose.
    pub(crate) fn disarm(mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}
