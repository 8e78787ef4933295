//! What the manager's tests on real servers share (`redis.rs`,
//! `redis_cluster.rs`, `postgres.rs`): an outage with 2,000 tasks, and the
//! check that nothing was lost or duplicated; what `store::open` with a URL
//! must do; in `redis`, the worker processes of the Redis tests. The
//! persistence suite itself is packaged in `task_core::testing` (feature
//! `testing`).

#![allow(dead_code, unreachable_pub)]

#[cfg(feature = "redis")]
pub mod redis;

use std::sync::Arc;

use serde_json::json;
use task_core::thread_store::{ThreadQuery, ThreadReaderExt, ThreadStore};
use task_core::{BackgroundTaskManager, TaskEventKind, TaskResult, TaskStatus, TaskStore};

/// Message bodies' `transition` (or `output`) names in log order.
pub async fn log_names(store: &Arc<dyn ThreadStore>, task_id: &str) -> Vec<String> {
    store
        .load_all_messages(&TaskStore::thread_id(task_id))
        .await
        .expect("log")
        .into_iter()
        .map(|m| match m.body["type"].as_str() {
            Some("output") => format!("output:{}", m.body["value"]),
            _ => m.body["transition"].as_str().unwrap_or("?").to_owned(),
        })
        .collect()
}

/// Checks that every task of `ids` (task `i` returned `json!(i)`) is
/// durably `completed` with its result, its log exactly `started,
/// completed`, no summary shows a persistence error, and the owner's index
/// holds exactly these tasks.
pub async fn assert_all_completed_once(
    m: &BackgroundTaskManager,
    tasks: &TaskStore,
    store: &Arc<dyn ThreadStore>,
    owner: &str,
    ids: &[String],
) {
    for (i, id) in ids.iter().enumerate() {
        let record = tasks.load_task(id).await.expect("load").expect("record");
        assert_eq!(record.status, TaskStatus::Completed, "task {i}");
        assert_eq!(record.result, Some(json!(i)), "task {i}");
        assert_eq!(
            log_names(store, id).await,
            ["started", "completed"],
            "task {i}: each transition once"
        );
        assert_eq!(
            m.get(owner, id).await.expect("known").persistence_error,
            None,
            "task {i}"
        );
    }
    let listed = store
        .list_all_threads(ThreadQuery::by_parent(owner).with_kind("task"))
        .await
        .expect("list");
    assert_eq!(listed.len(), ids.len(), "none lost, none duplicated");
}

/// 2,000 tasks whose starts are durable finish while the store's server is
/// down (`stop` takes it down): each summary shows the retried persistence
/// error meanwhile, and after `restart` and `flush()` every record is
/// terminal and each log is exactly its transitions, none lost or
/// duplicated. `store` must retry quickly (short timeouts).
pub async fn outcomes_survive_an_outage<S>(
    store: Arc<dyn ThreadStore>,
    server: &mut S,
    stop: impl FnOnce(&mut S),
    restart: impl FnOnce(&mut S),
) {
    let tasks = Arc::new(TaskStore::new(store.clone()));
    let m = BackgroundTaskManager::builder()
        .task_store(tasks.clone())
        .persistence_backoff(
            std::time::Duration::from_millis(20),
            std::time::Duration::from_millis(300),
        )
        .build();
    let mut events = m.subscribe();

    const N: usize = 2_000;
    let (go, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut ids = Vec::with_capacity(N);
    for i in 0..N {
        let mut go = go.subscribe();
        let id = m
            .spawn("owner", "t", "d", move |_| async move {
                let _ = go.recv().await;
                TaskResult::Success(json!(i))
            })
            .await
            .expect("spawn");
        ids.push(id);
    }
    m.flush().await; // every start is durable

    stop(server);
    go.send(()).expect("tasks are waiting");
    for id in &ids {
        let s = m.wait("owner", id).await.expect("known");
        assert_eq!(
            s.status,
            TaskStatus::Completed,
            "tasks complete during the outage"
        );
    }
    // The outage shows, as an error that is retried.
    loop {
        match events.recv().await {
            Ok(event) => {
                if let TaskEventKind::PersistenceFailed { permanent, .. } = event.kind {
                    assert!(!permanent, "an outage is retried, not given up");
                    break;
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(e) => panic!("events: {e}"),
        }
    }
    assert!(
        m.list("owner", None)
            .await
            .iter()
            .any(|s| s.persistence_error.is_some()),
        "persistence_error shows during the outage"
    );

    restart(server);
    m.flush().await;
    assert_all_completed_once(&m, &tasks, &store, "owner", &ids).await;
}

/// `task_core::store::open`: a task finished through a store opened on
/// `url` is durable and visible through a store opened on `same` (the same
/// data, by the same URL or another spelling of it), and not through one
/// opened on `other`.
pub async fn stores_opened_by_url_share_tasks(url: &str, same: &str, other: &str) {
    let store = task_core::store::open(url).await.expect("open the URL");
    let m = BackgroundTaskManager::builder()
        .task_store(Arc::new(TaskStore::new(store)))
        .build();
    let id = m
        .spawn("owner", "t", "d", |_| async {
            TaskResult::Success(json!(1))
        })
        .await
        .expect("spawn");
    m.wait("owner", &id).await.expect("known");
    m.flush().await;
    let same = TaskStore::new(task_core::store::open(same).await.expect("open"));
    assert!(same.load_task(&id).await.expect("load").is_some());
    let other = TaskStore::new(task_core::store::open(other).await.expect("open"));
    assert!(other.load_task(&id).await.expect("load").is_none());
}
