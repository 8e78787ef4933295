//! The batch writes of the Redis backend: `create_batch` and `append_batch`
//! write exactly what the single writes write (the thread's key, its TTL,
//! its index entries and expiry entry), for every shape of thread and
//! append, with and without a retention; runs longer than one round trip
//! keep their order; a damaged thread key refuses only its thread, a damaged
//! sorted set only the threads of its shard. Split from
//! `tests/redis_store.rs`.
//!
//! Size: about 740 lines, just over the house limit of about 700: each case
//! compares the whole stored record (hash, TTL, index and expiry entries)
//! of a batch write with that of the single write, which takes room.

mod support;

use std::time::Duration;

use serde_json::json;
use task_store::{
    AppendRequest, ChangeSet, NewMessage, Thread, ThreadQuery, ThreadReader, ThreadReaderExt,
    ThreadStoreError, ThreadWriter, VersionPrecondition,
};
use task_store_redis::RedisStoreOptions;

use support::{
    keys_under, purge, raw, shard_key, shard_key_in, shard_of, shared_store, shared_store_with,
    shared_url, thread_key, thread_key_in,
};

/// Everything Redis holds for one thread, with its id taken out, to compare
/// what `create` and `create_batch` wrote for twins.
#[derive(Debug, PartialEq)]
struct Written {
    /// The fields of the thread's key but `id`: head, messages, message ids.
    fields: Vec<(String, String)>,
    /// The key's TTL: -1 none, 1 a TTL near the retention (or another value).
    ttl: i64,
    /// The thread's scores in the shard's kind, parent, open:kind and
    /// open:parent sets (the parent ones only for a thread with a parent).
    indexed: Vec<Option<f64>>,
    /// Its entry in the expiry set (expiry rounded to 10 s).
    expiring: Option<i64>,
}

async fn written(
    conn: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
    id: &str,
    kind: &str,
    parent: Option<&str>,
) -> Written {
    let key = thread_key(prefix, id);
    let mut fields: Vec<(String, String)> = redis::cmd("HGETALL")
        .arg(&key)
        .query_async(conn)
        .await
        .expect("HGETALL");
    assert!(
        fields.contains(&("id".to_owned(), id.to_owned())),
        "{key}: {fields:?}"
    );
    fields.retain(|(field, _)| field != "id");
    fields.sort();
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(conn)
        .await
        .expect("PTTL");
    let ttl = if ttl > 3_500_000 && ttl <= 3_600_000 {
        1
    } else {
        ttl
    };
    let mut entries = vec![("kind", format!("{kind}\0{id}"))];
    if let Some(parent) = parent {
        entries.push(("parent", format!("{parent}\0{kind}\0{id}")));
    }
    entries.push(("open:kind", format!("{kind}\0{id}")));
    if let Some(parent) = parent {
        entries.push(("open:parent", format!("{parent}\0{kind}\0{id}")));
    }
    let mut indexed = Vec::new();
    for (set, member) in entries {
        let score: Option<f64> = redis::cmd("ZSCORE")
            .arg(shard_key(prefix, set))
            .arg(member)
            .query_async(conn)
            .await
            .expect("ZSCORE");
        indexed.push(score);
    }
    let score: Option<f64> = redis::cmd("ZSCORE")
        .arg(shard_key(prefix, "expiring"))
        .arg(format!("{id}\n{kind}\n{}", parent.unwrap_or_default()))
        .query_async(conn)
        .await
        .expect("ZSCORE");
    Written {
        fields,
        ttl,
        indexed,
        expiring: score.map(|s| (s / 10_000.0).round() as i64),
    }
}

/// Makes a thread of some shape with the given id.
type Shape = dyn Fn(&str) -> Thread;

