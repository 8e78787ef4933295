//! Behaviours specific to the Redis backend: index maintenance, retention,
//! URL handling (the batch writes: `tests/batches.rs`; the key layout and
//! shards: `tests/layout.rs`). The contract itself is checked by
//! `tests/conformance.rs` and `tests/conformance_sharded.rs`.
//!
//! Size: about 740 lines, over the house limit of about 700: the index and
//! retention tests look at the keys of layout 2 through the helpers of
//! `tests/support`; the batch and layout tests were split off.

mod support;

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use task_store::{
    AppendRequest, ChangeSet, NewMessage, Thread, ThreadQuery, ThreadReader, ThreadReaderExt,
    ThreadStoreError, ThreadWriter, VersionPrecondition,
};
use task_store_redis::{RedisStore, RedisStoreOptions};
use task_testkit::redis_server::unique_prefix;

use support::{
    expiring_options, keys_under, members, purge, raw, shard_key, shared_store, shared_store_with,
    shared_url, thread_key, wait_until_expired,
};

#[tokio::test]
async fn the_url_prefix_parameter_sets_the_prefix() {
    let test = "the_url_prefix_parameter_sets_the_prefix";
    let Some(url) = task_testkit::redis_server::shared_redis_url(test) else {
        return;
    };
    let prefix = unique_prefix(test);
    let separator = if url.contains('?') { '&' } else { '?' };
    let store = RedisStore::connect(&format!("{url}{separator}prefix={prefix}"))
        .await
        .expect("connect");
    assert_eq!(store.prefix(), prefix);
    assert_eq!(
        store.options().prefix,
        prefix,
        "the options show the prefix in effect"
    );
    store
        .create(Thread::new("t1", "task"))
        .await
        .expect("create");
    assert!(
        keys_under(&url, &prefix)
            .await
            .contains(&thread_key(&prefix, "t1"))
    );
    purge(&url, &prefix).await;
}

#[tokio::test]
async fn the_url_retention_parameter_sets_the_retention() {
    let test = "the_url_retention_parameter_sets_the_retention";
    let Some(url) = task_testkit::redis_server::shared_redis_url(test) else {
        return;
    };
    let prefix = unique_prefix(test);
    let separator = if url.contains('?') { '&' } else { '?' };
    let store = RedisStore::connect(&format!("{url}{separator}prefix={prefix}&retention=1h"))
        .await
        .expect("connect");
    assert_eq!(store.options().retention, Some(Duration::from_secs(3600)));
    let mut finished = Thread::new("t", "task");
    finished.terminal = true;
    store.create(finished).await.expect("create");
    let mut conn = raw(&url).await;
    let ttl: i64 = redis::cmd("PTTL")
        .arg(thread_key(&prefix, "t"))
        .query_async(&mut conn)
        .await
        .expect("PTTL");
    assert!(
        ttl > 3_500_000 && ttl <= 3_600_000,
        "a finished thread expires after the URL's retention: {ttl}"
    );
    purge(&url, &prefix).await;
}

#[tokio::test]
async fn bad_prefixes_and_urls_are_refused_before_connecting() {
    for (url, options) in [
        (
            "redis://127.0.0.1:1/?prefix=a*b",
            RedisStoreOptions::default(),
        ),
        (
            "redis://127.0.0.1:1/",
            RedisStoreOptions::default().with_prefix("{tag}"),
        ),
        ("not a url", RedisStoreOptions::default()),
        (
            "redis://127.0.0.1:1/?prefx=typo",
            RedisStoreOptions::default(),
        ),
        (
            "redis://127.0.0.1:1/?retention=7w",
            RedisStoreOptions::default(),
        ),
        ("http://127.0.0.1:1/", RedisStoreOptions::default()),
    ] {
        let err = RedisStore::connect_with(url, options)
            .await
            .expect_err("refused");
        assert!(
            matches!(err, ThreadStoreError::InvalidInput { .. }),
            "{url}: {err:?}"
        );
    }
}

