//! The seven defects found by testing the manager as an attacker and as a
//! crash would (issue 10), each checked as the behaviour it must have, on
//! `MemoryStore` (the Redis versions live in `tests/redis.rs`). Time is
//! tokio's paused clock where leases matter.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use task_core::thread_store::{Thread, ThreadStore};
use task_core::{
    BackgroundTaskManager, RetentionPolicy, RunCancellationToken, SpawnParams, TaskError,
    TaskResult, TaskStatus, TaskStore,
};
use task_store_memory::MemoryStore;
use task_testkit::{Fault, FlakyStore, HangHandle, Operation};

const TTL: Duration = Duration::from_secs(10);

fn tasks(store: &Arc<dyn ThreadStore>) -> Arc<TaskStore> {
    Arc::new(TaskStore::new(Arc::clone(store)))
}

fn single(store: &Arc<dyn ThreadStore>) -> BackgroundTaskManager {
    BackgroundTaskManager::builder()
        .task_store(tasks(store))
        .build()
}

fn multi(store: &Arc<dyn ThreadStore>, instance: &str) -> BackgroundTaskManager {
    BackgroundTaskManager::builder()
        .task_store(tasks(store))
        .instance_id(instance)
        .lease(TTL, Duration::from_secs(3))
        .control_poll_interval(Duration::from_millis(100))
        .cancel_grace(Duration::from_secs(1))
        .build()
}

fn params(id: &str, owner: &str) -> SpawnParams {
    SpawnParams {
        task_id: id.to_owned(),
        owner_thread_id: owner.to_owned(),
        task_type: "agent_run".to_owned(),
        description: "d".to_owned(),
        parent_task_id: None,
        metadata: json!({ "who": owner }),
    }
}

async fn spawn_done(m: &BackgroundTaskManager, id: &str, owner: &str) {
    m.spawn_with_id(params(id, owner), RunCancellationToken::new(), |_| async {
        TaskResult::Success(json!("done"))
    })
    .await
    .expect("spawn");
    m.wait(owner, id).await.expect("known");
}

async fn spawn_waiting(m: &BackgroundTaskManager, id: &str, owner: &str, parent: Option<&str>) {
    m.spawn_with_id(
        SpawnParams {
            parent_task_id: parent.map(str::to_owned),
            ..params(id, owner)
        },
        RunCancellationToken::new(),
        |ctx| async move {
            ctx.cancelled().await;
            TaskResult::Cancelled
        },
    )
    .await
    .expect("spawn");
}

fn nested(depth: usize) -> Value {
    let mut value = json!("leaf");
    for _ in 0..depth {
        value = json!({ "n": value });
    }
    value
}

/// Advances paused time in small steps, so background loops run between.
async fn pass(time: Duration) {
    let step = Duration::from_millis(100);
    let mut passed = Duration::ZERO;
    while passed < time {
        tokio::time::advance(step).await;
        tokio::task::yield_now().await;
        passed += step;
    }
}

// 1. ------------------------------------------------------------------------

