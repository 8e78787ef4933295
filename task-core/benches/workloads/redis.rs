//! Workload 6, `persist_redis`, and its cluster twin `persist_redis_cluster`:
//! spawn-to-durable on a private Redis (one server, or a Redis Cluster of 3
//! masters with 1 replica each), in terminal writes per second, against
//! `redis-benchmark` on the same deployment in the same run.
//!
//! Both share one measuring loop ([`measure`]); they differ only in the
//! [`Deployment`] it runs on. The notes of each run say where the time went:
//! the CPU of the servers that take the writes (summed over a cluster's
//! masters, its replicas' apart), the commands per task with their server
//! time (from `INFO commandstats`, summed the same way), and this process's
//! CPU, all over the measured part only (read before the untimed check).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use task_core::{BackgroundTaskManager, TaskStore};
use task_store_redis::{RedisStore, RedisStoreOptions};
use task_testkit::redis_cluster::{self, RedisCluster, Reply};
use task_testkit::redis_server::{RedisServer, find_redis_server};

use crate::Sizes;
use crate::report::{Measurement, Target};
use crate::workloads::{manager_spawn_complete, owners, runtime, verify_durable};

const METHOD: &str = "tasks spawned round-robin over 100 owners on a manager with a TaskStore \
over RedisStore (default options, one ConnectionManager) on a private redis-server (loopback, \
no persistence), from the first spawn until wait() reported every task terminal and flush() \
returned, as tasks per second; durability verified untimed; baseline: redis-benchmark -t set \
-P 16 -d 512 -q -e on the same server in the same run (SET requests per second); FLUSHALL \
between runs";

const CLUSTER_METHOD: &str = "persist_redis on a private Redis Cluster instead of one server: \
3 masters with 1 replica each (task_testkit::redis_cluster, loopback, no persistence, \
asynchronous replication), the store on its redis+cluster:// URL (default options: 16 shards on \
a cluster); tasks spawned round-robin over 100 owners on a manager with a TaskStore over that \
RedisStore, from the first spawn until wait() reported every task terminal and flush() \
returned, as tasks per second; durability verified untimed; baseline: redis-benchmark --cluster \
-t set -P 16 -d 512 -q -e against one master of the same cluster in the same run (one client \
thread per master; SET requests per second); FLUSHALL on every master between runs";

/// Commands of the harness itself, left out of the notes.
const HARNESS_COMMANDS: [&str; 2] = ["info", "flushall"];

/// Workload 6: `persist_redis`.
pub(crate) fn persist_redis(sizes: &Sizes) -> Measurement {
    let m = measurement("persist_redis", sizes, METHOD);
    persist(m, sizes, || {
        let server = RedisServer::start().map_err(|e| {
            format!(
                "no private redis-server could be started ({e}); install redis-server \
                 (Debian: apt-get install redis-server); no figure was measured"
            )
        })?;
        let deployment = Deployment {
            url: format!("{}?prefix=bench", server.url()),
            cluster: false,
            masters: vec![server.port()],
            replicas: Vec::new(),
        };
        Ok((server, deployment))
    })
}

/// `persist_redis_cluster`: workload 6 on a 3-master Redis Cluster.
pub(crate) fn persist_redis_cluster(sizes: &Sizes) -> Measurement {
    let m = measurement("persist_redis_cluster", sizes, CLUSTER_METHOD);
    persist(m, sizes, || {
        let cluster = RedisCluster::start().map_err(|e| {
            format!(
                "no private Redis Cluster (3 masters, 1 replica each) could be started: {e}; \
                 no figure was measured"
            )
        })?;
        let (masters, replicas) =
            roles(&cluster).map_err(|why| format!("the private cluster's roles: {why}"))?;
        let port = |&i: &usize| cluster.nodes()[i].port();
        let deployment = Deployment {
            url: format!("{}?prefix=bench", cluster.url()),
            cluster: true,
            masters: masters.iter().map(port).collect(),
            replicas: replicas.iter().map(port).collect(),
        };
        Ok((cluster, deployment))
    })
}

