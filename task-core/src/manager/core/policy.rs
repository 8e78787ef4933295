//! The core's side of the job-system policies: the work a task runs (once,
//! or again for a retry), concurrency limits with their queue, timeouts and
//! retries. None of it costs anything to a manager that sets no policy.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::registry::Registry;
use super::task::{SharedRun, TaskSlot, Work};
use crate::{TaskStatus, WhenLimited};

/// The handlers of a manager, by task type.
#[derive(Clone, Default)]
pub(crate) struct Handlers(pub(crate) HashMap<String, SharedRun>);

impl Handlers {
    pub(crate) fn get(&self, task_type: &str) -> Option<&SharedRun> {
        self.0.get(task_type)
    }
}

impl fmt::Debug for Handlers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut types: Vec<&String> = self.0.keys().collect();
        types.sort();
        f.debug_tuple("Handlers").field(&types).finish()
    }
}

/// The concurrency limits of a manager.
#[derive(Debug, Clone, Default)]
pub(crate) struct Limits {
    pub(crate) per_owner: Option<usize>,
    pub(crate) per_type: HashMap<String, usize>,
}

impl Limits {
    pub(crate) fn is_active(&self) -> bool {
        self.per_owner.is_some() || !self.per_type.is_empty()
    }
}

impl Registry {
    /// Whether a task of `owner` and `task_type` may start now.
    pub(crate) fn may_start(&self, limits: &Limits, owner: &str, task_type: &str) -> bool {
        if let Some(max) = limits.per_owner
            && self
                .owners
                .get(owner)
                .is_some_and(|o| o.shared.running.load(std::sync::atomic::Ordering::Acquire) >= max)
        {
            return false;
        }
        match limits.per_type.get(task_type) {
            Some(max) => {
                self.limited
                    .running_by_type
                    .get(task_type)
                    .copied()
                    .unwrap_or(0)
                    < *max
            }
            None => true,
        }
    }

    /// Counts a task of a limited type as running.
    pub(crate) fn count_type_start(&mut self, limits: &Limits, task_type: &Arc<str>) {
        if limits.per_type.contains_key(&**task_type) {
            *self
                .limited
                .running_by_type
                .entry(Arc::clone(task_type))
                .or_default() += 1;
        }
    }

    /// Counts a task of a limited type as no longer running.
    pub(crate) fn count_type_stop(&mut self, limits: &Limits, task_type: &str) {
        if limits.per_type.contains_key(task_type)
            && let Some(count) = self.limited.running_by_type.get_mut(task_type)
        {
            *count = count.saturating_sub(1);
        }
    }

    /// Takes the queued tasks that may start now, in order, marked running.
    pub(crate) fn take_startable(&mut self, limits: &Limits) -> Vec<Arc<TaskSlot>> {
        let mut started = Vec::new();
        let mut kept = VecDeque::with_capacity(self.limited.queue.len());
        while let Some(slot) = self.limited.queue.pop_front() {
            if slot.lock().status != TaskStatus::Queued {
                // Cancelled (or shut down) while it waited.
                continue;
            }
            if self.may_start(limits, slot.owner(), &slot.task_type) {
                slot.lock().status = TaskStatus::Running;
                slot.owner
                    .running
                    .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                self.count_type_start(limits, &slot.task_type);
                started.push(slot);
            } else {
                kept.push_back(slot);
            }
        }
        self.limited.queue = kept;
        started
    }
}

impl super::Core {
    /// A failed attempt that its retry policy runs again: its failure is
    /// written (the attempt's outcome, in its log), and the task waits,
    /// `queued`, for its next attempt. Its waiters go on waiting.
    pub(crate) fn settle_retry(
        &self,
        slot: &TaskSlot,
        entry: &mut super::task::Entry,
        error: Option<String>,
        delay: Duration,
    ) {
        let at_ms = self.clock.now_ms();
        entry.status = TaskStatus::Queued;
        entry.error = error.clone();
        entry.token = None;
        if let Some(number) = entry.reap.take() {
            self.reaper.forget(number);
        }
        let failed = crate::Transition::Finish {
            attempt: slot.attempt,
            holder: Some(self.lease.holder.clone()),
            status: TaskStatus::Failed,
            result: None,
            error: error.clone(),
            at_ms,
        };
        self.queue_change(
            slot,
            entry,
            crate::records::Change::Transition(failed),
            None,
            None,
        );
        self.emit(
            slot,
            crate::TaskEventKind::RetryScheduled {
                error: error.unwrap_or_default(),
                delay,
            },
        );
    }

    /// Starts the next attempt of a task waiting for its retry, `delay` from
    /// now.
    pub(crate) fn schedule_retry(self: &Arc<Self>, slot: &Arc<TaskSlot>, delay: Duration) {
        let core = Arc::downgrade(self);
        let due = Arc::clone(slot);
        let started = self.background.spawn(async move {
            tokio::time::sleep(delay).await;
            if let Some(core) = core.upgrade() {
                core.retry(&due);
            }
        });
        if !started {
            self.end_queued(slot, TaskStatus::Failed, None);
        }
    }

    /// The next attempt of a task whose retry is due, as a new epoch of its
    /// id that runs its work again with the checkpoint of the attempt
    /// before. Waiters of the old epoch follow it.
    fn retry(self: &Arc<Self>, old: &Arc<TaskSlot>) {
        let checkpoint = {
            let entry = old.lock();
            if entry.status != TaskStatus::Queued {
                // Its retry was called off meanwhile.
                return;
            }
            entry
                .extra
                .as_ref()
                .and_then(|e| e.checkpoint.clone())
                .or_else(|| {
                    old.policy
                        .as_ref()
                        .and_then(|p| p.previous_checkpoint.clone())
                })
        };
        let Some(mut policy) = old.policy.as_deref().cloned() else {
            return;
        };
        let Some(work) = policy.work.clone() else {
            return;
        };
        policy.previous_checkpoint = checkpoint;
        let token = policy.token.clone();
        let launch = super::Launch {
            task_id: old.task_id.clone(),
            owner: old.owner().to_owned(),
            task_type: old.task_type.to_string(),
            description: old.description.clone(),
            parent_task_id: old.parent_task_id.clone(),
            metadata: old.metadata.clone(),
            supports_resume: old.supports_resume,
            attempt: Some(old.attempt + 1),
            run_id: None,
            durable: super::Durable::Start(crate::records::Known::Unknown),
            now_ms: self.clock.now_ms(),
            admitted: false,
            policy: Some(Box::new(policy)),
            when_limited: WhenLimited::Queue,
            retry_of: Some(old.seq),
        };
        match self.launch_work(launch, token, None, Work::Shared(work)) {
            Ok(_) => old.finished.notify_waiters(),
            Err(error) => {
                tracing::warn!(task_id = %old.task_id, %error, "a retry could not start");
                self.end_queued(old, TaskStatus::Failed, None);
            }
        }
    }

    /// A running task outlived its timeout: its cancellation is requested,
    /// and it ends `failed` ("timed out").
    pub(crate) fn time_out(self: &Arc<Self>, slot: &Arc<TaskSlot>) {
        let mut entry = slot.lock();
        if entry.status != TaskStatus::Running || entry.timed_out {
            return;
        }
        entry.timed_out = true;
        self.emit(slot, crate::TaskEventKind::TimedOut);
        self.request_cancel(slot, &mut entry);
    }
}
