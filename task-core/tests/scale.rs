//! The durable layer's cost follows live work, not history (issue 13),
//! shown by counting what reaches the store rather than by timing.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use task_core::thread_store::{ThreadQuery, ThreadReaderExt, ThreadStore};
use task_core::{
    BackgroundTaskManager, RunCancellationToken, SpawnParams, TaskResult, TaskStatus, TaskStore,
};
use task_store_memory::MemoryStore;
use task_testkit::{FlakyStore, Operation};

fn counted() -> (Arc<FlakyStore>, Arc<dyn ThreadStore>) {
    let flaky = Arc::new(FlakyStore::new(Arc::new(MemoryStore::new())));
    let store: Arc<dyn ThreadStore> = flaky.clone();
    (flaky, store)
}

/// Reads of task records (loads of heads).
fn loads(flaky: &FlakyStore) -> u64 {
    flaky.counts(Operation::Load).calls
}

fn reads(flaky: &FlakyStore) -> u64 {
    loads(flaky) + flaky.counts(Operation::List).calls + flaky.counts(Operation::LoadMessages).calls
}

fn manager(store: &Arc<dyn ThreadStore>, instance: Option<&str>) -> BackgroundTaskManager {
    let builder = BackgroundTaskManager::builder()
        .task_store(Arc::new(TaskStore::new(Arc::clone(store))))
        .lease(Duration::from_secs(10), Duration::from_secs(3));
    match instance {
        Some(id) => builder.instance_id(id).build(),
        None => builder.multi_process(false).build(),
    }
}

async fn history(m: &BackgroundTaskManager, owner: &str, n: usize) {
    for _ in 0..n {
        let id = m
            .spawn(owner, "t", "d", |_| async {
                TaskResult::Success(Value::Null)
            })
            .await
            .expect("spawn");
        m.wait(owner, &id).await.expect("known");
    }
    m.flush().await;
    m.gc_terminal(owner).await;
}

async fn tree(m: &BackgroundTaskManager, owner: &str, root: &str) -> Vec<String> {
    let mut ids = vec![root.to_owned()];
    for i in 0..3 {
        ids.push(format!("{root}-{i}"));
    }
    for (i, id) in ids.iter().enumerate() {
        m.spawn_with_id(
            SpawnParams {
                task_id: id.clone(),
                owner_thread_id: owner.into(),
                task_type: "t".into(),
                description: "d".into(),
                parent_task_id: (i > 0).then(|| root.to_owned()),
                metadata: json!(null),
            },
            RunCancellationToken::new(),
            |ctx| async move {
                ctx.cancelled().await;
                TaskResult::Cancelled
            },
        )
        .await
        .expect("spawn");
    }
    m.flush().await;
    ids
}

#[tokio::test(start_paused = true)]
async fn recovery_loads_no_finished_record() {
    let (flaky, store) = counted();
    let worker = manager(&store, Some("worker"));
    // Made now: a manager's clock is the wall clock at its start plus
    // tokio's (paused) time since.
    let recoverer = manager(&store, Some("recoverer"));
    history(&worker, "o", 500).await;
    for _ in 0..3 {
        worker
            .spawn("o", "agent_run", "long", |ctx| async move {
                ctx.cancelled().await;
                TaskResult::Cancelled
            })
            .await
            .expect("spawn");
    }
    worker.flush().await;
    drop(worker);
    tokio::time::advance(Duration::from_secs(30)).await;
    let before = loads(&flaky);
    let report = recoverer.recover().await.expect("recover");
    assert_eq!(report.stopped.len(), 3, "{report:?}");
    let loaded = loads(&flaky) - before;
    // The 3 running records (once to judge, once to write), the dead
    // instance's record, and instance records to sweep: never the 500.
    assert!(loaded <= 12, "recovery loaded {loaded} records");
}

