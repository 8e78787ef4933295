//! How a task's epoch starts: admitted, registered, its durable start
//! queued, its future spawned.

use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use tokio::sync::Notify;

use super::Core;
use super::supervise::run_task;
use super::task::{Entry, SlotPolicy, TaskSlot, Work};
use super::task::{TaskContext, TaskHost};
use crate::WhenLimited;
use crate::manager::clock::duration_ms;
use crate::manager::outbox::Permit;
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
    /// The metadata as JSON text (see [`TaskSlot::metadata`]).
    pub(crate) metadata: Option<Box<str>>,
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
    /// Its timeout, retry policy and work to run again, if any.
    pub(crate) policy: Option<Box<SlotPolicy>>,
    /// What to do when a concurrency limit is reached.
    pub(crate) when_limited: WhenLimited,
    /// A retry replacing its own queued epoch (the only case where a queued
    /// task of the id gives way).
    pub(crate) retry_of: Option<u64>,
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
    /// task without one gets its token when something asks for it. A task
    /// beyond a concurrency limit is registered `queued` and `f` waits,
    /// boxed, until it starts.
    pub(crate) fn launch<F, Fut>(
        self: &Arc<Self>,
        launch: Launch,
        token: Option<RunCancellationToken>,
        permit: Option<Permit>,
        f: F,
    ) -> Result<TaskId, TaskError>
    where
        F: FnOnce(TaskContext) -> Fut + Send + 'static,
        Fut: Future<Output = TaskResult> + Send + 'static,
    {
        let mut f = Some(f);
        let slot = self.register(launch, token.clone(), permit, &mut || {
            Work::once(f.take().expect("the work is taken once"))
        })?;
        let task_id = slot.task_id.clone();
        if let Some(f) = f.take()
            && slot.lock().status == TaskStatus::Running
        {
            self.spawn_run(slot, token, f);
        }
        Ok(task_id)
    }

    /// [`launch`](Self::launch) of boxed work (a handler, a retry, a
    /// resume of work that can run again).
    pub(crate) fn launch_work(
        self: &Arc<Self>,
        launch: Launch,
        token: Option<RunCancellationToken>,
        permit: Option<Permit>,
        work: Work,
    ) -> Result<TaskId, TaskError> {
        let mut work = Some(work);
        let slot = self.register(launch, token.clone(), permit, &mut || {
            work.take().expect("the work is taken once")
        })?;
        let task_id = slot.task_id.clone();
        if let Some(work) = work.take()
            && slot.lock().status == TaskStatus::Running
        {
            self.spawn_run(slot, token, move |ctx| work.run(ctx));
        }
        Ok(task_id)
    }

    /// Registers one epoch of a task: running (its durable start queued)
    /// or, beyond a limit, queued with the work `queued` makes.
    fn register(
        self: &Arc<Self>,
        launch: Launch,
        token: Option<RunCancellationToken>,
        mut permit: Option<Permit>,
        queued: &mut dyn FnMut() -> Work,
    ) -> Result<Arc<TaskSlot>, TaskError> {
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
            policy,
            when_limited,
            retry_of,
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
                let busy = match old_entry.status {
                    TaskStatus::Running => true,
                    // Waiting for a limit or for its retry: taken, unless
                    // this is that retry.
                    TaskStatus::Queued => retry_of != Some(old.seq),
                    _ => false,
                };
                if busy {
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
        let runs_now = !self.limits.is_active() || reg.may_start(&self.limits, &owner, &task_type);
        if !runs_now && when_limited == WhenLimited::Refuse {
            return Err(TaskError::Limited {
                task_id,
                reason: self.limit_reason(&owner, &task_type),
            });
        }
        let seq = reg.next_seq;
        reg.next_seq += 1;
        let slot = Arc::new(TaskSlot {
            task_id: task_id.clone(),
            owner: reg.owner(&owner),
            task_type: reg.task_type(&task_type),
            description,
            parent_task_id,
            metadata,
            created_at_ms: now_ms,
            supports_resume,
            attempt,
            run_id: run_id.map(String::into_boxed_str),
            seq,
            policy,
            finished: Notify::new(),
            state: Mutex::new(Entry::running(token, pending_writes)),
        });
        if runs_now {
            reg.count_type_start(&self.limits, &slot.task_type);
            self.emit(&slot, TaskEventKind::Spawned);
            if writes {
                let mut entry = slot.lock();
                // Queued before the task can run, so before its finish.
                self.queue_start(&slot, &mut entry, known, permit.as_mut(), now_ms);
            }
        } else {
            {
                let mut entry = slot.lock();
                entry.status = TaskStatus::Queued;
                entry.extra().work = Some(queued());
            }
            reg.limited.queue.push_back(Arc::clone(&slot));
            self.emit(&slot, TaskEventKind::Queued);
        }
        reg.insert(Arc::clone(&slot));
        Ok(slot)
    }

    /// Queues the durable start of an epoch that starts running now.
    fn queue_start(
        &self,
        slot: &TaskSlot,
        entry: &mut Entry,
        known: Option<Known>,
        permit: Option<&mut Permit>,
        now_ms: u64,
    ) {
        if self.outbox.is_none() {
            return;
        }
        let record = Box::new(TaskRecord {
            attempt: slot.attempt,
            lease: Some(Lease {
                holder: self.lease.holder.clone(),
                expires_at_ms: now_ms.saturating_add(duration_ms(self.lease.ttl)),
            }),
            run_id: slot.run_id.as_deref().map(str::to_owned),
            checkpoint: slot
                .policy
                .as_ref()
                .and_then(|p| p.previous_checkpoint.clone()),
            ..TaskRecord::running(
                NewTaskSpec {
                    task_id: slot.task_id.clone(),
                    owner_thread_id: slot.owner().to_owned(),
                    task_type: slot.task_type.to_string(),
                    description: slot.description.clone(),
                    parent_task_id: slot.parent_task_id.clone(),
                    supports_resume: slot.supports_resume,
                    metadata: slot.metadata_value(),
                },
                now_ms,
            )
        });
        let start = Change::Transition(Transition::Start { record });
        self.queue_change(slot, entry, start, known, permit);
    }

    /// Runs a registered, running epoch in its own tokio task.
    fn spawn_run<F, Fut>(
        self: &Arc<Self>,
        slot: Arc<TaskSlot>,
        token: Option<RunCancellationToken>,
        f: F,
    ) where
        F: FnOnce(TaskContext) -> Fut + Send + 'static,
        Fut: Future<Output = TaskResult> + Send + 'static,
    {
        let host: Weak<dyn TaskHost> = self.myself.clone();
        let ctx = TaskContext {
            slot: Arc::clone(&slot),
            host,
            token: token.clone().map_or_else(OnceLock::new, OnceLock::from),
            metadata: OnceLock::new(),
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
    }

    /// Starts the queued tasks the limits allow now (after a task stopped
    /// running, or a queued one was cancelled), in the order they came.
    pub(crate) fn start_queued(self: &Arc<Self>) {
        if !self.limits.is_active() {
            return;
        }
        let started = self.lock().take_startable(&self.limits);
        for slot in started {
            let now_ms = self.clock.now_ms();
            let (work, token) = {
                let mut entry = slot.lock();
                self.emit(&slot, TaskEventKind::Spawned);
                self.queue_start(&slot, &mut entry, Some(Known::Unknown), None, now_ms);
                let work = entry.extra.as_mut().and_then(|e| e.work.take());
                (work, entry.token.clone())
            };
            match work {
                Some(work) => self.spawn_run(slot, token, move |ctx| work.run(ctx)),
                None => {
                    tracing::error!(task_id = %slot.task_id, "a queued task had no work to run")
                }
            }
        }
    }

    /// Why a task of `owner` and `task_type` may not start now.
    fn limit_reason(&self, owner: &str, task_type: &str) -> String {
        match (self.limits.per_owner, self.limits.per_type.get(task_type)) {
            (_, Some(max)) => {
                format!("{max} tasks of type {task_type:?} are running (its concurrency limit)")
            }
            (Some(max), None) => {
                format!("{max} tasks of owner {owner:?} are running (the owner concurrency limit)")
            }
            (None, None) => "a concurrency limit is reached".to_owned(),
        }
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
