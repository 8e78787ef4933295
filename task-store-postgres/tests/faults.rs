//! `PostgresStore` under faults of a real server: a hard stop and restart,
//! connections terminated mid-run, a statement timeout, a server process
//! that stops answering, and a refused connection. Every failure is a
//! retryable error, never a hang, and nothing is lost.

mod support;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use task_store::{
    ChangeSet, NewMessage, Thread, ThreadReader, ThreadReaderExt, ThreadStoreError, ThreadWriter,
    VersionPrecondition,
};
use task_store_postgres::{PostgresStore, PostgresStoreOptions};
use task_testkit::postgres_server::{PostgresServer, private_server_or_skip, unique_schema};

use support::{fast_options, named, raw, shared_store_with, terminate};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hard_stop_fails_calls_at_once_and_the_store_recovers_after_restart() {
    let test = "a_hard_stop_fails_calls_at_once";
    let Some(mut server) = private_server_or_skip(test, PostgresServer::builder()) else {
        return;
    };
    let store = PostgresStore::connect_with(
        &server.url(),
        fast_options().with_schema(unique_schema(test)),
    )
    .await
    .expect("connect");
    store
        .create(Thread::new("kept", "k").with_state(json!({ "n": 1 })))
        .await
        .expect("create before the stop");

    server.stop_immediate().expect("pg_ctl stop -m immediate");
    let started = Instant::now();
    let err = store.load("kept").await.expect_err("the server is down");
    assert!(err.is_retryable(), "{err:?}");
    assert!(
        matches!(err, ThreadStoreError::Unavailable { .. }),
        "{err:?}"
    );
    let err = store
        .append(
            "kept",
            ChangeSet::state(json!(2)),
            VersionPrecondition::Exact(1),
        )
        .await
        .expect_err("the server is down");
    assert!(err.is_retryable(), "{err:?}");
    assert!(
        started.elapsed() < fast_options().response_timeout,
        "refused connections fail at once, not after the response timeout: {:?}",
        started.elapsed()
    );

    server.restart().expect("crash recovery and restart");
    let head = store.load("kept").await.expect("the pool reconnects");
    assert_eq!(
        head.expect("committed before the stop").state,
        json!({ "n": 1 })
    );
    store
        .append(
            "kept",
            ChangeSet::state(json!(2)),
            VersionPrecondition::Exact(1),
        )
        .await
        .expect("writes work again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_terminated_mid_run_lose_no_write_and_write_nothing_twice() {
    let test = "connections_terminated_mid_run";
    let Some(server) = private_server_or_skip(test, PostgresServer::builder()) else {
        return;
    };
    let name = "terminated_mid_run";
    let store = Arc::new(
        PostgresStore::connect_with(
            &named(&server.url(), name),
            fast_options().with_schema(unique_schema(test)),
        )
        .await
        .expect("connect"),
    );
    const THREADS: usize = 8;
    const APPENDS: usize = 40;
    for t in 0..THREADS {
        store
            .create(Thread::new(format!("t{t}"), "k"))
            .await
            .expect("create");
    }
    let done = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let admin = raw(&server.url()).await;
    let killer = {
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            let mut killed = 0;
            while !done.load(Ordering::Relaxed) {
                killed += terminate(&admin, name).await;
                // Pacing the fault, not waiting for anything.
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            killed
        })
    };
    let workers = (0..THREADS).map(|t| {
        let store = Arc::clone(&store);
        let failures = Arc::clone(&failures);
        tokio::spawn(async move {
            let id = format!("t{t}");
            for i in 0..APPENDS {
                // Each append carries its message id, so retrying one whose
                // outcome was unknown cannot log it twice.
                let changes = ChangeSet::state(json!({ "last": i }))
                    .with_message(NewMessage::with_id(format!("m{i}"), json!(i)));
                let mut attempts = 0;
                loop {
                    match store
                        .append(&id, changes.clone(), VersionPrecondition::Any)
                        .await
                    {
                        Ok(_) => break,
                        Err(err) if err.is_retryable() && attempts < 200 => {
                            attempts += 1;
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(err) => panic!("{id} append {i}: {err:?}"),
                    }
                }
            }
        })
    });
    for worker in futures::future::join_all(workers).await {
        worker.expect("worker");
    }
    done.store(true, Ordering::Relaxed);
    let killed = killer.await.expect("killer");
    assert!(
        killed > 0,
        "no session was terminated: the test proved nothing"
    );

    for t in 0..THREADS {
        let id = format!("t{t}");
        let log = store.load_all_messages(&id).await.expect("log");
        let bodies: Vec<_> = log.iter().map(|m| m.body.clone()).collect();
        let expected: Vec<_> = (0..APPENDS).map(|i| json!(i)).collect();
        assert_eq!(bodies, expected, "{id}: every append once, in order");
        let seqs: Vec<u64> = log.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, (1..=APPENDS as u64).collect::<Vec<_>>(), "{id}");
        let head = store.load(&id).await.expect("load").expect("exists");
        assert_eq!(head.state, json!({ "last": APPENDS - 1 }), "{id}");
        assert_eq!(head.last_seq, APPENDS as u64, "{id}");
    }
    eprintln!(
        "terminated {killed} sessions; {} calls failed and were retried",
        failures.load(Ordering::Relaxed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_timeout_is_a_retryable_timeout_and_changes_nothing() {
    let options = fast_options().with_statement_timeout(Duration::from_millis(300));
    let Some((store, url)) = shared_store_with("statement_timeout", options).await else {
        return;
    };
    store
        .create(Thread::new("held", "k"))
        .await
        .expect("create");
    // Another session holds the thread's row, so the append waits for it
    // until the server cancels the statement.
    let mut holder = raw(&url).await;
    let tx = holder.transaction().await.expect("begin");
    tx.execute(
        &format!(
            "SELECT 1 FROM \"{}\".threads WHERE id = 'held' FOR UPDATE",
            store.schema()
        ),
        &[],
    )
    .await
    .expect("lock the row");
    let started = Instant::now();
    let err = store
        .append(
            "held",
            ChangeSet::state(json!("blocked")),
            VersionPrecondition::Exact(1),
        )
        .await
        .expect_err("cancelled by the statement timeout");
    assert!(
        matches!(&err, ThreadStoreError::Timeout { message, .. } if message.contains("57014")),
        "{err:?}"
    );
    assert!(err.is_retryable());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the server's timeout ended it: {:?}",
        started.elapsed()
    );
    tx.rollback().await.expect("release the row");
    assert_eq!(
        store
            .load("held")
            .await
            .expect("load")
            .expect("held")
            .version,
        1,
        "the cancelled write changed nothing"
    );
    store
        .append(
            "held",
            ChangeSet::state(json!("free")),
            VersionPrecondition::Exact(1),
        )
        .await
        .expect("the retry commits");
}

/// Sends a signal to a process (a server process of our private server).
fn signal_process(signal: &str, pid: i32) {
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {signal} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_process_that_stops_answering_is_a_timeout_not_a_hang() {
    let test = "a_server_process_that_stops_answering";
    let Some(server) = private_server_or_skip(test, PostgresServer::builder()) else {
        return;
    };
    let name = "frozen_backend";
    let response_timeout = Duration::from_millis(800);
    let store = PostgresStore::connect_with(
        &named(&server.url(), name),
        PostgresStoreOptions::default()
            .with_schema(unique_schema(test))
            .with_max_connections(1)
            .with_response_timeout(response_timeout),
    )
    .await
    .expect("connect");
    store.create(Thread::new("t", "k")).await.expect("create");
    let admin = raw(&server.url()).await;
    let pid: i32 = admin
        .query_one(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1",
            &[&name],
        )
        .await
        .expect("the store's one session")
        .get(0);
    signal_process("-STOP", pid);
    let started = Instant::now();
    let outcome = store.load("t").await;
    let waited = started.elapsed();
    signal_process("-CONT", pid);
    let err = outcome.expect_err("no answer");
    assert!(matches!(err, ThreadStoreError::Timeout { .. }), "{err:?}");
    assert!(err.is_retryable());
    assert!(
        waited >= response_timeout && waited < response_timeout * 3,
        "bounded by the response timeout: {waited:?}"
    );
    // The frozen connection was closed, not handed out again.
    assert!(store.load("t").await.expect("a fresh connection").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_where_no_server_listens_is_unavailable() {
    let port = std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let err = PostgresStore::connect_with(
        &format!("postgres://postgres@127.0.0.1:{port}/postgres"),
        fast_options(),
    )
    .await
    .expect_err("nothing listens");
    assert!(
        matches!(&err, ThreadStoreError::Unavailable { message, .. } if message.contains(&port.to_string())),
        "{err:?}"
    );
    assert!(err.is_retryable());
}
