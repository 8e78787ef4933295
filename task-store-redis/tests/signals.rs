//! Pub/sub wake-ups between stores on one server.

use task_store::{ThreadStoreError, ThreadWriter};
use task_store_redis::{RedisStore, RedisStoreOptions};
use task_testkit::redis_server::{shared_redis_url, unique_prefix};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_from_one_store_wakes_a_watcher_on_another() {
    let Some(url) = shared_redis_url("a_signal_from_one_store_wakes_a_watcher_on_another") else {
        return;
    };
    let prefix = unique_prefix("signals");
    let options = RedisStoreOptions::default().with_prefix(prefix.clone());
    let watcher = RedisStore::connect_with(&url, options.clone())
        .await
        .expect("connect");
    let sender = RedisStore::connect_with(&url, options)
        .await
        .expect("connect");
    let mut receiver = watcher
        .signals()
        .expect("redis has signals")
        .watch("instance:a")
        .await
        .expect("subscribe");
    sender
        .signals()
        .expect("redis has signals")
        .signal("instance:a")
        .await
        .expect("publish");
    assert_eq!(receiver.recv().await, Some(()));

    // Another prefix is another namespace.
    let other = RedisStore::connect_with(
        &url,
        RedisStoreOptions::default().with_prefix(format!("{prefix}-other")),
    )
    .await
    .expect("connect");
    other
        .signals()
        .expect("redis has signals")
        .signal("instance:a")
        .await
        .expect("publish");
    let pending = tokio::time::timeout(std::time::Duration::from_millis(50), receiver.recv()).await;
    assert!(
        pending.is_err(),
        "a signal under another prefix does not arrive"
    );

    let err = sender
        .signals()
        .expect("redis has signals")
        .signal("bad\nname")
        .await
        .expect_err("refused");
    assert!(
        matches!(err, ThreadStoreError::InvalidInput { .. }),
        "{err:?}"
    );
}
