//! Transition events, for callers that watch tasks instead of polling.

use serde_json::Value;

use crate::{TaskId, TaskStatus};

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
    /// The task was spawned and is running.
    Spawned,
    /// A cancellation was requested.
    CancelRequested,
    /// The task emitted output with [`TaskContext::emit`](crate::TaskContext::emit).
    Output(Value),
    /// The task finished with this status (terminal or `stopped`).
    Finished {
        /// Its status.
        status: TaskStatus,
    },
    /// Every write of the task so far is durable.
    Persisted,
    /// A write to the task store failed; it is retried unless `permanent`.
    PersistenceFailed {
        /// The error.
        error: String,
        /// Whether the write was given up (it can never succeed).
        permanent: bool,
    },
}
