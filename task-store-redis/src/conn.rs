//! The connection: connecting from a URL to one server or to a Redis
//! Cluster, running scripts (one, or many in pipelines, one per slot), waiting
//! for replicas when asked, and loading the scripts again when a server
//! forgot them.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::future::join_all;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, ServerErrorKind, Value};
use task_store::{Result, ThreadStoreError};

use crate::RedisStoreOptions;
use crate::error::{RedisFailure, with_target};
use crate::scripts::{self, Lua};
use crate::url::StoreUrl;

/// One multiplexed connection to one server, or a cluster connection that
/// routes each command to the master of its key's slot (following `MOVED`
/// and `ASK`, and finding the new topology after a failover by itself).
#[derive(Clone)]
pub(crate) enum Link {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(conn) => conn.req_packed_command(cmd),
            Self::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Self::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(conn) => conn.get_db(),
            Self::Cluster(conn) => conn.get_db(),
        }
    }
}

/// One run of a script: its keys and arguments.
pub(crate) struct Invocation {
    pub(crate) script: &'static Lua,
    pub(crate) keys: Vec<String>,
    pub(crate) args: Vec<Vec<u8>>,
}

impl Invocation {
    pub(crate) fn new(script: &'static Lua) -> Self {
        Self {
            script,
            keys: Vec::new(),
            args: Vec::new(),
        }
    }

    pub(crate) fn key(mut self, key: impl Into<String>) -> Self {
        self.keys.push(key.into());
        self
    }

    pub(crate) fn arg(mut self, arg: impl Into<Vec<u8>>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// The hash slot of the invocation's keys (all its keys share one).
    fn slot(&self) -> u16 {
        self.keys
            .first()
            .map_or(0, |key| crate::keys::key_slot(key.as_bytes()))
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

/// The store's connection: one multiplexed connection that reconnects by
/// itself (to one server, or to each node of a cluster), shared by every
/// clone of the store.
#[derive(Clone)]
pub(crate) struct Connection {
    pub(crate) link: Link,
    /// What signals need to subscribe: a client for one server, or the
    /// seed nodes of the cluster.
    pub(crate) subscriber: Subscriber,
    /// `WAIT` after each write: how many replicas, for how many ms.
    wait: Option<(usize, u64)>,
}

/// Whether a script's error says it did not run because its slot is
/// elsewhere: `MOVED` or `ASK`. (`TRYAGAIN`, keys split by a migration in
/// progress, is left to the caller as a retryable error: resending at once
/// would only bounce between the two nodes until the migration ends.)
fn is_redirect(err: &RedisError) -> bool {
    matches!(
        err.kind(),
        ErrorKind::Server(ServerErrorKind::Moved | ServerErrorKind::Ask)
    )
}

/// How a signal subscription connects.
#[derive(Clone)]
pub(crate) enum Subscriber {
    Single(redis::Client),
    Cluster(ClusterSeeds),
}

/// What a cluster client is built from: the seed nodes and the options.
#[derive(Clone)]
pub(crate) struct ClusterSeeds {
    seeds: Vec<String>,
    connect_timeout: Duration,
    response_timeout: Duration,
    retries: u32,
    max_wait_ms: u64,
}

impl ClusterSeeds {
    /// A builder of a client of the cluster.
    pub(crate) fn builder(&self) -> ClusterClientBuilder {
        ClusterClientBuilder::new(self.seeds.iter().map(String::as_str))
            .connection_timeout(self.connect_timeout)
            .response_timeout(self.response_timeout)
            .retries(self.retries)
            .min_retry_wait(self.max_wait_ms.min(50))
            .max_retry_wait(self.max_wait_ms)
            // A bound on a request with all its redirections and retries
            // (without it, a request bounced between the two nodes of a
            // slot being migrated can wait for ever).
            .overall_response_timeout(Some(
                self.response_timeout * (self.retries.min(8) + 1) + self.connect_timeout,
            ))
    }
}

type RedisResultValue = std::result::Result<Value, RedisError>;

impl Connection {
    /// Connects to the server or cluster of `url` and loads the scripts.
    pub(crate) async fn open(url: &StoreUrl, options: &RedisStoreOptions) -> Result<Self> {
        let target = &url.target;
        let invalid = |err: RedisError| match err.kind() {
            ErrorKind::InvalidClientConfig => {
                ThreadStoreError::invalid_input(format!("cannot use the Redis URL {target}: {err}"))
            }
            _ => RedisFailure::general(err).into(),
        };
        let (link, subscriber) = match &url.cluster {
            None => {
                let client = redis::Client::open(url.url.as_str()).map_err(invalid)?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(options.connect_timeout))
                    .set_response_timeout(Some(options.response_timeout))
                    .set_number_of_retries(options.reconnect_retries)
                    .set_min_delay(options.reconnect_max_delay.min(Duration::from_millis(50)))
                    .set_max_delay(options.reconnect_max_delay);
                let manager = ConnectionManager::new_with_config(client.clone(), config)
                    .await
                    .map_err(|err| with_target(RedisFailure::general(err).into(), target))?;
                (Link::Single(manager), Subscriber::Single(client))
            }
            Some(seeds) => {
                let seeds = ClusterSeeds {
                    seeds: seeds.clone(),
                    connect_timeout: options.connect_timeout,
                    response_timeout: options.response_timeout,
                    retries: u32::try_from(options.reconnect_retries).unwrap_or(u32::MAX),
                    max_wait_ms: u64::try_from(options.reconnect_max_delay.as_millis())
                        .unwrap_or(u64::MAX)
                        .max(1),
                };
                let client = seeds.builder().build().map_err(invalid)?;
                let conn = client
                    .get_async_connection()
                    .await
                    .map_err(|err| with_target(RedisFailure::general(err).into(), target))?;
                (Link::Cluster(conn), Subscriber::Cluster(seeds))
            }
        };
        let wait = (options.wait_for_replicas > 0).then(|| {
            (
                options.wait_for_replicas,
                u64::try_from(options.wait_timeout.as_millis())
                    .unwrap_or(u64::MAX)
                    .max(1),
            )
        });
        let conn = Self {
            link,
            subscriber,
            wait,
        };
        conn.load_scripts().await?;
        Ok(conn)
    }

    /// Whether this is a cluster connection.
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self.link, Link::Cluster(_))
    }

