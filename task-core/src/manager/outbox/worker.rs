//! The outbox's workers: each picks the next batch, writes it, and hands
//! the results back, until nothing is left to do. At most `MAX_WORKERS` run;
//! they run on the runtime of the call that queued the work, and a worker
//! whose runtime shuts down under it puts what it held back in the queues.

use std::cmp::Reverse;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio::time::Instant;

use super::batch::{self, Pick, WriteResult};
use super::{Shared, State, WriteOutcome, WriteReport, is_permanent, is_store_failure};
use crate::TaskId;
use crate::records::Known;

/// Tasks written in one batch at most.
const MAX_BATCH: usize = 512;
/// Changes of one task written together at most.
const MAX_CHANGES_PER_WRITE: usize = 32;

/// What a worker does next.
enum Next {
    Batch(Vec<Pick>),
    /// Nothing to write before this instant (a retry delay, or the next
    /// probe of a failing store).
    Wait(Instant, Vec<Delayed>),
    /// Nothing to do: the worker ends (already uncounted).
    Exit,
}

/// A task whose writes have waited longer than the warning threshold.
struct Delayed {
    task_id: TaskId,
    epoch: u64,
    pending_for: Duration,
}

/// A worker's place in the count, made before its task is spawned: it
/// uncounts a worker that ends abnormally, including one whose runtime was
/// shutting down and dropped it before its first poll.
pub(super) struct Counted {
    shared: Arc<Shared>,
    counted: bool,
}

impl Counted {
    /// The place of a worker already counted in `shared`'s state.
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            counted: true,
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if self.counted {
            let mut state = self.shared.lock();
            state.workers -= 1;
            state.lingering = false;
        }
    }
}

/// A batch being written. Dropped before it completes (its runtime shut
/// down), it puts its changes back at the front of their queues.
struct InFlight {
    shared: Arc<Shared>,
    picks: Option<Vec<Pick>>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let Some(picks) = self.picks.take() else {
            return;
        };
        let mut state = self.shared.lock();
        state.breaker.probing = false;
        for pick in picks {
            state.requeue(pick);
        }
        drop(state);
        self.shared.changed.notify_waiters();
    }
}

/// A worker: writes batches until nothing is left.
pub(super) async fn run(mut counted: Counted) {
    let shared = Arc::clone(&counted.shared);
    loop {
        let next = shared.lock().next(&shared, Instant::now());
        match next {
            Next::Batch(picks) => write_batch(&shared, picks).await,
            Next::Wait(deadline, delayed) => {
                report_delayed(&shared, delayed);
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => {}
                    () = shared.wake.notified() => {}
                }
            }
            Next::Exit => {
                counted.counted = false;
                return;
            }
        }
    }
}

impl State {
    /// Decides a worker's next step. Uncounts the worker when it ends, in
    /// the same critical section that saw nothing to do, so a job queued
    /// right after starts a new worker rather than waking a leaving one.
    fn next(&mut self, shared: &Shared, now: Instant) -> Next {
        while let Some(Reverse((at, _))) = self.delayed.peek() {
            if *at > now {
                break;
            }
            if let Some(Reverse((_, task_id))) = self.delayed.pop()
                && let Some(q) = self.queues.get_mut(&task_id)
            {
                q.delayed = false;
                if !q.jobs.is_empty() && !q.in_flight {
                    self.ready.push_back(task_id);
                }
            }
        }
        let open = self.breaker.failures > 0;
        self.lingering = false;
        if !open && let Some(until) = self.linger_until(shared, now) {
            self.lingering = true;
            return Next::Wait(until, Vec::new());
        }
        let room = if !open {
            MAX_BATCH
        } else if self.breaker.probing || self.breaker.probe_at.is_some_and(|t| t > now) {
            0
        } else {
            // One probe at a time while the store fails.
            1
        };
        let mut picks = Vec::new();
        while picks.len() < room {
            let Some(task_id) = self.ready.pop_front() else {
                break;
            };
            if let Some(pick) = self.pick(task_id) {
                picks.push(pick);
            }
        }
        if !picks.is_empty() {
            if open {
                self.breaker.probing = true;
            }
            return Next::Batch(picks);
        }
        let probe = (open && !self.breaker.probing && !self.ready.is_empty())
            .then_some(self.breaker.probe_at)
            .flatten();
        let retry = self.delayed.peek().map(|Reverse((at, _))| *at);
        match probe.into_iter().chain(retry).min() {
            Some(deadline) => {
                let delayed = if open {
                    self.delayed_reports(shared, now)
                } else {
                    Vec::new()
                };
                Next::Wait(deadline, delayed)
            }
            None => {
                self.workers -= 1;
                Next::Exit
            }
        }
    }

    /// Until when the next batch waits for more work (see
    /// [`LINGER`](super::LINGER)), or `None` when it goes now: a flush waits,
    /// enough is ready, the outbox is full, or the oldest ready job has
    /// waited long enough.
    fn linger_until(&self, shared: &Shared, now: Instant) -> Option<Instant> {
        if self.flushes > 0
            || self.ready.len() >= super::LINGER_UNTIL
            || self.pending + self.reserved >= shared.config.limit
        {
            return None;
        }
        let oldest = self.queues.get(self.ready.front()?)?.since;
        let until = oldest + super::LINGER;
        (until > now).then_some(until)
    }

