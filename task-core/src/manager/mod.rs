//! [`BackgroundTaskManager`]: the live registry of one process, and its
//! public API. This file is the manager's table of contents: each call
//! checks its input and hands the work to the two layers below it.
//!
//! | module | holds |
//! |---|---|
//! | `builder` | the configuration, checked as a whole at `build` |
//! | `core` | the local core: registry, supervision, the task context |
//! | `outbox` | the persistence outbox (part of the local core) |
//! | `distributed` | the cross-process layer: leases, inbox, recovery, remote control |
//! | `background` | the owner of the manager's background tasks |
//! | `clock` | the manager's clock |

mod background;
mod builder;
mod clock;
pub(crate) mod core;
mod distributed;
mod outbox;

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use serde_json::Value;
use tokio::sync::broadcast;
use tokio::time::Instant;

use self::core::context::TaskContext;
use self::core::{Core, Durable, Launch, plan_from_record};
use self::distributed::{Distributed, sort_by_creation, summary_of};
use crate::model::new_task_id_at;
use crate::records::Known;
use crate::state::{Rejection, Transition};
use crate::{
    OutputEntry, OutputPage, RunCancellationToken, SpawnParams, TaskError, TaskEvent,
    TaskEventKind, TaskId, TaskResult, TaskStatus, TaskStore, TaskSummary, new_task_id, validate,
};

pub use self::builder::{
    BackgroundTaskManagerBuilder, DEFAULT_CANCEL_GRACE, DEFAULT_LEASE_TTL, DEFAULT_OUTBOX_LIMIT,
    OutboxFull, RetentionPolicy,
};
pub use self::core::registry::ManagerStats;
pub use self::distributed::recovery::RecoveryReport;
pub use self::outbox::PendingWrite;

/// The live registry of background tasks of one process.
///
/// Tasks belong to an owner (usually a conversation thread). Every call names
/// the owner, and another owner's task looks exactly like an unknown one.
/// Cloning the manager gives another handle to the same registry.
///
/// # Costs
///
/// `spawn` takes one short lock and never touches the store. `get`,
/// `contains` and `cancel` of a task held here cost O(1); `list`,
/// `list_by_type` and `gc_terminal` cost the owner's task count;
/// `has_running_tasks` is O(1); `cancel_tree` costs the size of the tree.
/// With a task store, a multi-process manager (see the builder) also reads
/// the owner's *open* durable records (running or resumable, from the store's
/// index of open records) for `cancel_tree`, `list_including_durable`, and
/// for `get`, `wait` and `cancel` of a task it does not hold: the cost of
/// the owner's live work, never of its history. A single-process manager
/// answers those from memory.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), task_core::TaskError> {
/// use task_core::{BackgroundTaskManager, TaskResult, TaskStatus};
/// use serde_json::json;
///
/// let manager = BackgroundTaskManager::new();
/// let id = manager
///     .spawn("thread-1", "fetch", "fetch the weather", |_ctx| async {
///         TaskResult::Success(json!({ "temp_c": 21 }))
///     })
///     .await?;
/// let done = manager.wait("thread-1", &id).await.expect("the task is known");
/// assert_eq!(done.status, TaskStatus::Completed);
/// assert_eq!(done.result, Some(json!({ "temp_c": 21 })));
/// // Another owner cannot see it.
/// assert!(manager.get("thread-2", &id).await.is_none());
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct BackgroundTaskManager {
    core: Arc<Core>,
    remote: Option<Arc<Distributed>>,
}

/// What [`shutdown`](BackgroundTaskManager::shutdown) did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Tasks that ended within the grace period.
    pub finished: Vec<TaskId>,
    /// Tasks still running at the end of their part of the grace period:
    /// dropped and marked `stopped` (resumable) or `failed`.
    pub interrupted: Vec<TaskId>,
    /// Writes not durable when the grace period ended (the store was slow or
    /// down). They stay queued and are retried for as long as the manager
    /// lives; a process that exits now loses them, and recovery later
    /// settles the records they would have finished.
    pub not_durable: Vec<PendingWrite>,
    /// Whether this instance's lease record was removed (multi-process
    /// managers); when it was not, it simply expires.
    pub lease_released: bool,
}

/// What [`cancel_tree_report`](BackgroundTaskManager::cancel_tree_report)
/// did: the tasks whose cancellation it requested, and the failure of its
/// remote part, reported apart so that a store outage never keeps the local
/// part of a tree from being cancelled.
#[derive(Debug)]
#[non_exhaustive]
pub struct TreeCancellation {
    /// The tasks whose cancellation was requested, root first for the
    /// tasks held here, then those held by other processes.
    pub cancelled: Vec<TaskSummary>,
    /// Why the part of the tree held by other processes could not be
    /// (entirely) reached; `None` when it was, or when the manager is
    /// single-process.
    pub remote_error: Option<TaskError>,
}

