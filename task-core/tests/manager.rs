//! Behaviour of the manager without a store: lifecycle, owner scoping,
//! cancellation, supervision, identity, waiting, listing and retention.

use std::time::Duration;

use serde_json::json;
use task_core::{
    BackgroundTaskManager, RetentionPolicy, RunCancellationToken, SpawnParams, TaskError,
    TaskEventKind, TaskResult, TaskStatus,
};
use tokio::sync::oneshot;

fn params(id: &str, owner: &str, parent: Option<&str>) -> SpawnParams {
    SpawnParams {
        task_id: id.to_owned(),
        owner_thread_id: owner.to_owned(),
        task_type: "shell".to_owned(),
        description: format!("task {id}"),
        parent_task_id: parent.map(str::to_owned),
        metadata: json!({ "k": id }),
    }
}

/// Spawns a task that runs until it is cancelled, then returns `Cancelled`.
async fn spawn_until_cancelled(
    m: &BackgroundTaskManager,
    id: &str,
    owner: &str,
    parent: Option<&str>,
) {
    m.spawn_with_id(
        params(id, owner, parent),
        RunCancellationToken::new(),
        |ctx| async move {
            ctx.cancelled().await;
            TaskResult::Cancelled
        },
    )
    .await
    .expect("spawn");
}

#[tokio::test]
async fn a_task_completes_with_its_result_and_timing() {
    let m = BackgroundTaskManager::new();
    let id = m
        .spawn("owner", "fetch", "get it", |_| async {
            TaskResult::Success(json!({ "answer": 42 }))
        })
        .await
        .expect("spawn");
    let s = m.wait("owner", &id).await.expect("known");
    assert_eq!(s.status, TaskStatus::Completed);
    assert_eq!(s.result, Some(json!({ "answer": 42 })));
    assert_eq!(s.error, None);
    assert_eq!(s.task_type, "fetch");
    assert_eq!(s.description, "get it");
    assert_eq!(s.attempt, 1);
    assert!(!s.supports_resume);
    let completed = s.completed_at_ms.expect("completion time");
    assert!(completed >= s.created_at_ms);
    assert_eq!(m.get("owner", &id).await, Some(s));
}

#[tokio::test]
async fn a_failed_result_ends_failed_with_its_error() {
    let m = BackgroundTaskManager::new();
    let id = m
        .spawn("o", "t", "d", |_| async {
            TaskResult::Failed("boom".into())
        })
        .await
        .expect("spawn");
    let s = m.wait("o", &id).await.expect("known");
    assert_eq!(s.status, TaskStatus::Failed);
    assert_eq!(s.error.as_deref(), Some("boom"));
}

#[tokio::test]
async fn a_stopped_result_ends_stopped_and_agent_runs_support_resume() {
    let m = BackgroundTaskManager::new();
    let id = m
        .spawn("o", "agent_run", "d", |_| async { TaskResult::Stopped })
        .await
        .expect("spawn");
    let s = m.wait("o", &id).await.expect("known");
    assert_eq!(s.status, TaskStatus::Stopped);
    assert!(s.supports_resume);
    assert!(!m.has_running_tasks("o").await);
}

#[tokio::test]
async fn a_panicking_task_ends_failed_with_the_panic_message() {
    let m = BackgroundTaskManager::new();
    let id = m
        .spawn("o", "t", "d", |_| async {
            panic!("the disk is on fire");
        })
        .await
        .expect("spawn");
    let s = m.wait("o", &id).await.expect("known");
    assert_eq!(s.status, TaskStatus::Failed);
    let error = s.error.expect("error");
    assert!(error.contains("the disk is on fire"), "{error}");
    assert!(!m.has_running_tasks("o").await);
}

#[tokio::test]
async fn a_closure_that_panics_before_returning_a_future_ends_failed() {
    let m = BackgroundTaskManager::new();
    let id = m
        .spawn("o", "t", "d", |_| -> std::future::Ready<TaskResult> {
            panic!("no future for you")
        })
        .await
        .expect("spawn");
    let s = m.wait("o", &id).await.expect("known");
    assert_eq!(s.status, TaskStatus::Failed);
    assert!(s.error.expect("error").contains("no future for you"));
}

