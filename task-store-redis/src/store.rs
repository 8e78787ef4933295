//! [`RedisStore`]: the storage contract on Redis. This module holds the
//! store itself and the single-thread operations; the batches, listing,
//! retention and signals have modules of their own.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use redis::Value;
use task_store::{
    AppendRequest, ChangeSet, Committed, MessagePage, MessageQuery, Result, Thread, ThreadHead,
    ThreadPage, ThreadQuery, ThreadReader, ThreadSignals, ThreadStoreError, ThreadWriter,
    VersionPrecondition, effective_limit, validate_id, validate_query, validate_thread,
};

use crate::RedisStoreOptions;
use crate::codec::{HEAD_FIELDS, decode_message, encode_messages, parse_head, to_json};
use crate::conn::{Connection, Invocation};
use crate::error::missing_result;
use crate::keys::{KeySpace, MAX_SHARDS, validate_prefix};
use crate::reply::{WriteReply, corrupt_reason, int, items, status, unexpected};
use crate::scripts;
use crate::signals::RedisSignals;
use crate::url::StoreUrl;

/// The key layout this crate reads and writes, recorded in `P:layout`.
const LAYOUT: u32 = 2;

/// The shards of a new store when neither the options nor the URL say.
const SINGLE_SHARDS: usize = 1;
const CLUSTER_SHARDS: usize = 16;

