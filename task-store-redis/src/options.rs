//! How a [`RedisStore`](crate::RedisStore) connects and what it keeps.

use std::time::Duration;

/// The prefix used when neither the options nor the URL name one.
pub const DEFAULT_PREFIX: &str = "bgtask";

/// Options of a [`RedisStore`](crate::RedisStore): key prefix, timeouts,
/// reconnection, retention, shards and replica acknowledgement.
///
/// The defaults suit a Redis on the same network: a 1 s connect timeout, a
/// 500 ms response timeout, two reconnection retries at most 500 ms apart, and
/// no retention (finished threads are kept until deleted).
///
/// ```
/// use std::time::Duration;
/// use task_store_redis::RedisStoreOptions;
///
/// let options = RedisStoreOptions::default()
///     .with_prefix("myapp-tasks")
///     .with_response_timeout(Duration::from_millis(250))
///     .with_retention(Some(Duration::from_secs(24 * 3600)));
/// assert_eq!(options.prefix, "myapp-tasks");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisStoreOptions {
    /// The prefix of every key (default [`DEFAULT_PREFIX`]). A `?prefix=P`
    /// parameter in the URL takes precedence. It must not be empty nor hold
    /// braces, glob characters (`*?[]\`), `%`, whitespace or control
    /// characters.
    pub prefix: String,
    /// How long one connection attempt may take (default 1 s).
    pub connect_timeout: Duration,
    /// How long a command may wait for its answer before failing with the
    /// retryable [`Timeout`](task_store::ThreadStoreError::Timeout) (default
    /// 500 ms). Writes carrying many messages take longer; raise it if yours
    /// do.
    pub response_timeout: Duration,
    /// How many times a broken connection is retried before a call fails
    /// (default 2). Each call made later starts a new round of retries, so
    /// the store recovers by itself when the server comes back.
    pub reconnect_retries: usize,
    /// The longest wait between two reconnection attempts (default 500 ms).
    pub reconnect_max_delay: Duration,
    /// How long a thread marked finished ([`ChangeSet::terminal`]) is kept
    /// after its last write; `None` (the default) keeps it until it is
    /// deleted.
    ///
    /// [`ChangeSet::terminal`]: task_store::ChangeSet::terminal
    pub retention: Option<Duration>,
    /// How often a store with a retention sweeps the index entries of
    /// expired threads in the background (default every 60 s; `None` never,
    /// leaving it to [`RedisStore::sweep_expired`](crate::RedisStore::sweep_expired)
    /// and to listings, which drop such entries as they pass them).
    pub sweep_interval: Option<Duration>,
    /// How many shards a new store spreads its threads and indexes over
    /// (`?shards=N`, 1 to 1024). `None` (the default) means 1 on a single
    /// server and 16 on a Redis Cluster. The count is recorded in the store
    /// when it is first opened; a store opened later with another explicit
    /// count is refused, and without one it takes the recorded count. See
    /// the [crate docs](crate#key-layout).
    pub shards: Option<usize>,
    /// How many replicas must acknowledge each write (`?wait=N`) before it
    /// is reported done: every write's pipeline ends with `WAIT N timeout`,
    /// and a write acknowledged by fewer replicas within
    /// [`wait_timeout`](Self::wait_timeout) fails with the retryable
    /// [`Unavailable`](task_store::ThreadStoreError::Unavailable) (it was
    /// applied on the primary and may survive, or be lost in a failover).
    /// 0 (the default) does not wait: a failover may then lose the writes
    /// of the last moments. See the [crate docs](crate#in-production).
    pub wait_for_replicas: usize,
    /// How long a write waits for its replicas' acknowledgement
    /// (`?wait_timeout=D`, default 200 ms). Keep it below the response
    /// timeout.
    pub wait_timeout: Duration,
}

impl Default for RedisStoreOptions {
    fn default() -> Self {
        Self {
            prefix: DEFAULT_PREFIX.to_owned(),
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_millis(500),
            reconnect_retries: 2,
            reconnect_max_delay: Duration::from_millis(500),
            retention: None,
            sweep_interval: Some(Duration::from_secs(60)),
            shards: None,
            wait_for_replicas: 0,
            wait_timeout: Duration::from_millis(200),
        }
    }
}

impl RedisStoreOptions {
    /// Sets the key prefix.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets the connect timeout.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets the response timeout.
    pub fn with_response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// Sets how many reconnection retries a call makes.
    pub fn with_reconnect_retries(mut self, retries: usize) -> Self {
        self.reconnect_retries = retries;
        self
    }

    /// Sets the longest wait between reconnection attempts.
    pub fn with_reconnect_max_delay(mut self, delay: Duration) -> Self {
        self.reconnect_max_delay = delay;
        self
    }

    /// Sets how often expired index entries are swept in the background.
    pub fn with_sweep_interval(mut self, every: Option<Duration>) -> Self {
        self.sweep_interval = every;
        self
    }

    /// Sets how many shards a new store has (`None`: 1 on a single server,
    /// 16 on a cluster).
    pub fn with_shards(mut self, shards: Option<usize>) -> Self {
        self.shards = shards;
        self
    }

    /// Makes every write wait until `replicas` replicas acknowledged it,
    /// for at most `timeout`.
    pub fn with_wait_for_replicas(mut self, replicas: usize, timeout: Duration) -> Self {
        self.wait_for_replicas = replicas;
        self.wait_timeout = timeout;
        self
    }

    /// Sets the retention of finished threads.
    pub fn with_retention(mut self, retention: Option<Duration>) -> Self {
        self.retention = retention;
        self
    }
}
