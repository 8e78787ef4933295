//! The fault modes of `FlakyStore`, over a `MemoryStore`.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use task_store::{
    AppendRequest, ChangeSet, NewMessage, Thread, ThreadQuery, ThreadReader, ThreadStore,
    ThreadStoreError, ThreadWriter, VersionPrecondition,
};
use task_store_memory::MemoryStore;
use task_testkit::{FailureKind, Fault, FlakyStore, HangHandle, Operation, Trigger};

/// A `FlakyStore` over a fresh `MemoryStore` holding thread `t` at version 1.
async fn flaky_with_thread(seed: u64) -> FlakyStore {
    let store = FlakyStore::with_seed(Arc::new(MemoryStore::new()), seed);
    store
        .create(Thread::new("t", "task"))
        .await
        .expect("creating the thread before any fault");
    store
}

async fn inner_version(store: &FlakyStore) -> u64 {
    store
        .inner()
        .load("t")
        .await
        .expect("the inner store answers")
        .expect("thread t exists")
        .version
}

fn bump() -> ChangeSet {
    ChangeSet::state(json!({ "bumped": true }))
}

#[tokio::test]
async fn fail_appends_fails_the_next_n_appends_without_reaching_the_store() {
    let store = flaky_with_thread(1).await;
    store.fail_appends(2);
    assert_eq!(store.remaining_failures(), 2);

    for remaining in [1, 0] {
        let error = store
            .append("t", bump(), VersionPrecondition::Exact(1))
            .await
            .expect_err("an injected failure");
        assert!(
            matches!(error, ThreadStoreError::Unavailable { .. }),
            "{error:?}"
        );
        assert!(error.is_retryable(), "injected failures are retryable");
        assert_eq!(store.remaining_failures(), remaining);
    }
    assert_eq!(
        inner_version(&store).await,
        1,
        "failed appends changed nothing"
    );

    let committed = store
        .append("t", bump(), VersionPrecondition::Exact(1))
        .await
        .expect("the third append goes through");
    assert_eq!(committed.version, 2);
    let counts = store.counts(Operation::Append);
    assert_eq!((counts.calls, counts.failed), (3, 2));
}

#[tokio::test]
async fn faults_hit_only_their_operation() {
    let store = flaky_with_thread(2).await;
    store.fail_next(Operation::Load, 1);
    store
        .append("t", bump(), VersionPrecondition::Any)
        .await
        .expect("appends are not affected by a load fault");
    store
        .list_threads(ThreadQuery::by_kind("task"))
        .await
        .expect("listing is not affected by a load fault");
    store.load("t").await.expect_err("the load fails");
    store.load("t").await.expect("the next load succeeds");
    assert_eq!(store.counts(Operation::Load).failed, 1);
    assert_eq!(store.counts(Operation::Append).injected(), 0);
}

#[tokio::test]
async fn every_kth_call_fails() {
    let store = flaky_with_thread(3).await;
    store.inject(Operation::Load, Fault::fail().every(3));
    let mut failed = Vec::new();
    for call in 1..=9 {
        if store.load("t").await.is_err() {
            failed.push(call);
        }
    }
    assert_eq!(failed, [3, 6, 9]);
    assert_eq!(
        store.remaining_failures(),
        0,
        "an open-ended fault is not a scripted failure"
    );
}

#[tokio::test]
async fn fail_with_timeout_returns_a_retryable_timeout_naming_the_seed() {
    let store = flaky_with_thread(4242).await;
    store.inject(
        Operation::Delete,
        Fault::fail_with(FailureKind::Timeout).next(1),
    );
    let error = store.delete("t").await.expect_err("an injected timeout");
    assert!(
        matches!(error, ThreadStoreError::Timeout { .. }),
        "{error:?}"
    );
    assert!(error.is_retryable());
    assert!(error.to_string().contains("seed 4242"), "{error}");
    assert!(error.to_string().contains("delete call #1"), "{error}");
    assert!(
        store.load("t").await.expect("load").is_some(),
        "the failed delete did not reach the store"
    );
}

