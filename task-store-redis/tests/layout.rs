//! The key layout of the Redis backend (layout 2, see the crate docs): the
//! layout record and the shard count it fixes, the refusal of a store of
//! layout 1, where a thread's index entries live and move, and ids with
//! special characters, whose encoding the scripts must repeat exactly.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::json;
use task_store::{
    NewMessage, Thread, ThreadQuery, ThreadReader, ThreadReaderExt, ThreadStoreError, ThreadWriter,
};
use task_store_redis::{RedisStore, RedisStoreOptions};
use task_testkit::redis_server::{shared_redis_url, unique_prefix};

use support::{
    SHARD_SETS, expiring_options, keys_under, members, purge, raw, shard_key, shard_key_in,
    shard_of, shard_tag, shared_store, shared_store_with, shared_url, thread_key, thread_key_in,
    wait_until_expired,
};

/// `url` with the query parameters `params` (`a=1&b=2`) added.
fn with_params(url: &str, params: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}{params}")
}

/// The value of the layout record under `prefix`, if any.
async fn layout_record(
    conn: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
) -> Option<String> {
    redis::cmd("GET")
        .arg(format!("{prefix}:layout"))
        .query_async(conn)
        .await
        .expect("GET")
}

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
    let key = format!("{prefix}:{{0.0}}:t:we%7Dird%7B%2A%3F%5B%5D%5C%25%3Aid");
    assert_eq!(
        key,
        thread_key(prefix, id),
        "the tests' encoder is the store's"
    );
    assert_eq!(
        keys,
        vec![
            format!("{prefix}:layout"),
            format!("{prefix}:{{0.0}}:kind"),
            format!("{prefix}:{{0.0}}:open:kind"),
            format!("{prefix}:{{0.0}}:open:parent"),
            format!("{prefix}:{{0.0}}:parent"),
            key.clone(),
        ]
    );
    // The raw id, parent and message id are kept inside the key, not in its name.
    let mut conn = raw(&url).await;
    let fields: Vec<Option<String>> = redis::cmd("HMGET")
        .arg(&key)
        .arg(&["id", "parent", "i:m{1}", "m:1"])
        .query_async(&mut conn)
        .await
        .expect("HMGET");
    assert_eq!(
        fields,
        [
            Some(id.to_owned()),
            Some(parent.to_owned()),
            Some("1".to_owned()),
            Some(r#"{"id":"m{1}","body":"hello"}"#.to_owned()),
        ]
    );
    assert_eq!(
        members(&mut conn, &shard_key(prefix, "parent")).await,
        [format!("{parent}\0task\0{id}")]
    );
    assert_eq!(
        members(&mut conn, &shard_key(prefix, "kind")).await,
        [format!("task\0{id}")]
    );
    let listed = store
        .list_all_threads(ThreadQuery::by_parent(parent))
        .await
        .expect("list");
    assert_eq!(listed, vec![id.to_owned()]);
    purge(&url, prefix).await;
}

#[tokio::test]
async fn a_prefix_holding_layout_one_keys_is_refused_at_connect_and_left_alone() {
    let test = "a_prefix_holding_layout_one_keys_is_refused_at_connect_and_left_alone";
    let Some(url) = shared_redis_url(test) else {
        return;
    };
    let mut conn = raw(&url).await;
    for (marker, command, args) in [
        ("idx:all", "ZADD", vec!["0", "t"]),
        ("idx:all", "SET", vec!["not even a sorted set"]),
        ("idx:open:kind", "ZADD", vec!["0", "task\0t"]),
        ("idx:expiring", "ZADD", vec!["1", "t\ntask\n"]),
    ] {
        let prefix = unique_prefix(test);
        let marker = format!("{prefix}:{marker}");
        // A thread of layout 1 and one of its index keys.
        let head = format!("{prefix}:{{t}}:head");
        let _: () = redis::pipe()
            .cmd("HSET")
            .arg(&head)
            .arg(&["v", "1", "seq", "0", "kind", "task"])
            .ignore()
            .cmd(command)
            .arg(&marker)
            .arg(&args)
            .ignore()
            .query_async(&mut conn)
            .await
            .expect("write layout 1");
        for params in [
            format!("prefix={prefix}"),
            format!("prefix={prefix}&shards=1"),
        ] {
            let err = RedisStore::connect(&with_params(&url, &params))
                .await
                .expect_err("layout 1 is refused");
            let ThreadStoreError::Unsupported { reason } = &err else {
                panic!("{marker}: expected Unsupported, got {err:?}");
            };
            assert!(!err.is_retryable(), "{err:?}");
            for what in [
                prefix.as_str(),
                marker.as_str(),
                "layout 1",
                "delete its keys",
                "another prefix",
            ] {
                assert!(reason.contains(what), "{marker}: {what:?} not in {reason}");
            }
        }
        let mut expected = vec![head.clone(), marker.clone()];
        expected.sort();
        assert_eq!(
            keys_under(&url, &prefix).await,
            expected,
            "nothing written, no layout record"
        );

        // Doing what the message says (deleting the keys) lets it open.
        purge(&url, &prefix).await;
        let store = RedisStore::connect(&with_params(&url, &format!("prefix={prefix}")))
            .await
            .expect("an empty prefix opens");
        assert_eq!(
            layout_record(&mut conn, &prefix).await.as_deref(),
            Some("layout=2 shards=1")
        );
        assert_eq!(store.load("t").await.expect("load"), None);
        purge(&url, &prefix).await;
    }
}

