//! The durable layer's cost against history (issue 13), on `MemoryStore` and
//! on Redis, and the small end of the registry against plain Rust.
//!
//! - `cancel_tree_store_scaling_{memory,redis}`: `cancel_tree` of a running
//!   1,001-task tree in a multi-process manager whose owner has 100,000
//!   finished stored tasks, against the same tree with no history.
//! - `recover_scaling_{memory,redis}`: `recover()` finding 100 expired
//!   running tasks among 100,000 finished records, against the same 100
//!   alone.
//! - `list_durable_scaling_{memory,redis}`: `list_including_durable` of an
//!   owner with 100 open tasks held by another process, among 100,000
//!   finished records of other owners, against those 100 alone.
//! - `list_owner_small`: `list(owner)` of 100 tasks against cloning 100
//!   equal summaries out of a `Vec`.
//! - `cancel_tree_small`: `cancel_tree` of a lone 1,001-task tree against
//!   cancelling 1,001 tokens that 1,001 spawned tasks await.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use task_core::thread_store::{Thread, ThreadStore};
use task_core::{
    BackgroundTaskManager, Lease, RunCancellationToken, SpawnParams, TaskRecord, TaskStatus,
    TaskStore, TaskSummary, new_task_id,
};
use task_store_memory::MemoryStore;
use task_store_redis::{RedisStore, RedisStoreOptions};
use task_testkit::redis_server::RedisServer;

use crate::Sizes;
use crate::report::{Measurement, Target, median};
use crate::workloads::{runtime, spawn_tree};

/// Which store a workload runs on.
#[derive(Debug, Clone)]
pub(crate) enum Backend {
    Memory,
    /// A private redis-server's URL.
    Redis(String),
}

impl Backend {
    fn suffix(&self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Redis(_) => "redis",
        }
    }

    /// A store of its own (a fresh `MemoryStore`, or a fresh key prefix).
    async fn open(&self, name: &str) -> Arc<dyn ThreadStore> {
        match self {
            Self::Memory => Arc::new(MemoryStore::new()),
            Self::Redis(url) => {
                let url = format!("{url}?prefix=bench-{name}-{}", new_task_id());
                let options =
                    RedisStoreOptions::default().with_response_timeout(Duration::from_secs(10));
                Arc::new(
                    RedisStore::connect_with(&url, options)
                        .await
                        .expect("the private redis-server accepts connections"),
                )
            }
        }
    }
}

/// The Redis backend of the `_redis` rows, or why there is none.
pub(crate) fn redis_backend() -> Result<(RedisServer, Backend), String> {
    let server = RedisServer::start().map_err(|e| {
        format!(
            "no private redis-server could be started ({e}); install redis-server \
             (Debian: apt-get install redis-server); no figure was measured"
        )
    })?;
    let url = server.url().to_owned();
    Ok((server, Backend::Redis(url)))
}

fn skipped(mut m: Measurement, why: &str) -> Measurement {
    eprintln!("!!! {} SKIPPED: {why}", m.name);
    m.skipped = Some(why.to_owned());
    m
}

/// A finished task record of `owner`, as a thread to create.
fn finished_thread(owner: &str, i: usize) -> Thread {
    let id = format!("hist-{owner}-{i:07}");
    let record = TaskRecord {
        task_id: id.clone(),
        owner_thread_id: owner.to_owned(),
        task_type: "bench".to_owned(),
        description: "finished long ago".to_owned(),
        status: TaskStatus::Completed,
        error: None,
        result: Some(json!({ "i": i })),
        parent_task_id: None,
        supports_resume: false,
        attempt: 1,
        metadata: Value::Null,
        created_at_ms: 1,
        updated_at_ms: 2,
        completed_at_ms: Some(2),
        cancel_requested_at_ms: None,
        lease: None,
        run_id: None,
        checkpoint: None,
    };
    let mut thread = Thread::new(TaskStore::thread_id(&id), "task")
        .with_parent(owner)
        .with_state(serde_json::to_value(&record).expect("a record encodes"));
    thread.terminal = true;
    thread
}

/// A running record of `owner` held by an instance that is long gone (or,
/// with `alive`, by one whose lease runs for an hour).
fn running_thread(owner: &str, id: &str, alive: bool) -> Thread {
    let record = TaskRecord {
        task_id: id.to_owned(),
        owner_thread_id: owner.to_owned(),
        task_type: "agent_run".to_owned(),
        description: "held elsewhere".to_owned(),
        status: TaskStatus::Running,
        error: None,
        result: None,
        parent_task_id: None,
        supports_resume: true,
        attempt: 1,
        metadata: Value::Null,
        created_at_ms: 1,
        updated_at_ms: 1,
        completed_at_ms: None,
        cancel_requested_at_ms: None,
        lease: Some(Lease {
            holder: if alive { "elsewhere" } else { "gone" }.to_owned(),
            expires_at_ms: if alive { u64::MAX / 2 } else { 1 },
        }),
        run_id: Some(format!("run-{id}")),
        checkpoint: None,
    };
    Thread::new(TaskStore::thread_id(id), "task")
        .with_parent(owner)
        .with_state(serde_json::to_value(&record).expect("a record encodes"))
}

