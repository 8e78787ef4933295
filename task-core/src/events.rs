//! Transition events, for callers that watch tasks instead of polling.

use serde_json::Value;

use crate::{Progress, TaskId, TaskStatus};

/// Something that happened to a task. Subscribe with
/// [`BackgroundTaskManager::subscribe`](crate::BackgroundTaskManager::subscribe).
#[derive(Debug, Clone, PartialEq)]
pub struct TaskEvent {
    /// The task's owner.
    pub owner_thread_id: String,
    /// The task.
    pub task_id: TaskId,
    /// Its attempt.
    pub attempt: u32,
    /// What happened.
    pub kind: TaskEventKind,
}

/// What happened, in a [`TaskEvent`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum TaskEventKind {
    /// The task was spawned but waits for a concurrency limit
    /// (`Spawned` follows when it starts).
    Queued,
    /// The task was spawned and is running (or a queued task started, or a
    /// retry began its attempt).
    Spawned,
    /// A cancellation was requested.
    CancelRequested,
    /// The task emitted output with [`TaskContext::emit`](crate::TaskContext::emit).
    Output(Value),
    /// The task reported progress with
    /// [`TaskContext::progress`](crate::TaskContext::progress).
    Progress(Progress),
    /// The task finished with this status (terminal or `stopped`).
    Finished {
        /// Its status.
        status: TaskStatus,
    },
    /// The attempt failed and the task's retry policy runs it again after
    /// `delay`, as its next attempt; meanwhile it is `queued`.
    RetryScheduled {
        /// Why the attempt failed.
        error: String,
        /// How long until the next attempt starts.
        delay: std::time::Duration,
    },
    /// The task ran longer than its timeout: its cancellation was requested
    /// and it ends `failed`.
    TimedOut,
    /// Every write of the task so far is durable.
    Persisted,
    /// A write to the task store failed; it is retried unless `permanent`.
    PersistenceFailed {
        /// The error.
        error: String,
        /// Whether the write was given up (it can never succeed).
        permanent: bool,
    },
    /// A write to the task store has been pending longer than the manager's
    /// [`persistence_warn_after`](crate::BackgroundTaskManagerBuilder::persistence_warn_after)
    /// without failing (a store that hangs, or one the manager is holding
    /// writes back from while it fails). Sent once per stall.
    PersistenceDelayed {
        /// How long the oldest unresolved write has been pending (ms).
        pending_for_ms: u64,
    },
}
