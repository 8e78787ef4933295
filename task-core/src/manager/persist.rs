//! The persistence outbox: the manager's transitions reach the task store
//! in order per task, off the spawn path, retried with bounded exponential
//! backoff and jitter until they are durable or can never be.
//!
//! The manager queues [`Step`]s (under its registry lock, so a task's steps
//! are queued in the order they happened). One background writer task owns
//! the queues: it writes the queued steps of a task in one compare-and-swap
//! write (a short task's start and finish become one `create`), and reports
//! each result back to the registry.
//!
//! Writes go out as group commits: every task with steps waiting joins the
//! next batch, which is one `create_batch` (tasks the store has not seen) and
//! one `append_batch` (tasks whose record and version the writer knows), so
//! a remote store gets one round trip per batch rather than one per task.
//! While a batch is out, new steps gather for the next one, which is also
//! when a short task's start and finish meet. A write that meets a conflict
//! (someone else wrote the task) is redone alone as a load-decide-write
//! loop.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use futures::StreamExt;
use futures::future::join_all;
use futures::stream::FuturesUnordered;
use serde_json::Value;
use tokio::sync::{Notify, mpsc};
use tokio_util::time::DelayQueue;

use crate::state::{Outcome, TaskRecord, Transition, apply};
use crate::task_store::{
    Known, Plan, Prepared, VersionedRecord, audit_message, is_conflict, output_message,
};
use crate::{TaskError, TaskId, TaskStatus, TaskStore};

use super::Inner;
use super::registry::BuildHasher;

/// Batches in flight at once: one being written while the next one fills.
const MAX_BATCHES_IN_FLIGHT: usize = 2;
/// Tasks written in one batch at most.
const MAX_BATCH: usize = 512;
/// Steps of one task written together.
const MAX_STEPS_PER_WRITE: usize = 32;

/// One durable change the manager wants written.
#[derive(Debug, Clone)]
pub(crate) enum Step {
    /// The task started: always a [`Transition::Start`] (with the record to
    /// create if none exists), kept built so no write copies it.
    Start(Transition),
    /// The attempt finished.
    Finish {
        /// The durable attempt, when known at queue time (a resumed task).
        attempt: Option<u32>,
        /// Set when the lease holder reports: see `Transition::Finish`.
        holder: Option<String>,
        status: TaskStatus,
        result: Option<Value>,
        error: Option<String>,
        at_ms: u64,
    },
    /// The task emitted output.
    Output {
        attempt: Option<u32>,
        seq: u64,
        value: Value,
    },
}

/// A step of one task, tagged with the manager's epoch of that task.
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) task_id: TaskId,
    pub(crate) epoch: u64,
    pub(crate) step: Step,
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

/// The manager's side of the outbox.
#[derive(Debug)]
pub(crate) struct Outbox {
    store: Arc<TaskStore>,
    backoff: Backoff,
    sender: OnceLock<mpsc::UnboundedSender<Job>>,
    pending: Arc<Pending>,
}

/// Steps queued and not yet resolved (durable or given up).
#[derive(Debug, Default)]
struct Pending {
    count: AtomicUsize,
    idle: Notify,
}

impl Pending {
    fn resolve(&self, n: usize) {
        if self.count.fetch_sub(n, Ordering::AcqRel) == n {
            self.idle.notify_waiters();
        }
    }
}

impl Outbox {
    pub(crate) fn new(store: Arc<TaskStore>, backoff: Backoff) -> Self {
        Self {
            store,
            backoff,
            sender: OnceLock::new(),
            pending: Arc::default(),
        }
    }

    pub(crate) fn store(&self) -> &Arc<TaskStore> {
        &self.store
    }

