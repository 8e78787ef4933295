//! How a task's epoch starts: admitted, registered, its durable start
//! queued, its future spawned.

use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use serde_json::Value;
use tokio::sync::Notify;

use super::Core;
use super::context::{TaskContext, TaskHost};
use super::registry::{Entry, TaskSlot};
use super::supervise::run_task;
use crate::manager::clock::duration_ms;
use crate::manager::outbox::{Job, Permit};
use crate::records::{Change, Known, VersionedRecord};
use crate::state::{Lease, TaskRecord, Transition};
use crate::{
    NewTaskSpec, RunCancellationToken, TaskError, TaskEventKind, TaskId, TaskResult, TaskStatus,
    new_task_id,
};

/// Where a task's durable record stands when it launches.
#[derive(Debug)]
pub(crate) enum Durable {
    /// No store, or the durable transition is already written (a resume).
    Nothing,
    /// Write the start; nothing is known of the record (or it is absent).
    Start(Known),
}

/// One epoch of a task about to start.
#[derive(Debug)]
pub(crate) struct Launch {
    pub(crate) task_id: TaskId,
    pub(crate) owner: String,
    pub(crate) task_type: String,
    pub(crate) description: String,
    pub(crate) parent_task_id: Option<TaskId>,
    pub(crate) metadata: Value,
    pub(crate) supports_resume: bool,
    /// The attempt, when the caller knows it (from the store or a resume);
    /// otherwise the next one after the registry's, or 1.
    pub(crate) attempt: Option<u32>,
    /// The run id of this start, when the caller made one (a resume).
    pub(crate) run_id: Option<String>,
    pub(crate) durable: Durable,
    /// When it starts, by the manager's clock.
    pub(crate) now_ms: u64,
    /// Admitted before the manager closed (a resume in flight): launched
    /// even if `shutdown` has begun.
    pub(crate) admitted: bool,
}

/// Holds a launch admitted before `shutdown`: shutdown waits for it.
#[derive(Debug)]
pub(crate) struct Admission {
    core: Arc<Core>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.core.lock().launching -= 1;
        self.core.launched.notify_waiters();
    }
}

impl Core {
    // -------------------------------------------------------------------
    // Starting
    // -------------------------------------------------------------------

    /// Admits a launch that will happen after an await (a resume's durable
    /// transition): refused once the manager is closed; `shutdown` waits
    /// for admitted launches before it interrupts what runs.
    pub(crate) fn admit(self: &Arc<Self>) -> Result<Admission, TaskError> {
        let mut reg = self.lock();
        if reg.closed {
            return Err(TaskError::ShuttingDown);
        }
        reg.launching += 1;
        Ok(Admission {
            core: Arc::clone(self),
        })
    }

    /// Room in the outbox for a spawn (waits or refuses when it is full).
    pub(crate) async fn admit_write(&self) -> Result<Option<Permit>, TaskError> {
        match &self.outbox {
            Some(outbox) => outbox.admit().await.map(Some),
            None => Ok(None),
        }
    }

