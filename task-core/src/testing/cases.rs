//! The cases of the persistence suite: each runs a `BackgroundTaskManager`
//! (and its `TaskStore`) over the store under test and checks what reaches
//! the store, through task-core's public API only. A case panics, with a
//! message saying what went wrong, when the store breaks a promise.

use std::sync::Arc;

use serde_json::{Value, json};
use task_store::{Thread, ThreadReaderExt, ThreadStore};

use crate::{
    BackgroundTaskManager, NewTaskSpec, RunCancellationToken, SpawnParams, TaskError, TaskResult,
    TaskStatus, TaskStore, Transition, new_task_id,
};

/// A fresh owner, so cases can share one store (and one server).
fn owner() -> String {
    format!("owner-{}", new_task_id())
}

/// A manager with a task store over `store`.
fn manager(store: Arc<dyn ThreadStore>) -> (BackgroundTaskManager, Arc<TaskStore>) {
    let tasks = Arc::new(TaskStore::new(store));
    let manager = BackgroundTaskManager::builder()
        .task_store(Arc::clone(&tasks))
        .build();
    (manager, tasks)
}

/// A manager of the named instance over `store`.
fn instance(store: &Arc<dyn ThreadStore>, instance_id: &str) -> BackgroundTaskManager {
    BackgroundTaskManager::builder()
        .task_store(Arc::new(TaskStore::new(Arc::clone(store))))
        .instance_id(instance_id)
        .build()
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

/// The durable log of a task: each message's transition name (or
/// `output:<value>`), in order.
async fn log_names(store: &Arc<dyn ThreadStore>, task_id: &str) -> Vec<String> {
    store
        .load_all_messages(&TaskStore::thread_id(task_id))
        .await
        .unwrap_or_else(|e| panic!("the log of {task_id} cannot be read: {e}"))
        .into_iter()
        .map(|m| match m.body["type"].as_str() {
            Some("output") => format!("output:{}", m.body["value"]),
            _ => m.body["transition"].as_str().unwrap_or("?").to_owned(),
        })
        .collect()
}

/// The durable record of a task, which must exist.
async fn record(tasks: &TaskStore, task_id: &str) -> crate::TaskRecord {
    tasks
        .load_task(task_id)
        .await
        .unwrap_or_else(|e| panic!("the record of {task_id} cannot be loaded: {e}"))
        .unwrap_or_else(|| panic!("the record of {task_id} was lost"))
}

/// The finish of `attempt` with this outcome, reported by no lease holder.
fn finish(
    attempt: u32,
    status: TaskStatus,
    result: Option<Value>,
    error: Option<String>,
) -> Transition {
    Transition::Finish {
        attempt,
        holder: None,
        status,
        result,
        error,
        at_ms: 2,
    }
}

/// Spawns a task that runs until it is cancelled.
async fn spawn_waiting(m: &BackgroundTaskManager, owner: &str, task_type: &str) -> String {
    m.spawn(owner, task_type, "runs until cancelled", |ctx| async move {
        ctx.cancelled().await;
        TaskResult::Cancelled
    })
    .await
    .expect("spawn")
}

/// Every outcome of 40 tasks (completed, failed, cancelled, panicked)
/// reaches the store after `flush`, as the manager reports it, listed under
/// the owner.
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
        m.wait(&owner, id).await.expect("a known task");
    }
    m.flush().await;
    for id in &ids {
        let summary = m.get(&owner, id).await.expect("a known task");
        assert_eq!(summary.persistence_error, None, "{id}");
        let record = record(&tasks, id).await;
        assert_eq!(record.status, summary.status, "{id}");
        assert_eq!(record.result, summary.result, "{id}");
        assert_eq!(record.error, summary.error, "{id}");
        assert_eq!(record.owner_thread_id, owner);
        assert_eq!(record.attempt, 1);
    }
    let listed = tasks.list_task_ids(&owner).await.expect("list");
    assert_eq!(listed.len(), ids.len(), "every task listed under its owner");
}

