//! A private PostgreSQL server for tests: a cluster made with `initdb` in
//! its own temporary directory, listening on a free loopback port, that a
//! test can stop hard (`pg_ctl stop -m immediate`, a crash of the server's
//! processes), restart on the same port and data, and inspect with `psql`.
//!
//! ```no_run
//! use task_testkit::postgres_server::PostgresServer;
//!
//! let mut server = PostgresServer::builder()
//!     .config("max_connections", "50")
//!     .start()
//!     .expect("initdb and postgres start");
//! let url = server.url(); // postgres://postgres@127.0.0.1:<port>/postgres
//! server.stop_immediate().expect("pg_ctl stop -m immediate");
//! server.restart().expect("crash recovery, then ready on the same port");
//! let n = server.psql("SELECT count(*) FROM pg_stat_activity").expect("psql");
//! # drop((url, n));
//! ```
//!
//! Tests that can run against any server call [`shared_postgres_url`]
//! (which honours `DATABASE_URL`); tests that stop, restart or reconfigure
//! the server, or kill its connections, call [`private_server_or_skip`].
//! Both print a loud skip line and return `None` when no PostgreSQL server
//! binaries can be found, except under `CI=true`, where they panic: CI must
//! really run the PostgreSQL tests.
//!
//! # Finding the binaries
//!
//! `initdb`, `pg_ctl` and `postgres` are looked up in `PG_BIN` (a directory)
//! when it is set, then on `PATH`, then in `/usr/lib/postgresql/<version>/bin`
//! (where Debian's `postgresql` package installs them, off `PATH`), the
//! highest version first. `psql` is looked up the same way.
//!
//! # Running as root
//!
//! `initdb`, `pg_ctl` and `postgres` refuse to run as root, and CI runs as
//! root. A test process running as root therefore runs them as an
//! unprivileged user: `TASK_TESTKIT_PG_USER` when it is set, else
//! `postgres` (which Debian's package creates), else `nobody`. The server's
//! directory is then made under `/tmp` and handed to that user; the user and
//! group ids are switched for the child processes only
//! (`std::os::unix::process::CommandExt::uid`/`gid`, which also drops the
//! supplementary groups), so no `su`, `sudo` or `runuser` is needed. A test
//! process that is not root runs them as itself.
//!
//! A watchdog process (`sh`) holds the read end of a pipe from the test
//! process and stops the server the way `-m immediate` does (`SIGQUIT` to
//! the postmaster) when that pipe closes, then removes its directory, so a
//! server never outlives the test binary, even one kept in a `static`.
//!
//! Size: about 770 lines, of which 60 are tests: the life of one server
//! (`initdb`, start, hard stop, restart on the same port, the watchdog that
//! removes it, running as an unprivileged user under root) reads best in one
//! place.

use std::fs;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::redis_server::free_port;
use crate::watchdog::Watchdog;

/// How long a server may take to accept connections after it was started
/// (including crash recovery after a hard stop).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How many fresh ports are tried when the chosen one was taken meanwhile.
const PORT_ATTEMPTS: usize = 5;
/// The superuser every private cluster is made with.
pub const SUPERUSER: &str = "postgres";
/// The database every private cluster has.
pub const DATABASE: &str = "postgres";

/// Configures a [`PostgresServer`] before it starts. By default: the
/// superuser [`SUPERUSER`] without a password (trust authentication),
/// PostgreSQL's default settings except `max_connections = 300` and
/// `fsync = off`.
///
/// `fsync = off` loses nothing when the server's processes crash (which is
/// what [`PostgresServer::stop_immediate`] does: every commit has written
/// its WAL to the operating system, which keeps it), only when the machine
/// does; and it spares each restart after a hard stop the sync of the whole
/// data directory, seconds on a busy disk. Set `.config("fsync", "on")` to
/// measure or test with the disk's own durability.
#[derive(Debug, Clone, Default)]
pub struct PostgresServerBuilder {
    password: Option<String>,
    settings: Vec<(String, String)>,
}

impl PostgresServerBuilder {
    /// Requires this password of the superuser over TCP
    /// (`scram-sha-256`); [`PostgresServer::url`] then carries it. `psql`
    /// inspection goes through the server's Unix socket, which stays on
    /// trust.
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// Adds a setting to `postgresql.conf`, `name = 'value'`
    /// (`fsync`, `statement_timeout`...). It holds across restarts.
    pub fn config(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.push((name.into(), value.into()));
        self
    }

