//! Operating the manager in a service (issue 14): deadlines, output a UI can
//! read, tasks of other processes, owner scope everywhere, housekeeping of
//! instance records. On `MemoryStore`; `tests/redis.rs` runs the store-facing
//! ones on Redis.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use task_core::thread_store::ThreadStore;
use task_core::{
    BackgroundTaskManager, TaskError, TaskEventKind, TaskResult, TaskStatus, TaskStore,
};
use task_store_memory::MemoryStore;
use task_testkit::{Fault, FlakyStore, HangHandle, Operation};

fn store() -> Arc<dyn ThreadStore> {
    Arc::new(MemoryStore::new())
}

fn single(store: &Arc<dyn ThreadStore>) -> BackgroundTaskManager {
    BackgroundTaskManager::builder()
        .task_store(Arc::new(TaskStore::new(Arc::clone(store))))
        .build()
}

fn multi(store: &Arc<dyn ThreadStore>, instance: &str) -> BackgroundTaskManager {
    BackgroundTaskManager::builder()
        .task_store(Arc::new(TaskStore::new(Arc::clone(store))))
        .instance_id(instance)
        .lease(Duration::from_secs(10), Duration::from_secs(3))
        .control_poll_interval(Duration::from_millis(100))
        .build()
}

async fn waiting(m: &BackgroundTaskManager, owner: &str, task_type: &str) -> String {
    m.spawn(owner, task_type, "waits", |ctx| async move {
        ctx.cancelled().await;
        TaskResult::Cancelled
    })
    .await
    .expect("spawn")
}

// Deadlines -------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn shutdown_is_bounded_by_its_grace_when_the_store_hangs() {
    let flaky = Arc::new(FlakyStore::new(store()));
    let store: Arc<dyn ThreadStore> = flaky.clone();
    let m = multi(&store, "deploying");
    let id = waiting(&m, "o", "agent_run").await;
    m.flush().await;
    // The store hangs now: every call, reads and writes.
    let hang = HangHandle::new();
    for op in Operation::ALL {
        flaky.inject(op, Fault::hang(&hang));
    }
    let started = tokio::time::Instant::now();
    let report = m.shutdown(Duration::from_secs(1)).await;
    let took = started.elapsed();
    assert!(
        took <= Duration::from_millis(1_100),
        "shutdown took {took:?}"
    );
    assert_eq!(
        report.finished,
        [id.as_str()],
        "the task stopped when asked"
    );
    assert!(!report.lease_released, "{report:?}");
    let pending: Vec<&str> = report
        .not_durable
        .iter()
        .map(|p| p.task_id.as_str())
        .collect();
    assert_eq!(pending, [id.as_str()], "what is not durable is reported");
    assert!(report.not_durable[0].writes >= 1);
    hang.release();
}

#[tokio::test(start_paused = true)]
async fn flush_timeout_reports_what_is_not_durable_and_keeps_it_queued() {
    let flaky = Arc::new(FlakyStore::new(store()));
    let store: Arc<dyn ThreadStore> = flaky.clone();
    let m = single(&store);
    let hang = HangHandle::new();
    flaky.inject(Operation::Create, Fault::hang(&hang));
    let id = m
        .spawn("o", "t", "d", |_| async { TaskResult::Success(json!(1)) })
        .await
        .expect("spawn");
    m.wait("o", &id).await.expect("known");
    let err = m
        .flush_timeout(Duration::from_millis(300))
        .await
        .expect_err("the store hangs");
    assert_eq!(err.pending.len(), 1);
    assert_eq!(err.pending[0].task_id, id);
    hang.release();
    flaky.clear_faults();
    m.flush_timeout(Duration::from_secs(60))
        .await
        .expect("durable once the store answers");
}

// Output and progress -----------------------------------------------------------

