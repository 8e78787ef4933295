//! In-process signals for the stores that share one `MemoryStore`.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use async_trait::async_trait;
use task_store::{Result, SignalReceiver, SignalSource, ThreadSignals, validate_id};
use tokio::sync::watch;

/// One watch channel per signal name; a signal bumps its counter, and each
/// receiver wakes once however many bumps it missed.
#[derive(Debug, Default)]
pub(crate) struct MemorySignals {
    channels: Mutex<HashMap<String, watch::Sender<u64>>>,
}

impl MemorySignals {
    fn sender(&self, channel: &str) -> watch::Sender<u64> {
        let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        channels
            .entry(channel.to_owned())
            .or_insert_with(|| watch::channel(0).0)
            .clone()
    }
}

#[async_trait]
impl ThreadSignals for MemorySignals {
    async fn signal(&self, channel: &str) -> Result<()> {
        validate_id("signal channel", channel)?;
        self.sender(channel).send_modify(|n| *n = n.wrapping_add(1));
        Ok(())
    }

    async fn watch(&self, channel: &str) -> Result<SignalReceiver> {
        validate_id("signal channel", channel)?;
        let mut receiver = self.sender(channel).subscribe();
        receiver.mark_unchanged();
        Ok(SignalReceiver::new(Box::new(Watch(receiver))))
    }
}

#[derive(Debug)]
struct Watch(watch::Receiver<u64>);

#[async_trait]
impl SignalSource for Watch {
    async fn next(&mut self) -> Option<()> {
        self.0.changed().await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_signal_wakes_every_watcher_of_its_channel_only() {
        let signals = MemorySignals::default();
        let mut a = signals.watch("a").await.expect("watch a");
        let mut a2 = signals.watch("a").await.expect("watch a again");
        let mut b = signals.watch("b").await.expect("watch b");
        signals.signal("a").await.expect("signal");
        assert_eq!(a.recv().await, Some(()));
        assert_eq!(a2.recv().await, Some(()));
        let pending = tokio::time::timeout(std::time::Duration::ZERO, b.recv()).await;
        assert!(pending.is_err(), "b was not signalled");
    }

    #[tokio::test]
    async fn signals_before_the_watch_are_not_replayed_and_bad_names_are_refused() {
        let signals = MemorySignals::default();
        signals.signal("c").await.expect("signal");
        let mut c = signals.watch("c").await.expect("watch");
        let pending = tokio::time::timeout(std::time::Duration::ZERO, c.recv()).await;
        assert!(pending.is_err());
        assert!(signals.signal("").await.is_err());
        assert!(signals.watch("x\ny").await.is_err());
    }
}
