//! The outbox and the leases under load, outage and odd configuration
//! (issue 12), each defect checked as the behaviour it must have. Time is
//! tokio's paused clock: latency, hangs and lease periods pass instantly.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use task_core::thread_store::ThreadStore;
use task_core::{
    BackgroundTaskManager, OutboxFull, RunCancellationToken, SpawnParams, TaskError, TaskEventKind,
    TaskResult, TaskStatus, TaskStore,
};
use task_store_memory::MemoryStore;
use task_testkit::{Fault, FlakyStore, HangHandle, Operation};

fn flaky() -> (Arc<FlakyStore>, Arc<dyn ThreadStore>) {
    let flaky = Arc::new(FlakyStore::new(Arc::new(MemoryStore::new())));
    let store: Arc<dyn ThreadStore> = flaky.clone();
    (flaky, store)
}

fn tasks(store: &Arc<dyn ThreadStore>) -> Arc<TaskStore> {
    Arc::new(TaskStore::new(Arc::clone(store)))
}

async fn done(m: &BackgroundTaskManager, owner: &str) -> String {
    let id = m
        .spawn(owner, "t", "d", |_| async {
            TaskResult::Success(Value::Null)
        })
        .await
        .expect("spawn");
    m.wait(owner, &id).await.expect("known");
    id
}

/// Writes of a batch: every thread created or appended to, batched or not.
fn writes(flaky: &FlakyStore) -> u64 {
    flaky.counts(Operation::Create).calls + flaky.counts(Operation::Append).calls
}

// 1. ------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn flush_returns_while_work_keeps_arriving() {
    let (flaky, store) = flaky();
    for op in [Operation::Create, Operation::Append] {
        flaky.inject(op, Fault::latency(Duration::from_millis(20)));
    }
    let m = BackgroundTaskManager::builder()
        .task_store(tasks(&store))
        .build();
    let mut before = Vec::new();
    for _ in 0..50 {
        before.push(done(&m, "o").await);
    }
    // One spawn per millisecond, for as long as the test runs.
    let stop = Arc::new(AtomicBool::new(false));
    let spawner = {
        let m = m.clone();
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let _ = m
                    .spawn("o", "t", "d", |_| async {
                        TaskResult::Success(Value::Null)
                    })
                    .await;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    tokio::time::timeout(Duration::from_secs(5), m.flush())
        .await
        .expect("flush returns once what came before it is durable");
    stop.store(true, Ordering::Relaxed);
    spawner.await.expect("the spawner ends");
    let tasks = TaskStore::new(store);
    for id in &before {
        let record = tasks.load_task(id).await.expect("load").expect("durable");
        assert_eq!(record.status, TaskStatus::Completed, "{id}");
    }
}

// 2. ------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn leases_renew_on_their_own_schedule_not_the_poll_interval() {
    let (flaky, store) = flaky();
    let holder = BackgroundTaskManager::builder()
        .task_store(tasks(&store))
        .instance_id("holder")
        .lease(Duration::from_millis(600), Duration::from_millis(150))
        .control_poll_interval(Duration::from_secs(2))
        .clock_skew_allowance(Duration::from_millis(50))
        .build();
    let id = holder
        .spawn("o", "agent_run", "long", |ctx| async move {
            ctx.cancelled().await;
            TaskResult::Success(json!("its own outcome"))
        })
        .await
        .expect("spawn");
    holder.flush().await;
    let peer = BackgroundTaskManager::builder()
        .task_store(tasks(&store))
        .instance_id("peer")
        .lease(Duration::from_millis(600), Duration::from_millis(150))
        .build();
    let saves = flaky.counts(Operation::Save).calls;
    for _ in 0..30 {
        tokio::time::advance(Duration::from_millis(100)).await;
        tokio::task::yield_now().await;
        let report = peer.recover().await.expect("recover");
        assert!(
            report.stopped.is_empty() && report.failed.is_empty(),
            "{report:?}"
        );
    }
    let renewals = flaky.counts(Operation::Save).calls - saves;
    assert!(
        renewals >= 15,
        "3 s at one renewal per 150 ms, got {renewals}"
    );
    holder.cancel("o", &id).await.expect("cancel");
    holder.wait("o", &id).await.expect("known");
    holder.flush().await;
    let record = TaskStore::new(store)
        .load_task(&id)
        .await
        .expect("load")
        .expect("stored");
    assert_eq!(
        record.status,
        TaskStatus::Cancelled,
        "its real outcome stood"
    );
}