/// The calls (1-based) of `load` that fail with probability `p` under `seed`.
async fn failing_calls(seed: u64, p: f64, calls: u64) -> Vec<u64> {
    let store = flaky_with_thread(seed).await;
    store.inject(Operation::Load, Fault::fail().with_probability(p));
    let mut failed = Vec::new();
    for call in 1..=calls {
        if store.load("t").await.is_err() {
            failed.push(call);
        }
    }
    assert_eq!(
        store.counts(Operation::Load).failed,
        failed.len() as u64,
        "the counts agree with what callers saw"
    );
    failed
}

#[tokio::test]
async fn probabilistic_faults_replay_exactly_for_a_seed() {
    let first = failing_calls(7, 0.3, 200).await;
    let replay = failing_calls(7, 0.3, 200).await;
    assert_eq!(first, replay, "the same seed fails the same calls");
    assert!(
        (20..=100).contains(&first.len()),
        "about 30% of 200 calls fail: {}",
        first.len()
    );
    let other = failing_calls(8, 0.3, 200).await;
    assert_ne!(first, other, "another seed fails other calls");
}

#[tokio::test]
async fn probability_zero_never_fails_and_one_always_fails() {
    assert!(failing_calls(9, 0.0, 50).await.is_empty());
    assert_eq!(failing_calls(9, 1.0, 50).await.len(), 50);
}

#[tokio::test]
async fn commit_then_fail_applies_the_write_and_reports_a_timeout() {
    let store = flaky_with_thread(5).await;
    store.inject(Operation::Append, Fault::commit_then_fail().next(1));
    assert_eq!(store.remaining_failures(), 1);
    let changes = bump().with_message(NewMessage::with_id("once", json!(1)));
    let error = store
        .append("t", changes.clone(), VersionPrecondition::Exact(1))
        .await
        .expect_err("the write is reported as failed");
    assert!(
        matches!(error, ThreadStoreError::Timeout { .. }),
        "{error:?}"
    );
    assert!(error.is_retryable());
    assert_eq!(
        inner_version(&store).await,
        2,
        "the write was applied all the same"
    );

    // The caller cannot tell; a retry as it was is detected by the store.
    let retry = store
        .append("t", changes, VersionPrecondition::Exact(1))
        .await
        .expect_err("the retry meets the applied write");
    assert!(retry.is_conflict(), "{retry:?}");
    let counts = store.counts(Operation::Append);
    assert_eq!(counts.committed_then_failed, 1);
    assert_eq!(store.remaining_failures(), 0);
}

#[tokio::test]
async fn commit_then_fail_on_create_leaves_the_thread_created() {
    let store = FlakyStore::with_seed(Arc::new(MemoryStore::new()), 6);
    store.inject(Operation::Create, Fault::commit_then_fail().next(1));
    store
        .create(Thread::new("fresh", "task"))
        .await
        .expect_err("the create is reported as failed");
    let retry = store
        .create(Thread::new("fresh", "task"))
        .await
        .expect_err("the retried create finds the thread");
    assert!(
        matches!(retry, ThreadStoreError::AlreadyExists { .. }),
        "{retry:?}"
    );
}

#[tokio::test]
async fn batch_requests_count_as_appends() {
    let store = flaky_with_thread(10).await;
    store
        .create(Thread::new("u", "task"))
        .await
        .expect("second thread");
    store.fail_appends(1);
    store.inject(
        Operation::Append,
        Fault::commit_then_fail().with_trigger(Trigger::EveryNth(3)),
    );
    let request = |id: &str| AppendRequest {
        id: id.to_owned(),
        changes: bump(),
        precondition: VersionPrecondition::Any,
    };
    let results = store
        .append_batch(vec![request("t"), request("u"), request("u")])
        .await;
    assert_eq!(results.len(), 3);
    assert!(
        matches!(results[0], Err(ThreadStoreError::Unavailable { .. })),
        "{:?}",
        results[0]
    );
    assert_eq!(
        results[1]
            .as_ref()
            .expect("the second request commits")
            .version,
        2
    );
    assert!(
        matches!(results[2], Err(ThreadStoreError::Timeout { .. })),
        "{:?}",
        results[2]
    );
    assert_eq!(
        inner_version(&store).await,
        1,
        "the failed request never ran"
    );
    let u = store
        .inner()
        .load("u")
        .await
        .expect("load")
        .expect("thread u");
    assert_eq!(u.version, 3, "the commit-then-fail request was applied");
    let counts = store.counts(Operation::Append);
    assert_eq!(
        (counts.calls, counts.failed, counts.committed_then_failed),
        (3, 1, 1)
    );
}