/// A measurement of either workload, with no runs yet.
fn measurement(name: &'static str, sizes: &Sizes, method: &'static str) -> Measurement {
    Measurement::new(
        name,
        format!(
            "{} tasks / {} owners; {} SETs",
            sizes.redis_tasks, sizes.spawn_owners, sizes.redis_bench_requests
        ),
        "writes/s",
        Some("SET/s"),
        Target::RatioAtLeast(0.2),
        method,
    )
}

/// Either workload: finds the tools, starts the deployment (`start` returns
/// what keeps it running, and where it is), and measures it; skips loudly
/// when a tool is missing or the deployment does not start.
fn persist<R>(
    mut m: Measurement,
    sizes: &Sizes,
    start: impl FnOnce() -> Result<(R, Deployment), String>,
) -> Measurement {
    let tools = match Tools::find() {
        Ok(tools) => tools,
        Err(why) => return skipped(m, why),
    };
    let (_running, deployment) = match start() {
        Ok(started) => started,
        Err(why) => return skipped(m, why),
    };
    measure(&mut m, sizes, &tools, &deployment);
    m
}

/// Marks `m` skipped, loudly, and returns it.
fn skipped(mut m: Measurement, why: String) -> Measurement {
    skip(&mut m, why);
    m
}

/// Marks `m` skipped, loudly.
fn skip(m: &mut Measurement, why: String) {
    eprintln!("!!! {} SKIPPED: {why}", m.name);
    m.skipped = Some(why);
}

/// The Redis command-line tools the workloads run.
#[derive(Debug)]
struct Tools {
    benchmark: PathBuf,
    cli: PathBuf,
}

impl Tools {
    /// All of `redis-server`, `redis-cli` and `redis-benchmark`, or which
    /// one is missing.
    fn find() -> Result<Self, String> {
        let missing = |what: &str| {
            format!(
                "no {what} on PATH (Debian: apt-get install redis-server redis-tools); \
                 no figure was measured"
            )
        };
        find_redis_server().ok_or_else(|| missing("redis-server"))?;
        let cli = redis_cluster::find_redis_cli().ok_or_else(|| missing("redis-cli"))?;
        let benchmark =
            find_on_path("redis-benchmark").ok_or_else(|| missing("redis-benchmark"))?;
        Ok(Self { benchmark, cli })
    }

