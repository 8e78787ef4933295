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
use crate::keys::{KeySpace, validate_prefix};
use crate::reply::{WriteReply, corrupt_reason, int, items, opt_string, status, unexpected};
use crate::scripts;
use crate::signals::RedisSignals;
use crate::url::StoreUrl;

/// How often `save` re-runs its script when a concurrent `save` moved the
/// thread to another kind or parent between its attempts.
const MAX_SAVE_ATTEMPTS: usize = 8;

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
        let StoreUrl {
            url,
            target,
            prefix,
            retention,
        } = StoreUrl::parse(url)?;
        if let Some(prefix) = prefix {
            options.prefix = prefix;
        }
        if let Some(retention) = retention {
            options.retention = Some(retention);
        }
        validate_prefix(&options.prefix)?;
        #[cfg(feature = "tls")]
        {
            // rustls needs one process-wide crypto provider; another part of
            // the program may have installed one already, which is fine.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }

        let conn = Connection::open(&url, &target, &options).await?;
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
                    client: conn.client.clone(),
                    conn: conn.manager.clone(),
                    prefix: options.prefix.clone(),
                },
                conn,
                keys: KeySpace::new(options.prefix.clone()),
                target,
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

    /// The key prefix of this store.
    pub fn prefix(&self) -> &str {
        self.inner.keys.prefix()
    }

    /// The options this store was opened with (the prefix as in effect).
    pub fn options(&self) -> &RedisStoreOptions {
        &self.inner.options
    }

    /// The invocation of the save script, assuming the stored thread (if
    /// any) has kind `old.0` and parent `old.1`; and how many of its
    /// messages were left out as repeats within the write.
    fn save_invocation(
        &self,
        thread: &Thread,
        old: (&str, Option<&str>),
    ) -> Result<(Invocation, u64)> {
        let keys = &self.inner.keys;
        let thread_keys = keys.thread(&thread.id);
        let mut invocation = Invocation::new(&scripts::SAVE)
            .key(thread_keys.head)
            .key(thread_keys.log)
            .key(thread_keys.mids);
        for key in keys.shared() {
            invocation = invocation.key(key);
        }
        for key in keys.indexes_of(&thread.kind, thread.parent_id.as_deref()) {
            invocation = invocation.key(key);
        }
        let (old_kind, old_parent) = old;
        if !old_kind.is_empty() {
            invocation = invocation.key(keys.idx_kind(old_kind));
            if let Some(old_parent) = old_parent {
                invocation = invocation
                    .key(keys.idx_parent(old_parent))
                    .key(keys.idx_parent_kind(old_parent, old_kind));
            }
        }
        let (messages, repeats) = encode_messages(&thread.id, &thread.messages)?;
        let mut invocation = invocation
            .arg(self.inner.retention_ms.to_string())
            .arg(thread.id.as_str())
            .arg(thread.kind.as_str())
            .arg(thread.parent_id.clone().unwrap_or_default())
            .arg(to_json(&thread.id, &thread.metadata)?)
            .arg(to_json(&thread.id, &thread.state)?)
            .arg(if thread.terminal { "1" } else { "0" })
            .arg(old_kind)
            .arg(old_parent.unwrap_or_default())
            .arg((messages.len() / 2).to_string());
        invocation.args.extend(messages);
        Ok((invocation, repeats))
    }
}

#[async_trait]
impl ThreadReader for RedisStore {
    async fn load(&self, id: &str) -> Result<Option<ThreadHead>> {
        validate_id("thread id", id)?;
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(self.inner.keys.head(id)).arg(&HEAD_FIELDS[..]);
        let values: Vec<Option<Vec<u8>>> = self.inner.conn.query(&cmd, Some(id)).await?;
        parse_head(id, values)
    }

    async fn load_messages(&self, id: &str, query: MessageQuery) -> Result<MessagePage> {
        validate_id("thread id", id)?;
        let limit = effective_limit(query.limit);
        let keys = self.inner.keys.thread(id);
        let invocation = Invocation::new(&scripts::READ_LOG)
            .key(keys.head)
            .key(keys.log)
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

    /// The save script, re-run when a concurrent write moved the thread to
    /// another kind or parent than the one assumed.
    async fn save(&self, thread: Thread) -> Result<Committed> {
        validate_thread(&thread)?;
        let mut old_kind = thread.kind.clone();
        let mut old_parent = thread.parent_id.clone();
        for _ in 0..MAX_SAVE_ATTEMPTS {
            let (invocation, repeats) =
                self.save_invocation(&thread, (&old_kind, old_parent.as_deref()))?;
            let reply = self
                .inner
                .conn
                .invoke(&invocation, Some(&thread.id))
                .await?;
            match WriteReply::parse(&thread.id, reply)? {
                WriteReply::Moved { kind, parent } => {
                    old_kind = kind;
                    old_parent = parent;
                }
                reply => {
                    return reply.into_result(&thread.id, VersionPrecondition::Any).map(
                        |mut committed| {
                            committed.skipped += repeats;
                            committed
                        },
                    );
                }
            }
        }
        Err(ThreadStoreError::backend(format!(
            "thread '{}' kept moving between kinds or parents during save; \
             gave up after {MAX_SAVE_ATTEMPTS} attempts",
            thread.id
        )))
    }

    /// Redis pub/sub on `<prefix>:signal:<channel>`: a `PUBLISH` to signal,
    /// a dedicated subscriber connection per watch.
    fn signals(&self) -> Option<&dyn ThreadSignals> {
        Some(&self.inner.signals)
    }

    async fn delete(&self, id: &str) -> Result<()> {
        validate_id("thread id", id)?;
        let keys = self.inner.keys.thread(id);
        let invocation = Invocation::new(&scripts::DELETE)
            .key(keys.head)
            .key(keys.log)
            .key(keys.mids)
            .key(self.inner.keys.open_by_kind())
            .key(self.inner.keys.open_by_parent())
            .arg(id);
        let reply = self.inner.conn.invoke(&invocation, Some(id)).await?;
        let mut replies = items(id, reply)?.into_iter();
        match status(id, replies.next())?.as_str() {
            "missing" => Ok(()),
            "deleted" => {
                let kind = opt_string(id, replies.next())?;
                let parent = opt_string(id, replies.next())?;
                let ids = [id.to_owned()];
                let index_keys = &self.inner.keys;
                self.prune(&index_keys.idx_all(), None, None, &ids).await?;
                if let Some(kind) = &kind {
                    self.prune(&index_keys.idx_kind(kind), Some(kind), None, &ids)
                        .await?;
                }
                if let Some(parent) = &parent {
                    self.prune(&index_keys.idx_parent(parent), None, Some(parent), &ids)
                        .await?;
                    if let Some(kind) = &kind {
                        self.prune(
                            &index_keys.idx_parent_kind(parent, kind),
                            Some(kind),
                            Some(parent),
                            &ids,
                        )
                        .await?;
                    }
                }
                Ok(())
            }
            other => Err(unexpected(id, other)),
        }
    }
}
