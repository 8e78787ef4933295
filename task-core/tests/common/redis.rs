//! What the manager's tests on one Redis server (`redis.rs`) and on a Redis
//! Cluster (`redis_cluster.rs`) share: the `redis_worker` example as a child
//! process, the cross-process scenarios run with it, and opening a store by
//! URL. Each scenario takes the worker's URL (with its prefix) and this
//! process's store on the same prefix.

use std::io::{BufRead, BufReader, Lines};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use task_core::thread_store::ThreadStore;
use task_core::{BackgroundTaskManager, TaskStatus, TaskStore};

/// The clock skew allowance of the managers that recover a dead worker's
/// tasks; [`outlive_the_lease_of`] waits it out too.
pub const CLOCK_SKEW: Duration = Duration::from_millis(200);

/// The `redis_worker` example, built by `cargo test` next to this binary.
pub fn worker_binary() -> PathBuf {
    static FOUND: OnceLock<PathBuf> = OnceLock::new();
    FOUND.get_or_init(find_or_build_worker).clone()
}

/// `cargo test` builds the example with the other targets; when only this
/// test target was built, build it now.
fn find_or_build_worker() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let examples = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps")
        .join("examples");
    let find = || {
        std::fs::read_dir(&examples).ok().and_then(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    let name = p.file_stem().and_then(|n| n.to_str()).unwrap_or_default();
                    (name == "redis_worker" || name.starts_with("redis_worker-"))
                        && p.extension()
                            .is_none_or(|e| e == std::env::consts::EXE_EXTENSION)
                        && !p.to_string_lossy().ends_with(".d")
                })
                .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        })
    };
    if let Some(path) = find() {
        return path;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = Command::new(cargo)
        .args(["build", "-p", "task-core", "--features", "redis"])
        .args(["--example", "redis_worker"])
        .status()
        .expect("run cargo build for the redis_worker example");
    assert!(status.success(), "building the redis_worker example failed");
    find().expect("the redis_worker example binary after building it")
}

/// How long a worker may take to report a finished task, and to exit once
/// asked to.
const WORKER_DEADLINE: Duration = Duration::from_secs(10);

/// A `redis_worker` process; dropping it kills it.
pub struct Worker {
    child: Child,
    /// Its standard output, line by line (out while a thread reads it).
    lines: Option<Lines<BufReader<ChildStdout>>>,
}

impl Worker {
    /// Starts a worker process on `url` (with its prefix) and waits for its
    /// `READY` line; returns the ids of its tasks. `shape` and `n` as the
    /// example's documentation says.
    pub async fn launch(
        url: &str,
        instance: &str,
        owner: &str,
        shape: &str,
        n: usize,
    ) -> (Self, Vec<String>) {
        let args = [url, instance, owner, shape, &n.to_string()].map(str::to_owned);
        tokio::task::spawn_blocking(move || Self::start(&args))
            .await
            .expect("start worker")
    }

    fn start(args: &[String]) -> (Self, Vec<String>) {
        let mut child = Command::new(worker_binary())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the redis_worker example (built by cargo test)");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let ready = lines
            .next()
            .expect("the worker prints READY")
            .expect("read worker output");
        let ids = ready
            .strip_prefix("READY ")
            .unwrap_or_else(|| panic!("unexpected worker output {ready:?}"))
            .split(',')
            .map(str::to_owned)
            .collect();
        let lines = Some(lines);
        (Self { child, lines }, ids)
    }

    /// The next `count` `FINISHED <id> <status>` lines, as `(id, status)`.
    ///
    /// # Panics
    ///
    /// When they do not come within [`WORKER_DEADLINE`] (the worker is
    /// killed then) or another line comes.
    pub async fn finished(&mut self, count: usize) -> Vec<(String, String)> {
        let mut lines = self.lines.take().expect("one reader at a time");
        let reading = tokio::task::spawn_blocking(move || {
            let finished = (0..count).map(|_| next_finished(&mut lines)).collect();
            (lines, finished)
        });
        match tokio::time::timeout(WORKER_DEADLINE, reading).await {
            Ok(read) => {
                let (lines, finished) = read.expect("read worker");
                self.lines = Some(lines);
                finished
            }
            Err(_) => {
                // Ends the reading thread too: its read sees the end.
                self.kill();
                panic!(
                    "the worker did not report {count} finished tasks within {WORKER_DEADLINE:?}"
                )
            }
        }
    }

    /// Closes the worker's standard input, which asks it to shut down, and
    /// returns how it exited.
    ///
    /// # Panics
    ///
    /// When it has not exited within [`WORKER_DEADLINE`].
    pub async fn stop(mut self) -> ExitStatus {
        drop(self.child.stdin.take());
        // Its standard output ends when it exits: read to the end on a
        // thread, under the deadline, as `finished` reads its lines.
        let mut lines = self.lines.take().expect("one reader at a time");
        let draining = tokio::task::spawn_blocking(move || {
            lines
                .by_ref()
                .map_while(Result::ok)
                .filter(|line| !line.starts_with("FINISHED "))
                .collect::<Vec<_>>()
        });
        match tokio::time::timeout(WORKER_DEADLINE, draining).await {
            Ok(unexpected) => {
                let unexpected = unexpected.expect("read worker");
                assert!(
                    unexpected.is_empty(),
                    "unexpected worker output while it shut down: {unexpected:?}"
                );
                self.child.wait().expect("reap the worker")
            }
            Err(_) => {
                // Ends the reading thread too: its read sees the end.
                self.kill();
                panic!("the worker did not exit within {WORKER_DEADLINE:?} of being asked to")
            }
        }
    }

