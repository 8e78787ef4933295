//! The listing indexes (by parent, by kind, both, every thread; all threads
//! or the open ones) follow every write that changes what they index, down
//! to the delete, and keep ids, parents and kinds that are prefixes of one
//! another apart.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::json;
use task_store::{AppendRequest, ChangeSet, Thread, ThreadQuery, ThreadStore, VersionPrecondition};

use super::CaseResult;
use super::support::{Context, Cx, list_pages_within, query, run};

/// What the indexes should say about one thread: its parent, kind and
/// finished mark.
#[derive(Debug, Clone)]
struct Indexed {
    parent: Option<String>,
    kind: String,
    terminal: bool,
}

/// The threads of a case as the store should index them.
#[derive(Debug, Default)]
struct Model {
    threads: BTreeMap<String, Indexed>,
}

impl Model {
    fn set(&mut self, id: &str, parent: Option<&str>, kind: &str, terminal: bool) {
        self.threads.insert(
            id.to_owned(),
            Indexed {
                parent: parent.map(str::to_owned),
                kind: kind.to_owned(),
                terminal,
            },
        );
    }

    fn mark(&mut self, id: &str, terminal: bool) {
        if let Some(thread) = self.threads.get_mut(id) {
            thread.terminal = terminal;
        }
    }

    fn remove(&mut self, id: &str) {
        self.threads.remove(id);
    }

    /// The ids a listing should hold, in order.
    fn expected(&self, parent: Option<&str>, kind: Option<&str>, open_only: bool) -> Vec<String> {
        self.threads
            .iter()
            .filter(|(_, t)| parent.is_none() || t.parent.as_deref() == parent)
            .filter(|(_, t)| kind.is_none_or(|kind| t.kind == kind))
            .filter(|(_, t)| !(open_only && t.terminal))
            .map(|(id, _)| id.clone())
            .collect()
    }
}

/// The listings a case checks against its [`Model`]: by each of `parents`
/// and `kinds`, by both, and without a filter (from the case's prefix,
/// keeping the case's ids), open or not, in pages of each of `limits`.
struct Listings<'a> {
    cx: &'a Cx,
    parents: &'a [&'a str],
    kinds: &'a [&'a str],
    open_only: bool,
    limits: &'a [usize],
}

impl Listings<'_> {
    /// Checks that every listing holds exactly what `model` says, after
    /// `step`.
    async fn check(&self, model: &Model, step: &str) -> CaseResult {
        let Self {
            cx,
            parents,
            kinds,
            open_only,
            limits,
        } = self;
        let mut queries: Vec<(Option<&str>, Option<&str>)> = vec![(None, None)];
        queries.extend(parents.iter().map(|p| (Some(*p), None)));
        queries.extend(kinds.iter().map(|k| (None, Some(*k))));
        for p in parents.iter() {
            queries.extend(kinds.iter().map(|k| (Some(*p), Some(*k))));
        }
        for &limit in limits.iter() {
            for &(parent, kind) in &queries {
                let mut listing = query(parent, kind, *open_only).with_limit(limit);
                let within = (parent.is_none() && kind.is_none()).then_some(cx.prefix.as_str());
                listing.after = within.map(str::to_owned);
                let listed = list_pages_within(&*cx.store, listing, within).await?;
                ensure_eq!(
                    listed,
                    model.expected(parent, kind, *open_only),
                    "{step}: listing by parent {parent:?} and kind {kind:?} (open_only {open_only}, pages of {limit})"
                );
            }
        }
        Ok(())
    }

    /// Saves thread `id` with this parent, kind and mark, and checks every
    /// listing.
    async fn save(
        &self,
        model: &mut Model,
        id: &str,
        (parent, kind, terminal): (Option<&str>, &str, bool),
        step: &str,
    ) -> CaseResult {
        let mut thread = Thread::new(id, kind);
        thread.parent_id = parent.map(str::to_owned);
        thread.terminal = terminal;
        self.cx.store.save(thread).await.ctx(step)?;
        model.set(id, parent, kind, terminal);
        self.check(model, step).await
    }
}

