//! [`RedisStore`]: the storage contract on Redis.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, ErrorKind, RedisError, Script, ServerErrorKind, Value};
use serde::{Deserialize, Serialize};
use task_store::{
    AppendRequest, ChangeSet, Committed, Message, MessagePage, MessageQuery, Metadata, NewMessage,
    Result, Thread, ThreadHead, ThreadPage, ThreadQuery, ThreadReader, ThreadStoreError,
    ThreadWriter, VersionPrecondition, effective_limit, validate_id, validate_messages,
    validate_query, validate_thread,
};

use crate::RedisStoreOptions;
use crate::error::RedisFailure;
use crate::keys::{KeySpace, ThreadKeys, validate_prefix};
use crate::scripts;

/// How often `save` re-runs its script when a concurrent `save` moved the
/// thread to another kind or parent between its attempts.
const MAX_SAVE_ATTEMPTS: usize = 8;

/// The ids to prune from one index, with the index's kind and parent.
type IndexSweep = (Option<String>, Option<String>, Vec<String>);

/// How many expired threads one sweep handles at a time.
const SWEEP_BATCH: usize = 500;

/// At most this many threads go into one run of the batch create script.
/// Measured with `examples/throughput.rs tasks` (task-shaped threads, 100
/// owners): the server's time per thread is about the same for runs of 64,
/// 128 and 256 threads (31-33 µs here, against 46-48 µs for one `create`
/// each), since what remains is per thread (its `HSET`s, its index members);
/// but a run blocks the server for all of its time (about 4 ms for 128
/// threads on that machine), so runs are kept short.
const CREATE_CHUNK: usize = 128;

/// At most this many runs of the batch create script go into one pipeline
/// (one round trip), so that one round trip stays well within the response
/// timeout whatever the size of the batch.
const CREATE_CHUNKS_PER_ROUND_TRIP: usize = 8;

/// At most this many appends (of distinct threads; the further appends of a
/// thread join its first one's run) go into one run of the batch append
/// script. See [`CREATE_CHUNK`] for why runs are kept short.
const APPEND_CHUNK: usize = 128;

/// At most this many runs of the batch append script go into one pipeline.
const APPEND_CHUNKS_PER_ROUND_TRIP: usize = 8;

/// The thread storage contract on Redis or Valkey. See the [crate docs](crate)
/// for the key layout, the scripts and production notes.
///
/// Cheap to clone: clones share one multiplexed connection, which reconnects
/// by itself after the server went away.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    conn: ConnectionManager,
    signals: RedisSignals,
    keys: KeySpace,
    /// The URL without its password, for messages.
    target: String,
    options: RedisStoreOptions,
    /// The retention in milliseconds, 0 for none.
    retention_ms: u64,
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

/// A message as stored in the log.
#[derive(Serialize)]
struct StoredMessageRef<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    body: &'a serde_json::Value,
}

#[derive(Deserialize)]
struct StoredMessage {
    #[serde(default)]
    id: Option<String>,
    body: serde_json::Value,
}

/// What the write script answered.
enum WriteReply {
    Ok(Committed),
    NotFound,
    Exists,
    Conflict(u64),
    Moved {
        kind: String,
        parent: Option<String>,
    },
    Corrupt(String),
    BadIndex(String),
}

/// One run of the write script: its keys and arguments.
struct Invocation {
    script: &'static Script,
    keys: Vec<String>,
    args: Vec<Vec<u8>>,
}

impl Invocation {
    fn new(script: &'static Script) -> Self {
        Self {
            script,
            keys: Vec::new(),
            args: Vec::new(),
        }
    }

    fn key(mut self, key: impl Into<String>) -> Self {
        self.keys.push(key.into());
        self
    }

    fn arg(mut self, arg: impl Into<Vec<u8>>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// The `EVALSHA` command, for pipelines.
    fn evalsha(&self) -> Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.script.get_hash())
            .arg(self.keys.len())
            .arg(&self.keys)
            .arg(&self.args);
        cmd
    }
}

