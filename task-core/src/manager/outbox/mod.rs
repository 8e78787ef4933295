//! The persistence outbox: the manager's transitions reach the task store in
//! order per task, off the spawn path, retried with bounded backoff until
//! they are durable or can never be.
//!
//! # Path of a write
//!
//! 1. The core queues a [`Job`] (under the task's lock, so a task's jobs are
//!    queued in the order they happened): [`Outbox::enqueue`].
//! 2. A worker (`worker.rs`) picks every task with jobs waiting into the
//!    next batch. Group commit: while one batch is out, the next one
//!    gathers; a batch goes when [`LINGER_UNTIL`] tasks are ready, when its
//!    oldest job has waited [`LINGER`], or at once for a flush, so a short
//!    task's start and finish meet in one write.
//! 3. The batch (`batch.rs`) decides each task's write with
//!    [`records::decide`](crate::records) and sends one `create_batch` and
//!    one `append_batch`; a task whose record is unknown or conflicted is
//!    written alone with the compare-and-swap loop.
//! 4. The worker reports each task's result to the core
//!    ([`WriteReports`]), which updates the summary and emits events.
//!
//! # Guarantees
//!
//! - **Nothing is lost.** Queues live here, not in a worker: a worker that
//!   ends with its runtime puts what it held back, and the next call of the
//!   manager, on whatever runtime, starts a new one.
//! - **Flush is a barrier.** [`Outbox::flush`] waits only for the jobs queued
//!   before it was called, however many arrive meanwhile.
//! - **Bounded.** At most `limit` writes wait, plus one finish per running
//!   task; spawns beyond it wait or are refused ([`Outbox::admit`]).
//! - **An outage costs the store little.** While the store fails, one probe
//!   write at a time goes out, on the backoff schedule (a circuit breaker);
//!   the rest wait. A write pending longer than `warn_after` is reported.

mod batch;
mod worker;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::background::Background;
use super::config::{OutboxConfig, OutboxFull};
use crate::records::{Change, Known};
use crate::state::TaskRecord;
use crate::{TaskError, TaskId, TaskStore};

/// Workers (batches in flight) at most: one being written while the next
/// one fills, and a second only when a backlog of [`LINGER_UNTIL`] tasks is
/// ready.
const MAX_WORKERS: usize = 2;

/// How long a batch may wait for more work before it goes (group commit):
/// long enough that a short task's start and finish meet in one write,
/// short against any store's round trip that matters. A flush, a full
/// outbox or a failing store skip it.
const LINGER: Duration = Duration::from_millis(1);

/// Tasks ready that make a batch go at once, without lingering.
const LINGER_UNTIL: usize = 64;

/// One durable change of one epoch of a task.
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) task_id: TaskId,
    /// The task's owner: every write is made on its behalf.
    pub(crate) owner: Arc<str>,
    /// The manager's epoch of the task (its slot).
    pub(crate) epoch: u64,
    pub(crate) change: Change,
    /// For a start: what the caller knows is stored (absent for a fresh id,
    /// or the record it just read).
    pub(crate) known: Option<Known>,
}

/// What the outbox tells the core about a task's writes.
#[derive(Debug)]
pub(crate) struct WriteReport<'a> {
    pub(crate) task_id: &'a str,
    pub(crate) epoch: u64,
    /// Writes resolved by this report (durable or given up).
    pub(crate) resolved: u32,
    pub(crate) outcome: WriteOutcome<'a>,
    /// Whether nothing more of the task is queued.
    pub(crate) drained: bool,
}

/// How a task's write went.
#[derive(Debug)]
pub(crate) enum WriteOutcome<'a> {
    /// Durable; the record as stored now.
    Durable(&'a TaskRecord),
    /// Failed: retried unless `permanent`.
    Failed {
        error: &'a TaskError,
        permanent: bool,
    },
    /// Pending longer than the warning threshold.
    Delayed { pending_for: Duration },
}

/// The core's side of the outbox's reports.
pub(crate) trait WriteReports: Send + Sync + std::fmt::Debug {
    fn written(&self, report: WriteReport<'_>);
}

/// A task's writes not durable when a deadline passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingWrite {
    /// The task.
    pub task_id: TaskId,
    /// How many of its writes (transitions and outputs) are not durable.
    pub writes: usize,
    /// The last error its writes met, if any.
    pub last_error: Option<String>,
}

/// The manager's outbox.
#[derive(Debug, Clone)]
pub(crate) struct Outbox {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    store: Arc<TaskStore>,
    config: OutboxConfig,
    state: Mutex<State>,
    /// Wakes a sleeping worker.
    wake: Notify,
    /// Wakes flushes and spawns waiting for room.
    changed: Notify,
    reports: Weak<dyn WriteReports>,
    background: Background,
}