async fn create_batch_writes_what_create_writes(test: &str, retention: Option<Duration>) {
    let options = RedisStoreOptions::default().with_retention(retention);
    let Some(store) = shared_store_with(test, options).await else {
        return;
    };
    let url = shared_url(test);
    let mut conn = raw(&url).await;
    let prefix = store.prefix().to_owned();
    let shapes: Vec<Box<Shape>> = vec![
        Box::new(|id| {
            let mut thread = Thread::new(id, "task")
                .with_parent("owner")
                .with_state(json!({ "status": "completed" }))
                .with_message(NewMessage::with_id("a1:start", json!("start")))
                .with_message(NewMessage::with_id("a1:finish", json!("finish")))
                .with_message(NewMessage::with_id("a1:start", json!("repeat")));
            thread.terminal = true;
            thread
        }),
        Box::new(|id| {
            let mut thread = Thread::new(id, "task").with_state(json!(1));
            thread.terminal = true;
            thread
        }),
        Box::new(|id| {
            Thread::new(id, "task")
                .with_parent("owner")
                .with_message(NewMessage::new(json!("no id")))
                .with_message(NewMessage::with_id("m", json!("id")))
        }),
        Box::new(|id| Thread::new(id, "other").with_state(json!({ "a": [1, 2] }))),
    ];
    // Entries an earlier, expired life of each thread left in the expiry set.
    for (i, shape) in shapes.iter().enumerate() {
        for id in [format!("c{i}"), format!("b{i}")] {
            let thread = shape(&id);
            let entry = format!(
                "{id}\n{}\n{}",
                thread.kind,
                thread.parent_id.unwrap_or_default()
            );
            let _: () = redis::cmd("ZADD")
                .arg(shard_key(&prefix, "expiring"))
                .arg(1)
                .arg(entry)
                .query_async(&mut conn)
                .await
                .expect("ZADD");
        }
    }
    for (i, shape) in shapes.iter().enumerate() {
        store.create(shape(&format!("c{i}"))).await.expect("create");
    }
    let batch = (0..shapes.len())
        .map(|i| shapes[i](&format!("b{i}")))
        .collect();
    for result in store.create_batch(batch).await {
        result.expect("batched create");
    }
    for (i, shape) in shapes.iter().enumerate() {
        let thread = shape("x");
        let (kind, parent) = (thread.kind.as_str(), thread.parent_id.as_deref());
        let by_create = written(&mut conn, &prefix, &format!("c{i}"), kind, parent).await;
        let by_batch = written(&mut conn, &prefix, &format!("b{i}"), kind, parent).await;
        assert_eq!(by_batch, by_create, "shape {i}");
    }
    purge(&url, &prefix).await;
}

#[tokio::test]
async fn create_batch_writes_what_create_writes_with_a_retention() {
    create_batch_writes_what_create_writes(
        "create_batch_writes_what_create_writes_with_a_retention",
        Some(Duration::from_secs(3600)),
    )
    .await;
}

#[tokio::test]
async fn create_batch_writes_what_create_writes_without_a_retention() {
    create_batch_writes_what_create_writes(
        "create_batch_writes_what_create_writes_without_a_retention",
        None,
    )
    .await;
}

#[tokio::test]
async fn create_batch_starts_a_thread_created_again_from_an_empty_log() {
    let test = "create_batch_starts_a_thread_created_again_from_an_empty_log";
    let Some(store) = shared_store(test).await else {
        return;
    };
    let url = shared_url(test);
    let mut conn = raw(&url).await;
    let prefix = store.prefix().to_owned();
    // An earlier life of "left", with a log and message ids, whose key then
    // went (as on expiry); and a thread that stays, so that the batch below
    // is not all fresh and each of its threads is checked on its own.
    store
        .create(
            Thread::new("left", "task")
                .with_message(NewMessage::with_id("old", json!("stale")))
                .with_message(NewMessage::with_id("older", json!("stale"))),
        )
        .await
        .expect("create the earlier life");
    store
        .create(Thread::new("taken", "task"))
        .await
        .expect("create");
    let _: () = redis::cmd("DEL")
        .arg(thread_key(&prefix, "left"))
        .query_async(&mut conn)
        .await
        .expect("DEL");
    let results = store
        .create_batch(vec![
            Thread::new("fresh", "task").with_message(NewMessage::with_id("m", json!(0))),
            Thread::new("taken", "task"),
            Thread::new("left", "task").with_message(NewMessage::with_id("m", json!(1))),
        ])
        .await;
    assert_eq!(results[0].as_ref().expect("fresh").last_seq, 1);
    assert!(
        matches!(&results[1], Err(ThreadStoreError::AlreadyExists { id }) if id == "taken"),
        "{:?}",
        results[1]
    );
    assert_eq!(results[2].as_ref().expect("left").last_seq, 1);
    let messages = store.load_all_messages("left").await.expect("log");
    assert_eq!(messages.len(), 1, "only the new message: {messages:?}");
    assert_eq!(messages[0].body, json!(1));
    let committed = store
        .append(
            "left",
            ChangeSet::default().with_message(NewMessage::with_id("old", json!(2))),
            VersionPrecondition::Exact(1),
        )
        .await
        .expect("append");
    assert_eq!(
        (committed.appended, committed.last_seq),
        (1, 2),
        "the earlier life's message id is forgotten"
    );
    purge(&url, &prefix).await;
}

