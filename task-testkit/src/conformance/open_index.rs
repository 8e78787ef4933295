//! The open index: `ThreadQuery::open_only` listings follow the finished mark
//! in the same write, whatever kind of write sets or clears it.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::json;
use task_store::{
    AppendRequest, ChangeSet, NewMessage, Thread, ThreadQuery, ThreadStore, ThreadStoreError,
    VersionPrecondition,
};

use super::CaseResult;
use super::support::{Context, Cx, list_pages_within, run};

/// The open ids of this case under a parent, a kind, both, or neither (the
/// unfiltered listing, restricted to the case's prefix).
async fn open_ids(
    cx: &Cx,
    parent: Option<&str>,
    kind: Option<&str>,
) -> Result<Vec<String>, String> {
    let query = ThreadQuery {
        parent_id: parent.map(str::to_owned),
        kind: kind.map(str::to_owned),
        open_only: true,
        limit: 3,
        after: (parent.is_none() && kind.is_none()).then(|| cx.prefix.clone()),
    };
    let within = query.after.clone();
    let mut ids = list_pages_within(&*cx.store, query, within.as_deref()).await?;
    ids.retain(|id| id.starts_with(&cx.prefix));
    Ok(ids)
}

/// An `open_only` listing (by parent, kind, both and neither) holds exactly the threads whose finished mark is not set: a thread leaves it in the write that sets the mark and comes back in the write that clears it.
pub async fn open_listing_follows_the_finished_mark(
    store: Arc<dyn ThreadStore>,
    prefix: &str,
) -> CaseResult {
    run(store, prefix, |cx| async move {
        let (parent, other) = (cx.name("parent"), cx.name("other"));
        let (kind, other_kind) = (cx.name("kind"), cx.name("other-kind"));
        let open: Vec<String> = (0..5).map(|i| cx.id(&format!("open-{i}"))).collect();
        for id in &open {
            cx.create(Thread::new(id, &kind).with_parent(&parent))
                .await?;
        }
        let done = cx.id("done");
        let mut thread = Thread::new(&done, &kind).with_parent(&parent);
        thread.terminal = true;
        cx.create(thread).await?;
        let elsewhere = cx.id("elsewhere");
        cx.create(Thread::new(&elsewhere, &other_kind).with_parent(&other))
            .await?;

        ensure_eq!(
            open_ids(&cx, Some(&parent), None).await?,
            open,
            "open by parent"
        );
        ensure_eq!(
            open_ids(&cx, None, Some(&kind)).await?,
            open,
            "open by kind"
        );
        ensure_eq!(
            open_ids(&cx, Some(&parent), Some(&kind)).await?,
            open,
            "open by parent and kind"
        );
        let mut everything = open.clone();
        everything.push(elsewhere.clone());
        everything.sort();
        ensure_eq!(
            open_ids(&cx, None, None).await?,
            everything,
            "open without filters"
        );
        let all = cx.list_pages(ThreadQuery::by_parent(&parent)).await?;
        ensure_eq!(
            all.len(),
            6,
            "the full listing still holds the finished thread"
        );

        // Finishing leaves the open listing in the same write.
        cx.append(
            &open[1],
            ChangeSet::state(json!("done")).with_terminal(true),
            VersionPrecondition::Exact(1),
        )
        .await?;
        let mut expected = open.clone();
        expected.remove(1);
        ensure_eq!(
            open_ids(&cx, Some(&parent), Some(&kind)).await?,
            expected,
            "open after one finished"
        );
        ensure_eq!(
            open_ids(&cx, None, Some(&kind)).await?,
            expected,
            "open by kind after one finished"
        );
        // A write that leaves the mark alone keeps it where it is.
        cx.append(
            &open[1],
            ChangeSet::default().with_message(NewMessage::new(json!("late"))),
            VersionPrecondition::Any,
        )
        .await?;
        ensure_eq!(
            open_ids(&cx, Some(&parent), None).await?,
            expected,
            "open after a message to a finished thread"
        );
        // Clearing the mark brings it back; so does clearing it on a thread
        // created finished.
        cx.append(
            &open[1],
            ChangeSet::default().with_terminal(false),
            VersionPrecondition::Any,
        )
        .await?;
        cx.append(
            &done,
            ChangeSet::default().with_terminal(false),
            VersionPrecondition::Exact(1),
        )
        .await?;
        let mut expected = open.clone();
        expected.push(done.clone());
        expected.sort();
        ensure_eq!(
            open_ids(&cx, Some(&parent), Some(&kind)).await?,
            expected,
            "open after two were reopened"
        );
        // Deleting removes it from the open listing too.
        cx.store.delete(&open[0]).await.ctx("delete")?;
        expected.retain(|id| id != &open[0]);
        ensure_eq!(
            open_ids(&cx, Some(&parent), None).await?,
            expected,
            "open after a delete"
        );
        ensure_eq!(
            open_ids(&cx, None, Some(&kind)).await?,
            expected,
            "open by kind after a delete"
        );
        Ok(())
    })
    .await
}

