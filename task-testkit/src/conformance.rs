//! The backend conformance suite: the storage contract of [`task_store`],
//! checked behaviour by behaviour.
//!
//! Every backend and every wrapper runs all of it from its own
//! `tests/conformance.rs`, through [`conformance_tests!`](crate::conformance_tests):
//!
//! ```
//! // tests/conformance.rs of a backend crate
//! use std::sync::Arc;
//!
//! use task_store::ThreadStore;
//! # use task_store_memory::MemoryStore as MyStore;
//!
//! async fn make_store() -> Arc<dyn ThreadStore> {
//!     // Connect to a server here, or return `None` from an
//!     // `Option<Arc<dyn ThreadStore>>` factory to skip where there is none.
//!     Arc::new(MyStore::new())
//! }
//!
//! task_testkit::conformance_tests!(make_store());
//! # fn main() {}
//! ```
//!
//! The macro stamps out a module `conformance` holding one
//! `#[tokio::test(flavor = "multi_thread", worker_threads = 4)]` per case, so
//! `cargo test conformance` runs them all and
//! `cargo test conformance::create_then_load_round_trips` runs one. The test
//! crate needs `tokio` (features `macros` and `rt-multi-thread`) as a
//! dev-dependency.
//!
//! The factory expression is evaluated once per case and must produce a future
//! whose output is a store: `Arc<dyn ThreadStore>`, `Arc<S>` for a concrete
//! store, or an `Option` of either, where `None` skips the case (for a backend
//! whose server cannot be had; the factory says why, loudly). Several cases
//! may share one server: each case works under a fresh random prefix
//! ([`fresh_prefix`]) for its thread ids, parents and kinds, and deletes the
//! threads it created when it ends.
//!
//! Each case is also a plain `pub async fn(store, prefix) -> CaseResult` that
//! returns `Err(what went wrong)` instead of panicking, so a test can run a
//! case against a store that is meant to fail it (see
//! [`broken`](crate::broken)).

use std::collections::BTreeSet;
use std::fmt::{self, Debug, Display};
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use serde_json::{Value, json};
use task_store::{
    AppendRequest, ChangeSet, Committed, DEFAULT_PAGE_LIMIT, MAX_ID_LEN, MAX_PAGE_LIMIT, Message,
    MessageQuery, Metadata, NewMessage, Thread, ThreadHead, ThreadQuery, ThreadReaderExt,
    ThreadStore, ThreadStoreError, VersionPrecondition,
};
use tokio::sync::Barrier;

/// What a case returns: `Err` says which expectation failed and how.
pub type CaseResult = Result<(), String>;

/// A fresh random prefix for one case's ids, parents and kinds, such as
/// `conformance-3f9a0c1e77d2b460:`.
pub fn fresh_prefix() -> String {
    format!("conformance-{:016x}:", fastrand::u64(..))
}

/// What a store factory of [`conformance_tests!`](crate::conformance_tests)
/// may produce: a store, or `None` to skip the case.
pub trait CaseStore {
    /// The store to run the case on, or `None` to skip it.
    fn into_case_store(self) -> Option<Arc<dyn ThreadStore>>;
}

impl CaseStore for Arc<dyn ThreadStore> {
    fn into_case_store(self) -> Option<Arc<dyn ThreadStore>> {
        Some(self)
    }
}

impl CaseStore for Option<Arc<dyn ThreadStore>> {
    fn into_case_store(self) -> Option<Arc<dyn ThreadStore>> {
        self
    }
}

impl<S: ThreadStore> CaseStore for Arc<S> {
    fn into_case_store(self) -> Option<Arc<dyn ThreadStore>> {
        Some(self)
    }
}

impl<S: ThreadStore> CaseStore for Option<Arc<S>> {
    fn into_case_store(self) -> Option<Arc<dyn ThreadStore>> {
        self.map(|store| store as Arc<dyn ThreadStore>)
    }
}

/// Panics with a case's failure, naming the case and its prefix. Used by
/// [`conformance_tests!`](crate::conformance_tests).
///
/// # Panics
///
/// When `result` is an `Err`.
#[track_caller]
pub fn check(case: &str, prefix: &str, result: CaseResult) {
    if let Err(failure) = result {
        panic!("conformance case `{case}` failed (id prefix {prefix:?}): {failure}");
    }
}

/// Stamps out the conformance suite as one test per case for a store factory.
///
/// The argument is an expression evaluated once per case (inside the
/// generated module, which imports everything from the module where the
/// macro is called); it must be a future whose output implements
/// [`CaseStore`](crate::conformance::CaseStore): `Arc<dyn ThreadStore>`,
/// `Arc<S>`, or an `Option` of either (`None` skips the case).
///
/// ```
/// use std::sync::Arc;
///
/// use task_store::ThreadStore;
/// use task_store_memory::MemoryStore;
///
/// task_testkit::conformance_tests!(async {
///     Arc::new(MemoryStore::new()) as Arc<dyn ThreadStore>
/// });
/// # fn main() {}
/// ```
///
/// The test crate needs `tokio` with the `macros` and `rt-multi-thread`
/// features. See the [module docs](crate::conformance).
#[macro_export]
macro_rules! conformance_tests {
    ($factory:expr $(,)?) => {
        /// The backend conformance suite of `task-testkit`, one test per case.
        mod conformance {
            #[allow(unused_imports)]
            use super::*;

            $crate::__conformance_cases! {
                ($factory)
                create_then_load_round_trips,
                create_of_a_taken_id_fails_and_changes_nothing,
                load_of_a_missing_thread_finds_nothing,
                append_with_the_current_version_commits,
                append_with_a_stale_version_conflicts_and_changes_nothing,
                append_with_any_commits_whatever_the_version,
                append_to_a_missing_thread_is_not_found,
                messages_with_known_ids_are_skipped,
                message_ids_are_scoped_to_their_thread,
                change_set_that_changes_nothing_keeps_the_version,
                message_pages_follow_cursors,
                message_page_limits_are_clamped,
                list_by_parent_pages_without_duplicates_or_gaps,
                list_by_kind_pages_without_duplicates_or_gaps,
                list_by_parent_and_kind_pages_without_duplicates_or_gaps,
                list_page_limits_are_clamped,
                list_without_filters_lists_every_thread,
                deleted_thread_is_gone_from_loads_and_listings,
                delete_is_idempotent,
                save_creates_a_missing_thread,
                save_replaces_an_existing_thread,
                save_reindexes_when_parent_or_kind_changes,
                invalid_thread_ids_are_refused_and_nothing_written,
                invalid_parents_and_kinds_are_refused_and_nothing_written,
                invalid_message_ids_are_refused_and_nothing_written,
                invalid_query_ids_are_refused,
                concurrent_exact_appends_have_exactly_one_winner,
                compare_and_swap_loops_lose_no_update,
                concurrent_any_appends_all_commit,
                concurrent_creates_have_exactly_one_winner,
                large_values_round_trip,
                append_batch_returns_one_result_per_request,
                terminal_mark_round_trips,
                ids_with_special_characters_round_trip,
                create_batch_round_trips_many_threads,
                create_batch_refuses_taken_and_invalid_items_alone,
                create_batch_with_a_repeated_id_creates_the_first,
                create_batch_racing_create_has_one_winner_per_id,
                create_batch_of_nothing_returns_nothing,
                open_listing_follows_the_finished_mark,
                open_listing_follows_every_kind_of_write,
                open_listing_pages_without_gaps_while_threads_finish,
            }
        }
    };
}

