//! The manager on a Redis Cluster (private `redis-server` processes, 3
//! masters with 1 replica each): the persistence suite; real worker
//! processes (the `redis_worker` example, given a `redis+cluster://` URL)
//! that crash, are cancelled from another process, or are waited on from
//! one; `store::open` with cluster URLs; and a master SIGKILLed while 500
//! tasks run on a store whose writes wait for a replica (`?wait=1`).
//!
//! The tests that leave the cluster as it is share one, started on first
//! use, each under a key prefix of its own; the failover test has its own.

#![cfg(feature = "redis")]

mod common;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::redis::Worker;
use serde_json::json;
use task_core::thread_store::{ThreadStore, ThreadStoreError};
use task_core::{BackgroundTaskManager, TaskEventKind, TaskResult, TaskStatus, TaskStore};
use task_store_redis::{RedisStore, RedisStoreOptions};
use task_testkit::redis_cluster::{RedisCluster, Reply, private_cluster_or_skip};
use task_testkit::redis_server::unique_prefix;

/// The cluster of the tests that leave it as it is, started on first use.
fn shared_cluster(test: &str) -> Option<&'static RedisCluster> {
    static CLUSTER: OnceLock<Option<RedisCluster>> = OnceLock::new();
    CLUSTER
        .get_or_init(|| private_cluster_or_skip(test, RedisCluster::builder()))
        .as_ref()
}

/// The shared cluster's URL with a fresh prefix for `test`, and the prefix.
fn prefixed_url(test: &str) -> Option<(String, String)> {
    let cluster = shared_cluster(test)?;
    let prefix = unique_prefix(test);
    Some((format!("{}?prefix={prefix}", cluster.url()), prefix))
}

/// A store on the cluster a `redis+cluster://` URL names.
async fn connect(url: &str, options: RedisStoreOptions) -> Arc<dyn ThreadStore> {
    let store = RedisStore::connect_with(url, options)
        .await
        .expect("connect to the test cluster");
    assert!(store.is_cluster(), "{url} opens a cluster store");
    Arc::new(store)
}

/// A fresh prefix on the shared cluster: its URL, and a store on it.
async fn fresh_store(test: &str) -> Option<(String, Arc<dyn ThreadStore>)> {
    let (url, _) = prefixed_url(test)?;
    let store = connect(&url, RedisStoreOptions::default()).await;
    Some((url, store))
}

async fn shared_cluster_store() -> Option<Arc<dyn ThreadStore>> {
    let (_, store) = fresh_store("task-core persistence suite on a cluster").await?;
    Some(store)
}

task_core::persistence_tests!(shared_cluster_store());

// ---------------------------------------------------------------------------
// Real processes: the `redis_worker` example opens the cluster URL itself.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_processes_tasks_are_recovered_after_its_lease_on_a_cluster() {
    let Some((url, store)) = fresh_store("a_killed_worker_processes_tasks_are_recovered").await
    else {
        return;
    };
    common::redis::a_killed_workers_tasks_are_recovered_after_its_lease(&url, store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_tree_from_another_process_cancels_the_holders_tasks_on_a_cluster() {
    let Some((url, store)) = fresh_store("cancel_tree_from_another_process").await else {
        return;
    };
    common::redis::cancel_tree_from_another_process_cancels_the_holders_tasks(&url, store).await;
}

/// A wait here for a task a worker process holds ends when the holder
/// finishes it, woken by the holder's sharded signal: the waiter looks at
/// the record by itself only once a minute, long after the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_in_another_process_ends_when_the_holder_finishes_on_a_cluster() {
    let test = "a_wait_in_another_process_ends_when_the_holder_finishes";
    let Some((url, prefix)) = prefixed_url(test) else {
        return;
    };
    let cluster = shared_cluster(test).expect("started by prefixed_url");
    // `flat 2`: an `agent_run` and a `shell` task, both until cancelled.
    let (mut worker, ids) = Worker::launch(&url, "holder", "owner", "flat", 2).await;
    let (untouched, held) = (ids[0].clone(), ids[1].clone());
    let store = connect(&url, RedisStoreOptions::default()).await;
    let waiter = BackgroundTaskManager::builder()
        .task_store(Arc::new(TaskStore::new(Arc::clone(&store))))
        .instance_id("waiter")
        .control_poll_interval(Duration::from_secs(60))
        .build();
    let waiting = {
        let (waiter, held) = (waiter.clone(), held.clone());
        tokio::spawn(async move { waiter.wait("owner", &held).await })
    };
    // Signals go under `<prefix>:signal:` (documented, for ACLs); the
    // waiter's channel names the task.
    shard_channel_appears(cluster, format!("{prefix}:signal:*{held}*")).await;

    let canceller = BackgroundTaskManager::builder()
        .task_store(Arc::new(TaskStore::new(store)))
        .instance_id("canceller")
        .build();
    canceller.cancel("owner", &held).await.expect("cancel");
    let finished = worker.finished(1).await;
    assert_eq!(finished, [(held.clone(), "cancelled".to_owned())]);
    let done = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the holder's signal ends the wait (the waiter's own look is a minute away)")
        .expect("no panic")
        .expect("a known task");
    assert_eq!(
        (done.task_id.as_str(), done.status),
        (held.as_str(), TaskStatus::Cancelled)
    );
    let other = canceller.get("owner", &untouched).await.expect("durable");
    assert_eq!(other.status, TaskStatus::Running, "the holder's other task");
    let exit = worker.stop().await;
    assert!(exit.success(), "the holder shuts down cleanly: {exit}");
}