#[tokio::test]
async fn create_batch_writes_a_thread_with_a_log_longer_than_lua_can_unpack() {
    // Lua's unpack returns at most about 8,000 values; 6,000 messages with
    // ids are 12,000 log values and 12,000 id values.
    let test = "create_batch_writes_a_thread_with_a_log_longer_than_lua_can_unpack";
    let Some(store) = shared_store(test).await else {
        return;
    };
    let url = shared_url(test);
    let prefix = store.prefix().to_owned();
    let mut long = Thread::new("long", "task");
    for i in 0..6000 {
        long = long.with_message(NewMessage::with_id(format!("m{i}"), json!(i)));
    }
    let results = store
        .create_batch(vec![
            Thread::new("before", "task"),
            long,
            Thread::new("after", "task"),
        ])
        .await;
    assert_eq!(results.len(), 3);
    for result in results {
        result.expect("created");
    }
    let messages = store.load_all_messages("long").await.expect("log");
    assert_eq!(messages.len(), 6000);
    assert_eq!(messages[5999].body, json!(5999));
    let committed = store
        .append(
            "long",
            ChangeSet::default().with_message(NewMessage::with_id("m4321", json!("again"))),
            VersionPrecondition::Exact(1),
        )
        .await
        .expect("append");
    assert_eq!(committed.skipped, 1, "every message id was recorded");
    assert!(store.load("after").await.expect("load").is_some());
    purge(&url, &prefix).await;
}

#[tokio::test]
async fn create_batch_refuses_only_the_threads_whose_keys_are_damaged() {
    let test = "create_batch_refuses_only_the_threads_whose_keys_are_damaged";
    // Four shards, so that a damaged sorted set of one shard can be seen to
    // refuse the threads of that shard only.
    const SHARDS: usize = 4;
    let options = RedisStoreOptions::default().with_shards(Some(SHARDS));
    let Some(store) = shared_store_with(test, options).await else {
        return;
    };
    assert_eq!(store.shards(), SHARDS);
    let url = shared_url(test);
    let mut conn = raw(&url).await;
    let prefix = store.prefix().to_owned();
    // The first ids `{name}0`, `{name}1`, … of shard `shard`.
    let in_shard = |name: &str, shard: usize, n: usize| -> Vec<String> {
        (0..)
            .map(|i| format!("{name}{i}"))
            .filter(|id| shard_of(id, SHARDS) == shard)
            .take(n)
            .collect()
    };
    let (damaged, clean) = (1, 2);
    let bad_set = shard_key_in(&prefix, SHARDS, damaged, "parent");
    let _: () = redis::pipe()
        .cmd("SET")
        .arg(&bad_set)
        .arg("not a sorted set")
        .ignore()
        .cmd("SET")
        .arg(thread_key_in(&prefix, SHARDS, "garbage"))
        .arg("not a hash")
        .ignore()
        .query_async(&mut conn)
        .await
        .expect("damage");
    let thread = |id: &str| {
        Thread::new(id, "task")
            .with_parent("p")
            .with_message(NewMessage::with_id("m", json!(id)))
    };
    let good = in_shard("a", clean, 2);
    let bad = in_shard("b", damaged, 1);
    let results = store
        .create_batch(vec![
            thread(&good[0]),
            thread(&bad[0]),
            thread("garbage"),
            thread(&good[1]),
        ])
        .await;
    assert_eq!(results[0].as_ref().expect("good").version, 1);
    match &results[1] {
        Err(ThreadStoreError::Backend { message, .. }) => {
            assert!(message.contains(&bad_set), "{message}");
        }
        other => panic!("bad: expected Backend naming the damaged set, got {other:?}"),
    }
    assert!(
        matches!(&results[2], Err(ThreadStoreError::AlreadyExists { id }) if id == "garbage"),
        "a thread key of the wrong type is taken, as for create: {:?}",
        results[2]
    );
    assert_eq!(results[3].as_ref().expect("good").version, 1);
    assert_eq!(
        store.load(&bad[0]).await.expect("load"),
        None,
        "the refused thread was not written"
    );
    let keys = keys_under(&url, &prefix).await;
    assert!(
        !keys.contains(&thread_key_in(&prefix, SHARDS, &bad[0])),
        "no key of the refused thread: {keys:?}"
    );
    let damaged_tag = shard_key_in(&prefix, SHARDS, damaged, "");
    assert_eq!(
        keys.iter()
            .filter(|key| key.starts_with(&damaged_tag))
            .collect::<Vec<_>>(),
        [&bad_set],
        "nothing written in the damaged shard"
    );
    assert_eq!(
        store
            .list_all_threads(ThreadQuery::by_kind("task"))
            .await
            .expect("list"),
        good
    );

    // An expiry set of the wrong type refuses the threads of its shard, as
    // for create; those of the other shards are created.
    let expiring = shard_key_in(&prefix, SHARDS, clean, "expiring");
    let _: () = redis::cmd("SET")
        .arg(&expiring)
        .arg("not a sorted set")
        .query_async(&mut conn)
        .await
        .expect("damage the expiry set");
    let refused = in_shard("d", clean, 2);
    let created = in_shard("e", 3, 1);
    let results = store
        .create_batch(vec![
            thread(&refused[0]),
            thread(&created[0]),
            thread(&refused[1]),
        ])
        .await;
    for k in [0, 2] {
        assert!(
            matches!(&results[k], Err(ThreadStoreError::Backend { message, .. }) if message.contains(&expiring)),
            "{:?}",
            results[k]
        );
    }
    assert_eq!(results[1].as_ref().expect("another shard").version, 1);
    for id in &refused {
        assert_eq!(
            store.load(id).await.expect("load"),
            None,
            "{id} was written"
        );
    }
    purge(&url, &prefix).await;
}