/// Implementation detail of [`conformance_tests!`].
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_cases {
    (($factory:expr) $($case:ident),* $(,)?) => {$(
        #[::tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $case() {
            let Some(store) = $crate::conformance::CaseStore::into_case_store($factory.await)
            else {
                ::std::eprintln!(
                    "conformance case `{}` skipped: the store factory gave no store",
                    ::std::stringify!($case),
                );
                return;
            };
            let prefix = $crate::conformance::fresh_prefix();
            let result = $crate::conformance::$case(store, &prefix).await;
            $crate::conformance::check(::std::stringify!($case), &prefix, result);
        }
    )*};
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

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
trait Context<T> {
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
struct Cx {
    store: Arc<dyn ThreadStore>,
    prefix: String,
    created: Arc<Mutex<BTreeSet<String>>>,
}

impl Cx {
    /// A thread id under the case's prefix, deleted when the case ends.
    fn id(&self, name: &str) -> String {
        let id = self.name(name);
        self.created
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.clone());
        id
    }

    /// A parent, kind or other name under the case's prefix.
    fn name(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    async fn load(&self, id: &str) -> Result<ThreadHead, String> {
        self.store
            .load(id)
            .await
            .ctx(format_args!("load {id:?}"))?
            .ok_or_else(|| format!("load {id:?} found nothing"))
    }

    async fn messages(&self, id: &str) -> Result<Vec<Message>, String> {
        self.store
            .load_all_messages(id)
            .await
            .ctx(format_args!("load_all_messages {id:?}"))
    }

    async fn create(&self, thread: Thread) -> Result<Committed, String> {
        let id = thread.id.clone();
        self.store
            .create(thread)
            .await
            .ctx(format_args!("create {id:?}"))
    }

    async fn append(
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
    async fn list_pages(&self, query: ThreadQuery) -> Result<Vec<String>, String> {
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
async fn run<F, Fut>(store: Arc<dyn ThreadStore>, prefix: &str, body: F) -> CaseResult
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
/// within the limit, in strictly ascending order after the previous page, and
/// that `next` is the last id of a full page and `None` only at the end.
async fn list_pages(
    store: &dyn ThreadStore,
    mut query: ThreadQuery,
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
            if let Some(last) = all.last() {
                ensure!(
                    id > last,
                    "listing {query:?}: {id:?} comes after {last:?} (duplicate or out of order)"
                );
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
async fn join_workers<T: Send + 'static>(
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

fn metadata(value: Value) -> Metadata {
    match value {
        Value::Object(map) => map,
        _ => Metadata::new(),
    }
}

fn message_ids(messages: &[Message]) -> Vec<Option<&str>> {
    messages.iter().map(|m| m.id.as_deref()).collect()
}

fn seqs(messages: &[Message]) -> Vec<u64> {
    messages.iter().map(|m| m.seq).collect()
}

/// Ids that every backend must refuse, built on `prefix` where possible.
fn invalid_ids(prefix: &str) -> Vec<String> {
    vec![
        String::new(),
        format!("{prefix}new\nline"),
        format!("{prefix}nul\0"),
        format!("{prefix}tab\there"),
        format!("{prefix}del\u{7f}"),
        format!("{prefix}{}", "x".repeat(MAX_ID_LEN + 1)),
    ]
}

// ---------------------------------------------------------------------------
// Creating and loading
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// Appending and preconditions
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// Message pages
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// Listing
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// Deleting and saving
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------

/// Empty, over-long and control-character thread ids are refused with `InvalidInput` by every method, and nothing is written.
pub async fn invalid_thread_ids_are_refused_and_nothing_written(
    store: Arc<dyn ThreadStore>,
    prefix: &str,
) -> CaseResult {
    run(store, prefix, |cx| async move {
        let (parent, kind) = (cx.name("parent"), cx.name("kind"));
        for bad in invalid_ids(&cx.prefix) {
            let thread = Thread::new(&bad, &kind).with_parent(&parent);
            expect_err!(
                cx.store.create(thread.clone()).await,
                ThreadStoreError::InvalidInput { .. },
                "create with the thread id {bad:?}"
            );
            expect_err!(
                cx.store.save(thread).await,
                ThreadStoreError::InvalidInput { .. },
                "save with the thread id {bad:?}"
            );
            expect_err!(
                cx.store
                    .append(&bad, ChangeSet::state(json!(1)), VersionPrecondition::Any)
                    .await,
                ThreadStoreError::InvalidInput { .. },
                "append to the thread id {bad:?}"
            );
            expect_err!(
                cx.store.load(&bad).await,
                ThreadStoreError::InvalidInput { .. },
                "load of the thread id {bad:?}"
            );
            expect_err!(
                cx.store.load_messages(&bad, MessageQuery::default()).await,
                ThreadStoreError::InvalidInput { .. },
                "load_messages of the thread id {bad:?}"
            );
            expect_err!(
                cx.store.delete(&bad).await,
                ThreadStoreError::InvalidInput { .. },
                "delete of the thread id {bad:?}"
            );
            let mut results = cx
                .store
                .append_batch(vec![AppendRequest {
                    id: bad.clone(),
                    changes: ChangeSet::state(json!(1)),
                    precondition: VersionPrecondition::Any,
                }])
                .await;
            ensure_eq!(results.len(), 1, "append_batch's result count");
            expect_err!(
                results.remove(0),
                ThreadStoreError::InvalidInput { .. },
                "append_batch to the thread id {bad:?}"
            );
        }
        for query in [ThreadQuery::by_parent(&parent), ThreadQuery::by_kind(&kind)] {
            let listed = cx.list_pages(query.clone()).await?;
            ensure!(
                listed.is_empty(),
                "refused writes were indexed: {query:?} lists {listed:?}"
            );
        }
        Ok(())
    })
    .await
}

/// Invalid parents and kinds are refused with `InvalidInput` by `create` and `save`, and nothing is written.
pub async fn invalid_parents_and_kinds_are_refused_and_nothing_written(
    store: Arc<dyn ThreadStore>,
    prefix: &str,
) -> CaseResult {
    run(store, prefix, |cx| async move {
        let fresh = cx.id("fresh");
        let existing = cx.id("existing");
        cx.create(
            Thread::new(&existing, cx.name("kind"))
                .with_parent(cx.name("parent"))
                .with_state(json!({ "kept": true })),
        )
        .await?;
        let before = cx.load(&existing).await?;
        for bad in invalid_ids(&cx.prefix) {
            for (what, thread) in [
                ("kind", Thread::new(&fresh, &bad)),
                (
                    "parent",
                    Thread::new(&fresh, cx.name("kind")).with_parent(&bad),
                ),
            ] {
                expect_err!(
                    cx.store.create(thread.clone()).await,
                    ThreadStoreError::InvalidInput { .. },
                    "create with the {what} {bad:?}"
                );
                expect_err!(
                    cx.store.save(thread.clone()).await,
                    ThreadStoreError::InvalidInput { .. },
                    "save of a new thread with the {what} {bad:?}"
                );
                let mut over = thread;
                over.id.clone_from(&existing);
                over.state = json!({ "kept": false });
                expect_err!(
                    cx.store.save(over).await,
                    ThreadStoreError::InvalidInput { .. },
                    "save over an existing thread with the {what} {bad:?}"
                );
            }
        }
        let head = cx.store.load(&fresh).await.ctx("load")?;
        ensure!(
            head.is_none(),
            "a refused write created the thread: {head:?}"
        );
        ensure_eq!(
            cx.load(&existing).await?,
            before,
            "the existing thread after refused saves"
        );
        Ok(())
    })
    .await
}

/// Invalid message ids are refused with `InvalidInput` by `create`, `append` and `save`, and nothing is written.
pub async fn invalid_message_ids_are_refused_and_nothing_written(
    store: Arc<dyn ThreadStore>,
    prefix: &str,
) -> CaseResult {
    run(store, prefix, |cx| async move {
        let fresh = cx.id("fresh");
        let existing = cx.id("existing");
        cx.create(
            Thread::new(&existing, cx.name("kind"))
                .with_message(NewMessage::with_id("ok", json!(1))),
        )
        .await?;
        let before = cx.load(&existing).await?;
        for bad in invalid_ids("") {
            // A good message first: a partial write would keep it.
            let good = NewMessage::with_id("good", json!("good"));
            let bad_message = NewMessage::with_id(bad.clone(), json!("bad"));
            expect_err!(
                cx.store
                    .create(
                        Thread::new(&fresh, cx.name("kind"))
                            .with_message(good.clone())
                            .with_message(bad_message.clone())
                    )
                    .await,
                ThreadStoreError::InvalidInput { .. },
                "create with the message id {bad:?}"
            );
            let changes = ChangeSet::state(json!("changed"))
                .with_message(good.clone())
                .with_message(bad_message.clone())
                .with_terminal(true);
            for precondition in [VersionPrecondition::Exact(1), VersionPrecondition::Any] {
                expect_err!(
                    cx.store
                        .append(&existing, changes.clone(), precondition)
                        .await,
                    ThreadStoreError::InvalidInput { .. },
                    "append with the message id {bad:?} and {precondition:?}"
                );
            }
            expect_err!(
                cx.store
                    .save(
                        Thread::new(&existing, cx.name("kind"))
                            .with_state(json!("changed"))
                            .with_message(good)
                            .with_message(bad_message)
                    )
                    .await,
                ThreadStoreError::InvalidInput { .. },
                "save with the message id {bad:?}"
            );
        }
        let head = cx.store.load(&fresh).await.ctx("load")?;
        ensure!(
            head.is_none(),
            "a refused create wrote the thread: {head:?}"
        );
        ensure_eq!(
            cx.load(&existing).await?,
            before,
            "the existing thread after refused writes"
        );
        ensure_eq!(
            message_ids(&cx.messages(&existing).await?),
            vec![Some("ok")],
            "the log after refused writes"
        );
        Ok(())
    })
    .await
}

/// `list_threads` refuses an invalid parent or kind with `InvalidInput`.
pub async fn invalid_query_ids_are_refused(
    store: Arc<dyn ThreadStore>,
    prefix: &str,
) -> CaseResult {
    run(store, prefix, |cx| async move {
        for bad in invalid_ids(&cx.prefix) {
            for query in [
                ThreadQuery::by_parent(&bad),
                ThreadQuery::by_kind(&bad),
                ThreadQuery::by_parent(cx.name("parent")).with_kind(&bad),
                ThreadQuery::by_parent(&bad).with_kind(cx.name("kind")),
            ] {
                expect_err!(
                    cx.store.list_threads(query.clone()).await,
                    ThreadStoreError::InvalidInput { .. },
                    "list_threads {query:?}"
                );
            }
        }
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------
// Concurrency
// ---------------------------------------------------------------------------

/// Of 64 concurrent appends with the same `Exact(v)`, exactly one commits; the others conflict and leave no trace.
pub async fn concurrent_exact_appends_have_exactly_one_winner(
    store: Arc<dyn ThreadStore>,
    prefix: &str,
) -> CaseResult {
    const WRITERS: usize = 64;
    run(store, prefix, |cx| async move {
        let id = cx.id("contended");
        cx.create(Thread::new(&id, cx.name("kind")).with_state(json!({ "winner": null })))
            .await?;
        let barrier = Arc::new(Barrier::new(WRITERS));
        let handles = (0..WRITERS)
            .map(|writer| {
                let (store, id, barrier) =
                    (Arc::clone(&cx.store), id.clone(), Arc::clone(&barrier));
                tokio::spawn(async move {
                    let changes = ChangeSet::state(json!({ "winner": writer }))
                        .with_message(NewMessage::with_id(format!("w{writer}"), json!(writer)));
                    barrier.wait().await;
                    store
                        .append(&id, changes, VersionPrecondition::Exact(1))
                        .await
                })
            })
            .collect();
        let results = join_workers(handles).await?;
        let mut winners = Vec::new();
        let mut conflicts = Vec::new();
        for (writer, result) in results.into_iter().enumerate() {
            match result {
                Ok(committed) => winners.push((writer, committed.version)),
                Err(ThreadStoreError::VersionConflict {
                    expected: 1,
                    actual,
                    ..
                }) => conflicts.push(actual),
                Err(other) => {
                    return Err(format!(
                        "writer {writer}: expected success or VersionConflict, got {other:?}"
                    ));
                }
            }
        }
        ensure!(
            winners.len() == 1,
            "{} of {WRITERS} concurrent Exact(1) appends committed (writer, version): {:?}",
            winners.len(),
            &winners[..winners.len().min(8)]
        );
        let (winner, version) = winners[0];
        ensure_eq!(version, 2, "the winner's version");
        ensure!(
            conflicts.iter().all(|&actual| actual == 2),
            "conflicts must report the actual version 2: {conflicts:?}"
        );
        let head = cx.load(&id).await?;
        ensure_eq!(head.version, 2, "the version after the race");
        ensure_eq!(
            head.state,
            json!({ "winner": winner }),
            "the state is the winner's"
        );
        let messages = cx.messages(&id).await?;
        ensure_eq!(
            message_ids(&messages),
            vec![Some(format!("w{winner}").as_str())],
            "the log holds the winner's message alone"
        );
        Ok(())
    })
    .await
}

/// 16 workers each add 1 to a counter 25 times by load-and-`Exact` loops: the count and version are exact, no update is lost.
pub async fn compare_and_swap_loops_lose_no_update(
    store: Arc<dyn ThreadStore>,
    prefix: &str,
) -> CaseResult {
    const WORKERS: u64 = 16;
    const INCREMENTS: u64 = 25;
    const MAX_ATTEMPTS: u64 = 100_000;
    run(store, prefix, |cx| async move {
        let id = cx.id("counter");
        cx.create(Thread::new(&id, cx.name("kind")).with_state(json!({ "count": 0 })))
            .await?;
        // Every worker reads version 1 before any of them writes, so a store
        // that ignores preconditions is caught for sure.
        let first_round = Arc::new(Barrier::new(WORKERS as usize));
        let handles = (0..WORKERS)
            .map(|worker| {
                let (store, id, barrier) =
                    (Arc::clone(&cx.store), id.clone(), Arc::clone(&first_round));
                tokio::spawn(async move {
                    let mut attempts = 0;
                    // Commits that did not land right on the version they
                    // read: only a store that ignores preconditions has any.
                    let mut skewed = Vec::new();
                    for increment in 0..INCREMENTS {
                        loop {
                            attempts += 1;
                            if attempts > MAX_ATTEMPTS {
                                return Err(format!(
                                    "worker {worker} gave up after {MAX_ATTEMPTS} attempts"
                                ));
                            }
                            let head = store
                                .load(&id)
                                .await
                                .ctx(format_args!("worker {worker}: load"))?
                                .ok_or_else(|| format!("worker {worker}: the counter vanished"))?;
                            if attempts == 1 {
                                barrier.wait().await;
                            }
                            let count = head.state["count"].as_u64().ok_or_else(|| {
                                format!("worker {worker}: no count in {}", head.state)
                            })?;
                            let changes = ChangeSet::state(json!({ "count": count + 1 }))
                                .with_message(NewMessage::with_id(
                                    format!("w{worker}-{increment}"),
                                    json!({ "worker": worker, "count": count + 1 }),
                                ));
                            match store
                                .append(&id, changes, VersionPrecondition::Exact(head.version))
                                .await
                            {
                                Ok(committed) => {
                                    if committed.version != head.version + 1 {
                                        skewed.push(format!(
                                            "worker {worker} read version {} and committed version {}",
                                            head.version, committed.version
                                        ));
                                    }
                                    break;
                                }
                                Err(error) if error.is_conflict() => continue,
                                Err(error) => {
                                    return Err(format!(
                                        "worker {worker}: append failed: {error:?}"
                                    ));
                                }
                            }
                        }
                    }
                    Ok(skewed)
                })
            })
            .collect();
        let mut skewed = Vec::new();
        for result in join_workers(handles).await? {
            skewed.extend(result?);
        }
        let total = WORKERS * INCREMENTS;
        let head = cx.load(&id).await?;
        let count = head.state["count"].as_u64().unwrap_or(0);
        ensure!(
            count == total,
            "lost updates: {WORKERS} workers added 1 to the counter {INCREMENTS} times each, \
             but it holds {count}, not {total} ({} updates lost); {} commits skipped a version, \
             e.g. {:?}",
            total.saturating_sub(count),
            skewed.len(),
            skewed.first()
        );
        ensure!(
            skewed.is_empty(),
            "{} commits did not land on the version they read: {:?}",
            skewed.len(),
            &skewed[..skewed.len().min(5)]
        );
        ensure_eq!(
            head.version,
            1 + total,
            "the version after {total} committed changes"
        );
        ensure_eq!(
            head.last_seq,
            total,
            "last_seq after {total} committed changes"
        );
        let messages = cx.messages(&id).await?;
        let counts: Vec<u64> = messages
            .iter()
            .map(|m| m.body["count"].as_u64().unwrap_or(0))
            .collect();
        ensure_eq!(
            counts,
            (1..=total).collect::<Vec<u64>>(),
            "each committed change saw the one before it"
        );
        Ok(())
    })
    .await
}

/// 32 concurrent `Any` appends of distinct messages all commit: the log and version count every one.
pub async fn concurrent_any_appends_all_commit(
    store: Arc<dyn ThreadStore>,
    prefix: &str,
) -> CaseResult {
    const WRITERS: u64 = 32;
    run(store, prefix, |cx| async move {
        let id = cx.id("log");
        cx.create(Thread::new(&id, cx.name("kind"))).await?;
        let barrier = Arc::new(Barrier::new(WRITERS as usize));
        let handles = (0..WRITERS)
            .map(|writer| {
                let (store, id, barrier) =
                    (Arc::clone(&cx.store), id.clone(), Arc::clone(&barrier));
                tokio::spawn(async move {
                    let changes = ChangeSet::default()
                        .with_message(NewMessage::with_id(format!("w{writer:02}"), json!(writer)));
                    barrier.wait().await;
                    store.append(&id, changes, VersionPrecondition::Any).await
                })
            })
            .collect();
        let mut versions = BTreeSet::new();
        for (writer, result) in join_workers(handles).await?.into_iter().enumerate() {
            let committed = result.ctx(format_args!("writer {writer}"))?;
            ensure_eq!(committed.appended, 1, "writer {writer}'s appended count");
            versions.insert(committed.version);
        }
        ensure_eq!(
            versions,
            (2..=WRITERS + 1).collect::<BTreeSet<u64>>(),
            "every writer got its own version"
        );
        let head = cx.load(&id).await?;
        ensure_eq!(head.version, WRITERS + 1, "the version");
        let messages = cx.messages(&id).await?;
        ensure_eq!(
            seqs(&messages),
            (1..=WRITERS).collect::<Vec<u64>>(),
            "the log's seqs"
        );
        let ids: BTreeSet<String> = messages.into_iter().filter_map(|m| m.id).collect();
        ensure_eq!(ids.len() as u64, WRITERS, "distinct messages in the log");
        Ok(())
    })
    .await
}

/// Of 32 concurrent `create`s of one id exactly one succeeds; the others get `AlreadyExists` and the winner's state stays.
pub async fn concurrent_creates_have_exactly_one_winner(
    store: Arc<dyn ThreadStore>,
    prefix: &str,
) -> CaseResult {
    const CREATORS: usize = 32;
    run(store, prefix, |cx| async move {
        let id = cx.id("contended");
        let kind = cx.name("kind");
        let barrier = Arc::new(Barrier::new(CREATORS));
        let handles = (0..CREATORS)
            .map(|creator| {
                let (store, barrier) = (Arc::clone(&cx.store), Arc::clone(&barrier));
                let thread = Thread::new(&id, &kind)
                    .with_state(json!({ "creator": creator }))
                    .with_message(NewMessage::with_id(format!("c{creator}"), json!(creator)));
                tokio::spawn(async move {
                    barrier.wait().await;
                    store.create(thread).await
                })
            })
            .collect();
        let mut winners = Vec::new();
        for (creator, result) in join_workers(handles).await?.into_iter().enumerate() {
            match result {
                Ok(committed) => {
                    ensure_eq!(committed.version, 1, "the winner's version");
                    winners.push(creator);
                }
                Err(ThreadStoreError::AlreadyExists { .. }) => {}
                Err(other) => {
                    return Err(format!(
                        "creator {creator}: expected success or AlreadyExists, got {other:?}"
                    ));
                }
            }
        }
        ensure!(
            winners.len() == 1,
            "{} of {CREATORS} concurrent creates succeeded: {winners:?}",
            winners.len()
        );
        let head = cx.load(&id).await?;
        ensure_eq!(head.version, 1, "the version after the race");
        ensure_eq!(
            head.state,
            json!({ "creator": winners[0] }),
            "the winner's state"
        );
        ensure_eq!(head.last_seq, 1, "the log holds the winner's message alone");
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------
// Values, batches, marks and ids
// ---------------------------------------------------------------------------

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

/// `append_batch` applies each request on its own, in order, and returns one result per request.
pub async fn append_batch_returns_one_result_per_request(
    store: Arc<dyn ThreadStore>,
    prefix: &str,
) -> CaseResult {
    run(store, prefix, |cx| async move {
        let (a, b, missing) = (cx.id("a"), cx.id("b"), cx.id("missing"));
        cx.create(Thread::new(&a, cx.name("kind"))).await?;
        cx.create(Thread::new(&b, cx.name("kind"))).await?;
        let empty = cx.store.append_batch(Vec::new()).await;
        ensure!(
            empty.is_empty(),
            "an empty batch gave {} results",
            empty.len()
        );
        let request = |id: &str, changes: ChangeSet, precondition| AppendRequest {
            id: id.to_owned(),
            changes,
            precondition,
        };
        let results = cx
            .store
            .append_batch(vec![
                request(
                    &a,
                    ChangeSet::state(json!("a2")).with_message(NewMessage::with_id("m", json!(1))),
                    VersionPrecondition::Exact(1),
                ),
                request(
                    &a,
                    ChangeSet::state(json!("a3")),
                    VersionPrecondition::Exact(2),
                ),
                request(
                    &b,
                    ChangeSet::state(json!("stale")),
                    VersionPrecondition::Exact(7),
                ),
                request(
                    &missing,
                    ChangeSet::state(json!(1)),
                    VersionPrecondition::Any,
                ),
                request(
                    &format!("{}bad\nid", cx.prefix),
                    ChangeSet::state(json!(1)),
                    VersionPrecondition::Any,
                ),
                request(&b, ChangeSet::state(json!("b2")), VersionPrecondition::Any),
                request(
                    &a,
                    ChangeSet::state(json!("bad message"))
                        .with_message(NewMessage::with_id("", json!(0))),
                    VersionPrecondition::Any,
                ),
                request(
                    &a,
                    ChangeSet::default().with_message(NewMessage::with_id("m", json!(2))),
                    VersionPrecondition::Exact(3),
                ),
            ])
            .await;
        ensure_eq!(results.len(), 8, "results of a batch of 8");
        let mut results = results.into_iter();
        let mut next = || {
            results
                .next()
                .ok_or_else(|| "a result is missing".to_owned())
        };
        let first = next()?.ctx("request 0 (Exact(1) on a)")?;
        ensure_eq!(first.version, 2, "request 0's version");
        let second = next()?.ctx("request 1 (Exact(2) on a, after request 0)")?;
        ensure_eq!(second.version, 3, "request 1's version");
        expect_err!(
            next()?,
            ThreadStoreError::VersionConflict {
                expected: 7,
                actual: 1,
                ..
            },
            "request 2 (stale Exact on b)"
        );
        expect_err!(
            next()?,
            ThreadStoreError::NotFound { .. },
            "request 3 (a missing thread)"
        );
        expect_err!(
            next()?,
            ThreadStoreError::InvalidInput { .. },
            "request 4 (an invalid id)"
        );
        let sixth = next()?.ctx("request 5 (Any on b, after a failed request on b)")?;
        ensure_eq!(sixth.version, 2, "request 5's version");
        expect_err!(
            next()?,
            ThreadStoreError::InvalidInput { .. },
            "request 6 (an invalid message id)"
        );
        let last = next()?.ctx("request 7 (a known message on a)")?;
        ensure_eq!(
            last,
            Committed {
                version: 3,
                last_seq: 1,
                appended: 0,
                skipped: 1
            },
            "request 7 changed nothing"
        );
        let head_a = cx.load(&a).await?;
        ensure_eq!(
            (head_a.version, head_a.state),
            (3, json!("a3")),
            "thread a after the batch"
        );
        let head_b = cx.load(&b).await?;
        ensure_eq!(
            (head_b.version, head_b.state),
            (2, json!("b2")),
            "thread b after the batch"
        );
        let head = cx.store.load(&missing).await.ctx("load missing")?;
        ensure!(
            head.is_none(),
            "the batch created a missing thread: {head:?}"
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

// ---------------------------------------------------------------------------
// Creating in batches
// ---------------------------------------------------------------------------

/// A thread shaped like a finished task of the task layer: a state, two
/// messages with ids (and a repeat of the first id, to be skipped), a parent
/// from `parents`, and the finished mark on every other thread.
fn batch_thread(cx: &Cx, i: usize, id: &str, parents: usize) -> Thread {
    let mut thread = Thread::new(id, cx.name("task"))
        .with_parent(cx.name(&format!("owner{}", i % parents)))
        .with_metadata(metadata(json!({ "n": i })))
        .with_state(json!({ "status": "completed", "n": i, "text": "ünï ✓" }))
        .with_message(NewMessage::with_id(
            "a1:start",
            json!({ "event": "start", "n": i }),
        ))
        .with_message(NewMessage::with_id(
            "a1:finish",
            json!({ "event": "finish", "n": i }),
        ))
        .with_message(NewMessage::with_id("a1:start", json!("a repeat, skipped")));
    thread.terminal = i.is_multiple_of(2);
    thread
}

/// `create_batch` of many threads creates each at version 1 with its state, metadata, messages (repeated ids skipped), finished mark and index entries, one result per thread in order.
pub async fn create_batch_round_trips_many_threads(
    store: Arc<dyn ThreadStore>,
    prefix: &str,
) -> CaseResult {
    // More than one chunk of any sensible backend, and more than one page.
    const THREADS: usize = 1100;
    const PARENTS: usize = 7;
    run(store, prefix, |cx| async move {
        let ids: Vec<String> = (0..THREADS).map(|i| cx.id(&format!("t{i:04}"))).collect();
        let threads: Vec<Thread> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| batch_thread(&cx, i, id, PARENTS))
            .collect();
        let results = cx.store.create_batch(threads.clone()).await;
        ensure_eq!(results.len(), THREADS, "results of a batch of {THREADS}");
        for (i, result) in results.into_iter().enumerate() {
            let committed = result.ctx(format_args!("item {i} of the batch"))?;
            ensure_eq!(
                committed,
                Committed {
                    version: 1,
                    last_seq: 2,
                    appended: 2,
                    skipped: 1
                },
                "item {i}'s result"
            );
        }

        for (chunk_ids, chunk_threads) in ids.chunks(64).zip(threads.chunks(64)) {
            let cx = &cx;
            let loads = chunk_ids.iter().map(|id| async move {
                let head = cx.load(id).await?;
                let messages = cx.messages(id).await?;
                Ok::<_, String>((head, messages))
            });
            for (outcome, thread) in futures::future::join_all(loads)
                .await
                .into_iter()
                .zip(chunk_threads)
            {
                let (head, messages) = outcome?;
                let expected = ThreadHead {
                    id: thread.id.clone(),
                    kind: thread.kind.clone(),
                    parent_id: thread.parent_id.clone(),
                    metadata: thread.metadata.clone(),
                    state: thread.state.clone(),
                    version: 1,
                    last_seq: 2,
                    terminal: thread.terminal,
                };
                ensure_eq!(head, expected, "the head of {:?}", thread.id);
                let expected: Vec<Message> = thread.messages[..2]
                    .iter()
                    .zip(1..)
                    .map(|(m, seq)| Message {
                        seq,
                        id: m.id.clone(),
                        body: m.body.clone(),
                    })
                    .collect();
                ensure_eq!(messages, expected, "the log of {:?}", thread.id);
            }
        }

        for p in 0..PARENTS {
            let parent = cx.name(&format!("owner{p}"));
            let expected: Vec<String> = ids
                .iter()
                .enumerate()
                .filter(|(i, _)| i % PARENTS == p)
                .map(|(_, id)| id.clone())
                .collect();
            ensure_eq!(
                cx.list_pages(ThreadQuery::by_parent(&parent).with_limit(50))
                    .await?,
                expected,
                "listing by the parent {parent:?}"
            );
            ensure_eq!(
                cx.list_pages(ThreadQuery::by_parent(&parent).with_kind(cx.name("task")))
                    .await?,
                expected,
                "listing by the parent {parent:?} and the kind"
            );
        }
        ensure_eq!(
            cx.list_pages(ThreadQuery::by_kind(cx.name("task"))).await?,
            ids,
            "listing by the kind"
        );

        // The message ids were recorded: a retried message is skipped, a new
        // one continues the log, and the version checks hold.
        for id in [&ids[0], &ids[1], &ids[THREADS - 1]] {
            let committed = cx
                .append(
                    id,
                    ChangeSet::default()
                        .with_message(NewMessage::with_id("a1:finish", json!("again")))
                        .with_message(NewMessage::with_id("a2:start", json!("next"))),
                    VersionPrecondition::Exact(1),
                )
                .await?;
            ensure_eq!(
                committed,
                Committed {
                    version: 2,
                    last_seq: 3,
                    appended: 1,
                    skipped: 1
                },
                "an append to the batch-created {id:?}"
            );
        }
        Ok(())
    })
    .await
}

/// In a `create_batch`, a taken id gets `AlreadyExists` and is left as it was, an invalid item gets `InvalidInput` and nothing is written for it, and the other items are created.
pub async fn create_batch_refuses_taken_and_invalid_items_alone(
    store: Arc<dyn ThreadStore>,
    prefix: &str,
) -> CaseResult {
    run(store, prefix, |cx| async move {
        let kind = cx.name("kind");
        let taken = cx.id("taken");
        cx.create(
            Thread::new(&taken, &kind)
                .with_parent(cx.name("first-parent"))
                .with_state(json!("first"))
                .with_message(NewMessage::with_id("m", json!(1))),
        )
        .await?;
        let before = cx.load(&taken).await?;
        let (a, b, c) = (cx.id("a"), cx.id("b"), cx.id("c"));
        let bad_message = cx.id("bad-message");
        let bad_parent = cx.id("bad-parent");
        let other_parent = cx.name("other-parent");
        let thread = |id: &str, state: &str| {
            Thread::new(id, &kind)
                .with_parent(&other_parent)
                .with_state(json!(state))
                .with_message(NewMessage::with_id("m", json!(state)))
        };
        let results = cx
            .store
            .create_batch(vec![
                thread(&a, "a"),
                thread(&taken, "second"),
                thread(&format!("{}bad\nid", cx.prefix), "bad id"),
                thread(&b, "b"),
                thread(&bad_message, "bad message")
                    .with_message(NewMessage::with_id("", json!("empty id"))),
                thread(&bad_parent, "bad parent").with_parent(format!("{}p\0", cx.prefix)),
                thread(&c, "c"),
            ])
            .await;
        ensure_eq!(results.len(), 7, "results of a batch of 7");
        let mut results = results.into_iter();
        let mut next = || {
            results
                .next()
                .ok_or_else(|| "a result is missing".to_owned())
        };
        ensure_eq!(
            next()?.ctx("item 0 (fresh)")?.version,
            1,
            "item 0's version"
        );
        let error = expect_err!(
            next()?,
            ThreadStoreError::AlreadyExists { .. },
            "item 1 (a taken id)"
        );
        if let ThreadStoreError::AlreadyExists { id } = &error {
            ensure_eq!(id, &taken, "the id named by AlreadyExists");
        }
        expect_err!(
            next()?,
            ThreadStoreError::InvalidInput { .. },
            "item 2 (an invalid id)"
        );
        ensure_eq!(
            next()?.ctx("item 3 (fresh)")?.version,
            1,
            "item 3's version"
        );
        expect_err!(
            next()?,
            ThreadStoreError::InvalidInput { .. },
            "item 4 (an invalid message id)"
        );
        expect_err!(
            next()?,
            ThreadStoreError::InvalidInput { .. },
            "item 5 (an invalid parent)"
        );
        ensure_eq!(
            next()?.ctx("item 6 (fresh)")?.version,
            1,
            "item 6's version"
        );

        ensure_eq!(cx.load(&taken).await?, before, "the taken thread's head");
        ensure_eq!(
            cx.messages(&taken).await?.len(),
            1,
            "the taken thread's log"
        );
        for refused in [&bad_message, &bad_parent] {
            let head = cx.store.load(refused).await.ctx("load a refused item")?;
            ensure!(head.is_none(), "a refused item was written: {head:?}");
        }
        for (id, state) in [(&a, "a"), (&b, "b"), (&c, "c")] {
            let head = cx.load(id).await?;
            ensure_eq!(
                (head.version, head.state),
                (1, json!(state)),
                "the created {id:?}"
            );
        }
        let mut expected = vec![a.clone(), b.clone(), c.clone()];
        expected.sort();
        ensure_eq!(
            cx.list_pages(ThreadQuery::by_parent(&other_parent)).await?,
            expected,
            "listing the batch's parent (the taken and refused items are not there)"
        );
        Ok(())
    })
    .await
}

/// An id given twice in one `create_batch` is created by its first valid item; the later one gets `AlreadyExists` and the first stays.
pub async fn create_batch_with_a_repeated_id_creates_the_first(
    store: Arc<dyn ThreadStore>,
    prefix: &str,
) -> CaseResult {
    run(store, prefix, |cx| async move {
        let kind = cx.name("kind");
        let (twice, refused_first) = (cx.id("twice"), cx.id("refused-first"));
        let (first_parent, second_parent) = (cx.name("first-parent"), cx.name("second-parent"));
        let thread = |id: &str, parent: &str, who: &str| {
            Thread::new(id, &kind)
                .with_parent(parent)
                .with_state(json!({ "who": who }))
                .with_message(NewMessage::with_id(who, json!(who)))
        };
        let results = cx
            .store
            .create_batch(vec![
                thread(&twice, &first_parent, "first"),
                // An invalid item does not take its id.
                thread(&refused_first, &second_parent, "invalid")
                    .with_message(NewMessage::with_id("", json!(0))),
                thread(&twice, &second_parent, "second"),
                thread(&refused_first, &first_parent, "valid"),
                thread(&refused_first, &second_parent, "third"),
            ])
            .await;
        ensure_eq!(results.len(), 5, "results of a batch of 5");
        let mut results = results.into_iter();
        let mut next = || {
            results
                .next()
                .ok_or_else(|| "a result is missing".to_owned())
        };
        ensure_eq!(
            next()?.ctx("item 0 (the first of the id)")?.version,
            1,
            "item 0's version"
        );
        expect_err!(
            next()?,
            ThreadStoreError::InvalidInput { .. },
            "item 1 (an invalid message id)"
        );
        expect_err!(
            next()?,
            ThreadStoreError::AlreadyExists { .. },
            "item 2 (the id of item 0 again)"
        );
        ensure_eq!(
            next()?
                .ctx("item 3 (the id of the invalid item 1)")?
                .version,
            1,
            "item 3's version"
        );
        expect_err!(
            next()?,
            ThreadStoreError::AlreadyExists { .. },
            "item 4 (the id of item 3 again)"
        );

        for (id, who) in [(&twice, "first"), (&refused_first, "valid")] {
            let head = cx.load(id).await?;
            ensure_eq!(
                (head.version, head.state, head.parent_id),
                (1, json!({ "who": who }), Some(first_parent.clone())),
                "the stored {id:?}"
            );
            ensure_eq!(
                message_ids(&cx.messages(id).await?),
                vec![Some(who)],
                "the log of {id:?}"
            );
        }
        let listed = cx
            .list_pages(ThreadQuery::by_parent(&second_parent))
            .await?;
        ensure!(
            listed.is_empty(),
            "refused items were indexed under their parent: {listed:?}"
        );
        Ok(())
    })
    .await
}

/// `create_batch`es and `create`s of the same ids racing from concurrent tasks have exactly one winner per id, whose thread is the one stored.
pub async fn create_batch_racing_create_has_one_winner_per_id(
    store: Arc<dyn ThreadStore>,
    prefix: &str,
) -> CaseResult {
    const IDS: usize = 40;
    const BATCHERS: usize = 4;
    const CREATORS: usize = 4;
    run(store, prefix, |cx| async move {
        let kind = cx.name("kind");
        let ids: Vec<String> = (0..IDS).map(|i| cx.id(&format!("t{i:02}"))).collect();
        let thread = |id: &str, contender: usize| {
            Thread::new(id, &kind)
                .with_state(json!({ "contender": contender }))
                .with_message(NewMessage::with_id(format!("c{contender}"), json!(contender)))
        };
        let barrier = Arc::new(Barrier::new(BATCHERS + CREATORS));
        let mut handles = Vec::new();
        for batcher in 0..BATCHERS {
            // Each batch walks the ids from another starting point.
            let mut threads: Vec<Thread> = ids.iter().map(|id| thread(id, batcher)).collect();
            threads.rotate_left(batcher * IDS / BATCHERS);
            let (store, barrier) = (Arc::clone(&cx.store), Arc::clone(&barrier));
            handles.push(tokio::spawn(async move {
                barrier.wait().await;
                let ids: Vec<String> = threads.iter().map(|t| t.id.clone()).collect();
                ids.into_iter()
                    .zip(store.create_batch(threads).await)
                    .collect::<Vec<_>>()
            }));
        }
        for creator in BATCHERS..BATCHERS + CREATORS {
            let threads: Vec<Thread> = ids.iter().rev().map(|id| thread(id, creator)).collect();
            let (store, barrier) = (Arc::clone(&cx.store), Arc::clone(&barrier));
            handles.push(tokio::spawn(async move {
                barrier.wait().await;
                let mut results = Vec::new();
                for thread in threads {
                    let id = thread.id.clone();
                    results.push((id, store.create(thread).await));
                }
                results
            }));
        }
        let mut winners: std::collections::BTreeMap<String, Vec<usize>> = Default::default();
        for (contender, results) in join_workers(handles).await?.into_iter().enumerate() {
            ensure_eq!(results.len(), IDS, "contender {contender}'s results");
            for (id, result) in results {
                match result {
                    Ok(committed) => {
                        ensure_eq!(committed.version, 1, "a winner's version");
                        winners.entry(id).or_default().push(contender);
                    }
                    Err(ThreadStoreError::AlreadyExists { .. }) => {}
                    Err(other) => {
                        return Err(format!(
                            "contender {contender} on {id:?}: expected success or AlreadyExists, got {other:?}"
                        ));
                    }
                }
            }
        }
        for id in &ids {
            let won = winners.get(id).cloned().unwrap_or_default();
            ensure!(
                won.len() == 1,
                "{id:?} was created by {} contenders: {won:?}",
                won.len()
            );
            let head = cx.load(id).await?;
            ensure_eq!(
                (head.version, head.state, head.last_seq),
                (1, json!({ "contender": won[0] }), 1),
                "the stored {id:?}"
            );
        }
        ensure_eq!(
            cx.list_pages(ThreadQuery::by_kind(&kind)).await?,
            ids,
            "listing by the kind after the race"
        );
        Ok(())
    })
    .await
}

/// `create_batch` of no threads returns no results.
pub async fn create_batch_of_nothing_returns_nothing(
    store: Arc<dyn ThreadStore>,
    prefix: &str,
) -> CaseResult {
    run(store, prefix, |cx| async move {
        let results = cx.store.create_batch(Vec::new()).await;
        ensure!(
            results.is_empty(),
            "an empty batch gave {} results",
            results.len()
        );
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------
// The open index
// ---------------------------------------------------------------------------

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
    let mut ids = cx.list_pages(query).await?;
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
