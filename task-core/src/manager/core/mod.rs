//! The local core of a manager: the registry, supervision and the outbox.
//! Everything one process needs, and nothing about other processes: the
//! cross-process layer (`manager::distributed`) builds on the calls here.
//!
//! The core's transitions of a task (start, cancel request, output,
//! progress, finish) happen under that task's slot lock, which also orders
//! the outbox jobs they queue; the registry lock is only taken to add,
//! find and remove tasks.

pub(crate) mod context;
pub(crate) mod registry;
pub(crate) mod supervise;

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{Notify, broadcast};
use tokio::time::Instant;

use self::context::{TaskContext, TaskHost};
use self::registry::{Entry, ManagerStats, Registry, TaskSlot, is_collectable};
use self::supervise::{Ended, Reaper, reap, run_task};
use super::background::Background;
use super::builder::{Config, LeaseConfig, RetentionPolicy};
use super::clock::{Clock, duration_ms};
use super::outbox::{Job, Outbox, Permit, WriteOutcome, WriteReport, WriteReports};
use crate::records::{Change, Known, VersionedRecord};
use crate::state::{Lease, TaskRecord, Transition};
use crate::{
    NewTaskSpec, Progress, RunCancellationToken, TaskError, TaskEvent, TaskEventKind, TaskId,
    TaskResult, TaskStatus, TaskSummary, new_task_id, validate,
};

/// Outputs kept per task for `output` when there is no task store.
pub(crate) const OUTPUTS_KEPT: usize = 1024;

/// A callback told of every task whose durable record a write closed.
pub(crate) struct CloseHook(Box<dyn Fn(&str) + Send + Sync>);

impl CloseHook {
    pub(crate) fn new(hook: impl Fn(&str) + Send + Sync + 'static) -> Self {
        Self(Box::new(hook))
    }
}

impl std::fmt::Debug for CloseHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CloseHook")
    }
}

/// The lease a start record carries: who runs the task, for how long unless
/// renewed. Stamped by the core, renewed (or not) by the cross-process layer.
#[derive(Debug, Clone)]
pub(crate) struct LeaseStamp {
    pub(crate) holder: String,
    pub(crate) ttl: Duration,
}

/// The local core.
#[derive(Debug)]
pub(crate) struct Core {
    registry: Mutex<Registry>,
    events: broadcast::Sender<TaskEvent>,
    /// Whether `subscribe` was ever called.
    subscribed: AtomicBool,
    cancel_grace: Duration,
    retention: RetentionPolicy,
    max_result_bytes: Option<usize>,
    resumable_types: HashSet<String>,
    warn_after: Duration,
    pub(crate) outbox: Option<Outbox>,
    pub(crate) lease: LeaseStamp,
    pub(crate) leases: LeaseConfig,
    /// Told of every task whose durable record a write just closed (the
    /// cross-process layer wakes remote waiters with it).
    pub(crate) on_durable_close: OnceLock<CloseHook>,
    pub(crate) clock: Clock,
    pub(crate) reaper: Reaper,
    pub(crate) background: Background,
    /// Woken whenever an admitted launch completes (for `shutdown`).
    launched: Notify,
    myself: Weak<Core>,
}

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

/// The outcome of a task interrupted by `shutdown` or by the loss of its
/// process: `stopped` when it can be resumed, else `failed`.
pub(crate) fn interrupted(
    supports_resume: bool,
    why: &str,
) -> (TaskStatus, Option<Value>, Option<String>) {
    if supports_resume {
        (TaskStatus::Stopped, None, None)
    } else {
        (
            TaskStatus::Failed,
            None,
            Some(format!("interrupted: {why}")),
        )
    }
}

