//! [`BackgroundTaskManager`]: the live registry of one process, and its
//! public API. This file is the manager's table of contents: each call
//! checks its input and hands the work to the two layers below it.
//!
//! | module | holds |
//! |---|---|
//! | `spawn` | `spawn`, `spawn_with_id`, `resume` |
//! | `control` | `cancel`, `cancel_tree`, `set_status` |
//! | `read` | `get`, `wait`, the listings, `output`, `progress`, events |
//! | `lifecycle` | `flush`, `recover`, `gc_terminal`, `shutdown` |
//! | `streams` | the streams of output and of durable changes |
//! | `builder` | the builder, which checks the configuration as a whole |
//! | `config` | the configuration every layer runs by |
//! | `core` | the local core: registry, supervision, the task context |
//! | `outbox` | the persistence outbox (part of the local core) |
//! | `distributed` | the cross-process layer: leases, inbox, recovery, remote control |
//! | `background` | the owner of the manager's background tasks |
//! | `clock` | the manager's clock |

mod background;
mod builder;
mod clock;
mod config;
mod control;
pub(crate) mod core;
mod distributed;
mod lifecycle;
mod outbox;
mod read;
mod spawn;
mod streams;

use std::sync::Arc;
use std::time::Duration;

use self::core::Core;
use self::core::task::TaskContext;
use self::distributed::Distributed;
use crate::{TaskError, TaskId, TaskResult, TaskStore, TaskSummary};

pub use self::builder::BackgroundTaskManagerBuilder;
pub use self::config::{
    DEFAULT_CANCEL_GRACE, DEFAULT_LEASE_TTL, DEFAULT_OUTBOX_LIMIT, OutboxFull, RetentionPolicy,
};
pub use self::core::registry::ManagerStats;
pub use self::distributed::recovery::RecoveryReport;
pub use self::outbox::PendingWrite;

/// The live registry of background tasks of one process.
///
/// Tasks belong to an owner (usually a conversation thread). Every call names
/// the owner, and another owner's task looks exactly like an unknown one.
/// Cloning the manager gives another handle to the same registry.
///
/// # Costs
///
/// `spawn` takes one short lock and never touches the store. `get`,
/// `contains` and `cancel` of a task held here cost O(1); `list`,
/// `list_by_type` and `gc_terminal` cost the owner's task count;
/// `has_running_tasks` is O(1); `cancel_tree` costs the size of the tree.
/// With a task store, a multi-process manager (see the builder) also reads
/// the owner's *open* durable records (running or resumable, from the store's
/// index of open records) for `cancel_tree`, `list_including_durable`, and
/// for `get`, `wait` and `cancel` of a task it does not hold: the cost of
/// the owner's live work, never of its history. A single-process manager
/// answers those from memory.
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
    core: Arc<Core>,
    remote: Option<Arc<Distributed>>,
}

/// What [`shutdown`](BackgroundTaskManager::shutdown) did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Tasks that ended within the grace period.
    pub finished: Vec<TaskId>,
    /// Tasks still running at the end of their part of the grace period:
    /// dropped and marked `stopped` (resumable) or `failed`.
    pub interrupted: Vec<TaskId>,
    /// Writes not durable when the grace period ended (the store was slow or
    /// down). They stay queued and are retried for as long as the manager
    /// lives; a process that exits now loses them, and recovery later
    /// settles the records they would have finished.
    pub not_durable: Vec<PendingWrite>,
    /// Whether this instance's lease record was removed (multi-process
    /// managers); when it was not, it simply expires.
    pub lease_released: bool,
}

/// What [`cancel_tree_report`](BackgroundTaskManager::cancel_tree_report)
/// did: the tasks whose cancellation it requested, and the failure of its
/// remote part, reported apart so that a store outage never keeps the local
/// part of a tree from being cancelled.
#[derive(Debug)]
#[non_exhaustive]
pub struct TreeCancellation {
    /// The tasks whose cancellation was requested, root first for the
    /// tasks held here, then those held by other processes.
    pub cancelled: Vec<TaskSummary>,
    /// Why the part of the tree held by other processes could not be
    /// (entirely) reached; `None` when it was, or when the manager is
    /// single-process.
    pub remote_error: Option<TaskError>,
}

/// A page of an owner's durable task records (see
/// [`list_durable_page`](BackgroundTaskManager::list_durable_page)).
#[derive(Debug, Clone, PartialEq)]
pub struct DurablePage {
    /// The records, in id order.
    pub tasks: Vec<TaskSummary>,
    /// The cursor of the next page; `None` at the end.
    pub next: Option<TaskId>,
}

/// [`flush_timeout`](BackgroundTaskManager::flush_timeout) ran out of time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} task(s) still have writes that are not durable", pending.len())]
pub struct FlushTimeout {
    /// The writes not durable yet, by task.
    pub pending: Vec<PendingWrite>,
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

    pub(crate) fn from_config(
        config: config::Config,
        handlers: std::collections::HashMap<String, self::core::task::SharedRun>,
    ) -> Self {
        let core = Core::new(&config, handlers);
        let remote = match (&config.task_store, config.multi_process) {
            (Some(store), true) => {
                let layer = Distributed::new(
                    &core,
                    Arc::clone(store),
                    config.instance_id.clone(),
                    config.leases,
                );
                let weak = Arc::downgrade(&layer);
                let _ = core
                    .on_durable_close
                    .set(core::CloseHook::new(move |task_id| {
                        if let Some(layer) = weak.upgrade() {
                            layer.task_closed(task_id);
                        }
                    }));
                Some(layer)
            }
            _ => None,
        };
        let manager = Self { core, remote };
        manager.touch();
        manager
    }

    /// Starts (or restarts, on this runtime) the background work a call may
    /// rely on.
    fn touch(&self) {
        if let Some(remote) = &self.remote {
            remote.ensure_started();
        }
    }

    /// The task store this manager persists into, if any.
    pub fn task_store(&self) -> Option<&Arc<TaskStore>> {
        self.core.outbox.as_ref().map(|o| o.store())
    }

    /// This manager's instance id: the lease holder named in the records of
    /// the tasks it runs.
    pub fn instance_id(&self) -> &str {
        &self.core.lease.holder
    }

    /// Whether this manager is configured for several processes (see
    /// [One process or several](BackgroundTaskManagerBuilder#one-process-or-several)).
    pub fn is_multi_process(&self) -> bool {
        self.remote.is_some()
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
    is_send(&m.cancel_tree("o", "t"));
    is_send(&m.shutdown(Duration::ZERO));
    is_send(&m.output_stream("o", "t", 0));
}
