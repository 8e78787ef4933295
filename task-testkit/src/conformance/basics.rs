//! Creating, loading and appending one thread: every field round-trips, a taken id
//! is refused, `Exact` and `Any` preconditions, missing threads, large values
//! and ids with special characters.

use std::sync::Arc;

use serde_json::{Value, json};
use task_store::{
    ChangeSet, Committed, MAX_ID_LEN, Message, MessageQuery, Metadata, NewMessage, Thread,
    ThreadHead, ThreadQuery, ThreadStore, ThreadStoreError, VersionPrecondition,
};

use super::CaseResult;
use super::support::{Context, message_ids, metadata, run, seqs};

/// `create` stores every field at version 1, and `load` gives them back.
pub async fn create_then_load_round_trips(store: Arc<dyn ThreadStore>, prefix: &str) -> CaseResult {
    run(store, prefix, |cx| async move {
        let id = cx.id("full");
        let (kind, parent) = (cx.name("kind"), cx.name("parent"));
        let meta = metadata(json!({ "owner": "alice", "nested": { "a": [1, 2, 3] } }));
        let state = json!({
            "status": "running",
            "n": 1,
            "list": [1, "two", null, true, 2.5],
            "text": "ünïcödé ✓ \"quoted\" {braces}",
        });
        let thread = Thread::new(&id, &kind)
            .with_parent(&parent)
            .with_metadata(meta.clone())
            .with_state(state.clone())
            .with_message(NewMessage::with_id("m1", json!({ "event": "created" })))
            .with_message(NewMessage::new(json!("plain")));
        let committed = cx.create(thread).await?;
        ensure_eq!(
            committed,
            Committed {
                version: 1,
                last_seq: 2,
                appended: 2,
                skipped: 0
            },
            "create's result"
        );
        let head = cx.load(&id).await?;
        let expected = ThreadHead {
            id: id.clone(),
            kind: kind.clone(),
            parent_id: Some(parent),
            metadata: meta,
            state,
            version: 1,
            last_seq: 2,
            terminal: false,
        };
        ensure_eq!(head, expected, "the loaded head");
        let messages = cx.messages(&id).await?;
        let expected = vec![
            Message {
                seq: 1,
                id: Some("m1".into()),
                body: json!({ "event": "created" }),
            },
            Message {
                seq: 2,
                id: None,
                body: json!("plain"),
            },
        ];
        ensure_eq!(messages, expected, "the loaded log");

        let bare = cx.id("bare");
        let committed = cx.create(Thread::new(&bare, &kind)).await?;
        ensure_eq!(committed.version, 1, "a bare thread's version");
        ensure_eq!(committed.last_seq, 0, "a bare thread's last_seq");
        let head = cx.load(&bare).await?;
        let expected = ThreadHead {
            id: bare.clone(),
            kind,
            parent_id: None,
            metadata: Metadata::new(),
            state: Value::Null,
            version: 1,
            last_seq: 0,
            terminal: false,
        };
        ensure_eq!(head, expected, "a bare thread's head");
        Ok(())
    })
    .await
}

/// `create` of a taken id fails with `AlreadyExists` and changes nothing.
pub async fn create_of_a_taken_id_fails_and_changes_nothing(
    store: Arc<dyn ThreadStore>,
    prefix: &str,
) -> CaseResult {
    run(store, prefix, |cx| async move {
        let id = cx.id("taken");
        let first = Thread::new(&id, cx.name("kind"))
            .with_parent(cx.name("first-parent"))
            .with_state(json!({ "who": "first" }))
            .with_message(NewMessage::with_id("a", json!(1)));
        cx.create(first).await?;
        let before = cx.load(&id).await?;

        let second_parent = cx.name("second-parent");
        let second = Thread::new(&id, cx.name("other-kind"))
            .with_parent(&second_parent)
            .with_state(json!({ "who": "second" }))
            .with_message(NewMessage::with_id("b", json!(2)));
        let error = expect_err!(
            cx.store.create(second).await,
            ThreadStoreError::AlreadyExists { .. },
            "second create of {id:?}"
        );
        if let ThreadStoreError::AlreadyExists { id: named } = &error {
            ensure_eq!(named, &id, "the id named by AlreadyExists");
        }
        ensure_eq!(
            cx.load(&id).await?,
            before,
            "the head after the refused create"
        );
        ensure_eq!(
            message_ids(&cx.messages(&id).await?),
            vec![Some("a")],
            "the log after the refused create"
        );
        let listed = cx
            .list_pages(ThreadQuery::by_parent(&second_parent))
            .await?;
        ensure!(
            listed.is_empty(),
            "the refused create indexed {id:?} under its parent: {listed:?}"
        );
        let listed = cx
            .list_pages(ThreadQuery::by_kind(cx.name("other-kind")))
            .await?;
        ensure!(
            listed.is_empty(),
            "the refused create indexed {id:?} under its kind: {listed:?}"
        );
        Ok(())
    })
    .await
}

