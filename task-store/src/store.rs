//! The storage traits: [`ThreadReader`], [`ThreadWriter`] and [`ThreadStore`].

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;

use crate::{
    AppendRequest, ChangeSet, Committed, Message, MessagePage, MessageQuery, Result, Thread,
    ThreadHead, ThreadPage, ThreadQuery, ThreadSignals, VersionPrecondition,
};

/// Reads threads. See the crate docs for the whole contract.
#[async_trait]
pub trait ThreadReader: Send + Sync + Debug + 'static {
    /// Loads the head of thread `id` (state, metadata, version), without its
    /// message log. `Ok(None)` when there is no such thread.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for an invalid id; `Corrupt` when the record cannot be
    /// decoded; `Unavailable`/`Timeout` when the backend cannot answer.
    async fn load(&self, id: &str) -> Result<Option<ThreadHead>>;

    /// Loads a page of thread `id`'s log: messages with `seq > query.after`,
    /// in order, at most [`effective_limit`](crate::effective_limit)`(query.limit)`.
    ///
    /// # Errors
    ///
    /// `NotFound` when there is no such thread; otherwise as [`load`](Self::load).
    async fn load_messages(&self, id: &str, query: MessageQuery) -> Result<MessagePage>;

    /// Lists thread ids by parent and/or kind in ascending byte order, after
    /// `query.after`, from an index: the cost follows the size of the result
    /// (or of the parent's children when both filters are given), never the
    /// number of threads stored. Without any filter, lists every thread.
    ///
    /// With [`ThreadQuery::open_only`], only threads whose finished mark is
    /// not set are listed, from an index of open threads kept in the same
    /// atomic write as the mark: the cost follows the open threads that
    /// match, never the finished ones. Paging over open threads while others
    /// finish never returns an id twice and never skips one that stayed open
    /// throughout.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for an invalid parent or kind; `Unavailable`/`Timeout`.
    async fn list_threads(&self, query: ThreadQuery) -> Result<ThreadPage>;
}

/// Writes threads. See the crate docs for the whole contract.
#[async_trait]
pub trait ThreadWriter: Send + Sync + Debug + 'static {
    /// Creates a thread at version 1, with its state, metadata and messages,
    /// in one atomic step.
    ///
    /// # Errors
    ///
    /// `AlreadyExists` when the id is taken (nothing is changed);
    /// `InvalidInput` for an invalid id, kind, parent or message id.
    async fn create(&self, thread: Thread) -> Result<Committed>;

    /// Creates several threads, each atomically on its own and each with its
    /// own result, in the order given: result `i` belongs to `threads[i]`, and
    /// there are exactly as many results as threads (none for an empty
    /// batch).
    ///
    /// Each item behaves exactly as [`create`](Self::create) of it would,
    /// run in order: it is written at version 1 with its state, metadata,
    /// messages, finished mark and index entries, all or nothing. Items are
    /// independent of one another, and the batch as a whole is not atomic: a
    /// refused item changes nothing and does not stop the others. In
    /// particular an id taken by an *earlier* item of the same batch is
    /// taken: the first item with that id is created, the later ones get
    /// `AlreadyExists`.
    ///
    /// This is the way to persist many fresh threads at once (the task layer
    /// writes each finished short task as one thread): a backend sends them
    /// together where it can, which costs far less than one
    /// [`create`](Self::create) each.
    ///
    /// | backend | cost |
    /// |---|---|
    /// | `MemoryStore` | one lock for the whole batch |
    /// | `RedisStore` | one round trip per 1024 threads; one Lua script per 128 threads, sharing its key type checks and index updates among them (measured: about 40% less server CPU per thread than one `create` each, and about 1.7 times the threads per second) |
    ///
    /// # Errors
    ///
    /// Per item, as [`create`](Self::create): `AlreadyExists` when the id is
    /// taken (by a stored thread or by an earlier item of the batch; nothing
    /// is changed); `InvalidInput` for an invalid id, kind, parent or message
    /// id (nothing is written for that item, the others go on).
    ///
    /// A failure of the transport (`Unavailable`, `Timeout`) may fail every
    /// item, or every item from some point on, with the same error. As for
    /// [`create`](Self::create), such a failure is ambiguous: the writes of
    /// the items it names may or may not have been committed. Retrying them
    /// is safe: an item that was committed then reports `AlreadyExists`.
    async fn create_batch(&self, threads: Vec<Thread>) -> Vec<Result<Committed>>;

    /// Applies a change set to thread `id` atomically: the new state (if
    /// any), the messages whose id is not already in the log, and the
    /// finished mark, all or nothing. The version goes up by one if anything
    /// changed.
    ///
    /// # Errors
    ///
    /// `NotFound` when the thread does not exist; `VersionConflict` (with the
    /// expected and the actual version) when an `Exact` precondition fails;
    /// `InvalidInput` for an invalid id. Nothing is changed on any error.
    async fn append(
        &self,
        id: &str,
        changes: ChangeSet,
        precondition: VersionPrecondition,
    ) -> Result<Committed>;

    /// Applies several appends, each atomic on its own thread and each with
    /// its own result, in the order given. Not atomic across threads. A
    /// backend sends them together where it can (one lock, one pipeline).
    ///
    /// | backend | cost |
    /// |---|---|
    /// | `MemoryStore` | one lock for the whole batch |
    /// | `RedisStore` | one round trip per 1024 appends; one Lua script per 128 appends (a thread's appends all in one run, in order), with fewer Redis calls per append than one `append` each and one write of the expiry set per run (measured on task finishes: about a third less server CPU per append than one `append` each, and 1.5 to 1.8 times the appends per second) |
    async fn append_batch(&self, requests: Vec<AppendRequest>) -> Vec<Result<Committed>>;

    /// Creates or replaces thread `thread.id` without a precondition: kind,
    /// parent, metadata, state and finished mark are replaced, the messages
    /// appended (skipping known ids), and the version goes up by one (or is 1
    /// for a new thread).
    ///
    /// # Errors
    ///
    /// `InvalidInput` for an invalid id.
    async fn save(&self, thread: Thread) -> Result<Committed>;

    /// Deletes thread `id` with its log and its index entries. Idempotent:
    /// deleting a missing thread succeeds.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for an invalid id; `Unavailable`/`Timeout`.
    async fn delete(&self, id: &str) -> Result<()>;

    /// The store's wake-up signals between processes, if it has them
    /// (`None` otherwise; callers then rely on polling alone).
    fn signals(&self) -> Option<&dyn ThreadSignals>;
}