/// Waits (polling the nodes, for up to 10 s) until some node of `cluster`
/// has a sharded pub/sub channel matching `pattern`: a subscription is
/// active.
async fn shard_channel_appears(cluster: &'static RedisCluster, pattern: String) {
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        let subscribed = || {
            (0..cluster.nodes().len()).any(|i| {
                let reply = cluster
                    .query(i, &["PUBSUB", "SHARDCHANNELS", pattern.as_str()])
                    .expect("ask a node of the shared cluster");
                matches!(reply, Reply::Array(channels) if !channels.is_empty())
            })
        };
        while !subscribed() {
            assert!(
                Instant::now() < deadline,
                "no node has a sharded channel {pattern} after 10 s"
            );
            // Polling real processes, with a deadline.
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .expect("poll the nodes");
}

// ---------------------------------------------------------------------------
// Opening the store by URL.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_open_accepts_a_redis_cluster_url_with_a_prefix() {
    let test = "store_open_accepts_a_redis_cluster_url_with_a_prefix";
    let Some(cluster) = shared_cluster(test) else {
        return;
    };
    let url = format!("{}?prefix={}", cluster.url(), unique_prefix(test));
    common::stores_opened_by_url_share_tasks(&url, &url, &format!("{url}-other")).await;
}

/// Each URL names the shared cluster's nodes right but for one mistake,
/// which the refusal names; nothing is connected to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_open_refuses_a_malformed_cluster_url_as_invalid_input() {
    let test = "store_open_refuses_a_malformed_cluster_url_as_invalid_input";
    let Some(cluster) = shared_cluster(test) else {
        return;
    };
    let url = cluster.url();
    let seeds = url
        .strip_prefix("redis+cluster://")
        .and_then(|rest| rest.strip_suffix('/'))
        .expect("redis+cluster://<seeds>/");
    let first = seeds.split(',').next().expect("a seed");
    for (url, says) in [
        (format!("redis+cluster://{seeds},/"), "empty seed"),
        (format!("redis+cluster://{first},127.0.0.1/"), "no port"),
        (format!("redis+cluster://{seeds}/0"), "database"),
        (format!("redis+cluster://{seeds}/?prefx=typo"), "`prefx`"),
        (format!("redis+cluster://{seeds}/?wait=many"), "wait"),
    ] {
        let err = task_core::store::open(&url).await.expect_err(&url);
        assert!(
            matches!(err, ThreadStoreError::InvalidInput { .. }),
            "{url}: {err:?}"
        );
        assert!(err.to_string().contains(says), "{url}: {err}");
    }
}

// ---------------------------------------------------------------------------
// A master killed under load.
// ---------------------------------------------------------------------------

/// How many tasks the failover test runs, and how many at once.
const TASKS: usize = 500;
const BATCH: usize = 10;
/// How many finish (durably) before the kill, and at least after the
/// failover and the old master's return.
const BEFORE: usize = 150;
const AFTER: usize = 150;

/// Spawns `BATCH` tasks, task `i` (its index in `ids`) returning
/// `json!(i)`; checks that `wait()` reports each completed with its result;
/// then waits until their writes are durable.
async fn run_batch(m: &BackgroundTaskManager, ids: &mut Vec<String>) {
    let first = ids.len();
    for i in first..first + BATCH {
        let id = m
            .spawn("owner", "t", "d", move |_| async move {
                TaskResult::Success(json!(i))
            })
            .await
            .expect("spawn");
        ids.push(id);
    }
    for (i, id) in ids.iter().enumerate().skip(first) {
        let done = m.wait("owner", id).await.expect("a known task");
        assert_eq!(
            (done.status, done.result),
            (TaskStatus::Completed, Some(json!(i))),
            "{id}"
        );
    }
    tokio::time::timeout(Duration::from_secs(20), m.flush())
        .await
        .expect("the batch's writes become durable within 20 s");
}

