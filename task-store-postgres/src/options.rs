//! How a [`PostgresStore`](crate::PostgresStore) connects and what it keeps.

use std::time::Duration;

use task_store::ThreadStoreError;

/// The schema used when neither the options nor the URL name one.
pub const DEFAULT_SCHEMA: &str = "bgtask";

/// The longest schema name accepted, in bytes. PostgreSQL cuts identifiers
/// at 63 bytes; the store's notification channel is the schema name with
/// `.signal` appended, and must fit too.
pub const MAX_SCHEMA_LEN: usize = 48;

/// Options of a [`PostgresStore`](crate::PostgresStore): schema, pool,
/// timeouts and retention.
///
/// The defaults suit a PostgreSQL on the same network: schema
/// [`DEFAULT_SCHEMA`], a pool of up to twice the cores (at least 4)
/// connections, a 2 s connect timeout, a 5 s statement timeout enforced by
/// the server, a 7 s response timeout enforced by the client, and no
/// retention (finished threads are kept until deleted).
///
/// ```
/// use std::time::Duration;
/// use task_store_postgres::PostgresStoreOptions;
///
/// let options = PostgresStoreOptions::default()
///     .with_schema("myapp_tasks")
///     .with_statement_timeout(Duration::from_secs(2))
///     .with_retention(Some(Duration::from_secs(24 * 3600)));
/// assert_eq!(options.schema, "myapp_tasks");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PostgresStoreOptions {
    /// The schema holding the store's tables and functions (default
    /// [`DEFAULT_SCHEMA`]); a `?schema=S` parameter in the URL takes
    /// precedence. Lowercase ASCII letters, digits and `_`, starting with a
    /// letter or `_`, at most [`MAX_SCHEMA_LEN`] bytes.
    pub schema: String,
    /// The most connections the pool opens (default: twice the cores, at
    /// least 4). Signals use one more, opened on the first `watch`.
    pub max_connections: usize,
    /// How long opening one connection may take (default 2 s).
    pub connect_timeout: Duration,
    /// The server-side `statement_timeout` of the store's sessions
    /// (default 5 s): a statement running longer is cancelled by the server
    /// and the call fails with the retryable
    /// [`Timeout`](task_store::ThreadStoreError::Timeout). A
    /// `statement_timeout` given in the URL's `options` takes precedence.
    pub statement_timeout: Duration,
    /// How long a call may wait for the server in all, including the wait
    /// for a free connection (default 7 s): past it the call fails with the
    /// retryable [`Timeout`](task_store::ThreadStoreError::Timeout) and its
    /// connection is closed, so a server that stopped answering can never
    /// hang a caller. Keep it above the statement timeout, so that the
    /// server's own cancellation normally comes first.
    pub response_timeout: Duration,
    /// How long a thread marked finished ([`ChangeSet::terminal`]) is kept
    /// after its last write; `None` (the default) keeps it until it is
    /// deleted.
    ///
    /// [`ChangeSet::terminal`]: task_store::ChangeSet::terminal
    pub retention: Option<Duration>,
    /// How often a store with a retention deletes expired threads in the
    /// background (default every 60 s; `None` never, leaving it to
    /// [`PostgresStore::sweep_expired`](crate::PostgresStore::sweep_expired)).
    pub sweep_interval: Option<Duration>,
}

impl Default for PostgresStoreOptions {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        Self {
            schema: DEFAULT_SCHEMA.to_owned(),
            max_connections: (2 * cores).max(4),
            connect_timeout: Duration::from_secs(2),
            statement_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(7),
            retention: None,
            sweep_interval: Some(Duration::from_secs(60)),
        }
    }
}

impl PostgresStoreOptions {
    /// Sets the schema.
    pub fn with_schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// Sets the most connections of the pool (at least 1).
    pub fn with_max_connections(mut self, max: usize) -> Self {
        self.max_connections = max.max(1);
        self
    }

    /// Sets the connect timeout.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets the server-side statement timeout.
    pub fn with_statement_timeout(mut self, timeout: Duration) -> Self {
        self.statement_timeout = timeout;
        self
    }

    /// Sets the client-side response timeout.
    pub fn with_response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// Sets the retention of finished threads.
    pub fn with_retention(mut self, retention: Option<Duration>) -> Self {
        self.retention = retention;
        self
    }

    /// Sets how often expired threads are deleted in the background.
    pub fn with_sweep_interval(mut self, every: Option<Duration>) -> Self {
        self.sweep_interval = every;
        self
    }
}

/// Checks a schema name: it becomes part of SQL text (quoted) and of the
/// notification channel, so it is kept to plain identifiers.
pub(crate) fn validate_schema(schema: &str) -> Result<(), ThreadStoreError> {
    let plain = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_';
    let starts_well = schema
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    if !starts_well || !schema.chars().all(plain) || schema.len() > MAX_SCHEMA_LEN {
        return Err(ThreadStoreError::invalid_input(format!(
            "schema name {schema:?} is not usable: use lowercase ASCII letters, digits and `_`, \
             starting with a letter or `_`, at most {MAX_SCHEMA_LEN} bytes"
        )));
    }
    if schema.starts_with("pg_") {
        return Err(ThreadStoreError::invalid_input(format!(
            "schema name {schema:?} is reserved: PostgreSQL keeps names starting with `pg_` \
             for itself"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_schema_names_are_accepted_and_others_refused() {
        for good in ["bgtask", "_x", "my_app_2", &"s".repeat(MAX_SCHEMA_LEN)] {
            assert!(validate_schema(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "2x",
            "MyApp",
            "my-app",
            "a b",
            "a\"b",
            "pg_catalog",
            &"s".repeat(MAX_SCHEMA_LEN + 1),
        ] {
            let err = validate_schema(bad).expect_err(bad);
            assert!(
                matches!(err, ThreadStoreError::InvalidInput { .. }),
                "{err:?}"
            );
        }
    }
}
