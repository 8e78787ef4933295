//! [`TaskStore`]: tasks kept durably in any [`ThreadStore`].
//!
//! Task `T` lives in thread `task:T` of kind `"task"` whose parent is the
//! task's owner, so the store's parent index lists an owner's tasks. The
//! thread's state is the [`TaskRecord`]; its message log is the audit trail
//! (one message per transition, with an id `a<attempt>:<transition>` so a
//! retried write is de-duplicated) and the output the task emitted.
//!
//! Every change is load, [`apply`](crate::state::apply), append with
//! `Exact(version)`; on a version conflict it reloads and decides again.

use std::sync::Arc;

use serde_json::{Value, json};
use task_store::{
    AppendRequest, ChangeSet, NewMessage, Thread, ThreadQuery, ThreadReaderExt, ThreadStore,
    ThreadStoreError, VersionPrecondition,
};

use crate::model::{now_ms, type_supports_resume, validate_task_id, validate_task_input};
use crate::state::{Outcome, TaskRecord, Transition, apply};
use crate::{NewTaskSpec, TaskError, TaskId};

/// The thread kind of task records.
pub const TASK_KIND: &str = "task";

/// How many times a write is re-decided after version conflicts before the
/// conflict is reported.
const MAX_CAS_ATTEMPTS: usize = 64;

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

/// What a caller of `cas` believes is stored.
#[derive(Debug)]
pub(crate) enum Known {
    /// Nothing known: load first.
    Unknown,
    /// Probably no record yet.
    Absent,
    /// The record and version last written.
    Cached(Box<VersionedRecord>),
}

