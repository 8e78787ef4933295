//! The task layer's persistence suite, for any thread store: what the
//! manager promises about durability holds on a third-party backend too.
//!
//! `task-testkit`'s conformance suite checks a backend against the storage
//! contract, call by call. This suite checks it from above, as the task layer
//! uses it: a [`BackgroundTaskManager`](crate::BackgroundTaskManager) and
//! its [`TaskStore`](crate::TaskStore) over the store under test, through
//! task-core's public API only. It covers adoption of a record created
//! ahead, attempts, write-once terminal outcomes, ordered logs, fencing of an
//! older attempt, isolation of a corrupt record, recovery through the store
//! after a process died, and one winner among concurrent finishes. `task-core` runs it on `MemoryStore`, on
//! `FlakyStore` and on Redis; a backend runs it with one call.
//!
//! It lives here, behind the `testing` feature, rather than in
//! `task-testkit`, because the testkit must not depend on task-core (see
//! `ARCHITECTURE.md`). Enable it in the backend's dev-dependencies:
//!
//! ```toml
//! [dev-dependencies]
//! task-core = { version = "0.1", default-features = false, features = ["testing"] }
//! tokio = { version = "1", features = ["macros", "rt-multi-thread"] }
//! ```
//!
//! and call it from a test file, with the same shape as the storage suite's
//! `conformance_tests!`:
//!
//! ```
//! // tests/task_layer.rs of a backend crate
//! use std::sync::Arc;
//!
//! use task_store::ThreadStore;
//! # use task_store_memory::MemoryStore as MyStore;
//!
//! async fn make_store() -> Arc<dyn ThreadStore> {
//!     Arc::new(MyStore::new())
//! }
//!
//! task_core::persistence_tests!(make_store());
//! // or, with the module named: task_core::persistence_tests!(my_store, make_store());
//! # fn main() {}
//! ```
//!
//! # The factory
//!
//! An expression evaluated once per case (inside the generated module, which
//! imports everything from the module where the macro is called), of type
//! `impl Future<Output = S>` where `S:` [`SuiteStore`]: `Arc<dyn ThreadStore>`,
//! `Arc<S>` for a concrete store, or an `Option` of either, where `None`
//! skips the case (say why, loudly). Stores may be shared: each case uses
//! owners, task ids and instance ids of its own (`owner-<uuid>`,
//! `suite-<uuid>`), so cases never see each other's tasks; but recovery reads
//! every open task of the store, so give each case its own store or key
//! prefix when other programs write tasks to the same one.
//!
//! # The cases as data
//!
//! [`CASES`] lists every case (name and function), and [`run_all`] runs them
//! against a factory and returns a [`Report`], for harnesses that are not
//! libtest. Each case is a plain `pub async fn(store: Arc<dyn ThreadStore>)`
//! that panics with a message when the store breaks a promise; `run_all`
//! reports the panic as that case's failure and goes on.

mod cases;

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;
use task_store::ThreadStore;

pub use cases::*;

/// What a store factory of [`persistence_tests!`](crate::persistence_tests)
/// or [`run_all`] may produce: a store, or `None` to skip the case.
pub trait SuiteStore {
    /// The store to run the case on, or `None` to skip it.
    fn into_suite_store(self) -> Option<Arc<dyn ThreadStore>>;
}

impl SuiteStore for Arc<dyn ThreadStore> {
    fn into_suite_store(self) -> Option<Arc<dyn ThreadStore>> {
        Some(self)
    }
}

impl SuiteStore for Option<Arc<dyn ThreadStore>> {
    fn into_suite_store(self) -> Option<Arc<dyn ThreadStore>> {
        self
    }
}

impl<S: ThreadStore> SuiteStore for Arc<S> {
    fn into_suite_store(self) -> Option<Arc<dyn ThreadStore>> {
        Some(self)
    }
}

impl<S: ThreadStore> SuiteStore for Option<Arc<S>> {
    fn into_suite_store(self) -> Option<Arc<dyn ThreadStore>> {
        self.map(|store| store as Arc<dyn ThreadStore>)
    }
}

/// Stamps out the persistence suite as one test per case for a store
/// factory: `persistence_tests!(factory)` in a module `persistence`,
/// `persistence_tests!(name, factory)` in a module `name`. See the
/// [module docs](crate::testing) for the factory.
///
/// The test crate needs `tokio` with the `macros` and `rt-multi-thread`
/// features.
#[macro_export]
macro_rules! persistence_tests {
    ($module:ident, $factory:expr $(,)?) => {
        /// The task layer's persistence suite of `task_core::testing`, one
        /// test per case.
        mod $module {
            #[allow(unused_imports)]
            use super::*;

            $crate::__persistence_case_list! { __persistence_test_fns { ($factory) } }
        }
    };
    ($factory:expr $(,)?) => {
        $crate::persistence_tests!(persistence, $factory);
    };
}

/// The one list of the suite's cases: calls `$crate::$callback! { $args...
/// case, ... }`. Implementation detail of
/// [`persistence_tests!`](crate::persistence_tests) and [`CASES`].
#[doc(hidden)]
#[macro_export]
macro_rules! __persistence_case_list {
    ($callback:ident { $($args:tt)* }) => {
        $crate::$callback! {
            $($args)*
            terminal_states_are_durable_after_flush,
            a_running_task_is_durable_before_it_finishes,
            a_caller_created_record_is_adopted,
            a_respawned_id_is_the_next_attempt,
            a_terminal_outcome_written_elsewhere_is_not_overwritten,
            output_is_logged_in_order_with_transitions,
            a_corrupt_record_fails_only_its_own_load,
            a_write_of_an_older_attempt_is_fenced_off,
            a_dead_instances_tasks_are_recovered_through_the_store,
            a_recovered_task_resumes_as_the_next_attempt,
            concurrent_finishes_of_one_attempt_agree_on_one_winner,
        }
    };
}