#[tokio::test]
async fn output_is_read_by_owner_with_a_cursor_live_and_after_a_restart() {
    let store = store();
    let m = single(&store);
    let id = m
        .spawn("o", "t", "d", |ctx| async move {
            for i in 0..5 {
                ctx.emit(json!({ "line": i }));
            }
            TaskResult::Success(Value::Null)
        })
        .await
        .expect("spawn");
    m.wait("o", &id).await.expect("known");
    m.flush().await;
    let first = m.output("o", &id, 0, 2).await.expect("output");
    assert_eq!(
        first
            .entries
            .iter()
            .map(|e| e.value["line"].clone())
            .collect::<Vec<_>>(),
        [json!(0), json!(1)]
    );
    let rest = m.output("o", &id, first.next, 10).await.expect("output");
    assert_eq!(rest.entries.len(), 3);
    assert_eq!(rest.entries[2].seq, 5);
    assert!(rest.entries.iter().all(|e| e.attempt == 1));
    let end = m.output("o", &id, rest.next, 10).await.expect("output");
    assert!(end.entries.is_empty());
    // Another owner cannot read it.
    assert!(matches!(
        m.output("someone-else", &id, 0, 10).await,
        Err(TaskError::UnknownTask { .. })
    ));
    // A new process on the same store reads it back from the log.
    drop(m);
    let restarted = single(&store);
    let again = restarted.output("o", &id, 0, 100).await.expect("output");
    assert_eq!(again.entries.len(), 5);
    assert_eq!(again.entries[4].value, json!({ "line": 4 }));
}

#[tokio::test]
async fn without_a_store_the_last_outputs_of_a_task_are_kept() {
    let m = BackgroundTaskManager::new();
    let id = m
        .spawn("o", "t", "d", |ctx| async move {
            for i in 0..3 {
                ctx.emit(json!(i));
            }
            TaskResult::Success(Value::Null)
        })
        .await
        .expect("spawn");
    m.wait("o", &id).await.expect("known");
    let page = m.output("o", &id, 0, 0).await.expect("output");
    assert_eq!(
        page.entries
            .iter()
            .map(|e| e.value.clone())
            .collect::<Vec<_>>(),
        [json!(0), json!(1), json!(2)]
    );
    let tail = m
        .output("o", &id, page.entries[0].cursor, 0)
        .await
        .expect("output");
    assert_eq!(tail.entries.len(), 2);
}

#[tokio::test]
async fn an_output_stream_follows_a_running_task_to_its_end() {
    let store = store();
    let m = single(&store);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u32>();
    let id = m
        .spawn("o", "t", "d", |ctx| async move {
            while let Some(i) = rx.recv().await {
                ctx.emit(json!(i));
            }
            TaskResult::Success(Value::Null)
        })
        .await
        .expect("spawn");
    let mut stream = Box::pin(m.output_stream("o", &id, 0));
    for i in 0..3 {
        tx.send(i).expect("the task listens");
        let entry = stream.next().await.expect("an entry").expect("readable");
        assert_eq!(entry.value, json!(i));
    }
    tx.send(3).expect("the task listens");
    drop(tx);
    let entry = stream.next().await.expect("an entry").expect("readable");
    assert_eq!(entry.value, json!(3));
    assert!(
        stream.next().await.is_none(),
        "the stream ends with the task"
    );
}

#[tokio::test]
async fn progress_shows_while_the_task_runs_and_in_events() {
    let m = BackgroundTaskManager::new();
    let mut events = m.subscribe();
    let (go, went) = tokio::sync::oneshot::channel::<()>();
    let (reported, report) = tokio::sync::oneshot::channel::<()>();
    let id = m
        .spawn("o", "t", "d", |ctx| async move {
            ctx.progress(Some(0.5), Some("half way"));
            ctx.progress(Some(7.0), None);
            let _ = reported.send(());
            let _ = went.await;
            TaskResult::Success(Value::Null)
        })
        .await
        .expect("spawn");
    report.await.expect("the task reported");
    let progress = m.progress("o", &id).await.expect("reported");
    assert_eq!(progress.fraction, Some(1.0), "clamped");
    assert_eq!(progress.message, None);
    assert!(m.progress("someone-else", &id).await.is_none());
    go.send(()).expect("the task waits");
    m.wait("o", &id).await.expect("known");
    let mut seen = Vec::new();
    while let Ok(event) = events.try_recv() {
        if let TaskEventKind::Progress(p) = event.kind {
            seen.push(p.fraction);
        }
    }
    assert_eq!(seen, [Some(0.5), Some(1.0)]);
}

