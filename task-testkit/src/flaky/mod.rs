//! [`FlakyStore`]: a [`ThreadStore`] wrapper that injects faults from a
//! plan, deterministically given a seed.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use task_store::{
    AppendRequest, ChangeSet, Committed, MessagePage, MessageQuery, Result, Thread, ThreadHead,
    ThreadPage, ThreadQuery, ThreadReader, ThreadStore, ThreadStoreError, ThreadWriter,
    VersionPrecondition,
};

mod fault;

pub use fault::{Effect, FailureKind, Fault, FaultCounts, HangHandle, Operation, Trigger};

/// The environment variable that seeds [`FlakyStore::new`], to replay a run.
pub const SEED_ENV: &str = "FLAKY_STORE_SEED";

/// A [`ThreadStore`] that forwards every call to an inner store, injecting
/// the faults of its plan, deterministically given a seed.
///
/// With an empty plan it behaves exactly like the inner store (and passes the
/// conformance suite). Faults are added and cleared through `&self`, so the
/// store can be shared as `Arc<FlakyStore>` with the code under test.
///
/// A plan is a list of [`Fault`]s, each bound to one [`Operation`]: *what*
/// happens (an [`Effect`]: fail, commit then fail, add latency, hang until
/// released) and *when* (a [`Trigger`]: always, the next n calls, every k-th
/// call, with probability p). Calls without a firing fault go straight to the
/// inner store.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
///
/// use task_store::{ChangeSet, Thread, ThreadWriter, VersionPrecondition};
/// use task_store_memory::MemoryStore;
/// use task_testkit::{Fault, FlakyStore, Operation};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> task_store::Result<()> {
/// let store = FlakyStore::with_seed(Arc::new(MemoryStore::new()), 42);
/// store.create(Thread::new("t", "task")).await?;
///
/// store.fail_appends(2);
/// store.inject(Operation::Load, Fault::latency(Duration::from_millis(5)));
/// store.inject(Operation::Save, Fault::commit_then_fail().every(3));
///
/// let append = || store.append("t", ChangeSet::default(), VersionPrecondition::Any);
/// assert!(append().await.expect_err("injected").is_retryable());
/// assert!(append().await.expect_err("injected").is_retryable());
/// assert!(append().await.is_ok());
/// assert_eq!(store.remaining_failures(), 0);
/// assert_eq!(store.counts(Operation::Append).failed, 2);
/// # Ok(())
/// # }
/// ```
///
/// # Setting versus stacking
///
/// [`inject`](FlakyStore::inject) (and [`fail_next`](FlakyStore::fail_next),
/// built on it) adds a fault on top of the plan, so faults stack:
/// `inject(Append, Fault::fail().with_probability(0.1))` then
/// `inject(Append, Fault::latency(d))` makes appends both slow and flaky.
/// [`fail_appends(n)`](FlakyStore::fail_appends) instead *sets* the number of
/// appends still to fail: it replaces every failing fault of appends, so
/// `fail_appends(0)` heals them, and [`remaining_failures`](FlakyStore::remaining_failures)
/// reads the count back.
///
/// # Determinism
///
/// Every random choice comes from one RNG per store, seeded by
/// [`FlakyStore::with_seed`] (or, for [`FlakyStore::new`], by the
/// `FLAKY_STORE_SEED` environment variable when set, otherwise at random).
/// The seed is printed when the store is made, so a failing test shows it in
/// its captured output; run again with `FLAKY_STORE_SEED=<seed>` to replay.
/// Given the seed and the order of calls, the same calls fail.
///
/// # Evaluation
///
/// On each call of an operation, every fault of that operation is looked at
/// in the order it was added, and each advances its trigger (a `Next(n)`
/// counts down, an `EveryNth(k)` counts the call, a `Probability(p)` draws
/// from the RNG), whether or not an earlier fault already fired. Then all
/// the latencies that fired are slept (with `tokio::time::sleep`, so paused
/// time works), all the hangs that fired are waited for, and the first
/// failure that fired ([`Effect::Fail`] or [`Effect::CommitThenFail`])
/// decides the outcome. In [`append_batch`](ThreadWriter::append_batch) each
/// request counts as one [`Operation::Append`], and in
/// [`create_batch`](ThreadWriter::create_batch) each thread as one
/// [`Operation::Create`] (so a plan for `create` applies to batched creates
/// too); a batch sleeps the longest latency among its items, and the items
/// that do not fail are sent to the inner store as one batch.
pub struct FlakyStore {
    inner: Arc<dyn ThreadStore>,
    seed: u64,
    plan: Mutex<Plan>,
}

