//! `RedisStore` through a `FaultProxy` in front of a private, real
//! `redis-server`: an ambiguous commit (the request delivered and applied,
//! its reply dropped) of a create, an append and both batches neither loses
//! nor duplicates anything when the caller retries as the contract says; a
//! blackholed server gives a retryable timeout within the response timeout,
//! never a hang, and the store recovers once the network heals.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use task_store::{
    AppendRequest, ChangeSet, Committed, NewMessage, Thread, ThreadQuery, ThreadReaderExt,
    ThreadStore, ThreadStoreError, VersionPrecondition,
};
use task_store_redis::{RedisStore, RedisStoreOptions};
use task_testkit::proxy::FaultProxy;
use task_testkit::redis_server::{RedisServer, private_server_or_skip, unique_prefix};

const RESPONSE_TIMEOUT: Duration = Duration::from_millis(300);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(300);

/// A private server, a proxy in front of it, a store through the proxy and
/// a store straight to the server (to see what really happened), both on
/// one fresh prefix.
struct Rig {
    _server: RedisServer,
    proxy: FaultProxy,
    through: Arc<dyn ThreadStore>,
    direct: Arc<dyn ThreadStore>,
}

async fn rig(test: &str) -> Option<Rig> {
    let server = private_server_or_skip(test, RedisServer::builder())?;
    let upstream = SocketAddr::from(([127, 0, 0, 1], server.port()));
    let proxy = FaultProxy::start(upstream).await.expect("start the proxy");
    let options = RedisStoreOptions::default()
        .with_prefix(unique_prefix(test))
        .with_response_timeout(RESPONSE_TIMEOUT)
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_reconnect_retries(1)
        .with_reconnect_max_delay(Duration::from_millis(50));
    let through = RedisStore::connect_with(&format!("redis://{}/", proxy.addr()), options.clone())
        .await
        .expect("connect through the proxy");
    let direct = RedisStore::connect_with(&server.url(), options)
        .await
        .expect("connect to the server");
    Some(Rig {
        _server: server,
        proxy,
        through: Arc::new(through),
        direct: Arc::new(direct),
    })
}

/// Runs `call` until it gives something other than a retryable error (the
/// store reconnects on the next call after a reset), as a caller retrying
/// an ambiguous write does.
async fn retried<T, F, Fut>(what: &str, mut call: F) -> task_store::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = task_store::Result<T>>,
{
    for _ in 0..20 {
        match call().await {
            Err(error) if error.is_retryable() => continue,
            other => return other,
        }
    }
    panic!("{what}: still failing with retryable errors after 20 attempts");
}

/// A batch's results, or its first retryable error: the transport failed
/// for some items, so the caller retries the whole batch.
fn answered(
    results: Vec<task_store::Result<Committed>>,
) -> task_store::Result<Vec<task_store::Result<Committed>>> {
    match results
        .iter()
        .find_map(|r| r.as_ref().err().filter(|e| e.is_retryable()))
    {
        Some(error) => Err(error.clone()),
        None => Ok(results),
    }
}

