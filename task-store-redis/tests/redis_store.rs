//! Behaviours specific to the Redis backend: key layout, index maintenance,
//! retention, URL handling (the batch writes: `tests/batches.rs`). The
//! contract itself is checked by `tests/conformance.rs`.
//!
//! Size: about 760 lines, over the house limit of about 700: the index and
//! retention tests share the raw-key helpers of this file; the batch tests
//! were split off into `tests/batches.rs`.

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

use support::{keys_under, purge, raw, shared_store, shared_store_with, shared_url};

#[tokio::test]
async fn ids_with_tag_and_glob_characters_stay_in_one_tag_under_the_prefix() {
    let test = "ids_with_tag_and_glob_characters_stay_in_one_tag_under_the_prefix";
    let Some(store) = shared_store(test).await else {
        return;
    };
    let url = shared_url(test);
    let id = "we}ird{*?[]\\%:id";
    let parent = "own:er{1}";
    store
        .create(
            Thread::new(id, "task")
                .with_parent(parent)
                .with_state(json!({"n": 1}))
                .with_message(NewMessage::with_id("m{1}", json!("hello"))),
        )
        .await
        .expect("create");

    let head = store.load(id).await.expect("load").expect("present");
    assert_eq!(head.id, id);
    assert_eq!(head.parent_id.as_deref(), Some(parent));
    assert_eq!((head.version, head.last_seq), (1, 1));

    let prefix = store.prefix();
    let keys = keys_under(&url, prefix).await;
    let tag = "{we%7Dird%7B%2A%3F%5B%5D%5C%25%3Aid}";
    assert_eq!(
        keys,
        vec![
            format!("{prefix}:idx:all"),
            format!("{prefix}:idx:kind:task"),
            format!("{prefix}:idx:open:kind"),
            format!("{prefix}:idx:open:parent"),
            format!("{prefix}:idx:parent:own%3Aer%7B1%7D"),
            format!("{prefix}:idx:pk:own%3Aer%7B1%7D:task"),
            format!("{prefix}:{tag}:head"),
            format!("{prefix}:{tag}:log"),
            format!("{prefix}:{tag}:mids"),
        ]
    );
    let listed = store
        .list_all_threads(ThreadQuery::by_parent(parent))
        .await
        .expect("list");
    assert_eq!(listed, vec![id.to_owned()]);
    purge(&url, prefix).await;
}

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
            .contains(&format!("{prefix}:{{t1}}:head"))
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
        .arg(format!("{prefix}:{{t}}:head"))
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
    // What expiry does: the thread's keys vanish, its index entries stay.
    let mut conn = raw(&url).await;
    for i in [0, 3, 4, 5, 9] {
        let prefix = store.prefix();
        let _: () = redis::cmd("DEL")
            .arg(format!("{prefix}:{{t{i:02}}}:head"))
            .arg(format!("{prefix}:{{t{i:02}}}:log"))
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
    let members: Vec<String> = redis::cmd("ZRANGE")
        .arg(format!("{}:idx:parent:p", store.prefix()))
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .expect("ZRANGE");
    assert_eq!(members, vec!["t01", "t02", "t06", "t07", "t08"]);
    purge(&url, store.prefix()).await;
}

#[tokio::test]
async fn a_recreated_thread_keeps_its_index_entry_and_loses_the_old_one() {
    let test = "a_recreated_thread_keeps_its_index_entry_and_loses_the_old_one";
    let Some(store) = shared_store(test).await else {
        return;
    };
    let url = shared_url(test);
    store
        .create(Thread::new("t", "task").with_parent("old"))
        .await
        .expect("create");
    // Expired behind the index's back, then created again under another parent.
    let mut conn = raw(&url).await;
    let _: () = redis::cmd("DEL")
        .arg(format!("{}:{{t}}:head", store.prefix()))
        .query_async(&mut conn)
        .await
        .expect("DEL");
    store
        .create(Thread::new("t", "task").with_parent("new"))
        .await
        .expect("re-create");
    assert!(
        store
            .list_all_threads(ThreadQuery::by_parent("old"))
            .await
            .expect("list")
            .is_empty(),
        "the stale entry under the old parent is not listed"
    );
    assert_eq!(
        store
            .list_all_threads(ThreadQuery::by_parent("new"))
            .await
            .expect("list"),
        vec!["t"]
    );
    assert_eq!(
        store
            .list_all_threads(ThreadQuery::default())
            .await
            .expect("list"),
        vec!["t"]
    );
    purge(&url, store.prefix()).await;
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
    let ttls = |conn: &mut redis::aio::MultiplexedConnection| {
        let mut pipe = redis::pipe();
        for key in ["head", "log", "mids"] {
            pipe.cmd("PTTL").arg(format!("{prefix}:{{t}}:{key}"));
        }
        let mut conn = conn.clone();
        async move { pipe.query_async::<Vec<i64>>(&mut conn).await.expect("PTTL") }
    };

    let created = store
        .create(Thread::new("t", "task").with_message(NewMessage::with_id("m1", json!(1))))
        .await
        .expect("create");
    assert_eq!(ttls(&mut conn).await, vec![-1, -1, -1], "running: no TTL");

    let done = ChangeSet::state(json!({"status": "completed"}))
        .with_message(NewMessage::with_id("m2", json!(2)))
        .with_terminal(true);
    store
        .append("t", done, VersionPrecondition::Exact(created.version))
        .await
        .expect("finish");
    let after_finish = ttls(&mut conn).await;
    assert!(
        after_finish
            .iter()
            .all(|&ttl| ttl > 3_500_000 && ttl <= 3_600_000),
        "finished: every key expires after the retention: {after_finish:?}"
    );
    assert!(store.load("t").await.expect("load").expect("kept").terminal);

    store
        .append(
            "t",
            ChangeSet::default().with_terminal(false),
            VersionPrecondition::Any,
        )
        .await
        .expect("reopen");
    assert_eq!(ttls(&mut conn).await, vec![-1, -1, -1], "reopened: no TTL");
    purge(&url, &prefix).await;
}