struct Plan {
    rng: fastrand::Rng,
    faults: Vec<Armed>,
    counts: [FaultCounts; Operation::ALL.len()],
}

/// A fault in the plan, with its trigger's progress.
struct Armed {
    operation: Operation,
    fault: Fault,
    /// Calls of the operation seen since the fault was added.
    seen: u64,
}

/// What the plan decided for one call.
#[derive(Default)]
struct Decision {
    delay: Duration,
    hangs: Vec<HangHandle>,
    outcome: Outcome,
    call: u64,
}

#[derive(Default, Clone, Copy, PartialEq)]
enum Outcome {
    #[default]
    Proceed,
    Fail(FailureKind),
    CommitThenFail,
}

impl Plan {
    fn decide(&mut self, operation: Operation) -> Decision {
        let counts = &mut self.counts[operation.index()];
        counts.calls += 1;
        let mut decision = Decision {
            call: counts.calls,
            ..Decision::default()
        };
        for armed in self.faults.iter_mut().filter(|a| a.operation == operation) {
            armed.seen += 1;
            let fires = match &mut armed.fault.trigger {
                Trigger::Always => true,
                Trigger::Next(remaining) => {
                    let fires = *remaining > 0;
                    *remaining = remaining.saturating_sub(1);
                    fires
                }
                Trigger::EveryNth(k) => *k > 0 && armed.seen % *k == 0,
                Trigger::Probability(p) => self.rng.f64() < p.clamp(0.0, 1.0),
            };
            if !fires {
                continue;
            }
            match &armed.fault.effect {
                Effect::Latency(delay) => decision.delay += *delay,
                Effect::Hang(handle) => decision.hangs.push(handle.clone()),
                Effect::Fail(kind) if decision.outcome == Outcome::Proceed => {
                    decision.outcome = Outcome::Fail(*kind);
                }
                Effect::CommitThenFail if decision.outcome == Outcome::Proceed => {
                    decision.outcome = Outcome::CommitThenFail;
                }
                Effect::Fail(_) | Effect::CommitThenFail => {}
            }
        }
        self.faults
            .retain(|armed| !matches!(armed.fault.trigger, Trigger::Next(0)));
        let counts = &mut self.counts[operation.index()];
        counts.delayed += u64::from(!decision.delay.is_zero());
        counts.hung += u64::from(!decision.hangs.is_empty());
        match decision.outcome {
            Outcome::Proceed => {}
            Outcome::Fail(_) => counts.failed += 1,
            Outcome::CommitThenFail => counts.committed_then_failed += 1,
        }
        decision
    }
}

impl FlakyStore {
    /// Wraps `inner` with an empty plan, seeded from the `FLAKY_STORE_SEED`
    /// environment variable when it holds a number, otherwise at random. The
    /// seed is printed (and kept in [`seed`](Self::seed)) for replay.
    pub fn new(inner: Arc<dyn ThreadStore>) -> Self {
        let seed = std::env::var(SEED_ENV)
            .ok()
            .and_then(|seed| seed.trim().parse().ok())
            .unwrap_or_else(|| fastrand::u64(..));
        Self::with_seed(inner, seed)
    }

    /// Wraps `inner` with an empty plan and an RNG seeded by `seed`.
    pub fn with_seed(inner: Arc<dyn ThreadStore>, seed: u64) -> Self {
        eprintln!("FlakyStore seed: {seed} (replay with {SEED_ENV}={seed})");
        Self {
            inner,
            seed,
            plan: Mutex::new(Plan {
                rng: fastrand::Rng::with_seed(seed),
                faults: Vec::new(),
                counts: Default::default(),
            }),
        }
    }

    /// The seed of this store's RNG.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The wrapped store, to look behind the faults.
    pub fn inner(&self) -> &Arc<dyn ThreadStore> {
        &self.inner
    }

    /// Adds a fault to the plan of `operation`, after those already there:
    /// faults stack, each with its own trigger (see the evaluation rules on
    /// [`FlakyStore`]). To *set* how many appends fail instead, use
    /// [`fail_appends`](Self::fail_appends).
    pub fn inject(&self, operation: Operation, fault: Fault) -> &Self {
        self.plan().faults.push(Armed {
            operation,
            fault,
            seen: 0,
        });
        self
    }

