//! `wait=N`: every write waits for `N` replicas' acknowledgement, and a
//! write too few replicas acknowledged fails with a retryable error (it was
//! applied on the primary, as the options' docs say), on a private primary
//! and a replica started for the test.

mod support;

use std::time::{Duration, Instant};

use task_store::{Thread, ThreadReader, ThreadStoreError, ThreadWriter};
use task_store_redis::RedisStore;
use task_testkit::redis_server::{RedisServer, private_server_or_skip};

use support::{fast_options, raw};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_wait_for_the_replicas_they_ask_for() {
    let test = "writes_wait_for_the_replicas_they_ask_for";
    // A replica's first sync starts at once, not after the default 5 s.
    let builder = RedisServer::builder().config("repl-diskless-sync-delay", "0");
    let Some(primary) = private_server_or_skip(test, builder) else {
        return;
    };
    let url = format!("{}?prefix=wait&wait=1&wait_timeout=50ms", primary.url());
    let store = RedisStore::connect_with(&url, fast_options())
        .await
        .expect("connect");
    assert_eq!(store.options().wait_for_replicas, 1);
    assert_eq!(store.options().wait_timeout, Duration::from_millis(50));

    // No replica: the write is applied on the primary, but not reported
    // done.
    let err = store
        .create(Thread::new("alone", "task"))
        .await
        .expect_err("no replica acknowledges");
    assert!(
        matches!(&err, ThreadStoreError::Unavailable { message, .. } if message.contains("0 of 1")),
        "{err:?}"
    );
    assert!(err.is_retryable());
    assert!(
        store.load("alone").await.expect("load").is_some(),
        "the refused write was applied on the primary"
    );

    // With a replica in sync, the same writes are reported done.
    let replicaof = format!("127.0.0.1 {}", primary.port());
    let Some(_replica) = private_server_or_skip(
        test,
        RedisServer::builder().config("replicaof", replicaof.as_str()),
    ) else {
        return;
    };
    let mut probe = raw(&primary.url()).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // The replica's first sync is a real process's work: write on one
        // connection and ask (each WAIT blocks up to 100 ms) until the
        // replica acknowledges it, with a deadline.
        let (_, acked): ((), i64) = redis::pipe()
            .cmd("SET")
            .arg("probe")
            .arg(1)
            .cmd("WAIT")
            .arg(1)
            .arg(100)
            .query_async(&mut probe)
            .await
            .expect("SET and WAIT");
        if acked == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the replica did not acknowledge a write within 20 s"
        );
    }
    store
        .create(Thread::new("replicated", "task"))
        .await
        .expect("acknowledged by the replica");
    store
        .delete("alone")
        .await
        .expect("a delete waits for the replica too");
}
