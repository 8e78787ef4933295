//! [`BackgroundTaskManagerBuilder`]: a manager's configuration, checked as a
//! whole when it is built.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::config::{
    Backoff, Config, DEFAULT_CANCEL_GRACE, DEFAULT_LEASE_TTL, DEFAULT_OUTBOX_LIMIT, LeaseConfig,
    OutboxConfig, OutboxFull, RetentionPolicy,
};
use super::core::task::SharedRun;
use crate::{TaskError, TaskPolicy, TaskStore, validate};

/// Configures a [`BackgroundTaskManager`](crate::BackgroundTaskManager).
///
/// # One process or several
///
/// A manager with a task store is a **single-process** manager unless it is
/// given an [`instance_id`](Self::instance_id) (or any of the options that
/// only make sense across processes: [`lease`](Self::lease),
/// [`control_poll_interval`](Self::control_poll_interval),
/// [`recover_on_start`](Self::recover_on_start),
/// [`recover_every`](Self::recover_every),
/// [`clock_skew_allowance`](Self::clock_skew_allowance), or
/// [`multi_process`](Self::multi_process)). A single-process manager assumes
/// no other manager writes its tasks: everything its registry can answer is
/// answered from memory, and the store is only written (and read by
/// [`recover`](crate::BackgroundTaskManager::recover) and by re-spawns of ids
/// it no longer holds). A multi-process manager also renews a lease on its
/// tasks, reads an inbox of requests from other processes, and reaches tasks
/// other processes hold (`cancel`, `cancel_tree`, `get`, `wait`, `resume`,
/// `list_including_durable`). Several managers sharing one store must all be
/// multi-process.
#[derive(Clone)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct BackgroundTaskManagerBuilder {
    task_store: Option<Arc<TaskStore>>,
    cancel_grace: Duration,
    retention: RetentionPolicy,
    backoff: Backoff,
    event_capacity: usize,
    instance_id: Option<String>,
    multi_process: bool,
    leases: LeaseConfig,
    outbox_limit: usize,
    when_full: OutboxFull,
    warn_after: Duration,
    write_timeout: Duration,
    max_result_bytes: Option<usize>,
    resumable_types: HashSet<String>,
    owner_concurrency: Option<usize>,
    policies: HashMap<String, TaskPolicy>,
    handlers: HashMap<String, SharedRun>,
}