#[tokio::test]
async fn the_layout_record_fixes_the_shard_count_of_a_store() {
    let test = "the_layout_record_fixes_the_shard_count_of_a_store";
    let Some(single) = shared_store(test).await else {
        return;
    };
    let url = shared_url(test);
    let mut conn = raw(&url).await;
    assert_eq!(single.shards(), 1);
    assert_eq!(
        layout_record(&mut conn, single.prefix()).await.as_deref(),
        Some("layout=2 shards=1"),
        "recorded on the first connect"
    );

    // A store of four shards: its threads and sets spread over four tags.
    let prefix = unique_prefix(test);
    let open = |params: &str| {
        let url = with_params(&url, &format!("prefix={prefix}{params}"));
        async move { RedisStore::connect(&url).await }
    };
    let store = open("&shards=4").await.expect("a store of four shards");
    assert_eq!(store.shards(), 4);
    assert_eq!(
        layout_record(&mut conn, &prefix).await.as_deref(),
        Some("layout=2 shards=4")
    );
    let ids: Vec<String> = (0..64).map(|i| format!("t{i:02}")).collect();
    let threads = ids
        .iter()
        .map(|id| Thread::new(id, "task").with_parent("p"))
        .collect();
    for result in store.create_batch(threads).await {
        result.expect("created");
    }
    let tags: BTreeSet<String> = keys_under(&url, &prefix)
        .await
        .iter()
        .filter_map(|key| Some(key.split_once('{')?.1.split_once('}')?.0.to_owned()))
        .collect();
    let expected: BTreeSet<String> = (0..4).map(|shard| shard_tag(shard, 4)).collect();
    assert_eq!(tags, expected);
    assert_eq!(
        tags,
        ["0.1", "1.3", "2.1", "3.3"].map(String::from).into(),
        "the tags of layout 2 never change"
    );
    for shard in 0..4 {
        let of_shard: Vec<String> = ids
            .iter()
            .filter(|id| shard_of(id, 4) == shard)
            .map(|id| format!("task\0{id}"))
            .collect();
        assert!(
            !of_shard.is_empty(),
            "shard {shard} holds some of 64 threads"
        );
        assert_eq!(
            members(&mut conn, &shard_key_in(&prefix, 4, shard, "kind")).await,
            of_shard,
            "shard {shard}"
        );
    }
    for id in &ids {
        let exists: u64 = redis::cmd("EXISTS")
            .arg(thread_key_in(&prefix, 4, id))
            .query_async(&mut conn)
            .await
            .expect("EXISTS");
        assert_eq!(exists, 1, "{id} is in its shard");
    }

    // Reopened without a count, it takes the recorded one; with the same
    // count it opens; with another it is refused and nothing changes.
    let reopened = open("").await.expect("reopen");
    assert_eq!(reopened.shards(), 4);
    assert_eq!(
        reopened
            .list_all_threads(ThreadQuery::by_parent("p").with_limit(10))
            .await
            .expect("list"),
        ids,
        "every thread, in id order, across the shards"
    );
    assert_eq!(open("&shards=4").await.expect("same count").shards(), 4);
    let refusals = [
        open("&shards=2").await.expect_err("another count"),
        RedisStore::connect_with(
            &url,
            RedisStoreOptions::default()
                .with_prefix(&prefix)
                .with_shards(Some(2)),
        )
        .await
        .expect_err("another count in the options"),
    ];
    for err in refusals {
        let ThreadStoreError::InvalidInput { reason, .. } = &err else {
            panic!("expected InvalidInput, got {err:?}");
        };
        assert!(
            reason.contains("has 4 shards") && reason.contains("asking for 2"),
            "both counts named: {reason}"
        );
    }
    assert_eq!(
        layout_record(&mut conn, &prefix).await.as_deref(),
        Some("layout=2 shards=4")
    );
    let err = RedisStore::connect_with(
        &url,
        RedisStoreOptions::default()
            .with_prefix(single.prefix())
            .with_shards(Some(4)),
    )
    .await
    .expect_err("the single-shard store keeps one shard");
    assert!(
        matches!(err, ThreadStoreError::InvalidInput { .. }),
        "{err:?}"
    );
    purge(&url, &prefix).await;
    purge(&url, single.prefix()).await;
}

