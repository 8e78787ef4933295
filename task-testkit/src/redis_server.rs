//! A private `redis-server` for tests: on a free loopback port, in its own
//! temporary directory, with the persistence settings the test chooses, and
//! killable and restartable on the same port and data directory.
//!
//! ```no_run
//! use task_testkit::redis_server::{AppendFsync, RedisServer};
//!
//! let mut server = RedisServer::builder()
//!     .appendonly(true)
//!     .appendfsync(AppendFsync::Always)
//!     .start()
//!     .expect("redis-server starts");
//! let url = server.url(); // redis://127.0.0.1:<port>/
//! server.kill().expect("SIGKILL");
//! server.restart().expect("back on the same port, with the same data");
//! # drop(url);
//! ```
//!
//! Tests that can run against any server call [`shared_redis_url`] (which
//! honours `REDIS_URL`); tests that kill or reconfigure the server call
//! [`private_server_or_skip`]. Both print a loud skip line and return `None`
//! when no `redis-server` binary is on `PATH`, except under `CI=true`, where
//! they panic: CI must really run the Redis tests.
//!
//! A watchdog process (`sh`) holds the read end of a pipe from the test
//! process and kills the server when that pipe closes, so a server never
//! outlives the test binary, even one kept in a `static`.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::watchdog::Watchdog;

/// How long a server may take to answer `PING` after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How many fresh ports are tried when the chosen one was taken meanwhile.
const PORT_ATTEMPTS: usize = 5;

/// When the append-only file is flushed to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendFsync {
    /// After every write: no acknowledged write is lost on a crash.
    Always,
    /// Once a second.
    EverySec,
    /// When the OS decides.
    No,
}

impl AppendFsync {
    fn as_str(self) -> &'static str {
        match self {
            Self::Always => "always",
            Self::EverySec => "everysec",
            Self::No => "no",
        }
    }
}

/// Configures a [`RedisServer`] before it starts. By default: no persistence
/// (`save ""`, `appendonly no`), no password.
#[derive(Debug, Clone, Default)]
pub struct RedisServerBuilder {
    appendonly: bool,
    appendfsync: Option<AppendFsync>,
    save: Option<String>,
    requirepass: Option<String>,
    tls: Option<TlsFiles>,
    extra: Vec<(String, String)>,
}

/// The certificate files of a server that also listens for TLS.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The server's certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The CA that signed it (PEM).
    pub ca: PathBuf,
}

impl RedisServerBuilder {
    /// Turns the append-only file on or off.
    pub fn appendonly(mut self, on: bool) -> Self {
        self.appendonly = on;
        self
    }

    /// Sets when the append-only file is flushed.
    pub fn appendfsync(mut self, fsync: AppendFsync) -> Self {
        self.appendfsync = Some(fsync);
        self
    }

    /// Sets the RDB snapshot rule (`"900 1"`...); `""` (the default) disables
    /// snapshots.
    pub fn save(mut self, rule: impl Into<String>) -> Self {
        self.save = Some(rule.into());
        self
    }

    /// Requires this password (`requirepass`); [`RedisServer::url`] then
    /// carries it.
    pub fn requirepass(mut self, password: impl Into<String>) -> Self {
        self.requirepass = Some(password.into());
        self
    }

    /// Also listens for TLS on a second port ([`RedisServer::tls_url`]), with
    /// these files; clients need no certificate of their own.
    pub fn tls(mut self, files: TlsFiles) -> Self {
        self.tls = Some(files);
        self
    }

    /// Adds any other configuration line, `name value`.
    pub fn config(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.extra.push((name.into(), value.into()));
        self
    }

    /// Starts the server on a free loopback port and waits until it answers
    /// `PING`.
    ///
    /// # Errors
    ///
    /// `NotFound` when no `redis-server` is on `PATH`; any error starting it,
    /// or a `TimedOut` error (with the end of its log) when it does not
    /// answer in time.
    pub fn start(self) -> io::Result<RedisServer> {
        let binary = find_redis_server().ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, "no redis-server binary on PATH")
        })?;
        let dir = tempfile::Builder::new()
            .prefix("task-testkit-redis-")
            .tempdir()?;
        let mut server = RedisServer {
            binary,
            port: 0,
            tls_port: None,
            password: self.requirepass.clone(),
            config: dir.path().join("redis.conf"),
            process: None,
            dir,
        };
        let mut last_error = None;
        for _ in 0..PORT_ATTEMPTS {
            // The port is free now; another process may take it before the
            // server binds it, so a failure is retried on a new port.
            server.port = free_port()?;
            if self.tls.is_some() {
                server.tls_port = Some(free_port()?);
            }
            server.write_config(&self)?;
            match server.spawn_and_wait() {
                Ok(()) => return Ok(server),
                Err(err) => last_error = Some(err),
            }
        }
        Err(last_error.unwrap_or_else(|| io::Error::other("redis-server did not start")))
    }
}