/// One thread moves through every write that changes an indexed field
/// (parent, kind, finished mark), then is deleted and created again
/// elsewhere; after each step every listing (by each parent, each kind, both
/// and neither) holds exactly what the writes say, next to a sibling that
/// never moves.
async fn indexes_follow_every_write(cx: Cx, open_only: bool) -> CaseResult {
    let (p1, p2) = (cx.name("p1"), cx.name("p2"));
    let (k1, k2) = (cx.name("k1"), cx.name("k2"));
    let (id, sibling) = (cx.id("moving"), cx.id("sibling"));
    let listings = Listings {
        cx: &cx,
        parents: &[&p1, &p2],
        kinds: &[&k1, &k2],
        open_only,
        limits: &[1, 100],
    };
    let mut model = Model::default();

    cx.create(Thread::new(&sibling, &k1).with_parent(&p1))
        .await?;
    model.set(&sibling, Some(&p1), &k1, false);
    cx.create(Thread::new(&id, &k1).with_parent(&p1)).await?;
    model.set(&id, Some(&p1), &k1, false);
    listings.check(&model, "after create").await?;

    cx.append(&id, ChangeSet::state(json!(1)), VersionPrecondition::Any)
        .await?;
    listings.check(&model, "after an append of a state").await?;

    for (step, indexed) in [
        (
            "save with a new parent",
            (Some(p2.as_str()), k1.as_str(), false),
        ),
        ("save with a new kind, finished", (Some(&p2), &k2, true)),
    ] {
        listings.save(&mut model, &id, indexed, step).await?;
    }
    cx.append(
        &id,
        ChangeSet::default().with_terminal(false),
        VersionPrecondition::Any,
    )
    .await?;
    model.mark(&id, false);
    listings
        .check(&model, "after an append clearing the mark")
        .await?;
    for (step, indexed) in [
        ("save without a parent", (None, k1.as_str(), false)),
        (
            "save back under the first parent, finished",
            (Some(p1.as_str()), &k2, true),
        ),
    ] {
        listings.save(&mut model, &id, indexed, step).await?;
    }

    let results = cx
        .store
        .append_batch(vec![AppendRequest {
            id: id.clone(),
            changes: ChangeSet::default().with_terminal(false),
            precondition: VersionPrecondition::Any,
        }])
        .await;
    ensure!(
        results.iter().all(Result::is_ok),
        "append_batch clearing the mark: {results:?}"
    );
    model.mark(&id, false);
    listings
        .check(&model, "after append_batch clearing the mark")
        .await?;

    cx.store.delete(&id).await.ctx("delete")?;
    model.remove(&id);
    listings.check(&model, "after delete").await?;

    let results = cx
        .store
        .create_batch(vec![Thread::new(&id, &k2).with_parent(&p2)])
        .await;
    ensure!(
        results.iter().all(Result::is_ok),
        "create_batch of the deleted id: {results:?}"
    );
    model.set(&id, Some(&p2), &k2, false);
    listings
        .check(&model, "after create_batch of the deleted id elsewhere")
        .await?;

    cx.store.delete(&id).await.ctx("delete again")?;
    cx.store.delete(&sibling).await.ctx("delete the sibling")?;
    model.remove(&id);
    model.remove(&sibling);
    listings.check(&model, "after deleting both").await
}

/// Listings by parent, by kind, by both and without a filter follow every
/// write that changes a thread's parent or kind (`create`, `save` with a new
/// parent, a new kind, no parent; `create_batch`) and drop it on `delete`,
/// in pages of 1 and of 100, with no stale entry left behind.
pub async fn indexes_follow_every_write_then_delete(
    store: Arc<dyn ThreadStore>,
    prefix: &str,
) -> CaseResult {
    run(store, prefix, |cx| indexes_follow_every_write(cx, false)).await
}