#[tokio::test]
async fn cancel_makes_the_outcome_cancelled_whatever_the_task_returns() {
    let m = BackgroundTaskManager::new();
    let id = m
        .spawn("o", "t", "d", |ctx| async move {
            ctx.cancelled().await;
            TaskResult::Success(json!("finished anyway"))
        })
        .await
        .expect("spawn");
    m.cancel("o", &id).await.expect("cancel");
    let s = m.wait("o", &id).await.expect("known");
    assert_eq!(s.status, TaskStatus::Cancelled);
    assert_eq!(s.result, None);
}

#[tokio::test(start_paused = true)]
async fn a_task_that_ignores_cancellation_is_dropped_after_the_grace_period() {
    let m = BackgroundTaskManager::builder()
        .cancel_grace(Duration::from_secs(2))
        .build();
    let (dropped_tx, dropped_rx) = oneshot::channel::<()>();
    let id = m
        .spawn("o", "t", "stubborn", |_ctx| async move {
            let _tell_when_dropped = dropped_tx;
            std::future::pending::<TaskResult>().await
        })
        .await
        .expect("spawn");
    m.cancel("o", &id).await.expect("cancel");
    let started = tokio::time::Instant::now();
    let s = m.wait("o", &id).await.expect("known");
    assert_eq!(s.status, TaskStatus::Cancelled);
    assert!(s.error.expect("error says why").contains("grace"));
    assert!(started.elapsed() >= Duration::from_secs(2));
    // The stubborn future was dropped, not leaked.
    assert!(dropped_rx.await.is_err());
}

#[tokio::test]
async fn cancelling_the_callers_token_is_a_cancellation_request() {
    let m = BackgroundTaskManager::new();
    let token = RunCancellationToken::new();
    m.spawn_with_id(params("x", "o", None), token.clone(), |ctx| async move {
        ctx.cancelled().await;
        TaskResult::Success(json!(1))
    })
    .await
    .expect("spawn");
    token.cancel();
    let s = m.wait("o", "x").await.expect("known");
    assert_eq!(s.status, TaskStatus::Cancelled);
}

#[tokio::test(start_paused = true)]
async fn a_stubborn_task_whose_callers_token_is_cancelled_is_dropped_after_the_grace_period() {
    let m = BackgroundTaskManager::builder()
        .cancel_grace(Duration::from_secs(3))
        .build();
    let token = RunCancellationToken::new();
    let (dropped_tx, dropped_rx) = oneshot::channel::<()>();
    m.spawn_with_id(params("x", "o", None), token.clone(), |_ctx| async move {
        let _tell_when_dropped = dropped_tx;
        std::future::pending::<TaskResult>().await
    })
    .await
    .expect("spawn");
    let started = tokio::time::Instant::now();
    token.cancel();
    let s = tokio::time::timeout(Duration::from_secs(60), m.wait("o", "x"))
        .await
        .expect("dropped after the grace, not left running")
        .expect("known");
    assert_eq!(s.status, TaskStatus::Cancelled);
    assert!(s.error.expect("error says why").contains("grace"));
    assert!(started.elapsed() >= Duration::from_secs(3));
    assert!(dropped_rx.await.is_err());
}

#[tokio::test]
async fn a_task_that_looks_at_its_context_only_after_a_cancel_sees_it() {
    // The token is made on first use: a cancel that comes before must still
    // reach the task, through every way of asking.
    let m = BackgroundTaskManager::new();
    let (go_tx, go_rx) = oneshot::channel::<()>();
    let id = m
        .spawn("o", "t", "late looker", |ctx| async move {
            let _ = go_rx.await;
            let token = ctx.token().clone();
            assert!(ctx.is_cancelled());
            ctx.cancelled().await;
            assert!(token.is_cancelled());
            TaskResult::Success(json!("finished anyway"))
        })
        .await
        .expect("spawn");
    m.cancel("o", &id).await.expect("cancel");
    go_tx.send(()).expect("the task waits");
    let s = m.wait("o", &id).await.expect("known");
    assert_eq!(s.status, TaskStatus::Cancelled);
    assert_eq!(s.result, None);
}

