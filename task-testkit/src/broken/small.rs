//! [`SmallStore`]: a deliberately plain in-memory store that keeps the
//! contract, and the same store with one [`Defect`] switched on.
//!
//! It is written the way a first backend is: a map of records, an index per
//! parent (composite keys, as in a key-value store), an index per kind, a set
//! of open threads and a set of message ids per thread, each kept by hand in
//! every write. Each defect is one realistic slip in that bookkeeping.
//!
//! Size: about 720 lines: the whole contract and every defect's switch in one
//! place, so that each defect is one `if` beside the code it breaks.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use serde_json::Value;
use task_store::{
    AppendRequest, ChangeSet, Committed, MAX_ID_LEN, Message, MessagePage, MessageQuery, Metadata,
    NewMessage, Result, SignalReceiver, SignalSource, Thread, ThreadHead, ThreadPage, ThreadQuery,
    ThreadReader, ThreadSignals, ThreadStoreError, ThreadWriter, VersionPrecondition,
    effective_limit, validate_id,
};

use super::Defect;

/// How many recent message ids [`Defect::DedupeWindow`] remembers.
const WINDOW: usize = 64;

/// The separator of the parent index's composite keys: a control character,
/// which no valid id holds (and `:`, which ids do hold, for
/// [`Defect::PrefixParentIndex`]).
fn separator(defect: Option<Defect>) -> char {
    if defect == Some(Defect::PrefixParentIndex) {
        ':'
    } else {
        '\u{0}'
    }
}

fn check_id(defect: Option<Defect>, what: &str, id: &str) -> Result<()> {
    let broken = match defect {
        Some(Defect::AsciiOnlyControls) => Some(
            id.is_empty() || id.len() > MAX_ID_LEN || id.bytes().any(|b| b < 0x20 || b == 0x7f),
        ),
        Some(Defect::LengthInChars) => Some(
            id.is_empty() || id.chars().count() > MAX_ID_LEN || id.chars().any(char::is_control),
        ),
        _ => None,
    };
    match broken {
        None => validate_id(what, id),
        Some(false) => Ok(()),
        Some(true) => Err(ThreadStoreError::invalid_input(format!(
            "{what} {id:?} is not a valid id"
        ))),
    }
}

/// One stored thread (its message ids live in [`State::message_ids`], as a
/// key-value store keeps them under a key of their own).
#[derive(Debug)]
struct Record {
    kind: String,
    parent: Option<String>,
    metadata: Metadata,
    state: Value,
    version: u64,
    terminal: bool,
    messages: Vec<Message>,
}

