//! `TaskStore` against mocked storage traits: exactly which reads and writes
//! each operation makes, and how it reacts to conflicts and failures.

use std::sync::Arc;

use async_trait::async_trait;
use mockall::{Sequence, predicate::eq};
use serde_json::{Value, json};
use task_core::{NewTaskSpec, TaskError, TaskRecord, TaskStatus, TaskStore, Transition};
use task_store::{
    AppendRequest, ChangeSet, Committed, MessagePage, MessageQuery, Result, Thread, ThreadHead,
    ThreadPage, ThreadQuery, ThreadReader, ThreadStoreError, ThreadWriter, VersionPrecondition,
};

mockall::mock! {
    Store {
        // The writer's methods, mocked as plain functions: the trait is
        // implemented by hand below because mockall cannot mock `signals`
        // (it returns a reference borrowed from `self`).
        fn create(&self, thread: Thread) -> Result<Committed>;
        fn create_batch(&self, threads: Vec<Thread>) -> Vec<Result<Committed>>;
        fn append(
            &self,
            id: &str,
            changes: ChangeSet,
            precondition: VersionPrecondition,
        ) -> Result<Committed>;
        fn append_batch(&self, requests: Vec<AppendRequest>) -> Vec<Result<Committed>>;
        fn save(&self, thread: Thread) -> Result<Committed>;
        fn delete(&self, id: &str) -> Result<()>;
    }

    #[async_trait]
    impl ThreadReader for Store {
        async fn load(&self, id: &str) -> Result<Option<ThreadHead>>;
        async fn load_messages(&self, id: &str, query: MessageQuery) -> Result<MessagePage>;
        async fn list_threads(&self, query: ThreadQuery) -> Result<ThreadPage>;
    }
}

#[async_trait]
impl ThreadWriter for MockStore {
    async fn create(&self, thread: Thread) -> Result<Committed> {
        MockStore::create(self, thread)
    }
    async fn create_batch(&self, threads: Vec<Thread>) -> Vec<Result<Committed>> {
        MockStore::create_batch(self, threads)
    }
    async fn append(
        &self,
        id: &str,
        changes: ChangeSet,
        precondition: VersionPrecondition,
    ) -> Result<Committed> {
        MockStore::append(self, id, changes, precondition)
    }
    async fn append_batch(&self, requests: Vec<AppendRequest>) -> Vec<Result<Committed>> {
        MockStore::append_batch(self, requests)
    }
    async fn save(&self, thread: Thread) -> Result<Committed> {
        MockStore::save(self, thread)
    }
    async fn delete(&self, id: &str) -> Result<()> {
        MockStore::delete(self, id)
    }
    fn signals(&self) -> Option<&dyn task_store::ThreadSignals> {
        None
    }
}

impl std::fmt::Debug for MockStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MockStore")
    }
}

fn spec() -> NewTaskSpec {
    NewTaskSpec {
        task_id: "t1".into(),
        owner_thread_id: "owner".into(),
        task_type: "shell".into(),
        description: "ls".into(),
        ..NewTaskSpec::default()
    }
}

fn record(status: TaskStatus) -> TaskRecord {
    TaskRecord {
        task_id: "t1".into(),
        owner_thread_id: "owner".into(),
        task_type: "shell".into(),
        description: "ls".into(),
        status,
        error: None,
        result: None,
        parent_task_id: None,
        supports_resume: false,
        attempt: 1,
        metadata: Value::Null,
        created_at_ms: 1,
        updated_at_ms: 1,
        completed_at_ms: None,
        cancel_requested_at_ms: None,
        lease: None,
        run_id: None,
        checkpoint: None,
    }
}

fn head(state: Value, version: u64) -> ThreadHead {
    ThreadHead {
        id: "task:t1".into(),
        kind: "task".into(),
        parent_id: Some("owner".into()),
        metadata: Default::default(),
        state,
        version,
        last_seq: version,
        terminal: false,
    }
}

fn committed(version: u64) -> Committed {
    Committed {
        version,
        last_seq: version,
        appended: 1,
        skipped: 0,
    }
}

fn finish_completed() -> Transition {
    Transition::Finish {
        attempt: 1,
        holder: None,
        status: TaskStatus::Completed,
        result: Some(json!(1)),
        error: None,
        at_ms: 5,
    }
}

fn encoded(status: TaskStatus) -> Value {
    serde_json::to_value(record(status)).expect("encode")
}

#[tokio::test]
async fn create_task_writes_record_and_audit_message_in_one_create() {
    let mut store = MockStore::new();
    store
        .expect_create()
        .withf(|t: &Thread| {
            t.id == "task:t1"
                && t.kind == "task"
                && t.parent_id.as_deref() == Some("owner")
                && t.state["status"] == "running"
                && t.state["attempt"] == 1
                && t.messages.len() == 1
                && t.messages[0].id.as_deref() == Some("a1:started")
        })
        .times(1)
        .returning(|_| Ok(committed(1)));
    store.expect_append().never();
    let tasks = TaskStore::new(Arc::new(store));
    let rec = tasks.create_task(spec()).await.expect("created");
    assert_eq!((rec.status, rec.attempt), (TaskStatus::Running, 1));
}

