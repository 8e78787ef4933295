//! Throughput figures against a private `redis-server`.
//!
//! ```text
//! cargo run --release -p task-store-redis --example throughput [-- N [always|everysec]]
//! cargo run --release -p task-store-redis --example throughput -- tasks [N [REPS [retention]]]
//! cargo run --release -p task-store-redis --example throughput -- finishes [N [REPS [retention]]]
//! ```
//!
//! The first form: terminal writes per second from one process, sequential,
//! concurrent and batched, next to `redis-benchmark -t set -P 16` on the same
//! server. Without a second argument the server has no persistence; with
//! one, it runs with `appendonly yes` and that `appendfsync`.
//!
//! The second form: finished tasks persisted the way the task layer writes
//! them (one fresh thread each: a ~400-byte state, two ~120-byte messages
//! with ids, one of 100 owners as parent, kind `task`, the finished mark),
//! through `create` (64 in flight) and through `create_batch` at several
//! batch sizes. For each it prints, per run and as the median of `REPS` runs
//! (default 5) of `N` tasks (default 20000): tasks/s, the server's time in
//! `EVALSHA` per task (`INFO commandstats`: usec of evalsha over the tasks)
//! and the server's CPU per task (`INFO cpu`: used_cpu_user + used_cpu_sys
//! over the tasks). With `retention`, the store keeps finished threads for
//! a day (a TTL and an expiry-set entry each). `THROUGHPUT_ONLY=<text>` runs
//! only the modes whose label contains the text.
//!
//! The third form: finishes of tasks whose start was already written, the
//! way the task layer appends them (a ~400-byte state, one ~120-byte
//! message with an id, the finished mark, an `Exact` precondition), on
//! threads created beforehand (not counted). Through `append` with the
//! appends of a batch all in flight at once (the write script once per
//! append, pipelined on the one connection) and through `append_batch` at
//! several batch sizes; the same figures per append.
//!
//! Speed is measured here, never asserted in tests.

use std::process::Command;

use futures::StreamExt;
use std::time::Instant;

use serde_json::json;
use task_store::{AppendRequest, ChangeSet, NewMessage, Thread, ThreadWriter, VersionPrecondition};
use task_store_redis::{RedisStore, RedisStoreOptions};
use task_testkit::redis_server::{AppendFsync, RedisServer};

fn finish(i: usize, version: u64) -> (ChangeSet, VersionPrecondition) {
    let changes = ChangeSet::state(json!({
        "id": format!("task-{i}"),
        "status": "completed",
        "result": { "ok": true, "n": i },
        "attempt": 1,
    }))
    .with_message(NewMessage::with_id(
        "transition:completed:1",
        json!({ "event": "completed", "attempt": 1 }),
    ))
    .with_terminal(true);
    (changes, VersionPrecondition::Exact(version))
}

async fn create_all(store: &RedisStore, run: &str, n: usize) {
    let creates = (0..n).map(|i| {
        let store = store.clone();
        let id = format!("{run}:{i}");
        async move {
            store
                .create(
                    Thread::new(id, "task")
                        .with_parent("owner")
                        .with_state(json!({ "status": "running" })),
                )
                .await
                .expect("create")
        }
    });
    futures::stream::iter(creates)
        .buffer_unordered(256)
        .collect::<Vec<_>>()
        .await;
}

