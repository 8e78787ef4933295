//! [`PostgresStore`]: the storage contract on PostgreSQL.
//!
//! Size: about 730 lines: connecting (URL, pool, schema check) and the two
//! trait impls, each write one statement. The batch building is in
//! `batch.rs`, the SQL in `statements.rs`, the encoding in `codec.rs`, the
//! unit tests in `store/tests.rs`.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use task_store::{
    AppendRequest, ChangeSet, Committed, MessagePage, MessageQuery, Result, Thread, ThreadHead,
    ThreadPage, ThreadQuery, ThreadReader, ThreadStoreError, ThreadWriter, VersionPrecondition,
    effective_limit, validate_id, validate_query, validate_thread,
};
use tokio_postgres::config::SslMode;
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

use crate::batch::{AppendColumns, AppendItem, CHUNK, CreateChunk, group_by_thread};
use crate::codec::{self, Outgoing, bigint, column, count, to_json};
use crate::conn::{MAX_RACE_RETRIES, on_connection};
use crate::error::{Failure, Fault, is_race};
use crate::options::validate_schema;
use crate::signals::PgSignals;
use crate::statements::Statements;
use crate::{PostgresStoreOptions, schema};

/// How many expired threads one sweep deletes at a time.
const SWEEP_BATCH: i32 = 500;

/// The application name the store's sessions carry unless the URL names
/// one (it shows in `pg_stat_activity`).
pub const APPLICATION_NAME: &str = "task-store-postgres";

