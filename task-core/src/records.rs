//! [`TaskStore`]: tasks kept durably in any [`ThreadStore`].
//!
//! Task `T` lives in thread `task:T` of kind `"task"` whose parent is the
//! task's owner, so the store's parent index lists an owner's tasks and its
//! open index lists the owner's tasks that can still run. The thread's state
//! is the [`TaskRecord`]; its message log is the audit trail (one message per
//! transition, with an id `a<attempt>:<transition>` so a retried write is
//! de-duplicated) and the output the task emitted (`a<attempt>:out:<seq>`).
//!
//! Every change is decided by one function, [`decide`]: load (or trust what
//! the caller knows), apply the transitions with the pure state machine,
//! append with `Exact(version)`; on a version conflict, reload and decide
//! again ([`TaskStore::cas`]).

use std::sync::Arc;

use futures::StreamExt;
use serde::Deserialize;
use serde_json::Value;
use task_store::{
    AppendRequest, ChangeSet, Message, MessageQuery, NewMessage, Thread, ThreadHead, ThreadQuery,
    ThreadReaderExt, ThreadStore, ThreadStoreError, VersionPrecondition,
};

use crate::protocol::{TASK_KIND, task_of_thread, task_thread};
use crate::state::{Outcome, Rejection, TaskRecord, Transition, apply};
use crate::{NewTaskSpec, TaskError, TaskId, validate};

/// How many times a write is re-decided after version conflicts before the
/// conflict is reported.
const MAX_CAS_ATTEMPTS: usize = 64;

/// Records loaded at once by the calls that load many (listing, recovery).
pub(crate) const LOAD_CONCURRENCY: usize = 32;

/// Tasks over any [`ThreadStore`]: create, load, list and transition task
/// records, with compare-and-swap writes.
#[derive(Debug, Clone)]
pub struct TaskStore {
    store: Arc<dyn ThreadStore>,
}

/// A record as written, with the thread version that holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct VersionedRecord {
    /// The record.
    pub record: TaskRecord,
    /// The version of its thread.
    pub version: u64,
}

/// What a writer believes is stored, to skip the first load of a write.
#[derive(Debug)]
pub(crate) enum Known {
    /// Nothing known: load first.
    Unknown,
    /// Probably no record yet.
    Absent,
    /// The record and version last written.
    Cached(Box<VersionedRecord>),
}

/// One durable change a writer wants made: a transition, or output.
#[derive(Debug, Clone)]
pub(crate) enum Change {
    /// A transition of the state machine.
    Transition(Transition),
    /// Output of attempt `attempt`, the `seq`-th of that attempt.
    Output {
        attempt: u32,
        seq: u64,
        value: Value,
    },
}

/// What one decision wants written: the record after the changes (`None`
/// when no transition applied) and the messages, in order.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    pub(crate) record: Option<TaskRecord>,
    pub(crate) messages: Vec<NewMessage>,
}

/// Decides what writing `changes` onto `current` (`None`: no record yet)
/// changes. This is the one place where a set of changes is checked against
/// a record: every durable write of the task layer goes through it.
///
/// `owner`, when given, must own the record: a write on behalf of an owner
/// never touches another owner's task.
///
/// # Errors
///
/// `Rejected` for the first change the state machine refuses (nothing is
/// written then); `UnknownTask` when there is no record and the first change
/// does not create one.
pub(crate) fn decide(
    task_id: &str,
    owner: Option<&str>,
    current: Option<&TaskRecord>,
    changes: &[Change],
) -> Result<Plan, TaskError> {
    if let (Some(owner), Some(current)) = (owner, current)
        && current.owner_thread_id != owner
    {
        return Err(TaskError::Rejected {
            task_id: task_id.to_owned(),
            reason: Rejection::OwnerMismatch,
        });
    }
    let mut record: Option<TaskRecord> = None;
    let mut messages = Vec::new();
    for change in changes {
        let transition = match change {
            Change::Transition(t) => t,
            Change::Output {
                attempt,
                seq,
                value,
            } => {
                messages.push(output_message(*attempt, *seq, value));
                continue;
            }
        };
        let now = record.as_ref().or(current);
        if now.is_none() && !matches!(transition, Transition::Start { .. }) {
            return Err(TaskError::unknown(task_id));
        }
        match apply(now, transition) {
            Outcome::Applied(next) => {
                messages.push(audit_message(transition, &next));
                record = Some(next);
            }
            Outcome::AlreadyApplied => {}
            Outcome::Rejected(reason) => {
                return Err(TaskError::Rejected {
                    task_id: task_id.to_owned(),
                    reason,
                });
            }
        }
    }
    Ok(Plan { record, messages })
}

