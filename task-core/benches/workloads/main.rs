//! The benchmark harness of the workspace: eight whole-workload figures of
//! `task-core`'s [`BackgroundTaskManager`](task_core::BackgroundTaskManager),
//! each against a baseline measured in the same run of this binary.
//!
//! Run it as `cargo xtask bench` (release build; 5 runs per workload) or
//! `cargo xtask bench --quick` (3 runs, smaller sizes where noted, under a
//! minute on a 2-core machine once built). It prints a table and writes
//! `target/bench/results.json`: a JSON list with one object per workload,
//! `{ "name", "value", "unit", "baseline", "ratio", "target", ... }` plus
//! `target_kind`, `target_met`, the per-run figures (`runs`,
//! `baseline_runs`, `ratio_runs`), the sizes and the method.
//!
//! # Method
//!
//! Every workload is repeated (`runs`); each run measures the workload and
//! its baseline back to back, on a fresh multi-threaded tokio runtime with
//! one worker per core, driven from `block_on` on the main thread (workloads
//! 1 and 5 first make one untimed pass of each side, so that neither timed
//! pass pays for growing the heap, and alternate which side goes first from
//! run to run). A run's
//! ratio is its figure over its own baseline; the reported `value`,
//! `baseline` and `ratio` are the medians over the runs (so `ratio` is the
//! median of paired ratios, not the quotient of the two medians). Figures
//! that take microseconds are timed as batches of calls, several batches per
//! run alternating with the baseline's, and the run's figure is the median
//! batch.
//!
//! # Workloads
//!
//! 1. `spawn_complete` (ns per task; target ratio <= 2.0): 100,000 trivial
//!    tasks (an `async` block returning `TaskResult::Success(Null)`) spawned
//!    round-robin over 100 owners with `spawn`, timed from the first spawn
//!    until the manager has reported every one terminal. The report is
//!    `wait(owner, id)` on every id, in spawn order, after the last spawn;
//!    each returned summary is checked to be `completed`. (`wait` is the
//!    cheapest faithful report: an event subscriber would receive every
//!    `Spawned` and `Finished` event through a broadcast channel, which
//!    clones each one.) Baseline: the same futures with bare
//!    `tokio::spawn` into a `JoinSet`, joined with `join_next` until empty.
//! 2. `list_owner_scaling` (µs per call; target ratio <= 1.5):
//!    `list(owner, None)` of an owner with 100 running tasks, while the
//!    manager holds 100,000 running tasks over 1,000 owners (spawned
//!    round-robin, so the owner's tasks are interleaved with everyone
//!    else's). Baseline: the same call on a manager holding only that
//!    owner's 100 tasks.
//! 3. `has_running_scaling` (ns per call; target ratio <= 1.5):
//!    `has_running_tasks(owner)` in the same two managers: 100,000 tasks
//!    against 100.
//! 4. `cancel_tree_scaling` (µs per call; target ratio <= 2.0): the
//!    `cancel_tree(owner, root)` call itself, on a tree of 1,001 running
//!    tasks (a root, 10 children, 99 grandchildren under each, linked with
//!    `SpawnParams::parent_task_id`, every one waiting for its
//!    cancellation), whose owner also has 100 other running tasks among
//!    100,000 running tasks over 1,000 owners. Baseline: the same tree alone
//!    in a manager. Several trees per run: after each call the tree's tasks
//!    are waited for and collected (untimed) before the next tree is built.
//! 5. `persist_memory` (ns per task; target ratio <= 5.0): workload 1 with a
//!    `TaskStore` over `MemoryStore`, timed until every task is reported
//!    terminal and `flush()` has returned (every transition durable).
//!    Baseline: workload 1 without a store, in the same run. After the
//!    timing, every summary is checked to carry no `persistence_error` and
//!    a sample of records is loaded back from the store.
//! 6. `persist_redis` (terminal writes per second; target ratio >= 0.2):
//!    20,000 tasks over 100 owners spawn-to-durable, as in 5, with a
//!    `RedisStore` (default options) on a private `redis-server` started by
//!    `task_testkit::redis_server` (no persistence, loopback). Baseline:
//!    `redis-benchmark -t set -P 16 -d 512 -q -e -n 200000` against the
//!    same server in the same run (its `SET` requests per second; with
//!    `-e`, an error reply fails the run). The server is emptied
//!    (`FLUSHALL`) between runs. Notes give, per run, the server's CPU
//!    time and the commands per task with their server time (`INFO
//!    commandstats`: every command called once every 20 tasks or more, or
//!    taking 0.5 µs per task or more, and the total, an upper bound: Redis
//!    counts a command a script runs both in the script's time and under
//!    its own name), and this process's CPU time, over the measured part
//!    (read before the untimed check). Without `redis-server`,
//!    `redis-cli` or `redis-benchmark` the workload is reported as skipped,
//!    loudly, with no figure.
//!
//!    `persist_redis_cluster` (same unit and target) is the same workload
//!    on a private Redis Cluster of 3 masters with 1 replica each, started
//!    by `task_testkit::redis_cluster` (asynchronous replication, no
//!    persistence), the store on its `redis+cluster://` URL (default
//!    options: 16 shards on a cluster). Baseline: `redis-benchmark
//!    --cluster` with the same arguments against one master (one client
//!    thread per master). Every master is emptied between runs; the notes
//!    sum the CPU and the commands over the masters and give the replicas'
//!    CPU apart.
//! 7. `memory_per_task` (bytes per task; target < 1,024): resident memory
//!    per terminal task kept in a manager without a store, in a fresh child
//!    process of this binary (`--child-memory`), so nothing the other
//!    workloads allocated pollutes it. The child builds the runtime, an
//!    empty manager and its own `SpawnParams` for 100,000 tasks over 100
//!    owners (with small metadata, `{"tool":"bench","n":i}`) first, reads
//!    `VmRSS` from `/proc/self/status`, spawns a fresh clone of each with
//!    `spawn_with_id` in batches of 1,000 (each batch waited to terminal
//!    before the next, so the figure counts what the manager keeps, not
//!    100,000 simultaneous tokio tasks), reads `VmRSS` again, checks that
//!    the manager lists all 100,000, and reports the difference over the
//!    task count. Freed memory the allocator keeps resident is counted, so
//!    the figure is an upper bound of what the manager holds. There is no
//!    baseline; the target is absolute. A note gives the same figure
//!    without metadata, to show what the metadata costs.
//! 8. `persist_postgres` (terminal writes per second; target ratio >= 0.2):
//!    20,000 tasks over 100 owners spawn-to-durable, as in 6, with a
//!    `PostgresStore` (default options, a fresh schema per run) on a private
//!    PostgreSQL started by `task_testkit::postgres_server` (loopback, the
//!    harness's settings: `fsync = off`, `synchronous_commit = on`, with
//!    `pg_stat_statements` loaded). Baseline: plain `INSERT`s of 512-byte
//!    rows into an ordinary (logged, unindexed) table, 16 rows per
//!    statement, each statement its own transaction, one connection per
//!    core, on the same server in the same run (rows per second). Notes give
//!    the server's CPU time (the postmaster and its children, from `/proc`)
//!    and the statements per task with their rows and mean times (from
//!    `pg_stat_statements`). Without PostgreSQL's server binaries the
//!    workload is reported as skipped, loudly, with no figure.
//!
//! # Options
//!
//! `--quick` (3 runs, fewer batches, 5,000 tasks for `persist_redis`,
//! `persist_redis_cluster` and `persist_postgres`), `--runs N`, `--only
//! NAME[,NAME…]` (run some workloads; handy under a profiler), `--out PATH`
//! (default `<workspace>/target/bench/results.json`, or
//! `$CARGO_TARGET_DIR/bench/…`).