/// The fields of a head, in the order they are read.
const HEAD_FIELDS: [&str; 7] = ["kind", "parent", "meta", "state", "v", "seq", "term"];

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
    /// The URL is `redis://[user][:password@]host[:port][/db][?prefix=P]`, or
    /// `rediss://…` for TLS (feature `tls`), or `redis+unix:///path`. The
    /// user and password are those of an ACL user (or just a password for
    /// `requirepass`). A `prefix` query parameter sets the key prefix,
    /// overriding `options.prefix`; the other parameters go to `redis-rs`.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a URL or prefix that cannot be used; `Unsupported`
    /// for `rediss://` without the `tls` feature; `Authentication` when the
    /// server refuses the credentials (or the ACL user may not load scripts);
    /// `Unavailable`/`Timeout` when the server cannot be reached.
    pub async fn connect_with(url: &str, mut options: RedisStoreOptions) -> Result<Self> {
        let (url, target, prefix) = split_url(url)?;
        if let Some(prefix) = prefix {
            options.prefix = prefix;
        }
        validate_prefix(&options.prefix)?;
        #[cfg(feature = "tls")]
        {
            // rustls needs one process-wide crypto provider; another part of
            // the program may have installed one already, which is fine.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }

        let client = redis::Client::open(url.as_str()).map_err(|err| match err.kind() {
            ErrorKind::InvalidClientConfig => {
                ThreadStoreError::invalid_input(format!("cannot use the Redis URL {target}: {err}"))
            }
            _ => RedisFailure::general(err).into(),
        })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.connect_timeout))
            .set_response_timeout(Some(options.response_timeout))
            .set_number_of_retries(options.reconnect_retries)
            .set_min_delay(options.reconnect_max_delay.min(Duration::from_millis(50)))
            .set_max_delay(options.reconnect_max_delay);
        let conn = ConnectionManager::new_with_config(client.clone(), config)
            .await
            .map_err(|err| with_target(RedisFailure::general(err).into(), &target))?;

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
                    client,
                    conn: conn.clone(),
                    prefix: options.prefix.clone(),
                },
                conn,
                keys: KeySpace::new(options.prefix.clone()),
                target,
                options,
                retention_ms,
            }),
        };
        store.load_scripts().await?;
        if let (Some(_), Some(every)) = (
            store.inner.options.retention,
            store.inner.options.sweep_interval,
        ) {
            store.spawn_sweeper(every);
        }
        Ok(store)
    }

    /// Removes the index entries of finished threads whose retention has
    /// run out, at most `max` threads' worth, and returns how many threads
    /// were swept. Listing never shows such threads anyway (it checks every
    /// entry against its head); sweeping frees the entries of indexes nobody
    /// lists. With a retention and a
    /// [`sweep_interval`](RedisStoreOptions::sweep_interval), the store runs
    /// this by itself in the background.
    ///
    /// # Errors
    ///
    /// `Unavailable`/`Timeout` when the server cannot answer; `Backend` when
    /// the expiry set is not a sorted set.
    pub async fn sweep_expired(&self, max: usize) -> Result<usize> {
        let expiring = self.inner.keys.expiring();
        let due = Invocation::new(&scripts::DUE)
            .key(expiring.clone())
            .arg(max.max(1).to_string());
        let reply = self.invoke(&due, None).await?;
        let mut items = reply_items(&expiring, reply)?.into_iter();
        let due_at = int(&expiring, items.next())?;
        let entries = items
            .map(|item| opt_string(&expiring, Some(item)).map(Option::unwrap_or_default))
            .collect::<Result<Vec<String>>>()?;
        if entries.is_empty() {
            return Ok(0);
        }

        // Group the ids by the index entries they may have left behind.
        let keys = &self.inner.keys;
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
        self.invoke(&forget, None).await?;
        Ok(entries.len())
    }

    /// Sweeps expired index entries every `every`, for as long as a clone of
    /// this store lives.
    fn spawn_sweeper(&self, every: Duration) {
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

    /// The key prefix of this store.
    pub fn prefix(&self) -> &str {
        self.inner.keys.prefix()
    }

    /// The options this store was opened with (the prefix as in effect).
    pub fn options(&self) -> &RedisStoreOptions {
        &self.inner.options
    }

    /// Loads every script into the server's script cache, so that pipelined
    /// `EVALSHA`s find them. Run on connect; run again by
    /// [`append_batch`](ThreadWriter::append_batch) when the server forgot
    /// them (after a restart or `SCRIPT FLUSH`).
    async fn load_scripts(&self) -> Result<()> {
        let mut pipe = redis::pipe();
        for (_, source) in scripts::all() {
            pipe.cmd("SCRIPT").arg("LOAD").arg(source);
        }
        let mut conn = self.inner.conn.clone();
        pipe.query_async::<Vec<String>>(&mut conn)
            .await
            .map_err(|err| RedisFailure::general(err).into())
            .map(|_| ())
    }

    /// Runs a script; `thread` names the thread its keys belong to, if they
    /// belong to one (a wrong-type key is then that thread's corruption).
    async fn invoke(&self, invocation: &Invocation, thread: Option<&str>) -> Result<Value> {
        let mut script = invocation.script.prepare_invoke();
        for key in &invocation.keys {
            script.key(key);
        }
        for arg in &invocation.args {
            script.arg(arg.as_slice());
        }
        let mut conn = self.inner.conn.clone();
        script
            .invoke_async::<Value>(&mut conn)
            .await
            .map_err(|error| RedisFailure { error, thread }.into())
    }

    /// The invocation of the write script for an append.
    fn append_invocation(
        &self,
        id: &str,
        changes: &ChangeSet,
        precondition: VersionPrecondition,
    ) -> Result<Invocation> {
        let keys = self.inner.keys.thread(id);
        let expected = match precondition {
            VersionPrecondition::Exact(v) => v.to_string(),
            VersionPrecondition::Any => String::new(),
        };
        let state = changes
            .state
            .as_ref()
            .map(|s| to_json(id, s))
            .transpose()?
            .unwrap_or_default();
        let invocation = Invocation::new(&scripts::WRITE)
            .key(keys.head)
            .key(keys.log)
            .key(keys.mids)
            .key(self.inner.keys.expiring())
            .arg("append")
            .arg(expected)
            .arg(state)
            .arg(terminal_arg(changes.terminal))
            .arg(self.inner.retention_ms.to_string())
            .arg(id)
            .arg("")
            .arg("")
            .arg("")
            .arg("")
            .arg("");
        self.with_messages(invocation, id, &changes.messages)
    }

    /// The invocation of the write script for a create or a save, assuming
    /// the stored thread (if any) has kind `old.0` and parent `old.1`.
    fn thread_invocation(
        &self,
        mode: &str,
        thread: &Thread,
        old: Option<(&str, Option<&str>)>,
    ) -> Result<Invocation> {
        let keys = &self.inner.keys;
        let thread_keys = keys.thread(&thread.id);
        let mut invocation = Invocation::new(&scripts::WRITE)
            .key(thread_keys.head)
            .key(thread_keys.log)
            .key(thread_keys.mids)
            .key(keys.expiring());
        for key in keys.indexes_of(&thread.kind, thread.parent_id.as_deref()) {
            invocation = invocation.key(key);
        }
        if let Some((old_kind, old_parent)) = old {
            invocation = invocation.key(keys.idx_kind(old_kind));
            if let Some(old_parent) = old_parent {
                invocation = invocation
                    .key(keys.idx_parent(old_parent))
                    .key(keys.idx_parent_kind(old_parent, old_kind));
            }
        }
        let invocation = invocation
            .arg(mode)
            .arg("")
            .arg(to_json(&thread.id, &thread.state)?)
            .arg(terminal_arg(Some(thread.terminal)))
            .arg(self.inner.retention_ms.to_string())
            .arg(thread.id.as_str())
            .arg(thread.kind.as_str())
            .arg(thread.parent_id.clone().unwrap_or_default())
            .arg(to_json(&thread.id, &thread.metadata)?)
            .arg(old.map(|(kind, _)| kind).unwrap_or_default())
            .arg(old.and_then(|(_, parent)| parent).unwrap_or_default());
        self.with_messages(invocation, &thread.id, &thread.messages)
    }

    fn with_messages(
        &self,
        mut invocation: Invocation,
        id: &str,
        messages: &[NewMessage],
    ) -> Result<Invocation> {
        invocation = invocation.arg(messages.len().to_string());
        for message in messages {
            let stored = StoredMessageRef {
                id: message.id.as_deref(),
                body: &message.body,
            };
            invocation = invocation
                .arg(message.id.clone().unwrap_or_default())
                .arg(to_json(id, &stored)?);
        }
        Ok(invocation)
    }

    /// Runs `save` or `create`, re-running when a concurrent write moved the
    /// thread to another kind or parent than the one assumed.
    async fn write_thread(&self, mode: &str, thread: &Thread) -> Result<Committed> {
        let mut old_kind = thread.kind.clone();
        let mut old_parent = thread.parent_id.clone();
        for _ in 0..MAX_SAVE_ATTEMPTS {
            let old = (mode == "save").then_some((old_kind.as_str(), old_parent.as_deref()));
            let invocation = self.thread_invocation(mode, thread, old)?;
            let reply = self.invoke(&invocation, Some(&thread.id)).await?;
            match parse_write_reply(&thread.id, reply)? {
                WriteReply::Ok(committed) => return Ok(committed),
                WriteReply::Exists => {
                    return Err(ThreadStoreError::AlreadyExists {
                        id: thread.id.clone(),
                    });
                }
                WriteReply::Moved { kind, parent } => {
                    old_kind = kind;
                    old_parent = parent;
                }
                other => return Err(write_error(&thread.id, None, other)),
            }
        }
        Err(ThreadStoreError::Backend {
            message: format!(
                "thread '{}' kept moving between kinds or parents during save; \
                 gave up after {MAX_SAVE_ATTEMPTS} attempts",
                thread.id
            ),
            source: None,
        })
    }

    /// Drops the entries of `index` (of this kind and parent) that point at
    /// no live thread of that kind and parent.
    async fn prune(
        &self,
        index: &str,
        kind: Option<&str>,
        parent: Option<&str>,
        ids: &[String],
    ) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut invocation = Invocation::new(&scripts::PRUNE)
            .key(index)
            .arg(kind.unwrap_or_default())
            .arg(parent.unwrap_or_default());
        for id in ids {
            invocation = invocation.key(self.inner.keys.head(id)).arg(id.as_str());
        }
        let removed = self.invoke(&invocation, None).await?;
        if let Value::Int(n) = removed
            && n > 0
        {
            tracing::debug!(index, removed = n, "dropped index entries of gone threads");
        }
        Ok(())
    }

    /// Runs a pipeline of write-script invocations; one result per
    /// invocation, in order.
    async fn run_pipeline(&self, invocations: &[&Invocation]) -> Vec<RedisResultValue> {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for invocation in invocations {
            pipe.add_command(invocation.evalsha());
        }
        let mut conn = self.inner.conn.clone();
        match pipe.query_async::<Vec<Value>>(&mut conn).await {
            Ok(values) if values.len() == invocations.len() => values
                .into_iter()
                .map(|value| match value {
                    Value::ServerError(err) => Err(RedisError::from(err)),
                    value => Ok(value),
                })
                .collect(),
            Ok(values) => {
                let err = RedisError::from((
                    ErrorKind::UnexpectedReturnType,
                    "pipeline answered with the wrong number of replies",
                    format!("{} for {} commands", values.len(), invocations.len()),
                ));
                invocations.iter().map(|_| Err(err.clone())).collect()
            }
            Err(err) => invocations.iter().map(|_| Err(err.clone())).collect(),
        }
    }
}

