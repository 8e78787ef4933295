//! Bad input changes nothing: invalid ids are refused with `InvalidInput` by
//! every method that takes them, before anything is written.

use std::sync::Arc;

use serde_json::json;
use task_store::{
    AppendRequest, ChangeSet, MAX_ID_LEN, MessageQuery, NewMessage, Thread, ThreadQuery,
    ThreadStore, ThreadStoreError, VersionPrecondition,
};

use super::CaseResult;
use super::support::{Context, Cx, ensure_absent, invalid_ids, message_ids, query, run, snapshot};

/// `append`, `load`, `load_messages` and `delete` refuse `bad` as a thread id
/// with `InvalidInput`.
async fn refused_as_a_thread_id(cx: &Cx, bad: &str) -> CaseResult {
    expect_err!(
        cx.store
            .append(bad, ChangeSet::state(json!(1)), VersionPrecondition::Any)
            .await,
        ThreadStoreError::InvalidInput { .. },
        "append to the thread id {bad:?}"
    );
    expect_err!(
        cx.store.load(bad).await,
        ThreadStoreError::InvalidInput { .. },
        "load of the thread id {bad:?}"
    );
    expect_err!(
        cx.store.load_messages(bad, MessageQuery::default()).await,
        ThreadStoreError::InvalidInput { .. },
        "load_messages of the thread id {bad:?}"
    );
    expect_err!(
        cx.store.delete(bad).await,
        ThreadStoreError::InvalidInput { .. },
        "delete of the thread id {bad:?}"
    );
    Ok(())
}

/// Empty, over-long and control-character thread ids are refused with `InvalidInput` by every method, and nothing is written.
pub async fn invalid_thread_ids_are_refused_and_nothing_written(
    store: Arc<dyn ThreadStore>,
    prefix: &str,
) -> CaseResult {
    run(store, prefix, |cx| async move {
        let (parent, kind) = (cx.name("parent"), cx.name("kind"));
        for bad in invalid_ids(&cx.prefix) {
            let thread = Thread::new(&bad, &kind).with_parent(&parent);
            expect_err!(
                cx.store.create(thread.clone()).await,
                ThreadStoreError::InvalidInput { .. },
                "create with the thread id {bad:?}"
            );
            expect_err!(
                cx.store.save(thread).await,
                ThreadStoreError::InvalidInput { .. },
                "save with the thread id {bad:?}"
            );
            refused_as_a_thread_id(&cx, &bad).await?;
            let mut results = cx
                .store
                .append_batch(vec![AppendRequest {
                    id: bad.clone(),
                    changes: ChangeSet::state(json!(1)),
                    precondition: VersionPrecondition::Any,
                }])
                .await;
            ensure_eq!(results.len(), 1, "append_batch's result count");
            expect_err!(
                results.remove(0),
                ThreadStoreError::InvalidInput { .. },
                "append_batch to the thread id {bad:?}"
            );
        }
        for query in [ThreadQuery::by_parent(&parent), ThreadQuery::by_kind(&kind)] {
            let listed = cx.list_pages(query.clone()).await?;
            ensure!(
                listed.is_empty(),
                "refused writes were indexed: {query:?} lists {listed:?}"
            );
        }
        Ok(())
    })
    .await
}

/// Invalid parents and kinds are refused with `InvalidInput` by `create` and `save`, and nothing is written.
pub async fn invalid_parents_and_kinds_are_refused_and_nothing_written(
    store: Arc<dyn ThreadStore>,
    prefix: &str,
) -> CaseResult {
    run(store, prefix, |cx| async move {
        let fresh = cx.id("fresh");
        let existing = cx.id("existing");
        cx.create(
            Thread::new(&existing, cx.name("kind"))
                .with_parent(cx.name("parent"))
                .with_state(json!({ "kept": true })),
        )
        .await?;
        let before = cx.load(&existing).await?;
        for bad in invalid_ids(&cx.prefix) {
            for (what, thread) in [
                ("kind", Thread::new(&fresh, &bad)),
                (
                    "parent",
                    Thread::new(&fresh, cx.name("kind")).with_parent(&bad),
                ),
            ] {
                expect_err!(
                    cx.store.create(thread.clone()).await,
                    ThreadStoreError::InvalidInput { .. },
                    "create with the {what} {bad:?}"
                );
                expect_err!(
                    cx.store.save(thread.clone()).await,
                    ThreadStoreError::InvalidInput { .. },
                    "save of a new thread with the {what} {bad:?}"
                );
                let mut over = thread;
                over.id.clone_from(&existing);
                over.state = json!({ "kept": false });
                expect_err!(
                    cx.store.save(over).await,
                    ThreadStoreError::InvalidInput { .. },
                    "save over an existing thread with the {what} {bad:?}"
                );
            }
        }
        let head = cx.store.load(&fresh).await.ctx("load")?;
        ensure!(
            head.is_none(),
            "a refused write created the thread: {head:?}"
        );
        ensure_eq!(
            cx.load(&existing).await?,
            before,
            "the existing thread after refused saves"
        );
        Ok(())
    })
    .await
}