/// Stamps one `#[tokio::test]` per case. Implementation detail of
/// [`persistence_tests!`](crate::persistence_tests).
#[doc(hidden)]
#[macro_export]
macro_rules! __persistence_test_fns {
    (($factory:expr) $($case:ident),* $(,)?) => {$(
        #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            let Some(store) = $crate::testing::SuiteStore::into_suite_store($factory.await)
            else {
                ::std::eprintln!(
                    "persistence case `{}` skipped: the store factory gave no store",
                    ::std::stringify!($case),
                );
                return;
            };
            $crate::testing::$case(store).await;
        }
    )*};
}

/// A case as a function: the store in, a future that panics when the store
/// breaks a promise out. `Send + 'static`, so a harness can spawn it.
pub type CaseFn = fn(Arc<dyn ThreadStore>) -> BoxFuture<'static, ()>;

/// One case of the suite, as data.
#[derive(Debug, Clone, Copy)]
pub struct Case {
    /// Its name: the name of its test and of its `pub async fn` here.
    pub name: &'static str,
    /// Runs it.
    pub run: CaseFn,
}

/// Builds [`CASES`] from the case list. Implementation detail.
#[doc(hidden)]
#[macro_export]
macro_rules! __persistence_table {
    ($($case:ident),* $(,)?) => {
        /// Every case of the suite, with its function: the same list as the
        /// tests of [`persistence_tests!`](crate::persistence_tests).
        pub static CASES: &[Case] = &[$(
            Case {
                name: ::std::stringify!($case),
                run: {
                    fn run(store: Arc<dyn ThreadStore>) -> BoxFuture<'static, ()> {
                        Box::pin($crate::testing::$case(store))
                    }
                    run
                },
            },
        )*];
    };
}

crate::__persistence_case_list! { __persistence_table {} }

/// How a case ended, in a [`Report`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// It ran to its end.
    Passed,
    /// It panicked: the panic's message.
    Failed(String),
    /// The factory gave no store.
    Skipped,
}

/// The outcome of every case run by [`run_all`], in the order of [`CASES`].
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Each case's name and verdict.
    pub outcomes: Vec<(&'static str, Verdict)>,
}

impl Report {
    /// Whether every case ran and passed.
    pub fn all_passed(&self) -> bool {
        self.outcomes.iter().all(|(_, v)| *v == Verdict::Passed)
    }

    /// The cases that failed, with why.
    pub fn failures(&self) -> impl Iterator<Item = (&'static str, &str)> {
        self.outcomes
            .iter()
            .filter_map(|(name, verdict)| match verdict {
                Verdict::Failed(why) => Some((*name, why.as_str())),
                Verdict::Passed | Verdict::Skipped => None,
            })
    }
}

impl fmt::Display for Report {
    /// One line per case that did not pass, then a summary line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut passed = 0;
        for (name, verdict) in &self.outcomes {
            match verdict {
                Verdict::Passed => passed += 1,
                Verdict::Failed(why) => writeln!(f, "FAILED  {name}: {why}")?,
                Verdict::Skipped => writeln!(f, "SKIPPED {name}")?,
            }
        }
        write!(
            f,
            "persistence suite: {passed} of {} cases passed",
            self.outcomes.len()
        )
    }
}

/// Runs every case of [`CASES`] against stores from `factory` (called once
/// per case, just before it), one at a time, each on a spawned tokio task:
/// a case that panics is reported as failed with the panic's message, and
/// the run goes on. Must be called inside a multi-threaded tokio runtime.
pub async fn run_all<F, Fut>(mut factory: F) -> Report
where
    F: FnMut() -> Fut,
    Fut: Future,
    Fut::Output: SuiteStore,
{
    let mut outcomes = Vec::with_capacity(CASES.len());
    for case in CASES {
        let verdict = match factory().await.into_suite_store() {
            None => Verdict::Skipped,
            Some(store) => match tokio::spawn((case.run)(store)).await {
                Ok(()) => Verdict::Passed,
                Err(join) => Verdict::Failed(match join.try_into_panic() {
                    Ok(panic) => panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a panic without a message".to_owned()),
                    Err(join) => format!("the case's task ended abnormally: {join}"),
                }),
            },
        };
        outcomes.push((case.name, verdict));
    }
    Report { outcomes }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::CASES;

    #[test]
    fn every_case_defined_is_listed_once() {
        let text = include_str!("cases.rs");
        let defined: BTreeSet<&str> = text
            .lines()
            .filter_map(|line| line.strip_prefix("pub async fn "))
            .filter_map(|rest| rest.split('(').next())
            .collect();
        let listed: Vec<&str> = CASES.iter().map(|case| case.name).collect();
        let unique: BTreeSet<&str> = listed.iter().copied().collect();
        assert_eq!(unique.len(), listed.len(), "a case is listed twice");
        assert_eq!(
            unique, defined,
            "cases defined in cases.rs and listed in __persistence_case_list!"
        );
    }
}
