//! The background work of a manager with a task store: renewing its lease,
//! reading its inbox of requests from other processes, and running recovery.
//!
//! # The lease protocol
//!
//! Each manager has an instance id. A task's durable record names its holder
//! and an initial expiry (`lease` in the record, written with the task's
//! start). The holder then renews *one* record for all its tasks: the
//! instance thread `instance:<id>`, whose state carries `expires_at_ms`. One
//! write per renewal period, whatever the number of tasks. A task's lease is
//! alive while either expiry is in the future (plus a skew allowance).
//!
//! The instance thread's message log is also the instance's inbox: another
//! process that cancels a task held here appends a `cancel` message to it
//! (after writing the durable cancel request on the task's record). The
//! holder reads the inbox after its cursor every poll interval, so a request
//! is seen within one interval and never missed: the log is durable.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use serde_json::json;
use task_store::{MessageQuery, Thread, ThreadStoreError};

use super::{Inner, duration_ms};
use crate::TaskStore;

/// The thread kind of instance records.
pub(crate) const INSTANCE_KIND: &str = "instance";

/// The id of the thread that holds instance `id`'s lease and inbox.
pub(crate) fn instance_thread(id: &str) -> String {
    format!("instance:{id}")
}

/// Whether the control loop runs, and the signal to stop it.
#[derive(Debug, Default)]
pub(crate) struct Control {
    started: OnceLock<()>,
    stopped: AtomicBool,
}

/// Starts the control loop once (needs a tokio runtime).
pub(crate) fn ensure_started(inner: &Arc<Inner>) {
    let Some(outbox) = &inner.outbox else {
        return;
    };
    let store = Arc::clone(outbox.store());
    inner.control.started.get_or_init(|| {
        tokio::spawn(run(Arc::downgrade(inner), store));
    });
}

/// Stops the control loop at its next tick.
pub(crate) fn stop(inner: &Inner) {
    inner.control.stopped.store(true, Ordering::Release);
}

async fn run(weak: Weak<Inner>, store: Arc<TaskStore>) {
    let Some(inner) = weak.upgrade() else {
        return;
    };
    let leases = inner.leases;
    let me = inner.instance_id.clone();
    let thread_id = instance_thread(&me);
    // Requests sent to an earlier life of this instance are about tasks it
    // no longer runs: start reading after them.
    let mut cursor = match store.thread_store().load(&thread_id).await {
        Ok(Some(head)) => head.last_seq,
        _ => 0,
    };
    renew(&inner, &store).await;
    if leases.recover_on_start {
        report_recovery(&inner).await;
    }
    drop(inner);

    let mut next_renewal = tokio::time::Instant::now() + leases.renew_every;
    let mut next_recovery = leases
        .recover_every
        .map(|every| tokio::time::Instant::now() + every);
    let mut poll = tokio::time::interval(leases.poll_every);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A wake-up from a canceller makes the inbox be read at once instead of
    // at the next poll; the poll stays, since signals may be lost.
    let mut signals = watch_signals(&store, &thread_id).await;
    loop {
        if let Some(receiver) = &mut signals {
            tokio::select! {
                _ = poll.tick() => {}
                received = receiver.recv() => {
                    if received.is_none() {
                        signals = None;
                    }
                }
            }
        } else {
            poll.tick().await;
        }
        let Some(inner) = weak.upgrade() else {
            return;
        };
        if inner.control.stopped.load(Ordering::Acquire) {
            return;
        }
        let now = tokio::time::Instant::now();
        if now >= next_renewal {
            renew(&inner, &store).await;
            next_renewal = now + leases.renew_every;
            if signals.is_none() {
                // The subscription was lost (or never made): try again.
                signals = watch_signals(&store, &thread_id).await;
            }
        }
        cursor = read_inbox(&inner, &store, &thread_id, cursor).await;
        if let (Some(at), Some(every)) = (next_recovery, leases.recover_every)
            && now >= at
        {
            report_recovery(&inner).await;
            next_recovery = Some(now + every);
        }
    }
}

/// Watches this instance's signal channel, if the store has signals.
async fn watch_signals(store: &TaskStore, channel: &str) -> Option<task_store::SignalReceiver> {
    let signals = store.thread_store().signals()?;
    match signals.watch(channel).await {
        Ok(receiver) => Some(receiver),
        Err(error) => {
            tracing::debug!(%error, "cannot watch for wake-ups; polling the inbox only");
            None
        }
    }
}

/// Wakes instance `holder`, so it reads its inbox now. Best effort.
pub(crate) async fn wake(store: &TaskStore, holder: &str) {
    if let Some(signals) = store.thread_store().signals()
        && let Err(error) = signals.signal(&instance_thread(holder)).await
    {
        tracing::debug!(%error, holder, "wake-up not sent; the holder polls its inbox");
    }
}

/// Writes the instance record with a fresh expiry: the renewal of every
/// lease this instance holds.
pub(crate) async fn renew(inner: &Inner, store: &TaskStore) {
    let now = inner.clock.now_ms();
    write_instance(
        inner,
        store,
        now.saturating_add(duration_ms(inner.leases.ttl)),
    )
    .await;
}

/// Writes the instance record with an expiry in the past: the instance
/// gives up every lease it holds.
pub(crate) async fn release(inner: &Inner, store: &TaskStore) {
    write_instance(inner, store, 0).await;
}

async fn write_instance(inner: &Inner, store: &TaskStore, expires_at_ms: u64) {
    let thread =
        Thread::new(instance_thread(&inner.instance_id), INSTANCE_KIND).with_state(json!({
            "instance_id": inner.instance_id,
            "expires_at_ms": expires_at_ms,
            "renewed_at_ms": inner.clock.now_ms(),
        }));
    if let Err(error) = store.thread_store().save(thread).await {
        tracing::warn!(instance = %inner.instance_id, %error, "lease renewal failed");
    }
}

/// Applies the inbox messages after `cursor`; returns the new cursor.
async fn read_inbox(
    inner: &Arc<Inner>,
    store: &TaskStore,
    thread_id: &str,
    mut cursor: u64,
) -> u64 {
    loop {
        let query = MessageQuery {
            after: cursor,
            limit: task_store::MAX_PAGE_LIMIT,
        };
        let page = match store.thread_store().load_messages(thread_id, query).await {
            Ok(page) => page,
            Err(ThreadStoreError::NotFound { .. }) => return cursor,
            Err(error) => {
                tracing::debug!(%error, "reading the inbox failed; retrying next tick");
                return cursor;
            }
        };
        for message in &page.messages {
            cursor = message.seq;
            let body = &message.body;
            if body["type"] == "cancel"
                && let (Some(task_id), Some(attempt)) =
                    (body["task_id"].as_str(), body["attempt"].as_u64())
            {
                inner.cancel_from_inbox(task_id, u32::try_from(attempt).unwrap_or(u32::MAX));
            }
        }
        if page.next.is_none() {
            return cursor;
        }
    }
}

async fn report_recovery(inner: &Arc<Inner>) {
    match super::recovery::recover(inner).await {
        Ok(report) if !report.is_empty() => {
            tracing::info!(?report, "recovered tasks of instances that stopped");
        }
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "recovery failed; it runs again next period"),
    }
}