/// A page of an owner's durable task records (see
/// [`list_durable_page`](BackgroundTaskManager::list_durable_page)).
#[derive(Debug, Clone, PartialEq)]
pub struct DurablePage {
    /// The records, in id order.
    pub tasks: Vec<TaskSummary>,
    /// The cursor of the next page; `None` at the end.
    pub next: Option<TaskId>,
}

/// [`flush_timeout`](BackgroundTaskManager::flush_timeout) ran out of time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} task(s) still have writes that are not durable", pending.len())]
pub struct FlushTimeout {
    /// The writes not durable yet, by task.
    pub pending: Vec<PendingWrite>,
}

impl Default for BackgroundTaskManager {
    fn default() -> Self {
        Self::new()
    }
}

impl BackgroundTaskManager {
    /// A manager without persistence.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// A manager that persists into `task_store` when one is given.
    pub fn with_task_store(task_store: Option<Arc<TaskStore>>) -> Self {
        match task_store {
            Some(store) => Self::builder().task_store(store).build(),
            None => Self::new(),
        }
    }

    /// Configures a manager.
    pub fn builder() -> BackgroundTaskManagerBuilder {
        BackgroundTaskManagerBuilder::default()
    }

    pub(crate) fn from_config(config: builder::Config) -> Self {
        let core = Core::new(&config);
        let remote = match (&config.task_store, config.multi_process) {
            (Some(store), true) => {
                let layer = Distributed::new(
                    &core,
                    Arc::clone(store),
                    config.instance_id.clone(),
                    config.leases,
                );
                let weak = Arc::downgrade(&layer);
                let _ = core
                    .on_durable_close
                    .set(core::CloseHook::new(move |task_id| {
                        if let Some(layer) = weak.upgrade() {
                            layer.task_closed(task_id);
                        }
                    }));
                Some(layer)
            }
            _ => None,
        };
        let manager = Self { core, remote };
        manager.touch();
        manager
    }

    /// Starts (or restarts, on this runtime) the background work a call may
    /// rely on.
    fn touch(&self) {
        if let Some(remote) = &self.remote {
            remote.ensure_started();
        }
    }

    /// The task store this manager persists into, if any.
    pub fn task_store(&self) -> Option<&Arc<TaskStore>> {
        self.core.outbox.as_ref().map(|o| o.store())
    }

    /// This manager's instance id: the lease holder named in the records of
    /// the tasks it runs.
    pub fn instance_id(&self) -> &str {
        &self.core.lease.holder
    }

    /// Whether this manager is configured for several processes (see
    /// [One process or several](BackgroundTaskManagerBuilder#one-process-or-several)).
    pub fn is_multi_process(&self) -> bool {
        self.remote.is_some()
    }

    // ---------------------------------------------------------------------
    // Spawning
    // ---------------------------------------------------------------------

    /// Spawns a task with a generated, time-ordered id and returns the id.
    ///
    /// `f` receives the task's [`TaskContext`] and returns the future to run;
    /// it runs in its own tokio task. The task is `running` until the future
    /// returns, then takes the status of its [`TaskResult`]. A panic ends it
    /// `failed` with the panic message. The store is never called: the start
    /// is queued for the outbox.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for an empty, over-long or control-character owner or
    /// type, or an over-long description; `ShuttingDown` after `shutdown`;
    /// `Backpressure` when the outbox is full and configured to refuse (it
    /// waits otherwise).
    pub async fn spawn<F, Fut>(
        &self,
        owner: &str,
        task_type: &str,
        description: &str,
        f: F,
    ) -> Result<TaskId, TaskError>
    where
        F: FnOnce(TaskContext) -> Fut + Send + 'static,
        Fut: Future<Output = TaskResult> + Send + 'static,
    {
        // The generated id is valid by construction; the rest is the caller's.
        validate::owner(owner)?;
        validate::task_type(task_type)?;
        validate::description(description)?;
        self.touch();
        let permit = self.core.admit_write().await?;
        let now_ms = self.core.clock.now_ms();
        let launch = Launch {
            task_id: new_task_id_at(now_ms),
            owner: owner.to_owned(),
            task_type: task_type.to_owned(),
            description: description.to_owned(),
            parent_task_id: None,
            metadata: Value::Null,
            supports_resume: self.core.type_supports_resume(task_type),
            attempt: Some(1),
            run_id: None,
            durable: Durable::Start(Known::Absent),
            now_ms,
            admitted: false,
        };
        self.core.launch(launch, None, permit, f)
    }