/// Writes `threads` in batches of 1,000.
async fn create_all(store: &Arc<dyn ThreadStore>, threads: Vec<Thread>) {
    let mut threads = threads.into_iter().peekable();
    while threads.peek().is_some() {
        let chunk: Vec<Thread> = threads.by_ref().take(1_000).collect();
        for result in store.create_batch(chunk).await {
            result.expect("the history is written");
        }
    }
}

/// `n` finished records spread over `owners` owners named `prefix-…`.
async fn history(store: &Arc<dyn ThreadStore>, prefix: &str, owners: usize, n: usize) {
    let threads = (0..n)
        .map(|i| finished_thread(&format!("{prefix}-{}", i % owners), i))
        .collect();
    create_all(store, threads).await;
}

fn multi_process(store: &Arc<dyn ThreadStore>, instance: &str) -> BackgroundTaskManager {
    BackgroundTaskManager::builder()
        .task_store(Arc::new(TaskStore::new(Arc::clone(store))))
        .instance_id(instance)
        .build()
}

const TREE: usize = 1_001;

/// Times `cancel_tree` of a fresh tree (µs), then waits for the tree to end,
/// makes it durable and collects it (untimed).
async fn time_cancel_tree(manager: &BackgroundTaskManager, owner: &str) -> f64 {
    let ids = spawn_tree(manager, owner).await;
    manager.flush().await;
    let started = Instant::now();
    let cancelled = manager
        .cancel_tree(owner, &ids[0])
        .await
        .expect("the tree is running");
    let elapsed = started.elapsed();
    assert_eq!(cancelled.len(), ids.len(), "the whole tree was cancelled");
    for id in &ids {
        let done = manager.wait(owner, id).await.expect("known");
        assert_eq!(done.status, TaskStatus::Cancelled);
    }
    manager.flush().await;
    manager.gc_terminal(owner).await;
    elapsed.as_secs_f64() * 1e6
}

/// `cancel_tree_store_scaling_{memory,redis}`.
pub(crate) fn cancel_tree_store_scaling(
    sizes: &Sizes,
    backend: Result<Backend, String>,
) -> Measurement {
    let name = match &backend {
        Ok(Backend::Memory) => "cancel_tree_store_scaling_memory",
        _ => "cancel_tree_store_scaling_redis",
    };
    let mut m = Measurement::new(
        name,
        format!(
            "tree of {TREE}; owner with {} finished stored tasks vs none",
            sizes.history
        ),
        "µs/call",
        Some("µs/call"),
        Target::RatioAtMost(2.0),
        "cancel_tree(owner, root) in a multi-process manager on a running tree of 1,001 tasks \
         whose owner has 100,000 finished task records in the store, vs the same tree on a \
         store without history; trees alternate between the two, each made durable first and \
         collected after (untimed); median per run",
    );
    let backend = match backend {
        Ok(backend) => backend,
        Err(why) => return skipped(m, &why),
    };
    let rt = runtime();
    let (with, without) = rt.block_on(async {
        let with = backend.open("tree-history").await;
        history(&with, "owner", 1, sizes.history).await;
        let without = backend.open("tree-fresh").await;
        (
            multi_process(&with, "with"),
            multi_process(&without, "without"),
        )
    });
    for _ in 0..sizes.runs {
        let (big, small) = rt.block_on(async {
            let mut big = Vec::new();
            let mut small = Vec::new();
            for t in 0..sizes.trees {
                for step in 0..2 {
                    if (t + step) % 2 == 0 {
                        small.push(time_cancel_tree(&without, "owner-0").await);
                    } else {
                        big.push(time_cancel_tree(&with, "owner-0").await);
                    }
                }
            }
            (
                median(&big).expect("a tree"),
                median(&small).expect("a tree"),
            )
        });
        m.push(big, Some(small));
    }
    m.notes.push(format!("suffix: {}", backend.suffix()));
    m
}

