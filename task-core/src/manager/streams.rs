//! The streams a manager hands out.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use tokio::sync::broadcast;

use super::BackgroundTaskManager;
use super::distributed::summary_of;
use crate::{OutputEntry, TaskError, TaskEvent, TaskEventKind, TaskId, TaskStatus, TaskSummary};

/// The state of [`BackgroundTaskManager::output_stream`].
pub(super) struct OutputStream {
    manager: BackgroundTaskManager,
    owner: String,
    task_id: String,
    after: u64,
    buffered: VecDeque<OutputEntry>,
    events: broadcast::Receiver<TaskEvent>,
    done: bool,
}

impl OutputStream {
    pub(super) fn new(
        manager: BackgroundTaskManager,
        owner: &str,
        task_id: &str,
        after: u64,
    ) -> Self {
        let events = manager.core.subscribe();
        Self {
            manager,
            owner: owner.to_owned(),
            task_id: task_id.to_owned(),
            after,
            buffered: VecDeque::new(),
            events,
            done: false,
        }
    }

    pub(super) async fn next(&mut self) -> Option<Result<OutputEntry, TaskError>> {
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

/// The state of [`BackgroundTaskManager::watch_owner`].
pub(super) struct OwnerWatch {
    manager: BackgroundTaskManager,
    owner: String,
    /// What was last yielded of each task that was open.
    known: HashMap<TaskId, (TaskStatus, u32)>,
    ready: VecDeque<TaskSummary>,
    /// Without a task store: this manager's events.
    events: Option<broadcast::Receiver<TaskEvent>>,
    first: bool,
}

impl OwnerWatch {
    pub(super) fn new(manager: BackgroundTaskManager, owner: &str) -> Self {
        let events = manager
            .task_store()
            .is_none()
            .then(|| manager.core.subscribe());
        Self {
            manager,
            owner: owner.to_owned(),
            known: HashMap::new(),
            ready: VecDeque::new(),
            events,
            first: true,
        }
    }

    pub(super) async fn next(&mut self) -> Option<Result<TaskSummary, TaskError>> {
        loop {
            if let Some(summary) = self.ready.pop_front() {
                return Some(Ok(summary));
            }
            if let Some(events) = &mut self.events {
                // No store: this process's tasks are all there is.
                match events.recv().await {
                    Ok(event) if event.owner_thread_id == self.owner => {
                        if matches!(
                            event.kind,
                            TaskEventKind::Spawned
                                | TaskEventKind::CancelRequested
                                | TaskEventKind::Finished { .. }
                        ) && let Some(summary) =
                            self.manager.get(&self.owner, &event.task_id).await
                        {
                            return Some(Ok(summary));
                        }
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
                continue;
            }
            if !self.first {
                tokio::time::sleep(self.poll_every()).await;
            }
            self.first = false;
            if let Err(error) = self.poll().await {
                return Some(Err(error));
            }
        }
    }

    fn poll_every(&self) -> Duration {
        self.manager
            .remote
            .as_ref()
            .map_or(Duration::from_millis(250), |r| r.poll_every())
    }

    /// Reads the owner's open records, and once more each record that left
    /// them (it closed); queues what changed.
    async fn poll(&mut self) -> Result<(), TaskError> {
        let Some(store) = self.manager.task_store().cloned() else {
            return Ok(());
        };
        let open = store.list_open_tasks(&self.owner).await?;
        let mut seen = HashSet::new();
        for record in open.into_iter().filter_map(Result::ok) {
            seen.insert(record.task_id.clone());
            let now = (record.status, record.attempt);
            if self.known.get(&record.task_id) != Some(&now) {
                self.known.insert(record.task_id.clone(), now);
                self.ready.push_back(summary_of(&record));
            }
        }
        let left: Vec<TaskId> = self
            .known
            .keys()
            .filter(|id| !seen.contains(*id))
            .cloned()
            .collect();
        for id in left {
            self.known.remove(&id);
            if let Some(record) = store.load_task(&id).await? {
                self.ready.push_back(summary_of(&record));
            }
        }
        Ok(())
    }
}