#[tokio::test]
async fn a_task_that_cancels_its_own_token_ends_cancelled() {
    let m = BackgroundTaskManager::new();
    let id = m
        .spawn("o", "t", "gives up", |ctx| async move {
            ctx.token().cancel();
            TaskResult::Success(json!(1))
        })
        .await
        .expect("spawn");
    let s = m.wait("o", &id).await.expect("known");
    assert_eq!(s.status, TaskStatus::Cancelled);
}

#[tokio::test]
async fn cancel_of_a_finished_task_says_it_is_not_running() {
    let m = BackgroundTaskManager::new();
    let id = m
        .spawn("o", "t", "d", |_| async {
            TaskResult::Success(json!(null))
        })
        .await
        .expect("spawn");
    m.wait("o", &id).await.expect("known");
    let err = m.cancel("o", &id).await.expect_err("finished");
    assert_eq!(
        err.to_string(),
        format!("Task '{id}' is not running (current status: completed)")
    );
}

#[tokio::test]
async fn another_owners_task_looks_exactly_like_an_unknown_one() {
    let m = BackgroundTaskManager::new();
    spawn_until_cancelled(&m, "secret", "alice", None).await;
    let foreign = m.cancel("bob", "secret").await.expect_err("not bob's");
    let unknown = m.cancel("bob", "nope").await.expect_err("unknown");
    assert_eq!(foreign.to_string(), "Unknown task_id: secret");
    assert_eq!(unknown.to_string(), "Unknown task_id: nope");
    assert!(m.get("bob", "secret").await.is_none());
    assert!(m.wait("bob", "secret").await.is_none());
    assert!(!m.contains("bob", "secret").await);
    assert!(m.contains("alice", "secret").await);
    assert!(m.contains_any("secret").await);
    assert!(m.list("bob", None).await.is_empty());
    assert!(!m.has_running_tasks("bob").await);
    assert_eq!(
        m.cancel_tree("bob", "secret")
            .await
            .expect_err("not bob's")
            .to_string(),
        "Unknown task_id: secret"
    );
    assert_eq!(m.gc_terminal("bob").await, 0);
    m.cancel("alice", "secret").await.expect("alice may");
}

#[tokio::test]
async fn cancel_tree_cancels_every_running_descendant_of_the_owner_and_nothing_else() {
    let m = BackgroundTaskManager::new();
    spawn_until_cancelled(&m, "root", "o", None).await;
    spawn_until_cancelled(&m, "child-a", "o", Some("root")).await;
    spawn_until_cancelled(&m, "child-b", "o", Some("root")).await;
    spawn_until_cancelled(&m, "grandchild", "o", Some("child-a")).await;
    spawn_until_cancelled(&m, "sibling", "o", None).await;
    // Another owner's task naming the root as parent is not part of the tree.
    spawn_until_cancelled(&m, "foreign", "other", Some("root")).await;
    m.spawn_with_id(
        params("done-child", "o", Some("root")),
        RunCancellationToken::new(),
        |_| async { TaskResult::Success(json!(null)) },
    )
    .await
    .expect("spawn");
    m.wait("o", "done-child").await.expect("known");

    let cancelled = m.cancel_tree("o", "root").await.expect("cancel tree");
    let mut ids: Vec<_> = cancelled.iter().map(|s| s.task_id.as_str()).collect();
    assert_eq!(ids.first(), Some(&"root"));
    ids.sort_unstable();
    assert_eq!(ids, ["child-a", "child-b", "grandchild", "root"]);
    for id in ["root", "child-a", "child-b", "grandchild"] {
        assert_eq!(
            m.wait("o", id).await.expect("known").status,
            TaskStatus::Cancelled,
            "{id}"
        );
    }
    assert_eq!(
        m.get("o", "sibling").await.expect("known").status,
        TaskStatus::Running
    );
    assert_eq!(
        m.get("other", "foreign").await.expect("known").status,
        TaskStatus::Running
    );
    assert_eq!(
        m.get("o", "done-child").await.expect("known").status,
        TaskStatus::Completed
    );
    let err = m.cancel_tree("o", "root").await.expect_err("nothing runs");
    assert_eq!(
        err.to_string(),
        "Task 'root' is not running (current status: cancelled)"
    );
}