#[derive(Debug, Default)]
struct State {
    /// Seeded per process (ids are chosen by callers), cheap on short keys.
    queues: HashMap<TaskId, TaskQueue, foldhash::quality::RandomState>,
    /// Tasks with jobs waiting, not in flight and not delayed.
    ready: VecDeque<TaskId>,
    /// Tasks waiting out a retry delay of their own.
    delayed: BinaryHeap<Reverse<(Instant, TaskId)>>,
    workers: usize,
    breaker: Breaker,
    barrier: Barrier,
    /// Writes queued and not yet resolved.
    pending: usize,
    /// Spawns admitted and not yet queued.
    reserved: usize,
    /// Flushes waiting: while any does, batches go without lingering.
    flushes: usize,
    /// Whether a worker waits for its batch to fill (see [`LINGER`]).
    lingering: bool,
}

/// One task's queued writes and what the outbox knows of its record.
#[derive(Debug)]
struct TaskQueue {
    owner: Arc<str>,
    jobs: VecDeque<Queued>,
    in_flight: bool,
    /// Jobs of the write in flight (out of `jobs` while written).
    in_flight_jobs: usize,
    delayed: bool,
    failures: u32,
    /// What is stored, as far as the outbox knows (to skip a load).
    known: Option<Known>,
    /// When the oldest unresolved job was queued.
    since: Instant,
    /// Whether a delay was reported since the last write resolved.
    warned: bool,
    last_error: Option<String>,
}

#[derive(Debug)]
struct Queued {
    epoch: u64,
    /// The flush barrier's epoch when it was queued.
    tag: u64,
    change: Change,
}

/// The circuit breaker of the store: open while the store fails.
#[derive(Debug, Default)]
struct Breaker {
    /// Consecutive batches that failed at the store (0: closed).
    failures: u32,
    /// When the next probe may go.
    probe_at: Option<Instant>,
    /// Whether a probe is in flight.
    probing: bool,
}

/// The flush barrier: jobs counted by the flush epoch they were queued in.
#[derive(Debug, Default)]
struct Barrier {
    /// Epoch of jobs queued now.
    current: u64,
    /// The epoch of `counts[0]`.
    base: u64,
    /// Unresolved jobs per epoch from `base` to `current`.
    counts: VecDeque<usize>,
}

impl Barrier {
    /// Counts a job queued now; returns its tag.
    fn add(&mut self) -> u64 {
        let index = usize::try_from(self.current - self.base).unwrap_or(usize::MAX);
        if self.counts.len() <= index {
            self.counts.resize(index + 1, 0);
        }
        self.counts[index] += 1;
        self.current
    }

    /// Counts the job tagged `tag` resolved.
    fn resolve(&mut self, tag: u64) {
        if let Some(count) = usize::try_from(tag.saturating_sub(self.base))
            .ok()
            .and_then(|i| self.counts.get_mut(i))
        {
            *count = count.saturating_sub(1);
        }
        self.advance();
    }

    /// Drops the epochs before the current one whose jobs are all resolved.
    fn advance(&mut self) {
        while self.base < self.current && self.counts.front().is_none_or(|c| *c == 0) {
            self.counts.pop_front();
            self.base += 1;
        }
    }

    /// Starts a new epoch; returns the one a flush waits for.
    fn cut(&mut self) -> u64 {
        let target = self.current;
        self.current += 1;
        self.advance();
        target
    }

    /// Whether every job queued in epoch `target` or before is resolved.
    fn passed(&self, target: u64) -> bool {
        if target < self.base {
            return true;
        }
        let last = usize::try_from(target - self.base).unwrap_or(usize::MAX);
        self.counts
            .iter()
            .take(last.saturating_add(1))
            .all(|c| *c == 0)
    }
}

/// What a queued job does to the workers.
enum Wake {
    Start,
    Notify,
    No,
}

/// Counts a flush out when it returns or is dropped.
struct Flushing<'a>(&'a Shared);

impl Drop for Flushing<'_> {
    fn drop(&mut self) {
        self.0.lock().flushes -= 1;
    }
}

/// A spawn's room in the outbox, taken by [`Outbox::admit`] and used by the
/// start it queues; given back if the spawn fails first.
#[derive(Debug)]
pub(crate) struct Permit {
    shared: Option<Arc<Shared>>,
}

impl Permit {
    /// Marks the room as used by a queued start.
    fn take(&mut self) {
        self.shared = None;
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            shared.lock().reserved -= 1;
            shared.changed.notify_waiters();
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every change is complete at each unlock: a poisoned lock is still
        // consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn reports(&self) -> Option<Arc<dyn WriteReports>> {
        self.reports.upgrade()
    }
}

