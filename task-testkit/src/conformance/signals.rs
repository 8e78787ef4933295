//! Signals ([`ThreadWriter::signals`](task_store::ThreadWriter::signals)):
//! a store that offers them wakes every watcher of a channel; one that does
//! not says so by returning `None`, and callers rely on polling alone.

use std::sync::Arc;
use std::time::Duration;

use task_store::{SignalReceiver, ThreadStore};

use super::CaseResult;
use super::support::{Context, run};

/// How long a watcher may wait for a signal sent after its watch began.
/// Signals are best effort, but on a healthy store they arrive in
/// milliseconds; this only bounds a store that never delivers them.
const DELIVERY: Duration = Duration::from_secs(10);

async fn woken(receiver: &mut SignalReceiver, what: &str) -> CaseResult {
    match tokio::time::timeout(DELIVERY, receiver.recv()).await {
        Ok(Some(())) => Ok(()),
        Ok(None) => Err(format!("{what}: the watch ended instead of waking")),
        Err(_) => Err(format!(
            "{what}: no wake-up within {DELIVERY:?} of a signal sent after the watch began"
        )),
    }
}

/// A store whose `signals()` is `Some` wakes every watcher of a channel
/// (two on one channel, one on another) for a signal sent after their
/// watch began, and again for a later signal; a store without signals
/// returns `None` and the case has nothing more to check.
pub async fn signals_wake_every_watcher_of_their_channel(
    store: Arc<dyn ThreadStore>,
    prefix: &str,
) -> CaseResult {
    run(store, prefix, |cx| async move {
        let Some(signals) = cx.store.signals() else {
            return Ok(());
        };
        let (channel, other) = (cx.name("channel"), cx.name("other"));
        let mut first = signals.watch(&channel).await.ctx("watch")?;
        let mut second = signals.watch(&channel).await.ctx("watch again")?;
        let mut elsewhere = signals.watch(&other).await.ctx("watch another channel")?;
        signals.signal(&channel).await.ctx("signal")?;
        woken(&mut first, "the first watcher").await?;
        woken(&mut second, "the second watcher of the same channel").await?;
        signals
            .signal(&other)
            .await
            .ctx("signal the other channel")?;
        woken(&mut elsewhere, "the watcher of the other channel").await?;
        signals.signal(&channel).await.ctx("signal again")?;
        woken(&mut first, "the first watcher, for a second signal").await?;
        Ok(())
    })
    .await
}