impl Core {
    pub(crate) fn new(config: &Config) -> Arc<Self> {
        let (events, _) = broadcast::channel(config.event_capacity);
        Arc::new_cyclic(|myself: &Weak<Core>| {
            let reports: Weak<dyn WriteReports> = myself.clone();
            Core {
                registry: Mutex::new(Registry::default()),
                events,
                subscribed: AtomicBool::new(false),
                cancel_grace: config.cancel_grace,
                retention: config.retention,
                max_result_bytes: config.max_result_bytes,
                resumable_types: config.resumable_types.clone(),
                warn_after: config.outbox.warn_after,
                outbox: config
                    .task_store
                    .clone()
                    .map(|store| Outbox::new(store, config.outbox, reports)),
                lease: LeaseStamp {
                    holder: config.instance_id.clone(),
                    ttl: config.leases.ttl,
                },
                leases: config.leases,
                on_durable_close: OnceLock::new(),
                clock: Clock::new(),
                reaper: Reaper::default(),
                background: Background::default(),
                launched: Notify::new(),
                myself: myself.clone(),
            }
        })
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Registry> {
        // The registry is consistent at every unlock: no code panics while
        // holding it half-changed, so a poisoned lock is still usable.
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether tasks of this type support resume by default.
    pub(crate) fn type_supports_resume(&self, task_type: &str) -> bool {
        self.resumable_types.contains(task_type)
    }

    // -------------------------------------------------------------------
    // Events
    // -------------------------------------------------------------------

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<TaskEvent> {
        self.subscribed.store(true, Ordering::Release);
        self.events.subscribe()
    }

    /// Sends an event about a task if anybody listens. Called under the
    /// task's lock, so a task's events are sent in the order its changes
    /// happened.
    fn emit(&self, slot: &TaskSlot, kind: TaskEventKind) {
        if self.listened() {
            // A send fails only when every receiver is gone: nobody to tell.
            let _ = self.events.send(TaskEvent {
                owner_thread_id: slot.owner().to_owned(),
                task_id: slot.task_id.clone(),
                attempt: slot.attempt,
                kind,
            });
        }
    }

    /// Whether anybody may be listening to events. Without a subscription
    /// ever made this is one atomic read, not the channel's lock.
    fn listened(&self) -> bool {
        self.subscribed.load(Ordering::Acquire) && self.events.receiver_count() > 0
    }

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

    // -------------------------------------------------------------------
    // Cancelling
    // -------------------------------------------------------------------

    /// Marks a running task's cancellation requested, cancels its token (if
    /// it has one yet; one made later is born cancelled) and starts its
    /// grace.
    pub(crate) fn request_cancel(self: &Arc<Self>, slot: &Arc<TaskSlot>, entry: &mut Entry) {
        if !entry.cancel_requested {
            entry.cancel_requested = true;
            if let Some(token) = &entry.token {
                token.cancel();
            }
            self.emit(slot, TaskEventKind::CancelRequested);
            self.schedule_reap(slot);
        }
    }

    /// Has the reaper drop the task if it still runs a cancel grace from now.
    pub(crate) fn schedule_reap(self: &Arc<Self>, slot: &Arc<TaskSlot>) {
        if self.reaper.push(Instant::now() + self.cancel_grace, slot) {
            let started = self.background.spawn(reap(Arc::downgrade(self)));
            if !started {
                // No runtime, so no timer: the next cancel made inside one
                // starts the reaper, which then drops this task too.
                self.reaper.not_started();
            }
        }
    }

    /// A cancelled task's grace is over: if that epoch still runs, it is
    /// recorded `cancelled`, then aborted.
    pub(crate) fn abandon(self: &Arc<Self>, slot: &Arc<TaskSlot>) {
        let abort = slot.lock().abort.take();
        self.finish(slot, Ended::Abandoned);
        if let Some(abort) = abort {
            abort.abort();
        }
    }

    /// Cancels one of the owner's tasks that runs here.
    ///
    /// `None` when the owner has no such task here.
    pub(crate) fn cancel(
        self: &Arc<Self>,
        owner: &str,
        task_id: &str,
    ) -> Option<Result<(), TaskError>> {
        let slot = self.slot(owner, task_id)?;
        let mut entry = slot.lock();
        if entry.status != TaskStatus::Running {
            return Some(Err(TaskError::NotRunning {
                task_id: task_id.to_owned(),
                status: entry.status,
            }));
        }
        self.request_cancel(&slot, &mut entry);
        Some(Ok(()))
    }

    /// A cancellation requested by another process for the run `run_id`
    /// (attempt `attempt`) of a task this instance runs.
    pub(crate) fn cancel_run(self: &Arc<Self>, task_id: &str, attempt: u32, run_id: Option<&str>) {
        if let Some(slot) = self.lock().get(task_id).cloned() {
            let mut entry = slot.lock();
            let same_run = run_id.is_none_or(|r| slot.run_id.as_deref() == Some(r));
            if entry.status == TaskStatus::Running && slot.attempt == attempt && same_run {
                self.request_cancel(&slot, &mut entry);
            }
        }
    }

    /// The ids of the owner's tasks reachable from `root` here, root first,
    /// and the root's status (`None` when the owner has no such task here).
    pub(crate) fn local_tree(&self, owner: &str, root: &str) -> (Option<TaskStatus>, Vec<TaskId>) {
        let reg = self.lock();
        let status = reg.visible(owner, root).map(|slot| slot.lock().status);
        (status, reg.tree(owner, root))
    }

    /// Requests the cancellation of each of `ids` that the owner runs here;
    /// returns their summaries, in the order given.
    pub(crate) fn cancel_each(self: &Arc<Self>, owner: &str, ids: &[TaskId]) -> Vec<TaskSummary> {
        let reg = self.lock();
        let mut cancelled = Vec::new();
        for id in ids {
            if let Some(slot) = reg.visible(owner, id) {
                let mut entry = slot.lock();
                if entry.status == TaskStatus::Running {
                    self.request_cancel(slot, &mut entry);
                    cancelled.push(slot.summary(&entry));
                }
            }
        }
        cancelled
    }

    // -------------------------------------------------------------------
    // Finishing
    // -------------------------------------------------------------------

    /// Records the end of a task's epoch (its slot). Reports after an outside
    /// status change are ignored; so are those of an older epoch, whose
    /// slot is no longer registered and has already finished.
    pub(crate) fn finish(self: &Arc<Self>, slot: &TaskSlot, ended: Ended) {
        {
            let mut entry = slot.lock();
            if entry.status != TaskStatus::Running {
                return;
            }
            let cancelled = entry.cancel_requested
                || entry
                    .token
                    .as_ref()
                    .is_some_and(RunCancellationToken::is_cancelled);
            let shut_down = "the task manager shut down before the task finished";
            let (status, result, error) = match ended {
                // A shutdown interrupts; what the task finished on its own stands.
                Ended::Returned(TaskResult::Success(v)) if entry.shutting_down => {
                    (TaskStatus::Completed, Some(v), None)
                }
                Ended::Returned(TaskResult::Failed(e)) if entry.shutting_down => {
                    (TaskStatus::Failed, None, Some(e))
                }
                _ if entry.shutting_down => interrupted(slot.supports_resume, shut_down),
                Ended::Abandoned => (
                    TaskStatus::Cancelled,
                    None,
                    Some(format!(
                        "did not stop within the cancel grace of {:?}; dropped",
                        self.cancel_grace
                    )),
                ),
                Ended::Dropped => interrupted(
                    slot.supports_resume,
                    "the tokio runtime running the task shut down before it finished",
                ),
                _ if cancelled => (TaskStatus::Cancelled, None, None),
                Ended::Returned(TaskResult::Success(v)) => match self.check_result(&v) {
                    Ok(()) => (TaskStatus::Completed, Some(v), None),
                    Err(reason) => (TaskStatus::Failed, None, Some(reason)),
                },
                Ended::Returned(TaskResult::Failed(e)) => (TaskStatus::Failed, None, Some(e)),
                Ended::Returned(TaskResult::Cancelled) => (TaskStatus::Cancelled, None, None),
                Ended::Returned(TaskResult::Stopped) => (TaskStatus::Stopped, None, None),
                Ended::Panicked(message) => (
                    TaskStatus::Failed,
                    None,
                    Some(format!("task panicked: {message}")),
                ),
            };
            entry.abort = None;
            self.settle(slot, &mut entry, status, result, error);
            slot.stopped_running();
        }
        self.after_finish(slot);
    }

    /// Whether a task's result may be kept: nested within
    /// [`MAX_JSON_DEPTH`](crate::MAX_JSON_DEPTH), and (with a store) within
    /// the size limit. Otherwise the reason the task fails instead.
    fn check_result(&self, result: &Value) -> Result<(), String> {
        validate::json_depth("the task's result", result).map_err(|e| match e {
            TaskError::InvalidInput { reason } => format!("invalid result: {reason}"),
            other => other.to_string(),
        })?;
        if let (Some(limit), Some(_)) = (self.max_result_bytes, &self.outbox) {
            let size = serde_json::to_vec(result).map_or(usize::MAX, |bytes| bytes.len());
            if size > limit {
                return Err(format!(
                    "invalid result: it is {size} bytes encoded; the limit is {limit} (max_result_bytes)"
                ));
            }
        }
        Ok(())
    }

    /// Writes a finished outcome into an entry, wakes its waiters and queues
    /// the durable write. The caller fixes the owner's running count.
    pub(crate) fn settle(
        &self,
        slot: &TaskSlot,
        entry: &mut Entry,
        status: TaskStatus,
        result: Option<Value>,
        error: Option<String>,
    ) {
        let at_ms = self.clock.now_ms();
        let was_running = entry.status == TaskStatus::Running;
        entry.status = status;
        entry.result = result;
        entry.error = error;
        entry.completed_at_ms = Some(at_ms);
        entry.token = None;
        slot.finished.notify_waiters();
        if let Some(outbox) = &self.outbox {
            entry.add_pending(1);
            outbox.enqueue(
                Job {
                    task_id: slot.task_id.clone(),
                    owner: Arc::clone(&slot.owner.name),
                    epoch: slot.seq,
                    change: Change::Transition(Transition::Finish {
                        attempt: slot.attempt,
                        holder: was_running.then(|| self.lease.holder.clone()),
                        status,
                        result: entry.result.clone(),
                        error: entry.error.clone(),
                        at_ms,
                    }),
                    known: None,
                },
                None,
            );
        }
        self.emit(slot, TaskEventKind::Finished { status });
    }

    /// After a task stopped running: counts it closed, offers it to
    /// retention, and applies retention to its owner.
    fn after_finish(&self, slot: &TaskSlot) {
        let (closed, collectable) = {
            let entry = slot.lock();
            (slot.is_closed(&entry), is_collectable(slot, &entry))
        };
        if !closed && !self.retention.is_active() {
            return;
        }
        let mut reg = self.lock();
        // This epoch's slot, if it is still registered (not replaced).
        let Some(slot) = reg
            .visible(slot.owner(), &slot.task_id)
            .filter(|held| std::ptr::eq(Arc::as_ptr(held), slot))
            .cloned()
        else {
            return;
        };
        if closed {
            reg.count_closed(&slot);
        }
        if self.retention.is_active() {
            if collectable {
                reg.offer_collectable(&slot);
            }
            self.enforce_retention(&mut reg, slot.owner());
        }
    }

    /// Offers a task that just became collectable (its writes resolved, its
    /// last waiter left) to retention.
    fn became_collectable(&self, slot: &Arc<TaskSlot>) {
        if self.retention.is_active() {
            let mut reg = self.lock();
            reg.offer_collectable(slot);
            self.enforce_retention(&mut reg, slot.owner());
        }
    }

    /// Applies the retention policy to an owner's tasks: amortised O(1).
    pub(crate) fn enforce_retention(&self, reg: &mut Registry, owner: &str) {
        if !self.retention.is_active() {
            return;
        }
        let now_ms = self.clock.now_ms();
        let max_age = self.retention.max_age.map(duration_ms);
        reg.enforce_retention(owner, self.retention.max_terminal_per_owner, |_, entry| {
            max_age.is_some_and(|age| {
                entry
                    .completed_at_ms
                    .is_some_and(|t| now_ms.saturating_sub(t) >= age)
            })
        });
    }

    /// Sets a task's status from outside (see `update_status`): `false` when
    /// it is terminal already, or already has that status.
    pub(crate) fn set_status(
        self: &Arc<Self>,
        slot: &Arc<TaskSlot>,
        status: TaskStatus,
        error: Option<String>,
    ) -> bool {
        {
            let mut entry = slot.lock();
            let was = entry.status;
            if was.is_terminal() || was == status {
                return false;
            }
            if let Some(token) = &entry.token {
                token.cancel();
            }
            self.settle(slot, &mut entry, status, None, error);
            if was == TaskStatus::Running {
                slot.stopped_running();
            }
        }
        self.after_finish(slot);
        true
    }

    // -------------------------------------------------------------------
    // Queries
    // -------------------------------------------------------------------

    /// The slot of one of the owner's tasks.
    pub(crate) fn slot(&self, owner: &str, task_id: &str) -> Option<Arc<TaskSlot>> {
        self.lock().visible(owner, task_id).cloned()
    }

    /// The current slot of a task id, whoever owns it.
    pub(crate) fn slot_of(&self, task_id: &str) -> Option<Arc<TaskSlot>> {
        self.lock().get(task_id).cloned()
    }

    /// The summary of a slot, with a note when its writes are late.
    pub(crate) fn summary(&self, slot: &TaskSlot) -> TaskSummary {
        let entry = slot.lock();
        self.summary_of(slot, &entry)
    }

    fn summary_of(&self, slot: &TaskSlot, entry: &Entry) -> TaskSummary {
        let mut summary = slot.summary(entry);
        if summary.persistence_error.is_none()
            && let Some(since) = entry.pending_since
        {
            let pending_for = since.elapsed();
            if pending_for >= self.warn_after {
                summary.persistence_error = Some(format!(
                    "not durable yet: a write to the task store has been pending for {pending_for:?}"
                ));
            }
        }
        summary
    }

    /// Waits until the slot's task is no longer running; returns its summary.
    pub(crate) async fn wait(&self, slot: Arc<TaskSlot>) -> TaskSummary {
        {
            let mut entry = slot.lock();
            if entry.status.is_finished() {
                return self.summary_of(&slot, &entry);
            }
            entry.waiters += 1;
        }
        let guard = WaiterGuard {
            core: self.myself.clone(),
            slot,
        };
        let slot = &guard.slot;
        loop {
            let notified = slot.finished.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let entry = slot.lock();
                if entry.status.is_finished() {
                    return self.summary_of(slot, &entry);
                }
            }
            notified.await;
        }
    }

    /// The owner's tasks in creation order that `keep` keeps, after
    /// applying retention.
    pub(crate) fn list(
        &self,
        owner: &str,
        keep: impl Fn(&TaskSlot, &Entry) -> bool,
    ) -> Vec<TaskSummary> {
        let mut reg = self.lock();
        self.enforce_retention(&mut reg, owner);
        reg.owner_slots(owner)
            .filter_map(|slot| {
                let entry = slot.lock();
                keep(slot, &entry).then(|| self.summary_of(slot, &entry))
            })
            .collect()
    }

    /// Whether the owner has a running task. O(1).
    pub(crate) fn has_running(&self, owner: &str) -> bool {
        self.lock().has_running(owner)
    }

    /// Drops the owner's collectable tasks; returns how many.
    pub(crate) fn gc(&self, owner: &str) -> usize {
        let mut reg = self.lock();
        let ids = reg.collectable(owner);
        for id in &ids {
            reg.remove(id);
        }
        ids.len()
    }

    /// Whether any owner has a task with this id here.
    pub(crate) fn contains_any(&self, task_id: &str) -> bool {
        self.lock().tasks.contains(task_id)
    }

    /// What the manager holds.
    pub(crate) fn stats(&self) -> ManagerStats {
        let mut stats = self.lock().stats();
        stats.pending_writes = self.outbox.as_ref().map_or(0, Outbox::pending);
        stats
    }

    /// Whether this instance knows the run `run_id` of a task (running, or
    /// finished with its outcome known here, written or not): recovery of
    /// this instance's own records leaves such a record alone.
    pub(crate) fn knows_run(&self, task_id: &str, attempt: u32, run_id: Option<&str>) -> bool {
        self.slot_of(task_id).is_some_and(|slot| {
            slot.attempt == attempt && (run_id.is_none() || slot.run_id.as_deref() == run_id)
        })
    }

    /// The parent of one of the owner's tasks held here: `None` when it is
    /// not held here, `Some(None)` for a root.
    pub(crate) fn parent_of(&self, owner: &str, task_id: &str) -> Option<Option<TaskId>> {
        self.lock()
            .visible(owner, task_id)
            .map(|slot| slot.parent_task_id.clone())
    }

    // -------------------------------------------------------------------
    // Output of tasks without a store
    // -------------------------------------------------------------------

    /// The outputs kept here for a task without a store, after `after`.
    pub(crate) fn local_output(
        &self,
        slot: &TaskSlot,
        after: u64,
        limit: usize,
    ) -> crate::records::OutputPage {
        let entry = slot.lock();
        let limit = task_store::effective_limit(limit);
        let entries: Vec<crate::OutputEntry> = entry
            .outputs
            .iter()
            .flat_map(|outputs| outputs.iter())
            .filter(|(cursor, _)| *cursor > after)
            .take(limit)
            .map(|(cursor, value)| crate::OutputEntry {
                attempt: slot.attempt,
                seq: *cursor,
                value: value.clone(),
                cursor: *cursor,
            })
            .collect();
        let next = entries.last().map_or(after, |e| e.cursor);
        crate::records::OutputPage { entries, next }
    }

    // -------------------------------------------------------------------
    // Shutdown
    // -------------------------------------------------------------------

    /// Refuses new tasks, waits (until `deadline`) for launches admitted
    /// before, then asks every running task to stop; returns them.
    pub(crate) async fn close(&self, deadline: Instant) -> Vec<Arc<TaskSlot>> {
        self.lock().closed = true;
        loop {
            let launched = self.launched.notified();
            tokio::pin!(launched);
            launched.as_mut().enable();
            if self.lock().launching == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, launched).await.is_err() {
                break;
            }
        }
        let slots: Vec<Arc<TaskSlot>> = {
            let reg = self.lock();
            reg.tasks.iter().map(|k| Arc::clone(&k.0)).collect()
        };
        let mut running = Vec::new();
        for slot in slots {
            let mut entry = slot.lock();
            if entry.status == TaskStatus::Running {
                entry.shutting_down = true;
                if let Some(token) = &entry.token {
                    token.cancel();
                }
                drop(entry);
                running.push(slot);
            }
        }
        running
    }

