//! Bounded reads: message pages and thread listings follow their cursors
//! without duplicates or gaps, and page limits are clamped.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::json;
use task_store::{
    ChangeSet, DEFAULT_PAGE_LIMIT, MAX_PAGE_LIMIT, MessageQuery, NewMessage, Thread, ThreadQuery,
    ThreadStore, VersionPrecondition,
};

use super::CaseResult;
use super::support::{Context, run, seqs};

/// `load_messages` pages forwards from a cursor: `seq > after`, at most `limit`, `next` only while more remain.
pub async fn message_pages_follow_cursors(store: Arc<dyn ThreadStore>, prefix: &str) -> CaseResult {
    run(store, prefix, |cx| async move {
        let id = cx.id("log");
        cx.create(Thread::new(&id, cx.name("kind"))).await?;
        for chunk in [0..7_u64, 7..20, 20..25] {
            let mut changes = ChangeSet::default();
            for i in chunk {
                changes = changes
                    .with_message(NewMessage::with_id(format!("m{i:02}"), json!({ "i": i })));
            }
            cx.append(&id, changes, VersionPrecondition::Any).await?;
        }
        let page = |after, limit| {
            let store = Arc::clone(&cx.store);
            let id = id.clone();
            async move {
                store
                    .load_messages(&id, MessageQuery { after, limit })
                    .await
                    .ctx(format_args!("load_messages after {after} limit {limit}"))
            }
        };
        let mut after = 0;
        let mut seen = Vec::new();
        let mut pages = 0;
        loop {
            let p = page(after, 10).await?;
            pages += 1;
            ensure!(
                p.messages.len() <= 10,
                "a page over its limit: {:?}",
                seqs(&p.messages)
            );
            seen.extend(p.messages.iter().cloned());
            match p.next {
                Some(next) => {
                    ensure_eq!(
                        Some(next),
                        p.messages.last().map(|m| m.seq),
                        "next is the last seq of its page"
                    );
                    after = next;
                }
                None => break,
            }
            ensure!(pages < 100, "paging did not end");
        }
        ensure_eq!(pages, 3, "pages of 10 over 25 messages");
        ensure_eq!(
            seqs(&seen),
            (1..=25).collect::<Vec<u64>>(),
            "every seq once, in order"
        );
        for (i, message) in seen.iter().enumerate() {
            ensure_eq!(message.id, Some(format!("m{i:02}")), "message {i}'s id");
            ensure_eq!(message.body, json!({ "i": i }), "message {i}'s body");
        }
        let middle = page(3, 4).await?;
        ensure_eq!(seqs(&middle.messages), vec![4, 5, 6, 7], "4 after seq 3");
        ensure_eq!(middle.next, Some(7), "the cursor after seq 7");
        let exact = page(0, 25).await?;
        ensure_eq!(
            exact.messages.len(),
            25,
            "a page exactly as long as the log"
        );
        ensure_eq!(exact.next, None, "no next when the page reaches the end");
        let tail = page(24, 10).await?;
        ensure_eq!(seqs(&tail.messages), vec![25], "the last message");
        ensure_eq!(tail.next, None, "no next after the last message");
        for after in [25, 26, 1_000, u64::MAX] {
            let past = page(after, 10).await?;
            ensure!(
                past.messages.is_empty() && past.next.is_none(),
                "a page after {after} in a log of 25: {past:?}"
            );
        }
        Ok(())
    })
    .await
}

/// A message page limit of 0 means `DEFAULT_PAGE_LIMIT`, and no page exceeds `MAX_PAGE_LIMIT`.
pub async fn message_page_limits_are_clamped(
    store: Arc<dyn ThreadStore>,
    prefix: &str,
) -> CaseResult {
    run(store, prefix, |cx| async move {
        let id = cx.id("long-log");
        let total = MAX_PAGE_LIMIT as u64 + 50;
        let mut thread = Thread::new(&id, cx.name("kind"));
        thread.messages = (1..=total).map(|i| NewMessage::new(json!(i))).collect();
        let committed = cx.create(thread).await?;
        ensure_eq!(
            committed.last_seq,
            total,
            "last_seq after creating a long log"
        );
        let load = |after, limit| {
            let store = Arc::clone(&cx.store);
            let id = id.clone();
            async move {
                store
                    .load_messages(&id, MessageQuery { after, limit })
                    .await
                    .ctx(format_args!("load_messages after {after} limit {limit}"))
            }
        };
        let default = load(0, 0).await?;
        ensure_eq!(
            default.messages.len(),
            DEFAULT_PAGE_LIMIT,
            "messages in a page of limit 0"
        );
        ensure_eq!(
            default.next,
            Some(DEFAULT_PAGE_LIMIT as u64),
            "the cursor after a default page"
        );
        for limit in [MAX_PAGE_LIMIT + 1, usize::MAX] {
            let clamped = load(0, limit).await?;
            ensure_eq!(
                clamped.messages.len(),
                MAX_PAGE_LIMIT,
                "messages in a page of limit {limit}"
            );
            ensure_eq!(
                clamped.next,
                Some(MAX_PAGE_LIMIT as u64),
                "the cursor after a clamped page"
            );
        }
        let rest = load(MAX_PAGE_LIMIT as u64, usize::MAX).await?;
        ensure_eq!(
            seqs(&rest.messages),
            (MAX_PAGE_LIMIT as u64 + 1..=total).collect::<Vec<u64>>(),
            "the rest of the log"
        );
        ensure_eq!(rest.next, None, "no next after the rest");
        Ok(())
    })
    .await
}