#[test]
fn a_lease_configuration_that_cannot_hold_is_refused_at_build() {
    let store: Arc<dyn ThreadStore> = Arc::new(MemoryStore::new());
    let base = || BackgroundTaskManager::builder().task_store(tasks(&store));
    let refused = |builder: task_core::BackgroundTaskManagerBuilder| {
        builder.try_build().expect_err("refused").to_string()
    };
    let text = refused(base().lease(Duration::from_secs(1), Duration::from_secs(1)));
    assert!(text.contains("not shorter than its TTL"), "{text}");
    assert!(
        text.contains("lease("),
        "says what to write instead: {text}"
    );
    let text = refused(base().lease(Duration::from_secs(1), Duration::from_millis(700)));
    assert!(text.contains("more than half its TTL"), "{text}");
    let text = refused(base().lease(Duration::ZERO, Duration::ZERO));
    assert!(text.contains("longer than zero"), "{text}");
    let text = refused(base().control_poll_interval(Duration::ZERO));
    assert!(text.contains("poll interval"), "{text}");
    let text = refused(base().outbox_limit(0, OutboxFull::Wait));
    assert!(text.contains("outbox limit"), "{text}");
    // Valid configurations build, with `build` too.
    let _ = base()
        .lease(Duration::from_millis(600), Duration::from_millis(150))
        .control_poll_interval(Duration::from_secs(2))
        .build();
    let _ = BackgroundTaskManager::builder().build();
}

// 3. ------------------------------------------------------------------------

#[test]
fn a_manager_outlives_the_runtime_that_first_used_it() {
    let (flaky, store) = flaky();
    let m = BackgroundTaskManager::builder()
        .task_store(tasks(&store))
        .instance_id("survivor")
        .lease(Duration::from_secs(3), Duration::from_secs(1))
        .build();
    let hang = HangHandle::new();
    let first = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    let (done_id, stuck_id) = first.block_on(async {
        // The write of this task hangs while this runtime lives.
        flaky.inject(Operation::Create, Fault::hang(&hang));
        flaky.inject(Operation::Append, Fault::hang(&hang));
        let done_id = done(&m, "o").await;
        // And this one is still running when the runtime goes.
        let (started, running) = tokio::sync::oneshot::channel::<()>();
        let stuck_id = m
            .spawn("o", "agent_run", "stuck", |ctx| async move {
                let _ = started.send(());
                ctx.cancelled().await;
                TaskResult::Cancelled
            })
            .await
            .expect("spawn");
        running.await.expect("the task runs");
        (done_id, stuck_id)
    });
    drop(first);
    flaky.clear_faults();
    hang.release();

    let second = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a runtime");
    second.block_on(async {
        // The task whose runtime died does not stay running.
        let stuck = m.get("o", &stuck_id).await.expect("known");
        assert_eq!(stuck.status, TaskStatus::Stopped, "{stuck:?}");
        let saves = flaky.counts(Operation::Save).calls;
        let id = done(&m, "o").await;
        tokio::time::timeout(Duration::from_secs(10), m.flush())
            .await
            .expect("flush waits for real writes");
        let tasks = TaskStore::new(store.clone());
        for id in [&done_id, &stuck_id, &id] {
            let summary = m.get("o", id).await.expect("known");
            assert_eq!(summary.persistence_error, None, "{id}");
            let record = tasks.load_task(id).await.expect("load").expect("durable");
            assert_eq!(record.status, summary.status, "{id}");
        }
        // Lease renewal runs again, on this runtime.
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        assert!(
            flaky.counts(Operation::Save).calls > saves,
            "the lease is renewed after the first runtime is gone"
        );
    });
}

