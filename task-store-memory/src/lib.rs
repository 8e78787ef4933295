//! `MemoryStore`: the thread storage contract of [`task_store`] in process
//! memory, the embedded default.
//!
//! Use it when one process owns its tasks and nothing has to survive a
//! restart: a CLI, a single-node service, an agent runtime embedded in an
//! application, and every test. It needs no server, answers in nanoseconds and
//! keeps every promise of the contract (atomic writes, exact version
//! preconditions, idempotent messages, bounded pages from indexes). Use
//! `task-store-redis` instead when several processes share tasks or when task
//! outcomes must outlive the process: a `MemoryStore` forgets everything when
//! it is dropped.
//!
//! ```
//! use std::sync::Arc;
//!
//! use serde_json::json;
//! use task_store::{ChangeSet, Thread, ThreadQuery, ThreadStore, VersionPrecondition};
//! use task_store_memory::MemoryStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> task_store::Result<()> {
//! let store: Arc<dyn ThreadStore> = Arc::new(MemoryStore::new());
//!
//! let created = store
//!     .create(Thread::new("task:1", "task").with_parent("conversation-7"))
//!     .await?;
//! let committed = store
//!     .append(
//!         "task:1",
//!         ChangeSet::state(json!({ "status": "completed" })),
//!         VersionPrecondition::Exact(created.version),
//!     )
//!     .await?;
//! assert_eq!(committed.version, 2);
//!
//! let page = store.list_threads(ThreadQuery::by_parent("conversation-7")).await?;
//! assert_eq!(page.ids, ["task:1"]);
//! # Ok(())
//! # }
//! ```
//!
//! # How it works
//!
//! All data sits behind one [`std::sync::Mutex`]: every write checks its
//! precondition and applies its change while holding it, so writes are atomic
//! and linearizable, and no update is lost. The lock is never held across an
//! `.await` (no method awaits anything). Threads live in a [`BTreeMap`] by id;
//! two more indexes map each parent and each kind to the ordered set of its
//! thread ids, so listing by parent or kind reads only the matching ids. A
//! second set of the same indexes holds only the open (not finished) threads,
//! changed under the same lock as the finished mark, so
//! [`ThreadQuery::open_only`] listings cost the open threads. Each thread
//! keeps its log in a `Vec` (the sequence number is the position) and the set
//! of its message ids for de-duplication.
//!
//! Clones of a `MemoryStore` share the same data.
//!
//! # Retention
//!
//! [`MemoryStore::new`] keeps every thread until it is deleted, like a
//! database would. A long-running process that finishes a steady stream of
//! tasks should bound what it keeps with [`MemoryStoreOptions`]: finished
//! threads (those whose finished mark is set) are dropped once they have been
//! finished for longer than [`retention`](MemoryStoreOptions::retention),
//! and the oldest finished threads go first once there are more than
//! [`max_finished`](MemoryStoreOptions::max_finished). Open threads are never
//! dropped. Expiry is checked on every call, at an amortised O(1) cost per
//! finished thread: the finished threads wait in one queue in the order they
//! finished.
//!
//! ```
//! use std::time::Duration;
//! use task_store_memory::{MemoryStore, MemoryStoreOptions};
//!
//! let store = MemoryStore::with_options(
//!     MemoryStoreOptions::default()
//!         .with_retention(Some(Duration::from_secs(3600)))
//!         .with_max_finished(Some(100_000)),
//! );
//! # let _ = store;
//! ```

mod signals;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use async_trait::async_trait;
use serde_json::Value;
use task_store::{
    AppendRequest, ChangeSet, Committed, Message, MessagePage, MessageQuery, Metadata, NewMessage,
    Result, Thread, ThreadHead, ThreadPage, ThreadQuery, ThreadReader, ThreadStoreError,
    ThreadWriter, VersionPrecondition, effective_limit, validate_id, validate_messages,
    validate_query, validate_thread,
};

/// The thread storage contract in process memory.
///
/// Cheap to clone: clones share the same data. See the [crate docs](crate).
#[derive(Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
    signals: Arc<signals::MemorySignals>,
}

/// What a [`MemoryStore`] keeps of finished threads (see the
/// [crate docs](crate#retention)). The default keeps everything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemoryStoreOptions {
    /// Drop a finished thread once it has been finished this long (counted
    /// from the write that set its finished mark). `None`: no age limit.
    pub retention: Option<Duration>,
    /// Keep at most this many finished threads; beyond it the ones finished
    /// longest ago are dropped. `None`: no count limit.
    pub max_finished: Option<usize>,
}