/// Stores connecting to a new prefix at once, some asking for 4 shards and
/// some leaving the count to the record: one record is written, the first,
/// and every store agrees with it; a store whose explicit count lost is
/// refused, naming both counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_connecting_at_once_to_a_new_prefix_agree_on_one_record() {
    let test = "stores_connecting_at_once_to_a_new_prefix_agree_on_one_record";
    let Some(url) = shared_redis_url(test) else {
        return;
    };
    for round in 0..5 {
        let prefix = unique_prefix(test);
        let connects = (0..8).map(|i| {
            let options = RedisStoreOptions::default()
                .with_prefix(&prefix)
                .with_shards((i % 2 == 0).then_some(4));
            let url = url.clone();
            tokio::spawn(async move { (i, RedisStore::connect_with(&url, options).await) })
        });
        let mut outcomes = Vec::new();
        for connect in connects {
            outcomes.push(connect.await.expect("no panic"));
        }
        let mut conn = raw(&url).await;
        let record = layout_record(&mut conn, &prefix)
            .await
            .expect("one store recorded the layout");
        let recorded = match record.as_str() {
            "layout=2 shards=4" => 4,
            "layout=2 shards=1" => 1,
            other => panic!("round {round}: unexpected record {other:?}"),
        };
        for (i, outcome) in outcomes {
            let asked = (i % 2 == 0).then_some(4);
            match outcome {
                Ok(store) => {
                    assert_eq!(store.shards(), recorded, "round {round}, store {i}");
                    assert!(
                        asked.is_none_or(|n| n == recorded),
                        "round {round}, store {i}"
                    );
                }
                Err(ThreadStoreError::InvalidInput { reason }) => {
                    assert_eq!(asked, Some(4), "round {round}, store {i}: {reason}");
                    assert_eq!(recorded, 1, "round {round}, store {i}: {reason}");
                    assert!(
                        reason.contains("has 1 shard,") && reason.contains("asking for 4"),
                        "{reason}"
                    );
                }
                Err(err) => panic!("round {round}, store {i}: {err:?}"),
            }
        }
        purge(&url, &prefix).await;
    }
}

#[tokio::test]
async fn a_save_moving_a_thread_moves_its_index_entries_within_its_shard() {
    let test = "a_save_moving_a_thread_moves_its_index_entries_within_its_shard";
    let options = RedisStoreOptions::default()
        .with_shards(Some(4))
        .with_retention(Some(Duration::from_secs(3600)))
        .with_sweep_interval(None);
    let Some(store) = shared_store_with(test, options).await else {
        return;
    };
    let url = shared_url(test);
    let mut conn = raw(&url).await;
    let prefix = store.prefix().to_owned();
    let shard = shard_of("t", 4);
    // The members of each of the shard's sets, in SHARD_SETS order, and the
    // TTL of the thread's key.
    let state = |conn: &mut redis::aio::MultiplexedConnection| {
        let mut conn = conn.clone();
        let prefix = prefix.clone();
        async move {
            let mut sets = Vec::new();
            for name in SHARD_SETS {
                sets.push(members(&mut conn, &shard_key_in(&prefix, 4, shard, name)).await);
            }
            let ttl: i64 = redis::cmd("PTTL")
                .arg(thread_key_in(&prefix, 4, "t"))
                .query_async(&mut conn)
                .await
                .expect("PTTL");
            (sets, ttl.clamp(-1, 1))
        }
    };
    let strings = |members: &[&str]| members.iter().map(|m| m.to_string()).collect::<Vec<_>>();
    let none = Vec::<String>::new;

    store
        .create(Thread::new("t", "task").with_parent("alice"))
        .await
        .expect("create");
    assert_eq!(
        state(&mut conn).await,
        (
            vec![
                strings(&["task\0t"]),
                strings(&["alice\0task\0t"]),
                strings(&["task\0t"]),
                strings(&["alice\0task\0t"]),
                none(),
            ],
            -1
        )
    );

    // Another kind and parent, finished: one save moves every entry.
    let mut moved = Thread::new("t", "job").with_parent("bob");
    moved.terminal = true;
    assert_eq!(store.save(moved).await.expect("save").version, 2);
    assert_eq!(
        state(&mut conn).await,
        (
            vec![
                strings(&["job\0t"]),
                strings(&["bob\0job\0t"]),
                none(),
                none(),
                strings(&["t\njob\nbob"]),
            ],
            1
        )
    );

    // Finished still, under another kind: the expiry entry moves too.
    let mut moved = Thread::new("t", "other").with_parent("bob");
    moved.terminal = true;
    store.save(moved).await.expect("save");
    assert_eq!(
        state(&mut conn).await,
        (
            vec![
                strings(&["other\0t"]),
                strings(&["bob\0other\0t"]),
                none(),
                none(),
                strings(&["t\nother\nbob"]),
            ],
            1
        )
    );

    // Open again and without a parent.
    store.save(Thread::new("t", "job")).await.expect("save");
    assert_eq!(
        state(&mut conn).await,
        (
            vec![
                strings(&["job\0t"]),
                none(),
                strings(&["job\0t"]),
                none(),
                none(),
            ],
            -1
        )
    );
    // Nothing of the thread in any other shard.
    let own = shard_key_in(&prefix, 4, shard, "");
    let layout = format!("{prefix}:layout");
    for key in keys_under(&url, &prefix).await {
        assert!(
            key == layout || key.starts_with(&own),
            "{key} outside {own}"
        );
    }
    purge(&url, &prefix).await;
}

