//! Deleting and saving: a deleted thread is gone everywhere, `save` creates or
//! replaces (and re-indexes), and the finished mark round-trips.

use std::sync::Arc;

use serde_json::{Value, json};
use task_store::{
    ChangeSet, Committed, MessageQuery, Metadata, NewMessage, Thread, ThreadHead, ThreadQuery,
    ThreadStore, ThreadStoreError, VersionPrecondition,
};

use super::CaseResult;
use super::support::{Context, message_ids, metadata, run};

/// A deleted thread is gone from `load`, `load_messages`, `append` and every listing; its id can be created afresh.
pub async fn deleted_thread_is_gone_from_loads_and_listings(
    store: Arc<dyn ThreadStore>,
    prefix: &str,
) -> CaseResult {
    run(store, prefix, |cx| async move {
        let (parent, kind) = (cx.name("parent"), cx.name("kind"));
        let ids: Vec<String> = ["x", "y", "z"].iter().map(|n| cx.id(n)).collect();
        for id in &ids {
            cx.create(
                Thread::new(id, &kind)
                    .with_parent(&parent)
                    .with_state(json!({ "old": true }))
                    .with_message(NewMessage::with_id("m", json!("old"))),
            )
            .await?;
        }
        let gone = &ids[1];
        cx.store.delete(gone).await.ctx("delete")?;
        let head = cx.store.load(gone).await.ctx("load after delete")?;
        ensure!(head.is_none(), "load after delete gave {head:?}");
        expect_err!(
            cx.store.load_messages(gone, MessageQuery::default()).await,
            ThreadStoreError::NotFound { .. },
            "load_messages after delete"
        );
        expect_err!(
            cx.store
                .append(gone, ChangeSet::state(json!(1)), VersionPrecondition::Any)
                .await,
            ThreadStoreError::NotFound { .. },
            "append after delete"
        );
        let remaining = vec![ids[0].clone(), ids[2].clone()];
        ensure_eq!(
            cx.list_pages(ThreadQuery::by_parent(&parent).with_limit(1))
                .await?,
            remaining,
            "listing by parent after delete"
        );
        ensure_eq!(
            cx.list_pages(ThreadQuery::by_kind(&kind).with_limit(1))
                .await?,
            remaining,
            "listing by kind after delete"
        );
        ensure_eq!(
            cx.list_pages(ThreadQuery::by_parent(&parent).with_kind(&kind))
                .await?,
            remaining,
            "listing by parent and kind after delete"
        );
        // A new thread under the old id starts from nothing.
        let committed = cx
            .create(Thread::new(gone, &kind).with_message(NewMessage::with_id("m", json!("new"))))
            .await?;
        ensure_eq!(
            committed,
            Committed {
                version: 1,
                last_seq: 1,
                appended: 1,
                skipped: 0
            },
            "create after delete (the old log and its ids are gone)"
        );
        let head = cx.load(gone).await?;
        ensure_eq!(head.state, Value::Null, "the recreated thread's state");
        ensure_eq!(head.parent_id, None, "the recreated thread's parent");
        let listed = cx.list_pages(ThreadQuery::by_parent(&parent)).await?;
        ensure_eq!(listed, remaining, "the old parent index after re-creation");
        Ok(())
    })
    .await
}

/// `delete` succeeds for a missing thread and for a second delete.
pub async fn delete_is_idempotent(store: Arc<dyn ThreadStore>, prefix: &str) -> CaseResult {
    run(store, prefix, |cx| async move {
        let id = cx.id("t");
        cx.store
            .delete(&id)
            .await
            .ctx("delete of a never-created thread")?;
        cx.create(Thread::new(&id, cx.name("kind")).with_parent(cx.name("p")))
            .await?;
        cx.store.delete(&id).await.ctx("first delete")?;
        cx.store.delete(&id).await.ctx("second delete")?;
        let head = cx.store.load(&id).await.ctx("load")?;
        ensure!(head.is_none(), "load after two deletes gave {head:?}");
        Ok(())
    })
    .await
}