impl MemoryStoreOptions {
    /// Sets the age limit of finished threads.
    pub fn with_retention(mut self, retention: Option<Duration>) -> Self {
        self.retention = retention;
        self
    }

    /// Sets the count limit of finished threads.
    pub fn with_max_finished(mut self, max_finished: Option<usize>) -> Self {
        self.max_finished = max_finished;
        self
    }
}

impl MemoryStore {
    /// An empty store that keeps every thread until it is deleted.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store with a retention policy for finished threads.
    pub fn with_options(options: MemoryStoreOptions) -> Self {
        let store = Self::default();
        store.lock().retention.options = options;
        store
    }

    /// How many threads the store holds (open and finished).
    pub fn len(&self) -> usize {
        self.lock().threads.len()
    }

    /// Whether the store holds no thread.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Locks the data, first dropping finished threads that the retention
    /// policy no longer keeps. A panic while the lock was held cannot leave a
    /// thread half-written: every write checks everything before it changes
    /// anything, and the changes themselves do not panic. So a poisoned lock
    /// is recovered rather than propagated.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.expire();
        inner
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let threads = self.lock().threads.len();
        f.debug_struct("MemoryStore")
            .field("threads", &threads)
            .finish_non_exhaustive()
    }
}

/// Everything the store holds, behind the one lock.
#[derive(Debug, Default)]
struct Inner {
    /// Every thread, by id.
    threads: BTreeMap<String, Record>,
    /// Thread ids by parent id. A parent without children has no entry.
    by_parent: HashMap<String, BTreeSet<String>>,
    /// Thread ids by kind. A kind without threads has no entry.
    by_kind: HashMap<String, BTreeSet<String>>,
    /// The open threads (finished mark not set), indexed the same ways.
    open: OpenIndex,
    /// Finished threads in the order they finished, for retention.
    retention: Retention,
}

/// The ids of the open threads: all of them, by parent and by kind.
#[derive(Debug, Default)]
struct OpenIndex {
    all: BTreeSet<String>,
    by_parent: HashMap<String, BTreeSet<String>>,
    by_kind: HashMap<String, BTreeSet<String>>,
}

impl OpenIndex {
    fn insert(&mut self, id: &str, kind: &str, parent_id: Option<&str>) {
        self.all.insert(id.to_owned());
        index_into(&mut self.by_kind, kind, id);
        if let Some(parent) = parent_id {
            index_into(&mut self.by_parent, parent, id);
        }
    }

    fn remove(&mut self, id: &str, kind: &str, parent_id: Option<&str>) {
        self.all.remove(id);
        remove_from(&mut self.by_kind, kind, id);
        if let Some(parent) = parent_id {
            remove_from(&mut self.by_parent, parent, id);
        }
    }
}

/// The retention policy and the queue of finished threads it walks.
#[derive(Debug, Default)]
struct Retention {
    options: MemoryStoreOptions,
    /// `(finished at, id, mark)` in the order the threads finished. An entry
    /// whose `mark` is not the thread's current `finished_mark` is stale (the
    /// thread was reopened, finished again, deleted or replaced) and skipped.
    queue: VecDeque<(Instant, String, u64)>,
    /// How many threads are finished now.
    finished: usize,
    /// The last mark handed out.
    next_mark: u64,
}

impl Retention {
    fn is_active(&self) -> bool {
        self.options.retention.is_some() || self.options.max_finished.is_some()
    }
}

/// One stored thread.
#[derive(Debug)]
struct Record {
    kind: String,
    parent_id: Option<String>,
    metadata: Metadata,
    state: Value,
    version: u64,
    terminal: bool,
    /// While finished under a retention policy: the mark of its entry in
    /// the retention queue.
    finished_mark: Option<u64>,
    /// The log; `messages[i].seq == i + 1`.
    messages: Vec<Message>,
    /// The ids of the messages in the log that have one.
    message_ids: HashSet<String>,
}

impl Record {
    fn new(thread: &mut Thread) -> Self {
        Self {
            kind: std::mem::take(&mut thread.kind),
            parent_id: thread.parent_id.take(),
            metadata: std::mem::take(&mut thread.metadata),
            state: std::mem::take(&mut thread.state),
            version: 0,
            terminal: thread.terminal,
            finished_mark: None,
            messages: Vec::new(),
            message_ids: HashSet::new(),
        }
    }

    fn last_seq(&self) -> u64 {
        self.messages.len() as u64
    }