#[tokio::test]
async fn ids_with_special_characters_expire_and_are_swept_like_any_other() {
    let test = "ids_with_special_characters_expire_and_are_swept_like_any_other";
    let short = expiring_options();
    let Some(store) = shared_store_with(test, short).await else {
        return;
    };
    let url = shared_url(test);
    let prefix = store.prefix().to_owned();
    // The same store with a long retention, for a thread that must outlive
    // the test.
    let kept_long = RedisStore::connect_with(
        &url,
        RedisStoreOptions::default()
            .with_prefix(&prefix)
            .with_retention(Some(Duration::from_secs(3600)))
            .with_sweep_interval(None),
    )
    .await
    .expect("connect");
    // Every byte the key names encode, and one that they keep.
    let nasty = |first: &str| format!("{first}{{1}}:%7B%*?[x]\\ü");
    let (gone, late, live) = (nasty("g"), nasty("d"), nasty("l"));
    let parent = "o:{p}%";
    let thread = |id: &str, terminal: bool| {
        let mut thread = Thread::new(id, "task")
            .with_parent(parent)
            .with_state(json!(id));
        thread.terminal = terminal;
        thread
    };
    store.create(thread(&gone, true)).await.expect("create");
    store.create(thread(&live, false)).await.expect("create");
    kept_long.create(thread(&late, true)).await.expect("create");
    let mut conn = raw(&url).await;
    // (The key of `gone` may have expired already.)
    for id in [&late, &live] {
        assert!(
            keys_under(&url, &prefix)
                .await
                .contains(&thread_key(&prefix, id)),
            "{id}"
        );
    }
    wait_until_expired(&mut conn, &thread_key(&prefix, &gone)).await;

    // The listing finds the live threads' keys and drops the expired one's
    // entry as it passes it.
    assert_eq!(
        store
            .list_all_threads(ThreadQuery::by_parent(parent))
            .await
            .expect("list"),
        [late.clone(), live.clone()]
    );
    assert_eq!(
        members(&mut conn, &shard_key(&prefix, "parent")).await,
        [&late, &live].map(|id| format!("{parent}\0task\0{id}"))
    );
    assert_eq!(
        members(&mut conn, &shard_key(&prefix, "kind")).await.len(),
        3,
        "the kind index was not listed yet"
    );

    // The sweep removes the expired thread's entries, and re-scores a due
    // entry whose key still lives instead of removing its entries.
    let expiring = shard_key(&prefix, "expiring");
    let late_entry = format!("{late}\ntask\n{parent}");
    let _: () = redis::cmd("ZADD")
        .arg(&expiring)
        .arg("XX")
        .arg(1)
        .arg(&late_entry)
        .query_async(&mut conn)
        .await
        .expect("ZADD");
    assert_eq!(store.sweep_expired(100).await.expect("sweep"), 1);
    assert_eq!(
        members(&mut conn, &shard_key(&prefix, "kind")).await,
        [&late, &live].map(|id| format!("task\0{id}"))
    );
    assert_eq!(members(&mut conn, &expiring).await, [late_entry.as_str()]);
    let due: f64 = redis::cmd("ZSCORE")
        .arg(&expiring)
        .arg(&late_entry)
        .query_async(&mut conn)
        .await
        .expect("ZSCORE");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as f64;
    assert!(
        due > now_ms + 3_000_000.0,
        "re-scored by the key's TTL: {due} (now {now_ms})"
    );
    assert_eq!(
        store
            .list_all_threads(ThreadQuery::by_kind("task"))
            .await
            .expect("list"),
        [late.clone(), live.clone()]
    );
    for id in [&late, &live] {
        let head = store.load(id).await.expect("load").expect("kept");
        assert_eq!(head.state, json!(id));
    }
    assert_eq!(store.sweep_expired(100).await.expect("sweep"), 0);
    purge(&url, &prefix).await;
}