#[tokio::test]
async fn batched_creates_count_as_creates() {
    let store = FlakyStore::with_seed(Arc::new(MemoryStore::new()), 11);
    store.fail_next(Operation::Create, 1);
    store.inject(
        Operation::Create,
        Fault::commit_then_fail().with_trigger(Trigger::EveryNth(3)),
    );
    let results = store
        .create_batch(
            ["a", "b", "c", "d"]
                .into_iter()
                .map(|id| Thread::new(id, "task"))
                .collect(),
        )
        .await;
    assert_eq!(results.len(), 4);
    assert!(
        matches!(results[0], Err(ThreadStoreError::Unavailable { .. })),
        "{:?}",
        results[0]
    );
    assert_eq!(results[1].as_ref().expect("b is created").version, 1);
    assert!(
        matches!(results[2], Err(ThreadStoreError::Timeout { .. })),
        "{:?}",
        results[2]
    );
    assert_eq!(results[3].as_ref().expect("d is created").version, 1);
    let inner = store.inner();
    assert_eq!(inner.load("a").await.expect("load"), None, "a never ran");
    for id in ["b", "c", "d"] {
        assert!(
            inner.load(id).await.expect("load").is_some(),
            "{id} was applied"
        );
    }
    let counts = store.counts(Operation::Create);
    assert_eq!(
        (counts.calls, counts.failed, counts.committed_then_failed),
        (4, 1, 1)
    );
    assert_eq!(store.remaining_failures(), 0);
}

#[tokio::test]
async fn hang_holds_a_call_until_released() {
    let store = Arc::new(flaky_with_thread(11).await);
    let gate = HangHandle::new();
    store.inject(Operation::Append, Fault::hang(&gate).next(1));

    let held = tokio::spawn({
        let store = Arc::clone(&store);
        async move {
            store
                .append("t", bump(), VersionPrecondition::Exact(1))
                .await
        }
    });
    gate.wait_until_hanging(1).await;
    assert_eq!(gate.hanging(), 1);
    assert!(!held.is_finished(), "the call is held");
    assert_eq!(
        inner_version(&store).await,
        1,
        "a held call has not reached the store"
    );
    // Other operations go on meanwhile.
    store.load("t").await.expect("loads are not held");

    gate.release();
    let committed = held
        .await
        .expect("the held task ends")
        .expect("the released append commits");
    assert_eq!(committed.version, 2);
    assert_eq!(gate.hanging(), 0);
    assert!(gate.is_released());
    assert_eq!(store.counts(Operation::Append).hung, 1);
    store
        .append("t", bump(), VersionPrecondition::Exact(2))
        .await
        .expect("a `next(1)` hang holds one call only");
}

#[tokio::test]
async fn a_released_gate_lets_later_calls_pass() {
    let store = flaky_with_thread(12).await;
    let gate = HangHandle::new();
    gate.release();
    store.inject(Operation::Load, Fault::hang(&gate));
    store
        .load("t")
        .await
        .expect("a released gate holds nothing");
    assert_eq!(gate.hanging(), 0);
}

#[tokio::test]
async fn a_dropped_held_call_is_no_longer_counted_as_hanging() {
    let store = Arc::new(flaky_with_thread(13).await);
    let gate = HangHandle::new();
    store.inject(Operation::Save, Fault::hang(&gate));
    let held = tokio::spawn({
        let store = Arc::clone(&store);
        async move { store.save(Thread::new("t", "task")).await }
    });
    gate.wait_until_hanging(1).await;
    held.abort();
    let ended = held.await.expect_err("the aborted task does not finish");
    assert!(ended.is_cancelled());
    assert_eq!(gate.hanging(), 0);
    assert_eq!(inner_version(&store).await, 1, "the dropped save never ran");
}

#[tokio::test]
async fn many_calls_hang_on_one_gate_and_all_go_on_when_released() {
    let store = Arc::new(flaky_with_thread(14).await);
    let gate = HangHandle::new();
    store.inject(Operation::Append, Fault::hang(&gate));
    let calls: Vec<_> = (0..8)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let changes = ChangeSet::default()
                    .with_message(NewMessage::with_id(format!("m{i}"), json!(i)));
                store.append("t", changes, VersionPrecondition::Any).await
            })
        })
        .collect();
    gate.wait_until_hanging(8).await;
    gate.release();
    for call in calls {
        call.await
            .expect("the task ends")
            .expect("the append commits");
    }
    assert_eq!(inner_version(&store).await, 9);
}

