//! The vocabulary of a [`FlakyStore`](super::FlakyStore)'s fault plan:
//! which [`Operation`] a [`Fault`] is bound to, what it does (an
//! [`Effect`]) and when (a [`Trigger`]), the [`HangHandle`] that holds calls,
//! and the [`FaultCounts`] of what was injected.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

#[cfg(doc)]
use super::FlakyStore;
#[cfg(doc)]
use task_store::{ThreadReader, ThreadStoreError, ThreadWriter};
use tokio::sync::watch;

/// A store operation that faults can be bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operation {
    /// [`ThreadWriter::create`], and each thread of
    /// [`ThreadWriter::create_batch`].
    Create,
    /// [`ThreadWriter::append`], and each request of
    /// [`ThreadWriter::append_batch`].
    Append,
    /// [`ThreadWriter::save`].
    Save,
    /// [`ThreadWriter::delete`].
    Delete,
    /// [`ThreadReader::load`].
    Load,
    /// [`ThreadReader::load_messages`].
    LoadMessages,
    /// [`ThreadReader::list_threads`].
    List,
}

impl Operation {
    /// Every operation.
    pub const ALL: [Operation; 7] = [
        Operation::Create,
        Operation::Append,
        Operation::Save,
        Operation::Delete,
        Operation::Load,
        Operation::LoadMessages,
        Operation::List,
    ];

    /// Whether the operation writes.
    pub fn is_write(self) -> bool {
        matches!(
            self,
            Operation::Create | Operation::Append | Operation::Save | Operation::Delete
        )
    }

    /// The method's name: `"create"`, `"load_messages"`...
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "create",
            Operation::Append => "append",
            Operation::Save => "save",
            Operation::Delete => "delete",
            Operation::Load => "load",
            Operation::LoadMessages => "load_messages",
            Operation::List => "list_threads",
        }
    }

    pub(super) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// When a [`Fault`] fires.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Trigger {
    /// On every call.
    Always,
    /// On each of the next n calls, then never again.
    Next(usize),
    /// On every k-th call counted from when the fault was added (the k-th,
    /// the 2k-th...). `EveryNth(1)` is `Always`; `EveryNth(0)` never fires.
    EveryNth(u64),
    /// On each call with this probability (clamped into 0..=1), drawn from
    /// the store's seeded RNG.
    Probability(f64),
}

/// The retryable error an [`Effect::Fail`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailureKind {
    /// [`ThreadStoreError::Unavailable`]: the backend could not be reached.
    #[default]
    Unavailable,
    /// [`ThreadStoreError::Timeout`]: the backend did not answer in time.
    Timeout,
}

/// What a [`Fault`] does when it fires.
#[derive(Debug, Clone)]
pub enum Effect {
    /// Fails the call without reaching the inner store.
    Fail(FailureKind),
    /// Lets the call reach the inner store (so a write is applied), then
    /// reports [`ThreadStoreError::Timeout`] whatever the inner store said:
    /// an ambiguous write, whose outcome the caller cannot know.
    CommitThenFail,
    /// Sleeps this long (in tokio time) before the call goes on.
    Latency(Duration),
    /// Holds the call until the handle is [released](HangHandle::release).
    Hang(HangHandle),
}

/// One entry of a fault plan: an [`Effect`] and the [`Trigger`] that fires it.
///
/// Built from the effect, with [`Trigger::Always`] unless narrowed:
/// `Fault::fail().next(3)`, `Fault::commit_then_fail().every(2)`,
/// `Fault::fail_with(FailureKind::Timeout).with_probability(0.1)`.
#[derive(Debug, Clone)]
#[must_use = "a fault does nothing until it is given to FlakyStore::inject"]
pub struct Fault {
    /// What happens.
    pub effect: Effect,
    /// When.
    pub trigger: Trigger,
}

impl Fault {
    /// A fault with this effect and trigger.
    pub fn new(effect: Effect, trigger: Trigger) -> Self {
        Self { effect, trigger }
    }

    /// Fails with [`ThreadStoreError::Unavailable`], on every call.
    pub fn fail() -> Self {
        Self::fail_with(FailureKind::Unavailable)
    }

    /// Fails with the given retryable error, on every call.
    pub fn fail_with(kind: FailureKind) -> Self {
        Self::new(Effect::Fail(kind), Trigger::Always)
    }