/// `recover_scaling_{memory,redis}`.
pub(crate) fn recover_scaling(sizes: &Sizes, backend: Result<Backend, String>) -> Measurement {
    let name = match &backend {
        Ok(Backend::Memory) => "recover_scaling_memory",
        _ => "recover_scaling_redis",
    };
    let mut m = Measurement::new(
        name,
        format!(
            "100 expired running among {} finished records vs alone",
            sizes.history
        ),
        "ms/call",
        Some("ms/call"),
        Target::RatioAtMost(2.0),
        "recover() of a multi-process manager finding 100 running tasks whose holder is long \
         gone, in a store that also holds 100,000 finished task records of 1,000 owners, vs \
         the same 100 in a store without history; fresh running records each run, the two \
         sides alternating; one call per side per run",
    );
    let backend = match backend {
        Ok(backend) => backend,
        Err(why) => return skipped(m, &why),
    };
    let rt = runtime();
    let (with, without) = rt.block_on(async {
        let with = backend.open("recover-history").await;
        history(&with, "other", 1_000, sizes.history).await;
        let without = backend.open("recover-fresh").await;
        (with, without)
    });
    for run in 0..sizes.runs {
        let (big, small) = rt.block_on(async {
            let mut times = [0.0, 0.0];
            for step in 0..2 {
                let side = (run + step) % 2;
                let store = if side == 0 { &without } else { &with };
                let threads = (0..100)
                    .map(|i| running_thread("victim", &format!("orphan-{run}-{i}"), false))
                    .collect();
                create_all(store, threads).await;
                let recoverer = multi_process(store, &format!("recoverer-{run}-{side}"));
                let started = Instant::now();
                let report = recoverer.recover().await.expect("recovery runs");
                times[side] = started.elapsed().as_secs_f64() * 1e3;
                assert_eq!(report.stopped.len(), 100, "{report:?}");
            }
            (times[1], times[0])
        });
        m.push(big, Some(small));
    }
    m.notes.push(format!("suffix: {}", backend.suffix()));
    m
}

/// `list_durable_scaling_{memory,redis}`.
pub(crate) fn list_durable_scaling(sizes: &Sizes, backend: Result<Backend, String>) -> Measurement {
    let name = match &backend {
        Ok(Backend::Memory) => "list_durable_scaling_memory",
        _ => "list_durable_scaling_redis",
    };
    let mut m = Measurement::new(
        name,
        format!(
            "owner of 100 open among {} finished records vs alone",
            sizes.history
        ),
        "µs/call",
        Some("µs/call"),
        Target::RatioAtMost(1.5),
        "list_including_durable(owner, None) of an owner with 100 open tasks held by another \
         process, in a store that also holds 100,000 finished records of 1,000 other owners, \
         vs the same 100 alone; batches of calls alternating, median batch per run",
    );
    let backend = match backend {
        Ok(backend) => backend,
        Err(why) => return skipped(m, &why),
    };
    let calls = if sizes.quick { 20 } else { 50 };
    let rt = runtime();
    let (with, without) = rt.block_on(async {
        let mut managers = Vec::new();
        for (name, n) in [("list-history", sizes.history), ("list-fresh", 0)] {
            let store = backend.open(name).await;
            history(&store, "other", 1_000, n).await;
            let open = (0..100)
                .map(|i| running_thread("listed", &format!("open-{i:03}"), true))
                .collect();
            create_all(&store, open).await;
            managers.push(multi_process(&store, name));
        }
        let without = managers.pop().expect("two managers");
        let with = managers.pop().expect("two managers");
        (with, without)
    });
    for _ in 0..sizes.runs {
        let (big, small) = rt.block_on(async {
            let mut big = Vec::new();
            let mut small = Vec::new();
            for b in 0..sizes.batches {
                for step in 0..2 {
                    let (manager, into) = if (b + step) % 2 == 0 {
                        (&without, &mut small)
                    } else {
                        (&with, &mut big)
                    };
                    let started = Instant::now();
                    for _ in 0..calls {
                        let listed = manager
                            .list_including_durable("listed", None)
                            .await
                            .expect("listing works");
                        assert_eq!(black_box(listed).len(), 100);
                    }
                    into.push(started.elapsed().as_secs_f64() * 1e6 / f64::from(calls));
                }
            }
            (
                median(&big).expect("a batch"),
                median(&small).expect("a batch"),
            )
        });
        m.push(big, Some(small));
    }
    m.notes.push(format!("suffix: {}", backend.suffix()));
    m
}