    /// Loads every script into the server's script cache (every master's,
    /// on a cluster), so that pipelined `EVALSHA`s find them. Run on
    /// connect, and again by [`run_scripts`](Self::run_scripts) when a
    /// server forgot them (after a restart, a failover or `SCRIPT FLUSH`).
    pub(crate) async fn load_scripts(&self) -> Result<()> {
        if self.is_cluster() {
            // One command each: `redis-rs` sends a lone `SCRIPT LOAD` to
            // every master, where a pipeline would go to one node only.
            let loads = scripts::all().map(|lua| {
                let mut conn = self.link.clone();
                async move {
                    redis::cmd("SCRIPT")
                        .arg("LOAD")
                        .arg(lua.source)
                        .query_async::<Value>(&mut conn)
                        .await
                }
            });
            for loaded in join_all(loads).await {
                loaded.map_err(|err| ThreadStoreError::from(RedisFailure::general(err)))?;
            }
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for lua in scripts::all() {
            pipe.cmd("SCRIPT").arg("LOAD").arg(lua.source);
        }
        let mut conn = self.link.clone();
        pipe.query_async::<Vec<String>>(&mut conn)
            .await
            .map_err(|err| RedisFailure::general(err).into())
            .map(|_| ())
    }

    /// Sends one command; `thread` names the thread its keys belong to, if
    /// they belong to one (a wrong-type key is then that thread's
    /// corruption).
    pub(crate) async fn query<T: redis::FromRedisValue>(
        &self,
        cmd: &Cmd,
        thread: Option<&str>,
    ) -> Result<T> {
        let mut conn = self.link.clone();
        cmd.query_async(&mut conn)
            .await
            .map_err(|error| RedisFailure { error, thread }.into())
    }

    /// Runs a script, loading it first when the server forgot it; `thread`
    /// as for [`query`](Self::query).
    pub(crate) async fn invoke(
        &self,
        invocation: &Invocation,
        thread: Option<&str>,
    ) -> Result<Value> {
        let mut script = invocation.script.prepare_invoke();
        for key in &invocation.keys {
            script.key(key);
        }
        for arg in &invocation.args {
            script.arg(arg.as_slice());
        }
        let mut conn = self.link.clone();
        script
            .invoke_async::<Value>(&mut conn)
            .await
            .map_err(|error| RedisFailure { error, thread }.into())
    }

    /// Runs one write script (through [`run_scripts`](Self::run_scripts),
    /// so that it waits for replicas when the store does).
    pub(crate) async fn write(&self, invocation: &Invocation) -> Result<Value> {
        self.run_scripts(&[invocation])
            .await
            .pop()
            .unwrap_or_else(|| Err(crate::error::missing_result()))
    }

    /// Runs script invocations, one result each: as one pipeline on a single
    /// server, as one pipeline per slot (all sent at once) on a cluster,
    /// each in order. Scripts a server had forgotten (after a restart, a
    /// failover or `SCRIPT FLUSH`) are loaded again and resent once, in
    /// their order: `NOSCRIPT` means the script did not run, so resending is
    /// safe. With [`wait_for_replicas`](RedisStoreOptions::wait_for_replicas)
    /// each pipeline ends with a `WAIT`, and the writes of a pipeline too few
    /// replicas acknowledged fail with a retryable error.
    pub(crate) async fn run_scripts(&self, invocations: &[&Invocation]) -> Vec<Result<Value>> {
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
                    Err(error) => Err(RedisFailure::general(error).into()),
                    Ok(value) => Ok(value),
                });
            }
            if !forgotten.is_empty()
                && let Err(err) = self.load_scripts().await
            {
                for &p in &forgotten {
                    results[p] = Some(Err(err.clone()));
                }
                forgotten.clear();
            }
            pending = forgotten;
        }
        results
            .into_iter()
            .map(|result| {
                result.unwrap_or_else(|| {
                    Err(ThreadStoreError::backend(
                        "the server kept forgetting the write scripts",
                    ))
                })
            })
            .collect()
    }

    /// Sends invocations, one result per invocation, in order: one pipeline
    /// per slot on a cluster, one in all on a single server.
    async fn run_pipeline(&self, invocations: &[&Invocation]) -> Vec<RedisResultValue> {
        if !self.is_cluster() {
            return self.send_pipeline(invocations, true).await;
        }
        let mut groups: HashMap<u16, Vec<usize>> = HashMap::new();
        for (i, invocation) in invocations.iter().enumerate() {
            groups.entry(invocation.slot()).or_default().push(i);
        }
        let groups: Vec<Vec<usize>> = groups.into_values().collect();
        let sent = join_all(groups.iter().map(|members| async move {
            let batch: Vec<&Invocation> = members.iter().map(|&i| invocations[i]).collect();
            self.send_pipeline(&batch, true).await
        }))
        .await;
        let mut results: Vec<Option<RedisResultValue>> = invocations.iter().map(|_| None).collect();
        let mut redirected = Vec::new();
        for (members, replies) in groups.iter().zip(sent) {
            for (&i, reply) in members.iter().zip(replies) {
                match reply {
                    Err(err) if is_redirect(&err) => redirected.push(i),
                    reply => results[i] = Some(reply),
                }
            }
        }
        // A script answered MOVED or ASK did not run. In a pipeline whose
        // replies are taken one by one, `redis-rs` does not follow the
        // redirection; sent alone, it does (it learns the new topology, or
        // asks the importing node).
        let alone = join_all(
            redirected
                .iter()
                .map(|&i| async move { self.send_pipeline(&[invocations[i]], false).await }),
        )
        .await;
        for (&i, mut replies) in redirected.iter().zip(alone) {
            results[i] = replies.pop();
        }
        results
            .into_iter()
            .map(|reply| {
                reply.unwrap_or_else(|| {
                    Err(RedisError::from((
                        ErrorKind::Client,
                        "a script of the pipeline got no reply",
                    )))
                })
            })
            .collect()
    }

    /// Sends invocations (of one slot, on a cluster) as one pipeline,
    /// followed by `WAIT` when the store waits for replicas; one result per
    /// invocation, in order. `one_by_one`: each script's error is its own
    /// (otherwise an error fails the whole pipeline, which `redis-rs` then
    /// redirects or retries as a whole: only for a pipeline of one script).
    async fn send_pipeline(
        &self,
        invocations: &[&Invocation],
        one_by_one: bool,
    ) -> Vec<RedisResultValue> {
        let mut pipe = redis::pipe();
        if one_by_one {
            pipe.ignore_errors();
        }
        for invocation in invocations {
            pipe.add_command(invocation.evalsha());
        }
        if let Some((replicas, timeout_ms)) = self.wait {
            pipe.cmd("WAIT").arg(replicas).arg(timeout_ms);
        }
        let expected = invocations.len() + usize::from(self.wait.is_some());
        let mut conn = self.link.clone();
        let mut values = match pipe.query_async::<Vec<Value>>(&mut conn).await {
            Ok(values) if values.len() == expected => values,
            Ok(values) => {
                let err = RedisError::from((
                    ErrorKind::UnexpectedReturnType,
                    "pipeline answered with the wrong number of replies",
                    format!("{} for {expected} commands", values.len()),
                ));
                return invocations.iter().map(|_| Err(err.clone())).collect();
            }
            Err(err) => return invocations.iter().map(|_| Err(err.clone())).collect(),
        };
        let acknowledged = if self.wait.is_some() {
            values.pop()
        } else {
            None
        };
        let unacknowledged = match (self.wait, acknowledged) {
            (Some((replicas, timeout_ms)), Some(Value::Int(acked)))
                if usize::try_from(acked).unwrap_or(0) < replicas =>
            {
                Some(RedisError::from((
                    ErrorKind::Io,
                    "written on the primary, but too few replicas acknowledged it",
                    format!(
                        "{acked} of {replicas} within {timeout_ms} ms; the write may be lost \
                         in a failover, retry it"
                    ),
                )))
            }
            (Some(_), Some(Value::Int(_))) | (None, _) => None,
            (Some(_), other) => Some(RedisError::from((
                ErrorKind::Io,
                "the replicas' acknowledgement is unknown",
                format!("WAIT answered {other:?}"),
            ))),
        };
        values
            .into_iter()
            .map(|value| match (value, &unacknowledged) {
                (Value::ServerError(err), _) => Err(RedisError::from(err)),
                (_, Some(err)) => Err(err.clone()),
                (value, None) => Ok(value),
            })
            .collect()
    }
}
