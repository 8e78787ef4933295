//! The local core of a manager: the registry, supervision and the outbox.
//! Everything one process needs, and nothing about other processes: the
//! cross-process layer (`manager::distributed`) builds on the calls here.
//!
//! The core's transitions of a task (start, cancel request, output,
//! progress, finish) happen under that task's slot lock, which also orders
//! the outbox jobs they queue; the registry lock is only taken to add,
//! find and remove tasks.

mod finish;
mod launch;
pub(crate) mod policy;
pub(crate) mod registry;
mod reports;
pub(crate) mod supervise;
pub(crate) mod task;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{Notify, broadcast};
use tokio::time::Instant;

pub(crate) use self::launch::{Durable, Launch, plan_from_record};
use self::policy::{Handlers, Limits};
use self::registry::{ManagerStats, Registry, is_collectable};
use self::supervise::{Ended, Reaper, reap};
use self::task::{Entry, SharedRun, SlotPolicy, TaskSlot};
use super::background::Background;
use super::clock::Clock;
use super::config::{Config, LeaseConfig, RetentionPolicy};
use super::outbox::{Job, Outbox, Permit, WriteReports};
use crate::records::{Change, Known};
use crate::{
    RetryPolicy, RunCancellationToken, TaskError, TaskEvent, TaskEventKind, TaskId, TaskPolicy,
    TaskStatus, TaskSummary,
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
    pub(crate) limits: Limits,
    pub(crate) policies: HashMap<String, TaskPolicy>,
    pub(crate) handlers: Handlers,
    max_result_bytes: Option<usize>,
    /// The types resumable by default: a short list, scanned (a hash of
    /// the type on every spawn cost more than the scan).
    resumable_types: Box<[Box<str>]>,
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
    pub(crate) fn new(config: &Config, handlers: HashMap<String, SharedRun>) -> Arc<Self> {
        let (events, _) = broadcast::channel(config.event_capacity);
        Arc::new_cyclic(|myself: &Weak<Core>| {
            let reports: Weak<dyn WriteReports> = myself.clone();
            Core {
                registry: Mutex::new(Registry::default()),
                events,
                subscribed: AtomicBool::new(false),
                cancel_grace: config.cancel_grace,
                retention: config.retention,
                limits: Limits {
                    per_owner: config.owner_concurrency,
                    per_type: config
                        .policies
                        .iter()
                        .filter_map(|(t, p)| p.concurrency.map(|c| (t.clone(), c)))
                        .collect(),
                },
                policies: config.policies.clone(),
                handlers: Handlers(handlers),
                max_result_bytes: config.max_result_bytes,
                resumable_types: config
                    .resumable_types
                    .iter()
                    .map(|t| Box::from(t.as_str()))
                    .collect(),
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

    /// Whether tasks of this type support resume by default: its policy
    /// says so, or it is one of the resumable types.
    pub(crate) fn type_supports_resume(&self, task_type: &str) -> bool {
        if !self.policies.is_empty()
            && let Some(resumable) = self.policies.get(task_type).and_then(|p| p.resumable)
        {
            return resumable;
        }
        self.resumable_types.iter().any(|t| &**t == task_type)
    }

    /// The policy a task of `task_type` runs under, with a request's own
    /// settings over its type's; `None` when it has none (the common case
    /// costs nothing).
    pub(crate) fn slot_policy(
        &self,
        task_type: &str,
        timeout: Option<Duration>,
        retry: Option<RetryPolicy>,
        work: Option<SharedRun>,
        token: Option<RunCancellationToken>,
    ) -> Option<Box<SlotPolicy>> {
        let of_type = self.policies.get(task_type);
        let timeout = timeout.or_else(|| of_type.and_then(|p| p.timeout));
        let retry = retry.or_else(|| of_type.and_then(|p| p.retry.clone()));
        if timeout.is_none() && retry.is_none() && work.is_none() {
            return None;
        }
        Some(Box::new(SlotPolicy {
            timeout,
            retry,
            work,
            token,
            previous_checkpoint: None,
        }))
    }

    /// Queues a durable change of a task's epoch in the outbox (under the
    /// task's lock, which orders its changes) and counts it pending; nothing
    /// without a store.
    pub(crate) fn queue_change(
        &self,
        slot: &TaskSlot,
        entry: &mut Entry,
        change: Change,
        known: Option<Known>,
        permit: Option<&mut Permit>,
    ) {
        if let Some(outbox) = &self.outbox {
            entry.add_pending(1);
            outbox.enqueue(
                Job {
                    task_id: slot.task_id.clone(),
                    owner: Arc::clone(&slot.owner.name),
                    epoch: slot.seq,
                    change,
                    known,
                },
                permit,
            );
        }
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
    // Cancelling
    // -------------------------------------------------------------------

    /// Marks a running task's cancellation requested, cancels its token (if
    /// it has one yet; one made later is born cancelled) and starts its
    /// grace.
    pub(crate) fn request_cancel(self: &Arc<Self>, slot: &Arc<TaskSlot>, entry: &mut Entry) {
        if let Some(token) = self.mark_cancelled(slot, entry) {
            token.cancel();
        }
    }

    /// [`request_cancel`](Self::request_cancel) but for the token itself,
    /// returned to be cancelled once the task's lock is released: a task
    /// woken by its token at once takes that lock to finish, so cancelling
    /// many tasks under their locks makes each of them wait for it (and
    /// `cancel_tree` of 1,001 tasks cost 2 ms instead of about 1).
    #[must_use = "the token is to be cancelled once the task's lock is released"]
    fn mark_cancelled(
        self: &Arc<Self>,
        slot: &Arc<TaskSlot>,
        entry: &mut Entry,
    ) -> Option<RunCancellationToken> {
        if entry.cancel_requested {
            return None;
        }
        entry.cancel_requested = true;
        self.emit(slot, TaskEventKind::CancelRequested);
        self.schedule_reap(slot, entry);
        entry.token.clone()
    }

    /// Has the reaper drop the task if it still runs a cancel grace from now
    /// (once per epoch); the task forgets its entry when it ends first.
    pub(crate) fn schedule_reap(self: &Arc<Self>, slot: &Arc<TaskSlot>, entry: &mut Entry) {
        if entry.reap.is_some() {
            return;
        }
        let (number, start) = self.reaper.push(Instant::now() + self.cancel_grace, slot);
        entry.reap = Some(number);
        if start {
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
        match entry.status {
            TaskStatus::Running => {
                self.request_cancel(&slot, &mut entry);
                Some(Ok(()))
            }
            TaskStatus::Queued => {
                drop(entry);
                self.end_queued(&slot, TaskStatus::Cancelled, None);
                Some(Ok(()))
            }
            status => Some(Err(TaskError::NotRunning {
                task_id: task_id.to_owned(),
                status,
            })),
        }
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

    /// Requests the cancellation of every running task of the owner's tree
    /// under `root` held here, under one registry lock; returns the root's
    /// status (`None` when the owner has no such task here) and the
    /// summaries of the tasks whose cancellation it requested, root first.
    pub(crate) fn cancel_local_tree(
        self: &Arc<Self>,
        owner: &str,
        root: &str,
    ) -> (Option<TaskStatus>, Vec<TaskSummary>) {
        // The registry lock only for the walk; each task's cancel under its
        // own lock, so finishing tasks (and spawns) are not held up.
        let slots: Vec<Arc<TaskSlot>> = {
            let reg = self.lock();
            reg.tree(owner, root).into_iter().cloned().collect()
        };
        let Some(root_slot) = slots.first().filter(|s| s.task_id == root) else {
            return (None, Vec::new());
        };
        let status = root_slot.lock().status;
        let mut cancelled = Vec::with_capacity(slots.len());
        let mut tokens = Vec::with_capacity(slots.len());
        for slot in &slots {
            let mut entry = slot.lock();
            match entry.status {
                TaskStatus::Running => {
                    tokens.extend(self.mark_cancelled(slot, &mut entry));
                    cancelled.push(slot.summary(&entry));
                }
                TaskStatus::Queued => {
                    drop(entry);
                    if self.end_queued(slot, TaskStatus::Cancelled, None) {
                        cancelled.push(self.summary(slot));
                    }
                }
                _ => {}
            }
        }
        // Outside every task's lock: the tasks woken here finish at once.
        for token in tokens {
            token.cancel();
        }
        (Some(status), cancelled)
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

    /// Waits until the slot's task has finished (terminal or stopped) and
    /// returns its summary; follows the task into its next epoch when a
    /// retry replaces the one it waits on.
    pub(crate) async fn wait(&self, slot: Arc<TaskSlot>) -> TaskSummary {
        let mut slot = slot;
        loop {
            {
                let entry = slot.lock();
                if entry.status.is_finished() {
                    return self.summary_of(&slot, &entry);
                }
            }
            if let Some(newer) = self.successor(&slot) {
                slot = newer;
                continue;
            }
            slot.lock().waiters += 1;
            let guard = WaiterGuard {
                core: self.myself.clone(),
                slot: Arc::clone(&slot),
            };
            let notified = slot.finished.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let settled = slot.lock().status.is_finished() || self.successor(&slot).is_some();
            if !settled {
                notified.await;
            }
            drop(guard);
        }
    }

    /// The epoch that replaced `slot` for its owner (a retry), if any.
    fn successor(&self, slot: &Arc<TaskSlot>) -> Option<Arc<TaskSlot>> {
        self.slot_of(&slot.task_id)
            .filter(|newer| newer.seq > slot.seq && newer.owner() == slot.owner())
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
    pub(crate) async fn close(self: &Arc<Self>, deadline: Instant) -> Vec<Arc<TaskSlot>> {
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
            if entry.status == TaskStatus::Queued {
                drop(entry);
                self.end_queued(
                    &slot,
                    TaskStatus::Failed,
                    Some("the task manager shut down before the task started".to_owned()),
                );
                continue;
            }
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
        self.released(slot);
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