// 4. ------------------------------------------------------------------------

#[test]
fn an_instance_id_the_store_cannot_hold_is_refused_at_build() {
    let store: Arc<dyn ThreadStore> = Arc::new(MemoryStore::new());
    for bad in ["worker-7\n", "", "tab\there"] {
        let err = BackgroundTaskManager::builder()
            .task_store(tasks(&store))
            .instance_id(bad)
            .try_build()
            .expect_err("refused");
        assert!(matches!(err, TaskError::InvalidInput { .. }), "{err:?}");
        assert!(err.to_string().contains("instance_id"), "{err}");
    }
    let long = "w".repeat(201);
    let err = BackgroundTaskManager::builder()
        .instance_id(long)
        .try_build()
        .expect_err("refused");
    assert!(err.to_string().contains("the limit is 200"), "{err}");
}

// 5. ------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_hung_store_shows_on_summaries_and_in_events() {
    let (flaky, store) = flaky();
    let hang = HangHandle::new();
    for op in [Operation::Create, Operation::Append] {
        flaky.inject(op, Fault::hang(&hang));
    }
    let m = BackgroundTaskManager::builder()
        .task_store(tasks(&store))
        .persistence_warn_after(Duration::from_secs(2))
        .build();
    let mut events = m.subscribe();
    let first = done(&m, "o").await;
    assert_eq!(
        m.get("o", &first).await.expect("known").persistence_error,
        None
    );
    // Others queue behind the hung write.
    let second = done(&m, "o").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for id in [&first, &second] {
        let summary = m.get("o", id).await.expect("known");
        let error = summary.persistence_error.expect("the late write shows");
        assert!(error.contains("pending"), "{error}");
    }
    let mut delayed = Vec::new();
    while let Ok(event) = events.try_recv() {
        if matches!(event.kind, TaskEventKind::PersistenceDelayed { .. }) {
            delayed.push(event.task_id);
        }
    }
    assert!(delayed.contains(&first), "an event says so: {delayed:?}");
    hang.release();
    flaky.clear_faults();
    m.flush().await;
    for id in [&first, &second] {
        assert_eq!(m.get("o", id).await.expect("known").persistence_error, None);
    }
}

#[tokio::test(start_paused = true)]
async fn a_dead_store_is_probed_one_write_at_a_time_not_hammered() {
    let (flaky, store) = flaky();
    for op in [Operation::Create, Operation::Append] {
        flaky.inject(op, Fault::fail());
    }
    let m = BackgroundTaskManager::builder()
        .task_store(tasks(&store))
        .persistence_backoff(Duration::from_millis(20), Duration::from_secs(1))
        .build();
    let mut ids = Vec::new();
    for _ in 0..200 {
        ids.push(done(&m, "o").await);
    }
    let before = writes(&flaky);
    tokio::time::sleep(Duration::from_secs(60)).await;
    let during = writes(&flaky) - before;
    // One probe per backoff period (capped at 1 s, with jitter between half
    // and all of it): 60 to 120 calls, where 200 tasks retrying on their own
    // made several thousand.
    assert!(during <= 130, "{during} store calls in 60 s of outage");
    assert!(during >= 10, "the store is still probed: {during}");
    flaky.clear_faults();
    tokio::time::timeout(Duration::from_secs(5), m.flush())
        .await
        .expect("everything is written once the store answers");
    let tasks = TaskStore::new(store);
    for id in &ids {
        assert_eq!(m.get("o", id).await.expect("known").persistence_error, None);
        let record = tasks.load_task(id).await.expect("load").expect("durable");
        assert_eq!(record.status, TaskStatus::Completed);
    }
}