/// What one compare-and-swap round decided to write.
#[derive(Debug)]
pub(crate) struct Plan {
    /// The record after the change; `None` to write nothing but messages.
    pub(crate) record: Option<TaskRecord>,
    /// Messages to append in the same write.
    pub(crate) messages: Vec<NewMessage>,
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
        format!("task:{task_id}")
    }

    /// Creates the record of a task that is about to run (status `running`,
    /// attempt 1). A manager that later spawns this id adopts the record.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a bad id or oversized metadata;
    /// `Store(AlreadyExists)` when a record with this id exists.
    pub async fn create_task(&self, spec: NewTaskSpec) -> Result<TaskRecord, TaskError> {
        validate_task_input(
            &spec.task_id,
            &spec.owner_thread_id,
            &spec.task_type,
            &spec.description,
            spec.parent_task_id.as_deref(),
            &spec.metadata,
        )?;
        let supports_resume = spec.supports_resume || type_supports_resume(&spec.task_type);
        let record = TaskRecord::running(
            NewTaskSpec {
                supports_resume,
                ..spec
            },
            now_ms(),
        );
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
        validate_task_id(task_id)?;
        let Some(head) = self.store.load(&Self::thread_id(task_id)).await? else {
            return Ok(None);
        };
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
        Ok(Some(VersionedRecord {
            record,
            version: head.version,
        }))
    }

    /// The ids of every task record of `owner`, from the store's parent index.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a bad owner; `Store` when the store fails.
    pub async fn list_task_ids(&self, owner: &str) -> Result<Vec<TaskId>, TaskError> {
        crate::model::validate_owner(owner)?;
        let ids = self
            .store
            .list_all_threads(ThreadQuery::by_parent(owner).with_kind(TASK_KIND))
            .await?;
        Ok(ids
            .into_iter()
            .filter_map(|id| id.strip_prefix("task:").map(str::to_owned))
            .collect())
    }

    /// Loads every task record of `owner`. A record that cannot be read is
    /// reported as its own error and does not hide the others.
    ///
    /// # Errors
    ///
    /// The outer error when the owner's index cannot be listed.
    pub async fn list_tasks(
        &self,
        owner: &str,
    ) -> Result<Vec<Result<TaskRecord, TaskError>>, TaskError> {
        let mut out = Vec::new();
        for id in self.list_task_ids(owner).await? {
            match self.load_task(&id).await {
                Ok(Some(record)) if record.owner_thread_id == owner => out.push(Ok(record)),
                Ok(_) => {}
                Err(e) => out.push(Err(e)),
            }
        }
        Ok(out)
    }

    /// Deletes task `task_id`'s record and log. Idempotent.
    ///
    /// # Errors
    ///
    /// `Store` when the store fails.
    pub async fn delete_task(&self, task_id: &str) -> Result<(), TaskError> {
        validate_task_id(task_id)?;
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
        validate_task_id(task_id)?;
        self.cas(task_id, Known::Unknown, |current| {
            if current.is_none() && !matches!(transition, Transition::Start { .. }) {
                return Err(TaskError::unknown(task_id));
            }
            match apply(current, &transition) {
                Outcome::Applied(next) => Ok(Plan {
                    messages: vec![audit_message(&transition, &next)],
                    record: Some(next),
                }),
                Outcome::AlreadyApplied => Ok(Plan {
                    record: None,
                    messages: Vec::new(),
                }),
                Outcome::Rejected(reason) => Err(TaskError::Rejected {
                    task_id: task_id.to_owned(),
                    reason,
                }),
            }
        })
        .await
    }

    /// The compare-and-swap loop every durable change goes through.
    ///
    /// `decide` gets the current record (or `None`) and returns what to write.
    /// `known` is what the caller believes is stored, to skip the first load:
    /// the record and version it last wrote, or that there is no record yet
    /// (a first start: the create then needs no read). A wrong belief costs a
    /// conflict (`VersionConflict`, `AlreadyExists`) and a reload.
    pub(crate) async fn cas(
        &self,
        task_id: &str,
        mut known: Known,
        mut decide: impl FnMut(Option<&TaskRecord>) -> Result<Plan, TaskError>,
    ) -> Result<VersionedRecord, TaskError> {
        let mut last_conflict = None;
        for _ in 0..MAX_CAS_ATTEMPTS {
            let current = match std::mem::replace(&mut known, Known::Unknown) {
                Known::Cached(c) => Some(*c),
                Known::Absent => None,
                Known::Unknown => self.load_versioned(task_id).await?,
            };
            let plan = decide(current.as_ref().map(|c| &c.record))?;
            let result = match self.prepare(task_id, current.as_ref(), plan)? {
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
                Err(e) if is_conflict(&e) => last_conflict = Some(e),
                Err(e) => return Err(e.into()),
            }
        }
        Err(last_conflict.map_or_else(|| TaskError::unknown(task_id), TaskError::Store))
    }

    /// Turns a plan decided on `current` (the record as believed stored)
    /// into the write that makes it so: a create when there is no record, an
    /// append with `Exact(version)` when there is, or nothing.
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
                    terminal: record.status.is_terminal(),
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
                        .filter(|r| r.status != cur.record.status)
                        .map(|r| r.status.is_terminal()),
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
}

/// A write decided by [`TaskStore::prepare`], ready to send.
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
pub(crate) fn is_conflict(error: &ThreadStoreError) -> bool {
    matches!(
        error,
        ThreadStoreError::VersionConflict { .. }
            | ThreadStoreError::AlreadyExists { .. }
            | ThreadStoreError::NotFound { .. }
    )
}

/// The audit message of a transition that produced `record`.
pub(crate) fn audit_message(transition: &Transition, record: &TaskRecord) -> NewMessage {
    let name = transition.name();
    let id = match transition {
        // Lease renewals repeat; they are not de-duplicated by name.
        Transition::SetLease { at_ms, .. } => format!("a{}:lease:{at_ms}", record.attempt),
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
    NewMessage::with_id(id, Value::Object(body))
}

/// The message that records output a task emitted.
pub(crate) fn output_message(attempt: u32, seq: u64, value: Value) -> NewMessage {
    NewMessage::with_id(
        format!("a{attempt}:out:{seq}"),
        json!({ "type": "output", "attempt": attempt, "seq": seq, "value": value }),
    )
}

fn encode(record: &TaskRecord) -> Result<Value, TaskError> {
    serde_json::to_value(record).map_err(|e| TaskError::Corrupt {
        task_id: record.task_id.clone(),
        reason: format!("cannot encode the record: {e}"),
    })
}