    /// Spawns a task with the caller's id, cancellation token, parent task and
    /// metadata.
    ///
    /// Cancelling `token` is a cancellation request, as `cancel` is. An id
    /// whose task is still running is refused; an id of the owner whose task
    /// has finished starts a new epoch (the next attempt), and anything the
    /// old epoch still reports is ignored. An id belongs to its first owner
    /// for good: another owner's id is refused, and nothing of that owner's
    /// task changes.
    ///
    /// With a task store, an id this manager does not hold (or any id, for a
    /// multi-process manager) is looked up in the store first: one read, so
    /// that another owner's id is refused at once and the attempt is the
    /// durable one. `spawn` (generated ids) never reads.
    ///
    /// # Errors
    ///
    /// `AlreadyRunning` when the id's task is running; `IdTaken` when the id
    /// belongs to another owner; `InvalidInput` for bad ids, an over-long
    /// description, or metadata over
    /// [`MAX_METADATA_BYTES`](crate::MAX_METADATA_BYTES) or nested deeper
    /// than [`MAX_JSON_DEPTH`](crate::MAX_JSON_DEPTH); `ShuttingDown`;
    /// `Backpressure`; `Store` when the store cannot be read (retryable ones
    /// may be retried; nothing was changed) or `Corrupt` when the id's record
    /// cannot be read.
    pub async fn spawn_with_id<F, Fut>(
        &self,
        params: SpawnParams,
        token: RunCancellationToken,
        f: F,
    ) -> Result<TaskId, TaskError>
    where
        F: FnOnce(TaskContext) -> Fut + Send + 'static,
        Fut: Future<Output = TaskResult> + Send + 'static,
    {
        let SpawnParams {
            task_id,
            owner_thread_id: owner,
            task_type,
            description,
            parent_task_id,
            metadata,
        } = params;
        validate::TaskInput {
            task_id: &task_id,
            owner: &owner,
            task_type: &task_type,
            description: &description,
            parent_task_id: parent_task_id.as_deref(),
            metadata: &metadata,
        }
        .check()?;
        self.touch();
        let held = match self.core.slot_of(&task_id) {
            Some(slot) if slot.owner() != owner => return Err(TaskError::IdTaken { task_id }),
            Some(slot) if slot.lock().status == TaskStatus::Running => {
                return Err(TaskError::AlreadyRunning { task_id });
            }
            held => held.is_some(),
        };
        let (attempt, durable) = match self.task_store() {
            Some(store) if self.remote.is_some() || !held => {
                let found = store.load_versioned(&task_id).await?;
                let (attempt, known) =
                    plan_from_record(&owner, &task_id, self.instance_id(), found)?;
                (Some(attempt), Durable::Start(known))
            }
            Some(_) => (None, Durable::Start(Known::Unknown)),
            None => (None, Durable::Nothing),
        };
        let permit = self.core.admit_write().await?;
        let launch = Launch {
            supports_resume: self.core.type_supports_resume(&task_type),
            task_id,
            owner,
            task_type,
            description,
            parent_task_id,
            metadata,
            attempt,
            run_id: None,
            durable,
            now_ms: self.core.clock.now_ms(),
            admitted: false,
        };
        self.core.launch(launch, Some(token), permit, f)
    }

    // ---------------------------------------------------------------------
    // Control
    // ---------------------------------------------------------------------

    /// Requests the cancellation of a running task. The task ends `cancelled`
    /// whatever it returns; if it does not return within the cancel grace it
    /// is dropped. A multi-process manager also reaches a task another
    /// process holds: when this returns Ok, the request is durable on the
    /// task's record and in the holder's inbox, and a live holder acts on it
    /// within its control poll interval.
    ///
    /// # Errors
    ///
    /// `UnknownTask` (`"Unknown task_id: <id>"`) when the owner has no such
    /// task; `NotRunning` (`"Task '<id>' is not running (current status:
    /// <s>)"`) when it has finished; `Store` when the request could not be
    /// written to the store for a task held elsewhere (retry it).
    pub async fn cancel(&self, owner: &str, task_id: &str) -> Result<(), TaskError> {
        self.touch();
        if let Some(result) = self.core.cancel(owner, task_id) {
            return result;
        }
        match &self.remote {
            Some(remote) => remote.cancel(owner, task_id).await.map(|_| ()),
            None => Err(TaskError::unknown(task_id)),
        }
    }

    /// Cancels a task and every running task of the same owner reachable from
    /// it through parent links (children, their children...). Safe against
    /// cycles; costs the size of the tree (plus, for a multi-process
    /// manager, the owner's open durable records, to find the parts held
    /// elsewhere). Returns the summaries of the tasks whose cancellation it
    /// requested, root first. The part of the tree held here is cancelled
    /// whatever the state of the store; see
    /// [`cancel_tree_report`](Self::cancel_tree_report) for the remote
    /// part's failure.
    ///
    /// # Errors
    ///
    /// `UnknownTask` when the owner has no such task; `NotRunning` when no
    /// task of the tree is running; `Store` when nothing was cancelled here
    /// and the remote part could not be reached.
    pub async fn cancel_tree(
        &self,
        owner: &str,
        task_id: &str,
    ) -> Result<Vec<TaskSummary>, TaskError> {
        let report = self.cancel_tree_report(owner, task_id).await?;
        match (report.cancelled.is_empty(), report.remote_error) {
            (true, Some(error)) => Err(error),
            (_, Some(error)) => {
                tracing::warn!(%error, task_id, "cancel_tree: the part held by other processes was not reached");
                Ok(report.cancelled)
            }
            (_, None) => Ok(report.cancelled),
        }
    }

