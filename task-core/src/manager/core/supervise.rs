//! Supervision: each task runs in its own tokio task, and however its
//! future ends (it returns, it panics, it outlives its cancel grace, its
//! runtime shuts down under it) the core records an outcome. No task stays
//! `running` after its future is gone.

use std::collections::VecDeque;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use futures::FutureExt;
use tokio::time::Instant;

use super::Core;
use super::task::TaskContext;
use super::task::TaskSlot;
use crate::{RunCancellationToken, TaskResult};

/// How a task's tokio task ended.
#[derive(Debug)]
pub(crate) enum Ended {
    Returned(TaskResult),
    Panicked(String),
    /// Cancelled and still running after the grace period: dropped.
    Abandoned,
    /// Its future was dropped before it ended: the runtime it ran on shut
    /// down.
    Dropped,
}

/// Records a task's end when its future is dropped without ending (its
/// runtime shut down). A task whose outcome is already recorded (returned,
/// aborted by the manager after recording it) is left as it is.
struct EndGuard {
    core: Weak<Core>,
    slot: Arc<TaskSlot>,
    armed: bool,
}

impl Drop for EndGuard {
    fn drop(&mut self) {
        if self.armed
            && let Some(core) = self.core.upgrade()
        {
            core.finish(&self.slot, Ended::Dropped);
        }
    }
}

/// Runs one task to its end and records the outcome.
///
/// Holds the core weakly: when the last handle to a manager is dropped,
/// its tasks are aborted (see `Drop for Core`) and nothing more is recorded,
/// as if the process had died; recovery settles their durable records. A
/// task that outlives its cancel grace is dropped by the manager's reaper,
/// not from in here, so the common path carries no timer.
pub(crate) async fn run_task<F, Fut>(
    core: Weak<Core>,
    slot: Arc<TaskSlot>,
    token: Option<RunCancellationToken>,
    f: F,
    ctx: TaskContext,
) where
    F: FnOnce(TaskContext) -> Fut + Send + 'static,
    Fut: Future<Output = TaskResult> + Send + 'static,
{
    let mut guard = EndGuard {
        core,
        slot,
        armed: true,
    };
    let work = AssertUnwindSafe(async move { f(ctx).await }).catch_unwind();
    let timeout = guard.slot.policy.as_ref().and_then(|p| p.timeout);
    let outcome = match (token, timeout) {
        // The common case carries no timer and no select: the watched
        // path is boxed, so its timer and select do not make every task's
        // future larger (512 bytes with them inline, 248 without, which tokio
        // copies on every spawn).
        (None, None) => work.await,
        (token, timeout) => Box::pin(watched(work, token, timeout, &guard)).await,
    };
    guard.armed = false;
    let ended = match outcome {
        Ok(result) => Ended::Returned(result),
        Err(panic) => Ended::Panicked(panic_message(panic.as_ref())),
    };
    if let Some(core) = guard.core.upgrade() {
        core.finish(&guard.slot, ended);
    }
}

/// Runs `work` while watching its caller's token (a cancellation from
/// outside starts the grace) and its timeout (past it the task is cancelled
/// and ends `failed`).
async fn watched<W: Future>(
    work: W,
    token: Option<RunCancellationToken>,
    timeout: Option<std::time::Duration>,
    guard: &EndGuard,
) -> W::Output {
    tokio::pin!(work);
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let mut token = token;
    let mut timing = deadline.is_some();
    loop {
        tokio::select! {
            biased;
            outcome = &mut work => break outcome,
            // A caller's token cancelled from outside is a
            // cancellation request, so it starts the grace.
            () = cancelled(token.as_ref()), if token.is_some() => {
                token = None;
                if let Some(core) = guard.core.upgrade() {
                    let mut entry = guard.slot.lock();
                    if entry.status == crate::TaskStatus::Running {
                        core.schedule_reap(&guard.slot, &mut entry);
                    }
                }
            }
            () = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if timing => {
                timing = false;
                if let Some(core) = guard.core.upgrade() {
                    core.time_out(&guard.slot);
                }
            }
        }
    }
}