    /// Registers and starts one epoch of a task. `token` is the caller's; a
    /// task without one gets its token when something asks for it.
    pub(crate) fn launch<F, Fut>(
        self: &Arc<Self>,
        launch: Launch,
        token: Option<RunCancellationToken>,
        mut permit: Option<Permit>,
        f: F,
    ) -> Result<TaskId, TaskError>
    where
        F: FnOnce(TaskContext) -> Fut + Send + 'static,
        Fut: Future<Output = TaskResult> + Send + 'static,
    {
        let Launch {
            task_id,
            owner,
            task_type,
            description,
            parent_task_id,
            metadata,
            supports_resume,
            attempt,
            run_id,
            durable,
            now_ms,
            admitted,
        } = launch;
        let writes = matches!(durable, Durable::Start(_)) && self.outbox.is_some();
        let run_id = run_id.or_else(|| writes.then(new_task_id));
        let mut reg = self.lock();
        if reg.closed && !admitted {
            return Err(TaskError::ShuttingDown);
        }
        let (attempt, pending_writes, known): (u32, u32, Option<Known>) = match reg.get(&task_id) {
            Some(old) => {
                if old.owner() != owner {
                    return Err(TaskError::IdTaken { task_id });
                }
                let old_entry = old.lock();
                if old_entry.status == TaskStatus::Running {
                    return Err(TaskError::AlreadyRunning { task_id });
                }
                // The registry is the newest view: what the caller read
                // before this lock may be older than this epoch.
                let attempt = attempt.unwrap_or(0).max(old.attempt + 1);
                let pending = old_entry.pending_writes;
                drop(old_entry);
                // The earlier epoch gives way to this one. What the outbox
                // knows of the record from that epoch stays valid.
                reg.remove(&task_id);
                (attempt, pending, None)
            }
            None => {
                let known = match durable {
                    Durable::Start(known) => Some(known),
                    Durable::Nothing => None,
                };
                (attempt.unwrap_or(1), 0, known)
            }
        };
        let seq = reg.next_seq;
        reg.next_seq += 1;
        let owner_shared = reg.owner(&owner);
        let start = writes.then(|| {
            Box::new(TaskRecord {
                attempt,
                lease: Some(Lease {
                    holder: self.lease.holder.clone(),
                    expires_at_ms: now_ms.saturating_add(duration_ms(self.lease.ttl)),
                }),
                run_id: run_id.clone(),
                ..TaskRecord::running(
                    NewTaskSpec {
                        task_id: task_id.clone(),
                        owner_thread_id: owner.clone(),
                        task_type: task_type.clone(),
                        description: description.clone(),
                        parent_task_id: parent_task_id.clone(),
                        supports_resume,
                        metadata: metadata.clone(),
                    },
                    now_ms,
                )
            })
        });
        let slot = Arc::new(TaskSlot {
            task_id: task_id.clone(),
            owner: owner_shared,
            task_type: reg.task_type(&task_type),
            description,
            parent_task_id,
            metadata: (!metadata.is_null()).then(|| Box::new(metadata)),
            created_at_ms: now_ms,
            supports_resume,
            attempt,
            run_id: run_id.map(String::into_boxed_str),
            seq,
            finished: Notify::new(),
            state: Mutex::new(Entry::running(
                token.clone(),
                pending_writes + u32::from(start.is_some()),
            )),
        });
        self.emit(&slot, TaskEventKind::Spawned);
        if let (Some(outbox), Some(start)) = (&self.outbox, start) {
            // Queued before the task can run, so before its finish.
            outbox.enqueue(
                Job {
                    task_id: task_id.clone(),
                    owner: Arc::clone(&slot.owner.name),
                    epoch: seq,
                    change: Change::Transition(Transition::Start { record: start }),
                    known,
                },
                permit.as_mut(),
            );
        }
        reg.insert(Arc::clone(&slot));
        drop(reg);

        let host: Weak<dyn TaskHost> = self.myself.clone();
        let ctx = TaskContext {
            slot: Arc::clone(&slot),
            host,
            token: token.clone().map_or_else(OnceLock::new, OnceLock::from),
        };
        let handle = tokio::spawn(run_task(
            self.myself.clone(),
            Arc::clone(&slot),
            token,
            f,
            ctx,
        ));
        let mut entry = slot.lock();
        if entry.status == TaskStatus::Running {
            entry.abort = Some(handle.abort_handle());
        }
        Ok(task_id)
    }
}

/// Builds the durable start of a spawn from what the store holds for the
/// id: `Ok((attempt, known))` to launch, or the error the caller gets.
pub(crate) fn plan_from_record(
    owner: &str,
    task_id: &str,
    holder: &str,
    found: Option<VersionedRecord>,
) -> Result<(u32, Known), TaskError> {
    let Some(found) = found else {
        return Ok((1, Known::Absent));
    };
    let record = &found.record;
    if record.owner_thread_id != owner {
        return Err(TaskError::IdTaken {
            task_id: task_id.to_owned(),
        });
    }
    if record.status == TaskStatus::Running {
        let elsewhere = record.lease.as_ref().is_some_and(|l| l.holder != holder);
        if elsewhere {
            return Err(TaskError::AlreadyRunning {
                task_id: task_id.to_owned(),
            });
        }
        // Created ahead, or held by an earlier life of this instance: adopt.
        let attempt = record.attempt;
        return Ok((attempt, Known::Cached(Box::new(found))));
    }
    let attempt = record.attempt + 1;
    Ok((attempt, Known::Cached(Box::new(found))))
}