    /// Appends the messages whose id is not in the log yet (nor earlier in
    /// `messages`); returns how many were appended and how many skipped.
    fn append_messages(&mut self, messages: Vec<NewMessage>) -> (u64, u64) {
        let (mut appended, mut skipped) = (0, 0);
        for message in messages {
            if let Some(id) = &message.id
                && !self.message_ids.insert(id.clone())
            {
                skipped += 1;
                continue;
            }
            let seq = self.last_seq() + 1;
            self.messages.push(Message {
                seq,
                id: message.id,
                body: message.body,
            });
            appended += 1;
        }
        (appended, skipped)
    }

    fn committed(&self, appended: u64, skipped: u64) -> Committed {
        Committed {
            version: self.version,
            last_seq: self.last_seq(),
            appended,
            skipped,
        }
    }

    fn head(&self, id: &str) -> ThreadHead {
        ThreadHead {
            id: id.to_owned(),
            kind: self.kind.clone(),
            parent_id: self.parent_id.clone(),
            metadata: self.metadata.clone(),
            state: self.state.clone(),
            version: self.version,
            last_seq: self.last_seq(),
            terminal: self.terminal,
        }
    }
}

/// Adds `id` to the set under `key`, copying the key only for a new set.
fn index_into(map: &mut HashMap<String, BTreeSet<String>>, key: &str, id: &str) {
    match map.get_mut(key) {
        Some(ids) => {
            ids.insert(id.to_owned());
        }
        None => {
            map.insert(key.to_owned(), BTreeSet::from([id.to_owned()]));
        }
    }
}

impl Inner {
    /// Indexes a thread by kind and parent, and as open unless `terminal`.
    fn index(&mut self, id: &str, kind: &str, parent_id: Option<&str>, terminal: bool) {
        index_into(&mut self.by_kind, kind, id);
        if let Some(parent) = parent_id {
            index_into(&mut self.by_parent, parent, id);
        }
        if !terminal {
            self.open.insert(id, kind, parent_id);
        }
    }

    fn unindex(&mut self, id: &str, kind: &str, parent_id: Option<&str>) {
        remove_from(&mut self.by_kind, kind, id);
        if let Some(parent) = parent_id {
            remove_from(&mut self.by_parent, parent, id);
        }
        self.open.remove(id, kind, parent_id);
    }

    /// Follows a change of thread `id`'s finished mark from `was` to its
    /// current value: the open index, and the retention queue, where a
    /// thread enters when it becomes finished (or is replaced by `save` as
    /// finished: `restart`) and leaves when it is reopened.
    fn remark(&mut self, id: &str, was: bool, restart: bool) {
        let Some(record) = self.threads.get_mut(id) else {
            return;
        };
        let now = record.terminal;
        if was && !now {
            self.open
                .insert(id, &record.kind, record.parent_id.as_deref());
        } else if !was && now {
            self.open
                .remove(id, &record.kind, record.parent_id.as_deref());
        }
        let entered = now && (!was || restart);
        if (!now || entered) && record.finished_mark.take().is_some() {
            self.retention.finished -= 1;
        }
        if entered && self.retention.is_active() {
            self.retention.next_mark += 1;
            let mark = self.retention.next_mark;
            record.finished_mark = Some(mark);
            self.retention.finished += 1;
            self.retention
                .queue
                .push_back((Instant::now(), id.to_owned(), mark));
        }
    }

    /// Drops the finished threads the retention policy no longer keeps.
    /// Amortised O(1) per finished thread: it pops the front of a queue
    /// ordered by finish time, and compacts the queue when stale entries
    /// make up most of it.
    fn expire(&mut self) {
        if !self.retention.is_active() {
            return;
        }
        let now = Instant::now();
        while let Some((at, id, mark)) = self.retention.queue.front() {
            let current = self.threads.get(id).and_then(|r| r.finished_mark);
            if current != Some(*mark) {
                self.retention.queue.pop_front();
                continue;
            }
            let too_old = self
                .retention
                .options
                .retention
                .is_some_and(|ttl| now.saturating_duration_since(*at) >= ttl);
            let too_many = self
                .retention
                .options
                .max_finished
                .is_some_and(|max| self.retention.finished > max);
            if !(too_old || too_many) {
                break;
            }
            if let Some((_, id, _)) = self.retention.queue.pop_front() {
                self.delete(&id);
            }
        }
        let queue = &mut self.retention.queue;
        if queue.len() > 64 && queue.len() > 2 * self.retention.finished {
            let threads = &self.threads;
            queue.retain(|(_, id, mark)| {
                threads.get(id).and_then(|r| r.finished_mark) == Some(*mark)
            });
        }
    }

