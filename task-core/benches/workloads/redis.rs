//! Workload 6, `persist_redis`: spawn-to-durable on a private Redis, in
//! terminal writes per second, against `redis-benchmark` on the same server.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use task_core::{BackgroundTaskManager, TaskStore};
use task_store_redis::{RedisStore, RedisStoreOptions};
use task_testkit::redis_server::RedisServer;

use crate::Sizes;
use crate::report::{Measurement, Target};
use crate::workloads::{manager_spawn_complete, owners, runtime, verify_durable};

const METHOD: &str = "tasks spawned round-robin over 100 owners on a manager with a TaskStore \
over RedisStore (default options, one ConnectionManager) on a private redis-server (loopback, \
no persistence), from the first spawn until wait() reported every task terminal and flush() \
returned, as tasks per second; durability verified untimed; baseline: redis-benchmark -t set \
-P 16 -d 512 -q on the same server in the same run (SET requests per second); FLUSHALL \
between runs";

/// The `redis-benchmark` binary on `PATH`, if there is one.
fn find_redis_benchmark() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("redis-benchmark"))
        .find(|candidate| candidate.is_file())
}

/// Runs `redis-benchmark` and returns its `SET` requests per second.
fn redis_benchmark(binary: &std::path::Path, port: u16, requests: usize) -> Result<f64, String> {
    let output = Command::new(binary)
        .args(["-t", "set", "-P", "16", "-d", "512", "-q", "-n"])
        .arg(requests.to_string())
        .args(["-h", "127.0.0.1", "-p"])
        .arg(port.to_string())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!(
            "redis-benchmark failed ({}): {text} {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    parse_requests_per_second(&text)
        .ok_or_else(|| format!("no requests per second in redis-benchmark's output: {text:?}"))
}

/// The last `SET: <n> requests per second` of `redis-benchmark -q` (its
/// progress lines are separated by carriage returns).
fn parse_requests_per_second(text: &str) -> Option<f64> {
    text.split(['\r', '\n'])
        .filter(|line| line.contains("requests per second"))
        .filter_map(|line| {
            let (_, rest) = line.split_once("SET:")?;
            rest.split_whitespace().next()?.parse::<f64>().ok()
        })
        .next_back()
}

/// Workload 6.
pub(crate) fn persist_redis(sizes: &Sizes) -> Measurement {
    let n = sizes.redis_tasks;
    let mut m = Measurement::new(
        "persist_redis",
        format!(
            "{n} tasks / {} owners; {} SETs",
            sizes.spawn_owners, sizes.redis_bench_requests
        ),
        "writes/s",
        Some("SET/s"),
        Target::RatioAtLeast(0.2),
        METHOD,
    );
    let Some(benchmark) = find_redis_benchmark() else {
        m.skipped = Some(
            "no redis-benchmark on PATH (Debian: apt-get install redis-tools); \
             no figure was measured"
                .to_owned(),
        );
        eprintln!(
            "!!! persist_redis SKIPPED: {}",
            m.skipped.as_deref().unwrap_or("")
        );
        return m;
    };
    let server = match RedisServer::start() {
        Ok(server) => server,
        Err(e) => {
            m.skipped = Some(format!(
                "no private redis-server could be started ({e}); \
                 install redis-server (Debian: apt-get install redis-server); no figure was measured"
            ));
            eprintln!(
                "!!! persist_redis SKIPPED: {}",
                m.skipped.as_deref().unwrap_or("")
            );
            return m;
        }
    };
    let owners = owners("owner", sizes.spawn_owners);
    let url = format!("{}?prefix=bench", server.url());
    for run in 0..sizes.runs {
        let mut base = None;
        let mut rate = None;
        for step in 0..2 {
            if (step + run) % 2 == 0 {
                match redis_benchmark(&benchmark, server.port(), sizes.redis_bench_requests) {
                    Ok(rps) => base = Some(rps),
                    Err(e) => {
                        m.skipped = Some(format!("the redis-benchmark baseline failed: {e}"));
                        return m;
                    }
                }
            } else {
                let stats_before = ServerStats::read(server.port());
                let client_before = process_cpu_seconds();
                let rt = runtime();
                let (tasks_per_second, elapsed) = rt.block_on(async {
                    let store = RedisStore::connect_with(&url, RedisStoreOptions::default())
                        .await
                        .expect("the private redis-server accepts connections");
                    let tasks = Arc::new(TaskStore::new(Arc::new(store)));
                    let manager = BackgroundTaskManager::builder()
                        .task_store(Arc::clone(&tasks))
                        .build();
                    let (elapsed, ids) = manager_spawn_complete(&manager, n, &owners).await;
                    if let Err(e) = verify_durable(&manager, &tasks, &owners, &ids).await {
                        panic!("persist_redis did not persist: {e}");
                    }
                    (per_second(n, elapsed), elapsed)
                });
                drop(rt);
                rate = Some(tasks_per_second);
                // Where the time went: the server's command counts and CPU,
                // and this process's CPU, over the measured part.
                if let (Some(before), Some(after), Some(client_before), Some(client_after)) = (
                    stats_before,
                    ServerStats::read(server.port()),
                    client_before,
                    process_cpu_seconds(),
                ) {
                    m.notes.push(format!(
                        "run {}: {:.0} tasks/s over {:.2}s; {}; client process CPU {:.2}s",
                        run + 1,
                        tasks_per_second,
                        elapsed.as_secs_f64(),
                        after.since(&before, n, elapsed),
                        client_after - client_before
                    ));
                }
            }
            if let Err(e) = server.command(&["FLUSHALL"]) {
                m.skipped = Some(format!("FLUSHALL failed on the private server: {e}"));
                return m;
            }
        }
        if let (Some(rate), Some(base)) = (rate, base) {
            m.push(rate, Some(base));
        }
    }
    m
}

/// The server's CPU time and per-command statistics (`INFO`, read with
/// `redis-cli`).
#[derive(Debug, Clone)]
struct ServerStats {
    cpu_seconds: f64,
    /// Command name, calls, total microseconds.
    commands: Vec<(String, u64, u64)>,
}

impl ServerStats {
    fn read(port: u16) -> Option<Self> {
        let output = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p"])
            .arg(port.to_string())
            .args(["INFO", "everything"])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&output.stdout);
        let mut cpu_seconds = 0.0;
        let mut commands = Vec::new();
        for line in text.lines().map(str::trim) {
            if let Some(v) = line
                .strip_prefix("used_cpu_sys:")
                .or_else(|| line.strip_prefix("used_cpu_user:"))
            {
                cpu_seconds += v.parse::<f64>().unwrap_or(0.0);
            } else if let Some(rest) = line.strip_prefix("cmdstat_") {
                // cmdstat_evalsha:calls=1,usec=2,usec_per_call=2.00,...
                let (name, fields) = rest.split_once(':')?;
                let field = |key: &str| {
                    fields
                        .split(',')
                        .find_map(|f| f.strip_prefix(key)?.strip_prefix('='))
                        .and_then(|v| v.parse::<u64>().ok())
                };
                commands.push((name.to_owned(), field("calls")?, field("usec")?));
            }
        }
        Some(Self {
            cpu_seconds,
            commands,
        })
    }

    /// What happened between `before` and `self`, per task.
    fn since(&self, before: &Self, tasks: usize, elapsed: Duration) -> String {
        #[allow(clippy::cast_precision_loss)]
        let tasks = tasks as f64;
        let cpu = self.cpu_seconds - before.cpu_seconds;
        let mut parts = vec![format!(
            "server CPU {cpu:.2}s ({:.0}% of the elapsed time); commands run (by the scripts too), per task x server time each:",
            100.0 * cpu / elapsed.as_secs_f64()
        )];
        for (name, calls, usec) in &self.commands {
            let (calls0, usec0) = before
                .commands
                .iter()
                .find(|(n, ..)| n == name)
                .map_or((0, 0), |(_, c, u)| (*c, *u));
            let (calls, usec) = (calls - calls0, usec - usec0);
            #[allow(clippy::cast_precision_loss)]
            let (calls, usec) = (calls as f64, usec as f64);
            // Commands of the bench itself, and the rare ones, are noise.
            if calls / tasks < 0.05 || name == "info" || name == "flushall" {
                continue;
            }
            parts.push(format!(
                "{name} {:.2}/task x {:.1} µs",
                calls / tasks,
                usec / calls
            ));
        }
        parts.join(" ")
    }
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
