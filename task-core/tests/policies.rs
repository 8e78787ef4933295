//! The policies of a job system (issue 18): concurrency limits, timeouts,
//! retries, and stopped work that finds a new home by itself. On
//! `MemoryStore` with paused time; `tests/redis.rs` runs them across real
//! processes on Redis.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::join_all;
use serde_json::{Value, json};
use task_core::thread_store::{ThreadReaderExt, ThreadStore};
use task_core::{
    BackgroundTaskManager, RetryPolicy, TaskError, TaskEventKind, TaskPolicy, TaskRequest,
    TaskResult, TaskStatus, TaskStore, WhenLimited,
};
use task_store_memory::MemoryStore;
use tokio::sync::Notify;

fn store() -> Arc<dyn ThreadStore> {
    Arc::new(MemoryStore::new())
}

fn tasks(store: &Arc<dyn ThreadStore>) -> Arc<TaskStore> {
    Arc::new(TaskStore::new(Arc::clone(store)))
}

/// The names of a task's log, in order (`a1:started`…).
async fn log(store: &Arc<dyn ThreadStore>, id: &str) -> Vec<String> {
    store
        .load_all_messages(&TaskStore::thread_id(id))
        .await
        .expect("log")
        .into_iter()
        .filter_map(|m| m.id)
        .collect()
}

// Limits ----------------------------------------------------------------------------

/// Counts tasks running at once and the most ever seen.
#[derive(Default)]
struct Gauge {
    now: AtomicUsize,
    max: AtomicUsize,
    started: Mutex<Vec<usize>>,
}

impl Gauge {
    fn enter(&self, n: usize) {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
        self.started.lock().expect("lock").push(n);
    }

