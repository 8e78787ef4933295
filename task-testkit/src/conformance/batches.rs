//! `append_batch` and `create_batch`: each item atomic on its own, with its
//! own result, in order.

use std::sync::Arc;

use serde_json::json;
use task_store::{
    AppendRequest, ChangeSet, Committed, Message, NewMessage, Thread, ThreadHead, ThreadQuery,
    ThreadStore, ThreadStoreError, VersionPrecondition,
};

use super::CaseResult;
use super::support::{Context, Cx, message_ids, metadata, run};

/// `append_batch` applies each request on its own, in order, and returns one result per request.
pub async fn append_batch_returns_one_result_per_request(
    store: Arc<dyn ThreadStore>,
    prefix: &str,
) -> CaseResult {
    run(store, prefix, |cx| async move {
        let (a, b, missing) = (cx.id("a"), cx.id("b"), cx.id("missing"));
        cx.create(Thread::new(&a, cx.name("kind"))).await?;
        cx.create(Thread::new(&b, cx.name("kind"))).await?;
        let empty = cx.store.append_batch(Vec::new()).await;
        ensure!(
            empty.is_empty(),
            "an empty batch gave {} results",
            empty.len()
        );
        let request = |id: &str, changes: ChangeSet, precondition| AppendRequest {
            id: id.to_owned(),
            changes,
            precondition,
        };
        let results = cx
            .store
            .append_batch(vec![
                request(
                    &a,
                    ChangeSet::state(json!("a2")).with_message(NewMessage::with_id("m", json!(1))),
                    VersionPrecondition::Exact(1),
                ),
                request(
                    &a,
                    ChangeSet::state(json!("a3")),
                    VersionPrecondition::Exact(2),
                ),
                request(
                    &b,
                    ChangeSet::state(json!("stale")),
                    VersionPrecondition::Exact(7),
                ),
                request(
                    &missing,
                    ChangeSet::state(json!(1)),
                    VersionPrecondition::Any,
                ),
                request(
                    &format!("{}bad\nid", cx.prefix),
                    ChangeSet::state(json!(1)),
                    VersionPrecondition::Any,
                ),
                request(&b, ChangeSet::state(json!("b2")), VersionPrecondition::Any),
                request(
                    &a,
                    ChangeSet::state(json!("bad message"))
                        .with_message(NewMessage::with_id("", json!(0))),
                    VersionPrecondition::Any,
                ),
                request(
                    &a,
                    ChangeSet::default().with_message(NewMessage::with_id("m", json!(2))),
                    VersionPrecondition::Exact(3),
                ),
            ])
            .await;
        ensure_eq!(results.len(), 8, "results of a batch of 8");
        let mut results = results.into_iter();
        let mut next = || {
            results
                .next()
                .ok_or_else(|| "a result is missing".to_owned())
        };
        let first = next()?.ctx("request 0 (Exact(1) on a)")?;
        ensure_eq!(first.version, 2, "request 0's version");
        let second = next()?.ctx("request 1 (Exact(2) on a, after request 0)")?;
        ensure_eq!(second.version, 3, "request 1's version");
        expect_err!(
            next()?,
            ThreadStoreError::VersionConflict {
                expected: 7,
                actual: 1,
                ..
            },
            "request 2 (stale Exact on b)"
        );
        expect_err!(
            next()?,
            ThreadStoreError::NotFound { .. },
            "request 3 (a missing thread)"
        );
        expect_err!(
            next()?,
            ThreadStoreError::InvalidInput { .. },
            "request 4 (an invalid id)"
        );
        let sixth = next()?.ctx("request 5 (Any on b, after a failed request on b)")?;
        ensure_eq!(sixth.version, 2, "request 5's version");
        expect_err!(
            next()?,
            ThreadStoreError::InvalidInput { .. },
            "request 6 (an invalid message id)"
        );
        let last = next()?.ctx("request 7 (a known message on a)")?;
        ensure_eq!(
            last,
            Committed {
                version: 3,
                last_seq: 1,
                appended: 0,
                skipped: 1
            },
            "request 7 changed nothing"
        );
        let head_a = cx.load(&a).await?;
        ensure_eq!(
            (head_a.version, head_a.state),
            (3, json!("a3")),
            "thread a after the batch"
        );
        let head_b = cx.load(&b).await?;
        ensure_eq!(
            (head_b.version, head_b.state),
            (2, json!("b2")),
            "thread b after the batch"
        );
        let head = cx.store.load(&missing).await.ctx("load missing")?;
        ensure!(
            head.is_none(),
            "the batch created a missing thread: {head:?}"
        );
        Ok(())
    })
    .await
}