impl Record {
    fn committed(&self, appended: u64, skipped: u64) -> Committed {
        Committed {
            version: self.version,
            last_seq: self.messages.len() as u64,
            appended,
            skipped,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    defect: Option<Defect>,
    threads: BTreeMap<String, Record>,
    /// `parent` + separator + `id`, in byte order.
    by_parent: BTreeSet<String>,
    by_kind: BTreeMap<String, BTreeSet<String>>,
    open: BTreeSet<String>,
    message_ids: HashMap<String, HashSet<String>>,
    /// Every message id of the store, for [`Defect::DedupeAcrossThreads`].
    every_message_id: HashSet<String>,
}

impl State {
    fn has(&self, defect: Defect) -> bool {
        self.defect == Some(defect)
    }

    fn parent_key(&self, parent: &str, id: &str) -> String {
        format!("{parent}{}{id}", separator(self.defect))
    }

    /// Indexes a thread by kind and parent, and as open unless `finished`.
    fn index(&mut self, id: &str, kind: &str, parent: Option<&str>, finished: bool) {
        self.by_kind
            .entry(kind.to_owned())
            .or_default()
            .insert(id.to_owned());
        if let Some(parent) = parent {
            let key = self.parent_key(parent, id);
            self.by_parent.insert(key);
        }
        if !finished {
            self.open.insert(id.to_owned());
        }
    }

    fn unindex_parent(&mut self, id: &str, parent: Option<&str>) {
        if let Some(parent) = parent {
            let key = self.parent_key(parent, id);
            self.by_parent.remove(&key);
        }
    }

    fn unindex_kind(&mut self, id: &str, kind: &str) {
        if let Some(ids) = self.by_kind.get_mut(kind) {
            ids.remove(id);
            if ids.is_empty() {
                self.by_kind.remove(kind);
            }
        }
    }

    fn is_known(&self, id: &str, message_id: &str) -> bool {
        match self.defect {
            Some(Defect::DedupeWindow) => self.threads.get(id).is_some_and(|record| {
                record
                    .messages
                    .iter()
                    .rev()
                    .filter_map(|m| m.id.as_deref())
                    .take(WINDOW)
                    .any(|known| known == message_id)
            }),
            Some(Defect::DedupeAcrossThreads) => self.every_message_id.contains(message_id),
            _ => self
                .message_ids
                .get(id)
                .is_some_and(|ids| ids.contains(message_id)),
        }
    }

    fn remember(&mut self, id: &str, message_id: &str) {
        self.message_ids
            .entry(id.to_owned())
            .or_default()
            .insert(message_id.to_owned());
        self.every_message_id.insert(message_id.to_owned());
    }

    /// Appends the messages of thread `id` whose ids are new (all of them
    /// when they were `sorted` out already); returns how many were appended
    /// and skipped.
    fn append_messages(
        &mut self,
        id: &str,
        messages: Vec<NewMessage>,
        sorted: bool,
    ) -> Result<(u64, u64)> {
        let (mut appended, mut skipped) = (0, 0);
        for message in messages {
            if let Some(message_id) = message.id.as_ref().filter(|_| !sorted) {
                if self.has(Defect::ValidatesMessagesWhileWriting) {
                    validate_id("message id", message_id)?;
                }
                if self.is_known(id, message_id) {
                    skipped += 1;
                    continue;
                }
                self.remember(id, message_id);
            }
            let Some(record) = self.threads.get_mut(id) else {
                return Err(ThreadStoreError::NotFound { id: id.to_owned() });
            };
            let seq = record.messages.len() as u64 + 1;
            record.messages.push(Message {
                seq,
                id: message.id,
                body: message.body,
            });
            appended += 1;
        }
        Ok((appended, skipped))
    }

    /// Writes a new thread at version 1 (over any record of that id).
    fn insert(&mut self, thread: Thread) -> Result<Committed> {
        let Thread {
            id,
            kind,
            parent_id,
            metadata,
            state,
            messages,
            terminal,
        } = thread;
        let finished = terminal && !self.has(Defect::TerminalCreateListedOpen);
        self.index(&id, &kind, parent_id.as_deref(), finished);
        self.threads.insert(
            id.clone(),
            Record {
                kind,
                parent: parent_id,
                metadata,
                state,
                version: 1,
                terminal,
                messages: Vec::new(),
            },
        );
        let (appended, skipped) = self.append_messages(&id, messages, false)?;
        self.committed(&id, appended, skipped)
    }

    fn committed(&self, id: &str, appended: u64, skipped: u64) -> Result<Committed> {
        self.threads
            .get(id)
            .map(|record| record.committed(appended, skipped))
            .ok_or_else(|| ThreadStoreError::NotFound { id: id.to_owned() })
    }

    fn create(&mut self, thread: Thread) -> Result<Committed> {
        if self.threads.contains_key(&thread.id) {
            return Err(ThreadStoreError::AlreadyExists { id: thread.id });
        }
        self.insert(thread)
    }

    fn check_version(&self, id: &str, precondition: VersionPrecondition) -> Result<()> {
        let Some(record) = self.threads.get(id) else {
            return Err(ThreadStoreError::NotFound { id: id.to_owned() });
        };
        match precondition {
            VersionPrecondition::Exact(expected) if expected != record.version => {
                let actual = record.version;
                let (expected, actual) = if self.has(Defect::SwappedConflictVersions) {
                    (actual, expected)
                } else {
                    (expected, actual)
                };
                Err(ThreadStoreError::VersionConflict {
                    id: id.to_owned(),
                    expected,
                    actual,
                })
            }
            _ => Ok(()),
        }
    }

    fn append(
        &mut self,
        id: &str,
        changes: ChangeSet,
        precondition: VersionPrecondition,
    ) -> Result<Committed> {
        if !self.threads.contains_key(id) && self.has(Defect::AppendCreatesMissing) {
            self.insert(Thread::new(id, "unknown"))?;
        }
        if changes.is_empty()
            && self.has(Defect::EmptyChangeSetSkipsPrecondition)
            && let Some(record) = self.threads.get(id)
        {
            return Ok(record.committed(0, 0));
        }
        if self.has(Defect::ConflictRecordsMessageIds) {
            // The slip: the new messages are sorted out, and their ids
            // recorded, before the precondition is checked.
            let mut changes = changes;
            let (mut fresh, mut skipped) = (Vec::new(), 0);
            for message in std::mem::take(&mut changes.messages) {
                match &message.id {
                    Some(message_id) if self.is_known(id, message_id) => skipped += 1,
                    Some(message_id) => {
                        self.remember(id, message_id);
                        fresh.push(message);
                    }
                    None => fresh.push(message),
                }
            }
            self.check_version(id, precondition)?;
            changes.messages = fresh;
            let mut committed = self.apply(id, changes, true)?;
            committed.skipped += skipped;
            return Ok(committed);
        }
        let precondition = if self.has(Defect::IgnoresPreconditions) {
            VersionPrecondition::Any
        } else {
            precondition
        };
        self.check_version(id, precondition)?;
        self.apply(id, changes, false)
    }

    /// Applies a change set whose precondition held (its messages `sorted`
    /// out already, or not).
    fn apply(&mut self, id: &str, changes: ChangeSet, sorted: bool) -> Result<Committed> {
        let ChangeSet {
            state,
            messages,
            terminal,
        } = changes;
        let mut changed = state.is_some() || terminal.is_some();
        let Some(record) = self.threads.get_mut(id) else {
            return Err(ThreadStoreError::NotFound { id: id.to_owned() });
        };
        if let Some(state) = state {
            record.state = state;
        }
        if let Some(terminal) = terminal {
            record.terminal = terminal;
            if terminal {
                self.open.remove(id);
            } else {
                self.open.insert(id.to_owned());
            }
        }
        let (appended, skipped) = self.append_messages(id, messages, sorted)?;
        changed |= appended > 0 || self.has(Defect::VersionBumpOnNoOp);
        let Some(record) = self.threads.get_mut(id) else {
            return Err(ThreadStoreError::NotFound { id: id.to_owned() });
        };
        if changed {
            record.version += 1;
        }
        Ok(record.committed(appended, skipped))
    }

    fn save(&mut self, thread: Thread) -> Result<Committed> {
        let Some(record) = self.threads.get_mut(&thread.id) else {
            return self.insert(thread);
        };
        let Thread {
            id,
            kind,
            parent_id,
            metadata,
            state,
            messages,
            terminal,
        } = thread;
        let old_kind = std::mem::replace(&mut record.kind, kind.clone());
        let old_parent = std::mem::replace(&mut record.parent, parent_id.clone());
        record.metadata = metadata;
        record.state = state;
        record.terminal = terminal;
        record.version += 1;
        if old_parent != parent_id && !self.has(Defect::StaleParentIndexOnSave) {
            self.unindex_parent(&id, old_parent.as_deref());
        }
        self.unindex_kind(&id, &old_kind);
        let was_open = self.open.contains(&id);
        self.index(&id, &kind, parent_id.as_deref(), true);
        let open = if self.has(Defect::OpenIndexIgnoresSave) {
            was_open
        } else {
            !terminal
        };
        if open {
            self.open.insert(id.clone());
        } else {
            self.open.remove(&id);
        }
        let (appended, skipped) = self.append_messages(&id, messages, false)?;
        self.committed(&id, appended, skipped)
    }

    fn delete(&mut self, id: &str) {
        let Some(record) = self.threads.remove(id) else {
            return;
        };
        self.unindex_parent(id, record.parent.as_deref());
        if !self.has(Defect::KindIndexKeptOnDelete) {
            self.unindex_kind(id, &record.kind);
        }
        self.open.remove(id);
        if !self.has(Defect::DeleteKeepsMessageIds) {
            self.message_ids.remove(id);
        }
    }

    fn load_messages(&self, id: &str, query: MessageQuery) -> Result<MessagePage> {
        let Some(record) = self.threads.get(id) else {
            if self.has(Defect::NotFoundAsEmptyPage) {
                return Ok(MessagePage {
                    messages: Vec::new(),
                    next: None,
                });
            }
            return Err(ThreadStoreError::NotFound { id: id.to_owned() });
        };
        let after = if self.has(Defect::InclusiveMessageCursor) {
            query.after.saturating_sub(1)
        } else {
            query.after
        };
        let len = record.messages.len();
        let start = usize::try_from(after).map_or(len, |after| after.min(len));
        let end = start.saturating_add(effective_limit(query.limit)).min(len);
        let messages = record.messages[start..end].to_vec();
        let next = (end < len)
            .then(|| messages.last().map(|m| m.seq))
            .flatten();
        Ok(MessagePage { messages, next })
    }

    fn list(&self, query: &ThreadQuery) -> ThreadPage {
        let mut ids: Vec<String> = match (&query.parent_id, &query.kind) {
            (Some(parent), kind) => {
                let start = format!("{parent}{}", separator(self.defect));
                self.by_parent
                    .range(start.clone()..)
                    .take_while(|key| key.starts_with(&start))
                    .map(|key| key[start.len()..].to_owned())
                    .filter(|id| {
                        kind.as_ref().is_none_or(|kind| {
                            self.by_kind.get(kind).is_some_and(|ids| ids.contains(id))
                        })
                    })
                    .collect()
            }
            (None, Some(kind)) => self
                .by_kind
                .get(kind)
                .map(|ids| ids.iter().cloned().collect())
                .unwrap_or_default(),
            (None, None) => self.threads.keys().cloned().collect(),
        };
        ids.retain(|id| !query.open_only || self.open.contains(id));
        ids.retain(|id| query.after.as_ref().is_none_or(|after| id > after));
        ids.sort();
        ids.dedup();
        let limit = effective_limit(query.limit);
        let look_ahead = if self.has(Defect::LastPageOffByOne) {
            limit + 1
        } else {
            limit
        };
        let more = ids.len() > look_ahead;
        ids.truncate(limit);
        let next = if more { ids.last().cloned() } else { None };
        ThreadPage { ids, next }
    }
}

/// Signals that are offered and never delivered ([`Defect::SilentSignals`]).
#[derive(Debug)]
struct Silent;

#[async_trait]
impl ThreadSignals for Silent {
    async fn signal(&self, channel: &str) -> Result<()> {
        validate_id("signal channel", channel)
    }

    async fn watch(&self, channel: &str) -> Result<SignalReceiver> {
        validate_id("signal channel", channel)?;
        Ok(SignalReceiver::new(Box::new(Silent)))
    }
}

#[async_trait]
impl SignalSource for Silent {
    async fn next(&mut self) -> Option<()> {
        futures::future::pending().await
    }
}

/// A plain in-memory store that keeps the contract (it passes the
/// conformance suite), or, made [`with_defect`](Self::with_defect), breaks
/// it in one subtle way. It offers no signals (`signals()` is `None`),
/// except with [`Defect::SilentSignals`].
pub struct SmallStore {
    state: Mutex<State>,
}

impl Default for SmallStore {
    fn default() -> Self {
        Self::new()
    }
}

impl SmallStore {
    /// A store without a defect.
    pub fn new() -> Self {
        Self {
            state: Mutex::new(State::default()),
        }
    }

    /// A store with this one defect.
    pub fn with_defect(defect: Defect) -> Self {
        Self {
            state: Mutex::new(State {
                defect: Some(defect),
                ..State::default()
            }),
        }
    }

    /// The store's defect, if it has one.
    pub fn defect(&self) -> Option<Defect> {
        self.lock().defect
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section is short and does not panic on its own.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn check_thread(&self, thread: &Thread) -> Result<()> {
        let defect = self.defect();
        check_id(defect, "thread id", &thread.id)?;
        check_id(defect, "thread kind", &thread.kind)?;
        if let Some(parent) = &thread.parent_id {
            check_id(defect, "parent id", parent)?;
        }
        self.check_messages(&thread.messages)
    }

    fn check_messages(&self, messages: &[NewMessage]) -> Result<()> {
        let defect = self.defect();
        if defect == Some(Defect::ValidatesMessagesWhileWriting) {
            return Ok(());
        }
        messages
            .iter()
            .filter_map(|m| m.id.as_deref())
            .try_for_each(|id| check_id(defect, "message id", id))
    }

    fn check_append(&self, id: &str, changes: &ChangeSet) -> Result<()> {
        check_id(self.defect(), "thread id", id)?;
        self.check_messages(&changes.messages)
    }

    /// Runs a batch item by item; with [`Defect::StopsBatchAtFirstError`],
    /// every item after the first failure gets that failure, unapplied.
    fn batch<T>(
        &self,
        items: Vec<T>,
        mut one: impl FnMut(&mut State, T) -> Result<Committed>,
    ) -> Vec<Result<Committed>> {
        let mut state = self.lock();
        let stops = state.has(Defect::StopsBatchAtFirstError);
        let mut failed: Option<ThreadStoreError> = None;
        items
            .into_iter()
            .map(|item| match &failed {
                Some(error) if stops => Err(error.clone()),
                _ => {
                    let result = one(&mut state, item);
                    if let Err(error) = &result {
                        failed.get_or_insert_with(|| error.clone());
                    }
                    result
                }
            })
            .collect()
    }
}

impl fmt::Debug for SmallStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("SmallStore")
            .field("defect", &state.defect)
            .field("threads", &state.threads.len())
            .finish()
    }
}

#[async_trait]
impl ThreadReader for SmallStore {
    async fn load(&self, id: &str) -> Result<Option<ThreadHead>> {
        check_id(self.defect(), "thread id", id)?;
        Ok(self.lock().threads.get(id).map(|record| ThreadHead {
            id: id.to_owned(),
            kind: record.kind.clone(),
            parent_id: record.parent.clone(),
            metadata: record.metadata.clone(),
            state: record.state.clone(),
            version: record.version,
            last_seq: record.messages.len() as u64,
            terminal: record.terminal,
        }))
    }