#[tokio::test]
async fn cancel_tree_is_safe_against_cycles_in_parent_links() {
    let m = BackgroundTaskManager::new();
    // a's parent is b and b's parent is a.
    spawn_until_cancelled(&m, "a", "o", Some("b")).await;
    spawn_until_cancelled(&m, "b", "o", Some("a")).await;
    spawn_until_cancelled(&m, "self", "o", Some("self")).await;
    let cancelled = m.cancel_tree("o", "a").await.expect("cancel tree");
    assert_eq!(cancelled.len(), 2);
    let cancelled = m.cancel_tree("o", "self").await.expect("cancel tree");
    assert_eq!(cancelled.len(), 1);
}

#[tokio::test]
async fn spawning_an_id_that_is_still_running_is_refused() {
    let m = BackgroundTaskManager::new();
    spawn_until_cancelled(&m, "dup", "o", None).await;
    let err = m
        .spawn_with_id(
            params("dup", "o", None),
            RunCancellationToken::new(),
            |_| async { TaskResult::Success(json!(null)) },
        )
        .await
        .expect_err("still running");
    assert!(matches!(err, TaskError::AlreadyRunning { .. }), "{err:?}");
    assert_eq!(m.list("o", None).await.len(), 1);
}

#[tokio::test]
async fn respawning_a_finished_id_starts_a_new_epoch_and_ignores_the_old_one() {
    let m = BackgroundTaskManager::builder()
        .cancel_grace(Duration::from_secs(3600))
        .build();
    let (release_old, old_released) = oneshot::channel::<()>();
    let (old_done_tx, old_done) = oneshot::channel::<()>();
    m.spawn_with_id(
        params("job", "o", None),
        RunCancellationToken::new(),
        |_| async move {
            // Ignores its cancellation; finishes only when released.
            let _ = old_released.await;
            let _ = old_done_tx.send(());
            TaskResult::Success(json!("old epoch"))
        },
    )
    .await
    .expect("spawn");
    assert!(
        m.update_status("job", TaskStatus::Failed, Some("superseded".into()))
            .await
    );

    let (release_new, new_released) = oneshot::channel::<()>();
    m.spawn_with_id(
        params("job", "o", None),
        RunCancellationToken::new(),
        |_| async move {
            let _ = new_released.await;
            TaskResult::Success(json!("new epoch"))
        },
    )
    .await
    .expect("a finished id may be spawned again");
    let s = m.get("o", "job").await.expect("known");
    assert_eq!((s.status, s.attempt), (TaskStatus::Running, 2));

    release_old.send(()).expect("old task waits");
    old_done.await.expect("old epoch returned");
    let s = m.get("o", "job").await.expect("known");
    assert_eq!(
        s.status,
        TaskStatus::Running,
        "the old epoch's result is ignored"
    );

    release_new.send(()).expect("new task waits");
    let s = m.wait("o", "job").await.expect("known");
    assert_eq!(s.status, TaskStatus::Completed);
    assert_eq!(s.result, Some(json!("new epoch")));
    assert_eq!(m.list("o", None).await.len(), 1);
}

#[tokio::test]
async fn events_report_every_transition_in_order() {
    let m = BackgroundTaskManager::new();
    let mut events = m.subscribe();
    let id = m
        .spawn("o", "t", "d", |ctx| async move {
            ctx.emit(json!({ "progress": 50 }));
            ctx.cancelled().await;
            TaskResult::Cancelled
        })
        .await
        .expect("spawn");
    let mut kinds = Vec::new();
    while kinds.len() < 4 {
        let event = events.recv().await.expect("event");
        assert_eq!(event.task_id, id);
        assert_eq!(event.owner_thread_id, "o");
        if matches!(event.kind, TaskEventKind::Output(_)) {
            m.cancel("o", &id).await.expect("cancel");
        }
        kinds.push(event.kind);
    }
    assert_eq!(
        kinds,
        [
            TaskEventKind::Spawned,
            TaskEventKind::Output(json!({ "progress": 50 })),
            TaskEventKind::CancelRequested,
            TaskEventKind::Finished {
                status: TaskStatus::Cancelled
            },
        ]
    );
}