fn report(label: &str, n: usize, started: Instant) {
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{label:<40} {n:>6} writes in {secs:>6.3} s = {:>8.0} writes/s ({:.1} µs each)",
        n as f64 / secs,
        secs * 1e6 / n as f64
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("tasks") => {
            tasks_main(&args[1..], Workload::Creates).await;
            return;
        }
        Some("finishes") => {
            tasks_main(&args[1..], Workload::Finishes).await;
            return;
        }
        _ => {}
    }
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5000);
    let fsync = std::env::args().nth(2);
    let mut builder = RedisServer::builder();
    match fsync.as_deref() {
        Some("always") => builder = builder.appendonly(true).appendfsync(AppendFsync::Always),
        Some("everysec") => builder = builder.appendonly(true).appendfsync(AppendFsync::EverySec),
        Some(other) => panic!("unknown appendfsync {other:?}: use always or everysec"),
        None => {}
    }
    let server = builder.start().expect("start a private redis-server");
    println!(
        "private redis-server on port {} ({n} threads per run, appendfsync {})",
        server.port(),
        fsync.as_deref().unwrap_or("off (no AOF)")
    );
    let store = RedisStore::connect_with(
        &server.url(),
        RedisStoreOptions::default().with_prefix("bench"),
    )
    .await
    .expect("connect");

    // One at a time: each write waits for the previous one.
    create_all(&store, "seq", n).await;
    let started = Instant::now();
    for i in 0..n {
        let (changes, precondition) = finish(i, 1);
        store
            .append(&format!("seq:{i}"), changes, precondition)
            .await
            .expect("append");
    }
    report("sequential append (1 in flight)", n, started);

    // Many in flight on the one multiplexed connection.
    create_all(&store, "conc", n).await;
    let started = Instant::now();
    let writes = (0..n).map(|i| {
        let store = store.clone();
        async move {
            let (changes, precondition) = finish(i, 1);
            store
                .append(&format!("conc:{i}"), changes, precondition)
                .await
                .expect("append");
        }
    });
    futures::stream::iter(writes)
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    report("concurrent append (64 in flight)", n, started);

    // Batches: one pipeline of scripts per batch.
    for batch_size in [16, 256] {
        let run = format!("batch{batch_size}");
        create_all(&store, &run, n).await;
        let started = Instant::now();
        for start in (0..n).step_by(batch_size) {
            let requests = (start..(start + batch_size).min(n))
                .map(|i| {
                    let (changes, precondition) = finish(i, 1);
                    AppendRequest {
                        id: format!("{run}:{i}"),
                        changes,
                        precondition,
                    }
                })
                .collect();
            for result in store.append_batch(requests).await {
                result.expect("batched append");
            }
        }
        report(
            &format!("append_batch ({batch_size} per batch)"),
            n,
            started,
        );
    }

    let output = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &server.port().to_string()])
        .args(["-t", "set", "-P", "16", "-q", "-n", "200000"])
        .output();
    match output {
        Ok(output) => print!(
            "redis-benchmark -t set -P 16 -q -n 200000: {}",
            String::from_utf8_lossy(&output.stdout)
                .rsplit('\r')
                .next()
                .unwrap_or_default()
        ),
        Err(err) => println!("redis-benchmark did not run: {err}"),
    }
}

/// What the server has spent so far: `EVALSHA` calls and their time, and its CPU.
#[derive(Debug, Clone, Copy, Default)]
struct ServerSpent {
    evalsha_calls: u64,
    evalsha_usec: u64,
    cpu_secs: f64,
}

async fn server_spent(conn: &mut redis::aio::MultiplexedConnection) -> ServerSpent {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .arg("cpu")
        .query_async(conn)
        .await
        .expect("INFO");
    let mut spent = ServerSpent::default();
    for line in info.lines() {
        if let Some(stats) = line.strip_prefix("cmdstat_evalsha:") {
            for field in stats.split(',') {
                match field.split_once('=') {
                    Some(("calls", n)) => spent.evalsha_calls = n.parse().unwrap_or(0),
                    Some(("usec", n)) => spent.evalsha_usec = n.parse().unwrap_or(0),
                    _ => {}
                }
            }
        } else if let Some((name, value)) = line.split_once(':')
            && (name == "used_cpu_user" || name == "used_cpu_sys")
        {
            spent.cpu_secs += value.trim().parse::<f64>().unwrap_or(0.0);
        }
    }
    spent
}

/// A finished task as the task layer persists it.
fn task_thread(run: &str, i: usize) -> Thread {
    let (mut thread, finish) = task_parts(run, i);
    thread.messages.extend(finish.messages);
    thread.state = finish.state.unwrap_or_default();
    thread.terminal = true;
    thread
}