/// `load` of a missing thread is `Ok(None)`; `load_messages` of it is `NotFound`.
pub async fn load_of_a_missing_thread_finds_nothing(
    store: Arc<dyn ThreadStore>,
    prefix: &str,
) -> CaseResult {
    run(store, prefix, |cx| async move {
        let id = cx.name("never-created");
        let head = cx.store.load(&id).await.ctx("load of a missing thread")?;
        ensure!(head.is_none(), "load of a missing thread gave {head:?}");
        expect_err!(
            cx.store.load_messages(&id, MessageQuery::default()).await,
            ThreadStoreError::NotFound { .. },
            "load_messages of a missing thread"
        );
        Ok(())
    })
    .await
}

/// `append` with `Exact(current version)` applies state and messages and adds one to the version.
pub async fn append_with_the_current_version_commits(
    store: Arc<dyn ThreadStore>,
    prefix: &str,
) -> CaseResult {
    run(store, prefix, |cx| async move {
        let id = cx.id("t");
        let meta = metadata(json!({ "k": "v" }));
        cx.create(
            Thread::new(&id, cx.name("kind"))
                .with_parent(cx.name("parent"))
                .with_metadata(meta.clone())
                .with_state(json!({ "step": 1 })),
        )
        .await?;
        let changes = ChangeSet::state(json!({ "step": 2 }))
            .with_message(NewMessage::with_id("s2", json!({ "event": "step 2" })));
        let committed = cx
            .append(&id, changes, VersionPrecondition::Exact(1))
            .await?;
        ensure_eq!(
            committed,
            Committed {
                version: 2,
                last_seq: 1,
                appended: 1,
                skipped: 0
            },
            "the first append's result"
        );
        let committed = cx
            .append(
                &id,
                ChangeSet::state(json!({ "step": 3 })),
                VersionPrecondition::Exact(2),
            )
            .await?;
        ensure_eq!(committed.version, 3, "the second append's version");
        ensure_eq!(committed.last_seq, 1, "the second append's last_seq");
        let head = cx.load(&id).await?;
        ensure_eq!(
            head.state,
            json!({ "step": 3 }),
            "the state after two appends"
        );
        ensure_eq!(head.version, 3, "the version after two appends");
        ensure_eq!(head.last_seq, 1, "last_seq after two appends");
        ensure_eq!(head.metadata, meta, "metadata (appends keep it)");
        ensure_eq!(head.kind, cx.name("kind"), "kind (appends keep it)");
        ensure_eq!(
            head.parent_id,
            Some(cx.name("parent")),
            "parent (appends keep it)"
        );
        ensure_eq!(
            message_ids(&cx.messages(&id).await?),
            vec![Some("s2")],
            "the log"
        );
        Ok(())
    })
    .await
}

