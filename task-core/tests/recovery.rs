//! Leases, recovery, resume, cross-instance cancellation and shutdown with
//! two managers sharing one `MemoryStore` in one process. Lease expiry runs on
//! paused tokio time.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use task_core::thread_store::ThreadStore;
use task_core::{
    BackgroundTaskManager, RunCancellationToken, SpawnParams, TaskError, TaskResult, TaskStatus,
    TaskStore,
};
use task_store_memory::MemoryStore;
use task_testkit::{Fault, FlakyStore, Operation};

const TTL: Duration = Duration::from_secs(10);

fn manager(store: Arc<dyn ThreadStore>, instance: &str) -> BackgroundTaskManager {
    BackgroundTaskManager::builder()
        .task_store(Arc::new(TaskStore::new(store)))
        .instance_id(instance)
        .lease(TTL, Duration::from_secs(3))
        .control_poll_interval(Duration::from_millis(100))
        .cancel_grace(Duration::from_secs(1))
        .build()
}

/// Spawns a task that runs until cancelled.
async fn spawn_waiting(m: &BackgroundTaskManager, owner: &str, task_type: &str) -> String {
    m.spawn(owner, task_type, "long", |ctx| async move {
        ctx.cancelled().await;
        TaskResult::Cancelled
    })
    .await
    .expect("spawn")
}

/// Advances paused time in small steps, so every manager's background loop
/// runs between them.
async fn pass(time: Duration) {
    let step = Duration::from_millis(500);
    let mut passed = Duration::ZERO;
    while passed < time {
        tokio::time::advance(step).await;
        tokio::task::yield_now().await;
        passed += step;
    }
}

#[tokio::test(start_paused = true)]
async fn a_dropped_managers_tasks_are_recovered_once_its_lease_expires() {
    let store: Arc<dyn ThreadStore> = Arc::new(MemoryStore::new());
    let tasks = TaskStore::new(store.clone());
    let a = manager(store.clone(), "a");
    let mut resumable = Vec::new();
    let mut plain = Vec::new();
    for _ in 0..3 {
        resumable.push(spawn_waiting(&a, "o", "agent_run").await);
        plain.push(spawn_waiting(&a, "o", "shell").await);
    }
    a.flush().await;
    drop(a); // no shutdown: as if the process died

    let b = manager(store.clone(), "b");
    let early = b.recover().await.expect("recover");
    assert!(early.is_empty(), "the lease is still alive: {early:?}");
    assert_eq!(early.alive, 6);

    pass(TTL + Duration::from_secs(2)).await;
    let mut report = b.recover().await.expect("recover");
    report.stopped.sort();
    report.failed.sort();
    resumable.sort();
    plain.sort();
    assert_eq!(report.stopped, resumable);
    assert_eq!(report.failed, plain);
    for id in &resumable {
        let r = tasks.load_task(id).await.expect("load").expect("record");
        assert_eq!(r.status, TaskStatus::Stopped);
        assert!(r.lease.is_none());
    }
    for id in &plain {
        let r = tasks.load_task(id).await.expect("load").expect("record");
        assert_eq!(r.status, TaskStatus::Failed);
        assert!(r.error.expect("why").contains("interrupted"));
    }
    assert!(b.recover().await.expect("again").is_empty(), "idempotent");
}

#[tokio::test(start_paused = true)]
async fn recovery_never_touches_a_task_whose_lease_is_renewed() {
    let store: Arc<dyn ThreadStore> = Arc::new(MemoryStore::new());
    let a = manager(store.clone(), "a");
    let id = spawn_waiting(&a, "o", "shell").await;
    a.flush().await;
    let b = manager(store.clone(), "b");
    pass(TTL * 3).await;
    let report = b.recover().await.expect("recover");
    assert!(report.is_empty(), "{report:?}");
    assert_eq!(report.alive, 1);
    assert_eq!(
        a.get("o", &id).await.expect("known").status,
        TaskStatus::Running
    );
}

