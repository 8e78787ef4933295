//! Recovery: durable `running` tasks whose holder is gone become `stopped`
//! (resumable) or `failed`.

use std::collections::HashMap;
use std::sync::Arc;

use task_store::{ThreadQuery, ThreadStoreError};

use super::control::instance_thread;
use super::{Inner, duration_ms};
use crate::state::{Outcome, Transition, apply};
use crate::task_store::{Known, Plan, TASK_KIND, audit_message};
use crate::{TaskError, TaskId, TaskStatus, TaskStore};

/// What [`recover`](crate::BackgroundTaskManager::recover) changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Tasks marked `stopped` (they support resume).
    pub stopped: Vec<TaskId>,
    /// Tasks marked `failed` (they cannot be resumed).
    pub failed: Vec<TaskId>,
    /// Running tasks left alone because their lease is alive.
    pub alive: usize,
    /// Tasks whose record could not be read or written, with the error.
    pub errors: Vec<(TaskId, String)>,
}

impl RecoveryReport {
    /// Whether recovery changed nothing and met no error.
    pub fn is_empty(&self) -> bool {
        self.stopped.is_empty() && self.failed.is_empty() && self.errors.is_empty()
    }
}

/// Scans the task records of the store (the kind index, page by page) and
/// recovers every running task whose lease has expired, or that names this
/// instance as holder without running here (an earlier life).
pub(crate) async fn recover(inner: &Arc<Inner>) -> Result<RecoveryReport, TaskError> {
    let Some(outbox) = &inner.outbox else {
        return Ok(RecoveryReport::default());
    };
    let store = outbox.store();
    let mut report = RecoveryReport::default();
    let mut expiries: HashMap<String, u64> = HashMap::new();
    let mut query = ThreadQuery::by_kind(TASK_KIND).with_limit(task_store::MAX_PAGE_LIMIT);
    loop {
        let page = store.thread_store().list_threads(query.clone()).await?;
        for thread_id in &page.ids {
            let Some(task_id) = thread_id.strip_prefix("task:") else {
                continue;
            };
            if let Err(error) = recover_one(inner, store, task_id, &mut expiries, &mut report).await
            {
                report.errors.push((task_id.to_owned(), error.to_string()));
            }
        }
        match page.next {
            Some(next) => query.after = Some(next),
            None => return Ok(report),
        }
    }
}

async fn recover_one(
    inner: &Inner,
    store: &TaskStore,
    task_id: &str,
    expiries: &mut HashMap<String, u64>,
    report: &mut RecoveryReport,
) -> Result<(), TaskError> {
    let Some(found) = store.load_versioned(task_id).await? else {
        return Ok(());
    };
    let record = &found.record;
    if record.status != TaskStatus::Running {
        return Ok(());
    }
    let now = inner.clock.now_ms();
    let holder = record.lease.as_ref().map(|l| l.holder.clone());
    let orphaned = match &holder {
        Some(h) if *h == inner.instance_id => !inner.runs(task_id, record.attempt),
        Some(h) => {
            let heartbeat = match expiries.get(h) {
                Some(at) => *at,
                None => {
                    let at = instance_expiry(store, h).await?;
                    expiries.insert(h.clone(), at);
                    at
                }
            };
            let expiry = heartbeat.max(record.lease.as_ref().map_or(0, |l| l.expires_at_ms));
            now > expiry.saturating_add(duration_ms(inner.leases.skew_allowance))
        }
        // Created ahead and never started by a manager: give it one TTL.
        None => {
            now > record
                .updated_at_ms
                .saturating_add(duration_ms(inner.leases.ttl + inner.leases.skew_allowance))
        }
    };
    if !orphaned {
        report.alive += 1;
        return Ok(());
    }
    let (status, _, _) = super::interrupted(record.supports_resume);
    let error = format!(
        "interrupted: instance {} stopped renewing its lease; recovered by instance {}",
        holder.as_deref().unwrap_or("(none)"),
        inner.instance_id
    );
    let expected = record.clone();
    // Whether the last decision (the one committed) changed the record.
    let mut changed = false;
    store
        .cas(task_id, Known::Cached(Box::new(found)), |current| {
            changed = false;
            // Change it only if nothing moved since the decision: same
            // attempt, still running, same holder.
            let unchanged = current.is_some_and(|c| {
                c.status == TaskStatus::Running
                    && c.attempt == expected.attempt
                    && c.lease == expected.lease
            });
            if !unchanged {
                return Ok(Plan {
                    record: None,
                    messages: Vec::new(),
                });
            }
            let transition = Transition::Finish {
                attempt: expected.attempt,
                holder: None,
                status,
                result: None,
                error: (status == TaskStatus::Failed).then(|| error.clone()),
                at_ms: now,
            };
            match apply(current, &transition) {
                Outcome::Applied(next) => {
                    changed = true;
                    Ok(Plan {
                        messages: vec![audit_message(&transition, &next)],
                        record: Some(next),
                    })
                }
                _ => Ok(Plan {
                    record: None,
                    messages: Vec::new(),
                }),
            }
        })
        .await?;
    if changed {
        match status {
            TaskStatus::Stopped => report.stopped.push(task_id.to_owned()),
            _ => report.failed.push(task_id.to_owned()),
        }
    }
    Ok(())
}

/// The expiry of instance `holder`'s lease record; 0 when it has none.
async fn instance_expiry(store: &TaskStore, holder: &str) -> Result<u64, TaskError> {
    match store.thread_store().load(&instance_thread(holder)).await {
        Ok(Some(head)) => Ok(head.state["expires_at_ms"].as_u64().unwrap_or(0)),
        Ok(None) => Ok(0),
        Err(ThreadStoreError::InvalidInput { .. }) => Ok(0),
        Err(e) => Err(e.into()),
    }
}
