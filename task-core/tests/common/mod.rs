//! The manager's persistence behaviour against any thread store, stamped out
//! per backend by `persistence_suite!` (memory, FlakyStore, Redis).

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;

use serde_json::{Value, json};
use task_core::thread_store::ThreadQuery;
use task_core::thread_store::{Thread, ThreadReaderExt, ThreadStore};
use task_core::{
    BackgroundTaskManager, NewTaskSpec, RunCancellationToken, SpawnParams, TaskError,
    TaskEventKind, TaskResult, TaskStatus, TaskStore, Transition, new_task_id,
};

/// What a suite factory may return: a store, or `None` when the backend is
/// not available here (the factory says so loudly).
pub trait IntoStore {
    fn into_store(self) -> Option<Arc<dyn ThreadStore>>;
}

impl IntoStore for Arc<dyn ThreadStore> {
    fn into_store(self) -> Option<Arc<dyn ThreadStore>> {
        Some(self)
    }
}

impl IntoStore for Option<Arc<dyn ThreadStore>> {
    fn into_store(self) -> Option<Arc<dyn ThreadStore>> {
        self
    }
}

/// A unique owner, so cases can share one store (and one Redis server).
pub fn owner() -> String {
    format!("owner-{}", new_task_id())
}

pub fn manager(store: Arc<dyn ThreadStore>) -> (BackgroundTaskManager, Arc<TaskStore>) {
    let tasks = Arc::new(TaskStore::new(store));
    let manager = BackgroundTaskManager::builder()
        .task_store(tasks.clone())
        .build();
    (manager, tasks)
}

fn params(id: &str, owner: &str) -> SpawnParams {
    SpawnParams {
        task_id: id.to_owned(),
        owner_thread_id: owner.to_owned(),
        task_type: "shell".to_owned(),
        description: "d".to_owned(),
        parent_task_id: None,
        metadata: json!({ "source": "suite" }),
    }
}

