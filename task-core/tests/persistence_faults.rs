//! The manager over `FlakyStore`: faults in the store delay and show, and
//! lose nothing once the store heals. Also the persistence suite over a
//! `FlakyStore` that injects nothing.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use task_core::thread_store::{ThreadReaderExt, ThreadStore};
use task_core::{BackgroundTaskManager, TaskEventKind, TaskResult, TaskStatus, TaskStore};
use task_store_memory::MemoryStore;
use task_testkit::{Fault, FlakyStore, HangHandle, Operation};

async fn flaky_without_faults() -> Arc<dyn ThreadStore> {
    Arc::new(FlakyStore::new(Arc::new(MemoryStore::new())))
}

task_core::persistence_tests!(flaky_without_faults());

fn setup(seed: u64) -> (Arc<FlakyStore>, BackgroundTaskManager, Arc<TaskStore>) {
    let flaky = Arc::new(FlakyStore::with_seed(Arc::new(MemoryStore::new()), seed));
    let tasks = Arc::new(TaskStore::new(flaky.clone()));
    let manager = BackgroundTaskManager::builder()
        .task_store(tasks.clone())
        .persistence_backoff(Duration::from_millis(10), Duration::from_millis(200))
        .build();
    (flaky, manager, tasks)
}

#[tokio::test(start_paused = true)]
async fn failed_appends_show_as_persistence_error_until_the_store_heals() {
    let (flaky, m, tasks) = setup(1);
    let mut events = m.subscribe();
    let id = m
        .spawn("o", "t", "d", |ctx| async move {
            ctx.cancelled().await;
            TaskResult::Cancelled
        })
        .await
        .expect("spawn");
    m.flush().await; // the start is durable (one create)
    flaky.fail_appends(3);
    m.cancel("o", &id).await.expect("cancel");

    // The first failure shows on the summary while the write is retried.
    loop {
        let event = events.recv().await.expect("event");
        if let TaskEventKind::PersistenceFailed { error, permanent } = event.kind {
            assert!(!permanent, "a store outage is retried");
            let summary = m.get("o", &id).await.expect("known");
            assert_eq!(summary.status, TaskStatus::Cancelled, "in memory at once");
            assert_eq!(summary.persistence_error, Some(error));
            break;
        }
    }
    m.flush().await;
    assert_eq!(flaky.remaining_failures(), 0);
    assert_eq!(flaky.counts(Operation::Append).failed, 3);
    let summary = m.get("o", &id).await.expect("known");
    assert_eq!(summary.persistence_error, None, "cleared once durable");
    let record = tasks.load_task(&id).await.expect("load").expect("record");
    assert_eq!(record.status, TaskStatus::Cancelled);
}

#[tokio::test(start_paused = true)]
async fn no_terminal_state_is_lost_under_random_faults_on_every_operation() {
    let seed = 0x5eed;
    let (flaky, m, tasks) = setup(seed);
    for op in Operation::ALL {
        flaky.inject(op, Fault::fail().with_probability(0.3));
    }
    flaky.inject(
        Operation::Append,
        Fault::commit_then_fail().with_probability(0.1),
    );
    flaky.inject(
        Operation::Create,
        Fault::commit_then_fail().with_probability(0.1),
    );
    let mut ids = Vec::new();
    for i in 0..200 {
        let id = m
            .spawn("o", "t", "d", move |ctx| async move {
                if i % 2 == 0 {
                    // The task's own work (paused time: advanced, not waited for),
                    // long enough that its start and finish are written apart.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                ctx.emit(json!(i));
                TaskResult::Success(json!(i))
            })
            .await
            .expect("spawn");
        ids.push(id);
    }
    for id in &ids {
        m.wait("o", id).await.expect("known");
    }
    m.flush().await;
    let injected: u64 = Operation::ALL
        .iter()
        .map(|op| flaky.counts(*op).injected())
        .sum();
    assert!(
        injected > 50,
        "seed {seed}: the plan injected only {injected} faults"
    );
    flaky.clear_faults();
    for (i, id) in ids.iter().enumerate() {
        let record = tasks.load_task(id).await.expect("load").expect("record");
        assert_eq!(
            record.status,
            TaskStatus::Completed,
            "seed {seed}, task {i}"
        );
        assert_eq!(record.result, Some(json!(i)), "seed {seed}, task {i}");
        let log = flaky
            .load_all_messages(&TaskStore::thread_id(id))
            .await
            .expect("log");
        let names: Vec<_> = log
            .iter()
            .map(|m| m.body["transition"].as_str().unwrap_or("output"))
            .collect();
        assert_eq!(
            names,
            ["started", "output", "completed"],
            "seed {seed}, task {i}: each transition logged exactly once"
        );
        assert_eq!(
            m.get("o", id).await.expect("known").persistence_error,
            None,
            "seed {seed}, task {i}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn store_latency_never_reaches_the_spawn_path() {
    let (flaky, m, tasks) = setup(2);
    for op in [Operation::Create, Operation::Append, Operation::Load] {
        flaky.inject(op, Fault::latency(Duration::from_secs(1)));
    }
    let started = tokio::time::Instant::now();
    let mut ids = Vec::new();
    for _ in 0..50 {
        ids.push(
            m.spawn("o", "t", "d", |_| async {
                TaskResult::Success(json!(null))
            })
            .await
            .expect("spawn"),
        );
    }
    for id in &ids {
        assert_eq!(
            m.wait("o", id).await.expect("known").status,
            TaskStatus::Completed
        );
    }
    assert_eq!(
        started.elapsed(),
        Duration::ZERO,
        "spawning and finishing waited for no store call"
    );
    m.flush().await;
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "writes were delayed"
    );
    for id in &ids {
        let record = tasks.load_task(id).await.expect("load").expect("record");
        assert_eq!(record.status, TaskStatus::Completed);
    }
}

#[tokio::test]
async fn a_terminal_task_is_not_collected_until_it_is_durable() {
    let (flaky, m, tasks) = setup(3);
    let hang = HangHandle::new();
    flaky.inject(Operation::Create, Fault::hang(&hang));
    let id = m
        .spawn("o", "t", "d", |_| async {
            TaskResult::Success(json!("done"))
        })
        .await
        .expect("spawn");
    assert_eq!(
        m.wait("o", &id).await.expect("known").status,
        TaskStatus::Completed
    );
    hang.wait_until_hanging(1).await;
    assert_eq!(m.gc_terminal("o").await, 0, "not durable yet");
    assert!(m.contains("o", &id).await);
    hang.release();
    m.flush().await;
    assert!(tasks.load_task(&id).await.expect("load").is_some());
    assert_eq!(m.gc_terminal("o").await, 1);
    assert!(!m.contains("o", &id).await);
}