#[tokio::test]
async fn another_owner_cannot_take_over_a_finished_task() {
    let store: Arc<dyn ThreadStore> = Arc::new(MemoryStore::new());
    let m = single(&store);
    spawn_done(&m, "x", "alice").await;
    m.flush().await;
    let before = store.load("task:x").await.expect("load").expect("stored");

    let err = m
        .spawn_with_id(params("x", "bob"), RunCancellationToken::new(), |_| async {
            TaskResult::Success(Value::Null)
        })
        .await
        .expect_err("another owner's id");
    assert!(matches!(err, TaskError::IdTaken { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "Task id 'x' is already in use; choose another id"
    );
    let alice = m.get("alice", "x").await.expect("alice's task stays");
    assert_eq!((alice.status, alice.attempt), (TaskStatus::Completed, 1));
    assert!(m.get("bob", "x").await.is_none());

    // Forgotten by the registry, the id is still alice's: the store says so.
    assert_eq!(m.gc_terminal("alice").await, 1);
    let err = m
        .spawn_with_id(params("x", "bob"), RunCancellationToken::new(), |_| async {
            TaskResult::Success(Value::Null)
        })
        .await
        .expect_err("another owner's durable id");
    assert!(matches!(err, TaskError::IdTaken { .. }), "{err:?}");
    m.flush().await;
    let after = store.load("task:x").await.expect("load").expect("stored");
    assert_eq!(after, before, "alice's record stays exactly as it was");
}

#[tokio::test(start_paused = true)]
async fn another_owner_in_another_process_cannot_take_over_a_task() {
    let store: Arc<dyn ThreadStore> = Arc::new(MemoryStore::new());
    let a = multi(&store, "a");
    let b = multi(&store, "b");
    spawn_done(&a, "x", "alice").await;
    spawn_waiting(&a, "y", "alice", None).await;
    a.flush().await;
    let before_x = store.load("task:x").await.expect("load").expect("stored");
    let before_y = store.load("task:y").await.expect("load").expect("stored");
    for id in ["x", "y"] {
        let err = b
            .spawn_with_id(params(id, "bob"), RunCancellationToken::new(), |_| async {
                TaskResult::Success(Value::Null)
            })
            .await
            .expect_err("another owner's id");
        assert!(matches!(err, TaskError::IdTaken { .. }), "{id}: {err:?}");
        // Nor can bob resume, cancel or read it.
        assert!(matches!(
            b.resume("bob", id, |_| async { TaskResult::Stopped }).await,
            Err(TaskError::UnknownTask { .. })
        ));
        assert!(matches!(
            b.cancel("bob", id).await,
            Err(TaskError::UnknownTask { .. })
        ));
        assert!(b.get("bob", id).await.is_none());
    }
    b.flush().await;
    let after_x = store.load("task:x").await.expect("load").expect("stored");
    let after_y = store.load("task:y").await.expect("load").expect("stored");
    assert_eq!(after_x, before_x);
    assert_eq!(after_y.state, before_y.state);
    assert_eq!(
        a.get("alice", "y").await.expect("held").status,
        TaskStatus::Running
    );
}

// 2. ------------------------------------------------------------------------

#[tokio::test]
async fn a_refused_resume_writes_nothing() {
    let store: Arc<dyn ThreadStore> = Arc::new(MemoryStore::new());
    let m = single(&store);
    m.spawn_with_id(params("r", "o"), RunCancellationToken::new(), |_| async {
        TaskResult::Stopped
    })
    .await
    .expect("spawn");
    m.wait("o", "r").await.expect("known");
    m.flush().await;
    let before = store.load("task:r").await.expect("load").expect("stored");
    let report = m.shutdown(Duration::from_secs(1)).await;
    assert!(report.not_durable.is_empty(), "{report:?}");
    let before_resume = store.load("task:r").await.expect("load").expect("stored");
    assert_eq!(before_resume.version, before.version);

    let err = m
        .resume("o", "r", |_| async { TaskResult::Success(Value::Null) })
        .await
        .expect_err("shut down");
    assert!(matches!(err, TaskError::ShuttingDown), "{err:?}");
    m.flush().await;
    let after = store.load("task:r").await.expect("load").expect("stored");
    assert_eq!(after, before_resume, "a refusal writes nothing");
    let record = TaskStore::new(store)
        .load_task("r")
        .await
        .expect("load")
        .expect("stored");
    assert_eq!((record.status, record.attempt), (TaskStatus::Stopped, 1));
    assert_eq!(record.lease, None);
}

// 3. ------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn recovery_never_touches_an_outcome_whose_write_is_pending() {
    let flaky = Arc::new(FlakyStore::new(Arc::new(MemoryStore::new())));
    let store: Arc<dyn ThreadStore> = flaky.clone();
    let m = multi(&store, "me");
    let (finish, finished) = tokio::sync::oneshot::channel::<()>();
    m.spawn_with_id(
        params("p", "o"),
        RunCancellationToken::new(),
        |_| async move {
            let _ = finished.await;
            TaskResult::Success(json!("the real outcome"))
        },
    )
    .await
    .expect("spawn");
    m.flush().await;
    // The finish write hangs (a slow store); the task's outcome is known here.
    let hang = HangHandle::new();
    flaky.inject(Operation::Append, Fault::hang(&hang));
    finish.send(()).expect("the task waits");
    let done = m.wait("o", "p").await.expect("known");
    assert_eq!(done.status, TaskStatus::Completed);
    // Long past the lease, recovery on the same manager runs.
    pass(TTL * 3).await;
    let report = m.recover().await.expect("recover");
    assert!(
        report.failed.is_empty() && report.stopped.is_empty(),
        "recovery left the task alone: {report:?}"
    );
    hang.release();
    flaky.clear_faults();
    m.flush().await;
    let record = TaskStore::new(store)
        .load_task("p")
        .await
        .expect("load")
        .expect("stored");
    assert_eq!(record.status, TaskStatus::Completed);
    assert_eq!(record.result, Some(json!("the real outcome")));
    assert_eq!(
        m.get("o", "p").await.expect("known").persistence_error,
        None
    );
}

// 4. ------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_cancel_reaches_a_holder_whose_inbox_does_not_exist_yet() {
    let flaky = Arc::new(FlakyStore::new(Arc::new(MemoryStore::new())));
    let store: Arc<dyn ThreadStore> = flaky.clone();
    // The holder's lease writes all fail: its instance record (and inbox)
    // never exists unless someone else makes it.
    flaky.inject(Operation::Save, Fault::fail());
    let holder = multi(&store, "holder");
    spawn_waiting(&holder, "c", "o", None).await;
    holder.flush().await;
    assert!(store.load("instance:holder").await.expect("load").is_none());

    let other = multi(&store, "other");
    other
        .cancel("o", "c")
        .await
        .expect("a cancel that returns Ok");
    // It reaches the live holder within its poll interval and a bounded delay.
    let done = tokio::time::timeout(Duration::from_secs(2), holder.wait("o", "c"))
        .await
        .expect("the holder saw the cancel")
        .expect("known");
    assert_eq!(done.status, TaskStatus::Cancelled);
}