    /// Makes a cluster with `initdb` (UTF-8, C locale) and starts it on a
    /// free loopback port, waiting until it accepts connections.
    ///
    /// # Errors
    ///
    /// `NotFound` when the server binaries cannot be found (see the
    /// [module docs](self)); any error of `initdb` (with its output) or of
    /// starting the server (with the end of its log), or `TimedOut` when it
    /// does not accept connections in time.
    pub fn start(self) -> io::Result<PostgresServer> {
        let bin = find_postgres_bin().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "no PostgreSQL server binaries (initdb, pg_ctl, postgres) found",
            )
        })?;
        let user = server_user()?;
        let dir = match &user {
            // The server's user must reach the directory: /tmp is
            // world-traversable, a root TMPDIR may not be.
            Some(_) => tempfile::Builder::new()
                .prefix("task-testkit-pg-")
                .tempdir_in("/tmp")?,
            None => tempfile::Builder::new()
                .prefix("task-testkit-pg-")
                .tempdir()?,
        };
        if let Some(user) = &user {
            std::os::unix::fs::chown(dir.path(), Some(user.uid), Some(user.gid))?;
        }
        let mut server = PostgresServer {
            bin,
            port: 0,
            password: self.password.clone(),
            user,
            dir,
            process: None,
        };
        server.initdb(&self)?;
        let mut last_error = None;
        for _ in 0..PORT_ATTEMPTS {
            // The port is free now; another process may take it before the
            // server binds it, so a failure is retried on a new port.
            server.port = free_port()?;
            match server.spawn_and_wait() {
                Ok(()) => return Ok(server),
                Err(err) => last_error = Some(err),
            }
        }
        Err(last_error.unwrap_or_else(|| io::Error::other("postgres did not start")))
    }
}

/// The unprivileged user the server runs as when the test process is root.
#[derive(Debug, Clone)]
struct ServerUser {
    name: String,
    uid: u32,
    gid: u32,
}

/// A PostgreSQL cluster owned by a test. Dropping it stops the server
/// (immediately) and removes its directory.
#[derive(Debug)]
pub struct PostgresServer {
    bin: PathBuf,
    port: u16,
    password: Option<String>,
    user: Option<ServerUser>,
    dir: tempfile::TempDir,
    process: Option<Running>,
}

/// A running postmaster and the watchdog that stops it if the test process
/// dies.
#[derive(Debug)]
struct Running {
    child: Child,
    watchdog: Watchdog,
}

impl PostgresServer {
    /// A builder to choose the password and settings.
    pub fn builder() -> PostgresServerBuilder {
        PostgresServerBuilder::default()
    }

    /// Starts a server with the default settings.
    ///
    /// # Errors
    ///
    /// As [`PostgresServerBuilder::start`].
    pub fn start() -> io::Result<Self> {
        Self::builder().start()
    }