    /// Runs `redis-cli` with `args` against the server on `port` and
    /// returns its output.
    fn cli(&self, port: u16, args: &[&str]) -> Result<String, String> {
        let output = Command::new(&self.cli)
            .args(["-h", "127.0.0.1", "-p"])
            .arg(port.to_string())
            .args(args)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.cli.display()))?;
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        if !output.status.success() {
            return Err(format!(
                "`redis-cli -p {port} {}` failed ({}): {text} {}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        Ok(text)
    }
}

/// The file `name` in the first directory of `PATH` that has it.
fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// The masters and the replicas of `cluster`, by node index, as each node
/// says of itself (`ROLE`).
fn roles(cluster: &RedisCluster) -> Result<(Vec<usize>, Vec<usize>), String> {
    let mut masters = Vec::new();
    let mut replicas = Vec::new();
    for i in 0..cluster.nodes().len() {
        let reply = cluster
            .query(i, &["ROLE"])
            .map_err(|e| format!("ROLE on node {i}: {e}"))?;
        let role = match &reply {
            Reply::Array(items) => items.first().and_then(Reply::as_bytes),
            _ => None,
        };
        match role {
            Some(b"master") => masters.push(i),
            Some(b"slave") => replicas.push(i),
            _ => return Err(format!("node {i} answered ROLE with {reply:?}")),
        }
    }
    if masters.is_empty() {
        return Err("no node is a master".to_owned());
    }
    Ok((masters, replicas))
}

/// Where a workload runs: one server, or a cluster.
#[derive(Debug)]
struct Deployment {
    /// The store's URL, with its key prefix.
    url: String,
    /// Whether this is a cluster (`redis-benchmark --cluster`).
    cluster: bool,
    /// The ports of the servers that take the writes: the lone server, or
    /// the masters.
    masters: Vec<u16>,
    /// The ports of a cluster's replicas, whose CPU the notes give apart.
    replicas: Vec<u16>,
}

impl Deployment {
    /// What the notes call the servers that take the writes.
    fn masters_name(&self) -> String {
        if self.cluster {
            format!("the {} masters", self.masters.len())
        } else {
            "the server".to_owned()
        }
    }

    /// Empties every master (their replicas follow).
    fn flush_all(&self, tools: &Tools) -> Result<(), String> {
        for &port in &self.masters {
            let answer = tools.cli(port, &["FLUSHALL"])?;
            if answer.trim() != "OK" {
                return Err(format!("FLUSHALL on port {port} answered {answer:?}"));
            }
        }
        Ok(())
    }
}

/// The runs of a workload on `deployment`: each run measures the store and
/// the `redis-benchmark` baseline back to back, alternating which goes
/// first, and empties the deployment after each.
fn measure(m: &mut Measurement, sizes: &Sizes, tools: &Tools, deployment: &Deployment) {
    let owners = owners("owner", sizes.spawn_owners);
    for run in 0..sizes.runs {
        let mut base = None;
        let mut rate = None;
        for step in 0..2 {
            if (step + run) % 2 == 0 {
                match redis_benchmark(tools, deployment, sizes.redis_bench_requests) {
                    Ok(rps) => base = Some(rps),
                    Err(e) => {
                        skip(m, format!("the redis-benchmark baseline failed: {e}"));
                        return;
                    }
                }
            } else {
                let (tasks_per_second, note) =
                    spawn_to_durable(m.name, tools, deployment, sizes.redis_tasks, &owners);
                rate = Some(tasks_per_second);
                if let Some(note) = note {
                    m.notes.push(format!("run {}: {note}", run + 1));
                }
            }
            if let Err(e) = deployment.flush_all(tools) {
                skip(m, format!("emptying the private Redis failed: {e}"));
                return;
            }
        }
        if let (Some(rate), Some(base)) = (rate, base) {
            m.push(rate, Some(base));
        }
    }
}

/// One timed pass of the store: returns its tasks per second and, when the
/// statistics could be read, the note of where the time went.
///
/// # Panics
///
/// When the store cannot connect, or a task was not persisted.
fn spawn_to_durable(
    name: &str,
    tools: &Tools,
    deployment: &Deployment,
    n: usize,
    owners: &[String],
) -> (f64, Option<String>) {
    let before = Snapshot::take(tools, deployment);
    let rt = runtime();
    let (elapsed, after) = rt.block_on(async {
        let store = RedisStore::connect_with(&deployment.url, RedisStoreOptions::default())
            .await
            .unwrap_or_else(|e| {
                panic!("{name}: the store cannot connect to the private Redis: {e}")
            });
        let tasks = Arc::new(TaskStore::new(Arc::new(store)));
        let manager = BackgroundTaskManager::builder()
            .task_store(Arc::clone(&tasks))
            .build();
        let (elapsed, ids) = manager_spawn_complete(&manager, n, owners).await;
        // Before the check, so that the notes cover the measured part only.
        let after = Snapshot::take(tools, deployment);
        if let Err(e) = verify_durable(&manager, &tasks, owners, &ids).await {
            panic!("{name} did not persist: {e}");
        }
        (elapsed, after)
    });
    drop(rt);
    let tasks_per_second = per_second(n, elapsed);
    let note = after.since(&before, deployment, n, elapsed).map(|where_| {
        format!(
            "{tasks_per_second:.0} tasks/s over {:.2}s; {where_}",
            elapsed.as_secs_f64()
        )
    });
    (tasks_per_second, note)
}

/// Runs `redis-benchmark` on `deployment` and returns its `SET` requests
/// per second.
fn redis_benchmark(tools: &Tools, deployment: &Deployment, requests: usize) -> Result<f64, String> {
    let port = deployment.masters[0];
    let mut command = Command::new(&tools.benchmark);
    if deployment.cluster {
        command.arg("--cluster");
    }
    // `-e` prints error replies, which `redis-benchmark` otherwise counts as
    // answered requests.
    command
        .args(["-t", "set", "-P", "16", "-d", "512", "-q", "-e", "-n"])
        .arg(requests.to_string())
        .args(["-h", "127.0.0.1", "-p"])
        .arg(port.to_string());
    let shown = format!("{command:?}");
    let output = command
        .output()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let errors = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        return Err(format!(
            "{shown} failed ({}): {text} {errors}",
            output.status
        ));
    }
    if let Some(line) = text.lines().find(|line| line.contains("Error from server")) {
        return Err(format!("{shown} had error replies: {line}"));
    }
    parse_requests_per_second(&text).ok_or_else(|| {
        format!(
            "no `SET: <n> requests per second` in the output of {shown}: \
             stdout {text:?}, stderr {errors:?}"
        )
    })
}