/// `list_owner_small`.
pub(crate) fn list_owner_small(sizes: &Sizes) -> Measurement {
    let mut m = Measurement::new(
        "list_owner_small",
        "owner of 100 tasks".to_owned(),
        "µs/call",
        Some("µs/call"),
        Target::RatioAtMost(2.0),
        "list(owner, None) of an owner with 100 finished tasks (metadata {\"tool\":\"bench\",\
         \"n\":i}) in a manager without a store, vs cloning 100 equal TaskSummary values out of \
         a Vec; batches of 1,000 calls alternating, median batch per run",
    );
    let calls = 1_000;
    for _ in 0..sizes.runs {
        let rt = runtime();
        let (value, baseline) = rt.block_on(async {
            let manager = BackgroundTaskManager::new();
            for i in 0..100 {
                let params = SpawnParams {
                    task_id: new_task_id(),
                    owner_thread_id: "owner".to_owned(),
                    task_type: "bench".to_owned(),
                    description: "a finished task".to_owned(),
                    parent_task_id: None,
                    metadata: json!({ "tool": "bench", "n": i }),
                };
                let id = manager
                    .spawn_with_id(params, RunCancellationToken::new(), |_| async {
                        task_core::TaskResult::Success(json!("done"))
                    })
                    .await
                    .expect("a valid spawn succeeds");
                manager.wait("owner", &id).await.expect("known");
            }
            let copies: Vec<TaskSummary> = manager.list("owner", None).await;
            assert_eq!(copies.len(), 100);
            let mut ours = Vec::new();
            let mut base = Vec::new();
            for b in 0..sizes.batches {
                for step in 0..2 {
                    let started = Instant::now();
                    if (b + step) % 2 == 0 {
                        for _ in 0..calls {
                            black_box(copies.clone());
                        }
                        base.push(started.elapsed().as_secs_f64() * 1e6 / f64::from(calls));
                    } else {
                        for _ in 0..calls {
                            black_box(manager.list("owner", None).await);
                        }
                        ours.push(started.elapsed().as_secs_f64() * 1e6 / f64::from(calls));
                    }
                }
            }
            (
                median(&ours).expect("a batch"),
                median(&base).expect("a batch"),
            )
        });
        drop(rt);
        m.push(value, Some(baseline));
    }
    m
}

/// `cancel_tree_small`.
pub(crate) fn cancel_tree_small(sizes: &Sizes) -> Measurement {
    let mut m = Measurement::new(
        "cancel_tree_small",
        format!("a lone tree of {TREE}"),
        "µs/call",
        Some("µs/call"),
        Target::RatioAtMost(2.0),
        "a lone running tree of 1,001 tasks in a manager without a store taken down: \
         cancel_tree(owner, root), then wait() on every task until all have ended, vs \
         cancelling 1,001 CancellationTokens that 1,001 spawned tasks await and joining the \
         tasks; alternating, several per run, median per run",
    );
    for _ in 0..sizes.runs {
        let rt = runtime();
        let (value, baseline) = rt.block_on(async {
            let manager = BackgroundTaskManager::new();
            let mut ours = Vec::new();
            let mut base = Vec::new();
            for t in 0..sizes.trees {
                for step in 0..2 {
                    if (t + step) % 2 == 0 {
                        base.push(cancel_tokens().await);
                    } else {
                        ours.push(time_tree_down(&manager, "owner").await);
                    }
                }
            }
            (
                median(&ours).expect("a tree"),
                median(&base).expect("a tree"),
            )
        });
        drop(rt);
        m.push(value, Some(baseline));
    }
    m
}

/// `cancel_tree_small`: times a tree's cancel until every task has ended
/// (µs), then collects it (untimed).
async fn time_tree_down(manager: &BackgroundTaskManager, owner: &str) -> f64 {
    let ids = spawn_tree(manager, owner).await;
    tokio::task::yield_now().await;
    let started = Instant::now();
    let cancelled = manager
        .cancel_tree(owner, &ids[0])
        .await
        .expect("the tree is running");
    for id in &ids {
        black_box(manager.wait(owner, id).await);
    }
    let elapsed = started.elapsed();
    assert_eq!(cancelled.len(), ids.len(), "the whole tree was cancelled");
    manager.gc_terminal(owner).await;
    elapsed.as_secs_f64() * 1e6
}

/// The baseline of `cancel_tree_small`: 1,001 spawned tasks each awaiting
/// its token; times cancelling the tokens and joining the tasks (µs).
async fn cancel_tokens() -> f64 {
    let tokens: Vec<RunCancellationToken> =
        (0..TREE).map(|_| RunCancellationToken::new()).collect();
    let handles: Vec<_> = tokens
        .iter()
        .map(|token| {
            let token = token.clone();
            tokio::spawn(async move { token.cancelled().await })
        })
        .collect();
    tokio::task::yield_now().await;
    let started = Instant::now();
    for token in &tokens {
        token.cancel();
    }
    for handle in handles {
        handle.await.expect("the task ends");
    }
    started.elapsed().as_secs_f64() * 1e6
}
