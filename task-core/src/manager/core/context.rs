//! [`TaskContext`]: what a running task gets from the manager.

use std::sync::{Arc, OnceLock, Weak};

use serde_json::Value;
use tokio_util::sync::WaitForCancellationFuture;

use super::registry::TaskSlot;
use crate::{RunCancellationToken, TaskError};

/// What a task's context reports to: the manager's core, seen through the
/// only calls a running task makes.
pub(crate) trait TaskHost: Send + Sync + std::fmt::Debug {
    /// Output the task emitted.
    fn output(&self, slot: &TaskSlot, value: Value) -> Result<(), TaskError>;
    /// A progress report.
    fn progress(&self, slot: &TaskSlot, fraction: Option<f64>, message: Option<String>);
    /// A checkpoint.
    fn checkpoint(&self, slot: &TaskSlot, value: Value) -> Result<(), TaskError>;
}

/// Handed to a task's closure: its identity, its cancellation, and a way to
/// report output and progress.
///
/// A task should watch [`cancelled`](Self::cancelled) (in a `select!`) or
/// check [`is_cancelled`](Self::is_cancelled) between steps, and return
/// promptly once cancelled; a task that does not is dropped after the
/// manager's cancel grace and ends `cancelled` anyway.
///
/// A context is cheap: it points at the task's record in the manager, and
/// its cancellation token is made the first time it is asked for.
#[derive(Debug, Clone)]
pub struct TaskContext {
    pub(crate) slot: Arc<TaskSlot>,
    pub(crate) host: Weak<dyn TaskHost>,
    /// The task's token, once known here (the caller's from the start).
    pub(crate) token: OnceLock<RunCancellationToken>,
}

impl TaskContext {
    /// The task's id.
    pub fn task_id(&self) -> &str {
        &self.slot.task_id
    }

    /// The task's owner.
    pub fn owner_thread_id(&self) -> &str {
        self.slot.owner()
    }

    /// The attempt this run is (from 1; see
    /// [`TaskSummary::attempt`](crate::TaskSummary::attempt)).
    pub fn attempt(&self) -> u32 {
        self.slot.attempt
    }

    /// The task's metadata: its input, for a task started with
    /// [`submit`](crate::BackgroundTaskManager::submit) (`null` when none).
    pub fn metadata(&self) -> &Value {
        static NULL: Value = Value::Null;
        self.slot.metadata.as_deref().unwrap_or(&NULL)
    }

    /// The last checkpoint the attempt before this one saved (see
    /// [`checkpoint`](Self::checkpoint)): where a resumed or retried attempt
    /// picks up. `None` for a first attempt, or when none was saved.
    pub fn last_checkpoint(&self) -> Option<&Value> {
        self.slot
            .policy
            .as_ref()
            .and_then(|p| p.previous_checkpoint.as_ref())
    }

    /// Saves a checkpoint: a state the task can resume from. With a task
    /// store it is written to the task's record (and log) in order with its
    /// other writes, so the next attempt, in this process or another, reads
    /// it with [`last_checkpoint`](Self::last_checkpoint). Checkpoints are
    /// kept across attempts until a new one replaces them.
    ///
    /// # Errors
    ///
    /// `InvalidInput` when the value is nested deeper than
    /// [`MAX_JSON_DEPTH`](crate::MAX_JSON_DEPTH); `NotRunning` once the task
    /// has finished.
    pub fn checkpoint(&self, value: Value) -> Result<(), TaskError> {
        match self.host.upgrade() {
            Some(host) => host.checkpoint(&self.slot, value),
            None => Err(TaskError::ShuttingDown),
        }
    }

    /// Resolves when the task's cancellation has been requested.
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.token().cancelled()
    }

    /// Whether the task's cancellation has been requested.
    pub fn is_cancelled(&self) -> bool {
        self.token().is_cancelled()
    }

    /// The task's cancellation token, to hand to work it starts (a child
    /// token of it is cancelled with it). Cancelling it is a cancellation
    /// request: the task ends `cancelled` whatever it returns. (A task
    /// spawned with [`spawn`](crate::BackgroundTaskManager::spawn) that
    /// cancels this token itself is not dropped after the cancel grace: it
    /// is its own code that goes on running. The grace starts with `cancel`,
    /// `cancel_tree`, a cancel from another process, or a caller's token
    /// given to `spawn_with_id` being cancelled.)
    pub fn token(&self) -> &RunCancellationToken {
        self.token.get_or_init(|| self.slot.token())
    }

    /// Reports output: subscribers receive it as a
    /// [`TaskEventKind::Output`](crate::TaskEventKind::Output) event, and with
    /// a task store it is appended to the task's durable log, in order with
    /// its transitions (read it back with
    /// [`BackgroundTaskManager::output`](crate::BackgroundTaskManager::output)).
    /// Ignored once the task has finished. Output that
    /// [`try_emit`](Self::try_emit) would refuse is dropped with a warning in
    /// the log; use `try_emit` to know.
    pub fn emit(&self, value: Value) {
        if let Err(error) = self.try_emit(value) {
            tracing::warn!(task_id = %self.slot.task_id, %error, "output dropped");
        }
    }

    /// Reports output as [`emit`](Self::emit) does, and says when it was not
    /// taken.
    ///
    /// # Errors
    ///
    /// `InvalidInput` when the value is nested deeper than
    /// [`MAX_JSON_DEPTH`](crate::MAX_JSON_DEPTH) (nothing is reported);
    /// `Backpressure` when the persistence outbox is full (subscribers got
    /// the event, the store will not have it); `NotRunning` once the task
    /// has finished.
    pub fn try_emit(&self, value: Value) -> Result<(), TaskError> {
        match self.host.upgrade() {
            Some(host) => host.output(&self.slot, value),
            None => Err(TaskError::ShuttingDown),
        }
    }

    /// Reports how far the task has come: a fraction from 0.0 to 1.0 (when it
    /// knows one; values outside are clamped) and/or a message. The last
    /// report is read with
    /// [`BackgroundTaskManager::progress`](crate::BackgroundTaskManager::progress)
    /// (beside the task's summary, while it runs and after) and is sent to
    /// subscribers as a
    /// [`TaskEventKind::Progress`](crate::TaskEventKind::Progress) event.
    /// Progress is live state, not history: it is not written to the store.
    pub fn progress(&self, fraction: Option<f64>, message: Option<&str>) {
        if let Some(host) = self.host.upgrade() {
            host.progress(&self.slot, fraction, message.map(str::to_owned));
        }
    }
}
