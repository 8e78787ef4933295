//! All or nothing: a write that is refused (a version conflict, a taken id,
//! a missing thread, an invalid id anywhere in it) leaves no trace at all:
//! no state, no messages, no recorded message ids, no index entries, no
//! finished mark and no version bump.

use std::sync::Arc;

use serde_json::json;
use task_store::{
    AppendRequest, ChangeSet, NewMessage, Thread, ThreadStore, ThreadStoreError,
    VersionPrecondition,
};

use super::CaseResult;
use super::support::{Cx, ensure_absent, query, run, snapshot};

/// A change set that would touch everything: state, two messages with ids
/// (`{tag}-1`, `{tag}-2`), one without, and the finished mark.
fn everything(tag: &str) -> ChangeSet {
    ChangeSet::state(json!({ "refused": tag }))
        .with_message(NewMessage::with_id(format!("{tag}-1"), json!(tag)))
        .with_message(NewMessage::new(json!("no id")))
        .with_message(NewMessage::with_id(format!("{tag}-2"), json!(tag)))
        .with_terminal(true)
}

/// The same, with an invalid message id last, so a store that writes as it
/// validates has already written the others.
fn everything_then_a_bad_id(tag: &str) -> ChangeSet {
    everything(tag).with_message(NewMessage::with_id(format!("{tag}\n"), json!("bad")))
}

/// A thread under the case's other parent and kind, carrying `changes`'s
/// messages and mark.
fn thread_like(cx: &Cx, id: &str, changes: ChangeSet) -> Thread {
    let mut thread = Thread::new(id, cx.name("other-kind"))
        .with_parent(cx.name("other-parent"))
        .with_state(changes.state.unwrap_or_default());
    thread.messages = changes.messages;
    thread.terminal = changes.terminal.unwrap_or_default();
    thread
}

fn request(id: &str, changes: ChangeSet, precondition: VersionPrecondition) -> AppendRequest {
    AppendRequest {
        id: id.to_owned(),
        changes,
        precondition,
    }
}