/// A `redis-server` process owned by a test. Dropping it kills the server
/// and removes its directory.
#[derive(Debug)]
pub struct RedisServer {
    binary: PathBuf,
    port: u16,
    tls_port: Option<u16>,
    password: Option<String>,
    config: PathBuf,
    process: Option<Running>,
    dir: tempfile::TempDir,
}

/// A running server and the watchdog that kills it if the test process dies.
#[derive(Debug)]
struct Running {
    child: Child,
    watchdog: Watchdog,
}

impl RedisServer {
    /// A builder to choose persistence and other settings.
    pub fn builder() -> RedisServerBuilder {
        RedisServerBuilder::default()
    }

    /// Starts a server without persistence or password.
    ///
    /// # Errors
    ///
    /// As [`RedisServerBuilder::start`].
    pub fn start() -> io::Result<Self> {
        Self::builder().start()
    }

    /// `redis://127.0.0.1:<port>/`, with the password if one is required.
    pub fn url(&self) -> String {
        match &self.password {
            Some(password) => format!("redis://:{password}@127.0.0.1:{}/", self.port),
            None => format!("redis://127.0.0.1:{}/", self.port),
        }
    }

    /// `rediss://127.0.0.1:<tls port>/` (with the password if one is
    /// required) when the server was built with [`RedisServerBuilder::tls`].
    pub fn tls_url(&self) -> Option<String> {
        let port = self.tls_port?;
        Some(match &self.password {
            Some(password) => format!("rediss://:{password}@127.0.0.1:{port}/"),
            None => format!("rediss://127.0.0.1:{port}/"),
        })
    }

