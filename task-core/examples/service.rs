//! The manager in a service, on the in-memory store: handlers by task type
//! with a concurrency limit, a retry policy and a timeout; a task's output
//! read back by a new manager after a "restart"; work that a crashed
//! process left stopped, resumed by a survivor with the same handlers from
//! its last checkpoint; and a shutdown with a deadline.
//!
//! Run it with `cargo run --example service`.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use task_core::thread_store::ThreadStore;
use task_core::{
    BackgroundTaskManager, BackgroundTaskManagerBuilder, RetryPolicy, TaskPolicy, TaskRequest,
    TaskResult, TaskStore,
};

const OWNER: &str = "conversation-7";

/// The handlers and policies every process of the service registers.
fn service(store: &Arc<dyn ThreadStore>, instance: &str) -> BackgroundTaskManagerBuilder {
    BackgroundTaskManager::builder()
        .task_store(Arc::new(TaskStore::new(Arc::clone(store))))
        .instance_id(instance)
        .lease(Duration::from_millis(600), Duration::from_millis(150))
        .clock_skew_allowance(Duration::from_millis(100))
        // At most 2 crawls at once; the others wait, shown as queued.
        .policy("crawl", TaskPolicy::default().with_concurrency(2))
        .handler("crawl", |ctx| async move {
            let url = ctx.metadata()["url"].as_str().unwrap_or("?").to_owned();
            ctx.emit(json!({ "fetching": url }));
            tokio::time::sleep(Duration::from_millis(100)).await;
            ctx.emit(json!({ "fetched": url, "bytes": 2048 }));
            TaskResult::Success(json!({ "url": url }))
        })
        // A flaky upstream: retried, 3 attempts in all, 50 ms apart at first.
        .policy(
            "sync",
            TaskPolicy::default()
                .with_retry(
                    RetryPolicy::attempts(3)
                        .with_backoff(Duration::from_millis(50), Duration::from_millis(200)),
                )
                .with_timeout(Duration::from_secs(2)),
        )
        .handler("sync", |ctx| async move {
            match ctx.attempt() {
                1 | 2 => TaskResult::Failed(format!("upstream busy (attempt {})", ctx.attempt())),
                _ => TaskResult::Success(json!("synced")),
            }
        })
        // Long work that saves checkpoints and can find a new home.
        .policy("index", TaskPolicy::default().with_resumable(true))
        .handler("index", |ctx| async move {
            let done = ctx
                .last_checkpoint()
                .and_then(|c| c["done"].as_u64())
                .unwrap_or(0);
            for step in done..10 {
                if ctx.checkpoint(json!({ "done": step })).is_err() {
                    return TaskResult::Stopped;
                }
                tokio::select! {
                    () = ctx.cancelled() => return TaskResult::Stopped,
                    () = tokio::time::sleep(Duration::from_millis(30)) => {}
                }
            }
            TaskResult::Success(json!({ "indexed": 10, "resumed_at": done }))
        })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let store = task_core::store::open("memory://").await?;

    // 1. Limits, retries and output.
    let first = service(&store, "web-1").build();
    let mut crawls = Vec::new();
    for page in ["a", "b", "c", "d"] {
        let request = TaskRequest::new(OWNER, "crawl")
            .with_description(format!("crawl page {page}"))
            .with_metadata(json!({ "url": format!("https://example.com/{page}") }));
        crawls.push(first.submit(request).await?);
    }
    let queued = first.list(OWNER, Some(task_core::TaskStatus::Queued)).await;
    println!(
        "{} crawls run, {} wait for the limit",
        4 - queued.len(),
        queued.len()
    );
    let sync = first.submit(TaskRequest::new(OWNER, "sync")).await?;
    let synced = first
        .wait(OWNER, &sync)
        .await
        .ok_or("the sync task is known")?;
    println!(
        "sync: {} after {} attempts ({:?})",
        synced.status, synced.attempt, synced.result
    );
    for id in &crawls {
        first.wait(OWNER, id).await;
    }
    first.flush().await;

    // 2. A new process reads a task's output back from the store, with a
    //    cursor a UI can keep.
    drop(first);
    let second = service(&store, "web-2").build();
    let page = second.output(OWNER, &crawls[0], 0, 10).await?;
    for entry in &page.entries {
        println!(
            "output of {} #{}: {}",
            &crawls[0][..8],
            entry.seq,
            entry.value
        );
    }

    // 3. A process crashes in the middle of an index; a survivor with the
    //    same handlers resumes it from its last checkpoint.
    let doomed = service(&store, "worker-doomed").build();
    let index = doomed.submit(TaskRequest::new(OWNER, "index")).await?;
    tokio::time::sleep(Duration::from_millis(120)).await;
    doomed.flush().await;
    drop(doomed); // the process dies: its lease runs out
    tokio::time::sleep(Duration::from_millis(900)).await;
    let report = second.recover().await?;
    println!(
        "recovery: stopped {:?}, resumed {:?}",
        report.stopped, report.resumed
    );
    let done = second
        .wait(OWNER, &index)
        .await
        .ok_or("the index is known")?;
    println!(
        "index: {} on attempt {} ({:?})",
        done.status, done.attempt, done.result
    );

    // 4. A deploy: shut down within a deadline; what is not durable says so.
    let report = second.shutdown(Duration::from_secs(1)).await;
    println!(
        "shutdown: {} finished, {} interrupted, {} not durable, lease released: {}",
        report.finished.len(),
        report.interrupted.len(),
        report.not_durable.len(),
        report.lease_released
    );
    Ok(())
}