mod durable;
mod memory;
mod postgres;
mod redis;
mod report;
mod workloads;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use report::Measurement;

/// The workloads, in the order they run and are reported.
const WORKLOADS: [&str; 17] = [
    "spawn_complete",
    "list_owner_scaling",
    "has_running_scaling",
    "cancel_tree_scaling",
    "persist_memory",
    "persist_redis",
    "persist_redis_cluster",
    "memory_per_task",
    "list_owner_small",
    "cancel_tree_small",
    "cancel_tree_store_scaling_memory",
    "cancel_tree_store_scaling_redis",
    "recover_scaling_memory",
    "recover_scaling_redis",
    "list_durable_scaling_memory",
    "list_durable_scaling_redis",
    "persist_postgres",
];

const HELP: &str = "\
Usage: cargo xtask bench [--quick] [--runs N] [--only NAME[,NAME...]] [--out PATH]

Runs the benchmark workloads of the task manager against their baselines,
prints a table and writes a JSON list of results (default
target/bench/results.json).

Workloads: spawn_complete, list_owner_scaling, has_running_scaling,
cancel_tree_scaling, persist_memory, persist_redis, persist_redis_cluster,
memory_per_task, list_owner_small, cancel_tree_small,
cancel_tree_store_scaling_memory, cancel_tree_store_scaling_redis,
recover_scaling_memory, recover_scaling_redis, list_durable_scaling_memory,
list_durable_scaling_redis, persist_postgres.
";

