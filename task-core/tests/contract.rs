//! The public contract of DESIGN.md, used exactly as it is written there:
//! every name, signature and message that downstream code relies on.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use task_core::{
    BackgroundTaskManager, NewTaskSpec, RunCancellationToken, SpawnParams, TaskError, TaskId,
    TaskResult, TaskStatus, TaskStore, TaskSummary, new_task_id,
};
use task_store::{ThreadReader, ThreadStore, ThreadStoreError, ThreadWriter, VersionPrecondition};
use task_store_memory::MemoryStore;
use task_testkit::FlakyStore;

#[tokio::test]
async fn redis_store_connects_from_a_url() {
    let Some(url) = task_testkit::redis_server::shared_redis_url("redis_store_connects_from_a_url")
    else {
        return;
    };
    let store = task_store_redis::RedisStore::connect(&url)
        .await
        .expect("connect from a redis:// URL");
    assert_store(&store);
    let err = task_store_redis::RedisStore::connect("redis://127.0.0.1:1/0")
        .await
        .expect_err("nothing listens there");
    assert!(err.is_retryable(), "{err:?}");
}

#[test]
fn run_cancellation_token_is_tokio_utils_cancellation_token() {
    let token: tokio_util::sync::CancellationToken = RunCancellationToken::new();
    let _same_type: RunCancellationToken = token;
}

#[test]
fn task_status_is_copy_comparable_and_lowercase() {
    let status = TaskStatus::Running;
    let copy = status;
    assert_eq!(status, copy);
    assert_eq!(format!("{status:?}"), "Running");
    for (s, name, terminal) in [
        (TaskStatus::Running, "running", false),
        (TaskStatus::Completed, "completed", true),
        (TaskStatus::Failed, "failed", true),
        (TaskStatus::Cancelled, "cancelled", true),
        (TaskStatus::Stopped, "stopped", false),
    ] {
        assert_eq!(s.as_str(), name);
        assert_eq!(s.is_terminal(), terminal);
        assert_eq!(
            serde_json::to_string(&s).expect("serialize"),
            format!("\"{name}\"")
        );
        assert_eq!(
            serde_json::from_str::<TaskStatus>(&format!("\"{name}\"")).expect("deserialize"),
            s
        );
    }
}

#[test]
fn the_contract_structs_have_their_fields() {
    let params = SpawnParams {
        task_id: new_task_id(),
        owner_thread_id: "o".to_string(),
        task_type: "t".to_string(),
        description: "d".to_string(),
        parent_task_id: None,
        metadata: json!({}),
    };
    let _cloned: SpawnParams = params.clone();
    let _spec = NewTaskSpec {
        task_id: "x".to_string(),
        owner_thread_id: "o".to_string(),
        task_type: "t".to_string(),
        description: "d".to_string(),
        parent_task_id: None,
        supports_resume: false,
        metadata: json!(null),
    };
    let summary = TaskSummary {
        task_id: "x".to_string(),
        task_type: "t".to_string(),
        description: "d".to_string(),
        status: TaskStatus::Completed,
        error: None,
        result: Some(json!(1)),
        created_at_ms: 1,
        completed_at_ms: Some(2),
        parent_task_id: None,
        supports_resume: false,
        attempt: 1,
        metadata: json!(null),
        persistence_error: None,
    };
    assert_eq!(summary.clone(), summary);
    let _results = [
        TaskResult::Success(json!(1)),
        TaskResult::Failed("e".into()),
        TaskResult::Cancelled,
        TaskResult::Stopped,
    ];
    let _precondition = [VersionPrecondition::Exact(1), VersionPrecondition::Any];
}

fn assert_store<S: ThreadStore + ThreadReader + ThreadWriter + ?Sized>(_: &S) {}