/// A running task's record is durable before it finishes, and ends
/// terminal with a log of its two transitions.
pub async fn a_running_task_is_durable_before_it_finishes(store: Arc<dyn ThreadStore>) {
    let (m, tasks) = manager(Arc::clone(&store));
    let owner = owner();
    let id = spawn_waiting(&m, &owner, "agent_run").await;
    m.flush().await;
    let running = record(&tasks, &id).await;
    assert_eq!((running.status, running.attempt), (TaskStatus::Running, 1));
    assert!(running.supports_resume);
    m.cancel(&owner, &id).await.expect("cancel");
    m.wait(&owner, &id).await.expect("a known task");
    m.flush().await;
    assert_eq!(record(&tasks, &id).await.status, TaskStatus::Cancelled);
    assert_eq!(log_names(&store, &id).await, ["started", "cancelled"]);
}

/// A record created ahead with `TaskStore::create_task` is adopted by the
/// spawn of its id, not duplicated nor replaced.
pub async fn a_caller_created_record_is_adopted(store: Arc<dyn ThreadStore>) {
    let (m, tasks) = manager(Arc::clone(&store));
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
    m.wait(&owner, &id).await.expect("a known task");
    m.flush().await;
    let adopted = record(&tasks, &id).await;
    assert_eq!(
        (adopted.status, adopted.attempt),
        (TaskStatus::Completed, 1)
    );
    assert_eq!(
        adopted.description, "created ahead",
        "the caller's record is kept"
    );
    assert_eq!(log_names(&store, &id).await, ["started", "completed"]);
}

/// Spawning a finished id again is the next attempt, durably too, with both
/// attempts in the log in order.
pub async fn a_respawned_id_is_the_next_attempt(store: Arc<dyn ThreadStore>) {
    let (m, tasks) = manager(Arc::clone(&store));
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
        m.wait(&owner, &id).await.expect("a known task");
        m.flush().await;
    }
    let second = record(&tasks, &id).await;
    assert_eq!((second.status, second.attempt), (TaskStatus::Completed, 2));
    assert_eq!(second.error, None);
    assert_eq!(m.get(&owner, &id).await.expect("a known task").attempt, 2);
    assert_eq!(
        log_names(&store, &id).await,
        ["started", "failed", "started", "completed"]
    );
}

/// A terminal outcome written elsewhere first is never overwritten: the
/// manager's later finish is refused (write-once) and shows as a permanent
/// persistence error.
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
            finish(
                1,
                TaskStatus::Failed,
                None,
                Some("recovered elsewhere".into()),
            ),
        )
        .await
        .expect("written elsewhere");
    release.send(()).expect("the task waits");
    m.wait(&owner, &id).await.expect("a known task");
    m.flush().await;
    let kept = record(&tasks, &id).await;
    assert_eq!(kept.status, TaskStatus::Failed);
    assert_eq!(kept.error.as_deref(), Some("recovered elsewhere"));
    let summary = m.get(&owner, &id).await.expect("a known task");
    assert!(
        summary.persistence_error.is_some(),
        "the refused write shows on the summary"
    );
}

/// Output the task emits is logged in order with its transitions.
pub async fn output_is_logged_in_order_with_transitions(store: Arc<dyn ThreadStore>) {
    let (m, _tasks) = manager(Arc::clone(&store));
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
    m.wait(&owner, &id).await.expect("a known task");
    m.flush().await;
    assert_eq!(
        log_names(&store, &id).await,
        ["started", "output:1", "output:2", "output:3", "completed"]
    );
}