/// How much work each workload does.
#[derive(Debug, Clone)]
pub(crate) struct Sizes {
    /// Whether these are the `--quick` sizes.
    pub(crate) quick: bool,
    /// Repetitions of every workload.
    pub(crate) runs: usize,
    /// Tasks of `spawn_complete` and `persist_memory`.
    pub(crate) spawn_tasks: usize,
    /// Owners they are spread over.
    pub(crate) spawn_owners: usize,
    /// Tasks in the large manager of workloads 2 to 4.
    pub(crate) registry_tasks: usize,
    /// Owners they are spread over.
    pub(crate) registry_owners: usize,
    /// Batches of calls per run, alternating with the baseline's.
    pub(crate) batches: usize,
    /// `list` calls per batch.
    pub(crate) list_calls: usize,
    /// `has_running_tasks` calls per batch.
    pub(crate) has_running_calls: usize,
    /// Trees cancelled per run (each in both managers).
    pub(crate) trees: usize,
    /// Tasks of `persist_redis` and `persist_redis_cluster`.
    pub(crate) redis_tasks: usize,
    /// `SET` requests of its `redis-benchmark` baseline.
    pub(crate) redis_bench_requests: usize,
    /// Tasks of `memory_per_task`.
    pub(crate) memory_tasks: usize,
    /// Finished records of the durable-layer workloads' history.
    pub(crate) history: usize,
    /// Tasks of `persist_postgres`.
    pub(crate) postgres_tasks: usize,
    /// Rows its plain-insert baseline writes.
    pub(crate) postgres_baseline_rows: usize,
}

impl Sizes {
    fn full() -> Self {
        Self {
            quick: false,
            runs: 5,
            spawn_tasks: 100_000,
            spawn_owners: 100,
            registry_tasks: 100_000,
            registry_owners: 1_000,
            batches: 9,
            list_calls: 1_000,
            has_running_calls: 100_000,
            trees: 5,
            redis_tasks: 20_000,
            redis_bench_requests: 200_000,
            memory_tasks: 100_000,
            history: 100_000,
            postgres_tasks: 20_000,
            postgres_baseline_rows: 256_000,
        }
    }

    fn quick() -> Self {
        Self {
            quick: true,
            runs: 3,
            batches: 5,
            list_calls: 300,
            has_running_calls: 30_000,
            trees: 3,
            redis_tasks: 5_000,
            history: 20_000,
            postgres_tasks: 5_000,
            postgres_baseline_rows: 64_000,
            ..Self::full()
        }
    }
}

/// The command line.
#[derive(Debug)]
struct Options {
    sizes: Sizes,
    only: Option<Vec<String>>,
    out: PathBuf,
}

impl Options {
    fn parse(args: &[String]) -> Result<Option<Self>, String> {
        let mut quick = false;
        let mut runs = None;
        let mut only = None;
        let mut out = None;
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--quick" => quick = true,
                "--runs" => {
                    let n = args.next().ok_or("--runs needs a number")?;
                    let n: usize = n.parse().map_err(|e| format!("--runs {n}: {e}"))?;
                    runs = Some(n.max(1));
                }
                "--only" => {
                    let names = args.next().ok_or("--only needs workload names")?;
                    let names: Vec<String> = names.split(',').map(str::to_owned).collect();
                    if let Some(bad) = names.iter().find(|n| !WORKLOADS.contains(&n.as_str())) {
                        return Err(format!("unknown workload {bad:?}"));
                    }
                    only = Some(names);
                }
                "--out" => out = Some(PathBuf::from(args.next().ok_or("--out needs a path")?)),
                // `cargo bench` passes this to every bench target.
                "--bench" => {}
                "-h" | "--help" | "help" => return Ok(None),
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        let mut sizes = if quick { Sizes::quick() } else { Sizes::full() };
        if let Some(runs) = runs {
            sizes.runs = runs;
        }
        Ok(Some(Self {
            sizes,
            only,
            out: out.unwrap_or_else(default_out),
        }))
    }