/// The thread storage contract on Redis or Valkey. See the [crate docs](crate)
/// for the key layout, the scripts and production notes.
///
/// Cheap to clone: clones share one multiplexed connection, which reconnects
/// by itself after the server went away.
#[derive(Clone)]
pub struct RedisStore {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) conn: Connection,
    signals: RedisSignals,
    pub(crate) keys: KeySpace,
    /// The URL without its password, for messages.
    target: String,
    options: RedisStoreOptions,
    /// The retention in milliseconds, 0 for none.
    pub(crate) retention_ms: u64,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("target", &self.inner.target)
            .field("prefix", &self.inner.keys.prefix())
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects with the default [`RedisStoreOptions`]. See
    /// [`connect_with`](Self::connect_with).
    ///
    /// # Errors
    ///
    /// As [`connect_with`](Self::connect_with).
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, RedisStoreOptions::default()).await
    }

    /// Connects to the server at `url` and loads the scripts.
    ///
    /// The URL is `redis://[user][:password@]host[:port][/db][?params]`, or
    /// `rediss://…` for TLS (feature `tls`), or `redis+unix:///path`. The
    /// user and password are those of an ACL user (or just a password for
    /// `requirepass`). Parameters (see the [crate docs](crate#connecting)):
    /// `prefix=P` sets the key prefix and `retention=D` the retention
    /// (`7d`, `12h`, `90s`, `250ms`; a bare number is seconds), both
    /// overriding `options`; `protocol` goes to `redis-rs` (and `db`,
    /// `user`, `pass` for a unix socket). Any other parameter is refused.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a URL or prefix that cannot be used (an unknown
    /// parameter is named); `Unsupported` for `rediss://` without the `tls`
    /// feature (the message names the feature to enable); `Authentication` when the
    /// server refuses the credentials (or the ACL user may not load scripts);
    /// `Unavailable`/`Timeout` when the server cannot be reached.
    pub async fn connect_with(url: &str, mut options: RedisStoreOptions) -> Result<Self> {
        let parsed = StoreUrl::parse(url)?;
        if let Some(prefix) = &parsed.prefix {
            options.prefix = prefix.clone();
        }
        if let Some(retention) = parsed.retention {
            options.retention = Some(retention);
        }
        if let Some(shards) = parsed.shards {
            options.shards = Some(shards);
        }
        if let Some(wait) = parsed.wait {
            options.wait_for_replicas = wait;
        }
        if let Some(timeout) = parsed.wait_timeout {
            options.wait_timeout = timeout;
        }
        validate_prefix(&options.prefix)?;
        if let Some(shards) = options.shards
            && !(1..=MAX_SHARDS).contains(&shards)
        {
            return Err(ThreadStoreError::invalid_input(format!(
                "a Redis store has 1 to {MAX_SHARDS} shards, not {shards}"
            )));
        }
        #[cfg(feature = "tls")]
        {
            // rustls needs one process-wide crypto provider; another part of
            // the program may have installed one already, which is fine.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }

        let conn = Connection::open(&parsed, &options).await?;
        let shards = layout(&conn, &options, &parsed.target).await?;
        let keys = KeySpace::new(options.prefix.clone(), shards);
        let retention_ms = options
            .retention
            // At least 1 ms; at most 2^52 ms, which Lua's numbers hold exactly.
            .map(|r| {
                u64::try_from(r.as_millis())
                    .unwrap_or(u64::MAX)
                    .clamp(1, 1 << 52)
            })
            .unwrap_or(0);
        let store = Self {
            inner: Arc::new(Inner {
                signals: RedisSignals {
                    link: conn.link.clone(),
                    subscriber: conn.subscriber.clone(),
                    keys: keys.clone(),
                    hub: Arc::default(),
                },
                conn,
                keys,
                target: parsed.target,
                options,
                retention_ms,
            }),
        };
        if let (Some(_), Some(every)) = (
            store.inner.options.retention,
            store.inner.options.sweep_interval,
        ) {
            store.spawn_sweeper(every);
        }
        Ok(store)
    }

    /// How many shards this store spreads its threads over (recorded in
    /// the store when it was first opened).
    pub fn shards(&self) -> usize {
        self.inner.keys.shards()
    }

    /// Whether this store is on a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.inner.conn.is_cluster()
    }

    /// The key prefix of this store.
    pub fn prefix(&self) -> &str {
        self.inner.keys.prefix()
    }

    /// The options this store was opened with (the prefix as in effect).
    pub fn options(&self) -> &RedisStoreOptions {
        &self.inner.options
    }

    /// The invocation of the save script, and how many of the thread's
    /// messages were left out as repeats within the write.
    fn save_invocation(&self, thread: &Thread) -> Result<(Invocation, u64)> {
        let keys = &self.inner.keys;
        let mut invocation = Invocation::new(&scripts::SAVE);
        invocation.keys.extend(keys.indexes(keys.shard(&thread.id)));
        invocation.keys.push(keys.thread(&thread.id));
        let (messages, repeats) = encode_messages(&thread.id, &thread.messages)?;
        let mut invocation = invocation
            .arg(self.inner.retention_ms.to_string())
            .arg(thread.id.as_str())
            .arg(thread.kind.as_str())
            .arg(thread.parent_id.clone().unwrap_or_default())
            .arg(to_json(&thread.id, &thread.metadata)?)
            .arg(to_json(&thread.id, &thread.state)?)
            .arg(if thread.terminal { "1" } else { "0" })
            .arg((messages.len() / 2).to_string());
        invocation.args.extend(messages);
        Ok((invocation, repeats))
    }
}