/// Listing by parent pages through exactly that parent's threads, in order, without duplicates or gaps.
pub async fn list_by_parent_pages_without_duplicates_or_gaps(
    store: Arc<dyn ThreadStore>,
    prefix: &str,
) -> CaseResult {
    run(store, prefix, |cx| async move {
        let (mine, theirs) = (cx.name("parent-a"), cx.name("parent-b"));
        let mut expected = BTreeSet::new();
        for i in 0..23 {
            let id = cx.id(&format!("a-{i:02}"));
            let kind = cx.name(if i % 2 == 0 { "even" } else { "odd" });
            cx.create(Thread::new(&id, kind).with_parent(&mine)).await?;
            expected.insert(id);
        }
        for i in 0..4 {
            let id = cx.id(&format!("b-{i}"));
            cx.create(Thread::new(&id, cx.name("even")).with_parent(&theirs))
                .await?;
        }
        cx.create(Thread::new(cx.id("orphan"), cx.name("even")))
            .await?;
        let expected: Vec<String> = expected.into_iter().collect();
        for limit in [1, 5, 23, 100] {
            let listed = cx
                .list_pages(ThreadQuery::by_parent(&mine).with_limit(limit))
                .await?;
            ensure_eq!(
                listed,
                expected,
                "the children of {mine:?} in pages of {limit}"
            );
        }
        let listed = cx.list_pages(ThreadQuery::by_parent(&theirs)).await?;
        ensure_eq!(listed.len(), 4, "the children of {theirs:?}");
        let nobody = cx
            .list_pages(ThreadQuery::by_parent(cx.name("nobody")))
            .await?;
        ensure!(
            nobody.is_empty(),
            "a parent without children listed {nobody:?}"
        );
        // A cursor that is not a listed id still works: ids after it.
        let from_middle = cx
            .list_pages(ThreadQuery::by_parent(&mine).with_after(format!("{}a-10x", cx.prefix)))
            .await?;
        ensure_eq!(
            from_middle,
            expected[11..].to_vec(),
            "ids after a cursor between ids"
        );
        Ok(())
    })
    .await
}

/// Listing by kind pages through exactly that kind's threads, in order, without duplicates or gaps.
pub async fn list_by_kind_pages_without_duplicates_or_gaps(
    store: Arc<dyn ThreadStore>,
    prefix: &str,
) -> CaseResult {
    run(store, prefix, |cx| async move {
        let (wanted, other) = (cx.name("wanted"), cx.name("other"));
        let mut expected = Vec::new();
        for i in 0..17 {
            let id = cx.id(&format!("w-{i:02}"));
            let mut thread = Thread::new(&id, &wanted);
            if i % 3 != 0 {
                thread = thread.with_parent(cx.name(&format!("parent-{}", i % 3)));
            }
            cx.create(thread).await?;
            expected.push(id);
        }
        for i in 0..3 {
            cx.create(Thread::new(cx.id(&format!("o-{i}")), &other))
                .await?;
        }
        for limit in [1, 4, 17, 0] {
            let listed = cx
                .list_pages(ThreadQuery::by_kind(&wanted).with_limit(limit))
                .await?;
            ensure_eq!(
                listed,
                expected,
                "threads of kind {wanted:?} in pages of {limit}"
            );
        }
        let listed = cx.list_pages(ThreadQuery::by_kind(&other)).await?;
        ensure_eq!(listed.len(), 3, "threads of kind {other:?}");
        Ok(())
    })
    .await
}

/// Listing by parent and kind gives exactly the threads with both, in order, without duplicates or gaps.
pub async fn list_by_parent_and_kind_pages_without_duplicates_or_gaps(
    store: Arc<dyn ThreadStore>,
    prefix: &str,
) -> CaseResult {
    run(store, prefix, |cx| async move {
        let (p, q) = (cx.name("p"), cx.name("q"));
        let (k1, k2) = (cx.name("k1"), cx.name("k2"));
        let mut p_k1 = Vec::new();
        let mut p_k2 = Vec::new();
        let mut q_k1 = Vec::new();
        // Interleave the ids so that each filter has to skip the others.
        for i in 0..30 {
            let id = cx.id(&format!("t-{i:02}"));
            let (parent, kind, bucket) = match i % 5 {
                0 | 2 => (&p, &k1, &mut p_k1),
                1 => (&p, &k2, &mut p_k2),
                _ => (&q, &k1, &mut q_k1),
            };
            cx.create(Thread::new(&id, kind).with_parent(parent))
                .await?;
            bucket.push(id);
        }
        for limit in [1, 5, 100] {
            let listed = cx
                .list_pages(ThreadQuery::by_parent(&p).with_kind(&k1).with_limit(limit))
                .await?;
            ensure_eq!(listed, p_k1, "parent p, kind k1, pages of {limit}");
            let listed = cx
                .list_pages(ThreadQuery::by_parent(&p).with_kind(&k2).with_limit(limit))
                .await?;
            ensure_eq!(listed, p_k2, "parent p, kind k2, pages of {limit}");
            let listed = cx
                .list_pages(ThreadQuery::by_parent(&q).with_kind(&k1).with_limit(limit))
                .await?;
            ensure_eq!(listed, q_k1, "parent q, kind k1, pages of {limit}");
        }
        let none = cx
            .list_pages(ThreadQuery::by_parent(&q).with_kind(&k2))
            .await?;
        ensure!(
            none.is_empty(),
            "parent q has no thread of kind k2, listed {none:?}"
        );
        let none = cx
            .list_pages(ThreadQuery::by_parent(cx.name("nobody")).with_kind(&k1))
            .await?;
        ensure!(none.is_empty(), "an unknown parent listed {none:?}");
        Ok(())
    })
    .await
}