/// A corrupt record fails only its own load; the owner's listing still
/// works and holds the good record.
pub async fn a_corrupt_record_fails_only_its_own_load(store: Arc<dyn ThreadStore>) {
    let (m, tasks) = manager(Arc::clone(&store));
    let owner = owner();
    let good = m
        .spawn(&owner, "t", "d", |_| async {
            TaskResult::Success(json!(1))
        })
        .await
        .expect("spawn");
    m.wait(&owner, &good).await.expect("a known task");
    m.flush().await;
    let bad = new_task_id();
    store
        .save(
            Thread::new(TaskStore::thread_id(&bad), crate::TASK_KIND)
                .with_parent(owner.clone())
                .with_state(json!({ "status": "exploded", "attempt": "many" })),
        )
        .await
        .expect("save garbage");
    let err = tasks.load_task(&bad).await.expect_err("a corrupt record");
    assert!(matches!(err, TaskError::Corrupt { .. }), "{err:?}");
    let listed = tasks.list_tasks(&owner).await.expect("the listing works");
    assert_eq!(listed.len(), 2);
    assert_eq!(listed.iter().filter(|r| r.is_ok()).count(), 1);
    assert!(tasks.load_task(&good).await.expect("loads").is_some());
}

/// A durable write of an older attempt is refused by the state machine
/// (fencing), and the record stays as the newer attempt left it.
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
    tasks
        .transition(&id, finish(1, TaskStatus::Stopped, None, None))
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
        .transition(&id, finish(1, TaskStatus::Completed, None, None))
        .await
        .expect_err("attempt 1 is over");
    assert!(matches!(err, TaskError::Rejected { .. }), "{err:?}");
    let fenced = record(&tasks, &id).await;
    assert_eq!((fenced.status, fenced.attempt), (TaskStatus::Running, 2));
}

/// A process that died with tasks running (its manager dropped without
/// shutdown) leaves them `running` in the store. Back under the same
/// instance id, `recover()` reads them from the store and turns the
/// resumable ones `stopped` and the others `failed`, durably; a second
/// recovery finds nothing to do.
pub async fn a_dead_instances_tasks_are_recovered_through_the_store(store: Arc<dyn ThreadStore>) {
    let instance_id = format!("suite-{}", new_task_id());
    let owner = owner();
    let tasks = TaskStore::new(Arc::clone(&store));
    let first = instance(&store, &instance_id);
    let mut resumable = Vec::new();
    let mut plain = Vec::new();
    for _ in 0..3 {
        resumable.push(spawn_waiting(&first, &owner, "agent_run").await);
        plain.push(spawn_waiting(&first, &owner, "shell").await);
    }
    first.flush().await;
    drop(first); // as if the process died: nothing more is written
    for id in resumable.iter().chain(&plain) {
        assert_eq!(record(&tasks, id).await.status, TaskStatus::Running, "{id}");
    }

    let second = instance(&store, &instance_id);
    let mut report = second.recover().await.expect("recover");
    report.stopped.sort();
    report.failed.sort();
    resumable.sort();
    plain.sort();
    assert_eq!(report.stopped, resumable, "the resumable tasks stop");
    assert_eq!(report.failed, plain, "the others fail");
    for id in &resumable {
        let stopped = record(&tasks, id).await;
        assert_eq!((stopped.status, stopped.attempt), (TaskStatus::Stopped, 1));
    }
    for id in &plain {
        let failed = record(&tasks, id).await;
        assert_eq!((failed.status, failed.attempt), (TaskStatus::Failed, 1));
        assert!(failed.error.is_some(), "{id}: a failure says why");
    }
    let again = second.recover().await.expect("recover again");
    assert!(
        again.stopped.is_empty() && again.failed.is_empty(),
        "a second recovery changes nothing: {again:?}"
    );
}