/// The layout of the store under the options' prefix: checks the recorded
/// layout (recording layout 2 and the shard count for a new store) and
/// returns the shard count.
async fn layout(conn: &Connection, options: &RedisStoreOptions, target: &str) -> Result<usize> {
    let keys = KeySpace::new(options.prefix.clone(), 1);
    let layout_key = keys.layout();
    let get = || {
        let mut cmd = redis::cmd("GET");
        cmd.arg(&layout_key);
        cmd
    };
    let mut recorded: Option<String> = conn.query(&get(), None).await?;
    if recorded.is_none() {
        for marker in keys.layout_one_markers() {
            let mut exists = redis::cmd("EXISTS");
            exists.arg(&marker);
            let found: i64 = conn.query(&exists, None).await?;
            if found > 0 {
                return Err(ThreadStoreError::Unsupported {
                    reason: format!(
                        "the Redis store under the prefix {prefix:?} at {target} was written by \
                         an earlier version of task-store-redis (key layout 1, found {marker}), \
                         which this version cannot read: let its tasks finish with the earlier \
                         version, then delete its keys (redis-cli --scan --pattern \
                         '{prefix}:*' | xargs redis-cli unlink), or open this version under \
                         another prefix",
                        prefix = options.prefix,
                    ),
                });
            }
        }
        let shards = options.shards.unwrap_or(if conn.is_cluster() {
            CLUSTER_SHARDS
        } else {
            SINGLE_SHARDS
        });
        let mut set = redis::cmd("SET");
        set.arg(&layout_key)
            .arg(format!("layout={LAYOUT} shards={shards}"))
            .arg("NX");
        let _: Option<String> = conn.query(&set, None).await?;
        // Another process may have recorded it first: its record counts.
        recorded = conn.query(&get(), None).await?;
    }
    let recorded = recorded.unwrap_or_default();
    let parsed = recorded.split_once(' ').and_then(|(layout, shards)| {
        let layout = layout.strip_prefix("layout=")?.parse::<u32>().ok()?;
        let shards = shards.strip_prefix("shards=")?.parse::<usize>().ok()?;
        Some((layout, shards))
    });
    let Some((layout, shards)) = parsed.filter(|(_, shards)| (1..=MAX_SHARDS).contains(shards))
    else {
        return Err(ThreadStoreError::backend(format!(
            "the layout record {layout_key} at {target} holds {recorded:?}, which this version \
             of task-store-redis cannot read"
        )));
    };
    if layout != LAYOUT {
        return Err(ThreadStoreError::Unsupported {
            reason: format!(
                "the Redis store under the prefix {:?} at {target} has key layout {layout}; this \
                 version of task-store-redis reads layout {LAYOUT} only",
                options.prefix
            ),
        });
    }
    if let Some(wanted) = options.shards
        && wanted != shards
    {
        return Err(ThreadStoreError::invalid_input(format!(
            "the Redis store under the prefix {:?} at {target} has {shards} shard{}, recorded \
             when it was created; it was opened asking for {wanted}. Leave `shards` out to take \
             the recorded count (a store's shard count cannot change)",
            options.prefix,
            if shards == 1 { "" } else { "s" },
        )));
    }
    Ok(shards)
}

#[async_trait]
impl ThreadReader for RedisStore {
    async fn load(&self, id: &str) -> Result<Option<ThreadHead>> {
        validate_id("thread id", id)?;
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(self.inner.keys.thread(id)).arg(&HEAD_FIELDS[..]);
        let values: Vec<Option<Vec<u8>>> = self.inner.conn.query(&cmd, Some(id)).await?;
        if values.iter().any(Option::is_some) {
            return parse_head(id, values);
        }
        // No head: the thread is absent, or its key is a hash that lost its
        // head (which a write would call corrupt). The log's script tells
        // them apart in one atomic look; a thread it finds whole was
        // created after the read above, which this load comes before.
        let invocation = Invocation::new(&scripts::READ_LOG)
            .key(self.inner.keys.thread(id))
            .arg("0")
            .arg("0");
        let reply = self.inner.conn.invoke(&invocation, Some(id)).await?;
        let mut replies = items(id, reply)?.into_iter();
        match status(id, replies.next())?.as_str() {
            "ok" | "notfound" => Ok(None),
            "corrupt" => Err(corrupt_reason(id, replies.next())),
            other => Err(unexpected(id, other)),
        }
    }