/// The `PersistenceFailed` events a manager sent.
#[derive(Debug, Default)]
struct PersistenceFailures {
    retried: usize,
    given_up: usize,
}

impl PersistenceFailures {
    fn count(&mut self, kind: TaskEventKind) {
        if let TaskEventKind::PersistenceFailed { permanent, .. } = kind {
            *if permanent {
                &mut self.given_up
            } else {
                &mut self.retried
            } += 1;
        }
    }
}

/// Counts `m`'s persistence failures until told to stop, then the events
/// sent before that, and returns the counts.
fn count_persistence_failures(
    m: &BackgroundTaskManager,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<PersistenceFailures>,
) {
    use tokio::sync::broadcast::error::{RecvError, TryRecvError};
    let mut events = m.subscribe();
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let counter = tokio::spawn(async move {
        let mut failures = PersistenceFailures::default();
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Ok(event) => failures.count(event.kind),
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return failures,
                },
                _ = &mut stopped => break,
            }
        }
        // Told to stop: what was sent before.
        loop {
            match events.try_recv() {
                Ok(event) => failures.count(event.kind),
                Err(TryRecvError::Lagged(_)) => {}
                Err(_) => return failures,
            }
        }
    });
    (stop, counter)
}

/// Every task `wait()` reported finished before the kill, while the cluster
/// failed over and the old master rejoined, and after, is found completed
/// with its result, its log exactly its two transitions, through a fresh
/// store on the same URL; no write was given up on the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_reported_by_wait_survive_a_master_failover_with_wait() {
    let test = "outcomes_reported_by_wait_survive_a_master_failover_with_wait";
    let Some(mut cluster) = private_cluster_or_skip(test, RedisCluster::builder()) else {
        return;
    };
    let started = Instant::now();
    let url = format!(
        "{}?prefix={}&wait=1&wait_timeout=500ms",
        cluster.url(),
        unique_prefix(test)
    );
    let options = RedisStoreOptions::default()
        .with_response_timeout(Duration::from_secs(2))
        .with_reconnect_retries(3)
        .with_reconnect_max_delay(Duration::from_millis(200));
    let m = BackgroundTaskManager::builder()
        .task_store(Arc::new(TaskStore::new(connect(&url, options).await)))
        .persistence_backoff(Duration::from_millis(20), Duration::from_millis(300))
        .build();
    let (stop_counting, counting) = count_persistence_failures(&m);

    let mut ids = Vec::with_capacity(TASKS);
    while ids.len() < BEFORE {
        run_batch(&m, &mut ids).await;
    }
    let failover = tokio::task::spawn_blocking(move || {
        let victim = cluster.master_of_slot(0).expect("a master serves slot 0");
        let killed = Instant::now();
        let promoted = cluster
            .kill_master_and_wait_for_failover(victim)
            .expect("a replica takes over");
        let failed_over = killed.elapsed();
        cluster
            .restart_node(victim)
            .expect("the old master rejoins, as a replica");
        (cluster, victim, promoted, failed_over, killed.elapsed())
    });
    // Each batch's flush waits out what the failover does to its writes.
    loop {
        run_batch(&m, &mut ids).await;
        if failover.is_finished() || ids.len() >= TASKS - AFTER {
            break;
        }
    }
    let during = ids.len() - BEFORE;
    let (cluster, victim, promoted, failed_over, rejoined) =
        failover.await.expect("the failover thread");
    assert_ne!(victim, promoted);
    while ids.len() < TASKS {
        run_batch(&m, &mut ids).await;
    }

    let fresh = task_core::store::open(&url)
        .await
        .expect("open the same URL");
    let tasks = TaskStore::new(Arc::clone(&fresh));
    common::assert_all_completed_once(&m, &tasks, &fresh, "owner", &ids).await;
    stop_counting.send(()).expect("still counting");
    let failures = counting.await.expect("the counter");
    assert_eq!(failures.given_up, 0, "no write was given up: {failures:?}");
    eprintln!(
        "{test}: {BEFORE} tasks before the kill, {during} during, {} after; failover \
         {failed_over:?}, old master back {rejoined:?} after the kill; {} write failures \
         retried; {:?} in all",
        TASKS - BEFORE - during,
        failures.retried,
        started.elapsed()
    );
    drop(cluster);
}
