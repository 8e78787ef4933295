//! One epoch of one task, as the core holds it and as its code sees it: its
//! identity and locked state ([`TaskSlot`], [`Entry`]), its policy and the
//! work it runs ([`SlotPolicy`], [`Work`]), and the [`TaskContext`] handed
//! to that work. These types refer to one another (a slot's policy holds
//! work that takes a context that holds the slot), so they live together.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::Value;
use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tokio_util::sync::WaitForCancellationFuture;

use crate::{
    Progress, RetryPolicy, RunCancellationToken, TaskError, TaskId, TaskResult, TaskStatus,
    TaskSummary,
};

/// One owner, shared by its index and by every one of its tasks' slots.
#[derive(Debug)]
pub(crate) struct OwnerShared {
    pub(crate) name: Arc<str>,
    /// How many of the owner's tasks are running.
    pub(crate) running: AtomicUsize,
}

/// One epoch of one task: its immutable identity and its locked state.
#[derive(Debug)]
pub(crate) struct TaskSlot {
    pub(crate) task_id: TaskId,
    pub(crate) owner: Arc<OwnerShared>,
    pub(crate) task_type: Arc<str>,
    pub(crate) description: String,
    pub(crate) parent_task_id: Option<TaskId>,
    /// The task's metadata as JSON text (`None` for `null`): a small JSON
    /// object as a `Value` costs several hundred bytes (a `BTreeMap` node
    /// holds room for eleven entries), as text a few dozen. Written by
    /// [`metadata_text`], so it parses back.
    pub(crate) metadata: Option<Box<str>>,
    pub(crate) created_at_ms: u64,
    pub(crate) supports_resume: bool,
    /// Its attempt, known when it starts (with a store: the durable one).
    pub(crate) attempt: u32,
    /// The unique id of the start of this epoch, written in its durable
    /// record (with a store), so recovery knows a record is this epoch's.
    pub(crate) run_id: Option<Box<str>>,
    /// Unique per spawn: the epoch of this slot and its place in the owner's
    /// creation order.
    pub(crate) seq: u64,
    /// Its timeout, retry policy and work to run again, when it has any.
    pub(crate) policy: Option<Box<SlotPolicy>>,
    /// Woken when the task stops running.
    pub(crate) finished: Notify,
    /// The task's mutable state; see [`lock`](Self::lock).
    pub(crate) state: Mutex<Entry>,
}

impl TaskSlot {
    /// The owner's id.
    pub(crate) fn owner(&self) -> &str {
        &self.owner.name
    }

    /// Locks the task's state. Every change is complete at each unlock, so
    /// a poisoned lock is still consistent and is recovered.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Entry> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records that the task stopped running (once: callers check the status
    /// they changed from).
    pub(crate) fn stopped_running(&self) {
        self.owner.running.fetch_sub(1, Ordering::AcqRel);
    }

    /// Whether nothing can run this task again: terminal, or stopped
    /// without support for resume.
    pub(crate) fn is_closed(&self, entry: &Entry) -> bool {
        entry.status.is_terminal() || (entry.status == TaskStatus::Stopped && !self.supports_resume)
    }

    /// The task's metadata, parsed from its text.
    pub(crate) fn metadata_value(&self) -> Value {
        self.metadata
            .as_deref()
            .and_then(|text| serde_json::from_str(text).ok())
            .unwrap_or(Value::Null)
    }

    /// The task's summary as of `entry` (this slot's locked state).
    pub(crate) fn summary(&self, entry: &Entry) -> TaskSummary {
        TaskSummary {
            task_id: self.task_id.clone(),
            task_type: self.task_type.to_string(),
            description: self.description.clone(),
            status: entry.status,
            error: entry.error.clone(),
            result: entry.result.clone(),
            created_at_ms: self.created_at_ms,
            completed_at_ms: entry.completed_at_ms,
            parent_task_id: self.parent_task_id.clone(),
            supports_resume: self.supports_resume,
            attempt: self.attempt,
            metadata: self.metadata_value(),
            persistence_error: entry.persistence_error.clone(),
        }
    }

    /// The task's cancellation token, made on first use. A task spawned
    /// without a caller's token gets one only when something asks for it (its
    /// context, mostly); it is born cancelled when the task's cancellation
    /// was already requested or the task no longer runs.
    pub(crate) fn token(&self) -> RunCancellationToken {
        let mut entry = self.lock();
        if let Some(token) = &entry.token {
            return token.clone();
        }
        let token = RunCancellationToken::new();
        if entry.cancel_requested || entry.shutting_down || entry.status != TaskStatus::Running {
            token.cancel();
        } else {
            entry.token = Some(token.clone());
        }
        token
    }
}

/// Metadata as compact JSON text; `None` for `null`.
pub(crate) fn metadata_text(metadata: &Value) -> Option<Box<str>> {
    if metadata.is_null() {
        return None;
    }
    serde_json::to_string(metadata)
        .ok()
        .map(String::into_boxed_str)
}

