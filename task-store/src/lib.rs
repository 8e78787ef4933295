//! The storage contract of the background task manager: durable, versioned
//! *threads*.
//!
//! This crate holds only traits, data types, the error and id validation; it
//! does no I/O. Use it to write code that works on any backend
//! (`Arc<dyn ThreadStore>`), or to implement a backend. The backends are
//! `task-store-memory` (in process, the embedded default) and
//! `task-store-redis` (Redis or Valkey, for many processes).
//!
//! A thread is a record with an id, a kind, an optional parent id, metadata, a
//! JSON state snapshot and an append-only log of messages. Every committed
//! change bumps its version by one. The task layer (`task-core`) keeps each
//! task in a thread of kind `"task"` whose parent is the task's owner.
//!
//! ```
//! # use task_store::{ChangeSet, NewMessage, Thread, ThreadStore, VersionPrecondition};
//! # use serde_json::json;
//! # async fn demo(store: &dyn ThreadStore) -> task_store::Result<()> {
//! let thread = Thread::new("task:42", "task")
//!     .with_parent("conversation-7")
//!     .with_state(json!({ "status": "running" }));
//! let created = store.create(thread).await?;
//! assert_eq!(created.version, 1);
//!
//! // Compare-and-swap: applied only if nobody wrote in between.
//! let changes = ChangeSet::state(json!({ "status": "completed" }))
//!     .with_message(NewMessage::with_id("t1", json!({ "event": "completed" })));
//! store
//!     .append("task:42", changes, VersionPrecondition::Exact(created.version))
//!     .await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Contract
//!
//! Every backend keeps these promises, and every backend runs the conformance
//! suite of `task-testkit` that checks them.
//!
//! - **Atomic writes.** `create`, `append` and `save` apply all of their
//!   change (state, messages, finished mark, index entries) or none of it;
//!   so does each item of `append_batch` and `create_batch` on its own (a
//!   batch is not atomic as a whole).
//!   `create` writes the initial state in the same step as the record: there
//!   is no moment where a thread exists without its state.
//! - **Versions.** A thread is at version 1 after `create`; each write that
//!   changes something adds exactly one. A write that changes nothing (every
//!   message a duplicate, no state, no mark) leaves the version as it is.
//! - **Preconditions.** `VersionPrecondition::Exact(v)` is checked in the same
//!   atomic step as the write: of N concurrent writers holding the same `v`,
//!   exactly one succeeds and the others get
//!   [`ThreadStoreError::VersionConflict`] with the expected and actual
//!   versions. No committed write is ever lost. A backend that cannot check a
//!   precondition refuses it with [`ThreadStoreError::Unsupported`]; it never
//!   ignores it.
//! - **Idempotent messages.** A message whose id is already in the log is
//!   skipped (and counted in [`Committed::skipped`]); so an ambiguous write
//!   (one that timed out) can be retried as it was.
//! - **Bad input changes nothing.** Ids are checked by [`validate_id`] before
//!   anything is written; a refused request returns
//!   [`ThreadStoreError::InvalidInput`].
//! - **Bounded reads.** `load` returns the head without the log;
//!   `load_messages` and `list_threads` return pages of at most
//!   [`MAX_PAGE_LIMIT`] items with a cursor. `list_threads` reads an index by
//!   parent or kind; it never scans every record.
//! - **Live work costs live work.** `list_threads` with
//!   [`ThreadQuery::open_only`] reads an index of open (not finished)
//!   threads, kept in the same atomic write as the finished mark, so that
//!   recovery and remote control cost the work in flight, not the history.
//! - **Isolated corruption.** A record that cannot be decoded yields
//!   [`ThreadStoreError::Corrupt`] for that thread alone.
//! - **Retryable errors.** [`ThreadStoreError::is_retryable`] is true only for
//!   transient failures (unavailable, timed out). After a retryable error on a
//!   write, the write may or may not have been applied.
//!
//! # Implementing a backend
//!
//! Implement [`ThreadReader`] and [`ThreadWriter`] (with `#[async_trait]`);
//! [`ThreadStore`] follows by a blanket impl. Call [`validate_thread`],
//! [`validate_id`], [`validate_messages`] and [`validate_query`] first, page
//! with [`effective_limit`], and map your own errors into
//! [`ThreadStoreError`] in one place. Then run the two suites, one call each,
//! from your crate's tests: `task_testkit::conformance_tests!(make_store())`
//! (this contract, case by case) and `task_core::persistence_tests!(make_store())`
//! (the task layer on your store; feature `testing` of `task-core`).
//!
//! `docs/backend-guide.md` in the repository walks through the contract rule
//! by rule, with the cases that check each rule and the broken stores they
//! catch, and a worked minimal backend that passes both suites
//! (`task-testkit/examples/minimal_backend.rs`).

mod error;
mod id;
mod signals;
mod store;
mod types;

pub use error::{Result, SourceError, ThreadStoreError};
pub use id::{MAX_ID_LEN, validate_id, validate_messages, validate_query, validate_thread};
pub use signals::{SignalReceiver, SignalSource, ThreadSignals};
pub use store::{ThreadReader, ThreadReaderExt, ThreadStore, ThreadWriter};
pub use types::{
    AppendRequest, ChangeSet, Committed, DEFAULT_PAGE_LIMIT, MAX_PAGE_LIMIT, Message, MessagePage,
    MessageQuery, Metadata, NewMessage, Thread, ThreadHead, ThreadPage, ThreadQuery,
    VersionPrecondition, effective_limit,
};