#[tokio::test]
async fn an_unreachable_server_is_a_retryable_error() {
    // Port 1 on loopback: nothing listens there.
    let started = std::time::Instant::now();
    let err = RedisStore::connect_with("redis://127.0.0.1:1/", support::fast_options())
        .await
        .expect_err("nothing listens");
    assert!(err.is_retryable(), "{err:?}");
    assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn save_moving_a_thread_updates_its_index_entries() {
    let test = "save_moving_a_thread_updates_its_index_entries";
    let Some(store) = shared_store(test).await else {
        return;
    };
    store
        .create(Thread::new("t", "task").with_parent("alice"))
        .await
        .expect("create");
    let saved = store
        .save(Thread::new("t", "job").with_parent("bob"))
        .await
        .expect("save moves it");
    assert_eq!(saved.version, 2);
    let list = |q: ThreadQuery| {
        let store = store.clone();
        async move { store.list_all_threads(q).await.expect("list") }
    };
    assert!(list(ThreadQuery::by_parent("alice")).await.is_empty());
    assert!(list(ThreadQuery::by_kind("task")).await.is_empty());
    assert_eq!(list(ThreadQuery::by_parent("bob")).await, vec!["t"]);
    assert_eq!(
        list(ThreadQuery::by_parent("bob").with_kind("job")).await,
        vec!["t"]
    );
    assert!(
        list(ThreadQuery::by_parent("alice").with_kind("task"))
            .await
            .is_empty()
    );

    // Without a parent, the parent indexes let it go.
    store.save(Thread::new("t", "job")).await.expect("save");
    assert!(list(ThreadQuery::by_parent("bob")).await.is_empty());
    assert_eq!(list(ThreadQuery::by_kind("job")).await, vec!["t"]);
    purge(&shared_url(test), store.prefix()).await;
}

#[tokio::test]
async fn listing_skips_and_drops_entries_of_threads_that_are_gone() {
    let test = "listing_skips_and_drops_entries_of_threads_that_are_gone";
    let Some(store) = shared_store(test).await else {
        return;
    };
    let url = shared_url(test);
    for i in 0..10 {
        store
            .create(Thread::new(format!("t{i:02}"), "task").with_parent("p"))
            .await
            .expect("create");
    }
    // What expiry does: the thread's key vanishes, its index entries stay.
    let mut conn = raw(&url).await;
    for i in [0, 3, 4, 5, 9] {
        let _: () = redis::cmd("DEL")
            .arg(thread_key(store.prefix(), &format!("t{i:02}")))
            .query_async(&mut conn)
            .await
            .expect("DEL");
    }
    let page = store
        .list_threads(ThreadQuery::by_parent("p").with_limit(2))
        .await
        .expect("page 1");
    assert_eq!(page.ids, vec!["t01", "t02"]);
    let page = store
        .list_threads(
            ThreadQuery::by_parent("p")
                .with_limit(2)
                .with_after(page.next.expect("more")),
        )
        .await
        .expect("page 2");
    assert_eq!(page.ids, vec!["t06", "t07"]);
    let page = store
        .list_threads(
            ThreadQuery::by_parent("p")
                .with_limit(2)
                .with_after(page.next.expect("more")),
        )
        .await
        .expect("page 3");
    assert_eq!(page.ids, vec!["t08"]);
    assert_eq!(page.next, None);

    // The stale entries passed over were removed from the index.
    assert_eq!(
        members(&mut conn, &shard_key(store.prefix(), "parent")).await,
        ["t01", "t02", "t06", "t07", "t08"].map(|id| format!("p\0task\0{id}"))
    );
    purge(&url, store.prefix()).await;
}

#[tokio::test]
async fn a_recreated_thread_keeps_its_index_entry_and_loses_the_old_one() {
    let test = "a_recreated_thread_keeps_its_index_entry_and_loses_the_old_one";
    let options = expiring_options();
    let Some(store) = shared_store_with(test, options).await else {
        return;
    };
    let url = shared_url(test);
    let mut finished = Thread::new("t", "task").with_parent("old");
    finished.terminal = true;
    store.create(finished).await.expect("create");
    // Expired (its index entries outlive it until swept), then created again
    // under another kind and parent, before any sweep.
    let mut conn = raw(&url).await;
    wait_until_expired(&mut conn, &thread_key(store.prefix(), "t")).await;
    store
        .create(Thread::new("t", "job").with_parent("new"))
        .await
        .expect("re-create");
    let list = |query: ThreadQuery| {
        let store = store.clone();
        async move { store.list_all_threads(query).await.expect("list") }
    };
    assert!(
        list(ThreadQuery::by_parent("old")).await.is_empty(),
        "the stale entry under the old parent is not listed"
    );
    assert!(
        list(ThreadQuery::by_kind("task")).await.is_empty(),
        "the stale entry under the old kind is not listed"
    );
    assert_eq!(list(ThreadQuery::by_parent("new")).await, vec!["t"]);
    assert_eq!(list(ThreadQuery::by_kind("job")).await, vec!["t"]);
    assert_eq!(list(ThreadQuery::default()).await, vec!["t"], "listed once");
    purge(&url, store.prefix()).await;
}

#[tokio::test]
async fn sweeping_a_recreated_thread_drops_its_old_entries_and_keeps_its_new_ones() {
    let test = "sweeping_a_recreated_thread_drops_its_old_entries_and_keeps_its_new_ones";
    let options = expiring_options();
    let Some(store) = shared_store_with(test, options).await else {
        return;
    };
    let url = shared_url(test);
    let prefix = store.prefix().to_owned();
    let mut finished = Thread::new("t", "task").with_parent("old");
    finished.terminal = true;
    store.create(finished).await.expect("create");
    let mut conn = raw(&url).await;
    wait_until_expired(&mut conn, &thread_key(&prefix, "t")).await;
    store
        .create(Thread::new("t", "job").with_parent("new"))
        .await
        .expect("re-create");

    // The due entry's key lives (as another thread): nothing was swept.
    assert_eq!(store.sweep_expired(100).await.expect("sweep"), 0);
    assert_eq!(
        members(&mut conn, &shard_key(&prefix, "kind")).await,
        ["job\0t"]
    );
    assert_eq!(
        members(&mut conn, &shard_key(&prefix, "parent")).await,
        ["new\0job\0t"]
    );
    assert_eq!(
        members(&mut conn, &shard_key(&prefix, "open:parent")).await,
        ["new\0job\0t"]
    );
    assert!(
        members(&mut conn, &shard_key(&prefix, "expiring"))
            .await
            .is_empty()
    );
    let head = store.load("t").await.expect("load").expect("recreated");
    assert_eq!((head.kind.as_str(), head.version), ("job", 1));
    purge(&url, &prefix).await;
}

#[tokio::test]
async fn retention_sets_a_ttl_on_finished_threads_and_clearing_the_mark_removes_it() {
    let test = "retention_sets_a_ttl_on_finished_threads_and_clearing_the_mark_removes_it";
    let options = RedisStoreOptions::default().with_retention(Some(Duration::from_secs(3600)));
    let Some(store) = shared_store_with(test, options).await else {
        return;
    };
    let url = shared_url(test);
    let mut conn = raw(&url).await;
    let prefix = store.prefix().to_owned();
    let key = thread_key(&prefix, "t");
    let expiring = shard_key(&prefix, "expiring");
    let ttl = |conn: &mut redis::aio::MultiplexedConnection| {
        let mut cmd = redis::cmd("PTTL");
        cmd.arg(&key);
        let mut conn = conn.clone();
        async move { cmd.query_async::<i64>(&mut conn).await.expect("PTTL") }
    };

    let created = store
        .create(Thread::new("t", "task").with_message(NewMessage::with_id("m1", json!(1))))
        .await
        .expect("create");
    assert_eq!(ttl(&mut conn).await, -1, "running: no TTL");
    assert!(members(&mut conn, &expiring).await.is_empty());

    let done = ChangeSet::state(json!({"status": "completed"}))
        .with_message(NewMessage::with_id("m2", json!(2)))
        .with_terminal(true);
    store
        .append("t", done, VersionPrecondition::Exact(created.version))
        .await
        .expect("finish");
    let after_finish = ttl(&mut conn).await;
    assert!(
        after_finish > 3_500_000 && after_finish <= 3_600_000,
        "finished: the thread's key expires after the retention: {after_finish}"
    );
    assert_eq!(members(&mut conn, &expiring).await, ["t\ntask\n"]);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as f64;
    let due: f64 = redis::cmd("ZSCORE")
        .arg(&expiring)
        .arg("t\ntask\n")
        .query_async(&mut conn)
        .await
        .expect("ZSCORE");
    assert!(
        (due - now_ms - 3_600_000.0).abs() < 60_000.0,
        "the expiry set records when the key expires: {due} (now {now_ms})"
    );
    let head = store.load("t").await.expect("load").expect("kept");
    assert!(head.terminal);
    assert_eq!(store.load_all_messages("t").await.expect("log").len(), 2);

    store
        .append(
            "t",
            ChangeSet::default().with_terminal(false),
            VersionPrecondition::Any,
        )
        .await
        .expect("reopen");
    assert_eq!(ttl(&mut conn).await, -1, "reopened: no TTL");
    assert!(
        members(&mut conn, &expiring).await.is_empty(),
        "reopened: no longer expiring"
    );
    purge(&url, &prefix).await;
}

#[tokio::test]
async fn the_open_index_holds_exactly_the_open_threads_through_every_write() {
    let test = "the_open_index_holds_exactly_the_open_threads_through_every_write";
    let Some(store) = shared_store(test).await else {
        return;
    };
    let url = shared_url(test);
    let mut conn = raw(&url).await;
    let prefix = store.prefix().to_owned();
    let (by_kind, by_parent) = (
        shard_key(&prefix, "open:kind"),
        shard_key(&prefix, "open:parent"),
    );
    let mut threads = Vec::new();
    for i in 0..6 {
        let mut thread = Thread::new(format!("t{i}"), "task").with_parent("p");
        thread.terminal = i % 2 == 1;
        threads.push(thread);
    }
    threads.push(Thread::new("lone", "job"));
    for result in store.create_batch(threads).await {
        result.expect("created");
    }
    assert_eq!(
        members(&mut conn, &by_kind).await,
        ["job\0lone", "task\0t0", "task\0t2", "task\0t4"]
    );
    assert_eq!(
        members(&mut conn, &by_parent).await,
        ["p\0task\0t0", "p\0task\0t2", "p\0task\0t4"]
    );

    // Finish one, reopen a finished one, reparent one, delete one.
    let finish = |id: &str, terminal: bool| AppendRequest {
        id: id.to_owned(),
        changes: ChangeSet::default().with_terminal(terminal),
        precondition: VersionPrecondition::Any,
    };
    for result in store
        .append_batch(vec![finish("t0", true), finish("t1", false)])
        .await
    {
        result.expect("appended");
    }
    store
        .save(Thread::new("t2", "task").with_parent("q"))
        .await
        .expect("save");
    store.delete("t4").await.expect("delete");
    assert_eq!(
        members(&mut conn, &by_kind).await,
        ["job\0lone", "task\0t1", "task\0t2"]
    );
    assert_eq!(
        members(&mut conn, &by_parent).await,
        ["p\0task\0t1", "q\0task\0t2"]
    );
    assert_eq!(
        store
            .list_all_threads(ThreadQuery::default().open_only())
            .await
            .expect("list"),
        ["lone", "t1", "t2"]
    );

    // Finished threads expire and are swept; the open ones stay listed.
    let store = RedisStore::connect_with(
        &url,
        RedisStoreOptions::default()
            .with_prefix(&prefix)
            .with_retention(Some(Duration::from_millis(1)))
            .with_sweep_interval(None),
    )
    .await
    .expect("connect with a retention");
    store
        .append(
            "t1",
            ChangeSet::default().with_terminal(true),
            VersionPrecondition::Any,
        )
        .await
        .expect("finish t1");
    wait_until_expired(&mut conn, &thread_key(&prefix, "t1")).await;
    assert_eq!(store.sweep_expired(100).await.expect("sweep"), 1);
    assert_eq!(
        members(&mut conn, &shard_key(&prefix, "kind")).await,
        ["job\0lone", "task\0t0", "task\0t2", "task\0t3", "task\0t5"],
        "every thread but the expired one and the deleted one"
    );
    assert_eq!(
        members(&mut conn, &shard_key(&prefix, "parent")).await,
        ["p\0task\0t0", "p\0task\0t3", "p\0task\0t5", "q\0task\0t2"]
    );
    assert_eq!(
        members(&mut conn, &by_kind).await,
        ["job\0lone", "task\0t2"]
    );
    assert_eq!(members(&mut conn, &by_parent).await, ["q\0task\0t2"]);
    assert!(
        members(&mut conn, &shard_key(&prefix, "expiring"))
            .await
            .is_empty()
    );
    purge(&url, &prefix).await;
}

#[tokio::test]
async fn without_retention_finished_threads_are_kept() {
    let test = "without_retention_finished_threads_are_kept";
    let Some(store) = shared_store(test).await else {
        return;
    };
    let url = shared_url(test);
    let mut thread = Thread::new("t", "task");
    thread.terminal = true;
    store.create(thread).await.expect("create");
    let mut conn = raw(&url).await;
    let ttl: i64 = redis::cmd("PTTL")
        .arg(thread_key(store.prefix(), "t"))
        .query_async(&mut conn)
        .await
        .expect("PTTL");
    assert_eq!(ttl, -1, "the finished thread's key has no TTL");
    assert!(
        members(&mut conn, &shard_key(store.prefix(), "expiring"))
            .await
            .is_empty(),
        "nothing is expiring"
    );
    assert!(store.load("t").await.expect("load").expect("kept").terminal);
    purge(&url, store.prefix()).await;
}

#[tokio::test]
async fn append_batch_gives_one_result_per_request_in_order() {
    let test = "append_batch_gives_one_result_per_request_in_order";
    let Some(store) = shared_store(test).await else {
        return;
    };
    store
        .create(Thread::new("a", "task"))
        .await
        .expect("create a");
    store
        .create(Thread::new("b", "task"))
        .await
        .expect("create b");
    let request = |id: &str, precondition, message: &str| AppendRequest {
        id: id.to_owned(),
        changes: ChangeSet::default().with_message(NewMessage::with_id(message, json!(message))),
        precondition,
    };
    let results = store
        .append_batch(vec![
            request("a", VersionPrecondition::Exact(1), "a1"),
            request("a", VersionPrecondition::Exact(2), "a2"),
            request("b", VersionPrecondition::Exact(7), "b1"),
            request("missing", VersionPrecondition::Any, "x"),
            request("", VersionPrecondition::Any, "x"),
            request("a", VersionPrecondition::Any, "a1"),
        ])
        .await;
    assert_eq!(results.len(), 6);
    let committed = results[0].as_ref().expect("a1 applied");
    assert_eq!((committed.version, committed.last_seq), (2, 1));
    let committed = results[1].as_ref().expect("a2 applied after a1");
    assert_eq!((committed.version, committed.last_seq), (3, 2));
    assert!(
        matches!(
            results[2],
            Err(ThreadStoreError::VersionConflict {
                expected: 7,
                actual: 1,
                ..
            })
        ),
        "{:?}",
        results[2]
    );
    assert!(
        matches!(results[3], Err(ThreadStoreError::NotFound { .. })),
        "{:?}",
        results[3]
    );
    assert!(
        matches!(results[4], Err(ThreadStoreError::InvalidInput { .. })),
        "{:?}",
        results[4]
    );
    let duplicate = results[5].as_ref().expect("duplicate is fine");
    assert_eq!(
        (duplicate.version, duplicate.appended, duplicate.skipped),
        (3, 0, 1)
    );
    assert!(store.append_batch(Vec::new()).await.is_empty());
    purge(&shared_url(test), store.prefix()).await;
}

#[tokio::test]
async fn many_concurrent_compare_and_swap_writers_lose_no_update() {
    let test = "many_concurrent_compare_and_swap_writers_lose_no_update";
    let Some(store) = shared_store(test).await else {
        return;
    };
    let store = Arc::new(store);
    store
        .create(Thread::new("counter", "task").with_state(json!(0)))
        .await
        .expect("create");
    let workers = (0..8).map(|_| {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            let mut conflicts = 0u32;
            for _ in 0..25 {
                loop {
                    let head = store.load("counter").await.expect("load").expect("present");
                    let n = head.state.as_u64().expect("a number");
                    match store
                        .append(
                            "counter",
                            ChangeSet::state(json!(n + 1)),
                            VersionPrecondition::Exact(head.version),
                        )
                        .await
                    {
                        Ok(_) => break,
                        Err(ThreadStoreError::VersionConflict {
                            expected, actual, ..
                        }) => {
                            assert!(actual > expected, "{expected} -> {actual}");
                            conflicts += 1;
                        }
                        Err(other) => panic!("unexpected {other:?}"),
                    }
                }
            }
            conflicts
        })
    });
    for worker in futures::future::join_all(workers).await {
        worker.expect("worker");
    }
    let head = store.load("counter").await.expect("load").expect("present");
    assert_eq!(head.state, json!(200));
    assert_eq!(head.version, 201);
    purge(&shared_url(test), store.prefix()).await;
}

