//! [`BackgroundTaskManager`]: the live registry of one process.

mod control;
mod persist;
mod recovery;
mod registry;

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::Duration;

use futures::FutureExt;
use serde_json::{Value, json};
use task_store::{ChangeSet, NewMessage, ThreadStoreError, VersionPrecondition};
use tokio::sync::{Notify, broadcast, mpsc};
use tokio::time::Instant;

use crate::context::TaskContext;
use crate::model::new_task_id_at;
use crate::model::{
    metadata_text, now_ms, type_supports_resume, validate_description, validate_owner,
    validate_task_id, validate_task_input, validate_task_type,
};
use crate::state::{Lease, Rejection, TaskRecord, Transition};
use crate::{
    NewTaskSpec, RunCancellationToken, SpawnParams, TaskError, TaskEvent, TaskEventKind, TaskId,
    TaskResult, TaskStatus, TaskStore, TaskSummary, new_task_id,
};

use persist::{Backoff, Job, Outbox, Step};
pub(crate) use registry::TaskSlot;
use registry::{Entry, Registry};

pub use recovery::RecoveryReport;

/// Whole milliseconds of a duration, saturating.
pub(crate) fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The default time a cancelled task gets to return before it is dropped.
pub const DEFAULT_CANCEL_GRACE: Duration = Duration::from_secs(5);

/// Which finished tasks a manager keeps, beyond explicit
/// [`gc_terminal`](BackgroundTaskManager::gc_terminal) calls.
///
/// Applied to an owner's tasks whenever one of them finishes and when the
/// owner's tasks are listed. Only terminal tasks whose writes are resolved and
/// that nobody is waiting on are ever dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Keep at most this many terminal tasks per owner (the oldest go first).
    pub max_terminal_per_owner: Option<usize>,
    /// Drop terminal tasks that finished longer ago than this.
    pub max_age: Option<Duration>,
}

impl RetentionPolicy {
    fn is_active(&self) -> bool {
        self.max_terminal_per_owner.is_some() || self.max_age.is_some()
    }
}

/// Configures a [`BackgroundTaskManager`].
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct BackgroundTaskManagerBuilder {
    task_store: Option<Arc<TaskStore>>,
    cancel_grace: Duration,
    retention: RetentionPolicy,
    backoff: Backoff,
    event_capacity: usize,
    instance_id: Option<String>,
    leases: LeaseConfig,
}

/// Lease and recovery timing of a manager with a task store.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LeaseConfig {
    /// How long a lease holds without renewal.
    pub(crate) ttl: Duration,
    /// How often the instance renews its lease (one write for all its tasks).
    pub(crate) renew_every: Duration,
    /// How often the instance reads its inbox of cross-process requests.
    pub(crate) poll_every: Duration,
    /// Run `recover` when the manager starts.
    pub(crate) recover_on_start: bool,
    /// Run `recover` this often.
    pub(crate) recover_every: Option<Duration>,
    /// A lease counts as expired only this long after its expiry, to absorb
    /// clock skew between processes.
    pub(crate) skew_allowance: Duration,
}

/// The default lease TTL.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(30);

impl Default for BackgroundTaskManagerBuilder {
    fn default() -> Self {
        Self {
            task_store: None,
            cancel_grace: DEFAULT_CANCEL_GRACE,
            retention: RetentionPolicy::default(),
            backoff: Backoff {
                initial: Duration::from_millis(20),
                max: Duration::from_secs(5),
            },
            event_capacity: 1024,
            instance_id: None,
            leases: LeaseConfig {
                ttl: DEFAULT_LEASE_TTL,
                renew_every: DEFAULT_LEASE_TTL / 3,
                poll_every: Duration::from_millis(250),
                recover_on_start: false,
                recover_every: None,
                skew_allowance: Duration::from_secs(1),
            },
        }
    }
}

impl BackgroundTaskManagerBuilder {
    /// Persists every task's transitions in this store.
    pub fn task_store(mut self, store: Arc<TaskStore>) -> Self {
        self.task_store = Some(store);
        self
    }

    /// How long a cancelled task may keep running before it is dropped and
    /// recorded `cancelled` (default [`DEFAULT_CANCEL_GRACE`]).
    pub fn cancel_grace(mut self, grace: Duration) -> Self {
        self.cancel_grace = grace;
        self
    }

    /// Which terminal tasks to keep (default: all, until `gc_terminal`).
    pub fn retention(mut self, policy: RetentionPolicy) -> Self {
        self.retention = policy;
        self
    }

    /// The delay before the first retry of a failed store write and the cap of
    /// the doubling delays after it (defaults 20 ms and 5 s).
    pub fn persistence_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff = Backoff {
            initial,
            max: max.max(initial),
        };
        self
    }

    /// How many events a slow subscriber may fall behind before it misses
    /// some (default 1024).
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.event_capacity = capacity.max(1);
        self
    }

    /// This manager's instance id, the holder named in the leases of the
    /// tasks it runs (default: a new unique id). Give a process the same id
    /// across restarts and `recover` knows at once that running records held
    /// by that id belong to an earlier life.
    pub fn instance_id(mut self, id: impl Into<String>) -> Self {
        self.instance_id = Some(id.into());
        self
    }

    /// How long a lease holds without renewal (default 30 s), and how often
    /// the manager renews it (default a third of that). Renewal is one write
    /// per period for all the manager's tasks.
    pub fn lease(mut self, ttl: Duration, renew_every: Duration) -> Self {
        self.leases.ttl = ttl;
        self.leases.renew_every = renew_every.min(ttl).max(Duration::from_millis(1));
        self
    }

    /// How often the manager reads its inbox of cancellation requests from
    /// other processes (default 250 ms).
    pub fn control_poll_interval(mut self, every: Duration) -> Self {
        self.leases.poll_every = every.max(Duration::from_millis(1));
        self
    }

    /// Runs [`recover`](BackgroundTaskManager::recover) when the manager
    /// starts (default off).
    pub fn recover_on_start(mut self, on: bool) -> Self {
        self.leases.recover_on_start = on;
        self
    }

    /// Runs [`recover`](BackgroundTaskManager::recover) this often (default
    /// never).
    pub fn recover_every(mut self, every: Duration) -> Self {
        self.leases.recover_every = Some(every);
        self
    }

    /// How long past its expiry a lease must be before recovery takes the
    /// task over, to absorb clock skew between processes (default 1 s).
    pub fn clock_skew_allowance(mut self, allowance: Duration) -> Self {
        self.leases.skew_allowance = allowance;
        self
    }

    /// Builds the manager. With a task store, its background work (lease
    /// renewal, inbox, recovery) starts now when called inside a tokio
    /// runtime, else with the first task.
    pub fn build(self) -> BackgroundTaskManager {
        let (events, _) = broadcast::channel(self.event_capacity);
        let manager = BackgroundTaskManager {
            inner: Arc::new(Inner {
                registry: Mutex::new(Registry::default()),
                events,
                subscribed: AtomicBool::new(false),
                cancel_grace: self.cancel_grace,
                retention: self.retention,
                outbox: self.task_store.map(|s| Outbox::new(s, self.backoff)),
                instance_id: self
                    .instance_id
                    .unwrap_or_else(|| format!("mgr-{}", new_task_id())),
                clock: Clock::new(),
                leases: self.leases,
                control: control::Control::default(),
                reaper: OnceLock::new(),
            }),
        };
        if manager.inner.outbox.is_some() && tokio::runtime::Handle::try_current().is_ok() {
            control::ensure_started(&manager.inner);
        }
        manager
    }
}