/// A write decided on a record, ready to send.
#[derive(Debug)]
pub(crate) enum Prepared {
    /// Nothing to write: the stored record stands.
    Unchanged(VersionedRecord),
    /// Create the task's thread holding `record`.
    Create { thread: Thread, record: TaskRecord },
    /// Append to the task's thread, leaving `record` stored.
    Append {
        request: AppendRequest,
        record: TaskRecord,
    },
}

/// Whether a write failed because the store is not as the writer believed
/// (another writer got there first): deciding again on a fresh load fixes it.
pub(crate) fn needs_reload(error: &ThreadStoreError) -> bool {
    matches!(
        error,
        ThreadStoreError::VersionConflict { .. }
            | ThreadStoreError::AlreadyExists { .. }
            | ThreadStoreError::NotFound { .. }
    )
}

impl TaskStore {
    /// Tasks kept in `store`.
    pub fn new(store: Arc<dyn ThreadStore>) -> Self {
        Self { store }
    }

    /// The underlying thread store.
    pub fn thread_store(&self) -> &Arc<dyn ThreadStore> {
        &self.store
    }

    /// The id of the thread that holds task `task_id`: `task:<task_id>`.
    pub fn thread_id(task_id: &str) -> String {
        task_thread(task_id)
    }

    /// Creates the record of a task that is about to run (status `running`,
    /// attempt 1). A manager that later spawns this id for the same owner
    /// adopts the record.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a bad id or oversized metadata;
    /// `Store(AlreadyExists)` when a record with this id exists.
    pub async fn create_task(&self, spec: NewTaskSpec) -> Result<TaskRecord, TaskError> {
        validate::TaskInput {
            task_id: &spec.task_id,
            owner: &spec.owner_thread_id,
            task_type: &spec.task_type,
            description: &spec.description,
            parent_task_id: spec.parent_task_id.as_deref(),
            metadata: &spec.metadata,
        }
        .check()?;
        let record = TaskRecord::running(spec, crate::model::now_ms());
        let start = Transition::Start {
            record: Box::new(record.clone()),
        };
        let thread = Thread::new(Self::thread_id(&record.task_id), TASK_KIND)
            .with_parent(record.owner_thread_id.clone())
            .with_state(encode(&record)?)
            .with_message(audit_message(&start, &record));
        self.store.create(thread).await?;
        Ok(record)
    }

    /// Loads task `task_id`'s record; `Ok(None)` when there is none.
    ///
    /// # Errors
    ///
    /// `Corrupt` when the stored state is not a task record (only this task
    /// is affected); `Store` when the store fails.
    pub async fn load_task(&self, task_id: &str) -> Result<Option<TaskRecord>, TaskError> {
        Ok(self.load_versioned(task_id).await?.map(|v| v.record))
    }

    /// Loads a record with its thread version.
    ///
    /// # Errors
    ///
    /// As [`load_task`](Self::load_task).
    pub async fn load_versioned(
        &self,
        task_id: &str,
    ) -> Result<Option<VersionedRecord>, TaskError> {
        validate::task_id("task_id", task_id)?;
        let Some(head) = self.store.load(&Self::thread_id(task_id)).await? else {
            return Ok(None);
        };
        decode(task_id, head).map(Some)
    }

    /// The ids of every task record of `owner`, from the store's parent index.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a bad owner; `Store` when the store fails.
    pub async fn list_task_ids(&self, owner: &str) -> Result<Vec<TaskId>, TaskError> {
        self.list_ids(owner, false).await
    }

    /// The ids of the task records of `owner` that can still run (running or
    /// resumable), from the store's index of open threads: the cost follows
    /// the owner's live work, never its history.
    ///
    /// # Errors
    ///
    /// As [`list_task_ids`](Self::list_task_ids).
    pub async fn list_open_task_ids(&self, owner: &str) -> Result<Vec<TaskId>, TaskError> {
        self.list_ids(owner, true).await
    }

    async fn list_ids(&self, owner: &str, open_only: bool) -> Result<Vec<TaskId>, TaskError> {
        validate::owner(owner)?;
        let mut query = ThreadQuery::by_parent(owner).with_kind(TASK_KIND);
        query.open_only = open_only;
        let ids = self.store.list_all_threads(query).await?;
        Ok(ids
            .into_iter()
            .filter_map(|id| task_of_thread(&id).map(str::to_owned))
            .collect())
    }

