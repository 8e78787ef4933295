//! What every case shares: the failure macros, a case's view of the store
//! ([`Cx`]) with its clean-up, and small helpers.

use std::collections::BTreeSet;
use std::fmt::{self, Debug, Display};
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use serde_json::Value;
use task_store::{
    ChangeSet, Committed, MAX_ID_LEN, Message, Metadata, Thread, ThreadHead, ThreadQuery,
    ThreadReaderExt, ThreadStore, VersionPrecondition,
};

use super::CaseResult;

/// Fails the case with a message unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($what:tt)+) => {
        if !$cond {
            return Err(format!($($what)+));
        }
    };
}

/// Fails the case unless `actual == expected`, showing both.
macro_rules! ensure_eq {
    ($actual:expr, $expected:expr, $($what:tt)+) => {
        match (&$actual, &$expected) {
            (actual, expected) => {
                if actual != expected {
                    return Err(format!(
                        "{}: expected {:?}, got {:?}",
                        format_args!($($what)+),
                        expected,
                        actual
                    ));
                }
            }
        }
    };
}

/// Evaluates to the error of `result` if it matches `pattern`; otherwise
/// fails the case.
macro_rules! expect_err {
    ($result:expr, $pattern:pat, $($what:tt)+) => {
        match $result {
            Err(error @ $pattern) => error,
            Err(other) => {
                return Err(format!(
                    "{}: expected {}, got the error {:?}",
                    format_args!($($what)+),
                    stringify!($pattern),
                    other
                ))
            }
            Ok(value) => {
                return Err(format!(
                    "{}: expected {}, got Ok({:?})",
                    format_args!($($what)+),
                    stringify!($pattern),
                    value
                ))
            }
        }
    };
}

/// Turns a store error into a case failure that says what was being done.
pub(super) trait Context<T> {
    fn ctx(self, what: impl Display) -> Result<T, String>;
}

impl<T> Context<T> for task_store::Result<T> {
    fn ctx(self, what: impl Display) -> Result<T, String> {
        self.map_err(|error| format!("{what}: unexpected error: {error:?}"))
    }
}

/// One case's view of the store: its prefix and the threads to delete at the
/// end.
#[derive(Clone)]
pub(super) struct Cx {
    pub(super) store: Arc<dyn ThreadStore>,
    pub(super) prefix: String,
    created: Arc<Mutex<BTreeSet<String>>>,
}

impl Cx {
    /// A thread id under the case's prefix, deleted when the case ends.
    pub(super) fn id(&self, name: &str) -> String {
        let id = self.name(name);
        self.created
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.clone());
        id
    }

    /// A parent, kind or other name under the case's prefix.
    pub(super) fn name(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    pub(super) async fn load(&self, id: &str) -> Result<ThreadHead, String> {
        self.store
            .load(id)
            .await
            .ctx(format_args!("load {id:?}"))?
            .ok_or_else(|| format!("load {id:?} found nothing"))
    }

    pub(super) async fn messages(&self, id: &str) -> Result<Vec<Message>, String> {
        self.store
            .load_all_messages(id)
            .await
            .ctx(format_args!("load_all_messages {id:?}"))
    }

    pub(super) async fn create(&self, thread: Thread) -> Result<Committed, String> {
        let id = thread.id.clone();
        self.store
            .create(thread)
            .await
            .ctx(format_args!("create {id:?}"))
    }

    pub(super) async fn append(
        &self,
        id: &str,
        changes: ChangeSet,
        precondition: VersionPrecondition,
    ) -> Result<Committed, String> {
        self.store
            .append(id, changes, precondition)
            .await
            .ctx(format_args!("append to {id:?} with {precondition:?}"))
    }

    /// Lists every id matching `query` page by page, checking the paging
    /// invariants on the way.
    pub(super) async fn list_pages(&self, query: ThreadQuery) -> Result<Vec<String>, String> {
        list_pages(&*self.store, query).await
    }

    async fn cleanup(&self) -> CaseResult {
        let ids: Vec<String> =
            std::mem::take(&mut *self.created.lock().unwrap_or_else(PoisonError::into_inner))
                .into_iter()
                .collect();
        let mut failures = Vec::new();
        for chunk in ids.chunks(64) {
            let deletes = chunk.iter().map(|id| self.store.delete(id));
            for (id, result) in chunk.iter().zip(futures::future::join_all(deletes).await) {
                if let Err(error) = result {
                    failures.push(format!("{id:?}: {error}"));
                }
            }
        }
        ensure!(
            failures.is_empty(),
            "cleanup could not delete: {}",
            failures.join("; ")
        );
        Ok(())
    }
}

impl Debug for Cx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cx")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// Runs a case body, then deletes what it created, whatever its outcome.
pub(super) async fn run<F, Fut>(store: Arc<dyn ThreadStore>, prefix: &str, body: F) -> CaseResult
where
    F: FnOnce(Cx) -> Fut,
    Fut: Future<Output = CaseResult>,
{
    let cx = Cx {
        store,
        prefix: prefix.to_owned(),
        created: Arc::default(),
    };
    let outcome = body(cx.clone()).await;
    let cleanup = cx.cleanup().await;
    match (outcome, cleanup) {
        (Err(failure), Err(cleanup)) => Err(format!("{failure} (and {cleanup})")),
        (outcome, cleanup) => outcome.and(cleanup),
    }
}