/// A thread shaped like a finished task of the task layer: a state, two
/// messages with ids (and a repeat of the first id, to be skipped), a parent
/// from `parents`, and the finished mark on every other thread.
fn batch_thread(cx: &Cx, i: usize, id: &str, parents: usize) -> Thread {
    let mut thread = Thread::new(id, cx.name("task"))
        .with_parent(cx.name(&format!("owner{}", i % parents)))
        .with_metadata(metadata(json!({ "n": i })))
        .with_state(json!({ "status": "completed", "n": i, "text": "ünï ✓" }))
        .with_message(NewMessage::with_id(
            "a1:start",
            json!({ "event": "start", "n": i }),
        ))
        .with_message(NewMessage::with_id(
            "a1:finish",
            json!({ "event": "finish", "n": i }),
        ))
        .with_message(NewMessage::with_id("a1:start", json!("a repeat, skipped")));
    thread.terminal = i.is_multiple_of(2);
    thread
}

/// `create_batch` of many threads creates each at version 1 with its state, metadata, messages (repeated ids skipped), finished mark and index entries, one result per thread in order.
pub async fn create_batch_round_trips_many_threads(
    store: Arc<dyn ThreadStore>,
    prefix: &str,
) -> CaseResult {
    // More than one chunk of any sensible backend, and more than one page.
    const THREADS: usize = 1100;
    const PARENTS: usize = 7;
    run(store, prefix, |cx| async move {
        let ids: Vec<String> = (0..THREADS).map(|i| cx.id(&format!("t{i:04}"))).collect();
        let threads: Vec<Thread> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| batch_thread(&cx, i, id, PARENTS))
            .collect();
        let results = cx.store.create_batch(threads.clone()).await;
        ensure_eq!(results.len(), THREADS, "results of a batch of {THREADS}");
        for (i, result) in results.into_iter().enumerate() {
            let committed = result.ctx(format_args!("item {i} of the batch"))?;
            ensure_eq!(
                committed,
                Committed {
                    version: 1,
                    last_seq: 2,
                    appended: 2,
                    skipped: 1
                },
                "item {i}'s result"
            );
        }

        for (chunk_ids, chunk_threads) in ids.chunks(64).zip(threads.chunks(64)) {
            let cx = &cx;
            let loads = chunk_ids.iter().map(|id| async move {
                let head = cx.load(id).await?;
                let messages = cx.messages(id).await?;
                Ok::<_, String>((head, messages))
            });
            for (outcome, thread) in futures::future::join_all(loads)
                .await
                .into_iter()
                .zip(chunk_threads)
            {
                let (head, messages) = outcome?;
                let expected = ThreadHead {
                    id: thread.id.clone(),
                    kind: thread.kind.clone(),
                    parent_id: thread.parent_id.clone(),
                    metadata: thread.metadata.clone(),
                    state: thread.state.clone(),
                    version: 1,
                    last_seq: 2,
                    terminal: thread.terminal,
                };
                ensure_eq!(head, expected, "the head of {:?}", thread.id);
                let expected: Vec<Message> = thread.messages[..2]
                    .iter()
                    .zip(1..)
                    .map(|(m, seq)| Message {
                        seq,
                        id: m.id.clone(),
                        body: m.body.clone(),
                    })
                    .collect();
                ensure_eq!(messages, expected, "the log of {:?}", thread.id);
            }
        }

        for p in 0..PARENTS {
            let parent = cx.name(&format!("owner{p}"));
            let expected: Vec<String> = ids
                .iter()
                .enumerate()
                .filter(|(i, _)| i % PARENTS == p)
                .map(|(_, id)| id.clone())
                .collect();
            ensure_eq!(
                cx.list_pages(ThreadQuery::by_parent(&parent).with_limit(50))
                    .await?,
                expected,
                "listing by the parent {parent:?}"
            );
            ensure_eq!(
                cx.list_pages(ThreadQuery::by_parent(&parent).with_kind(cx.name("task")))
                    .await?,
                expected,
                "listing by the parent {parent:?} and the kind"
            );
        }
        ensure_eq!(
            cx.list_pages(ThreadQuery::by_kind(cx.name("task"))).await?,
            ids,
            "listing by the kind"
        );

        // The message ids were recorded: a retried message is skipped, a new
        // one continues the log, and the version checks hold.
        for id in [&ids[0], &ids[1], &ids[THREADS - 1]] {
            let committed = cx
                .append(
                    id,
                    ChangeSet::default()
                        .with_message(NewMessage::with_id("a1:finish", json!("again")))
                        .with_message(NewMessage::with_id("a2:start", json!("next"))),
                    VersionPrecondition::Exact(1),
                )
                .await?;
            ensure_eq!(
                committed,
                Committed {
                    version: 2,
                    last_seq: 3,
                    appended: 1,
                    skipped: 1
                },
                "an append to the batch-created {id:?}"
            );
        }
        Ok(())
    })
    .await
}