    /// The TCP port the server listens on (kept across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's data directory (kept across restarts).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether the server process is running (started and not yet killed or
    /// shut down by this handle, and not exited).
    pub fn is_running(&mut self) -> bool {
        match &mut self.process {
            Some(running) => matches!(running.child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Kills the server with SIGKILL, as a crash would, and waits for it to
    /// be gone. A no-op when it is not running.
    ///
    /// # Errors
    ///
    /// When the process cannot be killed or waited for.
    pub fn kill(&mut self) -> io::Result<()> {
        if let Some(mut running) = self.process.take() {
            running.watchdog.disarm();
            running.child.kill()?;
            running.child.wait()?;
        }
        Ok(())
    }

    /// Shuts the server down gracefully (`SHUTDOWN`, which saves and syncs
    /// what its persistence settings say) and waits for it to exit.
    ///
    /// # Errors
    ///
    /// When the command cannot be sent or the server does not exit within
    /// the start timeout (it is then killed).
    pub fn shutdown(&mut self) -> io::Result<()> {
        let Some(mut running) = self.process.take() else {
            return Ok(());
        };
        running.watchdog.disarm();
        // The server closes the connection instead of answering.
        let _ = self.command(&["SHUTDOWN"]);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if running.child.try_wait()?.is_some() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = running.child.kill();
                let _ = running.child.wait();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("redis-server on port {} ignored SHUTDOWN", self.port),
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts the server again on the same port with the same data directory
    /// and configuration (it is killed first if it still runs), and waits
    /// until it answers `PING`, which it does once its data is loaded.
    ///
    /// # Errors
    ///
    /// As [`RedisServerBuilder::start`]; the port may have been taken by
    /// another process meanwhile.
    pub fn restart(&mut self) -> io::Result<()> {
        self.kill()?;
        let mut last_error = None;
        for _ in 0..PORT_ATTEMPTS {
            match self.spawn_and_wait() {
                Ok(()) => return Ok(()),
                Err(err) => last_error = Some(err),
            }
        }
        Err(last_error.unwrap_or_else(|| io::Error::other("redis-server did not restart")))
    }

    /// Sends one command in RESP and returns the first line of the answer
    /// (`+OK`, `-ERR …`, `:1`, `$5`…). Authenticates first when the server
    /// has a password.
    ///
    /// # Errors
    ///
    /// When the server cannot be reached or closes the connection.
    pub fn command(&self, args: &[&str]) -> io::Result<String> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.set_write_timeout(Some(Duration::from_secs(5)))?;
        let mut writer = stream.try_clone()?;
        let mut reader = BufReader::new(stream);
        if let Some(password) = &self.password {
            writer.write_all(&resp(&["AUTH", password]))?;
            let answer = read_line(&mut reader)?;
            if !answer.starts_with('+') {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!("AUTH answered {answer}"),
                ));
            }
        }
        writer.write_all(&resp(args))?;
        read_line(&mut reader)
    }

    fn write_config(&self, builder: &RedisServerBuilder) -> io::Result<()> {
        let mut lines = vec![
            "bind 127.0.0.1".to_owned(),
            format!("port {}", self.port),
            format!("dir {}", quote(&self.dir.path().display().to_string())),
            "daemonize no".to_owned(),
            "logfile redis.log".to_owned(),
            format!(
                "save {}",
                quote(builder.save.as_deref().unwrap_or_default())
            ),
            format!(
                "appendonly {}",
                if builder.appendonly { "yes" } else { "no" }
            ),
        ];
        if let Some(fsync) = builder.appendfsync {
            lines.push(format!("appendfsync {}", fsync.as_str()));
        }
        if let Some(password) = &builder.requirepass {
            lines.push(format!("requirepass {}", quote(password)));
        }
        if let (Some(files), Some(port)) = (&builder.tls, self.tls_port) {
            lines.push(format!("tls-port {port}"));
            for (name, path) in [
                ("tls-cert-file", &files.cert),
                ("tls-key-file", &files.key),
                ("tls-ca-cert-file", &files.ca),
            ] {
                lines.push(format!("{name} {}", quote(&path.display().to_string())));
            }
            lines.push("tls-auth-clients no".to_owned());
        }
        for (name, value) in &builder.extra {
            lines.push(format!("{name} {}", quote(value)));
        }
        let mut text = lines.join("\n");
        text.push('\n');
        std::fs::write(&self.config, text)
    }

    /// Starts the process with its watchdog and waits for `PING`.
    fn spawn_and_wait(&mut self) -> io::Result<()> {
        let child = Command::new(&self.binary)
            .arg(&self.config)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let watchdog = Watchdog::guard(child.id(), "-9", None)?;
        self.process = Some(Running { child, watchdog });
        match self.wait_until_ready() {
            Ok(()) => Ok(()),
            Err(err) => {
                let _ = self.kill();
                Err(err)
            }
        }
    }

    fn wait_until_ready(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(running) = &mut self.process
                && let Some(status) = running.child.try_wait()?
            {
                return Err(io::Error::other(format!(
                    "redis-server exited with {status} on port {}; its log ends with:\n{}",
                    self.port,
                    self.log_tail()
                )));
            }
            match self.command(&["PING"]) {
                Ok(answer) if answer == "+PONG" => return Ok(()),
                // Still loading its data, or not listening yet.
                Ok(_) | Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Ok(answer) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "redis-server on port {} answered PING with {answer} for {START_TIMEOUT:?}",
                            self.port
                        ),
                    ));
                }
                Err(err) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "redis-server on port {} did not answer PING within {START_TIMEOUT:?} ({err}); \
                             its log ends with:\n{}",
                            self.port,
                            self.log_tail()
                        ),
                    ));
                }
            }
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// The `redis-server` binary on `PATH`, if there is one.
pub fn find_redis_server() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("redis-server"))
        .find(|candidate| candidate.is_file())
}

/// The URL of a server that tests which do not kill or reconfigure it can
/// share: `REDIS_URL` when it is set, otherwise a private server started
/// once for the whole test binary (killed when the binary exits). Use a
/// fresh key prefix per test ([`unique_prefix`]).
///
/// When no `redis-server` exists, prints a loud skip line naming
/// `test_name` and returns `None`.
///
/// # Panics
///
/// Under `CI=true` when no server can be had, and whenever a
/// `redis-server` binary exists but does not start.
pub fn shared_redis_url(test_name: &str) -> Option<String> {
    if let Some(url) = std::env::var("REDIS_URL").ok().filter(|u| !u.is_empty()) {
        return Some(url);
    }
    static SHARED: OnceLock<Option<RedisServer>> = OnceLock::new();
    SHARED
        .get_or_init(|| private_server_or_skip(test_name, RedisServer::builder()))
        .as_ref()
        .map(RedisServer::url)
}

