//! Measures what a store outage costs the manager and the store: the store
//! calls per second while every write fails, the memory the outbox holds
//! per finished task and whether it is given back once the store heals, and
//! the cost of a retention policy while writes fail and while they succeed.
//!
//! ```text
//! cargo run --release --example outage -- [calls|memory|retention] [tasks]
//! ```
//!
//! It prints one line per figure. The store is a `MemoryStore` behind
//! `task-testkit`'s `FlakyStore`, which fails every write during the outage.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use task_core::thread_store::ThreadStore;
use task_core::{BackgroundTaskManager, RetentionPolicy, TaskResult, TaskStore};
use task_store_memory::MemoryStore;
use task_testkit::{Fault, FlakyStore, Operation};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

fn outage(flaky: &FlakyStore) {
    for op in [Operation::Create, Operation::Append, Operation::Save] {
        flaky.inject(op, Fault::fail());
    }
}

fn writes(flaky: &FlakyStore) -> u64 {
    flaky.counts(Operation::Create).calls + flaky.counts(Operation::Append).calls
}

fn manager(store: Arc<dyn ThreadStore>, retention: Option<usize>) -> BackgroundTaskManager {
    let mut builder = BackgroundTaskManager::builder()
        .task_store(Arc::new(TaskStore::new(store)))
        .persistence_backoff(Duration::from_millis(20), Duration::from_secs(1));
    if let Some(max) = retention {
        builder = builder.retention(RetentionPolicy {
            max_terminal_per_owner: Some(max),
            max_age: None,
        });
    }
    builder.build()
}

async fn finish_many(m: &BackgroundTaskManager, owners: usize, n: usize) -> Duration {
    let started = Instant::now();
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let owner = format!("owner-{}", i % owners);
        let id = m
            .spawn(&owner, "t", "d", |_| async {
                TaskResult::Success(Value::Null)
            })
            .await
            .expect("spawn");
        ids.push((owner, id));
    }
    for (owner, id) in &ids {
        m.wait(owner, id).await;
    }
    started.elapsed()
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let what = args.first().map_or("all", String::as_str);
    let tasks: usize = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(50_000);

    if what == "calls" || what == "all" {
        let flaky = Arc::new(FlakyStore::new(Arc::new(MemoryStore::new())));
        let m = manager(flaky.clone(), None);
        outage(&flaky);
        finish_many(&m, 10, 1_000).await;
        let before = writes(&flaky);
        tokio::time::sleep(Duration::from_secs(5)).await;
        let per_second = (writes(&flaky) - before) as f64 / 5.0;
        println!(
            "calls: {per_second:.0} store writes/s while every write fails (1,000 tasks pending)"
        );
    }

    if what == "memory" || what == "all" {
        // The store keeps few finished records, so what is measured is the
        // manager, not the store's own data.
        let bounded = MemoryStore::with_options(
            task_store_memory::MemoryStoreOptions::default().with_max_finished(Some(1_000)),
        );
        let flaky = Arc::new(FlakyStore::new(Arc::new(bounded)));
        let m = manager(flaky.clone(), None);
        finish_many(&m, 10, 1_000).await;
        m.flush().await;
        let start = rss_kib();
        outage(&flaky);
        finish_many(&m, 10, tasks).await;
        let during = rss_kib();
        flaky.clear_faults();
        m.flush().await;
        for i in 0..10 {
            m.gc_terminal(&format!("owner-{i}")).await;
        }
        let after = rss_kib();
        // The allocator keeps what was freed for reuse rather than handing
        // it back to the system: a second outage of the same size shows
        // whether the manager reuses it (nothing kept) or grows again.
        outage(&flaky);
        finish_many(&m, 10, tasks).await;
        let again = rss_kib();
        flaky.clear_faults();
        m.flush().await;
        for i in 0..10 {
            m.gc_terminal(&format!("owner-{i}")).await;
        }
        println!(
            "memory: {tasks} tasks finished during an outage: RSS {start} KiB before, {during} KiB \
             during (+{:.0} bytes per task), {after} KiB once the store healed, the writes were \
             durable and the tasks collected; a second outage of the same size: {again} KiB \
             (+{} KiB over the first)",
            (during.saturating_sub(start) * 1024) as f64 / tasks as f64,
            again.saturating_sub(during)
        );
    }

    if what == "retention" || what == "all" {
        let n = 10_000;
        for (label, fail) in [
            ("while every write fails", true),
            ("on a healthy store", false),
        ] {
            let mut figures = Vec::new();
            for retention in [None, Some(100)] {
                let flaky = Arc::new(FlakyStore::new(Arc::new(MemoryStore::new())));
                let m = manager(flaky.clone(), retention);
                if fail {
                    outage(&flaky);
                }
                let took = finish_many(&m, 1, n).await;
                figures.push(took);
            }
            println!(
                "retention: {n} tasks of one owner finishing {label}: {:.0} ms without a policy, \
                 {:.0} ms with max_terminal_per_owner 100",
                figures[0].as_secs_f64() * 1e3,
                figures[1].as_secs_f64() * 1e3
            );
        }
    }
}
