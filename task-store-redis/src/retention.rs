//! Retention: sweeping the index entries of finished threads whose keys
//! expired, on demand and in the background.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use task_store::Result;

use crate::conn::Invocation;
use crate::reply::{int, items, opt_string};
use crate::scripts;
use crate::store::RedisStore;

/// How many expired threads one sweep handles at a time.
const SWEEP_BATCH: usize = 500;

/// The ids to prune from one index, with the index's kind and parent.
type IndexSweep = (Option<String>, Option<String>, Vec<String>);

impl RedisStore {
    /// Removes the index entries of finished threads whose retention has
    /// run out, at most `max` threads' worth, and returns how many threads
    /// were swept. Listing never shows such threads anyway (it checks every
    /// entry against its head); sweeping frees the entries of indexes nobody
    /// lists. With a retention and a
    /// [`sweep_interval`](crate::RedisStoreOptions::sweep_interval), the
    /// store runs this by itself in the background.
    ///
    /// # Errors
    ///
    /// `Unavailable`/`Timeout` when the server cannot answer; `Backend` when
    /// the expiry set is not a sorted set.
    pub async fn sweep_expired(&self, max: usize) -> Result<usize> {
        let keys = &self.inner.keys;
        let expiring = keys.expiring();
        let due = Invocation::new(&scripts::DUE)
            .key(expiring.clone())
            .arg(max.max(1).to_string());
        let reply = self.inner.conn.invoke(&due, None).await?;
        let mut replies = items(&expiring, reply)?.into_iter();
        let due_at = int(&expiring, replies.next())?;
        let entries = replies
            .map(|item| opt_string(&expiring, Some(item)).map(Option::unwrap_or_default))
            .collect::<Result<Vec<String>>>()?;
        if entries.is_empty() {
            return Ok(0);
        }

        // Group the ids by the index entries they may have left behind.
        let mut by_index: BTreeMap<String, IndexSweep> = BTreeMap::new();
        for entry in &entries {
            let mut parts = entry.splitn(3, '\n');
            let (Some(id), Some(kind), parent) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            let parent = parent.filter(|p| !p.is_empty());
            let mut add = |index: String, kind: Option<&str>, parent: Option<&str>| {
                by_index
                    .entry(index)
                    .or_insert_with(|| {
                        (
                            kind.map(str::to_owned),
                            parent.map(str::to_owned),
                            Vec::new(),
                        )
                    })
                    .2
                    .push(id.to_owned());
            };
            add(keys.idx_all(), None, None);
            if !kind.is_empty() {
                add(keys.idx_kind(kind), Some(kind), None);
            }
            if let Some(parent) = parent {
                add(keys.idx_parent(parent), None, Some(parent));
                if !kind.is_empty() {
                    add(keys.idx_parent_kind(parent, kind), Some(kind), Some(parent));
                }
            }
        }
        for (index, (kind, parent, ids)) in &by_index {
            self.prune(index, kind.as_deref(), parent.as_deref(), ids)
                .await?;
        }

        let mut forget = Invocation::new(&scripts::FORGET)
            .key(expiring.clone())
            .arg(due_at.to_string());
        for entry in &entries {
            forget = forget.arg(entry.as_str());
        }
        self.inner.conn.invoke(&forget, None).await?;
        Ok(entries.len())
    }

    /// Sweeps expired index entries every `every`, for as long as a clone of
    /// this store lives.
    pub(crate) fn spawn_sweeper(&self, every: Duration) {
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            // The first tick is immediate; nothing has expired yet.
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                let store = RedisStore { inner };
                loop {
                    match store.sweep_expired(SWEEP_BATCH).await {
                        Ok(n) if n == SWEEP_BATCH => continue,
                        Ok(_) => break,
                        Err(err) => {
                            tracing::debug!(error = %err, "sweeping expired index entries failed; trying again later");
                            break;
                        }
                    }
                }
            }
        });
    }
}