/// The last `SET: <n> requests per second` of `redis-benchmark -q`. Its
/// progress lines (`SET: rps=… (overall: …)`) are separated by carriage
/// returns, and with `--cluster` it first lists the masters.
fn parse_requests_per_second(text: &str) -> Option<f64> {
    text.split(['\r', '\n'])
        .filter_map(|line| {
            let (_, rest) = line.split_once("SET:")?;
            let (figure, _) = rest.split_once("requests per second")?;
            figure.trim().parse::<f64>().ok()
        })
        .rfind(|rps| rps.is_finite() && *rps > 0.0)
}

/// What the servers and this process had spent at one moment.
#[derive(Debug, Clone)]
struct Snapshot {
    masters: Option<ServerStats>,
    replicas: Option<ServerStats>,
    client_cpu_seconds: Option<f64>,
}

impl Snapshot {
    fn take(tools: &Tools, deployment: &Deployment) -> Self {
        Self {
            masters: ServerStats::read(tools, &deployment.masters),
            replicas: ServerStats::read(tools, &deployment.replicas),
            client_cpu_seconds: process_cpu_seconds(),
        }
    }

    /// Where the time went between `before` and `self`, for a note; `None`
    /// when a figure could not be read.
    fn since(
        &self,
        before: &Self,
        deployment: &Deployment,
        tasks: usize,
        elapsed: Duration,
    ) -> Option<String> {
        let masters = self.masters.as_ref()?.since(
            before.masters.as_ref()?,
            &deployment.masters_name(),
            tasks,
            elapsed,
        );
        let replicas = if deployment.replicas.is_empty() {
            String::new()
        } else {
            let cpu = self.replicas.as_ref()?.cpu_seconds - before.replicas.as_ref()?.cpu_seconds;
            format!(
                "; CPU of the {} replicas {cpu:.2}s",
                deployment.replicas.len()
            )
        };
        let client = self.client_cpu_seconds? - before.client_cpu_seconds?;
        Some(format!(
            "{masters}{replicas}; client process CPU {client:.2}s"
        ))
    }
}

/// The CPU time and per-command statistics of some servers, summed over
/// them (`INFO everything` of each, read with `redis-cli`).
#[derive(Debug, Clone, Default)]
struct ServerStats {
    cpu_seconds: f64,
    /// By command name: calls, total microseconds.
    commands: BTreeMap<String, (u64, u64)>,
}

impl ServerStats {
    /// The sum over the servers on `ports`; `None` when one cannot be read.
    fn read(tools: &Tools, ports: &[u16]) -> Option<Self> {
        let mut total = Self::default();
        for &port in ports {
            total.add(&Self::parse(
                &tools.cli(port, &["INFO", "everything"]).ok()?,
            )?);
        }
        Some(total)
    }

    /// One server's `INFO everything`.
    fn parse(text: &str) -> Option<Self> {
        let mut stats = Self::default();
        for line in text.lines().map(str::trim) {
            if let Some(v) = line
                .strip_prefix("used_cpu_sys:")
                .or_else(|| line.strip_prefix("used_cpu_user:"))
            {
                stats.cpu_seconds += v.parse::<f64>().ok()?;
            } else if let Some(rest) = line.strip_prefix("cmdstat_") {
                // cmdstat_evalsha:calls=1,usec=2,usec_per_call=2.00,...
                let (name, fields) = rest.split_once(':')?;
                let field = |key: &str| {
                    fields
                        .split(',')
                        .find_map(|f| f.strip_prefix(key)?.strip_prefix('='))
                        .and_then(|v| v.parse::<u64>().ok())
                };
                stats
                    .commands
                    .insert(name.to_owned(), (field("calls")?, field("usec")?));
            }
        }
        Some(stats)
    }

