//! The manager on Redis: the persistence suite, faults of a real server
//! (killed with SIGKILL and restarted), and real processes that crash or are
//! cancelled from another process.
//!
//! The worker processes and the cross-process scenarios are shared with
//! `redis_cluster.rs`, in `common/redis.rs`.

#![cfg(feature = "redis")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::redis::Worker;
use serde_json::json;
use task_core::thread_store::{ThreadReaderExt, ThreadStore};
use task_core::{BackgroundTaskManager, TaskResult, TaskStatus, TaskStore};
use task_store_redis::{RedisStore, RedisStoreOptions};
use task_testkit::redis_server::{
    AppendFsync, RedisServer, private_server_or_skip, shared_redis_url, unique_prefix,
};

async fn shared_redis() -> Option<Arc<dyn ThreadStore>> {
    let url = shared_redis_url("task-core redis persistence suite")?;
    let options = RedisStoreOptions::default().with_prefix(unique_prefix("persistence"));
    let store = RedisStore::connect_with(&url, options)
        .await
        .expect("connect to the test server");
    Some(Arc::new(store))
}

task_core::persistence_tests!(shared_redis());

fn fast_options(prefix: &str) -> RedisStoreOptions {
    RedisStoreOptions::default()
        .with_prefix(prefix)
        .with_connect_timeout(Duration::from_millis(300))
        .with_response_timeout(Duration::from_millis(300))
        .with_reconnect_retries(1)
        .with_reconnect_max_delay(Duration::from_millis(100))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminal_states_survive_redis_kill_and_restart() {
    let test = "terminal_states_survive_redis_kill_and_restart";
    let builder = RedisServer::builder()
        .appendonly(true)
        .appendfsync(AppendFsync::Always);
    let Some(mut server) = private_server_or_skip(test, builder) else {
        return;
    };
    let store: Arc<dyn ThreadStore> = Arc::new(
        RedisStore::connect_with(&server.url(), fast_options("kill"))
            .await
            .expect("connect"),
    );
    common::outcomes_survive_an_outage(
        store,
        &mut server,
        |server| server.kill().expect("SIGKILL redis-server"),
        |server| server.restart().expect("restart redis-server"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_processes_tasks_are_recovered_after_its_lease() {
    let test = "a_killed_worker_processes_tasks_are_recovered_after_its_lease";
    let Some(server) = private_server_or_skip(test, RedisServer::builder()) else {
        return;
    };
    let prefix = unique_prefix(test);
    let store: Arc<dyn ThreadStore> = Arc::new(
        RedisStore::connect_with(&server.url(), fast_options(&prefix))
            .await
            .expect("connect"),
    );
    let worker_url = format!("{}?prefix={prefix}", server.url());
    common::redis::a_killed_workers_tasks_are_recovered_after_its_lease(&worker_url, store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_tree_from_another_process_cancels_the_holders_tasks() {
    let Some(url) = shared_redis_url("cancel_tree_from_another_process") else {
        return;
    };
    let prefix = unique_prefix("cross-cancel");
    let worker_url = format!("{url}?prefix={prefix}");
    let store: Arc<dyn ThreadStore> = Arc::new(
        RedisStore::connect_with(&url, RedisStoreOptions::default().with_prefix(prefix))
            .await
            .expect("connect"),
    );
    common::redis::cancel_tree_from_another_process_cancels_the_holders_tasks(&worker_url, store)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_open_accepts_a_redis_url_with_a_prefix() {
    let Some(url) = shared_redis_url("store_open_accepts_a_redis_url_with_a_prefix") else {
        return;
    };
    let prefix = unique_prefix("open");
    common::stores_opened_by_url_share_tasks(
        &format!("{url}?prefix={prefix}"),
        &format!("{url}?prefix={prefix}"),
        &format!("{url}?prefix={prefix}-other"),
    )
    .await;
}

// ---------------------------------------------------------------------------
// Issues 10, 12, 14 and 18 on Redis: the behaviours that involve the store,
// on a real server, in real time (paused time cannot drive network I/O).
// ---------------------------------------------------------------------------

async fn connect(url: &str, prefix: &str) -> Arc<dyn ThreadStore> {
    Arc::new(
        RedisStore::connect_with(url, fast_options(prefix))
            .await
            .expect("connect"),
    )
}

fn multi(store: &Arc<dyn ThreadStore>, instance: &str) -> BackgroundTaskManager {
    BackgroundTaskManager::builder()
        .task_store(Arc::new(TaskStore::new(Arc::clone(store))))
        .instance_id(instance)
        .lease(Duration::from_secs(2), Duration::from_millis(500))
        .control_poll_interval(Duration::from_millis(50))
        .clock_skew_allowance(Duration::from_millis(200))
        .cancel_grace(Duration::from_millis(500))
        .build()
}

fn params(id: &str, owner: &str) -> task_core::SpawnParams {
    task_core::SpawnParams {
        task_id: id.to_owned(),
        owner_thread_id: owner.to_owned(),
        task_type: "agent_run".to_owned(),
        description: "d".to_owned(),
        parent_task_id: None,
        metadata: json!({ "who": owner }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_owner_cannot_take_over_a_task_on_redis() {
    let Some(url) = shared_redis_url("another_owner_cannot_take_over_a_task_on_redis") else {
        return;
    };
    let store = connect(&url, &unique_prefix("takeover")).await;
    let (a, b) = (multi(&store, "a"), multi(&store, "b"));
    a.spawn_with_id(
        params("x", "alice"),
        task_core::RunCancellationToken::new(),
        |_| async { TaskResult::Success(json!("alice's")) },
    )
    .await
    .expect("spawn");
    a.wait("alice", "x").await.expect("known");
    a.flush().await;
    let before = store.load("task:x").await.expect("load").expect("stored");
    let err = b
        .spawn_with_id(
            params("x", "bob"),
            task_core::RunCancellationToken::new(),
            |_| async { TaskResult::Success(json!("bob's")) },
        )
        .await
        .expect_err("another owner's id");
    assert!(
        matches!(err, task_core::TaskError::IdTaken { .. }),
        "{err:?}"
    );
    b.flush().await;
    let after = store.load("task:x").await.expect("load").expect("stored");
    assert_eq!(after, before, "alice's record stays exactly as it was");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_resume_writes_nothing_on_redis() {
    let Some(url) = shared_redis_url("a_refused_resume_writes_nothing_on_redis") else {
        return;
    };
    let store = connect(&url, &unique_prefix("refused-resume")).await;
    let m = multi(&store, "m");
    m.spawn_with_id(
        params("r", "o"),
        task_core::RunCancellationToken::new(),
        |_| async { TaskResult::Stopped },
    )
    .await
    .expect("spawn");
    m.wait("o", "r").await.expect("known");
    m.shutdown(Duration::from_secs(2)).await;
    let before = store.load("task:r").await.expect("load").expect("stored");
    let err = m
        .resume("o", "r", |_| async { TaskResult::Success(json!(1)) })
        .await
        .expect_err("shut down");
    assert!(matches!(err, task_core::TaskError::ShuttingDown), "{err:?}");
    let after = store.load("task:r").await.expect("load").expect("stored");
    assert_eq!(after, before, "a refusal writes nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_leaves_an_outcome_whose_write_is_pending_on_redis() {
    let Some(url) = shared_redis_url("recovery_leaves_an_outcome_pending_on_redis") else {
        return;
    };
    let redis = connect(&url, &unique_prefix("pending-outcome")).await;
    let flaky = Arc::new(task_testkit::FlakyStore::new(Arc::clone(&redis)));
    let store: Arc<dyn ThreadStore> = flaky.clone();
    let m = multi(&store, "me");
    let (finish, finished) = tokio::sync::oneshot::channel::<()>();
    m.spawn_with_id(
        params("p", "o"),
        task_core::RunCancellationToken::new(),
        |_| async move {
            let _ = finished.await;
            TaskResult::Success(json!("the real outcome"))
        },
    )
    .await
    .expect("spawn");
    m.flush().await;
    let hang = task_testkit::HangHandle::new();
    flaky.inject(
        task_testkit::Operation::Append,
        task_testkit::Fault::hang(&hang),
    );
    finish.send(()).expect("the task waits");
    m.wait("o", "p").await.expect("known");
    let report = m.recover().await.expect("recover");
    assert!(
        report.failed.is_empty() && report.stopped.is_empty(),
        "{report:?}"
    );
    hang.release();
    flaky.clear_faults();
    m.flush().await;
    let record = TaskStore::new(redis)
        .load_task("p")
        .await
        .expect("load")
        .expect("stored");
    assert_eq!(record.result, Some(json!("the real outcome")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_reaches_a_holder_without_an_inbox_on_redis() {
    let Some(url) = shared_redis_url("a_cancel_reaches_a_holder_without_an_inbox_on_redis") else {
        return;
    };
    let redis = connect(&url, &unique_prefix("no-inbox")).await;
    let flaky = Arc::new(task_testkit::FlakyStore::new(Arc::clone(&redis)));
    flaky.inject(task_testkit::Operation::Save, task_testkit::Fault::fail());
    let store: Arc<dyn ThreadStore> = flaky.clone();
    let holder = multi(&store, "holder");
    holder
        .spawn_with_id(
            params("c", "o"),
            task_core::RunCancellationToken::new(),
            |ctx| async move {
                ctx.cancelled().await;
                TaskResult::Cancelled
            },
        )
        .await
        .expect("spawn");
    holder.flush().await;
    assert!(redis.load("instance:holder").await.expect("load").is_none());
    let other = multi(&redis, "other");
    other
        .cancel("o", "c")
        .await
        .expect("a cancel that returns Ok");
    let done = tokio::time::timeout(Duration::from_secs(5), holder.wait("o", "c"))
        .await
        .expect("the holder saw it")
        .expect("known");
    assert_eq!(done.status, TaskStatus::Cancelled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_tree_cancels_the_local_tree_when_redis_is_down() {
    let test = "cancel_tree_cancels_the_local_tree_when_redis_is_down";
    let Some(mut server) = private_server_or_skip(test, RedisServer::builder()) else {
        return;
    };
    let store = connect(&server.url(), "down").await;
    let m = multi(&store, "m");
    m.spawn_with_id(
        params("root", "o"),
        task_core::RunCancellationToken::new(),
        |ctx| async move {
            ctx.cancelled().await;
            TaskResult::Cancelled
        },
    )
    .await
    .expect("spawn");
    m.spawn_with_id(
        task_core::SpawnParams {
            parent_task_id: Some("root".into()),
            ..params("child", "o")
        },
        task_core::RunCancellationToken::new(),
        |ctx| async move {
            ctx.cancelled().await;
            TaskResult::Cancelled
        },
    )
    .await
    .expect("spawn");
    m.flush().await;
    server.kill().expect("kill the server");
    let report = m
        .cancel_tree_report("o", "root")
        .await
        .expect("the local tree");
    assert_eq!(report.cancelled.len(), 2);
    let error = report.remote_error.expect("the remote part failed");
    assert!(error.is_retryable(), "{error:?}");
    for id in ["root", "child"] {
        assert_eq!(
            m.wait("o", id).await.expect("known").status,
            TaskStatus::Cancelled
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_nested_too_deep_to_parse_is_repaired_by_recovery_on_redis() {
    let Some(url) = shared_redis_url("a_record_too_deep_is_repaired_on_redis") else {
        return;
    };
    let store = connect(&url, &unique_prefix("too-deep")).await;
    // Written by something that skipped the boundary: 200 levels deep.
    let mut deep = json!("leaf");
    for _ in 0..200 {
        deep = json!([deep]);
    }
    let state = json!({
        "task_id": "deep", "owner_thread_id": "o", "task_type": "t", "description": "",
        "status": "running", "attempt": 1, "created_at_ms": 1, "updated_at_ms": 1,
        "metadata": deep,
    });
    store
        .create(
            task_core::thread_store::Thread::new("task:deep", "task")
                .with_parent("o")
                .with_state(state),
        )
        .await
        .expect("create");
    assert!(
        TaskStore::new(Arc::clone(&store))
            .load_task("deep")
            .await
            .is_err()
    );
    let m = multi(&store, "m");
    let report = m.recover().await.expect("recover");
    assert_eq!(report.repaired, ["deep"]);
    let record = TaskStore::new(Arc::clone(&store))
        .load_task("deep")
        .await
        .expect("load")
        .expect("readable");
    assert_eq!(record.status, TaskStatus::Failed);
    // Closed: the next recovery does not see it again.
    assert!(m.recover().await.expect("recover").repaired.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_returns_while_work_keeps_arriving_on_redis() {
    let Some(url) = shared_redis_url("flush_returns_while_work_keeps_arriving_on_redis") else {
        return;
    };
    let store = connect(&url, &unique_prefix("flush-barrier")).await;
    let m = BackgroundTaskManager::builder()
        .task_store(Arc::new(TaskStore::new(Arc::clone(&store))))
        .build();
    let mut before = Vec::new();
    for _ in 0..200 {
        before.push(
            m.spawn("o", "t", "d", |_| async { TaskResult::Success(json!(1)) })
                .await
                .expect("spawn"),
        );
    }
    // Finished before the flush is called, so their finishes are among the
    // writes it waits for.
    for id in &before {
        m.wait("o", id).await.expect("a known task");
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spawner = {
        let (m, stop) = (m.clone(), Arc::clone(&stop));
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = m
                    .spawn("o", "t", "d", |_| async { TaskResult::Success(json!(1)) })
                    .await;
                tokio::task::yield_now().await;
            }
        })
    };
    tokio::time::timeout(Duration::from_secs(20), m.flush())
        .await
        .expect("flush returns although work keeps arriving");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    spawner.await.expect("spawner");
    let tasks = TaskStore::new(store);
    for id in &before {
        let record = tasks.load_task(id).await.expect("load").expect("durable");
        assert_eq!(record.status, TaskStatus::Completed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_is_read_back_after_a_restart_and_across_processes_on_redis() {
    let Some(url) = shared_redis_url("output_is_read_back_on_redis") else {
        return;
    };
    let store = connect(&url, &unique_prefix("output")).await;
    let a = multi(&store, "a");
    let id = a
        .spawn("o", "t", "d", |ctx| async move {
            for i in 0..5 {
                ctx.emit(json!({ "line": i }));
            }
            TaskResult::Success(json!("done"))
        })
        .await
        .expect("spawn");
    a.wait("o", &id).await.expect("known");
    a.flush().await;
    drop(a);
    let b = multi(&store, "b");
    let page = b.output("o", &id, 0, 3).await.expect("output");
    assert_eq!(page.entries.len(), 3);
    let rest = b.output("o", &id, page.next, 10).await.expect("output");
    assert_eq!(rest.entries.len(), 2);
    assert_eq!(rest.entries[1].value, json!({ "line": 4 }));
    assert_eq!(
        b.get("o", &id).await.expect("durable").status,
        TaskStatus::Completed
    );
    assert!(b.output("someone-else", &id, 0, 10).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_in_another_process_ends_when_the_holder_finishes_on_redis() {
    let Some(url) = shared_redis_url("a_wait_in_another_process_on_redis") else {
        return;
    };
    let store = connect(&url, &unique_prefix("remote-wait")).await;
    let (a, b) = (multi(&store, "a"), multi(&store, "b"));
    let (finish, finished) = tokio::sync::oneshot::channel::<()>();
    let id = a
        .spawn("o", "t", "d", |_| async move {
            let _ = finished.await;
            TaskResult::Success(json!("from a"))
        })
        .await
        .expect("spawn");
    a.flush().await;
    let waiter = {
        let (b, id) = (b.clone(), id.clone());
        tokio::spawn(async move { b.wait("o", &id).await })
    };
    finish.send(()).expect("the task waits");
    let done = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the wait ends")
        .expect("no panic")
        .expect("known");
    assert_eq!(done.result, Some(json!("from a")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_timeouts_and_retries_hold_on_redis() {
    let Some(url) = shared_redis_url("limits_timeouts_and_retries_hold_on_redis") else {
        return;
    };
    let store = connect(&url, &unique_prefix("policies")).await;
    let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let max = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let attempts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let m = BackgroundTaskManager::builder()
        .task_store(Arc::new(TaskStore::new(Arc::clone(&store))))
        .cancel_grace(Duration::from_millis(200))
        .policy(
            "limited",
            task_core::TaskPolicy::default().with_concurrency(3),
        )
        .policy(
            "slow",
            task_core::TaskPolicy::default().with_timeout(Duration::from_millis(100)),
        )
        .policy(
            "flaky",
            task_core::TaskPolicy::default().with_retry(
                task_core::RetryPolicy::attempts(3)
                    .with_backoff(Duration::from_millis(20), Duration::from_millis(50)),
            ),
        )
        .build();
    // A thousand spawns at once, each from its own tokio task.
    let spawns = (0..1_000).map(|_| {
        let (m, running, max) = (m.clone(), Arc::clone(&running), Arc::clone(&max));
        tokio::spawn(async move {
            m.spawn("o", "limited", "d", move |_| async move {
                let now = running.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                max.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
                tokio::task::yield_now().await;
                running.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                TaskResult::Success(json!(1))
            })
            .await
            .expect("queued, not refused")
        })
    });
    let ids: Vec<String> = futures::future::join_all(spawns)
        .await
        .into_iter()
        .map(|joined| joined.expect("no panic"))
        .collect();
    let slow = m
        .spawn("o", "slow", "d", |_| async {
            std::future::pending::<()>().await;
            TaskResult::Success(json!(1))
        })
        .await
        .expect("spawn");
    let counted = Arc::clone(&attempts);
    let flaky = m
        .spawn_request(task_core::TaskRequest::new("o", "flaky"), move |ctx| {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move { TaskResult::Failed(format!("attempt {}", ctx.attempt())) }
        })
        .await
        .expect("spawn");
    for id in &ids {
        assert_eq!(
            m.wait("o", id).await.expect("known").status,
            TaskStatus::Completed
        );
    }
    assert!(max.load(std::sync::atomic::Ordering::SeqCst) <= 3);
    let slow = m.wait("o", &slow).await.expect("known");
    assert_eq!(slow.status, TaskStatus::Failed);
    assert!(
        slow.error
            .expect("why")
            .starts_with("timed out after 100ms")
    );
    let flaky_done = m.wait("o", &flaky).await.expect("known");
    assert_eq!(
        (flaky_done.status, flaky_done.attempt),
        (TaskStatus::Failed, 3)
    );
    assert_eq!(attempts.load(std::sync::atomic::Ordering::SeqCst), 3);
    m.flush().await;
    // None lost: every limited task is durable on Redis, completed.
    let tasks = TaskStore::new(Arc::clone(&store));
    for id in &ids {
        let record = tasks.load_task(id).await.expect("load").expect("durable");
        assert_eq!(record.status, TaskStatus::Completed, "{id}");
    }
    let names: Vec<String> = store
        .load_all_messages(&TaskStore::thread_id(&flaky))
        .await
        .expect("log")
        .into_iter()
        .filter_map(|msg| msg.id)
        .collect();
    assert_eq!(
        names,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_jobs_are_resumed_by_the_survivors_exactly_once() {
    let test = "a_killed_workers_jobs_are_resumed_by_the_survivors_exactly_once";
    let Some(server) = private_server_or_skip(test, RedisServer::builder()) else {
        return;
    };
    let prefix = unique_prefix(test);
    let url = format!("{}?prefix={prefix}", server.url());
    let (mut worker, ids) = Worker::launch(&url, "doomed", "owner", "jobs", 20).await;
    assert_eq!(ids.len(), 20);
    worker.kill();

    let store = connect(&server.url(), &prefix).await;
    let runs = Arc::new(std::sync::Mutex::new(Vec::new()));
    let survivor = |instance: &str| {
        let runs = Arc::clone(&runs);
        BackgroundTaskManager::builder()
            .task_store(Arc::new(TaskStore::new(Arc::clone(&store))))
            .instance_id(instance)
            .lease(Duration::from_secs(2), Duration::from_millis(500))
            .clock_skew_allowance(common::redis::CLOCK_SKEW)
            .policy("job", task_core::TaskPolicy::default().with_resumable(true))
            .handler("job", move |ctx| {
                let runs = Arc::clone(&runs);
                async move {
                    runs.lock()
                        .expect("lock")
                        .push((ctx.task_id().to_owned(), ctx.attempt()));
                    TaskResult::Success(json!({ "from": ctx.last_checkpoint().cloned() }))
                }
            })
            .build()
    };
    let (a, b) = (survivor("survivor-a"), survivor("survivor-b"));
    // The behaviour under test is the dead worker's lease running out.
    common::redis::outlive_the_lease_of(&store, "doomed").await;
    let (ra, rb) = tokio::join!(a.recover(), b.recover());
    let (ra, rb) = (ra.expect("recover"), rb.expect("recover"));
    let mut resumed: Vec<String> = ra.resumed.iter().chain(&rb.resumed).cloned().collect();
    resumed.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(
        resumed, expected,
        "each job found one new home: {ra:?} {rb:?}"
    );
    for id in &ids {
        let home = if ra.resumed.contains(id) { &a } else { &b };
        let done = home.wait("owner", id).await.expect("known");
        assert_eq!(
            (done.status, done.attempt),
            (TaskStatus::Completed, 2),
            "{id}"
        );
        assert_eq!(
            done.result,
            Some(json!({ "from": { "step": 1, "by": "worker" } }))
        );
    }
    assert_eq!(runs.lock().expect("lock").len(), 20, "exactly once each");
}

/// Issue 14 on a real server: a shutdown's total time is bounded by its
/// grace while Redis answers nothing at all (every client paused, calls
/// that would wait longer than the grace), and what is not durable is
/// reported rather than dropped silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_bounded_by_its_grace_while_redis_answers_nothing() {
    let test = "shutdown_is_bounded_by_its_grace_while_redis_answers_nothing";
    let Some(server) = private_server_or_skip(test, RedisServer::builder()) else {
        return;
    };
    let options = fast_options(&unique_prefix(test)).with_response_timeout(Duration::from_secs(10));
    let store: Arc<dyn ThreadStore> = Arc::new(
        RedisStore::connect_with(&server.url(), options)
            .await
            .expect("connect"),
    );
    let m = multi(&store, "deploying");
    let id = m
        .spawn("o", "agent_run", "d", |ctx| async move {
            ctx.cancelled().await;
            TaskResult::Cancelled
        })
        .await
        .expect("spawn");
    m.flush().await;
    // Every command of every client waits for 5 s from now.
    server
        .command(&["CLIENT", "PAUSE", "5000", "ALL"])
        .expect("pause the server's clients");
    let started = std::time::Instant::now();
    let report = m.shutdown(Duration::from_secs(1)).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(1_500),
        "shutdown took {took:?} with a grace of 1 s"
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
}
