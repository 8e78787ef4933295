//! Cancelling tasks and setting their status from outside.

use super::BackgroundTaskManager;
use super::TreeCancellation;
use crate::{TaskError, TaskStatus, TaskSummary};

impl BackgroundTaskManager {
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
        let (mut root_status, mut cancelled) = self.core.cancel_local_tree(owner, task_id);
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
}
