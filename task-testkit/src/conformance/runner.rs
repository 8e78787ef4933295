//! The suite as data ([`CASES`]) and a runner for harnesses that are not
//! libtest ([`run_all`], [`run_cases`]), returning a [`Report`].

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use task_store::ThreadStore;

use super::{CaseResult, CaseStore, fresh_prefix};

/// What part of the contract a case checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Area {
    /// Creating, loading and appending one thread.
    Basics,
    /// Message-id de-duplication over a thread's whole history.
    Messages,
    /// What each kind of write does to the version.
    Versions,
    /// Refused writes leave no trace.
    Atomicity,
    /// Message pages and thread listings: cursors, limits.
    Paging,
    /// The listing indexes follow every write, and keep ids that are
    /// prefixes of one another apart.
    Indexes,
    /// Deleting, saving and the finished mark.
    Lifecycle,
    /// Invalid ids are refused and change nothing.
    InvalidInput,
    /// Concurrent writers: one winner, no lost update.
    Concurrency,
    /// `append_batch` and `create_batch`.
    Batches,
    /// The open index (`ThreadQuery::open_only`).
    OpenIndex,
    /// Wake-up signals, where the store offers them.
    Signals,
}

impl Area {
    /// Every area, in the order of the suite's table.
    pub const ALL: [Area; 12] = [
        Area::Basics,
        Area::Messages,
        Area::Versions,
        Area::Atomicity,
        Area::Paging,
        Area::Indexes,
        Area::Lifecycle,
        Area::InvalidInput,
        Area::Concurrency,
        Area::Batches,
        Area::OpenIndex,
        Area::Signals,
    ];

    /// The area's name, as its file in the suite is named: `"basics"`,
    /// `"open_index"`...
    pub fn as_str(self) -> &'static str {
        match self {
            Area::Basics => "basics",
            Area::Messages => "messages",
            Area::Versions => "versions",
            Area::Atomicity => "atomicity",
            Area::Paging => "paging",
            Area::Indexes => "indexes",
            Area::Lifecycle => "lifecycle",
            Area::InvalidInput => "invalid_input",
            Area::Concurrency => "concurrency",
            Area::Batches => "batches",
            Area::OpenIndex => "open_index",
            Area::Signals => "signals",
        }
    }
}

impl fmt::Display for Area {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A case as a function: the store to run on and the case's id prefix, in;
/// the outcome, out. The future is `Send + 'static`, so a harness can spawn
/// it.
pub type CaseFn = fn(Arc<dyn ThreadStore>, String) -> BoxFuture<'static, CaseResult>;

/// One case of the suite, as data.
#[derive(Debug, Clone, Copy)]
pub struct Case {
    /// The case's name, which is also the name of its `pub async fn` in
    /// [`conformance`](crate::conformance) and of its test in
    /// [`conformance_tests!`](crate::conformance_tests).
    pub name: &'static str,
    /// What part of the contract it checks.
    pub area: Area,
    /// Runs it.
    pub run: CaseFn,
}

impl Case {
    /// Runs the case on `store` under `prefix` (see
    /// [`fresh_prefix`](crate::conformance::fresh_prefix)).
    pub fn run_on(
        &self,
        store: Arc<dyn ThreadStore>,
        prefix: &str,
    ) -> BoxFuture<'static, CaseResult> {
        (self.run)(store, prefix.to_owned())
    }
}

/// Builds [`CASES`] from the case list. Implementation detail.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_table {
    ($($area:ident : $case:ident),* $(,)?) => {
        /// Every case of the suite, in the order of the suite's files, with
        /// its area and function. The same list as the tests of
        /// [`conformance_tests!`](crate::conformance_tests).
        pub static CASES: &[Case] = &[$(
            Case {
                name: ::std::stringify!($case),
                area: Area::$area,
                run: {
                    fn run(
                        store: Arc<dyn ThreadStore>,
                        prefix: String,
                    ) -> BoxFuture<'static, CaseResult> {
                        Box::pin(async move { $crate::conformance::$case(store, &prefix).await })
                    }
                    run
                },
            },
        )*];
    };
}

crate::__conformance_case_list! { __conformance_table {} }

/// How [`run_cases`] runs the cases.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RunOptions {
    /// A case still running after this long fails as timed out (a broken
    /// store may hang). Default: two minutes.
    pub timeout: Duration,
    /// How many cases run at once. Default: 1, since the concurrency cases
    /// race many tasks of their own.
    pub parallelism: usize,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(120),
            parallelism: 1,
        }
    }
}

impl RunOptions {
    /// Sets the timeout of each case.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets how many cases run at once (at least 1).
    pub fn with_parallelism(mut self, parallelism: usize) -> Self {
        self.parallelism = parallelism.max(1);
        self
    }
}

/// How a case ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every expectation held.
    Passed,
    /// An expectation failed (or the case panicked or timed out): what went
    /// wrong.
    Failed(String),
    /// The factory gave no store.
    Skipped,
}

/// One case's outcome in a [`Report`].
#[derive(Debug, Clone)]
pub struct CaseOutcome {
    /// The case.
    pub case: Case,
    /// The id prefix it used (every id, parent and kind it wrote starts
    /// with it).
    pub prefix: String,
    /// How it ended.
    pub verdict: Verdict,
    /// How long it ran.
    pub elapsed: Duration,
}