    /// `postgres://postgres[:password]@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        self.url_for(DATABASE)
    }

    /// The URL of another database of this server (see
    /// [`create_database`](Self::create_database)).
    pub fn url_for(&self, database: &str) -> String {
        match &self.password {
            Some(password) => format!(
                "postgres://{SUPERUSER}:{password}@127.0.0.1:{}/{database}",
                self.port
            ),
            None => format!("postgres://{SUPERUSER}@127.0.0.1:{}/{database}", self.port),
        }
    }

    /// The TCP port the server listens on (kept across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's directory: its data directory `data`, its Unix socket
    /// and its log `postgres.log` (kept across restarts).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The cluster's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The postmaster's process id while it runs (the server's other
    /// processes are its children), to inspect or signal it.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(|running| running.child.id())
    }

    /// Whether the postmaster is running (started and not yet stopped by
    /// this handle, and not exited).
    pub fn is_running(&mut self) -> bool {
        match &mut self.process {
            Some(running) => matches!(running.child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Stops the server the hard way, `pg_ctl stop -m immediate`: every
    /// server process quits at once without a checkpoint, as in a crash, and
    /// the next start runs crash recovery from the WAL. Waits until the
    /// postmaster is gone. A no-op when it is not running.
    ///
    /// # Errors
    ///
    /// When `pg_ctl` fails and the postmaster cannot be waited for.
    pub fn stop_immediate(&mut self) -> io::Result<()> {
        self.stop_with("immediate")
    }

    /// Stops the server cleanly, `pg_ctl stop -m fast` (sessions are
    /// ended, a checkpoint is written), and waits until it is gone.
    ///
    /// # Errors
    ///
    /// As [`stop_immediate`](Self::stop_immediate).
    pub fn stop(&mut self) -> io::Result<()> {
        self.stop_with("fast")
    }

    fn stop_with(&mut self, mode: &str) -> io::Result<()> {
        let Some(mut running) = self.process.take() else {
            return Ok(());
        };
        running.watchdog.disarm();
        let data = self.data_dir();
        let output = self
            .command("pg_ctl")
            .arg("stop")
            .arg("-D")
            .arg(&data)
            .args(["-m", mode, "-w", "-t", "60"])
            .output();
        match output {
            Ok(output) if output.status.success() => {}
            // The postmaster is our child: if pg_ctl could not stop it, kill
            // it so it is not left behind, and say what pg_ctl said.
            other => {
                let _ = running.child.kill();
                let _ = running.child.wait();
                return Err(io::Error::other(format!(
                    "pg_ctl stop -m {mode} failed: {}",
                    describe(other)
                )));
            }
        }
        running.child.wait()?;
        Ok(())
    }

    /// Starts the server again on the same port with the same data (it is
    /// stopped immediately first if it still runs), and waits until it
    /// accepts connections, which it does once crash recovery is done.
    ///
    /// # Errors
    ///
    /// As [`PostgresServerBuilder::start`]; the port may have been taken by
    /// another process meanwhile.
    pub fn restart(&mut self) -> io::Result<()> {
        self.stop_immediate()?;
        self.spawn_and_wait()
    }

    /// Runs SQL with `psql` as the superuser on the `postgres` database
    /// (through the server's Unix socket) and returns its output: unaligned,
    /// tuples only, one row a line, columns separated by `|`.
    ///
    /// # Errors
    ///
    /// When `psql` cannot be found or run, or the SQL fails (the error
    /// holds psql's message).
    pub fn psql(&self, sql: &str) -> io::Result<String> {
        self.psql_on(DATABASE, sql)
    }

    /// As [`psql`](Self::psql), on another database of this server.
    ///
    /// # Errors
    ///
    /// As [`psql`](Self::psql).
    pub fn psql_on(&self, database: &str, sql: &str) -> io::Result<String> {
        let output = self
            .command("psql")
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"])
            .arg("-h")
            .arg(self.dir.path())
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", SUPERUSER, "-d", database, "-c", sql])
            .output()?;
        if !output.status.success() {
            return Err(io::Error::other(format!(
                "psql failed on {sql:?}: {}",
                describe(Ok(output))
            )));
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    /// Creates a database (UTF-8) and returns its URL.
    ///
    /// # Errors
    ///
    /// As [`psql`](Self::psql).
    pub fn create_database(&self, name: &str) -> io::Result<String> {
        let quoted = name.replace('"', "\"\"");
        self.psql(&format!("CREATE DATABASE \"{quoted}\" ENCODING 'UTF8'"))?;
        Ok(self.url_for(name))
    }

    /// The last lines of the server's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// A command for one of the cluster's binaries, run as the server's
    /// user.
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin.join(program));
        command
            .current_dir(self.dir.path())
            .env("LC_ALL", "C")
            .env_remove("PGDATA")
            .env_remove("PGHOST")
            .env_remove("PGPORT")
            .stdin(Stdio::null());
        if let Some(user) = &self.user {
            command.uid(user.uid).gid(user.gid).env("USER", &user.name);
        }
        command
    }

    fn initdb(&self, builder: &PostgresServerBuilder) -> io::Result<()> {
        let data = self.data_dir();
        let mut initdb = self.command("initdb");
        initdb.arg("-D").arg(&data).args([
            "-U",
            SUPERUSER,
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]);
        match &builder.password {
            Some(password) => {
                let pwfile = self.dir.path().join("pwfile");
                fs::write(&pwfile, format!("{password}\n"))?;
                if let Some(user) = &self.user {
                    std::os::unix::fs::chown(&pwfile, Some(user.uid), Some(user.gid))?;
                }
                initdb
                    .arg(format!("--pwfile={}", pwfile.display()))
                    .args(["--auth-local=trust", "--auth-host=scram-sha-256"]);
            }
            None => {
                initdb.args(["--auth=trust"]);
            }
        }
        let output = initdb.output();
        match output {
            Ok(output) if output.status.success() => {}
            other => {
                return Err(io::Error::other(format!(
                    "initdb failed in {}{}: {}",
                    self.dir.path().display(),
                    self.user
                        .as_ref()
                        .map(|u| format!(" (as user {})", u.name))
                        .unwrap_or_default(),
                    describe(other)
                )));
            }
        }
        let mut settings = vec![
            ("listen_addresses".to_owned(), "127.0.0.1".to_owned()),
            (
                "unix_socket_directories".to_owned(),
                self.dir.path().display().to_string(),
            ),
            ("max_connections".to_owned(), "300".to_owned()),
            ("fsync".to_owned(), "off".to_owned()),
            ("logging_collector".to_owned(), "off".to_owned()),
        ];
        settings.extend(builder.settings.iter().cloned());
        let mut conf = fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))?;
        writeln!(conf, "\n# task-testkit")?;
        for (name, value) in settings {
            writeln!(conf, "{name} = '{}'", value.replace('\'', "''"))?;
        }
        Ok(())
    }

    /// Starts the postmaster with its watchdog and waits until it accepts
    /// connections.
    fn spawn_and_wait(&mut self) -> io::Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("postgres.log"))?;
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(self.data_dir())
            .arg("-p")
            .arg(self.port.to_string())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let watchdog = Watchdog::guard(child.id(), "-QUIT", Some(self.dir.path()))?;
        self.process = Some(Running { child, watchdog });
        match self.wait_until_ready() {
            Ok(()) => Ok(()),
            Err(err) => {
                if let Some(mut running) = self.process.take() {
                    running.watchdog.disarm();
                    let _ = running.child.kill();
                    let _ = running.child.wait();
                }
                Err(err)
            }
        }
    }

    /// Waits until `postmaster.pid` says `ready` (crash recovery is over)
    /// and the port accepts a TCP connection.
    fn wait_until_ready(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let pid_file = self.data_dir().join("postmaster.pid");
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        loop {
            if let Some(running) = &mut self.process
                && let Some(status) = running.child.try_wait()?
            {
                return Err(io::Error::other(format!(
                    "postgres exited with {status} on port {}; its log ends with:\n{}",
                    self.port,
                    self.log_tail()
                )));
            }
            let ready = fs::read_to_string(&pid_file)
                .is_ok_and(|text| text.lines().nth(7).is_some_and(|s| s.trim() == "ready"));
            if ready && TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "postgres on port {} did not accept connections within {START_TIMEOUT:?}; \
                         its log ends with:\n{}",
                        self.port,
                        self.log_tail()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        if let Some(mut running) = self.process.take() {
            running.watchdog.disarm();
            // SIGQUIT is what `-m immediate` sends; it needs no pg_ctl.
            let _ = Command::new("kill")
                .args(["-QUIT", &running.child.id().to_string()])
                .status();
            let _ = running.child.wait();
        }
    }
}