/// `save` of a missing thread creates it at version 1, indexed like `create`.
pub async fn save_creates_a_missing_thread(
    store: Arc<dyn ThreadStore>,
    prefix: &str,
) -> CaseResult {
    run(store, prefix, |cx| async move {
        let id = cx.id("t");
        let (parent, kind) = (cx.name("parent"), cx.name("kind"));
        let meta = metadata(json!({ "saved": true }));
        let mut thread = Thread::new(&id, &kind)
            .with_parent(&parent)
            .with_metadata(meta.clone())
            .with_state(json!({ "s": 1 }))
            .with_message(NewMessage::with_id("m", json!(1)))
            .with_message(NewMessage::with_id("m", json!(2)));
        thread.terminal = true;
        let committed = cx.store.save(thread).await.ctx("save")?;
        ensure_eq!(
            committed,
            Committed {
                version: 1,
                last_seq: 1,
                appended: 1,
                skipped: 1
            },
            "save of a new thread"
        );
        let expected = ThreadHead {
            id: id.clone(),
            kind: kind.clone(),
            parent_id: Some(parent.clone()),
            metadata: meta,
            state: json!({ "s": 1 }),
            version: 1,
            last_seq: 1,
            terminal: true,
        };
        ensure_eq!(cx.load(&id).await?, expected, "the saved head");
        ensure_eq!(
            cx.list_pages(ThreadQuery::by_parent(&parent)).await?,
            vec![id.clone()],
            "listing by parent"
        );
        ensure_eq!(
            cx.list_pages(ThreadQuery::by_kind(&kind)).await?,
            vec![id.clone()],
            "listing by kind"
        );
        Ok(())
    })
    .await
}

/// `save` of an existing thread replaces kind, parent, metadata, state and mark, appends new messages, and adds one to the version.
pub async fn save_replaces_an_existing_thread(
    store: Arc<dyn ThreadStore>,
    prefix: &str,
) -> CaseResult {
    run(store, prefix, |cx| async move {
        let id = cx.id("t");
        cx.create(
            Thread::new(&id, cx.name("k1"))
                .with_parent(cx.name("p1"))
                .with_metadata(metadata(json!({ "old": 1 })))
                .with_state(json!({ "s": 1 }))
                .with_message(NewMessage::with_id("a", json!("a"))),
        )
        .await?;
        cx.append(
            &id,
            ChangeSet::default().with_message(NewMessage::with_id("b", json!("b"))),
            VersionPrecondition::Exact(1),
        )
        .await?;
        let meta = metadata(json!({ "new": 2 }));
        let mut thread = Thread::new(&id, cx.name("k2"))
            .with_parent(cx.name("p2"))
            .with_metadata(meta.clone())
            .with_state(json!({ "s": 2 }))
            .with_message(NewMessage::with_id("a", json!("a again")))
            .with_message(NewMessage::with_id("c", json!("c")));
        thread.terminal = true;
        let committed = cx.store.save(thread).await.ctx("save")?;
        ensure_eq!(
            committed,
            Committed {
                version: 3,
                last_seq: 3,
                appended: 1,
                skipped: 1
            },
            "save over a thread at version 2"
        );
        let expected = ThreadHead {
            id: id.clone(),
            kind: cx.name("k2"),
            parent_id: Some(cx.name("p2")),
            metadata: meta,
            state: json!({ "s": 2 }),
            version: 3,
            last_seq: 3,
            terminal: true,
        };
        ensure_eq!(cx.load(&id).await?, expected, "the head after save");
        ensure_eq!(
            message_ids(&cx.messages(&id).await?),
            vec![Some("a"), Some("b"), Some("c")],
            "the log after save"
        );
        // Saving the same thread again still counts as a write.
        let committed = cx
            .store
            .save(Thread::new(&id, cx.name("k2")).with_parent(cx.name("p2")))
            .await
            .ctx("second save")?;
        ensure_eq!(committed.version, 4, "the version after a second save");
        let head = cx.load(&id).await?;
        ensure_eq!(
            head.metadata,
            Metadata::new(),
            "metadata replaced by the second save"
        );
        ensure_eq!(head.state, Value::Null, "state replaced by the second save");
        ensure!(!head.terminal, "the mark cleared by the second save");
        Ok(())
    })
    .await
}

