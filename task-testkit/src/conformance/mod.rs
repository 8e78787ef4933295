//! The backend conformance suite: the storage contract of [`task_store`],
//! checked behaviour by behaviour.
//!
//! Every backend and every wrapper runs all of it from its own
//! `tests/conformance.rs`, through [`conformance_tests!`](crate::conformance_tests):
//!
//! ```
//! // tests/conformance.rs of a backend crate
//! use std::sync::Arc;
//!
//! use task_store::ThreadStore;
//! # use task_store_memory::MemoryStore as MyStore;
//!
//! async fn make_store() -> Arc<dyn ThreadStore> {
//!     // Connect to a server here, or return `None` from an
//!     // `Option<Arc<dyn ThreadStore>>` factory to skip where there is none.
//!     Arc::new(MyStore::new())
//! }
//!
//! task_testkit::conformance_tests!(make_store());
//! # fn main() {}
//! ```
//!
//! The macro stamps out a module `conformance` holding one
//! `#[tokio::test(flavor = "multi_thread", worker_threads = 4)]` per case, so
//! `cargo test conformance` runs them all and
//! `cargo test conformance::create_then_load_round_trips` runs one. The test
//! crate needs `tokio` (features `macros` and `rt-multi-thread`) as a
//! dev-dependency. `conformance_tests!(my_module, make_store())` names the
//! module, so one test crate can run the suite on several stores.
//!
//! The factory expression is evaluated once per case and must produce a future
//! whose output is a store: `Arc<dyn ThreadStore>`, `Arc<S>` for a concrete
//! store, or an `Option` of either, where `None` skips the case (for a backend
//! whose server cannot be had; the factory says why, loudly). Several cases
//! may share one server: each case works under a fresh random prefix
//! ([`fresh_prefix`]) for its thread ids, parents and kinds, and deletes the
//! threads it created when it ends.
//!
//! The cases are also data: [`CASES`] lists every one with its name and
//! [`Area`], and [`run_all`] runs them all against a factory and returns a
//! [`Report`], for harnesses that are not libtest. Each case is also a plain
//! `pub async fn(store, prefix) -> CaseResult` that returns `Err(what went
//! wrong)` instead of panicking, so a test can run a case against a store
//! that is meant to fail it (see [`broken`](crate::broken)).
//!
//! The list of cases is written once, in `__conformance_case_list!`: the
//! macro, [`CASES`] and [`run_all`] all read it, and a test of this crate
//! checks that every `pub async fn` of the suite's files is on it.

#[macro_use]
mod support;

mod atomicity;
mod basics;
mod batches;
mod concurrency;
mod indexes;
mod invalid_input;
mod lifecycle;
mod messages;
mod open_index;
mod paging;
mod runner;
mod signals;
mod versions;

use std::sync::Arc;

use task_store::ThreadStore;

pub use atomicity::*;
pub use basics::*;
pub use batches::*;
pub use concurrency::*;
pub use indexes::*;
pub use invalid_input::*;
pub use lifecycle::*;
pub use messages::*;
pub use open_index::*;
pub use paging::*;
pub use runner::{
    Area, CASES, Case, CaseFn, CaseOutcome, Report, RunOptions, Verdict, run_all, run_cases,
};
pub use signals::*;
pub use versions::*;

/// What a case returns: `Err` says which expectation failed and how.
pub type CaseResult = Result<(), String>;

/// A fresh random prefix for one case's ids, parents and kinds, such as
/// `conformance-3f9a0c1e77d2b460:`.
pub fn fresh_prefix() -> String {
    format!("conformance-{:016x}:", fastrand::u64(..))
}

/// What a store factory of [`conformance_tests!`](crate::conformance_tests)
/// may produce: a store, or `None` to skip the case.
pub trait CaseStore {
    /// The store to run the case on, or `None` to skip it.
    fn into_case_store(self) -> Option<Arc<dyn ThreadStore>>;
}

impl CaseStore for Arc<dyn ThreadStore> {
    fn into_case_store(self) -> Option<Arc<dyn ThreadStore>> {
        Some(self)
    }
}

impl CaseStore for Option<Arc<dyn ThreadStore>> {
    fn into_case_store(self) -> Option<Arc<dyn ThreadStore>> {
        self
    }
}

