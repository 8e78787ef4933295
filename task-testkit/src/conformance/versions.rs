//! Versions: 1 after a create, one more for every write that changes
//! something, none for a write that changes nothing; and what a write
//! reports ([`Committed`]) is what a load then reads.

use std::sync::Arc;

use serde_json::json;
use task_store::{
    AppendRequest, ChangeSet, Committed, NewMessage, Thread, ThreadStore, VersionPrecondition,
};

use super::CaseResult;
use super::support::{Context, Cx, run};

/// Checks a write's report against the expected version, and against what
/// a load reads right after it.
async fn expect_version(
    cx: &Cx,
    id: &str,
    committed: Committed,
    version: u64,
    last_seq: u64,
    what: &str,
) -> CaseResult {
    ensure_eq!(
        (committed.version, committed.last_seq),
        (version, last_seq),
        "{what}: the reported (version, last_seq)"
    );
    let head = cx.load(id).await?;
    ensure_eq!(
        (head.version, head.last_seq),
        (version, last_seq),
        "{what}: the loaded (version, last_seq)"
    );
    Ok(())
}

/// Every kind of write moves the version as the contract says: `create`,
/// `create_batch` and `save` of a new thread give 1; `append` (of a state,
/// a message, a mark, or all three), each request of `append_batch`, and
/// every `save` over a thread add exactly one; an empty change set or one of
/// only known message ids adds none, through `append` and `append_batch`
/// alike; a thread re-created after `delete` starts again at 1. Each write's
/// reported version and `last_seq` are what a load reads.
pub async fn every_kind_of_write_moves_the_version_by_one_or_not_at_all(
    store: Arc<dyn ThreadStore>,
    prefix: &str,
) -> CaseResult {
    run(store, prefix, |cx| async move {
        let kind = cx.name("kind");
        let id = cx.id("t");
        let committed = cx
            .create(Thread::new(&id, &kind).with_message(NewMessage::with_id("m0", json!(0))))
            .await?;
        expect_version(&cx, &id, committed, 1, 1, "create").await?;

        let steps: Vec<(&str, ChangeSet, u64, u64)> = vec![
            ("append of a state", ChangeSet::state(json!(1)), 2, 1),
            (
                "append of the same state again",
                ChangeSet::state(json!(1)),
                3,
                1,
            ),
            (
                "append of a message",
                ChangeSet::default().with_message(NewMessage::with_id("m1", json!(1))),
                4,
                2,
            ),
            (
                "append of a message without an id",
                ChangeSet::default().with_message(NewMessage::new(json!("plain"))),
                5,
                3,
            ),
            (
                "append of the finished mark",
                ChangeSet::default().with_terminal(true),
                6,
                3,
            ),
            (
                "append clearing the mark",
                ChangeSet::default().with_terminal(false),
                7,
                3,
            ),
            (
                "append of a state, a message and the mark",
                ChangeSet::state(json!(2))
                    .with_message(NewMessage::with_id("m2", json!(2)))
                    .with_terminal(true),
                8,
                4,
            ),
            (
                "append of known message ids only",
                ChangeSet::default()
                    .with_message(NewMessage::with_id("m0", json!("again")))
                    .with_message(NewMessage::with_id("m2", json!("again"))),
                8,
                4,
            ),
            ("append of nothing", ChangeSet::default(), 8, 4),
        ];
        for (what, changes, version, last_seq) in steps {
            let committed = cx.append(&id, changes, VersionPrecondition::Any).await?;
            expect_version(&cx, &id, committed, version, last_seq, what).await?;
        }

        // append_batch: each request on its own, in order.
        let request = |changes: ChangeSet, precondition| AppendRequest {
            id: id.clone(),
            changes,
            precondition,
        };
        let results = cx
            .store
            .append_batch(vec![
                request(ChangeSet::state(json!(3)), VersionPrecondition::Exact(8)),
                request(
                    ChangeSet::default().with_message(NewMessage::with_id("m0", json!("again"))),
                    VersionPrecondition::Exact(9),
                ),
                request(ChangeSet::default(), VersionPrecondition::Exact(9)),
                request(
                    ChangeSet::default().with_message(NewMessage::with_id("m3", json!(3))),
                    VersionPrecondition::Exact(9),
                ),
            ])
            .await;
        let expected = [(9, 4), (9, 4), (9, 4), (10, 5)];
        ensure_eq!(results.len(), expected.len(), "append_batch's result count");
        for (i, (result, (version, last_seq))) in results.into_iter().zip(expected).enumerate() {
            let committed = result.ctx(format_args!("append_batch request {i}"))?;
            ensure_eq!(
                (committed.version, committed.last_seq),
                (version, last_seq),
                "append_batch request {i} (state; known id; nothing; new message)"
            );
        }
        ensure_eq!(
            cx.load(&id).await?.version,
            10,
            "the version after the batch"
        );

        let committed = cx
            .store
            .save(Thread::new(&id, &kind))
            .await
            .ctx("save over the thread")?;
        expect_version(&cx, &id, committed, 11, 5, "save over the thread").await?;
        let committed = cx
            .store
            .save(Thread::new(&id, &kind).with_message(NewMessage::with_id("m1", json!("again"))))
            .await
            .ctx("the same save again, with a known message")?;
        expect_version(&cx, &id, committed, 12, 5, "a save that repeats the thread").await?;

        // New threads start at 1, whichever write makes them.
        let (saved, batched) = (cx.id("saved"), cx.id("batched"));
        let committed = cx
            .store
            .save(Thread::new(&saved, &kind))
            .await
            .ctx("save of a new thread")?;
        expect_version(&cx, &saved, committed, 1, 0, "save of a new thread").await?;
        let mut results = cx
            .store
            .create_batch(vec![
                Thread::new(&batched, &kind).with_message(NewMessage::new(json!(1))),
            ])
            .await;
        ensure_eq!(results.len(), 1, "create_batch's result count");
        let committed = results.remove(0).ctx("create_batch")?;
        expect_version(&cx, &batched, committed, 1, 1, "create_batch").await?;

        // A thread created again after a delete starts from nothing.
        cx.store.delete(&id).await.ctx("delete")?;
        let committed = cx.create(Thread::new(&id, &kind)).await?;
        expect_version(&cx, &id, committed, 1, 0, "create after delete").await?;
        cx.store.delete(&id).await.ctx("delete")?;
        let committed = cx
            .store
            .save(Thread::new(&id, &kind))
            .await
            .ctx("save after delete")?;
        expect_version(&cx, &id, committed, 1, 0, "save after delete").await?;
        Ok(())
    })
    .await
}