#[tokio::test(start_paused = true)]
async fn latency_delays_calls_in_tokio_time() {
    let store = flaky_with_thread(15).await;
    store.inject(Operation::Load, Fault::latency(Duration::from_secs(30)));
    store.inject(
        Operation::Load,
        Fault::latency(Duration::from_secs(5)).every(2),
    );

    let start = tokio::time::Instant::now();
    store.load("t").await.expect("a delayed load succeeds");
    assert_eq!(start.elapsed(), Duration::from_secs(30));

    let start = tokio::time::Instant::now();
    store.load("t").await.expect("a delayed load succeeds");
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(35),
        "latencies that fire together add up"
    );

    let start = tokio::time::Instant::now();
    store
        .append("t", bump(), VersionPrecondition::Any)
        .await
        .expect("append");
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "other operations are not delayed"
    );
    assert_eq!(store.counts(Operation::Load).delayed, 2);
}

#[tokio::test(start_paused = true)]
async fn a_delayed_call_is_pending_until_its_latency_has_passed() {
    let store = flaky_with_thread(16).await;
    store.inject(Operation::Append, Fault::latency(Duration::from_secs(10)));
    // Driven by hand: each poll shows where the call stands.
    let mut call = store.append("t", bump(), VersionPrecondition::Any);
    assert!(futures::poll!(&mut call).is_pending(), "the latency starts");
    tokio::time::advance(Duration::from_secs(9)).await;
    assert!(
        futures::poll!(&mut call).is_pending(),
        "pending before the latency has passed"
    );
    assert_eq!(inner_version(&store).await, 1);
    tokio::time::advance(Duration::from_secs(1)).await;
    match futures::poll!(&mut call) {
        std::task::Poll::Ready(committed) => {
            assert_eq!(committed.expect("the delayed append commits").version, 2);
        }
        std::task::Poll::Pending => panic!("still pending once the latency has passed"),
    }
}

#[tokio::test]
async fn latency_and_failure_fire_together() {
    let store = flaky_with_thread(17).await;
    store.inject(Operation::Load, Fault::latency(Duration::from_millis(1)));
    store.fail_next(Operation::Load, 1);
    store.load("t").await.expect_err("delayed, then failed");
    let counts = store.counts(Operation::Load);
    assert_eq!((counts.delayed, counts.failed), (1, 1));
}

#[tokio::test]
async fn clear_faults_empties_the_plan_and_keeps_the_counts() {
    let store = flaky_with_thread(18).await;
    store.fail_appends(5);
    store
        .append("t", bump(), VersionPrecondition::Any)
        .await
        .expect_err("the first of five");
    store.clear_faults();
    assert_eq!(store.remaining_failures(), 0);
    store
        .append("t", bump(), VersionPrecondition::Any)
        .await
        .expect("no faults left");
    assert_eq!(store.counts(Operation::Append).failed, 1);
}

#[tokio::test]
async fn remaining_failures_counts_scripted_failures_of_every_operation() {
    let store = flaky_with_thread(19).await;
    store.fail_appends(2);
    store.fail_next(Operation::Load, 3);
    store.inject(Operation::Save, Fault::commit_then_fail().next(1));
    store.inject(Operation::List, Fault::fail());
    store.inject(
        Operation::Delete,
        Fault::latency(Duration::from_millis(1)).next(4),
    );
    assert_eq!(store.remaining_failures(), 6);
}

#[test]
fn the_seed_is_kept_and_shown() {
    let store = FlakyStore::with_seed(Arc::new(MemoryStore::new()), 99);
    assert_eq!(store.seed(), 99);
    let debug = format!("{store:?}");
    assert!(debug.contains("seed: 99"), "{debug}");
    if std::env::var_os(task_testkit::SEED_ENV).is_none() {
        assert_ne!(
            FlakyStore::new(Arc::new(MemoryStore::new())).seed(),
            FlakyStore::new(Arc::new(MemoryStore::new())).seed(),
            "unseeded stores draw their own seeds"
        );
    }
}