    async fn load_messages(&self, id: &str, query: MessageQuery) -> Result<MessagePage> {
        validate_id("thread id", id)?;
        let limit = effective_limit(query.limit);
        let invocation = Invocation::new(&scripts::READ_LOG)
            .key(self.inner.keys.thread(id))
            .arg(query.after.to_string())
            .arg(limit.to_string());
        let reply = self.inner.conn.invoke(&invocation, Some(id)).await?;
        let mut replies = items(id, reply)?.into_iter();
        match status(id, replies.next())?.as_str() {
            "ok" => {}
            "notfound" => return Err(ThreadStoreError::NotFound { id: id.to_owned() }),
            "corrupt" => return Err(corrupt_reason(id, replies.next())),
            other => return Err(unexpected(id, other)),
        }
        let last_seq = int(id, replies.next())?;
        let mut messages = Vec::with_capacity(limit);
        let mut seq = query.after;
        for item in replies {
            seq += 1;
            let Value::BulkString(bytes) = item else {
                return Err(ThreadStoreError::corrupt(
                    id,
                    format!("message {seq} is missing from the log"),
                ));
            };
            messages.push(decode_message(id, seq, &bytes)?);
        }
        let next = (seq < last_seq && !messages.is_empty()).then_some(seq);
        Ok(MessagePage { messages, next })
    }

    async fn list_threads(&self, query: ThreadQuery) -> Result<ThreadPage> {
        validate_query(&query)?;
        self.list(query).await
    }
}

#[async_trait]
impl ThreadWriter for RedisStore {
    /// A [`create_batch`](ThreadWriter::create_batch) of one.
    async fn create(&self, thread: Thread) -> Result<Committed> {
        self.create_many(std::slice::from_ref(&thread))
            .await
            .pop()
            .unwrap_or_else(|| Err(missing_result()))
    }

    /// One round trip per 8 runs of the batch create script, each creating
    /// up to 128 threads (see the crate docs). When a run as a whole fails
    /// (a dropped connection, a timeout), its items get that error, and the
    /// items of later round trips are not sent and get it too.
    async fn create_batch(&self, threads: Vec<Thread>) -> Vec<Result<Committed>> {
        self.create_many(&threads).await
    }

    /// An [`append_batch`](ThreadWriter::append_batch) of one.
    async fn append(
        &self,
        id: &str,
        changes: ChangeSet,
        precondition: VersionPrecondition,
    ) -> Result<Committed> {
        let request = AppendRequest {
            id: id.to_owned(),
            changes,
            precondition,
        };
        self.append_many(std::slice::from_ref(&request))
            .await
            .pop()
            .unwrap_or_else(|| Err(missing_result()))
    }

    /// One round trip per 8 runs of the batch append script, each applying
    /// up to 128 appends (see the crate docs). All the items of one thread
    /// go into the run of its first item, in their order. When a run as a
    /// whole fails (a dropped connection, a timeout), its items get that
    /// error, and the items of later round trips are not sent and get it
    /// too.
    async fn append_batch(&self, requests: Vec<AppendRequest>) -> Vec<Result<Committed>> {
        self.append_many(&requests).await
    }

    /// The save script: the thread and its index entries in one script.
    async fn save(&self, thread: Thread) -> Result<Committed> {
        validate_thread(&thread)?;
        let (invocation, repeats) = self.save_invocation(&thread)?;
        let reply = self.inner.conn.write(&invocation).await?;
        WriteReply::parse(&thread.id, reply)?
            .into_result(&thread.id, VersionPrecondition::Any)
            .map(|mut committed| {
                committed.skipped += repeats;
                committed
            })
    }

    /// Redis pub/sub on `<prefix>:signal:<channel>`: a `PUBLISH` to signal,
    /// a dedicated subscriber connection per watch; on a cluster, sharded
    /// pub/sub on one shared subscriber connection.
    fn signals(&self) -> Option<&dyn ThreadSignals> {
        Some(&self.inner.signals)
    }

    async fn delete(&self, id: &str) -> Result<()> {
        validate_id("thread id", id)?;
        let keys = &self.inner.keys;
        let mut invocation = Invocation::new(&scripts::DELETE).arg(id);
        invocation.keys.extend(keys.indexes(keys.shard(id)));
        invocation.keys.push(keys.thread(id));
        match self.inner.conn.write(&invocation).await? {
            Value::BulkString(status) if status == b"deleted" || status == b"missing" => Ok(()),
            Value::SimpleString(status) if status == "deleted" || status == "missing" => Ok(()),
            other => Err(unexpected(id, &format!("{other:?}"))),
        }
    }
}