    /// SIGKILLs the worker and reaps it.
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL the worker");
        self.child.wait().expect("reap the worker");
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The next `FINISHED <id> <status>` line of a worker.
fn next_finished(lines: &mut Lines<BufReader<ChildStdout>>) -> (String, String) {
    let line = lines
        .next()
        .expect("the worker reports a finished task")
        .expect("read worker output");
    let mut parts = line.split(' ');
    assert_eq!(parts.next(), Some("FINISHED"), "{line}");
    let id = parts.next().expect("id").to_owned();
    let status = parts.next().expect("status").to_owned();
    (id, status)
}

/// Milliseconds since the Unix epoch, as the leases count them.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Waits until the lease `instance` last renewed has run out by its durable
/// expiry, plus [`CLOCK_SKEW`] and a margin: the behaviour the caller tests
/// is the lease running out.
pub async fn outlive_the_lease_of(store: &Arc<dyn ThreadStore>, instance: &str) {
    let heartbeat = store
        .load(&format!("instance:{instance}"))
        .await
        .expect("load")
        .expect("the worker renewed its lease");
    let expires_at = heartbeat.state["expires_at_ms"].as_u64().expect("expiry");
    let skew = u64::try_from(CLOCK_SKEW.as_millis()).expect("a small allowance");
    let wait = expires_at.saturating_sub(now_ms()) + skew + 300;
    tokio::time::sleep(Duration::from_millis(wait)).await;
}

/// A worker process SIGKILLed while it holds 100 tasks: another manager's
/// recovery leaves them alone while the dead worker's lease holds, and ends
/// every one once it ran out (the resumable half `stopped`, the rest
/// `failed`); none stays `running`.
pub async fn a_killed_workers_tasks_are_recovered_after_its_lease(
    worker_url: &str,
    store: Arc<dyn ThreadStore>,
) {
    let (mut worker, ids) =
        Worker::launch(worker_url, "crashing-worker", "owner", "flat", 100).await;
    assert_eq!(ids.len(), 100);
    worker.kill();

    let tasks = Arc::new(TaskStore::new(store.clone()));
    let recoverer = BackgroundTaskManager::builder()
        .task_store(tasks.clone())
        .instance_id("recoverer")
        .lease(Duration::from_secs(2), Duration::from_millis(500))
        .clock_skew_allowance(CLOCK_SKEW)
        .build();
    let early = recoverer.recover().await.expect("recover");
    assert!(
        early.stopped.is_empty() && early.failed.is_empty(),
        "{early:?}"
    );
    assert_eq!(early.alive, 100, "the dead worker's lease still holds");

    outlive_the_lease_of(&store, "crashing-worker").await;

    let report = recoverer.recover().await.expect("recover");
    assert_eq!(
        report.stopped.len() + report.failed.len(),
        100,
        "{report:?}"
    );
    assert_eq!(report.stopped.len(), 50, "the agent_run half is resumable");
    for id in &ids {
        let r = tasks.load_task(id).await.expect("load").expect("record");
        assert_ne!(r.status, TaskStatus::Running, "{id} stays running");
    }
}

/// `cancel_tree` in this process, on a tree of a root and 3 children held by
/// a worker process: the holder sees each task end `cancelled`, and the
/// store then holds no open task of the owner and 4 cancelled records.
pub async fn cancel_tree_from_another_process_cancels_the_holders_tasks(
    worker_url: &str,
    store: Arc<dyn ThreadStore>,
) {
    let (mut worker, ids) = Worker::launch(worker_url, "holder", "owner", "tree", 3).await;
    let root = ids[0].clone();

    let tasks = Arc::new(TaskStore::new(store));
    let canceller = BackgroundTaskManager::builder()
        .task_store(tasks.clone())
        .instance_id("canceller")
        .build();
    let cancelled = canceller
        .cancel_tree("owner", &root)
        .await
        .expect("cancel tree");
    assert_eq!(cancelled.len(), 4);

    // The holder's view: each task ends cancelled (and it flushed).
    let finished = worker.finished(4).await;
    for (id, status) in &finished {
        assert!(ids.contains(id), "{id}");
        assert_eq!(status, "cancelled", "{id}");
    }
    let _ = worker.stop().await;
    // The canceller's view, from the store: nothing of the tree is open any
    // more, and every record is cancelled.
    let open = canceller
        .list_including_durable("owner", None)
        .await
        .expect("list");
    assert!(open.is_empty(), "{open:?}");
    let page = canceller
        .list_durable_page("owner", None, 0)
        .await
        .expect("page");
    assert_eq!(page.tasks.len(), 4);
    for s in page.tasks {
        assert_eq!(s.status, TaskStatus::Cancelled, "{}", s.task_id);
    }
}