type RedisResultValue = std::result::Result<Value, RedisError>;

impl RedisStore {
    /// Runs script invocations as one pipeline, in order, one result each;
    /// `threads[i]` names the thread invocation `i` writes, if it writes one.
    /// Scripts the server had forgotten (after a restart or `SCRIPT FLUSH`)
    /// are loaded again and resent once, in their order: `NOSCRIPT` means the
    /// script did not run, so resending is safe.
    async fn run_scripts(
        &self,
        invocations: &[&Invocation],
        threads: &[Option<&str>],
    ) -> Vec<Result<Value>> {
        let mut results: Vec<Option<Result<Value>>> = invocations.iter().map(|_| None).collect();
        let mut pending: Vec<usize> = (0..invocations.len()).collect();
        for round in 0..2 {
            if pending.is_empty() {
                break;
            }
            let batch: Vec<&Invocation> = pending.iter().map(|&p| invocations[p]).collect();
            let replies = self.run_pipeline(&batch).await;
            let mut forgotten = Vec::new();
            for (&p, reply) in pending.iter().zip(replies) {
                results[p] = Some(match reply {
                    Err(err)
                        if round == 0
                            && err.kind() == ErrorKind::Server(ServerErrorKind::NoScript) =>
                    {
                        forgotten.push(p);
                        continue;
                    }
                    Err(error) => Err(RedisFailure {
                        error,
                        thread: threads.get(p).copied().flatten(),
                    }
                    .into()),
                    Ok(value) => Ok(value),
                });
            }
            if !forgotten.is_empty()
                && let Err(err) = self.load_scripts().await
            {
                for &p in &forgotten {
                    results[p] = Some(Err(clone_error(&err)));
                }
                forgotten.clear();
            }
            pending = forgotten;
        }
        results
            .into_iter()
            .map(|result| {
                result.unwrap_or_else(|| {
                    Err(ThreadStoreError::Backend {
                        message: "the server kept forgetting the write scripts".to_owned(),
                        source: None,
                    })
                })
            })
            .collect()
    }

    /// Sends the runs of a batch script, `per_round_trip` runs to a pipeline,
    /// and fills `results` (indexed by each item's slot). `settle` turns one
    /// run's reply into its items' results; when it cannot (a reply of the
    /// wrong shape), or the round trip failed, the run's items get that
    /// error and the later runs are not sent (their items get a retryable
    /// error saying so), as a transport failure leaves the rest unknown.
    async fn send_runs<X>(
        &self,
        runs: &[(Invocation, Vec<(usize, X)>)],
        per_round_trip: usize,
        results: &mut [Option<Result<Committed>>],
        mut settle: impl FnMut(&[(usize, X)], Value, &mut [Option<Result<Committed>>]) -> Result<()>,
    ) {
        let mut failed: Option<ThreadStoreError> = None;
        for group in runs.chunks(per_round_trip) {
            if let Some(err) = &failed {
                for (slot, _) in group.iter().flat_map(|(_, items)| items) {
                    results[*slot] = Some(Err(not_sent(err)));
                }
                continue;
            }
            let invocations: Vec<&Invocation> = group.iter().map(|(inv, _)| inv).collect();
            let replies = self.run_scripts(&invocations, &[]).await;
            for ((_, items), reply) in group.iter().zip(replies) {
                if let Err(err) = reply.and_then(|value| settle(items, value, results)) {
                    for (slot, _) in items {
                        results[*slot] = Some(Err(clone_error(&err)));
                    }
                    failed = Some(err);
                }
            }
        }
    }
}

/// One run of the batch create script being laid out: the index keys of
/// its threads (each kind's once, each pair of parent and kind's once, with
/// their positions in `KEYS`), the threads' own keys, and their arguments.
/// See [`scripts::CREATE_BATCH`].
struct CreateChunk<'a> {
    keys: &'a KeySpace,
    /// `KEYS[2..]`: the index of all threads, then the others.
    index_keys: Vec<String>,
    kind_positions: HashMap<&'a str, usize>,
    parent_positions: HashMap<(&'a str, &'a str), usize>,
    thread_keys: Vec<String>,
    args: Vec<Vec<u8>>,
    /// Per thread: its slot in the batch and what its creation commits.
    items: Vec<(usize, Committed)>,
    ids: HashSet<&'a str>,
}

impl<'a> CreateChunk<'a> {
    fn new(keys: &'a KeySpace) -> Self {
        Self {
            keys,
            index_keys: vec![keys.idx_all()],
            kind_positions: HashMap::new(),
            parent_positions: HashMap::new(),
            thread_keys: Vec::new(),
            args: Vec::new(),
            items: Vec::new(),
            ids: HashSet::new(),
        }
    }