#[tokio::test]
async fn create_batch_larger_than_one_round_trip_keeps_order_and_repeats() {
    let test = "create_batch_larger_than_one_round_trip_keeps_order_and_repeats";
    let Some(store) = shared_store(test).await else {
        return;
    };
    let url = shared_url(test);
    const N: usize = 4200;
    let mut threads: Vec<Thread> = (0..N)
        .map(|i| {
            Thread::new(format!("t{i:05}"), "task")
                .with_parent(format!("owner{}", i % 13))
                .with_state(json!(i))
        })
        .collect();
    // Repeats in the same run and across round trips.
    threads.push(Thread::new("t00000", "task").with_state(json!("again")));
    threads.insert(5, Thread::new("t00003", "task").with_state(json!("again")));
    let results = store.create_batch(threads.clone()).await;
    assert_eq!(results.len(), threads.len());
    for (thread, result) in threads.iter().zip(&results) {
        if thread.state == json!("again") {
            assert!(
                matches!(result, Err(ThreadStoreError::AlreadyExists { id }) if *id == thread.id),
                "{}: {result:?}",
                thread.id
            );
        } else {
            assert_eq!(
                result.as_ref().expect("created").version,
                1,
                "{}",
                thread.id
            );
        }
    }
    let listed = store
        .list_all_threads(ThreadQuery::by_kind("task"))
        .await
        .expect("list");
    assert_eq!(listed.len(), N);
    assert_eq!(
        store.load("t00003").await.expect("load").expect("t3").state,
        json!(3)
    );
    purge(&url, store.prefix()).await;
}

/// A thread to start from and the appends to apply to it, in order.
type AppendShape = (Thread, Vec<(ChangeSet, VersionPrecondition)>);