fn ambiguous(error: &ThreadStoreError) {
    assert!(
        error.is_retryable(),
        "a lost reply is a retryable error (the outcome is unknown): {error:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ambiguous_create_is_applied_once_and_its_retry_says_already_exists() {
    let Some(rig) = rig("an_ambiguous_create_is_applied_once").await else {
        return;
    };
    let id = "ambiguous-create";
    let thread = Thread::new(id, "task")
        .with_parent("owner")
        .with_state(json!({ "status": "running" }))
        .with_message(NewMessage::with_id("a1:start", json!({ "event": "start" })));
    rig.proxy.drop_reply_to(id);
    let error = rig
        .through
        .create(thread.clone())
        .await
        .expect_err("the reply was dropped");
    ambiguous(&error);
    assert_eq!(rig.proxy.stats().dropped_replies, 1, "the fault fired");
    let head = rig
        .direct
        .load(id)
        .await
        .expect("load")
        .expect("the create reached the server and was applied");
    assert_eq!((head.version, head.last_seq), (1, 1));

    let retry = retried("retry the create", || rig.through.create(thread.clone())).await;
    assert!(
        matches!(retry, Err(ThreadStoreError::AlreadyExists { .. })),
        "the retry finds the thread: {retry:?}"
    );
    let head = rig.direct.load(id).await.expect("load").expect("stored");
    assert_eq!((head.version, head.last_seq), (1, 1), "applied once");
    let log = rig.direct.load_all_messages(id).await.expect("log");
    assert_eq!(log.len(), 1, "one start message");
    let listed = rig
        .direct
        .list_all_threads(ThreadQuery::by_parent("owner"))
        .await
        .expect("list");
    assert_eq!(listed, [id], "indexed once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ambiguous_append_is_applied_once_and_its_retry_changes_nothing() {
    let Some(rig) = rig("an_ambiguous_append_is_applied_once").await else {
        return;
    };
    let id = "ambiguous-append";
    rig.through
        .create(Thread::new(id, "task").with_state(json!({ "status": "running" })))
        .await
        .expect("create");
    let finish = ChangeSet::state(json!({ "status": "completed" }))
        .with_message(NewMessage::with_id(
            "a1:finish-7f3e",
            json!({ "event": "finish" }),
        ))
        .with_terminal(true);
    rig.proxy.drop_reply_to("a1:finish-7f3e");
    let error = rig
        .through
        .append(id, finish.clone(), VersionPrecondition::Exact(1))
        .await
        .expect_err("the reply was dropped");
    ambiguous(&error);
    let head = rig.direct.load(id).await.expect("load").expect("stored");
    assert_eq!(
        (head.version, head.state.clone(), head.terminal),
        (2, json!({ "status": "completed" }), true),
        "the append reached the server and was applied"
    );

    // A compare-and-swap retry sees that its version moved on...
    let retry = retried("retry with Exact(1)", || {
        rig.through
            .append(id, finish.clone(), VersionPrecondition::Exact(1))
    })
    .await;
    assert!(
        matches!(
            retry,
            Err(ThreadStoreError::VersionConflict {
                expected: 1,
                actual: 2,
                ..
            })
        ),
        "{retry:?}"
    );
    // ...and a blind retry of the same change set adds no message.
    let committed = retried("retry with Any", || {
        rig.through
            .append(id, finish.clone(), VersionPrecondition::Any)
    })
    .await
    .expect("the retry commits");
    assert_eq!((committed.appended, committed.skipped), (0, 1));
    let log = rig.direct.load_all_messages(id).await.expect("log");
    assert_eq!(log.len(), 1, "the finish message is in the log once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_batches_are_applied_once_and_their_retries_change_nothing() {
    const N: usize = 40;
    let Some(rig) = rig("ambiguous_batches_are_applied_once").await else {
        return;
    };
    let ids: Vec<String> = (0..N).map(|i| format!("batch-{i:02}")).collect();
    let threads: Vec<Thread> = ids
        .iter()
        .map(|id| {
            Thread::new(id, "task")
                .with_parent("batch-owner")
                .with_message(NewMessage::with_id("a1:start", json!(id)))
        })
        .collect();
    rig.proxy.drop_reply_to(&ids[N / 2]);
    let results = rig.through.create_batch(threads.clone()).await;
    assert_eq!(results.len(), N);
    let lost = results.iter().filter(|r| r.is_err()).count();
    assert!(lost > 0, "the dropped reply failed the batch: {results:?}");
    for error in results.iter().filter_map(|r| r.as_ref().err()) {
        ambiguous(error);
    }
    for id in &ids {
        let head = rig.direct.load(id).await.expect("load");
        assert_eq!(
            head.map(|h| h.version),
            Some(1),
            "{id}: the batch reached the server and was applied"
        );
    }
    let retry = retried("retry the create_batch", || async {
        answered(rig.through.create_batch(threads.clone()).await)
    })
    .await
    .expect("the retry gets answers");
    for (id, result) in ids.iter().zip(&retry) {
        assert!(
            matches!(result, Err(ThreadStoreError::AlreadyExists { .. })),
            "{id}: {result:?}"
        );
    }

    let appends: Vec<AppendRequest> = ids
        .iter()
        .map(|id| AppendRequest {
            id: id.clone(),
            changes: ChangeSet::state(json!("done"))
                .with_message(NewMessage::with_id(format!("a1:finish-{id}"), json!(id))),
            precondition: VersionPrecondition::Exact(1),
        })
        .collect();
    rig.proxy.drop_reply_to(format!("a1:finish-{}", ids[N / 3]));
    let results = rig.through.append_batch(appends.clone()).await;
    assert!(
        results.iter().any(Result::is_err),
        "the dropped reply failed the batch: {results:?}"
    );
    for error in results.iter().filter_map(|r| r.as_ref().err()) {
        ambiguous(error);
    }
    let blind: Vec<AppendRequest> = appends
        .into_iter()
        .map(|request| AppendRequest {
            precondition: VersionPrecondition::Any,
            ..request
        })
        .collect();
    let retry = retried("retry the append_batch", || async {
        answered(rig.through.append_batch(blind.clone()).await)
    })
    .await
    .expect("the retry gets answers");
    for (id, result) in ids.iter().zip(retry) {
        let committed = result.unwrap_or_else(|e| panic!("{id}: {e:?}"));
        assert_eq!(
            (committed.appended, committed.skipped),
            (0, 1),
            "{id}: the finish was applied by the lost batch"
        );
    }
    for id in &ids {
        let log = rig.direct.load_all_messages(id).await.expect("log");
        assert_eq!(log.len(), 2, "{id}: start and finish, once each");
    }
    let listed = rig
        .direct
        .list_all_threads(ThreadQuery::by_parent("batch-owner"))
        .await
        .expect("list");
    assert_eq!(listed, ids, "every thread indexed once");
}

/// Awaits a call to a blackholed server: it must end (a hang fails the test
/// after 30 s) with a retryable `Timeout`, no sooner than the response
/// timeout and no later than it plus scheduling slack.
async fn timeout_within_bounds<T: std::fmt::Debug>(
    what: &str,
    call: impl Future<Output = task_store::Result<T>>,
) {
    let started = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .unwrap_or_else(|_| panic!("{what} hung on a blackholed server"));
    let elapsed = started.elapsed();
    let error = result.expect_err("nothing answers");
    assert!(
        matches!(error, ThreadStoreError::Timeout { .. }) && error.is_retryable(),
        "{what}: a retryable timeout, not {error:?}"
    );
    let bound = RESPONSE_TIMEOUT + Duration::from_secs(1);
    assert!(
        elapsed >= RESPONSE_TIMEOUT.mul_f64(0.9) && elapsed <= bound,
        "{what} failed after {elapsed:?}, not at its response timeout {RESPONSE_TIMEOUT:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_server_gives_retryable_timeouts_never_a_hang() {
    let Some(rig) = rig("a_blackholed_server_gives_retryable_timeouts").await else {
        return;
    };
    let id = "blackholed";
    rig.through
        .create(Thread::new(id, "task").with_parent("owner"))
        .await
        .expect("create before the blackhole");
    rig.proxy.set_blackhole(true);
    // Every kind of call, twice: the first on the live connection, the
    // second after the store may have given it up.
    for round in 0..2_u64 {
        timeout_within_bounds("load", rig.through.load(id)).await;
        timeout_within_bounds(
            "append",
            rig.through
                .append(id, ChangeSet::state(json!(round)), VersionPrecondition::Any),
        )
        .await;
        timeout_within_bounds(
            "create",
            rig.through
                .create(Thread::new(format!("new-{round}"), "task")),
        )
        .await;
        timeout_within_bounds(
            "list_threads",
            rig.through.list_threads(ThreadQuery::by_parent("owner")),
        )
        .await;
    }
    assert!(
        rig.proxy.stats().swallowed > 0,
        "the blackhole swallowed the calls"
    );
    assert_eq!(
        rig.direct.load(id).await.expect("load").map(|h| h.version),
        Some(1),
        "nothing reached the server"
    );

    rig.proxy.heal();
    let head = retried("load after the heal", || rig.through.load(id))
        .await
        .expect("the store recovers once the network heals");
    assert_eq!(head.map(|h| h.version), Some(1));
}