    fn add(&mut self, other: &Self) {
        self.cpu_seconds += other.cpu_seconds;
        for (name, (calls, usec)) in &other.commands {
            let entry = self.commands.entry(name.clone()).or_default();
            entry.0 += calls;
            entry.1 += usec;
        }
    }

    /// What `servers` did between `before` and `self`, per task: their CPU,
    /// the server time in commands, and each command that was called at
    /// least once every 20 tasks or took at least 0.5 µs per task.
    fn since(&self, before: &Self, servers: &str, tasks: usize, elapsed: Duration) -> String {
        #[allow(clippy::cast_precision_loss)]
        let tasks = tasks as f64;
        let cpu = self.cpu_seconds - before.cpu_seconds;
        // (name, calls per task, µs per call, µs per task)
        let mut commands: Vec<(&str, f64, f64, f64)> = Vec::new();
        let (mut in_scripts, mut in_others) = (0.0, 0.0);
        for (name, &(calls, usec)) in &self.commands {
            if HARNESS_COMMANDS.contains(&name.as_str()) {
                continue;
            }
            let (calls0, usec0) = before.commands.get(name).copied().unwrap_or_default();
            let (calls, usec) = (calls.saturating_sub(calls0), usec.saturating_sub(usec0));
            if calls == 0 {
                continue;
            }
            #[allow(clippy::cast_precision_loss)]
            let (calls, usec) = (calls as f64, usec as f64);
            if is_script(name) {
                in_scripts += usec / tasks;
            } else {
                in_others += usec / tasks;
            }
            if calls / tasks >= 0.05 || usec / tasks >= 0.5 {
                commands.push((name, calls / tasks, usec / calls, usec / tasks));
            }
        }
        commands.sort_by(|a, b| b.3.total_cmp(&a.3));
        let listed: Vec<String> = commands
            .iter()
            .map(|(name, per_task, per_call, _)| {
                format!("{name} {per_task:.2}/task x {per_call:.1} µs")
            })
            .collect();
        format!(
            "CPU of {servers} {cpu:.2}s ({:.0}% of the elapsed time, {:.1} µs/task); server time \
             in commands at most {:.1} µs/task ({in_scripts:.1} in scripts, with the commands \
             they run; {in_others:.1} in other commands, those run by scripts counted again); \
             commands run (by the scripts too), per task x server time each: {}",
            100.0 * cpu / elapsed.as_secs_f64(),
            1e6 * cpu / tasks,
            in_scripts + in_others,
            listed.join(", ")
        )
    }
}

/// Whether `command` runs a script (whose server time includes that of the
/// commands the script calls, which Redis also counts under their names).
fn is_script(command: &str) -> bool {
    command.starts_with("eval") || command.starts_with("fcall")
}

/// This process's user and system CPU time, from `/proc/self/stat`
/// (assuming the usual 100 clock ticks per second).
pub(crate) fn process_cpu_seconds() -> Option<f64> {
    cpu_seconds("self", false)
}

/// The user and system CPU time of process `pid` (a number or `self`),
/// from `/proc/<pid>/stat`, with that of its children it has waited for
/// when `waited_children` is set (assuming 100 clock ticks per second).
pub(crate) fn cpu_seconds(pid: &str, waited_children: bool) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which is in parentheses.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime, stime, cutime and cstime are fields 14 to 17 of the line, 12
    // to 15 here.
    let count = if waited_children { 4 } else { 2 };
    let mut ticks = 0u64;
    for field in fields.get(11..11 + count)? {
        ticks += field.parse::<u64>().ok()?;
    }
    #[allow(clippy::cast_precision_loss)]
    let seconds = ticks as f64 / 100.0;
    Some(seconds)
}

pub(crate) fn per_second(n: usize, elapsed: Duration) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let n = n as f64;
    n / elapsed.as_secs_f64()
}
