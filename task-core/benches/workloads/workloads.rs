//! Workloads 1 to 5: the manager in one process, without a store or over
//! `MemoryStore`. See the crate docs for what each one measures.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use task_core::{
    BackgroundTaskManager, RunCancellationToken, SpawnParams, TaskContext, TaskId, TaskResult,
    TaskStatus, TaskStore, new_task_id,
};
use task_store_memory::MemoryStore;
use tokio::runtime::Runtime;
use tokio::task::JoinSet;

use crate::Sizes;
use crate::report::{Measurement, Target, median};

/// The runtime every workload runs on: multi-threaded, one worker per core
/// (tokio's default), timers and I/O enabled. A fresh one per run, so tasks
/// a run leaves parked are dropped with it.
pub(crate) fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime can be built")
}

/// `prefix-0000`, `prefix-0001`...
pub(crate) fn owners(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i:04}")).collect()
}

/// The trivial task body of workloads 1, 5 and 6, and of their baseline.
pub(crate) async fn trivial() -> TaskResult {
    TaskResult::Success(Value::Null)
}

/// A task that runs until it is cancelled.
pub(crate) async fn parked(ctx: TaskContext) -> TaskResult {
    ctx.cancelled().await;
    TaskResult::Cancelled
}

fn as_f64(n: usize) -> f64 {
    // Exact for every count used here (< 2^53).
    #[allow(clippy::cast_precision_loss)]
    let f = n as f64;
    f
}

fn ns_per(elapsed: Duration, n: usize) -> f64 {
    elapsed.as_secs_f64() * 1e9 / as_f64(n)
}

/// Bare tokio: the trivial futures spawned into a `JoinSet` and joined
/// until it is empty.
pub(crate) async fn bare_tokio(tasks: usize) -> Duration {
    let started = Instant::now();
    let mut set = JoinSet::new();
    for _ in 0..tasks {
        set.spawn(trivial());
    }
    let mut completed = 0usize;
    while let Some(joined) = set.join_next().await {
        if matches!(
            joined.expect("a trivial task neither panics nor is aborted"),
            TaskResult::Success(_)
        ) {
            completed += 1;
        }
    }
    let elapsed = started.elapsed();
    assert_eq!(completed, tasks, "every bare task completed");
    elapsed
}

/// Spawns `tasks` trivial tasks round-robin over `owners`, then waits on
/// every id until the manager reports it terminal, then flushes the store
/// (a no-op without one). Returns the time from the first spawn until the
/// flush returned, and the ids in spawn order.
pub(crate) async fn manager_spawn_complete(
    manager: &BackgroundTaskManager,
    tasks: usize,
    owners: &[String],
) -> (Duration, Vec<TaskId>) {
    let mut ids = Vec::with_capacity(tasks);
    let started = Instant::now();
    for i in 0..tasks {
        let owner = &owners[i % owners.len()];
        let id = manager
            .spawn(owner, "bench", "trivial", |_ctx| trivial())
            .await
            .expect("a valid spawn succeeds");
        ids.push(id);
    }
    let mut completed = 0usize;
    for (i, id) in ids.iter().enumerate() {
        let summary = manager
            .wait(&owners[i % owners.len()], id)
            .await
            .expect("the manager knows the task it spawned");
        if summary.status == TaskStatus::Completed {
            completed += 1;
        }
    }
    manager.flush().await;
    let elapsed = started.elapsed();
    assert_eq!(completed, tasks, "every managed task completed");
    (elapsed, ids)
}

/// One untimed pass of each side, so that neither timed pass is the one
/// that grows the heap and faults its pages in.
async fn warm_up(tasks: usize, owners: &[String]) {
    bare_tokio(tasks).await;
    let manager = BackgroundTaskManager::new();
    manager_spawn_complete(&manager, tasks, owners).await;
    drop(manager);
}