#[tokio::test(start_paused = true)]
async fn cancel_tree_of_a_multi_process_manager_reads_the_tree_and_open_tasks_only() {
    let (flaky, store) = counted();
    let m = manager(&store, Some("m"));
    history(&m, "o", 500).await;
    let ids = tree(&m, "o", "root").await;
    let before = reads(&flaky);
    let cancelled = m.cancel_tree("o", "root").await.expect("cancel");
    assert_eq!(cancelled.len(), 4);
    let read = reads(&flaky) - before;
    // One listing of the open index (4 ids) and their records.
    assert!(read <= 8, "cancel_tree made {read} reads for a 4-task tree");
    for id in &ids {
        assert_eq!(
            m.wait("o", id).await.expect("known").status,
            TaskStatus::Cancelled
        );
    }
}

#[tokio::test]
async fn a_single_process_manager_reads_nothing_for_a_local_cancel_tree() {
    let (flaky, store) = counted();
    let m = manager(&store, None);
    assert!(!m.is_multi_process());
    history(&m, "o", 200).await;
    tree(&m, "o", "root").await;
    let before = reads(&flaky);
    let cancelled = m.cancel_tree("o", "root").await.expect("cancel");
    assert_eq!(cancelled.len(), 4);
    assert_eq!(reads(&flaky) - before, 0, "the registry answers it all");
    // Nor do cancel, get, wait and list of its own tasks.
    let before = reads(&flaky);
    m.get("o", "root").await.expect("known");
    m.wait("o", "root-1").await.expect("known");
    m.list("o", None).await;
    assert_eq!(reads(&flaky) - before, 0);
}

#[tokio::test(start_paused = true)]
async fn list_including_durable_reads_the_owners_open_tasks_only() {
    let (flaky, store) = counted();
    let a = manager(&store, Some("a"));
    history(&a, "o", 300).await;
    tree(&a, "o", "root").await;
    let b = manager(&store, Some("b"));
    let before = loads(&flaky);
    let seen = b.list_including_durable("o", None).await.expect("list");
    assert_eq!(seen.len(), 4, "the open tasks held elsewhere");
    assert!(
        loads(&flaky) - before <= 4,
        "only the open records were loaded"
    );
}

#[tokio::test]
async fn after_an_owners_tasks_are_collected_the_registry_holds_nothing_of_them() {
    let m = BackgroundTaskManager::new();
    let fresh = m.stats();
    let mut parent: Option<String> = None;
    for i in 0..10_000 {
        let id = m
            .spawn_with_id(
                SpawnParams {
                    task_id: format!("t{i}"),
                    owner_thread_id: "o".into(),
                    task_type: format!("type-{}", i % 7),
                    description: "d".into(),
                    parent_task_id: parent.clone(),
                    metadata: json!({ "i": i }),
                },
                RunCancellationToken::new(),
                |_| async { TaskResult::Success(Value::Null) },
            )
            .await
            .expect("spawn");
        m.wait("o", &id).await.expect("known");
        if i % 10 == 0 {
            parent = Some(id);
        }
    }
    assert_eq!(m.stats().tasks, 10_000);
    assert_eq!(m.gc_terminal("o").await, 10_000);
    let after = m.stats();
    assert_eq!(
        (
            after.tasks,
            after.owners,
            after.parent_links,
            after.retention_queue
        ),
        (
            fresh.tasks,
            fresh.owners,
            fresh.parent_links,
            fresh.retention_queue
        )
    );
    assert!(
        after.id_table_capacity <= 128,
        "the id table shrank back: {after:?}"
    );
}

#[tokio::test]
async fn a_store_under_a_steady_stream_of_tasks_stays_bounded() {
    let store = task_core::store::open("memory://?max_finished=100")
        .await
        .expect("open");
    let m = BackgroundTaskManager::builder()
        .task_store(Arc::new(TaskStore::new(Arc::clone(&store))))
        .build();
    for round in 0..20 {
        history(&m, &format!("owner-{round}"), 100).await;
        let stored = store
            .list_all_threads(ThreadQuery::by_kind("task"))
            .await
            .expect("list")
            .len();
        assert!(stored <= 100, "round {round}: {stored} records kept");
    }
}