impl fmt::Debug for BackgroundTaskManagerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut handlers: Vec<&String> = self.handlers.keys().collect();
        handlers.sort();
        f.debug_struct("BackgroundTaskManagerBuilder")
            .field("task_store", &self.task_store)
            .field("cancel_grace", &self.cancel_grace)
            .field("retention", &self.retention)
            .field("instance_id", &self.instance_id)
            .field("multi_process", &self.multi_process)
            .field("leases", &self.leases)
            .field("outbox_limit", &self.outbox_limit)
            .field("owner_concurrency", &self.owner_concurrency)
            .field("policies", &self.policies)
            .field("handlers", &handlers)
            .finish_non_exhaustive()
    }
}

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
            multi_process: false,
            leases: LeaseConfig {
                ttl: DEFAULT_LEASE_TTL,
                renew_every: DEFAULT_LEASE_TTL / 3,
                poll_every: Duration::from_millis(250),
                recover_on_start: false,
                recover_every: None,
                skew_allowance: Duration::from_secs(1),
            },
            outbox_limit: DEFAULT_OUTBOX_LIMIT,
            when_full: OutboxFull::Wait,
            warn_after: Duration::from_secs(5),
            write_timeout: Duration::from_secs(30),
            max_result_bytes: None,
            resumable_types: HashSet::from(["agent_run".to_owned()]),
            owner_concurrency: None,
            policies: HashMap::new(),
            handlers: HashMap::new(),
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
    ///
    /// Dropping is tokio's abort: it takes effect at the task's next
    /// `.await`. A task that never yields (a tight CPU loop, a blocking
    /// call) cannot be preempted: after the grace it is *recorded* as
    /// dropped while its code keeps running on its worker thread (run such
    /// work with `spawn_blocking` and check the token). A runtime whose
    /// workers are all blocked behaves like a paused process: its lease
    /// renewals stop, other processes recover its tasks after the lease
    /// runs out, and its late finishes are then refused by the state
    /// machine; the task's summary shows that refusal in its
    /// `persistence_error` ("… no longer holds the task …"), so the
    /// disagreement between this process and the store is visible.
    pub fn cancel_grace(mut self, grace: Duration) -> Self {
        self.cancel_grace = grace;
        self
    }

    /// Which finished tasks to keep in memory (default: all, until
    /// `gc_terminal`).
    pub fn retention(mut self, policy: RetentionPolicy) -> Self {
        self.retention = policy;
        self
    }

    /// The delay before the first retry of a failed store write and the cap of
    /// the doubling delays after it (defaults 20 ms and 5 s). While the store
    /// itself fails (every write does), the manager sends one probe write at
    /// a time on this schedule and holds the others back, so an outage costs
    /// the store almost nothing.
    pub fn persistence_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff = Backoff {
            initial,
            max: max.max(initial),
        };
        self
    }

    /// The bound of the persistence outbox, in writes not yet durable
    /// (default [`DEFAULT_OUTBOX_LIMIT`]), and what a spawn does when it is
    /// reached (default [`OutboxFull::Wait`]). A task's finish is always
    /// queued (its work is done); spawns and output are held back instead: a
    /// spawn waits or is refused, and output emitted while the outbox is full
    /// reaches subscribers but not the store (see
    /// [`TaskContext::try_emit`](crate::TaskContext::try_emit)). So the
    /// outbox holds at most `limit` writes plus one finish per running task.
    ///
    /// A task's queued writes go out at most 32 at a time (one write to the
    /// store per 32 outputs), so on a slow store a chatty task's output
    /// backlog waits in memory: the limit bounds it too.
    pub fn outbox_limit(mut self, limit: usize, when_full: OutboxFull) -> Self {
        self.outbox_limit = limit;
        self.when_full = when_full;
        self
    }

    /// How long a store write may stay pending before the task's summary
    /// says so (`persistence_error`) and a
    /// [`PersistenceDelayed`](crate::TaskEventKind::PersistenceDelayed) event
    /// is sent (default 5 s). This is how a store that hangs, rather than
    /// fails, shows.
    pub fn persistence_warn_after(mut self, after: Duration) -> Self {
        self.warn_after = after;
        self
    }

    /// How long one store call of the outbox may take before it is abandoned
    /// as timed out and retried (default 30 s; every write is safe to
    /// repeat).
    pub fn persistence_write_timeout(mut self, timeout: Duration) -> Self {
        self.write_timeout = timeout;
        self
    }

    /// The largest result (in bytes of its JSON encoding) a task may return
    /// when a task store is used (default: no limit). A larger result ends
    /// the task `failed` with an error that says so, and nothing that large
    /// is written. Set it with Redis: Redis runs one command at a time, so
    /// one very large value (10 MB, say) delays every other write of every
    /// process, lease renewals included, for as long as it takes to move.
    pub fn max_result_bytes(mut self, limit: usize) -> Self {
        self.max_result_bytes = Some(limit);
        self
    }

    /// The task types whose tasks support resume (default `["agent_run"]`):
    /// a task of one of these types that is interrupted (by `shutdown`, or by
    /// the loss of its process) ends `stopped` and can be resumed; others end
    /// `failed`.
    pub fn resumable_types<I, S>(mut self, types: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.resumable_types = types.into_iter().map(Into::into).collect();
        self
    }

    /// At most this many tasks of one owner run at once in this process
    /// (default: no limit). Beyond it a spawn is queued (the task shows as
    /// `queued` and starts, in order, when one of the owner's tasks stops
    /// running) or refused, as the spawn asks (see
    /// [`WhenLimited`](crate::WhenLimited); `spawn` and `spawn_with_id`
    /// queue).
    pub fn owner_concurrency(mut self, limit: usize) -> Self {
        self.owner_concurrency = Some(limit);
        self
    }

    /// The policies of one task type: timeout, retries, resumability,
    /// concurrency (see [`TaskPolicy`]).
    pub fn policy(mut self, task_type: impl Into<String>, policy: TaskPolicy) -> Self {
        self.policies.insert(task_type.into(), policy);
        self
    }

    /// Registers the work that runs tasks of `task_type`: what
    /// [`submit`](crate::BackgroundTaskManager::submit) runs, what a retry
    /// runs again, and what runs a `stopped` task of that type that
    /// recovery finds (this instance resumes it by itself, as its next
    /// attempt, with [`TaskContext::last_checkpoint`](crate::TaskContext::last_checkpoint)
    /// from the attempt before). Processes sharing a store should register
    /// the same handlers.
    pub fn handler<F, Fut>(mut self, task_type: impl Into<String>, handler: F) -> Self
    where
        F: Fn(crate::TaskContext) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = crate::TaskResult> + Send + 'static,
    {
        let run: SharedRun = Arc::new(move |ctx| Box::pin(handler(ctx)));
        self.handlers.insert(task_type.into(), run);
        self
    }

    /// How many events a slow subscriber may fall behind before it misses
    /// some (default 1024).
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.event_capacity = capacity.max(1);
        self
    }

    /// This manager's instance id, the holder named in the leases of the
    /// tasks it runs (default: a new unique id), and makes the manager
    /// multi-process (see [One process or several](Self#one-process-or-several)).
    /// Give a process the same id across restarts and `recover` knows at once
    /// that running records held by that id belong to an earlier life. The
    /// id follows the rules of task ids (non-empty, no control characters,
    /// at most 200 bytes): a hostname read with its newline is refused.
    pub fn instance_id(mut self, id: impl Into<String>) -> Self {
        self.instance_id = Some(id.into());
        self.multi_process = true;
        self
    }

    /// Makes the manager multi-process (or single-process again) without
    /// choosing its instance id.
    pub fn multi_process(mut self, on: bool) -> Self {
        self.multi_process = on;
        self
    }

    /// How long a lease holds without renewal (default 30 s), and how often
    /// the manager renews it (default a third of that), on its own schedule.
    /// Renewal is one write per period for all the manager's tasks.
    /// `renew_every` must be at most half the TTL, so that one lost renewal
    /// does not lose the lease ([`try_build`](Self::try_build) says so
    /// otherwise). Makes the manager multi-process.
    pub fn lease(mut self, ttl: Duration, renew_every: Duration) -> Self {
        self.leases.ttl = ttl;
        self.leases.renew_every = renew_every;
        self.multi_process = true;
        self
    }

    /// How often the manager reads its inbox of cancellation requests from
    /// other processes (default 250 ms), and how often a `wait` for a task of
    /// another process looks at its record when the store sends no signal.
    /// Makes the manager multi-process.
    pub fn control_poll_interval(mut self, every: Duration) -> Self {
        self.leases.poll_every = every;
        self.multi_process = true;
        self
    }

    /// Runs [`recover`](crate::BackgroundTaskManager::recover) when the
    /// manager starts (default off). Makes the manager multi-process.
    pub fn recover_on_start(mut self, on: bool) -> Self {
        self.leases.recover_on_start = on;
        self.multi_process = true;
        self
    }

    /// Runs [`recover`](crate::BackgroundTaskManager::recover) this often
    /// (default never). Makes the manager multi-process.
    pub fn recover_every(mut self, every: Duration) -> Self {
        self.leases.recover_every = Some(every);
        self.multi_process = true;
        self
    }

    /// How long past its expiry a lease must be before recovery takes the
    /// task over, to absorb clock skew between processes (default 1 s).
    /// Makes the manager multi-process.
    pub fn clock_skew_allowance(mut self, allowance: Duration) -> Self {
        self.leases.skew_allowance = allowance;
        self.multi_process = true;
        self
    }

    /// Builds the manager. With a task store, its background work (lease
    /// renewal, inbox, recovery) starts now when called inside a tokio
    /// runtime, else with the first call made inside one.
    ///
    /// # Panics
    ///
    /// When the configuration is invalid; [`try_build`](Self::try_build)
    /// says why as an error instead.
    pub fn build(self) -> crate::BackgroundTaskManager {
        match self.try_build() {
            Ok(manager) => manager,
            Err(error) => panic!("invalid task manager configuration: {error}"),
        }
    }

    /// Builds the manager, or says what to change in the configuration.
    ///
    /// # Errors
    ///
    /// `InvalidInput` naming the option and what to change: an instance id
    /// that is not a valid id; a zero duration where time must pass (lease
    /// TTL, renewal, poll interval, recovery period, write timeout); a
    /// renewal interval longer than half the lease TTL; a zero outbox limit.
    pub fn try_build(self) -> Result<crate::BackgroundTaskManager, TaskError> {
        let (config, handlers) = self.into_config()?;
        Ok(crate::BackgroundTaskManager::from_config(config, handlers))
    }

    fn into_config(self) -> Result<(Config, HashMap<String, SharedRun>), TaskError> {
        let invalid = |reason: String| TaskError::InvalidInput { reason };
        let instance_id = match self.instance_id {
            Some(id) => {
                validate::task_id("instance_id", &id)?;
                id
            }
            None => format!("mgr-{}", crate::new_task_id()),
        };
        let l = self.leases;
        let positive = [
            ("the lease TTL (`lease`)", l.ttl),
            ("the renewal interval (`lease`)", l.renew_every),
            ("the control poll interval", l.poll_every),
            ("the persistence write timeout", self.write_timeout),
        ];
        for (what, value) in positive {
            if value.is_zero() {
                return Err(invalid(format!("{what} must be longer than zero")));
            }
        }
        if l.recover_every.is_some_and(|every| every.is_zero()) {
            return Err(invalid(
                "`recover_every` must be longer than zero".to_owned(),
            ));
        }
        if l.renew_every >= l.ttl {
            return Err(invalid(format!(
                "the lease is renewed every {:?}, which is not shorter than its TTL of {:?}: \
                 renew at most every TTL/2 (for example `lease({:?}, {:?})`)",
                l.renew_every,
                l.ttl,
                l.ttl,
                l.ttl / 3
            )));
        }
        if l.renew_every > l.ttl / 2 {
            return Err(invalid(format!(
                "the lease is renewed every {:?}, more than half its TTL of {:?}: one late renewal \
                 would lose it; renew at most every TTL/2 (for example `lease({:?}, {:?})`)",
                l.renew_every,
                l.ttl,
                l.ttl,
                l.ttl / 3
            )));
        }
        if self.outbox_limit == 0 {
            return Err(invalid(
                "the outbox limit must be at least 1 write".to_owned(),
            ));
        }
        if self.owner_concurrency == Some(0) {
            return Err(invalid(
                "`owner_concurrency` must be at least 1 (no task could ever run)".to_owned(),
            ));
        }
        for (task_type, policy) in &self.policies {
            if policy.concurrency == Some(0) {
                return Err(invalid(format!(
                    "the concurrency of task type {task_type:?} must be at least 1 (no task could ever run)"
                )));
            }
            if policy.retry.as_ref().is_some_and(|r| r.max_attempts == 0) {
                return Err(invalid(format!(
                    "the retry policy of task type {task_type:?} must allow at least 1 attempt"
                )));
            }
            if policy.timeout.is_some_and(|t| t.is_zero()) {
                return Err(invalid(format!(
                    "the timeout of task type {task_type:?} must be longer than zero"
                )));
            }
        }
        Ok((
            Config {
                multi_process: self.multi_process && self.task_store.is_some(),
                task_store: self.task_store,
                cancel_grace: self.cancel_grace,
                retention: self.retention,
                event_capacity: self.event_capacity,
                instance_id,
                leases: l,
                outbox: OutboxConfig {
                    backoff: self.backoff,
                    limit: self.outbox_limit,
                    when_full: self.when_full,
                    warn_after: self.warn_after,
                    write_timeout: self.write_timeout,
                },
                max_result_bytes: self.max_result_bytes,
                resumable_types: self.resumable_types,
                owner_concurrency: self.owner_concurrency,
                policies: self.policies,
            },
            self.handlers,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_within_jitter_and_is_capped() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
        };
        for _ in 0..100 {
            let d1 = b.delay(1);
            assert!(
                d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100),
                "{d1:?}"
            );
            let d3 = b.delay(3);
            assert!(
                d3 >= Duration::from_millis(200) && d3 <= Duration::from_millis(400),
                "{d3:?}"
            );
            let d30 = b.delay(30);
            assert!(
                d30 >= Duration::from_secs(1) && d30 <= Duration::from_secs(2),
                "{d30:?}"
            );
        }
    }
}