    /// [`cancel_tree`](Self::cancel_tree), with the failure of its remote
    /// part reported apart from what it cancelled.
    ///
    /// # Errors
    ///
    /// `UnknownTask` when the owner has no such task (here, or durably for a
    /// multi-process manager whose store answers); `NotRunning` when no task
    /// of the tree is running and nothing failed.
    pub async fn cancel_tree_report(
        &self,
        owner: &str,
        task_id: &str,
    ) -> Result<TreeCancellation, TaskError> {
        self.touch();
        let (mut root_status, local_ids) = self.core.local_tree(owner, task_id);
        let mut cancelled = self.core.cancel_each(owner, &local_ids);
        let mut remote_error = None;
        if let Some(remote) = &self.remote {
            if root_status.is_none() {
                match remote.record(owner, task_id).await {
                    Ok(record) => root_status = record.map(|r| r.status),
                    Err(e) => remote_error = Some(e),
                }
            }
            if remote_error.is_none() && root_status.is_some() {
                match remote.remote_tree(&self.core, owner, task_id).await {
                    Ok(records) => {
                        let (more, error) = remote.cancel_all(owner, records).await;
                        cancelled.extend(more);
                        remote_error = error;
                    }
                    Err(e) => remote_error = Some(e),
                }
            }
        }
        let Some(root_status) = root_status else {
            return match remote_error {
                Some(error) if cancelled.is_empty() => Err(error),
                _ => Err(TaskError::unknown(task_id)),
            };
        };
        if cancelled.is_empty() && remote_error.is_none() {
            return Err(TaskError::NotRunning {
                task_id: task_id.to_owned(),
                status: root_status,
            });
        }
        Ok(TreeCancellation {
            cancelled,
            remote_error,
        })
    }

    /// Sets the status of one of the owner's tasks held here from outside
    /// (for example when the work it stands for was finished by other
    /// means): the owner-scoped way, and the one to use. A running task set
    /// to another status has its cancellation requested (so its work stops)
    /// and whatever it returns later is ignored; the new status is written
    /// to the store like any other.
    ///
    /// # Errors
    ///
    /// `UnknownTask` when the owner has no such task here; `InvalidInput`
    /// for `running` (a task cannot be set running from outside) or an error
    /// message nested or sized wrongly; `NotRunning` when the task is
    /// terminal already (terminal outcomes are write-once) or has that
    /// status already.
    pub async fn set_status(
        &self,
        owner: &str,
        task_id: &str,
        status: TaskStatus,
        error: Option<String>,
    ) -> Result<(), TaskError> {
        if status == TaskStatus::Running {
            return Err(TaskError::InvalidInput {
                reason: "status cannot be set to running from outside; spawn or resume the task"
                    .to_owned(),
            });
        }
        let slot = self
            .core
            .slot(owner, task_id)
            .ok_or_else(|| TaskError::unknown(task_id))?;
        let current = slot.lock().status;
        if self.core.set_status(&slot, status, error) {
            Ok(())
        } else {
            Err(TaskError::NotRunning {
                task_id: task_id.to_owned(),
                status: current,
            })
        }
    }

    /// Sets a task's status from outside, whoever owns it: a privileged
    /// call, kept for compatibility, that ignores owner scoping. Prefer
    /// [`set_status`](Self::set_status), which names the owner. Returns
    /// `false` when the id is unknown here, the status is `running`, or the
    /// task is already terminal (terminal outcomes are write-once).
    pub async fn update_status(
        &self,
        task_id: &str,
        status: TaskStatus,
        error: Option<String>,
    ) -> bool {
        if status == TaskStatus::Running {
            return false;
        }
        match self.core.slot_of(task_id) {
            Some(slot) => self.core.set_status(&slot, status, error),
            None => false,
        }
    }

    // ---------------------------------------------------------------------
    // Reading
    // ---------------------------------------------------------------------

    /// The summary of one of the owner's tasks: held here, or (for a
    /// multi-process manager) from its durable record.
    pub async fn get(&self, owner: &str, task_id: &str) -> Option<TaskSummary> {
        if let Some(slot) = self.core.slot(owner, task_id) {
            return Some(self.core.summary(&slot));
        }
        let remote = self.remote.as_ref()?;
        match remote.record(owner, task_id).await {
            Ok(record) => record.as_ref().map(summary_of),
            Err(error) => {
                tracing::debug!(%error, task_id, "get: the durable record cannot be read");
                None
            }
        }
    }