    /// Interrupts a task still running at the end of shutdown's grace:
    /// records it stopped or failed, then aborts it. `false` when it had
    /// finished.
    pub(crate) fn interrupt(self: &Arc<Self>, slot: &Arc<TaskSlot>) -> bool {
        let abort = {
            let mut entry = slot.lock();
            if entry.status != TaskStatus::Running {
                return false;
            }
            let (status, result, error) = interrupted(
                slot.supports_resume,
                "the task manager shut down before the task finished",
            );
            self.settle(slot, &mut entry, status, result, error);
            slot.stopped_running();
            entry.abort.take()
        };
        if let Some(abort) = abort {
            abort.abort();
        }
        self.after_finish(slot);
        true
    }
}

/// Decrements a task's waiter count when a `wait` ends, even by drop, and
/// offers the task to retention when it was the last waiter.
struct WaiterGuard {
    core: Weak<Core>,
    slot: Arc<TaskSlot>,
}

impl Drop for WaiterGuard {
    fn drop(&mut self) {
        let collectable = {
            let mut entry = self.slot.lock();
            entry.waiters = entry.waiters.saturating_sub(1);
            entry.waiters == 0 && is_collectable(&self.slot, &entry)
        };
        if collectable && let Some(core) = self.core.upgrade() {
            core.became_collectable(&self.slot);
        }
    }
}

