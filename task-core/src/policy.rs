//! The policies of a job system: concurrency limits, timeouts, retries,
//! and which tasks find a new home after their process is gone.
//!
//! Policies are set per task type on the builder
//! ([`policy`](crate::BackgroundTaskManagerBuilder::policy),
//! [`owner_concurrency`](crate::BackgroundTaskManagerBuilder::owner_concurrency))
//! and per task on a [`TaskRequest`]; a request's own setting wins.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), task_core::TaskError> {
//! use std::time::Duration;
//! use task_core::{BackgroundTaskManager, RetryPolicy, TaskPolicy, TaskRequest, TaskResult, TaskStatus};
//!
//! let manager = BackgroundTaskManager::builder()
//!     // At most 2 fetches run at once; the others wait their turn.
//!     .policy("fetch", TaskPolicy::default().with_concurrency(2))
//!     // Indexing runs again on failure, up to 3 attempts in all.
//!     .policy("index", TaskPolicy::default().with_retry(RetryPolicy::attempts(3)))
//!     .handler("index", |ctx| async move {
//!         match ctx.attempt() {
//!             1 => TaskResult::Failed("the index was busy".into()),
//!             _ => TaskResult::Success(serde_json::json!("indexed")),
//!         }
//!     })
//!     .build();
//! let id = manager.submit(TaskRequest::new("thread-1", "index")).await?;
//! let done = manager.wait("thread-1", &id).await.expect("known");
//! assert_eq!((done.status, done.attempt), (TaskStatus::Completed, 2));
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::{RunCancellationToken, TaskId};

/// Which failed attempts a [`RetryPolicy`] runs again.
#[derive(Clone, Default)]
pub enum RetryOn {
    /// Every failure: a `TaskResult::Failed` and a panic (the default).
    #[default]
    AnyFailure,
    /// Only `TaskResult::Failed` results, not panics.
    FailedResults,
    /// The failures whose message this predicate accepts (a panic's message
    /// starts with `task panicked:`).
    Matching(Arc<dyn Fn(&str) -> bool + Send + Sync>),
}

impl fmt::Debug for RetryOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AnyFailure => f.write_str("AnyFailure"),
            Self::FailedResults => f.write_str("FailedResults"),
            Self::Matching(_) => f.write_str("Matching(..)"),
        }
    }
}

/// How a failed task is run again: as the next attempt of the same task id,
/// after a doubling backoff, up to `max_attempts` attempts in all. Each
/// attempt's start and outcome are in the task's log; between attempts the
/// task is `queued` (a `wait` goes on waiting), and the outcome of its last
/// attempt is its outcome.
///
/// Only tasks whose work can run again are retried: those started with
/// [`submit`](crate::BackgroundTaskManager::submit) or
/// [`spawn_request`](crate::BackgroundTaskManager::spawn_request); a
/// `spawn` closure runs once. A cancelled, timed-out or interrupted attempt
/// is not retried.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (at least 1).
    pub max_attempts: u32,
    /// The delay before the second attempt; it doubles for each one after.
    pub initial_backoff: Duration,
    /// The longest delay between two attempts.
    pub max_backoff: Duration,
    /// Which failures are retried.
    pub retry_on: RetryOn,
}

impl RetryPolicy {
    /// Up to `max_attempts` attempts, 1 s apart at first, doubling to at
    /// most 1 minute, on any failure.
    pub fn attempts(max_attempts: u32) -> Self {
        Self {
            max_attempts,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            retry_on: RetryOn::AnyFailure,
        }
    }

    /// Sets the first delay and the cap of the doubling delays.
    pub fn with_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max.max(initial);
        self
    }

    /// Sets which failures are retried.
    pub fn with_retry_on(mut self, retry_on: RetryOn) -> Self {
        self.retry_on = retry_on;
        self
    }

    /// The delay before attempt `next` (from 2): `initial_backoff` doubled
    /// once per attempt after the second, capped at `max_backoff`. No
    /// jitter: the schedule is exact, so it can be relied on and tested.
    pub fn delay_before(&self, next: u32) -> Duration {
        let doublings = next.saturating_sub(2).min(30);
        self.initial_backoff
            .saturating_mul(1u32 << doublings)
            .min(self.max_backoff)
    }

    /// Whether a failure with this message is retried.
    pub fn retries(&self, error: &str) -> bool {
        match &self.retry_on {
            RetryOn::AnyFailure => true,
            RetryOn::FailedResults => !error.starts_with("task panicked:"),
            RetryOn::Matching(accept) => accept(error),
        }
    }
}

/// What a spawn beyond a concurrency limit does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WhenLimited {
    /// The task is registered as `queued` and starts, in order, when the
    /// limit allows (the default).
    #[default]
    Queue,
    /// The spawn is refused with [`TaskError::Limited`](crate::TaskError::Limited).
    Refuse,
}

