//! An agent thread starts a tree of background tasks on the in-memory store
//! and watches them: a fetch, a shell-like job that streams progress, a
//! sub-agent with two children, a lint that fails and a parser that panics.
//! The owner cancels the sub-agent's whole tree; every outcome is persisted.
//!
//! Run it with `cargo run --example quickstart`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use task_core::thread_store::ThreadReaderExt;
use task_core::{
    BackgroundTaskManager, RunCancellationToken, SpawnParams, TaskContext, TaskEventKind,
    TaskResult, TaskStatus, TaskStore, new_task_id,
};
use tokio::time::sleep;

const OWNER: &str = "conversation-42";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // One line per panic instead of the default report: the manager records
    // the panic message as the task's error anyway.
    std::panic::set_hook(Box::new(|info| eprintln!("(a task panicked: {info})")));
    let store = task_core::store::open("memory://").await?;
    let tasks = Arc::new(TaskStore::new(store.clone()));
    let manager = BackgroundTaskManager::builder()
        .task_store(tasks.clone())
        .cancel_grace(Duration::from_millis(500))
        .build();

    // Watch every transition as it happens: nothing here polls.
    let started = Instant::now();
    let mut events = manager.subscribe();
    let watcher = tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            let what = match &event.kind {
                TaskEventKind::Spawned => "spawned".to_owned(),
                TaskEventKind::Output(value) => format!("output {value}"),
                TaskEventKind::CancelRequested => "cancel requested".to_owned(),
                TaskEventKind::Finished { status } => format!("-> {status}"),
                TaskEventKind::Persisted => continue,
                other => format!("{other:?}"),
            };
            println!(
                "[{:>5.2}s] {:<8} {}",
                started.elapsed().as_secs_f64(),
                &event.task_id[event.task_id.len() - 8..],
                what
            );
        }
    });

    let fetch = manager
        .spawn(
            OWNER,
            "fetch",
            "GET https://api.example.com/weather",
            |ctx| async move {
                tokio::select! {
                    () = sleep(Duration::from_millis(300)) => {
                        TaskResult::Success(json!({ "status": 200, "temp_c": 21 }))
                    }
                    () = ctx.cancelled() => TaskResult::Cancelled,
                }
            },
        )
        .await?;

    let build = manager
        .spawn(OWNER, "shell", "cargo build --release", |ctx| async move {
            for percent in (0..=100).step_by(25) {
                if ctx.is_cancelled() {
                    return TaskResult::Cancelled;
                }
                ctx.emit(json!({ "progress": percent }));
                sleep(Duration::from_millis(150)).await;
            }
            TaskResult::Success(json!({ "exit_code": 0 }))
        })
        .await?;

    let lint = manager
        .spawn(OWNER, "shell", "cargo clippy", |_| async {
            sleep(Duration::from_millis(200)).await;
            TaskResult::Failed("3 warnings denied".to_owned())
        })
        .await?;

    let parse = manager
        .spawn(OWNER, "parse", "parse the uploaded PDF", |_| async {
            sleep(Duration::from_millis(100)).await;
            let pages: Vec<u32> = Vec::new();
            TaskResult::Success(json!(pages[3])) // index out of bounds: panics
        })
        .await?;

    // A sub-agent with two children, linked by parent task ids.
    let agent = spawn_sub_agent(&manager).await?;

    sleep(Duration::from_millis(400)).await;
    let cancelled = manager.cancel_tree(OWNER, &agent).await?;
    println!(
        "cancel_tree({}) requested {} cancellations",
        short(&agent),
        cancelled.len()
    );

    for id in [&fetch, &build, &lint, &parse, &agent] {
        manager.wait(OWNER, id).await;
    }
    for summary in manager.list(OWNER, None).await {
        manager.wait(OWNER, &summary.task_id).await;
    }
    manager.flush().await;

    // Let the watcher print everything before the tables: it ends when the
    // last handle to the manager is gone.
    let summaries = manager.list(OWNER, None).await;
    let mut durable = Vec::new();
    for s in &summaries {
        let record = tasks.load_task(&s.task_id).await?.ok_or("record missing")?;
        let log = store
            .load_all_messages(&TaskStore::thread_id(&s.task_id))
            .await?;
        assert_eq!(record.status, s.status, "the durable record matches");
        durable.push((s.task_id.clone(), record.status, log.len()));
    }
    let status = |id: &str| {
        let m = manager.clone();
        let id = id.to_owned();
        async move { m.get(OWNER, &id).await.map(|s| s.status) }
    };
    assert_eq!(status(&fetch).await, Some(TaskStatus::Completed));
    assert_eq!(status(&build).await, Some(TaskStatus::Completed));
    assert_eq!(status(&lint).await, Some(TaskStatus::Failed));
    assert_eq!(status(&parse).await, Some(TaskStatus::Failed));
    assert_eq!(status(&agent).await, Some(TaskStatus::Cancelled));
    drop(manager);
    watcher.await?;

    println!();
    println!("final summaries ({OWNER}):");
    println!(
        "{:<8} {:<10} {:<10} {:<7} detail",
        "task", "type", "status", "attempt"
    );
    for s in &summaries {
        let detail = s
            .error
            .clone()
            .or_else(|| s.result.as_ref().map(ToString::to_string))
            .unwrap_or_default();
        println!(
            "{:<8} {:<10} {:<10} {:<7} {}",
            short(&s.task_id),
            s.task_type,
            s.status,
            s.attempt,
            detail
        );
    }
    println!();
    println!("durable records after flush():");
    for (id, status, entries) in durable {
        println!("{:<8} {:<10} {entries} log entries", short(&id), status);
    }
    Ok(())
}

async fn spawn_sub_agent(manager: &BackgroundTaskManager) -> Result<String, task_core::TaskError> {
    let agent_id = new_task_id();
    let agent_token = RunCancellationToken::new();
    let m = manager.clone();
    let parent = agent_id.clone();
    manager
        .spawn_with_id(
            SpawnParams {
                task_id: agent_id.clone(),
                owner_thread_id: OWNER.to_owned(),
                task_type: "agent_run".to_owned(),
                description: "research sub-agent".to_owned(),
                parent_task_id: None,
                metadata: json!({ "model": "small", "depth": 1 }),
            },
            agent_token,
            move |ctx: TaskContext| async move {
                for (kind, what) in [("search", "search the web"), ("summarize", "summarize")] {
                    let child = SpawnParams {
                        task_id: new_task_id(),
                        owner_thread_id: OWNER.to_owned(),
                        task_type: kind.to_owned(),
                        description: what.to_owned(),
                        parent_task_id: Some(parent.clone()),
                        metadata: json!(null),
                    };
                    let spawned = m
                        .spawn_with_id(child, ctx.token().child_token(), |c| async move {
                            c.cancelled().await;
                            TaskResult::Cancelled
                        })
                        .await;
                    if let Err(e) = spawned {
                        return TaskResult::Failed(e.to_string());
                    }
                }
                ctx.cancelled().await;
                TaskResult::Stopped
            },
        )
        .await
}

fn short(id: &str) -> &str {
    &id[id.len().saturating_sub(8)..]
}