#[tokio::test]
async fn create_task_refuses_bad_input_before_touching_the_store() {
    let mut store = MockStore::new();
    store.expect_create().never();
    let tasks = TaskStore::new(Arc::new(store));
    let err = tasks
        .create_task(NewTaskSpec {
            owner_thread_id: "bad\nowner".into(),
            ..spec()
        })
        .await
        .expect_err("refused");
    assert!(matches!(err, TaskError::InvalidInput { .. }), "{err:?}");
}

#[tokio::test]
async fn transition_reloads_and_retries_after_a_version_conflict() {
    let mut store = MockStore::new();
    let mut seq = Sequence::new();
    store
        .expect_load()
        .with(eq("task:t1"))
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_| Ok(Some(head(encoded(TaskStatus::Running), 1))));
    store
        .expect_append()
        .withf(|_, _, p| *p == VersionPrecondition::Exact(1))
        .times(1)
        .in_sequence(&mut seq)
        .returning(|id, _, _| {
            Err(ThreadStoreError::VersionConflict {
                id: id.to_owned(),
                expected: 1,
                actual: 2,
            })
        });
    store
        .expect_load()
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_| Ok(Some(head(encoded(TaskStatus::Running), 2))));
    store
        .expect_append()
        .withf(|id, changes, p| {
            id == "task:t1"
                && *p == VersionPrecondition::Exact(2)
                && changes.terminal == Some(true)
                && changes
                    .state
                    .as_ref()
                    .is_some_and(|s| s["status"] == "completed")
                && changes.messages[0].id.as_deref() == Some("a1:completed")
        })
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_, _, _| Ok(committed(3)));
    let tasks = TaskStore::new(Arc::new(store));
    let written = tasks
        .transition("t1", finish_completed())
        .await
        .expect("applied after one conflict");
    assert_eq!(written.version, 3);
    assert_eq!(written.record.status, TaskStatus::Completed);
}

#[tokio::test]
async fn a_refused_transition_writes_nothing() {
    let mut store = MockStore::new();
    store
        .expect_load()
        .returning(|_| Ok(Some(head(encoded(TaskStatus::Failed), 4))));
    store.expect_append().never();
    let tasks = TaskStore::new(Arc::new(store));
    let err = tasks
        .transition("t1", finish_completed())
        .await
        .expect_err("terminal is write-once");
    assert!(matches!(err, TaskError::Rejected { .. }), "{err:?}");
}

#[tokio::test]
async fn an_already_applied_transition_writes_nothing() {
    let mut store = MockStore::new();
    store
        .expect_load()
        .returning(|_| Ok(Some(head(encoded(TaskStatus::Completed), 4))));
    store.expect_append().never();
    let tasks = TaskStore::new(Arc::new(store));
    let same = tasks
        .transition("t1", finish_completed())
        .await
        .expect("a retry is not an error");
    assert_eq!(same.version, 4);
}

#[tokio::test]
async fn a_corrupt_record_is_reported_as_corrupt_for_that_task() {
    let mut store = MockStore::new();
    store
        .expect_load()
        .returning(|_| Ok(Some(head(json!({ "status": 17 }), 1))));
    let tasks = TaskStore::new(Arc::new(store));
    let err = tasks.load_task("t1").await.expect_err("corrupt");
    assert!(
        matches!(&err, TaskError::Corrupt { task_id, .. } if task_id == "t1"),
        "{err:?}"
    );
}

#[tokio::test]
async fn store_failures_surface_as_retryable_errors() {
    let mut store = MockStore::new();
    store
        .expect_load()
        .returning(|_| Err(ThreadStoreError::unavailable("connection refused")));
    let tasks = TaskStore::new(Arc::new(store));
    let err = tasks
        .transition("t1", finish_completed())
        .await
        .expect_err("store down");
    assert!(err.is_retryable(), "{err:?}");
}

#[tokio::test]
async fn endless_conflicts_end_in_a_conflict_error_not_a_loop() {
    let mut store = MockStore::new();
    store
        .expect_load()
        .returning(|_| Ok(Some(head(encoded(TaskStatus::Running), 1))));
    store.expect_append().returning(|id, _, _| {
        Err(ThreadStoreError::VersionConflict {
            id: id.to_owned(),
            expected: 1,
            actual: 2,
        })
    });
    let tasks = TaskStore::new(Arc::new(store));
    let err = tasks
        .transition("t1", finish_completed())
        .await
        .expect_err("gives up");
    assert!(
        matches!(
            err,
            TaskError::Store(ThreadStoreError::VersionConflict { .. })
        ),
        "{err:?}"
    );
}
