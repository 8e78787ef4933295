//! Wake-ups between processes through Redis pub/sub.

use std::fmt;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use task_store::{
    Result, SignalReceiver, SignalSource, ThreadSignals, ThreadStoreError, validate_id,
};

use crate::error::RedisFailure;

/// Wake-ups through Redis pub/sub on `<prefix>:signal:<channel>` (best
/// effort, as the contract says: a message sent while a subscriber
/// reconnects is lost): a `PUBLISH` to signal, a dedicated subscriber
/// connection per watch.
#[derive(Clone)]
pub(crate) struct RedisSignals {
    pub(crate) client: redis::Client,
    pub(crate) conn: ConnectionManager,
    pub(crate) prefix: String,
}

impl fmt::Debug for RedisSignals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSignals")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisSignals {
    fn channel(&self, channel: &str) -> Result<String> {
        validate_id("signal channel", channel)?;
        Ok(format!("{}:signal:{channel}", self.prefix))
    }
}

#[async_trait]
impl ThreadSignals for RedisSignals {
    async fn signal(&self, channel: &str) -> Result<()> {
        let channel = self.channel(channel)?;
        let mut conn = self.conn.clone();
        let _receivers: i64 = redis::cmd("PUBLISH")
            .arg(&channel)
            .arg(1)
            .query_async(&mut conn)
            .await
            .map_err(|err| ThreadStoreError::from(RedisFailure::general(err)))?;
        Ok(())
    }

    async fn watch(&self, channel: &str) -> Result<SignalReceiver> {
        let channel = self.channel(channel)?;
        let mut pubsub = self
            .client
            .get_async_pubsub()
            .await
            .map_err(|err| ThreadStoreError::from(RedisFailure::general(err)))?;
        pubsub
            .subscribe(&channel)
            .await
            .map_err(|err| ThreadStoreError::from(RedisFailure::general(err)))?;
        Ok(SignalReceiver::new(Box::new(Subscription(Box::pin(
            pubsub.into_on_message(),
        )))))
    }
}

/// The messages of one subscription; the stream ends when the connection does.
struct Subscription(std::pin::Pin<Box<dyn futures_util::Stream<Item = redis::Msg> + Send>>);

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Subscription")
    }
}

#[async_trait]
impl SignalSource for Subscription {
    async fn next(&mut self) -> Option<()> {
        futures_util::StreamExt::next(&mut self.0).await.map(|_| ())
    }
}
