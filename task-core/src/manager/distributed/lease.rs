//! Lease renewal: one write of the instance record per period, on its own
//! schedule, for every task the instance holds.
//!
//! # The lease protocol
//!
//! Each manager has an instance id. A task's durable record names its holder
//! and an initial expiry (`lease` in the record, written with the task's
//! start). The holder then renews *one* record for all its tasks: the
//! instance thread `instance:<id>` (see `protocol`), whose state carries
//! `expires_at_ms`. A task's lease is alive while either expiry is in the
//! future (plus a skew allowance). The renewal is a `save`, which keeps the
//! thread's log: the instance's inbox.

use std::sync::Arc;

use task_store::Thread;

use super::Distributed;
use crate::manager::clock::duration_ms;
use crate::protocol::{INSTANCE_KIND, InstanceRecord, instance_thread};

/// Renews the lease every `renew_every` until the manager stops or is gone.
pub(super) async fn run(layer: Arc<Distributed>) {
    let stopping = layer.background.stopping();
    loop {
        let Some(core) = layer.core.upgrade() else {
            return;
        };
        if layer.background.is_stopping() {
            return;
        }
        let expires = core
            .clock
            .now_ms()
            .saturating_add(duration_ms(layer.leases.ttl));
        drop(core);
        tokio::select! {
            () = layer.write_instance(expires) => {}
            () = stopping.cancelled() => return,
        }
        tokio::select! {
            () = tokio::time::sleep(layer.leases.renew_every) => {}
            () = stopping.cancelled() => return,
        }
    }
}

impl Distributed {
    /// Writes the instance record with expiry `expires_at_ms` (0 gives up
    /// every lease). Failures are logged: the next period tries again.
    pub(super) async fn write_instance(&self, expires_at_ms: u64) {
        let Some(core) = self.core.upgrade() else {
            return;
        };
        let record = InstanceRecord {
            instance_id: self.instance_id.clone(),
            expires_at_ms,
            renewed_at_ms: core.clock.now_ms(),
        };
        drop(core);
        let thread = Thread::new(instance_thread(&self.instance_id), INSTANCE_KIND)
            .with_state(record.encode());
        if let Err(error) = self.store.thread_store().save(thread).await {
            tracing::warn!(instance = %self.instance_id, %error, "lease renewal failed");
        }
    }

    /// Removes the instance record (its leases and its inbox): the clean
    /// end of an instance. Its tasks were all interrupted durably first.
    pub(super) async fn remove_instance(&self) -> Result<(), crate::TaskError> {
        self.store
            .thread_store()
            .delete(&instance_thread(&self.instance_id))
            .await
            .map_err(Into::into)
    }
}