impl Outbox {
    pub(crate) fn new(
        store: Arc<TaskStore>,
        config: OutboxConfig,
        reports: Weak<dyn WriteReports>,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                store,
                config,
                state: Mutex::new(State::default()),
                wake: Notify::new(),
                changed: Notify::new(),
                reports,
                background: Background::default(),
            }),
        }
    }

    pub(crate) fn store(&self) -> &Arc<TaskStore> {
        &self.shared.store
    }

    /// Takes room for one spawn: at once while fewer than `limit` writes are
    /// pending; otherwise waits for room or refuses, as configured.
    ///
    /// # Errors
    ///
    /// `Backpressure` when the outbox is full and configured to refuse.
    pub(crate) async fn admit(&self) -> Result<Permit, TaskError> {
        let shared = &self.shared;
        loop {
            let changed = shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut state = shared.lock();
                let used = state.pending + state.reserved;
                if used < shared.config.limit {
                    state.reserved += 1;
                    return Ok(Permit {
                        shared: Some(Arc::clone(shared)),
                    });
                }
                if shared.config.when_full == OutboxFull::Refuse {
                    return Err(TaskError::Backpressure {
                        pending: state.pending,
                        limit: shared.config.limit,
                    });
                }
            }
            // The workers may have died with a runtime: make sure someone
            // is draining what we wait for.
            self.ensure_workers();
            changed.await;
        }
    }

    /// Whether output may be queued now (the outbox is below its limit).
    pub(crate) fn has_room(&self) -> Result<(), TaskError> {
        let state = self.shared.lock();
        if state.pending + state.reserved < self.shared.config.limit {
            Ok(())
        } else {
            Err(TaskError::Backpressure {
                pending: state.pending,
                limit: self.shared.config.limit,
            })
        }
    }

    /// Queues a job. Called under the task's lock, which orders a task's
    /// jobs. A start uses the room its spawn was admitted with.
    pub(crate) fn enqueue(&self, job: Job, permit: Option<&mut Permit>) {
        let wake = {
            let mut state = self.shared.lock();
            if let Some(permit) = permit {
                permit.take();
                state.reserved -= 1;
            }
            state.pending += 1;
            let tag = state.barrier.add();
            let Job {
                task_id,
                owner,
                epoch,
                change,
                known,
            } = job;
            let queued = Queued { epoch, tag, change };
            let became_ready = match state.queues.get_mut(&task_id) {
                Some(q) => {
                    let idle = q.jobs.is_empty() && !q.in_flight && !q.delayed;
                    if q.jobs.is_empty() && !q.in_flight {
                        q.since = Instant::now();
                        q.warned = false;
                    }
                    q.jobs.push_back(queued);
                    if known.is_some() && !q.in_flight {
                        q.known = known;
                    }
                    idle
                }
                None => {
                    state.queues.insert(
                        task_id.clone(),
                        TaskQueue {
                            owner,
                            jobs: VecDeque::from([queued]),
                            in_flight: false,
                            in_flight_jobs: 0,
                            delayed: false,
                            failures: 0,
                            known,
                            since: Instant::now(),
                            warned: false,
                            last_error: None,
                        },
                    );
                    true
                }
            };
            if became_ready {
                state.ready.push_back(task_id);
            }
            // A worker when none runs (the last one ended, or ended with
            // its runtime, leaving its batch queued again), and a second one
            // for a backlog.
            let backlog = state.ready.len() >= LINGER_UNTIL;
            if state.workers == 0 || (state.workers < MAX_WORKERS && became_ready && backlog) {
                state.workers += 1;
                Wake::Start
            } else if !state.lingering || backlog {
                Wake::Notify
            } else {
                // The lingering worker goes at its deadline, or when the
                // batch is full.
                Wake::No
            }
        };
        match wake {
            Wake::Start => self.start_worker(),
            Wake::Notify => self.shared.wake.notify_one(),
            Wake::No => {}
        }
    }

    /// Starts workers until there are enough for the work queued (after a
    /// runtime that ran them shut down, say).
    pub(crate) fn ensure_workers(&self) {
        let start = {
            let mut state = self.shared.lock();
            let has_work = !state.ready.is_empty() || !state.delayed.is_empty();
            if has_work && state.workers == 0 {
                state.workers += 1;
                true
            } else {
                false
            }
        };
        if start {
            self.start_worker();
        }
    }

    fn start_worker(&self) {
        // Counted out when the worker ends, or when its future is dropped
        // without ever running (no runtime here, or one shutting down):
        // the next call made inside a live runtime starts another.
        let counted = worker::Counted::new(Arc::clone(&self.shared));
        self.shared.background.spawn(worker::run(counted));
    }

    /// Waits until every job queued before this call is durable or given up,
    /// however many are queued meanwhile.
    pub(crate) async fn flush(&self) {
        self.flush_until(None).await;
    }

    /// [`flush`](Self::flush) that gives up at `deadline`; returns the writes
    /// still pending then (none when everything queued before is resolved).
    pub(crate) async fn flush_until(&self, deadline: Option<Instant>) -> Vec<PendingWrite> {
        let target = {
            let mut state = self.shared.lock();
            state.flushes += 1;
            state.barrier.cut()
        };
        let _flushing = Flushing(&self.shared);
        // A lingering worker writes now.
        self.shared.wake.notify_one();
        self.ensure_workers();
        loop {
            let changed = self.shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.shared.lock().barrier.passed(target) {
                return Vec::new();
            }
            match deadline {
                None => changed.await,
                Some(deadline) => {
                    if tokio::time::timeout_at(deadline, changed).await.is_err() {
                        return self.pending_writes();
                    }
                }
            }
        }
    }

    /// Every task with writes not yet durable.
    pub(crate) fn pending_writes(&self) -> Vec<PendingWrite> {
        let state = self.shared.lock();
        let mut pending: Vec<PendingWrite> = state
            .queues
            .iter()
            .filter(|(_, q)| !q.jobs.is_empty() || q.in_flight)
            .map(|(id, q)| PendingWrite {
                task_id: id.clone(),
                writes: q.jobs.len() + q.in_flight_jobs,
                last_error: q.last_error.clone(),
            })
            .collect();
        pending.sort_by(|a, b| a.task_id.cmp(&b.task_id));
        pending
    }

    /// Writes queued and not yet resolved.
    pub(crate) fn pending(&self) -> usize {
        self.shared.lock().pending
    }
}