#[tokio::test]
async fn stores_task_store_and_manager_compose_as_written() {
    let opened: Result<Arc<dyn ThreadStore>, ThreadStoreError> =
        task_core::store::open("memory://").await;
    let store = opened.expect("memory:// always opens");
    assert_store(store.as_ref());
    let memory = MemoryStore::new();
    assert_store(&memory);

    let flaky = FlakyStore::new(store.clone());
    assert_store(&flaky);
    flaky.fail_appends(2);
    assert_eq!(flaky.remaining_failures(), 2);
    let flaky: Arc<dyn ThreadStore> = Arc::new(flaky);

    let tasks = Arc::new(TaskStore::new(flaky));
    let created = tasks
        .create_task(NewTaskSpec {
            task_id: "made-ahead".into(),
            owner_thread_id: "owner".into(),
            task_type: "shell".into(),
            description: "d".into(),
            parent_task_id: None,
            supports_resume: false,
            metadata: json!(null),
        })
        .await
        .expect("create_task");
    assert_eq!(created.attempt, 1);
    let record = tasks
        .load_task("made-ahead")
        .await
        .expect("load")
        .expect("record");
    let (_s, _r, _e, _a): (TaskStatus, Option<serde_json::Value>, Option<String>, u32) =
        (record.status, record.result, record.error, record.attempt);

    let _plain = BackgroundTaskManager::new();
    let _none = BackgroundTaskManager::with_task_store(None);
    let _some = BackgroundTaskManager::with_task_store(Some(tasks.clone()));
    let m = BackgroundTaskManager::builder()
        .task_store(tasks.clone())
        .cancel_grace(Duration::from_secs(1))
        .build();

    let id: TaskId = m
        .spawn("owner", "shell", "d", |ctx| async move {
            ctx.cancelled().await;
            assert!(ctx.is_cancelled());
            TaskResult::Cancelled
        })
        .await
        .expect("spawn");
    let child: Result<TaskId, TaskError> = m
        .spawn_with_id(
            SpawnParams {
                task_id: "child".into(),
                owner_thread_id: "owner".into(),
                task_type: "agent_run".into(),
                description: "d".into(),
                parent_task_id: Some(id.clone()),
                metadata: json!({ "k": 1 }),
            },
            RunCancellationToken::new(),
            |ctx| async move {
                ctx.cancelled().await;
                TaskResult::Stopped
            },
        )
        .await;
    let child = child.expect("spawn_with_id");
    assert!(m.contains("owner", &child).await);
    assert!(m.contains_any(&child).await);
    assert!(m.has_running_tasks("owner").await);
    let listed: Vec<TaskSummary> = m.list("owner", None).await;
    assert_eq!(listed.len(), 2);
    assert_eq!(
        m.list_by_type("owner", "agent_run", Some(TaskStatus::Running))
            .await
            .len(),
        1
    );
    let got: Option<TaskSummary> = m.get("owner", &child).await;
    assert!(got.is_some());
    let tree: Result<Vec<TaskSummary>, TaskError> = m.cancel_tree("owner", &id).await;
    assert_eq!(tree.expect("cancel_tree").len(), 2);
    let done: Option<TaskSummary> = m.wait("owner", &id).await;
    assert_eq!(done.expect("known").status, TaskStatus::Cancelled);
    m.wait("owner", &child).await;
    let cancel: Result<(), TaskError> = m.cancel("owner", &id).await;
    assert_eq!(
        cancel.expect_err("finished").to_string(),
        format!("Task '{id}' is not running (current status: cancelled)")
    );
    assert_eq!(
        m.cancel("owner", "nope")
            .await
            .expect_err("unknown")
            .to_string(),
        "Unknown task_id: nope"
    );
    let other = m
        .spawn("owner", "t", "d", |ctx| async move {
            ctx.cancelled().await;
            TaskResult::Cancelled
        })
        .await
        .expect("spawn");
    let updated: bool = m
        .update_status(&other, TaskStatus::Failed, Some("by hand".into()))
        .await;
    assert!(updated);
    m.flush().await;
    let collected: usize = m.gc_terminal("owner").await;
    assert_eq!(
        collected, 3,
        "the tree (cancelled) and the task failed by hand"
    );
}

#[tokio::test]
async fn store_open_refuses_unknown_schemes_with_a_clear_error() {
    for url in ["mysql://localhost/db", "no-scheme-at-all"] {
        let err = task_core::store::open(url).await.expect_err("refused");
        assert!(
            matches!(err, ThreadStoreError::InvalidInput { .. }),
            "{url}: {err:?}"
        );
        assert!(err.to_string().contains("memory://"), "{err}");
    }
}

/// Built without the `redis` feature (`cargo xtask ci` runs the tests that
/// way too), a Redis URL is refused with an error that names the feature
/// once and does not print the password.
#[cfg(not(feature = "redis"))]
#[tokio::test]
async fn store_open_of_a_redis_url_without_the_feature_names_the_feature() {
    let err = task_core::store::open("redis://:secret@localhost:6379/0")
        .await
        .expect_err("feature off");
    let text = err.to_string();
    assert!(text.contains("feature `redis` is not enabled"), "{text}");
    assert_eq!(text.matches("redis://").count(), 1, "{text}");
    assert!(!text.contains("secret"), "{text}");
}

#[cfg(not(feature = "postgres"))]
#[tokio::test]
async fn store_open_of_a_postgres_url_names_the_missing_feature_and_hides_the_password() {
    for url in [
        "postgres://app:s3cret@localhost/db",
        "postgresql://app:s3cret@localhost/db",
    ] {
        let err = task_core::store::open(url).await.expect_err("refused");
        assert!(
            matches!(err, ThreadStoreError::InvalidInput { .. }),
            "{url}: {err:?}"
        );
        assert!(err.to_string().contains("feature `postgres`"), "{err}");
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }
}