/// The outcome of every case run by [`run_all`] or [`run_cases`], in the
/// order of the cases.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// One outcome per case.
    pub outcomes: Vec<CaseOutcome>,
}

impl Report {
    /// The outcomes of the cases that failed.
    pub fn failures(&self) -> impl Iterator<Item = &CaseOutcome> {
        self.outcomes
            .iter()
            .filter(|o| matches!(o.verdict, Verdict::Failed(_)))
    }

    /// How many cases passed.
    pub fn passed(&self) -> usize {
        self.count(|v| matches!(v, Verdict::Passed))
    }

    /// How many cases failed.
    pub fn failed(&self) -> usize {
        self.count(|v| matches!(v, Verdict::Failed(_)))
    }

    /// How many cases were skipped.
    pub fn skipped(&self) -> usize {
        self.count(|v| matches!(v, Verdict::Skipped))
    }

    /// Whether every case ran and passed (none failed, none skipped).
    pub fn all_passed(&self) -> bool {
        self.passed() == self.outcomes.len()
    }

    fn count(&self, which: impl Fn(&Verdict) -> bool) -> usize {
        self.outcomes.iter().filter(|o| which(&o.verdict)).count()
    }
}

impl fmt::Display for Report {
    /// One line per failed or skipped case, then a summary line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for outcome in &self.outcomes {
            let name = outcome.case.name;
            match &outcome.verdict {
                Verdict::Passed => {}
                Verdict::Failed(why) => writeln!(
                    f,
                    "FAILED  {}::{name} (prefix {:?}): {why}",
                    outcome.case.area, outcome.prefix
                )?,
                Verdict::Skipped => writeln!(f, "SKIPPED {}::{name}", outcome.case.area)?,
            }
        }
        write!(
            f,
            "conformance: {} passed, {} failed, {} skipped of {} cases",
            self.passed(),
            self.failed(),
            self.skipped(),
            self.outcomes.len()
        )
    }
}

/// Runs every case of the suite ([`CASES`]) against stores from `factory`,
/// one at a time, with the default [`RunOptions`], and reports how each
/// ended. Must be called inside a tokio runtime (each case is spawned on
/// it; a multi-threaded runtime makes the concurrency cases race for real).
///
/// `factory` is called once per case and gives a store, or `None` to skip
/// the case (see [`CaseStore`]). Each case writes only ids, parents, kinds
/// and signal channels that start with its own fresh prefix
/// ([`fresh_prefix`](crate::conformance::fresh_prefix)), and deletes its
/// threads when it ends, so the stores may share one server.
///
/// ```
/// use std::sync::Arc;
///
/// use task_store::ThreadStore;
/// use task_store_memory::MemoryStore;
///
/// # #[tokio::main]
/// # async fn main() {
/// let report = task_testkit::conformance::run_all(|| async {
///     Arc::new(MemoryStore::new()) as Arc<dyn ThreadStore>
/// })
/// .await;
/// assert!(report.all_passed(), "{report}");
/// # }
/// ```
pub async fn run_all<F, Fut>(factory: F) -> Report
where
    F: FnMut() -> Fut,
    Fut: Future,
    Fut::Output: CaseStore,
{
    run_cases(CASES, factory, RunOptions::default()).await
}

/// Runs the given cases (a slice of [`CASES`], or any selection of them)
/// against stores from `factory`, as [`run_all`] does, with these options.
pub async fn run_cases<'a, F, Fut>(
    cases: impl IntoIterator<Item = &'a Case>,
    mut factory: F,
    options: RunOptions,
) -> Report
where
    F: FnMut() -> Fut,
    Fut: Future,
    Fut::Output: CaseStore,
{
    use futures::StreamExt;

    // Each store is made just before its case runs, in this task (so the
    // factory need not be Send); the cases themselves run on spawned tasks,
    // up to `parallelism` at a time.
    let timeout = options.timeout;
    let outcomes = futures::stream::iter(cases)
        .then(|case| {
            let made = factory();
            async move { (*case, made.await.into_case_store()) }
        })
        .map(|(case, store)| run_one(case, store, timeout))
        .buffered(options.parallelism.max(1))
        .collect()
        .await;
    Report { outcomes }
}

async fn run_one(
    case: Case,
    store: Option<Arc<dyn ThreadStore>>,
    timeout: Duration,
) -> CaseOutcome {
    let prefix = fresh_prefix();
    let started = Instant::now();
    let verdict = match store {
        None => Verdict::Skipped,
        Some(store) => {
            let mut handle = tokio::spawn((case.run)(store, prefix.clone()));
            match tokio::time::timeout(timeout, &mut handle).await {
                Ok(Ok(Ok(()))) => Verdict::Passed,
                Ok(Ok(Err(failure))) => Verdict::Failed(failure),
                Ok(Err(join)) => Verdict::Failed(match join.try_into_panic() {
                    Ok(panic) => format!("the case panicked: {}", panic_message(&*panic)),
                    Err(join) => format!("the case's task ended abnormally: {join}"),
                }),
                Err(_) => {
                    // Wait until the case's future is dropped, so nothing of
                    // it runs on once its outcome is reported.
                    handle.abort();
                    let _ = handle.await;
                    Verdict::Failed(format!("the case did not finish within {timeout:?}"))
                }
            }
        }
    };
    CaseOutcome {
        case,
        prefix,
        verdict,
        elapsed: started.elapsed(),
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(a panic without a message)".to_owned())
}
