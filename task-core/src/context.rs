//! [`TaskContext`]: what a running task gets from the manager.

use std::sync::{Arc, OnceLock, Weak};

use serde_json::Value;
use tokio_util::sync::WaitForCancellationFuture;

use crate::RunCancellationToken;
use crate::manager::{Inner, TaskSlot};

/// Handed to a task's closure: its identity, its cancellation, and a way to
/// report output.
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
    pub(crate) inner: Weak<Inner>,
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

    /// Reports output or progress: subscribers receive it as a
    /// [`TaskEventKind::Output`](crate::TaskEventKind::Output) event, and with
    /// a task store it is appended to the task's durable log, in order with
    /// its transitions. Ignored once the task has finished.
    pub fn emit(&self, value: Value) {
        if let Some(inner) = self.inner.upgrade() {
            inner.emit_output(&self.slot, value);
        }
    }
}