/// Threads of several shapes, each with a sequence of appends that covers
/// one rule of the write script: states, finished marks set, kept and
/// cleared, messages with and without ids, ids already in the log or
/// repeated in one append, appends that change nothing.
fn append_shapes(id: &str) -> Vec<AppendShape> {
    let exact = VersionPrecondition::Exact;
    let any = VersionPrecondition::Any;
    let event =
        |name: &str| NewMessage::with_id(name, json!({ "event": name, "pad": "x".repeat(40) }));
    let running = |suffix: &str| {
        Thread::new(format!("{id}-{suffix}"), "task")
            .with_parent("owner")
            .with_state(json!({ "status": "running" }))
            .with_message(event("a1:start"))
    };
    let mut finished = Thread::new(format!("{id}-finished"), "task").with_state(json!(0));
    finished.terminal = true;
    vec![
        // A task's finish: state, one message with an id, the mark.
        (
            running("finish"),
            vec![(
                ChangeSet::state(json!({ "status": "completed" }))
                    .with_message(event("a1:finish"))
                    .with_terminal(true),
                exact(1),
            )],
        ),
        // Finished, changed while finished, un-finished, finished again.
        (
            running("flip"),
            vec![
                (ChangeSet::default().with_terminal(true), exact(1)),
                (ChangeSet::state(json!("while finished")), exact(2)),
                (
                    ChangeSet::default()
                        .with_message(NewMessage::new(json!("reopened")))
                        .with_terminal(false),
                    any,
                ),
                (
                    ChangeSet::state(json!("done")).with_terminal(true),
                    exact(4),
                ),
            ],
        ),
        // Duplicates: an id already in the log, one repeated in an append,
        // and an append of nothing but known ids (it changes nothing).
        (
            running("dups"),
            vec![
                (
                    ChangeSet::default()
                        .with_message(event("a1:start"))
                        .with_message(event("m1"))
                        .with_message(NewMessage::new(json!("no id")))
                        .with_message(event("m1"))
                        .with_message(event("m2")),
                    exact(1),
                ),
                (
                    ChangeSet::default()
                        .with_message(event("m2"))
                        .with_message(event("a1:start")),
                    exact(2),
                ),
                (ChangeSet::default(), any),
                (
                    ChangeSet::default()
                        .with_message(event("m3"))
                        .with_message(event("m3"))
                        .with_terminal(true),
                    any,
                ),
            ],
        ),
        // Created finished: an append that keeps the mark renews the
        // retention (without one, the key keeps the TTL it has: none).
        (
            finished,
            vec![(
                ChangeSet::state(json!(1)).with_message(NewMessage::new(json!("late"))),
                exact(1),
            )],
        ),
        // Finished, then un-finished again by the next append.
        (
            running("reopen"),
            vec![
                (
                    ChangeSet::state(json!("done")).with_terminal(true),
                    exact(1),
                ),
                (
                    ChangeSet::default()
                        .with_message(event("a2:start"))
                        .with_terminal(false),
                    exact(2),
                ),
            ],
        ),
        // Clearing the mark of a thread that was never finished.
        (
            running("never"),
            vec![(ChangeSet::default().with_terminal(false), exact(1))],
        ),
    ]
}

async fn append_batch_writes_what_appends_write(test: &str, retention: Option<Duration>) {
    let options = RedisStoreOptions::default().with_retention(retention);
    let Some(store) = shared_store_with(test, options).await else {
        return;
    };
    let url = shared_url(test);
    let mut conn = raw(&url).await;
    let prefix = store.prefix().to_owned();
    let (by_append, by_batch) = (append_shapes("s"), append_shapes("b"));
    let mut batch = Vec::new();
    for (thread, _) in by_append.iter().chain(&by_batch) {
        store.create(thread.clone()).await.expect("create");
    }
    // A thread key with a TTL set by hand: finishing it without a retention
    // keeps that TTL (a write to a hash keeps it).
    for id in [&by_append[0].0.id, &by_batch[0].0.id] {
        let _: () = redis::cmd("PEXPIRE")
            .arg(thread_key(&prefix, id))
            .arg(3_600_000)
            .query_async(&mut conn)
            .await
            .expect("PEXPIRE");
    }
    let mut expected = Vec::new();
    for (thread, appends) in &by_append {
        for (changes, precondition) in appends {
            let committed = store
                .append(&thread.id, changes.clone(), *precondition)
                .await
                .expect("append");
            expected.push(committed);
        }
    }
    // The appends of each thread, interleaved with the other threads'.
    let longest = by_batch.iter().map(|(_, a)| a.len()).max().unwrap_or(0);
    for step in 0..longest {
        for (thread, appends) in &by_batch {
            if let Some((changes, precondition)) = appends.get(step) {
                batch.push(AppendRequest {
                    id: thread.id.clone(),
                    changes: changes.clone(),
                    precondition: *precondition,
                });
            }
        }
    }
    let mut got: Vec<(String, task_store::Committed)> = batch
        .iter()
        .map(|request| request.id.clone())
        .zip(store.append_batch(batch.clone()).await)
        .map(|(id, result)| (id, result.expect("batched append")))
        .collect();
    // Back into the order of the sequential appends: thread by thread.
    got.sort_by_key(|(id, _)| {
        by_batch
            .iter()
            .position(|(thread, _)| thread.id == *id)
            .unwrap_or(usize::MAX)
    });
    let got: Vec<_> = got.into_iter().map(|(_, committed)| committed).collect();
    assert_eq!(got, expected, "what each append committed");
    for ((a, _), (b, _)) in by_append.iter().zip(&by_batch) {
        let (kind, parent) = (a.kind.as_str(), a.parent_id.as_deref());
        let one_by_one = written(&mut conn, &prefix, &a.id, kind, parent).await;
        let batched = written(&mut conn, &prefix, &b.id, kind, parent).await;
        assert_eq!(batched, one_by_one, "{}", a.id);
    }
    purge(&url, &prefix).await;
}