/// A task as the task layer writes it when it runs for a while: the thread
/// its start created (running, with the start message), and the change set
/// of its finish (the completed state, the finish message, the finished
/// mark).
fn task_parts(run: &str, i: usize) -> (Thread, ChangeSet) {
    let id = format!("task:{run}-{i:08}");
    let owner = format!("conversation-{:03}", i % 100);
    let run_id = format!("01J9ZK{i:020}");
    let state = json!({
        "task_id": format!("{run}-{i:08}"),
        "owner_thread_id": owner,
        "task_type": "shell",
        "description": "ls -la /tmp && echo done",
        "status": "completed",
        "error": null,
        "result": { "exit_code": 0, "stdout": "done" },
        "parent_task_id": null,
        "supports_resume": false,
        "attempt": 1,
        "metadata": { "source": "bench" },
        "created_at_ms": 1_767_225_600_000u64 + i as u64,
        "updated_at_ms": 1_767_225_600_015u64 + i as u64,
        "completed_at_ms": 1_767_225_600_015u64 + i as u64,
        "cancel_requested_at_ms": null,
        "lease": null,
        "run_id": run_id,
    });
    let event = |event: &str, at: u64| {
        json!({
            "event": event,
            "attempt": 1,
            "at_ms": 1_767_225_600_000u64 + at,
            "run_id": run_id,
            "status": "completed",
        })
    };
    let mut running = state.clone();
    running["status"] = json!("running");
    running["result"] = json!(null);
    running["completed_at_ms"] = json!(null);
    let thread = Thread::new(id, "task")
        .with_parent(owner)
        .with_state(running)
        .with_message(NewMessage::with_id("a1:start", event("start", 0)));
    let finish = ChangeSet::state(state)
        .with_message(NewMessage::with_id("a1:finish", event("finish", 15)))
        .with_terminal(true);
    (thread, finish)
}

/// What the modes of `tasks_main` write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Workload {
    /// Finished tasks written as fresh threads (`create`, `create_batch`).
    Creates,
    /// Finishes of tasks whose start is written (`append`, `append_batch`).
    Finishes,
}

/// One run of `n` finishes on threads created beforehand (not counted):
/// through `append` with `batch` appends in flight (`one_each`), or through
/// `append_batch` of `batch` appends, `in_flight` batches at a time.
/// Returns appends/s, server µs in EVALSHA per append, server CPU µs per
/// append.
async fn finish_run(
    store: &RedisStore,
    raw: &mut redis::aio::MultiplexedConnection,
    run: &str,
    n: usize,
    (batch, in_flight, one_each): (usize, usize, bool),
) -> (f64, f64, f64) {
    let (threads, finishes): (Vec<Thread>, Vec<ChangeSet>) =
        (0..n).map(|i| task_parts(run, i)).unzip();
    let requests: Vec<AppendRequest> = threads
        .iter()
        .zip(finishes)
        .map(|(thread, changes)| AppendRequest {
            id: thread.id.clone(),
            changes,
            precondition: VersionPrecondition::Exact(1),
        })
        .collect();
    for result in store.create_batch(threads).await {
        result.expect("create the started tasks");
    }
    let mut batches = Vec::new();
    let mut requests = requests.into_iter().peekable();
    while requests.peek().is_some() {
        batches.push(requests.by_ref().take(batch).collect::<Vec<_>>());
    }
    let before = server_spent(raw).await;
    let started = Instant::now();
    let writes = batches.into_iter().map(|batch| {
        let store = store.clone();
        async move {
            let results = if one_each {
                futures::future::join_all(batch.into_iter().map(|request| {
                    let store = store.clone();
                    async move {
                        store
                            .append(&request.id, request.changes, request.precondition)
                            .await
                    }
                }))
                .await
            } else {
                store.append_batch(batch).await
            };
            for result in results {
                assert_eq!(result.expect("finish").version, 2);
            }
        }
    });
    futures::stream::iter(writes)
        .buffer_unordered(in_flight)
        .collect::<Vec<_>>()
        .await;
    let secs = started.elapsed().as_secs_f64();
    let after = server_spent(raw).await;
    let appends = n as f64;
    (
        appends / secs,
        (after.evalsha_usec - before.evalsha_usec) as f64 / appends,
        (after.cpu_secs - before.cpu_secs) * 1e6 / appends,
    )
}

