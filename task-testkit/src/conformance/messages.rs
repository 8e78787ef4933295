//! The message log's de-duplication: a message whose id is already in its
//! thread's log is skipped and counted, and a write that changes nothing keeps
//! the version.

use std::sync::Arc;

use serde_json::json;
use task_store::{
    ChangeSet, Committed, Message, NewMessage, Thread, ThreadStore, ThreadStoreError,
    VersionPrecondition,
};

use super::CaseResult;
use super::support::run;

/// Messages whose id is already in the log, or earlier in the same write, are skipped and counted.
pub async fn messages_with_known_ids_are_skipped(
    store: Arc<dyn ThreadStore>,
    prefix: &str,
) -> CaseResult {
    run(store, prefix, |cx| async move {
        let id = cx.id("t");
        let committed = cx
            .create(
                Thread::new(&id, cx.name("kind"))
                    .with_message(NewMessage::with_id("a", json!("a1")))
                    .with_message(NewMessage::with_id("b", json!("b1")))
                    .with_message(NewMessage::with_id("a", json!("a2"))),
            )
            .await?;
        ensure_eq!(
            committed,
            Committed {
                version: 1,
                last_seq: 2,
                appended: 2,
                skipped: 1
            },
            "create with a repeated message id"
        );
        let changes = ChangeSet::default()
            .with_message(NewMessage::with_id("b", json!("b2")))
            .with_message(NewMessage::with_id("c", json!("c1")))
            .with_message(NewMessage::with_id("c", json!("c2")))
            .with_message(NewMessage::new(json!("no id")))
            .with_message(NewMessage::new(json!("no id")));
        let committed = cx
            .append(&id, changes, VersionPrecondition::Exact(1))
            .await?;
        ensure_eq!(
            committed,
            Committed {
                version: 2,
                last_seq: 5,
                appended: 3,
                skipped: 2
            },
            "append with known, repeated and id-less messages"
        );
        // A retried write: every message known. Nothing changes.
        let retry = ChangeSet::default()
            .with_message(NewMessage::with_id("a", json!("a3")))
            .with_message(NewMessage::with_id("c", json!("c3")));
        let committed = cx.append(&id, retry, VersionPrecondition::Any).await?;
        ensure_eq!(
            committed,
            Committed {
                version: 2,
                last_seq: 5,
                appended: 0,
                skipped: 2
            },
            "append of only known ids"
        );
        let messages = cx.messages(&id).await?;
        let expected = vec![
            Message {
                seq: 1,
                id: Some("a".into()),
                body: json!("a1"),
            },
            Message {
                seq: 2,
                id: Some("b".into()),
                body: json!("b1"),
            },
            Message {
                seq: 3,
                id: Some("c".into()),
                body: json!("c1"),
            },
            Message {
                seq: 4,
                id: None,
                body: json!("no id"),
            },
            Message {
                seq: 5,
                id: None,
                body: json!("no id"),
            },
        ];
        ensure_eq!(messages, expected, "the log keeps the first of each id");
        ensure_eq!(cx.load(&id).await?.version, 2, "the version");
        Ok(())
    })
    .await
}

/// The same message id in two threads is two messages: de-duplication is per thread.
pub async fn message_ids_are_scoped_to_their_thread(
    store: Arc<dyn ThreadStore>,
    prefix: &str,
) -> CaseResult {
    run(store, prefix, |cx| async move {
        let (one, two) = (cx.id("one"), cx.id("two"));
        for id in [&one, &two] {
            cx.create(Thread::new(id, cx.name("kind"))).await?;
            let committed = cx
                .append(
                    id,
                    ChangeSet::default().with_message(NewMessage::with_id("same", json!(id))),
                    VersionPrecondition::Exact(1),
                )
                .await?;
            ensure_eq!(committed.appended, 1, "appended to {id:?}");
            ensure_eq!(committed.skipped, 0, "skipped in {id:?}");
        }
        Ok(())
    })
    .await
}

/// A change set that changes nothing (empty, or only known message ids) leaves the version, but its precondition is still checked.
pub async fn change_set_that_changes_nothing_keeps_the_version(
    store: Arc<dyn ThreadStore>,
    prefix: &str,
) -> CaseResult {
    run(store, prefix, |cx| async move {
        let id = cx.id("t");
        cx.create(
            Thread::new(&id, cx.name("kind"))
                .with_state(json!({ "kept": true }))
                .with_message(NewMessage::with_id("known", json!(1))),
        )
        .await?;
        for precondition in [VersionPrecondition::Exact(1), VersionPrecondition::Any] {
            let committed = cx.append(&id, ChangeSet::default(), precondition).await?;
            ensure_eq!(
                committed,
                Committed {
                    version: 1,
                    last_seq: 1,
                    appended: 0,
                    skipped: 0
                },
                "an empty change set with {precondition:?}"
            );
            let committed = cx
                .append(
                    &id,
                    ChangeSet::default().with_message(NewMessage::with_id("known", json!(2))),
                    precondition,
                )
                .await?;
            ensure_eq!(
                committed,
                Committed {
                    version: 1,
                    last_seq: 1,
                    appended: 0,
                    skipped: 1
                },
                "a change set of known messages with {precondition:?}"
            );
        }
        expect_err!(
            cx.store
                .append(&id, ChangeSet::default(), VersionPrecondition::Exact(7))
                .await,
            ThreadStoreError::VersionConflict {
                expected: 7,
                actual: 1,
                ..
            },
            "an empty change set with a stale precondition"
        );
        let head = cx.load(&id).await?;
        ensure_eq!(
            head.version,
            1,
            "the version after writes that changed nothing"
        );
        ensure_eq!(head.state, json!({ "kept": true }), "the state");
        let committed = cx
            .append(
                &id,
                ChangeSet::state(json!(2)),
                VersionPrecondition::Exact(1),
            )
            .await?;
        ensure_eq!(committed.version, 2, "the next real change's version");
        Ok(())
    })
    .await
}
