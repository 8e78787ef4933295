//! Fault tests with a real server: crashes and restarts, a paused server,
//! wrong credentials and corrupt data. Each destructive test starts a private
//! `redis-server` of its own (never `REDIS_URL`).
//!
//! Size: about 870 lines, over the house limit of about 700: each test starts
//! and breaks its own server, and the helpers they share (a server that can be
//! killed, paused and restarted on the same port) are local to this file; the
//! two corruption tests damage each part of a thread's key in its own way.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use task_store::{
    AppendRequest, ChangeSet, MessageQuery, NewMessage, Thread, ThreadQuery, ThreadReader,
    ThreadReaderExt, ThreadStoreError, ThreadWriter, VersionPrecondition,
};
use task_store_redis::{RedisStore, RedisStoreOptions};
use task_testkit::redis_server::{AppendFsync, RedisServer, private_server_or_skip};

use support::{fast_options, members, purge, raw, shard_key, shared_store, shared_url, thread_key};

/// Calls `op` until it succeeds, for at most `attempts` calls; every failure
/// on the way must be retryable. Each failing call itself takes a bounded time
/// (the response or connect timeout), so this waits for the server without
/// sleeping.
async fn until_ok<T, F, Fut>(attempts: usize, mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = task_store::Result<T>>,
{
    let mut last = None;
    for _ in 0..attempts {
        match op().await {
            Ok(value) => return value,
            Err(err) => {
                assert!(
                    err.is_retryable(),
                    "only retryable errors on the way: {err:?}"
                );
                last = Some(err);
            }
        }
    }
    panic!("still failing after {attempts} attempts: {last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill_and_the_store_reconnects_after_restart() {
    let test = "acknowledged_writes_survive_sigkill_and_the_store_reconnects_after_restart";
    let builder = RedisServer::builder()
        .appendonly(true)
        .appendfsync(AppendFsync::Always);
    let Some(mut server) = private_server_or_skip(test, builder) else {
        return;
    };
    let store = RedisStore::connect_with(&server.url(), fast_options())
        .await
        .expect("connect");

    // Acknowledged writes: 50 threads, each finished with a message.
    for i in 0..50 {
        let id = format!("task:{i}");
        let created = store
            .create(Thread::new(&id, "task").with_parent("owner"))
            .await
            .expect("create");
        store
            .append(
                &id,
                ChangeSet::state(json!({"status": "completed", "i": i}))
                    .with_message(NewMessage::with_id("done", json!(i)))
                    .with_terminal(true),
                VersionPrecondition::Exact(created.version),
            )
            .await
            .expect("finish");
    }

    server.kill().expect("SIGKILL");

    // During the outage a call fails quickly and says it may be retried.
    let started = Instant::now();
    let err = store.load("task:0").await.expect_err("server is down");
    assert!(err.is_retryable(), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "failed fast, not after a long reconnect loop: {:?}",
        started.elapsed()
    );

    // A batch fails every item, retryably.
    let results = store
        .create_batch(vec![Thread::new("x", "task"), Thread::new("y", "task")])
        .await;
    assert_eq!(results.len(), 2);
    for result in results {
        let err = result.expect_err("server is down");
        assert!(err.is_retryable(), "{err:?}");
    }

    // So does a batch of appends: none is known to be committed.
    let results = store
        .append_batch(
            (0..300)
                .map(|i| AppendRequest {
                    id: format!("task:{}", i % 50),
                    changes: ChangeSet::state(json!("lost")),
                    precondition: VersionPrecondition::Any,
                })
                .collect(),
        )
        .await;
    assert_eq!(results.len(), 300);
    for result in results {
        let err = result.expect_err("server is down");
        assert!(err.is_retryable(), "{err:?}");
    }

    server.restart().expect("restart on the same port and data");

    // The same store reconnects by itself.
    let head = until_ok(20, || store.load("task:49")).await;
    let head = head.expect("task:49 survived");
    assert_eq!(head.version, 2);
    assert!(head.terminal);
    for i in 0..50 {
        let id = format!("task:{i}");
        let head = store.load(&id).await.expect("load").expect("survived");
        assert_eq!(head.state, json!({"status": "completed", "i": i}), "{id}");
        let messages = store.load_all_messages(&id).await.expect("messages");
        assert_eq!(messages.len(), 1, "{id}");
    }
    let listed = store
        .list_all_threads(ThreadQuery::by_parent("owner"))
        .await
        .expect("list");
    assert_eq!(listed.len(), 50);

    // The restarted server has an empty script cache: batches reload it.
    let results = store
        .append_batch(
            (0..50)
                .map(|i| AppendRequest {
                    id: format!("task:{i}"),
                    changes: ChangeSet::default()
                        .with_message(NewMessage::with_id("after-restart", json!(i))),
                    precondition: VersionPrecondition::Exact(2),
                })
                .collect(),
        )
        .await;
    for (i, result) in results.iter().enumerate() {
        let committed = result.as_ref().expect("batch after restart");
        assert_eq!(committed.version, 3, "task:{i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_pause_past_the_response_timeout_gives_a_retryable_timeout_not_a_hang() {
    let test = "server_pause_past_the_response_timeout_gives_a_retryable_timeout_not_a_hang";
    let Some(server) = private_server_or_skip(test, RedisServer::builder()) else {
        return;
    };
    let options = fast_options().with_response_timeout(Duration::from_millis(200));
    let store = RedisStore::connect_with(&server.url(), options)
        .await
        .expect("connect");
    store
        .create(Thread::new("t", "task"))
        .await
        .expect("create");

    let answer = server
        .command(&["CLIENT", "PAUSE", "1500", "ALL"])
        .expect("CLIENT PAUSE");
    assert_eq!(answer, "+OK");

    let started = Instant::now();
    let err = store.load("t").await.expect_err("paused");
    let waited = started.elapsed();
    assert!(
        matches!(err, ThreadStoreError::Timeout { .. }),
        "a timeout: {err:?}"
    );
    assert!(err.is_retryable());
    assert!(waited < Duration::from_millis(1200), "no hang: {waited:?}");

    // A write during the pause times out too: its outcome is unknown. Retried
    // as it was (same message id), it is applied once.
    let changes = ChangeSet::default().with_message(NewMessage::with_id("once", json!(1)));
    let err = store
        .append("t", changes.clone(), VersionPrecondition::Any)
        .await
        .expect_err("paused");
    assert!(err.is_retryable(), "{err:?}");
    until_ok(30, || {
        store.append("t", changes.clone(), VersionPrecondition::Any)
    })
    .await;
    let messages = store.load_all_messages("t").await.expect("messages");
    assert_eq!(messages.len(), 1, "applied exactly once: {messages:?}");
}

#[tokio::test]
async fn a_wrong_password_is_an_authentication_error() {
    let test = "a_wrong_password_is_an_authentication_error";
    let builder = RedisServer::builder().requirepass("right-password");
    let Some(server) = private_server_or_skip(test, builder) else {
        return;
    };
    let port = server.port();
    for url in [
        format!("redis://:wrong-password@127.0.0.1:{port}/"),
        format!("redis://default:wrong-password@127.0.0.1:{port}/"),
        format!("redis://127.0.0.1:{port}/"),
    ] {
        let err = RedisStore::connect_with(&url, fast_options())
            .await
            .expect_err("refused");
        assert!(
            matches!(err, ThreadStoreError::Authentication { .. }),
            "{url}: {err:?}"
        );
        assert!(!err.is_retryable());
        assert!(
            !err.to_string().contains("wrong-password"),
            "no secret in {err}"
        );
    }
    let store = RedisStore::connect_with(&server.url(), fast_options())
        .await
        .expect("the right password works");
    store
        .create(Thread::new("t", "task"))
        .await
        .expect("create");
}

#[tokio::test]
async fn an_acl_user_restricted_to_its_prefix_can_run_the_store() {
    let test = "an_acl_user_restricted_to_its_prefix_can_run_the_store";
    let Some(server) = private_server_or_skip(test, RedisServer::builder()) else {
        return;
    };
    let answer = server
        .command(&[
            "ACL",
            "SETUSER",
            "tasks",
            "on",
            ">s3cret",
            "~app:*",
            "-@all",
            "+@read",
            "+@write",
            "+@scripting",
            "-@dangerous",
            "+ping",
        ])
        .expect("ACL SETUSER");
    assert_eq!(answer, "+OK");
    let url = format!(
        "redis://tasks:s3cret@127.0.0.1:{}/?prefix=app",
        server.port()
    );
    let store = RedisStore::connect_with(&url, fast_options())
        .await
        .expect("the restricted user connects");
    store
        .create(Thread::new("t{1}", "task").with_parent("p"))
        .await
        .expect("create");
    store
        .append(
            "t{1}",
            ChangeSet::state(json!(2)),
            VersionPrecondition::Exact(1),
        )
        .await
        .expect("append");
    assert_eq!(
        store
            .list_all_threads(ThreadQuery::by_parent("p"))
            .await
            .expect("list"),
        vec!["t{1}"]
    );
    store.delete("t{1}").await.expect("delete");
    assert_eq!(store.load("t{1}").await.expect("load"), None);
    let mut conn = raw(&server.url()).await;
    let layout: Option<String> = redis::cmd("GET")
        .arg("app:layout")
        .query_async(&mut conn)
        .await
        .expect("GET");
    assert_eq!(
        layout.as_deref(),
        Some("layout=2 shards=1"),
        "the store recorded its layout under its prefix"
    );

    // The same user under another prefix is refused at connect (reading the
    // layout record there), as an authentication error.
    let other = format!(
        "redis://tasks:s3cret@127.0.0.1:{}/?prefix=other",
        server.port()
    );
    let err = RedisStore::connect_with(&other, fast_options())
        .await
        .expect_err("the layout record is outside the ACL pattern");
    assert!(
        matches!(err, ThreadStoreError::Authentication { .. }),
        "{err:?}"
    );
    assert!(!err.is_retryable(), "{err:?}");
    assert!(!err.to_string().contains("s3cret"), "no secret in {err}");
    let written: Vec<String> = redis::cmd("KEYS")
        .arg("other:*")
        .query_async(&mut conn)
        .await
        .expect("KEYS");
    assert!(
        written.is_empty(),
        "nothing under the other prefix: {written:?}"
    );
}

#[tokio::test]
async fn corrupt_keys_give_corrupt_for_that_thread_only() {
    let test = "corrupt_keys_give_corrupt_for_that_thread_only";
    let Some(store) = shared_store(test).await else {
        return;
    };
    let url = shared_url(test);
    let prefix = store.prefix().to_owned();
    let ids = [
        "bad-json",
        "bad-message",
        "fine",
        "garbage",
        "headless",
        "lost-message",
        "no-seq",
    ];
    for id in ids {
        store
            .create(
                Thread::new(id, "task")
                    .with_parent("p")
                    .with_message(NewMessage::new(json!("m"))),
            )
            .await
            .expect("create");
    }
    let mut conn = raw(&url).await;
    let key = |id: &str| thread_key(&prefix, id);
    let mut pipe = redis::pipe();
    pipe.cmd("SET")
        .arg(key("garbage"))
        .arg("\u{1}garbage")
        .ignore()
        .cmd("HSET")
        .arg(key("bad-json"))
        .arg("state")
        .arg("{not json")
        .ignore()
        .cmd("HSET")
        .arg(key("bad-message"))
        .arg("m:1")
        .arg("{not json")
        .ignore()
        .cmd("HDEL")
        .arg(key("lost-message"))
        .arg("m:1")
        .ignore()
        .cmd("HDEL")
        .arg(key("no-seq"))
        .arg("seq")
        .ignore()
        // Every head field gone, the log left.
        .cmd("HDEL")
        .arg(key("headless"))
        .arg(&["v", "seq", "term", "state", "id", "kind", "meta", "parent"][..])
        .ignore();
    let _: () = pipe.query_async(&mut conn).await.expect("damage");

    let corrupt_id = |err: ThreadStoreError| match err {
        ThreadStoreError::Corrupt { id, .. } => id,
        other => panic!("expected Corrupt, got {other:?}"),
    };
    for id in ["garbage", "bad-json", "no-seq", "headless"] {
        let err = store.load(id).await.expect_err("corrupt head");
        assert_eq!(corrupt_id(err), id);
    }
    for id in [
        "garbage",
        "bad-message",
        "lost-message",
        "no-seq",
        "headless",
    ] {
        let err = store
            .load_messages(id, MessageQuery::default())
            .await
            .expect_err("corrupt log");
        assert_eq!(corrupt_id(err), id);
    }
    let head = store.load("bad-message").await.expect("a sound head reads");
    assert_eq!(head.expect("present").last_seq, 1);

    // Writes refuse without writing anything.
    let fields_conn = conn.clone();
    let fields_of_no_seq = || {
        let mut conn = fields_conn.clone();
        let key = key("no-seq");
        async move {
            let mut fields: Vec<(String, String)> = redis::cmd("HGETALL")
                .arg(key)
                .query_async(&mut conn)
                .await
                .expect("HGETALL");
            fields.sort();
            fields
        }
    };
    let before = fields_of_no_seq().await;
    let changes = ChangeSet::state(json!(1))
        .with_message(NewMessage::with_id("x", json!(1)))
        .with_terminal(true);
    for id in ["garbage", "no-seq", "headless"] {
        let err = store
            .append(id, changes.clone(), VersionPrecondition::Any)
            .await
            .expect_err("corrupt");
        assert_eq!(corrupt_id(err), id);
        let err = store
            .save(Thread::new(id, "job").with_parent("q"))
            .await
            .expect_err("corrupt");
        assert_eq!(corrupt_id(err), id);
    }
    // A hash that lost its head still holds its id.
    let err = store
        .create(Thread::new("headless", "task"))
        .await
        .expect_err("the id is taken");
    assert!(
        matches!(&err, ThreadStoreError::AlreadyExists { id } if id == "headless"),
        "{err:?}"
    );
    let garbage: String = redis::cmd("GET")
        .arg(key("garbage"))
        .query_async(&mut conn)
        .await
        .expect("GET");
    assert_eq!(garbage, "\u{1}garbage", "the corrupt key was left alone");
    assert_eq!(
        fields_of_no_seq().await,
        before,
        "the refused writes left the thread alone"
    );
    let all = ids.map(|id| format!("task\0{id}"));
    assert_eq!(
        members(&mut conn, &shard_key(&prefix, "kind")).await,
        all,
        "the refused writes left the indexes alone"
    );
    assert_eq!(
        members(&mut conn, &shard_key(&prefix, "open:kind")).await,
        all
    );

    // Everything else still works, and listing still lists all of them.
    let fine = store.load("fine").await.expect("load").expect("present");
    assert_eq!(fine.version, 1);
    assert_eq!(
        store
            .load_all_messages("fine")
            .await
            .expect("messages")
            .len(),
        1
    );
    store
        .append("fine", changes, VersionPrecondition::Exact(1))
        .await
        .expect("other threads are writable");
    assert_eq!(
        store
            .list_all_threads(ThreadQuery::by_parent("p"))
            .await
            .expect("list"),
        ids
    );

    // A corrupt thread can still be deleted, with its index entries: a hash
    // that names its kind and parent, a hash without its head, a key of
    // another type.
    let gone = ["no-seq", "headless", "garbage"];
    for id in gone {
        store.delete(id).await.expect("delete");
        assert_eq!(store.load(id).await.expect("load"), None, "{id}");
    }
    let left = ["bad-json", "bad-message", "fine", "lost-message"];
    let open = ["bad-json", "bad-message", "lost-message"]; // `fine` finished
    for (set, ids, entry) in [
        ("kind", &left[..], "task\0"),
        ("open:kind", &open[..], "task\0"),
        ("parent", &left[..], "p\0task\0"),
        ("open:parent", &open[..], "p\0task\0"),
    ] {
        let want: Vec<String> = ids.iter().map(|id| format!("{entry}{id}")).collect();
        assert_eq!(
            members(&mut conn, &shard_key(&prefix, set)).await,
            want,
            "the entries of the deleted threads left {set}"
        );
    }
    assert_eq!(
        store
            .list_all_threads(ThreadQuery::by_parent("p"))
            .await
            .expect("list"),
        ["bad-json", "bad-message", "fine", "lost-message"]
    );
    purge(&url, &prefix).await;
}

#[tokio::test]
async fn append_batch_reloads_scripts_the_server_forgot() {
    let test = "append_batch_reloads_scripts_the_server_forgot";
    let Some(server) = private_server_or_skip(test, RedisServer::builder()) else {
        return;
    };
    let store = RedisStore::connect_with(&server.url(), RedisStoreOptions::default())
        .await
        .expect("connect");
    store
        .create(Thread::new("a", "task"))
        .await
        .expect("create");
    store
        .create(Thread::new("b", "task"))
        .await
        .expect("create");
    let more: Vec<Thread> = (0..1500)
        .map(|i| Thread::new(format!("t{i}"), "task"))
        .collect();
    for result in store.create_batch(more).await {
        result.expect("create");
    }
    assert_eq!(server.command(&["SCRIPT", "FLUSH"]).expect("flush"), "+OK");
    // More runs than one round trip holds, and a thread repeated across
    // them: resent runs keep each thread's order.
    let mut requests: Vec<AppendRequest> = ["a", "b"]
        .into_iter()
        .map(String::from)
        .chain((0..1500).map(|i| format!("t{i}")))
        .map(|id| AppendRequest {
            id,
            changes: ChangeSet::state(json!("x")),
            precondition: VersionPrecondition::Exact(1),
        })
        .collect();
    requests.push(AppendRequest {
        id: "a".to_owned(),
        changes: ChangeSet::state(json!("y")),
        precondition: VersionPrecondition::Exact(2),
    });
    let results = store.append_batch(requests).await;
    let (last, first) = results.split_last().expect("results");
    for result in first {
        assert_eq!(result.as_ref().expect("reloaded and applied").version, 2);
    }
    assert_eq!(last.as_ref().expect("after the first").version, 3);
    // And a single write after another flush.
    assert_eq!(server.command(&["SCRIPT", "FLUSH"]).expect("flush"), "+OK");
    store
        .append(
            "a",
            ChangeSet::state(json!("z")),
            VersionPrecondition::Exact(3),
        )
        .await
        .expect("invoke reloads on NOSCRIPT");
}

#[tokio::test]
async fn create_batch_reloads_scripts_the_server_forgot() {
    let test = "create_batch_reloads_scripts_the_server_forgot";
    let Some(server) = private_server_or_skip(test, RedisServer::builder()) else {
        return;
    };
    let store = RedisStore::connect_with(&server.url(), RedisStoreOptions::default())
        .await
        .expect("connect");
    assert_eq!(server.command(&["SCRIPT", "FLUSH"]).expect("flush"), "+OK");
    // More than one run of the script, so several are resent in order.
    let mut threads: Vec<Thread> = (0..600)
        .map(|i| Thread::new(format!("t{i}"), "task").with_state(json!(i)))
        .collect();
    threads.push(Thread::new("t0", "task").with_state(json!("again")));
    let results = store.create_batch(threads).await;
    let (last, created) = results.split_last().expect("results");
    for result in created {
        assert_eq!(result.as_ref().expect("reloaded and created").version, 1);
    }
    assert!(
        matches!(last, Err(ThreadStoreError::AlreadyExists { .. })),
        "{last:?}"
    );
    assert_eq!(
        store.load("t0").await.expect("load").expect("t0").state,
        json!(0)
    );
}

#[tokio::test]
async fn append_batch_gives_each_item_the_outcome_of_its_own_append() {
    let test = "append_batch_gives_each_item_the_outcome_of_its_own_append";
    let options = RedisStoreOptions::default().with_retention(Some(Duration::from_secs(3600)));
    let Some(store) = support::shared_store_with(test, options).await else {
        return;
    };
    let url = shared_url(test);
    let prefix = store.prefix().to_owned();
    for id in [
        "ok",
        "stale",
        "bad-key",
        "bad-seq",
        "headless",
        "no-version",
        "twice",
        "reopen",
    ] {
        let mut thread = Thread::new(id, "task")
            .with_parent("p")
            .with_message(NewMessage::with_id("m0", json!(id)));
        thread.terminal = id == "reopen";
        store.create(thread).await.expect("create");
    }
    let mut conn = raw(&url).await;
    let key = |id: &str| thread_key(&prefix, id);
    // A thread key of another type, a sequence number that is no number, a
    // key that holds a log and message ids but no head, a head without a
    // version.
    let _: () = redis::pipe()
        .cmd("DEL")
        .arg(key("bad-key"))
        .ignore()
        .cmd("SET")
        .arg(key("bad-key"))
        .arg("garbage")
        .ignore()
        .cmd("HSET")
        .arg(key("bad-seq"))
        .arg("seq")
        .arg("x")
        .ignore()
        .cmd("HDEL")
        .arg(key("headless"))
        .arg(&["v", "seq", "term", "state", "id", "kind", "meta", "parent"])
        .ignore()
        .cmd("HDEL")
        .arg(key("no-version"))
        .arg("v")
        .ignore()
        .query_async(&mut conn)
        .await
        .expect("damage");

    let request = |id: &str, changes: ChangeSet, precondition| AppendRequest {
        id: id.to_owned(),
        changes,
        precondition,
    };
    let finish = |mid: &str| {
        ChangeSet::state(json!("done"))
            .with_message(NewMessage::with_id(mid, json!(mid)))
            .with_terminal(true)
    };
    let exact = VersionPrecondition::Exact;
    let results = store
        .append_batch(vec![
            request("ok", finish("m1"), exact(1)),
            request("stale", finish("m1"), exact(7)),
            request("missing", finish("m1"), VersionPrecondition::Any),
            request("bad-key", finish("m1"), VersionPrecondition::Any),
            request("", finish("m1"), VersionPrecondition::Any),
            request("bad-seq", finish("m1"), VersionPrecondition::Any),
            request("twice", ChangeSet::state(json!("one")), exact(1)),
            request(
                "headless",
                ChangeSet::state(json!(1)),
                VersionPrecondition::Any,
            ),
            request("no-version", finish("m1"), VersionPrecondition::Any),
            request(
                "ok",
                ChangeSet::default()
                    .with_message(NewMessage::with_id("m0", json!("again")))
                    .with_message(NewMessage::with_id("m1", json!("again"))),
                exact(2),
            ),
            request("twice", finish("m1"), exact(2)),
            request(
                "reopen",
                ChangeSet::default().with_terminal(false),
                exact(1),
            ),
            request("twice", ChangeSet::state(json!("late")), exact(2)),
            // The other way round: no message, and a message with an id
            // already in the damaged key.
            request(
                "bad-seq",
                ChangeSet::state(json!(1)),
                VersionPrecondition::Any,
            ),
            request("headless", finish("m0"), VersionPrecondition::Any),
        ])
        .await;
    assert_eq!(results.len(), 15);
    let committed = |k: usize| {
        let c = results[k].as_ref().expect("applied");
        (c.version, c.last_seq, c.appended, c.skipped)
    };
    let corrupt = |k: usize, want: &str| match &results[k] {
        Err(ThreadStoreError::Corrupt { id, .. }) => assert_eq!(id, want),
        other => panic!("{want}: expected Corrupt, got {other:?}"),
    };
    assert_eq!(committed(0), (2, 2, 1, 0));
    assert!(
        matches!(
            results[1],
            Err(ThreadStoreError::VersionConflict {
                expected: 7,
                actual: 1,
                ..
            })
        ),
        "{:?}",
        results[1]
    );
    assert!(
        matches!(&results[2], Err(ThreadStoreError::NotFound { id }) if id == "missing"),
        "{:?}",
        results[2]
    );
    corrupt(3, "bad-key");
    assert!(
        matches!(results[4], Err(ThreadStoreError::InvalidInput { .. })),
        "{:?}",
        results[4]
    );
    corrupt(5, "bad-seq");
    assert_eq!(committed(6), (2, 1, 0, 0));
    corrupt(7, "headless");
    corrupt(8, "no-version");
    assert_eq!(
        committed(9),
        (2, 2, 0, 2),
        "only known ids: nothing changes"
    );
    assert_eq!(
        committed(10),
        (3, 2, 1, 0),
        "sees the first append of twice"
    );
    assert_eq!(committed(11), (2, 1, 0, 0));
    assert!(
        matches!(
            results[12],
            Err(ThreadStoreError::VersionConflict {
                expected: 2,
                actual: 3,
                ..
            })
        ),
        "{:?}",
        results[12]
    );

    corrupt(13, "bad-seq");
    corrupt(14, "headless");

    // What the refused items left alone, and what the others wrote.
    let ttl_conn = conn.clone();
    let ttl = |id: &str| {
        let mut conn = ttl_conn.clone();
        let key = key(id);
        async move {
            let ttl: i64 = redis::cmd("PTTL")
                .arg(key)
                .query_async(&mut conn)
                .await
                .expect("PTTL");
            ttl
        }
    };
    for (id, version, seq) in [
        ("stale", Some("1"), Some("1")),
        ("bad-seq", Some("1"), Some("x")),
        ("headless", None, None),
        ("no-version", None, Some("1")),
    ] {
        let head: (Option<String>, Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(key(id))
            .arg(&["v", "seq", "m:2"])
            .query_async(&mut conn)
            .await
            .expect("HMGET");
        assert_eq!(
            head,
            (version.map(String::from), seq.map(String::from), None),
            "{id} left alone"
        );
        assert_eq!(ttl(id).await, -1, "{id} left alone");
    }
    let bad_key_type: String = redis::cmd("TYPE")
        .arg(key("bad-key"))
        .query_async(&mut conn)
        .await
        .expect("TYPE");
    assert_eq!(bad_key_type, "string");
    assert_eq!(ttl("bad-key").await, -1, "bad-key left alone");
    let twice = store.load("twice").await.expect("load").expect("twice");
    assert_eq!(
        (twice.version, twice.state, twice.terminal),
        (3, json!("done"), true)
    );
    assert!(ttl("twice").await > 3_500_000, "twice expires");
    assert!(ttl("ok").await > 3_500_000, "ok expires");
    assert_eq!(ttl("reopen").await, -1, "reopen is kept");
    assert_eq!(
        members(&mut conn, &shard_key(&prefix, "expiring")).await,
        ["ok\ntask\np", "twice\ntask\np"]
    );
    assert_eq!(
        members(&mut conn, &shard_key(&prefix, "open:kind")).await,
        [
            "bad-key",
            "bad-seq",
            "headless",
            "no-version",
            "reopen",
            "stale"
        ]
        .map(|id| format!("task\0{id}")),
        "the finished threads left the open index, the reopened one came back"
    );

    // An expiry set of the wrong type refuses every item of its shard, as
    // for append, and nothing is written.
    let expiring = shard_key(&prefix, "expiring");
    let _: () = redis::cmd("DEL")
        .arg(&expiring)
        .query_async(&mut conn)
        .await
        .expect("DEL");
    let _: () = redis::cmd("SET")
        .arg(&expiring)
        .arg("not a sorted set")
        .query_async(&mut conn)
        .await
        .expect("damage the expiry set");
    let results = store
        .append_batch(vec![
            request("stale", finish("m2"), exact(1)),
            request("reopen", ChangeSet::state(json!(2)), exact(2)),
        ])
        .await;
    for result in &results {
        assert!(
            matches!(result, Err(ThreadStoreError::Backend { message, .. }) if message.contains(&expiring)),
            "{result:?}"
        );
    }
    assert_eq!(
        store
            .load("stale")
            .await
            .expect("load")
            .expect("stale")
            .version,
        1
    );
    assert_eq!(
        store
            .load("reopen")
            .await
            .expect("load")
            .expect("reopen")
            .version,
        2
    );
    purge(&url, &prefix).await;
}
