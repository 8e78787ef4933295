//! The task layer on a real, private `redis-server` reached through a
//! `FaultProxy` that resets connections at random (seeded, replayable with
//! `FAULT_PROXY_SEED`): 2,000 tasks, some of whose writes are cut mid-request
//! and some of whose replies are lost after the server applied them, all end
//! durable and terminal, each logged exactly once per transition. Only
//! task-core's public API is used.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use task_core::thread_store::{ThreadQuery, ThreadReaderExt, ThreadStore};
use task_core::{BackgroundTaskManager, TaskResult, TaskStatus, TaskStore};
use task_store_redis::{RedisStore, RedisStoreOptions};
use task_testkit::proxy::{FaultProxy, RandomCuts, ResetCause};
use task_testkit::redis_server::{RedisServer, private_server_or_skip, unique_prefix};

const TASKS: usize = 2_000;

fn options(prefix: &str) -> RedisStoreOptions {
    RedisStoreOptions::default()
        .with_prefix(prefix)
        .with_connect_timeout(Duration::from_millis(500))
        .with_response_timeout(Duration::from_secs(2))
        .with_reconnect_retries(1)
        .with_reconnect_max_delay(Duration::from_millis(100))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_tasks_survive_random_connection_resets() {
    let test = "two_thousand_tasks_survive_random_connection_resets";
    let Some(server) = private_server_or_skip(test, RedisServer::builder()) else {
        return;
    };
    let upstream = SocketAddr::from(([127, 0, 0, 1], server.port()));
    let proxy = FaultProxy::start(upstream).await.expect("start the proxy");
    // The first 60 connections are each cut, either way: requests cut
    // short somewhere in their first 512 KiB (a batch of a thousand tasks
    // is more than that), and replies lost after the server applied the
    // request somewhere in their first 16 KiB. Later connections live, so
    // the run ends.
    proxy.random_cuts(Some(
        RandomCuts::new(1.0, 1 << 10..512 << 10)
            .to_client(64..16 << 10)
            .at_most(60),
    ));
    let prefix = unique_prefix(test);
    // The connection is cut like any other, so the connect itself may fail
    // (a reply cut during the handshake): retried, as a service would, until
    // a connection survives. Each failure uses up one of the 60 cuts.
    let url = format!("redis://{}/", proxy.addr());
    let mut connect_failures = 0;
    let through: Arc<dyn ThreadStore> = loop {
        match RedisStore::connect_with(&url, options(&prefix)).await {
            Ok(store) => break Arc::new(store),
            Err(e) if e.is_retryable() && connect_failures < 60 => connect_failures += 1,
            Err(e) => panic!("connect through the proxy: {e:?}"),
        }
    };
    let tasks = Arc::new(TaskStore::new(through));
    let manager = BackgroundTaskManager::builder()
        .task_store(Arc::clone(&tasks))
        .persistence_backoff(Duration::from_millis(10), Duration::from_millis(200))
        .build();

    // Half the tasks finish at once (start and finish written together);
    // the other half wait, so their start is written before their finish.
    let (go, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut ids = Vec::with_capacity(TASKS);
    for i in 0..TASKS {
        let mut go = go.subscribe();
        let id = manager
            .spawn("owner", "shell", "through the proxy", move |_| async move {
                if i % 2 == 0 {
                    let _ = go.recv().await;
                }
                TaskResult::Success(json!(i))
            })
            .await
            .expect("spawn");
        ids.push(id);
    }
    manager.flush().await;
    go.send(()).expect("the waiting tasks listen");
    for id in &ids {
        manager.wait("owner", id).await.expect("a known task");
    }
    manager.flush().await;

    let stats = proxy.stats();
    let cuts = stats
        .resets
        .iter()
        .filter(|reset| matches!(reset.cause, ResetCause::RandomCut(_)))
        .count();
    eprintln!(
        "{TASKS} tasks through the proxy (seed {}): {} connections, {cuts} cut, {} bytes to the server, {} back",
        proxy.seed(),
        stats.accepted,
        stats.to_server,
        stats.to_client
    );
    // Every connection carries far more than its budget until the cuts run
    // out, so whatever the seed the run meets several.
    assert!(cuts >= 3, "the run met only {cuts} resets: {stats:?}");

    // Read back straight from the server, not through the proxy.
    let direct: Arc<dyn ThreadStore> = Arc::new(
        RedisStore::connect_with(&server.url(), options(&prefix))
            .await
            .expect("connect to the server"),
    );
    let durable = TaskStore::new(Arc::clone(&direct));
    for (i, id) in ids.iter().enumerate() {
        let summary = manager.get("owner", id).await.expect("a known task");
        assert_eq!(summary.persistence_error, None, "task {i}");
        let record = durable
            .load_task(id)
            .await
            .expect("load")
            .unwrap_or_else(|| panic!("task {i} was lost"));
        assert_eq!(record.status, TaskStatus::Completed, "task {i}");
        assert_eq!(record.result, Some(json!(i)), "task {i}");
        assert_eq!(record.attempt, 1, "task {i}");
        let log: Vec<String> = direct
            .load_all_messages(&TaskStore::thread_id(id))
            .await
            .expect("log")
            .iter()
            .map(|m| m.body["transition"].as_str().unwrap_or("?").to_owned())
            .collect();
        assert_eq!(
            log,
            ["started", "completed"],
            "task {i}: each transition logged exactly once"
        );
    }
    let listed = direct
        .list_all_threads(ThreadQuery::by_parent("owner"))
        .await
        .expect("list");
    assert_eq!(listed.len(), TASKS, "none lost, none duplicated");
}