    /// A page of the ids of `owner`'s task records, in id order, after
    /// `after`, at most `limit` (clamped as store pages are); with the
    /// cursor of the next page.
    ///
    /// # Errors
    ///
    /// As [`list_task_ids`](Self::list_task_ids).
    pub async fn page_task_ids(
        &self,
        owner: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<TaskId>, Option<TaskId>), TaskError> {
        validate::owner(owner)?;
        let mut query = ThreadQuery::by_parent(owner)
            .with_kind(TASK_KIND)
            .with_limit(limit);
        query.after = after.map(task_thread);
        let page = self.store.list_threads(query).await?;
        let ids = page
            .ids
            .iter()
            .filter_map(|id| task_of_thread(id).map(str::to_owned))
            .collect();
        let next = page
            .next
            .as_deref()
            .and_then(task_of_thread)
            .map(str::to_owned);
        Ok((ids, next))
    }

    /// Loads every task record of `owner`, in id order, a bounded number at
    /// once. A record that cannot be read is reported as its own error and
    /// does not hide the others.
    ///
    /// # Errors
    ///
    /// The outer error when the owner's index cannot be listed.
    pub async fn list_tasks(
        &self,
        owner: &str,
    ) -> Result<Vec<Result<TaskRecord, TaskError>>, TaskError> {
        let ids = self.list_task_ids(owner).await?;
        Ok(self.load_owned(owner, ids).await)
    }

    /// Loads the records of `owner` that can still run (see
    /// [`list_open_task_ids`](Self::list_open_task_ids)), as
    /// [`list_tasks`](Self::list_tasks) does.
    ///
    /// # Errors
    ///
    /// As [`list_tasks`](Self::list_tasks).
    pub async fn list_open_tasks(
        &self,
        owner: &str,
    ) -> Result<Vec<Result<TaskRecord, TaskError>>, TaskError> {
        let ids = self.list_open_task_ids(owner).await?;
        Ok(self.load_owned(owner, ids).await)
    }

    /// Loads `ids`, keeping the records `owner` owns, in the order given.
    async fn load_owned(
        &self,
        owner: &str,
        ids: Vec<TaskId>,
    ) -> Vec<Result<TaskRecord, TaskError>> {
        self.load_many(ids)
            .await
            .into_iter()
            .filter_map(|(_, loaded)| match loaded {
                Ok(Some(found)) if found.record.owner_thread_id == owner => Some(Ok(found.record)),
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            })
            .collect()
    }

    /// Loads many records, [`LOAD_CONCURRENCY`] at a time, in the order
    /// given, each with its own result.
    pub(crate) async fn load_many(
        &self,
        ids: Vec<TaskId>,
    ) -> Vec<(TaskId, Result<Option<VersionedRecord>, TaskError>)> {
        futures::stream::iter(ids)
            .map(|id| async move {
                let loaded = self.load_versioned(&id).await;
                (id, loaded)
            })
            .buffered(LOAD_CONCURRENCY)
            .collect()
            .await
    }

    /// Deletes task `task_id`'s record and log. Idempotent.
    ///
    /// # Errors
    ///
    /// `Store` when the store fails.
    pub async fn delete_task(&self, task_id: &str) -> Result<(), TaskError> {
        validate::task_id("task_id", task_id)?;
        Ok(self.store.delete(&Self::thread_id(task_id)).await?)
    }

    /// Applies one transition durably: load, decide, write with
    /// `Exact(version)`, again on conflict.
    ///
    /// Returns the record as stored afterwards (unchanged when the transition
    /// was already applied).
    ///
    /// # Errors
    ///
    /// `Rejected` when the state machine refuses it; `UnknownTask` when no
    /// record exists (for anything but `Start`); `Store` on store failures.
    pub async fn transition(
        &self,
        task_id: &str,
        transition: Transition,
    ) -> Result<VersionedRecord, TaskError> {
        self.write(
            task_id,
            None,
            Known::Unknown,
            &[Change::Transition(transition)],
        )
        .await
    }

    /// Writes `changes` for task `task_id` (on behalf of `owner`, when given):
    /// the compare-and-swap loop every durable change goes through.
    ///
    /// `known` is what the caller believes is stored, to skip the first load:
    /// the record and version it last wrote, or that there is no record yet
    /// (a first start: the create then needs no read). A wrong belief costs a
    /// conflict (`VersionConflict`, `AlreadyExists`) and a reload.
    pub(crate) async fn write(
        &self,
        task_id: &str,
        owner: Option<&str>,
        known: Known,
        changes: &[Change],
    ) -> Result<VersionedRecord, TaskError> {
        validate::task_id("task_id", task_id)?;
        self.cas(task_id, known, |current| {
            decide(task_id, owner, current, changes)
        })
        .await
    }