    /// Waits until one of the owner's tasks is no longer running (terminal or
    /// stopped) and returns its summary; `None` when the owner has no such
    /// task. Waiting on a task held here never polls, and a task being
    /// waited on is never collected by retention or `gc_terminal`. A
    /// multi-process manager also waits for a task held by another process
    /// (or only durable): woken by the store's signal when the holder's
    /// write closes it, and looking at the record every control poll
    /// interval otherwise.
    pub async fn wait(&self, owner: &str, task_id: &str) -> Option<TaskSummary> {
        if let Some(slot) = self.core.slot(owner, task_id) {
            return Some(self.core.wait(slot).await);
        }
        self.touch();
        self.remote.as_ref()?.wait(owner, task_id).await
    }

    /// The owner's tasks in creation order, optionally only those with
    /// `status`.
    pub async fn list(&self, owner: &str, status: Option<TaskStatus>) -> Vec<TaskSummary> {
        self.core
            .list(owner, |_, e| status.is_none_or(|st| e.status == st))
    }

    /// The owner's tasks of one type, optionally only those with `status`.
    pub async fn list_by_type(
        &self,
        owner: &str,
        task_type: &str,
        status: Option<TaskStatus>,
    ) -> Vec<TaskSummary> {
        self.core.list(owner, |s, e| {
            &*s.task_type == task_type && status.is_none_or(|st| e.status == st)
        })
    }

    /// The owner's tasks as [`list`](Self::list) reports them, plus the
    /// owner's *open* durable records (running or resumable) that this
    /// instance does not hold: tasks run by other processes, and tasks an
    /// earlier life of this process left running or stopped. Costs the
    /// owner's live work, never its history; page through every durable
    /// record, finished ones included, with
    /// [`list_durable_page`](Self::list_durable_page). Without a task store
    /// it is `list`.
    ///
    /// # Errors
    ///
    /// `Store` when the owner's open records cannot be listed. A single
    /// corrupt record is skipped, not an error.
    pub async fn list_including_durable(
        &self,
        owner: &str,
        status: Option<TaskStatus>,
    ) -> Result<Vec<TaskSummary>, TaskError> {
        let mut out = self.list(owner, status).await;
        let Some(store) = self.task_store() else {
            return Ok(out);
        };
        if validate::owner(owner).is_err() || status.is_some_and(|s| s.is_terminal()) {
            // Terminal records are not open: nothing more to add.
            return Ok(out);
        }
        let open = store.list_open_tasks(owner).await?;
        let held: HashSet<TaskId> = open
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .filter(|r| self.core.slot(owner, &r.task_id).is_some())
            .map(|r| r.task_id.clone())
            .collect();
        let mut durable: Vec<TaskSummary> = open
            .into_iter()
            .filter_map(Result::ok)
            .filter(|r| !held.contains(&r.task_id))
            .filter(|r| status.is_none_or(|s| r.status == s))
            .map(|r| summary_of(&r))
            .collect();
        sort_by_creation(&mut durable);
        out.extend(durable);
        Ok(out)
    }

