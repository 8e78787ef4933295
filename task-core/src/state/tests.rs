//! Unit tests of the state machine, transition by transition.

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
