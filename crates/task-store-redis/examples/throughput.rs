//! A first throughput figure: terminal writes per second from one process,
//! sequential, concurrent and batched, against a private `redis-server`, next
//! to `redis-benchmark -t set -P 16` on the same server.
//!
//! ```text
//! cargo run --release -p task-store-redis --example throughput [-- N [always|everysec]]
//! ```
//!
//! Without a second argument the server has no persistence; with one, it
//! runs with `appendonly yes` and that `appendfsync`.
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