/// Describes a finished command for an error message.
fn describe(output: io::Result<Output>) -> String {
    match output {
        Ok(output) => format!(
            "{}; stdout: {}; stderr: {}",
            output.status,
            String::from_utf8_lossy(&output.stdout).trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        ),
        Err(err) => format!("cannot run it: {err}"),
    }
}

/// The directory holding `initdb`, `pg_ctl` and `postgres`: `PG_BIN`, then
/// `PATH`, then `/usr/lib/postgresql/<version>/bin`, highest version first.
pub fn find_postgres_bin() -> Option<PathBuf> {
    let complete = |dir: &Path| {
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|b| dir.join(b).is_file())
    };
    if let Some(dir) = std::env::var_os("PG_BIN").map(PathBuf::from) {
        return complete(&dir).then_some(dir);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            // A symlink on PATH (as some images have) leads to the real
            // directory, where the other binaries are.
            let initdb = dir.join("initdb");
            if initdb.is_file()
                && let Some(real) = fs::canonicalize(&initdb)
                    .ok()
                    .and_then(|p| p.parent().map(Path::to_path_buf))
                && complete(&real)
            {
                return Some(real);
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, bin)| complete(bin))
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// Whether this process runs as root (the owner of `/proc/self`).
fn is_root() -> bool {
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The user to run the server as: `None` to run it as this process's own
/// user; under root, `TASK_TESTKIT_PG_USER`, `postgres` or `nobody`.
fn server_user() -> io::Result<Option<ServerUser>> {
    if !is_root() {
        return Ok(None);
    }
    let passwd = fs::read_to_string("/etc/passwd")?;
    let lookup = |name: &str| {
        passwd.lines().find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            match fields.as_slice() {
                [user, _, uid, gid, ..] if *user == name => Some(ServerUser {
                    name: name.to_owned(),
                    uid: uid.parse().ok()?,
                    gid: gid.parse().ok()?,
                }),
                _ => None,
            }
        })
    };
    if let Some(name) = std::env::var("TASK_TESTKIT_PG_USER")
        .ok()
        .filter(|n| !n.is_empty())
    {
        return lookup(&name).map(Some).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("TASK_TESTKIT_PG_USER={name}: no such user in /etc/passwd"),
            )
        });
    }
    ["postgres", "nobody"]
        .iter()
        .find_map(|name| lookup(name))
        .map(Some)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "running as root, and neither a `postgres` nor a `nobody` user exists to run \
                 the server as (initdb refuses root); create one or set TASK_TESTKIT_PG_USER",
            )
        })
}