impl TaskHost for Core {
    fn output(&self, slot: &TaskSlot, value: Value) -> Result<(), TaskError> {
        validate::json_depth("output", &value)?;
        let Some(core) = self.myself.upgrade() else {
            return Err(TaskError::ShuttingDown);
        };
        let mut entry = slot.lock();
        if entry.status != TaskStatus::Running {
            return Err(TaskError::NotRunning {
                task_id: slot.task_id.clone(),
                status: entry.status,
            });
        }
        entry.output_seq += 1;
        let seq = entry.output_seq;
        if core.listened() {
            core.emit(slot, TaskEventKind::Output(value.clone()));
        }
        match &core.outbox {
            Some(outbox) => {
                outbox.has_room()?;
                entry.add_pending(1);
                outbox.enqueue(
                    Job {
                        task_id: slot.task_id.clone(),
                        owner: Arc::clone(&slot.owner.name),
                        epoch: slot.seq,
                        change: Change::Output {
                            attempt: slot.attempt,
                            seq,
                            value,
                        },
                        known: None,
                    },
                    None,
                );
            }
            None => {
                let outputs = entry.outputs.get_or_insert_with(Box::default);
                if outputs.len() == OUTPUTS_KEPT {
                    outputs.pop_front();
                }
                outputs.push_back((seq, value));
            }
        }
        Ok(())
    }