/// The thread storage contract on PostgreSQL. See the [crate docs](crate)
/// for the schema, the statements and production notes.
///
/// Cheap to clone: clones share one connection pool.
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    sql: Statements,
    signals: PgSignals,
    options: PostgresStoreOptions,
    /// The URL without its password, for messages.
    target: String,
    /// The retention in milliseconds, 0 for none.
    retention_ms: i64,
    /// How many connections one batch may use at once: one per core, at
    /// most the pool's size.
    lanes: usize,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("target", &self.inner.target)
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects with the default [`PostgresStoreOptions`]. See
    /// [`connect_with`](Self::connect_with).
    ///
    /// # Errors
    ///
    /// As [`connect_with`](Self::connect_with).
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, PostgresStoreOptions::default()).await
    }

    /// Connects to the database at `url`, creating or migrating the schema.
    ///
    /// The URL is `postgres://[user[:password]@]host[:port]/database[?…]`
    /// (or `postgresql://…`). A `schema` query parameter sets the schema,
    /// overriding `options.schema`; the other parameters are libpq's, as
    /// `tokio-postgres` reads them (`application_name`, `connect_timeout`,
    /// `options`, `sslmode`...).
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a URL or schema name that cannot be used;
    /// `Unsupported` for `sslmode=require` (this build has no TLS), for a
    /// database whose encoding is not UTF8, and for a schema at a newer
    /// version than this build knows; `Authentication` when the server
    /// refuses the credentials or the role may not create the schema;
    /// `Unavailable`/`Timeout` when the server cannot be reached.
    pub async fn connect_with(url: &str, mut options: PostgresStoreOptions) -> Result<Self> {
        let (url, target, schema) = split_url(url)?;
        if let Some(schema) = schema {
            options.schema = schema;
        }
        let config = tokio_postgres::Config::from_str(&url).map_err(|err| {
            ThreadStoreError::invalid_input(format!(
                "cannot use the PostgreSQL URL {target}: {err}"
            ))
        })?;
        Self::open(config, target, options).await
    }

    /// Connects with a `tokio_postgres` configuration made by the caller
    /// (for a Unix socket, several hosts, or a key-value connection
    /// string), creating or migrating the schema of `options`.
    ///
    /// # Errors
    ///
    /// As [`connect_with`](Self::connect_with).
    pub async fn connect_with_config(
        config: tokio_postgres::Config,
        options: PostgresStoreOptions,
    ) -> Result<Self> {
        let target = describe(&config);
        Self::open(config, target, options).await
    }

    async fn open(
        mut config: tokio_postgres::Config,
        target: String,
        options: PostgresStoreOptions,
    ) -> Result<Self> {
        validate_schema(&options.schema)?;
        if config.get_ssl_mode() == SslMode::Require {
            return Err(ThreadStoreError::Unsupported {
                reason: format!(
                    "{target} asks for TLS (sslmode=require), which this build of \
                     task-store-postgres does not offer; connect over a trusted network or a \
                     TLS tunnel"
                ),
            });
        }
        prepare_config(&mut config, &options);
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.max_connections.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(options.response_timeout))
            .create_timeout(Some(options.connect_timeout))
            .recycle_timeout(Some(options.connect_timeout))
            .build()
            .map_err(|err| {
                ThreadStoreError::backend(format!("cannot build the connection pool: {err}"))
            })?;
        let mut client = pool
            .get()
            .await
            .map_err(|err| with_target(Failure::general(Fault::Pool(err)), &target))?;
        schema::migrate(&mut client, &options.schema)
            .await
            .map_err(|err| with_target(err, &target))?;
        drop(client);

        let retention_ms = options
            .retention
            .map(|r| i64::try_from(r.as_millis()).unwrap_or(i64::MAX).max(1))
            .unwrap_or(0);
        let store = Self {
            inner: Arc::new(Inner {
                sql: Statements::new(&options.schema),
                signals: PgSignals::new(config, pool.clone(), &options),
                pool,
                target,
                retention_ms,
                lanes: std::thread::available_parallelism()
                    .map_or(2, usize::from)
                    .min(options.max_connections)
                    .max(1),
                options,
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

    /// The schema this store keeps its tables in.
    pub fn schema(&self) -> &str {
        &self.inner.options.schema
    }

    /// The options this store was opened with (the schema as in effect).
    pub fn options(&self) -> &PostgresStoreOptions {
        &self.inner.options
    }

    /// Deletes finished threads whose retention has run out (with their
    /// logs), at most `max` of them, and returns how many were deleted.
    /// With a retention and a
    /// [`sweep_interval`](PostgresStoreOptions::sweep_interval) the store
    /// runs this by itself in the background. Rows a writer holds at that
    /// moment are left for the next sweep.
    ///
    /// # Errors
    ///
    /// `Unavailable`/`Timeout` when the server cannot answer.
    pub async fn sweep_expired(&self, max: usize) -> Result<usize> {
        let limit = i32::try_from(max.max(1)).unwrap_or(i32::MAX);
        let inner = &self.inner;
        let deleted: i32 = on_connection!(inner.pool, inner.options.response_timeout, |client| {
            let statement = client.prepare_cached(&inner.sql.sweep).await?;
            Ok(client.query_one(&statement, &[&limit]).await?.get(0))
        })
        .map_err(Failure::general)?;
        Ok(usize::try_from(deleted).unwrap_or(0))
    }

    /// Sweeps expired threads every `every`, for as long as a clone of
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
                let store = PostgresStore { inner };
                loop {
                    match store.sweep_expired(SWEEP_BATCH as usize).await {
                        Ok(n) if n == SWEEP_BATCH as usize => continue,
                        Ok(_) => break,
                        Err(err) => {
                            tracing::debug!(error = %err, "sweeping expired threads failed; trying again later");
                            break;
                        }
                    }
                }
            }
        });
    }

    /// Runs one prepared statement per parameter list and returns each
    /// statement's rows or error, in order. The statements are spread over
    /// up to [`Inner::lanes`] connections at once, pipelined on each, so
    /// they must be independent: each is its own transaction, over threads
    /// no other statement of the call touches. A statement the server
    /// rolled back for a race is run again on its own.
    async fn run_each(
        &self,
        sql: &str,
        params: &[Vec<&(dyn ToSql + Sync)>],
    ) -> Vec<Result<Vec<Row>>> {
        let lanes = self.inner.lanes.clamp(1, params.len().max(1));
        let runs = (0..lanes).map(|lane| {
            let mine: Vec<&Vec<&(dyn ToSql + Sync)>> =
                params.iter().skip(lane).step_by(lanes).collect();
            self.run_lane(sql, mine)
        });
        let mut lanes_results: Vec<std::vec::IntoIter<Result<Vec<Row>>>> =
            futures::future::join_all(runs)
                .await
                .into_iter()
                .map(Vec::into_iter)
                .collect();
        (0..params.len())
            .map(|i| {
                lanes_results[i % lanes]
                    .next()
                    .unwrap_or_else(|| Err(missing_result()))
            })
            .collect()
    }

    /// Runs statements pipelined on one connection (see
    /// [`run_each`](Self::run_each)).
    async fn run_lane(
        &self,
        sql: &str,
        params: Vec<&Vec<&(dyn ToSql + Sync)>>,
    ) -> Vec<Result<Vec<Row>>> {
        let inner = &self.inner;
        let outcome = on_connection!(inner.pool, inner.options.response_timeout, |client| {
            let statement = client.prepare_cached(sql).await?;
            let mut results = futures::future::join_all(
                params
                    .iter()
                    .map(|params| client.query(&statement, params.as_slice())),
            )
            .await;
            for (result, params) in results.iter_mut().zip(&params) {
                let mut races = 0;
                while races < MAX_RACE_RETRIES && result.as_ref().is_err_and(is_race) {
                    races += 1;
                    *result = client.query(&statement, params.as_slice()).await;
                }
            }
            Ok(results)
        });
        match outcome {
            Ok(results) => results
                .into_iter()
                .map(|r| r.map_err(|e| Failure::general(Fault::Pg(e))))
                .collect(),
            // The whole lane failed (no connection, or no answer in time):
            // every statement of it shares the error.
            Err(fault) => {
                let err = Failure::general(fault);
                params.iter().map(|_| Err(err.clone())).collect()
            }
        }
    }
}

