//! Concurrent writers: exactly one winner per `Exact(v)` and per id, and no
//! committed update is ever lost.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::json;
use task_store::{
    ChangeSet, NewMessage, Thread, ThreadQuery, ThreadStore, ThreadStoreError, VersionPrecondition,
};
use tokio::sync::Barrier;

use super::CaseResult;
use super::support::{Context, join_workers, message_ids, run, seqs};

/// Of 64 concurrent appends with the same `Exact(v)`, exactly one commits; the others conflict and leave no trace.
pub async fn concurrent_exact_appends_have_exactly_one_winner(
    store: Arc<dyn ThreadStore>,
    prefix: &str,
) -> CaseResult {
    const WRITERS: usize = 64;
    run(store, prefix, |cx| async move {
        let id = cx.id("contended");
        cx.create(Thread::new(&id, cx.name("kind")).with_state(json!({ "winner": null })))
            .await?;
        let barrier = Arc::new(Barrier::new(WRITERS));
        let handles = (0..WRITERS)
            .map(|writer| {
                let (store, id, barrier) =
                    (Arc::clone(&cx.store), id.clone(), Arc::clone(&barrier));
                tokio::spawn(async move {
                    let changes = ChangeSet::state(json!({ "winner": writer }))
                        .with_message(NewMessage::with_id(format!("w{writer}"), json!(writer)));
                    barrier.wait().await;
                    store
                        .append(&id, changes, VersionPrecondition::Exact(1))
                        .await
                })
            })
            .collect();
        let results = join_workers(handles).await?;
        let mut winners = Vec::new();
        let mut conflicts = Vec::new();
        for (writer, result) in results.into_iter().enumerate() {
            match result {
                Ok(committed) => winners.push((writer, committed.version)),
                Err(ThreadStoreError::VersionConflict {
                    expected: 1,
                    actual,
                    ..
                }) => conflicts.push(actual),
                Err(other) => {
                    return Err(format!(
                        "writer {writer}: expected success or VersionConflict, got {other:?}"
                    ));
                }
            }
        }
        ensure!(
            winners.len() == 1,
            "{} of {WRITERS} concurrent Exact(1) appends committed (writer, version): {:?}",
            winners.len(),
            &winners[..winners.len().min(8)]
        );
        let (winner, version) = winners[0];
        ensure_eq!(version, 2, "the winner's version");
        ensure!(
            conflicts.iter().all(|&actual| actual == 2),
            "conflicts must report the actual version 2: {conflicts:?}"
        );
        let head = cx.load(&id).await?;
        ensure_eq!(head.version, 2, "the version after the race");
        ensure_eq!(
            head.state,
            json!({ "winner": winner }),
            "the state is the winner's"
        );
        let messages = cx.messages(&id).await?;
        ensure_eq!(
            message_ids(&messages),
            vec![Some(format!("w{winner}").as_str())],
            "the log holds the winner's message alone"
        );
        Ok(())
    })
    .await
}