/// The `open_only` listings follow the same writes as
/// [`indexes_follow_every_write_then_delete`], and the finished mark set or
/// cleared by `save`, `append` and `append_batch` along the way.
pub async fn open_indexes_follow_every_write_then_delete(
    store: Arc<dyn ThreadStore>,
    prefix: &str,
) -> CaseResult {
    run(store, prefix, |cx| indexes_follow_every_write(cx, true)).await
}

/// Ids, parents and kinds that are prefixes of one another (`a`, `a `,
/// `a-`, `a0`, `a:b`, `a:b:c`, `aa`, `a~`, `aé`; parents `p`, `p:`, `p:x`,
/// `pp`, `p x`), listed by each parent, kind, both and neither: each listing
/// holds exactly its own threads in byte order, in pages of 1, 2 and 100,
/// and a cursor that is a prefix of later ids skips none of them.
async fn prefixes_stay_apart(cx: Cx, open_only: bool) -> CaseResult {
    let names = ["a", "a ", "a-", "a0", "a:b", "a:b:c", "aa", "a~", "a\u{e9}"];
    let parents: Vec<String> = ["p", "p:", "p:x", "pp", "p x"]
        .iter()
        .map(|p| cx.name(p))
        .collect();
    let kinds: Vec<String> = ["k", "k:", "kk"].iter().map(|k| cx.name(k)).collect();
    let mut model = Model::default();
    let mut threads = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let id = cx.id(name);
        let parent = parents[i % parents.len()].clone();
        let kind = kinds[i % kinds.len()].clone();
        let mut thread = Thread::new(&id, &kind).with_parent(&parent);
        thread.terminal = i % 4 == 3;
        model.set(&id, Some(&parent), &kind, thread.terminal);
        threads.push(thread);
    }
    // Half by create, half by create_batch.
    let batched = threads.split_off(threads.len() / 2);
    for thread in threads {
        cx.create(thread).await?;
    }
    let results = cx.store.create_batch(batched).await;
    ensure!(
        results.iter().all(Result::is_ok),
        "create_batch: {results:?}"
    );
    let parents: Vec<&str> = parents.iter().map(String::as_str).collect();
    let kinds: Vec<&str> = kinds.iter().map(String::as_str).collect();
    let listings = Listings {
        cx: &cx,
        parents: &parents,
        kinds: &kinds,
        open_only,
        limits: &[1, 2, 100],
    };
    listings.check(&model, "ids that are prefixes").await?;
    // A cursor equal to an id that others extend: the ids after it, all of them.
    for cursor in ["a", "a:b", "p"] {
        let after = cx.name(cursor);
        let listing = ThreadQuery {
            open_only,
            after: Some(after.clone()),
            ..ThreadQuery::default()
        };
        let listed = list_pages_within(&*cx.store, listing.with_limit(1), Some(&cx.prefix)).await?;
        let expected: Vec<String> = model
            .expected(None, None, open_only)
            .into_iter()
            .filter(|id| *id > after)
            .collect();
        ensure_eq!(
            listed,
            expected,
            "every id after the cursor {after:?} (open_only {open_only})"
        );
    }
    Ok(())
}

/// Listings keep ids, parents and kinds that are prefixes of one another
/// apart: each listing holds exactly its own threads, in byte order, and a
/// cursor that other ids extend skips none of them.
pub async fn listings_keep_ids_that_are_prefixes_of_one_another_apart(
    store: Arc<dyn ThreadStore>,
    prefix: &str,
) -> CaseResult {
    run(store, prefix, |cx| prefixes_stay_apart(cx, false)).await
}

/// The `open_only` listings keep ids, parents and kinds that are prefixes of
/// one another apart, as the full listings do.
pub async fn open_listings_keep_ids_that_are_prefixes_of_one_another_apart(
    store: Arc<dyn ThreadStore>,
    prefix: &str,
) -> CaseResult {
    run(store, prefix, |cx| prefixes_stay_apart(cx, true)).await
}