/// Invalid message ids are refused with `InvalidInput` by `create`, `append` and `save`, and nothing is written.
pub async fn invalid_message_ids_are_refused_and_nothing_written(
    store: Arc<dyn ThreadStore>,
    prefix: &str,
) -> CaseResult {
    run(store, prefix, |cx| async move {
        let fresh = cx.id("fresh");
        let existing = cx.id("existing");
        cx.create(
            Thread::new(&existing, cx.name("kind"))
                .with_message(NewMessage::with_id("ok", json!(1))),
        )
        .await?;
        let before = cx.load(&existing).await?;
        for bad in invalid_ids("") {
            // A good message first: a partial write would keep it.
            let good = NewMessage::with_id("good", json!("good"));
            let bad_message = NewMessage::with_id(bad.clone(), json!("bad"));
            expect_err!(
                cx.store
                    .create(
                        Thread::new(&fresh, cx.name("kind"))
                            .with_message(good.clone())
                            .with_message(bad_message.clone())
                    )
                    .await,
                ThreadStoreError::InvalidInput { .. },
                "create with the message id {bad:?}"
            );
            let changes = ChangeSet::state(json!("changed"))
                .with_message(good.clone())
                .with_message(bad_message.clone())
                .with_terminal(true);
            for precondition in [VersionPrecondition::Exact(1), VersionPrecondition::Any] {
                expect_err!(
                    cx.store
                        .append(&existing, changes.clone(), precondition)
                        .await,
                    ThreadStoreError::InvalidInput { .. },
                    "append with the message id {bad:?} and {precondition:?}"
                );
            }
            expect_err!(
                cx.store
                    .save(
                        Thread::new(&existing, cx.name("kind"))
                            .with_state(json!("changed"))
                            .with_message(good)
                            .with_message(bad_message)
                    )
                    .await,
                ThreadStoreError::InvalidInput { .. },
                "save with the message id {bad:?}"
            );
        }
        let head = cx.store.load(&fresh).await.ctx("load")?;
        ensure!(
            head.is_none(),
            "a refused create wrote the thread: {head:?}"
        );
        ensure_eq!(
            cx.load(&existing).await?,
            before,
            "the existing thread after refused writes"
        );
        ensure_eq!(
            message_ids(&cx.messages(&existing).await?),
            vec![Some("ok")],
            "the log after refused writes"
        );
        Ok(())
    })
    .await
}

/// `list_threads` refuses an invalid parent or kind with `InvalidInput`.
pub async fn invalid_query_ids_are_refused(
    store: Arc<dyn ThreadStore>,
    prefix: &str,
) -> CaseResult {
    run(store, prefix, |cx| async move {
        for bad in invalid_ids(&cx.prefix) {
            for query in [
                ThreadQuery::by_parent(&bad),
                ThreadQuery::by_kind(&bad),
                ThreadQuery::by_parent(cx.name("parent")).with_kind(&bad),
                ThreadQuery::by_parent(&bad).with_kind(cx.name("kind")),
            ] {
                expect_err!(
                    cx.store.list_threads(query.clone()).await,
                    ThreadStoreError::InvalidInput { .. },
                    "list_threads {query:?}"
                );
            }
        }
        Ok(())
    })
    .await
}

