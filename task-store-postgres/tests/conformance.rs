//! The backend conformance suite of `task-testkit`, run against
//! `PostgresStore` on a private PostgreSQL server shared by this test binary
//! (or `DATABASE_URL`), each case on a store of its own in a fresh schema.

use std::sync::Arc;

use task_store::ThreadStore;
use task_store_postgres::{PostgresStore, PostgresStoreOptions};
use task_testkit::postgres_server::{shared_postgres_url, unique_schema};

async fn postgres_store() -> Option<Arc<dyn ThreadStore>> {
    let url = shared_postgres_url("task-store-postgres conformance")?;
    let options = PostgresStoreOptions::default().with_schema(unique_schema("conformance"));
    let store = PostgresStore::connect_with(&url, options)
        .await
        .expect("connect to the test server");
    Some(Arc::new(store))
}

task_testkit::conformance_tests!(postgres_store());
