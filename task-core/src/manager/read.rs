//! Reading tasks: summaries, waits, listings, output, progress, events.

use std::collections::HashSet;

use futures::Stream;
use tokio::sync::broadcast;

use super::distributed::{sort_by_creation, summary_of};
use super::streams::{OutputStream, OwnerWatch};
use super::{BackgroundTaskManager, DurablePage, ManagerStats};
use crate::{
    OutputEntry, OutputPage, TaskError, TaskEvent, TaskId, TaskStatus, TaskSummary, validate,
};

impl BackgroundTaskManager {
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
        match store.read_output(task_id, after, limit).await {
            // Held here and not written yet: nothing durable to read so far.
            Err(TaskError::UnknownTask { .. }) if slot.is_some() => Ok(OutputPage {
                entries: Vec::new(),
                next: after,
            }),
            other => other,
        }
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
        let state = OutputStream::new(self.clone(), owner, task_id, after);
        futures::stream::unfold(state, |mut state| async move {
            let item = state.next().await?;
            Some((item, state))
        })
    }

    /// The changes of one owner's tasks in every process: the durable
    /// counterpart of [`subscribe`](Self::subscribe). It yields the summary
    /// of each of the owner's open tasks (running or resumable) when it
    /// starts, then the summary of each task whose status or attempt
    /// changed, and the final summary of each task that closed. With a task
    /// store it reads the owner's open records every control poll interval
    /// (the cost of the owner's live work, not of its history), so it sees
    /// the tasks of every process that shares the store; without one, it
    /// follows this manager's events.
    pub fn watch_owner(
        &self,
        owner: &str,
    ) -> impl Stream<Item = Result<TaskSummary, TaskError>> + Send + 'static {
        let state = OwnerWatch::new(self.clone(), owner);
        futures::stream::unfold(state, |mut state| async move {
            let item = state.next().await?;
            Some((item, state))
        })
    }

    /// The last progress report of one of the owner's tasks held here
    /// ([`TaskContext::progress`](crate::TaskContext::progress)), while it runs and after; `None` when it
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
}