#[tokio::test]
async fn list_is_in_creation_order_and_filters_by_status_and_type() {
    let m = BackgroundTaskManager::new();
    for i in 0..5 {
        let id = format!("t{i}");
        let mut p = params(&id, "o", None);
        p.task_type = if i % 2 == 0 { "even" } else { "odd" }.to_owned();
        if i < 2 {
            m.spawn_with_id(p, RunCancellationToken::new(), |_| async {
                TaskResult::Success(json!(null))
            })
            .await
            .expect("spawn");
            m.wait("o", &id).await.expect("known");
        } else {
            m.spawn_with_id(p, RunCancellationToken::new(), |ctx| async move {
                ctx.cancelled().await;
                TaskResult::Cancelled
            })
            .await
            .expect("spawn");
        }
    }
    let ids = |v: Vec<task_core::TaskSummary>| v.into_iter().map(|s| s.task_id).collect::<Vec<_>>();
    assert_eq!(ids(m.list("o", None).await), ["t0", "t1", "t2", "t3", "t4"]);
    assert_eq!(
        ids(m.list("o", Some(TaskStatus::Completed)).await),
        ["t0", "t1"]
    );
    assert_eq!(
        ids(m.list("o", Some(TaskStatus::Running)).await),
        ["t2", "t3", "t4"]
    );
    assert_eq!(
        ids(m.list_by_type("o", "even", None).await),
        ["t0", "t2", "t4"]
    );
    assert_eq!(
        ids(m.list_by_type("o", "odd", Some(TaskStatus::Running)).await),
        ["t3"]
    );
    assert!(m.has_running_tasks("o").await);
}

#[tokio::test]
async fn gc_terminal_drops_only_finished_tasks_of_that_owner() {
    let m = BackgroundTaskManager::new();
    let done = m
        .spawn("o", "t", "d", |_| async {
            TaskResult::Success(json!(null))
        })
        .await
        .expect("spawn");
    m.wait("o", &done).await.expect("known");
    let stopped = m
        .spawn("o", "agent_run", "d", |_| async { TaskResult::Stopped })
        .await
        .expect("spawn");
    m.wait("o", &stopped).await.expect("known");
    spawn_until_cancelled(&m, "running", "o", None).await;
    let other = m
        .spawn("other", "t", "d", |_| async {
            TaskResult::Success(json!(null))
        })
        .await
        .expect("spawn");
    m.wait("other", &other).await.expect("known");

    assert_eq!(m.gc_terminal("o").await, 1);
    assert!(!m.contains("o", &done).await);
    assert!(
        m.contains("o", &stopped).await,
        "stopped is resumable, kept"
    );
    assert!(m.contains("o", "running").await);
    assert!(m.contains("other", &other).await);
    assert_eq!(m.gc_terminal("o").await, 0);
}

#[tokio::test]
async fn update_status_finishes_a_running_task_once() {
    let m = BackgroundTaskManager::new();
    spawn_until_cancelled(&m, "u", "o", None).await;
    assert!(!m.update_status("u", TaskStatus::Running, None).await);
    assert!(!m.update_status("unknown", TaskStatus::Failed, None).await);
    assert!(
        m.update_status("u", TaskStatus::Failed, Some("by hand".into()))
            .await
    );
    let s = m.wait("o", "u").await.expect("known");
    assert_eq!(s.status, TaskStatus::Failed);
    assert_eq!(s.error.as_deref(), Some("by hand"));
    assert!(
        !m.update_status("u", TaskStatus::Completed, None).await,
        "write-once"
    );
    assert!(!m.has_running_tasks("o").await);
}