/// Adds the store's session settings to the driver's configuration: the
/// statement timeout and the isolation level the functions are written for
/// (in the `options` startup parameter, before the URL's own, which win),
/// an application name and a connect timeout unless the URL has them.
fn prepare_config(config: &mut tokio_postgres::Config, options: &PostgresStoreOptions) {
    let mut startup = format!(
        "-c statement_timeout={} -c default_transaction_isolation=read\\ committed",
        options.statement_timeout.as_millis().max(1)
    );
    if let Some(theirs) = config.get_options() {
        startup.push(' ');
        startup.push_str(theirs);
    }
    config.options(&startup);
    if config.get_application_name().is_none() {
        config.application_name(APPLICATION_NAME);
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(options.connect_timeout);
    }
}

/// Splits a store URL into the URL for the driver (without the `schema`
/// parameter), the URL to show in messages (without the password or
/// parameters), and the schema it names.
fn split_url(raw: &str) -> Result<(String, String, Option<String>)> {
    let Some((scheme, rest)) = raw.split_once("://") else {
        return Err(ThreadStoreError::invalid_input(format!(
            "a PostgreSQL URL starts with postgres:// or postgresql://, not {:?}",
            raw.split('@').next_back().unwrap_or(raw)
        )));
    };
    if !matches!(scheme, "postgres" | "postgresql") {
        return Err(ThreadStoreError::invalid_input(format!(
            "a PostgreSQL URL starts with postgres:// or postgresql://, not {scheme}://"
        )));
    }
    let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
    let shown = match location.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}@{host}")
        }
        None => format!("{scheme}://{location}"),
    };
    let mut schema = None;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("schema", value)) => schema = Some(value.to_owned()),
            _ => kept.push(pair),
        }
    }
    let url = if kept.is_empty() {
        format!("{scheme}://{location}")
    } else {
        format!("{scheme}://{location}?{}", kept.join("&"))
    };
    Ok((url, shown, schema))
}