/// Every argument of every method that takes an id refuses every invalid id
/// (empty, over-long in bytes, C0, DEL and C1 control characters) with
/// `InvalidInput`: the thread id, kind, parent and message ids of `create`,
/// `save` (of a new thread and over one) and each item of `create_batch`; the
/// thread id and message ids of `append` and each request of `append_batch`;
/// the id of `delete`, `load` and `load_messages`; the parent and kind of
/// `list_threads`, open or not; the channel of `signal` and `watch`. Valid
/// items of the same batches go through, and nothing else is written.
pub async fn invalid_ids_are_refused_in_every_argument(
    store: Arc<dyn ThreadStore>,
    prefix: &str,
) -> CaseResult {
    run(store, prefix, |cx| async move {
        let (parent, kind) = (cx.name("parent"), cx.name("kind"));
        let (existing, sink) = (cx.id("existing"), cx.id("sink"));
        cx.create(
            Thread::new(&existing, &kind)
                .with_parent(&parent)
                .with_state(json!({ "kept": true }))
                .with_message(NewMessage::with_id("ok", json!(1))),
        )
        .await?;
        cx.create(Thread::new(&sink, cx.name("sink-kind"))).await?;
        let before = snapshot(&cx, &existing).await?;
        let mut created = vec![existing.clone()];
        for (i, bad) in invalid_ids(&cx.prefix).into_iter().enumerate() {
            let fresh = cx.id(&format!("fresh-{i}"));
            let good = NewMessage::with_id(format!("good-{i}"), json!("good"));
            let bad_message = NewMessage::with_id(bad.clone(), json!("bad"));
            // Threads that each carry the invalid id in one place.
            let variants = |id: &str| {
                vec![
                    ("kind", Thread::new(id, &bad).with_parent(&parent)),
                    ("parent", Thread::new(id, &kind).with_parent(&bad)),
                    (
                        "message id",
                        Thread::new(id, &kind)
                            .with_parent(&parent)
                            .with_message(good.clone())
                            .with_message(bad_message.clone()),
                    ),
                ]
            };
            let mut threads = variants(&fresh);
            threads.push(("thread id", Thread::new(&bad, &kind).with_parent(&parent)));
            for (what, thread) in &threads {
                expect_err!(
                    cx.store.create(thread.clone()).await,
                    ThreadStoreError::InvalidInput { .. },
                    "create with the {what} {bad:?}"
                );
                expect_err!(
                    cx.store.save(thread.clone()).await,
                    ThreadStoreError::InvalidInput { .. },
                    "save of a new thread with the {what} {bad:?}"
                );
            }
            for (what, thread) in variants(&existing) {
                expect_err!(
                    cx.store.save(thread).await,
                    ThreadStoreError::InvalidInput { .. },
                    "save over a thread with the {what} {bad:?}"
                );
            }
            let valid = cx.id(&format!("valid-{i}"));
            let mut batch: Vec<Thread> = threads.iter().map(|(_, t)| t.clone()).collect();
            batch.push(Thread::new(&valid, &kind).with_parent(&parent));
            let results = cx.store.create_batch(batch).await;
            ensure_eq!(
                results.len(),
                threads.len() + 1,
                "create_batch's result count"
            );
            for ((what, _), result) in threads.iter().zip(&results) {
                expect_err!(
                    result.clone(),
                    ThreadStoreError::InvalidInput { .. },
                    "create_batch item with the {what} {bad:?}"
                );
            }
            results[threads.len()]
                .clone()
                .ctx("the valid item of a create_batch with invalid ones")?;
            created.push(valid);

            refused_as_a_thread_id(&cx, &bad).await?;
            let bad_changes = ChangeSet::state(json!("changed"))
                .with_message(good.clone())
                .with_message(bad_message.clone());
            expect_err!(
                cx.store
                    .append(&existing, bad_changes.clone(), VersionPrecondition::Any)
                    .await,
                ThreadStoreError::InvalidInput { .. },
                "append with the message id {bad:?}"
            );
            let results = cx
                .store
                .append_batch(vec![
                    AppendRequest {
                        id: bad.clone(),
                        changes: ChangeSet::state(json!(1)),
                        precondition: VersionPrecondition::Any,
                    },
                    AppendRequest {
                        id: existing.clone(),
                        changes: bad_changes,
                        precondition: VersionPrecondition::Any,
                    },
                    AppendRequest {
                        id: sink.clone(),
                        changes: ChangeSet::default().with_message(good.clone()),
                        precondition: VersionPrecondition::Any,
                    },
                ])
                .await;
            ensure_eq!(results.len(), 3, "append_batch's result count");
            for (what, result) in ["thread id", "message id"].iter().zip(&results) {
                expect_err!(
                    result.clone(),
                    ThreadStoreError::InvalidInput { .. },
                    "append_batch request with the {what} {bad:?}"
                );
            }
            let committed = results[2]
                .clone()
                .ctx("the valid request of an append_batch with invalid ones")?;
            ensure_eq!(committed.appended, 1, "the valid request's message");

            for open_only in [false, true] {
                for listing in [
                    query(Some(&bad), None, open_only),
                    query(None, Some(&bad), open_only),
                    query(Some(&parent), Some(&bad), open_only),
                    query(Some(&bad), Some(&kind), open_only),
                ] {
                    expect_err!(
                        cx.store.list_threads(listing.clone()).await,
                        ThreadStoreError::InvalidInput { .. },
                        "list_threads {listing:?}"
                    );
                }
            }
            if let Some(signals) = cx.store.signals() {
                expect_err!(
                    signals.signal(&bad).await,
                    ThreadStoreError::InvalidInput { .. },
                    "signal on the channel {bad:?}"
                );
                expect_err!(
                    signals.watch(&bad).await.map(|_| ()),
                    ThreadStoreError::InvalidInput { .. },
                    "watch of the channel {bad:?}"
                );
            }
            ensure_absent(&cx, &fresh, "every write of it was refused").await?;
        }
        ensure_eq!(
            snapshot(&cx, &existing).await?,
            before,
            "the existing thread after refused writes"
        );
        created.sort();
        for open_only in [false, true] {
            ensure_eq!(
                cx.list_pages(query(Some(&parent), None, open_only)).await?,
                created,
                "the parent's listing (open_only {open_only}): the existing and the valid items"
            );
            ensure_eq!(
                cx.list_pages(query(None, Some(&kind), open_only)).await?,
                created,
                "the kind's listing (open_only {open_only}): the existing and the valid items"
            );
        }
        ensure_eq!(
            cx.messages(&sink).await?.len(),
            invalid_ids(&cx.prefix).len(),
            "messages of the valid batch requests"
        );
        Ok(())
    })
    .await
}

