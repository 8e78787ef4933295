//! Recovery: durable `running` tasks whose holder is gone become `stopped`
//! (resumable) or `failed`.
//!
//! Recovery reads only what can need it: the store's index of open task
//! threads (running or resumable), a page at a time, each page's records
//! loaded a bounded number at once. Its cost follows the live work in the
//! store, never the finished history.

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt;
use task_store::{ThreadQuery, ThreadStoreError};

use crate::manager::clock::duration_ms;
use crate::manager::config::LeaseConfig;
use crate::manager::core::{Core, interrupted};
use crate::protocol::{
    INSTANCE_KIND, InstanceRecord, TASK_KIND, instance_of_thread, instance_thread, task_of_thread,
};
use crate::records::{Known, LOAD_CONCURRENCY, Plan, audit_message};
use crate::state::{Outcome, TaskRecord, Transition, apply};
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
    /// Records that could not be parsed, replaced by a `failed` record that
    /// says so (no record is ever left `running` because it cannot be read).
    pub repaired: Vec<TaskId>,
    /// Instance records of instances long gone, removed.
    pub instances_removed: Vec<String>,
    /// Stopped tasks this instance resumed with the handler of their type
    /// (see [`handler`](crate::BackgroundTaskManagerBuilder::handler)): the
    /// ones stopped now, and any stopped earlier that nobody resumed.
    pub resumed: Vec<TaskId>,
    /// Tasks whose record could not be read or written, with the error.
    pub errors: Vec<(TaskId, String)>,
}

impl RecoveryReport {
    /// Whether recovery changed nothing and met no error.
    pub fn is_empty(&self) -> bool {
        self.stopped.is_empty()
            && self.failed.is_empty()
            && self.repaired.is_empty()
            && self.instances_removed.is_empty()
            && self.resumed.is_empty()
            && self.errors.is_empty()
    }
}

/// What recovery decided about one open record.
enum Verdict {
    Leave { alive: bool },
    Recover(TaskStatus),
    Repair(String),
    Error(String),
}

/// A stopped task recovery found that a handler of this instance can run:
/// owner, id, type.
pub(crate) type Resumable = (String, TaskId, String);