    /// Takes the queued changes of a task's oldest epoch for a write.
    fn pick(&mut self, task_id: TaskId) -> Option<Pick> {
        let q = self.queues.get_mut(&task_id)?;
        if q.in_flight || q.delayed || q.jobs.is_empty() {
            return None;
        }
        let epoch = q.jobs[0].epoch;
        // Changes of one epoch only: a new epoch starts with its own start.
        let n = q
            .jobs
            .iter()
            .take_while(|j| j.epoch == epoch)
            .take(MAX_CHANGES_PER_WRITE)
            .count();
        let mut changes = Vec::with_capacity(n);
        let mut tags = Vec::with_capacity(n);
        for job in q.jobs.drain(..n) {
            changes.push(job.change);
            tags.push(job.tag);
        }
        q.in_flight = true;
        q.in_flight_jobs = n;
        Some(Pick {
            task_id,
            owner: Arc::clone(&q.owner),
            epoch,
            changes,
            tags,
            known: q.known.take().unwrap_or(Known::Unknown),
        })
    }

    /// Puts a pick's changes back in front of anything queued since, in
    /// their order, to be written again.
    pub(super) fn requeue(&mut self, pick: Pick) {
        let Some(q) = self.queues.get_mut(&pick.task_id) else {
            return;
        };
        for (change, tag) in pick.changes.into_iter().zip(pick.tags).rev() {
            q.jobs.push_front(super::Queued {
                epoch: pick.epoch,
                tag,
                change,
            });
        }
        q.in_flight = false;
        q.in_flight_jobs = 0;
        if !q.delayed {
            self.ready.push_back(pick.task_id);
        }
    }

    /// The tasks pending longer than the warning threshold that have not
    /// been reported since their last write resolved (marked reported).
    fn delayed_reports(&mut self, shared: &Shared, now: Instant) -> Vec<Delayed> {
        let threshold = shared.config.warn_after;
        self.queues
            .iter_mut()
            .filter(|(_, q)| !q.warned && (!q.jobs.is_empty() || q.in_flight))
            .filter_map(|(id, q)| {
                let pending_for = now.saturating_duration_since(q.since);
                (pending_for >= threshold).then(|| {
                    q.warned = true;
                    Delayed {
                        task_id: id.clone(),
                        epoch: q.jobs.front().map_or(0, |j| j.epoch),
                        pending_for,
                    }
                })
            })
            .collect()
    }
}

/// Writes one batch and hands its results back.
async fn write_batch(shared: &Arc<Shared>, picks: Vec<Pick>) {
    let mut held = InFlight {
        shared: Arc::clone(shared),
        picks: Some(picks),
    };
    let started = Instant::now();
    let (results, lost) = {
        let Some(picks) = held.picks.as_mut() else {
            return;
        };
        let count = picks.len();
        // A panic in the store (a bug of the backend) loses this batch's
        // writes: they are reported as given up rather than retried forever.
        let write = AssertUnwindSafe(batch::write(&shared.store, picks)).catch_unwind();
        tokio::pin!(write);
        let warn_at = started + shared.config.warn_after;
        let give_up_at = started + shared.config.write_timeout;
        let mut warned = false;
        loop {
            tokio::select! {
                written = &mut write => match written {
                    Ok(results) => break (results, false),
                    Err(panic) => {
                        let message = panic
                            .downcast_ref::<&str>()
                            .map(|s| (*s).to_owned())
                            .or_else(|| panic.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "a panic with a non-string payload".to_owned());
                        tracing::error!(%message, tasks = count, "the task store panicked; a batch of writes is lost");
                        let error = task_store::ThreadStoreError::backend(format!(
                            "the write was lost: the task store panicked: {message}"
                        ));
                        break (
                            (0..count)
                                .map(|_| Err(crate::TaskError::Store(error.clone())))
                                .collect(),
                            true,
                        );
                    }
                },
                () = tokio::time::sleep_until(warn_at), if !warned => {
                    warned = true;
                    // A store that hangs rather than fails: say so now, for
                    // this batch and for everything queued behind it.
                    let delayed = shared.lock().delayed_reports(shared, Instant::now());
                    report_delayed(shared, delayed);
                }
                () = tokio::time::sleep_until(give_up_at) => {
                    let error = task_store::ThreadStoreError::Timeout {
                        message: format!(
                            "the task store did not answer a write within {:?}",
                            shared.config.write_timeout
                        ),
                        source: None,
                    };
                    break (
                        (0..count)
                            .map(|_| Err(crate::TaskError::Store(error.clone())))
                            .collect(),
                        false,
                    );
                }
            }
        }
    };
    let Some(picks) = held.picks.take() else {
        return;
    };
    finish_batch(shared, picks, results, lost);
}

