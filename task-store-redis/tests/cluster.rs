//! `RedisStore` on a real Redis Cluster (private `redis-server` processes
//! joined by `redis-cli --cluster create`): shards spread over the masters,
//! sharded pub/sub, writes during a live slot migration, and a master
//! SIGKILLed under load with `wait=1`, after which no acknowledged write is
//! missing.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde_json::json;
use task_store::{
    ChangeSet, NewMessage, Thread, ThreadQuery, ThreadReader, ThreadReaderExt, ThreadStoreError,
    ThreadWriter, VersionPrecondition,
};
use task_store_redis::{RedisStore, RedisStoreOptions};
use task_testkit::redis_cluster::{RedisCluster, key_slot, private_cluster_or_skip};

mod support;

use support::{shard_of, shard_tag};
use task_testkit::redis_server::unique_prefix;

/// How long a test keeps retrying a write that fails with a retryable
/// error (a failover takes a few seconds).
const RETRY_FOR: Duration = Duration::from_secs(60);

/// The URL of the cluster the tests that change nothing share.
fn shared_cluster_url(test: &str) -> Option<String> {
    static CLUSTER: OnceLock<Option<RedisCluster>> = OnceLock::new();
    CLUSTER
        .get_or_init(|| private_cluster_or_skip(test, RedisCluster::builder()))
        .as_ref()
        .map(RedisCluster::url)
}

fn options(prefix: &str) -> RedisStoreOptions {
    RedisStoreOptions::default()
        .with_prefix(prefix)
        .with_response_timeout(Duration::from_secs(2))
        .with_reconnect_retries(3)
        .with_reconnect_max_delay(Duration::from_millis(200))
}

/// The hash slot of shard `i` of `shards`.
fn shard_slot(i: usize, shards: usize) -> u16 {
    key_slot(shard_tag(i, shards).as_bytes())
}

/// Runs `write` until it succeeds or fails with an error that is not
/// retryable, for at most [`RETRY_FOR`].
async fn retried<T, F, Fut>(what: &str, mut write: F) -> Result<T, ThreadStoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ThreadStoreError>>,
{
    let deadline = Instant::now() + RETRY_FOR;
    loop {
        match write().await {
            Err(err) if err.is_retryable() && Instant::now() < deadline => {
                // Pace the retries while the cluster recovers.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(err) if err.is_retryable() => {
                panic!("{what} kept failing for {RETRY_FOR:?}: {err}")
            }
            other => return other,
        }
    }
}

/// Creates `id`; a retried create that finds the thread there was applied
/// by an attempt whose reply was lost.
async fn create(store: &RedisStore, thread: Thread) {
    let id = thread.id.clone();
    match retried(&format!("create {id}"), || store.create(thread.clone())).await {
        Ok(_) | Err(ThreadStoreError::AlreadyExists { .. }) => {}
        Err(err) => panic!("create {id}: {err}"),
    }
}

