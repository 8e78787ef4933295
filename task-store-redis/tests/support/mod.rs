//! Shared helpers of the Redis integration tests, including the key names of
//! layout 2 (see the crate docs, "Key layout"), written again here rather
//! than taken from the crate, so that a change to the layout fails the tests
//! that look at keys.

#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use task_store_redis::{RedisStore, RedisStoreOptions};
use task_testkit::redis_cluster::key_slot;
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

/// Options whose finished threads expire 1 ms after their last write, with
/// no background sweeper: for the tests of expiry, listing and sweeping.
pub fn expiring_options() -> RedisStoreOptions {
    RedisStoreOptions::default()
        .with_retention(Some(Duration::from_millis(1)))
        .with_sweep_interval(None)
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

/// The five sorted sets of each shard, by name.
pub const SHARD_SETS: [&str; 5] = ["kind", "parent", "open:kind", "open:parent", "expiring"];

/// An id as key names hold it: `%{}*?[]\:` percent-encoded as `%XX`, every
/// other character kept.
pub fn encode(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for c in id.chars() {
        if "%{}*?[]\\:".contains(c) {
            out.push_str(&format!("%{:02X}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// The key of thread `id` in a store of one shard: `P:{0.0}:t:E(id)`.
pub fn thread_key(prefix: &str, id: &str) -> String {
    thread_key_in(prefix, 1, id)
}

/// One of the sorted sets ([`SHARD_SETS`]) of a store of one shard:
/// `P:{0.0}:name`.
pub fn shard_key(prefix: &str, name: &str) -> String {
    shard_key_in(prefix, 1, 0, name)
}

/// The key of thread `id` in a store of `shards` shards:
/// `P:{tag of its shard}:t:E(id)`.
pub fn thread_key_in(prefix: &str, shards: usize, id: &str) -> String {
    let tag = shard_tag(shard_of(id, shards), shards);
    format!("{prefix}:{{{tag}}}:t:{}", encode(id))
}

/// One of the sorted sets ([`SHARD_SETS`]) of shard `shard` of a store of
/// `shards` shards: `P:{tag}:name`.
pub fn shard_key_in(prefix: &str, shards: usize, shard: usize, name: &str) -> String {
    format!("{prefix}:{{{}}}:{name}", shard_tag(shard, shards))
}

/// The shard of thread `id` among `shards`: FNV-1a (64 bits) of its bytes,
/// modulo the shard count.
pub fn shard_of(id: &str, shards: usize) -> usize {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in id.as_bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % shards as u64) as usize
}

/// The hash tag of shard `shard` of `shards`: the first `shard.j` whose
/// hash slot lies in the `shard`-th of `shards` equal parts of the 16384
/// slots.
pub fn shard_tag(shard: usize, shards: usize) -> String {
    let (lo, hi) = (shard * 16384 / shards, (shard + 1) * 16384 / shards);
    (0..)
        .map(|j| format!("{shard}.{j}"))
        .find(|tag| (lo..hi).contains(&usize::from(key_slot(tag.as_bytes()))))
        .expect("some tag lands in every part")
}

/// The members of a sorted set, in order (none for a missing key).
pub async fn members(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> Vec<String> {
    redis::cmd("ZRANGE")
        .arg(key)
        .arg(0)
        .arg(-1)
        .query_async(conn)
        .await
        .expect("ZRANGE")
}

/// Waits until the server has expired `key` (its TTL is a few ms), asking
/// it with `EXISTS`, which expires a key that is due; fails after 10 s.
pub async fn wait_until_expired(conn: &mut redis::aio::MultiplexedConnection, key: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let exists: u64 = redis::cmd("EXISTS")
            .arg(key)
            .query_async(conn)
            .await
            .expect("EXISTS");
        if exists == 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the server did not expire {key} within 10 s"
        );
    }
}