const SPAWN_METHOD: &str = "from the first spawn until wait(owner, id) has returned a completed \
summary for every id (waited in spawn order after the last spawn); baseline: the same futures \
with tokio::spawn into a JoinSet, joined until empty; both after an untimed warm-up pass of \
each, in alternating order";

/// Workload 1: `spawn_complete`.
pub(crate) fn spawn_complete(sizes: &Sizes) -> Measurement {
    let n = sizes.spawn_tasks;
    let mut m = Measurement::new(
        "spawn_complete",
        format!("{n} tasks / {} owners", sizes.spawn_owners),
        "ns/task",
        Some("ns/task"),
        Target::RatioAtMost(2.0),
        SPAWN_METHOD,
    );
    let owners = owners("owner", sizes.spawn_owners);
    for run in 0..sizes.runs {
        let rt = runtime();
        let (base, managed) = rt.block_on(async {
            warm_up(n, &owners).await;
            let mut base = Duration::ZERO;
            let mut managed = Duration::ZERO;
            for step in 0..2 {
                if (step + run) % 2 == 0 {
                    base = bare_tokio(n).await;
                } else {
                    let manager = BackgroundTaskManager::new();
                    managed = manager_spawn_complete(&manager, n, &owners).await.0;
                    drop(manager);
                }
            }
            (base, managed)
        });
        drop(rt);
        m.push(ns_per(managed, n), Some(ns_per(base, n)));
    }
    m.notes.push(single_thread_breakdown(n, &owners));
    m
}

/// Not the figure: the same workload on a current-thread runtime, where the
/// spawner and the tasks never contend for a lock, split into the spawn
/// loop and the waits, plus the cost of `wait` alone on finished tasks. It
/// separates what a task costs the manager from what contention adds.
fn single_thread_breakdown(n: usize, owners: &[String]) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime can be built");
    rt.block_on(async {
        warm_up(n, owners).await;
        let base = bare_tokio(n).await;
        let manager = BackgroundTaskManager::new();
        let started = Instant::now();
        let mut ids = Vec::with_capacity(n);
        for i in 0..n {
            ids.push(
                manager
                    .spawn(&owners[i % owners.len()], "bench", "trivial", |_ctx| {
                        trivial()
                    })
                    .await
                    .expect("a valid spawn succeeds"),
            );
        }
        let spawned = started.elapsed();
        for (i, id) in ids.iter().enumerate() {
            black_box(manager.wait(&owners[i % owners.len()], id).await);
        }
        let total = started.elapsed();
        let again = Instant::now();
        for (i, id) in ids.iter().enumerate() {
            black_box(manager.wait(&owners[i % owners.len()], id).await);
        }
        let wait_only = again.elapsed();
        format!(
            "on a current-thread runtime (no lock contention), one run: manager {:.0} ns/task \
             (spawn loop {:.0}, then running the tasks and waiting {:.0}) vs bare tokio {:.0} \
             (ratio {:.2}); wait() on an already finished task alone: {:.0} ns",
            ns_per(total, n),
            ns_per(spawned, n),
            ns_per(total - spawned, n),
            ns_per(base, n),
            ns_per(total, n) / ns_per(base, n),
            ns_per(wait_only, n)
        )
    })
}

/// A manager holding `per_owner` running tasks for each of `owners`,
/// spawned round-robin.
async fn parked_registry(owners: &[String], per_owner: usize) -> BackgroundTaskManager {
    let manager = BackgroundTaskManager::new();
    for _ in 0..per_owner {
        for owner in owners {
            manager
                .spawn(owner, "bench", "parked until cancelled", parked)
                .await
                .expect("a valid spawn succeeds");
        }
    }
    manager
}

/// The two managers of workloads 2 and 3: `big` with every owner's tasks,
/// `small` with only `owner`'s.
struct Registries {
    big: BackgroundTaskManager,
    small: BackgroundTaskManager,
    owner: String,
    per_owner: usize,
}

