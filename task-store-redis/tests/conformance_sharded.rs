//! The backend conformance suite of `task-testkit` again, against a
//! `RedisStore` of four shards (`tests/conformance.rs` runs it on the
//! default single shard): every listing then merges the pages of four
//! shards, and batches split into one script per shard.

use std::sync::Arc;

use task_store::ThreadStore;
use task_store_redis::{RedisStore, RedisStoreOptions};
use task_testkit::redis_server::{shared_redis_url, unique_prefix};

async fn sharded_redis_store() -> Option<Arc<dyn ThreadStore>> {
    let url = shared_redis_url("task-store-redis conformance, 4 shards")?;
    let options = RedisStoreOptions::default()
        .with_prefix(unique_prefix("conformance-sharded"))
        .with_shards(Some(4));
    let store = RedisStore::connect_with(&url, options)
        .await
        .expect("connect to the test server");
    assert_eq!(store.shards(), 4);
    Some(Arc::new(store))
}

task_testkit::conformance_tests!(sharded_redis_store());