#[tokio::test]
async fn append_batch_writes_what_appends_write_with_a_retention() {
    append_batch_writes_what_appends_write(
        "append_batch_writes_what_appends_write_with_a_retention",
        Some(Duration::from_secs(3600)),
    )
    .await;
}

#[tokio::test]
async fn append_batch_writes_what_appends_write_without_a_retention() {
    append_batch_writes_what_appends_write(
        "append_batch_writes_what_appends_write_without_a_retention",
        None,
    )
    .await;
}

#[tokio::test]
async fn append_batch_larger_than_one_round_trip_keeps_each_threads_order() {
    let test = "append_batch_larger_than_one_round_trip_keeps_each_threads_order";
    let Some(store) = shared_store(test).await else {
        return;
    };
    let url = shared_url(test);
    const N: usize = 2500;
    let threads: Vec<Thread> = (0..N)
        .map(|i| Thread::new(format!("t{i:05}"), "task").with_state(json!(i)))
        .collect();
    for result in store.create_batch(threads).await {
        result.expect("created");
    }
    let append = |i: usize, version: u64, state: &str| AppendRequest {
        id: format!("t{i:05}"),
        changes: ChangeSet::state(json!(state)).with_message(NewMessage::with_id(state, json!(i))),
        precondition: VersionPrecondition::Exact(version),
    };
    let mut requests: Vec<AppendRequest> = (0..N).map(|i| append(i, 1, "first")).collect();
    // Later appends of threads whose first append is in another run and
    // another round trip: each must see its thread's first append.
    requests.push(append(0, 2, "second"));
    requests.push(append(2000, 2, "second"));
    requests.push(append(0, 3, "third"));
    requests.push(append(5, 1, "stale"));
    // One append with more messages than one Redis call takes at once.
    requests.push(AppendRequest {
        id: "t00007".to_owned(),
        changes: ChangeSet {
            messages: (0..2600)
                .map(|k| NewMessage::with_id(format!("many-{k}"), json!(k)))
                .chain([NewMessage::with_id("first", json!("known"))])
                .collect(),
            ..ChangeSet::default()
        },
        precondition: VersionPrecondition::Any,
    });
    let results = store.append_batch(requests).await;
    assert_eq!(results.len(), N + 5);
    for (i, result) in results[..N].iter().enumerate() {
        let committed = result.as_ref().expect("first appends apply");
        assert_eq!((committed.version, committed.last_seq), (2, 1), "t{i:05}");
    }
    let version = |k: usize| results[k].as_ref().expect("applied in order").version;
    assert_eq!((version(N), version(N + 1), version(N + 2)), (3, 3, 4));
    assert!(
        matches!(
            results[N + 3],
            Err(ThreadStoreError::VersionConflict {
                expected: 1,
                actual: 2,
                ..
            })
        ),
        "{:?}",
        results[N + 3]
    );
    let many = results[N + 4].as_ref().expect("many messages");
    assert_eq!(
        (many.version, many.last_seq, many.appended, many.skipped),
        (3, 2601, 2600, 1)
    );
    let head = store.load("t00000").await.expect("load").expect("t0");
    assert_eq!((head.version, head.state), (4, json!("third")));
    let log = store.load_all_messages("t00007").await.expect("log");
    assert_eq!(log.len(), 2601);
    assert_eq!(log[2600].body, json!(2599));
    purge(&url, store.prefix()).await;
}