/// A task recovered as `stopped` resumes, through the store, as attempt 2
/// and completes; its log holds every transition once, in order.
pub async fn a_recovered_task_resumes_as_the_next_attempt(store: Arc<dyn ThreadStore>) {
    let instance_id = format!("suite-{}", new_task_id());
    let owner = owner();
    let tasks = TaskStore::new(Arc::clone(&store));
    let first = instance(&store, &instance_id);
    let id = spawn_waiting(&first, &owner, "agent_run").await;
    first.flush().await;
    drop(first);
    let second = instance(&store, &instance_id);
    let report = second.recover().await.expect("recover");
    assert_eq!(report.stopped, std::slice::from_ref(&id));
    second
        .resume(&owner, &id, |_| async {
            TaskResult::Success(json!("resumed"))
        })
        .await
        .expect("resume");
    let summary = second.wait(&owner, &id).await.expect("a known task");
    assert_eq!(
        (summary.status, summary.attempt),
        (TaskStatus::Completed, 2)
    );
    second.flush().await;
    let resumed = record(&tasks, &id).await;
    assert_eq!(
        (resumed.status, resumed.attempt),
        (TaskStatus::Completed, 2)
    );
    assert_eq!(resumed.result, Some(json!("resumed")));
    assert_eq!(
        log_names(&store, &id).await,
        ["started", "stopped", "resumed", "completed"]
    );
}

/// Sixteen writers finishing the same attempt at once, each through its own
/// `TaskStore` (as several processes would), each with its own outcome:
/// one outcome wins and every writer is told the same one (a refusal, or
/// the winner's record), and the record and its log hold it once. A store
/// whose version check races with its write lets two outcomes land. The
/// race is run on several tasks, so that a store whose window is narrow is
/// still caught when the scheduler happens to serialise one round.
pub async fn concurrent_finishes_of_one_attempt_agree_on_one_winner(store: Arc<dyn ThreadStore>) {
    const ROUNDS: usize = 4;
    for _ in 0..ROUNDS {
        one_task_finished_by_many_writers(&store).await;
    }
}

/// One round of [`concurrent_finishes_of_one_attempt_agree_on_one_winner`].
async fn one_task_finished_by_many_writers(store: &Arc<dyn ThreadStore>) {
    const WRITERS: usize = 16;
    let tasks = TaskStore::new(Arc::clone(store));
    let id = new_task_id();
    tasks
        .create_task(NewTaskSpec {
            task_id: id.clone(),
            owner_thread_id: owner(),
            task_type: "shell".into(),
            ..NewTaskSpec::default()
        })
        .await
        .expect("create");
    let barrier = Arc::new(tokio::sync::Barrier::new(WRITERS));
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let (tasks, id, barrier) = (
                TaskStore::new(Arc::clone(store)),
                id.clone(),
                Arc::clone(&barrier),
            );
            tokio::spawn(async move {
                barrier.wait().await;
                let outcome = json!({ "writer": writer });
                tasks
                    .transition(&id, finish(1, TaskStatus::Completed, Some(outcome), None))
                    .await
            })
        })
        .collect();
    let mut outcomes = std::collections::BTreeSet::new();
    for (writer, joined) in futures::future::join_all(writers)
        .await
        .into_iter()
        .enumerate()
    {
        match joined.expect("a writer panicked") {
            Ok(answer) => {
                outcomes.insert(answer.record.result.map(|r| r.to_string()));
            }
            Err(TaskError::Rejected { .. }) => {}
            Err(other) => panic!("writer {writer}: expected an answer or a refusal, got {other:?}"),
        }
    }
    assert_eq!(
        outcomes.len(),
        1,
        "every writer that got an answer was told the same outcome: {outcomes:?}"
    );
    let finished = record(&tasks, &id).await;
    assert_eq!(finished.status, TaskStatus::Completed);
    assert_eq!(
        outcomes.first().cloned().flatten(),
        finished.result.map(|r| r.to_string()),
        "the record holds the outcome the writers were told"
    );
    let log = log_names(store, &id).await;
    assert_eq!(
        log.iter().filter(|name| *name == "completed").count(),
        1,
        "one terminal transition in the log: {log:?}"
    );
}
