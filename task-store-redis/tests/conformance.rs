//! The backend conformance suite of `task-testkit`, run against `RedisStore`
//! on a private `redis-server` shared by this test binary (or `REDIS_URL`),
//! each case on a store of its own under a fresh key prefix.

use std::sync::Arc;

use task_store::ThreadStore;
use task_store_redis::{RedisStore, RedisStoreOptions};
use task_testkit::redis_server::{shared_redis_url, unique_prefix};

async fn redis_store() -> Option<Arc<dyn ThreadStore>> {
    let url = shared_redis_url("task-store-redis conformance")?;
    let options = RedisStoreOptions::default().with_prefix(unique_prefix("conformance"));
    let store = RedisStore::connect_with(&url, options)
        .await
        .expect("connect to the test server");
    Some(Arc::new(store))
}

task_testkit::conformance_tests!(redis_store());