#[tokio::test(start_paused = true)]
async fn a_cancel_written_on_the_record_reaches_the_holder_through_its_own_writes() {
    let store: Arc<dyn ThreadStore> = Arc::new(MemoryStore::new());
    let holder = multi(&store, "holder");
    let (emit, mut emitted) = tokio::sync::mpsc::unbounded_channel::<()>();
    holder
        .spawn_with_id(
            params("w", "o"),
            RunCancellationToken::new(),
            |ctx| async move {
                // Emits output until cancelled: each output is a write.
                while !ctx.is_cancelled() {
                    let _ = emitted.recv().await;
                    ctx.emit(json!("tick"));
                }
                TaskResult::Cancelled
            },
        )
        .await
        .expect("spawn");
    holder.flush().await;
    // Only the durable request, no inbox message: a canceller that crashed
    // between its two writes.
    let tasks = TaskStore::new(store.clone());
    let record = tasks.load_task("w").await.expect("load").expect("stored");
    tasks
        .transition(
            "w",
            task_core::Transition::RequestCancel {
                attempt: record.attempt,
                at_ms: 1,
            },
        )
        .await
        .expect("request");
    emit.send(()).expect("the task runs");
    let done = tokio::time::timeout(Duration::from_secs(5), holder.wait("o", "w"))
        .await
        .expect("the holder saw the request")
        .expect("known");
    assert_eq!(done.status, TaskStatus::Cancelled);
}

// 5. ------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn cancel_tree_cancels_the_local_tree_while_the_store_is_down() {
    let flaky = Arc::new(FlakyStore::new(Arc::new(MemoryStore::new())));
    let store: Arc<dyn ThreadStore> = flaky.clone();
    for m in [single(&store), multi(&store, "m")] {
        let root = format!("root-{}", m.is_multi_process());
        let child = format!("child-{}", m.is_multi_process());
        spawn_waiting(&m, &root, "o", None).await;
        spawn_waiting(&m, &child, "o", Some(&root)).await;
        m.flush().await;
        for op in Operation::ALL {
            flaky.inject(op, Fault::fail());
        }
        let cancelled = m.cancel_tree("o", &root).await.expect("the local tree");
        let ids: Vec<&str> = cancelled.iter().map(|s| s.task_id.as_str()).collect();
        assert_eq!(ids, [root.as_str(), child.as_str()]);
        for id in [&root, &child] {
            assert_eq!(
                m.wait("o", id).await.expect("known").status,
                TaskStatus::Cancelled
            );
        }
        flaky.clear_faults();
    }
    // The remote part's failure is reported apart.
    let m = multi(&store, "n");
    spawn_waiting(&m, "r2", "o", None).await;
    m.flush().await;
    flaky.inject(Operation::List, Fault::fail());
    let report = m
        .cancel_tree_report("o", "r2")
        .await
        .expect("the local part");
    assert_eq!(report.cancelled.len(), 1);
    let error = report.remote_error.expect("the remote part failed");
    assert!(error.is_retryable(), "{error:?}");
    flaky.clear_faults();
}

