//! The manager on Redis: the persistence suite, faults of a real server
//! (killed with SIGKILL and restarted), and real processes that crash or are
//! cancelled from another process.

#![cfg(feature = "redis")]

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use task_core::thread_store::{ThreadQuery, ThreadReaderExt, ThreadStore};
use task_core::{BackgroundTaskManager, TaskEventKind, TaskResult, TaskStatus, TaskStore};
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
    let tasks = Arc::new(TaskStore::new(store.clone()));
    let m = BackgroundTaskManager::builder()
        .task_store(tasks.clone())
        .persistence_backoff(Duration::from_millis(20), Duration::from_millis(300))
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

    server.kill().expect("SIGKILL redis-server");
    go.send(()).expect("tasks are waiting");
    for id in &ids {
        let s = m.wait("owner", id).await.expect("known");
        assert_eq!(
            s.status,
            TaskStatus::Completed,
            "tasks complete during the outage"
        );
    }
    // The outage shows on the summaries.
    let failed_id = loop {
        let event = match events.recv().await {
            Ok(event) => event,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(e) => panic!("events: {e}"),
        };
        if let TaskEventKind::PersistenceFailed { permanent, .. } = event.kind {
            assert!(!permanent, "an outage is retried, not given up");
            break event.task_id;
        }
    };
    assert!(
        m.get("owner", &failed_id)
            .await
            .expect("known")
            .persistence_error
            .is_some()
            || m.list("owner", None)
                .await
                .iter()
                .any(|s| s.persistence_error.is_some()),
        "the summaries show the error while it is retried"
    );
    assert!(
        m.list("owner", None)
            .await
            .iter()
            .any(|s| s.persistence_error.is_some()),
        "persistence_error shows during the outage"
    );

    server.restart().expect("restart redis-server");
    m.flush().await;

    for (i, id) in ids.iter().enumerate() {
        let record = tasks.load_task(id).await.expect("load").expect("record");
        assert_eq!(record.status, TaskStatus::Completed, "task {i}");
        assert_eq!(record.result, Some(json!(i)), "task {i}");
        let log = store
            .load_all_messages(&TaskStore::thread_id(id))
            .await
            .expect("log");
        assert_eq!(log.len(), 2, "task {i}: started and completed, once each");
        assert_eq!(
            m.get("owner", id).await.expect("known").persistence_error,
            None
        );
    }
    let listed = store
        .list_all_threads(ThreadQuery::by_parent("owner").with_kind("task"))
        .await
        .expect("list");
    assert_eq!(listed.len(), N, "none lost, none duplicated");
}

/// The `redis_worker` example, built by `cargo test` next to this binary.
fn worker_binary() -> PathBuf {
    static FOUND: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    FOUND.get_or_init(find_or_build_worker).clone()
}

/// `cargo test` builds the example with the other targets; when only this
/// test target was built, build it now.
fn find_or_build_worker() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let examples = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps")
        .join("examples");
    let find = || {
        std::fs::read_dir(&examples).ok().and_then(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    let name = p.file_stem().and_then(|n| n.to_str()).unwrap_or_default();
                    (name == "redis_worker" || name.starts_with("redis_worker-"))
                        && p.extension()
                            .is_none_or(|e| e == std::env::consts::EXE_EXTENSION)
                        && !p.to_string_lossy().ends_with(".d")
                })
                .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        })
    };
    if let Some(path) = find() {
        return path;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = Command::new(cargo)
        .args(["build", "-p", "task-core", "--features", "redis"])
        .args(["--example", "redis_worker"])
        .status()
        .expect("run cargo build for the redis_worker example");
    assert!(status.success(), "building the redis_worker example failed");
    find().expect("the redis_worker example binary after building it")
}

struct Worker {
    child: Child,
    lines: std::io::Lines<BufReader<ChildStdout>>,
}

