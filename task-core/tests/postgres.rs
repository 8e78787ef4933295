//! The manager on PostgreSQL: the persistence suite, faults of a real
//! server (stopped with `pg_ctl stop -m immediate` and restarted; its
//! sessions terminated; a write held past the statement timeout), and two
//! managers with their own instance ids and their own connections on one
//! database, which share nothing but the database: crash recovery and
//! cancellation from the other instance (woken by LISTEN/NOTIFY).

#![cfg(feature = "postgres")]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::json;
use task_core::thread_store::{ThreadReaderExt, ThreadStore};
use task_core::{
    BackgroundTaskManager, RunCancellationToken, SpawnParams, TaskEventKind, TaskResult,
    TaskStatus, TaskStore, new_task_id,
};
use task_store_postgres::{PostgresStore, PostgresStoreOptions};
use task_testkit::postgres_server::{
    PostgresServer, private_server_or_skip, shared_postgres_url, unique_schema,
};

async fn shared_postgres() -> Option<Arc<dyn ThreadStore>> {
    let url = shared_postgres_url("task-core postgres persistence suite")?;
    let options = PostgresStoreOptions::default().with_schema(unique_schema("persistence"));
    let store = PostgresStore::connect_with(&url, options)
        .await
        .expect("connect to the test server");
    Some(Arc::new(store))
}

task_core::persistence_tests!(shared_postgres());

fn fast_options(schema: &str) -> PostgresStoreOptions {
    PostgresStoreOptions::default()
        .with_schema(schema)
        .with_connect_timeout(Duration::from_millis(500))
        .with_statement_timeout(Duration::from_secs(2))
        .with_response_timeout(Duration::from_secs(3))
}