    /// The compare-and-swap loop: `plan` gets the current record (or `None`)
    /// and returns what to write; on a conflict the record is loaded again
    /// and `plan` asked again, up to [`MAX_CAS_ATTEMPTS`] times.
    pub(crate) async fn cas(
        &self,
        task_id: &str,
        mut known: Known,
        mut plan: impl FnMut(Option<&TaskRecord>) -> Result<Plan, TaskError>,
    ) -> Result<VersionedRecord, TaskError> {
        let mut last_conflict = None;
        for _ in 0..MAX_CAS_ATTEMPTS {
            let current = match std::mem::replace(&mut known, Known::Unknown) {
                Known::Cached(c) => Some(*c),
                Known::Absent => None,
                Known::Unknown => self.load_versioned(task_id).await?,
            };
            let decided = plan(current.as_ref().map(|c| &c.record))?;
            let result = match self.prepare(task_id, current.as_ref(), decided)? {
                Prepared::Unchanged(current) => return Ok(current),
                Prepared::Create { thread, record } => {
                    self.store.create(thread).await.map(|c| VersionedRecord {
                        record,
                        version: c.version,
                    })
                }
                Prepared::Append { request, record } => self
                    .store
                    .append(&request.id, request.changes, request.precondition)
                    .await
                    .map(|c| VersionedRecord {
                        record,
                        version: c.version,
                    }),
            };
            match result {
                Ok(written) => return Ok(written),
                Err(e) if needs_reload(&e) => last_conflict = Some(e),
                Err(e) => return Err(e.into()),
            }
        }
        Err(last_conflict.map_or_else(|| TaskError::unknown(task_id), TaskError::Store))
    }

    /// Turns a plan decided on `current` (the record as believed stored)
    /// into the write that makes it so: a create when there is no record, an
    /// append with `Exact(version)` when there is, or nothing. The store's
    /// finished mark follows [`TaskRecord::is_closed`].
    ///
    /// # Errors
    ///
    /// `UnknownTask` when there is no record and the plan makes none;
    /// `Corrupt` when the record cannot be encoded.
    pub(crate) fn prepare(
        &self,
        task_id: &str,
        current: Option<&VersionedRecord>,
        plan: Plan,
    ) -> Result<Prepared, TaskError> {
        match (current, plan.record) {
            (None, None) => Err(TaskError::unknown(task_id)),
            (None, Some(record)) => {
                let thread = Thread {
                    terminal: record.is_closed(),
                    messages: plan.messages,
                    ..Thread::new(Self::thread_id(task_id), TASK_KIND)
                        .with_parent(record.owner_thread_id.clone())
                        .with_state(encode(&record)?)
                };
                Ok(Prepared::Create { thread, record })
            }
            (Some(cur), None) if plan.messages.is_empty() => Ok(Prepared::Unchanged(cur.clone())),
            (Some(cur), record) => {
                let changes = ChangeSet {
                    terminal: record
                        .as_ref()
                        .filter(|r| r.is_closed() != cur.record.is_closed())
                        .map(TaskRecord::is_closed),
                    state: record.as_ref().map(encode).transpose()?,
                    messages: plan.messages,
                };
                Ok(Prepared::Append {
                    request: AppendRequest {
                        id: Self::thread_id(task_id),
                        changes,
                        precondition: VersionPrecondition::Exact(cur.version),
                    },
                    record: record.unwrap_or_else(|| cur.record.clone()),
                })
            }
        }
    }

    /// Reads a page of task `task_id`'s output from its durable log: the
    /// outputs whose log position is after `after`, at most `limit` (clamped
    /// as the store clamps pages).
    ///
    /// # Errors
    ///
    /// `UnknownTask` when there is no record; `Store` when the store fails.
    pub(crate) async fn read_output(
        &self,
        task_id: &str,
        after: u64,
        limit: usize,
    ) -> Result<OutputPage, TaskError> {
        let limit = task_store::effective_limit(limit);
        let thread = Self::thread_id(task_id);
        let mut entries = Vec::new();
        let mut cursor = after;
        loop {
            let query = MessageQuery {
                after: cursor,
                limit: task_store::MAX_PAGE_LIMIT,
            };
            let page = match self.store.load_messages(&thread, query).await {
                Ok(page) => page,
                Err(ThreadStoreError::NotFound { .. }) => return Err(TaskError::unknown(task_id)),
                Err(e) => return Err(e.into()),
            };
            for message in &page.messages {
                if let Some(entry) = OutputEntry::decode(message) {
                    entries.push(entry);
                    if entries.len() == limit {
                        return Ok(OutputPage {
                            next: message.seq,
                            entries,
                        });
                    }
                }
                cursor = message.seq;
            }
            if page.next.is_none() {
                return Ok(OutputPage {
                    next: cursor,
                    entries,
                });
            }
        }
    }
}