/// Finishes `id` with one message (id `done`) and a state naming `i`.
async fn finish(store: &RedisStore, id: &str, i: usize) {
    let changes = ChangeSet::state(json!({"status": "completed", "i": i}))
        .with_message(NewMessage::with_id("done", json!("done")))
        .with_terminal(true);
    retried(&format!("finish {id}"), || {
        store.append(id, changes.clone(), VersionPrecondition::Any)
    })
    .await
    .unwrap_or_else(|err| panic!("finish {id}: {err}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_store_spreads_its_shards_over_every_master() {
    let test = "a_cluster_store_spreads_its_shards_over_every_master";
    let Some(url) = shared_cluster_url(test) else {
        return;
    };
    let prefix = unique_prefix("spread");
    let store = RedisStore::connect_with(&url, options(&prefix))
        .await
        .expect("connect");
    assert!(store.is_cluster());
    assert_eq!(store.shards(), 16);

    let threads: Vec<Thread> = (0..400)
        .map(|i| Thread::new(format!("t{i:03}"), "task").with_parent(format!("owner-{}", i % 4)))
        .collect();
    for result in store.create_batch(threads).await {
        result.expect("create on the cluster");
    }
    // The threads fell into every shard, and the shards' slots belong to
    // every one of the three masters.
    let mut per_shard = [0usize; 16];
    for i in 0..400 {
        per_shard[shard_of(&format!("t{i:03}"), 16)] += 1;
    }
    assert!(per_shard.iter().all(|&n| n > 0), "{per_shard:?}");
    let cluster_masters: std::collections::BTreeSet<u16> =
        (0..16).map(|i| shard_slot(i, 16) * 3 / 16384).collect();
    assert_eq!(
        cluster_masters.len(),
        3,
        "the shards cover the three slot ranges"
    );

    // A listing merges the shards in id order, page by page.
    let all = store
        .list_all_threads(ThreadQuery::by_kind("task"))
        .await
        .expect("list");
    let expected: Vec<String> = (0..400).map(|i| format!("t{i:03}")).collect();
    assert_eq!(all, expected);
    let page = store
        .list_threads(ThreadQuery::by_parent("owner-1").with_limit(7))
        .await
        .expect("page");
    assert_eq!(
        page.ids,
        ["t001", "t005", "t009", "t013", "t017", "t021", "t025"]
    );
    assert_eq!(page.next.as_deref(), Some("t025"));

    // Opening the same prefix again takes the recorded shard count; asking
    // for another is refused.
    let again = RedisStore::connect_with(&url, options(&prefix))
        .await
        .expect("reopen");
    assert_eq!(again.shards(), 16);
    let err = RedisStore::connect_with(&url, options(&prefix).with_shards(Some(8)))
        .await
        .expect_err("another shard count");
    assert!(
        matches!(&err, ThreadStoreError::InvalidInput { reason } if reason.contains("16 shards") && reason.contains("asking for 8")),
        "{err:?}"
    );
}

/// Two stores (two connections) on the shared cluster under one fresh
/// prefix: one to watch, one to signal.
async fn two_stores_on_one_prefix(test: &str, prefix: &str) -> Option<(RedisStore, RedisStore)> {
    let url = shared_cluster_url(test)?;
    let prefix = unique_prefix(prefix);
    let connect = || async {
        RedisStore::connect_with(&url, options(&prefix))
            .await
            .expect("connect")
    };
    Some((connect().await, connect().await))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_signals_wake_watchers_on_a_cluster() {
    let test = "sharded_signals_wake_watchers_on_a_cluster";
    let Some((watcher, sender)) = two_stores_on_one_prefix(test, "signals").await else {
        return;
    };
    let signals = watcher.signals().expect("redis has signals");
    // Channels on different slots, and two watchers of one channel.
    let mut a = signals.watch("instance:a").await.expect("watch a");
    let mut a_too = signals.watch("instance:a").await.expect("watch a again");
    let mut b = signals.watch("instance:b{x}").await.expect("watch b");
    let send = sender.signals().expect("redis has signals");
    send.signal("instance:a").await.expect("signal a");
    assert_eq!(a.recv().await, Some(()));
    assert_eq!(a_too.recv().await, Some(()));
    send.signal("instance:b{x}").await.expect("signal b");
    assert_eq!(b.recv().await, Some(()));
    let quiet = tokio::time::timeout(Duration::from_millis(50), a.recv()).await;
    assert!(quiet.is_err(), "a signal on b does not wake a");

    // The last watch of a channel gone, a new one subscribes again.
    drop(a);
    drop(a_too);
    let mut again = signals.watch("instance:a").await.expect("watch a anew");
    send.signal("instance:a").await.expect("signal a");
    assert_eq!(again.recv().await, Some(()));
}

/// `watch` returns once its channel is subscribed, also for a watch that
/// joins one still subscribing, and for a watch made while the channel's
/// last watch is being unsubscribed: a signal sent right after `watch`
/// returns wakes it. Each round races the two on a fresh channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_that_returned_is_subscribed_whatever_it_raced() {
    let test = "a_watch_that_returned_is_subscribed_whatever_it_raced";
    let Some((watcher, sender)) = two_stores_on_one_prefix(test, "signal-races").await else {
        return;
    };
    let signals = watcher.signals().expect("redis has signals");
    let send = sender.signals().expect("redis has signals");
    for round in 0..20 {
        // Two watches of a new channel at once: the second may find the
        // first still subscribing.
        let channel = format!("joined-{round}");
        let first = {
            let (store, channel) = (watcher.clone(), channel.clone());
            tokio::spawn(async move {
                let signals = store.signals().expect("redis has signals");
                signals.watch(&channel).await
            })
        };
        let mut second = signals.watch(&channel).await.expect("watch");
        send.signal(&channel).await.expect("signal");
        tokio::time::timeout(Duration::from_secs(5), second.recv())
            .await
            .unwrap_or_else(|_| {
                panic!("round {round}: a joining watch missed a signal sent after it returned")
            });
        drop(first.await.expect("no panic").expect("watch"));

        // The last watch dropped, and a new one at once.
        let channel = format!("rewatched-{round}");
        drop(signals.watch(&channel).await.expect("watch"));
        let mut again = signals.watch(&channel).await.expect("watch again");
        send.signal(&channel).await.expect("signal");
        tokio::time::timeout(Duration::from_secs(5), again.recv())
            .await
            .unwrap_or_else(|_| {
                panic!("round {round}: a watch made as the last one went missed a signal")
            });
    }
}

/// Masters of the cluster, by index: the master of each third of the slots.
fn masters(cluster: &RedisCluster) -> Vec<usize> {
    let mut masters: Vec<usize> = [0u16, 8192, 16383]
        .into_iter()
        .map(|slot| {
            cluster
                .master_of_slot(slot)
                .expect("a master serves the slot")
        })
        .collect();
    masters.dedup();
    masters
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_during_a_live_slot_migration_are_delayed_never_lost() {
    let test = "writes_during_a_live_slot_migration_are_delayed_never_lost";
    let Some(mut cluster) = private_cluster_or_skip(test, RedisCluster::builder()) else {
        return;
    };
    let store = RedisStore::connect_with(&cluster.url(), options("migrate"))
        .await
        .expect("connect");
    // The threads of shard 3, which lives in one slot.
    let ids: Vec<String> = (0..4000)
        .map(|i| format!("m{i}"))
        .filter(|id| shard_of(id, 16) == 3)
        .take(120)
        .collect();
    for id in &ids {
        create(
            &store,
            Thread::new(id.as_str(), "task").with_parent("owner"),
        )
        .await;
    }
    let slot = shard_slot(3, 16);
    let from = cluster.master_of_slot(slot).expect("owner of the slot");
    let to = *masters(&cluster)
        .iter()
        .find(|&&m| m != from)
        .expect("another master");

    let mut migration = cluster.begin_migration(slot, to).expect("begin migration");
    // Per thread, the message ids of the writes that committed.
    let mut written: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut pending: Vec<(String, String)> = Vec::new();
    let (mut during, mut refused) = (0, 0);
    let mut round = 0;
    loop {
        let moved = migration.step(&cluster, 10).expect("move keys");
        // Every thread of the shard gets writes while its keys move. Redis
        // refuses a script whose keys are split between the two masters
        // (TRYAGAIN): such a write fails with a retryable error and is
        // tried again later; no write fails otherwise.
        pending.extend(
            ids.iter()
                .skip(round * 4)
                .take(4)
                .map(|id| (id.clone(), format!("r{round}"))),
        );
        // The oldest few are tried each round (a refused script costs the
        // client's own retries, about 0.2 s); the rest wait their turn.
        let tried = pending.len().min(8);
        let mut still: Vec<(String, String)> = pending.split_off(tried);
        for (id, mid) in pending.drain(..) {
            let changes = ChangeSet::state(json!({"last": mid}))
                .with_message(NewMessage::with_id(mid.as_str(), json!(mid)));
            match store.append(&id, changes, VersionPrecondition::Any).await {
                Ok(_) => {
                    during += 1;
                    written.entry(id).or_default().push(mid);
                }
                Err(err) if err.is_retryable() => {
                    refused += 1;
                    still.push((id, mid));
                }
                Err(err) => panic!("append to {id} during the migration: {err}"),
            }
        }
        pending = still;
        round += 1;
        if moved == 0 {
            break;
        }
    }
    migration.finish(&cluster).expect("finish migration");
    assert_eq!(cluster.master_of_slot(slot).expect("new owner"), to);
    eprintln!("{during} writes committed during the migration, {refused} were refused and retried");
    for (id, mid) in pending {
        let changes = ChangeSet::state(json!({"last": mid}))
            .with_message(NewMessage::with_id(mid.as_str(), json!(mid)));
        retried(&format!("append to {id}"), || {
            store.append(&id, changes.clone(), VersionPrecondition::Any)
        })
        .await
        .unwrap_or_else(|err| panic!("append to {id} after the migration: {err}"));
        written.entry(id).or_default().push(mid);
    }

    for id in &ids {
        let head = store
            .load(id)
            .await
            .expect("load")
            .expect("the thread is there");
        let mut messages: Vec<String> = store
            .load_all_messages(id)
            .await
            .expect("messages")
            .into_iter()
            .filter_map(|message| message.id)
            .collect();
        let mut expected = written.get(id).cloned().unwrap_or_default();
        messages.sort();
        expected.sort();
        assert_eq!(
            messages, expected,
            "{id}: every committed write once, nothing else"
        );
        assert_eq!(head.version, 1 + expected.len() as u64, "{id}");
    }
    let listed = store
        .list_all_threads(ThreadQuery::by_parent("owner"))
        .await
        .expect("list");
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(listed, expected);
    cluster.shutdown().expect("shut the cluster down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_write_acknowledged_with_wait_is_lost_when_a_master_is_killed() {
    let test = "no_write_acknowledged_with_wait_is_lost_when_a_master_is_killed";
    let Some(mut cluster) = private_cluster_or_skip(test, RedisCluster::builder()) else {
        return;
    };
    let url = format!("{}?wait=1&wait_timeout=500ms", cluster.url());
    let store = RedisStore::connect_with(&url, options("failover"))
        .await
        .expect("connect");
    assert_eq!(store.options().wait_for_replicas, 1);

    const TASKS: usize = 2000;
    const WRITERS: usize = 8;
    let finished = Arc::new(AtomicUsize::new(0));
    let a_quarter = Arc::new(tokio::sync::Notify::new());
    let acknowledged = Arc::new(std::sync::Mutex::new(Vec::new()));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = store.clone();
            let finished = Arc::clone(&finished);
            let a_quarter = Arc::clone(&a_quarter);
            let acknowledged = Arc::clone(&acknowledged);
            tokio::spawn(async move {
                for i in (w..TASKS).step_by(WRITERS) {
                    let id = format!("task-{i}");
                    create(
                        &store,
                        Thread::new(id.as_str(), "task").with_parent("owner"),
                    )
                    .await;
                    finish(&store, &id, i).await;
                    acknowledged.lock().expect("not poisoned").push(i);
                    if finished.fetch_add(1, Ordering::SeqCst) + 1 == TASKS / 4 {
                        // Stored as a permit if the test is not waiting yet.
                        a_quarter.notify_one();
                    }
                }
            })
        })
        .collect();

    // Kill the master of shard 0 once a quarter of the tasks finished,
    // then bring the dead node back (as a replica of the promoted one, so
    // that `wait=1` can be met again).
    tokio::time::timeout(RETRY_FOR, a_quarter.notified())
        .await
        .expect("the writers finish a quarter of the tasks");
    let killed = tokio::task::spawn_blocking({
        let finished = Arc::clone(&finished);
        move || {
            let victim = cluster
                .master_of_slot(shard_slot(0, 16))
                .expect("master of shard 0");
            let promoted = cluster
                .kill_master_and_wait_for_failover(victim)
                .expect("a replica takes over");
            let at = finished.load(Ordering::SeqCst);
            cluster
                .restart_node(victim)
                .expect("the old master rejoins");
            (cluster, victim, promoted, at)
        }
    })
    .await
    .expect("the failover thread");
    for writer in writers {
        writer.await.expect("a writer");
    }
    let (mut cluster, victim, promoted, at) = killed;
    assert_ne!(victim, promoted);
    assert!(
        at < TASKS,
        "the failover happened while tasks were being written"
    );

    let acknowledged = acknowledged.lock().expect("not poisoned").clone();
    assert_eq!(acknowledged.len(), TASKS);
    for i in acknowledged {
        let id = format!("task-{i}");
        let head = store
            .load(&id)
            .await
            .expect("load")
            .unwrap_or_else(|| panic!("{id} was acknowledged and is gone"));
        assert!(head.terminal, "{id} was acknowledged finished: {head:?}");
        assert_eq!(head.state, json!({"status": "completed", "i": i}), "{id}");
        let messages = store.load_all_messages(&id).await.expect("messages");
        assert_eq!(messages.len(), 1, "{id}: {messages:?}");
    }
    cluster.shutdown().expect("shut the cluster down");
}

/// The crate docs promise that the shared subscriber subscribes again after
/// a failover: a watch made before the master of its channel's slot was
/// SIGKILLed is woken by signals sent after its replica took over (the
/// first ones may be lost while the subscriber reconnects, as the contract
/// allows, so the test signals until one arrives, for up to 20 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_survives_the_failover_of_its_channels_master() {
    let test = "a_watch_survives_the_failover_of_its_channels_master";
    let Some(mut cluster) = private_cluster_or_skip(test, RedisCluster::builder()) else {
        return;
    };
    let prefix = "failover-signals";
    let watcher = RedisStore::connect_with(&cluster.url(), options(prefix))
        .await
        .expect("connect");
    let sender = RedisStore::connect_with(&cluster.url(), options(prefix))
        .await
        .expect("connect");
    // A channel on the slots of the master about to die. Its name holds no
    // character the key encoding changes, so its key is
    // `<prefix>:signal:{<channel>}`.
    let victim = cluster.master_of_slot(0).expect("a master serves slot 0");
    let channel = (0..)
        .map(|n| format!("w{n}"))
        .find(|channel| {
            let key = format!("{prefix}:signal:{{{channel}}}");
            cluster.master_of_slot(key_slot(key.as_bytes())).ok() == Some(victim)
        })
        .expect("a channel on the victim's slots");
    let mut watch = watcher
        .signals()
        .expect("redis has signals")
        .watch(&channel)
        .await
        .expect("watch");
    let send = sender.signals().expect("redis has signals");
    send.signal(&channel).await.expect("signal before the kill");
    assert_eq!(watch.recv().await, Some(()));

    let cluster = tokio::task::spawn_blocking(move || {
        cluster
            .kill_master_and_wait_for_failover(victim)
            .expect("a replica takes over");
        cluster
    })
    .await
    .expect("the failover thread");

    let deadline = Instant::now() + Duration::from_secs(20);
    let mut sent = 0;
    loop {
        assert!(
            Instant::now() < deadline,
            "no signal reached the watch within 20 s of the failover ({sent} sent)"
        );
        if send.signal(&channel).await.is_ok() {
            sent += 1;
        }
        // Each try waits for its own signal a while before the next.
        if let Ok(woken) = tokio::time::timeout(Duration::from_millis(200), watch.recv()).await {
            assert_eq!(woken, Some(()), "the watch ended instead of being woken");
            eprintln!("{test}: woken by signal {sent} after the failover");
            break;
        }
    }
    drop(cluster);
}
