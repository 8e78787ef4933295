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
mod tests {
    use super::*;
    use TaskStatus::*;

    fn record(status: TaskStatus, attempt: u32) -> TaskRecord {
        let mut r = TaskRecord::running(
            NewTaskSpec {
                task_id: "t".into(),
                owner_thread_id: "o".into(),
                task_type: "agent_run".into(),
                supports_resume: true,
                ..NewTaskSpec::default()
            },
            1,
        );
        r.status = status;
        r.attempt = attempt;
        r
    }

    fn finish(attempt: u32, status: TaskStatus) -> Transition {
        Transition::Finish {
            attempt,
            holder: None,
            status,
            result: None,
            error: None,
            at_ms: 7,
        }
    }

    fn start() -> Transition {
        start_of(1)
    }

    fn start_of(attempt: u32) -> Transition {
        Transition::Start {
            record: Box::new(record(Running, attempt)),
        }
    }

    #[test]
    fn start_creates_attempt_one_when_no_record_exists() {
        match apply(None, &start()) {
            Outcome::Applied(r) => assert_eq!((r.status, r.attempt), (Running, 1)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_retried_start_is_recognised_even_after_the_attempt_finished() {
        let mut mine = record(Running, 1);
        mine.run_id = Some("run-1".into());
        let t = Transition::Start {
            record: Box::new(mine.clone()),
        };
        let mut finished = mine;
        finished.status = Completed;
        assert_eq!(apply(Some(&finished), &t), Outcome::AlreadyApplied);
        // A new start (another run id) of the finished task is the next attempt.
        let mut next = record(Running, 2);
        next.run_id = Some("run-2".into());
        assert!(matches!(
            apply(Some(&finished), &Transition::Start { record: Box::new(next) }),
            Outcome::Applied(r) if r.attempt == 2
        ));
    }

    #[test]
    fn start_adopts_a_running_record_of_its_attempt() {
        assert_eq!(
            apply(Some(&record(Running, 3)), &start_of(3)),
            Outcome::AlreadyApplied
        );
        assert!(matches!(
            apply(Some(&record(Running, 3)), &start_of(2)),
            Outcome::Rejected(Rejection::StaleAttempt { .. })
        ));
    }

    #[test]
    fn no_start_of_another_owner_touches_a_record() {
        let mut theirs = record(Running, 1);
        theirs.owner_thread_id = "bob".into();
        for status in [Running, Completed, Failed, Cancelled, Stopped] {
            let mine = record(status, 1);
            for attempt in [1, 2] {
                let mut start = theirs.clone();
                start.attempt = attempt;
                assert_eq!(
                    apply(
                        Some(&mine),
                        &Transition::Start {
                            record: Box::new(start)
                        }
                    ),
                    Outcome::Rejected(Rejection::OwnerMismatch),
                    "{status} attempt {attempt}"
                );
            }
        }
    }

    fn lease(holder: &str) -> Option<Lease> {
        Some(Lease {
            holder: holder.into(),
            expires_at_ms: 100,
        })
    }

    #[test]
    fn start_takes_the_lease_of_an_unheld_running_record() {
        let mut mine = record(Running, 1);
        mine.lease = lease("me");
        let t = Transition::Start {
            record: Box::new(mine),
        };
        match apply(Some(&record(Running, 1)), &t) {
            Outcome::Applied(r) => assert_eq!(r.lease, lease("me")),
            other => panic!("{other:?}"),
        }
        let mut held_by_me = record(Running, 1);
        held_by_me.lease = lease("me");
        assert_eq!(apply(Some(&held_by_me), &t), Outcome::AlreadyApplied);
        let mut held_elsewhere = record(Running, 1);
        held_elsewhere.lease = lease("other");
        assert_eq!(
            apply(Some(&held_elsewhere), &t),
            Outcome::Rejected(Rejection::HeldElsewhere {
                holder: "other".into()
            })
        );
    }

    #[test]
    fn a_holder_that_lost_its_lease_cannot_finish() {
        let by_me = |status| Transition::Finish {
            attempt: 1,
            holder: Some("me".into()),
            status,
            result: None,
            error: None,
            at_ms: 9,
        };
        let mut running = record(Running, 1);
        running.lease = lease("me");
        assert!(matches!(
            apply(Some(&running), &by_me(Completed)),
            Outcome::Applied(r) if r.status == Completed
        ));
        // Recovery marked it stopped (and cleared the lease) meanwhile.
        assert!(matches!(
            apply(Some(&record(Stopped, 1)), &by_me(Completed)),
            Outcome::Rejected(Rejection::LeaseLost { .. })
        ));
        let mut taken = record(Running, 1);
        taken.lease = lease("other");
        assert!(matches!(
            apply(Some(&taken), &by_me(Failed)),
            Outcome::Rejected(Rejection::LeaseLost { .. })
        ));
    }

    #[test]
    fn start_on_a_finished_record_begins_the_next_attempt() {
        for status in [Completed, Failed, Cancelled, Stopped] {
            match apply(Some(&record(status, 2)), &start_of(3)) {
                Outcome::Applied(r) => {
                    assert_eq!((r.status, r.attempt), (Running, 3), "from {status}");
                    assert!(r.result.is_none() && r.error.is_none());
                }
                other => panic!("from {status}: {other:?}"),
            }
            // A start planned on an older view is fenced off.
            assert!(matches!(
                apply(Some(&record(status, 2)), &start_of(2)),
                Outcome::Rejected(Rejection::StaleAttempt { .. })
            ));
            assert!(matches!(
                apply(Some(&record(status, 2)), &start_of(4)),
                Outcome::Rejected(Rejection::FutureAttempt { .. })
            ));
        }
    }

    #[test]
    fn transitions_other_than_start_need_a_record() {
        assert!(matches!(
            apply(None, &finish(1, Completed)),
            Outcome::Rejected(Rejection::FutureAttempt { .. })
        ));
    }

    #[test]
    fn running_may_finish_with_any_outcome() {
        for status in [Completed, Failed, Cancelled, Stopped] {
            match apply(Some(&record(Running, 1)), &finish(1, status)) {
                Outcome::Applied(r) => {
                    assert_eq!(r.status, status);
                    assert_eq!(r.completed_at_ms, Some(7));
                    assert!(r.lease.is_none());
                }
                other => panic!("{status}: {other:?}"),
            }
        }
    }

    #[test]
    fn finishing_as_running_is_refused() {
        assert_eq!(
            apply(Some(&record(Running, 1)), &finish(1, Running)),
            Outcome::Rejected(Rejection::FinishAsRunning)
        );
    }

    #[test]
    fn terminal_outcomes_are_write_once() {
        for current in [Completed, Failed, Cancelled] {
            for requested in [Completed, Failed, Cancelled, Stopped] {
                let outcome = apply(Some(&record(current, 1)), &finish(1, requested));
                if current == requested {
                    assert_eq!(outcome, Outcome::AlreadyApplied, "{current} again");
                } else {
                    assert_eq!(
                        outcome,
                        Outcome::Rejected(Rejection::AlreadyTerminal { current, requested }),
                        "{current} -> {requested}"
                    );
                }
            }
        }
    }

    #[test]
    fn stopped_may_still_end_terminal() {
        for status in [Completed, Failed, Cancelled] {
            assert!(matches!(
                apply(Some(&record(Stopped, 1)), &finish(1, status)),
                Outcome::Applied(r) if r.status == status
            ));
        }
    }

    #[test]
    fn writes_of_an_older_attempt_are_fenced_off() {
        let current = record(Running, 2);
        assert_eq!(
            apply(Some(&current), &finish(1, Completed)),
            Outcome::Rejected(Rejection::StaleAttempt {
                attempt: 1,
                current: 2
            })
        );
        assert_eq!(
            apply(
                Some(&current),
                &Transition::RequestCancel {
                    attempt: 1,
                    at_ms: 1
                }
            ),
            Outcome::Rejected(Rejection::StaleAttempt {
                attempt: 1,
                current: 2
            })
        );
        assert!(matches!(
            apply(Some(&current), &finish(3, Completed)),
            Outcome::Rejected(Rejection::FutureAttempt { .. })
        ));
    }

    #[test]
    fn cancel_requests_are_recorded_once_and_refused_when_terminal() {
        let t = Transition::RequestCancel {
            attempt: 1,
            at_ms: 5,
        };
        let Outcome::Applied(r) = apply(Some(&record(Running, 1)), &t) else {
            panic!("running task accepts a cancel request");
        };
        assert_eq!(r.cancel_requested_at_ms, Some(5));
        assert_eq!(apply(Some(&r), &t), Outcome::AlreadyApplied);
        assert_eq!(
            apply(Some(&record(Completed, 1)), &t),
            Outcome::Rejected(Rejection::NotRunning { current: Completed })
        );
    }

    #[test]
    fn only_a_stopped_resumable_task_resumes_into_the_next_attempt() {
        let t = Transition::Resume {
            from_attempt: 1,
            at_ms: 9,
            lease: None,
            run_id: Some("r2".into()),
        };
        let Outcome::Applied(r) = apply(Some(&record(Stopped, 1)), &t) else {
            panic!("stopped resumable task resumes");
        };
        assert_eq!((r.status, r.attempt), (Running, 2));
        // Retrying the same resume finds it applied; another one is refused.
        assert_eq!(apply(Some(&r), &t), Outcome::AlreadyApplied);
        let other = Transition::Resume {
            from_attempt: 1,
            at_ms: 9,
            lease: None,
            run_id: Some("someone else".into()),
        };
        assert!(matches!(
            apply(Some(&r), &other),
            Outcome::Rejected(Rejection::StaleAttempt { .. })
        ));
        for status in [Running, Completed, Failed, Cancelled] {
            assert!(
                matches!(
                    apply(Some(&record(status, 1)), &t),
                    Outcome::Rejected(Rejection::NotResumable { .. })
                ),
                "{status}"
            );
        }
        let mut not_resumable = record(Stopped, 1);
        not_resumable.supports_resume = false;
        assert!(matches!(
            apply(Some(&not_resumable), &t),
            Outcome::Rejected(Rejection::NotResumable { .. })
        ));
    }

    #[test]
    fn leases_change_only_on_the_running_attempt() {
        let lease = Some(Lease {
            holder: "a".into(),
            expires_at_ms: 10,
        });
        let t = Transition::SetLease {
            attempt: 1,
            lease: lease.clone(),
            at_ms: 3,
        };
        let Outcome::Applied(r) = apply(Some(&record(Running, 1)), &t) else {
            panic!("running task takes a lease");
        };
        assert_eq!(r.lease, lease);
        assert_eq!(apply(Some(&r), &t), Outcome::AlreadyApplied);
        assert!(matches!(
            apply(Some(&record(Failed, 1)), &t),
            Outcome::Rejected(Rejection::NotRunning { .. })
        ));
    }
}

/// Properties of the state machine over any sequence of transitions.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;
    use TaskStatus::*;

    fn status() -> impl Strategy<Value = TaskStatus> {
        prop_oneof![
            Just(Running),
            Just(Completed),
            Just(Failed),
            Just(Cancelled),
            Just(Stopped)
        ]
    }

    fn holder() -> impl Strategy<Value = Option<String>> {
        prop_oneof![
            Just(None),
            Just(Some("a".to_owned())),
            Just(Some("b".to_owned()))
        ]
    }

    /// A transition of any kind, for attempts 1 to 4, with a few run ids,
    /// holders and owners, so that every rule gets exercised.
    fn transition() -> impl Strategy<Value = Transition> {
        let start = (1u32..5, 0u8..3, holder(), prop::bool::weighted(0.1)).prop_map(
            |(attempt, run, holder, other_owner)| {
                let mut record = TaskRecord::running(
                    NewTaskSpec {
                        task_id: "t".into(),
                        owner_thread_id: if other_owner { "intruder" } else { "o" }.into(),
                        task_type: "agent_run".into(),
                        supports_resume: true,
                        ..NewTaskSpec::default()
                    },
                    1,
                );
                record.attempt = attempt;
                record.run_id = Some(format!("run-{run}"));
                record.lease = holder.map(|holder| Lease {
                    holder,
                    expires_at_ms: 10,
                });
                Transition::Start {
                    record: Box::new(record),
                }
            },
        );
        let finish =
            (1u32..5, holder(), status(), any::<u8>()).prop_map(|(attempt, holder, status, n)| {
                Transition::Finish {
                    attempt,
                    holder,
                    status,
                    result: Some(serde_json::json!(n)),
                    error: None,
                    at_ms: u64::from(n),
                }
            });
        let cancel = (1u32..5).prop_map(|attempt| Transition::RequestCancel { attempt, at_ms: 3 });
        let resume = (1u32..5, 0u8..3).prop_map(|(from_attempt, run)| Transition::Resume {
            from_attempt,
            at_ms: 4,
            lease: None,
            run_id: Some(format!("resume-{run}")),
        });
        prop_oneof![start, finish, cancel, resume]
    }

    fn attempt_of_transition(t: &Transition) -> u32 {
        super::attempt_of(t)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// Within an attempt a terminal outcome is never replaced, a write of
        /// an older attempt is always refused, and the owner never changes.
        #[test]
        fn terminal_outcomes_are_write_once_and_older_attempts_are_fenced(
            transitions in prop::collection::vec(transition(), 1..40)
        ) {
            let mut record: Option<TaskRecord> = None;
            for t in &transitions {
                let before = record.clone();
                match apply(record.as_ref(), t) {
                    Outcome::Applied(next) => {
                        if let Some(before) = &before {
                            prop_assert_eq!(&next.owner_thread_id, &before.owner_thread_id);
                            prop_assert!(next.attempt >= before.attempt);
                            if before.status.is_terminal() && next.attempt == before.attempt {
                                prop_assert_eq!(next.status, before.status);
                                prop_assert_eq!(&next.result, &before.result);
                                prop_assert_eq!(&next.error, &before.error);
                            }
                            let stale = attempt_of_transition(t) < before.attempt;
                            prop_assert!(!stale, "a stale transition applied: {:?}", t);
                        }
                        record = Some(next);
                    }
                    Outcome::AlreadyApplied | Outcome::Rejected(_) => {}
                }
            }
        }

        /// A transition of an older attempt than the record's is refused,
        /// whatever the record.
        #[test]
        fn a_write_of_an_older_attempt_is_always_refused(
            transitions in prop::collection::vec(transition(), 1..30),
            probe in transition(),
        ) {
            let mut record: Option<TaskRecord> = None;
            for t in &transitions {
                if let Outcome::Applied(next) = apply(record.as_ref(), t) {
                    record = Some(next);
                }
            }
            if let Some(current) = &record {
                let older = match &probe {
                    Transition::Start { .. } => false,
                    other => attempt_of_transition(other) < current.attempt,
                };
                if older {
                    let outcome = apply(Some(current), &probe);
                    // Refused (as stale, or for an earlier reason), or the
                    // retry of the resume that began the current attempt.
                    let refused = matches!(outcome, Outcome::Rejected(_))
                        || (matches!(probe, Transition::Resume { .. })
                            && outcome == Outcome::AlreadyApplied);
                    prop_assert!(refused, "{:?} on {:?}: {:?}", probe, current, outcome);
                }
            }
        }

        /// Applying the same start or resume again (a retried write, by its
        /// run id) changes nothing.
        #[test]
        fn a_repeated_run_id_is_applied_once(
            transitions in prop::collection::vec(transition(), 0..30),
            repeated in transition(),
        ) {
            let mut record: Option<TaskRecord> = None;
            for t in &transitions {
                if let Outcome::Applied(next) = apply(record.as_ref(), t) {
                    record = Some(next);
                }
            }
            if !matches!(repeated, Transition::Start { .. } | Transition::Resume { .. }) {
                return Ok(());
            }
            if let Outcome::Applied(next) = apply(record.as_ref(), &repeated) {
                prop_assert_eq!(apply(Some(&next), &repeated), Outcome::AlreadyApplied);
            }
        }
    }
}