/// `save` that changes a thread's parent or kind moves it between listings.
pub async fn save_reindexes_when_parent_or_kind_changes(
    store: Arc<dyn ThreadStore>,
    prefix: &str,
) -> CaseResult {
    run(store, prefix, |cx| async move {
        let id = cx.id("moving");
        let sibling = cx.id("sibling");
        let (p1, p2, k1, k2) = (cx.name("p1"), cx.name("p2"), cx.name("k1"), cx.name("k2"));
        cx.create(Thread::new(&id, &k1).with_parent(&p1)).await?;
        cx.create(Thread::new(&sibling, &k1).with_parent(&p1))
            .await?;
        cx.store
            .save(Thread::new(&id, &k2).with_parent(&p2))
            .await
            .ctx("save with a new parent and kind")?;
        let only = |ids: &[&String]| ids.iter().map(|s| (*s).clone()).collect::<Vec<String>>();
        ensure_eq!(
            cx.list_pages(ThreadQuery::by_parent(&p1)).await?,
            only(&[&sibling]),
            "the old parent"
        );
        ensure_eq!(
            cx.list_pages(ThreadQuery::by_parent(&p2)).await?,
            only(&[&id]),
            "the new parent"
        );
        ensure_eq!(
            cx.list_pages(ThreadQuery::by_kind(&k1)).await?,
            only(&[&sibling]),
            "the old kind"
        );
        ensure_eq!(
            cx.list_pages(ThreadQuery::by_kind(&k2)).await?,
            only(&[&id]),
            "the new kind"
        );
        ensure_eq!(
            cx.list_pages(ThreadQuery::by_parent(&p1).with_kind(&k2))
                .await?,
            only(&[]),
            "the old parent with the new kind"
        );
        ensure_eq!(
            cx.list_pages(ThreadQuery::by_parent(&p2).with_kind(&k2))
                .await?,
            only(&[&id]),
            "the new parent with the new kind"
        );
        cx.store
            .save(Thread::new(&id, &k2))
            .await
            .ctx("save without a parent")?;
        ensure_eq!(
            cx.list_pages(ThreadQuery::by_parent(&p2)).await?,
            only(&[]),
            "the parent after save without one"
        );
        ensure_eq!(
            cx.load(&id).await?.parent_id,
            None,
            "the parent after save without one"
        );
        Ok(())
    })
    .await
}

/// The finished mark is set by `create`, `append` and `save`, cleared by `append` and `save`, and kept by other appends.
pub async fn terminal_mark_round_trips(store: Arc<dyn ThreadStore>, prefix: &str) -> CaseResult {
    run(store, prefix, |cx| async move {
        let id = cx.id("t");
        let mut thread = Thread::new(&id, cx.name("kind"));
        thread.terminal = true;
        cx.create(thread).await?;
        ensure!(cx.load(&id).await?.terminal, "the mark set by create");
        let steps: [(ChangeSet, bool, &str); 4] = [
            (
                ChangeSet::default().with_terminal(false),
                false,
                "cleared by append",
            ),
            (
                ChangeSet::state(json!(1)),
                false,
                "kept clear by a state append",
            ),
            (
                ChangeSet::default().with_terminal(true),
                true,
                "set by append",
            ),
            (
                ChangeSet::default().with_message(NewMessage::new(json!("late"))),
                true,
                "kept set by a message append",
            ),
        ];
        let mut version = 1;
        for (changes, expected, what) in steps {
            let committed = cx
                .append(&id, changes, VersionPrecondition::Exact(version))
                .await?;
            ensure_eq!(
                committed.version,
                version + 1,
                "the version when the mark is {what}"
            );
            version = committed.version;
            let head = cx.load(&id).await?;
            ensure_eq!(head.terminal, expected, "the mark {what}");
        }
        cx.store
            .save(Thread::new(&id, cx.name("kind")))
            .await
            .ctx("save without the mark")?;
        ensure!(!cx.load(&id).await?.terminal, "the mark cleared by save");
        let mut thread = Thread::new(&id, cx.name("kind"));
        thread.terminal = true;
        cx.store.save(thread).await.ctx("save with the mark")?;
        ensure!(cx.load(&id).await?.terminal, "the mark set by save");
        Ok(())
    })
    .await
}