    /// Applies the call, then reports a timeout, on every call.
    pub fn commit_then_fail() -> Self {
        Self::new(Effect::CommitThenFail, Trigger::Always)
    }

    /// Adds this latency to every call.
    pub fn latency(delay: Duration) -> Self {
        Self::new(Effect::Latency(delay), Trigger::Always)
    }

    /// Holds every call until `handle` is released.
    pub fn hang(handle: &HangHandle) -> Self {
        Self::new(Effect::Hang(handle.clone()), Trigger::Always)
    }

    /// Fires on the next `n` calls only.
    pub fn next(self, n: usize) -> Self {
        self.with_trigger(Trigger::Next(n))
    }

    /// Fires on every `k`-th call.
    pub fn every(self, k: u64) -> Self {
        self.with_trigger(Trigger::EveryNth(k))
    }

    /// Fires on each call with probability `p`, from the store's seed.
    pub fn with_probability(self, p: f64) -> Self {
        self.with_trigger(Trigger::Probability(p))
    }

    /// Fires on the given trigger.
    pub fn with_trigger(mut self, trigger: Trigger) -> Self {
        self.trigger = trigger;
        self
    }

    /// Whether the fault fails the calls it fires on ([`Effect::Fail`] or
    /// [`Effect::CommitThenFail`]), rather than delaying or holding them.
    pub fn fails(&self) -> bool {
        matches!(self.effect, Effect::Fail(_) | Effect::CommitThenFail)
    }
}

/// Holds calls hit by an [`Effect::Hang`] until released.
///
/// Clones share the same gate. Tests wait on events, not time: await
/// [`wait_until_hanging`](Self::wait_until_hanging) to know a call is held,
/// then [`release`](Self::release) it.
#[derive(Debug, Clone)]
pub struct HangHandle {
    shared: Arc<HangShared>,
}

#[derive(Debug)]
struct HangShared {
    released: watch::Sender<bool>,
    hanging: watch::Sender<usize>,
}

impl Default for HangHandle {
    fn default() -> Self {
        Self::new()
    }
}

impl HangHandle {
    /// A closed gate: calls that hit it hang.
    pub fn new() -> Self {
        Self {
            shared: Arc::new(HangShared {
                released: watch::Sender::new(false),
                hanging: watch::Sender::new(0),
            }),
        }
    }

    /// Lets every held call go on, and every later call pass without
    /// hanging.
    pub fn release(&self) {
        self.shared.released.send_replace(true);
    }

    /// Whether [`release`](Self::release) was called.
    pub fn is_released(&self) -> bool {
        *self.shared.released.borrow()
    }

    /// How many calls are held right now.
    pub fn hanging(&self) -> usize {
        *self.shared.hanging.borrow()
    }

    /// Resolves once at least `n` calls are held at the same time.
    pub async fn wait_until_hanging(&self, n: usize) {
        let mut hanging = self.shared.hanging.subscribe();
        // The sender lives in `self.shared`, so the channel cannot close.
        let _ = hanging.wait_for(|&held| held >= n).await;
    }

    pub(super) async fn hang(&self) {
        let mut released = self.shared.released.subscribe();
        self.shared.hanging.send_modify(|held| *held += 1);
        let _held = HeldCall(&self.shared);
        let _ = released.wait_for(|&released| released).await;
    }
}

/// Counts a held call out when it goes on or its future is dropped.
struct HeldCall<'a>(&'a HangShared);

impl Drop for HeldCall<'_> {
    fn drop(&mut self) {
        self.0.hanging.send_modify(|held| *held -= 1);
    }
}

/// Calls and injected faults of one [`Operation`], see
/// [`FlakyStore::counts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FaultCounts {
    /// Calls of the operation (each request of a batch counts).
    pub calls: u64,
    /// Calls failed without reaching the inner store.
    pub failed: u64,
    /// Calls applied and then reported as timed out.
    pub committed_then_failed: u64,
    /// Calls delayed by a latency fault.
    pub delayed: u64,
    /// Calls held by a hang fault.
    pub hung: u64,
}

impl FaultCounts {
    /// Calls that met at least one fault of each kind, added up.
    pub fn injected(&self) -> u64 {
        self.failed + self.committed_then_failed + self.delayed + self.hung
    }
}