async fn registries(sizes: &Sizes) -> Registries {
    let owners = owners("owner", sizes.registry_owners);
    let per_owner = sizes.registry_tasks / sizes.registry_owners;
    let owner = owners[owners.len() / 2].clone();
    let big = parked_registry(&owners, per_owner).await;
    let small = parked_registry(std::slice::from_ref(&owner), per_owner).await;
    Registries {
        big,
        small,
        owner,
        per_owner,
    }
}

/// Runs `batch` on the small then the big manager (alternating which goes
/// first), `sizes.batches` times; returns the median batch of each,
/// `(small, big)`.
async fn paired_batches<F, Fut>(sizes: &Sizes, regs: &Registries, batch: F) -> (f64, f64)
where
    F: Fn(BackgroundTaskManager, String) -> Fut,
    Fut: Future<Output = f64>,
{
    let mut small = Vec::new();
    let mut big = Vec::new();
    for b in 0..sizes.batches {
        for step in 0..2 {
            if (b + step) % 2 == 0 {
                small.push(batch(regs.small.clone(), regs.owner.clone()).await);
            } else {
                big.push(batch(regs.big.clone(), regs.owner.clone()).await);
            }
        }
    }
    (
        median(&small).expect("at least one batch"),
        median(&big).expect("at least one batch"),
    )
}

/// Workload 2: `list_owner_scaling`.
pub(crate) fn list_owner_scaling(sizes: &Sizes) -> Measurement {
    let per_owner = sizes.registry_tasks / sizes.registry_owners;
    let mut m = Measurement::new(
        "list_owner_scaling",
        format!(
            "owner of {per_owner} among {} tasks / {} owners",
            sizes.registry_tasks, sizes.registry_owners
        ),
        "µs/call",
        Some("µs/call"),
        Target::RatioAtMost(1.5),
        "list(owner, None) of an owner with 100 running tasks in a manager holding 100,000 \
         running tasks over 1,000 owners (spawned round-robin) vs a manager holding only those \
         100; batches of calls alternating between the two, median batch per run",
    );
    let calls = sizes.list_calls;
    for _ in 0..sizes.runs {
        let rt = runtime();
        let (small, big) = rt.block_on(async {
            let regs = registries(sizes).await;
            for manager in [&regs.small, &regs.big] {
                let listed = manager.list(&regs.owner, None).await;
                assert_eq!(listed.len(), regs.per_owner, "the owner's tasks are listed");
                assert!(listed.iter().all(|s| s.status == TaskStatus::Running));
            }
            paired_batches(sizes, &regs, |manager, owner| async move {
                let started = Instant::now();
                for _ in 0..calls {
                    black_box(manager.list(&owner, None).await);
                }
                ns_per(started.elapsed(), calls) / 1e3
            })
            .await
        });
        drop(rt);
        m.push(big, Some(small));
    }
    m
}

/// Workload 3: `has_running_scaling`.
pub(crate) fn has_running_scaling(sizes: &Sizes) -> Measurement {
    let per_owner = sizes.registry_tasks / sizes.registry_owners;
    let mut m = Measurement::new(
        "has_running_scaling",
        format!(
            "{} tasks / {} owners vs {per_owner}",
            sizes.registry_tasks, sizes.registry_owners
        ),
        "ns/call",
        Some("ns/call"),
        Target::RatioAtMost(1.5),
        "has_running_tasks(owner) of an owner with 100 running tasks in a manager holding \
         100,000 running tasks over 1,000 owners vs a manager holding only those 100; batches \
         of calls alternating between the two, median batch per run",
    );
    let calls = sizes.has_running_calls;
    for _ in 0..sizes.runs {
        let rt = runtime();
        let (small, big) = rt.block_on(async {
            let regs = registries(sizes).await;
            paired_batches(sizes, &regs, |manager, owner| async move {
                let started = Instant::now();
                let mut running = 0usize;
                for _ in 0..calls {
                    if black_box(manager.has_running_tasks(black_box(&owner)).await) {
                        running += 1;
                    }
                }
                let per_call = ns_per(started.elapsed(), calls);
                assert_eq!(running, calls, "the owner has running tasks");
                per_call
            })
            .await
        });
        drop(rt);
        m.push(big, Some(small));
    }
    m
}

