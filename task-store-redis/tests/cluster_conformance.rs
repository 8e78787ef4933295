//! The backend conformance suite of `task-testkit`, run against `RedisStore`
//! on a private Redis Cluster (3 masters, 1 replica each) shared by this
//! test binary, each case on a store of its own under a fresh key prefix,
//! with the cluster's default of 16 shards spread over the masters.

use std::sync::{Arc, OnceLock};

use task_store::ThreadStore;
use task_store_redis::{RedisStore, RedisStoreOptions};
use task_testkit::redis_cluster::{RedisCluster, private_cluster_or_skip};
use task_testkit::redis_server::unique_prefix;

/// The URL of the cluster this binary shares, started on first use.
fn cluster_url() -> Option<String> {
    static CLUSTER: OnceLock<Option<RedisCluster>> = OnceLock::new();
    CLUSTER
        .get_or_init(|| {
            private_cluster_or_skip(
                "task-store-redis cluster conformance",
                RedisCluster::builder(),
            )
        })
        .as_ref()
        .map(RedisCluster::url)
}

async fn cluster_store() -> Option<Arc<dyn ThreadStore>> {
    let url = cluster_url()?;
    let options = RedisStoreOptions::default().with_prefix(unique_prefix("conformance"));
    let store = RedisStore::connect_with(&url, options)
        .await
        .expect("connect to the test cluster");
    assert!(store.is_cluster());
    assert_eq!(
        store.shards(),
        16,
        "a cluster store has 16 shards by default"
    );
    Some(Arc::new(store))
}

task_testkit::conformance_tests!(cluster_store());
