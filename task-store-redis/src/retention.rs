//! Retention: sweeping the index entries of finished threads whose keys
//! expired, on demand and in the background.

use std::sync::Arc;
use std::time::Duration;

use task_store::Result;

use crate::conn::Invocation;
use crate::reply::{int, items};
use crate::scripts;
use crate::store::RedisStore;

/// How many expired threads one sweep handles at a time.
const SWEEP_BATCH: usize = 500;

impl RedisStore {
    /// Removes the index entries of finished threads whose retention has
    /// run out, at most `max` threads' worth, and returns how many threads
    /// were swept. Listing never shows such threads anyway (it skips and
    /// removes the entries of threads that are gone); sweeping frees the
    /// entries of indexes nobody lists. Each shard is swept by one script,
    /// so an entry is removed only if its thread is really gone. With a
    /// retention and a
    /// [`sweep_interval`](crate::RedisStoreOptions::sweep_interval), the
    /// store runs this by itself in the background.
    ///
    /// # Errors
    ///
    /// `Unavailable`/`Timeout` when the server cannot answer; `Backend` when
    /// a sorted set of the store holds another type.
    pub async fn sweep_expired(&self, max: usize) -> Result<usize> {
        Ok(self.sweep(max).await?.0)
    }

    /// Sweeps the shards in turn until `max` due entries were handled;
    /// returns the threads swept and the entries handled.
    async fn sweep(&self, max: usize) -> Result<(usize, usize)> {
        let keys = &self.inner.keys;
        let (mut swept, mut handled) = (0, 0);
        for shard in 0..keys.shards() {
            let budget = max.max(1) - handled;
            let mut invocation = Invocation::new(&scripts::SWEEP)
                .arg(keys.thread_prefix(shard))
                .arg(budget.to_string());
            invocation.keys.extend(keys.indexes(shard));
            let reply = self.inner.conn.write(&invocation).await?;
            let what = &invocation.keys[4];
            let mut replies = items(what, reply)?.into_iter();
            swept += usize::try_from(int(what, replies.next())?).unwrap_or(0);
            handled += usize::try_from(int(what, replies.next())?).unwrap_or(0);
            if handled >= max.max(1) {
                break;
            }
        }
        Ok((swept, handled))
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
                    match store.sweep(SWEEP_BATCH).await {
                        Ok((_, handled)) if handled == SWEEP_BATCH => continue,
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