    fn len(&self) -> usize {
        self.items.len()
    }

    fn holds(&self, id: &str) -> bool {
        self.ids.contains(id)
    }

    /// The position in `KEYS` of the next index key (1 is the expiry set).
    fn next_position(&self) -> usize {
        self.index_keys.len() + 2
    }

    /// Lays out one validated thread, not yet in this run. Fails, changing
    /// nothing, when its data cannot be encoded.
    fn push(&mut self, slot: usize, thread: &'a Thread) -> Result<()> {
        let id = thread.id.as_str();
        let state = to_json(id, &thread.state)?;
        let meta = to_json(id, &thread.metadata)?;
        // The log of a fresh thread: in order, repeated ids skipped.
        let (messages, skipped) = encode_messages(id, &thread.messages)?;
        let appended = (messages.len() / 2) as u64;

        let kind = thread.kind.as_str();
        let kind_position = match self.kind_positions.get(kind) {
            Some(&position) => position,
            None => {
                let position = self.next_position();
                self.index_keys.push(self.keys.idx_kind(kind));
                self.kind_positions.insert(kind, position);
                position
            }
        };
        let parent = thread.parent_id.as_deref();
        let parent_position = match parent {
            None => 0,
            Some(parent) => match self.parent_positions.get(&(parent, kind)) {
                Some(&position) => position,
                None => {
                    let position = self.next_position();
                    self.index_keys.push(self.keys.idx_parent(parent));
                    self.index_keys
                        .push(self.keys.idx_parent_kind(parent, kind));
                    self.parent_positions.insert((parent, kind), position);
                    position
                }
            },
        };

        let args = &mut self.args;
        args.push(id.as_bytes().to_vec());
        args.push(if thread.terminal {
            b"1".to_vec()
        } else {
            b"0".to_vec()
        });
        args.push(kind_position.to_string().into_bytes());
        args.push(parent_position.to_string().into_bytes());
        args.push(state.into_bytes());
        args.push(kind.as_bytes().to_vec());
        args.push(meta.into_bytes());
        args.push(parent.unwrap_or_default().as_bytes().to_vec());
        args.push(appended.to_string().into_bytes());
        args.extend(messages);
        let ThreadKeys { head, log, mids } = self.keys.thread(id);
        self.thread_keys.extend([head, log, mids]);
        self.items.push((
            slot,
            Committed {
                version: 1,
                last_seq: appended,
                appended,
                skipped,
            },
        ));
        self.ids.insert(id);
        Ok(())
    }

    /// The script's invocation, and per thread its slot and what it commits.
    fn finish(self, retention_ms: u64) -> (Invocation, Vec<(usize, Committed)>) {
        let mut invocation = Invocation::new(&scripts::CREATE_BATCH);
        invocation.args.reserve(3 + self.args.len());
        invocation.args.push(retention_ms.to_string().into_bytes());
        invocation
            .args
            .push(self.index_keys.len().to_string().into_bytes());
        invocation
            .args
            .push(self.items.len().to_string().into_bytes());
        invocation.args.extend(self.args);
        invocation
            .keys
            .reserve(1 + self.index_keys.len() + self.thread_keys.len());
        invocation.keys.push(self.keys.expiring());
        invocation.keys.extend(self.index_keys);
        invocation.keys.extend(self.thread_keys);
        (invocation, self.items)
    }
}

/// One run of the batch append script being laid out: the keys and
/// arguments of its items. See [`scripts::APPEND_BATCH`].
struct AppendChunk<'a> {
    keys: &'a KeySpace,
    thread_keys: Vec<String>,
    args: Vec<Vec<u8>>,
    /// Per item: its slot in the batch, and how many of its messages were
    /// skipped here as repeats of an id earlier in the same item.
    items: Vec<(usize, u64)>,
}

impl<'a> AppendChunk<'a> {
    fn new(keys: &'a KeySpace) -> Self {
        Self {
            keys,
            thread_keys: Vec::new(),
            args: Vec::new(),
            items: Vec::new(),
        }
    }

    fn len(&self) -> usize {
        self.items.len()
    }

    /// Lays out one validated append. Fails, changing nothing, when its
    /// data cannot be encoded.
    fn push(&mut self, slot: usize, request: &AppendRequest) -> Result<()> {
        let id = request.id.as_str();
        let changes = &request.changes;
        let state = changes
            .state
            .as_ref()
            .map(|s| to_json(id, s))
            .transpose()?
            .unwrap_or_default();
        // A repeated id within the item is skipped, as the write script's
        // HSETNX would skip it.
        let (messages, repeats) = encode_messages(id, &changes.messages)?;
        let expected = match request.precondition {
            VersionPrecondition::Exact(v) => v.to_string(),
            VersionPrecondition::Any => String::new(),
        };
        let args = &mut self.args;
        args.push(id.as_bytes().to_vec());
        args.push(expected.into_bytes());
        args.push(state.into_bytes());
        args.push(terminal_arg(changes.terminal).as_bytes().to_vec());
        args.push((messages.len() / 2).to_string().into_bytes());
        args.extend(messages);
        let ThreadKeys { head, log, mids } = self.keys.thread(id);
        self.thread_keys.extend([head, log, mids]);
        self.items.push((slot, repeats));
        Ok(())
    }

    /// The script's invocation, and per item its slot and repeats.
    fn finish(self, retention_ms: u64) -> (Invocation, Vec<(usize, u64)>) {
        let mut invocation = Invocation::new(&scripts::APPEND_BATCH);
        invocation.args.reserve(2 + self.args.len());
        invocation.args.push(retention_ms.to_string().into_bytes());
        invocation
            .args
            .push(self.items.len().to_string().into_bytes());
        invocation.args.extend(self.args);
        invocation.keys.reserve(1 + self.thread_keys.len());
        invocation.keys.push(self.keys.expiring());
        invocation.keys.extend(self.thread_keys);
        (invocation, self.items)
    }
}

/// Splits the batch append script's answer for a run of `n` items into
/// their replies.
fn batch_replies(reply: Value, n: usize) -> Result<Vec<Value>> {
    let odd = |what: String| ThreadStoreError::Backend {
        message: format!("unexpected answer from the batch append script: {what}"),
        source: None,
    };
    match reply {
        Value::Array(items) if items.len() == n => Ok(items),
        Value::Array(items) => Err(odd(format!("{} replies for {n} appends", items.len()))),
        other => Err(odd(format!("{other:?}"))),
    }
}

/// What the batch create script answered for one thread.
enum CreateStatus {
    Created,
    Taken,
    /// This key (an index key of the thread, or the expiry set) is not a
    /// sorted set; nothing was written for the thread.
    BadKey(String),
}

