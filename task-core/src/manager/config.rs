//! A manager's configuration: the policies and timings the builder sets
//! and every layer runs by. A leaf module: the layers read it, it reads
//! none of them.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use crate::{TaskPolicy, TaskStore};

/// The default time a cancelled task gets to return before it is dropped.
pub const DEFAULT_CANCEL_GRACE: Duration = Duration::from_secs(5);

/// The default lease TTL.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(30);

/// The default bound of the persistence outbox, in writes.
pub const DEFAULT_OUTBOX_LIMIT: usize = 100_000;

/// Which finished tasks a manager keeps, beyond explicit
/// [`gc_terminal`](crate::BackgroundTaskManager::gc_terminal) calls.
///
/// Applied to an owner's tasks whenever one of them finishes and when the
/// owner's tasks are listed, at an amortised O(1) cost per finished task.
/// Only tasks that can never run again (terminal, or stopped without support
/// for resume) whose writes are resolved and that nobody is waiting on are
/// ever dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Keep at most this many finished tasks per owner (the ones finished
    /// longest ago go first).
    pub max_terminal_per_owner: Option<usize>,
    /// Drop finished tasks that finished longer ago than this.
    pub max_age: Option<Duration>,
}

impl RetentionPolicy {
    pub(crate) fn is_active(&self) -> bool {
        self.max_terminal_per_owner.is_some() || self.max_age.is_some()
    }
}

/// What a spawn does when the persistence outbox is full (see
/// [`outbox_limit`](crate::BackgroundTaskManagerBuilder::outbox_limit)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OutboxFull {
    /// The spawn waits until the store has caught up enough (the default).
    #[default]
    Wait,
    /// The spawn is refused at once with the retryable
    /// [`TaskError::Backpressure`](crate::TaskError::Backpressure).
    Refuse,
}

/// Retry timing of failed writes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    pub(crate) initial: Duration,
    pub(crate) max: Duration,
}

impl Backoff {
    /// The delay before retry number `failures` (from 1): doubling from
    /// `initial`, capped at `max`, with "equal jitter" (between half and all
    /// of it) so that many failed writes do not retry in lockstep.
    pub(crate) fn delay(&self, failures: u32) -> Duration {
        let exp = self
            .initial
            .saturating_mul(1u32 << failures.saturating_sub(1).min(20));
        let capped = exp.min(self.max);
        let half = capped / 2;
        half + half.mul_f64(fastrand::f64())
    }
}

/// How the persistence outbox behaves.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OutboxConfig {
    pub(crate) backoff: Backoff,
    pub(crate) limit: usize,
    pub(crate) when_full: OutboxFull,
    /// A write pending longer than this shows on the summary and in events.
    pub(crate) warn_after: Duration,
    /// A store call that takes longer than this is abandoned as timed out
    /// (and retried: every write is safe to repeat).
    pub(crate) write_timeout: Duration,
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

/// Everything a built manager runs by but its handlers, checked by
/// [`try_build`](crate::BackgroundTaskManagerBuilder::try_build).
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) task_store: Option<Arc<TaskStore>>,
    pub(crate) cancel_grace: Duration,
    pub(crate) retention: RetentionPolicy,
    pub(crate) event_capacity: usize,
    pub(crate) instance_id: String,
    /// Whether the cross-process layer is built.
    pub(crate) multi_process: bool,
    pub(crate) leases: LeaseConfig,
    pub(crate) outbox: OutboxConfig,
    pub(crate) max_result_bytes: Option<usize>,
    pub(crate) resumable_types: HashSet<String>,
    pub(crate) owner_concurrency: Option<usize>,
    pub(crate) policies: HashMap<String, TaskPolicy>,
}