/// Pages through a listing with `query.limit`, checking that every page is
/// within the limit, in strictly ascending order after the cursor and the
/// previous page, and that `next` is the last id of a full page and `None`
/// only at the end.
pub(super) async fn list_pages(
    store: &dyn ThreadStore,
    query: ThreadQuery,
) -> Result<Vec<String>, String> {
    list_pages_within(store, query, None).await
}

/// [`list_pages`], stopping at the first id that does not start with
/// `within` (when given): on a store shared with other cases, an unfiltered
/// listing from a case's prefix need not page through every other thread.
pub(super) async fn list_pages_within(
    store: &dyn ThreadStore,
    mut query: ThreadQuery,
    within: Option<&str>,
) -> Result<Vec<String>, String> {
    let limit = task_store::effective_limit(query.limit);
    let mut all: Vec<String> = Vec::new();
    for _ in 0..10_000 {
        let page = store
            .list_threads(query.clone())
            .await
            .ctx(format_args!("list_threads {query:?}"))?;
        ensure!(
            page.ids.len() <= limit,
            "a page of {query:?} holds {} ids, over the limit {limit}",
            page.ids.len()
        );
        for id in &page.ids {
            if let Some(last) = all.last().or(query.after.as_ref()) {
                ensure!(
                    id > last,
                    "listing {query:?}: {id:?} comes after {last:?} (duplicate or out of order)"
                );
            }
            if within.is_some_and(|within| !id.starts_with(within)) {
                return Ok(all);
            }
            all.push(id.clone());
        }
        match page.next {
            None => return Ok(all),
            Some(next) => {
                ensure!(
                    page.ids.last() == Some(&next),
                    "listing {query:?}: next cursor {next:?} is not the last id of its page {:?}",
                    page.ids
                );
                query.after = Some(next);
            }
        }
    }
    Err(format!("listing {query:?} did not end after 10000 pages"))
}

/// Runs one spawned worker per item and waits for all of them; a panic in a
/// worker is a failure of the case.
pub(super) async fn join_workers<T: Send + 'static>(
    handles: Vec<tokio::task::JoinHandle<T>>,
) -> Result<Vec<T>, String> {
    let mut outputs = Vec::with_capacity(handles.len());
    for (i, joined) in futures::future::join_all(handles)
        .await
        .into_iter()
        .enumerate()
    {
        outputs.push(joined.map_err(|error| format!("worker {i} did not finish: {error}"))?);
    }
    Ok(outputs)
}

pub(super) fn metadata(value: Value) -> Metadata {
    match value {
        Value::Object(map) => map,
        _ => Metadata::new(),
    }
}

pub(super) fn message_ids(messages: &[Message]) -> Vec<Option<&str>> {
    messages.iter().map(|m| m.id.as_deref()).collect()
}

pub(super) fn seqs(messages: &[Message]) -> Vec<u64> {
    messages.iter().map(|m| m.seq).collect()
}

/// Ids that every backend must refuse, built on `prefix` where possible:
/// empty; C0 controls (`\0`, `\t`, `\n`, `\r`, ESC, U+001F), DEL, and the
/// C1 controls that are not ASCII (U+0080, U+0085, U+009F), at the start,
/// in the middle and at the end; one byte over [`MAX_ID_LEN`]; and an id
/// over the limit in bytes but under it in characters (a backend that counts
/// characters lets it through).
pub(super) fn invalid_ids(prefix: &str) -> Vec<String> {
    let over_in_bytes = (MAX_ID_LEN.saturating_sub(prefix.len())) / 2 + 1;
    vec![
        String::new(),
        format!("{prefix}new\nline"),
        format!("{prefix}nul\0"),
        format!("{prefix}tab\there"),
        format!("{prefix}cr\r"),
        format!("{prefix}esc\u{1b}[0m"),
        format!("{prefix}us\u{1f}"),
        format!("{prefix}del\u{7f}"),
        format!("{prefix}pad\u{80}"),
        format!("{prefix}nel\u{85}line"),
        format!("{prefix}\u{fc}\u{9f}"),
        format!("\u{85}{prefix}"),
        format!(
            "{prefix}{}",
            "x".repeat(MAX_ID_LEN + 1 - prefix.len().min(MAX_ID_LEN))
        ),
        format!("{prefix}{}", "\u{e9}".repeat(over_in_bytes)),
    ]
}

/// Fails unless thread `id` does not exist.
pub(super) async fn ensure_absent(cx: &Cx, id: &str, what: &str) -> CaseResult {
    let head = cx.store.load(id).await.ctx(format_args!("load {id:?}"))?;
    ensure!(head.is_none(), "{what}: {id:?} exists: {head:?}");
    Ok(())
}

/// The head and the whole log of a thread, to compare before and after.
pub(super) async fn snapshot(cx: &Cx, id: &str) -> Result<(ThreadHead, Vec<Message>), String> {
    Ok((cx.load(id).await?, cx.messages(id).await?))
}

/// A listing query by parent and/or kind, every thread or the open ones.
pub(super) fn query(parent: Option<&str>, kind: Option<&str>, open_only: bool) -> ThreadQuery {
    ThreadQuery {
        parent_id: parent.map(str::to_owned),
        kind: kind.map(str::to_owned),
        open_only,
        ..ThreadQuery::default()
    }
}