    /// Adds a fault that fails the next `n` calls of `operation` with a
    /// retryable [`ThreadStoreError::Unavailable`]: `inject(operation,
    /// Fault::fail().next(n))`. It stacks on the faults already there, like
    /// every [`inject`](Self::inject).
    pub fn fail_next(&self, operation: Operation, n: usize) -> &Self {
        self.inject(operation, Fault::fail().next(n))
    }

    /// Sets how many appends are still to fail: the next `n` appends (each
    /// request of a batch counts) fail with a retryable
    /// [`ThreadStoreError::Unavailable`] without reaching the inner store,
    /// and every append after them goes through. `fail_appends(0)` heals
    /// appends at once.
    ///
    /// It *sets* the count, it does not add to it: every fault of
    /// [`Operation::Append`] that fails calls ([`Effect::Fail`] and
    /// [`Effect::CommitThenFail`], whether added by an earlier
    /// `fail_appends` or by [`inject`](Self::inject)) is replaced. Latency
    /// and hang faults of appends, and the faults of other operations, stay.
    /// To stack failures on a plan, use [`inject`](Self::inject) or
    /// [`fail_next`](Self::fail_next).
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use task_store_memory::MemoryStore;
    /// # use task_testkit::FlakyStore;
    /// let store = FlakyStore::with_seed(Arc::new(MemoryStore::new()), 7);
    /// store.fail_appends(5);
    /// store.fail_appends(2);
    /// assert_eq!(store.remaining_failures(), 2, "set, not added");
    /// store.fail_appends(0);
    /// assert_eq!(store.remaining_failures(), 0, "healed");
    /// ```
    pub fn fail_appends(&self, n: usize) -> &Self {
        let mut plan = self.plan();
        plan.faults
            .retain(|armed| !(armed.operation == Operation::Append && armed.fault.fails()));
        if n > 0 {
            plan.faults.push(Armed {
                operation: Operation::Append,
                fault: Fault::fail().next(n),
                seen: 0,
            });
        }
        self
    }

    /// How many calls the scripted failures still to come will fail:
    /// [`Trigger::Next`] faults that fail or commit then fail, of every
    /// operation. Faults of one operation fire on the same calls, so for
    /// each operation this counts the largest of its remaining counts, not
    /// their sum. Faults with other triggers (always, every k-th, with a
    /// probability) are not counted.
    ///
    /// After [`fail_appends(n)`](Self::fail_appends) on a store with no
    /// other scripted failures it is `n`, and each failed append takes one
    /// off.
    pub fn remaining_failures(&self) -> usize {
        let plan = self.plan();
        Operation::ALL
            .iter()
            .map(|&operation| {
                plan.faults
                    .iter()
                    .filter(|armed| armed.operation == operation && armed.fault.fails())
                    .map(|armed| match armed.fault.trigger {
                        Trigger::Next(remaining) => remaining,
                        _ => 0,
                    })
                    .max()
                    .unwrap_or(0)
            })
            .sum()
    }

    /// Removes every fault from the plan. Counts are kept.
    pub fn clear_faults(&self) {
        self.plan().faults.clear();
    }

    /// The calls of `operation` so far and the faults injected into them.
    pub fn counts(&self, operation: Operation) -> FaultCounts {
        self.plan().counts[operation.index()]
    }

    fn plan(&self) -> MutexGuard<'_, Plan> {
        // The plan is only read and updated by short, non-panicking code.
        self.plan.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn decide(&self, operation: Operation) -> Decision {
        self.plan().decide(operation)
    }

    fn error(&self, operation: Operation, call: u64, kind: FailureKind) -> ThreadStoreError {
        let message = format!(
            "injected fault: {operation} call #{call} failed (FlakyStore seed {})",
            self.seed
        );
        match kind {
            FailureKind::Unavailable => ThreadStoreError::Unavailable {
                message,
                source: None,
            },
            FailureKind::Timeout => ThreadStoreError::Timeout {
                message,
                source: None,
            },
        }
    }

    fn ambiguous(&self, operation: Operation, call: u64) -> ThreadStoreError {
        ThreadStoreError::Timeout {
            message: format!(
                "injected fault: {operation} call #{call} was applied, then reported as timed out (FlakyStore seed {})",
                self.seed
            ),
            source: None,
        }
    }

    /// Runs one call through the plan of `operation`.
    async fn run<T, F>(&self, operation: Operation, call: F) -> Result<T>
    where
        F: Future<Output = Result<T>>,
    {
        let decision = self.decide(operation);
        wait(decision.delay, &decision.hangs).await;
        match decision.outcome {
            Outcome::Proceed => call.await,
            Outcome::Fail(kind) => Err(self.error(operation, decision.call, kind)),
            Outcome::CommitThenFail => {
                // Whatever the inner store answered, the caller hears a timeout.
                let _ = call.await;
                Err(self.ambiguous(operation, decision.call))
            }
        }
    }