/// The members of a sorted set, in order.
async fn members(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> Vec<String> {
    redis::cmd("ZRANGE")
        .arg(key)
        .arg(0)
        .arg(-1)
        .query_async(conn)
        .await
        .expect("ZRANGE")
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
        format!("{prefix}:idx:open:kind"),
        format!("{prefix}:idx:open:parent"),
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
    // Wait for the server to expire it (1 ms), by asking it.
    let mut expired = false;
    for _ in 0..10_000 {
        if store.load("t1").await.expect("load").is_none() {
            expired = true;
            break;
        }
    }
    assert!(expired, "the server expired the finished thread");
    store.sweep_expired(100).await.expect("sweep");
    for index in ["all", "kind:task", "parent:p", "pk:p:task"] {
        let listed = members(&mut conn, &format!("{prefix}:idx:{index}")).await;
        assert!(
            !listed.iter().any(|m| m == "t1"),
            "{index} still lists the expired thread: {listed:?}"
        );
    }
    assert_eq!(
        members(&mut conn, &by_kind).await,
        ["job\0lone", "task\0t2"]
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
        .arg(format!("{}:{{t}}:head", store.prefix()))
        .query_async(&mut conn)
        .await
        .expect("PTTL");
    assert_eq!(ttl, -1);
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
    let options = RedisStoreOptions::default()
        .with_retention(Some(Duration::from_millis(1)))
        .with_sweep_interval(None);
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

    // Wait for the server to expire the finished thread (1 ms), by asking it.
    let mut conn = raw(&url).await;
    let head = format!("{prefix}:{{gone}}:head");
    let mut expired = false;
    for _ in 0..10_000 {
        let exists: u64 = redis::cmd("EXISTS")
            .arg(&head)
            .query_async(&mut conn)
            .await
            .expect("EXISTS");
        if exists == 0 {
            expired = true;
            break;
        }
    }
    assert!(expired, "the server expired the finished thread");

    assert_eq!(store.sweep_expired(100).await.expect("sweep"), 1);
    for index in ["all", "kind:task", "parent:p", "pk:p:task"] {
        let members: Vec<String> = redis::cmd("ZRANGE")
            .arg(format!("{prefix}:idx:{index}"))
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await
            .expect("ZRANGE");
        assert_eq!(members, vec!["kept"], "{index}");
    }
    let left: u64 = redis::cmd("ZCARD")
        .arg(format!("{prefix}:idx:expiring"))
        .query_async(&mut conn)
        .await
        .expect("ZCARD");
    assert_eq!(left, 0);
    assert_eq!(store.sweep_expired(100).await.expect("sweep"), 0);
    purge(&url, &prefix).await;
}

#[tokio::test]
async fn the_background_sweeper_cleans_indexes_by_itself() {
    let test = "the_background_sweeper_cleans_indexes_by_itself";
    let options = RedisStoreOptions::default()
        .with_retention(Some(Duration::from_millis(1)))
        .with_sweep_interval(Some(Duration::from_millis(20)));
    let Some(store) = shared_store_with(test, options).await else {
        return;
    };
    let url = shared_url(test);
    let prefix = store.prefix().to_owned();
    let mut finished = Thread::new("gone", "task").with_parent("p");
    finished.terminal = true;
    store.create(finished).await.expect("create");

    // Poll the server (bounded) until the sweeper has emptied the index.
    let mut conn = raw(&url).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let members: u64 = redis::cmd("ZCARD")
            .arg(format!("{prefix}:idx:parent:p"))
            .query_async(&mut conn)
            .await
            .expect("ZCARD");
        if members == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the sweeper did not clean the index within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    purge(&url, &prefix).await;
}