    /// Queues a step. Must be called inside a tokio runtime (the writer is
    /// started on first use) and under the registry lock, which orders the
    /// steps of a task.
    pub(crate) fn enqueue(&self, inner: &Arc<Inner>, job: Job) {
        self.pending.count.fetch_add(1, Ordering::AcqRel);
        let sender = self.sender.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let writer = Writer {
                store: Arc::clone(&self.store),
                backoff: self.backoff,
                inner: Arc::downgrade(inner),
                pending: Arc::clone(&self.pending),
                queues: HashMap::default(),
                ready: VecDeque::new(),
                delays: DelayQueue::new(),
            };
            tokio::spawn(writer.run(rx));
            tx
        });
        if sender.send(job).is_err() {
            // The writer is gone (its runtime shut down): nothing can be
            // written any more; do not let `flush` wait for it.
            tracing::error!("task persistence writer has stopped; a step is dropped");
            self.pending.resolve(1);
        }
    }

    /// Waits until every queued step is durable or given up.
    pub(crate) async fn flush(&self) {
        loop {
            let notified = self.pending.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.pending.count.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// What the writer knows about a task's durable record.
#[derive(Debug, Default)]
struct TaskQueue {
    steps: VecDeque<(u64, Step)>,
    in_flight: bool,
    delayed: bool,
    failures: u32,
    /// The durable attempt of the epoch being written, once its start is durable.
    attempt: Option<u32>,
    /// The record and version last written, to skip a load next time.
    cached: Option<VersionedRecord>,
}

/// One task's part of a batch: the steps to write and what the writer
/// believes is stored.
struct Pick {
    task_id: TaskId,
    epoch: u64,
    steps: Vec<Step>,
    attempt: Option<u32>,
    known: Known,
}

/// The result of one write, as reported back to the writer loop.
struct Written {
    task_id: TaskId,
    epoch: u64,
    /// The steps the write was for, handed back (to requeue on failure).
    steps: Vec<Step>,
    result: Result<(Option<u32>, VersionedRecord), TaskError>,
}

struct Writer {
    store: Arc<TaskStore>,
    backoff: Backoff,
    inner: Weak<Inner>,
    pending: Arc<Pending>,
    queues: HashMap<TaskId, TaskQueue, BuildHasher>,
    ready: VecDeque<TaskId>,
    delays: DelayQueue<TaskId>,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Job>) {
        let mut in_flight = FuturesUnordered::new();
        let mut open = true;
        loop {
            while in_flight.len() < MAX_BATCHES_IN_FLIGHT {
                let picks = self.pick_batch();
                if picks.is_empty() {
                    break;
                }
                // Each batch is its own tokio task, so deciding and encoding
                // the writes of two batches can run on two cores while this
                // loop gathers the next steps. What it holds is noted first,
                // in case it panics (a store's bug): see `lost_batch`.
                let held: Vec<(TaskId, u64, usize)> = picks
                    .iter()
                    .map(|p| (p.task_id.clone(), p.epoch, p.steps.len()))
                    .collect();
                let batch = tokio::spawn(write_batch(Arc::clone(&self.store), picks));
                in_flight.push(async move { (batch.await, held) });
            }
            if !open && self.queues.is_empty() {
                return;
            }
            tokio::select! {
                job = rx.recv(), if open => match job {
                    Some(job) => {
                        self.accept(job);
                        while let Ok(job) = rx.try_recv() {
                            self.accept(job);
                        }
                    }
                    None => open = false,
                },
                Some((written, held)) = in_flight.next() => match written {
                    Ok(written) => {
                        for w in written {
                            self.finish_write(w);
                        }
                    }
                    Err(error) => self.lost_batch(&held, &error.to_string()),
                },
                Some(expired) = self.delays.next() => {
                    let task_id = expired.into_inner();
                    if let Some(q) = self.queues.get_mut(&task_id) {
                        q.delayed = false;
                        self.ready.push_back(task_id);
                    }
                }
                else => {
                    // Nothing can make progress: the channel is closed, and
                    // nothing is in flight or delayed.
                    return;
                }
            }
        }
    }

    /// The next batch: up to [`MAX_BATCH`] ready tasks, each with the
    /// queued steps of its oldest epoch, marked in flight.
    fn pick_batch(&mut self) -> Vec<Pick> {
        let mut picks = Vec::new();
        while picks.len() < MAX_BATCH {
            let Some(task_id) = self.ready.pop_front() else {
                break;
            };
            if let Some(pick) = self.pick(task_id) {
                picks.push(pick);
            }
        }
        picks
    }

    fn accept(&mut self, job: Job) {
        let idle = match self.queues.get_mut(&job.task_id) {
            Some(q) => {
                let idle = q.steps.is_empty() && !q.in_flight && !q.delayed;
                q.steps.push_back((job.epoch, job.step));
                idle
            }
            None => {
                let mut q = TaskQueue::default();
                q.steps.push_back((job.epoch, job.step));
                self.queues.insert(job.task_id.clone(), q);
                true
            }
        };
        if idle {
            self.ready.push_back(job.task_id);
        }
    }

    fn pick(&mut self, task_id: TaskId) -> Option<Pick> {
        let q = self.queues.get_mut(&task_id)?;
        if q.in_flight || q.delayed || q.steps.is_empty() {
            return None;
        }
        let epoch = q.steps[0].0;
        // Steps of one epoch only: a new epoch starts with its own `Start`.
        // They leave the queue while written, and go back if the write fails.
        let n = q
            .steps
            .iter()
            .take_while(|(e, _)| *e == epoch)
            .take(MAX_STEPS_PER_WRITE)
            .count();
        let steps: Vec<Step> = q.steps.drain(..n).map(|(_, s)| s).collect();
        if matches!(steps[0], Step::Start(_)) {
            q.attempt = None;
        }
        q.in_flight = true;
        let attempt = q.attempt;
        let known = match q.cached.take() {
            Some(record) => Known::Cached(Box::new(record)),
            // A first start: most likely nobody has written this task yet.
            None if attempt.is_none() && matches!(steps[0], Step::Start(_)) => Known::Absent,
            None => Known::Unknown,
        };
        Some(Pick {
            task_id,
            epoch,
            steps,
            attempt,
            known,
        })
    }

    /// A batch task died (a panic in a store): its steps are gone, so they
    /// are reported as permanently failed rather than left in flight, which
    /// would stall `flush` forever.
    fn lost_batch(&mut self, held: &[(TaskId, u64, usize)], error: &str) {
        tracing::error!(%error, tasks = held.len(), "a batch of task writes was lost");
        let inner = self.inner.upgrade();
        for (task_id, epoch, steps) in held {
            let drained = self.queues.get_mut(task_id).is_some_and(|q| {
                q.in_flight = false;
                q.cached = None;
                q.steps.is_empty()
            });
            if drained {
                self.queues.remove(task_id);
            } else if self.queues.contains_key(task_id) {
                self.ready.push_back(task_id.clone());
            }
            if let Some(inner) = &inner {
                let message = format!("the write was lost: {error}");
                inner.on_written(
                    task_id,
                    *epoch,
                    *steps,
                    None,
                    Some((message, true)),
                    drained,
                );
            }
            self.pending.resolve(*steps);
        }
    }

    fn finish_write(&mut self, written: Written) {
        let Written {
            task_id,
            epoch,
            steps,
            result,
        } = written;
        let Some(q) = self.queues.get_mut(&task_id) else {
            return;
        };
        q.in_flight = false;
        let inner = self.inner.upgrade();
        let resolved = steps.len();
        match result {
            Ok((attempt, record)) => {
                q.failures = 0;
                q.attempt = attempt;
                let finished = record.record.status.is_finished();
                q.cached = Some(record);
                let drained = q.steps.is_empty();
                if drained && finished {
                    self.queues.remove(&task_id);
                } else if !drained {
                    self.ready.push_back(task_id.clone());
                }
                // Report before resolving, so `flush` returns only once the
                // summaries show the outcome.
                if let Some(inner) = inner {
                    inner.on_written(&task_id, epoch, resolved, attempt, None, drained);
                }
                self.pending.resolve(resolved);
            }
            Err(error) if is_permanent(&error) => {
                tracing::warn!(task_id = %task_id, %error, "task write given up");
                q.failures = 0;
                let drained = q.steps.is_empty();
                if drained {
                    self.queues.remove(&task_id);
                } else {
                    self.ready.push_back(task_id.clone());
                }
                if let Some(inner) = inner {
                    let message = error.to_string();
                    inner.on_written(
                        &task_id,
                        epoch,
                        resolved,
                        None,
                        Some((message, true)),
                        drained,
                    );
                }
                self.pending.resolve(resolved);
            }
            Err(error) => {
                // Back in front of anything queued since, in their order.
                for step in steps.into_iter().rev() {
                    q.steps.push_front((epoch, step));
                }
                q.failures += 1;
                q.delayed = true;
                let delay = self.backoff.delay(q.failures);
                tracing::debug!(task_id = %task_id, %error, ?delay, "task write failed; retrying");
                self.delays.insert(task_id.clone(), delay);
                if let Some(inner) = inner {
                    inner.on_written(
                        &task_id,
                        epoch,
                        0,
                        None,
                        Some((error.to_string(), false)),
                        false,
                    );
                }
            }
        }
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

/// The outcome of one task's write: its durable attempt and the record as
/// written.
type WriteResult = Result<(Option<u32>, VersionedRecord), TaskError>;

/// Writes one batch: each task's steps decided on what the writer believes is
/// stored, sent as one `create_batch` and one `append_batch`; the tasks whose
/// record is unknown, or whose write met a conflict, then go through
/// [`write_steps`] one by one (concurrently). One result per pick, in order.
async fn write_batch(store: Arc<TaskStore>, picks: Vec<Pick>) -> Vec<Written> {
    let mut results: Vec<Option<WriteResult>> = Vec::with_capacity(picks.len());
    // What each write is for (index, record, attempt), and the writes.
    let mut creates = Vec::new();
    let mut threads = Vec::new();
    let mut appends = Vec::new();
    let mut requests = Vec::new();
    let mut alone = Vec::new();
    for (i, pick) in picks.iter().enumerate() {
        results.push(None);
        let current = match &pick.known {
            Known::Cached(record) => Some(&**record),
            Known::Absent => None,
            Known::Unknown => {
                alone.push(i);
                continue;
            }
        };
        let prepared = plan_steps(&pick.task_id, pick.attempt, &pick.steps, current).and_then(
            |(plan, attempt)| Ok((store.prepare(&pick.task_id, current, plan)?, attempt)),
        );
        match prepared {
            Err(e) => results[i] = Some(Err(e)),
            Ok((Prepared::Unchanged(record), attempt)) => {
                results[i] = Some(Ok((attempt.or(Some(record.record.attempt)), record)));
            }
            Ok((Prepared::Create { thread, record }, attempt)) => {
                creates.push((i, record, attempt));
                threads.push(thread);
            }
            Ok((Prepared::Append { request, record }, attempt)) => {
                appends.push((i, record, attempt));
                requests.push(request);
            }
        }
    }

    let backend = store.thread_store();
    let (created, appended) = futures::join!(
        async {
            if creates.is_empty() {
                Vec::new()
            } else {
                backend.create_batch(threads).await
            }
        },
        async {
            if appends.is_empty() {
                Vec::new()
            } else {
                backend.append_batch(requests).await
            }
        }
    );
    let written = creates
        .into_iter()
        .zip(created)
        .chain(appends.into_iter().zip(appended));
    for ((i, record, attempt), result) in written {
        match result {
            Ok(committed) => {
                let record = VersionedRecord {
                    record,
                    version: committed.version,
                };
                results[i] = Some(Ok((attempt.or(Some(record.record.attempt)), record)));
            }
            // Not as believed: decide again on a fresh load.
            Err(e) if is_conflict(&e) => alone.push(i),
            Err(e) => results[i] = Some(Err(e.into())),
        }
    }

    let redone = join_all(alone.iter().map(|&i| {
        let pick = &picks[i];
        write_steps(
            &store,
            &pick.task_id,
            pick.attempt,
            Known::Unknown,
            &pick.steps,
        )
    }))
    .await;
    for (i, result) in alone.into_iter().zip(redone) {
        results[i] = Some(result);
    }

    picks
        .into_iter()
        .zip(results)
        .map(|(pick, result)| Written {
            task_id: pick.task_id,
            epoch: pick.epoch,
            steps: pick.steps,
            result: result.unwrap_or_else(|| {
                Err(TaskError::Store(task_store::ThreadStoreError::Backend {
                    message: "the store returned fewer results than writes in the batch".to_owned(),
                    source: None,
                }))
            }),
        })
        .collect()
}

/// Writes `steps` of one epoch of a task in one compare-and-swap write,
/// loading the record first unless `known` says what is stored. Returns the
/// durable attempt of the epoch and the record as written.
async fn write_steps(
    store: &TaskStore,
    task_id: &str,
    attempt: Option<u32>,
    known: Known,
    steps: &[Step],
) -> WriteResult {
    let mut resolved = attempt;
    let written = store
        .cas(task_id, known, |current| {
            let (plan, attempt) = plan_steps_on(task_id, attempt, steps, current)?;
            resolved = attempt;
            Ok(plan)
        })
        .await?;
    Ok((resolved.or(Some(written.record.attempt)), written))
}

/// [`plan_steps_on`] a versioned record.
fn plan_steps(
    task_id: &str,
    attempt: Option<u32>,
    steps: &[Step],
    current: Option<&VersionedRecord>,
) -> Result<(Plan, Option<u32>), TaskError> {
    plan_steps_on(task_id, attempt, steps, current.map(|c| &c.record))
}

/// The attempt a finish or an output belongs to: the one known when it was
/// queued, else the epoch's durable attempt, else the record's, else 1.
fn attempt_of(queued: Option<u32>, epoch: Option<u32>, record: Option<&TaskRecord>) -> u32 {
    queued.or(epoch).or(record.map(|r| r.attempt)).unwrap_or(1)
}

/// Decides what writing `steps` onto `current` changes: the new record (if
/// any transition applied) and the messages, plus the durable attempt of the
/// epoch once known. A step the state machine refuses fails the write.
fn plan_steps_on(
    task_id: &str,
    attempt: Option<u32>,
    steps: &[Step],
    current: Option<&TaskRecord>,
) -> Result<(Plan, Option<u32>), TaskError> {
    let mut record = current.cloned();
    let mut attempt = attempt;
    let mut changed = false;
    let mut messages = Vec::new();
    for step in steps {
        let finish;
        let transition = match step {
            Step::Start(start) => start,
            Step::Finish {
                attempt: known,
                holder,
                status,
                result,
                error,
                at_ms,
            } => {
                finish = Transition::Finish {
                    attempt: attempt_of(*known, attempt, record.as_ref()),
                    holder: holder.clone(),
                    status: *status,
                    result: result.clone(),
                    error: error.clone(),
                    at_ms: *at_ms,
                };
                &finish
            }
            Step::Output {
                attempt: known,
                seq,
                value,
            } => {
                let a = attempt_of(*known, attempt, record.as_ref());
                messages.push(output_message(a, *seq, value.clone()));
                continue;
            }
        };
        match apply(record.as_ref(), transition) {
            Outcome::Applied(next) => {
                messages.push(audit_message(transition, &next));
                record = Some(next);
                changed = true;
            }
            Outcome::AlreadyApplied => {}
            Outcome::Rejected(reason) => {
                return Err(TaskError::Rejected {
                    task_id: task_id.to_owned(),
                    reason,
                });
            }
        }
        if matches!(step, Step::Start(_)) {
            attempt = record.as_ref().map(|r| r.attempt);
        }
    }
    Ok((
        Plan {
            record: if changed { record } else { None },
            messages,
        },
        attempt,
    ))
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