/// A full store: [`ThreadReader`] and [`ThreadWriter`]. Implemented for every
/// type that implements both; use it as `Arc<dyn ThreadStore>`.
pub trait ThreadStore: ThreadReader + ThreadWriter {}

impl<T: ThreadReader + ThreadWriter + ?Sized> ThreadStore for T {}

macro_rules! forward_store {
    ($($ptr:ident),*) => {$(
        #[async_trait]
        impl<T: ThreadReader + ?Sized> ThreadReader for $ptr<T> {
            async fn load(&self, id: &str) -> Result<Option<ThreadHead>> {
                (**self).load(id).await
            }
            async fn load_messages(&self, id: &str, query: MessageQuery) -> Result<MessagePage> {
                (**self).load_messages(id, query).await
            }
            async fn list_threads(&self, query: ThreadQuery) -> Result<ThreadPage> {
                (**self).list_threads(query).await
            }
        }

        #[async_trait]
        impl<T: ThreadWriter + ?Sized> ThreadWriter for $ptr<T> {
            async fn create(&self, thread: Thread) -> Result<Committed> {
                (**self).create(thread).await
            }
            async fn create_batch(&self, threads: Vec<Thread>) -> Vec<Result<Committed>> {
                (**self).create_batch(threads).await
            }
            async fn append(
                &self,
                id: &str,
                changes: ChangeSet,
                precondition: VersionPrecondition,
            ) -> Result<Committed> {
                (**self).append(id, changes, precondition).await
            }
            async fn append_batch(&self, requests: Vec<AppendRequest>) -> Vec<Result<Committed>> {
                (**self).append_batch(requests).await
            }
            async fn save(&self, thread: Thread) -> Result<Committed> {
                (**self).save(thread).await
            }
            async fn delete(&self, id: &str) -> Result<()> {
                (**self).delete(id).await
            }
            fn signals(&self) -> Option<&dyn ThreadSignals> {
                (**self).signals()
            }
        }
    )*};
}

forward_store!(Arc, Box);

/// Conveniences over any [`ThreadReader`], built only from its required
/// methods. They live here, not as trait defaults, so that a wrapper can never
/// inherit one instead of forwarding.
#[async_trait]
pub trait ThreadReaderExt: ThreadReader {
    /// Reads a thread's whole log, page by page.
    ///
    /// # Errors
    ///
    /// As [`ThreadReader::load_messages`].
    async fn load_all_messages(&self, id: &str) -> Result<Vec<Message>> {
        let mut all = Vec::new();
        let mut query = MessageQuery {
            after: 0,
            limit: crate::MAX_PAGE_LIMIT,
        };
        loop {
            let page = self.load_messages(id, query).await?;
            all.extend(page.messages);
            match page.next {
                Some(next) => query.after = next,
                None => return Ok(all),
            }
        }
    }

    /// Lists every id matching `query`, page by page from `query.after`.
    ///
    /// # Errors
    ///
    /// As [`ThreadReader::list_threads`].
    async fn list_all_threads(&self, mut query: ThreadQuery) -> Result<Vec<String>> {
        let mut all = Vec::new();
        if query.limit == 0 {
            query.limit = crate::MAX_PAGE_LIMIT;
        }
        loop {
            let page = self.list_threads(query.clone()).await?;
            all.extend(page.ids);
            match page.next {
                Some(next) => query.after = Some(next),
                None => return Ok(all),
            }
        }
    }
}

impl<T: ThreadReader + ?Sized> ThreadReaderExt for T {}