/// `append` with a stale `Exact` fails with `VersionConflict { expected, actual }` and changes nothing.
pub async fn append_with_a_stale_version_conflicts_and_changes_nothing(
    store: Arc<dyn ThreadStore>,
    prefix: &str,
) -> CaseResult {
    run(store, prefix, |cx| async move {
        let id = cx.id("t");
        cx.create(Thread::new(&id, cx.name("kind")).with_state(json!({ "v": 1 })))
            .await?;
        cx.append(
            &id,
            ChangeSet::state(json!({ "v": 2 })).with_message(NewMessage::with_id("m2", json!(2))),
            VersionPrecondition::Exact(1),
        )
        .await?;
        let before = cx.load(&id).await?;
        for stale in [1, 0, 3, u64::MAX] {
            let changes = ChangeSet::state(json!({ "v": "stale" }))
                .with_message(NewMessage::with_id(format!("stale-{stale}"), json!("x")))
                .with_message(NewMessage::new(json!("y")))
                .with_terminal(true);
            let error = expect_err!(
                cx.store
                    .append(&id, changes, VersionPrecondition::Exact(stale))
                    .await,
                ThreadStoreError::VersionConflict { .. },
                "append with Exact({stale}) to a thread at version 2"
            );
            if let ThreadStoreError::VersionConflict {
                id: named,
                expected,
                actual,
            } = &error
            {
                ensure_eq!(named, &id, "the conflict's id");
                ensure_eq!(*expected, stale, "the conflict's expected version");
                ensure_eq!(*actual, 2, "the conflict's actual version");
            }
            ensure!(
                !error.is_retryable(),
                "a conflict is not retryable: {error:?}"
            );
            ensure_eq!(
                cx.load(&id).await?,
                before,
                "the head after a conflict on Exact({stale})"
            );
        }
        ensure_eq!(
            message_ids(&cx.messages(&id).await?),
            vec![Some("m2")],
            "the log after the conflicts"
        );
        Ok(())
    })
    .await
}

/// `append` with `Any` commits whatever the stored version is.
pub async fn append_with_any_commits_whatever_the_version(
    store: Arc<dyn ThreadStore>,
    prefix: &str,
) -> CaseResult {
    run(store, prefix, |cx| async move {
        let id = cx.id("t");
        cx.create(Thread::new(&id, cx.name("kind"))).await?;
        for n in 2..=5_u64 {
            let committed = cx
                .append(
                    &id,
                    ChangeSet::state(json!({ "n": n })).with_message(NewMessage::new(json!(n))),
                    VersionPrecondition::Any,
                )
                .await?;
            ensure_eq!(committed.version, n, "the version after append {n}");
            ensure_eq!(committed.last_seq, n - 1, "last_seq after append {n}");
        }
        let head = cx.load(&id).await?;
        ensure_eq!(head.state, json!({ "n": 5 }), "the last state");
        ensure_eq!(head.version, 5, "the version");
        ensure_eq!(
            seqs(&cx.messages(&id).await?),
            vec![1, 2, 3, 4],
            "the log's sequence numbers"
        );
        Ok(())
    })
    .await
}

/// `append` to a missing thread fails with `NotFound`, whatever the precondition, and creates nothing.
pub async fn append_to_a_missing_thread_is_not_found(
    store: Arc<dyn ThreadStore>,
    prefix: &str,
) -> CaseResult {
    run(store, prefix, |cx| async move {
        let id = cx.id("missing");
        for precondition in [
            VersionPrecondition::Any,
            VersionPrecondition::Exact(0),
            VersionPrecondition::Exact(1),
        ] {
            let changes =
                ChangeSet::state(json!(1)).with_message(NewMessage::with_id("m", json!(1)));
            let error = expect_err!(
                cx.store.append(&id, changes, precondition).await,
                ThreadStoreError::NotFound { .. },
                "append with {precondition:?} to a missing thread"
            );
            if let ThreadStoreError::NotFound { id: named } = &error {
                ensure_eq!(named, &id, "the id named by NotFound");
            }
        }
        let head = cx.store.load(&id).await.ctx("load")?;
        ensure!(head.is_none(), "append created the thread: {head:?}");
        Ok(())
    })
    .await
}