/// Children of the root, and children of each child: 1 + 10 + 10 * 99 =
/// 1,001 tasks.
const TREE_CHILDREN: usize = 10;
const TREE_GRANDCHILDREN: usize = 99;

/// Spawns a tree of parked tasks under `owner`; returns its ids, root first.
pub(crate) async fn spawn_tree(manager: &BackgroundTaskManager, owner: &str) -> Vec<TaskId> {
    let spawn = |id: TaskId, parent: Option<TaskId>| {
        let params = SpawnParams {
            task_id: id,
            owner_thread_id: owner.to_owned(),
            task_type: "bench".to_owned(),
            description: "tree node parked until cancelled".to_owned(),
            parent_task_id: parent,
            metadata: Value::Null,
        };
        manager.spawn_with_id(params, RunCancellationToken::new(), parked)
    };
    let root = spawn(new_task_id(), None)
        .await
        .expect("a valid spawn succeeds");
    let mut ids = vec![root.clone()];
    for _ in 0..TREE_CHILDREN {
        let child = spawn(new_task_id(), Some(root.clone()))
            .await
            .expect("a valid spawn succeeds");
        ids.push(child.clone());
        for _ in 0..TREE_GRANDCHILDREN {
            let grandchild = spawn(new_task_id(), Some(child.clone()))
                .await
                .expect("a valid spawn succeeds");
            ids.push(grandchild);
        }
    }
    ids
}

/// Builds a tree in `manager`, times `cancel_tree` of its root (µs), then
/// waits for every task of it to end and collects them (untimed).
async fn cancel_one_tree(manager: &BackgroundTaskManager, owner: &str) -> f64 {
    let ids = spawn_tree(manager, owner).await;
    let started = Instant::now();
    let cancelled = manager
        .cancel_tree(owner, &ids[0])
        .await
        .expect("the tree is running");
    let elapsed = started.elapsed();
    assert_eq!(
        cancelled.len(),
        ids.len(),
        "every task of the tree was cancelled"
    );
    drop(cancelled);
    for id in &ids {
        let summary = manager
            .wait(owner, id)
            .await
            .expect("the tree's task is known");
        assert_eq!(summary.status, TaskStatus::Cancelled);
    }
    let collected = manager.gc_terminal(owner).await;
    assert!(collected >= ids.len(), "the cancelled tree is collected");
    elapsed.as_secs_f64() * 1e6
}

/// Workload 4: `cancel_tree_scaling`.
pub(crate) fn cancel_tree_scaling(sizes: &Sizes) -> Measurement {
    let tree = 1 + TREE_CHILDREN * (1 + TREE_GRANDCHILDREN);
    let mut m = Measurement::new(
        "cancel_tree_scaling",
        format!(
            "tree of {tree} among {} tasks / {} owners",
            sizes.registry_tasks, sizes.registry_owners
        ),
        "µs/call",
        Some("µs/call"),
        Target::RatioAtMost(2.0),
        "the cancel_tree(owner, root) call on a running tree of 1,001 tasks (root, 10 children, \
         99 grandchildren each) whose owner has 100 other running tasks among 100,000 running \
         tasks over 1,000 owners, vs the same tree alone in a manager; several trees per run, \
         alternating, each waited for and collected (untimed) before the next; median per run",
    );
    let owners = owners("owner", sizes.registry_owners);
    let per_owner = sizes.registry_tasks / sizes.registry_owners;
    let owner = owners[0].clone();
    for _ in 0..sizes.runs {
        let rt = runtime();
        let (small, big) = rt.block_on(async {
            let big_manager = parked_registry(&owners, per_owner).await;
            let small_manager = BackgroundTaskManager::new();
            let mut small = Vec::new();
            let mut big = Vec::new();
            for t in 0..sizes.trees {
                for step in 0..2 {
                    if (t + step) % 2 == 0 {
                        small.push(cancel_one_tree(&small_manager, &owner).await);
                    } else {
                        big.push(cancel_one_tree(&big_manager, &owner).await);
                    }
                }
            }
            assert_eq!(
                big_manager
                    .list(&owner, Some(TaskStatus::Running))
                    .await
                    .len(),
                per_owner,
                "the owner's other tasks still run"
            );
            (
                median(&small).expect("at least one tree"),
                median(&big).expect("at least one tree"),
            )
        });
        drop(rt);
        m.push(big, Some(small));
    }
    m
}