/// Recovers every running task of the store whose lease has expired, or
/// that names this instance as holder without this instance knowing its
/// run (an earlier life). Also returns the stopped tasks whose type has a
/// handler here, to resume.
pub(crate) async fn recover(
    core: &Arc<Core>,
    store: &Arc<TaskStore>,
    leases: &LeaseConfig,
) -> Result<(RecoveryReport, Vec<Resumable>), TaskError> {
    let mut report = RecoveryReport::default();
    let mut resumable: Vec<Resumable> = Vec::new();
    let mut stopped_before: std::collections::HashSet<TaskId> = std::collections::HashSet::new();
    let mut expiries: HashMap<String, u64> = HashMap::new();
    let mut holders_seen: HashMap<String, usize> = HashMap::new();
    let mut query = ThreadQuery::by_kind(TASK_KIND)
        .open_only()
        .with_limit(task_store::MAX_PAGE_LIMIT);
    loop {
        let page = store.thread_store().list_threads(query.clone()).await?;
        let ids: Vec<TaskId> = page
            .ids
            .iter()
            .filter_map(|id| task_of_thread(id).map(str::to_owned))
            .collect();
        let loaded = store.load_many(ids).await;
        // The heartbeats of the page's holders, each read once.
        let holders: Vec<String> = loaded
            .iter()
            .filter_map(|(_, r)| r.as_ref().ok()?.as_ref()?.record.lease.as_ref())
            .map(|l| l.holder.clone())
            .filter(|h| !expiries.contains_key(h) && *h != core.lease.holder)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let read = futures::stream::iter(holders)
            .map(|h| async move {
                let at = instance_expiry(store, &h).await;
                (h, at)
            })
            .buffer_unordered(LOAD_CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
        for (holder, at) in read {
            expiries.insert(holder, at?);
        }
        let mut decided = Vec::new();
        for (task_id, loaded) in loaded {
            let verdict = match loaded {
                Ok(None) => continue,
                Ok(Some(found)) => {
                    let record = &found.record;
                    if let Some(lease) = &record.lease
                        && record.status == TaskStatus::Running
                    {
                        *holders_seen.entry(lease.holder.clone()).or_default() += 1;
                    }
                    // Stopped (or about to be, if its holder is gone), and
                    // runnable here.
                    if record.supports_resume
                        && matches!(record.status, TaskStatus::Stopped | TaskStatus::Running)
                        && core.handlers.get(&record.task_type).is_some()
                    {
                        resumable.push((
                            record.owner_thread_id.clone(),
                            record.task_id.clone(),
                            record.task_type.clone(),
                        ));
                        if record.status == TaskStatus::Stopped {
                            stopped_before.insert(record.task_id.clone());
                        }
                    }
                    judge(core, leases, &expiries, record)
                }
                Err(TaskError::Corrupt { reason, .. }) => Verdict::Repair(reason),
                // The store itself cannot decode the thread (its state is
                // too deep for its parser, say).
                Err(TaskError::Store(ThreadStoreError::Corrupt { reason, .. })) => {
                    Verdict::Repair(reason)
                }
                Err(e) => Verdict::Error(e.to_string()),
            };
            decided.push((task_id, verdict));
        }
        let results = futures::stream::iter(decided)
            .map(|(task_id, verdict)| async move {
                let outcome = apply_verdict(core, store, &task_id, verdict).await;
                (task_id, outcome)
            })
            .buffer_unordered(LOAD_CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
        for (task_id, outcome) in results {
            match outcome {
                Ok(Applied::Nothing { alive }) => report.alive += usize::from(alive),
                Ok(Applied::Stopped) => report.stopped.push(task_id),
                Ok(Applied::Failed) => report.failed.push(task_id),
                Ok(Applied::Repaired) => report.repaired.push(task_id),
                Err(error) => report.errors.push((task_id, error)),
            }
        }
        match page.next {
            Some(next) => query.after = Some(next),
            None => break,
        }
    }
    remove_dead_instances(core, store, leases, &holders_seen, &mut report).await;
    report.stopped.sort();
    report.failed.sort();
    report.repaired.sort();
    // Running ones that were left alone stay theirs; stopped ones (now or
    // before) can find a home here.
    resumable.retain(|(_, id, _)| {
        stopped_before.contains(id) || report.stopped.binary_search(id).is_ok()
    });
    Ok((report, resumable))
}

/// Whether a running record's holder is gone.
fn judge(
    core: &Core,
    leases: &LeaseConfig,
    expiries: &HashMap<String, u64>,
    record: &TaskRecord,
) -> Verdict {
    if record.status != TaskStatus::Running {
        return Verdict::Leave { alive: false };
    }
    let now = core.clock.now_ms();
    let orphaned = match record.lease.as_ref() {
        // Our own: ours unless this life knows the run, whatever the state
        // of its writes (an outcome known here and not yet written stands).
        Some(lease) if lease.holder == core.lease.holder => {
            !core.knows_run(&record.task_id, record.attempt, record.run_id.as_deref())
        }
        Some(lease) => {
            let heartbeat = expiries.get(&lease.holder).copied().unwrap_or(0);
            let expiry = heartbeat.max(lease.expires_at_ms);
            now > expiry.saturating_add(duration_ms(leases.skew_allowance))
        }
        // Created ahead and never started by a manager: give it one TTL.
        None => {
            now > record
                .updated_at_ms
                .saturating_add(duration_ms(leases.ttl + leases.skew_allowance))
        }
    };
    if orphaned {
        Verdict::Recover(interrupted(record.supports_resume, "").0)
    } else {
        Verdict::Leave { alive: true }
    }
}

enum Applied {
    Nothing { alive: bool },
    Stopped,
    Failed,
    Repaired,
}

async fn apply_verdict(
    core: &Core,
    store: &TaskStore,
    task_id: &str,
    verdict: Verdict,
) -> Result<Applied, String> {
    match verdict {
        Verdict::Leave { alive } => Ok(Applied::Nothing { alive }),
        Verdict::Error(error) => Err(error),
        Verdict::Recover(status) => recover_one(core, store, task_id, status)
            .await
            .map_err(|e| e.to_string()),
        Verdict::Repair(reason) => repair(core, store, task_id, &reason)
            .await
            .map(|()| Applied::Repaired)
            .map_err(|e| e.to_string()),
    }
}

/// Ends a running record whose holder is gone, if nothing moved since it
/// was judged (same attempt, still running, same lease).
async fn recover_one(
    core: &Core,
    store: &TaskStore,
    task_id: &str,
    status: TaskStatus,
) -> Result<Applied, TaskError> {
    let Some(found) = store.load_versioned(task_id).await? else {
        return Ok(Applied::Nothing { alive: false });
    };
    let expected = found.record.clone();
    let holder = expected.lease.as_ref().map(|l| l.holder.clone());
    let error = format!(
        "interrupted: instance {} stopped renewing its lease; recovered by instance {}",
        holder.as_deref().unwrap_or("(none)"),
        core.lease.holder
    );
    let now = core.clock.now_ms();
    let mut changed = false;
    store
        .cas(task_id, Known::Cached(Box::new(found)), |current| {
            changed = false;
            let unchanged = current.is_some_and(|c| {
                c.status == TaskStatus::Running
                    && c.attempt == expected.attempt
                    && c.lease == expected.lease
                    && c.run_id == expected.run_id
            });
            if !unchanged {
                return Ok(Plan::default());
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
                _ => Ok(Plan::default()),
            }
        })
        .await?;
    Ok(match (changed, status) {
        (false, _) => Applied::Nothing { alive: false },
        (true, TaskStatus::Stopped) => Applied::Stopped,
        (true, _) => Applied::Failed,
    })
}

/// Replaces a record that cannot be parsed with a `failed` one that says
/// why, keeping its log, so no record stays open (or `running`) forever
/// because nobody can read it. The owner is taken from the thread's parent
/// when the store can still read the thread's head; when even that fails,
/// the replacement names no owner (no owner can ask for it), and it still
/// leaves the index of open records.
async fn repair(
    core: &Core,
    store: &TaskStore,
    task_id: &str,
    reason: &str,
) -> Result<(), TaskError> {
    let thread_id = TaskStore::thread_id(task_id);
    let (owner, precondition) = match store.thread_store().load(&thread_id).await {
        Ok(None) => return Ok(()),
        Ok(Some(head)) => {
            if crate::records::decode(task_id, head.clone()).is_ok() {
                // Someone fixed it meanwhile.
                return Ok(());
            }
            (
                head.parent_id.clone().unwrap_or_default(),
                task_store::VersionPrecondition::Exact(head.version),
            )
        }
        Err(ThreadStoreError::Corrupt { .. }) => {
            (String::new(), task_store::VersionPrecondition::Any)
        }
        Err(e) => return Err(e.into()),
    };
    let now = core.clock.now_ms();
    let record = TaskRecord {
        status: TaskStatus::Failed,
        error: Some(format!(
            "the stored record could not be read and was replaced by recovery: {reason}"
        )),
        completed_at_ms: Some(now),
        ..TaskRecord::running(
            crate::NewTaskSpec {
                task_id: task_id.to_owned(),
                owner_thread_id: owner,
                task_type: "unknown".to_owned(),
                ..crate::NewTaskSpec::default()
            },
            now,
        )
    };
    let transition = Transition::Finish {
        attempt: record.attempt,
        holder: None,
        status: TaskStatus::Failed,
        result: None,
        error: record.error.clone(),
        at_ms: now,
    };
    let changes = task_store::ChangeSet {
        state: Some(crate::records::encode(&record)?),
        messages: vec![audit_message(&transition, &record)],
        terminal: Some(true),
    };
    match store
        .thread_store()
        .append(&thread_id, changes, precondition)
        .await
    {
        Ok(_) => Ok(()),
        // Someone wrote it meanwhile: the next recovery looks again.
        Err(ThreadStoreError::VersionConflict { .. } | ThreadStoreError::NotFound { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The expiry of instance `holder`'s lease record; 0 when it has none.
async fn instance_expiry(store: &TaskStore, holder: &str) -> Result<u64, TaskError> {
    match store.thread_store().load(&instance_thread(holder)).await {
        Ok(Some(head)) => Ok(InstanceRecord::decode(head.state).map_or(0, |r| r.expires_at_ms)),
        Ok(None) => Ok(0),
        Err(ThreadStoreError::InvalidInput { .. }) => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// Removes the instance records of instances whose lease expired more than
/// a TTL ago and that hold no running task any more (all of them were
/// recovered): the trace a process that died leaves behind.
async fn remove_dead_instances(
    core: &Core,
    store: &TaskStore,
    leases: &LeaseConfig,
    still_held: &HashMap<String, usize>,
    report: &mut RecoveryReport,
) {
    let ids = match store
        .thread_store()
        .list_threads(ThreadQuery::by_kind(INSTANCE_KIND).with_limit(task_store::MAX_PAGE_LIMIT))
        .await
    {
        Ok(page) => page.ids,
        Err(error) => {
            tracing::debug!(%error, "cannot list instance records");
            return;
        }
    };
    let now = core.clock.now_ms();
    let grace = duration_ms(leases.ttl + leases.skew_allowance);
    for thread_id in ids {
        let Some(instance) = instance_of_thread(&thread_id) else {
            continue;
        };
        if instance == core.lease.holder || still_held.contains_key(instance) {
            continue;
        }
        let Ok(Some(head)) = store.thread_store().load(&thread_id).await else {
            continue;
        };
        let expires = InstanceRecord::decode(head.state).map_or(0, |r| r.expires_at_ms);
        // Renewed long enough ago that it is gone: remove it, unless it was
        // renewed meanwhile (an append with the version seen fails then).
        if now > expires.saturating_add(grace) {
            let deleted = delete_if_unchanged(store, &thread_id, head.version).await;
            if deleted {
                report.instances_removed.push(instance.to_owned());
            }
        }
    }
}

/// Deletes a thread if its version is still `version`; best effort (the
/// contract has no conditional delete, so a renewal racing this one may be
/// lost: that instance then writes its record again at its next renewal).
async fn delete_if_unchanged(store: &TaskStore, thread_id: &str, version: u64) -> bool {
    match store.thread_store().load(thread_id).await {
        Ok(Some(head)) if head.version == version => {
            store.thread_store().delete(thread_id).await.is_ok()
        }
        _ => false,
    }
}