/// Resolves when `token` is cancelled; never without one.
async fn cancelled(token: Option<&RunCancellationToken>) {
    match token {
        Some(token) => token.cancelled().await,
        None => std::future::pending().await,
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic with a non-string payload".to_owned())
}

/// Cancelled tasks to drop if they outlive the cancel grace. Deadlines
/// arrive in order (the grace is the same for every task), so a queue is
/// enough. A task that ends before its deadline forgets its entry at once
/// ([`forget`](Self::forget)), so the queue never keeps a finished task's
/// memory alive. Its worker runs only while the queue is not empty.
#[derive(Debug, Default)]
pub(crate) struct Reaper {
    state: Mutex<ReaperState>,
}

#[derive(Debug, Default)]
struct ReaperState {
    /// Deadlines in order; `None` for an entry forgotten.
    due: VecDeque<(Instant, Option<Weak<TaskSlot>>)>,
    /// The number of the entry at the front of `due`.
    head: u64,
    running: bool,
}

impl ReaperState {
    /// Drops forgotten entries from the front.
    fn trim(&mut self) {
        while self.due.front().is_some_and(|(_, slot)| slot.is_none()) {
            self.due.pop_front();
            self.head += 1;
        }
    }
}

impl Reaper {
    fn state(&self) -> std::sync::MutexGuard<'_, ReaperState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a slot to drop at `deadline`; returns the entry's number (to
    /// forget it) and whether a worker must be started.
    pub(crate) fn push(&self, deadline: Instant, slot: &Arc<TaskSlot>) -> (u64, bool) {
        let mut state = self.state();
        let number = state.head + state.due.len() as u64;
        state.due.push_back((deadline, Some(Arc::downgrade(slot))));
        let start = !state.running;
        state.running = true;
        (number, start)
    }

    /// Forgets entry `number`: its task ended before its deadline.
    pub(crate) fn forget(&self, number: u64) {
        let mut state = self.state();
        let Some(index) = number
            .checked_sub(state.head)
            .and_then(|i| usize::try_from(i).ok())
        else {
            return;
        };
        if let Some(entry) = state.due.get_mut(index) {
            entry.1 = None;
        }
        state.trim();
    }

    /// A worker could not be started (no runtime): the next push tries.
    pub(crate) fn not_started(&self) {
        self.state().running = false;
    }

    /// The next deadline; `None` (and the worker uncounted) when nothing is
    /// queued.
    fn next(&self) -> Option<Instant> {
        let mut state = self.state();
        state.trim();
        let next = state.due.front().map(|(at, _)| *at);
        if next.is_none() {
            state.running = false;
            state.due.shrink_to_fit();
        }
        next
    }

    fn take_due(&self, now: Instant) -> Vec<Weak<TaskSlot>> {
        let mut state = self.state();
        let mut due = Vec::new();
        while state.due.front().is_some_and(|(at, _)| *at <= now) {
            if let Some((_, slot)) = state.due.pop_front() {
                state.head += 1;
                due.extend(slot);
            }
        }
        due
    }
}

/// Clears the reaper's running mark if its worker is dropped (its runtime
/// shut down), so the next push starts another.
struct ReaperGuard(Weak<Core>);

impl Drop for ReaperGuard {
    fn drop(&mut self) {
        if let Some(core) = self.0.upgrade() {
            core.reaper.not_started();
        }
    }
}

/// The reaper's worker.
pub(crate) async fn reap(core: Weak<Core>) {
    let mut guard = Some(ReaperGuard(core.clone()));
    loop {
        let Some(strong) = core.upgrade() else {
            return;
        };
        let Some(next) = strong.reaper.next() else {
            // `next` cleared the mark under the lock.
            if let Some(mut g) = guard.take() {
                g.0 = Weak::new();
            }
            return;
        };
        drop(strong);
        tokio::time::sleep_until(next).await;
        let Some(strong) = core.upgrade() else {
            return;
        };
        for slot in strong.reaper.take_due(Instant::now()) {
            if let Some(slot) = slot.upgrade() {
                strong.abandon(&slot);
            }
        }
    }
}
