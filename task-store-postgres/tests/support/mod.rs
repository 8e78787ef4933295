//! Shared helpers of the PostgreSQL integration tests.

#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use task_store_postgres::{PostgresStore, PostgresStoreOptions};
use task_testkit::postgres_server::{shared_postgres_url, unique_schema};

/// A store on the shared server (or `DATABASE_URL`) in a fresh schema, and
/// the server's URL; `None` when the test is skipped (no server binaries).
pub async fn shared_store(test: &str) -> Option<(PostgresStore, String)> {
    shared_store_with(test, PostgresStoreOptions::default()).await
}

/// As [`shared_store`], with options (the schema is replaced by a fresh one).
pub async fn shared_store_with(
    test: &str,
    options: PostgresStoreOptions,
) -> Option<(PostgresStore, String)> {
    let url = shared_postgres_url(test)?;
    let store = PostgresStore::connect_with(&url, options.with_schema(unique_schema(test)))
        .await
        .expect("connect to the test server");
    Some((store, url))
}

/// A plain connection to the server at `url`, to look at or damage rows
/// behind the store's back.
pub async fn raw(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("raw connection");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// `url` with `application_name` set, so a test can find the store's
/// sessions in `pg_stat_activity`.
pub fn named(url: &str, application_name: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}application_name={application_name}")
}

/// Options with short timeouts for fault tests.
pub fn fast_options() -> PostgresStoreOptions {
    PostgresStoreOptions::default()
        .with_connect_timeout(Duration::from_millis(500))
        .with_statement_timeout(Duration::from_secs(2))
        .with_response_timeout(Duration::from_secs(3))
}

/// Terminates every session named `application_name`; returns how many.
pub async fn terminate(admin: &tokio_postgres::Client, application_name: &str) -> i64 {
    admin
        .query_one(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE application_name = $1 AND pid <> pg_backend_pid()",
            &[&application_name],
        )
        .await
        .expect("pg_terminate_backend")
        .get(0)
}