// Across processes ---------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn get_and_wait_answer_for_a_task_another_process_holds() {
    let store = store();
    let a = multi(&store, "a");
    let b = multi(&store, "b");
    let (finish, finished) = tokio::sync::oneshot::channel::<()>();
    let id = a
        .spawn("o", "t", "d", |_| async move {
            let _ = finished.await;
            TaskResult::Success(json!("from a"))
        })
        .await
        .expect("spawn");
    a.flush().await;
    let seen = b.get("o", &id).await.expect("durable");
    assert_eq!(seen.status, TaskStatus::Running);
    assert!(b.get("someone-else", &id).await.is_none());
    let waiter = {
        let b = b.clone();
        let id = id.clone();
        tokio::spawn(async move { b.wait("o", &id).await })
    };
    tokio::task::yield_now().await;
    finish.send(()).expect("the task waits");
    let done = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the wait ends")
        .expect("no panic")
        .expect("known");
    assert_eq!(done.status, TaskStatus::Completed);
    assert_eq!(done.result, Some(json!("from a")));
}

#[tokio::test(start_paused = true)]
async fn watching_an_owner_sees_the_changes_another_process_makes() {
    let store = store();
    let a = multi(&store, "a");
    let b = multi(&store, "b");
    let mut watch = Box::pin(b.watch_owner("o"));
    let id = waiting(&a, "o", "t").await;
    a.flush().await;
    let seen = watch.next().await.expect("an item").expect("readable");
    assert_eq!(
        (seen.task_id.as_str(), seen.status),
        (id.as_str(), TaskStatus::Running)
    );
    a.cancel("o", &id).await.expect("cancel");
    a.wait("o", &id).await.expect("known");
    a.flush().await;
    let seen = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .expect("the change shows")
        .expect("an item")
        .expect("readable");
    assert_eq!(
        (seen.task_id.as_str(), seen.status),
        (id.as_str(), TaskStatus::Cancelled)
    );
}

// Owner scope ------------------------------------------------------------------------

#[tokio::test]
async fn set_status_is_scoped_to_the_owner_and_update_status_is_privileged() {
    let m = BackgroundTaskManager::new();
    let id = waiting(&m, "alice", "t").await;
    assert!(matches!(
        m.set_status("bob", &id, TaskStatus::Failed, Some("no".into()))
            .await,
        Err(TaskError::UnknownTask { .. })
    ));
    assert!(matches!(
        m.set_status("alice", &id, TaskStatus::Running, None).await,
        Err(TaskError::InvalidInput { .. })
    ));
    assert_eq!(
        m.get("alice", &id).await.expect("known").status,
        TaskStatus::Running
    );
    m.set_status("alice", &id, TaskStatus::Completed, None)
        .await
        .expect("owner sets it");
    assert_eq!(
        m.wait("alice", &id).await.expect("known").status,
        TaskStatus::Completed
    );
    assert!(matches!(
        m.set_status("alice", &id, TaskStatus::Failed, None).await,
        Err(TaskError::NotRunning { .. })
    ));
    // The compatibility call ignores owners, as documented.
    let other = waiting(&m, "alice", "t").await;
    assert!(
        m.update_status(&other, TaskStatus::Failed, Some("ops".into()))
            .await
    );
    assert_eq!(
        m.get("alice", &other).await.expect("known").status,
        TaskStatus::Failed
    );
}

// Housekeeping -----------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn instance_records_go_at_a_clean_shutdown_and_expire_when_a_process_dies() {
    let store = store();
    let leaving = multi(&store, "leaving");
    let dying = multi(&store, "dying");
    let survivor = multi(&store, "survivor");
    waiting(&dying, "o", "agent_run").await;
    dying.flush().await;
    tokio::time::advance(Duration::from_secs(1)).await;
    tokio::task::yield_now().await;
    for instance in ["leaving", "dying", "survivor"] {
        assert!(
            store
                .load(&format!("instance:{instance}"))
                .await
                .expect("load")
                .is_some(),
            "{instance} renews its lease"
        );
    }
    let report = leaving.shutdown(Duration::from_secs(2)).await;
    assert!(report.lease_released);
    assert!(
        store
            .load("instance:leaving")
            .await
            .expect("load")
            .is_none()
    );
    drop(dying);
    for _ in 0..40 {
        tokio::time::advance(Duration::from_secs(1)).await;
        tokio::task::yield_now().await;
    }
    let report = survivor.recover().await.expect("recover");
    assert_eq!(report.stopped.len(), 1, "{report:?}");
    // Its task is recovered first; its record goes with the next recovery
    // that finds nothing held by it.
    let report = survivor.recover().await.expect("recover");
    assert_eq!(report.instances_removed, ["dying"], "{report:?}");
    assert!(store.load("instance:dying").await.expect("load").is_none());
    assert!(
        store
            .load("instance:survivor")
            .await
            .expect("load")
            .is_some()
    );
}