/// What to tell the core about one pick, once the state lock is released.
struct Outcome {
    task_id: TaskId,
    epoch: u64,
    tags: Vec<u64>,
    resolved: bool,
    result: WriteResult,
    permanent: bool,
    drained: bool,
}

/// Hands a batch's results back; `lost` gives every failure up.
fn finish_batch(shared: &Arc<Shared>, picks: Vec<Pick>, results: Vec<WriteResult>, lost: bool) {
    let now = Instant::now();
    let mut outcomes = Vec::with_capacity(picks.len());
    {
        let mut state = shared.lock();
        let mut store_failed = false;
        let mut store_answered = false;
        for (pick, result) in picks.into_iter().zip(results) {
            let task_id = pick.task_id.clone();
            let epoch = pick.epoch;
            let Some(q) = state.queues.get_mut(&task_id) else {
                continue;
            };
            q.in_flight = false;
            q.in_flight_jobs = 0;
            match result {
                Ok(record) => {
                    store_answered = true;
                    q.failures = 0;
                    q.last_error = None;
                    q.warned = false;
                    q.since = now;
                    let closed = record.record.is_closed();
                    q.known = Some(Known::Cached(Box::new(record.clone())));
                    let drained = q.jobs.is_empty();
                    let tags = pick.tags;
                    state.after_write(&task_id, drained, closed);
                    outcomes.push(Outcome {
                        task_id,
                        epoch,
                        tags,
                        resolved: true,
                        result: Ok(record),
                        permanent: false,
                        drained,
                    });
                }
                Err(error) if lost || is_permanent(&error) => {
                    store_answered = true;
                    tracing::warn!(task_id = %task_id, %error, "task write given up");
                    q.failures = 0;
                    q.last_error = Some(error.to_string());
                    q.known = None;
                    let drained = q.jobs.is_empty();
                    let tags = pick.tags;
                    state.after_write(&task_id, drained, drained);
                    outcomes.push(Outcome {
                        task_id,
                        epoch,
                        tags,
                        resolved: true,
                        result: Err(error),
                        permanent: true,
                        drained,
                    });
                }
                Err(error) => {
                    let store_failure = is_store_failure(&error);
                    store_failed |= store_failure;
                    q.last_error = Some(error.to_string());
                    let delay = (!store_failure).then(|| {
                        q.failures += 1;
                        q.delayed = true;
                        shared.config.backoff.delay(q.failures)
                    });
                    tracing::debug!(task_id = %task_id, %error, ?delay, "task write failed; retrying");
                    state.requeue(pick);
                    if let Some(delay) = delay {
                        state.delayed.push(Reverse((now + delay, task_id.clone())));
                    }
                    outcomes.push(Outcome {
                        task_id,
                        epoch,
                        tags: Vec::new(),
                        resolved: false,
                        result: Err(error),
                        permanent: false,
                        drained: false,
                    });
                }
            }
        }
        let breaker = &mut state.breaker;
        breaker.probing = false;
        if store_failed {
            breaker.failures += 1;
            breaker.probe_at = Some(now + shared.config.backoff.delay(breaker.failures));
        } else if store_answered {
            breaker.failures = 0;
            breaker.probe_at = None;
        }
    }
    // Reports before resolving, so a flush returns only once the summaries
    // show the outcome; and outside the state lock, since the core takes its
    // tasks' locks to apply them (and queues jobs under them).
    if let Some(reports) = shared.reports() {
        for o in &outcomes {
            let outcome = match &o.result {
                Ok(record) => WriteOutcome::Durable(&record.record),
                Err(error) => WriteOutcome::Failed {
                    error,
                    permanent: o.permanent,
                },
            };
            reports.written(WriteReport {
                task_id: &o.task_id,
                epoch: o.epoch,
                resolved: if o.resolved {
                    u32::try_from(o.tags.len()).unwrap_or(u32::MAX)
                } else {
                    0
                },
                outcome,
                drained: o.drained,
            });
        }
    }
    {
        let mut state = shared.lock();
        state.resolve(outcomes.iter().flat_map(|o| o.tags.iter().copied()));
        state.shrink();
    }
    shared.changed.notify_waiters();
    if outcomes.iter().any(|o| !o.resolved) {
        shared.wake.notify_one();
    }
}

impl State {
    /// After a task's write resolved: queue its next changes, or forget it
    /// once its record is closed and nothing more is queued.
    fn after_write(&mut self, task_id: &TaskId, drained: bool, forget: bool) {
        if !drained {
            self.ready.push_back(task_id.clone());
        } else if forget {
            self.queues.remove(task_id);
        }
    }
}

fn report_delayed(shared: &Shared, delayed: Vec<Delayed>) {
    if delayed.is_empty() {
        return;
    }
    if let Some(reports) = shared.reports() {
        for d in delayed {
            reports.written(WriteReport {
                task_id: &d.task_id,
                epoch: d.epoch,
                resolved: 0,
                outcome: WriteOutcome::Delayed {
                    pending_for: d.pending_for,
                },
                drained: false,
            });
        }
    }
}