/// 16 workers each add 1 to a counter 25 times by load-and-`Exact` loops: the count and version are exact, no update is lost.
pub async fn compare_and_swap_loops_lose_no_update(
    store: Arc<dyn ThreadStore>,
    prefix: &str,
) -> CaseResult {
    const WORKERS: u64 = 16;
    const INCREMENTS: u64 = 25;
    const MAX_ATTEMPTS: u64 = 100_000;
    run(store, prefix, |cx| async move {
        let id = cx.id("counter");
        cx.create(Thread::new(&id, cx.name("kind")).with_state(json!({ "count": 0 })))
            .await?;
        // Every worker reads version 1 before any of them writes, so a store
        // that ignores preconditions is caught for sure.
        let first_round = Arc::new(Barrier::new(WORKERS as usize));
        let handles = (0..WORKERS)
            .map(|worker| {
                let (store, id, barrier) =
                    (Arc::clone(&cx.store), id.clone(), Arc::clone(&first_round));
                tokio::spawn(async move {
                    let mut attempts = 0;
                    // Commits that did not land right on the version they
                    // read: only a store that ignores preconditions has any.
                    let mut skewed = Vec::new();
                    for increment in 0..INCREMENTS {
                        loop {
                            attempts += 1;
                            if attempts > MAX_ATTEMPTS {
                                return Err(format!(
                                    "worker {worker} gave up after {MAX_ATTEMPTS} attempts"
                                ));
                            }
                            let head = store
                                .load(&id)
                                .await
                                .ctx(format_args!("worker {worker}: load"))?
                                .ok_or_else(|| format!("worker {worker}: the counter vanished"))?;
                            if attempts == 1 {
                                barrier.wait().await;
                            }
                            let count = head.state["count"].as_u64().ok_or_else(|| {
                                format!("worker {worker}: no count in {}", head.state)
                            })?;
                            let changes = ChangeSet::state(json!({ "count": count + 1 }))
                                .with_message(NewMessage::with_id(
                                    format!("w{worker}-{increment}"),
                                    json!({ "worker": worker, "count": count + 1 }),
                                ));
                            match store
                                .append(&id, changes, VersionPrecondition::Exact(head.version))
                                .await
                            {
                                Ok(committed) => {
                                    if committed.version != head.version + 1 {
                                        skewed.push(format!(
                                            "worker {worker} read version {} and committed version {}",
                                            head.version, committed.version
                                        ));
                                    }
                                    break;
                                }
                                Err(error) if error.is_conflict() => continue,
                                Err(error) => {
                                    return Err(format!(
                                        "worker {worker}: append failed: {error:?}"
                                    ));
                                }
                            }
                        }
                    }
                    Ok(skewed)
                })
            })
            .collect();
        let mut skewed = Vec::new();
        for result in join_workers(handles).await? {
            skewed.extend(result?);
        }
        let total = WORKERS * INCREMENTS;
        let head = cx.load(&id).await?;
        let count = head.state["count"].as_u64().unwrap_or(0);
        ensure!(
            count == total,
            "lost updates: {WORKERS} workers added 1 to the counter {INCREMENTS} times each, \
             but it holds {count}, not {total} ({} updates lost); {} commits skipped a version, \
             e.g. {:?}",
            total.saturating_sub(count),
            skewed.len(),
            skewed.first()
        );
        ensure!(
            skewed.is_empty(),
            "{} commits did not land on the version they read: {:?}",
            skewed.len(),
            &skewed[..skewed.len().min(5)]
        );
        ensure_eq!(
            head.version,
            1 + total,
            "the version after {total} committed changes"
        );
        ensure_eq!(
            head.last_seq,
            total,
            "last_seq after {total} committed changes"
        );
        let messages = cx.messages(&id).await?;
        let counts: Vec<u64> = messages
            .iter()
            .map(|m| m.body["count"].as_u64().unwrap_or(0))
            .collect();
        ensure_eq!(
            counts,
            (1..=total).collect::<Vec<u64>>(),
            "each committed change saw the one before it"
        );
        Ok(())
    })
    .await
}

/// 32 concurrent `Any` appends of distinct messages all commit: the log and version count every one.
pub async fn concurrent_any_appends_all_commit(
    store: Arc<dyn ThreadStore>,
    prefix: &str,
) -> CaseResult {
    const WRITERS: u64 = 32;
    run(store, prefix, |cx| async move {
        let id = cx.id("log");
        cx.create(Thread::new(&id, cx.name("kind"))).await?;
        let barrier = Arc::new(Barrier::new(WRITERS as usize));
        let handles = (0..WRITERS)
            .map(|writer| {
                let (store, id, barrier) =
                    (Arc::clone(&cx.store), id.clone(), Arc::clone(&barrier));
                tokio::spawn(async move {
                    let changes = ChangeSet::default()
                        .with_message(NewMessage::with_id(format!("w{writer:02}"), json!(writer)));
                    barrier.wait().await;
                    store.append(&id, changes, VersionPrecondition::Any).await
                })
            })
            .collect();
        let mut versions = BTreeSet::new();
        for (writer, result) in join_workers(handles).await?.into_iter().enumerate() {
            let committed = result.ctx(format_args!("writer {writer}"))?;
            ensure_eq!(committed.appended, 1, "writer {writer}'s appended count");
            versions.insert(committed.version);
        }
        ensure_eq!(
            versions,
            (2..=WRITERS + 1).collect::<BTreeSet<u64>>(),
            "every writer got its own version"
        );
        let head = cx.load(&id).await?;
        ensure_eq!(head.version, WRITERS + 1, "the version");
        let messages = cx.messages(&id).await?;
        ensure_eq!(
            seqs(&messages),
            (1..=WRITERS).collect::<Vec<u64>>(),
            "the log's seqs"
        );
        let ids: BTreeSet<String> = messages.into_iter().filter_map(|m| m.id).collect();
        ensure_eq!(ids.len() as u64, WRITERS, "distinct messages in the log");
        Ok(())
    })
    .await
}