/// Decodes the batch create script's answer for a run of `n` threads.
fn create_statuses(reply: Value, n: usize) -> Result<Vec<CreateStatus>> {
    let odd = |what: String| ThreadStoreError::Backend {
        message: format!("unexpected answer from the batch create script: {what}"),
        source: None,
    };
    let Value::Array(items) = reply else {
        return Err(odd(format!("{reply:?}")));
    };
    if items.len() != n {
        return Err(odd(format!("{} statuses for {n} threads", items.len())));
    }
    items
        .into_iter()
        .map(|item| match item {
            Value::Int(1) => Ok(CreateStatus::Created),
            Value::Int(0) => Ok(CreateStatus::Taken),
            Value::BulkString(key) => Ok(CreateStatus::BadKey(
                String::from_utf8_lossy(&key).into_owned(),
            )),
            other => Err(odd(format!("{other:?}"))),
        })
        .collect()
}

#[async_trait]
impl ThreadReader for RedisStore {
    async fn load(&self, id: &str) -> Result<Option<ThreadHead>> {
        validate_id("thread id", id)?;
        let mut conn = self.inner.conn.clone();
        let values: Vec<Option<Vec<u8>>> = redis::cmd("HMGET")
            .arg(self.inner.keys.head(id))
            .arg(&HEAD_FIELDS[..])
            .query_async(&mut conn)
            .await
            .map_err(RedisFailure::on(id))?;
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
        let reply = self.invoke(&invocation, Some(id)).await?;
        let mut items = reply_items(id, reply)?.into_iter();
        match status(id, items.next())?.as_str() {
            "ok" => {}
            "notfound" => return Err(ThreadStoreError::NotFound { id: id.to_owned() }),
            "corrupt" => return Err(corrupt_reason(id, items.next())),
            other => return Err(unexpected(id, other)),
        }
        let last_seq = int(id, items.next())?;
        let mut messages = Vec::with_capacity(limit);
        let mut seq = query.after;
        for item in items {
            seq += 1;
            let Value::BulkString(bytes) = item else {
                return Err(ThreadStoreError::corrupt(
                    id,
                    format!("message {seq} is missing from the log"),
                ));
            };
            let stored: StoredMessage = serde_json::from_slice(&bytes).map_err(|err| {
                ThreadStoreError::corrupt(id, format!("message {seq} is not valid JSON: {err}"))
            })?;
            messages.push(Message {
                seq,
                id: stored.id,
                body: stored.body,
            });
        }
        let next = (seq < last_seq && !messages.is_empty()).then_some(seq);
        Ok(MessagePage { messages, next })
    }

    async fn list_threads(&self, query: ThreadQuery) -> Result<ThreadPage> {
        validate_query(&query)?;
        if query.open_only {
            return Err(ThreadStoreError::Unsupported {
                reason: "listing open threads only is not implemented on Redis yet".to_owned(),
            });
        }
        let keys = &self.inner.keys;
        let limit = effective_limit(query.limit);
        let (index, want_kind, want_parent) = match (&query.parent_id, &query.kind) {
            (Some(parent), Some(kind)) => (
                keys.idx_parent_kind(parent, kind),
                Some(kind.as_str()),
                Some(parent.as_str()),
            ),
            (Some(parent), None) => (keys.idx_parent(parent), None, Some(parent.as_str())),
            (None, Some(kind)) => (keys.idx_kind(kind), Some(kind.as_str()), None),
            (None, None) => (keys.idx_all(), None, None),
        };

        let mut live: Vec<String> = Vec::with_capacity(limit + 1);
        let mut cursor = query.after.clone();
        let mut conn = self.inner.conn.clone();
        while live.len() <= limit {
            let want = limit + 1 - live.len();
            let min = match &cursor {
                Some(after) => {
                    let mut min = b"(".to_vec();
                    min.extend_from_slice(after.as_bytes());
                    min
                }
                None => b"-".to_vec(),
            };
            let members: Vec<Vec<u8>> = redis::cmd("ZRANGEBYLEX")
                .arg(&index)
                .arg(min)
                .arg("+")
                .arg("LIMIT")
                .arg(0)
                .arg(want)
                .query_async(&mut conn)
                .await
                .map_err(RedisFailure::general)?;
            let exhausted = members.len() < want;
            let ids = members
                .into_iter()
                .map(String::from_utf8)
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|err| ThreadStoreError::Backend {
                    message: format!("the index {index} holds an id that is not UTF-8"),
                    source: Some(std::sync::Arc::new(err)),
                })?;
            let Some(last) = ids.last().cloned() else {
                break;
            };

            // Which of these still point at a live thread of this kind and parent?
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for id in &ids {
                pipe.cmd("HMGET")
                    .arg(keys.head(id))
                    .arg("kind")
                    .arg("parent");
            }
            let heads: Vec<Value> = pipe
                .query_async(&mut conn)
                .await
                .map_err(RedisFailure::general)?;
            let mut stale = Vec::new();
            for (id, head) in ids.into_iter().zip(heads) {
                if is_listed(&head, want_kind, want_parent) {
                    live.push(id);
                } else {
                    stale.push(id);
                }
            }
            self.prune(&index, want_kind, want_parent, &stale).await?;
            cursor = Some(last);
            if exhausted {
                break;
            }
        }
        let next = if live.len() > limit {
            live.truncate(limit);
            live.last().cloned()
        } else {
            None
        };
        Ok(ThreadPage { ids: live, next })
    }
}

/// Whether an index entry whose head answered `head` (to `HMGET kind parent`)
/// still belongs in an index of this kind and parent. A head that cannot be
/// read (a key of the wrong type) stays listed: the thread is there, and
/// loading it reports the corruption.
fn is_listed(head: &Value, want_kind: Option<&str>, want_parent: Option<&str>) -> bool {
    let Value::Array(fields) = head else {
        return true;
    };
    let field = |i: usize| match fields.get(i) {
        Some(Value::BulkString(bytes)) => Some(bytes.as_slice()),
        _ => None,
    };
    let (kind, parent) = (field(0), field(1));
    if kind.is_none() && parent.is_none() {
        return false;
    }
    want_kind.is_none_or(|want| kind == Some(want.as_bytes()))
        && want_parent.is_none_or(|want| parent == Some(want.as_bytes()))
}

#[async_trait]
impl ThreadWriter for RedisStore {
    async fn create(&self, thread: Thread) -> Result<Committed> {
        validate_thread(&thread)?;
        self.write_thread("create", &thread).await
    }