impl State {
    /// Marks `n` jobs of tags `tags` resolved.
    fn resolve(&mut self, tags: impl IntoIterator<Item = u64>) -> usize {
        let mut n = 0;
        for tag in tags {
            self.barrier.resolve(tag);
            n += 1;
        }
        self.pending = self.pending.saturating_sub(n);
        n
    }

    /// Gives memory back once the tables are mostly empty (after an outage).
    fn shrink(&mut self) {
        if self.queues.capacity() > 64 && self.queues.len() < self.queues.capacity() / 4 {
            self.queues.shrink_to(self.queues.len() * 2);
        }
        if self.ready.capacity() > 64 && self.ready.len() < self.ready.capacity() / 4 {
            self.ready.shrink_to(self.ready.len() * 2);
        }
        if self.delayed.capacity() > 64 && self.delayed.len() < self.delayed.capacity() / 4 {
            self.delayed.shrink_to(self.delayed.len() * 2);
        }
    }
}

/// A store error that says the store itself is failing (rather than this
/// task's write being refused or conflicting): the breaker opens on it.
fn is_store_failure(error: &TaskError) -> bool {
    match error {
        TaskError::Store(e) => !crate::records::needs_reload(e) && !is_permanent(error),
        _ => false,
    }
}

/// Errors that no retry can fix: the state machine refused the write, the
/// input or the stored record is invalid.
fn is_permanent(error: &TaskError) -> bool {
    use task_store::ThreadStoreError as S;
    match error {
        TaskError::Store(e) => matches!(
            e,
            S::InvalidInput { .. } | S::Corrupt { .. } | S::Unsupported { .. }
        ),
        TaskError::Rejected { .. }
        | TaskError::Corrupt { .. }
        | TaskError::InvalidInput { .. }
        | TaskError::UnknownTask { .. } => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_barrier_waits_only_for_what_came_before_it() {
        let mut b = Barrier::default();
        let first = b.add();
        let target = b.cut();
        assert!(!b.passed(target));
        let later = b.add();
        assert_ne!(first, later);
        b.resolve(first);
        assert!(
            b.passed(target),
            "the job queued after the cut does not hold it back"
        );
        let target2 = b.cut();
        assert!(!b.passed(target2));
        b.resolve(later);
        assert!(b.passed(target2));
        // A cut with nothing pending has passed at once.
        let target3 = b.cut();
        assert!(b.passed(target3));
    }

    #[test]
    fn the_barrier_counts_jobs_resolved_out_of_order() {
        let mut b = Barrier::default();
        let a = b.add();
        let t1 = b.cut();
        let c = b.add();
        let t2 = b.cut();
        b.resolve(c);
        assert!(!b.passed(t1) && !b.passed(t2));
        b.resolve(a);
        assert!(b.passed(t1) && b.passed(t2));
    }
}
