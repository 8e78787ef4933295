//! Properties of the state machine over any sequence of transitions.

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
