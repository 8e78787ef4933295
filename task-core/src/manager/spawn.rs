//! Spawning and resuming tasks.

use std::future::Future;
use std::sync::Arc;

use super::BackgroundTaskManager;
use super::clock;
use super::core::task::TaskContext;
use super::core::task::{SharedRun, SlotPolicy, Work, metadata_text};
use super::core::{Durable, Launch, plan_from_record};
use super::distributed::summary_of;
use crate::model::new_task_id_at;
use crate::records::Known;
use crate::state::{Rejection, Transition};
use crate::{
    RunCancellationToken, SpawnParams, TaskError, TaskId, TaskRequest, TaskResult, TaskStatus,
    TaskSummary, WhenLimited, new_task_id, validate,
};

impl BackgroundTaskManager {
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
            metadata: None,
            supports_resume: self.core.type_supports_resume(task_type),
            attempt: Some(1),
            run_id: None,
            durable: Durable::Start(Known::Absent),
            now_ms,
            admitted: false,
            policy: self.core.slot_policy(task_type, None, None, None, None),
            when_limited: WhenLimited::Queue,
            retry_of: None,
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
        let metadata = validate::TaskInput {
            task_id: &task_id,
            owner: &owner,
            task_type: &task_type,
            description: &description,
            parent_task_id: parent_task_id.as_deref(),
            metadata: &metadata,
        }
        .check()?;
        self.touch();
        let (attempt, durable) = self.plan_caller_id(&owner, &task_id).await?;
        let permit = self.core.admit_write().await?;
        let launch = Launch {
            supports_resume: self.core.type_supports_resume(&task_type),
            policy: self.core.slot_policy(&task_type, None, None, None, None),
            when_limited: WhenLimited::Queue,
            retry_of: None,
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

    /// Where the durable record of a caller-chosen id stands: the attempt to
    /// start and what is stored (one read, unless this single-process
    /// manager holds the id), or the error the caller gets.
    async fn plan_caller_id(
        &self,
        owner: &str,
        task_id: &str,
    ) -> Result<(Option<u32>, Durable), TaskError> {
        let held = match self.core.slot_of(task_id) {
            Some(slot) if slot.owner() != owner => {
                return Err(TaskError::IdTaken {
                    task_id: task_id.to_owned(),
                });
            }
            Some(slot) if !slot.lock().status.is_finished() => {
                return Err(TaskError::AlreadyRunning {
                    task_id: task_id.to_owned(),
                });
            }
            held => held.is_some(),
        };
        Ok(match self.task_store() {
            Some(store) if self.remote.is_some() || !held => {
                let found = store.load_versioned(task_id).await?;
                let (attempt, known) = plan_from_record(owner, task_id, self.instance_id(), found)?;
                (Some(attempt), Durable::Start(known))
            }
            Some(_) => (None, Durable::Start(Known::Unknown)),
            None => (None, Durable::Nothing),
        })
    }

    /// Runs a task with the handler registered for its type (see
    /// [`handler`](crate::BackgroundTaskManagerBuilder::handler)), under the
    /// policies of its type and of the request: timeout, retries (the
    /// handler runs again for each attempt), resumability, concurrency
    /// limits. Its metadata is its input.
    ///
    /// # Errors
    ///
    /// `InvalidInput` when no handler is registered for the type, or for the
    /// request's fields (as `spawn_with_id`); `Limited` when a limit is
    /// reached and the request asks to be refused; the errors of
    /// `spawn_with_id` for a request with an id.
    pub async fn submit(&self, request: TaskRequest) -> Result<TaskId, TaskError> {
        let Some(handler) = self.core.handlers.get(&request.task_type).cloned() else {
            return Err(TaskError::InvalidInput {
                reason: format!(
                    "no handler is registered for task type {:?}; register one with the builder's `handler`",
                    request.task_type
                ),
            });
        };
        self.spawn_shared(request, handler).await
    }

    /// Runs `f` as a task under the policies of its type and of the request,
    /// as [`submit`](Self::submit) does with a handler. `f` can run more
    /// than once: once per attempt, for retries.
    ///
    /// # Errors
    ///
    /// As [`submit`](Self::submit), but for the handler.
    pub async fn spawn_request<F, Fut>(
        &self,
        request: TaskRequest,
        f: F,
    ) -> Result<TaskId, TaskError>
    where
        F: Fn(TaskContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = TaskResult> + Send + 'static,
    {
        let work: SharedRun = Arc::new(move |ctx| Box::pin(f(ctx)));
        self.spawn_shared(request, work).await
    }

    async fn spawn_shared(
        &self,
        request: TaskRequest,
        work: SharedRun,
    ) -> Result<TaskId, TaskError> {
        let TaskRequest {
            owner_thread_id: owner,
            task_type,
            description,
            task_id,
            parent_task_id,
            metadata,
            token,
            timeout,
            retry,
            resumable,
            when_limited,
        } = request;
        let chosen = task_id.is_some();
        let now_ms = self.core.clock.now_ms();
        let task_id = task_id.unwrap_or_else(|| new_task_id_at(now_ms));
        let metadata = validate::TaskInput {
            task_id: &task_id,
            owner: &owner,
            task_type: &task_type,
            description: &description,
            parent_task_id: parent_task_id.as_deref(),
            metadata: &metadata,
        }
        .check()?;
        if retry.as_ref().is_some_and(|r| r.max_attempts == 0) {
            return Err(TaskError::InvalidInput {
                reason: "the retry policy must allow at least 1 attempt".to_owned(),
            });
        }
        self.touch();
        let (attempt, durable) = if chosen {
            self.plan_caller_id(&owner, &task_id).await?
        } else {
            (Some(1), Durable::Start(Known::Absent))
        };
        let permit = self.core.admit_write().await?;
        let launch = Launch {
            supports_resume: resumable
                .unwrap_or_else(|| self.core.type_supports_resume(&task_type)),
            policy: self.core.slot_policy(
                &task_type,
                timeout,
                retry,
                Some(Arc::clone(&work)),
                token.clone(),
            ),
            when_limited,
            retry_of: None,
            task_id,
            owner,
            task_type,
            description,
            parent_task_id,
            metadata,
            attempt,
            run_id: None,
            durable,
            now_ms,
            admitted: false,
        };
        self.core
            .launch_work(launch, token, permit, Work::Shared(work))
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
        self.resume_work(owner, task_id, Work::once(f)).await
    }

    /// [`resume`](Self::resume) of boxed work: a handler resumes with the
    /// policies of its type (and can be retried).
    pub(crate) async fn resume_work(
        &self,
        owner: &str,
        task_id: &str,
        work: Work,
    ) -> Result<TaskId, TaskError> {
        self.touch();
        let local = self.get_local(owner, task_id);
        if let Some(s) = &local {
            check_resumable(task_id, s.status, s.supports_resume)?;
        }
        let Some(store) = self.task_store() else {
            let s = local.ok_or_else(|| TaskError::unknown(task_id))?;
            let now = self.core.clock.now_ms();
            let launch = Launch {
                policy: self.resume_policy(&s.task_type, &work, None),
                ..resume_launch(owner, &s, s.attempt + 1, None, now)
            };
            return self.core.launch_work(launch, None, None, work);
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
        let launch = Launch {
            admitted: true,
            policy: self.resume_policy(
                &summary.task_type,
                &work,
                resumed.record.checkpoint.clone(),
            ),
            ..resume_launch(owner, &summary, resumed.record.attempt, Some(run_id), now)
        };
        let launched = self.core.launch_work(launch, None, None, work);
        drop(admission);
        launched
    }

    /// The policy of a resumed attempt: its type's, the work to retry when
    /// it can run again, and the checkpoint it resumes from.
    fn resume_policy(
        &self,
        task_type: &str,
        work: &Work,
        checkpoint: Option<serde_json::Value>,
    ) -> Option<Box<SlotPolicy>> {
        let shared = match work {
            Work::Shared(run) => Some(Arc::clone(run)),
            Work::Once(_) => None,
        };
        let mut policy = self
            .core
            .slot_policy(task_type, None, None, shared, None)
            .map(|p| *p)
            .unwrap_or_default();
        policy.previous_checkpoint = checkpoint;
        let empty = policy.timeout.is_none()
            && policy.retry.is_none()
            && policy.work.is_none()
            && policy.previous_checkpoint.is_none();
        (!empty).then(|| Box::new(policy))
    }

    /// Resumes, with the handler of its type, every stopped task recovery
    /// found that this instance has a handler for; returns those it
    /// resumed. A task another instance resumed first is skipped (the
    /// resume is fenced by attempt).
    pub(crate) async fn resume_found(&self, found: Vec<(String, TaskId, String)>) -> Vec<TaskId> {
        let mut resumed = Vec::new();
        for (owner, task_id, task_type) in found {
            let Some(handler) = self.core.handlers.get(&task_type).cloned() else {
                continue;
            };
            match self
                .resume_work(&owner, &task_id, Work::Shared(handler))
                .await
            {
                Ok(id) => resumed.push(id),
                Err(TaskError::NotResumable { .. } | TaskError::AlreadyRunning { .. }) => {}
                Err(error) => {
                    tracing::warn!(%error, task_id, "a stopped task could not be resumed");
                }
            }
        }
        resumed
    }

    fn get_local(&self, owner: &str, task_id: &str) -> Option<TaskSummary> {
        self.core
            .slot(owner, task_id)
            .map(|slot| self.core.summary(&slot))
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
        metadata: metadata_text(&s.metadata),
        supports_resume: s.supports_resume,
        attempt: Some(attempt),
        run_id,
        durable: Durable::Nothing,
        now_ms,
        admitted: false,
        policy: None,
        when_limited: WhenLimited::Queue,
        retry_of: None,
    }
}
