//! Shared helpers of the Redis integration tests.

#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use task_store_redis::{RedisStore, RedisStoreOptions};
use task_testkit::redis_server::{shared_redis_url, unique_prefix};

/// A store on the shared server (or `REDIS_URL`) under a fresh prefix, or
/// `None` when the test is skipped (no redis-server).
pub async fn shared_store(test: &str) -> Option<RedisStore> {
    shared_store_with(test, RedisStoreOptions::default()).await
}

/// As [`shared_store`], with options (the prefix is replaced by a fresh one).
pub async fn shared_store_with(test: &str, options: RedisStoreOptions) -> Option<RedisStore> {
    let url = shared_redis_url(test)?;
    let store = RedisStore::connect_with(&url, options.with_prefix(unique_prefix(test)))
        .await
        .expect("connect to the test server");
    Some(store)
}

/// A plain connection to the server at `url`, to look at or damage keys
/// behind the store's back.
pub async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("valid URL")
        .get_multiplexed_async_connection()
        .await
        .expect("raw connection")
}

/// The URL the shared store of `test` talks to.
pub fn shared_url(test: &str) -> String {
    shared_redis_url(test).expect("the store exists, so the server does")
}

/// Deletes every key under `prefix`, so a test leaves nothing behind on a
/// server that outlives it.
pub async fn purge(url: &str, prefix: &str) {
    let mut conn = raw(url).await;
    let pattern = format!("{prefix}:*");
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .expect("SCAN");
        if !keys.is_empty() {
            let _: () = redis::cmd("DEL")
                .arg(&keys)
                .query_async(&mut conn)
                .await
                .expect("DEL");
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
}

/// Options with short timeouts for fault tests.
pub fn fast_options() -> RedisStoreOptions {
    RedisStoreOptions::default()
        .with_connect_timeout(Duration::from_millis(300))
        .with_response_timeout(Duration::from_millis(300))
        .with_reconnect_retries(1)
        .with_reconnect_max_delay(Duration::from_millis(100))
}

/// Every key under `prefix`, sorted (a `KEYS` scan: test servers only).
pub async fn keys_under(url: &str, prefix: &str) -> Vec<String> {
    let mut conn = raw(url).await;
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut conn)
        .await
        .expect("KEYS");
    keys.sort();
    keys
}