impl<S: ThreadStore> CaseStore for Arc<S> {
    fn into_case_store(self) -> Option<Arc<dyn ThreadStore>> {
        Some(self)
    }
}

impl<S: ThreadStore> CaseStore for Option<Arc<S>> {
    fn into_case_store(self) -> Option<Arc<dyn ThreadStore>> {
        self.map(|store| store as Arc<dyn ThreadStore>)
    }
}

/// Panics with a case's failure, naming the case and its prefix. Used by
/// [`conformance_tests!`](crate::conformance_tests).
///
/// # Panics
///
/// When `result` is an `Err`.
#[track_caller]
pub fn check(case: &str, prefix: &str, result: CaseResult) {
    if let Err(failure) = result {
        panic!("conformance case `{case}` failed (id prefix {prefix:?}): {failure}");
    }
}

/// Stamps out the conformance suite as one test per case for a store factory.
///
/// `conformance_tests!(factory)` puts the tests in a module `conformance`;
/// `conformance_tests!(name, factory)` in a module `name`.
///
/// The factory is an expression evaluated once per case (inside the
/// generated module, which imports everything from the module where the
/// macro is called); it must be a future whose output implements
/// [`CaseStore`](crate::conformance::CaseStore): `Arc<dyn ThreadStore>`,
/// `Arc<S>`, or an `Option` of either (`None` skips the case).
///
/// ```
/// use std::sync::Arc;
///
/// use task_store::ThreadStore;
/// use task_store_memory::MemoryStore;
///
/// task_testkit::conformance_tests!(async {
///     Arc::new(MemoryStore::new()) as Arc<dyn ThreadStore>
/// });
/// // A second store in the same test crate, in a module of its own.
/// task_testkit::conformance_tests!(shared_clone, async {
///     Arc::new(MemoryStore::new().clone())
/// });
/// # fn main() {}
/// ```
///
/// The test crate needs `tokio` with the `macros` and `rt-multi-thread`
/// features. See the [module docs](crate::conformance).
#[macro_export]
macro_rules! conformance_tests {
    ($module:ident, $factory:expr $(,)?) => {
        /// The backend conformance suite of `task-testkit`, one test per case.
        mod $module {
            #[allow(unused_imports)]
            use super::*;

            $crate::__conformance_case_list! { __conformance_test_fns { ($factory) } }
        }
    };
    ($factory:expr $(,)?) => {
        $crate::conformance_tests!(conformance, $factory);
    };
}