/// A 1 MiB state (through `create` and `append`) and a 1 MiB message round-trip unchanged.
pub async fn large_values_round_trip(store: Arc<dyn ThreadStore>, prefix: &str) -> CaseResult {
    const MIB: usize = 1 << 20;
    run(store, prefix, |cx| async move {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut text = |len: usize| -> String { (0..len).map(|_| rng.alphanumeric()).collect() };
        let big_state = json!({ "blob": text(MIB), "tail": "end ✓" });
        let id = cx.id("big");
        cx.create(Thread::new(&id, cx.name("kind")).with_state(big_state.clone()))
            .await?;
        let head = cx.load(&id).await?;
        ensure!(
            head.state == big_state,
            "a 1 MiB state did not round-trip through create"
        );
        let bigger_state = json!({ "blob": text(MIB), "n": 2 });
        let big_body = json!(text(MIB));
        cx.append(
            &id,
            ChangeSet::state(bigger_state.clone())
                .with_message(NewMessage::with_id("big", big_body.clone())),
            VersionPrecondition::Exact(1),
        )
        .await?;
        let head = cx.load(&id).await?;
        ensure!(
            head.state == bigger_state,
            "a 1 MiB state did not round-trip through append"
        );
        ensure_eq!(head.version, 2, "the version");
        let messages = cx.messages(&id).await?;
        ensure!(
            messages.len() == 1 && messages[0].body == big_body,
            "a 1 MiB message did not round-trip ({} messages)",
            messages.len()
        );
        Ok(())
    })
    .await
}

/// Ids with braces, glob characters, spaces, colons and non-ASCII letters, and ids of `MAX_ID_LEN` bytes, work as thread, parent, kind and message ids.
pub async fn ids_with_special_characters_round_trip(
    store: Arc<dyn ThreadStore>,
    prefix: &str,
) -> CaseResult {
    run(store, prefix, |cx| async move {
        let specials = [
            "{tag}",
            "*?[a-z]",
            "sp ace",
            "a:b/c\\d",
            "ünï 漢字 ✓",
            "'\"`$%",
        ];
        let parent = cx.name("{owner}*?");
        let kind = cx.name("kind [x]");
        let mut expected = Vec::new();
        for (i, special) in specials.iter().enumerate() {
            let id = cx.id(&format!("t{i}{special}"));
            cx.create(
                Thread::new(&id, &kind)
                    .with_parent(&parent)
                    .with_state(json!({ "special": special }))
                    .with_message(NewMessage::with_id(*special, json!(i))),
            )
            .await?;
            let committed = cx
                .append(
                    &id,
                    ChangeSet::default()
                        .with_message(NewMessage::with_id(*special, json!("again"))),
                    VersionPrecondition::Exact(1),
                )
                .await?;
            ensure_eq!(
                committed.skipped,
                1,
                "the message id {special:?} de-duplicated"
            );
            let head = cx.load(&id).await?;
            ensure_eq!(head.id, id, "the id");
            ensure_eq!(head.parent_id, Some(parent.clone()), "the parent");
            ensure_eq!(head.kind, kind, "the kind");
            ensure_eq!(head.state, json!({ "special": special }), "the state");
            expected.push(id);
        }
        expected.sort();
        ensure_eq!(
            cx.list_pages(ThreadQuery::by_parent(&parent).with_limit(2))
                .await?,
            expected,
            "listing by a parent with special characters"
        );
        ensure_eq!(
            cx.list_pages(ThreadQuery::by_kind(&kind).with_limit(2))
                .await?,
            expected,
            "listing by a kind with special characters"
        );
        // Glob characters must not match other threads: a parent that would
        // match as a pattern lists nothing.
        let listed = cx.list_pages(ThreadQuery::by_parent(cx.name("*"))).await?;
        ensure!(listed.is_empty(), "the parent \"*\" listed {listed:?}");
        // The longest id accepted works too, as a thread and a message id.
        let longest = cx.id(&"l".repeat(MAX_ID_LEN - cx.prefix.len()));
        let longest_message = "m".repeat(MAX_ID_LEN);
        cx.create(
            Thread::new(&longest, &kind)
                .with_message(NewMessage::with_id(&longest_message, json!(1))),
        )
        .await?;
        ensure_eq!(
            cx.load(&longest).await?.id,
            longest,
            "an id of {MAX_ID_LEN} bytes"
        );
        let committed = cx
            .append(
                &longest,
                ChangeSet::default().with_message(NewMessage::with_id(&longest_message, json!(2))),
                VersionPrecondition::Exact(1),
            )
            .await?;
        ensure_eq!(
            committed.skipped,
            1,
            "a message id of {MAX_ID_LEN} bytes de-duplicated"
        );
        let first = expected[0].clone();
        cx.store.delete(&first).await.ctx("delete")?;
        let head = cx.store.load(&first).await.ctx("load after delete")?;
        ensure!(head.is_none(), "delete of {first:?} left {head:?}");
        Ok(())
    })
    .await
}