/// A configuration's hosts, port and database, for messages.
fn describe(config: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|host| match host {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    format!(
        "postgres://{}@{}/{}",
        config.get_user().unwrap_or_default(),
        hosts.join(","),
        config.get_dbname().unwrap_or_default()
    )
}

/// Adds the server's address to a connection error.
fn with_target(err: ThreadStoreError, target: &str) -> ThreadStoreError {
    match err {
        ThreadStoreError::Unavailable { message, source } => ThreadStoreError::Unavailable {
            message: format!("{message} ({target})"),
            source,
        },
        ThreadStoreError::Timeout { message, source } => ThreadStoreError::Timeout {
            message: format!("{message} ({target})"),
            source,
        },
        ThreadStoreError::Authentication { message, source } => ThreadStoreError::Authentication {
            message: format!("{message} ({target})"),
            source,
        },
        ThreadStoreError::Backend { message, source } => ThreadStoreError::Backend {
            message: format!("{message} ({target})"),
            source,
        },
        other => other,
    }
}

#[async_trait]
impl ThreadReader for PostgresStore {
    async fn load(&self, id: &str) -> Result<Option<ThreadHead>> {
        validate_id("thread id", id)?;
        let inner = &self.inner;
        let row = on_connection!(inner.pool, inner.options.response_timeout, |client| {
            let statement = client.prepare_cached(&inner.sql.load).await?;
            Ok(client.query_opt(&statement, &[&id]).await?)
        })
        .map_err(Failure::on(id))?;
        row.map(|row| codec::head(id, &row)).transpose()
    }

    async fn load_messages(&self, id: &str, query: MessageQuery) -> Result<MessagePage> {
        validate_id("thread id", id)?;
        let limit = effective_limit(query.limit);
        let (after, page) = (bigint(query.after), bigint(limit as u64));
        let inner = &self.inner;
        let rows = on_connection!(inner.pool, inner.options.response_timeout, |client| {
            let statement = client.prepare_cached(&inner.sql.load_messages).await?;
            Ok(client.query(&statement, &[&id, &after, &page]).await?)
        })
        .map_err(Failure::on(id))?;
        let Some(first) = rows.first() else {
            return Err(ThreadStoreError::NotFound { id: id.to_owned() });
        };
        let last_seq = count(id, "last sequence number", column(id, first, 0)?)?;
        let first_count = count(id, "count of first entries", column(id, first, 4)?)?;
        let mut messages = codec::first_page(
            id,
            first_count,
            column(id, first, 5)?,
            column(id, first, 6)?,
            query.after,
            limit,
        )?;
        for row in &rows {
            if messages.len() == limit {
                break;
            }
            if column::<Option<i64>>(id, row, 1)?.is_some() {
                messages.push(codec::message(id, row, 1)?);
            }
        }
        let next = match messages.last() {
            Some(last) if messages.len() == limit && last.seq < last_seq => Some(last.seq),
            _ => None,
        };
        Ok(MessagePage { messages, next })
    }

    async fn list_threads(&self, query: ThreadQuery) -> Result<ThreadPage> {
        validate_query(&query)?;
        let limit = effective_limit(query.limit);
        let rows_wanted = bigint(limit as u64 + 1);
        let after = query.after.as_deref().unwrap_or("");
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&after];
        if let Some(parent) = &query.parent_id {
            params.push(parent);
        }
        if let Some(kind) = &query.kind {
            params.push(kind);
        }
        params.push(&rows_wanted);
        let sql = self.inner.sql.list(
            query.parent_id.is_some(),
            query.kind.is_some(),
            query.open_only,
        );
        let inner = &self.inner;
        let rows = on_connection!(inner.pool, inner.options.response_timeout, |client| {
            let statement = client.prepare_cached(sql).await?;
            Ok(client.query(&statement, &params).await?)
        })
        .map_err(Failure::general)?;
        let mut ids = Vec::with_capacity(rows.len());
        for row in &rows {
            ids.push(row.try_get::<_, String>(0).map_err(|err| {
                ThreadStoreError::backend(format!("a listed thread id cannot be read: {err}"))
            })?);
        }
        let next = if ids.len() > limit {
            ids.truncate(limit);
            ids.last().cloned()
        } else {
            None
        };
        Ok(ThreadPage { ids, next })
    }
}

#[async_trait]
impl ThreadWriter for PostgresStore {
    async fn create(&self, thread: Thread) -> Result<Committed> {
        self.create_batch(vec![thread])
            .await
            .pop()
            .unwrap_or_else(|| Err(missing_result()))
    }

    /// Validates every thread, drops later repeats of an id, then creates
    /// the rest with one statement per 128 threads, spread over one
    /// connection per core (see the crate docs).
    async fn create_batch(&self, threads: Vec<Thread>) -> Vec<Result<Committed>> {
        let mut results: Vec<Option<Result<Committed>>> = vec![None; threads.len()];
        let mut chunks: Vec<CreateChunk<'_>> = Vec::new();
        let mut seen: HashSet<&str> = HashSet::new();
        for (slot, thread) in threads.iter().enumerate() {
            if let Err(err) = validate_thread(thread) {
                results[slot] = Some(Err(err));
                continue;
            }
            if !seen.insert(&thread.id) {
                results[slot] = Some(Err(ThreadStoreError::AlreadyExists {
                    id: thread.id.clone(),
                }));
                continue;
            }
            if chunks.last().is_none_or(|c| c.items.len() == CHUNK) {
                chunks.push(CreateChunk::default());
            }
            if let Some(chunk) = chunks.last_mut()
                && let Err(err) = chunk.push(slot, thread)
            {
                results[slot] = Some(Err(err));
            }
        }
        let retention_ms = self.inner.retention_ms;
        let params: Vec<_> = chunks.iter().map(|c| c.params(&retention_ms)).collect();
        let outcomes = if chunks.is_empty() {
            Vec::new()
        } else {
            self.run_each(&self.inner.sql.create_batch, &params).await
        };
        for (chunk, outcome) in chunks.iter().zip(outcomes) {
            match outcome {
                Ok(rows) => {
                    let created: HashSet<String> =
                        rows.iter().filter_map(|row| row.try_get(0).ok()).collect();
                    for (slot, id, committed) in &chunk.items {
                        results[*slot] = Some(if created.contains(*id) {
                            Ok(*committed)
                        } else {
                            Err(ThreadStoreError::AlreadyExists {
                                id: (*id).to_owned(),
                            })
                        });
                    }
                }
                Err(err) => {
                    for (slot, _, _) in &chunk.items {
                        results[*slot] = Some(Err(err.clone()));
                    }
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(missing_result())))
            .collect()
    }

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
        self.append_batch(vec![request])
            .await
            .pop()
            .unwrap_or_else(|| Err(missing_result()))
    }