/// Checks, untimed, that a persisted run really is durable: every summary is
/// terminal with no persistence error, and a sample of records loads back
/// `completed` from the store.
pub(crate) async fn verify_durable(
    manager: &BackgroundTaskManager,
    store: &TaskStore,
    owners: &[String],
    ids: &[TaskId],
) -> Result<(), String> {
    let mut seen = 0usize;
    for owner in owners {
        for summary in manager.list(owner, None).await {
            seen += 1;
            if !summary.status.is_terminal() {
                return Err(format!("task {} is {}", summary.task_id, summary.status));
            }
            if let Some(error) = summary.persistence_error {
                return Err(format!(
                    "task {} was not persisted: {error}",
                    summary.task_id
                ));
            }
        }
    }
    if seen != ids.len() {
        return Err(format!("{seen} tasks listed, {} spawned", ids.len()));
    }
    let step = (ids.len() / 200).max(1);
    for id in ids.iter().step_by(step).chain(ids.last()) {
        match store.load_task(id).await {
            Ok(Some(record)) if record.status == TaskStatus::Completed => {}
            Ok(Some(record)) => {
                return Err(format!("stored task {id} is {}", record.status));
            }
            Ok(None) => return Err(format!("task {id} is not in the store")),
            Err(e) => return Err(format!("task {id} cannot be loaded: {e}")),
        }
    }
    Ok(())
}

/// Workload 5: `persist_memory`.
pub(crate) fn persist_memory(sizes: &Sizes) -> Measurement {
    let n = sizes.spawn_tasks;
    let mut m = Measurement::new(
        "persist_memory",
        format!("{n} tasks / {} owners", sizes.spawn_owners),
        "ns/task",
        Some("ns/task"),
        Target::RatioAtMost(5.0),
        "workload 1 with a TaskStore over MemoryStore, from the first spawn until every task \
         was reported terminal by wait() and flush() returned; baseline: workload 1 without a \
         store, same run, alternating order after an untimed warm-up pass of workload 1 and its \
         baseline; durability verified \
         untimed (no persistence_error on any summary, a sample loaded back completed)",
    );
    let owners = owners("owner", sizes.spawn_owners);
    for run in 0..sizes.runs {
        let rt = runtime();
        let (base, persisted) = rt.block_on(async {
            warm_up(n, &owners).await;
            let mut base = Duration::ZERO;
            let mut persisted = Duration::ZERO;
            for step in 0..2 {
                if (step + run) % 2 == 0 {
                    let manager = BackgroundTaskManager::new();
                    base = manager_spawn_complete(&manager, n, &owners).await.0;
                    drop(manager);
                } else {
                    let store = Arc::new(TaskStore::new(Arc::new(MemoryStore::new())));
                    let manager = BackgroundTaskManager::builder()
                        .task_store(Arc::clone(&store))
                        .build();
                    let (elapsed, ids) = manager_spawn_complete(&manager, n, &owners).await;
                    persisted = elapsed;
                    if let Err(e) = verify_durable(&manager, &store, &owners, &ids).await {
                        panic!("persist_memory did not persist: {e}");
                    }
                    drop(manager);
                }
            }
            (base, persisted)
        });
        drop(rt);
        m.push(ns_per(persisted, n), Some(ns_per(base, n)));
    }
    m
}
