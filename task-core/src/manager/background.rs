//! The manager's own background work (the outbox's writers, the reaper of
//! cancelled tasks, lease renewal, the inbox, periodic recovery): every piece
//! is a tokio task owned by one [`TaskTracker`] and stopped by one
//! [`CancellationToken`], so `shutdown` knows when all of it has stopped.
//!
//! Each piece runs only while it has work, on the runtime of the call that
//! gave it the work, and says so in an [`Alive`] flag that it clears when it
//! ends, however it ends (its runtime may shut down under it). The next call
//! that needs it starts it again, on its own runtime: a manager kept in a
//! `static` and used from one `#[tokio::test]` runtime after another keeps
//! working, and what a stopped piece held goes back to its queue (see the
//! outbox) rather than being lost.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The owner of a manager's background tasks.
#[derive(Debug, Default)]
pub(crate) struct Background {
    tracker: TaskTracker,
    stop: CancellationToken,
}

impl Background {
    /// Resolves when the manager's background work is asked to stop.
    pub(crate) fn stopping(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Whether the background work was asked to stop.
    pub(crate) fn is_stopping(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Asks every background task to stop and waits until they all have.
    pub(crate) async fn stop(&self) {
        self.stop.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }

    /// Starts `work` on the current runtime; false (and nothing started)
    /// without a runtime.
    pub(crate) fn spawn<F>(&self, work: F) -> bool
    where
        F: Future<Output = ()> + Send + 'static,
    {
        if tokio::runtime::Handle::try_current().is_err() {
            return false;
        }
        self.tracker.spawn(work);
        true
    }

    /// Starts `work` on the current runtime unless `alive` says it already
    /// runs; `alive` is cleared when `work` ends or is dropped. Returns
    /// whether it started it. Without a runtime nothing starts: the next call
    /// made inside one does.
    pub(crate) fn ensure<F>(&self, alive: &Arc<Alive>, work: impl FnOnce() -> F) -> bool
    where
        F: Future<Output = ()> + Send + 'static,
    {
        if tokio::runtime::Handle::try_current().is_err() || !alive.claim() {
            return false;
        }
        let guard = AliveGuard(Arc::clone(alive));
        let work = work();
        self.tracker.spawn(async move {
            let _guard = guard;
            work.await;
        });
        true
    }
}

/// Whether one piece of background work runs.
#[derive(Debug, Default)]
pub(crate) struct Alive(AtomicBool);

impl Alive {
    /// Marks it running; false when it already was.
    fn claim(&self) -> bool {
        !self.0.swap(true, Ordering::AcqRel)
    }

    /// Whether it runs.
    pub(crate) fn is_alive(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Clears an [`Alive`] flag when the work holding it ends or is dropped.
struct AliveGuard(Arc<Alive>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        (self.0).0.store(false, Ordering::Release);
    }
}
