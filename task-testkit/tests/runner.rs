//! The suite as data and its runner, for harnesses that are not libtest:
//! `run_all` and `run_cases` report every case, skip on `None`, and turn a
//! store that panics or hangs into a failure of that case alone.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use task_store::{
    AppendRequest, ChangeSet, Committed, MessagePage, MessageQuery, Result, Thread, ThreadHead,
    ThreadPage, ThreadQuery, ThreadReader, ThreadSignals, ThreadStore, ThreadWriter,
    VersionPrecondition,
};
use task_store_memory::MemoryStore;
use task_testkit::conformance::{self, Area, CASES, RunOptions, Verdict};
use task_testkit::{Fault, FlakyStore, HangHandle, Operation};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn run_all_reports_every_case_passing_on_memory_store() {
    let report = conformance::run_all(|| async { Arc::new(MemoryStore::new()) }).await;
    assert_eq!(report.outcomes.len(), CASES.len());
    assert!(report.all_passed(), "{report}");
    assert_eq!(report.passed(), CASES.len());
    let names: Vec<&str> = report.outcomes.iter().map(|o| o.case.name).collect();
    let listed: Vec<&str> = CASES.iter().map(|case| case.name).collect();
    assert_eq!(names, listed, "one outcome per case, in the order of CASES");
    let prefixes: BTreeSet<&str> = report.outcomes.iter().map(|o| o.prefix.as_str()).collect();
    assert_eq!(prefixes.len(), CASES.len(), "each case has its own prefix");
    assert!(
        report.to_string().ends_with(&format!(
            "{} passed, 0 failed, 0 skipped of {} cases",
            CASES.len(),
            CASES.len()
        )),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_area_has_cases_and_run_cases_runs_a_selection_in_parallel() {
    for case in CASES {
        assert!(Area::ALL.contains(&case.area), "{} is missing", case.area);
    }
    for area in Area::ALL {
        assert!(
            CASES.iter().any(|case| case.area == area),
            "no case in {area}"
        );
    }
    let selection: Vec<_> = CASES
        .iter()
        .filter(|case| case.area == Area::Indexes || case.area == Area::Messages)
        .collect();
    let report = conformance::run_cases(
        selection.iter().copied(),
        || async { Arc::new(MemoryStore::new()) },
        RunOptions::default().with_parallelism(4),
    )
    .await;
    assert_eq!(report.outcomes.len(), selection.len());
    assert!(report.all_passed(), "{report}");
}

#[tokio::test]
async fn a_factory_without_a_store_skips_every_case() {
    let report = conformance::run_cases(
        CASES.iter().take(3),
        || async { None::<Arc<dyn ThreadStore>> },
        RunOptions::default(),
    )
    .await;
    assert_eq!(report.skipped(), 3);
    assert!(!report.all_passed(), "skipped is not passed");
    assert!(report.to_string().contains("SKIPPED basics::"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_store_fails_its_cases_after_the_timeout() {
    let hang = HangHandle::new();
    let report = conformance::run_cases(
        CASES.iter().take(2),
        || async {
            let flaky = FlakyStore::with_seed(Arc::new(MemoryStore::new()), 1);
            flaky.inject(Operation::Create, Fault::hang(&hang));
            Arc::new(flaky)
        },
        RunOptions::default().with_timeout(Duration::from_millis(200)),
    )
    .await;
    assert_eq!(report.failed(), 2, "{report}");
    for outcome in &report.outcomes {
        assert!(
            matches!(&outcome.verdict, Verdict::Failed(why) if why.contains("did not finish within 200ms")),
            "{:?}",
            outcome.verdict
        );
    }
    assert_eq!(
        hang.hanging(),
        0,
        "the timed-out cases were aborted, not left hanging"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_panics_fails_that_case_and_the_run_goes_on() {
    let report = conformance::run_cases(
        CASES.iter().take(3),
        || async { Arc::new(PanicsOnLoad(MemoryStore::new())) },
        RunOptions::default(),
    )
    .await;
    assert_eq!(report.outcomes.len(), 3);
    for outcome in &report.outcomes {
        assert!(
            matches!(&outcome.verdict, Verdict::Failed(why) if why.contains("the case panicked: a store bug in load")),
            "{}: {:?}",
            outcome.case.name,
            outcome.verdict
        );
    }
}

/// A store with a bug: `load` panics.
#[derive(Debug)]
struct PanicsOnLoad(MemoryStore);

#[async_trait]
impl ThreadReader for PanicsOnLoad {
    async fn load(&self, _id: &str) -> Result<Option<ThreadHead>> {
        panic!("a store bug in load")
    }

    async fn load_messages(&self, id: &str, query: MessageQuery) -> Result<MessagePage> {
        self.0.load_messages(id, query).await
    }

    async fn list_threads(&self, query: ThreadQuery) -> Result<ThreadPage> {
        self.0.list_threads(query).await
    }
}

#[async_trait]
impl ThreadWriter for PanicsOnLoad {
    async fn create(&self, thread: Thread) -> Result<Committed> {
        self.0.create(thread).await
    }

    async fn create_batch(&self, threads: Vec<Thread>) -> Vec<Result<Committed>> {
        self.0.create_batch(threads).await
    }

    async fn append(
        &self,
        id: &str,
        changes: ChangeSet,
        precondition: VersionPrecondition,
    ) -> Result<Committed> {
        self.0.append(id, changes, precondition).await
    }

    async fn append_batch(&self, requests: Vec<AppendRequest>) -> Vec<Result<Committed>> {
        self.0.append_batch(requests).await
    }

    async fn save(&self, thread: Thread) -> Result<Committed> {
        self.0.save(thread).await
    }

    async fn delete(&self, id: &str) -> Result<()> {
        self.0.delete(id).await
    }

    fn signals(&self) -> Option<&dyn ThreadSignals> {
        self.0.signals()
    }
}
