//! Durability and lifecycle: flush, recovery, collection, shutdown.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{BackgroundTaskManager, FlushTimeout, RecoveryReport, ShutdownReport, distributed};
use crate::TaskError;

impl BackgroundTaskManager {
    // ---------------------------------------------------------------------
    // Housekeeping
    // ---------------------------------------------------------------------

    /// Drops the owner's finished tasks (terminal, or stopped without
    /// support for resume) whose writes are resolved and that nobody waits
    /// on; returns how many were dropped. The registry keeps nothing of
    /// them.
    pub async fn gc_terminal(&self, owner: &str) -> usize {
        self.core.gc(owner)
    }

    /// Waits until every store write queued before this call is durable or
    /// has failed permanently, however many are queued meanwhile. Returns at
    /// once without a task store. No deadline: see
    /// [`flush_timeout`](Self::flush_timeout).
    pub async fn flush(&self) {
        if let Some(outbox) = &self.core.outbox {
            outbox.flush().await;
        }
    }

    /// [`flush`](Self::flush) that waits at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`FlushTimeout`], listing the writes not durable yet, by task. They
    /// stay queued and are retried.
    pub async fn flush_timeout(&self, timeout: Duration) -> Result<(), FlushTimeout> {
        let Some(outbox) = &self.core.outbox else {
            return Ok(());
        };
        let pending = outbox.flush_until(Some(Instant::now() + timeout)).await;
        if pending.is_empty() {
            Ok(())
        } else {
            Err(FlushTimeout { pending })
        }
    }

    /// Reconciles the store with the living: every durable `running` task
    /// whose lease has expired (its process stopped renewing it), or that
    /// names this instance as holder without this instance knowing the run
    /// (an earlier life of this instance id), becomes `stopped` if it
    /// supports resume, else `failed` with an error that says it was
    /// interrupted. Every stopped task whose type has a handler here
    /// (registered with the builder's `handler`) is then resumed by this
    /// instance, as its next attempt: work finds a new home by itself, and
    /// two instances racing for one task resume it once (the resume is
    /// fenced by attempt). A task whose lease is alive, and a task whose outcome is
    /// known here (written or not), is never touched. A record that cannot
    /// be read is replaced by a `failed` one that says why. Reads the
    /// store's index of open task records, a bounded number at once: the
    /// cost follows the running tasks, not the history. Without a store
    /// there is nothing to recover.
    ///
    /// # Errors
    ///
    /// `Store` when the index cannot be read; errors on single records are
    /// in the report.
    pub async fn recover(&self) -> Result<RecoveryReport, TaskError> {
        let Some(store) = self.task_store() else {
            return Ok(RecoveryReport::default());
        };
        let (mut report, resumable) =
            distributed::recovery::recover(&self.core, store, &self.core.leases).await?;
        report.resumed = self.resume_found(resumable).await;
        Ok(report)
    }

    /// Shuts the manager down within `grace`, in total: refuses new tasks,
    /// asks every running task to stop and gives them up to 80% of `grace`,
    /// marks what still runs `stopped` (resumable tasks) or `failed` and
    /// drops it, then uses what is left of `grace` to make the writes
    /// durable and (multi-process managers) to stop lease renewal and remove
    /// this instance's record. Tasks that finish on their own during the
    /// grace keep their outcome; those that return after seeing the request
    /// end `stopped` or `failed` (interrupted), not `cancelled`.
    ///
    /// What is not durable when `grace` runs out is listed in the report's
    /// `not_durable`, never dropped silently: those writes stay queued for
    /// as long as the manager lives.
    pub async fn shutdown(&self, grace: Duration) -> ShutdownReport {
        let started = Instant::now();
        let deadline = started + grace;
        let tasks_deadline = started + grace.mul_f64(0.8);
        let running = self.core.close(tasks_deadline).await;
        let waits = running.iter().map(|slot| self.core.wait(Arc::clone(slot)));
        let _ = tokio::time::timeout_at(tasks_deadline, futures::future::join_all(waits)).await;
        let mut report = ShutdownReport::default();
        for slot in &running {
            if self.core.interrupt(slot) {
                report.interrupted.push(slot.task_id.clone());
            } else {
                report.finished.push(slot.task_id.clone());
            }
        }
        if let Some(outbox) = &self.core.outbox {
            report.not_durable = outbox.flush_until(Some(deadline)).await;
        }
        if let Some(remote) = &self.remote {
            report.lease_released = remote.stop(deadline).await;
        }
        report
    }
}
