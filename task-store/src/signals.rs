//! Optional, best-effort wake-ups between the processes that share a store.

use std::fmt::Debug;

use async_trait::async_trait;

use crate::Result;

/// Wake-ups on named channels, for backends that can push them (Redis
/// pub/sub; in-process broadcast for the memory store).
///
/// Signals carry no data and may be lost (a subscriber that reconnects misses
/// what was sent meanwhile): they only tell a watcher to look at durable
/// state *now* instead of at its next poll. Never make a signal the only
/// record of anything.
///
/// A store exposes them through [`ThreadWriter::signals`](crate::ThreadWriter::signals).
#[async_trait]
pub trait ThreadSignals: Send + Sync + Debug + 'static {
    /// Wakes the current watchers of `channel`.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for an invalid channel name (the rules of
    /// [`validate_id`](crate::validate_id)); `Unavailable`/`Timeout`.
    async fn signal(&self, channel: &str) -> Result<()>;

    /// Starts watching `channel`: the receiver yields once for each signal
    /// sent after this call returns (several may be coalesced into one).
    ///
    /// # Errors
    ///
    /// As [`signal`](Self::signal).
    async fn watch(&self, channel: &str) -> Result<SignalReceiver>;
}

/// The source behind a [`SignalReceiver`], implemented by backends.
#[async_trait]
pub trait SignalSource: Send + Debug {
    /// Waits for the next signal; `None` once no more can come.
    async fn next(&mut self) -> Option<()>;
}

/// Receives the signals of one watched channel.
#[derive(Debug)]
pub struct SignalReceiver {
    source: Box<dyn SignalSource>,
}

impl SignalReceiver {
    /// Wraps a backend's source.
    pub fn new(source: Box<dyn SignalSource>) -> Self {
        Self { source }
    }

    /// Waits for the next signal; `None` once the watch has ended (the
    /// store was dropped or its subscription was lost for good).
    pub async fn recv(&mut self) -> Option<()> {
        self.source.next().await
    }
}
