//! The durable task record and the pure state machine that changes it.
//!
//! Every durable change to a task is a [`Transition`] applied to its current
//! [`TaskRecord`] by [`apply`], which returns a [`Transition`]'s
//! [`Outcome`]: the new record, "already applied" (the change is in the
//! record: a retried write), or a [`Rejection`]. The function is pure: the
//! caller loads, applies, and writes with a version precondition.
//!
//! # Invariants
//!
//! - A terminal status (`completed`, `failed`, `cancelled`) is never left
//!   within an attempt: no later transition replaces it. Only a new attempt
//!   (a re-spawn of the id) starts over.
//! - A transition names the attempt it belongs to; one of an older attempt is
//!   rejected (fencing), so a late write of attempt `n` cannot overwrite
//!   attempt `n + 1`.
//! - `stopped` is not terminal: it can be resumed (attempt `n + 1`), cancelled
//!   or failed.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{NewTaskSpec, TaskId, TaskStatus};

/// A lease on a running task: which manager instance runs it, and until when
/// that claim holds unless renewed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The holder's instance id.
    pub holder: String,
    /// When the lease expires, in milliseconds since the Unix epoch.
    pub expires_at_ms: u64,
}

/// A task as it is stored durably (the state of thread `task:<id>`). Fields
/// at their default (`None`, `false`, `null`) are left out of the JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// The task's id.
    pub task_id: TaskId,
    /// Its owner.
    pub owner_thread_id: String,
    /// Its type.
    pub task_type: String,
    /// Its description.
    pub description: String,
    /// Its status.
    pub status: TaskStatus,
    /// Why it failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Its result, when it completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// The task that spawned it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_task_id: Option<TaskId>,
    /// Whether it can be resumed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub supports_resume: bool,
    /// Its attempt, from 1.
    pub attempt: u32,
    /// The caller's metadata.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub metadata: Value,
    /// When the current attempt started (ms since the Unix epoch).
    pub created_at_ms: u64,
    /// When the record last changed.
    pub updated_at_ms: u64,
    /// When the current attempt finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at_ms: Option<u64>,
    /// When a cancellation was requested, if one was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_requested_at_ms: Option<u64>,
    /// Who runs it, while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<Lease>,
    /// A unique id of the start (or resume) that began the current attempt,
    /// so a retried start is recognised as the same one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// The last checkpoint the task saved
    /// ([`TaskContext::checkpoint`](crate::TaskContext::checkpoint)): kept
    /// across attempts, so a resumed or retried attempt starts from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<Value>,
}

impl TaskRecord {
    /// Whether nothing can ever run this record again: a terminal status, or
    /// `stopped` without support for resume. Such a record leaves the store's
    /// index of open threads (it carries the store's finished mark), and
    /// retention may collect it.
    pub fn is_closed(&self) -> bool {
        self.status.is_terminal() || (self.status == TaskStatus::Stopped && !self.supports_resume)
    }

    /// A record of a task that starts running now, as attempt 1.
    pub(crate) fn running(spec: NewTaskSpec, now_ms: u64) -> Self {
        Self {
            task_id: spec.task_id,
            owner_thread_id: spec.owner_thread_id,
            task_type: spec.task_type,
            description: spec.description,
            status: TaskStatus::Running,
            error: None,
            result: None,
            parent_task_id: spec.parent_task_id,
            supports_resume: spec.supports_resume,
            attempt: 1,
            metadata: spec.metadata,
            created_at_ms: now_ms,
            updated_at_ms: now_ms,
            completed_at_ms: None,
            cancel_requested_at_ms: None,
            lease: None,
            run_id: None,
            checkpoint: None,
        }
    }
}

