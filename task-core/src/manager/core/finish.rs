//! How a task's epoch ends: its outcome recorded and queued for the store,
//! its waiters woken, retention applied to its owner.

use std::sync::Arc;

use serde_json::Value;

use super::registry::{Registry, is_collectable};
use super::supervise::Ended;
use super::task::{Entry, TaskSlot};
use super::{Core, interrupted};
use crate::manager::clock::duration_ms;
use crate::records::Change;
use crate::state::Transition;
use crate::{RunCancellationToken, TaskError, TaskEventKind, TaskResult, TaskStatus, validate};

impl Core {
    // -------------------------------------------------------------------
    // Finishing
    // -------------------------------------------------------------------

    /// Records the end of a task's epoch (its slot). Reports after an outside
    /// status change are ignored; so are those of an older epoch, whose
    /// slot is no longer registered and has already finished. A failure the
    /// task's retry policy retries leaves it `queued` for its next attempt.
    pub(crate) fn finish(self: &Arc<Self>, slot: &Arc<TaskSlot>, ended: Ended) {
        let retry = {
            let mut entry = slot.lock();
            if entry.status != TaskStatus::Running {
                return;
            }
            let cancelled = entry.cancel_requested
                || entry
                    .token
                    .as_ref()
                    .is_some_and(RunCancellationToken::is_cancelled);
            let timed_out = entry.timed_out.then(|| {
                let limit = slot
                    .policy
                    .as_ref()
                    .and_then(|p| p.timeout)
                    .unwrap_or_default();
                format!("timed out after {limit:?}")
            });
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
                    if timed_out.is_some() {
                        TaskStatus::Failed
                    } else {
                        TaskStatus::Cancelled
                    },
                    None,
                    Some(format!(
                        "{}did not stop within the cancel grace of {:?}; dropped",
                        timed_out
                            .as_ref()
                            .map_or(String::new(), |t| format!("{t}; ")),
                        self.cancel_grace
                    )),
                ),
                Ended::Dropped => interrupted(
                    slot.supports_resume,
                    "the tokio runtime running the task shut down before it finished",
                ),
                _ if timed_out.is_some() => (TaskStatus::Failed, None, timed_out.clone()),
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
            let retryable = status == TaskStatus::Failed
                && !entry.shutting_down
                && !cancelled
                && timed_out.is_none();
            let retry = retryable
                .then(|| {
                    let policy = slot.policy.as_ref()?;
                    policy.retry_after(slot.attempt, error.as_deref().unwrap_or_default())
                })
                .flatten();
            match retry {
                Some(delay) => self.settle_retry(slot, &mut entry, error, delay),
                None => self.settle(slot, &mut entry, status, result, error),
            }
            slot.stopped_running();
            retry
        };
        self.released(slot);
        match retry {
            Some(delay) => self.schedule_retry(slot, delay),
            None => self.after_finish(slot),
        }
    }

    /// A task stopped running: the limits count it out and the next queued
    /// tasks may start.
    pub(crate) fn released(self: &Arc<Self>, slot: &TaskSlot) {
        if self.limits.is_active() {
            self.lock().count_type_stop(&self.limits, &slot.task_type);
            self.start_queued();
        }
    }

    /// Ends a task that is `queued` and never started this attempt (waiting
    /// for a limit, or for its retry), here only: nothing of this attempt is
    /// durable, so nothing is written. A task waiting for its retry keeps
    /// the outcome of the attempt that failed.
    pub(crate) fn end_queued(
        self: &Arc<Self>,
        slot: &TaskSlot,
        status: TaskStatus,
        error: Option<String>,
    ) -> bool {
        {
            let mut entry = slot.lock();
            if entry.status != TaskStatus::Queued {
                return false;
            }
            let waiting_for_limit = entry.extra.as_mut().and_then(|e| e.work.take()).is_some();
            let (status, error) = if waiting_for_limit {
                (status, error)
            } else {
                let last = entry.error.clone().unwrap_or_default();
                (
                    TaskStatus::Failed,
                    Some(format!("{last}; its retry was called off")),
                )
            };
            self.settle_with(slot, &mut entry, status, None, error, false);
        }
        self.after_finish(slot);
        true
    }

    /// Whether a task's result may be kept: nested within
    /// [`MAX_JSON_DEPTH`](crate::MAX_JSON_DEPTH), and (with a store) within
    /// the size limit. Otherwise the reason the task fails instead.
    pub(super) fn check_result(&self, result: &Value) -> Result<(), String> {
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
        self.settle_with(slot, entry, status, result, error, true);
    }

    /// [`settle`](Self::settle), writing the outcome to the store only when
    /// `durable`.
    fn settle_with(
        &self,
        slot: &TaskSlot,
        entry: &mut Entry,
        status: TaskStatus,
        result: Option<Value>,
        error: Option<String>,
        durable: bool,
    ) {
        let at_ms = self.clock.now_ms();
        let was_running = entry.status == TaskStatus::Running;
        entry.status = status;
        entry.result = result;
        entry.error = error;
        entry.completed_at_ms = Some(at_ms);
        entry.token = None;
        if let Some(number) = entry.reap.take() {
            self.reaper.forget(number);
        }
        slot.finished.notify_waiters();
        if durable {
            let finish = Transition::Finish {
                attempt: slot.attempt,
                holder: was_running.then(|| self.lease.holder.clone()),
                status,
                result: entry.result.clone(),
                error: entry.error.clone(),
                at_ms,
            };
            self.queue_change(slot, entry, Change::Transition(finish), None, None);
        }
        self.emit(slot, TaskEventKind::Finished { status });
    }

    /// After a task stopped running: counts it closed, offers it to
    /// retention, and applies retention to its owner.
    pub(super) fn after_finish(&self, slot: &TaskSlot) {
        // Only retention needs the owner's count of closed tasks: without a
        // policy a finish never takes the registry lock.
        if !self.retention.is_active() {
            return;
        }
        let (closed, collectable) = {
            let entry = slot.lock();
            (slot.is_closed(&entry), is_collectable(slot, &entry))
        };
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
        if collectable {
            reg.offer_collectable(&slot);
        }
        self.enforce_retention(&mut reg, slot.owner());
    }

    /// Offers a task that just became collectable (its writes resolved, its
    /// last waiter left) to retention.
    pub(super) fn became_collectable(&self, slot: &Arc<TaskSlot>) {
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
        let was = {
            let mut entry = slot.lock();
            let was = entry.status;
            if was.is_terminal() || was == status {
                return false;
            }
            if was == TaskStatus::Queued {
                drop(entry);
                return self.end_queued(slot, status, error);
            }
            if let Some(token) = &entry.token {
                token.cancel();
            }
            self.settle(slot, &mut entry, status, None, error);
            if was == TaskStatus::Running {
                slot.stopped_running();
            }
            was
        };
        if was == TaskStatus::Running {
            self.released(slot);
        }
        self.after_finish(slot);
        true
    }
}