    fn selected(&self, name: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| only.iter().any(|n| n == name))
    }
}

/// `$CARGO_TARGET_DIR/bench/results.json`, else the workspace's
/// `target/bench/results.json`.
fn default_out() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            // This crate lives in `<workspace>/task-core`.
            let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
            manifest
                .ancestors()
                .nth(1)
                .unwrap_or(manifest)
                .join("target")
        });
    target.join("bench").join("results.json")
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(memory::CHILD_FLAG) {
        return memory::child(&args[1..]);
    }
    let options = match Options::parse(&args) {
        Ok(Some(options)) => options,
        Ok(None) => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("task-bench: {message}\n\n{HELP}");
            return ExitCode::FAILURE;
        }
    };
    let sizes = &options.sizes;
    let machine = report::Machine::detect();
    println!(
        "task-bench: {} mode, {} runs per workload; {}",
        if sizes.quick { "quick" } else { "full" },
        sizes.runs,
        machine
    );

    let started = Instant::now();
    let mut results: Vec<Measurement> = Vec::new();
    // One private redis-server for the durable-layer rows on Redis, started
    // only when one of them runs.
    let wants_redis = WORKLOADS
        .iter()
        .any(|n| n.ends_with("_redis") && *n != "persist_redis" && options.selected(n));
    let redis = if wants_redis {
        Some(durable::redis_backend())
    } else {
        None
    };
    let redis_backend = || match &redis {
        Some(Ok((_, backend))) => Ok(backend.clone()),
        Some(Err(why)) => Err(why.clone()),
        None => Err("not started".to_owned()),
    };
    for name in WORKLOADS {
        if !options.selected(name) {
            continue;
        }
        let begun = Instant::now();
        eprintln!("== {name} ...");
        let measurement = match name {
            "spawn_complete" => workloads::spawn_complete(sizes),
            "list_owner_scaling" => workloads::list_owner_scaling(sizes),
            "has_running_scaling" => workloads::has_running_scaling(sizes),
            "cancel_tree_scaling" => workloads::cancel_tree_scaling(sizes),
            "persist_memory" => workloads::persist_memory(sizes),
            "persist_redis" => redis::persist_redis(sizes),
            "persist_redis_cluster" => redis::persist_redis_cluster(sizes),
            "memory_per_task" => memory::memory_per_task(sizes),
            "list_owner_small" => durable::list_owner_small(sizes),
            "cancel_tree_small" => durable::cancel_tree_small(sizes),
            "cancel_tree_store_scaling_memory" => {
                durable::cancel_tree_store_scaling(sizes, Ok(durable::Backend::Memory))
            }
            "cancel_tree_store_scaling_redis" => {
                durable::cancel_tree_store_scaling(sizes, redis_backend())
            }
            "recover_scaling_memory" => {
                durable::recover_scaling(sizes, Ok(durable::Backend::Memory))
            }
            "recover_scaling_redis" => durable::recover_scaling(sizes, redis_backend()),
            "list_durable_scaling_memory" => {
                durable::list_durable_scaling(sizes, Ok(durable::Backend::Memory))
            }
            "list_durable_scaling_redis" => durable::list_durable_scaling(sizes, redis_backend()),
            "persist_postgres" => postgres::persist_postgres(sizes),
            _ => unreachable!("every workload name is matched"),
        };
        eprintln!(
            "== {name}: {} in {:.1}s",
            measurement.brief(),
            begun.elapsed().as_secs_f64()
        );
        results.push(measurement);
    }

    println!();
    print!("{}", report::table(&results, sizes));
    println!("total {:.1}s; {}", started.elapsed().as_secs_f64(), machine);
    match report::write_json(&options.out, &results, sizes) {
        Ok(()) => println!("wrote {}", options.out.display()),
        Err(e) => {
            eprintln!("task-bench: cannot write {}: {e}", options.out.display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