/// The mutable state of one task.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) status: TaskStatus,
    pub(crate) error: Option<String>,
    pub(crate) result: Option<Value>,
    pub(crate) completed_at_ms: Option<u64>,
    /// The last write error, or why a write is late; see `TaskSummary`.
    pub(crate) persistence_error: Option<String>,
    pub(crate) progress: Option<Progress>,
    /// The caller's token, or the one made on first use; dropped once the
    /// task has finished: nothing cancels it any more.
    pub(crate) token: Option<RunCancellationToken>,
    pub(crate) cancel_requested: bool,
    /// Interrupted by `shutdown`, not cancelled by a caller.
    pub(crate) shutting_down: bool,
    pub(crate) abort: Option<AbortHandle>,
    /// Its entry in the reaper's queue while a cancel grace runs.
    pub(crate) reap: Option<u64>,
    /// Callers inside `wait` for this epoch: the task is never collected
    /// while there are any.
    pub(crate) waiters: u32,
    /// Store writes queued and not yet resolved, over all epochs of the id.
    pub(crate) pending_writes: u32,
    /// Since when the oldest unresolved write has been pending.
    pub(crate) pending_since: Option<Instant>,
    /// Whether the owner's count of closed tasks includes this one.
    pub(crate) counted_closed: bool,
    /// Its timeout passed: its cancellation was requested for that.
    pub(crate) timed_out: bool,
    /// Rarely used state: the work of a queued task, checkpoints.
    pub(crate) extra: Option<Box<EntryExtra>>,
    /// Outputs emitted by this epoch so far.
    pub(crate) output_seq: u64,
    /// Without a task store: the outputs kept for `output` (a bounded tail).
    /// Boxed: most tasks never emit, and an empty `Option<Box<_>>` costs a
    /// word where an empty `VecDeque` costs four, in every task's entry.
    #[allow(clippy::box_collection)]
    pub(crate) outputs: Option<Box<VecDeque<(u64, Value)>>>,
}

/// The rarely used part of a task's state, boxed out of every entry.
#[derive(Debug, Default)]
pub(crate) struct EntryExtra {
    /// A queued task's work, taken when it starts.
    pub(crate) work: Option<Work>,
    /// The last checkpoint of this epoch.
    pub(crate) checkpoint: Option<Value>,
    /// Checkpoints made by this epoch so far.
    pub(crate) checkpoint_seq: u64,
}

impl Entry {
    /// The rarely used part, made on first use.
    pub(crate) fn extra(&mut self) -> &mut EntryExtra {
        self.extra.get_or_insert_with(Box::default)
    }

    /// The state of a task that starts running now.
    pub(crate) fn running(token: Option<RunCancellationToken>, pending_writes: u32) -> Self {
        Self {
            status: TaskStatus::Running,
            error: None,
            result: None,
            completed_at_ms: None,
            persistence_error: None,
            progress: None,
            token,
            cancel_requested: false,
            shutting_down: false,
            abort: None,
            reap: None,
            waiters: 0,
            pending_writes,
            pending_since: (pending_writes > 0).then(Instant::now),
            counted_closed: false,
            timed_out: false,
            extra: None,
            output_seq: 0,
            outputs: None,
        }
    }

    /// Counts `n` more writes pending.
    pub(crate) fn add_pending(&mut self, n: u32) {
        if self.pending_writes == 0 {
            self.pending_since = Some(Instant::now());
        }
        self.pending_writes += n;
    }

    /// Counts `n` writes resolved (durable or given up).
    pub(crate) fn resolve_pending(&mut self, n: u32) {
        self.pending_writes = self.pending_writes.saturating_sub(n);
        if self.pending_writes == 0 {
            self.pending_since = None;
        }
    }
}

/// Work that can run again (a handler, or a `spawn_request` closure).
pub(crate) type SharedRun =
    Arc<dyn Fn(TaskContext) -> BoxFuture<'static, TaskResult> + Send + Sync>;

/// Work that runs once (a `spawn` closure held while its task is queued).
pub(crate) type OnceRun = Box<dyn FnOnce(TaskContext) -> BoxFuture<'static, TaskResult> + Send>;

/// What a task runs.
pub(crate) enum Work {
    Once(OnceRun),
    Shared(SharedRun),
}

impl Work {
    /// A `spawn` closure, boxed (only when its task must wait in a queue).
    pub(crate) fn once<F, Fut>(f: F) -> Self
    where
        F: FnOnce(TaskContext) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = TaskResult> + Send + 'static,
    {
        Self::Once(Box::new(move |ctx| Box::pin(f(ctx))))
    }

    pub(crate) fn run(self, ctx: TaskContext) -> BoxFuture<'static, TaskResult> {
        match self {
            Self::Once(f) => f(ctx),
            Self::Shared(f) => f(ctx),
        }
    }
}

impl fmt::Debug for Work {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Once(_) => "Work::Once",
            Self::Shared(_) => "Work::Shared",
        })
    }
}

/// What a task with a policy carries, beside its identity.
#[derive(Clone, Default)]
pub(crate) struct SlotPolicy {
    pub(crate) timeout: Option<Duration>,
    pub(crate) retry: Option<RetryPolicy>,
    /// The work to run again for a retry.
    pub(crate) work: Option<SharedRun>,
    /// The caller's token, handed to every attempt.
    pub(crate) token: Option<RunCancellationToken>,
    /// The last checkpoint of the attempt before this one.
    pub(crate) previous_checkpoint: Option<Value>,
}

impl fmt::Debug for SlotPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlotPolicy")
            .field("timeout", &self.timeout)
            .field("retry", &self.retry)
            .field("work", &self.work.as_ref().map(|_| "Fn"))
            .finish_non_exhaustive()
    }
}

impl SlotPolicy {
    /// The delay before the next attempt, when this failure is retried.
    pub(crate) fn retry_after(&self, attempt: u32, error: &str) -> Option<Duration> {
        let retry = self.retry.as_ref()?;
        self.work.as_ref()?;
        (attempt < retry.max_attempts && retry.retries(error))
            .then(|| retry.delay_before(attempt + 1))
    }
}

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
    /// The task's metadata, parsed on first use.
    pub(crate) metadata: OnceLock<Value>,
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
        self.metadata.get_or_init(|| self.slot.metadata_value())
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