/// In a `create_batch`, a taken id gets `AlreadyExists` and is left as it was, an invalid item gets `InvalidInput` and nothing is written for it, and the other items are created.
pub async fn create_batch_refuses_taken_and_invalid_items_alone(
    store: Arc<dyn ThreadStore>,
    prefix: &str,
) -> CaseResult {
    run(store, prefix, |cx| async move {
        let kind = cx.name("kind");
        let taken = cx.id("taken");
        cx.create(
            Thread::new(&taken, &kind)
                .with_parent(cx.name("first-parent"))
                .with_state(json!("first"))
                .with_message(NewMessage::with_id("m", json!(1))),
        )
        .await?;
        let before = cx.load(&taken).await?;
        let (a, b, c) = (cx.id("a"), cx.id("b"), cx.id("c"));
        let bad_message = cx.id("bad-message");
        let bad_parent = cx.id("bad-parent");
        let other_parent = cx.name("other-parent");
        let thread = |id: &str, state: &str| {
            Thread::new(id, &kind)
                .with_parent(&other_parent)
                .with_state(json!(state))
                .with_message(NewMessage::with_id("m", json!(state)))
        };
        let results = cx
            .store
            .create_batch(vec![
                thread(&a, "a"),
                thread(&taken, "second"),
                thread(&format!("{}bad\nid", cx.prefix), "bad id"),
                thread(&b, "b"),
                thread(&bad_message, "bad message")
                    .with_message(NewMessage::with_id("", json!("empty id"))),
                thread(&bad_parent, "bad parent").with_parent(format!("{}p\0", cx.prefix)),
                thread(&c, "c"),
            ])
            .await;
        ensure_eq!(results.len(), 7, "results of a batch of 7");
        let mut results = results.into_iter();
        let mut next = || {
            results
                .next()
                .ok_or_else(|| "a result is missing".to_owned())
        };
        ensure_eq!(
            next()?.ctx("item 0 (fresh)")?.version,
            1,
            "item 0's version"
        );
        let error = expect_err!(
            next()?,
            ThreadStoreError::AlreadyExists { .. },
            "item 1 (a taken id)"
        );
        if let ThreadStoreError::AlreadyExists { id } = &error {
            ensure_eq!(id, &taken, "the id named by AlreadyExists");
        }
        expect_err!(
            next()?,
            ThreadStoreError::InvalidInput { .. },
            "item 2 (an invalid id)"
        );
        ensure_eq!(
            next()?.ctx("item 3 (fresh)")?.version,
            1,
            "item 3's version"
        );
        expect_err!(
            next()?,
            ThreadStoreError::InvalidInput { .. },
            "item 4 (an invalid message id)"
        );
        expect_err!(
            next()?,
            ThreadStoreError::InvalidInput { .. },
            "item 5 (an invalid parent)"
        );
        ensure_eq!(
            next()?.ctx("item 6 (fresh)")?.version,
            1,
            "item 6's version"
        );

        ensure_eq!(cx.load(&taken).await?, before, "the taken thread's head");
        ensure_eq!(
            cx.messages(&taken).await?.len(),
            1,
            "the taken thread's log"
        );
        for refused in [&bad_message, &bad_parent] {
            let head = cx.store.load(refused).await.ctx("load a refused item")?;
            ensure!(head.is_none(), "a refused item was written: {head:?}");
        }
        for (id, state) in [(&a, "a"), (&b, "b"), (&c, "c")] {
            let head = cx.load(id).await?;
            ensure_eq!(
                (head.version, head.state),
                (1, json!(state)),
                "the created {id:?}"
            );
        }
        let mut expected = vec![a.clone(), b.clone(), c.clone()];
        expected.sort();
        ensure_eq!(
            cx.list_pages(ThreadQuery::by_parent(&other_parent)).await?,
            expected,
            "listing the batch's parent (the taken and refused items are not there)"
        );
        Ok(())
    })
    .await
}