    async fn load_messages(&self, id: &str, query: MessageQuery) -> Result<MessagePage> {
        check_id(self.defect(), "thread id", id)?;
        self.lock().load_messages(id, query)
    }

    async fn list_threads(&self, query: ThreadQuery) -> Result<ThreadPage> {
        let defect = self.defect();
        if let Some(parent) = &query.parent_id {
            check_id(defect, "parent id", parent)?;
        }
        if let Some(kind) = &query.kind {
            check_id(defect, "thread kind", kind)?;
        }
        Ok(self.lock().list(&query))
    }
}

/// The gap between a check and its write in the `CheckThenCreate` and
/// `CheckThenAppend` defects, as a round trip to a server would give: several
/// turns of the scheduler, then a millisecond. A single turn was not enough:
/// on a multi-threaded runtime a writer was sometimes polled again before any
/// concurrent caller had made its check, so the race (and the case meant to
/// catch it) passed about once in a hundred runs.
async fn race_window() {
    const TURNS: usize = 8;
    for _ in 0..TURNS {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
}

#[async_trait]
impl ThreadWriter for SmallStore {
    async fn create(&self, thread: Thread) -> Result<Committed> {
        self.check_thread(&thread)?;
        if self.defect() == Some(Defect::CheckThenCreate) {
            if self.lock().threads.contains_key(&thread.id) {
                return Err(ThreadStoreError::AlreadyExists { id: thread.id });
            }
            race_window().await;
            return self.lock().insert(thread);
        }
        self.lock().create(thread)
    }

    async fn create_batch(&self, threads: Vec<Thread>) -> Vec<Result<Committed>> {
        let checked: Vec<Result<Thread>> = threads
            .into_iter()
            .map(|thread| self.check_thread(&thread).map(|()| thread))
            .collect();
        if self.defect() == Some(Defect::BatchRepeatedIdOverwrites) {
            let mut state = self.lock();
            let taken: Vec<bool> = checked
                .iter()
                .map(|t| {
                    t.as_ref()
                        .is_ok_and(|thread| state.threads.contains_key(&thread.id))
                })
                .collect();
            return checked
                .into_iter()
                .zip(taken)
                .map(|(thread, taken)| {
                    let thread = thread?;
                    if taken {
                        return Err(ThreadStoreError::AlreadyExists { id: thread.id });
                    }
                    state.insert(thread)
                })
                .collect();
        }
        self.batch(checked, |state, thread| state.create(thread?))
    }

    async fn append(
        &self,
        id: &str,
        changes: ChangeSet,
        precondition: VersionPrecondition,
    ) -> Result<Committed> {
        self.check_append(id, &changes)?;
        if self.defect() == Some(Defect::CheckThenAppend) {
            self.lock().check_version(id, precondition)?;
            race_window().await;
            return self.lock().apply(id, changes, false);
        }
        self.lock().append(id, changes, precondition)
    }

    async fn append_batch(&self, requests: Vec<AppendRequest>) -> Vec<Result<Committed>> {
        let checked: Vec<Result<AppendRequest>> = requests
            .into_iter()
            .map(|request| {
                self.check_append(&request.id, &request.changes)
                    .map(|()| request)
            })
            .collect();
        self.batch(checked, |state, request| {
            let request = request?;
            state.append(&request.id, request.changes, request.precondition)
        })
    }

    async fn save(&self, thread: Thread) -> Result<Committed> {
        self.check_thread(&thread)?;
        self.lock().save(thread)
    }

    async fn delete(&self, id: &str) -> Result<()> {
        check_id(self.defect(), "thread id", id)?;
        self.lock().delete(id);
        Ok(())
    }

    fn signals(&self) -> Option<&dyn ThreadSignals> {
        (self.defect() == Some(Defect::SilentSignals)).then_some(&Silent as &dyn ThreadSignals)
    }
}