    /// A page of every durable record of the owner, finished ones included,
    /// in id order, after `after` (`None` for the first page), at most
    /// `limit` (clamped to 1..=1000; 0 means 100). Costs the page.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a bad owner; `Store` when the store fails. A
    /// single corrupt record is skipped.
    pub async fn list_durable_page(
        &self,
        owner: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<DurablePage, TaskError> {
        let Some(store) = self.task_store() else {
            return Ok(DurablePage {
                tasks: Vec::new(),
                next: None,
            });
        };
        let (ids, next) = store.page_task_ids(owner, after, limit).await?;
        let tasks = store
            .load_many(ids)
            .await
            .into_iter()
            .filter_map(|(_, loaded)| loaded.ok().flatten())
            .filter(|found| found.record.owner_thread_id == owner)
            .map(|found| summary_of(&found.record))
            .collect();
        Ok(DurablePage { tasks, next })
    }

    /// Reads a page of one of the owner's task's output, in the order it was
    /// emitted: the entries after cursor `after` (0 for the start), at most
    /// `limit` (clamped as store pages are). Pass the page's `next` to read
    /// on; a UI that reconnects passes the last cursor it showed.
    ///
    /// With a task store the output is read from the task's durable log, so
    /// it is there after a restart, and in any process; an output shows once
    /// its write is durable ([`flush`](Self::flush) waits for that). Without
    /// a store, the last 1,024 outputs of each task held here are kept.
    ///
    /// # Errors
    ///
    /// `UnknownTask` when the owner has no such task; `Store` when the store
    /// fails.
    pub async fn output(
        &self,
        owner: &str,
        task_id: &str,
        after: u64,
        limit: usize,
    ) -> Result<OutputPage, TaskError> {
        let slot = self.core.slot(owner, task_id);
        let Some(store) = self.task_store() else {
            return match slot {
                Some(slot) => Ok(self.core.local_output(&slot, after, limit)),
                None => Err(TaskError::unknown(task_id)),
            };
        };
        if slot.is_none() {
            // Not held here: the owner must own the durable record.
            let owned = store
                .load_task(task_id)
                .await
                .map_err(|e| match e {
                    TaskError::InvalidInput { .. } => TaskError::unknown(task_id),
                    other => other,
                })?
                .is_some_and(|r| r.owner_thread_id == owner);
            if !owned {
                return Err(TaskError::unknown(task_id));
            }
        }
        store.read_output(task_id, after, limit).await
    }

    /// The output of one of the owner's tasks as a stream for a UI: what is
    /// there after `after`, then each new output as it becomes readable,
    /// until the task is no longer running and everything it emitted has
    /// been yielded. Event-driven for a task held here; for a task held
    /// elsewhere it looks every control poll interval.
    pub fn output_stream(
        &self,
        owner: &str,
        task_id: &str,
        after: u64,
    ) -> impl Stream<Item = Result<OutputEntry, TaskError>> + Send + 'static {
        let manager = self.clone();
        let owner = owner.to_owned();
        let task_id = task_id.to_owned();
        let events = self.core.subscribe();
        let state = OutputStream {
            manager,
            owner,
            task_id,
            after,
            buffered: std::collections::VecDeque::new(),
            events,
            done: false,
        };
        futures::stream::unfold(state, |mut state| async move {
            let item = state.next().await?;
            Some((item, state))
        })
    }

    /// The last progress report of one of the owner's tasks held here
    /// ([`TaskContext::progress`]), while it runs and after; `None` when it
    /// reported none (or the owner has no such task here). Progress is live
    /// state: it is not written to the store.
    pub async fn progress(&self, owner: &str, task_id: &str) -> Option<crate::Progress> {
        let slot = self.core.slot(owner, task_id)?;
        slot.lock().progress.clone()
    }

    /// Whether the owner has a running task. O(1).
    pub async fn has_running_tasks(&self, owner: &str) -> bool {
        self.core.has_running(owner)
    }

    /// Whether the owner has a task with this id here.
    pub async fn contains(&self, owner: &str, task_id: &str) -> bool {
        self.core.slot(owner, task_id).is_some()
    }

    /// Whether any owner has a task with this id here.
    pub async fn contains_any(&self, task_id: &str) -> bool {
        self.core.contains_any(task_id)
    }

