//! `PostgresStore` beyond the conformance suite: JSON kept exactly, the
//! versioned schema and its migration, roles, encodings, corrupt rows,
//! retention and LISTEN/NOTIFY signals, on a real server.

mod support;

use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{Value, json};
use task_store::{
    ChangeSet, NewMessage, Thread, ThreadQuery, ThreadReader, ThreadReaderExt, ThreadStoreError,
    ThreadWriter, VersionPrecondition,
};
use task_store_postgres::{PostgresStore, PostgresStoreOptions};
use task_testkit::postgres_server::{PostgresServer, private_server_or_skip, unique_schema};

use support::{named, raw, shared_store, shared_store_with, terminate};

/// A private server this binary's tests may create roles and databases
/// on (never `DATABASE_URL`'s); none of them stops it.
fn admin_server(test: &str) -> Option<&'static PostgresServer> {
    static SERVER: OnceLock<Option<PostgresServer>> = OnceLock::new();
    SERVER
        .get_or_init(|| private_server_or_skip(test, PostgresServer::builder()))
        .as_ref()
}

/// Values whose text JSONB would change (key order, number spelling) and
/// values at the edges of what serde_json reads.
fn awkward_json() -> Value {
    let mut text = String::from(r#"{"zeta":1,"alpha":{"b":[],"a":{}},"#);
    text.push_str(r#""u64_max":18446744073709551615,"i64_min":-9223372036854775808,"#);
    text.push_str(r#""tenth":0.1,"huge":1e300,"tiny":5e-324,"third":0.3333333333333333,"#);
    text.push_str(r#""neg_zero":-0.0,"one_point_zero":1.0,"nul":"a\u0000b","#);
    text.push_str(r#""escapes":"\"\\\/\b\f\n\r\t","unicode":"ü ✓ 😀 \u2028","#);
    text.push_str(r#""deep":[[[[[[[[[[{"x":null}]]]]]]]]]],"empty":"","f":false}"#);
    serde_json::from_str(&text).expect("the test's JSON is valid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_reads_back_equal_and_is_stored_as_the_text_written() {
    let Some((store, url)) = shared_store("json_reads_back_equal").await else {
        return;
    };
    let value = awkward_json();
    let mut metadata = serde_json::Map::new();
    metadata.insert("z".into(), json!(u64::MAX));
    metadata.insert("a".into(), value.clone());
    store
        .create(
            Thread::new("j", "k")
                .with_state(value.clone())
                .with_metadata(metadata.clone())
                .with_message(NewMessage::with_id("m", value.clone())),
        )
        .await
        .expect("create");
    let head = store.load("j").await.expect("load").expect("exists");
    assert_eq!(head.state, value);
    assert_eq!(head.metadata, metadata);
    let log = store.load_all_messages("j").await.expect("log");
    assert_eq!(log[0].body, value);
    assert_eq!(log[0].body["u64_max"].as_u64(), Some(u64::MAX));
    assert_eq!(log[0].body["i64_min"].as_i64(), Some(i64::MIN));
    assert_eq!(log[0].body["tiny"].as_f64(), Some(5e-324));

    // The text in the table is exactly serde_json's, key order included
    // (the creating write's message is the thread's first log entry, in
    // its row).
    let client = raw(&url).await;
    let sql = format!(
        "SELECT state, first_log FROM \"{}\".threads WHERE id = 'j'",
        store.schema()
    );
    let row = client.query_one(&sql, &[]).await.expect("raw read");
    let written = serde_json::to_string(&value).expect("serialize");
    assert_eq!(row.get::<_, String>(0), written);
    assert_eq!(row.get::<_, String>(1), format!("[{written}]"));

    // A later message goes to the messages table, as written too.
    store
        .append(
            "j",
            ChangeSet::default().with_message(NewMessage::with_id("later", value.clone())),
            VersionPrecondition::Exact(1),
        )
        .await
        .expect("append a message");
    let sql = format!(
        "SELECT body FROM \"{}\".messages WHERE thread_id = 'j' AND message_id = 'later'",
        store.schema()
    );
    let body: String = client.query_one(&sql, &[]).await.expect("raw read").get(0);
    assert_eq!(body, written);
    let log = store.load_all_messages("j").await.expect("log");
    assert_eq!(log.len(), 2);
    assert_eq!(log[1].body, value);

    // And through an append and a save.
    let other = json!({ "n": 1.0e-10, "k": [u64::MAX, -1, 2.5] });
    store
        .append(
            "j",
            ChangeSet::state(other.clone()),
            VersionPrecondition::Exact(2),
        )
        .await
        .expect("append");
    assert_eq!(
        store.load("j").await.expect("load").expect("j").state,
        other
    );
    store
        .save(Thread::new("j", "k").with_state(value.clone()))
        .await
        .expect("save");
    assert_eq!(
        store.load("j").await.expect("load").expect("j").state,
        value
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schema_records_its_version_and_a_newer_one_is_refused() {
    let Some((store, url)) = shared_store("schema_version").await else {
        return;
    };
    let schema = store.schema().to_owned();
    let client = raw(&url).await;
    let version: i32 = client
        .query_one(
            &format!("SELECT version FROM \"{schema}\".schema_version"),
            &[],
        )
        .await
        .expect("version row")
        .get(0);
    assert_eq!(version, 1);

    // Opening it again changes nothing.
    let again = PostgresStoreOptions::default().with_schema(schema.clone());
    PostgresStore::connect_with(&url, again.clone())
        .await
        .expect("reopen");

    client
        .execute(
            &format!("UPDATE \"{schema}\".schema_version SET version = 99"),
            &[],
        )
        .await
        .expect("pretend a newer build migrated");
    let err = PostgresStore::connect_with(&url, again)
        .await
        .expect_err("a newer schema is refused");
    assert!(
        matches!(&err, ThreadStoreError::Unsupported { reason } if reason.contains("version 99")),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_starting_together_on_a_new_schema_migrate_it_once() {
    let Some(url) = task_testkit::postgres_server::shared_postgres_url("migrate_once") else {
        return;
    };
    let schema = unique_schema("migrate_once");
    let opens = (0..8).map(|_| {
        let options = PostgresStoreOptions::default().with_schema(schema.clone());
        let url = url.clone();
        tokio::spawn(async move { PostgresStore::connect_with(&url, options).await })
    });
    for open in futures::future::join_all(opens).await {
        open.expect("task").expect("every store opens");
    }
    let client = raw(&url).await;
    let tables: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE schemaname = $1",
            &[&schema],
        )
        .await
        .expect("catalog")
        .get(0);
    assert_eq!(tables, 3, "threads, messages, schema_version");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_without_ddl_rights_uses_a_migrated_schema_and_cannot_make_one() {
    let test = "a_role_without_ddl_rights";
    let Some(server) = admin_server(test) else {
        return;
    };
    let schema = unique_schema("roles");
    PostgresStore::connect_with(
        &server.url(),
        PostgresStoreOptions::default().with_schema(schema.clone()),
    )
    .await
    .expect("the owner migrates");
    server
        .psql(&format!(
            "CREATE ROLE app_{0} LOGIN; \
             GRANT USAGE ON SCHEMA \"{0}\" TO app_{0}; \
             GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA \"{0}\" TO app_{0};",
            schema
        ))
        .expect("a role with table rights only");
    let app_url = server.url().replacen(
        "postgres://postgres",
        &format!("postgres://app_{schema}"),
        1,
    );
    let app = PostgresStore::connect_with(
        &app_url,
        PostgresStoreOptions::default().with_schema(schema.clone()),
    )
    .await
    .expect("the app role opens the migrated schema without DDL");
    app.create(Thread::new("t", "k")).await.expect("create");
    assert!(app.load("t").await.expect("load").is_some());

    let err = PostgresStore::connect_with(
        &app_url,
        PostgresStoreOptions::default().with_schema(unique_schema("roles_new")),
    )
    .await
    .expect_err("the app role may not create a schema");
    assert!(
        matches!(err, ThreadStoreError::Authentication { .. }),
        "{err:?}"
    );
    assert!(!err.is_retryable());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_an_authentication_error_that_shows_no_password() {
    let Some(server) = private_server_or_skip(
        "a_wrong_password",
        PostgresServer::builder().password("right-one"),
    ) else {
        return;
    };
    let good = PostgresStore::connect(&server.url()).await;
    assert!(good.is_ok(), "{good:?}");
    let bad_url = server.url().replace("right-one", "wrong-one");
    let err = PostgresStore::connect(&bad_url).await.expect_err("refused");
    assert!(
        matches!(err, ThreadStoreError::Authentication { .. }),
        "{err:?}"
    );
    assert!(!err.is_retryable());
    assert!(!err.to_string().contains("wrong-one"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_not_in_utf8_is_refused() {
    let Some(server) = admin_server("a_database_not_in_utf8") else {
        return;
    };
    server
        .psql(
            "CREATE DATABASE latin TEMPLATE template0 ENCODING 'LATIN1' \
             LC_COLLATE 'C' LC_CTYPE 'C'",
        )
        .expect("a LATIN1 database");
    let err = PostgresStore::connect(&server.url_for("latin"))
        .await
        .expect_err("refused");
    assert!(
        matches!(&err, ThreadStoreError::Unsupported { reason } if reason.contains("UTF8")),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_row_fails_only_its_own_thread() {
    let Some((store, url)) = shared_store("a_corrupt_row").await else {
        return;
    };
    for id in ["bad-meta", "bad-version", "bad-log", "good"] {
        store
            .create(
                Thread::new(id, "k")
                    .with_parent("p")
                    .with_message(NewMessage::new(json!(1))),
            )
            .await
            .expect("create");
    }
    let client = raw(&url).await;
    let schema = store.schema();
    client
        .batch_execute(&format!(
            "UPDATE \"{schema}\".threads SET metadata = '[1, 2]' WHERE id = 'bad-meta'; \
             UPDATE \"{schema}\".threads SET version = -3 WHERE id = 'bad-version'; \
             UPDATE \"{schema}\".threads SET first_log = '[1, tru' WHERE id = 'bad-log';"
        ))
        .await
        .expect("damage two rows");
    for id in ["bad-meta", "bad-version"] {
        let err = store.load(id).await.expect_err("corrupt");
        assert!(
            matches!(&err, ThreadStoreError::Corrupt { id: which, .. } if which == id),
            "{err:?}"
        );
    }
    assert_eq!(
        store
            .load("good")
            .await
            .expect("load")
            .expect("good")
            .version,
        1
    );
    let listed = store
        .list_all_threads(ThreadQuery::by_parent("p"))
        .await
        .expect("listing still works");
    assert_eq!(listed, ["bad-log", "bad-meta", "bad-version", "good"]);
    assert_eq!(
        store
            .load_all_messages("bad-meta")
            .await
            .expect("log")
            .len(),
        1
    );
    let err = store
        .load_all_messages("bad-log")
        .await
        .expect_err("a damaged log");
    assert!(
        matches!(&err, ThreadStoreError::Corrupt { id, .. } if id == "bad-log"),
        "{err:?}"
    );
    assert_eq!(
        store
            .load("bad-log")
            .await
            .expect("its head")
            .expect("exists")
            .version,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_threads_get_an_expiry_and_the_sweep_deletes_them_with_their_logs() {
    let retention = Duration::from_secs(3600);
    let options = PostgresStoreOptions::default()
        .with_retention(Some(retention))
        .with_sweep_interval(None);
    let Some((store, url)) = shared_store_with("retention", options).await else {
        return;
    };
    let finished = |id: &str| {
        let mut thread = Thread::new(id, "k").with_message(NewMessage::with_id("m", json!(1)));
        thread.terminal = true;
        thread
    };
    store.create(finished("done")).await.expect("create");
    store
        .append(
            "done",
            ChangeSet::default().with_message(NewMessage::with_id("later", json!(2))),
            VersionPrecondition::Any,
        )
        .await
        .expect("a message past the first entries, in the messages table");
    store.create(finished("reopened")).await.expect("create");
    store
        .create(Thread::new("open", "k"))
        .await
        .expect("create");
    store
        .append(
            "reopened",
            ChangeSet::default().with_terminal(false),
            VersionPrecondition::Any,
        )
        .await
        .expect("reopen");
    let client = raw(&url).await;
    let schema = store.schema();
    let rows = client
        .query(
            &format!(
                "SELECT id, expires_at IS NOT NULL, \
                 expires_at BETWEEN now() + interval '59 minutes' AND now() + interval '61 minutes' \
                 FROM \"{schema}\".threads ORDER BY id"
            ),
            &[],
        )
        .await
        .expect("expiries");
    let expiries: Vec<(String, bool, Option<bool>)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        expiries,
        [
            ("done".to_owned(), true, Some(true)),
            ("open".to_owned(), false, None),
            ("reopened".to_owned(), false, None),
        ]
    );
    assert_eq!(store.sweep_expired(100).await.expect("sweep"), 0, "not yet");

    // Let the retention run out without waiting an hour.
    client
        .execute(
            &format!(
                "UPDATE \"{schema}\".threads SET expires_at = now() - interval '1 second' \
                 WHERE expires_at IS NOT NULL"
            ),
            &[],
        )
        .await
        .expect("age the finished thread");
    assert_eq!(store.sweep_expired(100).await.expect("sweep"), 1);
    assert!(store.load("done").await.expect("load").is_none());
    assert!(store.load("open").await.expect("load").is_some());
    assert!(store.load("reopened").await.expect("load").is_some());
    let orphans: i64 = client
        .query_one(
            &format!("SELECT count(*) FROM \"{schema}\".messages WHERE thread_id = 'done'"),
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(orphans, 0, "the log went with the thread");
    // The id is free again, with a fresh log.
    store.create(finished("done")).await.expect("recreate");
    assert_eq!(store.load_all_messages("done").await.expect("log").len(), 1);
}

/// Waits for the next signal, failing the test if none comes in `within`
/// (a bound on a broken store, not a sleep: the signal normally arrives at
/// once).
async fn next_signal(receiver: &mut task_store::SignalReceiver, within: Duration) {
    tokio::time::timeout(within, receiver.recv())
        .await
        .expect("a signal arrives")
        .expect("the watch is alive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_wakes_the_watchers_of_its_name_in_other_stores_of_the_schema() {
    let Some((sender, url)) = shared_store("signals").await else {
        return;
    };
    let same = PostgresStoreOptions::default().with_schema(sender.schema().to_owned());
    let watcher = PostgresStore::connect_with(&url, same)
        .await
        .expect("a second store");
    let other = PostgresStore::connect_with(
        &url,
        PostgresStoreOptions::default().with_schema(unique_schema("signals_other")),
    )
    .await
    .expect("a store of another schema");
    let signals = watcher.signals().expect("postgres has signals");
    let mut inbox = signals.watch("inbox:a").await.expect("watch");
    let mut elsewhere = signals.watch("inbox:b").await.expect("watch");
    let other_signals = other.signals().expect("signals");
    let mut foreign = other_signals.watch("inbox:a").await.expect("watch");
    let mut barrier = other_signals.watch("barrier").await.expect("watch");

    let send = sender.signals().expect("signals");
    send.signal("inbox:a").await.expect("signal");
    next_signal(&mut inbox, Duration::from_secs(10)).await;
    // Notifications reach a listening session in commit order, and each is
    // handed to its watchers before the next: once b's watcher (same
    // channel) and the other schema's barrier (sent after a's) have fired,
    // a wrong delivery of a's or b's signal would have fired too.
    send.signal("inbox:b").await.expect("signal");
    next_signal(&mut elsewhere, Duration::from_secs(10)).await;
    other_signals.signal("barrier").await.expect("signal");
    next_signal(&mut barrier, Duration::from_secs(10)).await;
    assert!(
        tokio::time::timeout(Duration::ZERO, foreign.recv())
            .await
            .is_err(),
        "another schema's signal woke a watcher"
    );
    assert!(
        tokio::time::timeout(Duration::ZERO, inbox.recv())
            .await
            .is_err(),
        "b's signal woke a's watcher"
    );
    assert!(signals.signal("bad\nname").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listening_connection_comes_back_and_wakes_its_watchers() {
    let Some(server) = admin_server("the_listening_connection_comes_back") else {
        return;
    };
    let name = "listener_test";
    let store = PostgresStore::connect_with(
        &named(&server.url(), name),
        PostgresStoreOptions::default().with_schema(unique_schema("listen")),
    )
    .await
    .expect("connect");
    let signals = store.signals().expect("signals");
    let mut receiver = signals.watch("w").await.expect("watch");
    let admin = raw(&server.url()).await;
    assert!(
        terminate(&admin, name).await >= 1,
        "the LISTEN session was found"
    );
    // Signals sent while it was away are lost; the reconnection wakes the
    // watcher instead, so it looks at durable state.
    next_signal(&mut receiver, Duration::from_secs(20)).await;
    signals
        .signal("w")
        .await
        .expect("signal after the reconnection");
    next_signal(&mut receiver, Duration::from_secs(20)).await;
}