/// A plain connection, to look at the server or hold a row behind the
/// store's back.
async fn raw(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("raw connection");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminal_states_survive_a_hard_stop_and_restart_of_postgres() {
    let test = "terminal_states_survive_a_hard_stop";
    // The disk's own durability (`fsync = on`, PostgreSQL's default), as in
    // production: nothing acknowledged may be lost to the crash.
    let builder = PostgresServer::builder().config("fsync", "on");
    let Some(mut server) = private_server_or_skip(test, builder) else {
        return;
    };
    let store: Arc<dyn ThreadStore> = Arc::new(
        PostgresStore::connect_with(&server.url(), fast_options("hard_stop"))
            .await
            .expect("connect"),
    );
    common::outcomes_survive_an_outage(
        store,
        &mut server,
        |server| server.stop_immediate().expect("pg_ctl stop -m immediate"),
        |server| server.restart().expect("crash recovery and restart"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_terminated_mid_run_lose_nothing() {
    let test = "sessions_terminated_mid_run";
    let Some(server) = private_server_or_skip(test, PostgresServer::builder()) else {
        return;
    };
    let name = "terminated_manager";
    let url = format!("{}?application_name={name}", server.url());
    let store: Arc<dyn ThreadStore> = Arc::new(
        PostgresStore::connect_with(&url, fast_options("terminated"))
            .await
            .expect("connect"),
    );
    let tasks = Arc::new(TaskStore::new(store.clone()));
    let m = BackgroundTaskManager::builder()
        .task_store(tasks.clone())
        .persistence_backoff(Duration::from_millis(10), Duration::from_millis(200))
        .build();

    let admin = raw(&server.url()).await;
    let done = Arc::new(AtomicBool::new(false));
    let killer = {
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            let mut killed = 0i64;
            while !done.load(Ordering::Relaxed) {
                killed += admin
                    .query_one(
                        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) \
                         FROM pg_stat_activity WHERE application_name = $1",
                        &[&name],
                    )
                    .await
                    .expect("pg_terminate_backend")
                    .get::<_, i64>(0);
                // Pacing the fault, not waiting for anything.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            killed
        })
    };
    const N: usize = 2_000;
    let mut ids = Vec::with_capacity(N);
    for i in 0..N {
        let id = m
            .spawn("owner", "t", "d", move |_| async move {
                tokio::task::yield_now().await;
                TaskResult::Success(json!(i))
            })
            .await
            .expect("spawn");
        ids.push(id);
        if i % 100 == 99 {
            // Spread the run over many kills.
            tokio::task::yield_now().await;
            m.wait("owner", &ids[i - 50]).await.expect("known");
        }
    }
    for id in &ids {
        m.wait("owner", id).await.expect("known");
    }
    m.flush().await;
    done.store(true, Ordering::Relaxed);
    let killed = killer.await.expect("killer");
    assert!(
        killed > 0,
        "no session was terminated: the test proved nothing"
    );
    common::assert_all_completed_once(&m, &tasks, &store, "owner", &ids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_held_past_the_statement_timeout_is_retried_and_lands() {
    let Some(url) = shared_postgres_url("a_write_held_past_the_statement_timeout") else {
        return;
    };
    let schema = unique_schema("held_write");
    let store: Arc<dyn ThreadStore> = Arc::new(
        PostgresStore::connect_with(
            &url,
            fast_options(&schema).with_statement_timeout(Duration::from_millis(200)),
        )
        .await
        .expect("connect"),
    );
    let tasks = Arc::new(TaskStore::new(store.clone()));
    let m = BackgroundTaskManager::builder()
        .task_store(tasks.clone())
        .persistence_backoff(Duration::from_millis(20), Duration::from_millis(100))
        .build();
    let mut events = m.subscribe();
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let id = m
        .spawn("owner", "t", "d", |_| async move {
            let _ = released.await;
            TaskResult::Success(json!(0))
        })
        .await
        .expect("spawn");
    m.flush().await;

    // Another session holds the task's row: its finish waits on it until
    // the server cancels the statement.
    let mut holder = raw(&url).await;
    let tx = holder.transaction().await.expect("begin");
    tx.execute(
        &format!("SELECT 1 FROM \"{schema}\".threads WHERE id = $1 FOR UPDATE"),
        &[&TaskStore::thread_id(&id)],
    )
    .await
    .expect("hold the row");
    release.send(()).expect("the task waits");
    let error = loop {
        match events.recv().await {
            Ok(event) => {
                if let TaskEventKind::PersistenceFailed { error, permanent } = event.kind {
                    assert!(!permanent, "a timeout is retried: {error}");
                    break error;
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(e) => panic!("events: {e}"),
        }
    };
    assert!(error.contains("timed out"), "{error}");
    tx.rollback().await.expect("release the row");
    m.flush().await;
    let record = tasks.load_task(&id).await.expect("load").expect("record");
    assert_eq!(record.status, TaskStatus::Completed);
    let log = store
        .load_all_messages(&TaskStore::thread_id(&id))
        .await
        .expect("log");
    let names: Vec<_> = log.iter().map(|m| m.body["transition"].clone()).collect();
    assert_eq!(names, [json!("started"), json!("completed")]);
    assert_eq!(
        m.get("owner", &id).await.expect("known").persistence_error,
        None
    );
}

/// A manager on its own store (its own pool and LISTEN connection) of
/// `schema` on `url`, as a separate process would have.
async fn instance(url: &str, schema: &str, id: &str, poll: Duration) -> BackgroundTaskManager {
    let store =
        PostgresStore::connect_with(url, PostgresStoreOptions::default().with_schema(schema))
            .await
            .expect("connect");
    BackgroundTaskManager::builder()
        .task_store(Arc::new(TaskStore::new(Arc::new(store))))
        .instance_id(id)
        .lease(Duration::from_secs(30), Duration::from_secs(10))
        .control_poll_interval(poll)
        .build()
}

async fn spawn_until_cancelled(m: &BackgroundTaskManager, owner: &str, task_type: &str) -> String {
    m.spawn(owner, task_type, "long work", |ctx| async move {
        ctx.cancelled().await;
        TaskResult::Cancelled
    })
    .await
    .expect("spawn")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_instances_tasks_are_recovered_by_its_next_life_and_not_before() {
    let Some(url) = shared_postgres_url("a_crashed_instances_tasks_are_recovered") else {
        return;
    };
    let schema = unique_schema("crash_recovery");
    let poll = Duration::from_millis(250);
    let crashed = instance(&url, &schema, "worker-1", poll).await;
    let mut resumable = Vec::new();
    let mut plain = Vec::new();
    for _ in 0..3 {
        resumable.push(spawn_until_cancelled(&crashed, "owner", "agent_run").await);
        plain.push(spawn_until_cancelled(&crashed, "owner", "shell").await);
    }
    crashed.flush().await;
    drop(crashed); // no shutdown: as if the process died

    // Another instance sees live leases and leaves the tasks alone.
    let observer = instance(&url, &schema, "observer", poll).await;
    let early = observer.recover().await.expect("recover");
    assert!(
        early.stopped.is_empty() && early.failed.is_empty(),
        "{early:?}"
    );
    assert_eq!(early.alive, 6);

    // The restarted process (same instance id) knows at once that the
    // running records it holds belong to its earlier life.
    let next_life = instance(&url, &schema, "worker-1", poll).await;
    let mut report = next_life.recover().await.expect("recover");
    report.stopped.sort();
    report.failed.sort();
    resumable.sort();
    plain.sort();
    assert_eq!(report.stopped, resumable);
    assert_eq!(report.failed, plain);
    let tasks = next_life.task_store().expect("a store").clone();
    for id in resumable.iter().chain(&plain) {
        let record = tasks.load_task(id).await.expect("load").expect("record");
        assert_ne!(record.status, TaskStatus::Running, "{id}");
        assert!(record.lease.is_none(), "{id}");
    }
    assert!(
        next_life.recover().await.expect("again").is_empty(),
        "idempotent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_tree_from_another_instance_reaches_the_holder_through_notify() {
    let Some(url) = shared_postgres_url("cancel_tree_from_another_instance") else {
        return;
    };
    let schema = unique_schema("cross_cancel");
    // The holder polls its inbox only every minute: a prompt end proves the
    // signal (LISTEN/NOTIFY) woke it.
    let holder = instance(&url, &schema, "holder", Duration::from_secs(60)).await;
    let root = spawn_until_cancelled(&holder, "owner", "agent_run").await;
    let mut ids = vec![root.clone()];
    for _ in 0..3 {
        let params = SpawnParams {
            task_id: new_task_id(),
            owner_thread_id: "owner".to_owned(),
            task_type: "shell".to_owned(),
            description: "child".to_owned(),
            parent_task_id: Some(root.clone()),
            metadata: json!(null),
        };
        ids.push(
            holder
                .spawn_with_id(params, RunCancellationToken::new(), |ctx| async move {
                    ctx.cancelled().await;
                    TaskResult::Cancelled
                })
                .await
                .expect("spawn child"),
        );
    }
    holder.flush().await;

    let canceller = instance(&url, &schema, "canceller", Duration::from_millis(250)).await;
    let cancelled = canceller
        .cancel_tree("owner", &root)
        .await
        .expect("cancel tree");
    assert_eq!(cancelled.len(), 4);
    for id in &ids {
        let summary = tokio::time::timeout(Duration::from_secs(20), holder.wait("owner", id))
            .await
            .expect("the holder was woken long before its next poll")
            .expect("known");
        assert_eq!(summary.status, TaskStatus::Cancelled, "{id}");
    }
    holder.flush().await;
    // Nothing of the tree is open any more; the history says cancelled.
    let open = canceller
        .list_including_durable("owner", None)
        .await
        .expect("list");
    assert!(open.is_empty(), "{open:?}");
    let seen = canceller
        .list_durable_page("owner", None, 0)
        .await
        .expect("page")
        .tasks;
    assert_eq!(seen.len(), 4);
    for summary in seen {
        assert_eq!(summary.status, TaskStatus::Cancelled, "{}", summary.task_id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_open_accepts_postgres_and_postgresql_urls_with_a_schema() {
    let Some(url) = shared_postgres_url("store_open_accepts_postgres_urls") else {
        return;
    };
    let schema = unique_schema("open");
    let with_schema = |url: &str, schema: &str| {
        let separator = if url.contains('?') { '&' } else { '?' };
        format!("{url}{separator}schema={schema}")
    };
    // The same schema through the other spelling of the scheme, and another
    // schema.
    let postgresql = url.replacen("postgres://", "postgresql://", 1);
    common::stores_opened_by_url_share_tasks(
        &with_schema(&url, &schema),
        &with_schema(&postgresql, &schema),
        &with_schema(&url, &unique_schema("open_other")),
    )
    .await;
}