// 6. ------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_full_outbox_refuses_spawns_when_told_to_and_changes_nothing() {
    let (flaky, store) = flaky();
    let hang = HangHandle::new();
    for op in [Operation::Create, Operation::Append] {
        flaky.inject(op, Fault::hang(&hang));
    }
    let m = BackgroundTaskManager::builder()
        .task_store(tasks(&store))
        .outbox_limit(10, OutboxFull::Refuse)
        .build();
    let mut accepted = 0;
    let err = loop {
        match m
            .spawn("o", "t", "d", |_| async {
                TaskResult::Success(Value::Null)
            })
            .await
        {
            Ok(id) => {
                m.wait("o", &id).await.expect("known");
                accepted += 1;
            }
            Err(err) => break err,
        }
        assert!(accepted <= 10, "the bound holds");
    };
    assert!(
        matches!(err, TaskError::Backpressure { limit: 10, .. }),
        "{err:?}"
    );
    assert!(err.is_retryable());
    assert_eq!(
        m.list("o", None).await.len(),
        accepted,
        "the refusal changed nothing"
    );
    assert!(m.stats().pending_writes <= 10 + 1, "{:?}", m.stats());
    hang.release();
    flaky.clear_faults();
    m.flush().await;
    assert_eq!(m.stats().pending_writes, 0);
    done(&m, "o").await;
}

#[tokio::test(start_paused = true)]
async fn a_full_outbox_makes_spawns_wait_until_the_store_catches_up() {
    let (flaky, store) = flaky();
    let hang = HangHandle::new();
    for op in [Operation::Create, Operation::Append] {
        flaky.inject(op, Fault::hang(&hang));
    }
    let m = BackgroundTaskManager::builder()
        .task_store(tasks(&store))
        .outbox_limit(6, OutboxFull::Wait)
        .build();
    for _ in 0..3 {
        done(&m, "o").await;
    }
    let waiting = {
        let m = m.clone();
        tokio::spawn(async move { done(&m, "o").await })
    };
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        !waiting.is_finished(),
        "the spawn waits while the outbox is full"
    );
    assert_eq!(m.list("o", None).await.len(), 3);
    hang.release();
    flaky.clear_faults();
    let id = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("it goes once the store answers")
        .expect("the task ends");
    m.flush().await;
    assert_eq!(
        m.get("o", &id).await.expect("known").status,
        TaskStatus::Completed
    );
}

// 8. ------------------------------------------------------------------------

#[tokio::test]
async fn a_respawn_of_a_forgotten_id_reports_the_durable_attempt() {
    let store: Arc<dyn ThreadStore> = Arc::new(MemoryStore::new());
    let m = BackgroundTaskManager::builder()
        .task_store(tasks(&store))
        .build();
    let params = SpawnParams {
        task_id: "again".into(),
        owner_thread_id: "o".into(),
        task_type: "t".into(),
        description: "d".into(),
        parent_task_id: None,
        metadata: Value::Null,
    };
    for attempt in 1..=2 {
        m.spawn_with_id(params.clone(), RunCancellationToken::new(), |_| async {
            TaskResult::Success(Value::Null)
        })
        .await
        .expect("spawn");
        assert_eq!(m.wait("o", "again").await.expect("known").attempt, attempt);
    }
    m.flush().await;
    assert_eq!(m.gc_terminal("o").await, 1);
    let mut events = m.subscribe();
    m.spawn_with_id(params, RunCancellationToken::new(), |_| async {
        TaskResult::Success(Value::Null)
    })
    .await
    .expect("spawn");
    let summary = m.wait("o", "again").await.expect("known");
    assert_eq!(summary.attempt, 3, "the durable attempt, not 1");
    while let Ok(event) = events.try_recv() {
        assert_eq!(event.attempt, 3, "{event:?}");
    }
    m.flush().await;
    let record = TaskStore::new(store)
        .load_task("again")
        .await
        .expect("load")
        .expect("stored");
    assert_eq!(record.attempt, 3);
}
