//! The cross-process layer of a manager: instance records and leases, the
//! inbox and its typed messages, the control loop, recovery, and the remote
//! parts of `cancel`, `cancel_tree`, `get`, `wait`, `list_including_durable`
//! and `resume`. Built only for a multi-process manager (see the builder);
//! it reads and writes other processes' state only through `protocol` and
//! `records`, and reaches this process's tasks only through the core.
//!
//! Every call here reads the owner's open tasks (the store's index of
//! records that can still run), never the owner's history.

mod inbox;
mod lease;
pub(crate) mod recovery;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use futures::StreamExt;
use task_store::{ChangeSet, Thread, ThreadStoreError, VersionPrecondition};
use tokio::time::Instant;

use super::background::{Alive, Background};
use super::config::LeaseConfig;
use super::core::Core;
use crate::protocol::{INSTANCE_KIND, InboxMessage, InstanceRecord, instance_thread};
use crate::records::{Change, Known, LOAD_CONCURRENCY, decide};
use crate::state::{Rejection, TaskRecord, Transition};
use crate::{TaskError, TaskId, TaskStatus, TaskStore, TaskSummary};

/// The cross-process layer.
#[derive(Debug)]
pub(crate) struct Distributed {
    core: Weak<Core>,
    store: Arc<TaskStore>,
    instance_id: String,
    leases: LeaseConfig,
    background: Background,
    renewer: Arc<Alive>,
    control: Arc<Alive>,
    /// The inbox position read so far, in this life.
    cursor: Mutex<u64>,
    /// Whether the start-up recovery is still to run.
    start_recovery: AtomicBool,
    /// Resumes what recovery found for this instance's handlers (set by the
    /// manager when it has handlers).
    pub(crate) resumer: std::sync::OnceLock<Resumer>,
}

/// The manager's resume of the stopped tasks recovery found, for the
/// recovery the control loop runs.
pub(crate) struct Resumer(
    pub(crate)  Box<
        dyn Fn(Vec<recovery::Resumable>) -> futures::future::BoxFuture<'static, Vec<TaskId>>
            + Send
            + Sync,
    >,
);

impl std::fmt::Debug for Resumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Resumer")
    }
}

impl Distributed {
    pub(crate) fn new(
        core: &Arc<Core>,
        store: Arc<TaskStore>,
        instance_id: String,
        leases: LeaseConfig,
    ) -> Arc<Self> {
        Arc::new(Self {
            core: Arc::downgrade(core),
            store,
            instance_id,
            leases,
            background: Background::default(),
            renewer: Arc::default(),
            control: Arc::default(),
            cursor: Mutex::new(0),
            start_recovery: AtomicBool::new(leases.recover_on_start),
            resumer: std::sync::OnceLock::new(),
        })
    }

    /// Starts (or restarts, after their runtime shut down) lease renewal and
    /// the control loop. Cheap when they run.
    pub(crate) fn ensure_started(self: &Arc<Self>) {
        if self.background.is_stopping() {
            return;
        }
        if !self.renewer.is_alive() {
            let layer = Arc::clone(self);
            self.background
                .ensure(&self.renewer, move || lease::run(layer));
        }
        if !self.control.is_alive() {
            let layer = Arc::clone(self);
            self.background
                .ensure(&self.control, move || inbox::run(layer));
        }
    }

    fn take_start_recovery(&self) -> bool {
        self.start_recovery.swap(false, Ordering::AcqRel)
    }