/// One output a task emitted, as read back by
/// [`BackgroundTaskManager::output`](crate::BackgroundTaskManager::output).
#[derive(Debug, Clone, PartialEq)]
pub struct OutputEntry {
    /// The attempt that emitted it.
    pub attempt: u32,
    /// Its number within that attempt, from 1.
    pub seq: u64,
    /// What the task emitted.
    pub value: Value,
    /// Its position: pass it as `after` to read what follows. With a task
    /// store, the position in the task's durable log; without one, the
    /// output's number within the task's history in this process.
    pub cursor: u64,
}

/// A page of a task's output.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputPage {
    /// The outputs, in the order they were emitted.
    pub entries: Vec<OutputEntry>,
    /// The cursor to read what follows (the position of the last entry, or
    /// of the last log message read when the page holds fewer than asked).
    pub next: u64,
}

#[derive(Deserialize)]
struct OutputBody {
    attempt: u32,
    seq: u64,
    value: Value,
}

impl OutputEntry {
    /// An output message of a task's log; `None` for a transition.
    fn decode(message: &Message) -> Option<Self> {
        if message.body.get("type").and_then(Value::as_str) != Some("output") {
            return None;
        }
        let body: OutputBody = serde_json::from_value(message.body.clone()).ok()?;
        Some(Self {
            attempt: body.attempt,
            seq: body.seq,
            value: body.value,
            cursor: message.seq,
        })
    }
}

/// Reads a task thread's head as a record.
pub(crate) fn decode(task_id: &str, head: ThreadHead) -> Result<VersionedRecord, TaskError> {
    if head.kind != TASK_KIND {
        return Err(TaskError::Corrupt {
            task_id: task_id.to_owned(),
            reason: format!("thread kind is {:?}, not \"task\"", head.kind),
        });
    }
    let record =
        serde_json::from_value::<TaskRecord>(head.state).map_err(|e| TaskError::Corrupt {
            task_id: task_id.to_owned(),
            reason: e.to_string(),
        })?;
    Ok(VersionedRecord {
        record,
        version: head.version,
    })
}

/// The audit message of a transition that produced `record`.
pub(crate) fn audit_message(transition: &Transition, record: &TaskRecord) -> NewMessage {
    let name = transition.name();
    let id = match transition {
        // Lease renewals repeat; they are not de-duplicated by name.
        Transition::SetLease { at_ms, .. } => format!("a{}:lease:{at_ms}", record.attempt),
        Transition::Checkpoint { seq, .. } => format!("a{}:checkpoint:{seq}", record.attempt),
        _ => format!("a{}:{name}", record.attempt),
    };
    // Built directly rather than with `json!`, which serializes each value
    // through serde: this runs for every transition the writer persists.
    let mut body = serde_json::Map::new();
    body.insert("type".to_owned(), Value::from("transition"));
    body.insert("transition".to_owned(), Value::from(name));
    body.insert("status".to_owned(), Value::from(record.status.as_str()));
    body.insert("attempt".to_owned(), Value::from(record.attempt));
    body.insert("at_ms".to_owned(), Value::from(record.updated_at_ms));
    // Who runs an attempt that starts (or resumes), and why one failed: the
    // log tells an attempt's story on its own.
    if let (Transition::Start { .. } | Transition::Resume { .. }, Some(lease)) =
        (transition, &record.lease)
    {
        body.insert("by".to_owned(), Value::from(lease.holder.as_str()));
    }
    if let (Transition::Finish { .. }, Some(error)) = (transition, &record.error) {
        body.insert("error".to_owned(), Value::from(error.as_str()));
    }
    NewMessage::with_id(id, Value::Object(body))
}

/// The message that records output a task emitted.
pub(crate) fn output_message(attempt: u32, seq: u64, value: &Value) -> NewMessage {
    let mut body = serde_json::Map::new();
    body.insert("type".to_owned(), Value::from("output"));
    body.insert("attempt".to_owned(), Value::from(attempt));
    body.insert("seq".to_owned(), Value::from(seq));
    body.insert("value".to_owned(), value.clone());
    NewMessage::with_id(format!("a{attempt}:out:{seq}"), Value::Object(body))
}

pub(crate) fn encode(record: &TaskRecord) -> Result<Value, TaskError> {
    serde_json::to_value(record).map_err(|e| TaskError::Corrupt {
        task_id: record.task_id.clone(),
        reason: format!("cannot encode the record: {e}"),
    })
}
