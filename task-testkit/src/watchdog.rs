//! A watchdog that ends a server process when the test process that
//! started it dies, so that a server never outlives its test binary (even
//! one kept in a `static`, which is never dropped).

use std::io;
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
    /// this process dies.
    pub(crate) fn guard(pid: u32, signal: &str) -> io::Result<Self> {
        let mut process = Command::new("sh")
            .arg("-c")
            .arg(format!("read _; kill {signal} \"$0\" 2>/dev/null"))
            .arg(pid.to_string())
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