    /// Runs a batch through the plan of `operation`, each item counting as
    /// one call: the longest latency among the items is slept, every hang
    /// waited for, the items that do not fail are sent to the inner store as
    /// one batch (through `send`), and each item gets its own outcome.
    async fn run_batch<R, F, Fut>(
        &self,
        operation: Operation,
        items: Vec<R>,
        send: F,
    ) -> Vec<Result<Committed>>
    where
        F: FnOnce(Vec<R>) -> Fut,
        Fut: Future<Output = Vec<Result<Committed>>>,
    {
        let decisions: Vec<Decision> = {
            let mut plan = self.plan();
            items.iter().map(|_| plan.decide(operation)).collect()
        };
        let delay = decisions.iter().map(|d| d.delay).max().unwrap_or_default();
        let hangs: Vec<HangHandle> = decisions
            .iter()
            .flat_map(|d| d.hangs.iter().cloned())
            .collect();
        wait(delay, &hangs).await;

        let mut sent = Vec::new();
        for (item, decision) in items.into_iter().zip(&decisions) {
            if !matches!(decision.outcome, Outcome::Fail(_)) {
                sent.push(item);
            }
        }
        let mut answers = send(sent).await.into_iter();
        decisions
            .iter()
            .map(|decision| match decision.outcome {
                Outcome::Fail(kind) => Err(self.error(operation, decision.call, kind)),
                Outcome::Proceed => answers.next().unwrap_or_else(|| {
                    Err(ThreadStoreError::Backend {
                        message: format!(
                            "the inner store returned fewer {operation} batch results than items"
                        ),
                        source: None,
                    })
                }),
                Outcome::CommitThenFail => {
                    let _ = answers.next();
                    Err(self.ambiguous(operation, decision.call))
                }
            })
            .collect()
    }
}

async fn wait(delay: Duration, hangs: &[HangHandle]) {
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    for hang in hangs {
        hang.hang().await;
    }
}

impl fmt::Debug for FlakyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let faults = self.plan().faults.len();
        f.debug_struct("FlakyStore")
            .field("inner", &self.inner)
            .field("seed", &self.seed)
            .field("faults", &faults)
            .finish()
    }
}

#[async_trait]
impl ThreadReader for FlakyStore {
    async fn load(&self, id: &str) -> Result<Option<ThreadHead>> {
        self.run(Operation::Load, self.inner.load(id)).await
    }

    async fn load_messages(&self, id: &str, query: MessageQuery) -> Result<MessagePage> {
        self.run(Operation::LoadMessages, self.inner.load_messages(id, query))
            .await
    }

    async fn list_threads(&self, query: ThreadQuery) -> Result<ThreadPage> {
        self.run(Operation::List, self.inner.list_threads(query))
            .await
    }
}

#[async_trait]
impl ThreadWriter for FlakyStore {
    async fn create(&self, thread: Thread) -> Result<Committed> {
        self.run(Operation::Create, self.inner.create(thread)).await
    }

    async fn create_batch(&self, threads: Vec<Thread>) -> Vec<Result<Committed>> {
        self.run_batch(Operation::Create, threads, |sent| {
            self.inner.create_batch(sent)
        })
        .await
    }

    async fn append(
        &self,
        id: &str,
        changes: ChangeSet,
        precondition: VersionPrecondition,
    ) -> Result<Committed> {
        self.run(
            Operation::Append,
            self.inner.append(id, changes, precondition),
        )
        .await
    }

    async fn append_batch(&self, requests: Vec<AppendRequest>) -> Vec<Result<Committed>> {
        self.run_batch(Operation::Append, requests, |sent| {
            self.inner.append_batch(sent)
        })
        .await
    }

    async fn save(&self, thread: Thread) -> Result<Committed> {
        self.run(Operation::Save, self.inner.save(thread)).await
    }

    async fn delete(&self, id: &str) -> Result<()> {
        self.run(Operation::Delete, self.inner.delete(id)).await
    }

    /// The inner store's signals, without faults: signals are best effort
    /// by contract, so nothing may depend on them arriving anyway.
    fn signals(&self) -> Option<&dyn task_store::ThreadSignals> {
        self.inner.signals()
    }
}

const _: () = {
    const fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<FlakyStore>();
    assert_send_sync::<HangHandle>();
    assert_send_sync::<Fault>();
};