    fn progress(&self, slot: &TaskSlot, fraction: Option<f64>, message: Option<String>) {
        let mut entry = slot.lock();
        if entry.status != TaskStatus::Running {
            return;
        }
        let progress = Progress {
            fraction: fraction
                .filter(|f| f.is_finite())
                .map(|f| f.clamp(0.0, 1.0)),
            message,
            at_ms: self.clock.now_ms(),
        };
        if self.listened() {
            self.emit(slot, TaskEventKind::Progress(progress.clone()));
        }
        entry.progress = Some(progress);
    }
}

impl WriteReports for Core {
    fn written(&self, report: WriteReport<'_>) {
        let Some(slot) = self.slot_of(report.task_id) else {
            return;
        };
        let Some(core) = self.myself.upgrade() else {
            return;
        };
        let collectable = {
            let mut entry = slot.lock();
            entry.resolve_pending(report.resolved);
            if slot.seq != report.epoch {
                // A report of an earlier epoch of the id: only its count of
                // pending writes carried over to this one.
                return;
            }
            let kind = match report.outcome {
                WriteOutcome::Durable(record) => {
                    // A cancel another process wrote on the record reaches
                    // the task even if its inbox message never does.
                    if record.cancel_requested_at_ms.is_some()
                        && record.attempt == slot.attempt
                        && entry.status == TaskStatus::Running
                    {
                        core.request_cancel(&slot, &mut entry);
                    }
                    if record.is_closed()
                        && let Some(hook) = self.on_durable_close.get()
                    {
                        (hook.0)(&slot.task_id);
                    }
                    if !report.drained {
                        None
                    } else {
                        entry.persistence_error = None;
                        Some(TaskEventKind::Persisted)
                    }
                }
                WriteOutcome::Failed { error, permanent } => {
                    let error = error.to_string();
                    entry.persistence_error = Some(error.clone());
                    Some(TaskEventKind::PersistenceFailed { error, permanent })
                }
                WriteOutcome::Delayed { pending_for } => Some(TaskEventKind::PersistenceDelayed {
                    pending_for_ms: duration_ms(pending_for),
                }),
            };
            if let Some(kind) = kind {
                self.emit(&slot, kind);
            }
            report.resolved > 0 && entry.pending_writes == 0 && is_collectable(&slot, &entry)
        };
        if collectable {
            self.became_collectable(&slot);
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

impl Drop for Core {
    /// The last handle is gone: nobody can observe or record these tasks any
    /// more, so they are aborted rather than left running unsupervised.
    fn drop(&mut self) {
        let reg = self
            .registry
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        for slot in &reg.tasks {
            if let Some(abort) = slot.0.lock().abort.take() {
                abort.abort();
            }
        }
    }
}