/// A private server for a test that kills, pauses or reconfigures it (never
/// `REDIS_URL`). When no `redis-server` exists, prints a loud skip line
/// naming `test_name` and returns `None`.
///
/// # Panics
///
/// Under `CI=true` when no `redis-server` exists, and whenever one exists
/// but does not start.
pub fn private_server_or_skip(test_name: &str, builder: RedisServerBuilder) -> Option<RedisServer> {
    if find_redis_server().is_none() {
        skip_or_fail(test_name);
        return None;
    }
    match builder.start() {
        Ok(server) => Some(server),
        Err(err) => panic!("{test_name}: redis-server is installed but did not start: {err}"),
    }
}

/// A fresh key prefix for one test: `t-<name>-<random>`, holding only
/// characters every prefix accepts.
pub fn unique_prefix(test_name: &str) -> String {
    let name: String = test_name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(40)
        .collect();
    format!("t-{name}-{:016x}", fastrand::u64(..))
}

fn skip_or_fail(test_name: &str) {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    if ci {
        panic!(
            "{test_name}: no redis-server on PATH and CI=true: the Redis tests must run in CI \
             (install it, e.g. `apt-get install redis-server`, or set REDIS_URL)"
        );
    }
    eprintln!(
        "\n!!!!! SKIPPED {test_name}: no redis-server on PATH (install redis-server or set \
         REDIS_URL to run the Redis tests) !!!!!\n"
    );
}

/// Picks a port that was free a moment ago by binding port 0 and releasing it.
pub(crate) fn free_port() -> io::Result<u16> {
    let listener = TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
}

/// Encodes a command in RESP.
pub(crate) fn resp<A: AsRef<[u8]>>(args: &[A]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        let arg = arg.as_ref();
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Reads one RESP line (at most 64 KiB) without its CRLF.
pub(crate) fn read_line(reader: &mut impl BufRead) -> io::Result<String> {
    let mut line = Vec::new();
    let n = reader
        .by_ref()
        .take(64 * 1024)
        .read_until(b'\n', &mut line)?;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the server closed the connection",
        ));
    }
    if !line.ends_with(b"\r\n") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a reply line without CRLF (or longer than 64 KiB)",
        ));
    }
    line.truncate(line.len() - 2);
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// Quotes a configuration value for redis.conf.
fn quote(value: &str) -> String {
    let mut out = String::from("\"");
    for c in value.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_encoded_in_resp() {
        assert_eq!(resp(&["PING"]), b"*1\r\n$4\r\nPING\r\n");
        assert_eq!(quote("a \"b\""), "\"a \\\"b\\\"\"");
    }

    #[test]
    fn shutdown_and_restart_keep_the_data_on_the_same_port() {
        let builder = RedisServer::builder()
            .appendonly(true)
            .appendfsync(AppendFsync::Always);
        let Some(mut server) = private_server_or_skip("harness shutdown and restart", builder)
        else {
            return;
        };
        let port = server.port();
        assert_eq!(server.command(&["SET", "k", "v"]).expect("SET"), "+OK");
        server.shutdown().expect("SHUTDOWN");
        assert!(!server.is_running());
        assert!(
            server.command(&["PING"]).is_err(),
            "nothing listens any more"
        );
        server.restart().expect("restart");
        assert_eq!(server.port(), port);
        assert_eq!(server.command(&["GET", "k"]).expect("GET"), "$1");

        server.kill().expect("SIGKILL");
        assert!(!server.is_running());
        server.restart().expect("restart after SIGKILL");
        assert_eq!(server.command(&["GET", "k"]).expect("GET"), "$1");
    }

    #[test]
    fn unique_prefixes_are_valid_and_distinct() {
        let a = unique_prefix("some::test name");
        let b = unique_prefix("some::test name");
        assert_ne!(a, b);
        assert!(a.starts_with("t-some--test-name-"), "{a}");
    }
}