/// An id of `prefix` padded with `unit` (and ASCII before it) to exactly
/// [`MAX_ID_LEN`] bytes.
fn exactly_max_len(prefix: &str, unit: &str) -> String {
    let room = MAX_ID_LEN - prefix.len();
    format!(
        "{prefix}{}{}",
        "x".repeat(room % unit.len()),
        unit.repeat(room / unit.len())
    )
}

/// Ids at the edge of validity are accepted and round-trip exactly, as thread
/// id, parent, kind and message id: exactly `MAX_ID_LEN` bytes of two- and
/// four-byte characters, and characters that look odd but are not control
/// characters (U+00A0, U+00AD, U+200B, U+2028, U+202E, U+FEFF, a combining
/// accent).
pub async fn ids_at_the_edge_of_validity_round_trip(
    store: Arc<dyn ThreadStore>,
    prefix: &str,
) -> CaseResult {
    run(store, prefix, |cx| async move {
        let names = [
            exactly_max_len(&cx.prefix, "\u{e9}"),
            exactly_max_len(&cx.prefix, "\u{1f600}"),
            cx.name("nbsp\u{a0}shy\u{ad}zwsp\u{200b}"),
            cx.name("line\u{2028}sep"),
            cx.name("rtl\u{202e}bom\u{feff}"),
            cx.name("e\u{301}"),
        ];
        for name in &names {
            ensure!(
                name.len() <= MAX_ID_LEN && task_store::validate_id("id", name).is_ok(),
                "the suite's own id {name:?} is valid"
            );
            let id = cx.id(name.trim_start_matches(&cx.prefix));
            ensure_eq!(&id, name, "the id under the case's prefix");
            cx.create(
                Thread::new(&id, name)
                    .with_parent(name)
                    .with_state(json!({ "name": name }))
                    .with_message(NewMessage::with_id(name, json!(1))),
            )
            .await?;
            let head = cx.load(&id).await?;
            ensure_eq!(
                (&head.id, &head.kind, head.parent_id.as_ref(), &head.state),
                (&id, name, Some(name), &json!({ "name": name })),
                "the head of {id:?}"
            );
            ensure_eq!(
                message_ids(&cx.messages(&id).await?),
                vec![Some(name.as_str())],
                "the log of {id:?}"
            );
            let committed = cx
                .append(
                    &id,
                    ChangeSet::default().with_message(NewMessage::with_id(name, json!(2))),
                    VersionPrecondition::Exact(1),
                )
                .await?;
            ensure_eq!(
                committed.skipped,
                1,
                "the message id {name:?} de-duplicated"
            );
            for listing in [
                query(Some(name), None, false),
                query(None, Some(name), false),
                query(Some(name), Some(name), true),
            ] {
                ensure_eq!(
                    cx.list_pages(listing.clone()).await?,
                    vec![id.clone()],
                    "{listing:?}"
                );
            }
        }
        Ok(())
    })
    .await
}