/// A listing limit of 0 means `DEFAULT_PAGE_LIMIT`, and no page exceeds `MAX_PAGE_LIMIT`.
pub async fn list_page_limits_are_clamped(store: Arc<dyn ThreadStore>, prefix: &str) -> CaseResult {
    run(store, prefix, |cx| async move {
        let parent = cx.name("crowd");
        let kind = cx.name("kind");
        let total = MAX_PAGE_LIMIT + 5;
        let ids: Vec<String> = (0..total).map(|i| cx.id(&format!("c-{i:04}"))).collect();
        for chunk in ids.chunks(64) {
            let creates = chunk
                .iter()
                .map(|id| cx.store.create(Thread::new(id, &kind).with_parent(&parent)));
            for (id, result) in chunk.iter().zip(futures::future::join_all(creates).await) {
                result.ctx(format_args!("create {id:?}"))?;
            }
        }
        let list = |limit| {
            let store = Arc::clone(&cx.store);
            let query = ThreadQuery::by_parent(&parent).with_limit(limit);
            async move {
                store
                    .list_threads(query)
                    .await
                    .ctx(format_args!("list_threads with limit {limit}"))
            }
        };
        let default = list(0).await?;
        ensure_eq!(
            default.ids,
            ids[..DEFAULT_PAGE_LIMIT].to_vec(),
            "a page of limit 0"
        );
        ensure_eq!(
            default.next,
            Some(ids[DEFAULT_PAGE_LIMIT - 1].clone()),
            "the cursor after a default page"
        );
        for limit in [MAX_PAGE_LIMIT + 1, usize::MAX] {
            let clamped = list(limit).await?;
            ensure_eq!(
                clamped.ids.len(),
                MAX_PAGE_LIMIT,
                "ids in a page of limit {limit}"
            );
            ensure_eq!(
                clamped.next,
                Some(ids[MAX_PAGE_LIMIT - 1].clone()),
                "the cursor after a clamped page"
            );
        }
        let all = cx
            .list_pages(ThreadQuery::by_parent(&parent).with_limit(usize::MAX))
            .await?;
        ensure!(
            all == ids,
            "paging with the largest limit lists {} of {total} ids",
            all.len()
        );
        let by_kind = cx
            .list_pages(ThreadQuery::by_kind(&kind).with_limit(0))
            .await?;
        ensure!(
            by_kind == ids,
            "paging by kind lists {} of {total} ids",
            by_kind.len()
        );
        Ok(())
    })
    .await
}

/// Listing without a filter lists every thread in id order; the case's own ids, after its prefix, come first.
pub async fn list_without_filters_lists_every_thread(
    store: Arc<dyn ThreadStore>,
    prefix: &str,
) -> CaseResult {
    run(store, prefix, |cx| async move {
        // Every id that sorts between the prefix and the prefix followed by
        // anything starts with the prefix, so only this case's threads can
        // come first, even on a store shared with other cases.
        let ids = vec![cx.id("a"), cx.id("b"), cx.id("c")];
        for (i, id) in ids.iter().enumerate() {
            let mut thread = Thread::new(id, cx.name(&format!("kind-{i}")));
            if i == 1 {
                thread = thread.with_parent(cx.name("parent"));
            }
            cx.create(thread).await?;
        }
        let query = ThreadQuery {
            after: Some(cx.prefix.clone()),
            limit: 3,
            ..ThreadQuery::default()
        };
        let page = cx.store.list_threads(query).await.ctx("list_threads")?;
        ensure_eq!(page.ids, ids, "the first page after the prefix");
        let query = ThreadQuery {
            after: Some(ids[2].clone()),
            limit: 1,
            ..ThreadQuery::default()
        };
        let page = cx.store.list_threads(query).await.ctx("list_threads")?;
        ensure!(
            page.ids.iter().all(|id| !id.starts_with(&cx.prefix)),
            "a thread of this case listed twice or out of order: {page:?}"
        );
        Ok(())
    })
    .await
}
