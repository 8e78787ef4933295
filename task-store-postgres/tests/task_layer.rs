//! The task layer's persistence suite (`task_core::testing`) on
//! `PostgresStore`, so that `cargo test -p task-store-postgres` runs both
//! suites: the backend conformance suite and this one. The manager's fault
//! tests on PostgreSQL (a hard stop with 2,000 tasks, terminated sessions,
//! two instances) live in task-core's `tests/postgres.rs`.

use std::sync::Arc;

use task_store::ThreadStore;
use task_store_postgres::{PostgresStore, PostgresStoreOptions};
use task_testkit::postgres_server::{shared_postgres_url, unique_schema};

async fn postgres_store() -> Option<Arc<dyn ThreadStore>> {
    let url = shared_postgres_url("task-store-postgres task layer suite")?;
    let options = PostgresStoreOptions::default().with_schema(unique_schema("task_layer"));
    let store = PostgresStore::connect_with(&url, options)
        .await
        .expect("connect to the test server");
    Some(Arc::new(store))
}

task_core::persistence_tests!(postgres_store());
