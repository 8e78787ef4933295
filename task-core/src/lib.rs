//! Background tasks owned by conversation threads: spawn work, watch it,
//! wait for it, cancel it with everything it spawned, and find its outcome
//! again after a crash.
//!
//! Use this crate when work outlives the call that started it (a shell
//! command, a sub-agent run, a fetch, an indexing job) and its owner must be
//! able to see and control it. `tokio::spawn` gives a handle and nothing
//! else; a job queue gives durability behind a broker but knows nothing of
//! owners, task trees or in-process cancellation. This crate gives both
//! sides: a live registry ([`BackgroundTaskManager`]) whose transitions are
//! persisted off the spawn path into any thread store ([`TaskStore`] over
//! `task_store::ThreadStore`): in process memory by default, or Redis with
//! the `redis` feature.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use task_core::{BackgroundTaskManager, TaskResult, TaskStatus, TaskStore};
//!
//! let store = task_core::store::open("memory://").await?;
//! let tasks = Arc::new(TaskStore::new(store));
//! let manager = BackgroundTaskManager::builder().task_store(tasks.clone()).build();
//!
//! let id = manager
//!     .spawn("thread-1", "shell", "sleep until cancelled", |ctx| async move {
//!         ctx.cancelled().await;
//!         TaskResult::Cancelled
//!     })
//!     .await?;
//! manager.cancel("thread-1", &id).await?;
//! let done = manager.wait("thread-1", &id).await.expect("known task");
//! assert_eq!(done.status, TaskStatus::Cancelled);
//!
//! manager.flush().await; // every transition is durable now
//! let record = tasks.load_task(&id).await?.expect("persisted");
//! assert_eq!(record.status, TaskStatus::Cancelled);
//! # Ok(())
//! # }
//! ```
//!
//! # Guarantees
//!
//! - A task that panics ends `failed` with the panic message; one that
//!   ignores its cancellation is dropped after the cancel grace and ends
//!   `cancelled`. No task stays `running` after its future is gone.
//! - Terminal outcomes are write-once; every durable change is a transition
//!   of the pure state machine in [`state`], written with a version
//!   precondition and retried on conflict; a write of an older attempt is
//!   refused.
//! - The store is never on the spawn path: transitions reach it through an
//!   ordered outbox per task, retried with bounded backoff; a failure shows
//!   as `persistence_error` and [`BackgroundTaskManager::flush`] waits for
//!   durability.
//!
//! # Across processes
//!
//! With a task store shared by several processes (Redis), each manager holds
//! a lease on the tasks it runs and renews it with one write per period.
//! [`BackgroundTaskManager::recover`] turns the running tasks of a process
//! that stopped renewing into `stopped` (resumable with
//! [`BackgroundTaskManager::resume`]) or `failed`; `cancel` and `cancel_tree`
//! reach tasks another process holds; [`BackgroundTaskManager::shutdown`]
//! stops a manager cleanly. See `ARCHITECTURE.md` for the lease protocol and
//! its failure cases.
//!
//! # Features
//!
//! - `memory` (default): re-exports [`MemoryStore`] and lets
//!   [`store::open`] accept `memory://`.
//! - `redis`: re-exports `RedisStore` and lets [`store::open`] accept
//!   `redis://` and `rediss://` URLs.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod context;
mod error;
mod events;
mod manager;
mod model;
pub mod state;
pub mod store;
mod task_store;
#[cfg(feature = "testing")]
pub mod testing;

pub use context::TaskContext;
pub use error::TaskError;
pub use events::{TaskEvent, TaskEventKind};
pub use manager::{
    BackgroundTaskManager, BackgroundTaskManagerBuilder, DEFAULT_CANCEL_GRACE, DEFAULT_LEASE_TTL,
    RecoveryReport, RetentionPolicy, ShutdownReport,
};
pub use model::{
    MAX_DESCRIPTION_LEN, MAX_METADATA_BYTES, MAX_NAME_LEN, MAX_TASK_ID_LEN, NewTaskSpec,
    RunCancellationToken, SpawnParams, TaskId, TaskResult, TaskStatus, TaskSummary, new_task_id,
};
pub use state::{Lease, Rejection, TaskRecord, Transition};
pub use task_store::{TASK_KIND, TaskStore, VersionedRecord};

/// The storage contract, re-exported.
pub use ::task_store as thread_store;

#[cfg(feature = "memory")]
#[cfg_attr(docsrs, doc(cfg(feature = "memory")))]
pub use task_store_memory::MemoryStore;

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use task_store_redis::RedisStore;
