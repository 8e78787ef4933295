//! The backend conformance suite: the storage contract of [`task_store`],
//! checked behaviour by behaviour.
//!
//! Every backend and every wrapper runs all of it from its own
//! `tests/conformance.rs`, with one call of
//! [`conformance_tests!`](crate::conformance_tests) per store:
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
//! // or, with the module named: task_testkit::conformance_tests!(my_store, make_store());
//! # fn main() {}
//! ```
//!
//! The macro stamps out a module (`conformance`, or the name given first)
//! holding one `#[tokio::test(flavor = "multi_thread", worker_threads = 4)]`
//! per case, so `cargo test conformance` runs them all and
//! `cargo test conformance::create_then_load_round_trips` runs one. The test
//! crate needs `tokio` (features `macros` and `rt-multi-thread`) as a
//! dev-dependency. Naming the module lets one test crate run the suite on
//! several stores (two servers, or two configurations of one).
//!
//! # The factory
//!
//! The factory is an expression, evaluated once per case inside the
//! generated module (which imports everything from the module where the
//! macro is called), of type `impl Future<Output = S>` where `S:`
//! [`CaseStore`]:
//!
//! | the future's output | means |
//! |---|---|
//! | `Arc<dyn ThreadStore>` or `Arc<S>` (`S: ThreadStore`) | run the case on this store |
//! | `Option<Arc<dyn ThreadStore>>` or `Option<Arc<S>>` | `None` skips the case: the backend's server cannot be had here (say why, loudly; under `CI=true`, panic instead) |
//!
//! For [`run_all`] and [`run_cases`] the factory is a closure
//! `FnMut() -> impl Future<Output = S>` with the same `S`, called once per
//! case just before the case runs.
//!
//! The factory may return a fresh store each time or the same one, and the
//! stores may share one server (libtest runs the cases in parallel): the
//! cases never depend on anything they did not write themselves.
//!
//! # Prefixes: what a case writes
//!
//! Each case runs under its own prefix, `conformance-<16 random hex
//! digits>:` ([`fresh_prefix`]), shown in every failure. Every thread id,
//! parent id, kind and signal channel a case writes starts with it; message
//! ids are per thread, so they are not prefixed. The invalid ids a case
//! sends (refused, never written) are built on the prefix too, except the
//! empty id and one that starts with a control character. A case deletes the
//! threads it created when it ends, pass or fail; only a case that is
//! aborted (a panic in the store, a timeout of [`run_cases`]) leaves
//! threads behind, all under its prefix. Listings without a filter read from
//! the prefix on (`after = prefix`) and stop at the first id beyond it, so a
//! case never looks at another's threads; a backend may still give each
//! store its own key prefix or schema for extra isolation.
//!
//! # The cases as data
//!
//! [`CASES`] lists every case once, with its name (the name of its test and
//! of its `pub async fn` here), its [`Area`] and its function ([`CaseFn`]).
//! [`run_all`] runs them all against a factory and returns a [`Report`];
//! [`run_cases`] runs a selection with [`RunOptions`] (a per-case timeout, how
//! many at once), for harnesses that are not libtest:
//!
//! ```
//! use std::sync::Arc;
//!
//! use task_testkit::conformance::{self, Area, CASES, RunOptions};
//! # use task_store_memory::MemoryStore as MyStore;
//!
//! # #[tokio::main]
//! # async fn main() {
//! let paging = CASES.iter().filter(|case| case.area == Area::Paging);
//! let report = conformance::run_cases(
//!     paging,
//!     || async { Arc::new(MyStore::new()) },
//!     RunOptions::default().with_parallelism(4),
//! )
//! .await;
//! assert!(report.all_passed(), "{report}");
//! for outcome in &report.outcomes {
//!     println!("{} {:?} in {:?}", outcome.case.name, outcome.verdict, outcome.elapsed);
//! }
//! # }
//! ```
//!
//! Each case is also a plain `pub async fn(store: Arc<dyn ThreadStore>,
//! prefix: &str) -> CaseResult` that returns `Err(what went wrong)` instead
//! of panicking, so a test can run one case against a store that is meant to
//! fail it (see [`broken`](crate::broken), the suite's self-test by
//! mutation).
//!
//! # Areas
//!
//! | area | file | checks |
//! |---|---|---|
//! | [`Area::Basics`] | `basics.rs` | create, load and append round-trip every field; taken ids; `Exact` and `Any`; missing threads; 1 MiB values; special characters |
//! | [`Area::Messages`] | `messages.rs` | message-id de-duplication per thread, over the whole history |
//! | [`Area::Versions`] | `versions.rs` | what each kind of write does to the version, and that a write reports what a load reads |
//! | [`Area::Atomicity`] | `atomicity.rs` | refused writes leave no trace: no state, mark, index entry or message id |
//! | [`Area::Paging`] | `paging.rs` | message pages and listings: cursors, limits, no duplicate or gap |
//! | [`Area::Indexes`] | `indexes.rs` | listings follow every write that changes a parent or kind, down to the delete; ids that are prefixes of one another |
//! | [`Area::Lifecycle`] | `lifecycle.rs` | delete, save (create or replace, re-index), the finished mark |
//! | [`Area::InvalidInput`] | `invalid_input.rs` | every invalid id refused in every argument; ids at the edge of validity accepted |
//! | [`Area::Concurrency`] | `concurrency.rs` | one winner per `Exact(v)` and per id; no lost update |
//! | [`Area::Batches`] | `batches.rs` | `append_batch` and `create_batch`: each item on its own, in order |
//! | [`Area::OpenIndex`] | `open_index.rs` | `open_only` listings follow the finished mark in the same write |
//! | [`Area::Signals`] | `signals.rs` | a store that offers signals wakes every watcher |
//!
//! The list of cases is written once, in `__conformance_case_list!`: the
//! macro, [`CASES`] and [`run_all`] all read it, and a test of this crate
//! checks that every `pub async fn` of the area files is on it.

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
