//! The streams a manager hands out.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::broadcast;

use super::BackgroundTaskManager;
use crate::{OutputEntry, TaskError, TaskEvent, TaskEventKind};

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
