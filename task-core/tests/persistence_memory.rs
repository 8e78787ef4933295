//! The persistence suite on `MemoryStore`.

use std::sync::Arc;

use task_core::thread_store::ThreadStore;
use task_store_memory::MemoryStore;

async fn memory() -> Arc<dyn ThreadStore> {
    Arc::new(MemoryStore::new())
}

task_core::persistence_tests!(memory());

/// The suite as data, for harnesses that are not libtest: `run_all` runs
/// every case and reports each, passing on correct stores and catching
/// stores that let two compare-and-swap writers win.
mod run_all {
    use std::sync::Arc;

    use task_core::testing::{self, CASES, Verdict};
    use task_store_memory::MemoryStore;
    use task_testkit::broken::{Defect, SmallStore};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_case_passes_on_correct_stores() {
        for report in [
            testing::run_all(|| async { Arc::new(MemoryStore::new()) }).await,
            testing::run_all(|| async { Arc::new(SmallStore::new()) }).await,
        ] {
            assert_eq!(report.outcomes.len(), CASES.len());
            assert!(report.all_passed(), "{report}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_broken_store_fails_cases_and_the_run_goes_on() {
        for (report, catcher) in [
            (
                testing::run_all(|| async {
                    Arc::new(SmallStore::with_defect(Defect::CheckThenAppend))
                })
                .await,
                "concurrent_finishes_of_one_attempt_agree_on_one_winner",
            ),
            (
                testing::run_all(|| async {
                    Arc::new(SmallStore::with_defect(Defect::IgnoresPreconditions))
                })
                .await,
                "a_terminal_outcome_written_elsewhere_is_not_overwritten",
            ),
        ] {
            assert_eq!(report.outcomes.len(), CASES.len(), "every case ran");
            let failed: Vec<&str> = report.failures().map(|(name, _)| name).collect();
            assert!(failed.contains(&catcher), "{report}");
            assert!(report.to_string().contains("FAILED"), "{report}");
        }
        let skipped = testing::run_all(|| async { None::<Arc<MemoryStore>> }).await;
        assert!(
            skipped
                .outcomes
                .iter()
                .all(|(_, verdict)| *verdict == Verdict::Skipped)
        );
    }
}

mod batching {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::Duration;

    use async_trait::async_trait;
    use serde_json::Value;
    use task_core::thread_store::{
        AppendRequest, ChangeSet, Committed, MessagePage, MessageQuery, Result, Thread, ThreadHead,
        ThreadPage, ThreadQuery, ThreadReader, ThreadSignals, ThreadWriter, VersionPrecondition,
    };
    use task_core::{BackgroundTaskManager, TaskEventKind, TaskResult, TaskStatus, TaskStore};
    use task_store_memory::MemoryStore;

    /// A `MemoryStore` that counts the writer's calls, and can be made to
    /// panic in `create_batch` (a store with a bug).
    #[derive(Debug, Default)]
    struct Counting {
        inner: MemoryStore,
        panics: AtomicBool,
        creates: AtomicUsize,
        create_batches: AtomicUsize,
        appends: AtomicUsize,
        append_batches: AtomicUsize,
    }

    #[async_trait]
    impl ThreadReader for Counting {
        async fn load(&self, id: &str) -> Result<Option<ThreadHead>> {
            self.inner.load(id).await
        }
        async fn load_messages(&self, id: &str, query: MessageQuery) -> Result<MessagePage> {
            self.inner.load_messages(id, query).await
        }
        async fn list_threads(&self, query: ThreadQuery) -> Result<ThreadPage> {
            self.inner.list_threads(query).await
        }
    }

    #[async_trait]
    impl ThreadWriter for Counting {
        async fn create(&self, thread: Thread) -> Result<Committed> {
            self.creates.fetch_add(1, Ordering::Relaxed);
            self.inner.create(thread).await
        }
        async fn create_batch(&self, threads: Vec<Thread>) -> Vec<Result<Committed>> {
            self.create_batches.fetch_add(1, Ordering::Relaxed);
            assert!(
                !self.panics.load(Ordering::Relaxed),
                "a store bug: create_batch panics"
            );
            self.inner.create_batch(threads).await
        }
        async fn append(
            &self,
            id: &str,
            changes: ChangeSet,
            precondition: VersionPrecondition,
        ) -> Result<Committed> {
            self.appends.fetch_add(1, Ordering::Relaxed);
            self.inner.append(id, changes, precondition).await
        }
        async fn append_batch(&self, requests: Vec<AppendRequest>) -> Vec<Result<Committed>> {
            self.append_batches.fetch_add(1, Ordering::Relaxed);
            self.inner.append_batch(requests).await
        }
        async fn save(&self, thread: Thread) -> Result<Committed> {
            self.inner.save(thread).await
        }
        async fn delete(&self, id: &str) -> Result<()> {
            self.inner.delete(id).await
        }
        fn signals(&self) -> Option<&dyn ThreadSignals> {
            None
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn many_tasks_are_written_in_a_few_batches_not_one_write_each() {
        let counting = Arc::new(Counting::default());
        let store = Arc::new(TaskStore::new(counting.clone()));
        let m = BackgroundTaskManager::builder()
            .task_store(Arc::clone(&store))
            .build();
        let mut ids = Vec::new();
        for i in 0..500 {
            let owner = format!("owner-{}", i % 7);
            let id = m
                .spawn(&owner, "t", "d", |_| async {
                    TaskResult::Success(Value::Null)
                })
                .await
                .expect("spawn");
            ids.push((owner, id));
        }
        for (owner, id) in &ids {
            m.wait(owner, id).await.expect("known");
        }
        m.flush().await;
        let batches = counting.create_batches.load(Ordering::Relaxed)
            + counting.append_batches.load(Ordering::Relaxed);
        assert!(
            batches <= 8,
            "500 tasks took {batches} batch calls; they should share a few"
        );
        assert_eq!(
            counting.creates.load(Ordering::Relaxed),
            0,
            "no write alone"
        );
        assert_eq!(
            counting.appends.load(Ordering::Relaxed),
            0,
            "no write alone"
        );
        for (owner, id) in &ids {
            let record = store.load_task(id).await.expect("load").expect("stored");
            assert_eq!(record.status, TaskStatus::Completed);
            assert_eq!(&record.owner_thread_id, owner);
            let summary = m.get(owner, id).await.expect("known");
            assert_eq!(summary.persistence_error, None);
        }
    }

    /// Group commit: a batch waits briefly for more work, so a short task's
    /// start and finish reach the store as one write, not two.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_short_tasks_start_and_finish_are_one_write() {
        let counting = Arc::new(Counting::default());
        let store = Arc::new(TaskStore::new(counting.clone()));
        let m = BackgroundTaskManager::builder()
            .task_store(Arc::clone(&store))
            .build();
        let id = m
            .spawn("owner", "t", "d", |_| async {
                TaskResult::Success(Value::Null)
            })
            .await
            .expect("spawn");
        m.wait("owner", &id).await.expect("known");
        m.flush().await;
        assert_eq!(counting.create_batches.load(Ordering::Relaxed), 1);
        assert_eq!(
            counting.append_batches.load(Ordering::Relaxed),
            0,
            "the finish met the start in the create"
        );
        let record = store.load_task(&id).await.expect("load").expect("stored");
        assert_eq!(record.status, TaskStatus::Completed);
    }

    /// A flush does not wait out the batch's lingering: what is queued is
    /// written at once (no time passes on the paused clock).
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_flush_writes_at_once_without_lingering() {
        let counting = Arc::new(Counting::default());
        let store = Arc::new(TaskStore::new(counting.clone()));
        let m = BackgroundTaskManager::builder()
            .task_store(Arc::clone(&store))
            .build();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let id = m
            .spawn("owner", "t", "d", |_| async move {
                let _ = released.await;
                TaskResult::Success(Value::Null)
            })
            .await
            .expect("spawn");
        let before = tokio::time::Instant::now();
        m.flush().await;
        assert_eq!(
            tokio::time::Instant::now(),
            before,
            "the flush waited for the clock"
        );
        let record = store.load_task(&id).await.expect("load").expect("stored");
        assert_eq!(record.status, TaskStatus::Running);
        release.send(()).expect("the task waits");
        m.wait("owner", &id).await.expect("known");
    }

    /// A full outbox does not linger either: the spawns waiting for room
    /// would wait for the clock (no time passes on the paused clock before
    /// the start is durable).
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_full_outbox_writes_at_once_without_lingering() {
        let counting = Arc::new(Counting::default());
        let store = Arc::new(TaskStore::new(counting.clone()));
        let m = BackgroundTaskManager::builder()
            .task_store(Arc::clone(&store))
            .outbox_limit(1, task_core::OutboxFull::Wait)
            .build();
        let mut events = m.subscribe();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let before = tokio::time::Instant::now();
        let id = m
            .spawn("owner", "t", "d", |_| async move {
                let _ = released.await;
                TaskResult::Success(Value::Null)
            })
            .await
            .expect("spawn");
        loop {
            let event = events.recv().await.expect("events");
            if event.task_id == id && event.kind == task_core::TaskEventKind::Persisted {
                break;
            }
        }
        assert_eq!(
            tokio::time::Instant::now(),
            before,
            "the write waited for the clock"
        );
        release.send(()).expect("the task waits");
        m.wait("owner", &id).await.expect("known");
    }

    #[tokio::test]
    async fn a_batch_lost_to_a_panicking_store_shows_and_does_not_stall_flush() {
        let counting = Arc::new(Counting::default());
        counting.panics.store(true, Ordering::Relaxed);
        let store = Arc::new(TaskStore::new(counting.clone()));
        let m = BackgroundTaskManager::builder()
            .task_store(Arc::clone(&store))
            .build();
        let mut events = m.subscribe();
        let id = m
            .spawn("o", "t", "d", |_| async {
                TaskResult::Success(Value::Null)
            })
            .await
            .expect("spawn");
        m.wait("o", &id).await.expect("known");
        tokio::time::timeout(Duration::from_secs(30), m.flush())
            .await
            .expect("flush returns although the write was lost");
        let summary = m.get("o", &id).await.expect("known");
        assert_eq!(summary.status, TaskStatus::Completed);
        assert!(summary.persistence_error.is_some(), "the failure shows");
        let mut lost = false;
        while let Ok(event) = events.try_recv() {
            if let TaskEventKind::PersistenceFailed { error, permanent } = event.kind {
                lost |= permanent && error.contains("lost");
            }
        }
        assert!(lost, "a permanent failure says the write was lost");

        // The writer goes on: once the store behaves, new tasks persist.
        counting.panics.store(false, Ordering::Relaxed);
        let id = m
            .spawn("o", "t", "d", |_| async {
                TaskResult::Success(Value::Null)
            })
            .await
            .expect("spawn");
        m.wait("o", &id).await.expect("known");
        m.flush().await;
        assert_eq!(
            m.get("o", &id).await.expect("known").persistence_error,
            None
        );
        let record = store.load_task(&id).await.expect("load").expect("stored");
        assert_eq!(record.status, TaskStatus::Completed);
    }
}
