//! A worker process on Redis: it spawns long-running tasks for an owner,
//! holds their leases, and serves cancellation requests from other
//! processes until it is killed or its standard input closes.
//!
//! ```text
//! cargo run --example redis_worker --features redis -- \
//!     redis://127.0.0.1:6379/0?prefix=demo worker-1 conversation-42 tree 3
//! ```
//!
//! Arguments: URL, instance id, owner, shape (`flat N`: N independent tasks,
//! half of them resumable `agent_run`s; `tree N`: a root with N children;
//! `jobs N`: N tasks submitted to the handler of type `job`, which saves a
//! checkpoint and runs until cancelled, so that another process with the
//! same handler resumes them), N. It prints `READY <id>,<id>,...` once every task is durable, then
//! `FINISHED <id> <status>` for each task as it ends (after the outcome is
//! durable). The cross-process tests of task-core drive it.

use std::io::{BufRead, Write};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use task_core::{
    BackgroundTaskManager, RunCancellationToken, SpawnParams, TaskEventKind, TaskPolicy,
    TaskRequest, TaskResult, TaskStore, new_task_id,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, instance, owner, shape, count] = args.as_slice() else {
        return Err(
            "usage: redis_worker <url> <instance-id> <owner> <flat|tree|jobs> <count>".into(),
        );
    };
    let count: usize = count.parse()?;
    let store = task_core::store::open(url).await?;
    let manager = BackgroundTaskManager::builder()
        .task_store(Arc::new(TaskStore::new(store)))
        .instance_id(instance.as_str())
        .lease(Duration::from_secs(2), Duration::from_millis(500))
        .control_poll_interval(Duration::from_millis(50))
        .policy("job", TaskPolicy::default().with_resumable(true))
        .handler("job", |ctx| async move {
            if ctx.attempt() == 1 {
                let checkpoint = json!({ "step": 1, "by": "worker" });
                if ctx.checkpoint(checkpoint).is_err() {
                    return TaskResult::Failed("the checkpoint was refused".into());
                }
                // Tells the worker the checkpoint is queued.
                ctx.emit(json!("checkpointed"));
            }
            ctx.cancelled().await;
            TaskResult::Stopped
        })
        .build();
    let mut events = manager.subscribe();

    let until_cancelled = |ctx: task_core::TaskContext| async move {
        ctx.cancelled().await;
        TaskResult::Cancelled
    };
    let mut ids = Vec::new();
    match shape.as_str() {
        "flat" => {
            for i in 0..count {
                let task_type = if i % 2 == 0 { "agent_run" } else { "shell" };
                ids.push(
                    manager
                        .spawn(owner, task_type, "long work", until_cancelled)
                        .await?,
                );
            }
        }
        "tree" => {
            let root = manager
                .spawn(owner, "agent_run", "root", until_cancelled)
                .await?;
            ids.push(root.clone());
            for _ in 0..count {
                let params = SpawnParams {
                    task_id: new_task_id(),
                    owner_thread_id: owner.clone(),
                    task_type: "shell".to_owned(),
                    description: "child".to_owned(),
                    parent_task_id: Some(root.clone()),
                    metadata: json!(null),
                };
                let token = RunCancellationToken::new();
                ids.push(
                    manager
                        .spawn_with_id(params, token, until_cancelled)
                        .await?,
                );
            }
        }
        "jobs" => {
            for _ in 0..count {
                ids.push(
                    manager
                        .submit(TaskRequest::new(owner.as_str(), "job"))
                        .await?,
                );
            }
            // Every job has queued its checkpoint before READY's flush.
            let mut checkpointed = 0;
            while checkpointed < count {
                if let TaskEventKind::Output(_) = events.recv().await?.kind {
                    checkpointed += 1;
                }
            }
        }
        other => return Err(format!("unknown shape {other:?}: flat, tree or jobs").into()),
    }
    manager.flush().await;
    println!("READY {}", ids.join(","));
    std::io::stdout().flush()?;

    // Stop when the parent closes our standard input.
    let stdin_closed = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        while std::io::stdin()
            .lock()
            .read_line(&mut line)
            .is_ok_and(|n| n > 0)
        {
            line.clear();
        }
    });
    tokio::pin!(stdin_closed);
    loop {
        tokio::select! {
            _ = &mut stdin_closed => break,
            event = events.recv() => {
                let Ok(event) = event else { break };
                if let TaskEventKind::Finished { status } = event.kind {
                    manager.flush().await;
                    println!("FINISHED {} {status}", event.task_id);
                    std::io::stdout().flush()?;
                }
            }
        }
    }
    manager.shutdown(Duration::from_secs(1)).await;
    Ok(())
}