    /// Subscribes to every task event of this manager from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<TaskEvent> {
        self.core.subscribe()
    }

    /// What the manager holds (tasks, owners, indexes, pending writes): for
    /// metrics, and to check that collected tasks leave nothing behind.
    pub fn stats(&self) -> ManagerStats {
        self.core.stats()
    }

    // ---------------------------------------------------------------------
    // Housekeeping
    // ---------------------------------------------------------------------

    /// Drops the owner's finished tasks (terminal, or stopped without
    /// support for resume) whose writes are resolved and that nobody waits
    /// on; returns how many were dropped. The registry keeps nothing of
    /// them.
    pub async fn gc_terminal(&self, owner: &str) -> usize {
        self.core.gc(owner)
    }

    /// Waits until every store write queued before this call is durable or
    /// has failed permanently, however many are queued meanwhile. Returns at
    /// once without a task store. No deadline: see
    /// [`flush_timeout`](Self::flush_timeout).
    pub async fn flush(&self) {
        if let Some(outbox) = &self.core.outbox {
            outbox.flush().await;
        }
    }

    /// [`flush`](Self::flush) that waits at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`FlushTimeout`], listing the writes not durable yet, by task. They
    /// stay queued and are retried.
    pub async fn flush_timeout(&self, timeout: Duration) -> Result<(), FlushTimeout> {
        let Some(outbox) = &self.core.outbox else {
            return Ok(());
        };
        let pending = outbox.flush_until(Some(Instant::now() + timeout)).await;
        if pending.is_empty() {
            Ok(())
        } else {
            Err(FlushTimeout { pending })
        }
    }

    /// Reconciles the store with the living: every durable `running` task
    /// whose lease has expired (its process stopped renewing it), or that
    /// names this instance as holder without this instance knowing the run
    /// (an earlier life of this instance id), becomes `stopped` if it
    /// supports resume, else `failed` with an error that says it was
    /// interrupted. A task whose lease is alive, and a task whose outcome is
    /// known here (written or not), is never touched. A record that cannot
    /// be read is replaced by a `failed` one that says why. Reads the
    /// store's index of open task records, a bounded number at once: the
    /// cost follows the running tasks, not the history. Without a store
    /// there is nothing to recover.
    ///
    /// # Errors
    ///
    /// `Store` when the index cannot be read; errors on single records are
    /// in the report.
    pub async fn recover(&self) -> Result<RecoveryReport, TaskError> {
        match self.task_store() {
            Some(store) => {
                distributed::recovery::recover(&self.core, store, &self.core.leases).await
            }
            None => Ok(RecoveryReport::default()),
        }
    }

    /// Restarts a `stopped` task that supports resume as its next attempt,
    /// running `f`. With a task store the durable record is checked and moved
    /// to the new attempt first (so two processes cannot both resume it, and
    /// a late write of the old attempt is fenced off); the task need not have
    /// run in this process. A refused resume writes nothing.
    ///
    /// # Errors
    ///
    /// `UnknownTask` when the owner has no such task; `AlreadyRunning`;
    /// `NotResumable` when it is not stopped or does not support resume;
    /// `ShuttingDown`; `Store` failures.
    pub async fn resume<F, Fut>(
        &self,
        owner: &str,
        task_id: &str,
        f: F,
    ) -> Result<TaskId, TaskError>
    where
        F: FnOnce(TaskContext) -> Fut + Send + 'static,
        Fut: Future<Output = TaskResult> + Send + 'static,
    {
        self.touch();
        let local = self.get_local(owner, task_id);
        if let Some(s) = &local {
            check_resumable(task_id, s.status, s.supports_resume)?;
        }
        let Some(store) = self.task_store() else {
            let s = local.ok_or_else(|| TaskError::unknown(task_id))?;
            let launch = resume_launch(owner, &s, s.attempt + 1, None, self.core.clock.now_ms());
            return self.core.launch(launch, None, None, f);
        };
        if validate::owner(owner).is_err() || validate::task_id("task_id", task_id).is_err() {
            return Err(TaskError::unknown(task_id));
        }
        let record = store
            .load_task(task_id)
            .await?
            .filter(|r| r.owner_thread_id == owner)
            .ok_or_else(|| TaskError::unknown(task_id))?;
        check_resumable(task_id, record.status, record.supports_resume)?;
        // Admitted before anything is written: a resume refused because the
        // manager shuts down writes nothing, and one admitted is launched
        // before shutdown interrupts what runs.
        let admission = self.core.admit()?;
        let now = self.core.clock.now_ms();
        let run_id = new_task_id();
        let resume = Transition::Resume {
            from_attempt: record.attempt,
            at_ms: now,
            lease: Some(crate::Lease {
                holder: self.instance_id().to_owned(),
                expires_at_ms: now.saturating_add(clock::duration_ms(self.core.leases.ttl)),
            }),
            run_id: Some(run_id.clone()),
        };
        let resumed = store
            .write(
                task_id,
                Some(owner),
                Known::Unknown,
                &[crate::records::Change::Transition(resume)],
            )
            .await
            .map_err(|e| match e {
                TaskError::Rejected { reason, .. } => TaskError::NotResumable {
                    task_id: task_id.to_owned(),
                    reason,
                },
                other => other,
            })?;
        let summary = summary_of(&resumed.record);
        let launch = resume_launch(owner, &summary, resumed.record.attempt, Some(run_id), now);
        let launched = self.core.launch(
            Launch {
                admitted: true,
                ..launch
            },
            None,
            None,
            f,
        );
        drop(admission);
        launched
    }

    fn get_local(&self, owner: &str, task_id: &str) -> Option<TaskSummary> {
        self.core
            .slot(owner, task_id)
            .map(|slot| self.core.summary(&slot))
    }

    /// Shuts the manager down within `grace`, in total: refuses new tasks,
    /// asks every running task to stop and gives them up to 80% of `grace`,
    /// marks what still runs `stopped` (resumable tasks) or `failed` and
    /// drops it, then uses what is left of `grace` to make the writes
    /// durable and (multi-process managers) to stop lease renewal and remove
    /// this instance's record. Tasks that finish on their own during the
    /// grace keep their outcome; those that return after seeing the request
    /// end `stopped` or `failed` (interrupted), not `cancelled`.
    ///
    /// What is not durable when `grace` runs out is listed in the report's
    /// `not_durable`, never dropped silently: those writes stay queued for
    /// as long as the manager lives.
    pub async fn shutdown(&self, grace: Duration) -> ShutdownReport {
        let started = Instant::now();
        let deadline = started + grace;
        let tasks_deadline = started + grace.mul_f64(0.8);
        let running = self.core.close(tasks_deadline).await;
        let waits = running.iter().map(|slot| self.core.wait(Arc::clone(slot)));
        let _ = tokio::time::timeout_at(tasks_deadline, futures::future::join_all(waits)).await;
        let mut report = ShutdownReport::default();
        for slot in &running {
            if self.core.interrupt(slot) {
                report.interrupted.push(slot.task_id.clone());
            } else {
                report.finished.push(slot.task_id.clone());
            }
        }
        if let Some(outbox) = &self.core.outbox {
            report.not_durable = outbox.flush_until(Some(deadline)).await;
        }
        if let Some(remote) = &self.remote {
            report.lease_released = remote.stop(deadline).await;
        }
        report
    }
}