    /// One round trip per 8 runs of the batch create script, each creating
    /// up to 128 threads (see the crate docs). Items are validated and laid
    /// out here; a run never holds the same id twice (a repeated id starts a
    /// new run, which then finds it taken). When a run as a whole fails (a
    /// dropped connection, a timeout), its items get that error, and the
    /// items of later round trips are not sent and get it too.
    async fn create_batch(&self, threads: Vec<Thread>) -> Vec<Result<Committed>> {
        let mut results: Vec<Option<Result<Committed>>> = threads.iter().map(|_| None).collect();
        let mut chunks = Vec::new();
        let mut chunk = CreateChunk::new(&self.inner.keys);
        for (slot, thread) in threads.iter().enumerate() {
            if let Err(err) = validate_thread(thread) {
                results[slot] = Some(Err(err));
                continue;
            }
            if chunk.len() == CREATE_CHUNK || chunk.holds(&thread.id) {
                let full = std::mem::replace(&mut chunk, CreateChunk::new(&self.inner.keys));
                chunks.push(full.finish(self.inner.retention_ms));
            }
            if let Err(err) = chunk.push(slot, thread) {
                results[slot] = Some(Err(err));
            }
        }
        if chunk.len() > 0 {
            chunks.push(chunk.finish(self.inner.retention_ms));
        }

        self.send_runs(
            &chunks,
            CREATE_CHUNKS_PER_ROUND_TRIP,
            &mut results,
            |items, value, results| {
                let statuses = create_statuses(value, items.len())?;
                for ((slot, committed), status) in items.iter().zip(statuses) {
                    let id = &threads[*slot].id;
                    results[*slot] = Some(match status {
                        CreateStatus::Created => Ok(*committed),
                        CreateStatus::Taken => {
                            Err(ThreadStoreError::AlreadyExists { id: id.clone() })
                        }
                        CreateStatus::BadKey(key) => {
                            Err(write_error(id, None, WriteReply::BadIndex(key)))
                        }
                    });
                }
                Ok(())
            },
        )
        .await;
        results
            .into_iter()
            .map(|result| result.unwrap_or_else(|| Err(missing_result())))
            .collect()
    }

    async fn append(
        &self,
        id: &str,
        changes: ChangeSet,
        precondition: VersionPrecondition,
    ) -> Result<Committed> {
        validate_id("thread id", id)?;
        validate_messages(&changes.messages)?;
        let invocation = self.append_invocation(id, &changes, precondition)?;
        let reply = self.invoke(&invocation, Some(id)).await?;
        append_result(id, precondition, parse_write_reply(id, reply))
    }

    /// One round trip per 8 runs of the batch append script, each applying
    /// up to 128 appends (see the crate docs). Items are validated and laid
    /// out here; all the items of one thread go into the run of its first
    /// item, in their order, so they apply in order whatever happens to the
    /// other runs. When a run as a whole fails (a dropped connection, a
    /// timeout), its items get that error, and the items of later round
    /// trips are not sent and get it too.
    async fn append_batch(&self, requests: Vec<AppendRequest>) -> Vec<Result<Committed>> {
        let mut results: Vec<Option<Result<Committed>>> = requests.iter().map(|_| None).collect();
        let mut chunks: Vec<AppendChunk<'_>> = Vec::new();
        let mut chunk_of: HashMap<&str, usize> = HashMap::new();
        for (slot, request) in requests.iter().enumerate() {
            let id = request.id.as_str();
            if let Err(err) = validate_id("thread id", id)
                .and_then(|()| validate_messages(&request.changes.messages))
            {
                results[slot] = Some(Err(err));
                continue;
            }
            let target = match chunk_of.get(id) {
                Some(&target) => target,
                None => {
                    if chunks
                        .last()
                        .is_none_or(|chunk| chunk.len() >= APPEND_CHUNK)
                    {
                        chunks.push(AppendChunk::new(&self.inner.keys));
                    }
                    let target = chunks.len() - 1;
                    chunk_of.insert(id, target);
                    target
                }
            };
            if let Err(err) = chunks[target].push(slot, request) {
                results[slot] = Some(Err(err));
            }
        }
        let chunks: Vec<_> = chunks
            .into_iter()
            .filter(|chunk| chunk.len() > 0)
            .map(|chunk| chunk.finish(self.inner.retention_ms))
            .collect();

        self.send_runs(
            &chunks,
            APPEND_CHUNKS_PER_ROUND_TRIP,
            &mut results,
            |items, value, results| {
                let replies = batch_replies(value, items.len())?;
                for (&(slot, pre_skipped), reply) in items.iter().zip(replies) {
                    let request = &requests[slot];
                    let reply = parse_write_reply(&request.id, reply).map(|reply| match reply {
                        WriteReply::Ok(mut committed) => {
                            committed.skipped += pre_skipped;
                            WriteReply::Ok(committed)
                        }
                        other => other,
                    });
                    results[slot] = Some(append_result(&request.id, request.precondition, reply));
                }
                Ok(())
            },
        )
        .await;
        results
            .into_iter()
            .map(|result| result.unwrap_or_else(|| Err(missing_result())))
            .collect()
    }

    async fn save(&self, thread: Thread) -> Result<Committed> {
        validate_thread(&thread)?;
        self.write_thread("save", &thread).await
    }

    /// Redis pub/sub on `<prefix>:signal:<channel>`: a `PUBLISH` to signal,
    /// a dedicated subscriber connection per watch.
    fn signals(&self) -> Option<&dyn task_store::ThreadSignals> {
        Some(&self.inner.signals)
    }