/// Message bodies' `transition` (or `output`) names in log order.
async fn log_names(store: &Arc<dyn ThreadStore>, task_id: &str) -> Vec<String> {
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

/// Every outcome of every task reaches the store, as the manager reports it.
pub async fn terminal_states_are_durable_after_flush(store: Arc<dyn ThreadStore>) {
    let (m, tasks) = manager(store);
    let owner = owner();
    let mut ids = Vec::new();
    for i in 0..40 {
        let id = m
            .spawn(&owner, "t", "d", move |_| async move {
                match i % 4 {
                    0 => TaskResult::Success(json!({ "i": i })),
                    1 => TaskResult::Failed(format!("failure {i}")),
                    2 => TaskResult::Cancelled,
                    _ => panic!("panic {i}"),
                }
            })
            .await
            .expect("spawn");
        ids.push(id);
    }
    for id in &ids {
        m.wait(&owner, id).await.expect("known");
    }
    m.flush().await;
    for id in &ids {
        let summary = m.get(&owner, id).await.expect("known");
        assert_eq!(summary.persistence_error, None, "{id}");
        let record = tasks.load_task(id).await.expect("load").expect("record");
        assert_eq!(record.status, summary.status, "{id}");
        assert_eq!(record.result, summary.result, "{id}");
        assert_eq!(record.error, summary.error, "{id}");
        assert_eq!(record.owner_thread_id, owner);
        assert_eq!(record.attempt, 1);
    }
    let listed = tasks.list_task_ids(&owner).await.expect("list");
    assert_eq!(listed.len(), ids.len());
}

/// A running task's record exists before it finishes, and ends terminal.
pub async fn a_running_task_is_durable_before_it_finishes(store: Arc<dyn ThreadStore>) {
    let (m, tasks) = manager(store.clone());
    let owner = owner();
    let id = m
        .spawn(&owner, "agent_run", "d", |ctx| async move {
            ctx.cancelled().await;
            TaskResult::Cancelled
        })
        .await
        .expect("spawn");
    m.flush().await;
    let record = tasks.load_task(&id).await.expect("load").expect("record");
    assert_eq!((record.status, record.attempt), (TaskStatus::Running, 1));
    assert!(record.supports_resume);
    m.cancel(&owner, &id).await.expect("cancel");
    m.wait(&owner, &id).await.expect("known");
    m.flush().await;
    let record = tasks.load_task(&id).await.expect("load").expect("record");
    assert_eq!(record.status, TaskStatus::Cancelled);
    assert_eq!(log_names(&store, &id).await, ["started", "cancelled"]);
}

/// A record created ahead with `TaskStore::create_task` is adopted, not duplicated.
pub async fn a_caller_created_record_is_adopted(store: Arc<dyn ThreadStore>) {
    let (m, tasks) = manager(store.clone());
    let owner = owner();
    let id = new_task_id();
    tasks
        .create_task(NewTaskSpec {
            task_id: id.clone(),
            owner_thread_id: owner.clone(),
            task_type: "shell".into(),
            description: "created ahead".into(),
            parent_task_id: None,
            supports_resume: false,
            metadata: Value::Null,
        })
        .await
        .expect("create ahead");
    m.spawn_with_id(
        params(&id, &owner),
        RunCancellationToken::new(),
        |_| async { TaskResult::Success(json!("adopted")) },
    )
    .await
    .expect("spawn");
    m.wait(&owner, &id).await.expect("known");
    m.flush().await;
    let record = tasks.load_task(&id).await.expect("load").expect("record");
    assert_eq!((record.status, record.attempt), (TaskStatus::Completed, 1));
    assert_eq!(
        record.description, "created ahead",
        "the caller's record is kept"
    );
    assert_eq!(log_names(&store, &id).await, ["started", "completed"]);
}

/// Spawning a finished id again is the next attempt, durably too.
pub async fn a_respawned_id_is_the_next_attempt(store: Arc<dyn ThreadStore>) {
    let (m, tasks) = manager(store.clone());
    let owner = owner();
    let id = new_task_id();
    for expected in [TaskStatus::Failed, TaskStatus::Completed] {
        m.spawn_with_id(
            params(&id, &owner),
            RunCancellationToken::new(),
            move |_| async move {
                if expected == TaskStatus::Failed {
                    TaskResult::Failed("first try".into())
                } else {
                    TaskResult::Success(json!("second try"))
                }
            },
        )
        .await
        .expect("spawn");
        m.wait(&owner, &id).await.expect("known");
        m.flush().await;
    }
    let record = tasks.load_task(&id).await.expect("load").expect("record");
    assert_eq!((record.status, record.attempt), (TaskStatus::Completed, 2));
    assert_eq!(record.error, None);
    assert_eq!(m.get(&owner, &id).await.expect("known").attempt, 2);
    assert_eq!(
        log_names(&store, &id).await,
        ["started", "failed", "started", "completed"]
    );
}

/// A terminal outcome written elsewhere first is never overwritten; the
/// refused write shows as a permanent persistence error.
pub async fn a_terminal_outcome_written_elsewhere_is_not_overwritten(store: Arc<dyn ThreadStore>) {
    let (m, tasks) = manager(store);
    let owner = owner();
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let id = m
        .spawn(&owner, "t", "d", |_| async move {
            let _ = released.await;
            TaskResult::Success(json!("late"))
        })
        .await
        .expect("spawn");
    m.flush().await;
    tasks
        .transition(
            &id,
            Transition::Finish {
                attempt: 1,
                holder: None,
                status: TaskStatus::Failed,
                result: None,
                error: Some("recovered elsewhere".into()),
                at_ms: 1,
            },
        )
        .await
        .expect("written elsewhere");
    release.send(()).expect("task waits");
    m.wait(&owner, &id).await.expect("known");
    m.flush().await;
    let record = tasks.load_task(&id).await.expect("load").expect("record");
    assert_eq!(record.status, TaskStatus::Failed);
    assert_eq!(record.error.as_deref(), Some("recovered elsewhere"));
    let summary = m.get(&owner, &id).await.expect("known");
    let error = summary.persistence_error.expect("the refusal shows");
    assert!(error.contains("write-once"), "{error}");
}

/// Output the task emits is logged in order with its transitions.
pub async fn output_is_logged_in_order_with_transitions(store: Arc<dyn ThreadStore>) {
    let (m, _tasks) = manager(store.clone());
    let owner = owner();
    let id = m
        .spawn(&owner, "t", "d", |ctx| async move {
            for i in 1..=3 {
                ctx.emit(json!(i));
                tokio::task::yield_now().await;
            }
            TaskResult::Success(json!("done"))
        })
        .await
        .expect("spawn");
    m.wait(&owner, &id).await.expect("known");
    m.flush().await;
    assert_eq!(
        log_names(&store, &id).await,
        ["started", "output:1", "output:2", "output:3", "completed"]
    );
}

/// A corrupt record fails only its own load; the owner's listing still works.
pub async fn a_corrupt_record_fails_only_its_own_load(store: Arc<dyn ThreadStore>) {
    let (m, tasks) = manager(store.clone());
    let owner = owner();
    let good = m
        .spawn(&owner, "t", "d", |_| async {
            TaskResult::Success(json!(1))
        })
        .await
        .expect("spawn");
    m.wait(&owner, &good).await.expect("known");
    m.flush().await;
    let bad = new_task_id();
    store
        .save(
            Thread::new(TaskStore::thread_id(&bad), "task")
                .with_parent(owner.clone())
                .with_state(json!({ "status": "exploded", "attempt": "many" })),
        )
        .await
        .expect("save garbage");
    let err = tasks.load_task(&bad).await.expect_err("corrupt");
    assert!(matches!(err, TaskError::Corrupt { .. }), "{err:?}");
    let listed = tasks.list_tasks(&owner).await.expect("listing works");
    assert_eq!(listed.len(), 2);
    assert_eq!(listed.iter().filter(|r| r.is_ok()).count(), 1);
    assert!(tasks.load_task(&good).await.expect("good loads").is_some());
}

/// A durable write of an older attempt is rejected by the state machine.
pub async fn a_write_of_an_older_attempt_is_fenced_off(store: Arc<dyn ThreadStore>) {
    let tasks = TaskStore::new(store);
    let id = new_task_id();
    tasks
        .create_task(NewTaskSpec {
            task_id: id.clone(),
            owner_thread_id: owner(),
            task_type: "agent_run".into(),
            supports_resume: true,
            ..NewTaskSpec::default()
        })
        .await
        .expect("create");
    let finish = |attempt, status| Transition::Finish {
        attempt,
        holder: None,
        status,
        result: None,
        error: None,
        at_ms: 2,
    };
    tasks
        .transition(&id, finish(1, TaskStatus::Stopped))
        .await
        .expect("stop attempt 1");
    tasks
        .transition(
            &id,
            Transition::Resume {
                from_attempt: 1,
                at_ms: 3,
                lease: None,
                run_id: Some("resume-1".into()),
            },
        )
        .await
        .expect("resume as attempt 2");
    let err = tasks
        .transition(&id, finish(1, TaskStatus::Completed))
        .await
        .expect_err("attempt 1 is over");
    assert!(matches!(err, TaskError::Rejected { .. }), "{err:?}");
    let record = tasks.load_task(&id).await.expect("load").expect("record");
    assert_eq!((record.status, record.attempt), (TaskStatus::Running, 2));
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

/// Stamps out one `#[tokio::test]` per persistence behaviour for a store
/// factory expression (evaluated once per test).
#[macro_export]
macro_rules! persistence_suite {
    ($factory:expr) => {
        mod persistence {
            #[allow(unused_imports)]
            use super::*;

            macro_rules! case {
                ($name:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        let Some(store) = $crate::common::IntoStore::into_store($factory.await)
                        else {
                            return; // skipped loudly by the factory
                        };
                        $crate::common::$name(store).await;
                    }
                };
            }

            case!(terminal_states_are_durable_after_flush);
            case!(a_running_task_is_durable_before_it_finishes);
            case!(a_caller_created_record_is_adopted);
            case!(a_respawned_id_is_the_next_attempt);
            case!(a_terminal_outcome_written_elsewhere_is_not_overwritten);
            case!(output_is_logged_in_order_with_transitions);
            case!(a_corrupt_record_fails_only_its_own_load);
            case!(a_write_of_an_older_attempt_is_fenced_off);
        }
    };
}
