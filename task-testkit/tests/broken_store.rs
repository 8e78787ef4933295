//! The conformance suite is shown to catch a store that loses updates: run
//! against `IgnoresPreconditions` (every `Exact(v)` silently turned into
//! `Any`) over a correct `MemoryStore`, the precondition cases fail, while
//! the cases that do not depend on preconditions still pass.

use std::sync::Arc;

use task_store::ThreadStore;
use task_store_memory::MemoryStore;
use task_testkit::broken::IgnoresPreconditions;
use task_testkit::conformance::{self, CaseResult, fresh_prefix};

fn broken_store() -> Arc<dyn ThreadStore> {
    Arc::new(IgnoresPreconditions::new(MemoryStore::new()))
}

/// The failure of a case that must fail against the broken store.
fn caught(case: &str, result: CaseResult) -> String {
    let failure =
        result.expect_err("the case must fail against a store that ignores preconditions");
    eprintln!("`{case}` caught the broken store: {failure}");
    failure
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn suite_catches_lost_updates_in_compare_and_swap_loops() {
    let result =
        conformance::compare_and_swap_loops_lose_no_update(broken_store(), &fresh_prefix()).await;
    let failure = caught("compare_and_swap_loops_lose_no_update", result);
    assert!(
        failure.starts_with("lost updates"),
        "the failure names the lost updates: {failure}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn suite_catches_more_than_one_winner_of_concurrent_exact_appends() {
    let result = conformance::concurrent_exact_appends_have_exactly_one_winner(
        broken_store(),
        &fresh_prefix(),
    )
    .await;
    let failure = caught("concurrent_exact_appends_have_exactly_one_winner", result);
    assert!(
        failure.starts_with("64 of 64 concurrent Exact(1) appends committed"),
        "the failure counts the winners: {failure}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn suite_catches_a_stale_append_that_commits() {
    let result = conformance::append_with_a_stale_version_conflicts_and_changes_nothing(
        broken_store(),
        &fresh_prefix(),
    )
    .await;
    caught(
        "append_with_a_stale_version_conflicts_and_changes_nothing",
        result,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn suite_catches_ignored_preconditions_in_batches() {
    let result =
        conformance::append_batch_returns_one_result_per_request(broken_store(), &fresh_prefix())
            .await;
    caught("append_batch_returns_one_result_per_request", result);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn suite_catches_an_ignored_precondition_on_an_empty_change_set() {
    let result = conformance::change_set_that_changes_nothing_keeps_the_version(
        broken_store(),
        &fresh_prefix(),
    )
    .await;
    caught("change_set_that_changes_nothing_keeps_the_version", result);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broken_store_still_passes_cases_without_preconditions() {
    // The failures above come from the ignored preconditions, not from a
    // wrapper that breaks everything.
    for (case, result) in [
        (
            "create_then_load_round_trips",
            conformance::create_then_load_round_trips(broken_store(), &fresh_prefix()).await,
        ),
        (
            "list_by_parent_and_kind_pages_without_duplicates_or_gaps",
            conformance::list_by_parent_and_kind_pages_without_duplicates_or_gaps(
                broken_store(),
                &fresh_prefix(),
            )
            .await,
        ),
        (
            "create_batch_round_trips_many_threads",
            conformance::create_batch_round_trips_many_threads(broken_store(), &fresh_prefix())
                .await,
        ),
        (
            "concurrent_any_appends_all_commit",
            conformance::concurrent_any_appends_all_commit(broken_store(), &fresh_prefix()).await,
        ),
    ] {
        if let Err(failure) = result {
            panic!("`{case}` failed against the precondition-ignoring store: {failure}");
        }
    }
}