/// The live registry of background tasks of one process.
///
/// Tasks belong to an owner (usually a conversation thread). Every call names
/// the owner, and another owner's task looks exactly like an unknown one.
/// Cloning the manager gives another handle to the same registry.
///
/// # Costs
///
/// `spawn` takes one short lock and never touches the store. `get`,
/// `contains` and `cancel` cost O(1); `list`, `list_by_type` and
/// `gc_terminal` cost the owner's task count; `has_running_tasks` is O(1);
/// `cancel_tree` costs the size of the tree.
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
    inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    registry: Mutex<Registry>,
    events: broadcast::Sender<TaskEvent>,
    /// Whether `subscribe` was ever called.
    subscribed: AtomicBool,
    cancel_grace: Duration,
    retention: RetentionPolicy,
    outbox: Option<Outbox>,
    instance_id: String,
    clock: Clock,
    leases: LeaseConfig,
    control: control::Control,
    /// Cancelled tasks to drop if they outlive the cancel grace.
    reaper: OnceLock<mpsc::UnboundedSender<(Instant, Weak<TaskSlot>)>>,
}

/// Wall-clock milliseconds that follow tokio's clock: the system time at
/// start plus the monotonic time since. Immune to wall-clock jumps, and it
/// moves with `tokio::time::advance` in tests, so lease expiry can be tested
/// with paused time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    wall_at_start_ms: u64,
    start: Instant,
}

impl Clock {
    fn new() -> Self {
        Self {
            wall_at_start_ms: now_ms(),
            start: Instant::now(),
        }
    }

    pub(crate) fn now_ms(&self) -> u64 {
        let elapsed = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.wall_at_start_ms.saturating_add(elapsed)
    }
}

/// One epoch of a task about to start.
struct Launch<'a> {
    task_id: TaskId,
    owner: &'a str,
    task_type: &'a str,
    description: String,
    parent_task_id: Option<TaskId>,
    metadata: Value,
    /// `metadata` as JSON text (`None` for `null`), as the slot keeps it.
    metadata_text: Option<Box<str>>,
    supports_resume: bool,
    /// `Some(n)` when resuming: the durable attempt `n` is already written.
    resumed_attempt: Option<u32>,
    /// When it starts, by the manager's clock.
    now_ms: u64,
}

/// How a task's tokio task ended.
enum Ended {
    Returned(TaskResult),
    Panicked(String),
    /// Cancelled and still running after the grace period: dropped.
    Abandoned,
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

    /// The task store this manager persists into, if any.
    pub fn task_store(&self) -> Option<&Arc<TaskStore>> {
        self.inner.outbox.as_ref().map(Outbox::store)
    }

