//! Bad input changes nothing: invalid ids are refused with `InvalidInput` by
//! every method that takes them, before anything is written.

use std::sync::Arc;

use serde_json::json;
use task_store::{
    AppendRequest, ChangeSet, MessageQuery, NewMessage, Thread, ThreadQuery, ThreadStore,
    ThreadStoreError, VersionPrecondition,
};

use super::CaseResult;
use super::support::{Context, invalid_ids, message_ids, run};

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
            expect_err!(
                cx.store
                    .append(&bad, ChangeSet::state(json!(1)), VersionPrecondition::Any)
                    .await,
                ThreadStoreError::InvalidInput { .. },
                "append to the thread id {bad:?}"
            );
            expect_err!(
                cx.store.load(&bad).await,
                ThreadStoreError::InvalidInput { .. },
                "load of the thread id {bad:?}"
            );
            expect_err!(
                cx.store.load_messages(&bad, MessageQuery::default()).await,
                ThreadStoreError::InvalidInput { .. },
                "load_messages of the thread id {bad:?}"
            );
            expect_err!(
                cx.store.delete(&bad).await,
                ThreadStoreError::InvalidInput { .. },
                "delete of the thread id {bad:?}"
            );
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