    fn leave(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_limit_holds_under_a_thousand_concurrent_spawns_and_loses_none() {
    let store = store();
    let m = BackgroundTaskManager::builder()
        .task_store(tasks(&store))
        .policy("limited", TaskPolicy::default().with_concurrency(4))
        .build();
    let gauge = Arc::new(Gauge::default());
    let spawns = (0..1_000).map(|n| {
        let m = m.clone();
        let gauge = Arc::clone(&gauge);
        tokio::spawn(async move {
            m.spawn("o", "limited", "d", move |_| async move {
                gauge.enter(n);
                tokio::task::yield_now().await;
                gauge.leave();
                TaskResult::Success(json!(n))
            })
            .await
            .expect("queued, not refused")
        })
    });
    let ids: Vec<String> = join_all(spawns)
        .await
        .into_iter()
        .map(|joined| joined.expect("no panic"))
        .collect();
    for id in &ids {
        let done = m.wait("o", id).await.expect("known");
        assert_eq!(done.status, TaskStatus::Completed, "{id}");
    }
    assert!(
        gauge.max.load(Ordering::SeqCst) <= 4,
        "never more than the limit"
    );
    assert_eq!(
        gauge.started.lock().expect("lock").len(),
        1_000,
        "none lost"
    );
    m.flush().await;
    let stored = TaskStore::new(store)
        .list_task_ids("o")
        .await
        .expect("list");
    assert_eq!(stored.len(), 1_000);
}

#[tokio::test]
async fn queued_tasks_show_as_queued_and_start_in_order() {
    let m = BackgroundTaskManager::builder()
        .owner_concurrency(2)
        .build();
    let mut events = m.subscribe();
    let gate = Arc::new(Notify::new());
    let gauge = Arc::new(Gauge::default());
    let mut ids = Vec::new();
    for n in 0..10 {
        let gate = Arc::clone(&gate);
        let gauge = Arc::clone(&gauge);
        ids.push(
            m.spawn("o", "t", "d", move |_| async move {
                gauge.enter(n);
                gate.notified().await;
                gauge.leave();
                TaskResult::Success(Value::Null)
            })
            .await
            .expect("spawn"),
        );
    }
    assert_eq!(
        m.get("o", &ids[1]).await.expect("known").status,
        TaskStatus::Running
    );
    for id in &ids[2..] {
        assert_eq!(
            m.get("o", id).await.expect("known").status,
            TaskStatus::Queued
        );
    }
    assert_eq!(m.list("o", Some(TaskStatus::Queued)).await.len(), 8);
    // Another owner is not held back by this one's limit.
    let other = m
        .spawn("p", "t", "d", |_| async {
            TaskResult::Success(Value::Null)
        })
        .await
        .expect("spawn");
    assert_eq!(
        m.wait("p", &other).await.expect("known").status,
        TaskStatus::Completed
    );
    // Refused when asked to be.
    let refused = m
        .spawn_request(
            TaskRequest::new("o", "t").when_limited(WhenLimited::Refuse),
            |_| async { TaskResult::Success(Value::Null) },
        )
        .await
        .expect_err("refused");
    assert!(matches!(refused, TaskError::Limited { .. }), "{refused:?}");
    // A queued task can be cancelled before it starts.
    m.cancel("o", &ids[9]).await.expect("cancel a queued task");
    for id in &ids[..9] {
        loop {
            gate.notify_waiters();
            tokio::task::yield_now().await;
            if m.get("o", id).await.expect("known").status == TaskStatus::Completed {
                break;
            }
        }
    }
    assert_eq!(
        m.wait("o", &ids[9]).await.expect("known").status,
        TaskStatus::Cancelled
    );
    assert_eq!(
        *gauge.started.lock().expect("lock"),
        (0..9).collect::<Vec<_>>()
    );
    assert!(gauge.max.load(Ordering::SeqCst) <= 2);
    let mut queued = 0;
    while let Ok(event) = events.try_recv() {
        queued += usize::from(event.kind == TaskEventKind::Queued);
    }
    assert_eq!(queued, 8, "each queued task said so");
}

// Timeouts ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_timeout_ends_a_task_that_ignores_it_within_the_cancel_grace() {
    let store = store();
    let m = BackgroundTaskManager::builder()
        .task_store(tasks(&store))
        .cancel_grace(Duration::from_secs(2))
        .policy(
            "slow",
            TaskPolicy::default().with_timeout(Duration::from_secs(1)),
        )
        .build();
    let started = tokio::time::Instant::now();
    let stubborn = m
        .spawn("o", "slow", "never looks at its cancellation", |_| async {
            std::future::pending::<()>().await;
            TaskResult::Success(Value::Null)
        })
        .await
        .expect("spawn");
    let polite = m
        .spawn("o", "slow", "stops when asked", |ctx| async move {
            ctx.cancelled().await;
            TaskResult::Success(json!("stopped"))
        })
        .await
        .expect("spawn");
    let done = m.wait("o", &polite).await.expect("known");
    assert_eq!(done.status, TaskStatus::Failed);
    assert_eq!(done.error.as_deref(), Some("timed out after 1s"));
    let done = m.wait("o", &stubborn).await.expect("known");
    assert_eq!(done.status, TaskStatus::Failed);
    let error = done.error.expect("why");
    assert!(error.starts_with("timed out after 1s"), "{error}");
    let took = started.elapsed();
    assert!(
        took <= Duration::from_millis(3_100),
        "ended within the grace: {took:?}"
    );
    m.flush().await;
    let record = TaskStore::new(store.clone())
        .load_task(&stubborn)
        .await
        .expect("load")
        .expect("stored");
    assert_eq!(record.status, TaskStatus::Failed);
    assert!(
        log(&store, &stubborn)
            .await
            .contains(&"a1:failed".to_owned())
    );
}

// Retries ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_failing_task_is_retried_with_the_policys_backoff_and_stops_at_its_last_attempt() {
    let store = store();
    let m = BackgroundTaskManager::builder()
        .task_store(tasks(&store))
        .policy(
            "flaky",
            TaskPolicy::default().with_retry(
                RetryPolicy::attempts(3)
                    .with_backoff(Duration::from_secs(10), Duration::from_secs(60)),
            ),
        )
        .build();
    let origin = tokio::time::Instant::now();
    let times = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&times);
    let id = m
        .spawn_request(TaskRequest::new("o", "flaky"), move |ctx| {
            let seen = Arc::clone(&seen);
            async move {
                seen.lock()
                    .expect("lock")
                    .push((ctx.attempt(), origin.elapsed()));
                TaskResult::Failed(format!("attempt {} failed", ctx.attempt()))
            }
        })
        .await
        .expect("spawn");
    let done = m.wait("o", &id).await.expect("known");
    assert_eq!((done.status, done.attempt), (TaskStatus::Failed, 3));
    assert_eq!(done.error.as_deref(), Some("attempt 3 failed"));
    let times = times.lock().expect("lock").clone();
    assert_eq!(
        times,
        [
            (1, Duration::ZERO),
            (2, Duration::from_secs(10)),
            (3, Duration::from_secs(30))
        ],
        "attempts at the policy's backoff"
    );
    m.flush().await;
    assert_eq!(
        log(&store, &id).await,
        [
            "a1:started",
            "a1:failed",
            "a2:started",
            "a2:failed",
            "a3:started",
            "a3:failed"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_retry_that_succeeds_ends_completed_and_sees_the_last_checkpoint() {
    let m = BackgroundTaskManager::builder()
        .task_store(tasks(&store()))
        .handler("index", |ctx| async move {
            match ctx.attempt() {
                1 => {
                    ctx.checkpoint(json!({ "indexed": 40 }))
                        .expect("checkpoint");
                    TaskResult::Failed("the index went away".into())
                }
                _ => TaskResult::Success(json!({ "resumed_from": ctx.last_checkpoint().cloned() })),
            }
        })
        .policy(
            "index",
            TaskPolicy::default().with_retry(RetryPolicy::attempts(5)),
        )
        .build();
    let mut events = m.subscribe();
    let id = m
        .submit(TaskRequest::new("o", "index"))
        .await
        .expect("submit");
    let done = m.wait("o", &id).await.expect("known");
    assert_eq!((done.status, done.attempt), (TaskStatus::Completed, 2));
    assert_eq!(
        done.result,
        Some(json!({ "resumed_from": { "indexed": 40 } }))
    );
    let mut retried = false;
    while let Ok(event) = events.try_recv() {
        retried |= matches!(event.kind, TaskEventKind::RetryScheduled { .. });
    }
    assert!(retried, "the retry was announced");
    // A panic is a failure too; a type without a handler is refused.
    let err = m
        .submit(TaskRequest::new("o", "unknown-type"))
        .await
        .expect_err("no handler");
    assert!(err.to_string().contains("no handler"), "{err}");
}

// Work that finds a new home ------------------------------------------------------

/// Registers the handler of the `job` type: saves a checkpoint and runs
/// until cancelled on its first attempt; a later attempt completes with the
/// checkpoint it resumed from. Counts the attempts each instance ran.
fn with_job_handler(
    builder: task_core::BackgroundTaskManagerBuilder,
    runs: Arc<Mutex<Vec<(String, u32)>>>,
) -> task_core::BackgroundTaskManagerBuilder {
    builder
        .policy("job", TaskPolicy::default().with_resumable(true))
        .handler("job", move |ctx| {
            let runs = Arc::clone(&runs);
            async move {
                runs.lock()
                    .expect("lock")
                    .push((ctx.task_id().to_owned(), ctx.attempt()));
                if ctx.attempt() == 1 {
                    ctx.checkpoint(json!({ "step": 1 })).expect("checkpoint");
                    ctx.cancelled().await;
                    return TaskResult::Stopped;
                }
                TaskResult::Success(json!({ "from": ctx.last_checkpoint().cloned() }))
            }
        })
}

#[tokio::test(start_paused = true)]
async fn stopped_work_finds_a_new_home_exactly_once_with_its_checkpoint() {
    let store = store();
    let runs = Arc::new(Mutex::new(Vec::new()));
    let multi = |instance: &str| {
        BackgroundTaskManager::builder()
            .task_store(tasks(&store))
            .instance_id(instance)
            .lease(Duration::from_secs(10), Duration::from_secs(3))
    };
    let crashing = with_job_handler(multi("crashing"), Arc::clone(&runs)).build();
    let a = with_job_handler(multi("a"), Arc::clone(&runs)).build();
    let b = with_job_handler(multi("b"), Arc::clone(&runs)).build();
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(
            crashing
                .submit(TaskRequest::new("o", "job"))
                .await
                .expect("submit"),
        );
    }
    crashing.flush().await;
    drop(crashing);
    for _ in 0..30 {
        tokio::time::advance(Duration::from_secs(1)).await;
        tokio::task::yield_now().await;
    }
    // Two survivors recover at once: each task finds one new home.
    let (ra, rb) = tokio::join!(a.recover(), b.recover());
    let (ra, rb) = (ra.expect("recover"), rb.expect("recover"));
    let mut resumed: Vec<String> = ra.resumed.iter().chain(&rb.resumed).cloned().collect();
    resumed.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(resumed, expected, "each task resumed once: {ra:?} {rb:?}");
    for id in &ids {
        let home = if ra.resumed.contains(id) { &a } else { &b };
        let done = home.wait("o", id).await.expect("known");
        assert_eq!((done.status, done.attempt), (TaskStatus::Completed, 2));
        assert_eq!(done.result, Some(json!({ "from": { "step": 1 } })));
    }
    let attempts_two = runs
        .lock()
        .expect("lock")
        .iter()
        .filter(|r| r.1 == 2)
        .count();
    assert_eq!(attempts_two, 5, "exactly once each");
    a.flush().await;
    b.flush().await;
    let tasks = TaskStore::new(store.clone());
    for id in &ids {
        let record = tasks.load_task(id).await.expect("load").expect("stored");
        assert_eq!((record.status, record.attempt), (TaskStatus::Completed, 2));
        let names = log(&store, id).await;
        assert!(names.contains(&"a2:resumed".to_owned()), "{names:?}");
    }
    // The resumed attempt names the instance that took it over.
    let messages = store
        .load_all_messages(&TaskStore::thread_id(&ids[0]))
        .await
        .expect("log");
    let resumed = messages
        .iter()
        .find(|m| m.id.as_deref() == Some("a2:resumed"))
        .expect("resumed");
    let by = resumed.body["by"].as_str().expect("by");
    assert!(by == "a" || by == "b", "{by}");
}