#[test]
fn the_public_contract_holds() {
    fn is_a_thread_store<S: ThreadStore>(_: &S) {}
    let inner: Arc<dyn ThreadStore> = Arc::new(MemoryStore::new());
    let flaky = FlakyStore::new(inner);
    is_a_thread_store(&flaky);
    flaky.fail_appends(3);
    let remaining: usize = flaky.remaining_failures();
    assert_eq!(remaining, 3);
    let _shared: Arc<dyn ThreadStore> = Arc::new(flaky);
}

#[tokio::test]
async fn fail_appends_sets_the_count_instead_of_adding_to_it() {
    let store = flaky_with_thread(20).await;
    store.fail_appends(5);
    store.fail_appends(2);
    assert_eq!(
        store.remaining_failures(),
        2,
        "the second call set the count"
    );
    for _ in 0..2 {
        store
            .append("t", bump(), VersionPrecondition::Any)
            .await
            .expect_err("one of the two failures still to come");
    }
    assert_eq!(store.remaining_failures(), 0);
    store
        .append("t", bump(), VersionPrecondition::Any)
        .await
        .expect("the third append goes through: the count was 2, not 7");
    assert_eq!(store.counts(Operation::Append).failed, 2);
}

#[tokio::test]
async fn fail_appends_zero_heals_appends_whatever_failed_them() {
    let store = flaky_with_thread(21).await;
    store.fail_appends(3);
    store.inject(Operation::Append, Fault::fail());
    store.inject(Operation::Append, Fault::commit_then_fail().every(2));
    store
        .append("t", bump(), VersionPrecondition::Any)
        .await
        .expect_err("failing before the heal");
    store.fail_appends(0);
    assert_eq!(store.remaining_failures(), 0);
    for _ in 0..4 {
        store
            .append("t", bump(), VersionPrecondition::Any)
            .await
            .expect("healed: no append fails");
    }
    assert_eq!(inner_version(&store).await, 5, "the four appends landed");
}

#[tokio::test(start_paused = true)]
async fn fail_appends_keeps_latency_and_the_faults_of_other_operations() {
    let store = flaky_with_thread(22).await;
    store.inject(Operation::Append, Fault::latency(Duration::from_secs(1)));
    store.fail_next(Operation::Create, 1);
    store.fail_appends(1);
    assert_eq!(store.remaining_failures(), 2, "one append and one create");
    let started = tokio::time::Instant::now();
    store
        .append("t", bump(), VersionPrecondition::Any)
        .await
        .expect_err("the one append still to fail");
    store
        .append("t", bump(), VersionPrecondition::Any)
        .await
        .expect("then appends go through");
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(2),
        "the latency of appends stayed"
    );
    store
        .create(Thread::new("u", "task"))
        .await
        .expect_err("the create fault stayed");
    assert_eq!(store.remaining_failures(), 0);
}

#[tokio::test]
async fn inject_stacks_and_remaining_failures_counts_calls_not_faults() {
    let store = flaky_with_thread(23).await;
    // Two faults that fire on the same calls: three appends fail, not five.
    store.inject(Operation::Append, Fault::fail().next(2));
    store.inject(Operation::Append, Fault::fail().next(3));
    assert_eq!(store.remaining_failures(), 3);
    for remaining in [2, 1, 0] {
        store
            .append("t", bump(), VersionPrecondition::Any)
            .await
            .expect_err("a stacked failure");
        assert_eq!(store.remaining_failures(), remaining);
    }
    store
        .append("t", bump(), VersionPrecondition::Any)
        .await
        .expect("the stacked faults are spent");
    assert_eq!(store.counts(Operation::Append).failed, 3);
}

#[tokio::test]
async fn fail_appends_counts_each_request_of_a_batch() {
    let store = flaky_with_thread(24).await;
    store.fail_appends(2);
    let request = || AppendRequest {
        id: "t".to_owned(),
        changes: bump(),
        precondition: VersionPrecondition::Any,
    };
    let results = store
        .append_batch(vec![request(), request(), request()])
        .await;
    assert!(results[0].is_err() && results[1].is_err(), "{results:?}");
    assert_eq!(results[2].as_ref().map(|c| c.version).ok(), Some(2));
    assert_eq!(store.remaining_failures(), 0);
}