impl Worker {
    /// Starts a worker process and waits for its `READY` line.
    fn start(url: &str, instance: &str, owner: &str, shape: &str, n: usize) -> (Self, Vec<String>) {
        let mut child = Command::new(worker_binary())
            .args([url, instance, owner, shape, &n.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the redis_worker example (built by cargo test)");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let ready = lines
            .next()
            .expect("the worker prints READY")
            .expect("read worker output");
        let ids = ready
            .strip_prefix("READY ")
            .unwrap_or_else(|| panic!("unexpected worker output {ready:?}"))
            .split(',')
            .map(str::to_owned)
            .collect();
        (Self { child, lines }, ids)
    }

    /// The next `FINISHED <id> <status>` line.
    fn next_finished(&mut self) -> (String, String) {
        let line = self
            .lines
            .next()
            .expect("the worker reports a finished task")
            .expect("read worker output");
        let mut parts = line.split(' ');
        assert_eq!(parts.next(), Some("FINISHED"), "{line}");
        let id = parts.next().expect("id").to_owned();
        let status = parts.next().expect("status").to_owned();
        (id, status)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_processes_tasks_are_recovered_after_its_lease() {
    let test = "a_killed_worker_processes_tasks_are_recovered_after_its_lease";
    let Some(server) = private_server_or_skip(test, RedisServer::builder()) else {
        return;
    };
    let prefix = unique_prefix(test);
    let url = format!("{}?prefix={prefix}", server.url());
    let (mut worker, ids) = tokio::task::spawn_blocking(move || {
        Worker::start(&url, "crashing-worker", "owner", "flat", 100)
    })
    .await
    .expect("start worker");
    assert_eq!(ids.len(), 100);
    worker.child.kill().expect("SIGKILL the worker");
    worker.child.wait().expect("reap the worker");

    let store: Arc<dyn ThreadStore> = Arc::new(
        RedisStore::connect_with(&server.url(), fast_options(&prefix))
            .await
            .expect("connect"),
    );
    let tasks = Arc::new(TaskStore::new(store.clone()));
    let recoverer = BackgroundTaskManager::builder()
        .task_store(tasks.clone())
        .instance_id("recoverer")
        .lease(Duration::from_secs(2), Duration::from_millis(500))
        .clock_skew_allowance(Duration::from_millis(200))
        .build();
    let early = recoverer.recover().await.expect("recover");
    assert!(
        early.stopped.is_empty() && early.failed.is_empty(),
        "{early:?}"
    );
    assert_eq!(early.alive, 100, "the dead worker's lease still holds");

    // The behaviour under test is the lease running out: wait for it.
    let heartbeat = store
        .load("instance:crashing-worker")
        .await
        .expect("load")
        .expect("the worker renewed its lease");
    let expires_at = heartbeat.state["expires_at_ms"].as_u64().expect("expiry");
    let now = task_core_now_ms();
    let wait = expires_at.saturating_sub(now) + 200 + 300;
    tokio::time::sleep(Duration::from_millis(wait)).await;

    let report = recoverer.recover().await.expect("recover");
    assert_eq!(
        report.stopped.len() + report.failed.len(),
        100,
        "{report:?}"
    );
    assert_eq!(report.stopped.len(), 50, "the agent_run half is resumable");
    for id in &ids {
        let r = tasks.load_task(id).await.expect("load").expect("record");
        assert_ne!(r.status, TaskStatus::Running, "{id} stays running");
    }
}

fn task_core_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_tree_from_another_process_cancels_the_holders_tasks() {
    let Some(url) = shared_redis_url("cancel_tree_from_another_process") else {
        return;
    };
    let prefix = unique_prefix("cross-cancel");
    let worker_url = format!("{url}?prefix={prefix}");
    let (mut worker, ids) = tokio::task::spawn_blocking(move || {
        Worker::start(&worker_url, "holder", "owner", "tree", 3)
    })
    .await
    .expect("start worker");
    let root = ids[0].clone();

    let store: Arc<dyn ThreadStore> = Arc::new(
        RedisStore::connect_with(&url, RedisStoreOptions::default().with_prefix(prefix))
            .await
            .expect("connect"),
    );
    let tasks = Arc::new(TaskStore::new(store));
    let canceller = BackgroundTaskManager::builder()
        .task_store(tasks.clone())
        .instance_id("canceller")
        .build();
    let cancelled = canceller
        .cancel_tree("owner", &root)
        .await
        .expect("cancel tree");
    assert_eq!(cancelled.len(), 4);

    // The holder's view: each task ends cancelled (and it flushed).
    let (mut worker, finished) = tokio::task::spawn_blocking(move || {
        let finished: Vec<_> = (0..4).map(|_| worker.next_finished()).collect();
        let _ = worker.child.stdin.take().map(|mut stdin| stdin.flush());
        (worker, finished)
    })
    .await
    .expect("read worker");
    for (id, status) in &finished {
        assert!(ids.contains(id), "{id}");
        assert_eq!(status, "cancelled", "{id}");
    }
    let _ = worker.child.wait();
    // The canceller's view, from the store.
    let seen = canceller
        .list_including_durable("owner", None)
        .await
        .expect("list");
    assert_eq!(seen.len(), 4);
    for s in seen {
        assert_eq!(s.status, TaskStatus::Cancelled, "{}", s.task_id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_open_accepts_a_redis_url_with_a_prefix() {
    let Some(url) = shared_redis_url("store_open_accepts_a_redis_url_with_a_prefix") else {
        return;
    };
    let prefix = unique_prefix("open");
    let store = task_core::store::open(&format!("{url}?prefix={prefix}"))
        .await
        .expect("open redis://");
    let tasks = TaskStore::new(store);
    let m = BackgroundTaskManager::builder()
        .task_store(Arc::new(tasks.clone()))
        .build();
    let id = m
        .spawn("owner", "t", "d", |_| async {
            TaskResult::Success(json!(1))
        })
        .await
        .expect("spawn");
    m.wait("owner", &id).await.expect("known");
    m.flush().await;
    // Visible through a store opened on the same prefix, not on another.
    let same = TaskStore::new(
        task_core::store::open(&format!("{url}?prefix={prefix}"))
            .await
            .expect("open"),
    );
    assert!(same.load_task(&id).await.expect("load").is_some());
    let other = TaskStore::new(
        task_core::store::open(&format!("{url}?prefix={prefix}-other"))
            .await
            .expect("open"),
    );
    assert!(other.load_task(&id).await.expect("load").is_none());
}
