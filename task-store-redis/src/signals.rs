//! Wake-ups between processes through Redis pub/sub: plain pub/sub on one
//! server, sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`, Redis 7) on a cluster.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::join_all;
use redis::cluster_async::ClusterConnection;
use redis::{ProtocolVersion, PushInfo, PushKind, Value};
use task_store::{
    Result, SignalReceiver, SignalSource, ThreadSignals, ThreadStoreError, validate_id,
};
use tokio::sync::mpsc;

use crate::conn::{ClusterSeeds, Link, Subscriber};
use crate::error::RedisFailure;
use crate::keys::KeySpace;

/// Wake-ups through Redis pub/sub (best effort, as the contract says: a
/// message sent while a subscriber reconnects is lost; the task layer's
/// inbox poll is the fallback).
///
/// On one server: a `PUBLISH` on `<prefix>:signal:<channel>` to signal, a
/// dedicated subscriber connection per watch. On a cluster: an `SPUBLISH`
/// on `<prefix>:signal:{<channel>}` (the channel's own slot, so signals
/// spread over the masters), and one shared RESP3 connection per store
/// for every watch, subscribed again after a reconnection or a failover
/// (see [`Hub::connect`]).
#[derive(Clone)]
pub(crate) struct RedisSignals {
    pub(crate) link: Link,
    pub(crate) subscriber: Subscriber,
    pub(crate) keys: KeySpace,
    /// The cluster's shared subscriber, made on the first watch.
    pub(crate) hub: Arc<tokio::sync::OnceCell<Arc<Hub>>>,
}

impl fmt::Debug for RedisSignals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSignals")
            .field("prefix", &self.keys.prefix())
            .finish_non_exhaustive()
    }
}

/// The watched channels of a cluster's shared subscriber, by name.
type Watchers = HashMap<Vec<u8>, Channel>;

/// One watched channel: where its pushes go, and whether the connection is
/// subscribed to it.
#[derive(Default)]
struct Channel {
    senders: Vec<mpsc::UnboundedSender<()>>,
    /// `true` while subscribed; held across each `SSUBSCRIBE` and
    /// `SUNSUBSCRIBE` of the channel, so that a watch returns only once the
    /// channel is subscribed, and an unsubscription never overtakes a later
    /// watch.
    subscribed: Arc<tokio::sync::Mutex<bool>>,
}

impl Channel {
    /// Drops the senders whose watch ended; returns whether none is left.
    fn prune(&mut self) -> bool {
        self.senders.retain(|sender| !sender.is_closed());
        self.senders.is_empty()
    }
}

/// A cluster's shared subscriber: the connection the pushes arrive on, and
/// where they go.
pub(crate) struct Hub {
    conn: ClusterConnection,
    watchers: Arc<Mutex<Watchers>>,
}

impl RedisSignals {
    fn channel(&self, channel: &str) -> Result<String> {
        validate_id("signal channel", channel)?;
        Ok(self
            .keys
            .signal(channel, matches!(self.link, Link::Cluster(_))))
    }

    /// The shared subscriber of a cluster, connecting it on first use.
    async fn hub(&self, seeds: &ClusterSeeds) -> Result<Arc<Hub>> {
        self.hub
            .get_or_try_init(|| Hub::connect(seeds))
            .await
            .map(Arc::clone)
    }
}

impl Hub {
    /// Connects a RESP3 cluster connection whose pushes go to the watchers
    /// of their channel.
    ///
    /// `redis-rs` subscribes a node's channels again when it reconnects to
    /// that node, and moves them when it learns a new topology; but a
    /// connection that only listens sends nothing that would make it learn
    /// one, so after its master died it would keep trying the dead node.
    /// Each lost connection therefore starts [`Hub::repair`], which
    /// subscribes the watched channels again (learning the topology on the
    /// way) until they all are.
    async fn connect(seeds: &ClusterSeeds) -> Result<Arc<Self>> {
        let watchers: Arc<Mutex<Watchers>> = Arc::default();
        let sink = Arc::clone(&watchers);
        let (lost, losses) = mpsc::unbounded_channel();
        let deliver = move |push: PushInfo| -> std::result::Result<(), std::convert::Infallible> {
            if push.kind == PushKind::Disconnection {
                let _ = lost.send(());
                return Ok(());
            }
            if !matches!(push.kind, PushKind::SMessage | PushKind::Message) {
                return Ok(());
            }
            let Some(Value::BulkString(channel)) = push.data.first() else {
                return Ok(());
            };
            let mut watchers = sink.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(watched) = watchers.get_mut(channel) {
                watched.senders.retain(|sender| sender.send(()).is_ok());
            }
            Ok(())
        };
        let client = seeds
            .builder()
            .use_protocol(ProtocolVersion::RESP3)
            .push_sender(deliver)
            .build()
            .map_err(|err| ThreadStoreError::from(RedisFailure::general(err)))?;
        let conn = client
            .get_async_connection()
            .await
            .map_err(|err| ThreadStoreError::from(RedisFailure::general(err)))?;
        let hub = Arc::new(Self { conn, watchers });
        tokio::spawn(Self::repair(Arc::downgrade(&hub), losses));
        Ok(hub)
    }