    /// Spawns a task with a generated, time-ordered id and returns the id.
    ///
    /// `f` receives the task's [`TaskContext`] and returns the future to run;
    /// it runs in its own tokio task. The task is `running` until the future
    /// returns, then takes the status of its [`TaskResult`]. A panic ends it
    /// `failed` with the panic message.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for an empty, over-long or control-character owner or
    /// type, or an over-long description; `ShuttingDown` after `shutdown`.
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
        validate_owner(owner)?;
        validate_task_type(task_type)?;
        validate_description(description)?;
        let now_ms = self.inner.clock.now_ms();
        let task_id = new_task_id_at(now_ms);
        self.launch(
            Launch {
                task_id,
                owner,
                task_type,
                description: description.to_owned(),
                parent_task_id: None,
                metadata: Value::Null,
                metadata_text: None,
                supports_resume: type_supports_resume(task_type),
                resumed_attempt: None,
                now_ms,
            },
            None,
            f,
        )
    }

    /// Spawns a task with the caller's id, cancellation token, parent task and
    /// metadata.
    ///
    /// Cancelling `token` is a cancellation request, as `cancel` is. An id
    /// whose task is still running is refused; an id whose task has finished
    /// starts a new epoch (the next attempt), and anything the old epoch still
    /// reports is ignored.
    ///
    /// # Errors
    ///
    /// `AlreadyRunning` when the id's task is running; `InvalidInput` for bad
    /// ids, an over-long description or metadata over
    /// [`MAX_METADATA_BYTES`](crate::MAX_METADATA_BYTES); `ShuttingDown`.
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
        let metadata_text = validate_task_input(
            &task_id,
            &owner,
            &task_type,
            &description,
            parent_task_id.as_deref(),
            &metadata,
        )?;
        let supports_resume = type_supports_resume(&task_type);
        self.launch(
            Launch {
                task_id,
                owner: &owner,
                task_type: &task_type,
                description,
                parent_task_id,
                metadata,
                metadata_text,
                supports_resume,
                resumed_attempt: None,
                now_ms: self.inner.clock.now_ms(),
            },
            Some(token),
            f,
        )
    }

    /// Registers and starts one epoch of a task: a spawn (which queues the
    /// durable start) or a resume (whose durable transition is already
    /// written, as attempt `resumed_attempt`). `token` is the caller's; a task
    /// without one gets its token when something asks for it.
    fn launch<F, Fut>(
        &self,
        launch: Launch<'_>,
        token: Option<RunCancellationToken>,
        f: F,
    ) -> Result<TaskId, TaskError>
    where
        F: FnOnce(TaskContext) -> Fut + Send + 'static,
        Fut: Future<Output = TaskResult> + Send + 'static,
    {
        let Launch {
            task_id,
            owner,
            task_type,
            description,
            parent_task_id,
            metadata,
            metadata_text,
            supports_resume,
            resumed_attempt,
            now_ms: now,
        } = launch;
        let inner = &self.inner;
        let start = match (&inner.outbox, resumed_attempt) {
            (Some(_), None) => Some(Box::new(TaskRecord {
                lease: Some(inner.new_lease(now)),
                run_id: Some(new_task_id()),
                ..TaskRecord::running(
                    NewTaskSpec {
                        task_id: task_id.clone(),
                        owner_thread_id: owner.to_owned(),
                        task_type: task_type.to_owned(),
                        description: description.clone(),
                        parent_task_id: parent_task_id.clone(),
                        supports_resume,
                        metadata,
                    },
                    now,
                )
            })),
            _ => None,
        };
        if inner.outbox.is_some() {
            control::ensure_started(inner);
        }
        let mut reg = inner.lock();
        if reg.closed {
            return Err(TaskError::ShuttingDown);
        }
        let (attempt, pending_writes) = match reg.get(&task_id) {
            Some(old) => {
                let (attempt, pending_writes) = {
                    let old = old.lock();
                    if old.status == TaskStatus::Running {
                        return Err(TaskError::AlreadyRunning { task_id });
                    }
                    (old.attempt + 1, old.pending_writes)
                };
                // The earlier epoch gives way to this one.
                reg.remove(&task_id);
                (resumed_attempt.unwrap_or(attempt), pending_writes)
            }
            None => (resumed_attempt.unwrap_or(1), 0),
        };
        let seq = reg.next_seq;
        reg.next_seq += 1;
        let slot = Arc::new(TaskSlot {
            task_id: task_id.clone(),
            owner: reg.owner(owner),
            task_type: reg.task_type(task_type),
            description,
            parent_task_id,
            metadata: metadata_text,
            created_at_ms: now,
            supports_resume,
            seq,
            finished: Notify::new(),
            state: Mutex::new(Entry::running(
                attempt,
                token.clone(),
                resumed_attempt,
                pending_writes + u32::from(start.is_some()),
            )),
        });
        inner.emit(&slot, attempt, TaskEventKind::Spawned);
        if let (Some(outbox), Some(start)) = (&inner.outbox, start) {
            // Queued before the task can run, so before its finish.
            outbox.enqueue(
                inner,
                Job {
                    task_id: task_id.clone(),
                    epoch: seq,
                    step: Step::Start(Transition::Start { record: start }),
                },
            );
        }
        reg.insert(Arc::clone(&slot));
        drop(reg);

        let ctx = TaskContext {
            slot: Arc::clone(&slot),
            inner: Arc::downgrade(inner),
            token: token.clone().map_or_else(OnceLock::new, OnceLock::from),
        };
        let weak = Arc::downgrade(inner);
        let handle = match token {
            None => tokio::spawn(run_task(weak, Arc::clone(&slot), f, ctx)),
            Some(token) => {
                tokio::spawn(run_task_with_token(weak, Arc::clone(&slot), token, f, ctx))
            }
        };
        let mut entry = slot.lock();
        if entry.status == TaskStatus::Running {
            entry.abort = Some(handle.abort_handle());
        }
        Ok(task_id)
    }

    /// Requests the cancellation of a running task. The task ends `cancelled`
    /// whatever it returns; if it does not return within the cancel grace it
    /// is dropped.
    ///
    /// # Errors
    ///
    /// `UnknownTask` (`"Unknown task_id: <id>"`) when the owner has no such
    /// task; `NotRunning` (`"Task '<id>' is not running (current status:
    /// <s>)"`) when it has finished.
    pub async fn cancel(&self, owner: &str, task_id: &str) -> Result<(), TaskError> {
        if let Some(slot) = self.slot(owner, task_id) {
            let mut entry = slot.lock();
            if entry.status != TaskStatus::Running {
                return Err(TaskError::NotRunning {
                    task_id: task_id.to_owned(),
                    status: entry.status,
                });
            }
            self.inner.request_cancel(&slot, &mut entry);
            return Ok(());
        }
        // Not here: with a store, it may run in another process.
        let record = self
            .durable_record(owner, task_id)
            .await?
            .ok_or_else(|| TaskError::unknown(task_id))?;
        if record.status != TaskStatus::Running {
            return Err(TaskError::NotRunning {
                task_id: task_id.to_owned(),
                status: record.status,
            });
        }
        self.cancel_remote(&record).await
    }

    /// The durable record of one of the owner's tasks, when there is a store.
    async fn durable_record(
        &self,
        owner: &str,
        task_id: &str,
    ) -> Result<Option<TaskRecord>, TaskError> {
        let Some(store) = self.task_store() else {
            return Ok(None);
        };
        if validate_owner(owner).is_err() || validate_task_id(task_id).is_err() {
            return Ok(None);
        }
        Ok(store
            .load_task(task_id)
            .await?
            .filter(|r| r.owner_thread_id == owner))
    }

    /// Requests the cancellation of a task another instance runs: the
    /// durable request on its record, then a message in the holder's inbox.
    async fn cancel_remote(&self, record: &TaskRecord) -> Result<(), TaskError> {
        let Some(store) = self.task_store() else {
            return Err(TaskError::unknown(&record.task_id));
        };
        let transition = Transition::RequestCancel {
            attempt: record.attempt,
            at_ms: self.inner.clock.now_ms(),
        };
        match store.transition(&record.task_id, transition).await {
            Ok(_) => {}
            Err(TaskError::Rejected {
                reason: Rejection::NotRunning { current } | Rejection::LeaseLost { current, .. },
                ..
            }) => {
                return Err(TaskError::NotRunning {
                    task_id: record.task_id.clone(),
                    status: current,
                });
            }
            Err(e) => return Err(e),
        }
        let Some(holder) = record.lease.as_ref().map(|l| &l.holder) else {
            // Nobody holds it: the durable request is all there is to do.
            return Ok(());
        };
        let message = NewMessage::with_id(
            format!("cancel:{}:{}", record.task_id, record.attempt),
            json!({
                "type": "cancel",
                "task_id": record.task_id,
                "attempt": record.attempt,
                "from": self.inner.instance_id,
            }),
        );
        let changes = ChangeSet::default().with_message(message);
        match store
            .thread_store()
            .append(
                &control::instance_thread(holder),
                changes,
                VersionPrecondition::Any,
            )
            .await
        {
            Ok(_) => {
                control::wake(store, holder).await;
                Ok(())
            }
            // A holder that never renewed its lease has no inbox; recovery
            // will settle its tasks.
            Err(ThreadStoreError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Cancels a task and every running task of the same owner reachable from
    /// it through parent links (children, their children...). Safe against
    /// cycles; costs the size of the tree. Returns the summaries of the tasks
    /// whose cancellation it requested, root first.
    ///
    /// # Errors
    ///
    /// `UnknownTask` when the owner has no such task; `NotRunning` when no
    /// task of the tree is running.
    pub async fn cancel_tree(
        &self,
        owner: &str,
        task_id: &str,
    ) -> Result<Vec<TaskSummary>, TaskError> {
        if self.task_store().is_some() {
            return self.cancel_tree_everywhere(owner, task_id).await;
        }
        let reg = self.inner.lock();
        let root_status = reg
            .visible(owner, task_id)
            .ok_or_else(|| TaskError::unknown(task_id))?
            .lock()
            .status;
        let mut cancelled = Vec::new();
        for id in reg.tree(owner, task_id) {
            if let Some(slot) = reg.visible(owner, &id) {
                let mut entry = slot.lock();
                if entry.status == TaskStatus::Running {
                    self.inner.request_cancel(slot, &mut entry);
                    cancelled.push(slot.summary(&entry));
                }
            }
        }
        drop(reg);
        if cancelled.is_empty() {
            return Err(TaskError::NotRunning {
                task_id: task_id.to_owned(),
                status: root_status,
            });
        }
        Ok(cancelled)
    }

    /// The slot of one of the owner's tasks.
    fn slot(&self, owner: &str, task_id: &str) -> Option<Arc<TaskSlot>> {
        self.inner.lock().visible(owner, task_id).cloned()
    }

    /// The summary of one of the owner's tasks.
    pub async fn get(&self, owner: &str, task_id: &str) -> Option<TaskSummary> {
        let slot = self.slot(owner, task_id)?;
        let entry = slot.lock();
        Some(slot.summary(&entry))
    }

    /// Waits until one of the owner's tasks is no longer running (terminal or
    /// stopped) and returns its summary; `None` when the owner has no such
    /// task. Waiting never polls, and a task being waited on is never
    /// collected by retention or `gc_terminal`.
    pub async fn wait(&self, owner: &str, task_id: &str) -> Option<TaskSummary> {
        let slot = self.slot(owner, task_id)?;
        {
            let mut entry = slot.lock();
            if entry.status.is_finished() {
                return Some(slot.summary(&entry));
            }
            entry.waiters += 1;
        }
        let guard = WaiterGuard(slot);
        let slot = &guard.0;
        loop {
            let notified = slot.finished.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let entry = slot.lock();
                if entry.status.is_finished() {
                    return Some(slot.summary(&entry));
                }
            }
            notified.await;
        }
    }

    /// The owner's tasks in creation order, optionally only those with
    /// `status`.
    pub async fn list(&self, owner: &str, status: Option<TaskStatus>) -> Vec<TaskSummary> {
        self.list_filtered(owner, |_, e| status.is_none_or(|st| e.status == st))
    }

    /// The owner's tasks of one type, optionally only those with `status`.
    pub async fn list_by_type(
        &self,
        owner: &str,
        task_type: &str,
        status: Option<TaskStatus>,
    ) -> Vec<TaskSummary> {
        self.list_filtered(owner, |s, e| {
            &*s.task_type == task_type && status.is_none_or(|st| e.status == st)
        })
    }

    fn list_filtered(
        &self,
        owner: &str,
        keep: impl Fn(&TaskSlot, &Entry) -> bool,
    ) -> Vec<TaskSummary> {
        let mut reg = self.inner.lock();
        self.inner.enforce_retention(&mut reg, owner);
        reg.owner_slots(owner)
            .filter_map(|slot| {
                let entry = slot.lock();
                keep(slot, &entry).then(|| slot.summary(&entry))
            })
            .collect()
    }

    /// Whether the owner has a running task. O(1).
    pub async fn has_running_tasks(&self, owner: &str) -> bool {
        self.inner.lock().has_running(owner)
    }

    /// Drops the owner's terminal tasks whose writes are resolved and that
    /// nobody waits on; returns how many were dropped.
    pub async fn gc_terminal(&self, owner: &str) -> usize {
        let mut reg = self.inner.lock();
        let ids = reg.collectable(owner);
        for (id, _) in &ids {
            reg.remove(id);
        }
        ids.len()
    }

    /// Whether the owner has a task with this id.
    pub async fn contains(&self, owner: &str, task_id: &str) -> bool {
        self.inner.lock().visible(owner, task_id).is_some()
    }

    /// Whether any owner has a task with this id.
    pub async fn contains_any(&self, task_id: &str) -> bool {
        self.inner.lock().tasks.contains(task_id)
    }

    /// Sets a task's status from outside (for example when the work it stands
    /// for was finished by other means). A running task set to another status
    /// has its cancellation requested (so its work stops) and whatever it
    /// returns later is ignored. Returns `false` when the id is unknown, the
    /// status is `running`, or the task is already terminal (terminal outcomes
    /// are write-once).
    pub async fn update_status(
        &self,
        task_id: &str,
        status: TaskStatus,
        error: Option<String>,
    ) -> bool {
        if status == TaskStatus::Running {
            return false;
        }
        let Some(slot) = self.inner.slot_of(task_id) else {
            return false;
        };
        {
            let mut entry = slot.lock();
            let was = entry.status;
            if was.is_terminal() || was == status {
                return false;
            }
            if let Some(token) = &entry.token {
                token.cancel();
            }
            self.inner.settle(&slot, &mut entry, status, None, error);
            if was == TaskStatus::Running {
                slot.stopped_running();
            }
        }
        self.inner.after_finish(slot.owner());
        true
    }

    /// `cancel_tree` with a store: the tree is followed through the owner's
    /// durable records too, so tasks run by other processes are cancelled
    /// through their holders. Costs the owner's durable records.
    async fn cancel_tree_everywhere(
        &self,
        owner: &str,
        task_id: &str,
    ) -> Result<Vec<TaskSummary>, TaskError> {
        let Some(store) = self.task_store() else {
            return Err(TaskError::unknown(task_id));
        };
        if validate_owner(owner).is_err() || validate_task_id(task_id).is_err() {
            return Err(TaskError::unknown(task_id));
        }
        let records: HashMap<TaskId, TaskRecord> = store
            .list_tasks(owner)
            .await?
            .into_iter()
            .filter_map(Result::ok)
            .map(|r| (r.task_id.clone(), r))
            .collect();
        let (root_status, mut cancelled, remote) = {
            let reg = self.inner.lock();
            let root_status = match (reg.visible(owner, task_id), records.get(task_id)) {
                (Some(slot), _) => slot.lock().status,
                (None, Some(r)) => r.status,
                (None, None) => return Err(TaskError::unknown(task_id)),
            };
            // Children by parent over both views; the live view wins for tasks
            // this instance runs.
            let mut children: HashMap<&str, Vec<&str>> = HashMap::new();
            for r in records.values() {
                if let Some(parent) = &r.parent_task_id {
                    children.entry(parent).or_default().push(&r.task_id);
                }
            }
            let local_tree = reg.tree(owner, task_id);
            let mut seen: HashSet<&str> = HashSet::new();
            let mut queue: VecDeque<&str> = VecDeque::from([task_id]);
            queue.extend(local_tree.iter().map(String::as_str));
            let mut cancelled = Vec::new();
            let mut remote = Vec::new();
            while let Some(id) = queue.pop_front() {
                if !seen.insert(id) {
                    continue;
                }
                if let Some(kids) = children.get(id) {
                    queue.extend(kids.iter().copied());
                }
                if let Some(slot) = reg.visible(owner, id) {
                    let mut entry = slot.lock();
                    if entry.status == TaskStatus::Running {
                        self.inner.request_cancel(slot, &mut entry);
                        cancelled.push(slot.summary(&entry));
                    }
                } else if let Some(r) = records.get(id)
                    && r.status == TaskStatus::Running
                {
                    remote.push(r.clone());
                }
            }
            (root_status, cancelled, remote)
        };
        for record in remote {
            match self.cancel_remote(&record).await {
                Ok(()) => cancelled.push(summary_of(&record)),
                Err(TaskError::NotRunning { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        if cancelled.is_empty() {
            return Err(TaskError::NotRunning {
                task_id: task_id.to_owned(),
                status: root_status,
            });
        }
        Ok(cancelled)
    }

    /// The owner's tasks as [`list`](Self::list) reports them, plus the
    /// durable records of the owner's tasks that this instance does not hold
    /// (run by other processes, or finished before this one started), so a
    /// process sees its owner's whole picture. Costs the owner's durable
    /// records; without a task store it is `list`.
    ///
    /// # Errors
    ///
    /// `Store` when the owner's records cannot be listed. A single corrupt
    /// record is skipped, not an error.
    pub async fn list_including_durable(
        &self,
        owner: &str,
        status: Option<TaskStatus>,
    ) -> Result<Vec<TaskSummary>, TaskError> {
        let mut out = self.list(owner, status).await;
        let Some(store) = self.task_store() else {
            return Ok(out);
        };
        if validate_owner(owner).is_err() {
            return Ok(out);
        }
        let records = store.list_tasks(owner).await?;
        // Tasks this instance holds are already in `out` (or filtered out of
        // it): one registry lock decides which records are someone else's.
        let mut durable: Vec<TaskSummary> = {
            let reg = self.inner.lock();
            records
                .into_iter()
                .filter_map(Result::ok)
                .filter(|r| !reg.tasks.contains(r.task_id.as_str()))
                .filter(|r| status.is_none_or(|s| r.status == s))
                .map(|r| summary_of(&r))
                .collect()
        };
        durable.sort_by(|a, b| (a.created_at_ms, &a.task_id).cmp(&(b.created_at_ms, &b.task_id)));
        out.extend(durable);
        Ok(out)
    }

    /// This manager's instance id: the lease holder named in the records of
    /// the tasks it runs.
    pub fn instance_id(&self) -> &str {
        &self.inner.instance_id
    }

    /// Reconciles the store with the living: every durable `running` task
    /// whose lease has expired (its process stopped renewing it), or that
    /// names this instance as holder without running here (an earlier life of
    /// this instance id), becomes `stopped` if it supports resume, else
    /// `failed` with an error that says it was interrupted. A task whose
    /// lease is alive is never touched. Scans the store's task index; without
    /// a store there is nothing to recover.
    ///
    /// # Errors
    ///
    /// `Store` when the index cannot be read; errors on single records are
    /// in the report.
    pub async fn recover(&self) -> Result<RecoveryReport, TaskError> {
        recovery::recover(&self.inner).await
    }

    /// Restarts a `stopped` task that supports resume as its next attempt,
    /// running `f`. With a task store the durable record is checked and moved
    /// to the new attempt first (so two processes cannot both resume it, and
    /// a late write of the old attempt is fenced off); the task need not have
    /// run in this process.
    ///
    /// # Errors
    ///
    /// `UnknownTask` when the owner has no such task; `AlreadyRunning`;
    /// `NotResumable` when it is not stopped or its type cannot resume;
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
        let local = self.get(owner, task_id).await;
        if let Some(s) = &local {
            if s.status == TaskStatus::Running {
                return Err(TaskError::AlreadyRunning {
                    task_id: task_id.to_owned(),
                });
            }
            if s.status != TaskStatus::Stopped || !s.supports_resume {
                return Err(TaskError::NotResumable {
                    task_id: task_id.to_owned(),
                    reason: format!(
                        "it is {} and supports_resume is {}",
                        s.status, s.supports_resume
                    ),
                });
            }
        }
        let Some(store) = self.task_store() else {
            let s = local.ok_or_else(|| TaskError::unknown(task_id))?;
            let now = self.inner.clock.now_ms();
            return self.launch(resume_launch(owner, &s, s.attempt + 1, now), None, f);
        };
        let record = self
            .durable_record(owner, task_id)
            .await?
            .ok_or_else(|| TaskError::unknown(task_id))?;
        let now = self.inner.clock.now_ms();
        let resumed = store
            .transition(
                task_id,
                Transition::Resume {
                    from_attempt: record.attempt,
                    at_ms: now,
                    lease: Some(self.inner.new_lease(now)),
                    run_id: Some(new_task_id()),
                },
            )
            .await
            .map_err(|e| match e {
                TaskError::Rejected { reason, .. } => TaskError::NotResumable {
                    task_id: task_id.to_owned(),
                    reason: reason.to_string(),
                },
                other => other,
            })?;
        let summary = summary_of(&resumed.record);
        self.launch(
            resume_launch(owner, &summary, resumed.record.attempt, now),
            None,
            f,
        )
    }

    /// Shuts the manager down: refuses new tasks, asks every running task to
    /// stop, waits up to `grace` for them, marks what is still running
    /// `stopped` (resumable tasks) or `failed` and drops it, makes every
    /// write durable, and gives up this instance's leases. Tasks that finish
    /// on their own during the grace keep their outcome; those that return
    /// after seeing the request end `stopped` or `failed` (interrupted), not
    /// `cancelled`.
    pub async fn shutdown(&self, grace: Duration) -> ShutdownReport {
        let slots: Vec<Arc<TaskSlot>> = {
            let mut reg = self.inner.lock();
            reg.closed = true;
            reg.tasks.iter().map(|k| Arc::clone(&k.0)).collect()
        };
        let mut running = Vec::new();
        for slot in slots {
            let mut entry = slot.lock();
            if entry.status == TaskStatus::Running {
                entry.shutting_down = true;
                if let Some(token) = &entry.token {
                    token.cancel();
                }
                running.push((slot.task_id.clone(), Arc::clone(&slot)));
            }
        }
        let waits = running.iter().map(|(id, slot)| self.wait(slot.owner(), id));
        let _ = tokio::time::timeout(grace, futures::future::join_all(waits)).await;
        let mut report = ShutdownReport::default();
        for (id, slot) in &running {
            let mut entry = slot.lock();
            if entry.status == TaskStatus::Running {
                if let Some(abort) = entry.abort.take() {
                    abort.abort();
                }
                let (status, result, error) = interrupted(slot.supports_resume);
                self.inner.settle(slot, &mut entry, status, result, error);
                slot.stopped_running();
                report.interrupted.push(id.clone());
            } else {
                report.finished.push(id.clone());
            }
        }
        self.flush().await;
        if let Some(store) = self.task_store() {
            control::stop(&self.inner);
            control::release(&self.inner, store).await;
        }
        report
    }

    /// Subscribes to every task event of this manager from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<TaskEvent> {
        self.inner.subscribed.store(true, Ordering::Release);
        self.inner.events.subscribe()
    }

    /// Waits until every store write queued so far is durable or has failed
    /// permanently. Returns at once without a task store.
    pub async fn flush(&self) {
        if let Some(outbox) = &self.inner.outbox {
            outbox.flush().await;
        }
    }
}

/// What [`shutdown`](BackgroundTaskManager::shutdown) did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Tasks that ended within the grace period.
    pub finished: Vec<TaskId>,
    /// Tasks still running at the end of the grace period: dropped and
    /// marked `stopped` or `failed`.
    pub interrupted: Vec<TaskId>,
}

/// The summary of a durable record, for tasks this instance does not hold.
fn summary_of(r: &TaskRecord) -> TaskSummary {
    TaskSummary {
        task_id: r.task_id.clone(),
        task_type: r.task_type.clone(),
        description: r.description.clone(),
        status: r.status,
        error: r.error.clone(),
        result: r.result.clone(),
        created_at_ms: r.created_at_ms,
        completed_at_ms: r.completed_at_ms,
        parent_task_id: r.parent_task_id.clone(),
        supports_resume: r.supports_resume,
        attempt: r.attempt,
        metadata: r.metadata.clone(),
        persistence_error: None,
    }
}

/// The launch of a resumed attempt of the task `s` describes.
fn resume_launch<'a>(owner: &'a str, s: &'a TaskSummary, attempt: u32, now_ms: u64) -> Launch<'a> {
    Launch {
        task_id: s.task_id.clone(),
        owner,
        task_type: &s.task_type,
        description: s.description.clone(),
        parent_task_id: s.parent_task_id.clone(),
        metadata: s.metadata.clone(),
        metadata_text: metadata_text(&s.metadata),
        supports_resume: s.supports_resume,
        resumed_attempt: Some(attempt),
        now_ms,
    }
}

/// Decrements a task's waiter count when a `wait` ends, even by drop.
struct WaiterGuard(Arc<TaskSlot>);

impl Drop for WaiterGuard {
    fn drop(&mut self) {
        let mut entry = self.0.lock();
        entry.waiters = entry.waiters.saturating_sub(1);
    }
}

/// Runs one task to its end and records the outcome.
///
/// Holds the manager weakly: when the last handle to a manager is dropped,
/// its tasks are aborted (see `Drop for Inner`) and nothing more is recorded,
/// as if the process had died; recovery settles their durable records. A
/// task that outlives its cancel grace is dropped by the manager's reaper,
/// not from in here, so the common path carries no timer.
async fn run_task<F, Fut>(inner: Weak<Inner>, slot: Arc<TaskSlot>, f: F, ctx: TaskContext)
where
    F: FnOnce(TaskContext) -> Fut + Send + 'static,
    Fut: Future<Output = TaskResult> + Send + 'static,
{
    let outcome = AssertUnwindSafe(async move { f(ctx).await })
        .catch_unwind()
        .await;
    report(&inner, &slot, outcome);
}

/// Records how a task's future ended: its result, or its panic.
fn report(inner: &Weak<Inner>, slot: &TaskSlot, outcome: std::thread::Result<TaskResult>) {
    let ended = match outcome {
        Ok(result) => Ended::Returned(result),
        Err(panic) => Ended::Panicked(panic_message(panic.as_ref())),
    };
    if let Some(inner) = inner.upgrade() {
        inner.finish(slot, ended);
    }
}

/// [`run_task`] for a task spawned with the caller's token: cancelling that
/// token from outside is a cancellation request, so it starts the grace.
async fn run_task_with_token<F, Fut>(
    inner: Weak<Inner>,
    slot: Arc<TaskSlot>,
    token: RunCancellationToken,
    f: F,
    ctx: TaskContext,
) where
    F: FnOnce(TaskContext) -> Fut + Send + 'static,
    Fut: Future<Output = TaskResult> + Send + 'static,
{
    let work = AssertUnwindSafe(async move { f(ctx).await }).catch_unwind();
    tokio::pin!(work);
    let outcome = tokio::select! {
        biased;
        outcome = &mut work => outcome,
        () = token.cancelled() => {
            if let Some(inner) = inner.upgrade() {
                inner.schedule_reap(&slot);
            }
            work.await
        }
    };
    report(&inner, &slot, outcome);
}

/// Drops cancelled tasks that outlive the cancel grace. Deadlines arrive in
/// order (the grace is the same for every task), so a queue is enough.
async fn reap(
    inner: Weak<Inner>,
    mut requests: mpsc::UnboundedReceiver<(Instant, Weak<TaskSlot>)>,
) {
    let mut due: VecDeque<(Instant, Weak<TaskSlot>)> = VecDeque::new();
    loop {
        let next = due.front().map(|(at, _)| *at);
        tokio::select! {
            request = requests.recv() => match request {
                Some(request) => due.push_back(request),
                // The manager is gone.
                None => return,
            },
            () = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {
                let now = Instant::now();
                while due.front().is_some_and(|(at, _)| *at <= now) {
                    if let Some((_, slot)) = due.pop_front()
                        && let (Some(inner), Some(slot)) = (inner.upgrade(), slot.upgrade())
                    {
                        inner.abandon(&slot);
                    }
                }
            }
        }
    }
}

impl Drop for Inner {
    /// The last handle is gone: nobody can observe or record these tasks any
    /// more, so they are aborted rather than left running unsupervised.
    fn drop(&mut self) {
        let reg = self
            .registry
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        for slot in &reg.tasks {
            if let Some(abort) = slot.0.lock().abort.take() {
                abort.abort();
            }
        }
    }
}

/// The outcome of a task interrupted by `shutdown` or by the loss of its
/// process: `stopped` when it can be resumed, else `failed`.
pub(crate) fn interrupted(supports_resume: bool) -> (TaskStatus, Option<Value>, Option<String>) {
    if supports_resume {
        (TaskStatus::Stopped, None, None)
    } else {
        (
            TaskStatus::Failed,
            None,
            Some("interrupted: the task manager shut down before the task finished".to_owned()),
        )
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic with a non-string payload".to_owned())
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Registry> {
        // The registry is consistent at every unlock: no code panics while
        // holding it half-changed, so a poisoned lock is still usable.
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends an event about a task if anybody listens. Called under the
    /// task's lock, so a task's events are sent in the order its changes
    /// happened.
    fn emit(&self, slot: &TaskSlot, attempt: u32, kind: TaskEventKind) {
        if self.listened() {
            // A send fails only when every receiver is gone: nobody to tell.
            let _ = self.events.send(TaskEvent {
                owner_thread_id: slot.owner().to_owned(),
                task_id: slot.task_id.clone(),
                attempt,
                kind,
            });
        }
    }

    /// Whether anybody may be listening to events. Without a subscription
    /// ever made this is one atomic read, not the channel's lock.
    fn listened(&self) -> bool {
        self.subscribed.load(Ordering::Acquire) && self.events.receiver_count() > 0
    }

    /// Marks a running task's cancellation requested, cancels its token (if
    /// it has one yet; one made later is born cancelled) and starts its
    /// grace.
    fn request_cancel(self: &Arc<Self>, slot: &Arc<TaskSlot>, entry: &mut Entry) {
        if !entry.cancel_requested {
            entry.cancel_requested = true;
            if let Some(token) = &entry.token {
                token.cancel();
            }
            self.emit(slot, entry.attempt, TaskEventKind::CancelRequested);
            self.schedule_reap(slot);
        }
    }

    /// Has the reaper drop the task if it still runs a cancel grace from now.
    fn schedule_reap(self: &Arc<Self>, slot: &Arc<TaskSlot>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime, so no timer: the task is left to return on its own.
            return;
        };
        let deadline = Instant::now() + self.cancel_grace;
        let sender = self.reaper.get_or_init(|| {
            let (sender, requests) = mpsc::unbounded_channel();
            runtime.spawn(reap(Arc::downgrade(self), requests));
            sender
        });
        // Fails only once the reaper is gone with the runtime: nothing to do.
        let _ = sender.send((deadline, Arc::downgrade(slot)));
    }

    /// A cancelled task's grace is over: if that epoch still runs, it is
    /// aborted and recorded `cancelled`.
    fn abandon(self: &Arc<Self>, slot: &Arc<TaskSlot>) {
        {
            let mut entry = slot.lock();
            if entry.status != TaskStatus::Running {
                return;
            }
            if let Some(abort) = entry.abort.take() {
                abort.abort();
            }
        }
        self.finish(slot, Ended::Abandoned);
    }

    /// A lease held by this instance from `now_ms` for one TTL.
    fn new_lease(&self, now_ms: u64) -> Lease {
        Lease {
            holder: self.instance_id.clone(),
            expires_at_ms: now_ms.saturating_add(duration_ms(self.leases.ttl)),
        }
    }

    /// The current slot of a task id, whoever owns it.
    fn slot_of(&self, task_id: &str) -> Option<Arc<TaskSlot>> {
        self.lock().get(task_id).cloned()
    }

    /// A cancellation requested by another process for `attempt` of a task
    /// this instance runs.
    pub(crate) fn cancel_from_inbox(self: &Arc<Self>, task_id: &str, attempt: u32) {
        if let Some(slot) = self.slot_of(task_id) {
            let mut entry = slot.lock();
            if entry.status == TaskStatus::Running && entry.attempt == attempt {
                self.request_cancel(&slot, &mut entry);
            }
        }
    }

    /// Whether this instance runs `attempt` of the task right now.
    pub(crate) fn runs(&self, task_id: &str, attempt: u32) -> bool {
        self.slot_of(task_id).is_some_and(|slot| {
            let entry = slot.lock();
            entry.status == TaskStatus::Running && entry.attempt == attempt
        })
    }

    /// Records the end of a task's epoch (its slot). Reports after an outside
    /// `update_status` are ignored; so are those of an older epoch, whose
    /// slot is no longer registered and has already finished.
    fn finish(self: &Arc<Self>, slot: &TaskSlot, ended: Ended) {
        {
            let mut entry = slot.lock();
            if entry.status != TaskStatus::Running {
                return;
            }
            let cancelled = entry.cancel_requested
                || entry
                    .token
                    .as_ref()
                    .is_some_and(RunCancellationToken::is_cancelled);
            let (status, result, error) = match ended {
                // A shutdown interrupts; what the task finished on its own stands.
                Ended::Returned(TaskResult::Success(v)) if entry.shutting_down => {
                    (TaskStatus::Completed, Some(v), None)
                }
                Ended::Returned(TaskResult::Failed(e)) if entry.shutting_down => {
                    (TaskStatus::Failed, None, Some(e))
                }
                _ if entry.shutting_down => interrupted(slot.supports_resume),
                Ended::Abandoned => (
                    TaskStatus::Cancelled,
                    None,
                    Some(format!(
                        "did not stop within the cancel grace of {:?}; dropped",
                        self.cancel_grace
                    )),
                ),
                _ if cancelled => (TaskStatus::Cancelled, None, None),
                Ended::Returned(TaskResult::Success(v)) => (TaskStatus::Completed, Some(v), None),
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
            self.settle(slot, &mut entry, status, result, error);
            slot.stopped_running();
        }
        self.after_finish(slot.owner());
    }

    /// Applies the retention policy to an owner after one of its tasks
    /// finished or became durable. Takes the registry lock only when a
    /// policy is set.
    fn after_finish(&self, owner: &str) {
        if self.retention.is_active() {
            let mut reg = self.lock();
            self.enforce_retention(&mut reg, owner);
        }
    }

    /// Writes a finished outcome into an entry, wakes its waiters and queues
    /// the durable write. The caller fixes the owner's running count.
    fn settle(
        self: &Arc<Self>,
        slot: &TaskSlot,
        entry: &mut Entry,
        status: TaskStatus,
        result: Option<Value>,
        error: Option<String>,
    ) {
        let at_ms = self.clock.now_ms();
        let was_running = entry.status == TaskStatus::Running;
        entry.status = status;
        entry.result = result;
        entry.error = error;
        entry.completed_at_ms = Some(at_ms);
        entry.token = None;
        slot.finished.notify_waiters();
        if let Some(outbox) = &self.outbox {
            entry.pending_writes += 1;
            outbox.enqueue(
                self,
                Job {
                    task_id: slot.task_id.clone(),
                    epoch: slot.seq,
                    step: Step::Finish {
                        attempt: entry.durable_attempt,
                        holder: was_running.then(|| self.instance_id.clone()),
                        status,
                        result: entry.result.clone(),
                        error: entry.error.clone(),
                        at_ms,
                    },
                },
            );
        }
        self.emit(slot, entry.attempt, TaskEventKind::Finished { status });
    }

    /// Output reported by a running task.
    pub(crate) fn emit_output(self: &Arc<Self>, slot: &TaskSlot, value: Value) {
        let mut entry = slot.lock();
        if entry.status != TaskStatus::Running {
            return;
        }
        if self.listened() {
            self.emit(slot, entry.attempt, TaskEventKind::Output(value.clone()));
        }
        if let Some(outbox) = &self.outbox {
            entry.output_seq += 1;
            entry.pending_writes += 1;
            outbox.enqueue(
                self,
                Job {
                    task_id: slot.task_id.clone(),
                    epoch: slot.seq,
                    step: Step::Output {
                        attempt: entry.durable_attempt,
                        seq: entry.output_seq,
                        value,
                    },
                },
            );
        }
    }

    /// The outbox reports a write: `resolved` steps are durable or given up;
    /// `error` is the write's error, if it failed (`permanent` or retried).
    fn on_written(
        &self,
        task_id: &str,
        epoch: u64,
        resolved: usize,
        attempt: Option<u32>,
        error: Option<(String, bool)>,
        drained: bool,
    ) {
        let Some(slot) = self.slot_of(task_id) else {
            return;
        };
        {
            let mut entry = slot.lock();
            let resolved = u32::try_from(resolved).unwrap_or(u32::MAX);
            entry.pending_writes = entry.pending_writes.saturating_sub(resolved);
            if slot.seq != epoch {
                return;
            }
            if let Some(attempt) = attempt {
                entry.attempt = attempt;
            }
            let kind = match error {
                Some((error, permanent)) => {
                    entry.persistence_error = Some(error.clone());
                    TaskEventKind::PersistenceFailed { error, permanent }
                }
                None if drained => {
                    entry.persistence_error = None;
                    TaskEventKind::Persisted
                }
                None => return,
            };
            self.emit(&slot, entry.attempt, kind);
        }
        self.after_finish(slot.owner());
    }

    /// Drops the owner's terminal tasks that the retention policy no longer
    /// keeps. Costs the owner's task count, and nothing without a policy.
    fn enforce_retention(&self, reg: &mut Registry, owner: &str) {
        if !self.retention.is_active() {
            return;
        }
        let now_ms = self.clock.now_ms();
        let collectable = reg.collectable(owner);
        let mut keep = collectable.len();
        let max_keep = self.retention.max_terminal_per_owner.unwrap_or(usize::MAX);
        for (id, finished_at_ms) in collectable {
            let expired = self.retention.max_age.is_some_and(|age| {
                finished_at_ms.is_some_and(|t| now_ms.saturating_sub(t) >= duration_ms(age))
            });
            if expired || keep > max_keep {
                reg.remove(&id);
                keep -= 1;
            }
        }
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
}