    async fn delete(&self, id: &str) -> Result<()> {
        validate_id("thread id", id)?;
        let keys = self.inner.keys.thread(id);
        let invocation = Invocation::new(&scripts::DELETE)
            .key(keys.head)
            .key(keys.log)
            .key(keys.mids);
        let reply = self.invoke(&invocation, Some(id)).await?;
        let mut items = reply_items(id, reply)?.into_iter();
        match status(id, items.next())?.as_str() {
            "missing" => Ok(()),
            "deleted" => {
                let kind = opt_string(id, items.next())?;
                let parent = opt_string(id, items.next())?;
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

/// Splits a store URL into the URL for `redis-rs` (without `prefix`), a
/// printable form without the password, and the prefix it names.
fn split_url(raw: &str) -> Result<(String, String, Option<String>)> {
    let mut url = url::Url::parse(raw).map_err(|err| {
        ThreadStoreError::invalid_input(format!("cannot parse the Redis URL: {err}"))
    })?;
    let mut printable = url.clone();
    if printable.password().is_some() {
        // Cannot fail: a URL with a password has a host.
        let _ = printable.set_password(Some("***"));
    }
    let target = printable.to_string();
    match url.scheme() {
        "redis" | "redis+unix" | "unix" => {}
        "rediss" if cfg!(feature = "tls") => {}
        "rediss" => {
            return Err(ThreadStoreError::Unsupported {
                reason: format!(
                    "feature `tls` of task-store-redis is not enabled for {target}; \
                     enable it to connect with rediss://"
                ),
            });
        }
        other => {
            return Err(ThreadStoreError::invalid_input(format!(
                "the Redis URL {target} has the scheme {other:?}; \
                 expected redis://, rediss:// or redis+unix://"
            )));
        }
    }
    let mut prefix = None;
    let mut rest = Vec::new();
    for (key, value) in url.query_pairs() {
        if key == "prefix" {
            prefix = Some(value.into_owned());
        } else {
            rest.push((key.into_owned(), value.into_owned()));
        }
    }
    if rest.is_empty() {
        url.set_query(None);
    } else {
        url.query_pairs_mut().clear().extend_pairs(rest);
    }
    Ok((url.to_string(), target, prefix))
}

/// Adds the server's address to an error that happened while connecting.
fn with_target(err: ThreadStoreError, target: &str) -> ThreadStoreError {
    match err {
        ThreadStoreError::Unavailable { message, source } => ThreadStoreError::Unavailable {
            message: format!("cannot connect to {target}: {message}"),
            source,
        },
        ThreadStoreError::Timeout { message, source } => ThreadStoreError::Timeout {
            message: format!("cannot connect to {target}: {message}"),
            source,
        },
        ThreadStoreError::Authentication { message, source } => ThreadStoreError::Authentication {
            message: format!("{target} refused the credentials: {message}"),
            source,
        },
        other => other,
    }
}

fn terminal_arg(terminal: Option<bool>) -> &'static str {
    match terminal {
        None => "",
        Some(false) => "0",
        Some(true) => "1",
    }
}

fn to_json<T: Serialize + ?Sized>(id: &str, value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|err| {
        ThreadStoreError::invalid_input(format!(
            "the data of thread '{id}' cannot be encoded as JSON: {err}"
        ))
    })
}

fn append_result(
    id: &str,
    precondition: VersionPrecondition,
    reply: Result<WriteReply>,
) -> Result<Committed> {
    match reply? {
        WriteReply::Ok(committed) => Ok(committed),
        WriteReply::NotFound => Err(ThreadStoreError::NotFound { id: id.to_owned() }),
        other => {
            let expected = match precondition {
                VersionPrecondition::Exact(v) => Some(v),
                VersionPrecondition::Any => None,
            };
            Err(write_error(id, expected, other))
        }
    }
}

fn write_error(id: &str, expected: Option<u64>, reply: WriteReply) -> ThreadStoreError {
    match reply {
        WriteReply::Conflict(actual) => ThreadStoreError::VersionConflict {
            id: id.to_owned(),
            expected: expected.unwrap_or_default(),
            actual,
        },
        WriteReply::NotFound => ThreadStoreError::NotFound { id: id.to_owned() },
        WriteReply::Exists => ThreadStoreError::AlreadyExists { id: id.to_owned() },
        WriteReply::Corrupt(reason) => ThreadStoreError::corrupt(id, reason),
        WriteReply::BadIndex(key) => ThreadStoreError::Backend {
            message: format!("the index key {key} is not a sorted set; nothing was written"),
            source: None,
        },
        WriteReply::Moved { .. } | WriteReply::Ok(_) => {
            unexpected(id, "a reply that does not fit this write")
        }
    }
}

fn parse_write_reply(id: &str, reply: Value) -> Result<WriteReply> {
    let mut items = reply_items(id, reply)?.into_iter();
    Ok(match status(id, items.next())?.as_str() {
        "ok" => WriteReply::Ok(Committed {
            version: int(id, items.next())?,
            last_seq: int(id, items.next())?,
            appended: int(id, items.next())?,
            skipped: int(id, items.next())?,
        }),
        "notfound" => WriteReply::NotFound,
        "exists" => WriteReply::Exists,
        "conflict" => WriteReply::Conflict(int(id, items.next())?),
        "moved" => WriteReply::Moved {
            kind: opt_string(id, items.next())?.unwrap_or_default(),
            parent: opt_string(id, items.next())?,
        },
        "corrupt" => WriteReply::Corrupt(
            opt_string(id, items.next())?.unwrap_or_else(|| "unreadable record".to_owned()),
        ),
        "badindex" => WriteReply::BadIndex(opt_string(id, items.next())?.unwrap_or_default()),
        other => return Err(unexpected(id, other)),
    })
}

fn reply_items(id: &str, reply: Value) -> Result<Vec<Value>> {
    match reply {
        Value::Array(items) => Ok(items),
        other => Err(unexpected(id, &format!("{other:?}"))),
    }
}

fn status(id: &str, item: Option<Value>) -> Result<String> {
    opt_string(id, item)?.ok_or_else(|| unexpected(id, "an empty reply"))
}

/// A string of a script's reply; `None` for an empty string or nil.
fn opt_string(id: &str, item: Option<Value>) -> Result<Option<String>> {
    match item {
        Some(Value::BulkString(bytes)) if bytes.is_empty() => Ok(None),
        Some(Value::BulkString(bytes)) => String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| unexpected(id, "a reply that is not UTF-8")),
        Some(Value::SimpleString(s)) if s.is_empty() => Ok(None),
        Some(Value::SimpleString(s)) => Ok(Some(s)),
        None | Some(Value::Nil) => Ok(None),
        Some(other) => Err(unexpected(id, &format!("{other:?}"))),
    }
}

fn int(id: &str, item: Option<Value>) -> Result<u64> {
    match item {
        Some(Value::Int(n)) => u64::try_from(n).map_err(|_| unexpected(id, "a negative number")),
        other => Err(unexpected(id, &format!("{other:?} where a number was due"))),
    }
}

fn corrupt_reason(id: &str, item: Option<Value>) -> ThreadStoreError {
    let reason = opt_string(id, item)
        .ok()
        .flatten()
        .unwrap_or_else(|| "unreadable record".to_owned());
    ThreadStoreError::corrupt(id, reason)
}

fn unexpected(id: &str, what: &str) -> ThreadStoreError {
    ThreadStoreError::Backend {
        message: format!("unexpected answer from a script on thread '{id}': {what}"),
        source: None,
    }
}

/// The error of an item of a batch that was not sent because an earlier
/// part of the batch failed with `err`: of the same kind, so it is retryable
/// when `err` was.
fn not_sent(err: &ThreadStoreError) -> ThreadStoreError {
    let message = format!("not sent, because an earlier part of the batch failed: {err}");
    match err {
        ThreadStoreError::Unavailable { .. } => ThreadStoreError::unavailable(message),
        ThreadStoreError::Timeout { .. } => ThreadStoreError::Timeout {
            message,
            source: None,
        },
        ThreadStoreError::Authentication { .. } => ThreadStoreError::Authentication {
            message,
            source: None,
        },
        _ => ThreadStoreError::Backend {
            message,
            source: None,
        },
    }
}

/// The error of a batch item that got no result, which would be a bug.
fn missing_result() -> ThreadStoreError {
    ThreadStoreError::Backend {
        message: "a request of the batch got no result".to_owned(),
        source: None,
    }
}

/// A copy of an error for each request of a batch that it failed.
fn clone_error(err: &ThreadStoreError) -> ThreadStoreError {
    match err {
        ThreadStoreError::Unavailable { message, .. } => ThreadStoreError::unavailable(message),
        ThreadStoreError::Timeout { message, .. } => ThreadStoreError::Timeout {
            message: message.clone(),
            source: None,
        },
        ThreadStoreError::Authentication { message, .. } => ThreadStoreError::Authentication {
            message: message.clone(),
            source: None,
        },
        other => ThreadStoreError::Backend {
            message: other.to_string(),
            source: None,
        },
    }
}

/// Decodes a head from `HMGET` of [`HEAD_FIELDS`].
fn parse_head(id: &str, values: Vec<Option<Vec<u8>>>) -> Result<Option<ThreadHead>> {
    if values.iter().all(Option::is_none) {
        return Ok(None);
    }
    let mut fields = values.into_iter();
    let mut next = || fields.next().flatten();
    let (kind, parent, meta, state, version, seq, term) =
        (next(), next(), next(), next(), next(), next(), next());
    let text = |field: &str, bytes: Option<Vec<u8>>| -> Result<String> {
        let bytes = bytes.ok_or_else(|| {
            ThreadStoreError::corrupt(id, format!("the head has no field '{field}'"))
        })?;
        String::from_utf8(bytes).map_err(|_| {
            ThreadStoreError::corrupt(id, format!("the head field '{field}' is not UTF-8"))
        })
    };
    let number = |field: &str, bytes: Option<Vec<u8>>| -> Result<u64> {
        text(field, bytes)?.parse().map_err(|_| {
            ThreadStoreError::corrupt(id, format!("the head field '{field}' is not a number"))
        })
    };
    let kind = text("kind", kind)?;
    let parent_id = parent.map(|p| text("parent", Some(p))).transpose()?;
    let metadata: Metadata = serde_json::from_str(&text("meta", meta)?).map_err(|err| {
        ThreadStoreError::corrupt(id, format!("the metadata is not a JSON object: {err}"))
    })?;
    let state = serde_json::from_str(&text("state", state)?).map_err(|err| {
        ThreadStoreError::corrupt(id, format!("the state is not valid JSON: {err}"))
    })?;
    let version = number("v", version)?;
    let last_seq = number("seq", seq)?;
    let terminal = match text("term", term)?.as_str() {
        "0" => false,
        "1" => true,
        other => {
            return Err(ThreadStoreError::corrupt(
                id,
                format!("the finished mark is {other:?}, not 0 or 1"),
            ));
        }
    };
    Ok(Some(ThreadHead {
        id: id.to_owned(),
        kind,
        parent_id,
        metadata,
        state,
        version,
        last_seq,
        terminal,
    }))
}

/// The messages of one write as the batch scripts take them: id (empty for
/// none) and stored JSON, pair by pair, in order, with ids repeated within
/// the write left out; and how many were left out.
fn encode_messages(thread: &str, messages: &[NewMessage]) -> Result<(Vec<Vec<u8>>, u64)> {
    let mut seen = HashSet::new();
    let mut encoded = Vec::with_capacity(2 * messages.len());
    let mut repeats = 0u64;
    for message in messages {
        let mid = message.id.as_deref();
        if let Some(mid) = mid
            && !seen.insert(mid)
        {
            repeats += 1;
            continue;
        }
        let stored = StoredMessageRef {
            id: mid,
            body: &message.body,
        };
        encoded.push(mid.unwrap_or_default().as_bytes().to_vec());
        encoded.push(to_json(thread, &stored)?.into_bytes());
    }
    Ok((encoded, repeats))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_parameter_is_taken_out_of_the_url() {
        let (url, target, prefix) =
            split_url("redis://user:secret@127.0.0.1:6380/2?prefix=tenant-a&protocol=resp3")
                .expect("valid URL");
        assert_eq!(prefix.as_deref(), Some("tenant-a"));
        assert_eq!(url, "redis://user:secret@127.0.0.1:6380/2?protocol=resp3");
        assert!(!target.contains("secret"), "{target}");

        let (url, _, prefix) = split_url("redis://127.0.0.1/?prefix=p").expect("valid URL");
        assert_eq!(prefix.as_deref(), Some("p"));
        assert_eq!(url, "redis://127.0.0.1/");
    }

    #[test]
    fn other_schemes_are_refused() {
        let err = split_url("http://127.0.0.1").expect_err("not redis");
        assert!(
            matches!(err, ThreadStoreError::InvalidInput { .. }),
            "{err:?}"
        );
    }

    #[cfg(not(feature = "tls"))]
    #[test]
    fn rediss_without_the_tls_feature_fails_loudly() {
        let err = split_url("rediss://:pw@example.invalid:6380").expect_err("no TLS");
        assert!(
            err.to_string().contains("feature `tls`"),
            "the error names the feature: {err}"
        );
        assert!(!err.to_string().contains("pw@"), "no password in {err}");
    }

    #[test]
    fn a_head_with_garbage_is_corrupt() {
        let some = |s: &str| Some(s.as_bytes().to_vec());
        let good = vec![
            some("task"),
            None,
            some("{}"),
            some("{\"a\":1}"),
            some("3"),
            some("2"),
            some("1"),
        ];
        let head = parse_head("t", good.clone())
            .expect("decodes")
            .expect("present");
        assert_eq!((head.version, head.last_seq, head.terminal), (3, 2, true));
        assert_eq!(parse_head("t", vec![None; 7]).expect("absent"), None);

        let mut bad_state = good.clone();
        bad_state[3] = some("{not json");
        let mut no_version = good.clone();
        no_version[4] = None;
        let mut bad_meta = good;
        bad_meta[2] = some("[1]");
        for bad in [bad_state, no_version, bad_meta] {
            let err = parse_head("t", bad).expect_err("corrupt");
            assert!(
                matches!(&err, ThreadStoreError::Corrupt { id, .. } if id == "t"),
                "{err:?}"
            );
        }
    }
}

/// Wake-ups through Redis pub/sub (best effort, as the contract says: a
/// message sent while a subscriber reconnects is lost).
#[derive(Clone)]
struct RedisSignals {
    client: redis::Client,
    conn: ConnectionManager,
    prefix: String,
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
impl task_store::ThreadSignals for RedisSignals {
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

    async fn watch(&self, channel: &str) -> Result<task_store::SignalReceiver> {
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
        Ok(task_store::SignalReceiver::new(Box::new(Subscription(
            Box::pin(pubsub.into_on_message()),
        ))))
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
impl task_store::SignalSource for Subscription {
    async fn next(&mut self) -> Option<()> {
        futures_util::StreamExt::next(&mut self.0).await.map(|_| ())
    }
}