/// The state of [`BackgroundTaskManager::output_stream`].
struct OutputStream {
    manager: BackgroundTaskManager,
    owner: String,
    task_id: String,
    after: u64,
    buffered: std::collections::VecDeque<OutputEntry>,
    events: broadcast::Receiver<TaskEvent>,
    done: bool,
}

impl OutputStream {
    async fn next(&mut self) -> Option<Result<OutputEntry, TaskError>> {
        loop {
            if let Some(entry) = self.buffered.pop_front() {
                return Some(Ok(entry));
            }
            if self.done {
                return None;
            }
            // Whether the task was finished (and its writes durable) before
            // this read: then the read sees everything it emitted.
            let finished = self.finished().await;
            let page = match self
                .manager
                .output(&self.owner, &self.task_id, self.after, 0)
                .await
            {
                Ok(page) => page,
                Err(error) => {
                    self.done = true;
                    return Some(Err(error));
                }
            };
            self.after = page.next;
            if !page.entries.is_empty() {
                self.buffered.extend(page.entries);
                continue;
            }
            if finished {
                self.done = true;
                return None;
            }
            self.changed().await;
        }
    }

    /// Whether the task no longer runs and every write of it is resolved.
    async fn finished(&self) -> bool {
        match self.manager.core.slot(&self.owner, &self.task_id) {
            Some(slot) => {
                let entry = slot.lock();
                entry.status.is_finished() && entry.pending_writes == 0
            }
            None => self
                .manager
                .get(&self.owner, &self.task_id)
                .await
                .is_none_or(|s| s.status.is_finished()),
        }
    }

    /// Waits for something that may make more output readable: an event of
    /// the task (output, persisted, finished), or a poll interval for a task
    /// held elsewhere.
    async fn changed(&mut self) {
        let poll = self
            .manager
            .remote
            .as_ref()
            .map_or(Duration::from_millis(250), |r| r.poll_every());
        let sleep = tokio::time::sleep(poll);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => return,
                event = self.events.recv() => match event {
                    Ok(event) if event.task_id == self.task_id => {
                        if matches!(
                            event.kind,
                            TaskEventKind::Output(_)
                                | TaskEventKind::Persisted
                                | TaskEventKind::Finished { .. }
                                | TaskEventKind::PersistenceFailed { .. }
                        ) {
                            return;
                        }
                    }
                    Ok(_) => {}
                    // Missed some: look now.
                    Err(broadcast::error::RecvError::Lagged(_)) => return,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }
}

/// Refuses to resume a task that is running, not stopped, or not resumable.
fn check_resumable(
    task_id: &str,
    status: TaskStatus,
    supports_resume: bool,
) -> Result<(), TaskError> {
    if status == TaskStatus::Running {
        return Err(TaskError::AlreadyRunning {
            task_id: task_id.to_owned(),
        });
    }
    if status != TaskStatus::Stopped || !supports_resume {
        return Err(TaskError::NotResumable {
            task_id: task_id.to_owned(),
            reason: Rejection::NotResumable { current: status },
        });
    }
    Ok(())
}

/// The launch of a resumed attempt of the task `s` describes.
fn resume_launch(
    owner: &str,
    s: &TaskSummary,
    attempt: u32,
    run_id: Option<String>,
    now_ms: u64,
) -> Launch {
    Launch {
        task_id: s.task_id.clone(),
        owner: owner.to_owned(),
        task_type: s.task_type.clone(),
        description: s.description.clone(),
        parent_task_id: s.parent_task_id.clone(),
        metadata: s.metadata.clone(),
        supports_resume: s.supports_resume,
        attempt: Some(attempt),
        run_id,
        durable: Durable::Nothing,
        now_ms,
        admitted: false,
    }
}

/// Compile-time checks that handles and futures can cross threads.
#[allow(dead_code)]
fn assert_send_sync() {
    fn is_send_sync<T: Send + Sync>() {}
    fn is_send<T: Send>(_: &T) {}
    is_send_sync::<BackgroundTaskManager>();
    is_send_sync::<TaskContext>();
    let m = BackgroundTaskManager::new();
    is_send(&m.wait("o", "t"));
    is_send(&m.flush());
    is_send(&m.spawn("o", "t", "d", |_| async { TaskResult::Cancelled }));
    is_send(&m.cancel_tree("o", "t"));
    is_send(&m.shutdown(Duration::ZERO));
    is_send(&m.output_stream("o", "t", 0));
}