/// Of 32 concurrent `create`s of one id exactly one succeeds; the others get `AlreadyExists` and the winner's state stays.
pub async fn concurrent_creates_have_exactly_one_winner(
    store: Arc<dyn ThreadStore>,
    prefix: &str,
) -> CaseResult {
    const CREATORS: usize = 32;
    run(store, prefix, |cx| async move {
        let id = cx.id("contended");
        let kind = cx.name("kind");
        let barrier = Arc::new(Barrier::new(CREATORS));
        let handles = (0..CREATORS)
            .map(|creator| {
                let (store, barrier) = (Arc::clone(&cx.store), Arc::clone(&barrier));
                let thread = Thread::new(&id, &kind)
                    .with_state(json!({ "creator": creator }))
                    .with_message(NewMessage::with_id(format!("c{creator}"), json!(creator)));
                tokio::spawn(async move {
                    barrier.wait().await;
                    store.create(thread).await
                })
            })
            .collect();
        let mut winners = Vec::new();
        for (creator, result) in join_workers(handles).await?.into_iter().enumerate() {
            match result {
                Ok(committed) => {
                    ensure_eq!(committed.version, 1, "the winner's version");
                    winners.push(creator);
                }
                Err(ThreadStoreError::AlreadyExists { .. }) => {}
                Err(other) => {
                    return Err(format!(
                        "creator {creator}: expected success or AlreadyExists, got {other:?}"
                    ));
                }
            }
        }
        ensure!(
            winners.len() == 1,
            "{} of {CREATORS} concurrent creates succeeded: {winners:?}",
            winners.len()
        );
        let head = cx.load(&id).await?;
        ensure_eq!(head.version, 1, "the version after the race");
        ensure_eq!(
            head.state,
            json!({ "creator": winners[0] }),
            "the winner's state"
        );
        ensure_eq!(head.last_seq, 1, "the log holds the winner's message alone");
        Ok(())
    })
    .await
}

/// `create_batch`es and `create`s of the same ids racing from concurrent tasks have exactly one winner per id, whose thread is the one stored.
pub async fn create_batch_racing_create_has_one_winner_per_id(
    store: Arc<dyn ThreadStore>,
    prefix: &str,
) -> CaseResult {
    const IDS: usize = 40;
    const BATCHERS: usize = 4;
    const CREATORS: usize = 4;
    run(store, prefix, |cx| async move {
        let kind = cx.name("kind");
        let ids: Vec<String> = (0..IDS).map(|i| cx.id(&format!("t{i:02}"))).collect();
        let thread = |id: &str, contender: usize| {
            Thread::new(id, &kind)
                .with_state(json!({ "contender": contender }))
                .with_message(NewMessage::with_id(format!("c{contender}"), json!(contender)))
        };
        let barrier = Arc::new(Barrier::new(BATCHERS + CREATORS));
        let mut handles = Vec::new();
        for batcher in 0..BATCHERS {
            // Each batch walks the ids from another starting point.
            let mut threads: Vec<Thread> = ids.iter().map(|id| thread(id, batcher)).collect();
            threads.rotate_left(batcher * IDS / BATCHERS);
            let (store, barrier) = (Arc::clone(&cx.store), Arc::clone(&barrier));
            handles.push(tokio::spawn(async move {
                barrier.wait().await;
                let ids: Vec<String> = threads.iter().map(|t| t.id.clone()).collect();
                ids.into_iter()
                    .zip(store.create_batch(threads).await)
                    .collect::<Vec<_>>()
            }));
        }
        for creator in BATCHERS..BATCHERS + CREATORS {
            let threads: Vec<Thread> = ids.iter().rev().map(|id| thread(id, creator)).collect();
            let (store, barrier) = (Arc::clone(&cx.store), Arc::clone(&barrier));
            handles.push(tokio::spawn(async move {
                barrier.wait().await;
                let mut results = Vec::new();
                for thread in threads {
                    let id = thread.id.clone();
                    results.push((id, store.create(thread).await));
                }
                results
            }));
        }
        let mut winners: std::collections::BTreeMap<String, Vec<usize>> = Default::default();
        for (contender, results) in join_workers(handles).await?.into_iter().enumerate() {
            ensure_eq!(results.len(), IDS, "contender {contender}'s results");
            for (id, result) in results {
                match result {
                    Ok(committed) => {
                        ensure_eq!(committed.version, 1, "a winner's version");
                        winners.entry(id).or_default().push(contender);
                    }
                    Err(ThreadStoreError::AlreadyExists { .. }) => {}
                    Err(other) => {
                        return Err(format!(
                            "contender {contender} on {id:?}: expected success or AlreadyExists, got {other:?}"
                        ));
                    }
                }
            }
        }
        for id in &ids {
            let won = winners.get(id).cloned().unwrap_or_default();
            ensure!(
                won.len() == 1,
                "{id:?} was created by {} contenders: {won:?}",
                won.len()
            );
            let head = cx.load(id).await?;
            ensure_eq!(
                (head.version, head.state, head.last_seq),
                (1, json!({ "contender": won[0] }), 1),
                "the stored {id:?}"
            );
        }
        ensure_eq!(
            cx.list_pages(ThreadQuery::by_kind(&kind)).await?,
            ids,
            "listing by the kind after the race"
        );
        Ok(())
    })
    .await
}
