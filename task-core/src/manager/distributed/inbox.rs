//! The control loop: reads this instance's inbox of requests from other
//! processes (every poll interval, and at once when the store signals a
//! wake-up), and runs periodic recovery.
//!
//! Another process that cancels a task held here appends an
//! [`InboxMessage::Cancel`] to the instance thread (creating the thread if
//! this instance has not written it yet), after writing the durable cancel
//! request on the task's record. The inbox is read from its start in every
//! life of the instance: a request meant for an earlier life names a run
//! that does not run here and is ignored, and no request is skipped because
//! it arrived before this life's first read.

use std::sync::Arc;

use task_store::{MessageQuery, SignalReceiver, ThreadStoreError};

use super::Distributed;
use crate::protocol::{InboxMessage, instance_thread};

/// Reads the inbox until the manager stops or is gone.
pub(super) async fn run(layer: Arc<Distributed>) {
    let stopping = layer.background.stopping();
    let thread_id = instance_thread(&layer.instance_id);
    if layer.leases.recover_on_start && layer.take_start_recovery() {
        layer.report_recovery().await;
    }
    let mut next_recovery = layer
        .leases
        .recover_every
        .map(|every| tokio::time::Instant::now() + every);
    let mut poll = tokio::time::interval(layer.leases.poll_every);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A wake-up from a canceller makes the inbox be read at once instead of
    // at the next poll; the poll stays, since signals may be lost.
    let mut signals = watch(&layer, &thread_id).await;
    loop {
        tokio::select! {
            _ = poll.tick() => {}
            received = next_signal(&mut signals) => {
                if received.is_none() {
                    // The subscription was lost: try again next tick.
                    signals = None;
                }
            }
            () = stopping.cancelled() => return,
        }
        if layer.core.strong_count() == 0 || layer.background.is_stopping() {
            return;
        }
        if signals.is_none() {
            signals = watch(&layer, &thread_id).await;
        }
        layer.read_inbox(&thread_id).await;
        let now = tokio::time::Instant::now();
        if let (Some(at), Some(every)) = (next_recovery, layer.leases.recover_every)
            && now >= at
        {
            layer.report_recovery().await;
            next_recovery = Some(now + every);
        }
    }
}

async fn next_signal(signals: &mut Option<SignalReceiver>) -> Option<()> {
    match signals {
        Some(receiver) => receiver.recv().await,
        None => std::future::pending().await,
    }
}

/// Watches this instance's signal channel, if the store has signals.
async fn watch(layer: &Distributed, channel: &str) -> Option<SignalReceiver> {
    let signals = layer.store.thread_store().signals()?;
    match signals.watch(channel).await {
        Ok(receiver) => Some(receiver),
        Err(error) => {
            tracing::debug!(%error, "cannot watch for wake-ups; polling the inbox only");
            None
        }
    }
}

impl Distributed {
    /// Applies the inbox messages after the cursor, and moves it.
    async fn read_inbox(&self, thread_id: &str) {
        let mut cursor = self.cursor();
        loop {
            let query = MessageQuery {
                after: cursor,
                limit: task_store::MAX_PAGE_LIMIT,
            };
            let page = match self
                .store
                .thread_store()
                .load_messages(thread_id, query)
                .await
            {
                Ok(page) => page,
                // Not written yet (our first renewal has not landed, and no
                // request came): nothing to read.
                Err(ThreadStoreError::NotFound { .. }) => return,
                Err(error) => {
                    tracing::debug!(%error, "reading the inbox failed; retrying next tick");
                    return;
                }
            };
            if let Some(core) = self.core.upgrade() {
                for message in &page.messages {
                    match InboxMessage::decode(message) {
                        Some(InboxMessage::Cancel {
                            task_id,
                            attempt,
                            run_id,
                            ..
                        }) => core.cancel_run(&task_id, attempt, run_id.as_deref()),
                        None => {
                            tracing::debug!(seq = message.seq, "unknown inbox message skipped");
                        }
                    }
                }
            }
            if let Some(last) = page.messages.last() {
                cursor = last.seq;
                self.set_cursor(cursor);
            }
            if page.next.is_none() {
                return;
            }
        }
    }

    /// Runs recovery and logs what it did.
    pub(super) async fn report_recovery(&self) {
        let Some(core) = self.core.upgrade() else {
            return;
        };
        let recovered = super::recovery::recover(&core, &self.store, &self.leases).await;
        drop(core);
        match recovered {
            Ok((mut report, resumable)) => {
                if let (Some(resumer), false) = (self.resumer.get(), resumable.is_empty()) {
                    report.resumed = (resumer.0)(resumable).await;
                }
                if !report.is_empty() {
                    tracing::info!(?report, "recovered tasks of instances that stopped");
                }
            }
            Err(error) => tracing::warn!(%error, "recovery failed; it runs again next period"),
        }
    }
}