/// `save`, `create_batch` and `append_batch` keep the open listing as `create` and `append` do: a finished item is not listed, reparenting moves an open thread between parents, and a batch's finished mark takes it out.
pub async fn open_listing_follows_every_kind_of_write(
    store: Arc<dyn ThreadStore>,
    prefix: &str,
) -> CaseResult {
    run(store, prefix, |cx| async move {
        let (p1, p2, kind) = (cx.name("p1"), cx.name("p2"), cx.name("kind"));
        let (a, b, c) = (cx.id("a"), cx.id("b"), cx.id("c"));
        let mut finished = Thread::new(&b, &kind).with_parent(&p1);
        finished.terminal = true;
        let results = cx
            .store
            .create_batch(vec![
                Thread::new(&a, &kind).with_parent(&p1),
                finished,
                Thread::new(&c, &kind).with_parent(&p1),
            ])
            .await;
        ensure!(
            results.iter().all(Result::is_ok),
            "create_batch: {results:?}"
        );
        ensure_eq!(
            open_ids(&cx, Some(&p1), None).await?,
            vec![a.clone(), c.clone()],
            "open after create_batch"
        );

        // save: reparent an open thread; save another as finished.
        cx.store
            .save(Thread::new(&a, &kind).with_parent(&p2))
            .await
            .ctx("save reparenting a")?;
        let mut saved = Thread::new(&c, &kind).with_parent(&p1);
        saved.terminal = true;
        cx.store.save(saved).await.ctx("save c finished")?;
        ensure_eq!(
            open_ids(&cx, Some(&p1), None).await?,
            Vec::<String>::new(),
            "open under p1 after saves"
        );
        ensure_eq!(
            open_ids(&cx, Some(&p2), Some(&kind)).await?,
            vec![a.clone()],
            "open under p2 after saves"
        );
        // save of a finished thread as open, under another parent.
        cx.store
            .save(Thread::new(&b, &kind).with_parent(&p2))
            .await
            .ctx("save reopening b")?;
        ensure_eq!(
            open_ids(&cx, Some(&p2), None).await?,
            vec![a.clone(), b.clone()],
            "open under p2 after reopening b"
        );

        // append_batch: finish one, reopen another, leave a third.
        let results = cx
            .store
            .append_batch(vec![
                AppendRequest {
                    id: a.clone(),
                    changes: ChangeSet::default().with_terminal(true),
                    precondition: VersionPrecondition::Any,
                },
                AppendRequest {
                    id: c.clone(),
                    changes: ChangeSet::default().with_terminal(false),
                    precondition: VersionPrecondition::Any,
                },
                AppendRequest {
                    id: b.clone(),
                    changes: ChangeSet::state(json!(1)),
                    precondition: VersionPrecondition::Any,
                },
            ])
            .await;
        ensure!(
            results.iter().all(Result::is_ok),
            "append_batch: {results:?}"
        );
        ensure_eq!(
            open_ids(&cx, Some(&p2), None).await?,
            vec![b.clone()],
            "open under p2 after append_batch"
        );
        ensure_eq!(
            open_ids(&cx, Some(&p1), Some(&kind)).await?,
            vec![c.clone()],
            "open under p1 after append_batch"
        );
        let mut all_open = vec![b.clone(), c.clone()];
        all_open.sort();
        ensure_eq!(
            open_ids(&cx, None, Some(&kind)).await?,
            all_open,
            "open by kind after append_batch"
        );
        Ok(())
    })
    .await
}

/// Paging through an `open_only` listing while other writers finish threads never lists an id twice, never out of order, and never misses a thread that stayed open throughout.
pub async fn open_listing_pages_without_gaps_while_threads_finish(
    store: Arc<dyn ThreadStore>,
    prefix: &str,
) -> CaseResult {
    run(store, prefix, |cx| async move {
        let parent = cx.name("parent");
        let ids: Vec<String> = (0..120).map(|i| cx.id(&format!("t-{i:03}"))).collect();
        let threads = ids
            .iter()
            .map(|id| Thread::new(id, cx.name("kind")).with_parent(&parent))
            .collect();
        let created = cx.store.create_batch(threads).await;
        ensure!(
            created.iter().all(Result::is_ok),
            "create_batch: {created:?}"
        );
        // Every third thread finishes while the listing pages.
        let finishing: Vec<String> = ids.iter().step_by(3).cloned().collect();
        let stays: BTreeSet<String> = ids
            .iter()
            .filter(|id| !finishing.contains(id))
            .cloned()
            .collect();
        let writer = {
            let store = Arc::clone(&cx.store);
            let finishing = finishing.clone();
            tokio::spawn(async move {
                for id in finishing {
                    store
                        .append(
                            &id,
                            ChangeSet::default().with_terminal(true),
                            VersionPrecondition::Any,
                        )
                        .await?;
                    tokio::task::yield_now().await;
                }
                Ok::<(), ThreadStoreError>(())
            })
        };
        let mut rounds = Vec::new();
        for _ in 0..5 {
            rounds.push(
                cx.list_pages(ThreadQuery::by_parent(&parent).open_only().with_limit(7))
                    .await?,
            );
        }
        writer
            .await
            .map_err(|e| format!("the finishing writer did not end: {e}"))?
            .ctx("finishing a thread")?;
        for (round, listed) in rounds.iter().enumerate() {
            let listed: BTreeSet<String> = listed.iter().cloned().collect();
            let missing: Vec<&String> = stays.difference(&listed).collect();
            ensure!(
                missing.is_empty(),
                "round {round}: threads open throughout are missing: {missing:?}"
            );
            let foreign: Vec<&String> = listed.iter().filter(|id| !ids.contains(id)).collect();
            ensure!(
                foreign.is_empty(),
                "round {round}: listed ids never created: {foreign:?}"
            );
        }
        let after: BTreeSet<String> = cx
            .list_pages(ThreadQuery::by_parent(&parent).open_only().with_limit(7))
            .await?
            .into_iter()
            .collect();
        ensure_eq!(
            after,
            stays,
            "the open listing once every finish is written"
        );
        Ok(())
    })
    .await
}