#[tokio::test]
async fn bad_input_is_refused_with_a_typed_error_and_changes_nothing() {
    let m = BackgroundTaskManager::new();
    let long = "x".repeat(300);
    let cases = [
        params("", "o", None),
        params("id", "", None),
        params("a\nb", "o", None),
        params("id", "o\u{0}", None),
        params(&long, "o", None),
        params("id", &long, None),
        params("id", "o", Some("")),
        SpawnParams {
            task_type: String::new(),
            ..params("id", "o", None)
        },
        SpawnParams {
            metadata: json!({ "blob": "x".repeat(task_core::MAX_METADATA_BYTES) }),
            ..params("id", "o", None)
        },
        SpawnParams {
            description: "d".repeat(task_core::MAX_DESCRIPTION_LEN + 1),
            ..params("id", "o", None)
        },
    ];
    for p in cases {
        let shown = format!("{:.40?}", p.task_id);
        let err = m
            .spawn_with_id(p, RunCancellationToken::new(), |_| async {
                TaskResult::Success(json!(null))
            })
            .await
            .expect_err("refused");
        assert!(
            matches!(err, TaskError::InvalidInput { .. }),
            "{shown}: {err:?}"
        );
    }
    assert!(
        m.spawn("", "t", "d", |_| async { TaskResult::Cancelled })
            .await
            .is_err()
    );
    assert!(!m.contains_any("id").await);
    assert!(m.list("o", None).await.is_empty());
}

#[tokio::test]
async fn retention_keeps_at_most_n_terminal_tasks_per_owner() {
    let m = BackgroundTaskManager::builder()
        .retention(RetentionPolicy {
            max_terminal_per_owner: Some(2),
            max_age: None,
        })
        .build();
    let mut ids = Vec::new();
    for _ in 0..5 {
        let id = m
            .spawn("o", "t", "d", |_| async {
                TaskResult::Success(json!(null))
            })
            .await
            .expect("spawn");
        m.wait("o", &id).await.expect("known");
        ids.push(id);
    }
    let kept: Vec<_> = m
        .list("o", None)
        .await
        .into_iter()
        .map(|s| s.task_id)
        .collect();
    assert_eq!(kept, ids[3..]);
}

#[tokio::test(start_paused = true)]
async fn retention_drops_terminal_tasks_older_than_max_age() {
    let m = BackgroundTaskManager::builder()
        .retention(RetentionPolicy {
            max_terminal_per_owner: None,
            max_age: Some(Duration::from_secs(60)),
        })
        .build();
    let old = m
        .spawn("o", "t", "d", |_| async {
            TaskResult::Success(json!(null))
        })
        .await
        .expect("spawn");
    m.wait("o", &old).await.expect("known");
    tokio::time::advance(Duration::from_secs(61)).await;
    assert!(m.list("o", None).await.is_empty(), "aged out");
}

#[tokio::test]
async fn retention_never_collects_a_task_someone_is_waiting_on() {
    // Keep no terminal task at all: only the waiter keeps this one alive.
    let m = BackgroundTaskManager::builder()
        .retention(RetentionPolicy {
            max_terminal_per_owner: Some(0),
            max_age: None,
        })
        .build();
    let (release, released) = oneshot::channel::<()>();
    let waited = m
        .spawn("o", "t", "d", |_| async move {
            let _ = released.await;
            TaskResult::Success(json!("kept for the waiter"))
        })
        .await
        .expect("spawn");
    let waiter = {
        let m = m.clone();
        let id = waited.clone();
        tokio::spawn(async move { m.wait("o", &id).await })
    };
    // On this single-threaded runtime one yield runs the waiter up to its
    // wait, before the task is released.
    tokio::task::yield_now().await;
    release.send(()).expect("task waits");
    let s = waiter
        .await
        .expect("join")
        .expect("the waiter sees the task");
    assert_eq!(s.status, TaskStatus::Completed);
    assert_eq!(s.result, Some(json!("kept for the waiter")));
    // With the waiter gone, the next listing applies the policy.
    assert!(m.list("o", None).await.is_empty());
}

#[tokio::test]
async fn generated_ids_are_unique_and_sort_in_spawn_order() {
    let m = BackgroundTaskManager::new();
    let mut ids = Vec::new();
    for _ in 0..2000 {
        let id = m
            .spawn("o", "t", "d", |_| async {
                TaskResult::Success(json!(null))
            })
            .await
            .expect("spawn");
        assert_eq!(id.len(), 32, "a UUID in lowercase hex: {id}");
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        ids.push(id);
    }
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids sort in spawn order"
    );
}