#[tokio::test]
async fn a_large_log_pages_through_in_order() {
    let test = "a_large_log_pages_through_in_order";
    let Some(store) = shared_store(test).await else {
        return;
    };
    store
        .create(Thread::new("t", "task"))
        .await
        .expect("create");
    let batch: Vec<NewMessage> = (0..2500).map(|i| NewMessage::new(json!(i))).collect();
    let changes = ChangeSet {
        messages: batch,
        ..ChangeSet::default()
    };
    let committed = store
        .append("t", changes, VersionPrecondition::Exact(1))
        .await
        .expect("append");
    assert_eq!((committed.appended, committed.last_seq), (2500, 2500));
    let all = store.load_all_messages("t").await.expect("read");
    assert_eq!(all.len(), 2500);
    assert!(
        all.iter()
            .enumerate()
            .all(|(i, m)| m.seq == i as u64 + 1 && m.body == json!(i))
    );
    purge(&shared_url(test), store.prefix()).await;
}

#[tokio::test]
async fn expired_threads_leave_every_index_when_swept() {
    let test = "expired_threads_leave_every_index_when_swept";
    let options = expiring_options();
    let Some(store) = shared_store_with(test, options).await else {
        return;
    };
    let url = shared_url(test);
    let prefix = store.prefix().to_owned();
    let mut finished = Thread::new("gone", "task").with_parent("p");
    finished.terminal = true;
    store.create(finished).await.expect("create");
    store
        .create(Thread::new("kept", "task").with_parent("p"))
        .await
        .expect("create");

    let mut conn = raw(&url).await;
    let expiring = shard_key(&prefix, "expiring");
    assert_eq!(members(&mut conn, &expiring).await, ["gone\ntask\np"]);
    wait_until_expired(&mut conn, &thread_key(&prefix, "gone")).await;

    assert_eq!(store.sweep_expired(100).await.expect("sweep"), 1);
    for (set, kept) in [
        ("kind", "task\0kept"),
        ("parent", "p\0task\0kept"),
        ("open:kind", "task\0kept"),
        ("open:parent", "p\0task\0kept"),
    ] {
        assert_eq!(
            members(&mut conn, &shard_key(&prefix, set)).await,
            [kept],
            "{set}"
        );
    }
    assert!(members(&mut conn, &expiring).await.is_empty());
    assert_eq!(store.sweep_expired(100).await.expect("sweep"), 0);
    purge(&url, &prefix).await;
}

#[tokio::test]
async fn the_background_sweeper_cleans_indexes_by_itself() {
    let test = "the_background_sweeper_cleans_indexes_by_itself";
    let options = expiring_options().with_sweep_interval(Some(Duration::from_millis(20)));
    let Some(store) = shared_store_with(test, options).await else {
        return;
    };
    let url = shared_url(test);
    let prefix = store.prefix().to_owned();
    let mut finished = Thread::new("gone", "task").with_parent("p");
    finished.terminal = true;
    store.create(finished).await.expect("create");
    store
        .create(Thread::new("kept", "task").with_parent("p"))
        .await
        .expect("create");

    // Poll the server (bounded) until the sweeper has cleaned the indexes.
    let mut conn = raw(&url).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (parent, expiring) = (
            members(&mut conn, &shard_key(&prefix, "parent")).await,
            members(&mut conn, &shard_key(&prefix, "expiring")).await,
        );
        if parent == ["p\0task\0kept"] && expiring.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the sweeper did not clean the indexes within 10 s: {parent:?}, {expiring:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    purge(&url, &prefix).await;
}