    fn cursor(&self) -> u64 {
        *self.cursor.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_cursor(&self, cursor: u64) {
        *self.cursor.lock().unwrap_or_else(PoisonError::into_inner) = cursor;
    }

    pub(crate) fn poll_every(&self) -> Duration {
        self.leases.poll_every
    }

    // -------------------------------------------------------------------
    // Stopping
    // -------------------------------------------------------------------

    /// Stops renewal and the control loop, waiting for them until
    /// `deadline`; then removes the instance record (the clean end of the
    /// instance) if there is time. Returns whether the record was removed.
    pub(crate) async fn stop(&self, deadline: Instant) -> bool {
        if tokio::time::timeout_at(deadline, self.background.stop())
            .await
            .is_err()
        {
            tracing::warn!(
                instance = %self.instance_id,
                "lease renewal did not stop in time; the lease is left to expire"
            );
            return false;
        }
        match tokio::time::timeout_at(deadline, self.remove_instance()).await {
            Ok(Ok(())) => true,
            Ok(Err(error)) => {
                tracing::warn!(instance = %self.instance_id, %error, "the instance record was not removed; it expires");
                false
            }
            Err(_) => false,
        }
    }

    // -------------------------------------------------------------------
    // Remote control
    // -------------------------------------------------------------------

    /// The durable record of one of the owner's tasks.
    pub(crate) async fn record(
        &self,
        owner: &str,
        task_id: &str,
    ) -> Result<Option<TaskRecord>, TaskError> {
        if crate::validate::owner(owner).is_err()
            || crate::validate::task_id("task_id", task_id).is_err()
        {
            return Ok(None);
        }
        Ok(self
            .store
            .load_task(task_id)
            .await?
            .filter(|r| r.owner_thread_id == owner))
    }

    /// Cancels a task another instance holds: the durable request on its
    /// record (its current attempt), then a message in the holder's inbox
    /// (creating the inbox when the holder has not written it yet), then a
    /// wake-up. When this returns Ok, the request is durable in both places:
    /// a live holder sees it within its poll interval.
    ///
    /// # Errors
    ///
    /// `UnknownTask` when the owner has no such record; `NotRunning` when it
    /// has finished; `Store` when a write fails (retry: it is idempotent).
    pub(crate) async fn cancel(&self, owner: &str, task_id: &str) -> Result<TaskRecord, TaskError> {
        let Some(core) = self.core.upgrade() else {
            return Err(TaskError::ShuttingDown);
        };
        let at_ms = core.clock.now_ms();
        drop(core);
        crate::validate::task_id("task_id", task_id).map_err(|_| TaskError::unknown(task_id))?;
        let written = self
            .store
            .cas(task_id, Known::Unknown, |current| {
                let Some(record) = current.filter(|r| r.owner_thread_id == owner) else {
                    return Err(TaskError::unknown(task_id));
                };
                if record.status.is_terminal() {
                    return Err(TaskError::NotRunning {
                        task_id: task_id.to_owned(),
                        status: record.status,
                    });
                }
                let transition = Transition::RequestCancel {
                    attempt: record.attempt,
                    at_ms,
                };
                decide(
                    task_id,
                    Some(owner),
                    current,
                    &[Change::Transition(transition)],
                )
            })
            .await;
        let current = match written {
            Ok(current) => current.record,
            Err(TaskError::Rejected {
                reason:
                    Rejection::NotRunning { current }
                    | Rejection::LeaseLost { current, .. }
                    | Rejection::AlreadyTerminal { current, .. },
                ..
            }) => {
                return Err(TaskError::NotRunning {
                    task_id: task_id.to_owned(),
                    status: current,
                });
            }
            Err(TaskError::Rejected {
                reason: Rejection::OwnerMismatch,
                ..
            }) => return Err(TaskError::unknown(task_id)),
            Err(e) => return Err(e),
        };
        if current.status != TaskStatus::Running {
            // Stopped: the durable request is all there is; a resume sees it.
            return Ok(current);
        }
        let Some(holder) = current.lease.as_ref().map(|l| l.holder.clone()) else {
            // Nobody holds it: the durable request is all there is to do; a
            // manager that adopts the record sees it.
            return Ok(current);
        };
        let message = InboxMessage::Cancel {
            task_id: current.task_id.clone(),
            attempt: current.attempt,
            run_id: current.run_id.clone(),
            from: self.instance_id.clone(),
        };
        self.send(&holder, &message).await?;
        self.wake(&holder).await;
        Ok(current)
    }

    /// Appends a message to `holder`'s inbox, creating its instance thread
    /// when it does not exist yet (its first renewal has not landed).
    async fn send(&self, holder: &str, message: &InboxMessage) -> Result<(), TaskError> {
        let thread_id = instance_thread(holder);
        let store = self.store.thread_store();
        for _ in 0..4 {
            let changes = ChangeSet::default().with_message(message.to_message());
            match store
                .append(&thread_id, changes, VersionPrecondition::Any)
                .await
            {
                Ok(_) => return Ok(()),
                Err(ThreadStoreError::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
            let inbox = Thread::new(&thread_id, INSTANCE_KIND)
                .with_state(
                    InstanceRecord {
                        instance_id: holder.to_owned(),
                        expires_at_ms: 0,
                        renewed_at_ms: 0,
                    }
                    .encode(),
                )
                .with_message(message.to_message());
            match store.create(inbox).await {
                Ok(_) => return Ok(()),
                // The holder wrote it meanwhile: append to it.
                Err(ThreadStoreError::AlreadyExists { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Err(TaskError::Store(ThreadStoreError::unavailable(format!(
            "the inbox of instance {holder} kept appearing and disappearing; retry"
        ))))
    }

    /// Wakes instance `holder`, so it reads its inbox now. Best effort.
    async fn wake(&self, holder: &str) {
        if let Some(signals) = self.store.thread_store().signals()
            && let Err(error) = signals.signal(&instance_thread(holder)).await
        {
            tracing::debug!(%error, holder, "wake-up not sent; the holder polls its inbox");
        }
    }

    /// Wakes the watchers of a task whose durable record just closed (a
    /// `wait` in another process). Best effort.
    pub(crate) fn task_closed(self: &Arc<Self>, task_id: &str) {
        if self.store.thread_store().signals().is_none() {
            return;
        }
        let layer = Arc::clone(self);
        let channel = TaskStore::thread_id(task_id);
        self.background.spawn(async move {
            if let Some(signals) = layer.store.thread_store().signals() {
                let _ = signals.signal(&channel).await;
            }
        });
    }

    /// The owner's open durable records (running or resumable), loaded a
    /// bounded number at once; unreadable ones are skipped.
    pub(crate) async fn open_records(&self, owner: &str) -> Result<Vec<TaskRecord>, TaskError> {
        Ok(self
            .store
            .list_open_tasks(owner)
            .await?
            .into_iter()
            .filter_map(Result::ok)
            .collect())
    }

    /// The records of the owner's tree under `root` that run elsewhere (not
    /// held by `core`), found through the owner's open records, plus the
    /// closed ancestors that link them to the root (each loaded once, unless
    /// held here).
    pub(crate) async fn remote_tree(
        &self,
        core: &Core,
        owner: &str,
        root: &str,
    ) -> Result<Vec<TaskRecord>, TaskError> {
        let open = self.open_records(owner).await?;
        let mut parents: HashMap<TaskId, Option<TaskId>> = open
            .iter()
            .map(|r| (r.task_id.clone(), r.parent_task_id.clone()))
            .collect();
        let mut in_tree: HashMap<TaskId, bool> = HashMap::from([(root.to_owned(), true)]);
        let mut remote = Vec::new();
        for r in open {
            if r.status != TaskStatus::Running || core.parent_of(owner, &r.task_id).is_some() {
                continue;
            }
            // Walk up to the root, an ancestor at a time.
            let mut chain = Vec::new();
            let mut seen = HashSet::new();
            let mut at = Some(r.task_id.clone());
            let verdict = loop {
                let Some(id) = at else { break false };
                if let Some(known) = in_tree.get(&id) {
                    break *known;
                }
                if !seen.insert(id.clone()) {
                    // A cycle that does not pass through the root.
                    break false;
                }
                let parent = match core.parent_of(owner, &id) {
                    Some(parent) => parent,
                    None => match parents.get(&id) {
                        Some(parent) => parent.clone(),
                        None => {
                            let parent = self
                                .record(owner, &id)
                                .await?
                                .and_then(|r| r.parent_task_id);
                            parents.insert(id.clone(), parent.clone());
                            parent
                        }
                    },
                };
                chain.push(id);
                at = parent;
            };
            for id in chain {
                in_tree.insert(id, verdict);
            }
            if verdict {
                remote.push(r);
            }
        }
        Ok(remote)
    }

    /// Cancels each record through its holder, a bounded number at once;
    /// returns the summaries of those whose cancellation was requested, and
    /// the first error met.
    pub(crate) async fn cancel_all(
        &self,
        owner: &str,
        records: Vec<TaskRecord>,
    ) -> (Vec<TaskSummary>, Option<TaskError>) {
        let results = futures::stream::iter(records)
            .map(|record| async move { self.cancel(owner, &record.task_id).await })
            .buffered(LOAD_CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
        let mut cancelled = Vec::new();
        let mut first_error = None;
        for result in results {
            match result {
                Ok(record) => cancelled.push(summary_of(&record)),
                Err(TaskError::NotRunning { .. }) => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        (cancelled, first_error)
    }

    /// Waits until one of the owner's tasks held elsewhere is no longer
    /// running: woken by the store's signal for the task (when it has
    /// signals) and otherwise looking every poll interval.
    pub(crate) async fn wait(&self, owner: &str, task_id: &str) -> Option<TaskSummary> {
        let channel = TaskStore::thread_id(task_id);
        let mut signals = match self.store.thread_store().signals() {
            Some(signals) => signals.watch(&channel).await.ok(),
            None => None,
        };
        loop {
            match self.record(owner, task_id).await {
                Ok(None) => return None,
                Ok(Some(record)) if record.status != TaskStatus::Running => {
                    return Some(summary_of(&record));
                }
                Ok(Some(_)) => {}
                Err(error) => {
                    tracing::debug!(%error, task_id, "waiting: cannot read the record; retrying")
                }
            }
            let poll = tokio::time::sleep(self.leases.poll_every);
            match &mut signals {
                Some(receiver) => {
                    tokio::select! {
                        () = poll => {}
                        received = receiver.recv() => {
                            if received.is_none() {
                                signals = None;
                            }
                        }
                    }
                }
                None => poll.await,
            }
        }
    }
}

/// Orders summaries by creation time, then id.
pub(crate) fn sort_by_creation(summaries: &mut [TaskSummary]) {
    summaries.sort_by(|a, b| (a.created_at_ms, &a.task_id).cmp(&(b.created_at_ms, &b.task_id)));
}

/// The summary of a durable record, for tasks this instance does not hold.
pub(crate) fn summary_of(r: &TaskRecord) -> TaskSummary {
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