    /// Inserts a new thread at version 1. The caller has checked that the id
    /// is free.
    fn insert(&mut self, mut thread: Thread) -> Committed {
        let mut record = Record::new(&mut thread);
        record.version = 1;
        let (appended, skipped) = record.append_messages(thread.messages);
        let committed = record.committed(appended, skipped);
        let terminal = record.terminal;
        // Indexed as open; `remark` takes a finished thread out again.
        self.index(&thread.id, &record.kind, record.parent_id.as_deref(), false);
        if terminal {
            let id = thread.id.clone();
            self.threads.insert(thread.id, record);
            self.remark(&id, false, true);
        } else {
            self.threads.insert(thread.id, record);
        }
        committed
    }

    /// Checks and applies one append. The caller has validated the ids.
    fn append(
        &mut self,
        id: &str,
        changes: ChangeSet,
        precondition: VersionPrecondition,
    ) -> Result<Committed> {
        let record = self
            .threads
            .get_mut(id)
            .ok_or_else(|| ThreadStoreError::NotFound { id: id.to_owned() })?;
        if let VersionPrecondition::Exact(expected) = precondition
            && record.version != expected
        {
            return Err(ThreadStoreError::VersionConflict {
                id: id.to_owned(),
                expected,
                actual: record.version,
            });
        }
        let ChangeSet {
            state,
            messages,
            terminal,
        } = changes;
        let mut changed = state.is_some() || terminal.is_some();
        if let Some(state) = state {
            record.state = state;
        }
        let was = record.terminal;
        if let Some(terminal) = terminal {
            record.terminal = terminal;
        }
        let (appended, skipped) = record.append_messages(messages);
        changed |= appended > 0;
        if changed {
            record.version += 1;
        }
        let committed = record.committed(appended, skipped);
        if terminal.is_some() {
            self.remark(id, was, false);
        }
        Ok(committed)
    }

    /// Creates or replaces a thread. The caller has validated it.
    fn save(&mut self, mut thread: Thread) -> Committed {
        let Some(record) = self.threads.get_mut(&thread.id) else {
            return self.insert(thread);
        };
        let old_kind = std::mem::replace(&mut record.kind, std::mem::take(&mut thread.kind));
        let old_parent = std::mem::replace(&mut record.parent_id, thread.parent_id.take());
        record.metadata = std::mem::take(&mut thread.metadata);
        record.state = std::mem::take(&mut thread.state);
        let was = std::mem::replace(&mut record.terminal, thread.terminal);
        record.version += 1;
        let (appended, skipped) = record.append_messages(thread.messages);
        let committed = record.committed(appended, skipped);
        if old_kind != record.kind || old_parent != record.parent_id {
            let (kind, parent) = (record.kind.clone(), record.parent_id.clone());
            self.unindex(&thread.id, &old_kind, old_parent.as_deref());
            self.index(&thread.id, &kind, parent.as_deref(), was);
        }
        self.remark(&thread.id, was, true);
        committed
    }

    fn delete(&mut self, id: &str) {
        if let Some(record) = self.threads.remove(id) {
            self.unindex(id, &record.kind, record.parent_id.as_deref());
            if record.finished_mark.is_some() {
                self.retention.finished -= 1;
            }
        }
    }

    fn list(&self, query: &ThreadQuery) -> ThreadPage {
        let after = match &query.after {
            Some(after) => Bound::Excluded(after.as_str()),
            None => Bound::Unbounded,
        };
        let range = (after, Bound::Unbounded);
        let limit = effective_limit(query.limit);
        let empty = BTreeSet::new();
        let (parents, kinds) = if query.open_only {
            (&self.open.by_parent, &self.open.by_kind)
        } else {
            (&self.by_parent, &self.by_kind)
        };
        let by_parent = |parent: &str| parents.get(parent).unwrap_or(&empty);
        let by_kind = |kind: &str| kinds.get(kind).unwrap_or(&empty);
        let ids: Box<dyn Iterator<Item = &String> + '_> = match (&query.parent_id, &query.kind) {
            (None, None) if query.open_only => Box::new(self.open.all.range::<str, _>(range)),
            (None, None) => Box::new(self.threads.range::<str, _>(range).map(|(id, _)| id)),
            (Some(parent), None) => Box::new(by_parent(parent).range::<str, _>(range)),
            (None, Some(kind)) => Box::new(by_kind(kind).range::<str, _>(range)),
            (Some(parent), Some(kind)) => {
                let (parents, kinds) = (by_parent(parent), by_kind(kind));
                // Walk the smaller index, check membership in the other.
                let (walk, check) = if parents.len() <= kinds.len() {
                    (parents, kinds)
                } else {
                    (kinds, parents)
                };
                Box::new(
                    walk.range::<str, _>(range)
                        .filter(move |id| check.contains(id.as_str())),
                )
            }
        };
        let mut ids: Vec<String> = ids.take(limit + 1).cloned().collect();
        let next = if ids.len() > limit {
            ids.truncate(limit);
            ids.last().cloned()
        } else {
            None
        };
        ThreadPage { ids, next }
    }
}

