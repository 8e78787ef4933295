//! The task model: ids, statuses, results, summaries and spawn parameters.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A task's id. Generated ids come from [`new_task_id`]; callers may choose
/// their own with [`SpawnParams`].
pub type TaskId = String;

/// The cancellation token a task observes. Cancelling it is a cancellation
/// request: the task ends `cancelled` whatever it returns.
pub type RunCancellationToken = tokio_util::sync::CancellationToken;

/// A new, unique, time-ordered task id (a UUIDv7 in lowercase hex): ids
/// generated later sort after ids generated earlier.
pub fn new_task_id() -> TaskId {
    new_task_id_at(now_ms())
}

/// [`new_task_id`] with the timestamp given (milliseconds since the Unix
/// epoch), for callers that have just read the clock.
pub(crate) fn new_task_id_at(now_ms: u64) -> TaskId {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    // 48 bits of milliseconds, then a per-process counter that starts at a
    // random point (its top byte clear, so the version bits never touch it)
    // and 16 random bits: later ids sort after earlier ones within one
    // process, ids of different processes do not collide, and no system call
    // is made per id (uuid's `now_v7` reads the OS entropy source each time).
    static START: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let start = *START.get_or_init(|| fastrand::u64(..) >> 8);
    let n = start.wrapping_add(COUNTER.fetch_add(1, Ordering::Relaxed));
    let mut tail = [0u8; 10];
    tail[..8].copy_from_slice(&n.to_be_bytes());
    tail[8..].copy_from_slice(&fastrand::u16(..).to_be_bytes());
    let mut text = [0u8; uuid::fmt::Simple::LENGTH];
    let text: &str = uuid::Builder::from_unix_timestamp_millis(now_ms, &tail)
        .into_uuid()
        .simple()
        .encode_lower(&mut text);
    text.to_owned()
}

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    /// Waiting to start: held back by a concurrency limit, or waiting out
    /// the backoff before its next retry. Not started (for this attempt),
    /// not finished. Only in this process's view: a queued task has no
    /// durable record of this attempt yet.
    Queued,
    /// Started and not finished.
    Running,
    /// Finished with a result. Terminal.
    Completed,
    /// Finished with an error (including a panic). Terminal.
    Failed,
    /// Ended by a cancellation request. Terminal.
    Cancelled,
    /// Interrupted and resumable: not terminal, a later attempt may resume it.
    Stopped,
}

impl TaskStatus {
    /// The lowercase name, as serialized: `"running"`, `"completed"`...
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Stopped => "stopped",
        }
    }

    /// Whether no later write can change this outcome: completed, failed
    /// or cancelled. `stopped` is not terminal (it can be resumed).
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }

    /// Whether the task has finished its run (terminal or stopped): not
    /// queued, not running.
    pub fn is_finished(self) -> bool {
        !matches!(self, Self::Running | Self::Queued)
    }
}

impl std::fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// What a task's future returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TaskResult {
    /// It succeeded with this value: the task ends `completed`.
    Success(Value),
    /// It failed with this message: the task ends `failed`.
    Failed(String),
    /// It gave up after seeing its cancellation: the task ends `cancelled`.
    Cancelled,
    /// It was interrupted and can be resumed: the task ends `stopped`.
    Stopped,
}

impl TaskResult {
    /// The status a task ends with when its future returns this result
    /// (unless a cancellation was requested, which makes it `cancelled`).
    pub fn status(&self) -> TaskStatus {
        match self {
            Self::Success(_) => TaskStatus::Completed,
            Self::Failed(_) => TaskStatus::Failed,
            Self::Cancelled => TaskStatus::Cancelled,
            Self::Stopped => TaskStatus::Stopped,
        }
    }
}

/// What the manager reports about one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSummary {
    /// The task's id.
    pub task_id: TaskId,
    /// Its type (`"shell"`, `"agent_run"`...).
    pub task_type: String,
    /// Its description, for people.
    pub description: String,
    /// Its status.
    pub status: TaskStatus,
    /// Why it failed, when it did.
    pub error: Option<String>,
    /// Its result, when it completed.
    pub result: Option<Value>,
    /// When it was spawned, in milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// When it finished, in milliseconds since the Unix epoch.
    pub completed_at_ms: Option<u64>,
    /// The task that spawned it, if any.
    pub parent_task_id: Option<TaskId>,
    /// Whether it can be resumed after an interruption (by default, tasks
    /// of type `agent_run`; see
    /// [`resumable_types`](crate::BackgroundTaskManagerBuilder::resumable_types)).
    pub supports_resume: bool,
    /// Its attempt number, from 1; a resume, a retry or a re-spawn of the
    /// same id starts the next one. It is the durable attempt: with a task
    /// store, a re-spawn of an id the manager no longer holds reads the
    /// record first, so this is right from the start.
    pub attempt: u32,
    /// The caller's metadata.
    pub metadata: Value,
    /// Why the task's state is not durable yet: the last error of a write
    /// to the task store that has not succeeded, or a note that a write has
    /// been pending longer than the manager's
    /// [`persistence_warn_after`](crate::BackgroundTaskManagerBuilder::persistence_warn_after)
    /// (a store that hangs). `None` when every write is durable, or is young
    /// and has not failed (or no store is used); after
    /// [`flush`](crate::BackgroundTaskManager::flush) returns, `None` means
    /// durable.
    pub persistence_error: Option<String>,
}

/// How far a running task has come, as it reported with
/// [`TaskContext::progress`](crate::TaskContext::progress).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// The fraction done, from 0.0 to 1.0, when the task knows it.
    pub fraction: Option<f64>,
    /// What it is doing, for people.
    pub message: Option<String>,
    /// When it reported this (ms since the Unix epoch).
    pub at_ms: u64,
}

/// Parameters of [`BackgroundTaskManager::spawn_with_id`](crate::BackgroundTaskManager::spawn_with_id).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SpawnParams {
    /// The task's id.
    pub task_id: TaskId,
    /// The owner (usually a conversation thread).
    pub owner_thread_id: String,
    /// The task's type.
    pub task_type: String,
    /// Its description.
    pub description: String,
    /// The task that spawns it, for [`cancel_tree`](crate::BackgroundTaskManager::cancel_tree).
    pub parent_task_id: Option<TaskId>,
    /// Free-form metadata (JSON), at most [`MAX_METADATA_BYTES`](crate::MAX_METADATA_BYTES) encoded.
    pub metadata: Value,
}

/// A task record created ahead of a spawn with
/// [`TaskStore::create_task`](crate::TaskStore::create_task).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NewTaskSpec {
    /// The task's id.
    pub task_id: TaskId,
    /// The owner.
    pub owner_thread_id: String,
    /// The task's type.
    pub task_type: String,
    /// Its description.
    pub description: String,
    /// The task that spawns it.
    pub parent_task_id: Option<TaskId>,
    /// Whether it can be resumed after an interruption.
    pub supports_resume: bool,
    /// Free-form metadata (JSON).
    pub metadata: Value,
}

/// Milliseconds since the Unix epoch, from the system clock.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