/// The URL of a server that tests which neither stop it nor kill its
/// connections can share: `DATABASE_URL` when it is set, otherwise a
/// private server started once for the whole test binary (stopped when the
/// binary exits), with the builder's defaults. Use a fresh schema per test
/// ([`unique_schema`]).
///
/// When no server binaries exist, prints a loud skip line naming
/// `test_name` and returns `None`.
///
/// # Panics
///
/// Under `CI=true` when no server can be had, and whenever the binaries
/// exist but the server does not start.
pub fn shared_postgres_url(test_name: &str) -> Option<String> {
    if let Some(url) = std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty()) {
        return Some(url);
    }
    static SHARED: OnceLock<Option<PostgresServer>> = OnceLock::new();
    SHARED
        .get_or_init(|| private_server_or_skip(test_name, PostgresServer::builder()))
        .as_ref()
        .map(PostgresServer::url)
}

/// A private server for a test that stops, restarts or reconfigures it, or
/// kills its connections (never `DATABASE_URL`). When no server binaries
/// exist, prints a loud skip line naming `test_name` and returns `None`.
///
/// # Panics
///
/// Under `CI=true` when no server binaries exist, and whenever they exist
/// but the server does not start.
pub fn private_server_or_skip(
    test_name: &str,
    builder: PostgresServerBuilder,
) -> Option<PostgresServer> {
    if find_postgres_bin().is_none() {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true");
        if ci {
            panic!(
                "{test_name}: no PostgreSQL server binaries (initdb, pg_ctl, postgres) on PATH, \
                 in PG_BIN or under /usr/lib/postgresql/*/bin, and CI=true: the PostgreSQL \
                 tests must run in CI (install them, e.g. `apt-get install postgresql`)"
            );
        }
        eprintln!(
            "\n!!!!! SKIPPED {test_name}: no PostgreSQL server binaries (install postgresql, \
             or set PG_BIN, or DATABASE_URL for the tests that can share a server) !!!!!\n"
        );
        return None;
    }
    match builder.start() {
        Ok(server) => Some(server),
        Err(err) => panic!("{test_name}: PostgreSQL is installed but did not start: {err}"),
    }
}

/// A fresh schema name for one test: `t_<name>_<random>`, lowercase ASCII
/// letters, digits and `_`, at most 48 bytes, so every store accepts it
/// unquoted.
pub fn unique_schema(test_name: &str) -> String {
    let name: String = test_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(28)
        .collect();
    format!("t_{name}_{:016x}", fastrand::u64(..))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_schemas_are_plain_identifiers_and_distinct() {
        let a = unique_schema("Some::test name that is rather long indeed");
        let b = unique_schema("Some::test name that is rather long indeed");
        assert_ne!(a, b);
        assert!(a.len() <= 48, "{a}");
        assert!(
            a.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "{a}"
        );
        assert!(a.starts_with("t_some__test_name"), "{a}");
    }

    #[test]
    fn a_hard_stop_and_restart_keep_committed_data_on_the_same_port() {
        let Some(mut server) = private_server_or_skip(
            "harness stop -m immediate and restart",
            PostgresServer::builder(),
        ) else {
            return;
        };
        let port = server.port();
        server
            .psql("CREATE TABLE t (v int); INSERT INTO t VALUES (42)")
            .expect("create and insert");
        server.stop_immediate().expect("pg_ctl stop -m immediate");
        assert!(!server.is_running());
        assert!(server.psql("SELECT 1").is_err(), "nothing answers any more");
        server.restart().expect("restart after a hard stop");
        assert_eq!(server.port(), port);
        assert_eq!(server.psql("SELECT v FROM t").expect("select"), "42");
        server.stop().expect("a clean stop");
        server.restart().expect("restart after a clean stop");
        assert_eq!(server.psql("SELECT count(*) FROM t").expect("count"), "1");
    }

    #[test]
    fn a_password_is_required_over_tcp_and_carried_by_the_url() {
        let Some(server) = private_server_or_skip(
            "harness password",
            PostgresServer::builder().password("s3cret"),
        ) else {
            return;
        };
        assert!(
            server.url().contains(":s3cret@127.0.0.1:"),
            "{}",
            server.url()
        );
        let method = server
            .psql("SELECT auth_method FROM pg_hba_file_rules WHERE type = 'host' LIMIT 1")
            .expect("pg_hba rules");
        assert_eq!(method, "scram-sha-256");
    }
}