/// A durable change to a task.
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    /// A manager starts running attempt `record.attempt` of the task
    /// described by `record` (the record is created when none exists). On
    /// an existing `running` record of that attempt the manager adopts it (a
    /// record created ahead with `TaskStore::create_task`); on a finished
    /// one it starts the next attempt, which must be `record.attempt`. The
    /// owner must be the record's: an id never changes owner.
    Start {
        /// The record to create when none exists.
        record: Box<TaskRecord>,
    },
    /// The attempt ended with this outcome.
    Finish {
        /// The attempt that ended.
        attempt: u32,
        /// The manager instance that ran it, when the report comes from the
        /// lease holder: then the record must still be running under that
        /// holder's lease (a process that lost its lease, say after a long
        /// pause, cannot overwrite what recovery decided).
        holder: Option<String>,
        /// Its status: anything but `running`.
        status: TaskStatus,
        /// Its result.
        result: Option<Value>,
        /// Its error.
        error: Option<String>,
        /// When (ms since the Unix epoch).
        at_ms: u64,
    },
    /// A cancellation of the attempt was requested.
    RequestCancel {
        /// The attempt to cancel.
        attempt: u32,
        /// When.
        at_ms: u64,
    },
    /// A `stopped` task starts its next attempt.
    Resume {
        /// The attempt being resumed (the stopped one).
        from_attempt: u32,
        /// When.
        at_ms: u64,
        /// Who runs the new attempt.
        lease: Option<Lease>,
        /// The unique id of this resume (see [`TaskRecord::run_id`]).
        run_id: Option<String>,
    },
    /// The running attempt saved a checkpoint (its `seq`-th).
    Checkpoint {
        /// The attempt.
        attempt: u32,
        /// Its number within the attempt, from 1.
        seq: u64,
        /// What it saved.
        value: Value,
        /// When.
        at_ms: u64,
    },
    /// Sets (or clears) the lease of a running attempt.
    SetLease {
        /// The attempt.
        attempt: u32,
        /// The new lease.
        lease: Option<Lease>,
        /// When.
        at_ms: u64,
    },
}

impl Transition {
    /// A short name for the audit log: `started`, `completed`, `cancel_requested`...
    pub fn name(&self) -> &'static str {
        match self {
            Self::Start { .. } => "started",
            Self::Finish { status, .. } => status.as_str(),
            Self::RequestCancel { .. } => "cancel_requested",
            Self::Resume { .. } => "resumed",
            Self::SetLease { .. } => "lease",
            Self::Checkpoint { .. } => "checkpoint",
        }
    }
}

/// Why the state machine refused a transition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// The transition belongs to an attempt older than the record's.
    #[error("attempt {attempt} is older than the record's attempt {current}")]
    StaleAttempt {
        /// The transition's attempt.
        attempt: u32,
        /// The record's attempt.
        current: u32,
    },
    /// The transition names an attempt the record has not started.
    #[error("attempt {attempt} has not started (the record is at attempt {current})")]
    FutureAttempt {
        /// The transition's attempt.
        attempt: u32,
        /// The record's attempt.
        current: u32,
    },
    /// The attempt already has a terminal outcome.
    #[error("the outcome is already {current} (write-once); refused {requested}")]
    AlreadyTerminal {
        /// The stored outcome.
        current: TaskStatus,
        /// The refused one.
        requested: TaskStatus,
    },
    /// The transition needs a running task.
    #[error("the task is {current}, not running")]
    NotRunning {
        /// The status.
        current: TaskStatus,
    },
    /// The task cannot be resumed.
    #[error("the task is {current}; only a stopped task that supports resume can be resumed")]
    NotResumable {
        /// The status.
        current: TaskStatus,
    },
    /// `Finish` with status `running`.
    #[error("a task cannot finish as running")]
    FinishAsRunning,
    /// A manager tried to start a running task that another instance holds.
    #[error("the task is running under the lease of instance {holder}")]
    HeldElsewhere {
        /// The instance that holds it.
        holder: String,
    },
    /// The transition names another owner than the record's: an id belongs
    /// to its first owner for good.
    #[error("the task belongs to another owner")]
    OwnerMismatch,
    /// A lease holder reported an outcome after it lost the lease (the task
    /// was recovered, or another instance holds it now).
    #[error("instance {holder} no longer holds the task (it is {current})")]
    LeaseLost {
        /// The instance that reported.
        holder: String,
        /// The record's status.
        current: TaskStatus,
    },
}