/// An id given twice in one `create_batch` is created by its first valid item; the later one gets `AlreadyExists` and the first stays.
pub async fn create_batch_with_a_repeated_id_creates_the_first(
    store: Arc<dyn ThreadStore>,
    prefix: &str,
) -> CaseResult {
    run(store, prefix, |cx| async move {
        let kind = cx.name("kind");
        let (twice, refused_first) = (cx.id("twice"), cx.id("refused-first"));
        let (first_parent, second_parent) = (cx.name("first-parent"), cx.name("second-parent"));
        let thread = |id: &str, parent: &str, who: &str| {
            Thread::new(id, &kind)
                .with_parent(parent)
                .with_state(json!({ "who": who }))
                .with_message(NewMessage::with_id(who, json!(who)))
        };
        let results = cx
            .store
            .create_batch(vec![
                thread(&twice, &first_parent, "first"),
                // An invalid item does not take its id.
                thread(&refused_first, &second_parent, "invalid")
                    .with_message(NewMessage::with_id("", json!(0))),
                thread(&twice, &second_parent, "second"),
                thread(&refused_first, &first_parent, "valid"),
                thread(&refused_first, &second_parent, "third"),
            ])
            .await;
        ensure_eq!(results.len(), 5, "results of a batch of 5");
        let mut results = results.into_iter();
        let mut next = || {
            results
                .next()
                .ok_or_else(|| "a result is missing".to_owned())
        };
        ensure_eq!(
            next()?.ctx("item 0 (the first of the id)")?.version,
            1,
            "item 0's version"
        );
        expect_err!(
            next()?,
            ThreadStoreError::InvalidInput { .. },
            "item 1 (an invalid message id)"
        );
        expect_err!(
            next()?,
            ThreadStoreError::AlreadyExists { .. },
            "item 2 (the id of item 0 again)"
        );
        ensure_eq!(
            next()?
                .ctx("item 3 (the id of the invalid item 1)")?
                .version,
            1,
            "item 3's version"
        );
        expect_err!(
            next()?,
            ThreadStoreError::AlreadyExists { .. },
            "item 4 (the id of item 3 again)"
        );

        for (id, who) in [(&twice, "first"), (&refused_first, "valid")] {
            let head = cx.load(id).await?;
            ensure_eq!(
                (head.version, head.state, head.parent_id),
                (1, json!({ "who": who }), Some(first_parent.clone())),
                "the stored {id:?}"
            );
            ensure_eq!(
                message_ids(&cx.messages(id).await?),
                vec![Some(who)],
                "the log of {id:?}"
            );
        }
        let listed = cx
            .list_pages(ThreadQuery::by_parent(&second_parent))
            .await?;
        ensure!(
            listed.is_empty(),
            "refused items were indexed under their parent: {listed:?}"
        );
        Ok(())
    })
    .await
}

/// `create_batch` of no threads returns no results.
pub async fn create_batch_of_nothing_returns_nothing(
    store: Arc<dyn ThreadStore>,
    prefix: &str,
) -> CaseResult {
    run(store, prefix, |cx| async move {
        let results = cx.store.create_batch(Vec::new()).await;
        ensure!(
            results.is_empty(),
            "an empty batch gave {} results",
            results.len()
        );
        Ok(())
    })
    .await
}
