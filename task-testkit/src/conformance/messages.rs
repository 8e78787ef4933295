//! The message log's de-duplication: a message whose id is already in its
//! thread's log is skipped and counted, and a write that changes nothing keeps
//! the version.

use std::sync::Arc;

use serde_json::json;
use task_store::{
    AppendRequest, ChangeSet, Committed, Message, NewMessage, Thread, ThreadStore,
    ThreadStoreError, VersionPrecondition,
};

use super::CaseResult;
use super::support::{Context, run};

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

/// The ids of messages `range` as `m0000`, `m0001`...
fn numbered(range: std::ops::Range<usize>) -> Vec<NewMessage> {
    range
        .map(|i| NewMessage::with_id(format!("m{i:04}"), json!({ "i": i })))
        .collect()
}

/// Message ids are de-duplicated against the thread's whole history, not a
/// window of recent ids: 1,200 messages written by `create`, `append`,
/// `append_batch` and `save` in chunks, then the oldest, a middle and the
/// newest ids are retried through each kind of write and all skipped; the
/// log keeps one message per id, in order.
pub async fn message_ids_are_deduplicated_over_the_whole_history(
    store: Arc<dyn ThreadStore>,
    prefix: &str,
) -> CaseResult {
    const TOTAL: usize = 1200;
    const CHUNK: usize = 100;
    run(store, prefix, |cx| async move {
        let kind = cx.name("kind");
        let id = cx.id("long-history");
        let mut thread = Thread::new(&id, &kind);
        thread.messages = numbered(0..CHUNK);
        cx.create(thread).await?;
        for (n, start) in (CHUNK..TOTAL).step_by(CHUNK).enumerate() {
            let messages = numbered(start..start + CHUNK);
            let committed = match n % 3 {
                0 => {
                    let changes = ChangeSet {
                        messages,
                        ..ChangeSet::default()
                    };
                    cx.append(&id, changes, VersionPrecondition::Any).await?
                }
                1 => {
                    let changes = ChangeSet {
                        messages,
                        ..ChangeSet::default()
                    };
                    let mut results = cx
                        .store
                        .append_batch(vec![AppendRequest {
                            id: id.clone(),
                            changes,
                            precondition: VersionPrecondition::Any,
                        }])
                        .await;
                    ensure_eq!(results.len(), 1, "append_batch's result count");
                    results.remove(0).ctx("append_batch of a chunk")?
                }
                _ => {
                    let mut thread = Thread::new(&id, &kind);
                    thread.messages = messages;
                    cx.store.save(thread).await.ctx("save of a chunk")?
                }
            };
            ensure_eq!(
                (committed.appended, committed.skipped),
                (CHUNK as u64, 0),
                "the chunk from m{start:04}"
            );
        }
        let version = cx.load(&id).await?.version;
        let old = [0, 1, 99, 100, 555, TOTAL - CHUNK - 1, TOTAL - 1];
        let retried = || {
            old.iter()
                .map(|i| NewMessage::with_id(format!("m{i:04}"), json!("retried")))
                .collect::<Vec<_>>()
        };
        let changes = ChangeSet {
            messages: retried(),
            ..ChangeSet::default()
        };
        let committed = cx
            .append(&id, changes.clone(), VersionPrecondition::Any)
            .await?;
        ensure_eq!(
            (committed.appended, committed.skipped, committed.version),
            (0, old.len() as u64, version),
            "an append retrying ids from the whole history (appended, skipped, version)"
        );
        let mut results = cx
            .store
            .append_batch(vec![AppendRequest {
                id: id.clone(),
                changes,
                precondition: VersionPrecondition::Exact(version),
            }])
            .await;
        ensure_eq!(results.len(), 1, "append_batch's result count");
        let committed = results.remove(0).ctx("append_batch retrying old ids")?;
        ensure_eq!(
            (committed.appended, committed.skipped, committed.version),
            (0, old.len() as u64, version),
            "an append_batch retrying old ids (appended, skipped, version)"
        );
        let mut thread = Thread::new(&id, &kind);
        thread.messages = retried();
        let committed = cx.store.save(thread).await.ctx("save retrying old ids")?;
        ensure_eq!(
            (committed.appended, committed.skipped),
            (0, old.len() as u64),
            "a save retrying old ids (appended, skipped)"
        );
        let messages = cx.messages(&id).await?;
        ensure_eq!(messages.len(), TOTAL, "messages in the log");
        for (i, message) in messages.iter().enumerate() {
            ensure!(
                message.seq == i as u64 + 1
                    && message.id.as_deref() == Some(format!("m{i:04}").as_str())
                    && message.body == json!({ "i": i }),
                "message {i} of the log is {message:?}"
            );
        }
        Ok(())
    })
    .await
}
