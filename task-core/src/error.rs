//! The task layer's error.

use task_store::ThreadStoreError;

use crate::{TaskId, TaskStatus};

/// Why a task operation was refused or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TaskError {
    /// No task with this id is visible to the caller. A task of another owner
    /// gives the same error as a task that does not exist.
    #[error("Unknown task_id: {task_id}")]
    UnknownTask {
        /// The id asked for.
        task_id: TaskId,
    },

    /// The task has finished, so it cannot be cancelled.
    #[error("Task '{task_id}' is not running (current status: {status})")]
    NotRunning {
        /// The task.
        task_id: TaskId,
        /// Its status.
        status: TaskStatus,
    },

    /// `spawn_with_id` of an id whose task is still running.
    #[error("Task '{task_id}' is already running")]
    AlreadyRunning {
        /// The task.
        task_id: TaskId,
    },

    /// `spawn_with_id` of an id that belongs to another owner (live in this
    /// process, or in the task store). Nothing was changed: the other
    /// owner's task and record stay exactly as they were. Choose another id.
    #[error("Task id '{task_id}' is already in use; choose another id")]
    IdTaken {
        /// The id asked for.
        task_id: TaskId,
    },

    /// An id, a description or metadata breaks a documented limit; nothing
    /// was changed.
    #[error("invalid input: {reason}")]
    InvalidInput {
        /// What is wrong.
        reason: String,
    },

    /// The task cannot be resumed (it is not `stopped`, or it does not
    /// support resume). Nothing was changed.
    #[error("Task '{task_id}' cannot be resumed: {reason}")]
    NotResumable {
        /// The task.
        task_id: TaskId,
        /// Why, as the state machine decided it.
        reason: crate::Rejection,
    },

    /// The state machine refused a durable transition (a terminal outcome is
    /// write-once; a write of an older attempt is fenced off).
    #[error("transition refused for task '{task_id}': {reason}")]
    Rejected {
        /// The task.
        task_id: TaskId,
        /// Why.
        reason: crate::Rejection,
    },

    /// A durable record exists but is not a valid task record.
    #[error("task '{task_id}' has a corrupt record: {reason}")]
    Corrupt {
        /// The task.
        task_id: TaskId,
        /// What could not be decoded.
        reason: String,
    },

    /// The manager is shutting down and accepts no new tasks.
    #[error("the task manager is shutting down")]
    ShuttingDown,

    /// A concurrency limit is reached and the spawn asked to be refused
    /// rather than queued ([`WhenLimited::Refuse`](crate::WhenLimited::Refuse)).
    /// Nothing was changed. Retryable.
    #[error("Task '{task_id}' was not started: {reason}")]
    Limited {
        /// The task.
        task_id: TaskId,
        /// Which limit.
        reason: String,
    },

    /// The persistence outbox is full (the store is slow or down) and the
    /// manager is configured to refuse rather than wait
    /// ([`OutboxFull::Refuse`](crate::OutboxFull::Refuse)). Nothing was
    /// changed. Retryable: try again once the store catches up.
    #[error(
        "the task store is behind: {pending} writes are pending, the outbox limit is {limit}; retry later"
    )]
    Backpressure {
        /// Writes pending when the call was refused.
        pending: usize,
        /// The configured limit.
        limit: usize,
    },

    /// The store failed.
    #[error(transparent)]
    Store(#[from] ThreadStoreError),
}

impl TaskError {
    /// Whether repeating the operation may succeed: a transient store
    /// failure, or a full outbox.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Store(e) => e.is_retryable(),
            Self::Backpressure { .. } | Self::Limited { .. } => true,
            _ => false,
        }
    }

    /// Maps a validation error of the store's id rules.
    pub(crate) fn from_validation(err: ThreadStoreError) -> Self {
        match err {
            ThreadStoreError::InvalidInput { reason } => Self::InvalidInput { reason },
            other => Self::Store(other),
        }
    }

    pub(crate) fn unknown(task_id: &str) -> Self {
        Self::UnknownTask {
            task_id: task_id.to_owned(),
        }
    }
}