// 6. ------------------------------------------------------------------------

#[tokio::test]
async fn json_nested_too_deep_is_refused_at_the_boundary_and_changes_nothing() {
    let store: Arc<dyn ThreadStore> = Arc::new(MemoryStore::new());
    let m = single(&store);
    // About 400 bytes, 200 levels: small, and far too deep for a parser.
    let err = m
        .spawn_with_id(
            SpawnParams {
                metadata: nested(200),
                ..params("deep", "o")
            },
            RunCancellationToken::new(),
            |_| async { TaskResult::Success(Value::Null) },
        )
        .await
        .expect_err("too deep");
    assert!(matches!(err, TaskError::InvalidInput { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("metadata") && text.contains("64"), "{text}");
    assert!(!m.contains_any("deep").await);
    assert!(store.load("task:deep").await.expect("load").is_none());
    // As deep as allowed is accepted and round-trips exactly.
    let ok = nested(task_core::MAX_JSON_DEPTH - 1);
    m.spawn_with_id(
        SpawnParams {
            metadata: ok.clone(),
            ..params("ok", "o")
        },
        RunCancellationToken::new(),
        |ctx| async move {
            let refused = ctx.try_emit(nested(200));
            assert!(matches!(refused, Err(TaskError::InvalidInput { .. })));
            ctx.try_emit(nested(10)).expect("fine");
            TaskResult::Success(Value::Null)
        },
    )
    .await
    .expect("spawn");
    assert_eq!(m.wait("o", "ok").await.expect("known").metadata, ok);
    m.flush().await;
    let record = TaskStore::new(store)
        .load_task("ok")
        .await
        .expect("load")
        .expect("stored");
    assert_eq!(record.metadata, ok);
    let page = m.output("o", "ok", 0, 10).await.expect("output");
    assert_eq!(page.entries.len(), 1, "only the output within the limit");
}

#[tokio::test]
async fn a_result_nested_too_deep_ends_the_task_failed_and_nothing_unreadable_is_written() {
    let store: Arc<dyn ThreadStore> = Arc::new(MemoryStore::new());
    let m = single(&store);
    let id = m
        .spawn("o", "t", "d", |_| async {
            TaskResult::Success(nested(200))
        })
        .await
        .expect("spawn");
    let done = m.wait("o", &id).await.expect("known");
    assert_eq!(done.status, TaskStatus::Failed);
    let error = done.error.expect("why");
    assert!(error.contains("result") && error.contains("64"), "{error}");
    assert_eq!(done.result, None);
    m.flush().await;
    let record = TaskStore::new(store)
        .load_task(&id)
        .await
        .expect("load")
        .expect("readable");
    assert_eq!(record.status, TaskStatus::Failed);
}

#[tokio::test(start_paused = true)]
async fn recovery_replaces_a_record_nobody_can_parse_instead_of_leaving_it_running() {
    let store: Arc<dyn ThreadStore> = Arc::new(MemoryStore::new());
    // A record written by something else: not a task record.
    store
        .create(
            Thread::new("task:garbled", "task")
                .with_parent("o")
                .with_state(json!({ "status": "running", "oops": true })),
        )
        .await
        .expect("create");
    let m = multi(&store, "m");
    let report = m.recover().await.expect("recover");
    assert_eq!(report.repaired, ["garbled"]);
    let record = TaskStore::new(store.clone())
        .load_task("garbled")
        .await
        .expect("load")
        .expect("readable now");
    assert_eq!(record.status, TaskStatus::Failed);
    assert_eq!(record.owner_thread_id, "o");
    assert!(record.error.expect("why").contains("could not be read"));
    // Closed: it left the open index, so the next recovery does not see it.
    let again = m.recover().await.expect("recover");
    assert!(again.repaired.is_empty(), "{again:?}");
}

// 7. ------------------------------------------------------------------------

#[tokio::test]
async fn errors_name_the_field_and_its_real_limit() {
    let m = BackgroundTaskManager::new();
    let spawn = |p: SpawnParams| {
        let m = m.clone();
        async move {
            m.spawn_with_id(p, RunCancellationToken::new(), |_| async {
                TaskResult::Success(Value::Null)
            })
            .await
            .expect_err("refused")
            .to_string()
        }
    };
    let long = "x".repeat(100 * 1024);
    assert_eq!(
        spawn(params(&long, "o")).await,
        "invalid input: task_id is 102400 bytes long; the limit is 200"
    );
    let text = spawn(SpawnParams {
        parent_task_id: Some("bad\nparent".into()),
        ..params("t", "o")
    })
    .await;
    assert!(text.contains("parent_task_id"), "{text}");
    let text = spawn(SpawnParams {
        parent_task_id: Some("p".repeat(300)),
        ..params("t", "o")
    })
    .await;
    assert_eq!(
        text,
        "invalid input: parent_task_id is 300 bytes long; the limit is 200"
    );
    let text = spawn(params("t", &"o".repeat(300))).await;
    assert_eq!(
        text,
        "invalid input: owner_thread_id is 300 bytes long; the limit is 256"
    );
    let text = spawn(SpawnParams {
        task_type: String::new(),
        ..params("t", "o")
    })
    .await;
    assert_eq!(text, "invalid input: task_type must not be empty");
}

// Also fixed ------------------------------------------------------------------

#[tokio::test]
async fn a_stopped_task_that_cannot_resume_is_collected_by_retention() {
    let store: Arc<dyn ThreadStore> = Arc::new(MemoryStore::new());
    let m = BackgroundTaskManager::builder()
        .task_store(tasks(&store))
        .retention(RetentionPolicy {
            max_terminal_per_owner: Some(2),
            max_age: None,
        })
        .build();
    let mut ids = Vec::new();
    for _ in 0..5 {
        let id = m
            .spawn("o", "shell", "d", |_| async { TaskResult::Stopped })
            .await
            .expect("spawn");
        m.wait("o", &id).await.expect("known");
        ids.push(id);
    }
    m.flush().await;
    // One more finish applies retention once every write is resolved.
    let id = m
        .spawn("o", "shell", "d", |_| async { TaskResult::Stopped })
        .await
        .expect("spawn");
    m.wait("o", &id).await.expect("known");
    m.flush().await;
    let kept = m.list("o", None).await;
    assert_eq!(kept.len(), 2, "{kept:?}");
    assert!(kept.iter().all(|s| s.status == TaskStatus::Stopped));
    // Durably they are closed: the open index does not list them.
    let open = TaskStore::new(store)
        .list_open_task_ids("o")
        .await
        .expect("list");
    assert!(open.is_empty(), "{open:?}");
}

#[tokio::test(start_paused = true)]
async fn shutdown_stops_lease_renewal_before_it_removes_the_instance_record() {
    let flaky = Arc::new(FlakyStore::new(Arc::new(MemoryStore::new())));
    let store: Arc<dyn ThreadStore> = flaky.clone();
    let m = multi(&store, "leaving");
    spawn_waiting(&m, "s", "o", None).await;
    m.flush().await;
    pass(Duration::from_secs(4)).await;
    assert!(
        store
            .load("instance:leaving")
            .await
            .expect("load")
            .is_some()
    );
    // Renewals are slow now: one is in flight when shutdown begins.
    flaky.inject(Operation::Save, Fault::latency(Duration::from_millis(900)));
    pass(Duration::from_millis(2_500)).await;
    let report = m.shutdown(Duration::from_secs(5)).await;
    assert!(report.lease_released, "{report:?}");
    assert_eq!(report.finished, ["s"], "it stopped when asked");
    let saves = flaky.counts(Operation::Save).calls;
    pass(Duration::from_secs(30)).await;
    assert_eq!(
        flaky.counts(Operation::Save).calls,
        saves,
        "no renewal after shutdown"
    );
    assert!(
        store
            .load("instance:leaving")
            .await
            .expect("load")
            .is_none(),
        "the instance record is gone, not advertised alive"
    );
}