#[tokio::test(start_paused = true)]
async fn an_earlier_life_of_the_same_instance_is_recovered_at_once() {
    let store: Arc<dyn ThreadStore> = Arc::new(MemoryStore::new());
    let first = manager(store.clone(), "worker-1");
    let id = spawn_waiting(&first, "o", "agent_run").await;
    first.flush().await;
    drop(first);
    let second = manager(store.clone(), "worker-1");
    let report = second.recover().await.expect("recover");
    assert_eq!(report.stopped, [id]);
}

#[tokio::test(start_paused = true)]
async fn recover_on_start_runs_when_the_manager_starts() {
    let store: Arc<dyn ThreadStore> = Arc::new(MemoryStore::new());
    let first = manager(store.clone(), "w");
    let id = spawn_waiting(&first, "o", "shell").await;
    first.flush().await;
    drop(first);
    let _second = BackgroundTaskManager::builder()
        .task_store(Arc::new(TaskStore::new(store.clone())))
        .instance_id("w")
        .recover_on_start(true)
        .build();
    let tasks = TaskStore::new(store);
    // The start-up recovery runs in the background on this single-threaded
    // runtime (against an in-memory store): yielding lets it run.
    let mut status = TaskStatus::Running;
    for _ in 0..1000 {
        status = tasks
            .load_task(&id)
            .await
            .expect("load")
            .expect("record")
            .status;
        if status != TaskStatus::Running {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(status, TaskStatus::Failed);
}

#[tokio::test(start_paused = true)]
async fn a_holder_that_lost_its_lease_cannot_overwrite_the_recovered_state() {
    let memory: Arc<dyn ThreadStore> = Arc::new(MemoryStore::new());
    // A's lease renewals (instance record saves) fail: as if A were paused.
    let flaky = Arc::new(FlakyStore::with_seed(memory.clone(), 7));
    let a = manager(flaky.clone(), "a");
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let id = a
        .spawn("o", "shell", "slow", |_| async move {
            let _ = released.await;
            TaskResult::Success(json!("too late"))
        })
        .await
        .expect("spawn");
    a.flush().await;
    flaky.inject(Operation::Save, Fault::fail());

    let b = manager(memory.clone(), "b");
    pass(TTL + Duration::from_secs(2)).await;
    let report = b.recover().await.expect("recover");
    assert_eq!(report.failed, std::slice::from_ref(&id));

    // A comes back and finishes: its write is refused, and it says so.
    release.send(()).expect("task waits");
    a.wait("o", &id).await.expect("known");
    a.flush().await;
    let record = TaskStore::new(memory)
        .load_task(&id)
        .await
        .expect("load")
        .expect("record");
    assert_eq!(
        record.status,
        TaskStatus::Failed,
        "the recovered state stands"
    );
    let error = a
        .get("o", &id)
        .await
        .expect("known")
        .persistence_error
        .expect("the refusal shows");
    assert!(error.contains("write-once"), "{error}");
}

#[tokio::test(start_paused = true)]
async fn resume_restarts_a_stopped_task_as_the_next_attempt_anywhere() {
    let store: Arc<dyn ThreadStore> = Arc::new(MemoryStore::new());
    let tasks = TaskStore::new(store.clone());
    let a = manager(store.clone(), "a");
    let id = spawn_waiting(&a, "o", "agent_run").await;
    let plain = spawn_waiting(&a, "o", "shell").await;
    a.flush().await;
    drop(a);
    let b = manager(store.clone(), "b");
    pass(TTL + Duration::from_secs(2)).await;
    b.recover().await.expect("recover");

    let err = b
        .resume("o", &plain, |_| async { TaskResult::Success(json!(null)) })
        .await
        .expect_err("failed tasks do not resume");
    assert!(matches!(err, TaskError::NotResumable { .. }), "{err:?}");
    let err = b
        .resume("someone-else", &id, |_| async {
            TaskResult::Success(json!(null))
        })
        .await
        .expect_err("another owner's task");
    assert_eq!(err.to_string(), format!("Unknown task_id: {id}"));

    b.resume("o", &id, |_| async {
        TaskResult::Success(json!("resumed"))
    })
    .await
    .expect("resume");
    let s = b.wait("o", &id).await.expect("known");
    assert_eq!((s.status, s.attempt), (TaskStatus::Completed, 2));
    b.flush().await;
    let r = tasks.load_task(&id).await.expect("load").expect("record");
    assert_eq!((r.status, r.attempt), (TaskStatus::Completed, 2));
    assert_eq!(r.result, Some(json!("resumed")));
}

#[tokio::test(start_paused = true)]
async fn resume_without_a_store_reruns_a_stopped_task_in_process() {
    let m = BackgroundTaskManager::new();
    let id = m
        .spawn("o", "agent_run", "d", |_| async { TaskResult::Stopped })
        .await
        .expect("spawn");
    m.wait("o", &id).await.expect("known");
    m.resume("o", &id, |_| async { TaskResult::Success(json!(2)) })
        .await
        .expect("resume");
    let s = m.wait("o", &id).await.expect("known");
    assert_eq!((s.status, s.attempt), (TaskStatus::Completed, 2));
    let err = m
        .resume("o", &id, |_| async { TaskResult::Success(json!(3)) })
        .await
        .expect_err("completed is final");
    assert!(matches!(err, TaskError::NotResumable { .. }), "{err:?}");
}

#[tokio::test(start_paused = true)]
async fn cancel_tree_reaches_tasks_held_by_another_instance() {
    let store: Arc<dyn ThreadStore> = Arc::new(MemoryStore::new());
    let a = manager(store.clone(), "a");
    let b = manager(store.clone(), "b");
    let root = spawn_waiting(&a, "o", "agent_run").await;
    let mut children = Vec::new();
    for i in 0..3 {
        let id = format!("{root}-child-{i}");
        a.spawn_with_id(
            SpawnParams {
                task_id: id.clone(),
                owner_thread_id: "o".into(),
                task_type: "shell".into(),
                description: "child".into(),
                parent_task_id: Some(root.clone()),
                metadata: json!(null),
            },
            RunCancellationToken::new(),
            |ctx| async move {
                ctx.cancelled().await;
                TaskResult::Success(json!("stopped early"))
            },
        )
        .await
        .expect("spawn child");
        children.push(id);
    }
    let unrelated = spawn_waiting(&a, "o", "shell").await;
    a.flush().await;

    // B sees the whole picture of the owner from the store.
    let seen = b
        .list_including_durable("o", Some(TaskStatus::Running))
        .await
        .expect("list");
    assert_eq!(seen.len(), 5);

    let cancelled = b.cancel_tree("o", &root).await.expect("cancel tree");
    assert_eq!(cancelled.len(), 4);
    // A's view: its tasks end cancelled, as after a local cancel.
    for id in std::iter::once(&root).chain(&children) {
        let s = a.wait("o", id).await.expect("known");
        assert_eq!(s.status, TaskStatus::Cancelled, "{id}");
    }
    assert_eq!(
        a.get("o", &unrelated).await.expect("known").status,
        TaskStatus::Running
    );
    // B's view, from the durable records: `get` of a task held elsewhere,
    // and the paged history (finished records are no longer open, so
    // `list_including_durable` leaves them out).
    a.flush().await;
    for id in std::iter::once(&root).chain(&children) {
        let s = b.get("o", id).await.expect("durable");
        assert_eq!(s.status, TaskStatus::Cancelled, "{id}");
    }
    let open = b.list_including_durable("o", None).await.expect("list");
    assert_eq!(
        open.iter().map(|s| s.task_id.as_str()).collect::<Vec<_>>(),
        [unrelated.as_str()],
        "only the task still running is open"
    );
    let history = b.list_durable_page("o", None, 0).await.expect("page");
    assert_eq!(history.tasks.len(), 5);
    assert_eq!(history.next, None);
    let first = b.list_durable_page("o", None, 2).await.expect("page");
    assert_eq!(first.tasks.len(), 2);
    let rest = b
        .list_durable_page("o", first.next.as_deref(), 10)
        .await
        .expect("page");
    assert_eq!(rest.tasks.len(), 3);
    let err = b.cancel("o", &root).await.expect_err("finished");
    assert!(matches!(err, TaskError::NotRunning { .. }), "{err:?}");
    let err = b
        .cancel("other-owner", &unrelated)
        .await
        .expect_err("not theirs");
    assert_eq!(err.to_string(), format!("Unknown task_id: {unrelated}"));
}

#[tokio::test(start_paused = true)]
async fn shutdown_interrupts_running_tasks_durably_and_releases_the_lease() {
    let store: Arc<dyn ThreadStore> = Arc::new(MemoryStore::new());
    let tasks = TaskStore::new(store.clone());
    let a = manager(store.clone(), "a");
    let cooperative = spawn_waiting(&a, "o", "agent_run").await;
    let stubborn = a
        .spawn("o", "shell", "ignores cancellation", |_| async {
            std::future::pending::<TaskResult>().await
        })
        .await
        .expect("spawn");
    let finishing = a
        .spawn("o", "shell", "finishes", |ctx| async move {
            ctx.cancelled().await;
            TaskResult::Success(json!("saved my work"))
        })
        .await
        .expect("spawn");

    // Shorter than the cancel grace, so the stubborn task is still running
    // when the shutdown grace ends.
    let report = a.shutdown(Duration::from_millis(500)).await;
    assert_eq!(report.interrupted, std::slice::from_ref(&stubborn));
    assert_eq!(report.finished.len(), 2);

    let status = |id: String| {
        let tasks = &tasks;
        async move { tasks.load_task(&id).await.expect("load").expect("record") }
    };
    assert_eq!(
        status(cooperative.clone()).await.status,
        TaskStatus::Stopped
    );
    assert_eq!(status(stubborn.clone()).await.status, TaskStatus::Failed);
    let done = status(finishing.clone()).await;
    assert_eq!(done.status, TaskStatus::Completed);
    assert_eq!(done.result, Some(json!("saved my work")));

    let err = a
        .spawn("o", "t", "d", |_| async { TaskResult::Cancelled })
        .await
        .expect_err("closed");
    assert!(matches!(err, TaskError::ShuttingDown), "{err:?}");

    // Nothing is left running for another instance to recover.
    let b = manager(store, "b");
    let report = b.recover().await.expect("recover");
    assert!(report.is_empty() && report.alive == 0, "{report:?}");
}

#[tokio::test(start_paused = true)]
async fn a_wake_up_signal_delivers_a_cross_instance_cancel_before_the_next_poll() {
    let store: Arc<dyn ThreadStore> = Arc::new(MemoryStore::new());
    let slow_poll = Duration::from_secs(3600);
    let holder = BackgroundTaskManager::builder()
        .task_store(Arc::new(TaskStore::new(store.clone())))
        .instance_id("holder")
        .lease(TTL, Duration::from_secs(3))
        .control_poll_interval(slow_poll)
        .build();
    let canceller = manager(store, "canceller");
    let id = spawn_waiting(&holder, "o", "shell").await;
    holder.flush().await;
    // Let the holder's control loop subscribe before the signal is sent.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let started = tokio::time::Instant::now();
    canceller.cancel("o", &id).await.expect("cancel");
    let s = holder.wait("o", &id).await.expect("known");
    assert_eq!(s.status, TaskStatus::Cancelled);
    assert!(
        started.elapsed() < slow_poll,
        "delivered by the signal, not by the poll ({:?})",
        started.elapsed()
    );
}