/// The one list of the suite's cases, each with its [`Area`]: calls
/// `$crate::$callback! { $args... Area: case, ... }`. Implementation detail
/// of [`conformance_tests!`] and [`CASES`].
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_case_list {
    ($callback:ident { $($args:tt)* }) => {
        $crate::$callback! {
            $($args)*
            Basics: create_then_load_round_trips,
            Basics: create_of_a_taken_id_fails_and_changes_nothing,
            Basics: load_of_a_missing_thread_finds_nothing,
            Basics: append_with_the_current_version_commits,
            Basics: append_with_a_stale_version_conflicts_and_changes_nothing,
            Basics: append_with_any_commits_whatever_the_version,
            Basics: append_to_a_missing_thread_is_not_found,
            Messages: messages_with_known_ids_are_skipped,
            Messages: message_ids_are_scoped_to_their_thread,
            Messages: change_set_that_changes_nothing_keeps_the_version,
            Messages: message_ids_are_deduplicated_over_the_whole_history,
            Versions: every_kind_of_write_moves_the_version_by_one_or_not_at_all,
            Atomicity: refused_writes_leave_no_trace,
            Paging: message_pages_follow_cursors,
            Paging: message_page_limits_are_clamped,
            Paging: list_by_parent_pages_without_duplicates_or_gaps,
            Paging: list_by_kind_pages_without_duplicates_or_gaps,
            Paging: list_by_parent_and_kind_pages_without_duplicates_or_gaps,
            Paging: list_page_limits_are_clamped,
            Paging: list_without_filters_lists_every_thread,
            Indexes: indexes_follow_every_write_then_delete,
            Indexes: listings_keep_ids_that_are_prefixes_of_one_another_apart,
            Lifecycle: deleted_thread_is_gone_from_loads_and_listings,
            Lifecycle: delete_is_idempotent,
            Lifecycle: save_creates_a_missing_thread,
            Lifecycle: save_replaces_an_existing_thread,
            Lifecycle: save_reindexes_when_parent_or_kind_changes,
            InvalidInput: invalid_thread_ids_are_refused_and_nothing_written,
            InvalidInput: invalid_parents_and_kinds_are_refused_and_nothing_written,
            InvalidInput: invalid_message_ids_are_refused_and_nothing_written,
            InvalidInput: invalid_query_ids_are_refused,
            InvalidInput: invalid_ids_are_refused_in_every_argument,
            InvalidInput: ids_at_the_edge_of_validity_round_trip,
            Concurrency: concurrent_exact_appends_have_exactly_one_winner,
            Concurrency: compare_and_swap_loops_lose_no_update,
            Concurrency: concurrent_any_appends_all_commit,
            Concurrency: concurrent_creates_have_exactly_one_winner,
            Basics: large_values_round_trip,
            Batches: append_batch_returns_one_result_per_request,
            Lifecycle: terminal_mark_round_trips,
            Basics: ids_with_special_characters_round_trip,
            Batches: create_batch_round_trips_many_threads,
            Batches: create_batch_refuses_taken_and_invalid_items_alone,
            Batches: create_batch_with_a_repeated_id_creates_the_first,
            Concurrency: create_batch_racing_create_has_one_winner_per_id,
            Batches: create_batch_of_nothing_returns_nothing,
            OpenIndex: open_listing_follows_the_finished_mark,
            OpenIndex: open_listing_follows_every_kind_of_write,
            OpenIndex: open_listing_pages_without_gaps_while_threads_finish,
            OpenIndex: open_indexes_follow_every_write_then_delete,
            OpenIndex: open_listings_keep_ids_that_are_prefixes_of_one_another_apart,
            Signals: signals_wake_every_watcher_of_their_channel,
        }
    };
}

/// Stamps one `#[tokio::test]` per case. Implementation detail of
/// [`conformance_tests!`].
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_test_fns {
    (($factory:expr) $($area:ident : $case:ident),* $(,)?) => {$(
        #[::tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $case() {
            let Some(store) = $crate::conformance::CaseStore::into_case_store($factory.await)
            else {
                ::std::eprintln!(
                    "conformance case `{}` skipped: the store factory gave no store",
                    ::std::stringify!($case),
                );
                return;
            };
            let prefix = $crate::conformance::fresh_prefix();
            let result = $crate::conformance::$case(store, &prefix).await;
            $crate::conformance::check(::std::stringify!($case), &prefix, result);
        }
    )*};
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use super::CASES;

    /// The files of the suite that hold no case.
    const NOT_CASES: [&str; 3] = ["mod.rs", "runner.rs", "support.rs"];

    /// Every `pub async fn` in the suite's area files, by name.
    fn defined_cases() -> BTreeSet<String> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/conformance");
        let mut names = BTreeSet::new();
        for entry in std::fs::read_dir(&dir).expect("the suite's folder") {
            let path = entry.expect("a directory entry").path();
            let file = path.file_name().and_then(|name| name.to_str());
            if file.is_some_and(|file| NOT_CASES.contains(&file)) {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("a suite file");
            for line in text.lines() {
                if let Some(rest) = line.strip_prefix("pub async fn ") {
                    let name: String = rest
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    names.insert(name);
                }
            }
        }
        names
    }

    #[test]
    fn every_case_defined_is_listed_once() {
        let defined = defined_cases();
        assert!(defined.len() > 40, "the files were read: {defined:?}");
        let listed: Vec<&str> = CASES.iter().map(|case| case.name).collect();
        let unique: BTreeSet<&str> = listed.iter().copied().collect();
        assert_eq!(unique.len(), listed.len(), "a case is listed twice");
        let missing: Vec<&String> = defined
            .iter()
            .filter(|name| !unique.contains(name.as_str()))
            .collect();
        assert!(
            missing.is_empty(),
            "cases defined but not in __conformance_case_list!: {missing:?}"
        );
    }
}