    /// Validates every append, then applies them with one call of the
    /// append function per 128 threads (a thread's appends in one call, in
    /// order), spread over one connection per core (see the crate docs).
    async fn append_batch(&self, requests: Vec<AppendRequest>) -> Vec<Result<Committed>> {
        let mut results: Vec<Option<Result<Committed>>> = vec![None; requests.len()];
        let mut items = Vec::with_capacity(requests.len());
        for (slot, request) in requests.into_iter().enumerate() {
            match AppendItem::new(slot, request) {
                Ok(item) => items.push(item),
                Err(err) => results[slot] = Some(Err(err)),
            }
        }
        let groups = group_by_thread(&items);
        let columns: Vec<AppendColumns<'_>> =
            groups.iter().map(|g| AppendColumns::new(g)).collect();
        let retention_ms = self.inner.retention_ms;
        let sent: Vec<&AppendColumns<'_>> =
            columns.iter().filter(|c| !c.items.is_empty()).collect();
        let params: Vec<_> = sent.iter().map(|c| c.params(&retention_ms)).collect();
        let outcomes = if sent.is_empty() {
            Vec::new()
        } else {
            self.run_each(&self.inner.sql.append_batch, &params).await
        };
        for (slot, err) in columns.iter().flat_map(|c| &c.refused) {
            results[*slot] = Some(Err(err.clone()));
        }
        for (call, outcome) in sent.iter().zip(outcomes) {
            match outcome {
                Ok(rows) if rows.len() == call.items.len() => {
                    for ((item, sent, repeats), row) in call.items.iter().zip(&rows) {
                        results[item.slot] = Some(item.settle(row, *sent, *repeats));
                    }
                }
                Ok(rows) => {
                    let err = ThreadStoreError::backend(format!(
                        "the append function answered {} rows for {} appends",
                        rows.len(),
                        call.items.len()
                    ));
                    for (item, _, _) in &call.items {
                        results[item.slot] = Some(Err(err.clone()));
                    }
                }
                Err(err) => {
                    for (item, _, _) in &call.items {
                        results[item.slot] = Some(Err(err.clone()));
                    }
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(missing_result())))
            .collect()
    }

    async fn save(&self, thread: Thread) -> Result<Committed> {
        validate_thread(&thread)?;
        let id = thread.id.as_str();
        let metadata = to_json(id, &thread.metadata)?;
        let state = to_json(id, &thread.state)?;
        let messages = Outgoing::new(id, &thread.messages)?;
        let retention_ms = self.inner.retention_ms;
        let params: [&(dyn ToSql + Sync); 9] = [
            &id,
            &thread.kind,
            &thread.parent_id,
            &metadata,
            &state,
            &thread.terminal,
            &messages.ids,
            &messages.bodies,
            &retention_ms,
        ];
        let inner = &self.inner;
        let row = on_connection!(inner.pool, inner.options.response_timeout, |client| {
            let statement = client.prepare_cached(&inner.sql.save).await?;
            Ok(client.query_one(&statement, &params).await?)
        })
        .map_err(Failure::on(id))?;
        let appended = count(id, "appended count", column(id, &row, 2)?)?;
        Ok(Committed {
            version: count(id, "version", column(id, &row, 0)?)?,
            last_seq: count(id, "last sequence number", column(id, &row, 1)?)?,
            appended,
            skipped: messages.repeats + messages.len().saturating_sub(appended),
        })
    }

    async fn delete(&self, id: &str) -> Result<()> {
        validate_id("thread id", id)?;
        let inner = &self.inner;
        on_connection!(inner.pool, inner.options.response_timeout, |client| {
            let statement = client.prepare_cached(&inner.sql.delete).await?;
            client.execute(&statement, &[&id]).await?;
            Ok(())
        })
        .map_err(Failure::on(id))
    }

    /// LISTEN/NOTIFY on the schema's channel (see the crate docs).
    fn signals(&self) -> Option<&dyn task_store::ThreadSignals> {
        Some(&self.inner.signals)
    }
}

fn missing_result() -> ThreadStoreError {
    ThreadStoreError::backend("the batch ended without a result for this item")
}

const _: () = {
    const fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<PostgresStore>();
};

#[cfg(test)]
mod tests;
