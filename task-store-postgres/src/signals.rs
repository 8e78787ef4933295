//! Signals between processes with LISTEN/NOTIFY.
//!
//! Every store of a schema notifies one channel, `<schema>.signal`, with
//! the signal's name as the payload (`SELECT pg_notify(…)`, one round trip
//! on a pooled connection). A store that watches opens one extra
//! connection on its first `watch`, issues `LISTEN` on it, and hands each
//! notification to the watchers of its name; so one connection serves every
//! watcher of the store, whatever they watch.
//!
//! When that connection is lost, a task reconnects it (with backoff, for as
//! long as the store lives) and then wakes every watcher once, since
//! notifications sent meanwhile were lost: a watcher then looks at durable
//! state, which is what a signal asks for. Watchers keep their receivers
//! across the outage; polling covers the gap, as the contract says.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::Pool;
use futures::StreamExt;
use task_store::{Result, SignalReceiver, SignalSource, ThreadSignals, validate_id};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_postgres::{AsyncMessage, Client, NoTls};

use crate::PostgresStoreOptions;
use crate::conn::on_connection;
use crate::error::{Failure, Fault};

/// The longest wait between two attempts to bring the listening
/// connection back.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(2);

/// A store's signals: notify through its pool, listen on a connection of
/// its own.
pub(crate) struct PgSignals {
    hub: Arc<Hub>,
}

struct Hub {
    config: tokio_postgres::Config,
    pool: Pool,
    /// The notification channel of the schema.
    channel: String,
    connect_timeout: Duration,
    response_timeout: Duration,
    /// One watch channel per signal name; a signal bumps its counter.
    watchers: Mutex<HashMap<String, watch::Sender<u64>>>,
    /// Set once the listening task runs; dropping it (with the hub) stops
    /// the task.
    listener: tokio::sync::Mutex<Option<oneshot::Sender<()>>>,
}

impl fmt::Debug for PgSignals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgSignals")
            .field("channel", &self.hub.channel)
            .finish_non_exhaustive()
    }
}

impl PgSignals {
    pub(crate) fn new(
        config: tokio_postgres::Config,
        pool: Pool,
        options: &PostgresStoreOptions,
    ) -> Self {
        Self {
            hub: Arc::new(Hub {
                config,
                pool,
                channel: format!("{}.signal", options.schema),
                connect_timeout: options.connect_timeout,
                response_timeout: options.response_timeout,
                watchers: Mutex::new(HashMap::new()),
                listener: tokio::sync::Mutex::new(None),
            }),
        }
    }
}

impl Hub {
    fn sender(&self, name: &str) -> watch::Sender<u64> {
        let mut watchers = self.watchers.lock().unwrap_or_else(PoisonError::into_inner);
        watchers
            .entry(name.to_owned())
            .or_insert_with(|| watch::channel(0).0)
            .clone()
    }

    /// Wakes the watchers of one signal name, if there are any.
    fn wake(&self, name: &str) {
        let watchers = self.watchers.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(sender) = watchers.get(name) {
            sender.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Wakes every watcher (after signals may have been lost).
    fn wake_all(&self) {
        let watchers = self.watchers.lock().unwrap_or_else(PoisonError::into_inner);
        for sender in watchers.values() {
            sender.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Opens a connection, starts forwarding its notifications and issues
    /// `LISTEN`; returns once the server has confirmed it.
    async fn listen(&self) -> std::result::Result<Listening, Fault> {
        let (client, mut connection) =
            tokio::time::timeout(self.connect_timeout, self.config.connect(NoTls))
                .await
                .map_err(|_| Fault::Elapsed(self.connect_timeout))??;
        let (forward, notifications) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            // Drives the connection; ends when it closes (the client was
            // dropped, or the server went away).
            let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(Ok(message)) = messages.next().await {
                if let AsyncMessage::Notification(notification) = message
                    && forward.send(notification.payload().to_owned()).is_err()
                {
                    return;
                }
            }
        });
        let listen = format!("LISTEN \"{}\"", self.channel);
        tokio::time::timeout(self.response_timeout, client.batch_execute(&listen))
            .await
            .map_err(|_| Fault::Elapsed(self.response_timeout))??;
        Ok(Listening {
            _client: client,
            notifications,
        })
    }

    /// Makes sure a listening task runs, starting it (and waiting until
    /// `LISTEN` is in place) on the first call.
    async fn ensure_listening(self: &Arc<Self>) -> Result<()> {
        let mut listener = self.listener.lock().await;
        if listener.is_some() {
            return Ok(());
        }
        let listening = self.listen().await.map_err(Failure::general)?;
        let (stop, stopped) = oneshot::channel();
        tokio::spawn(run_listener(Arc::downgrade(self), listening, stopped));
        *listener = Some(stop);
        Ok(())
    }
}

/// A listening connection: the client (kept so the connection stays open)
/// and the payloads of its notifications.
struct Listening {
    _client: Client,
    notifications: mpsc::UnboundedReceiver<String>,
}

/// Hands notifications to the watchers; when the connection is lost,
/// reconnects with backoff and wakes everyone. Ends when the hub is dropped.
async fn run_listener(
    hub: Weak<Hub>,
    mut listening: Listening,
    mut stopped: oneshot::Receiver<()>,
) {
    loop {
        loop {
            tokio::select! {
                _ = &mut stopped => return,
                payload = listening.notifications.recv() => {
                    let Some(payload) = payload else { break };
                    let Some(hub) = hub.upgrade() else { return };
                    hub.wake(&payload);
                }
            }
        }
        tracing::debug!("the LISTEN connection was lost; reconnecting");
        let mut delay = Duration::from_millis(50);
        loop {
            tokio::select! {
                _ = &mut stopped => return,
                () = tokio::time::sleep(delay) => {}
            }
            let Some(strong) = hub.upgrade() else { return };
            match strong.listen().await {
                Ok(back) => {
                    listening = back;
                    strong.wake_all();
                    break;
                }
                Err(fault) => {
                    tracing::debug!(error = %Failure::general(fault), "reconnecting for LISTEN failed");
                    delay = (delay * 2).min(MAX_RECONNECT_DELAY);
                }
            }
        }
    }
}

#[async_trait]
impl ThreadSignals for PgSignals {
    async fn signal(&self, channel: &str) -> Result<()> {
        validate_id("signal channel", channel)?;
        let hub = &self.hub;
        on_connection!(hub.pool, hub.response_timeout, |client| {
            let statement = client
                .prepare_cached("SELECT pg_notify($1::text, $2::text)")
                .await?;
            client
                .execute(&statement, &[&hub.channel, &channel])
                .await?;
            Ok(())
        })
        .map_err(Failure::general)
    }

    async fn watch(&self, channel: &str) -> Result<SignalReceiver> {
        validate_id("signal channel", channel)?;
        // Subscribed before LISTEN is sure to be in place, so that no
        // signal sent after this call returns can be missed.
        let mut receiver = self.hub.sender(channel).subscribe();
        receiver.mark_unchanged();
        self.hub.ensure_listening().await?;
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