/// One run of `n` tasks: through `create` with 64 in flight (`batch == 0`),
/// or through `create_batch` of `batch` tasks, `in_flight` batches at a time.
/// Returns tasks/s, server µs in EVALSHA per task, server CPU µs per task.
async fn task_run(
    store: &RedisStore,
    raw: &mut redis::aio::MultiplexedConnection,
    run: &str,
    n: usize,
    batch: usize,
    in_flight: usize,
) -> (f64, f64, f64) {
    let threads: Vec<Thread> = (0..n).map(|i| task_thread(run, i)).collect();
    let before = server_spent(raw).await;
    let started = Instant::now();
    if batch == 0 {
        let creates = threads.into_iter().map(|thread| {
            let store = store.clone();
            async move { store.create(thread).await.expect("create") }
        });
        futures::stream::iter(creates)
            .buffer_unordered(in_flight)
            .collect::<Vec<_>>()
            .await;
    } else {
        let mut batches = Vec::new();
        let mut threads = threads.into_iter().peekable();
        while threads.peek().is_some() {
            batches.push(threads.by_ref().take(batch).collect::<Vec<_>>());
        }
        let writes = batches.into_iter().map(|batch| {
            let store = store.clone();
            async move {
                for result in store.create_batch(batch).await {
                    result.expect("batched create");
                }
            }
        });
        futures::stream::iter(writes)
            .buffer_unordered(in_flight)
            .collect::<Vec<_>>()
            .await;
    }
    let secs = started.elapsed().as_secs_f64();
    let after = server_spent(raw).await;
    let tasks = n as f64;
    (
        tasks / secs,
        (after.evalsha_usec - before.evalsha_usec) as f64 / tasks,
        (after.cpu_secs - before.cpu_secs) * 1e6 / tasks,
    )
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

async fn tasks_main(args: &[String], workload: Workload) {
    let n: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let reps: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(5);
    let retention = args.get(2).map(String::as_str) == Some("retention");
    let server = RedisServer::builder()
        .start()
        .expect("start a private redis-server");
    println!(
        "private redis-server on port {}, no persistence; {n} tasks per run, {reps} runs, retention {}",
        server.port(),
        if retention { "1 day" } else { "none" }
    );
    let options = RedisStoreOptions::default()
        .with_prefix("bench")
        .with_retention(retention.then(|| std::time::Duration::from_secs(24 * 3600)))
        .with_sweep_interval(None);
    let store = RedisStore::connect_with(&server.url(), options)
        .await
        .expect("connect");
    let mut raw = redis::Client::open(server.url())
        .expect("URL")
        .get_multiplexed_async_connection()
        .await
        .expect("raw connection");

    // (label, batch size (0: one create each), in flight, one write each)
    let modes: Vec<(&str, usize, usize, bool)> = match workload {
        Workload::Creates => vec![
            ("create, 64 in flight", 0, 64, true),
            ("create_batch of 64, 4 in flight", 64, 4, false),
            ("create_batch of 128, 4 in flight", 128, 4, false),
            ("create_batch of 256, 2 in flight", 256, 2, false),
            ("create_batch of 1024, 1 in flight", 1024, 1, false),
        ],
        Workload::Finishes => vec![
            ("append, 256 in flight", 256, 1, true),
            ("append_batch of 64, 4 in flight", 64, 4, false),
            ("append_batch of 256, 2 in flight", 256, 2, false),
            ("append_batch of 1024, 1 in flight", 1024, 1, false),
        ],
    };
    println!(
        "{:<36} {:>10} {:>14} {:>14}",
        "mode", "writes/s", "evalsha µs/w", "cpu µs/w"
    );
    let only = std::env::var("THROUGHPUT_ONLY").unwrap_or_default();
    let modes: Vec<_> = modes
        .into_iter()
        .filter(|(label, ..)| label.contains(only.as_str()))
        .collect();
    // The modes take turns within each round, so that the noise of a busy
    // machine spreads over all of them alike.
    let mut figures: Vec<(Vec<f64>, Vec<f64>, Vec<f64>)> = vec![Default::default(); modes.len()];
    for rep in 0..reps {
        for (&(label, batch, in_flight, one_each), (rates, evalsha, cpu)) in
            modes.iter().zip(&mut figures)
        {
            let _: () = redis::cmd("FLUSHALL")
                .query_async(&mut raw)
                .await
                .expect("FLUSHALL");
            let run = format!("b{batch}r{rep}");
            let (rate, server_us, cpu_us) = match workload {
                Workload::Creates => task_run(&store, &mut raw, &run, n, batch, in_flight).await,
                Workload::Finishes => {
                    finish_run(&store, &mut raw, &run, n, (batch, in_flight, one_each)).await
                }
            };
            println!("  {label:<34} {rate:>10.0} {server_us:>14.2} {cpu_us:>14.2}");
            rates.push(rate);
            evalsha.push(server_us);
            cpu.push(cpu_us);
        }
    }
    for ((label, ..), (rates, evalsha, cpu)) in modes.iter().zip(&mut figures) {
        println!(
            "{:<36} {:>10.0} {:>14.2} {:>14.2}   (median of {reps})",
            label,
            median(rates),
            median(evalsha),
            median(cpu)
        );
    }
}