/// Refused writes of every kind (a stale `Exact` on `append` and
/// `append_batch`; `create` and `create_batch` of a taken id; `append` and
/// `append_batch` to a missing thread; an invalid message id after valid ones
/// in `append`, `append_batch`, `save`, `create` and `create_batch`; an
/// invalid parent) leave no trace: the thread's head and log are unchanged,
/// no other thread appears, no listing (by parent, kind, open or not) gains
/// an entry, and the message ids they carried were not recorded, so a later
/// write of the same ids appends every one.
pub async fn refused_writes_leave_no_trace(
    store: Arc<dyn ThreadStore>,
    prefix: &str,
) -> CaseResult {
    run(store, prefix, |cx| async move {
        let (parent, kind) = (cx.name("parent"), cx.name("kind"));
        let id = cx.id("target");
        let (missing, fresh) = (cx.id("missing"), cx.id("fresh"));
        cx.create(
            Thread::new(&id, &kind)
                .with_parent(&parent)
                .with_state(json!({ "kept": 1 }))
                .with_message(NewMessage::with_id("kept", json!(1))),
        )
        .await?;
        cx.append(
            &id,
            ChangeSet::state(json!({ "kept": 2 })),
            VersionPrecondition::Exact(1),
        )
        .await?;
        let before = snapshot(&cx, &id).await?;
        let mut tags = Vec::new();
        let mut tag = |name: &str| {
            tags.push(name.to_owned());
            name.to_owned()
        };

        let t = tag("stale-append");
        expect_err!(
            cx.store
                .append(&id, everything(&t), VersionPrecondition::Exact(1))
                .await,
            ThreadStoreError::VersionConflict { .. },
            "append with a stale Exact(1)"
        );
        let t = tag("stale-batch");
        let mut results = cx
            .store
            .append_batch(vec![request(
                &id,
                everything(&t),
                VersionPrecondition::Exact(7),
            )])
            .await;
        ensure_eq!(results.len(), 1, "append_batch's result count");
        expect_err!(
            results.remove(0),
            ThreadStoreError::VersionConflict { .. },
            "append_batch with a stale Exact(7)"
        );
        let t = tag("bad-append");
        for precondition in [VersionPrecondition::Exact(2), VersionPrecondition::Any] {
            expect_err!(
                cx.store
                    .append(&id, everything_then_a_bad_id(&t), precondition)
                    .await,
                ThreadStoreError::InvalidInput { .. },
                "append with an invalid message id last, {precondition:?}"
            );
        }
        let t = tag("bad-batch");
        let mut results = cx
            .store
            .append_batch(vec![request(
                &id,
                everything_then_a_bad_id(&t),
                VersionPrecondition::Exact(2),
            )])
            .await;
        ensure_eq!(results.len(), 1, "append_batch's result count");
        expect_err!(
            results.remove(0),
            ThreadStoreError::InvalidInput { .. },
            "append_batch with an invalid message id last"
        );
        let t = tag("bad-save");
        expect_err!(
            cx.store
                .save(thread_like(&cx, &id, everything_then_a_bad_id(&t)))
                .await,
            ThreadStoreError::InvalidInput { .. },
            "save over the thread with an invalid message id last"
        );
        let t = tag("taken-create");
        expect_err!(
            cx.store.create(thread_like(&cx, &id, everything(&t))).await,
            ThreadStoreError::AlreadyExists { .. },
            "create of the taken id"
        );
        let t = tag("taken-batch");
        let mut results = cx
            .store
            .create_batch(vec![thread_like(&cx, &id, everything(&t))])
            .await;
        ensure_eq!(results.len(), 1, "create_batch's result count");
        expect_err!(
            results.remove(0),
            ThreadStoreError::AlreadyExists { .. },
            "create_batch of the taken id"
        );

        // Refused writes of other threads.
        for precondition in [VersionPrecondition::Any, VersionPrecondition::Exact(0)] {
            expect_err!(
                cx.store
                    .append(&missing, everything("missing"), precondition)
                    .await,
                ThreadStoreError::NotFound { .. },
                "append to a missing thread with {precondition:?}"
            );
        }
        let mut results = cx
            .store
            .append_batch(vec![request(
                &missing,
                everything("missing"),
                VersionPrecondition::Any,
            )])
            .await;
        ensure_eq!(results.len(), 1, "append_batch's result count");
        expect_err!(
            results.remove(0),
            ThreadStoreError::NotFound { .. },
            "append_batch to a missing thread"
        );
        expect_err!(
            cx.store
                .create(thread_like(&cx, &fresh, everything_then_a_bad_id("fresh")))
                .await,
            ThreadStoreError::InvalidInput { .. },
            "create with an invalid message id last"
        );
        expect_err!(
            cx.store
                .save(thread_like(&cx, &fresh, everything_then_a_bad_id("fresh")))
                .await,
            ThreadStoreError::InvalidInput { .. },
            "save of a new thread with an invalid message id last"
        );
        let mut results = cx
            .store
            .create_batch(vec![
                thread_like(&cx, &fresh, everything_then_a_bad_id("fresh")),
                thread_like(&cx, &fresh, everything("fresh")).with_parent(format!("{parent}\0")),
            ])
            .await;
        ensure_eq!(results.len(), 2, "create_batch's result count");
        for (i, result) in results.drain(..).enumerate() {
            expect_err!(
                result,
                ThreadStoreError::InvalidInput { .. },
                "create_batch item {i} (an invalid message id, an invalid parent)"
            );
        }

        // Nothing moved.
        ensure_eq!(
            snapshot(&cx, &id).await?,
            before,
            "the thread's head and log after every refused write"
        );
        ensure_absent(&cx, &missing, "appends to a missing thread were refused").await?;
        ensure_absent(&cx, &fresh, "every write of a new thread was refused").await?;
        for open_only in [false, true] {
            let listed = cx
                .list_pages(query(Some(&parent), Some(&kind), open_only))
                .await?;
            ensure_eq!(
                listed,
                vec![id.clone()],
                "the thread's own listing (open_only {open_only}): refused finished marks moved it"
            );
            for (what, listing) in [
                ("parent", query(Some(&cx.name("other-parent")), None, open_only)),
                ("kind", query(None, Some(&cx.name("other-kind")), open_only)),
            ] {
                let listed = cx.list_pages(listing).await?;
                ensure!(
                    listed.is_empty(),
                    "refused writes were indexed under their {what} (open_only {open_only}): {listed:?}"
                );
            }
        }

        // The refused writes' message ids were not recorded: writing them
        // now appends every one.
        let mut retry = ChangeSet::default();
        for t in &tags {
            retry = retry
                .with_message(NewMessage::with_id(format!("{t}-1"), json!("now")))
                .with_message(NewMessage::with_id(format!("{t}-2"), json!("now")));
        }
        let committed = cx
            .append(&id, retry, VersionPrecondition::Exact(2))
            .await?;
        ensure_eq!(
            (committed.appended, committed.skipped),
            (2 * tags.len() as u64, 0),
            "the ids of refused writes, written now (a refused write recorded its ids)"
        );
        ensure_eq!(committed.version, 3, "the version after the first real write");
        let created = cx
            .create(Thread::new(&fresh, &kind).with_message(NewMessage::with_id(
                "fresh-1",
                json!("now"),
            )))
            .await?;
        ensure_eq!(
            (created.version, created.appended, created.skipped),
            (1, 1, 0),
            "creating the thread whose every write was refused"
        );
        Ok(())
    })
    .await
}
