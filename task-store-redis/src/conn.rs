//! The connection: connecting from a URL, running scripts (one, or many in
//! one pipeline), and loading them again when the server forgot them.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, ErrorKind, RedisError, ServerErrorKind, Value};
use task_store::{Result, ThreadStoreError};

use crate::RedisStoreOptions;
use crate::error::{RedisFailure, with_target};
use crate::scripts::{self, Lua};

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
/// itself, shared by every clone of the store.
#[derive(Clone)]
pub(crate) struct Connection {
    pub(crate) manager: ConnectionManager,
    pub(crate) client: redis::Client,
}

type RedisResultValue = std::result::Result<Value, RedisError>;

impl Connection {
    /// Connects to `url` (as `redis-rs` takes it; `target` is the printable
    /// form for messages) and loads the scripts.
    pub(crate) async fn open(url: &str, target: &str, options: &RedisStoreOptions) -> Result<Self> {
        let client = redis::Client::open(url).map_err(|err| match err.kind() {
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
        let manager = ConnectionManager::new_with_config(client.clone(), config)
            .await
            .map_err(|err| with_target(RedisFailure::general(err).into(), target))?;
        let conn = Self { manager, client };
        conn.load_scripts().await?;
        Ok(conn)
    }

    /// Loads every script into the server's script cache, so that pipelined
    /// `EVALSHA`s find them. Run on connect, and again by
    /// [`run_scripts`](Self::run_scripts) when the server forgot them
    /// (after a restart or `SCRIPT FLUSH`).
    pub(crate) async fn load_scripts(&self) -> Result<()> {
        let mut pipe = redis::pipe();
        for lua in scripts::all() {
            pipe.cmd("SCRIPT").arg("LOAD").arg(lua.source);
        }
        let mut conn = self.manager.clone();
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
        let mut conn = self.manager.clone();
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
        let mut conn = self.manager.clone();
        script
            .invoke_async::<Value>(&mut conn)
            .await
            .map_err(|error| RedisFailure { error, thread }.into())
    }

    /// Runs script invocations as one pipeline, in order, one result each.
    /// Scripts the server had forgotten (after a restart or `SCRIPT
    /// FLUSH`) are loaded again and resent once, in their order: `NOSCRIPT`
    /// means the script did not run, so resending is safe.
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

    /// Sends invocations as one pipeline; one result per invocation, in
    /// order.
    async fn run_pipeline(&self, invocations: &[&Invocation]) -> Vec<RedisResultValue> {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for invocation in invocations {
            pipe.add_command(invocation.evalsha());
        }
        let mut conn = self.manager.clone();
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