fn remove_from(index: &mut HashMap<String, BTreeSet<String>>, key: &str, id: &str) {
    if let Some(ids) = index.get_mut(key) {
        ids.remove(id);
        if ids.is_empty() {
            index.remove(key);
        }
    }
}

/// Checks the ids of one append request.
fn validate_append(id: &str, changes: &ChangeSet) -> Result<()> {
    validate_id("thread id", id)?;
    validate_messages(&changes.messages)
}

#[async_trait]
impl ThreadReader for MemoryStore {
    async fn load(&self, id: &str) -> Result<Option<ThreadHead>> {
        validate_id("thread id", id)?;
        Ok(self.lock().threads.get(id).map(|record| record.head(id)))
    }

    async fn load_messages(&self, id: &str, query: MessageQuery) -> Result<MessagePage> {
        validate_id("thread id", id)?;
        let inner = self.lock();
        let record = inner
            .threads
            .get(id)
            .ok_or_else(|| ThreadStoreError::NotFound { id: id.to_owned() })?;
        let len = record.messages.len();
        let start = usize::try_from(query.after).map_or(len, |after| after.min(len));
        let end = start.saturating_add(effective_limit(query.limit)).min(len);
        let messages = record.messages[start..end].to_vec();
        let next = if end < len {
            messages.last().map(|m| m.seq)
        } else {
            None
        };
        Ok(MessagePage { messages, next })
    }

    async fn list_threads(&self, query: ThreadQuery) -> Result<ThreadPage> {
        validate_query(&query)?;
        Ok(self.lock().list(&query))
    }
}

#[async_trait]
impl ThreadWriter for MemoryStore {
    async fn create(&self, thread: Thread) -> Result<Committed> {
        validate_thread(&thread)?;
        let mut inner = self.lock();
        if inner.threads.contains_key(&thread.id) {
            return Err(ThreadStoreError::AlreadyExists { id: thread.id });
        }
        Ok(inner.insert(thread))
    }

    /// Validates every thread first, then creates them in order under one
    /// lock.
    async fn create_batch(&self, threads: Vec<Thread>) -> Vec<Result<Committed>> {
        let checked: Vec<_> = threads
            .into_iter()
            .map(|thread| validate_thread(&thread).map(|()| thread))
            .collect();
        let mut inner = self.lock();
        checked
            .into_iter()
            .map(|thread| {
                let thread = thread?;
                if inner.threads.contains_key(&thread.id) {
                    return Err(ThreadStoreError::AlreadyExists { id: thread.id });
                }
                Ok(inner.insert(thread))
            })
            .collect()
    }

    async fn append(
        &self,
        id: &str,
        changes: ChangeSet,
        precondition: VersionPrecondition,
    ) -> Result<Committed> {
        validate_append(id, &changes)?;
        self.lock().append(id, changes, precondition)
    }

    async fn append_batch(&self, requests: Vec<AppendRequest>) -> Vec<Result<Committed>> {
        let checked: Vec<_> = requests
            .into_iter()
            .map(|request| validate_append(&request.id, &request.changes).map(|()| request))
            .collect();
        let mut inner = self.lock();
        checked
            .into_iter()
            .map(|request| {
                let request = request?;
                inner.append(&request.id, request.changes, request.precondition)
            })
            .collect()
    }

    async fn save(&self, thread: Thread) -> Result<Committed> {
        validate_thread(&thread)?;
        Ok(self.lock().save(thread))
    }

    async fn delete(&self, id: &str) -> Result<()> {
        validate_id("thread id", id)?;
        self.lock().delete(id);
        Ok(())
    }

    /// In-process signals: every clone of this store (every manager that
    /// shares it) sees them.
    fn signals(&self) -> Option<&dyn task_store::ThreadSignals> {
        Some(self.signals.as_ref())
    }
}

const _: () = {
    const fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<MemoryStore>();
};

#[cfg(test)]
mod tests;