/// The policies of one task type (see the [module docs](self)).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct TaskPolicy {
    /// How long a task of this type may run before its cancellation is
    /// requested and it ends `failed` ("timed out"); one that ignores the
    /// request is dropped after the cancel grace.
    pub timeout: Option<Duration>,
    /// How its failures are retried.
    pub retry: Option<RetryPolicy>,
    /// Whether an interrupted task of this type ends `stopped` (and can be
    /// resumed) rather than `failed`; `None` keeps the manager's
    /// [`resumable_types`](crate::BackgroundTaskManagerBuilder::resumable_types).
    pub resumable: Option<bool>,
    /// How many tasks of this type run at once in this process.
    pub concurrency: Option<usize>,
}

impl TaskPolicy {
    /// Sets the timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sets the retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = Some(retry);
        self
    }

    /// Sets whether its tasks can be resumed.
    pub fn with_resumable(mut self, resumable: bool) -> Self {
        self.resumable = Some(resumable);
        self
    }

    /// Sets how many of its tasks run at once.
    pub fn with_concurrency(mut self, limit: usize) -> Self {
        self.concurrency = Some(limit);
        self
    }
}

/// A task to run with the manager's policies: for
/// [`submit`](crate::BackgroundTaskManager::submit) (the handler registered
/// for its type runs it) and
/// [`spawn_request`](crate::BackgroundTaskManager::spawn_request) (a
/// closure that can run again, for retries). Its settings override the
/// policy of its type.
#[derive(Debug, Clone)]
pub struct TaskRequest {
    /// The owner.
    pub owner_thread_id: String,
    /// The task's type: it selects the handler and the policy.
    pub task_type: String,
    /// Its description.
    pub description: String,
    /// Its id; a new one when `None`.
    pub task_id: Option<TaskId>,
    /// The task that spawns it, for `cancel_tree`.
    pub parent_task_id: Option<TaskId>,
    /// Its metadata, which is also its input: the handler reads it with
    /// [`TaskContext::metadata`](crate::TaskContext::metadata), and it is
    /// durable, so a resumed attempt in another process has it too.
    pub metadata: Value,
    /// The caller's cancellation token, if any.
    pub token: Option<RunCancellationToken>,
    /// Overrides the type's timeout.
    pub timeout: Option<Duration>,
    /// Overrides the type's retry policy.
    pub retry: Option<RetryPolicy>,
    /// Overrides whether the task can be resumed.
    pub resumable: Option<bool>,
    /// What to do when a concurrency limit is reached (default: queue).
    pub when_limited: WhenLimited,
}

impl TaskRequest {
    /// A request for a task of `task_type` owned by `owner`.
    pub fn new(owner: impl Into<String>, task_type: impl Into<String>) -> Self {
        Self {
            owner_thread_id: owner.into(),
            task_type: task_type.into(),
            description: String::new(),
            task_id: None,
            parent_task_id: None,
            metadata: Value::Null,
            token: None,
            timeout: None,
            retry: None,
            resumable: None,
            when_limited: WhenLimited::Queue,
        }
    }

    /// Sets the description.
    pub fn with_description(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }

    /// Sets the id.
    pub fn with_id(mut self, task_id: impl Into<TaskId>) -> Self {
        self.task_id = Some(task_id.into());
        self
    }

    /// Sets the parent task.
    pub fn with_parent(mut self, parent: impl Into<TaskId>) -> Self {
        self.parent_task_id = Some(parent.into());
        self
    }

    /// Sets the metadata (the task's input).
    pub fn with_metadata(mut self, metadata: Value) -> Self {
        self.metadata = metadata;
        self
    }

    /// Sets the caller's cancellation token.
    pub fn with_token(mut self, token: RunCancellationToken) -> Self {
        self.token = Some(token);
        self
    }

    /// Sets the timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sets the retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = Some(retry);
        self
    }

    /// Sets whether the task can be resumed.
    pub fn with_resumable(mut self, resumable: bool) -> Self {
        self.resumable = Some(resumable);
        self
    }

    /// Sets what a spawn beyond a concurrency limit does.
    pub fn when_limited(mut self, when: WhenLimited) -> Self {
        self.when_limited = when;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_from_the_second_attempt_and_is_capped() {
        let p = RetryPolicy::attempts(10)
            .with_backoff(Duration::from_millis(100), Duration::from_millis(500));
        let delays: Vec<u128> = (2..=6).map(|n| p.delay_before(n).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 500, 500]);
    }

    #[test]
    fn which_failures_are_retried() {
        let any = RetryPolicy::attempts(2);
        assert!(any.retries("boom") && any.retries("task panicked: x"));
        let results = any.clone().with_retry_on(RetryOn::FailedResults);
        assert!(results.retries("boom") && !results.retries("task panicked: x"));
        let transient = any.with_retry_on(RetryOn::Matching(Arc::new(|e: &str| {
            e.contains("transient")
        })));
        assert!(transient.retries("a transient error") && !transient.retries("bad input"));
    }
}