/// What [`apply`] decided.
#[must_use = "a transition outcome says whether anything must be written"]
#[derive(Debug, Clone, PartialEq)]
// A short-lived return value: boxing the record would add an allocation to
// every transition for no saving.
#[allow(clippy::large_enum_variant)]
pub enum Outcome {
    /// The record after the transition; write it.
    Applied(TaskRecord),
    /// The record already reflects the transition (a retry); write nothing.
    AlreadyApplied,
    /// The transition is refused; write nothing.
    Rejected(Rejection),
}

/// Applies `transition` to the current record (`None` when none exists yet).
///
/// Pure: no I/O, no clock. See the module docs for the invariants.
pub fn apply(current: Option<&TaskRecord>, transition: &Transition) -> Outcome {
    let Some(rec) = current else {
        return match transition {
            Transition::Start { record } => Outcome::Applied((**record).clone()),
            _ => Outcome::Rejected(Rejection::FutureAttempt {
                attempt: attempt_of(transition),
                current: 0,
            }),
        };
    };
    match transition {
        Transition::Start { record } => {
            if record.owner_thread_id != rec.owner_thread_id {
                // An id is its owner's for good: no other owner may replace,
                // restart or adopt it.
                return Outcome::Rejected(Rejection::OwnerMismatch);
            }
            if record.run_id.is_some() && rec.run_id == record.run_id {
                // Our own start, written by an earlier try whose outcome was
                // unknown (and perhaps finished since).
                return Outcome::AlreadyApplied;
            }
            if rec.status != TaskStatus::Running {
                // The next attempt, exactly: a start planned on an older view
                // of the record (someone started an attempt in between) is
                // fenced off like any other write of the wrong attempt.
                if record.attempt != rec.attempt + 1 {
                    return Outcome::Rejected(if record.attempt <= rec.attempt {
                        Rejection::StaleAttempt {
                            attempt: record.attempt,
                            current: rec.attempt,
                        }
                    } else {
                        Rejection::FutureAttempt {
                            attempt: record.attempt,
                            current: rec.attempt,
                        }
                    });
                }
                return Outcome::Applied((**record).clone());
            }
            if let Some(rejection) = fence(rec, record.attempt) {
                return Outcome::Rejected(rejection);
            }
            // A running record of the same attempt: adopt it if nobody else
            // holds it (a record created ahead of the spawn, or our own
            // earlier, ambiguous write), and take its lease.
            let holder = record.lease.as_ref().map(|l| &l.holder);
            match rec.lease.as_ref().map(|l| &l.holder) {
                Some(current) if Some(current) != holder => {
                    Outcome::Rejected(Rejection::HeldElsewhere {
                        holder: current.clone(),
                    })
                }
                // Ours already: a retried start, or a new run of an earlier
                // life of this instance, which takes the record over.
                Some(_) if rec.run_id == record.run_id => Outcome::AlreadyApplied,
                Some(_) => {
                    let mut next = rec.clone();
                    next.lease = record.lease.clone();
                    next.run_id = record.run_id.clone();
                    next.updated_at_ms = record.updated_at_ms;
                    Outcome::Applied(next)
                }
                None if record.lease.is_none() => Outcome::AlreadyApplied,
                None => {
                    let mut next = rec.clone();
                    next.lease = record.lease.clone();
                    next.run_id = record.run_id.clone();
                    next.updated_at_ms = record.updated_at_ms;
                    Outcome::Applied(next)
                }
            }
        }
        Transition::Finish {
            attempt,
            holder,
            status,
            result,
            error,
            at_ms,
        } => {
            if *status == TaskStatus::Running {
                return Outcome::Rejected(Rejection::FinishAsRunning);
            }
            if let Some(rejection) = fence(rec, *attempt) {
                return Outcome::Rejected(rejection);
            }
            if rec.status == *status {
                return Outcome::AlreadyApplied;
            }
            if rec.status.is_terminal() {
                return Outcome::Rejected(Rejection::AlreadyTerminal {
                    current: rec.status,
                    requested: *status,
                });
            }
            if let Some(holder) = holder {
                let held = rec.lease.as_ref().is_none_or(|l| &l.holder == holder);
                if rec.status != TaskStatus::Running || !held {
                    return Outcome::Rejected(Rejection::LeaseLost {
                        holder: holder.clone(),
                        current: rec.status,
                    });
                }
            }
            let mut next = rec.clone();
            next.status = *status;
            next.result = result.clone();
            next.error = error.clone();
            next.completed_at_ms = Some(*at_ms);
            next.updated_at_ms = *at_ms;
            next.lease = None;
            Outcome::Applied(next)
        }
        Transition::RequestCancel { attempt, at_ms } => {
            if let Some(rejection) = fence(rec, *attempt) {
                return Outcome::Rejected(rejection);
            }
            if rec.status.is_terminal() {
                return Outcome::Rejected(Rejection::NotRunning {
                    current: rec.status,
                });
            }
            if rec.cancel_requested_at_ms.is_some() {
                return Outcome::AlreadyApplied;
            }
            let mut next = rec.clone();
            next.cancel_requested_at_ms = Some(*at_ms);
            next.updated_at_ms = *at_ms;
            Outcome::Applied(next)
        }
        Transition::Resume {
            from_attempt,
            at_ms,
            lease,
            run_id,
        } => {
            if rec.attempt == from_attempt + 1 && run_id.is_some() && rec.run_id == *run_id {
                return Outcome::AlreadyApplied;
            }
            if let Some(rejection) = fence(rec, *from_attempt) {
                return Outcome::Rejected(rejection);
            }
            if rec.status != TaskStatus::Stopped || !rec.supports_resume {
                return Outcome::Rejected(Rejection::NotResumable {
                    current: rec.status,
                });
            }
            let mut next = rec.clone();
            next.attempt = rec.attempt + 1;
            next.status = TaskStatus::Running;
            next.result = None;
            next.error = None;
            next.completed_at_ms = None;
            next.cancel_requested_at_ms = None;
            next.updated_at_ms = *at_ms;
            next.lease = lease.clone();
            next.run_id = run_id.clone();
            Outcome::Applied(next)
        }
        Transition::Checkpoint {
            attempt,
            value,
            at_ms,
            ..
        } => {
            if let Some(rejection) = fence(rec, *attempt) {
                return Outcome::Rejected(rejection);
            }
            if rec.status != TaskStatus::Running {
                return Outcome::Rejected(Rejection::NotRunning {
                    current: rec.status,
                });
            }
            let mut next = rec.clone();
            next.checkpoint = Some(value.clone());
            next.updated_at_ms = *at_ms;
            Outcome::Applied(next)
        }
        Transition::SetLease {
            attempt,
            lease,
            at_ms,
        } => {
            if let Some(rejection) = fence(rec, *attempt) {
                return Outcome::Rejected(rejection);
            }
            if rec.status != TaskStatus::Running {
                return Outcome::Rejected(Rejection::NotRunning {
                    current: rec.status,
                });
            }
            if rec.lease == *lease {
                return Outcome::AlreadyApplied;
            }
            let mut next = rec.clone();
            next.lease = lease.clone();
            next.updated_at_ms = *at_ms;
            Outcome::Applied(next)
        }
    }
}

fn attempt_of(transition: &Transition) -> u32 {
    match transition {
        Transition::Start { record } => record.attempt,
        Transition::Finish { attempt, .. }
        | Transition::RequestCancel { attempt, .. }
        | Transition::Checkpoint { attempt, .. }
        | Transition::SetLease { attempt, .. } => *attempt,
        Transition::Resume { from_attempt, .. } => *from_attempt,
    }
}

fn fence(rec: &TaskRecord, attempt: u32) -> Option<Rejection> {
    if attempt < rec.attempt {
        Some(Rejection::StaleAttempt {
            attempt,
            current: rec.attempt,
        })
    } else if attempt > rec.attempt {
        Some(Rejection::FutureAttempt {
            attempt,
            current: rec.attempt,
        })
    } else {
        None
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod properties;