    /// After each lost connection, subscribes the watched channels again
    /// (with a backoff from 50 ms to 1 s between tries) until every one is.
    /// Ends when the hub is gone (its connection, which holds the sender of
    /// `losses`, with it).
    async fn repair(hub: Weak<Self>, mut losses: mpsc::UnboundedReceiver<()>) {
        while losses.recv().await.is_some() {
            let mut backoff = Duration::from_millis(50);
            loop {
                while losses.try_recv().is_ok() {}
                let Some(hub) = hub.upgrade() else {
                    return;
                };
                if hub.resubscribe().await {
                    break;
                }
                drop(hub);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }

    /// Subscribes every watched channel again, each under its lock (so no
    /// unsubscription is undone); returns whether all succeeded.
    async fn resubscribe(&self) -> bool {
        let channels: Vec<(String, Arc<tokio::sync::Mutex<bool>>)> = {
            let watchers = self.watchers.lock().unwrap_or_else(PoisonError::into_inner);
            watchers
                .iter()
                .filter_map(|(name, watched)| {
                    let name = String::from_utf8(name.clone()).ok()?;
                    Some((name, Arc::clone(&watched.subscribed)))
                })
                .collect()
        };
        let tries = channels.iter().map(|(name, state)| async move {
            let subscribed = state.lock().await;
            if !*subscribed {
                return true;
            }
            let mut conn = self.conn.clone();
            match conn.ssubscribe(name).await {
                Ok(()) => true,
                Err(err) => {
                    tracing::debug!(error = %err, channel = name, "subscribing a signal channel again failed");
                    false
                }
            }
        });
        join_all(tries).await.into_iter().all(|done| done)
    }
}

#[async_trait]
impl ThreadSignals for RedisSignals {
    async fn signal(&self, channel: &str) -> Result<()> {
        let channel = self.channel(channel)?;
        let publish = match self.link {
            Link::Single(_) => "PUBLISH",
            Link::Cluster(_) => "SPUBLISH",
        };
        let mut conn = self.link.clone();
        let _receivers: i64 = redis::cmd(publish)
            .arg(&channel)
            .arg(1)
            .query_async(&mut conn)
            .await
            .map_err(|err| ThreadStoreError::from(RedisFailure::general(err)))?;
        Ok(())
    }

    async fn watch(&self, channel: &str) -> Result<SignalReceiver> {
        let channel = self.channel(channel)?;
        match &self.subscriber {
            Subscriber::Single(client) => {
                let mut pubsub = client
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
            Subscriber::Cluster(seeds) => {
                let hub = self.hub(seeds).await?;
                let (sender, receiver) = mpsc::unbounded_channel();
                let state = hub.with_channel(&channel, |watched| {
                    watched.prune();
                    watched.senders.push(sender);
                    Arc::clone(&watched.subscribed)
                });
                let mut subscribed = state.lock().await;
                if !*subscribed {
                    let mut conn = hub.conn.clone();
                    if let Err(err) = conn.ssubscribe(&channel).await {
                        drop(receiver);
                        hub.remove_if_unwatched(&channel, &state);
                        return Err(RedisFailure::general(err).into());
                    }
                    *subscribed = true;
                }
                drop(subscribed);
                Ok(SignalReceiver::new(Box::new(ClusterSubscription {
                    receiver,
                    channel,
                    hub,
                })))
            }
        }
    }
}

impl Hub {
    /// Runs `f` on the entry of `channel`, made when missing.
    fn with_channel<T>(&self, channel: &str, f: impl FnOnce(&mut Channel) -> T) -> T {
        let mut watchers = self.watchers.lock().unwrap_or_else(PoisonError::into_inner);
        f(watchers.entry(channel.as_bytes().to_vec()).or_default())
    }

    /// Whether `channel` has no watch left (pruning the ended ones).
    fn unwatched(&self, channel: &str) -> bool {
        let mut watchers = self.watchers.lock().unwrap_or_else(PoisonError::into_inner);
        watchers
            .get_mut(channel.as_bytes())
            .is_none_or(Channel::prune)
    }

    /// Removes the entry of `channel` when no watch is left and it is still
    /// the entry whose subscription state is `state`.
    fn remove_if_unwatched(&self, channel: &str, state: &Arc<tokio::sync::Mutex<bool>>) {
        let mut watchers = self.watchers.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(watched) = watchers.get_mut(channel.as_bytes())
            && Arc::ptr_eq(&watched.subscribed, state)
            && watched.prune()
        {
            watchers.remove(channel.as_bytes());
        }
    }

    /// Unsubscribes `channel` if no watch is left, under the channel's
    /// lock, so that a watch made meanwhile is either seen here or
    /// subscribes again after this.
    async fn unsubscribe_if_unwatched(&self, channel: &str) {
        let state = {
            let watchers = self.watchers.lock().unwrap_or_else(PoisonError::into_inner);
            match watchers.get(channel.as_bytes()) {
                Some(watched) => Arc::clone(&watched.subscribed),
                None => return,
            }
        };
        let mut subscribed = state.lock().await;
        if !self.unwatched(channel) {
            return;
        }
        if *subscribed {
            let mut conn = self.conn.clone();
            if let Err(err) = conn.sunsubscribe(channel).await {
                tracing::debug!(error = %err, channel, "unsubscribing a signal channel failed");
            }
            *subscribed = false;
        }
        self.remove_if_unwatched(channel, &state);
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

/// One watch of a channel on a cluster's shared subscriber. Dropping the
/// last watch of a channel unsubscribes it.
struct ClusterSubscription {
    receiver: mpsc::UnboundedReceiver<()>,
    channel: String,
    hub: Arc<Hub>,
}

impl fmt::Debug for ClusterSubscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterSubscription")
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl SignalSource for ClusterSubscription {
    async fn next(&mut self) -> Option<()> {
        self.receiver.recv().await
    }
}

impl Drop for ClusterSubscription {
    fn drop(&mut self) {
        self.receiver.close();
        if self.hub.unwatched(&self.channel)
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let hub = Arc::clone(&self.hub);
            let channel = std::mem::take(&mut self.channel);
            runtime.spawn(async move { hub.unsubscribe_if_unwatched(&channel).await });
        }
    }
}
